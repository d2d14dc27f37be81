//! `room-list URL [--server-counts]`: alice uses the room list of Element X
//! (matrix-sdk-ui's `SyncService` and `RoomListService`, simplified sliding
//! sync, MSC4186) while bob, a plain /sync v2 client, invites her to three
//! rooms and writes in them. Alice sees the invites in her list, joins, sees
//! the rooms ordered by their latest message, reads a plain and an
//! encrypted message through the `Timeline`, and her unread count goes to
//! zero once she sends a read receipt.
//!
//! Synapse sends a zero `notification_count` in every sliding sync room
//! (counting is left to clients), so by default the unread counts checked
//! are the ones the SDK computes from the events and receipts the server
//! sent, which is what Element X shows. `--server-counts` also requires the
//! server's own count to go above zero and back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures_util::{pin_mut, StreamExt};
use matrix_sdk::ruma::api::client::receipt::create_receipt::v3::ReceiptType;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, RoomId};
use matrix_sdk::sliding_sync::{Version, VersionBuilder};
use matrix_sdk::{Client, Room, RoomState};
use matrix_sdk_ui::eyeball_im::Vector;
use matrix_sdk_ui::room_list_service::filters::new_filter_non_left;
use matrix_sdk_ui::room_list_service::State as RoomListState;
use matrix_sdk_ui::sync_service::{State as SyncState, SyncService};
use matrix_sdk_ui::timeline::{LatestEventValue, RoomExt, Timeline};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{deadline, User};

/// How long any one thing alice waits for may take.
const WAIT: Duration = Duration::from_secs(30);

/// How often the server may expire alice's connections (M_UNKNOWN_POS)
/// before the scenario fails: a new connection should not be forgotten
/// within seconds.
const MAX_RESTARTS: usize = 2;

/// Alice on a fresh device: a client syncing only through the sync service
/// (room list and encryption sliding sync connections), and the rows of her
/// room list as Element X would draw them.
struct ListUser {
    client: Client,
    sync: SyncService,
    /// The rooms of `all_rooms` without the left ones, in the list's order.
    rows: Arc<Mutex<Vec<Room>>>,
    /// Woken on every change of the list (new rooms, reordering, or a
    /// room's notable info: name, membership, unread counts, latest event).
    changed: Arc<Notify>,
    list_task: JoinHandle<()>,
    /// Restarts of the sync service after M_UNKNOWN_POS.
    restarts: AtomicUsize,
}

impl Drop for ListUser {
    fn drop(&mut self) {
        self.list_task.abort();
    }
}

impl ListUser {
    /// Logs in with a password on a new device and starts syncing.
    async fn login(base: &str, name: &str, password: &str) -> Result<Self> {
        // As Element X does: use native sliding sync only if the server
        // advertises it in /versions (`org.matrix.simplified_msc3575`).
        let client = Client::builder()
            .homeserver_url(base)
            .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
            .build()
            .await
            .context("the server does not offer simplified sliding sync in /versions")?;
        ensure!(
            matches!(client.sliding_sync_version(), Version::Native),
            "sliding sync version is {:?}",
            client.sliding_sync_version()
        );
        client
            .matrix_auth()
            .login_username(name, password)
            .initial_device_display_name("room list")
            .await
            .with_context(|| format!("login {name}"))?;

        let sync = SyncService::builder(client.clone())
            .build()
            .await
            .context("build the sync service")?;
        sync.start().await;

        let rows = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let service = sync.room_list_service();
        let (task_rows, task_changed) = (rows.clone(), changed.clone());
        let list_task = tokio::spawn(async move {
            let list = match service.all_rooms().await {
                Ok(list) => list,
                Err(error) => {
                    tracing::error!(%error, "no all_rooms list");
                    return;
                }
            };
            let (entries, controller) = list.entries_with_dynamic_adapters(100);
            controller.set_filter(Box::new(new_filter_non_left()));
            pin_mut!(entries);
            let mut items = Vector::new();
            while let Some(diffs) = entries.next().await {
                for diff in diffs {
                    diff.apply(&mut items);
                }
                *task_rows.lock().unwrap() = items.iter().map(|item| (**item).clone()).collect();
                task_changed.notify_waiters();
            }
        });
        Ok(Self {
            client,
            sync,
            rows,
            changed,
            list_task,
            restarts: AtomicUsize::new(0),
        })
    }

