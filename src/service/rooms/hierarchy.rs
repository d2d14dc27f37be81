//! Space hierarchies (`GET /hierarchy`): a depth-first walk over the
//! `m.space.child` events of local rooms, showing the rooms a user may see.

use std::collections::BTreeSet;

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{json, Value as JsonValue};

use super::{directory_entry, in_an_allowed_room, RoomsService};
use crate::service::timeline::StoredEvent;
use crate::service::{ServiceError, ServiceResult, Services};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;
/// Rooms one walk visits at most, however deep or wide the tree.
const MAX_ROOMS: usize = 1000;

/// A `/hierarchy` request.
#[derive(Debug, Default)]
pub struct HierarchyQuery {
    pub suggested_only: bool,
    pub max_depth: Option<usize>,
    pub limit: Option<usize>,
    pub from: Option<String>,
}

/// A page of the walk.
#[derive(Debug)]
pub struct HierarchyPage {
    pub rooms: Vec<JsonValue>,
    pub next_batch: Option<String>,
}

/// A child of a space, as its `m.space.child` event names it.
struct Child {
    room_id: OwnedRoomId,
    order: Option<String>,
    ts: u64,
}

/// The valid children among a room's state, in the spec's order: a valid
/// `order` first (by order), then by timestamp, then by room ID.
fn children(state: &[StoredEvent], suggested_only: bool) -> Vec<Child> {
    let mut out: Vec<Child> = state
        .iter()
        .filter(|e| e.event_type() == "m.space.child")
        .filter_map(|e| {
            let content = JsonValue::from(ruma::CanonicalJsonValue::Object(e.content()?.clone()));
            // A child without servers to reach it through is removed.
            if content["via"].as_array().is_none_or(|v| v.is_empty()) {
                return None;
            }
            if suggested_only && content["suggested"] != true {
                return None;
            }
            let room_id = OwnedRoomId::try_from(e.state_key()?).ok()?;
            let order = content["order"]
                .as_str()
                .filter(|o| o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7E).contains(&b)))
                .map(str::to_owned);
            Some(Child {
                room_id,
                order,
                ts: e.origin_server_ts(),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        let by_order = match (&a.order, &b.order) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_order.then(a.ts.cmp(&b.ts)).then(a.room_id.cmp(&b.room_id))
    });
    out
}

/// The valid `m.space.child` events as the hierarchy shows them (stripped,
/// with their timestamp).
fn children_state(state: &[StoredEvent]) -> Vec<JsonValue> {
    state
        .iter()
        .filter(|e| e.event_type() == "m.space.child")
        .filter_map(|e| {
            let content = JsonValue::from(ruma::CanonicalJsonValue::Object(e.content()?.clone()));
            content["via"].as_array().filter(|v| !v.is_empty())?;
            Some(json!({
                "type": "m.space.child",
                "state_key": e.state_key(),
                "sender": e.sender(),
                "origin_server_ts": e.origin_server_ts(),
                "content": content,
            }))
        })
        .collect()
}

impl RoomsService {
    pub fn hierarchy(
        &self,
        s: &Services,
        user: &UserId,
        root: &RoomId,
        query: &HierarchyQuery,
    ) -> ServiceResult<HierarchyPage> {
        let depth_part = query.max_depth.map_or_else(|| "-".to_owned(), |d| d.to_string());
        let shape = format!("{depth_part}.{}", u8::from(query.suggested_only));
        let start = match &query.from {
            None => 0,
            Some(token) => {
                let (offset, token_shape) = token
                    .split_once('.')
                    .ok_or_else(|| ServiceError::InvalidParam("unknown from token".to_owned()))?;
                if token_shape != shape {
                    return Err(ServiceError::InvalidParam(
                        "suggested_only and max_depth cannot change on paginated requests".to_owned(),
                    ));
                }
                offset
                    .parse::<usize>()
                    .map_err(|_| ServiceError::InvalidParam("unknown from token".to_owned()))?
            }
        };
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        if !self.may_preview(s, Some(user), root)? {
            return Err(ServiceError::Forbidden(
                "you are not allowed to view this room".to_owned(),
            ));
        }

        // Depth-first, children in order; a room seen before is not walked
        // again, which also breaks loops.
        let mut rooms = Vec::new();
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(OwnedRoomId, usize)> = vec![(root.to_owned(), 0)];
        while let Some((room_id, depth)) = stack.pop() {
            if rooms.len() >= (start + limit + 1).min(MAX_ROOMS) {
                break;
            }
            if !seen.insert(room_id.clone()) {
                continue;
            }
            // Rooms only other servers know are skipped until federation.
            let Some(record) = s.timeline.room(&room_id)? else {
                continue;
            };
            if room_id != root && !self.may_preview(s, Some(user), &room_id)? {
                continue;
            }
            let state = s.timeline.state_events(s, record.state_snapshot)?;
            let mut entry = summary_entry(&room_id, &record.version, &state);
            entry["children_state"] = children_state(&state).into();
            rooms.push(entry);
            if query.max_depth.is_none_or(|max| depth < max) {
                for child in children(&state, query.suggested_only).into_iter().rev() {
                    stack.push((child.room_id, depth + 1));
                }
            }
        }
        let more = rooms.len() > start + limit;
        let page: Vec<JsonValue> = rooms.into_iter().skip(start).take(limit).collect();
        Ok(HierarchyPage {
            next_batch: more.then(|| format!("{}.{shape}", start + limit)),
            rooms: page,
        })
    }

