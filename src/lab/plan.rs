//! From a validated [`LabSpec`] to the exact list of things to create: namespaces, bridges,
//! veths, addresses, routes, sysctls, firewall text, processes. Pure: nothing is touched here,
//! so `--dry-run` prints exactly what `setup` will do.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::firewall::{self, FwModel, FwNetwork, FwPort};
use super::spec::{Backend, LabSpec, Mode};
use super::state::{ContainerState, InterfaceState, LabState, NetworkState, PortState, Where};

/// How published ports are served for localhost clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ProxyMode {
    /// No userland proxy: hairpin NAT and route_localnet (Docker's --userland-proxy=false).
    Off,
    /// One `nettool proxy` serving every published port.
    Single,
    /// One `nettool proxy` per port with docker-proxy's flags, as dockerd does.
    DockerStyle,
}

impl ProxyMode {
    /// The name used in state.json.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            ProxyMode::Off => "off",
            ProxyMode::Single => "single",
            ProxyMode::DockerStyle => "docker-style",
        }
    }
}

/// Choices made on the command line.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Lab name (overrides the file's).
    pub name: Option<String>,
    /// Build the lab's host in a fresh named namespace.
    pub isolated: bool,
    /// Firewall backend (overrides the file's).
    pub backend: Option<Backend>,
    /// Userland proxy mode.
    pub proxy: ProxyMode,
}

/// One thing to create, in order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub(crate) enum Step {
    /// `ip netns add NAME` (and lo up).
    CreateNetns {
        /// Namespace name.
        name: String,
    },
    /// `sysctl -w NAME=VALUE` in a namespace.
    Sysctl {
        /// Where.
        at: Where,
        /// Dotted name.
        name: String,
        /// New value.
        value: String,
        /// Record the old value for teardown (false when the object dies with the lab anyway).
        restore: bool,
    },
    /// `ip link add NAME type bridge` + up, in the lab host.
    CreateBridge {
        /// Bridge name.
        name: String,
        /// MTU.
        mtu: Option<u32>,
    },
    /// `ip addr add ADDR/PREFIX dev LINK` in the lab host.
    HostAddress {
        /// Link name.
        link: String,
        /// Address.
        address: IpAddr,
        /// Prefix length.
        prefix_len: u8,
    },
    /// `ip link add HOST master BRIDGE up type veth peer name PEER netns NETNS`.
    CreateVeth {
        /// Host side name.
        host: String,
        /// Peer name inside the container.
        peer: String,
        /// Container namespace.
        netns: String,
        /// Bridge to enslave the host side to.
        bridge: String,
        /// MTU.
        mtu: Option<u32>,
        /// Hairpin mode on the bridge port (no userland proxy, like Docker).
        hairpin: bool,
    },
    /// Inside a container: interface up, addresses, default routes.
    ConfigureInterface {
        /// Container namespace.
        netns: String,
        /// Interface name.
        interface: String,
        /// Addresses with prefix lengths.
        addresses: Vec<(IpAddr, u8)>,
        /// IPv4 default route via.
        gateway: Option<Ipv4Addr>,
        /// IPv6 default route via.
        gateway6: Option<Ipv6Addr>,
    },
    /// Apply the lab's firewall in the lab host.
    Firewall {
        /// Which tool.
        backend: Backend,
        /// The text fed to iptables-restore --noflush / nft -f.
        apply: String,
        /// The text that removes it again.
        undo: String,
    },
    /// /etc/netns/NETNS/resolv.conf pointing at the embedded DNS.
    ResolvConf {
        /// Container namespace.
        netns: String,
    },
    /// Start the lab daemon (embedded DNS and `run` services, supervised).
    StartDaemon,
    /// Start the userland proxies.
    StartProxies {
        /// Single or docker-style.
        mode: ProxyMode,
    },
}

