//! Pacing of the UDP thread (a short wait after each batch of a dense stream) and the receive
//! buffers of the proxy's UDP sockets, sized for the gaps when the thread is off the CPU.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::sock::set_int_opt;
use super::super::{Ctx, Level};

/// Datagrams the proxy's UDP sockets must hold while the UDP thread goes without CPU: 50 ms
/// of 1400-byte datagrams at 1.5 Gbit/s (134 000 a second). A busy machine takes the thread
/// off the CPU for tens of milliseconds (a loaded bench round lost 8 693 at the listening
/// socket); whatever arrives meanwhile waits in the socket, or is dropped once it is full.
const STARVED_BURST: usize = 6_700;

/// What one 1400-byte datagram costs in a receive queue (its truesize: the 2 KiB block of its
/// bytes plus the sk_buff): 4 MiB of queue held 1 820 of them over loopback.
const DATAGRAM_TRUESIZE: usize = 2_304;

/// Receive buffer asked for on listening sockets: 16 MiB, the burst's 15.4 MB
/// ([`STARVED_BURST`] x [`DATAGRAM_TRUESIZE`]) rounded up. The kernel doubles what it is asked
/// for (socket(7): room for its bookkeeping), so the queue takes 32 MiB, the burst twice over:
/// for a gap longer than 50 ms, or a driver whose frames cost more than loopback's (a 4 KiB
/// page each). The default 208 KiB holds a millisecond of 1 Gbit/s. A limit, not an
/// allocation: memory is used only while datagrams wait (1000 idle ports cost the same RSS
/// as with the default), and net.ipv4.udp_mem caps all UDP sockets together.
pub(crate) const LISTEN_RCVBUF: usize = 16 << 20;

/// Receive buffer of a flow's backend socket: the same as the listener's. A bulk reply
/// stream (a backend answering one request with a burst) fills it while the thread is off the
/// CPU just as a client's stream fills the listener; DNS-sized traffic never uses it.
pub(super) const BACKEND_RCVBUF: usize = LISTEN_RCVBUF;

/// How long the UDP thread waits after each batch of a dense stream before it reads again,
/// like a NIC's interrupt moderation (rx-usecs): datagrams that arrive meanwhile are moved by
/// the next read in one batch instead of each waking the thread, and each waking the receiver
/// behind the backend socket. It also paces a small backlog (the thread was descheduled for a
/// moment): at most one batch (32 datagrams, ~45 KB of 1400-byte ones) goes to a backend per
/// wait, where a back-to-back drain overflowed a receiver's default 208 KiB buffer. At 1 Gbit/s
/// of 1400-byte datagrams a wait gathers ~9. Paced, the thread moves at most 32 datagrams per
/// wait, ~320 000 a second when the wait lasts what it should; a wait that stretches to
/// milliseconds on a busy machine cuts that to a few thousand, so while the socket's queue is
/// over a quarter of its buffer the wait is shorter ([`BACKLOG_SHARE`]).
/// NETTOOL_PROXY_UDP_COALESCE_US overrides (0: off).
const COALESCE_US: u64 = 100;

