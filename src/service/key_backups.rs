//! Server-side key backups: encrypted room keys a user's devices store so a
//! new login can read old messages. The server sees only ciphertext; it
//! keeps versions, counts and etags, and on overwrite keeps the better key.

use std::sync::Mutex;

use ruma::UserId;
use serde_json::Value as JsonValue;

use super::{ServiceError, ServiceResult};
use crate::database::key_backups::{BackupVersionRecord, KeyBackupTables};
use crate::database::{Batch, Db};

pub struct KeyBackupsService {
    tables: KeyBackupTables,
    /// Key writes read, compare and count; one at a time keeps counts exact.
    writes: Mutex<()>,
}

/// A backup version as the API reports it.
pub struct BackupInfo {
    pub version: String,
    /// `{algorithm, auth_data}`.
    pub algorithm_json: String,
    pub count: u64,
    pub etag: String,
}

/// One backed-up session key: (room ID, session ID, `KeyBackupData` JSON).
pub type BackedUpKey = (String, String, String);

fn not_found() -> ServiceError {
    ServiceError::NotFound("no such key backup version".to_owned())
}

fn parse_version(version: &str) -> ServiceResult<u64> {
    version.parse().map_err(|_| not_found())
}

fn info(version: u64, record: BackupVersionRecord) -> BackupInfo {
    BackupInfo {
        version: version.to_string(),
        algorithm_json: record.algorithm_json,
        count: record.count,
        etag: record.etag.to_string(),
    }
}

/// Checks `{algorithm, auth_data}`; answers the algorithm.
fn check_algorithm(json: &str) -> ServiceResult<String> {
    let value: JsonValue = serde_json::from_str(json).map_err(|e| ServiceError::BadJson(e.to_string()))?;
    match (
        value.get("algorithm").and_then(JsonValue::as_str),
        value.get("auth_data"),
    ) {
        (Some(algorithm), Some(JsonValue::Object(_))) => Ok(algorithm.to_owned()),
        _ => Err(ServiceError::BadJson(
            "a backup needs an algorithm and an auth_data object".to_owned(),
        )),
    }
}

/// The fields the "better key" rule compares.
struct Rank {
    is_verified: bool,
    first_message_index: u64,
    forwarded_count: u64,
}

fn rank(json: &str) -> ServiceResult<Rank> {
    let value: JsonValue = serde_json::from_str(json).map_err(|e| ServiceError::BadJson(e.to_string()))?;
    let number = |name: &str| value.get(name).and_then(JsonValue::as_u64);
    match (
        number("first_message_index"),
        number("forwarded_count"),
        value.get("is_verified").and_then(JsonValue::as_bool),
        value.get("session_data"),
    ) {
        (Some(first_message_index), Some(forwarded_count), Some(is_verified), Some(JsonValue::Object(_))) => Ok(Rank {
            is_verified,
            first_message_index,
            forwarded_count,
        }),
        _ => Err(ServiceError::BadJson(
            "key backup data needs first_message_index, forwarded_count, is_verified and session_data".to_owned(),
        )),
    }
}

/// The spec's rule: a verified key beats an unverified one, then the lower
/// first message index, then the lower forwarded count.
fn better(new: &Rank, old: &Rank) -> bool {
    if new.is_verified != old.is_verified {
        return new.is_verified;
    }
    if new.first_message_index != old.first_message_index {
        return new.first_message_index < old.first_message_index;
    }
    new.forwarded_count < old.forwarded_count
}

