//! Client transaction IDs, kept for a day and then dropped: long enough for
//! any client's retry of a request (Synapse keeps them 30 minutes), short
//! enough that the tables stay the size of a day's sends.
//!
//! Two tables share this code: [`Table::TxnIds`] (event sends, owned by
//! `service::timeline`) and [`Table::ToDeviceTxnIds`] (owned by
//! `service::to_device`). Each has a time index beside it
//! ([`Table::TxnIdsByTime`], [`Table::ToDeviceTxnIdsByTime`]); every new
//! entry expires up to two older than a day, found at the index's start.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{decode_key, keys, Batch, Db, DbResult, Direction, Table};

/// How long a transaction ID is remembered.
pub const TXN_ID_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;

/// Expired entries dropped per new one: more than one, so a backlog (after
/// an upgrade, or a quiet day) drains while the server is in use.
const EXPIRED_PER_PUT: usize = 2;

/// One transaction-ID table and its time index. Keys are `(user_id: str,
/// device_id: str, txn_id: str)`; values are the write time in ms (`u64`
/// big-endian) followed by the table's own value (the event ID for event
/// sends, nothing for to-device sends). Values from before the time was
/// kept (empty, or an event ID starting with `$`) have no time. The index
/// key is `(written_ms: u64, user_id: str, device_id: str, txn_id: str)`,
/// its value empty.
pub struct TxnIdTable {
    db: Db,
    table: Table,
    by_time: Table,
    /// Index entries older than this are gone: the next expiry seeks here
    /// rather than through the deletions left at the index's start.
    expired_before: AtomicU64,
}

impl TxnIdTable {
    pub fn new(db: Db, table: Table, by_time: Table) -> Self {
        Self {
            db,
            table,
            by_time,
            expired_before: AtomicU64::new(0),
        }
    }

    /// The value stored for this transaction, if it was seen (and is kept).
    pub fn get(&self, user_id: &str, device_id: &str, txn_id: &str) -> DbResult<Option<Vec<u8>>> {
        Ok(self
            .db
            .get(self.table, &keys::encode(&(user_id, device_id, txn_id)))?
            .map(|stored| match written_at(&stored) {
                Some(_) => stored[8..].to_vec(),
                None => stored,
            }))
    }

    /// Adds the transaction to `batch` with its time, and the expiry of up
    /// to [`EXPIRED_PER_PUT`] entries written a day before `now_ms`.
    pub fn put(
        &self,
        batch: &mut Batch,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
        value: &[u8],
        now_ms: u64,
    ) -> DbResult<()> {
        self.expire_in(batch, now_ms.saturating_sub(TXN_ID_LIFETIME_MS), EXPIRED_PER_PUT)?;
        let mut stored = now_ms.to_be_bytes().to_vec();
        stored.extend_from_slice(value);
        batch.put(self.table, keys::encode(&(user_id, device_id, txn_id)), stored);
        batch.put(
            self.by_time,
            keys::encode(&(now_ms, user_id, device_id, txn_id)),
            Vec::new(),
        );
        Ok(())
    }

    /// Adds the deletes of up to `max` entries written before `cutoff_ms` to
    /// `batch`; returns how many.
    fn expire_in(&self, batch: &mut Batch, cutoff_ms: u64, max: usize) -> DbResult<usize> {
        let from = self.expired_before.load(Ordering::Relaxed).to_be_bytes();
        let mut expired = 0;
        for entry in self.db.iter(self.by_time, Some(&from), Direction::Forward) {
            let (index_key, _) = entry?;
            let (written, user_id, device_id, txn_id): (u64, String, String, String) =
                decode_key(self.by_time, &index_key)?;
            if written >= cutoff_ms || expired >= max {
                break;
            }
            batch.delete(self.by_time, index_key);
            let key = keys::encode(&(user_id.as_str(), device_id.as_str(), txn_id.as_str()));
            // The entry may be newer than this index entry: the device was
            // logged out (which deletes its entries) and its ID used again.
            if let Some(stored) = self.db.get(self.table, &key)? {
                if written_at(&stored).is_none_or(|at| at == written) {
                    batch.delete(self.table, key);
                }
            }
            self.expired_before.fetch_max(written, Ordering::Relaxed);
            expired += 1;
        }
        Ok(expired)
    }

    /// Adds the deletes of a device's transactions to `batch` (its index
    /// entries expire in their time).
    pub fn delete_device(&self, batch: &mut Batch, user_id: &str, device_id: &str) -> DbResult<()> {
        for entry in self
            .db
            .scan_prefix(self.table, keys::encode(&(user_id, device_id)), Direction::Forward)
        {
            batch.delete(self.table, entry?.0);
        }
        Ok(())
    }

