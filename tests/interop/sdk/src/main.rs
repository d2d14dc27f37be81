//! Interop scenarios driven by matrix-sdk (matrix-rust-sdk, the engine of
//! Element X) against a running Conduit. `tests/interop/run.py` starts the
//! server and runs this binary; a non-zero exit is a failed scenario.
//!
//! Subcommands:
//! - `backup-and-verify URL`: two matrix-sdk users chat in an encrypted room,
//!   bootstrap cross-signing, verify each other, one enables recovery (secret
//!   storage and key backup), and a second login of that user restores from
//!   the backup and decrypts the earlier history.
//! - `reply URL USER PASSWORD ROOM EXPECT REPLY`: logs in, joins ROOM (an
//!   invite is waiting), waits until it decrypts EXPECT, answers REPLY.
//!   run.py pairs it with a matrix-nio user.
//! - `room-list URL [--server-counts]`: the room list of Element X over
//!   simplified sliding sync (MSC4186); see `room_list.rs`.
#![recursion_limit = "256"]

mod room_list;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::TimelineEventKind;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::account::register;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::uiaa::{AuthData, Dummy};
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::events::{AnySyncMessageLikeEvent, AnySyncTimelineEvent, InitialStateEvent};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use matrix_sdk::{Client, Room};
use tracing::info;

/// Everything a client saw in room timelines, as sync delivered it.
#[derive(Default)]
struct Seen {
    /// (room, sender, body) of each decrypted or plain text message.
    texts: Vec<(OwnedRoomId, OwnedUserId, String)>,
    /// Event IDs of events that stayed encrypted.
    undecryptable: Vec<String>,
}

/// A matrix-sdk client with an in-memory store and a record of what its
/// syncs delivered.
struct User {
    client: Client,
    seen: Arc<Mutex<Seen>>,
    password: String,
}

impl User {
    async fn new(base: &str, password: &str) -> Result<Self> {
        let client = Client::builder().homeserver_url(base).build().await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let texts = seen.clone();
        client.add_event_handler(move |event: OriginalSyncRoomMessageEvent, room: Room| {
            let texts = texts.clone();
            async move {
                let body = event.content.body().to_owned();
                texts
                    .lock()
                    .unwrap()
                    .texts
                    .push((room.room_id().to_owned(), event.sender, body));
            }
        });
        let failures = seen.clone();
        client.add_event_handler(move |event: OriginalSyncRoomEncryptedEvent| {
            let failures = failures.clone();
            async move {
                failures.lock().unwrap().undecryptable.push(event.event_id.to_string());
            }
        });
        Ok(Self {
            client,
            seen,
            password: password.to_owned(),
        })
    }

    /// Registers `name` (the server's dummy stage, no session needed).
    async fn register(base: &str, name: &str) -> Result<Self> {
        let user = Self::new(base, &format!("pw-{name}")).await?;
        let mut request = register::v3::Request::new();
        request.username = Some(name.to_owned());
        request.password = Some(user.password.clone());
        request.initial_device_display_name = Some(format!("{name} matrix-sdk"));
        request.auth = Some(AuthData::Dummy(Dummy::new()));
        user.client
            .matrix_auth()
            .register(request)
            .await
            .with_context(|| format!("register {name}"))?;
        user.sync(0).await?;
        Ok(user)
    }

    /// Logs in as `name` on a new device.
    async fn login(base: &str, name: &str, password: &str, device: &str) -> Result<Self> {
        let user = Self::new(base, password).await?;
        user.client
            .matrix_auth()
            .login_username(name, password)
            .initial_device_display_name(device)
            .await
            .with_context(|| format!("login {name}"))?;
        user.sync(0).await?;
        Ok(user)
    }

    fn id(&self) -> OwnedUserId {
        self.client.user_id().expect("logged in").to_owned()
    }

    /// One sync (long-polling up to `timeout_ms`), then the key uploads and
    /// queries the SDK schedules after it.
    async fn sync(&self, timeout_ms: u64) -> Result<()> {
        let settings = SyncSettings::default().timeout(Duration::from_millis(timeout_ms));
        self.client.sync_once(settings).await.context("sync")?;
        self.client.encryption().wait_for_e2ee_initialization_tasks().await;
        Ok(())
    }

