//! Live evidence of what the kernel did with packets of one flow: every nf_tables rule verdict
//! (nftrace, iptables-nft rules included), the kernel's drop reason (skb:kfree_skb) and the
//! socket that received it, per namespace.
//!
//! A [`Session`] narrows tracing in the kernel to the asked flows: a table of our own in each
//! traced namespace sets `meta nftrace` only for matching packets (it never changes a verdict),
//! and a tracefs instance of our own filters kfree_skb. Both are journaled before they are
//! made ([`journal`]) and removed on drop, and by the next run after a SIGKILL.
//! [`run_around`] is the library entry for callers with their own probe (doctor).

pub(crate) mod conntrack;
pub(crate) mod drops;
pub(crate) mod journal;
pub(crate) mod nftrace;
pub(crate) mod reader;
pub(crate) mod ruleset;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::facts::{firewall, FirewallDump};
use crate::netns::NetNs;
use conntrack::{CtEntry, CtWatch, NatRewrite};
use drops::{DropTracer, Endpoint, KernelDrop};
use journal::{Item, Journal};
use nftrace::{NftTrace, TraceKind, TraceSocket};
use reader::{Feed, Readers, Stamped};
use ruleset::{Engine, RuleIndex};

/// What went wrong setting up or running a trace.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TraceError {
    /// A filter word could not be understood.
    #[error("trace filter '{word}': {why}")]
    Filter {
        /// The word.
        word: String,
        /// What was expected.
        why: String,
    },
    /// A namespace could not be opened or entered.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// nft, tracefs, netlink or the journal failed.
    #[error("{0}")]
    Setup(String),
}

/// Layer-4 protocol of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum L4 {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

/// The flows to trace: packets whose protocol, port and address match (empty = any).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct TraceFilter {
    /// Protocol, or None for any.
    pub proto: Option<L4>,
    /// Ports (source or destination).
    pub ports: BTreeSet<u16>,
    /// Addresses (source or destination).
    pub addrs: BTreeSet<IpAddr>,
}

impl TraceFilter {
    /// Parse filter words: PORT, tcp, udp, icmp, tcp:PORT, udp:PORT, an IPv4/IPv6 address.
    /// `container:NAME` words are returned apart (the caller resolves them to namespaces).
    pub(crate) fn parse(words: &[String]) -> Result<(TraceFilter, Vec<String>), TraceError> {
        let mut f = TraceFilter::default();
        let mut containers = Vec::new();
        for w in words {
            let bad = |why: &str| TraceError::Filter {
                word: w.clone(),
                why: why.to_string(),
            };
            if let Some(c) = w.strip_prefix("container:") {
                if c.is_empty() {
                    return Err(bad("container: needs a name, e.g. container:web"));
                }
                containers.push(c.to_string());
                continue;
            }
            let (proto, rest) = match w.split_once(':') {
                Some((p @ ("tcp" | "udp"), r)) => (Some(p), Some(r)),
                _ => match w.as_str() {
                    "tcp" | "udp" | "icmp" => (Some(w.as_str()), None),
                    _ => (None, Some(w.as_str())),
                },
            };
            if let Some(p) = proto {
                let l4 = match p {
                    "tcp" => L4::Tcp,
                    "udp" => L4::Udp,
                    _ => L4::Icmp,
                };
                if f.proto.is_some_and(|old| old != l4) {
                    return Err(bad("one protocol per trace (tcp, udp or icmp)"));
                }
                f.proto = Some(l4);
            }
            if let Some(r) = rest {
                if let Ok(port) = r.parse::<u16>() {
                    if port == 0 {
                        return Err(bad("port 0 cannot be traced"));
                    }
                    f.ports.insert(port);
                } else if let Ok(a) = r.trim_matches(['[', ']']).parse::<IpAddr>() {
                    if proto.is_some() {
                        return Err(bad("write the protocol and the address as two words"));
                    }
                    f.addrs.insert(a);
                } else {
                    return Err(bad(
                        "expected PORT, tcp:PORT, udp:PORT, tcp, udp, icmp, an IP address or container:NAME",
                    ));
                }
            }
        }
        if f.proto == Some(L4::Icmp) && !f.ports.is_empty() {
            return Err(TraceError::Filter {
                word: "icmp".into(),
                why: "ICMP has no ports".into(),
            });
        }
        Ok((f, containers))
    }

    /// The nft rules (one per line) that set nftrace on matching packets, both directions.
    pub(crate) fn nft_rules(&self) -> Vec<String> {
        let set = |items: Vec<String>| {
            if items.len() == 1 {
                items[0].clone()
            } else {
                format!("{{ {} }}", items.join(", "))
            }
        };
        let l4 = match self.proto {
            Some(L4::Tcp) => "meta l4proto tcp ".to_string(),
            Some(L4::Udp) => "meta l4proto udp ".to_string(),
            Some(L4::Icmp) => "meta l4proto { icmp, ipv6-icmp } ".to_string(),
            None if !self.ports.is_empty() => "meta l4proto { tcp, udp, sctp } ".to_string(),
            None => String::new(),
        };
        let ports = set(self.ports.iter().map(u16::to_string).collect());
        let v4: Vec<String> = self
            .addrs
            .iter()
            .filter(|a| a.is_ipv4())
            .map(ToString::to_string)
            .collect();
        let v6: Vec<String> = self
            .addrs
            .iter()
            .filter(|a| a.is_ipv6())
            .map(ToString::to_string)
            .collect();
        let mut rules = Vec::new();
        for (dir, pdir) in [("daddr", "dport"), ("saddr", "sport")] {
            let port = if self.ports.is_empty() {
                String::new()
            } else {
                format!("th {pdir} {ports} ")
            };
            if self.addrs.is_empty() {
                if dir == "saddr" && port.is_empty() {
                    // No address and no port: one rule matches everything.
                    continue;
                }
                rules.push(format!("{l4}{port}meta nftrace set 1"));
                continue;
            }
            if !v4.is_empty() {
                rules.push(format!(
                    "ip {dir} {} {l4}{port}meta nftrace set 1",
                    set(v4.clone())
                ));
            }
            if !v6.is_empty() {
                rules.push(format!(
                    "ip6 {dir} {} {l4}{port}meta nftrace set 1",
                    set(v6.clone())
                ));
            }
        }
        rules
    }
}

/// Name of the nft table a tracer process adds (one per process: tracers can run side by side).
pub(crate) fn table_name() -> String {
    format!("nettool_trace_{}", std::process::id())
}

/// Tables of ours (any tracer process): their events are milestones, not rules to show.
fn is_our_table(name: &str) -> bool {
    name.starts_with("nettool_trace")
}

/// The `nft -f` text of the trace table: mark matching packets before anything else runs
/// (priority -350, before raw at -300), and an empty chain after everything else on every later
/// hook so the trace says which hooks a packet reached. No rule here has a verdict.
pub(crate) fn table_text(name: &str, rules: &[String]) -> String {
    let marks = rules
        .iter()
        .map(|r| format!("\t\t{r}\n"))
        .collect::<String>();
    format!(
        "table inet {name} {{\n\
         \tchain pre {{\n\t\ttype filter hook prerouting priority -350; policy accept;\n{marks}\t}}\n\
         \tchain out {{\n\t\ttype filter hook output priority -350; policy accept;\n{marks}\t}}\n\
         \tchain input_end {{\n\t\ttype filter hook input priority 1000; policy accept;\n\t}}\n\
         \tchain forward_end {{\n\t\ttype filter hook forward priority 1000; policy accept;\n\t}}\n\
         \tchain postrouting_end {{\n\t\ttype filter hook postrouting priority 1000; policy accept;\n\t}}\n\
         }}\n"
    )
}

