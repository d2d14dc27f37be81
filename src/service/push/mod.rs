//! Push rules and unread notification counts.
//!
//! Each user's rules live in their `m.push_rules` account data (the spec's
//! defaults until they change one; `rules.rs` keeps them in memory). Every
//! event is evaluated, when it is stored, for every local member but its
//! sender and the users appservices claim; an event that notifies leaves
//! an entry in the notifications table, in the event's own batch. A
//! read receipt removes the entries it covers, so the counts /sync reports
//! are the entries left. Those counts are also kept per user and room,
//! written with the entries under the room's write lock, so that a /sync
//! reads one record per room instead of counting. Each notification also
//! goes into the user's history, which receipts leave alone, for
//! `/notifications`; an entry is read once its unread entry is gone. Unread
//! entries for events that ring (see `rings`) are also indexed apart, to
//! count missed calls for push gateways.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ruma::events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource};
use ruma::push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset};
use ruma::room_version_rules::RoomVersionRules;
use ruma::serde::Raw;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId};
use serde_json::value::RawValue;
use serde_json::Value as JsonValue;

mod rules;

pub use rules::server_default_rules;
use rules::{is_legacy_mention_rule, Cached, OwnRules, RecipientRules, RulesCache, SharedDefaults};

use super::outbox::Destination;
use super::pushers::{gateway, PusherId};
use super::rooms::naming;
use super::timeline::StoredEvent;
use super::{ServiceError, ServiceResult, Services};
use crate::database::outbox::OutboxItem;
use crate::database::push::{HistoryRecord, NotificationRecord, PushTables, UnreadRecord};
use crate::database::{Batch, Db};

pub const PUSH_RULES: &str = "m.push_rules";

/// Notification and highlight counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
}

/// Which notifications a read receipt covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptScope {
    /// An unthreaded receipt: everything up to the event.
    All,
    /// The main timeline only.
    Main,
    /// One thread, by its root event ID.
    Thread(String),
}

pub struct PushService {
    tables: PushTables,
    /// Which recent recipients have the default rules, and the others'
    /// parsed rules (`rules.rs`). Every event is evaluated for every local
    /// member, so reading and parsing (or building the defaults) once per
    /// member per event was the biggest per-recipient cost. The lock is
    /// also held across a fill from storage and across a change, so a
    /// stale read can never be cached over a newer write, and two changes
    /// to one user's rules cannot lose each other.
    rules: Mutex<RulesCache>,
    /// The default rules, shared by every user who has them.
    defaults: SharedDefaults,
    /// Stored unread counts by `(user, room)`, so each message does not
    /// read every recipient's record. Only their writers fill it: `notify`
    /// and `clear`, which hold the room's write lock, and only once their
    /// write has landed (`remember_unread`). So it never holds what storage
    /// does not, and a reader may read it or storage alike.
    unread: Mutex<UnreadCache>,
    /// Each room's context, with the state snapshot it was built from: a
    /// run of messages shares one snapshot. One per room: a context holds
    /// every member, and a room gaining members makes a snapshot per join.
    /// Snapshots never change, except that redacting a state event
    /// rewrites it; the append doing that (under its room's lock, the only
    /// place contexts of that room are built) clears this with
    /// `forget_contexts`.
    contexts: Mutex<HashMap<OwnedRoomId, (u64, Arc<RoomContext>)>>,
    /// Notifications each user got since their history was last trimmed. A
    /// user missing here (after a start, or once the map started over) is
    /// trimmed on their next one, so no history outgrows its bound.
    history_since_trim: Mutex<HashMap<OwnedUserId, u32>>,
}

/// Notifications kept in each user's history, newest first.
const HISTORY_KEPT: usize = 1_000;

/// A user's history is trimmed on every this-many-th notification, so it
/// holds at most `HISTORY_KEPT + HISTORY_TRIM_EVERY - 1` entries; a trim
/// reads the whole history, so not on every one.
const HISTORY_TRIM_EVERY: u32 = 100;

/// Users whose trim countdown is kept in memory at most (the map starts
/// over when full).
const CACHED_TRIM_COUNTDOWNS: usize = 16_384;

