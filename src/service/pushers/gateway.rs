//! Notifications for push gateways: what `push::notify` queues for each
//! http pusher of a notified user (in the event's batch, through the
//! outbox), the count-only badge updates `push::clear` queues when a
//! receipt lowers the counts (in the receipt's batch), and the outbox
//! transport that POSTs each one to the pusher's URL
//! (`/_matrix/push/v1/notify`, one notification per request), drops those
//! that waited too long, and removes the pushers whose pushkeys the gateway
//! rejects.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use ruma::api::client::push::PusherKind;
use ruma::push::{Action, HttpPusherData, PushFormat};
use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue};

use super::{PusherId, PushersService, StoredPusher};
use crate::service::address_guard::AddressGuard;
use crate::service::now_ms;
use crate::service::outbox::{DeliveryFailed, Destination, Transaction, Transport};
use crate::service::push::RoomContext;
use crate::service::rooms::naming;

type JsonMap = Map<String, JsonValue>;

/// What is queued for a pusher: the notification without its `devices`,
/// which the transport adds from the pusher as it is when sent, the
/// tweaks of the push rule that matched, and when it was queued.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueuedNotification {
    pub notification: JsonMap,
    pub tweaks: JsonMap,
    /// In ms since the Unix epoch; `None` in what was queued before it was
    /// kept (never too old, then).
    #[serde(default)]
    pub queued_ms: Option<u64>,
}

impl QueuedNotification {
    /// A badge update is about no event.
    fn is_badge_update(&self) -> bool {
        !self.notification.contains_key("event_id")
    }
}

/// What a user has not yet read, in all rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Unread notifications.
    pub unread: u64,
    /// Unread notifications that rang them (see `push::rings`).
    pub missed_calls: u64,
}

impl Counts {
    /// As `counts` in a notification; with `zeros` false, counts of zero
    /// are left out, as the spec asks.
    fn to_json(self, zeros: bool) -> JsonValue {
        let mut counts = JsonMap::new();
        for (name, value) in [("unread", self.unread), ("missed_calls", self.missed_calls)] {
            if zeros || value > 0 {
                counts.insert(name.to_owned(), value.into());
            }
        }
        counts.into()
    }
}

/// The tweaks `actions` set (`highlight` without a value is true).
pub fn tweaks(actions: &[Action]) -> JsonMap {
    let mut tweaks = JsonMap::new();
    for action in actions {
        let Action::SetTweak(_) = action else { continue };
        let Ok(JsonValue::Object(mut set)) = serde_json::to_value(action) else {
            continue;
        };
        if let Some(JsonValue::String(name)) = set.remove("set_tweak") {
            tweaks.insert(name, set.remove("value").unwrap_or(JsonValue::Bool(true)));
        }
    }
    tweaks
}

/// The notification of `event` (client format) for `user`, with their
/// `counts` in all rooms.
pub fn notification(
    event: &JsonValue,
    user: &UserId,
    context: &RoomContext,
    tweaks: &JsonMap,
    counts: Counts,
) -> QueuedNotification {
    let mut n = JsonMap::new();
    for field in ["event_id", "room_id", "type", "sender", "content"] {
        if let Some(value) = event.get(field) {
            n.insert(field.to_owned(), value.clone());
        }
    }
    if let Some(name) = event
        .get("sender")
        .and_then(JsonValue::as_str)
        .and_then(|sender| context.display_names.get(sender))
    {
        n.insert("sender_display_name".to_owned(), name.clone().into());
    }
    // As clients name a room: its name, else its canonical alias, else
    // after its members.
    let room_name = context
        .room_name
        .clone()
        .or_else(|| context.room_alias.clone())
        .unwrap_or_else(|| {
            naming::from_members(&context.members, user, |member| {
                context
                    .display_names
                    .get(member.as_str())
                    .cloned()
                    .unwrap_or_else(|| member.to_string())
            })
        });
    n.insert("room_name".to_owned(), room_name.into());
    if let Some(alias) = &context.room_alias {
        n.insert("room_alias".to_owned(), alias.clone().into());
    }
    let event_type = event.get("type").and_then(JsonValue::as_str);
    if event_type == Some("m.room.member") && event.get("state_key").and_then(JsonValue::as_str) == Some(user.as_str())
    {
        n.insert("user_is_target".to_owned(), true.into());
    }
    // Alerting ones go first; an encrypted event may be anything.
    let urgent = tweaks.get("highlight").is_some_and(|h| h != &JsonValue::Bool(false))
        || tweaks.contains_key("sound")
        || event_type == Some("m.room.encrypted");
    n.insert("prio".to_owned(), if urgent { "high" } else { "low" }.into());
    n.insert("counts".to_owned(), counts.to_json(false));
    QueuedNotification {
        notification: n,
        tweaks: tweaks.clone(),
        queued_ms: Some(now_ms()),
    }
}

