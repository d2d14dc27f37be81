//! /sync v2: what changed for a user between two stream positions.
//!
//! A token is a stream position (see `stream.rs`). For each room the user
//! has a membership in, the room is included when something in it is newer
//! than `since`; its timeline holds the newest events after `since` (up to
//! the filter's limit), and its state section holds the state at the start
//! of the timeline that the client cannot know yet: the whole state on an
//! initial sync or a new join, and otherwise the state that changed in the
//! gap a `limited` timeline leaves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use ruma::api::client::filter::{EventFormat, FilterDefinition, LazyLoadOptions, RoomEventFilter};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::value::RawValue;
use serde_json::Value as JsonValue;

use super::e2e_keys::DeviceListUpdates;
use super::push::Counts;
use super::rooms::naming;
use super::timeline::{StoredEvent, VisibilityCache};
use super::{ServiceError, ServiceResult, Services};
use crate::database::rooms::{position, RoomRecord, UserRoomRecord};
use crate::database::Direction;

/// Events per room timeline when the filter names no limit.
const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// The most events per room timeline, whatever the filter asks.
const MAX_TIMELINE_LIMIT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomSection {
    Join,
    Invite,
    Leave,
    Knock,
}

#[derive(Debug)]
pub struct SyncRoom {
    pub room_id: OwnedRoomId,
    pub section: RoomSection,
    pub timeline: Vec<Box<RawValue>>,
    pub limited: bool,
    pub prev_batch: Option<String>,
    /// State events (sync format), or stripped state for invites and knocks.
    pub state: Vec<Box<RawValue>>,
    pub account_data: Vec<JsonValue>,
    pub joined_count: u64,
    pub invited_count: u64,
    pub heroes: Vec<OwnedUserId>,
    /// Typing and receipts.
    pub ephemeral: Vec<JsonValue>,
    pub unread: Counts,
    pub unread_threads: BTreeMap<String, Counts>,
}

impl SyncRoom {
    /// A room entry with nothing in it yet.
    fn empty(room_id: OwnedRoomId, section: RoomSection) -> Self {
        Self {
            room_id,
            section,
            timeline: Vec::new(),
            limited: false,
            prev_batch: None,
            state: Vec::new(),
            account_data: Vec::new(),
            joined_count: 0,
            invited_count: 0,
            heroes: Vec::new(),
            ephemeral: Vec::new(),
            unread: Counts::default(),
            unread_threads: BTreeMap::new(),
        }
    }
}

#[derive(Debug)]
pub struct SyncResult {
    pub next_batch: u64,
    pub rooms: Vec<SyncRoom>,
    pub account_data: Vec<JsonValue>,
    /// `m.presence` events.
    pub presence: Vec<JsonValue>,
    pub to_device: Vec<Box<RawValue>>,
    pub device_lists: DeviceListUpdates,
    /// The syncing device's unclaimed one-time keys, per algorithm.
    pub one_time_key_counts: BTreeMap<String, u64>,
    pub unused_fallback_key_types: Vec<String>,
}

impl SyncResult {
    /// Whether nothing changed (key counts are always sent, so they do not count).
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
            && self.account_data.is_empty()
            && self.presence.is_empty()
            && self.to_device.is_empty()
            && self.device_lists.is_empty()
    }
}

/// The membership events each device was sent by lazy-loading syncs, per
/// room: the spec has a lazy-loading server not send them again unless the
/// filter sets `include_redundant_members`. Kept in memory and bounded (as
/// Synapse does): after a restart, or once a device's record is dropped, it
/// gets some memberships again, which costs bytes, not correctness.
#[derive(Default)]
pub struct LazyMembersSent {
    devices: Mutex<HashMap<(String, String), DeviceMembers>>,
}

#[derive(Default)]
struct DeviceMembers {
    /// Room → member → the membership event ID sent.
    rooms: HashMap<String, HashMap<String, String>>,
    last_used_ms: u64,
}

/// Devices remembered at most; past that the least recently syncing half
/// is dropped.
const LAZY_DEVICES_KEPT: usize = 1024;

