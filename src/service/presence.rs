//! Presence: online, unavailable or offline, with a status message, shown to
//! the users who share a room with its owner. Our users' changes go to the
//! servers that share a room with them (`m.presence` EDUs); other servers'
//! users' arrive the same way and are kept beside ours.
//!
//! Only a change of state or status message gets a new stream position and
//! wakes syncs; a sync that merely shows the user is still there refreshes
//! the last-active time at most once a minute, so long-polls do not turn
//! into a write each.

use std::collections::BTreeSet;
use std::sync::Arc;

use ruma::api::client::filter::Filter;
use ruma::{OwnedUserId, UserId};
use serde_json::{json, Value as JsonValue};

use super::stream::Stream;
use super::users::{AVATAR_URL, DISPLAYNAME};
use super::{now_ms, ServiceError, ServiceResult, Services};
use crate::database::presence::{PresenceRecord, PresenceTables};
use crate::database::{Batch, Db};

pub const ONLINE: &str = "online";
pub const UNAVAILABLE: &str = "unavailable";
pub const OFFLINE: &str = "offline";

/// How stale the stored last-active time may get before a sync refreshes it.
const REFRESH_MS: u64 = 60_000;
/// A user counts as currently active this long after their last activity.
const ACTIVE_MS: u64 = 60_000;
/// Longest status message kept, in bytes.
const MAX_STATUS_BYTES: usize = 1024;

pub struct PresenceService {
    tables: PresenceTables,
    stream: Arc<Stream>,
}

impl PresenceService {
    pub fn new(db: Db, stream: Arc<Stream>) -> Self {
        Self {
            tables: PresenceTables::new(db),
            stream,
        }
    }

    /// `PUT /presence/{user}/status`: sets state and status message.
    pub fn set(&self, s: &Services, user: &UserId, presence: &str, status_msg: Option<String>) -> ServiceResult<()> {
        if ![ONLINE, UNAVAILABLE, OFFLINE].contains(&presence) {
            return Err(ServiceError::InvalidParam(format!("unknown presence state {presence}")));
        }
        if status_msg.as_ref().is_some_and(|m| m.len() > MAX_STATUS_BYTES) {
            return Err(ServiceError::TooLarge(format!(
                "a status message may have at most {MAX_STATUS_BYTES} bytes"
            )));
        }
        let old = self.tables.get(user.as_str())?;
        // An omitted message keeps the old one (clients send bare state
        // changes on focus); an empty one clears it.
        let status_msg = match status_msg {
            Some(m) if m.is_empty() => None,
            Some(m) => Some(m),
            None => old.as_ref().and_then(|o| o.status_msg.clone()),
        };
        let last_active_ms = if presence == OFFLINE {
            old.as_ref().map_or(0, |o| o.last_active_ms)
        } else {
            now_ms()
        };
        self.change(s, user, old, presence, status_msg, last_active_ms)
    }

    /// A sync from `user` with `set_presence`: `online` marks an offline user
    /// online, `unavailable` sets that state, `offline` changes nothing.
    pub fn touch(&self, s: &Services, user: &UserId, set_presence: &str) -> ServiceResult<()> {
        if set_presence == OFFLINE {
            return Ok(());
        }
        let old = self.tables.get(user.as_str())?;
        let now = now_ms();
        let (presence, status_msg) = match &old {
            Some(o) if set_presence == ONLINE && o.presence != OFFLINE => (o.presence.clone(), o.status_msg.clone()),
            Some(o) => (set_presence.to_owned(), o.status_msg.clone()),
            None => (set_presence.to_owned(), None),
        };
        match &old {
            Some(o) if o.presence == presence => {
                if now.saturating_sub(o.last_active_ms) >= REFRESH_MS {
                    // Same state: refresh the time, keep the position.
                    let record = PresenceRecord {
                        last_active_ms: now,
                        ..o.clone()
                    };
                    self.tables.put(user.as_str(), old.as_ref(), &record)?;
                }
                Ok(())
            }
            _ => self.change(s, user, old, &presence, status_msg, now),
        }
    }

    fn change(
        &self,
        s: &Services,
        user: &UserId,
        old: Option<PresenceRecord>,
        presence: &str,
        status_msg: Option<String>,
        last_active_ms: u64,
    ) -> ServiceResult<()> {
        let mut record = PresenceRecord {
            presence: presence.to_owned(),
            status_msg,
            last_active_ms,
            count: 0,
        };
        // The appservices following the user learn of it in the same write.
        let mut batch = Batch::new();
        let to_appservices = s
            .appservices
            .stage_presence(s, &mut batch, user, &content(Some(&record), now_ms()))?;
        let ticket = self.stream.begin()?;
        record.count = ticket.0;
        self.tables.put_in(&mut batch, user.as_str(), old.as_ref(), &record);
        let written = self.tables.write(batch);
        if written.is_ok() {
            s.outbox.committed(&to_appservices);
        }
        let audience = match &written {
            Ok(()) => sharing_users(s, user)?,
            Err(_) => BTreeSet::new(),
        };
        self.stream.finish(ticket, audience.iter().map(|u| u.as_ref()));
        written?;
        if user.server_name() == s.config.server_name {
            let now = now_ms();
            let content = content(Some(&record), now);
            let mut update = json!({
                "user_id": user,
                "presence": record.presence,
                "last_active_ago": now.saturating_sub(record.last_active_ms),
                "currently_active": content["currently_active"].as_bool().unwrap_or(false),
            });
            if let Some(msg) = &record.status_msg {
                update["status_msg"] = msg.clone().into();
            }
            s.federation
                .send_user_edu(s, user, "m.presence", json!({"push": [update]}))?;
        }
        Ok(())
    }

