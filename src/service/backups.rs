//! Online backups: the database through RocksDB's incremental backup
//! engine, then the media files (content-addressed, so a file already in
//! the backup is not copied again), into `backup_directory`. Taken on a
//! schedule by a worker and on demand; listed, verified and restored by
//! `conduit backup` with the server stopped.
//!
//! The database goes first: a media file is written before the record that
//! names it, so every file a backed-up record names exists by the time the
//! files are copied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{ServiceError, ServiceResult};
use crate::config::Config;
use crate::database::rocksdb as engine;
use crate::database::{BackupSummary, Db};

/// Where the backup engine keeps the database's backups, inside the
/// backup directory.
const DATABASE_SUBDIR: &str = "database";
/// Where the media files go, inside the backup directory.
const MEDIA_SUBDIR: &str = "media";

pub struct BackupsService {
    db: Db,
    dir: Option<PathBuf>,
    media_files: PathBuf,
    keep: usize,
    interval: Option<Duration>,
    /// One backup at a time (the engine does not allow two in one directory).
    running: tokio::sync::Mutex<()>,
}

/// A backup just taken.
#[derive(Debug, Clone)]
pub struct Taken {
    pub database: BackupSummary,
    /// Media files copied this time (those not in the backup yet).
    pub media_files_copied: u64,
}

impl BackupsService {
    pub fn new(db: Db, config: &Config) -> Self {
        Self {
            db,
            dir: config.backup_directory.clone(),
            media_files: media_files_dir(&config.database_path),
            keep: config.backups_kept,
            interval: (config.backup_interval_hours > 0)
                .then(|| Duration::from_secs(config.backup_interval_hours * 3600)),
            running: tokio::sync::Mutex::new(()),
        }
    }

    fn dir(&self) -> ServiceResult<&Path> {
        self.dir
            .as_deref()
            .ok_or_else(|| ServiceError::BadRequest("no backup_directory is configured".to_owned()))
    }

    /// Takes a backup now (waiting for one under way to finish first).
    pub async fn take(self: &Arc<Self>) -> ServiceResult<Taken> {
        let dir = self.dir()?.to_owned();
        let _one_at_a_time = self.running.lock().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.take_blocking(&dir))
            .await
            .map_err(|e| ServiceError::Internal(format!("backup task: {e}")))?
    }

    /// Takes a backup on this thread (the command line, server stopped).
    pub fn take_now(&self, dir: Option<&Path>) -> ServiceResult<Taken> {
        let dir = dir.ok_or_else(|| ServiceError::BadRequest("no backup_directory is configured".to_owned()))?;
        self.take_blocking(dir)
    }

    fn take_blocking(&self, dir: &Path) -> ServiceResult<Taken> {
        let started = std::time::Instant::now();
        // The engine makes only the last component of its directory.
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let database = self.db.backup(&dir.join(DATABASE_SUBDIR), self.keep)?;
        let media_files_copied = copy_new_files(&self.media_files, &dir.join(MEDIA_SUBDIR))?;
        tracing::info!(
            id = database.id,
            bytes = database.size,
            media_files_copied,
            ms = started.elapsed().as_millis() as u64,
            "backup taken"
        );
        Ok(Taken {
            database,
            media_files_copied,
        })
    }

    /// The backups in the backup directory, oldest first.
    pub fn list(&self) -> ServiceResult<Vec<BackupSummary>> {
        list(self.dir()?)
    }

    /// Takes a backup every `backup_interval_hours` until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let (Some(interval), Some(_)) = (self.interval, self.dir.as_ref()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.take().await {
                tracing::error!(error = %e, "scheduled backup failed");
            }
        }
    }
}

fn media_files_dir(database_path: &Path) -> PathBuf {
    database_path.join("media").join("files")
}

/// The backups in `dir`, oldest first.
pub fn list(dir: &Path) -> ServiceResult<Vec<BackupSummary>> {
    Ok(engine::list_backups(&dir.join(DATABASE_SUBDIR))?)
}

