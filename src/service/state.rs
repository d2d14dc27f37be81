//! Room state storage: short numeric IDs for event IDs and state keys, and
//! state snapshots stored compactly.
//!
//! A state is a map short state key → short event ID. Each snapshot is a
//! diff (added and removed entries) against a parent, at most
//! [`MAX_DEPTH`] diffs above a full state, so loading one reads at most
//! `MAX_DEPTH + 1` records. Identical states are stored once (by hash).
//!
//! Short IDs and snapshots are written on their own, not in the batch of the
//! event that needs them: both are content-addressed, so one left behind by a
//! crash is unused, never wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use ruma::{EventId, OwnedEventId};
use sha2::{Digest, Sha256};

use super::{ServiceError, ServiceResult};
use crate::database::state::{entry, split_entry, SnapshotRecord, StateEntry, StateTables};
use crate::database::{Batch, Db};

/// short state key → short event ID.
pub type StateMap = BTreeMap<u64, u64>;

/// Diffs above a full state.
pub const MAX_DEPTH: u8 = 3;

pub struct StateService {
    tables: StateTables,
    /// Serialises get-or-create of short IDs and snapshots.
    create: Mutex<()>,
}

impl StateService {
    pub fn new(db: Db) -> Self {
        Self {
            tables: StateTables::new(db),
            create: Mutex::new(()),
        }
    }