    /// A presence update of another server's user, from an `m.presence`
    /// EDU of that server (which the caller checked).
    pub fn receive_remote(
        &self,
        s: &Services,
        user: &UserId,
        presence: &str,
        status_msg: Option<String>,
        last_active_ago: u64,
    ) -> ServiceResult<()> {
        if ![ONLINE, UNAVAILABLE, OFFLINE].contains(&presence) {
            return Err(ServiceError::InvalidParam(format!("unknown presence state {presence}")));
        }
        let status_msg = status_msg.filter(|m| !m.is_empty() && m.len() <= MAX_STATUS_BYTES);
        let old = self.tables.get(user.as_str())?;
        let last_active_ms = now_ms().saturating_sub(last_active_ago);
        self.change(s, user, old, presence, status_msg, last_active_ms)
    }

    /// `GET /presence/{user}/status`, for `viewer`.
    pub fn get(&self, s: &Services, viewer: &UserId, user: &UserId) -> ServiceResult<JsonValue> {
        if viewer != user && !sharing_users(s, viewer)?.contains(user) {
            return Err(ServiceError::Forbidden(
                "you do not share a room with this user".to_owned(),
            ));
        }
        if user.server_name() == s.config.server_name && !s.users.exists(user)? {
            return Err(ServiceError::NotFound("no such user".to_owned()));
        }
        let record = self.tables.get(user.as_str())?;
        Ok(content(record.as_ref(), now_ms()))
    }

    /// `m.presence` events for `user`'s /sync: the changes after `since` (all
    /// known presence on an initial sync) of themselves and everybody they
    /// share a room with.
    pub fn sync_events(
        &self,
        s: &Services,
        user: &UserId,
        since: Option<u64>,
        up_to: u64,
        filter: &Filter,
    ) -> ServiceResult<Vec<JsonValue>> {
        let changed: Vec<(u64, String)> = self
            .tables
            .changed_since(since.unwrap_or(0))?
            .into_iter()
            .filter(|(count, _)| *count <= up_to)
            .collect();
        if changed.is_empty() || !filter_allows_type(filter) {
            return Ok(Vec::new());
        }
        let audience = sharing_users(s, user)?;
        let now = now_ms();
        let mut events = Vec::new();
        for (_, other) in changed {
            let Ok(other) = OwnedUserId::try_from(other) else {
                continue;
            };
            if (other != user && !audience.contains(&other)) || !filter_allows_sender(filter, &other) {
                continue;
            }
            let record = self.tables.get(other.as_str())?;
            let mut content = content(record.as_ref(), now);
            // Profiles are kept for our users only.
            if other.server_name() == s.config.server_name {
                for (field, key) in [(DISPLAYNAME, "displayname"), (AVATAR_URL, "avatar_url")] {
                    if let Some(v) = s.users.profile_field(&other, field)? {
                        content[key] = v.into();
                    }
                }
            }
            events.push(json!({"type": "m.presence", "sender": other, "content": content}));
        }
        if let Some(limit) = filter.limit {
            let limit = usize::try_from(u64::from(limit)).unwrap_or(usize::MAX);
            let skip = events.len().saturating_sub(limit);
            events.drain(..skip);
        }
        Ok(events)
    }
}

/// The presence content clients see.
fn content(record: Option<&PresenceRecord>, now: u64) -> JsonValue {
    let Some(record) = record else {
        return json!({"presence": OFFLINE});
    };
    let mut content = json!({"presence": record.presence});
    if record.last_active_ms > 0 {
        let ago = now.saturating_sub(record.last_active_ms);
        content["last_active_ago"] = ago.into();
        content["currently_active"] = (record.presence == ONLINE && ago < ACTIVE_MS).into();
    }
    if let Some(msg) = &record.status_msg {
        content["status_msg"] = msg.clone().into();
    }
    content
}

/// `user` and everybody joined to a room `user` is joined to.
fn sharing_users(s: &Services, user: &UserId) -> ServiceResult<BTreeSet<OwnedUserId>> {
    let mut out = BTreeSet::new();
    out.insert(user.to_owned());
    for (room_id, record) in s.timeline.user_rooms(user)? {
        if record.membership != "join" {
            continue;
        }
        for (member, membership) in s.timeline.members(&room_id)?.iter() {
            if membership == "join" {
                if let Ok(member) = OwnedUserId::try_from(member.as_str()) {
                    out.insert(member);
                }
            }
        }
    }
    Ok(out)
}

fn filter_allows_type(filter: &Filter) -> bool {
    let matches = |list: &[String]| list.iter().any(|p| super::sync::type_matches(p, "m.presence"));
    !matches(&filter.not_types) && filter.types.as_deref().is_none_or(matches)
}

fn filter_allows_sender(filter: &Filter, sender: &UserId) -> bool {
    !filter.not_senders.iter().any(|u| u == sender)
        && filter
            .senders
            .as_ref()
            .is_none_or(|list| list.iter().any(|u| u == sender))
}
