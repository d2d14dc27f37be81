//! The `conduit` command line: the subcommands that work on a stopped
//! server's database, and starting the server. It lives in the library so
//! that both binaries built from `src/main.rs` (this package's and
//! `release/`'s, see its Cargo.toml) are one call into it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use clap::{Parser, Subcommand};

/// A Matrix homeserver: one binary, one embedded database.
#[derive(Parser)]
#[command(name = "conduit", version, about)]
struct Cli {
    /// The TOML config file; without one, every setting has its default.
    #[arg(short, long, env = "CONDUIT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validates the config and prints the effective settings.
    CheckConfig,
    /// Retires the server's signing key and makes a new one (run it with
    /// the server stopped). Other servers still verify old events with
    /// the retired key, which stays published as an old key.
    RotateSigningKey,
    /// Manages application services (run it with the server stopped).
    #[command(subcommand)]
    Appservice(AppserviceCommand),
    /// Backups in `backup_directory` (run it with the server stopped; a
    /// running server takes them itself, see `backup_interval_hours`).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// The admin commands of the admin room: on the database of a stopped
    /// server, or with --token through a running server's admin API.
    Admin(crate::admin_cli::AdminArgs),
    /// Salvages a database that will not open after a crash or a power
    /// cut (run it with the server stopped, after copying the data
    /// directory): what reads is kept. See README, "When the database is
    /// damaged".
    Repair,
    /// Manages registration tokens (run it with the server stopped; a
    /// running server has the admin API for them).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Makes a new random token and prints it.
    Create {
        /// How many accounts it may register (default: any number).
        #[arg(long)]
        uses: Option<u64>,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Lists the tokens: token, uses allowed, pending, completed, expiry
    /// time (ms since the epoch), validity.
    List,
    /// Deletes a token.
    Delete {
        /// Taken as it is even when it starts with `-` (the spec allows
        /// that in a token).
        #[arg(allow_hyphen_values = true)]
        token: String,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Takes a backup of the database and the media files.
    Create,
    /// Lists the backups, oldest first.
    List,
    /// Checks a backup's files (the newest without an ID).
    Verify { id: Option<u32> },
    /// Restores a backup (the newest without an ID) into `database_path`,
    /// which must be empty.
    Restore { id: Option<u32> },
}

/// A subcommand's output on stdout, or its error on stderr.
fn print_outcome(outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(out) => {
            let _ = write!(std::io::stdout(), "{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "conduit: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `conduit backup ...`.
fn backup_command(config: &Config, command: BackupCommand) -> Result<String, String> {
    use crate::service::backups;
    let dir = || {
        config
            .backup_directory
            .clone()
            .ok_or_else(|| "no backup_directory is configured".to_owned())
    };
    match command {
        BackupCommand::Create => {
            let taken = crate::service::Services::backup_offline(config).map_err(|e| e.to_string())?;
            Ok(format!(
                "backup {} taken: {} bytes in {} files, {} media files copied\n",
                taken.database.id, taken.database.size, taken.database.files, taken.media_files_copied
            ))
        }
        BackupCommand::List => Ok(backups::list(&dir()?)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|b| format!("{}\t{}\t{} bytes\t{} files\n", b.id, b.timestamp, b.size, b.files))
            .collect()),
        BackupCommand::Verify { id } => {
            let id = backups::verify(&dir()?, id).map_err(|e| e.to_string())?;
            Ok(format!("backup {id} is whole\n"))
        }
        BackupCommand::Restore { id } => {
            let id = backups::restore(config, id).map_err(|e| e.to_string())?;
            Ok(format!(
                "backup {id} restored into {}\n",
                config.database_path.display()
            ))
        }
    }
}

#[derive(Subcommand)]
enum AppserviceCommand {
    /// Registers the appservice of a registration file (YAML), or
    /// replaces the one of the same ID.
    Register { file: PathBuf },
    /// Removes a registered appservice.
    Unregister { id: String },
    /// Lists the registered appservices.
    List,
}

/// Runs `conduit appservice ...` on the database of a stopped server.
fn appservice_command(config: &Config, command: AppserviceCommand) -> Result<String, String> {
    let appservices = crate::service::Services::appservices_offline(config).map_err(|e| e.to_string())?;
    match command {
        AppserviceCommand::Register { file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let appservice = appservices
                .register_yaml(&text)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            Ok(format!("registered appservice {}\n", appservice.id()))
        }
        AppserviceCommand::Unregister { id } => match appservices.unregister(&id) {
            Ok(true) => Ok(format!("unregistered appservice {id}\n")),
            Ok(false) => Err(format!("no appservice {id} is registered")),
            Err(e) => Err(e.to_string()),
        },
        AppserviceCommand::List => Ok(appservices
            .all()
            .iter()
            .map(|a| format!("{}\t{}\n", a.id(), a.registration.url.as_deref().unwrap_or("-")))
            .collect()),
    }
}

/// Runs `conduit token ...` on the database of a stopped server.
fn token_command(config: &Config, command: TokenCommand) -> Result<String, String> {
    let tokens = crate::service::Services::registration_tokens_offline(config).map_err(|e| e.to_string())?;
    match command {
        TokenCommand::Create { uses, expires_in_days } => {
            let token = tokens.create_random(uses, expires_in_days).map_err(|e| e.to_string())?;
            Ok(format!("{}\n", token.token))
        }
        TokenCommand::List => {
            let now_ms = now_ms();
            let listed = tokens.list(None).map_err(|e| e.to_string())?;
            let shown = |n: Option<u64>, none: &str| n.map_or_else(|| none.to_owned(), |n| n.to_string());
            Ok(listed
                .iter()
                .map(|t| {
                    format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\n",
                        t.token,
                        shown(t.uses_allowed, "unlimited"),
                        t.pending,
                        t.completed,
                        shown(t.expiry_time, "never"),
                        if t.is_valid_at(now_ms) { "valid" } else { "invalid" },
                    )
                })
                .collect())
        }
        TokenCommand::Delete { token } => match tokens.delete(&token) {
            Ok(true) => Ok(format!("deleted registration token {token}\n")),
            Ok(false) => Err(format!("no registration token {token}")),
            Err(e) => Err(e.to_string()),
        },
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// glibc raises its mmap threshold after the first large free and from then
/// on keeps large buffers (argon2's buffer, big request bodies) in the heap
/// once freed, so a long-running server's memory only grows. A fixed
/// threshold keeps every block of 1 MiB or more mapped on its own and given
/// back when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_large_blocks_when_freed() {
    // SAFETY: mallopt only tunes the allocator; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        // Few arenas: glibc's default (8 per core) keeps freed memory of
        // every worker thread apart and RSS grows with the thread count.
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_large_blocks_when_freed() {}

/// Parses the command line and runs what it asks for: a subcommand, or the
/// server until it is stopped.
pub fn main() -> ExitCode {
    release_large_blocks_when_freed();
    let cli = Cli::parse();
    let (config, ignored_env) = match Config::load_noting_ignored(cli.config.as_deref(), std::env::vars()) {
        Ok(loaded) => loaded,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "conduit: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        for variable in &ignored_env {
            let _ = writeln!(std::io::stderr(), "conduit: {variable} names no config key; ignored");
        }
        let _ = write!(std::io::stdout(), "{}", config.to_toml());
        return ExitCode::SUCCESS;
    }

    if let Some(Command::RotateSigningKey) = cli.command {
        return print_outcome(
            crate::service::Services::rotate_signing_key(&config)
                .map(|key_id| format!("new signing key: {key_id}\n"))
                .map_err(|e| e.to_string()),
        );
    }

    match cli.command {
        Some(Command::Appservice(command)) => return print_outcome(appservice_command(&config, command)),
        Some(Command::Backup(command)) => return print_outcome(backup_command(&config, command)),
        Some(Command::Token(command)) => return print_outcome(token_command(&config, command)),
        Some(Command::Admin(args)) => return print_outcome(crate::admin_cli::run(&config, args)),
        Some(Command::Repair) => {
            return print_outcome(
                crate::service::Services::repair_database(&config)
                    .map(|()| format!("{} repaired; it opens\n", config.database_path.display()))
                    .map_err(|e| e.to_string()),
            )
        }
        _ => {}
    }

    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "conduit: config key `log`: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    std::panic::set_hook(Box::new(|info| tracing::error!(%info, "panic")));
    for variable in ignored_env {
        tracing::warn!(%variable, "environment variable names no config key; ignored");
    }

    let runtime = actix_web::rt::System::new();
    match runtime.block_on(crate::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
