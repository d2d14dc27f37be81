//! The RocksDB engine behind [`KvStore`], tuned for small machines.

use std::path::Path;
use std::sync::Mutex;

use rocksdb::backup::{BackupEngine, BackupEngineOptions, RestoreOptions};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Env, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

use super::catalogue::Table;
use super::engine::{BackupSummary, Batch, BatchOp, DbError, DbResult, Direction, EngineStats, KvIter, KvStore};

/// What the operator can tune (from the `[global]` config).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub cache_bytes: usize,
    /// All memtables together (see `service::memory`).
    pub memtable_bytes: usize,
    pub max_open_files: i32,
    /// fsync the write-ahead log before acknowledging a write.
    pub sync_writes: bool,
}

pub struct RocksDb {
    db: DB,
    sync_writes: bool,
    counter: Mutex<Counter>,
}

/// The durable counter, reserved in blocks: the stored value is a ceiling
/// no handed-out number exceeds, so one synchronous write covers
/// [`COUNTER_BLOCK`] numbers. A restart continues above the ceiling; the
/// numbers left unused are skipped, which nothing minds (positions and IDs
/// must grow and never repeat, not be dense).
struct Counter {
    /// The last number handed out.
    current: u64,
    /// The stored ceiling.
    reserved: u64,
}

const COUNTER_BLOCK: u64 = 1024;

const COUNTER_KEY: &str = "conduit.counter";

fn engine_err(e: rocksdb::Error) -> DbError {
    DbError::Engine(e.into_string())
}

impl RocksDb {
    pub fn open(path: &Path, opts: &EngineOptions) -> DbResult<Self> {
        let cache = Cache::new_lru_cache(opts.cache_bytes);
        let mut table_opts = BlockBasedOptions::default();
        table_opts.set_block_cache(&cache);
        table_opts.set_bloom_filter(10.0, false);
        table_opts.set_cache_index_and_filter_blocks(true);

        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table_opts);
        cf_opts.set_compression_type(DBCompressionType::Lz4);
        cf_opts.set_bottommost_compression_type(DBCompressionType::Zstd);
        // Bounded memtables: at most 2 × 4 MiB per table, less when the
        // whole budget is smaller.
        cf_opts.set_write_buffer_size((4 << 20).min(opts.memtable_bytes / 2).max(1 << 20));
        cf_opts.set_max_write_buffer_number(2);
        // A memtable grows in arena blocks, by default an eighth of its
        // size (512 KiB), and every table written since its last flush
        // holds at least one: 64 KiB blocks lowered the medium benchmark's
        // peak RSS by 4-6 MiB (docs/benchmarks.md).
        cf_opts.set_arena_block_size(64 << 10);
        cf_opts.set_level_compaction_dynamic_level_bytes(true);

        let mut db_opts = cf_opts.clone();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_open_files(opts.max_open_files);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(2);
        db_opts.set_max_total_wal_size(64 << 20);
        // One memtable budget for all tables together: with ~70 tables the
        // per-table bound alone would allow hundreds of MiB. 8 MiB (the
        // share of the default budget) rather than 16 lowered peak RSS by
        // ~2 MiB in the medium benchmark, with no send slowdown that stood
        // out of the noise.
        db_opts.set_db_write_buffer_size(opts.memtable_bytes);

        // RocksDB must open every family the database has, including ones a
        // newer build created; the schema check below then refuses the open.
        let mut names: Vec<String> = Table::ALL.iter().map(|t| t.name().to_owned()).collect();
        if let Ok(existing) = DB::list_cf(&db_opts, path) {
            for name in existing {
                if name != "default" && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let descriptors = names
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_opts.clone()));
        let db = DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(engine_err)?;

        let engine = RocksDb {
            db,
            sync_writes: opts.sync_writes,
            counter: Mutex::new(Counter {
                current: 0,
                reserved: 0,
            }),
        };
        let ceiling = match engine.get(Table::Global, COUNTER_KEY.as_bytes())? {
            Some(bytes) => decode_u64(&bytes)?,
            None => 0,
        };
        *engine.counter.lock().expect("counter lock") = Counter {
            current: ceiling,
            reserved: ceiling,
        };
        Ok(engine)
    }

    fn cf(&self, table: Table) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(table.name())
            .expect("every catalogue table is opened at start")
    }

    fn write_batch(&self, batch: Batch) -> WriteBatch {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                BatchOp::Put(t, k, v) => wb.put_cf(self.cf(t), k, v),
                BatchOp::Delete(t, k) => wb.delete_cf(self.cf(t), k),
            }
        }
        wb
    }

    fn write_options(&self) -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync_writes);
        wo
    }
}

