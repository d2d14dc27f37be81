//! Typed access to [`Table::RegistrationTokens`] and
//! [`Table::RegistrationTokenHolds`] (owned by `service::registration_tokens`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys::encode, to_record, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// `None`: any number of registrations.
    pub uses_allowed: Option<u64>,
    /// Registrations completed with the token.
    pub completed: u64,
    /// Milliseconds since the epoch; `None`: never expires.
    pub expiry_time: Option<u64>,
}

/// A registration session that passed the token stage and has not
/// registered yet: it holds one of the token's uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HoldRecord {
    pub token: String,
    /// When the session started; the hold ends with the session.
    pub session_created_ms: u64,
}

pub struct RegistrationTokenTables {
    db: Db,
}

impl RegistrationTokenTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn get(&self, token: &str) -> DbResult<Option<TokenRecord>> {
        self.read(Table::RegistrationTokens, token)
    }

    pub fn put(&self, token: &str, record: &TokenRecord) -> DbResult<()> {
        self.db
            .put(Table::RegistrationTokens, encode(&(token,)), to_record(record))
    }

    /// Every token with its record, by token.
    pub fn all(&self) -> DbResult<Vec<(String, TokenRecord)>> {
        self.read_all(Table::RegistrationTokens)
    }

    /// Removes `token` and the holds on it; whether it was there.
    pub fn delete(&self, token: &str) -> DbResult<bool> {
        let key = encode(&(token,));
        if self.db.get(Table::RegistrationTokens, &key)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.delete(Table::RegistrationTokens, key);
        for (session, hold) in self.holds()? {
            if hold.token == token {
                batch.delete(Table::RegistrationTokenHolds, encode(&(session.as_str(),)));
            }
        }
        self.db.write(batch)?;
        Ok(true)
    }

    pub fn hold(&self, session: &str) -> DbResult<Option<HoldRecord>> {
        self.read(Table::RegistrationTokenHolds, session)
    }

    pub fn put_hold(&self, session: &str, hold: &HoldRecord) -> DbResult<()> {
        self.db
            .put(Table::RegistrationTokenHolds, encode(&(session,)), to_record(hold))
    }

    /// Every hold, `(session, hold)`.
    pub fn holds(&self) -> DbResult<Vec<(String, HoldRecord)>> {
        self.read_all(Table::RegistrationTokenHolds)
    }

    /// Turns the hold of `session` into a completed use of its token (if
    /// the token still exists), in one write.
    pub fn complete_hold(&self, session: &str, token: &str, record: Option<&TokenRecord>) -> DbResult<()> {
        let mut batch = Batch::new();
        batch.delete(Table::RegistrationTokenHolds, encode(&(session,)));
        if let Some(record) = record {
            batch.put(Table::RegistrationTokens, encode(&(token,)), to_record(record));
        }
        self.db.write(batch)
    }

    /// Deletes the holds of sessions created before `cutoff_ms`; returns how
    /// many.
    pub fn delete_holds_before(&self, cutoff_ms: u64) -> DbResult<usize> {
        let mut batch = Batch::new();
        let mut count = 0;
        for (session, hold) in self.holds()? {
            if hold.session_created_ms < cutoff_ms {
                batch.delete(Table::RegistrationTokenHolds, encode(&(session.as_str(),)));
                count += 1;
            }
        }
        self.db.write(batch)?;
        Ok(count)
    }

    /// The record under `(name,)` in `table` (both tables are keyed so).
    fn read<T: DeserializeOwned>(&self, table: Table, name: &str) -> DbResult<Option<T>> {
        self.db
            .get(table, &encode(&(name,)))?
            .map(|b| from_record(table, &b))
            .transpose()
    }

    /// Every `(name, record)` of `table`, by name.
    fn read_all<T: DeserializeOwned>(&self, table: Table) -> DbResult<Vec<(String, T)>> {
        self.db
            .iter(table, None, Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (name,): (String,) = decode_key(table, &k)?;
                Ok((name, from_record(table, &v)?))
            })
            .collect()
    }
}
