//! The Docker Engine API over a unix socket (HTTP/1.0), spoken by dockerd and, in its
//! Docker-compatible form, by Podman's API service. Finds the sockets, tells the two engines
//! apart by their /_ping answer's headers, and reads containers (every state) and networks.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    podman, Attachment, Container, ContainerState, EngineKind, Intent, Network, PortBinding,
    SourceStatus,
};

/// The socket dockerd listens on unless DOCKER_HOST says otherwise.
pub(crate) const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Errors from an Engine API socket.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// No daemon socket to talk to.
    #[error("API socket {path} not reachable: {source}")]
    Unreachable {
        /// The socket tried.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon answered with an error status.
    #[error("API {path}: HTTP {status}: {message}")]
    Status {
        /// The API path.
        path: String,
        /// HTTP status code.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("API {0}: unexpected answer")]
    Malformed(String),
}

/// One Engine API socket.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    socket: PathBuf,
}

impl Api {
    /// The API on a specific unix socket.
    pub(crate) fn at(socket: impl Into<PathBuf>) -> Self {
        Api {
            socket: socket.into(),
        }
    }

    /// GET `path` and parse the JSON body; an HTTP error status is an error.
    pub(crate) fn get(&self, path: &str) -> Result<serde_json::Value, ApiError> {
        self.get_with_head(path).map(|(_, v)| v)
    }

    /// The same, with the answer's status line and headers (lowercased).
    pub(crate) fn get_with_head(
        &self,
        path: &str,
    ) -> Result<(String, serde_json::Value), ApiError> {
        let unreachable = |source| ApiError::Unreachable {
            path: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(unreachable)?;
        let _ = stream.set_read_timeout(Some(READ_WAIT));
        // HTTP/1.0: the daemon closes after the body.
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: docker\r\nConnection: close\r\n\r\n"
        )
        .map_err(unreachable)?;
        let raw = read_answer(&mut stream, ANSWER_DEADLINE, ANSWER_MAX).map_err(unreachable)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| ApiError::Malformed(path.into()))?;
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let mut body = raw[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::Malformed(path.into()))?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        if status >= 300 {
            let message = value
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(ApiError::Status {
                path: path.into(),
                status,
                message,
            });
        }
        Ok((head, value))
    }
}

/// How long one read of an answer waits (a wedged daemon says nothing).
const READ_WAIT: Duration = Duration::from_secs(10);
/// How long a whole answer may take, and how large it may be: every user's runtime directory
/// is asked, so the server may be anyone's, trickling bytes or sending without end to hold
/// root's doctor (a busy host's container list is a few MB).
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);
const ANSWER_MAX: usize = 64 << 20;

/// Read an answer to its end (the daemon closes after it): within `deadline` in all, at most
/// `max` bytes.
fn read_answer(
    stream: &mut UnixStream,
    deadline: Duration,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let end = Instant::now() + deadline;
    let late = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no whole answer within {deadline:?}"),
        )
    };
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        stream.set_read_timeout(Some(left.min(READ_WAIT)))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > max {
                    return Err(std::io::Error::other(format!(
                        "an answer of more than {max} bytes"
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The read's own timeout (EAGAIN) cut short by the deadline is the deadline's.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && Instant::now() >= end =>
            {
                return Err(late())
            }
            Err(e) => return Err(e),
        }
    }
}

/// Decode an HTTP/1.1 chunked body (a daemon may answer 1.0 requests that way anyway).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|s| *s > 0) else {
            break;
        };
        let start = eol + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = b.get(end + 2..).unwrap_or(&[]);
    }
    out
}

/// One place an Engine API may answer, and who is expected there.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Endpoint {
    /// The unix socket.
    pub socket: PathBuf,
    /// The engine expected by the socket's location (the /_ping answer decides).
    pub expected: EngineKind,
    /// True when an environment variable named it (then its absence is an error).
    pub explicit: bool,
}

