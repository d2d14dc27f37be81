//! The memory budget: one figure, `memory_budget_mb`, from which the
//! storage engine's block cache and memtables and the in-memory caches are
//! sized, and a watch that sheds caches when the process nears it anyway.
//!
//! What the caches and RocksDB hold is a small part of a busy server's
//! memory (a medium benchmark run peaks near 64 MiB with a 256 MiB budget);
//! the rest is requests in flight, whose size the budget cannot set. So the
//! caches get a fixed share, and the watch is the backstop: above
//! [`SHED_AT_PERCENT`] of the budget it empties them and hands freed heap
//! back to the kernel.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, MIN_MEMORY_BUDGET_MB as MIN_BUDGET_MB};

/// The budget the proportions below were measured at: the caches' sizes at
/// this budget are the ones the benchmarks were tuned with.
const REFERENCE_BUDGET_MB: u64 = 256;

/// How the budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    pub budget_bytes: u64,
    /// RocksDB's block cache (data, index and filter blocks).
    pub block_cache_bytes: usize,
    /// All memtables together (RocksDB's `db_write_buffer_size`).
    pub memtable_bytes: usize,
    pub caches: CacheSizes,
}

/// Entries each in-memory cache holds at most (see each cache for what an
/// entry costs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    /// Parsed PDUs (1–2 KiB each).
    pub pdu_events: usize,
    /// Event positions and state snapshots (a few hundred bytes each).
    pub event_metas: usize,
    /// Room members over all cached member lists (~100 bytes each).
    pub members: usize,
    /// Parsed state events over all cached room states (a few KiB each).
    pub state_events: usize,
    /// Room records (a few hundred bytes each).
    pub rooms: usize,
    /// Event numbers over all cached auth chains (8 bytes each).
    pub auth_chain_events: usize,
}

impl CacheSizes {
    /// At the reference budget: what the caches held before there was a
    /// budget, each chosen by measurement (see the caches' comments).
    const REFERENCE: CacheSizes = CacheSizes {
        pdu_events: 512,
        event_metas: 2048,
        members: 16_384,
        state_events: 4096,
        rooms: 4096,
        auth_chain_events: 1 << 20,
    };

    /// Floors: below these a cache stops helping a single busy room.
    const FLOOR: CacheSizes = CacheSizes {
        pdu_events: 64,
        event_metas: 256,
        members: 1024,
        state_events: 512,
        rooms: 256,
        auth_chain_events: 1 << 16,
    };

    fn scaled(budget_mb: u64) -> Self {
        let scale = |reference: usize, floor: usize| {
            let scaled = (reference as u128 * budget_mb as u128 / REFERENCE_BUDGET_MB as u128) as usize;
            scaled.max(floor)
        };
        let (r, f) = (Self::REFERENCE, Self::FLOOR);
        CacheSizes {
            pdu_events: scale(r.pdu_events, f.pdu_events),
            event_metas: scale(r.event_metas, f.event_metas),
            members: scale(r.members, f.members),
            state_events: scale(r.state_events, f.state_events),
            rooms: scale(r.rooms, f.rooms),
            auth_chain_events: scale(r.auth_chain_events, f.auth_chain_events),
        }
    }
}

impl Default for CacheSizes {
    fn default() -> Self {
        Self::REFERENCE
    }
}

const MIB: u64 = 1 << 20;

impl MemoryPlan {
    /// The plan for a budget; `block_cache_mb` overrides the block cache's
    /// share (the older `db_cache_capacity_mb` key).
    pub fn new(budget_mb: u64, block_cache_mb: Option<f64>) -> Self {
        let budget_mb = budget_mb.max(MIN_BUDGET_MB);
        // A sixteenth for the block cache and a thirty-second for memtables:
        // 16 and 8 MiB at 256, the sizes the benchmarks settled on.
        let block_cache_bytes = match block_cache_mb {
            Some(mb) => (mb * MIB as f64) as usize,
            None => (budget_mb * MIB / 16).max(4 * MIB) as usize,
        };
        MemoryPlan {
            budget_bytes: budget_mb * MIB,
            block_cache_bytes,
            memtable_bytes: (budget_mb * MIB / 32).max(2 * MIB) as usize,
            caches: CacheSizes::scaled(budget_mb),
        }
    }

    pub fn from_config(config: &Config) -> Self {
        Self::new(config.memory_budget_mb, config.db_cache_capacity_mb)
    }
}

/// Share of the budget above which caches are shed.
const SHED_AT_PERCENT: u64 = 90;

