//! Other servers' users' device lists, kept here for the users who share a
//! room with ours (the spec's "Device Management"). A list is fetched whole
//! with `/user/devices` the first time one of our clients asks for the
//! user's keys, then kept in step by `m.device_list_update` EDUs. Each EDU
//! names the update before it (`prev_id`); one that names an update this
//! server never applied (an EDU was lost, or this server was not told)
//! makes it fetch the whole list again. Our users' key queries for those
//! users are answered from here.
//!
//! A kept list is only right while the user shares a room with ours (only
//! then does their server send us updates), so it is dropped, in the same
//! write, by the membership change that ends the last shared room.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ruma::api::federation::device::get_devices;
use ruma::api::federation::keys::get_keys;
use ruma::api::federation::transactions::edu::{DeviceListUpdateContent, SigningKeyUpdateContent};
use ruma::events::TimelineEventType;
use ruma::serde::Raw;
use ruma::state_res::Event as _;
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};

use super::devices::KeyQuery;
use super::FederationService;
use crate::database::remote_device_lists::{RemoteDeviceListRecord, RemoteDeviceListTables, RemoteDeviceRecord};
use crate::database::{Batch, Db};
use crate::service::e2e_keys::KeyChange;
use crate::service::timeline::{membership_of, EventSubscriber, PersistedEvent};
use crate::service::{ServiceError, ServiceResult, Services};

pub struct RemoteDeviceLists {
    tables: RemoteDeviceListTables,
    server_name: OwnedServerName,
    /// Serializes the read-modify-writes of kept lists (an EDU applied
    /// while a fetched list is stored).
    writing: Mutex<()>,
}

/// What an `m.device_list_update` did to the kept list.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The update was applied.
    Applied,
    /// No list of the user is kept: nothing to update (a client that asks
    /// for the user's keys makes us fetch it).
    NotKept,
    /// The update is no newer than the kept list.
    Stale,
    /// The update follows one this server never applied: fetch the list.
    Gap,
}

