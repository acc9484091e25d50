//! Sockets: listeners bound inside the listen namespace, and backend sockets made inside the
//! target namespace by a helper thread that lives there (a namespace switch never touches a tokio
//! worker), which follows --target-netns to a new namespace ([`TargetWatch`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

use super::target_watch::TargetWatch;
use crate::netns::NetNs;

/// Listen backlog (the kernel caps it at net.core.somaxconn).
const BACKLOG: i32 = 4096;

/// A TCP listener on `addr`, IPV6_V6ONLY for IPv6 so 0.0.0.0 and [::] can both be bound.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    set_listener_nodelay(&s)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// TCP_NODELAY on a listener: accepted sockets inherit it, which saves a setsockopt per
/// connection (a proxy relays small writes at once, as docker-proxy's Go runtime does).
pub(crate) fn set_listener_nodelay(l: &impl std::os::fd::AsFd) -> io::Result<()> {
    socket2::SockRef::from(l).set_tcp_nodelay(true)
}

/// A UDP socket on `addr`; on a wildcard address it asks for the destination address of each
/// datagram (IP_PKTINFO / IPV6_RECVPKTINFO) so replies leave from the address the client used.
/// No SO_REUSEADDR (UDP has no TIME_WAIT to step over): with it, a port another process holds
/// with SO_REUSEADDR (a second proxy, socat) is bound again and the two split its datagrams.
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    if addr.ip().is_unspecified() {
        set_pktinfo(&s, addr.is_ipv6())?;
    }
    super::udp::size_rcvbuf(&s, super::udp::LISTEN_RCVBUF);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Turn on destination-address reporting for a UDP socket.
pub(crate) fn set_pktinfo(s: &impl AsRawFd, v6: bool) -> io::Result<()> {
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    set_int_opt(s, level, opt, 1)
}

/// setsockopt of an int-valued option (the ones socket2 has no setter for).
pub(crate) fn set_int_opt(
    s: &impl AsRawFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a c_int that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct SocketRequest {
    ty: Type,
    target: SocketAddr,
    source: Option<SocketAddr>,
    reply: oneshot::Sender<io::Result<Dialed>>,
}

/// A backend socket, and whether it carries the client's address (transparent mode).
#[derive(Debug)]
pub(crate) struct Dialed {
    /// The socket, not yet connected.
    pub socket: Socket,
    /// Why the client's address could not be used (None: it is, or it was not asked for).
    pub fallback: Option<(super::transparent::Fallback, Option<String>)>,
}

/// Make a backend socket for `target`; with `source` (transparent mode) bind it to the
/// client's address when the backend's replies can come back through here.
pub(crate) fn make(
    ty: Type,
    target: SocketAddr,
    source: Option<SocketAddr>,
    rtnl: &mut Option<crate::netns::links::Rtnl>,
) -> io::Result<Dialed> {
    use super::transparent::{bind_as, judge, Fallback};
    let socket = new_socket(Domain::for_address(target), ty)?;
    let Some(client) = source else {
        return Ok(Dialed {
            socket,
            fallback: None,
        });
    };
    if rtnl.is_none() {
        *rtnl = crate::netns::links::Rtnl::open().ok();
    }
    if let Some(f) = judge(rtnl.as_mut(), client.ip(), target.ip()) {
        return Ok(Dialed {
            socket,
            fallback: Some((f, None)),
        });
    }
    match bind_as(&socket, client) {
        Ok(()) => Ok(Dialed {
            socket,
            fallback: None,
        }),
        // A socket that failed a bind may be half set up: start again without it.
        Err(e) => Ok(Dialed {
            socket: new_socket(Domain::for_address(target), ty)?,
            fallback: Some((Fallback::Bind, Some(e.to_string()))),
        }),
    }
}

/// Makes backend sockets in the right namespace.
#[derive(Debug)]
pub(crate) enum Dialer {
    /// The proxy's own namespace.
    Here,
    /// A helper thread inside another namespace makes sockets on request.
    InNetns(std::sync::mpsc::Sender<SocketRequestBox>),
}

/// An opaque request to the helper thread.
pub(crate) struct SocketRequestBox(SocketRequest);

impl std::fmt::Debug for SocketRequestBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketRequest")
    }
}

fn new_socket(domain: Domain, ty: Type) -> io::Result<Socket> {
    let proto = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    // SOCK_NONBLOCK | SOCK_CLOEXEC in the one socket(2) call.
    Socket::new(domain, ty.nonblocking(), Some(proto))
}

