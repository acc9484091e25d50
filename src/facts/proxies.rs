//! Userland proxies holding a listening socket: docker-proxy and `nettool proxy` recognised
//! with the proxy's own argument parsers (`cmd::proxy::recognise`), and the classic socat
//! port forward; rootless Podman's rootlessport and rootless Docker's rootlesskit, with the
//! namespace each relays into.
//! What each forwards is recorded, so doctor follows a proxied port onward.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::netns::sockets::Proto;
use crate::tap::event::Transport;

/// One process that forwards ports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProxyProcess {
    /// Process id.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// docker-proxy, nettool or socat.
    pub kind: ProxyKind,
    /// Its command line.
    pub argv: Vec<String>,
    /// What it forwards.
    pub maps: Vec<ProxyMap>,
    /// rootlessport: the container namespace it relays into and whose it is (its mapping
    /// reaches it on a pipe, so `maps` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootless: Option<RootlessPort>,
}

/// What a rootlessport process says of itself in /proc: the container's namespace file it
/// holds open, its user and that user's runtime directory (where the user's API socket is).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RootlessPort {
    /// The namespace file it holds (`$XDG_RUNTIME_DIR/netns/netns-UUID`).
    pub netns_path: String,
    /// That namespace's inode, as a file descriptor of rootlessport opens it (the path is a
    /// bind mount in the user's mount namespace: from root's, it opens nothing).
    pub netns_inode: u64,
    /// The user it runs as.
    pub uid: u32,
    /// XDG_RUNTIME_DIR from its environment.
    pub runtime_dir: Option<String>,
}

/// Which proxy a process is: what it does with a target name differs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum ProxyKind {
    /// `nettool proxy`: resolves a name at its start and again while it runs, dialling the
    /// last addresses it had while the name fails.
    #[serde(rename = "nettool")]
    Nettool,
    /// docker-proxy (or nettool in its mode): addresses only, never a name.
    #[serde(rename = "docker-proxy")]
    DockerProxy,
    /// socat: looks the name up for each connection it takes.
    #[serde(rename = "socat")]
    Socat,
    /// rootlessport (rootless Podman): listens where `podman run` ran, relays each
    /// connection to its child in the container's namespace, which dials the container.
    #[serde(rename = "rootlessport")]
    Rootlessport,
    /// rootlesskit with its builtin port driver (rootless Docker): listens on the host,
    /// relays each connection to its child namespace, where dockerd's DNAT and docker-proxy
    /// take it as on a rootful Docker host (dialled at 127.0.0.1:PORT there).
    #[serde(rename = "rootlesskit")]
    Rootlesskit,
}

impl std::fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyKind::Nettool => "nettool",
            ProxyKind::DockerProxy => "docker-proxy",
            ProxyKind::Socat => "socat",
            ProxyKind::Rootlessport => "rootlessport",
            ProxyKind::Rootlesskit => "rootlesskit",
        })
    }
}

/// One forwarded port range.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProxyMap {
    /// tcp or udp.
    pub proto: Proto,
    /// The listen address (None: every address).
    pub listen_ip: Option<IpAddr>,
    /// First listen port.
    pub listen_from: u16,
    /// Last listen port.
    pub listen_to: u16,
    /// Where it connects.
    #[serde(flatten)]
    pub target: ProxyTarget,
    /// First target port (ranges map one to one).
    pub target_from: u16,
}

/// Where a proxy connects: an address, or a name that does not resolve as the proxy looks it
/// up now (its /etc/hosts and /etc/resolv.conf, from its network namespace; a nettool proxy
/// keeps dialling its last addresses meanwhile). Flattened, untagged: a snapshot
/// saved before names has `target_ip`, which still reads as an address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub(crate) enum ProxyTarget {
    /// An address (a name's first address when it resolves here).
    Address {
        /// The address.
        target_ip: IpAddr,
    },
    /// A name that does not resolve where the proxy runs.
    Unresolved {
        /// The name as written.
        target_name: String,
        /// The resolver's reason.
        unresolved: String,
        /// Which resolver files and namespace it was looked up with (empty in a snapshot
        /// saved before the proxy's own view was used).
        #[serde(default)]
        looked_up: String,
    },
}