impl LazyMembersSent {
    /// Whether `member_event` is news to this device; records it as sent.
    fn first_time(&self, user: &UserId, device: &str, room_id: &RoomId, member_event: &StoredEvent) -> bool {
        let Some(member) = member_event.state_key() else {
            return true;
        };
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.to_string(), device.to_owned());
        if !devices.contains_key(&key) && devices.len() >= LAZY_DEVICES_KEPT {
            let mut by_age: Vec<((String, String), u64)> =
                devices.iter().map(|(k, d)| (k.clone(), d.last_used_ms)).collect();
            by_age.sort_unstable_by_key(|(_, used)| *used);
            for (old, _) in by_age.into_iter().take(LAZY_DEVICES_KEPT / 2) {
                devices.remove(&old);
            }
        }
        let entry = devices.entry(key).or_default();
        entry.last_used_ms = super::now_ms();
        let sent = entry.rooms.entry(room_id.to_string()).or_default();
        let id = member_event.event_id.as_str();
        if sent.get(member).is_some_and(|s| s == id) {
            return false;
        }
        sent.insert(member.to_owned(), id.to_owned());
        true
    }

    fn forget_device(&self, user: &UserId, device: &str) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.remove(&(user.to_string(), device.to_owned()));
    }
}

/// Parses a /sync or pagination token.
pub fn parse_token(token: &str) -> ServiceResult<u64> {
    token
        .strip_prefix('s')
        .unwrap_or(token)
        .parse()
        .map_err(|_| ServiceError::InvalidParam(format!("{token:?} is not a valid token")))
}

pub fn token(position: u64) -> String {
    format!("s{position}")
}

/// A place in one room's timeline (`/messages`, `/context`, `prev_batch`):
/// a stream token, or `b{n}` among the events fetched from the room's past
/// (see `database::rooms::position`).
pub fn timeline_token(position: u64) -> String {
    match crate::database::rooms::position::backfill_number(position) {
        Some(n) => format!("b{n}"),
        None => token(position),
    }
}

pub fn parse_timeline_token(token: &str) -> ServiceResult<u64> {
    use crate::database::rooms::position;
    match token.strip_prefix('b') {
        Some(n) => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n < position::BACKFILLED)
            .map(position::backfilled)
            .ok_or_else(|| ServiceError::InvalidParam(format!("{token:?} is not a valid token"))),
        None => parse_token(token),
    }
}

/// Whether an event type matches a filter pattern (`*` is a wildcard).
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == event_type,
        Some((head, tail)) => {
            event_type.len() >= head.len() + tail.len()
                && event_type.starts_with(head)
                && type_matches_rest(tail, &event_type[head.len()..])
        }
    }
}

fn type_matches_rest(pattern: &str, rest: &str) -> bool {
    match pattern.split_once('*') {
        None => rest.ends_with(pattern),
        Some((mid, tail)) => rest
            .match_indices(mid)
            .any(|(i, _)| type_matches_rest(tail, &rest[i + mid.len()..])),
    }
}

/// Whether an event passes a room event filter's type and sender rules.
pub fn event_passes(filter: &RoomEventFilter, event: &StoredEvent) -> bool {
    let event_type = event.event_type();
    if filter.not_types.iter().any(|p| type_matches(p, event_type)) {
        return false;
    }
    if let Some(types) = &filter.types {
        if !types.iter().any(|p| type_matches(p, event_type)) {
            return false;
        }
    }
    let sender = event.sender();
    if filter.not_senders.iter().any(|s| s.as_str() == sender) {
        return false;
    }
    if let Some(senders) = &filter.senders {
        if !senders.iter().any(|s| s.as_str() == sender) {
            return false;
        }
    }
    true
}

fn room_allowed(filter: &FilterDefinition, room_id: &OwnedRoomId) -> bool {
    if filter.room.not_rooms.contains(room_id) {
        return false;
    }
    filter.room.rooms.as_ref().is_none_or(|rooms| rooms.contains(room_id))
}

