//! The media repository: uploads streamed to disk under their SHA-256,
//! `mxc://` URIs mapped to files in [`MediaTables`], thumbnails cached next
//! to the originals, and URL previews.
//!
//! Layout under the media directory (`<database_path>/media`):
//! - `files/ab/abcdef…`: content, named by the hex SHA-256, so identical
//!   uploads are stored once;
//! - `thumbnails/abcdef…/320x240-scale.jpg`: thumbnails of that content;
//! - `tmp/`: uploads in progress, renamed into `files/` only once complete
//!   and synced, so a file under `files/` is always whole. Emptied at start.
//!
//! Media of other servers is fetched on first use ([`remote`]) and kept
//! like an upload, under its own `mxc://` URI.

mod admin;
mod blocks;
mod multipart;
pub(crate) mod preview;
mod reader;
mod remote;
mod thumbnail;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ruma::{OwnedMxcUri, OwnedServerName, ServerName, UserId};
use sha2::{Digest, Sha256};
use std::io::Write;

pub use admin::{MediaUsage, UploadView};
pub use multipart::Framing;
pub use preview::PreviewConfig;
pub use reader::FileStream;
pub use thumbnail::{Method, ThumbnailRequest};

use super::{now_ms, random_string, ServiceError, ServiceResult};
use crate::config::Config;
use crate::database::media::{MediaContent, MediaRecord, MediaTables};
use crate::database::Db;
use crate::service::federation::FederationClient;
use blocks::BlockPool;

/// How long an ID from `/create` waits for its upload (the spec's advice).
const PENDING_UPLOAD_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest a download waits for a pending upload, whatever the client asks.
const MAX_DOWNLOAD_WAIT: Duration = Duration::from_secs(60);
/// Uploads reach disk in blocks this large, written and hashed on a
/// blocking thread while the next block arrives; at most two blocks are in
/// memory per upload.
const WRITE_BLOCK: usize = blocks::BLOCK;

/// A stored file ready to be served.
#[derive(Debug, Clone)]
pub struct ServedFile {
    pub path: PathBuf,
    pub content_type: String,
    pub filename: Option<String>,
}

/// What a download finds: the file and whether the unauthenticated
/// endpoints may still serve it.
#[derive(Debug, Clone)]
pub struct Download {
    pub file: ServedFile,
    pub legacy_allowed: bool,
}

pub struct MediaService {
    store: Arc<Store>,
    dir: PathBuf,
    max_upload: u64,
    /// Woken whenever an asynchronous upload completes.
    uploaded: tokio::sync::Notify,
    preview: preview::Previewer,
    blocks: Arc<BlockPool>,
    /// Held while a remote media is fetched, so it is fetched once.
    fetching: remote::KeyedLocks,
}

/// What the blocking work (storage, image decoding) needs, shared with the
/// threads that do it.
struct Store {
    tables: MediaTables,
    server_name: OwnedServerName,
    dir: PathBuf,
    max_pending_uploads: usize,
    legacy_cutover_ms: Option<u64>,
    /// `sync_writes`: media files are synced like database writes.
    sync_files: bool,
    /// Serializes the check-and-write that completes an upload to an ID.
    complete_lock: Mutex<()>,
    /// One thumbnail is made at a time: decoding is the memory peak.
    thumbnail_lock: Mutex<()>,
}

