//! Presence: set and read a user's state and status message.

use std::sync::Arc;
use std::time::Duration;

use ruma::api::client::presence::{get_presence, set_presence};
use ruma::presence::PresenceState;

use super::only_own;
use crate::api::{ApiError, Router, Ruma};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(set_status);
    router.add(get_status);
}

async fn set_status(
    services: Arc<Services>,
    req: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    only_own(&user, &body.user_id, "presence")?;
    let presence = body.presence.as_str().to_owned();
    services
        .run(move |s| s.presence.set(s, &user, &presence, body.status_msg))
        .await?;
    Ok(set_presence::v3::Response::new())
}

async fn get_status(
    services: Arc<Services>,
    req: Ruma<get_presence::v3::Request>,
) -> Result<get_presence::v3::Response, ApiError> {
    let viewer = req.user()?.to_owned();
    let target = req.body.user_id;
    let content = services.run(move |s| s.presence.get(s, &viewer, &target)).await?;
    let state = content["presence"].as_str().unwrap_or("offline");
    let mut response = get_presence::v3::Response::new(PresenceState::from(state));
    response.status_msg = content["status_msg"].as_str().map(str::to_owned);
    response.currently_active = content["currently_active"].as_bool();
    response.last_active_ago = content["last_active_ago"].as_u64().map(Duration::from_millis);
    Ok(response)
}
