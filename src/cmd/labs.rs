//! `nettool labs`: every lab on this machine, its host namespace, state and health.

use clap::Args;

use crate::lab::health::{self, LabHealth, Phase};
use crate::output::{print_json, Table};

/// Arguments of `labs`.
#[derive(Debug, Args)]
pub(crate) struct LabsArgs {
    /// Print the labs as JSON (an array).
    #[arg(long)]
    pub json: bool,
}

/// Run `labs`.
pub(crate) fn run(a: LabsArgs) -> anyhow::Result<i32> {
    let labs = health::check_all();
    if a.json {
        print_json(&labs)?;
        return Ok(0);
    }
    if labs.is_empty() {
        println!(
            "no labs (nothing under /run/nettool); `{} setup` builds one",
            crate::program::me()
        );
        return Ok(0);
    }
    print!("{}", render(&labs));
    Ok(0)
}

/// Where a lab's host is, in words a person can use.
pub(crate) fn host_label(l: &LabHealth) -> String {
    if let Some(n) = &l.host_netns {
        return format!("{n} (isolated)");
    }
    if l.host_is_here {
        return "this namespace".into();
    }
    match l.host_inode {
        Some(inode) => match health::netns_name_of(inode) {
            Some(n) => format!("{n} (netns:[{inode}])"),
            None => format!("netns:[{inode}]"),
        },
        None => "?".into(),
    }
}

fn render(labs: &[LabHealth]) -> String {
    let mut t = Table::new(&["LAB", "HOST", "STATE", "FIREWALL", "PROXY", "HEALTH"]);
    for l in labs {
        let state = match l.phase {
            Phase::Up => "up",
            Phase::SettingUp => "setting up",
            Phase::HalfBuilt => "half built",
        };
        let health = if l.problems.is_empty() {
            let alive = l.processes.iter().filter(|p| p.alive).count();
            let ns = l.namespaces.iter().filter(|n| n.present).count();
            format!("ok ({alive} processes, {ns} namespaces)")
        } else {
            l.problems.join("; ")
        };
        t.row(vec![
            l.name.clone(),
            host_label(l),
            state.into(),
            l.backend.clone().unwrap_or_else(|| "-".into()),
            l.userland_proxy.clone().unwrap_or_else(|| "-".into()),
            health,
        ]);
    }
    t.render()
}