impl MediaService {
    /// Opens the media directory next to the database, emptying `tmp/` of
    /// uploads a crash interrupted.
    pub fn open(db: Db, config: &Config) -> ServiceResult<Self> {
        let dir = config.database_path.join("media");
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io_error("clearing media/tmp", e))?;
        }
        let first_start = !dir.exists();
        for sub in ["files", "thumbnails", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| io_error("creating the media directory", e))?;
        }
        if first_start && config.sync_writes {
            // Stored files are only as durable as the directories above them.
            for made in [&dir, &config.database_path] {
                std::fs::File::open(made)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_error("syncing the media directory", e))?;
            }
        }
        create_shard_dirs(&dir.join("files"), config.sync_writes)
            .map_err(|e| io_error("creating the media directory", e))?;
        let store = Store {
            tables: MediaTables::new(db.clone()),
            server_name: config.server_name.clone(),
            dir: dir.clone(),
            max_pending_uploads: config.max_pending_media_uploads,
            legacy_cutover_ms: config.legacy_media_cutover_ms(),
            sync_files: config.sync_writes,
            complete_lock: Mutex::new(()),
            thumbnail_lock: Mutex::new(()),
        };
        Ok(Self {
            store: Arc::new(store),
            max_upload: u64::from(config.max_request_size),
            uploaded: tokio::sync::Notify::new(),
            preview: preview::Previewer::new(PreviewConfig::from(config), MediaTables::new(db))?,
            dir,
            blocks: Arc::default(),
            fetching: remote::KeyedLocks::default(),
        })
    }

    /// `len` bytes of a stored file from `start`, read in blocks while they
    /// are sent.
    pub fn stream_file(&self, file: std::fs::File, start: u64, len: u64) -> FileStream {
        FileStream::new(file, start, len, Arc::clone(&self.blocks))
    }

    /// The largest upload accepted, in bytes.
    pub fn max_upload_size(&self) -> u64 {
        self.max_upload
    }

    /// Starts an upload: bytes go to a temporary file as they arrive.
    pub fn begin_upload(&self) -> UploadSink {
        UploadSink::create(
            &self.dir.join("tmp"),
            self.max_upload,
            self.store.sync_files,
            Arc::clone(&self.blocks),
        )
    }

    /// A new `mxc://` URI for content uploaded later (`/create`), and when
    /// it expires. Expired IDs of the user are dropped; too many live ones
    /// are refused.
    pub async fn create_pending(&self, user: &UserId) -> ServiceResult<(OwnedMxcUri, u64)> {
        let user = user.to_owned();
        self.blocking(move |store| store.create_pending(&user)).await
    }

    /// Checks that `user` may upload to an ID from `/create`, before its
    /// bytes are read.
    pub async fn check_pending(&self, user: &UserId, server_name: &str, media_id: &str) -> ServiceResult<()> {
        let (user, server_name, media_id) = (user.to_owned(), server_name.to_owned(), media_id.to_owned());
        self.blocking(move |store| store.pending_record(&user, &server_name, &media_id).map(|_| ()))
            .await
    }

    /// Completes an upload: the file is synced and moved under its hash,
    /// then recorded under a new media ID or, for `/create`'s IDs, `target`.
    pub async fn complete_upload(
        &self,
        sink: UploadSink,
        uploader: &UserId,
        content_type: Option<String>,
        filename: Option<String>,
        target: Option<(&str, &str)>,
    ) -> ServiceResult<OwnedMxcUri> {
        let uploader = uploader.to_owned();
        let target = target.map(|(s, m)| (s.to_owned(), m.to_owned()));
        let pending = target.is_some();
        let (content, shard_to_sync) = self.store_content(sink, content_type, filename).await?;
        // The file's directory entry and its record are synced at once: the
        // media ID is unknown to anyone until both are durable, so a crash
        // between them leaves at most a record nobody can name.
        let recorded = self.blocking(move |store| store.record_upload(&uploader, content, target));
        let (shard_synced, recorded) = tokio::join!(self.sync_shard(shard_to_sync), recorded);
        shard_synced?;
        let uri = recorded?;
        if pending {
            self.uploaded.notify_waiters();
        }
        Ok(uri)
    }

    /// Moves a finished upload under its hash; returns its content record
    /// and the shard whose entry must still be synced.
    async fn store_content(
        &self,
        sink: UploadSink,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> ServiceResult<(MediaContent, Option<PathBuf>)> {
        let finished = sink.into_finished().await?;
        let stored = self
            .blocking(move |store| finished.store(&store.dir.join("files"), store.sync_files))
            .await?;
        let content = MediaContent {
            sha256: stored.sha256,
            size: stored.size,
            content_type,
            filename,
            uploaded_ms: now_ms(),
        };
        Ok((content, stored.shard_to_sync))
    }

    async fn sync_shard(&self, shard: Option<PathBuf>) -> ServiceResult<()> {
        match shard {
            Some(shard) => self.blocking(move |_| sync_dir(&shard)).await,
            None => Ok(()),
        }
    }

    /// The content behind `mxc://server_name/media_id`, waiting up to
    /// `wait` for a pending upload. Media of other servers comes from the
    /// local copy, else is fetched with `federation` (when given) and kept.
    pub async fn download(
        &self,
        server_name: &str,
        media_id: &str,
        wait: Duration,
        federation: Option<&FederationClient>,
    ) -> ServiceResult<Download> {
        let wait = wait.min(MAX_DOWNLOAD_WAIT);
        if server_name != self.store.server_name.as_str() {
            if let Some(download) = self.cached(server_name, media_id).await? {
                return Ok(download);
            }
            let client = federation
                .ok_or_else(|| ServiceError::NotFound("this media of another server is not stored here".to_owned()))?;
            return self.fetch_remote(client, server_name, media_id, wait).await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the lookup, so a completion in between wakes us.
            let woken = self.uploaded.notified();
            let (server, id) = (server_name.to_owned(), media_id.to_owned());
            if let Some(download) = self.blocking(move |store| store.download(&server, &id)).await? {
                return Ok(download);
            }
            tracing::debug!(target: "conduit::wait", server_name, media_id, "download waiting for its upload");
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(ServiceError::NotYetUploaded);
            }
        }
    }

    /// Whether the unauthenticated endpoints may still fetch media of other
    /// servers: only until the legacy cut-over, after which they would
    /// refuse what they fetched.
    pub fn legacy_may_fetch(&self) -> bool {
        self.store.legacy_cutover_ms.is_some_and(|cut| now_ms() < cut)
    }

    /// The local copy of another server's media, if there is one.
    async fn cached(&self, server_name: &str, media_id: &str) -> ServiceResult<Option<Download>> {
        let (server, id) = (server_name.to_owned(), media_id.to_owned());
        self.blocking(move |store| store.cached(&server, &id)).await
    }

    /// Fetches another server's media and keeps it, once however many ask.
    async fn fetch_remote(
        &self,
        client: &FederationClient,
        server_name: &str,
        media_id: &str,
        wait: Duration,
    ) -> ServiceResult<Download> {
        let unknown = || ServiceError::NotFound("unknown media".to_owned());
        let server = <&ServerName>::try_from(server_name).map_err(|_| unknown())?;
        if !valid_media_id(media_id) {
            return Err(unknown());
        }
        let _fetching = self.fetching.lock(format!("{server_name}/{media_id}")).await;
        // Fetched while we waited for the lock?
        if let Some(download) = self.cached(server_name, media_id).await? {
            return Ok(download);
        }
        let max_bytes = usize::try_from(self.max_upload).unwrap_or(usize::MAX);
        let fetched = remote::fetch(client, server, media_id, wait, max_bytes).await?;
        tracing::info!(
            server_name,
            media_id,
            bytes = fetched.bytes.len(),
            "remote media fetched"
        );
        let mut sink = self.begin_upload();
        sink.write(&fetched.bytes).await?;
        let (content, shard_to_sync) = self.store_content(sink, fetched.content_type, fetched.filename).await?;
        self.sync_shard(shard_to_sync).await?;
        let (server, id) = (server_name.to_owned(), media_id.to_owned());
        self.blocking(move |store| store.record_remote(&server, &id, content))
            .await
    }

    /// A thumbnail of `download`'s content (made once per size class and
    /// kept), or the original when it is already small enough.
    pub async fn thumbnail(&self, download: Download, request: ThumbnailRequest) -> ServiceResult<ServedFile> {
        self.blocking(move |store| store.thumbnail(&download.file, request))
            .await
    }

    /// OpenGraph data for `url`, fetched for `user` or from the cache.
    pub async fn preview_url(&self, user: &UserId, url: &str) -> ServiceResult<serde_json::Value> {
        if let Some(cached) = self.preview.cached(url).await? {
            return Ok(cached);
        }
        let (mut og, image) = self.preview.fetch(url).await?;
        if let Some(image) = image {
            // The page's image becomes media of this server, so clients fetch
            // it through the media endpoints.
            let mut sink = self.begin_upload();
            sink.write(&image.bytes).await?;
            let uri = self
                .complete_upload(sink, user, Some(image.content_type.clone()), None, None)
                .await?;
            og["og:image"] = uri.to_string().into();
            og["og:image:type"] = image.content_type.into();
            og["matrix:image:size"] = image.bytes.len().into();
            if let Some((w, h)) = image.dimensions {
                og["og:image:width"] = w.into();
                og["og:image:height"] = h.into();
            }
        }
        self.preview.store(url, &og).await?;
        Ok(og)
    }

    async fn blocking<T, F>(&self, f: F) -> ServiceResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> ServiceResult<T> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| ServiceError::Internal("media work panicked or was cancelled".to_owned()))?
    }
}

