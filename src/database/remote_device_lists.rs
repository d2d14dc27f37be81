//! Typed access to [`Table::RemoteDeviceLists`] (owned by
//! `service::federation::device_lists`): other servers' users' device
//! lists, kept for the users who share a room with ours.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{from_record, keys::encode, to_record, Batch, Db, DbResult, Table};

/// One remote user's device list, as of `stream_id`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteDeviceListRecord {
    /// The `stream_id` of the last update applied (or of the list fetched).
    pub stream_id: u64,
    /// By device ID.
    pub devices: BTreeMap<String, RemoteDeviceRecord>,
    /// The cross-signing keys as their owner signed them, JSON.
    pub master_key: Option<String>,
    pub self_signing_key: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteDeviceRecord {
    /// The device keys as the device signed them, JSON; none when the
    /// device has not uploaded keys.
    pub keys: Option<String>,
    pub display_name: Option<String>,
}

pub struct RemoteDeviceListTables {
    db: Db,
}

impl RemoteDeviceListTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn write(&self, batch: Batch) -> DbResult<()> {
        self.db.write(batch)
    }

    pub fn get(&self, user_id: &str) -> DbResult<Option<RemoteDeviceListRecord>> {
        self.db
            .get(Table::RemoteDeviceLists, &encode(user_id))?
            .map(|v| from_record(Table::RemoteDeviceLists, &v))
            .transpose()
    }

    pub fn put(&self, batch: &mut Batch, user_id: &str, record: &RemoteDeviceListRecord) {
        batch.put(Table::RemoteDeviceLists, encode(user_id), to_record(record));
    }

    pub fn delete(&self, batch: &mut Batch, user_id: &str) {
        batch.delete(Table::RemoteDeviceLists, encode(user_id));
    }
}