impl RemoteDeviceLists {
    pub fn new(db: Db, server_name: OwnedServerName) -> Self {
        Self {
            tables: RemoteDeviceListTables::new(db),
            server_name,
            writing: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn kept(&self, user: &UserId) -> ServiceResult<Option<RemoteDeviceListRecord>> {
        Ok(self.tables.get(user.as_str())?)
    }

    /// Applies one update to the kept list, when it follows on from it.
    pub fn apply(&self, update: &DeviceListUpdateContent) -> ServiceResult<UpdateOutcome> {
        let _writing = self.lock();
        let user = update.user_id.as_str();
        let Some(mut record) = self.tables.get(user)? else {
            return Ok(UpdateOutcome::NotKept);
        };
        let stream_id = u64::from(update.stream_id);
        if stream_id <= record.stream_id {
            return Ok(UpdateOutcome::Stale);
        }
        // As Synapse does: an update that names no previous one cannot be
        // told apart from one after a gap.
        if update.prev_id.is_empty() || update.prev_id.iter().any(|p| u64::from(*p) != record.stream_id) {
            return Ok(UpdateOutcome::Gap);
        }
        let device = update.device_id.to_string();
        if update.deleted == Some(true) {
            record.devices.remove(&device);
        } else {
            let entry = record.devices.entry(device).or_default();
            entry.display_name = update.device_display_name.clone();
            if let Some(keys) = &update.keys {
                entry.keys = device_keys_of(&update.user_id, &update.device_id, keys.json().get());
            }
        }
        record.stream_id = stream_id;
        let mut batch = Batch::new();
        self.tables.put(&mut batch, user, &record);
        self.tables.write(batch)?;
        Ok(UpdateOutcome::Applied)
    }

    /// New cross-signing keys of a user whose list is kept.
    pub fn apply_signing_keys(&self, update: &SigningKeyUpdateContent) -> ServiceResult<()> {
        let _writing = self.lock();
        let user = update.user_id.as_str();
        let Some(mut record) = self.tables.get(user)? else {
            return Ok(());
        };
        if let Some(key) = &update.master_key {
            record.master_key = Some(key.json().get().to_owned());
        }
        if let Some(key) = &update.self_signing_key {
            record.self_signing_key = Some(key.json().get().to_owned());
        }
        let mut batch = Batch::new();
        self.tables.put(&mut batch, user, &record);
        Ok(self.tables.write(batch)?)
    }

    /// Keeps a list fetched from the user's server, unless the user no
    /// longer shares a room with ours or a newer update arrived meanwhile.
    /// Answers the list as it now stands.
    pub fn store_fetched(
        &self,
        s: &Services,
        user: &UserId,
        fetched: RemoteDeviceListRecord,
    ) -> ServiceResult<RemoteDeviceListRecord> {
        let _writing = self.lock();
        if let Some(kept) = self.tables.get(user.as_str())? {
            if kept.stream_id > fetched.stream_id {
                return Ok(kept);
            }
        }
        if self.shares_a_room_with_us(s, user, None)? {
            let mut batch = Batch::new();
            self.tables.put(&mut batch, user.as_str(), &fetched);
            self.tables.write(batch)?;
        }
        Ok(fetched)
    }

    /// Drops a kept list (it could not be brought up to date).
    pub fn forget(&self, user: &UserId) -> ServiceResult<()> {
        let _writing = self.lock();
        let mut batch = Batch::new();
        self.tables.delete(&mut batch, user.as_str());
        Ok(self.tables.write(batch)?)
    }

    /// Whether `user` is joined to a room where one of our users is
    /// joined; `leaving` leaves one member out of one room (a membership
    /// change being written).
    pub fn shares_a_room_with_us(
        &self,
        s: &Services,
        user: &UserId,
        leaving: Option<(&RoomId, &UserId)>,
    ) -> ServiceResult<bool> {
        let mut ours_in: HashMap<OwnedRoomId, bool> = HashMap::new();
        self.shares_a_room_memo(s, user, leaving, &mut ours_in)
    }

    /// [`Self::shares_a_room_with_us`], remembering across calls which rooms
    /// have one of our users joined (`leaving` must be the same each call).
    fn shares_a_room_memo(
        &self,
        s: &Services,
        user: &UserId,
        leaving: Option<(&RoomId, &UserId)>,
        ours_in: &mut HashMap<OwnedRoomId, bool>,
    ) -> ServiceResult<bool> {
        for (room_id, record) in s.timeline.user_rooms(user)? {
            let left_here = leaving.filter(|(room, _)| *room == room_id).map(|(_, member)| member);
            if record.membership != "join" || left_here == Some(user) {
                continue;
            }
            let ours = match ours_in.get(&room_id) {
                Some(ours) => *ours,
                None => {
                    let ours = s.timeline.members(&room_id)?.iter().any(|(member, membership)| {
                        membership == "join"
                            && Some(member.as_str()) != left_here.map(UserId::as_str)
                            && UserId::parse(member.as_str()).is_ok_and(|m| m.server_name() == self.server_name)
                    });
                    ours_in.insert(room_id, ours);
                    ours
                }
            };
            if ours {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Device keys from another server, if they are an object naming the
/// device and its user (clients check the signatures themselves).
fn device_keys_of(user: &UserId, device: &OwnedDeviceId, json: &str) -> Option<String> {
    let keys: serde_json::Value = serde_json::from_str(json).ok()?;
    let names_it = keys.get("user_id").and_then(|u| u.as_str()) == Some(user.as_str())
        && keys.get("device_id").and_then(|d| d.as_str()) == Some(device.as_str());
    names_it.then(|| json.to_owned())
}

/// The kept list as `/user/devices` gave it.
fn record_of(response: get_devices::v1::Response) -> RemoteDeviceListRecord {
    let devices = response
        .devices
        .into_iter()
        .filter_map(|device| {
            let keys = device_keys_of(&response.user_id, &device.device_id, device.keys.json().get())?;
            let record = RemoteDeviceRecord {
                keys: Some(keys),
                display_name: device.device_display_name,
            };
            Some((device.device_id.to_string(), record))
        })
        .collect();
    RemoteDeviceListRecord {
        stream_id: u64::from(response.stream_id),
        devices,
        master_key: response.master_key.map(|k| k.json().get().to_owned()),
        self_signing_key: response.self_signing_key.map(|k| k.json().get().to_owned()),
    }
}

/// Adds a kept list's keys to a `/user/keys/query`-shaped answer: the
/// devices asked for (all when none are named), each device's name in
/// `unsigned` as servers serve it.
fn answer_from(
    answer: &mut get_keys::v1::Response,
    user: &UserId,
    devices: &[OwnedDeviceId],
    record: &RemoteDeviceListRecord,
) {
    let raw = |json: &str| serde_json::value::RawValue::from_string(json.to_owned()).ok();
    let mut user_devices = BTreeMap::new();
    for (device_id, device) in &record.devices {
        let device_id = OwnedDeviceId::from(device_id.as_str());
        if !devices.is_empty() && !devices.contains(&device_id) {
            continue;
        }
        let Some(keys) = &device.keys else { continue };
        let Ok(mut keys) = serde_json::from_str::<serde_json::Value>(keys) else {
            continue;
        };
        if let Some(name) = &device.display_name {
            keys["unsigned"]["device_display_name"] = name.clone().into();
        }
        if let Some(keys) = raw(&keys.to_string()) {
            user_devices.insert(device_id, Raw::from_json(keys));
        }
    }
    answer.device_keys.insert(user.to_owned(), user_devices);
    if let Some(key) = record.master_key.as_deref().and_then(raw) {
        answer.master_keys.insert(user.to_owned(), Raw::from_json(key));
    }
    if let Some(key) = record.self_signing_key.as_deref().and_then(raw) {
        answer.self_signing_keys.insert(user.to_owned(), Raw::from_json(key));
    }
}

impl FederationService {
    /// `/keys/query` for other servers' users: from the kept lists where
    /// there are some, fetching the lists of users who share a room with
    /// ours and have none yet; the others asked of their servers (each
    /// server once, in parallel). A user whose kept list cannot be read is
    /// asked of their server too. An unreachable server is named in the
    /// failures.
    pub async fn query_keys(
        &self,
        s: &Arc<Services>,
        wanted: BTreeMap<OwnedServerName, KeyQuery>,
    ) -> (Vec<get_keys::v1::Response>, BTreeMap<String, serde_json::Value>) {
        let all = wanted.clone();
        let sorted = s
            .run(move |s| {
                let mut known = get_keys::v1::Response::new(BTreeMap::new());
                let mut to_fetch = Vec::new();
                let mut to_ask: BTreeMap<OwnedServerName, KeyQuery> = BTreeMap::new();
                let lists = &s.federation.device_lists;
                for (server, users) in wanted {
                    for (user, devices) in users {
                        // Storage that fails for one user costs that
                        // user a round trip, not the whole answer.
                        let kept = lists.kept(&user);
                        let shares = match &kept {
                            Ok(None) => lists.shares_a_room_with_us(s, &user, None),
                            _ => Ok(false),
                        };
                        match (kept, shares) {
                            (Ok(Some(record)), _) => answer_from(&mut known, &user, &devices, &record),
                            (Ok(None), Ok(true)) => to_fetch.push((user, devices)),
                            (Ok(None), Ok(false)) => {
                                to_ask.entry(server.clone()).or_default().insert(user, devices);
                            }
                            (Err(e), _) | (_, Err(e)) => {
                                tracing::warn!(%user, error = %e, "kept device list or rooms unreadable; asking its server");
                                to_ask.entry(server.clone()).or_default().insert(user, devices);
                            }
                        }
                    }
                }
                Ok((known, to_fetch, to_ask))
            })
            .await;
        let (mut known, to_fetch, mut to_ask) = match sorted {
            Ok(sorted) => sorted,
            Err(e) => {
                tracing::warn!(error = %e, "query not sorted; asking every server");
                (get_keys::v1::Response::new(BTreeMap::new()), Vec::new(), all)
            }
        };
        let fetches = to_fetch.into_iter().map(|(user, devices)| async move {
            let fetched = self.fetch_device_list(s, &user).await;
            (user, devices, fetched)
        });
        for (user, devices, fetched) in futures_util::future::join_all(fetches).await {
            match fetched {
                Ok(record) => answer_from(&mut known, &user, &devices, &record),
                Err(e) => {
                    tracing::debug!(%user, error = %e, "device list not fetched; asking for the keys instead");
                    to_ask
                        .entry(user.server_name().to_owned())
                        .or_default()
                        .insert(user, devices);
                }
            }
        }
        let (mut answers, failures) = self.ask_each(to_ask, get_keys::v1::Request::new).await;
        answers.push(known);
        (answers, failures)
    }

    /// Fetches a user's whole device list from their server and keeps it
    /// (while they share a room with ours).
    async fn fetch_device_list(&self, s: &Arc<Services>, user: &UserId) -> ServiceResult<RemoteDeviceListRecord> {
        let response = self
            .client
            .send(user.server_name(), get_devices::v1::Request::new(user.to_owned()))
            .await?;
        if response.user_id != user {
            return Err(ServiceError::BadJson(format!(
                "asked for {user}'s devices, got {}'s",
                response.user_id
            )));
        }
        let fetched = record_of(response);
        let user = user.to_owned();
        s.run(move |s| s.federation.device_lists.store_fetched(s, &user, fetched))
            .await
    }

    pub(super) async fn receive_device_list_update(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        update: DeviceListUpdateContent,
    ) -> ServiceResult<()> {
        if update.user_id.server_name() != origin {
            return Err(ServiceError::Forbidden(
                "device update of another server's user".to_owned(),
            ));
        }
        let user = update.user_id.clone();
        let outcome = s.run(move |s| s.federation.device_lists.apply(&update)).await?;
        // Our users are told even of a stale update: the list it belongs
        // to may have been fetched for one client's query, unseen by others.
        match outcome {
            UpdateOutcome::Gap => {
                tracing::info!(%user, "device list update after a gap; fetching the whole list");
                if let Err(e) = self.fetch_device_list(s, &user).await {
                    // Not kept rather than wrong: the next query asks again.
                    tracing::info!(%user, error = %e, "device list not fetched after a gap");
                    let forgotten = user.clone();
                    s.run(move |s| s.federation.device_lists.forget(&forgotten)).await?;
                }
            }
            UpdateOutcome::Applied | UpdateOutcome::NotKept | UpdateOutcome::Stale => {}
        }
        self.tell_our_users(s, user).await
    }

    pub(super) async fn receive_signing_key_update(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        update: SigningKeyUpdateContent,
    ) -> ServiceResult<()> {
        if update.user_id.server_name() != origin {
            return Err(ServiceError::Forbidden(
                "signing key update of another server's user".to_owned(),
            ));
        }
        let user = update.user_id.clone();
        s.run(move |s| s.federation.device_lists.apply_signing_keys(&update))
            .await?;
        self.tell_our_users(s, user).await
    }

    /// A remote user's devices or keys changed: our users who share a room
    /// with them see it in their next sync and fetch the keys again.
    async fn tell_our_users(&self, s: &Arc<Services>, user: OwnedUserId) -> ServiceResult<()> {
        s.run(move |s| {
            s.e2e_keys
                .write_with_change(s, Batch::new(), &user, KeyChange::default())
        })
        .await
    }
}

/// Drops kept device lists, in the membership change's own write, when it
/// ends the last room their user shared with ours.
pub struct DeviceListTracking {
    server_name: OwnedServerName,
}

impl DeviceListTracking {
    pub fn new(server_name: OwnedServerName) -> Self {
        Self { server_name }
    }
}

impl EventSubscriber for DeviceListTracking {
    fn stage(&self, s: &Services, batch: &mut Batch, event: &PersistedEvent<'_>) -> ServiceResult<()> {
        if event.pdu.event_type() != &TimelineEventType::RoomMember {
            return Ok(());
        }
        if !matches!(membership_of(event.object), Some("leave" | "ban")) {
            return Ok(());
        }
        let Some(member) = event.pdu.state_key().and_then(|k| UserId::parse(k).ok()) else {
            return Ok(());
        };
        // Whose lists may no longer be right: the member's, or, when one of
        // ours leaves, those of everyone else in the room.
        let candidates: Vec<OwnedUserId> = if member.server_name() != self.server_name {
            vec![member.clone()]
        } else {
            s.timeline
                .members(event.room_id)?
                .iter()
                .filter(|(_, m)| m == "join")
                .filter_map(|(u, _)| UserId::parse(u.as_str()).ok())
                .filter(|u| u.server_name() != self.server_name)
                .collect()
        };
        let lists = &s.federation.device_lists;
        let leaving = Some((event.room_id, &*member));
        let mut ours_in = HashMap::new();
        for user in candidates {
            if lists.kept(&user)?.is_some() && !lists.shares_a_room_memo(s, &user, leaving, &mut ours_in)? {
                lists.tables.delete(batch, user.as_str());
            }
        }
        Ok(())
    }

    fn committed(&self, _event: &PersistedEvent<'_>) {}

    fn aborted(&self, _event: &PersistedEvent<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::remote_device_lists::RemoteDeviceRecord;
    use crate::database::{keys, Table};
    use crate::service::testing::{two_in_a_room, TwoInARoom};

    fn update(stream_id: u32, prev_id: &[u32], device: &str) -> DeviceListUpdateContent {
        let mut update =
            DeviceListUpdateContent::new("@bob:b.test".try_into().unwrap(), device.into(), stream_id.into());
        update.prev_id = prev_id.iter().map(|p| (*p).into()).collect();
        update
    }

    #[test]
    fn updates_apply_in_sequence_and_a_gap_or_a_missing_prev_id_asks_for_the_whole_list() {
        let dir = tempfile::tempdir().unwrap();
        let lists = RemoteDeviceLists::new(crate::database::open_test_db(dir.path()), "a.test".try_into().unwrap());
        let bob: OwnedUserId = "@bob:b.test".try_into().unwrap();

        // Nothing kept: nothing to update.
        assert_eq!(lists.apply(&update(5, &[4], "PHONE")).unwrap(), UpdateOutcome::NotKept);
        assert_eq!(lists.kept(&bob).unwrap(), None);

        let mut batch = Batch::new();
        let record = RemoteDeviceListRecord {
            stream_id: 5,
            ..RemoteDeviceListRecord::default()
        };
        lists.tables.put(&mut batch, bob.as_str(), &record);
        lists.tables.write(batch).unwrap();

        // The next update applies; replays of it or older ones do nothing.
        let mut named = update(6, &[5], "PHONE");
        named.device_display_name = Some("phone".to_owned());
        assert_eq!(lists.apply(&named).unwrap(), UpdateOutcome::Applied);
        assert_eq!(lists.apply(&named).unwrap(), UpdateOutcome::Stale);
        assert_eq!(lists.apply(&update(4, &[3], "OLD")).unwrap(), UpdateOutcome::Stale);
        let kept = lists.kept(&bob).unwrap().unwrap();
        assert_eq!(kept.stream_id, 6);
        assert_eq!(kept.devices["PHONE"].display_name.as_deref(), Some("phone"));

        // One that follows an update never seen, or names none, is a gap,
        // and changes nothing.
        assert_eq!(lists.apply(&update(8, &[7], "LAPTOP")).unwrap(), UpdateOutcome::Gap);
        assert_eq!(lists.apply(&update(8, &[], "LAPTOP")).unwrap(), UpdateOutcome::Gap);
        assert_eq!(lists.apply(&update(8, &[6, 7], "LAPTOP")).unwrap(), UpdateOutcome::Gap);
        assert_eq!(lists.kept(&bob).unwrap().unwrap(), kept);

        // A deletion removes the device.
        let mut deleted = update(7, &[6], "PHONE");
        deleted.deleted = Some(true);
        assert_eq!(lists.apply(&deleted).unwrap(), UpdateOutcome::Applied);
        let kept = lists.kept(&bob).unwrap().unwrap();
        assert_eq!((kept.stream_id, kept.devices.len()), (7, 0));
    }

    /// A kept list that cannot be read costs its user a round trip to
    /// their server, not the whole answer: the others' keys still come
    /// from their kept lists, and that server is asked (and named in the
    /// failures here, where it cannot be reached).
    #[tokio::test]
    async fn an_unreadable_kept_list_is_asked_of_its_server() {
        let TwoInARoom {
            dir: _dir, store, s, ..
        } = two_in_a_room();
        let s = Arc::new(s);
        let carol: OwnedUserId = "@carol:b.test".try_into().unwrap();
        let dave: OwnedUserId = "@dave:127.0.0.1:9".try_into().unwrap();
        let lists = &s.federation.device_lists;
        let mut batch = Batch::new();
        for user in [&carol, &dave] {
            let keys = format!(r#"{{"user_id":"{user}","device_id":"PHONE","keys":{{}}}}"#);
            let phone = RemoteDeviceRecord {
                keys: Some(keys),
                display_name: None,
            };
            let record = RemoteDeviceListRecord {
                stream_id: 1,
                devices: BTreeMap::from([("PHONE".to_owned(), phone)]),
                ..RemoteDeviceListRecord::default()
            };
            lists.tables.put(&mut batch, user.as_str(), &record);
        }
        lists.tables.write(batch).unwrap();
        store.fail_reads_of(Table::RemoteDeviceLists, keys::encode(dave.as_str()));

        let wanted = BTreeMap::from([
            (
                carol.server_name().to_owned(),
                KeyQuery::from([(carol.clone(), Vec::new())]),
            ),
            (
                dave.server_name().to_owned(),
                KeyQuery::from([(dave.clone(), Vec::new())]),
            ),
        ]);
        let (answers, failures) = s.federation.query_keys(&s, wanted).await;
        let phone = OwnedDeviceId::from("PHONE");
        let devices_of = |user: &OwnedUserId| answers.iter().find_map(|a| a.device_keys.get(user));
        assert!(
            devices_of(&carol).is_some_and(|d| d.contains_key(&phone)),
            "carol's kept keys"
        );
        assert!(devices_of(&dave).is_none(), "nothing made up for dave");
        assert!(
            failures.contains_key("127.0.0.1:9"),
            "dave's server was asked: {failures:?}"
        );
    }

    #[test]
    fn device_keys_must_name_their_user_and_device() {
        let bob: OwnedUserId = "@bob:b.test".try_into().unwrap();
        let phone = OwnedDeviceId::from("PHONE");
        let keys = r#"{"user_id":"@bob:b.test","device_id":"PHONE","keys":{}}"#;
        assert_eq!(device_keys_of(&bob, &phone, keys).as_deref(), Some(keys));
        let other_device = r#"{"user_id":"@bob:b.test","device_id":"LAPTOP","keys":{}}"#;
        assert_eq!(device_keys_of(&bob, &phone, other_device), None);
        let other_user = r#"{"user_id":"@eve:b.test","device_id":"PHONE","keys":{}}"#;
        assert_eq!(device_keys_of(&bob, &phone, other_user), None);
    }
}