impl Store {
    fn create_pending(&self, user: &UserId) -> ServiceResult<(OwnedMxcUri, u64)> {
        let now = now_ms();
        let mut live = 0;
        for (media_id, expires) in self.tables.pending_of(user.as_str())? {
            if expires <= now {
                self.tables
                    .delete(self.server_name.as_str(), &media_id, user.as_str())?;
            } else {
                live += 1;
            }
        }
        if live >= self.max_pending_uploads {
            return Err(ServiceError::LimitExceeded(format!(
                "you already have {live} uploads waiting for their content"
            )));
        }
        let media_id = new_media_id();
        let expires = now + PENDING_UPLOAD_LIFETIME.as_millis() as u64;
        let record = MediaRecord {
            uploader: user.to_string(),
            created_ms: now,
            expires_ms: Some(expires),
            content: None,
        };
        self.tables.put(self.server_name.as_str(), &media_id, &record)?;
        Ok((self.mxc(&media_id), expires))
    }

    fn pending_record(&self, user: &UserId, server_name: &str, media_id: &str) -> ServiceResult<MediaRecord> {
        let unknown = || ServiceError::NotFound("unknown or expired media ID".to_owned());
        if server_name != self.server_name.as_str() || !valid_media_id(media_id) {
            return Err(unknown());
        }
        let record = self.tables.get(server_name, media_id)?.ok_or_else(unknown)?;
        if record.content.is_some() {
            return Err(ServiceError::CannotOverwriteMedia);
        }
        if record.uploader != user.as_str() {
            return Err(ServiceError::Forbidden(
                "this media ID was created by another user".to_owned(),
            ));
        }
        if record.expires_ms.is_some_and(|e| e <= now_ms()) {
            return Err(unknown());
        }
        Ok(record)
    }

