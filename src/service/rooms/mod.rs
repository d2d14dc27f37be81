//! Rooms as clients manage them: creation with presets, membership changes,
//! aliases and the room directory. Events go through the timeline, which
//! authorizes them; this module decides which events a request means.

use ruma::events::StateEventType;
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, RoomVersionId, UserId};
use serde_json::{json, Map, Value as JsonValue};

mod closing;
mod directory;
mod hierarchy;
pub mod naming;
mod upgrade;

pub use directory::{DirectoryPage, DirectoryQuery};
pub use hierarchy::{HierarchyPage, HierarchyQuery, HierarchyWalk, RemoteRooms, ServerHierarchy};

use super::timeline::{EventSpec, StoredEvent};
use super::users::{AVATAR_URL, DISPLAYNAME};
use super::{ServiceError, ServiceResult, Services, MAX_ID_BYTES};
use crate::database::directory::{AliasRecord, DirectoryTables};
use crate::database::Db;

/// The room versions this server creates and joins.
pub const SUPPORTED_ROOM_VERSIONS: [RoomVersionId; 12] = [
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// A `createRoom` request, in the service's terms.
#[derive(Debug, Default)]
pub struct CreateRoom {
    pub preset: Option<Preset>,
    pub public: bool,
    pub alias_localpart: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    /// `(type, state_key, content)`.
    pub initial_state: Vec<(String, String, JsonValue)>,
    pub power_level_override: Option<Map<String, JsonValue>>,
    pub creation_content: Option<Map<String, JsonValue>>,
    pub is_direct: bool,
    pub room_version: Option<RoomVersionId>,
}

pub struct RoomsService {
    directory: DirectoryTables,
}

fn content(value: JsonValue) -> ServiceResult<ruma::CanonicalJsonObject> {
    match ruma::CanonicalJsonValue::try_from(value) {
        Ok(ruma::CanonicalJsonValue::Object(o)) => Ok(o),
        _ => Err(ServiceError::BadJson(
            "event content must be a canonical JSON object".to_owned(),
        )),
    }
}

impl RoomsService {
    pub fn new(db: Db) -> Self {
        Self {
            directory: DirectoryTables::new(db),
        }
    }

    pub fn create_room(&self, s: &Services, sender: &UserId, req: CreateRoom) -> ServiceResult<OwnedRoomId> {
        // The server's own refusals come before the first event, so they leave
        // no half-made room behind.
        if !s.config.allow_room_creation {
            return Err(ServiceError::Forbidden(
                "room creation is disabled on this server".to_owned(),
            ));
        }
        self.create_server_room(s, sender, req)
    }

    /// Creates a room the server needs for itself (the admin room), which
    /// `allow_room_creation` does not forbid.
    pub fn create_server_room(&self, s: &Services, sender: &UserId, req: CreateRoom) -> ServiceResult<OwnedRoomId> {
        for (event_type, _, _) in &req.initial_state {
            if matches!(event_type.as_str(), "m.room.create" | "m.room.member") {
                return Err(ServiceError::BadJson(format!(
                    "{event_type} cannot be set in initial_state"
                )));
            }
            if event_type == ENCRYPTION {
                encryption_allowed(s)?;
            }
        }
        let version = req
            .room_version
            .clone()
            .unwrap_or_else(|| s.config.default_room_version.clone());
        if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
            return Err(ServiceError::UnsupportedRoomVersion(format!(
                "room version {version} is not supported by this server"
            )));
        }
        let rules = version
            .rules()
            .ok_or_else(|| ServiceError::UnsupportedRoomVersion(format!("room version {version} has no rules")))?;
        let alias = match &req.alias_localpart {
            Some(localpart) => {
                let alias = OwnedRoomAliasId::try_from(format!("#{localpart}:{}", s.config.server_name))
                    .map_err(|e| ServiceError::InvalidParam(format!("room_alias_name: {e}")))?;
                check_alias_length(&alias)?;
                s.appservices.check_alias_free(&alias, sender)?;
                if self.directory.alias(alias.as_str())?.is_some() {
                    return Err(ServiceError::RoomInUse("this room alias is already taken".to_owned()));
                }
                Some(alias)
            }
            None => None,
        };
        for user in &req.invite {
            if user.server_name() != s.config.server_name && !s.config.allow_federation {
                return Err(ServiceError::Forbidden(
                    "invites to users on other servers need federation, which is off on this server".to_owned(),
                ));
            }
        }
        let preset = req.preset.unwrap_or(if req.public {
            Preset::PublicChat
        } else {
            Preset::PrivateChat
        });

        // 1. The create event.
        let mut create = req.creation_content.clone().unwrap_or_default();
        create.insert("room_version".to_owned(), version.as_str().into());
        if rules.authorization.use_room_create_sender {
            create.remove("creator");
        } else {
            create.insert("creator".to_owned(), sender.as_str().into());
        }
        let creators_have_infinite_power = rules.authorization.explicitly_privilege_room_creators;
        if creators_have_infinite_power && preset == Preset::TrustedPrivateChat {
            let mut extra: Vec<JsonValue> = create
                .get("additional_creators")
                .and_then(JsonValue::as_array)
                .cloned()
                .unwrap_or_default();
            for user in &req.invite {
                let v = JsonValue::from(user.as_str());
                if !extra.contains(&v) && user != sender {
                    extra.push(v);
                }
            }
            create.insert("additional_creators".to_owned(), extra.into());
        }
        let room_id = s
            .timeline
            .create_room(s, &version, sender, content(JsonValue::Object(create))?)?;
        let send_state = |event_type: StateEventType, key: &str, body: JsonValue| -> ServiceResult<()> {
            s.timeline
                .append(s, &room_id, sender, EventSpec::state(event_type, key, body)?, None)?;
            Ok(())
        };

        // 2. The creator joins.
        send_state(
            StateEventType::RoomMember,
            sender.as_str(),
            self.member_content(s, sender, "join", None, false)?,
        )?;

        // 3. Power levels.
        let mut users = Map::new();
        if !creators_have_infinite_power {
            users.insert(sender.to_string(), 100.into());
            if preset == Preset::TrustedPrivateChat {
                for user in &req.invite {
                    users.insert(user.to_string(), 100.into());
                }
            }
        }
        let tombstone = if creators_have_infinite_power { 150 } else { 100 };
        let mut power_levels = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": tombstone,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": if preset == Preset::PublicChat { 50 } else { 0 },
            "notifications": {"room": 50},
        });
        if let (Some(over), JsonValue::Object(pl)) = (&req.power_level_override, &mut power_levels) {
            for (k, v) in over {
                pl.insert(k.clone(), v.clone());
            }
        }
        send_state(StateEventType::RoomPowerLevels, "", power_levels)?;

        // 4. The canonical alias.
        if let Some(alias) = &alias {
            let record = AliasRecord {
                room_id: room_id.to_string(),
                creator: sender.to_string(),
            };
            // Checked free above; a createRoom racing this one may have won since.
            if !self.directory.create_alias(alias.as_str(), &record)? {
                return Err(ServiceError::RoomInUse("this room alias is already taken".to_owned()));
            }
            send_state(StateEventType::RoomCanonicalAlias, "", json!({"alias": alias}))?;
        }

        // 5. The preset's rules.
        let (join_rule, guest_access) = match preset {
            Preset::PublicChat => ("public", "forbidden"),
            Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "can_join"),
        };
        let overridden = |t: &str| req.initial_state.iter().any(|(ty, key, _)| ty == t && key.is_empty());
        if !overridden("m.room.join_rules") {
            send_state(StateEventType::RoomJoinRules, "", json!({"join_rule": join_rule}))?;
        }
        if !overridden("m.room.history_visibility") {
            send_state(
                StateEventType::RoomHistoryVisibility,
                "",
                json!({"history_visibility": "shared"}),
            )?;
        }
        if !overridden("m.room.guest_access") {
            send_state(
                StateEventType::RoomGuestAccess,
                "",
                json!({"guest_access": guest_access}),
            )?;
        }

        // 6. The client's initial state (checked above).
        for (event_type, key, body) in req.initial_state {
            send_state(event_type.as_str().into(), &key, body)?;
        }

        // 7. Name and topic.
        if let Some(name) = req.name {
            send_state(StateEventType::RoomName, "", json!({"name": name}))?;
        }
        if let Some(topic) = req.topic {
            send_state(
                StateEventType::RoomTopic,
                "",
                json!({"topic": topic, "m.topic": [{"body": topic, "mimetype": "text/plain"}]}),
            )?;
        }

        // 8. Invites; those of other servers' users go through their
        // server once the room exists (the API layer sends them).
        for user in req.invite.iter().filter(|u| u.server_name() == s.config.server_name) {
            let body = self.member_content(s, user, "invite", None, req.is_direct)?;
            send_state(StateEventType::RoomMember, user.as_str(), body)?;
        }
        if req.public {
            self.directory.set_public(room_id.as_str(), true)?;
        }
        tracing::info!(%room_id, %version, "room created");
        Ok(room_id)
    }

    /// Content of a membership event for `user`, with their profile.
    pub(crate) fn member_content(
        &self,
        s: &Services,
        user: &UserId,
        membership: &str,
        reason: Option<&str>,
        is_direct: bool,
    ) -> ServiceResult<JsonValue> {
        let mut body = Map::new();
        body.insert("membership".to_owned(), membership.into());
        // Profiles of other servers' users are theirs to put in their joins.
        if matches!(membership, "join" | "invite" | "knock") && user.server_name() == s.config.server_name {
            if let Some(name) = s.users.profile_field(user, DISPLAYNAME)? {
                body.insert("displayname".to_owned(), name.into());
            }
            if let Some(url) = s.users.profile_field(user, AVATAR_URL)? {
                body.insert("avatar_url".to_owned(), url.into());
            }
        }
        if let Some(reason) = reason {
            body.insert("reason".to_owned(), reason.into());
        }
        if is_direct {
            body.insert("is_direct".to_owned(), true.into());
        }
        Ok(JsonValue::Object(body))
    }

    /// Sends a state event from a client, after the checks the server makes
    /// beyond the auth rules; `origin_server_ts` is an appservice's
    /// massaged timestamp.
    #[allow(clippy::too_many_arguments)]
    pub fn send_state(
        &self,
        s: &Services,
        room_id: &RoomId,
        sender: &UserId,
        event_type: &str,
        state_key: &str,
        body: ruma::CanonicalJsonObject,
        origin_server_ts: Option<ruma::MilliSecondsSinceUnixEpoch>,
    ) -> ServiceResult<ruma::OwnedEventId> {
        if event_type == "m.room.canonical_alias" {
            let value = JsonValue::from(ruma::CanonicalJsonValue::Object(body.clone()));
            self.check_canonical_alias(s, room_id, &value)?;
        }
        if event_type == "m.room.create" {
            return Err(ServiceError::Forbidden(
                "a room's create event cannot be replaced".to_owned(),
            ));
        }
        if event_type == ENCRYPTION {
            encryption_allowed(s)?;
        }
        if let Some(existing) = self.unchanged_state(s, room_id, sender, event_type, state_key, &body)? {
            return Ok(existing);
        }
        let spec = EventSpec {
            event_type: event_type.into(),
            content: body,
            state_key: Some(state_key.to_owned()),
            redacts: None,
            origin_server_ts,
        };
        let event_id = s.timeline.append(s, room_id, sender, spec, None)?;
        if event_type == "m.room.guest_access" && !self.guests_may_join(s, room_id)? {
            self.guests_leave(s, room_id)?;
        }
        Ok(event_id)
    }

    /// Whether the room's `m.room.guest_access` is `can_join`: the spec lets
    /// guests join only then.
    fn guests_may_join(&self, s: &Services, room_id: &RoomId) -> ServiceResult<bool> {
        let record = s.timeline.room_or_404(room_id)?;
        Ok(s.timeline
            .state_event(s, record.state_snapshot, "m.room.guest_access", "")?
            .is_some_and(|e| e.content_str("guest_access") == Some("can_join")))
    }

    /// Guests leave a room that stopped letting them in, as the spec
    /// requires of the server.
    fn guests_leave(&self, s: &Services, room_id: &RoomId) -> ServiceResult<()> {
        for (member, membership) in s.timeline.members(room_id)?.iter() {
            if membership != "join" || !s.users.is_guest(member)? {
                continue;
            }
            let Ok(guest) = OwnedUserId::try_from(member.as_str()) else {
                continue;
            };
            self.set_membership(s, room_id, &guest, &guest, "leave", None)?;
        }
        Ok(())
    }

    /// Sends a membership event about `target` from `sender`.
    pub fn set_membership(
        &self,
        s: &Services,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> ServiceResult<()> {
        if membership == "invite" && target.server_name() != s.config.server_name {
            return Err(ServiceError::Forbidden(
                "invites to users on other servers need federation, which is off on this server".to_owned(),
            ));
        }
        if membership != "leave" && membership != "ban" && !s.users.exists(target)? {
            return Err(ServiceError::NotFound(format!("{target} is not a user of this server")));
        }
        s.timeline.room_or_404(room_id)?;
        let body = self.member_content(s, target, membership, reason, false)?;
        s.timeline.append(
            s,
            room_id,
            sender,
            EventSpec::state(StateEventType::RoomMember, target.as_str(), body)?,
            None,
        )?;
        Ok(())
    }

    /// Whether a join to `room_id` is made here: this server is in the
    /// room, or nobody from another server is (a room of ours everyone
    /// left). Otherwise it goes through a server in the room.
    pub fn joins_here(&self, s: &Services, room_id: &RoomId) -> ServiceResult<bool> {
        if s.timeline.room(room_id)?.is_none() {
            return Ok(false);
        }
        let servers = s.timeline.servers_in_room(room_id)?;
        Ok(servers.is_empty() || servers.contains(&s.config.server_name))
    }

    /// Joins `sender` to a room, named by ID or alias.
    pub fn join(&self, s: &Services, sender: &UserId, room: &str, reason: Option<&str>) -> ServiceResult<OwnedRoomId> {
        self.join_with(s, sender, room, reason, Map::new())
    }

    /// Joins with `extra` content from the client beside the reason (a
    /// per-room display name, or keys of its own). Joining again with the
    /// same content sends nothing.
    pub fn join_with(
        &self,
        s: &Services,
        sender: &UserId,
        room: &str,
        reason: Option<&str>,
        extra: Map<String, JsonValue>,
    ) -> ServiceResult<OwnedRoomId> {
        let room_id = self.resolve_room(s, room)?;
        if s.timeline.room(&room_id)?.is_none() {
            return Err(ServiceError::NotFound(
                "this room is not known to this server".to_owned(),
            ));
        }
        if s.users.is_guest(sender.as_str())? && !self.guests_may_join(s, &room_id)? {
            return Err(ServiceError::GuestAccessForbidden);
        }
        let mut body = self.member_content(s, sender, "join", reason, false)?;
        for (key, value) in extra {
            // What the server decides is not the client's to set.
            if !matches!(
                key.as_str(),
                "membership" | "join_authorised_via_users_server" | "third_party_invite"
            ) {
                body[key] = value;
            }
        }
        let mut body = content(body)?;
        let member = StateEventType::RoomMember.to_string();
        if self
            .unchanged_state(s, &room_id, sender, &member, sender.as_str(), &body)?
            .is_some()
        {
            return Ok(room_id);
        }
        // A local user's join is decided here: "cannot tell" is a refusal.
        let authoriser = self.join_authoriser(s, &room_id, sender).map_err(|e| match e {
            ServiceError::UnableToAuthoriseJoin(m) | ServiceError::UnableToGrantJoin(m) => ServiceError::Forbidden(m),
            other => other,
        })?;
        if let Some(authoriser) = authoriser {
            body.insert(
                "join_authorised_via_users_server".to_owned(),
                ruma::CanonicalJsonValue::String(authoriser.to_string()),
            );
        }
        let spec = EventSpec {
            event_type: member.into(),
            content: body,
            state_key: Some(sender.to_string()),
            redacts: None,
            origin_server_ts: None,
        };
        s.timeline.append(s, &room_id, sender, spec, None)?;
        Ok(room_id)
    }

    /// The current state event at `(event_type, state_key)` when `sender`
    /// sent it with this very content: sending it again would change
    /// nothing, so clients get its ID instead of a duplicate event.
    fn unchanged_state(
        &self,
        s: &Services,
        room_id: &RoomId,
        sender: &UserId,
        event_type: &str,
        state_key: &str,
        body: &ruma::CanonicalJsonObject,
    ) -> ServiceResult<Option<ruma::OwnedEventId>> {
        let Some(record) = s.timeline.room(room_id)? else {
            return Ok(None);
        };
        let current = s
            .timeline
            .state_event(s, record.state_snapshot, event_type, state_key)?;
        Ok(current
            .filter(|event| event.sender() == sender.as_str() && event.content() == Some(body))
            .map(|event| event.event_id.clone()))
    }

    /// A room ID, or the room an alias of this server points to.
    pub fn resolve_room(&self, s: &Services, room: &str) -> ServiceResult<OwnedRoomId> {
        if room.starts_with('#') {
            let alias = RoomAliasId::parse(room).map_err(|e| ServiceError::InvalidParam(format!("room alias: {e}")))?;
            return self.resolve_alias(s, &alias);
        }
        OwnedRoomId::try_from(room).map_err(|e| ServiceError::InvalidParam(format!("room ID: {e}")))
    }

    pub fn resolve_alias(&self, s: &Services, alias: &RoomAliasId) -> ServiceResult<OwnedRoomId> {
        if alias.server_name() != s.config.server_name {
            return Err(ServiceError::NotFound(
                "aliases on other servers cannot be resolved without federation".to_owned(),
            ));
        }
        let record = self
            .directory
            .alias(alias.as_str())?
            .ok_or_else(|| ServiceError::NotFound("this room alias does not exist".to_owned()))?;
        OwnedRoomId::try_from(record.room_id).map_err(|e| ServiceError::Internal(format!("stored alias: {e}")))
    }

    pub fn set_alias(&self, s: &Services, sender: &UserId, alias: &RoomAliasId, room_id: &RoomId) -> ServiceResult<()> {
        if alias.server_name() != s.config.server_name {
            return Err(ServiceError::InvalidParam("aliases must be on this server".to_owned()));
        }
        check_alias_length(alias)?;
        s.appservices.check_alias_free(alias, sender)?;
        s.timeline.room_or_404(room_id)?;
        if !s.timeline.is_joined(room_id, sender)? {
            return Err(ServiceError::Forbidden("you are not in this room".to_owned()));
        }
        let record = AliasRecord {
            room_id: room_id.to_string(),
            creator: sender.to_string(),
        };
        if !self.directory.create_alias(alias.as_str(), &record)? {
            return Err(ServiceError::AliasExists);
        }
        Ok(())
    }

    /// Deletes an alias: its creator or a room member allowed to change the
    /// canonical alias may.
    pub fn delete_alias(&self, s: &Services, sender: &UserId, alias: &RoomAliasId) -> ServiceResult<()> {
        let record = self
            .directory
            .alias(alias.as_str())?
            .ok_or_else(|| ServiceError::NotFound("this room alias does not exist".to_owned()))?;
        let room_id =
            OwnedRoomId::try_from(record.room_id.as_str()).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let allowed = record.creator == sender.as_str()
            || (s.timeline.is_joined(&room_id, sender)?
                && self.may_send_state(s, &room_id, sender, "m.room.canonical_alias")?);
        if !allowed {
            return Err(ServiceError::Forbidden("you may not delete this alias".to_owned()));
        }
        if !self.directory.delete_alias(alias.as_str(), room_id.as_str())? {
            return Err(ServiceError::NotFound("this room alias does not exist".to_owned()));
        }
        Ok(())
    }

    /// The local aliases of a room, whoever asks (for the server itself).
    pub fn local_aliases(&self, room_id: &RoomId) -> ServiceResult<Vec<String>> {
        Ok(self.directory.room_aliases(room_id.as_str())?)
    }

    /// The local aliases of a room, for its members.
    pub fn room_aliases(&self, s: &Services, user: &UserId, room_id: &RoomId) -> ServiceResult<Vec<String>> {
        s.timeline.room_or_404(room_id)?;
        if !s.timeline.is_joined(room_id, user)? {
            return Err(ServiceError::Forbidden("you are not in this room".to_owned()));
        }
        Ok(self.directory.room_aliases(room_id.as_str())?)
    }

    /// Searches the user directory for `searcher`: by default only users
    /// who share a joined room with them or are joined to a public room
    /// (public join rule, or world-readable history), as Synapse does; a
    /// family server should not hand every account name to anyone who
    /// registers. `user_directory_search_all_users` lists everyone.
    pub fn search_user_directory(
        &self,
        s: &Services,
        searcher: &UserId,
        term: &str,
        limit: usize,
    ) -> ServiceResult<(Vec<crate::service::users::DirectoryEntry>, bool)> {
        if s.config.user_directory_search_all_users {
            return s.users.search_directory(term, limit, |_| Ok(true));
        }
        let joined = |user: &UserId| -> ServiceResult<Vec<OwnedRoomId>> {
            Ok(s.timeline
                .user_rooms(user)?
                .into_iter()
                .filter(|(_, r)| r.membership == "join")
                .map(|(room_id, _)| room_id)
                .collect())
        };
        let mine: std::collections::HashSet<OwnedRoomId> = joined(searcher)?.into_iter().collect();
        let mut public_rooms: std::collections::HashMap<OwnedRoomId, bool> = std::collections::HashMap::new();
        s.users.search_directory(term, limit, |candidate| {
            if candidate == searcher {
                return Ok(true);
            }
            for room_id in joined(candidate)? {
                if mine.contains(&room_id) {
                    return Ok(true);
                }
                let public = match public_rooms.get(&room_id) {
                    Some(public) => *public,
                    None => {
                        let public = self.is_publicly_joinable_or_readable(s, &room_id)?;
                        public_rooms.insert(room_id, public);
                        public
                    }
                };
                if public {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    /// A public join rule or world-readable history: the rooms whose
    /// members the user directory shows to everyone.
    fn is_publicly_joinable_or_readable(&self, s: &Services, room_id: &RoomId) -> ServiceResult<bool> {
        let Some(record) = s.timeline.room(room_id)? else {
            return Ok(false);
        };
        let state = |event_type: &str, field: &str| -> ServiceResult<Option<String>> {
            Ok(s.timeline
                .state_event(s, record.state_snapshot, event_type, "")?
                .and_then(|e| e.content_str(field).map(str::to_owned)))
        };
        Ok(state("m.room.join_rules", "join_rule")?.as_deref() == Some("public")
            || state("m.room.history_visibility", "history_visibility")?.as_deref() == Some("world_readable"))
    }

    /// Sets a profile field and carries it into the membership event of
    /// every room the user is in, as other members read names from there.
    /// A room that refuses the change is logged and skipped: the profile
    /// itself is set.
    pub fn set_profile_field(
        &self,
        s: &Services,
        user: &UserId,
        field: &str,
        value: Option<&str>,
    ) -> ServiceResult<()> {
        s.users.set_profile_field(user, field, value)?;
        let value = value.filter(|v| !v.is_empty());
        for (room_id, membership) in s.timeline.user_rooms(user)? {
            if membership.membership != "join" {
                continue;
            }
            let Some(record) = s.timeline.room(&room_id)? else {
                continue;
            };
            let Some(current) = s
                .timeline
                .state_event(s, record.state_snapshot, "m.room.member", user.as_str())?
            else {
                continue;
            };
            let mut body = current.content().cloned().unwrap_or_default();
            match value {
                Some(v) => body.insert(field.to_owned(), ruma::CanonicalJsonValue::String(v.to_owned())),
                None => body.remove(field),
            };
            // Re-joining needs no authorisation; a new one is not asked for.
            body.remove("join_authorised_via_users_server");
            if current.content() == Some(&body) {
                continue;
            }
            let spec = EventSpec {
                event_type: StateEventType::RoomMember.to_string().into(),
                content: body,
                state_key: Some(user.to_string()),
                redacts: None,
                origin_server_ts: None,
            };
            if let Err(e) = s.timeline.append(s, &room_id, user, spec, None) {
                tracing::warn!(%room_id, %user, error = %e, "profile change not carried into the room");
            }
        }
        Ok(())
    }

    /// Kicks `target`: only someone in the room (joined, invited or
    /// knocking). The auth rules would let a moderator "kick" a banned
    /// user, which lifts the ban: that is what unban is for.
    pub fn kick(
        &self,
        s: &Services,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> ServiceResult<()> {
        s.timeline.room_or_404(room_id)?;
        match s.timeline.membership(room_id, target)?.as_deref() {
            Some("join" | "invite" | "knock") => self.set_membership(s, room_id, sender, target, "leave", reason),
            Some("ban") => Err(ServiceError::Forbidden(
                "this user is banned: unban them instead of kicking".to_owned(),
            )),
            _ => Err(ServiceError::Forbidden("this user is not in the room".to_owned())),
        }
    }

    /// Lifts a ban (a leave for a banned user).
    pub fn unban(
        &self,
        s: &Services,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> ServiceResult<()> {
        if s.timeline.membership(room_id, target)?.as_deref() != Some("ban") {
            s.timeline.room_or_404(room_id)?;
            return Err(ServiceError::Forbidden("this user is not banned".to_owned()));
        }
        self.set_membership(s, room_id, sender, target, "leave", reason)
    }

    /// The member events of the joined members, for a member to read.
    pub fn joined_members(
        &self,
        s: &Services,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
    ) -> ServiceResult<Vec<JsonValue>> {
        if !s.timeline.is_joined(room_id, user)? {
            s.timeline.room_or_404(room_id)?;
            return Err(ServiceError::Forbidden("you are not in this room".to_owned()));
        }
        Ok(s.timeline
            .member_events(s, user, device, room_id, None)?
            .into_iter()
            .filter(|e| e["content"]["membership"] == "join")
            .collect())
    }

    /// Whether `user`'s power level lets them send state of `event_type`.
    pub fn may_send_state(
        &self,
        s: &Services,
        room_id: &RoomId,
        user: &UserId,
        event_type: &str,
    ) -> ServiceResult<bool> {
        let power = self.power(s, room_id)?;
        Ok(power.user_level(user) >= power.state_level(event_type))
    }

    /// The room's current power levels, and who created it.
    pub fn power(&self, s: &Services, room_id: &RoomId) -> ServiceResult<RoomPower> {
        let record = s.timeline.room_or_404(room_id)?;
        let (_, rules) = super::timeline::TimelineService::rules(&record)?;
        let create = s.timeline.state_event(s, record.state_snapshot, "m.room.create", "")?;
        let mut creators = Vec::new();
        if let Some(create) = &create {
            creators.push(create.sender().to_owned());
            if rules.authorization.explicitly_privilege_room_creators {
                let additional = create
                    .content()
                    .and_then(|c| c.get("additional_creators"))
                    .map(|v| JsonValue::from(v.clone()));
                if let Some(list) = additional.as_ref().and_then(JsonValue::as_array) {
                    creators.extend(list.iter().filter_map(JsonValue::as_str).map(str::to_owned));
                }
            }
        }
        let levels = s
            .timeline
            .state_event(s, record.state_snapshot, "m.room.power_levels", "")?
            .and_then(|e| {
                e.content()
                    .map(|c| JsonValue::from(ruma::CanonicalJsonValue::Object(c.clone())))
            });
        Ok(RoomPower {
            creators,
            creators_are_privileged: rules.authorization.explicitly_privilege_room_creators,
            levels,
        })
    }

    /// The local member who vouches for `user`'s join to a restricted room
    /// (`join_authorised_via_users_server`), or `None` when the join needs
    /// nobody's word. Refused when `user` is in none of the allowed rooms
    /// (`UnableToAuthoriseJoin` when this server is in none of them either,
    /// so cannot tell; `UnableToGrantJoin` when nobody here may invite).
    pub(crate) fn join_authoriser(
        &self,
        s: &Services,
        room_id: &RoomId,
        user: &UserId,
    ) -> ServiceResult<Option<OwnedUserId>> {
        if matches!(
            s.timeline.membership(room_id, user)?.as_deref(),
            Some("join" | "invite")
        ) {
            return Ok(None);
        }
        let record = s.timeline.room_or_404(room_id)?;
        let Some(join_rules) = s
            .timeline
            .state_event(s, record.state_snapshot, "m.room.join_rules", "")?
        else {
            return Ok(None);
        };
        if !matches!(
            join_rules.content_str("join_rule"),
            Some("restricted" | "knock_restricted")
        ) {
            return Ok(None);
        }
        if in_an_allowed_room(s, &join_rules, user)? {
            return self.local_inviter(s, room_id).map(Some);
        }
        let mut known = false;
        for allowed_room in allowed_rooms(&join_rules) {
            known |= s.timeline.server_in_room(&s.config.server_name, &allowed_room)?;
        }
        if !known && user.server_name() != s.config.server_name {
            return Err(ServiceError::UnableToAuthoriseJoin(
                "this server is in none of the rooms whose members may join".to_owned(),
            ));
        }
        Err(ServiceError::Forbidden(
            "this room admits members of certain other rooms only: join one of them first, or ask for an invite"
                .to_owned(),
        ))
    }

    /// A member of the room on this server with the power to invite.
    fn local_inviter(&self, s: &Services, room_id: &RoomId) -> ServiceResult<OwnedUserId> {
        let power = self.power(s, room_id)?;
        let needed = power.action_level("invite", 0);
        for (member, membership) in s.timeline.members(room_id)?.iter().cloned() {
            let Ok(member) = OwnedUserId::try_from(member) else {
                continue;
            };
            if membership == "join"
                && member.server_name() == s.config.server_name
                && power.user_level(&member) >= needed
            {
                return Ok(member);
            }
        }
        Err(ServiceError::UnableToGrantJoin(
            "no member of this room on this server may invite, so nobody here can admit you".to_owned(),
        ))
    }

    /// Checks an `m.room.canonical_alias` event: every alias must exist and
    /// point to this room.
    pub fn check_canonical_alias(&self, s: &Services, room_id: &RoomId, body: &JsonValue) -> ServiceResult<()> {
        let mut aliases: Vec<&str> = Vec::new();
        if let Some(a) = body.get("alias").and_then(JsonValue::as_str) {
            aliases.push(a);
        }
        if let Some(list) = body.get("alt_aliases").and_then(JsonValue::as_array) {
            for a in list {
                aliases.push(
                    a.as_str()
                        .ok_or_else(|| ServiceError::BadJson("alt_aliases must be strings".to_owned()))?,
                );
            }
        }
        for alias in aliases {
            let parsed = RoomAliasId::parse(alias).map_err(|e| ServiceError::InvalidParam(format!("{alias}: {e}")))?;
            match self.resolve_alias(s, &parsed) {
                Ok(target) if target == room_id => {}
                _ => return Err(ServiceError::BadAlias(format!("{alias} does not point to this room"))),
            }
        }
        Ok(())
    }

    pub fn set_public(&self, s: &Services, sender: &UserId, room_id: &RoomId, public: bool) -> ServiceResult<()> {
        s.timeline.room_or_404(room_id)?;
        if !self.may_send_state(s, room_id, sender, "m.room.canonical_alias")? {
            return Err(ServiceError::Forbidden(
                "you need the power to change the room's aliases to publish it".to_owned(),
            ));
        }
        Ok(self.directory.set_public(room_id.as_str(), public)?)
    }

    pub fn is_public(&self, room_id: &RoomId) -> ServiceResult<bool> {
        Ok(self.directory.is_public(room_id.as_str())?)
    }
}

/// The rooms a restricted join rule's `allow` list names.
fn allowed_rooms(join_rules: &StoredEvent) -> Vec<OwnedRoomId> {
    let allow = join_rules
        .content()
        .and_then(|c| c.get("allow"))
        .map(|v| JsonValue::from(v.clone()))
        .unwrap_or(JsonValue::Null);
    allow
        .as_array()
        .into_iter()
        .flatten()
        .filter(|condition| condition["type"] == "m.room_membership")
        .filter_map(|condition| condition["room_id"].as_str())
        .filter_map(|id| OwnedRoomId::try_from(id).ok())
        .collect()
}

/// Whether `user` is joined to one of the rooms a restricted join rule's
/// `allow` list names.
fn in_an_allowed_room(s: &Services, join_rules: &StoredEvent, user: &UserId) -> ServiceResult<bool> {
    for allowed_room in allowed_rooms(join_rules) {
        if s.timeline.is_joined(&allowed_room, user)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Who may do what in a room: its power levels and its creators.
pub struct RoomPower {
    creators: Vec<String>,
    /// Room version 12 on: creators outrank everybody and are not listed.
    creators_are_privileged: bool,
    /// The `m.room.power_levels` content, if the room has one.
    levels: Option<JsonValue>,
}

impl RoomPower {
    pub fn user_level(&self, user: &UserId) -> i64 {
        let is_creator = self.creators.iter().any(|c| c == user.as_str());
        if self.creators_are_privileged && is_creator {
            return i64::MAX;
        }
        match &self.levels {
            Some(pl) => pl["users"][user.as_str()]
                .as_i64()
                .or_else(|| pl["users_default"].as_i64())
                .unwrap_or(0),
            // Without power levels the creator has 100 and others 0.
            None if is_creator => 100,
            None => 0,
        }
    }

    /// The level needed to send state of `event_type`.
    pub fn state_level(&self, event_type: &str) -> i64 {
        match &self.levels {
            Some(pl) => pl["events"][event_type]
                .as_i64()
                .or_else(|| pl["state_default"].as_i64())
                .unwrap_or(50),
            None => 0,
        }
    }

    /// The level needed for `invite`, `kick`, `ban` or `redact`.
    pub fn action_level(&self, action: &str, default: i64) -> i64 {
        self.levels
            .as_ref()
            .and_then(|pl| pl[action].as_i64())
            .unwrap_or(default)
    }

    /// The power levels content (the spec's defaults when the room has none).
    pub fn content(&self) -> JsonValue {
        self.levels.clone().unwrap_or_else(|| json!({}))
    }
}

/// The appendix on identifiers: an alias, sigil and server name included,
/// has at most 255 bytes (ruma, built to read any server's IDs, lets longer
/// ones through).
fn check_alias_length(alias: &RoomAliasId) -> ServiceResult<()> {
    if alias.as_str().len() > MAX_ID_BYTES {
        return Err(ServiceError::InvalidParam(format!(
            "a room alias may have at most {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A room's entry in the public room directory, from its state.
fn directory_entry(room_id: &RoomId, state: &[StoredEvent]) -> JsonValue {
    let find = |t: &str, field: &str| -> Option<String> {
        state
            .iter()
            .find(|e| e.event_type() == t && e.state_key() == Some(""))
            .and_then(|e| e.content_str(field).map(str::to_owned))
    };
    let joined = state
        .iter()
        .filter(|e| e.event_type() == "m.room.member" && e.content_str("membership") == Some("join"))
        .count();
    let mut entry = json!({
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable": find("m.room.history_visibility", "history_visibility").as_deref() == Some("world_readable"),
        "guest_can_join": find("m.room.guest_access", "guest_access").as_deref() == Some("can_join"),
        "join_rule": find("m.room.join_rules", "join_rule").unwrap_or_else(|| "invite".to_owned()),
    });
    for (key, t, field) in [
        ("name", "m.room.name", "name"),
        ("topic", "m.room.topic", "topic"),
        ("canonical_alias", "m.room.canonical_alias", "alias"),
        ("avatar_url", "m.room.avatar", "url"),
        ("room_type", "m.room.create", "type"),
    ] {
        if let Some(v) = find(t, field) {
            entry[key] = v.into();
        }
    }
    entry
}

const ENCRYPTION: &str = "m.room.encryption";

/// `allow_encryption = false` stops clients from turning encryption on, in
/// new rooms and old ones. An upgrade still carries an encrypted room's
/// setting over: the operator's switch must not silently decrypt a room.
fn encryption_allowed(s: &Services) -> ServiceResult<()> {
    if s.config.allow_encryption {
        Ok(())
    } else {
        Err(ServiceError::Forbidden(
            "end-to-end encryption is disabled on this server".to_owned(),
        ))
    }
}
