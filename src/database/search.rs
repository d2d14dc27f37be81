//! Typed access to [`Table::SearchWords`] (owned by `service::search`).

use super::{decode_key, keys::encode, Batch, Db, DbResult, Direction, Table};

pub struct SearchTables {
    db: Db,
}

impl SearchTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn put_words<'a>(
        &self,
        batch: &mut Batch,
        short_room_id: u64,
        words: impl Iterator<Item = &'a str>,
        count: u64,
    ) {
        for word in words {
            batch.put(Table::SearchWords, encode(&(short_room_id, word, count)), Vec::new());
        }
    }

    pub fn delete_words<'a>(
        &self,
        batch: &mut Batch,
        short_room_id: u64,
        words: impl Iterator<Item = &'a str>,
        count: u64,
    ) {
        for word in words {
            batch.delete(Table::SearchWords, encode(&(short_room_id, word, count)));
        }
    }

    /// Stream positions of a room's events with a word starting with
    /// `prefix`, at most `limit`. `prefix` must hold no NUL (the tokenizer
    /// keeps letters and digits only), so its raw bytes are also its key
    /// encoding without the terminator: a byte prefix of every longer word.
    pub fn events_with_prefix(&self, short_room_id: u64, prefix: &str, limit: usize) -> DbResult<Vec<u64>> {
        debug_assert!(!prefix.as_bytes().contains(&0));
        let mut key = encode(&(short_room_id,));
        key.extend_from_slice(prefix.as_bytes());
        self.db
            .scan_prefix(Table::SearchWords, key, Direction::Forward)
            .take(limit)
            .map(|r| {
                let (k, _) = r?;
                let (_, _, count): (u64, String, u64) = decode_key(Table::SearchWords, &k)?;
                Ok(count)
            })
            .collect()
    }
}
