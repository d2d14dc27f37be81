//! Full-text search over the rooms a user is in (`POST /search`).
//!
//! Every event's searchable text (`content.body`, `content.name`,
//! `content.topic`) is split into lower-case words, each indexed under its
//! room in the event's own write batch. A query word matches any indexed
//! word it starts ("lunch" finds "lunchtime"); an event matches when every
//! query word does. Candidates from the index are then read and checked
//! again against the requested keys, the filter and history visibility, so
//! a stale index entry (a redacted event) never shows.

use std::collections::{BTreeMap, BTreeSet};

use ruma::api::client::filter::RoomEventFilter;
use ruma::{OwnedRoomId, UserId};
use serde_json::{json, Map, Value as JsonValue};

use super::timeline::StoredEvent;
use super::users::{AVATAR_URL, DISPLAYNAME};
use super::{ServiceError, ServiceResult, Services};
use crate::database::rooms::position;
use crate::database::search::SearchTables;
use crate::database::{Batch, Db};

/// The fields searched when a query names none.
pub const DEFAULT_KEYS: [&str; 3] = ["content.body", "content.name", "content.topic"];
/// Longer words are cut to this many characters (index and query alike).
const MAX_WORD_CHARS: usize = 64;
/// Index candidates read per query word and room at most.
const MAX_CANDIDATES: usize = 10_000;
const DEFAULT_PAGE: usize = 10;
const MAX_PAGE: usize = 100;

/// A `room_events` search.
#[derive(Debug, Default)]
pub struct Query {
    pub search_term: String,
    /// `content.body`, `content.name`, `content.topic`.
    pub keys: Vec<String>,
    pub filter: RoomEventFilter,
    /// Best match first (`rank`) instead of newest first (`recent`).
    pub by_rank: bool,
    pub before_limit: usize,
    pub after_limit: usize,
    pub include_profile: bool,
    pub include_state: bool,
    pub group_by_room: bool,
    pub group_by_sender: bool,
    /// The `next_batch` of the previous page.
    pub next_batch: Option<String>,
}

pub struct SearchService {
    tables: SearchTables,
}

/// The lower-case words of a text, in order, repeats included.
fn word_list(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.chars().take(MAX_WORD_CHARS).flat_map(char::to_lowercase).collect())
}

/// The lower-case words of a text, each once.
pub fn words(text: &str) -> BTreeSet<String> {
    word_list(text).collect()
}

/// The searchable text of an event under `keys`.
fn text_of(event: &StoredEvent, keys: &[&str]) -> String {
    let mut text = String::new();
    for key in keys {
        if let Some(field) = key.strip_prefix("content.") {
            if let Some(value) = event.content_str(field) {
                text.push_str(value);
                text.push('\n');
            }
        }
    }
    text
}

struct Hit {
    room_id: OwnedRoomId,
    event: StoredEvent,
    rank: f64,
}

impl SearchService {
    pub fn new(db: Db) -> Self {
        Self {
            tables: SearchTables::new(db),
        }
    }

    /// Indexes a new event's words in its batch.
    pub fn index(&self, batch: &mut Batch, short_room_id: u64, event: &StoredEvent) {
        let words = words(&text_of(event, &DEFAULT_KEYS));
        self.tables
            .put_words(batch, short_room_id, words.iter().map(String::as_str), event.count);
    }

    /// Drops an event's words from the index (it is being redacted).
    pub fn unindex(&self, batch: &mut Batch, short_room_id: u64, event: &StoredEvent) {
        let words = words(&text_of(event, &DEFAULT_KEYS));
        self.tables
            .delete_words(batch, short_room_id, words.iter().map(String::as_str), event.count);
    }

