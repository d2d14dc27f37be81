//! Other servers' signing keys, which verify their requests and events:
//! fetched from the server itself (`GET /_matrix/key/v2/server`), else
//! through the notaries in `trusted_servers` (`POST /_matrix/key/v2/query`),
//! checked against the document's own signature, and kept. A key serves
//! until its document's `valid_until_ts`; a retired one until it expired.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ruma::api::federation::discovery::{get_remote_server_keys_batch, get_server_keys, ServerSigningKeys};
use ruma::serde::Base64;
use ruma::signatures::{verify_json, PublicKeyMap};
use ruma::{CanonicalJsonObject, OwnedServerName, OwnedServerSigningKeyId, ServerName};

use super::FederationClient;
use crate::database::remote_keys::{RemoteKeyRecord, RemoteKeyTables};
use crate::database::{Batch, Db};
use crate::service::server_keys::ServerKeysService;
use crate::service::{now_ms, ServiceError, ServiceResult};

pub struct RemoteKeys {
    tables: RemoteKeyTables,
    own: Arc<ServerKeysService>,
    trusted: Vec<OwnedServerName>,
    /// One fetch per server at a time: the others wait and read its result.
    fetching: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
}

impl RemoteKeys {
    pub fn new(db: Db, own: Arc<ServerKeysService>, trusted: Vec<OwnedServerName>) -> Self {
        Self {
            tables: RemoteKeyTables::new(db),
            own,
            trusted,
            fetching: Mutex::default(),
        }
    }

    /// The public keys among `key_ids` of `server` that are valid at
    /// `valid_at_ms` (0: at any time, for room versions 1 to 4), fetched
    /// if not known. Keys that could not be found are left out.
    pub async fn keys_for(
        &self,
        client: &FederationClient,
        server: &ServerName,
        key_ids: &[String],
        valid_at_ms: u64,
    ) -> ServiceResult<BTreeMap<String, Base64>> {
        if server == &**self.own.server_name() {
            return Ok(self.own_keys(key_ids));
        }
        let found = self.cached(server, key_ids, valid_at_ms)?;
        if found.len() == key_ids.len() {
            return Ok(found);
        }
        let lock = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            if fetching.len() > 1024 {
                fetching.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            fetching.entry(server.to_owned()).or_default().clone()
        };
        let _fetch = lock.lock().await;
        // Another request may have fetched them meanwhile.
        let found = self.cached(server, key_ids, valid_at_ms)?;
        if found.len() == key_ids.len() {
            return Ok(found);
        }

        match client.send(server, get_server_keys::v2::Request::new()).await {
            Ok(response) => {
                if let Err(e) = self.accept_document(server, response.server_key.json().get(), None) {
                    tracing::warn!(%server, error = %e, "server key document refused");
                }
            }
            Err(e) => tracing::info!(%server, error = %e, "cannot fetch the server's keys directly"),
        }
        let found = self.cached(server, key_ids, valid_at_ms)?;
        if found.len() == key_ids.len() {
            return Ok(found);
        }
        for notary in self.trusted.iter().filter(|n| n.as_str() != server.as_str()) {
            self.ask_notary(client, notary, server, key_ids, valid_at_ms).await;
            let found = self.cached(server, key_ids, valid_at_ms)?;
            if found.len() == key_ids.len() {
                return Ok(found);
            }
        }
        self.cached(server, key_ids, valid_at_ms)
    }

    /// As a notary: the key document of each of `servers` (fetched from it
    /// when none is stored or the stored one expires before
    /// `valid_until_ms`), each with this server's signature added.
    pub async fn notarize(
        &self,
        client: &FederationClient,
        servers: &[(OwnedServerName, u64)],
    ) -> ServiceResult<Vec<CanonicalJsonObject>> {
        for (server, valid_until_ms) in servers {
            if server == self.own.server_name() {
                continue;
            }
            let fresh = match self.tables.document(server.as_str())? {
                Some(json) => serde_json::from_str::<ServerSigningKeys>(&json)
                    .is_ok_and(|doc| u64::from(doc.valid_until_ts.get()) >= (*valid_until_ms).max(now_ms())),
                None => false,
            };
            if fresh {
                continue;
            }
            match client.send(server, get_server_keys::v2::Request::new()).await {
                Ok(response) => {
                    if let Err(e) = self.accept_document(server, response.server_key.json().get(), None) {
                        tracing::info!(%server, error = %e, "key document refused");
                    }
                }
                Err(e) => tracing::info!(%server, error = %e, "cannot fetch the server's keys for a notary query"),
            }
        }
        let servers: Vec<OwnedServerName> = servers.iter().map(|(s, _)| s.clone()).collect();
        self.documents(&servers)
    }

    /// The stored key document of each of `servers`, signed by us too.
    fn documents(&self, servers: &[OwnedServerName]) -> ServiceResult<Vec<CanonicalJsonObject>> {
        let mut out = Vec::new();
        for server in servers {
            if server == self.own.server_name() {
                out.push(self.own.key_document()?);
                continue;
            }
            if let Some(json) = self.tables.document(server.as_str())? {
                let mut document: CanonicalJsonObject = serde_json::from_str(&json)
                    .map_err(|e| ServiceError::Internal(format!("stored key document: {e}")))?;
                // Notaries add their own signature to what they pass on.
                self.own.sign_json(&mut document)?;
                out.push(document);
            }
        }
        Ok(out)
    }