    fn lock(&self) -> ServiceResult<std::sync::MutexGuard<'_, ()>> {
        self.create
            .lock()
            .map_err(|_| ServiceError::Internal("state lock poisoned".to_owned()))
    }

    /// The event's short ID, made on first use.
    pub fn short_event_id(&self, event_id: &EventId) -> ServiceResult<u64> {
        if let Some(short) = self.tables.short_event_id(event_id.as_str())? {
            return Ok(short);
        }
        let _guard = self.lock()?;
        if let Some(short) = self.tables.short_event_id(event_id.as_str())? {
            return Ok(short);
        }
        let short = self.tables.next_id()?;
        let mut batch = Batch::new();
        self.tables.put_short_event_id(&mut batch, event_id.as_str(), short);
        self.tables.write(batch)?;
        Ok(short)
    }

    /// A short ID for an event being stored now, its mapping written in the
    /// event's own batch: one write for both. Only for a new event, which
    /// nothing else can look up before that batch lands.
    pub fn new_short_event_id(&self, batch: &mut Batch, event_id: &EventId) -> ServiceResult<u64> {
        let short = self.tables.next_id()?;
        self.tables.put_short_event_id(batch, event_id.as_str(), short);
        Ok(short)
    }

    pub fn event_id(&self, short: u64) -> ServiceResult<OwnedEventId> {
        let id = self
            .tables
            .event_id(short)?
            .ok_or_else(|| missing("short event ID", short))?;
        OwnedEventId::try_from(id).map_err(|e| ServiceError::Internal(format!("stored event ID: {e}")))
    }

    /// The short ID of `(event_type, state_key)`, made on first use.
    pub fn short_state_key(&self, event_type: &str, state_key: &str) -> ServiceResult<u64> {
        if let Some(short) = self.tables.short_state_key(event_type, state_key)? {
            return Ok(short);
        }
        let _guard = self.lock()?;
        if let Some(short) = self.tables.short_state_key(event_type, state_key)? {
            return Ok(short);
        }
        let short = self.tables.next_id()?;
        let mut batch = Batch::new();
        self.tables
            .put_short_state_key(&mut batch, event_type, state_key, short);
        self.tables.write(batch)?;
        Ok(short)
    }

    /// The short ID of `(event_type, state_key)` if it has one.
    pub fn find_short_state_key(&self, event_type: &str, state_key: &str) -> ServiceResult<Option<u64>> {
        Ok(self.tables.short_state_key(event_type, state_key)?)
    }

    /// `(event_type, state_key)` of a short state key.
    pub fn state_key(&self, short: u64) -> ServiceResult<(String, String)> {
        self.tables
            .state_key(short)?
            .ok_or_else(|| missing("short state key", short))
    }

    /// Stores `state` (as a diff against `parent` where that is smaller) and
    /// returns its snapshot ID; a state stored before gets its old ID.
    pub fn save_snapshot(&self, state: &StateMap, parent: Option<u64>) -> ServiceResult<u64> {
        let entries: BTreeSet<StateEntry> = state.iter().map(|(k, e)| entry(*k, *e)).collect();
        let hash = hash_entries(&entries);
        if let Some(id) = self.tables.snapshot_by_hash(&hash)? {
            return Ok(id);
        }
        let _guard = self.lock()?;
        if let Some(id) = self.tables.snapshot_by_hash(&hash)? {
            return Ok(id);
        }
        let record = match parent {
            Some(parent) => self.diff_or_full(&entries, parent)?,
            None => full(&entries),
        };
        let id = self.tables.next_id()?;
        let mut batch = Batch::new();
        self.tables.put_snapshot(&mut batch, id, &hash, &record);
        self.tables.write(batch)?;
        Ok(id)
    }

    /// A diff against the newest layer of `parent`'s chain (`parent`
    /// first) that is below the depth limit and whose own diff is at least
    /// as big as this one; else against the full state at the bottom, or
    /// a full state itself when that diff is over half its size. So the
    /// upper layers stay small and the lower ones are rarely written again:
    /// a new state costs a few entries. (Always diffing against one layer
    /// made each diff grow with every change until the next full state:
    /// about a sixth of the state per member event in a growing room.)
    fn diff_or_full(&self, entries: &BTreeSet<StateEntry>, parent: u64) -> ServiceResult<SnapshotRecord> {
        let mut base = parent;
        let mut base_record = self.record(base)?;
        let mut base_entries = self.load_entries(base)?;
        for _ in 0..=MAX_DEPTH {
            let added: Vec<StateEntry> = entries.difference(&base_entries).copied().collect();
            let removed: Vec<StateEntry> = base_entries.difference(entries).copied().collect();
            let changes = added.len() + removed.len();
            let diff = |base_record: &SnapshotRecord| SnapshotRecord {
                parent: Some(base),
                depth: base_record.depth + 1,
                added,
                removed,
            };
            let Some(below) = base_record.parent else {
                // The full state.
                if changes > entries.len() / 2 {
                    return Ok(full(entries));
                }
                return Ok(diff(&base_record));
            };
            if base_record.depth < MAX_DEPTH && changes <= base_record.added.len() + base_record.removed.len() {
                return Ok(diff(&base_record));
            }
            // The state below: this layer's diff undone (it added only
            // what that state lacked and removed only what it had).
            for entry in &base_record.added {
                base_entries.remove(entry);
            }
            base_entries.extend(base_record.removed.iter().copied());
            base = below;
            base_record = self.record(base)?;
        }
        Err(corrupt(parent, "more layers than the depth limit"))
    }

    pub fn load_snapshot(&self, id: u64) -> ServiceResult<StateMap> {
        Ok(self.load_entries(id)?.iter().map(split_entry).collect())
    }

    /// One entry of a snapshot: the short event ID at `short_state_key`,
    /// read through the layers without building the whole state.
    pub fn lookup(&self, id: u64, short_state_key: u64) -> ServiceResult<Option<u64>> {
        let find = |entries: &[StateEntry]| -> Option<u64> {
            // Entries are sorted by state key first.
            let at = entries.partition_point(|e| split_entry(e).0 < short_state_key);
            entries
                .get(at)
                .map(split_entry)
                .filter(|(key, _)| *key == short_state_key)
                .map(|(_, event)| event)
        };
        let mut layer = self.record(id)?;
        for _ in 0..=MAX_DEPTH {
            if let Some(event) = find(&layer.added) {
                return Ok(Some(event));
            }
            if find(&layer.removed).is_some() {
                return Ok(None);
            }
            match layer.parent {
                Some(parent) => layer = self.record(parent)?,
                None => return Ok(None),
            }
        }
        Err(corrupt(id, "more layers than the depth limit"))
    }

    fn load_entries(&self, id: u64) -> ServiceResult<BTreeSet<StateEntry>> {
        // Newest layer first, down to the full state.
        let mut layers = vec![self.record(id)?];
        while let Some(parent) = layers.last().and_then(|r| r.parent) {
            if layers.len() > usize::from(MAX_DEPTH) {
                return Err(corrupt(id, "more layers than the depth limit"));
            }
            layers.push(self.record(parent)?);
        }
        let mut entries = BTreeSet::new();
        for layer in layers.iter().rev() {
            for removed in &layer.removed {
                entries.remove(removed);
            }
            entries.extend(layer.added.iter().copied());
        }
        Ok(entries)
    }

    fn record(&self, id: u64) -> ServiceResult<SnapshotRecord> {
        self.tables.snapshot(id)?.ok_or_else(|| missing("state snapshot", id))
    }

    #[cfg(test)]
    fn depth(&self, id: u64) -> u8 {
        self.record(id).unwrap().depth
    }
}

fn full(entries: &BTreeSet<StateEntry>) -> SnapshotRecord {
    SnapshotRecord {
        parent: None,
        depth: 0,
        added: entries.iter().copied().collect(),
        removed: Vec::new(),
    }
}

fn hash_entries(entries: &BTreeSet<StateEntry>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for e in entries {
        hasher.update(e);
    }
    hasher.finalize().into()
}

fn missing(what: &str, id: u64) -> ServiceError {
    ServiceError::Internal(format!("unknown {what} {id}"))
}

