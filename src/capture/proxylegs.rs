//! --follow across a userland proxy (docker-proxy, `nettool proxy`, socat): conntrack sees the
//! client's connection to the proxy and the proxy's connection to the backend as two flows. The
//! proxy's own sockets say which two belong together: sock_diag in the proxy's namespace gives
//! every TCP socket with its inode, /proc/PID/fd says which of them the proxy holds and in what
//! order it opened them. An accepted socket on a listen port and the next socket it opened to
//! that port's target are one conversation (proxies accept, then connect: the backend socket's
//! fd follows the client's). A UDP proxy's client side has no socket per client (one socket
//! takes every client's datagrams): its legs are paired by time only (the client's first
//! datagram, then the proxy's first one to the target).

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::facts::proxies::{recognise, ProxyProcess};
use crate::netns::sockets::cmdline;
use crate::netns::sockets::{list_unowned, Proto, Which};
use crate::netns::NetNs;

use super::follow::Tuple;

/// The two legs of one proxied TCP conversation, as the proxy's sockets see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ProxyJoin {
    /// Who joins them: `docker-proxy pid 4242`.
    pub proxy: String,
    /// Client to the proxy's listen address.
    pub client: Tuple,
    /// The proxy to the backend.
    pub backend: Tuple,
}

/// The TCP and UDP proxies running in one captured namespace.
#[derive(Debug)]
pub(crate) struct ProxyWatch {
    ns: NetNs,
    proxies: Vec<ProxyProcess>,
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn tcp(src: SocketAddr, dst: SocketAddr) -> Tuple {
    let (src, dst) = (canonical(src), canonical(dst));
    Tuple {
        proto: 6,
        src: src.ip(),
        sport: src.port(),
        dst: dst.ip(),
        dport: dst.port(),
    }
}

/// The proxy map protocol of a conntrack tuple (TCP and UDP are proxied).
fn proto_of(t: &Tuple) -> Option<Proto> {
    match t.proto {
        6 => Some(Proto::Tcp),
        17 => Some(Proto::Udp),
        _ => None,
    }
}

/// Socket inode -> fd number, for the fds of `pid`.
fn fd_inodes(pid: u32) -> HashMap<u32, u32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse::<u32>().ok())
        {
            out.insert(inode, fd);
        }
    }
    out
}

/// One socket of a proxy: its fd and addresses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxySocket {
    /// The fd number in the proxy.
    pub fd: u32,
    /// Local address.
    pub local: SocketAddr,
    /// Peer address.
    pub remote: SocketAddr,
}

/// Pair accepted sockets (local port in a listen range) with the backend sockets (remote is that
/// port's target) the proxy opened after them: each backend socket goes with the unpaired
/// client socket of the nearest lower fd.
pub(crate) fn pair(p: &ProxyProcess, sockets: &[ProxySocket]) -> Vec<ProxyJoin> {
    let mut clients: Vec<(ProxySocket, SocketAddr)> = sockets
        .iter()
        .filter_map(|s| {
            let m = p.map_for(Proto::Tcp, s.local)?;
            Some((*s, m.target_for(s.local.port())?))
        })
        .collect();
    clients.sort_by_key(|(s, _)| std::cmp::Reverse(s.fd));
    let mut backends: Vec<&ProxySocket> = sockets
        .iter()
        .filter(|s| clients.iter().all(|(c, _)| c.fd != s.fd))
        .collect();
    backends.sort_by_key(|s| s.fd);
    let mut out = Vec::new();
    for b in backends {
        let remote = canonical(b.remote);
        let Some(i) = clients
            .iter()
            .position(|(c, target)| c.fd < b.fd && canonical(*target) == remote)
        else {
            continue;
        };
        let (c, _) = clients.remove(i);
        out.push(ProxyJoin {
            proxy: format!("{} pid {}", p.kind, p.pid),
            client: tcp(c.remote, c.local),
            backend: tcp(b.local, b.remote),
        });
    }
    out
}

/// The TCP and UDP proxies running in any of `nss`, one watch per namespace that has some. One pass
/// over /proc (comm and cmdline of each process: a few ms), so it can be repeated to see
/// proxies started after the capture (`docker run -p` starts one).
pub(crate) fn find(nss: &[NetNs]) -> Vec<ProxyWatch> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<ProxyWatch> = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let argv = cmdline(pid);
        if argv.is_empty() {
            continue; // a kernel thread, or gone
        }
        let comm = crate::netns::sockets::read_comm(pid);
        let Some(p) = recognise(pid, &comm, &argv) else {
            continue;
        };
        let Ok(md) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let Some(ns) = nss
            .iter()
            .find(|n| n.id().dev == md.dev() && n.id().inode == md.ino())
        else {
            continue;
        };
        match out.iter_mut().find(|w| w.ns.id() == ns.id()) {
            Some(w) => w.proxies.push(p),
            None => out.push(ProxyWatch {
                ns: ns.clone(),
                proxies: vec![p],
            }),
        }
    }
    out
}

