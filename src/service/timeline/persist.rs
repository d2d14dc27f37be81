//! Persisting an authorized event, local or remote: one atomic batch with
//! its indexes, the state after it, the room's new forward extremities and
//! current state, and the membership changes that state brings.
//!
//! The room's end is a set of forward extremities: an event removes its
//! `prev_events` from the set and joins it. Local events reference every
//! extremity, so a room built here stays linear; events from other servers
//! may not, and then the current state is the resolution of the states
//! after each extremity.

use std::sync::Arc;

use ruma::canonical_json::{redact, RedactedBecause};
use ruma::events::TimelineEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::Event;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedUserId};

use super::{internal, state_order, PersistedEvent, StoredEvent, TimelineService, Txn};
use crate::database::rooms::{EventMeta, OutlierKind, OutlierRecord, RoomRecord, TimelineRecord};
use crate::database::Batch;
use crate::service::pdu::Pdu;
use crate::service::state::StateMap;
use crate::service::{ServiceError, ServiceResult, Services};

/// An authorized event on its way to storage.
pub(super) struct Authorized<'a> {
    /// The room; for a version 12 create event, derived from the event.
    pub room_id: OwnedRoomId,
    /// `None` when this event creates the room's record (its create event,
    /// or the first event of a room joined over federation).
    pub record: Option<RoomRecord>,
    pub version: &'a str,
    pub rules: &'a RoomVersionRules,
    pub event_id: OwnedEventId,
    /// The PDU as it is stored (without `event_id` and `unsigned` yet).
    pub object: CanonicalJsonObject,
    pub pdu: Arc<Pdu>,
    /// Snapshot of the state before the event, and that state parsed.
    pub state_before: (u64, Arc<Vec<StoredEvent>>),
    pub txn: Option<&'a Txn>,
    /// The event a redaction redacts, when it is stored here and the
    /// redaction may apply to it.
    pub redaction_target: Option<(EventMeta, StoredEvent)>,
    /// Authorized by the state before it but not by the room's current
    /// state: kept in the room graph, hidden from clients, not an extremity.
    pub soft_failed: bool,
    /// Stored as an outlier until now (state fetched for a join, say).
    pub was_outlier: bool,
    /// Fetched from the room's past: stored at this (backfilled) position,
    /// before the events clients have seen; the room's end, current state
    /// and memberships stay as they are, and nobody is told.
    pub backfilled: Option<u64>,
}

/// What persisting did: the stream position (0 for a soft-failed event).
pub(super) struct Persisted {
    pub count: u64,
}

