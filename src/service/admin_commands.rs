//! The admin commands, one layer for the admin room's bot (`!admin …`)
//! and the command line (`conduit admin …`): what each does, and the text
//! that tells its outcome.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::admin::{UserChanges, UserOrder, UserQuery};
use super::admin_room::COMMAND_PREFIX;
use super::room_admin::{RoomOrder, RoomQuery};
use super::{now_ms, random_string, ServiceError, ServiceResult, Services};

/// Length of a password made up for an account.
const PASSWORD_LENGTH: usize = 20;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Serialized (as JSON), a command is the body of
/// `POST /_conduit/admin/v1/command`, how `conduit admin` reaches a running
/// server.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminCommand {
    /// Accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Rooms.
    #[command(subcommand)]
    Rooms(RoomsCommand),
    /// Registration tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Media of other servers kept here.
    #[command(subcommand)]
    Media(MediaCommand),
    /// The server itself.
    #[command(subcommand)]
    Server(ServerCommand),
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsersCommand {
    /// Lists the local accounts: user ID, admin, deactivated, display name.
    List,
    /// Creates an account; prints its password (a random one unless given).
    Create {
        name: String,
        #[arg(long, allow_hyphen_values = true)]
        password: Option<String>,
        #[arg(long)]
        admin: bool,
    },
    /// Sets a new password (a random one unless given) and logs every device out.
    ResetPassword {
        name: String,
        #[arg(long, allow_hyphen_values = true)]
        password: Option<String>,
    },
    /// Deactivates an account; with --erase, also forgets its profile and messages' content.
    Deactivate {
        name: String,
        #[arg(long)]
        erase: bool,
    },
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomsCommand {
    /// Lists the rooms: room ID, joined members, name.
    List,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokensCommand {
    /// Makes a new random registration token and prints it.
    Create {
        /// How many accounts it may register (default: any number).
        #[arg(long)]
        uses: Option<u64>,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaCommand {
    /// Forgets other servers' media fetched more than the given days ago
    /// (default: all of it); it is fetched again when asked for.
    Purge {
        #[arg(long, default_value_t = 0)]
        older_than_days: u32,
    },
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerCommand {
    /// Accounts, rooms, media and database sizes, uptime, version.
    Stats,
}

/// A command as typed in the admin room.
#[derive(Parser, Debug)]
#[command(name = COMMAND_PREFIX, arg_required_else_help = true, disable_version_flag = true)]
struct RoomCommandLine {
    #[command(subcommand)]
    command: AdminCommand,
}

/// Reads an admin room message (`!admin users list`); the error is clap's
/// text to show instead: the help asked for, or what is wrong and the usage.
/// Words are split as `split_words` does.
pub fn parse_room_command(body: &str) -> Result<AdminCommand, String> {
    RoomCommandLine::try_parse_from(split_words(body)?)
        .map(|line| line.command)
        .map_err(|e| e.render().to_string())
}

/// Splits a message into words as a shell would, so a password may hold a
/// space: white space separates words; `'…'` keeps what is inside as it
/// is; `"…"` (or a phone keyboard's `“…”`) too, but for `\"` and `\\`;
/// elsewhere `\` before a space, a quote or `\` keeps that character as
/// it is. Any other `\` is itself, so a password typed unquoted with one
/// is kept whole.
fn split_words(body: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let word = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a quote ' is not closed".to_owned()),
                    }
                }
            }
            '"' | '“' => {
                let word = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"' | '”') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("a quote \" is not closed".to_owned()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("a quote \" is not closed".to_owned()),
                    }
                }
            }
            '\\' => {
                let word = word.get_or_insert_with(String::new);
                match chars.next_if(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '“' | '\\')) {
                    Some(escaped) => word.push(escaped),
                    None => word.push('\\'),
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Runs one command as `actor` (the admin who gave it, or the server's bot
/// for the command line); its output, to show as it is.
pub async fn execute(services: &Arc<Services>, command: AdminCommand, actor: &UserId) -> ServiceResult<String> {
    match command {
        AdminCommand::Media(MediaCommand::Purge { older_than_days }) => {
            let before_ms = now_ms().saturating_sub(u64::from(older_than_days) * DAY_MS);
            let purged = services.media.purge_remote_cache(before_ms).await?;
            Ok(format!("purged {purged} media of other servers\n"))
        }
        AdminCommand::Server(ServerCommand::Stats) => {
            let media = services.media.usage().await?;
            services.run(move |s| server_stats(s, media)).await
        }
        command => {
            let actor = actor.to_owned();
            services.run(move |s| execute_stored(s, command, &actor)).await
        }
    }
}

/// The commands that only read and write the database.
fn execute_stored(s: &Services, command: AdminCommand, actor: &UserId) -> ServiceResult<String> {
    match command {
        AdminCommand::Users(command) => users(s, command, actor),
        AdminCommand::Rooms(RoomsCommand::List) => rooms(s),
        AdminCommand::Tokens(TokensCommand::Create { uses, expires_in_days }) => {
            let token = s.registration_tokens.create_random(uses, expires_in_days)?;
            Ok(format!("{}\n", token.token))
        }
        AdminCommand::Media(_) | AdminCommand::Server(_) => Err(ServiceError::Internal(
            "this command is not one of the stored ones".to_owned(),
        )),
    }
}

/// `@name:server` for a bare name; a full user ID as it is. The server's
/// bot is not an account to manage.
fn user_id(s: &Services, name: &str) -> ServiceResult<OwnedUserId> {
    let full = if name.starts_with('@') {
        name.to_owned()
    } else {
        format!("@{name}:{}", s.config.server_name)
    };
    let user_id = UserId::parse(full).map_err(|e| ServiceError::InvalidParam(format!("{name}: {e}")))?;
    if s.admin_room.is_bot(&user_id) {
        return Err(ServiceError::Forbidden(format!("{user_id} is the server's bot")));
    }
    Ok(user_id)
}

fn users(s: &Services, command: UsersCommand, actor: &UserId) -> ServiceResult<String> {
    match command {
        UsersCommand::List => {
            let query = UserQuery {
                from: 0,
                limit: usize::MAX,
                user_id: None,
                name: None,
                guests: true,
                deactivated: true,
                admins: None,
                order_by: UserOrder::Name,
                backwards: false,
            };
            let page = s.admin.list_users(s, &query)?;
            Ok(page
                .users
                .iter()
                .map(|u| {
                    format!(
                        "{}\t{}\t{}\t{}\n",
                        u.user_id,
                        if u.admin { "admin" } else { "-" },
                        if u.deactivated { "deactivated" } else { "active" },
                        u.displayname.as_deref().unwrap_or("")
                    )
                })
                .collect())
        }
        UsersCommand::Create { name, password, admin } => {
            let user_id = user_id(s, &name)?;
            if s.admin.user(s, &user_id)?.is_some() {
                return Err(ServiceError::BadRequest(format!("{user_id} exists already")));
            }
            let password = password.unwrap_or_else(|| random_string(PASSWORD_LENGTH));
            let changes = UserChanges {
                password: Some(password.clone()),
                admin: Some(admin),
                ..UserChanges::default()
            };
            s.admin.put_user(s, actor, &user_id, changes)?;
            Ok(format!("created {user_id} with password {password}\n"))
        }
        UsersCommand::ResetPassword { name, password } => {
            let user_id = user_id(s, &name)?;
            let password = password.unwrap_or_else(|| random_string(PASSWORD_LENGTH));
            s.admin.reset_password(s, &user_id, &password, true)?;
            Ok(format!("new password of {user_id}: {password}\n"))
        }
        UsersCommand::Deactivate { name, erase } => {
            let user_id = user_id(s, &name)?;
            s.admin.deactivate(s, &user_id, erase)?;
            Ok(format!("deactivated {user_id}\n"))
        }
    }
}

fn rooms(s: &Services) -> ServiceResult<String> {
    let query = RoomQuery {
        from: 0,
        limit: usize::MAX,
        order_by: RoomOrder::JoinedMembers,
        backwards: true,
        search_term: None,
    };
    let page = s.room_admin.list_rooms(s, &query)?;
    Ok(page
        .rooms
        .iter()
        .map(|r| {
            format!(
                "{}\t{}\t{}\n",
                r.room_id,
                r.joined_members,
                r.name.as_deref().unwrap_or("")
            )
        })
        .collect())
}

fn server_stats(s: &Services, media: super::media::MediaUsage) -> ServiceResult<String> {
    let accounts = s.users.all_accounts()?;
    let deactivated = accounts.iter().filter(|(_, record)| record.deactivated).count();
    let admins = s.users.admins()?.len();
    let rooms = s.timeline.room_ids()?.len();
    let events = s.timeline.estimated_event_count();
    let engine = s.engine_stats();
    let uptime = s.admin_room.uptime_secs();
    Ok(format!(
        "version\t{}\n\
         uptime\t{}d {}h {}m {}s\n\
         accounts\t{} ({} deactivated, {} admins)\n\
         rooms\t{}\n\
         events\tabout {} (rooms' timelines)\n\
         local media\t{} files, {} bytes\n\
         other servers' media\t{} files, {} bytes\n\
         database\t{} bytes on disk, {} bytes in memtables\n",
        env!("CARGO_PKG_VERSION"),
        uptime / 86400,
        uptime % 86400 / 3600,
        uptime % 3600 / 60,
        uptime % 60,
        accounts.len(),
        deactivated,
        admins,
        rooms,
        events,
        media.local_files,
        media.local_bytes,
        media.remote_files,
        media.remote_bytes,
        engine.sst_bytes,
        engine.memtable_bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_commands_parse_with_their_options() {
        assert_eq!(
            parse_room_command("!admin users create carol --admin --password s3cret"),
            Ok(AdminCommand::Users(UsersCommand::Create {
                name: "carol".to_owned(),
                password: Some("s3cret".to_owned()),
                admin: true,
            }))
        );
        assert_eq!(
            parse_room_command("!admin tokens create --uses 2"),
            Ok(AdminCommand::Tokens(TokensCommand::Create {
                uses: Some(2),
                expires_in_days: None,
            }))
        );
        assert_eq!(
            parse_room_command("!admin media purge"),
            Ok(AdminCommand::Media(MediaCommand::Purge { older_than_days: 0 }))
        );
    }

    #[test]
    fn words_are_split_as_a_shell_would() {
        let words = |body: &str| split_words(body).unwrap();
        assert_eq!(words("  !admin   users\tlist "), ["!admin", "users", "list"]);
        assert_eq!(words(r#"a "two words" 'it''s' x"#), ["a", "two words", "its", "x"]);
        assert_eq!(words(r#"--password="a b" c"#), ["--password=a b", "c"]);
        assert_eq!(
            words(r#""say \"hi\" \n" 'no \escape'"#),
            [r#"say "hi" \n"#, r"no \escape"]
        );
        assert_eq!(words(r"one\ word \' \\"), ["one word", "'", "\\"]);
        assert_eq!(words(r"pa\ss\w0rd trailing\"), [r"pa\ss\w0rd", r"trailing\"]);
        assert_eq!(words("“phone quotes” ''"), ["phone quotes", ""]);
        assert_eq!(words("don’t"), ["don’t"]);
        assert!(split_words("a 'open").unwrap_err().contains('\''));
        assert!(split_words(r#"a "open\"#).unwrap_err().contains('"'));
        assert_eq!(
            parse_room_command(r#"!admin users reset-password bob --password "-horse battery""#),
            Ok(AdminCommand::Users(UsersCommand::ResetPassword {
                name: "bob".to_owned(),
                password: Some("-horse battery".to_owned()),
            }))
        );
    }

    #[test]
    fn help_and_mistakes_answer_with_clap_text() {
        let help = parse_room_command("!admin help").unwrap_err();
        assert!(help.contains("users") && help.contains("server"), "{help}");
        let bare = parse_room_command("!admin").unwrap_err();
        assert!(bare.contains("Usage"), "{bare}");
        let wrong = parse_room_command("!admin users frobnicate").unwrap_err();
        assert!(wrong.contains("frobnicate"), "{wrong}");
        let bad_number = parse_room_command("!admin tokens create --uses many").unwrap_err();
        assert!(bad_number.contains("many"), "{bad_number}");
    }
}
