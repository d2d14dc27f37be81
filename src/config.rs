//! The server's configuration: a TOML file with a `[global]` table whose keys
//! mean what upstream Conduit's keys mean, each overridable by `CONDUIT_<KEY>`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ruma::{OwnedServerName, RoomVersionId};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The name in every user ID (`@alice:<server_name>`); never change it later.
    #[serde(default = "defaults::server_name")]
    pub server_name: OwnedServerName,
    #[serde(default = "defaults::database_backend")]
    pub database_backend: String,
    #[serde(default = "defaults::database_path")]
    pub database_path: PathBuf,
    #[serde(default = "defaults::address")]
    pub address: IpAddr,
    #[serde(default = "defaults::port")]
    pub port: u16,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// More listeners besides `address`/`port`/`tls` (which is always the
    /// first); each serves everything, client and federation API alike.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default = "defaults::max_request_size")]
    pub max_request_size: u32,
    #[serde(default = "defaults::yes")]
    pub allow_registration: bool,
    /// A registration token that never runs out (besides those made with
    /// the admin API or `conduit token create`); setting it makes
    /// registration need a token.
    #[serde(default)]
    pub registration_token: Option<String>,
    /// Synapse's key: with it, `/_synapse/admin/v1/register` creates
    /// accounts for whoever knows it (HMAC of a nonce), even with
    /// registration closed. Unset: that endpoint is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_shared_secret: Option<String>,
    /// Whether registration needs a token (Synapse's name): the config's
    /// `registration_token` or one made with the admin API or `conduit
    /// token create`.
    #[serde(default)]
    pub registration_requires_token: bool,
    /// Whether `register?kind=guest` makes guest accounts (read
    /// world-readable rooms, join rooms that let guests in, upgrade later).
    #[serde(default)]
    pub allow_guest_access: bool,
    /// Whether the user directory lists every local user, rather than only
    /// those who share a room with the searcher or sit in a public room.
    #[serde(default)]
    pub user_directory_search_all_users: bool,
    #[serde(default)]
    pub allow_federation: bool,
    #[serde(default = "defaults::trusted_servers")]
    pub trusted_servers: Vec<OwnedServerName>,
    /// Where to reach some servers instead of what server discovery finds
    /// (tests, servers on the same network): server name → address.
    #[serde(default)]
    pub federation_destination_overrides: BTreeMap<OwnedServerName, DestinationOverride>,
    /// PEM files of certificate authorities trusted for federation besides
    /// the built-in public ones.
    #[serde(default)]
    pub federation_ca_files: Vec<PathBuf>,
    /// Accept any certificate from other servers. Only for tests.
    #[serde(default)]
    pub federation_skip_tls_verification: bool,
    /// Address ranges other servers may be reached at although they are not
    /// public (loopback, private, link-local, ...), e.g. `["10.0.0.0/8"]`.
    #[serde(default)]
    pub federation_allowed_ranges: Vec<IpRange>,
    /// Seconds a request to another server may take, answer included.
    #[serde(default = "defaults::federation_request_timeout")]
    pub federation_request_timeout: u64,
    /// Jobs for other servers (signature checks, authorizing and storing
    /// their events) running at once; more wait their turn.
    #[serde(default = "defaults::federation_workers")]
    pub federation_workers: usize,
    #[serde(default = "defaults::log")]
    pub log: String,
    #[serde(default)]
    pub well_known: WellKnown,
    /// Memory the server aims to stay under, in MiB: the block cache,
    /// memtables and in-memory caches are sized from it (see
    /// `service::memory`).
    #[serde(default = "defaults::memory_budget_mb")]
    pub memory_budget_mb: u64,
    /// Overrides the block cache's share of `memory_budget_mb`.
    #[serde(default)]
    pub db_cache_capacity_mb: Option<f64>,
    #[serde(default = "defaults::rocksdb_max_open_files")]
    pub rocksdb_max_open_files: i32,
    /// fsync every acknowledged write (turning it off trades durability of the
    /// last moments before a power cut for write speed).
    #[serde(default = "defaults::yes")]
    pub sync_writes: bool,
    #[serde(default = "defaults::argon2_memory_kib")]
    pub argon2_memory_kib: u32,
    #[serde(default = "defaults::argon2_iterations")]
    pub argon2_iterations: u32,
    #[serde(default = "defaults::argon2_parallelism")]
    pub argon2_parallelism: u32,
    /// Password checks (logins, registrations) that may wait for the one
    /// hashing thread; more at once are answered 429 with a retry time.
    #[serde(default = "defaults::password_checks_waiting")]
    pub password_checks_waiting: usize,
    #[serde(default = "defaults::yes")]
    pub allow_encryption: bool,
    #[serde(default = "defaults::yes")]
    pub allow_room_creation: bool,
    #[serde(default = "defaults::yes")]
    pub allow_unstable_room_versions: bool,
    #[serde(default = "defaults::default_room_version")]
    pub default_room_version: RoomVersionId,
    /// The most to-device messages (encryption key shares, verification
    /// steps) waiting for one device; sends beyond it are refused.
    #[serde(default = "defaults::max_to_device_queue")]
    pub max_to_device_queue: usize,
    /// Media uploaded before this time stays readable through the old,
    /// unauthenticated `/_matrix/media/v3/download` and `/thumbnail`; newer
    /// media only through the authenticated endpoints. Unset: none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_media_cutover: Option<PointInTime>,
    /// How many `/create`d media IDs one user may have waiting for content.
    #[serde(default = "defaults::max_pending_media_uploads")]
    pub max_pending_media_uploads: usize,
    /// Whether `/preview_url` fetches pages for clients.
    #[serde(default)]
    pub url_preview_enabled: bool,
    /// Address ranges URL previews may reach although they are not public
    /// (loopback, private, link-local, ...), e.g. `["192.168.1.0/24"]`.
    #[serde(default)]
    pub url_preview_allowed_ranges: Vec<IpRange>,
    /// Likewise for push gateways (users choose their URLs), e.g. a
    /// Sygnal on the same machine: `["127.0.0.1/32"]`.
    #[serde(default)]
    pub push_gateway_allowed_ranges: Vec<IpRange>,
    /// Seconds a push notification may wait for its push gateway; one not
    /// delivered by then is dropped rather than delivered stale.
    #[serde(default = "defaults::push_notification_max_age")]
    pub push_notification_max_age: u64,
    /// Where Prometheus metrics are served (e.g. `127.0.0.1:9090`), on a
    /// listener of their own; unset: no metrics are kept or served.
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The path of the metrics on that listener.
    #[serde(default = "defaults::metrics_path")]
    pub metrics_path: String,
    /// Where online backups go (the database, incrementally, and the media
    /// files); unset: no scheduled backups, and `conduit backup` needs it.
    #[serde(default)]
    pub backup_directory: Option<PathBuf>,
    /// Hours between scheduled backups; 0 takes them only on demand.
    #[serde(default = "defaults::backup_interval_hours")]
    pub backup_interval_hours: u64,
    /// Database backups kept in `backup_directory`, the oldest dropped first.
    #[serde(default = "defaults::backups_kept")]
    pub backups_kept: usize,
    /// Seconds an OpenID token (for widgets, Element Call) stays valid.
    #[serde(default = "defaults::openid_token_ttl")]
    pub openid_token_ttl: u64,
    /// TURN servers handed to clients for calls
    /// (`["turn:turn.example.org?transport=udp"]`); none: no TURN.
    #[serde(default)]
    pub turn_uris: Vec<String>,
    /// coturn's `static-auth-secret`: credentials are made per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_secret: Option<String>,
    /// A fixed TURN user name and password, when there is no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_password: Option<String>,
    /// Seconds TURN credentials are valid.
    #[serde(default = "defaults::turn_ttl")]
    pub turn_ttl: u64,

    /// Limits on how fast one user (or address) may send, join, log in,
    /// register, upload and ask for validation tokens.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` header names
    /// the client (addresses or CIDR ranges); any other peer's header is
    /// ignored, so a client reaching the server directly cannot choose its
    /// own address for the per-address limits. Default: loopback.
    #[serde(default = "defaults::trusted_proxies")]
    pub trusted_proxies: Vec<IpRange>,

    /// Appservice registration files (YAML), loaded at every start
    /// (Synapse's key); `conduit appservice register` adds more.
    #[serde(default)]
    pub app_service_config_files: Vec<PathBuf>,

    // Keys of upstream Conduit's file that this build accepts, so an
    // operator's file keeps working, but does not act on (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_check_for_updates: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_lightning_bolt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conduit_cache_capacity_modifier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdu_cache_capacity: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_second_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fetch_prev_events: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency_password: Option<String>,
}

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare
/// address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpRange {
    pub network: IpAddr,
    pub prefix: u8,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_match(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    net[..full] == ip[..full] && (rest == 0 || (net[full] ^ ip[full]) >> (8 - rest) == 0)
}