/// A namespace to trace in, and how to name it.
#[derive(Debug, Clone)]
pub(crate) struct TracePoint {
    /// The namespace.
    pub ns: NetNs,
    /// Its name for people (the TARGET, a lab container's namespace name, container:NAME).
    pub name: String,
    /// The container that lives there, when one does.
    pub container: Option<String>,
    /// Its firewall as the caller's snapshot recorded it (None: dumped once, through
    /// facts::firewall, when the trace starts). The DNAT targets to follow, the legacy tables
    /// tracing cannot see and the iptables lines of the rules all come from this one read.
    pub firewall: Option<FirewallDump>,
}

impl TracePoint {
    /// Open TARGET and find the container that uses it (Docker names, through discovery).
    pub(crate) fn open(target: &str) -> Result<Self, TraceError> {
        let ns = NetNs::open(target)?;
        Ok(TracePoint {
            name: target.to_string(),
            container: None,
            ns,
            firewall: None,
        })
    }
}

/// How to trace.
#[derive(Debug, Clone)]
pub(crate) struct TraceOptions {
    /// Which packets.
    pub filter: TraceFilter,
    /// Where (every namespace the flow passes that should be traced).
    pub points: Vec<TracePoint>,
    /// Also read kernel drop reasons (skb:kfree_skb).
    pub drops: bool,
    /// Add the targets of DNAT rules that match the filter's ports (so the flow is followed
    /// into the container, where its port is the container port).
    pub follow_dnat: bool,
    /// A packet is complete when no event came for it this long.
    pub settle: Duration,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            filter: TraceFilter::default(),
            points: Vec::new(),
            drops: true,
            follow_dnat: true,
            settle: Duration::from_millis(200),
        }
    }
}

/// One rule (or chain end) a packet met.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Hop {
    /// The hook (prerouting, input, forward, output, postrouting), from the base chain.
    pub hook: Option<String>,
    /// Table family (ip, ip6, inet...).
    pub family: String,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// rule, return or policy.
    pub kind: TraceKind,
    /// The rule handle.
    pub handle: Option<u64>,
    /// The rule as nft lists it (None when it changed or vanished since).
    pub rule: Option<String>,
    /// The table is iptables-nft's (the rule was written with iptables).
    pub iptables_nft: bool,
    /// The rule as iptables-nft-save prints it (iptables-nft tables only).
    pub iptables: Option<String>,
    /// The verdict: accept, drop, continue, jump CHAIN, return...
    pub verdict: String,
    /// Who wrote the chain.
    pub engine: Engine,
    /// The NAT this rule set up, as conntrack recorded it (DNAT, SNAT, MASQUERADE rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatRewrite>,
}

/// A socket that received the packet, and its processes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Receiver {
    /// Local address of the socket.
    pub local: String,
    /// TCP state or UDP.
    pub state: String,
    /// Processes holding it, "comm[pid]".
    pub processes: Vec<String>,
}

/// How a packet's walk through one namespace ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub(crate) enum Ending {
    /// A rule (or a chain policy) dropped it.
    DroppedByRule {
        /// family table chain.
        chain: String,
        /// Rule handle (None: the policy).
        handle: Option<u64>,
        /// The rule text.
        rule: Option<String>,
        /// The rule as iptables-nft-save prints it, when iptables wrote it.
        iptables: Option<String>,
        /// Who wrote it.
        engine: Engine,
    },
    /// The kernel dropped it outside the rules.
    DroppedByKernel {
        /// The drop reason.
        reason: String,
        /// What the reason means.
        meaning: String,
        /// Function+offset.
        location: String,
    },
    /// It passed input: handed to the local stack (and this socket, when one matches).
    Delivered {
        /// The socket, when one listens or is connected for it.
        receiver: Option<Receiver>,
    },
    /// It passed postrouting: left through this interface (to the next namespace).
    Sent {
        /// Output interface.
        oif: Option<String>,
    },
    /// It passed forward but no postrouting was seen (left, or was dropped between).
    Forwarded {
        /// Output interface.
        oif: Option<String>,
    },
    /// No later hook saw it and the kernel named no reason within the join window.
    Vanished {
        /// The last hook seen.
        after: Option<String>,
    },
}

/// One packet's walk through one namespace.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TracedPacket {
    /// CLOCK_MONOTONIC seconds when its first event was read.
    pub time: f64,
    /// The kernel's trace id (per packet per namespace).
    pub trace_id: String,
    /// The namespace, as named to the tracer.
    pub netns: String,
    /// The container there, when known.
    pub container: Option<String>,
    /// ipv4 or ipv6.
    pub family: String,
    /// tcp, udp, icmp, icmpv6 or a number.
    pub proto: String,
    /// Source address[:port].
    pub src: String,
    /// Destination address[:port].
    pub dst: String,
    /// TCP flags (SYN, SYN-ACK, RST...).
    pub flags: Option<String>,
    /// Source -> destination after NAT in this namespace, when a rule rewrote them.
    pub nat: Option<String>,
    /// The packet's conntrack entry in this namespace, when it has one that NATs.
    pub conntrack: Option<CtEntry>,
    /// Every rewrite of the packet here, from that entry, in the kernel's order (the first
    /// packet's are also on the hop of the rule that set them up; later packets and answers
    /// are rewritten by conntrack alone).
    pub rewrites: Vec<NatRewrite>,
    /// IP length in bytes.
    pub length: Option<u32>,
    /// The DF bit of an IPv4 packet.
    pub dont_fragment: bool,
    /// Input interface.
    pub iif: Option<String>,
    /// Output interface (last seen).
    pub oif: Option<String>,
    /// The hooks the packet reached, in order.
    pub hooks: Vec<String>,
    /// The rules (of other tables than ours) that decided something.
    pub hops: Vec<Hop>,
    /// How it ended.
    #[serde(flatten)]
    pub ending: Ending,
    /// The kfree_skb event joined to this packet (by time and protocol: see `join`).
    pub kernel_drop: Option<KernelDrop>,
    /// How the kernel drop was joined, in words.
    pub join: Option<String>,
}

/// What a whole trace saw.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TraceReport {
    /// Every packet, in the order they completed.
    pub packets: Vec<TracedPacket>,
    /// Times the kernel said it dropped trace events (netlink ENOBUFS).
    pub nft_overruns: u64,
    /// Trace events lost: dropped by the kernel on a full socket buffer (SK_MEMINFO_DROPS,
    /// each one counted), plus any the tracer itself had to drop when far behind.
    pub nft_events_lost: u64,
    /// kfree_skb events lost in the ring buffer.
    pub drops_lost: u64,
    /// kfree_skb events that matched no traced packet (other traffic on the machine).
    pub drops_unjoined: u64,
    /// Conntrack entries read (after the kernel's socket filter), dumps included.
    pub conntrack_read: u64,
    /// Notes for the reader (legacy iptables rules that tracing cannot see, ...).
    pub notes: Vec<String>,
    /// What the filter was after DNAT targets were added.
    pub filter: TraceFilter,
}

struct PointState {
    point: TracePoint,
    rules: RuleIndex,
    rules_loaded: Instant,
    ifnames: HashMap<u32, String>,
    sockets: SocketCache,
    /// Its conntrack entries of the traced flows (None: conntrack could not be read there).
    ct: Option<CtWatch>,
}

struct OpenPacket {
    point: usize,
    /// The kernel sent the first event between `first_after` and `first` (read time).
    first_after: f64,
    first: f64,
    /// The kernel sent the last event between `last_after` and `last` (read time).
    last_after: f64,
    last: f64,
    events: Vec<NftTrace>,
}