    fn rows(&self) -> Vec<Room> {
        self.rows.lock().unwrap().clone()
    }

    /// Waits (at most `WAIT`) until `check` yields a value, checking on
    /// every change of the list and at least every quarter second (the
    /// timeline changes without touching the list). `what` and the list as
    /// it last was make the error.
    async fn wait_for<T>(&self, what: &str, mut check: impl AsyncCheck<T>) -> Result<T> {
        let deadline = Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            if let Some(value) = check.check(self).await {
                return Ok(value);
            }
            if let SyncState::Error(error) = self.sync.state().get() {
                // M_UNKNOWN_POS: the server forgot the connection. The SDK
                // has dropped `pos`; Element X starts the service again,
                // which begins a new connection. Anything else fails.
                let expired = format!("{error:?}").contains("UnknownPos");
                let restarts = self.restarts.fetch_add(1, Ordering::SeqCst);
                ensure!(
                    expired && restarts < MAX_RESTARTS,
                    "alice's sync service failed while waiting for {what} (restarts so far: {restarts}): {error:?}"
                );
                warn!(
                    what,
                    "the server expired the sliding sync connection (M_UNKNOWN_POS); restarting"
                );
                self.sync.start().await;
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {WAIT:?} waiting for {what}; alice's list: {}",
                    self.describe().await
                );
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    }

    /// The list as a person would read it: name, membership, unread counts.
    async fn describe(&self) -> String {
        let mut rows = Vec::new();
        for room in self.rows() {
            rows.push(format!(
                "{} ({:?}, unread {} / server {}, bump {:?}, preview {:?})",
                name(&room),
                room.state(),
                room.num_unread_notifications(),
                room.unread_notification_counts().notification_count,
                room.recency_stamp().map(u64::from),
                preview(&room).await
            ));
        }
        format!("[{}]", rows.join(", "))
    }

    fn names(&self) -> Vec<String> {
        self.rows().iter().map(name).collect()
    }

    fn row(&self, room_id: &RoomId) -> Option<Room> {
        self.rows().into_iter().find(|room| room.room_id() == room_id)
    }

    /// Waits until the first `expected.len()` rows are the named rooms in
    /// that order; then checks the server's bump stamps agree, so the order
    /// holds before the client knows any latest event too.
    async fn wait_for_order(&self, expected: &[&str]) -> Result<()> {
        let want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        self.wait_for(&format!("the list order {want:?}"), |user: &ListUser| {
            let names = user.names();
            std::future::ready((names.len() >= want.len() && names[..want.len()] == want[..]).then_some(()))
        })
        .await?;
        let rows = self.rows();
        let stamps: Vec<_> = rows
            .iter()
            .take(expected.len())
            .map(|r| r.recency_stamp().map(u64::from))
            .collect();
        ensure!(
            stamps.iter().all(Option::is_some) && stamps.windows(2).all(|w| w[0] > w[1]),
            "the list shows {expected:?} but the server's bump_stamps {stamps:?} disagree: {}",
            self.describe().await
        );
        Ok(())
    }
}

/// A condition `ListUser::wait_for` re-checks; any closure from the user to
/// a future of an option.
trait AsyncCheck<T> {
    fn check(&mut self, user: &ListUser) -> impl std::future::Future<Output = Option<T>>;
}

impl<T, F, Fut> AsyncCheck<T> for F
where
    F: FnMut(&ListUser) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    fn check(&mut self, user: &ListUser) -> impl std::future::Future<Output = Option<T>> {
        self(user)
    }
}

fn name(room: &Room) -> String {
    room.cached_display_name()
        .map(|n| n.to_string())
        .or_else(|| room.name())
        .unwrap_or_else(|| room.room_id().to_string())
}

