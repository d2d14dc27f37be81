//! Events from other servers, after the federation layer has checked their
//! format, signatures and content hash: authorized in the spec's order
//! (server-server API, "Checks performed on receipt of a PDU") and handed
//! to `persist`, the same path local events take.
//!
//! 1. Against its own `auth_events`: refused events are remembered as
//!    rejected, so a repeat costs one read.
//! 2. Against the state before it, computed from the states after its
//!    `prev_events` (resolved when they differ), or given by the caller
//!    when its history is not known here (fetched with `/state_ids`).
//! 3. Against the room's current state: an event that fails only this is
//!    soft-failed: part of the room graph, never shown to clients.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules, Event};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId};

use super::append::StateView;
use super::persist::Authorized;
use super::{internal, FailedLookup, TimelineService};
use crate::database::rooms::{position, OutlierKind, OutlierRecord};
use crate::database::Batch;
use crate::service::pdu::{received_form, Pdu};
use crate::service::state::StateMap;
use crate::service::{ServiceError, ServiceResult, Services};

/// What became of an event from another server.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// In the timeline at this stream position.
    Accepted { count: u64 },
    /// Stored (or refused) before; nothing changed.
    AlreadyKnown,
    /// Kept in the room graph, hidden from clients (see the module doc).
    SoftFailed,
    /// Refused by the auth rules, and remembered as such.
    Rejected(String),
    /// Events it references are not known here: fetch them, then offer it
    /// again. `prev` is only filled when no state was given.
    Missing {
        auth: Vec<OwnedEventId>,
        prev: Vec<OwnedEventId>,
    },
}

/// What an event's own auth events say of it.
enum OwnAuth {
    Allowed,
    Refused(String),
    /// These are not known here.
    Missing(Vec<OwnedEventId>),
}

/// Where the history stored of a room begins (see
/// [`TimelineService::backfill_point`]).
pub struct BackfillPoint {
    /// The events the oldest stored event references that are not stored
    /// here; none once the create event is.
    pub missing: Vec<OwnedEventId>,
    /// The number the newest event fetched from before it takes.
    pub next_number: u64,
    pub version: String,
    /// Whose server sent the oldest stored event.
    pub oldest_sender_server: ruma::OwnedServerName,
}

impl TimelineService {
    pub fn backfill_point(&self, room_id: &RoomId) -> ServiceResult<BackfillPoint> {
        let record = self.room_or_404(room_id)?;
        let oldest = self
            .events(&record, None, crate::database::Direction::Forward)
            .next()
            .transpose()?
            .ok_or_else(|| internal("room", "a room without events"))?;
        let pdu = self
            .pdu(&oldest.event_id)?
            .ok_or_else(|| internal("oldest event", "not readable"))?;
        let mut missing = Vec::new();
        for id in pdu.prev_events() {
            if self.event_meta(id)?.is_none() {
                missing.push(id.clone());
            }
        }
        Ok(BackfillPoint {
            missing,
            next_number: position::backfill_number(oldest.count).unwrap_or(0) + 1,
            version: record.version.clone(),
            oldest_sender_server: pdu.sender().server_name().to_owned(),
        })
    }

    /// Authorizes and stores `object`, an event of `room_id` (a room this
    /// server knows) whose signatures have been checked. `state_before`,
    /// the IDs of the state events before it (all stored, as outliers at
    /// least), stands in for its history when that is not known here.
    pub fn receive_remote(
        &self,
        s: &Services,
        room_id: &RoomId,
        event_id: OwnedEventId,
        object: CanonicalJsonObject,
        state_before: Option<&[OwnedEventId]>,
    ) -> ServiceResult<Received> {
        self.receive_checked(s, room_id, event_id, object, state_before, None)
    }

    /// [`Self::receive_remote`] for an event of the room's past, fetched
    /// with `/backfill`, stored at `position` (a backfilled position, see
    /// `database::rooms::position`). It is not checked against the current
    /// state: it is history, not news.
    pub fn receive_backfilled(
        &self,
        s: &Services,
        room_id: &RoomId,
        event_id: OwnedEventId,
        object: CanonicalJsonObject,
        state_before: Option<&[OwnedEventId]>,
        position: u64,
    ) -> ServiceResult<Received> {
        self.receive_checked(s, room_id, event_id, object, state_before, Some(position))
    }

