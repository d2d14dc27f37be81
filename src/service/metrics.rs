//! Prometheus metrics: HTTP requests by endpoint (counts and latency
//! histograms), counted as they happen; everything else (sync waiters,
//! outbox queues, the database, the process) read from its owner at each
//! scrape, so no other service depends on this one.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::{ServiceError, ServiceResult, Services};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    sync_waiters: IntGauge,
    outbox_destinations: IntGaugeVec,
    outbox_items: IntGaugeVec,
    outbox_failures: IntGaugeVec,
    database_bytes: IntGaugeVec,
    compactions: IntGaugeVec,
    resident_bytes: IntGauge,
    cpu_seconds: prometheus::Gauge,
}

/// Latency buckets, in seconds: from a cached read to a long-poll's end.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0,
];

impl Metrics {
    pub fn new() -> ServiceResult<Self> {
        let registry = Registry::new();
        let err = |e: prometheus::Error| ServiceError::Internal(format!("metrics: {e}"));
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| -> ServiceResult<IntGaugeVec> {
            let gauge = IntGaugeVec::new(Opts::new(name, help), labels).map_err(err)?;
            registry.register(Box::new(gauge.clone())).map_err(err)?;
            Ok(gauge)
        };
        let requests = IntCounterVec::new(
            Opts::new("conduit_http_requests_total", "HTTP requests answered, by endpoint"),
            &["endpoint", "method", "status"],
        )
        .map_err(err)?;
        registry.register(Box::new(requests.clone())).map_err(err)?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "conduit_http_request_duration_seconds",
                "Time from a request's arrival to its answer, by endpoint",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )
        .map_err(err)?;
        registry.register(Box::new(request_seconds.clone())).map_err(err)?;
        let sync_waiters = IntGauge::new("conduit_sync_waiters", "Syncs long-polling for a change now").map_err(err)?;
        registry.register(Box::new(sync_waiters.clone())).map_err(err)?;
        let resident_bytes =
            IntGauge::new("process_resident_memory_bytes", "Resident memory of the process").map_err(err)?;
        registry.register(Box::new(resident_bytes.clone())).map_err(err)?;
        let cpu_seconds =
            prometheus::Gauge::new("process_cpu_seconds_total", "User and system CPU time of the process")
                .map_err(err)?;
        registry.register(Box::new(cpu_seconds.clone())).map_err(err)?;
        Ok(Self {
            outbox_destinations: gauge_vec(
                "conduit_outbox_destinations",
                "Destinations with deliveries waiting, by kind (server, appservice, pusher)",
                &["kind"],
            )?,
            outbox_items: gauge_vec(
                "conduit_outbox_queued_items",
                "Items waiting for delivery, by destination kind",
                &["kind"],
            )?,
            outbox_failures: gauge_vec(
                "conduit_outbox_delivery_failures",
                "Failed deliveries since start, by destination kind",
                &["kind"],
            )?,
            database_bytes: gauge_vec(
                "conduit_database_bytes",
                "The database's bytes: files on disk (sst), memtables, block cache use and capacity",
                &["part"],
            )?,
            compactions: gauge_vec(
                "conduit_database_compactions",
                "Compactions running now, and tables whose compaction is due",
                &["state"],
            )?,
            registry,
            requests,
            request_seconds,
            sync_waiters,
            resident_bytes,
            cpu_seconds,
        })
    }

    /// Counts one answered request; `endpoint` is its route's pattern.
    pub fn observe_request(&self, endpoint: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[endpoint, method, status.to_string().as_str()])
            .inc();
        self.request_seconds.with_label_values(&[endpoint]).observe(seconds);
    }

    /// The metrics in Prometheus' text format, with the figures read now.
    pub fn render(&self, s: &Services) -> ServiceResult<String> {
        self.sync_waiters
            .set(i64::try_from(s.timeline.stream.waiters()).unwrap_or(i64::MAX));
        for (kind, depth) in s.outbox.depths()? {
            let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.outbox_destinations
                .with_label_values(&[kind])
                .set(as_i64(depth.destinations));
            self.outbox_items.with_label_values(&[kind]).set(as_i64(depth.items));
            self.outbox_failures
                .with_label_values(&[kind])
                .set(as_i64(depth.failures));
        }
        let stats = s.engine_stats();
        for (part, bytes) in [
            ("sst", stats.sst_bytes),
            ("memtables", stats.memtable_bytes),
            ("block_cache", stats.block_cache_bytes),
            ("block_cache_capacity", stats.block_cache_capacity_bytes),
        ] {
            self.database_bytes
                .with_label_values(&[part])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        for (state, count) in [
            ("running", stats.running_compactions),
            ("pending", stats.compactions_pending),
        ] {
            self.compactions
                .with_label_values(&[state])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        if let Some((resident, cpu)) = process_figures() {
            self.resident_bytes.set(i64::try_from(resident).unwrap_or(i64::MAX));
            self.cpu_seconds.set(cpu);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| ServiceError::Internal(format!("metrics: {e}")))?;
        String::from_utf8(out).map_err(|e| ServiceError::Internal(format!("metrics: {e}")))
    }
}

/// Resident bytes and CPU seconds of this process, from /proc.
#[cfg(target_os = "linux")]
fn process_figures() -> Option<(u64, f64)> {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let resident = super::memory::resident_bytes()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, in parentheses).
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((resident, (utime + stime) as f64 / ticks as f64))
}

#[cfg(not(target_os = "linux"))]
fn process_figures() -> Option<(u64, f64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_and_timed_by_endpoint() {
        let metrics = Metrics::new().unwrap();
        metrics.observe_request("/_matrix/client/v3/sync", "GET", 200, 0.002);
        metrics.observe_request("/_matrix/client/v3/sync", "GET", 200, 0.3);
        let families = metrics.registry.gather();
        let mut text = Vec::new();
        TextEncoder::new().encode(&families, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains(
            "conduit_http_requests_total{endpoint=\"/_matrix/client/v3/sync\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "conduit_http_request_duration_seconds_bucket{endpoint=\"/_matrix/client/v3/sync\",le=\"0.0025\"} 1"
        ));
        assert!(process_figures().is_some_and(|(rss, _)| rss > 0));
    }
}