impl ProxyProcess {
    /// The map serving its listener on `proto`/`local`: the one on that very address before a
    /// wildcard one (two maps may share a port on two addresses; docker-proxy runs one process
    /// for 0.0.0.0 and one for ::), None when no map listens there.
    pub(crate) fn map_for(&self, proto: Proto, local: SocketAddr) -> Option<&ProxyMap> {
        self.maps
            .iter()
            .filter(|m| m.proto == proto && (m.listen_from..=m.listen_to).contains(&local.port()))
            .filter_map(|m| Some((m.listen_rank(local.ip())?, m)))
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, m)| m)
    }
}

impl ProxyMap {
    /// How this map's listen address covers a socket bound to `local`: 0 that address itself,
    /// 1 the wildcard of its family or every address; None another address or family. `[::]`
    /// covers an IPv4-mapped address (a connection a dual-stack socket accepted).
    fn listen_rank(&self, local: IpAddr) -> Option<u8> {
        let v4 = local.to_canonical().is_ipv4();
        match self.listen_ip {
            Some(ip) if ip.to_canonical() == local.to_canonical() => Some(0),
            Some(ip)
                if ip.is_unspecified()
                    && (ip.is_ipv4() == v4 || ip.is_ipv6() && local.is_ipv6()) =>
            {
                Some(1)
            }
            Some(_) => None,
            None => Some(1),
        }
    }

    /// The target for listen port `port` (None when out of range or past 65535).
    /// None too for a target name that does not resolve here ([`ProxyMap::target_port_for`]).
    pub(crate) fn target_for(&self, port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.target_ip()?,
            self.target_port_for(port)?,
        ))
    }

    /// The target port for listen port `port` (None when out of range or past 65535).
    pub(crate) fn target_port_for(&self, port: u16) -> Option<u16> {
        let off = port.checked_sub(self.listen_from)?;
        if port > self.listen_to {
            return None;
        }
        self.target_from.checked_add(off)
    }

    /// The target address (None: a name that does not resolve here).
    pub(crate) fn target_ip(&self) -> Option<IpAddr> {
        match &self.target {
            ProxyTarget::Address { target_ip } => Some(*target_ip),
            ProxyTarget::Unresolved { .. } => None,
        }
    }
}

/// Recognise a proxy from its command line (None when it is not one).
pub(crate) fn recognise(pid: u32, comm: &str, argv: &[String]) -> Option<ProxyProcess> {
    if comm == "rootlessport" && argv.first().map(String::as_str) == Some("rootlessport") {
        return Some(ProxyProcess {
            pid,
            comm: comm.to_string(),
            kind: ProxyKind::Rootlessport,
            argv: argv.to_vec(),
            maps: Vec::new(),
            rootless: rootlessport(pid),
        });
    }
    if comm == "rootlesskit" && builtin_port_driver(argv) {
        return Some(ProxyProcess {
            pid,
            comm: comm.to_string(),
            kind: ProxyKind::Rootlesskit,
            argv: argv.to_vec(),
            maps: Vec::new(),
            rootless: rootlesskit(pid),
        });
    }
    let (kind, maps) = if let Some(maps) = crate::cmd::proxy::recognise(argv, pid) {
        let kind = if crate::proxy::docker::is_docker_invocation(argv) {
            ProxyKind::DockerProxy
        } else {
            ProxyKind::Nettool
        };
        (kind, proxy_maps(&maps))
    } else {
        (ProxyKind::Socat, socat(argv, pid)?)
    };
    Some(ProxyProcess {
        pid,
        comm: comm.to_string(),
        kind,
        argv: argv.to_vec(),
        maps,
        rootless: None,
    })
}

/// The container namespaces (inodes) rootlessport processes relay into: no veth joins them
/// to the host they publish on.
pub(crate) fn relayed_namespaces(proxies: &[ProxyProcess]) -> Vec<u64> {
    proxies
        .iter()
        .filter_map(|p| Some(p.rootless.as_ref()?.netns_inode))
        .collect()
}

/// The API sockets of the rootless dockerds this host's rootlesskit processes run
/// (`XDG_RUNTIME_DIR/docker.sock`): their containers publish here, through rootlesskit, and
/// nowhere else, running or not.
pub(crate) fn hosted_engines(proxies: &[ProxyProcess]) -> Vec<String> {
    proxies
        .iter()
        .filter(|p| p.kind == ProxyKind::Rootlesskit)
        .filter_map(|p| p.rootless.as_ref()?.runtime_dir.as_deref())
        .map(|d| format!("{d}/{}", crate::engine::docker::ROOTLESS_SOCKET))
        .collect()
}