    fn receive_checked(
        &self,
        s: &Services,
        room_id: &RoomId,
        event_id: OwnedEventId,
        object: CanonicalJsonObject,
        state_before: Option<&[OwnedEventId]>,
        backfilled: Option<u64>,
    ) -> ServiceResult<Received> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.event_meta(&event_id)?.is_some() {
            return Ok(Received::AlreadyKnown);
        }
        let was_outlier = match self.tables.outlier(event_id.as_str())?.map(|o| o.kind) {
            Some(OutlierKind::Rejected(reason)) => return Ok(Received::Rejected(reason)),
            Some(OutlierKind::SoftFailed) => return Ok(Received::AlreadyKnown),
            Some(OutlierKind::Outlier) => true,
            None => false,
        };
        let record = self.room_or_404(room_id)?;
        let (_, rules) = Self::rules(&record)?;
        let object = received_form(object, &event_id, &rules);
        let pdu = Arc::new(Pdu::from_object(event_id.clone(), &object)?);
        if !pdu.belongs_to(room_id) {
            return Err(ServiceError::BadJson(format!(
                "{event_id} is not an event of {room_id}"
            )));
        }
        let is_create = pdu.event_type() == &TimelineEventType::RoomCreate;
        if is_create {
            let ours = self
                .state_event(s, record.state_snapshot, "m.room.create", "")?
                .is_some_and(|create| create.event_id == event_id);
            // The room's own create event, known since the join: history
            // reaching its start takes it into the timeline; offered as
            // news, it is nothing new (and never to be marked rejected).
            match (ours, backfilled) {
                (true, Some(_)) => {}
                (true, None) => return Ok(Received::AlreadyKnown),
                (false, _) => {
                    let reason = "a room has one create event".to_owned();
                    return self.reject(room_id, &event_id, &object, reason);
                }
            }
        }

        // 1. Against its own auth events (all of which must be known).
        let missing_auth = match self.check_own_auth(&rules, room_id, &pdu, &|id| self.pdu(id))? {
            OwnAuth::Refused(reason) => return self.reject(room_id, &event_id, &object, reason),
            OwnAuth::Missing(ids) => ids,
            OwnAuth::Allowed => Vec::new(),
        };
        let mut prev_states = Vec::new();
        let mut missing_prev = Vec::new();
        for id in pdu.prev_events() {
            match self.event_meta(id)? {
                Some(meta) => prev_states.push(meta.state_after),
                None => missing_prev.push(id.clone()),
            }
        }
        if state_before.is_some() {
            missing_prev.clear();
        }
        if !missing_auth.is_empty() || !missing_prev.is_empty() {
            return Ok(Received::Missing {
                auth: missing_auth,
                prev: missing_prev,
            });
        }

        // 2. Against the state before it.
        let before_id = match state_before {
            Some(ids) => self.snapshot_of(s, ids)?,
            // Nothing is before the create event.
            None if is_create => self.snapshot_of(s, &[])?,
            None => self.resolve_snapshots(s, &rules, &prev_states)?,
        };
        let state = self.state_events(s, before_id)?;
        let view = StateView {
            timeline: self,
            state: Some(state.clone()),
        };
        if let Err(reason) = self.check_against(&rules, &pdu, &view)? {
            return self.reject(room_id, &event_id, &object, format!("by the state before it: {reason}"));
        }

        // 3. Against the room's current state.
        let soft_failed = backfilled.is_none() && record.state_snapshot != before_id && {
            let current = StateView {
                timeline: self,
                state: Some(self.state_events(s, record.state_snapshot)?),
            };
            self.check_against(&rules, &pdu, &current)?.is_err()
        };

