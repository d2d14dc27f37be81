//! Auth chains: every event reachable from an event through its
//! `auth_events`. `/state_ids`, `/state`, `/event_auth`, `send_join` and
//! every state resolution need them; walking the graph each time costs one
//! read per event of the chain, which for a big room's state is thousands.
//! So the chain of each state event (only state events are auth events) is
//! computed once, from the chains of its own auth events, and kept in
//! `AuthChains`: a chain never changes, so it is never stale.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ruma::state_res::Event;
use ruma::{EventId, OwnedEventId};

use super::{internal, TimelineService};
use crate::service::pdu::Pdu;
use crate::service::{ServiceResult, Services};

/// Longest auth chain served or resolved (a room with more auth events
/// than this is refused rather than walked).
pub(super) const MAX_AUTH_CHAIN: usize = 100_000;

/// A step of computing a chain, depth first.
enum Step {
    /// Find the event's chain (known, or to be combined from its auth
    /// events' chains).
    Visit(u64),
    /// Its auth events' chains are computed: combine them.
    Combine { short: u64, auth: Vec<u64>, stored: bool },
}

/// Recently used chains by short event ID, at most `capacity` event
/// numbers in all (8 bytes each): a big room's chains are long, so a count
/// of chains would not bound the memory. Full, it starts over.
pub(super) struct AuthChainCache {
    chains: HashMap<u64, Arc<Vec<u64>>>,
    events: usize,
    capacity: usize,
}

impl AuthChainCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            chains: HashMap::new(),
            events: 0,
            capacity,
        }
    }

    fn insert(&mut self, short: u64, chain: Arc<Vec<u64>>) {
        if chain.len() > self.capacity {
            return;
        }
        if self.events + chain.len() > self.capacity {
            self.clear();
        }
        self.events += chain.len();
        if let Some(replaced) = self.chains.insert(short, chain) {
            self.events -= replaced.len();
        }
    }

    /// Empties the cache; returns the chains dropped.
    pub(super) fn clear(&mut self) -> usize {
        let dropped = self.chains.len();
        self.chains = HashMap::new();
        self.events = 0;
        dropped
    }
}

impl TimelineService {
    /// The auth chain of a set of events: every event reachable from them
    /// through `auth_events`, themselves excluded unless reached. Events
    /// not stored here contribute nothing.
    pub fn auth_chain(&self, s: &Services, events: &[OwnedEventId]) -> ServiceResult<Vec<OwnedEventId>> {
        let shorts = self.auth_chain_shorts(s, events.iter().map(|id| &**id), None)?;
        shorts.into_iter().map(|short| s.state.event_id(short)).collect()
    }

