//! Typing notifications: in memory only, as they are worthless after a
//! restart. A timed-out typist is removed by a timer, which wakes the room's
//! syncs like any other change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Value as JsonValue};

use super::stream::Stream;
use super::{ServiceError, ServiceResult, Services};

/// A client may ask for at most this long.
const MAX_TYPING: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    until: BTreeMap<OwnedUserId, Instant>,
    /// Stream position of the last change.
    changed: u64,
}

/// Shared with the expiry timers.
struct Inner {
    rooms: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    stream: Arc<Stream>,
}

pub struct TypingService {
    inner: Arc<Inner>,
}

impl Inner {
    /// Applies a change and wakes `members`.
    fn change(
        &self,
        room_id: &RoomId,
        members: &[OwnedUserId],
        apply: impl FnOnce(&mut RoomTyping) -> bool,
    ) -> ServiceResult<()> {
        let ticket = self.stream.begin()?;
        let changed = {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            let room = rooms.entry(room_id.to_owned()).or_default();
            let changed = apply(room);
            if changed {
                room.changed = ticket.0;
            }
            changed
        };
        let woken: &[OwnedUserId] = if changed { members } else { &[] };
        self.stream.finish(ticket, woken.iter().map(|u| u.as_ref()));
        Ok(())
    }
}

impl TypingService {
    pub fn new(stream: Arc<Stream>) -> Self {
        Self {
            inner: Arc::new(Inner {
                rooms: Mutex::new(HashMap::new()),
                stream,
            }),
        }
    }

    pub fn set(&self, s: &Services, user: &UserId, room_id: &RoomId, typing: Option<Duration>) -> ServiceResult<()> {
        if !s.timeline.is_joined(room_id, user)? {
            s.timeline.room_or_404(room_id)?;
            return Err(ServiceError::Forbidden("you are not in this room".to_owned()));
        }
        let members: Vec<OwnedUserId> = s
            .timeline
            .members(room_id)?
            .iter()
            .filter(|(_, m)| m == "join")
            .filter_map(|(u, _)| OwnedUserId::try_from(u.as_str()).ok())
            .collect();
        match typing {
            Some(timeout) => {
                let timeout = timeout.min(MAX_TYPING);
                let until = Instant::now() + timeout;
                self.inner.change(room_id, &members, |room| {
                    room.until.insert(user.to_owned(), until);
                    true
                })?;
                self.expire_later(room_id, user, until, timeout, members);
            }
            None => self
                .inner
                .change(room_id, &members, |room| room.until.remove(user).is_some())?,
        }
        Ok(())
    }

    /// After `timeout`, removes the typist unless they typed again since.
    fn expire_later(
        &self,
        room_id: &RoomId,
        user: &UserId,
        until: Instant,
        timeout: Duration,
        members: Vec<OwnedUserId>,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let (room_id, user) = (room_id.to_owned(), user.to_owned());
        runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            let expire = move || {
                let result = inner.change(&room_id, &members, |room| {
                    if room.until.get(&user) == Some(&until) {
                        room.until.remove(&user);
                        true
                    } else {
                        false
                    }
                });
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not expire a typing notification");
                }
            };
            // The stream position is a database write.
            let _ = tokio::task::spawn_blocking(expire).await;
        });
    }

    /// The room's `m.typing` event if it changed after `since` (or, on an
    /// initial sync, if anyone is typing).
    pub fn typing_event(&self, room_id: &RoomId, since: Option<u64>) -> Option<JsonValue> {
        let rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.get(room_id)?;
        let changed = since.is_none_or(|since| room.changed > since);
        if !changed || (since.is_none() && room.until.is_empty()) {
            return None;
        }
        let users: Vec<&str> = room.until.keys().map(|u| u.as_str()).collect();
        Some(json!({"type": "m.typing", "content": {"user_ids": users}}))
    }
}
