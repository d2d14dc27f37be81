//! The admin room, `#admins:<server>`: made at first start by the server's
//! bot, `@conduit:<server>`, who invites every server admin and answers the
//! commands they send there (a message starting with `!admin`, see
//! [`super::admin_commands`]) with an `m.notice`.
//!
//! The timeline tells a watcher of each new message in the room; the
//! watcher hands commands over a channel to the bot's worker, so the
//! sender's request never waits for a command to run.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use ruma::events::TimelineEventType;
use ruma::state_res::Event;
use ruma::{CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::json;
use tokio::sync::mpsc;

use super::rooms::{CreateRoom, Preset};
use super::timeline::{EventSpec, EventSubscriber, PersistedEvent};
use super::users::DISPLAYNAME;
use super::{admin_commands, ServiceError, ServiceResult, Services};
use crate::database::admin_room::AdminRoomTables;
use crate::database::{Batch, Db};

/// The bot's localpart.
pub const BOT_LOCALPART: &str = "conduit";
/// The admin room alias's localpart.
pub const ALIAS_LOCALPART: &str = "admins";
/// What starts a command in the admin room.
pub const COMMAND_PREFIX: &str = "!admin";

const ROOM_NAME: &str = "Admins";
const TOPIC: &str = "This server's admin room. Server admins give commands to the server's bot here: \
                     a message starting with !admin, e.g. \"!admin help\" or \"!admin users list\".";

/// Commands waiting for the bot at most; more are dropped (and logged).
const QUEUED_COMMANDS: usize = 64;

/// A message that starts with the command prefix, as the bot receives it.
#[derive(Debug)]
struct CommandMessage {
    event_id: OwnedEventId,
    sender: OwnedUserId,
    body: String,
}

pub struct AdminRoomService {
    tables: AdminRoomTables,
    bot: OwnedUserId,
    /// The room's ID once made or read (shared with the watcher).
    room_id: Arc<RwLock<Option<OwnedRoomId>>>,
    /// The watcher's end of the command queue.
    commands: mpsc::Sender<CommandMessage>,
    /// The bot's end, taken by its worker when the server starts.
    inbox: Mutex<Option<mpsc::Receiver<CommandMessage>>>,
    started: Instant,
}

impl AdminRoomService {
    pub fn new(db: Db, server_name: &ruma::ServerName) -> ServiceResult<Self> {
        let bot = UserId::parse_with_server_name(BOT_LOCALPART, server_name)
            .map_err(|e| ServiceError::Internal(format!("the bot's user ID: {e}")))?;
        let (commands, inbox) = mpsc::channel(QUEUED_COMMANDS);
        Ok(Self {
            tables: AdminRoomTables::new(db),
            bot,
            room_id: Default::default(),
            commands,
            inbox: Mutex::new(Some(inbox)),
            started: Instant::now(),
        })
    }

    /// The server's bot, `@conduit:<server>`.
    pub fn bot(&self) -> &UserId {
        &self.bot
    }

    pub fn is_bot(&self, user_id: &UserId) -> bool {
        *user_id == *self.bot
    }

    /// The admin room's ID, once it exists.
    pub fn room_id(&self) -> Option<OwnedRoomId> {
        self.room_id.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Seconds since the services were built.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// What the timeline tells of new events.
    pub fn watcher(&self) -> Arc<dyn EventSubscriber> {
        Arc::new(Watcher {
            bot: self.bot.clone(),
            room_id: self.room_id.clone(),
            commands: self.commands.clone(),
        })
    }

    /// At start-up: the bot's account and the admin room, each made if
    /// missing. Every admin there is then is invited to a new room.
    pub fn ensure(&self, s: &Services) -> ServiceResult<()> {
        if !s.users.exists(&self.bot)? {
            s.users.register_server_account(&s.devices, &self.bot, None)?;
            s.users.set_profile_field(&self.bot, DISPLAYNAME, Some("Conduit"))?;
            tracing::info!(user_id = %self.bot, "server bot created");
        } else if !s.users.is_server_account(&self.bot)? {
            tracing::warn!(user_id = %self.bot, "the server bot's user ID is a person's account; the bot acts as it");
        }
        if let Some(stored) = self.tables.room_id()? {
            let room_id = OwnedRoomId::try_from(stored)
                .map_err(|e| ServiceError::Internal(format!("the stored admin room ID: {e}")))?;
            *self.room_id.write().unwrap_or_else(|e| e.into_inner()) = Some(room_id);
            return Ok(());
        }
        let room_id = match s.rooms.create_server_room(s, &self.bot, admin_room(true)) {
            // Taken before this server had an admin room: the room goes
            // without the alias rather than the server without its room.
            Err(ServiceError::RoomInUse(_)) => {
                tracing::warn!(
                    alias = ALIAS_LOCALPART,
                    "the admin room's alias is taken; made without it"
                );
                s.rooms.create_server_room(s, &self.bot, admin_room(false))?
            }
            created => created?,
        };
        self.tables.put_room_id(room_id.as_str())?;
        *self.room_id.write().unwrap_or_else(|e| e.into_inner()) = Some(room_id.clone());
        tracing::info!(%room_id, "admin room created");
        for admin in s.users.admins()? {
            self.invite_if_admin(s, &admin);
        }
        Ok(())
    }

    /// Invites `user_id` to the admin room if they are a server admin who
    /// is neither in it nor invited (nor banned). Never fails the caller
    /// (a registration, an admin flag given): a failure is logged.
    pub fn invite_if_admin(&self, s: &Services, user_id: &UserId) {
        if let Err(e) = self.try_invite(s, user_id) {
            tracing::warn!(%user_id, error = %e, "could not invite an admin to the admin room");
        }
    }

    fn try_invite(&self, s: &Services, user_id: &UserId) -> ServiceResult<()> {
        let Some(room_id) = self.room_id() else {
            return Ok(());
        };
        if self.is_bot(user_id) || !s.users.is_admin(user_id)? {
            return Ok(());
        }
        if let Some("join" | "invite" | "ban") = s.timeline.membership(&room_id, user_id)?.as_deref() {
            return Ok(());
        }
        s.rooms
            .set_membership(s, &room_id, &self.bot, user_id, "invite", None)?;
        tracing::info!(%user_id, "admin invited to the admin room");
        Ok(())
    }

    /// Posts the bot's answer to `to` as a notice replying to it, the
    /// text as it is and in `<pre><code>` (tables keep their columns).
    fn reply(&self, s: &Services, room_id: &RoomId, to: &OwnedEventId, text: &str) -> ServiceResult<()> {
        let content = json!({
            "msgtype": "m.notice",
            "body": text,
            "format": "org.matrix.custom.html",
            "formatted_body": format!("<pre><code>{}</code></pre>", escape_html(text)),
            "m.relates_to": {"m.in_reply_to": {"event_id": to}},
        });
        let spec = EventSpec {
            event_type: TimelineEventType::RoomMessage,
            content: super::timeline::to_object(content)?,
            state_key: None,
            redacts: None,
            origin_server_ts: None,
        };
        s.timeline.append(s, room_id, &self.bot, spec, None)?;
        Ok(())
    }
}

/// The admin room's `createRoom`: private, invite-only, out of the
/// directory, and kept to this server (its commands are ours).
fn admin_room(with_alias: bool) -> CreateRoom {
    let mut creation_content = serde_json::Map::new();
    creation_content.insert("m.federate".to_owned(), false.into());
    CreateRoom {
        preset: Some(Preset::PrivateChat),
        public: false,
        alias_localpart: with_alias.then(|| ALIAS_LOCALPART.to_owned()),
        name: Some(ROOM_NAME.to_owned()),
        topic: Some(TOPIC.to_owned()),
        creation_content: Some(creation_content),
        ..CreateRoom::default()
    }
}

/// Tells the bot of each text message in the admin room that starts with
/// the command prefix, other than its own.
struct Watcher {
    bot: OwnedUserId,
    room_id: Arc<RwLock<Option<OwnedRoomId>>>,
    commands: mpsc::Sender<CommandMessage>,
}

impl EventSubscriber for Watcher {
    fn stage(&self, _: &Services, _: &mut Batch, _: &PersistedEvent<'_>) -> ServiceResult<()> {
        Ok(())
    }

    fn committed(&self, event: &PersistedEvent<'_>) {
        if event.pdu.event_type() != &TimelineEventType::RoomMessage || *event.pdu.sender() == *self.bot {
            return;
        }
        let in_admin_room = self
            .room_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .is_some_and(|room_id| room_id == event.room_id);
        if !in_admin_room {
            return;
        }
        let Some(CanonicalJsonValue::Object(content)) = event.object.get("content") else {
            return;
        };
        let text = |name: &str| match content.get(name) {
            Some(CanonicalJsonValue::String(value)) => Some(value.as_str()),
            _ => None,
        };
        let Some(body) = text("body").filter(|body| is_command(body)) else {
            return;
        };
        if text("msgtype") != Some("m.text") {
            return;
        }
        let message = CommandMessage {
            event_id: event.event_id.to_owned(),
            sender: event.pdu.sender().to_owned(),
            body: body.to_owned(),
        };
        if let Err(e) = self.commands.try_send(message) {
            tracing::warn!(error = %e, "admin room command dropped: the bot is busy or stopped");
        }
    }

    fn aborted(&self, _: &PersistedEvent<'_>) {}
}

/// Whether a message is meant for the bot: its first word is the prefix.
pub fn is_command(body: &str) -> bool {
    body.split_whitespace().next() == Some(COMMAND_PREFIX)
}

/// The bot: answers the admin room's commands one after another until
/// `stop` turns true.
pub async fn run_bot(services: Arc<Services>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let inbox = services
        .admin_room
        .inbox
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(mut inbox) = inbox else {
        return;
    };
    loop {
        let message = tokio::select! {
            message = inbox.recv() => message,
            _ = stop.changed() => return,
        };
        let Some(message) = message else {
            return;
        };
        // A command that panics loses its answer, not the bot.
        if tokio::spawn(answer(services.clone(), message)).await.is_err() {
            tracing::error!("an admin room command panicked");
        }
    }
}

async fn answer(services: Arc<Services>, message: CommandMessage) {
    let CommandMessage { event_id, sender, body } = message;
    let admin = {
        let sender = sender.clone();
        services
            .run(move |s| Ok(sender.server_name() == s.config.server_name && s.users.is_admin(&sender)?))
            .await
    };
    let text = match admin {
        Ok(true) => match admin_commands::parse_room_command(&body) {
            Ok(command) => {
                // Not the command itself: it may hold a password.
                tracing::info!(%sender, "admin room command");
                match admin_commands::execute(&services, command, &sender).await {
                    Ok(output) => output,
                    Err(e) => format!("error: {e}\n"),
                }
            }
            // Help, or clap's account of what was wrong.
            Err(text) => text,
        },
        Ok(false) => format!("{sender} is not a server admin; only server admins may give commands here.\n"),
        Err(e) => format!("error: {e}\n"),
    };
    let Some(room_id) = services.admin_room.room_id() else {
        return;
    };
    let posted = services
        .run(move |s| s.admin_room.reply(s, &room_id, &event_id, &text))
        .await;
    if let Err(e) = posted {
        tracing::warn!(error = %e, "the bot could not answer in the admin room");
    }
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_messages_whose_first_word_is_the_prefix_are_commands() {
        assert!(is_command("!admin users list"));
        assert!(is_command("  !admin\thelp"));
        assert!(is_command("!admin"));
        assert!(!is_command("!administrator users list"));
        assert!(!is_command("hello !admin users list"));
        assert!(!is_command(""));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape_html("<b>&\"x\"</b>"), "&lt;b&gt;&amp;&quot;x&quot;&lt;/b&gt;");
    }
}