fn decode_u64(bytes: &[u8]) -> DbResult<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| DbError::corrupt(Table::Global, "counter is not 8 bytes"))?;
    Ok(u64::from_be_bytes(arr))
}

impl KvStore for RocksDb {
    fn get(&self, table: Table, key: &[u8]) -> DbResult<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(table), key).map_err(engine_err)
    }

    fn write(&self, batch: Batch) -> DbResult<()> {
        self.db
            .write_opt(self.write_batch(batch), &self.write_options())
            .map_err(engine_err)
    }

    fn write_unsynced(&self, batch: Batch) -> DbResult<()> {
        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.db.write_opt(self.write_batch(batch), &options).map_err(engine_err)
    }

    fn iter(&self, table: Table, from: Option<&[u8]>, direction: Direction) -> KvIter<'_> {
        let mode = match (from, direction) {
            (Some(k), Direction::Forward) => IteratorMode::From(k, rocksdb::Direction::Forward),
            (Some(k), Direction::Backward) => IteratorMode::From(k, rocksdb::Direction::Reverse),
            (None, Direction::Forward) => IteratorMode::Start,
            (None, Direction::Backward) => IteratorMode::End,
        };
        Box::new(
            self.db
                .iterator_cf(self.cf(table), mode)
                .map(|r| r.map(|(k, v)| (k.into_vec(), v.into_vec())).map_err(engine_err)),
        )
    }

    fn next_count(&self) -> DbResult<u64> {
        // The lock orders increments; a number is below the durable ceiling
        // before it is used.
        let mut counter = self.counter.lock().expect("counter lock");
        let next = counter.current + 1;
        if next > counter.reserved {
            let ceiling = counter.current + COUNTER_BLOCK;
            self.db
                .put_cf_opt(
                    self.cf(Table::Global),
                    COUNTER_KEY,
                    ceiling.to_be_bytes(),
                    &self.write_options(),
                )
                .map_err(engine_err)?;
            counter.reserved = ceiling;
        }
        counter.current = next;
        Ok(next)
    }

    fn current_count(&self) -> u64 {
        self.counter.lock().expect("counter lock").current
    }

    fn flush(&self) -> DbResult<()> {
        self.db.flush_wal(true).map_err(engine_err)?;
        for table in Table::ALL {
            self.db.flush_cf(self.cf(table)).map_err(engine_err)?;
        }
        Ok(())
    }

    fn stats(&self) -> EngineStats {
        let per_table = |name: &str| -> u64 {
            Table::ALL
                .iter()
                .filter_map(|t| self.db.property_int_value_cf(self.cf(*t), name).ok().flatten())
                .sum()
        };
        let whole = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        EngineStats {
            sst_bytes: per_table("rocksdb.total-sst-files-size"),
            memtable_bytes: per_table("rocksdb.cur-size-all-mem-tables"),
            // One cache is shared by every table.
            block_cache_bytes: whole("rocksdb.block-cache-usage"),
            block_cache_capacity_bytes: whole("rocksdb.block-cache-capacity"),
            running_compactions: whole("rocksdb.num-running-compactions"),
            compactions_pending: per_table("rocksdb.compaction-pending"),
        }
    }

    fn estimated_keys(&self, table: Table) -> u64 {
        self.db
            .property_int_value_cf(self.cf(table), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    fn backup(&self, dir: &Path, keep: usize) -> DbResult<BackupSummary> {
        let mut engine = backup_engine(dir)?;
        // Flushed first, so the backup needs no write-ahead log replay and
        // holds every write acknowledged before it began.
        engine.create_new_backup_flush(&self.db, true).map_err(engine_err)?;
        engine.purge_old_backups(keep.max(1)).map_err(engine_err)?;
        summaries(&engine)
            .into_iter()
            .max_by_key(|b| b.id)
            .ok_or_else(|| DbError::Engine("the backup just taken is not listed".to_owned()))
    }
}

/// Salvages what a damaged database at `path` holds (RocksDB's repair:
/// every table file that reads is kept, the rest dropped, and a new
/// manifest written). For a database that will not open; the server must
/// be stopped.
pub fn repair(path: &Path) -> DbResult<()> {
    if !path.join("CURRENT").exists() && !path.join("IDENTITY").exists() {
        return Err(DbError::Engine(format!("{} holds no database", path.display())));
    }
    let mut options = Options::default();
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_bottommost_compression_type(DBCompressionType::Zstd);
    DB::repair(&options, path).map_err(engine_err)
}

/// The backups in `dir`, oldest first (none when `dir` holds none).
pub fn list_backups(dir: &Path) -> DbResult<Vec<BackupSummary>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    Ok(summaries(&backup_engine(dir)?))
}

