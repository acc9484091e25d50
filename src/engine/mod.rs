//! What each container engine intended: containers (in every state), their networks,
//! attachments and published ports, from Docker, Podman, CNI's cache and nettool labs.
//!
//! Read once per run ([`Intent::read`]) and handed around as data: the facts snapshot records
//! it, naming (`netns list`, `peer`, `topology`) and the `container:NAME` resolver read it.
//! An engine that is absent costs nothing; one that is present but fails is a
//! [`SourceStatus`] with an error, never a crash.

pub(crate) mod cgroup;
pub(crate) mod cni;
pub(crate) mod docker;
pub(crate) mod kube;
pub(crate) mod lab;
pub(crate) mod podman;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::program::shell_quote;

/// Which engine a container or network belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// dockerd, through its Engine API.
    Docker,
    /// Podman, through its Docker-compatible API (plus a few libpod endpoints).
    Podman,
    /// A CNI plugin chain, from libcni's cached results.
    Cni,
    /// A nettool lab (`nettool setup`), from its state file.
    Lab,
    /// A Kubernetes pod's container on a node, from the kubelet's log links.
    Kubernetes,
}

impl EngineKind {
    /// The engine's own command line tool, used in the fixes nettool prints.
    pub fn cli(self) -> &'static str {
        match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
            EngineKind::Cni => "cni",
            EngineKind::Lab => "nettool",
            EngineKind::Kubernetes => "kubectl",
        }
    }
}

impl EngineKind {
    /// Which engine a name means when several have it: daemons first, then CNI, then labs.
    fn rank(self) -> u8 {
        match self {
            EngineKind::Docker | EngineKind::Podman => 0,
            EngineKind::Cni | EngineKind::Kubernetes => 1,
            EngineKind::Lab => 2,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
            EngineKind::Cni => "cni",
            EngineKind::Lab => "lab",
            EngineKind::Kubernetes => "kubernetes",
        })
    }
}

/// Which engines were asked, where, and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The engine.
    pub engine: EngineKind,
    /// Where it was asked: a socket path, a cache directory, a state directory.
    pub endpoint: String,
    /// Why it could not be read, when it could not (the engine is there but failed).
    pub error: Option<String>,
}

/// A container's state in the engine's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused (frozen; its namespace still exists).
    Paused,
    /// Being restarted by the engine.
    Restarting,
    /// Stopped, with its exit code.
    Exited {
        /// The exit code of its main process.
        code: i64,
    },
    /// Dead (the engine failed to stop or remove it).
    Dead,
    /// Any other word the engine used ("removing", "stopped", "configured"...).
    Other(String),
}

impl ContainerState {
    /// From the engine's State.Status word and exit code.
    pub fn from_status(status: &str, exit_code: i64) -> Self {
        match status {
            "created" | "configured" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "exited" | "stopped" => ContainerState::Exited { code: exit_code },
            "dead" => ContainerState::Dead,
            other => ContainerState::Other(other.to_string()),
        }
    }

    /// True when the container's processes exist (running or paused): it has a namespace.
    pub fn is_up(&self) -> bool {
        matches!(
            self,
            ContainerState::Running | ContainerState::Paused | ContainerState::Restarting
        )
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerState::Created => f.write_str("created"),
            ContainerState::Running => f.write_str("running"),
            ContainerState::Paused => f.write_str("paused"),
            ContainerState::Restarting => f.write_str("restarting"),
            ContainerState::Exited { code } => write!(f, "exited (code {code})"),
            ContainerState::Dead => f.write_str("dead"),
            ContainerState::Other(s) => f.write_str(s),
        }
    }
}

/// One network attachment of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The engine's network name.
    pub network: String,
    /// IPv4 address on that network.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address on that network.
    pub ipv6: Option<Ipv6Addr>,
    /// MAC address of the container's interface.
    pub mac: Option<String>,
    /// The container's interface name, when the engine records it (libcni's cache `ifName`:
    /// a chain added as net1 is re-added as net1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

impl Attachment {
    /// Its addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.ipv4
            .map(std::net::IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(std::net::IpAddr::V6))
    }
}

/// One published port, as the engine intends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// "tcp", "udp" or "sctp".
    pub proto: String,
    /// The host address it is published on; None = every address.
    pub host_ip: Option<IpAddr>,
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
}

