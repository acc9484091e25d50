//! What doctor reads from a namespace: links, addresses, listeners, sysctls, routes.

use std::net::{IpAddr, SocketAddr};

use crate::netns::discover::NamespaceInfo;
use crate::netns::links::{Address, Link, Route, Rtnl};
use crate::netns::peers::veth_peers;
use crate::netns::rtnl::NetlinkError;
use crate::netns::sockets::{self, Socket, Which};
use crate::netns::{sysctl, NetNs};

use crate::lab::state::{self as lab_state, LabState, STATE_ROOT};

use super::DoctorError;

/// The host namespace as doctor sees it.
pub struct HostFacts {
    ns: NetNs,
    /// Its links.
    pub links: Vec<Link>,
    /// Its addresses.
    pub addresses: Vec<Address>,
    /// Main-table routes.
    pub routes: Vec<Route>,
    /// Listening TCP and unconnected UDP sockets, with owners.
    pub listeners: Vec<Socket>,
}

/// Links, addresses, routes and listeners of one namespace.
type NsRead = (Vec<Link>, Vec<Address>, Vec<Route>, Vec<Socket>);

fn read_links(ns: &NetNs) -> Result<NsRead, DoctorError> {
    let read = ns
        .run(|| -> Result<_, NetlinkError> {
            let mut r = Rtnl::open()?;
            Ok((
                r.links()?,
                r.addresses()?,
                r.routes(false)?,
                sockets::list(Which::Listening)?,
            ))
        })?
        .map_err(|e| DoctorError::Read {
            what: "links, addresses, routes and sockets".into(),
            ns: ns.label().into(),
            message: e.to_string(),
        })?;
    Ok(read)
}

impl HostFacts {
    /// Read the host namespace.
    pub fn read(ns: &NetNs) -> Result<Self, DoctorError> {
        let (links, addresses, routes, listeners) = read_links(ns)?;
        Ok(HostFacts {
            ns: ns.clone(),
            links,
            addresses,
            routes,
            listeners,
        })
    }

    /// One sysctl inside the host namespace.
    pub fn sysctl(&self, name: &str) -> Option<String> {
        let name = name.to_string();
        self.ns.run(move || sysctl::read(&name)).ok().flatten()
    }

    /// `ip route get DST` inside `ns` (the host).
    pub fn route_get(&self, ns: &NetNs, dst: IpAddr, src: Option<IpAddr>) -> Result<Route, String> {
        ns.run(|| Rtnl::open().and_then(|mut r| r.route_get(dst, src, None)))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// The interface a packet from another machine would arrive on: the default route's,
    /// else the first up interface with an IPv4 address that is neither loopback, a bridge
    /// nor a bridge port.
    pub fn external_link(&self) -> Option<&Link> {
        let default_oif = self
            .routes
            .iter()
            .find(|r| r.destination.is_none() && r.oif.is_some())
            .and_then(|r| r.oif);
        if let Some(l) = default_oif.and_then(|i| self.links.iter().find(|l| l.index == i)) {
            return Some(l);
        }
        self.links.iter().find(|l| {
            l.kind != "loopback"
                && l.kind != "bridge"
                && l.master.is_none()
                && self
                    .addresses
                    .iter()
                    .any(|a| a.index == l.index && a.address.is_ipv4())
        })
    }

    /// The host's main IPv4 address: on the external link, else any non-loopback one.
    pub fn primary_address(&self) -> Option<IpAddr> {
        let v4 = |a: &&Address| a.address.is_ipv4() && !a.address.is_loopback();
        if let Some(l) = self.external_link() {
            if let Some(a) = self
                .addresses
                .iter()
                .filter(v4)
                .find(|a| a.index == l.index)
            {
                return Some(a.address);
            }
        }
        self.addresses.iter().find(v4).map(|a| a.address)
    }
}

/// A namespace other than the host (a container, a client).
pub struct NsFacts {
    ns: NetNs,
    /// How to call it in the report.
    pub label: String,
    /// Its name under /run/netns, for `ip -n NAME` in fixes.
    pub name: Option<String>,
    /// A path that opens it, for `nsenter --net=PATH` when it has no name.
    pub path: String,
    /// Its links.
    pub links: Vec<Link>,
    /// Its addresses.
    pub addresses: Vec<Address>,
    /// Listening sockets with owners.
    pub listeners: Vec<Socket>,
}

impl NsFacts {
    /// Read a namespace; `all` (from discovery) supplies its name and label.
    pub fn read(ns: &NetNs, all: &[NamespaceInfo]) -> Result<Self, DoctorError> {
        let (links, addresses, _routes, listeners) = read_links(ns)?;
        let info = all.iter().find(|i| i.id == ns.id());
        let name = info.and_then(|i| i.names.iter().find(|n| !n.contains('/')).cloned());
        let label = match (&name, info) {
            (Some(n), _) => n.clone(),
            (None, Some(i)) => i.display_name(),
            (None, None) => ns.label().to_string(),
        };
        Ok(NsFacts {
            ns: ns.clone(),
            label,
            name,
            path: info
                .map(|i| i.path.display().to_string())
                .unwrap_or_else(|| ns.path().display().to_string()),
            links,
            addresses,
            listeners,
        })
    }

