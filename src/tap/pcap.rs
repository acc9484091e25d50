//! `--pcap FILE`: synthesised Ethernet/IP/TCP (or UDP) packets for both legs of every
//! connection (client <-> proxy, proxy <-> backend), with a handshake, consistent sequence and
//! acknowledgement numbers, FIN and RST, so Wireshark and `tshark -z follow` rebuild the streams.
//!
//! Checksums of the transport header are left 0 (Wireshark does not validate them by default);
//! computing them would cost a pass over every payload byte.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, Ipv6Header, TcpHeader, UdpHeader,
};
use pcap_file::pcap::PcapHeader;

use super::event::{CloseReason, Direction, Event, Timestamp, Transport};
use super::{open_private, Sink, TapError};

/// Largest payload per synthesised segment (IPv4 total length is 16 bits).
const SEGMENT: usize = 65_000;

/// Where and how much to capture.
#[derive(Debug, Clone)]
pub(crate) struct PcapOptions {
    /// The file.
    pub path: PathBuf,
    /// Rotate (or stop, with one file) once a file reaches this many bytes.
    pub max_bytes: Option<u64>,
    /// How many files to keep when rotating: FILE, FILE.1 ... FILE.(n-1).
    pub files: u32,
}

#[derive(Clone, Copy)]
struct Seqs {
    client: u32,
    listen: u32,
    local: u32,
    backend: u32,
}

#[derive(Clone, Copy, Default)]
struct Flags {
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    psh: bool,
}

/// Writes the pcap.
pub(crate) struct PcapSink {
    opts: PcapOptions,
    out: Option<RecordWriter>,
    written: u64,
    conns: HashMap<u64, Seqs>,
    buf: Vec<u8>,
}

/// The capture file. Headers and small payloads gather in a buffer; a bulk payload goes to the
/// kernel straight from the relay's chunk, in one writev with what is pending: never copied in
/// user space (both legs of a chunk are written from the same memory).
struct RecordWriter {
    file: File,
    pending: Vec<u8>,
    /// Bytes this process wrote that end on a whole record.
    synced: u64,
    /// Where this process's bytes start in the file, so a failed write is cut back to
    /// `base + synced`: 0 in a file of its own, the size it found in a regular file it was
    /// given as stdout with `>>`. None where a cut is wrong (a file written from the middle)
    /// or useless (a pipe).
    base: Option<u64>,
}

/// Pending bytes written out once this much has gathered.
const PENDING: usize = 256 * 1024;
/// Payloads at least this big are written from where they are instead of being gathered.
const DIRECT: usize = 4096;

