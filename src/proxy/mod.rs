//! The userland proxy: TCP and UDP forwarding for many mappings in one process, across
//! namespaces, zero-copy (splice) when nobody watches and tapped when a dump needs the bytes.
//!
//! Use: [`Proxy::bind`] (synchronous: binds every listener inside the listen namespace, so
//! readiness can be reported before serving), then [`Proxy::run`] inside a tokio runtime.

pub(crate) mod docker;
pub(crate) mod fastpath;
pub(crate) mod listen_watch;
pub(crate) mod logq;
pub(crate) mod proxy_protocol;
pub(crate) mod relay;
pub(crate) mod sock;
pub(crate) mod spec;
pub(crate) mod syslog;
pub(crate) mod target_watch;
pub(crate) mod tcp;
pub(crate) mod transparent;
pub(crate) mod udp;
pub(crate) mod unix;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::netns::NetNs;
pub(crate) use crate::tap::event::Transport as Proto;
use crate::tap::Tap;
use spec::{Mapping, PortMap};
use udp::thread::{UdpBound, UdpThread};

/// Errors setting the proxy up (serving errors are logged per connection instead).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {proto} {addr} in namespace {ns}: {error}{hint}")]
    Bind {
        /// TCP or UDP.
        proto: Proto,
        /// The address.
        addr: SocketAddr,
        /// The namespace label.
        ns: String,
        /// Why.
        error: std::io::Error,
        /// What to do about it.
        hint: String,
    },
    /// Entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// Nothing to do.
    #[error("no mappings given: pass LISTEN TARGET or -p LISTEN=TARGET")]
    NoMappings,
    /// Transparent mode could not be set up.
    #[error(transparent)]
    Transparent(#[from] transparent::TransparentError),
    /// A unix mapping's listener could not be made.
    #[error(transparent)]
    Unix(#[from] unix::UnixError),
    /// The plain TCP path's event loops could not start.
    #[error("cannot start the TCP event loops: {0}")]
    EventLoop(std::io::Error),
    /// A passed-in listener (docker-proxy -use-listen-fd) is unusable.
    #[error("the listener passed on fd 4 is unusable: {0}")]
    ListenFd(std::io::Error),
    /// The PROXY protocol version asked for cannot carry a mapping's transport.
    #[error("{why} ({proto} {listen})")]
    ProxyProtocol {
        /// What cannot be done and what to use instead.
        why: &'static str,
        /// The mapping's transport.
        proto: Proto,
        /// The mapping's listen address.
        listen: SocketAddr,
    },
}

/// Log severity for [`Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Level {
    /// Something failed.
    Error,
    /// Something a person should know (dial failures, dump failures).
    Warn,
    /// Start, stop, counters.
    Info,
    /// Every connection.
    Debug,
}

/// Where the proxy's log lines go; the command decides (stderr, a file).
#[derive(Clone)]
pub(crate) struct Log(Arc<LogFn>, Level);

/// The function behind a [`Log`].
pub(crate) type LogFn = dyn Fn(Level, &str) + Send + Sync;

impl Log {
    /// A log that calls `f` for every line at `max` or more severe.
    pub(crate) fn new(max: Level, f: impl Fn(Level, &str) + Send + Sync + 'static) -> Self {
        Log(Arc::new(f), max)
    }
    /// Log one line.
    pub(crate) fn log(&self, level: Level, msg: &str) {
        if level <= self.1 {
            (self.0)(level, msg)
        }
    }
    /// True when lines at `level` are kept (callers skip formatting otherwise).
    pub(crate) fn enabled(&self, level: Level) -> bool {
        level <= self.1
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Log")
    }
}

/// Live counters (atomics), readable at any time.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// TCP connections accepted / UDP flows started.
    pub connections: AtomicU64,
    /// Connections and flows open now.
    pub active: AtomicU64,
    /// Of those, UDP flows: the stop line says each kind (not in the snapshot: the counters
    /// lines keep their fields). Changed as a flow starts and ends, not per datagram.
    pub active_udp: AtomicU64,
    /// Payload bytes client -> backend.
    pub bytes_c2s: AtomicU64,
    /// Payload bytes backend -> client.
    pub bytes_s2c: AtomicU64,
    /// Backend dials that failed.
    pub dial_errors: AtomicU64,
    /// Connections ended by a reset (either side).
    pub resets: AtomicU64,
    /// Other socket errors.
    pub errors: AtomicU64,
    /// UDP datagrams forwarded (both ways).
    pub datagrams: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct CounterSnapshot {
    /// TCP connections accepted / UDP flows started.
    pub connections: u64,
    /// Open now.
    pub active: u64,
    /// Bytes client -> backend.
    pub bytes_c2s: u64,
    /// Bytes backend -> client.
    pub bytes_s2c: u64,
    /// Failed backend dials.
    pub dial_errors: u64,
    /// Resets passed on.
    pub resets: u64,
    /// Other errors.
    pub errors: u64,
    /// UDP datagrams.
    pub datagrams: u64,
}

