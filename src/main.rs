use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use conduit::config::Config;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "conduit: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        let _ = write!(std::io::stdout(), "{}", config.to_toml());
        return ExitCode::SUCCESS;
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

    let runtime = actix_web::rt::System::new();
    match runtime.block_on(conduit::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
