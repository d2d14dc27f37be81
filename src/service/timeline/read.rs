//! Reading events as clients see them: history visibility, `/messages`,
//! `/context`, member lists, and bundled aggregations.

use std::collections::HashMap;

use ruma::{EventId, RoomId, ServerName, UserId};
use serde_json::value::RawValue;
use serde_json::Value as JsonValue;

use super::{Context, Page, Pagination, StoredEvent, TimelineService, MAX_PAGE};
use crate::database::rooms::{position, EventMeta, RoomRecord};
use crate::database::Direction;
use crate::service::sync::{parse_timeline_token, timeline_token};
use crate::service::{ServiceError, ServiceResult, Services};

/// Events around one event, as [`TimelineService::around`] finds them.
pub struct Around {
    /// Newest first.
    pub before: Vec<StoredEvent>,
    pub after: Vec<StoredEvent>,
    /// The stream positions the scans stopped at (pagination tokens).
    pub first: u64,
    pub last: u64,
}

/// Visibility answers within one request, keyed by the state snapshots
/// around an event.
#[derive(Default)]
pub struct VisibilityCache {
    by_state: HashMap<(u64, u64), bool>,
    joined_now: Option<bool>,
}

impl TimelineService {
    /// An event as `viewer` reads it, with its bundled aggregations.
    pub fn client_event(
        &self,
        s: &Services,
        event: &StoredEvent,
        with_room_id: bool,
        viewer: (&UserId, &str),
    ) -> ServiceResult<Box<RawValue>> {
        if let Some(erased) = self.erased_for(s, event, viewer.0)? {
            return erased.to_client_raw(with_room_id, Some(viewer));
        }
        let bundle = s.relations.bundle(s, event, viewer.0)?;
        event.to_client_raw_bundled(with_room_id, Some(viewer), bundle.as_ref())
    }

    /// The event as a member who joined after its sender was erased reads
    /// it: redacted (by the room version's rules, without a
    /// `redacted_because`, since no redaction event exists). `None` for
    /// everyone else, and for every event of a user not erased.
    fn erased_for(&self, s: &Services, event: &StoredEvent, viewer: &UserId) -> ServiceResult<Option<StoredEvent>> {
        let Some(erased_at) = s.users.erased_at(event.sender())? else {
            return Ok(None);
        };
        let Some(room_id) = event.room_id() else {
            return Ok(None);
        };
        let joined_after = self
            .tables
            .user_room(viewer.as_str(), &room_id)?
            .is_some_and(|r| r.membership == "join" && r.count > erased_at);
        if !joined_after {
            return Ok(None);
        }
        let Some(record) = self.tables.room(&room_id)? else {
            return Ok(None);
        };
        let (_, rules) = Self::rules(&record)?;
        let redacted = ruma::canonical_json::redact(event.json.clone(), &rules.redaction, None)
            .map_err(|e| ServiceError::Internal(format!("redacting an erased user's event: {e}")))?;
        Ok(Some(StoredEvent {
            event_id: event.event_id.clone(),
            count: event.count,
            json: redacted,
            txn: None,
        }))
    }

