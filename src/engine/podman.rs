//! Podman through its API service: the Docker-compatible endpoints for each container, and
//! the libpod ones for what only Podman knows (pods, infra containers, netavark's bridges).

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::docker::{container_from_inspect, ids, Api, ApiError};
use super::{Container, EngineKind, Intent, Network, PortBinding, RootlessOwner};

/// Rootful Podman's API socket (what podman.socket serves).
pub(crate) const ROOTFUL_SOCKET: &str = "/run/podman/podman.sock";

/// A rootless Podman's API socket, inside the user's XDG_RUNTIME_DIR.
pub(crate) const ROOTLESS_SOCKET: &str = "podman/podman.sock";

/// Every user's rootless API socket that exists: /run/user/UID/`socket` (Podman's
/// podman/podman.sock, Docker's docker.sock).
pub(crate) fn user_sockets(socket: &str) -> Vec<PathBuf> {
    user_sockets_in(&crate::netns::host_path("/run/user"), socket)
}

/// [`user_sockets`] below `run_user`: only a socket itself (not a link a user put there, which
/// would have root ask any socket it can reach as if it were that user's engine) and owned by
/// the uid its directory is named after.
fn user_sockets_in(run_user: &Path, socket: &str) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut out: Vec<PathBuf> = std::fs::read_dir(run_user)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let uid: u32 = e.file_name().to_str()?.parse().ok()?;
            let path = e.path().join(socket);
            let m = std::fs::symlink_metadata(&path).ok()?;
            (m.file_type().is_socket() && m.uid() == uid).then_some(path)
        })
        .collect();
    out.sort();
    out
}

/// The user an engine's API socket belongs to, when it is not root's: that user's rootless
/// engine, whose containers are started as that user with its runtime directory (Podman's
/// `DIR/podman/podman.sock`, Docker's `DIR/docker.sock`).
/// `socket` is where this process reaches it; what is printed is the host's own path.
pub(crate) fn rootless_owner(socket: &Path, engine: EngineKind) -> Option<RootlessOwner> {
    let m = std::fs::metadata(socket).ok()?;
    if m.uid() == 0 {
        return None;
    }
    owner_at(
        m.uid(),
        m.gid(),
        &crate::netns::path_on_host(socket),
        engine,
    )
}

/// The owner of the API socket at `socket`, a path on the host itself.
fn owner_at(uid: u32, gid: u32, socket: &Path, engine: EngineKind) -> Option<RootlessOwner> {
    let runtime_dir = match engine {
        EngineKind::Podman => socket.parent()?.parent()?,
        _ => socket.parent()?,
    }
    .to_path_buf();
    Some(RootlessOwner {
        uid,
        user: user_name(uid),
        gid,
        runtime_dir,
        docker_host: (engine == EngineKind::Docker).then(|| format!("unix://{}", socket.display())),
    })
}

/// The name /etc/passwd gives `uid` (the number when it has none).
pub(crate) fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// The rootless Podman services of these runtime directories (rootlessport's
/// XDG_RUNTIME_DIR) that `asked` did not ask already (a directory outside /run/user): each
/// read once, as its own part.
pub(crate) fn read_runtime_dirs(dirs: &[&str], asked: &Intent) -> Vec<Intent> {
    let mut done: Vec<String> = asked.sources.iter().map(|s| s.endpoint.clone()).collect();
    let mut out = Vec::new();
    for dir in dirs {
        let socket = crate::netns::host_path(dir).join(ROOTLESS_SOCKET);
        let key = socket.display().to_string();
        if done.contains(&key) || !socket.exists() {
            continue;
        }
        done.push(key);
        let mut part = Intent::default();
        super::docker::read_into(
            &super::docker::Endpoint {
                socket,
                expected: EngineKind::Podman,
                explicit: false,
            },
            &mut part,
        );
        part.fill_netns_inodes();
        out.push(part);
    }
    out
}

/// The libpod API prefix; Podman 4 accepts it (and serves the compat API beside it).
const LIBPOD: &str = "/v4.0.0/libpod";

