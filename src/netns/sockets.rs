//! TCP/UDP sockets of one namespace through sock_diag, with the process that owns each.
//!
//! Like [`super::links`], these read the namespace of the calling thread.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use serde::{Deserialize, Serialize};

use super::rtnl::{Netlink, NetlinkError};

/// Transport protocol of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A process holding a socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Command name (/proc/PID/comm).
    pub comm: String,
}

/// One socket as `ss -tunap` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Socket {
    /// tcp or udp.
    pub proto: Proto,
    /// TCP state name (LISTEN, ESTAB, ...); UNCONN/ESTAB for UDP.
    pub state: String,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (unspecified for listeners).
    pub remote: SocketAddr,
    /// Socket inode, the key for finding the owner.
    pub inode: u32,
    /// Bound to a device (SO_BINDTODEVICE), as ifindex.
    pub ifindex: u32,
    /// Processes holding the socket open.
    pub owners: Vec<Owner>,
    /// An IPv6 socket with IPV6_V6ONLY set: a `[::]` listener that takes no IPv4.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub v6only: bool,
}

impl Socket {
    /// True for a TCP listener or an unconnected UDP socket.
    pub fn is_listening(&self) -> bool {
        match self.proto {
            Proto::Tcp => self.state == "LISTEN",
            Proto::Udp => self.remote.port() == 0,
        }
    }

    /// True when a packet to `dst` (on this socket's port) is delivered here by its address:
    /// its own address, 0.0.0.0 for IPv4, `[::]` for IPv6 and, unless IPV6_V6ONLY is set,
    /// for IPv4 too.
    pub fn takes(&self, dst: IpAddr) -> bool {
        let ip = self.local.ip();
        ip == dst
            || ip.is_unspecified()
                && (dst.is_ipv4() == ip.is_ipv4() || ip.is_ipv6() && !self.v6only)
    }
}

fn tcp_state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTAB",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "UNCONN",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW-SYN-RECV",
        _ => "UNKNOWN",
    }
}

/// Which sockets to list.
#[derive(Debug, Clone, Copy)]
pub enum Which {
    /// Listening TCP and unconnected UDP only.
    Listening,
    /// Everything.
    All,
}

/// The sockets of the calling thread's namespace, with owners resolved through /proc.
pub fn list(which: Which) -> Result<Vec<Socket>, NetlinkError> {
    let mut out = list_unowned(which)?;
    let owners = socket_owners();
    for s in &mut out {
        if let Some(o) = owners.get(&s.inode) {
            s.owners = o.clone();
        }
    }
    Ok(out)
}

/// Like [`list`] but without the /proc scan for owners: for reading many namespaces, then
/// filling owners from one [`socket_owners`] map (socket inodes are machine-wide).
pub fn list_unowned(which: Which) -> Result<Vec<Socket>, NetlinkError> {
    let mut nl = Netlink::open(NETLINK_SOCK_DIAG)?;
    let mut out = Vec::new();
    for (proto, ipproto) in [(Proto::Tcp, IPPROTO_TCP), (Proto::Udp, IPPROTO_UDP)] {
        for family in [AF_INET, AF_INET6] {
            let states = match (which, proto) {
                (Which::Listening, Proto::Tcp) => StateFlags::LISTEN,
                _ => StateFlags::all(),
            };
            let req = InetRequest {
                family,
                protocol: ipproto,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id: if family == AF_INET {
                    SocketId::new_v4()
                } else {
                    SocketId::new_v6()
                },
            };
            let replies = nl.dump(SockDiagMessage::InetRequest(req), "sock_diag dump")?;
            for r in replies {
                if let SockDiagMessage::InetResponse(resp) = r {
                    let h = &resp.header;
                    let id = &h.socket_id;
                    let state = match proto {
                        Proto::Tcp => tcp_state_name(h.state).to_string(),
                        Proto::Udp => if id.destination_port == 0 {
                            "UNCONN"
                        } else {
                            "ESTAB"
                        }
                        .to_string(),
                    };
                    let sock = Socket {
                        proto,
                        state,
                        local: SocketAddr::new(id.source_address, id.source_port),
                        remote: SocketAddr::new(id.destination_address, id.destination_port),
                        inode: h.inode,
                        ifindex: id.interface_id,
                        owners: Vec::new(),
                        v6only: resp.nlas.iter().any(|n| {
                            matches!(n, netlink_packet_sock_diag::inet::nlas::Nla::SkV6Only(true))
                        }),
                    };
                    if matches!(which, Which::All) || sock.is_listening() {
                        out.push(sock);
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| {
        (a.proto, a.local.port(), a.local.ip()).cmp(&(b.proto, b.local.port(), b.local.ip()))
    });
    Ok(out)
}

/// Map socket inode -> processes holding it, by scanning /proc/*/fd.
///
/// Socket inodes are unique machine-wide (sockfs), so one scan serves every namespace.
pub fn socket_owners() -> HashMap<u32, Vec<Owner>> {
    let mut map: HashMap<u32, Vec<Owner>> = HashMap::new();
    super::count_proc_scan();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| read_comm(pid)).clone();
            let owners = map.entry(inode).or_default();
            if !owners.iter().any(|o| o.pid == pid) {
                owners.push(Owner { pid, comm });
            }
        }
    }
    map
}

/// The command line of `pid` (empty when it is gone).
pub(crate) fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// /proc/PID/comm without the newline ("?" when the process is gone).
pub fn read_comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// True when `ip` is the unspecified address of its family (0.0.0.0 or ::).
pub fn is_wildcard(ip: &IpAddr) -> bool {
    ip.is_unspecified()
}
