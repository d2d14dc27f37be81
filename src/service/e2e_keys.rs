//! End-to-end encryption keys: device keys, one-time and fallback keys,
//! cross-signing keys and signatures, and device-list change tracking.
//!
//! The server never sees plaintext; it checks that what devices upload is
//! signed by what it claims to be signed by, hands keys out, and tells
//! users when someone they share an encrypted room with changes keys.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use ruma::signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedUserId, SigningKeyAlgorithm, UserId};
use serde_json::Value as JsonValue;

use super::{ServiceError, ServiceResult, Services};
use crate::database::e2e_keys::{E2eKeyTables, FallbackKeyRecord};
use crate::database::{Batch, Db, Direction};

/// How many membership events of one room a device-list computation reads
/// before it simply reports every member as changed (always correct: a
/// client re-queries a changed user's keys).
const MEMBERSHIP_SCAN_LIMIT: usize = 1000;

/// Cross-signing key usages, as stored.
pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

pub struct E2eKeysService {
    tables: E2eKeyTables,
    /// Serializes one-time key claims, so two claims never get the same key.
    claims: Mutex<()>,
    /// Serializes the numbering of our users' device list updates, so each
    /// update's `prev_id` names the one before it.
    update_numbering: Mutex<()>,
}

/// What changed in a user's keys: other servers get an update per device
/// and one for the cross-signing keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// Devices added, renamed, given keys or deleted.
    pub devices: Vec<String>,
    /// The cross-signing keys, or signatures on them.
    pub cross_signing: bool,
}

impl KeyChange {
    pub fn devices<I: IntoIterator<Item = S>, S: Into<String>>(devices: I) -> Self {
        Self {
            devices: devices.into_iter().map(Into::into).collect(),
            cross_signing: false,
        }
    }

    pub fn device(device: &str) -> Self {
        Self::devices([device])
    }

    pub fn cross_signing() -> Self {
        Self {
            devices: Vec::new(),
            cross_signing: true,
        }
    }
}

/// Our user's device list updates for other servers, numbered: each
/// device with its `stream_id`, the first one's `prev_id` being `prev`
/// (0: none) and each later one's the one before it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NumberedUpdates {
    pub prev: u64,
    pub devices: Vec<(String, u64)>,
    pub cross_signing: bool,
}

/// Keys as /keys/query answers them.
#[derive(Default)]
pub struct QueriedKeys {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<String, JsonValue>>,
    pub master_keys: BTreeMap<OwnedUserId, JsonValue>,
    pub self_signing_keys: BTreeMap<OwnedUserId, JsonValue>,
    pub user_signing_keys: BTreeMap<OwnedUserId, JsonValue>,
    /// Per server name, for users this server cannot answer for.
    pub failures: BTreeMap<String, JsonValue>,
}

/// Users whose keys a client should re-fetch, and users it no longer shares
/// an encrypted room with.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceListUpdates {
    pub changed: BTreeSet<String>,
    pub left: BTreeSet<String>,
}

impl DeviceListUpdates {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

fn bad_json(what: impl std::fmt::Display) -> ServiceError {
    ServiceError::BadJson(what.to_string())
}

fn parse_object(json: &str) -> ServiceResult<CanonicalJsonObject> {
    serde_json::from_str(json).map_err(|e| bad_json(format!("not a canonical JSON object: {e}")))
}

/// A one-time key as stored: an object (signed keys) or, as the spec
/// allows for unsigned `curve25519` keys, a plain string.
fn one_time_key_json(json: &str) -> ServiceResult<String> {
    match serde_json::from_str(json) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(to_json(&object)),
        Ok(value @ CanonicalJsonValue::String(_)) => {
            Ok(serde_json::to_string(&value).expect("canonical JSON serializes"))
        }
        Ok(_) => Err(bad_json("a one-time key is an object or a string")),
        Err(e) => Err(bad_json(format!("not canonical JSON: {e}"))),
    }
}

fn stored_object(json: &str) -> ServiceResult<CanonicalJsonObject> {
    serde_json::from_str(json).map_err(|e| ServiceError::Internal(format!("stored key: {e}")))
}

fn to_json(object: &CanonicalJsonObject) -> String {
    serde_json::to_string(object).expect("canonical JSON serializes")
}

fn str_field<'a>(object: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match object.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

