//! What the admin API does with accounts (Synapse's user admin API), and
//! shared-secret registration (Synapse's `v1/register`).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use ruma::{OwnedRoomId, OwnedUserId, UserId};

use super::users::{NewLogin, AVATAR_URL, DISPLAYNAME};
use super::{random_string, ServiceError, ServiceResult, Services};
use crate::config::Config;

/// How long a registration nonce may be used (Synapse's `NONCE_TIMEOUT`).
const NONCE_LIFETIME: Duration = Duration::from_secs(60);

/// Most nonces held at once: asking for nonces cannot fill the memory.
const MAX_NONCES: usize = 10_000;

/// Longest password accepted, as Synapse.
const MAX_PASSWORD: usize = 512;

pub struct AdminService {
    shared_secret: Option<String>,
    /// Unused registration nonces and when each was handed out.
    nonces: Mutex<HashMap<String, Instant>>,
}

/// One account as the admin API shows it.
pub struct UserView {
    pub user_id: OwnedUserId,
    pub is_guest: bool,
    pub admin: bool,
    pub deactivated: bool,
    pub erased: bool,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub creation_ts: u64,
    /// The latest of its devices' last-seen times.
    pub last_seen_ts: Option<u64>,
}

/// What `v2/users` may order by (Synapse's `order_by` values). Conduit has
/// no user types, shadow bans or locks: those order like equal values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserOrder {
    Name,
    IsGuest,
    Admin,
    UserType,
    Deactivated,
    ShadowBanned,
    Displayname,
    AvatarUrl,
    CreationTs,
    LastSeenTs,
    Locked,
}

impl UserOrder {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "name" => Self::Name,
            "is_guest" => Self::IsGuest,
            "admin" => Self::Admin,
            "user_type" => Self::UserType,
            "deactivated" => Self::Deactivated,
            "shadow_banned" => Self::ShadowBanned,
            "displayname" => Self::Displayname,
            "avatar_url" => Self::AvatarUrl,
            "creation_ts" => Self::CreationTs,
            "last_seen_ts" => Self::LastSeenTs,
            "locked" => Self::Locked,
            _ => return None,
        })
    }

    fn compare(self, a: &UserView, b: &UserView) -> Ordering {
        match self {
            Self::Name => a.user_id.cmp(&b.user_id),
            Self::IsGuest => a.is_guest.cmp(&b.is_guest),
            Self::Admin => a.admin.cmp(&b.admin),
            Self::Deactivated => a.deactivated.cmp(&b.deactivated),
            Self::Displayname => a.displayname.cmp(&b.displayname),
            Self::AvatarUrl => a.avatar_url.cmp(&b.avatar_url),
            Self::CreationTs => a.creation_ts.cmp(&b.creation_ts),
            Self::LastSeenTs => a.last_seen_ts.cmp(&b.last_seen_ts),
            Self::UserType | Self::ShadowBanned | Self::Locked => Ordering::Equal,
        }
    }
}

/// The filters and page of a `v2/users` listing.
#[derive(Debug)]
pub struct UserQuery {
    pub from: usize,
    pub limit: usize,
    /// Only user IDs containing this (case-insensitive).
    pub user_id: Option<String>,
    /// Only user IDs or display names containing this (case-insensitive);
    /// replaces `user_id`.
    pub name: Option<String>,
    pub guests: bool,
    pub deactivated: bool,
    /// `Some(true)`: only admins; `Some(false)`: no admins.
    pub admins: Option<bool>,
    pub order_by: UserOrder,
    pub backwards: bool,
}

pub struct UserPage {
    pub users: Vec<UserView>,
    pub total: usize,
    /// `from` for the next page, if there is one.
    pub next_token: Option<usize>,
}

/// A `PUT v2/users/{id}`: what to set; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct UserChanges {
    pub password: Option<String>,
    pub logout_devices: bool,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
}

/// A device's last connection, as far as the server records it.
pub struct Connection {
    pub device_id: String,
    pub ip: Option<String>,
    pub last_seen: Option<u64>,
}

/// A `POST v1/register` body.
pub struct SharedSecretRegistration {
    pub nonce: String,
    pub username: String,
    pub password: String,
    pub admin: bool,
    pub displayname: Option<String>,
    pub user_type: Option<String>,
    pub mac: String,
}

impl AdminService {
    pub fn new(config: &Config) -> Self {
        Self {
            shared_secret: config.registration_shared_secret.clone(),
            nonces: Mutex::new(HashMap::new()),
        }
    }

