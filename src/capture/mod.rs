//! `nettool capture`: packets from many namespaces and interfaces at once into one pcapng, each
//! interface named for what it is (`container:web/eth0`, `host/docker0`, `lab:NAME/web/eth0`),
//! filtered in the kernel, read from TPACKET_V3 rings, optionally stitched across NAT with
//! conntrack (--follow). The core never prints: packets go to a [`Sink`].

pub(crate) mod decode;
pub(crate) mod filter;
pub(crate) mod follow;
pub(crate) mod pcapng;
pub(crate) mod proxylegs;
pub(crate) mod ring;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::{EngineKind, Intent};
use crate::netns::discover::{discover_with, DiscoverOptions, NamespaceInfo};
use crate::netns::{NetNs, NetnsError, NsId};

use crate::netns::conntrack::Events as CtEvents;
use filter::Filter;
use follow::{FlowTable, Tuple};
use pcapng::InterfaceDesc;
use ring::{LinkType, Ring, RingSize};

/// Errors from capturing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaptureError {
    /// Opening or entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A socket call failed.
    #[error("{what} in namespace {netns}: {errno} (packet capture needs root or CAP_NET_RAW)")]
    Socket {
        /// The call.
        what: &'static str,
        /// The namespace label.
        netns: String,
        /// The OS error.
        errno: std::io::Error,
    },
    /// A capture file could not be written.
    #[error("capture file {path}: {message}")]
    Pcap {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The filter expression did not compile.
    #[error("filter '{expr}': {message}")]
    Filter {
        /// The expression.
        expr: String,
        /// tcpdump's complaint, or why tcpdump could not run.
        message: String,
    },
    /// A --lab or -i named something that is not there.
    #[error("{0}")]
    Target(String),
}

/// What to capture and how.
#[derive(Debug, Clone)]
pub(crate) struct CaptureOptions {
    /// Namespace TARGETs (NAME, path, pid:N, container:NAME); none: the current namespace.
    pub targets: Vec<String>,
    /// Labs: their host namespace and every container's.
    pub labs: Vec<String>,
    /// Every namespace on the machine, new ones picked up as they appear.
    pub all_netns: bool,
    /// Interface names to capture on (none: all).
    pub interfaces: Vec<String>,
    /// The filter, compiled.
    pub filter: Option<Filter>,
    /// Bytes kept per packet.
    pub snaplen: u32,
    /// Ring geometry per socket (None: [`RingSize::automatic`]).
    pub ring: Option<RingSize>,
    /// Stitch flows across NAT with conntrack events (ctnetlink).
    pub follow: bool,
    /// How often to look for new interfaces and namespaces.
    pub rescan: Duration,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            targets: Vec::new(),
            labs: Vec::new(),
            all_netns: false,
            interfaces: Vec::new(),
            filter: None,
            snaplen: 262_144,
            ring: None,
            follow: false,
            rescan: Duration::from_secs(1),
        }
    }
}

/// When to stop.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    /// After this many packets.
    pub count: Option<u64>,
    /// After this long.
    pub duration: Option<Duration>,
}

/// One packet handed to a sink.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<'a> {
    /// The interface id (as announced to [`Sink::interface`]).
    pub interface: u32,
    /// Link type of that interface.
    pub link: LinkType,
    /// Kernel timestamp since the Unix epoch.
    pub ts: Duration,
    /// Length on the wire.
    pub wire_len: u32,
    /// The bytes kept.
    pub data: &'a [u8],
    /// --follow: the flow's original and reply tuples.
    pub comment: Option<&'a str>,
}

