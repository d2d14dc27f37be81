//! Relations, threads and event context.

use std::sync::Arc;

use ruma::api::client::context::get_context;
use ruma::api::client::relations::{
    get_relating_events, get_relating_events_with_rel_type, get_relating_events_with_rel_type_and_event_type,
};
use ruma::api::client::threads::get_threads;
use ruma::api::Direction as ApiDirection;
use ruma::serde::Raw;
use ruma::{OwnedEventId, OwnedRoomId, UInt};

use super::raw;
use crate::api::{ApiError, Router, Ruma};
use crate::service::sync::{parse_token, token};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(relations);
    router.add(relations_by_type);
    router.add(relations_by_type_and_event_type);
    router.add(threads);
    router.add(context);
}

/// How many relations deep `recurse` follows (the spec asks for at least 3).
const RECURSION_DEPTH: usize = 3;

/// The `recursion_depth` a response carries: only when the client asked.
fn recursion_depth(recurse: bool) -> Option<UInt> {
    recurse.then(|| UInt::from(RECURSION_DEPTH as u32))
}

/// Events per page when the client names no limit.
const DEFAULT_LIMIT: usize = 50;

struct RelationQuery {
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    backward: bool,
    limit: Option<UInt>,
    /// `recurse`: also events relating to the relating events.
    recurse: bool,
}

type RelationAnswer<T> = (Vec<ruma::serde::Raw<T>>, Option<String>);

async fn query<T>(
    services: Arc<Services>,
    req_user: &ruma::UserId,
    device: &str,
    q: RelationQuery,
) -> Result<RelationAnswer<T>, ApiError> {
    let user = req_user.to_owned();
    let device = device.to_owned();
    let from = q.from.as_deref().map(parse_token).transpose()?;
    let to = q.to.as_deref().map(parse_token).transpose()?;
    let limit = q
        .limit
        .map_or(DEFAULT_LIMIT, |l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX));
    let (events, next) = services
        .run(move |s| {
            s.timeline.readable_snapshot(s, &user, &q.room_id)?;
            let page = s.relations.relations(
                s,
                &user,
                &q.room_id,
                &q.event_id,
                q.rel_type.as_deref(),
                q.event_type.as_deref(),
                from,
                to,
                q.backward,
                limit,
                if q.recurse { RECURSION_DEPTH } else { 1 },
            )?;
            Ok((
                s.timeline.client_events(s, &page.events, true, (&user, &device))?,
                page.next,
            ))
        })
        .await?;
    Ok((events.into_iter().map(Raw::from_json).collect(), next.map(token)))
}

async fn relations(
    services: Arc<Services>,
    req: Ruma<get_relating_events::v1::Request>,
) -> Result<get_relating_events::v1::Response, ApiError> {
    let (user, device) = (req.user()?.to_owned(), req.device()?.to_owned());
    let b = req.body;
    let q = RelationQuery {
        room_id: b.room_id,
        event_id: b.event_id,
        rel_type: None,
        event_type: None,
        from: b.from,
        to: b.to,
        backward: b.dir == ApiDirection::Backward,
        limit: b.limit,
        recurse: b.recurse,
    };
    let recurse = q.recurse;
    let (chunk, next) = query(services, &user, &device, q).await?;
    let mut response = get_relating_events::v1::Response::new(chunk);
    response.next_batch = next;
    response.recursion_depth = recursion_depth(recurse);
    Ok(response)
}

async fn relations_by_type(
    services: Arc<Services>,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type::v1::Response, ApiError> {
    let (user, device) = (req.user()?.to_owned(), req.device()?.to_owned());
    let b = req.body;
    let q = RelationQuery {
        room_id: b.room_id,
        event_id: b.event_id,
        rel_type: Some(b.rel_type.to_string()),
        event_type: None,
        from: b.from,
        to: b.to,
        backward: b.dir == ApiDirection::Backward,
        limit: b.limit,
        recurse: b.recurse,
    };
    let recurse = q.recurse;
    let (chunk, next) = query(services, &user, &device, q).await?;
    let mut response = get_relating_events_with_rel_type::v1::Response::new(chunk);
    response.next_batch = next;
    response.recursion_depth = recursion_depth(recurse);
    Ok(response)
}

async fn relations_by_type_and_event_type(
    services: Arc<Services>,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response, ApiError> {
    let (user, device) = (req.user()?.to_owned(), req.device()?.to_owned());
    let b = req.body;
    let q = RelationQuery {
        room_id: b.room_id,
        event_id: b.event_id,
        rel_type: Some(b.rel_type.to_string()),
        event_type: Some(b.event_type.to_string()),
        from: b.from,
        to: b.to,
        backward: b.dir == ApiDirection::Backward,
        limit: b.limit,
        recurse: b.recurse,
    };
    let recurse = q.recurse;
    let (chunk, next) = query(services, &user, &device, q).await?;
    let mut response = get_relating_events_with_rel_type_and_event_type::v1::Response::new(chunk);
    response.next_batch = next;
    response.recursion_depth = recursion_depth(recurse);
    Ok(response)
}

async fn threads(
    services: Arc<Services>,
    req: Ruma<get_threads::v1::Request>,
) -> Result<get_threads::v1::Response, ApiError> {
    use get_threads::v1::IncludeThreads;
    let (user, device) = (req.user()?.to_owned(), req.device()?.to_owned());
    let b = req.body;
    let from = b.from.as_deref().map(parse_token).transpose()?;
    let limit = b
        .limit
        .map_or(DEFAULT_LIMIT, |l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX));
    let participated = b.include == IncludeThreads::Participated;
    let (events, next) = services
        .run(move |s| {
            s.timeline.readable_snapshot(s, &user, &b.room_id)?;
            let page = s.relations.threads(s, &user, &b.room_id, participated, from, limit)?;
            Ok((
                s.timeline.client_events(s, &page.events, true, (&user, &device))?,
                page.next,
            ))
        })
        .await?;
    let mut response = get_threads::v1::Response::new(events.into_iter().map(Raw::from_json).collect());
    response.next_batch = next.map(token);
    Ok(response)
}

async fn context(
    services: Arc<Services>,
    req: Ruma<get_context::v3::Request>,
) -> Result<get_context::v3::Response, ApiError> {
    let (user, device) = (req.user()?.to_owned(), req.device()?.to_owned());
    let b = req.body;
    let limit = usize::try_from(u64::from(b.limit)).unwrap_or(usize::MAX);
    let ctx = services
        .run(move |s| {
            s.timeline
                .context(s, &user, &device, &b.room_id, &b.event_id, limit, &b.filter)
        })
        .await?;
    let mut response = get_context::v3::Response::new();
    response.start = Some(ctx.start);
    response.end = Some(ctx.end);
    response.events_before = ctx.events_before.into_iter().map(Raw::from_json).collect();
    response.event = Some(Raw::from_json(ctx.event));
    response.events_after = ctx.events_after.into_iter().map(Raw::from_json).collect();
    response.state = ctx.state.iter().map(raw).collect::<Result<_, _>>()?;
    Ok(response)
}