/// The sockets to ask: DOCKER_HOST or Docker's default, CONTAINER_HOST or Podman's rootful
/// default, and every rootless Podman's and rootless Docker's (the caller's XDG_RUNTIME_DIR,
/// $SUDO_UID's and each user's /run/user/UID: doctor runs as root, the containers may be a
/// user's). A default socket that does not exist is not asked.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut dirs: Vec<PathBuf> = env("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.extend(env("SUDO_UID").map(|u| crate::netns::host_path(&format!("/run/user/{u}"))));
    let mut rootless = Vec::new();
    for (socket, engine) in [
        (podman::ROOTLESS_SOCKET, EngineKind::Podman),
        (ROOTLESS_SOCKET, EngineKind::Docker),
    ] {
        rootless.extend(dirs.iter().map(|d| (d.join(socket), engine)));
        rootless.extend(
            podman::user_sockets(socket)
                .into_iter()
                .map(|p| (p, engine)),
        );
    }
    endpoints_from(
        env("DOCKER_HOST").as_deref(),
        env("CONTAINER_HOST").as_deref(),
        &rootless,
        |p| p.exists(),
    )
}

/// A rootless dockerd's API socket, inside the user's XDG_RUNTIME_DIR.
pub(crate) const ROOTLESS_SOCKET: &str = "docker.sock";

fn endpoints_from(
    docker_host: Option<&str>,
    container_host: Option<&str>,
    rootless: &[(PathBuf, EngineKind)],
    exists: impl Fn(&Path) -> bool,
) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    let mut add = |socket: PathBuf, expected, explicit| {
        let key = std::fs::canonicalize(&socket).unwrap_or_else(|_| socket.clone());
        let dup = out
            .iter()
            .any(|e| std::fs::canonicalize(&e.socket).unwrap_or_else(|_| e.socket.clone()) == key);
        if !dup && (explicit || exists(&socket)) {
            out.push(Endpoint {
                socket,
                expected,
                explicit,
            });
        }
    };
    match docker_host.and_then(|h| h.strip_prefix("unix://")) {
        Some(p) => add(PathBuf::from(p), EngineKind::Docker, true),
        None => add(
            crate::netns::host_path(DEFAULT_SOCKET),
            EngineKind::Docker,
            false,
        ),
    }
    match container_host.and_then(|h| h.strip_prefix("unix://")) {
        Some(p) => add(PathBuf::from(p), EngineKind::Podman, true),
        None => {
            add(
                crate::netns::host_path(podman::ROOTFUL_SOCKET),
                EngineKind::Podman,
                false,
            );
        }
    }
    for (r, engine) in rootless {
        add(r.clone(), *engine, false);
    }
    out
}

/// Ask one endpoint for its containers and networks and add them to `intent`; a failure is
/// recorded as the endpoint's [`SourceStatus`] error.
pub(crate) fn read_into(ep: &Endpoint, intent: &mut Intent) {
    let api = Api::at(&ep.socket);
    let endpoint = ep.socket.display().to_string();
    // /_ping's headers tell the engines apart. Podman's /version asks conmon and the OCI
    // runtime for theirs: about 0.4 s, paid by every lookup of a container, where the proxy
    // following a restarted one waits 0.5 s at most before it resets the client.
    let engine = match api.get_with_head("/_ping") {
        Ok((head, _)) => engine_of_ping(&head),
        Err(e) => {
            intent.sources.push(SourceStatus {
                engine: ep.expected,
                endpoint,
                error: Some(format!(
                    "{e} (is the {} service running? {})",
                    ep.expected,
                    match ep.expected {
                        EngineKind::Podman =>
                            "`podman system service --time=0` serves it; CONTAINER_HOST=unix://PATH names another",
                        _ => "DOCKER_HOST=unix://PATH names another daemon",
                    }
                )),
            });
            return;
        }
    };
    let read = match engine {
        EngineKind::Podman => podman::read(&api),
        _ => read_docker(&api),
    };
    match read {
        Ok((mut containers, networks)) => {
            let owner = podman::rootless_owner(&ep.socket, engine);
            for c in &mut containers {
                c.rootless.clone_from(&owner);
            }
            intent.containers.extend(containers);
            intent.networks.extend(networks);
            intent.sources.push(SourceStatus {
                engine,
                endpoint,
                error: None,
            });
        }
        Err(e) => intent.sources.push(SourceStatus {
            engine,
            endpoint,
            error: Some(e.to_string()),
        }),
    }
}

