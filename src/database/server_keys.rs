//! Typed access to [`Table::ServerSigningKeys`] (owned by `service::server_keys`).

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys::encode, to_record, Db, DbResult, Direction, Table};

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// The key pair as a PKCS#8 v2 DER document.
    pub pkcs8: Vec<u8>,
    pub created_ms: u64,
    /// When the key was retired; `None` for the key in use.
    pub expired_ms: Option<u64>,
}

// Never print the private key.
impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("created_ms", &self.created_ms)
            .field("expired_ms", &self.expired_ms)
            .finish_non_exhaustive()
    }
}

pub struct ServerKeysTables {
    db: Db,
}

impl ServerKeysTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Every key this server has had, by key ID.
    pub fn all(&self) -> DbResult<Vec<(String, SigningKeyRecord)>> {
        self.db
            .iter(Table::ServerSigningKeys, None, Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                Ok((
                    decode_key(Table::ServerSigningKeys, &k)?,
                    from_record(Table::ServerSigningKeys, &v)?,
                ))
            })
            .collect()
    }

    pub fn put(&self, key_id: &str, record: &SigningKeyRecord) -> DbResult<()> {
        self.db.put(Table::ServerSigningKeys, encode(key_id), to_record(record))
    }
}
