//! What the admin API does with media: deleting local media, dropping the
//! cache of other servers' media, listing a user's uploads.

use std::path::Path;

use ruma::UserId;

use super::{content_path, hex, io_error, valid_media_id, MediaService, Store};
use crate::database::media::MediaContent;
use crate::service::{ServiceError, ServiceResult};

/// One upload as the admin API lists it.
#[derive(Debug, Clone)]
pub struct UploadView {
    pub media_id: String,
    pub content_type: Option<String>,
    pub size: u64,
    pub filename: Option<String>,
    pub created_ms: u64,
}

/// What the stored media come to (`server stats`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MediaUsage {
    pub local_files: u64,
    pub local_bytes: u64,
    /// Other servers' media fetched for our users.
    pub remote_files: u64,
    pub remote_bytes: u64,
}

impl MediaService {
    /// Counts the media with content and their sizes, ours and other
    /// servers' (identical content shared by IDs counted for each).
    pub async fn usage(&self) -> ServiceResult<MediaUsage> {
        self.blocking(move |store| {
            let mut usage = MediaUsage::default();
            for entry in store.tables.all() {
                let (server_name, _, record) = entry?;
                let Some(content) = record.content else {
                    continue;
                };
                let (files, bytes) = if server_name == store.server_name.as_str() {
                    (&mut usage.local_files, &mut usage.local_bytes)
                } else {
                    (&mut usage.remote_files, &mut usage.remote_bytes)
                };
                *files += 1;
                *bytes += content.size;
            }
            Ok(usage)
        })
        .await
    }

    /// Deletes a local media: its record, and its file and thumbnails when
    /// no other record names the same content. The IDs deleted.
    pub async fn delete_local(&self, server_name: String, media_id: String) -> ServiceResult<Vec<String>> {
        self.blocking(move |store| {
            if server_name != store.server_name.as_str() {
                return Err(ServiceError::BadRequest("Can only delete local media".to_owned()));
            }
            let record = valid_media_id(&media_id)
                .then(|| store.tables.get(&server_name, &media_id))
                .transpose()?
                .flatten()
                .ok_or_else(|| ServiceError::NotFound("Unknown media".to_owned()))?;
            store.tables.delete(&server_name, &media_id, &record.uploader)?;
            if let Some(content) = record.content {
                store.remove_unused_file(&content)?;
            }
            tracing::info!(%server_name, %media_id, "media deleted by an admin");
            Ok(vec![media_id])
        })
        .await
    }

    /// Forgets the media of other servers fetched before `before_ms`,
    /// with their files unless a record still names them; how many.
    pub async fn purge_remote_cache(&self, before_ms: u64) -> ServiceResult<usize> {
        self.blocking(move |store| {
            let mut stale = Vec::new();
            for entry in store.tables.all() {
                let (server_name, media_id, record) = entry?;
                if server_name != store.server_name.as_str() && record.created_ms < before_ms {
                    stale.push((server_name, media_id, record));
                }
            }
            for (server_name, media_id, record) in &stale {
                store.tables.delete(server_name, media_id, &record.uploader)?;
                if let Some(content) = &record.content {
                    store.remove_unused_file(content)?;
                }
            }
            tracing::info!(deleted = stale.len(), before_ms, "remote media cache purged");
            Ok(stale.len())
        })
        .await
    }

    /// The user's finished uploads, oldest first.
    pub async fn uploads_of(&self, user: &UserId) -> ServiceResult<Vec<UploadView>> {
        let user = user.to_string();
        self.blocking(move |store| {
            let mut uploads = Vec::new();
            for entry in store.tables.all() {
                let (server_name, media_id, record) = entry?;
                if server_name != store.server_name.as_str() || record.uploader != user {
                    continue;
                }
                if let Some(content) = record.content {
                    uploads.push(UploadView {
                        media_id,
                        content_type: content.content_type,
                        size: content.size,
                        filename: content.filename,
                        created_ms: record.created_ms,
                    });
                }
            }
            uploads.sort_by(|a, b| {
                a.created_ms
                    .cmp(&b.created_ms)
                    .then_with(|| a.media_id.cmp(&b.media_id))
            });
            Ok(uploads)
        })
        .await
    }
}

impl Store {
    /// Removes the content's file and thumbnails unless a record still
    /// names it (identical uploads share one file).
    fn remove_unused_file(&self, content: &MediaContent) -> ServiceResult<()> {
        for entry in self.tables.all() {
            let (_, _, record) = entry?;
            if record.content.is_some_and(|other| other.sha256 == content.sha256) {
                return Ok(());
            }
        }
        let name = hex(&content.sha256);
        remove_if_present(&content_path(&self.dir.join("files"), &name), false)?;
        remove_if_present(&self.dir.join("thumbnails").join(&name), true)
    }
}

fn remove_if_present(path: &Path, dir: bool) -> ServiceResult<()> {
    let removed = if dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("removing a media file", e)),
        _ => Ok(()),
    }
}
