//! Events on their way to appservices: the timeline subscriber that queues
//! each event an appservice is interested in (in the event's own batch,
//! through the same outbox as federation), and the outbox transport that
//! sends an appservice's queue as `PUT /_matrix/app/v1/transactions/{txnId}`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use ruma::events::TimelineEventType;
use ruma::state_res::Event;
use serde_json::value::RawValue;

use super::{Appservice, AppservicesService};
use crate::database::outbox::OutboxItem;
use crate::database::Batch;
use crate::service::outbox::{DeliveryFailed, Destination, OutboxService, StagedForEvents, Transaction, Transport};
use crate::service::timeline::{EventSubscriber, PersistedEvent, StoredEvent};
use crate::service::{ServiceError, ServiceResult, Services};

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
/// the user a member event is about, the room's ID or one of its aliases,
/// or one of the room's joined members is in a namespace.
fn interested(s: &Services, appservice: &Appservice, event: &PersistedEvent<'_>) -> ServiceResult<bool> {
    if appservice.is_user_in_namespace(event.pdu.sender().as_str())
        || appservice.is_room_in_namespace(event.room_id.as_str())
    {
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
    if !appservice.registration.namespaces.aliases.is_empty()
        && s.rooms
            .local_aliases(event.room_id)?
            .iter()
            .any(|alias| appservice.is_alias_in_namespace(alias))
    {
        return Ok(true);
    }
    Ok(s.timeline
        .members(event.room_id)?
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
            let body = transaction_body(transaction).map_err(|e| DeliveryFailed(e.to_string()))?;
            self.appservices
                .send_transaction(&appservice, &transaction.txn_id, &body)
                .await
                .map_err(|e| DeliveryFailed(e.to_string()))
        })
    }
}

/// The transaction's JSON: events, and ephemeral events under the
/// stable and MSC2409 names.
fn transaction_body(transaction: &Transaction) -> Result<serde_json::Value, ServiceError> {
    let parse = |json: &String| {
        RawValue::from_string(json.clone()).map_err(|e| ServiceError::Internal(format!("queued appservice item: {e}")))
    };
    let events = transaction
        .pdus
        .iter()
        .map(|(_, json)| parse(json))
        .collect::<Result<Vec<_>, _>>()?;
    let ephemeral = transaction.edus.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
    let mut body = serde_json::json!({ "events": events });
    if !ephemeral.is_empty() {
        body["ephemeral"] = serde_json::json!(ephemeral);
        body["de.sorunome.msc2409.ephemeral"] = serde_json::json!(ephemeral);
    }
    Ok(body)
}
