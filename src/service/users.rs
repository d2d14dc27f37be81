//! Accounts: registration, passwords, deactivation, profiles, the user directory.

use argon2::Params;
use std::sync::Mutex;

use ruma::{OwnedServerName, OwnedUserId, UserId};

use super::devices::DevicesService;
use super::password::PasswordHasher;
use super::{now_ms, random_string, ServiceError, ServiceResult, Services};
use crate::config::Config;
use crate::database::users::{UserRecord, UsersTables};
use crate::database::{Batch, Db};

pub const DISPLAYNAME: &str = "displayname";
pub const AVATAR_URL: &str = "avatar_url";

/// Longest profile value accepted (Synapse uses the same bound for names).
const MAX_PROFILE_VALUE: usize = 1000;

pub struct UsersService {
    tables: UsersTables,
    /// Serialises account creation so two requests cannot take one ID.
    registration: Mutex<()>,
    server_name: OwnedServerName,
    passwords: PasswordHasher,
    /// Erased users and the stream position of each erasure, read from
    /// [`UsersTables::erased`] on first use: every event served asks.
    erased: std::sync::RwLock<Option<std::collections::HashMap<String, u64>>>,
    /// Guest accounts, read from [`UsersTables::guests`] on first use:
    /// every authenticated request asks.
    guests: std::sync::RwLock<Option<std::collections::HashSet<String>>>,
}

/// Who an account is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AccountKind {
    Person,
    Guest,
    /// Run by the server itself: its bot, appservices' users.
    Server,
}

/// A new account's session, when one was asked for.
pub struct NewLogin {
    pub device_id: String,
    pub access_token: String,
}

pub struct DirectoryEntry {
    pub user_id: OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

impl UsersService {
    pub fn new(db: Db, config: &Config) -> Self {
        let argon2_params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .expect("argon2 parameters are validated with the config");
        Self {
            tables: UsersTables::new(db),
            registration: Mutex::new(()),
            server_name: config.server_name.clone(),
            passwords: PasswordHasher::new(argon2_params, config.password_checks_waiting),
            erased: std::sync::RwLock::new(None),
            guests: std::sync::RwLock::new(None),
        }
    }

    /// The stream position at which `user_id` was erased, if they were.
    pub fn erased_at(&self, user_id: &str) -> ServiceResult<Option<u64>> {
        if let Some(erased) = self.erased.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(erased.get(user_id).copied());
        }
        let loaded: std::collections::HashMap<String, u64> = self.tables.erased()?.into_iter().collect();
        let found = loaded.get(user_id).copied();
        *self.erased.write().unwrap_or_else(|e| e.into_inner()) = Some(loaded);
        Ok(found)
    }

    /// Whether the account exists (deactivated accounts still hold their ID).
    pub fn exists(&self, user_id: &UserId) -> ServiceResult<bool> {
        Ok(self.tables.get(user_id.as_str())?.is_some())
    }

    pub fn is_active(&self, user_id: &UserId) -> ServiceResult<bool> {
        Ok(self.tables.get(user_id.as_str())?.is_some_and(|r| !r.deactivated))
    }

    /// The user ID a new account with this localpart would get, if the
    /// localpart is acceptable and free.
    pub fn check_new_localpart(&self, localpart: &str) -> ServiceResult<OwnedUserId> {
        let allowed = |c: char| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+');
        if localpart.is_empty() || !localpart.chars().all(allowed) {
            return Err(ServiceError::InvalidUsername(
                "user names may contain only a-z, 0-9 and . _ = - / +".to_owned(),
            ));
        }
        let user_id = UserId::parse_with_server_name(localpart, &self.server_name)
            .map_err(|e| ServiceError::InvalidUsername(e.to_string()))?;
        if user_id.as_str().len() > super::MAX_ID_BYTES {
            return Err(ServiceError::InvalidUsername(
                "the user ID would be longer than 255 bytes".to_owned(),
            ));
        }
        if self.exists(&user_id)? {
            return Err(ServiceError::UserInUse);
        }
        Ok(user_id)
    }

    /// A free user ID for a registration that named none.
    pub fn generate_user_id(&self) -> ServiceResult<OwnedUserId> {
        for _ in 0..16 {
            let localpart = random_string(10).to_ascii_lowercase();
            match self.check_new_localpart(&localpart) {
                Err(ServiceError::UserInUse) => continue,
                other => return other,
            }
        }
        Err(ServiceError::Internal("could not find a free user ID".to_owned()))
    }

