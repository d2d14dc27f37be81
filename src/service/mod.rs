//! The Matrix logic, one module per concern. Each service owns its typed
//! tables and reaches storage only through them.

pub mod account_data;
pub mod address_guard;
pub mod admin;
pub mod admin_commands;
pub mod admin_room;
pub mod appservices;
pub mod backups;
pub mod dehydrated_devices;
pub mod devices;
pub mod e2e_keys;
pub mod federation;
pub mod filters;
pub mod key_backups;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod openid;
pub mod outbox;
pub mod password;
pub mod pdu;
pub mod presence;
pub mod push;
pub mod pushers;
pub mod rate_limits;
pub mod receipts;
pub mod registration_tokens;
pub mod relations;
pub mod reports;
pub mod room_admin;
pub mod rooms;
pub mod search;
pub mod server_keys;
pub mod sliding_sync;
pub mod state;
pub mod stream;
pub mod sync;
pub mod timeline;
pub mod to_device;
pub mod typing;
pub mod uiaa;
pub mod users;
pub mod voip;

use std::sync::Arc;

use ruma::api::client::uiaa::UiaaInfo;

use crate::config::Config;
use crate::database::meta::MetaTables;
use crate::database::rocksdb::{EngineOptions, RocksDb};
use crate::database::{Db, DbError};

