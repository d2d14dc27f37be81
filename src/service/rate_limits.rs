//! Client rate limits: a token bucket per user (per address before there is
//! a user: login, registration) for each class of endpoint, and a growing
//! lockout of an account after wrong passwords. All in memory: a restart
//! forgets it, which costs a runaway script nothing it should keep.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ruma::UserId;

use super::appservices::Appservice;
use super::{ServiceError, ServiceResult, Services};
use crate::config::{RateLimit, RateLimits};

/// The most buckets (and, apart, accounts with failed logins) kept at
/// once: a few MiB at most, whatever a flood of addresses does.
const MAX_TRACKED: usize = 16_384;

/// How often idle entries are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The kinds of request limited, each with its own bucket per requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    /// Sending messages and state, redacting.
    Message,
    /// Joining, inviting, knocking.
    Join,
    Login,
    Register,
    MediaUpload,
    /// Asking for a third-party identifier's validation token.
    Threepid,
}

impl RateClass {
    /// Classes whose requester is, for limiting, the address it calls from:
    /// there is no user yet, or it is the one being guessed at.
    fn by_address(self) -> bool {
        matches!(self, RateClass::Login | RateClass::Register | RateClass::Threepid)
    }

    fn what(self) -> &'static str {
        match self {
            RateClass::Message => "too many messages sent",
            RateClass::Join => "too many joins or invites",
            RateClass::Login => "too many login attempts from this address",
            RateClass::Register => "too many registration requests from this address",
            RateClass::MediaUpload => "too many media uploads",
            RateClass::Threepid => "too many validation token requests",
        }
    }

    fn limit(self, config: &RateLimits) -> RateLimit {
        match self {
            RateClass::Message => config.message,
            RateClass::Join => config.join,
            RateClass::Login => config.login,
            RateClass::Register => config.register,
            RateClass::MediaUpload => config.media_upload,
            RateClass::Threepid => config.threepid,
        }
    }
}

/// Who made a request, as far as the limits care.
pub struct Requester<'a> {
    pub user: Option<&'a UserId>,
    /// The appservice whose token the request carried.
    pub appservice: Option<&'a Appservice>,
    pub address: Option<&'a str>,
}

pub struct RateLimitsService {
    config: RateLimits,
    buckets: Tracked<(RateClass, String), Bucket>,
    failed_logins: Tracked<String, FailedLogins>,
}

impl RateLimitsService {
    pub fn new(config: &RateLimits) -> Self {
        RateLimitsService {
            config: config.clone(),
            buckets: Tracked::default(),
            failed_logins: Tracked::default(),
        }
    }

    /// Takes one request of `class` from the requester's bucket, or refuses
    /// it with the time until the bucket has one again.
    pub fn check(&self, services: &Services, class: RateClass, requester: Requester<'_>) -> ServiceResult<()> {
        if !self.config.enabled {
            return Ok(());
        }
        if let Some(appservice) = requester.appservice {
            // A bridge's own user is never limited; the users it acts as
            // only if its registration asks for it.
            let is_sender = requester.user == Some(&*appservice.sender);
            if is_sender || appservice.registration.rate_limited != Some(true) {
                return Ok(());
            }
        }
        let subject = match (class.by_address(), requester.user, requester.address) {
            (false, Some(user), _) => user.as_str(),
            (_, _, Some(address)) => address,
            (true, Some(user), None) => user.as_str(),
            (_, None, None) => return Ok(()),
        };
        let limit = class.limit(&self.config);
        let taken = self
            .buckets
            .with((class, subject.to_owned()), Instant::now(), |bucket, now| {
                bucket.get_or_insert_with(|| Bucket::full(limit, now)).take(now)
            });
        let Err(retry_after_ms) = taken else {
            return Ok(());
        };
        // Only a refusal pays for the admin lookup.
        if let Some(user) = requester.user {
            if self.config.exempt_admins && services.users.is_admin(user)? {
                return Ok(());
            }
        }
        Err(ServiceError::Busy {
            what: class.what().to_owned(),
            retry_after_ms,
        })
    }

