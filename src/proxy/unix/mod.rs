//! Mappings with a unix stream socket end (TCP -> unix, unix -> TCP, unix -> unix): the
//! `socat UNIX-LISTEN:/tmp/d.sock,fork UNIX-CONNECT:/var/run/docker.sock` of container
//! debugging. Served on tokio's path with a relay of their own ([`relay`]) and the same tap,
//! so --dump/--hex/--json/--pcap/--streams see them; the TCP paths are not touched.

mod relay;
pub(crate) mod sockfile;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use relay::Stream;
use sockfile::{SockFile, SockFileError};
use tokio::net::{TcpListener, UnixStream};

use super::spec::unix::{UnixListen, UnixListenPath, UnixSpec, UnixTarget};
use super::spec::{MapSpec, Mapping, PortMap, SpecError};
use super::tcp::{canonical, dial_in_order, tap_close, Active, DIAL_TIMEOUT};
use super::{sock, Ctx, Level, Proto};
use crate::netns::NetNs;
use crate::tap::event::{CloseReason, ConnInfo, Event, PeerCred, Timestamp, UnixEnds};

/// Where a unix mapping listens.
#[derive(Debug, Clone)]
pub(crate) enum ListenEnd {
    /// A socket file.
    Path(UnixListenPath),
    /// An abstract socket, bound in the listen namespace.
    Abstract(String),
    /// A TCP address (its [`PortMap`]'s target is a stand-in).
    Tcp(PortMap),
}

/// Where a unix mapping connects.
#[derive(Debug, Clone)]
pub(crate) enum TargetEnd {
    /// A socket file.
    Path(PathBuf),
    /// An abstract socket, looked up in `ns` (--target-netns; None: where nettool runs).
    Abstract {
        /// Its name (without the leading NUL, or `@` as written).
        name: String,
        /// The namespace its connecting sockets are made in.
        ns: Option<NetNs>,
    },
    /// A TCP backend: its [`PortMap`]'s targets (a name's addresses followed as for TCP).
    Tcp(PortMap),
}

/// One listening socket's worth of a mapping with a unix end.
#[derive(Debug, Clone)]
pub(crate) struct UnixMap {
    /// Where it listens.
    pub listen: ListenEnd,
    /// Where it connects.
    pub target: TargetEnd,
}

impl std::fmt::Display for ListenEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenEnd::Tcp(m) => write!(f, "tcp {}", m.listen),
            _ => write!(f, "unix:{}", self.unix_name().unwrap_or_default().display()),
        }
    }
}

impl ListenEnd {
    /// A unix listener's name for log lines and the dump: its path, or `@NAME`.
    fn unix_name(&self) -> Option<PathBuf> {
        match self {
            ListenEnd::Path(p) => Some(p.path.clone()),
            ListenEnd::Abstract(n) => Some(format!("@{n}").into()),
            ListenEnd::Tcp(_) => None,
        }
    }
}

impl TargetEnd {
    /// A unix target's name for log lines and the dump: its path, or `@NAME`.
    fn unix_name(&self) -> Option<PathBuf> {
        match self {
            TargetEnd::Path(p) => Some(p.clone()),
            TargetEnd::Abstract { name, .. } => Some(format!("@{name}").into()),
            TargetEnd::Tcp(_) => None,
        }
    }
}

impl std::fmt::Display for TargetEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetEnd::Tcp(m) => f.write_str(&m.target_text()),
            _ => write!(f, "unix:{}", self.unix_name().unwrap_or_default().display()),
        }
    }
}

/// The listening sockets `spec` stands for, its TCP ends resolved by `resolve` (names,
/// zones; a TCP listen side without a host is two sockets, 0.0.0.0 and [::]); an abstract
/// target is looked up in `target_ns`.
pub(crate) fn maps_of(
    spec: &UnixSpec,
    target_ns: Option<&NetNs>,
    resolve: &mut dyn FnMut(&MapSpec) -> Result<Vec<Mapping>, SpecError>,
) -> Result<Vec<UnixMap>, SpecError> {
    let target = match &spec.target {
        UnixTarget::Path(p) => TargetEnd::Path(p.clone()),
        UnixTarget::Abstract(n) => TargetEnd::Abstract {
            name: n.clone(),
            ns: target_ns.cloned(),
        },
        UnixTarget::Tcp(m) => {
            let first = resolve(m)?.into_iter().flat_map(|m| m.expand()).next();
            match first {
                Some(pm) => TargetEnd::Tcp(pm),
                None => return Ok(Vec::new()),
            }
        }
    };
    Ok(match &spec.listen {
        UnixListen::Path(p) => vec![UnixMap {
            listen: ListenEnd::Path(p.clone()),
            target,
        }],
        UnixListen::Abstract(n) => vec![UnixMap {
            listen: ListenEnd::Abstract(n.clone()),
            target,
        }],
        UnixListen::Tcp(m) => resolve(m)?
            .into_iter()
            .flat_map(|m| m.expand())
            .map(|pm| UnixMap {
                listen: ListenEnd::Tcp(pm),
                target: target.clone(),
            })
            .collect(),
    })
}

