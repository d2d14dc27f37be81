//! Membership: join, leave, forget, invite, kick, ban, unban, knock, and the
//! member lists.

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::api::client::knock::knock_room;
use ruma::api::client::membership::{
    ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias, joined_members,
    joined_rooms, kick_user, leave_room, unban_user,
};
use ruma::{OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomAliasId};

use super::raw;
use crate::api::router::Hooks;
use crate::api::{ApiError, Router, Ruma};
use crate::service::rate_limits::RateClass;
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    let limited = Hooks::default().limited(RateClass::Join);
    router.add_with(limited, join_by_id);
    router.add_with(limited, join_by_id_or_alias);
    router.add(leave);
    router.add(forget);
    router.add_with(limited, invite);
    router.add(kick);
    router.add(ban);
    router.add(unban);
    router.add_with(limited, knock);
    router.add(joined_rooms);
    router.add(members);
    router.add(joined_members);
}

/// The join body's fields ruma reads; any other goes into the
/// membership event's content.
const JOIN_FIELDS: &[&str] = &["reason", "third_party_signed"];

/// Invites by email or phone number (`m.room.third_party_invite`) need an
/// identity server, which this server does not use: the spec's answer for
/// an identifier it does not allow.
fn third_party_refused() -> ApiError {
    ServiceError::ThreepidDenied("third-party invites are not supported by this server".to_owned()).into()
}

async fn join_by_id(
    services: Arc<Services>,
    req: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let extra = req.extra_fields(JOIN_FIELDS)?;
    let body = req.body;
    if body.third_party_signed.is_some() {
        return Err(third_party_refused());
    }
    let room_id = join(
        &services,
        user,
        body.room_id.to_string(),
        body.reason,
        extra,
        Vec::new(),
    )
    .await?;
    Ok(join_room_by_id::v3::Response::new(room_id))
}

async fn join_by_id_or_alias(
    services: Arc<Services>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let extra = req.extra_fields(JOIN_FIELDS)?;
    let body = req.body;
    if body.third_party_signed.is_some() {
        return Err(third_party_refused());
    }
    if let Ok(alias) = RoomAliasId::parse(body.room_id_or_alias.as_str()) {
        super::appservice::ask_about_alias(&services, &alias).await?;
    }
    let room_id = join(
        &services,
        user,
        body.room_id_or_alias.to_string(),
        body.reason,
        extra,
        body.via,
    )
    .await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// A join, here or through another server (see `FederationService::join`).
async fn join(
    services: &Arc<Services>,
    user: ruma::OwnedUserId,
    room: String,
    reason: Option<String>,
    extra: crate::api::router::JsonObject,
    via: Vec<ruma::OwnedServerName>,
) -> Result<ruma::OwnedRoomId, ApiError> {
    Ok(services
        .federation
        .join(services, user, room, reason, extra, via)
        .await?)
}

async fn knock(
    services: Arc<Services>,
    req: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let room_id = services
        .federation
        .knock(
            &services,
            user,
            body.room_id_or_alias.to_string(),
            body.reason,
            body.via,
        )
        .await?;
    Ok(knock_room::v3::Response::new(room_id))
}

/// Sends one membership event about `target`.
async fn membership_change(
    services: Arc<Services>,
    sender: OwnedUserId,
    room_id: OwnedRoomId,
    target: OwnedUserId,
    membership: &'static str,
    reason: Option<String>,
) -> Result<(), ApiError> {
    services
        .run(move |s| {
            s.rooms
                .set_membership(s, &room_id, &sender, &target, membership, reason.as_deref())
        })
        .await?;
    Ok(())
}

async fn leave(
    services: Arc<Services>,
    req: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    // Refusing an invite to, or withdrawing a knock on, a room this server
    // is not in goes through the room's servers.
    let left_remote = services
        .federation
        .leave_remote(&services, &user, &body.room_id, body.reason.clone())
        .await?;
    if left_remote {
        return Ok(leave_room::v3::Response::new());
    }
    membership_change(services, user.clone(), body.room_id, user, "leave", body.reason).await?;
    Ok(leave_room::v3::Response::new())
}

async fn forget(
    services: Arc<Services>,
    req: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let room_id = req.body.room_id;
    services.run(move |s| s.timeline.forget(&room_id, &user)).await?;
    Ok(forget_room::v3::Response::new())
}

async fn invite(
    services: Arc<Services>,
    req: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response, ApiError> {
    use invite_user::v3::InvitationRecipient;
    let user = req.user()?.to_owned();
    let body = req.body;
    let (target, reason) = match body.recipient {
        InvitationRecipient::UserId(invite) => (invite.user_id, invite.reason),
        _ => return Err(third_party_refused()),
    };
    super::appservice::ask_about_user(&services, &target).await?;
    if target.server_name() != services.config.server_name && services.config.allow_federation {
        let (room, invitee) = (body.room_id.clone(), target.clone());
        let content = services
            .run(move |s| {
                s.timeline.room_or_404(&room)?;
                let body = s
                    .rooms
                    .member_content(s, &invitee, "invite", reason.as_deref(), false)?;
                crate::service::timeline::to_object(body)
            })
            .await?;
        services
            .federation
            .invite_remote(&services, &body.room_id, &user, &target, content)
            .await?;
        return Ok(invite_user::v3::Response::new());
    }
    membership_change(services, user, body.room_id, target, "invite", reason).await?;
    Ok(invite_user::v3::Response::new())
}

async fn kick(services: Arc<Services>, req: Ruma<kick_user::v3::Request>) -> Result<kick_user::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    services
        .run(move |s| {
            s.rooms
                .kick(s, &body.room_id, &user, &body.user_id, body.reason.as_deref())
        })
        .await?;
    Ok(kick_user::v3::Response::new())
}

async fn ban(services: Arc<Services>, req: Ruma<ban_user::v3::Request>) -> Result<ban_user::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    membership_change(services, user, body.room_id, body.user_id, "ban", body.reason).await?;
    Ok(ban_user::v3::Response::new())
}

