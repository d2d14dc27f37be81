//! `/sync` v2, with its long-poll.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use ruma::api::client::filter::FilterDefinition;
use ruma::api::client::sync::sync_events::v3::{self, Filter};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value as JsonValue;

use crate::api::router::{authenticate_raw, Written};
use crate::api::{ApiError, Router, Ruma};
use crate::service::push::Counts;
use crate::service::sync::{self as sync_service, RoomSection, SyncResult};
use crate::service::{ServiceError, Services};

/// A long-poll never holds a connection longer than this.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many new stream positions are read on the HTTP worker
/// after a long-poll wakes; more go to the blocking pool.
const INLINE_WAKE_POSITIONS: u64 = 8;

pub fn register_routes(router: &mut Router) {
    router.add(sync);
    // Raw: deprecated since r0, so ruma has no request type for it.
    router.add_raw(
        Method::GET,
        &["/_matrix/client/v3/events", "/_matrix/client/r0/events"],
        events_stream,
    );
}

/// `GET /events`: the room events after `from` (or from now), waiting up
/// to `timeout` ms for one.
async fn events_stream(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    let (user, device) = authenticate_raw(&services, &req).await?;
    let mut from = None;
    let mut timeout = Duration::ZERO;
    for (key, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match key.as_ref() {
            "from" => from = Some(sync_service::parse_token(&value)?),
            "timeout" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|_| ApiError::InvalidParam("timeout must be a number of milliseconds".to_owned()))?;
                timeout = Duration::from_millis(ms).min(MAX_TIMEOUT);
            }
            _ => {}
        }
    }
    let watch = services.timeline.stream.subscribe(&user);
    let start = from.unwrap_or_else(|| services.timeline.stream.visible());
    let read = |up_to: u64| {
        let (user, device) = (user.clone(), device.to_string());
        services.run(move |s| sync_service::room_events_since(s, &user, &device, start, up_to))
    };
    let mut end = services.timeline.stream.visible();
    let mut chunk = read(end).await?;
    if chunk.is_empty() && !timeout.is_zero() {
        tracing::debug!(target: "conduit::wait", %user, since = end, "events stream waiting");
        services.timeline.stream.wait(watch, end, timeout).await;
        end = services.timeline.stream.visible();
        chunk = read(end).await?;
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "start": sync_service::token(start),
        "end": sync_service::token(end),
        "chunk": chunk,
    })))
}

async fn sync(services: Arc<Services>, req: Ruma<v3::Request>) -> Result<Written, ApiError> {
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

/// The response as clients read it. Written here rather than through
/// ruma's response type, which leaves empty sections and `limited: false`
/// out: Synapse writes every section, and clients index them without a
/// check (`rooms.join[id].ephemeral.events`, `timeline.limited`, …).
/// Events stay the JSON text they were written as.
#[derive(Serialize)]
struct SyncBody {
    next_batch: String,
    rooms: Rooms,
    presence: Events<JsonValue>,
    account_data: Events<JsonValue>,
    to_device: Events<Box<RawValue>>,
    device_lists: DeviceLists,
    device_one_time_keys_count: BTreeMap<String, u64>,
    device_unused_fallback_key_types: Vec<String>,
}

#[derive(Serialize)]
struct Events<T> {
    events: Vec<T>,
}

#[derive(Serialize)]
struct DeviceLists {
    changed: Vec<String>,
    left: Vec<String>,
}

#[derive(Serialize, Default)]
struct Rooms {
    join: BTreeMap<String, JoinedRoom>,
    invite: BTreeMap<String, InvitedRoom>,
    leave: BTreeMap<String, LeftRoom>,
    knock: BTreeMap<String, KnockedRoom>,
}

#[derive(Serialize)]
struct Timeline {
    events: Vec<Box<RawValue>>,
    limited: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_batch: Option<String>,
}

#[derive(Serialize)]
struct JoinedRoom {
    summary: Summary,
    state: Events<Box<RawValue>>,
    timeline: Timeline,
    ephemeral: Events<JsonValue>,
    account_data: Events<JsonValue>,
    unread_notifications: Unread,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    unread_thread_notifications: BTreeMap<String, Unread>,
}

#[derive(Serialize)]
struct Summary {
    /// Only for a room without a name or canonical alias.
    #[serde(rename = "m.heroes", skip_serializing_if = "Vec::is_empty")]
    heroes: Vec<String>,
    #[serde(rename = "m.joined_member_count")]
    joined: u64,
    #[serde(rename = "m.invited_member_count")]
    invited: u64,
}

#[derive(Serialize)]
struct Unread {
    notification_count: u64,
    highlight_count: u64,
}

impl From<Counts> for Unread {
    fn from(counts: Counts) -> Self {
        Self {
            notification_count: counts.notifications,
            highlight_count: counts.highlights,
        }
    }
}

#[derive(Serialize)]
struct LeftRoom {
    state: Events<Box<RawValue>>,
    timeline: Timeline,
    account_data: Events<JsonValue>,
}

#[derive(Serialize)]
struct InvitedRoom {
    invite_state: Events<Box<RawValue>>,
}

#[derive(Serialize)]
struct KnockedRoom {
    knock_state: Events<Box<RawValue>>,
}

fn into_response(result: SyncResult) -> Result<Written, ApiError> {
    let mut rooms = Rooms::default();
    for room in result.rooms {
        let room_id = room.room_id.to_string();
        let timeline = Timeline {
            events: room.timeline,
            limited: room.limited,
            prev_batch: room.prev_batch,
        };
        let state = Events { events: room.state };
        let account_data = Events {
            events: room.account_data,
        };
        match room.section {
            RoomSection::Join => {
                let joined = JoinedRoom {
                    summary: Summary {
                        heroes: room.heroes.into_iter().map(String::from).collect(),
                        joined: room.joined_count,
                        invited: room.invited_count,
                    },
                    state,
                    timeline,
                    ephemeral: Events { events: room.ephemeral },
                    account_data,
                    unread_notifications: room.unread.into(),
                    unread_thread_notifications: room
                        .unread_threads
                        .into_iter()
                        .map(|(thread, counts)| (thread, counts.into()))
                        .collect(),
                };
                rooms.join.insert(room_id, joined);
            }
            RoomSection::Leave => {
                let left = LeftRoom {
                    state,
                    timeline,
                    account_data,
                };
                rooms.leave.insert(room_id, left);
            }
            RoomSection::Invite => {
                rooms.invite.insert(room_id, InvitedRoom { invite_state: state });
            }
            RoomSection::Knock => {
                rooms.knock.insert(room_id, KnockedRoom { knock_state: state });
            }
        }
    }
    let body = SyncBody {
        next_batch: sync_service::token(result.next_batch),
        rooms,
        presence: Events {
            events: result.presence,
        },
        account_data: Events {
            events: result.account_data,
        },
        to_device: Events {
            events: result.to_device,
        },
        device_lists: DeviceLists {
            changed: result.device_lists.changed.into_iter().collect(),
            left: result.device_lists.left.into_iter().collect(),
        },
        device_one_time_keys_count: result.one_time_key_counts,
        device_unused_fallback_key_types: result.unused_fallback_key_types,
    };
    let json = serde_json::to_vec(&body).map_err(|e| ApiError::Internal(format!("sync response: {e}")))?;
    Ok(Written(HttpResponse::Ok().content_type("application/json").body(json)))
}
