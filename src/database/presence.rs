//! Typed access to [`Table::Presence`] and [`Table::PresenceChanges`] (owned
//! by `service::presence`).

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys::encode, to_record, utf8, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresenceRecord {
    /// `online`, `unavailable` or `offline`.
    pub presence: String,
    pub status_msg: Option<String>,
    /// When the user was last active, in ms since the epoch.
    pub last_active_ms: u64,
    /// Stream position of the last change others are told about.
    pub count: u64,
}

pub struct PresenceTables {
    db: Db,
}

impl PresenceTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn get(&self, user_id: &str) -> DbResult<Option<PresenceRecord>> {
        self.db
            .get(Table::Presence, &encode(&(user_id,)))?
            .map(|v| from_record(Table::Presence, &v))
            .transpose()
    }

    /// Stores `record`, moving the user's change-index entry from the old
    /// position to the new one in the same batch.
    pub fn put(&self, user_id: &str, old: Option<&PresenceRecord>, record: &PresenceRecord) -> DbResult<()> {
        let mut batch = Batch::new();
        self.put_in(&mut batch, user_id, old, record);
        self.db.write(batch)
    }

    /// As [`Self::put`], in `batch`.
    pub fn put_in(&self, batch: &mut Batch, user_id: &str, old: Option<&PresenceRecord>, record: &PresenceRecord) {
        if let Some(old) = old.filter(|o| o.count != record.count) {
            batch.delete(Table::PresenceChanges, encode(&(old.count,)));
        }
        batch.put(
            Table::PresenceChanges,
            encode(&(record.count,)),
            user_id.as_bytes().to_vec(),
        );
        batch.put(Table::Presence, encode(&(user_id,)), to_record(record));
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    /// The users whose presence changed after position `since`, oldest first.
    pub fn changed_since(&self, since: u64) -> DbResult<Vec<(u64, String)>> {
        self.db
            .iter(Table::PresenceChanges, Some(&encode(&(since + 1,))), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (count,): (u64,) = decode_key(Table::PresenceChanges, &k)?;
                Ok((count, utf8(Table::PresenceChanges, v)?))
            })
            .collect()
    }
}