/// How often the watch reads the process's size.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Something holding memory it can let go of on demand.
pub trait SheddableCache: Send + Sync {
    /// Empties the cache; returns the entries dropped.
    fn shed(&self) -> usize;
}

/// Watches resident memory against the budget until `stop` turns true.
pub async fn watch(budget_bytes: u64, caches: Arc<dyn SheddableCache>, stop: tokio::sync::watch::Receiver<bool>) {
    watch_every(WATCH_INTERVAL, budget_bytes, caches, stop).await
}

async fn watch_every(
    interval: Duration,
    budget_bytes: u64,
    caches: Arc<dyn SheddableCache>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let threshold = budget_bytes / 100 * SHED_AT_PERCENT;
    // Warn once per episode above the threshold, not every interval.
    let mut above = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let Some(rss) = resident_bytes() else {
            return;
        };
        if rss < threshold {
            above = false;
            continue;
        }
        let dropped = caches.shed();
        release_free_heap();
        let after = resident_bytes().unwrap_or(rss);
        if !above {
            tracing::warn!(
                rss_mib = rss / MIB,
                after_mib = after / MIB,
                budget_mib = budget_bytes / MIB,
                dropped,
                "memory near the budget: caches emptied"
            );
        }
        above = true;
    }
}

/// The process's resident set, from `/proc/self/statm`.
#[cfg(target_os = "linux")]
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

#[cfg(not(target_os = "linux"))]
pub fn resident_bytes() -> Option<u64> {
    None
}

/// Returns free heap pages to the kernel (glibc keeps them otherwise).
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_budget_keeps_the_measured_sizes() {
        let plan = MemoryPlan::new(REFERENCE_BUDGET_MB, None);
        assert_eq!(plan.block_cache_bytes, 16 << 20);
        assert_eq!(plan.memtable_bytes, 8 << 20);
        assert_eq!(plan.caches, CacheSizes::REFERENCE);
    }

    #[test]
    fn a_smaller_budget_shrinks_everything_down_to_the_least() {
        let half = MemoryPlan::new(128, None);
        assert_eq!(half.block_cache_bytes, 8 << 20);
        assert_eq!(half.memtable_bytes, 4 << 20);
        assert_eq!(half.caches.pdu_events, 256);
        assert_eq!(half.caches.members, 8192);

        let tiny = MemoryPlan::new(1, None);
        assert_eq!(tiny.budget_bytes, MIN_BUDGET_MB << 20);
        assert_eq!(tiny.block_cache_bytes, 4 << 20);
        assert_eq!(tiny.memtable_bytes, 2 << 20);
        assert_eq!(
            tiny,
            MemoryPlan::new(MIN_BUDGET_MB, None),
            "a budget under the least is the least"
        );
        assert_eq!(tiny.caches.pdu_events, CacheSizes::FLOOR.pdu_events);
        assert_eq!(tiny.caches.members, 2048);
    }

    #[test]
    fn a_bigger_budget_grows_the_caches_and_the_old_key_still_sets_the_block_cache() {
        let plan = MemoryPlan::new(1024, Some(100.0));
        assert_eq!(plan.block_cache_bytes, 100 << 20);
        assert_eq!(plan.memtable_bytes, 32 << 20);
        assert_eq!(plan.caches.state_events, 4 * 4096);
    }

    struct Counted(std::sync::atomic::AtomicUsize);

    impl SheddableCache for Counted {
        fn shed(&self) -> usize {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            7
        }
    }

    /// Runs the watch for about three intervals against `budget_bytes`; how
    /// often it shed.
    async fn sheds_within(budget_bytes: u64) -> usize {
        let interval = Duration::from_millis(40);
        let counted = Arc::new(Counted(Default::default()));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let watching = tokio::spawn(watch_every(interval, budget_bytes, counted.clone(), stop));
        tokio::time::sleep(interval * 3 + interval / 2).await;
        stop_tx.send(true).unwrap();
        watching.await.unwrap();
        counted.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn caches_are_shed_only_above_the_budget() {
        if !cfg!(target_os = "linux") {
            return;
        }
        // Any process is above a one-MiB budget, and none near the maximum.
        // A loaded machine may fit fewer intervals in, never more.
        assert!((1..=3).contains(&sheds_within(1 << 20).await));
        assert_eq!(sheds_within(u64::MAX).await, 0);
    }

    #[test]
    fn resident_size_is_read() {
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().is_some_and(|rss| rss > 1 << 20));
        }
    }
}
