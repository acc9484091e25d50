//! Packet capture without libpcap: an AF_PACKET socket made inside a namespace (through
//! [`NetNs::run`]) with a classic BPF filter so only DNS-ish packets reach userspace; and
//! pcap files, written and read.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;

use super::packet::LinkKind;
use crate::netns::{NetNs, NetnsError};

/// Errors from capturing or from pcap files.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A socket call failed.
    #[error("{what} in namespace {netns}: {errno} (packet capture needs root or CAP_NET_RAW)")]
    Socket {
        /// The call.
        what: &'static str,
        /// The namespace label.
        netns: String,
        /// The OS error (not a `source`: the message already says it).
        errno: std::io::Error,
    },
    /// A pcap file could not be opened, read or written.
    #[error("pcap file {path}: {message}")]
    Pcap {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Largest frame kept (a DNS message over UDP is at most 65535 bytes plus headers).
pub(crate) const SNAPLEN: u32 = 262_144;

// Classic BPF opcodes (linux/filter.h).
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_JEQ: u16 = 0x10;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
// Ancillary loads: skb fields the packet bytes do not carry.
const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_PROTOCOL: i32 = 0;
const SKF_AD_PKTTYPE: i32 = 4;
const SKF_AD_IFINDEX: i32 = 8;

/// A jump target in the filter being assembled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum To {
    Next,
    Label(&'static str),
}

#[derive(Debug)]
struct Insn {
    code: u16,
    jt: To,
    jf: To,
    k: u32,
}

fn ins(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: To::Next,
        jf: To::Next,
        k,
    }
}

fn jeq(k: u32, jt: To, jf: To) -> Insn {
    Insn {
        code: BPF_JMP | BPF_JEQ | BPF_K,
        jt,
        jf,
        k,
    }
}

fn anc(off: i32) -> u32 {
    (SKF_AD_OFF + off) as u32
}

/// Load the source port with `src`, jump to accept on any of `ports`; then the destination port
/// with `dst`, the same; otherwise to drop. Shared by the IPv4 and IPv6 branches.
fn port_match(ports: &[u16], src: Insn, dst: Insn) -> Vec<Insn> {
    let mut out = vec![src];
    out.extend(
        ports
            .iter()
            .map(|p| jeq(*p as u32, To::Label("accept"), To::Next)),
    );
    out.push(dst);
    for (i, p) in ports.iter().enumerate() {
        let jf = if i + 1 == ports.len() {
            To::Label("drop")
        } else {
            To::Next
        };
        out.push(jeq(*p as u32, To::Label("accept"), jf));
    }
    out
}

