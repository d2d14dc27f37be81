//! Typed access to [`Table::Filters`] (owned by `service::filters`).

use super::{keys::encode, utf8, Db, DbResult, Table};

pub struct FiltersTables {
    db: Db,
}

impl FiltersTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn get(&self, user_id: &str, filter_id: u64) -> DbResult<Option<String>> {
        self.db
            .get(Table::Filters, &encode(&(user_id, filter_id)))?
            .map(|b| utf8(Table::Filters, b))
            .transpose()
    }

    pub fn put(&self, user_id: &str, filter_id: u64, filter_json: &str) -> DbResult<()> {
        self.db.put(
            Table::Filters,
            encode(&(user_id, filter_id)),
            filter_json.as_bytes().to_vec(),
        )
    }

    pub fn next_id(&self) -> DbResult<u64> {
        self.db.next_count()
    }
}
