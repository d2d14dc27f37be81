//! Typed access to [`Table::ToDeviceMessages`] and [`Table::ToDeviceTxnIds`]
//! (owned by `service::to_device`).

use super::txn_ids::TxnIdTable;
use super::{decode_key, keys::encode, utf8, Batch, Db, DbResult, Direction, Table};

pub struct ToDeviceTables {
    db: Db,
    txn_ids: TxnIdTable,
}

impl ToDeviceTables {
    pub fn new(db: Db) -> Self {
        Self {
            txn_ids: TxnIdTable::new(db.clone(), Table::ToDeviceTxnIds, Table::ToDeviceTxnIdsByTime),
            db,
        }
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    /// Queues a message (JSON with `type`, `sender`, `content`) for a device
    /// at stream position `count`.
    pub fn put_message(&self, batch: &mut Batch, user_id: &str, device_id: &str, count: u64, json: &str) {
        batch.put(
            Table::ToDeviceMessages,
            encode(&(user_id, device_id, count)),
            json.as_bytes().to_vec(),
        );
    }

    /// Up to `limit` queued messages of a device, oldest first: (position, JSON).
    pub fn messages(&self, user_id: &str, device_id: &str, limit: usize) -> DbResult<Vec<(u64, String)>> {
        self.db
            .scan_prefix(
                Table::ToDeviceMessages,
                encode(&(user_id, device_id)),
                Direction::Forward,
            )
            .take(limit)
            .map(|r| {
                let (k, v) = r?;
                let (_, _, count): (String, String, u64) = decode_key(Table::ToDeviceMessages, &k)?;
                Ok((count, utf8(Table::ToDeviceMessages, v)?))
            })
            .collect()
    }

    /// Adds deletes of a device's messages at or before `up_to` to `batch`;
    /// returns how many.
    pub fn delete_messages_up_to(
        &self,
        batch: &mut Batch,
        user_id: &str,
        device_id: &str,
        up_to: u64,
    ) -> DbResult<usize> {
        let mut deleted = 0;
        for r in self.db.scan_prefix(
            Table::ToDeviceMessages,
            encode(&(user_id, device_id)),
            Direction::Forward,
        ) {
            let (k, _) = r?;
            let (_, _, count): (String, String, u64) = decode_key(Table::ToDeviceMessages, &k)?;
            if count > up_to {
                break;
            }
            batch.delete(Table::ToDeviceMessages, k);
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Whether a device has `n` or more messages queued (reads at most `n`).
    pub fn queue_holds(&self, user_id: &str, device_id: &str, n: usize) -> DbResult<bool> {
        let mut held = 0;
        for r in self.db.scan_prefix(
            Table::ToDeviceMessages,
            encode(&(user_id, device_id)),
            Direction::Forward,
        ) {
            r?;
            held += 1;
            if held >= n {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn has_txn(&self, user_id: &str, device_id: &str, txn_id: &str) -> DbResult<bool> {
        Ok(self.txn_ids.get(user_id, device_id, txn_id)?.is_some())
    }

    /// Remembers a handled transaction (for a day, see `txn_ids.rs`).
    pub fn put_txn(
        &self,
        batch: &mut Batch,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
        now_ms: u64,
    ) -> DbResult<()> {
        self.txn_ids.put(batch, user_id, device_id, txn_id, &[], now_ms)
    }

    /// Indexes transaction IDs of a database from before they expired.
    pub fn backfill_txn_index(&self, now_ms: u64) -> DbResult<usize> {
        self.txn_ids.backfill_index(now_ms)
    }

    /// Adds deletes of everything queued for or sent by a device to `batch`.
    pub fn delete_device(&self, batch: &mut Batch, user_id: &str, device_id: &str) -> DbResult<()> {
        for r in self.db.scan_prefix(
            Table::ToDeviceMessages,
            encode(&(user_id, device_id)),
            Direction::Forward,
        ) {
            batch.delete(Table::ToDeviceMessages, r?.0);
        }
        self.txn_ids.delete_device(batch, user_id, device_id)
    }
}
