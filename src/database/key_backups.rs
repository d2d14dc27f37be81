//! Typed access to [`Table::BackupVersions`] and [`Table::BackupKeys`]
//! (owned by `service::key_backups`).

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys::encode, to_record, utf8, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupVersionRecord {
    /// `{algorithm, auth_data}` as the client sent it.
    pub algorithm_json: String,
    /// Changes whenever the keys change.
    pub etag: u64,
    pub count: u64,
    /// Deleted versions stay as markers, so version numbers are never reused.
    pub deleted: bool,
}

pub struct KeyBackupTables {
    db: Db,
}

impl KeyBackupTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    /// Every version of the user's backups, newest first.
    pub fn versions(&self, user_id: &str) -> DbResult<Vec<(u64, BackupVersionRecord)>> {
        self.db
            .scan_prefix(Table::BackupVersions, encode(&(user_id,)), Direction::Backward)
            .map(|r| {
                let (k, v) = r?;
                let (_, version): (String, u64) = decode_key(Table::BackupVersions, &k)?;
                Ok((version, from_record(Table::BackupVersions, &v)?))
            })
            .collect()
    }

    pub fn version(&self, user_id: &str, version: u64) -> DbResult<Option<BackupVersionRecord>> {
        self.db
            .get(Table::BackupVersions, &encode(&(user_id, version)))?
            .map(|v| from_record(Table::BackupVersions, &v))
            .transpose()
    }

    pub fn put_version(&self, batch: &mut Batch, user_id: &str, version: u64, record: &BackupVersionRecord) {
        batch.put(Table::BackupVersions, encode(&(user_id, version)), to_record(record));
    }

    pub fn key(&self, user_id: &str, version: u64, room_id: &str, session_id: &str) -> DbResult<Option<String>> {
        self.db
            .get(Table::BackupKeys, &encode(&(user_id, version, room_id, session_id)))?
            .map(|v| utf8(Table::BackupKeys, v))
            .transpose()
    }

    pub fn put_key(&self, batch: &mut Batch, user_id: &str, version: u64, room_id: &str, session_id: &str, json: &str) {
        batch.put(
            Table::BackupKeys,
            encode(&(user_id, version, room_id, session_id)),
            json.as_bytes().to_vec(),
        );
    }

    /// The keys of a version, of one room, or one session: (room ID,
    /// session ID, JSON).
    pub fn keys(
        &self,
        user_id: &str,
        version: u64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> DbResult<Vec<(String, String, String)>> {
        let prefix = match (room_id, session_id) {
            (None, _) => encode(&(user_id, version)),
            (Some(room), None) => encode(&(user_id, version, room)),
            (Some(room), Some(session)) => encode(&(user_id, version, room, session)),
        };
        self.db
            .scan_prefix(Table::BackupKeys, prefix, Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, _, room, session): (String, u64, String, String) = decode_key(Table::BackupKeys, &k)?;
                Ok((room, session, utf8(Table::BackupKeys, v)?))
            })
            .collect()
    }

    pub fn delete_key(&self, batch: &mut Batch, user_id: &str, version: u64, room_id: &str, session_id: &str) {
        batch.delete(Table::BackupKeys, encode(&(user_id, version, room_id, session_id)));
    }
}
