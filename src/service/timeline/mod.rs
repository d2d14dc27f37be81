//! Room timelines: building local events ([`append`]), authorizing events
//! from other servers ([`incoming`]), storing both the same way
//! ([`persist`]), resolving forked histories ([`resolve`]), and reading
//! events back as clients see them ([`read`]: history visibility,
//! `/messages`, `/context`, bundled aggregations). This module holds the
//! shared types and the plain lookups.
//!
//! A local event ([`TimelineService::append`]) is laid out under the
//! room's write lock as a signed PDU of the room's version on the room's
//! current state and checked against the auth rules with ruma's
//! `state_res`; a remote one ([`TimelineService::receive_remote`]) is
//! checked against its auth events, the state before it and the current
//! state. Either is then written with its indexes, the state after it, the
//! room's new extremities and current state and the membership changes in
//! one atomic batch. A refused event leaves nothing behind but, for a
//! remote one, the note that it was rejected.

mod append;
mod auth_chain;
mod cache;
mod incoming;
mod persist;
mod read;
mod resolve;
mod serve;
mod stored_json;

pub use cache::Members;
pub use incoming::{BackfillPoint, Received};
pub use persist::{membership_of, room_id_of_v12_create};
pub use read::{Around, VisibilityCache};
pub use serve::{MissingEvents, StateAt, MAX_EVENTS_PER_REQUEST};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId,
    RoomVersionId, UserId,
};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value as JsonValue;

use super::memory::CacheSizes;
use super::pdu::Pdu;
use super::stream::Stream;
use super::{now_ms, PruneSchedule, ServiceError, ServiceResult, Services};
use crate::database::rooms::{EventMeta, OutlierKind, RoomRecord, RoomTables, TimelineRecord, UserRoomRecord};
use crate::database::{Batch, Db, Direction};

/// The spec's limits on an event's `state_key` and `type` ("Size limits").
pub const MAX_STATE_KEY_BYTES: usize = 255;
pub const MAX_EVENT_TYPE_BYTES: usize = 255;

/// What a client (or the server acting for one) wants to send.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub event_type: TimelineEventType,
    pub content: CanonicalJsonObject,
    pub state_key: Option<String>,
    /// The event a redaction redacts.
    pub redacts: Option<OwnedEventId>,
    /// When the event says it was sent, if not now: an appservice's
    /// timestamp massaging (`?ts=`), for messages bridged after the fact.
    pub origin_server_ts: Option<MilliSecondsSinceUnixEpoch>,
}

impl EventSpec {
    pub fn state(event_type: StateEventType, state_key: &str, content: JsonValue) -> ServiceResult<Self> {
        Ok(Self {
            event_type: event_type.to_string().into(),
            content: to_object(content)?,
            state_key: Some(state_key.to_owned()),
            redacts: None,
            origin_server_ts: None,
        })
    }
}

/// The client transaction an event was sent in.
#[derive(Debug, Clone)]
pub struct Txn {
    pub device_id: String,
    pub txn_id: String,
}

/// The state events (with an empty state key) an invited or knocking user
/// is shown of a room, besides their own membership: the spec's
/// recommended stripped state.
pub const STRIPPED_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.encryption",
];

/// Events per `/messages` page at most.
const MAX_PAGE: usize = 1000;

/// A `/messages` request.
#[derive(Debug, Clone)]
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
    /// Reading backwards, when the start of the history stored here was
    /// reached: where to go on from if more of it is fetched.
    pub at_start: Option<String>,
    pub chunk: Vec<Box<RawValue>>,
    pub state: Vec<JsonValue>,
}

/// A `/context` answer, events in the client format.
#[derive(Debug)]
pub struct Context {
    pub start: String,
    pub end: String,
    pub events_before: Vec<Box<RawValue>>,
    pub event: Box<RawValue>,
    pub events_after: Vec<Box<RawValue>>,
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

