//! Local events: choose their place in the room (`prev_events`, the
//! `auth_events` from the current state), build and sign the PDU, check it
//! against the auth rules, and hand it to `persist`.

use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::events::{RoomCreateEvent, RoomPowerLevelsEvent};
use ruma::state_res::{auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId,
    RoomVersionId, UserId,
};
use serde_json::Value as JsonValue;

use super::persist::{room_id_of_v12_create, Authorized};
use super::{
    internal, state_order, EventSpec, FailedLookup, StoredEvent, TimelineService, Txn, MAX_EVENT_TYPE_BYTES,
    MAX_STATE_KEY_BYTES,
};
use crate::database::rooms::{EventMeta, RoomRecord};
use crate::service::pdu::{build_pdu, EventRef, NewPdu, Pdu};
use crate::service::state::StateMap;
use crate::service::{random_string, ServiceError, ServiceResult, Services};

/// The state before an event, as the auth rules look it up: the parsed
/// (cached) room state finds the event ID, the PDU cache the whole event.
pub(super) struct StateView<'a> {
    pub timeline: &'a TimelineService,
    pub state: Option<Arc<Vec<StoredEvent>>>,
}

impl StateView<'_> {
    pub fn get(&self, event_type: &str, state_key: &str) -> ServiceResult<Option<Arc<Pdu>>> {
        let Some(state) = self.state.as_ref() else {
            return Ok(None);
        };
        match state.binary_search_by(|e| state_order(e).cmp(&(event_type, Some(state_key)))) {
            // In the state, so stored: a miss is as much a failure as an error.
            Ok(i) => match self.timeline.pdu(&state[i].event_id)? {
                Some(pdu) => Ok(Some(pdu)),
                None => Err(internal("state event", format!("{} is not stored", state[i].event_id))),
            },
            Err(_) => Ok(None),
        }
    }
}

/// A local event built and authorized, not stored yet.
struct Built {
    room_id: OwnedRoomId,
    record: Option<RoomRecord>,
    event_id: OwnedEventId,
    object: CanonicalJsonObject,
    pdu: Arc<Pdu>,
    state_before: (u64, Arc<Vec<StoredEvent>>),
    redaction_target: Option<(EventMeta, StoredEvent)>,
}

impl TimelineService {
    /// Creates a room with its `m.room.create` event; returns the room ID.
    pub fn create_room(
        &self,
        s: &Services,
        version: &RoomVersionId,
        creator: &UserId,
        content: CanonicalJsonObject,
    ) -> ServiceResult<OwnedRoomId> {
        let rules = version
            .rules()
            .ok_or_else(|| ServiceError::UnsupportedRoomVersion(format!("room version {version} is not supported")))?;
        // From v12 the room is named after its create event.
        let room_id = if rules.authorization.room_create_event_id_as_room_id {
            None
        } else {
            Some(
                OwnedRoomId::try_from(format!("!{}:{}", random_string(18), s.config.server_name))
                    .map_err(|e| internal("room ID", e))?,
            )
        };
        let spec = EventSpec {
            event_type: TimelineEventType::RoomCreate,
            content,
            state_key: Some(String::new()),
            redacts: None,
            origin_server_ts: None,
        };
        let event_id = self.append_inner(s, room_id.as_deref(), None, &rules, version, creator, spec, None)?;
        match room_id {
            Some(id) => Ok(id),
            None => room_id_of_v12_create(&event_id),
        }
    }