/// Builds the sync response for `user` from `since` up to `up_to`.
pub fn sync(
    s: &Services,
    user: &UserId,
    device: &str,
    since: Option<u64>,
    up_to: u64,
    filter: &FilterDefinition,
    full_state: bool,
) -> ServiceResult<SyncResult> {
    // An initial or full-state sync starts the client over: it holds only
    // the memberships this response sends.
    if since.is_none() || full_state {
        s.lazy_members.forget_device(user, device);
    }
    // To-device messages first: when more wait than one response carries,
    // the whole response stops before the first one left out.
    let to_device = s.to_device.deliver(user, device, since, up_to)?;
    let up_to = to_device.stop_at.unwrap_or(up_to);
    let account_data = s.account_data.changed_since(user, since.unwrap_or(0))?;
    let mut room_account_data: BTreeMap<String, Vec<JsonValue>> = BTreeMap::new();
    let mut global = Vec::new();
    for entry in account_data.into_iter().filter(|e| e.count <= up_to) {
        let content: JsonValue = serde_json::from_str(&entry.content_json).unwrap_or(JsonValue::Null);
        let event = serde_json::json!({"type": entry.event_type, "content": content});
        if entry.room_id.is_empty() {
            global.push(event);
        } else {
            room_account_data.entry(entry.room_id).or_default().push(event);
        }
    }

    let ignored = s.account_data.ignored_users(user)?;
    let mut rooms = Vec::new();
    for (room_id, membership) in s.timeline.user_rooms(user)? {
        if membership.forgotten || !room_allowed(filter, &room_id) {
            continue;
        }
        let Some(record) = s.timeline.room(&room_id)? else {
            // An invite to or a knock on a room of another server, or the
            // end of one.
            if let Some(room) = remote_membership_room(s, user, &room_id, &membership, since, up_to)? {
                rooms.push(room);
            }
            continue;
        };
        let mut extra_data = room_account_data.remove(room_id.as_str()).unwrap_or_default();
        let room = sync_room(
            s,
            user,
            device,
            &room_id,
            &record,
            &membership,
            since,
            up_to,
            filter,
            full_state,
            &ignored,
        )?;
        match room {
            Some(mut room) => {
                if room.section == RoomSection::Join || room.section == RoomSection::Leave {
                    room.account_data.append(&mut extra_data);
                }
                rooms.push(room);
            }
            None if !extra_data.is_empty() && membership.membership == "join" => {
                rooms.push(SyncRoom {
                    account_data: extra_data,
                    ..SyncRoom::empty(room_id, RoomSection::Join)
                });
            }
            None => {}
        }
    }
    let presence = s.presence.sync_events(s, user, since, up_to, &filter.presence)?;
    // Device lists tell what changed since the last sync; an initial sync
    // has nothing to compare with.
    let device_lists = match since {
        Some(since) => s.e2e_keys.device_list_updates(s, user, since, up_to)?,
        None => DeviceListUpdates::default(),
    };
    Ok(SyncResult {
        next_batch: up_to,
        rooms,
        account_data: global,
        presence,
        to_device: to_device.events,
        device_lists,
        one_time_key_counts: s.e2e_keys.one_time_key_counts(user, device)?,
        unused_fallback_key_types: s.e2e_keys.unused_fallback_key_types(user, device)?,
    })
}

/// The deprecated `GET /events` stream: the new timeline events of every
/// joined room after `since`, oldest room first, each with its `room_id`.
/// Unlike /sync it acknowledges nothing (to-device messages stay queued).
pub fn room_events_since(
    s: &Services,
    user: &UserId,
    device: &str,
    since: u64,
    up_to: u64,
) -> ServiceResult<Vec<JsonValue>> {
    let mut filter = FilterDefinition::default();
    filter.room.timeline.limit = Some(ruma::UInt::from(EVENTS_STREAM_LIMIT));
    let ignored = s.account_data.ignored_users(user)?;
    let mut chunk = Vec::new();
    for (room_id, membership) in s.timeline.user_rooms(user)? {
        if membership.membership != "join" {
            continue;
        }
        let Some(record) = s.timeline.room(&room_id)? else {
            continue;
        };
        let room = sync_room(
            s,
            user,
            device,
            &room_id,
            &record,
            &membership,
            Some(since),
            up_to,
            &filter,
            false,
            &ignored,
        )?;
        for event in room.into_iter().flat_map(|r| r.timeline) {
            let mut event: JsonValue = serde_json::from_str(event.get())
                .map_err(|e| ServiceError::Internal(format!("re-reading an event: {e}")))?;
            event["room_id"] = room_id.as_str().into();
            chunk.push(event);
        }
    }
    Ok(chunk)
}

