//! Carry out a [`Plan`]: every object is journaled as it is created, any failure rolls back
//! everything already done, and [`teardown`] undoes exactly what the journal says (also after
//! a crash or a half-applied setup).
//!
//! Test hook: `NETTOOL_LAB_FAIL_AT=step-N` makes step N (1-based, as `--dry-run` numbers them)
//! fail on purpose, so tests can check that a failure mid-setup leaves nothing behind;
//! N = last step + 1 fails once everything (processes included) is up; `crash-N` aborts the
//! process at step N without any rollback (what a crash or `kill -9` leaves behind).

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::firewall;
use super::plan::{Plan, ProxyMode, Step};
use super::spec::Backend;
use super::state::{
    self, HostRecord, Journal, LabState, ProcessState, StateError, Undo, Where, LAB_MARKER,
};
use crate::netns::configure::Configure;
use crate::netns::{named, sysctl, NetNs};

/// Why setup or teardown failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LabError {
    /// Not running as root (the command: setup or teardown).
    #[error("`{me} {0}` needs root: it creates and removes network namespaces, links and firewall rules; run it as root (with sudo)", me = crate::program::me())]
    NotRoot(&'static str),
    /// A required program is missing.
    #[error("{tool} not found in PATH: install the '{package}' package (apt-get install {package}), or pick the other backend with --backend")]
    MissingTool {
        /// The program.
        tool: String,
        /// The Debian package that has it.
        package: String,
    },
    /// The lab is already up.
    #[error("lab '{0}' is already up")]
    AlreadyUp(String),
    /// Another setup of this lab is still at work.
    #[error("lab '{name}' is being set up right now by pid {pid}; wait for it to finish (or stop it: `kill {pid}` rolls it back)")]
    SetupRunning {
        /// Lab name.
        name: String,
        /// The setup process.
        pid: u32,
    },
    /// SIGINT/SIGTERM arrived during setup; everything created so far was removed again.
    #[error("setup of lab '{name}' interrupted by {signal}{}", if rollback.is_empty() { ": rolled back, nothing is left behind".to_string() } else { format!(" (rollback problems: {})", rollback.join("; ")) })]
    Interrupted {
        /// Lab name.
        name: String,
        /// SIGINT or SIGTERM.
        signal: String,
        /// Problems met while rolling back (empty when the rollback was clean).
        rollback: Vec<String>,
        /// The signal number (the exit code is 128 + it).
        signo: i32,
    },
    /// A name the lab needs is taken.
    #[error("{0}")]
    Conflict(String),
    /// One step failed (everything before it was rolled back).
    #[error("step {number} failed: {what}: {message}{}", if rollback.is_empty() { " (rolled back: nothing is left behind)".to_string() } else { format!(" (rollback problems: {})", rollback.join("; ")) })]
    Step {
        /// 1-based step number.
        number: usize,
        /// The step, as a command.
        what: String,
        /// Why it failed.
        message: String,
        /// Problems met while rolling back (empty when the rollback was clean).
        rollback: Vec<String>,
    },
    /// Teardown was asked from a different namespace than setup ran in.
    #[error("lab '{name}' was set up in the network namespace with inode {inode}, not this one; run teardown from there: `{enter}`")]
    WrongNamespace {
        /// Lab name.
        name: String,
        /// The inode recorded at setup.
        inode: u64,
        /// The command that runs teardown there.
        enter: String,
    },
    /// State files.
    #[error(transparent)]
    State(#[from] StateError),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// What teardown did.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct TeardownReport {
    /// Lab name.
    pub name: String,
    /// False when there was no such lab (a second teardown).
    pub existed: bool,
    /// Namespaces removed.
    pub namespaces: Vec<String>,
    /// Links removed explicitly.
    pub links: Vec<String>,
    /// Processes stopped.
    pub processes: Vec<u32>,
    /// Sysctls restored.
    pub sysctls: Vec<String>,
    /// Firewall rule sets removed.
    pub firewall: usize,
    /// What dead (SIGKILLed) transparent proxies had left: nft tables, policy rules, routes.
    pub transparent: Vec<crate::trace::journal::Recovered>,
    /// Things that could not be undone (reported, never fatal).
    pub warnings: Vec<String>,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Find a program in PATH (the same lookup the spawned command will do).
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn need_tool(name: &str, package: &str) -> Result<PathBuf, LabError> {
    find_tool(name).ok_or_else(|| LabError::MissingTool {
        tool: name.into(),
        package: package.into(),
    })
}

/// The firewall programs a backend needs: (apply tool, save tool).
pub(crate) fn backend_tools(backend: Backend) -> Result<(PathBuf, Option<PathBuf>), LabError> {
    match backend {
        Backend::Iptables => Ok((
            need_tool("iptables-restore", "iptables")?,
            Some(need_tool("iptables-save", "iptables")?),
        )),
        Backend::Nftables => Ok((need_tool("nft", "nftables")?, None)),
    }
}

/// Why namespaces made here would be invisible to the rest of the machine, if they would:
/// this process runs in a mount namespace other than the machine's, and /run/netns (or the
/// mount holding it) does not propagate back there: a slave mount (as inside `ip netns exec`
/// or `unshare -m --propagation slave`), a private one (`unshare -m`, a service with a private
/// /run), or a shared one whose peers are all outside the machine's mount namespace. Then
/// every /run/netns/NAME this setup mounted would be an empty file everywhere else.
///
/// The machine's mount namespace is init's, or, where /proc/1/ns is unreadable (a sandbox
/// that hides pid 1), a kernel thread's: kernel threads all live in the initial one. Where
/// neither can be read, a slave /run/netns alone tells.
pub(crate) fn invisible_mounts() -> Option<String> {
    let mine = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    let machine = machine_mount_ns();
    if machine.as_ref().map(|(ns, _)| ns) == Some(&mine) {
        return None;
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (mp, tags) = covering_mount(&info, crate::netns::NETNS_RUN_DIR)?;
    let group = tags.split(' ').find(|t| t.starts_with("shared:"));
    let slave = tags.split(' ').any(|t| t.starts_with("master:"));
    let how = match (group, slave, &machine) {
        (_, true, _) => "a slave mount",
        (Some(g), false, Some((_, pid))) => {
            // Shared: it propagates to its peers; one of them must be in the machine's mount
            // namespace (an `unshare -m --propagation shared` keeps the peers it had).
            let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok();
            let peer_there = theirs.is_none_or(|t| {
                t.lines()
                    .any(|l| l.split(' ').take_while(|x| *x != "-").any(|x| x == g))
            });
            if peer_there {
                return None;
            }
            "shared only with mounts outside the machine's mount namespace"
        }
        (Some(_), false, None) => return None,
        (None, false, Some(_)) => "a private mount",
        // Neither init's nor a kernel thread's namespace can be read: cannot tell.
        (None, false, None) => return None,
    };
    let whose = match &machine {
        Some((_, pid)) if *pid != 1 => "the kernel threads'",
        _ => "init's",
    };
    Some(format!(
        "this process runs in a mount namespace other than the machine's ({whose}), where {mp} is {how}: the /run/netns entries setup makes here would never reach the rest of the machine (`ip netns exec` and `unshare -m` do this)"
    ))
}

/// The machine's mount namespace and a pid in it: init's, else a kernel thread's (PF_KTHREAD
/// in /proc/PID/stat; kthreadd is pid 2 where pids are not namespaced).
fn machine_mount_ns() -> Option<(std::path::PathBuf, u32)> {
    if let Ok(ns) = std::fs::read_link("/proc/1/ns/mnt") {
        return Some((ns, 1));
    }
    const PF_KTHREAD: u64 = 0x0020_0000;
    let kthread = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command's closing parenthesis: state is 3rd, flags 9th.
        let flags: u64 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(6)?
            .parse()
            .ok()?;
        (flags & PF_KTHREAD != 0).then_some(pid)
    };
    let pid = kthread(2).or_else(|| {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .take(256)
            .find_map(kthread)
    })?;
    Some((std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?, pid))
}

/// The mount `path` lives on in a mountinfo text (the longest mount point that covers it):
/// its mount point and optional fields (propagation tags).
fn covering_mount(info: &str, path: &str) -> Option<(String, String)> {
    let covers = |mp: &str| {
        mp == "/" || path == mp || path.strip_prefix(mp).is_some_and(|r| r.starts_with('/'))
    };
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let mp = *f.get(4)?;
            let dash = f.iter().position(|x| *x == "-")?;
            covers(mp).then(|| (mp.to_string(), f[6..dash].join(" ")))
        })
        .max_by_key(|(mp, _)| mp.len())
}

