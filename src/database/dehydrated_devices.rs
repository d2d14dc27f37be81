//! Typed access to [`Table::DehydratedDevices`] (owned by
//! `service::dehydrated_devices`).

use serde::{Deserialize, Serialize};

use super::{from_record, keys::encode, to_record, Db, DbResult, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DehydratedDeviceRecord {
    pub device_id: String,
    /// The client's encrypted device pickle, as JSON; opaque to the server.
    pub device_data: String,
}

pub struct DehydratedDeviceTables {
    db: Db,
}

impl DehydratedDeviceTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn get(&self, user_id: &str) -> DbResult<Option<DehydratedDeviceRecord>> {
        self.db
            .get(Table::DehydratedDevices, &encode(&(user_id,)))?
            .map(|v| from_record(Table::DehydratedDevices, &v))
            .transpose()
    }

    pub fn put(&self, user_id: &str, record: &DehydratedDeviceRecord) -> DbResult<()> {
        self.db
            .put(Table::DehydratedDevices, encode(&(user_id,)), to_record(record))
    }

    pub fn delete(&self, user_id: &str) -> DbResult<()> {
        self.db.delete(Table::DehydratedDevices, encode(&(user_id,)))
    }
}