/// Where packets go: a pcapng file, the live view, JSON lines.
pub(crate) trait Sink {
    /// A new interface, before any of its packets.
    fn interface(&mut self, id: u32, desc: &InterfaceDesc) -> Result<(), CaptureError>;
    /// Every socket is open: packets from now on are kept (tests and people wait for this before
    /// sending). Comes before the interfaces are named and announced, which may take seconds.
    fn started(&mut self, _interfaces: usize) {}
    /// One packet. `p.data` stays valid until the next [`Sink::block_done`] (it is in the
    /// capture ring), so a sink may keep a pointer to it until then instead of copying.
    fn packet(&mut self, p: &Packet<'_>) -> Result<(), CaptureError>;
    /// The packets handed over since the last call are about to go away (their ring block is
    /// handed back to the kernel): write out anything that still points at them. No default:
    /// a sink that wraps another must pass this on, or the file gets bytes of later packets.
    fn block_done(&mut self) -> Result<(), CaptureError>;
    /// Packets of different interfaces must come in time order (the live view, a pcapng file):
    /// they are then held for a short window and merged. Otherwise they come as each ring hands
    /// them over.
    fn ordered(&self) -> bool {
        false
    }
    /// The end, with each interface's counters.
    fn finish(&mut self, stats: &[InterfaceStats]) -> Result<(), CaptureError>;
}

/// Counters of one interface at the end (tcpdump's "received by filter" / "dropped by kernel").
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InterfaceStats {
    /// Interface id.
    pub id: u32,
    /// if_name.
    pub name: String,
    /// Packets handed to the sink.
    pub captured: u64,
    /// Packets that passed the kernel filter (PACKET_STATISTICS tp_packets).
    pub received_by_filter: u64,
    /// Packets the kernel dropped because the ring was full.
    pub dropped_by_kernel: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// Per interface.
    pub interfaces: Vec<InterfaceStats>,
    /// Packets handed to the sink.
    pub captured: u64,
    /// Sum of received_by_filter.
    pub received_by_filter: u64,
    /// Sum of dropped_by_kernel.
    pub dropped_by_kernel: u64,
}

/// A namespace being captured, with its name for people.
#[derive(Debug)]
pub(crate) struct Place {
    /// The namespace.
    pub ns: NetNs,
    /// The prefix of its interfaces' names: `host`, `container:web`, `lab:NAME/web`.
    pub label: String,
    /// Namespace, container and engine, for if_description.
    pub description: String,
}

/// Names namespaces after the engines' containers, labs and the host.
struct Namer {
    intent: Intent,
    infos: Vec<NamespaceInfo>,
    init: Option<NsId>,
    /// (namespace, lab, container or "host")
    lab_members: Vec<(NsId, String, String)>,
}

impl Namer {
    fn new() -> Namer {
        Namer::with(Intent::read())
    }

    /// Names from `intent` (an empty one names namespaces without the engines' APIs, which can
    /// take seconds: a socket-activated podman service starts on the first request).
    fn with(intent: Intent) -> Namer {
        let infos = discover_with(
            DiscoverOptions {
                skip_interfaces: true,
                skip_docker: false,
            },
            &intent,
        );
        let init = NetNs::from_pid(1).ok().map(|n| n.id());
        let mut lab_members = Vec::new();
        for lab in crate::lab::state::list() {
            let Ok(st) = crate::lab::state::load(&lab) else {
                continue;
            };
            if let Some(h) = &st.host_netns {
                if let Ok(ns) = NetNs::from_name(h) {
                    lab_members.push((ns.id(), lab.clone(), "host".to_string()));
                }
            }
            for c in &st.containers {
                if let Some(n) = &c.netns {
                    if let Ok(ns) = NetNs::from_name(n) {
                        lab_members.push((ns.id(), lab.clone(), c.name.clone()));
                    }
                }
            }
        }
        Namer {
            intent,
            infos,
            init,
            lab_members,
        }
    }

