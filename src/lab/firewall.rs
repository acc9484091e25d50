//! The lab's firewall as text: `iptables-restore --noflush` input with Docker's structure under
//! our own chain names, or an nftables table of our own. Pure functions: the same plan always
//! gives the same text, which is what `--dry-run` prints and what the tests compare with
//! `iptables-save`.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::Serialize;

use super::spec::Proto;

/// The nat chain published ports are DNATed in (Docker's DOCKER).
pub(crate) const CHAIN: &str = "NETTOOL";
/// The filter chain people add their own rules to (Docker's DOCKER-USER).
pub(crate) const CHAIN_USER: &str = "NETTOOL-USER";
/// Isolation between networks, stage 1 (Docker's DOCKER-ISOLATION-STAGE-1).
pub(crate) const CHAIN_ISO1: &str = "NETTOOL-ISOLATION-STAGE-1";
/// Isolation between networks, stage 2.
pub(crate) const CHAIN_ISO2: &str = "NETTOOL-ISOLATION-STAGE-2";
/// The embedded DNS chains inside a container namespace (Docker's DOCKER_OUTPUT / DOCKER_POSTROUTING).
pub(crate) const CHAIN_DNS_OUTPUT: &str = "NETTOOL_OUTPUT";
/// See [`CHAIN_DNS_OUTPUT`].
pub(crate) const CHAIN_DNS_POSTROUTING: &str = "NETTOOL_POSTROUTING";
/// The embedded resolver's address inside every container, as Docker's.
pub(crate) const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// One bridge network as the firewall sees it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FwNetwork {
    /// Bridge name.
    pub bridge: String,
    /// IPv4 subnet.
    pub subnet: Ipv4Net,
    /// No way out (no MASQUERADE, no forwarding to other interfaces).
    pub internal: bool,
}

/// One published port as the firewall sees it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FwPort {
    /// tcp/udp.
    pub proto: Proto,
    /// Host address; unspecified = any local address.
    pub host_ip: IpAddr,
    /// Host port.
    pub host_port: u16,
    /// Container address.
    pub container_ip: Ipv4Addr,
    /// Container port.
    pub container_port: u16,
    /// The bridge the container sits on.
    pub bridge: String,
}

/// Everything the host-namespace firewall of one lab depends on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FwModel {
    /// Lab name (names the nft table).
    pub lab: String,
    /// Bridges.
    pub networks: Vec<FwNetwork>,
    /// Published ports.
    pub ports: Vec<FwPort>,
    /// Userland proxy on: localhost is left to the proxy (`! -d 127.0.0.0/8`); off: hairpin
    /// mode, route_localnet and a MASQUERADE for local sources.
    pub userland_proxy: bool,
}

/// iptables text to apply, text that removes exactly the lab's rules, and text that removes
/// the shared chains (used by the last lab of a namespace).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IptablesText {
    /// `iptables-restore --noflush` input that adds the lab.
    pub apply: String,
    /// `iptables-restore --noflush` input that deletes the lab's rules.
    pub undo: String,
}

fn proto_match(p: Proto, port: u16, dir: &str) -> String {
    format!("-p {p} -m {p} --{dir} {port}")
}

/// Rules per table: (chain, rule-without-"-A CHAIN", insert-at-top?).
struct Rules {
    nat: Vec<(String, String, bool)>,
    filter: Vec<(String, String, bool)>,
}