        let redaction_target = match redacted_event(&pdu, &object) {
            Some(target) if !soft_failed => {
                match self.check_redaction(&view, &rules, pdu.sender(), Some(room_id), &target, true) {
                    Ok(found) => Some(found),
                    // Not stored here, or not the sender's to redact: the
                    // redaction is kept, and redacts nothing.
                    Err(ServiceError::NotFound(_) | ServiceError::Forbidden(_)) => None,
                    Err(e) => return Err(e),
                }
            }
            _ => None,
        };
        let persisted = self.persist(
            s,
            Authorized {
                room_id: room_id.to_owned(),
                record: Some(record.clone()),
                version: record.version.as_str(),
                rules: &rules,
                event_id,
                object,
                pdu,
                state_before: (before_id, state),
                txn: None,
                redaction_target,
                soft_failed,
                was_outlier,
                backfilled,
            },
        )?;
        Ok(if soft_failed {
            Received::SoftFailed
        } else {
            Received::Accepted { count: persisted.count }
        })
    }

    /// This server's join to a room of another server, the first event of
    /// that room here (or the first since this server left it): `object`,
    /// signed by the resident server, on `state`, the IDs of the state
    /// before it (stored as outliers). The room's record, the event and
    /// every member's membership land in one batch: a crash before leaves
    /// only outliers, which the next try reuses.
    pub fn receive_join(
        &self,
        s: &Services,
        room_id: &RoomId,
        version: &ruma::RoomVersionId,
        event_id: OwnedEventId,
        object: CanonicalJsonObject,
        state: &[OwnedEventId],
    ) -> ServiceResult<Received> {
        if self.room(room_id)?.is_some() {
            return self.receive_remote(s, room_id, event_id, object, Some(state));
        }
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let rules = version
            .rules()
            .ok_or_else(|| ServiceError::UnsupportedRoomVersion(format!("room version {version} is not supported")))?;
        let object = received_form(object, &event_id, &rules);
        let pdu = Arc::new(Pdu::from_object(event_id.clone(), &object)?);
        let was_outlier = self.tables.outlier(event_id.as_str())?.is_some();
        if pdu.room_id() != Some(room_id) || pdu.event_type() != &TimelineEventType::RoomMember {
            return Err(ServiceError::BadJson(format!("{event_id} is not a join to {room_id}")));
        }
        let before_id = self.snapshot_of(s, state)?;
        let parsed = self.state_events(s, before_id)?;
        let view = StateView {
            timeline: self,
            state: Some(parsed.clone()),
        };
        let lookups = FailedLookup::default();
        let independent =
            check_state_independent_auth_rules(&rules.authorization, &pdu, |id: &EventId| lookups.keep(self.pdu(id)));
        lookups.check()?;
        independent.map_err(|reason| ServiceError::Forbidden(format!("the join is not allowed: {reason}")))?;
        self.check_against(&rules, &pdu, &view)?
            .map_err(|reason| ServiceError::Forbidden(format!("the join is not allowed: {reason}")))?;
        let persisted = self.persist(
            s,
            Authorized {
                room_id: room_id.to_owned(),
                record: None,
                version: version.as_str(),
                rules: &rules,
                event_id,
                object,
                pdu,
                state_before: (before_id, parsed),
                txn: None,
                redaction_target: None,
                soft_failed: false,
                was_outlier,
                backfilled: None,
            },
        )?;
        Ok(Received::Accepted { count: persisted.count })
    }

    /// Keeps an invite of `user` (ours) to a room of another server, or
    /// the user's knock on one (`membership`), with what that server showed
    /// of the room; the user sees it at the next sync.
    pub fn store_remote_membership(
        &self,
        user: &ruma::UserId,
        room_id: &RoomId,
        membership: &str,
        record: &crate::database::rooms::RemoteInviteRecord,
    ) -> ServiceResult<()> {
        self.write_for_user(user, |batch, count| {
            self.tables
                .put_remote_invite(batch, user.as_str(), room_id.as_str(), record);
            self.tables
                .put_membership(batch, room_id.as_str(), user.as_str(), membership, count);
        })
    }

    /// Writes what `fill` puts in a batch at a new stream position, and
    /// wakes `user`'s syncs once it has landed.
    fn write_for_user(&self, user: &ruma::UserId, fill: impl FnOnce(&mut Batch, u64)) -> ServiceResult<()> {
        let ticket = self.stream.begin()?;
        let mut batch = Batch::new();
        fill(&mut batch, ticket.0);
        let written = self.tables.write(batch);
        self.stream.finish(ticket, written.is_ok().then_some(user));
        Ok(written?)
    }

    /// The invite of `user` to a room this server is not in, or their knock
    /// on one, if any.
    pub fn remote_invite(
        &self,
        user: &ruma::UserId,
        room_id: &RoomId,
    ) -> ServiceResult<Option<crate::database::rooms::RemoteInviteRecord>> {
        Ok(self.tables.remote_invite(user.as_str(), room_id.as_str())?)
    }

    /// Ends `user`'s invite to (or knock on) a room this server is not in:
    /// as refused or withdrawn (`leave`), or once the user has joined (the
    /// join's membership then stands).
    pub fn end_remote_invite(&self, user: &ruma::UserId, room_id: &RoomId, refused: bool) -> ServiceResult<()> {
        self.write_for_user(user, |batch, count| {
            self.tables.delete_remote_invite(batch, user.as_str(), room_id.as_str());
            if refused {
                self.tables
                    .put_membership(batch, room_id.as_str(), user.as_str(), "leave", count);
            }
        })
    }

    /// Checks `pdu` against its own auth events (step 1 of the checks on
    /// receipt), read with `lookup`.
    fn check_own_auth(
        &self,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        pdu: &Arc<Pdu>,
        lookup: &dyn Fn(&EventId) -> ServiceResult<Option<Arc<Pdu>>>,
    ) -> ServiceResult<OwnAuth> {
        let mut auth_events: HashMap<(StateEventType, String), Arc<Pdu>> = HashMap::new();
        let mut missing = Vec::new();
        for id in pdu.auth_events() {
            match lookup(id)? {
                Some(auth) if auth.rejected => {
                    return Ok(OwnAuth::Refused(format!("it is authorized by {id}, a rejected event")));
                }
                Some(auth) => {
                    let key = (
                        auth.event_type().to_string().into(),
                        auth.state_key().unwrap_or_default().to_owned(),
                    );
                    if auth_events.insert(key, auth).is_some() {
                        return Ok(OwnAuth::Refused(
                            "its auth_events name two events for one state key".to_owned(),
                        ));
                    }
                }
                None => missing.push(id.clone()),
            }
        }
        // Since room version 12 the create event is not among the auth
        // events (the room ID is its hash) yet the auth rules still read it.
        if rules.authorization.room_create_event_id_as_room_id && pdu.event_type() != &TimelineEventType::RoomCreate {
            let create_id = OwnedEventId::try_from(format!("${}", room_id.strip_sigil()))
                .map_err(|e| ServiceError::BadJson(format!("{room_id} names no create event: {e}")))?;
            match lookup(&create_id)? {
                Some(create) => {
                    auth_events.insert((StateEventType::RoomCreate, String::new()), create);
                }
                None => missing.push(create_id),
            }
        }
        if !missing.is_empty() {
            return Ok(OwnAuth::Missing(missing));
        }
        let lookups = FailedLookup::default();
        let independent =
            check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| lookups.keep(lookup(id)));
        lookups.check()?;
        if let Err(reason) = independent {
            return Ok(OwnAuth::Refused(reason));
        }
        let by_auth_events =
            check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
                auth_events.get(&(t.clone(), k.to_owned())).cloned()
            });
        Ok(match by_auth_events {
            Ok(()) => OwnAuth::Allowed,
            Err(reason) => OwnAuth::Refused(format!("by its auth events: {reason}")),
        })
    }

    /// Keeps events of a room outside its timeline (the state and auth
    /// chain a join or a gap brings), oldest first, each checked against
    /// its own auth events: one they refuse is kept as rejected, one whose
    /// auth events are not all known is kept unchecked. One write. Returns
    /// the IDs rejected.
    pub fn store_outliers(
        &self,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        mut events: Vec<(OwnedEventId, CanonicalJsonObject)>,
    ) -> ServiceResult<Vec<OwnedEventId>> {
        let depth = |object: &CanonicalJsonObject| match object.get("depth") {
            Some(CanonicalJsonValue::Integer(d)) => i64::from(*d),
            _ => 0,
        };
        events.sort_by(|a, b| (depth(&a.1), &a.0).cmp(&(depth(&b.1), &b.0)));
        let here: std::cell::RefCell<HashMap<OwnedEventId, Arc<Pdu>>> = Default::default();
        let lookup = |id: &EventId| match here.borrow().get(id) {
            Some(pdu) => Ok(Some(pdu.clone())),
            None => self.pdu(id),
        };
        let mut batch = Batch::new();
        let mut rejected = Vec::new();
        for (event_id, mut object) in events {
            if here.borrow().contains_key(&event_id)
                || self.event_meta(&event_id)?.is_some()
                || self.tables.outlier(event_id.as_str())?.is_some()
            {
                continue;
            }
            object.remove("unsigned");
            let mut pdu = Pdu::from_object(event_id.clone(), &object)?;
            let kind = match self.check_own_auth(rules, room_id, &Arc::new(pdu.clone()), &lookup)? {
                OwnAuth::Refused(reason) => {
                    tracing::info!(%event_id, %room_id, %reason, "fetched event rejected");
                    pdu.rejected = true;
                    rejected.push(event_id.clone());
                    OutlierKind::Rejected(reason)
                }
                OwnAuth::Missing(_) | OwnAuth::Allowed => OutlierKind::Outlier,
            };
            object.insert("event_id".to_owned(), event_id.as_str().into());
            let record = OutlierRecord {
                room_id: room_id.to_string(),
                json: serde_json::to_string(&object).map_err(|e| internal("PDU", e))?,
                kind,
            };
            self.tables.put_outlier(&mut batch, event_id.as_str(), &record);
            here.borrow_mut().insert(event_id, Arc::new(pdu));
        }
        self.tables.write(batch)?;
        Ok(rejected)
    }

    /// Whether the event was refused by the auth rules here.
    pub fn is_rejected(&self, event_id: &EventId) -> ServiceResult<bool> {
        Ok(matches!(
            self.tables.outlier(event_id.as_str())?.map(|o| o.kind),
            Some(OutlierKind::Rejected(_))
        ))
    }

    /// The state-dependent auth rules against `view`: `Err(reason)` when
    /// they refuse the event.
    fn check_against(
        &self,
        rules: &RoomVersionRules,
        pdu: &Arc<Pdu>,
        view: &StateView<'_>,
    ) -> ServiceResult<Result<(), String>> {
        let lookups = FailedLookup::default();
        let verdict = check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
            lookups.keep(view.get(&t.to_string(), k))
        });
        lookups.check()?;
        Ok(verdict)
    }

    /// Remembers why `event_id` was refused.
    fn reject(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        object: &CanonicalJsonObject,
        reason: String,
    ) -> ServiceResult<Received> {
        tracing::info!(%event_id, %room_id, %reason, "event from another server rejected");
        let mut object = object.clone();
        object.insert("event_id".to_owned(), event_id.as_str().into());
        let record = OutlierRecord {
            room_id: room_id.to_string(),
            json: serde_json::to_string(&object).map_err(|e| internal("PDU", e))?,
            kind: OutlierKind::Rejected(reason.clone()),
        };
        let mut batch = Batch::new();
        self.tables.put_outlier(&mut batch, event_id.as_str(), &record);
        self.tables.write(batch)?;
        self.pdu_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(event_id);
        Ok(Received::Rejected(reason))
    }

    /// The snapshot of a state given as the IDs of its (stored) events.
    fn snapshot_of(&self, s: &Services, event_ids: &[OwnedEventId]) -> ServiceResult<u64> {
        let mut state = StateMap::new();
        for id in event_ids {
            let pdu = self
                .pdu(id)?
                .ok_or_else(|| ServiceError::BadRequest(format!("the state event {id} is not known here")))?;
            let Some(state_key) = pdu.state_key() else {
                return Err(ServiceError::BadJson(format!("{id} is not a state event")));
            };
            let key = s.state.short_state_key(&pdu.event_type().to_string(), state_key)?;
            state.insert(key, s.state.short_event_id(id)?);
        }
        s.state.save_snapshot(&state, None)
    }
}

