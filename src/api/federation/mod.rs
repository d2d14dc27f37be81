//! The server-server API: what other homeservers call. Every endpoint
//! answers 403 `M_FORBIDDEN` when the operator turned federation off.

mod devices;
mod directory;
mod keys;
mod media;
mod openid;
mod query;
mod rooms;

use crate::api::{ApiError, Router};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    devices::register_routes(router);
    directory::register_routes(router);
    keys::register_routes(router);
    openid::register_routes(router);
    media::register_routes(router);
    query::register_routes(router);
    rooms::register_routes(router);
}

/// Refuses a federation request when `allow_federation` is off.
fn federation_enabled(services: &Services) -> Result<(), ApiError> {
    if services.config.allow_federation {
        Ok(())
    } else {
        Err(ApiError::Forbidden("federation is disabled on this server".to_owned()))
    }
}
