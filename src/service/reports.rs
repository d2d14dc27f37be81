//! Reports of events, rooms and users to the server's operator. Each is
//! stored and logged at `warn`, where an operator watching the logs sees it.

use ruma::{EventId, RoomId, UserId};

use super::{now_ms, ServiceError, ServiceResult, Services};
use crate::database::reports::{ReportRecord, ReportTables};
use crate::database::Db;

/// Longest reason kept, in bytes.
const MAX_REASON_BYTES: usize = 4096;

pub struct ReportsService {
    tables: ReportTables,
}

/// What a report is about.
pub enum Target<'a> {
    Event(&'a RoomId, &'a EventId),
    Room(&'a RoomId),
    User(&'a UserId),
}

impl ReportsService {
    pub fn new(db: Db) -> Self {
        Self {
            tables: ReportTables::new(db),
        }
    }

    pub fn report(&self, s: &Services, reporter: &UserId, target: Target<'_>, reason: &str) -> ServiceResult<()> {
        if reason.len() > MAX_REASON_BYTES {
            return Err(ServiceError::InvalidParam(format!(
                "a reason may have at most {MAX_REASON_BYTES} bytes"
            )));
        }
        let mut record = ReportRecord {
            reporter: reporter.to_string(),
            ts: now_ms(),
            room_id: String::new(),
            event_id: String::new(),
            user_id: String::new(),
            reason: reason.to_owned(),
        };
        match target {
            Target::Event(room_id, event_id) => {
                // Only a member may report, and only what they can see.
                let not_found =
                    || ServiceError::NotFound("the event was not found, or you are not in its room".to_owned());
                if !s.timeline.is_joined(room_id, reporter)? {
                    return Err(not_found());
                }
                s.timeline
                    .visible_event(s, reporter, room_id, event_id, "")
                    .map_err(|e| match e {
                        ServiceError::NotFound(_) => not_found(),
                        other => other,
                    })?;
                record.room_id = room_id.to_string();
                record.event_id = event_id.to_string();
            }
            Target::Room(room_id) => {
                s.timeline.room_or_404(room_id)?;
                record.room_id = room_id.to_string();
            }
            Target::User(user) => {
                if user.server_name() == s.config.server_name && !s.users.exists(user)? {
                    return Err(ServiceError::NotFound("no such user".to_owned()));
                }
                record.user_id = user.to_string();
            }
        }
        self.tables.add(&record)?;
        tracing::warn!(
            reporter = %record.reporter,
            room = %record.room_id,
            event = %record.event_id,
            user = %record.user_id,
            reason = %record.reason,
            "content reported"
        );
        Ok(())
    }

    /// Every report, oldest first, for the operator.
    pub fn list(&self) -> ServiceResult<Vec<ReportRecord>> {
        Ok(self.tables.all()?)
    }
}
