//! Kubernetes pods on a node, named from what the kubelet leaves on disk.
//!
//! Every container the kubelet starts gets a log symlink
//! `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` (whatever the CRI
//! runtime: containerd, CRI-O). That names a container id (which discovery finds in a
//! process's cgroup) as a container of pod `namespace/pod` without asking the API server or the
//! runtime's socket. A pod's sandbox (pause) container has no log, but its namespace holds the
//! pod's other containers too, so the namespace is named all the same.

use std::path::{Path, PathBuf};

use super::{Container, ContainerState, EngineKind, Intent, SourceStatus};

/// Where the kubelet keeps its container log links.
pub(crate) const LOG_DIR: &str = "/var/log/containers";

/// Where to read the log links: NETTOOL_KUBE_LOG_DIR, else LOG_DIR under the host root.
pub(crate) fn log_dir() -> PathBuf {
    std::env::var_os("NETTOOL_KUBE_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::netns::host_path(LOG_DIR))
}

/// One container from a log link name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LogLink {
    pub(crate) pod: String,
    pub(crate) namespace: String,
    pub(crate) container: String,
    pub(crate) id: String,
}

/// Parse `<pod>_<namespace>_<container>-<64 hex>.log` (pod names may hold dots and dashes;
/// namespaces and container names are DNS labels, so no underscores).
pub(crate) fn parse_link(file_name: &str) -> Option<LogLink> {
    let stem = file_name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = rest.rsplitn(3, '_');
    let container = parts.next()?;
    let namespace = parts.next()?;
    let pod = parts.next()?;
    if [pod, namespace, container].iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(LogLink {
        pod: pod.to_string(),
        namespace: namespace.to_string(),
        container: container.to_string(),
        id: id.to_string(),
    })
}

/// Add the containers the kubelet's log links name. Absent directory: not a node, no cost.
pub(crate) fn read_into(dir: &Path, intent: &mut Intent) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            intent.sources.push(SourceStatus {
                engine: EngineKind::Kubernetes,
                endpoint: dir.display().to_string(),
                error: Some(e.to_string()),
            });
            return;
        }
    };
    intent.sources.push(SourceStatus {
        engine: EngineKind::Kubernetes,
        endpoint: dir.display().to_string(),
        error: None,
    });
    let mut links: Vec<LogLink> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| parse_link(&e.file_name().to_string_lossy()))
        .collect();
    links.sort_by(|a, b| {
        (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container))
    });
    for l in links {
        if intent.containers.iter().any(|c| c.id == l.id) {
            continue;
        }
        intent.containers.push(Container {
            engine: EngineKind::Kubernetes,
            id: l.id,
            name: l.container,
            // A log link outlives its container until the kubelet's garbage collection: the
            // state is whatever the runtime says, which this source does not ask.
            state: ContainerState::Other("unknown (kubelet log link)".into()),
            pid: None,
            netns: None,
            netns_inode: None,
            network_mode: String::new(),
            attachments: Vec::new(),
            ports: Vec::new(),
            pod: Some(format!("{}/{}", l.namespace, l.pod)),
            infra: false,
            project: None,
            created_networks: None,
            rootless: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn log_link_names() {
        assert_eq!(
            parse_link(&format!(
                "coredns-7db6d8ff4d-x2x9k_kube-system_coredns-{ID}.log"
            )),
            Some(LogLink {
                pod: "coredns-7db6d8ff4d-x2x9k".into(),
                namespace: "kube-system".into(),
                container: "coredns".into(),
                id: ID.into(),
            })
        );
        // Dots in a pod name (static pods carry the node's name).
        let l = parse_link(&format!("etcd-node1.example_kube-system_etcd-{ID}.log")).unwrap();
        assert_eq!(
            (l.pod.as_str(), l.container.as_str()),
            ("etcd-node1.example", "etcd")
        );
        for bad in [
            format!("web_default_nginx-{}.log", &ID[..63]),
            format!("web_default_nginx-{ID}.txt"),
            format!("default_nginx-{ID}.log"),
            format!("_default_nginx-{ID}.log"),
            "random.log".to_string(),
        ] {
            assert_eq!(parse_link(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_directory_of_links_becomes_pod_containers() {
        let dir = std::env::temp_dir().join(format!("nettool-kube-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("shop-5f7_web_nginx-{ID}.log")), "").unwrap();
        std::fs::write(dir.join("not-a-link.log"), "").unwrap();
        let mut intent = Intent::default();
        read_into(&dir, &mut intent);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(intent.containers.len(), 1);
        let c = &intent.containers[0];
        assert_eq!(c.engine, EngineKind::Kubernetes);
        assert_eq!(c.name, "nginx");
        assert_eq!(c.pod.as_deref(), Some("web/shop-5f7"));
        assert_eq!(intent.sources[0].error, None);

        let mut none = Intent::default();
        read_into(Path::new("/nonexistent/nettool/kube"), &mut none);
        assert!(none.sources.is_empty(), "no node, no source");
    }
}
