//! Server-wide singletons in [`Table::Global`]: the schema version.

use super::{keys, Db, DbError, DbResult, Table};

/// The schema this build writes. Bump it with a migration when a table's
/// encoding changes.
pub const SCHEMA_VERSION: u64 = 1;
const SCHEMA_KEY: &str = "conduit.schema_version";

pub struct MetaTables {
    db: Db,
}

impl MetaTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Records the schema version in a new database; refuses one written by a
    /// newer build.
    pub fn check_schema(&self) -> DbResult<()> {
        let key = keys::encode(SCHEMA_KEY);
        match self.db.get(Table::Global, &key)? {
            None => self.db.put(Table::Global, key, SCHEMA_VERSION.to_be_bytes().to_vec()),
            Some(bytes) => {
                let arr: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| DbError::corrupt(Table::Global, "schema version"))?;
                let found = u64::from_be_bytes(arr);
                if found > SCHEMA_VERSION {
                    Err(DbError::TooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Whether storage answers a read (for the health check).
    pub fn probe(&self) -> DbResult<()> {
        self.db.get(Table::Global, &keys::encode(SCHEMA_KEY)).map(|_| ())
    }

    #[cfg(test)]
    pub fn set_schema_for_test(&self, version: u64) {
        self.db
            .put(Table::Global, keys::encode(SCHEMA_KEY), version.to_be_bytes().to_vec())
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;

    #[test]
    fn newer_schema_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_test_db(dir.path());
        let meta = MetaTables::new(db);
        meta.check_schema().unwrap();
        meta.check_schema().unwrap();
        meta.set_schema_for_test(SCHEMA_VERSION + 1);
        assert!(matches!(meta.check_schema(), Err(DbError::TooNew { .. })));
    }
}
