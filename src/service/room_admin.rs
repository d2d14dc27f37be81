//! What the admin API does with rooms (Synapse's room admin API): listing
//! them, their details and members, and deleting one: its local members
//! made to leave, optionally blocked, optionally purged.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Mutex;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::timeline::StoredEvent;
use super::{now_ms, random_string, ServiceError, ServiceResult, Services};

/// Deletions remembered for their status (Synapse keeps them a day too).
const MAX_DELETIONS: usize = 1000;

#[derive(Default)]
pub struct RoomAdminService {
    /// Finished deletions by `delete_id`, for the status endpoints.
    deletions: Mutex<HashMap<String, Deletion>>,
}

/// One room as the admin API shows it.
#[derive(Debug, Clone)]
pub struct RoomView {
    pub room_id: OwnedRoomId,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub avatar: Option<String>,
    pub canonical_alias: Option<String>,
    pub joined_members: usize,
    pub joined_local_members: usize,
    /// Devices of the local joined members.
    pub joined_local_devices: usize,
    pub version: String,
    pub creator: Option<String>,
    pub encryption: Option<String>,
    pub federatable: bool,
    pub public: bool,
    pub join_rules: Option<String>,
    pub guest_access: Option<String>,
    pub history_visibility: Option<String>,
    pub state_events: usize,
    pub room_type: Option<String>,
}

/// What `v1/rooms` may order by (Synapse's `order_by` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomOrder {
    Name,
    CanonicalAlias,
    JoinedMembers,
    JoinedLocalMembers,
    Version,
    Creator,
    Encryption,
    Federatable,
    Public,
    JoinRules,
    GuestAccess,
    HistoryVisibility,
    StateEvents,
}

impl RoomOrder {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            // Synapse's deprecated names for `name` and `joined_members`.
            "name" | "alphabetical" => Self::Name,
            "joined_members" | "size" => Self::JoinedMembers,
            "canonical_alias" => Self::CanonicalAlias,
            "joined_local_members" => Self::JoinedLocalMembers,
            "version" => Self::Version,
            "creator" => Self::Creator,
            "encryption" => Self::Encryption,
            "federatable" => Self::Federatable,
            "public" => Self::Public,
            "join_rules" => Self::JoinRules,
            "guest_access" => Self::GuestAccess,
            "history_visibility" => Self::HistoryVisibility,
            "state_events" => Self::StateEvents,
            _ => return None,
        })
    }

    /// Ascending order; as Synapse, member and state counts sort largest
    /// first unless `dir=b`.
    fn compare(self, a: &RoomView, b: &RoomView) -> Ordering {
        match self {
            Self::Name => a.name.cmp(&b.name),
            Self::CanonicalAlias => a.canonical_alias.cmp(&b.canonical_alias),
            Self::JoinedMembers => b.joined_members.cmp(&a.joined_members),
            Self::JoinedLocalMembers => b.joined_local_members.cmp(&a.joined_local_members),
            Self::Version => a.version.cmp(&b.version),
            Self::Creator => a.creator.cmp(&b.creator),
            Self::Encryption => a.encryption.cmp(&b.encryption),
            Self::Federatable => a.federatable.cmp(&b.federatable),
            Self::Public => a.public.cmp(&b.public),
            Self::JoinRules => a.join_rules.cmp(&b.join_rules),
            Self::GuestAccess => a.guest_access.cmp(&b.guest_access),
            Self::HistoryVisibility => a.history_visibility.cmp(&b.history_visibility),
            Self::StateEvents => b.state_events.cmp(&a.state_events),
        }
    }
}

/// The filters and page of a `v1/rooms` listing.
#[derive(Debug)]
pub struct RoomQuery {
    pub from: usize,
    pub limit: usize,
    pub order_by: RoomOrder,
    pub backwards: bool,
    /// Only rooms whose name or canonical alias contains this
    /// (case-insensitive), or whose ID it is.
    pub search_term: Option<String>,
}

pub struct RoomPage {
    pub rooms: Vec<RoomView>,
    pub offset: usize,
    pub total_rooms: usize,
    pub next_batch: Option<usize>,
    pub prev_batch: Option<usize>,
}

/// A `DELETE v2/rooms/{room_id}`.
#[derive(Debug, Default)]
pub struct DeleteRoom {
    pub block: bool,
    pub purge: bool,
}

/// What a deletion did (Synapse's `shutdown_room` object).
#[derive(Debug, Clone)]
pub struct Deletion {
    pub delete_id: String,
    pub room_id: OwnedRoomId,
    pub kicked_users: Vec<OwnedUserId>,
    pub failed_to_kick_users: Vec<OwnedUserId>,
    pub local_aliases: Vec<String>,
    pub finished_ms: u64,
}

