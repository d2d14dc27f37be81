//! Where another server is reached: the spec's "Resolving server names"
//! (server-server API), in its order: an IP literal, a host name with an
//! explicit port, `/.well-known/matrix/server` delegation, SRV records
//! (`_matrix-fed._tcp`, then the deprecated `_matrix._tcp`), else port 8448.
//! An operator's override skips all of it.
//!
//! The result names two hosts: the one to connect to and the one the TLS
//! certificate must be valid for. They differ after an SRV lookup (the
//! certificate is still checked for the name before the lookup, as DNS
//! alone proves nothing) and under an override. A/AAAA lookups of the
//! connect host are left to the moment of connecting, where the client
//! checks the addresses they give.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ruma::{OwnedServerName, ServerName};
use serde::Deserialize;

use crate::config::DestinationOverride;

/// The port a server listens on for federation unless told otherwise.
pub const DEFAULT_FEDERATION_PORT: u16 = 8448;

/// How long a `.well-known` answer is kept without Cache-Control, as the
/// spec recommends; and the most any answer is kept.
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// Kept at least this long even if the server says not to cache: otherwise
/// every request to it would fetch `.well-known` again first.
const WELL_KNOWN_MIN_TTL: Duration = Duration::from_secs(5 * 60);
/// A failed fetch (no file, bad JSON, unreachable) is remembered this long.
const WELL_KNOWN_FAILURE_TTL: Duration = Duration::from_secs(3600);
/// Bounds on how long an SRV answer is relied upon, whatever its DNS TTL.
const SRV_MIN_TTL: Duration = Duration::from_secs(60);
const SRV_MAX_TTL: Duration = Duration::from_secs(3600);
/// How many servers' results each cache holds; a small server talks to a
/// few hundred at most.
const CACHE_CAPACITY: usize = 2048;

/// A host: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// The host part of a server name (`[::1]` is the address `::1`).
    fn of(server: &ServerName) -> Host {
        let host = server.host();
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        match bare.parse() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(host.to_owned()),
        }
    }
}

impl fmt::Display for Host {
    /// As in a URL: IPv6 addresses in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// Where and how to send requests for one server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// HTTPS, except where an override says plain HTTP.
    pub plain_http: bool,
    /// What to connect to (a name is looked up with A/AAAA when connecting).
    pub connect_host: Host,
    pub port: u16,
    /// The `Host` header of each request.
    pub host_header: String,
    /// The name the server's certificate must be valid for, sent as SNI
    /// unless it is an IP address. Also the host of the request URL.
    pub tls_name: Host,
    /// Set by an operator override, which may name a non-public address.
    pub overridden: bool,
}

impl Destination {
    /// Connect to `host:port`, checking the certificate for `host`.
    fn direct(host: Host, port: u16, host_header: String) -> Self {
        Destination {
            plain_http: false,
            connect_host: host.clone(),
            port,
            host_header,
            tls_name: host,
            overridden: false,
        }
    }

