//! Third-party identifiers (email addresses, phone numbers). This server
//! sends no email or SMS and binds nothing at an identity server, so an
//! account has no 3PIDs, `m.3pid_changes` is off, and each endpoint answers
//! as the spec says a server that does not allow them does: token requests
//! and additions are `M_THREEPID_DENIED`, removals have nothing to unbind.

use std::sync::Arc;

use ruma::api::client::account::{
    add_3pid, bind_3pid, delete_3pid, get_3pids, request_3pid_management_token_via_email,
    request_3pid_management_token_via_msisdn, request_password_change_token_via_email,
    request_password_change_token_via_msisdn, request_registration_token_via_email,
    request_registration_token_via_msisdn, unbind_3pid, ThirdPartyIdRemovalStatus,
};

use crate::api::router::Hooks;
use crate::api::{ApiError, Router, Ruma};
use crate::service::rate_limits::RateClass;
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    let limited = Hooks::default().limited(RateClass::Threepid);
    router.add(list);
    router.add(add);
    router.add(bind);
    router.add(delete);
    router.add(unbind);
    router.add_with(limited, token_for_3pid_by_email);
    router.add_with(limited, token_for_3pid_by_msisdn);
    router.add_with(limited, token_for_registration_by_email);
    router.add_with(limited, token_for_registration_by_msisdn);
    router.add_with(limited, token_for_password_by_email);
    router.add_with(limited, token_for_password_by_msisdn);
}

fn denied() -> ApiError {
    ServiceError::ThreepidDenied("this server does not use email addresses or phone numbers".to_owned()).into()
}

async fn list(_: Arc<Services>, req: Ruma<get_3pids::v3::Request>) -> Result<get_3pids::v3::Response, ApiError> {
    req.user()?;
    Ok(get_3pids::v3::Response::new(Vec::new()))
}

async fn add(_: Arc<Services>, req: Ruma<add_3pid::v3::Request>) -> Result<add_3pid::v3::Response, ApiError> {
    req.user()?;
    Err(denied())
}

async fn bind(_: Arc<Services>, req: Ruma<bind_3pid::v3::Request>) -> Result<bind_3pid::v3::Response, ApiError> {
    req.user()?;
    Err(denied())
}

/// Removing an identifier the account does not have leaves it without
/// one; no identity server was asked to unbind anything.
async fn delete(_: Arc<Services>, req: Ruma<delete_3pid::v3::Request>) -> Result<delete_3pid::v3::Response, ApiError> {
    req.user()?;
    Ok(delete_3pid::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}

async fn unbind(_: Arc<Services>, req: Ruma<unbind_3pid::v3::Request>) -> Result<unbind_3pid::v3::Response, ApiError> {
    req.user()?;
    Ok(unbind_3pid::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}

async fn token_for_3pid_by_email(
    _: Arc<Services>,
    _: Ruma<request_3pid_management_token_via_email::v3::Request>,
) -> Result<request_3pid_management_token_via_email::v3::Response, ApiError> {
    Err(denied())
}

async fn token_for_3pid_by_msisdn(
    _: Arc<Services>,
    _: Ruma<request_3pid_management_token_via_msisdn::v3::Request>,
) -> Result<request_3pid_management_token_via_msisdn::v3::Response, ApiError> {
    Err(denied())
}

async fn token_for_registration_by_email(
    _: Arc<Services>,
    _: Ruma<request_registration_token_via_email::v3::Request>,
) -> Result<request_registration_token_via_email::v3::Response, ApiError> {
    Err(denied())
}

async fn token_for_registration_by_msisdn(
    _: Arc<Services>,
    _: Ruma<request_registration_token_via_msisdn::v3::Request>,
) -> Result<request_registration_token_via_msisdn::v3::Response, ApiError> {
    Err(denied())
}

async fn token_for_password_by_email(
    _: Arc<Services>,
    _: Ruma<request_password_change_token_via_email::v3::Request>,
) -> Result<request_password_change_token_via_email::v3::Response, ApiError> {
    Err(denied())
}

async fn token_for_password_by_msisdn(
    _: Arc<Services>,
    _: Ruma<request_password_change_token_via_msisdn::v3::Request>,
) -> Result<request_password_change_token_via_msisdn::v3::Response, ApiError> {
    Err(denied())
}
