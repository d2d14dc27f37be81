//! Other servers' users joining, knocking on and leaving rooms of ours:
//! the templates `make_join`, `make_knock` and `make_leave` answer with
//! (a restricted join names the member of ours who admits the user), our
//! signature on such a join, and the stripped state a knock is answered
//! with.

use std::sync::Arc;

use ruma::api::federation::membership::RawStrippedState;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, RoomId, RoomVersionId, ServerName, UserId};
use serde_json::value::RawValue;

use super::receive::rules_of;
use super::FederationService;
use crate::database::outbox::OutboxItem;
use crate::service::outbox::Destination;
use crate::service::{ServiceError, ServiceResult, Services};

impl FederationService {
    /// Checks and stores a membership event another server signed for one
    /// of its users (`send_join`, `send_leave`, `send_knock`): it must be
    /// that user's, with `membership`, and under the ID the request names.
    /// A join one of our users admits to a restricted room is signed by us
    /// first; returns the event with our signature then. The room's other
    /// servers learn of it from us: it reached no one else.
    pub async fn accept_membership(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &RawValue,
        membership: &str,
    ) -> ServiceResult<Option<CanonicalJsonObject>> {
        let version = {
            let (room_id, origin) = (room_id.to_owned(), origin.to_owned());
            let record = s
                .run(move |s| {
                    if !s.timeline.server_allowed(s, &room_id, &origin)? {
                        return Err(ServiceError::Forbidden(format!(
                            "{origin} is denied by the room's server ACL"
                        )));
                    }
                    s.timeline.room_or_404(&room_id)
                })
                .await?;
            RoomVersionId::try_from(record.version.as_str())
                .map_err(|e| ServiceError::Internal(format!("stored room version: {e}")))?
        };
        let countersigned = if membership == "join" {
            let mut object: CanonicalJsonObject =
                serde_json::from_str(pdu.get()).map_err(|e| ServiceError::BadJson(format!("not a PDU: {e}")))?;
            let (room_id, version) = (room_id.to_owned(), version.clone());
            let signed = s
                .run(move |s| {
                    let signed = s.federation.countersign_join(s, &room_id, &version, &mut object)?;
                    Ok(signed.then_some(object))
                })
                .await?;
            match signed {
                Some(object) => Some(
                    serde_json::value::to_raw_value(&object)
                        .map_err(|e| ServiceError::Internal(format!("countersigned join: {e}")))?,
                ),
                None => None,
            }
        } else {
            None
        };
        let (id, object) = self
            .verify_pdu(&version, countersigned.as_deref().unwrap_or(pdu))
            .await?;
        if id != event_id {
            return Err(ServiceError::BadJson(format!("the event's ID is {id}, not {event_id}")));
        }
        let field = |key: &str| match object.get(key) {
            Some(CanonicalJsonValue::String(v)) => Some(v.as_str()),
            _ => None,
        };
        let content_membership = match object.get("content") {
            Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
                Some(CanonicalJsonValue::String(m)) => Some(m.as_str()),
                _ => None,
            },
            _ => None,
        };
        let sender = field("sender").and_then(|s| UserId::parse(s).ok());
        let fits = field("type") == Some("m.room.member")
            && field("room_id") == Some(room_id.as_str())
            && sender.as_ref().is_some_and(|u| u.server_name() == origin)
            && field("state_key") == field("sender")
            && content_membership == Some(membership);
        if !fits {
            return Err(ServiceError::BadJson(format!(
                "this is not a {membership} of one of {origin}'s users to {room_id}"
            )));
        }
        let signed = countersigned.is_some().then(|| object.clone());
        self.handle_pdu(s, origin, room_id, &version, id.clone(), object)
            .await?;
        let (room_id, origin) = (room_id.to_owned(), origin.to_owned());
        s.run(move |s| s.federation.forward(s, &room_id, &id, &origin)).await?;
        Ok(signed)
    }

    /// Queues an event another server's user sent through us for the
    /// room's other servers (not ours, not the sender's).
    fn forward(&self, s: &Services, room_id: &RoomId, event_id: &EventId, origin: &ServerName) -> ServiceResult<()> {
        let destinations: Vec<Destination> = s
            .timeline
            .servers_in_room(room_id)?
            .into_iter()
            .filter(|server| *server != self.server_name && server != origin)
            .map(Destination::Server)
            .collect();
        if destinations.is_empty() {
            return Ok(());
        }
        let Some(pdu) = s.timeline.federation_pdu_raw(event_id)? else {
            return Ok(());
        };
        let item = OutboxItem::Pdu {
            event_id: event_id.to_string(),
            json: pdu.get().to_owned(),
        };
        self.outbox.queue(&destinations, &item)
    }

    /// The unsigned `membership` event of `user` (another server's) for
    /// `room_id`, on its current state, with the room's version. With
    /// `supported`, the asking server's room versions (none given: version
    /// 1 only), the room's must be one of them.
    pub fn membership_template_for(
        &self,
        s: &Services,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
        supported: Option<&[RoomVersionId]>,
    ) -> ServiceResult<(RoomVersionId, CanonicalJsonObject)> {
        let record = s.timeline.room_or_404(room_id)?;
        if !s.timeline.server_allowed(s, room_id, user.server_name())? {
            return Err(ServiceError::Forbidden(format!(
                "{} is denied by the room's server ACL",
                user.server_name()
            )));
        }
        if let Some(supported) = supported {
            let supports = if supported.is_empty() {
                record.version == "1"
            } else {
                supported.iter().any(|v| v.as_str() == record.version)
            };
            if !supports {
                return Err(ServiceError::IncompatibleRoomVersion(record.version));
            }
        }
        let version =
            RoomVersionId::try_from(record.version.as_str()).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let mut content = CanonicalJsonObject::new();
        if membership == "join" {
            if let Some(authoriser) = s.rooms.join_authoriser(s, room_id, user)? {
                content.insert(
                    "join_authorised_via_users_server".to_owned(),
                    authoriser.as_str().into(),
                );
            }
        }
        let (_, template) = s.timeline.membership_template(s, room_id, user, membership, content)?;
        Ok((version, template))
    }

    /// Signs a join another server sent when it names one of our users as
    /// the one who admits it to a restricted room (the spec asks this of
    /// the authorising server), after checking again that the user may
    /// join. Returns whether it signed.
    pub fn countersign_join(
        &self,
        s: &Services,
        room_id: &RoomId,
        version: &RoomVersionId,
        event: &mut CanonicalJsonObject,
    ) -> ServiceResult<bool> {
        let authoriser = match event.get("content") {
            Some(CanonicalJsonValue::Object(content)) => match content.get("join_authorised_via_users_server") {
                Some(CanonicalJsonValue::String(user)) => Some(user.clone()),
                _ => None,
            },
            _ => None,
        };
        let Some(authoriser) = authoriser else {
            return Ok(false);
        };
        let authoriser = UserId::parse(&authoriser)
            .map_err(|e| ServiceError::BadJson(format!("join_authorised_via_users_server: {e}")))?;
        if authoriser.server_name() != self.server_name {
            return Ok(false);
        }
        let joining = match event.get("state_key") {
            Some(CanonicalJsonValue::String(user)) => UserId::parse(user).ok(),
            _ => None,
        }
        .ok_or_else(|| ServiceError::BadJson("the join names no valid user".to_owned()))?;
        s.rooms.join_authoriser(s, room_id, &joining)?;
        s.server_keys
            .hash_and_sign_event(event, &rules_of(version)?.redaction)?;
        Ok(true)
    }

    /// `send_knock`'s answer: the stripped state the knocker is shown.
    pub fn knock_room_state(
        &self,
        s: &Services,
        room_id: &RoomId,
        knocker: &UserId,
    ) -> ServiceResult<Vec<RawStrippedState>> {
        stripped_state_pdus(s, room_id, knocker)
    }
}

