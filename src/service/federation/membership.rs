//! Our users joining rooms that live on other servers: `make_join` for a
//! template, our signature, `send_join` (v2) for the room's state, every
//! event of it checked, and the join persisted on that state.

use std::sync::Arc;

use ruma::api::federation::membership::{create_join_event, prepare_join_event};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, UserId};

use super::receive::rules_of;
use super::FederationService;
use crate::service::pdu::sign_pdu;
use crate::service::rooms::SUPPORTED_ROOM_VERSIONS;
use crate::service::timeline::Received;
use crate::service::{ServiceError, ServiceResult, Services};

impl FederationService {
    /// A client's join, by room ID or alias: made here when this server is
    /// in the room (or the room has nobody from anywhere else), else over
    /// federation through `via`, the server that invited the user, or the
    /// server in the room's ID. `extra` is the client's own content.
    pub async fn join(
        &self,
        services: &Arc<Services>,
        user: ruma::OwnedUserId,
        room: String,
        reason: Option<String>,
        extra: serde_json::Map<String, serde_json::Value>,
        via: Vec<OwnedServerName>,
    ) -> ServiceResult<ruma::OwnedRoomId> {
        let mut via = via;
        // An alias of another server is resolved by that server.
        let remote_alias = ruma::RoomAliasId::parse(&room)
            .ok()
            .filter(|alias| alias.server_name() != services.config.server_name && services.config.allow_federation);
        let (room_id, local) = match remote_alias {
            Some(alias) => {
                let (room_id, servers) = self.resolve_alias(&alias).await?;
                via.extend(servers);
                let id = room_id.clone();
                let local = services.run(move |s| s.rooms.joins_here(s, &id)).await?;
                (room_id, local)
            }
            None => {
                let room = room.clone();
                services
                    .run(move |s| {
                        let room_id = s.rooms.resolve_room(s, &room)?;
                        let local = s.rooms.joins_here(s, &room_id)?;
                        Ok((room_id, local))
                    })
                    .await?
            }
        };
        if local || !services.config.allow_federation {
            let user = user.clone();
            let room = room_id.to_string();
            return services
                .run(move |s| s.rooms.join_with(s, &user, &room, reason.as_deref(), extra))
                .await;
        }
        // An invite names the server that sent it; the room's ID may name one.
        let invited_by = {
            let (user, room_id) = (user.clone(), room_id.clone());
            services.run(move |s| s.timeline.remote_invite(&user, &room_id)).await?
        };
        if let Some(invite) = &invited_by {
            let sender = serde_json::from_str::<serde_json::Value>(&invite.event)
                .ok()
                .and_then(|e| e["sender"].as_str().and_then(|u| ruma::OwnedUserId::try_from(u).ok()));
            if let Some(sender) = sender {
                via.push(sender.server_name().to_owned());
            }
        }
        if let Some(server) = room_id.server_name() {
            via.push(server.to_owned());
        }
        let content = {
            let user = user.clone();
            services
                .run(move |s| {
                    let mut body = s.rooms.member_content(s, &user, "join", reason.as_deref(), false)?;
                    for (key, value) in extra {
                        if !matches!(
                            key.as_str(),
                            "membership" | "join_authorised_via_users_server" | "third_party_invite"
                        ) {
                            body[key] = value;
                        }
                    }
                    crate::service::timeline::to_object(body)
                })
                .await?
        };
        self.join_remote(services, &user, &room_id, &via, content).await?;
        if invited_by.is_some() {
            let (user, room) = (user.clone(), room_id.clone());
            services
                .run(move |s| s.timeline.end_remote_invite(&user, &room, false))
                .await?;
        }
        Ok(room_id)
    }

