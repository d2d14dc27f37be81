//! What other servers read of this one's rooms for their users: the room
//! directory (`publicRooms`) and space hierarchies (`hierarchy`).

use std::sync::Arc;

use ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};
use ruma::api::federation::space::get_hierarchy;
use ruma::directory::Filter;

use crate::api::directory::{directory_query, directory_response};
use crate::api::{ApiError, Router, Ruma};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(public_rooms);
    router.add(public_rooms_filtered);
    router.add(hierarchy);
}

async fn public_rooms(
    services: Arc<Services>,
    req: Ruma<get_public_rooms::v1::Request>,
) -> Result<get_public_rooms::v1::Response, ApiError> {
    let body = req.body;
    let query = directory_query(body.limit, body.since, Filter::default(), body.room_network);
    let page = services.run(move |s| s.rooms.directory_page(s, &query)).await?;
    Ok(directory_response!(get_public_rooms::v1::Response::new(), page))
}

async fn public_rooms_filtered(
    services: Arc<Services>,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response, ApiError> {
    let body = req.body;
    let query = directory_query(body.limit, body.since, body.filter, body.room_network);
    let page = services.run(move |s| s.rooms.directory_page(s, &query)).await?;
    Ok(directory_response!(
        get_public_rooms_filtered::v1::Response::new(),
        page
    ))
}

async fn hierarchy(
    services: Arc<Services>,
    req: Ruma<get_hierarchy::v1::Request>,
) -> Result<get_hierarchy::v1::Response, ApiError> {
    let origin = req.origin()?.to_owned();
    let body = req.body;
    let found = services
        .run(move |s| {
            s.rooms
                .hierarchy_for_server(s, &origin, &body.room_id, body.suggested_only)
        })
        .await?;
    let mut response = get_hierarchy::v1::Response::new(summary("room", found.room)?);
    response.children = found
        .children
        .into_iter()
        .map(|child| summary("child", child))
        .collect::<Result<_, _>>()?;
    response.inaccessible_children = found.inaccessible_children;
    Ok(response)
}

/// A summary the service wrote, as the ruma type.
fn summary<T: serde::de::DeserializeOwned>(what: &str, value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::Internal(format!("hierarchy {what}: {e}")))
}