    /// [`Self::auth_chain`] as short IDs; `pending` is an event among
    /// `events` that is not readable from storage yet.
    pub(super) fn auth_chain_shorts<'a>(
        &self,
        s: &Services,
        events: impl Iterator<Item = &'a EventId>,
        pending: Option<&Arc<Pdu>>,
    ) -> ServiceResult<BTreeSet<u64>> {
        let mut chain = BTreeSet::new();
        for id in events {
            let pdu = match pending.filter(|p| p.event_id == id) {
                Some(p) => p.clone(),
                None => match self.pdu(id)? {
                    Some(pdu) => pdu,
                    None => continue,
                },
            };
            for auth in pdu.auth_events() {
                let short = s.state.short_event_id(auth)?;
                chain.insert(short);
                chain.extend(self.chain_of(s, short)?.iter().copied());
                if chain.len() > MAX_AUTH_CHAIN {
                    return Err(internal("auth chain", "too long"));
                }
            }
        }
        Ok(chain)
    }

    /// The auth chain of one event (by short ID), from the cache, storage,
    /// or computed (depth first, each event's auth events before it) and
    /// kept.
    fn chain_of(&self, s: &Services, event: u64) -> ServiceResult<Arc<Vec<u64>>> {
        if let Some(known) = self.known_chain(event)? {
            return Ok(known);
        }
        let mut todo = vec![Step::Visit(event)];
        let mut computed: HashMap<u64, Arc<Vec<u64>>> = HashMap::new();
        while let Some(step) = todo.pop() {
            match step {
                Step::Visit(short) => {
                    if computed.contains_key(&short) {
                        continue;
                    }
                    if let Some(known) = self.known_chain(short)? {
                        computed.insert(short, known);
                        continue;
                    }
                    let (auth, stored) = match self.auth_event_shorts(s, short)? {
                        Some(auth) => (auth, true),
                        None => (Vec::new(), false),
                    };
                    let visits: Vec<Step> = auth
                        .iter()
                        .filter(|a| !computed.contains_key(a))
                        .map(|a| Step::Visit(*a))
                        .collect();
                    todo.push(Step::Combine { short, auth, stored });
                    todo.extend(visits);
                    if todo.len() > MAX_AUTH_CHAIN {
                        return Err(internal("auth chain", "too long"));
                    }
                }
                Step::Combine { short, auth, stored } => {
                    if computed.contains_key(&short) {
                        continue;
                    }
                    let mut chain = BTreeSet::new();
                    for a in &auth {
                        chain.insert(*a);
                        if let Some(sub) = computed.get(a) {
                            chain.extend(sub.iter().copied());
                        }
                    }
                    if chain.len() > MAX_AUTH_CHAIN {
                        return Err(internal("auth chain", "too long"));
                    }
                    let chain: Arc<Vec<u64>> = Arc::new(chain.into_iter().collect());
                    // Only chains of events stored here: one of an event
                    // still unknown would be short and stay so.
                    if stored {
                        self.tables.put_auth_chain(short, &chain)?;
                        self.remember_chain(short, chain.clone());
                    }
                    computed.insert(short, chain);
                }
            }
        }
        computed
            .remove(&event)
            .ok_or_else(|| internal("auth chain", "not computed"))
    }

    fn known_chain(&self, short: u64) -> ServiceResult<Option<Arc<Vec<u64>>>> {
        if let Some(hit) = self.auth_chain_cache().chains.get(&short) {
            return Ok(Some(hit.clone()));
        }
        let Some(stored) = self.tables.auth_chain(short)? else {
            return Ok(None);
        };
        let stored = Arc::new(stored);
        self.remember_chain(short, stored.clone());
        Ok(Some(stored))
    }

    fn remember_chain(&self, short: u64, chain: Arc<Vec<u64>>) {
        self.auth_chain_cache().insert(short, chain);
    }

    pub(super) fn auth_chain_cache(&self) -> std::sync::MutexGuard<'_, AuthChainCache> {
        self.auth_chain_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The short IDs of an event's auth events; `None` for an event not
    /// stored here.
    fn auth_event_shorts(&self, s: &Services, short: u64) -> ServiceResult<Option<Vec<u64>>> {
        let Some(pdu) = self.pdu(&s.state.event_id(short)?)? else {
            return Ok(None);
        };
        pdu.auth_events()
            .map(|id| s.state.short_event_id(id))
            .collect::<ServiceResult<_>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use ruma::events::StateEventType;
    use ruma::state_res::Event;
    use ruma::OwnedEventId;
    use serde_json::json;

    use crate::service::testing::two_in_a_room;
    use crate::service::timeline::EventSpec;

    /// The chain as the graph gives it, walked event by event.
    fn walked(t: &crate::service::testing::TwoInARoom, start: &OwnedEventId) -> HashSet<OwnedEventId> {
        let mut seen = HashSet::new();
        let mut todo: Vec<OwnedEventId> =
            t.s.timeline
                .pdu(start)
                .unwrap()
                .unwrap()
                .auth_events()
                .cloned()
                .collect();
        while let Some(id) = todo.pop() {
            if seen.insert(id.clone()) {
                todo.extend(t.s.timeline.pdu(&id).unwrap().unwrap().auth_events().cloned());
            }
        }
        seen
    }

    #[test]
    fn chains_are_what_the_graph_says_and_are_kept_once_computed() {
        let t = two_in_a_room();
        let s = &t.s;
        // A history of power levels, each authorized by the one before.
        for level in [10, 20, 50] {
            let content = json!({"users": {t.alice.as_str(): 100, t.bob.as_str(): level}});
            let spec = EventSpec::state(StateEventType::RoomPowerLevels, "", content).unwrap();
            s.timeline.append(s, &t.room, &t.alice, spec, None).unwrap();
        }
        let topic = EventSpec::state(StateEventType::RoomTopic, "", json!({"topic": "chains"})).unwrap();
        let event = s.timeline.append(s, &t.room, &t.bob, topic, None).unwrap();

        let chain: HashSet<OwnedEventId> = s
            .timeline
            .auth_chain(s, std::slice::from_ref(&event))
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(chain, walked(&t, &event));
        assert!(
            chain.len() >= 6,
            "create, members, join rules, four power levels: {chain:?}"
        );

        // Each auth event's chain is stored, and is its own walked chain.
        for id in s.timeline.pdu(&event).unwrap().unwrap().auth_events() {
            let short = s.state.short_event_id(id).unwrap();
            let stored = s.timeline.tables.auth_chain(short).unwrap().expect("a stored chain");
            let stored: HashSet<OwnedEventId> = stored.into_iter().map(|sh| s.state.event_id(sh).unwrap()).collect();
            assert_eq!(stored, walked(&t, id));
        }
        // Asked again (from storage, the memory cache emptied), the same.
        s.timeline.auth_chain_cache().chains.clear();
        let again: HashSet<OwnedEventId> = s
            .timeline
            .auth_chain(s, std::slice::from_ref(&event))
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(again, chain);
    }
}