/// `/notifications` lists this many without a `limit`, and at most this
/// many with one.
const DEFAULT_NOTIFICATIONS_PAGE: usize = 50;
const MAX_NOTIFICATIONS_PAGE: usize = 200;

/// One entry of `/notifications`.
pub struct Notification {
    pub room_id: OwnedRoomId,
    /// The event in client format, without `room_id`.
    pub event: Box<RawValue>,
    pub actions: Vec<Action>,
    pub read: bool,
    pub ts: u64,
}

/// A page of `/notifications`, newest first.
pub struct NotificationPage {
    pub notifications: Vec<Notification>,
    /// Where the next, older, page starts; `None` when there is none.
    pub next_token: Option<String>,
}

/// Room contexts kept at most (one per room; the cache starts over when
/// full).
const CACHED_CONTEXTS: usize = 256;

/// Unread records kept in memory at most (about a hundred bytes each); the
/// cache starts over when full.
const CACHED_UNREAD: usize = 16_384;

/// Unread records by room, then user (so a lookup needs no owned key),
/// and how many there are in all.
#[derive(Default)]
struct UnreadCache {
    rooms: HashMap<OwnedRoomId, HashMap<OwnedUserId, UnreadRecord>>,
    records: usize,
}

/// Counts `notify` put in an event's batch, for [`PushService::remember_unread`]
/// once the batch has landed, and the pushers it queued notifications for
/// (tell the outbox then, see [`UnreadChanges::pushed`]).
#[must_use = "the counts go into the cache only once their batch has landed"]
pub struct UnreadChanges(Vec<(OwnedUserId, UnreadRecord)>, Vec<Destination>);

impl UnreadChanges {
    /// The pushers with a notification queued in the batch.
    pub fn pushed(&self) -> &[Destination] {
        &self.1
    }
}

/// What the rules of every member need to know about the room, once per event.
pub struct RoomContext {
    pub member_count: u64,
    pub power_levels: Option<PushConditionPowerLevelsCtx>,
    /// Joined local members, with their display names (`notify` skips
    /// the sender); not the users an appservice claims exclusively, whose
    /// rules are not evaluated (as in Synapse).
    pub recipients: Vec<(OwnedUserId, String)>,
    /// Members' display names by user ID (those who set one), told apart
    /// where two share one, for push gateways.
    pub display_names: HashMap<String, String>,
    /// Who is in the room, to name it after them if it has no name.
    pub members: naming::Members,
    pub room_name: Option<String>,
    pub room_alias: Option<String>,
}

/// The thread an event belongs to, if any.
pub fn thread_of(event: &JsonValue) -> Option<String> {
    let relation = event.get("content")?.get("m.relates_to")?;
    if relation.get("rel_type")?.as_str()? == "m.thread" {
        relation.get("event_id")?.as_str().map(str::to_owned)
    } else {
        None
    }
}

/// The output of a future that completes without waiting.
fn ready<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

impl PushService {
    pub fn new(db: Db) -> Self {
        Self {
            tables: PushTables::new(db),
            rules: Mutex::default(),
            defaults: SharedDefaults::new(),
            unread: Mutex::default(),
            contexts: Mutex::new(HashMap::new()),
            history_since_trim: Mutex::new(HashMap::new()),
        }
    }

    /// The user's rules: stored, or the spec's defaults.
    pub fn ruleset(&self, s: &Services, user: &UserId) -> ServiceResult<Arc<Ruleset>> {
        Ok(self
            .changed_rules(s, user)?
            .unwrap_or_else(|| Arc::new(server_default_rules(user))))
    }

    /// The rules `notify` evaluates for `user`.
    fn recipient_rules(&self, s: &Services, user: &UserId) -> ServiceResult<RecipientRules> {
        Ok(match self.changed_rules(s, user)? {
            Some(rules) => RecipientRules::Changed(rules),
            None => RecipientRules::Defaults(Box::new(OwnRules::new(user, &self.defaults))),
        })
    }

