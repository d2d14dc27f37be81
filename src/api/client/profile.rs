//! Profiles: display name, avatar URL, the whole profile.

use std::sync::Arc;

use ruma::api::client::profile::{get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name};
use ruma::OwnedMxcUri;

use super::only_own;

use crate::api::router::{Hooks, JsonObject};
use crate::api::{ApiError, Router, Ruma};
use crate::service::users::{AVATAR_URL, DISPLAYNAME};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(profile);
    router.add(display_name);
    router.add_with(Hooks::body(displayname_given), set_display_name);
    router.add(avatar_url);
    router.add_with(Hooks::body(avatar_url_given), set_avatar_url);
}

/// Setting a profile field needs the field in the body: null clears it,
/// but a body without it is a mistake, not a request to clear (ruma reads
/// both as `None`).
fn field_given(body: &JsonObject, field: &str) -> Result<(), ApiError> {
    if body.contains_key(field) {
        Ok(())
    } else {
        Err(ApiError::MissingParam(format!(
            "the body needs `{field}` (null to clear it)"
        )))
    }
}

fn displayname_given(body: &mut JsonObject, _: &[&str]) -> Result<(), ApiError> {
    field_given(body, DISPLAYNAME)
}

fn avatar_url_given(body: &mut JsonObject, _: &[&str]) -> Result<(), ApiError> {
    field_given(body, AVATAR_URL)
}

async fn profile(
    services: Arc<Services>,
    req: Ruma<get_profile::v3::Request>,
) -> Result<get_profile::v3::Response, ApiError> {
    let user_id = req.body.user_id;
    super::appservice::ask_about_user(&services, &user_id).await?;
    let (name, avatar) = if user_id.server_name() != services.config.server_name && services.config.allow_federation {
        services.federation.profile(&user_id).await?
    } else {
        services
            .run(move |s| {
                Ok((
                    s.users.profile_field(&user_id, DISPLAYNAME)?,
                    s.users.profile_field(&user_id, AVATAR_URL)?,
                ))
            })
            .await?
    };
    let mut response = get_profile::v3::Response::new();
    if let Some(name) = name {
        response.set(DISPLAYNAME.to_owned(), name.into());
    }
    if let Some(avatar) = avatar {
        response.set(AVATAR_URL.to_owned(), avatar.into());
    }
    Ok(response)
}

async fn display_name(
    services: Arc<Services>,
    req: Ruma<get_display_name::v3::Request>,
) -> Result<get_display_name::v3::Response, ApiError> {
    let user_id = req.body.user_id;
    super::appservice::ask_about_user(&services, &user_id).await?;
    if user_id.server_name() != services.config.server_name && services.config.allow_federation {
        let (name, _) = services.federation.profile(&user_id).await?;
        return Ok(get_display_name::v3::Response::new(name));
    }
    let name = services
        .run(move |s| s.users.profile_field(&user_id, DISPLAYNAME))
        .await?;
    Ok(get_display_name::v3::Response::new(name))
}

async fn set_display_name(
    services: Arc<Services>,
    req: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response, ApiError> {
    only_own(req.user()?, &req.body.user_id, "profile")?;
    let body = req.body;
    services
        .run(move |s| {
            s.rooms
                .set_profile_field(s, &body.user_id, DISPLAYNAME, body.displayname.as_deref())
        })
        .await?;
    Ok(set_display_name::v3::Response::new())
}

async fn avatar_url(
    services: Arc<Services>,
    req: Ruma<get_avatar_url::v3::Request>,
) -> Result<get_avatar_url::v3::Response, ApiError> {
    let user_id = req.body.user_id;
    let url = services
        .run(move |s| s.users.profile_field(&user_id, AVATAR_URL))
        .await?;
    Ok(get_avatar_url::v3::Response::new(url.map(OwnedMxcUri::from)))
}

async fn set_avatar_url(
    services: Arc<Services>,
    req: Ruma<set_avatar_url::v3::Request>,
) -> Result<set_avatar_url::v3::Response, ApiError> {
    only_own(req.user()?, &req.body.user_id, "profile")?;
    let body = req.body;
    // Any mxc:// URI: one from another server may use media IDs this
    // server would not mint, and clients only pass it on.
    if let Some(url) = &body.avatar_url {
        if !url.as_str().is_empty() && !url.as_str().starts_with("mxc://") {
            return Err(ApiError::InvalidParam("avatar_url is not an mxc:// URI".to_owned()));
        }
    }
    let url = body.avatar_url.map(|u| u.to_string());
    services
        .run(move |s| s.rooms.set_profile_field(s, &body.user_id, AVATAR_URL, url.as_deref()))
        .await?;
    Ok(set_avatar_url::v3::Response::new())
}
