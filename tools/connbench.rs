//! Short-connection benchmark helper for tools/bench-proxy (std only; built with rustc -O).
//!   connbench serve ADDR            accept, read a request line, answer, close (4 threads)
//!   connbench client ADDR SECS N    N threads connect/send/receive/close for SECS; prints conns/s
//!   connbench splice LISTEN TARGET  the floor for a splice proxy: per connection one blocking
//!                                   thread per direction, socket -> 1 MiB pipe -> socket, no
//!                                   event loop, no logging, no half-close or reset care
//!   connbench sockmap LISTEN TARGET the floor below splice: the kernel moves the bytes itself
//!                                   (a BPF sk_skb verdict program redirects each received skb
//!                                   to the other socket of the pair through a SOCKHASH); one
//!                                   thread per connection only waits for the end. Not a proxy:
//!                                   the FIN is passed on after a fixed 200 ms, not after the
//!                                   last redirected byte has left, and bytes queued before a
//!                                   socket joined the map are copied by hand. Needs root.
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(|s| s.as_str()) {
        Some("serve") => {
            let l = Arc::new(TcpListener::bind(&a[2]).expect("bind"));
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let l = l.clone();
                    std::thread::spawn(move || loop {
                        if let Ok((mut s, _)) = l.accept() {
                            let mut buf = [0u8; 64];
                            if s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {
                                let _ = s.write_all(b"pong\n");
                            }
                        }
                    })
                })
                .collect();
            for h in hs {
                let _ = h.join();
            }
        }
        Some("client") => {
            let secs: u64 = a[3].parse().unwrap();
            let n: usize = a[4].parse().unwrap();
            let done = Arc::new(AtomicU64::new(0));
            let errs = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let t0 = Instant::now();
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    let (addr, done, errs, stop) = (a[2].clone(), done.clone(), errs.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16];
                        while !stop.load(Ordering::Relaxed) {
                            let ok = (|| -> std::io::Result<()> {
                                let mut s = TcpStream::connect(&addr)?;
                                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                                s.write_all(b"ping\n")?;
                                let mut got = 0;
                                while got < 5 {
                                    let k = s.read(&mut buf[got..])?;
                                    if k == 0 {
                                        break;
                                    }
                                    got += k;
                                }
                                if got == 5 { Ok(()) } else { Err(std::io::Error::other("short")) }
                            })();
                            match ok {
                                Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                                Err(_) => errs.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs(secs));
            stop.store(true, Ordering::Relaxed);
            for h in hs {
                let _ = h.join();
            }
            let el = t0.elapsed().as_secs_f64();
            println!("{:.0} {}", done.load(Ordering::Relaxed) as f64 / el, errs.load(Ordering::Relaxed));
        }
        Some("splice") => {
            let l = TcpListener::bind(&a[2]).expect("bind");
            for c in l.incoming().flatten() {
                let Ok(b) = TcpStream::connect(&a[3]) else { continue };
                let _ = (c.set_nodelay(true), b.set_nodelay(true));
                let (c2, b2) = (c.try_clone().unwrap(), b.try_clone().unwrap());
                std::thread::spawn(move || splice_dir(c, b));
                std::thread::spawn(move || splice_dir(b2, c2));
            }
        }
        Some("sockmap") => sockmap::run(&a[2], &a[3]),
        _ => eprintln!("usage: connbench serve ADDR | client ADDR SECS THREADS | splice LISTEN TARGET | sockmap LISTEN TARGET"),
    }
}

extern "C" {
    fn splice(fd_in: i32, off_in: *mut i64, fd_out: i32, off_out: *mut i64, len: usize, flags: u32) -> isize;
    fn pipe(fds: *mut i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    fn close(fd: i32) -> i32;
}
const F_SETPIPE_SZ: i32 = 1031;
const SPLICE_F_MOVE: u32 = 1;
const PIPE: usize = 1 << 20;

/// Blocking splice of one direction until EOF or an error, then pass the FIN on.
fn splice_dir(src: TcpStream, dst: TcpStream) {
    let mut p = [0i32; 2];
    // SAFETY: plain syscalls on descriptors this function owns or borrows for its lifetime.
    unsafe {
        if pipe(p.as_mut_ptr()) != 0 {
            return;
        }
        fcntl(p[1], F_SETPIPE_SZ, PIPE as i32);
        let null = std::ptr::null_mut();
        'copy: loop {
            let n = splice(src.as_raw_fd(), null, p[1], null, PIPE, SPLICE_F_MOVE);
            if n <= 0 {
                break;
            }
            let mut left = n as usize;
            while left > 0 {
                let m = splice(p[0], null, dst.as_raw_fd(), null, left, SPLICE_F_MOVE);
                if m <= 0 {
                    break 'copy;
                }
                left -= m as usize;
            }
        }
        close(p[0]);
        close(p[1]);
    }
    let _ = dst.shutdown(Shutdown::Write);
}