impl RecordWriter {
    /// One pcap record: its 16-byte record header, the synthesised packet headers, the payload.
    fn record(&mut self, rec: &[u8], hdr: &[u8], payload: &[u8]) -> std::io::Result<()> {
        self.pending.extend_from_slice(rec);
        self.pending.extend_from_slice(hdr);
        if payload.len() < DIRECT {
            self.pending.extend_from_slice(payload);
            if self.pending.len() >= PENDING {
                self.flush()?;
            }
            return Ok(());
        }
        let total = (self.pending.len() + payload.len()) as u64;
        let mut bufs = [IoSlice::new(&self.pending), IoSlice::new(payload)];
        let mut bufs: &mut [IoSlice<'_>] = &mut bufs;
        let mut failed = None;
        while !bufs.is_empty() {
            match self.file.write_vectored(bufs) {
                Ok(0) => {
                    failed = Some(std::io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            return Err(self.cut(e));
        }
        self.synced += total;
        self.pending.clear();
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.pending) {
            return Err(self.cut(e));
        }
        self.synced += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// A write failed part way (disk full): cut the file back to its last whole record, so
    /// readers do not find a torn one at the end, and drop what was pending (the capture
    /// stops; writing it again later would only tear the file anew).
    fn cut(&mut self, e: std::io::Error) -> std::io::Error {
        if let Some(base) = self.base {
            let _ = self.file.set_len(base + self.synced);
        }
        self.pending.clear();
        e
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        // Best effort, like BufWriter: whoever needs the error flushes first.
        let _ = self.flush();
    }
}

/// The path that means standard output, as `tcpdump -w -` has it: the capture streams into a
/// pipe (`| tshark -r -`, `| wireshark -k -i -`).
pub(crate) const STDOUT: &str = "-";

/// A new capture file with pcap-file's global header (microseconds, Ethernet, big-endian).
/// Records are written by hand after it (see [`RecordWriter`]).
fn create(path: &std::path::Path) -> Result<RecordWriter, TapError> {
    let (file, base) = if path.as_os_str() == STDOUT {
        use std::os::fd::AsFd;
        // A descriptor of its own on stdout (nothing else writes there: the caller checks).
        let f = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(File::from)
            .map_err(|error| TapError::Open {
                path: path.into(),
                error,
            })?;
        let base = stdout_base(&f);
        (f, base)
    } else {
        (open_private(path, false)?, Some(0))
    };
    let mut pending = Vec::with_capacity(PENDING + 64 * 1024);
    PcapHeader::default()
        .write_to(&mut pending)
        .map_err(|e| TapError::Open {
            path: path.into(),
            error: io(e),
        })?;
    Ok(RecordWriter {
        file,
        pending,
        synced: 0,
        base,
    })
}

/// Where the capture's bytes start in stdout when it is a regular file: at its end with `>>`
/// (O_APPEND), at the shared offset otherwise; None (never cut) for a pipe, or for an offset
/// short of the end (`1<>FILE`), where a cut would take bytes that are not ours.
fn stdout_base(f: &File) -> Option<u64> {
    use std::io::Seek;
    use std::os::fd::AsRawFd;
    let len = f.metadata().ok().filter(|m| m.is_file())?.len();
    // SAFETY: F_GETFL only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    if flags >= 0 && flags & libc::O_APPEND != 0 {
        return Some(len);
    }
    let at = (&*f).stream_position().ok()?;
    (at >= len).then_some(at)
}

fn io(e: pcap_file::PcapError) -> std::io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

fn mac(ip: IpAddr) -> [u8; 6] {
    let o = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let s = a.octets();
            [s[12], s[13], s[14], s[15]]
        }
    };
    [0x02, 0x00, o[0], o[1], o[2], o[3]]
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

impl PcapSink {
    /// Create (truncate) the capture file, mode 0600.
    pub(crate) fn new(opts: PcapOptions) -> Result<Self, TapError> {
        let out = create(&opts.path)?;
        Ok(PcapSink {
            opts,
            out: Some(out),
            written: 24,
            conns: HashMap::new(),
            buf: Vec::with_capacity(128),
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let Some(max) = self.opts.max_bytes else {
            return Ok(());
        };
        if self.written < max {
            return Ok(());
        }
        if self.opts.files <= 1 {
            return Err(std::io::Error::other(super::LimitReached(format!(
                "{} reached its size cap of {max} bytes (rotate instead with --pcap-files N, or pcap_files in docker-proxy mode)",
                self.opts.path.display()
            ))));
        }
        if let Some(mut o) = self.out.take() {
            o.flush()?;
        }
        let p = &self.opts.path;
        let name = |i: u32| {
            let mut s = p.clone().into_os_string();
            s.push(format!(".{i}"));
            PathBuf::from(s)
        };
        // Shift only the files there are (FILE.1 ... FILE.k, k < files - 1): a large
        // --pcap-files must not cost that many renames per rotation, with the forwarding
        // waiting on this thread.
        let mut have = 0;
        while have + 1 < self.opts.files - 1 && name(have + 1).exists() {
            have += 1;
        }
        for i in (1..=have).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        std::fs::rename(p, name(1)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot rotate {}: renaming it to {}: {e} (was it moved or deleted? restart the capture)",
                    p.display(),
                    name(1).display()
                ),
            )
        })?;
        self.out = Some(create(p).map_err(|e| std::io::Error::other(e.to_string()))?);
        self.written = 24;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn packet(
        &mut self,
        ts: Timestamp,
        transport: Transport,
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        ack: u32,
        flags: Flags,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let b = &mut self.buf;
        b.clear();
        let l4_len = match transport {
            Transport::Tcp => 20 + payload.len(),
            Transport::Udp => 8 + payload.len(),
        };
        let proto = match transport {
            Transport::Tcp => IpNumber::TCP,
            Transport::Udp => IpNumber::UDP,
        };
        let both_v4 = matches!((src.ip(), dst.ip()), (IpAddr::V4(_), IpAddr::V4(_)));
        Ethernet2Header {
            source: mac(src.ip()),
            destination: mac(dst.ip()),
            ether_type: if both_v4 {
                EtherType::IPV4
            } else {
                EtherType::IPV6
            },
        }
        .write(b)?;
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4Header::new(l4_len as u16, 64, proto, s.octets(), d.octets())
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                h.header_checksum = h.calc_header_checksum();
                h.write(b)?;
            }
            (s, d) => Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: l4_len as u16,
                next_header: proto,
                hop_limit: 64,
                source: v6(s),
                destination: v6(d),
            }
            .write(b)?,
        }
        match transport {
            Transport::Tcp => {
                let mut t = TcpHeader::new(src.port(), dst.port(), seq, 65_535);
                t.acknowledgment_number = ack;
                t.syn = flags.syn;
                t.ack = flags.ack;
                t.fin = flags.fin;
                t.rst = flags.rst;
                t.psh = flags.psh;
                t.write(b)?;
            }
            Transport::Udp => {
                let mut h = UdpHeader {
                    source_port: src.port(),
                    destination_port: dst.port(),
                    length: l4_len as u16,
                    checksum: 0,
                };
                // IPv6 forbids a zero UDP checksum (Wireshark flags every such packet); a
                // datagram is small, so sum it. IPv4's 0 means "none" and stays.
                if !both_v4 {
                    h.checksum = h
                        .calc_checksum_ipv6_raw(v6(src.ip()), v6(dst.ip()), payload)
                        .unwrap_or(0);
                }
                h.write(b)?
            }
        }
        let Some(w) = self.out.as_mut() else {
            return Ok(());
        };
        let (secs, micros) = ts.split();
        let len = (b.len() + payload.len()) as u32;
        // Record header in the global header's byte order (big-endian).
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&(secs as u32).to_be_bytes());
        rec[4..8].copy_from_slice(&micros.to_be_bytes());
        rec[8..12].copy_from_slice(&len.to_be_bytes());
        rec[12..16].copy_from_slice(&len.to_be_bytes());
        w.record(&rec, b, payload)?;
        self.written += 16 + u64::from(len);
        self.rotate()
    }

    /// Data segments, split to fit IP's length field, advancing `seq`.
    #[allow(clippy::too_many_arguments)]
    fn data(
        &mut self,
        ts: Timestamp,
        t: Transport,
        src: SocketAddr,
        dst: SocketAddr,
        seq: &mut u32,
        ack: u32,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let flags = Flags {
            ack: true,
            psh: true,
            ..Default::default()
        };
        if t == Transport::Udp {
            // A datagram is one packet; 64 KiB datagrams exceed IPv4's limit, so cut the capture.
            let cut = bytes.len().min(65_507);
            return self.packet(ts, t, src, dst, 0, 0, flags, &bytes[..cut]);
        }
        for chunk in bytes.chunks(SEGMENT) {
            self.packet(ts, t, src, dst, *seq, ack, flags, chunk)?;
            *seq = seq.wrapping_add(chunk.len() as u32);
        }
        Ok(())
    }
}

