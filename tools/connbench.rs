//! Short-connection benchmark helper for tools/bench-proxy (std only; built with rustc -O).
//!   connbench serve ADDR            accept, read a request line, answer, close (4 threads)
//!   connbench client ADDR SECS N    N threads connect/send/receive/close for SECS; prints conns/s
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
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
        _ => eprintln!("usage: connbench serve ADDR | client ADDR SECS THREADS"),
    }
}
