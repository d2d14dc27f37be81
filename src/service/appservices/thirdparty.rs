//! Third-party networks (the spec's "third-party lookups"): a client's
//! questions about the protocols bridges speak, and the users and rooms
//! on them, forwarded to the appservices that declare the protocol in
//! their registration (`protocols`), answers merged as Synapse merges
//! them. An appservice that fails or answers nonsense is left out (with a
//! warning), so one broken bridge does not hide the others.

use std::collections::BTreeMap;

use ruma::thirdparty::{Location, Protocol, User};
use ruma::{RoomAliasId, UserId};
use serde::de::DeserializeOwned;

use super::{encode, Appservice, AppservicesService};

/// What a third-party lookup is about: `GET /_matrix/app/v1/thirdparty/{kind}`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    User,
    Location,
}

impl Kind {
    fn segment(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Location => "location",
        }
    }
}

impl AppservicesService {
    /// Every protocol some appservice declares and describes, by name.
    /// The instances of appservices speaking the same protocol are put
    /// together; the other fields are the first one's (they ought to
    /// agree). A protocol no appservice described is left out.
    pub async fn protocols(&self, only: Option<&str>) -> BTreeMap<String, Protocol> {
        let mut merged: BTreeMap<String, Protocol> = BTreeMap::new();
        for appservice in self.all().iter() {
            for name in &appservice.registration.protocols {
                if only.is_some_and(|only| only != name) {
                    continue;
                }
                let Some(described) = self.protocol_of(appservice, name).await else {
                    continue;
                };
                match merged.get_mut(name) {
                    Some(protocol) => protocol.instances.extend(described.instances),
                    None => {
                        merged.insert(name.clone(), described);
                    }
                }
            }
        }
        merged
    }

    /// One appservice's description of `protocol`, each instance given an
    /// `instance_id` that names the appservice and the network (Synapse's
    /// `{appservice}|{network}`), so a client's room directory query for
    /// an instance can be told apart from another bridge's.
    async fn protocol_of(&self, appservice: &Appservice, protocol: &str) -> Option<Protocol> {
        let path = format!("/_matrix/app/v1/thirdparty/protocol/{}", encode(protocol));
        let mut described: Protocol = self.ask(appservice, &path).await?;
        for instance in &mut described.instances {
            instance.instance_id = Some(format!("{}|{}", appservice.id(), instance.network_id));
        }
        Some(described)
    }

    /// The users of `protocol` matching `fields`, from every appservice
    /// that speaks it (none: an empty list, as Synapse answers).
    pub async fn thirdparty_users(&self, protocol: &str, fields: &BTreeMap<String, String>) -> Vec<User> {
        self.lookup(Kind::User, protocol, fields).await
    }

    /// The portal rooms of `protocol` matching `fields`.
    pub async fn thirdparty_locations(&self, protocol: &str, fields: &BTreeMap<String, String>) -> Vec<Location> {
        self.lookup(Kind::Location, protocol, fields).await
    }

    /// The third-party users behind a Matrix user: asked of the
    /// appservices with protocols whose namespace holds the user.
    pub async fn thirdparty_users_of(&self, user: &UserId) -> Vec<User> {
        let query = format!("userid={}", encode(user.as_str()));
        self.reverse_lookup(Kind::User, &query, |a| a.is_user_in_namespace(user.as_str()))
            .await
    }

    /// The third-party locations behind a Matrix room alias.
    pub async fn thirdparty_locations_of(&self, alias: &RoomAliasId) -> Vec<Location> {
        let query = format!("alias={}", encode(alias.as_str()));
        self.reverse_lookup(Kind::Location, &query, |a| a.is_alias_in_namespace(alias.as_str()))
            .await
    }

    async fn lookup<T: DeserializeOwned>(
        &self,
        kind: Kind,
        protocol: &str,
        fields: &BTreeMap<String, String>,
    ) -> Vec<T> {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut path = format!("/_matrix/app/v1/thirdparty/{}/{}", kind.segment(), encode(protocol));
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        let mut found = Vec::new();
        for appservice in self
            .all()
            .iter()
            .filter(|a| a.registration.protocols.iter().any(|p| p == protocol))
        {
            found.extend(self.ask_list(appservice, &path).await);
        }
        found
    }

    async fn reverse_lookup<T: DeserializeOwned>(
        &self,
        kind: Kind,
        query: &str,
        concerned: impl Fn(&Appservice) -> bool,
    ) -> Vec<T> {
        let path = format!("/_matrix/app/v1/thirdparty/{}?{query}", kind.segment());
        let mut found = Vec::new();
        for appservice in self
            .all()
            .iter()
            .filter(|a| !a.registration.protocols.is_empty() && concerned(a))
        {
            found.extend(self.ask_list(appservice, &path).await);
        }
        found
    }

    /// A list answer, each entry that does not read as a `T` left out
    /// (Synapse keeps the well-formed ones of a partly bad answer).
    async fn ask_list<T: DeserializeOwned>(&self, appservice: &Appservice, path: &str) -> Vec<T> {
        let entries: Vec<serde_json::Value> = self.ask(appservice, path).await.unwrap_or_default();
        entries
            .into_iter()
            .filter_map(|entry| match serde_json::from_value(entry) {
                Ok(item) => Some(item),
                Err(e) => {
                    tracing::warn!(id = appservice.id(), path, error = %e, "appservice sent a bad third-party entry");
                    None
                }
            })
            .collect()
    }

    /// A GET of the appservice read as a `T`; `None` (logged, but a 404
    /// quietly: "nothing here") when it fails or answers something else.
    async fn ask<T: DeserializeOwned>(&self, appservice: &Appservice, path: &str) -> Option<T> {
        let answer = match self
            .call(appservice, reqwest::Method::GET, path, None::<&serde_json::Value>)
            .await
        {
            Ok(answer) => answer,
            Err(super::AppserviceFailure::BadStatus { status: 404, .. } | super::AppserviceFailure::UrlNotSet) => {
                return None
            }
            Err(e) => {
                tracing::warn!(id = appservice.id(), path, error = %e, "third-party lookup failed");
                return None;
            }
        };
        match serde_json::from_value(answer) {
            Ok(read) => Some(read),
            Err(e) => {
                tracing::warn!(id = appservice.id(), path, error = %e, "appservice answered a third-party lookup with something else");
                None
            }
        }
    }
}