/// What can go wrong in the Matrix logic. The API layer maps each variant to
/// a Matrix error in one place (`api::error`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    TooLarge(String),
    /// Data only the server may write (e.g. `m.push_rules` account data).
    #[error("{0}")]
    ServerControlled(String),
    #[error("{0}")]
    InvalidUsername(String),
    #[error("this user ID is already taken")]
    UserInUse,
    /// A server asked to join a room whose version it does not support.
    #[error("the room's version {0} is not one the joining server supports")]
    IncompatibleRoomVersion(String),
    /// A restricted join this server cannot vouch for: it is in none of
    /// the rooms the join rule allows (another server may be).
    #[error("{0}")]
    UnableToAuthoriseJoin(String),
    /// The user may join a restricted room, but nobody here may admit
    /// them: another server should be asked.
    #[error("{0}")]
    UnableToGrantJoin(String),
    /// A federation request whose signature does not check out.
    #[error("{0}")]
    Unauthorized(String),
    #[error("this account has been deactivated")]
    UserDeactivated,
    #[error("guest accounts are not supported on this server")]
    GuestAccessForbidden,
    /// A third-party identifier (email, phone) this server does not allow.
    #[error("{0}")]
    ThreepidDenied(String),
    /// More user-interactive authentication is needed (HTTP 401 with the flows).
    #[error("additional authentication is required")]
    AuthRequired(Box<UiaaInfo>),
    #[error("{0}")]
    UnsupportedRoomVersion(String),
    /// A request that is well-formed but makes no sense in the current state.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    RoomInUse(String),
    #[error("a room alias with that name already exists")]
    AliasExists,
    #[error("{0}")]
    BadAlias(String),
    /// A key backup write names a version that is not the current one (the
    /// current one, if any, is carried along).
    #[error("this is not the current key backup version")]
    WrongRoomKeysVersion(Option<String>),
    /// A bound on stored data that retrying soon will not lift.
    #[error("{0}")]
    LimitExceeded(String),
    /// Too much work of this kind waits already; retry after a while.
    #[error("{what}; try again in {retry_after_ms} ms")]
    Busy { what: String, retry_after_ms: u64 },
    /// `PUT /upload/{server}/{id}` to an ID that already has content.
    #[error("this media ID already has its content")]
    CannotOverwriteMedia,
    /// A pending upload did not arrive within the download's wait.
    #[error("the content of this media has not been uploaded yet")]
    NotYetUploaded,
    /// Another server (a previewed web site) failed us.
    #[error("{0}")]
    RemoteFailed(String),
    /// Another server's media is larger than we accept.
    #[error("{0}")]
    RemoteTooLarge(String),
    /// A user ID or alias in an appservice's exclusive namespace.
    #[error("{0}")]
    Exclusive(String),
    /// An appservice failed a request made for a client (a ping).
    #[error(transparent)]
    Appservice(#[from] appservices::AppserviceFailure),
    /// A sliding sync `pos` this server does not know (any more).
    #[error("{0}")]
    UnknownPos(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// The most bytes the spec allows in a user ID, room ID, room alias or
/// event ID, sigil and server name included (appendix on identifiers).
pub const MAX_ID_BYTES: usize = 255;

/// Every service, built once at start-up and handed to the HTTP layer.
pub struct Services {
    pub config: Config,
    db: Db,
    pub users: users::UsersService,
    /// The admin API's account management and shared-secret registration.
    pub admin: admin::AdminService,
    /// The admin API's room listing and deletion.
    pub room_admin: room_admin::RoomAdminService,
    /// The admin room and its bot.
    pub admin_room: admin_room::AdminRoomService,
    pub devices: devices::DevicesService,
    pub uiaa: uiaa::UiaaService,
    pub registration_tokens: Arc<registration_tokens::RegistrationTokensService>,
    pub account_data: account_data::AccountDataService,
    pub filters: filters::FiltersService,
    pub server_keys: Arc<server_keys::ServerKeysService>,
    pub state: state::StateService,
    pub timeline: timeline::TimelineService,
    pub rooms: rooms::RoomsService,
    pub push: push::PushService,
    pub pushers: Arc<pushers::PushersService>,
    pub receipts: receipts::ReceiptsService,
    pub typing: typing::TypingService,
    pub presence: presence::PresenceService,
    pub relations: relations::RelationsService,
    pub reports: reports::ReportsService,
    pub search: search::SearchService,
    pub e2e_keys: e2e_keys::E2eKeysService,
    pub to_device: to_device::ToDeviceService,
    pub key_backups: key_backups::KeyBackupsService,
    pub dehydrated_devices: dehydrated_devices::DehydratedDevicesService,
    pub media: media::MediaService,
    pub openid: openid::OpenIdService,
    pub voip: voip::VoipService,
    /// Client request rates (see `rate_limits.rs`).
    pub rate_limits: rate_limits::RateLimitsService,
    /// What waits to be delivered to other servers (see `outbox.rs`).
    pub outbox: Arc<outbox::OutboxService>,
    pub federation: federation::FederationService,
    pub appservices: Arc<appservices::AppservicesService>,
    /// What lazy-loading syncs sent each device (see `sync.rs`).
    pub lazy_members: sync::LazyMembersSent,
    /// Simplified sliding sync connections (see `sliding_sync/`).
    pub sliding_sync: sliding_sync::SlidingSyncService,
    /// Online backups (see `backups.rs`).
    pub backups: Arc<backups::BackupsService>,
    /// Prometheus metrics (see `metrics.rs`); kept when `metrics_address` is set.
    pub metrics: Option<metrics::Metrics>,
    /// Event writes running now (see [`Services::run_write`]).
    writes_in_flight: std::sync::atomic::AtomicUsize,
}

impl Services {
    /// Opens (or creates) the database at `config.database_path`.
    pub fn open(config: Config) -> ServiceResult<Arc<Self>> {
        let db = open_database(&config)?;
        let services = Self::build(config, db)?;
        let purged = services.uiaa.purge_expired()?;
        if purged > 0 {
            tracing::info!(purged, "expired authentication sessions removed");
        }
        services.create_appservice_users()?;
        services.admin_room.ensure(&services)?;
        let indexed = services.timeline.backfill_txn_index()? + services.to_device.backfill_txn_index()?;
        if indexed > 0 {
            tracing::info!(indexed, "transaction IDs from an older database set to expire in a day");
        }
        Ok(Arc::new(services))
    }

    /// What the storage engine reports about itself.
    pub fn engine_stats(&self) -> crate::database::EngineStats {
        self.db.stats()
    }

    /// Whether storage answers: the health check's question.
    pub fn check_storage(&self) -> ServiceResult<()> {
        Ok(crate::database::meta::MetaTables::new(self.db.clone()).probe()?)
    }

    /// Salvages a stopped server's damaged database (see
    /// `database::rocksdb::repair`), then checks that it opens.
    pub fn repair_database(config: &Config) -> ServiceResult<()> {
        crate::database::rocksdb::repair(&config.database_path)?;
        open_database(config).map(|_| ())
    }

    /// Takes a backup of a stopped server's database and media.
    pub fn backup_offline(config: &Config) -> ServiceResult<backups::Taken> {
        let service = backups::BackupsService::new(open_database(config)?, config);
        service.take_now(config.backup_directory.as_deref())
    }

    /// Retires the server's signing key and makes a new one, on a stopped
    /// server's database (the running server reads its key at start).
    /// Returns the new key's ID.
    pub fn rotate_signing_key(config: &Config) -> ServiceResult<String> {
        server_keys::ServerKeysService::rotate(open_database(config)?)
    }

    /// The appservices registered in a stopped server's database (for
    /// `conduit appservice ...`).
    pub fn appservices_offline(config: &Config) -> ServiceResult<appservices::AppservicesService> {
        appservices::AppservicesService::open_stored(open_database(config)?, config.server_name.clone())
    }

    /// The registration tokens in a stopped server's database (for
    /// `conduit token ...`).
    pub fn registration_tokens_offline(
        config: &Config,
    ) -> ServiceResult<registration_tokens::RegistrationTokensService> {
        Ok(registration_tokens::RegistrationTokensService::new(
            open_database(config)?,
            config,
        ))
    }

    /// Each appservice's own user, made on first sight.
    fn create_appservice_users(&self) -> ServiceResult<()> {
        for appservice in self.appservices.all().iter() {
            if !self.users.exists(&appservice.sender)? {
                self.users
                    .register_server_account(&self.devices, &appservice.sender, None)?;
                tracing::info!(user_id = %appservice.sender, "appservice user created");
            }
        }
        Ok(())
    }

    fn build(config: Config, db: Db) -> ServiceResult<Self> {
        let stream = Arc::new(stream::Stream::new(db.clone()));
        let server_keys = Arc::new(server_keys::ServerKeysService::open(
            db.clone(),
            config.server_name.clone(),
        )?);
        let outbox = Arc::new(outbox::OutboxService::open(db.clone())?);
        let registration_tokens = Arc::new(registration_tokens::RegistrationTokensService::new(db.clone(), &config));
        let federation = federation::FederationService::new(&config, db.clone(), server_keys.clone(), outbox.clone())?;
        let timeline = timeline::TimelineService::new(
            db.clone(),
            stream.clone(),
            memory::MemoryPlan::from_config(&config).caches,
        );
        timeline.subscribe(Arc::new(federation::sender::FederationSender::new(
            config.server_name.clone(),
            outbox.clone(),
        )));
        timeline.subscribe(Arc::new(federation::device_lists::DeviceListTracking::new(
            config.server_name.clone(),
        )));
        let appservices = Arc::new(appservices::AppservicesService::open(
            db.clone(),
            config.server_name.clone(),
            &config.app_service_config_files,
        )?);
        timeline.subscribe(Arc::new(appservices::sender::AppserviceSender::new(
            appservices.clone(),
            outbox.clone(),
        )));
        let admin_room = admin_room::AdminRoomService::new(db.clone(), &config.server_name)?;
        timeline.subscribe(admin_room.watcher());
        Ok(Services {
            admin_room,
            server_keys,
            users: users::UsersService::new(db.clone(), &config),
            admin: admin::AdminService::new(&config),
            room_admin: room_admin::RoomAdminService::default(),
            devices: devices::DevicesService::new(db.clone()),
            uiaa: uiaa::UiaaService::new(db.clone(), registration_tokens.clone()),
            registration_tokens,
            account_data: account_data::AccountDataService::new(db.clone(), stream.clone()),
            filters: filters::FiltersService::new(db.clone()),
            state: state::StateService::new(db.clone()),
            receipts: receipts::ReceiptsService::new(db.clone(), stream.clone()),
            typing: typing::TypingService::new(stream.clone()),
            presence: presence::PresenceService::new(db.clone(), stream.clone()),
            push: push::PushService::new(db.clone()),
            pushers: Arc::new(pushers::PushersService::open(db.clone())?),
            relations: relations::RelationsService::open(db.clone())?,
            reports: reports::ReportsService::new(db.clone()),
            search: search::SearchService::new(db.clone()),
            e2e_keys: e2e_keys::E2eKeysService::new(db.clone()),
            to_device: to_device::ToDeviceService::new(db.clone(), config.max_to_device_queue),
            key_backups: key_backups::KeyBackupsService::new(db.clone()),
            dehydrated_devices: dehydrated_devices::DehydratedDevicesService::new(db.clone()),
            timeline,
            rooms: rooms::RoomsService::new(db.clone()),
            media: media::MediaService::open(db.clone(), &config)?,
            openid: openid::OpenIdService::new(db.clone(), config.openid_token_ttl),
            voip: voip::VoipService::new(&config),
            rate_limits: rate_limits::RateLimitsService::new(&config.rate_limits),
            outbox,
            federation,
            appservices,
            lazy_members: sync::LazyMembersSent::default(),
            sliding_sync: sliding_sync::SlidingSyncService::new(db.clone()),
            backups: Arc::new(backups::BackupsService::new(db.clone(), &config)),
            metrics: config.metrics_address.map(|_| metrics::Metrics::new()).transpose()?,
            writes_in_flight: Default::default(),
            config,
            db,
        })
    }

    /// Runs blocking work (storage, password hashing) off the async workers.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> ServiceResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Services) -> ServiceResult<T> + Send + 'static,
    {
        let services = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&services)).await.map_err(|e| {
            if e.is_panic() {
                ServiceError::Internal("a request handler panicked".to_owned())
            } else {
                ServiceError::Internal("a request handler was cancelled".to_owned())
            }
        })?
    }

    /// Runs an event write (which blocks on its fsync): on the calling
    /// worker when no other write is in flight, else on the blocking pool.
    /// On a quiet server a lone send is answered sooner without the hop to
    /// the pool and back, which wakes two idle threads; under load writes
    /// go to the pool, where RocksDB groups their fsyncs (the two HTTP
    /// workers alone could not keep enough of them in flight).
    pub async fn run_write<T, F>(self: &Arc<Self>, f: F) -> ServiceResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Services) -> ServiceResult<T> + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let others = self.writes_in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&self.writes_in_flight);
        if others == 0 {
            f(self)
        } else {
            self.run(f).await
        }
    }

    /// Starts the background workers (deliveries to other servers, appservices and push gateways, the admin room's bot); they
    /// stop when `stop` turns true, and the returned handles finish once
    /// they have.
    pub fn start_workers(
        self: &Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let transport = Arc::new(outbox::TransportByKind {
            servers: Arc::new(federation::sender::ServerTransport {
                client: self.federation.client.clone(),
                server_name: self.config.server_name.clone(),
            }),
            appservices: Arc::new(appservices::sender::AppserviceTransport {
                appservices: self.appservices.clone(),
            }),
            pushers: Arc::new(pushers::gateway::PusherTransport::new(
                self.pushers.clone(),
                self.config.push_gateway_allowed_ranges.clone(),
                std::time::Duration::from_secs(self.config.push_notification_max_age),
            )),
        });
        let budget = memory::MemoryPlan::from_config(&self.config).budget_bytes;
        vec![
            tokio::spawn(self.backups.clone().run(stop.clone())),
            tokio::spawn(memory::watch(
                budget,
                Arc::new(ServiceCaches(Arc::clone(self))),
                stop.clone(),
            )),
            tokio::spawn(admin_room::run_bot(self.clone(), stop.clone())),
            tokio::spawn(self.outbox.clone().run(transport, stop)),
        ]
    }

    /// Flushes everything to disk (at shutdown).
    pub fn flush(&self) -> ServiceResult<()> {
        Ok(self.db.flush()?)
    }
}

