//! Registration tokens (the spec's `m.login.registration_token`, MSC3231):
//! the config's single `registration_token`, unlimited, and tokens made by
//! admins, each with a number of uses and an expiry time.
//!
//! A session that passes the token stage holds one of the token's uses
//! (it is pending) until it registers (the use is then completed) or the
//! session expires; a token is valid while it has not expired and
//! `pending + completed < uses_allowed`.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use super::uiaa::SESSION_LIFETIME_MS;
use super::{now_ms, ServiceError, ServiceResult};
use crate::config::Config;
use crate::database::registration_tokens::{HoldRecord, RegistrationTokenTables, TokenRecord};
use crate::database::Db;

/// The characters of a token, as Synapse allows them (the spec's opaque
/// identifier grammar).
pub const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";
/// The spec's longest token.
pub const MAX_TOKEN_LENGTH: usize = 64;
/// The characters of a generated token: letters and digits only, so a
/// token is never taken for an option on a command line (a leading `-`)
/// and keeps its last character when a chat client links or quotes it.
const GENERATED_TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// The length of a generated token when none is asked for.
pub const DEFAULT_TOKEN_LENGTH: usize = 16;

/// A token as the admin API shows it (Synapse's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationToken {
    pub token: String,
    pub uses_allowed: Option<u64>,
    pub pending: u64,
    pub completed: u64,
    pub expiry_time: Option<u64>,
}

impl RegistrationToken {
    pub fn is_valid_at(&self, now_ms: u64) -> bool {
        self.expiry_time.is_none_or(|t| t > now_ms)
            && self.uses_allowed.is_none_or(|n| self.pending + self.completed < n)
    }
}

/// The token of a new one.
#[derive(Debug, Clone)]
pub enum NewToken {
    Named(String),
    Random { length: usize },
}

/// What `update` changes: `None` leaves a field, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct TokenChange {
    pub uses_allowed: Option<Option<u64>>,
    pub expiry_time: Option<Option<u64>>,
}

pub struct RegistrationTokensService {
    tables: RegistrationTokenTables,
    config_token: Option<String>,
    required: bool,
    /// Held while a use is checked and taken, so that two sessions cannot
    /// both take a token's last use.
    uses: Mutex<()>,
}

impl RegistrationTokensService {
    pub fn new(db: Db, config: &Config) -> Self {
        Self {
            tables: RegistrationTokenTables::new(db),
            config_token: config.registration_token.clone(),
            required: config.registration_requires_token || config.registration_token.is_some(),
            uses: Mutex::new(()),
        }
    }

    /// Whether registering needs a token (the config's or a stored one).
    pub fn required(&self) -> bool {
        self.required
    }

    /// Every stored token, or only the valid (`Some(true)`) or invalid
    /// (`Some(false)`) ones.
    pub fn list(&self, valid: Option<bool>) -> ServiceResult<Vec<RegistrationToken>> {
        let now = now_ms();
        let pending = self.pending_counts(now)?;
        Ok(self
            .tables
            .all()?
            .into_iter()
            .map(|(token, record)| {
                let held = pending.get(&token).copied().unwrap_or(0);
                shown(token, record, held)
            })
            .filter(|t| valid.is_none_or(|v| t.is_valid_at(now) == v))
            .collect())
    }

    pub fn get(&self, token: &str) -> ServiceResult<Option<RegistrationToken>> {
        let Some(record) = self.tables.get(token)? else {
            return Ok(None);
        };
        let held = self.pending_counts(now_ms())?.remove(token).unwrap_or(0);
        Ok(Some(shown(token.to_owned(), record, held)))
    }

    /// A random token of the default length, expiring in `expires_in_days`
    /// if given (the command line's and the admin room's way to make one).
    pub fn create_random(
        &self,
        uses_allowed: Option<u64>,
        expires_in_days: Option<u32>,
    ) -> ServiceResult<RegistrationToken> {
        const DAY_MS: u64 = 24 * 60 * 60 * 1000;
        let expiry_time = expires_in_days.map(|days| now_ms() + u64::from(days) * DAY_MS);
        let new = NewToken::Random {
            length: DEFAULT_TOKEN_LENGTH,
        };
        self.create(new, uses_allowed, expiry_time)
    }