impl TimelineService {
    /// Stores `event` atomically. Runs under the room's write lock.
    pub(super) fn persist(&self, s: &Services, event: Authorized<'_>) -> ServiceResult<Persisted> {
        let Authorized {
            room_id,
            record,
            version,
            rules,
            event_id,
            mut object,
            pdu,
            state_before: (before_id, state_before),
            txn,
            redaction_target,
            soft_failed,
            was_outlier,
            backfilled,
        } = event;
        let event_type = pdu.event_type().clone();
        let state_key = pdu.state_key().map(str::to_owned);

        // The room's end: this event replaces what it references.
        let mut extremities: Vec<String> = record
            .as_ref()
            .map(|r| r.forward_extremities.clone())
            .unwrap_or_default();
        extremities.retain(|e| !pdu.prev_events().any(|p| p.as_str() == e));
        let forked = !extremities.is_empty();
        extremities.push(event_id.to_string());

        // The event's short ID and its mapping go into the event's batch,
        // unless a fork's state resolution reads it before the batch lands
        // (then it is written first: short IDs are content-addressed, so
        // one left behind by a failure is unused, never wrong).
        let mut batch = Batch::new();
        let short_event_id = if (forked && !soft_failed) || backfilled.is_some() {
            s.state.short_event_id(&event_id)?
        } else {
            s.state.new_short_event_id(&mut batch, &event_id)?
        };
        // Only a state event needs the snapshot's map: it makes a new one.
        let mut replaced = None;
        let after_id = match &state_key {
            Some(state_key) => {
                let mut state_after = s.state.load_snapshot(before_id)?;
                let key = s.state.short_state_key(&event_type.to_string(), state_key)?;
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
        let json = serde_json::to_string(&object).map_err(|e| internal("PDU", e))?;

        if soft_failed {
            let Some(record) = record else {
                return Err(internal("soft-failed event", "the room has no record"));
            };
            // In the graph (its state is what later events reference), not
            // in the timeline.
            let meta = EventMeta {
                short_room_id: record.short_id,
                count: 0,
                short_event_id,
                state_before: before_id,
                state_after: after_id,
            };
            self.tables.put_event_meta(&mut batch, event_id.as_str(), &meta);
            let outlier = OutlierRecord {
                room_id: room_id.to_string(),
                json,
                kind: OutlierKind::SoftFailed,
            };
            self.tables.put_outlier(&mut batch, event_id.as_str(), &outlier);
            self.tables.write(batch)?;
            tracing::info!(%event_id, %room_id, "event soft-failed: not allowed by the room's current state");
            return Ok(Persisted { count: 0 });
        }

        if let Some(position) = backfilled {
            let Some(record) = record else {
                return Err(internal("backfilled event", "the room has no record"));
            };
            let meta = EventMeta {
                short_room_id: record.short_id,
                count: position,
                short_event_id,
                state_before: before_id,
                state_after: after_id,
            };
            let stored = StoredEvent {
                event_id: event_id.clone(),
                count: position,
                json: object,
                txn: None,
            };
            let record_json = TimelineRecord { json, txn: None };
            self.tables
                .put_event(&mut batch, event_id.as_str(), &meta, &record_json);
            if was_outlier {
                self.tables.delete_outlier(&mut batch, event_id.as_str());
            }
            let redacted = self.apply_redaction(s, &mut batch, &room_id, rules, &stored.json, redaction_target)?;
            s.relations.index(s, &mut batch, &room_id, &stored)?;
            s.search.index(&mut batch, record.short_id, &stored);
            self.tables.write(batch)?;
            self.meta_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(&event_id, meta);
            self.after_redaction(s, redacted);
            return Ok(Persisted { count: position });
        }

        let ticket = self.stream.begin()?;
        let count = ticket.0;
        let written = (|| {
            let old_current = record.as_ref().map(|r| r.state_snapshot);
            let mut room_record = match record {
                Some(r) => r,
                None => RoomRecord {
                    short_id: self.tables.next_count()?,
                    version: version.to_owned(),
                    state_snapshot: before_id,
                    forward_extremities: Vec::new(),
                    depth: 0,
                    last_count: 0,
                },
            };
            let meta = EventMeta {
                short_room_id: room_record.short_id,
                count,
                short_event_id,
                state_before: before_id,
                state_after: after_id,
            };
            let stored = TimelineRecord {
                json,
                txn: txn.map(|t| (t.device_id.clone(), t.txn_id.clone())),
            };
            self.tables.put_event(&mut batch, event_id.as_str(), &meta, &stored);
            // An outlier (say, state fetched for a join) now in the timeline.
            if was_outlier {
                self.tables.delete_outlier(&mut batch, event_id.as_str());
            }

            let new_current = self.current_state_after(s, rules, &extremities, &pdu, after_id)?;
            room_record.forward_extremities = extremities;
            room_record.state_snapshot = new_current;
            room_record.depth = room_record.depth.max(u64::from(pdu.depth()));
            room_record.last_count = count;
            self.tables.put_room(&mut batch, room_id.as_str(), &room_record);

            let mut woken: Vec<OwnedUserId> = Vec::new();
            // Linear: the event builds on the current state and ends the room
            // alone. A room's first event builds on nothing, except a join to
            // a room of another server, which builds on the state it sent.
            let linear = match old_current {
                Some(old) => old == before_id && new_current == after_id,
                None => state_before.is_empty(),
            };
            let membership_changed = if linear {
                // The common case: only this event changed the state.
                match (&event_type, &state_key, membership_of(&object)) {
                    (TimelineEventType::RoomMember, Some(target), Some(membership)) => {
                        self.tables
                            .put_membership(&mut batch, room_id.as_str(), target, membership, count);
                        if let Ok(user) = OwnedUserId::try_from(target.as_str()) {
                            woken.push(user);
                        }
                        true
                    }
                    _ => false,
                }
            } else {
                let changed = self.membership_changes(s, old_current, new_current, (short_event_id, &object))?;
                for (user, membership) in &changed {
                    self.tables
                        .put_membership(&mut batch, room_id.as_str(), user, membership, count);
                    if let Ok(user) = OwnedUserId::try_from(user.as_str()) {
                        woken.push(user);
                    }
                }
                !changed.is_empty()
            };
            if let Some(txn) = txn {
                self.tables.put_txn(
                    &mut batch,
                    pdu.sender().as_str(),
                    &txn.device_id,
                    &txn.txn_id,
                    event_id.as_str(),
                    crate::service::now_ms(),
                )?;
            }
            let redacted = self.apply_redaction(s, &mut batch, &room_id, rules, &object, redaction_target)?;
            let stored_event = StoredEvent {
                event_id: event_id.clone(),
                count,
                json: object.clone(),
                txn: stored.txn.clone(),
            };
            s.relations.index(s, &mut batch, &room_id, &stored_event)?;
            s.search.index(&mut batch, room_record.short_id, &stored_event);
            // Unread notifications of the room's other local members.
            let mut state_after_parsed = None;
            let mut unread_changes = None;
            if event_type != TimelineEventType::RoomCreate {
                // The state after this event; the event itself is not
                // readable by its short ID until the batch lands.
                let mut state = state_before.clone();
                if state_key.is_some() {
                    let mut changed: Vec<StoredEvent> = state.as_ref().clone();
                    match changed.binary_search_by(|e| state_order(e).cmp(&state_order(&stored_event))) {
                        Ok(i) => changed[i] = stored_event.state_entry(),
                        Err(i) => changed.insert(i, stored_event.state_entry()),
                    }
                    state = Arc::new(changed);
                    state_after_parsed = Some(state.clone());
                }
                let context = s.push.room_context(s, &room_id, rules, after_id, &state);
                if context.recipients.iter().any(|(user, _)| user != pdu.sender()) {
                    let event = stored_event.to_client(true, None);
                    unread_changes = Some(s.push.notify(s, &mut batch, &room_id, &event, count, &context)?);
                }
            }
            let subscribers = self.subscribers();
            let persisted = PersistedEvent {
                room_id: &room_id,
                event_id: &event_id,
                pdu: &pdu,
                object: &object,
                count,
            };
            for subscriber in &subscribers {
                if let Err(e) = subscriber.stage(s, &mut batch, &persisted) {
                    subscribers.iter().for_each(|sub| sub.aborted(&persisted));
                    return Err(e);
                }
            }
            if let Err(e) = self.tables.write(batch) {
                subscribers.iter().for_each(|sub| sub.aborted(&persisted));
                return Err(e.into());
            }
            subscribers.iter().for_each(|sub| sub.committed(&persisted));
            if let Some(changes) = unread_changes {
                s.outbox.committed(changes.pushed());
                s.push.remember_unread(&room_id, changes);
            }
            self.remember_room(&room_id, &room_record);
            // Syncs and scrollback read the newest events first.
            self.meta_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(&event_id, meta);
            // The caches learn of the change only now that it has landed.
            let redacts_state = redacted.as_ref().is_some_and(|(_, state)| *state);
            self.after_redaction(s, redacted);
            // The next event of the room references this one.
            self.pdu_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pdu.clone());
            if membership_changed {
                self.members_cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(room_id.as_str());
            }
            if !redacts_state {
                if let Some(state) = state_after_parsed {
                    // The next event's state before: worth keeping parsed. No
                    // generation check needed: only a redaction in this room,
                    // which waits for its lock, could make it stale.
                    self.remember_state(after_id, room_id.to_string(), state);
                }
            }
            for (user, membership) in self.members(&room_id)?.iter() {
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
                Ok(Persisted { count })
            }
            Err(e) => {
                self.stream.finish(ticket, []);
                Err(e)
            }
        }
    }

    /// Redacts the event a redaction (`object`) targets, in the
    /// redaction's batch. Returns the redacted event's ID and whether it is
    /// a state event, for [`Self::after_redaction`].
    fn apply_redaction(
        &self,
        s: &Services,
        batch: &mut Batch,
        room_id: &ruma::RoomId,
        rules: &RoomVersionRules,
        object: &CanonicalJsonObject,
        target: Option<(EventMeta, StoredEvent)>,
    ) -> ServiceResult<Option<(OwnedEventId, bool)>> {
        let Some((target_meta, target)) = target else {
            return Ok(None);
        };
        let redacted = (target.event_id.clone(), target.state_key().is_some());
        s.search.unindex(batch, target_meta.short_room_id, &target);
        s.relations.unindex(batch, room_id, &target)?;
        let because = RedactedBecause::from_json(client_object(object));
        if let Ok(mut redacted) = redact(target.json, &rules.redaction, Some(because)) {
            // Redaction drops `event_id` from v3+ PDUs; it stays with the stored copy.
            redacted.insert("event_id".to_owned(), target.event_id.as_str().into());
            let json = serde_json::to_string(&redacted).map_err(|e| internal("redacted PDU", e))?;
            self.tables
                .replace_event(batch, &target_meta, &TimelineRecord { json, txn: target.txn });
        }
        Ok(Some(redacted))
    }

    /// The caches learn of a redaction once it has landed.
    fn after_redaction(&self, s: &Services, redacted: Option<(OwnedEventId, bool)>) {
        let Some((event_id, is_state)) = redacted else {
            return;
        };
        self.pdu_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(&event_id);
        if is_state {
            self.clear_state_cache();
            s.push.forget_contexts();
        }
    }

    /// The room's current state once `event` (whose state after is
    /// `after_id`, not stored yet) is among its `extremities`: the state
    /// after the one extremity, or the resolution of the states after each.
    fn current_state_after(
        &self,
        s: &Services,
        rules: &RoomVersionRules,
        extremities: &[String],
        event: &Arc<Pdu>,
        after_id: u64,
    ) -> ServiceResult<u64> {
        let mut snapshots = vec![after_id];
        for id in extremities {
            if id == event.event_id.as_str() {
                continue;
            }
            let id = EventId::parse(id).map_err(|e| internal("stored extremity", e))?;
            let meta = self
                .event_meta(&id)?
                .ok_or_else(|| internal("forward extremity", format!("{id} is not stored")))?;
            if !snapshots.contains(&meta.state_after) {
                snapshots.push(meta.state_after);
            }
        }
        if snapshots.len() == 1 {
            return Ok(after_id);
        }
        self.resolve_snapshots_with(s, rules, &snapshots, Some(event))
    }

    /// `(user_id, membership)` of each member whose membership event differs
    /// between two states (every member when there was no state before).
    /// `pending` is the event being persisted, not readable yet.
    fn membership_changes(
        &self,
        s: &Services,
        old: Option<u64>,
        new: u64,
        pending: (u64, &CanonicalJsonObject),
    ) -> ServiceResult<Vec<(String, String)>> {
        let old: StateMap = match old {
            Some(id) => s.state.load_snapshot(id)?,
            None => StateMap::new(),
        };
        let new = s.state.load_snapshot(new)?;
        let mut changed = Vec::new();
        for (key, short_event) in &new {
            if old.get(key) == Some(short_event) {
                continue;
            }
            let (event_type, user) = s.state.state_key(*key)?;
            if event_type != "m.room.member" {
                continue;
            }
            if *short_event == pending.0 {
                if let Some(membership) = membership_of(pending.1) {
                    changed.push((user, membership.to_owned()));
                }
                continue;
            }
            let event_id = s.state.event_id(*short_event)?;
            let Some(event) = self.event(&event_id)? else {
                continue;
            };
            if let Some(membership) = event.content_str("membership") {
                changed.push((user, membership.to_owned()));
            }
        }
        Ok(changed)
    }
}

/// The `membership` of a member event in the stored (or federation) form.
pub fn membership_of(object: &CanonicalJsonObject) -> Option<&str> {
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

/// A version 12 room's ID: its create event's ID with the `!` sigil.
pub fn room_id_of_v12_create(event_id: &EventId) -> ServiceResult<OwnedRoomId> {
    OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..])).map_err(|e| internal("room ID", e))
}
