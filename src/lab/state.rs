//! What a lab is once it is up (state.json, the contract other tests read) and the journal
//! of everything created (journal.jsonl, what teardown undoes), under /run/nettool/<NAME>/.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::spec::{Backend, Proto};

/// Where every lab keeps its state.
pub const STATE_ROOT: &str = "/run/nettool";

/// Errors reading or writing lab state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No lab with that name is up.
    #[error(
        "no lab named '{0}' (nothing under {STATE_ROOT}/{0}); `ls {STATE_ROOT}` lists the labs"
    )]
    NotFound(String),
    /// A state file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A state file is not what this version wrote.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decode error.
        message: String,
    },
}

fn io(path: &Path, source: std::io::Error) -> StateError {
    StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The state directory of lab `name`.
pub fn dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

/// One network of a running lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkState {
    /// Network name from the lab file.
    pub name: String,
    /// The Linux bridge, in the lab's host namespace.
    pub bridge: String,
    /// IPv4 subnet.
    pub subnet: Ipv4Net,
    /// Gateway address on the bridge.
    pub gateway: Ipv4Addr,
    /// IPv6 subnet, when enabled.
    pub ipv6: Option<Ipv6Net>,
    /// IPv6 gateway, when enabled.
    pub gateway6: Option<Ipv6Addr>,
    /// Embedded DNS on this network.
    pub dns: bool,
    /// Internal network (no way out).
    pub internal: bool,
    /// Where the embedded DNS forwards unknown names (null: it answers NXDOMAIN).
    pub upstream: Option<std::net::SocketAddr>,
}

/// One interface of a container on one network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InterfaceState {
    /// Network name.
    pub network: String,
    /// Interface name inside the container (eth0, eth1...).
    pub interface: String,
    /// IPv4 address.
    pub address: Ipv4Addr,
    /// IPv6 address, when the network has IPv6.
    pub address6: Option<Ipv6Addr>,
    /// The veth end on the host side, enslaved to the network's bridge.
    pub host_veth: String,
}

/// One container of a running lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    /// Container name.
    pub name: String,
    /// Named namespace it runs in (`ip netns exec NETNS ...`); null for host mode in a
    /// non-isolated lab (the caller's namespace).
    pub netns: Option<String>,
    /// bridge, host, none or container:NAME.
    pub mode: String,
    /// One entry per network joined.
    pub networks: Vec<InterfaceState>,
    /// Extra DNS names.
    pub aliases: Vec<String>,
    /// The command started inside, if any.
    pub run: Option<String>,
}

/// One published port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortState {
    /// tcp or udp.
    pub proto: Proto,
    /// Host address (0.0.0.0 = all).
    pub host_ip: IpAddr,
    /// Host port.
    pub host_port: u16,
    /// Container name.
    pub container: String,
    /// Container address the DNAT goes to.
    pub container_ip: Ipv4Addr,
    /// Container port.
    pub container_port: u16,
}

/// A process the lab started and teardown stops.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessState {
    /// What it is: "daemon", "proxy", "service:web".
    pub role: String,
    /// Process id.
    pub pid: u32,
    /// Its log file.
    pub log: Option<String>,
}

/// The whole lab as `setup --json` prints it and state.json keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// The lab file it came from, or `<default lab>`.
    pub source: String,
    /// The named namespace acting as the lab's host (`--isolated`), or null for the caller's.
    pub host_netns: Option<String>,
    /// Firewall backend.
    pub backend: Backend,
    /// Userland proxy mode: "off", "single" (one `nettool proxy`) or "docker-style" (one per port).
    pub userland_proxy: String,
    /// Networks.
    pub networks: Vec<NetworkState>,
    /// Containers.
    pub containers: Vec<ContainerState>,
    /// Published ports.
    pub ports: Vec<PortState>,
    /// Pids of the userland proxies.
    pub proxy_pids: Vec<u32>,
    /// Every process the lab started (daemon, proxies, services).
    pub processes: Vec<ProcessState>,
    /// The state directory (logs live here too).
    pub state_dir: String,
}

impl LabState {
    /// The container called `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerState> {
        self.containers.iter().find(|c| c.name == name)
    }
    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<&NetworkState> {
        self.networks.iter().find(|n| n.name == name)
    }
}

