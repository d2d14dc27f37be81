//! Reporting events, rooms and users to the server's operator.

use std::sync::Arc;

use ruma::api::client::reporting::report_user;
use ruma::api::client::room::{report_content, report_room};

use crate::api::{ApiError, Router, Ruma};
use crate::service::reports::Target;
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(report_event);
    router.add(report_a_room);
    router.add(report_a_user);
}

async fn report_event(
    services: Arc<Services>,
    req: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    services
        .run(move |s| {
            let target = Target::Event(&body.room_id, &body.event_id);
            s.reports.report(s, &user, target, body.reason.as_deref().unwrap_or(""))
        })
        .await?;
    Ok(report_content::v3::Response::new())
}

async fn report_a_room(
    services: Arc<Services>,
    req: Ruma<report_room::v3::Request>,
) -> Result<report_room::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    services
        .run(move |s| s.reports.report(s, &user, Target::Room(&body.room_id), &body.reason))
        .await?;
    Ok(report_room::v3::Response::new())
}

async fn report_a_user(
    services: Arc<Services>,
    req: Ruma<report_user::v3::Request>,
) -> Result<report_user::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    services
        .run(move |s| s.reports.report(s, &user, Target::User(&body.user_id), &body.reason))
        .await?;
    Ok(report_user::v3::Response::new())
}