impl TryFrom<String> for IpRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.as_str(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| format!("`{text}` is not an address range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix must be 0 to {max}"))?,
            None => max,
        };
        Ok(IpRange { network, prefix })
    }
}

impl From<IpRange> for String {
    fn from(range: IpRange) -> String {
        format!("{}/{}", range.network, range.prefix)
    }
}

/// Where to reach one server, bypassing server discovery: `host:port` or
/// `https://host:port` (HTTPS, the certificate checked for the server's own
/// name) or `http://host:port` (plain HTTP, for tests). The host may be a
/// name or an IP address (`[::1]` for IPv6); the port is required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct DestinationOverride {
    pub plain_http: bool,
    /// The host and port, in server-name syntax.
    pub address: OwnedServerName,
}

impl TryFrom<String> for DestinationOverride {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let (plain_http, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (true, rest)
        } else {
            (false, text.strip_prefix("https://").unwrap_or(&text))
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let address = OwnedServerName::try_from(rest)
            .ok()
            .filter(|a| a.port().is_some())
            .ok_or_else(|| format!("`{text}` is not host:port, https://host:port or http://host:port"))?;
        Ok(DestinationOverride { plain_http, address })
    }
}

impl From<DestinationOverride> for String {
    fn from(value: DestinationOverride) -> String {
        let scheme = if value.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", value.address)
    }
}

/// A date or date-time (`2024-09-01`, `2024-09-01T12:00:00Z`), as a TOML
/// date-time or a string; UTC unless an offset is given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct PointInTime {
    text: String,
    /// Milliseconds since the Unix epoch.
    pub ms: u64,
}