impl Step {
    /// The step as the equivalent shell command(s), for --dry-run and error messages.
    pub(crate) fn describe(&self, host: &Option<String>) -> String {
        let hn = |s: &str| match host {
            Some(h) => format!("ip -n {h} {s}"),
            None => format!("ip {s}"),
        };
        let at = |w: &Where| match w {
            Where::Host => host.clone(),
            Where::Netns(n) => Some(n.clone()),
        };
        match self {
            Step::CreateNetns { name } => format!("ip netns add {name} && ip -n {name} link set lo up"),
            Step::Sysctl { at: w, name, value, .. } => match at(w) {
                Some(n) => format!("ip netns exec {n} sysctl -w {name}={value}"),
                None => format!("sysctl -w {name}={value}"),
            },
            Step::CreateBridge { name, mtu } => hn(&format!(
                "link add {name}{} type bridge && {}",
                mtu.map(|m| format!(" mtu {m}")).unwrap_or_default(),
                hn(&format!("link set {name} up"))
            )),
            Step::HostAddress { link, address, prefix_len } => {
                hn(&format!("addr add {address}/{prefix_len} dev {link}"))
            }
            Step::CreateVeth { host: h, peer, netns, bridge, mtu, hairpin } => {
                let mut s = hn(&format!(
                    "link add {h}{} master {bridge} up type veth peer name {peer} netns {netns}",
                    mtu.map(|m| format!(" mtu {m}")).unwrap_or_default()
                ));
                if *hairpin {
                    s.push_str(&format!(" && {}", hn(&format!("link set {h} type bridge_slave hairpin on"))));
                }
                s
            }
            Step::ConfigureInterface { netns, interface, addresses, gateway, gateway6 } => {
                let mut s = format!("ip -n {netns} link set {interface} up");
                for (a, l) in addresses {
                    let _ = write!(s, " && ip -n {netns} addr add {a}/{l} dev {interface}");
                }
                if let Some(g) = gateway {
                    let _ = write!(s, " && ip -n {netns} route add default via {g}");
                }
                if let Some(g) = gateway6 {
                    let _ = write!(s, " && ip -n {netns} -6 route add default via {g}");
                }
                s
            }
            Step::Firewall { backend, apply, .. } => {
                let tool = match backend {
                    Backend::Iptables => "iptables-restore --noflush",
                    Backend::Nftables => "nft -f -",
                };
                let prefix = host.as_ref().map(|h| format!("ip netns exec {h} ")).unwrap_or_default();
                format!("{prefix}{tool} <<'EOF'\n{apply}EOF")
            }
            Step::ResolvConf { netns } => format!(
                "mkdir -p /etc/netns/{netns} && echo 'nameserver {}' > /etc/netns/{netns}/resolv.conf",
                firewall::DNS_ADDR
            ),
            Step::StartDaemon => "nettool lab-daemon (embedded DNS on 127.0.0.11 in each container, `run` services, supervised)".into(),
            Step::StartProxies { mode } => match mode {
                ProxyMode::DockerStyle => "one `nettool proxy -proto ... -host-port ...` per published port (docker-proxy flags, fd 3 readiness)".into(),
                _ => "nettool proxy --map ... (one process serving every published port, --ready-fd 3)".into(),
            },
        }
    }
}

/// Everything setup will do for one lab.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    /// Lab name.
    pub name: String,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// The state the lab will have once up (pids filled in by apply).
    pub state: LabState,
    /// The firewall model the text came from.
    pub firewall: FwModel,
    /// Userland proxy mode.
    pub proxy: ProxyMode,
    /// The lab file, validated.
    pub spec: LabSpec,
}

/// FNV-1a, for short stable names.
fn hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// The bridge name of a network: as written, or `nt-` + 8 hex digits (stable per lab/network).
pub(crate) fn bridge_name(lab: &str, net: &str, explicit: Option<&str>) -> String {
    match explicit {
        Some(b) => b.to_string(),
        None => format!("nt-{:08x}", hash(&[lab, net]) as u32),
    }
}

/// The host-side veth name: `veth` + 7 hex digits, like Docker's (stable per lab/container/network).
pub(crate) fn veth_name(lab: &str, container: &str, net: &str) -> String {
    format!("veth{:07x}", hash(&[lab, container, net]) & 0x0fff_ffff)
}

/// The namespace name of a container.
pub(crate) fn container_netns(lab: &str, container: &str) -> String {
    format!("{lab}-{container}")
}