    /// A page of local accounts, filtered and ordered as asked.
    pub fn list_users(&self, s: &Services, query: &UserQuery) -> ServiceResult<UserPage> {
        let user_id_filter = query.user_id.as_deref().map(str::to_lowercase);
        let name_filter = query.name.as_deref().map(str::to_lowercase);
        let mut users = Vec::new();
        // The server's bot is no account to manage (`v2/users/{id}` shows it).
        for (user_id, _) in s
            .users
            .all_accounts()?
            .into_iter()
            .filter(|(u, _)| !s.admin_room.is_bot(u))
        {
            if let Some(view) = self.view(s, &user_id)? {
                let contains = |value: &str, term: &str| value.to_lowercase().contains(term);
                let wanted = match (&name_filter, &user_id_filter) {
                    (Some(term), _) => {
                        contains(view.user_id.as_str(), term)
                            || view.displayname.as_deref().is_some_and(|n| contains(n, term))
                    }
                    (None, Some(term)) => contains(view.user_id.as_str(), term),
                    (None, None) => true,
                };
                let wanted = wanted
                    && (query.guests || !view.is_guest)
                    && (query.deactivated || !view.deactivated)
                    && query.admins.is_none_or(|admins| admins == view.admin);
                if wanted {
                    users.push(view);
                }
            }
        }
        // Ties keep the ascending name order the accounts come in.
        users.sort_by(|a, b| {
            let order = query.order_by.compare(a, b);
            if query.backwards {
                order.reverse()
            } else {
                order
            }
        });
        let total = users.len();
        let page: Vec<UserView> = users.into_iter().skip(query.from).take(query.limit).collect();
        let next_token = (query.from.saturating_add(query.limit) < total).then(|| query.from + page.len());
        Ok(UserPage {
            users: page,
            total,
            next_token,
        })
    }

    /// The account as the admin API shows it; `None` if there is none.
    pub fn user(&self, s: &Services, user_id: &UserId) -> ServiceResult<Option<UserView>> {
        local(s, user_id, "Can only look up local users")?;
        self.view(s, user_id)
    }

    fn view(&self, s: &Services, user_id: &UserId) -> ServiceResult<Option<UserView>> {
        let Some(record) = s.users.account(user_id)? else {
            return Ok(None);
        };
        let last_seen_ts = s
            .devices
            .list(user_id)?
            .iter()
            .filter_map(|d| d.last_seen_ts.map(|t| u64::from(t.0)))
            .max();
        Ok(Some(UserView {
            user_id: user_id.to_owned(),
            is_guest: s.users.is_guest(user_id.as_str())?,
            admin: s.users.is_admin(user_id)?,
            deactivated: record.deactivated,
            erased: s.users.erased_at(user_id.as_str())?.is_some(),
            displayname: s.users.stored_profile_field(user_id, DISPLAYNAME)?,
            avatar_url: s.users.stored_profile_field(user_id, AVATAR_URL)?,
            creation_ts: record.created_ms,
            last_seen_ts,
        }))
    }

    /// Creates the account (`true`) or changes it (`false`), as `by` asks.
    pub fn put_user(
        &self,
        s: &Services,
        by: &UserId,
        user_id: &UserId,
        changes: UserChanges,
    ) -> ServiceResult<(bool, UserView)> {
        local(s, user_id, "This endpoint can only be used with local users")?;
        if let Some(password) = &changes.password {
            check_password(password)?;
        }
        if let Some(url) = changes.avatar_url.as_deref() {
            if !url.is_empty() && !url.starts_with("mxc://") {
                return Err(ServiceError::InvalidParam("avatar_url is not an mxc:// URI".to_owned()));
            }
        }
        let existing = s.users.account(user_id)?;
        let created = existing.is_none();
        match existing {
            None => {
                let localpart = user_id.localpart();
                let checked = s.users.check_new_localpart(localpart)?;
                if checked != user_id {
                    return Err(ServiceError::InvalidUsername(
                        "user names may contain only a-z, 0-9 and . _ = - / +".to_owned(),
                    ));
                }
                s.users
                    .register(&s.devices, user_id, changes.password.as_deref(), None)?;
                tracing::info!(%user_id, by = %by, "account created by an admin");
                if changes.deactivated == Some(true) {
                    s.users.deactivate(s, user_id, false)?;
                }
            }
            Some(record) => {
                if changes.admin == Some(false) && by == user_id && s.users.is_admin(user_id)? {
                    return Err(ServiceError::BadRequest("You may not demote yourself.".to_owned()));
                }
                match (changes.deactivated, record.deactivated) {
                    (Some(true), false) => {
                        s.users.deactivate(s, user_id, false)?;
                        tracing::info!(%user_id, by = %by, "account deactivated by an admin");
                    }
                    (Some(false), true) => {
                        s.users.reactivate(user_id, changes.password.as_deref())?;
                        tracing::info!(%user_id, by = %by, "account reactivated by an admin");
                    }
                    _ => {
                        if let Some(password) = changes.password.as_deref() {
                            let logout = changes.logout_devices.then_some(None);
                            s.users.change_password(s, user_id, password, logout)?;
                        }
                    }
                }
            }
        }
        if let Some(admin) = changes.admin {
            s.users.set_admin(user_id, admin)?;
        }
        s.admin_room.invite_if_admin(s, user_id);
        let active = s.users.is_active(user_id)?;
        for (field, value) in [(DISPLAYNAME, &changes.displayname), (AVATAR_URL, &changes.avatar_url)] {
            if let (Some(value), true) = (value, active) {
                s.rooms.set_profile_field(s, user_id, field, Some(value))?;
            }
        }
        let view = self
            .view(s, user_id)?
            .ok_or_else(|| ServiceError::Internal("the account just written is gone".to_owned()))?;
        Ok((created, view))
    }