/// Every container (all states, with pods) and network of a Podman service.
pub(crate) fn read(api: &Api) -> Result<(Vec<Container>, Vec<Network>), ApiError> {
    // libpod's list knows pods, infra containers and port ranges; the compat inspect has
    // the namespace path and addresses in the Docker shape.
    let libpod = api.get(&format!("{LIBPOD}/containers/json?all=true")).ok();
    let list = match &libpod {
        Some(l) => l.clone(),
        None => api.get("/containers/json?all=1")?,
    };
    let mut containers = Vec::new();
    for id in ids(&list, "/containers/json")? {
        let Ok(v) = api.get(&format!("/containers/{id}/json")) else {
            continue;
        };
        let Some(mut c) = container_from_inspect(&v, EngineKind::Podman) else {
            continue;
        };
        if c.attachments.is_empty() && matches!(c.network_mode.as_str(), "bridge" | "default" | "")
        {
            // On no network: Podman forgets a network once the container left it, but its
            // own inspect keeps the command the container was created with.
            c.created_networks = api
                .get(&format!("{LIBPOD}/containers/{id}/json"))
                .ok()
                .and_then(|v| created_networks(&v));
        }
        if let Some(entry) = libpod.as_ref().and_then(|l| {
            l.as_array()?
                .iter()
                .find(|e| e.get("Id").and_then(|i| i.as_str()) == Some(id.as_str()))
        }) {
            c.pod = entry
                .get("PodName")
                .and_then(|p| p.as_str())
                .filter(|p| !p.is_empty())
                .map(str::to_string);
            c.infra = entry
                .get("IsInfra")
                .and_then(|i| i.as_bool())
                .unwrap_or(false);
            let ports = libpod_ports(entry.get("Ports"));
            if !ports.is_empty() {
                c.ports = ports;
            }
        }
        containers.push(c);
    }
    let networks = match api.get(&format!("{LIBPOD}/networks/json")) {
        Ok(v) => v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(libpod_network)
            .collect(),
        Err(_) => Vec::new(),
    };
    Ok((containers, networks))
}

/// The networks libpod's inspect says a container was created with: `--network NET`,
/// `--net NET`, `--network=NET`, repeated or as a comma list, each maybe with `:OPTIONS`
/// (`net1:ip=10.89.0.5,mac=...`). Read from `Config.CreateCommand`, up to the image (the
/// container's own command, `Config.Cmd`, is not Podman's). Modes are not networks: `bridge`
/// and `private` mean the default network, as does no flag (an empty list); `host`, `none`,
/// `container:ID`, `ns:PATH`, `slirp4netns`, `pasta` are not judged here. None when the
/// container was made through the Docker-compatible API (no create command kept).
fn created_networks(inspect: &serde_json::Value) -> Option<Vec<String>> {
    let words = |p: &str| -> Option<Vec<&str>> {
        inspect
            .pointer(p)?
            .as_array()?
            .iter()
            .map(|w| w.as_str())
            .collect()
    };
    let create = words("/Config/CreateCommand").filter(|c| !c.is_empty())?;
    let cmd = words("/Config/Cmd").unwrap_or_default();
    // Podman's flags end at the image: drop the command (when it was typed) and the image.
    let mut end = create.len();
    if !cmd.is_empty() && create.ends_with(&cmd) && end > cmd.len() {
        end -= cmd.len();
    }
    if create[..end].last().is_some_and(|w| !w.starts_with('-')) {
        end -= 1;
    }
    let mut values: Vec<&str> = Vec::new();
    let mut it = create[..end].iter();
    while let Some(w) = it.next() {
        match w.split_once('=') {
            Some(("--network" | "--net", v)) => values.push(v),
            None if *w == "--network" || *w == "--net" => values.extend(it.next().copied()),
            _ => {}
        }
    }
    let mut nets: Vec<String> = Vec::new();
    for v in values {
        // A comma list of networks, or one network's options (`ip=...,mac=...`) after ':'.
        for part in v.split(',') {
            let name = part.split(':').next().unwrap_or(part);
            if name.is_empty() || name.contains('=') || part.starts_with(':') {
                continue;
            }
            let mode = matches!(
                name,
                "bridge"
                    | "private"
                    | "host"
                    | "none"
                    | "container"
                    | "ns"
                    | "slirp4netns"
                    | "pasta"
            );
            if !mode && !nets.iter().any(|n| n == name) {
                nets.push(name.to_string());
            }
        }
    }
    Some(nets)
}