/// A container as its engine describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// Which engine runs it.
    pub engine: EngineKind,
    /// Full id (64 hex for Docker/Podman; the CNI container id; `LAB/NAME` for a lab).
    pub id: String,
    /// Name (no leading '/'); a CNI container has only its id.
    pub name: String,
    /// State in the engine's words.
    pub state: ContainerState,
    /// Pid of its main process, when running.
    pub pid: Option<u32>,
    /// A file that opens its network namespace (sandbox key, /run/netns/NAME), when it has one;
    /// for a stale CNI cache entry, the path the cache names (which opens nothing now).
    pub netns: Option<PathBuf>,
    /// Inode of that namespace, read when the intent was read (joins it to discovery).
    pub netns_inode: Option<u64>,
    /// The engine's network mode: "bridge", "host", "none", "container:ID", a network name...
    pub network_mode: String,
    /// Its networks and addresses.
    pub attachments: Vec<Attachment>,
    /// Its published ports.
    pub ports: Vec<PortBinding>,
    /// The Podman pod it belongs to (pod name).
    pub pod: Option<String>,
    /// True for a pod's infra container (it holds the pod's namespaces).
    pub infra: bool,
    /// The group it belongs to: a nettool lab's name, or a Compose project.
    pub project: Option<String>,
    /// The networks its create command named (Podman's `CreateCommand`, read only for a
    /// container on no network: Podman forgets a network once disconnected from it). Empty:
    /// none named, so the engine's default network; None: no such record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_networks: Option<Vec<String>>,
    /// The user whose rootless Podman runs it (None: a rootful engine's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootless: Option<RootlessOwner>,
}

/// A rootless engine's user: its commands run as that user, with its runtime directory (and
/// for Docker its API socket: the docker CLI does not look in XDG_RUNTIME_DIR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootlessOwner {
    /// The user's id.
    pub uid: u32,
    /// The user's name (the id as text when /etc/passwd does not know it).
    pub user: String,
    /// The group its API socket belongs to: the group a user /etc/passwd does not know runs as.
    #[serde(default)]
    pub gid: u32,
    /// Its XDG_RUNTIME_DIR (the API socket is `podman/podman.sock` or `docker.sock` in it).
    pub runtime_dir: PathBuf,
    /// Rootless Docker: DOCKER_HOST for its CLI (`unix://DIR/docker.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
}

impl RootlessOwner {
    /// argv that runs `cmd` as this user with its runtime directory, from root: what
    /// rootless Podman needs to find that user's containers (runuser sets HOME and USER).
    /// runuser needs a name /etc/passwd knows; for a user it does not know (the name is the
    /// id), setpriv takes the ids themselves.
    pub fn run_as(&self, cmd: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = if self.user == self.uid.to_string() {
            vec![
                "setpriv".to_string(),
                format!("--reuid={}", self.uid),
                format!("--regid={}", self.gid),
                "--clear-groups".into(),
            ]
        } else {
            vec![
                "runuser".to_string(),
                "-u".into(),
                self.user.clone(),
                "--".into(),
            ]
        };
        v.extend([
            "env".to_string(),
            format!("XDG_RUNTIME_DIR={}", self.runtime_dir.display()),
        ]);
        v.extend(
            self.docker_host
                .as_ref()
                .map(|h| format!("DOCKER_HOST={h}")),
        );
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }
}

impl Container {
    /// The first 12 characters of the id, as the engines print it.
    pub fn short_id(&self) -> &str {
        let end = self
            .id
            .char_indices()
            .nth(12)
            .map(|(i, _)| i)
            .unwrap_or(self.id.len());
        &self.id[..end]
    }

    /// True when the container shares the engine host's namespace (`--network host`).
    pub fn host_network(&self) -> bool {
        self.network_mode == "host"
    }