    /// The user's rules if they changed them, `None` if they have the
    /// defaults: from the cache, filled from storage.
    fn changed_rules(&self, s: &Services, user: &UserId) -> ServiceResult<Option<Arc<Ruleset>>> {
        let mut cache = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(user) {
            Cached::Changed(rules) => return Ok(Some(rules)),
            Cached::Defaults => return Ok(None),
            Cached::Unknown => {}
        }
        let rules = self.stored_ruleset(s, user)?.map(Arc::new);
        cache.remember(user, rules.clone());
        Ok(rules)
    }

    /// Changes the user's rules with `change` and stores them, one change at
    /// a time.
    pub fn change_ruleset<T>(
        &self,
        s: &Services,
        user: &UserId,
        change: impl FnOnce(&mut Ruleset) -> ServiceResult<T>,
    ) -> ServiceResult<T> {
        let mut cache = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let mut rules = match cache.get(user) {
            Cached::Changed(rules) => Ruleset::clone(&rules),
            Cached::Defaults => server_default_rules(user),
            Cached::Unknown => self
                .stored_ruleset(s, user)?
                .unwrap_or_else(|| server_default_rules(user)),
        };
        let answer = change(&mut rules)?;
        let json = serde_json::to_string(&serde_json::json!({ "global": &rules }))
            .map_err(|e| ServiceError::Internal(format!("push rules: {e}")))?;
        // Forget the old rules first, so a failed write leaves nothing stale.
        cache.forget(user);
        s.account_data.put(user, None, PUSH_RULES, &json)?;
        cache.remember(user, Some(Arc::new(rules)));
        Ok(answer)
    }

