//! Typed access to [`Table::OpenIdTokens`] (owned by `service::openid`).

use super::{decode_key, keys, utf8, Batch, Db, DbResult, Direction, Table};

/// Expired tokens dropped per new one.
const EXPIRED_PER_ISSUE: usize = 4;

pub struct OpenIdTables {
    db: Db,
}

impl OpenIdTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Stores a token (by its hash) for `user_id` until `expires_ms`, and
    /// drops a few tokens that expired before `now_ms`.
    pub fn put(&self, expires_ms: u64, token_sha256: [u8; 32], user_id: &str, now_ms: u64) -> DbResult<()> {
        let mut batch = Batch::new();
        for entry in self
            .db
            .iter(Table::OpenIdTokens, None, Direction::Forward)
            .take(EXPIRED_PER_ISSUE)
        {
            let (key, _) = entry?;
            let (expires, _): (u64, [u8; 32]) = decode_key(Table::OpenIdTokens, &key)?;
            if expires >= now_ms {
                break;
            }
            batch.delete(Table::OpenIdTokens, key);
        }
        batch.put(
            Table::OpenIdTokens,
            keys::encode(&(expires_ms, token_sha256)),
            user_id.as_bytes().to_vec(),
        );
        self.db.write(batch)
    }

    #[cfg(test)]
    pub fn db_for_test(&self) -> Db {
        self.db.clone()
    }

    /// The user a token was issued to, if it is stored.
    pub fn user(&self, expires_ms: u64, token_sha256: [u8; 32]) -> DbResult<Option<String>> {
        self.db
            .get(Table::OpenIdTokens, &keys::encode(&(expires_ms, token_sha256)))?
            .map(|v| utf8(Table::OpenIdTokens, v))
            .transpose()
    }
}