/// The text a room list row shows under the name: the latest message.
async fn preview(room: &Room) -> Option<String> {
    match room.latest_event().await {
        LatestEventValue::Remote { content, .. } => Some(content.as_message()?.body().to_owned()),
        _ => None,
    }
}

/// The event ID of `body` if the timeline shows it as a (decrypted) text.
async fn find_in_timeline(timeline: &Timeline, body: &str) -> Option<OwnedEventId> {
    timeline.items().await.iter().find_map(|item| {
        let event = item.as_event()?;
        (event.content().as_message()?.body() == body)
            .then(|| event.event_id().map(ToOwned::to_owned))
            .flatten()
    })
}

/// Bob creates a room named `name` with alice invited.
async fn create_room(bob: &User, alice: &User, name: &str, encrypted: bool) -> Result<OwnedRoomId> {
    let mut request = create_room::v3::Request::new();
    request.name = Some(name.to_owned());
    request.invite = vec![alice.id()];
    if encrypted {
        request.initial_state =
            vec![
                InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                    .to_raw_any(),
            ];
    }
    let room = bob
        .client
        .create_room(request)
        .await
        .with_context(|| format!("create {name}"))?;
    Ok(room.room_id().to_owned())
}

/// Bob sends `body` to the room (encrypted if the room is).
async fn send(bob: &User, room_id: &RoomId, body: &str) -> Result<OwnedEventId> {
    let room = bob
        .client
        .get_room(room_id)
        .ok_or_else(|| anyhow!("bob does not know {room_id}"))?;
    let response = room
        .send(RoomMessageEventContent::text_plain(body))
        .await
        .with_context(|| format!("bob sends {body:?}"))?;
    Ok(response.response.event_id)
}

