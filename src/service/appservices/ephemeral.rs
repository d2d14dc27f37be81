//! What appservices hear besides room events: typing, receipts and presence
//! (`receive_ephemeral`, MSC2409) and, for those registered with
//! `org.matrix.msc3202`, their users' to-device messages, device list
//! changes and one-time key counts (MSC3202).
//!
//! The typing, receipts, presence, to-device and key services call in here
//! on every change, whether a local user made it or it came from another
//! server, so each kind has one hook. Items go through the outbox; those
//! kept in storage are staged in the change's own write, so a restart
//! loses none of them. Typing is the exception: it is queued as it
//! changes, never stored beside it.
//!
//! Who hears what:
//! - typing and public read receipts: appservices interested in the room
//!   (one of its users joined, or the room ID or an alias in a namespace);
//! - presence: appservices whose namespace holds the user, or interested in
//!   a room the user is joined to (as Synapse decides);
//! - to-device messages: appservices whose namespace holds the recipient;
//!   these messages then skip the device's own queue (a bridge's devices
//!   do not sync, and would fill it);
//! - device list changes: appservices whose namespace holds the user, or
//!   interested in a room the user is joined to (`left` is not computed,
//!   as in Synapse);
//! - one-time key counts and unused fallback key types: appservices whose
//!   namespace holds the device's user, after each upload or claim.

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value as JsonValue;

use super::sender::interested_in_room;
use super::{Appservice, AppservicesService};
use crate::database::outbox::OutboxItem;
use crate::database::Batch;
use crate::service::outbox::{Destination, OutboxService};
use crate::service::{ServiceError, ServiceResult, Services};

/// An outbox item for an appservice, by the part of the transaction it
/// goes into.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppserviceEdu {
    /// An `m.typing`, `m.receipt` or `m.presence` event, for `ephemeral`.
    Ephemeral(Box<RawValue>),
    /// A to-device message naming its `to_user_id` and `to_device_id`.
    ToDevice(Box<RawValue>),
    /// A user whose device list changed.
    DeviceListChanged(String),
    /// A device's one-time key counts and unused fallback key types, as
    /// they were after a change (a later one replaces it).
    DeviceKeys {
        user_id: String,
        device_id: String,
        one_time_keys_count: BTreeMap<String, u64>,
        unused_fallback_key_types: Vec<String>,
    },
}

impl AppserviceEdu {
    /// Its outbox form; kept as raw JSON, since a to-device message's
    /// content is the client's as it came (never parsed into a value).
    fn to_item(&self) -> ServiceResult<OutboxItem> {
        serde_json::to_string(self)
            .map(OutboxItem::Edu)
            .map_err(|e| ServiceError::Internal(format!("appservice item: {e}")))
    }

    fn ephemeral(event: &JsonValue) -> ServiceResult<Self> {
        raw(event.to_string()).map(Self::Ephemeral)
    }

    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

fn raw(json: String) -> ServiceResult<Box<RawValue>> {
    RawValue::from_string(json).map_err(|e| ServiceError::Internal(format!("appservice item: {e}")))
}

/// Where a room's typing changes go: taken when a typist starts, so the
/// expiry of their typing goes where the start went.
#[derive(Clone)]
pub struct TypingAudience {
    outbox: Arc<OutboxService>,
    room_id: OwnedRoomId,
    destinations: Vec<Destination>,
}

impl TypingAudience {
    /// Queues the room's typists as they are now.
    pub fn announce<'a>(&self, typists: impl Iterator<Item = &'a OwnedUserId>) {
        let event = serde_json::json!({
            "type": "m.typing",
            "room_id": self.room_id,
            "content": {"user_ids": typists.collect::<Vec<_>>()},
        });
        let queued = AppserviceEdu::ephemeral(&event)
            .and_then(|edu| edu.to_item())
            .and_then(|item| self.outbox.queue(&self.destinations, &item));
        if let Err(e) = queued {
            tracing::warn!(room_id = %self.room_id, error = %e, "typing not queued for appservices");
        }
    }
}

impl AppservicesService {
    /// The appservices (with a URL) that `wants` and `concerned` pick.
    fn destinations(
        &self,
        wants: impl Fn(&Appservice) -> bool,
        mut concerned: impl FnMut(&Appservice) -> ServiceResult<bool>,
    ) -> ServiceResult<Vec<Destination>> {
        let mut out = Vec::new();
        for appservice in self.all().iter() {
            if appservice.registration.url.is_some() && wants(appservice) && concerned(appservice)? {
                out.push(Destination::Appservice(appservice.id().to_owned()));
            }
        }
        Ok(out)
    }

    /// Appservices receiving ephemeral events that are interested in the room.
    fn ephemeral_for_room(&self, s: &Services, room_id: &RoomId) -> ServiceResult<Vec<Destination>> {
        self.destinations(wants_ephemeral, |a| interested_in_room(s, a, room_id))
    }