    /// From an operator override: connect where it says, otherwise as if to
    /// the server itself (its name in `Host` and, when the server name is
    /// not an IP address, in the certificate).
    fn overridden(server: &ServerName, target: &DestinationOverride) -> Self {
        let connect_host = Host::of(&target.address);
        let tls_name = match Host::of(server) {
            // A URL with an IP address is connected to directly, so the
            // address to reach must be the URL's host.
            Host::Ip(_) => connect_host.clone(),
            name => name,
        };
        Destination {
            plain_http: target.plain_http,
            connect_host,
            port: target.address.port().unwrap_or(DEFAULT_FEDERATION_PORT),
            host_header: server.as_str().to_owned(),
            tls_name,
            overridden: true,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.plain_http { "http" } else { "https" };
        write!(f, "{scheme}://{}:{}", self.connect_host, self.port)?;
        if self.tls_name != self.connect_host {
            write!(f, " (as {})", self.tls_name)?;
        }
        Ok(())
    }
}

/// Steps 1 and 2 of the spec (and 3.1, 3.2 for a delegated name): an IP
/// literal, or a name with a port, needs no lookup. The `Host` header is
/// the name as given, port included if it has one.
pub fn without_lookups(server: &ServerName) -> Option<Destination> {
    let host = Host::of(server);
    match (&host, server.port()) {
        (Host::Ip(_), port) => Some(Destination::direct(
            host,
            port.unwrap_or(DEFAULT_FEDERATION_PORT),
            server.as_str().to_owned(),
        )),
        (Host::Name(_), Some(port)) => Some(Destination::direct(host, port, server.as_str().to_owned())),
        (Host::Name(_), None) => None,
    }
}

/// Steps 3.3–3.4 and 4–5: an SRV record for `hostname` points elsewhere,
/// but `Host` and the certificate stay `hostname`.
pub fn via_srv(hostname: &str, srv: &SrvTarget) -> Destination {
    Destination {
        connect_host: Host::Name(srv.host.clone()),
        ..Destination::direct(Host::Name(hostname.to_owned()), srv.port, hostname.to_owned())
    }
}

/// Steps 3.5 and 6: the name itself on port 8448.
pub fn on_default_port(hostname: &str) -> Destination {
    Destination::direct(
        Host::Name(hostname.to_owned()),
        DEFAULT_FEDERATION_PORT,
        hostname.to_owned(),
    )
}

/// The outcome of fetching `https://<host>/.well-known/matrix/server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WellKnownAnswer {
    /// The delegated server name (`m.server`), or why there is none.
    pub delegated: Result<OwnedServerName, String>,
    /// How long to rely on this answer.
    pub ttl: Duration,
}

impl WellKnownAnswer {
    pub fn failed(reason: impl Into<String>) -> Self {
        WellKnownAnswer {
            delegated: Err(reason.into()),
            ttl: WELL_KNOWN_FAILURE_TTL,
        }
    }

    /// From a response: its status, its `Cache-Control` header and body.
    pub fn from_response(status: u16, cache_control: Option<&str>, body: &[u8]) -> Self {
        if status != 200 {
            return Self::failed(format!("answered {status}"));
        }
        match parse_well_known(body) {
            Ok(delegated) => WellKnownAnswer {
                delegated: Ok(delegated),
                ttl: well_known_ttl(cache_control),
            },
            Err(reason) => Self::failed(reason),
        }
    }
}

/// The `m.server` of a `.well-known/matrix/server` body.
pub fn parse_well_known(body: &[u8]) -> Result<OwnedServerName, String> {
    #[derive(Deserialize)]
    struct ServerWellKnown {
        #[serde(rename = "m.server")]
        server: String,
    }
    let parsed: ServerWellKnown =
        serde_json::from_slice(body).map_err(|e| format!("not a valid server .well-known: {e}"))?;
    OwnedServerName::try_from(parsed.server.as_str())
        .map_err(|e| format!("m.server `{}` is not a server name: {e}", parsed.server))
}

/// How long to keep a successful `.well-known` answer: its `max-age` (none
/// for `no-store`/`no-cache`), 24 h without one, within 5 min to 48 h.
pub fn well_known_ttl(cache_control: Option<&str>) -> Duration {
    let mut ttl = None;
    for directive in cache_control.unwrap_or("").split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            ttl = Some(Duration::ZERO);
            break;
        }
        if let Some(value) = directive.strip_prefix("max-age=") {
            if let Ok(seconds) = value.trim_matches('"').parse::<u64>() {
                ttl = Some(Duration::from_secs(seconds));
            }
        }
    }
    ttl.unwrap_or(WELL_KNOWN_DEFAULT_TTL)
        .clamp(WELL_KNOWN_MIN_TTL, WELL_KNOWN_MAX_TTL)
}

/// The target of the SRV record chosen for a service name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub host: String,
    pub port: u16,
    /// How long the record may be relied upon.
    pub ttl: Duration,
}

/// The lookups discovery makes, apart so that tests can answer them.
pub trait Lookups: Send + Sync + 'static {
    /// Fetches `https://<hostname>/.well-known/matrix/server`.
    fn well_known(&self, hostname: &str) -> impl Future<Output = WellKnownAnswer> + Send;
    /// The SRV record for `name` (as `_matrix-fed._tcp.example.org`), if
    /// there is one; any failure counts as none.
    fn srv(&self, name: &str) -> impl Future<Output = Option<SrvTarget>> + Send;
}

