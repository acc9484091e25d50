//! Which known systems (Docker, CNI portmap, kube-proxy, netavark, nettool labs) wrote the rules,
//! and kube-proxy's services with their endpoints.

use std::collections::HashSet;

use super::super::model::*;
use super::paths::kube_service_name;
use super::{Recognised, Service};

/// The known systems whose chains are present.
pub fn recognise(rs: &Ruleset) -> Vec<Recognised> {
    let mut out = Vec::new();
    let has = |name: &str| rs.tables.iter().any(|t| t.index.contains_key(name));
    let count_prefix = |p: &str| {
        rs.tables
            .iter()
            .flat_map(|t| &t.chains)
            .filter(|c| c.name.starts_with(p))
            .map(|c| &c.name)
            .collect::<HashSet<_>>()
            .len()
    };
    let mut add = |s: &str, d: String| {
        out.push(Recognised {
            system: s.into(),
            detail: d,
        })
    };
    if let Some(t) = rs.tables.iter().find(|t| t.name == "docker-bridges") {
        add(
            "docker",
            format!(
                "Docker's nftables backend (table {} {}, {} chains)",
                t.family,
                t.name,
                t.chains.len()
            ),
        );
    }
    if let Some(t) = rs.tables.iter().find(|t| t.name == "kube-proxy") {
        let maps = t
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .filter(|r| {
                matches!(
                    &r.action,
                    Action::Vmap {
                        key: VmapKey::Concat,
                        ..
                    }
                )
            })
            .count();
        add(
            "kube-proxy",
            format!(
                "kube-proxy nftables mode (table {} kube-proxy, {} service/endpoint chain(s), {maps} verdict-map lookup(s) on address . protocol . port)",
                t.family,
                t.chains
                    .iter()
                    .filter(|c| c.name.starts_with("service-") || c.name.starts_with("endpoint-"))
                    .count()
            ),
        );
    }
    if has("DOCKER-ISOLATION-STAGE-1") {
        add(
            "docker",
            "Docker, older chain set (DOCKER, DOCKER-ISOLATION-STAGE-1/2, DOCKER-USER)".into(),
        );
    } else if has("DOCKER-FORWARD") || has("DOCKER-CT") {
        add(
            "docker",
            "Docker 28+ chain set (DOCKER-FORWARD, DOCKER-CT, DOCKER-BRIDGE, DOCKER-INTERNAL, DOCKER-USER)".into(),
        );
    } else if has("DOCKER") {
        add("docker", "Docker (chain DOCKER)".into());
    }
    if has("DOCKER-INGRESS") {
        add("docker", "Docker swarm ingress (DOCKER-INGRESS)".into());
    }
    if has("DOCKER_OUTPUT") || has("DOCKER_POSTROUTING") {
        add(
            "docker-dns",
            "Docker's embedded DNS inside a container namespace: queries to 127.0.0.11:53 are sent to the resolver's real port (DOCKER_OUTPUT) and replies rewritten back to port 53 (DOCKER_POSTROUTING)".into(),
        );
    }
    if has("CNI-HOSTPORT-DNAT") {
        add(
            "cni-portmap",
            format!(
                "CNI portmap plugin (CNI-HOSTPORT-DNAT, {} CNI-DN-* container chain(s), SETMARK/MASQ for hairpin)",
                count_prefix("CNI-DN-")
            ),
        );
    }
    if has("KUBE-SERVICES") || count_prefix("KUBE-SVC-") > 0 {
        add(
            "kube-proxy",
            format!(
                "kube-proxy iptables mode: {} service chain(s) (KUBE-SVC-*), {} endpoint chain(s) (KUBE-SEP-*)",
                count_prefix("KUBE-SVC-"),
                count_prefix("KUBE-SEP-")
            ),
        );
    }
    if count_prefix("NETAVARK") > 0 || rs.tables.iter().any(|t| t.name == "netavark") {
        add(
            "netavark",
            "Podman's netavark (NETAVARK-* chains or table netavark)".into(),
        );
    }
    if count_prefix("NETTOOL") > 0 || rs.tables.iter().any(|t| t.name.starts_with("nettool")) {
        add(
            "nettool",
            "a nettool lab (NETTOOL* chains or table nettool*)".into(),
        );
    }
    out
}

/// kube-proxy services: each KUBE-SVC chain with its endpoints and their shares.
pub fn kube_services(rs: &Ruleset) -> Vec<Service> {
    let mut out = Vec::new();
    for t in &rs.tables {
        for c in t.chains.iter().filter(|c| c.name.starts_with("KUBE-SVC-")) {
            let mut remaining = 1.0f64;
            let mut endpoints = Vec::new();
            let mut name = None;
            for r in &c.rules {
                let Some(target) = r.action.target_chain() else {
                    continue;
                };
                if !target.starts_with("KUBE-SEP-") {
                    continue;
                }
                // Session-affinity rules (-m recent --rcheck) repeat an endpoint; they are not a share.
                if r.matches
                    .iter()
                    .any(|m| matches!(&m.cond, Cond::Unknown { text } if text.contains("recent")))
                {
                    continue;
                }
                let p = r.matches.iter().find_map(|m| match m.cond {
                    Cond::Probability { p } => Some(p),
                    _ => None,
                });
                let share = remaining * p.unwrap_or(1.0);
                remaining -= share;
                if name.is_none() {
                    name = kube_service_name(r.comment.as_deref());
                }
                let ep = t
                    .chain(target)
                    .and_then(|sep| {
                        sep.rules.iter().find_map(|r| match &r.action {
                            Action::Dnat { to } => Some(to.text.clone()),
                            _ => None,
                        })
                    })
                    .unwrap_or_else(|| format!("{target} (missing)"));
                endpoints.push((ep, share));
            }
            out.push(Service {
                name: name
                    .or_else(|| {
                        c.rules
                            .iter()
                            .find_map(|r| kube_service_name(r.comment.as_deref()))
                    })
                    .unwrap_or_else(|| c.name.clone()),
                chain: c.name.clone(),
                endpoints,
            });
        }
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::iptables;

    #[test]
    fn systems_are_named_by_their_chains() {
        let rs = iptables::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n:DOCKER-INGRESS - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-DN-1 - [0:0]\n-A PREROUTING -j DOCKER\nCOMMIT\n",
        );
        let found = recognise(&rs);
        let systems: Vec<&str> = found.iter().map(|r| r.system.as_str()).collect();
        assert_eq!(systems, ["docker", "docker", "cni-portmap"]);
        assert!(
            found[2].detail.contains("1 CNI-DN-*"),
            "{}",
            found[2].detail
        );
    }

    #[test]
    fn a_service_without_probabilities_is_one_endpoint() {
        let rs = iptables::parse(
            "*nat\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-1 - [0:0]\n-A KUBE-SVC-A -m comment --comment \"ns/a:http\" -j KUBE-SEP-1\n-A KUBE-SEP-1 -p tcp -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n",
        );
        let s = kube_services(&rs);
        assert_eq!(s[0].name, "ns/a:http");
        assert_eq!(s[0].endpoints, vec![("10.0.0.1:80".to_string(), 1.0)]);
    }
}
