//! Registration, whoami, password change, deactivation.

use std::sync::Arc;

use ruma::api::client::account::register::{LoginType, RegistrationKind};
use ruma::api::client::account::{
    change_password, check_registration_token_validity, deactivate, get_username_availability, register, whoami,
    ThirdPartyIdRemovalStatus,
};

use crate::api::router::{Hooks, JsonObject};
use crate::api::{ApiError, Router, Ruma};
use crate::service::appservices::Appservice;
use crate::service::rate_limits::RateClass;
use crate::service::uiaa::Purpose;
use crate::service::users::NewLogin;
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add_with(
        Hooks::response(no_login_no_fields).limited(RateClass::Register),
        register,
    );
    router.add(username_available);
    router.add(registration_token_validity);
    router.add(whoami);
    router.add(change_password);
    router.add(deactivate);
}

/// 403 `M_FORBIDDEN` where nobody may register.
fn registration_allowed(services: &Services) -> Result<(), ApiError> {
    if services.config.allow_registration {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "registration is disabled on this server".to_owned(),
        ))
    }
}

/// With `inhibit_login` there is no device and no token: the spec leaves
/// both fields out, ruma writes them as null.
fn no_login_no_fields(response: &mut JsonObject) {
    response.retain(|key, value| !(value.is_null() && matches!(key.as_str(), "access_token" | "device_id")));
}

async fn register(
    services: Arc<Services>,
    req: Ruma<register::v3::Request>,
) -> Result<register::v3::Response, ApiError> {
    let body = req.body;
    if let Some(appservice) = req.appservice {
        return register_for_appservice(services, appservice, body, req.client_ip).await;
    }
    if body.login_type == Some(LoginType::ApplicationService) {
        return Err(ApiError::MissingToken);
    }
    if body.kind == RegistrationKind::Guest {
        return register_guest(services, body, req.client_ip).await;
    }
    registration_allowed(&services)?;
    let client_ip = req.client_ip;
    services
        .run(move |s| {
            // The request repeated within a completed session: the same
            // account again, with a login if one is asked for.
            if let Some(user_id) = s.uiaa.registered_in(body.auth.as_ref())? {
                return existing_account(s, user_id, body, client_ip);
            }
            // A guest becoming a full account keeps its user ID: the
            // username must be its localpart (the spec's upgrade).
            if let Some(guest_token) = body.guest_access_token.as_deref() {
                let guest = match s.devices.token_owner(guest_token, None)?.map(|owner| owner.user_id) {
                    Some(user) if s.users.is_guest(user.as_str())? => user,
                    _ => {
                        return Err(ServiceError::Forbidden(
                            "guest_access_token is not a guest's token".to_owned(),
                        ))
                    }
                };
                if body.username.as_deref() != Some(guest.localpart()) {
                    return Err(ServiceError::InvalidParam(
                        "to upgrade a guest, username must be the guest's localpart".to_owned(),
                    ));
                }
                s.uiaa
                    .authenticate(&s.users, None, Purpose::Register, "", body.auth.as_ref())?;
                s.users.upgrade_guest(&guest, body.password.as_deref())?;
                s.uiaa.record_registration(body.auth.as_ref(), &guest)?;
                tracing::info!(user_id = %guest, "guest account upgraded");
                return existing_account(s, guest, body, client_ip);
            }
            // Name problems are reported before any authentication stage.
            let user_id = match &body.username {
                Some(name) => s.users.check_new_localpart(&name.to_lowercase())?,
                None => s.users.generate_user_id()?,
            };
            s.appservices.check_user_free(&user_id, None)?;
            s.uiaa
                .authenticate(&s.users, None, Purpose::Register, "", body.auth.as_ref())?;
            let login = (!body.inhibit_login)
                .then(|| (body.device_id.map(|d| d.to_string()), body.initial_device_display_name));
            let new_login = s
                .users
                .register(&s.devices, &user_id, body.password.as_deref(), login)?;
            s.uiaa.record_registration(body.auth.as_ref(), &user_id)?;
            tracing::info!(%user_id, ip = client_ip.as_deref().unwrap_or("-"), "new account");
            s.admin_room.invite_if_admin(s, &user_id);
            Ok(registered(user_id, new_login))
        })
        .await
        .map_err(Into::into)
}

/// The answer to a new account's registration, with its login if any.
fn registered(user_id: ruma::OwnedUserId, login: Option<NewLogin>) -> register::v3::Response {
    let mut response = register::v3::Response::new(user_id);
    if let Some(login) = login {
        response.access_token = Some(login.access_token);
        response.device_id = Some(login.device_id.into());
    }
    response
}

