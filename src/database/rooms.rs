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

/// Where an event sits in its room's timeline, as `EventMeta::count` and
/// the timeline's keys hold it. An event stored as it arrives takes the next
/// stream position (the server-wide count, in order of arrival). An event
/// fetched later from the room's past (backfill) has no stream position: it
/// sits before all of them, numbered back in time from 1, and is held as
/// `BACKFILLED | n`. Position 0 is no place: a soft-failed event.
pub mod position {
    pub const BACKFILLED: u64 = 1 << 63;

    /// The `n`th event fetched from the room's past (1 is the newest).
    pub fn backfilled(n: u64) -> u64 {
        BACKFILLED | n
    }

    /// `n` of a backfilled position.
    pub fn backfill_number(position: u64) -> Option<u64> {
        (position & BACKFILLED != 0).then_some(position & !BACKFILLED)
    }

    /// The stream position; 0 (before every stream position, the place of
    /// everything a client already has) for a backfilled event.
    pub fn stream(position: u64) -> u64 {
        if backfill_number(position).is_some() {
            0
        } else {
            position
        }
    }

    /// A key that orders positions as the timeline does.
    pub fn order(position: u64) -> (bool, u64) {
        match backfill_number(position) {
            Some(n) => (false, u64::MAX - n),
            None => (true, position),
        }
    }

    /// The position just before `position`, where reading backwards after
    /// it goes on. Before the first stream position come the backfilled
    /// events (`backfilled(0)` is their end, with no event at it).
    pub fn before(position: u64) -> u64 {
        match backfill_number(position) {
            Some(n) => backfilled(n.saturating_add(1).min(!BACKFILLED)),
            None if position > 1 => position - 1,
            None => backfilled(0),
        }
    }

    /// The position just after `position`, where reading forwards goes on.
    pub fn after(position: u64) -> u64 {
        match backfill_number(position) {
            Some(0) => 1,
            Some(n) => backfilled(n - 1),
            None => position.saturating_add(1),
        }
    }

    /// The timeline's key of the event at `position`.
    pub(crate) fn key(short_room_id: u64, position: u64) -> Vec<u8> {
        match backfill_number(position) {
            Some(n) => super::keys::encode(&(short_room_id, 0u64, u64::MAX - n)),
            None => super::keys::encode(&(short_room_id, position)),
        }
    }

    pub(crate) fn from_key(key: &[u8]) -> super::DbResult<u64> {
        use super::{decode_key, Table};
        if key.len() > 16 {
            let (_, _, rest): (u64, u64, u64) = decode_key(Table::Timeline, key)?;
            Ok(backfilled(u64::MAX - rest))
        } else {
            let (_, count): (u64, u64) = decode_key(Table::Timeline, key)?;
            Ok(count)
        }
    }
}

/// Where an event is stored and the state around it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventMeta {
    pub short_room_id: u64,
    /// Its place in the timeline (see [`position`]); 0 for a soft-failed
    /// event, which has none.
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

    /// About how many events the rooms' timelines hold (the engine's
    /// estimate: no scan).
    pub fn estimated_events(&self) -> u64 {
        self.db.estimated_keys(Table::Timeline)
    }

    pub fn room(&self, room_id: &str) -> DbResult<Option<RoomRecord>> {
        self.db
            .get(Table::Rooms, &keys::encode(room_id))?
            .map(|v| from_record(Table::Rooms, &v))
            .transpose()
    }

    /// The ID of every room known to this server, in ID order.
    pub fn room_ids(&self) -> impl Iterator<Item = DbResult<String>> + '_ {
        self.db
            .iter(Table::Rooms, None, Direction::Forward)
            .map(|r| decode_key(Table::Rooms, &r?.0))
    }

    pub fn put_room(&self, batch: &mut Batch, room_id: &str, record: &RoomRecord) {
        batch.put(Table::Rooms, keys::encode(room_id), to_record(record));
    }

    pub fn put_event(&self, batch: &mut Batch, event_id: &str, meta: &EventMeta, record: &TimelineRecord) {
        batch.put(
            Table::Timeline,
            position::key(meta.short_room_id, meta.count),
            to_record(record),
        );
        batch.put(Table::EventIndex, keys::encode(event_id), to_record(meta));
    }

    /// Replaces a stored event's record (redaction), keeping its place.
    pub fn replace_event(&self, batch: &mut Batch, meta: &EventMeta, record: &TimelineRecord) {
        batch.put(
            Table::Timeline,
            position::key(meta.short_room_id, meta.count),
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
            .get(Table::Timeline, &position::key(short_room_id, count))?
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
                let start = position::key(short_room_id, count);
                let inner = self.db.iter(Table::Timeline, Some(&start), direction);
                let prefix = prefix.clone();
                Box::new(inner.take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))))
                    as super::engine::KvIter<'_>
            }
            None => self.db.scan_prefix(Table::Timeline, prefix, direction),
        };
        iter.map(|r| {
            let (k, v) = r?;
            Ok((position::from_key(&k)?, from_record(Table::Timeline, &v)?))
        })
    }

    pub fn auth_chain(&self, short_event_id: u64) -> DbResult<Option<Vec<u64>>> {
        self.db
            .get(Table::AuthChains, &keys::encode(&short_event_id))?
            .map(|v| from_record(Table::AuthChains, &v))
            .transpose()
    }

    pub fn put_auth_chain(&self, short_event_id: u64, chain: &[u64]) -> DbResult<()> {
        self.db
            .put(Table::AuthChains, keys::encode(&short_event_id), to_record(&chain))
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

#[cfg(test)]
mod tests {
    use super::position::*;

    /// The timeline's key order, `order`, and `before`/`after` agree: the
    /// backfilled events, oldest first, then the stream.
    #[test]
    fn backfilled_positions_sort_before_the_stream_oldest_first() {
        let timeline = [backfilled(3), backfilled(2), backfilled(1), 1, 2, 40];
        for pair in timeline.windows(2) {
            assert!(key(9, pair[0]) < key(9, pair[1]), "{pair:?}");
            assert!(order(pair[0]) < order(pair[1]), "{pair:?}");
            assert_eq!(from_key(&key(9, pair[0])).unwrap(), pair[0]);
        }
        // The keys of one room stay apart from the next room's.
        assert!(key(9, u64::MAX >> 1) < key(10, backfilled(100)));
        assert_eq!(before(2), 1);
        assert_eq!(before(1), backfilled(0));
        assert_eq!(before(backfilled(1)), backfilled(2));
        assert_eq!(after(backfilled(2)), backfilled(1));
        assert_eq!(after(backfilled(0)), 1);
        // `backfilled(0)` holds no event: it lies between the two parts.
        assert!(key(9, backfilled(1)) < key(9, backfilled(0)) && key(9, backfilled(0)) < key(9, 1));
        assert_eq!(stream(backfilled(5)), 0);
        assert_eq!(stream(7), 7);
    }
}