/// A unix mapping's listener could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnixError {
    /// The socket file.
    #[error(transparent)]
    File(#[from] SockFileError),
    /// An abstract socket's name is taken in that namespace.
    #[error("cannot listen on abstract unix socket @{name} in namespace {ns}: {error}")]
    Abstract {
        /// The name.
        name: String,
        /// The namespace label.
        ns: String,
        /// Why.
        error: std::io::Error,
    },
    /// A TCP listener of a mapping whose target is a unix socket.
    #[error("cannot listen on tcp {addr} in namespace {ns}: {error}")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The namespace label.
        ns: String,
        /// Why.
        error: std::io::Error,
    },
    /// Entering the listen namespace failed.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
}

enum Listener {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// The unix mappings' listeners, bound, and their socket files (removed when this drops).
#[derive(Default)]
pub(crate) struct UnixSet {
    bound: Vec<(Listener, Arc<UnixMap>)>,
    files: Vec<SockFile>,
}

impl UnixSet {
    /// Bind every mapping's listener: socket files where nettool runs (a path is in the mount
    /// namespace, not a network one), TCP listeners and abstract sockets in `listen_ns`.
    pub(crate) fn bind(maps: &[UnixMap], listen_ns: Option<&NetNs>) -> Result<UnixSet, UnixError> {
        let mut set = UnixSet::default();
        for m in maps {
            let l = match &m.listen {
                ListenEnd::Path(p) => {
                    let (l, f) = sockfile::bind(p)?;
                    set.files.push(f);
                    Listener::Unix(l)
                }
                ListenEnd::Abstract(name) => {
                    let n = name.clone();
                    let r = match listen_ns {
                        Some(ns) => ns.run(move || bind_abstract(&n))?,
                        None => bind_abstract(&n),
                    };
                    Listener::Unix(r.map_err(|error| UnixError::Abstract {
                        name: name.clone(),
                        ns: listen_ns.map_or("current", |n| n.label()).to_string(),
                        error,
                    })?)
                }
                ListenEnd::Tcp(pm) => {
                    let addr = pm.listen;
                    let r = match listen_ns {
                        Some(ns) => ns.run(move || sock::bind_tcp(addr))?,
                        None => sock::bind_tcp(addr),
                    };
                    match r {
                        Ok(l) => Listener::Tcp(l),
                        Err(e)
                            if pm.optional
                                && matches!(
                                    e.raw_os_error(),
                                    Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
                                ) =>
                        {
                            continue
                        }
                        Err(error) => {
                            return Err(UnixError::Tcp {
                                addr,
                                ns: listen_ns.map_or("current", |n| n.label()).to_string(),
                                error,
                            })
                        }
                    }
                }
            };
            set.bound.push((l, Arc::new(m.clone())));
        }
        Ok(set)
    }

    /// What is bound, in order: where each listens and where it connects.
    pub(crate) fn listening(&self) -> impl Iterator<Item = &UnixMap> {
        self.bound.iter().map(|(_, m)| &**m)
    }