    /// What brings a container without a namespace back, in the engine's own words.
    pub fn start_hint(&self) -> Option<String> {
        // A rootless Podman's commands run as its user (root's podman does not know it).
        // Quoted: a rootless engine's runtime directory and names come from its user.
        let cli = match &self.rootless {
            Some(o) => o
                .run_as(&[self.engine.cli()])
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
            None => self.engine.cli().to_string(),
        };
        let name = shell_quote(&self.name);
        match (&self.state, self.engine) {
            (_, EngineKind::Cni) => Some(format!(
                "libcni's cache holds its result but its namespace {} opens no namespace; the runtime that made the container owns it: `{} doctor container:{}` prints the chain's DEL (its rules and address go) and the ADD into a new namespace",
                self.netns
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "?".into()),
                crate::program::me(),
                self.id
            )),
            (_, EngineKind::Kubernetes) => self.pod.as_ref().and_then(|p| p.split_once('/')).map(
                |(ns, pod)| {
                    format!(
                        "the kubelet restarts it as the pod's restartPolicy says: `kubectl -n {ns} describe pod {pod}` tells why it stopped"
                    )
                },
            ),
            (_, EngineKind::Lab) => self
                .project
                .as_ref()
                .map(|lab| {
                    let me = crate::program::me();
                    format!("`{me} teardown {lab}` then `{me} setup --name {lab}`")
                }),
            (ContainerState::Paused, _) => {
                Some(format!("unpause it with `{cli} unpause {name}`"))
            }
            (ContainerState::Dead, _) => {
                Some(format!("remove it and create it again (`{cli} rm {name}`)"))
            }
            // A start would fail on both: the engine is already at work on it.
            (ContainerState::Other(word), _) if word == "removing" => Some(format!(
                "the engine is removing it; a container made again under the name {} is found by that name",
                self.name
            )),
            (ContainerState::Restarting, _) => Some(format!(
                "the engine is restarting it (its restart policy); `{cli} logs {name}` tells why it exited"
            )),
            _ => match (&self.pod, self.infra) {
                (Some(pod), true) => Some(format!(
                    "start its pod with `{cli} pod start {}`",
                    shell_quote(pod)
                )),
                _ => Some(format!("start it with `{cli} start {name}`")),
            },
        }
    }
}

/// A network as its engine describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Which engine made it.
    pub engine: EngineKind,
    /// The engine's name for it.
    pub name: String,
    /// The engine's id (the name again when the engine has no ids).
    pub id: String,
    /// The Linux bridge that implements it, when it is a bridge network.
    pub bridge: Option<String>,
    /// Its subnets (IPv4 and IPv6).
    pub subnets: Vec<IpNet>,
    /// An internal network has no way out.
    pub internal: bool,
    /// CNI: the portmap plugin's config as libcni hands it to the plugin (the list's name and
    /// cniVersion added), so a missing port mapping can be re-added exactly as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portmap: Option<String>,
    /// CNI: the network's whole plugin chain as libcni cached it (a conflist: name, cniVersion,
    /// plugins), so an attachment can be re-made with the chain's own ADD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_chain: Option<String>,
}

/// What every engine on the machine intended, read once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// Every container of every engine, in every state.
    pub containers: Vec<Container>,
    /// Every network of every engine.
    pub networks: Vec<Network>,
    /// Which engines were asked and how it went.
    pub sources: Vec<SourceStatus>,
}

