//! Rooms over federation: transactions in, joins and leaves of other
//! servers' users, and the reads they make of our rooms (events, state,
//! auth chains, backfill, missing events). Every read checks the room's
//! history visibility for the asking server.

use std::sync::Arc;

use ruma::api::federation::authorization::get_event_authorization;
use ruma::api::federation::backfill::get_backfill;
use ruma::api::federation::event::{
    get_event, get_event_by_timestamp, get_missing_events, get_room_state, get_room_state_ids,
};
use ruma::api::federation::membership::{
    create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event, prepare_knock_event,
    prepare_leave_event,
};
use ruma::api::federation::transactions::send_transaction_message;
use ruma::state_res::Event;
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, ServerName,
    UserId,
};
use serde_json::value::RawValue;

use crate::api::{ApiError, Router, Ruma};
use crate::service::timeline::{room_id_of_v12_create, MissingEvents};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(send_transaction);
    router.add(make_join);
    router.add(send_join);
    router.add(make_leave);
    router.add(send_leave);
    router.add(make_knock);
    router.add(send_knock);
    router.add(event);
    router.add(state_ids);
    router.add(state);
    router.add(event_auth);
    router.add(backfill);
    router.add(missing_events);
    router.add(timestamp_to_event);
    router.add(invite);
}

async fn invite(
    services: Arc<Services>,
    req: Ruma<create_invite::v2::Request>,
) -> Result<create_invite::v2::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    let signed = services.federation.receive_invite(&services, &origin, &body).await?;
    let event = serde_json::value::to_raw_value(&signed).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(create_invite::v2::Response::new(event))
}

async fn send_transaction(
    services: Arc<Services>,
    req: Ruma<send_transaction_message::v1::Request>,
) -> Result<send_transaction_message::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    if req.body.origin != origin {
        return Err(ApiError::Forbidden(
            "the transaction's origin is not the server that signed it".to_owned(),
        ));
    }
    if req.body.pdus.len() > 50 || req.body.edus.len() > 100 {
        return Err(ApiError::BadJson(
            "a transaction has at most 50 PDUs and 100 EDUs".to_owned(),
        ));
    }
    let pdus = services
        .federation
        .receive_transaction(&services, &origin, &req.body.pdus, &req.body.edus)
        .await;
    Ok(send_transaction_message::v1::Response::new(pdus))
}

/// The room, known here, and the origin in it (or allowed to see it).
async fn readable_room(
    services: &Arc<Services>,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: Option<&EventId>,
) -> Result<(), ApiError> {
    let (origin, room_id, event_id) = (origin.to_owned(), room_id.to_owned(), event_id.map(ToOwned::to_owned));
    services
        .run(move |s| {
            s.timeline.room_or_404(&room_id)?;
            if !s.timeline.server_allowed(s, &room_id, &origin)? {
                return Err(ServiceError::Forbidden(format!(
                    "{origin} is denied by the room's server ACL"
                )));
            }
            let allowed = match &event_id {
                Some(event_id) => {
                    let in_room = s.timeline.pdu(event_id)?.is_some_and(|pdu| pdu.belongs_to(&room_id));
                    if !in_room {
                        return Err(ServiceError::NotFound("this event is not in this room".to_owned()));
                    }
                    s.timeline.server_can_see(s, &origin, &room_id, event_id)?
                }
                None => s.timeline.server_in_room(&origin, &room_id)?,
            };
            if allowed {
                Ok(())
            } else {
                Err(ServiceError::Forbidden(format!(
                    "{origin} may not see this in {room_id}"
                )))
            }
        })
        .await
        .map_err(Into::into)
}

/// Refuses a server the room's ACL denies.
fn acl_allows(s: &Services, room_id: &RoomId, server: &ServerName) -> Result<(), ServiceError> {
    if s.timeline.server_allowed(s, room_id, server)? {
        Ok(())
    } else {
        Err(ServiceError::Forbidden(format!(
            "{server} is denied by the room's server ACL"
        )))
    }
}

/// The PDUs of `ids` in their federation form (those stored).
fn pdus(s: &Services, ids: &[OwnedEventId]) -> Result<Vec<Box<RawValue>>, ServiceError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(pdu) = s.timeline.federation_pdu_raw(id)? {
            out.push(pdu);
        }
    }
    Ok(out)
}

