//! A CNI chain runner, as libcni/cnitool do it (ENGINES.md): bridge + host-local (with a
//! dataDir of the test's own) + portmap + firewall from /usr/lib/cni, each plugin run inside
//! the test's "host" namespace with the previous plugin's result as `prevResult` and
//! `runtimeConfig.portMappings` for portmap; the result cached under /var/lib/cni/results the
//! way libcni caches it (what nettool reads); DEL in reverse order on drop.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::{unique, unique_ifname, TestNs};

/// Where the plugins are (Debian package containernetworking-plugins).
pub const PLUGIN_DIR: &str = "/usr/lib/cni";
/// libcni's result cache.
pub const CACHE_DIR: &str = "/var/lib/cni/results";

/// One container namespace attached to a fresh CNI bridge network; DEL on drop.
pub struct CniAttachment {
    /// The namespace acting as the host (bridge, rules).
    pub host: String,
    /// The container's namespace file.
    pub netns: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// The network name (conflist "name").
    pub network: String,
    /// The bridge the network uses.
    pub bridge: String,
    /// The chain's final result (interfaces, ips).
    pub result: Value,
    conflist: Value,
    port_mappings: Value,
    data_dir: PathBuf,
    cache: PathBuf,
}

/// Remove libcni cache entries a killed test run left (its drop never ran): the cache is
/// machine-wide, and a stale entry claiming the same port misleads the next run's doctor.
/// Entries are `NETWORK-CONTAINERID-IFNAME`, named `nt-test-TAG-PID-N...` by `unique`.
fn sweep_dead_runs() {
    let Ok(entries) = std::fs::read_dir(CACHE_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("nt-test-") else {
            continue;
        };
        let pid = rest.split('-').find_map(|t| t.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl CniAttachment {
    /// ADD `container` to a new network on `host` (bridge + host-local on `subnet`, portmap
    /// publishing `host_port` -> `container_port` over tcp, firewall).
    pub fn add(
        host: &TestNs,
        container: &TestNs,
        subnet: &str,
        host_port: u16,
        container_port: u16,
    ) -> Self {
        Self::add_ranges(host, container, &[subnet], host_port, container_port)
    }

    /// ADD as [`CniAttachment::add`], with one host-local range per subnet (an IPv4 and an
    /// IPv6 subnet: a dual-stack attachment, portmap writing ip6tables rules too).
    pub fn add_ranges(
        host: &TestNs,
        container: &TestNs,
        subnets: &[&str],
        host_port: u16,
        container_port: u16,
    ) -> Self {
        let port_mappings = json!([
            {"hostPort": host_port, "containerPort": container_port, "protocol": "tcp"}
        ]);
        Self::add_with(host, container, subnets, port_mappings, "eth0")
    }

    /// ADD as [`CniAttachment::add_ranges`], with the port mappings given as runtimeConfig
    /// (hostIP and all) and the chain run with CNI_IFNAME=`ifname`.
    pub fn add_with(
        host: &TestNs,
        container: &TestNs,
        subnets: &[&str],
        port_mappings: Value,
        ifname: &str,
    ) -> Self {
        let ranges: Vec<Value> = subnets.iter().map(|s| json!([{"subnet": s}])).collect();
        let routes: Vec<Value> = subnets
            .iter()
            .map(|s| json!({"dst": if s.contains(':') { "::/0" } else { "0.0.0.0/0" }}))
            .collect();
        sweep_dead_runs();
        let network = unique("cni");
        let bridge = unique_ifname("cnibr");
        let data_dir = std::env::temp_dir().join(unique("cni-ipam"));
        std::fs::create_dir_all(&data_dir).unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": ranges,
                          "routes": routes,
                          "dataDir": data_dir.display().to_string()}},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                {"type": "firewall", "backend": "iptables"}
            ]
        });
        let container_id = unique("ctr");
        let ifname = ifname.to_string();
        let cache = PathBuf::from(CACHE_DIR).join(format!("{network}-{container_id}-{ifname}"));
        let mut me = CniAttachment {
            host: host.name.clone(),
            netns: container.path(),
            container_id,
            ifname,
            network,
            bridge,
            result: Value::Null,
            conflist,
            port_mappings,
            data_dir,
            cache,
        };
        let mut prev: Option<Value> = None;
        let plugins = me.conflist["plugins"].as_array().unwrap().clone();
        for p in &plugins {
            let out = me
                .exec("ADD", p, prev.as_ref())
                .unwrap_or_else(|e| panic!("CNI ADD {}: {e}", p["type"]));
            prev = Some(out);
        }
        me.result = prev.unwrap_or(Value::Null);
        me.write_cache();
        me
    }

    /// The IPv6 address the container got (a dual-stack attachment).
    pub fn ipv6(&self) -> String {
        let a = self.result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["address"].as_str())
            .find(|a| a.contains(':'))
            .unwrap();
        a.split('/').next().unwrap().to_string()
    }

    /// The IPv4 address the container got.
    pub fn ipv4(&self) -> String {
        let a = self.result["ips"][0]["address"].as_str().unwrap();
        a.split('/').next().unwrap().to_string()
    }

    /// One plugin's config as libcni hands it over: name and version from the list, the
    /// previous result, and runtimeConfig for the capabilities it declares.
    fn plugin_conf(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if plugin["capabilities"]["portMappings"] == true {
            conf["runtimeConfig"] = json!({"portMappings": self.port_mappings});
        }
        conf
    }

    fn exec(&self, command: &str, plugin: &Value, prev: Option<&Value>) -> Result<Value, String> {
        let kind = plugin["type"].as_str().unwrap();
        let conf = self.plugin_conf(plugin, prev);
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host))
            .arg(format!("{PLUGIN_DIR}/{kind}"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_PATH", PLUGIN_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!("{PLUGIN_DIR}/{kind}: {e} (Debian package containernetworking-plugins)")
            })?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
        }
        if command == "DEL" || stdout.trim().is_empty() {
            return Ok(prev.cloned().unwrap_or(Value::Null));
        }
        serde_json::from_str(&stdout).map_err(|e| format!("{e}: {stdout}"))
    }

    /// libcni's cache entry (kind cniCacheV1; config is the conflist's bytes, base64).
    fn write_cache(&self) {
        std::fs::create_dir_all(CACHE_DIR).unwrap();
        let entry = json!({
            "kind": "cniCacheV1",
            "containerId": self.container_id,
            "config": base64(self.conflist.to_string().as_bytes()),
            "ifName": self.ifname,
            "networkName": self.network,
            "capabilityArgs": {"portMappings": self.port_mappings},
            "result": self.result,
        });
        std::fs::write(&self.cache, entry.to_string()).unwrap();
    }
}

