//! What a trace adds to the machine, written down BEFORE it is added, so that a later run can
//! remove it when this one died without cleaning up (SIGKILL, a crash, a power cut of the shell).
//!
//! One JSON file per tracer process: /run/nettool-trace/PID.json (not under /run/nettool, whose
//! folders are labs: `nettool labs` listed a lab called "trace"). The transparent proxy keeps
//! its own in /run/nettool-proxy with the same format ([`Journal::in_dir`], [`recover_in`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::netns::NetNs;

/// Where trace journals live.
pub(crate) const JOURNAL_DIR: &str = "/run/nettool-trace";

/// One thing a trace added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Item {
    /// An nft table in a namespace.
    NftTable {
        /// The namespace file it was opened from.
        ns_path: PathBuf,
        /// The namespace's inode (to find it again, or to know it is gone).
        ns_inode: u64,
        /// Table family.
        family: String,
        /// Table name.
        name: String,
    },
    /// A tracefs instance directory (instances/NAME).
    TracefsInstance {
        /// Its path.
        path: PathBuf,
    },
    /// A policy routing rule `fwmark MARK/MASK lookup TABLE pref PREF` in a namespace.
    FwmarkRule {
        /// The namespace file it was opened from.
        ns_path: PathBuf,
        /// The namespace's inode.
        ns_inode: u64,
        /// IPv6 (else IPv4).
        v6: bool,
        /// Mark value.
        mark: u32,
        /// Mark mask.
        mask: u32,
        /// Table looked up.
        table: u32,
        /// Rule preference.
        pref: u32,
    },
    /// A `local default dev lo` route in a table of its own, in a namespace.
    LocalRoute {
        /// The namespace file it was opened from.
        ns_path: PathBuf,
        /// The namespace's inode.
        ns_inode: u64,
        /// IPv6 (else IPv4).
        v6: bool,
        /// The table.
        table: u32,
    },
    /// tracefs mounted by the tracer because nothing was mounted there.
    TracefsMount {
        /// The mount point.
        path: PathBuf,
        /// The inode of the mount namespace it was mounted in (/proc/self/ns/mnt).
        mnt_ns: u64,
    },
}

/// The inode of this process's mount namespace.
pub(crate) fn mnt_ns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/mnt")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Some process still lives in mount namespace `inode`.
fn mnt_ns_alive(inode: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .any(|e| std::fs::metadata(e.path().join("ns/mnt")).is_ok_and(|m| m.ino() == inode))
}

/// The journal of one tracer process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Journal {
    /// The tracer's pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (/proc/PID/stat field 22): tells pid reuse apart.
    pub start_ticks: u64,
    /// Everything added, in order.
    pub items: Vec<Item>,
    #[serde(skip)]
    path: PathBuf,
    #[serde(skip)]
    dir: PathBuf,
}

/// Start time of `pid` in clock ticks since boot, from /proc/PID/stat.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `pid` has exited and waits to be reaped (a SIGKILLed proxy whose parent, often PID 1 in a
/// container, has not waited for it yet): it will never clean up, so it counts as dead.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

impl Journal {
    /// A new, empty journal for this process (written on the first [`Journal::record`]).
    pub(crate) fn new() -> Self {
        Self::in_dir(Path::new(JOURNAL_DIR))
    }

    /// A new, empty journal for this process kept in `dir` (another tool's journals).
    pub(crate) fn in_dir(dir: &Path) -> Self {
        let pid = std::process::id();
        Journal {
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            items: Vec::new(),
            path: dir.join(format!("{pid}.json")),
            dir: dir.to_path_buf(),
        }
    }

    /// The journal file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Write `item` down (file synced) before the caller creates it.
    pub(crate) fn record(&mut self, item: Item) -> std::io::Result<()> {
        self.items.push(item);
        self.write()
    }

    fn write(&self) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Only `items` are left to undo (by a later run): write just them down.
    pub(crate) fn keep_only(&mut self, items: Vec<Item>) -> std::io::Result<()> {
        self.items = items;
        self.write()
    }