async fn event(
    services: Arc<Services>,
    req: Ruma<get_event::v1::Request>,
) -> Result<get_event::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let event_id = req.body.event_id;
    let room_id = {
        let id = event_id.clone();
        services
            .run(move |s| {
                let pdu = s
                    .timeline
                    .pdu(&id)?
                    .filter(|pdu| !pdu.rejected)
                    .ok_or_else(|| ServiceError::NotFound("this event is not known here".to_owned()))?;
                match pdu.room_id() {
                    Some(room) => Ok(room.to_owned()),
                    None => room_id_of_v12_create(&id),
                }
            })
            .await?
    };
    readable_room(&services, &origin, &room_id, Some(&event_id)).await?;
    let pdu = services
        .run(move |s| s.timeline.federation_pdu_raw(&event_id))
        .await?
        .ok_or_else(|| ServiceError::NotFound("this event is not known here".to_owned()))?;
    Ok(get_event::v1::Response::new(
        services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdu,
    ))
}

async fn state_ids(
    services: Arc<Services>,
    req: Ruma<get_room_state_ids::v1::Request>,
) -> Result<get_room_state_ids::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    readable_room(&services, &origin, &body.room_id, Some(&body.event_id)).await?;
    let at = services.run(move |s| s.timeline.state_at(s, &body.event_id)).await?;
    Ok(get_room_state_ids::v1::Response::new(at.auth_chain, at.state))
}

async fn state(
    services: Arc<Services>,
    req: Ruma<get_room_state::v1::Request>,
) -> Result<get_room_state::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    readable_room(&services, &origin, &body.room_id, Some(&body.event_id)).await?;
    let (auth_chain, state) = services
        .run(move |s| {
            let at = s.timeline.state_at(s, &body.event_id)?;
            Ok((pdus(s, &at.auth_chain)?, pdus(s, &at.state)?))
        })
        .await?;
    Ok(get_room_state::v1::Response::new(auth_chain, state))
}

async fn event_auth(
    services: Arc<Services>,
    req: Ruma<get_event_authorization::v1::Request>,
) -> Result<get_event_authorization::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    readable_room(&services, &origin, &body.room_id, Some(&body.event_id)).await?;
    let chain = services
        .run(move |s| {
            let chain = s.timeline.auth_chain(s, std::slice::from_ref(&body.event_id))?;
            pdus(s, &chain)
        })
        .await?;
    Ok(get_event_authorization::v1::Response::new(chain))
}

async fn backfill(
    services: Arc<Services>,
    req: Ruma<get_backfill::v1::Request>,
) -> Result<get_backfill::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    readable_room(&services, &origin, &body.room_id, None).await?;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    let events = services
        .run(move |s| {
            let ids = s.timeline.backfill(s, &origin, &body.room_id, &body.v, limit)?;
            pdus(s, &ids)
        })
        .await?;
    Ok(get_backfill::v1::Response::new(
        services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        events,
    ))
}

async fn missing_events(
    services: Arc<Services>,
    req: Ruma<get_missing_events::v1::Request>,
) -> Result<get_missing_events::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    readable_room(&services, &origin, &body.room_id, None).await?;
    let events = services
        .run(move |s| {
            let ids = s.timeline.missing_events(
                s,
                &origin,
                &body.room_id,
                &MissingEvents {
                    earliest: &body.earliest_events,
                    latest: &body.latest_events,
                    limit: usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX),
                    min_depth: body.min_depth.into(),
                },
            )?;
            pdus(s, &ids)
        })
        .await?;
    Ok(get_missing_events::v1::Response::new(events))
}

async fn timestamp_to_event(
    services: Arc<Services>,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    let ts: u64 = body.ts.get().into();
    let forward = body.dir == ruma::api::Direction::Forward;
    let (event_id, found_ts) = services
        .run(move |s| {
            s.timeline.room_or_404(&body.room_id)?;
            acl_allows(s, &body.room_id, &origin)?;
            s.timeline
                .event_at_time_for_server(s, &origin, &body.room_id, ts, forward)
        })
        .await?;
    Ok(get_event_by_timestamp::v1::Response::new(
        event_id,
        MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(found_ts)),
    ))
}

