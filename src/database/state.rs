//! Typed access to the short-ID and state-snapshot tables (owned by
//! `service::state`).

use serde::{Deserialize, Serialize};

use super::{from_record, keys, to_record, utf8, Batch, Db, DbError, DbResult, Table};

/// One state entry: `short_state_key ‖ short_event_id`, big-endian, so that
/// entries sort by state key.
pub type StateEntry = [u8; 16];

pub fn entry(short_state_key: u64, short_event_id: u64) -> StateEntry {
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&short_state_key.to_be_bytes());
    e[8..].copy_from_slice(&short_event_id.to_be_bytes());
    e
}

pub fn split_entry(e: &StateEntry) -> (u64, u64) {
    let (key, event) = e.split_at(8);
    (
        u64::from_be_bytes(key.try_into().expect("8 bytes")),
        u64::from_be_bytes(event.try_into().expect("8 bytes")),
    )
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The snapshot this one is a diff against; `None` for a full state.
    pub parent: Option<u64>,
    /// How many parents lie below (0 for a full state).
    pub depth: u8,
    pub added: Vec<StateEntry>,
    pub removed: Vec<StateEntry>,
}

pub struct StateTables {
    db: Db,
}

fn u64_value(table: Table, bytes: &[u8]) -> DbResult<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| DbError::corrupt(table, "value is not 8 bytes"))?;
    Ok(u64::from_be_bytes(arr))
}

impl StateTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn short_event_id(&self, event_id: &str) -> DbResult<Option<u64>> {
        self.db
            .get(Table::ShortEventIds, &keys::encode(event_id))?
            .map(|v| u64_value(Table::ShortEventIds, &v))
            .transpose()
    }

    pub fn event_id(&self, short: u64) -> DbResult<Option<String>> {
        self.db
            .get(Table::EventIdsByShort, &keys::encode(&short))?
            .map(|v| utf8(Table::EventIdsByShort, v))
            .transpose()
    }

    pub fn put_short_event_id(&self, batch: &mut Batch, event_id: &str, short: u64) {
        batch.put(
            Table::ShortEventIds,
            keys::encode(event_id),
            short.to_be_bytes().to_vec(),
        );
        batch.put(
            Table::EventIdsByShort,
            keys::encode(&short),
            event_id.as_bytes().to_vec(),
        );
    }

    pub fn short_state_key(&self, event_type: &str, state_key: &str) -> DbResult<Option<u64>> {
        self.db
            .get(Table::ShortStateKeys, &keys::encode(&(event_type, state_key)))?
            .map(|v| u64_value(Table::ShortStateKeys, &v))
            .transpose()
    }

    pub fn state_key(&self, short: u64) -> DbResult<Option<(String, String)>> {
        self.db
            .get(Table::StateKeysByShort, &keys::encode(&short))?
            .map(|v| super::decode_key(Table::StateKeysByShort, &v))
            .transpose()
    }

    pub fn put_short_state_key(&self, batch: &mut Batch, event_type: &str, state_key: &str, short: u64) {
        let key = keys::encode(&(event_type, state_key));
        batch.put(Table::ShortStateKeys, key.clone(), short.to_be_bytes().to_vec());
        batch.put(Table::StateKeysByShort, keys::encode(&short), key);
    }

    pub fn snapshot(&self, id: u64) -> DbResult<Option<SnapshotRecord>> {
        self.db
            .get(Table::StateSnapshots, &keys::encode(&id))?
            .map(|v| from_record(Table::StateSnapshots, &v))
            .transpose()
    }

    pub fn snapshot_by_hash(&self, hash: &[u8; 32]) -> DbResult<Option<u64>> {
        self.db
            .get(Table::StateSnapshotsByHash, &keys::encode(hash))?
            .map(|v| u64_value(Table::StateSnapshotsByHash, &v))
            .transpose()
    }

    pub fn put_snapshot(&self, batch: &mut Batch, id: u64, hash: &[u8; 32], record: &SnapshotRecord) {
        batch.put(Table::StateSnapshots, keys::encode(&id), to_record(record));
        batch.put(
            Table::StateSnapshotsByHash,
            keys::encode(hash),
            id.to_be_bytes().to_vec(),
        );
    }

    pub fn next_id(&self) -> DbResult<u64> {
        self.db.next_count()
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_back_and_sort_by_state_key() {
        let e = entry(7, u64::MAX - 1);
        assert_eq!(split_entry(&e), (7, u64::MAX - 1));
        assert!(entry(1, 999) < entry(2, 0));
    }
}
