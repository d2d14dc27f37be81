//! Client-Server API handlers, one module per endpoint group.

mod account;
mod account_data;
mod device;
mod discovery;
mod filter;
mod profile;
mod session;
mod user_directory;

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

pub fn register_routes(router: &mut Router) {
    discovery::register_routes(router);
    account::register_routes(router);
    session::register_routes(router);
    device::register_routes(router);
    profile::register_routes(router);
    account_data::register_routes(router);
    filter::register_routes(router);
    user_directory::register_routes(router);
}
