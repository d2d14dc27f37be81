//! Typed access to [`Table::SlidingSyncConnections`] (owned by
//! `service::sliding_sync`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys, to_record, Batch, Db, DbResult, Direction, Table};

/// One sliding sync connection: the states of its last few responses,
/// oldest first. A request names the response it continues from with its
/// `pos`; the client may retry the latest one or one it never received,
/// so a few are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub states: Vec<ConnectionState>,
}

/// What the client holds after one response.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectionState {
    /// The response's number within the connection (part of its `pos`).
    pub seq: u64,
    /// The stream position the response covered up to.
    pub stream: u64,
    /// Rooms sent on the connection, by room ID.
    pub rooms: BTreeMap<String, SentRoom>,
    /// The room configs rooms were sent with, each once (most rooms share
    /// one); [`SentRoom::config`] indexes this.
    pub configs: Vec<RoomConfigRecord>,
    /// Room subscriptions: clients send each once, so they are kept.
    pub subscriptions: BTreeMap<String, RoomConfigRecord>,
    /// Each list's room count last sent.
    pub list_counts: BTreeMap<String, u64>,
    /// The extensions turned on or off, by name: a request that does not
    /// say keeps what the connection had (clients of the first sliding
    /// sync send an extension's config once).
    pub extensions_enabled: BTreeMap<String, bool>,
}

/// A room as the client holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SentRoom {
    /// The stream position the client has the room up to.
    pub since: u64,
    /// The room config it was last sent with: its index in
    /// [`ConnectionState::configs`].
    pub config: u32,
    /// The membership it was last sent with.
    pub membership: String,
    /// The unread counts last sent (notifications, highlights).
    pub counts: (u64, u64),
}

/// A room config: how many timeline events and which state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomConfigRecord {
    pub timeline_limit: u64,
    /// `(event_type, state_key)` pairs, with the `*`, `$LAZY` and `$ME`
    /// wildcards as the client sent them.
    pub required_state: Vec<(String, String)>,
}

pub struct SlidingSyncTables {
    db: Db,
}

impl SlidingSyncTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn get(&self, user_id: &str, device_id: &str, conn_id: &str) -> DbResult<Option<ConnectionRecord>> {
        self.db
            .get(
                Table::SlidingSyncConnections,
                &keys::encode(&(user_id, device_id, conn_id)),
            )?
            .map(|v| from_record(Table::SlidingSyncConnections, &v))
            .transpose()
    }

    /// Stores a connection's record without waiting for the disk: written
    /// at every response, and a record lost to a power cut costs the
    /// client a fresh start (`M_UNKNOWN_POS`), not data.
    pub fn put(&self, user_id: &str, device_id: &str, conn_id: &str, record: &ConnectionRecord) -> DbResult<()> {
        let mut batch = Batch::new();
        batch.put(
            Table::SlidingSyncConnections,
            keys::encode(&(user_id, device_id, conn_id)),
            to_record(record),
        );
        self.db.write_unsynced(batch)
    }

    /// The connection IDs of one device.
    pub fn connections_of(&self, user_id: &str, device_id: &str) -> DbResult<Vec<String>> {
        self.db
            .scan_prefix(
                Table::SlidingSyncConnections,
                keys::encode(&(user_id, device_id)),
                Direction::Forward,
            )
            .map(|r| {
                let (k, _) = r?;
                let (_, _, conn_id): (String, String, String) = decode_key(Table::SlidingSyncConnections, &k)?;
                Ok(conn_id)
            })
            .collect()
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    pub fn delete(&self, batch: &mut Batch, user_id: &str, device_id: &str, conn_id: &str) {
        batch.delete(
            Table::SlidingSyncConnections,
            keys::encode(&(user_id, device_id, conn_id)),
        );
    }
}