/// Every cache the memory watch may empty.
struct ServiceCaches(Arc<Services>);

impl memory::SheddableCache for ServiceCaches {
    fn shed(&self) -> usize {
        let s = &self.0;
        s.timeline.shed_caches() + s.push.shed_caches() + s.sliding_sync.shed_cache()
    }
}

fn open_database(config: &Config) -> ServiceResult<Db> {
    std::fs::create_dir_all(&config.database_path)
        .map_err(|e| ServiceError::Internal(format!("cannot create {}: {e}", config.database_path.display())))?;
    let plan = memory::MemoryPlan::from_config(config);
    let engine = RocksDb::open(
        &config.database_path,
        &EngineOptions {
            cache_bytes: plan.block_cache_bytes,
            memtable_bytes: plan.memtable_bytes,
            max_open_files: config.rocksdb_max_open_files,
            sync_writes: config.sync_writes,
        },
    )?;
    let db: Db = Arc::new(engine);
    MetaTables::new(db.clone()).check_schema()?;
    Ok(db)
}

/// When to prune an in-memory map whose entries go idle (a room nobody
/// writes to, a user who stopped syncing): once it has doubled since it was
/// last pruned, and has at least `floor` entries. The cost per insert stays
/// constant and the map holds at most about twice its live entries.
pub(crate) struct PruneSchedule {
    floor: usize,
    next_at: usize,
}