    /// Syncs until `sender`'s message `body` arrives in `room` as plaintext.
    async fn wait_for_text(&self, room: &RoomId, sender: &UserId, body: &str, deadline: Instant) -> Result<()> {
        while Instant::now() < deadline {
            self.sync(1000).await?;
            let seen = self.seen.lock().unwrap();
            if seen.texts.iter().any(|(r, s, b)| r == room && s == sender && b == body) {
                return Ok(());
            }
        }
        let seen = self.seen.lock().unwrap();
        bail!(
            "{} never decrypted {body:?} from {sender}; events that stayed encrypted: {:?}",
            self.id(),
            seen.undecryptable
        )
    }

    /// Syncs until `room` shows `user` as joined.
    async fn wait_for_member(&self, room: &RoomId, user: &UserId, deadline: Instant) -> Result<Room> {
        while Instant::now() < deadline {
            self.sync(1000).await?;
            if let Some(room) = self.client.get_room(room) {
                if room
                    .get_member_no_sync(user)
                    .await?
                    .is_some_and(|m| *m.membership() == MembershipState::Join)
                {
                    return Ok(room);
                }
            }
        }
        bail!("{} never saw {user} join {room}", self.id())
    }

    async fn send_text(&self, room: &RoomId, body: &str) -> Result<()> {
        let room = self
            .client
            .get_room(room)
            .ok_or_else(|| anyhow!("{} does not know {room}", self.id()))?;
        ensure!(
            room.latest_encryption_state().await?.is_encrypted(),
            "the room is not encrypted for {}",
            self.id()
        );
        room.send(RoomMessageEventContent::text_plain(body))
            .await
            .context("send")?;
        Ok(())
    }

    /// Whether this client, asking the server afresh, sees `other`'s
    /// cross-signing identity as verified by its own user-signing key.
    async fn sees_verified(&self, other: &UserId) -> Result<bool> {
        let identity = self
            .client
            .encryption()
            .request_user_identity(other)
            .await?
            .ok_or_else(|| anyhow!("{} has no cross-signing identity for {}", self.id(), other))?;
        Ok(identity.is_verified())
    }
}

fn deadline(seconds: u64) -> Instant {
    Instant::now() + Duration::from_secs(seconds)
}

/// Creates an encrypted room, invites `guest` and waits for the join.
async fn encrypted_room(host: &User, guest: &User) -> Result<OwnedRoomId> {
    let mut request = create_room::v3::Request::new();
    request.name = Some("Secrets".to_owned());
    request.invite = vec![guest.id()];
    request.is_direct = true;
    request.initial_state =
        vec![
            InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                .to_raw_any(),
        ];
    let room = host.client.create_room(request).await.context("create room")?;
    let room_id = room.room_id().to_owned();
    guest.sync(0).await?;
    guest.client.join_room_by_id(&room_id).await.context("join")?;
    host.wait_for_member(&room_id, &guest.id(), deadline(30)).await?;
    guest.sync(0).await?;
    Ok(room_id)
}

/// The texts of the room's history as `user` reads it through /messages,
/// oldest first; fails if any message stayed encrypted.
async fn history(user: &User, room_id: &RoomId) -> Result<Vec<String>> {
    let room = user
        .client
        .get_room(room_id)
        .ok_or_else(|| anyhow!("{} does not know the room", user.id()))?;
    let mut options = MessagesOptions::backward();
    options.limit = 100u32.into();
    let messages = room.messages(options).await.context("messages")?;
    let mut texts = Vec::new();
    for event in messages.chunk.iter().rev() {
        match &event.kind {
            TimelineEventKind::UnableToDecrypt { utd_info, .. } => {
                let sender = event.raw().get_field::<String>("sender").ok().flatten();
                bail!(
                    "{} could not decrypt {:?} from {sender:?}: {:?}",
                    user.id(),
                    event.event_id(),
                    utd_info.reason
                )
            }
            kind => {
                if let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(message))) =
                    kind.raw().deserialize()
                {
                    // Text only: the verification request is a room message too.
                    if let Some(MessageType::Text(text)) = message.as_original().map(|m| &m.content.msgtype) {
                        texts.push(text.body.clone());
                    }
                }
            }
        }
    }
    Ok(texts)
}

/// Syncs `users` in turn until `check` yields a value (at most 30 s).
async fn until<T, F, Fut>(users: &[&User], what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = deadline(30);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        for user in users {
            user.sync(200).await?;
        }
    }
}

