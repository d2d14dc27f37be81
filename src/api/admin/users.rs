//! Synapse's user admin API (`v2/users`, `v1/deactivate`, `v1/whois`, ...)
//! and shared-secret registration (`v1/register`).

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    admin, backwards_param, bool_param, count_param, json_body, json_body_or_empty, ok, path_param, query_params,
};
use crate::api::{ApiError, Router};
use crate::service::admin::{SharedSecretRegistration, UserChanges, UserOrder, UserQuery, UserView};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add_raw(Method::GET, &["/_synapse/admin/v2/users"], list_users);
    router.add_raw(Method::GET, &["/_synapse/admin/v2/users/{user_id}"], get_user);
    router.add_raw(Method::PUT, &["/_synapse/admin/v2/users/{user_id}"], put_user);
    router.add_raw(Method::POST, &["/_synapse/admin/v1/deactivate/{user_id}"], deactivate);
    router.add_raw(
        Method::POST,
        &["/_synapse/admin/v1/reset_password/{user_id}"],
        reset_password,
    );
    router.add_raw(Method::GET, &["/_synapse/admin/v1/whois/{user_id}"], whois);
    router.add_raw(
        Method::GET,
        &["/_synapse/admin/v1/users/{user_id}/joined_rooms"],
        joined_rooms,
    );
    router.add_raw(Method::GET, &["/_synapse/admin/v1/users/{user_id}/admin"], get_admin);
    router.add_raw(Method::PUT, &["/_synapse/admin/v1/users/{user_id}/admin"], put_admin);
    router.add_raw(Method::GET, &["/_synapse/admin/v1/register"], registration_nonce);
    router.add_raw(Method::POST, &["/_synapse/admin/v1/register"], register);
}

/// The `{user_id}` of the path (400 `M_INVALID_PARAM` if it is none).
pub(super) fn path_user(req: &HttpRequest) -> Result<OwnedUserId, ApiError> {
    UserId::parse(path_param(req, "user_id")?).map_err(|_| ApiError::InvalidParam("Invalid user id".to_owned()))
}

/// The admin making the request and the user the path names.
async fn admin_and_user(services: &Arc<Services>, req: &HttpRequest) -> Result<(OwnedUserId, OwnedUserId), ApiError> {
    let by = admin(services, req).await?;
    Ok((by, path_user(req)?))
}

/// An account in Synapse's fields; `detailed` adds those only the
/// single-user answer has. Conduit has no user types, shadow bans, locks,
/// third-party IDs or SSO: those read as Synapse writes "none".
fn user_json(user: &UserView, detailed: bool) -> Value {
    let mut body = json!({
        "name": user.user_id,
        "is_guest": user.is_guest,
        "admin": user.admin,
        "user_type": null,
        "deactivated": user.deactivated,
        "erased": user.erased,
        "shadow_banned": false,
        "locked": false,
        "displayname": user.displayname,
        "avatar_url": user.avatar_url,
        "creation_ts": user.creation_ts,
        "last_seen_ts": user.last_seen_ts,
    });
    if detailed {
        let extra = json!({
            "threepids": [],
            "external_ids": [],
            "appservice_id": null,
            "consent_server_notice_sent": null,
            "consent_version": null,
            "consent_ts": null,
            "suspended": false,
        });
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
    }
    body
}

/// `GET /_synapse/admin/v2/users`.
async fn list_users(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let params = query_params(&req);
    let order_by = match params.get("order_by") {
        None => UserOrder::Name,
        Some(value) => UserOrder::parse(value).ok_or_else(|| {
            ApiError::InvalidParam(format!("Query parameter 'order_by' has an unknown value {value:?}"))
        })?,
    };
    let backwards = backwards_param(&params)?;
    let query = UserQuery {
        from: count_param(&params, "from")?.unwrap_or(0),
        limit: count_param(&params, "limit")?.unwrap_or(100),
        user_id: params.get("user_id").cloned(),
        name: params.get("name").cloned(),
        guests: bool_param(&params, "guests")?.unwrap_or(true),
        deactivated: bool_param(&params, "deactivated")?.unwrap_or(false),
        admins: bool_param(&params, "admins")?,
        order_by,
        backwards,
    };
    let page = services.run(move |s| s.admin.list_users(s, &query)).await?;
    let mut body = json!({
        "users": page.users.iter().map(|u| user_json(u, false)).collect::<Vec<_>>(),
        "total": page.total,
    });
    if let Some(next) = page.next_token {
        body["next_token"] = json!(next.to_string());
    }
    ok(body)
}

/// `GET /_synapse/admin/v2/users/{user_id}`.
async fn get_user(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    let (_, user_id) = admin_and_user(&services, &req).await?;
    let user = services
        .run(move |s| s.admin.user(s, &user_id))
        .await?
        .ok_or_else(|| ServiceError::NotFound("User not found".to_owned()))?;
    ok(user_json(&user, true))
}

#[derive(Deserialize)]
struct PutUserBody {
    password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
    displayname: Option<String>,
    avatar_url: Option<String>,
    admin: Option<bool>,
    deactivated: Option<bool>,
    user_type: Option<String>,
}

fn yes() -> bool {
    true
}