/// A notification with only the user's counts, sent when reading lowered
/// them, so their devices update their badges. Zeros are sent, unlike in a
/// notification about an event: a gateway such as Sygnal sets the badge
/// only from a count that is there, so leaving out `unread: 0` would leave
/// the badge as it was. Like Synapse's badge updates, it has no event
/// fields; low priority, as nobody is alerted.
pub fn badge_update(counts: Counts) -> QueuedNotification {
    let mut n = JsonMap::new();
    n.insert("counts".to_owned(), counts.to_json(true));
    n.insert("prio".to_owned(), "low".into());
    QueuedNotification {
        notification: n,
        tweaks: JsonMap::new(),
        queued_ms: Some(now_ms()),
    }
}

/// The request body for `pusher`: the notification in the pusher's
/// format, for its one device.
fn request_body(queued: QueuedNotification, pusher: &StoredPusher, data: &HttpPusherData) -> JsonValue {
    let mut notification = queued.notification;
    if data.format == Some(PushFormat::EventIdOnly) {
        notification.retain(|k, _| matches!(k.as_str(), "event_id" | "room_id" | "counts" | "prio"));
    }
    // Everything the client gave but the URL.
    let mut device_data = match serde_json::to_value(data) {
        Ok(JsonValue::Object(map)) => map,
        _ => JsonMap::new(),
    };
    device_data.remove("url");
    let device = serde_json::json!({
        "app_id": pusher.pusher.ids.app_id,
        "pushkey": pusher.pusher.ids.pushkey,
        "pushkey_ts": pusher.set_ms / 1000,
        "data": device_data,
        "tweaks": queued.tweaks,
    });
    notification.insert("devices".to_owned(), JsonValue::Array(vec![device]));
    serde_json::json!({ "notification": notification })
}

/// How long a push gateway may take to answer.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a badge update is retried at most: a later notification or
/// badge update carries newer counts anyway.
const BADGE_UPDATE_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// Sends queued notifications to push gateways.
pub struct PusherTransport {
    pushers: Arc<PushersService>,
    http: reqwest::Client,
    /// Users choose gateway URLs: like URL previews, they reach public
    /// addresses only, unless the operator allows a range
    /// (`push_gateway_allowed_ranges`).
    guard: Arc<AddressGuard>,
    /// A notification not delivered within this is dropped
    /// (`push_notification_max_age`): a phone ringing for a day-old
    /// message is wrong.
    max_age: Duration,
}