/// Which namespace an undo record acts in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Where {
    /// The lab's host namespace (the named one when isolated, else the caller's).
    Host,
    /// A named namespace.
    Netns(String),
}

/// One journal record: what is about to be created and how to undo it.
/// A record is written before its object is created, so a setup killed at any instant leaves
/// nothing teardown does not know of; undoing an object that was never made is a no-op, and a
/// create that failed because the name was taken is cancelled by a [`Undo::NotCreated`] record
/// (never delete somebody else's object of the same name). Namespaces and links carry a mark
/// of their own in the record too (entry inode, ifindex), so a setup killed between a refused
/// create and its `NotCreated` record still leaves somebody else's object alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Undo {
    /// A named namespace: unmount and remove.
    Netns {
        /// Its name.
        name: String,
        /// The inode its /run/netns entry was made with before it got the name
        /// (`named::create_marked`): an entry with another inode is somebody else's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry: Option<u64>,
    },
    /// A link: delete it.
    Link {
        /// Where it lives.
        at: Where,
        /// Its name.
        name: String,
        /// A namespace whose deletion removes this link too (a veth's peer side).
        dies_with: Option<String>,
        /// The ifindex setup asked the kernel for: a link of this name with another index is
        /// somebody else's. (None in journals written before it was recorded.)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ifindex: Option<u32>,
    },
    /// A sysctl we changed: write the old value back.
    Sysctl {
        /// Where.
        at: Where,
        /// Dotted name.
        name: String,
        /// The value before.
        old: String,
    },
    /// Firewall rules: apply `undo` (deletes exactly what was added).
    Firewall {
        /// Where.
        at: Where,
        /// Which tool.
        backend: Backend,
        /// iptables-restore / nft text that removes the lab's rules.
        undo: String,
    },
    /// A directory we created (e.g. /etc/netns/NAME): remove it recursively.
    Dir {
        /// The path.
        path: String,
    },
    /// The create the record before it announced failed because the object already existed
    /// (somebody else's): teardown must leave it alone.
    NotCreated {
        /// The record it cancels.
        undo: Box<Undo>,
    },
    /// A directory that may be shared with other labs (/etc/netns): removed only when empty.
    EmptyDir {
        /// The path.
        path: String,
    },
    /// The nftables tables and chains ("ip nat", "ip nat PREROUTING") that existed in the lab
    /// host before the first lab's iptables rules went in (iptables-nft creates the tables and
    /// base chains it needs and leaves them behind empty): the last lab's teardown removes the
    /// empty ones that are not listed.
    NftBaseline {
        /// Tables and chains that existed before.
        existed: Vec<String>,
    },
    /// A process: SIGTERM, then SIGKILL.
    Process {
        /// What it is.
        role: String,
        /// Its pid.
        pid: u32,
        /// /proc/PID/stat start time, so a reused pid is never killed.
        start_time: u64,
    },
}

/// The host namespace identity recorded at setup (non-isolated labs are torn down from there).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostRecord {
    /// The named host namespace when isolated.
    pub netns: Option<String>,
    /// Inode of the host namespace.
    pub inode: u64,
    /// The `setup` process building the lab (so a second setup or teardown can tell a setup
    /// still at work from one that was killed).
    #[serde(default)]
    pub setup_pid: Option<u32>,
    /// Its /proc start time (a reused pid is not the setup).
    #[serde(default)]
    pub setup_start_time: Option<u64>,
}

impl HostRecord {
    /// The inode of the lab's host namespace now: the named one when isolated (None once it is
    /// gone), else the recorded one.
    pub fn host_inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        match &self.netns {
            Some(n) => std::fs::metadata(crate::netns::named::path_of(n))
                .ok()
                .map(|m| m.ino()),
            None => Some(self.inode),
        }
    }

    /// The pid of the setup that is still building this lab, if it is alive.
    pub fn setup_running(&self) -> Option<u32> {
        let pid = self.setup_pid?;
        let t = process_start_time(pid)?;
        (Some(t) == self.setup_start_time).then_some(pid)
    }
}

