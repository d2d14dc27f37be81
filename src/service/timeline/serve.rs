//! What other servers read of a room: events in their federation form,
//! the state and auth chain at an event, backfill, missing events, and the
//! join template of `make_join`. Every read checks that the asking server
//! may see the event under the room's history visibility.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::state_res::{auth_types_for_event, Event};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, ServerName,
    UserId,
};
use serde_json::value::RawValue;

use super::append::StateView;
use super::{internal, TimelineService};
use crate::service::pdu::Pdu;
use crate::service::{ServiceError, ServiceResult, Services};

/// Events one backfill or missing-events request returns at most.
pub const MAX_EVENTS_PER_REQUEST: usize = 100;

/// A `get_missing_events` request.
#[derive(Clone, Copy)]
pub struct MissingEvents<'a> {
    pub earliest: &'a [OwnedEventId],
    pub latest: &'a [OwnedEventId],
    pub limit: usize,
    pub min_depth: u64,
}

/// The state at an event and the auth chain of that state.
pub struct StateAt {
    pub state: Vec<OwnedEventId>,
    pub auth_chain: Vec<OwnedEventId>,
}

impl TimelineService {
    /// The stored PDU as other servers get it (see `pdu::federation_form`).
    pub fn federation_pdu(&self, event_id: &EventId) -> ServiceResult<Option<CanonicalJsonObject>> {
        let Some(event) = self.event(event_id)? else {
            return Ok(None);
        };
        Ok(Some(crate::service::pdu::federation_form(event.json, event_id)))
    }

    /// The same, as JSON text.
    pub fn federation_pdu_raw(&self, event_id: &EventId) -> ServiceResult<Option<Box<RawValue>>> {
        match self.federation_pdu(event_id)? {
            Some(object) => Ok(Some(
                serde_json::value::to_raw_value(&object).map_err(|e| internal("PDU", e))?,
            )),
            None => Ok(None),
        }
    }

