//! Event relationships: the index of events relating to others (edits,
//! threads, references, reactions), `/relations`, `/threads`, and the
//! aggregations bundled into events as clients read them.

use std::collections::HashSet;

use ruma::{EventId, RoomId, UserId};
use serde_json::{json, Value as JsonValue};

use super::timeline::{StoredEvent, VisibilityCache};
use super::{ServiceResult, Services};
use crate::database::relations::{RelationRecord, RelationTables};
use crate::database::{Batch, Db};

pub const REPLACE: &str = "m.replace";
pub const THREAD: &str = "m.thread";
pub const REFERENCE: &str = "m.reference";

/// Relations per page at most.
const MAX_PAGE: usize = 1000;

/// Relations one `/relations` request reads at most, recursion included.
const MAX_RELATED: usize = 10_000;

pub struct RelationsService {
    tables: RelationTables,
}

/// A page of relating events or thread roots.
pub struct RelationPage {
    pub events: Vec<StoredEvent>,
    pub next: Option<u64>,
}

/// `(rel_type, parent event ID)` of an event's `m.relates_to`, if it has one.
pub fn relation_of(content: &JsonValue) -> Option<(String, String)> {
    let relation = content.get("m.relates_to")?;
    let rel_type = relation.get("rel_type")?.as_str()?;
    let parent = relation.get("event_id")?.as_str()?;
    Some((rel_type.to_owned(), parent.to_owned()))
}

impl RelationsService {
    /// Opens the service, completing the index of related events in a
    /// database from before it was kept.
    pub fn open(db: Db) -> ServiceResult<Self> {
        let tables = RelationTables::new(db);
        let added = tables.backfill_parents()?;
        if added > 0 {
            tracing::info!(added, "index of related events filled in");
        }
        Ok(Self { tables })
    }

    /// Indexes a new event that relates to an earlier one of the same room
    /// (in the event's own batch).
    pub fn index(&self, s: &Services, batch: &mut Batch, room_id: &RoomId, event: &StoredEvent) -> ServiceResult<()> {
        let Some(content) = event.content() else {
            return Ok(());
        };
        let content = JsonValue::from(ruma::CanonicalJsonValue::Object(content.clone()));
        let Some((rel_type, parent)) = relation_of(&content) else {
            return Ok(());
        };
        let Ok(parent_id) = EventId::parse(&parent) else {
            return Ok(());
        };
        // A relation to an unknown event or one of another room is kept as a
        // plain event, not indexed.
        let Some(parent_event) = s.timeline.event(&parent_id)? else {
            return Ok(());
        };
        if parent_event.room_id().as_deref() != Some(room_id.as_str()) {
            return Ok(());
        }
        let record = RelationRecord {
            event_id: event.event_id.to_string(),
            rel_type: rel_type.clone(),
            event_type: event.event_type().to_owned(),
            sender: event.sender().to_owned(),
        };
        self.tables.put_relation(batch, &parent, event.count, &record);
        if rel_type == THREAD {
            self.tables
                .put_thread_root(batch, room_id.as_str(), &parent, event.count);
        }
        Ok(())
    }

    /// Drops a redacted event from the index, in the redaction's batch: a
    /// redacted edit no longer replaces, a redacted reaction is no longer
    /// listed, a redacted reply no longer counts (and a thread left without
    /// replies is no thread). `event` is the event as it was before.
    pub fn unindex(&self, batch: &mut Batch, room_id: &RoomId, event: &StoredEvent) -> ServiceResult<()> {
        let Some(content) = event.content() else {
            return Ok(());
        };
        let content = JsonValue::from(ruma::CanonicalJsonValue::Object(content.clone()));
        let Some((rel_type, parent)) = relation_of(&content) else {
            return Ok(());
        };
        let relations = self.tables.relations(&parent)?;
        if !relations.iter().any(|(count, _)| *count == event.count) {
            // Never indexed (it named an unknown event or another room's).
            return Ok(());
        }
        self.tables.delete_relation(batch, &parent, event.count);
        if rel_type == THREAD {
            let latest_other = relations
                .iter()
                .filter(|(count, r)| *count != event.count && r.rel_type == THREAD)
                .map(|(count, _)| *count)
                .max();
            match latest_other {
                Some(latest) => self.tables.put_thread_root(batch, room_id.as_str(), &parent, latest),
                None => self.tables.delete_thread_root(batch, room_id.as_str(), &parent),
            }
        }
        Ok(())
    }

    /// Events relating to `parent` that `user` may see, filtered by relation
    /// and event type, from stream position `from` in either direction.
    #[allow(clippy::too_many_arguments)]
    pub fn relations(
        &self,
        s: &Services,
        user: &UserId,
        room_id: &RoomId,
        parent: &EventId,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: Option<u64>,
        to: Option<u64>,
        backward: bool,
        limit: usize,
        depth: usize,
    ) -> ServiceResult<RelationPage> {
        let mut all = self.related(parent.as_str(), depth)?;
        all.retain(|(_, r)| rel_type.is_none_or(|t| r.rel_type == t) && event_type.is_none_or(|t| r.event_type == t));
        if backward {
            all.reverse();
        }
        let limit = limit.clamp(1, MAX_PAGE);
        let mut events = Vec::new();
        let mut next = None;
        let mut visibility = VisibilityCache::default();
        for (count, record) in all {
            let in_range = match (backward, from, to) {
                (true, Some(f), _) if count > f => false,
                (false, Some(f), _) if count <= f => false,
                (true, _, Some(t)) if count <= t => false,
                (false, _, Some(t)) if count > t => false,
                _ => true,
            };
            if !in_range {
                continue;
            }
            if events.len() >= limit {
                next = Some(if backward { count } else { count - 1 });
                break;
            }
            let Ok(id) = EventId::parse(&record.event_id) else {
                continue;
            };
            let (Some(meta), Some(event)) = (s.timeline.event_meta(&id)?, s.timeline.event(&id)?) else {
                continue;
            };
            if s.timeline
                .can_see_cached(s, user, room_id, &meta, Some(&event), &mut visibility)?
            {
                events.push(event);
            }
        }
        Ok(RelationPage { events, next })
    }

