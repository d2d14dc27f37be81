//! Our users joining rooms that live on other servers: `make_join` for a
//! template, our signature, `send_join` (v2) for the room's state, every
//! event of it checked, and the join persisted on that state.

use std::sync::Arc;

use ruma::api::federation::membership::{create_join_event, prepare_join_event};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, UserId};

use super::receive::rules_of;
use super::FederationService;
use crate::service::pdu::sign_pdu;
use crate::service::timeline::Received;
use crate::service::{ServiceError, ServiceResult, Services};

/// The room versions this server can join.
const JOINABLE_VERSIONS: [RoomVersionId; 12] = [
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

impl FederationService {
    /// Joins `user` (of ours) to `room_id`, asking each of `via` in turn.
    /// `content` is the membership content (display name, avatar, the
    /// client's extra keys).
    pub async fn join_remote(
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
        request.ver = JOINABLE_VERSIONS.to_vec();
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
