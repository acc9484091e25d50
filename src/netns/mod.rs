//! The netns-aware core: namespace handles, discovery, links, sockets.
//!
//! Everything that touches a network namespace goes through here. The rule that keeps it
//! sane: a namespace switch (setns) happens only on a fresh OS thread made by [`NetNs::run`],
//! never on a thread that anything else uses (tokio workers included).

pub(crate) mod configure;
pub(crate) mod conntrack;
pub(crate) mod discover;
pub(crate) mod exec;
pub(crate) mod links;
pub mod named;
pub(crate) mod peers;
pub(crate) mod rtnl;
pub mod sockets;
pub(crate) mod sysctl;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};
use serde::{Deserialize, Serialize};

/// Where named namespaces live (`ip netns add NAME`).
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Where dockerd keeps its container namespaces.
pub const DOCKER_NETNS_DIR: &str = "/run/docker/netns";

/// A host file as this process can reach it: `NETTOOL_HOST_ROOT` (the host's / mounted inside
/// a container, as `kubectl debug node` does at /host) joined with `path`, else `path` itself.
/// Used for what the host keeps on disk (named namespaces, engine sockets, CNI's cache, the
/// kubelet's logs); namespaces of processes come from /proc, which a host-pid container shares.
pub fn host_path(path: &str) -> PathBuf {
    host_path_under(
        std::env::var_os("NETTOOL_HOST_ROOT")
            .as_deref()
            .map(Path::new),
        path,
    )
}

/// What a path [`host_path`] gave is on the host itself (the `NETTOOL_HOST_ROOT` prefix
/// taken off): what a command printed for the node's own shell must name.
pub(crate) fn path_on_host(path: &Path) -> PathBuf {
    path_on_host_under(
        std::env::var_os("NETTOOL_HOST_ROOT")
            .as_deref()
            .map(Path::new),
        path,
    )
}

/// [`path_on_host`] with the host root given (None: none set).
pub(crate) fn path_on_host_under(root: Option<&Path>, path: &Path) -> PathBuf {
    match root
        .filter(|r| !r.as_os_str().is_empty() && *r != Path::new("/"))
        .and_then(|r| path.strip_prefix(r).ok())
    {
        Some(rest) => Path::new("/").join(rest),
        None => path.to_path_buf(),
    }
}

fn host_path_under(root: Option<&Path>, path: &str) -> PathBuf {
    match root.filter(|r| !r.as_os_str().is_empty() && *r != Path::new("/")) {
        Some(r) => r.join(path.trim_start_matches('/')),
        None => PathBuf::from(path),
    }
}

/// The identity of a namespace: the (st_dev, st_ino) of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NsId {
    /// Device of the nsfs filesystem.
    pub dev: u64,
    /// Inode number, the number `lsns` and `readlink /proc/PID/ns/net` show.
    pub inode: u64,
}

/// Errors from opening or entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A namespace file could not be opened.
    // Not a `source` field: the OS error is in the message once (a chained source would be
    // printed a second time by `{:#}`).
    #[error("cannot open network namespace {path}: {error}")]
    Open {
        /// The file that was tried.
        path: PathBuf,
        /// Why it failed.
        error: std::io::Error,
    },
    /// The path exists but is not a network namespace.
    #[error("{0} is not a network namespace (expected an nsfs file like /run/netns/NAME or /proc/PID/ns/net)")]
    NotNetns(PathBuf),
    /// setns failed (usually: not root).
    #[error("cannot enter network namespace {path}: {error} (entering a namespace needs root or CAP_SYS_ADMIN)")]
    Enter {
        /// The namespace file.
        path: PathBuf,
        /// The errno.
        error: nix::Error,
    },
    /// The worker thread could not be spawned or panicked.
    #[error("namespace worker thread failed: {0}")]
    Thread(String),
    /// A TARGET matched nothing.
    #[error("no network namespace matches '{target}'; tried: {}", tried.join("; "))]
    NotFound {
        /// What the user typed.
        target: String,
        /// Each lookup and why it failed.
        tried: Vec<String>,
    },
    /// A bare TARGET matched more than one kind of thing, naming different namespaces.
    #[error("'{target}' is ambiguous: it matches {}; say which with name:, pid:, container: or a path", matches.join(" and "))]
    Ambiguous {
        /// What the user typed.
        target: String,
        /// What it matched.
        matches: Vec<String>,
    },
    /// `container:NAME` named no container of any engine.
    #[error("no container '{name}' ({})", asked)]
    NoContainer {
        /// What the user typed after `container:`.
        name: String,
        /// Which engines were asked and how it went, or that none is on this machine.
        asked: String,
    },
    /// `container:NAME` named more than one container.
    #[error("container '{name}' is ambiguous: it matches {}; give more of the id", matches.join(", "))]
    AmbiguousContainer {
        /// What the user typed.
        name: String,
        /// "ENGINE NAME (ID12)" of each match.
        matches: Vec<String>,
    },
    /// The container exists but has no network namespace (stopped, created, dead).
    #[error("container {name} is {state}{}", hint.as_ref().map(|h| format!(": {h}")).unwrap_or_default())]
    ContainerDown {
        /// Its name.
        name: String,
        /// Its state in the engine's words ("exited (code 137)").
        state: String,
        /// The engine's command that brings it back.
        hint: Option<String>,
    },
}