/// Events per room in one `GET /events` answer.
const EVENTS_STREAM_LIMIT: u32 = 100;

#[allow(clippy::too_many_arguments)]
fn sync_room(
    s: &Services,
    user: &UserId,
    device: &str,
    room_id: &OwnedRoomId,
    record: &RoomRecord,
    membership: &UserRoomRecord,
    since: Option<u64>,
    up_to: u64,
    filter: &FilterDefinition,
    full_state: bool,
    ignored: &HashSet<String>,
) -> ServiceResult<Option<SyncRoom>> {
    let since_pos = since.unwrap_or(0);
    let section = match membership.membership.as_str() {
        "join" => RoomSection::Join,
        "invite" => RoomSection::Invite,
        "knock" => RoomSection::Knock,
        _ => RoomSection::Leave,
    };
    let membership_changed = membership.count > since_pos && membership.count <= up_to;
    match section {
        RoomSection::Invite | RoomSection::Knock => {
            if !membership_changed && since.is_some() {
                return Ok(None);
            }
            // An invite from someone this user ignores is not shown.
            if section == RoomSection::Invite && !ignored.is_empty() {
                let invite = s
                    .timeline
                    .state_event(s, record.state_snapshot, "m.room.member", user.as_str())?;
                if invite.is_some_and(|e| ignored.contains(e.sender())) {
                    return Ok(None);
                }
            }
            let state = stripped_state(s, user, record)?;
            return Ok(Some(SyncRoom {
                state,
                ..SyncRoom::empty(room_id.clone(), section)
            }));
        }
        RoomSection::Leave => {
            // Left rooms appear once, when the user leaves, and on an
            // initial sync only if the filter asks for them.
            let wanted = if since.is_some() {
                membership_changed
            } else {
                filter.room.include_leave
            };
            if !wanted {
                return Ok(None);
            }
        }
        RoomSection::Join => {}
    }
    let mut ephemeral = Vec::new();
    let mut ephemeral_changed = false;
    if section == RoomSection::Join {
        let (receipts, newest_receipt) = s.receipts.receipt_event(room_id, since_pos, user)?;
        ephemeral_changed |= since.is_some() && newest_receipt > since_pos;
        ephemeral.extend(receipts);
        if let Some(typing) = s.typing.typing_event(room_id, since) {
            ephemeral_changed = true;
            ephemeral.push(typing);
        }
        let quiet = record.last_count <= since_pos && !membership_changed && !ephemeral_changed;
        if !full_state && since.is_some() && quiet {
            return Ok(None);
        }
    }
    // A left room's timeline stops at the leave.
    let end = if section == RoomSection::Leave {
        membership.count.min(up_to)
    } else {
        up_to
    };

    let timeline_filter = &filter.room.timeline;
    let limit = timeline_filter
        .limit
        .map_or(DEFAULT_TIMELINE_LIMIT, |l| {
            usize::try_from(u64::from(l)).unwrap_or(MAX_TIMELINE_LIMIT)
        })
        .min(MAX_TIMELINE_LIMIT);
    // New to the client (an initial sync, a join since, or a join and a
    // leave both since): the whole state, and history as visibility allows.
    // A membership change of one already joined (a new display name) is not.
    let new_join = match since {
        None => true,
        Some(_) if !membership_changed => false,
        Some(since_pos) => !joined_at(s, user, record, since_pos)?,
    };
    let window = timeline_window(s, user, room_id, record, since, end, limit, |event| {
        event_passes(timeline_filter, event) && !ignored.contains(event.sender())
    })?;
    let (timeline, limited, first_seen_state) = (window.events, window.limited, window.start_snapshot);

    // The state at the start of the timeline.
    let start_snapshot = match first_seen_state {
        Some(snapshot) => snapshot,
        None => s.timeline.snapshot_at(record, end)?,
    };
    let state_filter = &filter.room.state;
    let lazy = !state_filter.lazy_load_options.is_disabled();
    let redundant_too = matches!(
        state_filter.lazy_load_options,
        LazyLoadOptions::Enabled {
            include_redundant_members: true
        }
    );
    let (joined_count, invited_count, heroes) = summary(s, room_id, record, user)?;
    // Whose membership a lazy-loading client gets: the timeline's senders
    // and, as the spec requires, the heroes it names the room by.
    let senders: HashSet<&str> = timeline
        .iter()
        .map(|e| e.sender())
        .chain(heroes.iter().map(|h| h.as_str()))
        .collect();
    // The whole state (shared with the state cache, not copied), or the
    // events of a gap.
    let whole_state = if full_state || new_join {
        Some(s.timeline.state_events(s, start_snapshot)?)
    } else {
        None
    };
    let mut state = Vec::new();
    // Membership changes in a gap reach even a lazy-loading client: it
    // cannot learn of a leave or a new member in the gap any other way.
    let mut gap_members: HashSet<String> = HashSet::new();
    if whole_state.is_none() && limited {
        // State that changed between `since` and the start of the timeline.
        let before = s.state.load_snapshot(s.timeline.snapshot_at(record, since_pos)?)?;
        let after = s.state.load_snapshot(start_snapshot)?;
        for (key, short) in &after {
            if before.get(key) != Some(short) {
                if let Some(event) = s.timeline.event(&s.state.event_id(*short)?)? {
                    if event.event_type() == "m.room.member" {
                        gap_members.insert(event.event_id.to_string());
                    }
                    state.push(event);
                }
            }
        }
    }
    if lazy && whole_state.is_none() {
        // A lazy-loading client only has the members it was sent: give it
        // those of the timeline's senders (less what it already holds; see
        // `LazyMembersSent`).
        let mut have: HashSet<String> = state.iter().map(|e| e.event_id.to_string()).collect();
        for sender in &senders {
            if let Some(member) = s.timeline.state_event(s, start_snapshot, "m.room.member", sender)? {
                if have.insert(member.event_id.to_string()) {
                    state.push(member);
                }
            }
        }
    }
    let in_timeline: HashSet<&str> = timeline.iter().map(|e| e.event_id.as_str()).collect();
    let viewer = Some((user, device));
    let federation_format = filter.event_format == EventFormat::Federation;
    let state = whole_state
        .iter()
        .flat_map(|w| w.iter())
        .chain(state.iter())
        .filter(|e| !in_timeline.contains(e.event_id.as_str()))
        .filter(|e| event_passes(state_filter, e))
        .filter(|e| {
            !lazy
                || e.event_type() != "m.room.member"
                || gap_members.contains(e.event_id.as_str())
                || e.state_key().is_some_and(|k| senders.contains(k) || k == user.as_str())
        })
        .filter(|e| {
            // A membership this device was sent already is not sent again,
            // unless the filter asks for redundant members.
            !lazy
                || redundant_too
                || e.event_type() != "m.room.member"
                || s.lazy_members.first_time(user, device, room_id, e)
        })
        .map(|e| {
            if federation_format {
                as_pdu(s, e)
            } else {
                e.to_client_raw(false, viewer)
            }
        })
        .collect::<ServiceResult<_>>()?;

    let threads_apart = filter.room.timeline.unread_thread_notifications;
    let (unread, unread_threads) = s.push.counts(user, room_id, threads_apart)?;
    let prev_batch = timeline
        .first()
        .map(|e| timeline_token(position::before(e.count)))
        .or_else(|| Some(token(end)));
    Ok(Some(SyncRoom {
        room_id: room_id.clone(),
        section,
        timeline: if federation_format {
            timeline.iter().map(|e| as_pdu(s, e)).collect::<ServiceResult<_>>()?
        } else {
            s.timeline.client_events(s, &timeline, false, (user, device))?
        },
        limited,
        prev_batch,
        state,
        account_data: Vec::new(),
        joined_count,
        invited_count,
        heroes,
        ephemeral,
        unread,
        unread_threads,
    }))
}

