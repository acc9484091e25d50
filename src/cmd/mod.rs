//! One module per command: turn parsed arguments into core calls and render the result.

pub mod dns;
pub mod doctor;
pub mod explain_nat;
pub mod lab_daemon;
pub mod labs;
pub mod netns;
pub mod peer;
pub mod proxy;
pub mod serve;
pub mod setup;
pub mod teardown;
pub mod topology;
pub mod trace;

use crate::cli::{Cli, Command};

/// Run the parsed command line; the returned code is the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Netns(c) => netns::run(c),
        Command::Doctor(a) => doctor::run(a),
        Command::Peer(a) => peer::run(a),
        Command::Dns(a) => dns::run(a),
        Command::Topology(a) => topology::run(a),
        Command::ExplainNat(a) => explain_nat::run(a),
        Command::Setup(a) => setup::run(a),
        Command::Teardown(a) => teardown::run(a),
        Command::Labs(a) => labs::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Trace(a) => trace::run(a),
        Command::LabDaemon(a) => lab_daemon::run(a),
        Command::Proxy(a) => proxy::run(*a, cli.verbose),
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(a.shell, &mut cmd, "nettool", &mut std::io::stdout());
            Ok(0)
        }
    }
}
