//! Typed access to [`Table::UiaaSessions`] (owned by `service::uiaa`).

use serde::{Deserialize, Serialize};

use super::{from_record, keys::encode, to_record, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UiaaSessionRecord {
    /// The account the session acts for; `None` during registration.
    pub user_id: Option<String>,
    /// What the session authorises (e.g. `delete_devices`); a session is not
    /// reusable for another kind of request.
    pub purpose: String,
    /// Stages completed so far (`m.login.dummy`, ...).
    pub completed: Vec<String>,
    pub created_ms: u64,
}

pub struct UiaaTables {
    db: Db,
}

impl UiaaTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn get(&self, session: &str) -> DbResult<Option<UiaaSessionRecord>> {
        self.db
            .get(Table::UiaaSessions, &encode(session))?
            .map(|b| from_record(Table::UiaaSessions, &b))
            .transpose()
    }

    pub fn put(&self, session: &str, record: &UiaaSessionRecord) -> DbResult<()> {
        self.db.put(Table::UiaaSessions, encode(session), to_record(record))
    }

    pub fn delete(&self, session: &str) -> DbResult<()> {
        self.db.delete(Table::UiaaSessions, encode(session))
    }

    /// Deletes every session created before `cutoff_ms`; returns how many.
    pub fn delete_created_before(&self, cutoff_ms: u64) -> DbResult<usize> {
        let mut batch = Batch::new();
        let mut count = 0;
        for entry in self.db.iter(Table::UiaaSessions, None, Direction::Forward) {
            let (key, value) = entry?;
            let record: UiaaSessionRecord = from_record(Table::UiaaSessions, &value)?;
            if record.created_ms < cutoff_ms {
                batch.delete(Table::UiaaSessions, key);
                count += 1;
            }
        }
        self.db.write(batch)?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;

    #[test]
    fn only_sessions_older_than_the_cutoff_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let tables = UiaaTables::new(open_test_db(dir.path()));
        let record = |created_ms| UiaaSessionRecord {
            user_id: None,
            purpose: "register".to_owned(),
            completed: Vec::new(),
            created_ms,
        };
        tables.put("old", &record(1_000)).unwrap();
        tables.put("new", &record(5_000)).unwrap();
        assert_eq!(tables.delete_created_before(2_000).unwrap(), 1);
        assert!(tables.get("old").unwrap().is_none());
        assert_eq!(tables.get("new").unwrap(), Some(record(5_000)));
    }
}
