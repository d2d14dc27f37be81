//! `POST /_conduit/admin/v1/command`: one admin command, as the admin room's
//! bot and `conduit admin` know them, run as the calling admin; its output
//! as text. This is how `conduit admin --token …` manages a running server
//! (Conduit's own; Synapse has no such endpoint).

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{admin, json_body};
use crate::api::{ApiError, Router};
use crate::service::admin_commands::{self, AdminCommand};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add_raw(Method::POST, &["/_conduit/admin/v1/command"], run);
}

async fn run(services: Arc<Services>, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let actor = admin(&services, &req).await?;
    let command: AdminCommand = json_body(&services, &req, payload).await?;
    let output = admin_commands::execute(&services, command, &actor).await?;
    Ok(HttpResponse::Ok().json(json!({ "output": output })))
}
