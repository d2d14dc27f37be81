//! Federation: requests to other servers (where a server name is reached,
//! [`discovery`], and the signed client that sends them, [`client`]), their
//! signing keys ([`keys`]), what they send us ([`receive`]) and the past
//! of rooms we joined late ([`backfill`]), our users joining their rooms
//! ([`membership`]), our events on their way to them through the outbox
//! ([`sender`]), what runs their work ([`work`]), and what our clients read
//! of other servers: directories, spaces, events by time ([`remote_reads`]).

mod backfill;
pub mod client;
pub mod device_lists;
pub mod devices;
pub mod discovery;
pub mod keys;
mod membership;
mod query;
mod receive;
mod remote_reads;
mod resident;
pub mod sender;
pub mod work;

use std::time::Duration;

use http::StatusCode;
use ruma::OwnedServerName;

pub use client::{FederationClient, FederationConfig, RawResponse, RequestSigner};
pub use discovery::{Destination, ServerResolver};

use std::sync::Arc;

use super::outbox::OutboxService;
use super::server_keys::ServerKeysService;
use super::ServiceError;
use crate::config::Config;
use crate::database::Db;

/// Talking to other servers.
pub struct FederationService {
    pub client: Arc<FederationClient>,
    pub keys: keys::RemoteKeys,
    /// Other servers' users' device lists (see [`device_lists`]).
    pub device_lists: device_lists::RemoteDeviceLists,
    server_name: OwnedServerName,
    outbox: Arc<OutboxService>,
    /// Backfills run one at a time (see `backfill`).
    backfill_lock: tokio::sync::Mutex<()>,
    /// Where the work other servers bring runs (see [`work`]).
    pub work: work::FederationWork,
}

impl FederationService {
    /// Queues an EDU about `room_id` (typing, receipts) for the other
    /// servers in the room, when federation is on.
    pub fn send_room_edu(
        &self,
        s: &super::Services,
        room_id: &ruma::RoomId,
        edu_type: &str,
        content: serde_json::Value,
    ) -> super::ServiceResult<()> {
        if !s.config.allow_federation {
            return Ok(());
        }
        self.queue_edu(s.timeline.servers_in_room(room_id)?, edu_type, content)
    }

    /// Queues an EDU about `user` (presence) for the other servers that
    /// share a room with them, each once, when federation is on.
    pub fn send_user_edu(
        &self,
        s: &super::Services,
        user: &ruma::UserId,
        edu_type: &str,
        content: serde_json::Value,
    ) -> super::ServiceResult<()> {
        if !s.config.allow_federation {
            return Ok(());
        }
        let mut servers = std::collections::BTreeSet::new();
        for (room_id, record) in s.timeline.user_rooms(user)? {
            if record.membership == "join" {
                servers.extend(s.timeline.servers_in_room(&room_id)?);
            }
        }
        self.queue_edu(servers, edu_type, content)
    }

    fn queue_edu(
        &self,
        servers: std::collections::BTreeSet<OwnedServerName>,
        edu_type: &str,
        content: serde_json::Value,
    ) -> super::ServiceResult<()> {
        let destinations: Vec<super::outbox::Destination> = servers
            .into_iter()
            .filter(|server| *server != self.server_name)
            .map(super::outbox::Destination::Server)
            .collect();
        if destinations.is_empty() {
            return Ok(());
        }
        let edu = serde_json::json!({"edu_type": edu_type, "content": content});
        self.outbox.queue(
            &destinations,
            &crate::database::outbox::OutboxItem::Edu(edu.to_string()),
        )
    }

    pub fn new(
        config: &Config,
        db: Db,
        server_keys: Arc<ServerKeysService>,
        outbox: Arc<OutboxService>,
    ) -> Result<Self, FederationError> {
        let client = Arc::new(FederationClient::new(&config.into(), server_keys.clone())?);
        Ok(Self {
            keys: keys::RemoteKeys::new(db.clone(), server_keys, config.trusted_servers.clone()),
            device_lists: device_lists::RemoteDeviceLists::new(db, config.server_name.clone()),
            client,
            server_name: config.server_name.clone(),
            outbox,
            backfill_lock: tokio::sync::Mutex::new(()),
            work: work::FederationWork::new(config.federation_workers),
        })
    }
}

/// What can go wrong sending a request to another server.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation is turned off on this server")]
    Disabled,
    /// Recent requests to this server failed; it is not tried again yet.
    #[error("{destination} failed recently; not retrying for another {}s", retry_in.as_secs().max(1))]
    BackedOff {
        destination: OwnedServerName,
        retry_in: Duration,
    },
    /// The server resolves to an address this server may not connect to.
    #[error("refusing to connect to {destination}: {reason}")]
    Forbidden {
        destination: OwnedServerName,
        reason: String,
    },
    /// No answer: DNS, connection or TLS failed.
    #[error("could not reach {destination}: {message}")]
    Unreachable {
        destination: OwnedServerName,
        message: String,
    },
    #[error("{destination} did not answer within {}s", timeout.as_secs_f32())]
    Timeout {
        destination: OwnedServerName,
        timeout: Duration,
    },
    #[error("the answer from {destination} is larger than {limit} bytes")]
    TooLarge { destination: OwnedServerName, limit: usize },
    /// The server answered with an error status (a Matrix error when it
    /// had an `errcode`).
    #[error("{destination} answered {status}{}: {message}", errcode.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Remote {
        destination: OwnedServerName,
        status: StatusCode,
        errcode: Option<String>,
        message: String,
    },
    /// A success status with a body that is not what the endpoint returns.
    #[error("unexpected answer from {destination}: {message}")]
    BadResponse {
        destination: OwnedServerName,
        message: String,
    },
    /// The request could not be built or signed (a bug here, or bad TLS
    /// settings when building the client).
    #[error("{0}")]
    Internal(String),
}

impl FederationError {
    /// Whether this failure says the destination is down or unreachable,
    /// so that further requests should wait (a refusal or a 4xx does not).
    pub fn is_transport_failure(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::Remote { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

impl From<FederationError> for ServiceError {
    fn from(error: FederationError) -> Self {
        match error {
            FederationError::Disabled => ServiceError::Forbidden(error.to_string()),
            FederationError::Internal(message) => ServiceError::Internal(message),
            // The other server's refusal is the answer, not a gateway failure.
            FederationError::Remote { status, .. } if status == StatusCode::FORBIDDEN => {
                ServiceError::Forbidden(error.to_string())
            }
            FederationError::Remote { status, .. } if status == StatusCode::NOT_FOUND => {
                ServiceError::NotFound(error.to_string())
            }
            // No server could admit the user to a restricted room: to the
            // client, a refusal.
            FederationError::Remote { ref errcode, .. }
                if matches!(
                    errcode.as_deref(),
                    Some("M_UNABLE_TO_AUTHORISE_JOIN" | "M_UNABLE_TO_GRANT_JOIN")
                ) =>
            {
                ServiceError::Forbidden(error.to_string())
            }
            other => ServiceError::RemoteFailed(other.to_string()),
        }
    }
}
