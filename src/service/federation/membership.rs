//! Our users joining rooms that live on other servers: `make_join` for a
//! template, our signature, `send_join` (v2) for the room's state, every
//! event of it checked, and the join persisted on that state; knocking on
//! them (`make_knock`, `send_knock`), and withdrawing a knock or refusing
//! an invite (`make_leave`, `send_leave`).

use std::sync::Arc;

use ruma::api::federation::membership::{
    create_join_event, create_knock_event, create_leave_event, prepare_join_event, prepare_knock_event,
    prepare_leave_event, RawStrippedState,
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    RoomVersionId, ServerName, UserId,
};
use serde_json::value::RawValue;

use super::receive::rules_of;
use super::FederationService;
use crate::service::pdu::sign_pdu;
use crate::service::rooms::SUPPORTED_ROOM_VERSIONS;
use crate::service::timeline::Received;
use crate::service::{ServiceError, ServiceResult, Services};

/// Where a client's join or knock goes: the room, whether it is made here
/// (this server is in the room, or nobody from elsewhere is), and else the
/// servers to ask in turn.
struct Located {
    room_id: OwnedRoomId,
    local: bool,
    via: Vec<OwnedServerName>,
    /// The user has an invite or a knock of another server for the room.
    remote_record: bool,
}

impl FederationService {
    /// A client's join, by room ID or alias: made here when this server is
    /// in the room (or the room has nobody from anywhere else), else over
    /// federation through `via`, the server that invited the user, or the
    /// server in the room's ID. `extra` is the client's own content.
    pub async fn join(
        &self,
        services: &Arc<Services>,
        user: OwnedUserId,
        room: String,
        reason: Option<String>,
        extra: serde_json::Map<String, serde_json::Value>,
        via: Vec<OwnedServerName>,
    ) -> ServiceResult<OwnedRoomId> {
        let Located {
            room_id,
            local,
            via,
            remote_record,
        } = self.locate(services, &user, &room, via).await?;
        let closed = room_id.clone();
        services.run(move |s| s.rooms.check_joinable(&closed)).await?;
        if local || !services.config.allow_federation {
            let user = user.clone();
            let room = room_id.to_string();
            return services
                .run(move |s| s.rooms.join_with(s, &user, &room, reason.as_deref(), extra))
                .await;
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
        // A server that cannot admit the user to a restricted room says so
        // (M_UNABLE_TO_AUTHORISE_JOIN, M_UNABLE_TO_GRANT_JOIN): the next
        // is asked.
        self.through_each(&room_id, &via, |server| {
            self.join_via(services, &user, &room_id, server, content.clone())
        })
        .await?;
        if remote_record {
            let (user, room) = (user.clone(), room_id.clone());
            services
                .run(move |s| s.timeline.end_remote_invite(&user, &room, false))
                .await?;
        }
        Ok(room_id)
    }

    /// A client's knock, by room ID or alias: made here when the join
    /// would be, else over federation (`make_knock`, `send_knock`); the
    /// knock and the stripped state the room's server answers with are
    /// kept for the user's sync.
    pub async fn knock(
        &self,
        services: &Arc<Services>,
        user: OwnedUserId,
        room: String,
        reason: Option<String>,
        via: Vec<OwnedServerName>,
    ) -> ServiceResult<OwnedRoomId> {
        let Located {
            room_id, local, via, ..
        } = self.locate(services, &user, &room, via).await?;
        let closed = room_id.clone();
        services.run(move |s| s.rooms.check_joinable(&closed)).await?;
        if local || !services.config.allow_federation {
            return services
                .run(move |s| {
                    s.rooms
                        .set_membership(s, &room_id, &user, &user, "knock", reason.as_deref())?;
                    Ok(room_id)
                })
                .await;
        }
        let content = {
            let user = user.clone();
            services
                .run(move |s| {
                    let body = s.rooms.member_content(s, &user, "knock", reason.as_deref(), false)?;
                    crate::service::timeline::to_object(body)
                })
                .await?
        };
        self.through_each(&room_id, &via, |server| {
            self.knock_via(services, &user, &room_id, server, content.clone())
        })
        .await?;
        Ok(room_id)
    }

    /// Leaves a room this server is not in, where `user` has an invite or
    /// a knock of another server: the leave goes to a server of the room
    /// (`make_leave`, `send_leave`), and the invite or knock ends here.
    /// `false` when the user has no such invite or knock.
    pub async fn leave_remote(
        &self,
        services: &Arc<Services>,
        user: &UserId,
        room_id: &RoomId,
        reason: Option<String>,
    ) -> ServiceResult<bool> {
        let found = {
            let (user, room) = (user.to_owned(), room_id.to_owned());
            services
                .run(move |s| {
                    if s.timeline.room(&room)?.is_some() {
                        return Ok(None);
                    }
                    let Some(record) = s.timeline.remote_invite(&user, &room)? else {
                        return Ok(None);
                    };
                    Ok(Some((record, s.timeline.membership(&room, &user)?)))
                })
                .await?
        };
        let Some((record, membership)) = found else {
            return Ok(false);
        };
        let mut via = record_servers(&record);
        via.extend(room_id.server_name().map(ToOwned::to_owned));
        let mut content = CanonicalJsonObject::new();
        content.insert("membership".to_owned(), "leave".into());
        if let Some(reason) = reason {
            content.insert("reason".to_owned(), reason.into());
        }
        let left = self
            .through_each(room_id, &via, |server| {
                self.leave_via(services, user, room_id, server, content.clone())
            })
            .await;
        match left {
            Ok(()) => {}
            // A knock that could not be withdrawn stands: the user is told.
            Err(e) if membership.as_deref() == Some("knock") => return Err(e),
            // An invite is refused here even when its server cannot be told.
            Err(e) => tracing::info!(%room_id, error = %e, "the refusal of an invite did not reach the room"),
        }
        let (user, room) = (user.to_owned(), room_id.to_owned());
        services
            .run(move |s| s.timeline.end_remote_invite(&user, &room, true))
            .await?;
        Ok(true)
    }

    async fn locate(
        &self,
        services: &Arc<Services>,
        user: &UserId,
        room: &str,
        via: Vec<OwnedServerName>,
    ) -> ServiceResult<Located> {
        let mut via = via;
        // An alias of another server is resolved by that server.
        let remote_alias = ruma::RoomAliasId::parse(room)
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
                let room = room.to_owned();
                services
                    .run(move |s| {
                        let room_id = s.rooms.resolve_room(s, &room)?;
                        let local = s.rooms.joins_here(s, &room_id)?;
                        Ok((room_id, local))
                    })
                    .await?
            }
        };
        // An invite names the server that sent it, a knock's answer the
        // servers of the room's state; the room's ID may name one.
        let record = {
            let (user, room_id) = (user.to_owned(), room_id.clone());
            services.run(move |s| s.timeline.remote_invite(&user, &room_id)).await?
        };
        if let Some(record) = &record {
            via.extend(record_servers(record));
        }
        if let Some(server) = room_id.server_name() {
            via.push(server.to_owned());
        }
        Ok(Located {
            room_id,
            local,
            via,
            remote_record: record.is_some(),
        })
    }

    /// Runs `attempt` with each server of `via` (ours and repeats left out)
    /// until one succeeds; the last failure otherwise.
    async fn through_each<'a, F, Fut>(
        &self,
        room_id: &RoomId,
        via: &'a [OwnedServerName],
        mut attempt: F,
    ) -> ServiceResult<()>
    where
        F: FnMut(&'a OwnedServerName) -> Fut,
        Fut: std::future::Future<Output = ServiceResult<()>>,
    {
        let mut last_error = None;
        let mut tried = std::collections::HashSet::new();
        for server in via.iter().filter(|v| **v != self.server_name) {
            if !tried.insert(server) {
                continue;
            }
            match attempt(server).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "going through this server failed");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            ServiceError::NotFound("this room is not known here and no server to reach it through was given".to_owned())
        }))
    }

    /// Our user's member event made from another server's template: the
    /// template must be that user's member event; `content` is ours (its
    /// `membership` the one asked for), with the user the resident server
    /// names to admit a restricted join. Returns it also as the body of
    /// the `send_*` request.
    fn sign_template(
        &self,
        s: &Services,
        server: &ServerName,
        user: &UserId,
        version: &RoomVersionId,
        template: &RawValue,
        content: CanonicalJsonObject,
    ) -> ServiceResult<(OwnedEventId, CanonicalJsonObject, Box<RawValue>)> {
        let rules = rules_of(version)?;
        let membership = match content.get("membership") {
            Some(CanonicalJsonValue::String(m)) => m.clone(),
            _ => return Err(ServiceError::Internal("member content without membership".to_owned())),
        };
        let mut template: CanonicalJsonObject = serde_json::from_str(template.get())
            .map_err(|e| ServiceError::RemoteFailed(format!("make_{membership} from {server}: {e}")))?;
        let is =
            |key: &str, value: &str| matches!(template.get(key), Some(CanonicalJsonValue::String(v)) if v == value);
        if !is("type", "m.room.member") || !is("state_key", user.as_str()) || !is("sender", user.as_str()) {
            return Err(ServiceError::RemoteFailed(format!(
                "{server} sent a template that is not our {membership}"
            )));
        }
        let mut merged = content;
        if membership == "join" {
            if let Some(CanonicalJsonValue::Object(theirs)) = template.get("content") {
                if let Some(authoriser) = theirs.get("join_authorised_via_users_server") {
                    merged.insert("join_authorised_via_users_server".to_owned(), authoriser.clone());
                }
            }
        }
        template.insert("content".to_owned(), CanonicalJsonValue::Object(merged));
        template.insert("origin".to_owned(), self.server_name.as_str().into());
        template.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(ruma::MilliSecondsSinceUnixEpoch::now().0.into()),
        );
        let (event_id, event) = sign_pdu(template, &rules, &self.server_name, &s.server_keys)?;
        let pdu = serde_json::value::to_raw_value(&event).map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok((event_id, event, pdu))
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
        let (event_id, join, pdu) = self.sign_template(s, server, user, &version, &made.event, content)?;
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
        let mut events = Vec::with_capacity(answer.auth_chain.len() + answer.state.len());
        let mut state: Vec<OwnedEventId> = Vec::with_capacity(answer.state.len());
        for (i, raw) in answer.auth_chain.iter().chain(&answer.state).enumerate() {
            match self.verify_pdu(&version, raw).await {
                Ok((id, object)) => {
                    // The state is the last `answer.state.len()` of what was sent.
                    if i >= answer.auth_chain.len() {
                        state.push(id.clone());
                    }
                    events.push((id, object));
                }
                // An event whose signatures cannot be checked (its server is
                // gone, say) is left out, as Synapse does: the rest of the
                // room stands. The join fails only if what it needs is gone.
                Err(e @ (ServiceError::Forbidden(_) | ServiceError::BadJson(_) | ServiceError::TooLarge(_))) => {
                    tracing::info!(%room_id, %server, error = %e, "a state event of the join left out")
                }
                Err(e) => return Err(e),
            }
        }
        let (room, rules) = (room_id.to_owned(), rules_of(&version)?);
        let rejected = self
            .work
            .run_on(s, move |s| s.timeline.store_outliers(&room, &rules, events))
            .await?;
        // What the auth rules refuse is no part of the room's state.
        state.retain(|id| !rejected.contains(id));
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

    async fn knock_via(
        &self,
        s: &Arc<Services>,
        user: &UserId,
        room_id: &RoomId,
        server: &OwnedServerName,
        content: CanonicalJsonObject,
    ) -> ServiceResult<()> {
        let mut request = prepare_knock_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        request.ver = SUPPORTED_ROOM_VERSIONS.to_vec();
        let made = self.client.send(server, request).await?;
        let version = made.room_version;
        let (event_id, knock, pdu) = self.sign_template(s, server, user, &version, &made.event, content)?;
        let request = create_knock_event::v1::Request::new(room_id.to_owned(), event_id, pdu);
        let answer = self.client.send(server, request).await?;
        // The user's own member event in that state is the knock itself.
        let knock_json = serde_json::to_value(&knock).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let mut state: Vec<String> = stripped_entries(&answer.knock_room_state)
            .into_iter()
            .filter(|json| {
                let entry: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
                !(entry["type"] == "m.room.member" && entry["state_key"] == user.as_str())
            })
            .collect();
        state.extend(stripped(&knock_json));
        let record = crate::database::rooms::RemoteInviteRecord {
            room_version: version.to_string(),
            event: knock_json.to_string(),
            stripped_state: state,
        };
        let (user, room) = (user.to_owned(), room_id.to_owned());
        s.run(move |s| s.timeline.store_remote_membership(&user, &room, "knock", &record))
            .await?;
        tracing::info!(%room_id, %server, "knocked on a room of another server");
        Ok(())
    }

    async fn leave_via(
        &self,
        s: &Arc<Services>,
        user: &UserId,
        room_id: &RoomId,
        server: &OwnedServerName,
        content: CanonicalJsonObject,
    ) -> ServiceResult<()> {
        let request = prepare_leave_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        let made = self.client.send(server, request).await?;
        let version = made.room_version.unwrap_or(RoomVersionId::V1);
        let (event_id, _, pdu) = self.sign_template(s, server, user, &version, &made.event, content)?;
        let request = create_leave_event::v2::Request::new(room_id.to_owned(), event_id, pdu);
        self.client.send(server, request).await?;
        Ok(())
    }
}