/// Build the plan. `base_exists`: the shared iptables chains already exist in the lab host
/// (another lab uses them), so they must not be declared again.
pub(crate) fn plan(spec: &LabSpec, opts: &Options, base_exists: bool) -> Plan {
    let name = opts.name.clone().unwrap_or_else(|| spec.name.clone());
    let backend = opts.backend.or(spec.backend).unwrap_or(Backend::Iptables);
    let host_netns = opts.isolated.then(|| name.clone());
    let proxy = opts.proxy;
    let mut steps = Vec::new();
    if let Some(h) = &host_netns {
        steps.push(Step::CreateNetns { name: h.clone() });
    }
    let restore_host = host_netns.is_none();
    steps.push(Step::Sysctl {
        at: Where::Host,
        name: "net.ipv4.ip_forward".into(),
        value: "1".into(),
        restore: restore_host,
    });
    if spec.networks.iter().any(|n| n.ipv6.is_some()) {
        steps.push(Step::Sysctl {
            at: Where::Host,
            name: "net.ipv6.conf.all.forwarding".into(),
            value: "1".into(),
            restore: restore_host,
        });
    }
    steps.push(Step::Sysctl {
        at: Where::Host,
        name: "net.bridge.bridge-nf-call-iptables".into(),
        value: "1".into(),
        restore: restore_host,
    });

    let mut networks = Vec::new();
    for n in &spec.networks {
        let bridge = bridge_name(&name, &n.name, n.bridge.as_deref());
        steps.push(Step::CreateBridge {
            name: bridge.clone(),
            mtu: n.mtu,
        });
        steps.push(Step::HostAddress {
            link: bridge.clone(),
            address: IpAddr::V4(n.gateway),
            prefix_len: n.subnet.prefix_len(),
        });
        if let (Some(v6), Some(g6)) = (n.ipv6, n.gateway6) {
            steps.push(Step::HostAddress {
                link: bridge.clone(),
                address: IpAddr::V6(g6),
                prefix_len: v6.prefix_len(),
            });
        }
        if proxy == ProxyMode::Off {
            steps.push(Step::Sysctl {
                at: Where::Host,
                name: format!("net.ipv4.conf.{bridge}.route_localnet"),
                value: "1".into(),
                restore: false,
            });
        }
        networks.push(NetworkState {
            name: n.name.clone(),
            bridge,
            subnet: n.subnet,
            gateway: n.gateway,
            ipv6: n.ipv6,
            gateway6: n.gateway6,
            dns: n.dns,
            internal: n.internal,
            upstream: n.upstream,
        });
    }

    let mut containers = Vec::new();
    let mut ports = Vec::new();
    let mut fw_ports = Vec::new();
    let mut want_daemon = false;
    // Namespaces first, so container:NAME targets exist whatever the file order.
    for c in &spec.containers {
        if matches!(c.mode, Mode::Bridge | Mode::None) {
            steps.push(Step::CreateNetns {
                name: container_netns(&name, &c.name),
            });
        }
    }
    for c in &spec.containers {
        let netns = match &c.mode {
            Mode::Bridge | Mode::None => Some(container_netns(&name, &c.name)),
            Mode::Host => host_netns.clone(),
            Mode::Container(t) => Some(container_netns(&name, t)),
        };
        let mut ifaces = Vec::new();
        for (k, a) in c.attachments.iter().enumerate() {
            let net = spec.network(&a.network).expect("validated");
            let bridge = networks
                .iter()
                .find(|n| n.name == a.network)
                .expect("planned")
                .bridge
                .clone();
            let host = veth_name(&name, &c.name, &a.network);
            let ifname = format!("eth{k}");
            let ns = netns.clone().expect("bridge mode has a namespace");
            steps.push(Step::CreateVeth {
                host: host.clone(),
                peer: ifname.clone(),
                netns: ns.clone(),
                bridge: bridge.clone(),
                mtu: net.mtu,
                hairpin: proxy == ProxyMode::Off,
            });
            let mut addresses = vec![(IpAddr::V4(a.address), net.subnet.prefix_len())];
            if let (Some(v6), Some(a6)) = (net.ipv6, a.address6) {
                addresses.push((IpAddr::V6(a6), v6.prefix_len()));
            }
            // The default route goes via the first network, like Docker's.
            steps.push(Step::ConfigureInterface {
                netns: ns,
                interface: ifname.clone(),
                addresses,
                gateway: (k == 0 && !net.internal).then_some(net.gateway),
                gateway6: if k == 0 && !net.internal {
                    net.gateway6
                } else {
                    None
                },
            });
            ifaces.push(InterfaceState {
                network: a.network.clone(),
                interface: ifname,
                address: a.address,
                address6: a.address6,
                host_veth: host,
            });
        }
        for p in &c.ports {
            let first = &ifaces[0];
            let bridge = networks
                .iter()
                .find(|n| n.name == first.network)
                .expect("planned")
                .bridge
                .clone();
            ports.push(PortState {
                proto: p.proto,
                host_ip: p.host_ip,
                host_port: p.host_port,
                container: c.name.clone(),
                container_ip: first.address,
                container_port: p.container_port,
            });
            fw_ports.push(FwPort {
                proto: p.proto,
                host_ip: p.host_ip,
                host_port: p.host_port,
                container_ip: first.address,
                container_port: p.container_port,
                bridge,
            });
        }
        if c.run.is_some() {
            want_daemon = true;
        }
        containers.push(ContainerState {
            name: c.name.clone(),
            netns,
            mode: c.mode.to_string(),
            networks: ifaces,
            aliases: c.aliases.clone(),
            run: c.run.clone(),
        });
    }

    let fw = FwModel {
        lab: name.clone(),
        networks: networks
            .iter()
            .map(|n| FwNetwork {
                bridge: n.bridge.clone(),
                subnet: n.subnet,
                internal: n.internal,
            })
            .collect(),
        ports: fw_ports,
        userland_proxy: proxy != ProxyMode::Off,
    };
    let text = match backend {
        Backend::Iptables => firewall::iptables(&fw, !base_exists),
        Backend::Nftables => firewall::nftables(&fw),
    };
    steps.push(Step::Firewall {
        backend,
        apply: text.apply,
        undo: text.undo,
    });

    // Embedded DNS: every container namespace on a DNS network gets resolv.conf.
    let mut dns_ns: Vec<String> = Vec::new();
    for c in &containers {
        let on_dns = c
            .networks
            .iter()
            .any(|i| networks.iter().any(|n| n.name == i.network && n.dns));
        if on_dns {
            if let Some(ns) = &c.netns {
                if !dns_ns.contains(ns) && Some(ns) != host_netns.as_ref() {
                    dns_ns.push(ns.clone());
                }
            }
        }
    }
    for ns in &dns_ns {
        steps.push(Step::ResolvConf { netns: ns.clone() });
        want_daemon = true;
    }
    if want_daemon {
        steps.push(Step::StartDaemon);
    }
    if proxy != ProxyMode::Off && !ports.is_empty() {
        steps.push(Step::StartProxies { mode: proxy });
    }

    let state = LabState {
        name: name.clone(),
        source: spec.source.clone(),
        host_netns,
        backend,
        userland_proxy: proxy.as_str().into(),
        networks,
        containers,
        ports,
        proxy_pids: Vec::new(),
        processes: Vec::new(),
        state_dir: super::state::dir(&name).display().to_string(),
    };
    Plan {
        name,
        steps,
        state,
        firewall: fw,
        proxy,
        spec: spec.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_is_docker_shaped() {
        let spec = super::super::spec::default_lab().unwrap();
        let p = plan(
            &spec,
            &Options {
                name: Some("t1".into()),
                isolated: true,
                backend: None,
                proxy: ProxyMode::Off,
            },
            false,
        );
        assert_eq!(p.state.host_netns.as_deref(), Some("t1"));
        let web = p.state.container("web").unwrap();
        assert_eq!(web.netns.as_deref(), Some("t1-web"));
        assert!(
            web.networks[0].host_veth.starts_with("veth") && web.networks[0].host_veth.len() == 11
        );
        assert!(p.steps.iter().any(|s| matches!(s, Step::StartDaemon)));
        let br = &p.state.networks[0].bridge;
        assert!(br.len() <= 15);
    }
}
