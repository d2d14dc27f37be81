//! The HTTP client for requests to other servers: each request is built by
//! ruma, signed with this server's key (X-Matrix, the spec's "Request
//! Authentication") and sent where discovery says, with the `Host` header
//! and TLS name the spec asks for.
//!
//! It never connects to a non-public address (loopback, private,
//! link-local, ...) unless the operator allows its range or set the
//! destination by an override: an address literal is checked before
//! connecting, a name after DNS resolution, as URL previews do. A server
//! that fails (no connection, timeout, 5xx) is not tried again for a while,
//! longer after each failure.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{HeaderValue, HOST};
use http::StatusCode;
use reqwest::dns::{Name, Resolve, Resolving};
use ruma::api::auth_scheme::{AuthScheme, NoAuthentication};
use ruma::api::federation::authentication::{ServerSignatures, XMatrixSigningInput};
use ruma::api::path_builder::SinglePath;
use ruma::api::{IncomingResponseExt, OutgoingRequest, OutgoingRequestExt};
use ruma::signatures::Ed25519KeyPair;
use ruma::{OwnedServerName, ServerName};

use super::discovery::{Destination, Host, NetworkLookups, ServerResolver};
use super::FederationError;
use crate::config::{Config, DestinationOverride, IpRange};
use crate::service::address_guard::{AddressGuard, Refused};
use crate::service::PruneSchedule;

/// The largest answer read from another server; state and backfill
/// answers of big rooms run to a few MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait after a failure; each further failure doubles it, up to
/// the cap. Short at first so a restart elsewhere is noticed soon; an hour
/// at most, since a small server has little to lose by trying hourly.
const BACKOFF_START: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// A `.well-known` fetch follows at most this many redirects.
const WELL_KNOWN_MAX_REDIRECTS: usize = 5;
const USER_AGENT: &str = concat!("Conduit/", env!("CARGO_PKG_VERSION"));

/// What the client is built from (the federation keys of [`Config`]).
#[derive(Debug, Clone)]
pub struct FederationConfig {
    pub enabled: bool,
    /// This server: the origin of every request.
    pub server_name: OwnedServerName,
    pub destination_overrides: BTreeMap<OwnedServerName, DestinationOverride>,
    pub ca_files: Vec<PathBuf>,
    pub skip_tls_verification: bool,
    pub allowed_ranges: Vec<IpRange>,
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
}

impl From<&Config> for FederationConfig {
    fn from(config: &Config) -> Self {
        Self {
            enabled: config.allow_federation,
            server_name: config.server_name.clone(),
            destination_overrides: config.federation_destination_overrides.clone(),
            ca_files: config.federation_ca_files.clone(),
            skip_tls_verification: config.federation_skip_tls_verification,
            allowed_ranges: config.federation_allowed_ranges.clone(),
            request_timeout: Duration::from_secs(config.federation_request_timeout),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// Holds the key requests are signed with (this server's signing key).
pub trait RequestSigner: Send + Sync {
    fn key_pair(&self) -> &Ed25519KeyPair;
}

impl RequestSigner for Ed25519KeyPair {
    fn key_pair(&self) -> &Ed25519KeyPair {
        self
    }
}

/// The authentication schemes of federation endpoints, and what each
/// needs from the client to authenticate a request.
pub trait FederationAuth: AuthScheme {
    fn input<'a>(origin: &ServerName, destination: &ServerName, key_pair: &'a Ed25519KeyPair) -> Self::Input<'a>;
}

impl FederationAuth for ServerSignatures {
    fn input<'a>(origin: &ServerName, destination: &ServerName, key_pair: &'a Ed25519KeyPair) -> Self::Input<'a> {
        XMatrixSigningInput::new(origin.to_owned(), destination.to_owned(), key_pair)
    }
}

impl FederationAuth for NoAuthentication {
    fn input<'a>(_: &ServerName, _: &ServerName, _: &'a Ed25519KeyPair) -> Self::Input<'a> {}
}

/// Sends requests to other servers. One per server process.
pub struct FederationClient {
    origin: OwnedServerName,
    enabled: bool,
    signer: Arc<dyn RequestSigner>,
    http: reqwest::Client,
    /// The `.well-known` client (HTTPS only, each redirect checked), also
    /// used for media redirects.
    redirect_http: reqwest::Client,
    resolver: ServerResolver<NetworkLookups>,
    /// What the client's DNS resolver connects to for each URL host.
    routes: Arc<Routes>,
    guard: AddressGuard,
    backoff: Mutex<Backoffs>,
    request_timeout: Duration,
    max_response_bytes: usize,
}

