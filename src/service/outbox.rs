//! The persistent outbox: what this server must deliver elsewhere (PDUs and
//! EDUs to other servers, events to appservices, notifications to push
//! gateways), queued
//! per destination in storage, so nothing is lost to a restart.
//!
//! Items are queued in the batch of the write that makes them (an event's
//! own batch): queued and stored land together or not at all. A worker
//! sends each destination's oldest items as one transaction, one in flight
//! per destination, and removes them once the destination took them. A
//! failed transaction is retried with capped exponential backoff, at once
//! if the destination shows it is back (it contacted us).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use ruma::{EventId, OwnedEventId, OwnedServerName, ServerName};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::pushers::PusherId;
use super::{ServiceError, ServiceResult};
use crate::database::outbox::{OutboxItem, OutboxTables};
use crate::database::{Batch, Db};

/// Where queued items go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Server(OwnedServerName),
    /// An appservice, by its registration's ID.
    Appservice(String),
    /// A user's pusher: its push gateway, one notification per request.
    Pusher(PusherId),
}

/// One kind of destination's queue, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueDepth {
    pub destinations: u64,
    pub items: u64,
    pub failures: u64,
}

/// Items counted per destination at most, so that a scrape stays cheap
/// while a destination is down with a long queue.
const QUEUE_COUNT_LIMIT: usize = 100_000;

impl Destination {
    /// What kind of destination this is (a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Server(_) => "server",
            Destination::Appservice(_) => "appservice",
            Destination::Pusher(_) => "pusher",
        }
    }

    /// The form in the outbox table's keys.
    fn key(&self) -> String {
        match self {
            Destination::Server(name) => format!("server:{name}"),
            Destination::Appservice(id) => format!("appservice:{id}"),
            // JSON: a pushkey may hold any character.
            Destination::Pusher(id) => format!("pusher:{}", serde_json::to_string(id).unwrap_or_default()),
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        let (kind, rest) = key.split_once(':')?;
        match kind {
            "server" => ServerName::parse(rest).ok().map(Destination::Server),
            "appservice" => Some(Destination::Appservice(rest.to_owned())),
            "pusher" => serde_json::from_str(rest).ok().map(Destination::Pusher),
            _ => None,
        }
    }

    /// The longest wait between tries: a server may be gone for good, an
    /// appservice is usually beside us and restarting.
    fn max_backoff(&self) -> Duration {
        match self {
            Destination::Server(_) => MAX_BACKOFF,
            Destination::Appservice(_) => MAX_APPSERVICE_BACKOFF,
            // A notification much later is of little use; a gateway back
            // soon after is what matters.
            Destination::Pusher(_) => MAX_PUSHER_BACKOFF,
        }
    }

    /// The most items one transaction carries (the push gateway API
    /// takes one notification per request).
    fn max_items(&self) -> usize {
        match self {
            Destination::Pusher(_) => 1,
            _ => MAX_PDUS_PER_TRANSACTION + MAX_EDUS_PER_TRANSACTION,
        }
    }
}

/// Destinations a timeline subscriber staged for each event, until the
/// event's batch has landed (then the outbox is told) or failed.
pub struct StagedForEvents {
    outbox: Arc<OutboxService>,
    staged: Mutex<HashMap<OwnedEventId, Vec<Destination>>>,
}

impl StagedForEvents {
    pub fn new(outbox: Arc<OutboxService>) -> Self {
        Self {
            outbox,
            staged: Mutex::default(),
        }
    }

    /// Queues `item` for each of `destinations` in the event's `batch`.
    pub fn stage(
        &self,
        batch: &mut Batch,
        event_id: &EventId,
        destinations: Vec<Destination>,
        item: &OutboxItem,
    ) -> ServiceResult<()> {
        if destinations.is_empty() {
            return Ok(());
        }
        for destination in &destinations {
            self.outbox.stage(batch, destination, item)?;
        }
        self.lock().insert(event_id.to_owned(), destinations);
        Ok(())
    }

