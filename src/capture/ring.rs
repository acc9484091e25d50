//! One AF_PACKET socket per interface with a TPACKET_V3 receive ring (mmap'ed, block-based):
//! the kernel fills whole blocks of frames and hands them over in one go, so a busy interface
//! costs one poll per block, not one syscall per packet, and frames are read where the kernel
//! put them (no copy into a user buffer).

use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::CaptureError;

const TPACKET_V3: libc::c_int = 2;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_KERNEL: u32 = 0;

/// The kernel's link-layer header type (ARPHRD_*) mapped to the pcap link type we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub(crate) enum LinkType {
    /// Frames start at an Ethernet header (veth, bridge, lo, physical NICs).
    Ethernet,
    /// Frames start at the IP header (tun, ipip/gre tunnels, wireguard).
    RawIp,
}

impl LinkType {
    /// From the interface's ARPHRD type.
    pub(crate) fn from_arphrd(t: u16) -> Self {
        match t {
            libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK => LinkType::Ethernet,
            _ => LinkType::RawIp,
        }
    }

    /// The pcap/pcapng LINKTYPE_ number.
    pub(crate) fn linktype(self) -> u16 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::RawIp => 101,
        }
    }
}

/// How long the kernel keeps a block that is not full before handing it over (ms).
pub(crate) const BLOCK_TIMEOUT_MS: u32 = 50;

/// Bytes per ring block: libpcap's (the page size doubled until a 256 KiB frame fits). The
/// kernel cannot fill a block until it is handed back whole, so smaller blocks leave more of
/// the ring to fill while one is read: with tcpdump's 2 MiB ring, 256 KiB blocks kept
/// 1.09-1.10x tcpdump's packets against 1.00-1.06x with 1 MiB blocks (tools/bench-capture,
/// docs/capture.md). A 64 KiB GSO packet still fits.
pub(crate) const BLOCK_SIZE: u32 = 256 << 10;

/// Ring geometry: `blocks` blocks of `block_size` bytes each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingSize {
    /// Bytes per block (a power of two, a multiple of the page size).
    pub block_size: u32,
    /// Number of blocks.
    pub blocks: u32,
    /// How long the kernel waits before handing over a block that is not full (ms).
    pub block_timeout_ms: u32,
}

impl RingSize {
    /// The ring of the `n`th interface opened (from 0) when -B is not given: 8 MiB for the
    /// first 8 (a busy veth fills 4 MiB in ~10 ms at 3 Gbit/s; a capture process that waits
    /// longer for a CPU drops: tools/bench-capture), 2 MiB (tcpdump's default) after that, so
    /// `--all-netns` on a host with a hundred interfaces stays near 250 MiB, not 800.
    pub(crate) fn automatic(n: usize) -> Self {
        RingSize::with_total(if n < 8 { 8 << 20 } else { 2 << 20 })
    }

    /// About `total` bytes of ring in blocks of [`BLOCK_SIZE`] (at least 2).
    pub(crate) fn with_total(total: usize) -> Self {
        let block_size = BLOCK_SIZE;
        RingSize {
            block_size,
            blocks: ((total / block_size as usize) as u32).max(2),
            block_timeout_ms: BLOCK_TIMEOUT_MS,
        }
    }
}

/// One frame in the ring: valid until the block is released (the next `next_block` call).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    /// Kernel timestamp since the Unix epoch.
    pub ts: Duration,
    /// Bytes on the wire.
    pub wire_len: u32,
    /// The bytes captured (at most the snap length).
    pub data: &'a [u8],
}

/// An AF_PACKET socket bound to one interface, with its mmap'ed ring.
#[derive(Debug)]
pub(crate) struct Ring {
    fd: OwnedFd,
    map: *mut u8,
    map_len: usize,
    size: RingSize,
    next: u32,
    /// The link type of the interface.
    pub link: LinkType,
    packets: u64,
    drops: u64,
}

// SAFETY: the mapping belongs to this Ring alone; it is only touched through &mut self.
unsafe impl Send for Ring {}