    /// Whether a local user is an admin.
    pub fn is_admin(&self, s: &Services, user_id: &UserId) -> ServiceResult<bool> {
        local(s, user_id, "Only local users can be admins of this homeserver")?;
        s.users.is_admin(user_id)
    }

    /// Gives or takes the admin flag; an admin cannot take their own.
    pub fn set_admin(&self, s: &Services, by: &UserId, user_id: &UserId, admin: bool) -> ServiceResult<()> {
        local(s, user_id, "Only local users can be admins of this homeserver")?;
        if by == user_id && !admin {
            return Err(ServiceError::BadRequest("You may not demote yourself.".to_owned()));
        }
        existing(s, user_id)?;
        s.users.set_admin(user_id, admin)?;
        tracing::info!(%user_id, by = %by, admin, "admin flag set");
        s.admin_room.invite_if_admin(s, user_id);
        Ok(())
    }

    /// Sets a new password, logging every device out unless told not to.
    pub fn reset_password(
        &self,
        s: &Services,
        user_id: &UserId,
        new_password: &str,
        logout_devices: bool,
    ) -> ServiceResult<()> {
        local(s, user_id, "Can only reset the password of local users")?;
        check_password(new_password)?;
        existing(s, user_id)?;
        s.users
            .change_password(s, user_id, new_password, logout_devices.then_some(None))
    }

    pub fn deactivate(&self, s: &Services, user_id: &UserId, erase: bool) -> ServiceResult<()> {
        local(s, user_id, "Can only deactivate local users")?;
        existing(s, user_id)?;
        s.users.deactivate(s, user_id, erase)?;
        tracing::info!(%user_id, erase, "account deactivated by an admin");
        Ok(())
    }

    /// Each device of the user and where and when it was last seen.
    pub fn whois(&self, s: &Services, user_id: &UserId) -> ServiceResult<Vec<Connection>> {
        local(s, user_id, "Can only whois a local user")?;
        existing(s, user_id)?;
        Ok(s.devices
            .list(user_id)?
            .into_iter()
            .map(|device| Connection {
                device_id: device.device_id.to_string(),
                ip: device.last_seen_ip,
                last_seen: device.last_seen_ts.map(|t| u64::from(t.0)),
            })
            .collect())
    }

    /// The rooms the user is joined to, as far as this server knows.
    pub fn joined_rooms(&self, s: &Services, user_id: &UserId) -> ServiceResult<Vec<OwnedRoomId>> {
        Ok(s.timeline
            .user_rooms(user_id)?
            .into_iter()
            .filter(|(_, record)| record.membership == "join")
            .map(|(room_id, _)| room_id)
            .collect())
    }

    /// A single-use nonce for [`Self::register_with_shared_secret`], or 400
    /// when shared-secret registration is off.
    pub fn registration_nonce(&self) -> ServiceResult<String> {
        self.shared_secret()?;
        let nonce = random_string(32);
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.retain(|_, issued| issued.elapsed() <= NONCE_LIFETIME);
        if nonces.len() >= MAX_NONCES {
            return Err(ServiceError::Busy {
                what: "too many registration nonces are outstanding".to_owned(),
                retry_after_ms: NONCE_LIFETIME.as_millis() as u64,
            });
        }
        nonces.insert(nonce.clone(), Instant::now());
        Ok(nonce)
    }