fn object_field<'a>(object: &'a CanonicalJsonObject, name: &str) -> Option<&'a CanonicalJsonObject> {
    match object.get(name) {
        Some(CanonicalJsonValue::Object(o)) => Some(o),
        _ => None,
    }
}

/// Checks the ed25519 signature `signer`'s key `key_id` made on `object`,
/// against the unpadded-base64 public key `public_key`.
pub fn check_signature(
    object: &CanonicalJsonObject,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), String> {
    let signature = object_field(object, "signatures")
        .and_then(|s| object_field(s, signer))
        .and_then(|s| str_field(s, key_id))
        .ok_or_else(|| format!("no signature by {signer} with {key_id}"))?;
    let signature = ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(signature)
        .map_err(|e| format!("signature is not base64: {e}"))?;
    let public_key = ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(public_key)
        .map_err(|e| format!("public key is not base64: {e}"))?;
    let canonical = to_canonical_json_string_for_signing(object).map_err(|e| e.to_string())?;
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        signature.as_bytes(),
        canonical.as_bytes(),
    )
    .map_err(|e| format!("invalid signature: {e}"))
}

/// The one ed25519 public key of a cross-signing key: (key ID, key).
fn cross_signing_public_key(object: &CanonicalJsonObject) -> Option<(String, String)> {
    let keys = object_field(object, "keys")?;
    if keys.len() != 1 {
        return None;
    }
    let (id, key) = keys.iter().next()?;
    match key {
        CanonicalJsonValue::String(key) if id.starts_with("ed25519:") => Some((id.clone(), key.clone())),
        _ => None,
    }
}

/// Adds every signature in `from` to `into` (both `signatures` objects).
fn merge_signatures(into: &mut CanonicalJsonObject, from: &CanonicalJsonObject) {
    for (signer, sigs) in from {
        let CanonicalJsonValue::Object(sigs) = sigs else {
            continue;
        };
        let entry = into
            .entry(signer.clone())
            .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        if let CanonicalJsonValue::Object(existing) = entry {
            for (key_id, sig) in sigs {
                existing.insert(key_id.clone(), sig.clone());
            }
        }
    }
}

fn signatures_mut(object: &mut CanonicalJsonObject) -> &mut CanonicalJsonObject {
    let entry = object
        .entry("signatures".to_owned())
        .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
    if !matches!(entry, CanonicalJsonValue::Object(_)) {
        *entry = CanonicalJsonValue::Object(CanonicalJsonObject::new());
    }
    match entry {
        CanonicalJsonValue::Object(o) => o,
        _ => unreachable!("just made an object"),
    }
}

/// `algorithm:key` splits into the algorithm and the rest.
fn algorithm_of(key_id: &str) -> ServiceResult<&str> {
    match key_id.split_once(':') {
        Some((algorithm, name)) if !algorithm.is_empty() && !name.is_empty() => Ok(algorithm),
        _ => Err(ServiceError::InvalidParam(format!(
            "{key_id:?} is not an algorithm:key_id pair"
        ))),
    }
}

impl E2eKeysService {
    pub fn new(db: Db) -> Self {
        Self {
            tables: E2eKeyTables::new(db),
            claims: Mutex::new(()),
            update_numbering: Mutex::new(()),
        }
    }

    /// `POST /keys/upload`: stores what the device sends; answers the
    /// device's one-time key counts.
    pub fn upload(
        &self,
        s: &Services,
        user: &UserId,
        device: &str,
        device_keys: Option<&str>,
        one_time_keys: &[(String, String)],
        fallback_keys: &[(String, String)],
    ) -> ServiceResult<BTreeMap<String, u64>> {
        let mut batch = Batch::new();
        let mut keys_changed = false;
        if let Some(json) = device_keys {
            keys_changed = self.check_device_keys(&mut batch, user, device, json)?;
        }
        for (key_id, json) in one_time_keys {
            let algorithm = algorithm_of(key_id)?;
            let json = one_time_key_json(json)?;
            match self.tables.one_time_key(user.as_str(), device, algorithm, key_id)? {
                Some(existing) if existing != json => {
                    return Err(ServiceError::InvalidParam(format!(
                        "one-time key {key_id} already exists with different content"
                    )))
                }
                Some(_) => {}
                None => self
                    .tables
                    .put_one_time_key(&mut batch, user.as_str(), device, algorithm, key_id, &json),
            }
        }
        for (key_id, json) in fallback_keys {
            let algorithm = algorithm_of(key_id)?;
            let json = to_json(&parse_object(json)?);
            let current = self.tables.fallback_key(user.as_str(), device, algorithm)?;
            // The same key again keeps its used flag; a new one replaces it.
            if current.as_ref().is_none_or(|c| c.key_id != *key_id || c.json != json) {
                let record = FallbackKeyRecord {
                    key_id: key_id.clone(),
                    json,
                    used: false,
                };
                self.tables
                    .put_fallback_key(&mut batch, user.as_str(), device, algorithm, &record);
            }
        }
        if keys_changed {
            self.write_with_change(s, batch, user, KeyChange::device(device))?;
        } else {
            self.tables.write(batch)?;
        }
        if !one_time_keys.is_empty() || !fallback_keys.is_empty() {
            s.appservices.device_keys_changed(s, user, device);
        }
        self.one_time_key_counts(user, device)
    }

