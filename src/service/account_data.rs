//! Per-user account data, global and per room.

use ruma::{RoomId, UserId};
use serde_json::value::RawValue;

use super::{ServiceError, ServiceResult};
use crate::database::account_data::AccountDataTables;
use crate::database::Db;

/// Bigger account data would bloat every /sync; Synapse's bound is similar.
const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// Account data the server maintains through other endpoints.
const SERVER_CONTROLLED: &[&str] = &["m.push_rules", "m.fully_read"];

pub struct AccountDataService {
    tables: AccountDataTables,
}

impl AccountDataService {
    pub fn new(db: Db) -> Self {
        Self {
            tables: AccountDataTables::new(db),
        }
    }

    pub fn get(&self, user_id: &UserId, room_id: Option<&RoomId>, event_type: &str) -> ServiceResult<Box<RawValue>> {
        let json = self
            .tables
            .get(user_id.as_str(), room_id.map(|r| r.as_str()), event_type)?
            .ok_or_else(|| ServiceError::NotFound("account data not found".to_owned()))?;
        RawValue::from_string(json).map_err(|e| ServiceError::Internal(format!("stored account data: {e}")))
    }

    pub fn set(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        event_type: &str,
        content: &RawValue,
    ) -> ServiceResult<()> {
        // Push rules and read markers have endpoints of their own.
        if SERVER_CONTROLLED.contains(&event_type) {
            return Err(ServiceError::ServerControlled(format!(
                "cannot set {event_type} through this API"
            )));
        }
        if content.get().len() > MAX_CONTENT_BYTES {
            return Err(ServiceError::TooLarge("account data content is too large".to_owned()));
        }
        if !content.get().trim_start().starts_with('{') {
            return Err(ServiceError::BadJson(
                "account data content must be a JSON object".to_owned(),
            ));
        }
        Ok(self
            .tables
            .put(user_id.as_str(), room_id.map(|r| r.as_str()), event_type, content.get())?)
    }
}
