//! Small in-memory caches of what every send or sync reads again: the PDUs
//! the auth rules look at, the room's member list, and where recent events
//! sit in the room's state.
//!
//! The first two follow one rule for staying correct without holding a lock across a
//! database read: a writer changes storage first, then drops the entry and
//! bumps `generation`; a reader notes the generation before it reads storage
//! and puts what it read into the cache only if the generation is unchanged.
//! So a copy read before a change is never put back after it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ruma::{EventId, OwnedEventId};

use crate::database::rooms::EventMeta;
use crate::service::pdu::Pdu;

/// Recently read or written PDUs by event ID. Eviction is "second chance":
/// the oldest entry goes unless it was read since it was queued, in which
/// case it is queued again. So a room's create, power levels and member
/// events, read by every send, stay while a stream of new messages passes
/// through. Stored events change only when redacted (see the module's rule).
///
/// Its size comes from the memory budget (512 at the default): a send reads
/// its room's create, power levels and sender's member events and
/// references the room's last event; about 1-2 KiB each in memory, and
/// 1,024 measured no faster than 512.
pub(super) struct PduCache {
    pub generation: u64,
    capacity: usize,
    pdus: HashMap<OwnedEventId, CachedPdu>,
    order: VecDeque<OwnedEventId>,
}

struct CachedPdu {
    pdu: Arc<Pdu>,
    read_since_queued: bool,
}

impl PduCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            generation: 0,
            capacity,
            pdus: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Empties the cache; returns the entries dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.pdus.len();
        self.generation += 1;
        self.pdus = HashMap::new();
        self.order = VecDeque::new();
        dropped
    }

    pub fn get(&mut self, event_id: &EventId) -> Option<Arc<Pdu>> {
        let entry = self.pdus.get_mut(event_id)?;
        entry.read_since_queued = true;
        Some(entry.pdu.clone())
    }

    pub fn insert(&mut self, pdu: Arc<Pdu>) {
        if self.pdus.contains_key(&pdu.event_id) {
            return;
        }
        // Each pass clears a flag, so this ends within two rounds of the queue.
        while self.pdus.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            match self.pdus.get_mut(&oldest) {
                Some(entry) if entry.read_since_queued => {
                    entry.read_since_queued = false;
                    self.order.push_back(oldest);
                }
                _ => {
                    self.pdus.remove(&oldest);
                }
            }
        }
        self.order.push_back(pdu.event_id.clone());
        self.pdus.insert(
            pdu.event_id.clone(),
            CachedPdu {
                pdu,
                read_since_queued: false,
            },
        );
    }

    /// Drops an event whose stored copy changed (after the change landed).
    pub fn forget(&mut self, event_id: &EventId) {
        self.generation += 1;
        if self.pdus.remove(event_id).is_some() {
            self.order.retain(|id| id != event_id);
        }
    }
}

/// Where recent events are stored and the state snapshots around them, by
/// event ID, first in, first out. An event's metadata never changes once
/// written (a redaction rewrites the event, not where it sits), so entries
/// need no invalidation; only what storage holds is put in. Entries are a
/// few hundred bytes each: the recent events that syncs and scrollback read.
pub(super) struct MetaCache {
    capacity: usize,
    metas: HashMap<OwnedEventId, EventMeta>,
    order: VecDeque<OwnedEventId>,
}

impl MetaCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            metas: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Empties the cache; returns the entries dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.metas.len();
        self.metas = HashMap::new();
        self.order = VecDeque::new();
        dropped
    }

    pub fn get(&self, event_id: &EventId) -> Option<EventMeta> {
        self.metas.get(event_id).copied()
    }

    pub fn insert(&mut self, event_id: &EventId, meta: EventMeta) {
        if self.metas.contains_key(event_id) {
            return;
        }
        while self.metas.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.metas.remove(&oldest);
        }
        self.order.push_back(event_id.to_owned());
        self.metas.insert(event_id.to_owned(), meta);
    }
}

/// A room's `(user_id, membership)` list.
pub type Members = Arc<Vec<(String, String)>>;

/// Member lists by room ID, oldest room dropped first. A list changes only
/// with a member event of its room (see the module's rule). At most
/// `capacity` members over all cached rooms; a bigger room is read from
/// storage each time.
pub(super) struct MembersCache {
    pub generation: u64,
    capacity: usize,
    rooms: HashMap<String, Members>,
    order: VecDeque<String>,
    entries: usize,
}

