//! Devices: list, get, rename, delete (with user-interactive auth).

use std::sync::Arc;

use actix_web::HttpResponse;
use ruma::api::client::admin::get_user_info;
use ruma::api::client::device::{delete_device, delete_devices, get_device, get_devices, update_device};

use crate::api::router::Written;
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

/// `PUT /devices/{deviceId}`: renames a device; for an appservice that
/// manages its users' devices (MSC4190), creates it if missing (201).
async fn rename(services: Arc<Services>, req: Ruma<update_device::v3::Request>) -> Result<Written, ApiError> {
    let user_id = req.user()?.to_owned();
    let may_create = manages_devices(&req);
    let body = req.body;
    let created = services
        .run(move |s| {
            let device_id = body.device_id.as_str();
            if may_create && matches!(s.devices.get(&user_id, device_id), Err(ServiceError::NotFound(_))) {
                s.devices.create_unused(s, &user_id, device_id, body.display_name)?;
                return Ok(true);
            }
            s.devices.rename(s, &user_id, device_id, body.display_name)?;
            Ok(false)
        })
        .await?;
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(Written(response.json(serde_json::json!({}))))
}

/// Whether the request is an appservice's that manages its users' devices
/// itself (MSC4190): it creates and deletes them without a password.
fn manages_devices<T>(req: &Ruma<T>) -> bool {
    req.appservice.as_ref().is_some_and(|a| a.registration.msc4190)
}

async fn delete_one(
    services: Arc<Services>,
    req: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response, ApiError> {
    let user_id = req.user()?.to_owned();
    let without_password = manages_devices(&req);
    let body = req.body;
    services
        .run(move |s| {
            // 404 for an unknown device before asking for a password.
            s.devices.get(&user_id, body.device_id.as_str())?;
            if without_password {
                return s.devices.delete(s, &user_id, &[body.device_id]);
            }
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
    let without_password = manages_devices(&req);
    let body = req.body;
    services
        .run(move |s| {
            // One endpoint, one operation whatever the list (as Synapse,
            // which binds a session to the method and path).
            if !without_password {
                s.uiaa
                    .authenticate(&s.users, Some(&user_id), Purpose::DeleteDevices, "", body.auth.as_ref())?;
            }
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