    /// Checks uploaded device keys; adds them to `batch` when new. Answers
    /// whether they are new.
    fn check_device_keys(&self, batch: &mut Batch, user: &UserId, device: &str, json: &str) -> ServiceResult<bool> {
        let mut object = parse_object(json)?;
        object.remove("unsigned");
        if str_field(&object, "user_id") != Some(user.as_str()) || str_field(&object, "device_id") != Some(device) {
            return Err(ServiceError::InvalidParam(
                "device keys must name this user and device".to_owned(),
            ));
        }
        // Clients verify device keys, not servers: keys of algorithms this
        // server does not know, or without a signature it could check, are
        // stored and served as they came (as Synapse does). Only a
        // signature by the device's own ed25519 key is checked here, since a
        // forged one can be told from the keys alone.
        let ed25519_id = format!("ed25519:{device}");
        let own_key = object_field(&object, "keys").and_then(|keys| str_field(keys, &ed25519_id));
        let self_signed = object_field(&object, "signatures")
            .and_then(|by| object_field(by, user.as_str()))
            .is_some_and(|sigs| sigs.contains_key(&ed25519_id));
        if let (Some(own_key), true) = (own_key, self_signed) {
            check_signature(&object, user.as_str(), &ed25519_id, own_key)
                .map_err(|e| ServiceError::InvalidParam(format!("device keys: {e}")))?;
        }
        let Some(existing) = self.tables.device_keys(user.as_str(), device)? else {
            self.tables
                .put_device_keys(batch, user.as_str(), device, &to_json(&object));
            return Ok(true);
        };
        let mut existing = stored_object(&existing)?;
        // Identity keys are for life: a device with new keys is a new device.
        if existing.get("keys") != object.get("keys") || existing.get("algorithms") != object.get("algorithms") {
            return Err(ServiceError::InvalidParam(format!(
                "device {device} already has different keys; log in as a new device to use new keys"
            )));
        }
        let before = existing.clone();
        if let Some(new_signatures) = object_field(&object, "signatures").cloned() {
            merge_signatures(signatures_mut(&mut existing), &new_signatures);
        }
        if existing == before {
            return Ok(false);
        }
        self.tables
            .put_device_keys(batch, user.as_str(), device, &to_json(&existing));
        Ok(true)
    }

    pub fn one_time_key_counts(&self, user: &UserId, device: &str) -> ServiceResult<BTreeMap<String, u64>> {
        let mut counts: BTreeMap<String, u64> = self
            .tables
            .one_time_key_counts(user.as_str(), device)?
            .into_iter()
            .collect();
        // Clients top up when this is low; an absent count reads as "unknown".
        counts.entry("signed_curve25519".to_owned()).or_insert(0);
        Ok(counts)
    }

    /// The algorithms of the device's fallback keys that no claim has used.
    pub fn unused_fallback_key_types(&self, user: &UserId, device: &str) -> ServiceResult<Vec<String>> {
        Ok(self
            .tables
            .fallback_keys(user.as_str(), device)?
            .into_iter()
            .filter(|(_, r)| !r.used)
            .map(|(algorithm, _)| algorithm)
            .collect())
    }

