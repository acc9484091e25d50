//! NAT rewrites from conntrack: each traced namespace gets a ctnetlink socket subscribed to new
//! and updated entries (after a dump of the table as it was), with a classic BPF socket filter
//! that lets through only entries whose ports (or IPv4 addresses) match the trace filter, so a
//! busy host's other flows never reach the tracer. A traced packet's headers before NAT are
//! looked up in that namespace's entries: the original and reply tuples then say what the
//! kernel rewrote, where, and in which direction; nothing is guessed from later headers.
//!
//! The entries are decoded by [`crate::netns::conntrack`] (one decoder for the crate).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use serde::Serialize;

use super::drops::Endpoint;
use super::TraceFilter;
use crate::netns::conntrack::{Entry as CtFlow, Events as CtEvents, Tuple};

/// Entries kept per namespace; past this the oldest are forgotten (a trace of a port on a host
/// with a storm of new flows must not grow without bound).
const MAX_ENTRIES: usize = 65_536;

/// The conntrack entry of a traced packet, and which of its directions the packet went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct CtEntry {
    /// The original tuple: as the first packet of the flow left its sender, before NAT.
    pub original: String,
    /// The reply tuple: as answers travel before the reverse NAT (its source is the DNAT
    /// target, its destination the SNAT address).
    pub reply: String,
    /// "original" or "reply": the direction of this packet.
    pub direction: String,
}

/// What NAT did to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NatKind {
    /// The destination of an original-direction packet was rewritten (DNAT, REDIRECT).
    Dnat,
    /// The source of an original-direction packet was rewritten (SNAT, MASQUERADE).
    Snat,
    /// An answer's source was put back to the address the client asked (reply of a DNAT).
    DnatReply,
    /// An answer's destination was put back to the client's real address (reply of an SNAT).
    SnatReply,
}

impl NatKind {
    /// The rule text of a rule that sets up this kind of NAT holds one of these (iptables'
    /// target or nft's statement, lower-cased).
    pub(crate) fn rule_words(self) -> &'static [&'static str] {
        match self {
            NatKind::Dnat => &["dnat", "redirect"],
            NatKind::Snat => &["snat", "masquerade"],
            NatKind::DnatReply | NatKind::SnatReply => &[],
        }
    }

    /// Upper-case words for the text output.
    pub(crate) fn as_words(self) -> &'static str {
        match self {
            NatKind::Dnat => "DNAT",
            NatKind::Snat => "SNAT",
            NatKind::DnatReply => "DNAT undone on the reply",
            NatKind::SnatReply => "SNAT undone on the reply",
        }
    }
}

/// One rewrite of a packet, from its conntrack entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NatRewrite {
    /// What kind.
    pub kind: NatKind,
    /// The hook it happens on (destination rewrites on prerouting/output, source rewrites on
    /// postrouting/input).
    pub hook: String,
    /// The packet's addresses before: "SRC -> DST".
    pub before: String,
    /// And after.
    pub after: String,
    /// The entry it comes from.
    pub conntrack: CtEntry,
    /// A traced rule set it up (this is the flow's first packet); else conntrack applied the
    /// binding of an earlier packet by itself.
    pub by_rule: bool,
}

fn endpoint(ip: IpAddr, port: u16, proto: u8) -> String {
    match (ip, matches!(proto, 6 | 17 | 132 | 33 | 136)) {
        (IpAddr::V6(v6), true) => format!("[{v6}]:{port}"),
        (ip, true) => format!("{ip}:{port}"),
        (ip, false) => ip.to_string(),
    }
}

fn pair(t: &Tuple) -> String {
    format!(
        "{} -> {}",
        endpoint(t.src, t.sport, t.proto),
        endpoint(t.dst, t.dport, t.proto)
    )
}

