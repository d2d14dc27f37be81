//! Typed access to [`Table::Notifications`], [`Table::UnreadCounts`],
//! [`Table::NotificationHistory`] and [`Table::MissedCalls`] (owned by
//! `service::push`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys, to_record, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotificationRecord {
    pub highlight: bool,
    /// The thread root, for an event in a thread.
    pub thread_id: Option<String>,
}

/// One entry of a user's notification history: what `/notifications`
/// lists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryRecord {
    pub room_id: String,
    pub event_id: String,
    /// When the notification was made, in ms since the Unix epoch.
    pub ts: u64,
    pub highlight: bool,
    /// The push rule's actions as a JSON array (bincode cannot hold an
    /// arbitrary JSON value).
    pub actions: String,
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

    /// Whether the entry for the event at `count` is still unread (no
    /// receipt has covered it).
    pub fn is_unread(&self, user_id: &str, room_id: &str, count: u64) -> DbResult<bool> {
        Ok(self
            .db
            .get(Table::Notifications, &keys::encode(&(user_id, room_id, count)))?
            .is_some())
    }

    pub fn put_history(&self, batch: &mut Batch, user_id: &str, count: u64, record: &HistoryRecord) {
        batch.put(
            Table::NotificationHistory,
            keys::encode(&(user_id, count)),
            to_record(record),
        );
    }

    /// A user's notification history older than `before` (all of it
    /// without), newest first.
    pub fn history(
        &self,
        user_id: &str,
        before: Option<u64>,
    ) -> impl Iterator<Item = DbResult<(u64, HistoryRecord)>> + '_ {
        let prefix = keys::encode(&(user_id,));
        let prefix_len = prefix.len();
        let entries = match before {
            None => self
                .db
                .scan_prefix(Table::NotificationHistory, prefix, Direction::Backward),
            Some(before) => {
                let start = keys::encode(&(user_id, before));
                let iter = self
                    .db
                    .iter(Table::NotificationHistory, Some(&start), Direction::Backward);
                // Seeking backward lands on `start` itself if it exists.
                Box::new(
                    iter.skip_while(move |r| r.as_ref().is_ok_and(|(k, _)| *k >= start))
                        .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))),
                )
            }
        };
        entries.map(move |r| {
            let (k, v) = r?;
            let count: u64 = decode_key(Table::NotificationHistory, &k[prefix_len..])?;
            Ok((count, from_record(Table::NotificationHistory, &v)?))
        })
    }

    /// Adds to `batch` the deletion of all but the user's newest `keep`
    /// history entries.
    pub fn trim_history(&self, batch: &mut Batch, user_id: &str, keep: usize) -> DbResult<()> {
        let prefix = keys::encode(&(user_id,));
        for entry in self
            .db
            .scan_prefix(Table::NotificationHistory, prefix, Direction::Backward)
            .skip(keep)
        {
            let (key, _) = entry?;
            batch.delete(Table::NotificationHistory, key);
        }
        Ok(())
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

    /// Marks the notification at `count` as a call.
    pub fn put_missed_call(&self, batch: &mut Batch, user_id: &str, room_id: &str, count: u64) {
        batch.put(Table::MissedCalls, keys::encode(&(user_id, room_id, count)), Vec::new());
    }

    /// The counts of the user's unread call notifications in a room, oldest
    /// first.
    pub fn missed_calls_in(&self, user_id: &str, room_id: &str) -> DbResult<Vec<u64>> {
        let prefix = keys::encode(&(user_id, room_id));
        let prefix_len = prefix.len();
        self.db
            .scan_prefix(Table::MissedCalls, prefix, Direction::Forward)
            .map(|r| decode_key(Table::MissedCalls, &r?.0[prefix_len..]))
            .collect()
    }

    pub fn delete_missed_calls(&self, batch: &mut Batch, user_id: &str, room_id: &str, counts: &[u64]) {
        for count in counts {
            batch.delete(Table::MissedCalls, keys::encode(&(user_id, room_id, *count)));
        }
    }

    /// How many unread call notifications the user has in all rooms.
    pub fn missed_calls(&self, user_id: &str) -> DbResult<u64> {
        let mut n = 0;
        for entry in self
            .db
            .scan_prefix(Table::MissedCalls, keys::encode(&(user_id,)), Direction::Forward)
        {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    pub fn put_unread(&self, batch: &mut Batch, user_id: &str, room_id: &str, record: &UnreadRecord) {
        batch.put(
            Table::UnreadCounts,
            keys::encode(&(user_id, room_id)),
            to_record(record),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{HistoryRecord, PushTables};
    use crate::database::{open_test_db, Batch};

    fn entry(n: u64) -> HistoryRecord {
        HistoryRecord {
            room_id: "!r:x".to_owned(),
            event_id: format!("$e{n}"),
            ts: n,
            highlight: n % 2 == 0,
            actions: "[\"notify\"]".to_owned(),
        }
    }

    #[test]
    fn history_pages_newest_first_and_trims_to_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_test_db(dir.path());
        let tables = PushTables::new(db.clone());
        let mut batch = Batch::new();
        for n in 1..=6 {
            tables.put_history(&mut batch, "@a:x", n, &entry(n));
        }
        // Another user's entries, sorting right after @a:x's, stay apart.
        tables.put_history(&mut batch, "@a:xy", 7, &entry(7));
        db.write(batch).unwrap();
        let counts = |before| -> Vec<u64> { tables.history("@a:x", before).map(|r| r.unwrap().0).collect() };
        assert_eq!(counts(None), [6, 5, 4, 3, 2, 1]);
        assert_eq!(counts(Some(4)), [3, 2, 1]);
        assert_eq!(counts(Some(1)), Vec::<u64>::new());
        assert_eq!(counts(Some(100)), [6, 5, 4, 3, 2, 1]);

        let mut batch = Batch::new();
        tables.trim_history(&mut batch, "@a:x", 2).unwrap();
        db.write(batch).unwrap();
        assert_eq!(counts(None), [6, 5]);
        assert_eq!(tables.history("@a:xy", None).count(), 1);
    }
}
