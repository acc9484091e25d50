//! DNS tracing: capture in one or many namespaces, decode, pair queries with answers.
//!
//! [`capture`] makes AF_PACKET sockets inside namespaces and reads/writes pcap files,
//! [`packet`] turns frames into DNS messages (UDP, TCP reassembled), [`pair`] pairs them,
//! [`docker`] learns where Docker's embedded resolver really listens. [`live`] and
//! [`read_file`] drive the pipeline and hand each finished [`pair::Lookup`] to a callback:
//! this module never prints. [`lookup`] turns host names into addresses for the proxy's
//! mappings (/etc/hosts, then resolv.conf's nameservers; no getaddrinfo).

pub(crate) mod capture;
pub(crate) mod docker;
pub(crate) mod join;
pub(crate) mod lookup;
pub mod packet;
pub(crate) mod pair;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::netns::conntrack::{Conntrack, Tuple};
use crate::netns::links::Rtnl;
use crate::netns::{NetNs, NsId};
use capture::{now, CaptureError, PacketSocket, PcapOut, SNAPLEN};
use join::{JoinContext, Joiner};
use packet::{decode, CopyFilter, LinkKind, TcpReassembler, Transport};
use pair::{Lookup, PairStats, Pairer, QKey};

/// A server address that packets really use, shown as the address the client asked
/// (Docker: 127.0.0.11:<random port> shown as 127.0.0.11:53).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Alias {
    /// UDP or TCP.
    pub transport: Transport,
    /// Where the packets go after DNAT.
    pub real: SocketAddr,
    /// What the client addressed.
    pub shown: SocketAddr,
}

/// Frames to lookups for one capture point.
#[derive(Debug)]
pub struct Pipeline {
    copies: CopyFilter,
    tcp: TcpReassembler,
    /// The pairing state (counters included).
    pub pairer: Pairer,
}

impl Pipeline {
    /// A pipeline labelling its lookups `label`, waiting `timeout` for answers.
    pub fn new(label: &str, timeout: Duration, aliases: &[Alias]) -> Self {
        let mut pairer = Pairer::new(label, timeout);
        for a in aliases {
            pairer.alias(a.transport, a.real, a.shown);
        }
        Pipeline {
            copies: CopyFilter::default(),
            tcp: TcpReassembler::default(),
            pairer,
        }
    }

    /// Feed one frame, seen on interface `ifindex` of the capture's namespace when known.
    pub fn frame(&mut self, ts: Duration, link: LinkKind, data: &[u8], ifindex: Option<i32>) {
        self.pairer.set_interface(ifindex);
        let Some(seg) = decode(link, data) else {
            if let Some(u) = packet::decode_unreachable(link, data) {
                self.pairer
                    .unreachable(ts, u.src, u.dst, u.reason, u.payload);
            }
            return;
        };
        match seg.tcp {
            None => {
                if !seg.payload.is_empty() && self.copies.is_new(ts, seg.src, seg.dst, seg.payload)
                {
                    self.pairer
                        .message(ts, seg.src, seg.dst, Transport::Udp, seg.payload);
                }
            }
            Some(flags) => {
                for m in self.tcp.push(ts, seg.src, seg.dst, flags, seg.payload) {
                    self.pairer
                        .message(ts, seg.src, seg.dst, Transport::Tcp, &m);
                }
            }
        }
    }
}

/// Errors of a DNS trace.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Capture or pcap trouble.
    #[error(transparent)]
    Capture(#[from] CaptureError),
}

/// Interface names of one namespace, from a route socket made there (read again when a
/// new ifindex shows up, at most once a second).
struct IfNames {
    rtnl: Option<Rtnl>,
    names: HashMap<i32, String>,
    read_at: Option<Duration>,
}

impl std::fmt::Debug for IfNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.names.iter()).finish()
    }
}

