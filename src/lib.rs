//! nettool: debug container networking on Linux from one binary.
//!
//! The library holds the netns-aware core ([`netns`]) and the subsystems the commands drive.
//! `src/main.rs` and `src/cmd/` are the only places that print.

#![warn(unreachable_pub)]

pub(crate) mod capture;
pub(crate) mod cli;
pub(crate) mod cmd;
pub mod dns;
pub(crate) mod doctor;
pub(crate) mod engine;
pub(crate) mod facts;
pub mod lab;
pub mod nat;
pub mod netns;
pub(crate) mod output;
mod program;
pub(crate) mod proxy;
pub mod tap;
pub(crate) mod topology;
pub(crate) mod trace;

/// The whole program: `src/main.rs` calls only this, so the commands and their arguments
/// (cli, cmd) stay inside the crate. Parses the CLI, runs one command, maps errors to exit codes.
pub fn main() -> ! {
    use clap::Parser;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    // docker-proxy's Go-style flags are not clap's: handle that invocation first.
    if let Some(code) = cmd::proxy::docker_proxy_entry() {
        std::process::exit(code);
    }
    let cli = cli::Cli::parse();
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // RUST_LOG as `level` or `target=level,...` (tracing's Targets syntax). Not EnvFilter: its
    // span and field filters pull in a regex engine, about 1 MB of the static binary (issue 20).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| default_level.parse().expect("a plain level parses"));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();

    let code = match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nettool: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