    fn record_upload(
        &self,
        uploader: &UserId,
        content: MediaContent,
        target: Option<(String, String)>,
    ) -> ServiceResult<OwnedMxcUri> {
        match target {
            None => {
                let media_id = new_media_id();
                let record = MediaRecord {
                    uploader: uploader.to_string(),
                    created_ms: content.uploaded_ms,
                    expires_ms: None,
                    content: Some(content),
                };
                self.tables.put(self.server_name.as_str(), &media_id, &record)?;
                Ok(self.mxc(&media_id))
            }
            Some((server_name, media_id)) => {
                let _guard = self.complete_lock.lock().unwrap_or_else(|e| e.into_inner());
                let mut record = self.pending_record(uploader, &server_name, &media_id)?;
                record.expires_ms = None;
                record.content = Some(content);
                self.tables.put(&server_name, &media_id, &record)?;
                Ok(self.mxc(&media_id))
            }
        }
    }

    /// The download, or `None` while the upload is pending.
    fn download(&self, server_name: &str, media_id: &str) -> ServiceResult<Option<Download>> {
        let unknown = || ServiceError::NotFound("unknown media".to_owned());
        if !valid_media_id(media_id) {
            return Err(unknown());
        }
        let record = self.tables.get(server_name, media_id)?.ok_or_else(unknown)?;
        let Some(content) = record.content else {
            if record.expires_ms.is_some_and(|e| e <= now_ms()) {
                return Err(unknown());
            }
            return Ok(None);
        };
        Ok(Some(self.served(content)))
    }

    fn cached(&self, server_name: &str, media_id: &str) -> ServiceResult<Option<Download>> {
        let record = self.tables.get(server_name, media_id)?;
        Ok(record.and_then(|r| r.content).map(|content| self.served(content)))
    }

