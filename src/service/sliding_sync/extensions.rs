//! The extensions of a sliding sync response: to-device messages, E2EE
//! (device lists, one-time and fallback keys), account data, receipts and
//! typing, each for the rooms its config names.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ruma::api::client::sync::sync_events::v5::{request, response};
use ruma::serde::Raw;
use ruma::{OneTimeKeyAlgorithm, OwnedRoomId, OwnedUserId, UInt, UserId};
use serde_json::Value as JsonValue;

use crate::service::sync as sync_service;
use crate::service::{ServiceError, ServiceResult, Services};

/// The rooms a response is about, for extensions to pick from.
pub(super) struct Scope<'a> {
    /// Each list's rooms in range.
    pub list_rooms: &'a BTreeMap<String, Vec<OwnedRoomId>>,
    /// Subscribed rooms the user may see.
    pub subscribed: &'a [OwnedRoomId],
    /// Rooms this response sends whole, with their timeline's event IDs:
    /// their extension data is sent whole too.
    pub sent_whole: &'a HashMap<OwnedRoomId, HashSet<String>>,
}

impl Scope<'_> {
    /// The rooms an extension applies to: those of the lists and
    /// subscriptions it names, or all of them when it names neither.
    fn rooms(&self, lists: Option<&[String]>, rooms: Option<&[request::ExtensionRoomConfig]>) -> BTreeSet<OwnedRoomId> {
        let mut out = BTreeSet::new();
        if lists.is_none() && rooms.is_none() {
            out.extend(self.list_rooms.values().flatten().cloned());
            out.extend(self.subscribed.iter().cloned());
            return out;
        }
        for name in lists.unwrap_or_default() {
            if name == "*" {
                out.extend(self.list_rooms.values().flatten().cloned());
            } else if let Some(rooms) = self.list_rooms.get(name) {
                out.extend(rooms.iter().cloned());
            }
        }
        for room in rooms.unwrap_or_default() {
            match room {
                request::ExtensionRoomConfig::Room(room_id) => {
                    out.insert(room_id.clone());
                }
                // `*`, and whatever later forms mean: every subscription.
                _ => out.extend(self.subscribed.iter().cloned()),
            }
        }
        out
    }

    /// Where the client holds a room's extension data from: nothing for a
    /// room sent whole now.
    fn since_for(&self, room_id: &OwnedRoomId, since: Option<u64>) -> Option<u64> {
        since.filter(|_| !self.sent_whole.contains_key(room_id))
    }
}

pub(super) fn compute(
    s: &Services,
    user: &UserId,
    device: &str,
    config: &request::Extensions,
    scope: &Scope,
    since: Option<u64>,
    up_to: u64,
) -> ServiceResult<response::Extensions> {
    let mut out = response::Extensions::default();
    if config.to_device.enabled == Some(true) {
        out.to_device = Some(to_device(s, user, device, &config.to_device, up_to)?);
    }
    if config.e2ee.enabled == Some(true) {
        out.e2ee = e2ee(s, user, device, since, up_to)?;
    }
    if config.account_data.enabled == Some(true) {
        let ext = &config.account_data;
        let rooms = scope.rooms(ext.lists.as_deref(), ext.rooms.as_deref());
        out.account_data = account_data(s, user, &rooms, scope, since, up_to)?;
    }
    if config.receipts.enabled == Some(true) {
        let ext = &config.receipts;
        for room_id in joined(s, user, scope.rooms(ext.lists.as_deref(), ext.rooms.as_deref()))? {
            let from = scope.since_for(&room_id, since).unwrap_or(0);
            let Some(mut event) = s.receipts.receipt_event(&room_id, from, user)?.0 else {
                continue;
            };
            if let Some(timeline) = scope.sent_whole.get(&room_id) {
                // A room sent whole gets the receipts of the events it shows
                // and the user's own, not every member's (thousands in a big room).
                keep_receipts(&mut event, timeline, user);
            }
            if event["content"].as_object().is_some_and(|c| !c.is_empty()) {
                out.receipts.rooms.insert(room_id, raw(&event)?);
            }
        }
    }
    if config.typing.enabled == Some(true) {
        let ext = &config.typing;
        for room_id in joined(s, user, scope.rooms(ext.lists.as_deref(), ext.rooms.as_deref()))? {
            if let Some(event) = s.typing.typing_event(&room_id, scope.since_for(&room_id, since)) {
                out.typing.rooms.insert(room_id, raw(&event)?);
            }
        }
    }
    Ok(out)
}

/// Whether the extensions carry anything a waiting client should get
/// (key counts are always sent, so they do not count).
pub(super) fn has_news(ext: &response::Extensions) -> bool {
    ext.to_device.as_ref().is_some_and(|t| !t.events.is_empty())
        || !ext.e2ee.device_lists.is_empty()
        || !ext.account_data.is_empty()
        || !ext.receipts.is_empty()
        || !ext.typing.is_empty()
}

/// To-device messages after the extension's own `since` token; those up
/// to it are acknowledged and dropped.
fn to_device(
    s: &Services,
    user: &UserId,
    device: &str,
    config: &request::ToDevice,
    up_to: u64,
) -> ServiceResult<response::ToDevice> {
    let since = config.since.as_deref().map(sync_service::parse_token).transpose()?;
    let delivery = s.to_device.deliver(user, device, since, up_to)?;
    let mut out = response::ToDevice::default();
    out.next_batch = sync_service::token(delivery.stop_at.unwrap_or(up_to));
    out.events = delivery.events.into_iter().map(Raw::from_json).collect();
    Ok(out)
}