/// The wait of [`COALESCE_US`], or the override; None when turned off.
fn coalesce() -> Option<Duration> {
    static WAIT: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *WAIT.get_or_init(|| {
        let us = std::env::var("NETTOOL_PROXY_UDP_COALESCE_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|us| us.min(10_000))
            .unwrap_or(COALESCE_US);
        (us > 0).then(|| Duration::from_micros(us))
    })
}

/// Datagrams a batch must have held for the thread to wait: two or more arrived while it was
/// busy, so more are coming. A request/response client (one datagram, then its answer) never
/// reaches it and never waits; nor does a stream slower than two datagrams per wait.
const COALESCE_MIN: usize = 2;

/// A socket whose receive queue holds more than 1/BACKLOG_SHARE of its buffer is behind: the
/// thread's waits stretched to milliseconds on a busy machine (it was not scheduled back in
/// time), and at one batch per wait it would fall further behind until the socket drops.
/// While behind, the wait after a full batch is a fifth ([`BEHIND_DIVISOR`]) of the usual (at
/// most 20 us).
const BACKLOG_SHARE: u32 = 4;

/// How much shorter the wait is while a socket is behind. Still a wait, not none: draining a
/// backlog back to back took the CPU from the receiver behind the backend socket, which then
/// dropped more than the proxy's socket had (by hand at load 3-6, iperf3 -u 1 Gbit/s, 3 s
/// rounds: no wait lost 26-35%, the usual wait 18-35% (most of it at the proxy's socket), a
/// fifth of it 12-15% with none at the proxy's socket; docs/proxy-bench.md has the table).
const BEHIND_DIVISOR: u32 = 5;

thread_local! {
    /// Datagrams the batched paths moved since this thread last waited.
    static MOVED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// A full batch found its socket backlogged (see [`BACKLOG_SHARE`]): shorten the next wait.
    static BEHIND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// SO_MEMINFO of `fd`: the socket's memory counters, indexed by SK_MEMINFO_* (None if the
/// kernel refused).
fn meminfo(fd: RawFd) -> Option<[u32; 16]> {
    let mut mem = [0u32; 16];
    let mut len = std::mem::size_of_val(&mem) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `mem`, which outlives the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            mem.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(mem)
}

/// After a full batch from `fd` (more datagrams are queued): whether its receive queue holds
/// more than 1/[`BACKLOG_SHARE`] of its buffer (SO_MEMINFO). Asked only then, so a stream
/// that keeps up costs no system call for it.
fn backlogged(fd: RawFd) -> bool {
    meminfo(fd).is_some_and(|mem| {
        mem[libc::SK_MEMINFO_RMEM_ALLOC as usize]
            > mem[libc::SK_MEMINFO_RCVBUF as usize] / BACKLOG_SHARE
    })
}

/// A full batch came from `fd`: pace, for a shorter time if its socket is backlogged.
pub(super) fn pace_after_full(fd: RawFd) {
    if backlogged(fd) {
        BEHIND.with(|b| b.set(true));
    }
    pace();
}

/// Count datagrams moved by a batched path (for [`pace`]).
pub(super) fn moved(n: usize) {
    MOVED.with(|m| m.set(m.get() + n));
}

/// Wait [`COALESCE_US`] if the datagrams moved since the last wait make a dense stream. The UDP
/// thread calls it before it blocks for events (its runtime's park hook) and after a full batch
/// (which does not block: more are queued); shorter when that batch found its socket behind.
/// The thread serves every UDP listener of the proxy,
/// so while one port carries a dense stream a datagram on another can wait the same 100 us.
pub(crate) fn pace() {
    let behind = BEHIND.with(|b| b.replace(false));
    if MOVED.with(|m| m.replace(0)) >= COALESCE_MIN {
        if let Some(wait) = coalesce() {
            // Behind, at most a fifth of the default too: an override that lengthens the wait
            // does not slow the catching up.
            let short =
                (wait / BEHIND_DIVISOR).min(Duration::from_micros(COALESCE_US) / BEHIND_DIVISOR);
            std::thread::sleep(if behind { short } else { wait });
        }
    }
}

/// The smallest receive queue (bytes, as the kernel counts them) a socket got when
/// net.core.rmem_max capped what [`size_rcvbuf`] asked for; 0 while none was capped.
static CAPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Whether [`say_if_capped`] has said it (once per process).
static CAPPED_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// SO_RCVBUFFORCE (root may exceed net.core.rmem_max), else SO_RCVBUF capped by the sysctl;
/// a capped socket is remembered for [`say_if_capped`] (the sockets are made before the log
/// is at hand).
pub(crate) fn size_rcvbuf(s: &impl AsRawFd, bytes: usize) {
    let v = bytes as libc::c_int;
    // SO_RCVBUFFORCE is never capped: no SO_MEMINFO to ask then (one getsockopt less per new
    // flow, a DNS query from a fresh port being one).
    if set_int_opt(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v).is_ok() {
        return;
    }
    let _ = set_int_opt(s, libc::SOL_SOCKET, libc::SO_RCVBUF, v);
    // The kernel doubles what it is asked for; less than that means the sysctl capped it.
    if let Some(mem) = meminfo(s.as_raw_fd()) {
        let got = mem[libc::SK_MEMINFO_RCVBUF as usize] as usize;
        if got < 2 * bytes {
            let _ = CAPPED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c == 0 || got < c).then_some(got)
            });
        }
    }
}

/// Say once in the log that net.core.rmem_max capped a UDP socket's receive buffer (not root:
/// SO_RCVBUFFORCE needs CAP_NET_ADMIN), with how long a gap the smaller queue rides out.
pub(super) fn say_if_capped(ctx: &Ctx) {
    let got = CAPPED.load(Ordering::Relaxed);
    if got == 0 || CAPPED_SAID.swap(true, Ordering::Relaxed) {
        return;
    }
    let holds = got / DATAGRAM_TRUESIZE;
    let want = 2 * LISTEN_RCVBUF / DATAGRAM_TRUESIZE;
    // 1400-byte datagrams at 1.5 Gbit/s: 134 per millisecond.
    let ms = |n: usize| n * 50 / STARVED_BURST;
    ctx.log(
        Level::Warn,
        format!(
            "udp: receive buffers capped at {} KiB by net.core.rmem_max (asked for {} KiB; \
             above it needs CAP_NET_ADMIN): a socket holds ~{holds} datagrams of 1400 bytes, \
             {} ms of 1.5 Gbit/s while the UDP thread is off the CPU (uncapped: {} ms); \
             raise it with `sysctl -w net.core.rmem_max={}` or run the proxy as root",
            got / 2 / 1024,
            LISTEN_RCVBUF / 1024,
            ms(holds),
            ms(want),
            LISTEN_RCVBUF
        ),
    );
}