    /// Whether `server` may see `event_id` of `room_id`: one of its users
    /// was in the room (or invited, as the history visibility allows) when
    /// the event was sent, or the room is world-readable, or its history is
    /// shared and the server is in the room now.
    pub fn server_can_see(
        &self,
        s: &Services,
        server: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> ServiceResult<bool> {
        let Some(meta) = self.event_meta(event_id)? else {
            // Outliers (state fetched for a join) are state, which any
            // server in the room may have.
            return self.server_in_room(server, room_id);
        };
        let visibility = self
            .state_event(s, meta.state_before, "m.room.history_visibility", "")?
            .and_then(|e| e.content_str("history_visibility").map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        if visibility == "world_readable" {
            return Ok(true);
        }
        let state = self.state_events(s, meta.state_after)?;
        let mut invited = false;
        for event in state.iter().filter(|e| e.event_type() == "m.room.member") {
            let Some(user) = event.state_key().and_then(|k| UserId::parse(k).ok()) else {
                continue;
            };
            if user.server_name() != server {
                continue;
            }
            match event.content_str("membership") {
                Some("join") => return Ok(true),
                Some("invite") => invited = true,
                _ => {}
            }
        }
        Ok(match visibility.as_str() {
            "invited" => invited,
            "shared" => self.server_in_room(server, room_id)?,
            _ => false,
        })
    }

    /// Whether the room's server ACL (`m.room.server_acl`) lets `server`
    /// take part: no ACL allows everyone.
    pub fn server_allowed(&self, s: &Services, room_id: &RoomId, server: &ServerName) -> ServiceResult<bool> {
        let Some(record) = self.room(room_id)? else {
            return Ok(true);
        };
        let Some(acl) = self.state_event(s, record.state_snapshot, "m.room.server_acl", "")? else {
            return Ok(true);
        };
        let content = serde_json::to_value(acl.content()).map_err(|e| internal("server ACL", e))?;
        match serde_json::from_value::<ruma::events::room::server_acl::RoomServerAclEventContent>(content) {
            Ok(acl) => Ok(acl.is_allowed(server)),
            // An ACL that does not parse denies nobody (as Synapse reads it).
            Err(_) => Ok(true),
        }
    }

    /// Whether one of `server`'s users is joined to the room now.
    pub fn server_in_room(&self, server: &ServerName, room_id: &RoomId) -> ServiceResult<bool> {
        Ok(self.members(room_id)?.iter().any(|(user, membership)| {
            membership == "join" && UserId::parse(user.as_str()).is_ok_and(|u| u.server_name() == server)
        }))
    }

    /// The other servers with a user joined to the room now.
    pub fn servers_in_room(&self, room_id: &RoomId) -> ServiceResult<BTreeSet<ruma::OwnedServerName>> {
        Ok(self
            .members(room_id)?
            .iter()
            .filter(|(_, membership)| membership == "join")
            .filter_map(|(user, _)| UserId::parse(user.as_str()).ok())
            .map(|user| user.server_name().to_owned())
            .collect())
    }

    /// The state before `event_id` (as `/state_ids` and `/state` give it)
    /// and its auth chain.
    pub fn state_at(&self, s: &Services, event_id: &EventId) -> ServiceResult<StateAt> {
        let meta = self
            .event_meta(event_id)?
            .ok_or_else(|| ServiceError::NotFound("this event is not known here".to_owned()))?;
        let mut state = Vec::new();
        for short in s.state.load_snapshot(meta.state_before)?.values() {
            state.push(s.state.event_id(*short)?);
        }
        let auth_chain = self.auth_chain(s, &state)?;
        Ok(StateAt { state, auth_chain })
    }

    /// Up to `limit` events before `from` (themselves included), newest
    /// first, walking `prev_events` breadth-first; only those `server` may
    /// see.
    pub fn backfill(
        &self,
        s: &Services,
        server: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> ServiceResult<Vec<OwnedEventId>> {
        let limit = limit.min(MAX_EVENTS_PER_REQUEST);
        let mut out = Vec::new();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut queue: VecDeque<OwnedEventId> = from.iter().cloned().collect();
        while let Some(id) = queue.pop_front() {
            if out.len() >= limit {
                break;
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(pdu) = self.pdu(&id)? else { continue };
            if pdu.room_id().is_some_and(|r| r != room_id) && pdu.event_type() != &TimelineEventType::RoomCreate {
                continue;
            }
            if self.server_can_see(s, server, room_id, &id)? {
                out.push(id.clone());
            }
            queue.extend(pdu.prev_events().cloned());
        }
        Ok(out)
    }

    /// `get_missing_events`: events between `earliest` (excluded) and
    /// `latest`, walking back from `latest` through `prev_events`, at most
    /// `limit`, none below `min_depth`, oldest first.
    pub fn missing_events(
        &self,
        s: &Services,
        server: &ServerName,
        room_id: &RoomId,
        query: &MissingEvents<'_>,
    ) -> ServiceResult<Vec<OwnedEventId>> {
        let MissingEvents {
            earliest,
            latest,
            limit,
            min_depth,
        } = *query;
        let limit = limit.min(MAX_EVENTS_PER_REQUEST);
        let stop: HashSet<&OwnedEventId> = earliest.iter().collect();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut out = Vec::new();
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for id in latest {
            if let Some(pdu) = self.pdu(id)? {
                queue.extend(pdu.prev_events().cloned());
            }
        }
        while let Some(id) = queue.pop_front() {
            if out.len() >= limit {
                break;
            }
            if stop.contains(&id) || !seen.insert(id.clone()) {
                continue;
            }
            let Some(pdu) = self.pdu(&id)? else { continue };
            if pdu.room_id() != Some(room_id) || u64::from(pdu.depth()) < min_depth {
                continue;
            }
            if self.server_can_see(s, server, room_id, &id)? {
                out.push((u64::from(pdu.depth()), id.clone()));
            }
            queue.extend(pdu.prev_events().cloned());
        }
        out.sort();
        Ok(out.into_iter().map(|(_, id)| id).collect())
    }

    /// The state events an invited user is shown of the room (the spec's
    /// recommended stripped state), by ID: what an invite to another
    /// server carries.
    pub fn invite_state(&self, s: &Services, room_id: &RoomId, inviter: &UserId) -> ServiceResult<Vec<OwnedEventId>> {
        let record = self.room_or_404(room_id)?;
        let mut ids = Vec::new();
        let keys = super::STRIPPED_STATE_TYPES.iter().map(|t| (*t, ""));
        for (event_type, key) in keys.chain([("m.room.member", inviter.as_str())]) {
            if let Some(event) = self.state_event(s, record.state_snapshot, event_type, key)? {
                ids.push(event.event_id);
            }
        }
        Ok(ids)
    }

    /// `make_join` / `make_leave` / `make_knock`: the template of a
    /// membership event of `user` (another server's) on the room's current
    /// state, unsigned. Refused when the auth rules would refuse it.
    pub fn membership_template(
        &self,
        s: &Services,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
        extra_content: CanonicalJsonObject,
    ) -> ServiceResult<(String, CanonicalJsonObject)> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let record = self.room_or_404(room_id)?;
        let (_, rules) = Self::rules(&record)?;
        let mut content = extra_content;
        content.insert("membership".to_owned(), membership.into());
        let content_raw = serde_json::value::to_raw_value(&content).map_err(|e| internal("content", e))?;
        let auth_types = auth_types_for_event(
            &TimelineEventType::RoomMember,
            user,
            Some(user.as_str()),
            &content_raw,
            &rules.authorization,
        )
        .map_err(ServiceError::BadJson)?;
        let view = StateView {
            timeline: self,
            state: Some(self.state_events(s, record.state_snapshot)?),
        };
        let mut auth_events = Vec::new();
        for (event_type, state_key) in &auth_types {
            if let Some(pdu) = view.get(&event_type.to_string(), state_key)? {
                auth_events.push(self.event_ref(&pdu.event_id)?);
            }
        }
        let mut prev_events = Vec::new();
        for id in &record.forward_extremities {
            prev_events.push(self.event_ref(&EventId::parse(id).map_err(|e| internal("stored extremity", e))?)?);
        }
        let refs = |list| crate::service::pdu::references(list, &rules);
        let mut template = CanonicalJsonObject::new();
        template.insert("room_id".to_owned(), room_id.as_str().into());
        template.insert("sender".to_owned(), user.as_str().into());
        template.insert("state_key".to_owned(), user.as_str().into());
        template.insert("type".to_owned(), "m.room.member".into());
        template.insert("origin".to_owned(), user.server_name().as_str().into());
        template.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(MilliSecondsSinceUnixEpoch::now().0.into()),
        );
        template.insert("content".to_owned(), CanonicalJsonValue::Object(content));
        template.insert("prev_events".to_owned(), refs(prev_events));
        template.insert("auth_events".to_owned(), refs(auth_events));
        template.insert(
            "depth".to_owned(),
            CanonicalJsonValue::Integer(
                i64::try_from(record.depth + 1)
                    .map_err(|e| internal("depth", e))?
                    .try_into()
                    .map_err(|e| internal("depth", e))?,
            ),
        );

        // The event it would be must pass the auth rules on the current state.
        let probe = Pdu::from_object("$probe:x".try_into().map_err(|e| internal("event ID", e))?, &template)?;
        let allowed = ruma::state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            Arc::new(probe),
            |t: &StateEventType, k: &str| view.get(&t.to_string(), k).ok().flatten(),
        );
        if let Err(reason) = allowed {
            return Err(ServiceError::Forbidden(format!(
                "{user} may not {membership} this room: {reason}"
            )));
        }
        Ok((record.version, template))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::database::{open_test_db, Direction};
    use crate::service::pdu::sign_pdu;
    use crate::service::testing::two_in_a_room;
    use crate::service::timeline::{to_object, EventSpec, MissingEvents, Received};
    use crate::service::Services;

    fn newest(s: &Services, room: &ruma::RoomId) -> ruma::OwnedEventId {
        let record = s.timeline.room_or_404(room).unwrap();
        s.timeline
            .events(&record, None, Direction::Backward)
            .next()
            .unwrap()
            .unwrap()
            .event_id
    }

    fn text(body: &str) -> EventSpec {
        EventSpec {
            event_type: "m.room.message".into(),
            content: to_object(json!({"msgtype": "m.text", "body": body})).unwrap(),
            state_key: None,
            redacts: None,
            origin_server_ts: None,
        }
    }

    /// The join handshake between two servers, without the HTTP between
    /// them: the resident server's template, signed by the joining server,
    /// accepted by the resident, and the state it sends is the joining
    /// server's start of the room. Then messages cross both ways.
    #[test]
    fn a_server_joins_a_room_of_another_and_messages_cross_both_ways() {
        let a = two_in_a_room();
        let b_dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            database_path: b_dir.path().to_owned(),
            server_name: "remote.test".try_into().unwrap(),
            ..Default::default()
        };
        let b = Services::build(config, open_test_db(b_dir.path())).unwrap();
        let carol: ruma::OwnedUserId = "@carol:remote.test".try_into().unwrap();
        b.users.register(&b.devices, &carol, None, None).unwrap();

        // make_join on A, signed on B, send_join on A.
        let (version, template) =
            a.s.timeline
                .membership_template(&a.s, &a.room, &carol, "join", Default::default())
                .unwrap();
        let version = ruma::RoomVersionId::try_from(version.as_str()).unwrap();
        let rules = version.rules().unwrap();
        let server: &ruma::ServerName = "remote.test".try_into().unwrap();
        let (join_id, join) = sign_pdu(template, &rules, server, &b.server_keys).unwrap();
        let accepted =
            a.s.timeline
                .receive_remote(&a.s, &a.room, join_id.clone(), join.clone(), None)
                .unwrap();
        assert!(matches!(accepted, Received::Accepted { .. }), "{accepted:?}");
        assert!(a.s.timeline.is_joined(&a.room, &carol).unwrap());
        assert!(a.s.timeline.server_in_room(server, &a.room).unwrap());

        // A's answer: the state before the join and its auth chain.
        let state = a.s.timeline.state_at(&a.s, &join_id).unwrap();
        let events = state
            .state
            .iter()
            .chain(&state.auth_chain)
            .map(|id| (id.clone(), a.s.timeline.federation_pdu(id).unwrap().unwrap()))
            .collect();
        let rejected = b
            .timeline
            .store_outliers(&a.room, &version.rules().unwrap(), events)
            .unwrap();
        assert!(rejected.is_empty(), "{rejected:?}");
        let joined = b
            .timeline
            .receive_join(&b, &a.room, &version, join_id.clone(), join, &state.state)
            .unwrap();
        assert!(matches!(joined, Received::Accepted { .. }), "{joined:?}");
        for user in [&carol, &a.alice, &a.bob] {
            assert!(b.timeline.is_joined(&a.room, user).unwrap(), "{user} is a member on B");
        }
        assert_eq!(newest(&b, &a.room), join_id);

        // Alice speaks on A; B takes the event.
        let hello =
            a.s.timeline
                .append(&a.s, &a.room, &a.alice, text("hello carol"), None)
                .unwrap();
        let pdu = a.s.timeline.federation_pdu(&hello).unwrap().unwrap();
        let got = b
            .timeline
            .receive_remote(&b, &a.room, hello.clone(), pdu, None)
            .unwrap();
        assert!(matches!(got, Received::Accepted { .. }), "{got:?}");
        assert_eq!(newest(&b, &a.room), hello);

        // Carol answers on B; A takes it.
        let reply = b.timeline.append(&b, &a.room, &carol, text("hi alice"), None).unwrap();
        let pdu = b.timeline.federation_pdu(&reply).unwrap().unwrap();
        let got =
            a.s.timeline
                .receive_remote(&a.s, &a.room, reply.clone(), pdu, None)
                .unwrap();
        assert!(matches!(got, Received::Accepted { .. }), "{got:?}");
        assert_eq!(newest(&a.s, &a.room), reply);
        assert_eq!(
            a.s.timeline.room_or_404(&a.room).unwrap().forward_extremities,
            [reply.to_string()]
        );

        // What A serves of its history to B.
        let back =
            a.s.timeline
                .backfill(&a.s, server, &a.room, std::slice::from_ref(&reply), 3)
                .unwrap();
        assert_eq!(back, [reply.clone(), hello.clone(), join_id.clone()]);
        let missing =
            a.s.timeline
                .missing_events(
                    &a.s,
                    server,
                    &a.room,
                    &MissingEvents {
                        earliest: std::slice::from_ref(&join_id),
                        latest: std::slice::from_ref(&reply),
                        limit: 10,
                        min_depth: 0,
                    },
                )
                .unwrap();
        assert_eq!(missing, [hello]);
    }
}
