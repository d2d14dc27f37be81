//! `query/directory` (our room aliases) and `query/profile` (our users'
//! profiles) for other servers.

use std::sync::Arc;

use ruma::api::federation::query::{get_profile_information, get_room_information};

use crate::api::{ApiError, Router, Ruma};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(directory);
    router.add(profile);
}

async fn directory(
    services: Arc<Services>,
    req: Ruma<get_room_information::v1::Request>,
) -> Result<get_room_information::v1::Response, ApiError> {
    let alias = req.body.room_alias;
    let own = services.config.server_name.clone();
    if alias.server_name() != own {
        return Err(ServiceError::NotFound(format!("{alias} is not an alias of this server")).into());
    }
    let (room_id, servers) = services
        .run(move |s| {
            let room_id = s.rooms.resolve_alias(s, &alias)?;
            // This server first: it answered, so it is up.
            let mut servers = vec![own.clone()];
            servers.extend(s.timeline.servers_in_room(&room_id)?.into_iter().filter(|s| *s != own));
            Ok((room_id, servers))
        })
        .await?;
    Ok(get_room_information::v1::Response::new(room_id, servers))
}

async fn profile(
    services: Arc<Services>,
    req: Ruma<get_profile_information::v1::Request>,
) -> Result<get_profile_information::v1::Response, ApiError> {
    let body = req.body;
    let user = body.user_id;
    if user.server_name() != services.config.server_name {
        return Err(ServiceError::NotFound(format!("{user} is not a user of this server")).into());
    }
    let wanted = body.field.map(|f| f.to_string());
    let fields = services
        .run(move |s| {
            if !s.users.exists(&user)? {
                return Err(ServiceError::NotFound("this user does not exist".to_owned()));
            }
            let mut fields = Vec::new();
            for field in ["displayname", "avatar_url"] {
                if wanted.as_deref().is_some_and(|w| w != field) {
                    continue;
                }
                if let Some(value) = s.users.profile_field(&user, field)? {
                    fields.push((field.to_owned(), value));
                }
            }
            Ok(fields)
        })
        .await?;
    let mut response = get_profile_information::v1::Response::new();
    for (field, value) in fields {
        response.data.set(field, value.into());
    }
    Ok(response)
}
