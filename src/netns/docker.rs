//! Just enough of the Docker Engine API (over /var/run/docker.sock) to name containers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// The socket dockerd listens on unless DOCKER_HOST says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Errors from the Docker API.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No daemon socket to talk to.
    #[error("Docker API not reachable at {path}: {source} (is dockerd running? set DOCKER_HOST=unix:///path/to/docker.sock for another daemon)")]
    Unreachable {
        /// The socket tried.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon answered with an error status.
    #[error("Docker API {path}: HTTP {status}: {message}")]
    Status {
        /// The API path.
        path: String,
        /// HTTP status code.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("Docker API {0}: unexpected answer")]
    Malformed(String),
    /// The container exists but has no running process.
    #[error("container {0} is not running, so it has no network namespace")]
    NotRunning(String),
}

/// A container as nettool needs it.
#[derive(Debug, Clone, Serialize)]
pub struct Container {
    /// Full id (64 hex).
    pub id: String,
    /// Name without the leading '/'.
    pub name: String,
    /// Pid of its init process (0 when not running).
    pub pid: u32,
    /// Its namespace file under /run/docker/netns, when Docker reports one.
    pub sandbox_key: Option<String>,
}

/// A connection target for the Docker API.
pub struct Docker {
    socket: PathBuf,
}

impl Docker {
    /// The daemon named by DOCKER_HOST (unix:// only) or the default socket.
    pub fn connect_default() -> Result<Self, DockerError> {
        let socket = match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
            _ => PathBuf::from(DEFAULT_SOCKET),
        };
        Ok(Docker { socket })
    }

    /// A daemon on a specific socket.
    pub fn at(socket: impl Into<PathBuf>) -> Self {
        Docker {
            socket: socket.into(),
        }
    }

    /// True when the socket exists (a cheap check before trying).
    pub fn available(&self) -> bool {
        self.socket.exists()
    }

    fn get(&self, path: &str) -> Result<serde_json::Value, DockerError> {
        let unreachable = |source| DockerError::Unreachable {
            path: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(unreachable)?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        // HTTP/1.0: the daemon closes after the body, so no chunked decoding is needed.
        write!(stream, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").map_err(unreachable)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(unreachable)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| DockerError::Malformed(path.into()))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| DockerError::Malformed(path.into()))?;
        let value: serde_json::Value =
            serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
        if status >= 300 {
            let message = value
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or(body.trim())
                .to_string();
            return Err(DockerError::Status {
                path: path.into(),
                status,
                message,
            });
        }
        Ok(value)
    }

    /// Inspect one container by name or id.
    pub fn inspect(&self, name: &str) -> Result<Container, DockerError> {
        let path = format!("/containers/{}/json", percent_encode(name));
        let v = self.get(&path)?;
        container_from_inspect(&v).ok_or(DockerError::Malformed(path))
    }

    /// Every running container.
    pub fn list(&self) -> Result<Vec<Container>, DockerError> {
        let v = self.get("/containers/json")?;
        let ids: Vec<String> = v
            .as_array()
            .ok_or_else(|| DockerError::Malformed("/containers/json".into()))?
            .iter()
            .filter_map(|c| c.get("Id").and_then(|i| i.as_str()).map(str::to_string))
            .collect();
        // The list endpoint has no pid; inspect each (a handful on a debugging host).
        Ok(ids.iter().filter_map(|id| self.inspect(id).ok()).collect())
    }
}

impl Docker {
    /// Bridge interface name -> network name, for every bridge network (docker0 is "bridge",
    /// a user network's bridge is br-<first 12 of its id> unless named by an option).
    pub fn bridge_networks(
        &self,
    ) -> Result<std::collections::HashMap<String, String>, DockerError> {
        let v = self.get("/networks")?;
        let mut out = std::collections::HashMap::new();
        for n in v.as_array().into_iter().flatten() {
            if n.get("Driver").and_then(|d| d.as_str()) != Some("bridge") {
                continue;
            }
            let (Some(name), Some(id)) = (
                n.get("Name").and_then(|x| x.as_str()),
                n.get("Id").and_then(|x| x.as_str()),
            ) else {
                continue;
            };
            let bridge = n
                .pointer("/Options/com.docker.network.bridge.name")
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("br-{}", id.chars().take(12).collect::<String>()));
            out.insert(bridge, name.to_string());
        }
        Ok(out)
    }
}

fn container_from_inspect(v: &serde_json::Value) -> Option<Container> {
    Some(Container {
        id: v.get("Id")?.as_str()?.to_string(),
        name: v.get("Name")?.as_str()?.trim_start_matches('/').to_string(),
        pid: v
            .pointer("/State/Pid")
            .and_then(|p| p.as_u64())
            .unwrap_or(0) as u32,
        sandbox_key: v
            .pointer("/NetworkSettings/SandboxKey")
            .and_then(|s| s.as_str())
            .map(str::to_string),
    })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The container id in a process's cgroup path (Docker, containerd/CRI, Podman), if any.
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or(line);
        for part in path.split('/').rev() {
            let part = part.trim_end_matches(".scope");
            let candidate = part.rsplit(['-', ':']).next().unwrap_or(part);
            if candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(candidate.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_ids() {
        let id = "a".repeat(64);
        assert_eq!(
            container_id_from_cgroup(&format!("0::/system.slice/docker-{id}.scope")),
            Some(id.clone())
        );
        assert_eq!(
            container_id_from_cgroup(&format!("12:memory:/docker/{id}\n")),
            Some(id.clone())
        );
        assert_eq!(
            container_id_from_cgroup(&format!(
                "0::/kubepods/besteffort/pod1/cri-containerd-{id}.scope"
            )),
            Some(id.clone())
        );
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/user-0.slice/session-1.scope"),
            None
        );
    }
}