    /// Keeps fetched media of another server under its own URI.
    fn record_remote(&self, server_name: &str, media_id: &str, content: MediaContent) -> ServiceResult<Download> {
        let record = MediaRecord {
            // Nobody here uploaded it.
            uploader: String::new(),
            created_ms: content.uploaded_ms,
            expires_ms: None,
            content: Some(content.clone()),
        };
        self.tables.put(server_name, media_id, &record)?;
        Ok(self.served(content))
    }

    fn served(&self, content: MediaContent) -> Download {
        Download {
            legacy_allowed: self.legacy_cutover_ms.is_some_and(|cut| content.uploaded_ms < cut),
            file: ServedFile {
                path: content_path(&self.dir.join("files"), &hex(&content.sha256)),
                content_type: content
                    .content_type
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
                filename: content.filename,
            },
        }
    }

    fn thumbnail(&self, original: &ServedFile, request: ThumbnailRequest) -> ServiceResult<ServedFile> {
        let hash = original
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ServiceError::Internal("media file without a name".to_owned()))?;
        let dir = self.dir.join("thumbnails").join(hash);
        let _guard = self.thumbnail_lock.lock().unwrap_or_else(|e| e.into_inner());
        thumbnail::serve(original, &dir, &self.dir.join("tmp"), request)
    }

    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.server_name))
    }
}

/// An upload in progress: a temporary file written in blocks by a blocking
/// thread (which also hashes them) while the next block is received. Two
/// blocks at most are in memory. Dropped unfinished, it removes its file.
pub struct UploadSink {
    /// The file (created with the first block) and hash, here between
    /// writes; in the writing thread while a block is written.
    idle: Option<(Option<std::fs::File>, Sha256)>,
    in_flight: Option<tokio::task::JoinHandle<std::io::Result<Written>>>,
    block: Vec<u8>,
    /// The previous block's buffer, back from the writing thread.
    spare: Vec<u8>,
    path: PathBuf,
    size: u64,
    limit: u64,
    /// Whether the file will be synced when complete: its blocks are then
    /// sent to disk as they are written, so the final sync waits for little.
    sync: bool,
    blocks: Arc<BlockPool>,
}

/// What the writing thread hands back: the file, the hash so far, and the
/// emptied block for reuse.
type Written = (Option<std::fs::File>, Sha256, Vec<u8>);

impl UploadSink {
    fn create(tmp_dir: &Path, limit: u64, sync: bool, blocks: Arc<BlockPool>) -> Self {
        Self {
            idle: Some((None, Sha256::new())),
            in_flight: None,
            block: Vec::new(),
            spare: Vec::new(),
            path: tmp_dir.join(random_string(24)),
            size: 0,
            limit,
            sync,
            blocks,
        }
    }

    /// Appends bytes; past the size limit the upload is refused (and its
    /// file removed when the sink is dropped).
    pub async fn write(&mut self, bytes: &[u8]) -> ServiceResult<()> {
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            // Let a block in flight land, so dropping the sink removes it.
            let _ = self.settle().await;
            return Err(ServiceError::TooLarge(format!(
                "uploads are limited to {} bytes",
                self.limit
            )));
        }
        // Blocks are filled to exactly WRITE_BLOCK (a chunk may straddle
        // two), so their buffers never grow past it.
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.block.capacity() == 0 {
                self.block = match std::mem::take(&mut self.spare) {
                    spare if spare.capacity() > 0 => spare,
                    _ => self.blocks.take(),
                };
            }
            let take = rest.len().min(WRITE_BLOCK - self.block.len());
            self.block.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.block.len() == WRITE_BLOCK {
                self.send_block().await?;
            }
        }
        Ok(())
    }

    /// Hands the full block to a blocking thread, once the previous one is
    /// written.
    async fn send_block(&mut self) -> ServiceResult<()> {
        self.settle().await?;
        let (file, mut hasher) = self.take_idle()?;
        let block = std::mem::take(&mut self.block);
        let path = self.path.clone();
        let sync = self.sync;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => std::fs::File::create(path)?,
            };
            file.write_all(&block)?;
            if sync {
                start_writeback(&file);
            }
            hasher.update(&block);
            let mut block = block;
            block.clear();
            Ok((Some(file), hasher, block))
        }));
        Ok(())
    }

    /// Abandons the upload (the client went away): its file is removed.
    pub async fn discard(mut self) {
        let _ = self.settle().await;
    }

    /// Waits for the block being written, reusing its buffer.
    async fn settle(&mut self) -> ServiceResult<()> {
        if let Some(handle) = self.in_flight.take() {
            let (file, hasher, spare) = handle
                .await
                .map_err(|_| ServiceError::Internal("writing an upload was cancelled".to_owned()))?
                .map_err(|e| io_error("writing an upload", e))?;
            self.idle = Some((file, hasher));
            // A spare may be here already, unused since the last block was
            // sent (the upload ended on a block boundary): it goes back to
            // the pool, not to the allocator.
            let unneeded = std::mem::replace(&mut self.spare, spare);
            self.blocks.give(unneeded);
        }
        Ok(())
    }

    fn take_idle(&mut self) -> ServiceResult<(Option<std::fs::File>, Sha256)> {
        self.idle
            .take()
            .ok_or_else(|| ServiceError::Internal("upload already finished".to_owned()))
    }

    /// Waits for the last write; what remains is finished by
    /// [`FinishedWrite::store`] on a blocking thread.
    async fn into_finished(mut self) -> ServiceResult<FinishedWrite> {
        self.settle().await?;
        let (file, hasher) = self.take_idle()?;
        Ok(FinishedWrite {
            file,
            hasher,
            last_block: std::mem::take(&mut self.block),
            tmp: std::mem::take(&mut self.path),
            size: self.size,
            blocks: Arc::clone(&self.blocks),
        })
    }
}