/// The environment variable every process a lab starts carries (`NETTOOL_LAB=NAME`): the lab
/// daemon, the proxies and, inherited, every service. Teardown finds them by it even when no
/// journal line names them (a setup killed between spawn and journal write).
pub const LAB_MARKER: &str = "NETTOOL_LAB";

/// The lab a process belongs to, from its `NETTOOL_LAB=NAME` marker.
pub fn lab_of_process(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{LAB_MARKER}=");
    env.split(|b| *b == 0).find_map(|v| {
        v.strip_prefix(prefix.as_bytes())
            .map(|n| String::from_utf8_lossy(n).into_owned())
    })
}

/// Live processes carrying `NETTOOL_LAB=name` in their environment: (pid, start time).
pub fn marked_processes(name: &str) -> Vec<(u32, u64)> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| lab_of_process(*pid).as_deref() == Some(name))
        .filter_map(|pid| Some((pid, process_start_time(pid)?)))
        .collect()
}

/// Append-only journal at /run/nettool/<NAME>/journal.jsonl.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
}

impl Journal {
    /// Create the state directory and an empty journal for lab `name` (fails when it exists).
    pub fn create(name: &str, host: &HostRecord) -> Result<Self, StateError> {
        let d = dir(name);
        // Another lab's teardown removes STATE_ROOT when it empties it: try again then.
        let mut tries = 0;
        loop {
            std::fs::create_dir_all(STATE_ROOT).map_err(|e| io(Path::new(STATE_ROOT), e))?;
            match std::fs::create_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 5 => tries += 1,
                Err(e) => return Err(io(&d, e)),
            }
        }
        let hp = d.join("host.json");
        std::fs::write(
            &hp,
            serde_json::to_vec(host).expect("host record serializes"),
        )
        .map_err(|e| io(&hp, e))?;
        let path = d.join("journal.jsonl");
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        Ok(Journal { path, file })
    }

    /// Record one undo step, right after the object it undoes was created.
    pub fn record(&mut self, undo: &Undo) -> Result<(), StateError> {
        let mut line = serde_json::to_vec(undo).expect("undo serializes");
        line.push(b'\n');
        self.file.write_all(&line).map_err(|e| io(&self.path, e))
    }
}

/// Append one record to the journal of another lab `name` (a duty handed over by a lab
/// being torn down).
pub fn append_record(name: &str, undo: &Undo) -> Result<(), StateError> {
    let path = dir(name).join("journal.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    let mut line = serde_json::to_vec(undo).expect("undo serializes");
    line.push(b'\n');
    file.write_all(&line).map_err(|e| io(&path, e))
}

/// Read lab `name`'s journal (records in creation order, [`Undo::NotCreated`] applied: the
/// records they cancel are gone). A torn last line is ignored.
pub fn read_journal(name: &str) -> Result<Vec<Undo>, StateError> {
    let mut out: Vec<Undo> = Vec::new();
    for u in read_journal_raw(name)? {
        match u {
            Undo::NotCreated { undo } => {
                if let Some(i) = out.iter().rposition(|r| *r == *undo) {
                    out.remove(i);
                }
            }
            u => out.push(u),
        }
    }
    Ok(out)
}

fn read_journal_raw(name: &str) -> Result<Vec<Undo>, StateError> {
    let path = dir(name).join("journal.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path, e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The host record of lab `name`, if any.
pub fn read_host(name: &str) -> Option<HostRecord> {
    let p = dir(name).join("host.json");
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// True when lab `name` has a state directory (up, or half up).
pub fn exists(name: &str) -> bool {
    dir(name).exists()
}

/// Write state.json for a lab that is up.
pub fn save(state: &LabState) -> Result<(), StateError> {
    let p = dir(&state.name).join("state.json");
    let tmp = p.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(state).expect("state serializes"),
    )
    .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &p).map_err(|e| io(&p, e))
}

/// Load the state of lab `name` (what `setup --json` printed).
pub fn load(name: &str) -> Result<LabState, StateError> {
    let p = dir(name).join("state.json");
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StateError::NotFound(name.into()))
        }
        Err(e) => return Err(io(&p, e)),
    };
    serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
        path: p,
        message: e.to_string(),
    })
}

/// Names of every lab with a state directory.
pub fn list() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(STATE_ROOT)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The start time (field 22 of /proc/PID/stat) of a live, non-zombie process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}