/// The answer to a registration of an account that exists already (the
/// request repeated in its session, or a guest upgraded): the account, and
/// a login for the device asked for unless `inhibit_login`.
fn existing_account(
    s: &Services,
    user_id: ruma::OwnedUserId,
    body: register::v3::Request,
    client_ip: Option<String>,
) -> Result<register::v3::Response, ServiceError> {
    let mut response = register::v3::Response::new(user_id.clone());
    if !body.inhibit_login {
        let (device_id, access_token) = s.devices.login(
            s,
            &user_id,
            body.device_id.as_ref().map(|d| d.as_str()),
            body.initial_device_display_name,
            client_ip,
        )?;
        response.access_token = Some(access_token);
        response.device_id = Some(device_id.into());
    }
    Ok(response)
}

/// An appservice registers one of its users: no password, and none of
/// the checks on people (registration open, token, user-interactive
/// authentication), as the spec's `m.login.application_service` says.
async fn register_for_appservice(
    services: Arc<Services>,
    appservice: Arc<Appservice>,
    body: register::v3::Request,
    client_ip: Option<String>,
) -> Result<register::v3::Response, ApiError> {
    let name = body
        .username
        .clone()
        .ok_or_else(|| ApiError::MissingParam("an appservice registers a user by its username".to_owned()))?;
    services
        .run(move |s| {
            let user_id = s.users.check_new_localpart(&name)?;
            if !appservice.is_user_in_namespace(user_id.as_str()) {
                return Err(ServiceError::Exclusive(format!(
                    "{user_id} is not in the namespaces of appservice {}",
                    appservice.id()
                )));
            }
            s.appservices.check_user_free(&user_id, Some(&appservice))?;
            let login = (!body.inhibit_login)
                .then(|| (body.device_id.map(|d| d.to_string()), body.initial_device_display_name));
            let new_login = s.users.register_server_account(&s.devices, &user_id, login)?;
            tracing::info!(%user_id, appservice = appservice.id(), ip = client_ip.as_deref().unwrap_or("-"), "new appservice user");
            Ok(registered(user_id, new_login))
        })
        .await
        .map_err(Into::into)
}

/// `register?kind=guest`: an account without a password, for the guest
/// endpoints only (see `api::router::GUEST_ENDPOINTS`); no
/// user-interactive stage, as the spec's guest flow has none.
async fn register_guest(
    services: Arc<Services>,
    body: register::v3::Request,
    client_ip: Option<String>,
) -> Result<register::v3::Response, ApiError> {
    if !services.config.allow_guest_access {
        return Err(ServiceError::GuestAccessForbidden.into());
    }
    let device = (body.device_id.map(|d| d.to_string()), body.initial_device_display_name);
    let (user_id, login) = services
        .run(move |s| s.users.register_guest(&s.devices, device))
        .await?;
    tracing::info!(%user_id, ip = client_ip.as_deref().unwrap_or("-"), "new guest account");
    let mut response = register::v3::Response::new(user_id);
    response.access_token = Some(login.access_token);
    response.device_id = Some(login.device_id.into());
    Ok(response)
}

/// `GET /register/m.login.registration_token/validity`: whether a token
/// would be accepted now (the spec's 403 when nobody may register).
async fn registration_token_validity(
    services: Arc<Services>,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response, ApiError> {
    registration_allowed(&services)?;
    let token = req.body.token;
    let valid = services.run(move |s| s.registration_tokens.is_valid(&token)).await?;
    Ok(check_registration_token_validity::v1::Response::new(valid))
}

async fn username_available(
    services: Arc<Services>,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response, ApiError> {
    registration_allowed(&services)?;
    let name = req.body.username.to_lowercase();
    services
        .run(move |s| {
            s.appservices
                .check_user_free(&s.users.check_new_localpart(&name)?, None)
        })
        .await?;
    Ok(get_username_availability::v3::Response::new(true))
}

async fn whoami(_: Arc<Services>, req: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response, ApiError> {
    let mut response = whoami::v3::Response::new(req.user()?.to_owned(), false);
    // An appservice acting without a device has none to tell.
    response.device_id = req.real_device().map(Into::into);
    Ok(response)
}

async fn change_password(
    services: Arc<Services>,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response, ApiError> {
    let user_id = req.user()?.to_owned();
    let device_id = req.device()?.to_owned();
    let body = req.body;
    services
        .run(move |s| {
            s.uiaa.authenticate(
                &s.users,
                Some(&user_id),
                Purpose::ChangePassword,
                "",
                body.auth.as_ref(),
            )?;
            let logout_others = body.logout_devices.then_some(Some(device_id.as_str()));
            s.users.change_password(s, &user_id, &body.new_password, logout_others)
        })
        .await?;
    Ok(change_password::v3::Response::new())
}

async fn deactivate(
    services: Arc<Services>,
    req: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response, ApiError> {
    let user_id = req.user()?.to_owned();
    let auth = req.body.auth;
    let erase = req.body.erase;
    services
        .run(move |s| {
            s.uiaa
                .authenticate(&s.users, Some(&user_id), Purpose::Deactivate, "", auth.as_ref())?;
            s.users.deactivate(s, &user_id, erase)
        })
        .await?;
    Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}