impl FederationClient {
    /// Fails on unreadable or empty CA files.
    pub fn new(config: &FederationConfig, signer: Arc<dyn RequestSigner>) -> Result<Self, FederationError> {
        let mut extra_roots = Vec::new();
        for path in &config.ca_files {
            let pem = std::fs::read(path)
                .map_err(|e| FederationError::Internal(format!("cannot read CA file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default();
            if certs.is_empty() {
                return Err(FederationError::Internal(format!(
                    "CA file {} holds no PEM certificate",
                    path.display()
                )));
            }
            extra_roots.extend(certs);
        }
        if config.skip_tls_verification {
            tracing::warn!(
                "federation_skip_tls_verification is on: any server can impersonate any other to this one; \
                 never use it outside tests"
            );
        }
        let guard = AddressGuard::new(config.allowed_ranges.clone());
        let builder = |dns: GuardedDns| {
            let mut builder = reqwest::Client::builder()
                .dns_resolver(Arc::new(dns))
                // A proxy from the environment would connect for us,
                // around the address checks.
                .no_proxy()
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(USER_AGENT)
                .danger_accept_invalid_certs(config.skip_tls_verification);
            for root in &extra_roots {
                builder = builder.add_root_certificate(root.clone());
            }
            builder
        };
        let build_error = |e: reqwest::Error| FederationError::Internal(format!("building the federation client: {e}"));

        let routes = Arc::new(Routes::default());
        let http = builder(GuardedDns {
            routes: Some(Arc::clone(&routes)),
            guard: guard.clone(),
        })
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(build_error)?;

        let redirect_guard = guard.clone();
        let well_known_http = builder(GuardedDns {
            routes: None,
            guard: guard.clone(),
        })
        .https_only(true)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= WELL_KNOWN_MAX_REDIRECTS {
                return attempt.error("too many redirects");
            }
            match attempt.url().host() {
                Some(url::Host::Ipv4(ip)) if !redirect_guard.allows(IpAddr::V4(ip)) => {
                    attempt.error(Refused(format!("{ip} is not a public address")))
                }
                Some(url::Host::Ipv6(ip)) if !redirect_guard.allows(IpAddr::V6(ip)) => {
                    attempt.error(Refused(format!("{ip} is not a public address")))
                }
                _ => attempt.follow(),
            }
        }))
        .build()
        .map_err(build_error)?;

        Ok(Self {
            origin: config.server_name.clone(),
            enabled: config.enabled,
            signer,
            http,
            redirect_http: well_known_http.clone(),
            resolver: ServerResolver::new(
                NetworkLookups::new(well_known_http),
                config.destination_overrides.clone(),
            ),
            routes,
            guard,
            backoff: Mutex::new(Backoffs::default()),
            request_timeout: config.request_timeout,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// Sends `request` to `destination`, signed unless the endpoint takes no
    /// authentication, within the configured timeout.
    pub async fn send<R>(&self, destination: &ServerName, request: R) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
        R::Authentication: FederationAuth,
    {
        self.send_with_timeout(destination, request, self.request_timeout).await
    }

    /// [`send`](Self::send) with its own timeout, for the whole of it:
    /// discovery, connecting, the request and the answer.
    pub async fn send_with_timeout<R>(
        &self,
        destination: &ServerName,
        request: R,
        timeout: Duration,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
        R::Authentication: FederationAuth,
    {
        let max_bytes = self.max_response_bytes;
        let answer = self
            .guarded(destination, timeout, async {
                let http_request = self.build(destination, request)?;
                self.exchange(destination, http_request, max_bytes).await
            })
            .await?;
        let mut parsed = http::Response::new(answer.body.as_slice());
        *parsed.status_mut() = answer.status;
        *parsed.headers_mut() = answer.headers;
        R::IncomingResponse::try_from_http_response(parsed).map_err(|e| FederationError::BadResponse {
            destination: destination.to_owned(),
            message: e.to_string(),
        })
    }

    /// Sends `request` and hands back the answer unparsed, its body capped
    /// at `max_bytes`: for answers ruma would hold whole in its own types
    /// or that need a careful parser (media).
    pub async fn send_raw<R>(
        &self,
        destination: &ServerName,
        request: R,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<RawResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
        R::Authentication: FederationAuth,
    {
        self.guarded(destination, timeout, async {
            let http_request = self.build(destination, request)?;
            self.exchange(destination, http_request, max_bytes).await
        })
        .await
    }

    /// An unsigned `GET` of `path_and_query` on `destination`, for the
    /// deprecated endpoints that predate server authentication (media).
    pub async fn get_unsigned(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<RawResponse, FederationError> {
        self.guarded(destination, timeout, async {
            let http_request = http::Request::get(path_and_query)
                .body(Vec::new())
                .map_err(|e| FederationError::Internal(format!("a request to {destination}: {e}")))?;
            self.exchange(destination, http_request, max_bytes).await
        })
        .await
    }

    /// An unsigned `GET` of a URL another server sent us to (a media
    /// redirect): HTTPS only, and only to addresses the guard allows,
    /// redirects included. Failures here say nothing of the server that
    /// sent us, so they start no backoff.
    pub async fn get_redirected(
        &self,
        sender: &ServerName,
        url: &str,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<RawResponse, FederationError> {
        if !self.enabled {
            return Err(FederationError::Disabled);
        }
        let refused = |reason: String| FederationError::Forbidden {
            destination: sender.to_owned(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| refused(format!("bad redirect URL: {e}")))?;
        if parsed.scheme() != "https" {
            return Err(refused("redirects must be to HTTPS".to_owned()));
        }
        // Address literals are not looked up, so the resolver's check
        // would not see them.
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(refused("redirect URL without a host".to_owned())),
        };
        if let Some(ip) = literal.filter(|ip| !self.guard.allows(*ip)) {
            return Err(refused(format!("{ip} is not a public address")));
        }
        let fetch = async {
            let response = self
                .redirect_http
                .get(parsed)
                .send()
                .await
                .map_err(|e| transport_error(sender, &e))?;
            self.answer(sender, response, max_bytes).await
        };
        tokio::time::timeout(timeout, fetch).await.unwrap_or_else(|_| {
            Err(FederationError::Timeout {
                destination: sender.to_owned(),
                timeout,
            })
        })
    }

    /// The federation request timeout from the configuration.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Runs `work` for `destination` unless federation is off or the
    /// destination is backed off, within `timeout`, and backs off after a
    /// transport failure.
    async fn guarded<T>(
        &self,
        destination: &ServerName,
        timeout: Duration,
        work: impl std::future::Future<Output = Result<T, FederationError>>,
    ) -> Result<T, FederationError> {
        if !self.enabled {
            return Err(FederationError::Disabled);
        }
        if let Some(retry_in) = lock(&self.backoff).remaining(destination, Instant::now()) {
            return Err(FederationError::BackedOff {
                destination: destination.to_owned(),
                retry_in,
            });
        }
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(FederationError::Timeout {
                destination: destination.to_owned(),
                timeout,
            }),
        };
        match &result {
            Err(error) if error.is_transport_failure() => {
                let delay = lock(&self.backoff).failed(destination, Instant::now());
                tracing::info!(%destination, %error, backoff_secs = delay.as_secs(), "federation request failed");
                if !matches!(error, FederationError::Remote { .. }) {
                    // The address may have moved: discover afresh next time.
                    self.resolver.forget(destination);
                }
            }
            Err(FederationError::Forbidden { .. } | FederationError::Internal(_)) => {}
            // Any other outcome is an answer: the server is up.
            _ => self.reset(destination),
        }
        result
    }

    /// Whether requests to `destination` are refused for now after failures.
    pub fn is_backed_off(&self, destination: &ServerName) -> bool {
        lock(&self.backoff).remaining(destination, Instant::now()).is_some()
    }

    /// Lets requests to `destination` through again at once (when it
    /// contacts us, it is up).
    pub fn reset(&self, destination: &ServerName) {
        if lock(&self.backoff).succeeded(destination) {
            tracing::debug!(%destination, "federation backoff cleared");
        }
    }

    /// Where requests to `destination` go (for diagnostics).
    pub async fn resolve(&self, destination: &ServerName) -> Destination {
        self.resolver.resolve(destination).await
    }

    /// `request` as HTTP, signed unless the endpoint takes no
    /// authentication; its path only, the server is added by [`exchange`](Self::exchange).
    fn build<R>(&self, server: &ServerName, request: R) -> Result<http::Request<Vec<u8>>, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
        R::Authentication: FederationAuth,
    {
        let auth = R::Authentication::input(&self.origin, server, self.signer.key_pair());
        // The signature covers the path and query, not the host: a
        // placeholder base is replaced once discovery has run.
        let built: http::Request<Vec<u8>> = request
            .try_into_http_request("https://placeholder.invalid", auth, ())
            .map_err(|e| FederationError::Internal(format!("building a request to {server}: {e}")))?;
        let (mut parts, body) = built.into_parts();
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|e| FederationError::Internal(format!("a request path to {server}: {e}")))?;
        Ok(http::Request::from_parts(parts, body))
    }

    /// Sends `request` (whose URI is a path) to wherever discovery says
    /// `server` is; an error status becomes [`FederationError::Remote`].
    async fn exchange(
        &self,
        server: &ServerName,
        mut request: http::Request<Vec<u8>>,
        max_bytes: usize,
    ) -> Result<RawResponse, FederationError> {
        let target = self.resolver.resolve(server).await;
        match &target.tls_name {
            // Not looked up, so not checked by the resolver: check here.
            Host::Ip(ip) => {
                if !target.overridden && !self.guard.allows(*ip) {
                    return Err(FederationError::Forbidden {
                        destination: server.to_owned(),
                        reason: format!("{ip} is not a public address"),
                    });
                }
            }
            Host::Name(name) => self.routes.set(
                name,
                Route {
                    connect_host: target.connect_host.clone(),
                    trusted: target.overridden,
                },
            ),
        }
        let scheme = if target.plain_http { "http" } else { "https" };
        let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        *request.uri_mut() = format!("{scheme}://{}:{}{path}", target.tls_name, target.port)
            .parse()
            .map_err(|e| FederationError::Internal(format!("a request URL for {server}: {e}")))?;
        let host = HeaderValue::from_str(&target.host_header)
            .map_err(|e| FederationError::Internal(format!("Host header for {server}: {e}")))?;
        request.headers_mut().insert(HOST, host);
        tracing::debug!(
            destination = %server,
            method = %request.method(),
            path = request.uri().path(),
            %target,
            "federation request"
        );
        let outgoing = reqwest::Request::try_from(request)
            .map_err(|e| FederationError::Internal(format!("a request to {server}: {e}")))?;
        let response = self
            .http
            .execute(outgoing)
            .await
            .map_err(|e| transport_error(server, &e))?;
        self.answer(server, response, max_bytes).await
    }

    /// Reads an answer from `server`; an error status becomes
    /// [`FederationError::Remote`].
    async fn answer(
        &self,
        server: &ServerName,
        mut response: reqwest::Response,
        max_bytes: usize,
    ) -> Result<RawResponse, FederationError> {
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let body = read_body(server, response, max_bytes).await?;
        if status.as_u16() >= 400 {
            return Err(remote_error(server, status, &body));
        }
        Ok(RawResponse { status, headers, body })
    }
}

/// An answer from another server, read whole but not parsed.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// Reads a body of at most `limit` bytes, refusing a longer one as soon as
/// it is announced or seen.
async fn read_body(
    server: &ServerName,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, FederationError> {
    let too_large = || FederationError::TooLarge {
        destination: server.to_owned(),
        limit,
    };
    let announced = response.content_length().unwrap_or(0);
    if announced > limit as u64 {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(server, &e))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A failed exchange as a [`FederationError`]: an address refusal, a
/// timeout, or the server being unreachable (with the underlying causes,
/// which reqwest's own message leaves out).
fn transport_error(server: &ServerName, error: &reqwest::Error) -> FederationError {
    let mut causes = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return FederationError::Forbidden {
                destination: server.to_owned(),
                reason: refused.0.clone(),
            };
        }
        causes.push(err.to_string());
        source = err.source();
    }
    if error.is_timeout() {
        return FederationError::Timeout {
            destination: server.to_owned(),
            timeout: CONNECT_TIMEOUT,
        };
    }
    FederationError::Unreachable {
        destination: server.to_owned(),
        message: causes.join(": "),
    }
}

/// An error status as a [`FederationError`], keeping the Matrix `errcode`
/// and message when the body has them.
fn remote_error(server: &ServerName, status: StatusCode, body: &[u8]) -> FederationError {
    #[derive(serde::Deserialize)]
    struct MatrixError {
        errcode: Option<String>,
        error: Option<String>,
    }
    let parsed = serde_json::from_slice::<MatrixError>(body).ok();
    let errcode = parsed.as_ref().and_then(|p| p.errcode.clone());
    let message = parsed.and_then(|p| p.error).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        text.chars().take(200).collect()
    });
    FederationError::Remote {
        destination: server.to_owned(),
        status,
        errcode,
        message,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each section leaves its map consistent, so a panic elsewhere does not
    // make it unusable.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where to connect for a URL host, when that is not the host itself.
#[derive(Debug, Clone)]
struct Route {
    connect_host: Host,
    /// From an override: any address is allowed.
    trusted: bool,
}

/// The routes of the federation client, by URL host (the TLS name). A name
/// has one route at a time: two servers that share a TLS name but not a
/// target (rare) may reach each other's target, where the certificate
/// check still applies.
#[derive(Default)]
struct Routes(Mutex<HashMap<String, Route>>);

/// More TLS names than a small server talks to; beyond it, routes are
/// dropped (a dropped route connects to the name itself).
const MAX_ROUTES: usize = 4096;

impl Routes {
    // By lowercase name: the URL reqwest parses, and so the name its
    // resolver is asked for, is lowercased.
    fn set(&self, name: &str, route: Route) {
        let name = name.to_ascii_lowercase();
        let mut routes = lock(&self.0);
        if routes.len() >= MAX_ROUTES && !routes.contains_key(&name) {
            routes.clear();
        }
        routes.insert(name, route);
    }

    fn get(&self, name: &str) -> Option<Route> {
        lock(&self.0).get(&name.to_ascii_lowercase()).cloned()
    }
}

/// The DNS resolver of the clients: follows the routes, then refuses
/// addresses the guard does not allow (unless the route is trusted).
struct GuardedDns {
    routes: Option<Arc<Routes>>,
    guard: AddressGuard,
}

impl Resolve for GuardedDns {
    fn resolve(&self, name: Name) -> Resolving {
        let route = self.routes.as_ref().and_then(|routes| routes.get(name.as_str()));
        let guard = self.guard.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let (host, trusted) = match route {
                Some(route) => (route.connect_host, route.trusted),
                None => (Host::Name(name.clone()), false),
            };
            let found: Vec<SocketAddr> = match &host {
                Host::Ip(ip) => vec![SocketAddr::new(*ip, 0)],
                Host::Name(lookup) => tokio::net::lookup_host((lookup.as_str(), 0)).await?.collect(),
            };
            guard.usable(&host.to_string(), found, trusted)
        })
    }
}

/// Failures per destination, while they last.
struct Backoffs {
    entries: HashMap<OwnedServerName, Failures>,
    prune: PruneSchedule,
}

struct Failures {
    count: u32,
    until: Instant,
}

impl Default for Backoffs {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            prune: PruneSchedule::new(256),
        }
    }
}

/// The wait after `failures` failures in a row.
fn backoff_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    BACKOFF_START.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

impl Backoffs {
    fn remaining(&self, server: &ServerName, now: Instant) -> Option<Duration> {
        let failures = self.entries.get(server)?;
        (failures.until > now).then(|| failures.until - now)
    }

