//! One room of a sliding sync response: whole (the first time a
//! connection sends it, or when its room config grew or the user joined),
//! or what changed after the position the client holds it at.

use std::collections::{BTreeSet, HashSet};

use ruma::api::client::sync::sync_events::v5::response::{Hero, Room};
use ruma::api::client::sync::sync_events::UnreadNotificationsCount;
use ruma::serde::Raw;
use ruma::{JsOption, OwnedMxcUri, OwnedUserId, UInt, UserId};
use serde_json::value::RawValue;

use super::{bump_types, Candidate, RoomConfig};
use crate::database::rooms::{position, RoomRecord};
use crate::database::sliding_sync::SentRoom;
use crate::database::Direction;
use crate::service::sync::{self as sync_service, timeline_window};
use crate::service::timeline::StoredEvent;
use crate::service::{ServiceError, ServiceResult, Services};

/// Events scanned back for the latest one that moves `bump_stamp`.
const BUMP_SCAN: usize = 100;

pub(super) struct RoomContext<'a> {
    pub user: &'a UserId,
    pub device: &'a str,
    pub candidate: &'a Candidate,
    pub config: &'a RoomConfig,
    pub up_to: u64,
    /// The stream position the connection's previous response covered:
    /// events after it are "live".
    pub connection_since: Option<u64>,
    pub is_dm: bool,
    pub ignored: &'a HashSet<String>,
    /// Whether the room config asks for more than the room was sent with.
    pub expanded: bool,
}

pub(super) struct Built {
    pub room: Room,
    /// Sent whole (`initial`).
    pub whole: bool,
    /// The stream position the client now holds the room at.
    pub held_up_to: u64,
    pub counts: (u64, u64),
}

/// The room's entry, or none when the client holds it up to date.
pub(super) fn build(s: &Services, ctx: &RoomContext, sent: Option<&SentRoom>) -> ServiceResult<Option<Built>> {
    let membership = &ctx.candidate.membership;
    let was_invited = sent.is_some_and(|r| r.membership == "invite" || r.membership == "knock");
    match (membership.membership.as_str(), &ctx.candidate.record) {
        ("invite" | "knock", _) | (_, None) => invite(s, ctx, sent),
        ("leave" | "ban", Some(record)) if was_invited => withdrawn(s, ctx, record, sent),
        (_, Some(record)) => member(s, ctx, record, sent),
    }
}

/// An invite (or knock) the client holds that ended without a join
/// (rejected, withdrawn, refused): the room again, with only the user's
/// own membership, so the client drops the invite and sees nothing of a
/// room it never joined.
fn withdrawn(
    s: &Services,
    ctx: &RoomContext,
    record: &RoomRecord,
    sent: Option<&SentRoom>,
) -> ServiceResult<Option<Built>> {
    let membership = &ctx.candidate.membership;
    if sent.is_some_and(|r| membership.count <= r.since) {
        return Ok(None);
    }
    let snapshot = s.timeline.snapshot_at(record, membership.count)?;
    let mut room = Room::new();
    room.initial = Some(true);
    if let Some(own) = s
        .timeline
        .state_event(s, snapshot, "m.room.member", ctx.user.as_str())?
    {
        room.required_state = vec![Raw::from_json(own.to_client_raw(false, Some((ctx.user, ctx.device)))?)];
    }
    room.bump_stamp = Some(uint(membership.count));
    Ok(Some(Built {
        room,
        whole: true,
        held_up_to: ctx.up_to.max(membership.count),
        counts: (0, 0),
    }))
}

/// An invite (or a knock): the stripped state the invitee may see.
fn invite(s: &Services, ctx: &RoomContext, sent: Option<&SentRoom>) -> ServiceResult<Option<Built>> {
    let membership = &ctx.candidate.membership;
    let unchanged = sent.is_some_and(|r| r.membership == membership.membership && membership.count <= r.since);
    if unchanged || !matches!(membership.membership.as_str(), "invite" | "knock") {
        return Ok(None);
    }
    let mut room = Room::new();
    room.initial = Some(true);
    let state = stripped_state(s, ctx.user, ctx.candidate)?;
    if membership.membership == "invite" {
        room.invite_state = Some(state.into_iter().map(Raw::from_json).collect());
    }
    room.bump_stamp = Some(uint(membership.count));
    if ctx.is_dm {
        room.is_dm = Some(true);
    }
    Ok(Some(Built {
        room,
        whole: true,
        held_up_to: ctx.up_to.max(membership.count),
        counts: (0, 0),
    }))
}

