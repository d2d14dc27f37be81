//! Space hierarchies: a depth-first walk over the `m.space.child` events of
//! rooms, showing the rooms a user may see (`GET /hierarchy`), and a
//! space's direct children as another server may see them
//! (`/_matrix/federation/v1/hierarchy`). Rooms this server is not in come
//! from what other servers said of them ([`RemoteRooms`]), which the
//! federation service asks for between walks.

use std::collections::{BTreeSet, HashMap, HashSet};

use ruma::{OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId};
use serde_json::{json, Value as JsonValue};

use super::{allowed_rooms, directory_entry, in_an_allowed_room, RoomsService};
use crate::service::timeline::StoredEvent;
use crate::service::{ServiceError, ServiceResult, Services};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;
/// Rooms one walk visits at most, however deep or wide the tree.
const MAX_ROOMS: usize = 1000;

/// A `/hierarchy` request.
#[derive(Debug, Default, Clone)]
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

/// A walk: its page, and the rooms it reached that neither this server
/// nor [`RemoteRooms`] knows, each with the servers its parent names to
/// reach it through.
#[derive(Debug)]
pub struct HierarchyWalk {
    pub page: HierarchyPage,
    pub unknown: Vec<(OwnedRoomId, Vec<OwnedServerName>)>,
}

/// A space and its children as another server may see them.
#[derive(Debug)]
pub struct ServerHierarchy {
    /// The space's summary with its `children_state`.
    pub room: JsonValue,
    pub children: Vec<JsonValue>,
    pub inaccessible_children: Vec<OwnedRoomId>,
}

