//! Synapse's room admin API: `v1/rooms` (list, details, members) and
//! `v2/rooms/{room_id}` deletion with its status.

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use ruma::{OwnedRoomId, RoomId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{admin, backwards_param, count_param, json_body_or_empty, ok, path_param, query_params};
use crate::api::{ApiError, Router};
use crate::service::room_admin::{DeleteRoom, Deletion, RoomOrder, RoomQuery, RoomView};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add_raw(Method::GET, &["/_synapse/admin/v1/rooms"], list_rooms);
    router.add_raw(Method::GET, &["/_synapse/admin/v1/rooms/{room_id}"], room);
    router.add_raw(Method::GET, &["/_synapse/admin/v1/rooms/{room_id}/members"], members);
    router.add_raw(Method::DELETE, &["/_synapse/admin/v2/rooms/{room_id}"], delete_room);
    router.add_raw(
        Method::GET,
        &["/_synapse/admin/v2/rooms/delete_status/{delete_id}"],
        delete_status,
    );
    router.add_raw(
        Method::GET,
        &["/_synapse/admin/v2/rooms/{room_id}/delete_status"],
        room_delete_status,
    );
}

/// The `{room_id}` of the path (400 `M_INVALID_PARAM` if it is none).
fn path_room(req: &HttpRequest) -> Result<OwnedRoomId, ApiError> {
    let raw = path_param(req, "room_id")?;
    RoomId::parse(&raw).map_err(|_| ApiError::InvalidParam(format!("{raw} is not a legal room ID")))
}

/// A room in the fields of Synapse's listing; `detailed` adds those only
/// the single-room answer has.
fn room_json(room: &RoomView, detailed: bool) -> Value {
    let mut body = json!({
        "room_id": room.room_id,
        "name": room.name,
        "canonical_alias": room.canonical_alias,
        "joined_members": room.joined_members,
        "joined_local_members": room.joined_local_members,
        "version": room.version,
        "creator": room.creator,
        "encryption": room.encryption,
        "federatable": room.federatable,
        "public": room.public,
        "join_rules": room.join_rules,
        "guest_access": room.guest_access,
        "history_visibility": room.history_visibility,
        "state_events": room.state_events,
        "room_type": room.room_type,
    });
    if detailed {
        body["topic"] = json!(room.topic);
        body["avatar"] = json!(room.avatar);
        body["joined_local_devices"] = json!(room.joined_local_devices);
        body["forgotten"] = json!(false);
    }
    body
}

/// `GET /_synapse/admin/v1/rooms`.
async fn list_rooms(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let params = query_params(&req);
    let order_by = match params.get("order_by") {
        None => RoomOrder::Name,
        Some(value) => {
            RoomOrder::parse(value).ok_or_else(|| ApiError::InvalidParam("Unknown value for order_by".to_owned()))?
        }
    };
    let query = RoomQuery {
        from: count_param(&params, "from")?.unwrap_or(0),
        limit: count_param(&params, "limit")?.unwrap_or(100),
        order_by,
        backwards: backwards_param(&params)?,
        search_term: params.get("search_term").cloned().filter(|t| !t.is_empty()),
    };
    let page = services.run(move |s| s.room_admin.list_rooms(s, &query)).await?;
    let mut body = json!({
        "rooms": page.rooms.iter().map(|r| room_json(r, false)).collect::<Vec<_>>(),
        "offset": page.offset,
        "total_rooms": page.total_rooms,
    });
    if let Some(next) = page.next_batch {
        body["next_batch"] = json!(next);
    }
    if let Some(prev) = page.prev_batch {
        body["prev_batch"] = json!(prev);
    }
    ok(body)
}

/// `GET /_synapse/admin/v1/rooms/{room_id}`.
async fn room(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let room_id = path_room(&req)?;
    let room = services.run(move |s| s.room_admin.room(s, &room_id)).await?;
    ok(room_json(&room, true))
}

/// `GET /_synapse/admin/v1/rooms/{room_id}/members`.
async fn members(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let room_id = path_room(&req)?;
    let members = services.run(move |s| s.room_admin.members(s, &room_id)).await?;
    ok(json!({"total": members.len(), "members": members}))
}

#[derive(Deserialize)]
struct DeleteRoomBody {
    new_room_user_id: Option<String>,
    #[serde(default)]
    block: bool,
    #[serde(default = "yes")]
    purge: bool,
    // `force_purge` is accepted and ignored: every local user has left
    // before the purge, so there is nobody it would force out.
}

fn yes() -> bool {
    true
}

/// `DELETE /_synapse/admin/v2/rooms/{room_id}`: done before it answers,
/// so its status is already `complete`.
async fn delete_room(
    services: Arc<Services>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let by = admin(&services, &req).await?;
    let room_id = path_room(&req)?;
    let body: DeleteRoomBody = json_body_or_empty(&services, &req, payload).await?;
    if body.new_room_user_id.is_some() {
        // Moving the members to a new room is not done here.
        return Err(ApiError::InvalidParam("new_room_user_id is not supported".to_owned()));
    }
    let request = DeleteRoom {
        block: body.block,
        purge: body.purge,
    };
    let deletion = services
        .run(move |s| s.room_admin.delete_room(s, &by, &room_id, request))
        .await?;
    ok(json!({"delete_id": deletion.delete_id}))
}

/// Synapse's status of a deletion, always `complete` here.
fn deletion_json(deletion: &Deletion) -> Value {
    json!({
        "delete_id": deletion.delete_id,
        "status": "complete",
        "shutdown_room": {
            "kicked_users": deletion.kicked_users,
            "failed_to_kick_users": deletion.failed_to_kick_users,
            "local_aliases": deletion.local_aliases,
            "new_room_id": null,
        },
    })
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{delete_id}`.
async fn delete_status(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let delete_id = path_param(&req, "delete_id")?;
    let deletion = services.room_admin.deletion(&delete_id)?;
    let mut body = deletion_json(&deletion);
    if let Some(body) = body.as_object_mut() {
        // This answer names the deletion in the path: no ID in the body.
        body.remove("delete_id");
    }
    ok(body)
}

/// `GET /_synapse/admin/v2/rooms/{room_id}/delete_status`.
async fn room_delete_status(
    services: Arc<Services>,
    req: HttpRequest,
    _: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let room_id = path_room(&req)?;
    let deletions = services.room_admin.deletions_of(&room_id)?;
    ok(json!({"results": deletions.iter().map(deletion_json).collect::<Vec<_>>()}))
}
