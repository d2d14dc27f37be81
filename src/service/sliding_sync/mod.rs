//! Simplified sliding sync (MSC4186), as clients speak it today at
//! `/_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.
//!
//! A client keeps a *connection* (one per `conn_id` of a device). Each
//! response ends with a `pos` naming the stream position it covered and the
//! connection's state after it: which rooms the client holds, up to which
//! stream position, with which room config. The next request continues
//! from that `pos`, and a room is sent again only when something in it
//! changed after the position the client holds it at (or its room config
//! grew). The state is stored ([`SlidingSyncTables`]), so a connection
//! survives a restart; a `pos` this server no longer knows gets
//! `M_UNKNOWN_POS`, and the client starts over.
//!
//! Rooms are chosen by lists (the user's rooms sorted by their latest
//! event, filtered, cut to ranges) and by room subscriptions.

mod extensions;
mod room;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ruma::api::client::sync::sync_events::v5;
use ruma::{OwnedRoomId, UInt, UserId};

use super::{ServiceError, ServiceResult, Services};
use crate::database::rooms::position;
use crate::database::rooms::{RoomRecord, UserRoomRecord};
use crate::database::sliding_sync::{ConnectionRecord, ConnectionState, RoomConfigRecord, SentRoom, SlidingSyncTables};
use crate::database::{Batch, Db, Direction};

/// The most timeline events per room, whatever the client asks.
const MAX_TIMELINE_LIMIT: u64 = 100;
/// Responses of a connection kept, so that a retried or cancelled request
/// still finds the state it continues from.
const STATES_KEPT: usize = 3;
/// Room subscriptions kept per connection (clients send each once).
const MAX_SUBSCRIPTIONS: usize = 100;
/// Connections kept per device; a new one past this drops the one used
/// least recently (MSC4186 asks servers to bound what clients make them store).
const MAX_CONNECTIONS: usize = 10;
/// The longest connection ID accepted.
const MAX_CONN_ID_LEN: usize = 64;
/// What moves a room's `bump_stamp` when the list names no types (MSC4186).
const DEFAULT_BUMP_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

pub struct SlidingSyncService {
    tables: SlidingSyncTables,
    /// Connection records as last stored, decoded: each request reads its
    /// connection's, and decoding one of a few hundred rooms costs more
    /// than the rest of a quiet request.
    cache: Mutex<HashMap<ConnectionKey, Arc<ConnectionRecord>>>,
}

/// `(user_id, device_id, conn_id)`.
type ConnectionKey = (String, String, String);

/// Connection records kept decoded; past this the cache starts over.
const CACHED_CONNECTIONS: usize = 256;

/// A request, as the service reads it: ruma's request, plus each list's
/// `bump_event_types` (which ruma's type no longer carries).
pub struct SyncRequest {
    pub body: v5::Request,
    pub bump_event_types: BTreeMap<String, Vec<String>>,
}

/// A computed response and the connection state it leads to; stored by
/// [`SlidingSyncService::commit`] once the response is final.
pub struct Outcome {
    pub response: v5::Response,
    state: ConnectionState,
    conn_id: String,
    /// The state the request continued from (none for a new connection).
    continued_from: Option<u64>,
    /// Whether anything is worth answering a long-poll with.
    pub has_news: bool,
}

/// A room config as the request asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoomConfig {
    timeline_limit: u64,
    required_state: BTreeSet<(String, String)>,
    /// The list or subscription names this room was picked by.
    lists: BTreeSet<String>,
    /// Event types that move the room's `bump_stamp`.
    bump_types: Option<Vec<String>>,
}

impl RoomConfig {
    fn new(timeline_limit: UInt, required_state: &[(ruma::events::StateEventType, String)]) -> Self {
        Self {
            timeline_limit: u64::from(timeline_limit).min(MAX_TIMELINE_LIMIT),
            required_state: required_state.iter().map(|(t, k)| (t.to_string(), k.clone())).collect(),
            lists: BTreeSet::new(),
            bump_types: None,
        }
    }

    /// The superset of two configs, as MSC4186 combines them.
    fn merge(&mut self, other: RoomConfig) {
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
        self.required_state.extend(other.required_state);
        self.lists.extend(other.lists);
        if let Some(types) = other.bump_types {
            self.bump_types.get_or_insert_with(Vec::new).extend(types);
        }
    }

    fn record(&self) -> RoomConfigRecord {
        RoomConfigRecord {
            timeline_limit: self.timeline_limit,
            required_state: self.required_state.iter().cloned().collect(),
        }
    }

