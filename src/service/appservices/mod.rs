//! Application services (bridges, bots): their registrations, kept in
//! storage and (re)loaded from `app_service_config_files` at start; who may
//! act as whom; and the requests this server makes of them (transactions
//! through the outbox, see `sender.rs`; user and alias queries; pings;
//! third-party lookups, see `thirdparty.rs`).

pub mod ephemeral;
pub mod registration;
pub mod sender;
mod thirdparty;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ruma::{OwnedServerName, RoomAliasId, UserId};
use serde_json::Value as JsonValue;

pub use registration::{Appservice, BadRegistration, Registration};

use super::{ServiceError, ServiceResult};
use crate::database::appservices::AppserviceTables;
use crate::database::Db;

/// How long a request to an appservice may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to an appservice failed, as the ping endpoint reports it.
#[derive(Debug, thiserror::Error)]
pub enum AppserviceFailure {
    #[error("the appservice has no URL")]
    UrlNotSet,
    #[error("the appservice answered {status}")]
    BadStatus { status: u16, body: String },
    #[error("the appservice cannot be reached: {0}")]
    ConnectionFailed(String),
    #[error("the appservice did not answer in time")]
    Timeout,
}

pub struct AppservicesService {
    tables: AppserviceTables,
    server_name: OwnedServerName,
    /// Every registered appservice; replaced whole on a change.
    registered: RwLock<Arc<Vec<Arc<Appservice>>>>,
    http: reqwest::Client,
}