impl ProxyWatch {
    /// The namespace the proxies run in.
    pub(crate) fn ns_id(&self) -> crate::netns::NsId {
        self.ns.id()
    }

    /// Where a proxy sends a client that connected with tuple `t` (to a listen address of
    /// one of them), and which proxy: None when `t` goes to no proxy's listen port.
    pub(crate) fn target_of(&self, t: &Tuple) -> Option<(SocketAddr, String)> {
        let proto = proto_of(t)?;
        // The proxy listening on the client's address family first (docker-proxy runs one
        // for 0.0.0.0 and one for ::).
        let mut ps: Vec<&ProxyProcess> = self.proxies.iter().collect();
        ps.sort_by_key(|p| {
            !p.maps.iter().any(|m| {
                m.listen_ip
                    .is_some_and(|ip| ip.is_ipv4() == t.dst.is_ipv4())
            })
        });
        ps.iter().find_map(|p| {
            p.maps
                .iter()
                .filter(|m| m.proto == proto)
                .filter(|m| {
                    m.listen_ip
                        .is_none_or(|ip| ip.is_unspecified() || ip.to_canonical() == t.dst)
                })
                .find_map(|m| m.target_for(t.dport))
                .map(|a| (canonical(a), format!("{} pid {}", p.kind, p.pid)))
        })
    }

    /// A new flow with this original tuple is one of the proxies connecting to its target.
    pub(crate) fn wants(&self, t: &Tuple) -> bool {
        let Some(proto) = proto_of(t) else {
            return false;
        };
        self.proxies.iter().any(|p| {
            p.maps.iter().any(|m| {
                m.proto == proto
                    && m.target_ip().map(|ip| ip.to_canonical()) == Some(t.dst)
                    && t.dport >= m.target_from
                    && t.dport - m.target_from <= m.listen_to - m.listen_from
            })
        })
    }

    /// Every client/backend pair the proxies hold now.
    pub(crate) fn joins(&self) -> Vec<ProxyJoin> {
        let Ok(Ok(sockets)) = self.ns.run(|| list_unowned(Which::All)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in &self.proxies {
            let fds = fd_inodes(p.pid);
            let mine: Vec<ProxySocket> = sockets
                .iter()
                .filter(|s| s.proto == Proto::Tcp && !s.is_listening())
                .filter_map(|s| {
                    Some(ProxySocket {
                        fd: *fds.get(&s.inode)?,
                        local: s.local,
                        remote: s.remote,
                    })
                })
                .collect();
            out.extend(pair(p, &mine));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::proxies::ProxyMap;

    #[test]
    fn an_accepted_socket_goes_with_the_backend_socket_opened_after_it() {
        let p = ProxyProcess {
            pid: 42,
            comm: "docker-proxy".into(),
            kind: crate::facts::proxies::ProxyKind::DockerProxy,
            argv: Vec::new(),
            maps: vec![ProxyMap {
                proto: Proto::Tcp,
                listen_ip: Some("0.0.0.0".parse().unwrap()),
                listen_from: 8080,
                listen_to: 8080,
                target: crate::facts::proxies::ProxyTarget::Address {
                    target_ip: "172.17.0.2".parse().unwrap(),
                },
                target_from: 80,
            }],
            rootless: None,
        };
        let s = |fd, l: &str, r: &str| ProxySocket {
            fd,
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
        };
        // Two clients at once; the second's backend socket got a lower fd than the first's
        // would have, so pairing is by nearest lower fd, not by order of arrival alone.
        let socks = [
            s(7, "[::ffff:172.17.0.1]:8080", "[::ffff:10.0.0.9]:5001"),
            s(8, "172.17.0.1:40001", "172.17.0.2:80"),
            s(9, "172.17.0.1:8080", "10.0.0.9:5002"),
            s(10, "172.17.0.1:40002", "172.17.0.2:80"),
            s(11, "172.17.0.1:40003", "172.17.0.9:5432"),
        ];
        let j = pair(&p, &socks);
        assert_eq!(j.len(), 2, "{j:?}");
        assert_eq!(
            j[0].client.to_string(),
            "tcp 10.0.0.9:5001 > 172.17.0.1:8080"
        );
        assert_eq!(
            j[0].backend.to_string(),
            "tcp 172.17.0.1:40001 > 172.17.0.2:80"
        );
        assert_eq!(j[1].client.sport, 5002);
        assert_eq!(j[1].backend.sport, 40002);
        assert_eq!(j[0].proxy, "docker-proxy pid 42");
        let w = ProxyWatch {
            ns: NetNs::current().unwrap(),
            proxies: vec![p],
        };
        assert!(w.wants(&j[0].backend));
        assert!(!w.wants(&j[0].client));
    }
}
