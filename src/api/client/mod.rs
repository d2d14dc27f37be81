//! Client-Server API handlers, one module per endpoint group.

mod account;
mod account_data;
mod appservice;
mod backup;
mod dehydrated_device;
mod device;
mod discovery;
mod filter;
pub(crate) mod keys;
pub(crate) mod media;
mod membership;
mod message;
mod presence;
mod profile;
mod push;
mod read;
mod relations;
mod report;
mod room;
mod search;
mod session;
mod sliding_sync;
mod sync;
mod thirdparty;
mod threepid;
mod user_directory;
mod voip_and_openid;

use ruma::serde::Raw;
use ruma::UserId;

use super::{ApiError, Router};

/// Endpoints that act on a user named in the path serve only that user.
fn only_own(sender: &UserId, target: &UserId, what: &str) -> Result<(), ApiError> {
    if sender == target {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("you cannot access another user's {what}")))
    }
}

/// A JSON value as the ruma type a response carries.
fn raw<T>(value: &serde_json::Value) -> Result<Raw<T>, ApiError> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|e| ApiError::Internal(format!("serializing an event: {e}")))
}

pub fn register_routes(router: &mut Router) {
    discovery::register_routes(router);
    account::register_routes(router);
    appservice::register_routes(router);
    threepid::register_routes(router);
    thirdparty::register_routes(router);
    session::register_routes(router);
    device::register_routes(router);
    profile::register_routes(router);
    account_data::register_routes(router);
    backup::register_routes(router);
    dehydrated_device::register_routes(router);
    filter::register_routes(router);
    keys::register_routes(router);
    user_directory::register_routes(router);
    room::register_routes(router);
    membership::register_routes(router);
    message::register_routes(router);
    sync::register_routes(router);
    sliding_sync::register_routes(router);
    push::register_routes(router);
    read::register_routes(router);
    presence::register_routes(router);
    report::register_routes(router);
    search::register_routes(router);
    relations::register_routes(router);
    media::register_routes(router);
    voip_and_openid::register_routes(router);
}