    /// `POST /keys/query`.
    /// Only this server's users are answered; the API layer asks other
    /// servers for theirs. `requester` is `None` for another server, which
    /// sees no user's own signatures.
    pub fn query(
        &self,
        s: &Services,
        requester: Option<&UserId>,
        wanted: &BTreeMap<OwnedUserId, Vec<String>>,
    ) -> ServiceResult<QueriedKeys> {
        let mut out = QueriedKeys::default();
        for (user, devices) in wanted {
            if user.server_name() != s.config.server_name {
                continue;
            }
            let names = s.devices.display_names(user)?;
            let mut user_devices = BTreeMap::new();
            for (device_id, json) in self.tables.all_device_keys(user.as_str())? {
                if !devices.is_empty() && !devices.contains(&device_id) {
                    continue;
                }
                let mut object = stored_object(&json)?;
                if let Some(requester) = requester {
                    self.add_signatures_by(&mut object, user, &device_id, requester)?;
                }
                let mut value = JsonValue::from(CanonicalJsonValue::Object(object));
                if let Some(Some(name)) = names.get(&device_id) {
                    value["unsigned"] = serde_json::json!({ "device_display_name": name });
                }
                user_devices.insert(device_id, value);
            }
            out.device_keys.insert(user.clone(), user_devices);
            if let Some(master) = self.cross_signing_key_for(user, MASTER, requester)? {
                out.master_keys.insert(user.clone(), master);
            }
            if let Some(key) = self.cross_signing_key_for(user, SELF_SIGNING, requester)? {
                out.self_signing_keys.insert(user.clone(), key);
            }
            if let Some(requester) = requester.filter(|r| *r == user) {
                if let Some(key) = self.cross_signing_key_for(user, USER_SIGNING, Some(requester))? {
                    out.user_signing_keys.insert(user.clone(), key);
                }
            }
        }
        Ok(out)
    }

    /// A cross-signing key with the signatures `viewer` may see.
    fn cross_signing_key_for(
        &self,
        user: &UserId,
        usage: &str,
        viewer: Option<&UserId>,
    ) -> ServiceResult<Option<JsonValue>> {
        let Some(json) = self.tables.cross_signing_key(user.as_str(), usage)? else {
            return Ok(None);
        };
        let mut object = stored_object(&json)?;
        if let (Some((_, public_key)), Some(viewer)) = (cross_signing_public_key(&object), viewer) {
            self.add_signatures_by(&mut object, user, &public_key, viewer)?;
        }
        Ok(Some(JsonValue::from(CanonicalJsonValue::Object(object))))
    }

    /// Adds the signatures `viewer` made on another user's key.
    fn add_signatures_by(
        &self,
        object: &mut CanonicalJsonObject,
        owner: &UserId,
        key_id: &str,
        viewer: &UserId,
    ) -> ServiceResult<()> {
        if owner == viewer {
            return Ok(());
        }
        if let Some(json) = self.tables.signatures_by(owner.as_str(), key_id, viewer.as_str())? {
            let mut from = CanonicalJsonObject::new();
            from.insert(viewer.to_string(), CanonicalJsonValue::Object(stored_object(&json)?));
            merge_signatures(signatures_mut(object), &from);
        }
        Ok(())
    }