/// `PUT /_synapse/admin/v2/users/{user_id}`: 201 for a new account, 200
/// for a changed one.
async fn put_user(services: Arc<Services>, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let (by, user_id) = admin_and_user(&services, &req).await?;
    let body: PutUserBody = json_body(&services, &req, payload).await?;
    if body.user_type.is_some() {
        return Err(ServiceError::BadRequest("Invalid user type".to_owned()).into());
    }
    let changes = UserChanges {
        password: body.password,
        logout_devices: body.logout_devices,
        displayname: body.displayname,
        avatar_url: body.avatar_url,
        admin: body.admin,
        deactivated: body.deactivated,
    };
    let (created, user) = services
        .run(move |s| s.admin.put_user(s, &by, &user_id, changes))
        .await?;
    let mut response = match created {
        true => HttpResponse::Created(),
        false => HttpResponse::Ok(),
    };
    Ok(response.json(user_json(&user, true)))
}

#[derive(Deserialize)]
struct DeactivateBody {
    #[serde(default)]
    erase: bool,
}

/// `POST /_synapse/admin/v1/deactivate/{user_id}`.
async fn deactivate(
    services: Arc<Services>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (_, user_id) = admin_and_user(&services, &req).await?;
    let body: DeactivateBody = json_body_or_empty(&services, &req, payload).await?;
    services
        .run(move |s| s.admin.deactivate(s, &user_id, body.erase))
        .await?;
    // No identity server ever held a binding: nothing failed to unbind.
    ok(json!({"id_server_unbind_result": "success"}))
}

#[derive(Deserialize)]
struct ResetPasswordBody {
    new_password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
}

/// `POST /_synapse/admin/v1/reset_password/{user_id}`.
async fn reset_password(
    services: Arc<Services>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (_, user_id) = admin_and_user(&services, &req).await?;
    let body: ResetPasswordBody = json_body(&services, &req, payload).await?;
    let password = body
        .new_password
        .ok_or_else(|| ApiError::MissingParam("Missing params: ['new_password']".to_owned()))?;
    services
        .run(move |s| s.admin.reset_password(s, &user_id, &password, body.logout_devices))
        .await?;
    ok(json!({}))
}

/// `GET /_synapse/admin/v1/whois/{user_id}`: each device with its last
/// address and time. User agents are not recorded: they read null.
async fn whois(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    let (_, user_id) = admin_and_user(&services, &req).await?;
    let queried = user_id.clone();
    let connections = services.run(move |s| s.admin.whois(s, &queried)).await?;
    let devices: serde_json::Map<String, Value> = connections
        .into_iter()
        .map(|c| {
            let seen: Vec<Value> = match (c.ip, c.last_seen) {
                (None, None) => Vec::new(),
                (ip, last_seen) => vec![json!({"ip": ip, "last_seen": last_seen, "user_agent": null})],
            };
            (c.device_id, json!({"sessions": [{"connections": seen}]}))
        })
        .collect();
    ok(json!({"user_id": user_id, "devices": devices}))
}

/// `GET /_synapse/admin/v1/users/{user_id}/joined_rooms`.
async fn joined_rooms(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    let (_, user_id) = admin_and_user(&services, &req).await?;
    let rooms = services.run(move |s| s.admin.joined_rooms(s, &user_id)).await?;
    ok(json!({"total": rooms.len(), "joined_rooms": rooms}))
}

/// `GET /_synapse/admin/v1/users/{user_id}/admin`.
async fn get_admin(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    let (_, user_id) = admin_and_user(&services, &req).await?;
    let is_admin = services.run(move |s| s.admin.is_admin(s, &user_id)).await?;
    ok(json!({"admin": is_admin}))
}

#[derive(Deserialize)]
struct AdminFlagBody {
    admin: Option<bool>,
}

/// `PUT /_synapse/admin/v1/users/{user_id}/admin`.
async fn put_admin(services: Arc<Services>, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let (by, user_id) = admin_and_user(&services, &req).await?;
    let body: AdminFlagBody = json_body(&services, &req, payload).await?;
    let flag = body
        .admin
        .ok_or_else(|| ApiError::MissingParam("Missing params: ['admin']".to_owned()))?;
    services.run(move |s| s.admin.set_admin(s, &by, &user_id, flag)).await?;
    ok(json!({}))
}

/// `GET /_synapse/admin/v1/register`: a nonce for the shared-secret
/// registration. No access token: the secret is the credential.
async fn registration_nonce(
    services: Arc<Services>,
    _: HttpRequest,
    _: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let nonce = services.admin.registration_nonce()?;
    ok(json!({"nonce": nonce}))
}

#[derive(Deserialize)]
struct RegisterBody {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    displayname: Option<String>,
    user_type: Option<String>,
    mac: String,
}

/// `POST /_synapse/admin/v1/register`.
async fn register(services: Arc<Services>, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let body: RegisterBody = json_body(&services, &req, payload).await?;
    let registration = SharedSecretRegistration {
        nonce: body.nonce,
        username: body.username,
        password: body.password,
        admin: body.admin,
        displayname: body.displayname,
        user_type: body.user_type,
        mac: body.mac,
    };
    let (user_id, login) = services
        .run(move |s| s.admin.register_with_shared_secret(s, registration))
        .await?;
    ok(json!({
        "user_id": user_id,
        "home_server": services.config.server_name,
        "access_token": login.access_token,
        "device_id": login.device_id,
    }))
}