    async fn ask_notary(
        &self,
        client: &FederationClient,
        notary: &ServerName,
        server: &ServerName,
        key_ids: &[String],
        valid_at_ms: u64,
    ) {
        let mut criteria = BTreeMap::new();
        for key_id in key_ids {
            let Ok(key_id) = OwnedServerSigningKeyId::try_from(key_id.as_str()) else {
                continue;
            };
            let mut query = get_remote_server_keys_batch::v2::QueryCriteria::default();
            if valid_at_ms > 0 {
                query.minimum_valid_until_ts = ruma::UInt::new(valid_at_ms).map(ruma::MilliSecondsSinceUnixEpoch);
            }
            criteria.insert(key_id, query);
        }
        let request = get_remote_server_keys_batch::v2::Request::new([(server.to_owned(), criteria)].into());
        let response = match client.send(notary, request).await {
            Ok(response) => response,
            Err(e) => {
                tracing::info!(%notary, %server, error = %e, "notary key query failed");
                return;
            }
        };
        // The notary's own keys, fetched from it directly.
        let notary_keys = match client.send(notary, get_server_keys::v2::Request::new()).await {
            Ok(own) => match self.accept_document(notary, own.server_key.json().get(), None) {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::warn!(%notary, error = %e, "notary key document refused");
                    return;
                }
            },
            Err(e) => {
                tracing::info!(%notary, error = %e, "cannot fetch the notary's keys");
                return;
            }
        };
        for document in response.server_keys {
            let notary_check = (notary, &notary_keys);
            if let Err(e) = self.accept_document(server, document.json().get(), Some(notary_check)) {
                tracing::warn!(%notary, %server, error = %e, "key document from a notary refused");
            }
        }
    }

    /// Checks and keeps a key document of `server`: it must be signed by
    /// the server with one of its own keys (and, passed on by a notary,
    /// by the notary too). Returns the document's current keys.
    fn accept_document(
        &self,
        server: &ServerName,
        json: &str,
        notary: Option<(&ServerName, &BTreeMap<String, Base64>)>,
    ) -> ServiceResult<BTreeMap<String, Base64>> {
        let object: CanonicalJsonObject =
            serde_json::from_str(json).map_err(|e| ServiceError::RemoteFailed(format!("key document: {e}")))?;
        let document: ServerSigningKeys =
            serde_json::from_str(json).map_err(|e| ServiceError::RemoteFailed(format!("key document: {e}")))?;
        if document.server_name != server {
            return Err(ServiceError::RemoteFailed(format!(
                "asked for {server}'s keys, got {}'s",
                document.server_name
            )));
        }
        let current: BTreeMap<String, Base64> = document
            .verify_keys
            .iter()
            .map(|(id, key)| (id.to_string(), key.key.clone()))
            .collect();
        let mut map = PublicKeyMap::new();
        map.insert(server.to_string(), current.clone());
        if let Some((notary, notary_keys)) = notary {
            map.insert(notary.to_string(), notary_keys.clone());
        }
        verify_json(&map, &object).map_err(|e| ServiceError::RemoteFailed(format!("key document signature: {e}")))?;

        let valid_until = u64::from(document.valid_until_ts.get());
        let known: HashMap<String, RemoteKeyRecord> = self.tables.keys(server.as_str())?.into_iter().collect();
        let mut batch = Batch::new();
        let mut keep = |key_id: String, key: &Base64, until: u64| {
            // Never shorten what an earlier document allowed.
            let until = known.get(&key_id).map_or(until, |r| r.valid_until_ms.max(until));
            let record = RemoteKeyRecord {
                key: key.encode(),
                valid_until_ms: until,
            };
            self.tables.put_key(&mut batch, server.as_str(), &key_id, &record);
        };
        for (key_id, key) in &current {
            keep(key_id.clone(), key, valid_until);
        }
        for (key_id, old) in &document.old_verify_keys {
            keep(key_id.to_string(), &old.key, u64::from(old.expired_ts.get()));
        }
        self.tables.put_document(&mut batch, server.as_str(), json);
        self.tables.write(batch)?;
        tracing::debug!(%server, keys = current.len(), "server keys stored");
        Ok(current)
    }

    fn cached(
        &self,
        server: &ServerName,
        key_ids: &[String],
        valid_at_ms: u64,
    ) -> ServiceResult<BTreeMap<String, Base64>> {
        let mut found = BTreeMap::new();
        for (key_id, record) in self.tables.keys(server.as_str())? {
            if !key_ids.contains(&key_id) || record.valid_until_ms < valid_at_ms {
                continue;
            }
            if let Ok(key) = Base64::parse(&record.key) {
                found.insert(key_id, key);
            }
        }
        Ok(found)
    }

    fn own_keys(&self, key_ids: &[String]) -> BTreeMap<String, Base64> {
        let mut found = BTreeMap::new();
        if key_ids.iter().any(|id| id == self.own.key_id()) {
            found.insert(self.own.key_id().to_owned(), self.own.public_key());
        }
        found
    }
}

/// `valid_at_ms` for an event of a room version: from version 5 a key
/// must be valid when the event was sent; before, any key will do.
pub fn key_validity_for(rules: &ruma::room_version_rules::RoomVersionRules, origin_server_ts: u64) -> u64 {
    if rules.enforce_key_validity {
        origin_server_ts
    } else {
        0
    }
}

/// For request signatures: valid now.
pub fn valid_now() -> u64 {
    now_ms()
}
