//! Every network namespace on the machine and who uses it.
//!
//! Sources: /proc/*/ns/net (and each thread's), /run/netns, /run/docker/netns, and any nsfs
//! mount in /proc/self/mountinfo (a persistent namespace that no process holds).
//! Deduplicated by (st_dev, inode).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::cgroup::container_id_from_cgroup;
use crate::engine::{EngineKind, Intent};

use super::links::Rtnl;
use super::sockets::{read_comm, Owner};
use super::{NetNs, NsId, DOCKER_NETNS_DIR, NETNS_RUN_DIR};

/// A container a namespace belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ContainerRef {
    /// Container id (full).
    pub id: String,
    /// Name, when an engine told us.
    pub name: Option<String>,
    /// The engine that runs it, when one told us (None: known only from a cgroup).
    pub engine: Option<EngineKind>,
    /// The Podman pod it belongs to.
    pub pod: Option<String>,
    /// True for a pod's infra container.
    pub infra: bool,
}

impl ContainerRef {
    /// Its name, else the first 12 characters of its id.
    pub(crate) fn short_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.id.chars().take(12).collect())
    }
}

/// One network namespace and everything known about who uses it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NamespaceInfo {
    /// Identity.
    pub id: NsId,
    /// A path that opens it (a name under /run/netns when there is one).
    pub path: PathBuf,
    /// Names under /run/netns (and /run/docker/netns, prefixed "docker/").
    pub names: Vec<String>,
    /// Other nsfs mount points holding it.
    pub mounts: Vec<PathBuf>,
    /// nsid as seen from the namespace discovery ran in, when one is assigned.
    pub nsid: Option<i32>,
    /// Processes in it (thread group leaders, kernel threads left out), sorted by pid.
    pub processes: Vec<Owner>,
    /// How many kernel threads are in it (they live in the initial namespace).
    pub kernel_threads: usize,
    /// Containers found through the processes' cgroups.
    pub containers: Vec<ContainerRef>,
    /// Number of interfaces (including lo); `None` when it could not be entered.
    pub interfaces: Option<usize>,
    /// True for the namespace discovery ran in.
    pub current: bool,
}

impl NamespaceInfo {
    /// A namespace a caller holds that discovery did not find (no process, name or mount):
    /// nothing known about it but its handle.
    pub(crate) fn known_only_by_path(ns: &NetNs) -> Self {
        NamespaceInfo {
            id: ns.id(),
            path: ns.path().to_path_buf(),
            names: Vec::new(),
            mounts: Vec::new(),
            nsid: None,
            processes: Vec::new(),
            kernel_threads: 0,
            containers: Vec::new(),
            interfaces: None,
            current: false,
        }
    }

    /// The best short name, usable as a TARGET: `current`; an engine's container
    /// (container:NAME, the pod's first member before its infra); a name under /run/netns
    /// (a lab container's too); `pid:N`; or a path.
    pub(crate) fn display_name(&self) -> String {
        if self.current {
            return "current".into();
        }
        let engine_container = self
            .containers
            .iter()
            .find(|c| c.engine.is_some() && c.engine != Some(EngineKind::Lab));
        if let Some(c) = engine_container {
            if let (Some(EngineKind::Kubernetes), Some(pod)) = (c.engine, &c.pod) {
                return format!("pod:{pod}");
            }
            return format!("container:{}", c.short_name());
        }
        if let Some(n) = self.names.first() {
            return n.clone();
        }
        if let Some(c) = self.containers.first() {
            return format!("container:{}", c.short_name());
        }
        if let Some(p) = self.processes.first() {
            return format!("pid:{}", p.pid);
        }
        self.path.display().to_string()
    }

    /// Open this namespace.
    pub(crate) fn open(&self) -> Result<NetNs, super::NetnsError> {
        NetNs::from_path(&self.path).map(|n| n.with_label(&self.display_name()))
    }
}