    /// The namespace handle.
    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// True when one of its interfaces holds `ip`.
    pub fn has_address(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|a| a.address == ip)
    }

    /// Its non-loopback addresses, for evidence.
    pub fn address_list(&self) -> String {
        let v: Vec<String> = self
            .addresses
            .iter()
            .filter(|a| !a.address.is_loopback() && !is_link_local(a.address))
            .map(|a| format!("{}/{}", a.address, a.prefix_len))
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    /// The veth from this namespace into `host`: the host-side link, and this end's IPv4 address.
    pub fn link_into(
        &self,
        host: &NetNs,
        host_links: &[Link],
        all: &[NamespaceInfo],
    ) -> Option<(Link, Option<IpAddr>)> {
        let host_info: Vec<NamespaceInfo> =
            all.iter().filter(|i| i.id == host.id()).cloned().collect();
        let peers = veth_peers(&self.ns, &host_info).ok()?;
        let p = peers.iter().find(|p| p.peer_ns == Some(host.id()))?;
        let host_link = host_links.iter().find(|l| l.index == p.peer_index)?.clone();
        let addr = self
            .addresses
            .iter()
            .find(|a| a.index == p.local_index && a.address.is_ipv4())
            .map(|a| a.address);
        Some((host_link, addr))
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Where a userland proxy process forwards `port`, read from its command line
/// (docker-proxy flags, or `nettool proxy LISTEN TARGET` / `-p [proto:]LISTEN=TARGET`).
pub fn proxy_target(pid: u32, port: u16) -> Option<SocketAddr> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    parse_proxy_argv(&argv, port)
}

/// The proxy target in a proxy's argv (see [`proxy_target`]).
pub fn parse_proxy_argv(argv: &[String], port: u16) -> Option<SocketAddr> {
    // docker-proxy: -container-ip X -container-port Y (Go flags: -x v, -x=v, --x v).
    let flag = |name: &str| -> Option<String> {
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            let bare = a.trim_start_matches('-');
            if !a.starts_with('-') {
                continue;
            }
            if let Some(v) = bare.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                return Some(v.to_string());
            }
            if bare == name {
                return it.next().cloned();
            }
        }
        None
    };
    if let (Some(ip), Some(p)) = (flag("container-ip"), flag("container-port")) {
        return Some(SocketAddr::new(ip.parse().ok()?, p.parse().ok()?));
    }
    // socat TCP-LISTEN:PORT,... TCP:IP:PORT (the classic hand-made port forward).
    if argv
        .first()
        .is_some_and(|a| a.rsplit('/').next() == Some("socat"))
    {
        let listens = argv.iter().any(|a| {
            let up = a.to_ascii_uppercase();
            (up.starts_with("TCP-LISTEN:")
                || up.starts_with("TCP4-LISTEN:")
                || up.starts_with("UDP-LISTEN:")
                || up.starts_with("UDP4-LISTEN:"))
                && a.split([':', ','])
                    .nth(1)
                    .and_then(|p| p.parse::<u16>().ok())
                    == Some(port)
        });
        let target = argv.iter().skip(1).find_map(|a| {
            let up = a.to_ascii_uppercase();
            let rest = [
                "TCP:",
                "TCP4:",
                "UDP:",
                "UDP4:",
                "TCP-CONNECT:",
                "UDP-CONNECT:",
            ]
            .iter()
            .find_map(|p| up.starts_with(p).then(|| &a[p.len()..]))?;
            let addr = rest.split(',').next()?;
            addr.parse::<SocketAddr>().ok()
        });
        return if listens { target } else { None };
    }
    // nettool proxy: -p/--map SPEC (repeatable) or the positional LISTEN TARGET pair.
    let with_value = [
        "-p",
        "--map",
        "--listen-netns",
        "--target-netns",
        "--log-file",
        "--ready-fd",
        "--pcap",
        "--streams",
        "--dump-file",
    ];
    let mut positional = Vec::new();
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-p" || a == "--map" {
            if let Some(spec) = it.next() {
                if let Some(t) = map_spec_target(spec, port) {
                    return Some(t);
                }
            }
        } else if let Some(spec) = a.strip_prefix("--map=") {
            if let Some(t) = map_spec_target(spec, port) {
                return Some(t);
            }
        } else if with_value.contains(&a.as_str()) {
            it.next();
        } else if !a.starts_with('-') && a != "proxy" {
            positional.push(a.clone());
        }
    }
    if positional.len() == 2 && listen_has_port(&positional[0], port) {
        return target_addr(&positional[1], port, &positional[0]);
    }
    None
}

