//! Tokens and credentials clients hand to others: OpenID tokens for
//! widgets and Element Call, TURN credentials for calls.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use ruma::api::client::account::request_openid_token;
use ruma::authentication::TokenType;
use serde_json::json;

use super::only_own;
use crate::api::router::authenticate_raw;
use crate::api::{ApiError, Router, Ruma};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(request_openid_token);
    // Raw: with no TURN server the answer is `{}`, which ruma's response
    // type (every field required) cannot write.
    router.add_raw(
        Method::GET,
        &[
            "/_matrix/client/v3/voip/turnServer",
            "/_matrix/client/r0/voip/turnServer",
        ],
        turn_server,
    );
}

async fn request_openid_token(
    services: Arc<Services>,
    req: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    only_own(&user, &req.body.user_id, "OpenID tokens")?;
    let token = services.run(move |s| s.openid.issue(&user)).await?;
    Ok(request_openid_token::v3::Response::new(
        token.access_token,
        TokenType::Bearer,
        services.config.server_name.clone(),
        Duration::from_secs(token.expires_in_secs),
    ))
}

async fn turn_server(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    let (user, _) = authenticate_raw(&services, &req).await?;
    let now_secs = crate::service::now_ms() / 1000;
    let body = match services.voip.turn_credentials(&user, now_secs) {
        Some(c) => json!({"username": c.username, "password": c.password, "uris": c.uris, "ttl": c.ttl_secs}),
        None => json!({}),
    };
    Ok(HttpResponse::Ok().json(body))
}
