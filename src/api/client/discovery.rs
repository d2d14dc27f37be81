//! `/versions`, `/.well-known/matrix/*`, `/capabilities`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::api::client::discovery::get_capabilities::v3::{Capabilities, RoomVersionStability};
use ruma::api::client::discovery::{discover_homeserver, get_capabilities, get_supported_versions};
use ruma::api::federation::discovery::discover_homeserver as discover_server;
use ruma::RoomVersionId;

use crate::api::{ApiError, Router, Ruma};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(versions);
    router.add(well_known_client);
    router.add(well_known_server);
    router.add(capabilities);
}

/// The spec versions whose endpoints this build serves.
const SUPPORTED_VERSIONS: &[&str] = &["r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5"];

async fn versions(
    _: Arc<Services>,
    _: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response, ApiError> {
    let versions = SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect();
    Ok(get_supported_versions::Response::new(versions))
}

async fn well_known_client(
    services: Arc<Services>,
    _: Ruma<discover_homeserver::Request>,
) -> Result<discover_homeserver::Response, ApiError> {
    let base_url = services.config.well_known.client.clone().ok_or_else(not_configured)?;
    Ok(discover_homeserver::Response::new(
        discover_homeserver::HomeserverInfo::new(base_url),
    ))
}

async fn well_known_server(
    services: Arc<Services>,
    _: Ruma<discover_server::Request>,
) -> Result<discover_server::Response, ApiError> {
    let server = services.config.well_known.server.clone().ok_or_else(not_configured)?;
    Ok(discover_server::Response::new(server))
}

fn not_configured() -> ApiError {
    ServiceError::NotFound("not configured on this server".to_owned()).into()
}

async fn capabilities(
    services: Arc<Services>,
    _: Ruma<get_capabilities::v3::Request>,
) -> Result<get_capabilities::v3::Response, ApiError> {
    let mut capabilities = Capabilities::new();
    capabilities.change_password.enabled = true;
    // Clients before Matrix 1.16 read these rather than `m.profile_fields`.
    #[allow(deprecated)]
    {
        capabilities.set_displayname.enabled = true;
        capabilities.set_avatar_url.enabled = true;
    }
    capabilities.thirdparty_id_changes.enabled = false;
    capabilities.get_login_token.enabled = false;
    capabilities.room_versions.default = services.config.default_room_version.clone();
    capabilities.room_versions.available = stable_room_versions();
    Ok(get_capabilities::v3::Response::new(capabilities))
}

fn stable_room_versions() -> BTreeMap<RoomVersionId, RoomVersionStability> {
    use RoomVersionId::*;
    [V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12]
        .into_iter()
        .map(|v| (v, RoomVersionStability::Stable))
        .collect()
}