/// An open handle to a network namespace. Cheap to clone; the fd stays open while any clone lives.
#[derive(Debug, Clone)]
pub struct NetNs {
    file: Arc<File>,
    path: PathBuf,
    id: NsId,
    label: String,
}

const NSFS_MAGIC: i64 = 0x6e73_6673;
// ioctl(fd, NS_GET_NSTYPE) returns the CLONE_NEW* flag of the namespace type.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// True when `file` (an O_PATH handle will do) is on nsfs: a namespace file.
fn is_nsfs(file: &File) -> bool {
    nix::sys::statfs::fstatfs(file.as_fd())
        .map(|s| s.filesystem_type().0 == NSFS_MAGIC)
        .unwrap_or(false)
}

/// True when `file` is a network namespace file (nsfs of type net).
fn is_net_ns(file: &File) -> bool {
    // SAFETY: plain ioctl on a valid fd with no argument.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind >= 0 {
        return kind == libc::CLONE_NEWNET;
    }
    // Kernels before 4.11 lack NS_GET_NSTYPE: fall back to the filesystem magic.
    is_nsfs(file)
}

impl NetNs {
    /// Open a namespace file (`/run/netns/X`, `/proc/PID/ns/net`, a bind mount...).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref();
        let open_error = |error| NetnsError::Open {
            path: path.into(),
            error,
        };
        // Looked at through an O_PATH handle, which opens nothing: only a namespace file is
        // then opened for real, through that handle (the same file, whatever the path names
        // by then). A path can be a user's (a rootless engine's sandbox key, its API's
        // answer): opening a FIFO there would block doctor, a device would act.
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
            .map_err(open_error)?;
        if !is_nsfs(&handle) {
            return Err(NetnsError::NotNetns(path.into()));
        }
        let file =
            File::open(format!("/proc/self/fd/{}", handle.as_raw_fd())).map_err(open_error)?;
        drop(handle);
        if !is_net_ns(&file) {
            return Err(NetnsError::NotNetns(path.into()));
        }
        let meta = file.metadata().map_err(|error| NetnsError::Open {
            path: path.into(),
            error,
        })?;
        Ok(NetNs {
            file: Arc::new(file),
            path: path.into(),
            id: NsId {
                dev: meta.dev(),
                inode: meta.ino(),
            },
            label: path.display().to_string(),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, NetnsError> {
        Self::from_path("/proc/thread-self/ns/net").map(|n| n.with_label("current"))
    }

    /// The namespace of process `pid`.
    pub fn from_pid(pid: u32) -> Result<Self, NetnsError> {
        Self::from_path(format!("/proc/{pid}/ns/net")).map(|n| n.with_label(&format!("pid:{pid}")))
    }

    /// A named namespace, `/run/netns/NAME` (what `ip netns add NAME` makes).
    pub fn from_name(name: &str) -> Result<Self, NetnsError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(NetnsError::NotFound {
                target: name.into(),
                tried: vec!["a namespace name cannot be empty or contain '/'".into()],
            });
        }
        Self::from_path(host_path(NETNS_RUN_DIR).join(name)).map(|n| n.with_label(name))
    }

    /// A container's namespace by name or id prefix: Docker, Podman, CNI (by container id)
    /// or a nettool lab container, whichever engine knows it.
    pub fn from_container(name: &str) -> Result<Self, NetnsError> {
        Self::from_container_in(&crate::engine::Intent::read(), name)
    }