/// rootlesskit's `--port-driver=builtin` (or `--port-driver builtin`): the driver whose parent
/// process holds the published port on the host (slirp4netns's driver and none hold nothing).
fn builtin_port_driver(argv: &[String]) -> bool {
    argv.iter()
        .zip(argv.iter().skip(1).map(Some).chain([None]))
        .any(|(a, next)| {
            a == "--port-driver=builtin"
                || (a == "--port-driver" && next.is_some_and(|n| n == "builtin"))
        })
}

/// rootlesskit `pid`'s child namespace (its child process's network namespace, the one that
/// differs from its own: where dockerd runs), its user and XDG_RUNTIME_DIR.
fn rootlesskit(pid: u32) -> Option<RootlessPort> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
    // Each thread lists the children it forked (Go forks from any thread): all of them.
    let children: String = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .collect::<Vec<_>>()
        .join(" ");
    let (netns_path, netns_inode) = children.split_whitespace().find_map(|c| {
        let path = format!("/proc/{c}/ns/net");
        let inode = std::fs::metadata(&path).ok()?.ino();
        (inode != own).then_some((path, inode))
    })?;
    Some(RootlessPort {
        netns_path,
        netns_inode,
        uid: std::fs::metadata(format!("/proc/{pid}")).ok()?.uid(),
        runtime_dir: runtime_dir_of(pid),
    })
}

/// XDG_RUNTIME_DIR from process `pid`'s environment (where its user's API sockets are).
fn runtime_dir_of(pid: u32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .ok()
        .and_then(|env| {
            env.split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"XDG_RUNTIME_DIR="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .filter(|d| !d.is_empty())
}

/// rootlessport `pid`'s container namespace (the fd it holds on a `.../netns/...` file that
/// opens a network namespace), its user, and XDG_RUNTIME_DIR from its environment.
fn rootlessport(pid: u32) -> Option<RootlessPort> {
    use std::os::unix::fs::MetadataExt;
    let (netns_path, netns_inode) = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            if !target.contains("/netns/") {
                return None;
            }
            // Through the fd: the namespace itself, whichever mount namespace the path is in.
            let ns = crate::netns::NetNs::from_path(fd.path()).ok()?;
            Some((target.to_string(), ns.id().inode))
        })?;
    let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    let runtime_dir = runtime_dir_of(pid);
    Some(RootlessPort {
        netns_path,
        netns_inode,
        uid,
        runtime_dir,
    })
}

/// The recognised mappings as recorded facts.
fn proxy_maps(maps: &[crate::cmd::proxy::Recognised]) -> Vec<ProxyMap> {
    maps.iter()
        .map(|r| {
            let m = &r.mapping;
            ProxyMap {
                proto: match m.proto {
                    Transport::Tcp => Proto::Tcp,
                    Transport::Udp => Proto::Udp,
                },
                listen_ip: m.listen_ip,
                listen_from: m.listen.first,
                listen_to: m.listen.last,
                target: match &r.unresolved {
                    None => ProxyTarget::Address {
                        target_ip: m.target_ip,
                    },
                    Some(u) => ProxyTarget::Unresolved {
                        target_name: u.name.clone(),
                        unresolved: u.why.clone(),
                        looked_up: u.looked_up.clone(),
                    },
                },
                target_from: m.target.first,
            }
        })
        .collect()
}

