//! Change links, addresses and routes through rtnetlink (what `ip link add`, `ip addr add`,
//! `ip route add` do), without spawning `ip`.
//!
//! Like [`super::links`], everything here acts on the namespace of the calling thread: use it
//! inside [`super::NetNs::run`]. A veth peer can be created directly in another namespace by
//! handing its fd to [`Configure::add_veth`] (IFLA_NET_NS_FD), which saves a move and a thread.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::rtnl::{Netlink, NetlinkError};
use super::NetNs;

/// An rtnetlink connection that changes the calling thread's namespace.
pub(crate) struct Configure(Netlink);

/// ENODEV / ENOENT / ESRCH / EADDRNOTAVAIL: the object to delete is already gone.
fn is_gone(e: &NetlinkError) -> bool {
    matches!(
        e.errno(),
        Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
    )
}

impl Configure {
    /// Open a NETLINK_ROUTE socket in the current thread's namespace.
    pub(crate) fn open() -> Result<Self, NetlinkError> {
        Ok(Configure(Netlink::open(NETLINK_ROUTE)?))
    }

    /// The ifindex of `name`, or `None` when no such link exists here.
    pub(crate) fn index_of(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut req = LinkMessage::default();
        req.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.0.get(
            RouteNetlinkMessage::GetLink(req),
            &format!("look up link {name}"),
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn index_required(&mut self, name: &str) -> Result<u32, NetlinkError> {
        self.index_of(name)?.ok_or_else(|| NetlinkError::Kernel {
            what: format!("link {name} was created but cannot be found"),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })
    }

    /// `ip link add NAME [index I] type bridge [mtu M] up`; returns the new ifindex (`index`
    /// when given: EEXIST if the name or that index is taken).
    pub(crate) fn add_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        index: Option<u32>,
    ) -> Result<u32, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index.unwrap_or(0);
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.0.change(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create bridge {name}"),
        )?;
        self.index_required(name)
    }