    /// The same, from an intent already read (one read per run).
    pub fn from_container_in(
        intent: &crate::engine::Intent,
        name: &str,
    ) -> Result<Self, NetnsError> {
        use crate::engine::Lookup;
        let c = match intent.lookup(name) {
            Lookup::Found(c) => c,
            Lookup::Ambiguous(all) => {
                return Err(NetnsError::AmbiguousContainer {
                    name: name.into(),
                    matches: all
                        .iter()
                        .map(|c| format!("{} {} ({})", c.engine, c.name, c.short_id()))
                        .collect(),
                })
            }
            Lookup::NotFound => {
                return Err(NetnsError::NoContainer {
                    name: name.into(),
                    asked: asked_text(intent),
                })
            }
        };
        let down = || NetnsError::ContainerDown {
            name: c.name.clone(),
            state: c.state.to_string(),
            hint: c.start_hint(),
        };
        let ns = match (&c.netns, c.pid) {
            (Some(p), pid) if c.state.is_up() || c.pid.is_none() => {
                Self::from_path(p).or_else(|e| match (e, pid) {
                    // A rootless Podman's sandbox key is a bind mount in its user's mount
                    // namespace (an empty file from ours): its process holds the namespace.
                    (NetnsError::NotNetns(_), Some(pid)) if c.state.is_up() => Self::from_pid(pid),
                    (e, _) => Err(e),
                })
            }
            (_, Some(pid)) if c.state.is_up() => Self::from_pid(pid),
            // A source that knows no state and no process (the kubelet's log links): the
            // container is up when a process of the machine lives in its cgroup.
            (None, None) if matches!(c.state, crate::engine::ContainerState::Other(_)) => {
                match crate::engine::cgroup::pid_in_container(&c.id) {
                    Some(pid) => Self::from_pid(pid),
                    None => return Err(down()),
                }
            }
            _ => return Err(down()),
        };
        // A namespace that vanished between the engine's answer and now is a stopped container.
        let ns = ns.map_err(|e| match e {
            NetnsError::Open { .. } | NetnsError::NotNetns(_) => down(),
            e => e,
        })?;
        Ok(ns.with_label(&format!("container:{}", c.name)))
    }

    /// Resolve a TARGET as the commands accept it: `name:N`, `pid:N`, `container:N`,
    /// `pod:NS/NAME`, a path, or a bare word tried as name, path, pid, container in that order.
    pub fn open(target: &str) -> Result<Self, NetnsError> {
        Self::open_with(target, None)
    }