impl Counters {
    /// Read every counter.
    pub(crate) fn snapshot(&self) -> CounterSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            connections: g(&self.connections),
            active: g(&self.active),
            bytes_c2s: g(&self.bytes_c2s),
            bytes_s2c: g(&self.bytes_s2c),
            dial_errors: g(&self.dial_errors),
            resets: g(&self.resets),
            errors: g(&self.errors),
            datagrams: g(&self.datagrams),
        }
    }
}

impl std::fmt::Display for CounterSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connections={} active={} bytes_c2s={} bytes_s2c={} dial_errors={} resets={} errors={} datagrams={}",
            self.connections,
            self.active,
            self.bytes_c2s,
            self.bytes_s2c,
            self.dial_errors,
            self.resets,
            self.errors,
            self.datagrams
        )
    }
}

/// Everything the proxy needs to start.
#[derive(Debug)]
pub(crate) struct ProxyConfig {
    /// The mappings.
    pub maps: Vec<Mapping>,
    /// Listen inside this namespace (None: the current one).
    pub listen_ns: Option<NetNs>,
    /// What named `listen_ns` (--listen-netns): watched, and followed when it names another
    /// namespace (a restarted container), [`listen_watch`].
    pub listen_text: Option<String>,
    /// Dial backends from inside this namespace (None: the current one).
    pub target_ns: Option<NetNs>,
    /// What named `target_ns` (--target-netns): resolved again when dials fail, to tell (and
    /// follow) a restarted container or a re-made named namespace.
    pub target_text: Option<String>,
    /// A UDP flow with no traffic for this long is forgotten.
    pub udp_idle: Duration,
    /// Where events go when dumping (None: splice, no copies).
    pub tap: Option<Tap>,
    /// Log lines.
    pub log: Log,
    /// A listener handed over by the parent (docker-proxy -use-listen-fd), used for the one
    /// mapping instead of binding.
    pub listen_fd: Option<OwnedFd>,
    /// Backend sockets carry the client's address ([`transparent`]).
    pub transparent: bool,
    /// Send this PROXY protocol header to the backend first ([`proxy_protocol`]).
    pub proxy_protocol: Option<proxy_protocol::ProxyProtocol>,
    /// Threads of the plain TCP path's own loop ([`fastpath`]), when it is used.
    pub threads: usize,
    /// Mappings with a unix socket end ([`unix`]).
    pub unix: Vec<unix::UnixMap>,
}

/// A listener ready to serve.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ListenerInfo {
    /// TCP or UDP.
    pub proto: Proto,
    /// Bound address.
    pub listen: SocketAddr,
    /// Backend.
    pub target: SocketAddr,
    /// A target name's other addresses, dialled in this order when `target` fails.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<SocketAddr>,
}

pub(crate) struct Ctx {
    pub(crate) next_id: AtomicU64,
    pub(crate) counters: Arc<Counters>,
    pub(crate) dialer: sock::Dialer,
    /// --target-netns, checked again when a dial fails (None: no --target-netns).
    pub(crate) target: Option<Arc<target_watch::TargetWatch>>,
    pub(crate) tap: Option<Tap>,
    pub(crate) log: Log,
    pub(crate) udp_idle: Duration,
    /// Transparent mode: backend sockets are bound to the client's address.
    pub(crate) transparent: bool,
    /// The PROXY protocol header backends get, if any.
    pub(crate) proxy_protocol: Option<proxy_protocol::ProxyProtocol>,
    /// Which transparent-mode fallbacks have been logged already (each once).
    pub(crate) fallback_said: [std::sync::atomic::AtomicBool; 4],
}