    /// Records a failure; returns the wait it starts.
    fn failed(&mut self, server: &ServerName, now: Instant) -> Duration {
        if self.prune.due(self.entries.len()) {
            // Long past their wait, entries say little: drop them.
            self.entries.retain(|_, f| f.until + BACKOFF_MAX > now);
            self.prune.pruned(self.entries.len());
        }
        let failures = self
            .entries
            .entry(server.to_owned())
            .or_insert(Failures { count: 0, until: now });
        // Requests that were under way when an earlier one failed do not
        // lengthen the wait that failure started.
        if failures.until <= now {
            failures.count += 1;
            failures.until = now + backoff_delay(failures.count);
        }
        failures.until - now
    }

    /// Forgets the failures; whether there were any.
    fn succeeded(&mut self, server: &ServerName) -> bool {
        self.entries.remove(server).is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ruma::api::federation::authentication::XMatrix;
    use ruma::api::federation::discovery::get_server_version;
    use ruma::api::federation::transactions::send_transaction_message;
    use ruma::serde::Base64;
    use ruma::{MilliSecondsSinceUnixEpoch, OwnedTransactionId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    fn name(s: &str) -> OwnedServerName {
        s.try_into().unwrap()
    }

    fn key_pair() -> Arc<Ed25519KeyPair> {
        let der = Ed25519KeyPair::generate();
        Arc::new(Ed25519KeyPair::from_der(&der, "test1".to_owned()).unwrap())
    }

    fn config(overrides: &[(&str, String)]) -> FederationConfig {
        FederationConfig {
            enabled: true,
            server_name: name("conduit-a.test"),
            destination_overrides: overrides
                .iter()
                .map(|(server, to)| (name(server), DestinationOverride::try_from(to.clone()).unwrap()))
                .collect(),
            ca_files: Vec::new(),
            skip_tls_verification: false,
            allowed_ranges: Vec::new(),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// A request as a test server received it.
    struct Received {
        request: http::Request<Vec<u8>>,
    }

    /// A plain HTTP server on a loopback port that answers every request
    /// with `status` and `body`, and hands each request to the test.
    async fn answering(status: u16, body: &'static str) -> (u16, mpsc::UnboundedReceiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let Some(request) = read_request(&mut stream).await else {
                    continue;
                };
                let _ = sender.send(Received { request });
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (port, receiver)
    }

    /// One HTTP/1.1 request with a `Content-Length` body (what reqwest sends).
    async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<http::Request<Vec<u8>>> {
        let mut buffer = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..n]);
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
        };
        let head = String::from_utf8(buffer[..head_end].to_vec()).ok()?;
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next()?.split(' ');
        let mut builder = http::Request::builder()
            .method(request_line.next()?)
            .uri(request_line.next()?);
        let mut length = 0;
        for line in lines {
            let (header, value) = line.split_once(':')?;
            if header.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
            builder = builder.header(header.trim(), value.trim());
        }
        let mut body = buffer[head_end + 4..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        builder.body(body).ok()
    }

    fn transaction() -> send_transaction_message::v1::Request {
        let mut request = send_transaction_message::v1::Request::new(
            OwnedTransactionId::from("txn1"),
            name("conduit-a.test"),
            MilliSecondsSinceUnixEpoch::now(),
        );
        let pdu = serde_json::value::to_raw_value(&serde_json::json!({"type": "m.room.message"})).unwrap();
        request.pdus.push(pdu);
        request
    }

    #[tokio::test]
    async fn a_request_arrives_signed_with_the_servers_host() {
        let (port, mut received) = answering(200, r#"{"pdus": {}}"#).await;
        let keys = key_pair();
        let client = FederationClient::new(
            &config(&[("conduit-b.test", format!("http://127.0.0.1:{port}"))]),
            keys.clone(),
        )
        .unwrap();
        let response = client.send(&name("conduit-b.test"), transaction()).await.unwrap();
        assert!(response.pdus.is_empty());

        let request = received.recv().await.unwrap().request;
        assert_eq!(request.method(), http::Method::PUT);
        assert_eq!(request.uri().path(), "/_matrix/federation/v1/send/txn1");
        assert_eq!(request.headers()[HOST], "conduit-b.test");
        let x_matrix = XMatrix::extract_from_http_headers(request.headers()).unwrap();
        assert_eq!(x_matrix.origin, "conduit-a.test");
        assert_eq!(
            x_matrix.destination.as_deref(),
            Some(<&ServerName>::try_from("conduit-b.test").unwrap())
        );
        assert_eq!(x_matrix.key.as_str(), "ed25519:test1");
        let public_keys = BTreeMap::from([(
            "conduit-a.test".to_owned(),
            BTreeMap::from([("ed25519:test1".to_owned(), Base64::new(keys.public_key().to_vec()))]),
        )]);
        x_matrix
            .verify_http_request(&request, &name("conduit-b.test"), &public_keys)
            .unwrap();
        // The signature covers the body: another body does not verify.
        let tampered = request.map(|_| br#"{"pdus": []}"#.to_vec());
        assert!(x_matrix
            .verify_http_request(&tampered, &name("conduit-b.test"), &public_keys)
            .is_err());
    }

    #[tokio::test]
    async fn unauthenticated_endpoints_go_unsigned_and_ports_stay_in_host() {
        let (port, mut received) = answering(200, r#"{"server": {"name": "Other", "version": "1.0"}}"#).await;
        let client = FederationClient::new(
            &config(&[("conduit-b.test:8448", format!("http://127.0.0.1:{port}"))]),
            key_pair(),
        )
        .unwrap();
        let response = client
            .send(&name("conduit-b.test:8448"), get_server_version::v1::Request::new())
            .await
            .unwrap();
        assert_eq!(response.server.unwrap().name.as_deref(), Some("Other"));
        let request = received.recv().await.unwrap().request;
        assert_eq!(request.headers()[HOST], "conduit-b.test:8448");
        assert!(request.headers().get(http::header::AUTHORIZATION).is_none());
    }

    #[tokio::test]
    async fn mixed_case_server_names_find_their_route() {
        let (port, mut received) = answering(200, r#"{"pdus": {}}"#).await;
        let client = FederationClient::new(
            &config(&[("Conduit-C.test", format!("http://127.0.0.1:{port}"))]),
            key_pair(),
        )
        .unwrap();
        client.send(&name("Conduit-C.test"), transaction()).await.unwrap();
        let request = received.recv().await.unwrap().request;
        assert_eq!(request.headers()[HOST], "Conduit-C.test");
    }

    /// Handlers may spawn a send on the multi-threaded runtime.
    #[allow(dead_code)]
    fn sending_is_send(client: &FederationClient) {
        fn assert_send<T: Send>(_: T) {}
        assert_send(client.send(&name("b.test"), transaction()));
        assert_send(client.send(&name("b.test"), get_server_version::v1::Request::new()));
    }

    #[tokio::test]
    async fn matrix_errors_keep_status_and_errcode() {
        let (port, _received) = answering(403, r#"{"errcode": "M_FORBIDDEN", "error": "not you"}"#).await;
        let client =
            FederationClient::new(&config(&[("b.test", format!("http://127.0.0.1:{port}"))]), key_pair()).unwrap();
        match client.send(&name("b.test"), transaction()).await {
            Err(FederationError::Remote {
                status,
                errcode,
                message,
                ..
            }) => {
                assert_eq!(status, StatusCode::FORBIDDEN);
                assert_eq!(errcode.as_deref(), Some("M_FORBIDDEN"));
                assert_eq!(message, "not you");
            }
            other => panic!("expected a Matrix error, got {other:?}"),
        }
        // A refusal is an answer: the server is up.
        assert!(!client.is_backed_off(&name("b.test")));
    }

    #[tokio::test]
    async fn server_errors_and_refused_connections_back_off_until_reset() {
        let (port, _received) = answering(502, "bad gateway").await;
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = FederationClient::new(
            &config(&[
                ("flaky.test", format!("http://127.0.0.1:{port}")),
                ("down.test", format!("http://127.0.0.1:{closed}")),
            ]),
            key_pair(),
        )
        .unwrap();
        let flaky = name("flaky.test");
        match client.send(&flaky, transaction()).await {
            Err(FederationError::Remote { status, errcode, .. }) => {
                assert_eq!(status, StatusCode::BAD_GATEWAY);
                assert_eq!(errcode, None);
            }
            other => panic!("expected a 502, got {other:?}"),
        }
        assert!(client.is_backed_off(&flaky));

        let down = name("down.test");
        let error = client.send(&down, transaction()).await.unwrap_err();
        assert!(matches!(error, FederationError::Unreachable { .. }), "{error:?}");
        assert!(client.is_backed_off(&down));
        match client.send(&down, transaction()).await {
            Err(FederationError::BackedOff { retry_in, .. }) => assert!(retry_in <= BACKOFF_START),
            other => panic!("expected a backoff, got {other:?}"),
        }
        client.reset(&down);
        assert!(!client.is_backed_off(&down));
        let error = client.send(&down, transaction()).await.unwrap_err();
        assert!(matches!(error, FederationError::Unreachable { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts, then says nothing.
        let holder = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let client = FederationClient::new(
            &config(&[("slow.test", format!("http://127.0.0.1:{port}"))]),
            key_pair(),
        )
        .unwrap();
        let error = client
            .send_with_timeout(&name("slow.test"), transaction(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(error, FederationError::Timeout { .. }), "{error:?}");
        assert!(client.is_backed_off(&name("slow.test")));
        holder.abort();
    }

    #[tokio::test]
    async fn answers_over_the_size_cap_are_refused() {
        let (port, _received) = answering(200, r#"{"pdus": {}, "padding": "0123456789"}"#).await;
        let mut config = config(&[("big.test", format!("http://127.0.0.1:{port}"))]);
        config.max_response_bytes = 16;
        let client = FederationClient::new(&config, key_pair()).unwrap();
        let error = client.send(&name("big.test"), transaction()).await.unwrap_err();
        assert!(
            matches!(error, FederationError::TooLarge { limit: 16, .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn non_public_addresses_need_an_override_or_an_allowed_range() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = FederationClient::new(&config(&[]), key_pair()).unwrap();
        for server in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
            let error = client.send(&name(&server), transaction()).await.unwrap_err();
            assert!(
                matches!(error, FederationError::Forbidden { .. }),
                "{server}: {error:?}"
            );
            assert!(!client.is_backed_off(&name(&server)));
        }
        let connected = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(connected.is_err(), "nothing may have connected");

        // Allowed, the connection is made (and then fails: the listener
        // speaks no TLS).
        let mut allowed = config(&[]);
        allowed.allowed_ranges = vec![IpRange::try_from("127.0.0.0/8".to_owned()).unwrap()];
        let client = FederationClient::new(&allowed, key_pair()).unwrap();
        let server = name(&format!("127.0.0.1:{port}"));
        let (sent, accepted) = tokio::join!(client.send(&server, transaction()), async {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        });
        let error = sent.unwrap_err();
        assert!(matches!(error, FederationError::Unreachable { .. }), "{error:?}");
        let () = accepted;
    }

    #[tokio::test]
    async fn raw_answers_come_back_unparsed_capped_and_signed_when_asked() {
        use ruma::api::federation::authenticated_media::get_content;

        let (port, mut received) = answering(200, "--B--").await;
        let client =
            FederationClient::new(&config(&[("b.test", format!("http://127.0.0.1:{port}"))]), key_pair()).unwrap();
        let server = name("b.test");
        let timeout = Duration::from_secs(5);
        let legacy = "/_matrix/media/v3/download/b.test/x?allow_remote=false";
        let answer = client.get_unsigned(&server, legacy, timeout, 100).await.unwrap();
        assert_eq!((answer.status, answer.body.as_slice()), (StatusCode::OK, &b"--B--"[..]));
        let request = received.recv().await.unwrap().request;
        assert_eq!(request.uri().path_and_query().unwrap().as_str(), legacy);
        assert_eq!(request.headers()[HOST], "b.test");
        assert!(request.headers().get(http::header::AUTHORIZATION).is_none());

        let error = client.get_unsigned(&server, legacy, timeout, 4).await.unwrap_err();
        assert!(matches!(error, FederationError::TooLarge { limit: 4, .. }), "{error:?}");

        let signed = get_content::v1::Request::new("abc".to_owned());
        let answer = client.send_raw(&server, signed, timeout, 100).await.unwrap();
        assert_eq!(answer.body, b"--B--");
        let _capped = received.recv().await.unwrap();
        let request = received.recv().await.unwrap().request;
        assert_eq!(request.uri().path(), "/_matrix/federation/v1/media/download/abc");
        let x_matrix = XMatrix::extract_from_http_headers(request.headers()).unwrap();
        assert_eq!(x_matrix.origin, "conduit-a.test");
    }

    #[tokio::test]
    async fn media_redirects_go_only_to_https_on_public_addresses() {
        let client = FederationClient::new(&config(&[]), key_pair()).unwrap();
        let sender = name("b.test");
        for url in [
            "http://example.org/x",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://10.1.2.3/x",
            "not a url",
        ] {
            let error = client
                .get_redirected(&sender, url, Duration::from_secs(1), 100)
                .await
                .unwrap_err();
            assert!(matches!(error, FederationError::Forbidden { .. }), "{url}: {error:?}");
        }
        assert!(!client.is_backed_off(&sender));
    }

    #[tokio::test]
    async fn nothing_is_sent_with_federation_off() {
        let mut off = config(&[]);
        off.enabled = false;
        let client = FederationClient::new(&off, key_pair()).unwrap();
        let error = client.send(&name("b.test"), transaction()).await.unwrap_err();
        assert!(matches!(error, FederationError::Disabled));
    }

    #[test]
    fn unreadable_or_empty_ca_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        for path in [empty, dir.path().join("missing.pem")] {
            let mut with_ca = config(&[]);
            with_ca.ca_files = vec![path];
            assert!(FederationClient::new(&with_ca, key_pair()).is_err());
        }
    }

    #[test]
    fn backoff_doubles_from_five_seconds_to_an_hour() {
        let delays: Vec<u64> = (1..=12).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]);
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);

        let mut backoffs = Backoffs::default();
        let server = name("x.test");
        let now = Instant::now();
        assert_eq!(backoffs.failed(&server, now), Duration::from_secs(5));
        // A second failure within the wait (a request already under way)
        // does not lengthen it.
        assert_eq!(
            backoffs.failed(&server, now + Duration::from_secs(1)),
            Duration::from_secs(4)
        );
        assert_eq!(
            backoffs.failed(&server, now + Duration::from_secs(5)),
            Duration::from_secs(10)
        );
        assert!(backoffs.remaining(&server, now + Duration::from_secs(14)).is_some());
        assert!(backoffs.remaining(&server, now + Duration::from_secs(15)).is_none());
        assert!(backoffs.succeeded(&server));
        assert!(!backoffs.succeeded(&server));
    }
}