/// The filter: the packet starts at the IP header (SOCK_DGRAM). Keep IPv4/IPv6 UDP/TCP with
/// port 53 or one of `extra_ports` on either side, and ICMP/ICMPv6 destination-unreachable
/// errors (rare; userspace keeps those quoting DNS); drop IP fragments after the first; drop
/// the outgoing copy on lo (every loopback packet is seen once leaving and once arriving).
pub(crate) fn dns_filter(extra_ports: &[u16]) -> Vec<libc::sock_filter> {
    let mut ports = vec![53u16];
    for p in extra_ports {
        if !ports.contains(p) {
            ports.push(*p);
        }
    }
    let mut prog: Vec<(Option<&'static str>, Insn)> = Vec::new();
    let mut add = |label: Option<&'static str>, i: Insn| prog.push((label, i));
    add(None, ins(BPF_LD | BPF_W | BPF_ABS, anc(SKF_AD_PKTTYPE)));
    add(
        None,
        jeq(libc::PACKET_OUTGOING as u32, To::Next, To::Label("proto")),
    );
    add(None, ins(BPF_LD | BPF_W | BPF_ABS, anc(SKF_AD_IFINDEX)));
    // lo is ifindex 1 in every namespace.
    add(None, jeq(1, To::Label("drop"), To::Next));
    add(
        Some("proto"),
        ins(BPF_LD | BPF_W | BPF_ABS, anc(SKF_AD_PROTOCOL)),
    );
    add(None, jeq(0x0800, To::Label("v4"), To::Next));
    add(None, jeq(0x86dd, To::Label("v6"), To::Label("drop")));
    // IPv4: protocol, then fragment offset, then ports after the variable-length header.
    add(Some("v4"), ins(BPF_LD | BPF_B | BPF_ABS, 9));
    add(None, jeq(17, To::Label("v4frag"), To::Next));
    add(None, jeq(6, To::Label("v4frag"), To::Next));
    // ICMP destination unreachable: a query that bounced (the pairer checks it quotes DNS).
    add(None, jeq(1, To::Next, To::Label("drop")));
    add(None, ins(BPF_LDX | BPF_B | BPF_MSH, 0));
    add(None, ins(BPF_LD | BPF_B | BPF_IND, 0));
    add(None, jeq(3, To::Label("accept"), To::Label("drop")));
    add(Some("v4frag"), ins(BPF_LD | BPF_H | BPF_ABS, 6));
    add(
        None,
        Insn {
            code: BPF_JMP | BPF_JSET | BPF_K,
            jt: To::Label("drop"),
            jf: To::Next,
            k: 0x1fff,
        },
    );
    add(None, ins(BPF_LDX | BPF_B | BPF_MSH, 0));
    for i in port_match(
        &ports,
        ins(BPF_LD | BPF_H | BPF_IND, 0),
        ins(BPF_LD | BPF_H | BPF_IND, 2),
    ) {
        add(None, i);
    }
    // IPv6: next header must be UDP/TCP directly (extension headers are rare for DNS).
    add(Some("v6"), ins(BPF_LD | BPF_B | BPF_ABS, 6));
    add(None, jeq(17, To::Label("v6ports"), To::Next));
    add(None, jeq(6, To::Label("v6ports"), To::Next));
    add(None, jeq(58, To::Next, To::Label("drop")));
    add(None, ins(BPF_LD | BPF_B | BPF_ABS, 40));
    add(None, jeq(1, To::Label("accept"), To::Label("drop")));
    let v6 = port_match(
        &ports,
        ins(BPF_LD | BPF_H | BPF_ABS, 40),
        ins(BPF_LD | BPF_H | BPF_ABS, 42),
    );
    for (n, i) in v6.into_iter().enumerate() {
        add((n == 0).then_some("v6ports"), i);
    }
    add(Some("accept"), ins(BPF_RET | BPF_K, SNAPLEN));
    add(Some("drop"), ins(BPF_RET | BPF_K, 0));

    let at = |label: &str| {
        prog.iter()
            .position(|(l, _)| *l == Some(label))
            .expect("filter label defined")
    };
    let off = |i: usize, to: To| -> u8 {
        match to {
            To::Next => 0,
            // Jumps are forward only and the program is short: the offset fits a u8.
            To::Label(l) => (at(l) - i - 1) as u8,
        }
    };
    prog.iter()
        .enumerate()
        .map(|(i, (_, insn))| libc::sock_filter {
            code: insn.code,
            jt: off(i, insn.jt),
            jf: off(i, insn.jf),
            k: insn.k,
        })
        .collect()
}

/// One frame read from a capture socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameInfo {
    /// Kernel receive timestamp since the Unix epoch.
    pub ts: Duration,
    /// Bytes copied into the buffer.
    pub len: usize,
    /// The interface it was seen on (in the socket's namespace).
    pub ifindex: i32,
}

/// An AF_PACKET socket capturing DNS on every interface of one namespace.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    netns: String,
    drops: u64,
    seen: u64,
}

fn check(rc: libc::c_int, what: &'static str, netns: &str) -> Result<libc::c_int, CaptureError> {
    if rc < 0 {
        Err(CaptureError::Socket {
            what,
            netns: netns.to_string(),
            errno: std::io::Error::last_os_error(),
        })
    } else {
        Ok(rc)
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> libc::c_int {
    // SAFETY: value points at a live T of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    }
}

/// Make the socket in the calling thread's namespace.
fn open_here(extra_ports: &[u16], netns: &str) -> Result<PacketSocket, CaptureError> {
    // Protocol 0 receives nothing until bind: attach the filter first so no unfiltered
    // packet is ever queued.
    // SAFETY: plain socket(2).
    let raw = check(
        unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        },
        "socket(AF_PACKET)",
        netns,
    )?;
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let filter = dns_filter(extra_ports);
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    check(
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog),
        "SO_ATTACH_FILTER",
        netns,
    )?;
    // A large buffer rides out bursts; FORCE passes rmem_max as root, plain is the fallback.
    let size: libc::c_int = 64 << 20;
    if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size) < 0 {
        let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &size);
    }
    let on: libc::c_int = 1;
    check(
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &on),
        "SO_TIMESTAMPNS",
        netns,
    )?;
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = 0;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    check(
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        },
        "bind(AF_PACKET)",
        netns,
    )?;
    Ok(PacketSocket {
        fd,
        netns: netns.to_string(),
        drops: 0,
        seen: 0,
    })
}

impl PacketSocket {
    /// Open a capture socket inside `ns` (all interfaces, lo included) keeping port 53 and
    /// `extra_ports` (e.g. Docker's embedded resolver's real port).
    pub(crate) fn open(ns: &NetNs, extra_ports: &[u16]) -> Result<Self, CaptureError> {
        let label = ns.label().to_string();
        // Already there: no namespace switch (which would need CAP_SYS_ADMIN on top of CAP_NET_RAW).
        if NetNs::current().is_ok_and(|cur| cur.id() == ns.id()) {
            return open_here(extra_ports, &label);
        }
        ns.run(|| open_here(extra_ports, &label))?
    }