fn corrupt(id: u64, detail: &str) -> ServiceError {
    ServiceError::Internal(format!("state snapshot {id}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;
    use rand::{Rng, SeedableRng};

    fn service(dir: &std::path::Path) -> StateService {
        StateService::new(open_test_db(dir))
    }

    #[test]
    fn short_ids_are_stable_and_reversible() {
        let dir = tempfile::tempdir().unwrap();
        let state = service(dir.path());
        let a: OwnedEventId = "$a:example.org".try_into().unwrap();
        let b: OwnedEventId = "$b:example.org".try_into().unwrap();
        let short_a = state.short_event_id(&a).unwrap();
        assert_eq!(state.short_event_id(&a).unwrap(), short_a);
        assert_ne!(state.short_event_id(&b).unwrap(), short_a);
        assert_eq!(state.event_id(short_a).unwrap(), a);

        let member = state.short_state_key("m.room.member", "@a:example.org").unwrap();
        assert_eq!(
            state.short_state_key("m.room.member", "@a:example.org").unwrap(),
            member
        );
        assert_ne!(
            state.short_state_key("m.room.member", "@b:example.org").unwrap(),
            member
        );
        assert_ne!(state.short_state_key("m.room.name", "").unwrap(), member);
        assert_eq!(
            state.state_key(member).unwrap(),
            ("m.room.member".to_owned(), "@a:example.org".to_owned())
        );
        assert!(state.event_id(999_999).is_err());
    }

    /// A long random history: every snapshot loads back exactly (whole or
    /// one key at a time), however
    /// it was stored, layers stay within the bound, and equal states share
    /// one snapshot.
    #[test]
    fn snapshots_load_back_exactly_within_the_depth_bound() {
        let dir = tempfile::tempdir().unwrap();
        let state = service(dir.path());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut current = StateMap::new();
        let mut history: Vec<(u64, StateMap)> = Vec::new();
        let mut parent = None;
        for step in 0..300u64 {
            // Mostly joins and changes, some leaves; sometimes a big change.
            let changes = if step % 50 == 49 { 40 } else { 1 };
            for _ in 0..changes {
                let key = rng.gen_range(0..60u64);
                if rng.gen_bool(0.2) {
                    current.remove(&key);
                } else {
                    current.insert(key, 1_000 + step);
                }
            }
            let id = state.save_snapshot(&current, parent).unwrap();
            assert!(state.depth(id) <= MAX_DEPTH);
            history.push((id, current.clone()));
            parent = Some(id);
        }
        for (id, expected) in &history {
            assert_eq!(&state.load_snapshot(*id).unwrap(), expected, "snapshot {id}");
            // Single lookups agree with the whole state, present or absent.
            for key in 0..60u64 {
                assert_eq!(
                    state.lookup(*id, key).unwrap(),
                    expected.get(&key).copied(),
                    "{id}/{key}"
                );
            }
        }
        // The history went through diffs and through folding at the limit.
        let depths: Vec<u8> = history.iter().map(|(id, _)| state.depth(*id)).collect();
        assert!(
            depths.iter().filter(|d| **d > 0).count() > history.len() * 3 / 4,
            "{depths:?}"
        );
        assert!(depths.contains(&MAX_DEPTH), "{depths:?}");
        let (first_id, first_state) = &history[3];
        assert_eq!(
            state.save_snapshot(first_state, parent).unwrap(),
            *first_id,
            "identical states are shared"
        );
        assert_eq!(
            state.save_snapshot(&StateMap::new(), None).unwrap(),
            state.save_snapshot(&StateMap::new(), None).unwrap()
        );
    }

    /// A room growing by one member at a time writes a few entries per
    /// new state, not a share of the whole state (diffing against one base
    /// wrote about a sixth of it each time: some 310 entries a change here,
    /// against 42).
    #[test]
    fn a_growing_state_writes_a_few_entries_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let state = service(dir.path());
        let mut current: StateMap = (0..10).map(|k| (k, k)).collect();
        let mut parent = state.save_snapshot(&current, None).unwrap();
        let changes = 2_000;
        let mut written = 0;
        for k in 0..changes {
            current.insert(1_000 + k, k);
            parent = state.save_snapshot(&current, Some(parent)).unwrap();
            let record = state.record(parent).unwrap();
            written += record.added.len() + record.removed.len();
            assert!(record.depth <= MAX_DEPTH);
        }
        assert_eq!(state.load_snapshot(parent).unwrap(), current);
        assert!(
            written < 60 * changes as usize,
            "{written} entries for {changes} changes"
        );
    }

    #[test]
    fn small_changes_are_stored_as_diffs() {
        let dir = tempfile::tempdir().unwrap();
        let state = service(dir.path());
        let base: StateMap = (0..100).map(|k| (k, k + 1_000)).collect();
        let base_id = state.save_snapshot(&base, None).unwrap();
        let mut next = base.clone();
        next.insert(5, 9_999);
        let next_id = state.save_snapshot(&next, Some(base_id)).unwrap();
        let record = state.record(next_id).unwrap();
        assert_eq!(record.parent, Some(base_id));
        assert_eq!((record.added.len(), record.removed.len()), (1, 1));
        assert_eq!(state.load_snapshot(next_id).unwrap(), next);
    }
}
