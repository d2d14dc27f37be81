//! Typed access to [`Table::ToDeviceMessages`] and [`Table::ToDeviceTxnIds`]
//! (owned by `service::to_device`).

use super::{decode_key, keys::encode, utf8, Batch, Db, DbResult, Direction, Table};

pub struct ToDeviceTables {
    db: Db,
}

impl ToDeviceTables {
    pub fn new(db: Db) -> Self {
        Self { db }
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
        Ok(self
            .db
            .get(Table::ToDeviceTxnIds, &encode(&(user_id, device_id, txn_id)))?
            .is_some())
    }

    pub fn put_txn(&self, batch: &mut Batch, user_id: &str, device_id: &str, txn_id: &str) {
        batch.put(Table::ToDeviceTxnIds, encode(&(user_id, device_id, txn_id)), Vec::new());
    }

    /// Adds deletes of everything queued for or sent by a device to `batch`.
    pub fn delete_device(&self, batch: &mut Batch, user_id: &str, device_id: &str) -> DbResult<()> {
        for table in [Table::ToDeviceMessages, Table::ToDeviceTxnIds] {
            for r in self
                .db
                .scan_prefix(table, encode(&(user_id, device_id)), Direction::Forward)
            {
                batch.delete(table, r?.0);
            }
        }
        Ok(())
    }
}