impl Ctx {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub(crate) fn log(&self, level: Level, msg: impl AsRef<str>) {
        self.log.log(level, msg.as_ref())
    }
    /// The address a backend socket should carry: the client's in transparent mode.
    pub(crate) fn source_for(&self, client: SocketAddr) -> Option<SocketAddr> {
        self.transparent.then_some(client)
    }
    /// Say (once per reason, then at debug level) that connection `id` from `client` keeps the
    /// proxy's address.
    pub(crate) fn fallback(
        &self,
        id: u64,
        client: SocketAddr,
        (why, detail): &(transparent::Fallback, Option<String>),
    ) {
        let first = !self.fallback_said[why.index()].swap(true, Ordering::Relaxed);
        if first || self.log.enabled(Level::Debug) {
            let detail = detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            let rest = if first {
                "; said once, -v shows every such connection"
            } else {
                ""
            };
            self.log.log(
                if first { Level::Warn } else { Level::Debug },
                &format!(
                    "#{id} transparent: {client} keeps the proxy's address towards the backend: {}{detail}{rest}",
                    why.why()
                ),
            );
        }
    }
    /// `to` as dialed now: a link-local target's interface index is the one of the namespace
    /// --target-netns names now ([`target_watch::TargetWatch::rescoped`]).
    pub(crate) fn rescoped(&self, to: SocketAddr) -> SocketAddr {
        match (&self.target, to) {
            (Some(w), SocketAddr::V6(a)) if a.scope_id() != 0 => w.rescoped(to),
            _ => to,
        }
    }
    /// What a failed dial's log line adds about --target-netns ("" without one, or when it
    /// still names the namespace dials go to). Blocks for at most half a second (the lookup, at most
    /// one a second, runs on a thread of its own and may finish later): for a blocking thread
    /// only (the event loop parks the dial instead: [`target_watch::TargetWatch::hint_later`]).
    pub(crate) fn target_hint(&self) -> String {
        self.target.as_ref().map(|w| w.hint()).unwrap_or_default()
    }
    /// [`Ctx::target_hint`] from an async task: the lookup, when one is due, on a blocking
    /// thread (a container engine's API may take a while).
    pub(crate) async fn target_hint_async(self: &Arc<Self>) -> String {
        let Some(w) = &self.target else {
            return String::new();
        };
        if let Some(said) = w.fresh_hint() {
            return said;
        }
        let c = self.clone();
        tokio::task::spawn_blocking(move || c.target_hint())
            .await
            .unwrap_or_default()
    }
    /// Per-connection lines: formatted only when -v asked for them.
    pub(crate) fn debug(&self, msg: impl FnOnce() -> String) {
        if self.log.enabled(Level::Debug) {
            self.log.log(Level::Debug, &msg())
        }
    }
}

enum Bound {
    Tcp(std::net::TcpListener, PortMap),
    Udp(std::net::UdpSocket, PortMap),
}

/// A proxy with every listener bound, not yet serving.
pub(crate) struct Proxy {
    ctx: Arc<Ctx>,
    bound: Vec<Bound>,
    listeners: Vec<ListenerInfo>,
    transparent: Option<transparent::Transparent>,
    recovered: Vec<crate::trace::journal::Recovered>,
    /// The plain TCP path's own loops ([`fastpath`]), when they serve the TCP listeners.
    loops: Option<fastpath::Loops>,
    /// --listen-netns, to follow when it names another namespace.
    listen_watch: Option<listen_watch::ListenWatch>,
    /// The mappings with a unix end, bound.
    unix: unix::UnixSet,
}

/// Raise the open-file soft limit to the hard limit: each connection costs 2 sockets and,
/// when splicing, 4 pipe ends.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The open-file limit in force (the soft limit, which [`raise_nofile`] lifted to the hard one).
fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_cur
}