/// Podman's API answers /_ping with a Libpod-Api-Version header; dockerd's has none.
fn engine_of_ping(head: &str) -> EngineKind {
    if head
        .lines()
        .any(|l| l.trim_start().starts_with("libpod-api-version:"))
    {
        EngineKind::Podman
    } else {
        EngineKind::Docker
    }
}

/// Every container (all states) and network of a dockerd.
fn read_docker(api: &Api) -> Result<(Vec<Container>, Vec<Network>), ApiError> {
    let list = api.get("/containers/json?all=1")?;
    let mut containers = Vec::new();
    for id in ids(&list, "/containers/json")? {
        // A container removed between the list and the inspect is simply gone.
        if let Ok(v) = api.get(&format!("/containers/{id}/json")) {
            if let Some(c) = container_from_inspect(&v, EngineKind::Docker) {
                containers.push(c);
            }
        }
    }
    let networks = api
        .get("/networks")?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(docker_network)
        .collect();
    Ok((containers, networks))
}

/// The "Id" of each entry of a list answer.
pub(crate) fn ids(list: &serde_json::Value, path: &str) -> Result<Vec<String>, ApiError> {
    Ok(list
        .as_array()
        .ok_or_else(|| ApiError::Malformed(path.into()))?
        .iter()
        .filter_map(|c| c.get("Id").and_then(|i| i.as_str()).map(str::to_string))
        .collect())
}

fn s<'a>(v: &'a serde_json::Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)
        .and_then(|x| x.as_str())
        .filter(|x| !x.is_empty())
}

/// A container from `GET /containers/ID/json` (Docker, and Podman's compatible answer).
pub(crate) fn container_from_inspect(
    v: &serde_json::Value,
    engine: EngineKind,
) -> Option<Container> {
    let id = s(v, "/Id")?.to_string();
    let name = v.get("Name")?.as_str()?.trim_start_matches('/').to_string();
    let status = s(v, "/State/Status").unwrap_or("unknown");
    let code = v
        .pointer("/State/ExitCode")
        .and_then(|c| c.as_i64())
        .unwrap_or(0);
    let state = ContainerState::from_status(status, code);
    let pid = v
        .pointer("/State/Pid")
        .and_then(|p| p.as_u64())
        .filter(|p| *p > 0)
        .and_then(|p| u32::try_from(p).ok());
    let netns = s(v, "/NetworkSettings/SandboxKey")
        .map(PathBuf::from)
        .filter(|p| state.is_up() && p.exists());
    let mut attachments: Vec<Attachment> = v
        .pointer("/NetworkSettings/Networks")
        .and_then(|n| n.as_object())
        .into_iter()
        .flatten()
        .map(|(net, a)| Attachment {
            network: net.clone(),
            ipv4: s(a, "/IPAddress").and_then(|x| x.parse().ok()),
            ipv6: s(a, "/GlobalIPv6Address").and_then(|x| x.parse().ok()),
            mac: s(a, "/MacAddress").map(str::to_string),
            ifname: None,
        })
        .collect();
    attachments.sort_by(|a, b| a.network.cmp(&b.network));
    // The live bindings when running; the configured ones otherwise (a stopped container
    // still intends its ports).
    let mut ports = port_map(v.pointer("/NetworkSettings/Ports"));
    if ports.is_empty() {
        ports = port_map(v.pointer("/HostConfig/PortBindings"));
    }
    Some(Container {
        engine,
        id,
        name,
        state,
        pid,
        netns,
        netns_inode: None,
        network_mode: s(v, "/HostConfig/NetworkMode")
            .unwrap_or("default")
            .to_string(),
        attachments,
        ports,
        pod: None,
        infra: false,
        project: s(v, "/Config/Labels/com.docker.compose.project").map(str::to_string),
        created_networks: None,
        rootless: None,
    })
}