    pub fn hash_password(&self, password: &str) -> ServiceResult<String> {
        self.passwords.hash(password)
    }

    /// Creates the account and, unless `login` is `None`, its first device, in
    /// one write. The localpart must have passed [`Self::check_new_localpart`].
    pub fn register(
        &self,
        devices: &DevicesService,
        user_id: &UserId,
        password: Option<&str>,
        login: Option<(Option<String>, Option<String>)>,
    ) -> ServiceResult<Option<NewLogin>> {
        self.create_account(devices, user_id, password, login, AccountKind::Person)
    }

    /// Creates an account the server runs itself (its bot, an appservice's
    /// users): no password, and it is never taken for the first person.
    pub fn register_server_account(
        &self,
        devices: &DevicesService,
        user_id: &UserId,
        login: Option<(Option<String>, Option<String>)>,
    ) -> ServiceResult<Option<NewLogin>> {
        self.create_account(devices, user_id, None, login, AccountKind::Server)
    }

    /// A guest account under a generated ID, with its first device.
    pub fn register_guest(
        &self,
        devices: &DevicesService,
        device: (Option<String>, Option<String>),
    ) -> ServiceResult<(OwnedUserId, NewLogin)> {
        let user_id = self.generate_user_id()?;
        let login = self
            .create_account(devices, &user_id, None, Some(device), AccountKind::Guest)?
            .ok_or_else(|| ServiceError::Internal("a guest account without a login".to_owned()))?;
        Ok((user_id, login))
    }

    /// Whether `user_id` is a server admin (the first person registered).
    pub fn is_admin(&self, user_id: &UserId) -> ServiceResult<bool> {
        Ok(self.tables.is_admin(user_id.as_str())?)
    }

    /// Every server admin.
    pub fn admins(&self) -> ServiceResult<Vec<OwnedUserId>> {
        Ok(self
            .tables
            .admins()?
            .into_iter()
            .filter_map(|id| OwnedUserId::try_from(id).ok())
            .collect())
    }

    /// Whether the server runs this account itself (see
    /// [`Self::register_server_account`]).
    pub fn is_server_account(&self, user_id: &UserId) -> ServiceResult<bool> {
        Ok(self.tables.is_server_account(user_id.as_str())?)
    }

    /// Gives (`true`) or takes the admin flag.
    pub fn set_admin(&self, user_id: &UserId, admin: bool) -> ServiceResult<()> {
        let mut batch = Batch::new();
        match admin {
            true => self.tables.put_admin(&mut batch, user_id.as_str()),
            false => self.tables.delete_admin(&mut batch, user_id.as_str()),
        }
        Ok(self.tables.write(batch)?)
    }

    /// The stored account (deactivated ones too).
    pub fn account(&self, user_id: &UserId) -> ServiceResult<Option<UserRecord>> {
        Ok(self.tables.get(user_id.as_str())?)
    }

    /// Every account, deactivated ones too, in user ID order.
    pub fn all_accounts(&self) -> ServiceResult<Vec<(OwnedUserId, UserRecord)>> {
        let mut accounts = Vec::new();
        for entry in self.tables.all() {
            let (user_id, record) = entry?;
            // A stored ID that no longer parses cannot be named in a request.
            if let Ok(user_id) = OwnedUserId::try_from(user_id) {
                accounts.push((user_id, record));
            }
        }
        Ok(accounts)
    }

    /// Makes a deactivated account usable again, with `password` if given
    /// (deactivation removed the old one). Its erasure, if any, stays.
    pub fn reactivate(&self, user_id: &UserId, password: Option<&str>) -> ServiceResult<()> {
        let mut record = self
            .tables
            .get(user_id.as_str())?
            .ok_or_else(|| ServiceError::NotFound("unknown user".to_owned()))?;
        record.deactivated = false;
        if let Some(password) = password {
            record.password_hash = Some(self.hash_password(password)?);
        }
        let mut batch = Batch::new();
        self.tables.put(&mut batch, user_id.as_str(), &record);
        Ok(self.tables.write(batch)?)
    }

