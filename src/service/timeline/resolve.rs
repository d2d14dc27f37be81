//! State resolution v2 (ruma's `state_res::resolve`): when a room's history
//! forks (events from other servers that did not see each other), the
//! state after each branch is merged into the state the next event builds
//! on. Local sends never fork a room; federation will.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::room_version_rules::{RoomVersionRules, StateResolutionV2Rules};
use ruma::state_res::utils::event_id_set::EventIdSet;
use ruma::state_res::{self, Event};
use ruma::{EventId, OwnedEventId};

use super::{internal, FailedLookup, TimelineService};
use crate::service::pdu::Pdu;
use crate::service::state::StateMap;
use crate::service::{ServiceError, ServiceResult, Services};

/// Events one resolution reads at most (auth chains included).
const MAX_EVENTS: usize = 100_000;

impl TimelineService {
    /// The resolution of several states (snapshot IDs, at least one): the
    /// state after the forks of a room's history that meet here. Returns
    /// the snapshot ID.
    pub(super) fn resolve_snapshots(
        &self,
        s: &Services,
        rules: &RoomVersionRules,
        snapshots: &[u64],
    ) -> ServiceResult<u64> {
        self.resolve_snapshots_with(s, rules, snapshots, None)
    }

    /// The same, where one state holds `pending`, an event being persisted
    /// in this very resolution's batch (not readable from storage yet).
    pub(super) fn resolve_snapshots_with(
        &self,
        s: &Services,
        rules: &RoomVersionRules,
        snapshots: &[u64],
        pending: Option<&Arc<Pdu>>,
    ) -> ServiceResult<u64> {
        let mut unique: Vec<u64> = Vec::new();
        for snapshot in snapshots {
            if !unique.contains(snapshot) {
                unique.push(*snapshot);
            }
        }
        let snapshots = unique;
        match snapshots.as_slice() {
            [] => return Err(internal("state resolution", "no state to resolve")),
            [only] => return Ok(*only),
            _ => {}
        }

        // Each fork's state as ruma's map of (type, state_key) → event ID.
        let mut maps = Vec::new();
        for snapshot in &snapshots {
            let mut map = state_res::StateMap::new();
            for (key, event) in s.state.load_snapshot(*snapshot)? {
                let (event_type, state_key) = s.state.state_key(key)?;
                map.insert((event_type.into(), state_key), s.state.event_id(event)?);
            }
            maps.push(map);
        }

        let events = EventCache::new(self);
        if let Some(pdu) = pending {
            events
                .events
                .borrow_mut()
                .insert(pdu.event_id.clone(), Some(pdu.clone()));
        }
        let mut auth_chains = Vec::new();
        for map in &maps {
            let chain = self.auth_chain_shorts(s, map.values().map(|id| &**id), pending)?;
            let chain = chain
                .into_iter()
                .map(|short| s.state.event_id(short))
                .collect::<ServiceResult<EventIdSet<_>>>()?;
            auth_chains.push(chain);
        }
        // Room version 1 resolves with v1, which ruma does not implement;
        // v2 is its successor and agrees whenever nothing conflicts.
        let res_rules = rules
            .state_res
            .v2_rules()
            .copied()
            .unwrap_or(StateResolutionV2Rules::V2_0);
        let resolved = state_res::resolve(
            &rules.authorization,
            &res_rules,
            &maps,
            auth_chains,
            |id| events.get(id),
            |conflicted| {
                events
                    .conflicted_subgraph(conflicted)
                    .map(|set| set.into_iter().collect())
            },
        );
        // A lookup that failed in storage makes the resolution worthless.
        events.lookups.check()?;
        let resolved = resolved.map_err(|e| ServiceError::Internal(format!("state resolution failed: {e}")))?;

        let mut state = StateMap::new();
        for ((event_type, state_key), event_id) in resolved {
            let key = s.state.short_state_key(&event_type.to_string(), &state_key)?;
            state.insert(key, s.state.short_event_id(&event_id)?);
        }
        s.state.save_snapshot(&state, Some(snapshots[0]))
    }
}