    /// Runs `check_password` for `user` unless wrong passwords have locked
    /// the account for now; a wrong one (`Forbidden`) counts towards the
    /// lock, a right one forgets the wrong ones before it.
    pub fn guard_password(
        &self,
        user: &UserId,
        check_password: impl FnOnce() -> ServiceResult<()>,
    ) -> ServiceResult<()> {
        if !self.config.enabled {
            return check_password();
        }
        let key = user.as_str().to_owned();
        let locked = self.failed_logins.with(key.clone(), Instant::now(), |entry, now| {
            entry.as_ref().and_then(|e| e.locked_for(now))
        });
        if let Some(left) = locked {
            return Err(ServiceError::Busy {
                what: "too many wrong passwords for this account".to_owned(),
                retry_after_ms: ceil_ms(left),
            });
        }
        let result = check_password();
        let policy = &self.config;
        self.failed_logins
            .with(key, Instant::now(), |entry, now| match &result {
                Ok(()) => *entry = None,
                Err(ServiceError::Forbidden(_)) => {
                    entry
                        .get_or_insert_with(|| FailedLogins::new(policy, now))
                        .failed(policy, now);
                }
                Err(_) => {}
            });
        result
    }
}

/// Milliseconds, rounded up: waiting that long is always enough.
fn ceil_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        self.updated = now;
    }

    /// Takes a token, or says in how many milliseconds there is one.
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.limit.per_second);
        Err(ceil_ms(wait).max(1))
    }
}

impl Idle for Bucket {
    /// Full again: forgetting it changes nothing.
    fn idle(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.limit.per_second >= f64::from(self.limit.burst)
    }

    fn last_used(&self) -> Instant {
        self.updated
    }
}

/// Wrong passwords for one account since its last right one.
#[derive(Debug)]
struct FailedLogins {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
    /// After this, with no new failure, the count is forgotten.
    forget_after: Duration,
}

impl FailedLogins {
    fn new(policy: &RateLimits, now: Instant) -> Self {
        FailedLogins {
            count: 0,
            last: now,
            locked_until: None,
            forget_after: Duration::from_secs_f64(policy.failed_login_lockout_max),
        }
    }

    /// Counts a failure; from the `failed_logins`th on, each locks the
    /// account, twice as long as the one before, up to the maximum.
    fn failed(&mut self, policy: &RateLimits, now: Instant) {
        self.count += 1;
        self.last = now;
        if self.count >= policy.failed_logins {
            let doublings = (self.count - policy.failed_logins).min(30);
            let seconds =
                (policy.failed_login_lockout * f64::from(1u32 << doublings)).min(policy.failed_login_lockout_max);
            self.locked_until = Some(now + Duration::from_secs_f64(seconds));
        }
    }

    fn locked_for(&self, now: Instant) -> Option<Duration> {
        self.locked_until.filter(|until| *until > now).map(|until| until - now)
    }
}

impl Idle for FailedLogins {
    fn idle(&self, now: Instant) -> bool {
        self.locked_for(now).is_none() && now.saturating_duration_since(self.last) > self.forget_after
    }

    fn last_used(&self) -> Instant {
        self.last
    }
}

/// An entry that may be dropped once idle, when the map is swept.
trait Idle {
    fn idle(&self, now: Instant) -> bool;
    fn last_used(&self) -> Instant;
}

/// A map of at most [`MAX_TRACKED`] entries: idle ones are swept out now
/// and then, and when it is full the least recently used half goes (who
/// was dropped starts afresh, which errs on the lenient side).
struct Tracked<K, V> {
    inner: Mutex<TrackedInner<K, V>>,
}

struct TrackedInner<K, V> {
    entries: HashMap<K, V>,
    swept: Option<Instant>,
}