/// Who holds `addr` in the calling thread's namespace, for an "address in use" error: the
/// owning pid and command, and the lab when it is one of a lab's processes.
fn holder_hint(proto: Proto, addr: SocketAddr) -> String {
    use crate::netns::sockets::{self, Which};
    let fallback = " (something already listens there: see `ss -ltnup` in that namespace)";
    let Ok(socks) = sockets::list(Which::Listening) else {
        return fallback.into();
    };
    let want = match proto {
        Proto::Tcp => sockets::Proto::Tcp,
        Proto::Udp => sockets::Proto::Udp,
    };
    let same_proto = |p: &sockets::Proto| *p == want;
    let owners: Vec<String> = socks
        .iter()
        // By family: the IPv6 half of an "every address" mapping fails on a [::] holder, not
        // on the proxy's own 0.0.0.0 listener bound a moment before.
        .filter(|s| {
            same_proto(&s.proto)
                && s.is_listening()
                && spec::listens_clash(addr, s.local, s.local.is_ipv6() && !s.v6only)
        })
        .flat_map(|s| s.owners.iter())
        .map(|o| match crate::lab::state::lab_of_process(o.pid) {
            Some(lab) => format!(
                "pid {} ({}) of lab {lab}: pick another port, or `{} teardown {lab}` first",
                o.pid,
                o.comm,
                crate::program::me()
            ),
            None => match conmon_container(o) {
                Some(name) => format!(
                    "pid {} (conmon), Podman's monitor of container {name}, which publishes this port: pick another port, or stop the container (`podman stop {name}`)",
                    o.pid
                ),
                None => format!("pid {} ({})", o.pid, o.comm),
            },
        })
        .collect();
    match owners.first() {
        Some(first) => format!(" (held by {first})"),
        None => fallback.into(),
    }
}

/// The container a conmon process watches (its `-n NAME`): Podman's conmon holds a listening
/// socket for each port the container publishes, never accepting on it, so the port is taken
/// by a process whose name says nothing of the container.
fn conmon_container(o: &crate::netns::sockets::Owner) -> Option<String> {
    if o.comm != "conmon" {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", o.pid)).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let i = args.iter().position(|a| *a == b"-n" || *a == b"--name")?;
    let name = String::from_utf8_lossy(args.get(i + 1)?).into_owned();
    (!name.is_empty()).then_some(name)
}

fn bind_all(maps: &[PortMap], ns: &str) -> Result<Vec<Bound>, ProxyError> {
    let mut out = Vec::with_capacity(maps.len());
    for m in maps {
        let r = match m.proto {
            Proto::Tcp => sock::bind_tcp(m.listen).map(|l| Bound::Tcp(l, m.clone())),
            Proto::Udp => sock::bind_udp(m.listen).map(|s| Bound::Udp(s, m.clone())),
        };
        match r {
            Ok(b) => out.push(b),
            Err(e)
                if m.optional
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
                    ) => {}
            Err(error) => {
                let hint = match error.raw_os_error() {
                    Some(libc::EADDRINUSE) => holder_hint(m.proto, m.listen),
                    Some(libc::EACCES) => {
                        " (ports below 1024 need root or CAP_NET_BIND_SERVICE)".into()
                    }
                    Some(libc::EADDRNOTAVAIL) => {
                        " (that address is not configured on any interface in the namespace)".into()
                    }
                    Some(libc::EMFILE) => format!(
                        " (the mappings ask for {} listening sockets and the open-file limit is {}: raise it, e.g. `ulimit -n` or LimitNOFILE=, or forward fewer ports per process)",
                        maps.len(),
                        nofile_limit()
                    ),
                    _ => String::new(),
                };
                return Err(ProxyError::Bind {
                    proto: m.proto,
                    addr: m.listen,
                    ns: ns.to_string(),
                    error,
                    hint,
                });
            }
        }
    }
    Ok(out)
}

