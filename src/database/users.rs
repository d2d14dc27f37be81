//! Typed access to [`Table::Users`] and [`Table::Profiles`] (owned by `service::users`).

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys::encode, to_record, utf8, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRecord {
    /// Argon2id PHC string; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    pub created_ms: u64,
    pub deactivated: bool,
}

pub struct UsersTables {
    db: Db,
}

impl UsersTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn get(&self, user_id: &str) -> DbResult<Option<UserRecord>> {
        self.db
            .get(Table::Users, &encode(user_id))?
            .map(|b| from_record(Table::Users, &b))
            .transpose()
    }

    pub fn put(&self, batch: &mut Batch, user_id: &str, record: &UserRecord) {
        batch.put(Table::Users, encode(user_id), to_record(record));
    }

    /// Every account, in user ID order.
    pub fn all(&self) -> impl Iterator<Item = DbResult<(String, UserRecord)>> + '_ {
        self.db.iter(Table::Users, None, Direction::Forward).map(|r| {
            let (k, v) = r?;
            Ok((decode_key::<String>(Table::Users, &k)?, from_record(Table::Users, &v)?))
        })
    }

    pub fn profile_field(&self, user_id: &str, field: &str) -> DbResult<Option<String>> {
        self.db
            .get(Table::Profiles, &encode(&(user_id, field)))?
            .map(|b| utf8(Table::Profiles, b))
            .transpose()
    }

    /// Sets (`Some`) or clears (`None`) one profile field.
    pub fn set_profile_field(&self, batch: &mut Batch, user_id: &str, field: &str, value: Option<&str>) {
        let key = encode(&(user_id, field));
        match value {
            Some(v) => batch.put(Table::Profiles, key, v.as_bytes().to_vec()),
            None => batch.delete(Table::Profiles, key),
        }
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }
}
