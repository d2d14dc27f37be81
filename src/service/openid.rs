//! OpenID tokens (`POST /user/{userId}/openid/request_token`): short-lived
//! proofs of identity a user hands to a third party (a widget, Element
//! Call), which checks them with this server over federation
//! (`/_matrix/federation/v1/openid/userinfo`).
//!
//! A token is `<expiry in ms>.<random>`, stored by its expiry and SHA-256:
//! the expiry in it finds its entry directly, and expired entries are the
//! table's first ones.

use ruma::{OwnedUserId, UserId};
use sha2::{Digest, Sha256};

use super::{now_ms, random_string, ServiceError, ServiceResult};
use crate::database::openid::OpenIdTables;
use crate::database::Db;

pub struct OpenIdService {
    tables: OpenIdTables,
    lifetime_ms: u64,
}

/// A token just issued.
pub struct OpenIdToken {
    pub access_token: String,
    pub expires_in_secs: u64,
}

impl OpenIdService {
    pub fn new(db: Db, lifetime_secs: u64) -> Self {
        Self {
            tables: OpenIdTables::new(db),
            lifetime_ms: lifetime_secs.saturating_mul(1000),
        }
    }

    pub fn issue(&self, user: &UserId) -> ServiceResult<OpenIdToken> {
        let now = now_ms();
        let expires = now.saturating_add(self.lifetime_ms);
        let token = format!("{expires}.{}", random_string(32));
        self.tables
            .put(expires, Sha256::digest(token.as_bytes()).into(), user.as_str(), now)?;
        Ok(OpenIdToken {
            access_token: token,
            expires_in_secs: self.lifetime_ms / 1000,
        })
    }

    /// Whose a token is, while it is valid.
    pub fn user_for_token(&self, token: &str) -> ServiceResult<Option<OwnedUserId>> {
        let Some(expires) = token.split_once('.').and_then(|(e, _)| e.parse::<u64>().ok()) else {
            return Ok(None);
        };
        if expires <= now_ms() {
            return Ok(None);
        }
        match self.tables.user(expires, Sha256::digest(token.as_bytes()).into())? {
            Some(user) => OwnedUserId::try_from(user)
                .map(Some)
                .map_err(|e| ServiceError::Internal(format!("stored OpenID token owner: {e}"))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;

    #[test]
    fn tokens_name_their_user_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let openid = OpenIdService::new(open_test_db(dir.path()), 3600);
        let alice: OwnedUserId = "@alice:x".try_into().unwrap();
        let token = openid.issue(&alice).unwrap();
        assert_eq!(token.expires_in_secs, 3600);
        assert_eq!(openid.user_for_token(&token.access_token).unwrap(), Some(alice.clone()));
        let (expires, random) = token.access_token.split_once('.').unwrap();
        assert_eq!(openid.user_for_token(&format!("{expires}.{random}x")).unwrap(), None);
        // A forged expiry finds no entry.
        let later: u64 = expires.parse::<u64>().unwrap() + 1;
        assert_eq!(openid.user_for_token(&format!("{later}.{random}")).unwrap(), None);

        let expired = OpenIdService::new(openid.tables.db_for_test(), 0)
            .issue(&alice)
            .unwrap();
        assert_eq!(openid.user_for_token(&expired.access_token).unwrap(), None);
    }
}
