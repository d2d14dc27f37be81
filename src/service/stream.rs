//! The server-wide stream position that /sync tokens name, and the wake-ups
//! of waiting syncs.
//!
//! Positions come from the database's durable counter. Two writers can
//! commit out of order (room A takes 5, room B takes 6 and commits first),
//! so a sync must not read past a position still being written: the
//! *visible* position is the highest one below every position in flight.
//!
//! Each user has a channel carrying the newest position relevant to them;
//! a waiting sync sleeps on its own user's channel only, so an event wakes
//! the members of its room and nobody else.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

use super::{PruneSchedule, ServiceError, ServiceResult};
use crate::database::Db;

pub struct Stream {
    db: Db,
    /// Syncs waiting now (for metrics).
    waiters: AtomicUsize,
    in_flight: Mutex<BTreeSet<u64>>,
    visible: watch::Sender<u64>,
    users: Mutex<UserChannels>,
}

/// A channel for each user with a sync waiting (or lately waiting).
struct UserChannels {
    senders: HashMap<OwnedUserId, watch::Sender<u64>>,
    schedule: PruneSchedule,
}

/// User channels kept before those nobody waits on are dropped.
const USER_CHANNELS_KEPT: usize = 256;

/// Counts a waiting sync for as long as it lives (also when the wait is
/// dropped: a client that hangs up).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A reserved position; hand it back to [`Stream::finish`] once written (or
/// after the write failed: then nothing is stored under it).
#[must_use]
pub struct Ticket(pub u64);

impl Stream {
    pub fn new(db: Db) -> Self {
        let (visible, _) = watch::channel(db.current_count());
        Self {
            db,
            waiters: AtomicUsize::new(0),
            in_flight: Mutex::new(BTreeSet::new()),
            visible,
            users: Mutex::new(UserChannels {
                senders: HashMap::new(),
                schedule: PruneSchedule::new(USER_CHANNELS_KEPT),
            }),
        }
    }

    /// Reserves the next position.
    pub fn begin(&self) -> ServiceResult<Ticket> {
        let mut in_flight = self.lock_in_flight()?;
        let count = self.db.next_count()?;
        in_flight.insert(count);
        Ok(Ticket(count))
    }

    /// Releases a position and wakes `users` (whose data changed at it).
    pub fn finish<'a>(&self, ticket: Ticket, users: impl IntoIterator<Item = &'a UserId>) {
        let visible = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight.remove(&ticket.0);
            // Everything below the oldest write in flight is committed; with
            // nothing in flight, everything up to the counter is.
            match in_flight.first() {
                Some(oldest) => oldest - 1,
                None => self.db.current_count(),
            }
        };
        self.visible.send_if_modified(|v| {
            if visible > *v {
                *v = visible;
                true
            } else {
                false
            }
        });
        let channels = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for user in users {
            if let Some(sender) = channels.senders.get(user) {
                sender.send_if_modified(|v| {
                    if ticket.0 > *v {
                        *v = ticket.0;
                        true
                    } else {
                        false
                    }
                });
            }
        }
    }

    /// The highest position all of whose writes are committed.
    pub fn visible(&self) -> u64 {
        *self.visible.borrow()
    }

    /// Starts watching `user`'s changes. Subscribe before reading, then
    /// [`Stream::wait`] with the position read up to: nothing finished in
    /// between is missed.
    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<u64> {
        let mut channels = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let UserChannels { senders, schedule } = &mut *channels;
        if schedule.due(senders.len()) {
            // Nobody waits on a channel without receivers; a later sync
            // makes a new one (it waits only for changes after it read).
            senders.retain(|_, sender| sender.receiver_count() > 0);
            schedule.pruned(senders.len());
        }
        senders
            .entry(user.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    #[cfg(test)]
    fn channels(&self) -> usize {
        self.users.lock().unwrap().senders.len()
    }

    /// Waits up to `timeout` for a change to the watched user after `read_up_to`,
    /// and returns once that change is visible (or at the timeout).
    pub async fn wait(&self, mut user_rx: watch::Receiver<u64>, read_up_to: u64, timeout: Duration) {
        let _waiting = Waiting::new(&self.waiters);
        let mut visible_rx = self.visible.subscribe();
        let wait = async {
            let target = match user_rx.wait_for(|v| *v > read_up_to).await {
                Ok(v) => *v,
                Err(_) => return,
            };
            let _ = visible_rx.wait_for(|v| *v >= target).await;
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }

    /// Syncs waiting for a change now.
    pub fn waiters(&self) -> usize {
        self.waiters.load(Ordering::Relaxed)
    }

    fn lock_in_flight(&self) -> ServiceResult<std::sync::MutexGuard<'_, BTreeSet<u64>>> {
        self.in_flight
            .lock()
            .map_err(|_| ServiceError::Internal("stream lock poisoned".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;

    #[test]
    fn visible_position_waits_for_the_oldest_write_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let stream = Stream::new(open_test_db(dir.path()));
        let a = stream.begin().unwrap();
        let b = stream.begin().unwrap();
        let (a_pos, b_pos) = (a.0, b.0);
        assert!(b_pos > a_pos);
        stream.finish(b, []);
        assert_eq!(stream.visible(), a_pos - 1, "b is written, a is not");
        stream.finish(a, []);
        assert_eq!(stream.visible(), b_pos);
    }

    #[test]
    fn channels_of_users_no_longer_syncing_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let stream = Stream::new(open_test_db(dir.path()));
        let waiting: OwnedUserId = "@waiting:x".try_into().unwrap();
        let receiver = stream.subscribe(&waiting);
        for i in 0..10 * USER_CHANNELS_KEPT {
            let user: OwnedUserId = format!("@u{i}:x").try_into().unwrap();
            drop(stream.subscribe(&user));
        }
        assert!(stream.channels() <= USER_CHANNELS_KEPT + 1, "{}", stream.channels());
        // The user still waiting keeps their channel and is woken.
        let t = stream.begin().unwrap();
        let pos = t.0;
        stream.finish(t, [waiting.as_ref()]);
        assert_eq!(*receiver.borrow(), pos);
    }

    #[tokio::test]
    async fn a_waiting_user_wakes_for_their_change_only() {
        let dir = tempfile::tempdir().unwrap();
        let stream = std::sync::Arc::new(Stream::new(open_test_db(dir.path())));
        let alice: &UserId = "@alice:x".try_into().unwrap();
        let bob: &UserId = "@bob:x".try_into().unwrap();
        let since = stream.visible();

        let waiter = {
            let stream = stream.clone();
            let rx = stream.subscribe(alice);
            tokio::spawn(async move {
                stream.wait(rx, since, Duration::from_secs(10)).await;
                stream.visible()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = stream.begin().unwrap();
        stream.finish(t, [bob]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "bob's change must not wake alice");

        let t = stream.begin().unwrap();
        let pos = t.0;
        stream.finish(t, [alice]);
        let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(seen >= pos);
    }
}