impl MembersCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            generation: 0,
            capacity,
            rooms: HashMap::new(),
            order: VecDeque::new(),
            entries: 0,
        }
    }

    /// Empties the cache; returns the members dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.entries;
        self.generation += 1;
        self.rooms = HashMap::new();
        self.order = VecDeque::new();
        self.entries = 0;
        dropped
    }

    pub fn get(&self, room_id: &str) -> Option<Members> {
        self.rooms.get(room_id).cloned()
    }

    pub fn insert(&mut self, room_id: &str, members: Members) {
        if members.len() > self.capacity || self.rooms.contains_key(room_id) {
            return;
        }
        while self.entries + members.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.rooms.remove(&oldest) {
                self.entries -= gone.len();
            }
        }
        self.entries += members.len();
        self.order.push_back(room_id.to_owned());
        self.rooms.insert(room_id.to_owned(), members);
    }

    /// Drops a room whose membership changed (after the change landed).
    pub fn forget(&mut self, room_id: &str) {
        self.generation += 1;
        if let Some(gone) = self.rooms.remove(room_id) {
            self.entries -= gone.len();
            self.order.retain(|r| r != room_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PDU_CACHE_EVENTS: usize = 512;
    const META_CACHE_EVENTS: usize = 2048;
    const MEMBERS_CACHE_ENTRIES: usize = 16_384;

    fn pdu(n: usize) -> Arc<Pdu> {
        let json = format!(
            r#"{{"room_id":"!r:x","sender":"@s:x","origin_server_ts":1,"type":"m.room.message",
               "content":{{}},"prev_events":[],"auth_events":[],"depth":{n}}}"#
        );
        Arc::new(Pdu::from_json(OwnedEventId::try_from(format!("$e{n}")).unwrap(), &json).unwrap())
    }

    #[test]
    fn pdu_cache_keeps_what_is_read_while_new_events_pass_through() {
        let mut cache = PduCache::new(PDU_CACHE_EVENTS);
        let hot = pdu(0);
        cache.insert(hot.clone());
        for n in 1..PDU_CACHE_EVENTS * 3 {
            cache.insert(pdu(n));
            // Every send reads the room's auth events.
            assert!(cache.get(&hot.event_id).is_some(), "evicted after {n} inserts");
        }
        assert_eq!(cache.pdus.len(), PDU_CACHE_EVENTS);
        assert_eq!(cache.order.len(), PDU_CACHE_EVENTS);
        // Something read only once, long ago, is gone.
        assert!(cache.get(&pdu(1).event_id).is_none());
        let before = cache.generation;
        cache.forget(&hot.event_id);
        assert!(cache.get(&hot.event_id).is_none());
        assert_eq!(cache.generation, before + 1);
        assert_eq!(cache.order.len(), PDU_CACHE_EVENTS - 1);
    }

    fn members(n: usize) -> Members {
        Arc::new((0..n).map(|i| (format!("@u{i}:x"), "join".to_owned())).collect())
    }

    #[test]
    fn meta_cache_keeps_the_most_recent_events() {
        let mut cache = MetaCache::new(META_CACHE_EVENTS);
        let meta = |count| EventMeta {
            short_room_id: 1,
            count,
            short_event_id: count,
            state_before: 7,
            state_after: 7,
        };
        let id = |n: u64| OwnedEventId::try_from(format!("$e{n}")).unwrap();
        let total = META_CACHE_EVENTS as u64 + 10;
        for n in 0..total {
            cache.insert(&id(n), meta(n));
        }
        assert_eq!(cache.metas.len(), META_CACHE_EVENTS);
        assert!(cache.get(&id(9)).is_none(), "the oldest went first");
        assert_eq!(cache.get(&id(10)), Some(meta(10)));
        assert_eq!(cache.get(&id(total - 1)), Some(meta(total - 1)));
    }

    #[test]
    fn members_cache_stays_within_its_entry_budget_and_forgets_on_change() {
        let mut cache = MembersCache::new(MEMBERS_CACHE_ENTRIES);
        cache.insert("!a:x", members(MEMBERS_CACHE_ENTRIES / 2));
        cache.insert("!b:x", members(MEMBERS_CACHE_ENTRIES / 2));
        assert!(cache.get("!a:x").is_some() && cache.get("!b:x").is_some());
        // A third room pushes out the oldest.
        cache.insert("!c:x", members(10));
        assert!(cache.get("!a:x").is_none());
        assert!(cache.get("!b:x").is_some() && cache.get("!c:x").is_some());
        assert!(cache.entries <= MEMBERS_CACHE_ENTRIES);
        // Too big to keep at all.
        cache.insert("!huge:x", members(MEMBERS_CACHE_ENTRIES + 1));
        assert!(cache.get("!huge:x").is_none());
        let before = cache.generation;
        cache.forget("!b:x");
        assert!(cache.get("!b:x").is_none());
        assert_eq!(cache.generation, before + 1);
        assert_eq!(cache.entries, 10);
    }
}