    /// `POST /keys/claim`: one key per requested device, taken atomically;
    /// the fallback key when a device has no one-time key left.
    pub fn claim(
        &self,
        s: &Services,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> ServiceResult<(ClaimedKeys, BTreeMap<String, JsonValue>)> {
        let mut claimed = ClaimedKeys::new();
        let failures = BTreeMap::new();
        let _guard = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = Batch::new();
        for (user, devices) in wanted {
            // Other servers' users are claimed from their server (API layer).
            if user.server_name() != s.config.server_name {
                continue;
            }
            let mut user_keys = BTreeMap::new();
            for (device, algorithm) in devices {
                let key = match self.tables.first_one_time_key(user.as_str(), device, algorithm)? {
                    Some((key_id, json)) => {
                        self.tables
                            .delete_one_time_key(&mut batch, user.as_str(), device, algorithm, &key_id);
                        Some((key_id, json))
                    }
                    None => match self.tables.fallback_key(user.as_str(), device, algorithm)? {
                        Some(mut record) => {
                            let key = (record.key_id.clone(), record.json.clone());
                            if !record.used {
                                record.used = true;
                                self.tables
                                    .put_fallback_key(&mut batch, user.as_str(), device, algorithm, &record);
                            }
                            Some(key)
                        }
                        None => None,
                    },
                };
                if let Some((key_id, json)) = key {
                    let value: JsonValue =
                        serde_json::from_str(&json).map_err(|e| ServiceError::Internal(format!("stored key: {e}")))?;
                    user_keys.insert(device.clone(), BTreeMap::from([(key_id, value)]));
                }
            }
            if !user_keys.is_empty() {
                claimed.insert(user.clone(), user_keys);
            }
        }
        self.tables.write(batch)?;
        for (user, devices) in &claimed {
            for device in devices.keys() {
                s.appservices.device_keys_changed(s, user, device);
            }
        }
        Ok((claimed, failures))
    }

    /// `POST /keys/device_signing/upload`. The caller has checked whether
    /// user-interactive auth is needed ([`Self::needs_auth_for_signing_keys`]).
    pub fn upload_signing_keys(
        &self,
        s: &Services,
        user: &UserId,
        master: Option<&str>,
        self_signing: Option<&str>,
        user_signing: Option<&str>,
    ) -> ServiceResult<()> {
        let mut batch = Batch::new();
        let master_object = match master {
            Some(json) => {
                let object = self.check_cross_signing_key(user, MASTER, json)?;
                self.tables
                    .put_cross_signing_key(&mut batch, user.as_str(), MASTER, &to_json(&object));
                object
            }
            None => match self.tables.cross_signing_key(user.as_str(), MASTER)? {
                Some(json) => stored_object(&json)?,
                None if self_signing.is_none() && user_signing.is_none() => return Ok(()),
                None => {
                    return Err(ServiceError::InvalidParam(
                        "upload a master key before the keys it signs".to_owned(),
                    ))
                }
            },
        };
        let (master_id, master_key) = cross_signing_public_key(&master_object)
            .ok_or_else(|| ServiceError::Internal("stored master key has no ed25519 key".to_owned()))?;
        for (usage, json) in [(SELF_SIGNING, self_signing), (USER_SIGNING, user_signing)] {
            let Some(json) = json else { continue };
            let object = self.check_cross_signing_key(user, usage, json)?;
            check_signature(&object, user.as_str(), &master_id, &master_key)
                .map_err(|e| ServiceError::InvalidParam(format!("{usage} key is not signed by the master key: {e}")))?;
            self.tables
                .put_cross_signing_key(&mut batch, user.as_str(), usage, &to_json(&object));
        }
        self.write_with_change(s, batch, user, KeyChange::cross_signing())
    }

    /// Replacing cross-signing keys needs the password; a first upload (or
    /// the same keys again, as clients retry) does not.
    pub fn needs_auth_for_signing_keys(
        &self,
        user: &UserId,
        master: Option<&str>,
        self_signing: Option<&str>,
        user_signing: Option<&str>,
    ) -> ServiceResult<bool> {
        if self.tables.cross_signing_key(user.as_str(), MASTER)?.is_none() {
            return Ok(false);
        }
        for (usage, json) in [
            (MASTER, master),
            (SELF_SIGNING, self_signing),
            (USER_SIGNING, user_signing),
        ] {
            let Some(json) = json else { continue };
            let new = parse_object(json)?;
            let same = match self.tables.cross_signing_key(user.as_str(), usage)? {
                Some(stored) => stored_object(&stored)?.get("keys") == new.get("keys"),
                None => false,
            };
            if !same {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn check_cross_signing_key(&self, user: &UserId, usage: &str, json: &str) -> ServiceResult<CanonicalJsonObject> {
        let object = parse_object(json)?;
        if str_field(&object, "user_id") != Some(user.as_str()) {
            return Err(ServiceError::InvalidParam(format!(
                "the {usage} key must name this user"
            )));
        }
        let usages = match object.get("usage") {
            Some(CanonicalJsonValue::Array(u)) => u,
            _ => return Err(bad_json(format!("the {usage} key has no usage"))),
        };
        if !usages
            .iter()
            .any(|u| matches!(u, CanonicalJsonValue::String(s) if s == usage))
        {
            return Err(ServiceError::InvalidParam(format!(
                "the {usage} key's usage must include {usage}"
            )));
        }
        if cross_signing_public_key(&object).is_none() {
            return Err(ServiceError::InvalidParam(format!(
                "the {usage} key must have exactly one ed25519 key"
            )));
        }
        Ok(object)
    }

    /// `POST /keys/signatures/upload`: answers failures per user and key.
    pub fn upload_signatures(
        &self,
        s: &Services,
        signer: &UserId,
        signed: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> ServiceResult<BTreeMap<OwnedUserId, BTreeMap<String, JsonValue>>> {
        let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, JsonValue>> = BTreeMap::new();
        let mut batch = Batch::new();
        let mut changed_users = BTreeMap::<OwnedUserId, KeyChange>::new();
        for (target, keys) in signed {
            for (key_id, json) in keys {
                match self.add_signature(&mut batch, signer, target, key_id, json) {
                    Ok(Some(change)) => {
                        let changes: &mut KeyChange = changed_users.entry(target.clone()).or_default();
                        changes.devices.extend(change.devices);
                        changes.cross_signing |= change.cross_signing;
                    }
                    Ok(None) => {}
                    Err(reason) => {
                        failures.entry(target.clone()).or_default().insert(
                            key_id.clone(),
                            serde_json::json!({"errcode": "M_INVALID_SIGNATURE", "error": reason}),
                        );
                    }
                }
            }
        }
        let mut changed = changed_users.into_iter();
        match changed.next() {
            None => self.tables.write(batch)?,
            Some((first, change)) => {
                // The writes go in one batch under the first change; the
                // others are recorded right after.
                self.write_with_change(s, batch, &first, change)?;
                for (user, change) in changed {
                    self.write_with_change(s, Batch::new(), &user, change)?;
                }
            }
        }
        Ok(failures)
    }

    /// Checks one uploaded signature and adds it to `batch`. Answers what
    /// of the target's keys changed (nothing: `None`), or why the signature
    /// is refused.
    fn add_signature(
        &self,
        batch: &mut Batch,
        signer: &UserId,
        target: &UserId,
        key_id: &str,
        json: &str,
    ) -> Result<Option<KeyChange>, String> {
        let object: CanonicalJsonObject = serde_json::from_str(json).map_err(|e| format!("not a JSON object: {e}"))?;
        let db = |e: crate::database::DbError| e.to_string();
        let new_signatures = object_field(&object, "signatures")
            .and_then(|s| object_field(s, signer.as_str()))
            .cloned()
            .ok_or("no signature by the uploader")?;
        // Which stored key is signed: a device or a cross-signing key.
        let (stored_json, usage) = if target == signer {
            match self.tables.device_keys(target.as_str(), key_id).map_err(db)? {
                Some(json) => (json, None),
                None => {
                    let master = self.tables.cross_signing_key(target.as_str(), MASTER).map_err(db)?;
                    match master {
                        Some(json) if self.public_key_of(&json).as_deref() == Some(key_id) => (json, Some(MASTER)),
                        _ => return Err(format!("{key_id} is not a device or master key of {target}")),
                    }
                }
            }
        } else {
            match self.tables.cross_signing_key(target.as_str(), MASTER).map_err(db)? {
                Some(json) if self.public_key_of(&json).as_deref() == Some(key_id) => (json, Some(MASTER)),
                _ => return Err(format!("{key_id} is not the master key of {target}")),
            }
        };
        let stored: CanonicalJsonObject = serde_json::from_str(&stored_json).map_err(|e| e.to_string())?;
        // The signed object must be the stored key, signatures aside.
        let strip = |o: &CanonicalJsonObject| {
            let mut o = o.clone();
            o.remove("signatures");
            o.remove("unsigned");
            o
        };
        if strip(&stored) != strip(&object) {
            return Err("the signed object is not the stored key".to_owned());
        }
        // Who may sign what: one's own devices with the self-signing key,
        // one's master key with a device key, another's master key with the
        // user-signing key.
        let signer_keys: Vec<(String, String)> = if target != signer {
            self.cross_signing_pair(signer, USER_SIGNING)
                .map_err(db)?
                .into_iter()
                .collect()
        } else if usage.is_none() {
            self.cross_signing_pair(signer, SELF_SIGNING)
                .map_err(db)?
                .into_iter()
                .collect()
        } else {
            self.tables
                .all_device_keys(signer.as_str())
                .map_err(db)?
                .into_iter()
                .filter_map(|(device, json)| {
                    let o: CanonicalJsonObject = serde_json::from_str(&json).ok()?;
                    let id = format!("ed25519:{device}");
                    let key = str_field(object_field(&o, "keys")?, &id)?.to_owned();
                    Some((id, key))
                })
                .collect()
        };
        let mut verified = CanonicalJsonObject::new();
        for (sig_key_id, signature) in &new_signatures {
            let Some((_, public_key)) = signer_keys.iter().find(|(id, _)| id == sig_key_id) else {
                continue;
            };
            check_signature(&object, signer.as_str(), sig_key_id, public_key)?;
            verified.insert(sig_key_id.clone(), signature.clone());
        }
        if verified.is_empty() {
            return Err("no signature by a key allowed to sign this key".to_owned());
        }
        if target == signer {
            let mut updated = stored.clone();
            let mut from = CanonicalJsonObject::new();
            from.insert(signer.to_string(), CanonicalJsonValue::Object(verified));
            merge_signatures(signatures_mut(&mut updated), &from);
            if updated == stored {
                return Ok(None);
            }
            match usage {
                None => self
                    .tables
                    .put_device_keys(batch, target.as_str(), key_id, &to_json(&updated)),
                Some(usage) => self
                    .tables
                    .put_cross_signing_key(batch, target.as_str(), usage, &to_json(&updated)),
            }
        } else {
            let mut all = match self
                .tables
                .signatures_by(target.as_str(), key_id, signer.as_str())
                .map_err(db)?
            {
                Some(json) => serde_json::from_str(&json).map_err(|e| e.to_string())?,
                None => CanonicalJsonObject::new(),
            };
            all.extend(verified);
            self.tables
                .put_signatures_by(batch, target.as_str(), key_id, signer.as_str(), &to_json(&all));
        }
        Ok(Some(match usage {
            None => KeyChange::device(key_id),
            Some(_) => KeyChange::cross_signing(),
        }))
    }

    fn public_key_of(&self, json: &str) -> Option<String> {
        let object: CanonicalJsonObject = serde_json::from_str(json).ok()?;
        cross_signing_public_key(&object).map(|(_, key)| key)
    }

    /// A user's cross-signing key of one usage: (key ID, public key).
    fn cross_signing_pair(&self, user: &UserId, usage: &str) -> crate::database::DbResult<Option<(String, String)>> {
        Ok(self
            .tables
            .cross_signing_key(user.as_str(), usage)?
            .and_then(|json| serde_json::from_str::<CanonicalJsonObject>(&json).ok())
            .and_then(|o| cross_signing_public_key(&o)))
    }

    /// Adds deletes of a device's keys to `batch` (the caller records the
    /// change with [`Self::write_with_change`]).
    pub fn delete_device_in(&self, batch: &mut Batch, user: &UserId, device: &str) -> ServiceResult<()> {
        Ok(self.tables.delete_device(batch, user.as_str(), device)?)
    }

    /// Writes `batch` together with a device-list change of `user`, and
    /// wakes everyone who shares a room with them (as Synapse does: a room
    /// may turn encrypted later, and clients track whom they see). For our
    /// own users, `change` also goes to the other servers they share a room
    /// with, numbered in the same write.
    pub fn write_with_change(
        &self,
        s: &Services,
        mut batch: Batch,
        user: &UserId,
        change: KeyChange,
    ) -> ServiceResult<()> {
        let interested = self.peers(s, user, false)?;
        let ours = user.server_name() == s.config.server_name;
        let _numbering = ours.then(|| self.update_numbering.lock().unwrap_or_else(|e| e.into_inner()));
        let mut updates = NumberedUpdates {
            cross_signing: change.cross_signing,
            ..NumberedUpdates::default()
        };
        if ours && !change.devices.is_empty() {
            updates.prev = self.tables.device_list_stream_id(user.as_str())?;
            let mut next = updates.prev;
            for device in change.devices {
                next += 1;
                updates.devices.push((device, next));
            }
            self.tables.put_device_list_stream_id(&mut batch, user.as_str(), next);
        }
        // MSC3202 appservices following the user learn of it in this write.
        let to_appservices = s.appservices.stage_device_list_change(s, &mut batch, user)?;
        let stream = &s.timeline.stream;
        let ticket = stream.begin()?;
        let position = ticket.0;
        self.tables.put_device_list_change(&mut batch, position, user.as_str());
        let written = self.tables.write(batch);
        if written.is_ok() {
            s.outbox.committed(&to_appservices);
        }
        let users: Vec<OwnedUserId> = if written.is_ok() {
            interested
                .iter()
                .filter_map(|u| OwnedUserId::try_from(u.as_str()).ok())
                .chain(std::iter::once(user.to_owned()))
                .collect()
        } else {
            Vec::new()
        };
        stream.finish(ticket, users.iter().map(|u| &**u));
        written?;
        // Other servers update their copy of the user's device list. Should
        // this be lost (a crash right here), the next update's `prev_id`
        // shows them the gap and they fetch the whole list.
        if ours {
            if let Err(e) = s.federation.send_device_list_updates(s, user, &updates) {
                tracing::warn!(%user, error = %e, "device list update not queued for other servers");
            }
        }
        Ok(())
    }

    /// The `stream_id` of our `user`'s latest device list update, as
    /// `/user/devices` answers it (0: none yet).
    pub fn device_list_stream_id(&self, user: &UserId) -> ServiceResult<u64> {
        Ok(self.tables.device_list_stream_id(user.as_str())?)
    }

    /// Users who share a room with `user` (joined now); only encrypted
    /// rooms when `encrypted_only`.
    pub fn peers(&self, s: &Services, user: &UserId, encrypted_only: bool) -> ServiceResult<HashSet<String>> {
        let mut peers = HashSet::new();
        for (room_id, membership) in s.timeline.user_rooms(user)? {
            if membership.membership != "join" || (encrypted_only && !self.is_encrypted(s, &room_id)?) {
                continue;
            }
            for (member, m) in s.timeline.members(&room_id)?.iter().cloned() {
                if m == "join" {
                    peers.insert(member);
                }
            }
        }
        Ok(peers)
    }

    fn is_encrypted(&self, s: &Services, room_id: &ruma::RoomId) -> ServiceResult<bool> {
        let Some(record) = s.timeline.room(room_id)? else {
            return Ok(false);
        };
        Ok(s.timeline
            .state_event(s, record.state_snapshot, "m.room.encryption", "")?
            .is_some())
    }

    /// Whose keys `user` should re-fetch, and whom they no longer share an
    /// encrypted room with, between stream positions `from` and `to`.
    pub fn device_list_updates(
        &self,
        s: &Services,
        user: &UserId,
        from: u64,
        to: u64,
    ) -> ServiceResult<DeviceListUpdates> {
        let mut updates = DeviceListUpdates::default();
        // Key and device changes of anyone who shares a room with the user
        // (read only when there are changes, since most syncs have none).
        let changes = self.tables.device_list_changes(from, to)?;
        if !changes.is_empty() {
            let peers = self.peers(s, user, false)?;
            for (_, changed) in changes {
                if changed == user.as_str() || peers.contains(&changed) {
                    updates.changed.insert(changed);
                }
            }
        }
        // Membership changes in encrypted rooms: whom the user started or
        // stopped sharing one with.
        let mut gone = BTreeSet::new();
        for (room_id, membership) in s.timeline.user_rooms(user)? {
            let Some(record) = s.timeline.room(&room_id)? else {
                continue;
            };
            if record.last_count <= from || !self.is_encrypted(s, &room_id)? {
                continue;
            }
            let own_change = membership.count > from && membership.count <= to;
            if own_change {
                // The user joined (everyone is new) or left (everyone may be gone).
                for (member, m) in s.timeline.members(&room_id)?.iter().cloned() {
                    match membership.membership.as_str() {
                        "join" if m == "join" => {
                            updates.changed.insert(member);
                        }
                        "leave" | "ban" => {
                            gone.insert(member);
                        }
                        _ => {}
                    }
                }
                continue;
            }
            if membership.membership != "join" {
                continue;
            }
            let mut scanned = 0;
            for event in s.timeline.events(&record, Some(to), Direction::Backward) {
                let event = event?;
                if crate::database::rooms::position::stream(event.count) <= from {
                    break;
                }
                scanned += 1;
                if scanned > MEMBERSHIP_SCAN_LIMIT {
                    for (member, m) in s.timeline.members(&room_id)?.iter().cloned() {
                        if m == "join" {
                            updates.changed.insert(member);
                        }
                    }
                    break;
                }
                if event.event_type() != "m.room.member" {
                    continue;
                }
                let Some(member) = event.state_key() else { continue };
                match event.content_str("membership") {
                    Some("join") => {
                        updates.changed.insert(member.to_owned());
                    }
                    Some("leave" | "ban") => {
                        gone.insert(member.to_owned());
                    }
                    _ => {}
                }
            }
        }
        if gone.is_empty() {
            return Ok(updates);
        }
        // `left` is, as the spec says, whom the user no longer shares an
        // encrypted room with.
        let peers = self.peers(s, user, true)?;
        for member in gone {
            if member != user.as_str() && !peers.contains(&member) {
                updates.changed.remove(&member);
                updates.left.insert(member);
            }
        }
        Ok(updates)
    }
}

/// Claimed keys: user → device → key ID → key.
pub type ClaimedKeys = BTreeMap<OwnedUserId, BTreeMap<String, BTreeMap<String, JsonValue>>>;