fn os(what: &'static str, netns: &str) -> CaptureError {
    CaptureError::Socket {
        what,
        netns: netns.to_string(),
        errno: std::io::Error::last_os_error(),
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

/// The ARPHRD type of interface `ifname` (in the calling thread's namespace).
fn arphrd(fd: &OwnedFd, ifname: &str) -> Option<u16> {
    // SAFETY: zeroed ifreq is valid; the name fits (checked) and is NUL-terminated by zeroing.
    let mut ifr: libc::ifreq = unsafe { zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= ifr.ifr_name.len() {
        return None;
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr for the named interface.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) };
    // SAFETY: ifr_ifru is a union; SIOCGIFHWADDR wrote the sockaddr variant.
    if rc == 0 {
        Some(unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_family })
    } else {
        None
    }
}

impl Ring {
    /// Open a ring on interface `ifindex`/`ifname` in the calling thread's namespace (call it
    /// inside `NetNs::run`). `filter(link)` gives the classic BPF program for the interface's link
    /// type; it is attached before bind, so no packet outside it is ever queued.
    pub(crate) fn open_here(
        ifindex: u32,
        ifname: &str,
        netns: &str,
        size: RingSize,
        filter: &dyn Fn(LinkType) -> Option<Vec<libc::sock_filter>>,
    ) -> Result<Ring, CaptureError> {
        // Protocol 0: nothing is received until bind, so the filter and ring are in place first.
        // SAFETY: plain socket(2).
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(os("socket(AF_PACKET)", netns));
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let link = LinkType::from_arphrd(arphrd(&fd, ifname).unwrap_or(libc::ARPHRD_ETHER));
        if let Some(prog) = filter(link) {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog) < 0 {
                return Err(os("SO_ATTACH_FILTER", netns));
            }
        }
        let v: libc::c_int = TPACKET_V3;
        if setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &v) < 0 {
            return Err(os("PACKET_VERSION TPACKET_V3", netns));
        }
        let frame_size = 2048u32;
        let req = libc::tpacket_req3 {
            tp_block_size: size.block_size,
            tp_block_nr: size.blocks,
            tp_frame_size: frame_size,
            tp_frame_nr: size.block_size / frame_size * size.blocks,
            tp_retire_blk_tov: size.block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        if setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req) < 0 {
            return Err(os("PACKET_RX_RING", netns));
        }
        let map_len = size.block_size as usize * size.blocks as usize;
        // SAFETY: mapping the ring the kernel just allocated for this socket.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED,
                fd.as_raw_fd(),
                0,
            )
        };
        let map = if map == libc::MAP_FAILED {
            // MAP_LOCKED fails under a low RLIMIT_MEMLOCK: plain mapping then.
            // SAFETY: as above.
            let m = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if m == libc::MAP_FAILED {
                return Err(os("mmap(PACKET_RX_RING)", netns));
            }
            m
        } else {
            map
        };
        let ring = Ring {
            fd,
            map: map as *mut u8,
            map_len,
            size,
            next: 0,
            link,
            packets: 0,
            drops: 0,
        };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                ring.fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(os("bind(AF_PACKET)", netns));
        }
        Ok(ring)
    }

    /// The fd, for poll(2).
    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn block_status(&self, i: u32) -> &AtomicU32 {
        // SAFETY: block i lies inside the mapping; block_status is at offset 8, 4-aligned.
        unsafe {
            &*(self.map.add(i as usize * self.size.block_size as usize + 8) as *const AtomicU32)
        }
    }

    /// Hand every frame of every block the kernel has filled to `f`, then `None` just before the
    /// block is handed back (frames of it are invalid after that). Returns the number of frames.
    /// At most one ring's worth of blocks, and none after `stop` says so: under traffic faster
    /// than the sink writes, the kernel refills blocks as fast as they are read, and an
    /// unbounded loop never returned to check for Ctrl-C.
    pub(crate) fn drain(
        &mut self,
        stop: impl Fn() -> bool,
        mut f: impl FnMut(Option<Frame<'_>>),
    ) -> usize {
        let mut n = 0;
        for _ in 0..self.size.blocks {
            if stop() {
                return n;
            }
            let i = self.next;
            if self.block_status(i).load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                return n;
            }
            let base = i as usize * self.size.block_size as usize;
            // SAFETY: the block belongs to us until we write TP_STATUS_KERNEL; every offset the
            // kernel wrote stays inside the block (checked against block_size below).
            unsafe {
                let block = self.map.add(base);
                let rd = |off: usize| std::ptr::read_unaligned(block.add(off) as *const u32);
                let num = rd(12);
                let mut off = rd(16) as usize;
                for _ in 0..num {
                    if off + 48 > self.size.block_size as usize {
                        break;
                    }
                    let next = rd(off) as usize;
                    let sec = rd(off + 4);
                    let nsec = rd(off + 8);
                    let snaplen = rd(off + 12) as usize;
                    let len = rd(off + 16);
                    let mac = std::ptr::read_unaligned(block.add(off + 24) as *const u16) as usize;
                    if off + mac + snaplen > self.size.block_size as usize {
                        break;
                    }
                    f(Some(Frame {
                        ts: Duration::new(sec as u64, nsec),
                        wire_len: len,
                        data: std::slice::from_raw_parts(block.add(off + mac), snaplen),
                    }));
                    n += 1;
                    if next == 0 {
                        break;
                    }
                    off += next;
                }
            }
            f(None);
            self.block_status(i)
                .store(TP_STATUS_KERNEL, Ordering::Release);
            self.next = (i + 1) % self.size.blocks;
        }
        n
    }

    /// The block the kernel is filling has frames in it (it hands it over only when full or
    /// after its timeout). Read while the kernel may write it: a hint, never the frames.
    pub(crate) fn filling(&self) -> bool {
        let base = self.next as usize * self.size.block_size as usize;
        // SAFETY: offset 12 (num_pkts) of a block inside the mapping, 4-aligned; a racy read of
        // a u32 the kernel updates, through an atomic.
        let num = unsafe { &*(self.map.add(base + 12) as *const AtomicU32) };
        num.load(Ordering::Relaxed) > 0
            || self.block_status(self.next).load(Ordering::Acquire) & TP_STATUS_USER != 0
    }

    /// (packets that passed the filter, packets the kernel dropped because the ring was full)
    /// since open. PACKET_STATISTICS resets the kernel's counters on read; we add them up.
    pub(crate) fn statistics(&mut self) -> (u64, u64) {
        // tp_packets counts drops too (the kernel adds them before returning).
        if let Some((packets, drops)) =
            crate::dns::capture::packet_statistics(std::os::fd::AsFd::as_fd(&self.fd))
        {
            self.packets += packets;
            self.drops += drops;
        }
        (self.packets, self.drops)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in open_here, once.
        unsafe {
            libc::munmap(self.map as *mut libc::c_void, self.map_len);
        }
    }
}
