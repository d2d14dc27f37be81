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
        batch.put(Table::RelationParents, keys::encode(parent), Vec::new());
    }

    pub fn delete_relation(&self, batch: &mut Batch, parent: &str, count: u64) {
        batch.delete(Table::Relations, keys::encode(&(parent, count)));
    }

    /// Whether any event relates to `parent`.
    pub fn has_relations(&self, parent: &str) -> DbResult<bool> {
        Ok(self.db.get(Table::RelationParents, &keys::encode(parent))?.is_some())
    }

    /// Fills [`Table::RelationParents`] in a database written before it
    /// existed; does nothing once it has entries (or there are no relations).
    pub fn backfill_parents(&self) -> DbResult<usize> {
        if self
            .db
            .iter(Table::RelationParents, None, Direction::Forward)
            .next()
            .is_some()
        {
            return Ok(0);
        }
        let mut batch = Batch::new();
        let mut added = 0;
        for entry in self.db.iter(Table::Relations, None, Direction::Forward) {
            let (k, _) = entry?;
            let (parent, _): (String, u64) = decode_key(Table::Relations, &k)?;
            batch.put(Table::RelationParents, keys::encode(&parent), Vec::new());
            added += 1;
            // Bounded memory for a large database.
            if added % 10_000 == 0 {
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        self.db.write(batch)?;
        Ok(added)
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

    pub fn delete_thread_root(&self, batch: &mut Batch, room_id: &str, root: &str) {
        batch.delete(Table::ThreadRoots, keys::encode(&(room_id, root)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;

    #[test]
    fn related_events_are_marked_and_an_older_database_is_backfilled() {
        let dir = tempfile::tempdir().unwrap();
        let tables = RelationTables::new(open_test_db(dir.path()));
        let record = RelationRecord {
            event_id: "$edit".to_owned(),
            rel_type: "m.replace".to_owned(),
            event_type: "m.room.message".to_owned(),
            sender: "@a:x".to_owned(),
        };
        let mut batch = Batch::new();
        tables.put_relation(&mut batch, "$parent", 7, &record);
        tables.db.write(batch).unwrap();
        assert!(tables.has_relations("$parent").unwrap());
        assert!(!tables.has_relations("$other").unwrap());
        assert_eq!(tables.backfill_parents().unwrap(), 0, "already indexed");

        // A database from before the markers: relations without them.
        let dir = tempfile::tempdir().unwrap();
        let tables = RelationTables::new(open_test_db(dir.path()));
        let mut batch = Batch::new();
        batch.put(Table::Relations, keys::encode(&("$old", 3u64)), to_record(&record));
        tables.db.write(batch).unwrap();
        assert!(!tables.has_relations("$old").unwrap());
        assert_eq!(tables.backfill_parents().unwrap(), 1);
        assert!(tables.has_relations("$old").unwrap());
        assert_eq!(tables.backfill_parents().unwrap(), 0);
    }
}
