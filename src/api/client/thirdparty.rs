//! Third-party lookups (`/thirdparty/...`): what the bridges of this
//! server know of the networks they connect, asked of them (see
//! `service::appservices::thirdparty`). As Synapse: a protocol nobody
//! describes is 404 `M_NOT_FOUND`; a lookup nobody answers is an empty
//! list, whether no bridge speaks the protocol or the bridge is down.

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::api::client::thirdparty::{
    get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols, get_user_for_protocol,
    get_user_for_user_id,
};

use crate::api::{ApiError, Router, Ruma};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(protocols);
    router.add(protocol);
    router.add(locations);
    router.add(users);
    router.add(locations_of_alias);
    router.add(users_of_user);
}

async fn protocols(
    services: Arc<Services>,
    _: Ruma<get_protocols::v3::Request>,
) -> Result<get_protocols::v3::Response, ApiError> {
    Ok(get_protocols::v3::Response::new(
        services.appservices.protocols(None).await,
    ))
}

async fn protocol(
    services: Arc<Services>,
    req: Ruma<get_protocol::v3::Request>,
) -> Result<get_protocol::v3::Response, ApiError> {
    let name = req.body.protocol;
    services
        .appservices
        .protocols(Some(&name))
        .await
        .remove(&name)
        .map(get_protocol::v3::Response::new)
        .ok_or_else(|| ServiceError::NotFound(format!("no bridge here speaks {name}")).into())
}

async fn locations(
    services: Arc<Services>,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> Result<get_location_for_protocol::v3::Response, ApiError> {
    let fields = network_fields(req.body.fields, req.appservice.is_some());
    let found = services
        .appservices
        .thirdparty_locations(&req.body.protocol, &fields)
        .await;
    Ok(get_location_for_protocol::v3::Response::new(found))
}

async fn users(
    services: Arc<Services>,
    req: Ruma<get_user_for_protocol::v3::Request>,
) -> Result<get_user_for_protocol::v3::Response, ApiError> {
    let fields = network_fields(req.body.fields, req.appservice.is_some());
    let found = services.appservices.thirdparty_users(&req.body.protocol, &fields).await;
    Ok(get_user_for_protocol::v3::Response::new(found))
}

async fn locations_of_alias(
    services: Arc<Services>,
    req: Ruma<get_location_for_room_alias::v3::Request>,
) -> Result<get_location_for_room_alias::v3::Response, ApiError> {
    let found = services.appservices.thirdparty_locations_of(&req.body.alias).await;
    Ok(get_location_for_room_alias::v3::Response::new(found))
}

async fn users_of_user(
    services: Arc<Services>,
    req: Ruma<get_user_for_user_id::v3::Request>,
) -> Result<get_user_for_user_id::v3::Response, ApiError> {
    let found = services.appservices.thirdparty_users_of(&req.body.userid).await;
    Ok(get_user_for_user_id::v3::Response::new(found))
}

/// The query's fields that describe what to look up on the network: not
/// the access token, nor an appservice's identity assertion.
fn network_fields(mut fields: BTreeMap<String, String>, by_appservice: bool) -> BTreeMap<String, String> {
    fields.remove("access_token");
    if by_appservice {
        for asserted in ["user_id", "device_id", "org.matrix.msc3202.device_id"] {
            fields.remove(asserted);
        }
    }
    fields
}
