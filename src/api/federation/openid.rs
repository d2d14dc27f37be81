//! `openid/userinfo`: a third party (a widget's server, Element Call's
//! SFU) checks an OpenID token a user of ours handed it. The token is the
//! request's only authentication: no X-Matrix signature.

use std::sync::Arc;

use ruma::api::federation::openid::get_openid_userinfo;

use super::federation_enabled;
use crate::api::{ApiError, Router, Ruma};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(userinfo);
}

async fn userinfo(
    services: Arc<Services>,
    req: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<get_openid_userinfo::v1::Response, ApiError> {
    federation_enabled(&services)?;
    let token = req.body.access_token;
    let user = services
        .run(move |s| s.openid.user_for_token(&token))
        .await?
        .ok_or(ApiError::UnknownToken)?;
    Ok(get_openid_userinfo::v1::Response::new(user))
}
