//! TURN credentials for calls (`GET /voip/turnServer`), from the operator's
//! TURN server settings: coturn's shared secret (`use-auth-secret`), whose
//! credentials are made per request and expire, or one fixed user name
//! and password.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use ruma::UserId;

use crate::config::Config;

pub struct VoipService {
    uris: Vec<String>,
    secret: Option<String>,
    fixed: Option<(String, String)>,
    ttl_secs: u64,
}

/// What a client gives its TURN server.
#[derive(Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
    pub ttl_secs: u64,
}

impl VoipService {
    pub fn new(config: &Config) -> Self {
        Self {
            uris: config.turn_uris.clone(),
            secret: config.turn_secret.clone(),
            fixed: config.turn_username.clone().zip(config.turn_password.clone()),
            ttl_secs: config.turn_ttl,
        }
    }

    /// Credentials for `user`, or `None` when no TURN server is set up.
    pub fn turn_credentials(&self, user: &UserId, now_secs: u64) -> Option<TurnCredentials> {
        if self.uris.is_empty() {
            return None;
        }
        let (username, password) = match (&self.secret, &self.fixed) {
            // coturn's REST API scheme: the user name is the expiry time and
            // who it is for, the password its HMAC-SHA1 under the secret.
            (Some(secret), _) => {
                let username = format!("{}:{user}", now_secs.saturating_add(self.ttl_secs));
                let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).ok()?;
                mac.update(username.as_bytes());
                let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                (username, password)
            }
            (None, Some((username, password))) => (username.clone(), password.clone()),
            (None, None) => return None,
        };
        Some(TurnCredentials {
            username,
            password,
            uris: self.uris.clone(),
            ttl_secs: self.ttl_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let table: toml::Table = extra.parse().unwrap();
        let mut doc = toml::Table::new();
        doc.insert("global".into(), toml::Value::Table(table));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
        Config::load(Some(&path), Vec::new()).unwrap()
    }

    #[test]
    fn shared_secret_credentials_are_coturns() {
        let voip = VoipService::new(&config(
            "turn_uris = [\"turn:turn.example.org?transport=udp\"]\nturn_secret = \"s3cret\"\nturn_ttl = 600",
        ));
        let user: &UserId = "@alice:example.org".try_into().unwrap();
        let got = voip.turn_credentials(user, 1_000_000).unwrap();
        assert_eq!(got.username, "1000600:@alice:example.org");
        // HMAC-SHA1("s3cret", username), base64: what coturn computes.
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"1000600:@alice:example.org");
        mac.verify_slice(&base64::engine::general_purpose::STANDARD.decode(&got.password).unwrap())
            .unwrap();
        assert_eq!(got.ttl_secs, 600);

        let fixed = VoipService::new(&config(
            "turn_uris = [\"turn:t.example\"]\nturn_username = \"u\"\nturn_password = \"p\"",
        ));
        let got = fixed.turn_credentials(user, 0).unwrap();
        assert_eq!(
            (got.username.as_str(), got.password.as_str(), got.ttl_secs),
            ("u", "p", 86400)
        );
        assert!(VoipService::new(&config("")).turn_credentials(user, 0).is_none());
    }
}