    pub fn origin_server_ts(&self) -> u64 {
        match self.json.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
            _ => 0,
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
        serde_json::to_value(self.client_view(with_room_id, viewer)).unwrap_or(JsonValue::Null)
    }

    /// The same, written straight to JSON text: no intermediate value for
    /// what goes out unmodified (state and timelines).
    pub fn to_client_raw(&self, with_room_id: bool, viewer: Option<(&UserId, &str)>) -> ServiceResult<Box<RawValue>> {
        self.to_client_raw_bundled(with_room_id, viewer, None)
    }

    /// The same, with bundled aggregations in `unsigned.m.relations`.
    pub fn to_client_raw_bundled(
        &self,
        with_room_id: bool,
        viewer: Option<(&UserId, &str)>,
        relations: Option<&JsonValue>,
    ) -> ServiceResult<Box<RawValue>> {
        let mut view = self.client_view(with_room_id, viewer);
        view.relations = relations;
        serde_json::value::to_raw_value(&view).map_err(|e| internal("client event", e))
    }

    fn client_view<'a>(&'a self, with_room_id: bool, viewer: Option<(&'a UserId, &'a str)>) -> ClientView<'a> {
        ClientView {
            event: self,
            with_room_id,
            viewer,
            relations: None,
        }
    }

    /// The event as room states keep it: only [`STATE_ENTRY_FIELDS`].
    pub(super) fn state_entry(&self) -> Self {
        StoredEvent {
            event_id: self.event_id.clone(),
            count: self.count,
            json: self
                .json
                .iter()
                .filter(|(key, _)| STATE_ENTRY_FIELDS.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            txn: self.txn.clone(),
        }
    }

    /// A v12 create event names no room; its room ID is its own event ID.
    fn room_id_of_create(&self) -> Option<String> {
        (self.event_type() == "m.room.create").then(|| format!("!{}", &self.event_id.as_str()[1..]))
    }
}

/// What a parsed room state keeps of each event: what clients, push rules
/// and membership checks read. The rest of a PDU (`auth_events`,
/// `prev_events`, `hashes`, `signatures`, `depth`) is for federation and the
/// auth chain, which read whole PDUs from storage; without it a cached state
/// event takes well under half the memory.
const STATE_ENTRY_FIELDS: [&str; 8] = [
    "type",
    "content",
    "sender",
    "origin_server_ts",
    "state_key",
    "redacts",
    "room_id",
    "unsigned",
];

/// A stored event as clients see it, serialized from the stored JSON
/// without copying it.
struct ClientView<'a> {
    event: &'a StoredEvent,
    with_room_id: bool,
    viewer: Option<(&'a UserId, &'a str)>,
    /// Bundled aggregations for `unsigned.m.relations`.
    relations: Option<&'a JsonValue>,
}

impl Serialize for ClientView<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.event;
        let mut map = ser.serialize_map(None)?;
        for key in ["type", "content", "sender", "origin_server_ts", "state_key", "redacts"] {
            if let Some(v) = e.json.get(key) {
                map.serialize_entry(key, v)?;
            }
        }
        // v11 moved `redacts` into the content; clients still read it on top.
        if !e.json.contains_key("redacts") && e.event_type() == "m.room.redaction" {
            if let Some(r) = e.content_str("redacts") {
                map.serialize_entry("redacts", r)?;
            }
        }
        map.serialize_entry("event_id", e.event_id.as_str())?;
        if self.with_room_id {
            if let Some(v) = e.json.get("room_id") {
                map.serialize_entry("room_id", v)?;
            } else if let Some(room_id) = e.room_id_of_create() {
                map.serialize_entry("room_id", &room_id)?;
            }
        }
        let age = match e.json.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => Some((now_ms() as i64).saturating_sub(i64::from(*ts)).max(0)),
            _ => None,
        };
        let transaction_id = match (&e.txn, self.viewer) {
            (Some((device, txn)), Some((user, viewer_device)))
                if user.as_str() == e.sender() && viewer_device == device =>
            {
                Some(txn.as_str())
            }
            _ => None,
        };
        let stored = match e.json.get("unsigned") {
            Some(CanonicalJsonValue::Object(u)) => Some(u),
            _ => None,
        };
        map.serialize_entry(
            "unsigned",
            &UnsignedView {
                stored,
                age,
                transaction_id,
                relations: self.relations,
            },
        )?;
        map.end()
    }
}

