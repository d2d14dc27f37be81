//! Typed access to [`Table::Pushers`] and [`Table::PushersByKey`] (owned by
//! `service::pushers`).

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys, to_record, Batch, Db, DbResult, Direction, Table};

/// One pusher of one user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PusherRecord {
    /// The device whose access token set it; it goes with the device.
    pub device_id: Option<String>,
    /// When the pusher was last set, in ms since the Unix epoch.
    pub set_ms: u64,
    /// The pusher as the client gave it (ruma's `Pusher`), as JSON.
    pub json: String,
}

pub struct PusherTables {
    db: Db,
}

impl PusherTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    pub fn get(&self, user_id: &str, app_id: &str, pushkey: &str) -> DbResult<Option<PusherRecord>> {
        self.db
            .get(Table::Pushers, &keys::encode(&(user_id, app_id, pushkey)))?
            .map(|v| from_record(Table::Pushers, &v))
            .transpose()
    }

    pub fn put(&self, batch: &mut Batch, user_id: &str, app_id: &str, pushkey: &str, record: &PusherRecord) {
        batch.put(
            Table::Pushers,
            keys::encode(&(user_id, app_id, pushkey)),
            to_record(record),
        );
        batch.put(
            Table::PushersByKey,
            keys::encode(&(app_id, pushkey, user_id)),
            Vec::new(),
        );
    }

    pub fn delete(&self, batch: &mut Batch, user_id: &str, app_id: &str, pushkey: &str) {
        batch.delete(Table::Pushers, keys::encode(&(user_id, app_id, pushkey)));
        batch.delete(Table::PushersByKey, keys::encode(&(app_id, pushkey, user_id)));
    }

    /// `(app_id, pushkey, record)` of each of the user's pushers.
    pub fn of_user(&self, user_id: &str) -> DbResult<Vec<(String, String, PusherRecord)>> {
        self.db
            .scan_prefix(Table::Pushers, keys::encode(&(user_id,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, app_id, pushkey): (String, String, String) = decode_key(Table::Pushers, &k)?;
                Ok((app_id, pushkey, from_record(Table::Pushers, &v)?))
            })
            .collect()
    }

    /// The users with a pusher of this app ID and pushkey.
    pub fn users_of(&self, app_id: &str, pushkey: &str) -> DbResult<Vec<String>> {
        self.db
            .scan_prefix(
                Table::PushersByKey,
                keys::encode(&(app_id, pushkey)),
                Direction::Forward,
            )
            .map(|r| {
                let (k, _) = r?;
                let (_, _, user_id): (String, String, String) = decode_key(Table::PushersByKey, &k)?;
                Ok(user_id)
            })
            .collect()
    }

    /// Every user with at least one pusher (read at start).
    pub fn users(&self) -> DbResult<Vec<String>> {
        let mut found: Vec<String> = Vec::new();
        for r in self.db.iter(Table::Pushers, None, Direction::Forward) {
            let (k, _) = r?;
            let (user_id, _, _): (String, String, String) = decode_key(Table::Pushers, &k)?;
            if found.last() != Some(&user_id) {
                found.push(user_id);
            }
        }
        Ok(found)
    }
}
