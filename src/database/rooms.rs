//! Typed access to the room tables (owned by `service::timeline`): room
//! records, the timeline, the event index, membership indexes and
//! transaction IDs.
//! Encodings are documented beside each table in `catalogue.rs`.

use serde::{Deserialize, Serialize};

use super::txn_ids::TxnIdTable;
use super::{decode_key, from_record, keys, to_record, utf8, Batch, Db, DbResult, Direction, Table};

/// What the server keeps about a room besides its events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomRecord {
    /// Prefix of the room's timeline keys.
    pub short_id: u64,
    pub version: String,
    /// Snapshot of the current state (after the last event).
    pub state_snapshot: u64,
    pub forward_extremities: Vec<String>,
    /// Highest `depth` in the room.
    pub depth: u64,
    /// Stream position of the room's newest event.
    pub last_count: u64,
}

/// A stored event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimelineRecord {
    /// The PDU as canonical JSON, with `event_id` and server-side `unsigned`
    /// fields (`replaces_state`, `prev_content`, `redacted_because`).
    pub json: String,
    /// `(device_id, txn_id)` of the client request that sent it, shown only
    /// to that device.
    pub txn: Option<(String, String)>,
}

/// Where an event is stored and the state around it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventMeta {
    pub short_room_id: u64,
    pub count: u64,
    pub short_event_id: u64,
    /// Snapshot of the room state before the event.
    pub state_before: u64,
    /// Snapshot after it (the same as before for a message event).
    pub state_after: u64,
}

/// What an event outside the timeline is (see [`Table::Outliers`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum OutlierKind {
    /// Known for the room's state or auth chain, not (yet) in the timeline.
    Outlier,
    /// Refused by the auth rules, with why.
    Rejected(String),
    /// Authorized by its own history but not by the room's current state:
    /// part of the room graph, never shown to clients.
    SoftFailed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutlierRecord {
    pub room_id: String,
    /// The PDU as canonical JSON, with `event_id`.
    pub json: String,
    pub kind: OutlierKind,
}

/// An invite of one of our users to a room this server is not in, or
/// their knock on one (the user's membership in `RoomMembers` tells which).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteInviteRecord {
    pub room_version: String,
    /// The invite event (federation form, signed by both servers), or the
    /// knock as we signed it, JSON.
    pub event: String,
    /// What the room's server showed of the room, stripped (`type`,
    /// `state_key`, `sender`, `content`), each as JSON.
    pub stripped_state: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRoomRecord {
    pub membership: String,
    /// Stream position of the membership event.
    pub count: u64,
    pub forgotten: bool,
}

pub struct RoomTables {
    db: Db,
    txn_ids: TxnIdTable,
}