/// PDUs read during one resolution, each once.
struct EventCache<'a> {
    timeline: &'a TimelineService,
    events: std::cell::RefCell<HashMap<OwnedEventId, Option<Arc<Pdu>>>>,
    lookups: FailedLookup,
}

impl<'a> EventCache<'a> {
    fn new(timeline: &'a TimelineService) -> Self {
        Self {
            timeline,
            events: Default::default(),
            lookups: FailedLookup::default(),
        }
    }

    fn get(&self, id: &EventId) -> Option<Arc<Pdu>> {
        if let Some(hit) = self.events.borrow().get(id) {
            return hit.clone();
        }
        // A failed read is not cached: the resolution fails with it.
        let pdu = self.lookups.keep(self.timeline.pdu(id))?;
        self.events.borrow_mut().insert(id.to_owned(), Some(pdu.clone()));
        Some(pdu)
    }

    fn auth_events(&self, id: &EventId) -> Vec<OwnedEventId> {
        self.get(id)
            .map(|pdu| pdu.auth_events().cloned().collect())
            .unwrap_or_default()
    }

    /// Room version 12's conflicted state subgraph: every event on an
    /// `auth_events` path from one conflicted event to another.
    fn conflicted_subgraph(
        &self,
        conflicted: &state_res::StateMap<Vec<OwnedEventId>>,
    ) -> Option<HashSet<OwnedEventId>> {
        let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
        // reaches[x]: whether a conflicted event is reachable from x
        // (x itself included), computed once per event.
        let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
        let mut subgraph = HashSet::new();
        for start in &targets {
            let mut seen = HashSet::new();
            let mut todo = self.auth_events(start);
            while let Some(id) = todo.pop() {
                if seen.len() > MAX_EVENTS {
                    return None;
                }
                if !seen.insert(id.clone()) {
                    continue;
                }
                if self.reaches_conflicted(&id, &targets, &mut reaches) {
                    subgraph.insert(id.clone());
                    subgraph.insert(start.clone());
                }
                todo.extend(self.auth_events(&id));
            }
        }
        Some(subgraph)
    }