impl Drop for UploadSink {
    fn drop(&mut self) {
        self.blocks.give(std::mem::take(&mut self.block));
        self.blocks.give(std::mem::take(&mut self.spare));
        if self.path.as_os_str().is_empty() {
            return;
        }
        let path = std::mem::take(&mut self.path);
        // A block still in flight may create the file after this: remove it
        // once the write is done (tmp/ is also emptied at start), and keep
        // the block.
        if let (Some(write), Ok(runtime)) = (self.in_flight.take(), tokio::runtime::Handle::try_current()) {
            let blocks = Arc::clone(&self.blocks);
            runtime.spawn(async move {
                if let Ok(Ok((_, _, block))) = write.await {
                    blocks.give(block);
                }
                let _ = std::fs::remove_file(path);
            });
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// An upload whose bytes have all arrived, to be stored (blocking).
struct FinishedWrite {
    /// `None` when the whole upload fits in its last block.
    file: Option<std::fs::File>,
    hasher: Sha256,
    last_block: Vec<u8>,
    tmp: PathBuf,
    size: u64,
    blocks: Arc<BlockPool>,
}

/// Where [`FinishedWrite::store`] put an upload.
struct StoredFile {
    sha256: [u8; 32],
    size: u64,
    /// The shard directory whose entry for the file must still be synced
    /// (with `sync` on), before the upload is answered.
    shard_to_sync: Option<PathBuf>,
}

impl FinishedWrite {
    /// Writes the last block, syncs the file and moves it to its content
    /// address under `files_dir`, or drops it when that content is already
    /// stored. Without `sync`, the file and its directory entry reach the
    /// disk when the kernel gets to them.
    fn store(self, files_dir: &Path, sync: bool) -> ServiceResult<StoredFile> {
        let FinishedWrite {
            file,
            mut hasher,
            last_block,
            tmp,
            size,
            blocks,
        } = self;
        let result = (|| {
            hasher.update(&last_block);
            let sha256: [u8; 32] = hasher.finalize().into();
            let target = content_path(files_dir, &hex(&sha256));
            let stored = StoredFile {
                sha256,
                size,
                // A stored duplicate's entry may be another upload's rename
                // whose sync has not finished: synced here too.
                shard_to_sync: sync.then(|| target.parent().expect("content paths have a parent").to_owned()),
            };
            if target.exists() {
                // Already stored: a small upload never touches the disk.
                if file.is_some() {
                    std::fs::remove_file(&tmp).map_err(|e| io_error("removing a duplicate upload", e))?;
                }
                return Ok(stored);
            }
            let mut file = match file {
                Some(file) => file,
                None => std::fs::File::create(&tmp).map_err(|e| io_error("creating an upload file", e))?,
            };
            file.write_all(&last_block)
                .map_err(|e| io_error("writing an upload", e))?;
            if sync {
                // The content is durable before its name is.
                file.sync_all().map_err(|e| io_error("syncing an upload", e))?;
            }
            drop(file);
            if let Err(e) = std::fs::rename(&tmp, &target) {
                // Shards are made at start; one removed since is made again.
                if e.kind() != std::io::ErrorKind::NotFound || !tmp.exists() {
                    return Err(io_error("storing an upload", e));
                }
                create_shard_dirs(files_dir, sync).map_err(|e| io_error("creating a media directory", e))?;
                std::fs::rename(&tmp, &target).map_err(|e| io_error("storing an upload", e))?;
            }
            Ok(stored)
        })();
        blocks.give(last_block);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Starts writing `file`'s dirty pages to disk without waiting, so the disk
/// works while the next block arrives and is hashed.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the whole call; offset 0 and length
    // 0 mean the whole file. A failure only leaves the work to the final sync.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File) {}

/// Makes a rename into `dir` durable.
fn sync_dir(dir: &Path) -> ServiceResult<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing the media directory", e))
}

/// Makes the 256 `files/xx` shards that are missing. They exist before any
/// upload, so storing one never creates a directory whose own entry would
/// need syncing too; when one is created here, `files/` is synced.
fn create_shard_dirs(files_dir: &Path, sync: bool) -> std::io::Result<()> {
    let mut created = false;
    for shard in 0..=u8::MAX {
        match std::fs::create_dir(files_dir.join(format!("{shard:02x}"))) {
            Ok(()) => created = true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    if created && sync {
        std::fs::File::open(files_dir)?.sync_all()?;
    }
    Ok(())
}

/// `files/ab/abcdef…`: two hex digits of fan-out keep directories small.
fn content_path(files_dir: &Path, hex: &str) -> PathBuf {
    files_dir.join(&hex[..2]).join(hex)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_media_id() -> String {
    random_string(32)
}

/// The spec's media ID alphabet; anything else cannot name our media and
/// must never reach a path.
pub fn valid_media_id(media_id: &str) -> bool {
    !media_id.is_empty()
        && media_id.len() <= 255
        && media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn io_error(what: &str, e: std::io::Error) -> ServiceError {
    ServiceError::Internal(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_are_checked_against_the_spec_alphabet() {
        assert!(valid_media_id("AbC_09-x"));
        for bad in ["", "../etc", "a/b", "a.b", "%2e", "ä"] {
            assert!(!valid_media_id(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_upload_gives_back_every_block_it_used() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        create_shard_dirs(&files, false).unwrap();
        // One block is filled while the other is written, so two are in use
        // and both come back, whether the upload ends on a block boundary
        // (as a 1 MiB file does) or in the middle of one.
        for len in [4 * blocks::BLOCK, 4 * blocks::BLOCK + 1000] {
            let pool = Arc::new(BlockPool::default());
            let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut sink = UploadSink::create(dir.path(), u64::MAX, true, Arc::clone(&pool));
            for chunk in content.chunks(60_000) {
                sink.write(chunk).await.unwrap();
            }
            let stored = sink.into_finished().await.unwrap().store(&files, true).unwrap();
            assert_eq!(
                pool.kept(),
                2,
                "both blocks of a {len}-byte upload are back in the pool"
            );
            let hex = hex(&stored.sha256);
            assert_eq!(std::fs::read(content_path(&files, &hex)).unwrap(), content);
        }
    }

    #[tokio::test]
    async fn an_abandoned_upload_removes_its_file_and_keeps_its_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(BlockPool::default());
        let mut sink = UploadSink::create(dir.path(), u64::MAX, true, Arc::clone(&pool));
        // A whole block and a bit: one block is being written, one filled.
        sink.write(&vec![1; blocks::BLOCK + 10]).await.unwrap();
        drop(sink);
        let mut kept_and_removed = false;
        for _ in 0..200 {
            let empty = std::fs::read_dir(dir.path()).unwrap().next().is_none();
            if pool.kept() == 2 && empty {
                kept_and_removed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            kept_and_removed,
            "both blocks are kept ({} are) and the file is removed once its write lands",
            pool.kept()
        );
    }
}