pub async fn room_list(base: &str, server_counts: bool) -> Result<()> {
    let started = Instant::now();
    let bob = User::register(base, "rlbob").await?;
    // Registered by one client, then used on a fresh device.
    let registered = User::register(base, "rlalice").await?;
    let alice_password = registered.password.clone();
    let alice = ListUser::login(base, "rlalice", &alice_password).await?;
    info!("alice logged in on a new device; sliding sync started");

    // 1. The list loads (the first responses came back), empty.
    alice
        .wait_for("the room list to load", |user: &ListUser| {
            let state = user.sync.room_list_service().state().get();
            std::future::ready((state == RoomListState::Running).then_some(()))
        })
        .await?;
    ensure!(
        alice.rows().is_empty(),
        "alice's new list is not empty: {}",
        alice.describe().await
    );

    // 2. Invites show up in the list; alice joins them.
    let a = create_room(&bob, &registered, "Room A", false).await?;
    let b = create_room(&bob, &registered, "Room B", false).await?;
    let c = create_room(&bob, &registered, "Room C", true).await?;
    drop(registered);
    let ids = [(&a, "Room A"), (&b, "Room B"), (&c, "Room C")];
    alice
        .wait_for("the three invites in the room list", |user: &ListUser| {
            let all = ids.iter().all(|(id, want)| {
                user.row(id)
                    .is_some_and(|room| room.state() == RoomState::Invited && name(&room) == *want)
            });
            std::future::ready(all.then_some(()))
        })
        .await?;
    info!(list = alice.describe().await, "alice sees the three invites");
    for (id, _) in ids {
        let room = alice.row(id).ok_or_else(|| anyhow!("{id} left the list"))?;
        room.join()
            .await
            .with_context(|| format!("alice joins {}", name(&room)))?;
    }
    alice
        .wait_for("the three rooms joined in the list", |user: &ListUser| {
            let all = ids.iter().all(|(id, want)| {
                user.row(id)
                    .is_some_and(|room| room.state() == RoomState::Joined && name(&room) == *want)
            });
            std::future::ready(all.then_some(()))
        })
        .await?;
    let room_c = alice.row(&c).ok_or_else(|| anyhow!("Room C left the list"))?;
    ensure!(
        room_c.latest_encryption_state().await?.is_encrypted(),
        "alice does not see Room C as encrypted"
    );
    // Element X subscribes to the rooms on screen (more state, a longer
    // timeline) and opens their timelines.
    alice
        .sync
        .room_list_service()
        .subscribe_to_rooms(&[a.as_ref(), b.as_ref(), c.as_ref()])
        .await;
    let mut timelines = Vec::new();
    for id in [&a, &b, &c] {
        let room = alice.row(id).ok_or_else(|| anyhow!("{id} left the list"))?;
        let timeline = room.timeline().await;
        timelines.push(timeline.with_context(|| format!("timeline of {}", name(&room)))?);
    }
    let [timeline_a, timeline_b, timeline_c] = &timelines[..] else {
        unreachable!("three rooms")
    };
    info!("alice joined the three rooms");

    // 3. One message per room, B, A then C: the list goes C, A, B.
    bob.wait_for_member(&c, alice.client.user_id().unwrap(), deadline(30))
        .await?;
    for (id, body) in [(&b, "hello B"), (&a, "hello A"), (&c, "hello C")] {
        send(&bob, id, body).await?;
    }
    alice.wait_for_order(&["Room C", "Room A", "Room B"]).await?;
    info!(list = alice.describe().await, "the list is in recency order");

    // 4. A new message in B: alice reads it, B comes to the top.
    send(&bob, &b, "B again").await?;
    alice
        .wait_for("\"B again\" in Room B's timeline and preview", |user: &ListUser| {
            let row = user.row(&b);
            async move {
                find_in_timeline(timeline_b, "B again").await?;
                (preview(&row?).await.as_deref() == Some("B again")).then_some(())
            }
        })
        .await?;
    alice.wait_for_order(&["Room B", "Room C", "Room A"]).await?;
    info!(list = alice.describe().await, "Room B moved to the top");

    // 5. An encrypted message in C: alice decrypts it.
    send(&bob, &c, "a secret in C").await?;
    alice
        .wait_for("alice to decrypt \"a secret in C\"", |_: &ListUser| async {
            find_in_timeline(timeline_c, "a secret in C").await
        })
        .await?;
    info!("alice decrypted the message in Room C");
    alice.wait_for_order(&["Room C", "Room B", "Room A"]).await?;

    // 6. Room A is unread until alice sends a read receipt.
    let last_in_a = send(&bob, &a, "A again").await?;
    let unread_a = |user: &ListUser| {
        let row = user.row(&a);
        std::future::ready(row.filter(|room| {
            room.num_unread_notifications() > 0
                && (!server_counts || room.unread_notification_counts().notification_count > 0)
        }))
    };
    let what = if server_counts {
        "Room A to show unread messages (and a server notification_count above 0)"
    } else {
        "Room A to show unread messages"
    };
    alice.wait_for(what, unread_a).await?;
    let seen = alice
        .wait_for("\"A again\" in Room A's timeline", |_: &ListUser| async {
            find_in_timeline(timeline_a, "A again").await
        })
        .await?;
    ensure!(
        seen == last_in_a,
        "the timeline's \"A again\" is {seen}, bob sent {last_in_a}"
    );
    info!(list = alice.describe().await, "Room A is unread");
    let sent = timeline_a
        .send_single_receipt(ReceiptType::Read, seen)
        .await
        .context("send the read receipt")?;
    ensure!(sent, "the timeline did not send the read receipt (it thinks A is read)");
    alice
        .wait_for("Room A's unread counts to drop to 0", |user: &ListUser| {
            let row = user.row(&a);
            std::future::ready(row.filter(|room| {
                room.num_unread_notifications() == 0
                    && room.num_unread_messages() == 0
                    && room.unread_notification_counts().notification_count == 0
            }))
        })
        .await?;
    info!(list = alice.describe().await, "Room A is read");

    alice.sync.stop().await;
    let restarts = alice.restarts.load(Ordering::SeqCst);
    info!(elapsed = ?started.elapsed(), restarts, "room list scenario passed");
    Ok(())
}
