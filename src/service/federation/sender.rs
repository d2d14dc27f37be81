//! Our events and EDUs on their way to other servers: the timeline
//! subscriber that queues each event of ours for the servers in its room
//! (in the event's own batch), and the outbox transport that sends a
//! destination's queue as `PUT /_matrix/federation/v1/send/{txnId}`.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use ruma::api::federation::transactions::send_transaction_message;
use ruma::events::TimelineEventType;
use ruma::serde::Raw;
use ruma::state_res::Event;
use ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, UserId};
use serde_json::value::RawValue;

use super::FederationClient;
use crate::database::outbox::OutboxItem;
use crate::database::Batch;
use crate::service::outbox::{DeliveryFailed, Destination, OutboxService, StagedForEvents, Transaction, Transport};
use crate::service::timeline::{EventSubscriber, PersistedEvent};
use crate::service::{ServiceResult, Services};

/// Queues every event a user of ours sends for the other servers in its
/// room.
pub struct FederationSender {
    server_name: OwnedServerName,
    staged: StagedForEvents,
}

impl FederationSender {
    pub fn new(server_name: OwnedServerName, outbox: Arc<OutboxService>) -> Self {
        Self {
            server_name,
            staged: StagedForEvents::new(outbox),
        }
    }
}

impl EventSubscriber for FederationSender {
    fn stage(&self, s: &Services, batch: &mut Batch, event: &PersistedEvent<'_>) -> ServiceResult<()> {
        if !s.config.allow_federation || event.pdu.sender().server_name() != self.server_name {
            return Ok(());
        }
        let mut servers: BTreeSet<OwnedServerName> = s.timeline.servers_in_room(event.room_id)?;
        // A membership change reaches the member's server even when it is
        // not (or no longer) in the room: a kick, a ban, an invite.
        if event.pdu.event_type() == &TimelineEventType::RoomMember {
            if let Some(target) = event.pdu.state_key().and_then(|k| UserId::parse(k).ok()) {
                servers.insert(target.server_name().to_owned());
            }
        }
        servers.remove(&self.server_name);
        if servers.is_empty() {
            return Ok(());
        }
        let pdu = crate::service::pdu::federation_form(event.object.clone(), event.event_id);
        let item = OutboxItem::Pdu {
            event_id: event.event_id.to_string(),
            json: serde_json::to_string(&pdu).map_err(|e| crate::service::ServiceError::Internal(e.to_string()))?,
        };
        let destinations: Vec<Destination> = servers.into_iter().map(Destination::Server).collect();
        self.staged.stage(batch, event.event_id, destinations, &item)
    }

    fn committed(&self, event: &PersistedEvent<'_>) {
        self.staged.committed(event.event_id);
    }

    fn aborted(&self, event: &PersistedEvent<'_>) {
        self.staged.aborted(event.event_id);
    }
}

/// Sends outbox transactions to other servers.
pub struct ServerTransport {
    pub client: Arc<FederationClient>,
    pub server_name: OwnedServerName,
}

impl Transport for ServerTransport {
    fn deliver<'a>(
        &'a self,
        destination: &'a Destination,
        transaction: &'a Transaction,
    ) -> BoxFuture<'a, Result<(), DeliveryFailed>> {
        Box::pin(async move {
            let Destination::Server(server) = destination else {
                return Err(DeliveryFailed(format!("{destination:?} is not a server")));
            };
            let mut request = send_transaction_message::v1::Request::new(
                OwnedTransactionId::from(transaction.txn_id.as_str()),
                self.server_name.clone(),
                MilliSecondsSinceUnixEpoch::now(),
            );
            for (_, json) in &transaction.pdus {
                request
                    .pdus
                    .push(RawValue::from_string(json.clone()).map_err(|e| DeliveryFailed(e.to_string()))?);
            }
            for json in &transaction.edus {
                let raw = RawValue::from_string(json.clone()).map_err(|e| DeliveryFailed(e.to_string()))?;
                request.edus.push(Raw::from_json(raw));
            }
            let response = self
                .client
                .send(server, request)
                .await
                .map_err(|e| DeliveryFailed(e.to_string()))?;
            // The destination took the transaction; what it thought of each
            // PDU is its business (a refused one would be refused again).
            for (event_id, outcome) in response.pdus {
                if let Err(error) = outcome {
                    tracing::info!(%server, %event_id, %error, "the destination refused one of our events");
                }
            }
            Ok(())
        })
    }
}
