//! Dehydrated devices (MSC3814, as Element and Hydrogen call it): one device
//! per user that lives on the server, so room keys sent while no client is
//! open are kept for the next one, which "rehydrates" it, reads its
//! to-device messages and deletes it.

use std::sync::Mutex;

use ruma::{OwnedDeviceId, UserId};
use serde_json::value::RawValue;

use super::{ServiceError, ServiceResult, Services};
use crate::database::dehydrated_devices::{DehydratedDeviceRecord, DehydratedDeviceTables};
use crate::database::Db;

pub struct DehydratedDevicesService {
    tables: DehydratedDeviceTables,
    /// Replacing one dehydrated device by another is several writes.
    changes: Mutex<()>,
}

/// What a client uploads with a dehydrated device.
pub struct NewDehydratedDevice {
    pub device_id: String,
    pub display_name: Option<String>,
    pub device_data: String,
    pub device_keys: String,
    pub one_time_keys: Vec<(String, String)>,
    pub fallback_keys: Vec<(String, String)>,
}

fn none_found() -> ServiceError {
    ServiceError::NotFound("no dehydrated device".to_owned())
}

impl DehydratedDevicesService {
    pub fn new(db: Db) -> Self {
        Self {
            tables: DehydratedDeviceTables::new(db),
            changes: Mutex::new(()),
        }
    }

    /// Stores a new dehydrated device with its keys, replacing the old one.
    pub fn put(&self, s: &Services, user: &UserId, new: NewDehydratedDevice) -> ServiceResult<()> {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.tables.get(user.as_str())?;
        let own_old = old.as_ref().is_some_and(|o| o.device_id == new.device_id);
        if !own_old && s.devices.get(user, &new.device_id).is_ok() {
            return Err(ServiceError::InvalidParam(format!(
                "{} is already one of your devices",
                new.device_id
            )));
        }
        if let Some(old) = &old {
            s.devices
                .delete(s, user, &[OwnedDeviceId::from(old.device_id.as_str())])?;
        }
        // The device's access token is never handed out: nobody logs in as it.
        s.devices.login(s, user, Some(&new.device_id), new.display_name, None)?;
        let uploaded = s.e2e_keys.upload(
            s,
            user,
            &new.device_id,
            Some(&new.device_keys),
            &new.one_time_keys,
            &new.fallback_keys,
        );
        if let Err(e) = uploaded {
            // Keys that do not check out leave no device behind.
            s.devices
                .delete(s, user, &[OwnedDeviceId::from(new.device_id.as_str())])?;
            return Err(e);
        }
        self.tables.put(
            user.as_str(),
            &DehydratedDeviceRecord {
                device_id: new.device_id,
                device_data: new.device_data,
            },
        )?;
        Ok(())
    }

    /// The device ID and its opaque data.
    pub fn get(&self, s: &Services, user: &UserId) -> ServiceResult<(String, Box<RawValue>)> {
        let record = self.tables.get(user.as_str())?.ok_or_else(none_found)?;
        // Deleted through the ordinary device API: gone too.
        if s.devices.get(user, &record.device_id).is_err() {
            return Err(none_found());
        }
        let data = RawValue::from_string(record.device_data)
            .map_err(|e| ServiceError::Internal(format!("stored device data: {e}")))?;
        Ok((record.device_id, data))
    }

    /// Deletes the dehydrated device, its keys and messages; answers its ID.
    pub fn delete(&self, s: &Services, user: &UserId) -> ServiceResult<String> {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let record = self.tables.get(user.as_str())?.ok_or_else(none_found)?;
        self.tables.delete(user.as_str())?;
        s.devices
            .delete(s, user, &[OwnedDeviceId::from(record.device_id.as_str())])?;
        Ok(record.device_id)
    }

    /// The dehydrated device's to-device messages after `next_batch` (which
    /// acknowledges everything up to it): (messages, token for the next page).
    pub fn events(
        &self,
        s: &Services,
        user: &UserId,
        device_id: &str,
        next_batch: Option<&str>,
    ) -> ServiceResult<(Vec<Box<RawValue>>, String)> {
        let record = self.tables.get(user.as_str())?.ok_or_else(none_found)?;
        if record.device_id != device_id {
            return Err(ServiceError::Forbidden("that is not your dehydrated device".to_owned()));
        }
        let after = next_batch.map(super::sync::parse_token).transpose()?;
        let up_to = s.timeline.stream.visible();
        let delivery = s.to_device.deliver(user, device_id, after, up_to)?;
        let next = delivery.stop_at.unwrap_or(up_to).max(after.unwrap_or(0));
        Ok((delivery.events, super::sync::token(next)))
    }
}