    pub fn create(
        &self,
        new: NewToken,
        uses_allowed: Option<u64>,
        expiry_time: Option<u64>,
    ) -> ServiceResult<RegistrationToken> {
        check_expiry(expiry_time)?;
        let record = TokenRecord {
            uses_allowed,
            completed: 0,
            expiry_time,
        };
        let _uses = self.lock();
        let token = match new {
            NewToken::Named(token) => {
                check_token(&token)?;
                if self.tables.get(&token)?.is_some() {
                    return Err(ServiceError::InvalidParam(format!("Token already exists: {token}")));
                }
                token
            }
            NewToken::Random { length } => {
                if !(1..=MAX_TOKEN_LENGTH).contains(&length) {
                    return Err(ServiceError::InvalidParam(format!(
                        "length must be greater than zero and not greater than {MAX_TOKEN_LENGTH}"
                    )));
                }
                self.unused_random_token(length)?
            }
        };
        self.tables.put(&token, &record)?;
        tracing::info!(%token, ?uses_allowed, ?expiry_time, "registration token created");
        Ok(shown(token, record, 0))
    }

    /// Changes a token; `None` if there is no such token.
    pub fn update(&self, token: &str, change: TokenChange) -> ServiceResult<Option<RegistrationToken>> {
        if let Some(expiry_time) = change.expiry_time {
            check_expiry(expiry_time)?;
        }
        {
            let _uses = self.lock();
            let Some(mut record) = self.tables.get(token)? else {
                return Ok(None);
            };
            if let Some(uses_allowed) = change.uses_allowed {
                record.uses_allowed = uses_allowed;
            }
            if let Some(expiry_time) = change.expiry_time {
                record.expiry_time = expiry_time;
            }
            self.tables.put(token, &record)?;
        }
        self.get(token)
    }

    /// Removes a token; whether there was one.
    pub fn delete(&self, token: &str) -> ServiceResult<bool> {
        let _uses = self.lock();
        let deleted = self.tables.delete(token)?;
        if deleted {
            tracing::info!(%token, "registration token deleted");
        }
        Ok(deleted)
    }

    /// Whether `token` would be accepted now (the config's token or a
    /// valid stored one).
    pub fn is_valid(&self, token: &str) -> ServiceResult<bool> {
        if self.is_config_token(token) {
            return Ok(true);
        }
        Ok(self.get(token)?.is_some_and(|t| t.is_valid_at(now_ms())))
    }

    /// The token stage of registration session `session` (started at
    /// `session_created_ms`): takes one use of `token` for the session.
    /// `Ok(None)` once it has one; `Ok(Some(why))` if the token is refused.
    pub fn take_use(&self, session: &str, session_created_ms: u64, token: &str) -> ServiceResult<Option<String>> {
        if self.is_config_token(token) {
            return Ok(None);
        }
        let _uses = self.lock();
        // A stage repeated within the session keeps its one use.
        if let Some(hold) = self.tables.hold(session)? {
            return Ok((hold.token != token).then(|| "the registration token has changed".to_owned()));
        }
        let Some(record) = self.tables.get(token)? else {
            return Ok(Some("invalid registration token".to_owned()));
        };
        let now = now_ms();
        let held = self.pending_counts(now)?.remove(token).unwrap_or(0);
        if !shown(token.to_owned(), record, held).is_valid_at(now) {
            return Ok(Some(
                "this registration token has expired or has been used up".to_owned(),
            ));
        }
        self.tables.put_hold(
            session,
            &HoldRecord {
                token: token.to_owned(),
                session_created_ms,
            },
        )?;
        Ok(None)
    }

    /// Registration session `session` made its account: its held use, if
    /// any, is completed.
    pub fn complete(&self, session: &str) -> ServiceResult<()> {
        let _uses = self.lock();
        let Some(hold) = self.tables.hold(session)? else {
            return Ok(());
        };
        let record = self.tables.get(&hold.token)?.map(|mut record| {
            record.completed += 1;
            record
        });
        self.tables.complete_hold(session, &hold.token, record.as_ref())?;
        Ok(())
    }

    /// Drops the holds of expired sessions (their counts already ignore them).
    pub fn purge_expired_holds(&self) -> ServiceResult<usize> {
        let _uses = self.lock();
        Ok(self
            .tables
            .delete_holds_before(now_ms().saturating_sub(SESSION_LIFETIME_MS))?)
    }

