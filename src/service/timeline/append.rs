//! Appending events: build the PDU, authorize it, store it atomically.

use std::sync::Arc;

use ruma::canonical_json::{redact, RedactedBecause};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::events::{RoomCreateEvent, RoomPowerLevelsEvent};
use ruma::state_res::{auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, RoomVersionId, UserId,
};
use serde_json::Value as JsonValue;

use super::{
    internal, state_order, EventSpec, FailedLookup, StoredEvent, TimelineService, Txn, MAX_EVENT_TYPE_BYTES,
    MAX_STATE_KEY_BYTES,
};
use crate::database::rooms::{EventMeta, RoomRecord, TimelineRecord};
use crate::database::Batch;
use crate::service::pdu::{build_pdu, EventRef, NewPdu, Pdu};
use crate::service::state::StateMap;
use crate::service::{random_string, ServiceError, ServiceResult, Services};

/// The state before an event, as the auth rules look it up: the parsed
/// (cached) room state finds the event ID, the PDU cache the whole event.
struct StateView<'a> {
    timeline: &'a TimelineService,
    state: Option<Arc<Vec<StoredEvent>>>,
}

impl StateView<'_> {
    fn get(&self, event_type: &str, state_key: &str) -> ServiceResult<Option<Arc<Pdu>>> {
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
        };
        let event_id = self.append_inner(s, room_id.as_deref(), None, &rules, version, creator, spec, None)?;
        match room_id {
            Some(id) => Ok(id),
            None => OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..])).map_err(|e| internal("room ID", e)),
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
        // A room ending in several events (a fork) builds on their resolved state.
        let base_snapshot = match &record {
            Some(r) if r.forward_extremities.len() > 1 => Some(self.resolve_forks(s, rules, &r.forward_extremities)?),
            Some(r) => Some(r.state_snapshot),
            None => None,
        };
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
            origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
        };
        let (event_id, mut object) = build_pdu(new, rules, &s.config.server_name, &s.server_keys)?;
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
            Some(target) => Some(self.check_redaction(&view, rules, sender, room_id, target)?),
            None => None,
        };

        // The event's short ID and its mapping go into the event's batch.
        let mut batch = Batch::new();
        let short_event_id = s.state.new_short_event_id(&mut batch, &event_id)?;
        let before_id = match base_snapshot {
            Some(id) => id,
            None => s.state.save_snapshot(&StateMap::new(), None)?,
        };
        // Only a state event needs the snapshot's map: it makes a new one.
        let mut replaced = None;
        let after_id = match &spec.state_key {
            Some(state_key) => {
                let mut state_after = match base_snapshot {
                    Some(id) => s.state.load_snapshot(id)?,
                    None => StateMap::new(),
                };
                let key = s.state.short_state_key(&spec.event_type.to_string(), state_key)?;
                replaced = state_after.insert(key, short_event_id);
                s.state.save_snapshot(&state_after, Some(before_id))?
            }
            None => before_id,
        };

        // Server-side `unsigned`: what the state event replaced.
        if let Some(prev_short) = replaced {
            let prev_id = s.state.event_id(prev_short)?;
            if let Some(prev) = self.event(&prev_id)? {
                let mut unsigned = CanonicalJsonObject::new();
                unsigned.insert("replaces_state".to_owned(), prev_id.as_str().into());
                if let Some(c) = prev.json.get("content") {
                    unsigned.insert("prev_content".to_owned(), c.clone());
                }
                unsigned.insert("prev_sender".to_owned(), prev.sender().into());
                object.insert("unsigned".to_owned(), CanonicalJsonValue::Object(unsigned));
            }
        }
        object.insert("event_id".to_owned(), event_id.as_str().into());

        let ticket = self.stream.begin()?;
        let count = ticket.0;
        let written = (|| {
            let (room_id_owned, mut room_record) = match record {
                Some(r) => (room_id.expect("rooms with a record have an ID").to_owned(), r),
                None => {
                    let id = match room_id {
                        Some(id) => id.to_owned(),
                        None => OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..]))
                            .map_err(|e| internal("room ID", e))?,
                    };
                    let short_id = self.tables.next_count()?;
                    let r = RoomRecord {
                        short_id,
                        version: version.to_string(),
                        state_snapshot: before_id,
                        forward_extremities: Vec::new(),
                        depth: 0,
                        last_count: 0,
                    };
                    (id, r)
                }
            };
            let meta = EventMeta {
                short_room_id: room_record.short_id,
                count,
                short_event_id,
                state_before: before_id,
                state_after: after_id,
            };
            let json = serde_json::to_string(&object).map_err(|e| internal("PDU", e))?;
            let stored = TimelineRecord {
                json,
                txn: txn.map(|t| (t.device_id.clone(), t.txn_id.clone())),
            };
            self.tables.put_event(&mut batch, event_id.as_str(), &meta, &stored);
            room_record.state_snapshot = after_id;
            room_record.forward_extremities = vec![event_id.to_string()];
            room_record.depth = depth;
            room_record.last_count = count;
            self.tables.put_room(&mut batch, room_id_owned.as_str(), &room_record);
            let mut woken: Vec<OwnedUserId> = Vec::new();
            if spec.event_type == TimelineEventType::RoomMember {
                if let (Some(target), Some(membership)) = (&spec.state_key, membership_of(&object)) {
                    self.tables
                        .put_membership(&mut batch, room_id_owned.as_str(), target, membership, count);
                    if let Ok(user) = OwnedUserId::try_from(target.as_str()) {
                        woken.push(user);
                    }
                }
            }
            if let Some(txn) = txn {
                self.tables.put_txn(
                    &mut batch,
                    sender.as_str(),
                    &txn.device_id,
                    &txn.txn_id,
                    event_id.as_str(),
                    crate::service::now_ms(),
                )?;
            }
            let redacts_state = redaction_target.as_ref().is_some_and(|(_, t)| t.state_key().is_some());
            let redacted_id = redaction_target.as_ref().map(|(_, t)| t.event_id.clone());
            if let Some((target_meta, target)) = redaction_target {
                s.search.unindex(&mut batch, target_meta.short_room_id, &target);
                s.relations.unindex(&mut batch, &room_id_owned, &target)?;
                let because = RedactedBecause::from_json(client_object(&object));
                if let Ok(mut redacted) = redact(target.json, &rules.redaction, Some(because)) {
                    // Redaction drops `event_id` from v3+ PDUs; it stays with the stored copy.
                    redacted.insert("event_id".to_owned(), target.event_id.as_str().into());
                    let json = serde_json::to_string(&redacted).map_err(|e| internal("redacted PDU", e))?;
                    self.tables
                        .replace_event(&mut batch, &target_meta, &TimelineRecord { json, txn: target.txn });
                }
            }
            let stored_event = StoredEvent {
                event_id: event_id.clone(),
                count,
                json: object.clone(),
                txn: stored.txn.clone(),
            };
            s.relations.index(s, &mut batch, &room_id_owned, &stored_event)?;
            s.search.index(&mut batch, room_record.short_id, &stored_event);
            // Unread notifications of the room's other local members.
            let mut state_after_parsed = None;
            let mut unread_changes = None;
            if spec.event_type != TimelineEventType::RoomCreate {
                // The state after this event; the event itself is not
                // readable by its short ID until the batch lands.
                let mut state = match &state_before {
                    Some(state) => state.clone(),
                    None => self.state_events(s, before_id)?,
                };
                if spec.state_key.is_some() {
                    let mut changed: Vec<StoredEvent> = state.as_ref().clone();
                    match changed.binary_search_by(|e| state_order(e).cmp(&state_order(&stored_event))) {
                        Ok(i) => changed[i] = stored_event.state_entry(),
                        Err(i) => changed.insert(i, stored_event.state_entry()),
                    }
                    state = std::sync::Arc::new(changed);
                    state_after_parsed = Some(state.clone());
                }
                let context = s.push.room_context(s, rules, after_id, &state);
                if context.recipients.iter().any(|(user, _)| user != sender) {
                    let event = stored_event.to_client(true, None);
                    unread_changes = Some(s.push.notify(s, &mut batch, &room_id_owned, &event, count, &context)?);
                }
            }
            self.tables.write(batch)?;
            if let Some(changes) = unread_changes {
                s.push.remember_unread(&room_id_owned, changes);
            }
            self.remember_room(&room_id_owned, &room_record);
            // Syncs and scrollback read the newest events first.
            self.meta_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(&event_id, meta);
            // The caches learn of the change only now that it has landed.
            {
                let mut pdus = self.pdu_cache.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(id) = &redacted_id {
                    pdus.forget(id);
                }
                // The next event of the room references this one.
                pdus.insert(pdu.clone());
            }
            if spec.event_type == TimelineEventType::RoomMember {
                self.members_cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(room_id_owned.as_str());
            }
            if redacts_state {
                self.clear_state_cache();
                s.push.forget_contexts();
            } else if let Some(state) = state_after_parsed {
                // The next event's state before: worth keeping parsed. No
                // generation check needed: only a redaction in this room,
                // which waits for its lock, could make it stale.
                self.remember_state(after_id, room_id_owned.to_string(), state);
            }
            for (user, membership) in self.members(&room_id_owned)?.iter() {
                if matches!(membership.as_str(), "join" | "invite" | "knock") {
                    if let Ok(user) = OwnedUserId::try_from(user.as_str()) {
                        woken.push(user);
                    }
                }
            }
            Ok::<_, ServiceError>(woken)
        })();
        match written {
            Ok(woken) => {
                self.stream.finish(ticket, woken.iter().map(|u| u.as_ref()));
                tracing::debug!(%event_id, count, "event stored");
                Ok(event_id)
            }
            Err(e) => {
                self.stream.finish(ticket, []);
                Err(e)
            }
        }
    }

    /// Checks a redaction of `target` by `sender`; returns the target.
    fn check_redaction(
        &self,
        view: &StateView<'_>,
        rules: &RoomVersionRules,
        sender: &UserId,
        room_id: Option<&RoomId>,
        target: &EventId,
    ) -> ServiceResult<(EventMeta, StoredEvent)> {
        let not_found = || ServiceError::NotFound("the event to redact is not in this room".to_owned());
        let meta = self.tables.event_meta(target.as_str())?.ok_or_else(not_found)?;
        let event = self.event(target)?.ok_or_else(not_found)?;
        let in_room = match (event.json.get("room_id"), room_id) {
            (Some(CanonicalJsonValue::String(r)), Some(room)) => r == room.as_str(),
            _ => false,
        };
        if !in_room {
            return Err(not_found());
        }
        if event.sender() == sender.as_str() {
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
    fn event_ref(&self, event_id: &EventId) -> ServiceResult<EventRef> {
        let pdu = self
            .pdu(event_id)?
            .ok_or_else(|| internal("reference", format!("{event_id} is not stored")))?;
        Ok(EventRef {
            event_id: event_id.to_owned(),
            sha256: pdu.content_sha256().to_owned(),
        })
    }
}

fn membership_of(object: &CanonicalJsonObject) -> Option<&str> {
    match object.get("content") {
        Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
            Some(CanonicalJsonValue::String(m)) => Some(m),
            _ => None,
        },
        _ => None,
    }
}

/// The client-format copy of a PDU kept in `redacted_because`.
fn client_object(object: &CanonicalJsonObject) -> CanonicalJsonObject {
    let mut out = CanonicalJsonObject::new();
    for key in [
        "type",
        "content",
        "sender",
        "origin_server_ts",
        "event_id",
        "room_id",
        "redacts",
    ] {
        if let Some(v) = object.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    out
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