/// What an invitee or a knocker is shown of `room_id`: the spec's stripped
/// state events, and `member`'s own member event, as full PDUs.
pub(super) fn stripped_state_pdus(
    s: &Services,
    room_id: &RoomId,
    member: &UserId,
) -> ServiceResult<Vec<RawStrippedState>> {
    let mut state = Vec::new();
    for id in s.timeline.invite_state(s, room_id, member)? {
        if let Some(pdu) = s.timeline.federation_pdu_raw(&id)? {
            state.push(RawStrippedState::Pdu(pdu));
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use ruma::{OwnedUserId, RoomVersionId};
    use serde_json::json;

    use crate::service::rooms::{CreateRoom, Preset};
    use crate::service::testing::two_in_a_room;
    use crate::service::timeline::to_object;
    use crate::service::ServiceError;

    /// What a resident server answers another server's user asking to join
    /// a restricted room: refused when the user is in no allowed room this
    /// server knows, "cannot tell" when it knows none of them; a knock
    /// template only where knocking is the rule.
    #[test]
    fn templates_for_another_servers_user_follow_the_join_rule() {
        let t = two_in_a_room();
        let s = &t.s;
        let carol: OwnedUserId = "@carol:remote.test".try_into().unwrap();
        let private = CreateRoom {
            preset: Some(Preset::PrivateChat),
            room_version: Some(RoomVersionId::V10),
            ..Default::default()
        };
        let room = s.rooms.create_room(s, &t.alice, private).unwrap();
        let rule = |content: serde_json::Value| {
            s.rooms
                .send_state(
                    s,
                    &room,
                    &t.alice,
                    "m.room.join_rules",
                    "",
                    to_object(content).unwrap(),
                    None,
                )
                .unwrap();
        };
        let template = |membership: &str| s.federation.membership_template_for(s, &room, &carol, membership, None);

        rule(json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": t.room}]}));
        assert!(matches!(template("join"), Err(ServiceError::Forbidden(_))));
        rule(
            json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!elsewhere:remote.test"}]}),
        );
        assert!(matches!(template("join"), Err(ServiceError::UnableToAuthoriseJoin(_))));
        assert!(matches!(template("knock"), Err(ServiceError::Forbidden(_))));

        rule(json!({"join_rule": "knock"}));
        let (version, knock) = template("knock").unwrap();
        assert_eq!(version, RoomVersionId::V10);
        let knock = serde_json::Value::from(ruma::CanonicalJsonValue::Object(knock));
        assert_eq!(knock["content"], json!({"membership": "knock"}));
        assert_eq!(knock["state_key"], carol.as_str());
        let old_servers_only =
            s.federation
                .membership_template_for(s, &room, &carol, "knock", Some(&[RoomVersionId::V6]));
        assert!(matches!(old_servers_only, Err(ServiceError::IncompatibleRoomVersion(v)) if v == "10"));
    }
}