    /// Authorizes and stores an event from `sender`; returns its ID. With a
    /// transaction, a repeat returns the first event's ID.
    pub fn append(
        &self,
        s: &Services,
        room_id: &RoomId,
        sender: &UserId,
        spec: EventSpec,
        txn: Option<&Txn>,
    ) -> ServiceResult<OwnedEventId> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(txn) = txn {
            if let Some(id) = self.tables.txn_event(sender.as_str(), &txn.device_id, &txn.txn_id)? {
                return OwnedEventId::try_from(id).map_err(|e| internal("stored txn event", e));
            }
        }
        let record = self.room_or_404(room_id)?;
        let (version, rules) = Self::rules(&record)?;
        self.append_inner(s, Some(room_id), Some(record), &rules, &version, sender, spec, txn)
    }

    #[allow(clippy::too_many_arguments)]
    fn append_inner(
        &self,
        s: &Services,
        room_id: Option<&RoomId>,
        record: Option<RoomRecord>,
        rules: &RoomVersionRules,
        version: &RoomVersionId,
        sender: &UserId,
        spec: EventSpec,
        txn: Option<&Txn>,
    ) -> ServiceResult<OwnedEventId> {
        let built = self.build(s, room_id, record, rules, sender, spec)?;
        let event_id = built.event_id.clone();
        self.persist(
            s,
            Authorized {
                room_id: built.room_id,
                record: built.record,
                version: version.as_str(),
                rules,
                event_id: built.event_id,
                object: built.object,
                pdu: built.pdu,
                state_before: built.state_before,
                txn,
                redaction_target: built.redaction_target,
                soft_failed: false,
                was_outlier: false,
                backfilled: None,
            },
        )?;
        Ok(event_id)
    }

    /// Builds, signs and authorizes an event of ours for another server to
    /// sign as well before it is stored (an invite of one of its users).
    /// Returns its ID and PDU; nothing is stored.
    pub fn build_for_signing(
        &self,
        s: &Services,
        room_id: &RoomId,
        sender: &UserId,
        spec: EventSpec,
    ) -> ServiceResult<(OwnedEventId, CanonicalJsonObject, RoomVersionId)> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let record = self.room_or_404(room_id)?;
        let (version, rules) = Self::rules(&record)?;
        let built = self.build(s, Some(room_id), Some(record), &rules, sender, spec)?;
        Ok((built.event_id, built.object, version))
    }

    /// Lays out, signs and authorizes a local event on the room's
    /// current state.
    fn build(
        &self,
        s: &Services,
        room_id: Option<&RoomId>,
        record: Option<RoomRecord>,
        rules: &RoomVersionRules,
        sender: &UserId,
        spec: EventSpec,
    ) -> ServiceResult<Built> {
        // The spec's size limits per key (as Synapse, 413 M_TOO_LARGE).
        if let Some(key) = &spec.state_key {
            if key.len() > MAX_STATE_KEY_BYTES {
                return Err(ServiceError::TooLarge("state_key is longer than 255 bytes".to_owned()));
            }
        }
        if spec.event_type.to_string().len() > MAX_EVENT_TYPE_BYTES {
            return Err(ServiceError::TooLarge(
                "the event type is longer than 255 bytes".to_owned(),
            ));
        }
        // The room's current state: with several forward extremities (a
        // fork), already their resolution (see `persist`).
        let base_snapshot = record.as_ref().map(|r| r.state_snapshot);
        let state_before = match base_snapshot {
            Some(id) => Some(self.state_events(s, id)?),
            None => None,
        };
        let view = StateView {
            timeline: self,
            state: state_before.clone(),
        };

        // auth_events: the state the auth rules look at for this event.
        let content_raw = serde_json::value::to_raw_value(&spec.content).map_err(|e| internal("content", e))?;
        let auth_types = auth_types_for_event(
            &spec.event_type,
            sender,
            spec.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(ServiceError::BadJson)?;
        let mut auth_events = Vec::new();
        for (event_type, state_key) in &auth_types {
            if let Some(pdu) = view.get(&event_type.to_string(), state_key)? {
                auth_events.push(self.event_ref(&pdu.event_id)?);
            }
        }
        let prev_events = match &record {
            Some(r) => r
                .forward_extremities
                .iter()
                .map(|id| {
                    let id = EventId::parse(id).map_err(|e| internal("stored extremity", e))?;
                    self.event_ref(&id)
                })
                .collect::<ServiceResult<Vec<_>>>()?,
            None => Vec::new(),
        };
        let depth = record.as_ref().map_or(1, |r| r.depth + 1);

        let mut content = spec.content;
        let mut redacts = None;
        if let Some(target) = &spec.redacts {
            // v11 moved `redacts` into the content.
            if rules.redaction.content_field_redacts {
                content.insert("redacts".to_owned(), target.as_str().into());
            } else {
                redacts = Some(target.clone());
            }
        }
        let new = NewPdu {
            room_id: room_id.map(ToOwned::to_owned),
            sender: sender.to_owned(),
            event_type: spec.event_type.clone(),
            content,
            state_key: spec.state_key.clone(),
            prev_events,
            auth_events,
            depth,
            redacts,
            origin_server_ts: spec.origin_server_ts.unwrap_or_else(MilliSecondsSinceUnixEpoch::now),
        };
        let (event_id, object) = build_pdu(new, rules, &s.config.server_name, &s.server_keys)?;
        let pdu = Arc::new(Pdu::from_object(event_id.clone(), &object)?);

        // ruma looks events up through `Option`: a storage error is kept
        // aside and fails the send, whatever ruma concluded without it.
        let lookups = FailedLookup::default();
        let independent =
            check_state_independent_auth_rules(&rules.authorization, &pdu, |id: &EventId| lookups.keep(self.pdu(id)));
        lookups.check()?;
        independent.map_err(|reason| ServiceError::Forbidden(format!("the event is not allowed: {reason}")))?;
        let dependent = check_state_dependent_auth_rules(&rules.authorization, &pdu, |t: &StateEventType, k: &str| {
            lookups.keep(view.get(&t.to_string(), k))
        });
        lookups.check()?;
        dependent.map_err(|reason| ServiceError::Forbidden(format!("the event is not allowed: {reason}")))?;

        // A redaction must name an event of this room, and only its sender or
        // someone with the power to redact may apply it.
        let redaction_target = match &spec.redacts {
            Some(target) => Some(self.check_redaction(&view, rules, sender, room_id, target, false)?),
            None => None,
        };

        let room_id = match room_id {
            Some(id) => id.to_owned(),
            None => room_id_of_v12_create(&event_id)?,
        };
        let state_before = match (base_snapshot, state_before) {
            (Some(id), Some(state)) => (id, state),
            // The create event: the room's state starts empty.
            _ => (s.state.save_snapshot(&StateMap::new(), None)?, Arc::new(Vec::new())),
        };
        Ok(Built {
            room_id,
            record,
            event_id,
            object,
            pdu,
            state_before,
            redaction_target,
        })
    }

    /// Checks a redaction of `target` by `sender`; returns the target.
    pub(super) fn check_redaction(
        &self,
        view: &StateView<'_>,
        rules: &RoomVersionRules,
        sender: &UserId,
        room_id: Option<&RoomId>,
        target: &EventId,
        from_remote: bool,
    ) -> ServiceResult<(EventMeta, StoredEvent)> {
        let not_found = || ServiceError::NotFound("the event to redact is not in this room".to_owned());
        let meta = self
            .tables
            .event_meta(target.as_str())?
            // Count 0: a soft-failed event, outside the timeline.
            .filter(|meta| meta.count != 0)
            .ok_or_else(not_found)?;
        let event = self.event(target)?.ok_or_else(not_found)?;
        let in_room = match (event.json.get("room_id"), room_id) {
            (Some(CanonicalJsonValue::String(r)), Some(room)) => r == room.as_str(),
            _ => false,
        };
        if !in_room {
            return Err(not_found());
        }
        // Their own events, or for a redaction from another server, its own
        // users' events (that server vouches for them).
        let same_server = from_remote
            && UserId::parse(event.sender())
                .is_ok_and(|target_sender| target_sender.server_name() == sender.server_name());
        if event.sender() == sender.as_str() || same_server {
            return Ok((meta, event));
        }
        let create = view.get("m.room.create", "")?;
        let power_levels = view.get("m.room.power_levels", "")?;
        let power = |user: &UserId| -> i64 {
            if let Some(create) = &create {
                if let Ok(creators) = RoomCreateEvent::new(create.clone()).creators(&rules.authorization) {
                    if rules.authorization.explicitly_privilege_room_creators && creators.contains(user) {
                        return i64::MAX;
                    }
                }
            }
            match &power_levels {
                Some(pl) => RoomPowerLevelsEvent::new(pl.clone())
                    .user_power_level(user, &rules.authorization)
                    .map(i64::from)
                    .unwrap_or(0),
                // Without power levels the creator has 100, everyone else 0.
                None => create
                    .as_ref()
                    .filter(|c| ruma::state_res::Event::sender(&***c) == user)
                    .map_or(0, |_| 100),
            }
        };
        let needed = power_levels
            .as_ref()
            .and_then(|pl| {
                let content: JsonValue = serde_json::from_str(ruma::state_res::Event::content(&**pl).get()).ok()?;
                content.get("redact").and_then(JsonValue::as_i64)
            })
            .unwrap_or(50);
        if power(sender) >= needed {
            Ok((meta, event))
        } else {
            Err(ServiceError::Forbidden(
                "you may redact only your own events without the power to redact".to_owned(),
            ))
        }
    }

    /// `(event_id, sha256 content hash)` of a stored event, for references.
    pub(super) fn event_ref(&self, event_id: &EventId) -> ServiceResult<EventRef> {
        let pdu = self
            .pdu(event_id)?
            .ok_or_else(|| internal("reference", format!("{event_id} is not stored")))?;
        Ok(EventRef {
            event_id: event_id.to_owned(),
            sha256: pdu.content_sha256().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use ruma::events::StateEventType;
    use serde_json::json;

    use crate::database::{keys, Table};
    use crate::service::testing::{two_in_a_room, TwoInARoom};
    use crate::service::timeline::EventSpec;
    use crate::service::ServiceError;

    /// Auth must not run on part of the state: when the power levels cannot
    /// be read, a change that they forbid is not let through as if the
    /// room had none (then anyone may set state); the send fails instead.
    #[test]
    fn a_storage_error_while_authorizing_fails_the_event() {
        let TwoInARoom {
            dir: _dir,
            store,
            s,
            bob,
            room: room_id,
            ..
        } = two_in_a_room();
        let rename = || EventSpec::state(StateEventType::RoomName, "", json!({"name": "bob's"})).unwrap();
        assert!(
            matches!(
                s.timeline.append(&s, &room_id, &bob, rename(), None),
                Err(ServiceError::Forbidden(_))
            ),
            "bob may not rename the room"
        );

        let record = s.timeline.room_or_404(&room_id).unwrap();
        let state = s.timeline.state_events(&s, record.state_snapshot).unwrap();
        let power_levels = state
            .iter()
            .find(|e| e.event_type() == "m.room.power_levels")
            .unwrap()
            .event_id
            .clone();
        let meta = s.timeline.event_meta(&power_levels).unwrap().unwrap();
        store.fail_reads_of(Table::Timeline, keys::encode(&(meta.short_room_id, meta.count)));
        s.timeline.pdu_cache.lock().unwrap().forget(&power_levels);

        let got = s.timeline.append(&s, &room_id, &bob, rename(), None);
        assert!(matches!(got, Err(ServiceError::Database(_))), "{got:?}");
        let renamed = s
            .timeline
            .state_events(&s, s.timeline.room_or_404(&room_id).unwrap().state_snapshot)
            .unwrap()
            .iter()
            .any(|e| e.event_type() == "m.room.name");
        assert!(!renamed, "nothing was stored");
    }
}