    /// The fd, for poll(2).
    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Read one frame (starting at the IP header) into `buf`; `None` when nothing is queued.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> Result<Option<FrameInfo>, CaptureError> {
        // SAFETY: zeroed C structs are valid; every pointer below refers to live locals.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut cbuf = [0u64; 16];
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = &mut sll as *mut libc::sockaddr_ll as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of::<[u64; 16]>() as _;
        // SAFETY: msg is fully initialised above.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::Interrupted
            {
                return Ok(None);
            }
            return Err(CaptureError::Socket {
                what: "recvmsg",
                netns: self.netns.clone(),
                errno: e,
            });
        }
        let mut ts = None;
        // SAFETY: walking the control messages the kernel wrote into cbuf.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let t = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                    ts = Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let ts = ts.unwrap_or_else(now);
        Ok(Some(FrameInfo {
            ts,
            len: (n as usize).min(buf.len()),
            ifindex: sll.sll_ifindex,
        }))
    }

    /// (frames the kernel queued, frames it dropped because we were too slow) since open.
    pub(crate) fn statistics(&mut self) -> (u64, u64) {
        if let Some((seen, drops)) = packet_statistics(std::os::fd::AsFd::as_fd(&self.fd)) {
            self.seen += seen;
            self.drops += drops;
        }
        (self.seen, self.drops)
    }
}

/// PACKET_STATISTICS of a packet socket: (packets queued, including drops; packets dropped)
/// since the last call, which resets the kernel's counters. The first two fields of
/// tpacket_stats and tpacket_stats_v3 are the same, so TPACKET_V3 rings use it too.
pub(crate) fn packet_statistics(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u64, u64)> {
    // SAFETY: tpacket_stats is two u32s; getsockopt fills at most `len` bytes of it.
    let mut st: libc::tpacket_stats = unsafe { zeroed() };
    let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some((st.tp_packets as u64, st.tp_drops as u64))
}

/// The wall clock as a Duration since the Unix epoch.
pub(crate) fn now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Writes captured frames (IP first) to a pcap file, LINKTYPE_RAW.
pub struct PcapOut {
    w: PcapWriter<BufWriter<File>>,
    path: String,
}

impl std::fmt::Debug for PcapOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PcapOut({})", self.path)
    }
}

impl PcapOut {
    /// Create (truncate) `path`.
    pub fn create(path: &Path) -> Result<Self, CaptureError> {
        let err = |m: String| CaptureError::Pcap {
            path: path.display().to_string(),
            message: m,
        };
        // Written as root: never through a symlink, 0600 (see tap::open_private).
        let f = crate::tap::open_private(path, false).map_err(|e| match e {
            crate::tap::TapError::Open { error, .. } => err(format!("cannot create: {error}")),
        })?;
        let header = PcapHeader {
            datalink: DataLink::RAW,
            snaplen: SNAPLEN,
            ..PcapHeader::default()
        };
        let w =
            PcapWriter::with_header(BufWriter::new(f), header).map_err(|e| err(e.to_string()))?;
        Ok(PcapOut {
            w,
            path: path.display().to_string(),
        })
    }