impl RoomAdminService {
    /// A page of the rooms this server knows (purged ones left out).
    pub fn list_rooms(&self, s: &Services, query: &RoomQuery) -> ServiceResult<RoomPage> {
        let term = query.search_term.as_deref().map(str::to_lowercase);
        let mut rooms = Vec::new();
        // The server's own admin room is no room to manage (`v1/rooms/{id}`
        // shows it), as its bot is no account to manage.
        let admin_room = s.admin_room.room_id();
        for room_id in s
            .timeline
            .room_ids()?
            .into_iter()
            .filter(|r| Some(r) != admin_room.as_ref())
        {
            let Some(view) = self.view(s, &room_id)? else {
                continue;
            };
            let wanted = term.as_deref().is_none_or(|term| {
                let contains =
                    |value: &Option<String>| value.as_deref().is_some_and(|v| v.to_lowercase().contains(term));
                contains(&view.name) || contains(&view.canonical_alias) || view.room_id.as_str().to_lowercase() == term
            });
            if wanted {
                rooms.push(view);
            }
        }
        // Ties keep the room ID order the rooms come in.
        rooms.sort_by(|a, b| {
            let order = query.order_by.compare(a, b);
            if query.backwards {
                order.reverse()
            } else {
                order
            }
        });
        let total_rooms = rooms.len();
        let page: Vec<RoomView> = rooms.into_iter().skip(query.from).take(query.limit).collect();
        Ok(RoomPage {
            next_batch: (query.from.saturating_add(page.len()) < total_rooms).then(|| query.from + page.len()),
            prev_batch: (query.from > 0).then(|| query.from.saturating_sub(query.limit)),
            rooms: page,
            offset: query.from,
            total_rooms,
        })
    }

    /// The room, or 404 `M_NOT_FOUND`.
    pub fn room(&self, s: &Services, room_id: &RoomId) -> ServiceResult<RoomView> {
        self.view(s, room_id)?.ok_or_else(room_not_found)
    }

    /// The joined members of the room, or 404 `M_NOT_FOUND`.
    pub fn members(&self, s: &Services, room_id: &RoomId) -> ServiceResult<Vec<String>> {
        self.room(s, room_id)?;
        Ok(s.timeline
            .members(room_id)?
            .iter()
            .filter(|(_, membership)| membership == "join")
            .map(|(user, _)| user.clone())
            .collect())
    }

    fn view(&self, s: &Services, room_id: &RoomId) -> ServiceResult<Option<RoomView>> {
        if s.rooms.closed(room_id)?.is_some_and(|closed| closed.purged) {
            return Ok(None);
        }
        let Some(record) = s.timeline.room(room_id)? else {
            return Ok(None);
        };
        let state = s.timeline.state_events(s, record.state_snapshot)?;
        let field = |event_type: &str, name: &str| state_field(&state, event_type, name);
        let members = s.timeline.members(room_id)?;
        let local_joined: Vec<&String> = members
            .iter()
            .filter(|(user, membership)| membership == "join" && is_local(s, user))
            .map(|(user, _)| user)
            .collect();
        let mut joined_local_devices = 0;
        for user in &local_joined {
            if let Ok(user) = UserId::parse(user.as_str()) {
                joined_local_devices += s.devices.list(&user)?.len();
            }
        }
        let create = state
            .iter()
            .find(|e| e.event_type() == "m.room.create" && e.state_key() == Some(""));
        Ok(Some(RoomView {
            room_id: room_id.to_owned(),
            name: field("m.room.name", "name"),
            topic: field("m.room.topic", "topic"),
            avatar: field("m.room.avatar", "url"),
            canonical_alias: field("m.room.canonical_alias", "alias"),
            joined_members: members.iter().filter(|(_, m)| m == "join").count(),
            joined_local_members: local_joined.len(),
            joined_local_devices,
            version: record.version.clone(),
            // Room versions before 11 name the creator in the content.
            creator: create.map(|e| e.content_str("creator").unwrap_or(e.sender()).to_owned()),
            encryption: field("m.room.encryption", "algorithm"),
            federatable: create
                .and_then(|e| e.content())
                .and_then(|c| c.get("m.federate"))
                .is_none_or(|v| v.as_bool() != Some(false)),
            public: s.rooms.is_public(room_id)?,
            join_rules: field("m.room.join_rules", "join_rule"),
            guest_access: field("m.room.guest_access", "guest_access"),
            history_visibility: field("m.room.history_visibility", "history_visibility"),
            state_events: state.len(),
            room_type: field("m.room.create", "type"),
        }))
    }