/// The result of looking a container up by name or id.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// Exactly one container.
    Found(&'a Container),
    /// Nothing by that name or id.
    NotFound,
    /// More than one (same name in two engines, or a short id prefix).
    Ambiguous(Vec<&'a Container>),
}

impl Intent {
    /// Ask every engine present on this machine (Docker, Podman, CNI's cache, nettool labs).
    pub fn read() -> Intent {
        let mut intent = Intent::default();
        for ep in docker::endpoints() {
            docker::read_into(&ep, &mut intent);
        }
        cni::read_into(&crate::netns::host_path(cni::RESULTS_DIR), &mut intent);
        lab::read_into(&mut intent);
        kube::read_into(&kube::log_dir(), &mut intent);
        intent.fill_netns_inodes();
        intent
    }

    /// Stat each container's namespace file once, so namespaces join containers by inode.
    pub(crate) fn fill_netns_inodes(&mut self) {
        for c in &mut self.containers {
            if c.netns_inode.is_some() {
                continue;
            }
            // Only a file that opens a namespace: a stale CNI entry keeps the path of one
            // that is gone (an empty file's inode would join nothing, or the wrong thing).
            let from_path = c
                .netns
                .as_ref()
                .and_then(|p| crate::netns::NetNs::from_path(p).ok())
                .map(|n| n.id().inode);
            let from_pid = || {
                c.pid
                    .filter(|p| *p > 0)
                    .and_then(|p| std::fs::metadata(format!("/proc/{p}/ns/net")).ok())
                    .map(|m| m.ino())
            };
            c.netns_inode = from_path.or_else(from_pid);
        }
    }

    /// A container by exact id, exact name, or unique id prefix (as `docker` accepts them);
    /// when several engines have it, a daemon's (Docker, Podman) over CNI's over a lab's.
    pub fn lookup(&self, name_or_id: &str) -> Lookup<'_> {
        let key = name_or_id.trim_start_matches('/');
        if key.is_empty() {
            return Lookup::NotFound;
        }
        let exact_id = |c: &&Container| c.id == key;
        let exact_name = |c: &&Container| c.name == key;
        let prefix = |c: &&Container| c.id.starts_with(key);
        for hits in [
            self.containers.iter().filter(exact_id).collect::<Vec<_>>(),
            self.containers.iter().filter(exact_name).collect(),
            self.containers.iter().filter(prefix).collect(),
        ] {
            // A daemon's container before a CNI attachment before a lab's: a lab container
            // stays reachable by its LAB/NAME id and its /run/netns name.
            let best = hits.iter().map(|c| c.engine.rank()).min();
            let hits: Vec<&Container> = hits
                .into_iter()
                .filter(|c| Some(c.engine.rank()) == best)
                .collect();
            match hits.len() {
                0 => continue,
                1 => return Lookup::Found(hits[0]),
                _ => return Lookup::Ambiguous(hits),
            }
        }
        Lookup::NotFound
    }

    /// A container by exact id, exact name, or unique id prefix; None when none or ambiguous.
    pub fn container(&self, name_or_id: &str) -> Option<&Container> {
        match self.lookup(name_or_id) {
            Lookup::Found(c) => Some(c),
            _ => None,
        }
    }

    /// The container whose main process is `pid`.
    pub fn by_pid(&self, pid: u32) -> Option<&Container> {
        self.containers.iter().find(|c| c.pid == Some(pid))
    }

    /// The containers whose namespace has this inode (a pod: its infra and its members),
    /// host-network containers left out (that namespace is the host's).
    pub fn in_netns(&self, inode: u64) -> Vec<&Container> {
        self.containers
            .iter()
            .filter(|c| c.netns_inode == Some(inode) && !c.host_network())
            .collect()
    }

    /// The network a Linux bridge implements.
    pub fn network_by_bridge(&self, bridge: &str) -> Option<&Network> {
        self.networks
            .iter()
            .find(|n| n.bridge.as_deref() == Some(bridge))
    }

    /// The status of every engine that was asked and failed.
    pub fn errors(&self) -> impl Iterator<Item = &SourceStatus> {
        self.sources.iter().filter(|s| s.error.is_some())
    }
}