    /// The event's batch landed: its destinations have something to send.
    pub fn committed(&self, event_id: &EventId) {
        let destinations = self.lock().remove(event_id);
        if let Some(destinations) = destinations {
            self.outbox.committed(&destinations);
        }
    }

    pub fn aborted(&self, event_id: &EventId) {
        self.lock().remove(event_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedEventId, Vec<Destination>>> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends each kind of destination's transactions with its own transport.
pub struct TransportByKind {
    pub servers: Arc<dyn Transport>,
    pub appservices: Arc<dyn Transport>,
    pub pushers: Arc<dyn Transport>,
}

impl Transport for TransportByKind {
    fn deliver<'a>(
        &'a self,
        destination: &'a Destination,
        transaction: &'a Transaction,
    ) -> BoxFuture<'a, Result<(), DeliveryFailed>> {
        match destination {
            Destination::Server(_) => self.servers.deliver(destination, transaction),
            Destination::Appservice(_) => self.appservices.deliver(destination, transaction),
            Destination::Pusher(_) => self.pushers.deliver(destination, transaction),
        }
    }
}

/// The spec's limits on one federation transaction.
pub const MAX_PDUS_PER_TRANSACTION: usize = 50;
pub const MAX_EDUS_PER_TRANSACTION: usize = 100;

/// One transaction's worth of items, oldest first.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Stable for the same items, so a retry is recognised as one.
    pub txn_id: String,
    /// `(event_id, PDU JSON)`.
    pub pdus: Vec<(String, String)>,
    /// EDU JSON.
    pub edus: Vec<String>,
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryFailed(pub String);

/// Delivers transactions to one kind of destination (federation: `PUT
/// /_matrix/federation/v1/send/{txnId}`).
pub trait Transport: Send + Sync + 'static {
    fn deliver<'a>(
        &'a self,
        destination: &'a Destination,
        transaction: &'a Transaction,
    ) -> BoxFuture<'a, Result<(), DeliveryFailed>>;
}

/// First wait after a failure; it doubles with each one after.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait between tries to another server.
const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);
/// The longest wait between tries to an appservice.
const MAX_APPSERVICE_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// The longest wait between tries to a push gateway.
const MAX_PUSHER_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// How long shutdown waits for transactions in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct DestinationState {
    in_flight: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

pub struct OutboxService {
    tables: OutboxTables,
    /// Failed deliveries since start, by destination kind (for metrics).
    failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Destinations with items queued, as far as this process knows.
    pending: Mutex<HashSet<Destination>>,
    states: Mutex<HashMap<Destination, DestinationState>>,
    wake: Notify,
}

impl OutboxService {
    pub fn open(db: Db) -> ServiceResult<Self> {
        let tables = OutboxTables::new(db);
        let pending = tables
            .destinations()?
            .iter()
            .filter_map(|key| Destination::from_key(key))
            .collect::<HashSet<_>>();
        if !pending.is_empty() {
            tracing::info!(
                destinations = pending.len(),
                "outbox: deliveries left from before the restart"
            );
        }
        Ok(Self {
            tables,
            failures: Mutex::default(),
            pending: Mutex::new(pending),
            states: Mutex::default(),
            wake: Notify::new(),
        })
    }

    /// Queues `item` for `destination` in `batch`; call [`Self::committed`]
    /// once the batch has landed.
    pub fn stage(&self, batch: &mut Batch, destination: &Destination, item: &OutboxItem) -> ServiceResult<()> {
        let seq = self.tables.next_seq()?;
        self.tables.push(batch, &destination.key(), seq, item);
        Ok(())
    }