/// A map whose entries expire, holding at most `capacity` of them: when
/// full, the expired go first, then those closest to expiring.
struct ExpiringMap<K, V> {
    entries: HashMap<K, (V, Instant)>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> ExpiringMap<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value.clone())
    }

    fn insert(&mut self, key: K, value: V, expires: Instant, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, e)| *e > now);
            if self.entries.len() >= self.capacity {
                let soonest = self.entries.iter().min_by_key(|(_, (_, e))| *e).map(|(k, _)| k.clone());
                if let Some(soonest) = soonest {
                    self.entries.remove(&soonest);
                }
            }
        }
        self.entries.insert(key, (value, expires));
    }

    fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }
}

/// Resolves server names to [`Destination`]s, caching the results.
pub struct ServerResolver<L> {
    lookups: L,
    overrides: BTreeMap<OwnedServerName, DestinationOverride>,
    resolved: Mutex<ExpiringMap<OwnedServerName, Destination>>,
    well_known: Mutex<ExpiringMap<String, WellKnownAnswer>>,
}

impl<L: Lookups> ServerResolver<L> {
    pub fn new(lookups: L, overrides: BTreeMap<OwnedServerName, DestinationOverride>) -> Self {
        Self {
            lookups,
            overrides,
            resolved: Mutex::new(ExpiringMap::new(CACHE_CAPACITY)),
            well_known: Mutex::new(ExpiringMap::new(CACHE_CAPACITY)),
        }
    }

    /// Where to send requests for `server`. Never fails: the last resort is
    /// the name itself on port 8448.
    pub async fn resolve(&self, server: &ServerName) -> Destination {
        if let Some(target) = self.overrides.get(server) {
            return Destination::overridden(server, target);
        }
        if let Some(destination) = without_lookups(server) {
            return destination;
        }
        let now = Instant::now();
        let key = server.to_owned();
        if let Some(cached) = lock(&self.resolved).get(&key, now) {
            return cached;
        }
        let (destination, ttl) = self.discover(server.host()).await;
        tracing::debug!(%server, %destination, "resolved a server name");
        let now = Instant::now();
        lock(&self.resolved).insert(key, destination.clone(), now + ttl, now);
        destination
    }

    /// Forgets what was found for `server` (after its address stopped
    /// answering, say), so the next request looks again.
    pub fn forget(&self, server: &ServerName) {
        lock(&self.resolved).remove(&server.to_owned());
    }

    /// Steps 3 to 6 for a host name without a port; also how long the
    /// result holds.
    async fn discover(&self, hostname: &str) -> (Destination, Duration) {
        let well_known = self.well_known(hostname).await;
        let (name, ttl) = match well_known.delegated {
            Ok(delegated) => {
                if let Some(destination) = without_lookups(&delegated) {
                    return (destination, well_known.ttl);
                }
                (delegated.host().to_owned(), well_known.ttl)
            }
            Err(reason) => {
                tracing::debug!(hostname, reason, "no .well-known delegation");
                (hostname.to_owned(), well_known.ttl)
            }
        };
        match self.srv(&name).await {
            Some(srv) => (via_srv(&name, &srv), ttl.min(srv.ttl.clamp(SRV_MIN_TTL, SRV_MAX_TTL))),
            None => (on_default_port(&name), ttl.min(SRV_MAX_TTL)),
        }
    }

    async fn well_known(&self, hostname: &str) -> WellKnownAnswer {
        let key = hostname.to_ascii_lowercase();
        if let Some(cached) = lock(&self.well_known).get(&key, Instant::now()) {
            return cached;
        }
        let answer = self.lookups.well_known(hostname).await;
        let now = Instant::now();
        lock(&self.well_known).insert(key, answer.clone(), now + answer.ttl, now);
        answer
    }