/// `unsigned`: what is stored, with the age and the sender's transaction
/// ID computed for this reader.
struct UnsignedView<'a> {
    stored: Option<&'a CanonicalJsonObject>,
    age: Option<i64>,
    transaction_id: Option<&'a str>,
    relations: Option<&'a JsonValue>,
}

impl Serialize for UnsignedView<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = ser.serialize_map(None)?;
        for (key, value) in self.stored.into_iter().flatten() {
            let computed = match key.as_str() {
                "age" => self.age.is_some(),
                "transaction_id" => self.transaction_id.is_some(),
                "m.relations" => self.relations.is_some(),
                _ => false,
            };
            if !computed {
                map.serialize_entry(key, value)?;
            }
        }
        if let Some(age) = self.age {
            map.serialize_entry("age", &age)?;
        }
        if let Some(txn) = self.transaction_id {
            map.serialize_entry("transaction_id", txn)?;
        }
        if let Some(relations) = self.relations {
            map.serialize_entry("m.relations", relations)?;
        }
        map.end()
    }
}

/// An event being persisted, as subscribers see it.
pub struct PersistedEvent<'a> {
    pub room_id: &'a RoomId,
    pub event_id: &'a EventId,
    pub pdu: &'a Pdu,
    /// The PDU as stored (with `event_id` and server-side `unsigned`).
    pub object: &'a CanonicalJsonObject,
    /// Its stream position.
    pub count: u64,
}