    /// Tells the worker that items staged for `destinations` have landed.
    pub fn committed<'a>(&self, destinations: impl IntoIterator<Item = &'a Destination>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend(destinations.into_iter().cloned());
        drop(pending);
        self.wake.notify_one();
    }

    /// Queues `item` for each destination on its own (for what no other
    /// write carries, such as typing notices).
    pub fn queue(&self, destinations: &[Destination], item: &OutboxItem) -> ServiceResult<()> {
        let mut batch = Batch::new();
        for destination in destinations {
            self.stage(&mut batch, destination, item)?;
        }
        self.tables.write(batch)?;
        self.committed(destinations);
        Ok(())
    }

    /// Queues a different item for each destination, in one write.
    pub fn queue_each(&self, items: &[(Destination, OutboxItem)]) -> ServiceResult<()> {
        let mut batch = Batch::new();
        for (destination, item) in items {
            self.stage(&mut batch, destination, item)?;
        }
        self.tables.write(batch)?;
        self.committed(items.iter().map(|(d, _)| d));
        Ok(())
    }

    /// The destination is back (it contacted us): retry now.
    pub fn retry_now(&self, destination: &Destination) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = states.get_mut(destination) {
            if state.retry_at.take().is_some() {
                state.failures = 0;
                drop(states);
                self.wake.notify_one();
            }
        }
    }

    /// The destinations with something waiting, as far as this process knows.
    fn pending_destinations(&self) -> Vec<Destination> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// By destination kind: destinations with something waiting, the items
    /// waiting (each destination counted up to `QUEUE_COUNT_LIMIT`), and
    /// the deliveries that failed since start. For metrics.
    pub fn depths(&self) -> ServiceResult<BTreeMap<&'static str, QueueDepth>> {
        let pending = self.pending_destinations();
        let mut out: BTreeMap<&'static str, QueueDepth> = ["server", "appservice", "pusher"]
            .into_iter()
            .map(|kind| (kind, QueueDepth::default()))
            .collect();
        for destination in pending {
            let items = self.tables.count(&destination.key(), QUEUE_COUNT_LIMIT)?;
            let depth = out.entry(destination.kind()).or_default();
            depth.destinations += 1;
            depth.items += items as u64;
        }
        for (kind, failed) in self.failures.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.entry(kind).or_default().failures = *failed;
        }
        Ok(out)
    }

    /// Items waiting for `destination`.
    pub fn queued(&self, destination: &Destination) -> ServiceResult<usize> {
        Ok(self.tables.oldest(&destination.key(), usize::MAX)?.len())
    }

    /// Delivers until `stop` turns true, then waits a little for the
    /// transactions in flight.
    pub async fn run(self: Arc<Self>, transport: Arc<dyn Transport>, mut stop: watch::Receiver<bool>) {
        let mut sending = JoinSet::new();
        loop {
            let next_retry = self.start_due(&transport, &mut sending);
            let sleep = async {
                match next_retry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = sleep => {}
                Some(_) = sending.join_next(), if !sending.is_empty() => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
        }
        if !sending.is_empty() {
            tracing::info!(in_flight = sending.len(), "outbox: waiting for transactions in flight");
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while sending.join_next().await.is_some() {} }).await;
        }
    }

    /// Starts a transaction for each destination that has items, none in
    /// flight and no retry pending; returns the soonest retry time.
    fn start_due(self: &Arc<Self>, transport: &Arc<dyn Transport>, sending: &mut JoinSet<()>) -> Option<Instant> {
        let now = Instant::now();
        let pending = self.pending_destinations();
        let mut soonest: Option<Instant> = None;
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        for destination in pending {
            let state = states.entry(destination.clone()).or_default();
            if state.in_flight {
                continue;
            }
            if let Some(at) = state.retry_at {
                if at > now {
                    soonest = Some(soonest.map_or(at, |s| s.min(at)));
                    continue;
                }
            }
            state.in_flight = true;
            let outbox = Arc::clone(self);
            let transport = Arc::clone(transport);
            sending.spawn(async move { outbox.send_next(&*transport, destination).await });
        }
        soonest
    }

    /// Sends `destination`'s oldest items as one transaction.
    async fn send_next(&self, transport: &dyn Transport, destination: Destination) {
        let outcome = match self.next_transaction(&destination) {
            Ok(None) => self.forget_if_empty(&destination).map(|()| false),
            Ok(Some((transaction, seqs))) => match transport.deliver(&destination, &transaction).await {
                Ok(()) => self.delivered(&destination, &seqs).map(|()| true),
                Err(e) => Err(ServiceError::RemoteFailed(e.0)),
            },
            Err(e) => Err(e),
        };
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let state = states.entry(destination.clone()).or_default();
        state.in_flight = false;
        match outcome {
            Ok(more) => {
                state.failures = 0;
                state.retry_at = None;
                if more {
                    // Perhaps more waits; the loop looks again.
                    drop(states);
                    self.wake.notify_one();
                }
            }
            Err(e) => {
                *self
                    .failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(destination.kind())
                    .or_default() += 1;
                state.failures = state.failures.saturating_add(1);
                let wait = backoff(state.failures, destination.max_backoff());
                state.retry_at = Some(Instant::now() + wait);
                tracing::warn!(?destination, error = %e, failures = state.failures, retry_in_s = wait.as_secs(), "outbox: delivery failed");
            }
        }
    }

    /// The oldest items that fit one transaction, and their sequence numbers.
    fn next_transaction(&self, destination: &Destination) -> ServiceResult<Option<(Transaction, Vec<u64>)>> {
        let items = self.tables.oldest(&destination.key(), destination.max_items())?;
        let mut pdus = Vec::new();
        let mut edus = Vec::new();
        let mut seqs = Vec::new();
        for (seq, item) in items {
            // Stop at the first item that does not fit, to keep the order.
            match item {
                OutboxItem::Pdu { event_id, json } if pdus.len() < MAX_PDUS_PER_TRANSACTION => {
                    pdus.push((event_id, json))
                }
                OutboxItem::Edu(json) if edus.len() < MAX_EDUS_PER_TRANSACTION => edus.push(json),
                _ => break,
            }
            seqs.push(seq);
        }
        let (Some(first), Some(last)) = (seqs.first(), seqs.last()) else {
            return Ok(None);
        };
        let transaction = Transaction {
            txn_id: format!("{first}-{last}"),
            pdus,
            edus,
        };
        Ok(Some((transaction, seqs)))
    }

    /// Drops `destination` from the pending set if nothing waits for it.
    /// Checked under the set's lock, which `committed` takes after its
    /// items have landed: an item cannot slip in unseen.
    fn forget_if_empty(&self, destination: &Destination) -> ServiceResult<()> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if self.tables.oldest(&destination.key(), 1)?.is_empty() {
            pending.remove(destination);
        }
        Ok(())
    }

    fn delivered(&self, destination: &Destination, seqs: &[u64]) -> ServiceResult<()> {
        let key = destination.key();
        let mut batch = Batch::new();
        for seq in seqs {
            self.tables.remove(&mut batch, &key, *seq);
        }
        Ok(self.tables.write(batch)?)
    }
}