/// The sockmap floor: raw bpf(2), no libbpf (this file builds with rustc alone).
mod sockmap {
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    extern "C" {
        fn syscall(n: i64, ...) -> i64;
    }
    #[cfg(target_arch = "aarch64")]
    const SYS_BPF: i64 = 280;
    #[cfg(not(target_arch = "aarch64"))]
    const SYS_BPF: i64 = 321; // x86_64
    const BPF_MAP_CREATE: i64 = 0;
    const BPF_MAP_UPDATE_ELEM: i64 = 2;
    const BPF_PROG_LOAD: i64 = 5;
    const BPF_PROG_ATTACH: i64 = 8;
    const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
    const BPF_PROG_TYPE_SK_SKB: u32 = 14;
    const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
    const SKB_REMOTE_PORT: i16 = 132; // offsetof(struct __sk_buff, remote_port): network order << 16
    const SKB_LOCAL_PORT: i16 = 136; // host order
    const FUNC_SK_REDIRECT_HASH: i32 = 72;

    fn bpf(cmd: i64, attr: &mut [u8; 128]) -> i64 {
        // SAFETY: bpf(2) reads at most the 128 bytes of attr we pass.
        let r = unsafe { syscall(SYS_BPF, cmd, attr.as_mut_ptr(), 128u32) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            eprintln!("connbench sockmap: bpf({cmd}): {e}");
            std::process::exit(1);
        }
        r
    }
    fn put32(a: &mut [u8; 128], off: usize, v: u32) {
        a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put64(a: &mut [u8; 128], off: usize, v: u64) {
        a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        (code as u64) | ((dst as u64 | (src as u64) << 4) << 8) | ((off as u16 as u64) << 16) | ((imm as u32 as u64) << 32)
    }

    /// The key a socket of a pair is found under: the client-side socket by the client's port
    /// (as the program reads remote_port: byte-swapped), the backend-side one by its own port.
    fn add(map: u32, key: u32, fd: i32) {
        let (k, v) = (key, fd as u32);
        let mut a = [0u8; 128];
        put32(&mut a, 0, map);
        put64(&mut a, 8, &k as *const u32 as u64);
        put64(&mut a, 16, &v as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a);
    }

    pub fn run(listen: &str, target: &str) {
        let l = TcpListener::bind(listen).expect("bind");
        let lport = l.local_addr().unwrap().port();
        let mut a = [0u8; 128];
        put32(&mut a, 0, BPF_MAP_TYPE_SOCKHASH);
        put32(&mut a, 4, 4);
        put32(&mut a, 8, 4);
        put32(&mut a, 12, 65536);
        let map = bpf(BPF_MAP_CREATE, &mut a) as u32;
        // key = local_port == LISTEN ? remote_port >> 16 : local_port; redirect to key's socket.
        let prog: Vec<u64> = vec![
            insn(0xbf, 6, 1, 0, 0),                            // r6 = r1
            insn(0x61, 2, 6, SKB_LOCAL_PORT, 0),               // r2 = skb->local_port
            insn(0x55, 2, 0, 2, lport as i32),                 // if r2 != LISTEN goto +2
            insn(0x61, 2, 6, SKB_REMOTE_PORT, 0),              // r2 = skb->remote_port
            insn(0x77, 2, 0, 0, 16),                           // r2 >>= 16
            insn(0x63, 10, 2, -4, 0),                          // *(u32 *)(r10 - 4) = r2
            insn(0x18, 2, 1, 0, map as i32),                   // r2 = map (ld_imm64, pseudo map fd)
            0,
            insn(0xbf, 3, 10, 0, 0),                           // r3 = r10
            insn(0x07, 3, 0, 0, -4),                           // r3 += -4
            insn(0xbf, 1, 6, 0, 0),                            // r1 = r6
            insn(0xb7, 4, 0, 0, 0),                            // r4 = 0 (egress)
            insn(0x85, 0, 0, 0, FUNC_SK_REDIRECT_HASH),        // call bpf_sk_redirect_hash
            insn(0x95, 0, 0, 0, 0),                            // exit
        ];
        let license = b"GPL\0";
        let mut log = vec![0u8; 65536];
        let mut a = [0u8; 128];
        put32(&mut a, 0, BPF_PROG_TYPE_SK_SKB);
        put32(&mut a, 4, prog.len() as u32);
        put64(&mut a, 8, prog.as_ptr() as u64);
        put64(&mut a, 16, license.as_ptr() as u64);
        put32(&mut a, 24, 1);
        put32(&mut a, 28, log.len() as u32);
        put64(&mut a, 32, log.as_mut_ptr() as u64);
        // SAFETY: as in bpf(); the verifier's log is printed if the load fails.
        let pfd = unsafe { syscall(SYS_BPF, BPF_PROG_LOAD, a.as_mut_ptr(), 128u32) };
        if pfd < 0 {
            let e = std::io::Error::last_os_error();
            let end = log.iter().position(|b| *b == 0).unwrap_or(0);
            eprintln!("connbench sockmap: program load: {e}\n{}", String::from_utf8_lossy(&log[..end]));
            std::process::exit(1);
        }
        let mut a = [0u8; 128];
        put32(&mut a, 0, map);
        put32(&mut a, 4, pfd as u32);
        put32(&mut a, 8, BPF_SK_SKB_STREAM_VERDICT);
        bpf(BPF_PROG_ATTACH, &mut a);
        for c in l.incoming().flatten() {
            let Ok(b) = TcpStream::connect(target) else { continue };
            let _ = (c.set_nodelay(true), b.set_nodelay(true));
            let cport = c.peer_addr().unwrap().port();
            let bport = b.local_addr().unwrap().port();
            add(map, bport as u32, c.as_raw_fd());
            add(map, cport.swap_bytes() as u32, b.as_raw_fd());
            std::thread::spawn(move || wait_end(c, b));
        }
    }

    /// Wait until one side sends its FIN (a read of 0: every byte went to the other side), give
    /// the redirected bytes 200 ms to leave, then pass the FIN on; the same for the other side.
    fn wait_end(c: TcpStream, b: TcpStream) {
        let mut fds = [
            libc_pollfd(c.as_raw_fd()),
            libc_pollfd(b.as_raw_fd()),
        ];
        let mut open = [true, true];
        while open[0] || open[1] {
            // SAFETY: poll on two descriptors this thread owns.
            let n = unsafe { poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                return;
            }
            for i in 0..2 {
                if open[i] && fds[i].revents != 0 {
                    let mut buf = [0u8; 4096];
                    let s = if i == 0 { &c } else { &b };
                    match std::io::Read::read(&mut &*s, &mut buf) {
                        // The program took what woke us.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Ok(0) | Err(_) => {
                            open[i] = false;
                            fds[i].fd = -1;
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            let other = if i == 0 { &b } else { &c };
                            let _ = other.shutdown(Shutdown::Write);
                        }
                        // Bytes that were queued before the socket joined the map (a client
                        // that writes first, like iperf3's cookie): copied over by hand. A
                        // client that writes again before an answer could overtake them.
                        Ok(n) => {
                            let other = if i == 0 { &b } else { &c };
                            let _ = std::io::Write::write_all(&mut &*other, &buf[..n]);
                        }
                    }
                }
            }
        }
    }

    #[repr(C)]
    struct PollFd {
        fd: i32,
        events: i16,
        revents: i16,
    }
    fn libc_pollfd(fd: i32) -> PollFd {
        PollFd { fd, events: 1 /* POLLIN */, revents: 0 }
    }
    extern "C" {
        fn poll(fds: *mut PollFd, n: u64, timeout: i32) -> i32;
    }
}