    /// Runs a search for `user`; returns the `room_events` result category.
    pub fn search(&self, s: &Services, user: &UserId, device: &str, query: &Query) -> ServiceResult<JsonValue> {
        let terms: Vec<String> = words(&query.search_term).into_iter().collect();
        let keys: Vec<&str> = if query.keys.is_empty() {
            DEFAULT_KEYS.to_vec()
        } else {
            query.keys.iter().map(String::as_str).collect()
        };
        if let Some(bad) = keys.iter().find(|k| !DEFAULT_KEYS.contains(k)) {
            return Err(ServiceError::InvalidParam(format!("cannot search by {bad}")));
        }
        let mut hits = Vec::new();
        if !terms.is_empty() {
            for (room_id, membership) in s.timeline.user_rooms(user)? {
                if membership.membership != "join" || !room_wanted(&query.filter, &room_id) {
                    continue;
                }
                self.search_room(s, user, &room_id, &terms, &keys, query, &mut hits)?;
            }
        }
        if query.by_rank {
            hits.sort_by(|a, b| {
                b.rank
                    .total_cmp(&a.rank)
                    .then(position::order(b.event.count).cmp(&position::order(a.event.count)))
            });
        } else {
            hits.sort_by_key(|h| std::cmp::Reverse(position::order(h.event.count)));
        }

        // Pages: by rank, an offset; by time, the position to continue below,
        // so messages arriving while a client pages do not shift its pages.
        let page_size = query
            .filter
            .limit
            .map_or(DEFAULT_PAGE, |l| usize::try_from(u64::from(l)).unwrap_or(MAX_PAGE))
            .clamp(1, MAX_PAGE);
        let total = hits.len();
        let start = match query.next_batch.as_deref() {
            None => 0,
            Some(token) => {
                let bad = || ServiceError::InvalidParam("invalid next_batch".to_owned());
                if let Some(offset) = token.strip_prefix('k') {
                    offset.parse::<usize>().map_err(|_| bad())?
                } else if let Some(below) = token.strip_prefix('r') {
                    let below: u64 = below.parse().map_err(|_| bad())?;
                    hits.iter()
                        .position(|h| position::order(h.event.count) < position::order(below))
                        .unwrap_or(total)
                } else {
                    return Err(bad());
                }
            }
        };
        let page: Vec<&Hit> = hits.iter().skip(start).take(page_size).collect();
        let next_batch = if start + page.len() < total {
            Some(match (query.by_rank, page.last()) {
                (false, Some(last)) => format!("r{}", last.event.count),
                _ => format!("k{}", start + page.len()),
            })
        } else {
            None
        };

        let viewer = (user, device);
        let mut results = Vec::new();
        let mut highlights = BTreeSet::new();
        let mut rooms_with_results = BTreeSet::new();
        let mut groups_room: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut groups_sender: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for hit in &page {
            for word in words(&text_of(&hit.event, &keys)) {
                if terms.iter().any(|t| word.starts_with(t.as_str())) {
                    highlights.insert(word);
                }
            }
            rooms_with_results.insert(hit.room_id.clone());
            groups_room
                .entry(hit.room_id.to_string())
                .or_default()
                .push(hit.event.event_id.to_string());
            groups_sender
                .entry(hit.event.sender().to_owned())
                .or_default()
                .push(hit.event.event_id.to_string());
            let context = self.context(s, user, device, hit, query)?;
            results.push(json!({
                "rank": hit.rank,
                "result": s.timeline.client_event(s, &hit.event, true, viewer)?,
                "context": context,
            }));
        }
        let mut out = json!({
            "count": total,
            "results": results,
            "highlights": highlights.into_iter().collect::<Vec<_>>(),
        });
        if let Some(next) = &next_batch {
            out["next_batch"] = next.clone().into();
        }
        if query.include_state {
            let mut state = Map::new();
            for room_id in &rooms_with_results {
                let events = s.timeline.readable_state(s, user, room_id)?;
                let events: Vec<JsonValue> = events.iter().map(|e| e.to_client(true, Some(viewer))).collect();
                state.insert(room_id.to_string(), events.into());
            }
            out["state"] = state.into();
        }
        let mut groups = Map::new();
        for (wanted, key, grouped) in [
            (query.group_by_room, "room_id", groups_room),
            (query.group_by_sender, "sender", groups_sender),
        ] {
            if !wanted {
                continue;
            }
            let map: Map<String, JsonValue> = grouped
                .into_iter()
                .enumerate()
                .map(|(order, (k, ids))| {
                    let mut group = json!({"results": ids, "order": order});
                    if let Some(next) = &next_batch {
                        group["next_batch"] = next.clone().into();
                    }
                    (k, group)
                })
                .collect();
            groups.insert(key.to_owned(), map.into());
        }
        if !groups.is_empty() {
            out["groups"] = groups.into();
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn search_room(
        &self,
        s: &Services,
        user: &UserId,
        room_id: &OwnedRoomId,
        terms: &[String],
        keys: &[&str],
        query: &Query,
        hits: &mut Vec<Hit>,
    ) -> ServiceResult<()> {
        let Some(record) = s.timeline.room(room_id)? else {
            return Ok(());
        };
        let mut candidates: Option<BTreeSet<u64>> = None;
        for term in terms {
            let found: BTreeSet<u64> = self
                .tables
                .events_with_prefix(record.short_id, term, MAX_CANDIDATES)?
                .into_iter()
                .collect();
            candidates = Some(match candidates {
                None => found,
                Some(c) => c.intersection(&found).copied().collect(),
            });
        }
        let mut visibility = super::timeline::VisibilityCache::default();
        for count in candidates.unwrap_or_default() {
            let Some(event) = s.timeline.event_at(&record, count)? else {
                continue;
            };
            if !super::sync::event_passes(&query.filter, &event) {
                continue;
            }
            let text = text_of(&event, keys);
            let mut matched = 0usize;
            let mut all_terms = true;
            let event_words: Vec<String> = word_list(&text).collect();
            for term in terms {
                let n = event_words.iter().filter(|w| w.starts_with(term.as_str())).count();
                all_terms &= n > 0;
                matched += n;
            }
            if !all_terms {
                continue;
            }
            let Some(meta) = s.timeline.event_meta(&event.event_id)? else {
                continue;
            };
            if !s
                .timeline
                .can_see_cached(s, user, room_id, &meta, Some(&event), &mut visibility)?
            {
                continue;
            }
            // More occurrences in a shorter text rank higher.
            let rank = matched as f64 / (event_words.len().max(1) as f64).sqrt();
            hits.push(Hit {
                room_id: room_id.clone(),
                event,
                rank,
            });
        }
        Ok(())
    }

    /// The `context` of one result: events around it and, if asked, the
    /// senders' profiles.
    fn context(&self, s: &Services, user: &UserId, device: &str, hit: &Hit, query: &Query) -> ServiceResult<JsonValue> {
        let viewer = (user, device);
        let mut context = json!({});
        if query.before_limit > 0 || query.after_limit > 0 {
            let record = s.timeline.room_or_404(&hit.room_id)?;
            let around = s.timeline.around(
                s,
                user,
                &hit.room_id,
                &record,
                hit.event.count,
                query.before_limit,
                query.after_limit,
                &RoomEventFilter::default(),
            )?;
            if query.include_profile {
                let mut profiles = Map::new();
                for sender in around
                    .before
                    .iter()
                    .chain(&around.after)
                    .chain(std::iter::once(&hit.event))
                    .map(StoredEvent::sender)
                {
                    if profiles.contains_key(sender) {
                        continue;
                    }
                    let Ok(sender_id) = <&UserId>::try_from(sender) else {
                        continue;
                    };
                    let mut profile = json!({});
                    for (field, key) in [(DISPLAYNAME, "displayname"), (AVATAR_URL, "avatar_url")] {
                        if let Some(v) = s.users.profile_field(sender_id, field)? {
                            profile[key] = v.into();
                        }
                    }
                    profiles.insert(sender.to_owned(), profile);
                }
                context["profile_info"] = profiles.into();
            }
            context["start"] = super::sync::timeline_token(position::before(around.first)).into();
            context["end"] = super::sync::timeline_token(around.last).into();
            for (key, events) in [("events_before", &around.before), ("events_after", &around.after)] {
                let events = s.timeline.client_events(s, events, true, viewer)?;
                context[key] =
                    serde_json::to_value(events).map_err(|e| ServiceError::Internal(format!("search context: {e}")))?;
            }
        }
        Ok(context)
    }
}

fn room_wanted(filter: &RoomEventFilter, room_id: &OwnedRoomId) -> bool {
    !filter.not_rooms.contains(room_id) && filter.rooms.as_ref().is_none_or(|rooms| rooms.contains(room_id))
}