/// The wait after `failures` failures in a row.
fn backoff(failures: u32, max: Duration) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(max)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Records what it is given; fails while `down` is set.
    #[derive(Default)]
    struct Recorder {
        down: AtomicBool,
        received: Mutex<Vec<(Destination, Transaction)>>,
    }

    impl Transport for Recorder {
        fn deliver<'a>(
            &'a self,
            destination: &'a Destination,
            transaction: &'a Transaction,
        ) -> BoxFuture<'a, Result<(), DeliveryFailed>> {
            Box::pin(async move {
                if self.down.load(Ordering::SeqCst) {
                    return Err(DeliveryFailed("connection refused".to_owned()));
                }
                self.received
                    .lock()
                    .unwrap()
                    .push((destination.clone(), transaction.clone()));
                Ok(())
            })
        }
    }

    fn server(name: &str) -> Destination {
        Destination::Server(name.try_into().unwrap())
    }

    fn pdu(i: usize) -> OutboxItem {
        OutboxItem::Pdu {
            event_id: format!("$e{i}"),
            json: format!("{{\"n\":{i}}}"),
        }
    }

    /// Waits (bounded) until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1, MAX_BACKOFF), FIRST_BACKOFF);
        assert_eq!(backoff(2, MAX_BACKOFF), FIRST_BACKOFF * 2);
        assert_eq!(backoff(3, MAX_BACKOFF), FIRST_BACKOFF * 4);
        assert_eq!(backoff(40, MAX_BACKOFF), MAX_BACKOFF);
        let appservice = Destination::Appservice("bridge".to_owned());
        assert_eq!(backoff(40, appservice.max_backoff()), MAX_APPSERVICE_BACKOFF);
        assert_eq!(Destination::from_key(&appservice.key()), Some(appservice));
    }

    #[tokio::test]
    async fn items_survive_a_restart_and_go_out_in_order_in_transactions_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let remote = server("remote.test");
        {
            let outbox = OutboxService::open(crate::database::open_test_db(dir.path())).unwrap();
            for i in 0..120 {
                outbox.queue(std::slice::from_ref(&remote), &pdu(i)).unwrap();
            }
            outbox
                .queue(
                    std::slice::from_ref(&remote),
                    &OutboxItem::Edu("{\"edu_type\":\"m.typing\"}".to_owned()),
                )
                .unwrap();
            // Stopped before any worker ran: everything stays queued.
        }
        let outbox = Arc::new(OutboxService::open(crate::database::open_test_db(dir.path())).unwrap());
        assert_eq!(outbox.queued(&remote).unwrap(), 121);
        let recorder = Arc::new(Recorder::default());
        let (stop_tx, stop) = watch::channel(false);
        let worker = tokio::spawn(outbox.clone().run(recorder.clone(), stop));
        until(|| outbox.queued(&remote).unwrap() == 0).await;
        stop_tx.send(true).unwrap();
        worker.await.unwrap();

        let received = recorder.received.lock().unwrap();
        let sizes: Vec<(usize, usize)> = received.iter().map(|(_, t)| (t.pdus.len(), t.edus.len())).collect();
        assert_eq!(sizes, [(50, 0), (50, 0), (20, 1)]);
        let order: Vec<String> = received
            .iter()
            .flat_map(|(_, t)| t.pdus.iter().map(|(id, _)| id.clone()))
            .collect();
        assert_eq!(order, (0..120).map(|i| format!("$e{i}")).collect::<Vec<_>>());
        let ids: HashSet<&String> = received.iter().map(|(_, t)| &t.txn_id).collect();
        assert_eq!(ids.len(), 3, "each transaction has its own ID");
    }

    #[tokio::test]
    async fn a_destination_that_was_down_gets_everything_once_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(OutboxService::open(crate::database::open_test_db(dir.path())).unwrap());
        let (down, up) = (server("down.test"), server("up.test"));
        let recorder = Arc::new(Recorder::default());
        recorder.down.store(true, Ordering::SeqCst);
        let (stop_tx, stop) = watch::channel(false);
        let worker = tokio::spawn(outbox.clone().run(recorder.clone(), stop));
        outbox.queue(std::slice::from_ref(&down), &pdu(1)).unwrap();
        until(|| {
            outbox
                .states
                .lock()
                .unwrap()
                .get(&down)
                .is_some_and(|s| s.failures >= 1 && !s.in_flight)
        })
        .await;
        outbox.queue(std::slice::from_ref(&down), &pdu(2)).unwrap();
        assert_eq!(outbox.queued(&down).unwrap(), 2, "kept while it is down");

        // It comes back and says so: both go out at once, not after the backoff.
        recorder.down.store(false, Ordering::SeqCst);
        outbox.retry_now(&down);
        outbox.queue(std::slice::from_ref(&up), &pdu(3)).unwrap();
        until(|| outbox.queued(&down).unwrap() == 0 && outbox.queued(&up).unwrap() == 0).await;
        stop_tx.send(true).unwrap();
        worker.await.unwrap();
        let received = recorder.received.lock().unwrap();
        let to_down: Vec<&String> = received
            .iter()
            .filter(|(d, _)| *d == down)
            .flat_map(|(_, t)| t.pdus.iter().map(|(id, _)| id))
            .collect();
        assert_eq!(to_down, ["$e1", "$e2"], "once each, in order");
    }
}
