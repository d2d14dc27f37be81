//! The `conduit` binary; everything is in the library (`src/cli.rs`).

fn main() -> std::process::ExitCode {
    conduit::cli::main()
}