/// A room the user is or was joined to.
fn member(
    s: &Services,
    ctx: &RoomContext,
    record: &RoomRecord,
    sent: Option<&SentRoom>,
) -> ServiceResult<Option<Built>> {
    let user = ctx.user;
    let room_id = &ctx.candidate.room_id;
    let membership = &ctx.candidate.membership;
    let joined = membership.membership == "join";
    // A former member's view stops at their leave.
    let end = if joined {
        ctx.up_to
    } else {
        membership.count.min(ctx.up_to)
    };
    let counts = if joined {
        let (counts, _) = s.push.counts(user, room_id, false)?;
        (counts.notifications, counts.highlights)
    } else {
        (0, 0)
    };
    let whole = match sent {
        None => true,
        Some(r) => (r.membership != membership.membership && joined) || ctx.expanded,
    };
    let mut counts_changed = false;
    if let (false, Some(r)) = (whole, sent) {
        // Counts are read as they are now, and may already count an event
        // still being written after `end`: they are news only once the
        // room's events up to them can be sent too.
        counts_changed = counts != r.counts && record.last_count <= end;
        let changed = (joined && record.last_count > r.since) || membership.count > r.since || counts_changed;
        if !changed {
            return Ok(None);
        }
    }
    let since = if whole { None } else { sent.map(|r| r.since) };

    let limit = usize::try_from(ctx.config.timeline_limit).unwrap_or(usize::MAX);
    let window = timeline_window(s, user, room_id, record, since, end, limit, |event| {
        !ctx.ignored.contains(event.sender())
    })?;
    let mut room = Room::new();
    room.initial = whole.then_some(true);
    room.limited = window.limited;
    room.prev_batch = Some(match window.events.first() {
        Some(first) => sync_service::timeline_token(position::before(first.count)),
        None => sync_service::token(end),
    });
    let live = match ctx.connection_since {
        Some(since) => window
            .events
            .iter()
            .filter(|e| position::stream(e.count) > since)
            .count(),
        None => 0,
    };
    room.num_live = Some(uint(live as u64));

    let snapshot = if joined {
        record.state_snapshot
    } else {
        s.timeline.snapshot_at(record, end)?
    };
    let wanted = WantedState::new(&ctx.config.required_state, user);
    let mut state = match since {
        None => wanted.in_state(s, snapshot)?,
        Some(since) => wanted.changed(s, s.timeline.snapshot_at(record, since)?, snapshot)?,
    };
    if wanted.lazy_members {
        // Whoever the timeline shows: its senders and its membership targets.
        let mut have: HashSet<String> = state.iter().map(|e| e.event_id.to_string()).collect();
        let people: BTreeSet<&str> = window
            .events
            .iter()
            .map(|e| e.sender())
            .chain(
                window
                    .events
                    .iter()
                    .filter(|e| e.event_type() == "m.room.member")
                    .filter_map(|e| e.state_key()),
            )
            .collect();
        for person in people {
            if let Some(member) = s.timeline.state_event(s, snapshot, "m.room.member", person)? {
                if have.insert(member.event_id.to_string()) {
                    state.push(member);
                }
            }
        }
    }
    // The room's newest event may be one still being written after `end`:
    // then nothing is new yet, and the room waits for the next response.
    let nothing_new = window.events.is_empty() && !window.limited && state.is_empty() && !counts_changed;
    if let (Some(since), true) = (since, nothing_new) {
        if membership.count <= since {
            return Ok(None);
        }
    }
    let viewer = Some((user, ctx.device));
    room.required_state = state
        .iter()
        .map(|e| e.to_client_raw(false, viewer).map(Raw::from_json))
        .collect::<ServiceResult<_>>()?;
    room.timeline = s
        .timeline
        .client_events(s, &window.events, false, (user, ctx.device))?
        .into_iter()
        .map(Raw::from_json)
        .collect();

    describe(s, ctx, record, snapshot, &mut room)?;
    room.unread_notifications = unread(counts, joined);
    room.bump_stamp = Some(uint(if joined {
        bump_stamp(s, record, end, &bump_types(ctx.config))?
    } else {
        membership.count
    }));
    Ok(Some(Built {
        room,
        whole,
        held_up_to: end.max(ctx.up_to),
        counts,
    }))
}