/// libpod's port list: `[{host_ip, container_port, host_port, range, protocol}]`, where a
/// range publishes `range` consecutive ports and protocol may be "tcp,udp".
fn libpod_ports(v: Option<&serde_json::Value>) -> Vec<PortBinding> {
    let mut out = Vec::new();
    for p in v.and_then(|p| p.as_array()).into_iter().flatten() {
        let num = |k: &str| p.get(k).and_then(|x| x.as_u64());
        let (Some(hp), Some(cp)) = (num("host_port"), num("container_port")) else {
            continue;
        };
        let range = num("range").unwrap_or(1).clamp(1, 65536);
        let host_ip = p
            .get("host_ip")
            .and_then(|x| x.as_str())
            .and_then(|x| x.parse::<IpAddr>().ok());
        let protos = p.get("protocol").and_then(|x| x.as_str()).unwrap_or("tcp");
        for proto in protos.split(',').filter(|x| !x.is_empty()) {
            for i in 0..range {
                let (Ok(host_port), Ok(container_port)) =
                    (u16::try_from(hp + i), u16::try_from(cp + i))
                else {
                    break;
                };
                out.push(PortBinding {
                    proto: proto.to_string(),
                    host_ip,
                    host_port,
                    container_port,
                });
            }
        }
    }
    out
}

