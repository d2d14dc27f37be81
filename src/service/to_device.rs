//! Send-to-device messages: queued per device, delivered through /sync, and
//! removed once the device acknowledges them by syncing past them.

use ruma::{OwnedUserId, UserId};
use serde_json::value::RawValue;

use super::outbox::Destination;
use super::{ServiceError, ServiceResult, Services};
use crate::database::to_device::ToDeviceTables;
use crate::database::{Batch, Db};

/// Messages per /sync response; the rest follow in the next one.
const MAX_PER_SYNC: usize = 100;

/// Who a message goes to: one device or all of a user's devices (`*`).
#[derive(Debug, Clone)]
pub enum Recipient {
    Device(String),
    AllDevices,
}

pub struct ToDeviceService {
    tables: ToDeviceTables,
    /// The most messages waiting for one device. A device that never syncs
    /// (an abandoned login) would otherwise grow its queue for ever.
    queue_limit: usize,
}

/// A queued message as /sync delivers it; an appservice's also names its
/// recipient (MSC2409).
#[derive(serde::Serialize)]
struct ToDeviceEvent<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    sender: &'a UserId,
    content: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_user_id: Option<&'a UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_device_id: Option<&'a str>,
}

impl ToDeviceEvent<'_> {
    fn to_json(&self) -> ServiceResult<String> {
        serde_json::to_string(self).map_err(|e| ServiceError::Internal(format!("to-device message: {e}")))
    }
}

/// What a /sync delivers to one device.
pub struct Delivery {
    pub events: Vec<Box<RawValue>>,
    /// When more messages wait than one response carries: the stream
    /// position the response must stop at, so the rest stay unacknowledged.
    pub stop_at: Option<u64>,
}

impl ToDeviceService {
    pub fn new(db: Db, queue_limit: usize) -> Self {
        Self {
            tables: ToDeviceTables::new(db),
            queue_limit,
        }
    }

    /// `PUT /sendToDevice/{type}/{txnId}`. A transaction ID already used by
    /// this device is answered without sending again.
    pub fn send(
        &self,
        s: &Services,
        sender: &UserId,
        sender_device: &str,
        event_type: &str,
        txn_id: &str,
        messages: &[(OwnedUserId, Recipient, Box<RawValue>)],
    ) -> ServiceResult<()> {
        if self.tables.has_txn(sender.as_str(), sender_device, txn_id)? {
            return Ok(());
        }
        // Other servers' users get theirs through their server.
        let remote: Vec<(OwnedUserId, Recipient, Box<RawValue>)> = messages
            .iter()
            .filter(|(user, _, _)| user.server_name() != s.config.server_name)
            .cloned()
            .collect();
        if !remote.is_empty() {
            let message_id = format!("{sender_device}.{txn_id}");
            s.federation
                .send_to_device(s, sender, event_type, &message_id, &remote)?;
        }
        self.queue(s, sender, event_type, messages, Some((sender_device, txn_id)))
    }

