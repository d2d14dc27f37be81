//! Room timelines: building, authorizing and storing events, and reading
//! them back as clients see them.
//!
//! Every local event goes through [`TimelineService::append`]: under the
//! room's write lock it is laid out as a signed PDU of the room's version,
//! checked against the auth rules with ruma's `state_res`, and written with
//! its indexes, the new room state and membership changes in one atomic
//! batch. A refused event leaves nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

use super::pdu::{build_pdu, EventRef, NewPdu, Pdu};
use super::state::StateMap;
use super::stream::Stream;
use super::{now_ms, random_string, ServiceError, ServiceResult, Services};
use crate::database::rooms::{EventMeta, RoomRecord, RoomTables, TimelineRecord, UserRoomRecord};
use crate::database::{Batch, Db, Direction};

/// The spec's limit on a state key (and other IDs).
pub const MAX_STATE_KEY_BYTES: usize = 255;

/// What a client (or the server acting for one) wants to send.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub event_type: TimelineEventType,
    pub content: CanonicalJsonObject,
    pub state_key: Option<String>,
    /// The event a redaction redacts.
    pub redacts: Option<OwnedEventId>,
}

impl EventSpec {
    pub fn state(event_type: StateEventType, state_key: &str, content: JsonValue) -> ServiceResult<Self> {
        Ok(Self {
            event_type: event_type.to_string().into(),
            content: to_object(content)?,
            state_key: Some(state_key.to_owned()),
            redacts: None,
        })
    }
}

/// The client transaction an event was sent in.
#[derive(Debug, Clone)]
pub struct Txn {
    pub device_id: String,
    pub txn_id: String,
}

/// Events per `/messages` page at most.
const MAX_PAGE: usize = 1000;

/// A `/messages` request.
#[derive(Debug)]
pub struct Pagination {
    pub from: Option<String>,
    pub to: Option<String>,
    pub backward: bool,
    pub limit: usize,
    pub filter: ruma::api::client::filter::RoomEventFilter,
}

/// A `/messages` answer, events in the client format.
#[derive(Debug)]
pub struct Page {
    pub start: String,
    pub end: Option<String>,
    pub chunk: Vec<JsonValue>,
    pub state: Vec<JsonValue>,
}

/// A `/context` answer, events in the client format.
#[derive(Debug)]
pub struct Context {
    pub start: String,
    pub end: String,
    pub events_before: Vec<JsonValue>,
    pub event: JsonValue,
    pub events_after: Vec<JsonValue>,
    pub state: Vec<JsonValue>,
}

/// A stored event, read.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event_id: OwnedEventId,
    pub count: u64,
    pub json: CanonicalJsonObject,
    pub txn: Option<(String, String)>,
}

