//! End-to-end encryption keys and send-to-device messages.

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::api::client::keys::{
    claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
};
use ruma::api::client::to_device::send_event_to_device;
use ruma::serde::Raw;
use ruma::to_device::DeviceIdOrAllDevices;
use ruma::{OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, UInt};

use super::raw;
use crate::api::router::{Hooks, JsonObject};
use crate::api::{ApiError, Router, Ruma};
use crate::service::e2e_keys::ClaimedKeys;
use crate::service::federation::devices::KeyQuery;
use crate::service::sync::parse_token;
use crate::service::to_device::Recipient;
use crate::service::uiaa::Purpose;
use crate::service::Services;

/// `failures` in `/keys/query` and `/keys/claim` even when empty (ruma
/// leaves it out): the spec's examples and Synapse always send it, and
/// clients (Hydrogen) read it without a check.
fn always_list_failures(response: &mut JsonObject) {
    response
        .entry("failures")
        .or_insert_with(|| serde_json::Value::Object(JsonObject::new()));
}

pub fn register_routes(router: &mut Router) {
    router.add(upload);
    router.add_with(Hooks::response(always_list_failures), query);
    router.add_with(Hooks::response(always_list_failures), claim);
    router.add(changes);
    router.add(upload_signing);
    router.add(upload_signatures_handler);
    router.add(send_to_device);
}

fn counts(counts: BTreeMap<String, u64>) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
    counts
        .into_iter()
        .map(|(a, n)| (OneTimeKeyAlgorithm::from(a.as_str()), UInt::new(n).unwrap_or_default()))
        .collect()
}

fn key_list<T>(keys: &BTreeMap<OwnedOneTimeKeyId, Raw<T>>) -> Vec<(String, String)> {
    keys.iter()
        .map(|(id, key)| (id.to_string(), key.json().get().to_owned()))
        .collect()
}

async fn upload(
    services: Arc<Services>,
    req: Ruma<upload_keys::v3::Request>,
) -> Result<upload_keys::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    // Keys belong to a device: an appservice names the one it acts for.
    let device = req
        .real_device()
        .ok_or_else(|| {
            ApiError::MissingParam("an appservice uploads keys for the device named in device_id".to_owned())
        })?
        .to_owned();
    let body = req.body;
    let device_keys = body.device_keys.map(|k| k.json().get().to_owned());
    let one_time_keys = key_list(&body.one_time_keys);
    let fallback_keys = key_list(&body.fallback_keys);
    let counted = services
        .run(move |s| {
            s.e2e_keys.upload(
                s,
                &user,
                device.as_str(),
                device_keys.as_deref(),
                &one_time_keys,
                &fallback_keys,
            )
        })
        .await?;
    Ok(upload_keys::v3::Response::new(counts(counted)))
}

async fn query(services: Arc<Services>, req: Ruma<get_keys::v3::Request>) -> Result<get_keys::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let own_server = services.config.server_name.clone();
    let mut remote: BTreeMap<ruma::OwnedServerName, KeyQuery> = BTreeMap::new();
    let mut wanted = BTreeMap::new();
    for (u, devices) in req.body.device_keys {
        if u.server_name() == own_server {
            wanted.insert(u, devices.into_iter().map(|d| d.to_string()).collect());
        } else {
            remote.entry(u.server_name().to_owned()).or_default().insert(u, devices);
        }
    }
    let keys = services.run(move |s| s.e2e_keys.query(s, Some(&user), &wanted)).await?;
    let mut response = get_keys::v3::Response::new();
    response.failures = keys.failures;
    // Other servers' users: asked of their servers.
    let (answers, failures) = services.federation.query_keys(&services, remote).await;
    response.failures.extend(failures);
    for answer in answers {
        response.device_keys.extend(answer.device_keys);
        response.master_keys.extend(answer.master_keys);
        response.self_signing_keys.extend(answer.self_signing_keys);
    }
    response.device_keys.extend(device_keys_json(keys.device_keys)?);
    response.master_keys.extend(user_keys_json(keys.master_keys)?);
    response
        .self_signing_keys
        .extend(user_keys_json(keys.self_signing_keys)?);
    response
        .user_signing_keys
        .extend(user_keys_json(keys.user_signing_keys)?);
    Ok(response)
}

async fn claim(
    services: Arc<Services>,
    req: Ruma<claim_keys::v3::Request>,
) -> Result<claim_keys::v3::Response, ApiError> {
    let own_server = services.config.server_name.clone();
    let (local, others): (BTreeMap<_, _>, BTreeMap<_, _>) = req
        .body
        .one_time_keys
        .into_iter()
        .partition(|(u, _)| u.server_name() == own_server);
    let mut remote: BTreeMap<ruma::OwnedServerName, BTreeMap<_, _>> = BTreeMap::new();
    for (u, devices) in others {
        remote.entry(u.server_name().to_owned()).or_default().insert(u, devices);
    }
    let wanted = claims_wanted(local);
    let (claimed, failures) = services.run(move |s| s.e2e_keys.claim(s, &wanted)).await?;
    let mut response = claim_keys::v3::Response::new(one_time_keys_json(claimed)?);
    response.failures = failures;
    let (answers, failures) = services.federation.claim_keys(remote).await;
    response.failures.extend(failures);
    for answer in answers {
        response.one_time_keys.extend(answer.one_time_keys);
    }
    Ok(response)
}

