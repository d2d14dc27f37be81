//! Events on their way to appservices: the timeline subscriber that queues
//! each event an appservice is interested in (in the event's own batch,
//! through the same outbox as federation), and the outbox transport that
//! sends an appservice's queue as `PUT /_matrix/app/v1/transactions/{txnId}`,
//! with the ephemeral and device items of `ephemeral.rs` in their fields.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use ruma::events::TimelineEventType;
use ruma::state_res::Event;
use ruma::RoomId;
use serde::Serialize;
use serde_json::value::RawValue;

use super::ephemeral::AppserviceEdu;
use super::{Appservice, AppservicesService};
use crate::database::outbox::OutboxItem;
use crate::database::Batch;
use crate::service::outbox::{DeliveryFailed, Destination, OutboxService, StagedForEvents, Transaction, Transport};
use crate::service::timeline::{EventSubscriber, PersistedEvent, StoredEvent};
use crate::service::{ServiceResult, Services};

/// Queues every event for the appservices interested in it.
pub struct AppserviceSender {
    appservices: Arc<AppservicesService>,
    staged: StagedForEvents,
}

impl AppserviceSender {
    pub fn new(appservices: Arc<AppservicesService>, outbox: Arc<OutboxService>) -> Self {
        Self {
            appservices,
            staged: StagedForEvents::new(outbox),
        }
    }
}

/// Whether `appservice` is told of `event` (the spec's rules): its sender,
/// or the user a member event is about, is in a namespace, or it is
/// interested in the room.
fn interested(s: &Services, appservice: &Appservice, event: &PersistedEvent<'_>) -> ServiceResult<bool> {
    if appservice.is_user_in_namespace(event.pdu.sender().as_str()) {
        return Ok(true);
    }
    if event.pdu.event_type() == &TimelineEventType::RoomMember
        && event
            .pdu
            .state_key()
            .is_some_and(|k| appservice.is_user_in_namespace(k))
    {
        return Ok(true);
    }
    interested_in_room(s, appservice, event.room_id)
}

/// Whether `appservice` is interested in everything of `room_id`: the
/// room's ID or one of its aliases, or one of its joined members is in a
/// namespace.
pub(super) fn interested_in_room(s: &Services, appservice: &Appservice, room_id: &RoomId) -> ServiceResult<bool> {
    if appservice.is_room_in_namespace(room_id.as_str()) {
        return Ok(true);
    }
    if !appservice.registration.namespaces.aliases.is_empty()
        && s.rooms
            .local_aliases(room_id)?
            .iter()
            .any(|alias| appservice.is_alias_in_namespace(alias))
    {
        return Ok(true);
    }
    Ok(s.timeline
        .members(room_id)?
        .iter()
        .any(|(user, membership)| membership == "join" && appservice.is_user_in_namespace(user)))
}

impl EventSubscriber for AppserviceSender {
    fn stage(&self, s: &Services, batch: &mut Batch, event: &PersistedEvent<'_>) -> ServiceResult<()> {
        let mut destinations = Vec::new();
        for appservice in self.appservices.all().iter() {
            if appservice.registration.url.is_some() && interested(s, appservice, event)? {
                destinations.push(Destination::Appservice(appservice.id().to_owned()));
            }
        }
        if destinations.is_empty() {
            return Ok(());
        }
        // Appservices read events in the client format.
        let stored = StoredEvent {
            event_id: event.event_id.to_owned(),
            count: event.count,
            json: event.object.clone(),
            txn: None,
        };
        let item = OutboxItem::Pdu {
            event_id: event.event_id.to_string(),
            json: stored.to_client(true, None).to_string(),
        };
        self.staged.stage(batch, event.event_id, destinations, &item)
    }

    fn committed(&self, event: &PersistedEvent<'_>) {
        self.staged.committed(event.event_id);
    }

    fn aborted(&self, event: &PersistedEvent<'_>) {
        self.staged.aborted(event.event_id);
    }
}

/// Sends outbox transactions to appservices.
pub struct AppserviceTransport {
    pub appservices: Arc<AppservicesService>,
}

impl Transport for AppserviceTransport {
    fn deliver<'a>(
        &'a self,
        destination: &'a Destination,
        transaction: &'a Transaction,
    ) -> BoxFuture<'a, Result<(), DeliveryFailed>> {
        Box::pin(async move {
            let Destination::Appservice(id) = destination else {
                return Err(DeliveryFailed(format!("{destination:?} is not an appservice")));
            };
            let Some(appservice) = self.appservices.get(id) else {
                // Unregistered since: what waited for it has nowhere to go.
                tracing::info!(%id, "dropping a transaction for an appservice no longer registered");
                return Ok(());
            };
            let body = transaction_body(transaction);
            self.appservices
                .send_transaction(&appservice, &transaction.txn_id, &body)
                .await
                .map_err(|e| DeliveryFailed(e.to_string()))
        })
    }
}