/// A libcni cache entry a crashed runtime left behind: removed on drop.
pub struct StaleEntry {
    /// Its CNI_CONTAINERID.
    pub container_id: String,
    path: PathBuf,
}

impl Drop for StaleEntry {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl CniAttachment {
    /// Plant a cache entry for another container on the same network, claiming the same port
    /// mappings, with its namespace at `netns` and the address `addr` (CIDR): what libcni
    /// leaves when a runtime crashes before its DEL. Named like this run's entries, so a
    /// killed run's is swept. Its id sorts before the live container's (`ctr`), as a
    /// random id may.
    pub fn plant_stale(&self, netns: &str, addr: &str) -> StaleEntry {
        let container_id = unique("astale");
        let mut result = self.result.clone();
        if let Some(ifaces) = result["interfaces"].as_array_mut() {
            for i in ifaces {
                if i.get("sandbox").is_some() {
                    i["sandbox"] = Value::String(netns.to_string());
                    i["mac"] = Value::String("02:00:00:00:de:ad".into());
                }
            }
        }
        result["ips"][0]["address"] = Value::String(addr.to_string());
        let entry = json!({
            "kind": "cniCacheV1",
            "containerId": container_id,
            "config": base64(self.conflist.to_string().as_bytes()),
            "ifName": self.ifname,
            "networkName": self.network,
            "capabilityArgs": {"portMappings": self.port_mappings},
            "result": result,
        });
        let path = PathBuf::from(CACHE_DIR)
            .join(format!("{}-{container_id}-{}", self.network, self.ifname));
        std::fs::write(&path, entry.to_string()).unwrap();
        StaleEntry { container_id, path }
    }
}

impl Drop for CniAttachment {
    fn drop(&mut self) {
        let plugins = self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let result = self.result.clone();
        for p in plugins.iter().rev() {
            let _ = self.exec("DEL", p, Some(&result));
        }
        let _ = std::fs::remove_file(&self.cache);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Standard base64 with padding: Go's encoding/json writes libcni's []byte config that way.
fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, &x)| a | (x as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}
