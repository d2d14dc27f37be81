//! Typed access to [`Table::Devices`] and [`Table::AccessTokens`] (owned by `service::devices`).

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys::encode, to_record, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceRecord {
    pub display_name: Option<String>,
    /// SHA-256 of the device's current access token.
    pub token_hash: [u8; 32],
    pub created_ms: u64,
    pub last_seen_ms: Option<u64>,
    pub last_seen_ip: Option<String>,
}

pub struct DevicesTables {
    db: Db,
}

impl DevicesTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn get(&self, user_id: &str, device_id: &str) -> DbResult<Option<DeviceRecord>> {
        self.db
            .get(Table::Devices, &encode(&(user_id, device_id)))?
            .map(|b| from_record(Table::Devices, &b))
            .transpose()
    }

    /// All of a user's devices, by device ID.
    pub fn list(&self, user_id: &str) -> DbResult<Vec<(String, DeviceRecord)>> {
        self.db
            .scan_prefix(Table::Devices, encode(&(user_id,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, device_id) = decode_key::<(String, String)>(Table::Devices, &k)?;
                Ok((device_id, from_record(Table::Devices, &v)?))
            })
            .collect()
    }

    /// Stores the device and points its token at it.
    pub fn put(&self, batch: &mut Batch, user_id: &str, device_id: &str, record: &DeviceRecord) {
        batch.put(Table::Devices, encode(&(user_id, device_id)), to_record(record));
        batch.put(
            Table::AccessTokens,
            encode(&record.token_hash),
            encode(&(user_id, device_id)),
        );
    }

    /// Removes the device and its token.
    pub fn delete(&self, batch: &mut Batch, user_id: &str, device_id: &str, record: &DeviceRecord) {
        batch.delete(Table::Devices, encode(&(user_id, device_id)));
        batch.delete(Table::AccessTokens, encode(&record.token_hash));
    }

    /// Replaces a device's token: the old one stops working in the same write.
    pub fn replace_token(
        &self,
        batch: &mut Batch,
        user_id: &str,
        device_id: &str,
        old: &DeviceRecord,
        new: &DeviceRecord,
    ) {
        batch.delete(Table::AccessTokens, encode(&old.token_hash));
        self.put(batch, user_id, device_id, new);
    }

    /// The (user ID, device ID) a token hash belongs to.
    pub fn owner_of_token(&self, token_hash: &[u8; 32]) -> DbResult<Option<(String, String)>> {
        self.db
            .get(Table::AccessTokens, &encode(token_hash))?
            .map(|b| decode_key(Table::AccessTokens, &b))
            .transpose()
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }
}