    /// Everything has been removed: forget the journal.
    pub(crate) fn finish(&mut self) {
        self.items.clear();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

/// Undo one item; Ok(true) when it was there and is gone, Ok(false) when it was already gone.
pub(crate) fn undo(item: &Item) -> Result<bool, String> {
    match item {
        Item::NftTable {
            ns_path,
            ns_inode,
            family,
            name,
        } => {
            let Some(ns) = find_namespace(ns_path, *ns_inode) else {
                // The namespace is gone, and its tables with it.
                return Ok(false);
            };
            match super::ruleset::run_nft(&ns, &["delete", "table", family, name], None) {
                Ok(_) => Ok(true),
                Err(e) if e.contains("No such file") || e.contains("does not exist") => Ok(false),
                Err(e) => Err(e),
            }
        }
        Item::TracefsInstance { path } => {
            if !path.exists() {
                return Ok(false);
            }
            super::drops::remove_instance(path).map(|_| true)
        }
        Item::FwmarkRule {
            ns_path,
            ns_inode,
            v6,
            mark,
            mask,
            table,
            pref,
        } => in_namespace(ns_path, *ns_inode, |c| {
            c.fwmark_rule(*v6, (*mark, *mask), *table, *pref, false)
        }),
        Item::LocalRoute {
            ns_path,
            ns_inode,
            v6,
            table,
        } => in_namespace(ns_path, *ns_inode, |c| {
            c.local_default_route(*v6, *table, LOOPBACK_INDEX, false)
        }),
        Item::TracefsMount { path, mnt_ns: ns } => {
            if *ns != mnt_ns() {
                // Another mount namespace: it went away with its last process, or it is not
                // ours to reach.
                return if mnt_ns_alive(*ns) {
                    Err(format!(
                        "tracefs at {} was mounted in mount namespace mnt:[{ns}]: run nettool trace --cleanup there",
                        path.display()
                    ))
                } else {
                    Ok(false)
                };
            }
            super::drops::unmount_tracefs(path)
        }
    }
}

/// The loopback interface's index, the same in every namespace.
pub(crate) const LOOPBACK_INDEX: u32 = 1;

/// Run one netlink change inside the namespace (Ok(false) when the namespace is gone, and the
/// thing with it).
fn in_namespace(
    path: &Path,
    inode: u64,
    f: impl FnOnce(
            &mut crate::netns::configure::Configure,
        ) -> Result<bool, crate::netns::rtnl::NetlinkError>
        + Send,
) -> Result<bool, String> {
    let Some(ns) = find_namespace(path, inode) else {
        return Ok(false);
    };
    ns.run(|| {
        let mut c = crate::netns::configure::Configure::open()?;
        f(&mut c)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("in {}: {e}", ns.label()))
}

/// The namespace with this inode: at `path` if that still is it, else found by discovery.
fn find_namespace(path: &Path, inode: u64) -> Option<NetNs> {
    if let Ok(ns) = NetNs::from_path(path) {
        if ns.id().inode == inode {
            return Some(ns);
        }
    }
    let all = crate::netns::discover::discover(crate::netns::discover::DiscoverOptions {
        skip_interfaces: true,
        skip_docker: true,
    });
    all.into_iter()
        .find(|n| n.id.inode == inode)
        .and_then(|n| n.open().ok())
}

/// What [`recover`] did with the journal of a dead tracer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Recovered {
    /// The dead tracer's pid.
    pub pid: u32,
    /// Items that were still there and have been removed.
    pub removed: Vec<Item>,
    /// Items that could not be removed, with the reason (the journal is kept).
    pub failed: Vec<(Item, String)>,
}

/// Remove what dead tracers left behind (their journals say what). Live tracers are left alone.
pub(crate) fn recover() -> Vec<Recovered> {
    recover_in(Path::new(JOURNAL_DIR))
}

/// [`recover`] for the journals kept in `dir`.
pub(crate) fn recover_in(dir: &Path) -> Vec<Recovered> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(j) = serde_json::from_str::<Journal>(&text) else {
            continue;
        };
        if j.pid == std::process::id() {
            continue;
        }
        if start_ticks(j.pid).is_some_and(|t| t == j.start_ticks) && !is_zombie(j.pid) {
            continue; // still running
        }
        let mut rec = Recovered {
            pid: j.pid,
            removed: Vec::new(),
            failed: Vec::new(),
        };
        for item in j.items.iter().rev() {
            match undo(item) {
                Ok(true) => rec.removed.push(item.clone()),
                Ok(false) => {}
                Err(e) => rec.failed.push((item.clone(), e)),
            }
        }
        if rec.failed.is_empty() {
            let _ = std::fs::remove_file(&path);
        }
        out.push(rec);
    }
    out
}
