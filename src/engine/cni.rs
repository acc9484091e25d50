//! CNI from libcni's cache: one file per attachment under /var/lib/cni/results, named
//! NETWORK-CONTAINERID-IFNAME, holding the container id, the network list it ran (base64),
//! the port mappings it was asked for and the plugins' result (interfaces with their
//! namespace path, IPs).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::{
    Attachment, Container, ContainerState, EngineKind, Intent, Network, PortBinding, SourceStatus,
};

/// Where libcni (podman's CNI backend, containerd, cnitool) caches results.
pub(crate) const RESULTS_DIR: &str = "/var/lib/cni/results";

/// The state of a cached attachment whose namespace file opens no namespace (missing, or
/// the empty file a bind mount was made on): libcni's entry outlived the sandbox.
pub(crate) const STALE: &str = "stale (namespace gone)";

/// True when `path` opens a network namespace (an nsfs file), not merely exists.
fn is_netns(path: &Path) -> bool {
    crate::netns::NetNs::from_path(path).is_ok()
}

/// Add every cached CNI attachment under `dir` to `intent`, one container per container id.
/// A missing directory is no CNI at all; an unreadable file is the source's error.
pub(crate) fn read_into(dir: &Path, intent: &mut Intent) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            intent.sources.push(SourceStatus {
                engine: EngineKind::Cni,
                endpoint: dir.display().to_string(),
                error: Some(format!("cannot read {}: {e}", dir.display())),
            });
            return;
        }
    };
    let mut errors = Vec::new();
    let mut by_id: BTreeMap<String, Container> = BTreeMap::new();
    let mut networks: BTreeMap<String, Network> = BTreeMap::new();
    let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let parsed = std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
            serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
        });
        let v = match parsed {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        let Some(entry) = parse_entry(&v) else {
            errors.push(format!("{}: not a libcni cache entry", p.display()));
            continue;
        };
        if let Some(n) = entry.network {
            networks.entry(n.name.clone()).or_insert(n);
        }
        let c = by_id
            .entry(entry.container_id.clone())
            .or_insert_with(|| Container {
                engine: EngineKind::Cni,
                id: entry.container_id.clone(),
                name: entry.container_id.clone(),
                state: ContainerState::Other(STALE.into()),
                pid: None,
                netns: None,
                netns_inode: None,
                network_mode: "cni".into(),
                attachments: Vec::new(),
                ports: Vec::new(),
                pod: None,
                infra: false,
                project: None,
                created_networks: None,
                rootless: None,
            });
        if c.state != ContainerState::Running {
            // A path that exists is not yet a namespace: a runtime that crashed, or /run's
            // mounts gone with a reboot, leave the empty file the bind mount was made on. The
            // path is kept either way: the chain's DEL and a new ADD name it.
            if let Some(ns) = entry.netns {
                if is_netns(&ns) {
                    c.state = ContainerState::Running;
                    c.netns = Some(ns);
                } else if c.netns.is_none() {
                    c.netns = Some(ns);
                }
            }
        }
        c.attachments.push(entry.attachment);
        c.ports.extend(entry.ports);
    }
    intent.containers.extend(by_id.into_values());
    intent.networks.extend(networks.into_values());
    intent.sources.push(SourceStatus {
        engine: EngineKind::Cni,
        endpoint: dir.display().to_string(),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    });
}

/// What one cache file says.
struct Entry {
    container_id: String,
    netns: Option<PathBuf>,
    attachment: Attachment,
    ports: Vec<PortBinding>,
    network: Option<Network>,
}

fn parse_entry(v: &serde_json::Value) -> Option<Entry> {
    let container_id = v.get("containerId")?.as_str()?.to_string();
    let network_name = v
        .get("networkName")
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_string();
    let result = v.get("result");
    let ifaces: Vec<&serde_json::Value> = result
        .and_then(|r| r.get("interfaces"))
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
        .collect();
    // The container's interface is the one with a sandbox (its namespace path).
    let sandboxed = ifaces.iter().find(|i| {
        i.get("sandbox")
            .and_then(|s| s.as_str())
            .is_some_and(|s| !s.is_empty())
    });
    let field = |k: &str| sandboxed.and_then(|i| i.get(k)?.as_str());
    let netns = field("sandbox")
        .or_else(|| v.get("netns").and_then(|n| n.as_str()))
        .map(PathBuf::from);
    let mac = field("mac").map(str::to_string);
    // The interface the chain was run with (CNI_IFNAME): libcni records it; an older entry
    // names it only as the result's sandboxed interface.
    let ifname = v
        .get("ifName")
        .and_then(|n| n.as_str())
        .or_else(|| field("name"))
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let mut attachment = Attachment {
        network: network_name.clone(),
        ipv4: None,
        ipv6: None,
        mac,
        ifname,
    };
    for ip in result
        .and_then(|r| r.get("ips"))
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
    {
        match ip
            .get("address")
            .and_then(|a| a.as_str())
            .and_then(|a| a.parse::<IpNet>().ok())
        {
            Some(IpNet::V4(n)) => {
                attachment.ipv4.get_or_insert(n.addr());
            }
            Some(IpNet::V6(n)) => {
                attachment.ipv6.get_or_insert(n.addr());
            }
            None => {}
        }
    }
    let ports = v
        .pointer("/capabilityArgs/portMappings")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let port = |k: &str| m.get(k)?.as_u64().and_then(|p| u16::try_from(p).ok());
            Some(PortBinding {
                proto: m
                    .get("protocol")
                    .and_then(|p| p.as_str())
                    .unwrap_or("tcp")
                    .to_ascii_lowercase(),
                host_ip: m
                    .get("hostIP")
                    .and_then(|h| h.as_str())
                    .and_then(|h| h.parse::<IpAddr>().ok()),
                host_port: port("hostPort")?,
                container_port: port("containerPort")?,
            })
        })
        .collect();
    let network = v
        .get("config")
        .and_then(|c| c.as_str())
        .and_then(base64_decode)
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|conf| network_from_config(&conf, &network_name));
    Some(Entry {
        container_id,
        netns,
        attachment,
        ports,
        network,
    })
}