impl AppservicesService {
    /// The stored registrations, without the config's files (for the
    /// command line, on a stopped server).
    pub fn open_stored(db: Db, server_name: OwnedServerName) -> ServiceResult<Self> {
        let tables = AppserviceTables::new(db);
        let mut registered = Vec::new();
        for (id, json) in tables.all()? {
            let checked = serde_json::from_str::<Registration>(&json)
                .map_err(|e| BadRegistration(e.to_string()))
                .and_then(|r| Appservice::new(r, &server_name));
            match checked {
                Ok(appservice) => registered.push(Arc::new(appservice)),
                Err(e) => tracing::error!(%id, error = %e, "stored appservice registration is invalid; ignored"),
            }
        }
        // Direct, as the federation client: an appservice usually runs next
        // to the server, and a proxy from the environment would not reach it.
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| ServiceError::Internal(format!("HTTP client: {e}")))?;
        Ok(Self {
            tables,
            server_name,
            registered: RwLock::new(Arc::new(registered)),
            http,
        })
    }

    /// The stored registrations, then those of `files` (which replace
    /// stored ones of the same ID). A bad file is left out with an error
    /// naming it and its problem; the server starts without it.
    pub fn open(db: Db, server_name: OwnedServerName, files: &[PathBuf]) -> ServiceResult<Self> {
        let service = Self::open_stored(db, server_name)?;
        for path in files {
            let loaded = std::fs::read_to_string(path)
                .map_err(|e| ServiceError::InvalidParam(e.to_string()))
                .and_then(|text| service.register_yaml(&text));
            match loaded {
                Ok(appservice) => tracing::info!(id = appservice.id(), file = %path.display(), "appservice loaded"),
                Err(e) => tracing::error!(file = %path.display(), error = %e, "appservice registration refused"),
            }
        }
        Ok(service)
    }

    /// Registers (or replaces, by ID) the appservice of a registration
    /// file's text.
    pub fn register_yaml(&self, text: &str) -> ServiceResult<Arc<Appservice>> {
        let registration = Registration::from_yaml(text).map_err(|e| ServiceError::InvalidParam(e.0))?;
        self.register(registration)
    }

    /// Registers `registration`, refusing one that shares a token with
    /// another appservice or claims what it claims exclusively (see
    /// [`Appservice::exclusive_overlap`]).
    pub fn register(&self, registration: Registration) -> ServiceResult<Arc<Appservice>> {
        let appservice =
            Arc::new(Appservice::new(registration, &self.server_name).map_err(|e| ServiceError::InvalidParam(e.0))?);
        let mut registered = self.registered.write().unwrap_or_else(|e| e.into_inner());
        let r = &appservice.registration;
        for other in registered.iter().filter(|o| o.id() != r.id) {
            let o = &other.registration;
            if [&o.as_token, &o.hs_token]
                .iter()
                .any(|t| **t == r.as_token || **t == r.hs_token)
            {
                return Err(ServiceError::InvalidParam(format!(
                    "appservice {}: its tokens are those of appservice {}",
                    r.id, o.id
                )));
            }
            if let Some(overlap) = appservice.exclusive_overlap(other) {
                return Err(ServiceError::InvalidParam(format!(
                    "appservices {} and {} overlap: {overlap}",
                    r.id, o.id
                )));
            }
        }
        let json = serde_json::to_string(r).map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.tables.put(&r.id, &json)?;
        let mut next: Vec<Arc<Appservice>> = registered.iter().filter(|o| o.id() != r.id).cloned().collect();
        next.push(appservice.clone());
        *registered = Arc::new(next);
        Ok(appservice)
    }

    /// Removes appservice `id`; whether it was registered.
    pub fn unregister(&self, id: &str) -> ServiceResult<bool> {
        let mut registered = self.registered.write().unwrap_or_else(|e| e.into_inner());
        let removed = self.tables.remove(id)?;
        *registered = Arc::new(registered.iter().filter(|a| a.id() != id).cloned().collect());
        Ok(removed)
    }

    pub fn all(&self) -> Arc<Vec<Arc<Appservice>>> {
        self.registered.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Appservice>> {
        self.all().iter().find(|a| a.id() == id).cloned()
    }

    /// The appservice whose `as_token` this is.
    pub fn by_as_token(&self, token: &str) -> Option<Arc<Appservice>> {
        self.all().iter().find(|a| a.registration.as_token == token).cloned()
    }

    /// Refuses `user` if an appservice other than `acting` claims it
    /// exclusively (registration by anyone else).
    pub fn check_user_free(&self, user: &UserId, acting: Option<&Appservice>) -> ServiceResult<()> {
        let taken = self
            .all()
            .iter()
            .find(|a| a.claims_user(user.as_str()) && acting.is_none_or(|acting| acting.id() != a.id()))
            .map(|a| a.id().to_owned());
        match taken {
            Some(id) => Err(ServiceError::Exclusive(format!(
                "{user} is in the exclusive namespace of appservice {id}"
            ))),
            None => Ok(()),
        }
    }

    /// Refuses `alias` to `sender` if an appservice claims it exclusively
    /// and `sender` is not one of that appservice's users.
    pub fn check_alias_free(&self, alias: &RoomAliasId, sender: &UserId) -> ServiceResult<()> {
        let taken = self
            .all()
            .iter()
            .find(|a| a.claims_alias(alias.as_str()) && !a.is_user_in_namespace(sender.as_str()))
            .map(|a| a.id().to_owned());
        match taken {
            Some(id) => Err(ServiceError::Exclusive(format!(
                "{alias} is in the exclusive namespace of appservice {id}"
            ))),
            None => Ok(()),
        }
    }

    /// Asks the appservices whose namespace holds `user` whether it
    /// exists (`GET /_matrix/app/v1/users/{userId}`), which lets one
    /// create it first; whether one said yes.
    pub async fn query_user(&self, user: &UserId) -> bool {
        let path = format!("/_matrix/app/v1/users/{}", encode(user.as_str()));
        self.query(|a| a.is_user_in_namespace(user.as_str()), &path).await
    }

    /// As [`Self::query_user`], for a room alias
    /// (`GET /_matrix/app/v1/rooms/{roomAlias}`).
    pub async fn query_alias(&self, alias: &RoomAliasId) -> bool {
        let path = format!("/_matrix/app/v1/rooms/{}", encode(alias.as_str()));
        self.query(|a| a.is_alias_in_namespace(alias.as_str()), &path).await
    }

    async fn query(&self, concerned: impl Fn(&Appservice) -> bool, path: &str) -> bool {
        for appservice in self.all().iter().filter(|a| concerned(a)) {
            match self
                .call::<JsonValue>(appservice, reqwest::Method::GET, path, None)
                .await
            {
                Ok(_) => return true,
                Err(AppserviceFailure::BadStatus { status: 404, .. } | AppserviceFailure::UrlNotSet) => {}
                Err(e) => tracing::warn!(id = appservice.id(), path, error = %e, "appservice query failed"),
            }
        }
        false
    }

    /// `POST /_matrix/app/v1/ping`; how long the appservice took.
    pub async fn ping(&self, appservice: &Appservice, txn_id: Option<&str>) -> Result<Duration, AppserviceFailure> {
        let body = match txn_id {
            Some(id) => serde_json::json!({ "transaction_id": id }),
            None => serde_json::json!({}),
        };
        let started = Instant::now();
        self.call(appservice, reqwest::Method::POST, "/_matrix/app/v1/ping", Some(&body))
            .await?;
        Ok(started.elapsed())
    }

    /// `PUT /_matrix/app/v1/transactions/{txnId}`.
    pub async fn send_transaction(
        &self,
        appservice: &Appservice,
        txn_id: &str,
        body: &sender::TransactionBody,
    ) -> Result<(), AppserviceFailure> {
        let path = format!("/_matrix/app/v1/transactions/{}", encode(txn_id));
        self.call(appservice, reqwest::Method::PUT, &path, Some(body))
            .await
            .map(|_| ())
    }

    /// A request to the appservice with its `hs_token`; its JSON answer.
    async fn call<B: serde::Serialize + ?Sized>(
        &self,
        appservice: &Appservice,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<JsonValue, AppserviceFailure> {
        let base = appservice
            .registration
            .url
            .as_deref()
            .ok_or(AppserviceFailure::UrlNotSet)?;
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(&appservice.registration.hs_token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                AppserviceFailure::Timeout
            } else {
                AppserviceFailure::ConnectionFailed(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(AppserviceFailure::BadStatus { status, body: text });
        }
        Ok(serde_json::from_str(&text).unwrap_or(JsonValue::Null))
    }
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}