impl Dialer {
    /// A dialer for `ns` (None: here). Starts the helper thread and checks it entered `ns`;
    /// with `watch`, the thread moves to the namespace the watch follows before its next socket.
    pub(crate) fn new(
        ns: Option<&NetNs>,
        watch: Option<std::sync::Arc<TargetWatch>>,
    ) -> Result<Self, crate::netns::NetnsError> {
        let Some(ns) = ns else {
            return Ok(Dialer::Here);
        };
        let (tx, rx) = std::sync::mpsc::channel::<SocketRequestBox>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let ns = ns.clone();
        std::thread::Builder::new()
            .name("nettool-dialer".into())
            .spawn(move || {
                // The dialer's own thread: it enters the namespace itself (NetNs::run would
                // start a second thread to hold it).
                if let Err(e) = ns.enter_this_thread() {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                // Route lookups for transparent mode, in this namespace; opened once.
                let mut rtnl = None;
                let mut seen = watch.as_ref().map_or(0, |w| w.gen());
                while let Ok(SocketRequestBox(req)) = rx.recv() {
                    if watch.as_ref().is_some_and(|w| w.enter_if_moved(&mut seen)) {
                        rtnl = None;
                    }
                    let _ = req
                        .reply
                        .send(make(req.ty, req.target, req.source, &mut rtnl));
                }
            })
            .map_err(|e| crate::netns::NetnsError::Thread(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Dialer::InNetns(tx)),
            Ok(Err(e)) => Err(crate::netns::NetnsError::Thread(e)),
            Err(_) => Err(crate::netns::NetnsError::Thread(
                "the dialer thread died".into(),
            )),
        }
    }

    /// A fresh non-blocking socket for talking to `target`, in the dialer's namespace; with
    /// `source` bound to that client address when it can be (transparent mode).
    pub(crate) async fn socket(
        &self,
        target: SocketAddr,
        ty: Type,
        source: Option<SocketAddr>,
    ) -> io::Result<Dialed> {
        match self {
            Dialer::Here => make(ty, target, source, &mut None),
            Dialer::InNetns(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send(SocketRequestBox(SocketRequest {
                    ty,
                    target,
                    source,
                    reply,
                }))
                .map_err(|_| io::Error::other("the target-namespace dialer thread is gone"))?;
                rx.await
                    .map_err(|_| io::Error::other("the target-namespace dialer thread is gone"))?
            }
        }
    }
}

/// "an MPTCP", "an SCTP", ... for an error message about a socket's protocol.
fn protocol_name(p: Protocol) -> String {
    match i32::from(p) {
        libc::IPPROTO_TCP => "a TCP".into(),
        libc::IPPROTO_UDP => "a UDP".into(),
        libc::IPPROTO_MPTCP => "an MPTCP".into(),
        libc::IPPROTO_SCTP => "an SCTP".into(),
        libc::IPPROTO_UDPLITE => "a UDP-Lite".into(),
        libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6 => "an ICMP (ping)".into(),
        n => format!("an IP protocol {n}"),
    }
}

/// Check a socket handed over by the parent (docker-proxy `-use-listen-fd`) before serving on
/// it: an IPv4/IPv6 socket of the right type and protocol. A TCP socket that is bound but not yet listening
/// is put into the listening state here. The error says what the descriptor really is.
pub(crate) fn check_passed_socket(
    fd: &std::os::fd::OwnedFd,
    proto: super::Proto,
) -> io::Result<()> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor we own, into a struct we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => None,
        libc::S_IFREG => Some("a regular file"),
        libc::S_IFIFO => Some("a pipe"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFDIR => Some("a directory"),
        _ => Some("not a socket"),
    };
    if let Some(k) = kind {
        return Err(io::Error::other(format!(
            "it is {k}, not a {proto} socket (the parent must pass the bound socket as fd 4)"
        )));
    }
    let s = socket2::SockRef::from(fd);
    let domain = s.domain()?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 {
        return Err(io::Error::other(format!(
            "it is not an IPv4 or IPv6 socket (domain {domain:?}); -proto {proto} needs one"
        )));
    }
    let ty = s.r#type()?;
    let want = match proto {
        super::Proto::Tcp => Type::STREAM,
        super::Proto::Udp => Type::DGRAM,
    };
    if ty != want {
        let other = match ty {
            Type::STREAM => "a TCP (stream)",
            Type::DGRAM => "a UDP (datagram)",
            Type::RAW => "a raw IP",
            Type::SEQPACKET => "a SEQPACKET (SCTP)",
            _ => "an unknown type of",
        };
        return Err(io::Error::other(format!(
            "it is {other} socket but -proto is {proto}"
        )));
    }
    // A stream or datagram socket of another protocol (MPTCP, SCTP, UDP-Lite, an ICMP ping
    // socket) passes the type check but is not what -proto names: refuse it by name.
    let want_proto = match proto {
        super::Proto::Tcp => Protocol::TCP,
        super::Proto::Udp => Protocol::UDP,
    };
    if let Some(got) = s.protocol()? {
        if got != want_proto {
            return Err(io::Error::other(format!(
                "it is {} socket, not {proto}: the parent must pass a plain {proto} socket",
                protocol_name(got)
            )));
        }
    }
    // Unbound, listen() would pick a random port on every address (and an unbound UDP
    // socket never receives): the parent forgot the bind.
    let bound = s.local_addr()?.as_socket().is_some_and(|a| a.port() != 0);
    if !bound {
        return Err(io::Error::other(format!(
            "it is not bound to an address (port 0): the parent must bind it to -host-ip:-host-port before passing it ({proto})"
        )));
    }
    if proto == super::Proto::Tcp && !s.is_listener()? {
        if let Some(peer) = s.peer_addr().ok().and_then(|a| a.as_socket()) {
            return Err(io::Error::other(format!(
                "it is a connected TCP socket (to {peer}), not one to listen on: the parent must pass the socket it bound for -host-ip:-host-port"
            )));
        }
        s.listen(BACKLOG)?;
    }
    Ok(())
}