/// How much work discovery does.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DiscoverOptions {
    /// Skip entering each namespace to count interfaces.
    pub skip_interfaces: bool,
    /// Skip asking the container engines (Docker, Podman, CNI, labs) for names.
    pub skip_docker: bool,
}

#[derive(Default)]
struct Found {
    path: Option<PathBuf>,
    names: Vec<String>,
    mounts: Vec<PathBuf>,
    pids: Vec<u32>,
}

fn id_of(path: &Path) -> Option<NsId> {
    let m = std::fs::metadata(path).ok()?;
    Some(NsId {
        dev: m.dev(),
        inode: m.ino(),
    })
}

/// Find every network namespace on the machine, named after the engines' containers
/// (read here unless `opts.skip_docker`).
pub(crate) fn discover(opts: DiscoverOptions) -> Vec<NamespaceInfo> {
    let intent = if opts.skip_docker {
        Intent::default()
    } else {
        Intent::read()
    };
    discover_with(opts, &intent)
}

/// Find every network namespace on the machine, named after the containers of `intent`.
pub(crate) fn discover_with(opts: DiscoverOptions, intent: &Intent) -> Vec<NamespaceInfo> {
    let mut found: BTreeMap<NsId, Found> = BTreeMap::new();

    let named_dirs = [
        (super::host_path(NETNS_RUN_DIR), ""),
        (super::host_path(DOCKER_NETNS_DIR), "docker/"),
    ];
    for (dir, prefix) in &named_dirs {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                // A name whose mount is gone (stale file) is not a namespace.
                if NetNs::from_path(&p).is_err() {
                    continue;
                }
                if let Some(id) = id_of(&p) {
                    let f = found.entry(id).or_default();
                    f.names
                        .push(format!("{prefix}{}", e.file_name().to_string_lossy()));
                    f.path.get_or_insert(p);
                }
            }
        }
    }

    super::count_proc_scan();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let p = e.path().join("ns/net");
            if let Some(id) = id_of(&p) {
                let f = found.entry(id).or_default();
                f.pids.push(pid);
                f.path.get_or_insert(p);
            }
            // A thread may have setns'ed elsewhere (like nettool's own workers).
            if let Ok(tasks) = std::fs::read_dir(e.path().join("task")) {
                for t in tasks.flatten() {
                    let tp = t.path().join("ns/net");
                    if let Some(id) = id_of(&tp) {
                        if !found.contains_key(&id) {
                            found.entry(id).or_default().path = Some(tp);
                        }
                    }
                }
            }
        }
    }

    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            if !right.starts_with("nsfs ") {
                continue;
            }
            let Some(mp) = left.split(' ').nth(4) else {
                continue;
            };
            let mp = PathBuf::from(unescape_mount(mp));
            if NetNs::from_path(&mp).is_err() {
                continue; // another namespace type (mnt, uts, ...)
            }
            if let Some(id) = id_of(&mp) {
                let f = found.entry(id).or_default();
                let named = named_dirs.iter().any(|(d, _)| mp.starts_with(d));
                if !named && !f.mounts.contains(&mp) {
                    f.mounts.push(mp.clone());
                }
                f.path.get_or_insert(mp);
            }
        }
    }

    let current = NetNs::current().ok();
    let mut rtnl = Rtnl::open().ok();
    let mut out = Vec::new();
    for (id, f) in found {
        let Some(path) = f.path else { continue };
        let Ok(ns) = NetNs::from_path(&path) else {
            continue;
        };
        let nsid = rtnl.as_mut().and_then(|r| r.nsid_of(&ns).ok().flatten());
        let mut pids = f.pids;
        pids.sort_unstable();
        pids.dedup();
        // Kernel threads all sit in the initial namespace and say nothing about who uses it:
        // counted, not listed (the host namespace had 90 of them ahead of its real processes).
        let (kthreads, user): (Vec<u32>, Vec<u32>) =
            pids.iter().partition(|&&pid| is_kernel_thread(pid));
        let processes: Vec<Owner> = user
            .iter()
            .map(|&pid| Owner {
                pid,
                comm: read_comm(pid),
            })
            .collect();
        let containers = containers_of(intent, id.inode, &pids, !kthreads.is_empty());
        let interfaces = if opts.skip_interfaces {
            None
        } else {
            ns.run(|| {
                Rtnl::open()
                    .and_then(|mut r| r.links())
                    .map(|l| l.len())
                    .ok()
            })
            .ok()
            .flatten()
        };
        out.push(NamespaceInfo {
            id,
            path,
            names: f.names,
            mounts: f.mounts,
            nsid,
            processes,
            kernel_threads: kthreads.len(),
            containers,
            interfaces,
            current: current.as_ref().map(|c| c.id() == id).unwrap_or(false),
        });
    }
    out
}

