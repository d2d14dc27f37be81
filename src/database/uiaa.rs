//! Typed access to [`Table::UiaaSessions`] (owned by `service::uiaa`).

use serde::{Deserialize, Serialize};

use super::{from_record, keys::encode, to_record, Db, DbResult, Table};

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
}