/// The event a redaction names: top-level `redacts` before room version
/// 11, in the content after.
fn redacted_event(pdu: &Pdu, object: &CanonicalJsonObject) -> Option<OwnedEventId> {
    if pdu.event_type() != &TimelineEventType::RoomRedaction {
        return None;
    }
    if let Some(id) = pdu.redacts() {
        return Some(id.clone());
    }
    match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => match content.get("redacts") {
            Some(CanonicalJsonValue::String(id)) => EventId::parse(id).ok(),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use ruma::events::StateEventType;
    use ruma::{MilliSecondsSinceUnixEpoch, OwnedUserId};
    use serde_json::{json, Value as JsonValue};

    use super::*;
    use crate::service::pdu::{build_pdu, EventRef, NewPdu};
    use crate::service::server_keys::ServerKeysService;
    use crate::service::testing::{two_in_a_room, two_in_a_room_of, TwoInARoom};
    use crate::service::timeline::{to_object, EventSpec};

    /// The other server: its own signing key, its users `@...:remote.test`.
    struct Remote {
        _dir: tempfile::TempDir,
        keys: ServerKeysService,
    }

    fn remote() -> Remote {
        let dir = tempfile::tempdir().unwrap();
        let keys = ServerKeysService::open(
            crate::database::open_test_db(dir.path()),
            "remote.test".try_into().unwrap(),
        )
        .unwrap();
        Remote { _dir: dir, keys }
    }

    impl Remote {
        /// An event of `sender` built and signed by the remote server.
        #[allow(clippy::too_many_arguments)]
        fn event(
            &self,
            t: &TwoInARoom,
            sender: &str,
            event_type: &str,
            state_key: Option<&str>,
            content: JsonValue,
            prev: &[EventRef],
            auth: &[OwnedEventId],
        ) -> (OwnedEventId, CanonicalJsonObject) {
            let record = t.s.timeline.room_or_404(&t.room).unwrap();
            let (_, rules) = TimelineService::rules(&record).unwrap();
            let new = NewPdu {
                room_id: Some(t.room.clone()),
                sender: sender.try_into().unwrap(),
                event_type: event_type.into(),
                content: to_object(content).unwrap(),
                state_key: state_key.map(str::to_owned),
                prev_events: prev.to_vec(),
                auth_events: auth.iter().map(|id| t.s.timeline.event_ref(id).unwrap()).collect(),
                depth: record.depth + 1,
                redacts: None,
                origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
            };
            build_pdu(new, &rules, "remote.test".try_into().unwrap(), &self.keys).unwrap()
        }
    }

    /// The room's forward extremities, as references.
    fn ends(t: &TwoInARoom) -> Vec<EventRef> {
        let record = t.s.timeline.room_or_404(&t.room).unwrap();
        record
            .forward_extremities
            .iter()
            .map(|id| t.s.timeline.event_ref(&EventId::parse(id).unwrap()).unwrap())
            .collect()
    }

    /// The IDs of these events of the room's current state.
    fn current(t: &TwoInARoom, keys: &[(&str, &str)]) -> Vec<OwnedEventId> {
        let snapshot = t.s.timeline.room_or_404(&t.room).unwrap().state_snapshot;
        keys.iter()
            .map(|(event_type, state_key)| {
                t.s.timeline
                    .state_event(&t.s, snapshot, event_type, state_key)
                    .unwrap()
                    .unwrap_or_else(|| panic!("no {event_type} {state_key:?} in the state"))
                    .event_id
            })
            .collect()
    }

    fn receive(t: &TwoInARoom, (id, object): (OwnedEventId, CanonicalJsonObject)) -> Received {
        t.s.timeline.receive_remote(&t.s, &t.room, id, object, None).unwrap()
    }

    const CAROL: &str = "@carol:remote.test";

    /// Carol of remote.test joins the (public) room.
    fn carol_joins(t: &TwoInARoom, remote: &Remote) -> OwnedEventId {
        let auth = current(
            t,
            &[
                ("m.room.create", ""),
                ("m.room.join_rules", ""),
                ("m.room.power_levels", ""),
            ],
        );
        let join = remote.event(
            t,
            CAROL,
            "m.room.member",
            Some(CAROL),
            json!({"membership": "join"}),
            &ends(t),
            &auth,
        );
        let id = join.0.clone();
        assert!(matches!(receive(t, join), Received::Accepted { .. }));
        id
    }

    /// The content of a state event of the room's current state.
    fn current_content(t: &TwoInARoom, event_type: &str, state_key: &str) -> Option<JsonValue> {
        let snapshot = t.s.timeline.room_or_404(&t.room).unwrap().state_snapshot;
        t.s.timeline
            .state_event(&t.s, snapshot, event_type, state_key)
            .unwrap()
            .map(|e| serde_json::to_value(e.content()).unwrap())
    }

    fn give_carol_power(t: &TwoInARoom) {
        let mut levels = current_content(t, "m.room.power_levels", "").unwrap();
        levels["users"][CAROL] = json!(50);
        let spec = EventSpec::state(StateEventType::RoomPowerLevels, "", levels).unwrap();
        t.s.timeline.append(&t.s, &t.room, &t.alice, spec, None).unwrap();
    }

    fn newest_in_timeline(t: &TwoInARoom) -> OwnedEventId {
        let record = t.s.timeline.room_or_404(&t.room).unwrap();
        t.s.timeline
            .events(&record, None, crate::database::Direction::Backward)
            .next()
            .unwrap()
            .unwrap()
            .event_id
    }

    /// Fetched state (as a join or a gap brings it) is checked against
    /// each event's own auth events, oldest first, in one go: an event the
    /// rules refuse is kept as rejected, the others as outliers.
    #[test]
    fn fetched_outliers_are_checked_against_their_own_auth_events() {
        let t = two_in_a_room();
        let remote = remote();
        let join = carol_joins(&t, &remote);
        let record = t.s.timeline.room_or_404(&t.room).unwrap();
        let (_, rules) = TimelineService::rules(&record).unwrap();
        let base = current(
            &t,
            &[
                ("m.room.create", ""),
                ("m.room.join_rules", ""),
                ("m.room.power_levels", ""),
            ],
        );
        let mut auth = base.clone();
        auth.push(join.clone());
        // Carol (power 0) may not set the topic (50 needed) ...
        let topic = remote.event(
            &t,
            CAROL,
            "m.room.topic",
            Some(""),
            json!({"topic": "mine now"}),
            &ends(&t),
            &auth,
        );
        // ... but may set her own display name.
        let rename = remote.event(
            &t,
            CAROL,
            "m.room.member",
            Some(CAROL),
            json!({"membership": "join", "displayname": "Carol"}),
            &ends(&t),
            &auth,
        );
        let (topic_id, rename_id) = (topic.0.clone(), rename.0.clone());
        let rejected =
            t.s.timeline
                .store_outliers(&t.room, &rules, vec![rename, topic])
                .unwrap();
        assert_eq!(rejected, vec![topic_id.clone()]);
        assert!(t.s.timeline.is_rejected(&topic_id).unwrap());
        assert!(!t.s.timeline.is_rejected(&rename_id).unwrap());
        assert!(t.s.timeline.event(&rename_id).unwrap().is_some(), "kept as an outlier");
    }

    #[test]
    fn a_remote_member_joins_and_speaks_and_a_stranger_is_rejected_once_and_for_all() {
        let t = two_in_a_room();
        let remote = remote();
        let join = carol_joins(&t, &remote);
        let carol: OwnedUserId = CAROL.try_into().unwrap();
        assert!(t.s.timeline.is_joined(&t.room, &carol).unwrap());
        assert_eq!(ends(&t).iter().map(|r| r.event_id.clone()).collect::<Vec<_>>(), [join]);

        let auth = current(
            &t,
            &[
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", CAROL),
            ],
        );
        let hello = remote.event(
            &t,
            CAROL,
            "m.room.message",
            None,
            json!({"body": "hi", "msgtype": "m.text"}),
            &ends(&t),
            &auth,
        );
        let hello_id = hello.0.clone();
        assert!(matches!(receive(&t, hello.clone()), Received::Accepted { .. }));
        assert_eq!(newest_in_timeline(&t), hello_id);
        assert_eq!(receive(&t, hello), Received::AlreadyKnown, "a repeat changes nothing");

        // Dave never joined: his event is refused by its own auth events.
        let dave = "@dave:remote.test";
        let auth = current(&t, &[("m.room.create", ""), ("m.room.power_levels", "")]);
        let spam = remote.event(
            &t,
            dave,
            "m.room.message",
            None,
            json!({"body": "buy"}),
            &ends(&t),
            &auth,
        );
        let spam_id = spam.0.clone();
        let Received::Rejected(reason) = receive(&t, spam.clone()) else {
            panic!("a non-member's message must be rejected");
        };
        assert_eq!(receive(&t, spam), Received::Rejected(reason), "remembered");
        assert!(t.s.timeline.is_rejected(&spam_id).unwrap());
        assert!(t.s.timeline.event(&spam_id).unwrap().is_none(), "never shown");
        assert_eq!(newest_in_timeline(&t), hello_id);
        assert_eq!(ends(&t)[0].event_id, hello_id);

        // An event that builds on a rejected one is rejected too.
        let mut auth = current(&t, &[("m.room.create", ""), ("m.room.power_levels", "")]);
        auth.push(spam_id);
        let follow = remote.event(
            &t,
            CAROL,
            "m.room.message",
            None,
            json!({"body": "x"}),
            &ends(&t),
            &auth,
        );
        assert!(matches!(receive(&t, follow), Received::Rejected(_)));
    }

    #[test]
    fn in_a_room_of_version_12_the_unlisted_create_event_still_authorizes() {
        let t = two_in_a_room_of(Some(ruma::RoomVersionId::V12));
        let remote = remote();
        // Since version 12 the create event is never among the auth events.
        let auth = current(&t, &[("m.room.join_rules", ""), ("m.room.power_levels", "")]);
        let join = remote.event(
            &t,
            CAROL,
            "m.room.member",
            Some(CAROL),
            json!({"membership": "join"}),
            &ends(&t),
            &auth,
        );
        let outcome = receive(&t, join);
        assert!(matches!(outcome, Received::Accepted { .. }), "{outcome:?}");
        let carol: OwnedUserId = CAROL.try_into().unwrap();
        assert!(t.s.timeline.is_joined(&t.room, &carol).unwrap());
    }

    #[test]
    fn events_that_reference_unknown_events_wait_for_them() {
        let t = two_in_a_room();
        let remote = remote();
        carol_joins(&t, &remote);
        let unknown = EventRef {
            event_id: "$unknownunknownunknownunknownunknownunknown1".try_into().unwrap(),
            sha256: String::new(),
        };
        let auth = current(
            &t,
            &[
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", CAROL),
            ],
        );
        let later = remote.event(
            &t,
            CAROL,
            "m.room.message",
            None,
            json!({"body": "?"}),
            std::slice::from_ref(&unknown),
            &auth,
        );
        assert_eq!(
            receive(&t, later),
            Received::Missing {
                auth: vec![],
                prev: vec![unknown.event_id.clone()]
            }
        );
        assert_eq!(ends(&t).len(), 1, "nothing stored");
    }

    #[test]
    fn a_fork_from_another_server_merges_into_the_current_state() {
        let t = two_in_a_room();
        let remote = remote();
        carol_joins(&t, &remote);
        give_carol_power(&t);
        let fork = ends(&t);

        // Here: alice sets the topic. There, not knowing it: carol renames.
        let topic = EventSpec::state(StateEventType::RoomTopic, "", json!({"topic": "alice's"})).unwrap();
        t.s.timeline.append(&t.s, &t.room, &t.alice, topic, None).unwrap();
        let auth = current(
            &t,
            &[
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", CAROL),
            ],
        );
        let rename = remote.event(
            &t,
            CAROL,
            "m.room.name",
            Some(""),
            json!({"name": "carol's"}),
            &fork,
            &auth,
        );
        let rename_id = rename.0.clone();
        assert!(matches!(receive(&t, rename), Received::Accepted { .. }));

        assert_eq!(ends(&t).len(), 2, "the room ends in both branches");
        assert_eq!(current_content(&t, "m.room.name", "").unwrap()["name"], "carol's");
        assert_eq!(current_content(&t, "m.room.topic", "").unwrap()["topic"], "alice's");
        assert_eq!(newest_in_timeline(&t), rename_id, "clients see the remote event");

        // The next local event joins the branches.
        let text = EventSpec {
            event_type: "m.room.message".into(),
            content: to_object(json!({"body": "both"})).unwrap(),
            state_key: None,
            redacts: None,
            origin_server_ts: None,
        };
        let merged = t.s.timeline.append(&t.s, &t.room, &t.bob, text, None).unwrap();
        let pdu = t.s.timeline.pdu(&merged).unwrap().unwrap();
        assert_eq!(pdu.prev_events().count(), 2);
        assert_eq!(ends(&t).len(), 1);
        assert_eq!(current_content(&t, "m.room.name", "").unwrap()["name"], "carol's");
    }

    #[test]
    fn an_event_the_current_state_forbids_is_soft_failed_and_hidden() {
        let t = two_in_a_room();
        let remote = remote();
        carol_joins(&t, &remote);
        give_carol_power(&t);
        let fork = ends(&t);
        let auth = current(
            &t,
            &[
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", CAROL),
            ],
        );

        // Here, alice bans carol; carol's rename was made before she knew.
        let carol: OwnedUserId = CAROL.try_into().unwrap();
        t.s.rooms
            .set_membership(&t.s, &t.room, &t.alice, &carol, "ban", None)
            .unwrap();
        let ban = newest_in_timeline(&t);
        let rename = remote.event(
            &t,
            CAROL,
            "m.room.name",
            Some(""),
            json!({"name": "carol's"}),
            &fork,
            &auth,
        );
        let rename_id = rename.0.clone();
        assert_eq!(receive(&t, rename.clone()), Received::SoftFailed);
        assert_eq!(receive(&t, rename), Received::AlreadyKnown);

        assert!(
            current_content(&t, "m.room.name", "").is_none(),
            "the state is unchanged"
        );
        assert_eq!(newest_in_timeline(&t), ban, "clients never see it");
        assert_eq!(ends(&t).iter().map(|r| r.event_id.clone()).collect::<Vec<_>>(), [ban]);
        assert_eq!(t.s.timeline.event(&rename_id).unwrap().unwrap().count, 0);
        assert!(!t.s.timeline.is_joined(&t.room, &carol).unwrap());

        // It stays in the graph: an event after it is judged on its state,
        // and soft-fails in turn.
        let after = t.s.timeline.event_ref(&rename_id).unwrap();
        let more = remote.event(
            &t,
            CAROL,
            "m.room.message",
            None,
            json!({"body": "hello?"}),
            &[after],
            &auth,
        );
        assert_eq!(receive(&t, more), Received::SoftFailed);
    }
}
