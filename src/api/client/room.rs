//! Rooms: creation, single events, aliases and the room directory.

use std::sync::Arc;

use ruma::api::client::alias::{create_alias, delete_alias, get_alias};
use ruma::api::client::directory::{
    get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
};
use ruma::api::client::room::{aliases, create_room, get_room_event, get_summary, upgrade_room, Visibility};
use ruma::api::client::space::get_hierarchy;
use ruma::directory::{Filter, RoomNetwork};
use ruma::serde::Raw;
use ruma::{OwnedRoomAliasId, UInt};
use serde_json::{Map, Value as JsonValue};

use crate::api::directory::{directory_query, directory_response};
use crate::api::{ApiError, Router, Ruma};
use crate::service::rooms::{CreateRoom, HierarchyQuery, Preset};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(create_room);
    router.add(upgrade);
    router.add(hierarchy);
    router.add(summary);
    router.add(get_event);
    router.add(create_alias);
    router.add(delete_alias);
    router.add(get_alias);
    router.add(room_aliases);
    router.add(visibility);
    router.add(set_visibility);
    router.add(public_rooms);
    router.add(public_rooms_filtered);
}

/// A JSON object from a raw request field.
fn object<T>(raw: &Raw<T>, what: &str) -> Result<Map<String, JsonValue>, ApiError> {
    match serde_json::from_str(raw.json().get()) {
        Ok(JsonValue::Object(o)) => Ok(o),
        _ => Err(ApiError::BadJson(format!("{what} must be a JSON object"))),
    }
}

async fn create_room(
    services: Arc<Services>,
    req: Ruma<create_room::v3::Request>,
) -> Result<create_room::v3::Response, ApiError> {
    use create_room::v3::RoomPreset;
    let sender = req.user()?.to_owned();
    let body = req.body;
    let preset = match body.preset {
        None => None,
        Some(RoomPreset::PrivateChat) => Some(Preset::PrivateChat),
        Some(RoomPreset::PublicChat) => Some(Preset::PublicChat),
        Some(RoomPreset::TrustedPrivateChat) => Some(Preset::TrustedPrivateChat),
        Some(other) => return Err(ApiError::BadJson(format!("unknown preset {other}"))),
    };
    let mut initial_state = Vec::new();
    for event in &body.initial_state {
        let event = object(event, "an initial_state event")?;
        let event_type = event
            .get("type")
            .and_then(JsonValue::as_str)
            .ok_or_else(|| ApiError::BadJson("initial_state events need a type".to_owned()))?;
        let state_key = event.get("state_key").and_then(JsonValue::as_str).unwrap_or("");
        let content = event
            .get("content")
            .cloned()
            .unwrap_or_else(|| JsonValue::Object(Map::new()));
        initial_state.push((event_type.to_owned(), state_key.to_owned(), content));
    }
    let request = CreateRoom {
        preset,
        public: body.visibility == Visibility::Public,
        alias_localpart: body.room_alias_name,
        name: body.name,
        topic: body.topic,
        invite: body.invite,
        initial_state,
        power_level_override: body
            .power_level_content_override
            .as_ref()
            .map(|r| object(r, "power_level_content_override"))
            .transpose()?,
        creation_content: body
            .creation_content
            .as_ref()
            .map(|r| object(r, "creation_content"))
            .transpose()?,
        is_direct: body.is_direct,
        room_version: body.room_version,
    };
    let remote_invitees: Vec<ruma::OwnedUserId> = request
        .invite
        .iter()
        .filter(|u| u.server_name() != services.config.server_name)
        .cloned()
        .collect();
    let is_direct = request.is_direct;
    let creator = sender.clone();
    let room_id = services.run(move |s| s.rooms.create_room(s, &creator, request)).await?;
    // Invites of other servers' users need their server's signature.
    for invitee in remote_invitees {
        let (room, who) = (room_id.clone(), invitee.clone());
        let content = services
            .run(move |s| {
                let body = s.rooms.member_content(s, &who, "invite", None, is_direct)?;
                crate::service::timeline::to_object(body)
            })
            .await?;
        if let Err(e) = services
            .federation
            .invite_remote(&services, &room, &sender, &invitee, content)
            .await
        {
            // The room exists; the invite can be sent again.
            tracing::warn!(%room, %invitee, error = %e, "invite to another server failed");
        }
    }
    Ok(create_room::v3::Response::new(room_id))
}

async fn get_event(
    services: Arc<Services>,
    req: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device()?.to_owned();
    let body = req.body;
    let event = services
        .run(move |s| {
            s.timeline
                .visible_event(s, &user, &body.room_id, &body.event_id, &device)
        })
        .await?;
    Ok(get_room_event::v3::Response::new(Raw::from_json(event)))
}

async fn create_alias(
    services: Arc<Services>,
    req: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    services
        .run(move |s| s.rooms.set_alias(s, &user, &body.room_alias, &body.room_id))
        .await?;
    Ok(create_alias::v3::Response::new())
}