    fn reaches_conflicted(
        &self,
        id: &OwnedEventId,
        targets: &HashSet<OwnedEventId>,
        memo: &mut HashMap<OwnedEventId, bool>,
    ) -> bool {
        if let Some(known) = memo.get(id) {
            return *known;
        }
        // Iterative post-order walk, so a deep auth DAG cannot overflow the stack.
        let mut stack = vec![(id.clone(), false)];
        while let Some((current, expanded)) = stack.pop() {
            if memo.contains_key(&current) {
                continue;
            }
            if targets.contains(&current) {
                memo.insert(current, true);
                continue;
            }
            let parents = self.auth_events(&current);
            if expanded {
                let any = parents.iter().any(|p| memo.get(p).copied().unwrap_or(false));
                memo.insert(current, any);
            } else {
                stack.push((current, true));
                for p in parents {
                    if !memo.contains_key(&p) {
                        stack.push((p, false));
                    }
                }
            }
            if memo.len() > MAX_EVENTS {
                break;
            }
        }
        memo.get(id).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use ruma::events::StateEventType;
    use ruma::{OwnedUserId, RoomId, RoomVersionId};
    use serde_json::json;

    use crate::database::Batch;
    use crate::service::rooms::{CreateRoom, Preset};
    use crate::service::timeline::EventSpec;
    use crate::service::{ServiceError, Services};

    /// Points the room's end at `extremities` (what federation does when
    /// events arrive from servers that did not see each other).
    fn set_extremities(s: &Services, room_id: &RoomId, extremities: &[&str], snapshot: u64) {
        let mut record = s.timeline.room_or_404(room_id).unwrap();
        record.forward_extremities = extremities.iter().map(|e| e.to_string()).collect();
        record.state_snapshot = snapshot;
        let mut batch = Batch::new();
        s.timeline.tables.put_room(&mut batch, room_id.as_str(), &record);
        s.timeline.tables.write(batch).unwrap();
        s.timeline.forget_cached_room(room_id);
    }

    #[test]
    fn a_ban_on_one_branch_defeats_the_banned_users_change_on_the_other() {
        for version in ["1", "2", "6", "11", "12"] {
            let dir = tempfile::tempdir().unwrap();
            let config = crate::config::Config {
                database_path: dir.path().to_owned(),
                ..Default::default()
            };
            let s = Services::open(config).unwrap();
            let alice: OwnedUserId = "@alice:localhost".try_into().unwrap();
            let bob: OwnedUserId = "@bob:localhost".try_into().unwrap();
            for user in [&alice, &bob] {
                s.users.register(&s.devices, user, None, None).unwrap();
            }
            let mut override_levels = serde_json::Map::new();
            override_levels.insert("users".to_owned(), json!({bob.as_str(): 50, alice.as_str(): 100}));
            if version == "12" {
                // v12 creators are not listed.
                override_levels.insert("users".to_owned(), json!({bob.as_str(): 50}));
            }
            let room_id = s
                .rooms
                .create_room(
                    &s,
                    &alice,
                    CreateRoom {
                        preset: Some(Preset::PublicChat),
                        room_version: Some(RoomVersionId::try_from(version).unwrap()),
                        power_level_override: Some(override_levels),
                        ..Default::default()
                    },
                )
                .unwrap();
            s.rooms.join(&s, &bob, room_id.as_str(), None).unwrap();
            let fork_point = s.timeline.room_or_404(&room_id).unwrap();

            // Branch A: alice bans bob.
            s.rooms.set_membership(&s, &room_id, &alice, &bob, "ban", None).unwrap();
            let branch_a = s.timeline.room_or_404(&room_id).unwrap();
            // Branch B, not knowing of A: bob renames the room.
            set_extremities(
                &s,
                &room_id,
                &[fork_point.forward_extremities[0].as_str()],
                fork_point.state_snapshot,
            );
            let name = EventSpec::state(StateEventType::RoomName, "", json!({"name": "bob was here"})).unwrap();
            s.timeline.append(&s, &room_id, &bob, name, None).unwrap();
            let branch_b = s.timeline.room_or_404(&room_id).unwrap();

            // The room now ends in both branches; its current state is their
            // resolution, which the next event builds on.
            let ends = [
                branch_a.forward_extremities[0].as_str(),
                branch_b.forward_extremities[0].as_str(),
            ];
            let rules = RoomVersionId::try_from(version).unwrap().rules().unwrap();
            let resolved = s
                .timeline
                .resolve_snapshots(&s, &rules, &[branch_a.state_snapshot, branch_b.state_snapshot])
                .unwrap();
            set_extremities(&s, &room_id, &ends, resolved);
            let text = EventSpec {
                event_type: "m.room.message".into(),
                content: ruma::CanonicalJsonObject::new(),
                state_key: None,
                redacts: None,
                origin_server_ts: None,
            };
            let merged = s.timeline.append(&s, &room_id, &alice, text, None).unwrap();
            let pdu = s.timeline.pdu(&merged).unwrap().unwrap();
            let prev: Vec<String> = ruma::state_res::Event::prev_events(&pdu)
                .map(|e| e.to_string())
                .collect();
            assert_eq!(prev.len(), 2, "v{version}: {prev:?}");

            let record = s.timeline.room_or_404(&room_id).unwrap();
            let membership = s
                .timeline
                .state_event(&s, record.state_snapshot, "m.room.member", bob.as_str())
                .unwrap()
                .unwrap();
            assert_eq!(membership.content_str("membership"), Some("ban"), "v{version}");
            let name = s
                .timeline
                .state_event(&s, record.state_snapshot, "m.room.name", "")
                .unwrap();
            assert!(
                name.is_none_or(|n| n.content_str("name") != Some("bob was here")),
                "v{version}: the banned user's rename must lose"
            );
            // And bob, banned in the merged room, cannot speak.
            let again = EventSpec::state(StateEventType::RoomTopic, "", json!({"topic": "x"})).unwrap();
            assert!(matches!(
                s.timeline.append(&s, &room_id, &bob, again, None),
                Err(ServiceError::Forbidden(_))
            ));
        }
    }
}