/// The rewrites conntrack does on a packet whose headers before NAT are `seen`, for the hooks
/// it `reached` (a rewrite on a hook the packet never reached did not happen). Empty when the
/// entry does not NAT, or `seen` is neither of its directions.
pub(crate) fn rewrites(flow: &CtFlow, seen: &Tuple, reached: &[String]) -> Vec<NatRewrite> {
    let (direction, after) = if *seen == flow.original {
        ("original", flow.reply.reversed())
    } else if *seen == flow.reply {
        ("reply", flow.original.reversed())
    } else {
        return Vec::new();
    };
    let entry = CtEntry {
        original: flow.original.to_string(),
        reply: flow.reply.to_string(),
        direction: direction.to_string(),
    };
    let has = |h: &str| reached.iter().any(|r| r == h);
    let mut out = Vec::new();
    // Destination first (prerouting/output), then source (postrouting/input): the kernel's order.
    let dst_changed = (seen.dst, seen.dport) != (after.dst, after.dport);
    let src_changed = (seen.src, seen.sport) != (after.src, after.sport);
    let mut now = *seen;
    if dst_changed {
        let hook = ["prerouting", "output"].into_iter().find(|h| has(h));
        if let Some(hook) = hook {
            let mut next = now;
            next.dst = after.dst;
            next.dport = after.dport;
            out.push(NatRewrite {
                kind: if direction == "original" {
                    NatKind::Dnat
                } else {
                    NatKind::SnatReply
                },
                hook: hook.to_string(),
                before: pair(&now),
                after: pair(&next),
                conntrack: entry.clone(),
                by_rule: false,
            });
            now = next;
        }
    }
    if src_changed {
        let hook = ["postrouting", "input"].into_iter().find(|h| has(h));
        if let Some(hook) = hook {
            let mut next = now;
            next.src = after.src;
            next.sport = after.sport;
            out.push(NatRewrite {
                kind: if direction == "original" {
                    NatKind::Snat
                } else {
                    NatKind::DnatReply
                },
                hook: hook.to_string(),
                before: pair(&now),
                after: pair(&next),
                conntrack: entry,
                by_rule: false,
            });
        }
    }
    out
}

/// Every (source, destination) a packet of `flow` can carry in this namespace, as unordered
/// pairs: before NAT, after a DNAT but not yet the SNAT, after both (and so on for answers).
pub(crate) fn ends_of(flow: &CtFlow) -> Vec<(Endpoint, Endpoint)> {
    let ports = matches!(flow.original.proto, 6 | 17 | 132 | 33 | 136);
    let ep = |ip: IpAddr, port: u16| (ip, ports.then_some(port));
    let (o, r) = (&flow.original, &flow.reply);
    let client_side = [ep(o.src, o.sport), ep(r.dst, r.dport)];
    let server_side = [ep(o.dst, o.dport), ep(r.src, r.sport)];
    client_side
        .iter()
        .flat_map(|c| server_side.iter().map(move |s| (*c, *s)))
        .collect()
}

/// The conntrack entries of one namespace that matter to the trace, as they come.
pub(crate) struct CtWatch {
    events: CtEvents,
    filter: TraceFilter,
    by_tuple: HashMap<Tuple, CtFlow>,
    order: VecDeque<Tuple>,
    buf: Vec<u8>,
    /// Entries read from the socket (after the kernel's filter), the dump included.
    pub read: u64,
    /// The kernel took the BPF filter (else every entry is read and filtered here).
    pub filtered_in_kernel: bool,
}

impl CtWatch {
    /// Open inside the namespace (call in `NetNs::run`): subscribe, filter, dump.
    pub(crate) fn open(filter: &TraceFilter) -> std::io::Result<Self> {
        let events = CtEvents::open()?;
        let filtered_in_kernel = match bpf_program(filter) {
            Some(prog) => attach(events.raw_fd(), &prog).is_ok(),
            None => false,
        };
        Ok(CtWatch {
            events,
            filter: filter.clone(),
            by_tuple: HashMap::new(),
            order: VecDeque::new(),
            buf: vec![0u8; 1 << 16],
            read: 0,
            filtered_in_kernel,
        })
    }