/// A running trace. Dropping it removes everything it added.
pub(crate) struct Session {
    journal: Journal,
    points: Vec<PointState>,
    readers: Readers,
    drops: Option<std::path::PathBuf>,
    /// The tracefs mount this session made, if it made one.
    mounted: Option<Item>,
    /// When packets were last checked for completion.
    last_flush: f64,
    open: HashMap<(usize, u32), OpenPacket>,
    order: Vec<(usize, u32)>,
    /// Packets ended by a new pass with the same id, waiting for the next flush.
    closed: Vec<OpenPacket>,
    /// Trace ids that continue another packet's walk (br_netfilter), to the packet's key.
    alias: HashMap<(usize, u32), (usize, u32)>,
    /// Every packet known at the current flush, for the kernel drop join, by `last`.
    windows: Vec<Window>,
    /// The longest window among them (last - first_after), to bound a search by time.
    window_span: f64,
    /// (first event time, point, signature) of packets finished in the last seconds.
    recent: std::collections::VecDeque<(f64, usize, (u8, u32, u64))>,
    pending_drops: Vec<KernelDrop>,
    settle: f64,
    report: TraceReport,
    /// Keep every packet in the report (run_around); a streaming trace only returns them.
    keep_packets: bool,
    cleaned: bool,
}

/// How long before/after a packet's events a kernel drop is joined to it. The drop's time is
/// the kernel's; a packet's events carry none, only the window they were read in: the drop
/// must come after the window of its first event opened and soon after its last was read.
const JOIN_BEFORE: f64 = 0.002;
const JOIN_AFTER: f64 = 0.15;
/// Packets are checked for completion at most this often (each check walks every open one).
const FLUSH_EVERY: f64 = 0.02;

