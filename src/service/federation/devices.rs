//! End-to-end encryption across servers: other servers' users' keys
//! claimed from their server, our users' keys served to them (API layer),
//! to-device messages both ways, and our users' device list updates for
//! other servers (theirs are kept in `device_lists.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::api::federation::keys::claim_keys;
use ruma::api::federation::transactions::edu::DirectDeviceContent;
use ruma::{OwnedServerName, OwnedUserId, ServerName, UserId};
use serde_json::value::RawValue;

use super::FederationService;
use crate::database::outbox::OutboxItem;
use crate::service::e2e_keys::NumberedUpdates;
use crate::service::outbox::Destination;
use crate::service::to_device::Recipient;
use crate::service::{ServiceError, ServiceResult, Services};

/// Users (of one server) and the devices wanted of each.
pub type KeyQuery = BTreeMap<OwnedUserId, Vec<ruma::OwnedDeviceId>>;

impl FederationService {
    /// `/keys/claim` for other servers' users: each server asked once, in
    /// parallel; an unreachable one is named in the failures.
    pub async fn claim_keys(
        &self,
        wanted: BTreeMap<OwnedServerName, claim_keys::v1::OneTimeKeyClaims>,
    ) -> (Vec<claim_keys::v1::Response>, BTreeMap<String, serde_json::Value>) {
        self.ask_each(wanted, claim_keys::v1::Request::new).await
    }

    /// Sends each server its request at once; the answers, and the
    /// failures as `/keys/*` report them (by server name).
    pub(super) async fn ask_each<Q, R>(
        &self,
        wanted: BTreeMap<OwnedServerName, Q>,
        request: impl Fn(Q) -> R,
    ) -> (Vec<R::IncomingResponse>, BTreeMap<String, serde_json::Value>)
    where
        R: ruma::api::OutgoingRequest<PathBuilder = ruma::api::path_builder::SinglePath> + Clone,
        R::Authentication: super::client::FederationAuth,
    {
        let asks = wanted.into_iter().map(|(server, query)| {
            let request = request(query);
            async move {
                let answer = self.client.send(&server, request).await;
                (server, answer)
            }
        });
        let mut answers = Vec::new();
        let mut failures = BTreeMap::new();
        for (server, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(answer) => answers.push(answer),
                Err(e) => {
                    failures.insert(
                        server.to_string(),
                        serde_json::json!({"status": 503, "message": e.to_string()}),
                    );
                }
            }
        }
        (answers, failures)
    }

    /// Queues to-device messages of our `sender` for other servers' users:
    /// one `m.direct_to_device` EDU per server.
    pub fn send_to_device(
        &self,
        s: &Services,
        sender: &UserId,
        event_type: &str,
        message_id: &str,
        messages: &[(OwnedUserId, Recipient, Box<RawValue>)],
    ) -> ServiceResult<()> {
        if !s.config.allow_federation {
            return Ok(());
        }
        let mut by_server: BTreeMap<OwnedServerName, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
        for (user, recipient, content) in messages {
            let device = match recipient {
                Recipient::Device(id) => id.clone(),
                Recipient::AllDevices => "*".to_owned(),
            };
            let content: serde_json::Value =
                serde_json::from_str(content.get()).map_err(|e| ServiceError::BadJson(e.to_string()))?;
            let users = by_server.entry(user.server_name().to_owned()).or_default();
            let devices = users
                .entry(user.to_string())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            devices[device] = content;
        }
        let mut items = Vec::new();
        for (server, messages) in by_server {
            let edu = serde_json::json!({
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": sender,
                    "type": event_type,
                    "message_id": message_id,
                    "messages": messages,
                },
            });
            items.push((Destination::Server(server), OutboxItem::Edu(edu.to_string())));
        }
        self.outbox.queue_each(&items)
    }

    /// Tells the servers that share a room with our `user` what changed in
    /// the user's devices (one `m.device_list_update` each, chained by
    /// `prev_id`, with the device's keys and name as they are now, or
    /// `deleted`) and cross-signing keys (`m.signing_key_update`).
    pub fn send_device_list_updates(
        &self,
        s: &Services,
        user: &UserId,
        updates: &NumberedUpdates,
    ) -> ServiceResult<()> {
        if !s.config.allow_federation || user.server_name() != self.server_name {
            return Ok(());
        }
        let mut servers = std::collections::BTreeSet::new();
        for (room_id, membership) in s.timeline.user_rooms(user)? {
            if membership.membership == "join" {
                servers.extend(s.timeline.servers_in_room(&room_id)?);
            }
        }
        servers.remove(&self.server_name);
        if servers.is_empty() {
            return Ok(());
        }
        let destinations: Vec<Destination> = servers.into_iter().map(Destination::Server).collect();
        let keys = s
            .e2e_keys
            .query(s, None, &BTreeMap::from([(user.to_owned(), Vec::new())]))?;
        let names = s.devices.display_names(user)?;
        let mut prev = updates.prev;
        for (device, stream_id) in &updates.devices {
            let mut content = serde_json::json!({
                "user_id": user,
                "device_id": device,
                "stream_id": stream_id,
                "prev_id": if prev == 0 { vec![] } else { vec![prev] },
            });
            match names.get(device) {
                None => content["deleted"] = true.into(),
                Some(name) => {
                    if let Some(name) = name {
                        content["device_display_name"] = name.clone().into();
                    }
                    if let Some(device_keys) = keys.device_keys.get(user).and_then(|d| d.get(device)) {
                        content["keys"] = device_keys.clone();
                    }
                }
            }
            prev = *stream_id;
            let edu = serde_json::json!({"edu_type": "m.device_list_update", "content": content});
            self.outbox.queue(&destinations, &OutboxItem::Edu(edu.to_string()))?;
        }
        if updates.cross_signing {
            let mut content = serde_json::json!({"user_id": user});
            if let Some(key) = keys.master_keys.get(user) {
                content["master_key"] = key.clone();
            }
            if let Some(key) = keys.self_signing_keys.get(user) {
                content["self_signing_key"] = key.clone();
            }
            let edu = serde_json::json!({"edu_type": "m.signing_key_update", "content": content});
            self.outbox.queue(&destinations, &OutboxItem::Edu(edu.to_string()))?;
        }
        Ok(())
    }

    pub(super) async fn receive_to_device(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        content: DirectDeviceContent,
    ) -> ServiceResult<()> {
        if content.sender.server_name() != origin {
            return Err(ServiceError::Forbidden(
                "to-device message of another server's user".to_owned(),
            ));
        }
        let mut messages = Vec::new();
        for (user, devices) in content.messages {
            for (device, message) in devices {
                let recipient = match device {
                    ruma::to_device::DeviceIdOrAllDevices::DeviceId(id) => Recipient::Device(id.to_string()),
                    ruma::to_device::DeviceIdOrAllDevices::AllDevices => Recipient::AllDevices,
                };
                messages.push((user.clone(), recipient, message.into_json()));
            }
        }
        let (sender, event_type) = (content.sender, content.ev_type.to_string());
        s.run(move |s| s.to_device.queue(s, &sender, &event_type, &messages, None))
            .await
    }
}
