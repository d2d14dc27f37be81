//! Typed access to [`Table::Users`], [`Table::Profiles`],
//! [`Table::ErasedUsers`], [`Table::Guests`], [`Table::Admins`] and
//! [`Table::ServerAccounts`] (owned by `service::users`).

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

    /// Records that `user_id` was erased at stream position `position`.
    pub fn put_erased(&self, batch: &mut Batch, user_id: &str, position: u64) {
        batch.put(Table::ErasedUsers, encode(user_id), position.to_be_bytes().to_vec());
    }

    /// Every erased user and the stream position of the erasure.
    pub fn erased(&self) -> DbResult<Vec<(String, u64)>> {
        self.db
            .iter(Table::ErasedUsers, None, Direction::Forward)
            .map(|entry| {
                let (key, value) = entry?;
                let position: [u8; 8] = value
                    .as_slice()
                    .try_into()
                    .map_err(|_| super::DbError::corrupt(Table::ErasedUsers, "position is not 8 bytes"))?;
                Ok((
                    decode_key::<String>(Table::ErasedUsers, &key)?,
                    u64::from_be_bytes(position),
                ))
            })
            .collect()
    }

    /// Marks (`true`) or unmarks a guest account.
    pub fn set_guest(&self, batch: &mut Batch, user_id: &str, guest: bool) {
        match guest {
            true => batch.put(Table::Guests, encode(user_id), Vec::new()),
            false => batch.delete(Table::Guests, encode(user_id)),
        }
    }

    /// Every guest account.
    pub fn guests(&self) -> DbResult<Vec<String>> {
        self.user_ids_in(Table::Guests)
    }

    /// The user IDs keying a table of `(user_id: str)` keys.
    fn user_ids_in(&self, table: Table) -> DbResult<Vec<String>> {
        self.db
            .iter(table, None, Direction::Forward)
            .map(|entry| decode_key::<String>(table, &entry?.0))
            .collect()
    }

    /// Makes `user_id` a server admin.
    pub fn put_admin(&self, batch: &mut Batch, user_id: &str) {
        batch.put(Table::Admins, encode(user_id), Vec::new());
    }

    /// Takes the admin flag from `user_id`.
    pub fn delete_admin(&self, batch: &mut Batch, user_id: &str) {
        batch.delete(Table::Admins, encode(user_id));
    }

    pub fn is_admin(&self, user_id: &str) -> DbResult<bool> {
        Ok(self.db.get(Table::Admins, &encode(user_id))?.is_some())
    }

    /// Every server admin.
    pub fn admins(&self) -> DbResult<Vec<String>> {
        self.user_ids_in(Table::Admins)
    }

    /// Marks an account as one the server runs itself.
    pub fn put_server_account(&self, batch: &mut Batch, user_id: &str) {
        batch.put(Table::ServerAccounts, encode(user_id), Vec::new());
    }

    pub fn is_server_account(&self, user_id: &str) -> DbResult<bool> {
        Ok(self.db.get(Table::ServerAccounts, &encode(user_id))?.is_some())
    }

    /// Whether any account of a person (neither a guest nor one the server
    /// runs) exists yet. Stops at the first one found.
    pub fn any_person(&self) -> DbResult<bool> {
        for entry in self.db.iter(Table::Users, None, Direction::Forward) {
            let user_id = decode_key::<String>(Table::Users, &entry?.0)?;
            let guest = self.db.get(Table::Guests, &encode(user_id.as_str()))?.is_some();
            if !guest && !self.is_server_account(&user_id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }
}