impl PusherTransport {
    pub fn new(pushers: Arc<PushersService>, allowed_ranges: Vec<crate::config::IpRange>, max_age: Duration) -> Self {
        let guard = Arc::new(AddressGuard::new(allowed_ranges));
        let http = reqwest::Client::builder()
            .timeout(GATEWAY_TIMEOUT)
            .dns_resolver(Arc::clone(&guard))
            // A redirect or a proxy from the environment would lead around
            // the address check.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            pushers,
            http,
            guard,
            max_age,
        }
    }

    async fn push(&self, id: &PusherId, queued: &str) -> Result<(), DeliveryFailed> {
        let queued: QueuedNotification = match serde_json::from_str(queued) {
            Ok(queued) => queued,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable queued notification left out");
                return Ok(());
            }
        };
        if let Some(queued_ms) = queued.queued_ms {
            let max_age = if queued.is_badge_update() {
                self.max_age.min(BADGE_UPDATE_MAX_AGE)
            } else {
                self.max_age
            };
            let age = Duration::from_millis(now_ms().saturating_sub(queued_ms));
            if age > max_age {
                tracing::warn!(
                    user_id = %id.user_id, app_id = %id.app_id, age_s = age.as_secs(),
                    badge_update = queued.is_badge_update(),
                    "push notification not delivered in time; dropped"
                );
                return Ok(());
            }
        }
        let stored = self.pushers.get(id).map_err(|e| DeliveryFailed(e.to_string()))?;
        // Removed since: what waited for it has nowhere to go.
        let Some(stored) = stored else { return Ok(()) };
        let PusherKind::Http(data) = &stored.pusher.kind else {
            return Ok(());
        };
        let refused = reqwest::Url::parse(&data.url)
            .map_err(|e| e.to_string())
            .and_then(|url| self.guard.check_url(&url));
        if let Err(reason) = refused {
            tracing::warn!(user_id = %id.user_id, app_id = %id.app_id, %reason, "push gateway URL refused; notification dropped");
            return Ok(());
        }
        let body = request_body(queued, &stored, data);
        let response = self
            .http
            .post(&data.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| DeliveryFailed(format!("push gateway: {e}")))?;
        let status = response.status();
        if status.is_success() {
            let answer: JsonValue = response.json().await.unwrap_or_default();
            let rejected = answer
                .get("rejected")
                .and_then(JsonValue::as_array)
                .is_some_and(|keys| keys.iter().any(|k| k.as_str() == Some(id.pushkey.as_str())));
            if rejected {
                tracing::info!(user_id = %id.user_id, app_id = %id.app_id, "push gateway rejected the pushkey; pusher removed");
                self.pushers.remove(id).map_err(|e| DeliveryFailed(e.to_string()))?;
            }
            Ok(())
        } else if status.is_client_error()
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS
            && status != reqwest::StatusCode::REQUEST_TIMEOUT
        {
            // The gateway will not take this notification, now or later.
            tracing::warn!(user_id = %id.user_id, app_id = %id.app_id, %status, "push gateway refused a notification; dropped");
            Ok(())
        } else {
            Err(DeliveryFailed(format!("push gateway answered {status}")))
        }
    }
}

