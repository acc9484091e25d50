//! Synthetic rulesets shaped like kube-proxy's and CNI portmap's, for tests and tools/bench-nat.
//!
//! The shapes follow what kube-proxy (iptables mode) and the CNI portmap plugin write: chain
//! names, the probability ladder, KUBE-MARK-MASQ, CNI-HOSTPORT-SETMARK with an xmark.

use std::fmt::Write;

/// A deterministic 16-hex-char chain suffix like kube-proxy's hashes.
fn suffix(kind: &str, i: usize) -> String {
    // FNV-1a: stable across runs, no dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain(i.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..16)
        .map(|k| ALPHA[((h >> (k * 4)) & 31) as usize] as char)
        .collect()
}

/// kube-proxy-style iptables-save text: `services` ClusterIP services (every third also a
/// NodePort) with `endpoints` endpoints each, balanced with the probability ladder.
pub fn kube_proxy(services: usize, endpoints: usize) -> String {
    kube_proxy_family(services, endpoints, false)
}

/// [`kube_proxy`] for IPv4 or (`v6`) IPv6: ip6tables-save text with fd00:96::/64 cluster IPs
/// and fd00:244::/64 endpoints.
pub fn kube_proxy_family(services: usize, endpoints: usize, v6: bool) -> String {
    let endpoints = endpoints.max(1);
    let (host_len, pod_net) = if v6 {
        (128, "fd00:244::/64")
    } else {
        (32, "10.244.0.0/16")
    };
    let mut chains = String::new();
    let mut rules = String::new();
    let _ = writeln!(
        rules,
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    let _ = writeln!(
        rules,
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    let _ = writeln!(
        rules,
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
    );
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0");
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully");
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    let mut nodeports = String::new();
    for s in 0..services {
        let name = format!("ns{}/svc{}:http", s % 50, s);
        let svc = format!("KUBE-SVC-{}", suffix("svc", s));
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let cip = if v6 {
            format!("fd00:96::{:x}:{:x}", (s / 250) % 250, s % 250 + 1)
        } else {
            format!("10.96.{}.{}", (s / 250) % 250, s % 250 + 1)
        };
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {cip}/{host_len} -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j {svc}"
        );
        let _ = writeln!(
            rules,
            "-A {svc} ! -s {pod_net} -d {cip}/{host_len} -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"
        );
        if s % 3 == 0 {
            let port = 30000 + (s % 2700);
            let _ = writeln!(
                nodeports,
                "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{name}\" -m tcp --dport {port} -j {svc}"
            );
        }
        for e in 0..endpoints {
            let sep = format!("KUBE-SEP-{}", suffix("sep", s * 1000 + e));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let (a, b) = (
                (s * endpoints + e) / 250 % 250,
                (s * endpoints + e) % 250 + 1,
            );
            let eip = if v6 {
                format!("fd00:244::{a:x}:{b:x}")
            } else {
                format!("10.244.{a}.{b}")
            };
            let to = if v6 {
                format!("[{eip}]:8080")
            } else {
                format!("{eip}:8080")
            };
            let left = endpoints - e;
            if left > 1 {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"{name} -> {eip}:8080\" -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / left as f64
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"{name} -> {eip}:8080\" -j {sep}"
                );
            }
            let _ = writeln!(
                rules,
                "-A {sep} -s {eip}/{host_len} -m comment --comment \"{name}\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {to}"
            );
        }
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    let tool = if v6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    format!(
        "# Generated by nettool (nat::synth::kube_proxy({services}, {endpoints})): kube-proxy-shaped {tool} text, not captured\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n{chains}{rules}{nodeports}COMMIT\n"
    )
}

/// CNI-portmap-style iptables-save text: one container `ip` with `ports` (host, container) TCP maps.
pub fn cni_portmap(container_ip: &str, subnet: &str, ports: &[(u16, u16)]) -> String {
    let dn = format!(
        "CNI-DN-{}",
        &suffix("cni", ports.len()).to_lowercase()[..12]
    );
    let list: Vec<String> = ports.iter().map(|(h, _)| h.to_string()).collect();
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# Generated by nettool (nat::synth::cni_portmap): CNI-portmap-shaped, not captured"
    );
    let _ = writeln!(r, "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]");
    for c in [
        "CNI-HOSTPORT-DNAT",
        "CNI-HOSTPORT-MASQ",
        "CNI-HOSTPORT-SETMARK",
        &dn,
    ] {
        let _ = writeln!(r, ":{c} - [0:0]");
    }
    let _ = writeln!(
        r,
        "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"
    );
    let _ = writeln!(
        r,
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"
    );
    let _ = writeln!(r, "-A POSTROUTING -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ");
    let _ = writeln!(
        r,
        "-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"0123456789ab\\\"\" -m multiport --dports {} -j {dn}",
        list.join(",")
    );
    let _ = writeln!(
        r,
        "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE"
    );
    let _ = writeln!(r, "-A CNI-HOSTPORT-SETMARK -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark 0x2000/0x2000");
    for (h, c) in ports {
        let _ = writeln!(
            r,
            "-A {dn} -s {subnet} -p tcp -m tcp --dport {h} -j CNI-HOSTPORT-SETMARK"
        );
        let _ = writeln!(
            r,
            "-A {dn} -s 127.0.0.1/32 -p tcp -m tcp --dport {h} -j CNI-HOSTPORT-SETMARK"
        );
        let _ = writeln!(
            r,
            "-A {dn} -p tcp -m tcp --dport {h} -j DNAT --to-destination {container_ip}:{c}"
        );
    }
    r.push_str("COMMIT\n");
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::iptables;

    #[test]
    fn generated_sets_load_cleanly() {
        let k = iptables::parse(&kube_proxy(10, 3));
        assert!(k.problems.is_empty(), "{:?}", k.problems);
        assert!(k.warnings.is_empty(), "{:?}", k.warnings);
        let c = iptables::parse(&cni_portmap(
            "10.22.0.5",
            "10.22.0.0/16",
            &[(8080, 80), (8443, 443)],
        ));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }
}