    /// Joins `user` (of ours) to `room_id`, asking each of `via` in turn.
    /// `content` is the membership content (display name, avatar, the
    /// client's extra keys).
    async fn join_remote(
        &self,
        s: &Arc<Services>,
        user: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        content: CanonicalJsonObject,
    ) -> ServiceResult<()> {
        let mut last_error = None;
        for server in via.iter().filter(|v| **v != self.server_name) {
            match self.join_via(s, user, room_id, server, content.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "joining through this server failed");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            ServiceError::NotFound("this room is not known here and no server to join it through was given".to_owned())
        }))
    }

    async fn join_via(
        &self,
        s: &Arc<Services>,
        user: &UserId,
        room_id: &RoomId,
        server: &OwnedServerName,
        content: CanonicalJsonObject,
    ) -> ServiceResult<()> {
        let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        request.ver = SUPPORTED_ROOM_VERSIONS.to_vec();
        let made = self.client.send(server, request).await?;
        let version = made.room_version.unwrap_or(RoomVersionId::V1);
        let rules = rules_of(&version)?;
        let mut template: CanonicalJsonObject = serde_json::from_str(made.event.get())
            .map_err(|e| ServiceError::RemoteFailed(format!("make_join from {server}: {e}")))?;
        let is =
            |key: &str, value: &str| matches!(template.get(key), Some(CanonicalJsonValue::String(v)) if v == value);
        if !is("type", "m.room.member") || !is("state_key", user.as_str()) || !is("sender", user.as_str()) {
            return Err(ServiceError::RemoteFailed(format!(
                "{server} sent a template that is not our join"
            )));
        }
        // Our content, with what the resident server added to it (the user
        // who authorises a restricted join).
        let mut merged = content;
        if let Some(CanonicalJsonValue::Object(theirs)) = template.get("content") {
            if let Some(authoriser) = theirs.get("join_authorised_via_users_server") {
                merged.insert("join_authorised_via_users_server".to_owned(), authoriser.clone());
            }
        }
        merged.insert("membership".to_owned(), "join".into());
        template.insert("content".to_owned(), CanonicalJsonValue::Object(merged));
        template.insert("origin".to_owned(), self.server_name.as_str().into());
        template.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(ruma::MilliSecondsSinceUnixEpoch::now().0.into()),
        );
        let (event_id, join) = sign_pdu(template, &rules, &self.server_name, &s.server_keys)?;

        let pdu = serde_json::value::to_raw_value(&join).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let request = create_join_event::v2::Request::new(room_id.to_owned(), event_id.clone(), pdu);
        let answer = self.client.send(server, request).await?.room_state;
        // A restricted join comes back signed by the authorising server too.
        let join = match &answer.event {
            Some(signed) => {
                let (id, object) = self.verify_pdu(&version, signed).await?;
                if id != event_id {
                    return Err(ServiceError::RemoteFailed(format!(
                        "{server} returned another join event"
                    )));
                }
                object
            }
            None => join,
        };
        let mut state: Vec<OwnedEventId> = Vec::with_capacity(answer.state.len());
        for raw in answer.auth_chain.iter().chain(&answer.state) {
            let (id, object) = self.verify_pdu(&version, raw).await?;
            let room = room_id.to_owned();
            let keep_id = id.clone();
            s.run(move |s| s.timeline.store_outlier(&room, &keep_id, &object))
                .await?;
            state.push(id);
        }
        // The state is the last `answer.state.len()` of what was stored.
        let state = state.split_off(answer.auth_chain.len());
        let room = room_id.to_owned();
        let joined = s
            .run_write(move |s| s.timeline.receive_join(s, &room, &version, event_id, join, &state))
            .await?;
        match joined {
            Received::Accepted { .. } | Received::AlreadyKnown => {
                tracing::info!(%room_id, %server, %user, "joined a room of another server");
                Ok(())
            }
            other => Err(ServiceError::RemoteFailed(format!(
                "the join was not accepted here: {other:?}"
            ))),
        }
    }
}

/// `{type, state_key, sender, content}` of an event (PDU or already
/// stripped), as clients see invite state; `None` if it lacks them.
fn stripped(event: &serde_json::Value) -> Option<String> {
    let stripped = serde_json::json!({
        "type": event.get("type")?,
        "state_key": event.get("state_key")?,
        "sender": event.get("sender")?,
        "content": event.get("content")?,
    });
    Some(stripped.to_string())
}

