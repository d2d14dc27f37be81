//! Typed access to [`Table::Relations`] and [`Table::ThreadRoots`] (owned by
//! `service::relations`).

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys, to_record, Batch, Db, DbError, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelationRecord {
    pub event_id: String,
    pub rel_type: String,
    pub event_type: String,
    pub sender: String,
}

pub struct RelationTables {
    db: Db,
}

impl RelationTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn put_relation(&self, batch: &mut Batch, parent: &str, count: u64, record: &RelationRecord) {
        batch.put(Table::Relations, keys::encode(&(parent, count)), to_record(record));
    }

    /// Events relating to `parent`, oldest first, with their stream positions.
    pub fn relations(&self, parent: &str) -> DbResult<Vec<(u64, RelationRecord)>> {
        self.db
            .scan_prefix(Table::Relations, keys::encode(&(parent,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, count): (String, u64) = decode_key(Table::Relations, &k)?;
                Ok((count, from_record(Table::Relations, &v)?))
            })
            .collect()
    }

    pub fn put_thread_root(&self, batch: &mut Batch, room_id: &str, root: &str, latest: u64) {
        batch.put(
            Table::ThreadRoots,
            keys::encode(&(room_id, root)),
            latest.to_be_bytes().to_vec(),
        );
    }

    /// `(root_event_id, latest position)` of every thread in a room.
    pub fn thread_roots(&self, room_id: &str) -> DbResult<Vec<(String, u64)>> {
        self.db
            .scan_prefix(Table::ThreadRoots, keys::encode(&(room_id,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, root): (String, String) = decode_key(Table::ThreadRoots, &k)?;
                let latest: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| DbError::corrupt(Table::ThreadRoots, "value is not 8 bytes"))?;
                Ok((root, u64::from_be_bytes(latest)))
            })
            .collect()
    }
}