/// The newest events of a room's timeline that a sync can send.
pub(crate) struct TimelineWindow {
    /// Oldest first.
    pub events: Vec<StoredEvent>,
    /// Whether events after `since` were left out.
    pub limited: bool,
    /// The state before the earliest visible event scanned: where the
    /// timeline starts (none when nothing was scanned).
    pub start_snapshot: Option<u64>,
}

/// The newest events after `since` up to `end` that `user` may see, at
/// most `limit` of those that pass `keep`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn timeline_window(
    s: &Services,
    user: &UserId,
    room_id: &OwnedRoomId,
    record: &RoomRecord,
    since: Option<u64>,
    end: u64,
    limit: usize,
    keep: impl Fn(&StoredEvent) -> bool,
) -> ServiceResult<TimelineWindow> {
    let since_pos = since.unwrap_or(0);
    let mut events: Vec<StoredEvent> = Vec::new();
    let mut limited = false;
    let mut start_snapshot: Option<u64> = None;
    let mut scanned = 0usize;
    let mut visibility = VisibilityCache::default();
    for event in s.timeline.events(record, Some(end), Direction::Backward) {
        let event = event?;
        if since.is_some() && position::stream(event.count) <= since_pos {
            break;
        }
        scanned += 1;
        // Bounded work even when a filter hides most events.
        if scanned > MAX_TIMELINE_LIMIT * 4 {
            limited = true;
            break;
        }
        if events.len() >= limit {
            limited = true;
            break;
        }
        let Some(meta) = s.timeline.event_meta(&event.event_id)? else {
            continue;
        };
        if !s
            .timeline
            .can_see_cached(s, user, room_id, &meta, Some(&event), &mut visibility)?
        {
            // Nothing earlier is visible either once visibility hides one
            // event of a member's own past.
            limited = true;
            break;
        }
        start_snapshot = Some(meta.state_before);
        if keep(&event) {
            events.push(event);
        }
    }
    events.reverse();
    Ok(TimelineWindow {
        events,
        limited,
        start_snapshot,
    })
}

