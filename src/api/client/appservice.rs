//! What appservices call beyond the ordinary client API (`/ping`), and the
//! questions clients' requests put to them: a user or alias of ours that
//! does not exist yet may be one an appservice makes on demand.

use std::sync::Arc;

use ruma::api::client::appservice::request_ping;
use ruma::{RoomAliasId, UserId};

use crate::api::{ApiError, Router, Ruma};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(ping);
}

/// The appservice checks that we reach it: we ping it back.
async fn ping(
    services: Arc<Services>,
    req: Ruma<request_ping::v1::Request>,
) -> Result<request_ping::v1::Response, ApiError> {
    let appservice = req
        .appservice
        .ok_or_else(|| ApiError::Forbidden("only an appservice may ping".to_owned()))?;
    if appservice.id() != req.body.appservice_id {
        return Err(ApiError::Forbidden(format!(
            "this token is appservice {}'s, not {}'s",
            appservice.id(),
            req.body.appservice_id
        )));
    }
    let txn_id = req.body.transaction_id.map(|t| t.to_string());
    let duration = services
        .appservices
        .ping(&appservice, txn_id.as_deref())
        .await
        .map_err(ServiceError::from)?;
    Ok(request_ping::v1::Response::new(duration))
}

/// Before a request about `user`: if it is ours and unknown, the
/// appservices whose namespace holds it are asked (one may create it).
pub(crate) async fn ask_about_user(services: &Arc<Services>, user: &UserId) -> Result<(), ApiError> {
    if user.server_name() == services.config.server_name && !services.users.exists(user)? {
        services.appservices.query_user(user).await;
    }
    Ok(())
}

/// As [`ask_about_user`], for a room alias.
pub(crate) async fn ask_about_alias(services: &Arc<Services>, alias: &RoomAliasId) -> Result<(), ApiError> {
    if alias.server_name() == services.config.server_name
        && matches!(
            services.rooms.resolve_alias(services, alias),
            Err(ServiceError::NotFound(_))
        )
    {
        services.appservices.query_alias(alias).await;
    }
    Ok(())
}
