//! Registration, whoami, password change, deactivation.

use std::sync::Arc;

use ruma::api::client::account::register::RegistrationKind;
use ruma::api::client::account::{
    change_password, deactivate, get_username_availability, register, whoami, ThirdPartyIdRemovalStatus,
};

use crate::api::{ApiError, Router, Ruma};
use crate::service::uiaa::Purpose;
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(register);
    router.add(username_available);
    router.add(whoami);
    router.add(change_password);
    router.add(deactivate);
}

async fn register(
    services: Arc<Services>,
    req: Ruma<register::v3::Request>,
) -> Result<register::v3::Response, ApiError> {
    let body = req.body;
    if body.kind == RegistrationKind::Guest {
        return Err(ServiceError::GuestAccessForbidden.into());
    }
    if !services.config.allow_registration {
        return Err(ApiError::Forbidden(
            "registration is disabled on this server".to_owned(),
        ));
    }
    let client_ip = req.client_ip;
    services
        .run(move |s| {
            // Name problems are reported before any authentication stage.
            let user_id = match &body.username {
                Some(name) => s.users.check_new_localpart(&name.to_lowercase())?,
                None => s.users.generate_user_id()?,
            };
            s.uiaa
                .authenticate(&s.users, None, Purpose::Register, body.auth.as_ref())?;
            let login = (!body.inhibit_login)
                .then(|| (body.device_id.map(|d| d.to_string()), body.initial_device_display_name));
            let new_login = s
                .users
                .register(&s.devices, &user_id, body.password.as_deref(), login)?;
            tracing::info!(%user_id, ip = client_ip.as_deref().unwrap_or("-"), "new account");
            let mut response = register::v3::Response::new(user_id);
            if let Some(login) = new_login {
                response.access_token = Some(login.access_token);
                response.device_id = Some(login.device_id.into());
            }
            Ok(response)
        })
        .await
        .map_err(Into::into)
}

async fn username_available(
    services: Arc<Services>,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response, ApiError> {
    if !services.config.allow_registration {
        return Err(ApiError::Forbidden(
            "registration is disabled on this server".to_owned(),
        ));
    }
    let name = req.body.username.to_lowercase();
    services.run(move |s| s.users.check_new_localpart(&name)).await?;
    Ok(get_username_availability::v3::Response::new(true))
}

async fn whoami(_: Arc<Services>, req: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response, ApiError> {
    let mut response = whoami::v3::Response::new(req.user()?.to_owned(), false);
    response.device_id = req.sender_device.clone();
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
            s.uiaa
                .authenticate(&s.users, Some(&user_id), Purpose::ChangePassword, body.auth.as_ref())?;
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
    services
        .run(move |s| {
            s.uiaa
                .authenticate(&s.users, Some(&user_id), Purpose::Deactivate, auth.as_ref())?;
            s.users.deactivate(s, &user_id)
        })
        .await?;
    Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}