impl Sink for PcapSink {
    fn name(&self) -> String {
        format!("pcap {}", self.opts.path.display())
    }

    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        let c = ev.conn().clone();
        let ts = ev.ts();
        let t = c.transport;
        let ack = Flags {
            ack: true,
            ..Default::default()
        };
        match ev {
            Event::Open { .. } => {
                if t == Transport::Udp {
                    return Ok(());
                }
                let base = (c.id as u32).wrapping_mul(2_654_435_761);
                let s = Seqs {
                    client: base,
                    listen: base ^ 0x5555_0000,
                    local: base ^ 0x0000_aaaa,
                    backend: base ^ 0xaaaa_5555,
                };
                let syn = Flags {
                    syn: true,
                    ..Default::default()
                };
                let synack = Flags {
                    syn: true,
                    ack: true,
                    ..Default::default()
                };
                for (a, b, sa, sb) in [
                    (c.client, c.listen, s.client, s.listen),
                    (c.local, c.backend, s.local, s.backend),
                ] {
                    self.packet(ts, t, a, b, sa, 0, syn, &[])?;
                    self.packet(ts, t, b, a, sb, sa.wrapping_add(1), synack, &[])?;
                    self.packet(
                        ts,
                        t,
                        a,
                        b,
                        sa.wrapping_add(1),
                        sb.wrapping_add(1),
                        ack,
                        &[],
                    )?;
                }
                self.conns.insert(
                    c.id,
                    Seqs {
                        client: s.client.wrapping_add(1),
                        listen: s.listen.wrapping_add(1),
                        local: s.local.wrapping_add(1),
                        backend: s.backend.wrapping_add(1),
                    },
                );
            }
            Event::Data { dir, bytes, .. } => {
                let mut s = self.conns.get(&c.id).copied().unwrap_or(Seqs {
                    client: 0,
                    listen: 0,
                    local: 0,
                    backend: 0,
                });
                match dir {
                    Direction::ClientToServer => {
                        self.data(ts, t, c.client, c.listen, &mut s.client, s.listen, bytes)?;
                        self.data(ts, t, c.local, c.backend, &mut s.local, s.backend, bytes)?;
                    }
                    Direction::ServerToClient => {
                        self.data(ts, t, c.backend, c.local, &mut s.backend, s.local, bytes)?;
                        self.data(ts, t, c.listen, c.client, &mut s.listen, s.client, bytes)?;
                    }
                }
                if t == Transport::Tcp {
                    self.conns.insert(c.id, s);
                }
            }
            Event::Fin { dir, .. } => {
                let Some(mut s) = self.conns.get(&c.id).copied() else {
                    return Ok(());
                };
                let fin = Flags {
                    fin: true,
                    ack: true,
                    ..Default::default()
                };
                match dir {
                    Direction::ClientToServer => {
                        self.packet(ts, t, c.client, c.listen, s.client, s.listen, fin, &[])?;
                        self.packet(ts, t, c.local, c.backend, s.local, s.backend, fin, &[])?;
                        s.client = s.client.wrapping_add(1);
                        s.local = s.local.wrapping_add(1);
                    }
                    Direction::ServerToClient => {
                        self.packet(ts, t, c.backend, c.local, s.backend, s.local, fin, &[])?;
                        self.packet(ts, t, c.listen, c.client, s.listen, s.client, fin, &[])?;
                        s.backend = s.backend.wrapping_add(1);
                        s.listen = s.listen.wrapping_add(1);
                    }
                }
                self.conns.insert(c.id, s);
            }
            Event::Close { reason, .. } => {
                let Some(s) = self.conns.remove(&c.id) else {
                    return Ok(());
                };
                let rst = Flags {
                    rst: true,
                    ack: true,
                    ..Default::default()
                };
                match reason {
                    CloseReason::ClientReset => {
                        self.packet(ts, t, c.client, c.listen, s.client, s.listen, rst, &[])?;
                        self.packet(ts, t, c.local, c.backend, s.local, s.backend, rst, &[])?;
                    }
                    CloseReason::BackendReset | CloseReason::Error(_) => {
                        self.packet(ts, t, c.backend, c.local, s.backend, s.local, rst, &[])?;
                        self.packet(ts, t, c.listen, c.client, s.listen, s.client, rst, &[])?;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.out.as_mut() {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}
