//! Devices: list, get, rename, delete (with user-interactive auth).

use std::sync::Arc;

use ruma::api::client::admin::get_user_info;
use ruma::api::client::device::{delete_device, delete_devices, get_device, get_devices, update_device};

use crate::api::{ApiError, Router, Ruma};
use crate::service::uiaa::Purpose;
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(whois);
    router.add(list);
    router.add(get);
    router.add(rename);
    router.add(delete_one);
    router.add(delete_many);
}

async fn list(
    services: Arc<Services>,
    req: Ruma<get_devices::v3::Request>,
) -> Result<get_devices::v3::Response, ApiError> {
    let user_id = req.user()?.to_owned();
    let devices = services.run(move |s| s.devices.list(&user_id)).await?;
    Ok(get_devices::v3::Response::new(devices))
}

async fn get(
    services: Arc<Services>,
    req: Ruma<get_device::v3::Request>,
) -> Result<get_device::v3::Response, ApiError> {
    let user_id = req.user()?.to_owned();
    let device_id = req.body.device_id;
    let device = services
        .run(move |s| s.devices.get(&user_id, device_id.as_str()))
        .await?;
    Ok(get_device::v3::Response::new(device))
}

async fn rename(
    services: Arc<Services>,
    req: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response, ApiError> {
    let user_id = req.user()?.to_owned();
    let body = req.body;
    services
        .run(move |s| {
            s.devices
                .rename(s, &user_id, body.device_id.as_str(), body.display_name)
        })
        .await?;
    Ok(update_device::v3::Response::new())
}

async fn delete_one(
    services: Arc<Services>,
    req: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response, ApiError> {
    let user_id = req.user()?.to_owned();
    let body = req.body;
    services
        .run(move |s| {
            // 404 for an unknown device before asking for a password.
            s.devices.get(&user_id, body.device_id.as_str())?;
            // Bound to the device in the path: a session started to delete
            // one device cannot delete another.
            s.uiaa.authenticate(
                &s.users,
                Some(&user_id),
                Purpose::DeleteDevices,
                body.device_id.as_str(),
                body.auth.as_ref(),
            )?;
            s.devices.delete(s, &user_id, &[body.device_id])
        })
        .await?;
    Ok(delete_device::v3::Response::new())
}

async fn delete_many(
    services: Arc<Services>,
    req: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response, ApiError> {
    let user_id = req.user()?.to_owned();
    let body = req.body;
    services
        .run(move |s| {
            // One endpoint, one operation whatever the list (as Synapse,
            // which binds a session to the method and path).
            s.uiaa
                .authenticate(&s.users, Some(&user_id), Purpose::DeleteDevices, "", body.auth.as_ref())?;
            s.devices.delete(s, &user_id, &body.devices)
        })
        .await?;
    Ok(delete_devices::v3::Response::new())
}

/// `GET /admin/whois/{userId}`: a user's devices with where and when each
/// was last seen, for the user themself and for server admins.
async fn whois(
    services: Arc<Services>,
    req: Ruma<get_user_info::v3::Request>,
) -> Result<get_user_info::v3::Response, ApiError> {
    use get_user_info::v3::{ConnectionInfo, DeviceInfo, SessionInfo};
    let user_id = req.user()?.to_owned();
    let target = req.body.user_id;
    let looked_up = target.clone();
    let devices = services
        .run(move |s| {
            if looked_up != user_id && !s.users.is_admin(&user_id)? {
                return Err(ServiceError::Forbidden(
                    "only server admins may look up other users".to_owned(),
                ));
            }
            if !s.users.exists(&looked_up)? {
                return Err(ServiceError::NotFound("unknown user".to_owned()));
            }
            s.devices.list(&looked_up)
        })
        .await?;
    let mut response = get_user_info::v3::Response::new();
    response.user_id = Some(target);
    for device in devices {
        let mut connection = ConnectionInfo::new();
        connection.ip = device.last_seen_ip;
        connection.last_seen = device.last_seen_ts;
        let mut session = SessionInfo::new();
        session.connections.push(connection);
        let mut info = DeviceInfo::new();
        info.sessions.push(session);
        response.devices.insert(device.device_id.to_string(), info);
    }
    Ok(response)
}
