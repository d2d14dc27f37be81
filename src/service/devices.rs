//! Devices and their access tokens; per-device last-seen time and address.

use ruma::api::client::device::Device;
use ruma::{DeviceId, MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedUserId, UInt, UserId};
use sha2::{Digest, Sha256};

use super::e2e_keys::KeyChange;
use super::{now_ms, random_string, ServiceError, ServiceResult, Services};
use crate::database::devices::{DeviceRecord, DevicesTables};
use crate::database::{Batch, Db};

/// How stale a device's stored last-seen time may get before a request
/// refreshes it; keeps a write off nearly every request.
const LAST_SEEN_GRANULARITY_MS: u64 = 60_000;

/// Who an access token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// The device's last-seen time or IP is out of date.
    pub last_seen_due: bool,
}

fn last_seen_is_due(record: &DeviceRecord, now: u64, ip: Option<&str>) -> bool {
    record
        .last_seen_ms
        .is_none_or(|t| now.saturating_sub(t) >= LAST_SEEN_GRANULARITY_MS)
        || record.last_seen_ip.as_deref() != ip
}
/// The device an appservice's request acts with when it names none (the
/// HTTP layer's stand-in). No real device may take this ID: it would share
/// the appservice's transaction IDs and be taken for it.
pub const STAND_IN_DEVICE: &str = "(appservice)";

/// Longest device display name accepted.
const MAX_DISPLAY_NAME: usize = 256;

pub struct DevicesService {
    tables: DevicesTables,
}