    /// Whether this config asks for more than `sent` did: then the room
    /// is sent again whole.
    fn expands(&self, sent: &RoomConfigRecord) -> bool {
        let had: HashSet<&(String, String)> = sent.required_state.iter().collect();
        self.timeline_limit > sent.timeline_limit || self.required_state.iter().any(|e| !had.contains(e))
    }

    fn from_record(record: &RoomConfigRecord) -> Self {
        Self {
            timeline_limit: record.timeline_limit,
            required_state: record.required_state.iter().cloned().collect(),
            lists: BTreeSet::new(),
            bump_types: None,
        }
    }
}

/// One of the user's rooms, as lists see it.
pub(crate) struct Candidate {
    room_id: OwnedRoomId,
    membership: UserRoomRecord,
    /// None for a room of another server this one is not in (an invite).
    record: Option<RoomRecord>,
    /// Sort key: the stream position of the room's latest activity.
    recency: u64,
}

impl SlidingSyncService {
    /// Empties the decoded connections (the memory budget's backstop);
    /// returns how many. Each is read again from storage when next used.
    pub fn shed_cache(&self) -> usize {
        std::mem::take(&mut *self.cache.lock().unwrap_or_else(|e| e.into_inner())).len()
    }

    pub fn new(db: Db) -> Self {
        Self {
            tables: SlidingSyncTables::new(db),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn key(user: &UserId, device: &str, conn_id: &str) -> ConnectionKey {
        (user.to_string(), device.to_owned(), conn_id.to_owned())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionKey, Arc<ConnectionRecord>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection's record (empty for one never stored).
    fn record(&self, user: &UserId, device: &str, conn_id: &str) -> ServiceResult<Arc<ConnectionRecord>> {
        let key = Self::key(user, device, conn_id);
        if let Some(hit) = self.lock_cache().get(&key) {
            return Ok(hit.clone());
        }
        let record = Arc::new(self.tables.get(user.as_str(), device, conn_id)?.unwrap_or_default());
        let mut cache = self.lock_cache();
        if cache.len() >= CACHED_CONNECTIONS {
            cache.clear();
        }
        cache.insert(key, record.clone());
        Ok(record)
    }

    fn forget(&self, user: &UserId, device: &str, conn_id: &str) {
        self.lock_cache().remove(&Self::key(user, device, conn_id));
    }

    /// Stores the state a response leads to. Keeps the state it continued
    /// from and those after it (a client may retry), at most a few.
    pub fn commit(&self, user: &UserId, device: &str, outcome: &Outcome) -> ServiceResult<()> {
        let mut record = match outcome.continued_from {
            Some(_) => (*self.record(user, device, &outcome.conn_id)?).clone(),
            None => ConnectionRecord::default(),
        };
        if let Some(from) = outcome.continued_from {
            // Once a request names a `pos`, nothing before it is needed.
            record.states.retain(|state| state.seq >= from);
        }
        record.states.push(outcome.state.clone());
        record.states.sort_by_key(|state| state.seq);
        let excess = record.states.len().saturating_sub(STATES_KEPT);
        record.states.drain(..excess);
        if outcome.continued_from.is_none() {
            self.drop_old_connections(user, device, &outcome.conn_id)?;
        }
        // The cache follows the table: forgotten while the write is under
        // way, so that a failed write leaves nothing stale behind.
        self.forget(user, device, &outcome.conn_id);
        self.tables.put(user.as_str(), device, &outcome.conn_id, &record)?;
        let mut cache = self.lock_cache();
        if cache.len() >= CACHED_CONNECTIONS {
            cache.clear();
        }
        cache.insert(Self::key(user, device, &outcome.conn_id), Arc::new(record));
        Ok(())
    }

    /// Makes room for a new connection of a device: drops those answered
    /// longest ago past [`MAX_CONNECTIONS`] - 1 (not counting `keep`).
    fn drop_old_connections(&self, user: &UserId, device: &str, keep: &str) -> ServiceResult<()> {
        let mut others = Vec::new();
        for conn_id in self.tables.connections_of(user.as_str(), device)? {
            if conn_id == keep {
                continue;
            }
            let last = self
                .record(user, device, &conn_id)?
                .states
                .iter()
                .map(|s| s.stream)
                .max()
                .unwrap_or(0);
            others.push((last, conn_id));
        }
        if others.len() < MAX_CONNECTIONS {
            return Ok(());
        }
        others.sort();
        let mut batch = Batch::new();
        for (_, conn_id) in &others[..=others.len() - MAX_CONNECTIONS] {
            self.forget(user, device, conn_id);
            self.tables.delete(&mut batch, user.as_str(), device, conn_id);
        }
        self.tables.write(batch)?;
        Ok(())
    }

    /// Drops a device's connections, in the batch deleting the device.
    pub fn delete_device_in(&self, batch: &mut Batch, user: &UserId, device: &str) -> ServiceResult<()> {
        for conn_id in self.tables.connections_of(user.as_str(), device)? {
            self.forget(user, device, &conn_id);
            self.tables.delete(batch, user.as_str(), device, &conn_id);
        }
        Ok(())
    }

    /// The state a `pos` names (or `M_UNKNOWN_POS`), and the connection's
    /// next response number.
    fn continue_from(
        &self,
        user: &UserId,
        device: &str,
        conn_id: &str,
        pos: Option<&str>,
    ) -> ServiceResult<(Option<ConnectionState>, u64)> {
        let record = self.record(user, device, conn_id)?;
        let next_seq = record.states.iter().map(|s| s.seq).max().map_or(1, |seq| seq + 1);
        let Some(pos) = pos else {
            return Ok((None, next_seq));
        };
        let unknown = || ServiceError::UnknownPos(format!("unknown position {pos:?}: start a new connection"));
        let (stream, seq) = parse_pos(pos).ok_or_else(unknown)?;
        let state = record
            .states
            .iter()
            .find(|state| state.seq == seq && state.stream == stream)
            .cloned()
            .ok_or_else(unknown)?;
        Ok((Some(state), next_seq))
    }
}

pub fn pos(stream: u64, seq: u64) -> String {
    format!("{stream}_{seq}")
}

fn parse_pos(pos: &str) -> Option<(u64, u64)> {
    let (stream, seq) = pos.split_once('_')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

/// Computes the response to `request` up to stream position `up_to`.
/// Reads only: the caller stores the outcome with
/// [`SlidingSyncService::commit`] once it answers with it.
pub fn compute(s: &Services, user: &UserId, device: &str, request: &SyncRequest, up_to: u64) -> ServiceResult<Outcome> {
    let body = &request.body;
    let conn_id = body.conn_id.clone().unwrap_or_default();
    if conn_id.len() > MAX_CONN_ID_LEN {
        return Err(ServiceError::InvalidParam(format!(
            "conn_id is longer than {MAX_CONN_ID_LEN} bytes"
        )));
    }
    let (previous, seq) = s
        .sliding_sync
        .continue_from(user, device, &conn_id, body.pos.as_deref())?;
    let since = previous.as_ref().map(|p| p.stream);
    let mut state = ConnectionState {
        seq,
        stream: up_to,
        rooms: previous.as_ref().map(|p| p.rooms.clone()).unwrap_or_default(),
        configs: previous.as_ref().map(|p| p.configs.clone()).unwrap_or_default(),
        subscriptions: previous.as_ref().map(|p| p.subscriptions.clone()).unwrap_or_default(),
        list_counts: BTreeMap::new(),
        extensions_enabled: previous
            .as_ref()
            .map(|p| p.extensions_enabled.clone())
            .unwrap_or_default(),
    };
    let extensions_config = sticky_extensions(&body.extensions, &mut state.extensions_enabled);
    for (room_id, sub) in &body.room_subscriptions {
        state.subscriptions.insert(
            room_id.to_string(),
            RoomConfig::new(sub.timeline_limit, &sub.required_state).record(),
        );
    }
    while state.subscriptions.len() > MAX_SUBSCRIPTIONS {
        state.subscriptions.pop_first();
    }

    let candidates = candidates(s, user, &state, up_to)?;
    let direct_rooms = direct_rooms(s, user)?;
    let mut picked: BTreeMap<OwnedRoomId, RoomConfig> = BTreeMap::new();
    let mut lists = BTreeMap::new();
    let mut list_rooms: BTreeMap<String, Vec<OwnedRoomId>> = BTreeMap::new();
    for (name, list) in &body.lists {
        let mut matching = Vec::new();
        for candidate in &candidates {
            if list_filter_passes(s, user, list.filters.as_ref(), candidate, &direct_rooms)? {
                matching.push(candidate);
            }
        }
        let count = matching.len() as u64;
        let mut list_result = v5::response::List::default();
        list_result.count = UInt::try_from(count).unwrap_or(UInt::MAX);
        lists.insert(name.clone(), list_result);
        state.list_counts.insert(name.clone(), count);
        let mut config = RoomConfig::new(list.room_details.timeline_limit, &list.room_details.required_state);
        config.lists.insert(name.clone());
        config.bump_types = request.bump_event_types.get(name).cloned();
        let in_range = list_rooms.entry(name.clone()).or_default();
        for (start, end) in &list.ranges {
            let (start, end) = (u64::from(*start), u64::from(*end));
            for candidate in matching
                .iter()
                .skip(start as usize)
                .take(end.saturating_sub(start) as usize + 1)
            {
                in_range.push(candidate.room_id.clone());
                picked
                    .entry(candidate.room_id.clone())
                    .or_default()
                    .merge(config.clone());
            }
        }
    }
    let by_id: BTreeMap<&str, &Candidate> = candidates.iter().map(|c| (c.room_id.as_str(), c)).collect();
    let mut subscribed = Vec::new();
    for (room_id, config) in &state.subscriptions {
        let Ok(room_id) = OwnedRoomId::try_from(room_id.as_str()) else {
            continue;
        };
        // Rooms the user has no part in are not shown (MSC4186 allows no peeking).
        if by_id.contains_key(room_id.as_str()) {
            subscribed.push(room_id.clone());
            picked
                .entry(room_id)
                .or_default()
                .merge(RoomConfig::from_record(config));
        }
    }

    let ignored = s.account_data.ignored_users(user)?;
    let mut rooms = BTreeMap::new();
    let mut sent_whole = HashMap::new();
    for (room_id, config) in &picked {
        let Some(candidate) = by_id.get(room_id.as_str()) else {
            continue;
        };
        let sent = state.rooms.get(room_id.as_str());
        let expanded = sent.is_some_and(|r| {
            state
                .configs
                .get(r.config as usize)
                .is_none_or(|had| config.expands(had))
        });
        let ctx = room::RoomContext {
            expanded,
            user,
            device,
            candidate,
            config,
            up_to,
            connection_since: since,
            is_dm: direct_rooms.contains(room_id.as_str()),
            ignored: &ignored,
        };
        let Some(built) = room::build(s, &ctx, sent)? else {
            continue;
        };
        if built.whole {
            let timeline_ids = built
                .room
                .timeline
                .iter()
                .filter_map(|e| e.get_field::<String>("event_id").ok().flatten())
                .collect();
            sent_whole.insert(room_id.clone(), timeline_ids);
        }
        let config = intern_config(&mut state.configs, config.record());
        state.rooms.insert(
            room_id.to_string(),
            SentRoom {
                since: built.held_up_to,
                config,
                membership: candidate.membership.membership.clone(),
                counts: built.counts,
            },
        );
        rooms.insert(room_id.clone(), built.room);
    }

    compact_configs(&mut state);

    let scope = extensions::Scope {
        list_rooms: &list_rooms,
        subscribed: &subscribed,
        sent_whole: &sent_whole,
    };
    let extensions = extensions::compute(s, user, device, &extensions_config, &scope, since, up_to)?;
    let lists_changed = previous.as_ref().is_none_or(|p| p.list_counts != state.list_counts);
    let has_news = !rooms.is_empty() || lists_changed || extensions::has_news(&extensions);
    let mut response = v5::Response::new(pos(up_to, state.seq));
    response.txn_id = body.txn_id.clone();
    response.lists = lists;
    response.rooms = rooms;
    response.extensions = extensions;
    Ok(Outcome {
        response,
        state,
        conn_id,
        continued_from: previous.map(|p| p.seq),
        has_news,
    })
}

/// The index of `config` in `configs`, added if new.
fn intern_config(configs: &mut Vec<RoomConfigRecord>, config: RoomConfigRecord) -> u32 {
    let index = match configs.iter().position(|c| *c == config) {
        Some(index) => index,
        None => {
            configs.push(config);
            configs.len() - 1
        }
    };
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// Drops the configs no room was last sent with, so that a client that
/// keeps changing its configs does not grow its record.
fn compact_configs(state: &mut ConnectionState) {
    let used: BTreeSet<u32> = state.rooms.values().map(|r| r.config).collect();
    if used.len() == state.configs.len() {
        return;
    }
    let mut renumbered = BTreeMap::new();
    let mut kept = Vec::with_capacity(used.len());
    for index in used {
        if let Some(config) = state.configs.get(index as usize) {
            renumbered.insert(index, u32::try_from(kept.len()).unwrap_or(u32::MAX));
            kept.push(config.clone());
        }
    }
    for room in state.rooms.values_mut() {
        room.config = renumbered.get(&room.config).copied().unwrap_or(u32::MAX);
    }
    state.configs = kept;
}

/// The request's extension configs, each turned on or off as the request
/// says or, when it does not say, as the connection had it; `enabled`
/// is updated to match.
fn sticky_extensions(
    requested: &v5::request::Extensions,
    enabled: &mut BTreeMap<String, bool>,
) -> v5::request::Extensions {
    let mut config = requested.clone();
    let mut stick = |name: &str, flag: &mut Option<bool>| match *flag {
        Some(on) => {
            enabled.insert(name.to_owned(), on);
        }
        None => *flag = enabled.get(name).copied(),
    };
    stick("to_device", &mut config.to_device.enabled);
    stick("e2ee", &mut config.e2ee.enabled);
    stick("account_data", &mut config.account_data.enabled);
    stick("receipts", &mut config.receipts.enabled);
    stick("typing", &mut config.typing.enabled);
    config
}

/// The user's rooms a list may show, the most recently active first.
///
/// Joined, invited and knocked rooms; rooms the user was kicked or banned
/// from; rooms the user left only when this connection sent them before
/// (MSC4186: the client knows it left, and needs only the leave itself).
fn candidates(s: &Services, user: &UserId, state: &ConnectionState, up_to: u64) -> ServiceResult<Vec<Candidate>> {
    let mut out = Vec::new();
    for (room_id, membership) in s.timeline.user_rooms(user)? {
        if membership.forgotten {
            continue;
        }
        let record = s.timeline.room(&room_id)?;
        let wanted = match membership.membership.as_str() {
            "join" | "invite" | "knock" => true,
            _ => {
                state.rooms.contains_key(room_id.as_str())
                    || record
                        .as_ref()
                        .map(|r| removed_by_another(s, user, r))
                        .transpose()?
                        .unwrap_or(false)
            }
        };
        if !wanted {
            continue;
        }
        let recency = match (&record, membership.membership.as_str()) {
            (Some(record), "join") => last_visible(s, record, up_to)?,
            _ => membership.count,
        };
        out.push(Candidate {
            room_id,
            membership,
            record,
            recency,
        });
    }
    out.sort_by(|a, b| b.recency.cmp(&a.recency).then_with(|| a.room_id.cmp(&b.room_id)));
    Ok(out)
}

/// The stream position of the room's latest event a response up to
/// `up_to` can send: one still being written after it does not move the
/// room up the list before the room can carry it.
fn last_visible(s: &Services, record: &RoomRecord, up_to: u64) -> ServiceResult<u64> {
    if record.last_count <= up_to {
        return Ok(record.last_count);
    }
    match s.timeline.events(record, Some(up_to), Direction::Backward).next() {
        Some(event) => Ok(position::stream(event?.count)),
        None => Ok(0),
    }
}

/// Whether the user's leave was someone else's doing (a kick or a ban).
fn removed_by_another(s: &Services, user: &UserId, record: &RoomRecord) -> ServiceResult<bool> {
    let member = s
        .timeline
        .state_event(s, record.state_snapshot, "m.room.member", user.as_str())?;
    Ok(member.is_some_and(|m| m.sender() != user.as_str()))
}

/// The rooms `m.direct` account data names.
fn direct_rooms(s: &Services, user: &UserId) -> ServiceResult<HashSet<String>> {
    let content = match s.account_data.get(user, None, "m.direct") {
        Ok(raw) => serde_json::from_str::<serde_json::Value>(raw.get()).unwrap_or_default(),
        Err(ServiceError::NotFound(_)) => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    let mut rooms = HashSet::new();
    if let Some(by_user) = content.as_object() {
        for room_ids in by_user.values() {
            for room_id in room_ids.as_array().into_iter().flatten() {
                if let Some(room_id) = room_id.as_str() {
                    rooms.insert(room_id.to_owned());
                }
            }
        }
    }
    Ok(rooms)
}

/// Whether a room passes a list's filters.
fn list_filter_passes(
    s: &Services,
    user: &UserId,
    filters: Option<&v5::request::ListFilters>,
    candidate: &Candidate,
    direct_rooms: &HashSet<String>,
) -> ServiceResult<bool> {
    let Some(filters) = filters else {
        return Ok(true);
    };
    let membership = candidate.membership.membership.as_str();
    if let Some(is_invite) = filters.is_invite {
        if is_invite != (membership == "invite") {
            return Ok(false);
        }
    }
    if let Some(is_dm) = filters.is_dm {
        if is_dm != direct_rooms.contains(candidate.room_id.as_str()) {
            return Ok(false);
        }
    }
    // What follows reads the room's state, which an invitee may not see.
    let readable = membership != "invite" && membership != "knock";
    if let Some(is_encrypted) = filters.is_encrypted {
        let encrypted = match (&candidate.record, readable) {
            (Some(record), true) => s
                .timeline
                .state_event(s, record.state_snapshot, "m.room.encryption", "")?
                .is_some(),
            _ => stripped_has(s, user, candidate, "m.room.encryption")?,
        };
        if is_encrypted != encrypted {
            return Ok(false);
        }
    }
    if !filters.room_types.is_empty() || !filters.not_room_types.is_empty() {
        let room_type = room_type(s, candidate)?;
        let matches = |filter: &ruma::directory::RoomTypeFilter| match filter {
            ruma::directory::RoomTypeFilter::Default => room_type.is_none(),
            other => other.as_str().is_some_and(|t| room_type.as_deref() == Some(t)),
        };
        if filters.not_room_types.iter().any(matches) {
            return Ok(false);
        }
        if !filters.room_types.is_empty() && !filters.room_types.iter().any(matches) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The room's type from its create event (spaces are `m.space`).
fn room_type(s: &Services, candidate: &Candidate) -> ServiceResult<Option<String>> {
    let Some(record) = &candidate.record else {
        return Ok(None);
    };
    let create = s.timeline.state_event(s, record.state_snapshot, "m.room.create", "")?;
    Ok(create.and_then(|c| c.content_str("type").map(str::to_owned)))
}

/// Whether an invite's stripped state holds an event of this type.
fn stripped_has(s: &Services, user: &UserId, candidate: &Candidate, event_type: &str) -> ServiceResult<bool> {
    let state = room::stripped_state(s, user, candidate)?;
    Ok(state.iter().any(|raw| {
        serde_json::from_str::<serde_json::Value>(raw.get())
            .is_ok_and(|e| e.get("type").and_then(|t| t.as_str()) == Some(event_type))
    }))
}

/// The bump types a room config names, or the default ones.
fn bump_types(config: &RoomConfig) -> Vec<&str> {
    match &config.bump_types {
        Some(types) if !types.is_empty() => types.iter().map(String::as_str).collect(),
        _ => DEFAULT_BUMP_TYPES.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_pos(&pos(42, 7)), Some((42, 7)));
        assert_eq!(parse_pos("42"), None);
        assert_eq!(parse_pos("a_b"), None);
        assert_eq!(parse_pos("-1_2"), None);
    }

    #[test]
    fn configs_are_stored_once_and_unused_ones_dropped() {
        let config = |limit: u64| RoomConfigRecord {
            timeline_limit: limit,
            required_state: vec![("m.room.name".to_owned(), String::new())],
        };
        let mut state = ConnectionState::default();
        for (room, limit) in [("!a:x", 1), ("!b:x", 1), ("!c:x", 20)] {
            let index = intern_config(&mut state.configs, config(limit));
            let sent = SentRoom {
                config: index,
                ..SentRoom::default()
            };
            state.rooms.insert(room.to_owned(), sent);
        }
        assert_eq!(state.configs.len(), 2, "two rooms share one config");
        // Room a and b move to the larger config: the small one goes.
        let index = intern_config(&mut state.configs, config(20));
        for room in ["!a:x", "!b:x"] {
            state.rooms.get_mut(room).unwrap().config = index;
        }
        compact_configs(&mut state);
        assert_eq!(state.configs, vec![config(20)]);
        assert!(state.rooms.values().all(|r| r.config == 0));
    }

    #[test]
    fn merged_configs_are_the_superset() {
        let member = ruma::events::StateEventType::RoomMember;
        let name = ruma::events::StateEventType::RoomName;
        let mut a = RoomConfig::new(UInt::from(1u32), &[(member.clone(), "$LAZY".to_owned())]);
        let b = RoomConfig::new(UInt::from(20u32), &[(name, String::new())]);
        a.merge(b.clone());
        assert_eq!(a.timeline_limit, 20);
        assert_eq!(a.required_state.len(), 2);
        assert!(!a.expands(&a.record()));
        assert!(a.expands(&RoomConfig::new(UInt::from(1u32), &[(member, "$LAZY".to_owned())]).record()));
        assert!(RoomConfig::new(UInt::from(1000u32), &[]).timeline_limit <= MAX_TIMELINE_LIMIT);
    }
}
