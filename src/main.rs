//! nettool's entry point: parse the CLI, run one command, map errors to exit codes.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
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