/// A network from libpod's list: netavark names its bridge (podman0, podman1...).
fn libpod_network(n: &serde_json::Value) -> Option<Network> {
    let name = n.get("name")?.as_str()?.to_string();
    let id = n
        .get("id")
        .and_then(|x| x.as_str())
        .unwrap_or(&name)
        .to_string();
    let bridge = (n.get("driver").and_then(|d| d.as_str()) == Some("bridge"))
        .then(|| n.get("network_interface").and_then(|x| x.as_str()))
        .flatten()
        .filter(|b| !b.is_empty())
        .map(str::to_string);
    let subnets = n
        .get("subnets")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("subnet")?.as_str()?.parse().ok())
        .collect();
    Some(Network {
        engine: EngineKind::Podman,
        name,
        id,
        bridge,
        subnets,
        internal: n.get("internal").and_then(|i| i.as_bool()).unwrap_or(false),
        portmap: None,
        cni_chain: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a socket owned by the uid its directory is named after is asked: a link a user put
    /// in its runtime directory (to root's engine, say) and a socket of another owner are not.
    #[test]
    fn a_user_socket_is_a_socket_of_that_user_not_a_link() {
        let me = nix::unistd::getuid().as_raw();
        let root = std::env::temp_dir().join(format!("nt-user-sockets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (mine, other, linked) = (
            root.join(me.to_string()),
            root.join((me + 4242).to_string()),
            root.join("ru-linked").join(me.to_string()),
        );
        for d in [&mine, &other, &linked] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(root.join("not-a-uid")).unwrap();
        let _a = std::os::unix::net::UnixListener::bind(mine.join("docker.sock")).unwrap();
        // Made by this process, so not owned by uid me + 4242.
        let _b = std::os::unix::net::UnixListener::bind(other.join("docker.sock")).unwrap();
        let _c =
            std::os::unix::net::UnixListener::bind(root.join("not-a-uid/docker.sock")).unwrap();
        assert_eq!(
            user_sockets_in(&root, "docker.sock"),
            vec![mine.join("docker.sock")]
        );
        // A link in a user's runtime directory to a socket root can reach is not followed.
        std::os::unix::fs::symlink(mine.join("docker.sock"), linked.join("docker.sock")).unwrap();
        assert!(user_sockets_in(&root.join("ru-linked"), "docker.sock").is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_rootless_owner_seen_under_the_host_root_is_printed_with_the_hosts_paths() {
        // Run as `kubectl debug node`: the socket is reached at /host/run/user/...; the
        // command printed runs on the node, where the path has no /host.
        let seen = Path::new("/host/run/user/1001/docker.sock");
        let own = crate::netns::path_on_host_under(Some(Path::new("/host")), seen);
        let o = owner_at(1001, 1001, &own, EngineKind::Docker).unwrap();
        assert_eq!(o.runtime_dir, Path::new("/run/user/1001"));
        assert_eq!(
            o.docker_host.as_deref(),
            Some("unix:///run/user/1001/docker.sock")
        );
        let seen = Path::new("/host/run/user/1001/podman/podman.sock");
        let own = crate::netns::path_on_host_under(Some(Path::new("/host")), seen);
        let o = owner_at(1001, 1001, &own, EngineKind::Podman).unwrap();
        assert_eq!(o.runtime_dir, Path::new("/run/user/1001"));
        assert_eq!(o.docker_host, None);
    }

    #[test]
    fn port_ranges_and_protocol_lists() {
        let v = serde_json::json!([
            {"host_ip": "", "container_port": 80, "host_port": 18080, "range": 1, "protocol": "tcp"},
            {"host_ip": "127.0.0.1", "container_port": 53, "host_port": 5353, "range": 2, "protocol": "tcp,udp"},
            {"host_ip": "", "container_port": 65535, "host_port": 65535, "range": 3, "protocol": "tcp"}
        ]);
        let p = libpod_ports(Some(&v));
        assert_eq!(p.len(), 1 + 4 + 1, "{p:?}");
        assert_eq!(p[0].host_ip, None);
        assert_eq!(p[2].host_port, 5354);
        assert_eq!(p[3].proto, "udp");
    }

    fn inspect(create: &[&str], cmd: &[&str]) -> serde_json::Value {
        serde_json::json!({"Config": {"CreateCommand": create, "Cmd": cmd}})
    }

    #[test]
    fn networks_from_the_create_command() {
        let nets = |create: &str, cmd: &str| {
            let create: Vec<&str> = create.split_whitespace().collect();
            let cmd: Vec<&str> = cmd.split_whitespace().collect();
            created_networks(&inspect(&create, &cmd))
        };
        let cmd = "httpd -f -p 80 -h /";
        // Recorded from Podman 4.3 (`podman inspect`, Config.CreateCommand and Config.Cmd).
        assert_eq!(
            nets("podman run -d --name web --network dnet -p 18990:80 localhost/img httpd -f -p 80 -h /", cmd),
            Some(vec!["dnet".to_string()])
        );
        assert_eq!(
            nets("podman create --net=a,b -p 1:80 img", "sh"),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            nets("podman --log-level debug container create --network a:ip=10.89.0.5,mac=aa:bb:cc:dd:ee:ff --network=b img", ""),
            Some(vec!["a".into(), "b".into()])
        );
        // No flag, or a mode meaning the default network: none named.
        assert_eq!(nets("podman run -d -p 8080:80 img", ""), Some(vec![]));
        assert_eq!(nets("podman run --network bridge img", ""), Some(vec![]));
        assert_eq!(
            nets("podman run --network container:abc img", ""),
            Some(vec![])
        );
        // The container's own command is not Podman's: its --network is not a network.
        assert_eq!(
            nets(
                "podman run --network a img tool --network b",
                "tool --network b"
            ),
            Some(vec!["a".into()])
        );
        // Made through the Docker-compatible API: no record.
        assert_eq!(created_networks(&serde_json::json!({"Config": {}})), None);
        assert_eq!(created_networks(&inspect(&[], &[])), None);
        // A flag with no value at the end is not a panic.
        assert_eq!(nets("podman run --network", ""), Some(vec![]));
    }

    #[test]
    fn netavark_bridge_names() {
        let n = libpod_network(&serde_json::json!({
            "name": "podman", "id": "2f25", "driver": "bridge", "network_interface": "podman0",
            "subnets": [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}], "internal": false
        }))
        .unwrap();
        assert_eq!(n.bridge.as_deref(), Some("podman0"));
        assert_eq!(n.subnets[0].to_string(), "10.88.0.0/16");
        let mac = libpod_network(&serde_json::json!({
            "name": "mv", "driver": "macvlan", "network_interface": "eth0"
        }))
        .unwrap();
        assert_eq!(mac.bridge, None);
    }
}