/// Checks that a backup's files are all there with their recorded sizes.
pub fn verify_backup(dir: &Path, id: u32) -> DbResult<()> {
    backup_engine(dir)?.verify_backup(id).map_err(engine_err)
}

/// Restores a backup (the newest when `id` is none) into `db_path`, which
/// must hold no database.
pub fn restore_backup(dir: &Path, id: Option<u32>, db_path: &Path) -> DbResult<()> {
    let mut engine = backup_engine(dir)?;
    let opts = RestoreOptions::default();
    match id {
        Some(id) => engine.restore_from_backup(db_path, db_path, &opts, id),
        None => engine.restore_from_latest_backup(db_path, db_path, &opts),
    }
    .map_err(engine_err)
}

fn backup_engine(dir: &Path) -> DbResult<BackupEngine> {
    let opts = BackupEngineOptions::new(dir).map_err(engine_err)?;
    let env = Env::new().map_err(engine_err)?;
    BackupEngine::open(&opts, &env).map_err(engine_err)
}

fn summaries(engine: &BackupEngine) -> Vec<BackupSummary> {
    let mut out: Vec<BackupSummary> = engine
        .get_backup_info()
        .into_iter()
        .map(|info| BackupSummary {
            id: info.backup_id,
            timestamp: info.timestamp,
            size: info.size,
            files: info.num_files,
        })
        .collect();
    out.sort_by_key(|b| b.id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::keys::encode;

    fn open(dir: &Path) -> RocksDb {
        RocksDb::open(
            dir,
            &EngineOptions {
                cache_bytes: 1 << 20,
                memtable_bytes: 8 << 20,
                max_open_files: 64,
                sync_writes: true,
            },
        )
        .unwrap()
    }

    #[test]
    fn batch_is_atomic_across_tables_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(dir.path());
            let mut batch = Batch::new();
            batch.put(Table::Users, encode("@a:x"), b"user".to_vec());
            batch.put(Table::Profiles, encode(&("@a:x", "displayname")), b"A".to_vec());
            batch.delete(Table::Filters, encode(&("@a:x", 1u64)));
            db.write(batch).unwrap();
            assert_eq!(db.next_count().unwrap(), 1);
            assert_eq!(db.next_count().unwrap(), 2);
        }
        let db = open(dir.path());
        assert_eq!(db.get(Table::Users, &encode("@a:x")).unwrap().unwrap(), b"user");
        assert_eq!(
            db.get(Table::Profiles, &encode(&("@a:x", "displayname")))
                .unwrap()
                .unwrap(),
            b"A"
        );
        assert!(
            db.next_count().unwrap() > 2,
            "the counter never repeats after a restart"
        );
    }

    #[test]
    fn prefix_scans_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        for (user, n) in [("@a:x", 1u64), ("@a:x", 2), ("@a:x", 3), ("@a:xy", 1), ("@b:x", 1)] {
            db.put(Table::Filters, encode(&(user, n)), n.to_be_bytes().to_vec())
                .unwrap();
        }
        let prefix = encode(&("@a:x",));
        let fwd: Vec<u64> = db
            .scan_prefix(Table::Filters, prefix.clone(), Direction::Forward)
            .map(|r| crate::database::keys::decode::<(String, u64)>(&r.unwrap().0).unwrap().1)
            .collect();
        assert_eq!(fwd, vec![1, 2, 3]);
        let back: Vec<u64> = db
            .scan_prefix(Table::Filters, prefix, Direction::Backward)
            .map(|r| crate::database::keys::decode::<(String, u64)>(&r.unwrap().0).unwrap().1)
            .collect();
        assert_eq!(back, vec![3, 2, 1]);
        let last_table_prefix = encode(&("@b:x",));
        assert_eq!(
            db.scan_prefix(Table::Filters, last_table_prefix, Direction::Backward)
                .count(),
            1
        );
    }
}