impl RoomTables {
    pub fn new(db: Db) -> Self {
        Self {
            txn_ids: TxnIdTable::new(db.clone(), Table::TxnIds, Table::TxnIdsByTime),
            db,
        }
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    pub fn next_count(&self) -> DbResult<u64> {
        self.db.next_count()
    }

    pub fn room(&self, room_id: &str) -> DbResult<Option<RoomRecord>> {
        self.db
            .get(Table::Rooms, &keys::encode(room_id))?
            .map(|v| from_record(Table::Rooms, &v))
            .transpose()
    }

    pub fn put_room(&self, batch: &mut Batch, room_id: &str, record: &RoomRecord) {
        batch.put(Table::Rooms, keys::encode(room_id), to_record(record));
    }

    pub fn put_event(&self, batch: &mut Batch, event_id: &str, meta: &EventMeta, record: &TimelineRecord) {
        batch.put(
            Table::Timeline,
            keys::encode(&(meta.short_room_id, meta.count)),
            to_record(record),
        );
        batch.put(Table::EventIndex, keys::encode(event_id), to_record(meta));
    }

    /// Replaces a stored event's record (redaction), keeping its place.
    pub fn replace_event(&self, batch: &mut Batch, meta: &EventMeta, record: &TimelineRecord) {
        batch.put(
            Table::Timeline,
            keys::encode(&(meta.short_room_id, meta.count)),
            to_record(record),
        );
    }

    pub fn event_meta(&self, event_id: &str) -> DbResult<Option<EventMeta>> {
        self.db
            .get(Table::EventIndex, &keys::encode(event_id))?
            .map(|v| from_record(Table::EventIndex, &v))
            .transpose()
    }

    pub fn event(&self, short_room_id: u64, count: u64) -> DbResult<Option<TimelineRecord>> {
        self.db
            .get(Table::Timeline, &keys::encode(&(short_room_id, count)))?
            .map(|v| from_record(Table::Timeline, &v))
            .transpose()
    }

    /// A room's events from `from` (inclusive) in `direction`; `None` starts
    /// at the newest (backward) or oldest (forward) event.
    pub fn events(
        &self,
        short_room_id: u64,
        from: Option<u64>,
        direction: Direction,
    ) -> impl Iterator<Item = DbResult<(u64, TimelineRecord)>> + '_ {
        let prefix = keys::encode(&short_room_id);
        let iter = match from {
            Some(count) => {
                let start = keys::encode(&(short_room_id, count));
                let inner = self.db.iter(Table::Timeline, Some(&start), direction);
                let prefix = prefix.clone();
                Box::new(inner.take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))))
                    as super::engine::KvIter<'_>
            }
            None => self.db.scan_prefix(Table::Timeline, prefix, direction),
        };
        iter.map(|r| {
            let (k, v) = r?;
            let (_, count): (u64, u64) = decode_key(Table::Timeline, &k)?;
            Ok((count, from_record(Table::Timeline, &v)?))
        })
    }

    pub fn outlier(&self, event_id: &str) -> DbResult<Option<OutlierRecord>> {
        self.db
            .get(Table::Outliers, &keys::encode(event_id))?
            .map(|v| from_record(Table::Outliers, &v))
            .transpose()
    }

    pub fn put_outlier(&self, batch: &mut Batch, event_id: &str, record: &OutlierRecord) {
        batch.put(Table::Outliers, keys::encode(event_id), to_record(record));
    }

    /// Forgets an outlier that has joined the timeline.
    pub fn delete_outlier(&self, batch: &mut Batch, event_id: &str) {
        batch.delete(Table::Outliers, keys::encode(event_id));
    }

    /// Indexes a soft-failed event (count 0: not in the timeline).
    pub fn put_event_meta(&self, batch: &mut Batch, event_id: &str, meta: &EventMeta) {
        batch.put(Table::EventIndex, keys::encode(event_id), to_record(meta));
    }

    pub fn remote_invite(&self, user_id: &str, room_id: &str) -> DbResult<Option<RemoteInviteRecord>> {
        self.db
            .get(Table::RemoteInvites, &keys::encode(&(user_id, room_id)))?
            .map(|v| from_record(Table::RemoteInvites, &v))
            .transpose()
    }

    pub fn put_remote_invite(&self, batch: &mut Batch, user_id: &str, room_id: &str, record: &RemoteInviteRecord) {
        batch.put(
            Table::RemoteInvites,
            keys::encode(&(user_id, room_id)),
            to_record(record),
        );
    }

    pub fn delete_remote_invite(&self, batch: &mut Batch, user_id: &str, room_id: &str) {
        batch.delete(Table::RemoteInvites, keys::encode(&(user_id, room_id)));
    }

    pub fn put_membership(&self, batch: &mut Batch, room_id: &str, user_id: &str, membership: &str, count: u64) {
        batch.put(
            Table::RoomMembers,
            keys::encode(&(room_id, user_id)),
            membership.as_bytes().to_vec(),
        );
        let record = UserRoomRecord {
            membership: membership.to_owned(),
            count,
            forgotten: false,
        };
        batch.put(Table::UserRooms, keys::encode(&(user_id, room_id)), to_record(&record));
    }

    /// `(user_id, membership)` of everyone with a membership in the room.
    pub fn members(&self, room_id: &str) -> impl Iterator<Item = DbResult<(String, String)>> + '_ {
        self.db
            .scan_prefix(Table::RoomMembers, keys::encode(&(room_id,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, user): (String, String) = decode_key(Table::RoomMembers, &k)?;
                Ok((user, utf8(Table::RoomMembers, v)?))
            })
    }

    pub fn membership(&self, room_id: &str, user_id: &str) -> DbResult<Option<String>> {
        self.db
            .get(Table::RoomMembers, &keys::encode(&(room_id, user_id)))?
            .map(|v| utf8(Table::RoomMembers, v))
            .transpose()
    }

    /// `(room_id, record)` of every room the user has a membership in.
    pub fn user_rooms(&self, user_id: &str) -> impl Iterator<Item = DbResult<(String, UserRoomRecord)>> + '_ {
        self.db
            .scan_prefix(Table::UserRooms, keys::encode(&(user_id,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, room): (String, String) = decode_key(Table::UserRooms, &k)?;
                Ok((room, from_record(Table::UserRooms, &v)?))
            })
    }

    pub fn user_room(&self, user_id: &str, room_id: &str) -> DbResult<Option<UserRoomRecord>> {
        self.db
            .get(Table::UserRooms, &keys::encode(&(user_id, room_id)))?
            .map(|v| from_record(Table::UserRooms, &v))
            .transpose()
    }

    pub fn put_user_room(&self, batch: &mut Batch, user_id: &str, room_id: &str, record: &UserRoomRecord) {
        batch.put(Table::UserRooms, keys::encode(&(user_id, room_id)), to_record(record));
    }

    pub fn txn_event(&self, user_id: &str, device_id: &str, txn_id: &str) -> DbResult<Option<String>> {
        self.txn_ids
            .get(user_id, device_id, txn_id)?
            .map(|v| utf8(Table::TxnIds, v))
            .transpose()
    }

    /// Remembers the event a transaction sent (for a day, see `txn_ids.rs`).
    pub fn put_txn(
        &self,
        batch: &mut Batch,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
        event_id: &str,
        now_ms: u64,
    ) -> DbResult<()> {
        self.txn_ids
            .put(batch, user_id, device_id, txn_id, event_id.as_bytes(), now_ms)
    }

    /// Adds the deletes of a logged-out device's transaction IDs to `batch`.
    pub fn delete_device_txns(&self, batch: &mut Batch, user_id: &str, device_id: &str) -> DbResult<()> {
        self.txn_ids.delete_device(batch, user_id, device_id)
    }

    /// Indexes transaction IDs of a database from before they expired.
    pub fn backfill_txn_index(&self, now_ms: u64) -> DbResult<usize> {
        self.txn_ids.backfill_index(now_ms)
    }
}
