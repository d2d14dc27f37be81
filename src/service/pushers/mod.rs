//! Pushers: where a user's devices want their notifications pushed. Each
//! belongs to the device whose access token set it and goes with it. Only
//! `http` pushers are kept (this server sends no mail); `gateway.rs` queues
//! their notifications and delivers them to the push gateways.

pub mod gateway;

use std::collections::HashSet;
use std::sync::Mutex;

use ruma::api::client::push::set_pusher::v3::PusherAction;
use ruma::api::client::push::{Pusher, PusherKind};
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::{now_ms, ServiceError, ServiceResult};
use crate::database::pushers::{PusherRecord, PusherTables};
use crate::database::{Batch, Db};

/// The path every push gateway URL ends in (the push gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// The spec's limits on `app_id` (characters) and `pushkey` (bytes).
const MAX_APP_ID_CHARS: usize = 64;
const MAX_PUSHKEY_BYTES: usize = 512;

/// Which pusher: a user's `(app_id, pushkey)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PusherId {
    pub user_id: OwnedUserId,
    pub app_id: String,
    pub pushkey: String,
}

/// A stored pusher.
pub struct StoredPusher {
    pub pusher: Pusher,
    /// When it was last set, in ms since the Unix epoch.
    pub set_ms: u64,
}

pub struct PushersService {
    tables: PusherTables,
    /// Users who may have a pusher, so that `notify` looks up pushers for
    /// these only. Added to when a pusher is set and never shrunk until a
    /// restart: a user in it without pushers costs one lookup, no more.
    users: Mutex<HashSet<OwnedUserId>>,
}

impl PushersService {
    pub fn open(db: Db) -> ServiceResult<Self> {
        let tables = PusherTables::new(db);
        let users = tables
            .users()?
            .into_iter()
            .filter_map(|u| OwnedUserId::try_from(u).ok())
            .collect();
        Ok(Self {
            tables,
            users: Mutex::new(users),
        })
    }

    /// Sets, replaces or (`kind: null`) deletes one of the user's pushers;
    /// a set pusher belongs to `device_id`.
    pub fn set(&self, user_id: &UserId, device_id: Option<&str>, action: PusherAction) -> ServiceResult<()> {
        let mut batch = Batch::new();
        match action {
            PusherAction::Delete(ids) => {
                self.tables
                    .delete(&mut batch, user_id.as_str(), &ids.app_id, &ids.pushkey);
            }
            PusherAction::Post(post) => {
                let pusher = post.pusher;
                let (app_id, pushkey) = (&pusher.ids.app_id, &pusher.ids.pushkey);
                check_ids(app_id, pushkey)?;
                check_kind(&pusher.kind)?;
                if !post.append {
                    // The pushkey now reaches this user alone.
                    for other in self.tables.users_of(app_id, pushkey)? {
                        if other != user_id.as_str() {
                            self.tables.delete(&mut batch, &other, app_id, pushkey);
                        }
                    }
                }
                let record = PusherRecord {
                    device_id: device_id.map(str::to_owned),
                    set_ms: now_ms(),
                    json: serde_json::to_string(&pusher)
                        .map_err(|e| ServiceError::Internal(format!("pusher as JSON: {e}")))?,
                };
                self.tables.put(&mut batch, user_id.as_str(), app_id, pushkey, &record);
                self.lock_users().insert(user_id.to_owned());
            }
            _ => return Err(ServiceError::InvalidParam("unknown pusher action".to_owned())),
        }
        Ok(self.tables.write(batch)?)
    }

    /// The user's pushers.
    pub fn list(&self, user_id: &UserId) -> ServiceResult<Vec<Pusher>> {
        self.tables
            .of_user(user_id.as_str())?
            .into_iter()
            .map(|(_, _, record)| parse(&record))
            .collect()
    }