/// Interactive verification as people do it in Element: `from` asks in
/// their direct room, `to` accepts, both compare seven emoji and confirm.
/// Every step travels through the server as encrypted room events.
async fn verify_by_emoji(from: &User, to: &User) -> Result<()> {
    let identity = from
        .client
        .encryption()
        .request_user_identity(&to.id())
        .await?
        .ok_or_else(|| anyhow!("{} sees no identity for {}", from.id(), to.id()))?;
    let request = identity.request_verification().await.context("request verification")?;
    let flow_id = request.flow_id().to_owned();
    let (to_client, from_id) = (to.client.clone(), from.id());

    let incoming = until(&[to], "the verification request", || {
        let (client, from_id, flow_id) = (to_client.clone(), from_id.clone(), flow_id.clone());
        async move { client.encryption().get_verification_request(&from_id, &flow_id).await }
    })
    .await?;
    incoming.accept().await.context("accept the request")?;
    until(&[from], "the request to be accepted", || {
        let ready = request.is_ready();
        async move { ready.then_some(()) }
    })
    .await?;

    let from_sas = request
        .start_sas()
        .await?
        .ok_or_else(|| anyhow!("SAS could not start"))?;
    let to_sas = until(&[to], "the SAS start", || {
        let (client, from_id, flow_id) = (to_client.clone(), from_id.clone(), flow_id.clone());
        async move {
            client
                .encryption()
                .get_verification(&from_id, &flow_id)
                .await
                .and_then(|v| v.sas())
        }
    })
    .await?;
    to_sas.accept().await.context("accept SAS")?;
    until(&[from, to], "the emoji on both sides", || {
        let ready = from_sas.can_be_presented() && to_sas.can_be_presented();
        async move { ready.then_some(()) }
    })
    .await?;

    let symbols = |sas: &matrix_sdk::encryption::verification::SasVerification| {
        sas.emoji()
            .map(|emoji| emoji.iter().map(|e| e.symbol).collect::<String>())
    };
    let (shown_from, shown_to) = (symbols(&from_sas), symbols(&to_sas));
    ensure!(
        shown_from.is_some() && shown_from == shown_to,
        "the emoji differ: {shown_from:?} / {shown_to:?}"
    );
    info!(emoji = shown_from.unwrap_or_default(), "both sides show the same emoji");
    from_sas.confirm().await.context("confirm")?;
    to_sas.confirm().await.context("confirm")?;
    until(&[from, to], "the verification to finish", || {
        let done = from_sas.is_done() && to_sas.is_done();
        let cancelled = from_sas.cancel_info().or(to_sas.cancel_info());
        async move {
            match cancelled {
                Some(info) => Some(Err(anyhow!("verification cancelled: {}", info.reason()))),
                None => done.then_some(Ok(())),
            }
        }
    })
    .await?
}