    /// The stored rules, with today's server-default rules (a rule stored
    /// when it was a default keeps its `enabled` and `actions`, a default
    /// added since is there); `None` if the user has never changed theirs.
    fn stored_ruleset(&self, s: &Services, user: &UserId) -> ServiceResult<Option<Ruleset>> {
        match s.account_data.get(user, None, PUSH_RULES) {
            Ok(raw) => {
                let value: JsonValue = serde_json::from_str(raw.get())
                    .map_err(|e| ServiceError::Internal(format!("stored push rules: {e}")))?;
                let mut rules: Ruleset = serde_json::from_value(value.get("global").cloned().unwrap_or_default())
                    .map_err(|e| ServiceError::Internal(format!("stored push rules: {e}")))?;
                rules.update_with_server_default(server_default_rules(user));
                Ok(Some(rules))
            }
            Err(ServiceError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The room context for evaluating an event in `room_id`, from the
    /// state `state` of snapshot `snapshot`.
    pub fn room_context(
        &self,
        s: &Services,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        snapshot: u64,
        state: &[StoredEvent],
    ) -> Arc<RoomContext> {
        if let Some((built_from, hit)) = self.contexts.lock().unwrap_or_else(|e| e.into_inner()).get(room_id) {
            if *built_from == snapshot {
                return hit.clone();
            }
        }
        let context = Arc::new(self.build_room_context(s, rules, state));
        let mut contexts = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
        if contexts.len() >= CACHED_CONTEXTS && !contexts.contains_key(room_id) {
            contexts.clear();
        }
        contexts.insert(room_id.to_owned(), (snapshot, context.clone()));
        context
    }

    /// Forgets every room context (a state event was redacted).
    pub fn forget_contexts(&self) {
        self.contexts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Empties the parsed rules and room contexts (the memory budget's
    /// backstop); returns the entries dropped. Both refill from storage.
    pub fn shed_caches(&self) -> usize {
        let mut dropped = self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
        dropped += std::mem::take(&mut *self.contexts.lock().unwrap_or_else(|e| e.into_inner())).len();
        dropped
    }

    fn build_room_context(&self, s: &Services, rules: &RoomVersionRules, state: &[StoredEvent]) -> RoomContext {
        let member_events: Vec<&StoredEvent> = state.iter().filter(|e| e.event_type() == "m.room.member").collect();
        let mut recipients = Vec::new();
        let appservices = s.appservices.all();
        for event in member_events
            .iter()
            .filter(|e| e.content_str("membership") == Some("join"))
        {
            let Some(user) = event.state_key().and_then(|k| OwnedUserId::try_from(k).ok()) else {
                continue;
            };
            if user.server_name() != s.config.server_name {
                continue;
            }
            // A bridge's users are not people: nobody reads their counts.
            if appservices.iter().any(|a| a.claims_user(user.as_str())) {
                continue;
            }
            let name = event
                .content_str("displayname")
                .map_or_else(|| user.localpart().to_owned(), str::to_owned);
            recipients.push((user, name));
        }
        // Member events, like all state here, are in state key (user ID) order.
        let memberships = || {
            member_events.iter().filter_map(|e| {
                Some((
                    e.state_key()?,
                    e.content_str("membership").unwrap_or_default(),
                    e.content_str("displayname"),
                ))
            })
        };
        let members = naming::Members::collect(memberships().map(|(user, membership, _)| (user, membership)));
        let display_names = naming::display_names(memberships());
        let find = |t: &str| state.iter().find(|e| e.event_type() == t && e.state_key() == Some(""));
        let power_levels = find("m.room.power_levels").and_then(|pl| {
            let content: RoomPowerLevelsEventContent =
                serde_json::from_value(JsonValue::from(ruma::CanonicalJsonValue::Object(pl.content()?.clone())))
                    .ok()?;
            let mut creators = Vec::new();
            if let Some(create) = find("m.room.create") {
                creators.extend(OwnedUserId::try_from(create.sender()).ok());
                if let Some(ruma::CanonicalJsonValue::Array(extra)) =
                    create.content().and_then(|c| c.get("additional_creators"))
                {
                    for user in extra {
                        if let ruma::CanonicalJsonValue::String(u) = user {
                            creators.extend(OwnedUserId::try_from(u.as_str()).ok());
                        }
                    }
                }
            }
            let levels = RoomPowerLevels::new(RoomPowerLevelsSource::Original(content), &rules.authorization, creators);
            Some(PushConditionPowerLevelsCtx::from(levels))
        });
        let text = |t: &str, field: &str| find(t).and_then(|e| e.content_str(field)).map(str::to_owned);
        RoomContext {
            member_count: members.joined,
            power_levels,
            recipients,
            display_names,
            members,
            room_name: text("m.room.name", "name").filter(|n| !n.is_empty()),
            room_alias: text("m.room.canonical_alias", "alias"),
        }
    }

    /// Evaluates `event` (client format, with `room_id`) for each recipient
    /// and records the notifications in `batch`.
    pub fn notify(
        &self,
        s: &Services,
        batch: &mut Batch,
        room_id: &RoomId,
        event: &JsonValue,
        count: u64,
        context: &RoomContext,
    ) -> ServiceResult<UnreadChanges> {
        let raw: Raw<JsonValue> = serde_json::value::to_raw_value(event)
            .map(Raw::from_json)
            .map_err(|e| ServiceError::Internal(format!("event for push rules: {e}")))?;
        let thread_id = thread_of(event);
        // Flattened once for all recipients (ruma's `get_actions` would
        // flatten it again for each).
        let flat = FlattenedJson::from_raw(&raw);
        // An event that says whom it mentions is not searched for names.
        let intentional_mentions = flat.contains_mentions();
        let sender = event.get("sender").and_then(JsonValue::as_str);
        let event_id = event.get("event_id").and_then(JsonValue::as_str).unwrap_or_default();
        let rings = rings(event);
        let mut shared_answers = [None; SHARED_DEFAULT_RULES.len()];
        let mut changes = Vec::new();
        let mut pushed = Vec::new();
        for (user, display_name) in &context.recipients {
            if sender == Some(user.as_str()) {
                continue;
            }
            let rules = self.recipient_rules(s, user)?;
            let mut ctx = PushConditionRoomCtx::new(
                room_id.to_owned(),
                UInt::new(context.member_count).unwrap_or_default(),
                user.clone(),
                display_name.clone(),
            );
            ctx.power_levels = context.power_levels.clone();
            // Evaluation is async in ruma for rules that may ask the server
            // more questions (thread subscriptions); ours answer from memory,
            // so the future is ready on its first poll.
            let mut actions: &[_] = &[];
            for rule in rules.iter(&self.defaults) {
                if intentional_mentions && rule.is_server_default() && is_legacy_mention_rule(rule.rule_id()) {
                    continue;
                }
                let shared = rule
                    .is_server_default()
                    .then(|| SHARED_DEFAULT_RULES.iter().position(|id| *id == rule.rule_id()))
                    .flatten()
                    .filter(|_| rule.enabled());
                let answer = match shared.and_then(|i| shared_answers[i]) {
                    Some(known) => Some(known),
                    None => {
                        let answer = ready(rule.applies(&flat, &ctx));
                        if let Some(i) = shared {
                            shared_answers[i] = answer;
                        }
                        answer
                    }
                };
                match answer {
                    Some(true) => {
                        actions = rule.actions();
                        break;
                    }
                    Some(false) => {}
                    None => {
                        tracing::warn!(%user, "push rule evaluation did not complete; rule skipped");
                    }
                }
            }
            if actions.iter().any(|a| a.should_notify()) {
                let record = NotificationRecord {
                    highlight: actions.iter().any(|a| a.is_highlight()),
                    thread_id: thread_id.clone(),
                };
                let mut unread = self.unread(user, room_id)?;
                add(&mut unread, &record);
                self.tables
                    .put_notification(batch, user.as_str(), room_id.as_str(), count, &record);
                if rings {
                    self.tables
                        .put_missed_call(batch, user.as_str(), room_id.as_str(), count);
                }
                let history = HistoryRecord {
                    room_id: room_id.to_string(),
                    event_id: event_id.to_owned(),
                    ts: super::now_ms(),
                    highlight: record.highlight,
                    actions: serde_json::to_string(actions)
                        .map_err(|e| ServiceError::Internal(format!("push actions: {e}")))?,
                };
                if self.history_trim_due(user) {
                    // The new entry is in this batch, not yet in storage.
                    self.tables.trim_history(batch, user.as_str(), HISTORY_KEPT - 1)?;
                }
                self.tables.put_history(batch, user.as_str(), count, &history);
                self.tables.put_unread(batch, user.as_str(), room_id.as_str(), &unread);
                let pushers = s.pushers.ids_of(user)?;
                if !pushers.is_empty() {
                    let counts = gateway::Counts {
                        unread: self.total_unread(user, room_id, &unread)?,
                        // This one is in the batch, not yet in storage.
                        missed_calls: self.tables.missed_calls(user.as_str())? + u64::from(rings),
                    };
                    let tweaks = gateway::tweaks(actions);
                    let queued = gateway::notification(event, user, context, &tweaks, counts);
                    pushed.extend(self.stage_for_pushers(s, batch, pushers, &queued)?);
                }
                changes.push((user.clone(), unread));
            }
        }
        Ok(UnreadChanges(changes, pushed))
    }

    /// Queues `queued` for each of `pushers` in `batch`; returns their
    /// destinations, for the outbox once the batch has landed.
    fn stage_for_pushers(
        &self,
        s: &Services,
        batch: &mut Batch,
        pushers: Vec<PusherId>,
        queued: &gateway::QueuedNotification,
    ) -> ServiceResult<Vec<Destination>> {
        let item = OutboxItem::Edu(
            serde_json::to_string(queued).map_err(|e| ServiceError::Internal(format!("notification as JSON: {e}")))?,
        );
        let mut destinations = Vec::with_capacity(pushers.len());
        for id in pushers {
            let destination = Destination::Pusher(id);
            s.outbox.stage(batch, &destination, &item)?;
            destinations.push(destination);
        }
        Ok(destinations)
    }

    /// Whether `user`'s history is due for a trim with their new
    /// notification (see `history_since_trim`).
    fn history_trim_due(&self, user: &UserId) -> bool {
        let mut since_trim = self.history_since_trim.lock().unwrap_or_else(|e| e.into_inner());
        match since_trim.get_mut(user) {
            Some(n) if *n + 1 < HISTORY_TRIM_EVERY => {
                *n += 1;
                false
            }
            Some(n) => {
                *n = 0;
                true
            }
            None => {
                if since_trim.len() >= CACHED_TRIM_COUNTDOWNS {
                    since_trim.clear();
                }
                since_trim.insert(user.to_owned(), 0);
                true
            }
        }
    }

    /// A page of `user`'s notification history (`/notifications`), newest
    /// first: older than the token `from` if given, only highlights if
    /// `highlights_only`. `device` is the reader's, for the events' client
    /// format.
    pub fn notifications(
        &self,
        s: &Services,
        user: &UserId,
        device: &str,
        from: Option<&str>,
        limit: Option<usize>,
        highlights_only: bool,
    ) -> ServiceResult<NotificationPage> {
        // The token is the stream position of the last entry listed.
        let before = from
            .map(|token| {
                token
                    .parse::<u64>()
                    .map_err(|_| ServiceError::InvalidParam(format!("{token:?} is not a /notifications token")))
            })
            .transpose()?;
        let limit = limit
            .unwrap_or(DEFAULT_NOTIFICATIONS_PAGE)
            .clamp(1, MAX_NOTIFICATIONS_PAGE);
        let mut notifications = Vec::new();
        let mut next_token = None;
        let mut last_listed = None;
        for entry in self.tables.history(user.as_str(), before) {
            let (count, record) = entry?;
            if highlights_only && !record.highlight {
                continue;
            }
            if notifications.len() == limit {
                next_token = last_listed.map(|c: u64| c.to_string());
                break;
            }
            let corrupt = |what: &str| ServiceError::Internal(format!("notification history: bad {what}"));
            let room_id = OwnedRoomId::try_from(record.room_id.as_str()).map_err(|_| corrupt("room ID"))?;
            let event_id = OwnedEventId::try_from(record.event_id.as_str()).map_err(|_| corrupt("event ID"))?;
            let actions: Vec<Action> = serde_json::from_str(&record.actions).map_err(|_| corrupt("actions"))?;
            let Some(event) = s.timeline.event(&event_id)? else {
                // Gone from storage since: nothing to show.
                continue;
            };
            let event = s.timeline.client_event(s, &event, false, (user, device))?;
            let read = !self.tables.is_unread(user.as_str(), room_id.as_str(), count)?;
            notifications.push(Notification {
                room_id,
                event,
                actions,
                read,
                ts: record.ts,
            });
            last_listed = Some(count);
        }
        Ok(NotificationPage {
            notifications,
            next_token,
        })
    }

    /// Takes the counts of a landed batch into the cache (see `unread`).
    pub fn remember_unread(&self, room_id: &RoomId, changes: UnreadChanges) {
        let mut cache = self.unread.lock().unwrap_or_else(|e| e.into_inner());
        if cache.records + changes.0.len() > CACHED_UNREAD {
            *cache = UnreadCache::default();
        }
        let UnreadCache { rooms, records } = &mut *cache;
        let room = match rooms.get_mut(room_id) {
            Some(room) => room,
            None => rooms.entry(room_id.to_owned()).or_default(),
        };
        for (user, record) in changes.0 {
            if room.insert(user, record).is_none() {
                *records += 1;
            }
        }
    }

    /// Unread counts: the main timeline (everything, unless threads are
    /// counted apart) and each thread.
    pub fn counts(
        &self,
        user: &UserId,
        room_id: &RoomId,
        threads_apart: bool,
    ) -> ServiceResult<(Counts, BTreeMap<String, Counts>)> {
        let unread = self.unread(user, room_id)?;
        let counts = |(notifications, highlights): (u64, u64)| Counts {
            notifications,
            highlights,
        };
        let mut main = counts(unread.main);
        let mut threads = BTreeMap::new();
        for (thread, in_thread) in unread.threads {
            if threads_apart {
                threads.insert(thread, counts(in_thread));
            } else {
                main.notifications += in_thread.0;
                main.highlights += in_thread.1;
            }
        }
        Ok((main, threads))
    }

    /// The stored counts, or, in a database from before they were kept,
    /// counted from the entries.
    fn unread(&self, user: &UserId, room_id: &RoomId) -> ServiceResult<UnreadRecord> {
        let cached = self
            .unread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rooms
            .get(room_id)
            .and_then(|room| room.get(user))
            .cloned();
        if let Some(record) = cached {
            return Ok(record);
        }
        if let Some(record) = self.tables.unread(user.as_str(), room_id.as_str())? {
            return Ok(record);
        }
        let mut unread = UnreadRecord::default();
        for (_, record) in self.tables.notifications(user.as_str(), room_id.as_str())? {
            add(&mut unread, &record);
        }
        Ok(unread)
    }

    /// The user's unread notifications in every room, with `here` the
    /// counts about to be stored for `room_id`.
    fn total_unread(&self, user: &UserId, room_id: &RoomId, here: &UnreadRecord) -> ServiceResult<u64> {
        let total = |r: &UnreadRecord| r.main.0 + r.threads.values().map(|t| t.0).sum::<u64>();
        let mut sum = total(here);
        for (room, record) in self.tables.unread_of_user(user.as_str())? {
            if room != room_id.as_str() {
                sum += total(&record);
            }
        }
        Ok(sum)
    }

    /// A read receipt at stream position `up_to` clears what it covers.
    /// Call it under the room's write lock, which also guards the counts.
    /// Adds to `batch` the clearing of `user`'s notifications in the room up
    /// to `up_to` (within `scope`) and, since their counts went down, a
    /// badge update for each of their pushers (how a phone clears its
    /// badge). Hand what it returns to the outbox (`pushed`) and to
    /// [`PushService::remember_unread`] once the batch has landed.
    pub fn clear(
        &self,
        s: &Services,
        batch: &mut Batch,
        user: &UserId,
        room_id: &RoomId,
        up_to: u64,
        scope: &ReceiptScope,
    ) -> ServiceResult<Option<UnreadChanges>> {
        let mut covered = Vec::new();
        let mut left = UnreadRecord::default();
        for (count, record) in self.tables.notifications(user.as_str(), room_id.as_str())? {
            let in_scope = match scope {
                ReceiptScope::All => true,
                ReceiptScope::Main => record.thread_id.is_none(),
                ReceiptScope::Thread(t) => record.thread_id.as_deref() == Some(t.as_str()),
            };
            if count <= up_to && in_scope {
                covered.push(count);
            } else {
                add(&mut left, &record);
            }
        }
        if covered.is_empty() {
            return Ok(None);
        }
        self.tables
            .delete_notifications(batch, user.as_str(), room_id.as_str(), &covered, &left);
        // Both lists are in stream order.
        let calls_covered: Vec<u64> = self
            .tables
            .missed_calls_in(user.as_str(), room_id.as_str())?
            .into_iter()
            .filter(|call| covered.binary_search(call).is_ok())
            .collect();
        self.tables
            .delete_missed_calls(batch, user.as_str(), room_id.as_str(), &calls_covered);
        let pushers = s.pushers.ids_of(user)?;
        let mut pushed = Vec::new();
        if !pushers.is_empty() {
            let counts = gateway::Counts {
                unread: self.total_unread(user, room_id, &left)?,
                missed_calls: self
                    .tables
                    .missed_calls(user.as_str())?
                    .saturating_sub(calls_covered.len() as u64),
            };
            pushed = self.stage_for_pushers(s, batch, pushers, &gateway::badge_update(counts))?;
        }
        Ok(Some(UnreadChanges(vec![(user.to_owned(), left)], pushed)))
    }
}

/// Whether `event` rings its recipients, so that a notification for it
/// counts as a missed call until a read receipt covers it: a VoIP call
/// invite (`m.call.invite`) or a MatrixRTC ring (`m.rtc.notification`, or
/// MSC4075's unstable name, with `notification_type: ring`). Push gateways
/// get the user's missed calls (`counts.missed_calls`): these notifications
/// in all rooms, not yet read. Only events the user's push rules notify
/// for count, and a call in an encrypted room is `m.room.encrypted` to the
/// server, so it does not. Whether a call was answered is not the server's
/// to know: reading past it acknowledges it.
fn rings(event: &JsonValue) -> bool {
    match event.get("type").and_then(JsonValue::as_str) {
        Some("m.call.invite") => true,
        Some("m.rtc.notification" | "org.matrix.msc4075.rtc.notification") => {
            event.pointer("/content/notification_type").and_then(JsonValue::as_str) == Some("ring")
        }
        _ => false,
    }
}

/// The spec's default rules whose conditions are the same for every user
/// and read nothing of the recipient (not their ID, name or display name):
/// for one event, an enabled one gives every recipient the same answer, so
/// it is evaluated once per event, not once per member. The others
/// (`.m.rule.invite_for_me`, `.m.rule.is_user_mention`,
/// `.m.rule.contains_display_name`, `.m.rule.contains_user_name`) name the
/// recipient and are evaluated for each.
const SHARED_DEFAULT_RULES: [&str; 14] = [
    ".m.rule.master",
    ".m.rule.suppress_notices",
    ".m.rule.member_event",
    ".m.rule.is_room_mention",
    ".m.rule.roomnotif",
    ".m.rule.tombstone",
    ".m.rule.reaction",
    ".m.rule.room.server_acl",
    ".m.rule.suppress_edits",
    ".m.rule.call",
    ".m.rule.encrypted_room_one_to_one",
    ".m.rule.room_one_to_one",
    ".m.rule.message",
    ".m.rule.encrypted",
];

/// Counts one more notification.
fn add(unread: &mut UnreadRecord, record: &NotificationRecord) {
    let counts = match &record.thread_id {
        Some(thread) => unread.threads.entry(thread.clone()).or_default(),
        None => &mut unread.main,
    };
    counts.0 += 1;
    counts.1 += u64::from(record.highlight);
}

#[cfg(test)]
mod tests {
    use ruma::events::TimelineEventType;

    use super::{HISTORY_KEPT, HISTORY_TRIM_EVERY};
    use crate::service::testing::{two_in_a_room, TwoInARoom};
    use crate::service::timeline::EventSpec;

    #[test]
    fn call_invites_and_rtc_rings_ring() {
        let event = |t: &str, content: serde_json::Value| serde_json::json!({"type": t, "content": content});
        assert!(super::rings(&event("m.call.invite", serde_json::json!({}))));
        let ring = serde_json::json!({"notification_type": "ring"});
        assert!(super::rings(&event("m.rtc.notification", ring.clone())));
        assert!(super::rings(&event("org.matrix.msc4075.rtc.notification", ring)));
        let quiet = serde_json::json!({"notification_type": "notification"});
        assert!(!super::rings(&event("m.rtc.notification", quiet)));
        assert!(!super::rings(&event(
            "m.room.message",
            serde_json::json!({"body": "m.call.invite"})
        )));
    }

    /// However many notifications arrive, a user's history stays within its
    /// bound and keeps the newest.
    #[test]
    fn the_history_keeps_the_newest_within_its_bound() {
        let TwoInARoom {
            dir: _dir,
            s,
            alice,
            bob,
            room,
            ..
        } = two_in_a_room();
        let sent = HISTORY_KEPT + HISTORY_TRIM_EVERY as usize + 10;
        let mut newest = None;
        for n in 0..sent {
            let message = EventSpec {
                event_type: TimelineEventType::RoomMessage,
                content: serde_json::from_value(serde_json::json!({"msgtype": "m.text", "body": format!("{n}")}))
                    .unwrap(),
                state_key: None,
                redacts: None,
                origin_server_ts: None,
            };
            newest = Some(s.timeline.append(&s, &room, &bob, message, None).unwrap());
        }
        let kept = s.push.tables.history(alice.as_str(), None).count();
        assert!(
            (HISTORY_KEPT..HISTORY_KEPT + HISTORY_TRIM_EVERY as usize).contains(&kept),
            "{kept} of {sent} kept"
        );
        let page = s.push.notifications(&s, &alice, "DEV", None, Some(1), false).unwrap();
        let listed: serde_json::Value = serde_json::from_str(page.notifications[0].event.get()).unwrap();
        assert_eq!(listed["event_id"], newest.unwrap().as_str());
    }
}