    /// Creates an account for whoever proved they know the shared secret,
    /// with its first device.
    pub fn register_with_shared_secret(
        &self,
        s: &Services,
        request: SharedSecretRegistration,
    ) -> ServiceResult<(OwnedUserId, NewLogin)> {
        let secret = self.shared_secret()?;
        // The nonce is spent whatever follows, so each guess costs a nonce.
        let issued = self
            .nonces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request.nonce);
        if issued.is_none_or(|issued| issued.elapsed() > NONCE_LIFETIME) {
            return Err(ServiceError::BadRequest("unrecognised nonce".to_owned()));
        }
        if request.username.is_empty() || request.username.contains('\0') {
            return Err(ServiceError::BadRequest("Invalid username".to_owned()));
        }
        if request.password.contains('\0') {
            return Err(ServiceError::BadRequest("Invalid password".to_owned()));
        }
        check_password(&request.password)?;
        if request.user_type.is_some() {
            return Err(ServiceError::BadRequest("Invalid user type".to_owned()));
        }
        if !registration_mac_matches(secret, &request) {
            return Err(ServiceError::Forbidden("HMAC incorrect".to_owned()));
        }
        let user_id = s.users.check_new_localpart(&request.username.to_lowercase())?;
        let login = s
            .users
            .register(&s.devices, &user_id, Some(&request.password), Some((None, None)))?
            .ok_or_else(|| ServiceError::Internal("a registration without its login".to_owned()))?;
        if request.admin {
            s.users.set_admin(&user_id, true)?;
        }
        s.admin_room.invite_if_admin(s, &user_id);
        if let Some(name) = request.displayname.as_deref() {
            s.users.set_profile_field(&user_id, DISPLAYNAME, Some(name))?;
        }
        tracing::info!(%user_id, admin = request.admin, "account created with the shared secret");
        Ok((user_id, login))
    }

    fn shared_secret(&self) -> ServiceResult<&str> {
        self.shared_secret
            .as_deref()
            .ok_or_else(|| ServiceError::BadRequest("Shared secret registration is not enabled".to_owned()))
    }
}

/// 400 unless `user_id` is one of ours (Synapse's message for each endpoint).
fn local(s: &Services, user_id: &UserId, message: &str) -> ServiceResult<()> {
    if user_id.server_name() == s.config.server_name {
        Ok(())
    } else {
        Err(ServiceError::BadRequest(message.to_owned()))
    }
}

/// 404 `M_NOT_FOUND` for an account that does not exist.
fn existing(s: &Services, user_id: &UserId) -> ServiceResult<()> {
    if s.users.exists(user_id)? {
        Ok(())
    } else {
        Err(ServiceError::NotFound("User not found".to_owned()))
    }
}

fn check_password(password: &str) -> ServiceResult<()> {
    if password.len() > MAX_PASSWORD {
        return Err(ServiceError::BadRequest("Invalid password".to_owned()));
    }
    Ok(())
}

/// Whether `mac` is the hex HMAC-SHA1, keyed by the secret, of
/// `nonce\0username\0password\0admin|notadmin`, compared in constant time.
fn registration_mac_matches(secret: &str, request: &SharedSecretRegistration) -> bool {
    let Some(given) = decode_hex(&request.mac) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    let admin: &[u8] = if request.admin { b"admin" } else { b"notadmin" };
    for (i, part) in [
        request.nonce.as_bytes(),
        request.username.as_bytes(),
        request.password.as_bytes(),
        admin,
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            mac.update(b"\0");
        }
        mac.update(part);
    }
    mac.verify_slice(&given).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(mac: &str, admin: bool) -> SharedSecretRegistration {
        SharedSecretRegistration {
            nonce: "thisisanonce".to_owned(),
            username: "pepper_roni".to_owned(),
            password: "pizza".to_owned(),
            admin,
            displayname: None,
            user_type: None,
            mac: mac.to_owned(),
        }
    }

    /// The digest Synapse's documented shell recipe gives:
    /// `printf 'thisisanonce\0pepper_roni\0pizza\0admin' | openssl sha1 -hmac shared_secret`.
    #[test]
    fn the_mac_is_synapses() {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"shared_secret").unwrap();
        mac.update(b"thisisanonce\0pepper_roni\0pizza\0admin");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(registration_mac_matches("shared_secret", &registration(&hex, true)));
        assert!(registration_mac_matches(
            "shared_secret",
            &registration(&hex.to_uppercase(), true)
        ));
        assert!(!registration_mac_matches("shared_secret", &registration(&hex, false)));
        assert!(!registration_mac_matches("other", &registration(&hex, true)));
        assert!(!registration_mac_matches("shared_secret", &registration("zz", true)));
        assert!(!registration_mac_matches("shared_secret", &registration("", true)));
    }
}
