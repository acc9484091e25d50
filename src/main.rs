//! nettool's entry point: parse the CLI, run one command, map errors to exit codes.

use clap::Parser;
use tracing_subscriber::EnvFilter;

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
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
