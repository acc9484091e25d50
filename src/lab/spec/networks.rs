//! The `[[network]]` sections: each one's name, subnets, gateway, bridge, upstream and MTU,
//! checked against the networks before it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};
use toml::Spanned;

use super::read::{Ctx, RawNetwork};
use super::{valid_name, NetworkSpec, SpecError, MIN_PREFIX};

/// Every network in file order; the first mistake stops.
pub(super) fn networks(cx: &Ctx<'_>, raw: &[RawNetwork]) -> Result<Vec<NetworkSpec>, SpecError> {
    let mut networks: Vec<NetworkSpec> = Vec::new();
    let mut bridges: BTreeSet<String> = BTreeSet::new();
    for n in raw {
        let spec = network(cx, n, &networks, &mut bridges)?;
        networks.push(spec);
    }
    Ok(networks)
}

/// One network, checked against the ones before it (`earlier`) and the bridge names they took.
fn network(
    cx: &Ctx<'_>,
    n: &RawNetwork,
    earlier: &[NetworkSpec],
    bridges: &mut BTreeSet<String>,
) -> Result<NetworkSpec, SpecError> {
    let nname = n.name.get_ref();
    if !valid_name(nname) {
        return Err(cx.err(
            n.name.span(),
            format!("network name '{nname}' must be letters, digits, '-', '_', '.'"),
        ));
    }
    if earlier.iter().any(|o| &o.name == nname) {
        return Err(cx.err(n.name.span(), format!("duplicate network name '{nname}'")));
    }
    let subnet = subnet(cx, &n.subnet, nname, earlier)?;
    let gateway = match &n.gateway {
        None => first_host(subnet),
        Some(g) => gateway(cx, g, subnet)?,
    };
    let (ipv6, gateway6) = match &n.ipv6 {
        None => (None, None),
        Some(v) => {
            let net = ipv6(cx, v, earlier)?;
            (
                Some(net),
                Some(Ipv6Addr::from(u128::from(net.network()) + 1)),
            )
        }
    };
    if let Some(b) = &n.bridge {
        bridge(cx, b, bridges)?;
    }
    let upstream = n.upstream.as_ref().map(|u| upstream(cx, u)).transpose()?;
    if let Some(m) = &n.mtu {
        if !(576..=65535).contains(m.get_ref()) {
            return Err(cx.err(m.span(), "mtu must be between 576 and 65535"));
        }
    }
    Ok(NetworkSpec {
        name: nname.clone(),
        bridge: n.bridge.as_ref().map(|b| b.get_ref().clone()),
        subnet,
        gateway,
        ipv6,
        gateway6,
        dns: n.dns.unwrap_or(true),
        internal: n.internal.unwrap_or(false),
        upstream,
        mtu: n.mtu.as_ref().map(|m| *m.get_ref()),
    })
}

/// The IPv4 subnet of network `nname`: a network address, /8 to /30, overlapping no earlier one.
fn subnet(
    cx: &Ctx<'_>,
    s: &Spanned<String>,
    nname: &str,
    earlier: &[NetworkSpec],
) -> Result<Ipv4Net, SpecError> {
    let subnet: Ipv4Net = s.get_ref().parse().map_err(|_| {
        cx.err(
            s.span(),
            format!("'{}' is not an IPv4 subnet like 172.19.0.0/16", s.get_ref()),
        )
    })?;
    if subnet.prefix_len() < MIN_PREFIX {
        return Err(cx.err(
            s.span(),
            format!("subnet {subnet} is too wide: a lab network masquerades everything it covers, and /{} covers {} (the host's own routes included); use a /{MIN_PREFIX} or narrower, e.g. 10.99.0.0/16", subnet.prefix_len(), if subnet.prefix_len() == 0 { "every IPv4 address".to_string() } else { format!("2^{} addresses", 32 - subnet.prefix_len()) }),
        ));
    }
    if subnet.prefix_len() > 30 {
        return Err(cx.err(
            s.span(),
            format!("subnet {subnet} is too small (at most /30)"),
        ));
    }
    if subnet.trunc() != subnet {
        return Err(cx.err(
            s.span(),
            format!(
                "subnet {subnet} has host bits set; did you mean {}?",
                subnet.trunc()
            ),
        ));
    }
    for other in earlier {
        if other.subnet.contains(&subnet.network()) || subnet.contains(&other.subnet.network()) {
            return Err(cx.err(
                s.span(),
                format!(
                    "subnet {subnet} of network '{nname}' overlaps {} of network '{}'",
                    other.subnet, other.name
                ),
            ));
        }
    }
    Ok(subnet)
}

/// An explicit gateway: a usable host address of `subnet`.
fn gateway(cx: &Ctx<'_>, g: &Spanned<String>, subnet: Ipv4Net) -> Result<Ipv4Addr, SpecError> {
    let ip: Ipv4Addr = g.get_ref().parse().map_err(|_| {
        cx.err(
            g.span(),
            format!("'{}' is not an IPv4 address", g.get_ref()),
        )
    })?;
    if !host_in(subnet, ip) {
        return Err(cx.err(
            g.span(),
            format!(
                "gateway {ip} is outside subnet {subnet} (or is its network/broadcast address)"
            ),
        ));
    }
    Ok(ip)
}