/// Told of every event that enters a timeline (federation sends our own
/// events on; appservices and push gateways will get theirs): first in the
/// event's batch, so what a subscriber queues lands with the event or not
/// at all, then once the batch has landed, or failed.
pub trait EventSubscriber: Send + Sync {
    fn stage(&self, s: &Services, batch: &mut Batch, event: &PersistedEvent<'_>) -> ServiceResult<()>;
    fn committed(&self, event: &PersistedEvent<'_>);
    fn aborted(&self, event: &PersistedEvent<'_>);
}

pub struct TimelineService {
    tables: RoomTables,
    subscribers: std::sync::RwLock<Vec<Arc<dyn EventSubscriber>>>,
    pub stream: Arc<Stream>,
    room_locks: Mutex<RoomLocks>,
    state_cache: Mutex<StateCache>,
    pdu_cache: Mutex<cache::PduCache>,
    members_cache: Mutex<cache::MembersCache>,
    meta_cache: Mutex<cache::MetaCache>,
    auth_chain_cache: Mutex<auth_chain::AuthChainCache>,
    /// Each room's record as its last append wrote it. Only appends fill
    /// it, under the room's write lock and once their batch has landed, so
    /// it never holds what storage does not; readers (every send and every
    /// sync, once per room) read it or storage alike.
    room_cache: Mutex<HashMap<OwnedRoomId, RoomRecord>>,
    /// Room records kept at most (a few hundred bytes each); the cache
    /// starts over when full.
    room_cache_rooms: usize,
}

/// Each room's write lock, for rooms written to lately.
struct RoomLocks {
    locks: HashMap<OwnedRoomId, Arc<Mutex<()>>>,
    schedule: PruneSchedule,
}

/// Room locks kept before idle ones are dropped.
const ROOM_LOCKS_KEPT: usize = 256;

/// Parsed room states by snapshot ID: for each room only the snapshot read
/// last (mostly its current state, which sends and syncs ask for), and at
/// most `capacity` events in all (parsed state events, a few KiB each), so
/// a huge room is not held.
/// Snapshots never change, so entries stay valid, except that redacting a
/// state event rewrites it in storage: that clears the cache and bumps
/// `generation`, and a reader that began before the bump does not put what
/// it read back.
struct StateCache {
    generation: u64,
    capacity: usize,
    states: HashMap<u64, CachedState>,
    /// Each room's cached snapshot.
    by_room: HashMap<String, u64>,
    /// Insertion order, oldest first, for eviction.
    order: std::collections::VecDeque<u64>,
    events: usize,
}

struct CachedState {
    room_id: String,
    events: Arc<Vec<StoredEvent>>,
}

impl StateCache {
    fn new(capacity: usize) -> Self {
        Self {
            generation: 0,
            capacity,
            states: HashMap::new(),
            by_room: HashMap::new(),
            order: Default::default(),
            events: 0,
        }
    }

    fn insert(&mut self, snapshot: u64, room_id: String, events: Arc<Vec<StoredEvent>>) {
        if events.len() > self.capacity || self.states.contains_key(&snapshot) {
            return;
        }
        if let Some(older) = self.by_room.get(&room_id).copied() {
            self.remove(older);
        }
        while self.events + events.len() > self.capacity {
            let Some(oldest) = self.order.front().copied() else {
                break;
            };
            self.remove(oldest);
        }
        self.events += events.len();
        self.order.push_back(snapshot);
        self.by_room.insert(room_id.clone(), snapshot);
        self.states.insert(snapshot, CachedState { room_id, events });
    }

    fn remove(&mut self, snapshot: u64) {
        if let Some(gone) = self.states.remove(&snapshot) {
            self.events -= gone.events.len();
            self.by_room.remove(&gone.room_id);
            self.order.retain(|s| *s != snapshot);
        }
    }

    /// Empties the cache; returns the events dropped.
    fn clear(&mut self) -> usize {
        let dropped = self.events;
        self.generation += 1;
        self.states = HashMap::new();
        self.by_room = HashMap::new();
        self.order = Default::default();
        self.events = 0;
        dropped
    }
}

/// For lookups that ruma's auth and resolution code make through `Option`:
/// `keep` turns a storage error into `None` for ruma and holds on to it, and
/// `check` (called as soon as ruma returns) fails with it, so no decision is
/// taken on a view of the room that storage could not give in full.
#[derive(Default)]
pub(super) struct FailedLookup(std::cell::RefCell<Option<ServiceError>>);

impl FailedLookup {
    pub(super) fn keep<T>(&self, found: ServiceResult<Option<T>>) -> Option<T> {
        found.unwrap_or_else(|e| {
            tracing::error!(error = %e, "storage failed while authorizing an event");
            self.0.borrow_mut().get_or_insert(e);
            None
        })
    }

    pub(super) fn check(&self) -> ServiceResult<()> {
        match self.0.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The order of a parsed state: by type, then state key.
pub(super) fn state_order(event: &StoredEvent) -> (&str, Option<&str>) {
    (event.event_type(), event.state_key())
}

pub(crate) fn to_object(value: JsonValue) -> ServiceResult<CanonicalJsonObject> {
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

impl TimelineService {
    /// `caches` sizes the in-memory caches (see `service::memory`).
    pub fn new(db: Db, stream: Arc<Stream>, caches: CacheSizes) -> Self {
        Self {
            tables: RoomTables::new(db),
            subscribers: Default::default(),
            stream,
            room_locks: Mutex::new(RoomLocks {
                locks: HashMap::new(),
                schedule: PruneSchedule::new(ROOM_LOCKS_KEPT),
            }),
            state_cache: Mutex::new(StateCache::new(caches.state_events)),
            pdu_cache: Mutex::new(cache::PduCache::new(caches.pdu_events)),
            members_cache: Mutex::new(cache::MembersCache::new(caches.members)),
            meta_cache: Mutex::new(cache::MetaCache::new(caches.event_metas)),
            auth_chain_cache: Mutex::new(auth_chain::AuthChainCache::new(caches.auth_chain_events)),
            room_cache: Mutex::default(),
            room_cache_rooms: caches.rooms,
        }
    }

    /// Empties every in-memory cache (the memory budget's backstop);
    /// returns the entries dropped. Readers then go to storage, and the
    /// caches fill again as they are used.
    pub fn shed_caches(&self) -> usize {
        // One lock at a time: a guard in a longer expression would live to
        // its end, holding several at once.
        let mut dropped = std::mem::take(&mut *self.room_cache.lock().unwrap_or_else(|e| e.into_inner())).len();
        dropped += self.state_cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        dropped += self.pdu_cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        dropped += self.members_cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        dropped += self.meta_cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        dropped += self.auth_chain_cache().clear();
        dropped
    }

    /// Adds a subscriber to every new timeline event.
    pub fn subscribe(&self, subscriber: Arc<dyn EventSubscriber>) {
        self.subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(subscriber);
    }

    fn subscribers(&self) -> Vec<Arc<dyn EventSubscriber>> {
        self.subscribers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds the deletes of a logged-out device's transaction IDs to `batch`.
    pub fn delete_device_txns_in(&self, batch: &mut Batch, user: &UserId, device: &str) -> ServiceResult<()> {
        Ok(self.tables.delete_device_txns(batch, user.as_str(), device)?)
    }

    /// Indexes the transaction IDs of a database from before they expired.
    pub fn backfill_txn_index(&self) -> ServiceResult<usize> {
        Ok(self.tables.backfill_txn_index(now_ms())?)
    }

    /// Serialises one room's writes; other rooms go on in parallel.
    fn room_lock(&self, room_id: &RoomId) -> Arc<Mutex<()>> {
        let mut room_locks = self.room_locks.lock().unwrap_or_else(|e| e.into_inner());
        let RoomLocks { locks, schedule } = &mut *room_locks;
        if schedule.due(locks.len()) {
            // A lock only the map holds guards nothing: it is handed out
            // only under the map's lock, so nobody can be about to take it.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            schedule.pruned(locks.len());
        }
        locks.entry(room_id.to_owned()).or_default().clone()
    }

    /// Runs `f` while holding the room's write lock (for writes other
    /// services keep consistent with the room's events).
    pub fn under_room_lock<R>(&self, room_id: &RoomId, f: impl FnOnce() -> R) -> R {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        f()
    }

    pub fn room(&self, room_id: &RoomId) -> ServiceResult<Option<RoomRecord>> {
        if let Some(hit) = self.room_cache.lock().unwrap_or_else(|e| e.into_inner()).get(room_id) {
            return Ok(Some(hit.clone()));
        }
        Ok(self.tables.room(room_id.as_str())?)
    }

    /// Keeps the record an append has just written (see `room_cache`).
    fn remember_room(&self, room_id: &RoomId, record: &RoomRecord) {
        let mut cache = self.room_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.room_cache_rooms && !cache.contains_key(room_id) {
            cache.clear();
        }
        cache.insert(room_id.to_owned(), record.clone());
    }

    /// For tests that write a room's record behind the service's back.
    #[cfg(test)]
    fn forget_cached_room(&self, room_id: &RoomId) {
        self.room_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room_id);
    }

    /// About how many events the rooms' timelines hold, without counting
    /// them (for `server stats`).
    pub fn estimated_event_count(&self) -> u64 {
        self.tables.estimated_events()
    }

    /// Every room this server knows, in ID order.
    pub fn room_ids(&self) -> ServiceResult<Vec<OwnedRoomId>> {
        self.tables
            .room_ids()
            .map(|id| OwnedRoomId::try_from(id?).map_err(|e| internal("stored room ID", e)))
            .collect()
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

    /// Where an event is stored and the state around it (recent events
    /// from the metadata cache).
    pub fn event_meta(&self, event_id: &EventId) -> ServiceResult<Option<EventMeta>> {
        if let Some(hit) = self.meta_cache.lock().unwrap_or_else(|e| e.into_inner()).get(event_id) {
            return Ok(Some(hit));
        }
        let meta = self.tables.event_meta(event_id.as_str())?;
        if let Some(meta) = meta {
            self.meta_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(event_id, meta);
        }
        Ok(meta)
    }

    /// A stored event by ID: in the timeline, or outside it (count 0) as
    /// an outlier or a soft-failed event. Never a rejected one.
    pub fn event(&self, event_id: &EventId) -> ServiceResult<Option<StoredEvent>> {
        if let Some(meta) = self.event_meta(event_id)?.filter(|meta| meta.count != 0) {
            let Some(record) = self.tables.event(meta.short_room_id, meta.count)? else {
                return Ok(None);
            };
            return Ok(Some(stored(event_id.to_owned(), meta.count, record)?));
        }
        match self.tables.outlier(event_id.as_str())? {
            Some(outlier) if !matches!(outlier.kind, OutlierKind::Rejected(_)) => Ok(Some(stored(
                event_id.to_owned(),
                0,
                TimelineRecord {
                    json: outlier.json,
                    txn: None,
                },
            )?)),
            _ => Ok(None),
        }
    }

    /// A stored event read for the auth rules, shared through the PDU
    /// cache (see `cache` for why a stale copy cannot get in).
    pub fn pdu(&self, event_id: &EventId) -> ServiceResult<Option<Arc<Pdu>>> {
        let generation = {
            let mut cache = self.pdu_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.get(event_id) {
                return Ok(Some(hit));
            }
            cache.generation
        };
        let in_timeline = self.event_meta(event_id)?.filter(|meta| meta.count != 0);
        let pdu = match in_timeline {
            Some(meta) => {
                let Some(record) = self.tables.event(meta.short_room_id, meta.count)? else {
                    return Ok(None);
                };
                Pdu::from_json(event_id.to_owned(), &record.json)?
            }
            None => match self.tables.outlier(event_id.as_str())? {
                Some(outlier) => {
                    let mut pdu = Pdu::from_json(event_id.to_owned(), &outlier.json)?;
                    pdu.rejected = matches!(outlier.kind, OutlierKind::Rejected(_));
                    pdu
                }
                None => return Ok(None),
            },
        };
        let pdu = Arc::new(pdu);
        let mut cache = self.pdu_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            cache.insert(pdu.clone());
        }
        Ok(Some(pdu))
    }

    /// A room's events from stream position `from` (inclusive) in
    /// `direction`, lazily, as clients read them: without the keys only
    /// federation reads (see `stored_json::parse_client_object`); `event`
    /// and `pdu` read whole PDUs.
    pub fn events<'a>(
        &'a self,
        record: &RoomRecord,
        from: Option<u64>,
        direction: Direction,
    ) -> impl Iterator<Item = ServiceResult<StoredEvent>> + 'a {
        self.tables.events(record.short_id, from, direction).map(|r| {
            let (count, rec) = r?;
            // Stored events carry their ID (see `TimelineRecord`); parse once.
            let json = stored_json::parse_client_object(&rec.json).map_err(|e| internal("stored event", e))?;
            let id = match json.get("event_id") {
                Some(CanonicalJsonValue::String(id)) => {
                    OwnedEventId::try_from(id.as_str()).map_err(|e| internal("stored event ID", e))?
                }
                _ => return Err(internal("stored event", "no event_id")),
            };
            Ok(StoredEvent {
                event_id: id,
                count,
                json,
                txn: rec.txn,
            })
        })
    }

    /// The room's event at stream position `count`, if there is one.
    pub fn event_at(&self, record: &RoomRecord, count: u64) -> ServiceResult<Option<StoredEvent>> {
        match self.events(record, Some(count), Direction::Forward).next() {
            Some(Ok(event)) if event.count == count => Ok(Some(event)),
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }

    /// The state of a room as `(type, state_key) → event`, from a snapshot.
    /// The events hold only [`STATE_ENTRY_FIELDS`]; `event` reads a whole PDU.
    pub fn state_events(&self, s: &Services, snapshot: u64) -> ServiceResult<Arc<Vec<StoredEvent>>> {
        let generation = {
            let cache = self.state_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.states.get(&snapshot) {
                return Ok(hit.events.clone());
            }
            cache.generation
        };
        let map = s.state.load_snapshot(snapshot)?;
        let mut out = Vec::with_capacity(map.len());
        for short in map.values() {
            let id = s.state.event_id(*short)?;
            if let Some(e) = self.event(&id)? {
                out.push(e.state_entry());
            }
        }
        // Sorted, so that one entry can be found by binary search.
        out.sort_unstable_by(|a, b| state_order(a).cmp(&state_order(b)));
        let out = Arc::new(out);
        let Some(room_id) = out.iter().find_map(StoredEvent::room_id) else {
            return Ok(out);
        };
        let mut cache = self.state_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            cache.insert(snapshot, room_id, out.clone());
        }
        Ok(out)
    }

    /// Keeps a state built while appending an event.
    fn remember_state(&self, snapshot: u64, room_id: String, state: Arc<Vec<StoredEvent>>) {
        let mut cache = self.state_cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(snapshot, room_id, state);
    }

    /// Forgets every cached state (a state event was redacted).
    fn clear_state_cache(&self) {
        self.state_cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// One state event from a snapshot (perhaps only its
    /// [`STATE_ENTRY_FIELDS`]).
    pub fn state_event(
        &self,
        s: &Services,
        snapshot: u64,
        event_type: &str,
        state_key: &str,
    ) -> ServiceResult<Option<StoredEvent>> {
        let cached = {
            let cache = self.state_cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.states.get(&snapshot).map(|c| c.events.clone())
        };
        if let Some(state) = cached {
            let found = state.binary_search_by(|e| state_order(e).cmp(&(event_type, Some(state_key))));
            return Ok(found.ok().map(|i| state[i].clone()));
        }
        let Some(key) = s.state.find_short_state_key(event_type, state_key)? else {
            return Ok(None);
        };
        match s.state.lookup(snapshot, key)? {
            Some(short) => self.event(&s.state.event_id(short)?),
            None => Ok(None),
        }
    }

    pub fn membership(&self, room_id: &RoomId, user_id: &UserId) -> ServiceResult<Option<String>> {
        Ok(self.tables.membership(room_id.as_str(), user_id.as_str())?)
    }

    pub fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> ServiceResult<bool> {
        Ok(self.membership(room_id, user_id)?.as_deref() == Some("join"))
    }

    /// `(user_id, membership)` of the room's members, shared through the
    /// members cache (sends, syncs and presence all ask for it).
    pub fn members(&self, room_id: &RoomId) -> ServiceResult<Members> {
        let generation = {
            let cache = self.members_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.get(room_id.as_str()) {
                return Ok(hit);
            }
            cache.generation
        };
        let members: Members = Arc::new(self.tables.members(room_id.as_str()).collect::<Result<_, _>>()?);
        let mut cache = self.members_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            cache.insert(room_id.as_str(), members.clone());
        }
        Ok(members)
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
}

fn stored(event_id: OwnedEventId, count: u64, record: TimelineRecord) -> ServiceResult<StoredEvent> {
    let json = stored_json::parse_object(&record.json).map_err(|e| internal("stored event", e))?;
    Ok(StoredEvent {
        event_id,
        count,
        json,
        txn: record.txn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_of(n: usize) -> Arc<Vec<StoredEvent>> {
        let event = |i: usize| StoredEvent {
            event_id: OwnedEventId::try_from(format!("$e{i}:x")).unwrap(),
            count: i as u64,
            json: CanonicalJsonObject::new(),
            txn: None,
        };
        Arc::new((0..n).map(event).collect())
    }

    #[test]
    fn locks_of_rooms_no_longer_written_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::open_test_db(dir.path());
        let timeline = TimelineService::new(db.clone(), Arc::new(Stream::new(db)), CacheSizes::default());
        let busy: OwnedRoomId = "!busy:x".try_into().unwrap();
        let held = timeline.room_lock(&busy);
        let guard = held.lock().unwrap();
        for i in 0..10 * ROOM_LOCKS_KEPT {
            let room: OwnedRoomId = format!("!r{i}:x").try_into().unwrap();
            timeline.under_room_lock(&room, || ());
        }
        let kept = timeline.room_locks.lock().unwrap().locks.len();
        assert!(kept <= ROOM_LOCKS_KEPT + 1, "{kept}");
        // The held lock is still the room's lock: a writer waits for it.
        assert!(Arc::ptr_eq(&held, &timeline.room_lock(&busy)));
        drop(guard);
    }

    #[test]
    fn state_cache_keeps_one_snapshot_per_room_within_its_event_budget() {
        const STATE_CACHE_EVENTS: usize = 4096;
        let mut cache = StateCache::new(STATE_CACHE_EVENTS);
        cache.insert(1, "!a:x".to_owned(), state_of(10));
        cache.insert(2, "!a:x".to_owned(), state_of(11));
        assert!(!cache.states.contains_key(&1), "a room's older snapshot goes");
        assert_eq!(cache.events, 11);
        cache.insert(3, "!b:x".to_owned(), state_of(STATE_CACHE_EVENTS - 11));
        assert_eq!(cache.events, STATE_CACHE_EVENTS);
        // Over the budget: the oldest room makes way.
        cache.insert(4, "!c:x".to_owned(), state_of(5));
        assert!(!cache.states.contains_key(&2) && !cache.by_room.contains_key("!a:x"));
        assert_eq!(cache.events, STATE_CACHE_EVENTS - 11 + 5);
        // A state larger than the whole budget is not kept.
        cache.insert(5, "!d:x".to_owned(), state_of(STATE_CACHE_EVENTS + 1));
        assert!(!cache.states.contains_key(&5));
        cache.clear();
        assert_eq!((cache.events, cache.states.len(), cache.generation), (0, 0, 1));
    }

    #[test]
    fn a_state_entry_drops_the_pdu_only_fields_and_reads_the_same_to_clients() {
        let pdu: JsonValue = serde_json::json!({
            "type": "m.room.member", "state_key": "@bob:x", "sender": "@bob:x",
            "room_id": "!r:x", "origin_server_ts": 7, "depth": 12,
            "content": {"membership": "join", "displayname": "Bob"},
            "unsigned": {"replaces_state": "$old:x"},
            "auth_events": ["$a:x", "$b:x"], "prev_events": ["$p:x"],
            "hashes": {"sha256": "abc"},
            "signatures": {"x": {"ed25519:k": "sig"}},
        });
        let full = StoredEvent {
            event_id: OwnedEventId::try_from("$e:x").unwrap(),
            count: 3,
            json: to_object(pdu).unwrap(),
            txn: Some(("DEV".to_owned(), "t1".to_owned())),
        };
        let entry = full.state_entry();
        let mut kept: Vec<&str> = entry.json.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            [
                "content",
                "origin_server_ts",
                "room_id",
                "sender",
                "state_key",
                "type",
                "unsigned"
            ]
        );
        let bob = UserId::parse("@bob:x").unwrap();
        let mut seen = [&full, &entry].map(|e| e.to_client(true, Some((&bob, "DEV"))));
        for event in &mut seen {
            // `age` is computed at each call.
            event["unsigned"].as_object_mut().unwrap().remove("age");
        }
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[1]["unsigned"]["transaction_id"], "t1");
    }
}
