//! Typed access to [`Table::Notifications`] (owned by `service::push`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys, to_record, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotificationRecord {
    pub highlight: bool,
    /// The thread root, for an event in a thread.
    pub thread_id: Option<String>,
}

/// Unread notifications and highlights of one user in one room: outside
/// threads, and per thread root.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnreadRecord {
    pub main: (u64, u64),
    pub threads: BTreeMap<String, (u64, u64)>,
}

pub struct PushTables {
    db: Db,
}

impl PushTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn put_notification(
        &self,
        batch: &mut Batch,
        user_id: &str,
        room_id: &str,
        count: u64,
        record: &NotificationRecord,
    ) {
        batch.put(
            Table::Notifications,
            keys::encode(&(user_id, room_id, count)),
            to_record(record),
        );
    }

    /// A user's unread notifications in a room, oldest first.
    pub fn notifications(&self, user_id: &str, room_id: &str) -> DbResult<Vec<(u64, NotificationRecord)>> {
        let prefix = keys::encode(&(user_id, room_id));
        let prefix_len = prefix.len();
        self.db
            .scan_prefix(Table::Notifications, prefix, Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                // Only the count is new to us: the prefix is known.
                let count: u64 = decode_key(Table::Notifications, &k[prefix_len..])?;
                Ok((count, from_record(Table::Notifications, &v)?))
            })
            .collect()
    }

    /// Deletes notifications and records the counts left, in one write.
    pub fn delete_notifications(
        &self,
        batch: &mut Batch,
        user_id: &str,
        room_id: &str,
        counts: &[u64],
        left: &UnreadRecord,
    ) {
        for count in counts {
            batch.delete(Table::Notifications, keys::encode(&(user_id, room_id, *count)));
        }
        self.put_unread(batch, user_id, room_id, left);
    }

    /// The stored counts; `None` in a database from before they were kept.
    pub fn unread(&self, user_id: &str, room_id: &str) -> DbResult<Option<UnreadRecord>> {
        self.db
            .get(Table::UnreadCounts, &keys::encode(&(user_id, room_id)))?
            .map(|v| from_record(Table::UnreadCounts, &v))
            .transpose()
    }

    /// `(room_id, counts)` of each room the user has counts stored for.
    pub fn unread_of_user(&self, user_id: &str) -> DbResult<Vec<(String, UnreadRecord)>> {
        self.db
            .scan_prefix(Table::UnreadCounts, keys::encode(&(user_id,)), Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (_, room_id): (String, String) = decode_key(Table::UnreadCounts, &k)?;
                Ok((room_id, from_record(Table::UnreadCounts, &v)?))
            })
            .collect()
    }

    pub fn put_unread(&self, batch: &mut Batch, user_id: &str, room_id: &str, record: &UnreadRecord) {
        batch.put(
            Table::UnreadCounts,
            keys::encode(&(user_id, room_id)),
            to_record(record),
        );
    }
}
