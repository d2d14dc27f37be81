//! Typed access to [`Table::Appservices`] (owned by `service::appservices`).

use super::{decode_key, keys, utf8, Batch, Db, DbResult, Direction, Table};

pub struct AppserviceTables {
    db: Db,
}

impl AppserviceTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Stores (or replaces) the registration `json` of appservice `id`.
    pub fn put(&self, id: &str, json: &str) -> DbResult<()> {
        let mut batch = Batch::new();
        batch.put(Table::Appservices, keys::encode(&(id,)), json.as_bytes().to_vec());
        self.db.write(batch)
    }

    /// Removes appservice `id`; whether it was there.
    pub fn remove(&self, id: &str) -> DbResult<bool> {
        let key = keys::encode(&(id,));
        if self.db.get(Table::Appservices, &key)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.delete(Table::Appservices, key);
        self.db.write(batch)?;
        Ok(true)
    }

    /// `(id, registration JSON)` of every stored appservice, by ID.
    pub fn all(&self) -> DbResult<Vec<(String, String)>> {
        self.db
            .iter(Table::Appservices, None, Direction::Forward)
            .map(|r| {
                let (k, v) = r?;
                let (id,): (String,) = decode_key(Table::Appservices, &k)?;
                Ok((id, utf8(Table::Appservices, v)?))
            })
            .collect()
    }
}