/// A transaction as the appservice reads it: events, ephemeral events
/// under the stable and MSC2409 names, and MSC3202's device data.
#[derive(Serialize, Default)]
pub struct TransactionBody {
    events: Vec<Box<RawValue>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ephemeral: Vec<Box<RawValue>>,
    #[serde(rename = "de.sorunome.msc2409.ephemeral", skip_serializing_if = "Vec::is_empty")]
    ephemeral_msc2409: Vec<Box<RawValue>>,
    #[serde(rename = "de.sorunome.msc2409.to_device", skip_serializing_if = "Vec::is_empty")]
    to_device: Vec<Box<RawValue>>,
    #[serde(
        rename = "org.matrix.msc3202.device_lists",
        skip_serializing_if = "DeviceLists::is_empty"
    )]
    device_lists: DeviceLists,
    /// user → device → algorithm → count.
    #[serde(
        rename = "org.matrix.msc3202.device_one_time_keys_count",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    one_time_keys_count: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// The same under the name some bridges read (Synapse sends both).
    #[serde(
        rename = "org.matrix.msc3202.device_one_time_key_counts",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    one_time_key_counts: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// user → device → algorithms.
    #[serde(
        rename = "org.matrix.msc3202.device_unused_fallback_key_types",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    unused_fallback_key_types: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

#[derive(Serialize, Default)]
struct DeviceLists {
    changed: BTreeSet<String>,
    /// Not computed (nor is it by Synapse); always empty.
    left: BTreeSet<String>,
}

impl DeviceLists {
    fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

/// The transaction's body. An item that cannot be read is left out with
/// a warning: it never could be, and must not hold up the rest.
pub(super) fn transaction_body(transaction: &Transaction) -> TransactionBody {
    let mut body = TransactionBody::default();
    for (event_id, json) in &transaction.pdus {
        match RawValue::from_string(json.clone()) {
            Ok(event) => body.events.push(event),
            Err(e) => tracing::warn!(%event_id, error = %e, "unreadable queued appservice event left out"),
        }
    }
    for json in &transaction.edus {
        let edu = match AppserviceEdu::parse(json) {
            Ok(edu) => edu,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable queued appservice item left out");
                continue;
            }
        };
        match edu {
            AppserviceEdu::Ephemeral(event) => {
                body.ephemeral_msc2409.push(event.clone());
                body.ephemeral.push(event);
            }
            AppserviceEdu::ToDevice(message) => body.to_device.push(message),
            AppserviceEdu::DeviceListChanged(user) => {
                body.device_lists.changed.insert(user);
            }
            AppserviceEdu::DeviceKeys {
                user_id,
                device_id,
                one_time_keys_count,
                unused_fallback_key_types,
            } => {
                // Later items are newer: they replace earlier ones.
                body.one_time_keys_count
                    .entry(user_id.clone())
                    .or_default()
                    .insert(device_id.clone(), one_time_keys_count);
                body.unused_fallback_key_types
                    .entry(user_id)
                    .or_default()
                    .insert(device_id, unused_fallback_key_types);
            }
        }
    }
    body.one_time_key_counts = body.one_time_keys_count.clone();
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edu(json: serde_json::Value) -> String {
        json.to_string()
    }

    /// Each item lands in its field; a device's newer counts replace older ones.
    #[test]
    fn the_body_puts_each_item_in_its_field() {
        let keys = |count: u64| {
            edu(serde_json::json!({"device_keys": {
                "user_id": "@b:x", "device_id": "D",
                "one_time_keys_count": {"signed_curve25519": count},
                "unused_fallback_key_types": [],
            }}))
        };
        let transaction = Transaction {
            txn_id: "1-5".to_owned(),
            pdus: vec![("$e".to_owned(), r#"{"type":"m.room.message"}"#.to_owned())],
            edus: vec![
                edu(serde_json::json!({"ephemeral": {"type": "m.typing", "room_id": "!r:x"}})),
                keys(5),
                edu(serde_json::json!({"device_list_changed": "@b:x"})),
                keys(4),
                edu(serde_json::json!({"to_device": {"type": "m.t", "to_user_id": "@b:x"}})),
                "not an item".to_owned(),
            ],
        };
        let body = serde_json::to_value(transaction_body(&transaction)).unwrap();
        assert_eq!(body["events"], serde_json::json!([{"type": "m.room.message"}]));
        let typing = serde_json::json!([{"type": "m.typing", "room_id": "!r:x"}]);
        assert_eq!(body["ephemeral"], typing);
        assert_eq!(body["de.sorunome.msc2409.ephemeral"], typing);
        assert_eq!(
            body["de.sorunome.msc2409.to_device"],
            serde_json::json!([{"type": "m.t", "to_user_id": "@b:x"}])
        );
        assert_eq!(
            body["org.matrix.msc3202.device_lists"],
            serde_json::json!({"changed": ["@b:x"], "left": []})
        );
        let counts = serde_json::json!({"@b:x": {"D": {"signed_curve25519": 4}}});
        assert_eq!(body["org.matrix.msc3202.device_one_time_keys_count"], counts);
        assert_eq!(body["org.matrix.msc3202.device_one_time_key_counts"], counts);
        assert_eq!(
            body["org.matrix.msc3202.device_unused_fallback_key_types"],
            serde_json::json!({"@b:x": {"D": []}})
        );

        // Nothing but events: no empty extra fields.
        let bare = Transaction {
            edus: Vec::new(),
            ..transaction
        };
        let body = serde_json::to_value(transaction_body(&bare)).unwrap();
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    }
}