    /// Queues messages from `sender` (ours, or another server's) for this
    /// server's users among `messages`; with a transaction, remembers it.
    /// Those for the users of MSC3202 appservices go to the appservices
    /// instead (their devices do not sync).
    pub fn queue(
        &self,
        s: &Services,
        sender: &UserId,
        event_type: &str,
        messages: &[(OwnedUserId, Recipient, Box<RawValue>)],
        txn: Option<(&str, &str)>,
    ) -> ServiceResult<()> {
        let mut targets: Vec<(OwnedUserId, String, String)> = Vec::new();
        let mut for_appservices: Vec<(Vec<Destination>, String)> = Vec::new();
        for (user, recipient, content) in messages {
            if user.server_name() != s.config.server_name {
                continue;
            }
            let takers = s.appservices.to_device_takers(user);
            let devices: Vec<String> = match recipient {
                Recipient::AllDevices => s
                    .devices
                    .list(user)?
                    .into_iter()
                    .map(|d| d.device_id.to_string())
                    .collect(),
                Recipient::Device(id) => match s.devices.get(user, id) {
                    Ok(_) => vec![id.clone()],
                    // Unknown devices are skipped, as for Synapse.
                    Err(ServiceError::NotFound(_)) => Vec::new(),
                    Err(e) => return Err(e),
                },
            };
            // Written around the client's content as it came, never parsed
            // into a value (which fails, or panics in `json!`, on deep nesting).
            let event = ToDeviceEvent {
                event_type,
                sender,
                content,
                to_user_id: None,
                to_device_id: None,
            };
            let json = event.to_json()?;
            for device in devices {
                if !takers.is_empty() {
                    let addressed = ToDeviceEvent {
                        to_user_id: Some(user),
                        to_device_id: Some(&device),
                        ..event
                    };
                    for_appservices.push((takers.clone(), addressed.to_json()?));
                    continue;
                }
                if self.tables.queue_holds(user.as_str(), &device, self.queue_limit)? {
                    return Err(ServiceError::LimitExceeded(format!(
                        "device {device} of {user} has {} undelivered messages; nothing was sent",
                        self.queue_limit
                    )));
                }
                targets.push((user.clone(), device, json.clone()));
            }
        }
        let mut batch = Batch::new();
        for (destinations, json) in for_appservices.iter() {
            s.appservices
                .stage_to_device(s, &mut batch, destinations, json.clone())?;
        }
        let stream = &s.timeline.stream;
        let ticket = stream.begin()?;
        for (user, device, json) in &targets {
            self.tables
                .put_message(&mut batch, user.as_str(), device, ticket.0, json);
        }
        if let Some((sender_device, txn_id)) = txn {
            self.tables
                .put_txn(&mut batch, sender.as_str(), sender_device, txn_id, super::now_ms())?;
        }
        match self.tables.write(batch) {
            Ok(()) => {
                stream.finish(ticket, targets.iter().map(|(u, _, _)| &**u));
                s.outbox.committed(for_appservices.iter().flat_map(|(d, _)| d));
                Ok(())
            }
            Err(e) => {
                stream.finish(ticket, []);
                Err(e.into())
            }
        }
    }

    /// The messages a /sync from `since` up to `up_to` delivers; first drops
    /// those a sync from `since` acknowledges (everything at or before it).
    pub fn deliver(&self, user: &UserId, device: &str, since: Option<u64>, up_to: u64) -> ServiceResult<Delivery> {
        if let Some(since) = since {
            let mut batch = Batch::new();
            if self
                .tables
                .delete_messages_up_to(&mut batch, user.as_str(), device, since)?
                > 0
            {
                self.tables.write(batch)?;
            }
        }
        let mut queued = self.tables.messages(user.as_str(), device, MAX_PER_SYNC + 1)?;
        queued.retain(|(count, _)| *count <= up_to);
        let stop_at = if queued.len() > MAX_PER_SYNC {
            // Each request queues one message per device, so positions are
            // distinct and everything before the first one left out fits.
            let stop = queued[MAX_PER_SYNC].0 - 1;
            queued.truncate(MAX_PER_SYNC);
            Some(stop)
        } else {
            None
        };
        let events = queued
            .into_iter()
            .map(|(_, json)| {
                RawValue::from_string(json)
                    .map_err(|e| ServiceError::Internal(format!("stored to-device message: {e}")))
            })
            .collect::<ServiceResult<_>>()?;
        Ok(Delivery { events, stop_at })
    }

    /// Indexes the transaction IDs of a database from before they expired.
    pub fn backfill_txn_index(&self) -> ServiceResult<usize> {
        Ok(self.tables.backfill_txn_index(super::now_ms())?)
    }

    /// Adds deletes of a device's queue and transaction IDs to `batch`.
    pub fn delete_device_in(&self, batch: &mut Batch, user: &UserId, device: &str) -> ServiceResult<()> {
        Ok(self.tables.delete_device(batch, user.as_str(), device)?)
    }
}