impl IfNames {
    fn name(&mut self, ifindex: i32) -> Option<String> {
        if !self.names.contains_key(&ifindex) {
            let t = now();
            if self
                .read_at
                .is_none_or(|r| t.saturating_sub(r) >= Duration::from_secs(1))
            {
                self.read_at = Some(t);
                if let Some(Ok(links)) = self.rtnl.as_mut().map(|r| r.links()) {
                    self.names = links
                        .into_iter()
                        .map(|l| (l.index as i32, l.name))
                        .collect();
                }
            }
        }
        self.names.get(&ifindex).cloned()
    }
}

/// A namespace being watched: its capture socket and pipeline.
#[derive(Debug)]
pub struct Source {
    id: NsId,
    label: String,
    sock: PacketSocket,
    pipe: Pipeline,
    /// Its conntrack, to join a lookup across the NAT done there.
    ct: Option<Conntrack>,
    ifnames: IfNames,
    /// The aliases in force (Docker's resolver).
    pub aliases: Vec<Alias>,
}

impl Source {
    /// Start capturing in `ns`. The namespace handle is not kept: once its last user is gone
    /// the namespace may vanish while we watch (the socket keeps only its own reference).
    pub fn open(ns: &NetNs, timeout: Duration, aliases: Vec<Alias>) -> Result<Self, DnsError> {
        let ports: Vec<u16> = aliases.iter().map(|a| a.real.port()).collect();
        let sock = PacketSocket::open(ns, &ports)?;
        // Both optional: without them a lookup is still shown, only not joined across a NAT
        // here, and its hops name no interface.
        let (ct, rtnl) = ns
            .run(|| (Conntrack::open_here().ok(), Rtnl::open().ok()))
            .unwrap_or((None, None));
        Ok(Source {
            id: ns.id(),
            label: ns.label().to_string(),
            sock,
            pipe: Pipeline::new(ns.label(), timeout, &aliases),
            ct,
            ifnames: IfNames {
                rtnl,
                names: HashMap::new(),
                read_at: None,
            },
            aliases,
        })
    }

    /// The finished lookups of this namespace, each as a sighting with its one hop.
    fn sightings(&mut self) -> Vec<Lookup> {
        let out = self.pipe.pairer.drain();
        out.into_iter()
            .map(|l| {
                let name = l.ifindex.and_then(|i| self.ifnames.name(i));
                join::single(l, name)
            })
            .collect()
    }

    /// The namespace's identity.
    pub fn id(&self) -> NsId {
        self.id
    }

    /// The namespace's label.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// What one watched namespace saw, for the end-of-run report.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStats {
    /// Namespace label.
    pub netns: String,
    /// Frames the kernel passed through the filter.
    pub frames: u64,
    /// Frames the kernel dropped because the reader fell behind.
    pub kernel_drops: u64,
    /// Pairing counters.
    #[serde(flatten)]
    pub pairing: PairStats,
    /// Server addresses shown as another (Docker's resolver port shown as 127.0.0.11:53).
    pub aliases: Vec<Alias>,
    /// What was wrong with a capture file that was still read (a torn last record).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// When a live trace stops by itself.
#[derive(Debug, Clone, Default)]
pub struct LiveOptions {
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// How often to look for new namespaces (all-namespaces mode).
    pub refresh_every: Duration,
}

/// Where finished lookups go.
pub trait LookupSink {
    /// Take one lookup; return false to stop the trace.
    fn lookup(&mut self, l: Lookup) -> bool;
    /// Nothing more to read right now: a good moment to flush buffered output.
    fn idle(&mut self) {}
}

impl<F: FnMut(Lookup) -> bool> LookupSink for F {
    fn lookup(&mut self, l: Lookup) -> bool {
        self(l)
    }
}

/// Add and drop sources as namespaces come and go: given the ids watched now, returns new
/// sources to add and the ids that no longer exist.
pub type Refresh<'a> = dyn FnMut(&HashSet<NsId>) -> (Vec<Source>, Vec<NsId>) + 'a;

/// The joiner's view of the watched namespaces.
struct Watched<'a>(&'a mut [Source]);