    async fn srv(&self, hostname: &str) -> Option<SrvTarget> {
        if let Some(found) = self.lookups.srv(&format!("_matrix-fed._tcp.{hostname}")).await {
            return Some(found);
        }
        self.lookups.srv(&format!("_matrix._tcp.{hostname}")).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A cache is consistent after any panic in the short sections here.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The real lookups: HTTPS for `.well-known` and the system's DNS servers
/// (from `/etc/resolv.conf`) for SRV.
pub struct NetworkLookups {
    /// Follows a few redirects; checks addresses like the federation client.
    http: reqwest::Client,
    /// Made on first use; `None` when the system has no usable DNS setup.
    dns: tokio::sync::OnceCell<Option<Arc<hickory_resolver::TokioAsyncResolver>>>,
}

/// Bounds on a `.well-known` fetch.
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);
const WELL_KNOWN_MAX_BYTES: usize = 64 * 1024;
/// The resolver's own retries can take much longer on a dead DNS server.
const SRV_TIMEOUT: Duration = Duration::from_secs(5);

impl NetworkLookups {
    /// `http` must apply the address checks (see `client.rs`).
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            dns: tokio::sync::OnceCell::new(),
        }
    }

    async fn dns(&self) -> Option<Arc<hickory_resolver::TokioAsyncResolver>> {
        self.dns
            .get_or_init(|| async {
                match hickory_resolver::TokioAsyncResolver::tokio_from_system_conf() {
                    Ok(resolver) => Some(Arc::new(resolver)),
                    Err(e) => {
                        tracing::warn!(error = %e, "no DNS configuration: SRV records are not looked up");
                        None
                    }
                }
            })
            .await
            .clone()
    }

    async fn fetch_well_known(&self, hostname: &str) -> WellKnownAnswer {
        let url = format!("https://{hostname}/.well-known/matrix/server");
        let fetch = async {
            let mut response = self.http.get(&url).send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let cache_control = response
                .headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > WELL_KNOWN_MAX_BYTES {
                    return Err(format!("larger than {WELL_KNOWN_MAX_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(WellKnownAnswer::from_response(status, cache_control.as_deref(), &body))
        };
        match tokio::time::timeout(WELL_KNOWN_TIMEOUT, fetch).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => WellKnownAnswer::failed(e),
            Err(_) => WellKnownAnswer::failed("timed out"),
        }
    }
}

impl Lookups for NetworkLookups {
    fn well_known(&self, hostname: &str) -> impl Future<Output = WellKnownAnswer> + Send {
        self.fetch_well_known(hostname)
    }

    fn srv(&self, name: &str) -> impl Future<Output = Option<SrvTarget>> + Send {
        // Fully qualified, so the system's search domains are not tried.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        async move {
            let dns = self.dns().await?;
            let lookup = match tokio::time::timeout(SRV_TIMEOUT, dns.srv_lookup(fqdn.as_str())).await {
                Ok(Ok(lookup)) => lookup,
                Ok(Err(e)) => {
                    tracing::debug!(name = %fqdn, error = %e, "no SRV record");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(name = %fqdn, "SRV lookup timed out");
                    return None;
                }
            };
            let ttl = lookup
                .as_lookup()
                .valid_until()
                .saturating_duration_since(Instant::now());
            let records: Vec<SrvRecord> = lookup
                .iter()
                .map(|srv| SrvRecord {
                    priority: srv.priority(),
                    weight: srv.weight(),
                    port: srv.port(),
                    target: srv.target().to_utf8(),
                })
                .collect();
            let chosen = choose_srv(&records, rand::random::<u32>())?;
            Some(SrvTarget {
                host: chosen.target.trim_end_matches('.').to_owned(),
                port: chosen.port,
                ttl,
            })
        }
    }
}