#[cfg(test)]
impl Container {
    /// A running container on the default bridge with nothing else set, for unit tests.
    pub(crate) fn for_test(engine: EngineKind, id: &str, name: &str) -> Container {
        Container {
            engine,
            id: id.into(),
            name: name.into(),
            state: ContainerState::Running,
            pid: None,
            netns: None,
            netns_inode: None,
            network_mode: "bridge".into(),
            attachments: Vec::new(),
            ports: Vec::new(),
            pod: None,
            infra: false,
            project: None,
            created_networks: None,
            rootless: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(engine: EngineKind, id: &str, name: &str) -> Container {
        Container::for_test(engine, id, name)
    }

    #[test]
    fn a_container_the_engine_is_at_work_on_is_not_told_to_be_started() {
        let mut web = c(EngineKind::Docker, "aaaa", "web");
        web.state = ContainerState::from_status("removing", 0);
        let hint = web.start_hint().unwrap();
        assert!(!hint.contains("start"), "{hint}");
        assert!(hint.contains("removing it"), "{hint}");
        web.state = ContainerState::from_status("restarting", 0);
        let hint = web.start_hint().unwrap();
        assert_eq!(
            hint,
            "the engine is restarting it (its restart policy); `docker logs web` tells why it exited"
        );
        web.state = ContainerState::from_status("exited", 0);
        assert_eq!(
            web.start_hint().unwrap(),
            "start it with `docker start web`"
        );
    }

    #[test]
    fn a_rootless_containers_hint_runs_podman_as_its_user() {
        let mut web = c(EngineKind::Podman, "aaaa", "web");
        web.state = ContainerState::from_status("exited", 0);
        web.rootless = Some(RootlessOwner {
            uid: 1001,
            user: "rl".into(),
            gid: 1001,
            runtime_dir: "/run/user/1001".into(),
            docker_host: None,
        });
        assert_eq!(
            web.start_hint().unwrap(),
            "start it with `runuser -u rl -- env XDG_RUNTIME_DIR=/run/user/1001 podman start web`"
        );
        // Rootless Docker: its CLI needs DOCKER_HOST (it does not look in XDG_RUNTIME_DIR).
        let mut api = c(EngineKind::Docker, "bbbb", "api");
        api.state = ContainerState::from_status("exited", 0);
        api.rootless = Some(RootlessOwner {
            uid: 1001,
            user: "rl".into(),
            gid: 1001,
            runtime_dir: "/run/user/1001".into(),
            docker_host: Some("unix:///run/user/1001/docker.sock".into()),
        });
        assert_eq!(
            api.start_hint().unwrap(),
            "start it with `runuser -u rl -- env XDG_RUNTIME_DIR=/run/user/1001 DOCKER_HOST=unix:///run/user/1001/docker.sock docker start api`"
        );
    }

    #[test]
    fn a_user_passwd_does_not_know_runs_by_its_ids() {
        // runuser -u 1001 fails without a passwd entry; setpriv takes the ids.
        let mut web = c(EngineKind::Podman, "aaaa", "web");
        web.state = ContainerState::from_status("exited", 0);
        web.rootless = Some(RootlessOwner {
            uid: 1001,
            user: "1001".into(),
            gid: 1002,
            runtime_dir: "/run/user/1001".into(),
            docker_host: None,
        });
        assert_eq!(
            web.start_hint().unwrap(),
            "start it with `setpriv --reuid=1001 --regid=1002 --clear-groups env XDG_RUNTIME_DIR=/run/user/1001 podman start web`"
        );
    }

    #[test]
    fn a_rootless_hint_quotes_what_its_user_chose() {
        // A rootless engine's runtime directory (rootlessport's environment) and container
        // names (its user's API) are the user's: pasted by root, they must stay arguments.
        let mut web = c(EngineKind::Podman, "aaaa", "web;reboot");
        web.state = ContainerState::from_status("exited", 0);
        web.rootless = Some(RootlessOwner {
            uid: 1001,
            user: "rl".into(),
            gid: 1001,
            runtime_dir: "/tmp/x;touch /pwned".into(),
            docker_host: None,
        });
        assert_eq!(
            web.start_hint().unwrap(),
            "start it with `runuser -u rl -- env 'XDG_RUNTIME_DIR=/tmp/x;touch /pwned' podman start 'web;reboot'`"
        );
    }

    #[test]
    fn intent_round_trips_through_json() {
        let mut exited = c(EngineKind::Podman, "cccc", "worker");
        exited.state = ContainerState::Exited { code: 137 };
        exited.ports.push(PortBinding {
            proto: "udp".into(),
            host_ip: Some("::1".parse().unwrap()),
            host_port: 5353,
            container_port: 53,
        });
        let mut odd = c(EngineKind::Cni, "dddd", "dddd");
        odd.state = ContainerState::Other("namespace gone".into());
        let intent = Intent {
            containers: vec![exited, odd],
            networks: vec![Network {
                engine: EngineKind::Podman,
                name: "shop".into(),
                id: "953a".into(),
                bridge: Some("podman1".into()),
                subnets: vec![
                    "10.89.0.0/24".parse().unwrap(),
                    "fd00::/64".parse().unwrap(),
                ],
                internal: false,
                portmap: None,
                cni_chain: None,
            }],
            sources: vec![SourceStatus {
                engine: EngineKind::Docker,
                endpoint: "/var/run/docker.sock".into(),
                error: Some("refused".into()),
            }],
        };
        let text = serde_json::to_string(&intent).unwrap();
        assert!(
            text.contains(r#""state":{"exited":{"code":137}}"#),
            "{text}"
        );
        let back: Intent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, intent);
    }

    #[test]
    fn lookup_by_id_name_prefix_and_engine_rank() {
        let intent = Intent {
            containers: vec![
                c(EngineKind::Docker, "aaaa1111", "web"),
                c(EngineKind::Lab, "shop/web", "web"),
                c(EngineKind::Podman, "aaaa2222", "db"),
                c(EngineKind::Docker, "bbbb3333", "db"),
            ],
            ..Intent::default()
        };
        // A Docker "web" and a lab "web": the daemon's.
        assert_eq!(intent.container("web").unwrap().id, "aaaa1111");
        assert_eq!(
            intent.container("shop/web").unwrap().engine,
            EngineKind::Lab
        );
        // Two daemons with "db": ambiguous, say which.
        assert!(matches!(intent.lookup("db"), Lookup::Ambiguous(v) if v.len() == 2));
        assert_eq!(intent.container("aaaa2").unwrap().name, "db");
        assert!(matches!(intent.lookup("aaaa"), Lookup::Ambiguous(_)));
        assert!(matches!(intent.lookup("zzz"), Lookup::NotFound));
        assert!(matches!(intent.lookup(""), Lookup::NotFound));
    }
}
