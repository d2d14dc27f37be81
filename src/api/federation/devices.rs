//! Our users' encryption keys and devices, as other servers ask for them:
//! `user/keys/query`, `user/keys/claim`, `user/devices/{userId}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::api::federation::device::get_devices;
use ruma::api::federation::keys::{claim_keys, get_keys};
use ruma::serde::Raw;
use ruma::{OwnedDeviceId, UInt};

use crate::api::client::keys::{claims_wanted, device_keys_json, one_time_keys_json, user_keys_json};
use crate::api::{ApiError, Router, Ruma};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(query_keys);
    router.add(claim_keys_handler);
    router.add(devices);
}

fn raw<T>(value: &serde_json::Value) -> Result<Raw<T>, ApiError> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|e| ApiError::Internal(format!("key JSON: {e}")))
}

async fn query_keys(
    services: Arc<Services>,
    req: Ruma<get_keys::v1::Request>,
) -> Result<get_keys::v1::Response, ApiError> {
    let wanted = req
        .body
        .device_keys
        .into_iter()
        .map(|(u, devices)| (u, devices.into_iter().map(|d| d.to_string()).collect()))
        .collect();
    let keys = services.run(move |s| s.e2e_keys.query(s, None, &wanted)).await?;
    let mut response = get_keys::v1::Response::new(device_keys_json(keys.device_keys)?);
    response.master_keys = user_keys_json(keys.master_keys)?;
    response.self_signing_keys = user_keys_json(keys.self_signing_keys)?;
    Ok(response)
}

async fn claim_keys_handler(
    services: Arc<Services>,
    req: Ruma<claim_keys::v1::Request>,
) -> Result<claim_keys::v1::Response, ApiError> {
    let wanted = claims_wanted(req.body.one_time_keys);
    let (claimed, _) = services.run(move |s| s.e2e_keys.claim(s, &wanted)).await?;
    Ok(claim_keys::v1::Response::new(one_time_keys_json(claimed)?))
}

async fn devices(
    services: Arc<Services>,
    req: Ruma<get_devices::v1::Request>,
) -> Result<get_devices::v1::Response, ApiError> {
    let user = req.body.user_id;
    if user.server_name() != services.config.server_name {
        return Err(ApiError::Forbidden(format!("{user} is not a user of this server")));
    }
    let (keys, names, stream_id) = {
        let user = user.clone();
        services
            .run(move |s| {
                // The stream ID first: should an update land meanwhile, the
                // list is newer than the ID says, never older (the update's
                // EDU then applies again, harmlessly).
                let stream_id = s.e2e_keys.device_list_stream_id(&user)?;
                let wanted = BTreeMap::from([(user.clone(), Vec::new())]);
                let keys = s.e2e_keys.query(s, None, &wanted)?;
                let names = s.devices.display_names(&user)?;
                Ok((keys, names, stream_id))
            })
            .await?
    };
    let mut response = get_devices::v1::Response::new(user.clone(), UInt::new(stream_id).unwrap_or_default());
    if let Some(devices) = keys.device_keys.get(&user) {
        for (device, json) in devices {
            let mut entry = get_devices::v1::UserDevice::new(OwnedDeviceId::from(device.as_str()), raw(json)?);
            entry.device_display_name = names.get(device).cloned().flatten();
            response.devices.push(entry);
        }
    }
    if let Some(master) = keys.master_keys.get(&user) {
        response.master_key = Some(raw(master)?);
    }
    if let Some(key) = keys.self_signing_keys.get(&user) {
        response.self_signing_key = Some(raw(key)?);
    }
    Ok(response)
}