    /// Events relating to `parent` and, for a `depth` above 1, the events
    /// relating to those, up to `depth` relations away; in stream order.
    fn related(&self, parent: &str, depth: usize) -> ServiceResult<Vec<(u64, RelationRecord)>> {
        let mut all = Vec::new();
        let mut seen = HashSet::new();
        let mut parents = vec![parent.to_owned()];
        for _ in 0..depth {
            let mut next = Vec::new();
            for parent in &parents {
                for (count, record) in self.tables.relations(parent)? {
                    if all.len() < MAX_RELATED && seen.insert(count) {
                        next.push(record.event_id.clone());
                        all.push((count, record));
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            parents = next;
        }
        all.sort_by_key(|(count, _)| *count);
        Ok(all)
    }

    /// The room's thread roots `user` may see, latest activity first; with
    /// `participated`, only threads they started or replied in.
    pub fn threads(
        &self,
        s: &Services,
        user: &UserId,
        room_id: &RoomId,
        participated: bool,
        from: Option<u64>,
        limit: usize,
    ) -> ServiceResult<RelationPage> {
        let mut roots = self.tables.thread_roots(room_id.as_str())?;
        roots.sort_by_key(|(_, latest)| std::cmp::Reverse(*latest));
        let limit = limit.clamp(1, MAX_PAGE);
        let mut events = Vec::new();
        let mut next = None;
        let mut visibility = VisibilityCache::default();
        for (root, latest) in roots {
            if from.is_some_and(|f| latest > f) {
                continue;
            }
            if events.len() >= limit {
                next = Some(latest);
                break;
            }
            let Ok(id) = EventId::parse(&root) else {
                continue;
            };
            let (Some(meta), Some(event)) = (s.timeline.event_meta(&id)?, s.timeline.event(&id)?) else {
                continue;
            };
            if participated
                && event.sender() != user.as_str()
                && !self
                    .tables
                    .relations(&root)?
                    .iter()
                    .any(|(_, r)| r.rel_type == THREAD && r.sender == user.as_str())
            {
                continue;
            }
            if s.timeline
                .can_see_cached(s, user, room_id, &meta, Some(&event), &mut visibility)?
            {
                events.push(event);
            }
        }
        Ok(RelationPage { events, next })
    }

    /// The aggregations clients expect in `unsigned.m.relations`: the latest
    /// edit by the original sender, the thread summary, references.
    pub fn bundle(&self, s: &Services, event: &StoredEvent, viewer: &UserId) -> ServiceResult<Option<JsonValue>> {
        // Most events have no relations: one point lookup says so.
        if !self.tables.has_relations(event.event_id.as_str())? {
            return Ok(None);
        }
        let relations = self.tables.relations(event.event_id.as_str())?;
        if relations.is_empty() {
            return Ok(None);
        }
        let mut bundle = serde_json::Map::new();
        let latest_edit = relations
            .iter()
            .rev()
            .find(|(_, r)| r.rel_type == REPLACE && r.sender == event.sender() && r.event_type == event.event_type());
        if let Some((_, edit)) = latest_edit {
            if let Some(edit) = EventId::parse(&edit.event_id)
                .ok()
                .and_then(|id| s.timeline.event(&id).ok().flatten())
            {
                bundle.insert(REPLACE.to_owned(), edit.to_client(true, None));
            }
        }
        let thread: Vec<&RelationRecord> = relations
            .iter()
            .filter(|(_, r)| r.rel_type == THREAD)
            .map(|(_, r)| r)
            .collect();
        if let Some(latest) = thread.last() {
            if let Some(latest_event) = EventId::parse(&latest.event_id)
                .ok()
                .and_then(|id| s.timeline.event(&id).ok().flatten())
            {
                let participated =
                    event.sender() == viewer.as_str() || thread.iter().any(|r| r.sender == viewer.as_str());
                bundle.insert(
                    THREAD.to_owned(),
                    json!({
                        "latest_event": latest_event.to_client(true, None),
                        "count": thread.len(),
                        "current_user_participated": participated,
                    }),
                );
            }
        }
        let references: Vec<JsonValue> = relations
            .iter()
            .filter(|(_, r)| r.rel_type == REFERENCE)
            .map(|(_, r)| json!({"event_id": r.event_id}))
            .collect();
        if !references.is_empty() {
            bundle.insert(REFERENCE.to_owned(), json!({ "chunk": references }));
        }
        Ok((!bundle.is_empty()).then_some(JsonValue::Object(bundle)))
    }
}
