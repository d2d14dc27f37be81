//! Dehydrated devices (MSC3814 unstable endpoints).

use std::sync::Arc;

use ruma::api::client::dehydrated_device::{
    delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
};
use ruma::serde::Raw;
use ruma::OwnedDeviceId;

use crate::api::{ApiError, Router, Ruma};
use crate::service::dehydrated_devices::NewDehydratedDevice;
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(put);
    router.add(get);
    router.add(delete);
    router.add(events);
}

async fn put(
    services: Arc<Services>,
    req: Ruma<put_dehydrated_device::unstable::Request>,
) -> Result<put_dehydrated_device::unstable::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let device_id = body.device_id.clone();
    let keys = |m: &std::collections::BTreeMap<ruma::OwnedOneTimeKeyId, Raw<_>>| {
        m.iter()
            .map(|(id, k): (_, &Raw<ruma::encryption::OneTimeKey>)| (id.to_string(), k.json().get().to_owned()))
            .collect()
    };
    let new = NewDehydratedDevice {
        device_id: body.device_id.to_string(),
        display_name: body.initial_device_display_name,
        device_data: body.device_data.json().get().to_owned(),
        device_keys: body.device_keys.json().get().to_owned(),
        one_time_keys: keys(&body.one_time_keys),
        fallback_keys: keys(&body.fallback_keys),
    };
    services.run(move |s| s.dehydrated_devices.put(s, &user, new)).await?;
    Ok(put_dehydrated_device::unstable::Response::new(device_id))
}

async fn get(
    services: Arc<Services>,
    req: Ruma<get_dehydrated_device::unstable::Request>,
) -> Result<get_dehydrated_device::unstable::Response, ApiError> {
    let user = req.user()?.to_owned();
    let (device_id, data) = services.run(move |s| s.dehydrated_devices.get(s, &user)).await?;
    Ok(get_dehydrated_device::unstable::Response::new(
        OwnedDeviceId::from(device_id),
        Raw::from_json(data),
    ))
}

async fn delete(
    services: Arc<Services>,
    req: Ruma<delete_dehydrated_device::unstable::Request>,
) -> Result<delete_dehydrated_device::unstable::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device_id = services.run(move |s| s.dehydrated_devices.delete(s, &user)).await?;
    Ok(delete_dehydrated_device::unstable::Response::new(OwnedDeviceId::from(
        device_id,
    )))
}

async fn events(
    services: Arc<Services>,
    req: Ruma<get_events::unstable::Request>,
) -> Result<get_events::unstable::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let (events, next_batch) = services
        .run(move |s| {
            s.dehydrated_devices
                .events(s, &user, body.device_id.as_str(), body.next_batch.as_deref())
        })
        .await?;
    let mut response = get_events::unstable::Response::new(events.into_iter().map(Raw::from_json).collect());
    response.next_batch = Some(next_batch);
    Ok(response)
}