impl PruneSchedule {
    pub(crate) const fn new(floor: usize) -> Self {
        Self { floor, next_at: floor }
    }

    /// Whether a map of `len` entries is due for pruning.
    pub(crate) fn due(&self, len: usize) -> bool {
        len >= self.next_at
    }

    /// Records a pruning that left `len` entries.
    pub(crate) fn pruned(&mut self, len: usize) {
        self.next_at = (len * 2).max(self.floor);
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    ruma::MilliSecondsSinceUnixEpoch::now().get().into()
}

/// A random string of ASCII letters and digits.
pub(crate) fn random_string(len: usize) -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// What unit tests of the services start from.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId};

    use super::rooms::{CreateRoom, Preset};
    use super::Services;
    use crate::database::testing::FaultyStore;

    /// Services on a store that fails where a test tells it to, with
    /// `@alice:localhost` and `@bob:localhost` registered and joined to a
    /// public room of Alice's. Keep `dir` for as long as the services.
    pub struct TwoInARoom {
        pub dir: tempfile::TempDir,
        pub store: Arc<FaultyStore>,
        pub s: Services,
        pub alice: OwnedUserId,
        pub bob: OwnedUserId,
        pub room: OwnedRoomId,
    }

    pub fn two_in_a_room() -> TwoInARoom {
        two_in_a_room_of(None)
    }