    /// Pending registrations by token: holds of sessions still alive.
    fn pending_counts(&self, now: u64) -> ServiceResult<HashMap<String, u64>> {
        let mut counts = HashMap::new();
        for (_, hold) in self.tables.holds()? {
            if now.saturating_sub(hold.session_created_ms) < SESSION_LIFETIME_MS {
                *counts.entry(hold.token).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    fn unused_random_token(&self, length: usize) -> ServiceResult<String> {
        use rand::Rng;
        // Short tokens may be taken; a few tries, as a 62-character
        // alphabet makes repeated collisions unlikely unless nearly all
        // tokens of that length are.
        for _ in 0..8 {
            let mut rng = rand::thread_rng();
            let token: String = (0..length)
                .map(|_| char::from(GENERATED_TOKEN_ALPHABET[rng.gen_range(0..GENERATED_TOKEN_ALPHABET.len())]))
                .collect();
            if self.tables.get(&token)?.is_none() {
                return Ok(token);
            }
        }
        Err(ServiceError::InvalidParam(format!(
            "no unused token of length {length} found; ask for a longer one"
        )))
    }

    fn is_config_token(&self, token: &str) -> bool {
        self.config_token
            .as_ref()
            .is_some_and(|expected| constant_time_eq(expected.as_bytes(), token.as_bytes()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere leaves nothing broken.
        self.uses.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn shown(token: String, record: TokenRecord, pending: u64) -> RegistrationToken {
    RegistrationToken {
        token,
        uses_allowed: record.uses_allowed,
        pending,
        completed: record.completed,
        expiry_time: record.expiry_time,
    }
}

fn check_token(token: &str) -> ServiceResult<()> {
    if token.is_empty() || token.len() > MAX_TOKEN_LENGTH {
        return Err(ServiceError::InvalidParam(format!(
            "token must not be empty and must not be longer than {MAX_TOKEN_LENGTH} characters"
        )));
    }
    if !token.bytes().all(|b| TOKEN_ALPHABET.contains(&b)) {
        return Err(ServiceError::InvalidParam(
            "token must consist only of the characters A-Z, a-z, 0-9, '.', '_', '~' and '-'".to_owned(),
        ));
    }
    Ok(())
}

fn check_expiry(expiry_time: Option<u64>) -> ServiceResult<()> {
    match expiry_time {
        Some(t) if t < now_ms() => Err(ServiceError::InvalidParam(
            "expiry_time must not be in the past".to_owned(),
        )),
        _ => Ok(()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;

    fn service(dir: &tempfile::TempDir, config_token: Option<&str>) -> RegistrationTokensService {
        let config = Config {
            registration_token: config_token.map(str::to_owned),
            ..Default::default()
        };
        RegistrationTokensService::new(open_test_db(dir.path()), &config)
    }

    #[test]
    fn a_held_use_counts_until_the_session_registers_or_expires() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = service(&dir, None);
        tokens
            .create(NewToken::Named("once".to_owned()), Some(1), None)
            .unwrap();
        let now = now_ms();
        assert_eq!(tokens.take_use("a", now, "once").unwrap(), None);
        // Repeating the stage in the same session takes no second use.
        assert_eq!(tokens.take_use("a", now, "once").unwrap(), None);
        assert!(tokens.take_use("b", now, "once").unwrap().is_some());
        assert!(tokens.take_use("a", now, "other").unwrap().is_some());
        let held = tokens.get("once").unwrap().unwrap();
        assert_eq!((held.pending, held.completed, held.is_valid_at(now)), (1, 0, false));

        tokens.complete("a").unwrap();
        let used = tokens.get("once").unwrap().unwrap();
        assert_eq!((used.pending, used.completed), (0, 1));
        // Completing again (a repeated request) counts nothing more.
        tokens.complete("a").unwrap();
        assert_eq!(tokens.get("once").unwrap().unwrap().completed, 1);

        // An expired session's hold no longer counts.
        tokens
            .create(NewToken::Named("twice".to_owned()), Some(1), None)
            .unwrap();
        assert_eq!(
            tokens.take_use("old", now - SESSION_LIFETIME_MS - 1, "twice").unwrap(),
            None
        );
        assert_eq!(tokens.get("twice").unwrap().unwrap().pending, 0);
        assert_eq!(tokens.take_use("new", now, "twice").unwrap(), None);
        assert_eq!(tokens.purge_expired_holds().unwrap(), 1);
    }

    #[test]
    fn tokens_are_checked_and_generated_from_the_alphabet() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = service(&dir, Some("from-config"));
        for bad in ["", "has space", "é", &"x".repeat(65)] {
            assert!(matches!(
                tokens.create(NewToken::Named(bad.to_owned()), None, None),
                Err(ServiceError::InvalidParam(_))
            ));
        }
        for length in [0, 65] {
            assert!(tokens.create(NewToken::Random { length }, None, None).is_err());
        }
        let made = tokens.create(NewToken::Random { length: 64 }, None, None).unwrap();
        assert_eq!(made.token.len(), 64);
        assert!(made.token.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(tokens.create(NewToken::Named(made.token.clone()), None, None).is_err());
        assert!(tokens
            .create(NewToken::Named("late".to_owned()), None, Some(1))
            .is_err());
        // The config's token is valid and unlimited, but not listed.
        assert!(tokens.is_valid("from-config").unwrap());
        assert_eq!(tokens.take_use("s", now_ms(), "from-config").unwrap(), None);
        assert_eq!(tokens.list(None).unwrap(), vec![made]);
    }
}