impl TryFrom<String> for PointInTime {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse::<toml::value::Datetime>()
            .ok()
            .and_then(|t| datetime_ms(&t))
            .map(|ms| PointInTime { text: text.clone(), ms })
            .ok_or_else(|| format!("`{text}` is not a date from 1970 on, such as 2024-09-01 or 2024-09-01T00:00:00Z"))
    }
}

impl From<PointInTime> for String {
    fn from(time: PointInTime) -> String {
        time.text
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain.
    pub certs: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

/// One `[[global.listeners]]` entry: an address and port to serve on, with
/// HTTPS when `tls` is given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl ListenerConfig {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// Whether the two cannot both be bound: the same port (0, a free port
    /// picked at bind time, never clashes) and the same address, or a
    /// wildcard address covering the other (`0.0.0.0` covers IPv4; `::`
    /// covers IPv6 and, dual-stack as Linux binds it by default, IPv4 too).
    fn overlaps(&self, other: &ListenerConfig) -> bool {
        let covers = |a: IpAddr, b: IpAddr| a.is_unspecified() && (a.is_ipv6() || b.is_ipv4());
        self.port != 0
            && self.port == other.port
            && (self.address == other.address
                || covers(self.address, other.address)
                || covers(other.address, self.address))
    }
}

/// `[global.rate_limits]`: a token bucket per user (per address for
/// login, registration and validation tokens) and class of request, and
/// the lockout of an account after wrong passwords. The defaults let a
/// family chat, share photo albums and set up accounts without ever
/// meeting them, and stop a runaway script within seconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub enabled: bool,
    /// Server admins are never limited (wrong passwords still lock).
    pub exempt_admins: bool,
    /// Messages, state events and redactions.
    pub message: RateLimit,
    /// Joins, invites and knocks.
    pub join: RateLimit,
    /// Login attempts from one address.
    pub login: RateLimit,
    /// Registration requests from one address (each account takes two or
    /// three: the first one only asks which steps to take).
    pub register: RateLimit,
    /// Media uploads (`/upload`, `/create`).
    pub media_upload: RateLimit,
    /// Validation token requests for email addresses and phone numbers.
    pub threepid: RateLimit,
    /// Wrong passwords in a row for one account before it is locked.
    pub failed_logins: u32,
    /// Seconds of the first lock; each further wrong password doubles it.
    pub failed_login_lockout: f64,
    /// The longest lock, in seconds; a count of wrong passwords is
    /// forgotten this long after the last one.
    pub failed_login_lockout_max: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        let limit = |per_second, burst| RateLimit { per_second, burst };
        RateLimits {
            enabled: true,
            exempt_admins: true,
            message: limit(1.0, 30),
            join: limit(0.2, 20),
            login: limit(0.2, 10),
            register: limit(0.1, 20),
            media_upload: limit(1.0, 50),
            threepid: limit(0.01, 5),
            failed_logins: 5,
            failed_login_lockout: 30.0,
            failed_login_lockout_max: 900.0,
        }
    }
}

/// One bucket: `burst` requests at once, then `per_second` on average.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WellKnown {
    /// Base URL clients should use, served at `/.well-known/matrix/client`.
    pub client: Option<String>,
    /// `host:port` other servers should use, served at `/.well-known/matrix/server`.
    pub server: Option<OwnedServerName>,
}

mod defaults {
    use super::*;

    pub fn server_name() -> OwnedServerName {
        "localhost".try_into().expect("valid server name")
    }
    pub fn database_backend() -> String {
        "rocksdb".to_owned()
    }
    pub fn database_path() -> PathBuf {
        PathBuf::from("./conduit-data")
    }
    pub fn address() -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
    /// A reverse proxy on the same machine, as `docs/deploying.md` sets up.
    pub fn trusted_proxies() -> Vec<IpRange> {
        ["127.0.0.0/8", "::1"]
            .into_iter()
            .map(|range| IpRange::try_from(range.to_owned()).expect("valid range"))
            .collect()
    }
    pub fn port() -> u16 {
        6167
    }
    pub fn max_request_size() -> u32 {
        20 * 1024 * 1024
    }
    pub fn max_to_device_queue() -> usize {
        10_000
    }
    pub fn max_pending_media_uploads() -> usize {
        5
    }
    pub fn yes() -> bool {
        true
    }
    pub fn trusted_servers() -> Vec<OwnedServerName> {
        vec!["matrix.org".try_into().expect("valid server name")]
    }
    pub fn log() -> String {
        "warn,conduit=info".to_owned()
    }
    /// Sized for a Raspberry Pi shared with other services.
    pub fn memory_budget_mb() -> u64 {
        256
    }
    pub fn rocksdb_max_open_files() -> i32 {
        256
    }
    /// OWASP's lowest-memory argon2id setting (7 MiB, 5 passes), which it
    /// rates as strong as 19 MiB with 2 passes for about the same CPU time:
    /// memory is what a small server has least of.
    pub fn argon2_memory_kib() -> u32 {
        7 * 1024
    }
    pub fn argon2_iterations() -> u32 {
        5
    }
    pub fn argon2_parallelism() -> u32 {
        1
    }
    pub fn password_checks_waiting() -> usize {
        4
    }
    pub fn openid_token_ttl() -> u64 {
        3600
    }
    pub fn metrics_path() -> String {
        "/metrics".to_owned()
    }
    pub fn backup_interval_hours() -> u64 {
        24
    }
    pub fn backups_kept() -> usize {
        7
    }
    pub fn push_notification_max_age() -> u64 {
        86_400
    }
    pub fn turn_ttl() -> u64 {
        86_400
    }
    pub fn federation_request_timeout() -> u64 {
        30
    }
    pub fn federation_workers() -> usize {
        2
    }
    pub fn default_room_version() -> RoomVersionId {
        RoomVersionId::V11
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_table(toml::Table::new()).expect("the defaults are a valid config")
    }
}