    /// Take what is queued on the socket, without blocking.
    pub(crate) fn drain(&mut self) {
        let mut got = Vec::new();
        self.events.drain(&mut self.buf, &mut got);
        self.read += got.len() as u64;
        for f in got {
            if !wanted(&self.filter, &f) {
                continue;
            }
            for t in [f.original, f.reply] {
                if self.by_tuple.insert(t, f).is_none() {
                    self.order.push_back(t);
                }
            }
        }
        while self.order.len() > MAX_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.by_tuple.remove(&old);
            }
        }
    }

    /// The entry a packet with this tuple (its headers before NAT) belongs to.
    pub(crate) fn lookup(&self, seen: &Tuple) -> Option<&CtFlow> {
        self.by_tuple.get(seen)
    }
}

/// The entry touches what the trace filter asks for (a port or an address on either side).
fn wanted(f: &TraceFilter, flow: &CtFlow) -> bool {
    let ports = |t: &Tuple| {
        matches!(t.proto, 6 | 17 | 132)
            && (f.ports.contains(&t.sport) || f.ports.contains(&t.dport))
    };
    let addrs = |t: &Tuple| f.addrs.contains(&t.src) || f.addrs.contains(&t.dst);
    let port_ok = f.ports.is_empty() || ports(&flow.original) || ports(&flow.reply);
    let addr_ok = f.addrs.is_empty() || addrs(&flow.original) || addrs(&flow.reply);
    port_ok && addr_ok
}

// Classic BPF (linux/filter.h).
const BPF_LD: u16 = 0x00;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_ALU: u16 = 0x04;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_JEQ: u16 = 0x10;
const BPF_AND: u16 = 0x50;
const BPF_K: u16 = 0x00;
/// A socket filter's "keep the whole message" (the value is the length to keep).
const ACCEPT: u32 = u32::MAX;

/// One instruction, with jump targets as labels until [`Asm::finish`].
enum Op {
    Load(u16, u32),
    And(u32),
    /// A == k: go to label `yes`, else fall through.
    JumpIf(u32, usize),
    /// A != k: go to label `no`, else fall through.
    JumpUnless(u32, usize),
    Ret(u32),
    Label(usize),
}

struct Asm {
    ops: Vec<Op>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }

    /// The program, or None when a jump is too far for cBPF's 8-bit offsets.
    fn finish(self) -> Option<Vec<libc::sock_filter>> {
        let mut at = HashMap::new();
        let mut n = 0usize;
        for op in &self.ops {
            match op {
                Op::Label(l) => {
                    at.insert(*l, n);
                }
                _ => n += 1,
            }
        }
        let mut out = Vec::new();
        for op in &self.ops {
            let here = out.len();
            let off =
                |l: &usize| -> Option<u8> { u8::try_from(at.get(l)?.checked_sub(here + 1)?).ok() };
            let insn = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
            out.push(match op {
                Op::Label(_) => continue,
                Op::Load(size, k) => insn(BPF_LD | size | BPF_ABS, 0, 0, *k),
                Op::And(k) => insn(BPF_ALU | BPF_AND | BPF_K, 0, 0, *k),
                Op::JumpIf(k, l) => insn(BPF_JMP | BPF_JEQ | BPF_K, off(l)?, 0, *k),
                Op::JumpUnless(k, l) => insn(BPF_JMP | BPF_JEQ | BPF_K, 0, off(l)?, *k),
                Op::Ret(k) => insn(BPF_RET | BPF_K, 0, 0, *k),
            });
        }
        Some(out)
    }
}

/// A netlink attribute type (or header flag) as a cBPF halfword load sees it (loads are
/// big-endian, netlink headers are in host order), and the mask that drops
/// NLA_F_NESTED/NLA_F_NET_BYTEORDER.
fn nla_type(t: u16) -> (u32, u32) {
    let swap = |v: u16| u16::from_be_bytes(v.to_ne_bytes()) as u32;
    (swap(t), swap(0x3fff))
}

