//! `conduit admin …`: the admin API's everyday operations on a stopped
//! server's database, for an operator at a shell (the running server has
//! the admin API at `/_synapse/admin`).

use clap::Subcommand;
use ruma::{OwnedUserId, UserId};

use crate::config::Config;
use crate::service::admin::{UserChanges, UserOrder, UserQuery};
use crate::service::room_admin::{RoomOrder, RoomQuery};
use crate::service::Services;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Rooms.
    #[command(subcommand)]
    Rooms(RoomsCommand),
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Lists the local accounts: user ID, admin, deactivated, display name.
    List,
    /// Creates an account; prints its password (a random one unless given).
    Create {
        name: String,
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        admin: bool,
    },
    /// Sets a new password (a random one unless given) and logs every device out.
    ResetPassword {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Deactivates an account; with --erase, also forgets its profile and messages' content.
    Deactivate {
        name: String,
        #[arg(long)]
        erase: bool,
    },
}

#[derive(Subcommand)]
pub enum RoomsCommand {
    /// Lists the rooms: room ID, joined members, name.
    List,
}

/// Length of a password made up for an account.
const PASSWORD_LENGTH: usize = 20;

/// Runs one `conduit admin …` command; its output, or what went wrong.
pub fn run(config: &Config, command: AdminCommand) -> Result<String, String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    // Some services expect a runtime around them, though nothing here awaits.
    let _entered = runtime.enter();
    let s = Services::open(config.clone()).map_err(|e| e.to_string())?;
    let result = match command {
        AdminCommand::Users(command) => users(&s, command),
        AdminCommand::Rooms(RoomsCommand::List) => rooms(&s),
    };
    s.flush().map_err(|e| e.to_string())?;
    result
}

/// `@name:server` for a bare name; a full user ID as it is.
fn user_id(s: &Services, name: &str) -> Result<OwnedUserId, String> {
    let full = if name.starts_with('@') {
        name.to_owned()
    } else {
        format!("@{name}:{}", s.config.server_name)
    };
    UserId::parse(full).map_err(|e| format!("{name}: {e}"))
}

fn users(s: &Services, command: UsersCommand) -> Result<String, String> {
    let err = |e: crate::service::ServiceError| e.to_string();
    // What the admin service records as the one who acted.
    let operator = user_id(s, "conduit")?;
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
            let page = s.admin.list_users(s, &query).map_err(err)?;
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
            if s.admin.user(s, &user_id).map_err(err)?.is_some() {
                return Err(format!("{user_id} exists already"));
            }
            let password = password.unwrap_or_else(|| crate::service::random_string(PASSWORD_LENGTH));
            let changes = UserChanges {
                password: Some(password.clone()),
                admin: Some(admin),
                ..UserChanges::default()
            };
            s.admin.put_user(s, &operator, &user_id, changes).map_err(err)?;
            Ok(format!("created {user_id} with password {password}\n"))
        }
        UsersCommand::ResetPassword { name, password } => {
            let user_id = user_id(s, &name)?;
            let password = password.unwrap_or_else(|| crate::service::random_string(PASSWORD_LENGTH));
            s.admin.reset_password(s, &user_id, &password, true).map_err(err)?;
            Ok(format!("new password of {user_id}: {password}\n"))
        }
        UsersCommand::Deactivate { name, erase } => {
            let user_id = user_id(s, &name)?;
            s.admin.deactivate(s, &user_id, erase).map_err(err)?;
            Ok(format!("deactivated {user_id}\n"))
        }
    }
}

fn rooms(s: &Services) -> Result<String, String> {
    let query = RoomQuery {
        from: 0,
        limit: usize::MAX,
        order_by: RoomOrder::JoinedMembers,
        backwards: true,
        search_term: None,
    };
    let page = s.room_admin.list_rooms(s, &query).map_err(|e| e.to_string())?;
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