    /// Whether `appservice` follows `user`: its namespace holds the user,
    /// or it is interested in a room the user is joined to.
    fn follows_user(&self, s: &Services, appservice: &Appservice, user: &UserId) -> ServiceResult<bool> {
        if appservice.is_user_in_namespace(user.as_str()) {
            return Ok(true);
        }
        for (room_id, record) in s.timeline.user_rooms(user)? {
            if record.membership == "join" && interested_in_room(s, appservice, &room_id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Where `room_id`'s typing changes go, if anywhere.
    pub fn typing_audience(&self, s: &Services, room_id: &RoomId) -> ServiceResult<Option<TypingAudience>> {
        let destinations = self.ephemeral_for_room(s, room_id)?;
        Ok((!destinations.is_empty()).then(|| TypingAudience {
            outbox: s.outbox.clone(),
            room_id: room_id.to_owned(),
            destinations,
        }))
    }

    /// Stages `user`'s public read receipt of `event_id` (with `data`:
    /// `ts`, perhaps `thread_id`) in `batch`; the destinations to hand to
    /// [`OutboxService::committed`] once it has landed.
    pub fn stage_receipt(
        &self,
        s: &Services,
        batch: &mut Batch,
        room_id: &RoomId,
        user: &UserId,
        event_id: &ruma::EventId,
        data: &JsonValue,
    ) -> ServiceResult<Vec<Destination>> {
        let destinations = self.ephemeral_for_room(s, room_id)?;
        let event = serde_json::json!({
            "type": "m.receipt",
            "room_id": room_id,
            "content": {event_id.as_str(): {super::super::receipts::READ: {user.as_str(): data}}},
        });
        stage(s, batch, &destinations, || AppserviceEdu::ephemeral(&event))?;
        Ok(destinations)
    }

    /// Stages `user`'s new presence (its client `content`) in `batch`, as
    /// [`Self::stage_receipt`].
    pub fn stage_presence(
        &self,
        s: &Services,
        batch: &mut Batch,
        user: &UserId,
        content: &JsonValue,
    ) -> ServiceResult<Vec<Destination>> {
        let destinations = self.destinations(wants_ephemeral, |a| self.follows_user(s, a, user))?;
        let event = serde_json::json!({"type": "m.presence", "sender": user, "content": content});
        stage(s, batch, &destinations, || AppserviceEdu::ephemeral(&event))?;
        Ok(destinations)
    }

    /// The MSC3202 appservices whose namespace holds `user` (who take
    /// `user`'s to-device messages).
    pub fn to_device_takers(&self, user: &UserId) -> Vec<Destination> {
        self.destinations(wants_msc3202, |a| Ok(a.is_user_in_namespace(user.as_str())))
            .unwrap_or_default()
    }

    /// Stages a to-device message (`json`: the message with `to_user_id`
    /// and `to_device_id`) for `destinations` in `batch`.
    pub fn stage_to_device(
        &self,
        s: &Services,
        batch: &mut Batch,
        destinations: &[Destination],
        json: String,
    ) -> ServiceResult<()> {
        stage(s, batch, destinations, || raw(json).map(AppserviceEdu::ToDevice))
    }

    /// Stages the news that `user`'s device list changed in `batch`, as
    /// [`Self::stage_receipt`].
    pub fn stage_device_list_change(
        &self,
        s: &Services,
        batch: &mut Batch,
        user: &UserId,
    ) -> ServiceResult<Vec<Destination>> {
        let destinations = self.destinations(wants_msc3202, |a| self.follows_user(s, a, user))?;
        stage(s, batch, &destinations, || {
            Ok(AppserviceEdu::DeviceListChanged(user.to_string()))
        })?;
        Ok(destinations)
    }

    /// Queues the device's one-time key counts and unused fallback key
    /// types (after an upload or a claim) for the MSC3202 appservices
    /// whose namespace holds `user`.
    pub fn device_keys_changed(&self, s: &Services, user: &UserId, device: &str) {
        let destinations = self.to_device_takers(user);
        if destinations.is_empty() {
            return;
        }
        let queued = (|| {
            let edu = AppserviceEdu::DeviceKeys {
                user_id: user.to_string(),
                device_id: device.to_owned(),
                one_time_keys_count: s.e2e_keys.one_time_key_counts(user, device)?,
                unused_fallback_key_types: s.e2e_keys.unused_fallback_key_types(user, device)?,
            };
            s.outbox.queue(&destinations, &edu.to_item()?)
        })();
        if let Err(e) = queued {
            tracing::warn!(%user, device, error = %e, "key counts not queued for appservices");
        }
    }
}

fn wants_ephemeral(appservice: &Appservice) -> bool {
    appservice.registration.wants_ephemeral()
}

fn wants_msc3202(appservice: &Appservice) -> bool {
    appservice.registration.msc3202
}

/// Stages the item `edu` makes for each of `destinations` (made only if
/// there are any).
fn stage(
    s: &Services,
    batch: &mut Batch,
    destinations: &[Destination],
    edu: impl FnOnce() -> ServiceResult<AppserviceEdu>,
) -> ServiceResult<()> {
    if destinations.is_empty() {
        return Ok(());
    }
    let item = edu()?.to_item()?;
    for destination in destinations {
        s.outbox.stage(batch, destination, &item)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A to-device message's content comes back as it went in, however deep.
    #[test]
    fn items_keep_their_raw_json() {
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let message = format!(r#"{{"type":"m.x","content":{{"deep":{deep}}},"to_user_id":"@a:x"}}"#);
        let OutboxItem::Edu(json) = AppserviceEdu::ToDevice(raw(message.clone()).unwrap())
            .to_item()
            .unwrap()
        else {
            panic!("an EDU item")
        };
        match AppserviceEdu::parse(&json).unwrap() {
            AppserviceEdu::ToDevice(back) => assert_eq!(back.get(), message),
            other => panic!("{other:?}"),
        }
    }
}
