//! Typed access to [`Table::Receipts`] (owned by `service::receipts`).

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys, to_record, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiptRecord {
    pub event_id: String,
    pub ts: u64,
    /// Stream position of the receipt.
    pub count: u64,
}

/// One receipt, read back.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub receipt_type: String,
    pub user_id: String,
    /// Empty for an unthreaded receipt.
    pub thread_id: String,
    pub record: ReceiptRecord,
}

pub struct ReceiptTables {
    db: Db,
}

impl ReceiptTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn put(
        &self,
        batch: &mut Batch,
        room_id: &str,
        receipt_type: &str,
        user_id: &str,
        thread_id: &str,
        record: &ReceiptRecord,
    ) {
        batch.put(
            Table::Receipts,
            keys::encode(&(room_id, receipt_type, user_id, thread_id)),
            to_record(record),
        );
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    pub fn get(
        &self,
        room_id: &str,
        receipt_type: &str,
        user_id: &str,
        thread_id: &str,
    ) -> DbResult<Option<ReceiptRecord>> {
        self.db
            .get(
                Table::Receipts,
                &keys::encode(&(room_id, receipt_type, user_id, thread_id)),
            )?
            .map(|v| from_record(Table::Receipts, &v))
            .transpose()
    }

    /// Every receipt in a room.
    pub fn room(&self, room_id: &str) -> DbResult<Vec<Receipt>> {
        self.db
            .scan_prefix(Table::Receipts, keys::encode(&(room_id,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, receipt_type, user_id, thread_id): (String, String, String, String) =
                    decode_key(Table::Receipts, &k)?;
                Ok(Receipt {
                    receipt_type,
                    user_id,
                    thread_id,
                    record: from_record(Table::Receipts, &v)?,
                })
            })
            .collect()
    }
}
