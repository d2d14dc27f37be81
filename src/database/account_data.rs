//! Typed access to [`Table::AccountData`] (owned by `service::account_data`).

use super::{decode_key, keys::encode, utf8, Db, DbError, DbResult, Direction, Table};

pub struct AccountDataTables {
    db: Db,
}

/// Global account data is stored under an empty room ID.
fn key(user_id: &str, room_id: Option<&str>, event_type: &str) -> Vec<u8> {
    encode(&(user_id, room_id.unwrap_or(""), event_type))
}

/// One stored entry: where it is, when it last changed, its content.
pub struct AccountDataEntry {
    /// Empty for global account data.
    pub room_id: String,
    pub event_type: String,
    pub count: u64,
    pub content_json: String,
}

/// Value: the stream position of the last change (`u64` big-endian), then
/// the content JSON.
fn split_value(bytes: Vec<u8>) -> DbResult<(u64, String)> {
    if bytes.len() < 8 {
        return Err(DbError::corrupt(Table::AccountData, "value shorter than its count"));
    }
    let count = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    Ok((count, utf8(Table::AccountData, bytes[8..].to_vec())?))
}

impl AccountDataTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The content JSON, as stored.
    pub fn get(&self, user_id: &str, room_id: Option<&str>, event_type: &str) -> DbResult<Option<String>> {
        self.db
            .get(Table::AccountData, &key(user_id, room_id, event_type))?
            .map(|b| split_value(b).map(|(_, json)| json))
            .transpose()
    }

    pub fn put(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        event_type: &str,
        count: u64,
        content_json: &str,
    ) -> DbResult<()> {
        let mut value = count.to_be_bytes().to_vec();
        value.extend_from_slice(content_json.as_bytes());
        self.db
            .put(Table::AccountData, key(user_id, room_id, event_type), value)
    }

    /// Every entry of a user, global and per room.
    pub fn all(&self, user_id: &str) -> DbResult<Vec<AccountDataEntry>> {
        self.db
            .scan_prefix(Table::AccountData, encode(&(user_id,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, room_id, event_type): (String, String, String) = decode_key(Table::AccountData, &k)?;
                let (count, content_json) = split_value(v)?;
                Ok(AccountDataEntry {
                    room_id,
                    event_type,
                    count,
                    content_json,
                })
            })
            .collect()
    }
}