impl Config {
    /// Reads `path` (or nothing: all defaults), then applies `CONDUIT_*`
    /// overrides from `env`.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        Self::load_noting_ignored(path, env).map(|(config, _)| config)
    }

    /// As [`Config::load`]; also returns the names of `CONDUIT_*` variables
    /// that name no config key, which are left out. A service manager, a
    /// container or a wrapper script may set such a variable for its own
    /// use: start-up must not fail on it (an unknown key in the file,
    /// written for this server, still does).
    pub fn load_noting_ignored(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let mut global = match path {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: shown.clone(),
                    source,
                })?;
                let mut file: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: shown,
                    message: one_line(e.message()),
                })?;
                let global = match file.remove("global") {
                    Some(toml::Value::Table(t)) => t,
                    Some(_) => return Err(key_error("global", "must be a table")),
                    None => toml::Table::new(),
                };
                if let Some(other) = file.keys().next() {
                    return Err(key_error(other, "unknown top-level key (settings belong in [global])"));
                }
                global
            }
            None => toml::Table::new(),
        };
        let mut ignored = Vec::new();
        for (name, raw) in env {
            let Some(path) = env_key_path(&name) else {
                continue;
            };
            // Alone in an otherwise empty config, a variable for a key this
            // build does not have is the only unknown field.
            let mut alone = toml::Table::new();
            set_path(&mut alone, &path, env_value(&raw));
            let unknown = matches!(
                Self::from_table(alone),
                Err(ConfigError::Key { message, .. }) if message.starts_with("unknown field")
            );
            if unknown {
                ignored.push(name);
            } else {
                set_path(&mut global, &path, env_value(&raw));
            }
        }
        Ok((Self::from_table(global)?, ignored))
    }

    fn from_table(global: toml::Table) -> Result<Self, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(global)).map_err(|e| {
            let path = e.path().to_string();
            let full = one_line(&e.inner().to_string());
            // serde lists every valid key after this; the key itself is enough.
            let message = full.split(", expected one of").next().unwrap_or(&full).to_owned();
            // The path names the key; at the top level only the message does.
            let key = match (path.as_str(), unknown_field_name(&message)) {
                (".", Some(field)) => field.to_owned(),
                _ => path,
            };
            key_error(&key, &message)
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.database_backend != "rocksdb" {
            return Err(key_error("database_backend", "only \"rocksdb\" is supported"));
        }
        if self.db_cache_capacity_mb.is_some_and(|mb| mb.is_nan() || mb <= 0.0) {
            return Err(key_error("db_cache_capacity_mb", "must be greater than 0"));
        }
        if self.memory_budget_mb < MIN_MEMORY_BUDGET_MB {
            return Err(key_error(
                "memory_budget_mb",
                &format!("must be at least {MIN_MEMORY_BUDGET_MB}"),
            ));
        }
        if self.password_checks_waiting == 0 {
            return Err(key_error("password_checks_waiting", "must be greater than 0"));
        }
        if self.max_to_device_queue == 0 {
            return Err(key_error("max_to_device_queue", "must be greater than 0"));
        }
        if self.max_request_size < 1024 {
            return Err(key_error("max_request_size", "must be at least 1024 bytes"));
        }
        if argon2::Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        )
        .is_err()
        {
            return Err(key_error(
                "argon2_memory_kib",
                "argon2 parameters out of range (memory ≥ 8 × parallelism KiB, iterations ≥ 1)",
            ));
        }
        if self.federation_request_timeout == 0 {
            return Err(key_error("federation_request_timeout", "must be greater than 0"));
        }
        if self.federation_workers == 0 {
            return Err(key_error("federation_workers", "must be greater than 0"));
        }
        if !self.metrics_path.starts_with('/') {
            return Err(key_error("metrics_path", "must start with /"));
        }
        if self.backups_kept == 0 {
            return Err(key_error("backups_kept", "must be greater than 0"));
        }
        if self.push_notification_max_age == 0 {
            return Err(key_error("push_notification_max_age", "must be greater than 0"));
        }
        if matches!(&self.turn_secret, Some(s) if s.is_empty()) {
            return Err(key_error(
                "turn_secret",
                "must not be empty (leave it out for no secret)",
            ));
        }
        if matches!(&self.registration_shared_secret, Some(s) if s.is_empty()) {
            return Err(key_error(
                "registration_shared_secret",
                "must not be empty (leave it out to turn shared-secret registration off)",
            ));
        }
        if matches!(&self.registration_token, Some(t) if t.is_empty()) {
            return Err(key_error(
                "registration_token",
                "must not be empty (leave it out to need no token)",
            ));
        }
        self.validate_rate_limits()?;
        self.validate_listeners()
    }

    fn validate_rate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.rate_limits;
        let classes = [
            ("message", limits.message),
            ("join", limits.join),
            ("login", limits.login),
            ("register", limits.register),
            ("media_upload", limits.media_upload),
            ("threepid", limits.threepid),
        ];
        for (name, limit) in classes {
            if !(limit.per_second.is_finite() && limit.per_second > 0.0) {
                return Err(key_error(
                    &format!("rate_limits.{name}.per_second"),
                    "must be greater than 0",
                ));
            }
            if limit.burst == 0 {
                return Err(key_error(&format!("rate_limits.{name}.burst"), "must be at least 1"));
            }
        }
        if limits.failed_logins == 0 {
            return Err(key_error("rate_limits.failed_logins", "must be at least 1"));
        }
        if !(limits.failed_login_lockout.is_finite() && limits.failed_login_lockout > 0.0) {
            return Err(key_error("rate_limits.failed_login_lockout", "must be greater than 0"));
        }
        if !(limits.failed_login_lockout_max.is_finite()
            && limits.failed_login_lockout_max >= limits.failed_login_lockout)
        {
            return Err(key_error(
                "rate_limits.failed_login_lockout_max",
                "must be at least failed_login_lockout",
            ));
        }
        Ok(())
    }

    /// Refuses a listener that the socket of an earlier one would already
    /// hold: binding it would fail at start with a less clear error.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let all = self.all_listeners();
        for (i, listener) in all.iter().enumerate().skip(1) {
            if let Some(earlier) = all[..i].iter().position(|e| e.overlaps(listener)) {
                let earlier = match earlier {
                    0 => "address/port".to_owned(),
                    n => format!("listeners[{}]", n - 1),
                };
                return Err(key_error(
                    &format!("listeners[{}]", i - 1),
                    &format!("{} overlaps the listener of {earlier}", listener.socket_addr()),
                ));
            }
        }
        Ok(())
    }

    /// Every listener: the one of `address`/`port`/`tls` first, then
    /// `listeners` in order.
    pub fn all_listeners(&self) -> Vec<ListenerConfig> {
        let first = ListenerConfig {
            address: self.address,
            port: self.port,
            tls: self.tls.clone(),
        };
        std::iter::once(first).chain(self.listeners.iter().cloned()).collect()
    }

    /// `legacy_media_cutover` in milliseconds since the Unix epoch.
    pub fn legacy_media_cutover_ms(&self) -> Option<u64> {
        self.legacy_media_cutover.as_ref().map(|t| t.ms)
    }

    /// The effective config as a TOML document.
    pub fn to_toml(&self) -> String {
        let mut doc = BTreeMap::new();
        doc.insert("global", self);
        toml::to_string_pretty(&doc).expect("config serializes")
    }
}

