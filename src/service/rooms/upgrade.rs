//! Room upgrades: a new room of another version replaces an old one.
//!
//! The new room copies the old one's transferable state, takes over its
//! local aliases and directory listing, and (unless anyone may join it)
//! invites the old room's local members; the old room gets a tombstone and
//! power levels that stop further messages and invites.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde_json::{json, Value as JsonValue};

use super::{content, RoomsService, SUPPORTED_ROOM_VERSIONS};
use crate::service::timeline::EventSpec;
use crate::service::{ServiceError, ServiceResult, Services};

/// State copied as it is (every state key of each type).
const TRANSFERRED: [&str; 10] = [
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
    "m.space.child",
    "m.space.parent",
];

impl RoomsService {
    /// Upgrades `room_id` to `version`; returns the replacement room's ID.
    pub fn upgrade(
        &self,
        s: &Services,
        sender: &UserId,
        room_id: &RoomId,
        version: &RoomVersionId,
        additional_creators: &[OwnedUserId],
    ) -> ServiceResult<OwnedRoomId> {
        if !SUPPORTED_ROOM_VERSIONS.contains(version) {
            return Err(ServiceError::UnsupportedRoomVersion(format!(
                "room version {version} is not supported by this server"
            )));
        }
        let new_rules = version
            .rules()
            .ok_or_else(|| ServiceError::UnsupportedRoomVersion(format!("room version {version} has no rules")))?;
        let record = s.timeline.room_or_404(room_id)?;
        if !s.timeline.is_joined(room_id, sender)? {
            return Err(ServiceError::Forbidden("you are not in this room".to_owned()));
        }
        let power = self.power(s, room_id)?;
        if power.user_level(sender) < power.state_level("m.room.tombstone") {
            return Err(ServiceError::Forbidden(
                "you need the power to send m.room.tombstone to upgrade this room".to_owned(),
            ));
        }
        let old_state = s.timeline.state_events(s, record.state_snapshot)?;
        let old_content = |event_type: &str| -> Option<JsonValue> {
            old_state
                .iter()
                .find(|e| e.event_type() == event_type && e.state_key() == Some(""))
                .and_then(|e| e.content().cloned())
                .map(|c| JsonValue::from(ruma::CanonicalJsonValue::Object(c)))
        };

        // 1. The replacement's create event names its predecessor and keeps
        // the room type (a space stays a space).
        let mut create = json!({
            "room_version": version.as_str(),
            "predecessor": {"room_id": room_id},
        });
        // From v12 on the predecessor's event ID may be left out; before, it
        // is the old room's last event.
        if !new_rules.authorization.explicitly_privilege_room_creators {
            if let Some(last) = record.forward_extremities.first() {
                create["predecessor"]["event_id"] = last.clone().into();
            }
        }
        if let Some(room_type) = old_content("m.room.create").and_then(|c| c.get("type").cloned()) {
            create["type"] = room_type;
        }
        if !new_rules.authorization.use_room_create_sender {
            create["creator"] = sender.as_str().into();
        }
        let creators_privileged = new_rules.authorization.explicitly_privilege_room_creators;
        if creators_privileged && !additional_creators.is_empty() {
            create["additional_creators"] = additional_creators
                .iter()
                .map(|u| u.as_str())
                .collect::<Vec<_>>()
                .into();
        }
        let new_room = s.timeline.create_room(s, version, sender, content(create)?)?;
        let send = |room: &RoomId, event_type: &str, key: &str, body: JsonValue| -> ServiceResult<()> {
            s.timeline
                .append(s, room, sender, EventSpec::state(event_type.into(), key, body)?, None)?;
            Ok(())
        };

        // 2. The upgrading user joins, then the power levels: the old ones,
        // with the upgrader able to send everything that follows.
        send(
            &new_room,
            "m.room.member",
            sender.as_str(),
            self.member_content(s, sender, "join", None, false)?,
        )?;
        let mut levels = power.content();
        if !levels["users"].is_object() {
            levels["users"] = json!({});
        }
        if creators_privileged {
            // Creators outrank everybody and must not be listed.
            if let Some(users) = levels["users"].as_object_mut() {
                users.remove(sender.as_str());
                for creator in additional_creators {
                    users.remove(creator.as_str());
                }
            }
        } else {
            levels["users"][sender.as_str()] = highest_level(&levels, power.user_level(sender)).into();
        }
        send(&new_room, "m.room.power_levels", "", levels)?;

        // 3. Transferable state, and the bans.
        for event in old_state.iter() {
            let event_type = event.event_type();
            let Some(key) = event.state_key() else { continue };
            let Some(body) = event.content().cloned() else { continue };
            let body = JsonValue::from(ruma::CanonicalJsonValue::Object(body));
            let is_ban = event_type == "m.room.member" && body["membership"] == "ban";
            if !TRANSFERRED.contains(&event_type) && !is_ban {
                continue;
            }
            if is_ban {
                let mut ban = json!({"membership": "ban"});
                if let Some(reason) = body.get("reason") {
                    ban["reason"] = reason.clone();
                }
                send(&new_room, event_type, key, ban)?;
            } else {
                send(&new_room, event_type, key, body)?;
            }
        }

        // 4. Local aliases, the canonical alias and the directory listing
        // move over.
        for alias in self.directory.room_aliases(room_id.as_str())? {
            if let Some(mut alias_record) = self.directory.alias(&alias)? {
                alias_record.room_id = new_room.to_string();
                self.directory.move_alias(&alias, room_id.as_str(), &alias_record)?;
            }
        }
        if let Some(canonical) =
            old_content("m.room.canonical_alias").filter(|c| c.as_object().is_some_and(|o| !o.is_empty()))
        {
            send(&new_room, "m.room.canonical_alias", "", canonical)?;
            send(room_id, "m.room.canonical_alias", "", json!({}))?;
        }
        if self.directory.is_public(room_id.as_str())? {
            self.directory.set_public(new_room.as_str(), true)?;
            self.directory.set_public(room_id.as_str(), false)?;
        }

        // 5. Unless anyone may join, the old room's local members are
        // invited, so a family's private room does not strand anyone.
        let join_rule = old_content("m.room.join_rules")
            .and_then(|c| c["join_rule"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "invite".to_owned());
        if join_rule != "public" {
            for (member, membership) in s.timeline.members(room_id)?.iter().cloned() {
                let Ok(member) = OwnedUserId::try_from(member) else {
                    continue;
                };
                if membership == "join" && member != sender && member.server_name() == s.config.server_name {
                    let body = self.member_content(s, &member, "invite", None, false)?;
                    send(&new_room, "m.room.member", member.as_str(), body)?;
                }
            }
        }

        // 6. The tombstone, and the old room falls quiet.
        send(
            room_id,
            "m.room.tombstone",
            "",
            json!({"body": "This room has been replaced", "replacement_room": new_room}),
        )?;
        let mut old_levels = power.content();
        let users_default = old_levels["users_default"].as_i64().unwrap_or(0);
        let quiet = 50.max(users_default + 1);
        for key in ["events_default", "invite"] {
            let current = old_levels[key].as_i64().unwrap_or(0);
            old_levels[key] = current.max(quiet).into();
        }
        send(room_id, "m.room.power_levels", "", old_levels)?;
        tracing::info!(old = %room_id, new = %new_room, %version, "room upgraded");
        Ok(new_room)
    }
}

/// A level at least the upgrader's own and at least everything the power
/// levels ask for, so the replacement's setup passes the auth rules.
fn highest_level(levels: &JsonValue, own: i64) -> i64 {
    let mut highest = 100.max(if own == i64::MAX { 0 } else { own });
    for key in ["state_default", "events_default", "ban", "kick", "redact", "invite"] {
        highest = highest.max(levels[key].as_i64().unwrap_or(0));
    }
    for value in levels["events"].as_object().into_iter().flat_map(|m| m.values()) {
        highest = highest.max(value.as_i64().unwrap_or(0));
    }
    highest
}
