//! Short-connection benchmark helper for tools/bench-proxy (std only; built with rustc -O).
//!   connbench serve ADDR            accept, read a request line, answer, close (4 threads)
//!   connbench client ADDR SECS N    N threads connect/send/receive/close for SECS; prints conns/s
//!   connbench splice LISTEN TARGET  the floor for a splice proxy: per connection one blocking
//!                                   thread per direction, socket -> 1 MiB pipe -> socket, no
//!                                   event loop, no logging, no half-close or reset care
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
        _ => eprintln!("usage: connbench serve ADDR | client ADDR SECS THREADS | splice LISTEN TARGET"),
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