async fn delete_alias(
    services: Arc<Services>,
    req: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let alias = req.body.room_alias;
    services.run(move |s| s.rooms.delete_alias(s, &user, &alias)).await?;
    Ok(delete_alias::v3::Response::new())
}

async fn get_alias(
    services: Arc<Services>,
    req: Ruma<get_alias::v3::Request>,
) -> Result<get_alias::v3::Response, ApiError> {
    let alias = req.body.room_alias;
    let server = services.config.server_name.clone();
    if alias.server_name() != server && services.config.allow_federation {
        let (room_id, servers) = services.federation.resolve_alias(&alias).await?;
        return Ok(get_alias::v3::Response::new(room_id, servers));
    }
    super::appservice::ask_about_alias(&services, &alias).await?;
    let room_id = services.run(move |s| s.rooms.resolve_alias(s, &alias)).await?;
    Ok(get_alias::v3::Response::new(room_id, vec![server]))
}

async fn room_aliases(
    services: Arc<Services>,
    req: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let room_id = req.body.room_id;
    let list = services.run(move |s| s.rooms.room_aliases(s, &user, &room_id)).await?;
    let list = list
        .into_iter()
        .filter_map(|a| OwnedRoomAliasId::try_from(a).ok())
        .collect();
    Ok(aliases::v3::Response::new(list))
}

async fn visibility(
    services: Arc<Services>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response, ApiError> {
    let room_id = req.body.room_id;
    let public = services
        .run(move |s| {
            s.timeline.room_or_404(&room_id)?;
            s.rooms.is_public(&room_id)
        })
        .await?;
    Ok(get_room_visibility::v3::Response::new(if public {
        Visibility::Public
    } else {
        Visibility::Private
    }))
}

async fn set_visibility(
    services: Arc<Services>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let public = match body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        other => return Err(ApiError::BadJson(format!("unknown visibility {other}"))),
    };
    services
        .run(move |s| s.rooms.set_public(s, &user, &body.room_id, public))
        .await?;
    Ok(set_room_visibility::v3::Response::new())
}

async fn public_rooms(
    services: Arc<Services>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response, ApiError> {
    let body = req.body;
    let query = directory_query(body.limit, body.since, Filter::default(), RoomNetwork::Matrix);
    let page = services.federation.public_rooms(&services, body.server, query).await?;
    Ok(directory_response!(
        get_public_rooms::v3::Response::new(Vec::new()),
        page
    ))
}

async fn public_rooms_filtered(
    services: Arc<Services>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response, ApiError> {
    let body = req.body;
    let query = directory_query(body.limit, body.since, body.filter, body.room_network);
    let page = services.federation.public_rooms(&services, body.server, query).await?;
    Ok(directory_response!(
        get_public_rooms_filtered::v3::Response::new(),
        page
    ))
}

async fn upgrade(
    services: Arc<Services>,
    req: Ruma<upgrade_room::v3::Request>,
) -> Result<upgrade_room::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let replacement = services
        .run(move |s| {
            s.rooms
                .upgrade(s, &user, &body.room_id, &body.new_version, &body.additional_creators)
        })
        .await?;
    Ok(upgrade_room::v3::Response::new(replacement))
}

async fn hierarchy(
    services: Arc<Services>,
    req: Ruma<get_hierarchy::v1::Request>,
) -> Result<get_hierarchy::v1::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let to_usize = |n: UInt| usize::try_from(u64::from(n)).unwrap_or(usize::MAX);
    let query = HierarchyQuery {
        suggested_only: body.suggested_only,
        max_depth: body.max_depth.map(to_usize),
        limit: body.limit.map(to_usize),
        from: body.from,
    };
    let page = services
        .federation
        .hierarchy(&services, user, body.room_id, query)
        .await?;
    let mut response = get_hierarchy::v1::Response::new();
    response.next_batch = page.next_batch;
    response.rooms = page
        .rooms
        .into_iter()
        .map(|room| serde_json::from_value(room).map_err(|e| ApiError::Internal(format!("hierarchy entry: {e}"))))
        .collect::<Result<_, _>>()?;
    Ok(response)
}

async fn summary(
    services: Arc<Services>,
    req: Ruma<get_summary::v1::Request>,
) -> Result<get_summary::v1::Response, ApiError> {
    use ruma::events::room::member::MembershipState;
    let viewer = req.sender_user.clone();
    let room = req.body.room_id_or_alias.to_string();
    let (entry, membership) = services
        .run(move |s| s.rooms.summary(s, viewer.as_deref(), &room))
        .await?;
    let summary = serde_json::from_value(entry).map_err(|e| ApiError::Internal(format!("room summary: {e}")))?;
    let mut response = get_summary::v1::Response::new(summary);
    response.membership = membership.map(|m| MembershipState::from(m.as_str()));
    Ok(response)
}