    /// `GET /room_summary/{roomIdOrAlias}`: a room's summary and, for a
    /// signed-in `viewer`, their membership (`leave` when they have none).
    /// A room the viewer may not preview is as unknown as one that is not.
    pub fn summary(
        &self,
        s: &Services,
        viewer: Option<&UserId>,
        room: &str,
    ) -> ServiceResult<(JsonValue, Option<String>)> {
        let not_found = || ServiceError::NotFound("no room of that ID or alias is visible to you".to_owned());
        let room_id = match self.resolve_room(s, room) {
            Err(ServiceError::NotFound(_)) => return Err(not_found()),
            other => other?,
        };
        let Some(record) = s.timeline.room(&room_id)? else {
            return Err(not_found());
        };
        if !self.may_preview(s, viewer, &room_id)? {
            return Err(not_found());
        }
        let state = s.timeline.state_events(s, record.state_snapshot)?;
        let membership = match viewer {
            Some(user) => Some(
                s.timeline
                    .membership(&room_id, user)?
                    .unwrap_or_else(|| "leave".to_owned()),
            ),
            None => None,
        };
        Ok((summary_entry(&room_id, &record.version, &state), membership))
    }

    /// Whether `user` (or, with `None`, anyone signed in or not) may see a
    /// room's summary: as a member or invitee, or because anyone may find it
    /// (public, knockable, world-readable), or because they are in a room a
    /// restricted join rule allows.
    fn may_preview(&self, s: &Services, user: Option<&UserId>, room_id: &RoomId) -> ServiceResult<bool> {
        let Some(record) = s.timeline.room(room_id)? else {
            return Ok(false);
        };
        let membership = match user {
            Some(user) => s.timeline.membership(room_id, user)?,
            None => None,
        };
        match membership.as_deref() {
            Some("join" | "invite") => return Ok(true),
            Some("ban") => return Ok(false),
            _ => {}
        }
        let snapshot = record.state_snapshot;
        let world_readable = s
            .timeline
            .state_event(s, snapshot, "m.room.history_visibility", "")?
            .is_some_and(|e| e.content_str("history_visibility") == Some("world_readable"));
        if world_readable {
            return Ok(true);
        }
        let Some(rules) = s.timeline.state_event(s, snapshot, "m.room.join_rules", "")? else {
            return Ok(false);
        };
        match rules.content_str("join_rule") {
            Some("public" | "knock" | "knock_restricted") => Ok(true),
            Some("restricted") => match user {
                Some(user) => in_an_allowed_room(s, &rules, user),
                None => Ok(false),
            },
            _ => Ok(false),
        }
    }
}

/// A room's summary as the hierarchy and `/room_summary` give it: its
/// directory entry, version and encryption.
fn summary_entry(room_id: &RoomId, version: &str, state: &[StoredEvent]) -> JsonValue {
    let mut entry = directory_entry(room_id, state);
    entry["room_version"] = version.into();
    if let Some(encryption) = state
        .iter()
        .find(|e| e.event_type() == "m.room.encryption")
        .and_then(|e| e.content_str("algorithm"))
    {
        entry["encryption"] = encryption.into();
    }
    entry
}