/// A network from its config (a conflist, or a single plugin's config): the bridge plugin's
/// bridge (cni0 by default) and the IPAM subnets.
fn network_from_config(conf: &serde_json::Value, fallback_name: &str) -> Network {
    let plugins: Vec<&serde_json::Value> = match conf.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list.iter().collect(),
        None => vec![conf],
    };
    let name = conf
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or(fallback_name)
        .to_string();
    let bridge_plugin = plugins
        .iter()
        .find(|p| p.get("type").and_then(|t| t.as_str()) == Some("bridge"));
    let bridge = bridge_plugin.map(|p| {
        p.get("bridge")
            .and_then(|b| b.as_str())
            .unwrap_or("cni0")
            .to_string()
    });
    let mut subnets = Vec::new();
    for p in &plugins {
        let Some(ipam) = p.get("ipam") else { continue };
        if let Some(s) = ipam
            .get("subnet")
            .and_then(|s| s.as_str())
            .and_then(|s| s.parse().ok())
        {
            subnets.push(s);
        }
        for range_set in ipam
            .get("ranges")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
        {
            for r in range_set.as_array().into_iter().flatten() {
                if let Some(s) = r
                    .get("subnet")
                    .and_then(|s| s.as_str())
                    .and_then(|s| s.parse().ok())
                {
                    if !subnets.contains(&s) {
                        subnets.push(s);
                    }
                }
            }
        }
    }
    // What libcni gives portmap: its own entry plus the list's name and version.
    let portmap = plugins
        .iter()
        .find(|p| p.get("type").and_then(|t| t.as_str()) == Some("portmap"))
        .map(|p| {
            let mut p = (*p).clone();
            p["name"] = serde_json::Value::String(name.clone());
            if let Some(v) = conf.get("cniVersion") {
                p["cniVersion"] = v.clone();
            }
            p.to_string()
        });
    let chain = serde_json::json!({
        "cniVersion": conf.get("cniVersion").cloned().unwrap_or_default(),
        "name": name,
        "plugins": plugins,
    })
    .to_string();
    Network {
        engine: EngineKind::Cni,
        id: name.clone(),
        name,
        bridge,
        subnets,
        internal: false,
        portmap,
        cni_chain: Some(chain),
    }
}

/// Standard base64 (Go's encoding/json writes []byte that way), padding optional.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// Standard base64 with padding (what libcni's cache holds).
pub(crate) fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, &x)| a | (x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "{\"name\":\"n\"}"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).unwrap(),
                s.as_bytes()
            );
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
    }

    #[test]
    fn a_cache_entry() {
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "nt", "plugins": [
            {"type": "bridge", "bridge": "ntbr0", "ipam": {"type": "host-local",
                "ranges": [[{"subnet": "10.99.0.0/24"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]});
        let v = serde_json::json!({
            "kind": "cniCacheV1", "containerId": "ctr1", "ifName": "eth0", "networkName": "nt",
            "config": base64_encode(conf.to_string().as_bytes()),
            "capabilityArgs": {"portMappings": [{"hostPort": 18090, "containerPort": 80, "protocol": "tcp"}]},
            "result": {"cniVersion": "1.0.0",
                "interfaces": [{"name": "ntbr0", "mac": "aa"}, {"name": "veth1", "mac": "bb"},
                               {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}],
                "ips": [{"address": "10.99.0.2/24", "gateway": "10.99.0.1", "interface": 2}]}
        });
        let e = parse_entry(&v).unwrap();
        assert_eq!(e.container_id, "ctr1");
        assert_eq!(e.netns.as_deref(), Some(Path::new("/run/netns/x")));
        assert_eq!(e.attachment.ipv4, Some("10.99.0.2".parse().unwrap()));
        assert_eq!(e.attachment.mac.as_deref(), Some("cc"));
        assert_eq!(e.attachment.ifname.as_deref(), Some("eth0"));
        assert_eq!(e.ports[0].host_port, 18090);
        // A chain run with CNI_IFNAME=net1: the cache says so.
        let mut v1 = v.clone();
        v1["ifName"] = serde_json::json!("net1");
        let e1 = parse_entry(&v1).unwrap();
        assert_eq!(e1.attachment.ifname.as_deref(), Some("net1"));
        let n = e.network.unwrap();
        assert_eq!(n.bridge.as_deref(), Some("ntbr0"));
        assert_eq!(n.subnets[0].to_string(), "10.99.0.0/24");
    }
}
