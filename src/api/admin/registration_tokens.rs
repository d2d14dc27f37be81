//! `/_synapse/admin/v1/registration_tokens`: Synapse's registration token
//! admin API (list, create, read, change, delete).

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{Map, Value};

use super::{admin, json_body};
use crate::api::{ApiError, Router};
use crate::service::registration_tokens::{NewToken, RegistrationToken, TokenChange, DEFAULT_TOKEN_LENGTH};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    const ALL: &str = "/_synapse/admin/v1/registration_tokens";
    const NEW: &str = "/_synapse/admin/v1/registration_tokens/new";
    // A token may be named `new`: the literal path serves it too.
    const ONE: [&str; 2] = ["/_synapse/admin/v1/registration_tokens/{token}", NEW];
    router.add_raw(Method::GET, &[ALL], list);
    router.add_raw(Method::POST, &[NEW], create);
    router.add_raw(Method::GET, &ONE, get);
    router.add_raw(Method::PUT, &ONE, update);
    router.add_raw(Method::DELETE, &ONE, delete);
}

/// `GET /registration_tokens?valid=true|false`.
async fn list(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let mut valid = None;
    for (key, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        if key == "valid" {
            valid = Some(match value.as_ref() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ApiError::InvalidParam(
                        "valid must be one of 'true', 'false'".to_owned(),
                    ))
                }
            });
        }
    }
    let tokens = services.run(move |s| s.registration_tokens.list(valid)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "registration_tokens": tokens })))
}

/// `POST /registration_tokens/new` with `token` or `length`,
/// `uses_allowed`, `expiry_time`, each optional.
async fn create(services: Arc<Services>, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let body: Map<String, Value> = json_body(&services, &req, payload).await?;
    let new = match (body.get("token"), body.get("length")) {
        (Some(Value::String(token)), _) => NewToken::Named(token.clone()),
        (Some(_), _) => return Err(ApiError::InvalidParam("token must be a string".to_owned())),
        (None, None) => NewToken::Random {
            length: DEFAULT_TOKEN_LENGTH,
        },
        (None, Some(length)) => NewToken::Random {
            length: length
                .as_u64()
                // Negative lengths are refused with the out-of-range ones.
                .or_else(|| length.as_i64().map(|_| 0))
                .ok_or_else(|| ApiError::InvalidParam("length must be an integer".to_owned()))?
                .try_into()
                .unwrap_or(usize::MAX),
        },
    };
    let uses_allowed = body.get("uses_allowed").map(uses_allowed).transpose()?.flatten();
    let expiry_time = body.get("expiry_time").map(expiry_time).transpose()?.flatten();
    let token = services
        .run(move |s| s.registration_tokens.create(new, uses_allowed, expiry_time))
        .await?;
    Ok(HttpResponse::Ok().json(token))
}

/// `GET /registration_tokens/{token}`.
async fn get(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let token = path_token(&req);
    let found = services
        .run({
            let token = token.clone();
            move |s| s.registration_tokens.get(&token)
        })
        .await?;
    shown_or_404(&token, found)
}

/// `PUT /registration_tokens/{token}` with `uses_allowed` and/or
/// `expiry_time`; a field left out is left as it is, null clears it.
async fn update(services: Arc<Services>, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let token = path_token(&req);
    let body: Map<String, Value> = json_body(&services, &req, payload).await?;
    let change = TokenChange {
        uses_allowed: body.get("uses_allowed").map(uses_allowed).transpose()?,
        expiry_time: body.get("expiry_time").map(expiry_time).transpose()?,
    };
    let updated = services
        .run({
            let token = token.clone();
            move |s| s.registration_tokens.update(&token, change)
        })
        .await?;
    shown_or_404(&token, updated)
}

/// `DELETE /registration_tokens/{token}`.
async fn delete(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let token = path_token(&req);
    let deleted = services
        .run({
            let token = token.clone();
            move |s| s.registration_tokens.delete(&token)
        })
        .await?;
    if deleted {
        Ok(HttpResponse::Ok().json(serde_json::json!({})))
    } else {
        Err(no_such_token(&token))
    }
}

fn path_token(req: &HttpRequest) -> String {
    match req.match_info().get("token") {
        Some(token) => token.to_owned(),
        None => "new".to_owned(),
    }
}

fn shown_or_404(token: &str, found: Option<RegistrationToken>) -> Result<HttpResponse, ApiError> {
    found
        .map(|t| HttpResponse::Ok().json(t))
        .ok_or_else(|| no_such_token(token))
}

fn no_such_token(token: &str) -> ApiError {
    ServiceError::NotFound(format!("No such registration token: {token}")).into()
}

/// `uses_allowed`: a non-negative integer, or null for unlimited.
fn uses_allowed(value: &Value) -> Result<Option<u64>, ApiError> {
    match value {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::InvalidParam("uses_allowed must be a non-negative integer or null".to_owned())),
    }
}

/// `expiry_time`: milliseconds since the epoch, or null for never.
fn expiry_time(value: &Value) -> Result<Option<u64>, ApiError> {
    match value {
        Value::Null => Ok(None),
        // A negative time is in the past, which the service refuses.
        v => v
            .as_u64()
            .or_else(|| v.as_i64().map(|_| 0))
            .map(Some)
            .ok_or_else(|| ApiError::InvalidParam("expiry_time must be an integer or null".to_owned())),
    }
}
