//! Typed access to [`Table::Media`], [`Table::PendingMedia`] and
//! [`Table::UrlPreviews`] (owned by `service::media`). The files themselves
//! live on disk under the media directory; these tables say which `mxc://`
//! URI names which file.

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys::encode, to_record, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MediaRecord {
    /// Empty for media fetched from another server.
    pub uploader: String,
    pub created_ms: u64,
    /// When an ID made by `/create` stops accepting its upload; `None` once
    /// the content is there (or for a direct upload).
    pub expires_ms: Option<u64>,
    /// `None` while an asynchronous upload is pending.
    pub content: Option<MediaContent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MediaContent {
    /// Names the file: identical uploads share one.
    pub sha256: [u8; 32],
    pub size: u64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub uploaded_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UrlPreviewRecord {
    pub fetched_ms: u64,
    /// The OpenGraph object as JSON text.
    pub json: String,
}

pub struct MediaTables {
    db: Db,
}

impl MediaTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn get(&self, server_name: &str, media_id: &str) -> DbResult<Option<MediaRecord>> {
        self.db
            .get(Table::Media, &encode(&(server_name, media_id)))?
            .map(|v| from_record(Table::Media, &v))
            .transpose()
    }

    /// Stores a record; a pending one is also listed under its uploader so
    /// their pending uploads can be counted.
    pub fn put(&self, server_name: &str, media_id: &str, record: &MediaRecord) -> DbResult<()> {
        let mut batch = Batch::new();
        batch.put(Table::Media, encode(&(server_name, media_id)), to_record(record));
        let pending_key = encode(&(record.uploader.as_str(), media_id));
        match record.expires_ms {
            Some(expires) if record.content.is_none() => {
                batch.put(Table::PendingMedia, pending_key, expires.to_be_bytes().to_vec())
            }
            _ => batch.delete(Table::PendingMedia, pending_key),
        }
        self.db.write(batch)
    }

    /// Removes a record and its pending entry (an expired `/create`).
    pub fn delete(&self, server_name: &str, media_id: &str, uploader: &str) -> DbResult<()> {
        let mut batch = Batch::new();
        batch.delete(Table::Media, encode(&(server_name, media_id)));
        batch.delete(Table::PendingMedia, encode(&(uploader, media_id)));
        self.db.write(batch)
    }

    /// A user's pending uploads: `(media_id, expires_ms)`.
    pub fn pending_of(&self, user_id: &str) -> DbResult<Vec<(String, u64)>> {
        self.db
            .scan_prefix(Table::PendingMedia, encode(&(user_id,)), Direction::Forward)
            .map(|entry| {
                let (key, value) = entry?;
                let (_, media_id): (String, String) = decode_key(Table::PendingMedia, &key)?;
                let expires: [u8; 8] = value
                    .as_slice()
                    .try_into()
                    .map_err(|_| super::DbError::corrupt(Table::PendingMedia, "expiry is not 8 bytes"))?;
                Ok((media_id, u64::from_be_bytes(expires)))
            })
            .collect()
    }

    /// Every record, local and remote: `(server_name, media_id, record)`.
    pub fn all(&self) -> impl Iterator<Item = DbResult<(String, String, MediaRecord)>> + '_ {
        self.db.iter(Table::Media, None, Direction::Forward).map(|entry| {
            let (key, value) = entry?;
            let (server_name, media_id): (String, String) = decode_key(Table::Media, &key)?;
            Ok((server_name, media_id, from_record(Table::Media, &value)?))
        })
    }

    pub fn url_preview(&self, url: &str) -> DbResult<Option<UrlPreviewRecord>> {
        self.db
            .get(Table::UrlPreviews, &encode(url))?
            .map(|v| from_record(Table::UrlPreviews, &v))
            .transpose()
    }

    pub fn put_url_preview(&self, url: &str, record: &UrlPreviewRecord) -> DbResult<()> {
        self.db.put(Table::UrlPreviews, encode(url), to_record(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_entries_follow_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let tables = MediaTables::new(crate::database::open_test_db(dir.path()));
        let mut record = MediaRecord {
            uploader: "@a:x".into(),
            created_ms: 1,
            expires_ms: Some(99),
            content: None,
        };
        tables.put("x", "m1", &record).unwrap();
        assert_eq!(tables.pending_of("@a:x").unwrap(), vec![("m1".to_owned(), 99)]);
        record.expires_ms = None;
        record.content = Some(MediaContent {
            sha256: [7; 32],
            size: 3,
            content_type: Some("text/plain".into()),
            filename: None,
            uploaded_ms: 2,
        });
        tables.put("x", "m1", &record).unwrap();
        assert!(tables.pending_of("@a:x").unwrap().is_empty());
        assert_eq!(tables.get("x", "m1").unwrap(), Some(record));
        assert_eq!(tables.get("y", "m1").unwrap(), None);
    }
}