/// The containers a namespace belongs to: every engine container whose namespace it is (a
/// pod: its members, then its infra), then containers known only from a process's cgroup,
/// except in the `initial` namespace (the kernel threads'): a container process there uses the
/// host's network (a hostNetwork pod such as kube-proxy, or nettool's own debug container),
/// and the node's namespace is not that pod's.
fn containers_of(intent: &Intent, inode: u64, pids: &[u32], initial: bool) -> Vec<ContainerRef> {
    let as_ref = |c: &crate::engine::Container| ContainerRef {
        id: c.id.clone(),
        name: Some(c.name.clone()),
        engine: Some(c.engine),
        pod: c.pod.clone(),
        infra: c.infra,
    };
    let mut engine_side = intent.in_netns(inode);
    engine_side.sort_by(|a, b| (a.infra, &a.name).cmp(&(b.infra, &b.name)));
    let mut out: Vec<ContainerRef> = engine_side.into_iter().map(as_ref).collect();
    if initial {
        return out;
    }
    for &pid in pids {
        let from_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|c| container_id_from_cgroup(&c));
        let (cid, conmon_name) = match from_cgroup {
            Some(cid) => (cid, None),
            // No cgroup of its own (rootless Podman on cgroup v1): the conmon that is its
            // parent names it (`conmon -c ID -n NAME`).
            None => match conmon_parent(pid) {
                Some((cid, name)) => (cid, Some(name)),
                None => continue,
            },
        };
        if out.iter().any(|c| c.id == cid) {
            continue;
        }
        match intent.containers.iter().find(|c| c.id == cid) {
            // A host-network container's processes live in the host's namespace: not its own.
            Some(c) if c.host_network() => {}
            Some(c) => out.push(as_ref(c)),
            None => out.push(ContainerRef {
                id: cid,
                engine: conmon_name.as_ref().map(|_| EngineKind::Podman),
                name: conmon_name,
                pod: None,
                infra: false,
            }),
        }
    }
    out
}

/// The container `pid` is the first process of, from the conmon that is its parent:
/// conmon's `-c ID` and `-n NAME` (Podman's monitor runs one per container).
fn conmon_parent(pid: u32) -> Option<(String, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the comm field, which is in parentheses and may hold spaces: state, then ppid.
    let ppid: u32 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    if read_comm(ppid) != "conmon" {
        return None;
    }
    let argv = super::sockets::cmdline(ppid);
    let flag = |f: &str| {
        argv.iter()
            .position(|a| a == f)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    Some((flag("-c")?, flag("-n")?))
}

/// True for a kernel thread: PF_KTHREAD in /proc/PID/stat's flags (field 9). Read after the
/// comm field, which is in parentheses and may hold spaces.
pub(crate) fn is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            after.split_whitespace().nth(6)?.parse::<u64>().ok()
        })
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let octal = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok());
            if let Some(v) = octal {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescape() {
        assert_eq!(super::unescape_mount(r"/run/a\040b"), "/run/a b");
        assert_eq!(super::unescape_mount("/run/netns/x"), "/run/netns/x");
        assert_eq!(super::unescape_mount(r"/x\"), r"/x\");
    }
}