/// Queried device keys as the client and federation answers carry them.
pub(crate) fn device_keys_json<T>(
    keys: BTreeMap<ruma::OwnedUserId, BTreeMap<String, serde_json::Value>>,
) -> Result<BTreeMap<ruma::OwnedUserId, BTreeMap<OwnedDeviceId, Raw<T>>>, ApiError> {
    let mut out = BTreeMap::new();
    for (user, devices) in keys {
        let mut user_devices = BTreeMap::new();
        for (device, json) in devices {
            user_devices.insert(OwnedDeviceId::from(device), raw(&json)?);
        }
        out.insert(user, user_devices);
    }
    Ok(out)
}

/// One key per user (cross-signing keys) as the answers carry them.
pub(crate) fn user_keys_json<T>(
    keys: BTreeMap<ruma::OwnedUserId, serde_json::Value>,
) -> Result<BTreeMap<ruma::OwnedUserId, Raw<T>>, ApiError> {
    keys.into_iter().map(|(user, json)| Ok((user, raw(&json)?))).collect()
}

/// A claim request's users → devices → algorithm, as the service reads it.
pub(crate) fn claims_wanted(
    claims: BTreeMap<ruma::OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
) -> BTreeMap<ruma::OwnedUserId, BTreeMap<String, String>> {
    claims
        .into_iter()
        .map(|(u, devices)| {
            let devices = devices
                .into_iter()
                .map(|(d, algorithm)| (d.to_string(), algorithm.to_string()))
                .collect();
            (u, devices)
        })
        .collect()
}

/// Claimed one-time keys as the client and federation answers carry them.
pub(crate) fn one_time_keys_json<T>(claimed: ClaimedKeys) -> Result<OneTimeKeysJson<T>, ApiError> {
    let mut one_time_keys = BTreeMap::new();
    for (user, devices) in claimed {
        let mut user_keys = BTreeMap::new();
        for (device, keys) in devices {
            let mut device_keys = BTreeMap::new();
            for (key_id, json) in keys {
                let key_id = OwnedOneTimeKeyId::try_from(key_id)
                    .map_err(|e| ApiError::Internal(format!("stored one-time key ID: {e}")))?;
                device_keys.insert(key_id, raw(&json)?);
            }
            user_keys.insert(OwnedDeviceId::from(device), device_keys);
        }
        one_time_keys.insert(user, user_keys);
    }
    Ok(one_time_keys)
}

/// Users → devices → one-time key ID → key.
pub(crate) type OneTimeKeysJson<T> =
    BTreeMap<ruma::OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<OwnedOneTimeKeyId, Raw<T>>>>;

async fn changes(
    services: Arc<Services>,
    req: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let from = parse_token(&req.body.from)?;
    let to = parse_token(&req.body.to)?;
    let updates = services
        .run(move |s| s.e2e_keys.device_list_updates(s, &user, from, to))
        .await?;
    let ids = |set: std::collections::BTreeSet<String>| {
        set.into_iter()
            .filter_map(|u| ruma::OwnedUserId::try_from(u).ok())
            .collect()
    };
    Ok(get_key_changes::v3::Response::new(
        ids(updates.changed),
        ids(updates.left),
    ))
}

async fn upload_signing(
    services: Arc<Services>,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let json = |k: Option<Raw<_>>| k.map(|k: Raw<ruma::encryption::CrossSigningKey>| k.json().get().to_owned());
    let (master, self_signing, user_signing) = (
        json(body.master_key),
        json(body.self_signing_key),
        json(body.user_signing_key),
    );
    let auth = body.auth;
    services
        .run(move |s| {
            let (master, self_signing, user_signing) =
                (master.as_deref(), self_signing.as_deref(), user_signing.as_deref());
            if s.e2e_keys
                .needs_auth_for_signing_keys(&user, master, self_signing, user_signing)?
            {
                s.uiaa
                    .authenticate(&s.users, Some(&user), Purpose::SigningKeys, "", auth.as_ref())?;
            }
            s.e2e_keys
                .upload_signing_keys(s, &user, master, self_signing, user_signing)
        })
        .await?;
    Ok(upload_signing_keys::v3::Response::new())
}

async fn upload_signatures_handler(
    services: Arc<Services>,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let signed = req
        .body
        .signed_keys
        .iter()
        .map(|(u, keys)| {
            let keys = keys
                .iter()
                .map(|(id, json)| (id.to_owned(), json.get().to_owned()))
                .collect();
            (u.clone(), keys)
        })
        .collect();
    let failures = services
        .run(move |s| s.e2e_keys.upload_signatures(s, &user, &signed))
        .await?;
    let mut response = upload_signatures::v3::Response::new();
    for (user, keys) in failures {
        let mut out = BTreeMap::new();
        for (key_id, failure) in keys {
            let failure =
                serde_json::from_value(failure).map_err(|e| ApiError::Internal(format!("signature failure: {e}")))?;
            out.insert(key_id, failure);
        }
        response.failures.insert(user, out);
    }
    Ok(response)
}

async fn send_to_device(
    services: Arc<Services>,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device()?.to_owned();
    let body = req.body;
    let event_type = body.event_type.to_string();
    let txn_id = body.txn_id.to_string();
    let mut messages = Vec::new();
    for (target, devices) in body.messages {
        for (recipient, content) in devices {
            let recipient = match recipient {
                DeviceIdOrAllDevices::DeviceId(id) => Recipient::Device(id.to_string()),
                DeviceIdOrAllDevices::AllDevices => Recipient::AllDevices,
            };
            messages.push((target.clone(), recipient, content.into_json()));
        }
    }
    services
        .run(move |s| {
            s.to_device
                .send(s, &user, device.as_str(), &event_type, &txn_id, &messages)
        })
        .await?;
    Ok(send_event_to_device::v3::Response::new())
}
