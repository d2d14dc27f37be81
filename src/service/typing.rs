//! Typing notifications: in memory only, as they are worthless after a
//! restart.

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

pub struct TypingService {
    rooms: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    stream: Arc<Stream>,
}

impl TypingService {
    pub fn new(stream: Arc<Stream>) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            stream,
        }
    }

    pub fn set(&self, s: &Services, user: &UserId, room_id: &RoomId, typing: Option<Duration>) -> ServiceResult<()> {
        if !s.timeline.is_joined(room_id, user)? {
            s.timeline.room_or_404(room_id)?;
            return Err(ServiceError::Forbidden("you are not in this room".to_owned()));
        }
        let ticket = self.stream.begin()?;
        {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            let room = rooms.entry(room_id.to_owned()).or_default();
            match typing {
                Some(timeout) => {
                    room.until
                        .insert(user.to_owned(), Instant::now() + timeout.min(MAX_TYPING));
                }
                None => {
                    room.until.remove(user);
                }
            }
            room.changed = ticket.0;
        }
        let members: Vec<OwnedUserId> = s
            .timeline
            .members(room_id)?
            .into_iter()
            .filter(|(_, m)| m == "join")
            .filter_map(|(u, _)| OwnedUserId::try_from(u).ok())
            .collect();
        self.stream.finish(ticket, members.iter().map(|u| u.as_ref()));
        Ok(())
    }

    /// The room's `m.typing` event if it changed after `since` (or, on an
    /// initial sync, if anyone is typing).
    pub fn typing_event(&self, room_id: &RoomId, since: Option<u64>) -> Option<JsonValue> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.get_mut(room_id)?;
        let now = Instant::now();
        room.until.retain(|_, until| *until > now);
        let changed = since.is_none_or(|since| room.changed > since);
        if !changed || (since.is_none() && room.until.is_empty()) {
            return None;
        }
        let users: Vec<&str> = room.until.keys().map(|u| u.as_str()).collect();
        Some(json!({"type": "m.typing", "content": {"user_ids": users}}))
    }
}