    pub fn client_events(
        &self,
        s: &Services,
        events: &[StoredEvent],
        with_room_id: bool,
        viewer: (&UserId, &str),
    ) -> ServiceResult<Vec<Box<RawValue>>> {
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
        let viewer = (user, device);
        let around = self.around(
            s,
            user,
            room_id,
            &record,
            meta.count,
            limit / 2,
            limit - limit / 2,
            filter,
        )?;
        let (before, after, first, last) = (around.before, around.after, around.first, around.last);
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
            start: timeline_token(position::before(first)),
            end: timeline_token(last),
            events_before: self.client_events(s, &before, true, viewer)?,
            event: self.client_event(s, &event, true, viewer)?,
            events_after: self.client_events(s, &after, true, viewer)?,
            state,
        })
    }

    /// Up to `before_wanted` events before stream position `count` and
    /// `after_wanted` after it that `user` may see and `filter` passes.
    #[allow(clippy::too_many_arguments)]
    pub fn around(
        &self,
        s: &Services,
        user: &UserId,
        room_id: &RoomId,
        record: &RoomRecord,
        count: u64,
        before_wanted: usize,
        after_wanted: usize,
        filter: &ruma::api::client::filter::RoomEventFilter,
    ) -> ServiceResult<Around> {
        let mut visibility = VisibilityCache::default();
        let mut collect = |from: u64, direction: Direction, wanted: usize| -> ServiceResult<(Vec<StoredEvent>, u64)> {
            let mut out = Vec::new();
            let mut last = from;
            for e in self.events(record, Some(from), direction).take(MAX_PAGE * 4) {
                let e = e?;
                if out.len() >= wanted.min(MAX_PAGE) {
                    break;
                }
                last = e.count;
                let Some(m) = self.event_meta(&e.event_id)? else {
                    continue;
                };
                if crate::service::sync::event_passes(filter, &e)
                    && self.can_see_cached(s, user, room_id, &m, Some(&e), &mut visibility)?
                {
                    out.push(e);
                }
            }
            Ok((out, last))
        };
        let (before, first) = collect(position::before(count), Direction::Backward, before_wanted)?;
        let (after, last) = collect(position::after(count), Direction::Forward, after_wanted)?;
        Ok(Around {
            before,
            after,
            first,
            last,
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
        Ok(self.state_events(s, snapshot)?.to_vec())
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
            let at = parse_timeline_token(at)?;
            let readable_up_to = match self.tables.user_room(user.as_str(), room_id.as_str())? {
                Some(r) if r.membership != "join" => r.count,
                _ => u64::MAX,
            };
            let at = std::cmp::min_by_key(at, readable_up_to, |p| position::order(*p));
            snapshot = self.snapshot_at(&record, at)?;
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
    ) -> ServiceResult<Box<RawValue>> {
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
            Some(t) => parse_timeline_token(t)?,
            None if page.backward => self.stream.visible(),
            // Before the oldest event: the end of the backfilled ones.
            None => position::backfilled(0),
        };
        let to = page.to.as_deref().map(parse_timeline_token).transpose()?;
        // Positions are between events: backward from `from` reads events at
        // or before it, forward reads events after it.
        let (start, direction) = if page.backward {
            (from, Direction::Backward)
        } else {
            (position::after(from), Direction::Forward)
        };
        let mut chunk = Vec::new();
        let mut end = None;
        let (mut stopped_early, mut reached_to) = (false, false);
        let mut visibility = VisibilityCache::default();
        let mut scanned = 0usize;
        let viewer = Some((user, device));
        let ignored = s.account_data.ignored_users(user)?;
        for event in self.events(&record, Some(start), direction) {
            let event = event?;
            let (at, to) = (position::order(event.count), to.map(position::order));
            let past_to = match (to, page.backward) {
                (Some(to), true) => at <= to,
                (Some(to), false) => at > to,
                (None, _) => false,
            };
            if past_to {
                end = None;
                reached_to = true;
                break;
            }
            // Bounded work per request, even when filters hide most events.
            scanned += 1;
            if chunk.len() >= limit || scanned > MAX_PAGE * 4 {
                stopped_early = true;
                break;
            }
            end = Some(if page.backward {
                position::before(event.count)
            } else {
                event.count
            });
            let Some(meta) = self.event_meta(&event.event_id)? else {
                continue;
            };
            if !crate::service::sync::event_passes(&page.filter, &event)
                || ignored.contains(event.sender())
                || !self.can_see_cached(s, user, room_id, &meta, Some(&event), &mut visibility)?
            {
                continue;
            }
            chunk.push(event);
        }
        // Back at the start of what is stored: no further page (the spec
        // leaves `end` out), unless the federation layer fetches more.
        let mut at_start = None;
        if page.backward && !stopped_early && !reached_to {
            at_start = Some(timeline_token(end.take().unwrap_or(start)));
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
            start: timeline_token(from),
            end: end.map(timeline_token),
            at_start,
            chunk: self.client_events(s, &chunk, true, (user, device))?,
            state,
        })
    }

    /// The event `user` may see that is closest to `ts`: the first at or
    /// after it (`forward`) or the last at or before it
    /// (`timestamp_to_event`).
    pub fn event_at_time(
        &self,
        s: &Services,
        user: &UserId,
        room_id: &RoomId,
        ts: u64,
        forward: bool,
    ) -> ServiceResult<(ruma::OwnedEventId, u64)> {
        let (record, _) = self.readable_snapshot(s, user, room_id)?;
        let mut cache = VisibilityCache::default();
        self.nearest_event(&record, ts, forward, |meta, event| {
            self.can_see_cached(s, user, room_id, meta, Some(event), &mut cache)
        })
    }

    /// The same for another server (`/_matrix/federation/v1/timestamp_to_event`):
    /// the closest event it may see.
    pub fn event_at_time_for_server(
        &self,
        s: &Services,
        server: &ServerName,
        room_id: &RoomId,
        ts: u64,
        forward: bool,
    ) -> ServiceResult<(ruma::OwnedEventId, u64)> {
        let record = self.room_or_404(room_id)?;
        // What a server may see depends on the state around an event only
        // (and on whether it is in the room now), so events between the same
        // two state snapshots share one answer.
        let mut by_state: HashMap<(u64, u64), bool> = HashMap::new();
        self.nearest_event(&record, ts, forward, |meta, event| {
            let key = (meta.state_before, meta.state_after);
            if let Some(visible) = by_state.get(&key) {
                return Ok(*visible);
            }
            let visible = self.server_can_see(s, server, room_id, &event.event_id)?;
            by_state.insert(key, visible);
            Ok(visible)
        })
    }

    /// The event closest to `ts` on its `forward` side that `visible`
    /// accepts. Stream order follows send time here, so the scan stops at
    /// the first event past `ts`; it starts from the end that `ts` is on
    /// the far side of, so the common "jump to a recent date" reads only the
    /// recent events.
    fn nearest_event(
        &self,
        record: &RoomRecord,
        ts: u64,
        forward: bool,
        mut visible: impl FnMut(&EventMeta, &StoredEvent) -> ServiceResult<bool>,
    ) -> ServiceResult<(ruma::OwnedEventId, u64)> {
        let direction = if forward {
            Direction::Backward
        } else {
            Direction::Forward
        };
        let mut best = None;
        for event in self.events(record, None, direction) {
            let event = event?;
            let event_ts = event.origin_server_ts();
            let on_our_side = if forward { event_ts >= ts } else { event_ts <= ts };
            if !on_our_side {
                break;
            }
            let Some(meta) = self.event_meta(&event.event_id)? else {
                continue;
            };
            if visible(&meta, &event)? {
                best = Some((event.event_id, event_ts));
            }
        }
        best.ok_or_else(|| ServiceError::NotFound("no event was found in that direction from this time".to_owned()))
    }

    /// Whether `user` may see the event under the room's history visibility.
    pub fn can_see(&self, s: &Services, user: &UserId, room_id: &RoomId, meta: &EventMeta) -> ServiceResult<bool> {
        let event = self.event(&s.state.event_id(meta.short_event_id)?)?;
        self.can_see_cached(s, user, room_id, meta, event.as_ref(), &mut VisibilityCache::default())
    }

    /// [`Self::can_see`] for one of many events of a request: events between
    /// the same two state snapshots (all the messages between two state
    /// changes) share one answer.
    pub fn can_see_cached(
        &self,
        s: &Services,
        user: &UserId,
        room_id: &RoomId,
        meta: &EventMeta,
        event: Option<&StoredEvent>,
        cache: &mut VisibilityCache,
    ) -> ServiceResult<bool> {
        // Events about the user's own membership (their invite, join, leave)
        // are theirs to see.
        if event.is_some_and(|e| e.event_type() == "m.room.member" && e.state_key() == Some(user.as_str())) {
            return Ok(true);
        }
        let key = (meta.state_before, meta.state_after);
        if let Some(visible) = cache.by_state.get(&key) {
            return Ok(*visible);
        }
        let visibility = self
            .state_event(s, meta.state_before, "m.room.history_visibility", "")?
            .and_then(|e| e.content_str("history_visibility").map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        let visible = if visibility == "world_readable" {
            true
        } else {
            let membership_then = self
                .state_event(s, meta.state_after, "m.room.member", user.as_str())?
                .and_then(|e| e.content_str("membership").map(str::to_owned));
            let mut joined_now = || -> ServiceResult<bool> {
                if cache.joined_now.is_none() {
                    cache.joined_now = Some(self.is_joined(room_id, user)?);
                }
                Ok(cache.joined_now == Some(true))
            };
            match membership_then.as_deref() {
                Some("join") => true,
                Some("invite") if visibility == "invited" => true,
                Some("invite") if visibility == "shared" => joined_now()?,
                _ => visibility == "shared" && joined_now()?,
            }
        };
        cache.by_state.insert(key, visible);
        Ok(visible)
    }
}