impl<K, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked {
            inner: Mutex::new(TrackedInner {
                entries: HashMap::new(),
                swept: None,
            }),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Idle> Tracked<K, V> {
    /// Runs `f` on the entry of `key` (`None` if there is none; leaving it
    /// `None` removes it).
    fn with<T>(&self, key: K, now: Instant, f: impl FnOnce(&mut Option<V>, Instant) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY)
        {
            inner.entries.retain(|_, v| !v.idle(now));
            inner.swept = Some(now);
        }
        let mut entry = inner.entries.remove(&key);
        let out = f(&mut entry, now);
        if let Some(value) = entry {
            if inner.entries.len() >= MAX_TRACKED {
                inner.make_room(now);
            }
            inner.entries.insert(key, value);
        }
        out
    }
}

impl<K: Eq + Hash + Clone, V: Idle> TrackedInner<K, V> {
    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, v| !v.idle(now));
        if self.entries.len() < MAX_TRACKED / 2 {
            return;
        }
        let mut ages: Vec<(Instant, K)> = self.entries.iter().map(|(k, v)| (v.last_used(), k.clone())).collect();
        let half = ages.len() / 2;
        ages.select_nth_unstable_by_key(half, |(used, _)| *used);
        for (_, key) in &ages[..half] {
            self.entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_the_next_token_comes() {
        let start = Instant::now();
        let mut bucket = Bucket::full(limit(0.5, 3), start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        assert_eq!(bucket.take(start), Err(2000));
        let later = start + Duration::from_millis(1500);
        assert_eq!(bucket.take(later), Err(500));
        assert!(!bucket.idle(later));
        // Waiting exactly as long as told is enough.
        assert_eq!(bucket.take(later + Duration::from_millis(500)), Ok(()));
        assert!(bucket.idle(later + Duration::from_secs(7)));
    }

    #[test]
    fn wrong_passwords_lock_for_longer_each_time_up_to_the_maximum() {
        let policy = RateLimits {
            failed_logins: 2,
            failed_login_lockout: 1.0,
            failed_login_lockout_max: 3.0,
            ..RateLimits::default()
        };
        let start = Instant::now();
        let mut entry = FailedLogins::new(&policy, start);
        entry.failed(&policy, start);
        assert_eq!(entry.locked_for(start), None);
        entry.failed(&policy, start);
        assert_eq!(entry.locked_for(start), Some(Duration::from_secs(1)));
        let at = |s: u64| start + Duration::from_secs(s);
        entry.failed(&policy, at(1));
        assert_eq!(entry.locked_for(at(1)), Some(Duration::from_secs(2)));
        entry.failed(&policy, at(3));
        assert_eq!(entry.locked_for(at(3)), Some(Duration::from_secs(3)));
        assert!(!entry.idle(at(6)));
        assert!(entry.idle(at(7)));
    }

    struct Stamp(Instant, bool);

    impl Idle for Stamp {
        fn idle(&self, _: Instant) -> bool {
            self.1
        }
        fn last_used(&self) -> Instant {
            self.0
        }
    }

    #[test]
    fn the_map_stays_bounded_and_keeps_the_recent_entries() {
        let tracked: Tracked<usize, Stamp> = Tracked::default();
        let start = Instant::now();
        for i in 0..MAX_TRACKED + 10 {
            let at = start + Duration::from_millis(i as u64);
            tracked.with(i, at, |e, now| *e = Some(Stamp(now, false)));
        }
        let inner = tracked.inner.lock().unwrap();
        assert!(inner.entries.len() <= MAX_TRACKED);
        assert!(inner.entries.contains_key(&(MAX_TRACKED + 9)));
        assert!(!inner.entries.contains_key(&0));
        drop(inner);
        // Idle entries go at the next sweep.
        tracked.with(0, start + SWEEP_EVERY * 2, |e, now| *e = Some(Stamp(now, true)));
        tracked.with(1, start + SWEEP_EVERY * 4, |_, _| ());
        assert!(!tracked.inner.lock().unwrap().entries.contains_key(&0));
    }
}