fn lab_rules(m: &FwModel) -> Rules {
    let mut nat = Vec::new();
    let mut filter = Vec::new();
    let a = |v: &mut Vec<(String, String, bool)>, c: &str, r: String| v.push((c.into(), r, false));
    // nat: jumps for local destinations.
    a(
        &mut nat,
        "PREROUTING",
        format!("-m addrtype --dst-type LOCAL -j {CHAIN}"),
    );
    if m.userland_proxy {
        a(
            &mut nat,
            "OUTPUT",
            format!("! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j {CHAIN}"),
        );
    } else {
        a(
            &mut nat,
            "OUTPUT",
            format!("-m addrtype --dst-type LOCAL -j {CHAIN}"),
        );
    }
    for n in &m.networks {
        if !n.internal {
            a(
                &mut nat,
                "POSTROUTING",
                format!("-s {} ! -o {} -j MASQUERADE", n.subnet, n.bridge),
            );
        }
        if !m.userland_proxy {
            a(
                &mut nat,
                "POSTROUTING",
                format!("-o {} -m addrtype --src-type LOCAL -j MASQUERADE", n.bridge),
            );
        }
    }
    for p in &m.ports {
        // The hairpin: a container reaching itself through its own published port.
        a(
            &mut nat,
            "POSTROUTING",
            format!(
                "-s {ip}/32 -d {ip}/32 {} -j MASQUERADE",
                proto_match(p.proto, p.container_port, "dport"),
                ip = p.container_ip
            ),
        );
    }
    // With the userland proxy, containers reach published ports through it (RETURN for
    // traffic from a lab bridge); without it (hairpin mode) they are DNATed like everyone else.
    if m.userland_proxy {
        for n in &m.networks {
            a(&mut nat, CHAIN, format!("-i {} -j RETURN", n.bridge));
        }
    }
    for p in &m.ports {
        let dst = if p.host_ip.is_unspecified() {
            String::new()
        } else {
            format!("-d {}/32 ", p.host_ip)
        };
        let iif = if m.userland_proxy {
            format!("! -i {} ", p.bridge)
        } else {
            String::new()
        };
        a(
            &mut nat,
            CHAIN,
            format!(
                "{dst}{iif}{} -j DNAT --to-destination {}:{}",
                proto_match(p.proto, p.host_port, "dport"),
                p.container_ip,
                p.container_port
            ),
        );
    }
    // filter.
    a(&mut filter, "FORWARD", format!("-j {CHAIN_USER}"));
    a(&mut filter, "FORWARD", format!("-j {CHAIN_ISO1}"));
    for n in &m.networks {
        a(
            &mut filter,
            "FORWARD",
            format!(
                "-o {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                n.bridge
            ),
        );
        a(
            &mut filter,
            "FORWARD",
            format!("-o {} -j {CHAIN}", n.bridge),
        );
        if !n.internal {
            a(
                &mut filter,
                "FORWARD",
                format!("-i {b} ! -o {b} -j ACCEPT", b = n.bridge),
            );
        }
        a(
            &mut filter,
            "FORWARD",
            format!("-i {b} -o {b} -j ACCEPT", b = n.bridge),
        );
    }
    for p in &m.ports {
        a(
            &mut filter,
            CHAIN,
            format!(
                "-d {}/32 ! -i {b} -o {b} {} -j ACCEPT",
                p.container_ip,
                proto_match(p.proto, p.container_port, "dport"),
                b = p.bridge
            ),
        );
    }
    // Isolation, inserted above the chains' final RETURN (the last insert ends up first).
    for n in &m.networks {
        if n.internal {
            filter.push((
                CHAIN_ISO1.into(),
                format!("! -s {} -o {} -j DROP", n.subnet, n.bridge),
                true,
            ));
            filter.push((
                CHAIN_ISO1.into(),
                format!("-i {} ! -d {} -j DROP", n.bridge, n.subnet),
                true,
            ));
        } else {
            filter.push((
                CHAIN_ISO1.into(),
                format!("-i {b} ! -o {b} -j {CHAIN_ISO2}", b = n.bridge),
                true,
            ));
            filter.push((CHAIN_ISO2.into(), format!("-o {} -j DROP", n.bridge), true));
        }
    }
    // A published port stays reachable from other networks (the DNATed flow and its replies).
    filter.push((
        CHAIN_ISO1.into(),
        "-m conntrack --ctstate DNAT -j RETURN".into(),
        true,
    ));
    Rules { nat, filter }
}

/// The iptables-restore text for the lab. `with_base` declares the shared chains (first lab
/// in the namespace; declaring an existing chain would flush it).
pub(crate) fn iptables(m: &FwModel, with_base: bool) -> IptablesText {
    let r = lab_rules(m);
    let mut apply = String::new();
    let mut undo = String::new();
    for (table, rules, chains) in [
        ("nat", &r.nat, vec![CHAIN]),
        (
            "filter",
            &r.filter,
            vec![CHAIN, CHAIN_ISO1, CHAIN_ISO2, CHAIN_USER],
        ),
    ] {
        let _ = writeln!(apply, "*{table}");
        let _ = writeln!(undo, "*{table}");
        if with_base {
            for c in &chains {
                let _ = writeln!(apply, ":{c} - [0:0]");
            }
            if table == "filter" {
                for c in [CHAIN_ISO1, CHAIN_ISO2, CHAIN_USER] {
                    let _ = writeln!(apply, "-A {c} -j RETURN");
                }
            }
        }
        for (chain, rule, insert) in rules {
            let op = if *insert { "-I" } else { "-A" };
            let _ = writeln!(apply, "{op} {chain} {rule}");
        }
        for (chain, rule, _) in rules.iter().rev() {
            let _ = writeln!(undo, "-D {chain} {rule}");
        }
        let _ = writeln!(apply, "COMMIT");
        let _ = writeln!(undo, "COMMIT");
    }
    IptablesText { apply, undo }
}