    /// Append one frame.
    pub fn write(&mut self, ts: Duration, data: &[u8]) -> Result<(), CaptureError> {
        self.w
            .write_packet(&PcapPacket::new(ts, data.len() as u32, data))
            .map(|_| ())
            .map_err(|e| CaptureError::Pcap {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Flush and close the file.
    pub fn finish(self) -> Result<(), CaptureError> {
        use std::io::Write;
        let path = self.path;
        self.w
            .into_writer()
            .flush()
            .map_err(|e| CaptureError::Pcap {
                path,
                message: e.to_string(),
            })
    }
}

fn link_kind(dl: DataLink) -> Option<LinkKind> {
    Some(match dl {
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => LinkKind::Ip,
        DataLink::ETHERNET => LinkKind::Ethernet,
        DataLink::LINUX_SLL => LinkKind::LinuxSll,
        DataLink::LINUX_SLL2 => LinkKind::LinuxSll2,
        DataLink::NULL | DataLink::LOOP => LinkKind::Null,
        _ => return None,
    })
}

/// What a capture file holds: its frames, and what was wrong with its end.
#[derive(Debug, Default)]
pub(crate) struct CaptureFrames {
    /// Every whole frame: (timestamp, link kind, bytes).
    pub frames: Vec<(Duration, LinkKind, Vec<u8>)>,
    /// The last record was torn (a capture cut short): which one and why; the frames before
    /// it are all there (tshark reads such a file the same way).
    pub torn: Option<String>,
}

/// A pcapng timestamp in units of the interface's if_tsresol (pcap-file hands the raw count
/// over as nanoseconds) as a time: 10^-n s, or 2^-n s when the high bit is set; 6
/// (microseconds) when the interface does not say, as the pcapng spec has it.
fn pcapng_time(raw: Duration, tsresol: u8) -> Duration {
    let ticks = raw.as_nanos();
    let nanos: u128 = if tsresol & 0x80 == 0 {
        let n = u32::from(tsresol);
        if n <= 9 {
            ticks * 10u128.pow(9 - n)
        } else {
            ticks / 10u128.pow((n - 9).min(38))
        }
    } else {
        let n = u32::from(tsresol & 0x7f).min(127);
        (ticks * 1_000_000_000) >> n
    };
    Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
}

/// Every frame of a pcap or pcapng file: (timestamp, link kind, bytes). Frames of link types
/// we cannot decode are skipped; a torn last record ends the reading with what came before.
pub(crate) fn read_pcap(path: &Path) -> Result<CaptureFrames, CaptureError> {
    let err = |m: String| CaptureError::Pcap {
        path: path.display().to_string(),
        message: m,
    };
    let mut f = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic)
        .map_err(|e| err(format!("too short to be a capture: {e}")))?;
    let f = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let mut out = CaptureFrames::default();
    let torn = |what: &str, n: usize, e: &dyn std::fmt::Display| {
        format!(
            "{what} {} is torn ({e}): the file ends inside it, as a capture cut short does; the {n} whole {what}s before it are read",
            n + 1
        )
    };
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(BufReader::new(f)).map_err(|e| err(e.to_string()))?;
        // Per interface: its link kind (None: not one we decode) and its if_tsresol.
        let mut ifaces: Vec<(Option<LinkKind>, u8)> = Vec::new();
        let mut blocks = 0;
        while let Some(block) = r.next_block() {
            let block = match block {
                Ok(b) => b,
                Err(e) => {
                    out.torn = Some(torn("block", blocks, &e));
                    break;
                }
            };
            blocks += 1;
            match block {
                Block::SectionHeader(_) => ifaces.clear(),
                Block::InterfaceDescription(idb) => {
                    let tsresol = idb
                        .options
                        .iter()
                        .find_map(|o| match o {
                            pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfTsResol(v) => Some(*v),
                            _ => None,
                        })
                        .unwrap_or(6);
                    ifaces.push((link_kind(idb.linktype), tsresol));
                }
                Block::EnhancedPacket(p) => {
                    if let Some((Some(k), tsresol)) = ifaces.get(p.interface_id as usize) {
                        out.frames.push((
                            pcapng_time(p.timestamp, *tsresol),
                            *k,
                            p.data.into_owned(),
                        ));
                    }
                }
                Block::SimplePacket(p) => {
                    if let Some((Some(k), _)) = ifaces.first() {
                        out.frames.push((Duration::ZERO, *k, p.data.into_owned()));
                    }
                }
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(BufReader::new(f))
            .map_err(|e| err(format!("not a pcap or pcapng file: {e}")))?;
        let dl = r.header().datalink;
        let kind = link_kind(dl).ok_or_else(|| {
            err(format!(
                "link type {dl:?} is not supported (Ethernet, raw IP, Linux cooked v1/v2 and BSD loopback are)"
            ))
        })?;
        while let Some(p) = r.next_packet() {
            match p {
                Ok(p) => out.frames.push((p.timestamp, kind, p.data.into_owned())),
                Err(e) => {
                    out.torn = Some(torn("record", out.frames.len(), &e));
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_resolutions() {
        let raw = Duration::from_nanos(1_500_000);
        assert_eq!(pcapng_time(raw, 6), Duration::from_millis(1500));
        assert_eq!(pcapng_time(raw, 9), raw);
        assert_eq!(pcapng_time(raw, 3), Duration::from_secs(1500));
        assert_eq!(
            pcapng_time(Duration::from_nanos(3 << 19), 0x80 | 20),
            Duration::from_millis(1500)
        );
        let _ = pcapng_time(Duration::from_nanos(u64::MAX), 0);
        let _ = pcapng_time(Duration::from_nanos(u64::MAX), 0xff);
        let _ = pcapng_time(Duration::from_nanos(u64::MAX), 0x7f);
    }

    #[test]
    fn filter_jumps_stay_inside_the_program() {
        for extra in [&[][..], &[41000u16][..], &[41000, 42000, 43000][..]] {
            let f = dns_filter(extra);
            for (i, insn) in f.iter().enumerate() {
                assert!(i + 1 + (insn.jt as usize) < f.len() + 1);
                assert!(i + 1 + (insn.jf as usize) < f.len() + 1);
            }
            assert_eq!(f.last().unwrap().k, 0);
        }
    }
}