    /// Indexes the entries of a database from before the index existed, as
    /// written now (so they expire a day after the upgrade); does nothing
    /// once the index has entries.
    pub fn backfill_index(&self, now_ms: u64) -> DbResult<usize> {
        if self.db.iter(self.by_time, None, Direction::Forward).next().is_some() {
            return Ok(0);
        }
        let mut batch = Batch::new();
        let mut added = 0;
        for entry in self.db.iter(self.table, None, Direction::Forward) {
            let (key, stored) = entry?;
            let (user_id, device_id, txn_id): (String, String, String) = decode_key(self.table, &key)?;
            let written = written_at(&stored).unwrap_or(now_ms);
            batch.put(
                self.by_time,
                keys::encode(&(written, user_id.as_str(), device_id.as_str(), txn_id.as_str())),
                Vec::new(),
            );
            added += 1;
            // Bounded memory for a large database.
            if added % 10_000 == 0 {
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        self.db.write(batch)?;
        Ok(added)
    }
}

/// The write time at the start of a stored value; `None` for a value from
/// before times were kept (empty, or an event ID, which starts with `$`,
/// where a time in this millennium starts with a zero byte).
fn written_at(stored: &[u8]) -> Option<u64> {
    match stored {
        [b'$', ..] => None,
        [a, b, c, d, e, f, g, h, ..] => Some(u64::from_be_bytes([*a, *b, *c, *d, *e, *f, *g, *h])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;

    const DAY: u64 = TXN_ID_LIFETIME_MS;

    fn table(db: &Db) -> TxnIdTable {
        TxnIdTable::new(db.clone(), Table::TxnIds, Table::TxnIdsByTime)
    }

    fn put(t: &TxnIdTable, db: &Db, device: &str, txn: &str, now: u64) {
        let mut batch = Batch::new();
        t.put(&mut batch, "@a:x", device, txn, b"$event", now).unwrap();
        db.write(batch).unwrap();
    }

    #[test]
    fn entries_expire_a_day_after_they_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_test_db(dir.path());
        let t = table(&db);
        let start = 1_800_000_000_000;
        put(&t, &db, "D", "t1", start);
        put(&t, &db, "D", "t2", start + 1000);
        assert_eq!(t.get("@a:x", "D", "t1").unwrap().as_deref(), Some(&b"$event"[..]));

        // Within the day both stay; the first new entry after it drops both.
        put(&t, &db, "D", "t3", start + DAY - 1);
        assert!(t.get("@a:x", "D", "t1").unwrap().is_some());
        put(&t, &db, "D", "t4", start + DAY + 1001);
        assert!(t.get("@a:x", "D", "t1").unwrap().is_none());
        assert!(t.get("@a:x", "D", "t2").unwrap().is_none());
        assert!(t.get("@a:x", "D", "t3").unwrap().is_some());
        let indexed = db.iter(Table::TxnIdsByTime, None, Direction::Forward).count();
        assert_eq!(indexed, 2, "the index shrinks with the table");
    }

    #[test]
    fn an_entry_written_again_after_a_logout_outlives_the_old_index_entry() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_test_db(dir.path());
        let t = table(&db);
        let start = 1_800_000_000_000;
        put(&t, &db, "D", "t1", start);
        let mut batch = Batch::new();
        t.delete_device(&mut batch, "@a:x", "D").unwrap();
        db.write(batch).unwrap();
        assert!(t.get("@a:x", "D", "t1").unwrap().is_none());
        put(&t, &db, "D", "t1", start + DAY);
        // The old index entry expires now, but not the new entry.
        put(&t, &db, "D", "t2", start + DAY + 1);
        assert!(t.get("@a:x", "D", "t1").unwrap().is_some());
    }

    #[test]
    fn entries_from_before_the_index_are_indexed_once_and_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_test_db(dir.path());
        db.put(Table::TxnIds, keys::encode(&("@a:x", "D", "old")), b"$old".to_vec())
            .unwrap();
        let t = table(&db);
        assert_eq!(t.get("@a:x", "D", "old").unwrap().as_deref(), Some(&b"$old"[..]));
        let now = 1_800_000_000_000;
        assert_eq!(t.backfill_index(now).unwrap(), 1);
        assert_eq!(t.backfill_index(now).unwrap(), 0);
        put(&t, &db, "D", "new", now + DAY + 1);
        assert!(
            t.get("@a:x", "D", "old").unwrap().is_none(),
            "expired a day after the upgrade"
        );
    }
}
