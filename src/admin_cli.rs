//! `conduit admin …`: the admin commands (`service::admin_commands`, the
//! same as the admin room's) on a stopped server's database, for an
//! operator at a shell.

pub use crate::service::admin_commands::AdminCommand;

use crate::config::Config;
use crate::service::{admin_commands, Services};

/// Runs one `conduit admin …` command; its output, or what went wrong.
pub fn run(config: &Config, command: AdminCommand) -> Result<String, String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let s = runtime
        .block_on(async { Services::open(config.clone()) })
        .map_err(|e| e.to_string())?;
    // The server's bot is recorded as the one who acted.
    let operator = s.admin_room.bot().to_owned();
    let result = runtime
        .block_on(admin_commands::execute(&s, command, &operator))
        .map_err(|e| e.to_string());
    s.flush().map_err(|e| e.to_string())?;
    result
}