/// The socket filter for `f`: accept an entry when a port of either tuple (or, with no port,
/// an IPv4 address of either tuple) is one asked for. It reads the attributes at the offsets
/// ctnetlink writes them at (nfgenmsg, then the original tuple's nest {ip {src, dst}, proto
/// {num, src port, dst port}}, then the reply tuple's) and checks each attribute's type on the
/// way: anything laid out otherwise (ICMP, a zone, a kernel that changed) is let through and
/// filtered in user space. None when the filter cannot be expressed (nothing to narrow, IPv6
/// addresses, or so many ports that a jump is longer than cBPF's 255 instructions).
pub(crate) fn bpf_program(f: &TraceFilter) -> Option<Vec<libc::sock_filter>> {
    let v4: Vec<u32> = f
        .addrs
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v) => Some(u32::from(*v)),
            IpAddr::V6(_) => None,
        })
        .collect();
    if f.ports.is_empty() && (v4.is_empty() || v4.len() != f.addrs.len()) {
        return None;
    }
    let mut a = Asm {
        ops: Vec::new(),
        labels: 0,
    };
    let accept = a.label();
    let v4_label = a.label();
    let v6 = a.label();
    // A dump's answers come several to a datagram (NLM_F_MULTI): the filter sees only the
    // first, so they all pass and are filtered in user space. Events come one to a datagram.
    let (multi, _) = nla_type(libc::NLM_F_MULTI as u16);
    a.ops.push(Op::Load(BPF_H, 6));
    a.ops.push(Op::And(multi));
    a.ops.push(Op::JumpIf(multi, accept));
    // Family in nfgenmsg (after the 16-byte netlink header).
    a.ops.push(Op::Load(BPF_B, 16));
    a.ops.push(Op::JumpIf(libc::AF_INET as u32, v4_label));
    a.ops.push(Op::JumpIf(libc::AF_INET6 as u32, v6));
    a.ops.push(Op::Ret(ACCEPT));
    // (tuple nest offset, attribute type) for each family: IPv4 tuples are 52 bytes long
    // (4 + ip 4+8+8 + proto 4+8+8+8), IPv6 ones 76 (the two addresses are 20 bytes each).
    for (label, tuple_len, ip_len) in [(v4_label, 52u32, 20u32), (v6, 76, 44)] {
        a.ops.push(Op::Label(label));
        for (base, kind) in [(20u32, 1u16), (20 + tuple_len, 2)] {
            let check = |a: &mut Asm, at: u32, t: u16| {
                let (want, mask) = nla_type(t);
                a.ops.push(Op::Load(BPF_H, at + 2));
                a.ops.push(Op::And(mask));
                a.ops.push(Op::JumpUnless(want, accept));
            };
            // The tuple nest, its ip nest, its proto nest and the two port attributes.
            check(&mut a, base, kind);
            check(&mut a, base + 4, 1);
            let proto = base + 4 + ip_len;
            check(&mut a, proto, 2);
            if !f.ports.is_empty() {
                check(&mut a, proto + 12, 2);
                check(&mut a, proto + 20, 3);
                for at in [proto + 16, proto + 24] {
                    a.ops.push(Op::Load(BPF_H, at));
                    for p in &f.ports {
                        a.ops.push(Op::JumpIf(*p as u32, accept));
                    }
                }
            } else {
                check(&mut a, base + 8, 1);
                check(&mut a, base + 16, 2);
                for at in [base + 12, base + 20] {
                    a.ops.push(Op::Load(BPF_W, at));
                    for ip in &v4 {
                        a.ops.push(Op::JumpIf(*ip, accept));
                    }
                }
            }
        }
        a.ops.push(Op::Ret(0));
    }
    a.ops.push(Op::Label(accept));
    a.ops.push(Op::Ret(ACCEPT));
    a.finish()
}

