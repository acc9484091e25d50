//! The address plan: the gateways and the fixed addresses are taken first (a fixed address
//! that is taken or outside its subnet is a mistake), then every other attachment gets the next
//! free address of its network, in file order, as Docker's IPAM does.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use toml::Spanned;

use super::networks::host_in;
use super::read::{Ctx, RawContainer};
use super::{Attachment, ContainerSpec, NetworkSpec, SpecError};

/// An attachment still waiting for an address: container index, attachment index, IPv6.
struct Pending {
    container: usize,
    attachment: usize,
    v6: bool,
}

/// Who holds which address, and the attachments still to be given one.
pub(super) struct AddressPlan {
    used: HashMap<IpAddr, String>,
    pending: Vec<Pending>,
}

impl AddressPlan {
    /// A plan where only the networks' gateways are taken.
    pub(super) fn new(networks: &[NetworkSpec]) -> Self {
        let mut used = HashMap::new();
        for n in networks {
            used.insert(
                IpAddr::V4(n.gateway),
                format!("the gateway of network '{}'", n.name),
            );
            if let Some(g) = n.gateway6 {
                used.insert(
                    IpAddr::V6(g),
                    format!("the gateway of network '{}'", n.name),
                );
            }
        }
        AddressPlan {
            used,
            pending: Vec::new(),
        }
    }

    /// Container `c` (index `ci`) on `net` as its `k`th network: its fixed addresses (`address`
    /// and `address6` for the first network, `addresses.NET` for any) are checked and taken; the
    /// others are left for [`AddressPlan::assign`].
    pub(super) fn attach(
        &mut self,
        cx: &Ctx<'_>,
        c: &RawContainer,
        ci: usize,
        k: usize,
        net: &NetworkSpec,
    ) -> Result<Attachment, SpecError> {
        let cname = c.name.get_ref();
        let nn = &net.name;
        let fixed: Option<&Spanned<String>> =
            c.addresses
                .get(nn)
                .or(if k == 0 { c.address.as_ref() } else { None });
        let mut a = Attachment {
            network: nn.clone(),
            address: Ipv4Addr::UNSPECIFIED,
            address6: None,
        };
        match fixed {
            Some(f) => a.address = self.fixed_v4(cx, f, net, cname)?,
            None => self.later(ci, k, false),
        }
        match (net.ipv6, (k == 0).then_some(c.address6.as_ref()).flatten()) {
            (Some(v6), Some(f)) => a.address6 = Some(self.fixed_v6(cx, f, v6, nn, cname)?),
            (Some(_), None) => self.later(ci, k, true),
            (None, Some(f)) => {
                return Err(cx.err(
                    f.span(),
                    format!("network '{nn}' has no ipv6 subnet for address6"),
                ))
            }
            (None, None) => {}
        }
        Ok(a)
    }

    fn later(&mut self, container: usize, attachment: usize, v6: bool) {
        self.pending.push(Pending {
            container,
            attachment,
            v6,
        });
    }

    /// A fixed IPv4 address: a host address of the network's subnet that nobody holds yet.
    fn fixed_v4(
        &mut self,
        cx: &Ctx<'_>,
        f: &Spanned<String>,
        net: &NetworkSpec,
        cname: &str,
    ) -> Result<Ipv4Addr, SpecError> {
        let ip: Ipv4Addr = f.get_ref().parse().map_err(|_| {
            cx.err(
                f.span(),
                format!("'{}' is not an IPv4 address", f.get_ref()),
            )
        })?;
        if !host_in(net.subnet, ip) {
            return Err(cx.err(
                f.span(),
                format!(
                    "address {ip} of container '{cname}' is outside subnet {} of network '{}'",
                    net.subnet, net.name
                ),
            ));
        }
        if let Some(owner) = self
            .used
            .insert(IpAddr::V4(ip), format!("container '{cname}'"))
        {
            return Err(cx.err(
                f.span(),
                format!("address {ip} of container '{cname}' is already {owner}"),
            ));
        }
        Ok(ip)
    }

    /// A fixed IPv6 address: inside the network's IPv6 subnet, not its network address, free.
    fn fixed_v6(
        &mut self,
        cx: &Ctx<'_>,
        f: &Spanned<String>,
        v6: Ipv6Net,
        nn: &str,
        cname: &str,
    ) -> Result<Ipv6Addr, SpecError> {
        let ip: Ipv6Addr = f.get_ref().parse().map_err(|_| {
            cx.err(
                f.span(),
                format!("'{}' is not an IPv6 address", f.get_ref()),
            )
        })?;
        if !v6.contains(&ip) || ip == v6.network() {
            return Err(cx.err(
                f.span(),
                format!("address {ip} is outside IPv6 subnet {v6} of network '{nn}'"),
            ));
        }
        if let Some(owner) = self
            .used
            .insert(IpAddr::V6(ip), format!("container '{cname}'"))
        {
            return Err(cx.err(f.span(), format!("address {ip} is already {owner}")));
        }
        Ok(ip)
    }