/// `{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}], ...}` to bindings. An empty
/// HostIp means every address; an empty HostPort (not yet assigned) is left out.
fn port_map(v: Option<&serde_json::Value>) -> Vec<PortBinding> {
    let mut out = Vec::new();
    for (key, binds) in v.and_then(|p| p.as_object()).into_iter().flatten() {
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        let Ok(container_port) = port.parse::<u16>() else {
            continue;
        };
        for b in binds.as_array().into_iter().flatten() {
            let Some(host_port) = s(b, "/HostPort").and_then(|p| p.parse::<u16>().ok()) else {
                continue;
            };
            out.push(PortBinding {
                proto: proto.to_string(),
                host_ip: s(b, "/HostIp").and_then(|ip| ip.parse::<IpAddr>().ok()),
                host_port,
                container_port,
            });
        }
    }
    out.sort_by(|a, b| (a.host_port, &a.proto, a.host_ip).cmp(&(b.host_port, &b.proto, b.host_ip)));
    out
}

/// A network from `GET /networks`: a bridge network's Linux bridge is its
/// `com.docker.network.bridge.name` option, else br-<first 12 of its id>.
fn docker_network(n: &serde_json::Value) -> Option<Network> {
    let name = s(n, "/Name")?.to_string();
    let id = s(n, "/Id")?.to_string();
    let bridge = (s(n, "/Driver") == Some("bridge")).then(|| {
        s(n, "/Options/com.docker.network.bridge.name")
            .map(str::to_string)
            .unwrap_or_else(|| format!("br-{}", id.chars().take(12).collect::<String>()))
    });
    let subnets = n
        .pointer("/IPAM/Config")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .filter_map(|c| s(c, "/Subnet").and_then(|x| x.parse().ok()))
        .collect();
    Some(Network {
        engine: EngineKind::Docker,
        name,
        id,
        bridge,
        subnets,
        internal: n.get("Internal").and_then(|i| i.as_bool()).unwrap_or(false),
        portmap: None,
        cni_chain: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_within_a_deadline_and_a_size() {
        // A server that answers and closes.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"HTTP/1.0 200 OK\r\n\r\n{}").unwrap();
        drop(b);
        let got = read_answer(&mut a, Duration::from_secs(5), 1 << 20).unwrap();
        assert_eq!(got, b"HTTP/1.0 200 OK\r\n\r\n{}");
        // One that trickles a byte every 20 ms and never ends: stopped at the deadline.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let trickle = std::thread::spawn(move || {
            while b.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let t = Instant::now();
        let e = read_answer(&mut a, Duration::from_millis(300), 1 << 20).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        drop(a);
        trickle.join().unwrap();
        // One that sends without end: stopped past the size.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let flood = std::thread::spawn(move || while b.write_all(&[b'x'; 4096]).is_ok() {});
        let e = read_answer(&mut a, Duration::from_secs(5), 100_000).unwrap_err();
        assert!(e.to_string().contains("more than 100000 bytes"), "{e}");
        drop(a);
        flood.join().unwrap();
    }

    #[test]
    fn podman_is_told_from_docker_by_its_ping_headers() {
        // Podman 4.3.1's rootful service, lowercased as Api::get_with_head gives it.
        let podman = "http/1.1 200 ok\r\napi-version: 1.41\r\nbuilder-version: \r\ncache-control: no-cache\r\ndocker-experimental: true\r\nlibpod-api-version: 4.3.1\r\nlibpod-buildah-version: 1.28.2\r\npragma: no-cache\r\nserver: libpod/4.3.1 (linux)\r\ncontent-length: 2";
        assert_eq!(engine_of_ping(podman), EngineKind::Podman);
        let docker = "http/1.1 200 ok\r\napi-version: 1.41\r\ncache-control: no-cache, no-store, must-revalidate\r\ndocker-experimental: false\r\nostype: linux\r\npragma: no-cache\r\nserver: docker/20.10.24 (linux)\r\ncontent-length: 2";
        assert_eq!(engine_of_ping(docker), EngineKind::Docker);
    }

    #[test]
    fn sockets_from_environment_and_defaults() {
        let none = |_: &Path| false;
        let all = |_: &Path| true;
        // Nothing there, nothing asked.
        assert!(endpoints_from(None, None, &[], none).is_empty());
        // Default sockets that exist are asked with no variable set.
        let eps = endpoints_from(
            None,
            None,
            &[(
                "/run/user/1000/podman/podman.sock".into(),
                EngineKind::Podman,
            )],
            all,
        );
        let socks: Vec<_> = eps.iter().map(|e| e.socket.display().to_string()).collect();
        assert_eq!(
            socks,
            [
                DEFAULT_SOCKET,
                podman::ROOTFUL_SOCKET,
                "/run/user/1000/podman/podman.sock"
            ]
        );
        // A variable replaces the default and is asked even when absent (then it is an error).
        let eps = endpoints_from(
            Some("unix:///tmp/d.sock"),
            Some("unix:///tmp/p.sock"),
            &[],
            none,
        );
        assert_eq!(eps.len(), 2);
        assert!(eps.iter().all(|e| e.explicit));
        assert_eq!(eps[1].expected, EngineKind::Podman);
    }

    #[test]
    fn inspect_of_a_stopped_container_keeps_its_intent() {
        let v = serde_json::json!({
            "Id": "a".repeat(64), "Name": "/web",
            "State": {"Status": "exited", "ExitCode": 137, "Pid": 0},
            "HostConfig": {"NetworkMode": "bridge",
                "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
                                  "53/udp": [{"HostIp": "", "HostPort": "5353"}]}},
            "NetworkSettings": {"SandboxKey": "", "Ports": {},
                "Networks": {"bridge": {"IPAddress": "", "GlobalIPv6Address": "", "MacAddress": ""}}},
            "Config": {"Labels": {"com.docker.compose.project": "shop"}}
        });
        let c = container_from_inspect(&v, EngineKind::Docker).unwrap();
        assert_eq!(c.state, ContainerState::Exited { code: 137 });
        assert_eq!(c.state.to_string(), "exited (code 137)");
        assert_eq!(c.pid, None);
        assert_eq!(c.netns, None);
        assert_eq!(c.project.as_deref(), Some("shop"));
        assert_eq!(
            c.ports,
            vec![
                PortBinding {
                    proto: "udp".into(),
                    host_ip: None,
                    host_port: 5353,
                    container_port: 53
                },
                PortBinding {
                    proto: "tcp".into(),
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                    host_port: 8080,
                    container_port: 80
                },
            ]
        );
        assert_eq!(c.start_hint().unwrap(), "start it with `docker start web`");
    }

    #[test]
    fn live_ports_with_ipv6_and_network_bridges() {
        let v = serde_json::json!({
            "Id": "b".repeat(64), "Name": "/api",
            "State": {"Status": "running", "ExitCode": 0, "Pid": 4242},
            "HostConfig": {"NetworkMode": "shop_default", "PortBindings": {}},
            "NetworkSettings": {"SandboxKey": "/nonexistent/netns/x",
                "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                      {"HostIp": "::", "HostPort": "8080"}], "443/tcp": null},
                "Networks": {"shop_default": {"IPAddress": "172.18.0.2",
                    "GlobalIPv6Address": "fd00::2", "MacAddress": "02:42:ac:12:00:02"}}}
        });
        let c = container_from_inspect(&v, EngineKind::Docker).unwrap();
        assert_eq!(c.pid, Some(4242));
        assert_eq!(c.ports.len(), 2);
        assert!(c
            .ports
            .iter()
            .any(|p| p.host_ip == Some("::".parse().unwrap())));
        assert_eq!(c.attachments[0].ipv6, Some("fd00::2".parse().unwrap()));
        let n = docker_network(&serde_json::json!({
            "Name": "shop_default", "Id": "0123456789abcdef", "Driver": "bridge", "Options": {},
            "IPAM": {"Config": [{"Subnet": "172.18.0.0/16"}, {"Subnet": "fd00::/64"}]}, "Internal": false
        }))
        .unwrap();
        assert_eq!(n.bridge.as_deref(), Some("br-0123456789ab"));
        assert_eq!(n.subnets.len(), 2);
        let n = docker_network(&serde_json::json!({
            "Name": "bridge", "Id": "ffff", "Driver": "bridge",
            "Options": {"com.docker.network.bridge.name": "docker0"}
        }))
        .unwrap();
        assert_eq!(n.bridge.as_deref(), Some("docker0"));
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"),
            b"Wikipedia"
        );
    }
}
