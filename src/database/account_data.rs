//! Typed access to [`Table::AccountData`] (owned by `service::account_data`).

use super::{keys::encode, utf8, Db, DbResult, Table};

pub struct AccountDataTables {
    db: Db,
}

/// Global account data is stored under an empty room ID.
fn key(user_id: &str, room_id: Option<&str>, event_type: &str) -> Vec<u8> {
    encode(&(user_id, room_id.unwrap_or(""), event_type))
}

impl AccountDataTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The content JSON, as stored.
    pub fn get(&self, user_id: &str, room_id: Option<&str>, event_type: &str) -> DbResult<Option<String>> {
        self.db
            .get(Table::AccountData, &key(user_id, room_id, event_type))?
            .map(|b| utf8(Table::AccountData, b))
            .transpose()
    }

    pub fn put(&self, user_id: &str, room_id: Option<&str>, event_type: &str, content_json: &str) -> DbResult<()> {
        self.db.put(
            Table::AccountData,
            key(user_id, room_id, event_type),
            content_json.as_bytes().to_vec(),
        )
    }
}
