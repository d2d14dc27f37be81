//! Sync filters: create and get.

use std::sync::Arc;

use ruma::api::client::filter::{create_filter, get_filter};

use super::only_own;

use crate::api::{ApiError, Router, Ruma};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(create);
    router.add(get);
}

async fn create(
    services: Arc<Services>,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response, ApiError> {
    only_own(req.user()?, &req.body.user_id, "filters")?;
    let body = req.body;
    let id = services
        .run(move |s| s.filters.create(&body.user_id, &body.filter))
        .await?;
    Ok(create_filter::v3::Response::new(id))
}

async fn get(
    services: Arc<Services>,
    req: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response, ApiError> {
    only_own(req.user()?, &req.body.user_id, "filters")?;
    let body = req.body;
    let filter = services
        .run(move |s| s.filters.get(&body.user_id, &body.filter_id))
        .await?;
    Ok(get_filter::v3::Response::new(filter))
}