    /// The same, looking containers up in an intent already read (None: read it when needed).
    pub fn open_with(
        target: &str,
        intent: Option<&crate::engine::Intent>,
    ) -> Result<Self, NetnsError> {
        let from_container = |name: &str| match intent {
            Some(i) => Self::from_container_in(i, name),
            None => Self::from_container(name),
        };
        if let Some(rest) = target.strip_prefix("pid:") {
            let pid = rest.parse::<u32>().map_err(|_| NetnsError::NotFound {
                target: target.into(),
                tried: vec![format!("pid:{rest}: not a process id")],
            })?;
            return Self::from_pid(pid);
        }
        if let Some(rest) = target.strip_prefix("container:") {
            return from_container(rest);
        }
        if let Some(pod) = target.strip_prefix("pod:") {
            // The label nettool prints for a pod's namespace (`pod:web/shop-7d9f`, or a Podman
            // pod's name): the namespace of any of its containers that is up.
            let read;
            let intent = match intent {
                Some(i) => i,
                None => {
                    read = crate::engine::Intent::read();
                    &read
                }
            };
            let members: Vec<&crate::engine::Container> = intent
                .containers
                .iter()
                .filter(|c| c.pod.as_deref() == Some(pod))
                .collect();
            let mut tried = Vec::new();
            for c in &members {
                match Self::from_container_in(intent, &c.id) {
                    Ok(ns) => return Ok(ns.with_label(target)),
                    Err(e) => tried.push(format!("{}: {e}", c.name)),
                }
            }
            if members.is_empty() {
                tried.push(format!(
                    "no engine knows a pod '{pod}' ({})",
                    asked_text(intent)
                ));
            } else if members
                .iter()
                .all(|c| c.engine == crate::engine::EngineKind::Podman && c.pid.is_none())
            {
                // A Podman pod that is down: one fix brings every member back, so say that
                // one instead of each member's own `podman start`.
                let states: Vec<String> = members
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.state))
                    .collect();
                tried = vec![format!(
                    "pod {pod} is not running ({}): start it with `podman pod start {pod}`",
                    states.join(", ")
                )];
            }
            return Err(NetnsError::NotFound {
                target: target.into(),
                tried,
            });
        }
        if let Some(rest) = target.strip_prefix("name:") {
            return Self::from_name(rest);
        }
        if target == "current" || target == "self" {
            return Self::current();
        }
        if target.contains('/') {
            return Self::from_path(target);
        }
        // A bare word: name, then pid, then container. Collect every match so an ambiguous
        // word is reported rather than silently picking one.
        let mut tried = Vec::new();
        let mut found: Vec<(String, NetNs)> = Vec::new();
        match Self::from_name(target) {
            Ok(ns) => found.push((format!("namespace name {NETNS_RUN_DIR}/{target}"), ns)),
            Err(e) => tried.push(format!("name: {e}")),
        }
        if let Ok(pid) = target.parse::<u32>() {
            match Self::from_pid(pid) {
                Ok(ns) => found.push((format!("process {pid}"), ns)),
                Err(e) => tried.push(format!("pid: {e}")),
            }
        } else {
            tried.push("pid: not a number".into());
        }
        if found.is_empty() {
            match from_container(target) {
                Ok(ns) => found.push((format!("container {target}"), ns)),
                // The word names a container that is there but has no namespace now (or
                // several): that is the answer, not one failed guess among three.
                Err(
                    e @ (NetnsError::ContainerDown { .. } | NetnsError::AmbiguousContainer { .. }),
                ) => return Err(e),
                Err(e) => tried.push(format!("container: {e}")),
            }
        }
        let first_id = found.first().map(|(_, ns)| ns.id);
        if found.len() > 1 && found.iter().any(|(_, ns)| Some(ns.id) != first_id) {
            return Err(NetnsError::Ambiguous {
                target: target.into(),
                matches: found.into_iter().map(|(w, _)| w).collect(),
            });
        }
        match found.into_iter().next() {
            Some((_, ns)) => Ok(ns),
            None => Err(NetnsError::NotFound {
                target: target.into(),
                tried,
            }),
        }
    }

    /// Give this handle a human label (shown in errors and output).
    pub fn with_label(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    /// The identity (st_dev, inode) of this namespace.
    pub fn id(&self) -> NsId {
        self.id
    }

    /// The file this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A short human label: a name, `pid:N`, `container:NAME` or the path.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The open namespace file, e.g. for IFLA_NET_NS_FD or NETNSA_FD.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Run `f` on a fresh OS thread inside this namespace and return its value.
    ///
    /// Sockets made inside `f` stay in this namespace when handed back, so a listener can be
    /// created here and then served from the async runtime.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        ENTRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.id.inode))
                .spawn_scoped(s, || {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|error| {
                        NetnsError::Enter {
                            path: self.path.clone(),
                            error,
                        }
                    })?;
                    Ok(f())
                })
                .map_err(|e| NetnsError::Thread(e.to_string()))?;
            handle
                .join()
                .map_err(|_| NetnsError::Thread("the closure panicked".into()))?
        })
    }
}

impl NetNs {
    /// Move the calling thread into this namespace. Only for a thread its caller made for
    /// itself and nothing else shares (the proxy's loop and dialer threads, which live in the
    /// namespace they dial in and move when it is replaced; the --target-netns lookup), never
    /// a tokio worker.
    pub(crate) fn enter_this_thread(&self) -> Result<(), NetnsError> {
        ENTRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|error| NetnsError::Enter {
            path: self.path.clone(),
            error,
        })
    }
}