/// Attach a classic BPF program to a socket (SO_ATTACH_FILTER).
fn attach(fd: i32, prog: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `prog`, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, sp: u16, d: &str, dp: u16) -> Tuple {
        Tuple {
            proto: 6,
            src: s.parse().unwrap(),
            sport: sp,
            dst: d.parse().unwrap(),
            dport: dp,
        }
    }

    #[test]
    fn a_dnat_and_a_masquerade_from_one_entry() {
        // Client 10.77.1.2 -> host 10.77.1.1:8080, DNATed to 10.77.2.2:80 and masqueraded
        // behind the bridge address 10.77.2.1.
        let flow = CtFlow {
            original: t("10.77.1.2", 40000, "10.77.1.1", 8080),
            reply: t("10.77.2.2", 80, "10.77.2.1", 40000),
            tcp_state: None,
        };
        let hooks: Vec<String> = ["prerouting", "forward", "postrouting"]
            .map(String::from)
            .to_vec();
        let r = rewrites(&flow, &flow.original, &hooks);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].kind, r[0].hook.as_str()),
            (NatKind::Dnat, "prerouting")
        );
        assert_eq!(r[0].before, "10.77.1.2:40000 -> 10.77.1.1:8080");
        assert_eq!(r[0].after, "10.77.1.2:40000 -> 10.77.2.2:80");
        assert_eq!(
            (r[1].kind, r[1].hook.as_str()),
            (NatKind::Snat, "postrouting")
        );
        assert_eq!(r[1].after, "10.77.2.1:40000 -> 10.77.2.2:80");
        assert_eq!(r[1].conntrack.reply, "tcp 10.77.2.2:80 > 10.77.2.1:40000");
        // The answer: its destination is put back first, then its source.
        let back = rewrites(&flow, &flow.reply, &hooks);
        assert_eq!(back[0].kind, NatKind::SnatReply);
        assert_eq!(back[0].after, "10.77.2.2:80 -> 10.77.1.2:40000");
        assert_eq!(back[1].kind, NatKind::DnatReply);
        assert_eq!(back[1].after, "10.77.1.1:8080 -> 10.77.1.2:40000");
        assert_eq!(back[1].conntrack.direction, "reply");
        // Dropped in forward: the source rewrite of postrouting never happened.
        let r = rewrites(&flow, &flow.original, &hooks[..2]);
        assert_eq!(r.len(), 1);
        // No NAT, or another flow: nothing.
        let plain = CtFlow {
            original: flow.original,
            reply: flow.original.reversed(),
            tcp_state: None,
        };
        assert!(rewrites(&plain, &plain.original, &hooks).is_empty());
        assert!(rewrites(&flow, &t("1.1.1.1", 1, "2.2.2.2", 2), &hooks).is_empty());
    }

    /// Run a cBPF program the way the kernel does for the instructions it uses.
    fn run(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            let at = i.k as usize;
            match i.code {
                c if c == BPF_LD | BPF_B | BPF_ABS => match pkt.get(at) {
                    Some(b) => a = *b as u32,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_H | BPF_ABS => match pkt.get(at..at + 2) {
                    Some(b) => a = u16::from_be_bytes([b[0], b[1]]) as u32,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_W | BPF_ABS => match pkt.get(at..at + 4) {
                    Some(b) => a = u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    None => return 0,
                },
                c if c == BPF_ALU | BPF_AND | BPF_K => a &= i.k,
                c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                    pc += if a == i.k { i.jt } else { i.jf } as usize
                }
                c if c == BPF_RET | BPF_K => return i.k,
                c => panic!("unexpected op {c:#x}"),
            }
        }
    }

    fn nla(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut out = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(v);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    /// A ctnetlink event as the kernel lays it out (nested attributes flagged NLA_F_NESTED).
    fn event(orig: &Tuple, reply: &Tuple) -> Vec<u8> {
        let tuple = |t: &Tuple| {
            let mut ip = Vec::new();
            match (t.src, t.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    ip.extend(nla(1, &s.octets()));
                    ip.extend(nla(2, &d.octets()));
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    ip.extend(nla(3, &s.octets()));
                    ip.extend(nla(4, &d.octets()));
                }
                _ => unreachable!(),
            }
            let mut proto = nla(1, &[t.proto]);
            proto.extend(nla(2, &t.sport.to_be_bytes()));
            proto.extend(nla(3, &t.dport.to_be_bytes()));
            let mut out = nla(0x8001, &ip);
            out.extend(nla(0x8002, &proto));
            out
        };
        let family = if orig.src.is_ipv4() { 2 } else { 10 };
        let mut body = vec![family, 0, 0, 0];
        body.extend(nla(0x8001, &tuple(orig)));
        body.extend(nla(0x8002, &tuple(reply)));
        body.extend(nla(3, &0x188u32.to_be_bytes())); // CTA_STATUS
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&(1u16 << 8).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend(body);
        msg
    }

    #[test]
    fn the_socket_filter_passes_the_flows_asked_for_in_both_families() {
        let mut f = TraceFilter::default();
        f.ports.extend([8080, 80]);
        let prog = bpf_program(&f).unwrap();
        for (c, h, s) in [
            ("10.77.1.2", "10.77.1.1", "10.77.2.2"),
            ("fd77:1::2", "fd77:1::1", "fd77:2::2"),
        ] {
            // Asked for: the port on the original side, or only on the reply side (DNAT).
            let dnat = (t(c, 40000, h, 8080), t(s, 80, h, 40000));
            let only_reply = (t(c, 40000, h, 9999), t(s, 80, c, 40000));
            let other = (t(c, 40000, h, 9000), t(h, 9000, c, 40000));
            assert_eq!(run(&prog, &event(&dnat.0, &dnat.1)), ACCEPT, "{c}");
            assert_eq!(
                run(&prog, &event(&only_reply.0, &only_reply.1)),
                ACCEPT,
                "{c}"
            );
            assert_eq!(run(&prog, &event(&other.0, &other.1)), 0, "{c}");
            // Another layout (here: ICMP-like, no port attributes) is let through.
            let mut odd = event(&other.0, &other.1);
            let at = if c.contains(':') { 82 } else { 58 };
            odd[at] = 4;
            assert_eq!(run(&prog, &odd), ACCEPT, "{c}");
            // A dump's datagram (NLM_F_MULTI) passes whatever its first entry is.
            let mut dump = event(&other.0, &other.1);
            dump[6..8].copy_from_slice(&(libc::NLM_F_MULTI as u16).to_ne_bytes());
            assert_eq!(run(&prog, &dump), ACCEPT, "{c}");
        }
        let mut f = TraceFilter::default();
        f.addrs.insert("10.77.2.2".parse().unwrap());
        let prog = bpf_program(&f).unwrap();
        let hit = (
            t("10.77.1.2", 1, "10.77.1.1", 2),
            t("10.77.2.2", 2, "10.77.1.2", 1),
        );
        let miss = (
            t("10.77.1.2", 1, "10.77.1.1", 2),
            t("10.77.1.1", 2, "10.77.1.2", 1),
        );
        assert_eq!(run(&prog, &event(&hit.0, &hit.1)), ACCEPT);
        assert_eq!(run(&prog, &event(&miss.0, &miss.1)), 0);
    }

    #[test]
    fn the_socket_filter_is_made_only_when_it_narrows() {
        let mut f = TraceFilter::default();
        assert!(bpf_program(&f).is_none());
        f.ports.insert(8080);
        let p = bpf_program(&f).unwrap();
        assert_eq!(p.last().unwrap().k, ACCEPT);
        f.ports.clear();
        f.addrs.insert("fd00::1".parse().unwrap());
        assert!(
            bpf_program(&f).is_none(),
            "IPv6 addresses are not filtered in the kernel"
        );
        f.addrs.clear();
        f.addrs.insert("10.0.0.1".parse().unwrap());
        assert!(bpf_program(&f).is_some());
        f.ports.extend(1..100);
        assert!(bpf_program(&f).is_none());
    }
}
