//! Login and logout.

use std::sync::Arc;

use ruma::api::client::session::login::v3::LoginInfo;
use ruma::api::client::session::{get_login_types, login, logout, logout_all};
use ruma::api::client::uiaa::UserIdentifier;
use ruma::{OwnedUserId, UserId};

use crate::api::router::{Hooks, JsonObject};
use crate::api::{ApiError, Router, Ruma};
use crate::service::rate_limits::RateClass;
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(login_types);
    router.add_with(Hooks::body(login_type_given).limited(RateClass::Login), login);
    router.add(logout);
    router.add(logout_all);
}

async fn login_types(
    _: Arc<Services>,
    _: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response, ApiError> {
    use get_login_types::v3::{ApplicationServiceLoginType, LoginType, PasswordLoginType};
    Ok(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
        LoginType::ApplicationService(ApplicationServiceLoginType::new()),
    ]))
}

/// ruma's `LoginInfo` indexes `type` and panics when it is missing: the
/// spec requires it, so a body without it is refused first.
fn login_type_given(body: &mut JsonObject, _: &[&str]) -> Result<(), ApiError> {
    match body.get("type") {
        Some(serde_json::Value::String(_)) => Ok(()),
        Some(_) => Err(ApiError::BadJson("`type` must be a string".to_owned())),
        None => Err(ApiError::BadJson("the login needs a `type`".to_owned())),
    }
}

async fn login(services: Arc<Services>, req: Ruma<login::v3::Request>) -> Result<login::v3::Response, ApiError> {
    let body = req.body;
    let password = match body.login_info {
        LoginInfo::Password(password) => password,
        LoginInfo::ApplicationService(login) => {
            #[allow(deprecated)]
            let named = match (login.identifier, login.user) {
                (Some(UserIdentifier::Matrix(m)), _) => m.user,
                (None, Some(user)) => user,
                _ => return Err(ApiError::BadJson("no m.id.user identifier given".to_owned())),
            };
            let appservice = req.appservice.ok_or(if req.sender_user.is_some() {
                ApiError::UnknownToken
            } else {
                ApiError::MissingToken
            })?;
            // It makes its users' devices with `PUT /devices/{id}` and acts
            // with them through `device_id`, never with a token of theirs (as
            // Synapse refuses it).
            if appservice.registration.msc4190 {
                return Err(ApiError::AppserviceLoginUnsupported(format!(
                    "appservice {} manages its users' devices (MSC4190): it cannot log them in",
                    appservice.id()
                )));
            }
            let user_id = parse_login_name(&services, &named)?;
            if !appservice.is_user_in_namespace(user_id.as_str()) {
                return Err(ApiError::NotInNamespace(format!(
                    "{user_id} is not in the namespaces of appservice {}",
                    appservice.id()
                )));
            }
            return new_login(
                services,
                user_id,
                body.device_id,
                body.initial_device_display_name,
                req.client_ip,
                |s, user| {
                    if s.users.is_active(user)? {
                        Ok(())
                    } else {
                        Err(ServiceError::Forbidden(format!("{user} has not been registered")))
                    }
                },
            )
            .await;
        }
        _ => return Err(ApiError::BadJson("unsupported login type".to_owned())),
    };
    // `identifier` is current; the top-level `user` field is what old clients send.
    #[allow(deprecated)]
    let named = match (password.identifier, password.user) {
        (Some(UserIdentifier::Matrix(m)), _) => m.user,
        (None, Some(user)) => user,
        (Some(_), _) => {
            return Err(ApiError::Forbidden(
                "only m.id.user identifiers are supported".to_owned(),
            ))
        }
        (None, None) => return Err(ApiError::BadJson("no user identifier given".to_owned())),
    };
    let user_id = parse_login_name(&services, &named)?;
    new_login(
        services,
        user_id,
        body.device_id,
        body.initial_device_display_name,
        req.client_ip,
        move |s, user| {
            s.rate_limits
                .guard_password(user, || s.users.verify_password(user, &password.password))
        },
    )
    .await
}

/// A new device and token for `user_id`, once `check` has let it in.
async fn new_login(
    services: Arc<Services>,
    user_id: OwnedUserId,
    device_id: Option<ruma::OwnedDeviceId>,
    display_name: Option<String>,
    client_ip: Option<String>,
    check: impl FnOnce(&Services, &UserId) -> Result<(), ServiceError> + Send + 'static,
) -> Result<login::v3::Response, ApiError> {
    let device_id = device_id.map(|d| d.to_string());
    let server_name = services.config.server_name.clone();
    services
        .run(move |s| {
            check(s, &user_id)?;
            let (device_id, token) = s
                .devices
                .login(s, &user_id, device_id.as_deref(), display_name, client_ip)?;
            let mut response = login::v3::Response::new(user_id, token, device_id.into());
            #[allow(deprecated)]
            {
                response.home_server = Some(server_name);
            }
            Ok(response)
        })
        .await
        .map_err(Into::into)
}

/// A full user ID, or a localpart on this server (matched case-insensitively).
fn parse_login_name(services: &Services, name: &str) -> Result<OwnedUserId, ApiError> {
    let wrong = || ServiceError::Forbidden("wrong user name or password".to_owned());
    let user_id = if name.starts_with('@') {
        UserId::parse(name.to_lowercase()).map_err(|_| wrong())?
    } else {
        UserId::parse_with_server_name(name.to_lowercase(), &services.config.server_name).map_err(|_| wrong())?
    };
    if user_id.server_name() != services.config.server_name {
        return Err(wrong().into());
    }
    Ok(user_id)
}

async fn logout(services: Arc<Services>, req: Ruma<logout::v3::Request>) -> Result<logout::v3::Response, ApiError> {
    let user_id = req.user()?.to_owned();
    let device_id = req.sender_device.clone().ok_or(ApiError::MissingToken)?;
    services
        .run(move |s| s.devices.delete(s, &user_id, &[device_id]))
        .await?;
    Ok(logout::v3::Response::new())
}

async fn logout_all(
    services: Arc<Services>,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response, ApiError> {
    let user_id = req.user()?.to_owned();
    services.run(move |s| s.devices.delete_all(s, &user_id)).await?;
    Ok(logout_all::v3::Response::new())
}