/// Whether `user` was joined to the room at stream position `at`.
fn joined_at(s: &Services, user: &UserId, record: &RoomRecord, at: u64) -> ServiceResult<bool> {
    // No event yet at `at`: the room did not exist then.
    let Some(last) = s.timeline.events(record, Some(at), Direction::Backward).next() else {
        return Ok(false);
    };
    let Some(meta) = s.timeline.event_meta(&last?.event_id)? else {
        return Ok(false);
    };
    Ok(s.timeline
        .state_event(s, meta.state_after, "m.room.member", user.as_str())?
        .is_some_and(|m| m.content_str("membership") == Some("join")))
}

/// An event in the federation format a filter may ask for: the PDU as
/// servers exchange it. Timelines and room states hold only what clients
/// read, so the whole PDU comes from storage.
fn as_pdu(s: &Services, event: &StoredEvent) -> ServiceResult<Box<RawValue>> {
    let whole = s
        .timeline
        .event(&event.event_id)?
        .ok_or_else(|| ServiceError::Internal(format!("event {} is not stored", event.event_id)))?;
    serde_json::value::to_raw_value(&whole.json).map_err(|e| ServiceError::Internal(format!("event as a PDU: {e}")))
}

/// Joined and invited counts, and the heroes: up to five other members
/// (joined or invited; else those who left or were banned) for a client
/// to name a room by, only when the room has neither a name nor a
/// canonical alias (the spec requires them only then).
pub(crate) fn summary(
    s: &Services,
    room_id: &OwnedRoomId,
    record: &RoomRecord,
    user: &UserId,
) -> ServiceResult<(u64, u64, Vec<OwnedUserId>)> {
    let members = s.timeline.members(room_id)?;
    let members = naming::Members::collect(members.iter().map(|(u, m)| (u.as_str(), m.as_str())));
    let heroes = if is_named(s, record)? {
        Vec::new()
    } else {
        members.heroes(user)
    };
    Ok((members.joined, members.invited, heroes))
}