/// The servers an invite or knock record names: the invite's sender's,
/// and those of the senders of the room's state it carries.
fn record_servers(record: &crate::database::rooms::RemoteInviteRecord) -> Vec<OwnedServerName> {
    std::iter::once(&record.event)
        .chain(&record.stripped_state)
        .filter_map(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .filter_map(|event| event["sender"].as_str().and_then(|u| OwnedUserId::try_from(u).ok()))
        .map(|sender| sender.server_name().to_owned())
        .collect()
}

/// Stripped state another server sent (invite or knock), each entry as
/// `{type, state_key, sender, content}` JSON.
fn stripped_entries(entries: &[RawStrippedState]) -> Vec<String> {
    let mut state = Vec::new();
    for entry in entries {
        #[allow(deprecated)]
        let json = match entry {
            RawStrippedState::Stripped(raw) => raw.json().get().to_owned(),
            RawStrippedState::Pdu(raw) => raw.get().to_owned(),
            _ => continue,
        };
        if let Some(stripped) = serde_json::from_str(&json).ok().as_ref().and_then(stripped) {
            state.push(stripped);
        }
    }
    state
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
        let rules = rules_of(version)?;
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
        // Our signature, as the spec asks of the invited server: of the
        // event's redacted form, as every event signature is.
        s.server_keys.hash_and_sign_event(&mut object, &rules.redaction)?;

        let mut state = stripped_entries(invite_room_state);
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
        s.run(move |s| s.timeline.store_remote_membership(&invitee, &room, "invite", &record))
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
            origin_server_ts: None,
        };
        let (room, sender_owned) = (room_id.to_owned(), sender.to_owned());
        let (event_id, event, version, state) = s
            .run(move |s| {
                let (event_id, event, version) = s.timeline.build_for_signing(s, &room, &sender_owned, spec)?;
                let state = super::resident::stripped_state_pdus(s, &room, &sender_owned)?;
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
