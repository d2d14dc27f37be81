//! Read receipts (`m.read`, `m.read.private`, threaded or not) and the read
//! markers built on them.

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::{EventId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value as JsonValue};

use super::push::{thread_of, ReceiptScope};
use super::stream::Stream;
use super::{now_ms, ServiceError, ServiceResult, Services};
use crate::database::receipts::{ReceiptRecord, ReceiptTables};
use crate::database::Db;

pub const READ: &str = "m.read";
pub const READ_PRIVATE: &str = "m.read.private";

pub struct ReceiptsService {
    tables: ReceiptTables,
    stream: Arc<Stream>,
}

impl ReceiptsService {
    pub fn new(db: Db, stream: Arc<Stream>) -> Self {
        Self {
            tables: ReceiptTables::new(db),
            stream,
        }
    }

    /// Records a receipt from `user` for `event_id`; `thread` is `None` for an
    /// unthreaded receipt, `"main"` or a thread root otherwise.
    pub fn set(
        &self,
        s: &Services,
        user: &UserId,
        room_id: &RoomId,
        receipt_type: &str,
        event_id: &EventId,
        thread: Option<&str>,
    ) -> ServiceResult<()> {
        if !s.timeline.is_joined(room_id, user)? {
            s.timeline.room_or_404(room_id)?;
            return Err(ServiceError::Forbidden("you are not in this room".to_owned()));
        }
        let not_found = || ServiceError::NotFound("the event is not in this room".to_owned());
        let event = s.timeline.event(event_id)?.ok_or_else(not_found)?;
        if event.room_id().as_deref() != Some(room_id.as_str()) {
            return Err(not_found());
        }
        if let Some(thread) = thread {
            // A threaded receipt must be for an event of that thread.
            let event_thread = thread_of(&event.to_client(true, None));
            let fits = match thread {
                "main" => event_thread.is_none(),
                root => event_thread.as_deref() == Some(root) || event.event_id.as_str() == root,
            };
            if !fits {
                return Err(ServiceError::BadJson(format!("the event is not in thread {thread}")));
            }
        }

        let ticket = self.stream.begin()?;
        let record = ReceiptRecord {
            event_id: event_id.to_string(),
            ts: now_ms(),
            count: ticket.0,
        };
        let written = self
            .tables
            .put(
                room_id.as_str(),
                receipt_type,
                user.as_str(),
                thread.unwrap_or(""),
                &record,
            )
            .map_err(ServiceError::from)
            .and_then(|()| {
                let scope = match thread {
                    None => ReceiptScope::All,
                    Some("main") => ReceiptScope::Main,
                    Some(root) => ReceiptScope::Thread(root.to_owned()),
                };
                s.timeline
                    .under_room_lock(room_id, || s.push.clear(user, room_id, event.count, &scope))
            });
        // Public receipts reach everyone in the room; private ones their owner.
        let mut woken: Vec<OwnedUserId> = vec![user.to_owned()];
        if receipt_type == READ {
            for (member, membership) in s.timeline.members(room_id)?.iter().cloned() {
                if membership == "join" {
                    woken.extend(OwnedUserId::try_from(member).ok());
                }
            }
        }
        self.stream.finish(ticket, woken.iter().map(|u| u.as_ref()));
        written
    }

    /// The room's receipts newer than `since` as an `m.receipt` event, as
    /// `viewer` may see them; also the newest receipt position seen.
    pub fn receipt_event(
        &self,
        room_id: &RoomId,
        since: u64,
        viewer: &UserId,
    ) -> ServiceResult<(Option<JsonValue>, u64)> {
        let mut content: BTreeMap<String, Map<String, JsonValue>> = BTreeMap::new();
        let mut newest = 0;
        for receipt in self.tables.room(room_id.as_str())? {
            if receipt.receipt_type == READ_PRIVATE && receipt.user_id != viewer.as_str() {
                continue;
            }
            newest = newest.max(receipt.record.count);
            if receipt.record.count <= since {
                continue;
            }
            let mut data = json!({"ts": receipt.record.ts});
            if !receipt.thread_id.is_empty() {
                data["thread_id"] = receipt.thread_id.clone().into();
            }
            let by_type = content.entry(receipt.record.event_id.clone()).or_default();
            let users = by_type
                .entry(receipt.receipt_type.clone())
                .or_insert_with(|| JsonValue::Object(Map::new()));
            users[receipt.user_id.as_str()] = data;
        }
        let event = (!content.is_empty()).then(|| json!({"type": "m.receipt", "content": content}));
        Ok((event, newest))
    }
}
