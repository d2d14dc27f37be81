//! `conduit admin …`: the admin commands (`service::admin_commands`, the
//! same as the admin room's), for an operator at a shell. With the server
//! stopped they work on its database; with `--token` (an admin's access
//! token) they go to the running server's admin API.

use std::net::IpAddr;
use std::path::PathBuf;

pub use crate::service::admin_commands::AdminCommand;

use crate::config::Config;
use crate::service::{admin_commands, Services};

#[derive(clap::Args)]
pub struct AdminArgs {
    /// An admin's access token: the command then goes to the running
    /// server's admin API instead of the database.
    #[arg(long, global = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding that token (kept out of the shell's history and of
    /// the process list).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// The running server's base URL (default: its first plain-HTTP
    /// listener in the config, on loopback).
    #[arg(long, global = true)]
    server: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

/// Runs one `conduit admin …` command; its output, or what went wrong.
pub fn run(config: &Config, args: AdminArgs) -> Result<String, String> {
    let token = match (args.token, args.token_file) {
        (Some(token), _) => Some(token),
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    match token {
        Some(token) => {
            let server = match args.server {
                Some(server) => server.trim_end_matches('/').to_owned(),
                None => local_url(config)?,
            };
            runtime.block_on(run_remote(&server, &token, &args.command))
        }
        None => run_stopped(config, &runtime, args.command),
    }
}

/// On the database of a stopped server.
fn run_stopped(config: &Config, runtime: &tokio::runtime::Runtime, command: AdminCommand) -> Result<String, String> {
    let s = runtime
        .block_on(async { Services::open(config.clone()) })
        .map_err(|e| {
            let e = e.to_string();
            // RocksDB's words when another process holds the database.
            if e.contains("lock") {
                format!("{e}\nIs the server running? Then give an admin's access token (--token or --token-file) and the command goes through its admin API.")
            } else {
                e
            }
        })?;
    // The server's bot is recorded as the one who acted.
    let operator = s.admin_room.bot().to_owned();
    let result = runtime
        .block_on(admin_commands::execute(&s, command, &operator))
        .map_err(|e| e.to_string());
    s.flush().map_err(|e| e.to_string())?;
    result
}

/// The config's first plain-HTTP listener, as seen from this machine.
fn local_url(config: &Config) -> Result<String, String> {
    let listener = config
        .all_listeners()
        .into_iter()
        .find(|l| l.tls.is_none())
        .ok_or("every listener in the config serves TLS: give the server's URL with --server")?;
    let host = match listener.address {
        IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_owned(),
        IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_owned(),
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    Ok(format!("http://{host}:{}", listener.port))
}

/// Through `POST /_conduit/admin/v1/command` of a running server.
async fn run_remote(server: &str, token: &str, command: &AdminCommand) -> Result<String, String> {
    let url = format!("{server}/_conduit/admin/v1/command");
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .json(command)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("{url}: {status}, and the answer is not JSON: {e}"))?;
    if status.is_success() {
        return body["output"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{url}: the answer has no output: {body}"));
    }
    Err(format!(
        "{status} {}: {}",
        body["errcode"].as_str().unwrap_or("?"),
        body["error"].as_str().unwrap_or("")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(env: &[(&str, &str)]) -> Config {
        Config::load(None, env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn the_running_server_is_found_on_loopback_from_the_config() {
        let wildcard = config(&[("CONDUIT_ADDRESS", "0.0.0.0"), ("CONDUIT_PORT", "8008")]);
        assert_eq!(local_url(&wildcard).unwrap(), "http://127.0.0.1:8008");
        let v6 = config(&[("CONDUIT_ADDRESS", "::1"), ("CONDUIT_PORT", "6167")]);
        assert_eq!(local_url(&v6).unwrap(), "http://[::1]:6167");
    }
}