impl StoredEvent {
    fn str_field(&self, name: &str) -> Option<&str> {
        match self.json.get(name) {
            Some(CanonicalJsonValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The room ID (from the event, or for a v12 create event, its ID).
    pub fn room_id(&self) -> Option<String> {
        self.str_field("room_id")
            .map(str::to_owned)
            .or_else(|| self.room_id_of_create())
    }

    pub fn event_type(&self) -> &str {
        self.str_field("type").unwrap_or_default()
    }

    pub fn sender(&self) -> &str {
        self.str_field("sender").unwrap_or_default()
    }

    pub fn state_key(&self) -> Option<&str> {
        self.str_field("state_key")
    }

    pub fn content(&self) -> Option<&CanonicalJsonObject> {
        match self.json.get("content") {
            Some(CanonicalJsonValue::Object(o)) => Some(o),
            _ => None,
        }
    }

    /// A string field of the content.
    pub fn content_str(&self, name: &str) -> Option<&str> {
        match self.content()?.get(name) {
            Some(CanonicalJsonValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The event in the client format: `room_id` only when asked for, and
    /// `unsigned.transaction_id` only for the device that sent it.
    pub fn to_client(&self, with_room_id: bool, viewer: Option<(&UserId, &str)>) -> JsonValue {
        let mut out = serde_json::Map::new();
        for key in ["type", "content", "sender", "origin_server_ts", "state_key", "redacts"] {
            if let Some(v) = self.json.get(key) {
                out.insert(key.to_owned(), v.clone().into());
            }
        }
        // v11 moved `redacts` into the content; clients still read it on top.
        if !out.contains_key("redacts") && self.event_type() == "m.room.redaction" {
            if let Some(r) = self.content_str("redacts") {
                out.insert("redacts".to_owned(), r.into());
            }
        }
        out.insert("event_id".to_owned(), self.event_id.as_str().into());
        if with_room_id {
            if let Some(v) = self.json.get("room_id") {
                out.insert("room_id".to_owned(), v.clone().into());
            } else if let Some(room_id) = self.room_id_of_create() {
                out.insert("room_id".to_owned(), room_id.into());
            }
        }
        let mut unsigned = match self.json.get("unsigned") {
            Some(CanonicalJsonValue::Object(u)) => JsonValue::from(CanonicalJsonValue::Object(u.clone())),
            _ => JsonValue::Object(Default::default()),
        };
        if let JsonValue::Object(u) = &mut unsigned {
            if let Some(CanonicalJsonValue::Integer(ts)) = self.json.get("origin_server_ts") {
                let age = (now_ms() as i64).saturating_sub(i64::from(*ts)).max(0);
                u.insert("age".to_owned(), age.into());
            }
            if let (Some((device, txn)), Some((user, viewer_device))) = (&self.txn, viewer) {
                if user.as_str() == self.sender() && viewer_device == device {
                    u.insert("transaction_id".to_owned(), txn.as_str().into());
                }
            }
        }
        out.insert("unsigned".to_owned(), unsigned);
        JsonValue::Object(out)
    }

    /// A v12 create event names no room; its room ID is its own event ID.
    fn room_id_of_create(&self) -> Option<String> {
        (self.event_type() == "m.room.create").then(|| format!("!{}", &self.event_id.as_str()[1..]))
    }
}

pub struct TimelineService {
    tables: RoomTables,
    pub stream: Arc<Stream>,
    room_locks: Mutex<HashMap<OwnedRoomId, Arc<Mutex<()>>>>,
}

fn to_object(value: JsonValue) -> ServiceResult<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(ServiceError::BadJson("event content must be a JSON object".to_owned())),
        Err(e) => Err(ServiceError::BadJson(format!(
            "event content is not canonical JSON: {e}"
        ))),
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(format!("{what}: {e}"))
}

/// State lookups during one append, caching the events they read.
struct StateView<'a> {
    services: &'a Services,
    state: &'a StateMap,
    cache: std::cell::RefCell<HashMap<u64, Option<Pdu>>>,
}

impl<'a> StateView<'a> {
    fn new(services: &'a Services, state: &'a StateMap) -> Self {
        Self {
            services,
            state,
            cache: Default::default(),
        }
    }

    fn short_event(&self, event_type: &str, state_key: &str) -> Option<u64> {
        let key = self.services.state.find_short_state_key(event_type, state_key).ok()??;
        self.state.get(&key).copied()
    }

    fn get(&self, event_type: &str, state_key: &str) -> Option<Pdu> {
        let short = self.short_event(event_type, state_key)?;
        if let Some(hit) = self.cache.borrow().get(&short) {
            return hit.clone();
        }
        let pdu = self
            .services
            .state
            .event_id(short)
            .ok()
            .and_then(|id| self.services.timeline.pdu(&id).ok().flatten());
        self.cache.borrow_mut().insert(short, pdu.clone());
        pdu
    }
}

impl TimelineService {
    pub fn new(db: Db, stream: Arc<Stream>) -> Self {
        Self {
            tables: RoomTables::new(db),
            stream,
            room_locks: Mutex::new(HashMap::new()),
        }
    }

    /// Serialises one room's writes; other rooms go on in parallel.
    fn room_lock(&self, room_id: &RoomId) -> Arc<Mutex<()>> {
        let mut locks = self.room_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(room_id.to_owned()).or_default().clone()
    }

    pub fn room(&self, room_id: &RoomId) -> ServiceResult<Option<RoomRecord>> {
        Ok(self.tables.room(room_id.as_str())?)
    }

    pub fn room_or_404(&self, room_id: &RoomId) -> ServiceResult<RoomRecord> {
        self.room(room_id)?
            .ok_or_else(|| ServiceError::NotFound("this room is not known to this server".to_owned()))
    }

    pub fn rules(record: &RoomRecord) -> ServiceResult<(RoomVersionId, RoomVersionRules)> {
        let version =
            RoomVersionId::try_from(record.version.as_str()).map_err(|e| internal("stored room version", e))?;
        let rules = version
            .rules()
            .ok_or_else(|| internal("room version", format!("{version} has no rules")))?;
        Ok((version, rules))
    }

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
        if let Some(key) = &spec.state_key {
            if key.len() > MAX_STATE_KEY_BYTES {
                return Err(ServiceError::TooLarge("state_key is longer than 255 bytes".to_owned()));
            }
        }
        let state_before = match &record {
            Some(r) => s.state.load_snapshot(r.state_snapshot)?,
            None => StateMap::new(),
        };
        let view = StateView::new(s, &state_before);

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
            if let Some(pdu) = view.get(&event_type.to_string(), state_key) {
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
        let pdu = Pdu::from_object(event_id.clone(), &object)?;

        check_state_independent_auth_rules(&rules.authorization, &pdu, |id: &EventId| self.pdu(id).ok().flatten())
            .map_err(|reason| ServiceError::Forbidden(format!("the event is not allowed: {reason}")))?;
        check_state_dependent_auth_rules(&rules.authorization, &pdu, |t: &StateEventType, k: &str| {
            view.get(&t.to_string(), k)
        })
        .map_err(|reason| ServiceError::Forbidden(format!("the event is not allowed: {reason}")))?;

        // A redaction must name an event of this room, and only its sender or
        // someone with the power to redact may apply it.
        let redaction_target = match &spec.redacts {
            Some(target) => Some(self.check_redaction(&view, rules, sender, room_id, target)?),
            None => None,
        };

        let short_event_id = s.state.short_event_id(&event_id)?;
        let mut state_after = state_before.clone();
        let mut replaced = None;
        if let Some(state_key) = &spec.state_key {
            let key = s.state.short_state_key(&spec.event_type.to_string(), state_key)?;
            replaced = state_after.insert(key, short_event_id);
        }
        let before_id = match &record {
            Some(r) => r.state_snapshot,
            None => s.state.save_snapshot(&state_before, None)?,
        };
        let after_id = if spec.state_key.is_some() {
            s.state.save_snapshot(&state_after, Some(before_id))?
        } else {
            before_id
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
            let mut batch = Batch::new();
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
                );
            }
            if let Some((target_meta, target)) = redaction_target {
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
                txn: None,
            };
            s.relations.index(s, &mut batch, &room_id_owned, &stored_event)?;
            // Unread notifications of the room's other local members.
            if spec.event_type != TimelineEventType::RoomCreate {
                let state = self.state_events(s, after_id)?;
                let context = s.push.room_context(s, rules, &state, sender.as_str())?;
                if !context.recipients.is_empty() {
                    let event = stored_event.to_client(true, None);
                    s.push.notify(s, &mut batch, &room_id_owned, &event, count, &context)?;
                }
            }
            self.tables.write(batch)?;
            for member in self.tables.members(room_id_owned.as_str()) {
                let (user, membership) = member?;
                if matches!(membership.as_str(), "join" | "invite" | "knock") {
                    if let Ok(user) = OwnedUserId::try_from(user) {
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
        let power = |user: &UserId| -> i64 {
            if let Some(create) = view.get("m.room.create", "") {
                if let Ok(creators) = RoomCreateEvent::new(create).creators(&rules.authorization) {
                    if rules.authorization.explicitly_privilege_room_creators && creators.contains(user) {
                        return i64::MAX;
                    }
                }
            }
            match view.get("m.room.power_levels", "") {
                Some(pl) => RoomPowerLevelsEvent::new(pl)
                    .user_power_level(user, &rules.authorization)
                    .map(i64::from)
                    .unwrap_or(0),
                // Without power levels the creator has 100, everyone else 0.
                None => view
                    .get("m.room.create", "")
                    .filter(|c| ruma::state_res::Event::sender(c) == user)
                    .map_or(0, |_| 100),
            }
        };
        let needed = view
            .get("m.room.power_levels", "")
            .and_then(|pl| {
                let content: JsonValue = serde_json::from_str(ruma::state_res::Event::content(&pl).get()).ok()?;
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
        let event = self
            .event(event_id)?
            .ok_or_else(|| internal("reference", format!("{event_id} is not stored")))?;
        let sha256 = match event.json.get("hashes") {
            Some(CanonicalJsonValue::Object(h)) => match h.get("sha256") {
                Some(CanonicalJsonValue::String(s)) => s.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        Ok(EventRef {
            event_id: event_id.to_owned(),
            sha256,
        })
    }

    pub fn event_meta(&self, event_id: &EventId) -> ServiceResult<Option<EventMeta>> {
        Ok(self.tables.event_meta(event_id.as_str())?)
    }

    /// A stored event by ID.
    pub fn event(&self, event_id: &EventId) -> ServiceResult<Option<StoredEvent>> {
        let Some(meta) = self.tables.event_meta(event_id.as_str())? else {
            return Ok(None);
        };
        let Some(record) = self.tables.event(meta.short_room_id, meta.count)? else {
            return Ok(None);
        };
        Ok(Some(stored(event_id.to_owned(), meta.count, record)?))
    }

    /// A stored event read for the auth rules.
    pub fn pdu(&self, event_id: &EventId) -> ServiceResult<Option<Pdu>> {
        match self.event(event_id)? {
            Some(e) => Ok(Some(Pdu::from_object(e.event_id, &e.json)?)),
            None => Ok(None),
        }
    }

    /// A room's events from stream position `from` (inclusive) in
    /// `direction`, lazily.
    pub fn events<'a>(
        &'a self,
        record: &RoomRecord,
        from: Option<u64>,
        direction: Direction,
    ) -> impl Iterator<Item = ServiceResult<StoredEvent>> + 'a {
        self.tables.events(record.short_id, from, direction).map(|r| {
            let (count, rec) = r?;
            let id = match serde_json::from_str::<JsonValue>(&rec.json)
                .ok()
                .and_then(|v| v.get("event_id").and_then(JsonValue::as_str).map(str::to_owned))
            {
                Some(id) => id,
                None => return Err(internal("stored event", "no event_id")),
            };
            let id = OwnedEventId::try_from(id).map_err(|e| internal("stored event ID", e))?;
            stored(id, count, rec)
        })
    }

    /// The state of a room as `(type, state_key) → event`, from a snapshot.
    pub fn state_events(&self, s: &Services, snapshot: u64) -> ServiceResult<Vec<StoredEvent>> {
        let map = s.state.load_snapshot(snapshot)?;
        let mut out = Vec::with_capacity(map.len());
        for short in map.values() {
            let id = s.state.event_id(*short)?;
            if let Some(e) = self.event(&id)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// One state event from a snapshot.
    pub fn state_event(
        &self,
        s: &Services,
        snapshot: u64,
        event_type: &str,
        state_key: &str,
    ) -> ServiceResult<Option<StoredEvent>> {
        let Some(key) = s.state.find_short_state_key(event_type, state_key)? else {
            return Ok(None);
        };
        let map = s.state.load_snapshot(snapshot)?;
        match map.get(&key) {
            Some(short) => self.event(&s.state.event_id(*short)?),
            None => Ok(None),
        }
    }

    pub fn membership(&self, room_id: &RoomId, user_id: &UserId) -> ServiceResult<Option<String>> {
        Ok(self.tables.membership(room_id.as_str(), user_id.as_str())?)
    }

    pub fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> ServiceResult<bool> {
        Ok(self.membership(room_id, user_id)?.as_deref() == Some("join"))
    }

    /// `(user_id, membership)` of the room's members.
    pub fn members(&self, room_id: &RoomId) -> ServiceResult<Vec<(String, String)>> {
        Ok(self.tables.members(room_id.as_str()).collect::<Result<_, _>>()?)
    }

    /// `(room_id, record)` of every room the user has a membership in.
    pub fn user_rooms(&self, user_id: &UserId) -> ServiceResult<Vec<(OwnedRoomId, UserRoomRecord)>> {
        let mut out = Vec::new();
        for r in self.tables.user_rooms(user_id.as_str()) {
            let (room, record) = r?;
            out.push((
                OwnedRoomId::try_from(room).map_err(|e| internal("stored room ID", e))?,
                record,
            ));
        }
        Ok(out)
    }

    /// Hides a room the user has left from their /sync.
    pub fn forget(&self, room_id: &RoomId, user_id: &UserId) -> ServiceResult<()> {
        let Some(mut record) = self.tables.user_room(user_id.as_str(), room_id.as_str())? else {
            return Ok(());
        };
        if matches!(record.membership.as_str(), "join" | "invite" | "knock") {
            return Err(ServiceError::BadRequest(
                "leave the room before forgetting it".to_owned(),
            ));
        }
        record.forgotten = true;
        let mut batch = Batch::new();
        self.tables
            .put_user_room(&mut batch, user_id.as_str(), room_id.as_str(), &record);
        Ok(self.tables.write(batch)?)
    }

    /// An event as `viewer` reads it, with its bundled aggregations.
    pub fn client_event(
        &self,
        s: &Services,
        event: &StoredEvent,
        with_room_id: bool,
        viewer: (&UserId, &str),
    ) -> ServiceResult<JsonValue> {
        let mut out = event.to_client(with_room_id, Some(viewer));
        if let Some(bundle) = s.relations.bundle(s, event, viewer.0)? {
            out["unsigned"]["m.relations"] = bundle;
        }
        Ok(out)
    }

    pub fn client_events(
        &self,
        s: &Services,
        events: &[StoredEvent],
        with_room_id: bool,
        viewer: (&UserId, &str),
    ) -> ServiceResult<Vec<JsonValue>> {
        events
            .iter()
            .map(|e| self.client_event(s, e, with_room_id, viewer))
            .collect()
    }

    /// An event with the events around it and the state at it (`/context`).
    #[allow(clippy::too_many_arguments)]
    pub fn context(
        &self,
        s: &Services,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
        filter: &ruma::api::client::filter::RoomEventFilter,
    ) -> ServiceResult<Context> {
        let not_found = || ServiceError::NotFound("event not found".to_owned());
        let (record, _) = self.readable_snapshot(s, user, room_id)?;
        let meta = self.event_meta(event_id)?.ok_or_else(not_found)?;
        let event = self.event(event_id)?.ok_or_else(not_found)?;
        if event.room_id().as_deref() != Some(room_id.as_str()) || !self.can_see(s, user, room_id, &meta)? {
            return Err(not_found());
        }
        let limit = limit.min(MAX_PAGE);
        let before_wanted = limit / 2;
        let after_wanted = limit - before_wanted;
        let viewer = (user, device);
        let collect = |from: u64, direction: Direction, wanted: usize| -> ServiceResult<(Vec<StoredEvent>, u64)> {
            let mut out = Vec::new();
            let mut last = from;
            for e in self.events(&record, Some(from), direction).take(MAX_PAGE * 4) {
                let e = e?;
                if out.len() >= wanted {
                    break;
                }
                last = e.count;
                let Some(m) = self.event_meta(&e.event_id)? else {
                    continue;
                };
                if super::sync::event_passes(filter, &e) && self.can_see(s, user, room_id, &m)? {
                    out.push(e);
                }
            }
            Ok((out, last))
        };
        let (before, first) = if meta.count > 0 {
            collect(meta.count - 1, Direction::Backward, before_wanted)?
        } else {
            (Vec::new(), 0)
        };
        let (after, last) = collect(meta.count + 1, Direction::Forward, after_wanted)?;
        let state_snapshot = match after.last() {
            Some(e) => self
                .event_meta(&e.event_id)?
                .map_or(meta.state_after, |m| m.state_after),
            None => meta.state_after,
        };
        let lazy = !filter.lazy_load_options.is_disabled();
        let senders: std::collections::BTreeSet<&str> = before
            .iter()
            .chain(after.iter())
            .chain(std::iter::once(&event))
            .map(|e| e.sender())
            .collect();
        let state = self
            .state_events(s, state_snapshot)?
            .iter()
            .filter(|e| {
                !lazy || e.event_type() != "m.room.member" || e.state_key().is_some_and(|k| senders.contains(k))
            })
            .map(|e| e.to_client(true, Some(viewer)))
            .collect();
        Ok(Context {
            start: super::sync::token(first.saturating_sub(1)),
            end: super::sync::token(last),
            events_before: self.client_events(s, &before, true, viewer)?,
            event: self.client_event(s, &event, true, viewer)?,
            events_after: self.client_events(s, &after, true, viewer)?,
            state,
        })
    }

    /// The state snapshot after the room's last event at or before `position`.
    pub fn snapshot_at(&self, record: &RoomRecord, position: u64) -> ServiceResult<u64> {
        match self.events(record, Some(position), Direction::Backward).next() {
            Some(event) => {
                let event = event?;
                Ok(self
                    .event_meta(&event.event_id)?
                    .map_or(record.state_snapshot, |m| m.state_after))
            }
            None => Ok(record.state_snapshot),
        }
    }

    /// The room and the state `user` may read: the current state for
    /// members (and anyone, in a world-readable room), the state when they
    /// left for former members.
    pub fn readable_snapshot(&self, s: &Services, user: &UserId, room_id: &RoomId) -> ServiceResult<(RoomRecord, u64)> {
        let record = self.room_or_404(room_id)?;
        match self.tables.user_room(user.as_str(), room_id.as_str())? {
            Some(r) if r.membership == "join" => return Ok((record.clone(), record.state_snapshot)),
            Some(r) if r.membership == "leave" || r.membership == "ban" => {
                let snapshot = self.snapshot_at(&record, r.count)?;
                return Ok((record, snapshot));
            }
            _ => {}
        }
        let world_readable = self
            .state_event(s, record.state_snapshot, "m.room.history_visibility", "")?
            .is_some_and(|e| e.content_str("history_visibility") == Some("world_readable"));
        if world_readable {
            let snapshot = record.state_snapshot;
            Ok((record, snapshot))
        } else {
            Err(ServiceError::Forbidden("you are not in this room".to_owned()))
        }
    }

    pub fn readable_state(&self, s: &Services, user: &UserId, room_id: &RoomId) -> ServiceResult<Vec<StoredEvent>> {
        let (_, snapshot) = self.readable_snapshot(s, user, room_id)?;
        self.state_events(s, snapshot)
    }

    /// The room's member events as `user` may see them, optionally at a
    /// stream position.
    pub fn member_events(
        &self,
        s: &Services,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
        at: Option<&str>,
    ) -> ServiceResult<Vec<JsonValue>> {
        let (record, mut snapshot) = self.readable_snapshot(s, user, room_id)?;
        if let Some(at) = at {
            let position = super::sync::parse_token(at)?;
            let readable_up_to = match self.tables.user_room(user.as_str(), room_id.as_str())? {
                Some(r) if r.membership != "join" => r.count,
                _ => u64::MAX,
            };
            snapshot = self.snapshot_at(&record, position.min(readable_up_to))?;
        }
        Ok(self
            .state_events(s, snapshot)?
            .iter()
            .filter(|e| e.event_type() == "m.room.member")
            .map(|e| e.to_client(true, Some((user, device))))
            .collect())
    }

    /// One event, if `user` may see it (404 otherwise, so that hidden events
    /// do not reveal they exist).
    pub fn visible_event(
        &self,
        s: &Services,
        user: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        device: &str,
    ) -> ServiceResult<JsonValue> {
        let not_found = || ServiceError::NotFound("event not found".to_owned());
        self.room_or_404(room_id)?;
        let meta = self.event_meta(event_id)?.ok_or_else(not_found)?;
        let event = self.event(event_id)?.ok_or_else(not_found)?;
        if event.room_id().as_deref() != Some(room_id.as_str()) || !self.can_see(s, user, room_id, &meta)? {
            return Err(not_found());
        }
        self.client_event(s, &event, true, (user, device))
    }

    /// A page of a room's history for `user` (`/messages`).
    pub fn messages(
        &self,
        s: &Services,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
        page: Pagination,
    ) -> ServiceResult<Page> {
        let (record, _) = self.readable_snapshot(s, user, room_id)?;
        let limit = page.limit.clamp(1, MAX_PAGE);
        let from = match &page.from {
            Some(t) => super::sync::parse_token(t)?,
            None if page.backward => self.stream.visible(),
            None => 0,
        };
        let to = page.to.as_deref().map(super::sync::parse_token).transpose()?;
        // Positions are between events: backward from `from` reads events at
        // or before it, forward reads events after it.
        let (start, direction) = if page.backward {
            (from, Direction::Backward)
        } else {
            (from.saturating_add(1), Direction::Forward)
        };
        let mut chunk = Vec::new();
        let mut end = None;
        let mut scanned = 0usize;
        let viewer = Some((user, device));
        for event in self.events(&record, Some(start), direction) {
            let event = event?;
            let past_to = match (to, page.backward) {
                (Some(to), true) => event.count <= to,
                (Some(to), false) => event.count > to,
                (None, _) => false,
            };
            if past_to {
                end = None;
                break;
            }
            // Bounded work per request, even when filters hide most events.
            scanned += 1;
            if chunk.len() >= limit || scanned > MAX_PAGE * 4 {
                break;
            }
            end = Some(if page.backward { event.count - 1 } else { event.count });
            let Some(meta) = self.event_meta(&event.event_id)? else {
                continue;
            };
            if !super::sync::event_passes(&page.filter, &event) || !self.can_see(s, user, room_id, &meta)? {
                continue;
            }
            chunk.push(event);
        }
        let lazy = !page.filter.lazy_load_options.is_disabled();
        let mut state = Vec::new();
        if lazy {
            let senders: std::collections::BTreeSet<&str> = chunk.iter().map(|e| e.sender()).collect();
            for sender in senders {
                if let Some(e) = self.state_event(s, record.state_snapshot, "m.room.member", sender)? {
                    state.push(e.to_client(true, viewer));
                }
            }
        }
        Ok(Page {
            start: super::sync::token(from),
            end: end.map(super::sync::token),
            chunk: self.client_events(s, &chunk, true, (user, device))?,
            state,
        })
    }

    /// Whether `user` may see `event` under the room's history visibility.
    pub fn can_see(&self, s: &Services, user: &UserId, room_id: &RoomId, meta: &EventMeta) -> ServiceResult<bool> {
        let visibility = self
            .state_event(s, meta.state_before, "m.room.history_visibility", "")?
            .and_then(|e| e.content_str("history_visibility").map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        if visibility == "world_readable" {
            return Ok(true);
        }
        // Events about the user's own membership (their invite, join, leave)
        // are theirs to see.
        if let Some(event) = self.event(&s.state.event_id(meta.short_event_id)?)? {
            if event.event_type() == "m.room.member" && event.state_key() == Some(user.as_str()) {
                return Ok(true);
            }
        }
        let membership_then = self
            .state_event(s, meta.state_after, "m.room.member", user.as_str())?
            .and_then(|e| e.content_str("membership").map(str::to_owned));
        Ok(match membership_then.as_deref() {
            Some("join") => true,
            Some("invite") if visibility == "invited" || visibility == "shared" => {
                visibility == "invited" || self.is_joined(room_id, user)?
            }
            _ => visibility == "shared" && self.is_joined(room_id, user)?,
        })
    }
}

fn stored(event_id: OwnedEventId, count: u64, record: TimelineRecord) -> ServiceResult<StoredEvent> {
    let json: CanonicalJsonObject = serde_json::from_str(&record.json).map_err(|e| internal("stored event", e))?;
    Ok(StoredEvent {
        event_id,
        count,
        json,
        txn: record.txn,
    })
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
