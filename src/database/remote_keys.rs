//! Typed access to the remote key tables (owned by
//! `service::federation::keys`): other servers' signing keys and the key
//! documents they were read from.

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys, to_record, Batch, Db, DbResult, Direction, Table};

/// One key of another server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteKeyRecord {
    /// The public key, unpadded base64.
    pub key: String,
    /// Until when it may verify signatures (for a retired key, when it was
    /// retired), in ms since the epoch.
    pub valid_until_ms: u64,
}

pub struct RemoteKeyTables {
    db: Db,
}

impl RemoteKeyTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    /// Every key of `server` known here, by key ID.
    pub fn keys(&self, server: &str) -> DbResult<Vec<(String, RemoteKeyRecord)>> {
        self.db
            .scan_prefix(Table::RemoteServerKeys, keys::encode(&(server,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, key_id): (String, String) = decode_key(Table::RemoteServerKeys, &k)?;
                Ok((key_id, from_record(Table::RemoteServerKeys, &v)?))
            })
            .collect()
    }

    pub fn put_key(&self, batch: &mut Batch, server: &str, key_id: &str, record: &RemoteKeyRecord) {
        batch.put(
            Table::RemoteServerKeys,
            keys::encode(&(server, key_id)),
            to_record(record),
        );
    }

    /// The newest key document of `server` as it signed it.
    pub fn document(&self, server: &str) -> DbResult<Option<String>> {
        self.db
            .get(Table::RemoteKeyDocuments, &keys::encode(server))?
            .map(|v| super::utf8(Table::RemoteKeyDocuments, v))
            .transpose()
    }

    pub fn put_document(&self, batch: &mut Batch, server: &str, json: &str) {
        batch.put(
            Table::RemoteKeyDocuments,
            keys::encode(server),
            json.as_bytes().to_vec(),
        );
    }
}
