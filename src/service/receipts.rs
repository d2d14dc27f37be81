//! Read receipts (`m.read`, `m.read.private`, threaded or not) and the read
//! markers built on them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ruma::{EventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value as JsonValue};

use super::push::{thread_of, ReceiptScope};
use super::stream::Stream;
use super::{now_ms, ServiceError, ServiceResult, Services};
use crate::database::receipts::{ReceiptRecord, ReceiptTables};
use crate::database::{Batch, Db};

pub const READ: &str = "m.read";
pub const READ_PRIVATE: &str = "m.read.private";

pub struct ReceiptsService {
    tables: ReceiptTables,
    stream: Arc<Stream>,
    /// At least the stream position of each room's newest stored receipt,
    /// for rooms read or written since start, so an incremental /sync does
    /// not read a room's receipts when none can be newer than its `since`.
    /// Only ever raised; a write raises it before its position is
    /// published, so a sync that can see a receipt never finds it lower.
    newest: Mutex<NewestReceipts>,
}

/// See `ReceiptsService::newest`. Starting over bumps `generation`, so a
/// reader that began before cannot put back a value a write has since
/// raised and the clearing forgotten.
#[derive(Default)]
struct NewestReceipts {
    generation: u64,
    rooms: HashMap<OwnedRoomId, u64>,
}

/// Rooms whose newest receipt position is kept at most (the map starts
/// over when full).
const NEWEST_RECEIPT_ROOMS: usize = 4096;

impl ReceiptsService {
    pub fn new(db: Db, stream: Arc<Stream>) -> Self {
        Self {
            tables: ReceiptTables::new(db),
            stream,
            newest: Mutex::default(),
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

        // Public receipts go to the appservices interested in the room, in
        // the receipt's own write.
        let ts = now_ms();
        let mut receipt_data = serde_json::json!({"ts": ts});
        if let Some(thread) = thread {
            receipt_data["thread_id"] = thread.into();
        }
        let mut batch = Batch::new();
        let to_appservices = if receipt_type == READ {
            s.appservices
                .stage_receipt(s, &mut batch, room_id, user, event_id, &receipt_data)?
        } else {
            Vec::new()
        };

        let ticket = self.stream.begin()?;
        let record = ReceiptRecord {
            event_id: event_id.to_string(),
            ts,
            count: ticket.0,
        };
        let scope = match thread {
            None => ReceiptScope::All,
            Some("main") => ReceiptScope::Main,
            Some(root) => ReceiptScope::Thread(root.to_owned()),
        };
        // The receipt, the unread counts it resets and the badge updates
        // they bring are one write; under the room's lock, as a new event's
        // notifications are counted.
        let written = s.timeline.under_room_lock(room_id, || {
            self.tables.put(
                &mut batch,
                room_id.as_str(),
                receipt_type,
                user.as_str(),
                thread.unwrap_or(""),
                &record,
            );
            let cleared = s.push.clear(
                s,
                &mut batch,
                user,
                room_id,
                crate::database::rooms::position::stream(event.count),
                &scope,
            )?;
            self.tables.write(batch)?;
            s.outbox.committed(&to_appservices);
            self.raise_newest(room_id, record.count, None);
            if let Some(cleared) = cleared {
                s.outbox.committed(cleared.pushed());
                s.push.remember_unread(room_id, cleared);
            }
            Ok::<_, ServiceError>(())
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
        // Our users' public receipts go to the other servers in the room.
        if written.is_ok() && receipt_type == READ && user.server_name() == s.config.server_name {
            let content = serde_json::json!({
                room_id.as_str(): {READ: {user.as_str(): {"data": receipt_data, "event_ids": [event_id]}}}
            });
            if let Err(e) = s.federation.send_room_edu(s, room_id, "m.receipt", content) {
                tracing::warn!(%room_id, error = %e, "receipt not queued for other servers");
            }
        }
        written
    }

    /// The room's receipts newer than `since` as an `m.receipt` event, as
    /// `viewer` may see them; also the newest receipt position seen (0 when
    /// none can be newer than a non-zero `since`, which reads nothing).
    pub fn receipt_event(
        &self,
        room_id: &RoomId,
        since: u64,
        viewer: &UserId,
    ) -> ServiceResult<(Option<JsonValue>, u64)> {
        let (known, generation) = {
            let newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
            (newest.rooms.get(room_id).copied(), newest.generation)
        };
        if since > 0 && known.is_some_and(|newest| newest <= since) {
            return Ok((None, 0));
        }
        let mut content: BTreeMap<String, Map<String, JsonValue>> = BTreeMap::new();
        let mut newest = 0;
        let mut newest_stored = 0;
        let receipts = self.tables.room(room_id.as_str())?;
        for receipt in receipts {
            newest_stored = newest_stored.max(receipt.record.count);
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
        // Raising with what was read is safe even if a write raced the read:
        // the write raises it too, and the larger value stays.
        self.raise_newest(room_id, newest_stored, Some(generation));
        let event = (!content.is_empty()).then(|| json!({"type": "m.receipt", "content": content}));
        Ok((event, newest))
    }

    /// Raises the room's newest position to `count`; a reader passes the
    /// generation it began in, a write (always up to date) passes none.
    fn raise_newest(&self, room_id: &RoomId, count: u64, read_in: Option<u64>) {
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        if read_in.is_some_and(|g| g != newest.generation) {
            return;
        }
        if newest.rooms.len() >= NEWEST_RECEIPT_ROOMS && !newest.rooms.contains_key(room_id) {
            newest.rooms.clear();
            newest.generation += 1;
        }
        let entry = newest.rooms.entry(room_id.to_owned()).or_insert(count);
        *entry = (*entry).max(count);
    }
}

#[cfg(test)]
mod tests {
    use ruma::events::TimelineEventType;

    use crate::database::Table;
    use crate::service::testing::{two_in_a_room, TwoInARoom};
    use crate::service::timeline::EventSpec;
    use crate::service::{ServiceError, Services};

    /// A receipt and the unread counts it resets land together or not at
    /// all: a failed write leaves neither a receipt over uncleared counts
    /// nor cleared counts without a receipt.
    #[test]
    fn a_receipt_and_the_counts_it_clears_are_one_write() {
        let TwoInARoom {
            dir: _dir,
            store,
            s,
            alice,
            bob,
            room,
        } = two_in_a_room();
        let message = EventSpec {
            event_type: TimelineEventType::RoomMessage,
            content: serde_json::from_value(serde_json::json!({"msgtype": "m.text", "body": "hi alice"})).unwrap(),
            state_key: None,
            redacts: None,
            origin_server_ts: None,
        };
        let event = s.timeline.append(&s, &room, &bob, message, None).unwrap();
        let unread = |s: &Services| s.push.counts(&alice, &room, false).unwrap().0.notifications;
        assert_eq!(unread(&s), 1);

        store.fail_writes_to(Table::UnreadCounts);
        let got = s.receipts.set(&s, &alice, &room, super::READ, &event, None);
        assert!(matches!(got, Err(ServiceError::Database(_))), "{got:?}");
        let (receipts, _) = s.receipts.receipt_event(&room, 0, &alice).unwrap();
        let has_alices = receipts.is_some_and(|r| r.to_string().contains(alice.as_str()));
        assert!(!has_alices, "no receipt without its counts");
        assert_eq!(unread(&s), 1);
    }
}
