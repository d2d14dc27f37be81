//! Receipts, read markers, typing notifications and room tags.

use std::sync::Arc;

use ruma::api::client::read_marker::set_read_marker;
use ruma::api::client::receipt::create_receipt;
use ruma::api::client::tag::{create_tag, delete_tag, get_tags};
use ruma::api::client::typing::create_typing_event;
use ruma::events::receipt::ReceiptThread;
use ruma::events::tag::Tags;
use serde_json::{json, Value as JsonValue};

use super::only_own;
use crate::api::router::{Hooks, JsonObject};
use crate::api::{ApiError, Router, Ruma};
use crate::service::receipts::{READ, READ_PRIVATE};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(receipt);
    router.add(read_markers);
    router.add_with(Hooks::body(typing_timeout_default), typing);
    router.add(tags);
    router.add(set_tag);
    router.add(delete_tag);
}

const FULLY_READ: &str = "m.fully_read";
const TAGS: &str = "m.tag";
/// The spec's limit on a tag's name.
const MAX_TAG_BYTES: usize = 255;

async fn receipt(
    services: Arc<Services>,
    req: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response, ApiError> {
    use create_receipt::v3::ReceiptType;
    let user = req.user()?.to_owned();
    let body = req.body;
    let thread = match &body.thread {
        ReceiptThread::Unthreaded => None,
        ReceiptThread::Main => Some("main".to_owned()),
        ReceiptThread::Thread(root) => Some(root.to_string()),
        _ => return Err(ApiError::InvalidParam("unknown thread_id".to_owned())),
    };
    services
        .run(move |s| match body.receipt_type {
            ReceiptType::Read => s
                .receipts
                .set(s, &user, &body.room_id, READ, &body.event_id, thread.as_deref()),
            ReceiptType::ReadPrivate => {
                s.receipts
                    .set(s, &user, &body.room_id, READ_PRIVATE, &body.event_id, thread.as_deref())
            }
            ReceiptType::FullyRead => set_fully_read(s, &user, &body.room_id, &body.event_id),
            _ => Err(ServiceError::InvalidParam("unknown receipt type".to_owned())),
        })
        .await?;
    Ok(create_receipt::v3::Response::new())
}

fn set_fully_read(
    s: &Services,
    user: &ruma::UserId,
    room_id: &ruma::RoomId,
    event_id: &ruma::EventId,
) -> Result<(), ServiceError> {
    if !s.timeline.is_joined(room_id, user)? {
        s.timeline.room_or_404(room_id)?;
        return Err(ServiceError::Forbidden("you are not in this room".to_owned()));
    }
    let content = json!({"event_id": event_id}).to_string();
    s.account_data.put(user, Some(room_id), FULLY_READ, &content)
}

async fn read_markers(
    services: Arc<Services>,
    req: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    services
        .run(move |s| {
            if let Some(event_id) = &body.fully_read {
                set_fully_read(s, &user, &body.room_id, event_id)?;
            }
            if let Some(event_id) = &body.read_receipt {
                s.receipts.set(s, &user, &body.room_id, READ, event_id, None)?;
            }
            if let Some(event_id) = &body.private_read_receipt {
                s.receipts.set(s, &user, &body.room_id, READ_PRIVATE, event_id, None)?;
            }
            Ok(())
        })
        .await?;
    Ok(set_read_marker::v3::Response::new())
}

/// How long a typing notice without a `timeout` lasts (ms). The spec
/// makes `timeout` optional; ruma requires it with `typing: true`.
const DEFAULT_TYPING_TIMEOUT_MS: u64 = 30_000;

fn typing_timeout_default(body: &mut JsonObject, _: &[&str]) -> Result<(), ApiError> {
    if body.get("typing") == Some(&JsonValue::Bool(true)) {
        body.entry("timeout")
            .or_insert(JsonValue::from(DEFAULT_TYPING_TIMEOUT_MS));
    }
    Ok(())
}

async fn typing(
    services: Arc<Services>,
    req: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response, ApiError> {
    use create_typing_event::v3::Typing;
    let user = req.user()?.to_owned();
    let body = req.body;
    only_own(&user, &body.user_id, "typing state")?;
    let timeout = match body.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    services
        .run(move |s| s.typing.set(s, &user, &body.room_id, timeout))
        .await?;
    Ok(create_typing_event::v3::Response::new())
}

/// The room's tags from the `m.tag` room account data.
fn read_tags(s: &Services, user: &ruma::UserId, room_id: &ruma::RoomId) -> Result<JsonValue, ServiceError> {
    match s.account_data.get(user, Some(room_id), TAGS) {
        Ok(raw) => serde_json::from_str(raw.get()).map_err(|e| ServiceError::Internal(format!("stored tags: {e}"))),
        Err(ServiceError::NotFound(_)) => Ok(json!({"tags": {}})),
        Err(e) => Err(e),
    }
}

async fn tags(services: Arc<Services>, req: Ruma<get_tags::v3::Request>) -> Result<get_tags::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    only_own(&user, &body.user_id, "tags")?;
    let content = services.run(move |s| read_tags(s, &user, &body.room_id)).await?;
    let tags: Tags = serde_json::from_value(content["tags"].clone()).unwrap_or_default();
    Ok(get_tags::v3::Response::new(tags))
}

async fn set_tag(
    services: Arc<Services>,
    req: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    only_own(&user, &body.user_id, "tags")?;
    if body.tag.len() > MAX_TAG_BYTES {
        return Err(ApiError::InvalidParam(format!(
            "a tag may have at most {MAX_TAG_BYTES} bytes"
        )));
    }
    let info = serde_json::to_value(&body.tag_info).map_err(|e| ApiError::Internal(e.to_string()))?;
    services
        .run(move |s| {
            let mut content = read_tags(s, &user, &body.room_id)?;
            // The client may have written `m.tag` itself, in any shape.
            if !content.is_object() {
                content = json!({});
            }
            if !content["tags"].is_object() {
                content["tags"] = json!({});
            }
            content["tags"][body.tag.as_str()] = info;
            s.account_data
                .put(&user, Some(&body.room_id), TAGS, &content.to_string())
        })
        .await?;
    Ok(create_tag::v3::Response::new())
}

async fn delete_tag(
    services: Arc<Services>,
    req: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    only_own(&user, &body.user_id, "tags")?;
    services
        .run(move |s| {
            let mut content = read_tags(s, &user, &body.room_id)?;
            if let Some(tags) = content["tags"].as_object_mut() {
                tags.remove(&body.tag);
            }
            s.account_data
                .put(&user, Some(&body.room_id), TAGS, &content.to_string())
        })
        .await?;
    Ok(delete_tag::v3::Response::new())
}
