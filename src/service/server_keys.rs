//! This server's ed25519 signing key: made at first start, kept in the
//! database, used to sign events, federation requests and the key document
//! other servers fetch (`GET /_matrix/key/v2/server`). Retired keys stay
//! published as `old_verify_keys`, so events signed with them still verify.

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
    /// `(key_id, public key, expired_ms)` of every retired key.
    old_keys: Vec<(String, Base64, u64)>,
}

/// How long other servers may cache our key document before asking again.
const KEY_DOCUMENT_VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

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
        let key_pair = key_pair_of(&key_id, &record)?;
        let mut old_keys = Vec::new();
        for (old_id, old) in tables.all()? {
            if let Some(expired_ms) = old.expired_ms {
                let public = Base64::new(key_pair_of(&old_id, &old)?.public_key().to_vec());
                old_keys.push((old_id, public, expired_ms));
            }
        }
        Ok(Self {
            server_name,
            key_id,
            key_pair,
            old_keys,
        })
    }

    /// Retires the key in use and makes a new one (for the next start:
    /// the command line rotates keys of a stopped server). Returns the new
    /// key's ID.
    pub fn rotate(db: Db) -> ServiceResult<String> {
        let tables = ServerKeysTables::new(db);
        let now = now_ms();
        for (key_id, mut record) in tables.all()? {
            if record.expired_ms.is_none() {
                record.expired_ms = Some(now);
                tables.put(&key_id, &record)?;
                tracing::info!(%key_id, "signing key retired");
            }
        }
        let key_id = format!("ed25519:{}", random_string(6));
        let record = SigningKeyRecord {
            pkcs8: Ed25519KeyPair::generate().to_vec(),
            created_ms: now,
            expired_ms: None,
        };
        tables.put(&key_id, &record)?;
        tracing::info!(%key_id, "new server signing key");
        Ok(key_id)
    }

    pub fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    /// The key pair in use, for signing federation requests.
    pub fn key_pair(&self) -> &Ed25519KeyPair {
        &self.key_pair
    }

    /// The signed key document of `GET /_matrix/key/v2/server`.
    pub fn key_document(&self) -> ServiceResult<CanonicalJsonObject> {
        let mut verify_keys = CanonicalJsonObject::new();
        let mut current = CanonicalJsonObject::new();
        current.insert("key".to_owned(), self.public_key().encode().into());
        verify_keys.insert(self.key_id.clone(), current.into());
        let mut old_verify_keys = CanonicalJsonObject::new();
        for (key_id, public, expired_ms) in &self.old_keys {
            let mut old = CanonicalJsonObject::new();
            old.insert("key".to_owned(), public.encode().into());
            old.insert("expired_ts".to_owned(), int(*expired_ms)?);
            old_verify_keys.insert(key_id.clone(), old.into());
        }
        let mut document = CanonicalJsonObject::new();
        document.insert("server_name".to_owned(), self.server_name.as_str().into());
        document.insert("verify_keys".to_owned(), verify_keys.into());
        document.insert("old_verify_keys".to_owned(), old_verify_keys.into());
        document.insert("valid_until_ts".to_owned(), int(now_ms() + KEY_DOCUMENT_VALIDITY_MS)?);
        self.sign_json(&mut document)?;
        Ok(document)
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

impl super::federation::RequestSigner for ServerKeysService {
    fn key_pair(&self) -> &Ed25519KeyPair {
        &self.key_pair
    }
}

fn key_pair_of(key_id: &str, record: &SigningKeyRecord) -> ServiceResult<Ed25519KeyPair> {
    let version = key_id.strip_prefix("ed25519:").unwrap_or(key_id).to_owned();
    Ed25519KeyPair::from_der(&record.pkcs8, version)
        .map_err(|e| ServiceError::Internal(format!("stored signing key {key_id}: {e}")))
}

fn int(ms: u64) -> ServiceResult<ruma::CanonicalJsonValue> {
    let ms = i64::try_from(ms).map_err(|e| ServiceError::Internal(format!("timestamp: {e}")))?;
    Ok(ruma::CanonicalJsonValue::Integer(
        ms.try_into()
            .map_err(|e| ServiceError::Internal(format!("timestamp: {e}")))?,
    ))
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

    #[test]
    fn after_a_rotation_the_old_key_is_published_as_old_and_the_document_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let server: OwnedServerName = "example.org".try_into().unwrap();
        let db = open_test_db(dir.path());
        let first = ServerKeysService::open(db.clone(), server.clone()).unwrap();
        let (old_id, old_public) = (first.key_id().to_owned(), first.public_key());
        drop(first);
        let new_id = ServerKeysService::rotate(db.clone()).unwrap();
        let keys = ServerKeysService::open(db, server).unwrap();
        assert_eq!(keys.key_id(), new_id);
        assert_ne!(new_id, old_id);

        let document = keys.key_document().unwrap();
        let json = serde_json::to_value(&document).unwrap();
        assert_eq!(json["server_name"], "example.org");
        assert_eq!(json["verify_keys"][&new_id]["key"], keys.public_key().encode());
        assert_eq!(json["old_verify_keys"][&old_id]["key"], old_public.encode());
        assert!(json["old_verify_keys"][&old_id]["expired_ts"].as_u64().unwrap() <= now_ms());
        assert!(json["valid_until_ts"].as_u64().unwrap() > now_ms());
        // Signed with the key in use, which is what other servers check.
        let mut map = PublicKeyMap::new();
        map.insert("example.org".to_owned(), [(new_id.clone(), keys.public_key())].into());
        verify_json(&map, &document).unwrap();
        // And it reads as ruma's type for it.
        let parsed: ruma::api::federation::discovery::ServerSigningKeys = serde_json::from_value(json).unwrap();
        assert_eq!(parsed.old_verify_keys.len(), 1);
    }
}