/// Check root and tools before anything is planned or built.
pub(crate) fn preflight(backend: Backend) -> Result<(), LabError> {
    if !is_root() {
        return Err(LabError::NotRoot("setup"));
    }
    backend_tools(backend).map(|_| ())
}

/// The signal (SIGINT, SIGTERM or SIGHUP) that asked setup to stop, 0 while none did.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_interrupt(sig: libc::c_int) {
    INTERRUPTED.store(sig, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP do not kill the process but ask [`setup`] to stop
/// at its next check and roll back what it created (SA_RESTART: no call fails with EINTR).
pub(crate) fn catch_interrupts() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(note_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        let _ = unsafe { sigaction(sig, &act) };
    }
}

/// The signal that interrupted setup, if one did.
fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Keep a helper program (iptables-restore, nft) out of the terminal's process group, so a
/// Ctrl-C reaches setup (which rolls back) and not the helper mid-apply, and kill it when its
/// parent dies, so nothing applies rules after a SIGKILLed setup is gone.
fn contain_helper(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Feed `text` to `argv` on stdin in the calling thread's namespace; Err(stderr) on failure.
fn run_with_stdin(argv: &[&str], text: &str) -> Result<(), String> {
    let mut cmd = Command::new(argv[0]);
    contain_helper(&mut cmd);
    let mut child = cmd
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} exited with {}: {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Apply firewall text with the backend's tool in the calling thread's namespace.
pub(crate) fn apply_firewall_text(backend: Backend, text: &str) -> Result<(), String> {
    match backend {
        Backend::Iptables => run_with_stdin(&["iptables-restore", "--noflush"], text),
        Backend::Nftables => run_with_stdin(&["nft", "-f", "-"], text),
    }
}

/// Remove firewall rules with `undo` text, also when only part of them (or none) exists: a
/// setup killed around its apply leaves either. The whole text first (atomic); if the tool
/// refuses it, iptables text is applied one command at a time, skipping what is not there,
/// and nft's `delete table` is fine when the table is gone. Ok(true) when something was removed.
pub(crate) fn undo_firewall_text(backend: Backend, undo: &str) -> Result<bool, String> {
    let whole = apply_firewall_text(backend, undo);
    let Err(e) = whole else { return Ok(true) };
    match backend {
        Backend::Nftables => {
            let tables: Vec<&str> = undo
                .lines()
                .filter_map(|l| l.strip_prefix("delete table "))
                .collect();
            if tables.is_empty() {
                return Err(e);
            }
            let mut removed = false;
            for t in tables {
                if nft_table_exists(t) {
                    apply_firewall_text(backend, &format!("delete table {t}\n"))?;
                    removed = true;
                }
            }
            Ok(removed)
        }
        Backend::Iptables => {
            let mut table = "";
            let mut removed = false;
            for l in undo.lines() {
                if let Some(t) = l.strip_prefix('*') {
                    table = t;
                } else if l.starts_with('-') {
                    let one = format!("*{table}\n{l}\nCOMMIT\n");
                    removed |= apply_firewall_text(backend, &one).is_ok();
                }
            }
            // What the tool still refuses to delete must really be gone, or the error stands.
            let saved = Command::new("iptables-save")
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let present: BTreeSet<&str> = saved.lines().collect();
            let left: Vec<&str> = undo
                .lines()
                .filter_map(|l| l.strip_prefix("-D "))
                .filter(|r| present.contains(format!("-A {r}").as_str()))
                .collect();
            if left.is_empty() {
                Ok(removed)
            } else {
                Err(format!("{e} (still present: {})", left.join("; ")))
            }
        }
    }
}

/// nftables tables and chains in the calling thread's namespace: "FAMILY TABLE" and
/// "FAMILY TABLE CHAIN" -> number of rules (tables count their chains). None without nft.
fn nft_objects() -> Option<std::collections::BTreeMap<String, usize>> {
    let out = Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut m = std::collections::BTreeMap::new();
    let s = |o: &serde_json::Value, k: &str| o[k].as_str().unwrap_or_default().to_string();
    for item in v["nftables"].as_array()? {
        if let Some(t) = item.get("table") {
            m.entry(format!("{} {}", s(t, "family"), s(t, "name")))
                .or_insert(0);
        } else if let Some(c) = item.get("chain") {
            let table = format!("{} {}", s(c, "family"), s(c, "table"));
            *m.entry(table.clone()).or_insert(0) += 1;
            m.entry(format!("{table} {}", s(c, "name"))).or_insert(0);
        } else if let Some(r) = item.get("rule") {
            let chain = format!("{} {} {}", s(r, "family"), s(r, "table"), s(r, "chain"));
            *m.entry(chain).or_insert(0) += 1;
        } else if let Some(o) = item.as_object() {
            // Sets, maps, flowtables... keep their table.
            if let Some((_, x)) = o.iter().find(|(k, _)| *k != "metainfo") {
                let table = format!("{} {}", s(x, "family"), s(x, "table"));
                *m.entry(table).or_insert(0) += 1;
            }
        }
    }
    Some(m)
}

/// What nftables held in the lab host before the first lab of it: another lab's baseline
/// when one shares this host, else what is there now. None when nft is not installed.
fn nft_baseline(lab: &str) -> Option<Vec<String>> {
    let here = state::read_host(lab);
    for other in state::list().into_iter().filter(|n| n != lab) {
        let same = match (&here, state::read_host(&other)) {
            (Some(h), Some(o)) => h.netns.is_none() && o.netns.is_none() && h.inode == o.inode,
            _ => false,
        };
        if !same {
            continue;
        }
        let found = state::read_journal(&other).ok().and_then(|rs| {
            rs.into_iter().find_map(|u| match u {
                Undo::NftBaseline { existed } => Some(existed),
                _ => None,
            })
        });
        if found.is_some() {
            return found;
        }
    }
    Some(nft_objects()?.into_keys().collect())
}

/// Delete the nftables chains and tables that are empty now and were not in `existed`.
fn remove_new_empty_nft(existed: &[String]) -> Result<(), String> {
    let existed: BTreeSet<&str> = existed.iter().map(String::as_str).collect();
    let mut problems = Vec::new();
    // Chains first, then the tables they leave empty.
    for parts in [3, 2] {
        let Some(now) = nft_objects() else {
            return Ok(());
        };
        for (k, n) in &now {
            let p: Vec<&str> = k.split(' ').collect();
            if p.len() != parts || *n != 0 || existed.contains(k.as_str()) {
                continue;
            }
            let text = format!(
                "delete {} {k}\n",
                if parts == 3 { "chain" } else { "table" }
            );
            if let Err(e) = apply_firewall_text(Backend::Nftables, &text) {
                problems.push(e);
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("nftables: {}", problems.join("; ")))
    }
}

/// True when `nft list table FAMILY NAME` finds the table in the calling thread's namespace.
fn nft_table_exists(family_and_name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table"])
        .args(family_and_name.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when the shared NETTOOL chains exist in the calling thread's namespace.
fn base_chains_exist_here() -> bool {
    Command::new("iptables-save")
        .args(["-t", "nat"])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with(&format!(":{} ", firewall::CHAIN)))
        })
        .unwrap_or(false)
}

/// Do the shared iptables chains already exist in the lab's host namespace?
/// (`isolated` labs get a fresh namespace, where they never do.)
pub(crate) fn base_chains_exist(isolated: bool) -> bool {
    !isolated && base_chains_exist_here()
}

/// The test hook: `step-N` fails step N (with rollback); `crash-N` kills the process at step N
/// (no rollback, like a crash or `kill -9`), leaving a half-built lab for teardown to clean.
fn fail_at() -> Option<usize> {
    let v = std::env::var("NETTOOL_LAB_FAIL_AT").ok()?;
    let n = v
        .strip_prefix("step-")
        .or_else(|| v.strip_prefix("crash-"))?;
    n.parse().ok()
}

fn crash_requested() -> bool {
    std::env::var("NETTOOL_LAB_FAIL_AT").is_ok_and(|v| v.starts_with("crash-"))
}

struct Run<'a> {
    plan: &'a Plan,
    journal: Journal,
    netns: HashMap<String, NetNs>,
    host: Option<NetNs>,
    bridges: HashMap<String, u32>,
    conf: Option<Configure>,
    state: LabState,
}

/// An ifindex for a link setup creates: free-looking and far above the ones the kernel hands
/// out on its own (it counts up from 1), so a link of the lab's name with another index can only
/// be somebody else's. Asked for explicitly and journaled before the create, it is the link's
/// mark of ownership.
fn pick_ifindex() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (1 << 24) + (r % ((1 << 30) - (1 << 24))) as u32
}