/// Whether the room has a non-empty `m.room.name` or canonical alias.
fn is_named(s: &Services, record: &RoomRecord) -> ServiceResult<bool> {
    for (event_type, field) in [("m.room.name", "name"), ("m.room.canonical_alias", "alias")] {
        if let Some(event) = s.timeline.state_event(s, record.state_snapshot, event_type, "")? {
            if event.content_str(field).is_some_and(|v| !v.is_empty()) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A room this server is not in, as the user's sync shows it: an invite
/// or a knock (the stripped state the room's server sent), or the end of
/// one.
fn remote_membership_room(
    s: &Services,
    user: &UserId,
    room_id: &OwnedRoomId,
    membership: &UserRoomRecord,
    since: Option<u64>,
    up_to: u64,
) -> ServiceResult<Option<SyncRoom>> {
    let changed = membership.count > since.unwrap_or(0) && membership.count <= up_to;
    let section = match membership.membership.as_str() {
        "invite" => RoomSection::Invite,
        "knock" => RoomSection::Knock,
        _ => RoomSection::Leave,
    };
    match membership.membership.as_str() {
        "invite" | "knock" if changed || since.is_none() => {
            let Some(invite) = s.timeline.remote_invite(user, room_id)? else {
                return Ok(None);
            };
            let mut state = Vec::new();
            for json in &invite.stripped_state {
                state.push(RawValue::from_string(json.clone()).map_err(|e| ServiceError::Internal(e.to_string()))?);
            }
            Ok(Some(SyncRoom {
                state,
                ..SyncRoom::empty(room_id.clone(), section)
            }))
        }
        "leave" if changed && since.is_some() => Ok(Some(SyncRoom::empty(room_id.clone(), RoomSection::Leave))),
        _ => Ok(None),
    }
}

/// The stripped state an invited or knocking user sees.
pub(crate) fn stripped_state(s: &Services, user: &UserId, record: &RoomRecord) -> ServiceResult<Vec<Box<RawValue>>> {
    let mut out = Vec::new();
    let keys = super::timeline::STRIPPED_STATE_TYPES.iter().map(|t| (*t, ""));
    for (event_type, key) in keys.chain([("m.room.member", user.as_str())]) {
        if let Some(event) = s.timeline.state_event(s, record.state_snapshot, event_type, key)? {
            let client = event.to_client(false, None);
            let stripped = serde_json::json!({
                "type": client["type"],
                "state_key": client["state_key"],
                "sender": client["sender"],
                "content": client["content"],
            });
            out.push(
                serde_json::value::to_raw_value(&stripped)
                    .map_err(|e| ServiceError::Internal(format!("stripped state: {e}")))?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_type_wildcards() {
        assert!(type_matches("m.room.message", "m.room.message"));
        assert!(type_matches("m.room.*", "m.room.message"));
        assert!(type_matches("*", "anything"));
        assert!(type_matches("m.*.message", "m.room.message"));
        assert!(!type_matches("m.room.*", "m.call.invite"));
        assert!(!type_matches("m.room.message", "m.room.messages"));
        assert!(!type_matches("m.*.x", "m.x"));
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_token(&token(42)).unwrap(), 42);
        assert_eq!(parse_token("42").unwrap(), 42);
        assert!(parse_token("s-1").is_err());
        assert!(parse_token("banana").is_err());
        for position in [1, 42, position::backfilled(0), position::backfilled(7)] {
            assert_eq!(parse_timeline_token(&timeline_token(position)).unwrap(), position);
        }
        assert_eq!(timeline_token(position::backfilled(7)), "b7");
        assert!(parse_timeline_token("b-1").is_err());
    }
}