    /// Every attachment left without an address gets the next free one of its network, in file
    /// order (a full subnet is named at the container that did not fit).
    pub(super) fn assign(
        mut self,
        cx: &Ctx<'_>,
        raw: &[RawContainer],
        networks: &[NetworkSpec],
        containers: &mut [ContainerSpec],
    ) -> Result<(), SpecError> {
        for p in std::mem::take(&mut self.pending) {
            let c = &mut containers[p.container];
            let a = &mut c.attachments[p.attachment];
            let net = networks
                .iter()
                .find(|n| n.name == a.network)
                .expect("attachments name a validated network");
            let owner = format!("container '{}'", c.name);
            let full = |what: String| cx.err(raw[p.container].name.span(), what);
            if p.v6 {
                let v6 = net.ipv6.expect("pending IPv6 only on an IPv6 network");
                let base = u128::from(v6.network());
                let size = 1u128 << (128 - v6.prefix_len()).min(127);
                let ip = (2..size)
                    .map(|i| Ipv6Addr::from(base + i))
                    .find(|ip| !self.used.contains_key(&IpAddr::V6(*ip)))
                    .ok_or_else(|| {
                        full(format!("IPv6 subnet of network '{}' is full", net.name))
                    })?;
                self.used.insert(IpAddr::V6(ip), owner);
                a.address6 = Some(ip);
            } else {
                let ip = net
                    .subnet
                    .hosts()
                    .find(|ip| !self.used.contains_key(&IpAddr::V4(*ip)))
                    .ok_or_else(|| {
                        full(format!(
                            "subnet {} of network '{}' is full",
                            net.subnet, net.name
                        ))
                    })?;
                self.used.insert(IpAddr::V4(ip), owner);
                a.address = ip;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn mistakes_in_addresses_keep_their_text() {
        super::super::cases::check_mistakes("addr");
    }

    fn addresses(text: &str) -> Vec<(String, Ipv4Addr, Option<Ipv6Addr>)> {
        parse(text, "t")
            .unwrap()
            .containers
            .iter()
            .flat_map(|c| {
                c.attachments
                    .iter()
                    .map(|a| (c.name.clone(), a.address, a.address6))
            })
            .collect()
    }

    #[test]
    fn fixed_addresses_are_taken_before_the_next_free_ones_in_file_order() {
        let got = addresses("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\nipv6 = \"fd00::/64\"\n[[container]]\nname = \"x\"\n[[container]]\nname = \"y\"\naddress = \"10.0.0.2\"\naddress6 = \"fd00::3\"\n[[container]]\nname = \"z\"\n");
        let v6 = |s: &str| Some(s.parse().unwrap());
        assert_eq!(
            got,
            [
                ("x".into(), Ipv4Addr::new(10, 0, 0, 3), v6("fd00::2")),
                ("y".into(), Ipv4Addr::new(10, 0, 0, 2), v6("fd00::3")),
                ("z".into(), Ipv4Addr::new(10, 0, 0, 4), v6("fd00::4")),
            ]
        );
    }

    #[test]
    fn a_gateway_elsewhere_leaves_the_first_host_free() {
        let got = addresses("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/30\"\ngateway = \"10.0.0.2\"\n[[container]]\nname = \"x\"\n");
        assert_eq!(got[0].1, Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn address_is_for_the_first_network_and_addresses_for_any() {
        let got = addresses("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[network]]\nname = \"b\"\nsubnet = \"10.0.1.0/24\"\n[[container]]\nname = \"x\"\nnetworks = [\"a\", \"b\"]\naddress = \"10.0.0.9\"\naddresses.b = \"10.0.1.9\"\n[[container]]\nname = \"y\"\nnetworks = [\"b\", \"a\"]\naddresses.a = \"10.0.0.8\"\n");
        let ips: Vec<Ipv4Addr> = got.iter().map(|g| g.1).collect();
        assert_eq!(
            ips,
            [
                Ipv4Addr::new(10, 0, 0, 9),
                Ipv4Addr::new(10, 0, 1, 9),
                Ipv4Addr::new(10, 0, 1, 2),
                Ipv4Addr::new(10, 0, 0, 8),
            ]
        );
    }
}