impl JoinContext for Watched<'_> {
    fn pending(&self, q: &QKey, id: u16, transport: Transport) -> bool {
        self.0
            .iter()
            .any(|s| s.pipe.pairer.has_pending(q, id, transport))
    }

    fn pending_from(&self, ns: NsId, q: &QKey, client: SocketAddr) -> bool {
        self.0
            .iter()
            .any(|s| s.id == ns && s.pipe.pairer.has_pending_from(q, client))
    }

    fn translated(
        &mut self,
        ns: NsId,
        transport: Transport,
        client: SocketAddr,
        server: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let src = self.0.iter_mut().find(|s| s.id == ns)?;
        let proto = match transport {
            Transport::Udp => libc::IPPROTO_UDP,
            Transport::Tcp => libc::IPPROTO_TCP,
        } as u8;
        let t = src
            .ct
            .as_mut()?
            .translated(Tuple::new(proto, client, server))?;
        Some((t.src_addr(), t.dst_addr()))
    }
}

/// How long a finished sighting waits for the other namespaces' sightings of its lookup: they
/// are read from other sockets, a poll round or a few later.
const JOIN_GRACE: Duration = Duration::from_millis(200);

/// Capture until `stop` is set, the duration passes, or `on_lookup` returns false. Each lookup
/// is handed over once, with every place it was seen as a hop (see [`join`]).
pub fn live(
    mut sources: Vec<Source>,
    opts: &LiveOptions,
    stop: &AtomicBool,
    mut pcap: Option<&mut PcapOut>,
    mut refresh: Option<&mut Refresh<'_>>,
    sink: &mut dyn LookupSink,
) -> Result<Vec<SourceStats>, DnsError> {
    let started = now();
    let mut buf = vec![0u8; SNAPLEN as usize];
    let mut last_tick = started;
    let mut last_refresh = started;
    let mut finished_stats: Vec<SourceStats> = Vec::new();
    let mut keep_going = true;
    let tick = Duration::from_millis(100);
    // One capture point sees every copy of a lookup in order: nothing to wait for.
    let mut joiner = Joiner::new(if refresh.is_some() || sources.len() > 1 {
        JOIN_GRACE
    } else {
        Duration::ZERO
    });
    while keep_going && !stop.load(Ordering::Relaxed) {
        let t = now();
        if opts
            .duration
            .is_some_and(|d| t.saturating_sub(started) >= d)
        {
            break;
        }
        let mut fds: Vec<libc::pollfd> = sources
            .iter()
            .map(|s| libc::pollfd {
                fd: s.sock.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a live array of pollfd of the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n > 0 {
            for (i, pfd) in fds.iter().enumerate() {
                if pfd.revents == 0 {
                    continue;
                }
                let src = &mut sources[i];
                // Bounded so one busy namespace cannot starve the timers.
                for _ in 0..4096 {
                    let Some(f) = src.sock.recv(&mut buf)? else {
                        break;
                    };
                    let data = &buf[..f.len];
                    if let Some(p) = pcap.as_deref_mut() {
                        p.write(f.ts, data)?;
                    }
                    src.pipe.frame(f.ts, LinkKind::Ip, data, Some(f.ifindex));
                }
                let t = now();
                for l in src.sightings() {
                    joiner.add(src.id, l, t);
                }
            }
        }
        let t = now();
        if t.saturating_sub(last_tick) >= tick {
            last_tick = t;
            for src in sources.iter_mut() {
                src.pipe.pairer.expire(t);
                for l in src.sightings() {
                    joiner.add(src.id, l, t);
                }
            }
        }
        let ready = joiner.ready(t, false, &mut Watched(&mut sources));
        hand_over(sink, ready, &mut keep_going);
        sink.idle();
        if let Some(r) = refresh.as_deref_mut() {
            if !opts.refresh_every.is_zero() && t.saturating_sub(last_refresh) >= opts.refresh_every
            {
                last_refresh = t;
                let ids: HashSet<NsId> = sources.iter().map(|s| s.id).collect();
                let (added, gone) = r(&ids);
                let (kept, dropped): (Vec<Source>, Vec<Source>) =
                    sources.into_iter().partition(|s| !gone.contains(&s.id));
                sources = kept;
                for mut s in dropped {
                    s.pipe.pairer.finish(t);
                    for l in s.sightings() {
                        joiner.add(s.id, l, t);
                    }
                    finished_stats.push(stats_of(&mut s));
                }
                sources.extend(added);
            }
        }
    }
    let t = now();
    for src in sources.iter_mut() {
        src.pipe.pairer.finish(t);
        for l in src.sightings() {
            joiner.add(src.id, l, t);
        }
    }
    let ready = joiner.ready(t, true, &mut Watched(&mut sources));
    hand_over(sink, ready, &mut keep_going);
    finished_stats.extend(sources.iter_mut().map(stats_of));
    sink.idle();
    Ok(finished_stats)
}

/// Give lookups to the sink until it wants no more.
fn hand_over(sink: &mut dyn LookupSink, lookups: Vec<Lookup>, keep_going: &mut bool) {
    for l in lookups {
        if *keep_going && !sink.lookup(l) {
            *keep_going = false;
        }
    }
}

fn stats_of(s: &mut Source) -> SourceStats {
    let (frames, kernel_drops) = s.sock.statistics();
    SourceStats {
        netns: s.label.clone(),
        frames,
        kernel_drops,
        pairing: s.pipe.pairer.stats.clone(),
        aliases: s.aliases.clone(),
        warnings: Vec::new(),
    }
}

/// The joiner's view of a capture file: one capture point, no conntrack.
struct FileContext<'a>(&'a Pairer);

impl JoinContext for FileContext<'_> {
    fn pending(&self, q: &QKey, id: u16, transport: Transport) -> bool {
        self.0.has_pending(q, id, transport)
    }

    fn pending_from(&self, _: NsId, q: &QKey, client: SocketAddr) -> bool {
        self.0.has_pending_from(q, client)
    }

    fn translated(
        &mut self,
        _: NsId,
        _: Transport,
        _: SocketAddr,
        _: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        None
    }
}

