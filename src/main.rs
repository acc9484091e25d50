//! nettool's entry point: parse the CLI, run one command, map errors to exit codes.

use clap::Parser;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

fn main() {
    // docker-proxy's Go-style flags are not clap's: handle that invocation first.
    if let Some(code) = nettool::cmd::proxy::docker_proxy_entry() {
        std::process::exit(code);
    }
    let cli = nettool::cli::Cli::parse();
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

    let code = match nettool::cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nettool: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
