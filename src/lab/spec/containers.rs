//! The `[[container]]` sections: each one's name, mode, networks (with their addresses, through
//! the address plan), aliases, published ports and command.

use std::collections::BTreeSet;

use toml::Spanned;

use super::addresses::AddressPlan;
use super::read::{Ctx, RawContainer};
use super::SpecError;
use super::{parse_port, split_words, valid_name, ContainerSpec, Mode, NetworkSpec, PortSpec};

/// Every container in file order; fixed addresses go into `plan`, the first mistake stops.
pub(super) fn containers(
    cx: &Ctx<'_>,
    raw: &[RawContainer],
    networks: &[NetworkSpec],
    plan: &mut AddressPlan,
) -> Result<Vec<ContainerSpec>, SpecError> {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut published: Vec<(PortSpec, String)> = Vec::new();
    let mut out = Vec::new();
    for (ci, c) in raw.iter().enumerate() {
        let cname = c.name.get_ref();
        if !valid_name(cname) {
            return Err(cx.err(
                c.name.span(),
                format!("container name '{cname}' must be letters, digits, '-', '_', '.'"),
            ));
        }
        if !seen.insert(cname) {
            return Err(cx.err(c.name.span(), format!("duplicate container name '{cname}'")));
        }
        let mode = mode(cx, raw, c)?;
        let mut attachments = Vec::new();
        for (k, (nn, span)) in networks_of(cx, c, &mode, networks)?.iter().enumerate() {
            let net = networks.iter().find(|n| &n.name == nn).ok_or_else(|| {
                cx.err(
                    span.clone(),
                    format!(
                        "container '{cname}': no network named '{nn}' (networks: {})",
                        networks
                            .iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            if attachments
                .iter()
                .any(|a: &super::Attachment| &a.network == nn)
            {
                return Err(cx.err(
                    span.clone(),
                    format!("container '{cname}' joins network '{nn}' twice"),
                ));
            }
            attachments.push(plan.attach(cx, c, ci, k, net)?);
        }
        for (key, f) in &c.addresses {
            if !attachments.iter().any(|a| &a.network == key) {
                return Err(cx.err(
                    f.span(),
                    format!("addresses.{key}: container '{cname}' does not join network '{key}'"),
                ));
            }
        }
        let aliases = aliases(cx, c)?;
        let ports = ports(cx, c, &mut published)?;
        let (run, argv) = run(cx, c)?;
        out.push(ContainerSpec {
            name: cname.clone(),
            mode,
            attachments,
            aliases,
            ports,
            run,
            argv,
        });
    }
    Ok(out)
}

/// The network mode; `container:NAME` must name another container of the lab that has a
/// namespace of its own (bridge or none).
fn mode(cx: &Ctx<'_>, all: &[RawContainer], c: &RawContainer) -> Result<Mode, SpecError> {
    let Some(m) = &c.mode else {
        return Ok(Mode::Bridge);
    };
    Ok(match m.get_ref().as_str() {
        "bridge" => Mode::Bridge,
        "host" => Mode::Host,
        "none" => Mode::None,
        s => {
            let Some(target) = s.strip_prefix("container:") else {
                return Err(cx.err(
                    m.span(),
                    format!("unknown mode '{s}' (bridge, host, none or container:NAME)"),
                ));
            };
            match all.iter().find(|o| o.name.get_ref() == target) {
                None => {
                    return Err(cx.err(
                        m.span(),
                        format!("mode {s}: no container named '{target}' in this lab"),
                    ))
                }
                Some(t) if t.name.get_ref() == c.name.get_ref() => {
                    return Err(cx.err(m.span(), "a container cannot join its own namespace"))
                }
                Some(t) => {
                    let tm = t
                        .mode
                        .as_ref()
                        .map(|m| m.get_ref().as_str())
                        .unwrap_or("bridge");
                    if tm != "bridge" && tm != "none" {
                        return Err(cx.err(m.span(), format!("mode {s}: '{target}' has mode {tm}; only bridge or none containers can be joined")));
                    }
                }
            }
            Mode::Container(target.to_string())
        }
    })
}

/// The networks a container joins, in interface order, each with the span to blame: `network`
/// then `networks`, or the lab's first network for a bridge container that names none. A
/// container of another mode must name no network, address or port.
fn networks_of(
    cx: &Ctx<'_>,
    c: &RawContainer,
    mode: &Mode,
    networks: &[NetworkSpec],
) -> Result<Vec<(String, std::ops::Range<usize>)>, SpecError> {
    let cname = c.name.get_ref();
    let nets: Vec<&Spanned<String>> = c
        .network
        .iter()
        .chain(c.networks.iter().flatten())
        .collect();
    if *mode != Mode::Bridge {
        if let Some(n) = nets.first() {
            return Err(cx.err(n.span(), format!("container '{cname}' has mode {mode}: it joins no network (remove network/networks)")));
        }
        if let Some(a) = c.address.as_ref().or(c.address6.as_ref()) {
            return Err(cx.err(
                a.span(),
                format!("container '{cname}' has mode {mode}: it gets no address"),
            ));
        }
        if let Some(p) = c.ports.first() {
            if *mode != Mode::None {
                return Err(cx.err(p.span(), format!("container '{cname}' has mode {mode}: publish ports on the container that owns the namespace (Docker refuses this too)")));
            }
            return Err(cx.err(
                p.span(),
                format!("container '{cname}' has mode none: it has no network to publish from"),
            ));
        }
        return Ok(Vec::new());
    }
    if nets.is_empty() {
        return match networks.first() {
            Some(n) => Ok(vec![(n.name.clone(), c.name.span())]),
            None => Err(cx.err(c.name.span(), format!("container '{cname}' needs a network, but the lab defines none (add a [[network]])"))),
        };
    }
    Ok(nets
        .iter()
        .map(|n| (n.get_ref().clone(), n.span()))
        .collect())
}

/// Extra DNS names: each a valid name.
fn aliases(cx: &Ctx<'_>, c: &RawContainer) -> Result<Vec<String>, SpecError> {
    c.aliases
        .iter()
        .map(|a| {
            if !valid_name(a.get_ref()) {
                return Err(cx.err(
                    a.span(),
                    format!("alias '{}' is not a valid DNS name", a.get_ref()),
                ));
            }
            Ok(a.get_ref().clone())
        })
        .collect()
}

/// Published ports: each well formed, on an IPv4 host address, and not published before (by
/// this container or an earlier one, as recorded in `published`).
fn ports(
    cx: &Ctx<'_>,
    c: &RawContainer,
    published: &mut Vec<(PortSpec, String)>,
) -> Result<Vec<PortSpec>, SpecError> {
    let mut ports = Vec::new();
    for p in &c.ports {
        let spec = parse_port(p.get_ref())
            .map_err(|e| cx.err(p.span(), format!("port '{}': {e}", p.get_ref())))?;
        if spec.host_ip.is_ipv6() {
            return Err(cx.err(p.span(), format!("port '{}': publishing on an IPv6 host address is not supported yet (the lab's DNAT is IPv4); use an IPv4 host address or leave it out", p.get_ref())));
        }
        for (other, owner) in published.iter() {
            let overlap = other.host_ip.is_unspecified()
                || spec.host_ip.is_unspecified()
                || other.host_ip == spec.host_ip;
            if other.proto == spec.proto && other.host_port == spec.host_port && overlap {
                return Err(cx.err(
                    p.span(),
                    format!(
                        "port {}/{} on {} is already published by container '{owner}'",
                        spec.host_port, spec.proto, spec.host_ip
                    ),
                ));
            }
        }
        published.push((spec.clone(), c.name.get_ref().clone()));
        ports.push(spec);
    }
    Ok(ports)
}

/// The command as written and split into argv; an empty one is a mistake.
fn run(cx: &Ctx<'_>, c: &RawContainer) -> Result<(Option<String>, Vec<String>), SpecError> {
    let Some(r) = &c.run else {
        return Ok((None, Vec::new()));
    };
    let argv = split_words(r.get_ref()).map_err(|e| cx.err(r.span(), format!("run: {e}")))?;
    if argv.is_empty() {
        return Err(cx.err(r.span(), "run is empty"));
    }
    Ok((Some(r.get_ref().clone()), argv))
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn mistakes_in_the_container_sections_keep_their_text() {
        super::super::cases::check_mistakes("ctr_");
    }

    #[test]
    fn a_bridge_container_naming_no_network_joins_the_first() {
        let lab = parse("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[network]]\nname = \"b\"\nsubnet = \"10.0.1.0/24\"\n[[container]]\nname = \"x\"\n", "t").unwrap();
        let nets: Vec<&str> = lab.containers[0]
            .attachments
            .iter()
            .map(|a| a.network.as_str())
            .collect();
        assert_eq!(nets, ["a"]);
    }

    #[test]
    fn network_comes_before_networks_in_interface_order() {
        let lab = parse("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[network]]\nname = \"b\"\nsubnet = \"10.0.1.0/24\"\n[[container]]\nname = \"x\"\nnetworks = [\"a\"]\nnetwork = \"b\"\n", "t").unwrap();
        let nets: Vec<&str> = lab.containers[0]
            .attachments
            .iter()
            .map(|a| a.network.as_str())
            .collect();
        assert_eq!(nets, ["b", "a"]);
    }

    #[test]
    fn joining_a_none_container_and_the_same_port_over_two_protocols_pass() {
        let lab = parse("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[container]]\nname = \"n\"\nmode = \"none\"\n[[container]]\nname = \"x\"\nmode = \"container:n\"\n[[container]]\nname = \"y\"\nports = [\"53:53\", \"53:53/udp\", \"127.0.0.1:80:80\", \"127.0.0.2:80:80\"]\n", "t").unwrap();
        assert_eq!(lab.containers[1].mode, Mode::Container("n".into()));
        assert!(lab.containers[1].attachments.is_empty());
        assert_eq!(lab.containers[2].ports.len(), 4);
    }
}