impl KeyBackupsService {
    pub fn new(db: Db) -> Self {
        Self {
            tables: KeyBackupTables::new(db),
            writes: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current (newest, not deleted) version.
    fn current(&self, user: &UserId) -> ServiceResult<Option<(u64, BackupVersionRecord)>> {
        Ok(self
            .tables
            .versions(user.as_str())?
            .into_iter()
            .find(|(_, r)| !r.deleted))
    }

    fn existing(&self, user: &UserId, version: &str) -> ServiceResult<(u64, BackupVersionRecord)> {
        let version = parse_version(version)?;
        match self.tables.version(user.as_str(), version)? {
            Some(record) if !record.deleted => Ok((version, record)),
            _ => Err(not_found()),
        }
    }

    pub fn create(&self, user: &UserId, algorithm_json: &str) -> ServiceResult<String> {
        check_algorithm(algorithm_json)?;
        let _guard = self.lock();
        let next = self.tables.versions(user.as_str())?.first().map_or(1, |(v, _)| v + 1);
        let record = BackupVersionRecord {
            algorithm_json: algorithm_json.to_owned(),
            etag: 0,
            count: 0,
            deleted: false,
        };
        let mut batch = Batch::new();
        self.tables.put_version(&mut batch, user.as_str(), next, &record);
        self.tables.write(batch)?;
        Ok(next.to_string())
    }

    pub fn latest(&self, user: &UserId) -> ServiceResult<BackupInfo> {
        let (version, record) = self.current(user)?.ok_or_else(not_found)?;
        Ok(info(version, record))
    }

    pub fn info(&self, user: &UserId, version: &str) -> ServiceResult<BackupInfo> {
        let (version, record) = self.existing(user, version)?;
        Ok(info(version, record))
    }

    /// Replaces a version's `auth_data`; its algorithm cannot change.
    pub fn update(&self, user: &UserId, version: &str, algorithm_json: &str) -> ServiceResult<()> {
        let algorithm = check_algorithm(algorithm_json)?;
        let _guard = self.lock();
        let (number, mut record) = self.existing(user, version)?;
        if check_algorithm(&record.algorithm_json)? != algorithm {
            return Err(ServiceError::InvalidParam(
                "the algorithm of a backup version cannot change".to_owned(),
            ));
        }
        record.algorithm_json = algorithm_json.to_owned();
        let mut batch = Batch::new();
        self.tables.put_version(&mut batch, user.as_str(), number, &record);
        Ok(self.tables.write(batch)?)
    }

    /// Deletes a version and every key in it.
    pub fn delete_version(&self, user: &UserId, version: &str) -> ServiceResult<()> {
        let _guard = self.lock();
        let (number, mut record) = self.existing(user, version)?;
        let mut batch = Batch::new();
        for (room, session, _) in self.tables.keys(user.as_str(), number, None, None)? {
            self.tables
                .delete_key(&mut batch, user.as_str(), number, &room, &session);
        }
        record.deleted = true;
        record.count = 0;
        self.tables.put_version(&mut batch, user.as_str(), number, &record);
        Ok(self.tables.write(batch)?)
    }

    /// Stores keys in the current version, keeping the better of an old
    /// and a new key for the same session. Answers (count, etag).
    pub fn put_keys(&self, user: &UserId, version: &str, keys: &[BackedUpKey]) -> ServiceResult<(u64, String)> {
        let _guard = self.lock();
        let (current, mut record) = self.current(user)?.ok_or_else(not_found)?;
        if version.parse::<u64>().ok() != Some(current) {
            return Err(ServiceError::WrongRoomKeysVersion(Some(current.to_string())));
        }
        let mut batch = Batch::new();
        let mut changed = false;
        for (room, session, json) in keys {
            let new = rank(json)?;
            let replace = match self.tables.key(user.as_str(), current, room, session)? {
                Some(old) => better(&new, &rank(&old)?),
                None => {
                    record.count += 1;
                    true
                }
            };
            if replace {
                self.tables
                    .put_key(&mut batch, user.as_str(), current, room, session, json);
                changed = true;
            }
        }
        if changed {
            record.etag += 1;
            self.tables.put_version(&mut batch, user.as_str(), current, &record);
            self.tables.write(batch)?;
        }
        Ok((record.count, record.etag.to_string()))
    }

    /// The keys of a version: all, one room's or one session's.
    pub fn keys(
        &self,
        user: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> ServiceResult<Vec<BackedUpKey>> {
        let (number, _) = self.existing(user, version)?;
        Ok(self.tables.keys(user.as_str(), number, room_id, session_id)?)
    }

    /// Deletes keys of a version: all, one room's or one session's.
    /// Answers (count, etag).
    pub fn delete_keys(
        &self,
        user: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> ServiceResult<(u64, String)> {
        let _guard = self.lock();
        let (number, mut record) = self.existing(user, version)?;
        let doomed = self.tables.keys(user.as_str(), number, room_id, session_id)?;
        if !doomed.is_empty() {
            let mut batch = Batch::new();
            for (room, session, _) in &doomed {
                self.tables.delete_key(&mut batch, user.as_str(), number, room, session);
            }
            record.count = record.count.saturating_sub(doomed.len() as u64);
            record.etag += 1;
            self.tables.put_version(&mut batch, user.as_str(), number, &record);
            self.tables.write(batch)?;
        }
        Ok((record.count, record.etag.to_string()))
    }
}