impl Proxy {
    /// Bind every listener (inside the listen namespace) and start the backend dialer.
    pub(crate) fn bind(mut cfg: ProxyConfig) -> Result<Proxy, ProxyError> {
        // First of all: a start that fails below (port taken, bad namespace) still removes
        // what SIGKILLed transparent proxies left.
        let recovered = transparent::recover_dead();
        raise_nofile();
        let maps: Vec<PortMap> = cfg.maps.iter().flat_map(|m| m.expand()).collect();
        if maps.is_empty() && cfg.unix.is_empty() {
            return Err(ProxyError::NoMappings);
        }
        if let Some(pp) = cfg.proxy_protocol {
            for m in &maps {
                if let Some(why) = pp.refuses(m.proto) {
                    return Err(ProxyError::ProxyProtocol {
                        why,
                        proto: m.proto,
                        listen: m.listen,
                    });
                }
            }
        }
        // A passed listener is the parent's to replace: not followed.
        let listen_text = cfg.listen_text.take().filter(|_| cfg.listen_fd.is_none());
        let bound = if let Some(fd) = cfg.listen_fd {
            // docker-proxy -use-listen-fd: the daemon bound the socket; only the first mapping applies.
            let m = maps[0].clone();
            sock::check_passed_socket(&fd, m.proto).map_err(ProxyError::ListenFd)?;
            match m.proto {
                Proto::Tcp => {
                    let l = std::net::TcpListener::from(fd);
                    l.set_nonblocking(true).map_err(ProxyError::ListenFd)?;
                    sock::set_listener_nodelay(&l).map_err(ProxyError::ListenFd)?;
                    let mut m = m;
                    m.listen = l.local_addr().map_err(ProxyError::ListenFd)?;
                    vec![Bound::Tcp(l, m)]
                }
                Proto::Udp => {
                    let s = std::net::UdpSocket::from(fd);
                    s.set_nonblocking(true).map_err(ProxyError::ListenFd)?;
                    udp::size_rcvbuf(&s, udp::LISTEN_RCVBUF);
                    let mut m = m;
                    m.listen = s.local_addr().map_err(ProxyError::ListenFd)?;
                    if m.listen.ip().is_unspecified() {
                        sock::set_pktinfo(&s, m.listen.is_ipv6()).map_err(ProxyError::ListenFd)?;
                    }
                    vec![Bound::Udp(s, m)]
                }
            }
        } else {
            match &cfg.listen_ns {
                Some(ns) => {
                    let label = ns.label().to_string();
                    ns.run(|| bind_all(&maps, &label))??
                }
                None => bind_all(&maps, "current")?,
            }
        };
        let unix = unix::UnixSet::bind(&cfg.unix, cfg.listen_ns.as_ref())?;
        let listeners = bound
            .iter()
            .map(|b| {
                let m = match b {
                    Bound::Tcp(_, m) | Bound::Udp(_, m) => m,
                };
                ListenerInfo {
                    proto: m.proto,
                    listen: m.listen,
                    target: m.target,
                    more: m.more.to_vec(),
                }
            })
            .collect();
        let listen_watch = match (&cfg.listen_ns, listen_text.as_deref()) {
            (Some(ns), Some(text)) => Some(listen_watch::ListenWatch::new(
                text,
                ns.clone(),
                bound.iter().map(|b| b.map().clone()).collect(),
                cfg.log.clone(),
            )),
            _ => None,
        };
        let target_ns = cfg.target_ns.clone();
        // Transparent mode's rules live in the namespace found at start: told, not followed.
        let watch = match (&cfg.target_ns, &cfg.target_text) {
            (Some(ns), Some(text)) => Some(Arc::new(target_watch::TargetWatch::new(
                text,
                ns.clone(),
                !cfg.transparent,
                cfg.log.clone(),
                maps.iter()
                    .flat_map(|m| std::iter::once(m.target).chain(m.more.iter().copied()))
                    .collect(),
            ))),
            _ => None,
        };
        let (dialer, transparent) = if cfg.transparent {
            // The rules go where the backend sockets live; the dialer thread there also
            // judges each client's route.
            let ns = match cfg.target_ns {
                Some(ns) => ns,
                None => NetNs::current()?,
            };
            let t = transparent::Transparent::setup(&ns)?;
            (sock::Dialer::new(Some(&ns), None)?, Some(t))
        } else {
            (
                sock::Dialer::new(cfg.target_ns.as_ref(), watch.clone())?,
                None,
            )
        };
        // Each target name's thread, which asks again once its answer's TTL is past.
        let mut names: Vec<(Arc<spec::TargetName>, Proto)> = Vec::new();
        for m in &maps {
            if let Some(n) = &m.name {
                if !names.iter().any(|(o, _)| Arc::ptr_eq(o, n)) {
                    names.push((n.clone(), m.proto));
                }
            }
        }
        for (n, proto) in names {
            n.start(proto, cfg.log.clone());
        }
        let ctx = Arc::new(Ctx {
            next_id: AtomicU64::new(0),
            counters: Arc::new(Counters::default()),
            dialer,
            target: watch,
            tap: cfg.tap,
            log: cfg.log,
            udp_idle: cfg.udp_idle,
            transparent: cfg.transparent,
            proxy_protocol: cfg.proxy_protocol,
            fallback_said: Default::default(),
        });
        // The plain TCP path's loops start here, not in run: once the caller says it is
        // ready (docker-proxy's fd 3), every thread and descriptor of the proxy exists.
        let (bound, loops) = if fastpath::wanted(&ctx) {
            let (tcp, udp) = by_kind(bound);
            let rest = udp.into_iter().map(|(s, m)| Bound::Udp(s, m)).collect();
            let loops = match tcp.is_empty() {
                true => None,
                false => Some(
                    fastpath::Loops::start(tcp, ctx.clone(), cfg.threads, target_ns)
                        .map_err(ProxyError::EventLoop)?,
                ),
            };
            (rest, loops)
        } else {
            (bound, None)
        };
        Ok(Proxy {
            ctx,
            bound,
            listeners,
            transparent,
            recovered,
            loops,
            listen_watch,
            unix,
        })
    }