/// A TOML date or date-time as milliseconds since the Unix epoch (UTC when
/// no offset is given).
fn datetime_ms(value: &toml::value::Datetime) -> Option<u64> {
    let date = value.date?;
    let (y, m, d) = (i64::from(date.year), i64::from(date.month), i64::from(date.day));
    // Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar.
    let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (m - 3) + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let mut seconds = days * 86_400;
    if let Some(time) = value.time {
        seconds += i64::from(time.hour) * 3600 + i64::from(time.minute) * 60 + i64::from(time.second);
    }
    if let Some(toml::value::Offset::Custom { minutes }) = value.offset {
        seconds -= i64::from(minutes) * 60;
    }
    let millis = seconds * 1000 + value.time.map_or(0, |t| i64::from(t.nanosecond / 1_000_000));
    u64::try_from(millis).ok()
}

/// Smallest `memory_budget_mb` accepted: below it the engine's own floor
/// (tables, threads, the binary) leaves nothing to divide.
pub const MIN_MEMORY_BUDGET_MB: u64 = 32;

fn key_error(key: &str, message: &str) -> ConfigError {
    ConfigError::Key {
        key: key.to_owned(),
        message: message.to_owned(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// The key a `CONDUIT_*` variable sets: `CONDUIT_PORT` sets `port`,
/// `CONDUIT_WELL_KNOWN__CLIENT` sets `well_known.client`. `None` for other
/// variables and for `CONDUIT_CONFIG` (the config file's path).
fn env_key_path(name: &str) -> Option<Vec<String>> {
    let key = name.strip_prefix("CONDUIT_")?;
    if key == "CONFIG" || key.is_empty() {
        return None;
    }
    Some(key.to_ascii_lowercase().split("__").map(str::to_owned).collect())
}

/// A variable's value: as TOML if it parses as such (number, bool,
/// array), else as a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Sets the key at `path` (tables made on the way) to `value`.
fn set_path(global: &mut toml::Table, path: &[String], value: toml::Value) {
    let mut table = global;
    for part in &path[..path.len() - 1] {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        table = entry.as_table_mut().expect("just made a table");
    }
    table.insert(path[path.len() - 1].clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conduit.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn key_of(err: ConfigError) -> String {
        match err {
            ConfigError::Key { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn defaults_work_without_a_file() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.server_name.as_str(), "localhost");
        assert_eq!(c.port, 6167);
        assert_eq!(c.address.to_string(), "127.0.0.1");
        assert!(c.allow_registration);
        assert_eq!(c.database_path, PathBuf::from("./conduit-data"));
    }

    #[test]
    fn upstream_style_file_is_read() {
        let c = load_str(
            "[global]\nserver_name = \"example.org\"\ndatabase_path = \"/var/lib/matrix-conduit/\"\ndatabase_backend = \"rocksdb\"\nport = 6167\nmax_request_size = 20_000_000\nallow_registration = false\nallow_federation = true\nallow_check_for_updates = true\ntrusted_servers = [\"matrix.org\"]\naddress = \"127.0.0.1\"\n[global.well_known]\nclient = \"https://matrix.example.org\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.server_name.as_str(), "example.org");
        assert!(!c.allow_registration);
        assert_eq!(c.well_known.client.as_deref(), Some("https://matrix.example.org"));
    }

    #[test]
    fn env_overrides_file() {
        let c = load_str(
            "[global]\nport = 1\n",
            &[
                ("CONDUIT_PORT", "8008"),
                ("CONDUIT_SERVER_NAME", "env.example"),
                ("CONDUIT_WELL_KNOWN__SERVER", "m.env.example:443"),
                ("CONDUIT_CONFIG", "ignored"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.port, 8008);
        assert_eq!(c.server_name.as_str(), "env.example");
        assert_eq!(
            c.well_known.server.as_ref().map(|s| s.as_str()),
            Some("m.env.example:443")
        );
    }

    #[test]
    fn unknown_key_is_named() {
        assert_eq!(key_of(load_str("[global]\nprot = 8008\n", &[]).unwrap_err()), "prot");
        assert_eq!(
            key_of(load_str("[global.well_known]\nclinet = \"x\"\n", &[]).unwrap_err()),
            "well_known.clinet"
        );
        assert_eq!(key_of(load_str("[other]\nx = 1\n", &[]).unwrap_err()), "other");
    }

    #[test]
    fn variables_naming_no_key_are_left_out_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conduit.toml");
        std::fs::write(&path, "[global]\nport = 1\n").unwrap();
        let env = [
            ("CONDUIT_NOT_A_KEY", "1"),
            ("CONDUIT_WELL_KNOWN__NOPE", "x"),
            ("CONDUIT_PORT", "8008"),
        ];
        let (config, ignored) =
            Config::load_noting_ignored(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        assert_eq!(config.port, 8008);
        assert_eq!(ignored, vec!["CONDUIT_NOT_A_KEY", "CONDUIT_WELL_KNOWN__NOPE"]);
        // A variable for a real key with a bad value still stops start-up.
        assert_eq!(
            key_of(load_str("", &[("CONDUIT_PORT", "not a port")]).unwrap_err()),
            "port"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        assert_eq!(
            key_of(load_str("[global]\nport = \"eighty\"\n", &[]).unwrap_err()),
            "port"
        );
        assert_eq!(
            key_of(load_str("[global]\nallow_registration = 3\n", &[]).unwrap_err()),
            "allow_registration"
        );
        assert_eq!(key_of(load_str("", &[("CONDUIT_PORT", "99999")]).unwrap_err()), "port");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let loopback = |c: &Config, address: &str| {
            c.trusted_proxies
                .iter()
                .any(|range| range.contains(address.parse().unwrap()))
        };
        let defaults = Config::load(None, Vec::new()).unwrap();
        assert!(loopback(&defaults, "127.0.0.1") && loopback(&defaults, "127.1.2.3") && loopback(&defaults, "::1"));
        assert!(!loopback(&defaults, "10.0.0.1"));
        let c = load_str("[global]\ntrusted_proxies = [\"10.1.2.3/16\", \"fd00::7\"]\n", &[]).unwrap();
        assert!(loopback(&c, "10.1.200.1") && loopback(&c, "fd00::7"));
        assert!(!loopback(&c, "10.2.0.1") && !loopback(&c, "fd00::8") && !loopback(&c, "127.0.0.1"));
        let none = load_str("[global]\ntrusted_proxies = []\n", &[]).unwrap();
        assert!(none.trusted_proxies.is_empty());
        for bad in ["\"localhost\"", "\"10.0.0.0/33\"", "\"\""] {
            let text = format!("[global]\ntrusted_proxies = [{bad}]\n");
            assert_eq!(key_of(load_str(&text, &[]).unwrap_err()), "trusted_proxies[0]", "{bad}");
        }
    }

    #[test]
    fn invalid_server_name_is_named() {
        assert_eq!(
            key_of(load_str("[global]\nserver_name = \"not a name!\"\n", &[]).unwrap_err()),
            "server_name"
        );
        let bad_delegation = load_str("[global.well_known]\nserver = \"https://x/\"\n", &[]).unwrap_err();
        assert_eq!(key_of(bad_delegation), "well_known.server");
    }

    #[test]
    fn password_queue_bound_is_read_and_must_be_positive() {
        assert_eq!(Config::load(None, Vec::new()).unwrap().password_checks_waiting, 4);
        assert_eq!(
            load_str("[global]\npassword_checks_waiting = 64\n", &[])
                .unwrap()
                .password_checks_waiting,
            64
        );
        assert_eq!(
            key_of(load_str("[global]\npassword_checks_waiting = 0\n", &[]).unwrap_err()),
            "password_checks_waiting"
        );
    }

    #[test]
    fn media_settings_are_read() {
        let c = load_str(
            "[global]\nlegacy_media_cutover = 2024-09-01T12:00:00Z\nurl_preview_allowed_ranges = [\"127.0.0.0/8\", \"::1\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.legacy_media_cutover_ms(), Some(1_725_192_000_000));
        let loopback = c.url_preview_allowed_ranges[0];
        assert!(loopback.contains("127.1.2.3".parse().unwrap()));
        assert!(!loopback.contains("128.0.0.1".parse().unwrap()));
        assert!(c.url_preview_allowed_ranges[1].contains("::1".parse().unwrap()));
        let c = load_str("", &[("CONDUIT_LEGACY_MEDIA_CUTOVER", "1970-01-02")]).unwrap();
        assert_eq!(c.legacy_media_cutover_ms(), Some(86_400_000));
        assert_eq!(
            key_of(load_str("[global]\nurl_preview_allowed_ranges = [\"10.0.0.0/33\"]\n", &[]).unwrap_err()),
            "url_preview_allowed_ranges[0]"
        );
        assert_eq!(
            key_of(load_str("[global]\nlegacy_media_cutover = 1969-12-31\n", &[]).unwrap_err()),
            "legacy_media_cutover"
        );
    }

    #[test]
    fn federation_settings_are_read() {
        let c = load_str(
            "[global]\nfederation_allowed_ranges = [\"10.0.0.0/8\"]\nfederation_ca_files = [\"/etc/ca.pem\"]\n\
             [global.federation_destination_overrides]\n\"b.test\" = \"http://127.0.0.1:6168\"\n\
             \"c.test:8448\" = \"matrix.c.test:443\"\n\"d.test\" = \"https://[::1]:8448/\"\n",
            &[],
        )
        .unwrap();
        let overrides = &c.federation_destination_overrides;
        let b = &overrides[<&ruma::ServerName>::try_from("b.test").unwrap()];
        assert!(b.plain_http);
        assert_eq!(b.address.as_str(), "127.0.0.1:6168");
        let c_test = &overrides[<&ruma::ServerName>::try_from("c.test:8448").unwrap()];
        assert!(!c_test.plain_http);
        assert_eq!(c_test.address.as_str(), "matrix.c.test:443");
        let d = &overrides[<&ruma::ServerName>::try_from("d.test").unwrap()];
        assert_eq!(d.address.port(), Some(8448));
        assert!(c.federation_allowed_ranges[0].contains("10.1.2.3".parse().unwrap()));
        assert_eq!(c.federation_ca_files, vec![PathBuf::from("/etc/ca.pem")]);
        assert!(!c.federation_skip_tls_verification);
        assert_eq!(c.federation_request_timeout, 30);
        assert_eq!(c.federation_workers, 2);
        for bad in ["127.0.0.1", "ftp://x:1", "http://x:1/path", "x:99999"] {
            let text = format!("[global.federation_destination_overrides]\n\"b.test\" = \"{bad}\"\n");
            let key = key_of(load_str(&text, &[]).unwrap_err());
            assert!(key.starts_with("federation_destination_overrides"), "{bad}: {key}");
        }
        assert_eq!(
            key_of(load_str("[global]\nfederation_request_timeout = 0\n", &[]).unwrap_err()),
            "federation_request_timeout"
        );
    }

    #[test]
    fn rate_limits_are_read_and_checked() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert!(c.rate_limits.enabled);
        assert_eq!(c.rate_limits.message.burst, 30);
        let c = load_str(
            "[global.rate_limits]\nmessage = { per_second = 0.5, burst = 3 }\nfailed_logins = 2\n",
            &[("CONDUIT_RATE_LIMITS__ENABLED", "false")],
        )
        .unwrap();
        assert!(!c.rate_limits.enabled);
        assert_eq!(c.rate_limits.message.per_second, 0.5);
        assert_eq!(c.rate_limits.failed_logins, 2);
        assert_eq!(c.rate_limits.join.burst, 20);
        assert_eq!(
            key_of(load_str("[global.rate_limits]\nlogin = { per_second = 0.0, burst = 3 }\n", &[]).unwrap_err()),
            "rate_limits.login.per_second"
        );
        assert_eq!(
            key_of(load_str("[global.rate_limits]\nlogin = { per_second = 1.0 }\n", &[]).unwrap_err()),
            "rate_limits.login"
        );
        assert_eq!(
            key_of(load_str("[global.rate_limits]\nmesage = { per_second = 1.0, burst = 1 }\n", &[]).unwrap_err()),
            "rate_limits.mesage"
        );
    }

    #[test]
    fn without_listeners_address_and_port_are_the_one_listener() {
        let c = load_str("[global]\naddress = \"0.0.0.0\"\nport = 8008\n", &[]).unwrap();
        assert!(c.listeners.is_empty());
        assert_eq!(
            c.all_listeners(),
            vec![ListenerConfig {
                address: "0.0.0.0".parse().unwrap(),
                port: 8008,
                tls: None
            }]
        );
        let c = load_str("[global.tls]\ncerts = \"c.pem\"\nkey = \"k.pem\"\n", &[]).unwrap();
        let only = c.all_listeners();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].socket_addr().to_string(), "127.0.0.1:6167");
        assert_eq!(only[0].tls.as_ref().unwrap().key, PathBuf::from("k.pem"));
    }

    #[test]
    fn listeners_add_to_address_and_port_in_order() {
        let c = load_str(
            "[global]\naddress = \"0.0.0.0\"\nport = 8008\n\
             [[global.listeners]]\naddress = \"0.0.0.0\"\nport = 8448\n\
             tls = { certs = \"/etc/conduit/fullchain.pem\", key = \"/etc/conduit/privkey.pem\" }\n\
             [[global.listeners]]\naddress = \"::1\"\nport = 8008\n\
             [[global.listeners]]\naddress = \"127.0.0.1\"\nport = 9448\n\
             [global.listeners.tls]\ncerts = \"c.pem\"\nkey = \"k.pem\"\n",
            &[],
        )
        .unwrap();
        let all: Vec<_> = c
            .all_listeners()
            .iter()
            .map(|l| (l.socket_addr().to_string(), l.tls.as_ref().map(|t| t.certs.clone())))
            .collect();
        assert_eq!(
            all,
            vec![
                ("0.0.0.0:8008".to_owned(), None),
                (
                    "0.0.0.0:8448".to_owned(),
                    Some(PathBuf::from("/etc/conduit/fullchain.pem"))
                ),
                ("[::1]:8008".to_owned(), None),
                ("127.0.0.1:9448".to_owned(), Some(PathBuf::from("c.pem"))),
            ]
        );
        // As every other key, from the environment too.
        let c = load_str(
            "",
            &[("CONDUIT_LISTENERS", "[{ address = \"127.0.0.1\", port = 8448 }]")],
        )
        .unwrap();
        assert_eq!(c.all_listeners()[1].socket_addr().to_string(), "127.0.0.1:8448");
    }

    #[test]
    fn overlapping_or_incomplete_listeners_are_refused() {
        let with = |listeners: &[&str]| {
            let mut text = "[global]\naddress = \"127.0.0.1\"\nport = 8008\n".to_owned();
            for l in listeners {
                text.push_str(&format!("[[global.listeners]]\n{l}\n"));
            }
            load_str(&text, &[])
        };
        let refused = |listeners: &[&str]| match with(listeners).unwrap_err() {
            ConfigError::Key { key, message } => format!("{key}: {message}"),
            other => panic!("expected a key error, got {other}"),
        };
        assert_eq!(
            refused(&["address = \"127.0.0.1\"\nport = 8008"]),
            "listeners[0]: 127.0.0.1:8008 overlaps the listener of address/port"
        );
        // TLS or not, one socket cannot be both.
        assert_eq!(
            refused(&[
                "address = \"127.0.0.1\"\nport = 8448",
                "address = \"127.0.0.1\"\nport = 8448\ntls = { certs = \"c\", key = \"k\" }",
            ]),
            "listeners[1]: 127.0.0.1:8448 overlaps the listener of listeners[0]"
        );
        // A wildcard address holds the port for every address it covers.
        assert!(refused(&["address = \"0.0.0.0\"\nport = 8008"]).starts_with("listeners[0]"));
        assert!(refused(&["address = \"::\"\nport = 8008"]).starts_with("listeners[0]"));
        with(&["address = \"::1\"\nport = 8008", "address = \"127.0.0.2\"\nport = 8008"]).unwrap();
        with(&["address = \"0.0.0.0\"\nport = 8448", "address = \"::1\"\nport = 8448"]).unwrap();
        // Port 0 picks a free port for each.
        let zero = "address = \"127.0.0.1\"\nport = 0";
        with(&[zero, zero]).unwrap();

        assert!(key_of(with(&["address = \"127.0.0.1\""]).unwrap_err()).starts_with("listeners[0]"));
        assert!(key_of(with(&["port = 8448"]).unwrap_err()).starts_with("listeners[0]"));
        assert_eq!(
            key_of(with(&["address = \"localhost\"\nport = 8448"]).unwrap_err()),
            "listeners[0].address"
        );
        assert_eq!(
            key_of(with(&["address = \"127.0.0.1\"\nport = 8448\ntls = { certs = \"c\" }"]).unwrap_err()),
            "listeners[0].tls"
        );
        assert_eq!(
            key_of(with(&["address = \"127.0.0.1\"\nport = 8448\ntsl = {}"]).unwrap_err()),
            "listeners[0].tsl"
        );
    }

    #[test]
    fn effective_config_round_trips() {
        let c = load_str(
            "[global]\nserver_name = \"example.org\"\nregistration_token = \"t\"\n\
             [global.federation_destination_overrides]\n\"b.test\" = \"127.0.0.1:6168\"\n\
             [[global.listeners]]\naddress = \"::\"\nport = 8448\ntls = { certs = \"c.pem\", key = \"k.pem\" }\n\
             [[global.listeners]]\naddress = \"127.0.0.1\"\nport = 8009\n",
            &[],
        )
        .unwrap();
        let text = c.to_toml();
        assert!(text.contains("[[global.listeners]]"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("again.toml");
        std::fs::write(&path, &text).unwrap();
        let again = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(again.to_toml(), text);
        assert_eq!(again.all_listeners(), c.all_listeners());
    }
}