/// A socat port forward (`socat [FLAGS] TCP-LISTEN:8080,fork,bind=ADDR TCP:HOST:80`), read
/// with the proxy's own socat parser: its bind= address and family, a target name resolved
/// as a nettool proxy's is (an unresolved one is [`ProxyTarget::Unresolved`]).
fn socat(argv: &[String], pid: u32) -> Option<Vec<ProxyMap>> {
    if argv.first()?.rsplit('/').next() != Some("socat") {
        return None;
    }
    Some(proxy_maps(&crate::cmd::proxy::recognise_socat(argv, pid)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn target(argv: &str, proto: Proto, port: u16) -> Option<SocketAddr> {
        recognise(std::process::id(), "x", &v(argv))?
            .maps
            .iter()
            .find(|m| m.proto == proto && m.listen_from <= port && port <= m.listen_to)?
            .target_for(port)
    }

    #[test]
    fn docker_proxy_flags_through_the_proxys_parser() {
        let a = "/usr/sbin/docker-proxy -proto udp -host-ip 0.0.0.0 -host-port 5353 -container-ip 172.17.0.2 -container-port 53";
        assert_eq!(
            target(a, Proto::Udp, 5353),
            Some("172.17.0.2:53".parse().unwrap())
        );
        assert_eq!(target(a, Proto::Tcp, 5353), None);
        let a = "docker-proxy --container-ip=10.0.0.2 -container-port=81 -host-port 1 -host-ip ::";
        assert_eq!(
            target(a, Proto::Tcp, 1),
            Some("10.0.0.2:81".parse().unwrap())
        );
    }

    #[test]
    fn nettool_proxy_with_any_flag_it_takes() {
        // --pcap-max-mb was not in doctor's private copy of the flags: now the proxy's parser reads it.
        let a = "nettool proxy --pcap /tmp/x.pcap --pcap-max-mb 5 8080 172.19.0.2:80";
        assert_eq!(
            target(a, Proto::Tcp, 8080),
            Some("172.19.0.2:80".parse().unwrap())
        );
        let a = "nettool proxy -p tcp:127.0.0.1:9000-9002=10.0.0.5:7000-7002 -p udp:53=10.0.0.6:53";
        assert_eq!(
            target(a, Proto::Tcp, 9001),
            Some("10.0.0.5:7001".parse().unwrap())
        );
        assert_eq!(
            target(a, Proto::Udp, 53),
            Some("10.0.0.6:53".parse().unwrap())
        );
        assert_eq!(target(a, Proto::Tcp, 80), None);
        // A target range past 65535 is refused by the proxy's parser: no target, no panic.
        assert_eq!(
            target(
                "nettool proxy -p 100-200=10.0.0.5:65500-65535",
                Proto::Tcp,
                150
            ),
            None
        );
    }

    #[test]
    fn the_map_of_a_listener_is_the_one_on_its_address() {
        // Two maps on one port, on two addresses: each listener's own, whichever comes first.
        let p = recognise(
            std::process::id(),
            "nettool",
            &v("nettool proxy -p 10.0.0.1:8080=10.0.0.5:80 -p 10.0.0.2:8080=10.0.0.6:80"),
        )
        .unwrap();
        let to = |local: &str| {
            p.map_for(Proto::Tcp, local.parse().unwrap())
                .and_then(|m| m.target_for(8080))
        };
        assert_eq!(to("10.0.0.2:8080"), Some("10.0.0.6:80".parse().unwrap()));
        assert_eq!(to("10.0.0.1:8080"), Some("10.0.0.5:80".parse().unwrap()));
        assert_eq!(to("10.0.0.3:8080"), None);
        // 0.0.0.0 and [::] in one process (docker-proxy's pair as maps): by family, and a
        // wildcard covers a specific address and a dual-stack socket's IPv4-mapped one.
        let p = recognise(
            std::process::id(),
            "nettool",
            &v("nettool proxy -p 0.0.0.0:8080=10.0.0.5:80 -p [::]:8080=[fd00::6]:80"),
        )
        .unwrap();
        assert_eq!(to("0.0.0.0:8080"), None, "the first proxy has no wildcard");
        let to = |local: &str| {
            p.map_for(Proto::Tcp, local.parse().unwrap())
                .and_then(|m| m.target_for(8080))
        };
        assert_eq!(to("[::]:8080"), Some("[fd00::6]:80".parse().unwrap()));
        assert_eq!(to("0.0.0.0:8080"), Some("10.0.0.5:80".parse().unwrap()));
        assert_eq!(to("192.0.2.1:8080"), Some("10.0.0.5:80".parse().unwrap()));
        assert_eq!(to("[fd00::1]:8080"), Some("[fd00::6]:80".parse().unwrap()));
    }

    #[test]
    fn a_target_is_an_address_or_an_unresolved_name_and_old_snapshots_still_read() {
        // A snapshot saved before names: `target_ip` reads as an address.
        let old = r#"{"proto":"tcp","listen_ip":null,"listen_from":8080,"listen_to":8080,"target_ip":"10.0.0.2","target_from":80}"#;
        let m: ProxyMap = serde_json::from_str(old).unwrap();
        assert_eq!(m.target_for(8080), Some("10.0.0.2:80".parse().unwrap()));
        let m = ProxyMap {
            target: ProxyTarget::Unresolved {
                target_name: "db.internal".into(),
                unresolved: "no such name".into(),
                looked_up: String::new(),
            },
            ..m
        };
        assert_eq!(m.target_for(8080), None);
        assert_eq!(m.target_port_for(8080), Some(80));
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains(r#""target_name":"db.internal""#), "{text}");
        assert_eq!(serde_json::from_str::<ProxyMap>(&text).unwrap(), m);
    }

    /// The first mapping of a socat line: (proto, listen ip, listen port, target).
    fn socat_map(argv: &str) -> Option<(Proto, Option<IpAddr>, u16, Option<SocketAddr>)> {
        let p = recognise(std::process::id(), "socat", &v(argv))?;
        assert_eq!(p.kind, ProxyKind::Socat);
        let m = p.maps.first()?;
        Some((
            m.proto,
            m.listen_ip,
            m.listen_from,
            m.target_for(m.listen_from),
        ))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn to(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn socat_forward() {
        let a = "socat TCP-LISTEN:9999,fork,reuseaddr TCP:10.89.0.2:80";
        assert_eq!(
            target(a, Proto::Tcp, 9999),
            Some("10.89.0.2:80".parse().unwrap())
        );
        // socat's TCP-LISTEN listens on IPv4's wildcard unless told otherwise.
        assert_eq!(
            socat_map(a),
            Some((Proto::Tcp, ip("0.0.0.0"), 9999, to("10.89.0.2:80")))
        );
        assert!(recognise(
            std::process::id(),
            "socat",
            &v("/usr/bin/socat TCP-LISTEN:80,fork EXEC:cat")
        )
        .is_none());
        assert!(recognise(std::process::id(), "socat", &v("socat - TCP:10.0.0.2:80")).is_none());
        assert!(recognise(std::process::id(), "sleep", &v("sleep 100")).is_none());
    }

    /// A socat or nettool proxy with a unix socket end forwards no port to an address: doctor
    /// and topology read no mapping from it, and nothing fails on its command line.
    #[test]
    fn a_unix_socket_end_is_not_a_port_forward() {
        for a in [
            "socat TCP-LISTEN:2375,fork,reuseaddr UNIX-CONNECT:/var/run/docker.sock",
            "socat -v UNIX-LISTEN:/tmp/d.sock,fork UNIX-CONNECT:/var/run/docker.sock",
            "socat UNIX-LISTEN:/tmp/d.sock,fork,mode=0660 TCP:10.0.0.2:2375",
            "socat UNIX-CONNECT:/var/run/docker.sock TCP-LISTEN:2375,fork",
        ] {
            assert!(
                recognise(std::process::id(), "socat", &v(a)).is_none_or(|p| p.maps.is_empty()),
                "{a}"
            );
        }
        for a in [
            "nettool proxy 2375 unix:/var/run/docker.sock",
            "nettool proxy --dump UNIX-LISTEN:/tmp/d.sock,fork UNIX-CONNECT:/run/docker.sock",
            "nettool proxy -p unix:/tmp/d.sock=10.0.0.2:80",
        ] {
            assert!(
                recognise(std::process::id(), "nettool", &v(a)).is_none_or(|p| p.maps.is_empty()),
                "{a}"
            );
        }
        // The TCP mappings beside a unix one are still read.
        let a = "nettool proxy -p 8080=10.0.0.2:80 -p unix:/tmp/d.sock=10.0.0.2:81";
        assert_eq!(target(a, Proto::Tcp, 8080), to("10.0.0.2:80"));
    }

    /// Each form a user types, read with the proxy's socat parser: bind= and the family of the
    /// listen side, flags with values, options the proxy refuses, either order, OPENSSL.
    #[test]
    fn socat_forms_with_bind_family_flags_and_options_the_proxy_refuses() {
        // bind=: a socat on loopback only (before: read as every address).
        assert_eq!(
            socat_map("socat TCP-LISTEN:8080,bind=127.0.0.1,fork TCP:10.0.0.2:80"),
            Some((Proto::Tcp, ip("127.0.0.1"), 8080, to("10.0.0.2:80")))
        );
        // Flags, one with its value apart (-T 10, -lf FILE), and options the proxy does not
        // take (reuseport, a target's connect-timeout=): doctor reads what runs.
        assert_eq!(
            socat_map("/usr/bin/socat -d -d -v -x -T 10 -lf /tmp/s.log -b8192 TCP4-LISTEN:8080,reuseaddr,reuseport,fork,bind=10.0.0.1,backlog=50 TCP:10.0.0.2:80,connect-timeout=5,nodelay"),
            Some((Proto::Tcp, ip("10.0.0.1"), 8080, to("10.0.0.2:80")))
        );
        // IPv6: TCP6-LISTEN, pf=ip6, socat's -6, brackets on the target.
        assert_eq!(
            socat_map("socat TCP6-LISTEN:8080,fork TCP6:[fd00::2]:80"),
            Some((Proto::Tcp, ip("::"), 8080, to("[fd00::2]:80")))
        );
        assert_eq!(
            socat_map("socat TCP-LISTEN:8080,pf=ip6,fork TCP:[::1]:80"),
            Some((Proto::Tcp, ip("::"), 8080, to("[::1]:80")))
        );
        assert_eq!(
            socat_map("socat TCP-LISTEN:8080,bind=[::1],fork TCP:10.0.0.2:80"),
            Some((Proto::Tcp, ip("::1"), 8080, to("10.0.0.2:80")))
        );
        // -6 prefers IPv6 where the address names no family; an IPv4 target is still dialled.
        assert_eq!(
            socat_map("socat -6 TCP-LISTEN:8080,fork TCP:10.0.0.2:80"),
            Some((Proto::Tcp, ip("::"), 8080, to("10.0.0.2:80")))
        );
        // UDP, the short -L form, TCP-CONNECT:.
        assert_eq!(
            socat_map("socat UDP4-LISTEN:5353,fork UDP:10.0.0.3:53"),
            Some((Proto::Udp, ip("0.0.0.0"), 5353, to("10.0.0.3:53")))
        );
        assert_eq!(
            socat_map("socat tcp-l:8080,fork tcp-connect:10.0.0.2:80"),
            Some((Proto::Tcp, ip("0.0.0.0"), 8080, to("10.0.0.2:80")))
        );
        // OPENSSL is TLS over TCP to its address and port.
        assert_eq!(
            socat_map("socat OPENSSL-LISTEN:443,cert=/etc/s.pem,verify=0,fork OPENSSL:10.0.0.4:8443,verify=0"),
            Some((Proto::Tcp, ip("0.0.0.0"), 443, to("10.0.0.4:8443")))
        );
        // The connect address first, the listen address second: the same forward.
        assert_eq!(
            socat_map("socat TCP:10.0.0.2:80 TCP-LISTEN:8080,fork"),
            Some((Proto::Tcp, ip("0.0.0.0"), 8080, to("10.0.0.2:80")))
        );
        // A name in /etc/hosts resolves as a nettool proxy's does.
        let (_, _, _, t) = socat_map("socat TCP-LISTEN:8080,fork TCP:localhost:80").unwrap();
        assert!(
            t.is_some_and(|t| t.ip().is_loopback() && t.port() == 80),
            "{t:?}"
        );
    }

    /// Host names on the target are names (looked up later, an unresolved one kept as such),
    /// with the family socat's TCP4:/TCP6: or pf= asks for; before, only an address was read.
    #[test]
    fn a_socat_target_name_is_a_name_with_its_family() {
        use crate::proxy::spec::{running_socat, Host};
        for (argv, name, v6) in [
            ("socat TCP-LISTEN:8080,fork TCP:db:80", "db", None),
            (
                "socat TCP-LISTEN:5432,fork TCP:db.internal:5432",
                "db.internal",
                None,
            ),
            ("socat TCP-LISTEN:8080,fork TCP4:db:80", "db", Some(false)),
            (
                "socat TCP-LISTEN:8080,fork TCP:db:80,pf=ip6",
                "db",
                Some(true),
            ),
            ("socat -6 TCP-LISTEN:8080,fork TCP:db:80", "db", Some(true)),
        ] {
            let s = running_socat(&v(argv), &crate::proxy::spec::Services::system())
                .unwrap_or_else(|| panic!("{argv}"));
            assert_eq!(s.target_host, Host::Name(name.into()), "{argv}");
            assert_eq!(s.target_v6, v6, "{argv}");
        }
    }

    #[test]
    fn rootlesskit_is_a_relay_only_with_its_builtin_port_driver() {
        let v = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        // dockerd-rootless.sh's command line: the builtin driver's parent holds the ports.
        for argv in [
            "rootlesskit --net=slirp4netns --mtu=65520 --disable-host-loopback --port-driver=builtin --copy-up=/etc dockerd-rootless.sh",
            "rootlesskit --port-driver builtin dockerd",
        ] {
            let p = recognise(std::process::id(), "rootlesskit", &v(argv)).unwrap();
            assert_eq!(p.kind, ProxyKind::Rootlesskit, "{argv}");
            assert!(p.maps.is_empty());
        }
        // slirp4netns's driver (slirp4netns listens) and none (rootlesskit's default).
        for argv in [
            "rootlesskit --port-driver=slirp4netns dockerd",
            "rootlesskit --net=slirp4netns dockerd",
        ] {
            assert!(
                recognise(std::process::id(), "rootlesskit", &v(argv)).is_none(),
                "{argv}"
            );
        }
    }
}
