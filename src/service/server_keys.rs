//! This server's ed25519 signing key: made at first start, kept in the
//! database, used to sign events and (with federation) server keys.

use ruma::room_version_rules::RedactionRules;
use ruma::serde::Base64;
use ruma::signatures::Ed25519KeyPair;
use ruma::{CanonicalJsonObject, OwnedServerName};

use super::{now_ms, random_string, ServiceError, ServiceResult};
use crate::database::server_keys::{ServerKeysTables, SigningKeyRecord};
use crate::database::Db;

pub struct ServerKeysService {
    server_name: OwnedServerName,
    key_id: String,
    key_pair: Ed25519KeyPair,
}

impl ServerKeysService {
    /// Loads the key in use, or makes and stores one on a new database.
    pub fn open(db: Db, server_name: OwnedServerName) -> ServiceResult<Self> {
        let tables = ServerKeysTables::new(db);
        let current = tables
            .all()?
            .into_iter()
            .find(|(_, record)| record.expired_ms.is_none());
        let (key_id, record) = match current {
            Some(found) => found,
            None => {
                let key_id = format!("ed25519:{}", random_string(6));
                let record = SigningKeyRecord {
                    pkcs8: Ed25519KeyPair::generate().to_vec(),
                    created_ms: now_ms(),
                    expired_ms: None,
                };
                tables.put(&key_id, &record)?;
                tracing::info!(%key_id, "new server signing key");
                (key_id, record)
            }
        };
        let version = key_id.strip_prefix("ed25519:").unwrap_or(&key_id).to_owned();
        let key_pair = Ed25519KeyPair::from_der(&record.pkcs8, version)
            .map_err(|e| ServiceError::Internal(format!("stored signing key {key_id}: {e}")))?;
        Ok(Self {
            server_name,
            key_id,
            key_pair,
        })
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> Base64 {
        Base64::new(self.key_pair.public_key().to_vec())
    }

    /// Adds the content hash and this server's signature to a PDU.
    pub fn hash_and_sign_event(&self, object: &mut CanonicalJsonObject, rules: &RedactionRules) -> ServiceResult<()> {
        ruma::signatures::hash_and_sign_event(self.server_name.as_str(), &self.key_pair, object, rules).map_err(|e| {
            match e {
                ruma::signatures::JsonError::PduTooLarge => {
                    ServiceError::TooLarge("the event is larger than the 65,536 bytes a PDU may have".to_owned())
                }
                e => ServiceError::Internal(format!("signing an event: {e}")),
            }
        })
    }

    /// Adds this server's signature to `object` (under `signatures`).
    pub fn sign_json(&self, object: &mut CanonicalJsonObject) -> ServiceResult<()> {
        ruma::signatures::sign_json(self.server_name.as_str(), &self.key_pair, object)
            .map_err(|e| ServiceError::Internal(format!("signing: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;
    use ruma::signatures::{verify_json, PublicKeyMap};

    #[test]
    fn key_is_made_once_kept_and_signs_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let server: OwnedServerName = "example.org".try_into().unwrap();
        let (key_id, public_key) = {
            let keys = ServerKeysService::open(open_test_db(dir.path()), server.clone()).unwrap();
            assert!(keys.key_id().starts_with("ed25519:"));
            (keys.key_id().to_owned(), keys.public_key())
        };
        let keys = ServerKeysService::open(open_test_db(dir.path()), server).unwrap();
        assert_eq!(keys.key_id(), key_id, "the same key after a restart");
        assert_eq!(keys.public_key(), public_key);

        let mut object: CanonicalJsonObject = serde_json::from_str(r#"{"hello": "world", "n": 1}"#).unwrap();
        keys.sign_json(&mut object).unwrap();
        let mut map = PublicKeyMap::new();
        map.insert("example.org".to_owned(), [(key_id.clone(), public_key)].into());
        verify_json(&map, &object).unwrap();

        object.insert("hello".to_owned(), "changed".into());
        assert!(
            verify_json(&map, &object).is_err(),
            "a changed object no longer verifies"
        );
    }
}
