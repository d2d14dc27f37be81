//! Per-user account data, global and per room.

use std::sync::Arc;

use ruma::{RoomId, UserId};
use serde_json::value::RawValue;

use super::stream::Stream;
use super::{ServiceError, ServiceResult};
use crate::database::account_data::{AccountDataEntry, AccountDataTables};
use crate::database::Db;

/// Bigger account data would bloat every /sync; Synapse's bound is similar.
const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// Account data the server maintains through other endpoints.
const SERVER_CONTROLLED: &[&str] = &["m.push_rules", "m.fully_read"];

/// The account data event listing the users one ignores.
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";

pub struct AccountDataService {
    tables: AccountDataTables,
    stream: Arc<Stream>,
}

impl AccountDataService {
    pub fn new(db: Db, stream: Arc<Stream>) -> Self {
        Self {
            tables: AccountDataTables::new(db),
            stream,
        }
    }

    pub fn get(&self, user_id: &UserId, room_id: Option<&RoomId>, event_type: &str) -> ServiceResult<Box<RawValue>> {
        let json = self
            .tables
            .get(user_id.as_str(), room_id.map(|r| r.as_str()), event_type)?
            .ok_or_else(|| ServiceError::NotFound("account data not found".to_owned()))?;
        RawValue::from_string(json).map_err(|e| ServiceError::Internal(format!("stored account data: {e}")))
    }

    /// The users `user_id` ignores (`m.ignored_user_list`): their events
    /// and invites are kept from this user.
    pub fn ignored_users(&self, user_id: &UserId) -> ServiceResult<std::collections::HashSet<String>> {
        let Some(json) = self.tables.get(user_id.as_str(), None, IGNORED_USER_LIST)? else {
            return Ok(Default::default());
        };
        let content: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        Ok(content["ignored_users"]
            .as_object()
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default())
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
        self.put(user_id, room_id, event_type, content.get())
    }

    /// Stores account data, including the kinds the server maintains itself.
    pub(crate) fn put(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        event_type: &str,
        content_json: &str,
    ) -> ServiceResult<()> {
        let ticket = self.stream.begin()?;
        let written = self.tables.put(
            user_id.as_str(),
            room_id.map(|r| r.as_str()),
            event_type,
            ticket.0,
            content_json,
        );
        match written {
            Ok(()) => {
                self.stream.finish(ticket, [user_id]);
                Ok(())
            }
            Err(e) => {
                self.stream.finish(ticket, []);
                Err(e.into())
            }
        }
    }

    /// Every entry of a user that changed after stream position `since`.
    pub fn changed_since(&self, user_id: &UserId, since: u64) -> ServiceResult<Vec<AccountDataEntry>> {
        let mut all = self.tables.all(user_id.as_str())?;
        all.retain(|e| e.count > since);
        Ok(all)
    }
}