impl Transport for PusherTransport {
    fn deliver<'a>(
        &'a self,
        destination: &'a Destination,
        transaction: &'a Transaction,
    ) -> BoxFuture<'a, Result<(), DeliveryFailed>> {
        Box::pin(async move {
            let Destination::Pusher(id) = destination else {
                return Err(DeliveryFailed(format!("{destination:?} is not a pusher")));
            };
            for queued in &transaction.edus {
                self.push(id, queued).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::api::client::push::{Pusher, PusherIds, PusherInit, PusherKind};

    fn event() -> JsonValue {
        serde_json::json!({
            "event_id": "$e", "room_id": "!r:x", "type": "m.room.message",
            "sender": "@a:x", "content": {"body": "hi @b"}, "origin_server_ts": 1,
        })
    }

    fn context() -> RoomContext {
        RoomContext {
            member_count: 2,
            power_levels: None,
            recipients: Vec::new(),
            display_names: [("@a:x".to_owned(), "Alice".to_owned())].into(),
            members: naming::Members::collect([("@a:x", "join"), ("@b:x", "join"), ("@c:x", "invite")]),
            room_name: Some("Room".to_owned()),
            room_alias: None,
        }
    }

    fn counts(unread: u64, missed_calls: u64) -> Counts {
        Counts { unread, missed_calls }
    }

    fn pusher(format: Option<PushFormat>) -> (StoredPusher, HttpPusherData) {
        let mut data = HttpPusherData::new("http://gw/_matrix/push/v1/notify".to_owned());
        data.format = format;
        data.data.insert("custom".to_owned(), "kept".into());
        let pusher = Pusher::from(PusherInit {
            ids: PusherIds::new("key".to_owned(), "app".to_owned()),
            kind: PusherKind::Http(data.clone()),
            app_display_name: "App".to_owned(),
            device_display_name: "Phone".to_owned(),
            profile_tag: None,
            lang: "en".to_owned(),
        });
        (StoredPusher { pusher, set_ms: 5_000 }, data)
    }

    #[test]
    fn the_full_notification_names_event_room_and_device() {
        let user = ruma::user_id!("@b:x");
        let actions: Vec<Action> = serde_json::from_value(serde_json::json!(
            ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]
        ))
        .unwrap();
        let tweaks = tweaks(&actions);
        assert_eq!(
            JsonValue::Object(tweaks.clone()),
            serde_json::json!({"sound": "default", "highlight": true})
        );
        let queued = notification(&event(), user, &context(), &tweaks, counts(3, 0));
        let (stored, data) = pusher(None);
        let body = request_body(queued, &stored, &data);
        assert_eq!(
            body,
            serde_json::json!({"notification": {
                "event_id": "$e", "room_id": "!r:x", "type": "m.room.message", "sender": "@a:x",
                "content": {"body": "hi @b"}, "sender_display_name": "Alice", "room_name": "Room",
                "prio": "high", "counts": {"unread": 3},
                "devices": [{"app_id": "app", "pushkey": "key", "pushkey_ts": 5,
                    "data": {"custom": "kept"}, "tweaks": {"sound": "default", "highlight": true}}],
            }})
        );
    }

    #[test]
    fn event_id_only_leaves_the_event_out() {
        let queued = notification(
            &event(),
            ruma::user_id!("@b:x"),
            &context(),
            &JsonMap::new(),
            counts(0, 0),
        );
        let (stored, data) = pusher(Some(PushFormat::EventIdOnly));
        let body = request_body(queued, &stored, &data);
        let n = body["notification"].as_object().unwrap();
        let mut fields: Vec<&str> = n.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["counts", "devices", "event_id", "prio", "room_id"]);
        assert_eq!(n["prio"], "low");
        assert_eq!(n["counts"], serde_json::json!({}));
        assert_eq!(
            n["devices"][0]["data"],
            serde_json::json!({"format": "event_id_only", "custom": "kept"})
        );
    }

    #[test]
    fn a_badge_update_has_the_counts_zeros_included_and_no_event() {
        let queued = badge_update(counts(0, 2));
        assert!(queued.is_badge_update());
        let (stored, data) = pusher(None);
        let body = request_body(queued, &stored, &data);
        let n = body["notification"].as_object().unwrap();
        let mut fields: Vec<&str> = n.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["counts", "devices", "prio"]);
        assert_eq!(n["counts"], serde_json::json!({"unread": 0, "missed_calls": 2}));
        assert_eq!(n["devices"][0]["pushkey"], "key");
    }

    #[test]
    fn missed_calls_are_counted_beside_unread() {
        let user = ruma::user_id!("@b:x");
        let queued = notification(&event(), user, &context(), &JsonMap::new(), counts(4, 1));
        assert!(!queued.is_badge_update());
        assert_eq!(
            queued.notification["counts"],
            serde_json::json!({"unread": 4, "missed_calls": 1})
        );
    }

    #[test]
    fn a_room_without_a_name_goes_by_its_alias_else_its_members() {
        let user = ruma::user_id!("@b:x");
        let mut context = context();
        context.room_name = None;
        context.room_alias = Some("#launch:x".to_owned());
        let queued = notification(&event(), user, &context, &JsonMap::new(), counts(1, 0));
        assert_eq!(queued.notification["room_name"], "#launch:x");
        context.room_alias = None;
        let queued = notification(&event(), user, &context, &JsonMap::new(), counts(1, 0));
        // Carol has no display name: her user ID stands for her.
        assert_eq!(queued.notification["room_name"], "Alice and @c:x");
    }
}