    /// What is bound.
    pub(crate) fn listeners(&self) -> &[ListenerInfo] {
        &self.listeners
    }

    /// The unix mappings' listeners.
    pub(crate) fn unix_listeners(&self) -> impl Iterator<Item = &unix::UnixMap> {
        self.unix.listening()
    }

    /// The live counters.
    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.ctx.counters.clone()
    }

    /// Transparent mode: what was added and in which namespace (None when off).
    pub(crate) fn transparent(&self) -> Option<(&str, &str)> {
        self.transparent
            .as_ref()
            .map(|t| (t.summary.as_str(), t.netns().label()))
    }

    /// What dead transparent proxies had left behind and this one removed at startup.
    pub(crate) fn recovered(&self) -> &[crate::trace::journal::Recovered] {
        &self.recovered
    }

    /// Serve until `stop` resolves; must be called inside a tokio runtime. Transparent mode's
    /// rules stay until the returned value is dropped (after the connections are gone).
    pub(crate) async fn run(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<Option<transparent::Transparent>> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut udp = Vec::new();
        for b in self.bound {
            match b {
                Bound::Tcp(l, m) => {
                    let l = tokio::net::TcpListener::from_std(l)?;
                    tasks.spawn(tcp::serve(l, m, self.ctx.clone()));
                }
                Bound::Udp(s, m) => udp.push((s, m)),
            }
        }
        let unix = self.unix.serve(&self.ctx)?;
        let udp = match udp.is_empty() {
            true => None,
            false => Some(UdpThread::start(udp, self.ctx.clone()).await?),
        };
        let (to, mut relisten) = tokio::sync::mpsc::unbounded_channel();
        let watcher = listen_watch::Watcher::start(self.listen_watch, self.ctx.target.clone(), to)?;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(r) = relisten.recv() => {
                    relisten_all(r, self.loops.as_ref(), &mut tasks, udp.as_ref(), &self.ctx)?;
                }
            }
        }
        drop(watcher);
        tasks.abort_all();
        drop(unix);
        if let Some(l) = self.loops {
            let _ = tokio::task::spawn_blocking(move || l.stop()).await;
        }
        if let Some(u) = udp {
            u.stop().await;
        }
        Ok(self.transparent)
    }
}

/// A TCP listener bound and its mapping.
type TcpBound = (std::net::TcpListener, PortMap);

/// `bound` by kind, each in its order.
fn by_kind(bound: Vec<Bound>) -> (Vec<TcpBound>, Vec<UdpBound>) {
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    for b in bound {
        match b {
            Bound::Tcp(l, m) => tcp.push((l, m)),
            Bound::Udp(s, m) => udp.push((s, m)),
        }
    }
    (tcp, udp)
}

/// Serve the listeners --listen-netns's new namespace got ([`listen_watch`]) instead of the
/// old ones, which close: TCP on the event loops, or on tokio's path as new accepting tasks in
/// `tasks` (the only tasks there: connections are tasks of their own and stay); UDP on its
/// thread. Then say so.
fn relisten_all(
    r: listen_watch::Relisten,
    loops: Option<&fastpath::Loops>,
    tasks: &mut tokio::task::JoinSet<()>,
    udp: Option<&UdpThread>,
    ctx: &Arc<Ctx>,
) -> std::io::Result<()> {
    let (tcp, udp_socks) = by_kind(r.bound);
    match loops {
        Some(loops) => loops.relisten(tcp),
        None => {
            tasks.abort_all();
            for (l, m) in tcp {
                let l = tokio::net::TcpListener::from_std(l)?;
                tasks.spawn(tcp::serve(l, m, ctx.clone()));
            }
        }
    }
    if let Some(u) = udp {
        u.relisten(udp_socks);
    }
    ctx.log(Level::Info, r.line);
    Ok(())
}