    /// The IDs of the user's pushers, if they may have any.
    pub fn ids_of(&self, user_id: &UserId) -> ServiceResult<Vec<PusherId>> {
        if !self.lock_users().contains(user_id) {
            return Ok(Vec::new());
        }
        Ok(self
            .tables
            .of_user(user_id.as_str())?
            .into_iter()
            .map(|(app_id, pushkey, _)| PusherId {
                user_id: user_id.to_owned(),
                app_id,
                pushkey,
            })
            .collect())
    }

    pub fn get(&self, id: &PusherId) -> ServiceResult<Option<StoredPusher>> {
        let Some(record) = self.tables.get(id.user_id.as_str(), &id.app_id, &id.pushkey)? else {
            return Ok(None);
        };
        Ok(Some(StoredPusher {
            pusher: parse(&record)?,
            set_ms: record.set_ms,
        }))
    }

    /// Removes a pusher (its push gateway rejected its pushkey).
    pub fn remove(&self, id: &PusherId) -> ServiceResult<()> {
        let mut batch = Batch::new();
        self.tables
            .delete(&mut batch, id.user_id.as_str(), &id.app_id, &id.pushkey);
        Ok(self.tables.write(batch)?)
    }

    /// Adds to `batch` the removal of the pushers the device set (it is
    /// being deleted, or logged out).
    pub fn delete_device_in(&self, batch: &mut Batch, user_id: &UserId, device_id: &str) -> ServiceResult<()> {
        for (app_id, pushkey, record) in self.tables.of_user(user_id.as_str())? {
            if record.device_id.as_deref() == Some(device_id) {
                self.tables.delete(batch, user_id.as_str(), &app_id, &pushkey);
            }
        }
        Ok(())
    }

    fn lock_users(&self) -> std::sync::MutexGuard<'_, HashSet<OwnedUserId>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse(record: &PusherRecord) -> ServiceResult<Pusher> {
    serde_json::from_str(&record.json).map_err(|e| ServiceError::Internal(format!("stored pusher: {e}")))
}

fn check_ids(app_id: &str, pushkey: &str) -> ServiceResult<()> {
    if app_id.is_empty() || app_id.chars().count() > MAX_APP_ID_CHARS {
        return Err(ServiceError::InvalidParam(format!(
            "app_id must be 1 to {MAX_APP_ID_CHARS} characters"
        )));
    }
    if pushkey.is_empty() || pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(ServiceError::InvalidParam(format!(
            "pushkey must be 1 to {MAX_PUSHKEY_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Only `http` pushers, whose URL is a push gateway's.
fn check_kind(kind: &PusherKind) -> ServiceResult<()> {
    let PusherKind::Http(data) = kind else {
        return Err(ServiceError::InvalidParam(
            "only http pushers are supported: this server sends no email".to_owned(),
        ));
    };
    let url = reqwest::Url::parse(&data.url)
        .map_err(|e| ServiceError::InvalidParam(format!("data.url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || !url.path().ends_with(NOTIFY_PATH) {
        return Err(ServiceError::InvalidParam(format!(
            "data.url must be an HTTP(S) URL ending in {NOTIFY_PATH}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str) -> PusherKind {
        PusherKind::Http(ruma::push::HttpPusherData::new(url.to_owned()))
    }

    #[test]
    fn only_push_gateway_urls_are_accepted() {
        assert!(check_kind(&http("https://push.example.org/_matrix/push/v1/notify")).is_ok());
        assert!(check_kind(&http("http://127.0.0.1:8080/_matrix/push/v1/notify")).is_ok());
        for bad in [
            "https://push.example.org/",
            "ftp://push.example.org/_matrix/push/v1/notify",
            "not a url",
        ] {
            assert!(
                matches!(check_kind(&http(bad)), Err(ServiceError::InvalidParam(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_are_bounded() {
        assert!(check_ids("a", "k").is_ok());
        assert!(check_ids(&"a".repeat(65), "k").is_err());
        assert!(check_ids("a", &"k".repeat(513)).is_err());
        assert!(check_ids("", "k").is_err());
    }
}