/// Who asks to see a room: a user (signed in or not) or another server.
#[derive(Debug, Clone, Copy)]
pub enum Viewer<'a> {
    User(Option<&'a UserId>),
    Server(&'a ServerName),
}

/// Rooms this server is not in, as other servers described them, for one
/// client request.
#[derive(Debug, Default)]
pub struct RemoteRooms {
    rooms: HashMap<OwnedRoomId, RemoteRoom>,
    /// Rooms asked about, answered or not, and those a server said nobody
    /// may see: not asked about again.
    asked: HashSet<OwnedRoomId>,
}

#[derive(Debug)]
struct RemoteRoom {
    /// The summary without `children_state`.
    summary: JsonValue,
    /// `None` for a room known only as another's child: a space's children
    /// are then still to be asked for.
    children_state: Option<Vec<JsonValue>>,
}

impl RemoteRooms {
    pub fn mark_asked(&mut self, room_id: &RoomId) {
        self.asked.insert(room_id.to_owned());
    }

    /// Takes a server's answer for a space: its summary (with
    /// `children_state`), its children's summaries and the children it
    /// says nobody may see.
    pub fn learn(&mut self, room: JsonValue, children: Vec<JsonValue>, inaccessible: Vec<OwnedRoomId>) {
        let mut learn_one = |mut summary: JsonValue, with_children: bool| {
            let Some(room_id) = summary["room_id"]
                .as_str()
                .and_then(|id| OwnedRoomId::try_from(id).ok())
            else {
                return;
            };
            // ruma leaves out the default join rule.
            if summary.get("join_rule").is_none() {
                summary["join_rule"] = "public".into();
            }
            let children_state = summary
                .as_object_mut()
                .and_then(|o| o.remove("children_state"))
                .and_then(|c| c.as_array().cloned());
            let children_state = if with_children {
                Some(children_state.unwrap_or_default())
            } else {
                children_state.filter(|c| !c.is_empty())
            };
            match self.rooms.get_mut(&room_id) {
                Some(known) if known.children_state.is_some() => {}
                Some(known) => known.children_state = children_state,
                None => {
                    self.rooms.insert(
                        room_id,
                        RemoteRoom {
                            summary,
                            children_state,
                        },
                    );
                }
            }
        };
        learn_one(room, true);
        for child in children {
            learn_one(child, false);
        }
        self.asked.extend(inaccessible);
    }
}

/// A child of a space, as its `m.space.child` event names it.
struct Child {
    room_id: OwnedRoomId,
    via: Vec<OwnedServerName>,
    order: Option<String>,
    ts: u64,
}

/// The children that `children_state` (see [`children_state`]) names, in
/// the spec's order: a valid `order` first (by order), then by timestamp,
/// then by room ID.
fn children(children_state: &[JsonValue], suggested_only: bool) -> Vec<Child> {
    let mut out: Vec<Child> = children_state
        .iter()
        .filter(|e| e["type"] == "m.space.child")
        .filter_map(|e| {
            let content = &e["content"];
            if suggested_only && content["suggested"] != true {
                return None;
            }
            let room_id = OwnedRoomId::try_from(e["state_key"].as_str()?).ok()?;
            let via: Vec<OwnedServerName> = content["via"]
                .as_array()?
                .iter()
                .filter_map(|v| OwnedServerName::try_from(v.as_str()?).ok())
                .collect();
            // A child without servers to reach it through is removed.
            if via.is_empty() {
                return None;
            }
            let order = content["order"]
                .as_str()
                .filter(|o| o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7E).contains(&b)))
                .map(str::to_owned);
            Some(Child {
                room_id,
                via,
                order,
                ts: e["origin_server_ts"].as_u64().unwrap_or(0),
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
    /// A page of the hierarchy under `root` that `user` may see, with
    /// `remote` for the rooms this server is not in.
    pub fn hierarchy(
        &self,
        s: &Services,
        user: &UserId,
        root: &RoomId,
        query: &HierarchyQuery,
        remote: &RemoteRooms,
    ) -> ServiceResult<HierarchyWalk> {
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
        let viewer = Viewer::User(Some(user));
        if !self.may_preview(s, viewer, root)? {
            return Err(ServiceError::Forbidden(
                "you are not allowed to view this room".to_owned(),
            ));
        }

        // Depth-first, children in order; a room seen before is not walked
        // again, which also breaks loops.
        let mut rooms = Vec::new();
        let mut unknown = Vec::new();
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(OwnedRoomId, usize, Vec<OwnedServerName>)> = vec![(root.to_owned(), 0, Vec::new())];
        while let Some((room_id, depth, via)) = stack.pop() {
            if rooms.len() >= (start + limit + 1).min(MAX_ROOMS) {
                break;
            }
            if !seen.insert(room_id.clone()) {
                continue;
            }
            let descend = query.max_depth.is_none_or(|max| depth < max);
            let (mut entry, children_state) = if let Some(record) = s.timeline.room(&room_id)? {
                if room_id != root && !self.may_preview(s, viewer, &room_id)? {
                    continue;
                }
                local_entry(s, &room_id, &record)?
            } else if let Some(known) = remote.rooms.get(&room_id) {
                if !may_preview_remote(s, user, &known.summary)? {
                    continue;
                }
                let children_state = match &known.children_state {
                    Some(children_state) => children_state.clone(),
                    None => {
                        let is_space = known.summary["room_type"] == "m.space";
                        if descend && is_space && !remote.asked.contains(&room_id) {
                            unknown.push((room_id.clone(), via));
                        }
                        Vec::new()
                    }
                };
                (known.summary.clone(), children_state)
            } else {
                if !remote.asked.contains(&room_id) {
                    unknown.push((room_id, via));
                }
                continue;
            };
            if descend {
                for child in children(&children_state, query.suggested_only).into_iter().rev() {
                    stack.push((child.room_id, depth + 1, child.via));
                }
            }
            entry["children_state"] = children_state.into();
            rooms.push(entry);
        }
        let more = rooms.len() > start + limit;
        let page: Vec<JsonValue> = rooms.into_iter().skip(start).take(limit).collect();
        Ok(HierarchyWalk {
            page: HierarchyPage {
                next_batch: more.then(|| format!("{}.{shape}", start + limit)),
                rooms: page,
            },
            unknown,
        })
    }

    /// `GET /_matrix/federation/v1/hierarchy/{roomId}`: the space and its
    /// direct children as `server` may see them. Children it may not see
    /// are named in `inaccessible_children`; children not known here are
    /// left out.
    pub fn hierarchy_for_server(
        &self,
        s: &Services,
        server: &ServerName,
        root: &RoomId,
        suggested_only: bool,
    ) -> ServiceResult<ServerHierarchy> {
        let viewer = Viewer::Server(server);
        let record = match s.timeline.room(root)? {
            Some(record) if self.may_preview(s, viewer, root)? => record,
            _ => {
                return Err(ServiceError::NotFound(
                    "no room of that ID is visible to your server".to_owned(),
                ))
            }
        };
        let (mut room, children_state) = local_entry(s, root, &record)?;
        let mut out = ServerHierarchy {
            room: JsonValue::Null,
            children: Vec::new(),
            inaccessible_children: Vec::new(),
        };
        for child in children(&children_state, suggested_only) {
            let Some(child_record) = s.timeline.room(&child.room_id)? else {
                continue;
            };
            if self.may_preview(s, viewer, &child.room_id)? {
                let (mut entry, grandchildren) = local_entry(s, &child.room_id, &child_record)?;
                entry["children_state"] = grandchildren.into();
                out.children.push(entry);
            } else {
                out.inaccessible_children.push(child.room_id);
            }
        }
        room["children_state"] = children_state.into();
        out.room = room;
        Ok(out)
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
        if !self.may_preview(s, Viewer::User(viewer), &room_id)? {
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

    /// Whether `viewer` may see a room's summary. A user may as a member
    /// or invitee, a server when one of its users is in the room; either
    /// may because anyone may find the room (public, knockable,
    /// world-readable), or because they (a user of the server) are in a
    /// room a restricted join rule allows. A server the room's ACL denies
    /// may not.
    fn may_preview(&self, s: &Services, viewer: Viewer<'_>, room_id: &RoomId) -> ServiceResult<bool> {
        let Some(record) = s.timeline.room(room_id)? else {
            return Ok(false);
        };
        match viewer {
            Viewer::User(Some(user)) => match s.timeline.membership(room_id, user)?.as_deref() {
                Some("join" | "invite") => return Ok(true),
                Some("ban") => return Ok(false),
                _ => {}
            },
            Viewer::User(None) => {}
            Viewer::Server(server) => {
                if !s.timeline.server_allowed(s, room_id, server)? {
                    return Ok(false);
                }
                if s.timeline.server_in_room(server, room_id)? {
                    return Ok(true);
                }
            }
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
            Some("restricted") => match viewer {
                Viewer::User(Some(user)) => in_an_allowed_room(s, &rules, user),
                Viewer::User(None) => Ok(false),
                Viewer::Server(server) => {
                    for allowed_room in allowed_rooms(&rules) {
                        if s.timeline.server_in_room(server, &allowed_room)? {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
            },
            _ => Ok(false),
        }
    }
}

/// A local room's summary and its valid `m.space.child` events.
fn local_entry(
    s: &Services,
    room_id: &RoomId,
    record: &crate::database::rooms::RoomRecord,
) -> ServiceResult<(JsonValue, Vec<JsonValue>)> {
    let state = s.timeline.state_events(s, record.state_snapshot)?;
    Ok((summary_entry(room_id, &record.version, &state), children_state(&state)))
}

/// Whether `user` may see a room this server is not in, by the summary
/// another server gave (which it gave only if this server may see it):
/// anyone may find it, or the user is in a room its restricted join rule
/// allows.
fn may_preview_remote(s: &Services, user: &UserId, summary: &JsonValue) -> ServiceResult<bool> {
    if summary["world_readable"] == true {
        return Ok(true);
    }
    match summary["join_rule"].as_str() {
        Some("public" | "knock" | "knock_restricted") => Ok(true),
        Some("restricted") => {
            for allowed_room in summary["allowed_room_ids"].as_array().into_iter().flatten() {
                let Some(Ok(allowed_room)) = allowed_room.as_str().map(RoomId::parse) else {
                    continue;
                };
                if s.timeline.is_joined(&allowed_room, user)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// A room's summary as the hierarchy and `/room_summary` give it: its
/// directory entry, version, encryption and, under a restricted join rule,
/// the rooms whose members may join.
fn summary_entry(room_id: &RoomId, version: &str, state: &[StoredEvent]) -> JsonValue {
    let mut entry = directory_entry(room_id, state);
    entry["room_version"] = version.into();
    if matches!(entry["join_rule"].as_str(), Some("restricted" | "knock_restricted")) {
        if let Some(rules) = state
            .iter()
            .find(|e| e.event_type() == "m.room.join_rules" && e.state_key() == Some(""))
        {
            entry["allowed_room_ids"] = json!(allowed_rooms(rules));
        }
    }
    if let Some(encryption) = state
        .iter()
        .find(|e| e.event_type() == "m.room.encryption")
        .and_then(|e| e.content_str("algorithm"))
    {
        entry["encryption"] = encryption.into();
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::rooms::{CreateRoom, Preset};
    use crate::service::testing::two_in_a_room;

    fn room(s: &Services, creator: &UserId, preset: Preset, name: &str, space: bool) -> OwnedRoomId {
        let creation_content = space.then(|| json!({"type": "m.space"}).as_object().unwrap().clone());
        let request = CreateRoom {
            preset: Some(preset),
            name: Some(name.to_owned()),
            creation_content,
            ..Default::default()
        };
        s.rooms.create_room(s, creator, request).unwrap()
    }

    fn add_child(s: &Services, sender: &UserId, space: &RoomId, child: &RoomId, via: &str) {
        let content = serde_json::from_value(json!({"via": [via]})).unwrap();
        s.rooms
            .send_state(s, space, sender, "m.space.child", child.as_str(), content, None)
            .unwrap();
    }

    fn names(rooms: &[JsonValue]) -> Vec<&str> {
        rooms.iter().map(|r| r["name"].as_str().unwrap_or("?")).collect()
    }

    #[test]
    fn another_server_gets_the_children_anyone_may_find_and_the_ids_of_the_others() {
        let t = two_in_a_room();
        let s = &t.s;
        let space = room(s, &t.alice, Preset::PublicChat, "Space", true);
        let open = room(s, &t.alice, Preset::PublicChat, "Open", false);
        let closed = room(s, &t.alice, Preset::PrivateChat, "Closed", false);
        let elsewhere: OwnedRoomId = "!elsewhere:remote.test".try_into().unwrap();
        for child in [&open, &closed, &elsewhere] {
            add_child(s, &t.alice, &space, child, "localhost");
        }
        let server: &ServerName = "remote.test".try_into().unwrap();

        let found = s.rooms.hierarchy_for_server(s, server, &space, false).unwrap();
        assert_eq!(found.room["name"], "Space");
        assert_eq!(found.room["room_type"], "m.space");
        assert_eq!(found.room["children_state"].as_array().unwrap().len(), 3);
        assert_eq!(names(&found.children), ["Open"]);
        assert_eq!(found.inaccessible_children, std::slice::from_ref(&closed));

        // A private room is no space another server may look into.
        let err = s.rooms.hierarchy_for_server(s, server, &closed, false).unwrap_err();
        assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
    }

    #[test]
    fn rooms_only_other_servers_know_are_walked_once_they_have_told_of_them() {
        let t = two_in_a_room();
        let s = &t.s;
        let space = room(s, &t.alice, Preset::PublicChat, "Space", true);
        let far: OwnedRoomId = "!far:remote.test".try_into().unwrap();
        add_child(s, &t.alice, &space, &far, "remote.test");
        let query = HierarchyQuery::default();

        let mut remote = RemoteRooms::default();
        let walk = s.rooms.hierarchy(s, &t.bob, &space, &query, &remote).unwrap();
        assert_eq!(names(&walk.page.rooms), ["Space"]);
        let via: Vec<OwnedServerName> = vec!["remote.test".try_into().unwrap()];
        assert_eq!(walk.unknown, [(far.clone(), via)]);

        // The remote space has a public child, a restricted one that Bob's
        // room lets him into, and a restricted one he may not see.
        let child_event = |id: &str| {
            json!({"type": "m.space.child", "state_key": id, "sender": "@carol:remote.test",
                   "origin_server_ts": 1, "content": {"via": ["remote.test"]}})
        };
        let summary = |id: &str, name: &str, extra: JsonValue| {
            let mut summary = json!({"room_id": id, "name": name, "num_joined_members": 1,
                                     "world_readable": false, "guest_can_join": false});
            summary
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            summary
        };
        let mut far_summary = summary("!far:remote.test", "Far space", json!({"room_type": "m.space"}));
        far_summary["children_state"] = json!([
            child_event("!near:remote.test"),
            child_event("!allowed:remote.test"),
            child_event("!barred:remote.test"),
        ]);
        remote.mark_asked(&far);
        remote.learn(
            far_summary,
            vec![
                summary("!near:remote.test", "Near", json!({})),
                summary(
                    "!allowed:remote.test",
                    "Allowed",
                    json!({"join_rule": "restricted", "allowed_room_ids": [t.room]}),
                ),
                summary(
                    "!barred:remote.test",
                    "Barred",
                    json!({"join_rule": "restricted", "allowed_room_ids": ["!other:remote.test"]}),
                ),
            ],
            Vec::new(),
        );
        let walk = s.rooms.hierarchy(s, &t.bob, &space, &query, &remote).unwrap();
        // Children of one timestamp in room ID order.
        assert_eq!(names(&walk.page.rooms), ["Space", "Far space", "Allowed", "Near"]);
        assert_eq!(walk.page.rooms[3]["join_rule"], "public");
        assert!(walk.unknown.is_empty(), "{:?}", walk.unknown);
    }
}