    /// Serve every listener on the runtime; the socket files stay with the returned guard.
    pub(crate) fn serve(self, ctx: &Arc<Ctx>) -> std::io::Result<UnixServing> {
        let mut tasks = tokio::task::JoinSet::new();
        for (l, m) in self.bound {
            match l {
                Listener::Unix(l) => {
                    let l = tokio::net::UnixListener::from_std(l)?;
                    tasks.spawn(serve_unix(l, m, ctx.clone()));
                }
                Listener::Tcp(l) => {
                    let l = TcpListener::from_std(l)?;
                    tasks.spawn(serve_tcp(l, m, ctx.clone()));
                }
            }
        }
        Ok(UnixServing {
            _tasks: tasks,
            _files: self.files,
        })
    }
}

/// The accepting tasks (aborted on drop) and the socket files (removed after them).
pub(crate) struct UnixServing {
    _tasks: tokio::task::JoinSet<()>,
    _files: Vec<SockFile>,
}

async fn serve_unix(l: tokio::net::UnixListener, map: Arc<UnixMap>, ctx: Arc<Ctx>) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let (ctx, map) = (ctx.clone(), map.clone());
                tokio::spawn(async move { handle(Stream::Unix(s), None, map, ctx).await });
            }
            Err(e) => accept_failed(&ctx, &map, e).await,
        }
    }
}

async fn serve_tcp(l: TcpListener, map: Arc<UnixMap>, ctx: Arc<Ctx>) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                let (ctx, map) = (ctx.clone(), map.clone());
                let peer = canonical(peer);
                tokio::spawn(async move { handle(Stream::Tcp(s), Some(peer), map, ctx).await });
            }
            Err(e) => accept_failed(&ctx, &map, e).await,
        }
    }
}

async fn accept_failed(ctx: &Ctx, map: &UnixMap, e: std::io::Error) {
    ctx.log(Level::Warn, format!("accept on {}: {e}", map.listen));
    // Out of fds or memory: back off instead of spinning.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A process's command name, as a dump may show it: the process chose it, so anything but
/// printable ASCII (a newline that would start a forged dump line) becomes `?`.
fn comm_of(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    let name = raw.strip_suffix(b"\n").unwrap_or(&raw);
    Some(
        name.iter()
            .map(|&b| match b {
                0x21..=0x7e => b as char,
                _ => '?',
            })
            .collect(),
    )
}

/// The stand-in address of a connection's unix end for the pcap: `127.NET.Q.R`, port
/// 1024 + id % 60000 with Q.R = id / 60000, so every connection has its own 4-tuple
/// (docs/proxy.md, "Unix sockets").
fn stand_in(net: u8, id: u64) -> SocketAddr {
    let q = id / 60_000;
    let ip = Ipv4Addr::new(127, net, (q >> 8) as u8, q as u8);
    SocketAddr::new(IpAddr::V4(ip), 1024 + (id % 60_000) as u16)
}

/// The stand-in address of a socket file in the pcap: port 80, where Wireshark's HTTP
/// dissector looks by default (the Docker and Podman APIs are HTTP).
fn path_stand_in(net: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, net, 0, 1)), 80)
}

/// Connect to a unix target (bounded like a TCP dial).
async fn dial_path(path: &std::path::Path) -> std::io::Result<UnixStream> {
    match tokio::time::timeout(DIAL_TIMEOUT, UnixStream::connect(path)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}s", DIAL_TIMEOUT.as_secs()),
        )),
    }
}