/// Name, avatar, heroes, member counts and the DM flag.
fn describe(s: &Services, ctx: &RoomContext, record: &RoomRecord, snapshot: u64, room: &mut Room) -> ServiceResult<()> {
    if let Some(name) = s.timeline.state_event(s, snapshot, "m.room.name", "")? {
        room.name = name.content_str("name").filter(|n| !n.is_empty()).map(str::to_owned);
    }
    if let Some(avatar) = s.timeline.state_event(s, snapshot, "m.room.avatar", "")? {
        room.avatar = match avatar.content_str("url").map(OwnedMxcUri::from) {
            Some(url) => JsOption::Some(url),
            None => JsOption::Null,
        };
    }
    let (joined, invited, heroes) = sync_service::summary(s, &ctx.candidate.room_id, record, ctx.user)?;
    room.joined_count = Some(uint(joined));
    room.invited_count = Some(uint(invited));
    if !heroes.is_empty() {
        room.heroes = Some(
            heroes
                .into_iter()
                .map(|id| hero(s, snapshot, id))
                .collect::<ServiceResult<_>>()?,
        );
    }
    room.is_dm = Some(ctx.is_dm);
    Ok(())
}

fn hero(s: &Services, snapshot: u64, user_id: OwnedUserId) -> ServiceResult<Hero> {
    let member = s.timeline.state_event(s, snapshot, "m.room.member", user_id.as_str())?;
    let mut hero = Hero::new(user_id);
    if let Some(member) = member {
        hero.name = member.content_str("displayname").map(str::to_owned);
        hero.avatar = member.content_str("avatar_url").map(OwnedMxcUri::from);
    }
    Ok(hero)
}

fn unread(counts: (u64, u64), joined: bool) -> UnreadNotificationsCount {
    let mut unread = UnreadNotificationsCount::new();
    if joined {
        // Sent even when zero: that is how a client learns a room was read.
        unread.notification_count = Some(uint(counts.0));
        unread.highlight_count = Some(uint(counts.1));
    }
    unread
}

/// The stream position of the room's latest event of a bump type at or
/// before `end`; when none is near, the oldest position looked at.
fn bump_stamp(s: &Services, record: &RoomRecord, end: u64, types: &[&str]) -> ServiceResult<u64> {
    let mut oldest_seen = record.last_count.min(end);
    for event in s
        .timeline
        .events(record, Some(end), Direction::Backward)
        .take(BUMP_SCAN)
    {
        let event = event?;
        let stream = position::stream(event.count);
        if types.contains(&event.event_type()) {
            return Ok(stream);
        }
        oldest_seen = stream;
    }
    Ok(oldest_seen)
}

/// The stripped state an invitee sees: from the room when this server is
/// in it, else what the inviting server sent.
pub(super) fn stripped_state(s: &Services, user: &UserId, candidate: &Candidate) -> ServiceResult<Vec<Box<RawValue>>> {
    if let Some(record) = &candidate.record {
        return sync_service::stripped_state(s, user, record);
    }
    let Some(invite) = s.timeline.remote_invite(user, &candidate.room_id)? else {
        return Ok(Vec::new());
    };
    invite
        .stripped_state
        .iter()
        .map(|json| RawValue::from_string(json.clone()).map_err(|e| ServiceError::Internal(e.to_string())))
        .collect()
}

fn uint(n: u64) -> UInt {
    UInt::try_from(n).unwrap_or(UInt::MAX)
}