fn ifnames(ns: &NetNs) -> HashMap<u32, String> {
    ns.run(|| {
        crate::netns::links::snapshot()
            .map(|s| s.links.into_iter().map(|l| (l.index, l.name)).collect())
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// Ports and addresses that DNAT rules matching `f` rewrite to, in the firewall `fw` of the
/// point named `label`.
fn dnat_targets(
    fw: &FirewallDump,
    label: &str,
    f: &TraceFilter,
) -> (BTreeSet<u16>, BTreeSet<IpAddr>) {
    use crate::nat::model::{Action, Cond, Dir};
    let (mut ports, mut addrs) = (BTreeSet::new(), BTreeSet::new());
    let Ok(rs) = fw.ruleset_all(label) else {
        return (ports, addrs);
    };
    for t in &rs.tables {
        for c in &t.chains {
            for r in &c.rules {
                let Action::Dnat { to } = &r.action else {
                    continue;
                };
                let port_hit = r.matches.iter().any(|m| {
                    !m.negated
                        && matches!(&m.cond, Cond::Port { dir: Dir::Dst, ports: ps }
                            if ps.iter().any(|p| f.ports.iter().any(|&q| p.contains(q))))
                });
                let addr_hit = r.matches.iter().any(|m| {
                    !m.negated
                        && matches!(&m.cond, Cond::Addr { dir: Dir::Dst, net }
                            if f.addrs.iter().any(|a| net.contains(a)))
                });
                if (!f.ports.is_empty() && port_hit) || (f.ports.is_empty() && addr_hit) {
                    if let Some(p) = &to.ports {
                        if p.to.saturating_sub(p.from) < 64 {
                            ports.extend(p.from..=p.to);
                        }
                    }
                    if let Some(a) = to.addr {
                        addrs.insert(a);
                    }
                }
            }
        }
    }
    (ports, addrs)
}

impl Session {
    /// Journal, then add the trace tables and the tracefs instance, and start reading.
    pub(crate) fn start(mut opts: TraceOptions) -> Result<Session, TraceError> {
        if opts.points.is_empty() {
            return Err(TraceError::Setup(
                "no namespace to trace in (give --netns or container:NAME)".into(),
            ));
        }
        // Whatever a dead tracer left behind goes first.
        journal::recover();
        // Each point's rules, read once: from the caller's snapshot, else dumped now.
        let missing: Vec<&NetNs> = opts
            .points
            .iter()
            .filter(|p| p.firewall.is_none())
            .map(|p| &p.ns)
            .collect();
        let mut dumped = firewall::dump_each(&missing).into_iter();
        for p in &mut opts.points {
            if p.firewall.is_none() {
                p.firewall = dumped.next();
            }
        }
        let mut notes = Vec::new();
        if opts.follow_dnat {
            let mut extra = TraceFilter::default();
            for p in &opts.points {
                let fw = p.firewall.as_ref().expect("filled above");
                let (ports, addrs) = dnat_targets(fw, &p.name, &opts.filter);
                extra.ports.extend(ports);
                if !opts.filter.addrs.is_empty() {
                    extra.addrs.extend(addrs);
                }
            }
            let new_ports: Vec<_> = extra
                .ports
                .difference(&opts.filter.ports)
                .copied()
                .collect();
            let new_addrs: Vec<_> = extra
                .addrs
                .difference(&opts.filter.addrs)
                .copied()
                .collect();
            if !new_ports.is_empty() || !new_addrs.is_empty() {
                notes.push(format!(
                    "following DNAT: also tracing {}",
                    new_ports
                        .iter()
                        .map(|p| format!("port {p}"))
                        .chain(new_addrs.iter().map(|a| a.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            opts.filter.ports.extend(extra.ports);
            opts.filter.addrs.extend(extra.addrs);
        }
        let name = table_name();
        let text = table_text(&name, &opts.filter.nft_rules());
        let mut s = Session {
            journal: Journal::new(),
            points: Vec::new(),
            readers: Readers::new(),
            drops: None,
            mounted: None,
            last_flush: 0.0,
            open: HashMap::new(),
            order: Vec::new(),
            closed: Vec::new(),
            alias: HashMap::new(),
            recent: std::collections::VecDeque::new(),
            windows: Vec::new(),
            window_span: 0.0,
            pending_drops: Vec::new(),
            settle: opts.settle.as_secs_f64(),
            report: TraceReport {
                filter: opts.filter.clone(),
                notes,
                ..Default::default()
            },
            keep_packets: false,
            cleaned: false,
        };
        for p in opts.points {
            let fw = p.firewall.clone().unwrap_or_default();
            for legacy in fw.legacy_tables() {
                s.report.notes.push(format!(
                    "{}: {legacy} holds legacy iptables rules; nf_tables tracing cannot see them (their drops still show as kernel drop NETFILTER_DROP)",
                    p.name
                ));
            }
            // The socket first, so no event of the first packet is missed.
            let socket = p.ns.run(TraceSocket::open)?.map_err(|e| {
                TraceError::Setup(format!("nftrace netlink socket in {}: {e}", p.name))
            })?;
            s.journal
                .record(Item::NftTable {
                    ns_path: p.ns.path().to_path_buf(),
                    ns_inode: p.ns.id().inode,
                    family: "inet".into(),
                    name: name.clone(),
                })
                .map_err(|e| {
                    TraceError::Setup(format!(
                        "cannot write the trace journal {}: {e}",
                        s.journal.path().display()
                    ))
                })?;
            ruleset::run_nft(&p.ns, &["-f", "-"], Some(&text)).map_err(TraceError::Setup)?;
            let rules = ruleset::load(&p.ns, &fw).map_err(TraceError::Setup)?;
            let ifn = ifnames(&p.ns);
            // Opened after the table: a flow the first traced packet starts is in the dump or
            // in the events.
            let filter = opts.filter.clone();
            let ct = match p.ns.run(move || CtWatch::open(&filter))? {
                Ok(c) => {
                    if !c.filtered_in_kernel {
                        s.report.notes.push(format!(
                            "{}: conntrack entries are filtered in user space (the filter has no port or IPv4 address the kernel can match)",
                            p.name
                        ));
                    }
                    Some(c)
                }
                Err(e) => {
                    s.report.notes.push(format!(
                        "{}: conntrack cannot be read ({e}): NAT is shown from the headers only",
                        p.name
                    ));
                    None
                }
            };
            s.readers
                .events(s.points.len(), socket)
                .map_err(|e| TraceError::Setup(format!("cannot start a reader thread: {e}")))?;
            s.points.push(PointState {
                point: p,
                rules,
                rules_loaded: Instant::now(),
                ifnames: ifn,
                sockets: None,
                ct,
            });
        }
        if opts.drops {
            if !drops::tracefs_mounted() {
                // Mounted by us, so unmounted by us (or by the next run after a SIGKILL).
                let item = Item::TracefsMount {
                    path: drops::TRACEFS.into(),
                    mnt_ns: journal::mnt_ns(),
                };
                s.journal
                    .record(item.clone())
                    .map_err(|e| TraceError::Setup(format!("trace journal: {e}")))?;
                s.mounted = Some(item);
            }
            let path = drops::instance_path(&format!("nettool-trace-{}", std::process::id()));
            s.journal
                .record(Item::TracefsInstance { path: path.clone() })
                .map_err(|e| TraceError::Setup(format!("trace journal: {e}")))?;
            let tracer = DropTracer::start(&path, &s.report.filter).map_err(TraceError::Setup)?;
            s.drops = Some(path);
            s.readers
                .drops(tracer)
                .map_err(|e| TraceError::Setup(format!("cannot start a reader thread: {e}")))?;
        }
        Ok(s)
    }

    /// Keep every packet in the final report too (what [`run_around`] returns), not only
    /// hand it out from [`Session::poll`].
    pub(crate) fn keep_packets(&mut self, keep: bool) {
        self.keep_packets = keep;
    }

    /// The filter in force (after DNAT targets were added).
    pub(crate) fn filter(&self) -> &TraceFilter {
        &self.report.filter
    }

    /// Notes gathered at start (legacy iptables, DNAT targets added).
    pub(crate) fn notes(&self) -> &[String] {
        &self.report.notes
    }

    /// Wait up to `timeout` for events; return the packets that completed.
    pub(crate) fn poll(&mut self, timeout: Duration) -> Vec<TracedPacket> {
        let first = self.readers.rx.recv_timeout(timeout).ok();
        if let Some(f) = first {
            self.take(f);
        }
        self.read_all();
        if drops::mono_now() - self.last_flush < FLUSH_EVERY {
            return Vec::new();
        }
        self.flush(false)
    }

    /// Take everything the readers have queued, and the conntrack entries that came.
    fn read_all(&mut self) {
        while let Ok(f) = self.readers.rx.try_recv() {
            self.take(f);
        }
        for p in &mut self.points {
            if let Some(ct) = &mut p.ct {
                ct.drain();
            }
        }
    }

    fn take(&mut self, feed: Feed) {
        match feed {
            Feed::Drops(d) => {
                self.pending_drops.extend(d);
                // Kept in time order (trace_pipe merges the CPUs in order already, so this is
                // cheap): the join looks drops up by time.
                if !self.pending_drops.is_sorted_by(|a, b| a.time <= b.time) {
                    self.pending_drops.sort_by(|a, b| a.time.total_cmp(&b.time));
                }
            }
            Feed::Events(i, events) => {
                self.readers.consumed(events.len());
                for e in events {
                    self.add_event(i, e);
                }
            }
        }
    }

    fn add_event(&mut self, i: usize, stamped: Stamped) {
        let Stamped {
            after,
            at,
            trace: t,
        } = stamped;
        let key = (i, t.id);
        // The id is a hash of the skb address: a later packet can reuse it.
        // Our marking rule is the first event of every pass, so it starts
        // a new packet when one with this id is still open.
        let starts_pass = is_our_table(&t.table)
            && matches!(t.chain.as_str(), "pre" | "out")
            && t.kind == Some(TraceKind::Rule)
            && t.rule_handle.is_some();
        // A pass is over once the packet reached a later hook or a rule
        // dropped it; prerouting twice in a row is br_netfilter, one pass, and the same
        // headers. Other headers are another packet at the same address: one dropped by the
        // kernel right after prerouting (PKT_TOO_BIG) and its retransmission.
        let over = self.open.get(&key).is_some_and(|p| {
            p.events.iter().any(|e| {
                (is_our_table(&e.table) && e.chain.ends_with("_end")) || e.verdict == Some(0)
            }) || (starts_pass
                && p.events
                    .iter()
                    .find(|e| !e.network_header.is_empty())
                    .is_some_and(|e| {
                        e.network_header != t.network_header
                            || e.transport_header != t.transport_header
                    }))
        });
        if starts_pass && over {
            if let Some(old) = self.open.remove(&key) {
                self.closed.push(old);
            }
        }
        // br_netfilter runs prerouting in the bridge, then the rest of
        // the walk with another id (the id hashes the input interface):
        // a walk that starts without our mark continues an open one.
        let key = match self.alias.get(&key) {
            Some(k) => *k,
            None if !starts_pass && !self.open.contains_key(&key) => match self.continued(i, &t) {
                Some(k) => {
                    self.alias.insert(key, k);
                    k
                }
                None => key,
            },
            None => key,
        };
        let e = self.open.entry(key).or_insert_with(|| OpenPacket {
            point: i,
            first_after: after,
            first: at,
            last_after: after,
            last: at,
            events: Vec::new(),
        });
        if e.events.is_empty() {
            self.order.push(key);
        }
        e.last_after = after;
        e.last = at;
        e.events.push(t);
    }

    /// The open packet in point `i` that `t` continues: one that has only been through
    /// prerouting, with the same protocol, length and TCP sequence numbers (or IPv4 id).
    fn continued(&self, i: usize, t: &NftTrace) -> Option<(usize, u32)> {
        let want = signature(&t.network_header, &t.transport_header)?;
        self.open
            .iter()
            .filter(|(k, p)| {
                k.0 == i
                    && !p.events.iter().any(|e| {
                        (is_our_table(&e.table) && e.chain.ends_with("_end"))
                            || e.verdict == Some(0)
                    })
            })
            .filter(|(_, p)| {
                p.events
                    .iter()
                    .find(|e| !e.network_header.is_empty())
                    .and_then(|e| signature(&e.network_header, &e.transport_header))
                    == Some(want)
            })
            .max_by(|a, b| a.1.last.total_cmp(&b.1.last))
            .map(|(k, _)| *k)
    }

    /// Complete the packets that settled (all of them with `all`), join drops, forget old drops.
    fn flush(&mut self, all: bool) -> Vec<TracedPacket> {
        let now = drops::mono_now();
        self.last_flush = now;
        let mut done = Vec::new();
        let mut keep = Vec::new();
        let mut kept = std::collections::HashSet::new();
        // Closed packets wait for the join window like open ones.
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.closed)
            .into_iter()
            .partition(|p| all || now - p.last >= self.settle);
        self.closed = waiting;
        done.extend(ready);
        for key in std::mem::take(&mut self.order) {
            let ready = self
                .open
                .get(&key)
                .is_some_and(|p| all || now - p.last >= self.settle);
            if ready {
                if let Some(p) = self.open.remove(&key) {
                    done.push(p);
                }
            } else if self.open.contains_key(&key) && kept.insert(key) {
                // A key closed and opened again is listed twice: keep it once.
                keep.push(key);
            }
        }
        self.order = keep;
        // Every packet of this flush is known to every other: a packet seen again in another
        // namespace went on, so no kernel drop is joined to it.
        for p in &done {
            if let Some(sig) = packet_signature(p) {
                self.recent.push_back((p.first, p.point, sig));
            }
        }
        while self.recent.front().is_some_and(|r| r.0 < now - 5.0) {
            self.recent.pop_front();
        }
        // Each kernel drop goes to the packet whose last event is nearest: finishing packets
        // in order must not let an earlier one take a later one's drop.
        // No drop waiting: nothing to join, and no window to build (the common case).
        self.windows = if self.pending_drops.is_empty() {
            Vec::new()
        } else {
            done.iter()
                .chain(self.open.values())
                .chain(self.closed.iter())
                .map(|p| Window {
                    point: p.point,
                    first_after: p.first_after,
                    first: p.first,
                    last_after: p.last_after,
                    last: p.last,
                    hooks: reached_hooks(p),
                    rule_dropped: p.events.iter().any(|e| e.verdict == Some(0)),
                    ends: packet_ends(p, self.points[p.point].ct.as_ref()),
                    ethertype: p
                        .events
                        .iter()
                        .find_map(|e| e.network_header.first())
                        .map(|b| if b >> 4 == 6 { 0x86dd } else { 0x0800 }),
                })
                .collect()
        };
        // Sorted by the end of their send window, so a drop's rivals are found by time.
        self.windows.sort_by(|a, b| a.last.total_cmp(&b.last));
        self.window_span = self
            .windows
            .iter()
            .map(|w| w.last - w.first_after)
            .fold(0.0, f64::max);
        let mut out = Vec::new();
        for p in done {
            let pkt = self.finish_packet(p);
            out.push(pkt);
        }
        // Drops older than every open packet can no longer be joined.
        let oldest_open = self
            .open
            .values()
            .map(|p| p.first_after)
            .fold(f64::INFINITY, f64::min);
        let horizon = (now - self.settle - JOIN_AFTER).min(oldest_open - JOIN_BEFORE);
        let before = self.pending_drops.len();
        self.pending_drops.retain(|d| d.time >= horizon);
        self.report.drops_unjoined += (before - self.pending_drops.len()) as u64;
        if all {
            self.report.drops_unjoined += self.pending_drops.len() as u64;
            self.pending_drops.clear();
        }
        if self.keep_packets {
            self.report.packets.extend(out.iter().cloned());
        }
        out
    }

    fn finish_packet(&mut self, p: OpenPacket) -> TracedPacket {
        let point = &mut self.points[p.point];
        // A rule added after start: read the rule set again (at most once a second).
        let missing = p.events.iter().any(|e| {
            e.rule_handle.is_some_and(|h| {
                !is_our_table(&e.table)
                    && point
                        .rules
                        .rule(family_name(e.family), &e.table, &e.chain, h)
                        .is_none()
            })
        });
        if missing && point.rules_loaded.elapsed() > Duration::from_secs(1) {
            // The rules changed since the start: read them again, through the one loader.
            let fw = firewall::dump(&point.point.ns);
            if let Ok(r) = ruleset::load(&point.point.ns, &fw) {
                point.rules = r;
            }
            point.rules_loaded = Instant::now();
        }
        let first = &p.events[0];
        let header = p
            .events
            .iter()
            .find(|e| !e.network_header.is_empty())
            .map(|e| parse_headers(&e.network_header, &e.transport_header))
            .unwrap_or_default();
        let name = |i: Option<u32>| {
            i.map(|i| {
                point
                    .ifnames
                    .get(&i)
                    .cloned()
                    .unwrap_or_else(|| format!("if{i}"))
            })
        };
        // The same packet after NAT: the headers of its last event that carries them.
        let after = p
            .events
            .iter()
            .rev()
            .find(|e| !e.network_header.is_empty())
            .map(|e| parse_headers(&e.network_header, &e.transport_header))
            .filter(|h| h.src != header.src || h.dst != header.dst)
            .map(|h| format!("{} -> {}", h.src, h.dst));
        let iif = name(p.events.iter().find_map(|e| e.iif));
        let oif = name(p.events.iter().rev().find_map(|e| e.oif));
        let mut hooks: Vec<String> = Vec::new();
        let mut hops = Vec::new();
        let mut current_hook: Option<String> = None;
        let mut dropped: Option<Ending> = None;
        for e in &p.events {
            let fam = family_name(e.family);
            if let Some(h) = point.rules.hook(fam, &e.table, &e.chain) {
                current_hook = Some(h.to_string());
            } else if is_our_table(&e.table) {
                current_hook = Some(
                    match e.chain.as_str() {
                        "pre" => "prerouting",
                        "out" => "output",
                        "input_end" => "input",
                        "forward_end" => "forward",
                        "postrouting_end" => "postrouting",
                        other => other,
                    }
                    .to_string(),
                );
            }
            if let Some(h) = &current_hook {
                if hooks.last() != Some(h) {
                    hooks.push(h.clone());
                }
            }
            if is_our_table(&e.table) {
                continue;
            }
            // A "rule" event without a handle is the fall-through at a chain's end: no news.
            if e.kind == Some(TraceKind::Rule) && e.rule_handle.is_none() && e.verdict == Some(-1) {
                continue;
            }
            let rule = e
                .rule_handle
                .and_then(|h| point.rules.rule(fam, &e.table, &e.chain, h));
            let verdict = e.verdict_word().unwrap_or_else(|| "?".into());
            let engine = ruleset::engine_of(&e.table, &e.chain);
            if verdict == "drop" && dropped.is_none() {
                dropped = Some(Ending::DroppedByRule {
                    chain: format!("{fam} {} {}", e.table, e.chain),
                    handle: e.rule_handle,
                    rule: rule.map(|r| r.text.clone()),
                    iptables: rule.and_then(|r| r.iptables.clone()),
                    engine,
                });
            }
            hops.push(Hop {
                hook: current_hook.clone(),
                family: fam.to_string(),
                table: e.table.clone(),
                chain: e.chain.clone(),
                kind: e.kind.unwrap_or(TraceKind::Other),
                handle: e.rule_handle,
                rule: rule.map(|r| r.text.clone()),
                iptables_nft: rule.is_some_and(|r| r.iptables_nft),
                iptables: rule.and_then(|r| r.iptables.clone()),
                verdict,
                engine,
                nat: None,
            });
        }
        // NAT from the packet's conntrack entry, placed on the rule that set it up.
        let mut rewrites = match (&point.ct, &header.tuple) {
            (Some(ct), Some(seen)) => ct
                .lookup(seen)
                .map(|flow| conntrack::rewrites(flow, seen, &hooks))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for r in &mut rewrites {
            let words = r.kind.rule_words();
            let by = hops.iter_mut().rev().find(|h| {
                h.hook.as_deref() == Some(r.hook.as_str())
                    && h.verdict == "accept"
                    && h.rule
                        .iter()
                        .chain(h.iptables.iter())
                        .any(|t| words.iter().any(|w| t.to_lowercase().contains(w)))
            });
            if let Some(h) = by {
                r.by_rule = true;
                h.nat = Some(r.clone());
            }
        }
        let conntrack = rewrites.first().map(|r| r.conntrack.clone());
        // Join a kernel drop: the same protocol, between just before the first event and a
        // little after the last (the tracepoint carries no namespace and no tuple).
        let ethertype = if header.family == "ipv6" {
            0x86dd
        } else {
            0x0800
        };
        let ends = if self.pending_drops.is_empty() {
            Vec::new()
        } else {
            packet_ends(&p, point.ct.as_ref())
        };
        // Cheap tests first: most packets have no kernel drop anywhere near them.
        // Drops are in time order: only those inside this packet's window are looked at.
        let lo = self
            .pending_drops
            .partition_point(|d| d.time < p.first_after - JOIN_BEFORE);
        let hi = self
            .pending_drops
            .partition_point(|d| d.time <= p.last + JOIN_AFTER);
        let mut candidates: Vec<usize> = self.pending_drops[lo..hi.max(lo)]
            .iter()
            .enumerate()
            .map(|(i, d)| (lo + i, d))
            .filter(|(_, d)| {
                d.protocol == ethertype
                    && d.time >= p.first_after - JOIN_BEFORE
                    && d.time <= p.last + JOIN_AFTER
                    && stage_rank(&d.reason, &hooks, dropped.is_some()).is_some()
                    && answer_fits(d, &ends) != Some(false)
            })
            .map(|(i, _)| i)
            .collect();
        // Only a packet that passed postrouting can have left for another namespace; one seen
        // again there went on, so no drop is its.
        if !candidates.is_empty() && hooks.iter().any(|h| h == "postrouting") {
            if let Some(sig) = packet_signature(&p) {
                let elsewhere = |point: usize, first: f64, other: Option<(u8, u32, u64)>| {
                    point != p.point && (first - p.first).abs() < 1.0 && other == Some(sig)
                };
                let went_on = self.recent.iter().any(|r| elsewhere(r.1, r.0, Some(r.2)))
                    || self
                        .open
                        .values()
                        .chain(self.closed.iter())
                        .any(|o| elsewhere(o.point, o.first, packet_signature(o)));
                if went_on {
                    candidates.clear();
                }
            }
        }
        // A drop that fits another packet better (named by the answer sent about its skb, then
        // its stage, then its time) is that packet's.
        let score = |d: &KernelDrop,
                     ends: &[(Endpoint, Endpoint)],
                     hooks: &[String],
                     rule_dropped: bool,
                     after: f64,
                     at: f64| {
            let named = match answer_fits(d, ends) {
                Some(false) => return None,
                Some(true) => 0u8,
                None => 1,
            };
            stage_rank(&d.reason, hooks, rule_dropped).map(|r| (named, r, gap(d.time, after, at)))
        };
        let is_dropped = dropped.is_some();
        candidates.retain(|&i| {
            let d = &self.pending_drops[i];
            let Some(mine) = score(d, &ends, &hooks, is_dropped, p.last_after, p.last) else {
                return false;
            };
            // Windows whose join range holds d.time: last >= t - JOIN_AFTER, and (since no
            // window is longer than window_span) last <= t + span + JOIN_BEFORE.
            let from = self
                .windows
                .partition_point(|w| w.last < d.time - JOIN_AFTER);
            let to = self
                .windows
                .partition_point(|w| w.last <= d.time + self.window_span + JOIN_BEFORE);
            !self.windows[from..to.max(from)].iter().any(|w| {
                (w.point, w.first, w.last) != (p.point, p.first, p.last)
                    && w.ethertype == Some(d.protocol)
                    && d.time >= w.first_after - JOIN_BEFORE
                    && d.time <= w.last + JOIN_AFTER
                    && score(d, &w.ends, &w.hooks, w.rule_dropped, w.last_after, w.last)
                        .is_some_and(|theirs| theirs < mine)
            })
        });
        let pick = candidates.iter().copied().min_by(|&a, &b| {
            let sa = score(
                &self.pending_drops[a],
                &ends,
                &hooks,
                is_dropped,
                p.last_after,
                p.last,
            );
            let sb = score(
                &self.pending_drops[b],
                &ends,
                &hooks,
                is_dropped,
                p.last_after,
                p.last,
            );
            sa.partial_cmp(&sb).unwrap_or(std::cmp::Ordering::Equal)
        });
        let (kernel_drop, join) = match pick {
            Some(i) => {
                let d = self.pending_drops.remove(i);
                let g = gap(d.time, p.last_after, p.last);
                let when = if g > 0.0 {
                    format!("{:.1} ms from the packet's last trace event", g * 1000.0)
                } else {
                    "while the packet's last trace event was in flight".to_string()
                };
                let join = match &d.answer {
                    Some(a) if answer_fits(&d, &ends) == Some(true) => format!(
                        "kfree_skb of the skb the kernel answered with {} {} naming this packet's addresses (the same skb address in both events), {when}",
                        if a.what.starts_with('I') { "an" } else { "a" },
                        a.what
                    ),
                    _ => format!(
                        "kfree_skb {when}, same protocol, a reason that happens after the hooks it reached; {} candidate(s) (the tracepoint carries no namespace or addresses)",
                        candidates.len()
                    ),
                };
                (Some(d), Some(join))
            }
            None => (None, None),
        };
        let last_hook = hooks.last().cloned();
        let ending = if let Some(d) = dropped {
            d
        } else if let Some(d) = &kernel_drop {
            Ending::DroppedByKernel {
                reason: d.reason.clone(),
                meaning: drops::explain_reason(&d.reason).to_string(),
                location: d.location.clone(),
            }
        } else {
            match last_hook.as_deref() {
                Some("input") => Ending::Delivered {
                    receiver: receiver(&point.point.ns, &mut point.sockets, &header),
                },
                Some("postrouting") => Ending::Sent { oif: oif.clone() },
                Some("forward") => Ending::Forwarded { oif: oif.clone() },
                _ => Ending::Vanished { after: last_hook },
            }
        };
        TracedPacket {
            time: p.first,
            trace_id: format!("{:08x}", first.id),
            netns: point.point.name.clone(),
            container: point.point.container.clone(),
            family: header.family,
            proto: header.proto,
            src: header.src,
            dst: header.dst,
            flags: header.flags,
            nat: after,
            conntrack,
            rewrites,
            length: header.length,
            dont_fragment: header.df,
            iif,
            oif,
            hooks,
            hops,
            ending,
            kernel_drop,
            join,
        }
    }

    /// Complete every open packet and return them (for the end of a trace).
    pub(crate) fn drain(&mut self) -> Vec<TracedPacket> {
        // Events may still be queued for the last packet: read once more after a short wait.
        std::thread::sleep(Duration::from_millis(50));
        self.read_all();
        self.flush(true)
    }

    /// Stop: complete open packets, remove everything added, return the whole report.
    pub(crate) fn finish(mut self) -> Result<TraceReport, TraceError> {
        self.drain();
        let errs = self.cleanup();
        let report = std::mem::take(&mut self.report);
        if errs.is_empty() {
            Ok(report)
        } else {
            Err(TraceError::Setup(errs.join("; ")))
        }
    }

    fn cleanup(&mut self) -> Vec<String> {
        if self.cleaned {
            return Vec::new();
        }
        self.cleaned = true;
        let mut errs = Vec::new();
        let (stats, tracer) = self.readers.stop();
        self.report.conntrack_read = self
            .points
            .iter()
            .filter_map(|p| p.ct.as_ref())
            .map(|c| c.read)
            .sum();
        self.report.nft_overruns = stats.overruns;
        self.report.nft_events_lost = stats.kernel_dropped + stats.backlog_dropped;
        if let Some(path) = self.drops.take() {
            self.report.drops_lost = drops::lost(&path);
            let done = match tracer {
                Some(t) => t.stop(),
                None => drops::remove_instance(&path),
            };
            if let Err(e) = done {
                errs.push(e);
            }
        }
        let name = table_name();
        for p in &self.points {
            if let Err(e) = ruleset::run_nft(&p.point.ns, &["delete", "table", "inet", &name], None)
            {
                if !e.contains("No such file") {
                    errs.push(e);
                }
            }
        }
        let mut left = Vec::new();
        if let Some(m) = self.mounted.take() {
            // Busy: another tracer reads it now; the next run after that one unmounts it.
            if let Err(e) = journal::undo(&m) {
                self.report.notes.push(format!(
                    "{e}; left mounted for the next nettool trace to remove"
                ));
                left.push(m);
            }
        }
        if errs.is_empty() {
            if left.is_empty() {
                self.journal.finish();
            } else if let Err(e) = self.journal.keep_only(left) {
                errs.push(format!("trace journal: {e}"));
            }
        }
        errs
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

/// Run `f` traced when tracing can start, untraced when it cannot: `f` runs exactly once
/// either way, and the trace's outcome (its report, or why there is none) comes beside.
pub(crate) fn around<T: Send>(
    opts: TraceOptions,
    f: impl FnOnce() -> T + Send,
) -> (T, Result<TraceReport, TraceError>) {
    let settle = opts.settle;
    let mut s = match Session::start(opts) {
        Ok(s) => s,
        Err(e) => return (f(), Err(e)),
    };
    s.keep_packets(true);
    // f runs on another thread so events are read while it waits on the network.
    let value = std::thread::scope(|scope| {
        let h = scope.spawn(f);
        while !h.is_finished() {
            s.poll(Duration::from_millis(50));
        }
        h.join()
    });
    let value = match value {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    };
    let until = Instant::now() + settle;
    while Instant::now() < until {
        s.poll(Duration::from_millis(50));
    }
    (value, s.finish())
}

/// How well a drop with `reason` fits a packet that reached `hooks` (and was or was not
/// dropped by a rule): Some(0) when the kernel drops for that reason right after the packet's
/// last hook, Some(1) when it can happen there, None when it cannot. Where the kernel drops
/// for a reason fixes what the packet can have reached: this keeps a drop from being joined
/// to another packet of the same flow read in the same batch.
fn stage_rank(reason: &str, hooks: &[String], rule_dropped: bool) -> Option<u8> {
    let reached = |h: &str| hooks.iter().any(|x| x == h);
    let last = hooks.last().map(String::as_str);
    let fits = |exact: bool, possible: bool| match (exact, possible) {
        (true, _) => Some(0),
        (false, true) => Some(1),
        _ => None,
    };
    match reason {
        // Without a traced rule drop (a legacy iptables rule): only a packet that stopped
        // inside a hook, never one delivered or sent (someone else's DROP on a busy machine).
        "NETFILTER_DROP" => fits(rule_dropped, !matches!(last, Some("input" | "postrouting"))),
        "QUEUE_PURGE" => None,
        _ if rule_dropped => None,
        // Decided by the input route lookup, right after prerouting.
        "IP_RPFILTER" | "IP_INNOROUTES" | "IP_INADDRERRORS" | "IP_INVALID_SOURCE"
        | "IP_LOCAL_SOURCE" | "IP_LOCALNET" | "IP_INVALID_DEST" | "OTHERHOST" | "IP_CSUM"
        | "IP_INHDR" => fits(last == Some("prerouting"), false),
        // In ip_forward before the forward hook; or a GSO packet split after postrouting.
        "PKT_TOO_BIG" => fits(
            last == Some("prerouting"),
            !reached("input") && last == Some("postrouting"),
        ),
        // Decided by the transport layer after input.
        r if r.starts_with("TCP_") || r.starts_with("SOCKET_") || r == "NO_SOCKET" => {
            fits(last == Some("input"), false)
        }
        // Neighbour and queueing drops come after postrouting.
        r if r.starts_with("NEIGH_") || r.starts_with("QDISC_") => {
            fits(last == Some("postrouting"), false)
        }
        _ => Some(1),
    }
}

/// How far time `t` is from the window [after, at] an event was sent in (0 inside it).
fn gap(t: f64, after: f64, at: f64) -> f64 {
    if t < after {
        after - t
    } else if t > at {
        t - at
    } else {
        0.0
    }
}

fn family_name(f: u8) -> &'static str {
    match f {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "unknown",
    }
}

#[derive(Debug, Default, Clone)]
struct Headers {
    family: String,
    proto: String,
    src: String,
    dst: String,
    dst_ip: Option<IpAddr>,
    dst_port: Option<u16>,
    src_addr: Option<std::net::SocketAddr>,
    /// (source, destination) as (address, port when it has one).
    ends: Option<(Endpoint, Endpoint)>,
    flags: Option<String>,
    length: Option<u32>,
    df: bool,
    /// The conntrack tuple of these headers (ICMP echo: its id on both ports).
    tuple: Option<crate::netns::conntrack::Tuple>,
}

/// The ends of a packet in one namespace: its headers at its first and at its last event,
/// and every form NAT gives them by its conntrack entry there (an skb dropped between two
/// rewrites carries neither the first nor the last headers).
fn packet_ends(p: &OpenPacket, ct: Option<&CtWatch>) -> Vec<(Endpoint, Endpoint)> {
    let with_headers = || p.events.iter().filter(|e| !e.network_header.is_empty());
    let seen: Vec<Headers> = [with_headers().next(), with_headers().next_back()]
        .into_iter()
        .flatten()
        .map(|e| parse_headers(&e.network_header, &e.transport_header))
        .collect();
    let mut ends: Vec<_> = seen.iter().filter_map(|h| h.ends).collect();
    if let Some(flow) = seen
        .first()
        .and_then(|h| h.tuple.as_ref())
        .and_then(|t| ct?.lookup(t))
    {
        ends.extend(conntrack::ends_of(flow));
    }
    ends
}

/// Whether a kernel drop's answer (the reset or ICMP error sent about the very skb) names a
/// packet with these ends: None when the drop came with no answer.
fn answer_fits(d: &KernelDrop, ends: &[(Endpoint, Endpoint)]) -> Option<bool> {
    d.answer
        .as_ref()
        .map(|a| ends.iter().any(|(s, t)| a.names(*s, *t)))
}

/// What the kernel drop join needs to know of a packet.
struct Window {
    point: usize,
    first_after: f64,
    first: f64,
    last_after: f64,
    last: f64,
    hooks: Vec<String>,
    rule_dropped: bool,
    ethertype: Option<u16>,
    ends: Vec<(Endpoint, Endpoint)>,
}

/// The hooks a packet reached, from our own chains' events (one on every hook).
fn reached_hooks(p: &OpenPacket) -> Vec<String> {
    p.events
        .iter()
        .filter(|e| is_our_table(&e.table))
        .filter_map(|e| match e.chain.as_str() {
            "pre" => Some("prerouting"),
            "out" => Some("output"),
            "input_end" => Some("input"),
            "forward_end" => Some("forward"),
            "postrouting_end" => Some("postrouting"),
            _ => None,
        })
        .map(str::to_string)
        .collect()
}

/// The signature of an open packet (from its first event with headers).
fn packet_signature(p: &OpenPacket) -> Option<(u8, u32, u64)> {
    p.events
        .iter()
        .find(|e| !e.network_header.is_empty())
        .and_then(|e| signature(&e.network_header, &e.transport_header))
}

/// What stays the same for one packet across NAT: protocol, length, and the TCP sequence and
/// acknowledgement numbers (the IPv4 id for other protocols).
fn signature(net: &[u8], transport: &[u8]) -> Option<(u8, u32, u64)> {
    let (proto, len, l4off, id) = match net.first()? >> 4 {
        4 if net.len() >= 20 => (
            net[9],
            u16::from_be_bytes([net[2], net[3]]) as u32,
            ((net[0] & 0xf) as usize) * 4,
            u16::from_be_bytes([net[4], net[5]]) as u64,
        ),
        6 if net.len() >= 40 => (net[6], u16::from_be_bytes([net[4], net[5]]) as u32, 40, 0),
        _ => return None,
    };
    let l4: &[u8] = if transport.len() >= 12 {
        transport
    } else {
        net.get(l4off..).unwrap_or(&[])
    };
    let key = if proto == 6 && l4.len() >= 12 {
        u64::from_be_bytes(l4[4..12].try_into().ok()?)
    } else {
        id
    };
    Some((proto, len, key))
}

fn tcp_flags(b: u8) -> String {
    let mut f = Vec::new();
    for (bit, name) in [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
    ] {
        if b & bit != 0 {
            f.push(name);
        }
    }
    f.join("|")
}

/// Addresses, protocol and ports from the headers the kernel copied into the trace.
fn parse_headers(net: &[u8], transport: &[u8]) -> Headers {
    let mut h = Headers::default();
    let Some(&b0) = net.first() else {
        return h;
    };
    let (src, dst, proto, l4off): (IpAddr, IpAddr, u8, usize) = match b0 >> 4 {
        4 if net.len() >= 20 => {
            let ihl = ((b0 & 0xf) as usize) * 4;
            h.family = "ipv4".into();
            h.length = Some(u16::from_be_bytes([net[2], net[3]]) as u32);
            h.df = net[6] & 0x40 != 0;
            let s: [u8; 4] = net[12..16].try_into().unwrap_or([0; 4]);
            let d: [u8; 4] = net[16..20].try_into().unwrap_or([0; 4]);
            (s.into(), d.into(), net[9], ihl)
        }
        6 if net.len() >= 40 => {
            h.family = "ipv6".into();
            h.length = Some(u16::from_be_bytes([net[4], net[5]]) as u32 + 40);
            let s: [u8; 16] = net[8..24].try_into().unwrap_or([0; 16]);
            let d: [u8; 16] = net[24..40].try_into().unwrap_or([0; 16]);
            (s.into(), d.into(), net[6], 40)
        }
        _ => return h,
    };
    h.proto = match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    };
    let l4: &[u8] = if transport.len() >= 4 {
        transport
    } else {
        net.get(l4off..).unwrap_or(&[])
    };
    let ports = matches!(proto, 6 | 17 | 132) && l4.len() >= 4;
    let fmt = |a: IpAddr, p: Option<u16>| match (a, p) {
        (IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let (sp, dp) = if ports {
        (
            Some(u16::from_be_bytes([l4[0], l4[1]])),
            Some(u16::from_be_bytes([l4[2], l4[3]])),
        )
    } else {
        (None, None)
    };
    if proto == 6 && l4.len() >= 14 {
        h.flags = Some(tcp_flags(l4[13]));
    }
    if matches!(proto, 1 | 58) && l4.len() >= 2 {
        h.flags = Some(format!("type {} code {}", l4[0], l4[1]));
    }
    let echo_id = (matches!(
        (proto, l4.first()),
        (1, Some(0 | 8)) | (58, Some(128 | 129))
    ) && l4.len() >= 6)
        .then(|| u16::from_be_bytes([l4[4], l4[5]]));
    h.tuple = match (sp, dp, echo_id) {
        (Some(sport), Some(dport), _) => Some((sport, dport)),
        (_, _, Some(id)) => Some((id, id)),
        _ => None,
    }
    .map(|(sport, dport)| crate::netns::conntrack::Tuple {
        proto,
        src,
        sport,
        dst,
        dport,
    });
    h.src = fmt(src, sp);
    h.dst = fmt(dst, dp);
    h.dst_ip = Some(dst);
    h.ends = Some(((src, sp), (dst, dp)));
    h.dst_port = dp;
    h.src_addr = sp.map(|p| std::net::SocketAddr::new(src, p));
    h
}

/// The socket in `ns` that a delivered packet went to: a connected socket for the exact pair,
/// else a listener on the port.
fn receiver(ns: &NetNs, cache: &mut SocketCache, h: &Headers) -> Option<Receiver> {
    use crate::netns::sockets::Proto;
    let want = match h.proto.as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    // The socket list (a sock_diag dump and a /proc scan for owners) is read at most every
    // 100 ms: at thousands of packets a second, once per packet would be the tracer's whole
    // cost. A miss in a list older than that reads it again (a connection just made).
    let fresh = |c: &SocketCache| {
        c.as_ref()
            .is_some_and(|(t, _)| t.elapsed() < Duration::from_millis(100))
    };
    if cache.is_none() {
        refresh_sockets(ns, cache);
    }
    let hit = cache
        .as_ref()
        .and_then(|(_, socks)| receiving_socket(socks, want, h));
    let hit = match hit {
        Some(r) => Some(r),
        None if !fresh(cache) => {
            refresh_sockets(ns, cache);
            cache
                .as_ref()
                .and_then(|(_, socks)| receiving_socket(socks, want, h))
        }
        None => None,
    };
    hit
}

/// The sockets of one namespace and when they were read.
type SocketCache = Option<(Instant, Vec<crate::netns::sockets::Socket>)>;

fn refresh_sockets(ns: &NetNs, cache: &mut SocketCache) {
    use crate::netns::sockets::{self, Which};
    if let Ok(Ok(socks)) = ns.run(|| sockets::list(Which::All)) {
        *cache = Some((Instant::now(), socks));
    }
}

fn receiving_socket(
    socks: &[crate::netns::sockets::Socket],
    want: crate::netns::sockets::Proto,
    h: &Headers,
) -> Option<Receiver> {
    use crate::netns::sockets::{self, Proto};
    let (ip, port) = (h.dst_ip?, h.dst_port?);
    let syn = h.flags.as_deref() == Some("SYN");
    // A TCP SYN goes to the listener; anything else to the socket connected to that peer
    // (UDP: the bound socket). Looked up when the packet completes: a connection already
    // closed has no socket left to name.
    let hit = socks
        .iter()
        .filter(|s| s.proto == want && s.local.port() == port)
        .filter(|s| s.local.ip() == ip || sockets::is_wildcard(&s.local.ip()))
        .filter(|s| match want {
            Proto::Tcp if syn => s.is_listening(),
            Proto::Tcp => !s.is_listening() && Some(s.remote) == h.src_addr,
            _ => true,
        })
        .min_by_key(|s| (s.owners.is_empty(), Some(s.remote) != h.src_addr))?;
    Some(Receiver {
        local: hit.local.to_string(),
        state: hit.state.clone(),
        processes: hit
            .owners
            .iter()
            .map(|o| format!("{}[{}]", o.comm, o.pid))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn filter_words() {
        let (f, c) = TraceFilter::parse(&words("tcp:8080 10.0.0.2 container:web")).unwrap();
        assert_eq!(f.proto, Some(L4::Tcp));
        assert!(f.ports.contains(&8080));
        assert!(f.addrs.contains(&"10.0.0.2".parse().unwrap()));
        assert_eq!(c, vec!["web".to_string()]);
        assert!(TraceFilter::parse(&words("tcp:x")).is_err());
        assert!(TraceFilter::parse(&words("tcp udp")).is_err());
        assert!(TraceFilter::parse(&words("icmp 80")).is_err());
        assert!(TraceFilter::parse(&words("0")).is_err());
    }

    #[test]
    fn nft_rules_match_both_directions() {
        let (f, _) = TraceFilter::parse(&words("tcp:8080 80")).unwrap();
        assert_eq!(
            f.nft_rules(),
            vec![
                "meta l4proto tcp th dport { 80, 8080 } meta nftrace set 1",
                "meta l4proto tcp th sport { 80, 8080 } meta nftrace set 1"
            ]
        );
        let (f, _) = TraceFilter::parse(&words("10.1.1.1 fd00::1 53")).unwrap();
        let r = f.nft_rules();
        assert!(r.contains(
            &"ip daddr 10.1.1.1 meta l4proto { tcp, udp, sctp } th dport 53 meta nftrace set 1"
                .to_string()
        ));
        assert!(r.contains(
            &"ip6 saddr fd00::1 meta l4proto { tcp, udp, sctp } th sport 53 meta nftrace set 1"
                .to_string()
        ));
        assert_eq!(
            TraceFilter::default().nft_rules(),
            vec!["meta nftrace set 1"]
        );
    }

    #[test]
    fn headers_of_a_syn() {
        let mut ip = vec![
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip.extend_from_slice(&[0xc2, 0x50, 0x1f, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02]);
        let h = parse_headers(&ip, &[]);
        assert_eq!(h.src, "10.0.0.1:49744");
        assert_eq!(h.dst, "10.0.0.2:8080");
        assert_eq!(h.flags.as_deref(), Some("SYN"));
        assert!(h.df);
        assert_eq!(parse_headers(&[0x45, 1], &[]).src, "");
    }
}
