//! Typed access to the end-to-end key tables (owned by `service::e2e_keys`):
//! [`Table::DeviceKeys`], [`Table::OneTimeKeys`], [`Table::FallbackKeys`],
//! [`Table::CrossSigningKeys`], [`Table::KeySignatures`] and
//! [`Table::DeviceListChanges`] and [`Table::DeviceListStreamIds`]. Keys are stored as the JSON the client
//! uploaded (with signatures merged in), since clients verify signatures
//! over exactly that JSON.

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys::encode, to_record, utf8, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FallbackKeyRecord {
    /// The full key ID, e.g. `signed_curve25519:AAAAGj`.
    pub key_id: String,
    pub json: String,
    /// Handed out by a claim since it was uploaded.
    pub used: bool,
}

pub struct E2eKeyTables {
    db: Db,
}

impl E2eKeyTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    pub fn device_keys(&self, user_id: &str, device_id: &str) -> DbResult<Option<String>> {
        self.db
            .get(Table::DeviceKeys, &encode(&(user_id, device_id)))?
            .map(|v| utf8(Table::DeviceKeys, v))
            .transpose()
    }

    /// Every device of the user that has uploaded keys: (device ID, JSON).
    pub fn all_device_keys(&self, user_id: &str) -> DbResult<Vec<(String, String)>> {
        self.db
            .scan_prefix(Table::DeviceKeys, encode(&(user_id,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, device_id): (String, String) = decode_key(Table::DeviceKeys, &k)?;
                Ok((device_id, utf8(Table::DeviceKeys, v)?))
            })
            .collect()
    }

    pub fn put_device_keys(&self, batch: &mut Batch, user_id: &str, device_id: &str, json: &str) {
        batch.put(
            Table::DeviceKeys,
            encode(&(user_id, device_id)),
            json.as_bytes().to_vec(),
        );
    }

    pub fn one_time_key(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
    ) -> DbResult<Option<String>> {
        self.db
            .get(Table::OneTimeKeys, &encode(&(user_id, device_id, algorithm, key_id)))?
            .map(|v| utf8(Table::OneTimeKeys, v))
            .transpose()
    }

    pub fn put_one_time_key(
        &self,
        batch: &mut Batch,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
        json: &str,
    ) {
        batch.put(
            Table::OneTimeKeys,
            encode(&(user_id, device_id, algorithm, key_id)),
            json.as_bytes().to_vec(),
        );
    }

    /// The first unclaimed one-time key of this algorithm: (key ID, JSON).
    pub fn first_one_time_key(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> DbResult<Option<(String, String)>> {
        self.db
            .scan_prefix(
                Table::OneTimeKeys,
                encode(&(user_id, device_id, algorithm)),
                Direction::Forward,
            )
            .next()
            .map(|r| {
                let (k, v) = r?;
                let (_, _, _, key_id): (String, String, String, String) = decode_key(Table::OneTimeKeys, &k)?;
                Ok((key_id, utf8(Table::OneTimeKeys, v)?))
            })
            .transpose()
    }

    pub fn delete_one_time_key(
        &self,
        batch: &mut Batch,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
    ) {
        batch.delete(Table::OneTimeKeys, encode(&(user_id, device_id, algorithm, key_id)));
    }

    /// The number of unclaimed one-time keys of a device, per algorithm.
    pub fn one_time_key_counts(&self, user_id: &str, device_id: &str) -> DbResult<Vec<(String, u64)>> {
        let mut counts: Vec<(String, u64)> = Vec::new();
        for r in self
            .db
            .scan_prefix(Table::OneTimeKeys, encode(&(user_id, device_id)), Direction::Forward)
        {
            let (k, _) = r?;
            let (_, _, algorithm, _): (String, String, String, String) = decode_key(Table::OneTimeKeys, &k)?;
            match counts.last_mut() {
                Some((last, n)) if *last == algorithm => *n += 1,
                _ => counts.push((algorithm, 1)),
            }
        }
        Ok(counts)
    }

    pub fn fallback_keys(&self, user_id: &str, device_id: &str) -> DbResult<Vec<(String, FallbackKeyRecord)>> {
        self.db
            .scan_prefix(Table::FallbackKeys, encode(&(user_id, device_id)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, _, algorithm): (String, String, String) = decode_key(Table::FallbackKeys, &k)?;
                Ok((algorithm, from_record(Table::FallbackKeys, &v)?))
            })
            .collect()
    }

    pub fn fallback_key(&self, user_id: &str, device_id: &str, algorithm: &str) -> DbResult<Option<FallbackKeyRecord>> {
        self.db
            .get(Table::FallbackKeys, &encode(&(user_id, device_id, algorithm)))?
            .map(|v| from_record(Table::FallbackKeys, &v))
            .transpose()
    }

    pub fn put_fallback_key(
        &self,
        batch: &mut Batch,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        record: &FallbackKeyRecord,
    ) {
        batch.put(
            Table::FallbackKeys,
            encode(&(user_id, device_id, algorithm)),
            to_record(record),
        );
    }

    /// Removes every key of a device: device keys, one-time and fallback keys.
    pub fn delete_device(&self, batch: &mut Batch, user_id: &str, device_id: &str) -> DbResult<()> {
        batch.delete(Table::DeviceKeys, encode(&(user_id, device_id)));
        for table in [Table::OneTimeKeys, Table::FallbackKeys] {
            for r in self
                .db
                .scan_prefix(table, encode(&(user_id, device_id)), Direction::Forward)
            {
                let (k, _) = r?;
                batch.delete(table, k);
            }
        }
        Ok(())
    }

    /// A cross-signing key by usage (`master`, `self_signing`, `user_signing`).
    pub fn cross_signing_key(&self, user_id: &str, usage: &str) -> DbResult<Option<String>> {
        self.db
            .get(Table::CrossSigningKeys, &encode(&(user_id, usage)))?
            .map(|v| utf8(Table::CrossSigningKeys, v))
            .transpose()
    }

    pub fn put_cross_signing_key(&self, batch: &mut Batch, user_id: &str, usage: &str, json: &str) {
        batch.put(
            Table::CrossSigningKeys,
            encode(&(user_id, usage)),
            json.as_bytes().to_vec(),
        );
    }

    /// Signatures `signer` made on `target_user`'s key `target_key_id`, as a
    /// JSON object of signer key ID to signature.
    pub fn signatures_by(&self, target_user: &str, target_key_id: &str, signer: &str) -> DbResult<Option<String>> {
        self.db
            .get(Table::KeySignatures, &encode(&(target_user, target_key_id, signer)))?
            .map(|v| utf8(Table::KeySignatures, v))
            .transpose()
    }

    pub fn put_signatures_by(
        &self,
        batch: &mut Batch,
        target_user: &str,
        target_key_id: &str,
        signer: &str,
        json: &str,
    ) {
        batch.put(
            Table::KeySignatures,
            encode(&(target_user, target_key_id, signer)),
            json.as_bytes().to_vec(),
        );
    }

    /// Records that `user_id`'s keys changed at stream position `count`.
    pub fn put_device_list_change(&self, batch: &mut Batch, count: u64, user_id: &str) {
        batch.put(Table::DeviceListChanges, encode(&(count,)), user_id.as_bytes().to_vec());
    }

    /// Users whose keys changed in `(from, to]`, oldest first.
    pub fn device_list_changes(&self, from: u64, to: u64) -> DbResult<Vec<(u64, String)>> {
        self.db
            .iter(
                Table::DeviceListChanges,
                Some(&encode(&(from.saturating_add(1),))),
                Direction::Forward,
            )
            .map(|r| {
                let (k, v) = r?;
                let (count,): (u64,) = decode_key(Table::DeviceListChanges, &k)?;
                Ok((count, utf8(Table::DeviceListChanges, v)?))
            })
            .take_while(|r| r.as_ref().map_or(true, |(count, _)| *count <= to))
            .collect()
    }

    /// The stream ID of `user_id`'s latest device list update (0: none yet).
    pub fn device_list_stream_id(&self, user_id: &str) -> DbResult<u64> {
        let Some(value) = self.db.get(Table::DeviceListStreamIds, &encode(user_id))? else {
            return Ok(0);
        };
        let bytes: [u8; 8] = value
            .as_slice()
            .try_into()
            .map_err(|_| super::DbError::corrupt(Table::DeviceListStreamIds, "stream ID is not 8 bytes"))?;
        Ok(u64::from_be_bytes(bytes))
    }

    pub fn put_device_list_stream_id(&self, batch: &mut Batch, user_id: &str, stream_id: u64) {
        batch.put(
            Table::DeviceListStreamIds,
            encode(user_id),
            stream_id.to_be_bytes().to_vec(),
        );
    }
}