/// A non-blocking listener on the abstract socket `name`, in the calling thread's namespace.
fn bind_abstract(name: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let l = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Connect to the abstract socket `name` with a socket made in `ns` (its namespace is where
/// the name is looked up), on a blocking thread: a namespace switch never runs on a worker.
async fn dial_abstract(name: &str, ns: Option<&NetNs>) -> std::io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let ns = ns.cloned();
    let connect = move || -> std::io::Result<std::os::unix::net::UnixStream> {
        let s = match &ns {
            Some(ns) => ns
                .run(move || std::os::unix::net::UnixStream::connect_addr(&addr))
                .map_err(std::io::Error::other)??,
            None => std::os::unix::net::UnixStream::connect_addr(&addr)?,
        };
        s.set_nonblocking(true)?;
        Ok(s)
    };
    let s = tokio::task::spawn_blocking(connect)
        .await
        .map_err(std::io::Error::other)??;
    UnixStream::from_std(s)
}

/// One connection: dial the target, relay, report. `peer`: a TCP client's address.
async fn handle(client: Stream, peer: Option<SocketAddr>, map: Arc<UnixMap>, ctx: Arc<Ctx>) {
    let id = ctx.next_id();
    let _active = Active::new(&ctx);
    let (client_addr, listen, unix_listen, cred) = match (&client, &map.listen) {
        (Stream::Tcp(s), ListenEnd::Tcp(pm)) => (
            peer.unwrap_or(pm.listen),
            s.local_addr().map(canonical).unwrap_or(pm.listen),
            None,
            None,
        ),
        (Stream::Unix(s), l) => {
            // At accept, while the client is surely there to be named.
            let cred = s.peer_cred().ok().map(|c| PeerCred {
                pid: c.pid(),
                comm: c.pid().and_then(comm_of),
                uid: c.uid(),
                gid: c.gid(),
            });
            (stand_in(86, id), path_stand_in(85), l.unix_name(), cred)
        }
        // A TCP listener serves TCP clients only.
        (Stream::Tcp(_), _) => return,
    };
    let client_text = match (&unix_listen, &cred) {
        (Some(_), Some(c)) => c.to_string(),
        (Some(_), None) => "unix".to_string(),
        (None, _) => client_addr.to_string(),
    };
    let unix_target = map.target.unix_name();
    let unix_dialed = |r: std::io::Result<UnixStream>| {
        r.map(|s| {
            (
                Stream::Unix(s),
                stand_in(87, id),
                path_stand_in(88),
                unix_target.clone(),
            )
        })
        .map_err(|e| (e, path_stand_in(88)))
    };
    let dialed = match &map.target {
        TargetEnd::Path(p) => unix_dialed(dial_path(p).await),
        TargetEnd::Abstract { name, ns } => unix_dialed(dial_abstract(name, ns.as_ref()).await),
        TargetEnd::Tcp(pm) => dial_in_order(&ctx, id, client_addr, pm)
            .await
            .map(|(s, to)| {
                let _ = s.set_nodelay(true);
                let local = s.local_addr().map(canonical).unwrap_or(to);
                (Stream::Tcp(s), local, to, None)
            }),
    };
    let ends = |backend: Option<PathBuf>| {
        (unix_listen.is_some() || backend.is_some()).then(|| {
            Box::new(UnixEnds {
                listen: unix_listen.clone(),
                peer: cred.clone(),
                backend,
            })
        })
    };
    let listen_text = match &unix_listen {
        Some(p) => format!("unix:{}", p.display()),
        None => listen.to_string(),
    };
    let (backend, local, to, unix_backend) = match dialed {
        Ok(d) => d,
        Err((e, last)) => {
            ctx.counters.dial_errors.fetch_add(1, Ordering::Relaxed);
            let hint = ctx.target_hint_async().await;
            let what = match &map.target {
                TargetEnd::Tcp(pm) => {
                    pm.all_failed();
                    pm.failed_text()
                }
                t => format!("backend {t}"),
            };
            ctx.log(
                Level::Warn,
                format!("#{id} {client_text} -> {listen_text}: cannot connect to {what}: {e}{hint}; resetting the client"),
            );
            client.reset_on_close();
            if ctx.tap.is_some() {
                let backend = unix_target.clone();
                let conn = Arc::new(ConnInfo {
                    id,
                    transport: Proto::Tcp,
                    client: client_addr,
                    listen,
                    local: SocketAddr::new(last.ip(), 0),
                    backend: last,
                    unix: ends(backend),
                });
                tap_close(&ctx, conn, CloseReason::DialFailed(e.to_string()), (0, 0)).await;
            }
            return;
        }
    };
    let conn = Arc::new(ConnInfo {
        id,
        transport: Proto::Tcp,
        client: client_addr,
        listen,
        local,
        backend: to,
        unix: ends(unix_backend),
    });
    ctx.debug(|| format!("#{id} open {}", crate::tap::describe_conn(&conn)));
    if let Some(tap) = &ctx.tap {
        tap.send(Event::Open {
            conn: conn.clone(),
            ts: Timestamp::now(),
        })
        .await;
    }
    let (reason, up, down) = relay::relay(client, backend, &conn, &ctx).await;
    ctx.debug(|| format!("#{id} close {reason} c2s={up} s2c={down}"));
    tap_close(&ctx, conn, reason, (up, down)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_in_addresses_differ_per_connection() {
        let a: std::collections::HashSet<SocketAddr> =
            [1, 2, 59_999, 60_000, 60_001, 120_000, 1 << 30]
                .into_iter()
                .map(|id| stand_in(86, id))
                .collect();
        assert_eq!(a.len(), 7);
        assert_eq!(stand_in(86, 1), "127.86.0.0:1025".parse().unwrap());
        assert_eq!(stand_in(86, 60_001), "127.86.0.1:1025".parse().unwrap());
    }
}
