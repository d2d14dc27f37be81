//! Typed access to [`Table::Reports`] (owned by `service::reports`).

use serde::{Deserialize, Serialize};

use super::{from_record, keys::encode, to_record, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportRecord {
    pub reporter: String,
    pub ts: u64,
    /// What is reported: a room, an event in it, or a user. Unused fields
    /// are empty.
    pub room_id: String,
    pub event_id: String,
    pub user_id: String,
    pub reason: String,
}

pub struct ReportTables {
    db: Db,
}

impl ReportTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Stores a report under the next stream position.
    pub fn add(&self, record: &ReportRecord) -> DbResult<()> {
        let report_id = self.db.next_count()?;
        self.db.put(Table::Reports, encode(&(report_id,)), to_record(record))
    }

    /// Every report, oldest first.
    pub fn all(&self) -> DbResult<Vec<ReportRecord>> {
        self.db
            .iter(Table::Reports, None, Direction::Forward)
            .map(|r| from_record(Table::Reports, &r?.1))
            .collect()
    }
}
