//! The key-value abstraction every table goes through, and its atomic batch.

use super::catalogue::Table;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DbError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error(
        "the database was written by a newer Conduit (schema {found}, this build reads up to {supported}); refusing to open it"
    )]
    TooNew { found: u64, supported: u64 },
}

impl DbError {
    pub fn corrupt(table: Table, detail: impl std::fmt::Display) -> Self {
        DbError::Corrupt {
            table: table.name(),
            detail: detail.to_string(),
        }
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// What the engine reports about itself (0 where it cannot say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Bytes of the tables' files on disk.
    pub sst_bytes: u64,
    /// Bytes in memtables, not yet written to files.
    pub memtable_bytes: u64,
    pub block_cache_bytes: u64,
    pub block_cache_capacity_bytes: u64,
    pub running_compactions: u64,
    /// Tables whose compaction is due.
    pub compactions_pending: u64,
}

/// One backup in a backup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    pub id: u32,
    /// When it was taken, in seconds since the Unix epoch.
    pub timestamp: i64,
    /// Bytes of its files (files shared with other backups counted in each).
    pub size: u64,
    pub files: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

pub type KvPair = (Vec<u8>, Vec<u8>);
pub type KvIter<'a> = Box<dyn Iterator<Item = DbResult<KvPair>> + Send + 'a>;

/// Puts and deletes across any tables, applied all together or not at all.
#[derive(Default, Debug)]
pub struct Batch {
    pub(super) ops: Vec<BatchOp>,
}

#[derive(Debug)]
pub(super) enum BatchOp {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(BatchOp::Put(table, key, value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(BatchOp::Delete(table, key));
    }
}

/// The storage engine. Calls block: async code runs them through
/// `spawn_blocking` (see `service::Services::run`).
pub trait KvStore: Send + Sync + 'static {
    fn get(&self, table: Table, key: &[u8]) -> DbResult<Option<Vec<u8>>>;

    /// Applies the batch atomically; durable on return unless the operator
    /// turned synchronous writes off.
    fn write(&self, batch: Batch) -> DbResult<()>;

    /// Applies the batch atomically without waiting for the disk: it
    /// survives the process, not a power cut. For what is cheap to lose
    /// and written often (a sync connection's state).
    fn write_unsynced(&self, batch: Batch) -> DbResult<()> {
        self.write(batch)
    }

    /// Iterates from `from` (inclusive) in `direction`; `None` starts at the
    /// table's first (forward) or last (backward) key.
    fn iter(&self, table: Table, from: Option<&[u8]>, direction: Direction) -> KvIter<'_>;

    /// A durable, strictly increasing counter shared by the whole server.
    fn next_count(&self) -> DbResult<u64>;

    /// The counter's latest value (0 in a new database).
    fn current_count(&self) -> u64;

    /// Flushes memtables and the write-ahead log to disk.
    fn flush(&self) -> DbResult<()>;

    /// Takes an online backup into `dir` (incremental: files an earlier
    /// backup there holds are not copied again), then keeps only the newest
    /// `keep` backups. Returns the new backup.
    fn backup(&self, dir: &std::path::Path, keep: usize) -> DbResult<BackupSummary>;

    /// The engine's figures, for metrics.
    fn stats(&self) -> EngineStats;

    /// About how many keys `table` holds, without reading them: for figures
    /// an admin reads (an overwritten or deleted key may count until
    /// compaction).
    fn estimated_keys(&self, table: Table) -> u64;

    fn put(&self, table: Table, key: Vec<u8>, value: Vec<u8>) -> DbResult<()> {
        let mut batch = Batch::new();
        batch.put(table, key, value);
        self.write(batch)
    }

    fn delete(&self, table: Table, key: Vec<u8>) -> DbResult<()> {
        let mut batch = Batch::new();
        batch.delete(table, key);
        self.write(batch)
    }

    /// All pairs whose key starts with `prefix`, in `direction`.
    fn scan_prefix(&self, table: Table, prefix: Vec<u8>, direction: Direction) -> KvIter<'_> {
        match direction {
            Direction::Forward => {
                let iter = self.iter(table, Some(&prefix), Direction::Forward);
                Box::new(iter.take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))))
            }
            Direction::Backward => {
                let iter = match prefix_successor(&prefix) {
                    Some(end) => {
                        let iter = self.iter(table, Some(&end), Direction::Backward);
                        // Seeking backward lands on `end` itself if it exists.
                        Box::new(iter.skip_while(move |r| r.as_ref().is_ok_and(|(k, _)| *k >= end))) as KvIter<'_>
                    }
                    None => self.iter(table, None, Direction::Backward),
                };
                Box::new(iter.take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))))
            }
        }
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_successor;

    #[test]
    fn successor_of_prefix() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
    }
}
