//! `GET /_matrix/key/v2/server` (our signing keys), the notary queries
//! `POST /_matrix/key/v2/query` and `GET /_matrix/key/v2/query/{server}`
//! (other servers' keys, countersigned), and
//! `GET /_matrix/federation/v1/version`.

use std::sync::Arc;

use ruma::api::federation::discovery::{
    get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version,
};
use ruma::serde::Raw;

use super::federation_enabled;
use crate::api::{ApiError, Router, Ruma};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(server_keys);
    router.add(server_version);
    router.add(query_keys);
    router.add(query_keys_of);
}

/// Servers a notary query may name at once.
const MAX_NOTARY_SERVERS: usize = 100;

fn raw_documents<T>(documents: Vec<ruma::CanonicalJsonObject>) -> Result<Vec<Raw<T>>, ApiError> {
    documents
        .iter()
        .map(|d| {
            serde_json::value::to_raw_value(d)
                .map(Raw::from_json)
                .map_err(|e| ApiError::Internal(format!("key document: {e}")))
        })
        .collect()
}

async fn query_keys(
    services: Arc<Services>,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response, ApiError> {
    federation_enabled(&services)?;
    if req.body.server_keys.len() > MAX_NOTARY_SERVERS {
        return Err(ApiError::BadJson(format!(
            "at most {MAX_NOTARY_SERVERS} servers per query"
        )));
    }
    let servers: Vec<_> = req
        .body
        .server_keys
        .iter()
        .map(|(server, keys)| {
            let wanted = keys
                .values()
                .filter_map(|c| c.minimum_valid_until_ts)
                .map(|ts| u64::from(ts.get()))
                .max()
                .unwrap_or(0);
            (server.clone(), wanted)
        })
        .collect();
    let documents = services
        .federation
        .keys
        .notarize(&services.federation.client, &servers)
        .await?;
    Ok(get_remote_server_keys_batch::v2::Response::new(raw_documents(
        documents,
    )?))
}

async fn query_keys_of(
    services: Arc<Services>,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response, ApiError> {
    federation_enabled(&services)?;
    let wanted = u64::from(req.body.minimum_valid_until_ts.get());
    let servers = [(req.body.server_name.clone(), wanted)];
    let documents = services
        .federation
        .keys
        .notarize(&services.federation.client, &servers)
        .await?;
    Ok(get_remote_server_keys::v2::Response::new(raw_documents(documents)?))
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