    /// `ip link add HOST [index I] [master M] [mtu N] up type veth peer name PEER netns NS`.
    ///
    /// The peer is born inside `peer_ns` (never visible here) and left down; bring it up
    /// from inside that namespace. Returns the host side's ifindex (`index` when given).
    pub(crate) fn add_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_ns: &NetNs,
        master: Option<u32>,
        mtu: Option<u32>,
        index: Option<u32>,
    ) -> Result<u32, NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.file().as_raw_fd()));
        if let Some(m) = mtu {
            peer.attributes.push(LinkAttribute::Mtu(m));
        }
        let mut msg = LinkMessage::default();
        msg.header.index = index.unwrap_or(0);
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(host_name.to_string()));
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(master) = master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.0.change(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!(
                "create veth {host_name} (peer {peer_name} in {})",
                peer_ns.label()
            ),
        )?;
        self.index_required(host_name)
    }

    fn set_link(&mut self, msg: LinkMessage, what: &str) -> Result<(), NetlinkError> {
        self.0.change(RouteNetlinkMessage::SetLink(msg), 0, what)
    }

    /// `ip link set INDEX up` (or down).
    pub(crate) fn set_up(&mut self, index: u32, up: bool) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(msg, &format!("set link {index} up={up}"))
    }

    /// `ip link set INDEX type bridge_slave hairpin on|off` (a bridge port that may send a
    /// frame back out the port it came in on: a container reaching itself via a published port).
    pub(crate) fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.0.change(
            RouteNetlinkMessage::NewLink(msg),
            0,
            &format!("set hairpin {on} on link {index}"),
        )
    }

    /// `ip addr add ADDR/PREFIX dev INDEX` (IPv6 without duplicate address detection, so the
    /// address is usable at once, as Docker does).
    pub(crate) fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        match addr {
            IpAddr::V4(v4) => {
                msg.header.family = AddressFamily::Inet;
                msg.attributes.push(AddressAttribute::Local(addr));
                msg.attributes.push(AddressAttribute::Address(addr));
                if prefix_len < 31 {
                    let host_bits = 32 - u32::from(prefix_len);
                    let brd = u32::from(v4) | ((1u64 << host_bits) - 1) as u32;
                    msg.attributes.push(AddressAttribute::Broadcast(brd.into()));
                }
            }
            IpAddr::V6(_) => {
                msg.header.family = AddressFamily::Inet6;
                msg.attributes.push(AddressAttribute::Address(addr));
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        self.0.change(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {addr}/{prefix_len} to link {index}"),
        )
    }

    /// `ip route add DEST via GATEWAY dev OIF` in the main table; `dest = None` is the default route.
    pub(crate) fn add_route(
        &mut self,
        dest: Option<(IpAddr, u8)>,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let v6 = match (dest, gateway) {
            (Some((d, _)), _) => d.is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            (None, None) => false,
        };
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if let Some((d, len)) = dest {
            msg.header.destination_prefix_length = len;
            msg.attributes
                .push(RouteAttribute::Destination(route_address(d)));
        }
        if let Some(g) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(g)));
        }
        if let Some(i) = oif {
            msg.attributes.push(RouteAttribute::Oif(i));
        }
        let what = format!(
            "add route {} via {}",
            dest.map(|(d, l)| format!("{d}/{l}"))
                .unwrap_or_else(|| "default".into()),
            gateway.map(|g| g.to_string()).unwrap_or_else(|| "-".into())
        );
        self.0.change(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &what,
        )
    }

    /// `ip [-6] route add local default dev INDEX table TABLE` (add) or `... del ...`: every
    /// destination is delivered locally for lookups that reach `table` (the transparent proxy's
    /// reply path). Deleting returns Ok(false) when it was already gone.
    pub(crate) fn local_default_route(
        &mut self,
        v6: bool,
        table: u32,
        oif: u32,
        add: bool,
    ) -> Result<bool, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Local;
        msg.header.scope = RouteScope::Host;
        msg.attributes.push(RouteAttribute::Table(table));
        msg.attributes.push(RouteAttribute::Oif(oif));
        let what = format!("local default route ({}) in table {table}", ip_name(v6));
        if add {
            self.0
                .change(
                    RouteNetlinkMessage::NewRoute(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                    &what,
                )
                .map(|()| true)
        } else {
            match self.0.change(RouteNetlinkMessage::DelRoute(msg), 0, &what) {
                Ok(()) => Ok(true),
                Err(e) if is_gone(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }

    /// `ip [-6] rule add fwmark MARK/MASK lookup TABLE pref PREF` (add) or `... del ...`;
    /// deleting returns Ok(false) when no such rule exists.
    pub(crate) fn fwmark_rule(
        &mut self,
        v6: bool,
        (mark, mask): (u32, u32),
        table: u32,
        pref: u32,
        add: bool,
    ) -> Result<bool, NetlinkError> {
        let mut msg = RuleMessage::default();
        msg.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.action = RuleAction::ToTable;
        msg.attributes.push(RuleAttribute::FwMark(mark));
        msg.attributes.push(RuleAttribute::FwMask(mask));
        msg.attributes.push(RuleAttribute::Table(table));
        msg.attributes.push(RuleAttribute::Priority(pref));
        let what = format!(
            "rule ({}) fwmark {mark:#x}/{mask:#x} lookup {table} pref {pref}",
            ip_name(v6)
        );
        if add {
            self.0
                .change(
                    RouteNetlinkMessage::NewRule(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                    &what,
                )
                .map(|()| true)
        } else {
            match self.0.change(RouteNetlinkMessage::DelRule(msg), 0, &what) {
                Ok(()) => Ok(true),
                Err(e) if is_gone(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }

    /// `ip link del INDEX`; Ok(false) when it was already gone.
    pub(crate) fn delete_link(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.0.change(
            RouteNetlinkMessage::DelLink(msg),
            0,
            &format!("delete link {index}"),
        ) {
            Ok(()) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn route_address(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

/// "IPv4" or "IPv6", for messages.
fn ip_name(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}