/// `[tcp:|udp:]LISTEN=TARGET` -> TARGET when LISTEN covers `port`.
fn map_spec_target(spec: &str, port: u16) -> Option<SocketAddr> {
    let spec = spec
        .strip_prefix("tcp:")
        .or_else(|| spec.strip_prefix("udp:"))
        .unwrap_or(spec);
    let (listen, target) = spec.split_once('=')?;
    listen_has_port(listen, port).then(|| target_addr(target, port, listen))?
}

fn port_part(s: &str) -> &str {
    s.rsplit_once(':').map(|(_, p)| p).unwrap_or(s)
}

fn range(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => {
            let p = s.parse().ok()?;
            Some((p, p))
        }
    }
}

fn listen_has_port(listen: &str, port: u16) -> bool {
    range(port_part(listen)).is_some_and(|(a, b)| a <= port && port <= b)
}

/// TARGET = IP:PORT[-PORT]; a range maps one to one with the listen range.
fn target_addr(target: &str, port: u16, listen: &str) -> Option<SocketAddr> {
    let (ip, ports) = target.rsplit_once(':')?;
    let ip: IpAddr = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let (tfrom, _) = range(ports)?;
    let (lfrom, _) = range(port_part(listen))?;
    let p = tfrom.checked_add(port.checked_sub(lfrom)?)?;
    Some(SocketAddr::new(ip, p))
}

/// The nettool lab whose host is `host` (its isolated host namespace, or the current one for
/// a lab built without `--isolated`), read from /run/nettool/*/state.json.
pub fn lab_of_host(host: &NetNs) -> Option<LabState> {
    let current = NetNs::current().ok();
    let rd = std::fs::read_dir(STATE_ROOT).ok()?;
    rd.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let st = lab_state::load(&name).ok()?;
        let same = match &st.host_netns {
            Some(n) => NetNs::from_name(n).is_ok_and(|ns| ns.id() == host.id()),
            None => current.as_ref().is_some_and(|c| c.id() == host.id()),
        };
        same.then_some(st)
    })
}

/// The namespace of lab container `name`, when `lab` has it.
pub fn lab_container(lab: &LabState, name: &str) -> Option<NetNs> {
    let c = lab.container(name)?;
    NetNs::from_name(c.netns.as_deref()?).ok()
}

/// The `run` command of the lab container living in namespace `ns`, as argv; `nettool` is
/// replaced by this executable so the line runs as printed.
pub fn lab_service_argv(lab: &LabState, ns: &NetNs) -> Option<(String, Vec<String>)> {
    let c = lab.containers.iter().find(|c| {
        c.netns
            .as_deref()
            .and_then(|n| NetNs::from_name(n).ok())
            .is_some_and(|n| n.id() == ns.id())
    })?;
    let run = c.run.as_deref()?;
    let mut argv: Vec<String> = run.split_whitespace().map(String::from).collect();
    if argv.first().map(String::as_str) == Some("nettool") {
        argv[0] = self_exe();
    }
    Some((c.name.clone(), argv))
}

/// This executable's path (for fix commands that run nettool itself).
pub fn self_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "nettool".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn docker_proxy_flags() {
        let a = v("/usr/bin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.19.0.2 -container-port 80");
        assert_eq!(
            parse_proxy_argv(&a, 8080),
            Some("172.19.0.2:80".parse().unwrap())
        );
        let a = v("docker-proxy --container-ip=10.0.0.2 -container-port=81");
        assert_eq!(
            parse_proxy_argv(&a, 1),
            Some("10.0.0.2:81".parse().unwrap())
        );
    }

    #[test]
    fn socat_forward() {
        let a = v("socat TCP-LISTEN:9999,fork,reuseaddr TCP:10.89.0.2:80");
        assert_eq!(
            parse_proxy_argv(&a, 9999),
            Some("10.89.0.2:80".parse().unwrap())
        );
        assert_eq!(parse_proxy_argv(&a, 80), None);
        let a = v("/usr/bin/socat TCP-LISTEN:80,fork EXEC:cat");
        assert_eq!(parse_proxy_argv(&a, 80), None);
    }

    #[test]
    fn nettool_proxy_forms() {
        let a = v("nettool proxy --dump 8080 172.19.0.2:80");
        assert_eq!(
            parse_proxy_argv(&a, 8080),
            Some("172.19.0.2:80".parse().unwrap())
        );
        let a = v("nettool proxy --listen-netns h -p tcp:127.0.0.1:9000-9002=10.0.0.5:7000-7002 -p 53=10.0.0.6:53");
        assert_eq!(
            parse_proxy_argv(&a, 9001),
            Some("10.0.0.5:7001".parse().unwrap())
        );
        assert_eq!(
            parse_proxy_argv(&a, 53),
            Some("10.0.0.6:53".parse().unwrap())
        );
        assert_eq!(parse_proxy_argv(&a, 80), None);
        // A target range that would run past 65535 is no target, not a panic.
        let a = v("nettool proxy -p 100-200=10.0.0.5:65500-65535");
        assert_eq!(parse_proxy_argv(&a, 150), None);
    }
}