/// The user a membership request is about: one of the origin's.
fn origin_user<'a>(origin: &ServerName, user: &'a UserId) -> Result<&'a UserId, ApiError> {
    if user.server_name() == origin {
        Ok(user)
    } else {
        Err(ApiError::Forbidden(format!("{origin} may not act for {user}")))
    }
}

async fn make_join(
    services: Arc<Services>,
    req: Ruma<prepare_join_event::v1::Request>,
) -> Result<prepare_join_event::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    let (version, event) = template(&services, &origin, body.room_id, body.user_id, "join", Some(body.ver)).await?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(response)
}

async fn make_knock(
    services: Arc<Services>,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> Result<prepare_knock_event::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    let (version, event) = template(&services, &origin, body.room_id, body.user_id, "knock", Some(body.ver)).await?;
    Ok(prepare_knock_event::v1::Response::new(version, event))
}

async fn make_leave(
    services: Arc<Services>,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> Result<prepare_leave_event::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    let (version, event) = template(&services, &origin, body.room_id, body.user_id, "leave", None).await?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), event))
}

/// The template of a `make_*` answer, for one of the origin's users.
async fn template(
    services: &Arc<Services>,
    origin: &ServerName,
    room_id: OwnedRoomId,
    user: OwnedUserId,
    membership: &'static str,
    supported: Option<Vec<RoomVersionId>>,
) -> Result<(RoomVersionId, Box<RawValue>), ApiError> {
    origin_user(origin, &user)?;
    let (version, template) = services
        .run(move |s| {
            s.federation
                .membership_template_for(s, &room_id, &user, membership, supported.as_deref())
        })
        .await?;
    let event = serde_json::value::to_raw_value(&template).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((version, event))
}

async fn send_join(
    services: Arc<Services>,
    req: Ruma<create_join_event::v2::Request>,
) -> Result<create_join_event::v2::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    let countersigned = services
        .federation
        .accept_membership(&services, &origin, &body.room_id, &body.event_id, &body.pdu, "join")
        .await?;
    let (auth_chain, state, servers) = services
        .run(move |s| {
            let joined = s.timeline.is_joined(
                &body.room_id,
                &s.timeline
                    .pdu(&body.event_id)?
                    .map(|p| p.sender().to_owned())
                    .ok_or_else(|| ServiceError::Forbidden("the join was not accepted".to_owned()))?,
            )?;
            if !joined {
                return Err(ServiceError::Forbidden("the join was not accepted".to_owned()));
            }
            let at = s.timeline.state_at(s, &body.event_id)?;
            let servers: Vec<String> = s
                .timeline
                .servers_in_room(&body.room_id)?
                .into_iter()
                .map(|server| server.to_string())
                .collect();
            Ok((pdus(s, &at.auth_chain)?, pdus(s, &at.state)?, servers))
        })
        .await?;
    let mut room_state = create_join_event::v2::RoomState::new();
    room_state.state = state;
    room_state.auth_chain = auth_chain;
    room_state.servers_in_room = Some(servers);
    if let Some(event) = countersigned {
        room_state.event =
            Some(serde_json::value::to_raw_value(&event).map_err(|e| ApiError::Internal(e.to_string()))?);
    }
    Ok(create_join_event::v2::Response::new(room_state))
}

async fn send_leave(
    services: Arc<Services>,
    req: Ruma<create_leave_event::v2::Request>,
) -> Result<create_leave_event::v2::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    services
        .federation
        .accept_membership(&services, &origin, &body.room_id, &body.event_id, &body.pdu, "leave")
        .await?;
    Ok(create_leave_event::v2::Response::new())
}

async fn send_knock(
    services: Arc<Services>,
    req: Ruma<create_knock_event::v1::Request>,
) -> Result<create_knock_event::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    services
        .federation
        .accept_membership(&services, &origin, &body.room_id, &body.event_id, &body.pdu, "knock")
        .await?;
    let knocker = {
        let object: serde_json::Value =
            serde_json::from_str(body.pdu.get()).map_err(|e| ApiError::BadJson(e.to_string()))?;
        object["state_key"]
            .as_str()
            .and_then(|u| OwnedUserId::try_from(u).ok())
            .ok_or_else(|| ApiError::BadJson("the knock names no user".to_owned()))?
    };
    let room_id = body.room_id;
    let state = services
        .run(move |s| s.federation.knock_room_state(s, &room_id, &knocker))
        .await?;
    Ok(create_knock_event::v1::Response::new(state))
}
