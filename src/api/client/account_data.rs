//! Account data, global and per room.

use std::sync::Arc;

use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};
use ruma::serde::Raw;

use super::only_own;

use crate::api::{ApiError, Router, Ruma};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(get_global);
    router.add(set_global);
    router.add(get_room);
    router.add(set_room);
}

async fn get_global(
    services: Arc<Services>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response, ApiError> {
    only_own(req.user()?, &req.body.user_id, "account data")?;
    let body = req.body;
    let content = services
        .run(move |s| s.account_data.get(&body.user_id, None, &body.event_type.to_string()))
        .await?;
    Ok(get_global_account_data::v3::Response::new(Raw::from_json(content)))
}

async fn set_global(
    services: Arc<Services>,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response, ApiError> {
    only_own(req.user()?, &req.body.user_id, "account data")?;
    let body = req.body;
    services
        .run(move |s| {
            s.account_data
                .set(&body.user_id, None, &body.event_type.to_string(), body.data.json())
        })
        .await?;
    Ok(set_global_account_data::v3::Response::new())
}

async fn get_room(
    services: Arc<Services>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response, ApiError> {
    only_own(req.user()?, &req.body.user_id, "account data")?;
    let body = req.body;
    let content = services
        .run(move |s| {
            s.account_data
                .get(&body.user_id, Some(&body.room_id), &body.event_type.to_string())
        })
        .await?;
    Ok(get_room_account_data::v3::Response::new(Raw::from_json(content)))
}

async fn set_room(
    services: Arc<Services>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response, ApiError> {
    only_own(req.user()?, &req.body.user_id, "account data")?;
    let body = req.body;
    services
        .run(move |s| {
            s.account_data.set(
                &body.user_id,
                Some(&body.room_id),
                &body.event_type.to_string(),
                body.data.json(),
            )
        })
        .await?;
    Ok(set_room_account_data::v3::Response::new())
}