    /// Whether `user_id` is a guest account.
    pub fn is_guest(&self, user_id: &str) -> ServiceResult<bool> {
        if let Some(guests) = self.guests.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(guests.contains(user_id));
        }
        let loaded: std::collections::HashSet<String> = self.tables.guests()?.into_iter().collect();
        let found = loaded.contains(user_id);
        *self.guests.write().unwrap_or_else(|e| e.into_inner()) = Some(loaded);
        Ok(found)
    }

    /// Makes a guest account a full one with a password (same user ID).
    pub fn upgrade_guest(&self, user_id: &UserId, password: Option<&str>) -> ServiceResult<()> {
        if !self.is_guest(user_id.as_str())? {
            return Err(ServiceError::Forbidden("this is not a guest account".to_owned()));
        }
        let mut record = self
            .tables
            .get(user_id.as_str())?
            .ok_or_else(|| ServiceError::NotFound("unknown user".to_owned()))?;
        record.password_hash = password.map(|p| self.hash_password(p)).transpose()?;
        let mut batch = Batch::new();
        self.tables.put(&mut batch, user_id.as_str(), &record);
        self.tables.set_guest(&mut batch, user_id.as_str(), false);
        self.tables.write(batch)?;
        self.set_guest_cached(user_id.as_str(), false);
        Ok(())
    }

    fn set_guest_cached(&self, user_id: &str, guest: bool) {
        if let Some(guests) = self.guests.write().unwrap_or_else(|e| e.into_inner()).as_mut() {
            match guest {
                true => guests.insert(user_id.to_owned()),
                false => guests.remove(user_id),
            };
        }
    }

    fn create_account(
        &self,
        devices: &DevicesService,
        user_id: &UserId,
        password: Option<&str>,
        login: Option<(Option<String>, Option<String>)>,
        kind: AccountKind,
    ) -> ServiceResult<Option<NewLogin>> {
        let guest = kind == AccountKind::Guest;
        let password_hash = password.map(|p| self.hash_password(p)).transpose()?;
        let _guard = self
            .registration
            .lock()
            .map_err(|_| ServiceError::Internal("registration lock poisoned".to_owned()))?;
        if self.exists(user_id)? {
            return Err(ServiceError::UserInUse);
        }
        let mut batch = Batch::new();
        // The server's first person runs it: they are made an admin.
        match kind {
            AccountKind::Person if !self.tables.any_person()? => self.tables.put_admin(&mut batch, user_id.as_str()),
            AccountKind::Server => self.tables.put_server_account(&mut batch, user_id.as_str()),
            _ => {}
        }
        let record = UserRecord {
            password_hash,
            created_ms: now_ms(),
            deactivated: false,
        };
        self.tables.put(&mut batch, user_id.as_str(), &record);
        // New accounts show their localpart until they pick a name.
        self.tables
            .set_profile_field(&mut batch, user_id.as_str(), DISPLAYNAME, Some(user_id.localpart()));
        let new_login = match login {
            Some((device_id, display_name)) => {
                let (device_id, access_token) =
                    devices.create_in(&mut batch, user_id, device_id.as_deref(), display_name, None)?;
                Some(NewLogin {
                    device_id,
                    access_token,
                })
            }
            None => None,
        };
        if guest {
            // Loaded before it changes, so the cache and the table agree.
            self.is_guest(user_id.as_str())?;
            self.tables.set_guest(&mut batch, user_id.as_str(), true);
        }
        self.tables.write(batch)?;
        if guest {
            self.set_guest_cached(user_id.as_str(), true);
        }
        Ok(new_login)
    }

    /// Checks a password; the same error for an unknown user and a wrong
    /// password, so logins do not reveal which accounts exist.
    pub fn verify_password(&self, user_id: &UserId, password: &str) -> ServiceResult<()> {
        let wrong = || ServiceError::Forbidden("wrong user name or password".to_owned());
        let Some(record) = self.tables.get(user_id.as_str())? else {
            return Err(wrong());
        };
        if record.deactivated {
            return Err(ServiceError::UserDeactivated);
        }
        let Some(hash) = record.password_hash else {
            return Err(wrong());
        };
        if self.passwords.verify(password, &hash)? {
            Ok(())
        } else {
            Err(wrong())
        }
    }

    /// Sets a new password; with `logout_others_than`, every other device of
    /// the user is removed in the same write.
    pub fn change_password(
        &self,
        s: &Services,
        user_id: &UserId,
        new_password: &str,
        logout_others_than: Option<Option<&str>>,
    ) -> ServiceResult<()> {
        let mut record = self
            .tables
            .get(user_id.as_str())?
            .ok_or_else(|| ServiceError::NotFound("unknown user".to_owned()))?;
        record.password_hash = Some(self.hash_password(new_password)?);
        let mut batch = Batch::new();
        self.tables.put(&mut batch, user_id.as_str(), &record);
        if let Some(keep) = logout_others_than {
            let removed = s.devices.delete_all_in(s, &mut batch, user_id, keep)?;
            if !removed.devices.is_empty() {
                return s.e2e_keys.write_with_change(s, batch, user_id, removed);
            }
        }
        Ok(self.tables.write(batch)?)
    }

    /// Deactivates the account: no password, no devices, no profile; the ID
    /// stays taken. With `erase`, the user's messages show redacted to
    /// whoever joins a room from now on (the spec's "forget me").
    pub fn deactivate(&self, s: &Services, user_id: &UserId, erase: bool) -> ServiceResult<()> {
        let mut record = self
            .tables
            .get(user_id.as_str())?
            .ok_or_else(|| ServiceError::NotFound("unknown user".to_owned()))?;
        record.password_hash = None;
        record.deactivated = true;
        let mut batch = Batch::new();
        self.tables.put(&mut batch, user_id.as_str(), &record);
        for field in [DISPLAYNAME, AVATAR_URL] {
            self.tables.set_profile_field(&mut batch, user_id.as_str(), field, None);
        }
        let erased_at = erase.then(|| s.timeline.stream.visible());
        if let Some(position) = erased_at {
            self.erased_at(user_id.as_str())?; // loaded before it is changed
            self.tables.put_erased(&mut batch, user_id.as_str(), position);
        }
        let removed = s.devices.delete_all_in(s, &mut batch, user_id, None)?;
        if !removed.devices.is_empty() {
            s.e2e_keys.write_with_change(s, batch, user_id, removed)?;
        } else {
            self.tables.write(batch)?;
        }
        if let Some(position) = erased_at {
            if let Some(erased) = self.erased.write().unwrap_or_else(|e| e.into_inner()).as_mut() {
                erased.insert(user_id.to_string(), position);
            }
        }
        Ok(())
    }

    /// One profile field of an existing user.
    pub fn profile_field(&self, user_id: &UserId, field: &str) -> ServiceResult<Option<String>> {
        self.ensure_exists(user_id)?;
        Ok(self.tables.profile_field(user_id.as_str(), field)?)
    }

    /// One profile field, whether or not the account is active.
    pub fn stored_profile_field(&self, user_id: &UserId, field: &str) -> ServiceResult<Option<String>> {
        Ok(self.tables.profile_field(user_id.as_str(), field)?)
    }

    pub fn set_profile_field(&self, user_id: &UserId, field: &str, value: Option<&str>) -> ServiceResult<()> {
        if value.is_some_and(|v| v.len() > MAX_PROFILE_VALUE) {
            return Err(ServiceError::TooLarge(format!(
                "{field} is longer than {MAX_PROFILE_VALUE} bytes"
            )));
        }
        // An empty value clears the field, as clients send "" to remove it.
        let value = value.filter(|v| !v.is_empty());
        let mut batch = Batch::new();
        self.tables
            .set_profile_field(&mut batch, user_id.as_str(), field, value);
        Ok(self.tables.write(batch)?)
    }

    fn ensure_exists(&self, user_id: &UserId) -> ServiceResult<()> {
        if self.is_active(user_id)? {
            Ok(())
        } else {
            Err(ServiceError::NotFound("profile not found".to_owned()))
        }
    }

    /// Local, active users whose ID or display name contains `term`
    /// (case-insensitive) and whom `visible` lets the searcher see; `true`
    /// when more than `limit` matched.
    pub fn search_directory(
        &self,
        term: &str,
        limit: usize,
        mut visible: impl FnMut(&UserId) -> ServiceResult<bool>,
    ) -> ServiceResult<(Vec<DirectoryEntry>, bool)> {
        let term = term.to_lowercase();
        let mut found = Vec::new();
        for entry in self.tables.all() {
            let (user_id, record) = entry?;
            if record.deactivated {
                continue;
            }
            let display_name = self.tables.profile_field(&user_id, DISPLAYNAME)?;
            let matches = user_id.to_lowercase().contains(&term)
                || display_name
                    .as_deref()
                    .is_some_and(|n| n.to_lowercase().contains(&term));
            if !matches {
                continue;
            }
            let Ok(user_id) = OwnedUserId::try_from(user_id) else {
                continue;
            };
            if !visible(&user_id)? {
                continue;
            }
            if found.len() == limit {
                return Ok((found, true));
            }
            let avatar_url = self.tables.profile_field(user_id.as_str(), AVATAR_URL)?;
            found.push(DirectoryEntry {
                user_id,
                display_name,
                avatar_url,
            });
        }
        Ok((found, false))
    }
}