async fn unban(
    services: Arc<Services>,
    req: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    services
        .run(move |s| {
            s.rooms
                .unban(s, &body.room_id, &user, &body.user_id, body.reason.as_deref())
        })
        .await?;
    Ok(unban_user::v3::Response::new())
}

async fn joined_rooms(
    services: Arc<Services>,
    req: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let rooms = services
        .run(move |s| {
            Ok(s.timeline
                .user_rooms(&user)?
                .into_iter()
                .filter(|(_, r)| r.membership == "join")
                .map(|(id, _)| id)
                .collect())
        })
        .await?;
    Ok(joined_rooms::v3::Response::new(rooms))
}

async fn members(
    services: Arc<Services>,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device()?.to_owned();
    let body = req.body;
    let only = body.membership.map(|m| m.to_string());
    let not = body.not_membership.map(|m| m.to_string());
    let events = services
        .run(move |s| {
            s.timeline
                .member_events(s, &user, &device, &body.room_id, body.at.as_deref())
        })
        .await?;
    let chunk = events
        .iter()
        .filter(|e| {
            let m = e["content"]["membership"].as_str().unwrap_or_default();
            only.as_deref().is_none_or(|o| o == m) && not.as_deref() != Some(m)
        })
        .map(raw)
        .collect::<Result<_, _>>()?;
    Ok(get_member_events::v3::Response::new(chunk))
}

async fn joined_members(
    services: Arc<Services>,
    req: Ruma<joined_members::v3::Request>,
) -> Result<joined_members::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device()?.to_owned();
    let room_id = req.body.room_id;
    let events = services
        .run(move |s| s.rooms.joined_members(s, &user, &device, &room_id))
        .await?;
    let mut joined = BTreeMap::new();
    for event in events {
        let Some(user_id) = event["state_key"].as_str().and_then(|k| OwnedUserId::try_from(k).ok()) else {
            continue;
        };
        let mut member = joined_members::v3::RoomMember::new();
        member.display_name = event["content"]["displayname"].as_str().map(str::to_owned);
        member.avatar_url = event["content"]["avatar_url"]
            .as_str()
            .map(|u| OwnedMxcUri::from(u.to_owned()));
        joined.insert(user_id, member);
    }
    Ok(joined_members::v3::Response::new(joined))
}