/// iptables-restore text that removes the shared chains (when no lab uses them any more).
pub(crate) fn iptables_base_cleanup() -> String {
    let mut s = String::from("*nat\n");
    let _ = writeln!(s, "-F {CHAIN}\n-X {CHAIN}\nCOMMIT\n*filter");
    for c in [CHAIN, CHAIN_ISO1, CHAIN_ISO2, CHAIN_USER] {
        let _ = writeln!(s, "-F {c}");
    }
    for c in [CHAIN, CHAIN_ISO1, CHAIN_ISO2, CHAIN_USER] {
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The nftables table name of a lab (one table per lab: teardown deletes it whole).
pub(crate) fn nft_table(lab: &str) -> String {
    let clean: String = lab
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("nettool_{clean}")
}

fn nft_port(p: Proto, port: u16, dir: &str) -> String {
    format!("{p} {dir} {port}")
}

/// The `nft -f` text for the lab (apply) and the text that deletes it (undo).
pub(crate) fn nftables(m: &FwModel) -> IptablesText {
    let t = nft_table(&m.lab);
    let mut s = String::new();
    let _ = writeln!(s, "table ip {t} {{");
    // nat
    let _ = writeln!(s, "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tfib daddr type local jump nettool\n\t}}");
    let out = if m.userland_proxy {
        "ip daddr != 127.0.0.0/8 fib daddr type local jump nettool"
    } else {
        "fib daddr type local jump nettool"
    };
    let _ = writeln!(s, "\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\t{out}\n\t}}");
    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    for n in &m.networks {
        if !n.internal {
            let _ = writeln!(
                s,
                "\t\tip saddr {} oifname != \"{}\" masquerade",
                n.subnet, n.bridge
            );
        }
        if !m.userland_proxy {
            let _ = writeln!(
                s,
                "\t\toifname \"{}\" fib saddr type local masquerade",
                n.bridge
            );
        }
    }
    for p in &m.ports {
        let _ = writeln!(
            s,
            "\t\tip saddr {ip} ip daddr {ip} {} masquerade",
            nft_port(p.proto, p.container_port, "dport"),
            ip = p.container_ip
        );
    }
    let _ = writeln!(s, "\t}}\n\tchain nettool {{");
    if m.userland_proxy {
        for n in &m.networks {
            let _ = writeln!(s, "\t\tiifname \"{}\" return", n.bridge);
        }
    }
    for p in &m.ports {
        let dst = if p.host_ip.is_unspecified() {
            String::new()
        } else {
            format!("ip daddr {} ", p.host_ip)
        };
        let iif = if m.userland_proxy {
            format!("iifname != \"{}\" ", p.bridge)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "\t\t{dst}{iif}{} dnat to {}:{}",
            nft_port(p.proto, p.host_port, "dport"),
            p.container_ip,
            p.container_port
        );
    }
    let _ = writeln!(s, "\t}}");
    // filter
    let _ = writeln!(s, "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tjump nettool-user\n\t\tjump nettool-isolation-stage-1");
    for n in &m.networks {
        let b = &n.bridge;
        let _ = writeln!(s, "\t\toifname \"{b}\" ct state related,established accept");
        let _ = writeln!(s, "\t\toifname \"{b}\" jump nettool-forward");
        if !n.internal {
            let _ = writeln!(s, "\t\tiifname \"{b}\" oifname != \"{b}\" accept");
        }
        let _ = writeln!(s, "\t\tiifname \"{b}\" oifname \"{b}\" accept");
    }
    let _ = writeln!(
        s,
        "\t}}\n\tchain nettool-user {{\n\t}}\n\tchain nettool-forward {{"
    );
    for p in &m.ports {
        let _ = writeln!(
            s,
            "\t\tip daddr {} iifname != \"{b}\" oifname \"{b}\" {} accept",
            p.container_ip,
            nft_port(p.proto, p.container_port, "dport"),
            b = p.bridge
        );
    }
    let _ = writeln!(
        s,
        "\t}}\n\tchain nettool-isolation-stage-1 {{\n\t\tct status dnat return"
    );
    for n in &m.networks {
        let b = &n.bridge;
        if n.internal {
            let _ = writeln!(s, "\t\tip saddr != {} oifname \"{b}\" drop", n.subnet);
            let _ = writeln!(s, "\t\tiifname \"{b}\" ip daddr != {} drop", n.subnet);
        } else {
            let _ = writeln!(
                s,
                "\t\tiifname \"{b}\" oifname != \"{b}\" jump nettool-isolation-stage-2"
            );
        }
    }
    let _ = writeln!(s, "\t}}\n\tchain nettool-isolation-stage-2 {{");
    for n in m.networks.iter().filter(|n| !n.internal) {
        let _ = writeln!(s, "\t\toifname \"{}\" drop", n.bridge);
    }
    let _ = writeln!(s, "\t}}\n}}");
    IptablesText {
        apply: s,
        undo: format!("delete table ip {t}\n"),
    }
}

/// iptables-restore text for the embedded DNS inside one container namespace: 127.0.0.11:53
/// goes to the resolver's ports, replies come back from :53 (Docker's DOCKER_OUTPUT pattern).
pub(crate) fn dns_iptables(udp_port: u16, tcp_port: u16) -> String {
    let d = DNS_ADDR;
    format!(
        "*nat\n:{o} - [0:0]\n:{p} - [0:0]\n\
-A OUTPUT -d {d}/32 -j {o}\n\
-A POSTROUTING -d {d}/32 -j {p}\n\
-A {o} -d {d}/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination {d}:{tcp_port}\n\
-A {o} -d {d}/32 -p udp -m udp --dport 53 -j DNAT --to-destination {d}:{udp_port}\n\
-A {p} -s {d}/32 -p tcp -m tcp --sport {tcp_port} -j SNAT --to-source :53\n\
-A {p} -s {d}/32 -p udp -m udp --sport {udp_port} -j SNAT --to-source :53\n\
COMMIT\n",
        o = CHAIN_DNS_OUTPUT,
        p = CHAIN_DNS_POSTROUTING
    )
}

/// The nftables version of [`dns_iptables`].
pub(crate) fn dns_nftables(udp_port: u16, tcp_port: u16) -> String {
    let d = DNS_ADDR;
    format!(
        "table ip nettool_dns {{\n\
\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\
\t\tip daddr {d} tcp dport 53 dnat to {d}:{tcp_port}\n\
\t\tip daddr {d} udp dport 53 dnat to {d}:{udp_port}\n\t}}\n\
\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
\t\tip saddr {d} tcp sport {tcp_port} snat to :53\n\
\t\tip saddr {d} udp sport {udp_port} snat to :53\n\t}}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(proxy: bool) -> FwModel {
        FwModel {
            lab: "t".into(),
            networks: vec![FwNetwork {
                bridge: "br0".into(),
                subnet: "172.19.0.0/16".parse().unwrap(),
                internal: false,
            }],
            ports: vec![FwPort {
                proto: Proto::Tcp,
                host_ip: "0.0.0.0".parse().unwrap(),
                host_port: 8080,
                container_ip: "172.19.0.2".parse().unwrap(),
                container_port: 80,
                bridge: "br0".into(),
            }],
            userland_proxy: proxy,
        }
    }

    #[test]
    fn docker_shape() {
        let t = iptables(&model(true), true);
        assert!(t.apply.contains("-A NETTOOL ! -i br0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.19.0.2:80\n"));
        assert!(t
            .apply
            .contains("-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j NETTOOL\n"));
        assert!(t.apply.contains("-A POSTROUTING -s 172.19.0.2/32 -d 172.19.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE\n"));
        assert!(t.undo.contains("-D NETTOOL ! -i br0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.19.0.2:80\n"));
        assert!(!t.undo.contains(":NETTOOL"));
        let t = iptables(&model(false), false);
        assert!(t.apply.contains(
            "-A NETTOOL -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.19.0.2:80\n"
        ));
        assert!(t
            .apply
            .contains("-A OUTPUT -m addrtype --dst-type LOCAL -j NETTOOL\n"));
        assert!(t
            .apply
            .contains("-A POSTROUTING -o br0 -m addrtype --src-type LOCAL -j MASQUERADE\n"));
        assert!(!t.apply.contains(":NETTOOL"));
    }
}
