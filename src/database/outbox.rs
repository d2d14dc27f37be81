//! Typed access to [`Table::Outbox`] (owned by `service::outbox`): what
//! waits to be sent to each destination, oldest first.

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys, to_record, Batch, Db, DbResult, Direction, Table};

/// One thing to deliver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum OutboxItem {
    /// A PDU in its federation form, as JSON, with its event ID.
    Pdu { event_id: String, json: String },
    /// An EDU (`{"edu_type": …, "content": …}`) as JSON.
    Edu(String),
}

pub struct OutboxTables {
    db: Db,
}

impl OutboxTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    pub fn next_seq(&self) -> DbResult<u64> {
        self.db.next_count()
    }

    pub fn push(&self, batch: &mut Batch, destination: &str, seq: u64, item: &OutboxItem) {
        batch.put(Table::Outbox, keys::encode(&(destination, seq)), to_record(item));
    }

    /// Up to `limit` items for `destination`, oldest first.
    pub fn oldest(&self, destination: &str, limit: usize) -> DbResult<Vec<(u64, OutboxItem)>> {
        self.db
            .scan_prefix(Table::Outbox, keys::encode(&(destination,)), Direction::Forward)
            .take(limit)
            .map(|r| {
                let (k, v) = r?;
                let (_, seq): (String, u64) = decode_key(Table::Outbox, &k)?;
                Ok((seq, from_record(Table::Outbox, &v)?))
            })
            .collect()
    }

    /// How many items wait for `destination`, counting at most `limit`.
    pub fn count(&self, destination: &str, limit: usize) -> DbResult<usize> {
        let mut count = 0;
        for r in self
            .db
            .scan_prefix(Table::Outbox, keys::encode(&(destination,)), Direction::Forward)
            .take(limit)
        {
            r?;
            count += 1;
        }
        Ok(count)
    }

    pub fn remove(&self, batch: &mut Batch, destination: &str, seq: u64) {
        batch.delete(Table::Outbox, keys::encode(&(destination, seq)));
    }

    /// Every destination with something waiting (read at start).
    pub fn destinations(&self) -> DbResult<Vec<String>> {
        let mut found: Vec<String> = Vec::new();
        for r in self.db.iter(Table::Outbox, None, Direction::Forward) {
            let (k, _) = r?;
            let (destination, _): (String, u64) = decode_key(Table::Outbox, &k)?;
            if found.last() != Some(&destination) {
                found.push(destination);
            }
        }
        Ok(found)
    }
}
