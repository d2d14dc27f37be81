//! Typing notifications: in memory only, as they are worthless after a
//! restart. A timed-out typist is removed by a timer, which wakes the room's
//! syncs like any other change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Value as JsonValue};

use super::appservices::ephemeral::TypingAudience;
use super::stream::Stream;
use super::{PruneSchedule, ServiceError, ServiceResult, Services};

/// A client may ask for at most this long.
const MAX_TYPING: Duration = Duration::from_secs(120);

/// How long a room where nobody types any more is remembered: syncs that
/// began before the last typist stopped still learn of it, and then the
/// room is forgotten.
const KEEP_QUIET_ROOMS: Duration = MAX_TYPING;

/// Rooms kept before quiet ones are dropped.
const ROOMS_KEPT: usize = 64;

struct RoomTyping {
    until: BTreeMap<OwnedUserId, Instant>,
    /// Stream position of the last change.
    changed: u64,
    changed_at: Instant,
}

/// Shared with the expiry timers.
struct Inner {
    rooms: Mutex<Rooms>,
    stream: Arc<Stream>,
}

/// Rooms with typists, or with typists lately.
struct Rooms {
    rooms: HashMap<OwnedRoomId, RoomTyping>,
    schedule: PruneSchedule,
}

pub struct TypingService {
    inner: Arc<Inner>,
}

impl Inner {
    /// Applies a change and wakes `members`; tells `appservices` of the
    /// room's typists if the change altered who types (not for a renewal).
    fn change(
        &self,
        room_id: &RoomId,
        members: &[OwnedUserId],
        appservices: Option<&TypingAudience>,
        apply: impl FnOnce(&mut RoomTyping) -> bool,
    ) -> ServiceResult<()> {
        let ticket = self.stream.begin()?;
        let changed = {
            let mut guard = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            let Rooms { rooms, schedule } = &mut *guard;
            if schedule.due(rooms.len()) {
                rooms.retain(|_, room| !room.until.is_empty() || room.changed_at.elapsed() < KEEP_QUIET_ROOMS);
                schedule.pruned(rooms.len());
            }
            let room = rooms.entry(room_id.to_owned()).or_insert_with(|| RoomTyping {
                until: BTreeMap::new(),
                changed: 0,
                changed_at: Instant::now(),
            });
            let typists_before: Option<Vec<OwnedUserId>> = appservices.map(|_| room.until.keys().cloned().collect());
            let changed = apply(room);
            if changed {
                room.changed = ticket.0;
                room.changed_at = Instant::now();
            }
            if let (Some(appservices), Some(before)) = (appservices, typists_before) {
                if !room.until.keys().eq(before.iter()) {
                    // Under the lock, so the appservices' queues have the
                    // changes in the order they were made.
                    appservices.announce(room.until.keys());
                }
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
                rooms: Mutex::new(Rooms {
                    rooms: HashMap::new(),
                    schedule: PruneSchedule::new(ROOMS_KEPT),
                }),
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
        let appservices = s.appservices.typing_audience(s, room_id)?;
        match typing {
            Some(timeout) => {
                let timeout = timeout.min(MAX_TYPING);
                let until = Instant::now() + timeout;
                self.inner.change(room_id, &members, appservices.as_ref(), |room| {
                    room.until.insert(user.to_owned(), until);
                    true
                })?;
                self.expire_later(room_id, user, until, timeout, members, appservices);
            }
            None => self.inner.change(room_id, &members, appservices.as_ref(), |room| {
                room.until.remove(user).is_some()
            })?,
        }
        // Our users' typing goes to the other servers in the room.
        if user.server_name() == s.config.server_name {
            let content = serde_json::json!({"room_id": room_id, "user_id": user, "typing": typing.is_some()});
            if let Err(e) = s.federation.send_room_edu(s, room_id, "m.typing", content) {
                tracing::warn!(%room_id, error = %e, "typing notice not queued for other servers");
            }
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
        appservices: Option<TypingAudience>,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let (room_id, user) = (room_id.to_owned(), user.to_owned());
        runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            let expire = move || {
                let result = inner.change(&room_id, &members, appservices.as_ref(), |room| {
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
        let room = rooms.rooms.get(room_id)?;
        let changed = since.is_none_or(|since| room.changed > since);
        if !changed || (since.is_none() && room.until.is_empty()) {
            return None;
        }
        let users: Vec<&str> = room.until.keys().map(|u| u.as_str()).collect();
        Some(json!({"type": "m.typing", "content": {"user_ids": users}}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;

    #[test]
    fn rooms_quiet_for_a_while_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let typing = TypingService::new(Arc::new(Stream::new(open_test_db(dir.path()))));
        let alice: OwnedUserId = "@alice:x".try_into().unwrap();
        let typing_in = |room: &RoomId, until: Option<Instant>| {
            typing
                .inner
                .change(room, &[], None, |r| match until {
                    Some(until) => r.until.insert(alice.clone(), until).is_none(),
                    None => r.until.remove(&alice).is_some(),
                })
                .unwrap();
        };
        let busy: OwnedRoomId = "!busy:x".try_into().unwrap();
        typing_in(&busy, Some(Instant::now() + MAX_TYPING));
        for i in 0..10 * ROOMS_KEPT {
            let room: OwnedRoomId = format!("!r{i}:x").try_into().unwrap();
            typing_in(&room, Some(Instant::now() + MAX_TYPING));
            typing_in(&room, None);
            // As if the last change were long ago.
            let mut rooms = typing.inner.rooms.lock().unwrap();
            rooms.rooms.get_mut(&room).unwrap().changed_at -= KEEP_QUIET_ROOMS;
        }
        let kept = typing.inner.rooms.lock().unwrap().rooms.len();
        assert!(kept <= ROOMS_KEPT + 1, "{kept}");
        assert!(typing.typing_event(&busy, None).is_some(), "a room with a typist stays");
    }
}