/// Explain a pcap/pcapng file: every lookup in it, timeouts judged on the capture's clock.
pub fn read_file(
    path: &Path,
    timeout: Duration,
    aliases: &[Alias],
    sink: &mut dyn LookupSink,
) -> Result<SourceStats, DnsError> {
    let capture::CaptureFrames { frames, torn } = capture::read_pcap(path)?;
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let mut pipe = Pipeline::new(&label, timeout, aliases);
    let mut last = Duration::ZERO;
    let mut keep_going = true;
    let total = frames.len() as u64;
    // One capture point: copies are seen in order, so nothing waits; a file has no conntrack
    // to ask, so only the resolvers' forwards are put inside their clients' lookups.
    let mut joiner = Joiner::new(Duration::ZERO);
    let file = NsId { dev: 0, inode: 0 };
    for (ts, link, data) in &frames {
        pipe.frame(*ts, *link, data, None);
        if ts.saturating_sub(last) >= Duration::from_millis(100) {
            pipe.pairer.expire(*ts);
            last = *ts;
        }
        for l in pipe.pairer.drain() {
            joiner.add(file, join::single(l, None), *ts);
        }
        let ready = joiner.ready(*ts, false, &mut FileContext(&pipe.pairer));
        hand_over(sink, ready, &mut keep_going);
        if !keep_going {
            break;
        }
    }
    let end = frames.last().map(|f| f.0).unwrap_or_default();
    pipe.pairer.finish(end);
    for l in pipe.pairer.drain() {
        joiner.add(file, join::single(l, None), end);
    }
    let ready = joiner.ready(end, true, &mut FileContext(&pipe.pairer));
    hand_over(sink, ready, &mut keep_going);
    sink.idle();
    Ok(SourceStats {
        netns: label,
        frames: total,
        kernel_drops: 0,
        pairing: pipe.pairer.stats.clone(),
        aliases: aliases.to_vec(),
        warnings: torn.into_iter().collect(),
    })
}