    /// As [`two_in_a_room`], the room of `version` (else the default).
    pub fn two_in_a_room_of(version: Option<RoomVersionId>) -> TwoInARoom {
        let dir = tempfile::tempdir().unwrap();
        let store = FaultyStore::open(dir.path());
        let config = crate::config::Config {
            database_path: dir.path().to_owned(),
            ..Default::default()
        };
        let s = Services::build(config, store.clone()).unwrap();
        let alice: OwnedUserId = "@alice:localhost".try_into().unwrap();
        let bob: OwnedUserId = "@bob:localhost".try_into().unwrap();
        for user in [&alice, &bob] {
            s.users.register(&s.devices, user, None, None).unwrap();
        }
        let public = CreateRoom {
            preset: Some(Preset::PublicChat),
            room_version: version,
            ..Default::default()
        };
        let room = s.rooms.create_room(&s, &alice, public).unwrap();
        s.rooms.join(&s, &bob, room.as_str(), None).unwrap();
        TwoInARoom {
            dir,
            store,
            s,
            alice,
            bob,
            room,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{two_in_a_room, TwoInARoom};
    use crate::database::{keys, Table};

    #[test]
    fn the_health_check_fails_when_storage_does_not_answer() {
        let TwoInARoom {
            dir: _dir, store, s, ..
        } = two_in_a_room();
        assert!(s.check_storage().is_ok());
        store.fail_reads_of(Table::Global, keys::encode("conduit.schema_version"));
        assert!(s.check_storage().is_err());
    }
}
