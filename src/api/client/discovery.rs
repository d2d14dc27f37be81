//! `/versions`, `/.well-known/matrix/*`, `/capabilities`, and the health check.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use ruma::api::client::discovery::get_capabilities::v3::{Capabilities, RoomVersionStability};
use ruma::api::client::discovery::{discover_homeserver, get_capabilities, get_supported_versions};
use ruma::api::federation::discovery::discover_homeserver as discover_server;
use ruma::RoomVersionId;

use crate::api::router::{Hooks, JsonObject};
use crate::api::{ApiError, Router, Ruma};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(versions);
    router.add(well_known_client);
    router.add(well_known_server);
    router.add_with(Hooks::response(list_every_capability), capabilities);
    router.add_raw(Method::GET, &["/_conduit/health"], health);
}

/// `GET /_conduit/health`, for load balancers and service managers: 200
/// once the server serves and its storage answers, 503 when it does not.
async fn health(services: Arc<Services>, _: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    match services.run(|s| s.check_storage()).await {
        Ok(()) => Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))),
        Err(e) => {
            tracing::error!(error = %e, "health check: storage does not answer");
            Ok(HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "storage unavailable"})))
        }
    }
}

/// The spec versions whose required client-server endpoints this build
/// serves. v1.16 waits for custom profile fields and `use_state_after`,
/// v1.18 for account moderation and invite blocking, v1.19 for
/// `/mutual_rooms`.
const SUPPORTED_VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12", "v1.13", "v1.14", "v1.15",
];

/// MSCs clients look for before they use what came of them (most are in a
/// version above as well; clients written before that version check these).
const UNSTABLE_FEATURES: &[&str] = &[
    // Cross-signing keys and signatures.
    "org.matrix.e2e_cross_signing",
    // `GET /rooms/{roomId}/aliases`.
    "org.matrix.msc2432",
    // Private read receipts.
    "org.matrix.msc2285.stable",
    // Threads, their bundled summaries and `/threads`.
    "org.matrix.msc3440.stable",
    // Threaded read receipts and notification counts per thread.
    "org.matrix.msc3771",
    "org.matrix.msc3773",
    // Room types in the public room directory's filter.
    "org.matrix.msc3827.stable",
    // `/timestamp_to_event`.
    "org.matrix.msc3030",
    // Authenticated media.
    "org.matrix.msc3916.stable",
    // Dehydrated devices.
    "org.matrix.msc3814",
    // `/room_summary`.
    "org.matrix.msc3266",
    // `recurse` in `/relations`.
    "org.matrix.msc3981",
    // Redactions sent with `PUT /send/m.room.redaction`.
    "com.beeper.msc4169",
    // Simplified sliding sync (the room list of Element X).
    "org.matrix.simplified_msc3575",
];

async fn versions(
    _: Arc<Services>,
    _: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response, ApiError> {
    let versions = SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect();
    let mut response = get_supported_versions::Response::new(versions);
    response.unstable_features = UNSTABLE_FEATURES.iter().map(|f| ((*f).to_owned(), true)).collect();
    Ok(response)
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

/// ruma leaves out a capability that is at its default; clients and the
/// spec's examples expect each one listed with its state, so the omitted
/// ones are written back with ruma's defaults (the states they stand for).
fn list_every_capability(response: &mut JsonObject) {
    let Some(serde_json::Value::Object(capabilities)) = response.get_mut("capabilities") else {
        return;
    };
    for (name, enabled) in [
        ("m.change_password", true),
        ("m.set_displayname", true),
        ("m.set_avatar_url", true),
        ("m.3pid_changes", true),
        ("m.get_login_token", false),
    ] {
        capabilities
            .entry(name)
            .or_insert_with(|| serde_json::json!({ "enabled": enabled }));
    }
}

fn stable_room_versions() -> BTreeMap<RoomVersionId, RoomVersionStability> {
    use RoomVersionId::*;
    [V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12]
        .into_iter()
        .map(|v| (v, RoomVersionStability::Stable))
        .collect()
}
