//! How a lab is doing, read from the machine: is it up, half built or being built, are its
//! processes alive and its namespaces there. `nettool labs` prints it, and `setup` on a lab
//! that exists says what is broken instead of "already up".

use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use super::state::{self, Undo};
use crate::netns::{named, NetNs};

/// Where a lab is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Phase {
    /// Set up completely.
    Up,
    /// A setup is building it right now.
    SettingUp,
    /// A setup stopped half way (killed or crashed): `teardown` or the next `setup` cleans up.
    HalfBuilt,
}

/// One process of a lab and whether it still runs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcessHealth {
    /// daemon, proxy, docker-proxy tcp/8080, service:web.
    pub role: String,
    /// Its pid.
    pub pid: u32,
    /// Still running (same pid, same start time).
    pub alive: bool,
}

/// One named namespace of a lab and whether it is still there.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NamespaceHealth {
    /// Name under /run/netns.
    pub name: String,
    /// The name exists and is a namespace (not an empty file left by a failed mount).
    pub present: bool,
}

/// A lab as `nettool labs` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LabHealth {
    /// Lab name.
    pub name: String,
    /// The named host namespace of an `--isolated` lab; null when the lab's host is the
    /// namespace setup ran in.
    pub host_netns: Option<String>,
    /// Inode of the lab's host namespace (null when an isolated host is gone).
    pub host_inode: Option<u64>,
    /// True when that host namespace is the one this command runs in.
    pub host_is_here: bool,
    /// up, setting-up or half-built.
    pub phase: Phase,
    /// Firewall backend and proxy mode (null until the lab is up).
    pub backend: Option<String>,
    /// Userland proxy mode.
    pub userland_proxy: Option<String>,
    /// The lab's long-running processes.
    pub processes: Vec<ProcessHealth>,
    /// The lab's named namespaces.
    pub namespaces: Vec<NamespaceHealth>,
    /// What is wrong, one sentence each; empty when healthy.
    pub problems: Vec<String>,
}

impl LabHealth {}

/// True when /run/netns/NAME exists and holds a namespace (an nsfs mount, not the empty
/// file a failed or foreign-mount-namespace setup leaves).
pub(crate) fn netns_present(name: &str) -> bool {
    let path = named::path_of(name);
    match (
        std::fs::metadata(&path),
        std::fs::metadata(path.parent().unwrap_or(&path)),
    ) {
        (Ok(f), Ok(dir)) => f.dev() != dir.dev(),
        _ => false,
    }
}

/// The health of lab `name`; None when there is no such lab.
pub(crate) fn check(name: &str) -> Option<LabHealth> {
    if !state::exists(name) {
        return None;
    }
    let host = state::read_host(name);
    let here = NetNs::current().ok().map(|n| n.id().inode);
    let phase = if state::dir(name).join("up").exists() {
        Phase::Up
    } else if host.as_ref().and_then(|h| h.setup_running()).is_some() {
        Phase::SettingUp
    } else {
        Phase::HalfBuilt
    };
    let st = state::load(name).ok();
    let journal = state::read_journal(name).unwrap_or_default();
    let mut processes: Vec<ProcessHealth> = journal
        .iter()
        .filter_map(|u| match u {
            Undo::Process {
                role,
                pid,
                start_time,
            } => Some(ProcessHealth {
                role: role.clone(),
                pid: *pid,
                alive: state::process_start_time(*pid).is_some_and(|t| t == *start_time),
            }),
            _ => None,
        })
        .collect();
    // The daemon's services, as it recorded them (it restarts one that exits).
    if let Ok(bytes) = std::fs::read(super::apply::services_file(name)) {
        if let Ok(svcs) = serde_json::from_slice::<Vec<(u32, u64)>>(&bytes) {
            for (pid, start) in svcs {
                processes.push(ProcessHealth {
                    role: "service".into(),
                    pid,
                    alive: state::process_start_time(pid).is_some_and(|t| t == start),
                });
            }
        }
    }
    let namespaces: Vec<NamespaceHealth> = journal
        .iter()
        .filter_map(|u| match u {
            Undo::Netns { name, .. } => Some(NamespaceHealth {
                name: name.clone(),
                present: netns_present(name),
            }),
            _ => None,
        })
        .collect();
    let mut problems = Vec::new();
    match phase {
        Phase::HalfBuilt => problems.push(format!(
            "an earlier setup stopped half way; `{} teardown {name}` (or the next setup) removes what it left",
            crate::program::me()
        )),
        Phase::SettingUp => {}
        Phase::Up => {
            for p in processes.iter().filter(|p| !p.alive) {
                let what = if p.role == "service" {
                    format!("a service (pid {}) is not running", p.pid)
                } else {
                    format!("its {} (pid {}) is not running", p.role, p.pid)
                };
                problems.push(what);
            }
            for n in namespaces.iter().filter(|n| !n.present) {
                problems.push(format!("namespace {} is gone", n.name));
            }
            if let (Some(h), Some(here)) = (&host, here) {
                if h.netns.is_none() && h.inode != here && !netns_alive(h.inode) {
                    problems.push(format!(
                        "its host namespace (inode {}) no longer exists",
                        h.inode
                    ));
                }
            }
        }
    }
    // Services the daemon restarted have new pids: a dead old one is not a problem while the
    // daemon is alive and a service is running in its place.
    let daemon_alive = processes.iter().any(|p| p.role == "daemon" && p.alive);
    if daemon_alive {
        problems.retain(|p| !p.starts_with("a service"));
    }
    Some(LabHealth {
        name: name.into(),
        host_netns: host.as_ref().and_then(|h| h.netns.clone()),
        host_inode: host.as_ref().and_then(|h| h.host_inode()),
        host_is_here: host
            .as_ref()
            .is_some_and(|h| h.netns.is_none() && Some(h.inode) == here),
        phase,
        backend: st.as_ref().map(|s| s.backend.to_string()),
        userland_proxy: st.as_ref().map(|s| s.userland_proxy.clone()),
        processes,
        namespaces,
        problems,
    })
}

/// Every lab on the machine, by name.
pub(crate) fn check_all() -> Vec<LabHealth> {
    state::list().iter().filter_map(|n| check(n)).collect()
}

/// Does a network namespace with this inode still exist (a process in it, or a name for it)?
pub(crate) fn netns_alive(inode: u64) -> bool {
    let proc_has = std::fs::read_dir("/proc").is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|s| s.parse::<u32>().is_ok())
                && std::fs::metadata(e.path().join("ns/net")).is_ok_and(|m| m.ino() == inode)
        })
    });
    proc_has
        || std::fs::read_dir(crate::netns::NETNS_RUN_DIR).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode))
        })
}

/// A /run/netns name for the namespace with this inode, if it has one.
pub(crate) fn netns_name_of(inode: u64) -> Option<String> {
    std::fs::read_dir(crate::netns::NETNS_RUN_DIR)
        .ok()?
        .flatten()
        .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}