fn e2ee(s: &Services, user: &UserId, device: &str, since: Option<u64>, up_to: u64) -> ServiceResult<response::E2EE> {
    let mut out = response::E2EE::default();
    // A new connection has nothing to compare with: the client queries
    // the keys it needs.
    if let Some(since) = since {
        let updates = s.e2e_keys.device_list_updates(s, user, since, up_to)?;
        let users = |ids: BTreeSet<String>| -> Vec<OwnedUserId> {
            ids.into_iter()
                .filter_map(|id| OwnedUserId::try_from(id).ok())
                .collect()
        };
        out.device_lists.changed = users(updates.changed);
        out.device_lists.left = users(updates.left);
    }
    out.device_one_time_keys_count = s
        .e2e_keys
        .one_time_key_counts(user, device)?
        .into_iter()
        .map(|(algorithm, count)| {
            (
                OneTimeKeyAlgorithm::from(algorithm),
                UInt::try_from(count).unwrap_or(UInt::MAX),
            )
        })
        .collect();
    out.device_unused_fallback_key_types = Some(
        s.e2e_keys
            .unused_fallback_key_types(user, device)?
            .into_iter()
            .map(OneTimeKeyAlgorithm::from)
            .collect(),
    );
    Ok(out)
}

/// Global account data changed since the connection's last response (all
/// of it on a new connection), and that of the extension's rooms: whole
/// for rooms sent whole now, else what changed.
fn account_data(
    s: &Services,
    user: &UserId,
    rooms: &BTreeSet<OwnedRoomId>,
    scope: &Scope,
    since: Option<u64>,
    up_to: u64,
) -> ServiceResult<response::AccountData> {
    let mut out = response::AccountData::default();
    let whole_rooms_too = since.is_some() && rooms.iter().any(|r| scope.sent_whole.contains_key(r));
    let entries = s
        .account_data
        .changed_since(user, if whole_rooms_too { 0 } else { since.unwrap_or(0) })?;
    for entry in entries.into_iter().filter(|e| e.count <= up_to) {
        let content: JsonValue = serde_json::from_str(&entry.content_json).unwrap_or(JsonValue::Null);
        let event = serde_json::json!({"type": entry.event_type, "content": content});
        let is_new = since.is_none_or(|since| entry.count > since);
        if entry.room_id.is_empty() {
            if is_new {
                out.global.push(raw(&event)?);
            }
            continue;
        }
        let Ok(room_id) = OwnedRoomId::try_from(entry.room_id.as_str()) else {
            continue;
        };
        if rooms.contains(&room_id) && (is_new || scope.sent_whole.contains_key(&room_id)) {
            out.rooms.entry(room_id).or_default().push(raw(&event)?);
        }
    }
    Ok(out)
}

/// Trims an `m.receipt` event to the receipts for `shown` events and those
/// of `user`.
fn keep_receipts(event: &mut JsonValue, shown: &HashSet<String>, user: &UserId) {
    let Some(content) = event.get_mut("content").and_then(JsonValue::as_object_mut) else {
        return;
    };
    content.retain(|event_id, by_type| {
        if shown.contains(event_id) {
            return true;
        }
        if let Some(by_type) = by_type.as_object_mut() {
            by_type.retain(|_, users| {
                if let Some(users) = users.as_object_mut() {
                    users.retain(|u, _| u == user.as_str());
                }
                users.as_object().is_some_and(|u| !u.is_empty())
            });
        }
        by_type.as_object().is_some_and(|t| !t.is_empty())
    });
}

/// The rooms of `rooms` the user is joined to (receipts and typing are
/// for members only).
fn joined(s: &Services, user: &UserId, rooms: BTreeSet<OwnedRoomId>) -> ServiceResult<Vec<OwnedRoomId>> {
    let mut out = Vec::new();
    for room_id in rooms {
        if s.timeline.is_joined(&room_id, user)? {
            out.push(room_id);
        }
    }
    Ok(out)
}

fn raw<T>(value: &JsonValue) -> ServiceResult<Raw<T>> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|e| ServiceError::Internal(format!("extension event: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_room_gets_the_receipts_it_shows_and_the_users_own() {
        let alice: OwnedUserId = "@alice:x".try_into().unwrap();
        let mut event = serde_json::json!({"type": "m.receipt", "content": {
            "$shown": {"m.read": {"@bob:x": {"ts": 1}, "@carol:x": {"ts": 2}}},
            "$old": {"m.read": {"@alice:x": {"ts": 3}, "@dave:x": {"ts": 4}}},
            "$older": {"m.read": {"@erin:x": {"ts": 5}}},
        }});
        let shown: HashSet<String> = ["$shown".to_owned()].into();
        keep_receipts(&mut event, &shown, &alice);
        assert_eq!(
            event["content"],
            serde_json::json!({
                "$shown": {"m.read": {"@bob:x": {"ts": 1}, "@carol:x": {"ts": 2}}},
                "$old": {"m.read": {"@alice:x": {"ts": 3}}},
            })
        );
    }
}