    /// (label, description) of `ns`; `given` is the TARGET the user typed, when one was.
    fn name(&self, ns: &NetNs, given: Option<&str>) -> (String, String) {
        let id = ns.id();
        let info = self.infos.iter().find(|i| i.id == id);
        let path = info
            .map(|i| i.path.clone())
            .unwrap_or_else(|| ns.path().to_path_buf());
        let mut desc = format!("netns {} (inode {})", path.display(), id.inode);
        let engine = self
            .intent
            .in_netns(id.inode)
            .into_iter()
            .find(|c| c.engine != EngineKind::Lab && !c.infra)
            .cloned();
        let label = if let Some(c) = engine {
            desc.push_str(&format!(
                "; container {} ({}, id {})",
                c.name,
                c.engine,
                c.short_id()
            ));
            if let Some(p) = &c.pod {
                desc.push_str(&format!("; pod {p}"));
            }
            format!("container:{}", c.name)
        } else if let Some((_, lab, member)) = self.lab_members.iter().find(|(i, _, _)| *i == id) {
            if member == "host" {
                desc.push_str(&format!("; host namespace of lab {lab} (engine lab)"));
            } else {
                desc.push_str(&format!("; container {member} of lab {lab} (engine lab)"));
            }
            format!("lab:{lab}/{member}")
        } else if Some(id) == self.init {
            desc.push_str("; the host (pid 1's namespace)");
            "host".to_string()
        } else if let Some(n) = info.and_then(|i| i.names.first()) {
            n.clone()
        } else if let Some(g) = given {
            g.to_string()
        } else {
            info.map(|i| i.display_name())
                .unwrap_or_else(|| ns.label().to_string())
        };
        if let Some(i) = info {
            let procs: Vec<String> = i
                .processes
                .iter()
                .take(3)
                .map(|p| format!("{} {}", p.pid, p.comm))
                .collect();
            if !procs.is_empty() {
                desc.push_str(&format!("; processes {}", procs.join(", ")));
            }
        }
        (label, desc)
    }
}

/// Resolve --netns, --lab and --all-netns to the namespaces to capture in (deduplicated).
fn places(opts: &CaptureOptions, namer: &Namer) -> Result<Vec<Place>, CaptureError> {
    let mut out: Vec<Place> = Vec::new();
    let add = |out: &mut Vec<Place>, ns: NetNs, given: Option<&str>| {
        if out.iter().any(|p| p.ns.id() == ns.id()) {
            return;
        }
        let (label, description) = namer.name(&ns, given);
        out.push(Place {
            ns,
            label,
            description,
        });
    };
    for t in &opts.targets {
        add(&mut out, NetNs::open(t)?, Some(t));
    }
    for lab in &opts.labs {
        let st = crate::lab::state::load(lab).map_err(|e| {
            CaptureError::Target(format!(
                "lab {lab}: {e} (`{} labs` lists the labs that are up)",
                crate::program::me()
            ))
        })?;
        match &st.host_netns {
            Some(h) => add(&mut out, NetNs::from_name(h)?, None),
            None => add(&mut out, NetNs::current()?, None),
        }
        for c in &st.containers {
            if let Some(n) = &c.netns {
                add(&mut out, NetNs::from_name(n)?, None);
            }
        }
    }
    if opts.all_netns {
        for i in &namer.infos {
            if let Ok(ns) = i.open() {
                add(&mut out, ns, None);
            }
        }
    }
    if out.is_empty() {
        add(&mut out, NetNs::current()?, None);
    }
    Ok(out)
}

/// A ring opened on one interface, not yet announced.
struct Opened {
    key: (NsId, u32, String),
    ring: Ring,
    desc: InterfaceDesc,
}

/// Open a ring on every interface of `place` not in `known` (and in `-i` when given).
fn open_interfaces(
    place: &Place,
    opts: &CaptureOptions,
    known: &HashSet<(NsId, u32, String)>,
) -> Result<Vec<Opened>, CaptureError> {
    let id = place.ns.id();
    let label = place.label.clone();
    let filter = opts.filter.clone();
    let snaplen = opts.snaplen;
    let given = opts.ring;
    let wanted = &opts.interfaces;
    let rings = place
        .ns
        .run(|| -> Result<Vec<(u32, String, Ring)>, CaptureError> {
            let links = crate::netns::links::Rtnl::open()
                .and_then(|mut r| r.links())
                .map_err(|e| CaptureError::Target(format!("interfaces of {label}: {e}")))?;
            let mut out = Vec::new();
            for l in links {
                if !wanted.is_empty() && !wanted.contains(&l.name) {
                    continue;
                }
                if known.contains(&(id, l.index, l.name.clone())) {
                    continue;
                }
                let prog = |lt: LinkType| {
                    Some(match &filter {
                        Some(f) => f.program(lt),
                        None => filter::accept_all(snaplen),
                    })
                };
                let size = given.unwrap_or_else(|| RingSize::automatic(known.len() + out.len()));
                match Ring::open_here(l.index, &l.name, &label, size, &prog) {
                    Ok(r) => out.push((l.index, l.name, r)),
                    // Gone between the dump and the bind: it will not be missed.
                    Err(CaptureError::Socket { errno, .. })
                        if errno.raw_os_error() == Some(libc::ENODEV)
                            || errno.raw_os_error() == Some(libc::ENXIO) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })??;
    Ok(rings
        .into_iter()
        .map(|(index, name, ring)| Opened {
            desc: interface_desc(place, &name, ring.link.linktype(), snaplen),
            key: (id, index, name),
            ring,
        })
        .collect())
}

/// The pcapng name and description of interface `name` of `place`.
fn interface_desc(place: &Place, name: &str, linktype: u16, snaplen: u32) -> InterfaceDesc {
    InterfaceDesc {
        name: format!("{}/{}", place.label, name),
        description: format!("{} on {}; {}", name, place.label, place.description),
        linktype,
        snaplen,
    }
}

/// An interface being read.
struct Source {
    id: u32,
    ring: Ring,
    name: String,
    captured: u64,
    closed: Option<(u64, u64)>,
}

/// Something the rescanner found: a new interface, or (--follow) a new namespace's conntrack,
/// or the userland proxies running now in the captured namespaces.
enum Found {
    Interface(Opened),
    Conntrack(CtEvents),
    Proxies(Vec<proxylegs::ProxyWatch>),
}

/// How often --follow looks for userland proxies (a /proc pass).
const PROXY_RESCAN: Duration = Duration::from_secs(2);

/// A packet copied out of its ring: waiting for its flow (--follow) or its turn in time order.
struct Held {
    interface: u32,
    link: LinkType,
    ts: Duration,
    wire_len: u32,
    data: Vec<u8>,
    arrived: Instant,
    /// Arrival order: ties in time keep it.
    seq: u64,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.ts, self.seq) == (o.ts, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    // Reversed: BinaryHeap pops the oldest first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.ts, o.seq).cmp(&(self.ts, self.seq))
    }
}

/// How long --follow waits for the conntrack entry of a packet it cannot place yet. The entry's
/// event is queued before the ring hands the packet over, so this is for a namespace without
/// conntrack (a packet that will never have an entry), not for the lookup.
const FOLLOW_GRACE: Duration = Duration::from_millis(60);

/// The live view's reorder window across interfaces: a ring hands over a block that is not full
/// after its timeout (50 ms), so a packet of one interface can come up to that much later than a
/// newer one of another.
fn reorder_window() -> Duration {
    Duration::from_millis(ring::BLOCK_TIMEOUT_MS as u64 + 30)
}

/// Open --follow's conntrack event socket in `ns`.
fn open_conntrack(ns: &NetNs, label: &str) -> Result<CtEvents, CaptureError> {
    let mut c = ns
        .run(CtEvents::open)?
        .map_err(|errno| CaptureError::Socket {
            what: "ctnetlink (conntrack events)",
            netns: label.to_string(),
            errno,
        })?;
    c.ns = Some(ns.id());
    Ok(c)
}

/// A client's new connection to a proxy's listen port, waiting for the proxy's connection to
/// the backend (paired by time when the proxy's sockets are gone before they could be read).
struct ProxyClient {
    at: Instant,
    ns: NsId,
    client: Tuple,
}

/// How long a client connection waits for its proxy's backend connection.
const PROXY_PAIR_WINDOW: Duration = Duration::from_secs(2);

/// Capture until `stop` is set or a limit is reached, handing every packet to `sink`.
pub(crate) fn run(
    opts: &CaptureOptions,
    limits: Limits,
    stop: &AtomicBool,
    sink: &mut dyn Sink,
) -> Result<Summary, CaptureError> {
    // The engines are asked in the background while the rings open: the first request to a
    // socket-activated podman takes seconds, and packets wait in the rings meanwhile.
    let intent = std::thread::Builder::new()
        .name("capture-intent".into())
        .spawn(Intent::read)
        .map_err(|e| CaptureError::Target(format!("cannot start a thread: {e}")))?;
    let quick = Namer::with(Intent::default());
    let mut initial = places(opts, &quick)?;
    let mut known: HashSet<(NsId, u32, String)> = HashSet::new();
    let mut opened = Vec::new();
    for p in &initial {
        for o in open_interfaces(p, opts, &known)? {
            known.insert(o.key.clone());
            opened.push(o);
        }
    }
    if opened.is_empty() {
        return Err(CaptureError::Target(if opts.interfaces.is_empty() {
            "no interface to capture on".into()
        } else {
            format!(
                "no interface named {} in the namespaces chosen (`{} netns inspect` lists them)",
                opts.interfaces.join(", "),
                crate::program::me()
            )
        }));
    }
    sink.started(opened.len());
    // Now the names: the pcapng interface blocks are written before any packet is read.
    let namer = intent.join().map(Namer::with).unwrap_or(quick);
    for p in &mut initial {
        let given = opts
            .targets
            .iter()
            .find(|t| NetNs::open(t).is_ok_and(|n| n.id() == p.ns.id()));
        (p.label, p.description) = namer.name(&p.ns, given.map(|s| s.as_str()));
    }
    for o in &mut opened {
        if let Some(p) = initial.iter().find(|p| p.ns.id() == o.key.0) {
            o.desc = interface_desc(p, &o.key.2, o.desc.linktype, opts.snaplen);
        }
    }
    let mut conntrack = Vec::new();
    if opts.follow {
        for p in &initial {
            conntrack.push(open_conntrack(&p.ns, &p.label)?);
        }
    }
    let proxies = if opts.follow {
        proxylegs::find(&initial.iter().map(|p| p.ns.clone()).collect::<Vec<_>>())
    } else {
        Vec::new()
    };
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Found>();

    // Rescanner: new interfaces (a container started on a bridge) and, with --all-netns, new
    // namespaces. Its own thread, so the reading loop never waits on netlink or /proc.
    let rescanner = {
        let opts = opts.clone();
        let done = done.clone();
        let mut places_now = initial;
        let mut known = known.clone();
        std::thread::Builder::new()
            .name("capture-rescan".into())
            .spawn(move || {
                let mut last = Instant::now();
                let mut last_proxies = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if opts.follow && last_proxies.elapsed() >= PROXY_RESCAN {
                        last_proxies = Instant::now();
                        let nss: Vec<NetNs> = places_now.iter().map(|p| p.ns.clone()).collect();
                        if tx.send(Found::Proxies(proxylegs::find(&nss))).is_err() {
                            return;
                        }
                    }
                    if last.elapsed() < opts.rescan {
                        continue;
                    }
                    last = Instant::now();
                    if opts.all_netns {
                        let ids = crate::netns::discover::discover(DiscoverOptions {
                            skip_interfaces: true,
                            skip_docker: true,
                        });
                        if ids
                            .iter()
                            .any(|i| !places_now.iter().any(|p| p.ns.id() == i.id))
                        {
                            let namer = Namer::new();
                            for i in &namer.infos {
                                if places_now.iter().any(|p| p.ns.id() == i.id) {
                                    continue;
                                }
                                if let Ok(ns) = i.open() {
                                    let (label, description) = namer.name(&ns, None);
                                    if opts.follow {
                                        if let Ok(c) = open_conntrack(&ns, &label) {
                                            if tx.send(Found::Conntrack(c)).is_err() {
                                                return;
                                            }
                                        }
                                    }
                                    places_now.push(Place {
                                        ns,
                                        label,
                                        description,
                                    });
                                }
                            }
                        }
                    }
                    for p in &places_now {
                        // The capture ended: do not make it wait for a whole pass (with
                        // --all-netns a pass enters every namespace).
                        if done.load(Ordering::Relaxed) {
                            return;
                        }
                        // A namespace that went away fails here; it is skipped.
                        if let Ok(new) = open_interfaces(p, &opts, &known) {
                            for o in new {
                                known.insert(o.key.clone());
                                if tx.send(Found::Interface(o)).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            })
            .map_err(|e| CaptureError::Target(format!("cannot start a thread: {e}")))?
    };

    let result = read_loop(opts, limits, stop, sink, opened, (conntrack, proxies), &rx);
    done.store(true, Ordering::Relaxed);
    drop(rx);
    // The rescanner may be waiting on an engine (a new namespace makes it ask Docker/Podman for
    // names, up to the API's 10 s timeout): Ctrl-C must not wait for that. It stops on its own at
    // its next check of `done`; a pass that does not end soon is left to the process's exit.
    let until = Instant::now() + Duration::from_millis(300);
    while !rescanner.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    if rescanner.is_finished() {
        let _ = rescanner.join();
    }
    result
}

/// The packets copied out of the rings (--follow, or the live view across interfaces), released
/// in time order once their flow is known and the reorder window has passed.
struct Pending {
    heap: std::collections::BinaryHeap<Held>,
    seq: u64,
    flows: FlowTable,
    follow: bool,
    /// Bytes of the packets in `heap`.
    bytes: usize,
}

/// The most packet bytes held for time order: past it the oldest go out before their window is
/// over (a capture of many busy interfaces must not grow without bound; a packet of another
/// interface that comes later may then be out of order).
const MAX_HELD_BYTES: usize = 64 << 20;

impl Pending {
    /// Hand the sink every packet that may go, oldest first, at most `left` of them (-c counts
    /// packets in time order): all of them when `flush`, else while the oldest is older than
    /// `window` and (--follow) its flow is known or its grace is over. Returns how many went.
    fn release(
        &mut self,
        window: Duration,
        flush: bool,
        left: Option<u64>,
        sink: &mut dyn Sink,
    ) -> Result<u64, CaptureError> {
        let now = crate::dns::capture::now();
        // Packets handed over stay alive until the sink wrote them out (block_done).
        let mut gone = Vec::new();
        let res = self.release_into(window, flush, now, left, sink, &mut gone);
        let done = sink.block_done();
        let n = gone.len() as u64;
        drop(gone);
        res.and(done).map(|_| n)
    }

    fn release_into(
        &mut self,
        window: Duration,
        flush: bool,
        now: Duration,
        left: Option<u64>,
        sink: &mut dyn Sink,
        gone: &mut Vec<Held>,
    ) -> Result<(), CaptureError> {
        while let Some(h) = self.heap.peek() {
            if left.is_some_and(|l| gone.len() as u64 >= l) {
                break;
            }
            if !flush && now.saturating_sub(h.ts) < window && self.bytes <= MAX_HELD_BYTES {
                break;
            }
            // Not cached: flows merge as entries from other namespaces arrive, and the comment
            // should be the merged flow's.
            let comment = if self.follow {
                let tuple = decode::summarize(h.link, &h.data).tuple().map(
                    |(proto, src, sport, dst, dport)| Tuple {
                        proto,
                        src,
                        sport,
                        dst,
                        dport,
                    },
                );
                match tuple.and_then(|t| self.flows.comment(&t)) {
                    Some(c) => Some(c),
                    None if tuple.is_some() && !flush && h.arrived.elapsed() < FOLLOW_GRACE => {
                        break
                    }
                    None => None,
                }
            } else {
                None
            };
            let Some(h) = self.heap.pop() else { break };
            self.bytes -= h.data.len();
            let r = sink.packet(&Packet {
                interface: h.interface,
                link: h.link,
                ts: h.ts,
                wire_len: h.wire_len,
                data: &h.data,
                comment: comment.as_deref(),
            });
            gone.push(h);
            r?;
        }
        Ok(())
    }
}

fn read_loop(
    opts: &CaptureOptions,
    limits: Limits,
    stop: &AtomicBool,
    sink: &mut dyn Sink,
    opened: Vec<Opened>,
    (mut conntrack, mut proxies): (Vec<CtEvents>, Vec<proxylegs::ProxyWatch>),
    rx: &mpsc::Receiver<Found>,
) -> Result<Summary, CaptureError> {
    let start = Instant::now();
    let mut sources: Vec<Source> = Vec::new();
    let add = |o: Opened, sources: &mut Vec<Source>, sink: &mut dyn Sink| {
        let id = sources.len() as u32;
        sink.interface(id, &o.desc)?;
        sources.push(Source {
            id,
            ring: o.ring,
            name: o.desc.name,
            captured: 0,
            closed: None,
        });
        Ok::<(), CaptureError>(())
    };
    for o in opened {
        add(o, &mut sources, sink)?;
    }
    let mut total: u64 = 0;
    let mut pending = Pending {
        heap: std::collections::BinaryHeap::new(),
        seq: 0,
        flows: FlowTable::default(),
        follow: opts.follow,
        bytes: 0,
    };
    let mut ct_buf = vec![0u8; 1 << 16];
    let mut waiting = std::collections::VecDeque::new();
    let mut entries = Vec::new();
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let reached = |total: u64| limits.count.is_some_and(|c| total >= c);
    // Packets are copied out of the rings only when they must wait: for their flow, or for the
    // other interfaces' packets of the same moment in the live view.
    let ordered = sink.ordered();
    let holding = |sources: &[Source]| opts.follow || (ordered && sources.len() > 1);
    let window = reorder_window();
    loop {
        if stop.load(Ordering::Relaxed)
            || reached(total)
            || limits.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        while let Ok(found) = rx.try_recv() {
            match found {
                Found::Interface(o) => add(o, &mut sources, sink)?,
                Found::Conntrack(c) => conntrack.push(c),
                Found::Proxies(p) => proxies = p,
            }
        }
        pfds.clear();
        pfds.extend(sources.iter().map(|s| libc::pollfd {
            fd: if s.closed.is_some() {
                -1
            } else {
                s.ring.raw_fd()
            },
            events: libc::POLLIN,
            revents: 0,
        }));
        pfds.extend(conntrack.iter().map(|c| libc::pollfd {
            fd: c.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let hold = holding(&sources);
        let mut timeout = if hold && !pending.heap.is_empty() {
            20
        } else {
            100
        };
        if let Some(d) = limits.duration {
            let left = d.saturating_sub(start.elapsed()).as_millis() as i32;
            timeout = timeout.min(left.max(1));
        }
        // SAFETY: pfds is a live array of pollfd of the length given.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(CaptureError::Socket {
                    what: "poll",
                    netns: "(all)".into(),
                    errno: e,
                });
            }
        }
        for (i, s) in sources.iter_mut().enumerate() {
            if s.closed.is_some() {
                continue;
            }
            let rev = pfds[i].revents;
            if rev & libc::POLLIN != 0 || rc == 0 {
                let left = limits.count.map(|c| c.saturating_sub(total));
                // Held packets are counted when they go out, in time order.
                let n = drain_source(
                    s,
                    &|| stop.load(Ordering::Relaxed),
                    left.filter(|_| !hold),
                    hold.then_some(&mut pending),
                    sink,
                )?;
                if !hold {
                    total += n;
                }
            }
            // The interface went away (ENETDOWN on the socket): keep its counters, stop polling.
            if rev & (libc::POLLERR | libc::POLLNVAL | libc::POLLHUP) != 0 {
                s.closed = Some(s.ring.statistics());
            }
        }
        // After the rings: every entry of the packets just read is queued by now.
        drain_conntrack(
            &mut conntrack,
            &mut ct_buf,
            &mut entries,
            &mut pending.flows,
            (&proxies, &mut waiting),
        );
        let w = if ordered && sources.len() > 1 {
            window
        } else {
            Duration::ZERO
        };
        let left = limits.count.map(|c| c.saturating_sub(total));
        total += pending.release(w, false, left, sink)?;
    }
    // The kernel hands over a block that is not full only after its timeout: wait for it, then
    // read what is left, so the last packets before Ctrl-C are not lost. Only when some ring
    // has such a block (a capture that saw nothing ends at once).
    if sources
        .iter()
        .any(|s| s.closed.is_none() && s.ring.filling())
    {
        std::thread::sleep(Duration::from_millis(ring::BLOCK_TIMEOUT_MS as u64 + 20));
    }
    let hold = holding(&sources);
    for s in sources.iter_mut().filter(|s| s.closed.is_none()) {
        let left = limits.count.map(|c| c.saturating_sub(total));
        // Bounded (one ring's worth): the traffic may still be flowing.
        let n = drain_source(
            s,
            &|| false,
            left.filter(|_| !hold),
            hold.then_some(&mut pending),
            sink,
        )?;
        if !hold {
            total += n;
        }
    }
    drain_conntrack(
        &mut conntrack,
        &mut ct_buf,
        &mut entries,
        &mut pending.flows,
        (&proxies, &mut waiting),
    );
    let left = limits.count.map(|c| c.saturating_sub(total));
    total += pending.release(Duration::ZERO, true, left, sink)?;
    let stats: Vec<InterfaceStats> = sources
        .iter_mut()
        .map(|s| {
            let (packets, drops) = s.closed.unwrap_or_else(|| s.ring.statistics());
            InterfaceStats {
                id: s.id,
                name: s.name.clone(),
                captured: s.captured,
                received_by_filter: packets,
                dropped_by_kernel: drops,
            }
        })
        .collect();
    sink.finish(&stats)?;
    Ok(Summary {
        captured: total,
        received_by_filter: stats.iter().map(|s| s.received_by_filter).sum(),
        dropped_by_kernel: stats.iter().map(|s| s.dropped_by_kernel).sum(),
        interfaces: stats,
    })
}

/// Read every queued conntrack entry into the flow table (NATed entries first, so a flow's
/// description is the one that says most). A new flow from a userland proxy to its target has
/// its two legs joined before any packet is written: by the proxy's sockets when they are still
/// open, else with the client connection to that proxy that came just before it (a short
/// request is often over before the sockets can be read).
fn drain_conntrack(
    conntrack: &mut [CtEvents],
    buf: &mut [u8],
    entries: &mut Vec<follow::CtFlow>,
    flows: &mut FlowTable,
    (proxies, waiting): (
        &[proxylegs::ProxyWatch],
        &mut std::collections::VecDeque<ProxyClient>,
    ),
) {
    entries.clear();
    let mut origins: Vec<Option<NsId>> = Vec::new();
    for c in conntrack.iter_mut() {
        c.drain(buf, entries);
        origins.resize(entries.len(), c.ns);
    }
    waiting.retain(|w| w.at.elapsed() < PROXY_PAIR_WINDOW);
    let mut backends: Vec<(&proxylegs::ProxyWatch, Tuple)> = Vec::new();
    for (e, ns) in entries.iter().zip(&origins) {
        // Only flows seen for the first time (an update repeats a known one).
        if proxies.is_empty() || flows.lookup(&e.original).is_some() {
            continue;
        }
        for w in proxies.iter().filter(|w| Some(w.ns_id()) == *ns) {
            // The proxy to its target first: with the same port on both sides (-p 53:53/udp)
            // and a proxy listening on every address, that leg would also look like a client.
            // A client of the proxy ends at it: not NATed (a DNATed flow to the same port went
            // to the container without the proxy).
            if w.wants(&e.original) {
                backends.push((w, e.original));
            } else if !e.natted() && w.target_of(&e.original).is_some() {
                waiting.push_back(ProxyClient {
                    at: Instant::now(),
                    ns: w.ns_id(),
                    client: e.original,
                });
            }
        }
    }
    entries.sort_by_key(|e| !e.natted());
    for e in entries.drain(..) {
        flows.add(e);
    }
    let mut asked: Vec<crate::netns::NsId> = Vec::new();
    for (w, backend) in backends {
        if !asked.contains(&w.ns_id()) {
            asked.push(w.ns_id());
            for j in w.joins() {
                flows.join_proxy(&j.proxy, j.client, j.backend);
                waiting.retain(|c| c.client != j.client);
            }
        }
        let joined = flows.lookup(&backend).map(|(n, _)| n);
        let Some(i) = waiting.iter().position(|c| {
            c.ns == w.ns_id()
                && w.target_of(&c.client)
                    .is_some_and(|(to, _)| to.ip() == backend.dst && to.port() == backend.dport)
        }) else {
            continue;
        };
        if joined.is_some() && joined == flows.lookup(&waiting[i].client).map(|(n, _)| n) {
            continue;
        }
        let Some(c) = waiting.remove(i) else { continue };
        if let Some((_, proxy)) = w.target_of(&c.client) {
            flows.join_proxy(&format!("{proxy} (paired by time)"), c.client, backend);
        }
    }
}

/// Hand what `s`'s ring holds to the sink, or copy it into `pending` when packets must wait, at
/// most `left` packets.
fn drain_source(
    s: &mut Source,
    stop: &dyn Fn() -> bool,
    left: Option<u64>,
    mut pending: Option<&mut Pending>,
    sink: &mut dyn Sink,
) -> Result<u64, CaptureError> {
    let (id, link) = (s.id, s.ring.link);
    let mut captured = 0u64;
    let mut err = None;
    let arrived = Instant::now();
    s.ring.drain(stop, |f| {
        let Some(f) = f else {
            // The block is handed back after this: the sink writes out what points into it.
            if let Err(e) = sink.block_done() {
                err.get_or_insert(e);
            }
            return;
        };
        if err.is_some() || left.is_some_and(|l| captured >= l) {
            return;
        }
        if let Some(p) = pending.as_deref_mut() {
            p.seq += 1;
            p.bytes += f.data.len();
            p.heap.push(Held {
                interface: id,
                link,
                ts: f.ts,
                wire_len: f.wire_len,
                data: f.data.to_vec(),
                arrived,
                seq: p.seq,
            });
            captured += 1;
            return;
        }
        let p = Packet {
            interface: id,
            link,
            ts: f.ts,
            wire_len: f.wire_len,
            data: f.data,
            comment: None,
        };
        match sink.packet(&p) {
            Ok(()) => captured += 1,
            Err(e) => err = Some(e),
        }
    });
    s.captured += captured;
    match err {
        Some(e) => Err(e),
        None => Ok(captured),
    }
}

/// A sink that writes a pcapng file (rotated by size when asked).
#[derive(Debug)]
pub(crate) struct PcapngSink {
    /// The writer.
    pub writer: pcapng::PcapngWriter,
}

impl PcapngSink {
    /// Create `path` (0600, never through a symlink).
    pub(crate) fn create(
        path: &std::path::Path,
        rotation: pcapng::Rotation,
    ) -> Result<Self, CaptureError> {
        Ok(PcapngSink {
            writer: pcapng::PcapngWriter::create(path, rotation)?,
        })
    }

    /// The files written.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        self.writer.files().to_vec()
    }
}

impl Sink for PcapngSink {
    fn interface(&mut self, _id: u32, desc: &InterfaceDesc) -> Result<(), CaptureError> {
        self.writer.add_interface(desc.clone()).map(|_| ())
    }

    fn packet(&mut self, p: &Packet<'_>) -> Result<(), CaptureError> {
        // SAFETY: the Sink contract: p.data lives until block_done, which writes it out.
        unsafe {
            self.writer
                .write_packet_deferred(p.interface, p.ts, p.wire_len, p.data, p.comment)
        }
    }

    fn block_done(&mut self) -> Result<(), CaptureError> {
        self.writer.write_out()
    }

    /// Wireshark shows packets in file order: packets of several interfaces are merged by time
    /// (one interface's ring is already in order and is written straight from it).
    fn ordered(&self) -> bool {
        true
    }

    fn finish(&mut self, stats: &[InterfaceStats]) -> Result<(), CaptureError> {
        let now = crate::dns::capture::now();
        for s in stats {
            self.writer
                .write_statistics(s.id, now, s.received_by_filter, s.dropped_by_kernel)?;
        }
        self.writer.flush()
    }
}

/// One packet read back from a pcapng file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReadPacket {
    /// Timestamp since the Unix epoch.
    pub ts: Duration,
    /// The interface's if_name (or `ifN`).
    pub interface: String,
    /// Decoded fields.
    pub summary: decode::PacketSummary,
    /// Length on the wire.
    pub wire_len: u32,
    /// The packet comment (--follow writes the flow there).
    pub comment: Option<String>,
}

/// Every packet of a pcapng file (nettool's or anyone's), with its interface's name.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<ReadPacket>, CaptureError> {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let err = |m: String| CaptureError::Pcap {
        path: path.display().to_string(),
        message: m,
    };
    let f = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let mut r = PcapNgReader::new(std::io::BufReader::new(f))
        .map_err(|e| err(format!("not a pcapng file: {e}")))?;
    let mut ifaces: Vec<(String, Option<LinkType>)> = Vec::new();
    let mut out = Vec::new();
    while let Some(b) = r.next_block() {
        match b.map_err(|e| err(e.to_string()))? {
            Block::SectionHeader(_) => ifaces.clear(),
            Block::InterfaceDescription(idb) => {
                let name = idb
                    .options
                    .iter()
                    .find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .unwrap_or_else(|| format!("if{}", ifaces.len()));
                let link = match u32::from(idb.linktype) {
                    1 => Some(LinkType::Ethernet),
                    101 | 228 | 229 => Some(LinkType::RawIp),
                    _ => None,
                };
                ifaces.push((name, link));
            }
            Block::EnhancedPacket(p) => {
                let (name, link) = ifaces
                    .get(p.interface_id as usize)
                    .cloned()
                    .unwrap_or_else(|| (format!("if{}", p.interface_id), None));
                let summary = match link {
                    Some(l) => decode::summarize(l, &p.data),
                    None => decode::PacketSummary {
                        network: "?".into(),
                        ..Default::default()
                    },
                };
                let comment = p.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                    _ => None,
                });
                out.push(ReadPacket {
                    ts: p.timestamp,
                    interface: name,
                    summary,
                    wire_len: p.original_len,
                    comment,
                });
            }
            _ => {}
        }
    }
    Ok(out)
}