/// The IPv6 subnet: a network address of at most /120, overlapping no earlier one.
fn ipv6(cx: &Ctx<'_>, v: &Spanned<String>, earlier: &[NetworkSpec]) -> Result<Ipv6Net, SpecError> {
    let net: Ipv6Net = v.get_ref().parse().map_err(|_| {
        cx.err(
            v.span(),
            format!("'{}' is not an IPv6 subnet like fd00:19::/64", v.get_ref()),
        )
    })?;
    if net.prefix_len() > 120 || net.trunc() != net {
        return Err(cx.err(
            v.span(),
            format!("IPv6 subnet {net} must be a network address of at most /120"),
        ));
    }
    for other in earlier {
        if let Some(o) = other.ipv6 {
            if o.contains(&net.network()) || net.contains(&o.network()) {
                return Err(cx.err(
                    v.span(),
                    format!("IPv6 subnet {net} overlaps {o} of network '{}'", other.name),
                ));
            }
        }
    }
    Ok(net)
}

/// An explicit bridge name: a valid interface name (IFNAMSIZ) not taken by an earlier network.
fn bridge(
    cx: &Ctx<'_>,
    b: &Spanned<String>,
    bridges: &mut BTreeSet<String>,
) -> Result<(), SpecError> {
    let bn = b.get_ref();
    if bn.is_empty()
        || bn.len() > 15
        || !bn
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(cx.err(
            b.span(),
            format!("bridge name '{bn}' must be 1-15 letters, digits, '-' or '_'"),
        ));
    }
    if !bridges.insert(bn.clone()) {
        return Err(cx.err(b.span(), format!("bridge name '{bn}' is used twice")));
    }
    Ok(())
}

/// The resolver's upstream: `IP:PORT`, or an IP on port 53.
fn upstream(cx: &Ctx<'_>, u: &Spanned<String>) -> Result<SocketAddr, SpecError> {
    u.get_ref()
        .parse::<SocketAddr>()
        .or_else(|_| {
            u.get_ref()
                .parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| {
            cx.err(
                u.span(),
                format!("upstream '{}' is not an IP or IP:PORT", u.get_ref()),
            )
        })
}

/// The default gateway: the subnet's first address.
fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

/// A usable host address of `net` (not the network or broadcast address).
pub(super) fn host_in(net: Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

#[cfg(test)]
mod tests {
    use super::super::read::{toml, Ctx};
    use super::*;

    fn parse(text: &str) -> Result<Vec<NetworkSpec>, SpecError> {
        let cx = Ctx {
            text,
            file: "lab.toml",
        };
        networks(&cx, &toml(&cx).unwrap().network)
    }

    #[test]
    fn mistakes_in_the_network_sections_keep_their_text() {
        super::super::cases::check_mistakes("net_");
    }

    #[test]
    fn defaults_gateway_first_host_dns_on_and_upstream_port_53() {
        let n = parse("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/30\"\nipv6 = \"fd00::/120\"\nupstream = \"::1\"\n").unwrap();
        assert_eq!(n[0].gateway, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(n[0].gateway6, Some("fd00::1".parse().unwrap()));
        assert!(n[0].dns && !n[0].internal);
        assert_eq!(n[0].upstream, Some("[::1]:53".parse().unwrap()));
        assert_eq!((n[0].bridge.as_ref(), n[0].mtu), (None, None));
    }

    #[test]
    fn adjacent_subnets_and_the_widest_allowed_pass() {
        let n = parse("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/8\"\n[[network]]\nname = \"b\"\nsubnet = \"11.0.0.0/24\"\n[[network]]\nname = \"c\"\nsubnet = \"11.0.1.0/24\"\n").unwrap();
        assert_eq!(n.len(), 3);
    }

    #[test]
    fn an_overlap_is_found_whichever_network_is_wider() {
        for (a, b) in [
            ("10.0.0.0/16", "10.0.5.0/24"),
            ("10.0.5.0/24", "10.0.0.0/16"),
        ] {
            let e = parse(&format!("[[network]]\nname = \"a\"\nsubnet = \"{a}\"\n[[network]]\nname = \"b\"\nsubnet = \"{b}\"\n")).unwrap_err();
            assert!(e.message.contains("overlaps"), "{e}");
            assert_eq!(e.line, 6);
        }
    }

    #[test]
    fn hosts_of_a_subnet_exclude_network_and_broadcast() {
        let net: Ipv4Net = "10.0.0.0/30".parse().unwrap();
        let hosts: Vec<bool> = (0..4)
            .map(|i| host_in(net, Ipv4Addr::new(10, 0, 0, i)))
            .collect();
        assert_eq!(hosts, [false, true, true, false]);
        assert!(!host_in(net, Ipv4Addr::new(10, 0, 0, 5)));
    }
}
