//! `/sync` v2, with its long-poll.

use std::sync::Arc;
use std::time::Duration;

use ruma::api::client::filter::FilterDefinition;
use ruma::api::client::sync::sync_events::v3::{
    self, Filter, InviteState, InvitedRoom, JoinedRoom, KnockState, KnockedRoom, LeftRoom, State, StateEvents, Timeline,
};
use ruma::api::client::sync::sync_events::UnreadNotificationsCount;
use ruma::serde::Raw;
use ruma::{OneTimeKeyAlgorithm, UInt};

use super::raw;
use crate::api::{ApiError, Router, Ruma};
use crate::service::sync::{self as sync_service, RoomSection, SyncResult};
use crate::service::{ServiceError, Services};

/// A long-poll never holds a connection longer than this.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many new stream positions are read on the HTTP worker
/// after a long-poll wakes; more go to the blocking pool.
const INLINE_WAKE_POSITIONS: u64 = 8;

pub fn register_routes(router: &mut Router) {
    router.add(sync);
}

async fn sync(services: Arc<Services>, req: Ruma<v3::Request>) -> Result<v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device()?.to_owned();
    let body = req.body;
    let since = body.since.as_deref().map(sync_service::parse_token).transpose()?;
    let filter = match body.filter {
        None => FilterDefinition::default(),
        Some(Filter::FilterDefinition(def)) => def,
        Some(Filter::FilterId(id)) => {
            let user = user.clone();
            services
                .run(move |s| s.filters.get(&user, &id))
                .await
                .map_err(|e| match e {
                    ServiceError::NotFound(_) => ApiError::InvalidParam("no filter with this ID".to_owned()),
                    other => other.into(),
                })?
        }
        Some(_) => return Err(ApiError::BadJson("unknown filter form".to_owned())),
    };
    let filter = Arc::new(filter);
    let full_state = body.full_state;
    let set_presence = body.set_presence.as_str().to_owned();
    {
        let user = user.clone();
        services.run(move |s| s.presence.touch(s, &user, &set_presence)).await?;
    }

    // Subscribe before reading, so that nothing finished in between is missed.
    let watch = services.timeline.stream.subscribe(&user);
    let compute = |up_to: u64| {
        let (user, device, filter) = (user.clone(), device.clone(), filter.clone());
        services.run(move |s| sync_service::sync(s, &user, &device, since, up_to, &filter, full_state))
    };
    let mut result = compute(services.timeline.stream.visible()).await?;
    let timeout = body.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    if since.is_some() && result.is_empty() && !full_state && !timeout.is_zero() {
        // Target `conduit::wait`: what waits for what, for those (tests
        // among them) who need to know a request is waiting.
        tracing::debug!(target: "conduit::wait", %user, since = result.next_batch, "sync waiting for a change");
        services.timeline.stream.wait(watch, result.next_batch, timeout).await;
        let now = services.timeline.stream.visible();
        if now > result.next_batch {
            // A wake for a few new positions is a few cached reads: answer on
            // this worker. Each hop to the blocking pool and back wakes an
            // idle thread, which on a quiet machine costs more than the work.
            result = if now - result.next_batch <= INLINE_WAKE_POSITIONS {
                sync_service::sync(&services, &user, &device, since, now, &filter, full_state)?
            } else {
                compute(now).await?
            };
        }
    }
    into_response(result)
}

fn unread(counts: crate::service::push::Counts) -> UnreadNotificationsCount {
    let mut out = UnreadNotificationsCount::new();
    out.notification_count = UInt::new(counts.notifications);
    out.highlight_count = UInt::new(counts.highlights);
    out
}

fn state_section(events: Vec<ruma::serde::Raw<ruma::events::AnySyncStateEvent>>) -> StateEvents {
    let mut state = StateEvents::new();
    state.events = events;
    state
}

fn user_ids(ids: impl IntoIterator<Item = String>) -> Vec<ruma::OwnedUserId> {
    ids.into_iter()
        .filter_map(|id| ruma::OwnedUserId::try_from(id).ok())
        .collect()
}

fn into_response(result: SyncResult) -> Result<v3::Response, ApiError> {
    let mut response = v3::Response::new(sync_service::token(result.next_batch));
    response.account_data.events = result.account_data.iter().map(raw).collect::<Result<_, _>>()?;
    response.presence.events = result.presence.iter().map(raw).collect::<Result<_, _>>()?;
    response.to_device.events = result.to_device.into_iter().map(Raw::from_json).collect();
    response.device_lists.changed = user_ids(result.device_lists.changed);
    response.device_lists.left = user_ids(result.device_lists.left);
    response.device_one_time_keys_count = result
        .one_time_key_counts
        .into_iter()
        .map(|(algorithm, n)| {
            (
                OneTimeKeyAlgorithm::from(algorithm.as_str()),
                UInt::new(n).unwrap_or_default(),
            )
        })
        .collect();
    response.device_unused_fallback_key_types = Some(
        result
            .unused_fallback_key_types
            .iter()
            .map(|a| OneTimeKeyAlgorithm::from(a.as_str()))
            .collect(),
    );
    for room in result.rooms {
        let timeline_events = room.timeline.into_iter().map(Raw::from_json).collect();
        let account_data = room.account_data.iter().map(raw).collect::<Result<Vec<_>, _>>()?;
        let mut timeline = Timeline::new();
        timeline.events = timeline_events;
        timeline.limited = room.limited;
        timeline.prev_batch = room.prev_batch;
        match room.section {
            RoomSection::Join => {
                let mut joined = JoinedRoom::new();
                joined.timeline = timeline;
                joined.state = State::Before(state_section(room.state.into_iter().map(Raw::from_json).collect()));
                joined.account_data.events = account_data;
                joined.summary.joined_member_count = UInt::new(room.joined_count);
                joined.summary.invited_member_count = UInt::new(room.invited_count);
                joined.summary.heroes = room.heroes;
                joined.ephemeral.events = room.ephemeral.iter().map(raw).collect::<Result<_, _>>()?;
                joined.unread_notifications = unread(room.unread);
                for (thread, counts) in room.unread_threads {
                    if let Ok(root) = ruma::OwnedEventId::try_from(thread) {
                        joined.unread_thread_notifications.insert(root, unread(counts));
                    }
                }
                response.rooms.join.insert(room.room_id, joined);
            }
            RoomSection::Leave => {
                let mut left = LeftRoom::new();
                left.timeline = timeline;
                left.state = State::Before(state_section(room.state.into_iter().map(Raw::from_json).collect()));
                left.account_data.events = account_data;
                response.rooms.leave.insert(room.room_id, left);
            }
            RoomSection::Invite => {
                let stripped: Vec<_> = room.state.into_iter().map(Raw::from_json).collect();
                let invited = InvitedRoom::from(InviteState::from(stripped));
                response.rooms.invite.insert(room.room_id, invited);
            }
            RoomSection::Knock => {
                let stripped: Vec<_> = room.state.into_iter().map(Raw::from_json).collect();
                let mut knock_state = KnockState::new();
                knock_state.events = stripped;
                let knocked = KnockedRoom::from(knock_state);
                response.rooms.knock.insert(room.room_id, knocked);
            }
        }
    }
    Ok(response)
}