/// Delete host link `name` if it is the one a journal record made: with a recorded ifindex,
/// only a link of that name and that index. Ok(true) when it was deleted.
fn delete_recorded_link(
    c: &mut Configure,
    name: &str,
    ifindex: Option<u32>,
) -> Result<bool, crate::netns::rtnl::NetlinkError> {
    match (c.index_of(name)?, ifindex) {
        (Some(i), Some(k)) if i != k => Ok(false),
        (Some(i), _) => c.delete_link(i),
        (None, _) => Ok(false),
    }
}

/// Is /run/netns/`name` the entry a journal record made (same entry inode)? Records without a
/// mark (older journals) and entries already gone count as ours.
fn netns_is_ours(name: &str, entry: Option<u64>) -> bool {
    match (entry, named::entry_inode(name)) {
        (Some(mine), Some(now)) => mine == now,
        _ => true,
    }
}

/// A clearer message when a link name is taken in the lab host.
fn exists_hint(e: crate::netns::rtnl::NetlinkError, name: &str) -> String {
    if e.errno() == Some(libc::EEXIST) {
        format!("{e} (a link named {name} already exists in the lab's host namespace: another lab with the same name or file? choose `bridge =` / --name, or use --isolated)")
    } else {
        e.to_string()
    }
}

fn e2s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Run<'_> {
    fn ns(&mut self, name: &str) -> Result<NetNs, String> {
        if let Some(n) = self.netns.get(name) {
            return Ok(n.clone());
        }
        let n = NetNs::from_name(name).map_err(e2s)?;
        self.netns.insert(name.into(), n.clone());
        Ok(n)
    }

    fn conf(&mut self) -> Result<&mut Configure, String> {
        if self.conf.is_none() {
            self.conf = Some(Configure::open().map_err(e2s)?);
        }
        Ok(self.conf.as_mut().expect("just set"))
    }

    fn record(&mut self, u: Undo) -> Result<(), String> {
        self.journal.record(&u).map_err(e2s)
    }

    /// The create announced by `u` failed because the name was taken: not ours to undo.
    fn cancel(&mut self, u: Undo) -> Result<(), String> {
        // Test hook (tests/setup.rs): die in the window between a create refused on a taken
        // name and this record; the mark in `u` alone must keep teardown off the object.
        if std::env::var("NETTOOL_LAB_FAIL_AT").as_deref() == Ok("crash-on-taken") {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        self.record(Undo::NotCreated { undo: Box::new(u) })
    }

    /// Create a host link with an ifindex of its own choosing, journaled before the create
    /// (see [`pick_ifindex`]); retried with another index on the rare index collision.
    fn create_link(
        &mut self,
        name: &str,
        dies_with: Option<&String>,
        create: impl Fn(&mut Configure, u32) -> Result<u32, crate::netns::rtnl::NetlinkError>,
    ) -> Result<u32, String> {
        for _ in 0..3 {
            let pin = pick_ifindex();
            let undo = Undo::Link {
                at: Where::Host,
                name: name.to_string(),
                dies_with: dies_with.cloned(),
                ifindex: Some(pin),
            };
            self.record(undo.clone())?;
            match create(self.conf()?, pin) {
                Ok(i) => return Ok(i),
                Err(e) if e.errno() == Some(libc::EEXIST) => {
                    self.cancel(undo)?;
                    // The name is free: the index was taken; draw another.
                    if matches!(self.conf()?.index_of(name), Ok(None)) {
                        continue;
                    }
                    return Err(exists_hint(e, name));
                }
                Err(e) => return Err(exists_hint(e, name)),
            }
        }
        Err(format!(
            "create link {name}: three ifindexes in a row were taken"
        ))
    }

    /// Run one step. Host-namespace steps run on the calling thread, which is in the lab host.
    fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::CreateNetns { name } => {
                // Journaled with the inode its /run/netns entry gets, before it has the name.
                let mut undo = None;
                let made = named::create_marked(name, |entry| {
                    let u = Undo::Netns {
                        name: name.clone(),
                        entry,
                    };
                    self.record(u.clone())?;
                    undo = Some(u);
                    Ok(())
                });
                match made {
                    Ok(ns) => {
                        self.netns.insert(name.clone(), ns);
                    }
                    Err(e) => {
                        if let (named::NamedError::Exists(_), Some(u)) = (&e, undo) {
                            self.cancel(u)?;
                        }
                        return Err(e2s(e));
                    }
                }
            }
            Step::Sysctl {
                at,
                name,
                value,
                restore,
            } => {
                let ns = match at {
                    Where::Host => None,
                    Where::Netns(n) => Some(self.ns(n)?),
                };
                // Read, journal the old value, then write: a kill in between restores a value
                // that is still the same, which is harmless.
                let read = {
                    let name = name.clone();
                    move || sysctl::read(&name)
                };
                let old = match &ns {
                    None => read(),
                    Some(ns) => ns.run(read).map_err(e2s)?,
                };
                // Absent (e.g. no br_netfilter): nothing to set, nothing to restore.
                let Some(old) = old else { return Ok(()) };
                if old == *value {
                    return Ok(());
                }
                if *restore {
                    self.record(Undo::Sysctl {
                        at: at.clone(),
                        name: name.clone(),
                        old,
                    })?;
                }
                let write = {
                    let (name, value) = (name.clone(), value.clone());
                    move || {
                        sysctl::write(&name, &value)
                            .map_err(|e| format!("sysctl {name}={value}: {e}"))
                    }
                };
                match &ns {
                    None => write()?,
                    Some(ns) => ns.run(write).map_err(e2s)??,
                }
            }
            Step::CreateBridge { name, mtu } => {
                let idx =
                    self.create_link(name, None, |c, pin| c.add_bridge(name, *mtu, Some(pin)))?;
                self.bridges.insert(name.clone(), idx);
            }
            Step::HostAddress {
                link,
                address,
                prefix_len,
            } => {
                let idx = match self.bridges.get(link) {
                    Some(i) => *i,
                    None => self
                        .conf()?
                        .index_of(link)
                        .map_err(e2s)?
                        .ok_or(format!("no link {link}"))?,
                };
                self.conf()?
                    .add_address(idx, *address, *prefix_len)
                    .map_err(e2s)?;
            }
            Step::CreateVeth {
                host,
                peer,
                netns,
                bridge,
                mtu,
                hairpin,
            } => {
                let ns = self.ns(netns)?;
                let master = self.bridges.get(bridge).copied();
                let idx = self.create_link(host, Some(netns), |c, pin| {
                    c.add_veth(host, peer, &ns, master, *mtu, Some(pin))
                })?;
                if *hairpin {
                    self.conf()?.set_hairpin(idx, true).map_err(e2s)?;
                }
            }
            Step::ConfigureInterface {
                netns,
                interface,
                addresses,
                gateway,
                gateway6,
            } => {
                let ns = self.ns(netns)?;
                ns.run(|| -> Result<(), String> {
                    let mut c = Configure::open().map_err(e2s)?;
                    let idx = c
                        .index_of(interface)
                        .map_err(e2s)?
                        .ok_or(format!("no {interface} in {netns}"))?;
                    c.set_up(idx, true).map_err(e2s)?;
                    for (a, l) in addresses {
                        c.add_address(idx, *a, *l).map_err(e2s)?;
                    }
                    if let Some(g) = gateway {
                        c.add_route(None, Some((*g).into()), Some(idx))
                            .map_err(e2s)?;
                    }
                    if let Some(g) = gateway6 {
                        c.add_route(None, Some((*g).into()), Some(idx))
                            .map_err(e2s)?;
                    }
                    Ok(())
                })
                .map_err(e2s)??;
            }
            Step::Firewall {
                backend,
                apply,
                undo,
            } => {
                // (An isolated host goes away whole: nothing to remember there.)
                if *backend == Backend::Iptables && self.plan.state.host_netns.is_none() {
                    if let Some(existed) = nft_baseline(&self.plan.name) {
                        self.record(Undo::NftBaseline { existed })?;
                    }
                }
                // Journaled first: teardown's undo copes with rules that never made it.
                self.record(Undo::Firewall {
                    at: Where::Host,
                    backend: *backend,
                    undo: undo.clone(),
                })?;
                apply_firewall_text(*backend, apply)?;
            }
            Step::ResolvConf { netns } => {
                let root = Path::new("/etc/netns");
                let dir = root.join(netns);
                if !root.exists() {
                    self.record(Undo::EmptyDir {
                        path: root.display().to_string(),
                    })?;
                }
                if !dir.exists() {
                    self.record(Undo::Dir {
                        path: dir.display().to_string(),
                    })?;
                    // Another lab's teardown removes /etc/netns when it empties it: try again.
                    let mut tries = 0;
                    while let Err(e) = std::fs::create_dir_all(&dir) {
                        tries += 1;
                        if e.kind() != std::io::ErrorKind::NotFound || tries > 5 {
                            return Err(format!("{}: {e}", dir.display()));
                        }
                    }
                }
                let f = dir.join("resolv.conf");
                std::fs::write(
                    &f,
                    format!(
                        "# written by nettool setup {}\nnameserver {}\noptions ndots:0\n",
                        self.plan.name,
                        firewall::DNS_ADDR
                    ),
                )
                .map_err(|e| format!("{}: {e}", f.display()))?;
            }
            Step::StartDaemon => {
                // The daemon reads the lab from state.json.
                state::save(&self.state).map_err(e2s)?;
                let exe = std::env::current_exe().map_err(e2s)?;
                let log = state::dir(&self.plan.name).join("daemon.log");
                let mut cmd = Command::new(exe);
                cmd.args(["-v", "lab-daemon", &self.plan.name, "--ready-fd", "3"]);
                let pid = self.spawn_ready(cmd, &log, "daemon")?;
                self.state.processes.push(ProcessState {
                    role: "daemon".into(),
                    pid,
                    log: Some(log.display().to_string()),
                });
            }
            Step::StartProxies { mode } => self.start_proxies(*mode)?,
        }
        Ok(())
    }

    /// Start a detached process with a readiness pipe on fd 3; wait for "0\n".
    fn spawn_ready(&mut self, mut cmd: Command, log: &Path, role: &str) -> Result<u32, String> {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        // CLOEXEC: only the dup'ed fd 3 may reach the child, or EOF would never come.
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(e2s)?;
        let wfd = w.as_raw_fd();
        cmd.stdin(Stdio::null())
            .env(LAB_MARKER, &self.plan.name)
            .stdout(logf.try_clone().map_err(e2s)?)
            .stderr(logf);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::dup2(wfd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {role}: {e}"))?;
        drop(w);
        let pid = child.id();
        let start_time = state::process_start_time(pid).unwrap_or(0);
        self.record(Undo::Process {
            role: role.into(),
            pid,
            start_time,
        })?;
        // Reap it in the background if it dies while we are still around.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        let got = read_ready(r, Duration::from_secs(15));
        if let Some(sig) = interrupted() {
            return Err(format!("interrupted by signal {sig}"));
        }
        if got.starts_with("0\n") || got == "0" {
            Ok(pid)
        } else if let Some(msg) = got.strip_prefix("1\n") {
            Err(format!("{role} failed to start: {}", msg.trim()))
        } else {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            Err(format!(
                "{role} exited before it was ready (log {}): {}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        }
    }

    fn start_proxies(&mut self, mode: ProxyMode) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(e2s)?;
        let dir = state::dir(&self.plan.name);
        let ports = self.state.ports.clone();
        // Like dockerd (20.10+), a port published on 0.0.0.0 is served on [::] too, so
        // `curl [::1]:PORT` works, where the lab host has IPv6 (this thread is in it).
        let v6 = sysctl::read("net.ipv6.conf.lo.disable_ipv6").as_deref() == Some("0");
        let also_v6 = |ip: std::net::IpAddr| {
            (v6 && ip == std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
                .then_some(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
        };
        match mode {
            ProxyMode::Off => {}
            ProxyMode::Single => {
                let log = dir.join("proxy.log");
                let mut cmd = Command::new(&exe);
                cmd.arg("proxy");
                for p in &ports {
                    for ip in std::iter::once(p.host_ip).chain(also_v6(p.host_ip)) {
                        let listen = match ip {
                            std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", p.host_port),
                            ip => format!("{ip}:{}", p.host_port),
                        };
                        cmd.arg("--map").arg(format!(
                            "{}:{listen}={}:{}",
                            p.proto, p.container_ip, p.container_port
                        ));
                    }
                }
                cmd.arg("--log-file").arg(&log).args(["--ready-fd", "3"]);
                if self.plan.spec.transparent_proxy {
                    cmd.arg("--transparent");
                }
                let pid = self.spawn_ready(cmd, &log, "proxy")?;
                self.state.proxy_pids.push(pid);
                self.state.processes.push(ProcessState {
                    role: "proxy".into(),
                    pid,
                    log: Some(log.display().to_string()),
                });
            }
            ProxyMode::DockerStyle => {
                let each: Vec<(std::net::IpAddr, &state::PortState)> = ports
                    .iter()
                    .flat_map(|p| {
                        std::iter::once(p.host_ip)
                            .chain(also_v6(p.host_ip))
                            .map(move |ip| (ip, p))
                    })
                    .collect();
                for (ip, p) in each {
                    let (suffix, role_ip) = if ip.is_ipv6() && ip != p.host_ip {
                        ("-v6", " [::]")
                    } else {
                        ("", "")
                    };
                    let log = dir.join(format!(
                        "docker-proxy-{}-{}{suffix}.log",
                        p.proto, p.host_port
                    ));
                    let mut cmd = Command::new(&exe);
                    cmd.arg("proxy")
                        .args(["-proto", &p.proto.to_string()])
                        .args(["-host-ip", &ip.to_string()])
                        .args(["-host-port", &p.host_port.to_string()])
                        .args(["-container-ip", &p.container_ip.to_string()])
                        .args(["-container-port", &p.container_port.to_string()]);
                    // docker-proxy mode takes it from the environment, as under dockerd.
                    if self.plan.spec.transparent_proxy {
                        cmd.env("NETTOOL_PROXY_TRANSPARENT", "1");
                    }
                    let pid = self.spawn_ready(cmd, &log, "docker-proxy")?;
                    self.state.proxy_pids.push(pid);
                    self.state.processes.push(ProcessState {
                        role: format!("docker-proxy {}/{}{role_ip}", p.proto, p.host_port),
                        pid,
                        log: Some(log.display().to_string()),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Remove what dead (SIGKILLed) transparent proxies left, in any namespace: the journals that
/// had something to remove, and a warning for each item that could not be removed (its journal
/// is kept for the next try). Setup calls it too: a lab without a userland proxy starts no
/// proxy, whose start would otherwise do it.
pub(crate) fn remove_dead_proxy_leftovers() -> (Vec<crate::trace::journal::Recovered>, Vec<String>)
{
    let mut removed = Vec::new();
    let mut warnings = Vec::new();
    for r in crate::proxy::transparent::recover_dead() {
        for (_, e) in &r.failed {
            warnings.push(format!(
                "dead transparent proxy pid {}: could not remove what it left: {e} (the next `{} proxy` start tries again)",
                r.pid,
                crate::program::me()
            ));
        }
        if !r.removed.is_empty() {
            removed.push(r);
        }
    }
    (removed, warnings)
}

/// Bring the lab up. On any failure everything already created is removed again.
pub(crate) fn setup(plan: &Plan) -> Result<LabState, LabError> {
    if !is_root() {
        return Err(LabError::NotRoot("setup"));
    }
    let name = &plan.name;
    if state::dir(name).join("up").exists() {
        return Err(LabError::AlreadyUp(name.clone()));
    }
    recover_interrupted(name)?;
    for s in &plan.steps {
        if let Step::CreateNetns { name: n } = s {
            if named::exists(n) {
                return Err(LabError::Conflict(format!("network namespace {n} already exists (left over from another lab? `ip netns del {n}`, or choose another lab --name)")));
            }
        }
    }
    let isolated = plan.state.host_netns.is_some();
    let current = NetNs::current().map_err(e2s).map_err(LabError::Other)?;
    if !isolated {
        check_shared_host(plan, current.id().inode)?;
        check_host_routes(plan)?;
    }
    let me = std::process::id();
    let host_rec = HostRecord {
        netns: plan.state.host_netns.clone(),
        inode: current.id().inode,
        setup_pid: Some(me),
        setup_start_time: state::process_start_time(me),
    };
    if let Some(signo) = interrupted() {
        return Err(interrupted_error(name, signo, Vec::new()));
    }
    let journal = Journal::create(name, &host_rec)?;
    let mut run = Run {
        plan,
        journal,
        netns: HashMap::new(),
        host: None,
        bridges: HashMap::new(),
        conf: None,
        state: plan.state.clone(),
    };
    let inject = fail_at();
    let host_name = plan.state.host_netns.clone();
    let mut start = 0;
    let mut failure: Option<(usize, String)> = None;
    // Step 1 of an isolated lab makes its host; everything after runs on a thread inside it.
    if isolated {
        if let Some(sig) = interrupted() {
            failure = Some((0, format!("interrupted by signal {sig}")));
        } else if inject == Some(1) {
            failure = Some((0, "injected failure (NETTOOL_LAB_FAIL_AT=step-1)".into()));
        } else if let Err(e) = run.step(&plan.steps[0]) {
            failure = Some((0, e));
        }
        start = 1;
    }
    if failure.is_none() {
        let host = if isolated {
            run.netns
                .get(host_name.as_deref().unwrap_or_default())
                .cloned()
                .expect("host created")
        } else {
            current.clone()
        };
        run.host = Some(host.clone());
        let steps = &plan.steps[start..];
        let res = host.run(|| {
            for (k, s) in steps.iter().enumerate() {
                let number = start + k + 1;
                if let Some(sig) = interrupted() {
                    return Err((number - 1, format!("interrupted by signal {sig}")));
                }
                if inject == Some(number) {
                    if crash_requested() {
                        // Like `kill -9`: no destructors, no rollback, no core file.
                        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                    }
                    return Err((
                        number - 1,
                        format!("injected failure (NETTOOL_LAB_FAIL_AT=step-{number})"),
                    ));
                }
                run.step(s).map_err(|e| (number - 1, e))?;
            }
            // step-(last+1): everything exists, then fail (tests the full rollback).
            let after = plan.steps.len() + 1;
            if inject == Some(after) {
                return Err((
                    after - 1,
                    format!("injected failure (NETTOOL_LAB_FAIL_AT=step-{after})"),
                ));
            }
            Ok(())
        });
        match res {
            Ok(Ok(())) => {}
            Ok(Err(f)) => failure = Some(f),
            Err(e) => failure = Some((start, e.to_string())),
        }
    }
    let state = run.state.clone();
    if failure.is_none() {
        if let Err(e) = state::save(&state) {
            failure = Some((plan.steps.len(), e.to_string()));
        } else if let Some(sig) = interrupted() {
            failure = Some((plan.steps.len(), format!("interrupted by signal {sig}")));
        }
    }
    if let Some((idx, message)) = failure {
        drop(run);
        let report = teardown(name);
        let rollback = match report {
            Ok(r) => r.warnings,
            Err(e) => vec![e.to_string()],
        };
        if let Some(signo) = interrupted() {
            return Err(interrupted_error(name, signo, rollback));
        }
        return Err(LabError::Step {
            number: idx + 1,
            what: plan
                .steps
                .get(idx)
                .map(|st| {
                    st.describe(&host_name)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .unwrap_or_else(|| "after the last step".into()),
            message,
            rollback,
        });
    }
    // From here on the lab is up: a late SIGINT/SIGTERM no longer undoes it.
    let up = state::dir(name).join("up");
    std::fs::write(&up, b"").map_err(|e| LabError::Other(format!("{}: {e}", up.display())))?;
    Ok(state)
}

fn interrupted_error(name: &str, signo: i32, rollback: Vec<String>) -> LabError {
    let signal = nix::sys::signal::Signal::try_from(signo)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signo}"));
    LabError::Interrupted {
        name: name.into(),
        signal,
        rollback,
        signo,
    }
}

/// A lab whose setup was killed (SIGKILL, a crash, a power cut of the process) is half built:
/// remove what it left, as teardown would, and say what that was. Ok(None) when the lab is
/// not half built; an error when its setup is still at work.
pub(crate) fn recover_interrupted(name: &str) -> Result<Option<TeardownReport>, LabError> {
    if !state::exists(name) || state::dir(name).join("up").exists() {
        return Ok(None);
    }
    if let Some(pid) = state::read_host(name).and_then(|h| h.setup_running()) {
        return Err(LabError::SetupRunning {
            name: name.into(),
            pid,
        });
    }
    teardown(name).map(Some)
}

/// Read a readiness pipe: "0\n" (ready) or "1\n<error>" then EOF; empty on EOF or timeout.
fn read_ready(fd: OwnedFd, limit: Duration) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        // Up to the first newline; after "1\n" read the error text to EOF.
        while let Ok(1) = f.read(&mut byte) {
            buf.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        if buf.starts_with(b"1") {
            let _ = f.read_to_end(&mut buf);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    // In slices, so a SIGINT/SIGTERM is acted on at once.
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && interrupted().is_none() {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(s) => return s,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    String::new()
}

fn kill_process(pid: u32, start_time: u64, sig: nix::sys::signal::Signal) -> bool {
    match state::process_start_time(pid) {
        Some(t) if start_time == 0 || t == start_time => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).is_ok()
        }
        _ => false,
    }
}

/// Processes the daemon started, as it recorded them (pid, start time).
pub(crate) fn services_file(name: &str) -> PathBuf {
    state::dir(name).join("services.json")
}

/// Remove lab `name` exactly as its journal says. A lab that does not exist is not an error
/// (`existed: false`), so a second teardown is a no-op.
pub(crate) fn teardown(name: &str) -> Result<TeardownReport, LabError> {
    if !is_root() {
        return Err(LabError::NotRoot("teardown"));
    }
    let mut rep = TeardownReport {
        name: name.into(),
        ..Default::default()
    };
    if !state::exists(name) {
        return Ok(rep);
    }
    rep.existed = true;
    let host = state::read_host(name);
    if let Some(pid) = host.as_ref().and_then(|h| h.setup_running()) {
        if pid != std::process::id() {
            return Err(LabError::SetupRunning {
                name: name.into(),
                pid,
            });
        }
    }
    let records = state::read_journal(name)?;
    let owned: BTreeSet<String> = records
        .iter()
        .filter_map(|u| match u {
            Undo::Netns { name, entry } if netns_is_ours(name, *entry) => Some(name.clone()),
            _ => None,
        })
        .collect();
    // Host-side records matter only when the host is not a namespace we delete anyway.
    let host_is_ours = host
        .as_ref()
        .and_then(|h| h.netns.as_ref())
        .is_some_and(|n| owned.contains(n));
    // A host namespace that no longer exists took the lab's host-side objects with it.
    let host_ns_missing = host.as_ref().is_some_and(|h| match &h.netns {
        Some(n) => !owned.contains(n),
        None => !super::health::netns_alive(h.inode),
    });
    let touches_host = records.iter().any(|u| {
        matches!(
            u,
            Undo::Link {
                at: Where::Host,
                ..
            } | Undo::Sysctl {
                at: Where::Host,
                ..
            } | Undo::Firewall {
                at: Where::Host,
                ..
            }
        )
    });
    if !host_is_ours && !host_ns_missing && touches_host {
        if let Some(h) = &host {
            let cur = NetNs::current().map_err(|e| LabError::Other(e.to_string()))?;
            if cur.id().inode != h.inode && super::health::netns_alive(h.inode) {
                let exe = std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "nettool".into());
                let at = super::health::netns_name_of(h.inode)
                    .map(|n| named::path_of(&n).display().to_string())
                    .unwrap_or_else(|| "/proc/PID/ns/net (PID: a process in it)".into());
                return Err(LabError::WrongNamespace {
                    name: name.into(),
                    inode: h.inode,
                    enter: format!("nsenter --net={at} {exe} teardown {name}"),
                });
            }
        }
    }

    // 1. Processes: the daemon (it stops its services), proxies; then anything it left.
    use nix::sys::signal::Signal;
    let mut procs: Vec<(u32, u64)> = records
        .iter()
        .filter_map(|u| match u {
            Undo::Process {
                pid, start_time, ..
            } => Some((*pid, *start_time)),
            _ => None,
        })
        .collect();
    for (pid, st) in &procs {
        if kill_process(*pid, *st, Signal::SIGTERM) {
            rep.processes.push(*pid);
        }
    }
    wait_gone(&procs, Duration::from_secs(3));
    if let Ok(bytes) = std::fs::read(services_file(name)) {
        if let Ok(extra) = serde_json::from_slice::<Vec<(u32, u64)>>(&bytes) {
            procs.extend(extra);
        }
    }
    for (pid, st) in &procs {
        if kill_process(*pid, *st, Signal::SIGKILL) && !rep.processes.contains(pid) {
            rep.processes.push(*pid);
        }
    }
    wait_gone(&procs, Duration::from_secs(2));
    // Whatever carries the lab's marker and no journal line names (a setup killed between
    // spawn and journal write, a service its daemon started just before it died).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let marked = state::marked_processes(name);
        if marked.is_empty() || Instant::now() > deadline {
            break;
        }
        for (pid, st) in &marked {
            if kill_process(*pid, *st, Signal::SIGKILL) && !rep.processes.contains(pid) {
                rep.processes.push(*pid);
            }
        }
        wait_gone(&marked, Duration::from_secs(1));
    }
    // A proxy SIGKILLed above or earlier leaves its transparent-mode rules and routes (in the
    // host namespace, which may outlive the lab); its journal says what they are.
    let (removed, warnings) = remove_dead_proxy_leftovers();
    rep.transparent = removed;
    rep.warnings.extend(warnings);

    // 2. Everything else, newest first.
    let mut waiting_links: Vec<(String, Option<u32>)> = Vec::new();
    let mut conf: Option<Configure> = None;
    let mut fw_undone = false;
    let mut baseline: Option<Vec<String>> = None;
    let mut empty_dirs: Vec<String> = Vec::new();
    for u in records.iter().rev() {
        match u {
            Undo::Process { .. } | Undo::NotCreated { .. } => {}
            Undo::NftBaseline { existed } => {
                if !host_is_ours && !host_ns_missing {
                    baseline = Some(existed.clone());
                }
            }
            Undo::EmptyDir { path } => empty_dirs.push(path.clone()),
            Undo::Dir { path } => {
                if let Err(e) = std::fs::remove_dir_all(path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        rep.warnings.push(format!("remove {path}: {e}"));
                    }
                }
            }
            Undo::Firewall {
                at: Where::Host,
                backend,
                undo,
            } => {
                if host_is_ours || host_ns_missing {
                    continue;
                }
                fw_undone |= *backend == Backend::Iptables;
                match undo_firewall_text(*backend, undo) {
                    Ok(true) => rep.firewall += 1,
                    Ok(false) => {}
                    Err(e) => rep.warnings.push(format!("firewall: {e}")),
                }
            }
            Undo::Sysctl {
                at: Where::Host,
                name: s,
                old,
            } => {
                if host_is_ours || host_ns_missing {
                    continue;
                }
                match sysctl::write(s, old) {
                    Ok(()) => rep.sysctls.push(format!("{s}={old}")),
                    Err(e) => rep.warnings.push(format!("restore {s}={old}: {e}")),
                }
            }
            Undo::Link {
                at: Where::Host,
                name: l,
                dies_with,
                ifindex,
            } => {
                if host_is_ours || host_ns_missing {
                    continue;
                }
                if dies_with.as_ref().is_some_and(|n| owned.contains(n)) {
                    waiting_links.push((l.clone(), *ifindex));
                    continue;
                }
                if conf.is_none() {
                    conf = Configure::open().ok();
                }
                if let Some(c) = conf.as_mut() {
                    match delete_recorded_link(c, l, *ifindex) {
                        Ok(true) => rep.links.push(l.clone()),
                        Ok(false) => {}
                        Err(e) => rep.warnings.push(format!("delete link {l}: {e}")),
                    }
                }
            }
            // Records inside container namespaces die with them.
            Undo::Firewall { .. } | Undo::Sysctl { .. } | Undo::Link { .. } => {}
            Undo::Netns { name: n, entry } => {
                if !netns_is_ours(n, *entry) {
                    continue;
                }
                let id = std::fs::metadata(named::path_of(n))
                    .ok()
                    .map(|m| (m.dev(), m.ino()));
                match named::delete(n) {
                    Ok(true) => rep.namespaces.push(n.clone()),
                    Ok(false) => {}
                    Err(e) => rep.warnings.push(e.to_string()),
                }
                if let Some(w) = id.and_then(|id| held_by(n, id)) {
                    rep.warnings.push(w);
                }
            }
        }
    }
    // 3. The shared chains go with the last lab that uses them in this namespace.
    let last_here = !other_labs_here(name, host.as_ref());
    if fw_undone && last_here {
        let _ = undo_firewall_text(Backend::Iptables, &firewall::iptables_base_cleanup());
    }
    // The empty tables and base chains iptables-nft made for the first lab go with the last.
    if let (Some(existed), true) = (baseline, last_here) {
        if let Err(e) = remove_new_empty_nft(&existed) {
            rep.warnings.push(e);
        }
    }
    for d in &empty_dirs {
        // Fails, as it should, while another lab (or anything else) has an entry there; the
        // lab that has one inherits the duty to remove the folder once it is empty.
        if std::fs::remove_dir(d).is_err() && Path::new(d).exists() {
            hand_over(name, Undo::EmptyDir { path: d.clone() });
        }
    }
    // 4. Host-side veths vanish when the kernel finishes destroying their namespaces; wait
    //    for that so "after teardown" really means gone, then delete any straggler.
    if !waiting_links.is_empty() {
        if conf.is_none() {
            conf = Configure::open().ok();
        }
        if let Some(c) = conf.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                waiting_links.retain(
                    |(l, k)| matches!(c.index_of(l), Ok(Some(i)) if k.is_none_or(|k| k == i)),
                );
                if waiting_links.is_empty() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            for (l, k) in &waiting_links {
                if let Ok(true) = delete_recorded_link(c, l, *k) {
                    rep.links.push(l.clone());
                }
            }
        }
    }
    let d = state::dir(name);
    if let Err(e) = std::fs::remove_dir_all(&d) {
        rep.warnings.push(format!("remove {}: {e}", d.display()));
    }
    // Only nettool writes there; the last lab leaves no empty folder behind.
    let _ = std::fs::remove_dir(state::STATE_ROOT);
    Ok(rep)
}

/// Give an `EmptyDir` record to another lab that has an entry in that folder (its journal
/// names a directory under it), so the folder goes with the last lab that used it.
fn hand_over(name: &str, record: Undo) {
    let Undo::EmptyDir { path } = &record else {
        return;
    };
    let inside = format!("{path}/");
    for other in state::list().into_iter().filter(|n| n != name) {
        let uses = state::read_journal(&other).is_ok_and(|rs| {
            rs.iter()
                .any(|u| matches!(u, Undo::Dir { path: p } if p.starts_with(&inside)))
        });
        if uses {
            let _ = state::append_record(&other, &record);
            return;
        }
    }
}

/// Labs sharing a host namespace must not publish the same port or use the same bridge names.
fn check_shared_host(plan: &Plan, inode: u64) -> Result<(), LabError> {
    for other in state::list() {
        let same_host =
            state::read_host(&other).is_some_and(|h| h.netns.is_none() && h.inode == inode);
        if !same_host {
            continue;
        }
        let Ok(o) = state::load(&other) else { continue };
        for p in &plan.state.ports {
            let clash = o.ports.iter().find(|q| {
                q.proto == p.proto
                    && q.host_port == p.host_port
                    && (q.host_ip.is_unspecified()
                        || p.host_ip.is_unspecified()
                        || q.host_ip == p.host_ip)
            });
            if let Some(q) = clash {
                return Err(LabError::Conflict(format!(
                    "host port {}/{} is already published by lab '{other}' (container {}) in this namespace; change the port or tear that lab down",
                    p.host_port, p.proto, q.container
                )));
            }
        }
        for n in &plan.state.networks {
            if let Some(on) = o.networks.iter().find(|m| {
                m.bridge == n.bridge
                    || m.subnet.contains(&n.subnet.network())
                    || n.subnet.contains(&m.subnet.network())
            }) {
                return Err(LabError::Conflict(format!(
                    "network '{}' ({} on {}) collides with network '{}' ({} on {}) of lab '{other}' in this namespace; choose another subnet/bridge or use --isolated",
                    n.name, n.subnet, n.bridge, on.name, on.subnet, on.bridge
                )));
            }
        }
    }
    Ok(())
}

/// A lab subnet must not cover a route of the host namespace: the containers could not reach
/// those addresses any more, and the lab's MASQUERADE would rewrite the host's own traffic.
fn check_host_routes(plan: &Plan) -> Result<(), LabError> {
    use crate::netns::links::Rtnl;
    let Ok(mut rtnl) = Rtnl::open() else {
        return Ok(());
    };
    let links = rtnl.links().unwrap_or_default();
    let routes = rtnl.routes(false).unwrap_or_default();
    for n in &plan.state.networks {
        for r in &routes {
            let Some(std::net::IpAddr::V4(dst)) = r.destination else {
                continue;
            };
            let Ok(net) = ipnet::Ipv4Net::new(dst, r.prefix_len) else {
                continue;
            };
            if r.prefix_len == 0
                || !(net.contains(&n.subnet.network()) || n.subnet.contains(&net.network()))
            {
                continue;
            }
            let dev = r
                .oif
                .and_then(|i| links.iter().find(|l| l.index == i))
                .map(|l| format!(" dev {}", l.name))
                .unwrap_or_default();
            return Err(LabError::Conflict(format!(
                "network '{}' ({}) overlaps the route {net}{dev} of this namespace: its containers could not reach those addresses and its MASQUERADE would rewrite the host's own traffic; choose another subnet in the lab file, or build the lab with --isolated",
                n.name, n.subnet
            )));
        }
    }
    Ok(())
}

/// Is another lab (up or half up) using the same host namespace as `host`?
fn other_labs_here(name: &str, host: Option<&HostRecord>) -> bool {
    let Some(h) = host else { return false };
    state::list().into_iter().filter(|n| n != name).any(|n| {
        state::read_host(&n)
            .is_some_and(|o| o.netns.is_none() && h.netns.is_none() && o.inode == h.inode)
    })
}

/// Processes still inside namespace `id` (st_dev, st_ino of its nsfs file) once its name is
/// gone: they keep it, and whatever lives in it, alive. A sentence naming them, or None.
fn held_by(name: &str, id: (u64, u64)) -> Option<String> {
    let me = std::process::id();
    let mut who: Vec<String> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == id)
        })
        .map(|pid| format!("pid {pid} ({})", crate::netns::sockets::read_comm(pid)))
        .collect();
    if who.is_empty() {
        return None;
    }
    let pids: Vec<&str> = who
        .iter()
        .filter_map(|w| w.split_whitespace().nth(1))
        .collect();
    let kill = format!("kill {}", pids.join(" "));
    let one = pids.len() == 1;
    who.truncate(5);
    let (verb, it) = if one { ("is", "it") } else { ("are", "them") };
    Some(format!(
        "namespace {name} lives on: {} {verb} still inside it and keep{} it, its links and its sockets alive; `{kill}` ends {it}",
        who.join(", "),
        if one { "s" } else { "" }
    ))
}

fn wait_gone(procs: &[(u32, u64)], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if procs
            .iter()
            .all(|(pid, st)| match state::process_start_time(*pid) {
                Some(t) => *st != 0 && t != *st,
                None => true,
            })
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
