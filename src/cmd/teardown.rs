//! `nettool teardown NAME`: remove a lab exactly as its journal says.

use crate::lab::apply;
use crate::output::print_json;
use clap::Args;

/// Arguments of `teardown`.
#[derive(Debug, Args)]
pub(crate) struct TeardownArgs {
    /// The lab name.
    #[arg(default_value = "nettool")]
    pub name: String,
    /// Print what was removed as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `teardown`.
pub(crate) fn run(a: TeardownArgs) -> anyhow::Result<i32> {
    let rep = apply::teardown(&a.name)?;
    if a.json {
        print_json(&rep)?;
        return Ok(0);
    }
    if !rep.existed {
        println!("no lab named {} is up; nothing to do", a.name);
        return Ok(0);
    }
    println!(
        "lab {} removed: {} namespaces, {} links, {} processes, {} firewall rule sets, {} sysctls restored",
        rep.name,
        rep.namespaces.len(),
        rep.links.len(),
        rep.processes.len(),
        rep.firewall,
        rep.sysctls.len()
    );
    for r in &rep.transparent {
        println!("{}", removed_leftovers(r));
    }
    for w in &rep.warnings {
        eprintln!("warning: {w}");
    }
    Ok(0)
}

/// One line on what a dead transparent proxy had left and this run removed.
pub(crate) fn removed_leftovers(r: &crate::trace::journal::Recovered) -> String {
    format!(
        "removed {} item(s) (nft table, policy rules, routes) left by dead transparent proxy pid {}",
        r.removed.len(),
        r.pid
    )
}