/// Checks a backup's database files (the newest backup when `id` is none)
/// and that every media file is readable. Returns the backup checked.
pub fn verify(dir: &Path, id: Option<u32>) -> ServiceResult<u32> {
    let id = match id {
        Some(id) => id,
        None => newest(dir)?,
    };
    engine::verify_backup(&dir.join(DATABASE_SUBDIR), id)?;
    for file in files_under(&dir.join(MEDIA_SUBDIR))? {
        std::fs::metadata(&file).map_err(|e| io_error(&file, e))?;
    }
    Ok(id)
}

/// Restores a backup (the newest when `id` is none) into the config's
/// `database_path`, which must hold no database: the database, then the
/// media files. Returns the backup restored.
pub fn restore(config: &Config, id: Option<u32>) -> ServiceResult<u32> {
    let dir = config
        .backup_directory
        .as_deref()
        .ok_or_else(|| ServiceError::BadRequest("no backup_directory is configured".to_owned()))?;
    let target = &config.database_path;
    let occupied = std::fs::read_dir(target).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        return Err(ServiceError::BadRequest(format!(
            "{} is not empty: restore into an empty database_path",
            target.display()
        )));
    }
    let id = match id {
        Some(id) => id,
        None => newest(dir)?,
    };
    engine::restore_backup(&dir.join(DATABASE_SUBDIR), Some(id), target)?;
    copy_new_files(&dir.join(MEDIA_SUBDIR), &media_files_dir(target))?;
    Ok(id)
}

fn newest(dir: &Path) -> ServiceResult<u32> {
    list(dir)?
        .last()
        .map(|b| b.id)
        .ok_or_else(|| ServiceError::NotFound(format!("no backup in {}", dir.display())))
}

/// Copies the files under `from` that `to` does not have yet, keeping
/// their paths; a file is written under a temporary name and renamed, so a
/// copy cut short is never taken for a whole one. Returns the files copied.
fn copy_new_files(from: &Path, to: &Path) -> ServiceResult<u64> {
    let mut copied = 0;
    for file in files_under(from)? {
        let relative = file
            .strip_prefix(from)
            .map_err(|e| ServiceError::Internal(format!("backup path: {e}")))?;
        let target = to.join(relative);
        if target.exists() {
            continue;
        }
        let parent = target.parent().unwrap_or(to);
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        let partial = target.with_extension("partial");
        std::fs::copy(&file, &partial).map_err(|e| io_error(&file, e))?;
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(&partial, e))?;
        std::fs::rename(&partial, &target).map_err(|e| io_error(&target, e))?;
        copied += 1;
    }
    Ok(copied)
}

/// Every file under `dir` (none when it does not exist), skipping
/// unfinished copies.
fn files_under(dir: &Path) -> ServiceResult<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&current, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&current, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| io_error(&path, e))?;
            if kind.is_dir() {
                pending.push(path);
            } else if path.extension().is_none_or(|e| e != "partial") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn io_error(path: &Path, e: std::io::Error) -> ServiceError {
    ServiceError::Internal(format!("backup: {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_files_are_copied_and_partial_ones_are_not_taken() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("ab")).unwrap();
        std::fs::write(from.path().join("ab/one"), b"1").unwrap();
        std::fs::write(from.path().join("two"), b"2").unwrap();
        std::fs::write(from.path().join("ab/three.partial"), b"cut short").unwrap();
        assert_eq!(copy_new_files(from.path(), to.path()).unwrap(), 2);
        assert_eq!(std::fs::read(to.path().join("ab/one")).unwrap(), b"1");
        assert!(!to.path().join("ab/three.partial").exists());
        std::fs::write(from.path().join("ab/four"), b"4").unwrap();
        assert_eq!(copy_new_files(from.path(), to.path()).unwrap(), 1, "only the new file");
    }
}
