//! Sending and reading events: messages, state, redactions, history.

use std::sync::Arc;

use ruma::api::client::message::{get_message_events, send_message_event};
use ruma::api::client::redact::redact_event;
use ruma::api::client::room::get_event_by_timestamp;
use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use ruma::api::Direction as ApiDirection;
use ruma::events::TimelineEventType;
use ruma::serde::Raw;
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value as JsonValue;

use super::raw;
use crate::api::router::Hooks;
use crate::api::{ApiError, Router, Ruma};
use crate::service::rate_limits::RateClass;
use crate::service::timeline::{EventSpec, Pagination, Txn};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    let limited = Hooks::default().limited(RateClass::Message);
    router.add_with(limited, send_message);
    router.add_with(limited, send_state);
    router.add(state);
    router.add(state_for_key);
    router.add_with(limited, redact);
    router.add(messages);
    router.add(timestamp_to_event);
}

/// An event content from a request body: a JSON object.
fn content(json: &str) -> Result<CanonicalJsonObject, ApiError> {
    let value: JsonValue = serde_json::from_str(json).map_err(|e| ApiError::NotJson(e.to_string()))?;
    match ruma::CanonicalJsonValue::try_from(value) {
        Ok(ruma::CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::BadJson("event content must be a JSON object".to_owned())),
        Err(e) => Err(ApiError::BadJson(format!("event content is not canonical JSON: {e}"))),
    }
}

/// The `?ts=` of a request: the time an appservice says its event was
/// sent (timestamp massaging); ignored from anyone else, as the spec
/// allows it only to appservices.
fn massaged_ts<T>(
    req: &Ruma<T>,
    ts: Option<ruma::MilliSecondsSinceUnixEpoch>,
) -> Option<ruma::MilliSecondsSinceUnixEpoch> {
    ts.filter(|_| req.appservice.is_some())
}

/// Appends a client's event under its device's transaction ID.
async fn send_in_transaction(
    services: Arc<Services>,
    user: OwnedUserId,
    device_id: String,
    room_id: OwnedRoomId,
    txn_id: String,
    spec: EventSpec,
) -> Result<OwnedEventId, ApiError> {
    let txn = Txn { device_id, txn_id };
    Ok(services
        .run_write(move |s| s.timeline.append(s, &room_id, &user, spec, Some(&txn)))
        .await?)
}

async fn send_message(
    services: Arc<Services>,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<send_message_event::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device()?.to_owned();
    let origin_server_ts = massaged_ts(&req, req.body.timestamp);
    let body = req.body;
    let event_type: TimelineEventType = body.event_type.to_string().into();
    // State and redactions have endpoints of their own.
    if event_type == TimelineEventType::RoomRedaction {
        return Err(ApiError::BadJson("send redactions through /redact".to_owned()));
    }
    let spec = EventSpec {
        event_type,
        content: content(body.body.json().get())?,
        state_key: None,
        redacts: None,
        origin_server_ts,
    };
    let event_id = send_in_transaction(services, user, device, body.room_id, body.txn_id.to_string(), spec).await?;
    Ok(send_message_event::v3::Response::new(event_id))
}

async fn send_state(
    services: Arc<Services>,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let origin_server_ts = massaged_ts(&req, req.body.timestamp);
    let body = req.body;
    let event_content = content(body.body.json().get())?;
    let event_type = body.event_type.to_string();
    let event_id = services
        .run(move |s| {
            s.rooms.send_state(
                s,
                &body.room_id,
                &user,
                &event_type,
                &body.state_key,
                event_content,
                origin_server_ts,
            )
        })
        .await?;
    Ok(send_state_event::v3::Response::new(event_id))
}

async fn state(
    services: Arc<Services>,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let room_id = req.body.room_id;
    let events = services
        .run(move |s| s.timeline.readable_state(s, &user, &room_id))
        .await?;
    let list = events
        .iter()
        .map(|e| raw(&e.to_client(true, None)))
        .collect::<Result<_, _>>()?;
    Ok(get_state_events::v3::Response::new(list))
}

async fn state_for_key(
    services: Arc<Services>,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response, ApiError> {
    use ruma::api::client::state::get_state_event_for_key::v3::StateEventFormat;
    let user = req.user()?.to_owned();
    let body = req.body;
    let event_type = body.event_type.to_string();
    let state_key = body.state_key;
    let room_id = body.room_id;
    let event = services
        .run(move |s| {
            s.timeline
                .readable_state(s, &user, &room_id)?
                .into_iter()
                .find(|e| e.event_type() == event_type && e.state_key() == Some(state_key.as_str()))
                .ok_or_else(|| crate::service::ServiceError::NotFound("no such state event".to_owned()))
        })
        .await?;
    let value = match body.format {
        StateEventFormat::Event => event.to_client(true, None),
        _ => event.to_client(true, None)["content"].clone(),
    };
    let raw_value =
        serde_json::value::to_raw_value(&value).map_err(|e| ApiError::Internal(format!("serializing: {e}")))?;
    Ok(get_state_event_for_key::v3::Response::new(raw_value))
}

async fn redact(
    services: Arc<Services>,
    req: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device()?.to_owned();
    let body = req.body;
    let mut redaction = CanonicalJsonObject::new();
    if let Some(reason) = &body.reason {
        redaction.insert("reason".to_owned(), reason.as_str().into());
    }
    let spec = EventSpec {
        event_type: TimelineEventType::RoomRedaction,
        content: redaction,
        state_key: None,
        redacts: Some(body.event_id),
        origin_server_ts: None,
    };
    let event_id = send_in_transaction(services, user, device, body.room_id, body.txn_id.to_string(), spec).await?;
    Ok(redact_event::v3::Response::new(event_id))
}

async fn messages(
    services: Arc<Services>,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device()?.to_owned();
    let body = req.body;
    let pagination = Pagination {
        from: body.from,
        to: body.to,
        backward: body.dir == ApiDirection::Backward,
        limit: usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX),
        filter: body.filter,
    };
    let page = services
        .federation
        .messages(&services, user, device, body.room_id, pagination)
        .await?;
    let mut response = get_message_events::v3::Response::new();
    response.start = page.start;
    response.end = page.end;
    response.chunk = page.chunk.into_iter().map(Raw::from_json).collect();
    response.state = page.state.iter().map(raw).collect::<Result<_, _>>()?;
    Ok(response)
}

async fn timestamp_to_event(
    services: Arc<Services>,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let ts: u64 = body.ts.get().into();
    let forward = body.dir == ApiDirection::Forward;
    let (event_id, found_ts) = services
        .federation
        .event_at_time(&services, user, body.room_id, ts, forward)
        .await?;
    let found_ts = ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new(found_ts).unwrap_or_default());
    Ok(get_event_by_timestamp::v1::Response::new(event_id, found_ts))
}