impl PartialEq for NetNs {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// Namespace entries (NetNs::run calls) this process made.
pub(crate) static ENTRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Scans of /proc (every process) this process made.
pub(crate) static PROC_SCANS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Count one walk over every /proc/PID (doctor's snapshot reports how many one run needed).
pub(crate) fn count_proc_scan() {
    PROC_SCANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Run `f` inside `ns`; a free-function spelling of [`NetNs::run`].
pub fn in_netns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    ns.run(f)
}

/// Which engines an intent asked and how it went, for "no such container" errors.
fn asked_text(intent: &crate::engine::Intent) -> String {
    if intent.sources.is_empty() {
        return format!(
            "no container engine on this machine: no Docker socket at {}, no Podman socket at {}, \
             no CNI results in {}, no nettool lab; DOCKER_HOST or CONTAINER_HOST=unix://PATH \
             names a daemon elsewhere",
            crate::engine::docker::DEFAULT_SOCKET,
            crate::engine::podman::ROOTFUL_SOCKET,
            crate::engine::cni::RESULTS_DIR
        );
    }
    let parts: Vec<String> = intent
        .sources
        .iter()
        .map(|s| match &s.error {
            None => format!("{} at {}", s.engine, s.endpoint),
            Some(e) => format!("{} at {} failed: {e}", s.engine, s.endpoint),
        })
        .collect();
    format!("asked {}", parts.join("; "))
}

#[cfg(test)]
mod host_root_tests {
    use super::*;

    #[test]
    fn a_host_path_is_printed_as_the_host_names_it() {
        let host = Some(Path::new("/host"));
        let seen = host_path_under(host, "/run/user/1001/docker.sock");
        assert_eq!(
            path_on_host_under(host, &seen),
            Path::new("/run/user/1001/docker.sock")
        );
        assert_eq!(path_on_host_under(host, Path::new("/host")), Path::new("/"));
        // Not under the host root, or none set: as it is.
        assert_eq!(
            path_on_host_under(host, Path::new("/hostile/x")),
            Path::new("/hostile/x")
        );
        assert_eq!(
            path_on_host_under(None, Path::new("/host/run")),
            Path::new("/host/run")
        );
    }

    #[test]
    fn host_paths_go_under_the_host_root_when_one_is_set() {
        let host = Some(Path::new("/host"));
        assert_eq!(
            host_path_under(host, "/run/netns"),
            Path::new("/host/run/netns")
        );
        assert_eq!(host_path_under(None, "/run/netns"), Path::new("/run/netns"));
        assert_eq!(
            host_path_under(Some(Path::new("/")), "/run/netns"),
            Path::new("/run/netns")
        );
        assert_eq!(
            host_path_under(Some(Path::new("")), "/run/netns"),
            Path::new("/run/netns")
        );
    }
}

#[cfg(test)]
mod pod_tests {
    use super::*;
    use crate::engine::{Container, ContainerState, EngineKind, Intent};

    fn member(name: &str, engine: EngineKind, infra: bool) -> Container {
        Container {
            state: ContainerState::Exited { code: 0 },
            pod: Some("shop".into()),
            infra,
            ..Container::for_test(engine, &format!("{name}0123456789abcdef"), name)
        }
    }

    #[test]
    fn a_stopped_podman_pod_is_told_with_the_pods_own_fix() {
        let intent = Intent {
            containers: vec![
                member("shop-infra", EngineKind::Podman, true),
                member("shop-web", EngineKind::Podman, false),
            ],
            ..Default::default()
        };
        let e = NetNs::open_with("pod:shop", Some(&intent))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no network namespace matches 'pod:shop'; tried: pod shop is not running (shop-infra exited (code 0), shop-web exited (code 0)): start it with `podman pod start shop`"
        );
        // A Kubernetes pod's members keep their own words (the kubelet restarts them).
        let intent = Intent {
            containers: vec![member("web", EngineKind::Kubernetes, false)],
            ..Default::default()
        };
        let e = NetNs::open_with("pod:shop", Some(&intent))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("podman pod start"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_namespace_file_is_opened_a_fifo_or_a_file_is_refused_without_blocking() {
        let d = std::env::temp_dir().join(format!("nt-nsfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let fifo = d.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let file = d.join("file");
        std::fs::write(&file, "").unwrap();
        for p in [&fifo, &link, &file] {
            let (tx, rx) = std::sync::mpsc::channel();
            let path = p.clone();
            std::thread::spawn(move || {
                let _ = tx.send(NetNs::from_path(&path).map(|_| ()));
            });
            let r = rx.recv_timeout(std::time::Duration::from_secs(5));
            if r.is_err() {
                // Opened for reading, the FIFO waits for a writer: give it one so the thread
                // ends, then fail.
                let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
            }
            match r {
                Ok(Err(NetnsError::NotNetns(_))) => {}
                other => panic!("{}: {other:?}", p.display()),
            }
        }
        // A namespace file still opens, through a link too.
        let own = d.join("own");
        std::os::unix::fs::symlink("/proc/thread-self/ns/net", &own).unwrap();
        let want = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        assert_eq!(NetNs::from_path(&own).unwrap().id().inode, want);
        assert_eq!(NetNs::current().unwrap().id().inode, want);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
