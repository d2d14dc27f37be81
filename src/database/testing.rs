//! A storage engine for unit tests that fails where told: the real RocksDB
//! underneath, with reads of one key or writes touching one table failing,
//! as a disk error would. Tests of what the services do when storage fails
//! half-way use it.

use std::sync::{Arc, Mutex};

use super::engine::BatchOp;
use super::rocksdb::{EngineOptions, RocksDb};
use super::{Batch, Db, DbError, DbResult, Direction, KvIter, KvStore, Table};

pub struct FaultyStore {
    inner: Db,
    failing_read: Mutex<Option<(Table, Vec<u8>)>>,
    failing_writes: Mutex<Option<Table>>,
}

impl FaultyStore {
    /// A store in `dir` that fails nothing until told.
    pub fn open(dir: &std::path::Path) -> Arc<Self> {
        let opts = EngineOptions {
            cache_bytes: 1 << 20,
            memtable_bytes: 8 << 20,
            max_open_files: 64,
            sync_writes: false,
        };
        Arc::new(Self {
            inner: Arc::new(RocksDb::open(dir, &opts).expect("open the test database")),
            failing_read: Mutex::new(None),
            failing_writes: Mutex::new(None),
        })
    }

    /// Reads of `key` in `table` fail from now on.
    pub fn fail_reads_of(&self, table: Table, key: Vec<u8>) {
        *self.failing_read.lock().unwrap() = Some((table, key));
    }

    /// Batches that write to `table` fail from now on (and write nothing).
    pub fn fail_writes_to(&self, table: Table) {
        *self.failing_writes.lock().unwrap() = Some(table);
    }

    fn injected() -> DbError {
        DbError::Engine("injected storage failure".to_owned())
    }
}

impl KvStore for FaultyStore {
    fn get(&self, table: Table, key: &[u8]) -> DbResult<Option<Vec<u8>>> {
        let failing = self.failing_read.lock().unwrap();
        if failing.as_ref().is_some_and(|(t, k)| *t == table && k == key) {
            return Err(Self::injected());
        }
        drop(failing);
        self.inner.get(table, key)
    }

    fn write(&self, batch: Batch) -> DbResult<()> {
        let failing = *self.failing_writes.lock().unwrap();
        let touches = |table: Table| {
            batch.ops.iter().any(|op| match op {
                BatchOp::Put(t, _, _) | BatchOp::Delete(t, _) => *t == table,
            })
        };
        if failing.is_some_and(touches) {
            return Err(Self::injected());
        }
        self.inner.write(batch)
    }

    fn iter(&self, table: Table, from: Option<&[u8]>, direction: Direction) -> KvIter<'_> {
        self.inner.iter(table, from, direction)
    }

    fn next_count(&self) -> DbResult<u64> {
        self.inner.next_count()
    }

    fn current_count(&self) -> u64 {
        self.inner.current_count()
    }

    fn flush(&self) -> DbResult<()> {
        self.inner.flush()
    }

    fn backup(&self, dir: &std::path::Path, keep: usize) -> DbResult<super::BackupSummary> {
        self.inner.backup(dir, keep)
    }

    fn stats(&self) -> super::engine::EngineStats {
        self.inner.stats()
    }

    fn estimated_keys(&self, table: Table) -> u64 {
        self.inner.estimated_keys(table)
    }
}