/// 256 random bits as 43 letters and digits (62^43 > 2^256).
fn new_access_token() -> String {
    random_string(43)
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn to_device(device_id: &str, record: DeviceRecord) -> ServiceResult<Device> {
    let device_id: OwnedDeviceId = device_id.into();
    let mut device = Device::new(device_id);
    device.display_name = record.display_name;
    device.last_seen_ip = record.last_seen_ip;
    device.last_seen_ts = record.last_seen_ms.and_then(UInt::new).map(MilliSecondsSinceUnixEpoch);
    Ok(device)
}

impl DevicesService {
    pub fn new(db: Db) -> Self {
        Self {
            tables: DevicesTables::new(db),
        }
    }

    /// Adds a device with a fresh token to `batch`. An existing device ID gets
    /// a new token and its old one stops working.
    pub fn create_in(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: Option<&str>,
        display_name: Option<String>,
        ip: Option<String>,
    ) -> ServiceResult<(String, String)> {
        if display_name.as_ref().is_some_and(|n| n.len() > MAX_DISPLAY_NAME) {
            return Err(ServiceError::InvalidParam("device display name is too long".to_owned()));
        }
        let device_id = match device_id {
            Some(id) if id.is_empty() || id.len() > 255 => {
                return Err(ServiceError::InvalidParam(
                    "device ID must be 1 to 255 bytes".to_owned(),
                ))
            }
            Some(STAND_IN_DEVICE) => {
                return Err(ServiceError::InvalidParam(format!(
                    "device ID {STAND_IN_DEVICE} is reserved"
                )))
            }
            Some(id) => id.to_owned(),
            None => random_string(10).to_ascii_uppercase(),
        };
        let token = new_access_token();
        let now = now_ms();
        let existing = self.tables.get(user_id.as_str(), &device_id)?;
        let record = DeviceRecord {
            display_name: display_name.or_else(|| existing.as_ref().and_then(|e| e.display_name.clone())),
            token_hash: token_hash(&token),
            created_ms: existing.as_ref().map_or(now, |e| e.created_ms),
            last_seen_ms: Some(now),
            last_seen_ip: ip,
        };
        match existing {
            Some(old) => self
                .tables
                .replace_token(batch, user_id.as_str(), &device_id, &old, &record),
            None => self.tables.put(batch, user_id.as_str(), &device_id, &record),
        }
        Ok((device_id, token))
    }

    /// A login: a new (or refreshed) device and its token. A new device
    /// is a device-list change for everyone who shares a room.
    pub fn login(
        &self,
        s: &Services,
        user_id: &UserId,
        device_id: Option<&str>,
        display_name: Option<String>,
        ip: Option<String>,
    ) -> ServiceResult<(String, String)> {
        let known = match device_id {
            Some(id) => self.tables.get(user_id.as_str(), id)?.is_some(),
            None => false,
        };
        let mut batch = Batch::new();
        let created = self.create_in(&mut batch, user_id, device_id, display_name, ip)?;
        if known {
            self.tables.write(batch)?;
        } else {
            s.e2e_keys
                .write_with_change(s, batch, user_id, KeyChange::device(&created.0))?;
        }
        Ok(created)
    }

    /// A device made by an appservice for one of its users (MSC4190): it
    /// acts with it through `device_id`, never through a token, so the
    /// device's token is one nobody is told.
    pub fn create_unused(
        &self,
        s: &Services,
        user_id: &UserId,
        device_id: &str,
        display_name: Option<String>,
    ) -> ServiceResult<()> {
        self.login(s, user_id, Some(device_id), display_name, None).map(|_| ())
    }

    /// The user and device an access token belongs to. Only reads; when the
    /// device's last-seen record is out of date (a minute old, or another
    /// IP), `last_seen_due` asks the caller for [`Self::record_seen`].
    pub fn token_owner(&self, token: &str, ip: Option<&str>) -> ServiceResult<Option<TokenOwner>> {
        let Some((user_id, device_id)) = self.tables.owner_of_token(&token_hash(token))? else {
            return Ok(None);
        };
        let last_seen_due = self
            .tables
            .get(&user_id, &device_id)?
            .is_some_and(|record| last_seen_is_due(&record, now_ms(), ip));
        let user_id = OwnedUserId::try_from(user_id)
            .map_err(|e| ServiceError::Internal(format!("stored user ID is invalid: {e}")))?;
        Ok(Some(TokenOwner {
            user_id,
            device_id: device_id.into(),
            last_seen_due,
        }))
    }

    /// Records the device as seen now from `ip` (if it still exists and its
    /// record is still out of date).
    pub fn record_seen(&self, user_id: &UserId, device_id: &DeviceId, ip: Option<&str>) -> ServiceResult<()> {
        let Some(mut record) = self.tables.get(user_id.as_str(), device_id.as_str())? else {
            return Ok(());
        };
        let now = now_ms();
        if last_seen_is_due(&record, now, ip) {
            record.last_seen_ms = Some(now);
            record.last_seen_ip = ip.map(str::to_owned);
            let mut batch = Batch::new();
            self.tables
                .put(&mut batch, user_id.as_str(), device_id.as_str(), &record);
            self.tables.write(batch)?;
        }
        Ok(())
    }

    pub fn list(&self, user_id: &UserId) -> ServiceResult<Vec<Device>> {
        self.tables
            .list(user_id.as_str())?
            .into_iter()
            .map(|(id, r)| to_device(&id, r))
            .collect()
    }

    pub fn get(&self, user_id: &UserId, device_id: &str) -> ServiceResult<Device> {
        let record = self
            .tables
            .get(user_id.as_str(), device_id)?
            .ok_or_else(|| ServiceError::NotFound("unknown device".to_owned()))?;
        to_device(device_id, record)
    }

    /// Renames a device; others see device names in key queries, so a new
    /// name is a device-list change.
    pub fn rename(
        &self,
        s: &Services,
        user_id: &UserId,
        device_id: &str,
        display_name: Option<String>,
    ) -> ServiceResult<()> {
        if display_name.as_ref().is_some_and(|n| n.len() > MAX_DISPLAY_NAME) {
            return Err(ServiceError::InvalidParam("device display name is too long".to_owned()));
        }
        let mut record = self
            .tables
            .get(user_id.as_str(), device_id)?
            .ok_or_else(|| ServiceError::NotFound("unknown device".to_owned()))?;
        if record.display_name == display_name {
            return Ok(());
        }
        record.display_name = display_name;
        let mut batch = Batch::new();
        self.tables.put(&mut batch, user_id.as_str(), device_id, &record);
        s.e2e_keys
            .write_with_change(s, batch, user_id, KeyChange::device(device_id))
    }

    /// Deletes these devices (unknown IDs are skipped, as the spec allows),
    /// their tokens, keys, pushers and queued to-device messages, in one write; the
    /// user's contacts learn that the device list changed.
    pub fn delete(&self, s: &Services, user_id: &UserId, device_ids: &[OwnedDeviceId]) -> ServiceResult<()> {
        let mut batch = Batch::new();
        let mut removed = Vec::new();
        for device_id in device_ids {
            if let Some(record) = self.tables.get(user_id.as_str(), device_id.as_str())? {
                self.delete_in(s, &mut batch, user_id, device_id.as_str(), &record)?;
                removed.push(device_id.to_string());
            }
        }
        if removed.is_empty() {
            Ok(())
        } else {
            s.e2e_keys
                .write_with_change(s, batch, user_id, KeyChange::devices(removed))
        }
    }

    fn delete_in(
        &self,
        s: &Services,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &str,
        record: &DeviceRecord,
    ) -> ServiceResult<()> {
        self.tables.delete(batch, user_id.as_str(), device_id, record);
        s.e2e_keys.delete_device_in(batch, user_id, device_id)?;
        s.timeline.delete_device_txns_in(batch, user_id, device_id)?;
        s.pushers.delete_device_in(batch, user_id, device_id)?;
        s.sliding_sync.delete_device_in(batch, user_id, device_id)?;
        s.to_device.delete_device_in(batch, user_id, device_id)
    }

    /// Adds deletes of every device of the user but `keep` to `batch`;
    /// answers which there were. Write the batch with
    /// `e2e_keys.write_with_change` when there were any.
    pub fn delete_all_in(
        &self,
        s: &Services,
        batch: &mut Batch,
        user_id: &UserId,
        keep: Option<&str>,
    ) -> ServiceResult<KeyChange> {
        let mut removed = Vec::new();
        for (device_id, record) in self.tables.list(user_id.as_str())? {
            if Some(device_id.as_str()) != keep {
                self.delete_in(s, batch, user_id, &device_id, &record)?;
                removed.push(device_id);
            }
        }
        Ok(KeyChange::devices(removed))
    }

    pub fn delete_all(&self, s: &Services, user_id: &UserId) -> ServiceResult<()> {
        let mut batch = Batch::new();
        let removed = self.delete_all_in(s, &mut batch, user_id, None)?;
        if !removed.devices.is_empty() {
            s.e2e_keys.write_with_change(s, batch, user_id, removed)?;
        }
        Ok(())
    }

    /// Each device's display name, by device ID.
    pub fn display_names(&self, user_id: &UserId) -> ServiceResult<std::collections::HashMap<String, Option<String>>> {
        Ok(self
            .tables
            .list(user_id.as_str())?
            .into_iter()
            .map(|(id, r)| (id, r.display_name))
            .collect())
    }
}
