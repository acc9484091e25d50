//! Links, addresses, routes and nsids of one namespace, read through rtnetlink.
//!
//! Every function here works on the namespace of the calling thread: call them inside
//! [`crate::netns::NetNs::run`] to read another one.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use serde::{Deserialize, Serialize};

use super::rtnl::{Netlink, NetlinkError};
use super::NetNs;

/// One network interface as `ip -d link` would describe it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Link {
    /// ifindex, unique within its namespace only.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Driver kind: veth, bridge, vxlan, macvlan, dummy, tun... ("device" for physical/loopback).
    pub kind: String,
    /// IFF_UP set administratively.
    pub admin_up: bool,
    /// Operational state (up, down, unknown, lowerlayerdown...).
    pub oper_state: String,
    /// MTU in bytes.
    pub mtu: u32,
    /// MAC address, when the link has one.
    pub mac: Option<String>,
    /// ifindex of the bridge/bond this link is enslaved to.
    pub master: Option<u32>,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace); for macvlan/vlan, the
    /// parent; for vxlan, the underlay device (IFLA_VXLAN_LINK).
    pub link: Option<u32>,
    /// IFLA_LINK_NETNSID: the nsid, as seen from this namespace, of the namespace `link` lives in.
    pub link_netnsid: Option<i32>,
}

/// One address on an interface.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Address {
    /// ifindex of the interface holding it.
    pub index: u32,
    /// The address.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
}

/// One route from the main table (or any table when asked).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Route {
    /// Destination network; `None` for the default route.
    pub destination: Option<IpAddr>,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Next hop, when not directly connected.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Preferred source address.
    pub prefsrc: Option<IpAddr>,
    /// Routing table id.
    pub table: u32,
    /// unicast, local, broadcast, blackhole...
    pub kind: String,
    /// Route metric / priority.
    pub metric: Option<u32>,
}

/// An rtnetlink connection in the calling thread's namespace.
pub(crate) struct Rtnl(pub(crate) Netlink);

impl Rtnl {
    /// Open a NETLINK_ROUTE socket in the current thread's namespace.
    pub(crate) fn open() -> Result<Self, NetlinkError> {
        Ok(Rtnl(Netlink::open(NETLINK_ROUTE)?))
    }