/// One SRV record, as looked up.
#[derive(Debug, Clone)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The record to use (RFC 2782): among those of the lowest priority, one
/// picked by weight with `roll` as the random draw. `None` when there is
/// none, or the service is declared absent (a target of ".").
pub fn choose_srv(records: &[SrvRecord], roll: u32) -> Option<&SrvRecord> {
    let usable: Vec<&SrvRecord> = records
        .iter()
        .filter(|r| !r.target.trim_end_matches('.').is_empty())
        .collect();
    let best = usable.iter().map(|r| r.priority).min()?;
    let candidates: Vec<&SrvRecord> = usable.into_iter().filter(|r| r.priority == best).collect();
    let total: u32 = candidates.iter().map(|r| u32::from(r.weight)).sum();
    if total == 0 {
        return candidates.first().copied();
    }
    let mut point = roll % total;
    for record in &candidates {
        let weight = u32::from(record.weight);
        if point < weight {
            return Some(record);
        }
        point -= weight;
    }
    candidates.last().copied()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn name(s: &str) -> OwnedServerName {
        s.try_into().unwrap()
    }

    /// Lookups answered from tables; counts the calls.
    #[derive(Default)]
    struct FakeLookups {
        well_known: HashMap<String, WellKnownAnswer>,
        srv: HashMap<String, SrvTarget>,
        well_known_calls: AtomicUsize,
        srv_calls: Mutex<Vec<String>>,
    }

    impl FakeLookups {
        fn delegate(mut self, from: &str, to: &str) -> Self {
            let answer = WellKnownAnswer {
                delegated: Ok(name(to)),
                ttl: Duration::from_secs(3600),
            };
            self.well_known.insert(from.to_owned(), answer);
            self
        }

        fn srv(mut self, service: &str, host: &str, port: u16) -> Self {
            let target = SrvTarget {
                host: host.to_owned(),
                port,
                ttl: Duration::from_secs(300),
            };
            self.srv.insert(service.to_owned(), target);
            self
        }
    }

    impl Lookups for FakeLookups {
        fn well_known(&self, hostname: &str) -> impl Future<Output = WellKnownAnswer> + Send {
            self.well_known_calls.fetch_add(1, Ordering::SeqCst);
            let answer = self
                .well_known
                .get(hostname)
                .cloned()
                .unwrap_or_else(|| WellKnownAnswer::failed("answered 404"));
            async move { answer }
        }

        fn srv(&self, name: &str) -> impl Future<Output = Option<SrvTarget>> + Send {
            lock(&self.srv_calls).push(name.to_owned());
            let found = self.srv.get(name).cloned();
            async move { found }
        }
    }

    fn resolver(lookups: FakeLookups) -> ServerResolver<FakeLookups> {
        ServerResolver::new(lookups, BTreeMap::new())
    }

    async fn resolve(resolver: &ServerResolver<FakeLookups>, server: &str) -> Destination {
        resolver.resolve(&name(server)).await
    }

    fn named(host: &str) -> Host {
        Host::Name(host.to_owned())
    }

    #[tokio::test]
    async fn ip_literals_use_the_address_and_8448_by_default() {
        let r = resolver(FakeLookups::default());
        let d = resolve(&r, "192.0.2.7").await;
        assert_eq!(d.connect_host, Host::Ip("192.0.2.7".parse().unwrap()));
        assert_eq!((d.port, d.host_header.as_str()), (8448, "192.0.2.7"));
        assert_eq!(d.tls_name, d.connect_host);
        let d = resolve(&r, "[2001:db8::1]:8000").await;
        assert_eq!(d.connect_host, Host::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!((d.port, d.host_header.as_str()), (8000, "[2001:db8::1]:8000"));
        assert_eq!(d.tls_name.to_string(), "[2001:db8::1]");
        assert_eq!(r.lookups.well_known_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_explicit_port_needs_no_lookup() {
        let r = resolver(FakeLookups::default().delegate("example.org", "elsewhere.org"));
        let d = resolve(&r, "example.org:8000").await;
        assert_eq!(
            d,
            Destination::direct(named("example.org"), 8000, "example.org:8000".to_owned())
        );
        assert_eq!(r.lookups.well_known_calls.load(Ordering::SeqCst), 0);
        assert!(lock(&r.lookups.srv_calls).is_empty());
    }

    #[tokio::test]
    async fn delegation_to_an_ip_literal_or_a_port() {
        let r = resolver(
            FakeLookups::default()
                .delegate("a.org", "198.51.100.2")
                .delegate("b.org", "matrix.b.org:443")
                .srv("_matrix-fed._tcp.matrix.b.org", "ignored.b.org", 1),
        );
        let d = resolve(&r, "a.org").await;
        assert_eq!(d.connect_host, Host::Ip("198.51.100.2".parse().unwrap()));
        assert_eq!((d.port, d.host_header.as_str()), (8448, "198.51.100.2"));
        let d = resolve(&r, "b.org").await;
        assert_eq!(d.connect_host, named("matrix.b.org"));
        assert_eq!(d.tls_name, named("matrix.b.org"));
        assert_eq!((d.port, d.host_header.as_str()), (443, "matrix.b.org:443"));
        // A delegated name with a port is used as it is: no SRV lookup.
        assert!(lock(&r.lookups.srv_calls).is_empty());
    }

    #[tokio::test]
    async fn delegation_then_srv_keeps_the_delegated_name_for_tls_and_host() {
        let r = resolver(FakeLookups::default().delegate("c.org", "matrix.c.org").srv(
            "_matrix-fed._tcp.matrix.c.org",
            "box7.hosting.net",
            8449,
        ));
        let d = resolve(&r, "c.org").await;
        assert_eq!(d.connect_host, named("box7.hosting.net"));
        assert_eq!(d.port, 8449);
        assert_eq!(d.tls_name, named("matrix.c.org"));
        assert_eq!(d.host_header, "matrix.c.org");
    }

    #[tokio::test]
    async fn the_deprecated_srv_service_is_the_fallback() {
        let r = resolver(FakeLookups::default().delegate("d.org", "matrix.d.org").srv(
            "_matrix._tcp.matrix.d.org",
            "old.d.org",
            8500,
        ));
        let d = resolve(&r, "d.org").await;
        assert_eq!((d.connect_host, d.port), (named("old.d.org"), 8500));
        assert_eq!(d.host_header, "matrix.d.org");
        assert_eq!(
            *lock(&r.lookups.srv_calls),
            vec!["_matrix-fed._tcp.matrix.d.org", "_matrix._tcp.matrix.d.org"]
        );
    }

    #[tokio::test]
    async fn delegation_without_srv_uses_8448_on_the_delegated_name() {
        let r = resolver(FakeLookups::default().delegate("e.org", "matrix.e.org"));
        assert_eq!(resolve(&r, "e.org").await, on_default_port("matrix.e.org"));
    }

    #[tokio::test]
    async fn without_well_known_srv_keeps_the_server_name_for_tls_and_host() {
        let r = resolver(FakeLookups::default().srv("_matrix-fed._tcp.f.org", "srv.f.org", 443));
        let d = resolve(&r, "f.org").await;
        assert_eq!((d.connect_host.clone(), d.port), (named("srv.f.org"), 443));
        assert_eq!(d.tls_name, named("f.org"));
        assert_eq!(d.host_header, "f.org");
    }

    #[tokio::test]
    async fn without_anything_the_name_on_8448() {
        let r = resolver(FakeLookups::default());
        assert_eq!(resolve(&r, "g.org").await, on_default_port("g.org"));
        assert_eq!(
            *lock(&r.lookups.srv_calls),
            vec!["_matrix-fed._tcp.g.org", "_matrix._tcp.g.org"]
        );
    }

    #[tokio::test]
    async fn results_and_failures_are_cached() {
        let r = resolver(FakeLookups::default().delegate("h.org", "matrix.h.org"));
        let first = resolve(&r, "h.org").await;
        assert_eq!(resolve(&r, "h.org").await, first);
        resolve(&r, "none.org").await;
        resolve(&r, "none.org").await;
        assert_eq!(r.lookups.well_known_calls.load(Ordering::SeqCst), 2);
        // Forgetting the result looks again, but the .well-known answer
        // is still within its own lifetime.
        r.forget(&name("h.org"));
        assert_eq!(resolve(&r, "h.org").await, first);
        assert_eq!(r.lookups.well_known_calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_override_skips_discovery() {
        let mut overrides = BTreeMap::new();
        let target = DestinationOverride::try_from("http://127.0.0.1:6168".to_owned()).unwrap();
        overrides.insert(name("conduit-a.test"), target);
        let tls = DestinationOverride::try_from("10.0.0.5:8448".to_owned()).unwrap();
        overrides.insert(name("conduit-b.test:9000"), tls);
        let r = ServerResolver::new(FakeLookups::default().delegate("conduit-a.test", "x.test"), overrides);
        let d = resolve(&r, "conduit-a.test").await;
        assert!(d.plain_http && d.overridden);
        assert_eq!((d.connect_host.to_string(), d.port), ("127.0.0.1".to_owned(), 6168));
        assert_eq!(d.host_header, "conduit-a.test");
        assert_eq!(d.tls_name, named("conduit-a.test"));
        let d = resolve(&r, "conduit-b.test:9000").await;
        assert!(!d.plain_http);
        assert_eq!((d.connect_host.to_string(), d.port), ("10.0.0.5".to_owned(), 8448));
        assert_eq!(d.host_header, "conduit-b.test:9000");
        assert_eq!(d.tls_name, named("conduit-b.test"));
        assert_eq!(r.lookups.well_known_calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn well_known_bodies_are_parsed() {
        assert_eq!(
            parse_well_known(br#"{"m.server": "matrix.example.org:443"}"#).unwrap(),
            name("matrix.example.org:443")
        );
        assert_eq!(
            parse_well_known(br#"{"m.server": "[::1]", "other": 1}"#).unwrap(),
            name("[::1]")
        );
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"m.server": 5}"#,
            br#"{"m.server": "https://x.org/"}"#,
            br#"{"m.server": ""}"#,
        ] {
            assert!(parse_well_known(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let ok = WellKnownAnswer::from_response(200, Some("max-age=7200"), br#"{"m.server":"a.org"}"#);
        assert_eq!(ok.delegated, Ok(name("a.org")));
        assert_eq!(ok.ttl, Duration::from_secs(7200));
        let missing = WellKnownAnswer::from_response(404, None, br#"{"m.server":"a.org"}"#);
        assert!(missing.delegated.is_err());
        assert_eq!(missing.ttl, WELL_KNOWN_FAILURE_TTL);
        let invalid = WellKnownAnswer::from_response(200, Some("max-age=7200"), b"{");
        assert_eq!(invalid.ttl, WELL_KNOWN_FAILURE_TTL);
    }

    #[test]
    fn cache_control_sets_the_lifetime_within_bounds() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(well_known_ttl(None), hours(24));
        assert_eq!(well_known_ttl(Some("max-age=3600")), hours(1));
        assert_eq!(well_known_ttl(Some("public, Max-Age=\"7200\"")), hours(2));
        assert_eq!(well_known_ttl(Some("max-age=9999999")), hours(48));
        assert_eq!(well_known_ttl(Some("max-age=0")), WELL_KNOWN_MIN_TTL);
        assert_eq!(well_known_ttl(Some("no-store")), WELL_KNOWN_MIN_TTL);
        assert_eq!(well_known_ttl(Some("max-age=soon")), hours(24));
    }

    #[test]
    fn srv_records_are_chosen_by_priority_then_weight() {
        let record = |priority, weight, target: &str| SrvRecord {
            priority,
            weight,
            port: 8448,
            target: target.to_owned(),
        };
        let records = [
            record(20, 100, "backup."),
            record(10, 1, "small."),
            record(10, 3, "big."),
        ];
        assert_eq!(choose_srv(&records, 0).unwrap().target, "small.");
        assert_eq!(choose_srv(&records, 1).unwrap().target, "big.");
        assert_eq!(choose_srv(&records, 7).unwrap().target, "big.");
        let zero = [record(5, 0, "a."), record(5, 0, "b.")];
        assert_eq!(choose_srv(&zero, 123).unwrap().target, "a.");
        assert!(choose_srv(&[record(0, 0, ".")], 0).is_none());
        assert!(choose_srv(&[], 0).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let now = Instant::now();
        let mut map = ExpiringMap::new(2);
        map.insert("old", 1, now + Duration::from_secs(1), now);
        map.insert("new", 2, now + Duration::from_secs(60), now);
        map.insert("newer", 3, now + Duration::from_secs(90), now);
        assert_eq!(map.entries.len(), 2);
        assert_eq!(map.get(&"old", now), None);
        assert_eq!(map.get(&"newer", now), Some(3));
        assert_eq!(map.get(&"new", now + Duration::from_secs(61)), None);
    }
}
