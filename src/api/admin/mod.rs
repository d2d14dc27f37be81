//! The admin HTTP API: a subset of Synapse's `/_synapse/admin`, with its
//! paths, bodies and errors, so that tools written for Synapse (synapse-admin,
//! synadm) work. Only server admins may call it; others get 403 `M_FORBIDDEN`.
//!
//! ruma has no types for Synapse's admin API, so the routes are raw: each
//! handler authenticates with [`admin`] and reads its body with [`json_body`].

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use percent_encoding::percent_decode_str;
use ruma::OwnedUserId;
use serde::de::DeserializeOwned;

use crate::api::router::{authenticate_raw, read_body};
use crate::api::{ApiError, Router};
use crate::service::Services;

mod backups;
mod commands;
mod media;
mod registration_tokens;
mod rooms;
mod users;

pub fn register_routes(router: &mut Router) {
    router.add_raw(Method::GET, &["/_synapse/admin/v1/server_version"], server_version);
    backups::register_routes(router);
    commands::register_routes(router);
    media::register_routes(router);
    registration_tokens::register_routes(router);
    rooms::register_routes(router);
    users::register_routes(router);
}

/// The caller, if a server admin; else 403 `M_FORBIDDEN` (401 without a
/// valid access token).
pub(crate) async fn admin(services: &Arc<Services>, req: &HttpRequest) -> Result<OwnedUserId, ApiError> {
    let (user, _) = authenticate_raw(services, req).await?;
    let checked = user.clone();
    if services.run(move |s| s.users.is_admin(&checked)).await? {
        Ok(user)
    } else {
        Err(ApiError::Forbidden("You are not a server admin".to_owned()))
    }
}

/// The request's JSON body as `T` (400 `M_NOT_JSON` or `M_BAD_JSON`).
pub(crate) async fn json_body<T: DeserializeOwned>(
    services: &Services,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T, ApiError> {
    let bytes = read_body(req, payload, services.config.max_request_size as usize).await?;
    parse_json(&bytes)
}

/// As [`json_body`], with no body at all read as `{}` (Synapse's
/// `allow_empty_body`, for endpoints whose old clients send none).
pub(crate) async fn json_body_or_empty<T: DeserializeOwned>(
    services: &Services,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T, ApiError> {
    let bytes = read_body(req, payload, services.config.max_request_size as usize).await?;
    parse_json(if bytes.is_empty() { b"{}" } else { &bytes })
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::NotJson(format!("the body is not JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| ApiError::BadJson(e.to_string()))
}

/// `GET /_synapse/admin/v1/server_version`.
async fn server_version(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "server_version": env!("CARGO_PKG_VERSION"),
    })))
}

pub(crate) fn ok(body: serde_json::Value) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(body))
}

/// The query string's parameters (the last of repeated ones wins).
pub(crate) fn query_params(req: &HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

/// A `true`/`false` query parameter, as Synapse's `parse_boolean`.
pub(crate) fn bool_param(params: &HashMap<String, String>, name: &str) -> Result<Option<bool>, ApiError> {
    match params.get(name).map(String::as_str) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::InvalidParam(format!(
            "Boolean query parameter '{name}' must be one of ['true', 'false']"
        ))),
    }
}

/// A non-negative integer query parameter, as Synapse's `parse_integer`.
pub(crate) fn count_param(params: &HashMap<String, String>, name: &str) -> Result<Option<usize>, ApiError> {
    params
        .get(name)
        .map(|value| {
            value
                .parse::<usize>()
                .map_err(|_| ApiError::InvalidParam(format!("Query parameter '{name}' must be a positive integer")))
        })
        .transpose()
}

/// `dir`: `f` (forwards, the default) or `b`; whether backwards.
pub(crate) fn backwards_param(params: &HashMap<String, String>) -> Result<bool, ApiError> {
    match params.get("dir").map(String::as_str) {
        None | Some("f") => Ok(false),
        Some("b") => Ok(true),
        Some(_) => Err(ApiError::InvalidParam(
            "Query parameter 'dir' must be 'f' or 'b'".to_owned(),
        )),
    }
}

/// The path's `{name}`, percent-decoded (400 `M_INVALID_PARAM` if not UTF-8).
pub(crate) fn path_param(req: &HttpRequest, name: &str) -> Result<String, ApiError> {
    let raw = req.match_info().get(name).unwrap_or_default();
    percent_decode_str(raw)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| ApiError::InvalidParam(format!("Invalid {name}")))
}