    /// Deletes a room as Synapse's `DELETE v2/rooms/{room_id}` does, but at
    /// once: every local member leaves; with `block` local users may not
    /// join again; with `purge` the room leaves the directory and is gone
    /// for local users (they forget it) and from this API. The room's
    /// events stay stored: other servers may still be in it.
    pub fn delete_room(
        &self,
        s: &Services,
        by: &UserId,
        room_id: &RoomId,
        request: DeleteRoom,
    ) -> ServiceResult<Deletion> {
        // The bot would leave it and new admins could not be invited: the
        // server would lose its admin room for good.
        if s.admin_room.room_id().as_deref() == Some(room_id) {
            return Err(ServiceError::Forbidden(
                "this is the server's admin room; it cannot be deleted (its members may leave it)".to_owned(),
            ));
        }
        let known = s.timeline.room(room_id)?.is_some();
        if !known && !request.block {
            return Err(room_not_found());
        }
        let mut deletion = Deletion {
            delete_id: random_string(16),
            room_id: room_id.to_owned(),
            kicked_users: Vec::new(),
            failed_to_kick_users: Vec::new(),
            local_aliases: Vec::new(),
            finished_ms: 0,
        };
        let mut closed = s.rooms.closed(room_id)?.unwrap_or_default();
        closed.closed_ms = now_ms();
        if request.block {
            closed.blocked_by = Some(by.to_string());
        }
        if request.block || request.purge {
            // Closed first, so nobody joins while the members are leaving.
            closed.purged |= request.purge && known;
            s.rooms.set_closed(room_id, &closed)?;
        }
        if known {
            let members = s.timeline.members(room_id)?;
            for (user, membership) in members.iter() {
                if !is_local(s, user) {
                    continue;
                }
                let Ok(user) = UserId::parse(user.as_str()) else {
                    continue;
                };
                if matches!(membership.as_str(), "join" | "invite" | "knock") {
                    // Their own leave: allowed by the auth rules whatever
                    // the room's power levels, where a kick would not be.
                    match s.rooms.set_membership(s, room_id, &user, &user, "leave", None) {
                        Ok(()) => deletion.kicked_users.push(user.clone()),
                        Err(e) => {
                            tracing::warn!(%room_id, %user, error = %e, "could not make a member leave a deleted room");
                            deletion.failed_to_kick_users.push(user.clone());
                            continue;
                        }
                    }
                }
                if request.purge && s.timeline.membership(room_id, &user)?.as_deref() != Some("ban") {
                    s.timeline.forget(room_id, &user)?;
                }
            }
            if request.purge {
                deletion.local_aliases = s.rooms.remove_from_directory(room_id)?;
            }
        }
        deletion.finished_ms = now_ms();
        tracing::info!(
            %room_id,
            by = %by,
            block = request.block,
            purge = request.purge,
            kicked = deletion.kicked_users.len(),
            "room deleted by an admin"
        );
        let mut deletions = self.deletions.lock().unwrap_or_else(|e| e.into_inner());
        if deletions.len() >= MAX_DELETIONS {
            if let Some(oldest) = deletions
                .values()
                .min_by_key(|d| d.finished_ms)
                .map(|d| d.delete_id.clone())
            {
                deletions.remove(&oldest);
            }
        }
        deletions.insert(deletion.delete_id.clone(), deletion.clone());
        Ok(deletion)
    }

    /// A finished deletion by its ID, or 404 `M_NOT_FOUND`.
    pub fn deletion(&self, delete_id: &str) -> ServiceResult<Deletion> {
        self.deletions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(delete_id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound("delete id 'not found'".to_owned()))
    }

    /// The room's deletions, oldest first, or 404 `M_NOT_FOUND` if none.
    pub fn deletions_of(&self, room_id: &RoomId) -> ServiceResult<Vec<Deletion>> {
        let mut found: Vec<Deletion> = self
            .deletions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|d| d.room_id == room_id)
            .cloned()
            .collect();
        if found.is_empty() {
            return Err(ServiceError::NotFound("No delete task for room_id found".to_owned()));
        }
        found.sort_by_key(|d| d.finished_ms);
        Ok(found)
    }
}

fn room_not_found() -> ServiceError {
    ServiceError::NotFound("Room not found".to_owned())
}

fn is_local(s: &Services, user: &str) -> bool {
    user.rsplit_once(':')
        .is_some_and(|(_, server)| server == s.config.server_name.as_str())
}

/// A string field of the room's `(event_type, "")` state event.
fn state_field(state: &[StoredEvent], event_type: &str, name: &str) -> Option<String> {
    state
        .iter()
        .find(|e| e.event_type() == event_type && e.state_key() == Some(""))
        .and_then(|e| e.content_str(name).map(str::to_owned))
}