/// A room config's `required_state`, read: `*` for any type or key, `$ME`
/// for the user's own state key, and `m.room.member` with `$LAZY` for the
/// members the timeline shows.
struct WantedState {
    everything: bool,
    /// Types wanted with any state key.
    any_key: HashSet<String>,
    /// State keys wanted of any type.
    any_type: HashSet<String>,
    exact: BTreeSet<(String, String)>,
    lazy_members: bool,
}

impl WantedState {
    fn new(required: &BTreeSet<(String, String)>, user: &UserId) -> Self {
        let mut wanted = Self {
            everything: false,
            any_key: HashSet::new(),
            any_type: HashSet::new(),
            exact: BTreeSet::new(),
            lazy_members: false,
        };
        for (event_type, key) in required {
            let key = if key == "$ME" { user.as_str() } else { key.as_str() };
            match (event_type.as_str(), key) {
                ("*", "*") => wanted.everything = true,
                ("m.room.member", "$LAZY") => wanted.lazy_members = true,
                (_, "$LAZY") => {}
                ("*", key) => {
                    wanted.any_type.insert(key.to_owned());
                }
                (event_type, "*") => {
                    wanted.any_key.insert(event_type.to_owned());
                }
                (event_type, key) => {
                    wanted.exact.insert((event_type.to_owned(), key.to_owned()));
                }
            }
        }
        wanted
    }

    fn has_wildcards(&self) -> bool {
        self.everything || !self.any_key.is_empty() || !self.any_type.is_empty()
    }

    fn matches(&self, event_type: &str, key: &str) -> bool {
        self.everything
            || self.any_key.contains(event_type)
            || self.any_type.contains(key)
            || self.exact.contains(&(event_type.to_owned(), key.to_owned()))
    }

    /// The wanted events of a state snapshot: looked up one by one, unless
    /// a wildcard needs the whole state.
    fn in_state(&self, s: &Services, snapshot: u64) -> ServiceResult<Vec<StoredEvent>> {
        if self.has_wildcards() {
            let state = s.timeline.state_events(s, snapshot)?;
            return Ok(state
                .iter()
                .filter(|e| self.matches(e.event_type(), e.state_key().unwrap_or_default()))
                .cloned()
                .collect());
        }
        let mut out = Vec::new();
        for (event_type, key) in &self.exact {
            if let Some(event) = s.timeline.state_event(s, snapshot, event_type, key)? {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// The wanted events that differ between two snapshots.
    fn changed(&self, s: &Services, before: u64, after: u64) -> ServiceResult<Vec<StoredEvent>> {
        if before == after {
            return Ok(Vec::new());
        }
        let old = s.state.load_snapshot(before)?;
        let new = s.state.load_snapshot(after)?;
        let mut out = Vec::new();
        for (key, short_event) in &new {
            if old.get(key) == Some(short_event) {
                continue;
            }
            let (event_type, state_key) = s.state.state_key(*key)?;
            if !self.matches(&event_type, &state_key) {
                continue;
            }
            if let Some(event) = s.timeline.event(&s.state.event_id(*short_event)?)? {
                out.push(event);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_state_wildcards() {
        let alice: OwnedUserId = "@alice:x".try_into().unwrap();
        let pairs = |p: &[(&str, &str)]| p.iter().map(|(t, k)| (t.to_string(), k.to_string())).collect();
        let wanted = WantedState::new(
            &pairs(&[
                ("m.room.name", ""),
                ("m.room.member", "$ME"),
                ("m.room.member", "$LAZY"),
                ("m.space.child", "*"),
            ]),
            &alice,
        );
        assert!(wanted.lazy_members);
        assert!(wanted.matches("m.room.name", ""));
        assert!(wanted.matches("m.room.member", "@alice:x"));
        assert!(!wanted.matches("m.room.member", "@bob:x"));
        assert!(wanted.matches("m.space.child", "!any:x"));
        assert!(!wanted.matches("m.room.topic", ""));
        assert!(wanted.has_wildcards());
        let everything = WantedState::new(&pairs(&[("*", "*")]), &alice);
        assert!(everything.matches("m.room.topic", ""));
        let by_key = WantedState::new(&pairs(&[("*", "")]), &alice);
        assert!(by_key.matches("m.room.topic", "") && !by_key.matches("m.room.member", "@bob:x"));
    }
}