async fn backup_and_verify(base: &str) -> Result<()> {
    let alice = User::register(base, "sdkalice").await?;
    let bob = User::register(base, "sdkbob").await?;

    // Cross-signing: the first upload needs no password.
    for user in [&alice, &bob] {
        user.client
            .encryption()
            .bootstrap_cross_signing(None)
            .await
            .context("bootstrap cross-signing")?;
        let status = user.client.encryption().cross_signing_status().await;
        ensure!(
            status.is_some_and(|s| s.is_complete()),
            "{} has incomplete cross-signing",
            user.id()
        );
    }

    info!("both users bootstrapped cross-signing");

    let room_id = encrypted_room(&alice, &bob).await?;
    info!(%room_id, "bob joined the encrypted room");
    let texts = [
        (&alice, &bob, "first secret, from alice"),
        (&bob, &alice, "second secret, from bob"),
    ];
    for (sender, receiver, body) in texts {
        sender.send_text(&room_id, body).await?;
        receiver
            .wait_for_text(&room_id, &sender.id(), body, deadline(60))
            .await?;
        info!(receiver = %receiver.id(), body, "decrypted");
    }

    for (signer, signed) in [(&alice, &bob), (&bob, &alice)] {
        ensure!(
            !signer.sees_verified(&signed.id()).await?,
            "{} is verified before anyone verified it",
            signed.id()
        );
    }
    verify_by_emoji(&alice, &bob).await?;
    for (signer, signed) in [(&alice, &bob), (&bob, &alice)] {
        // The signatures go up with the clients' next outgoing requests.
        let (client, other) = (signer.client.clone(), signed.id());
        until(&[signer], "the signature on the other's master key", || {
            let (client, other) = (client.clone(), other.clone());
            async move {
                let identity = client.encryption().request_user_identity(&other).await.ok().flatten()?;
                identity.is_verified().then_some(())
            }
        })
        .await?;
        info!(signer = %signer.id(), signed = %signed.id(), "verified");
    }

    // Recovery: secret storage plus a key backup holding the room keys so far.
    let recovery_key = alice
        .client
        .encryption()
        .recovery()
        .enable()
        .wait_for_backups_to_upload()
        .await
        .context("enable recovery")?;
    info!("recovery enabled; room keys backed up");
    alice.send_text(&room_id, "third secret, after the backup").await?;
    alice
        .client
        .encryption()
        .backups()
        .wait_for_steady_state()
        .await
        .context("back up the new key")?;

    // A second login of alice: nothing decrypts until it recovers.
    let alice2 = User::login(base, "sdkalice", &alice.password, "alice's new phone").await?;
    ensure!(
        history(&alice2, &room_id).await.is_err(),
        "the new device decrypted history before recovering (test is not testing the backup)"
    );
    info!("the new device cannot read the history yet");
    alice2
        .client
        .encryption()
        .recovery()
        .recover(&recovery_key)
        .await
        .context("recover")?;
    alice2
        .client
        .encryption()
        .backups()
        .download_room_keys_for_room(&room_id)
        .await
        .context("download keys")?;
    let restored = history(&alice2, &room_id).await?;
    let want = [
        "first secret, from alice",
        "second secret, from bob",
        "third secret, after the backup",
    ];
    ensure!(restored == want, "restored history {restored:?}, expected {want:?}");
    info!(?restored, "the new device decrypted the history from the backup");

    // The recovered cross-signing keys make the new device trust what alice
    // verified on the old one, as the server now reports it.
    ensure!(
        alice2.sees_verified(&bob.id()).await?,
        "the new device does not see bob as verified"
    );
    let own = alice2.client.encryption().cross_signing_status().await;
    ensure!(
        own.is_some_and(|s| s.is_complete()),
        "the new device did not recover the cross-signing keys"
    );
    Ok(())
}

async fn reply(base: &str, args: &[String]) -> Result<()> {
    let [user, password, room, expect, answer] = args else {
        bail!("reply needs USER PASSWORD ROOM EXPECT REPLY");
    };
    let me = User::login(base, user, password, "matrix-sdk").await?;
    let room_id = RoomId::parse(room)?;
    me.client.join_room_by_id(&room_id).await.context("join")?;
    me.sync(0).await?;
    // run.py waits for this line before the other side sends.
    println!("joined");
    let deadline = deadline(60);
    while Instant::now() < deadline {
        me.sync(1000).await?;
        let sender = {
            let seen = me.seen.lock().unwrap();
            seen.texts
                .iter()
                .find(|(r, _, b)| *r == room_id && b == expect)
                .map(|(_, s, _)| s.clone())
        };
        if let Some(sender) = sender {
            ensure!(sender != me.id(), "the expected text came from myself");
            me.send_text(&room_id, answer).await?;
            println!("replied");
            return Ok(());
        }
    }
    let seen = me.seen.lock().unwrap();
    bail!(
        "never decrypted {expect:?}; events that stayed encrypted: {:?}",
        seen.undecryptable
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    // Progress and the SDK's own warnings go to stderr, which run.py shows
    // when a scenario fails.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "conduit_sdk_interop=info,matrix_sdk=warn,matrix_sdk_crypto=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [command, base] if command == "backup-and-verify" => backup_and_verify(base).await,
        [command, base, rest @ ..] if command == "reply" => reply(base, rest).await,
        [command, base] if command == "room-list" => room_list::room_list(base, false).await,
        [command, base, flag] if command == "room-list" && flag == "--server-counts" => {
            room_list::room_list(base, true).await
        }
        _ => bail!(
            "usage: conduit-sdk-interop backup-and-verify URL | reply URL USER PASSWORD ROOM EXPECT REPLY \
             | room-list URL [--server-counts]"
        ),
    }
}
