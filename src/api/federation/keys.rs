//! `GET /_matrix/key/v2/server` (our signing keys) and
//! `GET /_matrix/federation/v1/version`.

use std::sync::Arc;

use ruma::api::federation::discovery::{get_server_keys, get_server_version};
use ruma::serde::Raw;

use super::federation_enabled;
use crate::api::{ApiError, Router, Ruma};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(server_keys);
    router.add(server_version);
}

async fn server_keys(
    services: Arc<Services>,
    _req: Ruma<get_server_keys::v2::Request>,
) -> Result<get_server_keys::v2::Response, ApiError> {
    federation_enabled(&services)?;
    let document = services.server_keys.key_document()?;
    let raw =
        serde_json::value::to_raw_value(&document).map_err(|e| ApiError::Internal(format!("key document: {e}")))?;
    Ok(get_server_keys::v2::Response::new(Raw::from_json(raw)))
}

async fn server_version(
    services: Arc<Services>,
    _req: Ruma<get_server_version::v1::Request>,
) -> Result<get_server_version::v1::Response, ApiError> {
    federation_enabled(&services)?;
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Conduit".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}