impl FederationService {
    /// `PUT /_matrix/federation/v2/invite`: another server invites one of
    /// our users. The invite is checked, signed by us, and kept for the
    /// user; returns the event with our signature.
    pub async fn receive_invite(
        &self,
        s: &Arc<Services>,
        origin: &ruma::ServerName,
        request: &ruma::api::federation::membership::create_invite::v2::Request,
    ) -> ServiceResult<CanonicalJsonObject> {
        let (room_id, event_id, version) = (&request.room_id, &request.event_id, &request.room_version);
        let (event, invite_room_state) = (&request.event, &request.invite_room_state);
        rules_of(version)?;
        let (id, mut object) = self.verify_pdu(version, event).await?;
        if id != *event_id {
            return Err(ServiceError::BadJson(format!(
                "the invite's ID is {id}, not {event_id}"
            )));
        }
        let field = |key: &str| match object.get(key) {
            Some(CanonicalJsonValue::String(v)) => Some(v.clone()),
            _ => None,
        };
        let membership = match object.get("content") {
            Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
                Some(CanonicalJsonValue::String(m)) => Some(m.clone()),
                _ => None,
            },
            _ => None,
        };
        let sender = field("sender").and_then(|u| ruma::OwnedUserId::try_from(u).ok());
        let invitee = field("state_key").and_then(|u| ruma::OwnedUserId::try_from(u).ok());
        let (Some(sender), Some(invitee)) = (sender, invitee) else {
            return Err(ServiceError::BadJson(
                "the invite names no sender or invitee".to_owned(),
            ));
        };
        if field("type").as_deref() != Some("m.room.member")
            || membership.as_deref() != Some("invite")
            || field("room_id").as_deref() != Some(room_id.as_str())
            || sender.server_name() != origin
        {
            return Err(ServiceError::BadJson(format!(
                "this is not an invite from {origin} to {room_id}"
            )));
        }
        if invitee.server_name() != self.server_name {
            return Err(ServiceError::BadJson(format!("{invitee} is not a user of this server")));
        }
        let who = invitee.clone();
        if !s.run(move |s| s.users.exists(&who)).await? {
            return Err(ServiceError::NotFound(format!(
                "{invitee} is not a user of this server"
            )));
        }
        // Our signature, as the spec asks of the invited server.
        s.server_keys.sign_json(&mut object)?;

        let mut state = Vec::new();
        for entry in invite_room_state {
            #[allow(deprecated)]
            let json = match entry {
                ruma::api::federation::membership::RawStrippedState::Stripped(raw) => raw.json().get().to_owned(),
                ruma::api::federation::membership::RawStrippedState::Pdu(raw) => raw.get().to_owned(),
                _ => continue,
            };
            if let Some(stripped) = serde_json::from_str(&json).ok().as_ref().and_then(stripped) {
                state.push(stripped);
            }
        }
        // The invite itself is the user's own member event in that state.
        if let Some(invite) =
            stripped(&serde_json::to_value(&object).map_err(|e| ServiceError::Internal(e.to_string()))?)
        {
            state.push(invite);
        }
        let record = crate::database::rooms::RemoteInviteRecord {
            room_version: version.to_string(),
            event: serde_json::to_string(&object).map_err(|e| ServiceError::Internal(e.to_string()))?,
            stripped_state: state,
        };
        let room = room_id.to_owned();
        s.run(move |s| s.timeline.store_remote_invite(&invitee, &room, &record))
            .await?;
        tracing::info!(%room_id, %origin, "invite from another server");
        Ok(object)
    }

    /// One of our users invites a user of another server to a room here:
    /// the invite is built, signed by the invitee's server, then stored and
    /// sent to the room as any event.
    pub async fn invite_remote(
        &self,
        s: &Arc<Services>,
        room_id: &RoomId,
        sender: &UserId,
        invitee: &UserId,
        content: CanonicalJsonObject,
    ) -> ServiceResult<()> {
        let spec = crate::service::timeline::EventSpec {
            event_type: "m.room.member".into(),
            content,
            state_key: Some(invitee.to_string()),
            redacts: None,
        };
        let (room, sender_owned) = (room_id.to_owned(), sender.to_owned());
        let (event_id, event, version, state) = s
            .run(move |s| {
                let (event_id, event, version) = s.timeline.build_for_signing(s, &room, &sender_owned, spec)?;
                let mut state = Vec::new();
                for id in s.timeline.invite_state(s, &room, &sender_owned)? {
                    if let Some(pdu) = s.timeline.federation_pdu_raw(&id)? {
                        state.push(ruma::api::federation::membership::RawStrippedState::Pdu(pdu));
                    }
                }
                Ok((event_id, event, version, state))
            })
            .await?;
        let raw = serde_json::value::to_raw_value(&event).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let request = ruma::api::federation::membership::create_invite::v2::Request::new(
            room_id.to_owned(),
            event_id.clone(),
            version.clone(),
            raw,
            state,
        );
        let answer = self.client.send(invitee.server_name(), request).await?;
        let (signed_id, signed) = self.verify_pdu(&version, &answer.event).await?;
        if signed_id != event_id {
            return Err(ServiceError::RemoteFailed(format!(
                "{} returned another event than the invite",
                invitee.server_name()
            )));
        }
        let room = room_id.to_owned();
        let stored = s
            .run_write(move |s| s.timeline.receive_remote(s, &room, signed_id, signed, None))
            .await?;
        match stored {
            Received::Accepted { .. } | Received::AlreadyKnown => Ok(()),
            other => Err(ServiceError::Forbidden(format!("the invite was not stored: {other:?}"))),
        }
    }
}
