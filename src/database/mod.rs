//! Storage: the key-value trait ([`KvStore`]), its RocksDB engine, the table
//! catalogue, typed key codecs, and the typed tables each service owns.

pub mod account_data;
pub mod admin_room;
pub mod appservices;
pub mod catalogue;
pub mod dehydrated_devices;
pub mod devices;
pub mod directory;
pub mod e2e_keys;
pub mod engine;
pub mod filters;
pub mod key_backups;
pub mod keys;
pub mod media;
pub mod meta;
pub mod openid;
pub mod outbox;
pub mod presence;
pub mod push;
pub mod pushers;
pub mod receipts;
pub mod registration_tokens;
pub mod relations;
pub mod remote_device_lists;
pub mod remote_keys;
pub mod reports;
pub mod rocksdb;
pub mod rooms;
pub mod search;
pub mod server_keys;
pub mod sliding_sync;
pub mod state;
#[cfg(test)]
pub mod testing;
pub mod to_device;
pub mod txn_ids;
pub mod uiaa;
pub mod users;

use std::sync::Arc;

pub use catalogue::Table;
pub use engine::{BackupSummary, Batch, DbError, DbResult, Direction, EngineStats, KvIter, KvStore};

/// A shared handle on the engine.
pub type Db = Arc<dyn KvStore>;

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Serializes a record value.
pub(crate) fn to_record<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode_config()).expect("records always serialize")
}

/// Reads a record value; a value that does not decode is corruption.
pub(crate) fn from_record<T: serde::de::DeserializeOwned>(table: Table, bytes: &[u8]) -> DbResult<T> {
    bincode::serde::decode_from_slice(bytes, bincode_config())
        .map(|(v, _)| v)
        .map_err(|e| DbError::corrupt(table, e))
}

pub(crate) fn decode_key<K: keys::KeyDecode>(table: Table, bytes: &[u8]) -> DbResult<K> {
    keys::decode(bytes).map_err(|e| DbError::corrupt(table, e))
}

pub(crate) fn utf8(table: Table, bytes: Vec<u8>) -> DbResult<String> {
    String::from_utf8(bytes).map_err(|e| DbError::corrupt(table, e))
}

/// A small RocksDB in `dir`, for unit tests.
#[cfg(test)]
pub(crate) fn open_test_db(dir: &std::path::Path) -> Db {
    let opts = rocksdb::EngineOptions {
        cache_bytes: 1 << 20,
        memtable_bytes: 8 << 20,
        max_open_files: 64,
        sync_writes: false,
    };
    Arc::new(rocksdb::RocksDb::open(dir, &opts).expect("open the test database"))
}