    /// Every link in this namespace, sorted by ifindex.
    pub(crate) fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let msgs = self.0.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "list links",
        )?;
        let mut links: Vec<Link> = msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_message(&l)),
                _ => None,
            })
            .collect();
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    /// Every address in this namespace (both families).
    pub(crate) fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let msgs = self.0.dump(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            "list addresses",
        )?;
        let mut out = Vec::new();
        for m in msgs {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                // IFA_LOCAL is the interface's own address on point-to-point links; prefer it.
                let mut addr = None;
                for attr in &a.attributes {
                    match attr {
                        AddressAttribute::Local(ip) => addr = Some(*ip),
                        AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                        _ => {}
                    }
                }
                if let Some(address) = addr {
                    out.push(Address {
                        index: a.header.index,
                        address,
                        prefix_len: a.header.prefix_len,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Routes of both families; `all_tables` includes local/broadcast tables. One AF_UNSPEC
    /// dump: the kernel answers it with every family's routes (IPv4 first), so a namespace costs
    /// one request instead of one per family. Multicast routing tables (ipmr, ip6mr) come too
    /// and are left out.
    pub(crate) fn routes(&mut self, all_tables: bool) -> Result<Vec<Route>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Unspec;
        let msgs = self
            .0
            .dump(RouteNetlinkMessage::GetRoute(req), "list routes")?;
        let mut out: Vec<(bool, Route)> = Vec::new();
        for m in msgs {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                let v6 = match r.header.address_family {
                    AddressFamily::Inet => false,
                    AddressFamily::Inet6 => true,
                    _ => continue,
                };
                let route = route_from_message(&r);
                if all_tables || route.table == RouteHeader::RT_TABLE_MAIN as u32 {
                    out.push((v6, route));
                }
            }
        }
        // IPv4 before IPv6, as two dumps gave them: a default route with no gateway and no
        // source says nothing of its family, and readers take the IPv4 ones first.
        out.sort_by_key(|(v6, _)| *v6);
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// What `ip route get DST [from SRC] [iif IFINDEX]` answers: the route the kernel would use
    /// for one packet (RTM_GETROUTE, no dump). With `iif` the lookup is done as for a packet
    /// arriving on that interface (forwarding, rp_filter and martian checks apply), so the
    /// kernel may refuse it with an errno that is itself the answer (e.g. EINVAL, EHOSTUNREACH).
    pub(crate) fn route_get(
        &mut self,
        dst: IpAddr,
        src: Option<IpAddr>,
        iif: Option<u32>,
    ) -> Result<Route, NetlinkError> {
        let mut req = RouteMessage::default();
        let (family, bits) = match dst {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        req.header.address_family = family;
        req.header.destination_prefix_length = bits;
        req.attributes
            .push(RouteAttribute::Destination(route_address(dst)));
        if let Some(src) = src {
            req.header.source_prefix_length = bits;
            req.attributes
                .push(RouteAttribute::Source(route_address(src)));
        }
        if let Some(iif) = iif {
            req.attributes.push(RouteAttribute::Iif(iif));
        }
        let what = format!("route get {dst}");
        let replies = self.0.get(RouteNetlinkMessage::GetRoute(req), &what)?;
        replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(route_from_message(&r)),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::Decode(format!("{what}: no route in the answer")))
    }

    /// The nsid this namespace uses for `other` (RTM_GETNSID with NETNSA_FD), if one is assigned.
    pub(crate) fn nsid_of(&mut self, other: &NetNs) -> Result<Option<i32>, NetlinkError> {
        let mut req = NsidMessage::default();
        req.attributes
            .push(NsidAttribute::Fd(other.file().as_raw_fd() as u32));
        let replies = self.0.get(RouteNetlinkMessage::GetNsId(req), "get nsid")?;
        for r in replies {
            if let RouteNetlinkMessage::NewNsId(m) = r {
                for a in m.attributes {
                    if let NsidAttribute::Id(id) = a {
                        return Ok((id >= 0).then_some(id));
                    }
                }
            }
        }
        Ok(None)
    }
}

fn link_from_message(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        kind: "device".into(),
        admin_up: l.header.flags.contains(LinkFlags::Up),
        oper_state: "unknown".into(),
        mtu: 0,
        mac: None,
        master: None,
        link: None,
        link_netnsid: None,
    };
    if l.header.flags.contains(LinkFlags::Loopback) {
        link.kind = "loopback".into();
    }
    for attr in &l.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                link.mac = Some(
                    mac.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                )
            }
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::Link(i) => link.link = Some(*i),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
            LinkAttribute::OperState(s) => link.oper_state = oper_state_name(s),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = kind_name(kind),
                        // A vxlan's underlay device is in its info data, not IFLA_LINK.
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            for a in v {
                                if let InfoVxlan::Link(i) = a {
                                    link.link.get_or_insert(*i);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// The lower-case kind name `ip -d link` prints for a link kind.
pub(crate) fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Other(s) => s.clone(),
        k => format!("{k:?}").to_lowercase(),
    }
}

fn oper_state_name(s: &State) -> String {
    match s {
        State::Up => "up",
        State::Down => "down",
        State::LowerLayerDown => "lowerlayerdown",
        State::Dormant => "dormant",
        State::NotPresent => "notpresent",
        State::Testing => "testing",
        _ => "unknown",
    }
    .into()
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_from_message(r: &RouteMessage) -> Route {
    let mut route = Route {
        destination: None,
        prefix_len: r.header.destination_prefix_length,
        gateway: None,
        oif: None,
        prefsrc: None,
        table: r.header.table as u32,
        kind: match r.header.kind {
            RouteType::Unicast => "unicast".into(),
            RouteType::Local => "local".into(),
            RouteType::Broadcast => "broadcast".into(),
            RouteType::BlackHole => "blackhole".into(),
            RouteType::Unreachable => "unreachable".into(),
            RouteType::Prohibit => "prohibit".into(),
            RouteType::Multicast => "multicast".into(),
            other => format!("{other:?}").to_lowercase(),
        },
        metric: None,
    };
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(a) => route.destination = route_addr(a),
            RouteAttribute::Gateway(a) => route.gateway = route_addr(a),
            RouteAttribute::PrefSource(a) => route.prefsrc = route_addr(a),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            _ => {}
        }
    }
    route
}

/// Everything `ip link`, `ip addr` and `ip route` would show for one namespace.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LinkSnapshot {
    /// Links sorted by ifindex.
    pub links: Vec<Link>,
    /// Addresses of all links.
    pub addresses: Vec<Address>,
    /// Main-table routes, both families.
    pub routes: Vec<Route>,
}

/// Read links, addresses and main-table routes of the calling thread's namespace.
pub(crate) fn snapshot() -> Result<LinkSnapshot, NetlinkError> {
    let mut rt = Rtnl::open()?;
    Ok(LinkSnapshot {
        links: rt.links()?,
        addresses: rt.addresses()?,
        routes: rt.routes(false)?,
    })
}

#[cfg(test)]
mod route_dump_tests {
    use super::*;

    /// One request reads the routes of both families (read-only, in the test's own namespace).
    #[test]
    fn routes_of_both_families_take_one_dump() {
        let mut rt = Rtnl::open().expect("a NETLINK_ROUTE socket");
        let before = rt.0.requests();
        let routes = rt.routes(true).expect("route dump");
        assert_eq!(rt.0.requests() - before, 1, "one dump for both families");
        // The local table always holds 127.0.0.1, and ::1 when IPv6 is on for lo.
        assert!(routes
            .iter()
            .any(|r| r.destination == Some("127.0.0.1".parse().unwrap())));
        let v6_on = std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
            .is_ok_and(|v| v.trim() == "0");
        if v6_on {
            assert!(routes
                .iter()
                .any(|r| r.destination == Some("::1".parse().unwrap())));
            let first_v6 = routes
                .iter()
                .position(|r| r.destination.is_some_and(|d| d.is_ipv6()));
            let last_v4 = routes
                .iter()
                .rposition(|r| r.destination.is_some_and(|d| d.is_ipv4()));
            assert!(last_v4 < first_v6, "IPv4 routes come first");
        }
    }
}
