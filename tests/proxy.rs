//! `nettool proxy` against real clients and backends, each test inside its own namespaces.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{in_ns, sh, transparent_traces, unique, wait_for, ChildGuard, TestNs};
use nettool::netns::NetNs;

const BIN: &str = env!("CARGO_BIN_EXE_nettool");

/// A scratch directory removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A namespace with lo up and a few extra addresses.
fn lab(tag: &str) -> TestNs {
    let ns = TestNs::new(tag);
    ns.ip(&["addr", "add", "10.9.0.1/32", "dev", "lo"]);
    ns.ip(&["addr", "add", "fd00::9/128", "dev", "lo", "nodad"]);
    ns
}

fn netns(ns: &TestNs) -> NetNs {
    NetNs::from_name(&ns.name).unwrap()
}

/// Run `f` inside `ns` on a fresh thread (the test's own threads never switch).
fn inside<T: Send>(ns: &TestNs, f: impl FnOnce() -> T + Send) -> T {
    netns(ns).run(f).unwrap()
}

/// A TCP listener made inside `ns`.
fn listen_in(ns: &TestNs, addr: &str) -> TcpListener {
    let a: SocketAddr = addr.parse().unwrap();
    inside(ns, move || TcpListener::bind(a).unwrap())
}

/// A connection made from inside `ns`.
fn connect_in(ns: &TestNs, addr: &str) -> std::io::Result<TcpStream> {
    let a: SocketAddr = addr.parse().unwrap();
    inside(ns, move || {
        TcpStream::connect_timeout(&a, Duration::from_secs(5))
    })
}

/// Backend: answer each connection with the number of bytes received before EOF (needs the
/// half-close passed on to ever answer).
fn count_backend(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut n = 0usize;
                let mut buf = [0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                let _ = s.write_all(n.to_string().as_bytes());
            });
        }
    });
}

/// Backend: echo everything, close after EOF.
fn echo_backend(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let _ = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = std::io::copy(&mut r, &mut w);
                    let _ = w.shutdown(Shutdown::Write);
                });
        }
    });
}

/// A running proxy; killed on drop.
struct Proxy {
    child: ChildGuard,
    log: PathBuf,
}

impl Proxy {
    fn pid(&self) -> u32 {
        self.child.pid()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Wait up to 10 s for `want` in the log.
    fn wait_logged(&self, want: &str) {
        self.wait_logged_within(want, 10)
    }
    /// Wait up to `secs` for `want` in the log; a timeout shows the log as it was.
    fn wait_logged_within(&self, want: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.log().contains(want) {
            assert!(
                Instant::now() < deadline,
                "timed out after {secs} s waiting for '{want}' in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// Wait up to 15 s for a line with `start` and then `then` in it (a stopped container's),
    /// and check it is said once: 4 s later (the watch's lookups come less and less often)
    /// still one line has `start`.
    fn wait_said_once(&self, start: &str, then: &str) {
        wait_for(&format!("'{start}...{then}' in the log"), 15, || {
            self.log()
                .lines()
                .any(|l| l.contains(start) && l.contains(then))
        });
        std::thread::sleep(Duration::from_secs(4));
        let said = self.log().matches(start).count();
        assert_eq!(said, 1, "log:\n{}", self.log());
    }
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
    /// SIGTERM and wait: must exit 0.
    fn stop(mut self) -> String {
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let st = self.child.0.wait().unwrap();
        assert_eq!(
            st.code(),
            Some(0),
            "proxy exit status; log:\n{}",
            self.log()
        );
        self.log()
    }
}

/// A pipe whose write end the child gets as fd 3 (docker-proxy's readiness contract).
/// Drop the returned write end right after spawn so EOF arrives when the child closes its copy.
fn ready_pipe(cmd: &mut Command) -> (std::fs::File, std::os::fd::OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let wfd = w.as_raw_fd();
    unsafe {
        cmd.pre_exec(move || {
            if wfd == 3 {
                let fl = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
            } else if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    (r.into(), w)
}

/// Read the readiness answer (everything until EOF).
fn read_ready(mut r: std::fs::File) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// Start `nettool proxy ARGS` inside `ns` (or in the test's namespace when None) and wait for
/// "0\n" on its --ready-fd.
fn start(ns: Option<&TestNs>, dir: &TempDir, args: &[&str]) -> Proxy {
    start_with(ns, dir, args, &[])
}

/// One `#[test]` per relay for a test body that takes the relay first:
/// `on_both_relays!(NAME_fast_path, NAME_tokio_path => body(more args))`.
macro_rules! on_both_relays {
    ($fast:ident, $tokio:ident => $body:ident($($arg:expr),*)) => {
        #[test]
        fn $fast() {
            $body(Relay::FastPath $(, $arg)*);
        }

        #[test]
        fn $tokio() {
            $body(Relay::Tokio $(, $arg)*);
        }
    };
}

/// [`start`] on tokio's path (NETTOOL_PROXY_FASTPATH=0): what serves a proxy with -v or a PROXY
/// header (plain TCP takes the event loop by default); see [`Relay`]. Checked to be on it, as
/// [`start_fast`] checks the loop's: the loop threads start before the readiness answer.
fn start_tokio(ns: Option<&TestNs>, dir: &TempDir, args: &[&str]) -> Proxy {
    let p = start_with(ns, dir, args, &[("NETTOOL_PROXY_FASTPATH", "0")]);
    assert_eq!(
        threads_named(p.pid(), "nettool-fast"),
        0,
        "NETTOOL_PROXY_FASTPATH=0 left the event loop on"
    );
    p
}

/// [`start`] with extra environment variables.
fn start_with(ns: Option<&TestNs>, dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> Proxy {
    let cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, BIN]);
            c
        }
        None => Command::new(BIN),
    };
    start_cmd(cmd, dir, args, env)
}

/// [`start_with`] for a command that ends in the nettool binary (run through a wrapper).
fn start_cmd(mut cmd: Command, dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> Proxy {
    let log = dir.join(&format!("proxy-{}.log", unique("l")));
    cmd.arg("proxy")
        .args(args)
        .args(["--ready-fd", "3", "--log-file"])
        .arg(&log)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (r, w) = ready_pipe(&mut cmd);
    let child = cmd.spawn().expect("spawn nettool proxy");
    drop(w);
    let answer = read_ready(r);
    let p = Proxy {
        child: ChildGuard(child),
        log,
    };
    assert_eq!(answer, "0\n", "readiness answer; log:\n{}", p.log());
    p
}

/// Send `n` bytes to a [`count_backend`] through `addr`, half-close, and return its answer. A
/// half-close not passed on fails the read after 10 s instead of hanging the test.
fn send_count(ns: &TestNs, addr: &str, n: usize) -> String {
    let mut s = connect_in(ns, addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data = vec![b'x'; n];
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("{addr}: no answer after the half-close: {e}"));
    out
}

#[test]
fn udp_ipv4_ipv6_flows_and_reply_source() {
    let ns = lab("pxudp");
    let dir = TempDir::new("pxudp");
    for addr in ["127.0.0.1:5300", "[::1]:5301"] {
        let a: SocketAddr = addr.parse().unwrap();
        let s = inside(&ns, move || UdpSocket::bind(a).unwrap());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = s.recv_from(&mut buf).unwrap();
                let mut reply = format!("{n}:").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                reply.truncate(65000);
                let _ = s.send_to(&reply, from);
            }
        });
    }
    let p = start(
        Some(&ns),
        &dir,
        &[
            "-p",
            "udp:5353=127.0.0.1:5300",
            "-p",
            "udp:[::]:5354=[::1]:5301",
            "--udp-timeout",
            "2",
        ],
    );
    let ask = |to: &'static str, bind: &'static str, payload: Vec<u8>| {
        inside(&ns, move || {
            let s = UdpSocket::bind(bind).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.send_to(&payload, to).unwrap();
            let mut buf = vec![0u8; 65536];
            s.recv_from(&mut buf).map(|(n, from)| {
                (
                    String::from_utf8_lossy(&buf[..n.min(20)]).into_owned(),
                    from,
                    n,
                )
            })
        })
        .unwrap_or_else(|e| panic!("no reply from {to}: {e}; proxy log:\n{}", p.log()))
    };
    // The reply must come from the address the client sent to, not any other local address.
    let (r, from, _) = ask("10.9.0.1:5353", "0.0.0.0:0", b"hello".to_vec());
    assert_eq!(r, "5:hello");
    assert_eq!(from, "10.9.0.1:5353".parse().unwrap());
    let (r, from, _) = ask("127.0.0.1:5353", "0.0.0.0:0", b"again".to_vec());
    assert_eq!(
        (r.as_str(), from),
        ("5:again", "127.0.0.1:5353".parse().unwrap())
    );
    let (r, from, _) = ask("[fd00::9]:5354", "[::]:0", b"six".to_vec());
    assert_eq!(
        (r.as_str(), from),
        ("3:six", "[fd00::9]:5354".parse().unwrap())
    );
    // A 60 000-byte datagram passes whole.
    let (r, _, n) = ask("127.0.0.1:5353", "0.0.0.0:0", vec![b'z'; 60_000]);
    assert!(r.starts_with("60000:zz"), "{r}");
    assert_eq!(n, 60006);
    // Idle flows expire (timeout 2 s) and are reported as closed.
    wait_for("udp flows to expire", 10, || {
        unsafe { libc::kill(p.pid() as i32, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(300));
        p.log().contains("connections=4 active=0")
    });
    p.stop();
}

/// Port ranges, several mappings in one process, each listener on its own backend port.
fn port_ranges_in_one_process(relay: Relay) {
    let ns = lab("pxrange");
    let dir = TempDir::new("pxrange");
    for port in 7000..7003 {
        let l = listen_in(&ns, &format!("127.0.0.1:{port}"));
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(format!("backend {port}").as_bytes());
            }
        });
    }
    let p = relay.start(
        Some(&ns),
        &dir,
        &[
            "-p",
            "9000-9002=127.0.0.1:7000-7002",
            "-p",
            "127.0.0.1:9100-9199=127.0.0.1:7001",
        ],
    );
    let get = |addr: &str| {
        let mut s = connect_in(&ns, addr).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert_eq!(get("127.0.0.1:9000"), "backend 7000");
    assert_eq!(get("[::1]:9002"), "backend 7002");
    assert_eq!(get("127.0.0.1:9100"), "backend 7001");
    assert_eq!(get("127.0.0.1:9199"), "backend 7001");
    let log = p.stop();
    assert_eq!(log.matches("listening on tcp").count(), 6 + 100, "{log}");
}

on_both_relays!(
    port_ranges_in_one_process_fast_path,
    port_ranges_in_one_process_tokio_path
    => port_ranges_in_one_process()
);

/// `tshark -r PCAP ARGS`, which must succeed: its stdout.
fn tshark(pcap: &Path, args: &[&str]) -> String {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(args)
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bytes a hex dump spells (anything but hex digits between them is passed over).
fn unhex(h: &str) -> Vec<u8> {
    let h: String = h.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Parse `tshark -qz follow,tcp,raw,N` into (client bytes, server bytes).
fn tshark_follow(pcap: &Path, stream: u32) -> (Vec<u8>, Vec<u8>) {
    let text = tshark(pcap, &["-qz", &format!("follow,tcp,raw,{stream}")]);
    let (mut c, mut s) = (Vec::new(), Vec::new());
    let mut body = false;
    for line in text.lines() {
        if line.starts_with("Node 1:") {
            body = true;
            continue;
        }
        if !body || line.starts_with("====") || line.trim().is_empty() {
            continue;
        }
        if let Some(h) = line.strip_prefix('\t') {
            s.extend(unhex(h.trim()));
        } else {
            c.extend(unhex(line.trim()));
        }
    }
    (c, s)
}

#[test]
fn pcap_reproduces_both_legs_byte_for_byte_in_tshark() {
    let ns = lab("pxpcap");
    let dir = TempDir::new("pxpcap");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let pcap = dir.join("cap.pcap");
    let p = start(
        Some(&ns),
        &dir,
        &["8080", "127.0.0.1:7000", "--pcap", pcap.to_str().unwrap()],
    );
    let data: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
    let d2 = data.clone();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&d2).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back, data);
    p.stop();
    let mode = std::fs::metadata(&pcap).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    // Stream 0 is client <-> proxy, stream 1 is proxy <-> backend: both carry every byte.
    for stream in [0, 1] {
        let (c, sv) = tshark_follow(&pcap, stream);
        assert!(
            c == data,
            "stream {stream}: client side differs ({} bytes)",
            c.len()
        );
        assert!(
            sv == data,
            "stream {stream}: server side differs ({} bytes)",
            sv.len()
        );
    }
}

#[test]
fn dump_decodes_http_tls_dns_and_redis_from_real_clients() {
    let ns = lab("pxl7");
    let dir = TempDir::new("pxl7");
    // HTTP backend with a chunked response.
    let l = listen_in(&ns, "127.0.0.1:7080");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok() && line != "\r\n" && !line.is_empty() {
                line.clear();
            }
            let mut s = s;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n");
        }
    });
    // RESP backend: +OK to everything.
    let l = listen_in(&ns, "127.0.0.1:7379");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(b"+OK\r\n").is_err() {
                    break;
                }
            }
        }
    });
    // TLS and DNS-over-TCP backend: swallow everything.
    let l = listen_in(&ns, "127.0.0.1:7443");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    // DNS over UDP backend: turn the query into an empty NXDOMAIN response.
    let s = inside(&ns, || UdpSocket::bind("127.0.0.1:7053").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            if n > 3 {
                buf[2] |= 0x80;
                buf[3] = (buf[3] & 0xf0) | 3;
                let _ = s.send_to(&buf[..n], from);
            }
        }
    });
    let jsonf = dir.join("events.json");
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--json",
            "--dump-file",
            jsonf.to_str().unwrap(),
            "-p",
            "8080=127.0.0.1:7080",
            "-p",
            "6379=127.0.0.1:7379",
            "-p",
            "8443=127.0.0.1:7443",
            "-p",
            "udp:53=127.0.0.1:7053",
            "-p",
            "53=127.0.0.1:7443",
        ],
    );
    let run = |argv: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name])
            .args(argv)
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    let out = run(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:8080/index.html",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world");
    run(&[
        "timeout",
        "5",
        "openssl",
        "s_client",
        "-connect",
        "127.0.0.1:8443",
        "-servername",
        "shop.example.test",
        "-alpn",
        "h2,http/1.1",
    ]);
    run(&[
        "dig",
        "+tries=1",
        "+time=2",
        "@127.0.0.1",
        "example.test",
        "A",
    ]);
    run(&[
        "dig",
        "+tcp",
        "+tries=1",
        "+time=1",
        "@127.0.0.1",
        "tcp.example.test",
        "AAAA",
    ]);
    let mut r = connect_in(&ns, "127.0.0.1:6379").unwrap();
    r.write_all(b"*3\r\n$3\r\nSET\r\n$5\r\nmykey\r\n$7\r\nmyvalue\r\n")
        .unwrap();
    let mut buf = [0u8; 5];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+OK\r\n");
    drop(r);
    std::thread::sleep(Duration::from_millis(300));
    p.stop();
    let text = std::fs::read_to_string(&jsonf).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let l7: Vec<&serde_json::Value> = events
        .iter()
        .filter_map(|e| e.get("l7"))
        .flat_map(|v| v.as_array().unwrap())
        .collect();
    let has = |pred: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        assert!(l7.iter().any(|v| pred(v)), "no {what} in {l7:#?}");
    };
    has(
        &|v| v["proto"] == "http_head" && v["method"] == "GET" && v["target"] == "/index.html",
        "http request",
    );
    has(
        &|v| v["proto"] == "http_head" && v["status"] == 200,
        "http response",
    );
    has(
        &|v| {
            v["proto"] == "http_body"
                && v["bytes"] == 11
                && v["chunked"] == true
                && v["chunks"] == 2
        },
        "chunked body",
    );
    has(
        &|v| {
            v["proto"] == "tls_client_hello"
                && v["sni"] == "shop.example.test"
                && v["alpn"] == serde_json::json!(["h2", "http/1.1"])
        },
        "tls client hello",
    );
    has(
        &|v| {
            v["proto"] == "dns" && v["questions"][0] == "example.test. A" && v["response"] == false
        },
        "dns udp query",
    );
    has(
        &|v| v["proto"] == "dns" && v["response"] == true && v["rcode"] == "NXDomain",
        "dns udp response",
    );
    has(
        &|v| v["proto"] == "dns" && v["questions"][0] == "tcp.example.test. AAAA",
        "dns tcp query",
    );
    has(
        &|v| v["proto"] == "resp" && v["parts"] == serde_json::json!(["SET", "mykey", "myvalue"]),
        "redis command",
    );
    has(
        &|v| v["proto"] == "resp" && v["kind"] == "reply" && v["parts"][0] == "OK",
        "redis reply",
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&jsonf).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn text_and_hex_dumps_name_the_connection_direction_and_offsets() {
    let ns = lab("pxtext");
    let dir = TempDir::new("pxtext");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    for (flag, needle) in [
        ("--dump", "\n  GET /a HTTP/1.1\\r\n  Host: x\\r\n"),
        (
            "--hex",
            " 00000000  47 45 54 20 2f 61 20 48 54 54 50 2f 31 2e 31 0d  |GET /a HTTP/1.1.|",
        ),
    ] {
        let f = dir.join(&format!("{}.txt", &flag[2..]));
        let streams = dir.join(&format!("streams{}", &flag[2..]));
        let p = start(
            Some(&ns),
            &dir,
            &[
                flag,
                "--dump-file",
                f.to_str().unwrap(),
                "--streams",
                streams.to_str().unwrap(),
                "8080",
                "127.0.0.1:7000",
            ],
        );
        let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        let port = s.local_addr().unwrap().port();
        p.stop();
        let d = std::fs::read_to_string(&f).unwrap();
        let head = format!("> #1 127.0.0.1:{port} -> 127.0.0.1:8080 => 127.0.0.1:");
        assert!(
            d.contains(&head),
            "{flag}: no block header {head:?} in\n{d}"
        );
        assert!(d.contains("-> 127.0.0.1:7000  20"), "{d}");
        assert!(d.contains("length=28 from=0 to=27"), "{d}");
        assert!(d.contains(&format!("< #1 127.0.0.1:{port}")), "{d}");
        assert!(d.contains(needle), "{flag}: {d}");
        assert!(d.contains("# #1 c2s http request: GET /a HTTP/1.1"), "{d}");
        let files: Vec<String> = std::fs::read_dir(&streams)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        let c2s = streams.join(format!("c000001-127.0.0.1.{port}-127.0.0.1.7000"));
        assert_eq!(
            std::fs::read(c2s).unwrap(),
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        );
    }
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A 64 KB tmpfs at DIR/small, to fill a dump destination quickly; unmounted when the guard drops.
fn small_tmpfs(dir: &TempDir) -> (PathBuf, Tmpfs) {
    let mnt = dir.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    common::sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=64k",
        "nt-test-tmpfs",
        mnt.to_str().unwrap(),
    ]);
    (mnt.clone(), Tmpfs(mnt))
}

#[test]
fn a_full_dump_disk_stops_the_dump_not_the_forwarding() {
    let ns = lab("pxfull");
    let dir = TempDir::new("pxfull");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let (mnt, _guard) = small_tmpfs(&dir);
    let dump = mnt.join("dump.txt");
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--hex",
            "--dump-file",
            dump.to_str().unwrap(),
            "8080",
            "127.0.0.1:7000",
        ],
    );
    for round in 0..2 {
        let data = vec![b'q'; 1_000_000];
        let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
        let mut w = s.try_clone().unwrap();
        let d2 = data.clone();
        let t = std::thread::spawn(move || {
            w.write_all(&d2).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        t.join().unwrap();
        assert_eq!(back.len(), data.len(), "round {round}");
    }
    let log = p.stop();
    assert!(
        log.contains("failed: No space left on device") && log.contains("forwarding continues"),
        "{log}"
    );
    assert!(log.contains("connections=2"), "{log}");
}

#[test]
fn docker_proxy_flags_fd3_and_errors() {
    let ns = lab("pxdflags");
    let dir = TempDir::new("pxdflags");
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    let link = dir.join("docker-proxy");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let logf = dir.join("dp.log");
    let spawn = |argv0_link: bool, args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name]);
        if argv0_link {
            c.arg(&link);
        } else {
            c.args([BIN, "proxy"]);
        }
        c.args(args)
            .env("NETTOOL_PROXY_LOG", &logf)
            .env("NETTOOL_PROXY_CONFIG", dir.join("none.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (r, w) = ready_pipe(&mut c);
        let child = c.spawn().unwrap();
        drop(w);
        (ChildGuard(child), read_ready(r))
    };
    // Every Go spelling: -x v, -x=v, --x v.
    let (mut child, ready) = spawn(
        true,
        &[
            "-proto",
            "tcp",
            "-host-ip=127.0.0.1",
            "--host-port",
            "8080",
            "-container-ip",
            "127.0.0.1",
            "-container-port=7000",
        ],
    );
    assert_eq!(ready, "0\n");
    assert_eq!(send_count(&ns, "127.0.0.1:8080", 77), "77");
    // The same port again fails with "1\n<error>" on fd 3 and exit status 1.
    let (mut second, ready2) = spawn(
        false,
        &docker_flags("tcp", ("127.0.0.1", "8080"), ("127.0.0.1", "7000")),
    );
    assert!(
        ready2.starts_with("1\n") && ready2.contains("Address already in use"),
        "{ready2:?}"
    );
    assert_eq!(second.0.wait().unwrap().code(), Some(1));
    unsafe { libc::kill(child.pid() as i32, libc::SIGINT) };
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
    let log = std::fs::read_to_string(&logf).unwrap();
    assert!(
        log.contains("listening on tcp 127.0.0.1:8080 -> 127.0.0.1:7000"),
        "{log}"
    );
    assert!(log.contains("SIGINT"), "{log}");
}

/// Run by hand (as `nettool proxy --help` shows), the drop-in has no fd 3 to answer on: the
/// first descriptor the proxy opens for itself gets number 3. Answering "0" there and closing
/// it broke the proxy: "--ready-fd 3: write: Broken pipe" and no listener (release build), an
/// "IO Safety violation" abort (debug build). `--ready-fd N` naming a closed fd is refused
/// before anything is opened.
#[test]
fn the_drop_in_run_by_hand_without_fd_3_forwards_and_a_closed_ready_fd_is_refused() {
    let ns = lab("pxdnofd3");
    let dir = TempDir::new("pxdnofd3");
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    let logf = dir.join("dp.log");
    // Command::new passes only 0, 1 and 2 (std opens everything else close-on-exec).
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, BIN])
        .args(docker_flags(
            "tcp",
            ("127.0.0.1", "8080"),
            ("127.0.0.1", "7000"),
        ))
        .env("NETTOOL_PROXY_LOG", &logf)
        .env("NETTOOL_PROXY_CONFIG", dir.join("none.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    wait_for("the drop-in to listen", 10, || {
        connect_in(&ns, "127.0.0.1:8080").is_ok() || child.0.try_wait().ok().flatten().is_some()
    });
    assert_eq!(child.0.try_wait().unwrap(), None, "the drop-in exited");
    assert_eq!(send_count(&ns, "127.0.0.1:8080", 77), "77");
    unsafe { libc::kill(child.pid() as i32, libc::SIGTERM) };
    let (code, err) = exit_of(&mut child);
    let log = std::fs::read_to_string(&logf).unwrap_or_default();
    assert_eq!(code, Some(0), "stderr: {err}\nlog: {log}");
    assert!(log.contains(" bytes_c2s=77 "), "{log}");

    exits_saying(
        &ns,
        &[
            "proxy",
            "--ready-fd",
            "3",
            "127.0.0.1:8081",
            "127.0.0.1:7000",
        ],
        2,
        "--ready-fd 3: descriptor 3 is not open",
    );
}

/// Everything a throwaway dockerd needs, removed on drop (daemon stopped first).
struct Dockerd {
    dir: PathBuf,
    containerd: Option<ChildGuard>,
    dockerd: Option<ChildGuard>,
}

impl Dockerd {
    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}/docker.sock", self.dir.display()))
            .args(args)
            .output()
            .expect("run the docker client")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.docker(&["rm", "-f", "nt-test-web"]);
        if let Some(mut d) = self.dockerd.take() {
            unsafe { libc::kill(d.pid() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if d.0.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        drop(self.containerd.take());
        // Anything dockerd left mounted under our directory.
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            let d = self.dir.to_string_lossy().into_owned();
            let mut mounts: Vec<&str> = mi
                .lines()
                .filter_map(|l| l.split_whitespace().nth(4))
                .filter(|m| m.starts_with(&d))
                .collect();
            mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mounts {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why dockerd cannot run here, if it cannot (missing binaries); None when it can.
fn dockerd_unavailable() -> Option<String> {
    for bin in ["dockerd", "containerd", "docker", "nsenter", "busybox"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
            .unwrap_or(false);
        if !found {
            return Some(format!("{bin} is not installed"));
        }
    }
    None
}

#[test]
fn real_dockerd_uses_nettool_as_its_userland_proxy() {
    // No silent skip: a pass must mean dockerd really used nettool (tools/test installs these),
    // as the other real-dockerd tests (tests/common/docker.rs) already require.
    if let Some(why) = dockerd_unavailable() {
        panic!("real dockerd test cannot run: {why} (run tools/test, which installs docker.io, containerd, busybox-static)");
    }
    let ns = TestNs::new("pxdocker");
    let dir = std::path::PathBuf::from("/var/tmp").join(unique("pxdocker"));
    std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
    std::fs::create_dir_all(dir.join("rootfs/www")).unwrap();
    std::fs::copy(
        std::fs::canonicalize(which("busybox")).unwrap(),
        dir.join("rootfs/bin/busybox"),
    )
    .unwrap();
    std::fs::write(
        dir.join("rootfs/www/index.html"),
        "hello from the container\n",
    )
    .unwrap();
    let link = dir.join("docker-proxy");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut dk = Dockerd {
        dir: dir.clone(),
        containerd: None,
        dockerd: None,
    };
    let quiet = |c: &mut Command| {
        c.stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{}.log", unique("out")))).unwrap())
            .stderr(Stdio::inherit());
    };
    let mut c = Command::new("containerd");
    c.arg("--root")
        .arg(dir.join("c-root"))
        .arg("--state")
        .arg(dir.join("c-state"))
        .arg("--address")
        .arg(dir.join("containerd.sock"));
    quiet(&mut c);
    c.stderr(std::fs::File::create(dir.join("containerd.log")).unwrap());
    dk.containerd = Some(ChildGuard(c.spawn().unwrap()));
    let proxy_log = dir.join("proxy.log");
    let mut d = Command::new("nsenter");
    d.arg(format!("--net={}", ns.path()))
        .arg("dockerd")
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("-H")
        .arg(format!("unix://{}/docker.sock", dir.display()))
        .arg("--pidfile")
        .arg(dir.join("docker.pid"))
        .arg("--containerd")
        .arg(dir.join("containerd.sock"))
        .arg("--userland-proxy-path")
        .arg(&link)
        .args(["--storage-driver", "vfs", "--bip", "172.29.77.1/24"])
        .env("NETTOOL_PROXY_LOG", &proxy_log)
        .env("NETTOOL_PROXY_DUMP", "text")
        .env("NETTOOL_PROXY_CONFIG", dir.join("no-config.toml"));
    quiet(&mut d);
    d.stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap());
    dk.dockerd = Some(ChildGuard(d.spawn().unwrap()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !dk.docker(&["version"]).status.success() {
        if std::time::Instant::now() > deadline
            || dk
                .dockerd
                .as_mut()
                .unwrap()
                .0
                .try_wait()
                .ok()
                .flatten()
                .is_some()
        {
            let log = std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
            panic!(
                "dockerd did not start here:\n{}",
                log.lines().rev().take(8).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // An image from busybox-static: no registry needed.
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(dir.join("rootfs"))
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let import = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}/docker.sock", dir.display()))
        .args(["import", "-", "nt-test-bb"])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    let _ = tar.wait();
    assert!(
        import.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let run = dk.docker(&[
        "run",
        "-d",
        "--name",
        "nt-test-web",
        "-p",
        "8080:80",
        "nt-test-bb",
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    assert!(
        run.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    wait_for("dockerd to start nettool as docker-proxy", 20, || {
        std::fs::read_to_string(&proxy_log)
            .map(|l| l.contains("listening on tcp 0.0.0.0:8080 -> 172.29.77.2:80"))
            .unwrap_or(false)
    });
    // localhost goes through the userland proxy (Docker's OUTPUT DNAT skips 127.0.0.0/8).
    let mut body = String::new();
    wait_for("curl through nettool", 20, || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "curl",
                "-sS",
                "-m",
                "3",
                "http://127.0.0.1:8080/",
            ])
            .output()
            .unwrap();
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert_eq!(body, "hello from the container\n");
    // The dump is written by the tap's writer thread after the bytes were forwarded: curl can
    // be done before the response's lines are in the file. Wait for them (seen once under the
    // full suite: the log was read before the s2c line was flushed).
    let dumped = |l: &str| {
        l.contains("# #1 c2s http request: GET / HTTP/1.1")
            && l.contains("# #1 s2c http response: HTTP/1.1 200 OK")
    };
    let mut log = String::new();
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(
            "the dump of request and response in the proxy log",
            20,
            || {
                log = std::fs::read_to_string(&proxy_log).unwrap_or_default();
                dumped(&log)
            },
        )
    }));
    assert!(waited.is_ok(), "{log}");
    assert!(
        log.contains("# #1 c2s http request: GET / HTTP/1.1"),
        "{log}"
    );
    assert!(
        log.contains("# #1 s2c http response: HTTP/1.1 200 OK"),
        "{log}"
    );
    assert!(log.contains("=> 172.29.77.1:"), "{log}");
    // Removing the container stops the proxies: they exit 0 on SIGTERM/SIGINT.
    let rm = dk.docker(&["rm", "-f", "nt-test-web"]);
    assert!(rm.status.success());
    wait_for("the proxies to log their stop", 20, || {
        std::fs::read_to_string(&proxy_log)
            .map(|l| l.matches("counters at exit").count() >= 1)
            .unwrap_or(false)
    });
}

fn which(bin: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from(bin))
}

/// A syslog daemon stand-in: a unix datagram socket in a test directory that keeps every line.
/// (Tests never write to the machine's /dev/log.)
struct SyslogSink {
    path: PathBuf,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl SyslogSink {
    fn new(dir: &TempDir, name: &str) -> Self {
        let path = dir.join(name);
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                l2.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        SyslogSink { path, lines }
    }

    fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Wait for a line whose message contains `needle`; check its PRI (facility daemon) and
    /// its `nettool-proxy[PID]:` tag, return the message.
    fn expect(&self, needle: &str, pri: u8, pid: u32) -> String {
        let mut found = String::new();
        let tag = format!(" nettool-proxy[{pid}]: ");
        wait_for(
            &format!("syslog line from {pid} with {needle:?}"),
            10,
            || {
                let lines = self.lines.lock().unwrap();
                match lines
                    .iter()
                    .find(|l| l.contains(needle) && l.contains(&tag))
                {
                    Some(l) => {
                        found = l.clone();
                        true
                    }
                    None => false,
                }
            },
        );
        // <PRI>Mmm dd hh:mm:ss nettool-proxy[PID]: message
        let prefix = format!("<{pri}>");
        assert!(found.starts_with(&prefix), "PRI: {found}");
        let rest = &found[prefix.len()..];
        let stamp = &rest[..15];
        let month = &stamp[..3];
        assert!(
            ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
                .contains(&month),
            "timestamp: {found}"
        );
        assert_eq!(
            (&stamp[3..4], &stamp[9..10], &stamp[12..13]),
            (" ", ":", ":"),
            "timestamp: {found}"
        );
        assert_eq!(&rest[15..15 + tag.len()], tag, "tag: {found}");
        rest[15 + tag.len()..].to_string()
    }
}

/// Spawn `cmd` with the fd-3 readiness pipe and wait for its answer.
fn spawn_ready(mut cmd: Command) -> (ChildGuard, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (r, w) = ready_pipe(&mut cmd);
    let child = cmd.spawn().expect("spawn nettool");
    drop(w);
    let answer = read_ready(r);
    (ChildGuard(child), answer)
}

/// `nettool ARGS` inside `ns` (no log file: the caller says where logs go).
fn nettool_in_ns(ns: &TestNs, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name, BIN]).args(args);
    c
}

/// `nettool ARGS` inside `ns`, run to its end: it must exit with `code` (2: a usage error)
/// and say `says` on stdout or stderr. Returns what it printed.
fn exits_saying(ns: &TestNs, args: &[&str], code: i32, says: &str) -> String {
    let o = nettool_in_ns(ns, args).output().unwrap();
    let t = common::text(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {t}");
    assert!(t.contains(says), "{args:?}: {t}");
    t
}

/// docker-proxy's flags for one mapping, spelled as dockerd passes them.
fn docker_flags<'a>(
    proto: &'a str,
    (host_ip, host_port): (&'a str, &'a str),
    (container_ip, container_port): (&'a str, &'a str),
) -> [&'a str; 10] {
    [
        "-proto",
        proto,
        "-host-ip",
        host_ip,
        "-host-port",
        host_port,
        "-container-ip",
        container_ip,
        "-container-port",
        container_port,
    ]
}

/// Wait for `child` to exit: its exit code and its stderr (read to its end first, so a child
/// that writes much cannot block on a full pipe).
fn exit_of(child: &mut ChildGuard) -> (Option<i32>, String) {
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (child.0.wait().unwrap().code(), err)
}

/// SIGTERM (exit 0 expected) and return stderr.
fn term(mut child: ChildGuard) -> String {
    unsafe { libc::kill(child.pid() as i32, libc::SIGTERM) };
    let (code, err) = exit_of(&mut child);
    assert_eq!(code, Some(0), "exit status; stderr: {err}");
    err
}

/// A proxy logging to the syslog socket at `sock`, with a healthy mapping on 127.0.0.1:8080
/// (backend 127.0.0.1:7000) and one whose backend is down on 127.0.0.1:8081; waits for fd 3.
fn spawn_syslog_proxy(ns: &TestNs, sock: &Path) -> (ChildGuard, String) {
    let mut cmd = nettool_in_ns(
        ns,
        &[
            "proxy",
            "--ready-fd",
            "3",
            "--syslog-socket",
            sock.to_str().unwrap(),
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
            "-p",
            "127.0.0.1:8081=127.0.0.1:7999",
        ],
    );
    cmd.env("NO_COLOR", "1");
    spawn_ready(cmd)
}

/// A backend-down connection through the proxy: the client sees a reset. It can arrive before
/// connect_timeout's own check (then connect reports it), or before the first read.
fn expect_reset(ns: &TestNs, addr: &str) {
    let r = connect_in(ns, addr).and_then(|mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 16];
        s.read(&mut buf)
    });
    assert_eq!(
        r.as_ref().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {r:?}"
    );
}

#[test]
fn syslog_lines_carry_daemon_priorities_and_the_tag() {
    let ns = lab("pxsys");
    let dir = TempDir::new("pxsys");
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    let sys = SyslogSink::new(&dir, "log.sock");
    let (child, ready) = spawn_syslog_proxy(&ns, &sys.path);
    assert_eq!(ready, "0\n", "syslog so far: {}", sys.all());
    let pid = child.pid();
    assert_eq!(send_count(&ns, "127.0.0.1:8080", 1234), "1234");
    expect_reset(&ns, "127.0.0.1:8081");
    // facility daemon (3): info = 3*8+6 = 30, warning = 3*8+4 = 28.
    let m = sys.expect("listening on tcp 127.0.0.1:8080", 30, pid);
    assert_eq!(m, "listening on tcp 127.0.0.1:8080 -> 127.0.0.1:7000");
    let m = sys.expect("cannot connect to backend", 28, pid);
    assert!(m.contains("127.0.0.1:7999: Connection refused"), "{m}");
    term(child);
    let m = sys.expect("counters at exit", 30, pid);
    assert!(
        m.contains("connections=2") && m.contains("dial_errors=1"),
        "{m}"
    );

    // No daemon at the socket: the proxy says so and does not start (exit 1, fd 3 says why).
    let missing = dir.join("missing.sock");
    let (mut child, ready) = spawn_ready(nettool_in_ns(
        &ns,
        &[
            "proxy",
            "--ready-fd",
            "3",
            "--syslog-socket",
            missing.to_str().unwrap(),
            "8082",
            "127.0.0.1:7000",
        ],
    ));
    let (code, err) = exit_of(&mut child);
    assert_eq!(code, Some(1), "{err}");
    let want = format!("cannot reach syslog at {}", missing.display());
    assert!(
        ready.starts_with("1\n") && ready.contains(&want),
        "{ready:?}"
    );
    assert!(
        err.contains(&want) && err.contains("no syslog daemon"),
        "{err}"
    );
    // --syslog and --log-file together is a usage error.
    exits_saying(
        &ns,
        &[
            "proxy",
            "--syslog",
            "--log-file",
            "/dev/null",
            "1",
            "1.1.1.1:1",
        ],
        2,
        "'--syslog' cannot be used with '--log-file <PATH>'",
    );
}

#[test]
fn docker_proxy_mode_logs_to_syslog_from_config_or_env() {
    let ns = lab("pxdsys");
    let dir = TempDir::new("pxdsys");
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    let sys = SyslogSink::new(&dir, "log.sock");
    let link = dir.join("docker-proxy");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let docker_proxy = |port: &str, container_port: &str, env: &[(&str, &str)]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name])
            .arg(&link)
            .args(docker_flags(
                "tcp",
                ("127.0.0.1", port),
                ("127.0.0.1", container_port),
            ))
            .env_remove("NETTOOL_PROXY_LOG")
            .env_remove("NETTOOL_PROXY_CONFIG");
        for (k, v) in env {
            c.env(k, v);
        }
        spawn_ready(c)
    };
    // The config file's `log = "syslog:SOCKET"`; the backend is down.
    let cfg = dir.join("docker-proxy.toml");
    std::fs::write(&cfg, format!("log = \"syslog:{}\"\n", sys.path.display())).unwrap();
    let (child, ready) = docker_proxy(
        "8080",
        "7999",
        &[("NETTOOL_PROXY_CONFIG", cfg.to_str().unwrap())],
    );
    assert_eq!(ready, "0\n");
    let pid = child.pid();
    expect_reset(&ns, "127.0.0.1:8080");
    let m = sys.expect("listening on", 30, pid);
    assert_eq!(m, "listening on tcp 127.0.0.1:8080 -> 127.0.0.1:7999");
    let m = sys.expect("cannot connect to backend", 28, pid);
    assert!(m.contains("127.0.0.1:7999: Connection refused"), "{m}");
    term(child);
    sys.expect("SIGTERM: stopping", 30, pid);

    // The environment (NETTOOL_PROXY_LOG=syslog:SOCKET) overrides the file; a backend that answers.
    let (child, ready) = docker_proxy(
        "8081",
        "7000",
        &[
            ("NETTOOL_PROXY_CONFIG", cfg.to_str().unwrap()),
            (
                "NETTOOL_PROXY_LOG",
                &format!("syslog:{}", sys.path.display()),
            ),
        ],
    );
    assert_eq!(ready, "0\n");
    let pid = child.pid();
    assert_eq!(send_count(&ns, "127.0.0.1:8081", 99), "99");
    sys.expect("listening on tcp 127.0.0.1:8081", 30, pid);
    term(child);
    let m = sys.expect("counters at exit", 30, pid);
    assert!(m.contains("bytes_c2s=99"), "{m}");

    // No syslog daemon: docker-proxy mode still starts and forwards (dockerd must not fail
    // `docker run -p` over logging), and says so on stderr.
    let missing = dir.join("missing.sock");
    let (child, ready) = docker_proxy(
        "8082",
        "7000",
        &[
            ("NETTOOL_PROXY_CONFIG", "/nonexistent/nettool.toml"),
            (
                "NETTOOL_PROXY_LOG",
                &format!("syslog:{}", missing.display()),
            ),
        ],
    );
    assert_eq!(ready, "0\n");
    assert_eq!(send_count(&ns, "127.0.0.1:8082", 5), "5");
    let err = term(child);
    assert!(
        err.contains(&format!("cannot reach syslog at {}", missing.display()))
            && err.contains("forwarding goes on"),
        "{err}"
    );
}

/// Walk a pcap's records: (file size, offset where the last record starts, record count).
/// Panics on a torn record (a record header or body cut short).
fn pcap_records(path: &Path) -> (usize, usize, usize) {
    let b = std::fs::read(path).unwrap();
    assert!(b.len() >= 24, "{}: no global header", path.display());
    let be = match &b[..4] {
        [0xa1, 0xb2, 0xc3, 0xd4] => true,
        [0xd4, 0xc3, 0xb2, 0xa1] => false,
        m => panic!("{}: bad magic {m:x?}", path.display()),
    };
    let u32_at = |i: usize| {
        let a: [u8; 4] = b[i..i + 4].try_into().unwrap();
        if be {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let (mut off, mut last, mut n) = (24, 24, 0);
    while off < b.len() {
        assert!(
            off + 16 <= b.len(),
            "{}: torn record header",
            path.display()
        );
        let incl = u32_at(off + 8) as usize;
        assert!(
            off + 16 + incl <= b.len(),
            "{}: torn record",
            path.display()
        );
        last = off;
        off += 16 + incl;
        n += 1;
    }
    (b.len(), last, n)
}

/// tshark reads the whole file without complaint; returns its packet count.
fn tshark_reads(path: &Path) -> usize {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(["-T", "fields", "-e", "frame.number"])
        .output()
        .expect("run tshark");
    // Only tshark's "Running as user root" notice may be on stderr (a torn file says
    // "appears to have been cut short").
    let err: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Running as user"))
        .collect();
    assert!(
        out.status.success() && err.is_empty(),
        "tshark -r {}: {}{err}",
        path.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A pseudo-random payload (so a rotated file cannot pass by accident of repetition).
fn payload(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A proxy on 127.0.0.1:8080 to a counting backend on 127.0.0.1:7000, writing `--pcap
/// DIR/cap.pcap --pcap-max-mb MAX_MB` plus `more`: the namespace, the directory, the pcap path
/// and the proxy.
fn capped_pcap_proxy(tag: &str, max_mb: &str, more: &[&str]) -> (TestNs, TempDir, PathBuf, Proxy) {
    let ns = lab(tag);
    let dir = TempDir::new(tag);
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    let pcap = dir.join("cap.pcap");
    let mut args = vec![
        "8080",
        "127.0.0.1:7000",
        "--pcap",
        pcap.to_str().unwrap(),
        "--pcap-max-mb",
        max_mb,
    ];
    args.extend_from_slice(more);
    let p = start(Some(&ns), &dir, &args);
    (ns, dir, pcap, p)
}

#[test]
fn pcap_rotates_over_a_fixed_set_of_capped_files() {
    use std::os::unix::fs::PermissionsExt;
    let (ns, dir, _pcap, p) = capped_pcap_proxy("pxrot", "0.1", &["--pcap-files", "3"]);
    let cap = 100_000usize;
    // Each byte is captured twice (both legs): 3 x 400 kB is about 24 caps, many rotations.
    let mut total = 0;
    for seed in 0..3u32 {
        let data = payload(400_000, seed);
        let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "400000", "the backend got every byte");
        total += data.len();
    }
    let log = p.stop();
    assert!(log.contains(&format!("bytes_c2s={total}")), "{log}");
    assert!(!log.contains("failed"), "{log}");
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cap.pcap"))
        .collect();
    names.sort();
    assert_eq!(names, ["cap.pcap", "cap.pcap.1", "cap.pcap.2"]);
    let mut packets = 0;
    for n in &names {
        let f = dir.join(n);
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{n}");
        let (size, last, records) = pcap_records(&f);
        // The file was under the cap before its last record: over by at most one record.
        assert!(last < cap, "{n}: {size} bytes, last record at {last}");
        // The older files were full when they were rotated out.
        if n != "cap.pcap" {
            assert!(size >= cap, "{n}: rotated at {size} bytes, under the cap");
        }
        assert_eq!(tshark_reads(&f), records, "{n}");
        packets += records;
    }
    assert!(packets > 6, "{packets}");
}

#[test]
fn pcap_cap_with_one_file_stops_the_capture_not_the_forwarding() {
    let (ns, dir, pcap, p) = capped_pcap_proxy("pxcap", "0.05", &[]);
    let cap = 50_000usize;
    for round in 0..3 {
        assert_eq!(
            send_count(&ns, "127.0.0.1:8080", 300_000),
            "300000",
            "round {round}"
        );
    }
    let log = p.stop();
    assert!(
        log.contains(&format!(
            "{} reached its size cap of {cap} bytes",
            pcap.display()
        )) && log.contains("forwarding continues"),
        "{log}"
    );
    // A cap that was asked for is a planned stop, logged as such, not as a failure.
    assert!(
        log.contains("stopped as asked") && !log.contains("failed:"),
        "{log}"
    );
    assert!(
        log.contains("connections=3") && log.contains("bytes_c2s=900000"),
        "{log}"
    );
    let (size, last, records) = pcap_records(&pcap);
    assert!(
        last < cap && size >= cap,
        "{size} bytes, last record at {last}"
    );
    assert_eq!(tshark_reads(&pcap), records);
    assert!(!dir.join("cap.pcap.1").exists());
}

/// One UDP packet as tshark reads it: (source, destination, UDP length field, payload).
type UdpRow = (SocketAddr, SocketAddr, usize, Vec<u8>);

/// Every UDP packet in a pcap, in order, through tshark's own dissection.
fn tshark_udp(pcap: &Path) -> Vec<UdpRow> {
    let fields = [
        &["-Y", "udp", "-T", "fields", "-E", "separator=|"][..],
        &[
            "-e", "ip.src", "-e", "ipv6.src", "-e", "ip.dst", "-e", "ipv6.dst",
        ],
        &["-e", "udp.srcport", "-e", "udp.dstport", "-e", "udp.length"],
        &["-e", "udp.payload"],
    ]
    .concat();
    tshark(pcap, &fields)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 8, "{l}");
            let ip = |v4: &str, v6: &str| -> std::net::IpAddr {
                if v4.is_empty() { v6 } else { v4 }.parse().unwrap()
            };
            let src = SocketAddr::new(ip(f[0], f[1]), f[4].parse().unwrap());
            let dst = SocketAddr::new(ip(f[2], f[3]), f[5].parse().unwrap());
            (src, dst, f[6].parse().unwrap(), unhex(f[7]))
        })
        .collect()
}

#[test]
fn pcap_holds_both_legs_of_udp_flows_ipv4_and_ipv6() {
    let ns = lab("pxudpcap");
    let dir = TempDir::new("pxudpcap");
    let v4_backend: SocketAddr = "127.0.0.1:47101".parse().unwrap();
    let v6_backend: SocketAddr = "[::1]:47102".parse().unwrap();
    // Backends answer each datagram with "re:" + the datagram.
    for a in [v4_backend, v6_backend] {
        let s = inside(&ns, move || UdpSocket::bind(a).unwrap());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let mut reply = b"re:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&reply, from);
            }
        });
    }
    let pcap = dir.join("udp.pcap");
    let p = start(
        Some(&ns),
        &dir,
        &[
            "-p",
            "udp:47001=127.0.0.1:47101",
            "-p",
            "udp:[::]:47002=[::1]:47102",
            "--pcap",
            pcap.to_str().unwrap(),
        ],
    );
    // Wildcard listeners: the pcap must show the address each client really sent to.
    let flows: [(&str, &str); 2] = [
        ("127.0.0.1:47201", "10.9.0.1:47001"),
        ("[::1]:47202", "[fd00::9]:47002"),
    ];
    let sizes = [1usize, 1400, 60_000];
    let mut sent: Vec<Vec<Vec<u8>>> = Vec::new();
    for (i, (bind, to)) in flows.iter().enumerate() {
        let (bind, to): (SocketAddr, SocketAddr) = (bind.parse().unwrap(), to.parse().unwrap());
        let datagrams: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(k, n)| payload(*n, (i * 10 + k) as u32))
            .collect();
        let d2 = datagrams.clone();
        let replies = inside(&ns, move || {
            let s = UdpSocket::bind(bind).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = vec![0u8; 65536];
            d2.iter()
                .map(|d| {
                    s.send_to(d, to).unwrap();
                    let (n, from) = s.recv_from(&mut buf).unwrap();
                    assert_eq!(from, to, "reply source");
                    buf[..n].to_vec()
                })
                .collect::<Vec<_>>()
        });
        for (d, r) in datagrams.iter().zip(&replies) {
            assert_eq!(&r[3..], &d[..], "reply through the proxy");
        }
        sent.push(datagrams);
    }
    let log = p.stop();
    assert!(log.contains("datagrams=12"), "{log}");
    let rows = tshark_udp(&pcap);
    assert_eq!(rows.len(), 2 * 3 * 4, "4 packets per exchange: {rows:#?}");
    // IPv6 forbids a zero UDP checksum: tshark, told to check, finds every IPv6 one good.
    let status = tshark(
        &pcap,
        &[
            &["-o", "udp.check_checksum:TRUE", "-Y", "ipv6 && udp"][..],
            &["-T", "fields", "-e", "udp.checksum.status"],
        ]
        .concat(),
    );
    assert_eq!(status, "1\n".repeat(12), "udp.checksum.status (1 = good)");
    for (i, ((client, listen), datagrams)) in flows.iter().zip(&sent).enumerate() {
        let client: SocketAddr = client.parse().unwrap();
        let listen: SocketAddr = listen.parse().unwrap();
        let backend = [v4_backend, v6_backend][i];
        let mine: Vec<&UdpRow> = rows
            .iter()
            .filter(|r| r.0.is_ipv4() == client.is_ipv4())
            .collect();
        // The proxy's own end of leg 2: the source of the first packet to the backend.
        let local = mine[1].0;
        assert_eq!(local.ip(), backend.ip(), "leg 2 leaves from loopback");
        let mut want: Vec<UdpRow> = Vec::new();
        for d in datagrams {
            let mut r = b"re:".to_vec();
            r.extend_from_slice(d);
            want.push((client, listen, d.len() + 8, d.clone()));
            want.push((local, backend, d.len() + 8, d.clone()));
            want.push((backend, local, r.len() + 8, r.clone()));
            want.push((listen, client, r.len() + 8, r));
        }
        assert_eq!(mine.len(), want.len());
        for (k, (got, w)) in mine.iter().zip(&want).enumerate() {
            assert!(
                (got.0, got.1, got.2) == (w.0, w.1, w.2) && got.3 == w.3,
                "flow {i} packet {k}: got {} -> {} len {} ({} payload bytes), want {} -> {} len {}",
                got.0,
                got.1,
                got.2,
                got.3.len(),
                w.0,
                w.1,
                w.2
            );
        }
    }
}

/// docker-proxy mode inside `ns` with `fd4` (if any) passed as fd 4 and the readiness pipe as
/// fd 3, the way a newer dockerd starts it with -use-listen-fd.
fn docker_proxy_fd4(
    ns: &TestNs,
    log: &Path,
    fd4: Option<&dyn AsRawFd>,
    args: &[&str],
) -> (ChildGuard, String) {
    let mut c = nettool_in_ns(ns, &["proxy"]);
    c.args(args)
        .env("NETTOOL_PROXY_LOG", log)
        .env("NETTOOL_PROXY_CONFIG", "/nonexistent/nettool.toml");
    // Above 10 and close-on-exec, so neither dup2 below clobbers the other's source.
    let high = fd4.map(|f| {
        let h = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        assert!(h >= 10);
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(h) }
    });
    // ready_pipe's hook (fd 3) runs first, then this one.
    let (r, w) = ready_pipe(&mut c);
    if let Some(h) = &high {
        let h = h.as_raw_fd();
        unsafe {
            c.pre_exec(move || {
                if libc::dup2(h, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().expect("spawn docker-proxy mode");
    drop(w);
    drop(high);
    (ChildGuard(child), read_ready(r))
}

/// The inode of a socket, as /proc/PID/fd shows it (`socket:[N]`).
fn socket_inode(fd: &impl AsRawFd) -> u64 {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    st.st_ino
}

/// The socket inodes a process holds.
fn process_sockets(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn use_listen_fd_serves_on_the_socket_the_parent_bound() {
    let ns = lab("pxlfd");
    let dir = TempDir::new("pxlfd");
    let log = dir.join("dp.log");
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    let flags = |proto: &'static str, port: &'static str, cport: &'static str| {
        let docker = docker_flags(proto, ("127.0.0.1", port), ("127.0.0.1", cport));
        [&docker[..], &["-use-listen-fd"]].concat()
    };

    // TCP: the test binds and listens (as dockerd does); the proxy must not bind again.
    let l = listen_in(&ns, "127.0.0.1:8080");
    let inode = socket_inode(&l);
    let (child, ready) = docker_proxy_fd4(&ns, &log, Some(&l), &flags("tcp", "8080", "7000"));
    assert_eq!(
        ready,
        "0\n",
        "log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let socks = process_sockets(child.pid());
    assert!(
        socks.contains(&inode),
        "the proxy serves on the passed socket: {socks:?}"
    );
    drop(l); // Only the proxy's copy is left.
    assert_eq!(send_count(&ns, "127.0.0.1:8080", 4321), "4321");
    assert_eq!(send_count(&ns, "127.0.0.1:8080", 1), "1");
    term(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("listening on tcp 127.0.0.1:8080 -> 127.0.0.1:7000")
            && text.contains("connections=2 active=0 bytes_c2s=4322"),
        "{text}"
    );

    // UDP: a bound datagram socket on fd 4; replies leave from it.
    let backend = inside(&ns, || UdpSocket::bind("127.0.0.1:5300").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..n].to_ascii_uppercase(), from);
        }
    });
    let u = inside(&ns, || UdpSocket::bind("127.0.0.1:5353").unwrap());
    let inode = socket_inode(&u);
    let (child, ready) = docker_proxy_fd4(&ns, &log, Some(&u), &flags("udp", "5353", "5300"));
    assert_eq!(ready, "0\n");
    assert!(process_sockets(child.pid()).contains(&inode));
    drop(u);
    let (reply, from) = inside(&ns, || {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"ping", "127.0.0.1:5353").unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        (buf[..n].to_vec(), from)
    });
    assert_eq!(
        (reply.as_slice(), from),
        (&b"PING"[..], "127.0.0.1:5353".parse().unwrap())
    );
    term(child);

    // A bad fd 4 answers "1\n<why>" on fd 3 and exits 1, whatever it is.
    let file = std::fs::File::create(dir.join("not-a-socket")).unwrap();
    let udp = inside(&ns, || UdpSocket::bind("127.0.0.1:5354").unwrap());
    let unix = std::os::unix::net::UnixDatagram::unbound().unwrap();
    // Never bound: listen() would bind it to a random port on every address (and recv on an
    // unbound UDP socket never gets a datagram) while fd 3 said "0". Made inside the test
    // namespace so that, were it served, it would be served there.
    let unbound = |ty| {
        inside(&ns, move || {
            socket2::Socket::new(socket2::Domain::IPV4, ty, None).unwrap()
        })
    };
    let (tcp_unbound, udp_unbound) = (
        unbound(socket2::Type::STREAM),
        unbound(socket2::Type::DGRAM),
    );
    // A connection, not a listener: listen() fails with a bare EINVAL.
    let connected = connect_in(&ns, "127.0.0.1:7000").unwrap();
    // Right type, wrong protocol: an MPTCP listener for -proto tcp, a UDP-Lite socket for udp.
    let other_proto = |ty, proto: i32, addr: &'static str| {
        inside(&ns, move || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                ty,
                Some(socket2::Protocol::from(proto)),
            )
            .unwrap_or_else(|e| panic!("protocol {proto} socket (kernel module?): {e}"));
            s.bind(&addr.parse::<std::net::SocketAddr>().unwrap().into())
                .unwrap();
            s
        })
    };
    let mptcp = other_proto(socket2::Type::STREAM, libc::IPPROTO_MPTCP, "127.0.0.1:8090");
    mptcp.listen(8).unwrap();
    let udplite = other_proto(
        socket2::Type::DGRAM,
        libc::IPPROTO_UDPLITE,
        "127.0.0.1:8091",
    );
    // Neither stream nor datagram: a raw socket must not be called a UDP or TCP one.
    let raw = other_proto(socket2::Type::RAW, libc::IPPROTO_TCP, "127.0.0.1:0");
    let cases: [(Option<&dyn AsRawFd>, &str, &str); 11] = [
        (Some(&file), "tcp", "it is a regular file, not a tcp socket"),
        (
            Some(&connected),
            "tcp",
            "it is a connected TCP socket (to 127.0.0.1:7000), not one to listen on",
        ),
        (Some(&tcp_unbound), "tcp", "it is not bound to an address"),
        (Some(&udp_unbound), "udp", "it is not bound to an address"),
        (
            Some(&udp),
            "tcp",
            "it is a UDP (datagram) socket but -proto is tcp",
        ),
        (Some(&unix), "udp", "it is not an IPv4 or IPv6 socket"),
        (Some(&mptcp), "tcp", "it is an MPTCP socket, not tcp"),
        (Some(&udplite), "udp", "it is a UDP-Lite socket, not udp"),
        (Some(&raw), "tcp", "it is a raw IP socket but -proto is tcp"),
        (Some(&raw), "udp", "it is a raw IP socket but -proto is udp"),
        (None, "tcp", "-use-listen-fd given but fd 4 is not open"),
    ];
    for (fd4, proto, why) in cases {
        let (mut child, ready) = docker_proxy_fd4(&ns, &log, fd4, &flags(proto, "8081", "7000"));
        assert!(
            ready.starts_with("1\n") && ready.contains(why),
            "{ready:?}, want {why:?}"
        );
        assert_eq!(child.0.wait().unwrap().code(), Some(1), "{why}");
    }
}

#[test]
fn sctp_is_refused_with_a_message_naming_it() {
    let ns = lab("pxsctp");
    let dir = TempDir::new("pxsctp");
    let log = dir.join("dp.log");
    let link = dir.join("docker-proxy");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let flags = docker_flags("sctp", ("127.0.0.1", "9000"), ("127.0.0.1", "9000"));
    // docker-proxy mode, both ways in: "1\n<why>" on fd 3, exit 1.
    for via_link in [true, false] {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name]);
        if via_link {
            c.arg(&link);
        } else {
            c.args([BIN, "proxy"]);
        }
        c.args(flags)
            .env("NETTOOL_PROXY_LOG", &log)
            .env("NETTOOL_PROXY_CONFIG", "/nonexistent/nettool.toml");
        let (mut child, ready) = spawn_ready(c);
        assert!(
            ready.starts_with("1\n") && ready.contains("SCTP is not supported"),
            "{ready:?}"
        );
        assert_eq!(child.0.wait().unwrap().code(), Some(1));
    }
    // nettool's own syntax: a usage error (exit 2) naming SCTP, however the mapping is written.
    for args in [
        &["-p", "sctp:9000=127.0.0.1:9000"][..],
        &["sctp:9000=127.0.0.1:9000"][..],
        &["sctp:9000", "127.0.0.1:9000"][..],
    ] {
        let a = [&["proxy"][..], args].concat();
        exits_saying(&ns, &a, 2, "SCTP is not supported by nettool proxy");
    }
}

#[test]
fn udp_flag_makes_the_positional_mapping_udp_in_every_form() {
    let ns = lab("pxudpflag");
    let dir = TempDir::new("pxudpflag");
    let backend = inside(&ns, || UdpSocket::bind("127.0.0.1:5300").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..n].to_ascii_uppercase(), from);
        }
    });
    let forms: [(&[&str], &str); 3] = [
        (
            &["--udp", "127.0.0.1:5355", "127.0.0.1:5300"],
            "127.0.0.1:5355",
        ),
        (&["udp:127.0.0.1:5356", "127.0.0.1:5300"], "127.0.0.1:5356"),
        // The lone LISTEN=TARGET form: --udp must not be dropped on the floor.
        (
            &["--udp", "127.0.0.1:5357=127.0.0.1:5300"],
            "127.0.0.1:5357",
        ),
    ];
    for (args, to) in forms {
        let p = start(Some(&ns), &dir, args);
        let log = p.log();
        assert!(
            log.contains(&format!("listening on udp {to} -> 127.0.0.1:5300")),
            "{args:?}: {log}"
        );
        let reply = inside(&ns, move || {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.send_to(b"ping", to).unwrap();
            let mut buf = [0u8; 64];
            c.recv(&mut buf).map(|n| buf[..n].to_vec())
        });
        assert_eq!(reply.ok().as_deref(), Some(&b"PING"[..]), "{args:?}");
        p.stop();
    }
    // --udp with a tcp: prefix says the two disagree, in both positional forms (exit 2).
    for args in [
        &["--udp", "tcp:5358", "127.0.0.1:5300"][..],
        &["--udp", "tcp:5358=127.0.0.1:5300"][..],
    ] {
        let a = [&["proxy"][..], args].concat();
        exits_saying(&ns, &a, 2, "--udp contradicts the tcp: prefix");
    }
}

#[test]
fn a_stalled_syslog_daemon_does_not_hold_up_the_forwarding() {
    let ns = lab("pxsysstall");
    let dir = TempDir::new("pxsysstall");
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    // A daemon that never reads: its queue fills after a few lines and a send then blocks.
    let path = dir.join("stalled.sock");
    let stalled = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let (child, ready) = spawn_syslog_proxy(&ns, &path);
    assert_eq!(ready, "0\n");
    // 200 clients of the mapping whose backend is down: a warning line each. (A client may
    // see its reset before connect() returns.)
    let refused: Vec<_> = (0..200)
        .map(|_| connect_in(&ns, "127.0.0.1:8081"))
        .collect();
    // The healthy mapping answers at once, not after 200 lines' worth of waiting on syslog
    // (it took ~40 s when each line was sent from the forwarding threads, 200 ms apiece).
    let (tx, rx) = std::sync::mpsc::channel();
    let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = s
            .write_all(&[b'x'; 1000])
            .and_then(|_| s.shutdown(Shutdown::Write))
            .and_then(|_| s.read_to_string(&mut out));
        let _ = tx.send(out);
    });
    let answer = rx.recv_timeout(Duration::from_secs(8));
    assert_eq!(
        answer.as_deref(),
        Ok("1000"),
        "the healthy mapping waited on the stalled syslog daemon"
    );
    drop(refused);
    // The daemon recovers: the lines it missed are reported as dropped, and the exit lines arrive.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let l2 = lines.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = stalled.recv(&mut buf) {
            let mut l = l2.lock().unwrap();
            l.push_str(&String::from_utf8_lossy(&buf[..n]));
            l.push('\n');
        }
    });
    term(child);
    let all = lines.lock().unwrap().clone();
    assert!(all.contains("counters at exit"), "{all}");
}

/// Through an echoing backend at `addr`: 100 bytes (records gathered in the pcap's buffer), then
/// 300 000 (written from the chunk), each sent in 700-byte writes and half-closed; every byte
/// must come back.
fn echo_small_then_bulk(ns: &TestNs, addr: &str) {
    for size in [100usize, 300_000] {
        let data = payload(size, size as u32);
        let mut s = connect_in(ns, addr).unwrap();
        let mut w = s.try_clone().unwrap();
        let d2 = data.clone();
        let t = std::thread::spawn(move || {
            for c in d2.chunks(700) {
                w.write_all(c).unwrap();
            }
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        t.join().unwrap();
        assert_eq!(back, data, "{size} bytes echoed");
    }
}

#[test]
fn a_huge_pcap_files_count_costs_no_more_than_the_files_that_exist() {
    // Keep "as many as possible": rotation must not try billions of renames each time (the
    // dump is lossless, so a stuck writer would stall the forwarding with it).
    let (ns, dir, _pcap, p) = capped_pcap_proxy(
        "pxrotn",
        "0.01",
        &["--pcap-files", "4000000000", "--dump-queue", "4"],
    );
    for round in 0..3 {
        let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let data = payload(60_000, round);
        let mut answer = String::new();
        let r = s
            .write_all(&data)
            .and_then(|_| s.shutdown(Shutdown::Write))
            .and_then(|_| s.read_to_string(&mut answer));
        assert!(
            r.is_ok() && answer == "60000",
            "round {round}: {r:?} {answer:?}; log: {}",
            p.log()
        );
    }
    let log = p.stop();
    assert!(!log.contains("failed"), "{log}");
    // Each 60 kB chunk is a record over the 10 kB cap, once per leg: at least 6 rotations,
    // numbered without gaps.
    let n = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cap.pcap"))
        .count();
    assert!(n >= 7, "{n} files");
    for i in 1..n {
        let f = dir.join(&format!("cap.pcap.{i}"));
        assert!(f.exists(), "{} missing", f.display());
        pcap_records(&f);
    }
}

#[test]
fn a_full_disk_leaves_a_pcap_that_ends_on_a_whole_record() {
    let ns = lab("pxpfull");
    let dir = TempDir::new("pxpfull");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let (mnt, _guard) = small_tmpfs(&dir);
    let pcap = mnt.join("cap.pcap");
    let p = start(
        Some(&ns),
        &dir,
        &["--pcap", pcap.to_str().unwrap(), "8080", "127.0.0.1:7000"],
    );
    echo_small_then_bulk(&ns, "127.0.0.1:8080");
    let log = p.stop();
    assert!(
        log.contains("failed: No space left on device") && log.contains("forwarding continues"),
        "{log}"
    );
    // What did reach the disk is a pcap tshark reads to the end: no half record at the tail.
    let (_, _, records) = pcap_records(&pcap);
    assert!(records > 0);
    assert_eq!(tshark_reads(&pcap), records);
}

/// `--pcap - >>FILE` on a disk that fills: the cut back to the last whole record kept only as
/// many bytes as the capture had written, counted from the file's start, so it took the
/// file's earlier content's length off the capture's end (a torn record), or the earlier
/// content itself when nothing was written yet. Cut from where the capture started.
#[test]
fn a_full_disk_under_pcap_dash_appended_keeps_what_the_file_held() {
    let ns = lab("pxpdashfull");
    let dir = TempDir::new("pxpdashfull");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let (mnt, _guard) = small_tmpfs(&dir);
    let out = mnt.join("out");
    let earlier = "a line an earlier command appended\n".repeat(30);
    std::fs::write(&out, &earlier).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, "sh", "-c"])
        .arg(r#"out=$1; shift; exec "$@" >>"$out""#)
        .args(["sh", out.to_str().unwrap(), BIN]);
    let p = start_cmd(cmd, &dir, &["--pcap", "-", "8080", "127.0.0.1:7000"], &[]);
    echo_small_then_bulk(&ns, "127.0.0.1:8080");
    let log = p.stop();
    assert!(
        log.contains("failed: No space left on device") && log.contains("forwarding continues"),
        "{log}"
    );
    let all = std::fs::read(&out).unwrap();
    assert!(
        all.starts_with(earlier.as_bytes()),
        "the earlier content is gone: the file holds {} bytes",
        all.len()
    );
    // After it, a pcap tshark reads to the end: no half record at the tail.
    let tail = dir.join("tail.pcap");
    std::fs::write(&tail, &all[earlier.len()..]).unwrap();
    let (_, _, records) = pcap_records(&tail);
    assert!(records > 0);
    assert_eq!(tshark_reads(&tail), records);
}

#[test]
fn pcap_max_mb_out_of_range_says_the_range() {
    let ns = lab("pxmb");
    // Too big was reported as "not ... of at least 0.001".
    for v in ["0", "0.0001", "1e20", "nan"] {
        exits_saying(
            &ns,
            &[
                "proxy",
                "--pcap",
                "/dev/null",
                "--pcap-max-mb",
                v,
                "8080",
                "127.0.0.1:1",
            ],
            2,
            &format!("'{v}' is not a size in megabytes from 0.001 to 1000000000"),
        );
    }
}

#[test]
fn a_pcap_deleted_under_rotation_is_named_in_the_error() {
    let (ns, _dir, pcap, p) = capped_pcap_proxy("pxrotdel", "0.01", &["--pcap-files", "3"]);
    std::fs::remove_file(&pcap).unwrap();
    assert_eq!(send_count(&ns, "127.0.0.1:8080", 30_000), "30000");
    let log = p.stop();
    let want = format!(
        "cannot rotate {0}: renaming it to {0}.1: No such file or directory",
        pcap.display()
    );
    assert!(
        log.contains(&want) && log.contains("forwarding continues"),
        "{log}"
    );
}

/// One short connection from inside `ns` to `addr`: send `payload`, half-close, read the echo
/// to EOF. A proxy that stopped forwarding shows up as a read timeout, not a hang.
fn echo_once(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(payload)?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    Ok(got)
}

/// A proxy (`-v`, echo backend on 127.0.0.1:7000, listening on 127.0.0.1:8080) whose
/// `--log-file` is a FIFO that the returned reader has opened but does not read: once the
/// 64 KiB pipe buffer is full, every write to it blocks.
fn proxy_logging_to_an_unread_fifo(tag: &str) -> (TestNs, TempDir, std::fs::File, ChildGuard) {
    use std::os::unix::fs::OpenOptionsExt;
    let ns = lab(tag);
    let dir = TempDir::new(tag);
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let fifo = dir.join("log.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    // Opened for reading first, so the proxy's open for writing does not wait.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let mut cmd = nettool_in_ns(
        &ns,
        &[
            "proxy",
            "-v",
            "--ready-fd",
            "3",
            "--log-file",
            fifo.to_str().unwrap(),
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
        ],
    );
    cmd.env("NO_COLOR", "1");
    let (child, ready) = spawn_ready(cmd);
    assert_eq!(ready, "0\n");
    (ns, dir, reader, child)
}

#[test]
fn a_log_fifo_nobody_reads_does_not_hold_up_the_forwarding() {
    let (ns, dir, reader, child) = proxy_logging_to_an_unread_fifo("pxfifo");
    let fifo = dir.join("log.fifo");
    let pid = child.pid();
    // Two -v lines per connection, ~250 bytes: 1500 connections are ~375 KB of log, several
    // times the pipe buffer plus the log queue.
    const N: usize = 1500;
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let flood = inside(&ns, move || {
        for i in 0..N {
            let payload = format!("connection {i} {}", "x".repeat(i % 97)).into_bytes();
            match echo_once(addr, &payload) {
                Ok(got) if got == payload => {}
                Ok(got) => return Err(format!("connection {i}: echo {got:?} != {payload:?}")),
                Err(e) => {
                    return Err(format!(
                        "connection {i}: {e} (the forwarding waited on the log FIFO)"
                    ))
                }
            }
        }
        Ok(())
    });
    assert_eq!(flood, Ok(()));
    // The reader starts reading: the lines that found the queue full are reported as dropped.
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let g = got.clone();
    let read_all = std::thread::spawn(move || {
        let mut r = reader;
        unsafe {
            let fl = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        let mut buf = [0u8; 65536];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            g.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&got.lock().unwrap()).into_owned();
    // The count rides with the first line that finds room in the queue again: more
    // connections (each forwarded) until one of their lines brings the report.
    let mut more = 0;
    wait_for("the drop report in the log FIFO", 10, || {
        more += 1;
        let payload = format!("after the reader started {more}");
        let p = payload.clone();
        let echoed = inside(&ns, move || echo_once(addr, p.as_bytes()).ok());
        assert_eq!(echoed.as_deref(), Some(payload.as_bytes()));
        text().contains(" log line(s) dropped: ")
    });
    let last = format!("#{} close ", N + more);
    wait_for("the last connection's close line", 10, || {
        text().contains(&last)
    });
    term(child);
    read_all.join().unwrap();
    let all = text();
    // Whole lines only: `<RFC 3339 UTC> nettool-proxy[PID] LEVEL: message`, the last one ended.
    assert!(all.ends_with('\n'), "a torn last line: {all}");
    let prefix = format!(" nettool-proxy[{pid}] ");
    let report = format!(
        " log line(s) dropped: the log file {} did not keep up",
        fifo.display()
    );
    let (mut delivered, mut dropped, mut reports) = (0usize, 0usize, 0usize);
    for line in all.lines() {
        let (stamp, rest) = line.split_at(27.min(line.len()));
        assert!(
            stamp.len() == 27
                && stamp.ends_with('Z')
                && &stamp[4..5] == "-"
                && &stamp[10..11] == "T",
            "timestamp of {line:?}"
        );
        let rest = rest
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("tag of {line:?}"));
        let (level, msg) = rest
            .split_once(": ")
            .unwrap_or_else(|| panic!("level of {line:?}"));
        if let Some(n) = msg.strip_suffix(&report) {
            assert_eq!(level, "warn", "{line}");
            dropped += n.parse::<usize>().unwrap();
            reports += 1;
            continue;
        }
        let known = msg.starts_with('#') && (msg.contains(" open ") || msg.contains(" close "))
            || msg == "listening on tcp 127.0.0.1:8080 -> 127.0.0.1:7000"
            || msg == "SIGTERM: stopping"
            || msg.starts_with("counters at exit: ");
        assert!(known, "unexpected line {line:?}");
        delivered += 1;
    }
    assert!(reports > 0 && dropped > 0, "no drop report:\n{all}");
    // Every line logged was written or counted: listening, open + close per connection,
    // SIGTERM, the counters.
    assert_eq!(delivered + dropped, 2 * (N + more) + 3, "{all}");
    let counters = format!("counters at exit: connections={} ", N + more);
    assert!(all.contains(&counters), "no {counters:?} in:\n{all}");
}

#[test]
fn a_thousand_port_range_logs_every_listener_before_it_says_ready() {
    // 1000 ports on 0.0.0.0 and [::]: 2000 startup lines, twice the log queue. They are all
    // in the log file once fd 3 says ready (a parent reads the log right after readiness).
    let ns = lab("pxlogrange");
    let dir = TempDir::new("pxlogrange");
    let p = start(Some(&ns), &dir, &["-p", "9000-9999=127.0.0.1:7000"]);
    let log = p.log();
    assert!(!log.contains(" log line(s) dropped: "), "{log}");
    assert_eq!(log.matches("listening on tcp").count(), 2000, "{log}");
    for port in [9000, 9999] {
        for ip in ["0.0.0.0", "[::]"] {
            let l = format!("listening on tcp {ip}:{port} -> 127.0.0.1:7000");
            assert!(log.contains(&l), "no {l:?} in:\n{log}");
        }
    }
    let log = p.stop();
    assert!(log.contains("counters at exit: connections=0 "), "{log}");
}

#[test]
fn the_counters_at_exit_wait_for_room_in_a_full_log_queue() {
    let (ns, _dir, reader, mut child) = proxy_logging_to_an_unread_fifo("pxfifoexit");
    let pid = child.pid();
    // Two -v lines per connection: 2000 lines fill the pipe buffer and then the log queue.
    const N: usize = 1000;
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let flood = inside(&ns, move || {
        (0..N).try_for_each(|i| {
            let payload = format!("connection {i}").into_bytes();
            match echo_once(addr, &payload) {
                Ok(got) if got == payload => Ok(()),
                r => Err(format!("connection {i}: {r:?}")),
            }
        })
    });
    assert_eq!(flood, Ok(()));
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    // Once the runtime's threads are gone, the main thread logs the counters into the full
    // queue; only then does the reader start.
    let workers = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten()
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == "nettool-proxy")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for("the proxy's runtime threads to end", 10, || workers() == 0);
    let mut r = reader;
    unsafe {
        let fl = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    let mut all = String::new();
    r.read_to_string(&mut all).unwrap();
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "{all}");
    assert!(
        all.contains(" log line(s) dropped: "),
        "nothing dropped:\n{all}"
    );
    let counters = format!("counters at exit: connections={N} ");
    assert!(
        all.lines().last().is_some_and(|l| l.contains(&counters)),
        "the last line is not {counters:?}:\n{all}"
    );
}

#[test]
fn a_dump_that_cannot_start_is_in_the_docker_proxy_log_as_well_as_on_fd_3() {
    // dockerd discards stderr: the log file is the only record the operator keeps.
    let ns = lab("pxdsinkerr");
    let dir = TempDir::new("pxdsinkerr");
    let log = dir.join("dp.log");
    let pcap = dir.join("no-such-dir").join("cap.pcap");
    let mut c = nettool_in_ns(&ns, &["proxy"]);
    c.args(docker_flags(
        "tcp",
        ("127.0.0.1", "8080"),
        ("127.0.0.1", "7000"),
    ))
    .env("NETTOOL_PROXY_LOG", &log)
    .env("NETTOOL_PROXY_PCAP", &pcap)
    .env("NETTOOL_PROXY_CONFIG", "/nonexistent/nettool.toml");
    let (mut child, ready) = spawn_ready(c);
    assert!(
        ready.starts_with("1\n") && ready.contains("no-such-dir"),
        "{ready:?}"
    );
    assert_eq!(child.0.wait().unwrap().code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let why = ready.lines().nth(1).unwrap_or_default();
    assert_eq!(
        why.matches("(os error 2)").count(),
        1,
        "the reason once: {why}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" error: ") && l.contains(why)),
        "no error line {why:?} in the log:\n{text}"
    );
}

// ---- Hostile peers and hostile files (issue 21) ----

/// Run `argv` as uid/gid 65534 (nobody), the unprivileged user planting things.
fn as_nobody(argv: &[&str]) {
    let st = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(argv)
        .status()
        .unwrap();
    assert!(st.success(), "as nobody: {argv:?}");
}

/// A root-only 0600 file with known bytes: what an attacker wants written or truncated.
fn root_secret(dir: &TempDir) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("secret");
    std::fs::write(&p, b"root only\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn assert_untouched(secret: &Path) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::read(secret).unwrap(),
        b"root only\n",
        "the target's bytes"
    );
    let mode = std::fs::metadata(secret).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the target's mode");
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A TCP connection from inside `ns` from a fixed source port (stream file names are
/// predictable from it).
fn connect_from_port(ns: &TestNs, port: u16, to: &str) -> TcpStream {
    let to: SocketAddr = to.parse().unwrap();
    inside(ns, move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        let from: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        s.bind(&from.into()).unwrap();
        s.connect(&to.into()).unwrap();
        TcpStream::from(s)
    })
}

/// `nettool proxy ARGS` in `ns` with the readiness pipe; returns the child and its answer.
fn try_start(ns: &TestNs, args: &[&str]) -> (ChildGuard, String) {
    let mut a = vec!["proxy", "--ready-fd", "3"];
    a.extend_from_slice(args);
    spawn_ready(nettool_in_ns(ns, &a))
}

/// `nettool ARGS` in `ns` (env added) expected to refuse to start; returns its fd-3 answer
/// (one that started anyway is killed, so the assertion on the answer fails instead of the
/// test hanging).
fn refused(ns: &TestNs, args: &[&str], env: &[(&str, &str)]) -> String {
    outcome(ns, args, env).0
}

#[test]
fn files_written_as_root_never_follow_a_planted_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let ns = lab("pxsym");
    let dir = TempDir::new("pxsym");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let secret = root_secret(&dir);
    // A directory the unprivileged user owns, no sticky bit (so the kernel's
    // protected_symlinks does not apply: only the proxy's own care protects the target).
    let evil = dir.join("evil");
    std::fs::create_dir(&evil).unwrap();
    std::os::unix::fs::chown(&evil, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = |name: &str| {
        let p = evil.join(name);
        as_nobody(&["ln", "-s", secret.to_str().unwrap(), p.to_str().unwrap()]);
        p
    };
    let map = "127.0.0.1:8080=127.0.0.1:7000";
    let log = dir.join("ok.log");
    for (what, flags) in [
        (
            "--pcap",
            vec![
                "--pcap".to_string(),
                link("cap.pcap").to_str().unwrap().to_string(),
            ],
        ),
        (
            "--dump-file",
            vec![
                "--dump".into(),
                "--dump-file".into(),
                link("dump.txt").to_str().unwrap().into(),
            ],
        ),
        (
            "--log-file",
            vec![
                "--log-file".into(),
                link("proxy.log").to_str().unwrap().into(),
            ],
        ),
    ] {
        let mut args: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
        if what != "--log-file" {
            args.extend(["--log-file", log.to_str().unwrap()]);
        }
        args.extend(["-p", map]);
        let mut full = vec!["proxy", "--ready-fd", "3"];
        full.extend(args);
        let ready = refused(&ns, &full, &[]);
        assert!(
            ready.starts_with("1\n") && ready.contains("symbolic link"),
            "{what}: readiness answer {ready:?}"
        );
        assert_untouched(&secret);
    }
    // A file the unprivileged user made at the dump path is not written into either.
    let planted = evil.join("planted.txt");
    as_nobody(&["touch", planted.to_str().unwrap()]);
    let ready = refused(
        &ns,
        &[
            "proxy",
            "--ready-fd",
            "3",
            "--dump",
            "--dump-file",
            planted.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
            "-p",
            map,
        ],
        &[],
    );
    assert!(
        ready.starts_with("1\n") && ready.contains("belongs to uid 65534"),
        "{ready:?}"
    );

    // --streams: a directory of another user, or one others may write into, is refused.
    let theirs = evil.join("streams");
    as_nobody(&["mkdir", "-m", "0700", theirs.to_str().unwrap()]);
    let open_for_all = dir.join("open-streams");
    std::fs::create_dir(&open_for_all).unwrap();
    std::fs::set_permissions(&open_for_all, std::fs::Permissions::from_mode(0o777)).unwrap();
    for (d, needle) in [
        (&theirs, "belongs to uid 65534"),
        (&open_for_all, "writable by group or others"),
    ] {
        let ready = refused(
            &ns,
            &[
                "proxy",
                "--ready-fd",
                "3",
                "--streams",
                d.to_str().unwrap(),
                "--log-file",
                log.to_str().unwrap(),
                "-p",
                map,
            ],
            &[],
        );
        assert!(
            ready.starts_with("1\n") && ready.contains(needle),
            "{needle}: {ready:?}"
        );
    }

    // docker-proxy mode: its pcap, streams and log paths come from the environment.
    for (var, name) in [
        ("NETTOOL_PROXY_PCAP", "dp.pcap"),
        ("NETTOOL_PROXY_LOG", "dp.log"),
        ("NETTOOL_PROXY_DUMP_FILE", "dp.dump"),
    ] {
        let l = link(name);
        let mut env = vec![
            (var, l.to_str().unwrap()),
            ("NETTOOL_PROXY_CONFIG", "/nonexistent/nettool-proxy.toml"),
        ];
        if var == "NETTOOL_PROXY_DUMP_FILE" {
            env.push(("NETTOOL_PROXY_DUMP", "text"));
        }
        let ready = refused(
            &ns,
            &[
                &["proxy"][..],
                &docker_flags("tcp", ("127.0.0.1", "8080"), ("127.0.0.1", "7000")),
            ]
            .concat(),
            &env,
        );
        assert!(
            ready.starts_with("1\n") && ready.contains("symbolic link"),
            "docker-proxy mode, {var}: fd 3 said {ready:?}"
        );
        assert_untouched(&secret);
    }

    // A symlink named like the next stream file inside a proper directory (left there before
    // the run): taken like any name an earlier run left, never followed or opened; the
    // connection's two files take `c2`, forwarding goes on.
    let streams = dir.join("streams");
    std::fs::create_dir(&streams).unwrap();
    std::fs::set_permissions(&streams, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(
        &secret,
        streams.join("c000001-127.0.0.1.41001-127.0.0.1.7000"),
    )
    .unwrap();
    let p = start(
        Some(&ns),
        &dir,
        &["--streams", streams.to_str().unwrap(), "-p", map],
    );
    let mut s = connect_from_port(&ns, 41001, "127.0.0.1:8080");
    s.write_all(b"attacker bytes\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"attacker bytes\n", "forwarding");
    p.stop();
    assert_untouched(&secret);
    let planted = streams.join("c000001-127.0.0.1.41001-127.0.0.1.7000");
    assert!(planted.symlink_metadata().unwrap().is_symlink());
    assert!(!streams
        .join("c000001-127.0.0.1.7000-127.0.0.1.41001")
        .exists());
    for name in [
        "c000001-127.0.0.1.41001-127.0.0.1.7000c2",
        "c000001-127.0.0.1.7000-127.0.0.1.41001c2",
    ] {
        let f = streams.join(name);
        assert_eq!(std::fs::read(&f).unwrap(), b"attacker bytes\n", "{name}");
        assert_eq!(mode_of(&f), 0o600, "{name}");
    }
}

#[test]
fn an_existing_dump_log_or_pcap_file_is_made_private_before_it_is_written() {
    use std::os::unix::fs::PermissionsExt;
    let ns = lab("pxmode");
    let dir = TempDir::new("pxmode");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let dump = dir.join("dump.txt");
    let pcap = dir.join("cap.pcap");
    let logf = dir.join("log.txt");
    for f in [&dump, &pcap, &logf] {
        std::fs::write(f, b"old\n").unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (child, ready) = try_start(
        &ns,
        &[
            "--dump",
            "--dump-file",
            dump.to_str().unwrap(),
            "--pcap",
            pcap.to_str().unwrap(),
            "--log-file",
            logf.to_str().unwrap(),
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
        ],
    );
    assert_eq!(ready, "0\n");
    let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
    s.write_all(b"secret payload").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    term(child);
    for f in [&dump, &pcap, &logf] {
        assert_eq!(mode_of(f), 0o600, "{}", f.display());
    }
    assert!(std::fs::read_to_string(&dump)
        .unwrap()
        .contains("secret payload"));
    // The pcap was emptied (after the checks), not appended to.
    assert_eq!(
        &std::fs::read(&pcap).unwrap()[..4],
        &[0xa1, 0xb2, 0xc3, 0xd4]
    );
}

/// A minimal TLS ClientHello whose server_name is `sni` (any bytes).
fn client_hello(sni: &[u8]) -> Vec<u8> {
    let mut name = vec![0u8];
    name.extend((sni.len() as u16).to_be_bytes());
    name.extend(sni);
    let mut ext_sni = ((name.len()) as u16).to_be_bytes().to_vec();
    ext_sni.extend(&name);
    let mut exts = vec![0, 0];
    exts.extend((ext_sni.len() as u16).to_be_bytes());
    exts.extend(&ext_sni);
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(0); // session id
    body.extend([0, 2, 0x13, 0x01]); // one cipher suite
    body.extend([1, 0]); // null compression
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(&exts);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(&hs);
    rec
}

#[test]
fn decoded_lines_carry_no_escape_sequence_or_forged_line_from_a_peer() {
    let ns = lab("pxesc");
    let dir = TempDir::new("pxesc");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let evil = b"a\x1b[2J\rb\n* #77 open tcp forged";
    let mut http = b"GET / HTTP/1.1\r\nHost: x\r\nX-Evil: ".to_vec();
    http.extend(evil);
    http.extend(b"\r\n\r\n");
    let mut resp = format!("*2\r\n$3\r\nGET\r\n${}\r\n", evil.len()).into_bytes();
    resp.extend(evil);
    resp.extend(b"\r\n");
    let tls = client_hello(evil);
    for flag in ["--dump", "--hex"] {
        let f = dir.join(&format!("{}.txt", &flag[2..]));
        let p = start(
            Some(&ns),
            &dir,
            &[
                flag,
                "--dump-file",
                f.to_str().unwrap(),
                "8080",
                "127.0.0.1:7000",
            ],
        );
        let raw = b"\n* #77 open tcp 10.9.9.9:1 -> 10.9.9.9:2\n\n> #77 forged\r\n".to_vec();
        for msg in [&http, &resp, &tls, &raw] {
            let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
            s.write_all(msg).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).unwrap();
            assert_eq!(&back, msg, "forwarding stays byte-exact");
        }
        p.stop();
        let d = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&d);
        // The decoders saw the values (else this test proves nothing)...
        for needle in [
            "X-Evil: a\\x1b[2J\\rb",
            "redis command: GET a\\x1b[2J\\rb\\n* #77",
            "sni=a\\x1b[2J\\rb\\n* #77",
        ] {
            assert!(text.contains(needle), "{flag}: no {needle:?} in\n{text}");
        }
        assert!(!d.contains(&0x1b), "{flag}: a raw ESC in the dump:\n{text}");
        assert!(!d.contains(&b'\r'), "{flag}: a raw CR in the dump:\n{text}");
        for line in text.lines() {
            if line.starts_with("# ") {
                assert!(
                    line.starts_with("# #"),
                    "{flag}: a decoded line broken in two: {line:?}"
                );
            }
            // No payload byte reaches a line start in either mode: every line starts with what
            // the proxy writes (payload lines with a space: indented text, or hex offsets).
            assert!(
                !line.starts_with("* #77"),
                "{flag}: a forged line: {line:?}\n{text}"
            );
            assert!(
                ["* #", "> #", "< #", "# #", "--", " ", "* nettool:"]
                    .iter()
                    .any(|p| line.starts_with(p))
                    || line.is_empty(),
                "{flag}: a line the proxy did not start: {line:?}\n{text}"
            );
        }
    }
}

/// A number from /proc/PID/status, in kB (VmHWM, VmRSS).
fn proc_status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Send `head`, then `filler` repeated to `total` bytes in writes of `write` bytes, half-close,
/// and return what the counting backend says it received.
fn send_flood(
    stop: Option<&std::sync::atomic::AtomicBool>,
    ns_name: &str,
    addr: &str,
    head: &[u8],
    filler: &[u8],
    total: usize,
    write: usize,
) -> (usize, String) {
    let a: SocketAddr = addr.parse().unwrap();
    let mut s = NetNs::from_name(ns_name)
        .unwrap()
        .run(move || TcpStream::connect_timeout(&a, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(head).unwrap();
    let block: Vec<u8> = filler.iter().copied().cycle().take(write).collect();
    let mut sent = head.len();
    while sent < total {
        if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
            return (sent, "stopped".into());
        }
        let n = write.min(total - sent);
        s.write_all(&block[..n]).unwrap();
        sent += n;
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    (sent, answer)
}

#[test]
fn an_endless_chunked_trailer_costs_the_proxy_no_more_memory_than_no_decoding() {
    let ns = lab("pxtrail");
    let dir = TempDir::new("pxtrail");
    count_backend(listen_in(&ns, "127.0.0.1:7001"));
    let head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n";
    let total = 128 << 20;
    let mut hwm = Vec::new();
    for decode in [false, true] {
        let json = dir.join(&format!("d{decode}.json"));
        let mut args = vec!["--json", "--dump-file", json.to_str().unwrap()];
        if !decode {
            args.push("--no-decode");
        }
        args.extend(["-p", "127.0.0.1:8081=127.0.0.1:7001"]);
        let p = start(Some(&ns), &dir, &args);
        let (sent, answer) = send_flood(
            None,
            &ns.name,
            "127.0.0.1:8081",
            head,
            b"x",
            total,
            64 * 1024,
        );
        assert_eq!(answer, sent.to_string(), "forwarding is byte-exact");
        hwm.push(proc_status_kb(p.pid(), "VmHWM"));
        p.stop();
    }
    assert!(
        hwm[1] < hwm[0] + 32 * 1024,
        "VmHWM with decoding {} kB, without {} kB, after {} MB of trailer",
        hwm[1],
        hwm[0],
        total >> 20
    );
    eprintln!("VmHWM: --no-decode {} kB, decoding {} kB", hwm[0], hwm[1]);
    let d = std::fs::read_to_string(dir.join("dtrue.json")).unwrap();
    assert!(
        d.contains("chunked trailer over 64 KiB"),
        "no stop said in the JSON"
    );
    assert_eq!(d.matches("\"proto\":\"stopped\"").count(), 1, "said once");
}

/// One flood: listen address, head, filler, bytes per connection, write size.
type Flood = (&'static str, Vec<u8>, Vec<u8>, usize, usize);

/// The median round trip of `n` small echoes on one connection to `addr`.
fn echo_median(ns: &TestNs, addr: &str, n: usize) -> Duration {
    let mut s = connect_in(ns, addr).unwrap();
    s.set_nodelay(true).unwrap();
    // A proxy that stalls gives its figure in bounded time (a 10 s echo counts as 10 s).
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = std::time::Instant::now();
    let mut times = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..n {
        let msg = [b'a' + (i % 26) as u8; 64];
        let t = std::time::Instant::now();
        s.write_all(&msg).unwrap();
        if s.read_exact(&mut buf).is_err() {
            times.push(Duration::from_secs(10));
            break;
        }
        times.push(t.elapsed());
        assert_eq!(buf, msg);
        if start.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    times.sort();
    times[times.len() / 2]
}

#[test]
fn decoder_floods_do_not_hold_up_another_connection() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let ns = lab("pxflood");
    let dir = TempDir::new("pxflood");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    count_backend(listen_in(&ns, "127.0.0.1:7001"));
    let json = dir.join("d.json");
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--json",
            "--dump-file",
            json.to_str().unwrap(),
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
            "-p",
            "127.0.0.1:8081=127.0.0.1:7001",
            "-p",
            "127.0.0.1:53=127.0.0.1:7001",
        ],
    );
    let quiet = echo_median(&ns, "127.0.0.1:8080", 21);
    let stop = Arc::new(AtomicBool::new(false));
    let ns_name = ns.name.clone();
    // Each flood: (listen address, head, filler, bytes per connection, write size).
    let floods: Vec<Flood> = vec![
        // RESP: an array that never completes, in small reads (each one re-parsed it all).
        (
            "127.0.0.1:8081",
            b"*1000000\r\n".to_vec(),
            b"$1\r\na\r\n".to_vec(),
            1 << 20,
            140,
        ),
        // DNS over TCP: empty frames, thousands per read (each one moved the whole buffer).
        ("127.0.0.1:53", Vec::new(), vec![0, 0], 16 << 20, 64 * 1024),
        // HTTP: an endless chunked trailer.
        (
            "127.0.0.1:8081",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec(),
            b"x".to_vec(),
            32 << 20,
            64 * 1024,
        ),
    ];
    let threads: Vec<_> = floods
        .into_iter()
        .map(|(addr, head, filler, total, write)| {
            let stop = stop.clone();
            let ns_name = ns_name.clone();
            std::thread::spawn(move || {
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (sent, answer) =
                        send_flood(Some(&stop), &ns_name, addr, &head, &filler, total, write);
                    if answer != "stopped" {
                        assert_eq!(answer, sent.to_string(), "{addr}: forwarding is byte-exact");
                    }
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let flooded = echo_median(&ns, "127.0.0.1:8080", 21);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        assert!(t.join().unwrap() >= 1);
    }
    let log = p.stop();
    let d = std::fs::read_to_string(&json).unwrap();
    eprintln!("echo median: quiet {quiet:?}, during the floods {flooded:?}");
    assert!(
        // Before the bound decoders an unrelated echo took 309 ms (1.8 s in the issue); the
        // slack is for a loaded machine (83 ms was seen at load 16 with the decoders bounded).
        flooded < quiet * 20 + Duration::from_millis(150),
        "an unrelated echo took {flooded:?} during the decoder floods, {quiet:?} without; log:\n{log}"
    );
    assert!(
        d.contains("chunked trailer over 64 KiB"),
        "the trailer cap is said"
    );
}

/// Lower (or raise) the soft open-files limit of a running process (the hard one stays: raising
/// it again would need CAP_SYS_RESOURCE).
fn set_nofile(pid: u32, n: usize) {
    let st = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={n}:"))
        .status()
        .unwrap();
    assert!(st.success());
}

/// Leave a process no room for one more fd: its open-files limit becomes its lowest free fd
/// number (new fds take the lowest free number, so every open now fails with EMFILE).
fn no_room_for_fds(pid: u32) {
    let used: std::collections::HashSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !used.contains(n)).unwrap();
    set_nofile(pid, lowest_free);
}

/// Open `k` connections to `addr` at once, call `connected` (the proxy has accepted and dialed
/// them), then echo `size` bytes in both directions on each, concurrently; returns, per
/// connection, whether every byte came back exact.
fn concurrent_echoes(
    ns: &TestNs,
    addr: &str,
    k: usize,
    size: usize,
    connected: impl FnOnce(),
) -> Vec<Result<(), String>> {
    let conns: Vec<TcpStream> = (0..k).map(|_| connect_in(ns, addr).unwrap()).collect();
    connected();
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            std::thread::spawn(move || {
                let data = payload(size, i as u32 + 1);
                let mut w = s.try_clone().unwrap();
                let sent = data.clone();
                let writer = std::thread::spawn(move || {
                    let r = w.write_all(&sent);
                    let _ = w.shutdown(Shutdown::Write);
                    r
                });
                let mut r = s;
                r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut back = Vec::new();
                let read = r.read_to_end(&mut back);
                let wrote = writer.join().unwrap();
                match (wrote, read) {
                    (Err(e), _) => Err(format!("#{i} write: {e}")),
                    (_, Err(e)) => Err(format!("#{i} read: {e} after {} bytes", back.len())),
                    _ if back != data => Err(format!(
                        "#{i}: {} bytes back, not the {size} sent",
                        back.len()
                    )),
                    _ => Ok(()),
                }
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// At the fd limit, with no room for a splice pipe, bulk connections are copied, not reset.
fn at_the_fd_limit_bulk_connections_are_copied_not_reset(relay: Relay) {
    let ns = lab("pxfdlim");
    let dir = TempDir::new("pxfdlim");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7000"]);
    // Once the connections' sockets are made (client and backend side each), no room for a
    // pipe.
    let k = 4;
    let base = p.fds();
    let results = concurrent_echoes(&ns, "127.0.0.1:8080", k, 8 << 20, || {
        wait_for("the connections accepted and dialed", 10, || {
            p.fds() >= base + 2 * k
        });
        no_room_for_fds(p.pid());
    });
    let log = p.log();
    assert!(
        results.iter().all(|r| r.is_ok()),
        "{results:?}\nlog:\n{log}"
    );
    let log = p.stop();
    assert!(log.contains(" resets=0 errors=0 "), "{log}");
}

on_both_relays!(
    at_the_fd_limit_bulk_connections_are_copied_not_reset_fast_path,
    at_the_fd_limit_bulk_connections_are_copied_not_reset_tokio_path
    => at_the_fd_limit_bulk_connections_are_copied_not_reset()
);

#[test]
fn streams_left_out_for_want_of_fds_resume_when_fds_are_back() {
    let ns = lab("pxfdstr");
    let dir = TempDir::new("pxfdstr");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let streams = dir.join("streams");
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--streams",
            streams.to_str().unwrap(),
            "8080",
            "127.0.0.1:7000",
        ],
    );
    // Once 3 connections' sockets are made, no room for their stream files.
    let k = 3;
    let base = p.fds();
    // All connected first (their sockets take the room), then each sends.
    let mut held: Vec<TcpStream> = (0..k)
        .map(|_| connect_in(&ns, "127.0.0.1:8080").unwrap())
        .collect();
    wait_for("the connections accepted and dialed", 10, || {
        p.fds() >= base + 2 * k
    });
    no_room_for_fds(p.pid());
    for (i, s) in held.iter_mut().enumerate() {
        let msg = format!("during the shortage {i}");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes(), "forwarding goes on");
    }
    drop(held);
    wait_for("the connections' fds closed", 10, || p.fds() <= base);
    set_nofile(p.pid(), 1024);
    // fds are back: the next connection is saved again.
    let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
    s.write_all(b"after the shortage").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"after the shortage");
    let port = s.local_addr().unwrap().port();
    let log = p.stop();
    assert!(
        log.contains("Too many open files")
            && log.contains("that connection's streams are not saved"),
        "the shortage is said (base {base} fds; files {:?}):\n{log}",
        std::fs::read_dir(&streams)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default()
    );
    let c2s = streams.join(format!("c{:06}-127.0.0.1.{port}-127.0.0.1.7000", k + 1));
    assert_eq!(
        std::fs::read(&c2s).unwrap_or_default(),
        b"after the shortage",
        "{}; log:\n{log}",
        c2s.display()
    );
}

/// dockerd's `--userland-proxy-path` pointing at the nettool binary itself (no symlink named
/// docker-proxy): `docker run -p` is served, and a proxy that cannot start says why in
/// `docker run`'s own error (issue 17: it used to be an empty "Error starting userland proxy:").
#[test]
fn dockerd_runs_the_nettool_binary_by_path_and_shows_its_startup_error() {
    let d = common::docker::Dockerd::start_with(
        "pxbypath",
        &["--userland-proxy=true", "--userland-proxy-path", BIN],
    );
    // Names of their own, as every test's containers (no test depends on one named `web`).
    d.run_busybox_web(&common::unique("web"), "8080:80");
    // The proxies dockerd started are this very binary, given docker-proxy's flags.
    let proxies: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with(BIN) && c.contains("-host-port 8080"))
        .collect();
    assert!(
        !proxies.is_empty(),
        "no nettool started with -host-port 8080"
    );
    // localhost goes through the userland proxy (Docker's OUTPUT DNAT skips 127.0.0.0/8).
    wait_for("curl 127.0.0.1:8080 through nettool", 20, || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &d.ns.name,
                "curl",
                "-sS",
                "-m",
                "3",
                "-o",
                "/dev/null",
            ])
            .arg("http://127.0.0.1:8080/")
            .status()
            .is_ok_and(|s| s.success())
    });
    // A port someone else holds: the proxy cannot bind, and docker run must say why.
    let _holder =
        d.ns.spawn(&["socat", "TCP-LISTEN:8081,bind=0.0.0.0,reuseaddr,fork", "-"]);
    wait_for("socat holding 8081", 10, || {
        common::sh(&["ip", "netns", "exec", &d.ns.name, "ss", "-ltn"]).contains(":8081 ")
    });
    let (ok, out) = d.try_docker(&[
        "run",
        "-d",
        "--name",
        &common::unique("web2"),
        "-p",
        "8081:80",
        "nt-busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    ]);
    assert!(!ok, "docker run on a held port succeeded: {out}");
    assert!(
        out.contains("Error starting userland proxy:") && out.contains("8081"),
        "the reason is in docker run's error: {out}"
    );
    assert!(
        out.to_lowercase().contains("in use"),
        "it says the port is in use: {out}"
    );
}

#[test]
fn sighup_ends_the_proxy_cleanly_like_sigterm() {
    let ns = lab("pxhup");
    let dir = TempDir::new("pxhup");
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    let pcap = dir.join("hup.pcap");
    let mut cmd = nettool_in_ns(
        &ns,
        &[
            "proxy",
            "--ready-fd",
            "3",
            "--json",
            "--hex",
            "--pcap",
            pcap.to_str().unwrap(),
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let (r, w) = ready_pipe(&mut cmd);
    let mut child = ChildGuard(cmd.spawn().unwrap());
    drop(w);
    assert_eq!(read_ready(r), "0\n");
    let mut out = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    // A bulk transfer still running when the signal comes.
    let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
    let chunk = payload(1 << 20, 7);
    for _ in 0..4 {
        s.write_all(&chunk).unwrap();
    }
    unsafe { libc::kill(child.pid() as i32, libc::SIGHUP) };
    let _ = s.write_all(&chunk);
    let st = child.0.wait().unwrap();
    let stdout = reader.join().unwrap();
    assert_eq!(st.code(), Some(0), "exit status after SIGHUP: {st}");
    let text = String::from_utf8(stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("a torn JSON line {e}: {l:.200}"))
        })
        .collect();
    assert!(lines.len() > 2, "{text:.400}");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "counters", "the counters come last: {last}");
    assert!(
        last["counters"]["bytes_c2s"].as_u64().unwrap() > 0,
        "{last}"
    );
    assert!(tshark_reads(&pcap) > 4, "tshark reads the pcap to its end");
}

#[test]
fn udp_flow_memory_goes_back_after_the_flows_expire() {
    let ns = lab("pxudpmem");
    let dir = TempDir::new("pxudpmem");
    let backend = inside(&ns, || UdpSocket::bind("127.0.0.1:5300").unwrap());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..n], from);
        }
    });
    let p = start(
        Some(&ns),
        &dir,
        &[
            "-p",
            "udp:127.0.0.1:5353=127.0.0.1:5300",
            "--udp-timeout",
            "1",
        ],
    );
    // Many flows (one per client port), each answered, all alive at once (sent in batches:
    // a burst of hundreds would overflow the sockets' receive buffers).
    let flows = |first_port: u16, n: u16| {
        inside(&ns, move || {
            let mut socks = Vec::new();
            let mut answered = 0;
            let mut buf = [0u8; 64];
            for batch in (0..n).collect::<Vec<_>>().chunks(50) {
                let new: Vec<UdpSocket> = batch
                    .iter()
                    .map(|i| {
                        let s = UdpSocket::bind(("127.0.0.1", first_port + i)).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        s.send_to(b"hello", "127.0.0.1:5353").unwrap();
                        s
                    })
                    .collect();
                answered += new
                    .iter()
                    .filter(|s| s.recv(&mut buf).is_ok_and(|k| &buf[..k] == b"hello"))
                    .count();
                socks.extend(new);
            }
            answered
        })
    };
    assert_eq!(flows(20000, 50), 50);
    std::thread::sleep(Duration::from_secs(7));
    let baseline = proc_status_kb(p.pid(), "VmRSS");
    let n = 900;
    assert_eq!(flows(21000, n), n as usize, "every flow answered");
    let peak = proc_status_kb(p.pid(), "VmRSS");
    // Idle timeout 5 s: every flow has expired within 7 s.
    std::thread::sleep(Duration::from_secs(7));
    let after = proc_status_kb(p.pid(), "VmRSS");
    eprintln!("VmRSS: baseline {baseline} kB, {n} flows {peak} kB, after they expired {after} kB");
    assert!(
        after < baseline + 8 * 1024,
        "VmRSS {after} kB after {n} flows expired, {baseline} kB before them ({peak} kB with them)"
    );
    p.stop();
}

#[test]
fn responses_to_head_and_204_304_have_no_body_in_the_dump() {
    let ns = lab("pxhead");
    let dir = TempDir::new("pxhead");
    let l = listen_in(&ns, "127.0.0.1:7000");
    let responses: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.windows(4).filter(|w| w == b"\r\n\r\n").count() < 4 {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(responses).unwrap();
    });
    let f = dir.join("dump.txt");
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--dump",
            "--dump-file",
            f.to_str().unwrap(),
            "8080",
            "127.0.0.1:7000",
        ],
    );
    let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nDELETE /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"e\"\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, responses, "forwarding is byte-exact");
    p.stop();
    let d = std::fs::read_to_string(&f).unwrap();
    let heads: Vec<&str> = d
        .lines()
        .filter(|l| l.contains("s2c http response: "))
        .collect();
    assert_eq!(heads.len(), 4, "every response head decoded:\n{d}");
    assert!(d.contains("s2c http response body: 2 bytes"), "{d}");
    assert!(
        !d.contains("body: 5 bytes") && !d.contains("body: 7 bytes"),
        "a phantom body:\n{d}"
    );
}

/// Client <-> proxy <-> backend in three namespaces, v4 and v6, each side routed through the
/// proxy's namespace (as a container's default route goes through the Docker host).
struct Chain {
    cli: TestNs,
    px: TestNs,
    be: TestNs,
}

/// `tag` must be short (interface names). The proxy side is 10.77.1.1 / fd77:1::1 towards the
/// client (10.77.1.2 / fd77:1::2) and 10.77.2.1 / fd77:2::1 towards the backend (10.77.2.2 /
/// fd77:2::2). With `split`, the client side and the backend side of the proxy are two
/// namespaces joined by nothing (`px` faces the client, the returned extra one the backend).
fn chain(tag: &str) -> Chain {
    let (cli, px, be) = (
        TestNs::new(&format!("{tag}c")),
        TestNs::new(&format!("{tag}p")),
        TestNs::new(&format!("{tag}b")),
    );
    let (c0, c1) = (common::unique_ifname("tc"), common::unique_ifname("tc"));
    let (b0, b1) = (common::unique_ifname("tb"), common::unique_ifname("tb"));
    common::veth(&c0, &cli, &c1, &px);
    common::veth(&b0, &be, &b1, &px);
    for (ns, dev, a4, a6) in [
        (&cli, &c0, "10.77.1.2/24", "fd77:1::2/64"),
        (&px, &c1, "10.77.1.1/24", "fd77:1::1/64"),
        (&px, &b1, "10.77.2.1/24", "fd77:2::1/64"),
        (&be, &b0, "10.77.2.2/24", "fd77:2::2/64"),
    ] {
        ns.ip(&["addr", "add", a4, "dev", dev]);
        ns.ip(&["-6", "addr", "add", a6, "dev", dev, "nodad"]);
    }
    cli.ip(&["route", "add", "default", "via", "10.77.1.1"]);
    cli.ip(&["-6", "route", "add", "default", "via", "fd77:1::1"]);
    be.ip(&["route", "add", "default", "via", "10.77.2.1"]);
    be.ip(&["-6", "route", "add", "default", "via", "fd77:2::1"]);
    Chain { cli, px, be }
}

/// TCP backend: answers each connection with the peer address it sees, then closes.
fn peer_backend(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let _ = s.write_all(peer.as_bytes());
        }
    });
}

/// UDP backend: answers each datagram with the peer address it sees.
fn udp_peer_backend(s: UdpSocket) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(from.to_string().as_bytes(), from);
        }
    });
}

/// From inside `ns`: connect to `to` and return (our local address, what the backend says it saw).
fn tcp_seen(ns: &TestNs, to: &str) -> (SocketAddr, String) {
    let mut s = connect_in(ns, to).unwrap_or_else(|e| panic!("connect {to}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = String::new();
    s.read_to_string(&mut seen).unwrap();
    (s.local_addr().unwrap(), seen)
}

/// From inside `ns`: one datagram to `to`; (our local port, what the backend saw).
fn udp_seen(ns: &TestNs, to: &str) -> (u16, String) {
    let a: SocketAddr = to.parse().unwrap();
    let s = inside(ns, move || {
        let any = if a.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        UdpSocket::bind(any).unwrap()
    });
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(b"who am i", a).unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = s
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no UDP answer through {to}: {e}"));
    (
        s.local_addr().unwrap().port(),
        String::from_utf8_lossy(&buf[..n]).into_owned(),
    )
}

/// The tests that start transparent proxies run one at a time.
static TRANSPARENT_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn transparent_turn() -> std::sync::MutexGuard<'static, ()> {
    TRANSPARENT_TESTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where transparent proxies write their journals (src/proxy/transparent.rs JOURNAL_DIR).
const JOURNALS: &str = "/run/nettool-proxy";

/// A mount namespace of the test's own, held by a sleeping child, whose /run/nettool-proxy is
/// an empty tmpfs. Every proxy start, transparent or not, removes what dead transparent proxies
/// left (their journals there say what), and the other tests of this file and other test runs
/// on the machine start proxies all the time: one of them removed a SIGKILLed proxy's rules
/// between the kill and the test's look (partly: its IPv6 rule and route were gone already).
/// A test that looks at what a SIGKILLed proxy left runs its proxies here, where no other
/// start sees the journal, and only its own start can be what removes the rules.
struct PrivateJournals {
    holder: ChildGuard,
}

impl PrivateJournals {
    fn new() -> PrivateJournals {
        // The mount point (the proxies make the directory anyway).
        std::fs::create_dir_all(JOURNALS).unwrap();
        let mut holder = ChildGuard(
            Command::new("unshare")
                .args(["-m", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "mount -t tmpfs nt-test-journals {JOURNALS} && echo ready && exec sleep 3600"
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("unshare (util-linux)"),
        );
        let mut line = String::new();
        let _ = std::io::BufReader::new(holder.0.stdout.take().unwrap()).read_line(&mut line);
        if line != "ready\n" {
            let mut err = String::new();
            let _ = holder.0.stderr.take().unwrap().read_to_string(&mut err);
            panic!("a private {JOURNALS}: {line}{err}");
        }
        PrivateJournals { holder }
    }

    /// `argv` in this mount namespace and in network namespace `ns` (the caller's when None).
    fn command(&self, ns: Option<&TestNs>, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.pid()));
        if let Some(ns) = ns {
            c.args(["ip", "netns", "exec", &ns.name]);
        }
        c.args(argv);
        c
    }

    /// The journal of proxy `pid`, seen through the holder's root.
    fn journal(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root{JOURNALS}/{pid}.json",
            self.holder.pid()
        ))
    }
}

/// Through `--transparent` the backends see the client's address (TCP and UDP, v4 and v6),
/// and nothing the proxy added is left after it exits.
fn transparent_backends_see_the_client_address_tcp_udp_v4_v6_and_nothing_is_left(relay: Relay) {
    let _turn = transparent_turn();
    let n = chain("tpa");
    let dir = TempDir::new("tpa");
    peer_backend(listen_in(&n.be, "10.77.2.2:80"));
    peer_backend(listen_in(&n.be, "[fd77:2::2]:80"));
    udp_peer_backend(inside(&n.be, || UdpSocket::bind("10.77.2.2:53").unwrap()));
    udp_peer_backend(inside(&n.be, || UdpSocket::bind("[fd77:2::2]:53").unwrap()));
    let maps = [
        "-p",
        "0.0.0.0:8080=10.77.2.2:80",
        "-p",
        "[::]:8080=[fd77:2::2]:80",
        "-p",
        "udp:0.0.0.0:5353=10.77.2.2:53",
        "-p",
        "udp:[::]:5353=[fd77:2::2]:53",
    ];
    // Without --transparent the backend sees the proxy: the test can fail.
    let p = relay.start(Some(&n.px), &dir, &maps);
    let (_, seen) = tcp_seen(&n.cli, "10.77.1.1:8080");
    assert!(seen.starts_with("10.77.2.1:"), "{seen}");
    p.stop();
    let mut args = vec!["--transparent"];
    args.extend_from_slice(&maps);
    // On the fast path: served by the loop's threads, as without --transparent.
    let p = relay.start(Some(&n.px), &dir, &args);
    assert!(!transparent_traces(Some(&n.px)).is_empty());
    for to in ["10.77.1.1:8080", "[fd77:1::1]:8080"] {
        let (me, seen) = tcp_seen(&n.cli, to);
        assert_eq!(seen, me.to_string(), "tcp through {to}");
    }
    for to in ["10.77.1.1:5353", "[fd77:1::1]:5353"] {
        let (port, seen) = udp_seen(&n.cli, to);
        // The client's socket is bound to any address: its IP is the one on its link.
        let want_ip = if to.starts_with('[') {
            "fd77:1::2"
        } else {
            "10.77.1.2"
        };
        assert_eq!(
            seen.parse::<SocketAddr>().unwrap(),
            SocketAddr::new(want_ip.parse().unwrap(), port),
            "udp through {to}"
        );
    }
    // A client the backend reaches on its own link (here: the backend itself, through the
    // proxy's address on that link) keeps the proxy's address, or the backend would answer
    // it directly and the client would reset: it works, and the log says why once.
    let (_, seen) = tcp_seen(&n.be, "10.77.2.1:8080");
    assert!(seen.starts_with("10.77.2.1:"), "{seen}");
    let journal = format!("/run/nettool-proxy/{}.json", p.pid());
    assert!(Path::new(&journal).exists(), "{journal}");
    let log = p.stop();
    assert!(
        log.contains("transparent: 10.77.2.2:") && log.contains("on the same link"),
        "{log}"
    );
    assert!(
        log.contains("transparent: rules and routes removed"),
        "{log}"
    );
    assert_eq!(
        transparent_traces(Some(&n.px)),
        "",
        "left behind after exit"
    );
    assert!(!Path::new(&journal).exists(), "{journal} left behind");
}

on_both_relays!(
    transparent_backends_see_the_client_address_tcp_udp_v4_v6_and_nothing_is_left_fast_path,
    transparent_backends_see_the_client_address_tcp_udp_v4_v6_and_nothing_is_left_tokio_path
    => transparent_backends_see_the_client_address_tcp_udp_v4_v6_and_nothing_is_left()
);

#[test]
fn transparent_across_namespaces_survives_sigkill_and_works_in_docker_proxy_mode() {
    let _turn = transparent_turn();
    // cli -- L (the proxy listens here) ; T (it dials from here) -- be ; cli2 -- T.
    let (cli, l, t, be, cli2) = (
        TestNs::new("tpxc"),
        TestNs::new("tpxl"),
        TestNs::new("tpxt"),
        TestNs::new("tpxb"),
        TestNs::new("tpxd"),
    );
    let name = |t: &str| common::unique_ifname(t);
    for (a, na, aa, b, nb, ab) in [
        (
            name("tx"),
            &cli,
            "10.77.1.2/24",
            name("tx"),
            &l,
            "10.77.1.1/24",
        ),
        (
            name("tx"),
            &be,
            "10.77.2.2/24",
            name("tx"),
            &t,
            "10.77.2.1/24",
        ),
        (
            name("tx"),
            &cli2,
            "10.77.3.2/24",
            name("tx"),
            &t,
            "10.77.3.1/24",
        ),
    ] {
        common::veth(&a, na, &b, nb);
        na.ip(&["addr", "add", aa, "dev", &a]);
        nb.ip(&["addr", "add", ab, "dev", &b]);
    }
    cli.ip(&["route", "add", "default", "via", "10.77.1.1"]);
    cli2.ip(&["route", "add", "default", "via", "10.77.3.1"]);
    be.ip(&["route", "add", "default", "via", "10.77.2.1"]);
    peer_backend(listen_in(&be, "10.77.2.2:80"));
    let dir = TempDir::new("tpx");
    let root_before = transparent_traces(None);
    // Its own journal directory: what the SIGKILLed proxy left is removed by this test's next
    // start, not by another test's meanwhile.
    let journals = PrivateJournals::new();
    // Run from the test's own namespace, listening in L and dialing from T: the rules go to T only.
    let a = start_cmd(
        journals.command(None, &[BIN]),
        &dir,
        &[
            "--transparent",
            "--listen-netns",
            &l.name,
            "--target-netns",
            &t.name,
            "-p",
            "10.77.1.1:8080=10.77.2.2:80",
        ],
        &[],
    );
    let (me, seen) = tcp_seen(&cli, "10.77.1.1:8080");
    assert_eq!(seen, me.to_string());
    let left = transparent_traces(Some(&t));
    assert!(
        left.contains(&format!("nettool_proxy_{}", a.pid())),
        "{left}"
    );
    assert_eq!(transparent_traces(Some(&l)), "");
    assert_eq!(
        transparent_traces(None),
        root_before,
        "the test's namespace changed"
    );
    // SIGKILL: nothing can clean up, the rules stay...
    let a_pid = a.pid();
    let mut a = a;
    a.child.0.kill().unwrap();
    a.child.0.wait().unwrap();
    assert_eq!(transparent_traces(Some(&t)), left);
    assert!(journals.journal(a_pid).exists());
    // ...until the next proxy starts, transparent or not: here a plain one, which says so.
    let plain = start_cmd(
        journals.command(Some(&t), &[BIN]),
        &dir,
        &["127.0.0.1:9191", "10.77.2.2:80"],
        &[],
    );
    let now = transparent_traces(Some(&t));
    assert!(
        !now.contains(&format!("nettool_proxy_{a_pid}")),
        "a plain proxy's start left a SIGKILLed transparent proxy's rules: {now}; its log:\n{}",
        plain.log()
    );
    assert!(
        plain.log().contains(&format!(
            "transparent: removed 5 item(s) left by dead proxy pid {a_pid}"
        )),
        "{}",
        plain.log()
    );
    assert!(!journals.journal(a_pid).exists());
    plain.stop();
    // A transparent proxy in docker-proxy mode, switched on from the environment.
    let log = dir.join("docker-proxy.log");
    let mut argv = vec![BIN];
    argv.extend(docker_flags(
        "tcp",
        ("10.77.3.1", "9090"),
        ("10.77.2.2", "80"),
    ));
    let mut cmd = journals.command(Some(&t), &argv);
    cmd.env("NETTOOL_PROXY_TRANSPARENT", "1")
        .env("NETTOOL_PROXY_LOG", &log);
    let (b, answer) = spawn_ready(cmd);
    let b_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(answer, "0\n", "{}", b_log());
    let (me, seen) = tcp_seen(&cli2, "10.77.3.1:9090");
    assert_eq!(seen, me.to_string());
    let b_pid = b.pid();
    term(b);
    assert_eq!(transparent_traces(Some(&t)), "");
    for pid in [a_pid, b_pid] {
        let j = journals.journal(pid);
        assert!(!j.exists(), "{}", j.display());
    }
}

#[test]
fn a_transparent_reply_that_starts_a_conntrack_entry_of_its_own_still_reaches_the_proxy() {
    // Replies are known by their connection's conntrack mark. When that entry is gone before
    // the first reply (a flush here; a UDP entry that timed out while the proxy's flow lived
    // on), the backend's reply starts a new entry, unmarked: the socket lookup for a first
    // packet finds the transparent socket and marks it, or the reply would be routed on
    // towards the client, which drops it. (Later replies find the socket by early demux.)
    let _turn = transparent_turn();
    let n = chain("tpct");
    let dir = TempDir::new("tpct");
    let be = inside(&n.be, || UdpSocket::bind("10.77.2.2:53").unwrap());
    be.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let p = start(
        Some(&n.px),
        &dir,
        &["--transparent", "-p", "udp:10.77.1.1:5353=10.77.2.2:53"],
    );
    let cli = inside(&n.cli, || UdpSocket::bind("0.0.0.0:0").unwrap());
    cli.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    cli.connect("10.77.1.1:5353").unwrap();
    cli.send(b"hello").unwrap();
    let mut buf = [0u8; 64];
    let (_, from) = be.recv_from(&mut buf).unwrap();
    assert_eq!(
        from.ip().to_string(),
        "10.77.1.2",
        "the backend sees the client"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &n.px.name, "conntrack", "-F"])
        .output()
        .expect("conntrack (apt-get install conntrack)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    be.send_to(b"one", from).unwrap();
    let k = cli
        .recv(&mut buf)
        .expect("a reply after a conntrack flush did not come back through the proxy");
    assert_eq!(&buf[..k], b"one");
    p.stop();
}

#[test]
fn a_proxy_start_that_fails_to_bind_still_removes_a_dead_transparent_proxys_rules() {
    let _turn = transparent_turn();
    let t = lab("tpfail");
    let dir = TempDir::new("tpfail");
    let journals = PrivateJournals::new();
    let a = start_cmd(
        journals.command(Some(&t), &[BIN]),
        &dir,
        &["--transparent", "127.0.0.1:8080", "127.0.0.1:80"],
        &[],
    );
    let a_pid = a.pid();
    let left = transparent_traces(Some(&t));
    assert!(left.contains(&format!("nettool_proxy_{a_pid}")), "{left}");
    let mut a = a;
    a.child.0.kill().unwrap();
    a.child.0.wait().unwrap();
    assert_eq!(
        transparent_traces(Some(&t)),
        left,
        "SIGKILL removed nothing"
    );
    let j = journals.journal(a_pid);
    assert!(
        j.exists(),
        "the journal is in the private directory: {}",
        j.display()
    );
    // The next proxy cannot bind (the port is taken) and exits 1: it still cleans up first.
    let _taken = listen_in(&t, "127.0.0.1:9393");
    let o = journals
        .command(Some(&t), &[BIN, "proxy", "127.0.0.1:9393", "127.0.0.1:80"])
        .output()
        .unwrap();
    let said = common::text(&o);
    assert!(
        o.status.code() == Some(1) && said.contains("cannot listen on tcp 127.0.0.1:9393"),
        "{said}"
    );
    let now = transparent_traces(Some(&t));
    assert!(
        !now.contains(&format!("nettool_proxy_{a_pid}")),
        "a proxy start that failed to bind left a SIGKILLed transparent proxy's rules: {now}"
    );
    assert!(!j.exists(), "{}", j.display());
}

#[test]
fn a_lab_with_transparent_proxy_shows_containers_the_client_address() {
    let _turn = transparent_turn();
    let dir = TempDir::new("tplab");
    let file = dir.join("lab.toml");
    std::fs::write(
        &file,
        r#"[lab]
name = "tp"
transparent_proxy = true

[[network]]
name = "front"
subnet = "172.31.1.0/24"

[[network]]
name = "back"
subnet = "172.31.2.0/24"

[[container]]
name = "web"
network = "back"
address = "172.31.2.2"
ports = ["8080:80"]

[[container]]
name = "client"
network = "front"
address = "172.31.1.2"
"#,
    )
    .unwrap();
    let file = file.to_str().unwrap().to_string();
    for mode in [&[][..], &["--docker-style-proxies"][..]] {
        let mut args = vec![file.as_str()];
        args.extend_from_slice(mode);
        let (lab, state) = common::TestLab::isolated("tplab", &args);
        let ns = |c: &str| TestNs {
            name: format!("{}-{c}", lab.name),
        };
        let (web, client) = (ns("web"), ns("client"));
        peer_backend(listen_in(&web, "172.31.2.2:80"));
        // A container on another lab network reaches the published port through the proxy
        // (Docker's rules leave traffic from its bridges to the userland proxy).
        let (me, seen) = tcp_seen(&client, "172.31.1.1:8080");
        assert_eq!(seen, me.to_string(), "mode {mode:?}: {state}");
        std::mem::forget(web);
        std::mem::forget(client);
        let pids: Vec<u64> = state["proxy_pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert!(!pids.is_empty());
        drop(lab);
        for pid in pids {
            let j = format!("/run/nettool-proxy/{pid}.json");
            assert!(!Path::new(&j).exists(), "{j} left after teardown");
        }
    }
}

#[test]
fn proxy_protocol_v1_and_v2_give_a_real_haproxy_the_client_address() {
    let ns = lab("pxpp");
    let dir = TempDir::new("pxpp");
    let cfg = dir.join("haproxy.cfg");
    // HTTP mode: HAProxy answers itself with the source it read from the header, and logs it.
    std::fs::write(
        &cfg,
        "global\n  log stdout format raw local0\ndefaults\n  mode http\n  log global\n  timeout connect 5s\n  timeout client 5s\n  timeout server 5s\nfrontend fe\n  bind 127.0.0.1:7000 accept-proxy\n  log-format \"haproxy-log client=%ci:%cp\"\n  http-request return status 200 content-type text/plain lf-string \"haproxy sees %[src]:%[src_port]\\n\"\n",
    )
    .unwrap();
    let mut hp = Command::new("ip");
    hp.args(["netns", "exec", &ns.name, "haproxy", "-db", "-f"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut haproxy = ChildGuard(hp.spawn().expect("haproxy (apt-get install haproxy)"));
    let out = haproxy.0.stdout.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let l2 = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            l2.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    wait_for("haproxy listening", 10, || {
        connect_in(&ns, "127.0.0.1:7000").is_ok()
    });
    let curl = |port: &str| {
        let o = Command::new("ip")
            .args(["netns", "exec", &ns.name, "curl", "-s", "--max-time", "5"])
            .args(["--interface", "10.9.0.1", "--local-port", port])
            .arg("http://127.0.0.1:8080/")
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Without the header HAProxy refuses the connection: the test can fail.
    let p = start(Some(&ns), &dir, &["127.0.0.1:8080", "127.0.0.1:7000"]);
    assert_eq!(curl("41000"), "");
    p.stop();
    let p = start(
        Some(&ns),
        &dir,
        &["--proxy-protocol", "v2", "127.0.0.1:8080", "127.0.0.1:7000"],
    );
    assert_eq!(curl("41001"), "haproxy sees 10.9.0.1:41001\n");
    wait_for("haproxy's log line", 10, || {
        lines
            .lock()
            .unwrap()
            .contains("haproxy-log client=10.9.0.1:41001")
    });
    p.stop();
    // Version 1, the text line (accept-proxy reads both).
    let p = start(
        Some(&ns),
        &dir,
        &["--proxy-protocol", "v1", "127.0.0.1:8080", "127.0.0.1:7000"],
    );
    assert_eq!(curl("41002"), "haproxy sees 10.9.0.1:41002\n");
    p.stop();
    // v1 has no UDP: a usage error naming what to use, on the command line and in docker-proxy
    // mode (there on fd 3, for dockerd to show).
    exits_saying(
        &ns,
        &[
            "proxy",
            "--proxy-protocol",
            "v1",
            "udp:5353",
            "127.0.0.1:53",
        ],
        2,
        "PROXY protocol v1 carries TCP only: use --proxy-protocol v2",
    );
    let mut c = nettool_in_ns(&ns, &["proxy"]);
    c.args(docker_flags(
        "udp",
        ("127.0.0.1", "5353"),
        ("127.0.0.1", "53"),
    ))
    .env("NETTOOL_PROXY_PROXY_PROTOCOL", "v1")
    .env("NETTOOL_PROXY_CONFIG", "/nonexistent/nettool.toml");
    let (mut child, ready) = spawn_ready(c);
    assert!(
        ready.starts_with("1\n") && ready.contains("PROXY protocol v1 carries TCP only"),
        "{ready:?}"
    );
    assert_eq!(child.0.wait().unwrap().code(), Some(1));
}

#[test]
fn proxy_protocol_v2_heads_every_udp_datagram() {
    let ns = lab("pxppu");
    let dir = TempDir::new("pxppu");
    let backend = inside(&ns, || UdpSocket::bind("127.0.0.1:7053").unwrap());
    backend
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--proxy-protocol",
            "v2",
            "udp:10.9.0.1:5353",
            "127.0.0.1:7053",
        ],
    );
    let client = inside(&ns, || UdpSocket::bind("10.9.0.1:41053").unwrap());
    for payload in [&b"one"[..], b"two!"] {
        client.send_to(payload, "10.9.0.1:5353").unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = backend.recv_from(&mut buf).unwrap();
        // Signature, v2 PROXY, UDP over IPv4, 12 address bytes, 10.9.0.1:41053 -> 10.9.0.1:5353.
        let mut want = vec![
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x12, 0,
            12, 10, 9, 0, 1, 10, 9, 0, 1,
        ];
        want.extend_from_slice(&41053u16.to_be_bytes());
        want.extend_from_slice(&5353u16.to_be_bytes());
        want.extend_from_slice(payload);
        assert_eq!(&buf[..n], &want[..]);
        // Replies go back as they are.
        backend.send_to(b"answer", from).unwrap();
        let mut got = [0u8; 64];
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (m, _) = client.recv_from(&mut got).unwrap();
        assert_eq!(&got[..m], b"answer");
    }
    let log = p.stop();
    assert!(log.contains("bytes_c2s=7 bytes_s2c=12"), "{log}");
}

/// SO_RCVBUFFORCE on a test socket, so the test's own receiver never drops.
fn big_rcvbuf(s: &UdpSocket) {
    let v: libc::c_int = 16 << 20;
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[test]
fn udp_batches_keep_every_datagram_its_boundaries_and_order() {
    let ns = lab("pxudpb");
    let dir = TempDir::new("pxudpb");
    let backend = inside(&ns, || UdpSocket::bind("127.0.0.1:7054").unwrap());
    big_rcvbuf(&backend);
    backend
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let p = start(Some(&ns), &dir, &["udp:10.9.0.1:5354", "127.0.0.1:7054"]);
    // Two flows, interleaved, as fast as the clients can send: datagram k of client c carries
    // (c, k) and is 8 + k % 1300 bytes long; every 500th is 60 000 bytes.
    let clients: Vec<UdpSocket> = (0..2)
        .map(|_| inside(&ns, || UdpSocket::bind("10.9.0.1:0").unwrap()))
        .collect();
    let size = |k: u32| {
        if k % 500 == 499 {
            60_000
        } else {
            8 + (k % 1300) as usize
        }
    };
    const N: u32 = 2000;
    for k in 0..N {
        for (c, s) in clients.iter().enumerate() {
            let mut d = vec![0xA5u8; size(k)];
            d[..4].copy_from_slice(&(c as u32).to_be_bytes());
            d[4..8].copy_from_slice(&k.to_be_bytes());
            s.send_to(&d, "10.9.0.1:5354").unwrap();
        }
    }
    // Per backend-side source (one per flow): every datagram, whole, in order.
    let mut next: std::collections::HashMap<SocketAddr, (u32, u32)> = Default::default();
    let mut buf = vec![0u8; 65_536];
    for _ in 0..2 * N {
        let (n, from) = backend
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagrams missing: got {next:?}: {e}"));
        let c = u32::from_be_bytes(buf[..4].try_into().unwrap());
        let k = u32::from_be_bytes(buf[4..8].try_into().unwrap());
        let e = next.entry(from).or_insert((c, 0));
        assert_eq!((c, k), *e, "flow {from}: out of order or lost");
        assert_eq!(n, size(k), "datagram {k} of client {c}: boundary");
        assert!(buf[8..n].iter().all(|b| *b == 0xA5));
        e.1 += 1;
    }
    assert_eq!(next.len(), 2);
    let log = p.stop();
    assert!(log.contains(&format!("datagrams={}", 2 * N)), "{log}");
}

/// System calls the process `pid` (all its threads) makes while `f` runs, counted by a real
/// strace attached to it: (calls of each traced syscall summed, f's result).
fn syscalls_during<T>(pid: u32, syscalls: &str, f: impl FnOnce() -> T) -> (u64, T) {
    let out = std::env::temp_dir().join(unique("strace"));
    let mut st = ChildGuard(
        Command::new("strace")
            .args(["-f", "-qq", "-c", "-e"])
            .arg(format!("trace={syscalls}"))
            .arg("-o")
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (apt-get install strace)"),
    );
    // Attached once every thread of the process has a tracer.
    wait_for("strace to attach", 10, || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .all(|t| {
                std::fs::read_to_string(t.path().join("status"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| {
                        l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                    })
            })
    });
    let r = f();
    unsafe { libc::kill(st.pid() as i32, libc::SIGINT) };
    let _ = st.0.wait();
    let summary = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    // "% time seconds usecs/call calls [errors] syscall" rows.
    let calls = summary
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = f.last()?;
            (syscalls.split(',').any(|s| s == *name) && f.len() >= 5)
                .then(|| f[3].parse::<u64>().ok())
                .flatten()
        })
        .sum();
    (calls, r)
}

#[test]
fn udp_replies_are_batched_and_keep_boundaries_order_and_source() {
    let ns = lab("pxudpr");
    let dir = TempDir::new("pxudpr");
    // Per flow: N replies, datagram k carrying (flow, k), 1400 bytes in runs (what UDP_SEGMENT
    // sends as one), a stretch of sizes that differ, every 250th 60 000 bytes.
    const N: u32 = 600;
    let size = |k: u32| -> usize {
        match k {
            _ if k % 250 == 249 => 60_000,
            300..=399 => 8 + (k as usize * 7) % 1300,
            _ if k % 50 == 49 => 700,
            _ => 1400,
        }
    };
    for addr in ["127.0.0.1:7055", "[::1]:7056"] {
        let a: SocketAddr = addr.parse().unwrap();
        let s = inside(&ns, move || UdpSocket::bind(a).unwrap());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                if n < 4 {
                    continue;
                }
                let flow = u32::from_be_bytes(buf[..4].try_into().unwrap());
                for k in 0..N {
                    let mut d = vec![0x5Au8; size(k)];
                    d[..4].copy_from_slice(&flow.to_be_bytes());
                    d[4..8].copy_from_slice(&k.to_be_bytes());
                    let _ = s.send_to(&d, from);
                }
            }
        });
    }
    // Wildcard listeners: every reply leaves from the address its client sent to (IP_PKTINFO
    // next to UDP_SEGMENT in the same message).
    let p = start(
        Some(&ns),
        &dir,
        &[
            "-p",
            "udp:5355=127.0.0.1:7055",
            "-p",
            "udp:[::]:5356=[::1]:7056",
        ],
    );
    let clients: Vec<(u32, UdpSocket)> = [
        (0u32, "0.0.0.0:0", "10.9.0.1:5355"),
        (1, "0.0.0.0:0", "127.0.0.1:5355"),
        (2, "[::]:0", "[fd00::9]:5356"),
    ]
    .into_iter()
    .map(|(id, bind, to)| {
        let s = inside(&ns, move || {
            let s = UdpSocket::bind(bind).unwrap();
            // Connected: replies from any other source address are not delivered.
            s.connect(to).unwrap();
            s
        });
        big_rcvbuf(&s);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (id, s)
    })
    .collect();
    let (calls, ()) = syscalls_during(p.pid(), "sendto,sendmsg,sendmmsg", || {
        for (id, s) in &clients {
            s.send(&id.to_be_bytes()).unwrap();
        }
        let mut buf = vec![0u8; 65_536];
        for (id, s) in &clients {
            for k in 0..N {
                let n = s.recv(&mut buf).unwrap_or_else(|e| {
                    panic!("client {id}: reply {k} missing: {e}; log:\n{}", p.log())
                });
                let got = (
                    u32::from_be_bytes(buf[..4].try_into().unwrap()),
                    u32::from_be_bytes(buf[4..8].try_into().unwrap()),
                );
                assert_eq!(got, (*id, k), "client {id}: out of order or lost");
                assert_eq!(n, size(k), "client {id}, reply {k}: boundary");
                assert!(buf[8..n].iter().all(|b| *b == 0x5A));
            }
        }
    });
    // One by one this took a send per reply (3 * N); batched, a few per recvmmsg.
    assert!(
        calls * 4 < 3 * N as u64,
        "{calls} send calls for {} replies: not batched",
        3 * N
    );
    let log = p.stop();
    assert!(log.contains(&format!("datagrams={}", 3 * N + 3)), "{log}");
}

/// A client that sends with UDP_SEGMENT: on loopback the segmented send reaches the proxy's
/// listener whole and, with UDP_GRO on, comes out of one receive as one buffer; the backend
/// must still get each datagram on its own, in order.
#[test]
fn udp_gro_coalesced_datagrams_reach_the_backend_one_by_one() {
    let ns = lab("pxudpg");
    let dir = TempDir::new("pxudpg");
    let backend = inside(&ns, || UdpSocket::bind("127.0.0.1:7057").unwrap());
    big_rcvbuf(&backend);
    backend
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let p = start(Some(&ns), &dir, &["udp:10.9.0.1:5357", "127.0.0.1:7057"]);
    let client = inside(&ns, || UdpSocket::bind("10.9.0.1:0").unwrap());
    client.connect("10.9.0.1:5357").unwrap();
    // 10 sends of 1000-byte segments: 39 of them and a shorter last one of 300.
    const SEG: usize = 1000;
    let mut k = 0u32;
    let mut sizes = Vec::new();
    for _ in 0..10 {
        let mut msg = Vec::new();
        for i in 0..40 {
            let n = if i == 39 { 300 } else { SEG };
            let mut d = vec![0xC3u8; n];
            d[..4].copy_from_slice(&k.to_be_bytes());
            msg.extend_from_slice(&d);
            sizes.push(n);
            k += 1;
        }
        let seg = SEG as u16;
        let mut ctrl = [0u64; 4];
        let iov = libc::iovec {
            iov_base: msg.as_ptr() as *mut libc::c_void,
            iov_len: msg.len(),
        };
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_iov = &iov as *const _ as *mut libc::iovec;
        h.msg_iovlen = 1;
        h.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
        h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
        let sent = unsafe {
            let c = libc::CMSG_FIRSTHDR(&h);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = 103; // UDP_SEGMENT
            (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
            libc::sendmsg(client.as_raw_fd(), &h, 0)
        };
        assert_eq!(
            sent,
            msg.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }
    let mut buf = vec![0u8; 65_536];
    for (k, want) in sizes.iter().enumerate() {
        let n = backend
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {k} missing: {e}; log:\n{}", p.log()));
        let got = u32::from_be_bytes(buf[..4].try_into().unwrap());
        assert_eq!(
            (got, n),
            (k as u32, *want),
            "datagram {k}: order or boundary"
        );
        assert!(buf[4..n].iter().all(|b| *b == 0xC3));
    }
    let log = p.stop();
    assert!(log.contains("datagrams=400"), "{log}");
}

/// A short connection (request, answer, both close) costs no read after the FIN was seen and no
/// SO_ERROR query after a successful connect.
fn a_short_connection_costs_no_read_after_the_fin_and_no_connect_check(relay: Relay) {
    let ns = lab("pxshort");
    let dir = TempDir::new("pxshort");
    pong_backend(listen_in(&ns, "127.0.0.1:7301"));
    let p = relay.start(Some(&ns), &dir, &["127.0.0.1:7302", "127.0.0.1:7301"]);
    const N: u64 = 200;
    let calls = short_connection_syscalls(
        &ns,
        p.pid(),
        "127.0.0.1:7302",
        N,
        "recvfrom,read,getsockopt",
    );
    // Per connection: the client's request, its FIN, the backend's answer with its FIN: 3
    // reads, plus a read that finds the request not there yet when the proxy accepts first
    // (measured: 3.0 per connection on the loop, 3.3 on tokio's path). Before: 5 and more,
    // with a 4th read only to be told 0 after the FIN was seen and an SO_ERROR query after
    // every successful connect. The request and the answer are read on every path: fewer
    // than 2 means strace saw nothing.
    assert!(
        (2 * N..4 * N).contains(&calls),
        "{calls} reads and getsockopt calls for {N} connections"
    );
    let log = p.stop();
    assert!(log.contains(&format!("connections={N}")), "{log}");
}

on_both_relays!(
    a_short_connection_costs_no_read_after_the_fin_and_no_connect_check_fast_path,
    a_short_connection_costs_no_read_after_the_fin_and_no_connect_check_tokio_path
    => a_short_connection_costs_no_read_after_the_fin_and_no_connect_check()
);

/// UDP interrupt moderation: a dense stream is moved in batches with a short wait between
/// them (the proxy thread sleeps instead of being woken by each datagram), every datagram
/// reaching the backend whole and in order; a request/response client never makes it wait.
#[test]
fn udp_dense_streams_are_paced_in_batches_and_request_response_never_waits() {
    let ns = lab("pxudpc");
    let dir = TempDir::new("pxudpc");
    // The stream's backend counts; the echo backend answers each datagram.
    let sink = inside(&ns, || UdpSocket::bind("127.0.0.1:7058").unwrap());
    big_rcvbuf(&sink);
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echo = inside(&ns, || UdpSocket::bind("127.0.0.1:7059").unwrap());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let p = start(
        Some(&ns),
        &dir,
        &[
            "-p",
            "udp:127.0.0.1:5358=127.0.0.1:7058",
            "-p",
            "udp:127.0.0.1:5359=127.0.0.1:7059",
        ],
    );
    let client = inside(&ns, || UdpSocket::bind("127.0.0.1:0").unwrap());
    big_rcvbuf(&client);
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The flows exist before counting (a new flow's first datagram goes its own way).
    client.send_to(b"open", "127.0.0.1:5358").unwrap();
    let mut buf = vec![0u8; 65_536];
    assert_eq!(sink.recv(&mut buf).unwrap(), 4);
    client.send_to(b"open", "127.0.0.1:5359").unwrap();
    assert_eq!(client.recv(&mut buf).unwrap(), 4);

    // Request/response: one datagram in flight at a time, so no wake-up moves two.
    const ROUNDS: u32 = 300;
    let (waits, ()) = syscalls_during(p.pid(), "clock_nanosleep,nanosleep", || {
        for k in 0..ROUNDS {
            client.send_to(&k.to_be_bytes(), "127.0.0.1:5359").unwrap();
            let n = client
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("answer {k}: {e}; log:\n{}", p.log()));
            assert_eq!(&buf[..n], &k.to_be_bytes(), "answer {k}");
        }
    });
    assert_eq!(
        waits, 0,
        "the proxy waited {waits} times during {ROUNDS} request/response rounds"
    );

    // A dense stream: datagrams sent back to back, faster than one wake-up each.
    const N: u32 = 4000;
    let (waits, ()) = syscalls_during(p.pid(), "clock_nanosleep,nanosleep", || {
        for k in 0..N {
            let mut d = vec![0xA5u8; 1400];
            d[..4].copy_from_slice(&k.to_be_bytes());
            client.send_to(&d, "127.0.0.1:5358").unwrap();
        }
        for k in 0..N {
            let n = sink
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("datagram {k} missing: {e}; log:\n{}", p.log()));
            let got = u32::from_be_bytes(buf[..4].try_into().unwrap());
            assert_eq!((got, n), (k, 1400), "datagram {k}: order or boundary");
        }
    });
    assert!(
        waits > 0,
        "the proxy never waited between batches of a dense stream ({N} datagrams)"
    );
    let log = p.stop();
    assert!(
        log.contains(&format!("datagrams={}", N + 2 * ROUNDS + 3)),
        "{log}"
    );
}

// The plain TCP path's own event loop (src/proxy/fastpath/): no dump, no PROXY header, no -v.

/// How many threads of `pid` are named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

/// A proxy on the fast path (NETTOOL_PROXY_FASTPATH=1), checked to be on it.
fn start_fast(ns: Option<&TestNs>, dir: &TempDir, args: &[&str]) -> Proxy {
    let p = start_with(ns, dir, args, &[("NETTOOL_PROXY_FASTPATH", "1")]);
    // They start right after the readiness answer.
    wait_for("two event-loop threads", 5, || {
        threads_named(p.pid(), "nettool-fast") == 2
    });
    p
}

/// Close `s` with a reset (SO_LINGER 0).
fn close_with_reset(s: TcpStream) {
    let lin = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lin as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    drop(s);
}

/// The proxy's two TCP relays. A behaviour both must have is one test body, run once on each
/// by a `..._fast_path` and a `..._tokio_path` test (`cargo test --test proxy -- fast_path`
/// selects the loop's).
#[derive(Clone, Copy, Debug)]
enum Relay {
    /// The event loop (src/proxy/fastpath/): plain TCP that nothing watches, the default.
    FastPath,
    /// tokio's path (src/proxy/relay.rs): what serves dumps, pcaps, -v and PROXY headers.
    Tokio,
}

impl Relay {
    /// Start `nettool proxy ARGS` on this relay (see [`start`]).
    fn start(self, ns: Option<&TestNs>, dir: &TempDir, args: &[&str]) -> Proxy {
        match self {
            Relay::FastPath => start_fast(ns, dir, args),
            Relay::Tokio => start_tokio(ns, dir, args),
        }
    }

    /// [`Relay::start`] with the namespace watch off ([`UNWATCHED`]).
    fn start_unwatched(self, ns: Option<&TestNs>, dir: &TempDir, args: &[&str]) -> Proxy {
        let fast = match self {
            Relay::FastPath => "1",
            Relay::Tokio => "0",
        };
        start_with(
            ns,
            dir,
            args,
            &[("NETTOOL_PROXY_FASTPATH", fast), UNWATCHED],
        )
    }
}

/// The proxy's namespace watch off: a --target-netns made again is then found only by a
/// failed dial, the path the tests that set it are about (the watch would follow first, by a
/// race with the test's first client).
const UNWATCHED: (&str, &str) = ("NETTOOL_PROXY_NSWATCH", "0");

/// Half-closes pass both ways, over IPv4 and IPv6, and the counters are exact.
fn passes_half_closes_both_ways_over_ipv4_and_ipv6_with_exact_counters(relay: Relay) {
    let ns = lab("pxhalf");
    let dir = TempDir::new("pxhalf");
    // Client -> backend half-close: the backend answers only after the client's FIN.
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    count_backend(listen_in(&ns, "[::1]:7001"));
    // Backend -> client half-close: the backend greets, shuts down its side, then reads.
    let l = listen_in(&ns, "127.0.0.1:7002");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(b"greeting then FIN");
            let _ = s.shutdown(Shutdown::Write);
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = tx.send(got);
        }
    });
    let p = relay.start(
        Some(&ns),
        &dir,
        &[
            "-p",
            "8080=127.0.0.1:7000",
            "-p",
            "[fd00::9]:8081=[::1]:7001",
            "-p",
            "[::1]:8083=[::1]:7001",
            "-p",
            "127.0.0.1:8082=127.0.0.1:7002",
        ],
    );
    // 300 kB: past the first 8 KiB read (both relays), so spliced through a pipe.
    assert_eq!(send_count(&ns, "127.0.0.1:8080", 300_000), "300000");
    assert_eq!(send_count(&ns, "10.9.0.1:8080", 5), "5");
    assert_eq!(send_count(&ns, "[::1]:8080", 70_000), "70000");
    assert_eq!(send_count(&ns, "[fd00::9]:8081", 123), "123");
    assert_eq!(send_count(&ns, "[::1]:8083", 45), "45");
    unsafe { libc::kill(p.pid() as i32, libc::SIGUSR1) };
    wait_for("counters on SIGUSR1", 5, || {
        p.log().contains("counters: connections=5")
    });
    let mut c = connect_in(&ns, "127.0.0.1:8082").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = Vec::new();
    c.read_to_end(&mut greeting).unwrap();
    assert_eq!(greeting, b"greeting then FIN");
    // The client's side is still open after the backend's FIN: its bytes still get through.
    let data = payload(100_000, 7);
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(got == data, "{} bytes reached the backend", got.len());
    drop(c);
    let log = p.stop();
    assert!(log.contains("listening on tcp 0.0.0.0:8080"), "{log}");
    assert!(log.contains("listening on tcp [::]:8080"), "{log}");
    let c2s = 300_000 + 5 + 70_000 + 123 + 45 + 100_000;
    let s2c = 6 + 1 + 5 + 3 + 2 + 17;
    assert!(
        log.contains(&format!(
            "counters at exit: connections=6 active=0 bytes_c2s={c2s} bytes_s2c={s2c} dial_errors=0 resets=0 errors=0"
        )),
        "{log}"
    );
}

on_both_relays!(
    passes_half_closes_both_ways_over_ipv4_and_ipv6_with_exact_counters_fast_path,
    passes_half_closes_both_ways_over_ipv4_and_ipv6_with_exact_counters_tokio_path
    => passes_half_closes_both_ways_over_ipv4_and_ipv6_with_exact_counters()
);

/// A reset passes as a reset both ways, the bytes before it first; with `dump` (tokio's path
/// only: a dump takes it) the dump names who reset.
fn passes_resets_both_ways(relay: Relay, dump: bool) {
    let ns = lab("pxrst");
    let dir = TempDir::new("pxrst");
    // The backend resets mid-stream.
    let l = listen_in(&ns, "127.0.0.1:7000");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 5];
            let _ = s.read_exact(&mut buf);
            let _ = s.write_all(b"partial");
            std::thread::sleep(Duration::from_millis(100));
            close_with_reset(s);
        }
    });
    // The client resets: the backend says what its next read saw.
    let l = listen_in(&ns, "127.0.0.1:7001");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 5];
            let first = s.read_exact(&mut buf).map(|_| buf.to_vec());
            let _ = tx.send(first.map_err(|e| e.kind()));
            let next = s.read(&mut buf);
            let _ = tx.send(next.map(|n| buf[..n].to_vec()).map_err(|e| e.kind()));
        }
    });
    let dumpf = dir.join("d.txt");
    let mut args = vec!["-p", "8080=127.0.0.1:7000", "-p", "8081=127.0.0.1:7001"];
    if dump {
        args.extend(["--dump", "--dump-file", dumpf.to_str().unwrap()]);
    }
    let p = relay.start(Some(&ns), &dir, &args);
    let mut s = connect_in(&ns, "127.0.0.1:8080").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let err = loop {
        match s.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    assert_eq!(got, b"partial");
    assert_eq!(err, Some(std::io::ErrorKind::ConnectionReset));

    let mut c = connect_in(&ns, "127.0.0.1:8081").unwrap();
    c.write_all(b"hello").unwrap();
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, Ok(b"hello".to_vec()));
    close_with_reset(c);
    let next = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(next, Err(std::io::ErrorKind::ConnectionReset));
    wait_for("both resets to be counted", 5, || {
        unsafe { libc::kill(p.pid() as i32, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(100));
        p.log().contains("active=0") && p.log().contains("resets=2")
    });
    let log = p.stop();
    assert!(log.contains("connections=2 active=0"), "{log}");
    if dump {
        let d = std::fs::read_to_string(&dumpf).unwrap();
        assert!(d.contains("close reset by backend"), "{d}");
        assert!(d.contains("close reset by client"), "{d}");
    }
}

on_both_relays!(
    passes_resets_both_ways_fast_path,
    passes_resets_both_ways_tokio_path
    => passes_resets_both_ways(false)
);

#[test]
fn passes_resets_both_ways_into_the_dump_tokio_path() {
    passes_resets_both_ways(Relay::Tokio, true);
}

/// A backend that refuses: the client is reset, and the log says which connection and why.
fn resets_the_client_when_the_backend_refuses_and_says_why(relay: Relay) {
    let ns = lab("pxdown");
    let dir = TempDir::new("pxdown");
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7999"]);
    expect_reset(&ns, "127.0.0.1:8080");
    let log = p.stop();
    let line = log
        .lines()
        .find(|l| l.contains("cannot connect to backend"))
        .unwrap_or_else(|| panic!("no dial error line: {log}"));
    assert!(
        line.contains("-> 127.0.0.1:8080: cannot connect to backend 127.0.0.1:7999: Connection refused (os error 111); resetting the client"),
        "{line}"
    );
    assert!(log.contains("connections=1 active=0"), "{log}");
    assert!(log.contains("dial_errors=1"), "{log}");
}

on_both_relays!(
    resets_the_client_when_the_backend_refuses_and_says_why_fast_path,
    resets_the_client_when_the_backend_refuses_and_says_why_tokio_path
    => resets_the_client_when_the_backend_refuses_and_says_why()
);

/// `k` connections open at once, each echoing `size` bytes both ways concurrently: every byte
/// back exact, the counters exact, every fd of the proxy released after.
fn echoes_exactly_and_releases_every_fd(relay: Relay, k: usize, size: usize) {
    let ns = lab("pxecho");
    let dir = TempDir::new("pxecho");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7000"]);
    let before = p.fds();
    // Each client writes while it reads the echo: both directions splice at once.
    let r = concurrent_echoes(&ns, "127.0.0.1:8080", k, size, || {
        wait_for(
            &format!("{k} connections open through the proxy"),
            20,
            || p.fds() >= before + 2 * k,
        )
    });
    let bad: Vec<_> = r.iter().filter(|r| r.is_err()).collect();
    assert!(bad.is_empty(), "{bad:?}");
    wait_for("every proxy fd to be released", 20, || p.fds() == before);
    let log = p.stop();
    let total = k * size;
    assert!(
        log.contains(&format!(
            "connections={k} active=0 bytes_c2s={total} bytes_s2c={total}"
        )),
        "{log}"
    );
}

on_both_relays!(
    moves_64_mib_each_way_byte_for_byte_fast_path,
    moves_64_mib_each_way_byte_for_byte_tokio_path
    => echoes_exactly_and_releases_every_fd(1, 64 << 20)
);

on_both_relays!(
    serves_500_concurrent_connections_and_releases_every_fd_fast_path,
    serves_500_concurrent_connections_and_releases_every_fd_tokio_path
    => echoes_exactly_and_releases_every_fd(500, 20_000)
);

/// Listening in one namespace, dialing from another: the backend on the container's loopback
/// is reachable from the host namespace only through the proxy. UDP too.
fn dials_from_the_target_namespace(relay: Relay) {
    let host = lab("pxhost");
    let ctr = lab("pxctr");
    let dir = TempDir::new("pxx");
    count_backend(listen_in(&ctr, "127.0.0.1:7000"));
    let p = relay.start(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &ctr.name,
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
            "-p",
            "udp:127.0.0.1:5353=127.0.0.1:5300",
        ],
    );
    for n in [1, 4242, 100_000] {
        assert_eq!(send_count(&host, "127.0.0.1:8080", n), n.to_string());
    }
    // The client has its answer before the relay has closed both sockets: ask until the
    // counters say the connection ended (one SIGUSR1 could come a moment too soon).
    wait_for("the three connections counted", 10, || {
        unsafe { libc::kill(p.pid() as i32, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(100));
        p.log().contains("counters: connections=3 active=0")
    });
    // And nothing listens on 8080 inside the container namespace itself.
    assert!(connect_in(&ctr, "127.0.0.1:8080").is_err());
    // UDP too (its flows dial from the UDP thread's own runtime through the same dialer).
    let backend = inside(&ctr, || UdpSocket::bind("127.0.0.1:5300").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..n].to_ascii_uppercase(), from);
        }
    });
    let reply = inside(&host, || {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"from the host", "127.0.0.1:5353").unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        (buf[..n].to_vec(), from)
    });
    assert_eq!(
        reply,
        (b"FROM THE HOST".to_vec(), "127.0.0.1:5353".parse().unwrap())
    );
    p.stop();
}

on_both_relays!(
    dials_from_the_target_namespace_fast_path,
    dials_from_the_target_namespace_tokio_path
    => dials_from_the_target_namespace()
);

/// Delete the named namespace `ns` and make a new one of the same name with lo up: what a
/// restarted container's namespace is to a proxy holding the old one.
fn remake_named(ns: &TestNs) {
    common::sh(&["ip", "netns", "del", &ns.name]);
    common::sh(&["ip", "netns", "add", &ns.name]);
    ns.ip(&["link", "set", "lo", "up"]);
}

/// `ip addr add|del IP/32 dev lo` in `ns`, for a backend address other than 127.0.0.1.
fn backend_ip(ns: &TestNs, verb: &str, ip: &str) {
    if ip != "127.0.0.1" {
        ns.ip(&["addr", verb, &format!("{ip}/32"), "dev", "lo"]);
    }
}

/// [`remake_named`] after taking `ip` off the old namespace (no route there any more, as for a
/// container's address once its eth0 is gone), with `ip` on the new one's lo.
fn remake_named_without(ns: &TestNs, ip: &str) {
    backend_ip(ns, "del", ip);
    remake_named(ns);
    backend_ip(ns, "add", ip);
}

/// Read what a backend said first, or the error (the proxy's reset) after at most 5 s.
fn first_words(mut s: TcpStream) -> std::io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// --target-netns NAME, deleted and made again while the proxy runs: the proxy still holds
/// the old namespace, where the dial is refused. The warn line says the name now names another
/// namespace, the proxy follows it and dials that connection again there: it and every one
/// after it reach the backend in the new one. `ip`: the backend's address; one other than
/// 127.0.0.1 is taken off the old namespace first, so the dial there fails at once (no route,
/// as for a container's address once its eth0 is gone) instead of by a reset that comes later.
fn follows_a_target_netns_made_again(relay: Relay, ip: &str) {
    let host = lab("pxfh");
    let ctr = lab("pxfc");
    let dir = TempDir::new("pxf");
    backend_ip(&ctr, "add", ip);
    let target = format!("{ip}:7000");
    let old = listen_in(&ctr, &target);
    let p = relay.start_unwatched(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &ctr.name,
            "-p",
            &format!("127.0.0.1:8080={target}"),
        ],
    );
    // The threads that dial (the loop's, tokio's path's dialer) enter the namespace themselves:
    // no second thread per dialing thread to hold it (NetNs::run names those netns-INODE).
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", p.pid()))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("netns-"))
            && names.iter().any(|n| n == "nettool-dialer"),
        "{names:?}"
    );
    let c = connect_in(&host, "127.0.0.1:8080").unwrap();
    let (mut b, _) = old.accept().unwrap();
    b.write_all(b"old").unwrap();
    drop(b);
    assert_eq!(first_words(c).unwrap(), "old");
    // The old backend goes; the name is made again, with a backend in the new namespace.
    drop(old);
    remake_named_without(&ctr, ip);
    let new = listen_in(&ctr, &target);
    std::thread::spawn(move || {
        for mut s in new.incoming().flatten() {
            let _ = s.write_all(b"new");
        }
    });
    // The first dial goes to the old namespace, where nothing listens any more, and is made
    // again in the new one.
    let c = connect_in(&host, "127.0.0.1:8080").unwrap();
    assert_eq!(first_words(c).unwrap(), "new", "log:\n{}", p.log());
    let want = format!(
        "cannot connect to backend {target}: {}; --target-netns {} now names another network namespace",
        match ip {
            "127.0.0.1" => "Connection refused (os error 111)",
            _ => "Network is unreachable (os error 101)",
        },
        ctr.name
    );
    // The log is written by a thread of its own: the line may come a moment after the answer.
    p.wait_logged(&want);
    let log = p.log();
    assert!(
        log.contains("it was deleted and made again?")
            && log.contains("; dialing this connection again there")
            && !log.contains("resetting the client")
            && log.contains(&format!(
                "--target-netns {}: following the new network namespace",
                ctr.name
            )),
        "{log}"
    );
    // From then on, every connection reaches the new namespace's backend.
    for _ in 0..4 {
        let c = connect_in(&host, "127.0.0.1:8080").unwrap();
        assert_eq!(first_words(c).unwrap(), "new", "log:\n{}", p.log());
    }
    p.stop();
}

on_both_relays!(
    follows_a_target_netns_made_again_fast_path,
    follows_a_target_netns_made_again_tokio_path
    => follows_a_target_netns_made_again("127.0.0.1")
);

on_both_relays!(
    follows_a_target_netns_made_again_without_a_route_there_fast_path,
    follows_a_target_netns_made_again_without_a_route_there_tokio_path
    => follows_a_target_netns_made_again("10.77.0.1")
);

/// What a user meets most: `--target-netns container:web`, then `docker restart web`. The
/// first connection after it is refused in the old namespace, the line says why (the
/// container was restarted), and it is dialed again in the new one: every connection reaches
/// the restarted container.
#[test]
fn follows_a_restarted_container() {
    let d = common::docker::Dockerd::start("pxfdk");
    let web = unique("web");
    // Published on a port of the daemon's namespace that nothing here uses: the proxy dials
    // the container's own loopback.
    d.run_busybox_web(&web, "80");
    let dir = TempDir::new("pxfdk");
    let target = format!("container:{web}");
    let p = start_with(
        None,
        &dir,
        &[
            "--listen-netns",
            &d.ns.name,
            "--target-netns",
            &target,
            "127.0.0.1:8080",
            "127.0.0.1:80",
        ],
        &[("DOCKER_HOST", &d.host()), UNWATCHED],
    );
    let get = || {
        connect_in(&d.ns, "127.0.0.1:8080").and_then(|mut s| {
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            first_words(s)
        })
    };
    assert!(get().unwrap().starts_with("HTTP/1."), "log:\n{}", p.log());
    d.docker(&["restart", "-t", "1", &web]);
    for _ in 0..3 {
        assert!(get().unwrap().starts_with("HTTP/1."), "log:\n{}", p.log());
    }
    let want = format!("--target-netns {target} now names another network namespace (inode ");
    p.wait_logged(&want);
    let log = p.log();
    assert!(
        log.contains(&want)
            && log.contains("the container was restarted?); the proxy dials there from now on; dialing this connection again there"),
        "no '{want}' in:\n{log}"
    );
    p.stop();
}

/// A UDP echo on 127.0.0.1:53 in the namespace of process `pid` (a container's), answering
/// `reply`; its thread ends after 2 s without a datagram, or when `stop` is set, so the
/// namespace is not kept alive by it.
fn udp_echo_in_pid(
    pid: u32,
    reply: &'static [u8],
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let s = NetNs::from_pid(pid)
        .unwrap()
        .run(|| UdpSocket::bind("127.0.0.1:53").unwrap())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut idle = std::time::Instant::now();
        while !stopped.load(std::sync::atomic::Ordering::SeqCst)
            && idle.elapsed() < Duration::from_secs(2)
        {
            if let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(reply, from);
                idle = std::time::Instant::now();
            }
        }
    });
    (stop, t)
}

/// The same with real rootful Podman (netavark), as a user on a Podman host types it:
/// `--target-netns web`, the container's bare name, found through Podman's default socket
/// with no engine variable set. `podman restart` is followed (TCP, and UDP clients that send
/// one datagram per flow); `podman stop` is told with Podman's own command to start it again,
/// not the list of every lookup a bare word went through; `podman start` and `podman rm -f`
/// then a new container of the same name are followed.
#[test]
fn follows_a_restarted_podman_container() {
    if let Some(why) = common::podman::missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut pm = common::podman::PodmanHost::start("pxfpm");
    let httpd = ["httpd", "-f", "-p", "80", "-h", "/"];
    let web = pm.run("web", &[], &httpd);
    let pid_of = |pm: &common::podman::PodmanHost| -> u32 {
        pm.podman(&["inspect", "-f", "{{.State.Pid}}", &web])
            .parse()
            .unwrap()
    };
    let dir = TempDir::new("pxfpm");
    let mut cmd = Command::new(BIN);
    cmd.env_remove("DOCKER_HOST").env_remove("CONTAINER_HOST");
    let p = start_cmd(
        cmd,
        &dir,
        &[
            "--listen-netns",
            &pm.ns.name,
            "--target-netns",
            &web,
            "-p",
            "127.0.0.1:8080=127.0.0.1:80",
            "-p",
            "udp:127.0.0.1:5353=127.0.0.1:53",
        ],
        &[UNWATCHED],
    );
    let get = || {
        connect_in(&pm.ns, "127.0.0.1:8080").and_then(|mut s| {
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            first_words(s)
        })
    };
    let served = || get().is_ok_and(|a| a.starts_with("HTTP/1."));
    // One datagram from a fresh client socket (a new flow), as a resolver sends a query.
    let query = || {
        let c = inside(&pm.ns, || UdpSocket::bind("127.0.0.1:0").unwrap());
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        c.send_to(b"query", "127.0.0.1:5353").unwrap();
        let mut buf = [0u8; 64];
        c.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    };
    assert!(served(), "log:\n{}", p.log());
    // What the bare word became, with the inode a follow line later names.
    let is = format!("--target-netns {web} is container:{web}, network namespace inode ");
    assert!(p.log().contains(&is), "no '{is}' in:\n{}", p.log());
    let (stop, echo) = udp_echo_in_pid(pid_of(&pm), b"old");
    assert_eq!(query().as_deref(), Some(&b"old"[..]), "log:\n{}", p.log());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    echo.join().unwrap();

    pm.podman(&["restart", "-t", "0", &web]);
    let _echo = udp_echo_in_pid(pid_of(&pm), b"new");
    // UDP first: nothing but its own refusals may tell the proxy to follow.
    wait_for("a fresh UDP flow answered in the new namespace", 10, || {
        query().as_deref() == Some(&b"new"[..])
    });
    // httpd may still be starting when `podman restart` returns.
    wait_for("an answer after podman restart", 10, served);
    for _ in 0..3 {
        assert!(served(), "log:\n{}", p.log());
    }
    let log = p.log();
    let want = format!("--target-netns {web} now names another network namespace (inode ");
    assert!(
        log.contains(&format!(
            "--target-netns {web}: following the new network namespace (inode "
        )) && log.contains(&want)
            && log.contains("the container was restarted?); the proxy dials there from now on"),
        "no '{want}' in:\n{log}"
    );

    pm.podman(&["stop", "-t", "0", &web]);
    let want =
        format!("--target-netns {web} names no namespace now: container {web} is exited (code ");
    let fix = format!("): start it with `podman start {web}`; resetting the client");
    wait_for(&format!("'{want}...{fix}' in the log"), 10, || {
        assert!(!served(), "served while stopped; log:\n{}", p.log());
        p.log()
            .lines()
            .any(|l| l.contains(&want) && l.contains(&fix))
    });

    // A proxy started now is refused with the same words (not every guess a bare word went
    // through: a namespace name, a pid, a container).
    let out = common::podman::nettool_plain(&[
        "proxy",
        "--listen-netns",
        &pm.ns.name,
        "--target-netns",
        &web,
        "127.0.0.1:8090",
        "127.0.0.1:80",
    ]);
    let err = common::text(&out);
    assert!(
        out.status.code() == Some(1)
            && err.contains(&format!(
                "--target-netns {web}: container {web} is exited (code "
            ))
            && err.contains(&format!("): start it with `podman start {web}`"))
            && !err.contains("tried:"),
        "{err}"
    );

    pm.podman(&["start", &web]);
    wait_for("an answer after podman start", 10, served);
    pm.podman(&["rm", "-f", "-t", "0", &web]);
    let image = pm.image.clone();
    let mut again = vec!["run", "-d", "--name", &web, &image];
    again.extend_from_slice(&httpd);
    pm.podman(&again);
    wait_for(
        "an answer from a new container of the same name",
        10,
        served,
    );
    p.stop();
}

/// `--listen-netns web` (a Podman container's bare name, found through Podman's default
/// socket) through `podman restart`, `podman stop`/`start` and `podman rm -f` + `podman run` of
/// the same name: the listeners follow each new namespace (Podman's /run/netns/netns-UUID, a new
/// file at each start), TCP and UDP answer inside it, the stopped line gives `podman start`.
/// Before, the proxy kept listening in the first namespace and said nothing.
#[test]
fn follows_a_restarted_podman_container_on_the_listen_side() {
    if let Some(why) = common::podman::missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut pm = common::podman::PodmanHost::start("pxflpm");
    let httpd = ["httpd", "-f", "-p", "80", "-h", "/"];
    let web = pm.run("web", &[], &httpd);
    let ctr = lab("pxflpb");
    hi_and_echo_backends(&ctr, "127.0.0.1:7000", "127.0.0.1:5300");
    let dir = TempDir::new("pxflpm");
    let mut cmd = Command::new(BIN);
    cmd.env_remove("DOCKER_HOST").env_remove("CONTAINER_HOST");
    let p = start_cmd(
        cmd,
        &dir,
        &[
            "--listen-netns",
            &web,
            "--target-netns",
            &ctr.name,
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
            "-p",
            "udp:127.0.0.1:5353=127.0.0.1:5300",
        ],
        &[],
    );
    let ns_of_web = |pm: &common::podman::PodmanHost| {
        let pid = pm.podman(&["inspect", "-f", "{{.State.Pid}}", &web]);
        NetNs::from_pid(pid.trim().parse().unwrap()).unwrap()
    };
    let answers = |ns: &NetNs| answers_in(ns, 8080, 5353);
    assert!(answers(&ns_of_web(&pm)), "log:\n{}", p.log());
    let follow = format!("--listen-netns {web}: listening in the new network namespace (inode ");
    let count = |s: &str| p.log().matches(s).count();

    pm.podman(&["restart", "-t", "0", &web]);
    let ns = ns_of_web(&pm);
    wait_for("the follow line after podman restart", 15, || {
        count(&follow) == 1
    });
    assert!(
        p.log()
            .contains(&format!("{follow}{}; was ", ns.id().inode))
            && p.log().contains(
                ": the container was restarted): tcp 127.0.0.1:8080, udp 127.0.0.1:5353;"
            ),
        "{}",
        p.log()
    );
    wait_for("answers after podman restart", 10, || answers(&ns));

    pm.podman(&["stop", "-t", "0", &web]);
    let stopped = format!("--listen-netns {web}: container {web} is exited (code ");
    let fix = format!("): start it with `podman start {web}`; the proxy listens again");
    wait_for("the stopped line", 15, || {
        p.log()
            .lines()
            .any(|l| l.contains(&stopped) && l.contains(&fix))
    });
    pm.podman(&["start", &web]);
    let ns = ns_of_web(&pm);
    wait_for("the follow line after podman start", 15, || {
        count(&follow) == 2
    });
    wait_for("answers after podman start", 10, || answers(&ns));

    pm.podman(&["rm", "-f", "-t", "0", &web]);
    let image = pm.image.clone();
    let mut again = vec!["run", "-d", "--name", &web, &image];
    again.extend_from_slice(&httpd);
    pm.podman(&again);
    let ns = ns_of_web(&pm);
    wait_for("the follow line after podman rm and run", 40, || {
        count(&follow) == 3
    });
    let log = p.log();
    assert!(
        log.contains(&format!("{follow}{}; was ", ns.id().inode))
            && log.contains(": the container was removed and made again (a new container id)): tcp 127.0.0.1:8080"),
        "{log}"
    );
    wait_for("answers in the container made again", 10, || answers(&ns));
    p.stop();
}

/// On a Podman host a published port is held by conmon (it listens and never accepts): a
/// proxy refused that port names the container that publishes it and how to free it, not only
/// "pid N (conmon)". Before, it said only the pid and "conmon".
#[test]
fn a_port_a_podman_container_publishes_names_the_container() {
    if let Some(why) = common::podman::missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut pm = common::podman::PodmanHost::start("pxcmn");
    let web = pm.run(
        "web",
        &["-p", "18093:80"],
        &["httpd", "-f", "-p", "80", "-h", "/"],
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pm.ns.name,
            BIN,
            "proxy",
            "18093",
            "127.0.0.1:80",
        ])
        .output()
        .unwrap();
    let err = common::text(&out);
    let want = "cannot listen on tcp 0.0.0.0:18093 in namespace current: Address already in use (os error 98) (held by pid ";
    let names = format!(
        " (conmon), Podman's monitor of container {web}, which publishes this port: pick another port, or stop the container (`podman stop {web}`))"
    );
    assert!(
        out.status.code() == Some(1) && err.contains(want) && err.contains(&names),
        "{err}"
    );
}

/// A stand-in for dockerd's API on a unix socket: it knows one running container, `web`, whose
/// namespace is `pid`'s (the process `pid` holds, which a test may change: a restart), until
/// `wedged` is set; from then on it reads each request and never answers, keeping the
/// connection (a daemon stuck behind a lock, as a wedged dockerd is). `slow`, when set, is
/// taken by the next request, answered after that long (a busy daemon); `slow_answered`
/// counts those answers.
struct WedgedApi {
    wedged: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: std::sync::Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
    pid: std::sync::Arc<std::sync::atomic::AtomicU32>,
    slow: std::sync::Arc<std::sync::Mutex<Option<Duration>>>,
    slow_answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl WedgedApi {
    fn start(path: &Path, pid: u32) -> WedgedApi {
        use std::sync::atomic::Ordering;
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        let api = WedgedApi {
            wedged: Default::default(),
            held: Default::default(),
            pid: std::sync::Arc::new(pid.into()),
            slow: Default::default(),
            slow_answered: Default::default(),
        };
        let (wedged, held) = (api.wedged.clone(), api.held.clone());
        let (pid_now, slow, slow_answered) =
            (api.pid.clone(), api.slow.clone(), api.slow_answered.clone());
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if wedged.load(Ordering::SeqCst) {
                    held.lock().unwrap().push(s);
                    continue;
                }
                let delay = slow.lock().unwrap().take();
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                let pid = pid_now.load(Ordering::SeqCst);
                let line = String::from_utf8_lossy(&req);
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let body = if path.starts_with("/version") {
                    r#"{"Version":"20.10.24","ApiVersion":"1.41","Components":[{"Name":"Engine"}]}"#
                        .to_string()
                } else if path.starts_with("/containers/json") {
                    r#"[{"Id":"abc123","Names":["/web"]}]"#.to_string()
                } else if path.starts_with("/containers/") {
                    format!(
                        r#"{{"Id":"abc123","Name":"/web","State":{{"Status":"running","Running":true,"Pid":{pid},"ExitCode":0}},"NetworkSettings":{{"Networks":{{}},"Ports":{{}}}},"HostConfig":{{"NetworkMode":"bridge"}},"Config":{{}}}}"#
                    )
                } else {
                    "[]".to_string()
                };
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if delay.is_some() {
                    slow_answered.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        api
    }
}

/// A process in `ns` for a stand-in API to name as a container's.
fn sleeper_in(ns: &TestNs) -> ChildGuard {
    ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "600"])
            .spawn()
            .unwrap(),
    )
}

/// A proxy with one loop thread, listening in `host` and dialing in `container:web`, which
/// the stand-in API on `sock` names: 127.0.0.1:8080 to 7000, 8081 to 7001.
fn start_on_stand_in_api(host: &TestNs, dir: &TempDir, sock: &Path) -> Proxy {
    let docker_host = format!("unix://{}", sock.display());
    start_with(
        None,
        dir,
        &[
            "--threads",
            "1",
            "--listen-netns",
            &host.name,
            "--target-netns",
            "container:web",
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
            "-p",
            "127.0.0.1:8081=127.0.0.1:7001",
        ],
        // CONTAINER_HOST names the same socket (one endpoint): the machine's Podman is not asked,
        // so a podman container that another test named `web` cannot make the name ambiguous.
        // The namespace watch off: its first look (which learns the container's id) would
        // race the refused dials' lookups, the ones these tests are about.
        &[
            ("DOCKER_HOST", &docker_host),
            ("CONTAINER_HOST", &docker_host),
            UNWATCHED,
        ],
    )
}

/// A failed dial makes the proxy look --target-netns up again, and a container's lookup asks
/// the engine's API, which waits up to 10 s for a daemon that does not answer. The event loop
/// thread that asked must not stop serving for that long: with one loop thread, a connection
/// to a backend that is there is answered while the lookup is still waiting on the wedged API
/// (the API still holds the lookup's connection open). Before, the thread did the lookup
/// itself and answered nobody until the API's timeout ended it.
#[test]
fn a_wedged_engine_api_does_not_hold_the_event_loop() {
    let host = lab("pxwh");
    let ctr = lab("pxwc");
    let dir = TempDir::new("pxw");
    // The "container": a process in ctr, which the stand-in API names as web's.
    let sleeper = sleeper_in(&ctr);
    let sock = dir.join("docker.sock");
    let api = WedgedApi::start(&sock, sleeper.pid());
    let good = listen_in(&ctr, "127.0.0.1:7000");
    std::thread::spawn(move || {
        for mut s in good.incoming().flatten() {
            let _ = s.write_all(b"ok");
        }
    });
    let p = start_on_stand_in_api(&host, &dir, &sock);
    assert_eq!(
        first_words(connect_in(&host, "127.0.0.1:8080").unwrap()).unwrap(),
        "ok"
    );
    api.wedged.store(true, std::sync::atomic::Ordering::SeqCst);
    // Nothing listens on 7001: the dial is refused and the lookup asks the wedged API.
    let refused = connect_in(&host, "127.0.0.1:8081").unwrap();
    wait_for("the lookup's request held by the wedged API", 10, || {
        !api.held.lock().unwrap().is_empty()
    });
    let mut c = connect_in(&host, "127.0.0.1:8080").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = String::new();
    let _ = c.read_to_string(&mut got);
    // Still waiting: the lookup's connection to the API is open (no EOF, no error).
    let held = api.held.lock().unwrap();
    held[0].set_nonblocking(true).unwrap();
    let still_open = matches!(
        (&held[0]).read(&mut [0u8; 1]),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    assert!(
        got == "ok" && still_open,
        "answer {got:?} while the lookup still waited on the API: {still_open}; log:\n{}",
        p.log()
    );
    drop(held);
    // The refused client was reset all the same.
    assert!(first_words(refused).is_err(), "log:\n{}", p.log());
    p.stop();
}

/// A refused dial makes the proxy look --target-netns up again, and a container's lookup asks
/// the engine's API, which a busy dockerd answers in seconds. The event loop thread goes on
/// serving its other connections meanwhile, and writes the refused dial's line when the
/// verdict is in (or with the last one after half a second). With one loop thread, an
/// established connection exchanges a byte every 10 ms throughout: its longest round trip
/// stays well under the half second the loop thread used to wait for the lookup, stalling
/// every connection it served (before: >= 500 ms here). Then a refused dial whose lookup
/// (100 ms) finds the container restarted: its line carries that verdict, and the
/// connection is dialed again in the new namespace.
#[test]
fn a_slow_engine_api_does_not_stall_the_other_connections_of_the_loop() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let host = lab("pxsh");
    let ctr = lab("pxsc");
    let ctr2 = lab("pxsn");
    let dir = TempDir::new("pxs");
    // The container's process before and after its "restart".
    let (before, after) = (sleeper_in(&ctr), sleeper_in(&ctr2));
    let sock = dir.join("docker.sock");
    let api = WedgedApi::start(&sock, before.pid());
    echo_backend(listen_in(&ctr, "127.0.0.1:7000"));
    let restarted = listen_in(&ctr2, "127.0.0.1:7001");
    std::thread::spawn(move || {
        for mut s in restarted.incoming().flatten() {
            let _ = s.write_all(b"new");
        }
    });
    let p = start_on_stand_in_api(&host, &dir, &sock);
    let mut c = connect_in(&host, "127.0.0.1:8080").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let pinger = std::thread::spawn(move || {
        let (mut longest, mut trips, mut b) = (Duration::ZERO, 0u32, [0u8; 1]);
        while !stopped.load(Ordering::SeqCst) {
            let t = Instant::now();
            c.write_all(b"x").unwrap();
            c.read_exact(&mut b).unwrap();
            longest = longest.max(t.elapsed());
            trips += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        (longest, trips)
    });
    // A lookup that takes 2 s: no verdict within the half second, the line says the refusal
    // alone and the client is reset.
    *api.slow.lock().unwrap() = Some(Duration::from_secs(2));
    let refused = connect_in(&host, "127.0.0.1:8081").unwrap();
    p.wait_logged(
        "cannot connect to backend 127.0.0.1:7001: Connection refused (os error 111); resetting the client",
    );
    assert!(first_words(refused).is_err(), "log:\n{}", p.log());
    wait_for("the slow answer", 10, || {
        api.slow_answered.load(Ordering::SeqCst) == 1
    });
    // That verdict stands a second; the next refused dial's lookup finds `web` restarted.
    std::thread::sleep(Duration::from_millis(1500));
    api.pid.store(after.pid(), Ordering::SeqCst);
    *api.slow.lock().unwrap() = Some(Duration::from_millis(100));
    let moved = connect_in(&host, "127.0.0.1:8081").unwrap();
    assert_eq!(first_words(moved).unwrap(), "new", "log:\n{}", p.log());
    p.wait_logged("cannot connect to backend 127.0.0.1:7001: Connection refused (os error 111); --target-netns container:web now names another network namespace (inode ");
    let log = p.log();
    assert!(
        log.contains("; the proxy dials there from now on; dialing this connection again there")
            && log.matches("resetting the client").count() == 1,
        "{log}"
    );
    stop.store(true, Ordering::SeqCst);
    let (longest, trips) = pinger.join().unwrap();
    eprintln!("longest round trip {longest:?} over {trips} while the lookups ran");
    // A stall, not a speed: a round trip is well under a millisecond here; the lookup used to
    // hold the loop for 500 ms.
    assert!(
        longest < Duration::from_millis(250) && trips > 50,
        "longest round trip {longest:?} over {trips} while the lookups ran; log:\n{log}"
    );
    p.stop();
}

/// The same for a UDP flow: the old namespace refuses its datagrams (port unreachable) or has
/// no route for them (`ip` other than 127.0.0.1, taken off the old namespace), the warn line
/// says why, the flow ends and the client's next datagram reaches the new backend.
fn a_udp_flow_follows_a_target_netns_made_again(ip: &str) {
    let host = lab("pxfuh");
    let ctr = lab("pxfuc");
    let dir = TempDir::new("pxfu");
    backend_ip(&ctr, "add", ip);
    let target: SocketAddr = format!("{ip}:5300").parse().unwrap();
    let old = inside(&ctr, || UdpSocket::bind(target).unwrap());
    let p = start_with(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &ctr.name,
            "-p",
            &format!("udp:127.0.0.1:5353={target}"),
        ],
        &[UNWATCHED],
    );
    let client = inside(&host, || UdpSocket::bind("127.0.0.1:0").unwrap());
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(b"one", "127.0.0.1:5353").unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = old.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"one");
    old.send_to(b"old", from).unwrap();
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"old");
    drop(old);
    remake_named_without(&ctr, ip);
    let new = inside(&ctr, || UdpSocket::bind(target).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = new.recv_from(&mut buf) {
            let _ = new.send_to(b"new", from);
        }
    });
    if ip != "127.0.0.1" {
        // A new client first: its flow's socket cannot even connect in the old namespace (no
        // route), and is opened again in the new one.
        let other = inside(&host, || UdpSocket::bind("127.0.0.1:0").unwrap());
        other
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        wait_for("the new client's reply from the new backend", 20, || {
            other.send_to(b"first", "127.0.0.1:5353").unwrap();
            matches!(other.recv(&mut buf), Ok(n) if &buf[..n] == b"new")
        });
        wait_for("the line for a flow opened again", 10, || {
            p.log().contains(&format!(
                "cannot open a backend socket to {target}: Network is unreachable (os error 101); --target-netns {} now names another network namespace",
                ctr.name
            )) && p.log().contains("; opening it again there")
        });
    }
    // The same client (the same flow): refused in the old namespace until the flow ends.
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    wait_for("a reply from the new namespace's backend", 20, || {
        client.send_to(b"two", "127.0.0.1:5353").unwrap();
        matches!(client.recv(&mut buf), Ok(n) if &buf[..n] == b"new")
    });
    // The old flow's line (for the other address the new client's check told it already:
    // the flow's own check may come over a second later and find nothing left to say).
    if ip == "127.0.0.1" {
        let want = format!(
            "datagrams to backend {target}: Connection refused (os error 111); --target-netns {} now names another network namespace",
            ctr.name
        );
        p.wait_logged(&want);
    }
    p.stop();
}

#[test]
fn a_udp_flow_follows_a_target_netns_made_again_refused() {
    a_udp_flow_follows_a_target_netns_made_again("127.0.0.1");
}

#[test]
fn a_udp_flow_follows_a_target_netns_made_again_without_a_route_there() {
    a_udp_flow_follows_a_target_netns_made_again("10.77.0.1");
}

/// A client that sends one datagram per flow (a DNS resolver takes a new source port per
/// query): after the namespace is made again, each fresh flow is opened in the old one and its
/// only datagram refused there (ICMP port unreachable). No second datagram ever takes that
/// error, so the refusal must wake the flow: the line says why, the proxy follows, and a later
/// fresh flow is answered by the new backend. Before, nothing noticed: every such client was
/// refused in silence for as long as the proxy ran.
#[test]
fn a_one_datagram_udp_flow_follows_a_target_netns_made_again() {
    let host = lab("pxf1h");
    let ctr = lab("pxf1c");
    let dir = TempDir::new("pxf1");
    let p = start_with(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &ctr.name,
            "-p",
            "udp:127.0.0.1:5353=127.0.0.1:5300",
        ],
        &[UNWATCHED],
    );
    // A fresh client socket (a new flow) per query; its answer, if one comes.
    let fresh = || {
        let c = inside(&host, || UdpSocket::bind("127.0.0.1:0").unwrap());
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        c.send_to(b"query", "127.0.0.1:5353").unwrap();
        c
    };
    let answer = |c: &UdpSocket| {
        let mut buf = [0u8; 64];
        c.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    };
    let old = inside(&ctr, || UdpSocket::bind("127.0.0.1:5300").unwrap());
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let c = fresh();
    let mut buf = [0u8; 64];
    let (_, from) = old.recv_from(&mut buf).unwrap();
    old.send_to(b"old", from).unwrap();
    assert_eq!(
        answer(&c).as_deref(),
        Some(&b"old"[..]),
        "log:\n{}",
        p.log()
    );
    drop(old);
    remake_named(&ctr);
    let new = inside(&ctr, || UdpSocket::bind("127.0.0.1:5300").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = new.recv_from(&mut buf) {
            let _ = new.send_to(b"new", from);
        }
    });
    wait_for(
        "a fresh flow answered by the new namespace's backend",
        20,
        || answer(&fresh()).as_deref() == Some(&b"new"[..]),
    );
    let want = format!(
        "datagrams to backend 127.0.0.1:5300: Connection refused (os error 111); --target-netns {} now names another network namespace",
        ctr.name
    );
    assert!(p.log().contains(&want), "no '{want}' in:\n{}", p.log());
    p.stop();
}

/// A TCP answer "hi" and a UDP echo, each of its own thread, in `ns`: the backends the
/// follow tests reach through the proxy.
fn hi_and_echo_backends(ns: &TestNs, tcp: &str, udp: &str) {
    let l = listen_in(ns, tcp);
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"hi");
        }
    });
    let a: SocketAddr = udp.parse().unwrap();
    let u = inside(ns, move || UdpSocket::bind(a).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&buf[..n], from);
        }
    });
}

/// Whether the proxy at 127.0.0.1:`tcp` and 127.0.0.1:`udp` in `ns` answers, over TCP ("hi")
/// and UDP (an echo, from a fresh client socket), now.
fn answers_in(ns: &NetNs, tcp: u16, udp: u16) -> bool {
    let tcp_ok = ns
        .run(|| {
            let a: SocketAddr = format!("127.0.0.1:{tcp}").parse().unwrap();
            TcpStream::connect_timeout(&a, Duration::from_secs(5))
        })
        .unwrap()
        .and_then(first_words)
        .is_ok_and(|w| w == "hi");
    let c = ns.run(|| UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let _ = c.send_to(b"ping", format!("127.0.0.1:{udp}"));
    let mut buf = [0u8; 64];
    let udp_ok = matches!(c.recv(&mut buf), Ok(n) if &buf[..n] == b"ping");
    tcp_ok && udp_ok
}

/// --listen-netns NAME, deleted and made again while the proxy runs (what a restarted
/// container is to a proxy that listens in it): the proxy says the name names nothing while it
/// is gone, then binds its listen addresses in the new namespace (retrying until lo is up
/// there), closes the old listeners and says so; TCP and UDP answer in the new namespace.
/// Before, the proxy went on listening in the old namespace, which nothing could reach, and
/// said nothing.
fn follows_a_listen_netns_made_again(relay: Relay) {
    let host = lab("pxflh");
    let ctr = lab("pxflc");
    let dir = TempDir::new("pxfl");
    hi_and_echo_backends(&ctr, "127.0.0.1:7000", "127.0.0.1:5300");
    let p = relay.start(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &ctr.name,
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
            "-p",
            "udp:127.0.0.1:5353=127.0.0.1:5300",
        ],
    );
    assert!(answers_in(&netns(&host), 8080, 5353), "log:\n{}", p.log());
    let old_ns = netns(&host);
    let old = old_ns.id().inode;
    common::sh(&["ip", "netns", "del", &host.name]);
    p.wait_logged(&format!(
        "--listen-netns {} names no namespace now: cannot open network namespace /run/netns/{}: No such file or directory (os error 2); the proxy listens there again when it names one (its listeners stay in the old one, inode {old}, until then)",
        host.name, host.name
    ));
    // Made again; lo comes up a moment later, as a container's eth0 does.
    common::sh(&["ip", "netns", "add", &host.name]);
    std::thread::sleep(Duration::from_millis(100));
    host.ip(&["link", "set", "lo", "up"]);
    let new = netns(&host).id().inode;
    let want = format!(
        "--listen-netns {}: listening in the new network namespace (inode {new}; was {old}: it was deleted and made again?): tcp 127.0.0.1:8080, udp 127.0.0.1:5353; the old listeners are closed, connections open through them stay as they are",
        host.name
    );
    p.wait_logged(&want);
    wait_for("answers in the new namespace", 10, || {
        answers_in(&netns(&host), 8080, 5353)
    });
    // The old TCP listener is closed: the old namespace (held here) refuses the port now.
    wait_for("the old namespace's listener closed", 5, || {
        old_ns
            .run(|| TcpStream::connect("127.0.0.1:8080"))
            .unwrap()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    p.stop();
}

on_both_relays!(
    follows_a_listen_netns_made_again_fast_path,
    follows_a_listen_netns_made_again_tokio_path
    => follows_a_listen_netns_made_again()
);

/// Reject (`op` -A) or stop rejecting (-D) UDP to `port` in `ns` with an ICMP error that is
/// not "unreachable" to the proxy: IPv4's protocol unreachable (the socket's error is
/// ENOPROTOOPT), IPv6's administratively prohibited (EACCES).
fn reject_udp_but_not_as_unreachable(ns: &TestNs, port: u16, op: &str) {
    let port = port.to_string();
    for (cmd, with) in [
        ("iptables", "icmp-proto-unreachable"),
        ("ip6tables", "icmp6-adm-prohibited"),
    ] {
        common::sh(&[
            "ip",
            "netns",
            "exec",
            &ns.name,
            cmd,
            op,
            "INPUT",
            "-p",
            "udp",
            "--dport",
            &port,
            "-j",
            "REJECT",
            "--reject-with",
            with,
        ]);
    }
}

/// A UDP backend socket's error other than "unreachable" (a firewall's reject: ENOPROTOOPT,
/// EACCES) is said once per flow, with the flow's addresses and the error, and the flow goes
/// on: once the rule is gone its next datagram is answered, on the same flow. With
/// --target-netns the error woke the flow, which cleared it (SO_ERROR) and said nothing;
/// without, it woke nothing and the flow's next send took it (that datagram lost), said at -v
/// only.
fn says_a_udp_backend_error_other_than_unreachable_once(follow: bool) {
    let host = lab("pxuerh");
    let ctr = lab("pxuerc");
    let dir = TempDir::new("pxuer");
    let maps = [
        "-v",
        "-p",
        "udp:127.0.0.1:5353=127.0.0.1:5300",
        "-p",
        "udp:[::1]:5353=[::1]:5300",
    ];
    let (p, backend_ns) = if follow {
        let mut args = vec!["--listen-netns", &host.name, "--target-netns", &ctr.name];
        args.extend(maps);
        (start(None, &dir, &args), &ctr)
    } else {
        (start(Some(&host), &dir, &maps), &host)
    };
    reject_udp_but_not_as_unreachable(backend_ns, 5300, "-A");
    for a in ["127.0.0.1:5300", "[::1]:5300"] {
        let b = inside(backend_ns, || UdpSocket::bind(a).unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = b.recv_from(&mut buf) {
                let _ = b.send_to(&buf[..n], from);
            }
        });
    }
    let mut clients = Vec::new();
    for (listen, backend, error) in [
        (
            "127.0.0.1:5353",
            "127.0.0.1:5300",
            "Protocol not available (os error 92)",
        ),
        (
            "[::1]:5353",
            "[::1]:5300",
            "Permission denied (os error 13)",
        ),
    ] {
        let any = if listen.starts_with('[') {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let c = inside(&host, || UdpSocket::bind(any).unwrap());
        c.connect(listen).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let client = c.local_addr().unwrap();
        let said = format!("datagrams to backend {backend}: {error}");
        // Three rejected datagrams, each sent once the last one's error was taken.
        for k in 1..=3 {
            c.send(b"rejected").unwrap();
            wait_for(
                &format!("error {k} of {client}'s flow in the log"),
                10,
                || p.log().matches(&said).count() >= k,
            );
        }
        let log = p.log();
        let warn = format!("udp {client} -> {listen}: {said}; the flow goes on");
        assert_eq!(
            log.matches(&warn).count(),
            1,
            "'{warn}' not said once:\n{log}"
        );
        assert_eq!(log.matches(&said).count(), 3, "{log}");
        clients.push(c);
    }
    reject_udp_but_not_as_unreachable(backend_ns, 5300, "-D");
    // The same flows carry the next datagrams, and the answers come back.
    let flows = p.log().matches(" udp flow ").count();
    for c in &clients {
        c.send(b"passes").unwrap();
        let mut buf = [0u8; 64];
        let n = c.recv(&mut buf).unwrap_or(0);
        assert_eq!(&buf[..n], b"passes", "log:\n{}", p.log());
    }
    assert_eq!(p.log().matches(" udp flow ").count(), flows, "{}", p.log());
    let log = p.stop();
    assert!(
        log.contains(" errors=6 "),
        "3 errors of each flow not counted:\n{log}"
    );
}

#[test]
fn a_udp_backend_error_other_than_unreachable_is_said_once_per_flow() {
    says_a_udp_backend_error_other_than_unreachable_once(false);
}

#[test]
fn a_udp_backend_error_other_than_unreachable_is_said_once_per_flow_with_target_netns() {
    says_a_udp_backend_error_other_than_unreachable_once(true);
}

/// EMSGSIZE from a path MTU change, for real: the backend is behind a router whose link to it
/// has an MTU of 1280. The proxy's first 1400-byte datagram (DF set, the kernel's default for
/// UDP) dies at the router, whose ICMP "fragmentation needed" puts EMSGSIZE on the flow's
/// socket: said once, with the flow's addresses. The kernel has learnt the path's MTU, so the
/// flow's next datagram of that size leaves in fragments and is answered, on the same flow.
/// Before, that error woke nothing and the next datagram's send took it (lost, said with -v).
#[test]
fn a_udp_flow_says_a_path_mtu_change_and_goes_on() {
    let px = lab("pxmtu");
    let router = TestNs::new("pxmtur");
    let be = TestNs::new("pxmtub");
    common::veth("eth0", &px, "eth0", &router);
    common::veth("eth1", &router, "eth0", &be);
    px.ip(&["addr", "add", "10.77.0.1/24", "dev", "eth0"]);
    router.ip(&["addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    router.ip(&["addr", "add", "10.77.1.1/24", "dev", "eth1"]);
    router.ip(&["link", "set", "eth1", "mtu", "1280"]);
    be.ip(&["addr", "add", "10.77.1.2/24", "dev", "eth0"]);
    be.ip(&["link", "set", "eth0", "mtu", "1280"]);
    px.ip(&["route", "add", "10.77.1.0/24", "via", "10.77.0.2"]);
    be.ip(&["route", "add", "default", "via", "10.77.1.1"]);
    common::sh(&[
        "ip",
        "netns",
        "exec",
        &router.name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let backend = inside(&be, || UdpSocket::bind("10.77.1.2:5300").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..n], from);
        }
    });
    let dir = TempDir::new("pxmtu");
    let p = start(
        Some(&px),
        &dir,
        &["-p", "udp:127.0.0.1:5353=10.77.1.2:5300"],
    );
    let c = inside(&px, || UdpSocket::bind("127.0.0.1:0").unwrap());
    c.connect("127.0.0.1:5353").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = vec![b'x'; 1400];
    c.send(&big).unwrap();
    let client = c.local_addr().unwrap();
    p.wait_logged(&format!(
        "udp {client} -> 127.0.0.1:5353: datagrams to backend 10.77.1.2:5300: Message too long (os error 90); the flow goes on"
    ));
    c.send(&big).unwrap();
    let mut buf = [0u8; 2048];
    let n = c.recv(&mut buf).unwrap_or(0);
    assert_eq!(n, 1400, "the same size again, answered; log:\n{}", p.log());
    let log = p.stop();
    assert!(log.contains(" connections=1 "), "one flow: {log}");
}

/// --target-netns NAME made again is followed without a client: the info line comes by itself
/// (the watch thread notices the namespace's file is another one), and the first connection
/// after it reaches the new namespace's backend with no failed dial. Before, only a failed
/// dial made the proxy look.
#[test]
fn follows_a_target_netns_made_again_before_any_dial_fails() {
    let host = lab("pxftw");
    let ctr = lab("pxftc");
    let dir = TempDir::new("pxft");
    let p = start(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &ctr.name,
            "127.0.0.1:8080",
            "127.0.0.1:7000",
        ],
    );
    let was = netns(&ctr).id().inode;
    remake_named(&ctr);
    let now = netns(&ctr).id().inode;
    p.wait_logged(&format!(
        "--target-netns {}: following the new network namespace (inode {now}; was {was}: it was deleted and made again?); connections open in the old one stay as they are",
        ctr.name
    ));
    let l = listen_in(&ctr, "127.0.0.1:7000");
    says_hi_through(&host, "127.0.0.1:8080", &l);
    assert!(!p.log().contains("cannot connect"), "{}", p.log());
    p.stop();
}

/// An interface `dev` in `ns` with the link-local address fe80::7 (after a pair of others
/// when `pad`, so its index differs from a namespace without them), and a backend saying "hi"
/// on [fe80::7%dev]:7000.
fn link_local_hi_backend(ns: &TestNs, dev: &str, pad: bool) {
    let a = SocketAddr::V6(std::net::SocketAddrV6::new(
        "fe80::7".parse().unwrap(),
        7000,
        0,
        link_local_dev(ns, dev, "fe80::7", pad),
    ));
    let l = inside(ns, move || TcpListener::bind(a).unwrap());
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"hi");
        }
    });
}

/// A link-local target (`[fe80::7%dev]:7000`) behind --target-netns NAME made again: the
/// interface has another index in the new namespace, and the proxy looks it up there by its
/// name. Before, it dialed the index from the start, another interface there, and every
/// connection failed.
fn follows_a_link_local_target_into_a_namespace_made_again(relay: Relay) {
    let host = lab("pxllh");
    let ctr = TestNs::new("pxllt");
    let dev = common::unique_ifname("ll");
    link_local_hi_backend(&ctr, &dev, false);
    let dir = TempDir::new("pxllf");
    let target = format!("[fe80::7%{dev}]:7000");
    let p = relay.start(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &ctr.name,
            "127.0.0.1:8080",
            &target,
        ],
    );
    let hi = || {
        connect_in(&host, "127.0.0.1:8080")
            .and_then(first_words)
            .is_ok_and(|w| w == "hi")
    };
    assert!(hi(), "log:\n{}", p.log());
    let was = ifindex_in(&ctr, &dev);
    remake_named(&ctr);
    link_local_hi_backend(&ctr, &dev, true);
    assert_ne!(was, ifindex_in(&ctr, &dev));
    p.wait_logged(&format!(
        "--target-netns {}: following the new network namespace",
        ctr.name
    ));
    wait_for("hi from the new namespace's link-local backend", 10, hi);
    p.stop();
}

on_both_relays!(
    follows_a_link_local_target_into_a_namespace_made_again_fast_path,
    follows_a_link_local_target_into_a_namespace_made_again_tokio_path
    => follows_a_link_local_target_into_a_namespace_made_again()
);

/// An interface `dev` (a veth pair's end) in `ns` with the link-local address `addr`, after
/// a pair of others when `pad` (so its index differs from a namespace without them); its index.
fn link_local_dev(ns: &TestNs, dev: &str, addr: &str, pad: bool) -> u32 {
    // veth pairs inside the namespace (no dummy module on these machines).
    if pad {
        ns.ip(&[
            "link", "add", "pad0", "type", "veth", "peer", "name", "pad1",
        ]);
    }
    let peer = format!("{dev}p");
    ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{addr}/64"),
        "dev",
        dev,
        "nodad",
    ]);
    ns.ip(&["link", "set", &peer, "up"]);
    ns.ip(&["link", "set", dev, "up"]);
    ifindex_in(ns, dev)
}

/// --listen-netns NAME made again without the listen address (a container whose address
/// comes late, or never): the proxy tries a few times, then says why it cannot listen there
/// and goes on trying less often; once the address is there it listens again. Before, it never
/// listened in the new namespace at all.
#[test]
fn a_listen_netns_made_again_without_the_listen_address_is_told_and_retried() {
    let host = lab("pxfnah");
    let ctr = lab("pxfnac");
    hi_and_echo_backends(&ctr, "127.0.0.1:7000", "127.0.0.1:5300");
    let dir = TempDir::new("pxfna");
    let p = start(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &ctr.name,
            "-p",
            "10.9.0.1:8080=127.0.0.1:7000",
        ],
    );
    remake_named(&host);
    let cannot = format!(
        "--listen-netns {}: cannot listen in its new network namespace (inode {}) after 5 tries: cannot listen on tcp 10.9.0.1:8080 in namespace {}: Cannot assign requested address (os error 99) (that address is not configured on any interface in the namespace); trying again later",
        host.name,
        netns(&host).id().inode,
        host.name
    );
    // One look a second, then five binds over about 4 s: well within 30 s, even while
    // the whole suite loads the machine (10 s was not, once, in CI).
    p.wait_logged_within(&cannot, 30);
    host.ip(&["addr", "add", "10.9.0.1/32", "dev", "lo"]);
    p.wait_logged_within(
        &format!(
            "--listen-netns {}: listening in the new network namespace (inode ",
            host.name
        ),
        30,
    );
    let hi = connect_in(&host, "10.9.0.1:8080").and_then(first_words);
    assert_eq!(hi.ok().as_deref(), Some("hi"), "log:\n{}", p.log());
    assert_eq!(p.log().matches(&cannot).count(), 1, "{}", p.log());
    p.stop();
}

/// A link-local listen address (`[fe80::b%dev]:8080`) behind --listen-netns NAME made again:
/// the interface has another index in the new namespace, and the proxy binds there through
/// the interface of that name. Before, it tried the index from the start, another interface
/// there, and never listened again.
#[test]
fn follows_a_listen_netns_made_again_with_a_link_local_listen_address() {
    let host = TestNs::new("pxfllh");
    let ctr = lab("pxfllc");
    let dev = common::unique_ifname("lh");
    link_local_dev(&host, &dev, "fe80::b", false);
    hi_and_echo_backends(&ctr, "127.0.0.1:7000", "127.0.0.1:5300");
    let dir = TempDir::new("pxfll");
    let p = start(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &ctr.name,
            "-p",
            &format!("[fe80::b%{dev}]:8080=127.0.0.1:7000"),
        ],
    );
    let hi = |index: u32| {
        let to = SocketAddr::V6(std::net::SocketAddrV6::new(
            "fe80::b".parse().unwrap(),
            8080,
            0,
            index,
        ));
        inside(&host, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })
        .and_then(first_words)
        .is_ok_and(|w| w == "hi")
    };
    assert!(hi(ifindex_in(&host, &dev)), "log:\n{}", p.log());
    remake_named(&host);
    let now = link_local_dev(&host, &dev, "fe80::b", true);
    p.wait_logged(&format!(
        "--listen-netns {}: listening in the new network namespace (inode ",
        host.name
    ));
    assert!(
        p.log().contains(&format!("tcp [fe80::b%{now}]:8080;")),
        "{}",
        p.log()
    );
    wait_for(
        "hi through the new namespace's link-local listener",
        10,
        || hi(now),
    );
    p.stop();
}

/// `--listen-netns container:NAME` with real dockerd: after `docker restart` the proxy listens
/// in the container's new namespace and says the container was restarted; while it is stopped
/// it says so once, with Docker's command to start it, and listens again after `docker start`;
/// after `docker rm -f` and `docker run` of the same name it says the container was removed
/// and made again. TCP and UDP answer inside the container's namespace each time. Before, the
/// proxy kept listening in the first namespace, which nothing could reach, and said nothing.
#[test]
fn follows_a_restarted_container_on_the_listen_side() {
    let d = common::docker::Dockerd::start("pxfld");
    let web = unique("web");
    d.run_busybox_web(&web, "80");
    let ctr = lab("pxfldb");
    hi_and_echo_backends(&ctr, "127.0.0.1:7000", "127.0.0.1:5300");
    let dir = TempDir::new("pxfld");
    let listen = format!("container:{web}");
    let p = start_with(
        None,
        &dir,
        &[
            "--listen-netns",
            &listen,
            "--target-netns",
            &ctr.name,
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
            "-p",
            "udp:127.0.0.1:5353=127.0.0.1:5300",
        ],
        &[("DOCKER_HOST", &d.host())],
    );
    // And one that dials into the container: it follows each new namespace without a client.
    let to_web = start_with(
        None,
        &dir,
        &[
            "--listen-netns",
            &ctr.name,
            "--target-netns",
            &listen,
            "127.0.0.1:8081",
            "127.0.0.1:80",
        ],
        &[("DOCKER_HOST", &d.host())],
    );
    let ns_of_web = || {
        let pid = d.docker(&["inspect", "-f", "{{.State.Pid}}", &web]);
        NetNs::from_pid(pid.trim().parse().unwrap()).unwrap()
    };
    let answers = |ns: &NetNs| answers_in(ns, 8080, 5353);
    assert!(answers(&ns_of_web()), "log:\n{}", p.log());
    let follow = format!("--listen-netns {listen}: listening in the new network namespace (inode ");
    let count = |s: &str| p.log().matches(s).count();

    d.docker(&["restart", "-t", "1", &web]);
    let ns = ns_of_web();
    wait_for("the follow line after docker restart", 15, || {
        count(&follow) == 1
    });
    let line = format!("{follow}{}; was ", ns.id().inode);
    assert!(
        p.log().contains(&line)
            && p.log().contains(": the container was restarted): tcp 127.0.0.1:8080, udp 127.0.0.1:5353; the old listeners are closed"),
        "no '{line}... the container was restarted' in:\n{}",
        p.log()
    );
    wait_for("answers after docker restart", 10, || answers(&ns));
    let dials = format!(
        "--target-netns {listen}: following the new network namespace (inode {}; was ",
        ns.id().inode
    );
    to_web.wait_logged(&dials);
    assert!(
        to_web.log().contains(
            ": the container was restarted); connections open in the old one stay as they are"
        ),
        "{}",
        to_web.log()
    );

    d.docker(&["stop", "-t", "1", &web]);
    let stopped = format!("--listen-netns {listen}: container {web} is exited (code ");
    let fix = format!(
        "): start it with `docker start {web}`; the proxy listens again in its new network namespace when it starts"
    );
    p.wait_said_once(&stopped, &fix);
    d.docker(&["start", &web]);
    let ns = ns_of_web();
    wait_for("the follow line after docker start", 15, || {
        count(&follow) == 2
    });
    wait_for("answers after docker start", 10, || answers(&ns));

    d.docker(&["rm", "-f", &web]);
    d.run_busybox_web(&web, "80");
    let ns = ns_of_web();
    wait_for("the follow line after docker rm and run", 40, || {
        count(&follow) == 3
    });
    let log = p.log();
    assert!(
        log.contains(&format!("{follow}{}; was ", ns.id().inode))
            && log.contains(": the container was removed and made again (a new container id)): tcp 127.0.0.1:8080"),
        "{log}"
    );
    wait_for("answers in the container made again", 10, || answers(&ns));
    let dials = format!(
        "--target-netns {listen}: following the new network namespace (inode {}; was ",
        ns.id().inode
    );
    to_web.wait_logged(&dials);
    let log = to_web.log();
    assert!(
        log.contains(
            "the container was removed and made again (a new container id)); connections open"
        ) && !log.contains("cannot connect"),
        "{log}"
    );
    // Reached without a failed dial first.
    let c = connect_in(&ctr, "127.0.0.1:8081").unwrap();
    let mut c2 = c.try_clone().unwrap();
    c2.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(
        first_words(c).unwrap().starts_with("HTTP/1."),
        "{}",
        to_web.log()
    );
    assert!(!to_web.log().contains("cannot connect"), "{}", to_web.log());
    to_web.stop();
    p.stop();
}

/// `--target-netns container:NAME` with real dockerd, `docker stop` with no client about: the
/// watch says it once, in Docker's words (`docker start NAME`), as the listen side does;
/// after `docker start` it says it follows the new namespace (a restart: the id it learned at
/// start), and a connection reaches the container. Before, a stopped target was told only in
/// the line of a dial it refused.
#[test]
fn a_stopped_target_container_is_told_without_a_client() {
    let d = common::docker::Dockerd::start("pxfst");
    let web = unique("web");
    d.run_busybox_web(&web, "80");
    let host = lab("pxfsth");
    let dir = TempDir::new("pxfst");
    let target = format!("container:{web}");
    let p = start_with(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &target,
            "127.0.0.1:8081",
            "127.0.0.1:80",
        ],
        &[("DOCKER_HOST", &d.host())],
    );
    let served = || {
        connect_in(&host, "127.0.0.1:8081")
            .and_then(|mut s| {
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                first_words(s)
            })
            .is_ok_and(|a| a.starts_with("HTTP/1."))
    };
    wait_for("an answer before the stop", 10, served);
    let count = |s: &str| p.log().matches(s).count();

    d.docker(&["stop", "-t", "1", &web]);
    let stopped = format!("--target-netns {target}: container {web} is exited (code ");
    let fix = format!(
        "): start it with `docker start {web}`; the proxy dials in its new network namespace when it starts"
    );
    // Said once however long it stays stopped, and no client was refused for it.
    p.wait_said_once(&stopped, &fix);
    assert!(!p.log().contains("cannot connect"), "{}", p.log());

    d.docker(&["start", &web]);
    let back = format!("--target-netns {target}: following the new network namespace (inode ");
    wait_for("the line that it is back", 15, || count(&back) == 1);
    assert!(
        p.log().contains(
            ": the container was restarted); connections open in the old one stay as they are"
        ),
        "{}",
        p.log()
    );
    // httpd may still be starting when `docker start` returns.
    wait_for("an answer after docker start", 10, served);
    assert_eq!(count(&stopped), 1, "log:\n{}", p.log());
    p.stop();
}

/// One connection through the proxy at `addr` in `host`, answered "hi" by `backend`.
fn says_hi_through(host: &TestNs, addr: &str, backend: &TcpListener) {
    let c = connect_in(host, addr).unwrap();
    let (mut s, _) = backend.accept().unwrap();
    s.write_all(b"hi").unwrap();
    drop(s);
    assert_eq!(first_words(c).unwrap(), "hi");
}

/// A restarted Podman container comes back with another address on its network: a target
/// that was the old namespace's own address is followed into a namespace that has it no more,
/// where every dial fails with "No route to host" and no word of why. The proxy says so when
/// it follows, and what to target instead. Before, nothing said it.
#[test]
fn a_target_address_the_new_namespace_lacks_is_told() {
    let host = lab("pxsah");
    let ctr = lab("pxsac");
    let dir = TempDir::new("pxsa");
    backend_ip(&ctr, "add", "10.77.0.1");
    let backend = listen_in(&ctr, "10.77.0.1:7000");
    let p = start(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &ctr.name,
            "127.0.0.1:8080",
            "10.77.0.1:7000",
        ],
    );
    says_hi_through(&host, "127.0.0.1:8080", &backend);
    // The "container" restarts with another address, as Podman's do; its old namespace has
    // lost the address by then (Podman takes eth0 out of it).
    drop(backend);
    backend_ip(&ctr, "del", "10.77.0.1");
    remake_named(&ctr);
    backend_ip(&ctr, "add", "10.77.0.2");
    // Reset: at the read, or at the connect already when the reset comes first (the
    // namespace watch may have followed before this client, so the dial fails at once).
    assert!(connect_in(&host, "127.0.0.1:8080")
        .and_then(first_words)
        .is_err());
    let want = format!(
        "--target-netns {}: target 10.77.0.1 was an address of the namespace at start and is none of the new one's (a restarted container may get another address): dials to it fail there; target 127.0.0.1, the container's own loopback, to follow it",
        ctr.name
    );
    p.wait_logged(&want);
    p.stop();
}

/// `--target-netns pid:N` names one process's namespace: once that process is gone (a
/// container restarted gets a new one), the line says the process exited and how to follow a
/// container instead. Before, it said only that /proc/N/ns/net could not be opened.
#[test]
fn a_target_pid_that_exited_is_told_with_how_to_follow_a_container() {
    let host = lab("pxpgh");
    let ctr = lab("pxpgc");
    let dir = TempDir::new("pxpg");
    let sleeper = ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", &ctr.name, "sleep", "600"])
            .spawn()
            .unwrap(),
    );
    let pid = sleeper.pid();
    let backend = listen_in(&ctr, "127.0.0.1:7000");
    let target = format!("pid:{pid}");
    let p = start(
        None,
        &dir,
        &[
            "--listen-netns",
            &host.name,
            "--target-netns",
            &target,
            "127.0.0.1:8080",
            "127.0.0.1:7000",
        ],
    );
    says_hi_through(&host, "127.0.0.1:8080", &backend);
    // The process and its listener go, as a container's do when it stops.
    drop(sleeper);
    drop(backend);
    // Reset: at the read, or at the connect already when the reset comes first (the
    // namespace watch may have followed before this client, so the dial fails at once;
    // connect_timeout then returns ECONNRESET: 2 runs in 20 under load). A reset, not any
    // error: a client left hanging would end in the read timeout's error.
    let reset = connect_in(&host, "127.0.0.1:8080").and_then(first_words);
    assert!(
        matches!(&reset, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client is reset: {reset:?}"
    );
    let want = format!(
        "--target-netns {target} names no namespace now: process {pid} has exited (a container's process and namespace file are new at each start: --target-netns container:NAME follows the container); resetting the client"
    );
    p.wait_logged(&want);
    p.stop();
}

/// `n` connections to `addr` in `ns` (a proxy in front of [`echo_backend`]), each through to
/// the backend (one line echoed) and left open.
fn open_echoed(ns: &TestNs, addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = connect_in(ns, addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(format!("conn {i}\n").as_bytes()).unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&c).read_line(&mut line).unwrap();
            assert_eq!(line, format!("conn {i}\n"));
            c
        })
        .collect()
}

/// SIGTERM with 20 connections open: exit 0, promptly, the connections counted out and ended.
fn stops_on_sigterm_with_connections_open(relay: Relay) {
    let ns = lab("pxterm");
    let dir = TempDir::new("pxterm");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7000"]);
    let conns = open_echoed(&ns, "127.0.0.1:8080", 20);
    let t = std::time::Instant::now();
    // Exit 0 (checked by stop), promptly, with the open connections counted out.
    let log = p.stop();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(log.contains("connections=20 active=0"), "{log}");
    // The clients see their connections end.
    for mut c in conns {
        let mut buf = [0u8; 8];
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    }
}

on_both_relays!(
    stops_on_sigterm_with_connections_open_fast_path,
    stops_on_sigterm_with_connections_open_tokio_path
    => stops_on_sigterm_with_connections_open()
);

/// Run `client` (a client connecting and sending) while every SYN to `port` in `ns` is
/// dropped: the proxy's dial waits for the SYN sent again a second later, so everything the
/// client sent (bytes, FIN, reset) waits in one receive queue until the backend answers.
fn while_the_backend_dial_waits<T>(ns: &TestNs, port: u16, client: impl FnOnce() -> T) -> T {
    let port = port.to_string();
    let iptables = |op: &str| {
        common::sh(&[
            "ip", "netns", "exec", &ns.name, "iptables", op, "OUTPUT", "-p", "tcp", "--dport",
            &port, "--syn", "-j", "DROP",
        ]);
    };
    iptables("-A");
    let r = client();
    iptables("-D");
    r
}

/// Bytes and a FIN the client sent before the backend answered the proxy's dial: all of them
/// reach the backend once it does, the FIN passed on after them.
fn passes_what_the_client_sent_before_the_backend_answered(relay: Relay) {
    let ns = lab("pxearly");
    let dir = TempDir::new("pxearly");
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7000"]);
    // Within the first receive window: the client never waits for the proxy to read.
    let sizes = [5, 40_000];
    let mut clients = while_the_backend_dial_waits(&ns, 7000, || {
        sizes.map(|n| {
            let mut c = connect_in(&ns, "127.0.0.1:8080").unwrap();
            c.write_all(&payload(n, 3)).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            c
        })
    });
    for (c, n) in clients.iter_mut().zip(sizes) {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(
            answer,
            n.to_string(),
            "bytes the backend counted before the FIN"
        );
    }
    drop(clients);
    let log = p.stop();
    assert!(
        log.contains("connections=2 active=0 bytes_c2s=40005 bytes_s2c=6 dial_errors=0 resets=0"),
        "{log}"
    );
}

on_both_relays!(
    passes_what_the_client_sent_before_the_backend_answered_fast_path,
    passes_what_the_client_sent_before_the_backend_answered_tokio_path
    => passes_what_the_client_sent_before_the_backend_answered()
);

/// Send `byte` on `s` as TCP urgent data (MSG_OOB).
fn send_urgent(s: &TcpStream, byte: u8) {
    let r = unsafe {
        libc::send(
            s.as_raw_fd(),
            &byte as *const u8 as *const libc::c_void,
            1,
            libc::MSG_OOB,
        )
    };
    assert_eq!(r, 1, "send MSG_OOB: {}", std::io::Error::last_os_error());
}

/// Read from `s` until `want` bytes came (or EOF, an error or 10 s of silence): what came.
fn read_up_to(s: &mut TcpStream, want: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while got.len() < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// `got` is `want`, or the failure says how much came and how it ended (not 64 KiB of bytes).
fn assert_all_came(got: &[u8], want: &[u8]) {
    assert!(
        got == want,
        "{} of {} bytes came, ending {:?}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(&got[got.len().saturating_sub(8)..])
    );
}

/// TCP urgent data (telnet's Synch, ftp's ABOR) passes as an ordinary byte and every byte
/// behind it follows, client -> backend with the FIN already queued, and backend -> client in
/// the middle of a bulk (splice) transfer. `dump`: with a hex dump (tokio's copy path).
fn passes_urgent_data_on_with_every_byte_behind_it(relay: Relay, dump: bool) {
    let ns = lab("pxurg");
    let dir = TempDir::new("pxurg");
    // Client -> backend: the backend answers with everything it read once the FIN came.
    let l = listen_in(&ns, "127.0.0.1:7000");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = s.write_all(&got);
        }
    });
    // Backend -> client, on the splice path: 1 MiB (bulk), then urgent data and a tail; the
    // connection stays open (no FIN to end a stall).
    let bulk = payload(1 << 20, 11);
    let l = listen_in(&ns, "127.0.0.1:7001");
    let sent = bulk.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(&sent);
            send_urgent(&s, b'!');
            let _ = s.write_all(b"tail");
            let _ = s.read_to_end(&mut Vec::new());
        }
    });
    let dump_file = dir.join("dump.txt");
    let mut args = vec!["-p", "8080=127.0.0.1:7000", "-p", "8081=127.0.0.1:7001"];
    if dump {
        args.extend(["--hex", "--dump-file", dump_file.to_str().unwrap()]);
    }
    let p = relay.start(Some(&ns), &dir, &args);
    // All the client sends, the urgent mark and its FIN wait in one receive queue: the proxy's
    // first read stops short at the mark, with the FIN already seen.
    let mut c = while_the_backend_dial_waits(&ns, 7000, || {
        let c = connect_in(&ns, "127.0.0.1:8080").unwrap();
        (&c).write_all(b"hello").unwrap();
        send_urgent(&c, b'!');
        (&c).write_all(b"world").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        c
    });
    let answer = read_up_to(&mut c, 11);
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "hello!world",
        "what the backend read"
    );

    let mut c = connect_in(&ns, "127.0.0.1:8081").unwrap();
    let mut want = bulk;
    want.extend_from_slice(b"!tail");
    let got = read_up_to(&mut c, want.len());
    assert_all_came(&got, &want);
    drop(c);
    let log = p.stop();
    assert!(
        log.contains(&format!(
            "connections=2 active=0 bytes_c2s=11 bytes_s2c={} dial_errors=0 resets=0 errors=0",
            11 + want.len()
        )),
        "{log}"
    );
    if dump {
        // The dump shows what was passed on: the urgent byte and what follows it, each way
        // (a read stops at the mark, so each starts a block).
        let d = std::fs::read_to_string(&dump_file).unwrap();
        for (bytes, hex) in [("!world", "21 77 6f 72 6c 64"), ("!tail", "21 74 61 69 6c")] {
            assert!(
                d.contains(hex),
                "{bytes:?} ({hex}) not in the dump:\n{d:.2000}"
            );
        }
    }
}

on_both_relays!(
    passes_urgent_data_on_with_every_byte_behind_it_fast_path,
    passes_urgent_data_on_with_every_byte_behind_it_tokio_path
    => passes_urgent_data_on_with_every_byte_behind_it(false)
);

#[test]
fn passes_urgent_data_on_with_every_byte_behind_it_into_a_dump_tokio_path() {
    passes_urgent_data_on_with_every_byte_behind_it(Relay::Tokio, true);
}

/// A backend's urgent byte right behind a full 8 KiB read, arriving with its FIN after the relay
/// was told of the 8 KiB and before it read them: the read stops at the mark (a full read, not
/// a short one), splice then says 0 (the FIN is in), and the read that follows skipped the
/// urgent byte on the loop when no EPOLLPRI had shown yet (nothing had set SO_OOBINLINE on the
/// backend's socket). Made certain, not left to timing, with strace: each read of the relay is
/// held for a second at its entry, and the backend sends the urgent byte and its FIN only once
/// the trace shows the relay inside its first read; the trace then shows the case happened
/// (that read returned 8192 and a splice after it 0). `dump`: tokio's copy path (a hex dump),
/// which reads 64 KiB at a time and never splices: a full read ending at the mark lost the
/// byte there whenever it came.
fn passes_an_urgent_byte_that_ends_a_full_read_before_it_is_announced(relay: Relay, dump: bool) {
    let ns = lab("pxurg8k");
    let dir = TempDir::new("pxurg8k");
    let full = if dump { 65_536 } else { 8192 };
    let bulk = payload(full, 13);
    let l = listen_in(&ns, "127.0.0.1:7000");
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let sent = bulk.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(&sent);
            let _ = wait.recv();
            send_urgent(&s, b'!');
            // close(): the FIN right behind the urgent byte.
        }
    });
    let dump_file = dir.join("dump.txt");
    let mut args = vec!["8080", "127.0.0.1:7000"];
    if dump {
        args.extend(["--hex", "--dump-file", dump_file.to_str().unwrap()]);
    }
    let p = relay.start(Some(&ns), &dir, &args);
    // The relay's reads: the loop's threads read(); tokio's workers recvfrom().
    let (read, threads): (&str, Vec<String>) = match relay {
        Relay::FastPath => (
            "read",
            std::fs::read_dir(format!("/proc/{}/task", p.pid()))
                .unwrap()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "nettool-fast")
                })
                .map(|t| t.file_name().to_string_lossy().into_owned())
                .collect(),
        ),
        Relay::Tokio => ("recvfrom", vec![p.pid().to_string()]),
    };
    let out = dir.join("strace.out");
    let mut cmd = Command::new("strace");
    cmd.args(["-qq", "-e"])
        .arg(format!("trace={read},splice"))
        .arg("-e")
        .arg(format!("inject={read}:delay_enter=1000000"))
        .arg("-o")
        .arg(&out);
    if matches!(relay, Relay::Tokio) {
        cmd.arg("-f");
    }
    for t in &threads {
        cmd.args(["-p", t]);
    }
    let mut st = ChildGuard(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (apt-get install strace)"),
    );
    wait_for("strace to attach", 10, || {
        threads.iter().all(|t| {
            std::fs::read_to_string(format!("/proc/{}/task/{t}/status", p.pid()))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
        })
    });
    let mut c = connect_in(&ns, "127.0.0.1:8080").unwrap();
    // The client sends nothing: the relay's first read is the backend's 8 KiB, announced
    // without EPOLLPRI (nothing urgent was sent yet) and now held at its entry.
    wait_for("the relay inside its read of the backend", 10, || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains(&format!("{read}(")))
    });
    go.send(()).unwrap();
    let mut want = bulk;
    want.push(b'!');
    let got = read_up_to(&mut c, want.len() + 1);
    unsafe { libc::kill(st.pid() as i32, libc::SIGINT) };
    let _ = st.0.wait();
    let trace = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        trace.contains(&format!("= {full}"))
            && (dump
                || trace
                    .lines()
                    .any(|l| l.contains("splice") && l.ends_with("= 0"))),
        "the case was not set up (the urgent byte came after the read): trace\n{trace}"
    );
    assert_all_came(&got, &want);
    drop(c);
    let log = p.stop();
    assert!(
        log.contains(&format!(
            "connections=1 active=0 bytes_c2s=0 bytes_s2c={} ",
            full + 1
        )),
        "{log}"
    );
}

on_both_relays!(
    passes_an_urgent_byte_that_ends_a_full_read_before_it_is_announced_fast_path,
    passes_an_urgent_byte_that_ends_a_full_read_before_it_is_announced_tokio_path
    => passes_an_urgent_byte_that_ends_a_full_read_before_it_is_announced(false)
);

#[test]
fn passes_an_urgent_byte_that_ends_a_full_read_into_a_dump_tokio_path() {
    passes_an_urgent_byte_that_ends_a_full_read_before_it_is_announced(Relay::Tokio, true);
}

/// A direction whose FIN has been passed on gives its splice pipe back (two descriptors, and up
/// to 1 MiB of pipe) while the other direction goes on: a client that uploaded, half-closed and
/// waits for a slow answer costs the proxy its two sockets, not four descriptors.
fn releases_a_directions_pipe_once_its_fin_is_passed(relay: Relay) {
    let ns = lab("pxpipe");
    let dir = TempDir::new("pxpipe");
    let l = listen_in(&ns, "127.0.0.1:7000");
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = got_tx.send(got.len());
            // A slow answer: the upload's direction is over, this one is not.
            let _ = wait.recv();
            let _ = s.write_all(b"done");
        }
    });
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7000"]);
    let before = p.fds();
    let mut c = connect_in(&ns, "127.0.0.1:8080").unwrap();
    // Bulk (a full first read): this direction splices through a pipe.
    c.write_all(&payload(1 << 20, 17)).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(got_rx.recv_timeout(Duration::from_secs(10)), Ok(1 << 20));
    wait_for("the upload's pipe to be given back", 20, || {
        p.fds() == before + 2
    });
    go.send(()).unwrap();
    let mut answer = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"done");
    drop(c);
    wait_for("every proxy fd to be released", 20, || p.fds() == before);
    let log = p.stop();
    assert!(
        log.contains("connections=1 active=0 bytes_c2s=1048576 bytes_s2c=4 "),
        "{log}"
    );
}

on_both_relays!(
    releases_a_directions_pipe_once_its_fin_is_passed_fast_path,
    releases_a_directions_pipe_once_its_fin_is_passed_tokio_path
    => releases_a_directions_pipe_once_its_fin_is_passed()
);

/// Backend: answer a request with "pong\n" and close, as in tools/bench-proxy's short
/// connections.
fn pong_backend(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 64];
            if s.read(&mut buf).is_ok_and(|n| n > 0) {
                let _ = s.write_all(b"pong\n");
            }
        }
    });
}

/// A server-first exchange (SMTP's shape): the backend speaks first, each side answers a line
/// at a time, the backend closes after its last line; counters exact.
fn serves_a_backend_that_speaks_first(relay: Relay) {
    let ns = lab("pxbanner");
    let dir = TempDir::new("pxbanner");
    let l = listen_in(&ns, "127.0.0.1:7000");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut w = s.try_clone().unwrap();
            let _ = w.write_all(b"220 ready\r\n");
            let mut r = std::io::BufReader::new(s);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                let quit = line == "QUIT\r\n";
                let _ = w.write_all(if quit { b"221 bye\r\n" } else { b"250 ok\r\n" });
                if quit {
                    break;
                }
                line.clear();
            }
        }
    });
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7000"]);
    let c = connect_in(&ns, "127.0.0.1:8080").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = std::io::BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(
        line, "220 ready\r\n",
        "the banner, before the client sent anything"
    );
    for (say, want) in [("EHLO x\r\n", "250 ok\r\n"), ("QUIT\r\n", "221 bye\r\n")] {
        w.write_all(say.as_bytes()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, want);
    }
    line.clear();
    assert_eq!(
        r.read_line(&mut line).unwrap(),
        0,
        "EOF after the last line: {line:?}"
    );
    drop((r, w));
    wait_for("the connection to end", 10, || {
        unsafe { libc::kill(p.pid() as i32, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(100));
        p.log().contains("connections=1 active=0")
    });
    let log = p.stop();
    assert!(
        log.contains(
            "connections=1 active=0 bytes_c2s=14 bytes_s2c=28 dial_errors=0 resets=0 errors=0"
        ),
        "{log}"
    );
}

on_both_relays!(
    serves_a_backend_that_speaks_first_fast_path,
    serves_a_backend_that_speaks_first_tokio_path
    => serves_a_backend_that_speaks_first()
);

/// The state letter of task `tid` of process `pid` (R running, S asleep, ...).
fn task_state(pid: u32, tid: &str) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .unwrap_or_default()
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .unwrap_or('?')
}

/// CPU time of process `pid` (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the state.
    rest.split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// The most payload TCP can hold between a backend and a client that reads nothing, through a
/// relay: the backend's send buffer, the relay's two sockets, the client's receive buffer
/// (each at most its autotuning cap, tcp_wmem/tcp_rmem's third value, in `ns`), the relay's
/// 1 MiB splice pipe, and 256 KiB for a send buffer's overshoot by a segment and the relay's
/// small buffer.
fn socket_buffers_bound(ns: &TestNs) -> usize {
    let max = |name: &str| {
        inside(ns, || {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        })
        .unwrap()
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap()
    };
    2 * max("tcp_rmem") + 2 * max("tcp_wmem") + (1 << 20) + (256 << 10)
}

/// A client that never reads while the backend streams: the backend is held back by TCP's
/// flow control, not buffered in the proxy; once the client reads, every byte comes, in order.
/// The verdict is counts: what the backend managed to write, once it is held back, against
/// what the socket buffers and the pipe between it and the client can hold.
fn holds_back_a_backend_whose_client_does_not_read(relay: Relay) {
    let ns = lab("pxnoread");
    let dir = TempDir::new("pxnoread");
    const CHUNK: usize = 1 << 20;
    let bound = socket_buffers_bound(&ns);
    // Twice what the buffers hold (128 MiB at least): a proxy that buffered would let the
    // backend write it all.
    let chunks = (2 * bound / CHUNK + 1).max(128);
    let chunk = payload(CHUNK, 5);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let l = listen_in(&ns, "127.0.0.1:7000");
    let (sent, counter) = (chunk.clone(), written.clone());
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tid_tx.send(unsafe { libc::gettid() }.to_string());
        for s in l.incoming().flatten() {
            let mut s = s;
            for _ in 0..chunks {
                // In 64 KiB writes, so the count follows what the kernel took.
                for part in sent.chunks(65_536) {
                    if s.write_all(part).is_err() {
                        return;
                    }
                    counter.fetch_add(part.len(), std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    let writer = tid_rx.recv().unwrap();
    let me = std::process::id();
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7000"]);
    let rss_before = proc_status_kb(p.pid(), "VmRSS");
    let mut c = connect_in(&ns, "127.0.0.1:8080").unwrap();
    // Held back: the backend asleep in a write for want of room (sk_stream_wait_memory) while
    // every thread of the proxy sleeps, seen twice with no byte written and no CPU tick of the
    // proxy between: every buffer on the way is full and nothing moves. A thread starved of
    // CPU is runnable, not asleep, so a slow machine does not make this look settled early;
    // and a proxy that buffered would be woken by the backend's bytes, not asleep with them.
    let observe = || {
        let blocked = task_state(me, &writer) == 'S'
            && std::fs::read_to_string(format!("/proc/{me}/task/{writer}/stack"))
                .is_ok_and(|s| s.contains("sk_stream_wait_memory"));
        let asleep = std::fs::read_dir(format!("/proc/{}/task", p.pid()))
            .unwrap()
            .flatten()
            .all(|t| task_state(p.pid(), &t.file_name().to_string_lossy()) == 'S');
        (blocked && asleep).then(|| {
            (
                written.load(std::sync::atomic::Ordering::Relaxed),
                cpu_ticks(p.pid()),
            )
        })
    };
    let mut last = None;
    wait_for("the backend to be held back", 60, || {
        std::thread::sleep(Duration::from_millis(100));
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            now <= bound,
            "the backend wrote {now} bytes to a client that reads nothing: more than the {bound} \
             the socket buffers and the pipe between them hold"
        );
        let seen = observe();
        let settled = seen.is_some() && seen == last;
        last = seen;
        settled
    });
    let held = written.load(std::sync::atomic::Ordering::Relaxed);
    let rss = proc_status_kb(p.pid(), "VmRSS");
    eprintln!(
        "{relay:?}: the backend wrote {} KiB before it was held back (bound {} KiB); proxy RSS \
         {rss_before} -> {rss} kB",
        held / 1024,
        bound / 1024
    );
    assert!(
        held <= bound,
        "the backend wrote {held} bytes to a client that reads nothing, more than {bound}"
    );
    assert!(
        rss < rss_before + 16 * 1024,
        "proxy RSS {rss_before} -> {rss} kB"
    );
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; CHUNK];
    for k in 0..chunks {
        c.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("chunk {k} of {chunks}: {e}"));
        assert!(buf == chunk, "chunk {k} differs");
    }
    drop(c);
    let log = p.stop();
    assert!(
        log.contains(&format!("bytes_s2c={}", CHUNK * chunks)),
        "{log}"
    );
}

on_both_relays!(
    holds_back_a_backend_whose_client_does_not_read_fast_path,
    holds_back_a_backend_whose_client_does_not_read_tokio_path
    => holds_back_a_backend_whose_client_does_not_read()
);

/// A reset from a side whose own direction has ended (it sent its FIN, then reset) while the
/// other side is idle: no read says so (the FIN was read), only the socket's error (EPOLLERR).
/// Both relays pass it on as a reset at once and count it; tokio's path used to learn it only
/// when it next wrote to that side, so an idle backend never heard of it.
fn passes_a_reset_that_follows_a_fin_while_the_other_side_is_idle(relay: Relay) {
    let ns = lab("pxfinrst");
    let dir = TempDir::new("pxfinrst");
    // The client sends, half-closes, then resets: the backend, having read to EOF, waits.
    let l = listen_in(&ns, "127.0.0.1:7000");
    let (tx, rx) = std::sync::mpsc::channel();
    let (err_tx, err_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            let _ = tx.send(s.read_to_end(&mut got).map(|_| got).map_err(|e| e.kind()));
            // After the FIN a read says 0 whatever follows; the socket's error tells a reset.
            let t = std::time::Instant::now();
            let err = loop {
                match s.take_error() {
                    Ok(Some(e)) => break e.raw_os_error(),
                    _ if t.elapsed() > Duration::from_secs(10) => break None,
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            let _ = err_tx.send(err);
        }
    });
    // The backend greets, half-closes, then resets while the client is idle.
    let l = listen_in(&ns, "127.0.0.1:7001");
    let (go, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(b"bye");
            let _ = s.shutdown(Shutdown::Write);
            let _ = wait.recv();
            close_with_reset(s);
        }
    });
    let p = relay.start(
        Some(&ns),
        &dir,
        &["-p", "8080=127.0.0.1:7000", "-p", "8081=127.0.0.1:7001"],
    );
    let mut c = connect_in(&ns, "127.0.0.1:8080").unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, Ok(b"request".to_vec()));
    close_with_reset(c);
    let next = err_rx.recv_timeout(Duration::from_secs(15)).unwrap();
    assert_eq!(
        next,
        Some(libc::EPIPE),
        "the backend's socket error after the client's FIN"
    );

    let mut c = connect_in(&ns, "127.0.0.1:8081").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    go.send(()).unwrap();
    let counters = |p: &Proxy| {
        unsafe { libc::kill(p.pid() as i32, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(100));
        p.log()
    };
    wait_for("both resets to be counted", 10, || {
        counters(&p).contains("connections=2 active=0")
    });
    // The client's socket got a reset (after the FIN it read, the kernel records EPIPE), not
    // a second FIN.
    let mut err = None;
    wait_for("a reset on the client's socket", 10, || {
        err = c.take_error().unwrap();
        err.is_some()
    });
    assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EPIPE));
    let log = p.stop();
    assert!(
        log.contains(
            "connections=2 active=0 bytes_c2s=7 bytes_s2c=3 dial_errors=0 resets=2 errors=0"
        ),
        "{log}"
    );
}

on_both_relays!(
    passes_a_reset_that_follows_a_fin_while_the_other_side_is_idle_fast_path,
    passes_a_reset_that_follows_a_fin_while_the_other_side_is_idle_tokio_path
    => passes_a_reset_that_follows_a_fin_while_the_other_side_is_idle()
);

/// A client that sends and then resets (it aborted), its bytes and its reset in the proxy's
/// queue together (sent while the backend's SYN is dropped): the backend gets the bytes and a
/// reset, never a FIN that would make an aborted upload look complete.
fn passes_a_reset_that_comes_with_the_last_bytes_as_a_reset(relay: Relay) {
    let ns = lab("pxabort");
    let dir = TempDir::new("pxabort");
    let l = listen_in(&ns, "127.0.0.1:7000");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            let end = s.read_to_end(&mut got).map(|_| "EOF").map_err(|e| e.kind());
            let _ = tx.send((got, end));
        }
    });
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7000"]);
    while_the_backend_dial_waits(&ns, 7000, || {
        let mut c = connect_in(&ns, "127.0.0.1:8080").unwrap();
        c.write_all(b"half an upload").unwrap();
        close_with_reset(c);
    });
    let (got, end) = rx.recv_timeout(Duration::from_secs(15)).unwrap();
    assert_eq!(got, b"half an upload");
    assert_eq!(
        end,
        Err(std::io::ErrorKind::ConnectionReset),
        "after the bytes"
    );
    let log = p.stop();
    assert!(
        log.contains(
            "connections=1 active=0 bytes_c2s=14 bytes_s2c=0 dial_errors=0 resets=1 errors=0"
        ),
        "{log}"
    );
}

on_both_relays!(
    passes_a_reset_that_comes_with_the_last_bytes_as_a_reset_fast_path,
    passes_a_reset_that_comes_with_the_last_bytes_as_a_reset_tokio_path
    => passes_a_reset_that_comes_with_the_last_bytes_as_a_reset()
);

/// Syscalls of the proxy for `n` short connections (request, answer, both close) through `addr`.
fn short_connection_syscalls(ns: &TestNs, pid: u32, addr: &str, n: u64, which: &str) -> u64 {
    syscalls_during(pid, which, || {
        for _ in 0..n {
            let mut s = connect_in(ns, addr).unwrap();
            s.write_all(b"ping\n").unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"pong\n");
        }
    })
    .0
}

#[test]
fn a_short_connection_on_the_fast_path_costs_fewer_syscalls_than_on_tokio() {
    let ns = lab("pxfsys");
    let dir = TempDir::new("pxfsys");
    pong_backend(listen_in(&ns, "127.0.0.1:7301"));
    let tokio = start_tokio(Some(&ns), &dir, &["127.0.0.1:7302", "127.0.0.1:7301"]);
    assert_eq!(threads_named(tokio.pid(), "nettool-fast"), 0);
    let fast = start_fast(Some(&ns), &dir, &["127.0.0.1:7303", "127.0.0.1:7301"]);
    const N: u64 = 200;
    let all = "accept4,accept,socket,connect,setsockopt,getsockopt,getsockname,epoll_ctl,\
               epoll_wait,epoll_pwait,read,recvfrom,write,sendto,sendmsg,shutdown,close,futex,splice,ioctl";
    let reads = "recvfrom,read,getsockopt";
    let t_all = short_connection_syscalls(&ns, tokio.pid(), "127.0.0.1:7302", N, all);
    let f_all = short_connection_syscalls(&ns, fast.pid(), "127.0.0.1:7303", N, all);
    let f_reads = short_connection_syscalls(&ns, fast.pid(), "127.0.0.1:7303", N, reads);
    eprintln!(
        "syscalls per connection: tokio {:.1}, fast path {:.1} (reads and getsockopt {:.1})",
        t_all as f64 / N as f64,
        f_all as f64 / N as f64,
        f_reads as f64 / N as f64
    );
    // No read after the FIN was seen, no SO_ERROR query after a successful connect (as on
    // tokio's path: a_short_connection_costs_no_read_after_the_fin_and_no_connect_check).
    assert!(f_reads < 4 * N, "{f_reads} reads for {N} connections");
    // No epoll_ctl DEL before close, no wake-ups between threads, no accept4 only to be told
    // EAGAIN (measured: 26.8 on tokio, 1.8 of them SIOCATMARK ioctls after its short reads,
    // which c094e58's urgent-data check costs; 17.4 here).
    assert!(
        f_all * 10 < t_all * 9,
        "fast path {f_all} syscalls, tokio {t_all}, for {N} connections each"
    );
    let log = fast.stop();
    assert!(log.contains(&format!("connections={}", 2 * N)), "{log}");
    tokio.stop();
}

#[test]
fn the_fast_path_is_the_default_for_plain_tcp_and_steps_aside_when_something_watches() {
    let ns = lab("pxfdef");
    let dir = TempDir::new("pxfdef");
    count_backend(listen_in(&ns, "127.0.0.1:7000"));
    let dump = dir.join("d.txt");
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], usize);
    let cases: [Case; 5] = [
        (&[], &[], 2),
        (&["--threads", "3"], &[], 3),
        (&["-v"], &[], 0),
        (&["--dump", "--dump-file", dump.to_str().unwrap()], &[], 0),
        (&[], &[("NETTOOL_PROXY_FASTPATH", "0")], 0),
    ];
    for (extra, env, loops) in cases {
        let mut args = vec!["127.0.0.1:8080", "127.0.0.1:7000"];
        args.extend_from_slice(extra);
        let p = start_with(Some(&ns), &dir, &args, env);
        assert_eq!(send_count(&ns, "127.0.0.1:8080", 20_000), "20000");
        // A thread takes its name once it runs: after a connection was served, on this path
        // or the other, the count is settled.
        wait_for(
            &format!("{loops} loop threads with {extra:?} {env:?}"),
            5,
            || threads_named(p.pid(), "nettool-fast") == loops,
        );
        p.stop();
    }
}

/// The drops counter of the UDP socket bound to 127.0.0.1:`port` in `ns` (/proc/net/udp).
fn udp_socket_drops(ns: &TestNs, port: u16) -> u64 {
    udp_drops_at(ns, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The drops counter of the UDP socket whose local address is `local` in `ns` (the last
/// column of /proc/net/udp or udp6, where addresses are 32-bit words in host byte order).
fn udp_drops_at(ns: &TestNs, local: SocketAddr) -> u64 {
    let word = |b: &[u8]| format!("{:08X}", u32::from_ne_bytes(b.try_into().unwrap()));
    let (table, ip) = match local.ip() {
        std::net::IpAddr::V4(ip) => ("/proc/net/udp", word(&ip.octets())),
        std::net::IpAddr::V6(ip) => ("/proc/net/udp6", ip.octets().chunks(4).map(word).collect()),
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "cat", table])
        .output()
        .unwrap();
    let want = format!("{ip}:{:04X}", local.port());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no UDP socket on {local} in {}", ns.name))
}

#[test]
fn a_udp_stream_the_paced_thread_falls_behind_on_is_not_dropped_at_the_proxys_socket() {
    let ns = lab("pxudpq");
    let dir = TempDir::new("pxudpq");
    let sink = inside(&ns, || UdpSocket::bind("127.0.0.1:7060").unwrap());
    big_rcvbuf(&sink);
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Every wait between batches lasts 2 ms: what the 100 us wait becomes when the thread is
    // not scheduled back in time on a busy machine. At one batch (32) per wait the thread
    // moves at most 16 000 datagrams a second, under the 25 000 a second sent below, and the
    // socket fills; once its queue is over a quarter of its buffer, the waits must shorten.
    let p = start_with(
        Some(&ns),
        &dir,
        &["-p", "udp:127.0.0.1:5360=127.0.0.1:7060"],
        &[("NETTOOL_PROXY_UDP_COALESCE_US", "2000")],
    );
    let client = inside(&ns, || UdpSocket::bind("127.0.0.1:0").unwrap());
    client.send_to(b"open", "127.0.0.1:5360").unwrap();
    let mut buf = vec![0u8; 65_536];
    assert_eq!(sink.recv(&mut buf).unwrap(), 4);
    let before = udp_socket_drops(&ns, 5360);

    // 30 000 datagrams of 1400 bytes at 25 000 a second (1.2 s), 50 every 2 ms (the sender
    // sleeps in between: a spinning one would take the CPU the proxy needs); the sink reads
    // meanwhile.
    const N: u32 = 30_000;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        for k in 0..N {
            match sink.recv(&mut buf) {
                Ok(n) => {
                    let got = u32::from_be_bytes(buf[..4].try_into().unwrap());
                    if (got, n) != (k, 1400) {
                        return Err(format!("datagram {k}: got {got} of {n} bytes"));
                    }
                }
                Err(e) => return Err(format!("datagram {k} missing: {e}")),
            }
        }
        Ok(())
    });
    let t0 = std::time::Instant::now();
    let mut d = vec![0xA5u8; 1400];
    for k in 0..N {
        if k % 50 == 0 {
            let due = Duration::from_micros(40 * k as u64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        d[..4].copy_from_slice(&k.to_be_bytes());
        client.send_to(&d, "127.0.0.1:5360").unwrap();
    }
    let got = reader.join().unwrap();
    let drops = udp_socket_drops(&ns, 5360) - before;
    assert_eq!(
        drops, 0,
        "the proxy's listening socket dropped {drops} of {N} datagrams (the sink: {got:?})"
    );
    got.unwrap_or_else(|e| {
        panic!(
            "{e} (the sink's socket dropped {})",
            udp_socket_drops(&ns, 7060)
        )
    });
    let log = p.stop();
    assert!(log.contains(&format!("datagrams={}", N + 1)), "{log}");
}

/// Datagrams of 1400 bytes that arrive in 50 ms at 1.5 Gbit/s: what the proxy's sockets must
/// hold while its UDP thread goes without CPU that long on a busy machine.
const STARVED_BURST: u32 = 6_700;

/// Stop process `pid` (SIGSTOP) and wait until every thread of it is stopped.
fn sigstop(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    wait_for(&format!("every thread of {pid} stopped"), 10, || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the command name, which may hold spaces and parentheses.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
    });
}

/// `n` datagrams of 1400 bytes from `s` to `to`, numbered in their first 4 bytes.
fn send_numbered(s: &UdpSocket, to: SocketAddr, n: u32) {
    let mut d = vec![0xA5u8; 1400];
    for k in 0..n {
        d[..4].copy_from_slice(&k.to_be_bytes());
        s.send_to(&d, to).unwrap();
    }
}

/// Receive the `n` datagrams of [`send_numbered`] on `s`, whole and in order; which one was
/// missing or wrong if not.
fn receive_numbered(s: &UdpSocket, n: u32) -> Result<(), String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 65_536];
    for k in 0..n {
        match s.recv(&mut buf) {
            Ok(len) => {
                let got = u32::from_be_bytes(buf[..4].try_into().unwrap());
                if (got, len) != (k, 1400) {
                    return Err(format!("datagram {k}: got {got} of {len} bytes"));
                }
            }
            Err(e) => return Err(format!("datagram {k} of {n} missing: {e}")),
        }
    }
    Ok(())
}

#[test]
fn a_udp_burst_to_a_stopped_proxy_reaches_the_backend_whole_v4_v6() {
    let ns = lab("pxudpst");
    let dir = TempDir::new("pxudpst");
    for (listen, backend) in [
        ("127.0.0.1:5361", "127.0.0.1:7061"),
        ("[::1]:5362", "[::1]:7062"),
    ] {
        let listen: SocketAddr = listen.parse().unwrap();
        let backend: SocketAddr = backend.parse().unwrap();
        let sink = inside(&ns, move || UdpSocket::bind(backend).unwrap());
        big_rcvbuf(&sink);
        let p = start(Some(&ns), &dir, &["-p", &format!("udp:{listen}={backend}")]);
        let client = inside(&ns, move || {
            UdpSocket::bind(SocketAddr::new(listen.ip(), 0)).unwrap()
        });
        // The flow exists before the stop, so the burst takes the batched path.
        client.send_to(b"open", listen).unwrap();
        let mut buf = [0u8; 64];
        sink.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(sink.recv(&mut buf).unwrap(), 4);
        // The UDP thread goes without CPU (the whole proxy is stopped) while the burst
        // arrives: the listening socket must hold all of it.
        sigstop(p.pid());
        send_numbered(&client, listen, STARVED_BURST);
        let reader = std::thread::spawn(move || (receive_numbered(&sink, STARVED_BURST), sink));
        std::thread::sleep(Duration::from_millis(100));
        unsafe { libc::kill(p.pid() as i32, libc::SIGCONT) };
        let (got, _sink) = reader.join().unwrap();
        let drops = udp_drops_at(&ns, listen);
        assert_eq!(
            drops, 0,
            "over {listen}: the proxy's listening socket dropped {drops} of a burst of \
             {STARVED_BURST} datagrams that arrived while it was stopped (the backend: {got:?})"
        );
        got.unwrap_or_else(|e| {
            panic!(
                "over {listen}: {e} (the backend's socket dropped {})",
                udp_drops_at(&ns, backend)
            )
        });
        let log = p.stop();
        assert!(
            log.contains(&format!("datagrams={}", STARVED_BURST + 1)),
            "{log}"
        );
    }
}

#[test]
fn a_burst_of_udp_replies_to_a_stopped_proxy_reaches_the_client_whole_v4_v6() {
    let ns = lab("pxudpsr");
    let dir = TempDir::new("pxudpsr");
    for (listen, backend) in [
        ("127.0.0.1:5363", "127.0.0.1:7063"),
        ("[::1]:5364", "[::1]:7064"),
    ] {
        let listen: SocketAddr = listen.parse().unwrap();
        let backend: SocketAddr = backend.parse().unwrap();
        let server = inside(&ns, move || UdpSocket::bind(backend).unwrap());
        let p = start(Some(&ns), &dir, &["-p", &format!("udp:{listen}={backend}")]);
        let client = inside(&ns, move || {
            UdpSocket::bind(SocketAddr::new(listen.ip(), 0)).unwrap()
        });
        // Big enough never to be the socket that drops (checked below).
        big_rcvbuf(&client);
        let client_at = client.local_addr().unwrap();
        client.send_to(b"open", listen).unwrap();
        let mut buf = [0u8; 64];
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Where the datagram came from is the flow's backend-facing socket.
        let (n, flow) = server.recv_from(&mut buf).unwrap();
        assert_eq!(n, 4);
        // The backend answers with a burst while the proxy is stopped: the flow's socket
        // must hold all of it.
        sigstop(p.pid());
        send_numbered(&server, flow, STARVED_BURST);
        let reader = std::thread::spawn(move || (receive_numbered(&client, STARVED_BURST), client));
        std::thread::sleep(Duration::from_millis(100));
        unsafe { libc::kill(p.pid() as i32, libc::SIGCONT) };
        let (got, _client) = reader.join().unwrap();
        let drops = udp_drops_at(&ns, flow);
        assert_eq!(
            drops, 0,
            "over {listen}: the flow's backend socket {flow} dropped {drops} of a burst of \
             {STARVED_BURST} replies that arrived while the proxy was stopped (the client: {got:?})"
        );
        let mine = udp_drops_at(&ns, client_at);
        assert_eq!(
            mine, 0,
            "over {listen}: the test's client socket dropped {mine} replies: the test's own \
             receive buffer is too small, not the proxy's ({got:?})"
        );
        got.unwrap_or_else(|e| panic!("over {listen}: the client: {e}"));
        let log = p.stop();
        assert!(
            log.contains(&format!("datagrams={}", STARVED_BURST + 1)),
            "{log}"
        );
    }
}

#[test]
fn a_udp_receive_buffer_capped_by_rmem_max_is_said_once_in_the_log() {
    let ns = lab("pxudpcap");
    let dir = TempDir::new("pxudpcap");
    let backend = inside(&ns, || UdpSocket::bind("127.0.0.1:7065").unwrap());
    backend
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Without CAP_NET_ADMIN, SO_RCVBUFFORCE is refused and SO_RCVBUF stops at
    // net.core.rmem_max (a sysctl of the whole machine: read here, never changed).
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, "setpriv"]).args([
        "--inh-caps=-net_admin",
        "--bounding-set=-net_admin",
        BIN,
    ]);
    let p = start_cmd(
        cmd,
        &dir,
        &[
            "-p",
            "udp:127.0.0.1:5365=127.0.0.1:7065",
            "-p",
            "udp:127.0.0.1:5366=127.0.0.1:7065",
        ],
        &[],
    );
    // Two listeners and two flows: four sockets sized, one line.
    for to in ["127.0.0.1:5365", "127.0.0.1:5366"] {
        let c = inside(&ns, || UdpSocket::bind("127.0.0.1:0").unwrap());
        c.send_to(b"x", to).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(backend.recv(&mut buf).unwrap(), 1, "through {to}");
    }
    let log = p.stop();
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("net.core.rmem_max"))
        .collect();
    if rmem_max < 16 << 20 {
        assert_eq!(said.len(), 1, "one line naming the sysctl:\n{log}");
        let kib = format!("capped at {} KiB", rmem_max / 1024);
        assert!(said[0].contains(&kib), "{kib}: {}", said[0]);
    } else {
        assert!(said.is_empty(), "rmem_max {rmem_max} caps nothing:\n{log}");
    }
}

/// TCP_NODELAY of the socket of process `pid` whose local address is `local` (taken with
/// pidfd_getfd and asked directly).
fn nodelay_of(pid: u32, local: SocketAddr) -> bool {
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) as libc::c_int;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let mut found = None;
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            if !target.to_string_lossy().starts_with("socket:") {
                continue;
            }
            let n: libc::c_int = e.file_name().to_str().unwrap().parse().unwrap();
            let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd, n, 0) as libc::c_int;
            if fd < 0 {
                continue;
            }
            let s = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let sock = TcpStream::from(s);
            if sock.local_addr().is_ok_and(|a| a == local) {
                found = Some(sock.nodelay().unwrap());
                break;
            }
        }
        libc::close(pidfd);
        found.unwrap_or_else(|| panic!("no socket on {local} in process {pid}"))
    }
}

#[test]
fn fast_path_sets_nodelay_towards_the_backend_before_any_write_nagle_could_hold() {
    let ns = lab("pxfnod");
    let dir = TempDir::new("pxfnod");
    let l = listen_in(&ns, "127.0.0.1:7000");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let from = s.peer_addr().unwrap();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || tx.send((from, n)).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let p = start_fast(Some(&ns), &dir, &["8080", "127.0.0.1:7000"]);
    let recv = |want: usize| {
        let mut got = 0;
        let mut from = None;
        while got < want {
            let (f, n) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            from = Some(f);
            got += n;
        }
        from.unwrap()
    };
    // A first small write goes out alone: Nagle cannot hold it, no setsockopt.
    let mut a = connect_in(&ns, "127.0.0.1:8080").unwrap();
    a.write_all(b"ping\n").unwrap();
    let a_leg = recv(5);
    assert!(!nodelay_of(p.pid(), a_leg));
    // A second write could be held behind the first: NODELAY first.
    a.write_all(b"again\n").unwrap();
    recv(6);
    assert!(nodelay_of(p.pid(), a_leg));
    // A first write of more than one small segment: NODELAY at once.
    let mut b = connect_in(&ns, "127.0.0.1:8080").unwrap();
    b.write_all(&[b'x'; 2000]).unwrap();
    let b_leg = recv(2000);
    assert!(nodelay_of(p.pid(), b_leg));
    drop((a, b));
    p.stop();
}

/// Out of fds on accept: the proxy backs off instead of spinning, and serves once fds are back.
fn out_of_fds_on_accept_backs_off_and_serves_once_fds_are_back(relay: Relay) {
    let ns = lab("pxemf");
    let dir = TempDir::new("pxemf");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7000"]);
    no_room_for_fds(p.pid());
    // The kernel completes the handshake; the proxy cannot accept it. Retried without a pause
    // (the loop's listener is level-triggered: left in the set, it is reported again at once;
    // tokio's accept loop would call accept again at once), it spins on epoll_wait and accept4.
    let (calls, mut c) = syscalls_during(p.pid(), "accept4,epoll_wait", || {
        let c = connect_in(&ns, "127.0.0.1:8080").unwrap();
        std::thread::sleep(Duration::from_secs(1));
        c
    });
    // About 10 of each per second per thread (one try per 100 ms backoff).
    assert!(calls < 200, "{calls} accept4 and epoll_wait calls in 1 s");
    set_nofile(p.pid(), 1024);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"after the shortage\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&c).read_line(&mut line).unwrap();
    assert_eq!(line, "after the shortage\n");
    drop(c);
    let log = p.stop();
    assert!(
        log.contains("accept on tcp 0.0.0.0:8080: Too many open files"),
        "{log}"
    );
    assert!(log.contains("connections=1 active=0"), "{log}");
}

on_both_relays!(
    out_of_fds_on_accept_backs_off_and_serves_once_fds_are_back_fast_path,
    out_of_fds_on_accept_backs_off_and_serves_once_fds_are_back_tokio_path
    => out_of_fds_on_accept_backs_off_and_serves_once_fds_are_back()
);

/// A backend that never answers the SYN: after 20 s the client is reset, and the log says why.
fn resets_the_client_when_the_backend_never_answers(relay: Relay) {
    let ns = lab("pxsilent");
    let dir = TempDir::new("pxsilent");
    // In this test's namespace only: every SYN to port 7998 is dropped, no answer comes.
    common::sh(&[
        "ip", "netns", "exec", &ns.name, "iptables", "-A", "OUTPUT", "-p", "tcp", "--dport",
        "7998", "-j", "DROP",
    ]);
    let p = relay.start(Some(&ns), &dir, &["8080", "127.0.0.1:7998"]);
    let mut c = connect_in(&ns, "127.0.0.1:8080").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut buf = [0u8; 16];
    let r = c.read(&mut buf);
    assert_eq!(
        r.as_ref().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    let log = p.stop();
    assert!(
        log.contains(
            "cannot connect to backend 127.0.0.1:7998: no answer within 20s; resetting the client"
        ),
        "{log}"
    );
    assert!(log.contains("connections=1 active=0"), "{log}");
    assert!(log.contains("dial_errors=1"), "{log}");
}

on_both_relays!(
    resets_the_client_when_the_backend_never_answers_fast_path,
    resets_the_client_when_the_backend_never_answers_tokio_path
    => resets_the_client_when_the_backend_never_answers()
);

// ---- A user's first tries (session 7): each found by running the command as printed ----

/// `nettool ARGS` in `ns` with the readiness pipe on fd 3: its answer, its exit code and its
/// stderr. One that says it is ready is killed (exit code None), so a check that it refuses
/// fails instead of hanging.
fn outcome(ns: &TestNs, args: &[&str], env: &[(&str, &str)]) -> (String, Option<i32>, String) {
    let mut cmd = nettool_in_ns(ns, args);
    cmd.envs(env.iter().copied());
    let (mut child, ready) = spawn_ready(cmd);
    if ready == "0\n" {
        unsafe { libc::kill(child.pid() as i32, libc::SIGKILL) };
    }
    let (code, err) = exit_of(&mut child);
    (ready, code, err)
}

/// docker-proxy mode (127.0.0.1:8080 -> 127.0.0.1:7000, no config file) with `env`: what
/// fd 3 said and the exit code.
fn docker_mode_outcome(ns: &TestNs, env: &[(&str, &str)]) -> (String, Option<i32>) {
    let mut env = env.to_vec();
    env.push(("NETTOOL_PROXY_CONFIG", "/nonexistent/nettool.toml"));
    let (ready, code, _) = outcome(
        ns,
        &docker_flags("tcp", ("127.0.0.1", "8080"), ("127.0.0.1", "7000")),
        &env,
    );
    (ready, code)
}

/// Two proxies on one UDP port: the second is refused and names the first. The UDP listener
/// used SO_REUSEADDR, so a second `nettool proxy udp:5353 ...` (or anything else that binds
/// with it, socat's UDP-RECV) started too and the two split the port's datagrams.
#[test]
fn a_udp_port_another_proxy_holds_is_refused_and_the_holder_named() {
    let ns = lab("pxudpheld");
    let dir = TempDir::new("pxudpheld");
    let first = start(Some(&ns), &dir, &["udp:127.0.0.1:5353", "127.0.0.1:53"]);
    let (ready, code, _) = outcome(
        &ns,
        &[
            "proxy",
            "--ready-fd",
            "3",
            "udp:127.0.0.1:5353",
            "127.0.0.1:53",
        ],
        &[],
    );
    assert_eq!(
        code,
        Some(1),
        "second proxy on the same UDP port; fd 3: {ready:?}"
    );
    assert!(
        ready.starts_with("1\ncannot listen on udp 127.0.0.1:5353")
            && ready.contains("Address already in use")
            && ready.contains(&format!("(held by pid {} (nettool))", first.pid())),
        "{ready}"
    );
    first.stop();
}

/// A port held on IPv6 only ([::]:8080 with IPV6_V6ONLY, as `socat TCP6-LISTEN:8080,ipv6only=1`):
/// the proxy's 0.0.0.0 half binds, its [::] half fails, and the error names the holder. It
/// named the proxy itself (its own 0.0.0.0:8080, matched across families). A dual-stack
/// holder ([::] without V6ONLY) takes 0.0.0.0:8080 too and is named for that.
#[test]
fn a_port_held_on_one_family_names_that_holder_not_the_proxy_itself() {
    let ns = lab("pxv6held");
    let me = std::process::id();
    for (v6only, fails_on) in [(true, "tcp [::]:8080"), (false, "tcp 0.0.0.0:8080")] {
        let holder = inside(&ns, move || {
            let s =
                socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
            s.set_only_v6(v6only).unwrap();
            s.set_reuse_address(true).unwrap();
            let a: SocketAddr = "[::]:8080".parse().unwrap();
            s.bind(&a.into())
                .unwrap_or_else(|e| panic!("bind [::]:8080 v6only={v6only}: {e}"));
            s.listen(8).unwrap();
            s
        });
        let (ready, code, _) = outcome(
            &ns,
            &["proxy", "--ready-fd", "3", "8080", "127.0.0.1:7000"],
            &[],
        );
        assert_eq!(code, Some(1), "v6only={v6only}; fd 3: {ready:?}");
        assert!(
            ready.starts_with(&format!("1\ncannot listen on {fails_on} "))
                && ready.contains(&format!("(held by pid {me} (")),
            "v6only={v6only}: the holder is this test (pid {me}): {ready}"
        );
        drop(holder);
    }
}

/// Two mappings that listen on one address and port: a usage error naming both (exit 2),
/// before anything is bound. TCP failed at bind time naming the proxy itself as the holder
/// (exit 1); UDP (SO_REUSEADDR) bound both and split the datagrams between them.
#[test]
fn overlapping_mappings_are_a_usage_error_naming_both() {
    let ns = lab("pxoverlap");
    for (maps, says) in [
        (
            ["-p", "8100-8105=127.0.0.1:80", "-p", "8103=127.0.0.1:81"],
            "tcp:8103=127.0.0.1:81 would listen on tcp 0.0.0.0:8103, which tcp:8100-8105=127.0.0.1:80 takes already",
        ),
        (
            ["-p", "udp:127.0.0.1:5353=127.0.0.1:53", "-p", "udp:5353=127.0.0.1:54"],
            "udp:5353=127.0.0.1:54 would listen on udp 0.0.0.0:5353, which udp:127.0.0.1:5353=127.0.0.1:53 takes already",
        ),
    ] {
        let mut args = vec!["proxy", "--ready-fd", "3"];
        args.extend(maps);
        let (ready, code, err) = outcome(&ns, &args, &[]);
        assert_eq!(code, Some(2), "{maps:?}: fd 3 {ready:?}, stderr {err}");
        assert!(err.contains(says), "{maps:?}: {err}");
        assert!(ready.starts_with("1\n") && ready.contains(says), "{ready}");
    }
}

/// `--json --dump-file F`: the counters line at exit ends F, after the stream it sums up. It
/// went to stdout, where a `jq` reading F never saw it. stdout is a file here (through a
/// shell's redirect: [`start`] sends it to /dev/null), which must stay empty.
#[test]
fn json_counters_end_the_dump_file_not_stdout() {
    let ns = lab("pxjsonctr");
    let dir = TempDir::new("pxjsonctr");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let f = dir.join("events.jsonl");
    let out = dir.join("stdout");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, "sh", "-c"])
        .arg(r#"out=$1; shift; exec "$@" >"$out""#)
        .args(["sh", out.to_str().unwrap(), BIN]);
    let p = start_cmd(
        cmd,
        &dir,
        &[
            "--json",
            "--dump-file",
            f.to_str().unwrap(),
            "127.0.0.1:8080",
            "127.0.0.1:7000",
        ],
        &[],
    );
    let back = inside(&ns, || {
        echo_once("127.0.0.1:8080".parse().unwrap(), b"ping")
    });
    assert_eq!(back.unwrap(), b"ping");
    wait_for("the connection's close event", 10, || {
        std::fs::read_to_string(&f).is_ok_and(|s| s.contains("\"event\":\"close\""))
    });
    p.stop();
    let stdout = std::fs::read_to_string(&out).expect("the proxy's stdout file");
    assert_eq!(stdout, "", "stdout got what belongs in {}", f.display());
    let text = std::fs::read_to_string(&f).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "counters", "{text}");
    assert_eq!(last["counters"]["connections"], 1, "{text}");
    assert_eq!(last["counters"]["bytes_c2s"], 4, "{text}");
}

/// A log, dump or pcap file whose directory does not exist (docs/proxy.md's config example
/// on a machine without /var/log/nettool): the error names the directory and how to make
/// it, in docker-proxy mode on fd 3 (so in `docker run`'s error). It said "--log-file" (not
/// an option there) and "cannot open dump destination" for the log file.
#[test]
fn a_file_in_a_missing_directory_names_the_directory() {
    let ns = lab("pxnodir");
    let dir = TempDir::new("pxnodir");
    let missing = dir.join("nettool");
    let hint = format!(
        "(the directory {0} does not exist: create it first, e.g. `mkdir -p -m 0700 {0}`)",
        missing.display()
    );
    let log = missing.join("docker-proxy.log");
    let docker = docker_flags("tcp", ("127.0.0.1", "8080"), ("127.0.0.1", "7000"));
    let (ready, code, _) = outcome(
        &ns,
        &docker,
        &[("NETTOOL_PROXY_LOG", log.to_str().unwrap())],
    );
    assert_eq!(code, Some(1), "{ready}");
    assert_eq!(
        ready,
        format!(
            "1\ncannot open the log file {} for appending: No such file or directory (os error 2) {hint}",
            log.display()
        )
    );
    let pcap = missing.join("p.pcap");
    let dump = missing.join("d.txt");
    for args in [
        ["--pcap", pcap.to_str().unwrap()],
        ["--dump-file", dump.to_str().unwrap()],
    ] {
        let mut a = vec!["proxy", "--ready-fd", "3", "--dump"];
        a.extend(args);
        a.extend(["127.0.0.1:8080", "127.0.0.1:7000"]);
        let (ready, code, err) = outcome(&ns, &a, &[]);
        assert_eq!(code, Some(1), "{args:?}: {ready}");
        assert!(
            ready.ends_with(&hint) && err.contains(&hint),
            "{args:?}: {ready} / {err}"
        );
    }
    assert!(!missing.exists());
}

/// `--pcap-max-mb` or `--pcap-files` without `--pcap` is a usage error, as `--dump-file`
/// without a dump is. Both were ignored without a word.
#[test]
fn pcap_limits_without_a_pcap_are_a_usage_error() {
    let ns = lab("pxpcapreq");
    for opt in [["--pcap-max-mb", "5"], ["--pcap-files", "3"]] {
        let mut a = vec!["proxy", "--ready-fd", "3"];
        a.extend(opt);
        a.extend(["127.0.0.1:8080", "127.0.0.1:7000"]);
        let (ready, code, err) = outcome(&ns, &a, &[]);
        assert_eq!(code, Some(2), "{opt:?}: fd 3 {ready:?}");
        assert!(err.contains("--pcap <FILE>"), "{opt:?}: {err}");
    }
}

/// Stopped with connections open (Ctrl-C mid-download): the stop line says how many are cut,
/// since the counters at exit count them as ended (`active=0`). Nothing said it. TCP
/// connections and UDP flows each in their words: a UDP flow was counted as a connection.
#[test]
fn the_stop_line_says_how_many_connections_it_cuts() {
    let ns = lab("pxstopcut");
    let dir = TempDir::new("pxstopcut");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let backend = inside(&ns, || UdpSocket::bind("127.0.0.1:7053").unwrap());
    backend
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let p = start(
        Some(&ns),
        &dir,
        &[
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
            "-p",
            "udp:127.0.0.1:5353=127.0.0.1:7053",
        ],
    );
    let open = open_echoed(&ns, "127.0.0.1:8080", 2);
    let client = inside(&ns, || UdpSocket::bind("127.0.0.1:0").unwrap());
    client.send_to(b"x", "127.0.0.1:5353").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(backend.recv(&mut buf).unwrap(), 1, "the flow's datagram");
    let log = p.stop();
    assert!(
        log.contains("SIGTERM: stopping; 2 TCP connections and 1 UDP flow open are closed now"),
        "{log}"
    );
    // The counters at exit count them all as ended (the UDP flow stayed in active=1).
    assert!(
        log.contains("counters at exit: connections=3 active=0 "),
        "{log}"
    );
    drop(open);
}

/// `-v` says how a connection ended in the dump's words ("close normal"), not Rust's Debug
/// form ("close Normal", `DialFailed("...")`).
#[test]
fn the_verbose_log_says_how_a_connection_closed_in_words() {
    let ns = lab("pxvclose");
    let dir = TempDir::new("pxvclose");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let p = start(Some(&ns), &dir, &["-v", "127.0.0.1:8080", "127.0.0.1:7000"]);
    let back = inside(&ns, || {
        echo_once("127.0.0.1:8080".parse().unwrap(), b"ping")
    });
    assert_eq!(back.unwrap(), b"ping");
    wait_for("the close line", 10, || p.log().contains("#1 close"));
    let log = p.stop();
    assert!(log.contains("#1 close normal c2s=4 s2c=4"), "{log}");
}

/// `--streams DIR` run again into the same directory: connection numbers start at 1 in every
/// run, so a client port that comes again names the same file. The new stream gets a file of
/// its own (`NAMEc2`, as tcpflow names them); it was appended to the earlier run's file,
/// two connections in one stream. An earlier run that left only the client's direction: the
/// answer's file takes `c2` too (it took the free name without, so a connection's two files
/// did not pair up), and the earlier file is left as it was (trying it made it 0600).
#[test]
fn streams_run_again_into_one_directory_keep_each_connection_apart() {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let ns = lab("pxstreams2");
    let dir = TempDir::new("pxstreams2");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let streams = dir.join("streams");
    std::fs::create_dir(&streams).unwrap();
    let name = "c000001-127.0.0.1.45001-127.0.0.1.7000";
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(streams.join(name))
        .unwrap()
        .write_all(b"an earlier run\n")
        .unwrap();
    // Not the umask's doing: the earlier run's mode, whatever the umask.
    std::fs::set_permissions(streams.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    let answer = "c000001-127.0.0.1.7000-127.0.0.1.45001";
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--streams",
            streams.to_str().unwrap(),
            "127.0.0.1:8080",
            "127.0.0.1:7000",
        ],
    );
    let mut c = connect_from_port(&ns, 45001, "127.0.0.1:8080");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"this run\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"this run\n");
    wait_for("the connection's end", 10, || {
        std::fs::read(streams.join(format!("{name}c2"))).is_ok_and(|b| b == b"this run\n")
    });
    p.stop();
    assert!(
        !streams.join(answer).exists(),
        "the answer's file took the name without c2"
    );
    assert_eq!(
        std::fs::read_to_string(streams.join(format!("{answer}c2"))).unwrap(),
        "this run\n"
    );
    assert_eq!(
        std::fs::read_to_string(streams.join(name)).unwrap(),
        "an earlier run\n"
    );
    let mode = std::fs::metadata(streams.join(name))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644, "the earlier run's file was changed");
}

/// A target written v4-mapped (`[::ffff:127.0.0.1]:8080`) is dialled as IPv4: pointed at the
/// proxy's own IPv4 listener it is refused like `127.0.0.1:8080` (it started and would have
/// connected to itself for every connection), and an IPv6-only listener with a v4-mapped
/// target of its port is not itself (it was refused).
#[test]
fn a_v4_mapped_target_is_judged_as_the_ipv4_address_it_dials() {
    let ns = lab("pxmapped");
    let (ready, code, err) = outcome(
        &ns,
        &[
            "proxy",
            "--ready-fd",
            "3",
            "127.0.0.1:8080",
            "[::ffff:127.0.0.1]:8080",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "fd 3 {ready:?}, stderr {err}");
    assert!(
        err.contains("the target is this proxy's own listening socket"),
        "{err}"
    );
    let (ready, code, err) = outcome(
        &ns,
        &[
            "proxy",
            "--ready-fd",
            "3",
            "[::]:8080",
            "[::ffff:10.9.0.1]:8080",
        ],
        &[],
    );
    assert_eq!((ready.as_str(), code), ("0\n", None), "{err}");
}

/// A port range with more listeners than the open-file limit allows: the error says how many
/// sockets the mappings ask for and the limit, and what to do. It said only "Too many open
/// files (os error 24)" on one port of the range.
#[test]
fn a_range_over_the_open_file_limit_says_the_limit() {
    let ns = lab("pxnofile");
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=200:200", "ip", "netns", "exec", &ns.name, BIN])
        .args([
            "proxy",
            "--ready-fd",
            "3",
            "-p",
            "20000-20199=127.0.0.1:7000",
        ]);
    let (mut child, ready) = spawn_ready(cmd);
    let code = child.0.wait().unwrap().code();
    assert_eq!(code, Some(1), "{ready}");
    assert!(
        ready.contains("Too many open files")
            && ready.contains(
                "(the mappings ask for 400 listening sockets and the open-file limit is 200: raise it"
            ),
        "{ready}"
    );
}

/// `--ready-fd` 0, 1 or 2 is a usage error. Answered and closed, the number went to the
/// proxy's next socket, and what the proxy writes to that std stream into a connection:
/// `--ready-fd 2 -v` wrote its log lines into the client's and backend's sockets, `--ready-fd
/// 1 --dump` its dump (the client got nothing, the connection was reset).
#[test]
fn a_ready_fd_on_a_std_stream_is_refused() {
    let ns = lab("pxreadystd");
    for (fd, stream) in [("0", "stdin"), ("1", "stdout"), ("2", "stderr")] {
        let mut child = ChildGuard(
            nettool_in_ns(
                &ns,
                &[
                    "proxy",
                    "-v",
                    "--dump",
                    "--ready-fd",
                    fd,
                    "127.0.0.1:8080",
                    "127.0.0.1:7000",
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        );
        // Bounded: a proxy that took the number would serve on and never exit.
        wait_for("the proxy to exit", 10, || {
            child.0.try_wait().unwrap().is_some()
        });
        let (code, err) = exit_of(&mut child);
        assert_eq!(code, Some(2), "--ready-fd {fd}: {err}");
        assert!(
            err.contains(&format!(
                "--ready-fd {fd}: descriptor {fd} is the proxy's {stream}; pass a pipe on 3 or above"
            )),
            "{err}"
        );
    }
}

/// `--pcap -` streams the capture to stdout, as `tcpdump -w -` does (for `| tshark -r -`). It
/// wrote a file named `-` in the working directory and nothing to stdout. With a dump on
/// stdout too, or rotation, it is a usage error.
#[test]
fn pcap_dash_streams_the_capture_to_stdout() {
    let ns = lab("pxpcapdash");
    let dir = TempDir::new("pxpcapdash");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let captured = dir.join("stdout.pcap");
    let mut cmd = nettool_in_ns(
        &ns,
        &[
            "proxy",
            "--ready-fd",
            "3",
            "--pcap",
            "-",
            "127.0.0.1:8080",
            "127.0.0.1:7000",
        ],
    );
    cmd.current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&captured).unwrap())
        .stderr(Stdio::null());
    let (r, w) = ready_pipe(&mut cmd);
    let child = ChildGuard(cmd.spawn().unwrap());
    drop(w);
    assert_eq!(read_ready(r), "0\n");
    let back = inside(&ns, || {
        echo_once("127.0.0.1:8080".parse().unwrap(), b"ping")
    });
    assert_eq!(back.unwrap(), b"ping");
    term(child);
    // Both legs: handshakes, "ping" each way, FINs (14 records).
    let n = tshark_reads(&captured);
    assert_eq!(n, 14, "packets on stdout");
    assert!(!dir.join("-").exists(), "a file named '-' was written");
    for (args, says) in [
        (&["--dump"][..], "give those a --dump-file"),
        (&["--pcap-files", "3"], "cannot rotate"),
    ] {
        let mut a = vec!["proxy", "--ready-fd", "3", "--pcap", "-"];
        a.extend(args);
        a.extend(["127.0.0.1:8080", "127.0.0.1:7000"]);
        let (ready, code, err) = outcome(&ns, &a, &[]);
        assert_eq!(code, Some(2), "{args:?}: {ready}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `--dump-file /dev/stdout`, `--pcap /dev/stdout`, `--log-file /dev/stderr`: refused (they
/// are symlinks), with what to write instead. The refusal said "remove the link or give
/// another path": advice to remove /dev/stdout.
#[test]
fn a_std_stream_named_as_a_file_is_refused_with_what_to_write_instead() {
    let ns = lab("pxdevstd");
    for (args, says) in [
        (
            &["--dump", "--dump-file", "/dev/stdout"][..],
            "cannot open dump destination /dev/stdout: it names this process's stdout, not a file: a dump goes to stdout without --dump-file, a pcap with --pcap -",
        ),
        (
            &["--pcap", "/proc/self/fd/1"],
            "cannot open dump destination /proc/self/fd/1: it names this process's stdout",
        ),
        (
            &["--log-file", "/dev/stderr"],
            "cannot open the log file /dev/stderr: it names this process's stderr, not a file: the log goes to stderr without --log-file",
        ),
    ] {
        let mut a = vec!["proxy", "--ready-fd", "3"];
        a.extend(args);
        a.extend(["127.0.0.1:8080", "127.0.0.1:7000"]);
        let (ready, code, _) = outcome(&ns, &a, &[]);
        assert_eq!(code, Some(1), "{args:?}: {ready}");
        assert!(ready.contains(says), "{args:?}: {ready}");
        assert!(!ready.contains("remove the link"), "{args:?}: {ready}");
    }
}

/// The same refusals in docker-proxy mode name the setting to change there (config key and
/// NETTOOL_PROXY_* variable): they told a drop-in, which has no such options and whose
/// stdout/stderr dockerd discards, to use --log-file, --dump-file or --pcap -.
#[test]
fn a_std_stream_named_in_docker_proxy_mode_names_the_setting() {
    let ns = lab("pxdstd");
    for (env, says) in [
        (
            &[("NETTOOL_PROXY_LOG", "/dev/stderr")][..],
            "cannot open the log file /dev/stderr: it names this process's stderr, not a file (dockerd discards it): set `log` in the config file (NETTOOL_PROXY_LOG) to a file path, `syslog` or `syslog:SOCKET`",
        ),
        (
            &[
                ("NETTOOL_PROXY_DUMP", "text"),
                ("NETTOOL_PROXY_DUMP_FILE", "/dev/stdout"),
            ],
            "cannot open dump destination /dev/stdout: it names this process's stdout, not a file (dockerd discards it): set `dump_file` in the config file (NETTOOL_PROXY_DUMP_FILE) to a file path",
        ),
        (
            &[("NETTOOL_PROXY_PCAP", "/proc/self/fd/1")],
            "cannot open dump destination /proc/self/fd/1: it names this process's stdout, not a file (dockerd discards it): set `pcap` in the config file (NETTOOL_PROXY_PCAP) to a file path",
        ),
    ] {
        let (ready, code) = docker_mode_outcome(&ns, env);
        assert_eq!(code, Some(1), "{env:?}: {ready}");
        assert!(ready.contains(says), "{env:?}: {ready}");
        assert!(!ready.contains("--"), "{env:?}: {ready}");
    }
}

/// docker-proxy mode: a dump or capture that would go to stdout, which dockerd discards
/// (`pcap = "-"`; a dump with no `dump_file` and no log file), is refused on fd 3 with the
/// setting to change, and the refusal is in the log file when there is one. `pcap = "-"`
/// streamed into the void with no word; the dump only warned in a log that may not exist.
#[test]
fn a_dump_to_stdout_in_docker_proxy_mode_is_refused_on_fd_3() {
    let ns = lab("pxdsout");
    let dir = TempDir::new("pxdsout");
    let log = dir.join("dp.log");
    let log_s = log.to_str().unwrap();
    for (env, says) in [
        (
            &[("NETTOOL_PROXY_PCAP", "-")][..],
            "pcap = \"-\" writes the capture to stdout, which dockerd discards: set `pcap` in the config file (NETTOOL_PROXY_PCAP) to a file path",
        ),
        (
            &[("NETTOOL_PROXY_PCAP", "-"), ("NETTOOL_PROXY_LOG", log_s)],
            "pcap = \"-\" writes the capture to stdout",
        ),
        (
            &[("NETTOOL_PROXY_DUMP", "hex")],
            "dump = \"hex\" has no file: no `dump_file` (NETTOOL_PROXY_DUMP_FILE) and the log is not a file, so it would go to stdout, which dockerd discards: set `dump_file` in the config file (NETTOOL_PROXY_DUMP_FILE) to a file path",
        ),
    ] {
        let (ready, code) = docker_mode_outcome(&ns, env);
        assert_eq!(code, Some(1), "{env:?}: {ready}");
        assert!(ready.starts_with("1\n") && ready.contains(says), "{env:?}: {ready}");
        if env.iter().any(|(k, _)| *k == "NETTOOL_PROXY_LOG") {
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(logged.contains(says), "not in the log: {logged}");
        }
    }
    // The dump goes to the log file when that is a file: still served.
    let (ready, _) = docker_mode_outcome(
        &ns,
        &[("NETTOOL_PROXY_DUMP", "text"), ("NETTOOL_PROXY_LOG", log_s)],
    );
    assert_eq!(ready, "0\n");
}

/// A stop with a TCP connection and a UDP flow open: the JSON dump closes each of them with
/// reason "shutdown" and the bytes it saw, and the counters line comes last. Neither a UDP
/// flow nor a TCP connection cut at the stop got a `close` event, so a reader could not tell
/// which were live at the stop.
#[test]
fn a_stop_closes_every_open_flow_in_the_dump() {
    let ns = lab("pxstopclose");
    let dir = TempDir::new("pxstopclose");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let backend = inside(&ns, || UdpSocket::bind("127.0.0.1:7053").unwrap());
    backend
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let dump = dir.join("dump.json");
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--json",
            "--dump-file",
            dump.to_str().unwrap(),
            "-p",
            "127.0.0.1:8080=127.0.0.1:7000",
            "-p",
            "udp:127.0.0.1:5353=127.0.0.1:7053",
        ],
    );
    let open = open_echoed(&ns, "127.0.0.1:8080", 1);
    let client = inside(&ns, || UdpSocket::bind("127.0.0.1:0").unwrap());
    client.send_to(b"xyz", "127.0.0.1:5353").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(backend.recv(&mut buf).unwrap(), 3, "the flow's datagram");
    p.stop();
    let text = std::fs::read_to_string(&dump).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for proto in ["tcp", "udp"] {
        let close: Vec<_> = lines
            .iter()
            .filter(|l| l["event"] == "close" && l["conn"]["transport"] == proto)
            .collect();
        assert_eq!(close.len(), 1, "{proto}: one close event:\n{text}");
        assert_eq!(close[0]["reason"], "shutdown", "{proto}:\n{text}");
        // The bytes the dump saw: "conn 0\n" each way, the datagram one way.
        let bytes = (&close[0]["bytes_c2s"], &close[0]["bytes_s2c"]);
        let want = if proto == "tcp" { (7, 7) } else { (3, 0) };
        assert_eq!(
            (bytes.0, bytes.1),
            (&want.0.into(), &want.1.into()),
            "{proto}:\n{text}"
        );
    }
    assert_eq!(lines.last().unwrap()["event"], "counters", "{text}");
    drop(open);
}

/// `--streams`: a connection's two files are made together, at its first data, so another
/// process sharing the directory cannot take the answer's name in between and split the pair
/// (the request in `NAME`, the answer in `PARTNERc2`). A direction that carried nothing has no
/// file left at the close.
#[test]
fn a_streams_pair_is_made_together_and_cannot_be_split() {
    let ns = lab("pxstrpair");
    let dir = TempDir::new("pxstrpair");
    let l = listen_in(&ns, "127.0.0.1:7000");
    let (go, gate) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // The first connection's answer waits for the test; the second gets none.
        let (mut s, _) = l.accept().unwrap();
        let mut req = [0u8; 8];
        s.read_exact(&mut req).unwrap();
        gate.recv().unwrap();
        s.write_all(b"answer\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let streams = dir.join("streams");
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--streams",
            streams.to_str().unwrap(),
            "127.0.0.1:8080",
            "127.0.0.1:7000",
        ],
    );
    let request = "c000001-127.0.0.1.46001-127.0.0.1.7000";
    let answer = "c000001-127.0.0.1.7000-127.0.0.1.46001";
    let mut c = connect_from_port(&ns, 46001, "127.0.0.1:8080");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"request\n").unwrap();
    wait_for("the request's file", 10, || streams.join(request).exists());
    // Another process in the directory takes the answer's name now, if it is free.
    let taken = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(streams.join(answer));
    go.send(()).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"answer\n");
    drop(c);
    let mut silent = connect_from_port(&ns, 46002, "127.0.0.1:8080");
    silent.write_all(b"no answer\n").unwrap();
    silent.shutdown(Shutdown::Write).unwrap();
    let mut none = Vec::new();
    silent.read_to_end(&mut none).unwrap();
    assert!(none.is_empty());
    wait_for("the silent connection's file", 10, || {
        std::fs::read(streams.join("c000002-127.0.0.1.46002-127.0.0.1.7000"))
            .is_ok_and(|b| b == b"no answer\n")
    });
    p.stop();
    let mut files: Vec<String> = std::fs::read_dir(&streams)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        std::fs::read_to_string(streams.join(answer)).unwrap_or_default(),
        "answer\n",
        "the pair was split: {files:?}"
    );
    assert_eq!(
        taken.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::AlreadyExists),
        "the answer's name was free after the request's file was made"
    );
    assert_eq!(
        files,
        [request, answer, "c000002-127.0.0.1.46002-127.0.0.1.7000"],
        "the silent direction's file is gone"
    );
}

/// `--streams` with one-way connections (requests, no answer yet): each holds its request's
/// file open, not the answer's too. The pair is made at the first data, but the answer's file
/// is opened only at the answer's first byte.
#[test]
fn a_one_way_connection_holds_one_stream_file_open() {
    let ns = lab("pxstrfd");
    let dir = TempDir::new("pxstrfd");
    let l = listen_in(&ns, "127.0.0.1:7000");
    let (done, end) = std::sync::mpsc::channel::<()>();
    let k = 3;
    std::thread::spawn(move || {
        // Accepted and held, never answered.
        let held: Vec<_> = (0..k).map(|_| l.accept().unwrap()).collect();
        let _ = end.recv();
        drop(held);
    });
    let streams = dir.join("streams");
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--streams",
            streams.to_str().unwrap(),
            "127.0.0.1:8080",
            "127.0.0.1:7000",
        ],
    );
    let base = p.fds();
    let mut clients: Vec<TcpStream> = (0..k)
        .map(|_| connect_in(&ns, "127.0.0.1:8080").unwrap())
        .collect();
    for c in clients.iter_mut() {
        c.write_all(b"request\n").unwrap();
    }
    wait_for("the requests' files written", 10, || {
        std::fs::read_dir(&streams).is_ok_and(|d| {
            d.flatten()
                .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
                .count()
                == k
        })
    });
    // Each connection: its two sockets and one file.
    let held = p.fds() - base;
    drop(clients);
    let _ = done.send(());
    p.stop();
    assert_eq!(held, 3 * k, "fds held by {k} one-way connections");
}

/// From inside `ns`, `ping` sent through `addr` to an [`echo_backend`] comes back.
fn pings_through(ns: &TestNs, addr: SocketAddr, p: &Proxy) {
    let got = inside(ns, move || echo_once(addr, b"ping"));
    assert_eq!(got.unwrap_or_default(), b"ping", "{addr}: {}", p.log());
}

/// Stop `p`, which served `n` connections and failed no dial; its log.
fn stop_after_dialling(p: Proxy, n: usize) -> String {
    let log = p.stop();
    assert!(log.contains(&format!("connections={n} active=0")), "{log}");
    assert!(log.contains("dial_errors=0"), "{log}");
    log
}

/// `nettool proxy ARGS` inside `ns` on `relay`, reading `hosts` as its /etc/hosts: a bind
/// mount in a mount namespace of its own (`unshare --mount`), so the machine's file is
/// neither read nor changed and the test does not depend on what it holds.
fn start_with_hosts(relay: Relay, ns: &TestNs, dir: &TempDir, hosts: &str, args: &[&str]) -> Proxy {
    let file = dir.join("hosts");
    std::fs::write(&file, hosts).unwrap();
    start_with_files(relay, ns, dir, &[(&file, "/etc/hosts")], args)
}

/// `nettool proxy ARGS` inside `ns` on `relay`, each file of `mounts` bind-mounted on the
/// path beside it in a mount namespace of its own (`unshare --mount`): the machine's files
/// are neither read nor changed.
fn start_with_files(
    relay: Relay,
    ns: &TestNs,
    dir: &TempDir,
    mounts: &[(&Path, &str)],
    args: &[&str],
) -> Proxy {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; shift 2; done; shift; exec "$@""#)
        .arg("sh");
    for (file, on) in mounts {
        c.arg(file).arg(on);
    }
    c.arg("--").args(["ip", "netns", "exec", &ns.name, BIN]);
    let fast = match relay {
        Relay::FastPath => "1",
        Relay::Tokio => "0",
    };
    start_cmd(c, dir, args, &[("NETTOOL_PROXY_FASTPATH", fast)])
}

/// `localhost` as Debian's /etc/hosts has it (127.0.0.1 and ::1): the listen name listens on
/// both addresses, and the target name is dialled in the resolver's order ([::1] first, by
/// RFC 6724's precedence) until one connects: the backend is on 127.0.0.1 only, so every
/// connection is refused on [::1] and then made on 127.0.0.1. socat's `TCP:` prefix too.
fn a_name_listens_on_each_address_and_is_dialled_in_order(relay: Relay) {
    let ns = lab("pxname");
    let dir = TempDir::new("pxname");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    let p = start_with_hosts(
        relay,
        &ns,
        &dir,
        "127.0.0.1 localhost\n::1 localhost\n",
        &["localhost:8080", "TCP:localhost:7000"],
    );
    let log = p.log();
    assert!(
        log.contains("info: localhost is ::1, 127.0.0.1 (/etc/hosts)"),
        "{log}"
    );
    for l in ["[::1]:8080", "127.0.0.1:8080"] {
        let line = format!("listening on tcp {l} -> [::1]:7000 or 127.0.0.1:7000");
        assert!(log.contains(&line), "{line}:\n{log}");
    }
    for addr in ["127.0.0.1:8080", "[::1]:8080"] {
        pings_through(&ns, addr.parse().unwrap(), &p);
    }
    stop_after_dialling(p, 2);
}

on_both_relays!(
    a_name_listens_on_each_address_and_is_dialled_in_order_fast_path,
    a_name_listens_on_each_address_and_is_dialled_in_order_tokio_path =>
        a_name_listens_on_each_address_and_is_dialled_in_order()
);

/// `localhost` from the machine's own /etc/hosts (whichever of 127.0.0.1 and ::1 it lists,
/// the backends listen on both) as a TCP and a UDP target; a name nothing resolves, on the
/// target or the listen side, is a usage error (exit 2) that names it.
#[test]
fn a_hosts_file_name_is_a_target_and_an_unknown_name_is_a_usage_error() {
    let ns = lab("pxhosts");
    let dir = TempDir::new("pxhosts");
    for a in ["127.0.0.1:7000", "[::1]:7000"] {
        echo_backend(listen_in(&ns, a));
        let a: SocketAddr = a.parse().unwrap();
        udp_peer_backend(inside(&ns, move || UdpSocket::bind(a).unwrap()));
    }
    let p = start(
        Some(&ns),
        &dir,
        &[
            "-p",
            "127.0.0.1:8080=localhost:7000",
            "-p",
            "udp:127.0.0.1:8080=localhost:7000",
        ],
    );
    let log = p.log();
    let listening = log.lines().filter(|l| l.contains("listening on"));
    assert!(
        listening.clone().count() == 2 && listening.clone().all(|l| !l.contains("localhost")),
        "the listening lines show addresses:\n{log}"
    );
    assert!(log.contains("info: localhost is "), "{log}");
    pings_through(&ns, "127.0.0.1:8080".parse().unwrap(), &p);
    let answer = inside(&ns, || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(b"x", "127.0.0.1:8080").unwrap();
        let mut b = [0u8; 100];
        s.recv(&mut b).map(|n| n > 0)
    });
    assert!(answer.unwrap_or(false), "no UDP answer: {}", p.log());
    p.stop();
    for args in [
        &["proxy", "8080", "nosuch.invalid:80"][..],
        &["proxy", "-p", "nosuch.invalid:8080=127.0.0.1:80"],
    ] {
        let t = exits_saying(&ns, args, 2, "cannot resolve 'nosuch.invalid'");
        assert!(!t.contains("panicked"), "{t}");
    }
}

/// socat's own listen forms, as a socat user types them: `TCP-LISTEN:8080,fork,reuseaddr`
/// relays (on 0.0.0.0 only: socat's TCP-LISTEN listens on IPv4), `UDP-LISTEN:` relays a
/// datagram, `bind=` is the address listened on, and an option the proxy does not take is a
/// usage error (exit 2) that names it.
#[test]
fn socat_listen_forms_relay_and_an_unknown_option_is_named() {
    let ns = lab("pxsocat");
    let dir = TempDir::new("pxsocat");
    echo_backend(listen_in(&ns, "127.0.0.1:7000"));
    udp_peer_backend(inside(&ns, || UdpSocket::bind("127.0.0.1:7001").unwrap()));
    let p = start(
        Some(&ns),
        &dir,
        &["TCP-LISTEN:8080,fork,reuseaddr", "TCP:127.0.0.1:7000"],
    );
    let log = p.log();
    let listening: Vec<&str> = log.lines().filter(|l| l.contains("listening on")).collect();
    assert!(
        listening.len() == 1
            && listening[0].contains("listening on tcp 0.0.0.0:8080 -> 127.0.0.1:7000"),
        "{log}"
    );
    pings_through(&ns, "127.0.0.1:8080".parse().unwrap(), &p);
    stop_after_dialling(p, 1);

    let p = start(
        Some(&ns),
        &dir,
        &["UDP-LISTEN:5353,fork,reuseaddr", "UDP:127.0.0.1:7001"],
    );
    let seen = inside(&ns, || {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"ping", "127.0.0.1:5353").unwrap();
        let mut buf = [0u8; 100];
        c.recv(&mut buf)
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    assert!(
        seen.is_ok(),
        "no UDP answer through UDP-LISTEN: {}",
        p.log()
    );
    assert!(
        p.log()
            .contains("listening on udp 0.0.0.0:5353 -> 127.0.0.1:7001"),
        "{}",
        p.log()
    );
    p.stop();

    let p = start(
        Some(&ns),
        &dir,
        &["TCP4-LISTEN:8081,bind=10.9.0.1,fork", "127.0.0.1:7000"],
    );
    assert!(
        p.log()
            .contains("listening on tcp 10.9.0.1:8081 -> 127.0.0.1:7000"),
        "{}",
        p.log()
    );
    pings_through(&ns, "10.9.0.1:8081".parse().unwrap(), &p);
    assert!(
        connect_in(&ns, "127.0.0.1:8081").is_err(),
        "bind=10.9.0.1 listened on 127.0.0.1 too"
    );
    p.stop();

    for (args, says) in [
        (
            &["proxy", "TCP-LISTEN:8082,fork,backlog=5", "TCP:127.0.0.1:7000"][..],
            "socat option 'backlog=5' of TCP-LISTEN: is not taken; nettool proxy takes fork and reuseaddr",
        ),
        (
            &["proxy", "-p", "TCP-LISTEN:8082,max-children=3=TCP:127.0.0.1:7000"],
            "socat option 'max-children=3' of TCP-LISTEN: is not taken",
        ),
        (
            &["proxy", "TCP-LISTEN:8082", "UDP:127.0.0.1:7001"],
            "the target says udp but the mapping is tcp",
        ),
        (
            &["proxy", "--udp", "TCP-LISTEN:8082", "127.0.0.1:7001"],
            "--udp contradicts TCP-LISTEN",
        ),
    ] {
        let t = exits_saying(&ns, args, 2, says);
        assert!(!t.contains("panicked"), "{t}");
    }
}

use common::names::{name_server, NsAnswer};

/// A backend that writes the address it was reached on and closes.
fn who_backend(l: TcpListener) {
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let me = c.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let _ = c.write_all(me.as_bytes());
        }
    });
}

/// From inside `ns`, which backend a connection to `addr` reached ("" when the proxy reset it).
fn who_through(ns: &TestNs, addr: &str) -> String {
    let addr = addr.to_string();
    inside(ns, move || {
        let mut s = match TcpStream::connect(addr.as_str()) {
            Ok(s) => s,
            Err(_) => return String::new(),
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

/// A UDP backend that answers each datagram with the address it was sent to.
fn udp_who_backend(s: UdpSocket) {
    std::thread::spawn(move || {
        let me = s.local_addr().unwrap().to_string();
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(me.as_bytes(), from);
        }
    });
}

/// From inside `ns`, a new UDP flow through `addr`: which backend answered.
fn udp_who_through(ns: &TestNs, addr: &str) -> String {
    let addr = addr.to_string();
    inside(ns, move || {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"who", addr.as_str()).unwrap();
        let mut buf = [0u8; 100];
        c.recv(&mut buf)
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
            .unwrap_or_default()
    })
}

/// Connect through `addr` every 100 ms until `want` is reached (at most `secs`).
fn dial_until(ns: &TestNs, addr: &str, want: &str, secs: u64, p: &Proxy) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if who_through(ns, addr) == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{addr} never reached {want} in {secs} s; log:\n{}", p.log());
}

/// `nettool proxy ARGS` inside `ns` on `relay`, with `hosts` and `resolv` as its /etc/hosts
/// and /etc/resolv.conf (bind mounts in a mount namespace of its own, as
/// [`start_with_hosts`]): the files can be rewritten in place while it runs.
fn start_with_resolver(
    relay: Relay,
    ns: &TestNs,
    hosts: &Path,
    resolv: &Path,
    args: &[&str],
    dir: &TempDir,
) -> Proxy {
    let mounts = [(hosts, "/etc/hosts"), (resolv, "/etc/resolv.conf")];
    start_with_files(relay, ns, dir, &mounts, args)
}

/// A target name is resolved again while the proxy runs: a DNS answer once its TTL is past
/// (the dial that finds it old still goes to the old address; the next ones to the new),
/// at once when every address failed a connection's dial (the answer before had a TTL of an
/// hour), a name that stops resolving keeps its last address (said once), and a hosts-file
/// line is read again. Each change is logged once.
fn a_target_name_follows_its_dns_answer_and_hosts_line(relay: Relay) {
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex};
    let ns = lab("pxredns");
    let dir = TempDir::new("pxredns");
    who_backend(listen_in(&ns, "127.0.0.1:7000"));
    who_backend(listen_in(&ns, "10.9.0.1:7000"));
    for a in ["127.0.0.1:7001", "10.9.0.1:7001"] {
        udp_who_backend(inside(&ns, move || UdpSocket::bind(a).unwrap()));
    }
    let lo = Ipv4Addr::LOCALHOST;
    let answer = Arc::new(Mutex::new(NsAnswer::A(lo, 1)));
    name_server(&ns, "db.test", answer.clone());
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost db.hosts\n").unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let p = start_with_resolver(
        relay,
        &ns,
        &hosts,
        &resolv,
        &[
            "-p",
            "127.0.0.1:8080=TCP:db.test:7000",
            "-p",
            "127.0.0.1:8081=db.hosts:7000",
            "-p",
            "udp:127.0.0.1:8082=UDP:db.test:7001",
        ],
        &dir,
    );
    let log = p.log();
    assert!(
        log.contains("info: db.test is 127.0.0.1 (DNS, TTL 1 s)"),
        "{log}"
    );
    assert!(
        log.contains("info: db.hosts is 127.0.0.1 (/etc/hosts)"),
        "{log}"
    );
    assert_eq!(who_through(&ns, "127.0.0.1:8080"), "127.0.0.1:7000");
    assert_eq!(who_through(&ns, "127.0.0.1:8081"), "127.0.0.1:7000");
    assert_eq!(udp_who_through(&ns, "127.0.0.1:8082"), "127.0.0.1:7001");

    // The TTL is past: followed.
    *answer.lock().unwrap() = NsAnswer::A("10.9.0.1".parse().unwrap(), 1);
    dial_until(&ns, "127.0.0.1:8080", "10.9.0.1:7000", 10, &p);
    // One name in two mappings is one list: a new UDP flow goes to the new address too.
    assert_eq!(udp_who_through(&ns, "127.0.0.1:8082"), "10.9.0.1:7001");
    // An answer for an hour that nothing serves: its dials fail...
    *answer.lock().unwrap() = NsAnswer::A("127.0.0.9".parse().unwrap(), 3600);
    dial_until(&ns, "127.0.0.1:8080", "", 10, &p);
    // ...and every address failing asks again at once, not in an hour.
    *answer.lock().unwrap() = NsAnswer::A(lo, 1);
    dial_until(&ns, "127.0.0.1:8080", "127.0.0.1:7000", 10, &p);
    // It stops resolving: the last address stays, said once.
    *answer.lock().unwrap() = NsAnswer::Fail;
    wait_for("the name's failure in the log", 10, || {
        let _ = who_through(&ns, "127.0.0.1:8080");
        std::thread::sleep(Duration::from_millis(200));
        p.log().contains("db.test does not resolve now")
    });
    for _ in 0..3 {
        assert_eq!(who_through(&ns, "127.0.0.1:8080"), "127.0.0.1:7000");
    }
    // The hosts file's line, rewritten in place.
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.9.0.1 db.hosts\n").unwrap();
    dial_until(&ns, "127.0.0.1:8081", "10.9.0.1:7000", 15, &p);
    let log = p.stop();
    for line in [
        "info: db.test now resolves to 10.9.0.1 (was 127.0.0.1)",
        "info: db.test now resolves to 127.0.0.9 (was 10.9.0.1)",
        "warn: #",
        "cannot connect to backend 127.0.0.9:7000",
        "info: db.test now resolves to 127.0.0.1 (was 127.0.0.9)",
        "warn: db.test does not resolve now (nameserver 127.0.0.1:53 answered Server Failure)",
        "); dials go on to its last addresses, 127.0.0.1",
        "info: db.hosts now resolves to 10.9.0.1 (was 127.0.0.1)",
    ] {
        assert!(log.contains(line), "{line}:\n{log}");
    }
    for once in [
        "db.test now resolves to 10.9.0.1",
        "db.test does not resolve now",
        "db.hosts now resolves",
    ] {
        assert_eq!(log.matches(once).count(), 1, "{once}:\n{log}");
    }
}

/// A target name whose new answer is the proxy's own listener (same namespace, same port)
/// would make every connection open another one to itself until descriptors run out: the
/// address is not dialled, said once, and the last list stays.
#[test]
fn a_target_names_new_answer_that_is_the_proxys_own_listener_is_not_dialled() {
    use std::sync::{Arc, Mutex};
    let ns = lab("pxreself");
    let dir = TempDir::new("pxreself");
    who_backend(listen_in(&ns, "10.9.0.1:8080"));
    let answer = Arc::new(Mutex::new(NsAnswer::A("10.9.0.1".parse().unwrap(), 1)));
    name_server(&ns, "db.test", answer.clone());
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let p = start_with_resolver(
        Relay::FastPath,
        &ns,
        &hosts,
        &resolv,
        &["127.0.0.1:8080", "db.test"],
        &dir,
    );
    assert_eq!(who_through(&ns, "127.0.0.1:8080"), "10.9.0.1:8080");
    *answer.lock().unwrap() = NsAnswer::A("127.0.0.1".parse().unwrap(), 1);
    let base = p.fds();
    wait_for("the own-listener line", 10, || {
        assert_eq!(
            who_through(&ns, "127.0.0.1:8080"),
            "10.9.0.1:8080",
            "{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(200));
        p.log().contains("db.test resolves to 127.0.0.1, which is this proxy's own listener 127.0.0.1:8080: not dialled")
    });
    // Past another TTL: still the last good address, and said once.
    std::thread::sleep(Duration::from_millis(1200));
    for _ in 0..3 {
        assert_eq!(who_through(&ns, "127.0.0.1:8080"), "10.9.0.1:8080");
    }
    assert!(
        p.fds() <= base + 2,
        "descriptors grew from {base} to {}",
        p.fds()
    );
    let log = p.stop();
    assert_eq!(
        log.matches("which is this proxy's own listener").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("now resolves to 127.0.0.1"), "{log}");
}

on_both_relays!(
    a_target_name_follows_its_dns_answer_and_hosts_line_fast_path,
    a_target_name_follows_its_dns_answer_and_hosts_line_tokio_path =>
        a_target_name_follows_its_dns_answer_and_hosts_line()
);

/// The index of interface `dev` inside `ns`.
fn ifindex_in(ns: &TestNs, dev: &str) -> u32 {
    let dev = dev.to_string();
    inside(ns, move || {
        nix::net::if_::if_nametoindex(dev.as_str()).unwrap()
    })
}

/// Link-local IPv6 with its interface, listen and target, across veths: a client in A dials
/// the proxy's listener in B, whose backend is in C. nettool itself runs in the test's
/// namespace and the interfaces exist only in B (--listen-netns and --target-netns): a zone
/// looked up where nettool runs would not be found. By name and by index.
fn link_local_addresses_with_their_interface(relay: Relay) {
    let (a, b, c) = (
        TestNs::new("pxlla"),
        TestNs::new("pxllb"),
        TestNs::new("pxllc"),
    );
    let (a0, b0) = (common::unique_ifname("la"), common::unique_ifname("lb"));
    let (b1, c1) = (common::unique_ifname("lb"), common::unique_ifname("lc"));
    common::veth(&a0, &a, &b0, &b);
    common::veth(&b1, &b, &c1, &c);
    for (ns, dev, addr) in [
        (&a, &a0, "fe80::a/64"),
        (&b, &b0, "fe80::b/64"),
        (&b, &b1, "fe80::1b/64"),
        (&c, &c1, "fe80::c/64"),
    ] {
        ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
    }
    echo_backend(listen_in(&c, "[::]:7000"));
    let (ib0, ib1, ia0) = (
        ifindex_in(&b, &b0),
        ifindex_in(&b, &b1),
        ifindex_in(&a, &a0),
    );
    let dir = TempDir::new("pxll");
    let by_name = format!("[fe80::b%{b0}]:8080=[fe80::c%{b1}]:7000");
    let by_index = format!("[fe80::b%{ib0}]:8081=[fe80::c%{ib1}]:7000");
    let p = relay.start(
        None,
        &dir,
        &[
            "--listen-netns",
            &b.name,
            "--target-netns",
            &b.name,
            "-p",
            &by_name,
            "-p",
            &by_index,
        ],
    );
    let log = p.log();
    let line = format!("listening on tcp [fe80::b%{ib0}]:8080 -> [fe80::c%{ib1}]:7000");
    assert!(log.contains(&line), "{line}:\n{log}");
    for (dev, index, flag) in [(&b0, ib0, "--listen-netns"), (&b1, ib1, "--target-netns")] {
        let line = format!(
            "interface {dev} is index {index} in namespace {} ({flag})",
            b.name
        );
        assert!(log.contains(&line), "{line}:\n{log}");
    }
    for port in [8080, 8081] {
        let to = SocketAddr::V6(std::net::SocketAddrV6::new(
            "fe80::b".parse().unwrap(),
            port,
            0,
            ia0,
        ));
        pings_through(&a, to, &p);
    }
    stop_after_dialling(p, 2);
}

on_both_relays!(
    link_local_addresses_with_their_interface_fast_path,
    link_local_addresses_with_their_interface_tokio_path =>
        link_local_addresses_with_their_interface()
);

/// A link-local address without an interface is a usage error saying to add one; an
/// interface is looked up in the namespace of the socket it is for: one that exists only
/// where nettool runs is not found in --listen-netns / --target-netns, and the error lists
/// the interfaces there.
#[test]
fn a_link_local_address_needs_an_interface_of_its_sockets_namespace() {
    let ns = lab("pxllerr");
    let here = TestNs::new("pxllhere");
    let (h0, h1) = (common::unique_ifname("lh"), common::unique_ifname("lh"));
    common::veth(&h0, &here, &h1, &here);
    for args in [
        &["proxy", "[fe80::1]:8080", "127.0.0.1:80"][..],
        &["proxy", "8080", "[fe80::1]:80"],
    ] {
        exits_saying(
            &here,
            args,
            2,
            "fe80::1 is link-local: add the interface it is on",
        );
    }
    let listen = format!("[fe80::1%{h0}]:8080");
    let t = exits_saying(
        &here,
        &["proxy", "--listen-netns", &ns.name, &listen, "127.0.0.1:80"],
        2,
        &format!(
            "no interface '{h0}' in namespace {} (--listen-netns): it has lo (1)",
            ns.name
        ),
    );
    assert!(t.contains("(--listen-netns)"), "{t}");
    let target = format!("[fe80::1%{h1}]:80");
    let t = exits_saying(
        &here,
        &["proxy", "--target-netns", &ns.name, "8080", &target],
        2,
        &format!("no interface '{h1}'"),
    );
    assert!(t.contains("(--target-netns)"), "{t}");
}

/// A target name whose first address refuses only after connect(2) has returned (a reset
/// from another namespace across a veth, reported by epoll, not by connect): the dial moves on
/// to the next address all the same.
fn a_late_refusal_moves_the_dial_to_the_names_next_address(relay: Relay) {
    let (p, b) = (TestNs::new("pxlatep"), TestNs::new("pxlateb"));
    let (p0, b0) = (common::unique_ifname("lp"), common::unique_ifname("lb"));
    common::veth(&p0, &p, &b0, &b);
    p.ip(&["addr", "add", "10.78.0.1/24", "dev", &p0]);
    b.ip(&["addr", "add", "10.78.0.2/24", "dev", &b0]);
    b.ip(&["addr", "add", "10.78.0.3/24", "dev", &b0]);
    echo_backend(listen_in(&b, "10.78.0.3:7000"));
    let dir = TempDir::new("pxlate");
    let p2 = start_with_hosts(
        relay,
        &p,
        &dir,
        "10.78.0.2 twoaddr\n10.78.0.3 twoaddr\n",
        &["127.0.0.1:8080", "twoaddr:7000"],
    );
    let log = p2.log();
    let line = "listening on tcp 127.0.0.1:8080 -> 10.78.0.2:7000 or 10.78.0.3:7000";
    assert!(log.contains(line), "{line}:\n{log}");
    for _ in 0..3 {
        pings_through(&p, "127.0.0.1:8080".parse().unwrap(), &p2);
    }
    stop_after_dialling(p2, 3);
}

on_both_relays!(
    a_late_refusal_moves_the_dial_to_the_names_next_address_fast_path,
    a_late_refusal_moves_the_dial_to_the_names_next_address_tokio_path =>
        a_late_refusal_moves_the_dial_to_the_names_next_address()
);

/// A target name with more addresses than a connection counts (300 in /etc/hosts, every one
/// refusing at once on loopback): the proxy dials the first 256 and resets the client, on both
/// relays, and goes on serving. The event loop's connection counted its address in a u8.
fn a_name_with_hundreds_of_addresses_is_dialled_without_overflow(relay: Relay) {
    let ns = lab("pxmany");
    let dir = TempDir::new("pxmany");
    let hosts: String = (0..300)
        .map(|i| format!("127.0.{}.{} many\n", 1 + i / 250, 1 + i % 250))
        .collect();
    let p = start_with_hosts(relay, &ns, &dir, &hosts, &["127.0.0.1:8080", "many:7000"]);
    for _ in 0..2 {
        let got = inside(&ns, || {
            let mut c = TcpStream::connect("127.0.0.1:8080")?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.read(&mut [0u8; 8])
        });
        assert!(got.is_err() || got.is_ok_and(|n| n == 0), "{}", p.log());
    }
    p.wait_logged("#2 ");
    let log = p.stop();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("connections=2 active=0"), "{log}");
    assert!(log.contains("dial_errors=2"), "{log}");
    assert!(
        log.contains("127.0.2.6:7000 (each tried; the last said): Connection refused"),
        "the 256th address is the last dialled:\n{log}"
    );
}

on_both_relays!(
    a_name_with_hundreds_of_addresses_is_dialled_without_overflow_fast_path,
    a_name_with_hundreds_of_addresses_is_dialled_without_overflow_tokio_path =>
        a_name_with_hundreds_of_addresses_is_dialled_without_overflow()
);

/// A name none of whose addresses answers: the dump's close event (dial_failed) names the
/// address whose failure its reason gives, the last one dialled, not the first.
#[test]
fn a_failed_dial_to_a_name_names_its_last_address_in_the_dump() {
    let ns = lab("pxlastdial");
    let dir = TempDir::new("pxlastdial");
    let dump = dir.join("dump.json");
    let p = start_with_hosts(
        Relay::Tokio,
        &ns,
        &dir,
        "127.0.0.2 twoaddr\n127.0.0.3 twoaddr\n",
        &[
            "--json",
            "--dump-file",
            dump.to_str().unwrap(),
            "127.0.0.1:8080",
            "twoaddr:7000",
        ],
    );
    let got = inside(&ns, || {
        let mut c = TcpStream::connect("127.0.0.1:8080")?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.read(&mut [0u8; 8])
    });
    assert!(got.is_err() || got.is_ok_and(|n| n == 0), "{}", p.log());
    p.wait_logged("resetting the client");
    p.stop();
    let text = std::fs::read_to_string(&dump).unwrap();
    let close: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["event"] == "close")
        .collect();
    assert_eq!(close.len(), 1, "{text}");
    assert_eq!(close[0]["conn"]["backend"], "127.0.0.3:7000", "{text}");
}

/// A name whose every address refuses: the warn line lists the addresses and says that the
/// error is the last one's (it read as if every address gave it).
fn a_name_whose_every_address_refuses_says_each_was_tried(relay: Relay) {
    let ns = lab("pxeach");
    let dir = TempDir::new("pxeach");
    let p = start_with_hosts(
        relay,
        &ns,
        &dir,
        "127.0.0.2 twoaddr\n127.0.0.3 twoaddr\n",
        &["127.0.0.1:8080", "twoaddr:7000"],
    );
    let got = inside(&ns, || {
        let mut c = TcpStream::connect("127.0.0.1:8080")?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.read(&mut [0u8; 8])
    });
    assert!(got.is_err() || got.is_ok_and(|n| n == 0), "{}", p.log());
    p.wait_logged("resetting the client");
    let log = p.log();
    assert!(
        log.contains("cannot connect to backend 127.0.0.2:7000 or 127.0.0.3:7000 (each tried; the last said): Connection refused"),
        "{log}"
    );
    p.stop();
}

#[test]
fn a_name_whose_every_address_refuses_says_each_was_tried_fast_path() {
    a_name_whose_every_address_refuses_says_each_was_tried(Relay::FastPath);
}

#[test]
fn a_name_whose_every_address_refuses_says_each_was_tried_tokio_path() {
    a_name_whose_every_address_refuses_says_each_was_tried(Relay::Tokio);
}

// ---- unix socket endpoints ------------------------------------------------------------------

/// A Docker-API-like HTTP server on the unix socket `path` (python3), answering each GET with
/// JSON that names the path asked for; killed on drop. Waits until the socket accepts.
fn unix_http_backend(dir: &TempDir, path: &Path) -> ChildGuard {
    let script = dir.join("unix_http.py");
    std::fs::write(
        &script,
        r#"import socketserver, http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b'{"ApiVersion":"1.41","path":"%s"}' % self.path.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    def get_request(self):
        r, _ = super().get_request()
        return r, ("unix", 0)
S(sys.argv[1], H).serve_forever()
"#,
    )
    .unwrap();
    let child = ChildGuard(
        Command::new("python3")
            .arg(&script)
            .arg(path)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    wait_for("the python unix HTTP server", 10, || {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    });
    child
}

/// `curl --unix-socket PATH http://docker/URL` (run where the test runs: a socket path is not
/// in a network namespace); the body.
fn curl_unix(path: &Path, url: &str) -> String {
    let path = path.to_str().unwrap();
    let url = format!("http://docker{url}");
    sh(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--unix-socket",
        path,
        &url,
    ])
}

/// curl over TCP from inside `ns`; the body.
fn curl_in(ns: &TestNs, url: &str) -> String {
    in_ns(ns, &["curl", "-sS", "--max-time", "10", url])
}

/// Every pairing (TCP -> unix, unix -> unix, unix -> TCP) in the forms users type, with the
/// HTTP decoder naming a Docker-API-like exchange and the unix client by its pid.
#[test]
fn unix_socket_endpoints_forward_every_pairing_and_the_dump_decodes_the_api() {
    let ns = lab("unixpair");
    let dir = TempDir::new("unixpair");
    let engine = dir.join("engine.sock");
    let _backend = unix_http_backend(&dir, &engine);
    let engine_s = engine.display().to_string();
    // socat's own words: TCP-LISTEN to UNIX-CONNECT, the engine exposed over TCP.
    let tcp_dump = dir.join("tcp.dump");
    let p1 = start(
        Some(&ns),
        &dir,
        &[
            "--dump",
            "--dump-file",
            tcp_dump.to_str().unwrap(),
            "TCP-LISTEN:2375,fork,reuseaddr,bind=127.0.0.1",
            &format!("UNIX-CONNECT:{engine_s}"),
        ],
    );
    // The classic tracer: a socket of its own in front of the engine's.
    let front = dir.join("front.sock");
    let unix_dump = dir.join("unix.dump");
    let p2 = start(
        None,
        &dir,
        &[
            "--dump",
            "--dump-file",
            unix_dump.to_str().unwrap(),
            "-v",
            &format!("UNIX-LISTEN:{},fork,mode=0660", front.display()),
            &format!("UNIX-CONNECT:{engine_s}"),
        ],
    );
    // nettool's form, unix in front of a TCP port (p1's), and -p with a bare path target.
    let via_tcp = dir.join("via-tcp.sock");
    let p3 = start(
        Some(&ns),
        &dir,
        &[
            "-v",
            &format!("unix:{}", via_tcp.display()),
            "127.0.0.1:2375",
            "-p",
            &format!("127.0.0.1:2376={engine_s}"),
        ],
    );
    assert_eq!(
        curl_in(&ns, "http://127.0.0.1:2375/v1.41/version"),
        r#"{"ApiVersion":"1.41","path":"/v1.41/version"}"#
    );
    assert_eq!(
        curl_in(&ns, "http://127.0.0.1:2376/_ping"),
        r#"{"ApiVersion":"1.41","path":"/_ping"}"#
    );
    assert_eq!(
        curl_unix(&front, "/v1.41/containers/json?all=1"),
        r#"{"ApiVersion":"1.41","path":"/v1.41/containers/json?all=1"}"#
    );
    assert_eq!(
        curl_unix(&via_tcp, "/v1.41/info"),
        r#"{"ApiVersion":"1.41","path":"/v1.41/info"}"#
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&front).unwrap().permissions().mode() & 0o777,
        0o660
    );
    p2.wait_logged("close normal");
    let log2 = p2.stop();
    assert!(
        log2.contains(&format!(
            "listening on unix:{} -> unix:{engine_s}",
            front.display()
        )),
        "{log2}"
    );
    let dump = std::fs::read_to_string(&unix_dump).unwrap();
    assert!(
        dump.contains("c2s http request: GET /v1.41/containers/json?all=1 HTTP/1.1"),
        "{dump}"
    );
    assert!(
        dump.contains("s2c http response: HTTP/1.1 200 OK"),
        "{dump}"
    );
    // The client is named by the process that connected (curl, gone by now), and its name as it was at accept.
    let open = dump
        .lines()
        .find(|l| l.starts_with("* #1 open unix pid="))
        .unwrap_or_else(|| panic!("{dump}"));
    assert!(
        open.contains(&format!(
            "(curl),uid=0,gid=0 -> unix:{} => unix -> unix:{engine_s}",
            front.display()
        )),
        "{open}"
    );
    assert!(!front.exists(), "the socket file is removed at exit");
    let dump1 = std::fs::read_to_string(&tcp_dump).unwrap();
    assert!(
        dump1.contains("c2s http request: GET /v1.41/version HTTP/1.1"),
        "{dump1}"
    );
    assert!(
        dump1.contains(&format!("=> unix -> unix:{engine_s}")),
        "{dump1}"
    );
    let log3 = p3.stop();
    assert!(
        log3.contains(&format!("-> unix:{} => 127.0.0.1:", via_tcp.display())),
        "{log3}"
    );
    p1.stop();
}

/// A unix echo server at `path`: echoes until EOF, then closes its write side.
fn unix_echo_backend(path: &Path) {
    unix_echo_on(std::os::unix::net::UnixListener::bind(path).unwrap());
}

/// [`unix_echo_backend`] on a listener already bound.
fn unix_echo_on(l: std::os::unix::net::UnixListener) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
}

/// Send `data` over `s` from a thread, half-close, and read everything back.
fn echo_through<S: Read + Write + Send + 'static>(
    mut s: S,
    data: Vec<u8>,
    mut shut: impl FnMut(&S) + Send + 'static,
    mut reader: impl Read,
) -> Vec<u8> {
    let writer = std::thread::spawn(move || {
        s.write_all(&data).unwrap();
        shut(&s);
        s
    });
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    drop(writer.join().unwrap());
    back
}

/// 8 MiB both ways, byte for byte, through TCP -> unix -> unix, with the half-close passed
/// on (the echo answers to the end only after it); the unix leg's pcap follows in tshark.
#[test]
fn unix_large_transfer_is_byte_exact_both_ways_with_the_half_close() {
    let ns = lab("unixbig");
    let dir = TempDir::new("unixbig");
    let echo = dir.join("echo.sock");
    unix_echo_backend(&echo);
    let mid = dir.join("mid.sock");
    let pcap = dir.join("unix.pcap");
    let _p2 = start(
        None,
        &dir,
        &[
            "--pcap",
            pcap.to_str().unwrap(),
            &format!("unix:{}", mid.display()),
            &format!("unix:{}", echo.display()),
        ],
    );
    let p1 = start(
        Some(&ns),
        &dir,
        &["127.0.0.1:7300", &format!("UNIX:{}", mid.display())],
    );
    let data = payload(8 << 20, 7);
    let s = connect_in(&ns, "127.0.0.1:7300").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let r = s.try_clone().unwrap();
    let back = echo_through(s, data.clone(), |s| s.shutdown(Shutdown::Write).unwrap(), r);
    assert!(back == data, "{} bytes back of {}", back.len(), data.len());
    // Straight to the unix front too.
    let u = std::os::unix::net::UnixStream::connect(&mid).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let r = u.try_clone().unwrap();
    let small = payload(100_000, 9);
    let back = echo_through(
        u,
        small.clone(),
        |s| s.shutdown(Shutdown::Write).unwrap(),
        r,
    );
    assert!(back == small);
    let log = _p2.stop();
    assert!(log.contains("bytes_c2s=8488608 bytes_s2c=8488608"), "{log}");
    // Stream 0 is the client's leg (stand-in addresses), 1 the backend's.
    let (c, s) = tshark_follow(&pcap, 1);
    assert!(
        c == data && s == data,
        "pcap leg 2: {} / {} bytes",
        c.len(),
        s.len()
    );
    let (c, _) = tshark_follow(&pcap, 2);
    assert!(c == small);
    p1.stop();
}

/// A missing backend socket: the TCP client is reset and one line names the path.
#[test]
fn a_missing_unix_backend_resets_the_client_and_one_line_names_the_path() {
    let ns = lab("unixgone");
    let dir = TempDir::new("unixgone");
    let gone = dir.join("gone.sock");
    let json = dir.join("events.json");
    let p = start(
        Some(&ns),
        &dir,
        &[
            "--json",
            "--dump-file",
            json.to_str().unwrap(),
            "127.0.0.1:7301",
            &format!("unix:{}", gone.display()),
        ],
    );
    expect_reset(&ns, "127.0.0.1:7301");
    let want = format!(
        "cannot connect to backend unix:{}: No such file or directory (os error 2); resetting the client",
        gone.display()
    );
    p.wait_logged(&want);
    let log = p.stop();
    assert_eq!(log.matches(&want).count(), 1, "{log}");
    assert!(log.contains("dial_errors=1"), "{log}");
    // The JSON close event says why and names the socket file.
    let events = std::fs::read_to_string(&json).unwrap();
    let close: serde_json::Value = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "close")
        .unwrap_or_else(|| panic!("{events}"));
    assert_eq!(
        close["conn"]["unix"]["backend"],
        gone.display().to_string(),
        "{close}"
    );
    assert!(
        close["reason"]["dial_failed"]
            .as_str()
            .is_some_and(|r| r.contains("No such file or directory")),
        "{close}"
    );
}

/// `nettool proxy ARGS` where the test runs, killed after 20 s (a mistake that is taken
/// would serve forever): its exit code and stderr.
fn proxy_fails(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .args(["20", BIN, "proxy"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A root proxy makes its socket file only over nothing or a stale socket: a regular file, a
/// symlink or a directory is an error with nothing removed, a live socket is "another
/// process listens"; at exit it removes its own file, not one put in its place.
#[test]
fn a_unix_listen_path_is_made_only_over_nothing_or_a_stale_socket() {
    let dir = TempDir::new("unixsafe");
    let file = dir.join("file");
    std::fs::write(&file, "precious").unwrap();
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let sub = dir.join("sub.sock");
    std::fs::create_dir(&sub).unwrap();
    for (p, what) in [
        (&file, "a regular file"),
        (&link, "a symbolic link"),
        (&sub, "a directory"),
    ] {
        let (code, err) = proxy_fails(&[&format!("unix:{}", p.display()), "127.0.0.1:9"]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "cannot listen on unix socket {}: {what} is there",
                p.display()
            )) && err.contains("removed nothing"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(sub.is_dir());
    // Live: a listener accepts there.
    let live = dir.join("live.sock");
    let _l = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let (code, err) = proxy_fails(&[
        &format!("UNIX-LISTEN:{},fork,unlink-early", live.display()),
        "127.0.0.1:9",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("another process listens on {}", live.display())),
        "{err}"
    );
    // Stale: the file of a listener that is gone is replaced, and removed at exit.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let p = start(
        None,
        &dir,
        &[&format!("unix:{}", stale.display()), "127.0.0.1:9"],
    );
    std::os::unix::net::UnixStream::connect(&stale)
        .expect("the proxy listens on the replaced socket");
    p.stop();
    assert!(!stale.exists(), "removed at exit");
    // A file put in place of ours while the proxy runs is not removed at exit.
    let p = start(
        None,
        &dir,
        &[&format!("unix:{}", stale.display()), "127.0.0.1:9"],
    );
    std::fs::remove_file(&stale).unwrap();
    std::fs::write(&stale, "someone else's").unwrap();
    p.stop();
    assert_eq!(std::fs::read_to_string(&stale).unwrap(), "someone else's");
}

/// Usage errors (exit 2) that name what is wrong: a namespace flag on a socket path, a socat
/// option not taken, UDP on a unix mapping.
#[test]
fn unix_usage_errors_name_the_mistake() {
    for (args, says) in [
        (
            &["--listen-netns", "nt-test-x", "unix:/tmp/nt-x.sock", "127.0.0.1:80"][..],
            "--listen-netns nt-test-x does not apply to the socket file /tmp/nt-x.sock: a unix socket path lives in a mount namespace, not a network one",
        ),
        (
            &["--target-netns", "nt-test-x", "8080", "UNIX-CONNECT:/run/x.sock"][..],
            "--target-netns nt-test-x does not apply to the socket file /run/x.sock",
        ),
        (
            &["UNIX-LISTEN:/tmp/nt-x.sock,backlog=5", "127.0.0.1:80"][..],
            "socat option 'backlog=5' of UNIX-LISTEN: is not taken",
        ),
        (&["--udp", "unix:/tmp/nt-x.sock", "127.0.0.1:53"][..], "--udp does not apply"),
        (&["unix:@", "127.0.0.1:53"][..], "an abstract socket needs a name of 1 to 106 bytes"),
        (&["ABSTRACT-LISTEN:nt-x,mode=0600", "127.0.0.1:53"][..], "no unlink-early or mode="),
        (&["/tmp/nt-x.sock", "10.0.0.1"][..], "needs a port"),
    ] {
        let (code, err) = proxy_fails(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// The abstract socket `name` (no file; it belongs to a network namespace).
fn abstract_addr(name: &str) -> std::os::unix::net::SocketAddr {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
}

/// Send `msg` to the abstract socket `name` from inside `ns` (or where the test runs), half-close
/// and read the answer.
fn echo_abstract(ns: Option<&TestNs>, name: &str, msg: &str) -> std::io::Result<String> {
    let (name, msg) = (name.to_string(), msg.to_string());
    let talk = move || -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect_addr(&abstract_addr(&name))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(msg.as_bytes())?;
        s.shutdown(Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    match ns {
        Some(ns) => inside(ns, talk),
        None => talk(),
    }
}

/// Abstract sockets (`unix:@NAME`, socat's ABSTRACT-LISTEN/ABSTRACT-CONNECT) live in a network
/// namespace: --target-netns and --listen-netns put them there; the same name where the
/// test runs is another socket (none).
#[test]
fn abstract_unix_sockets_are_per_network_namespace() {
    let ns = lab("unixabs");
    let dir = TempDir::new("unixabs");
    let name = unique("abs");
    let n = name.clone();
    unix_echo_on(inside(&ns, move || {
        std::os::unix::net::UnixListener::bind_addr(&abstract_addr(&n)).unwrap()
    }));
    assert!(
        echo_abstract(None, &name, "x").is_err(),
        "not in the test's namespace"
    );
    // A socket file in front of the namespace's abstract socket.
    let front = dir.join("front.sock");
    let p = start(
        None,
        &dir,
        &[
            "--target-netns",
            &ns.name,
            &format!("unix:{}", front.display()),
            &format!("ABSTRACT-CONNECT:{name}"),
        ],
    );
    let mut s = std::os::unix::net::UnixStream::connect(&front).unwrap();
    s.write_all(b"to the namespace").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).unwrap();
    assert_eq!(back, "to the namespace");
    p.stop();
    // Without --target-netns the name is looked up where nettool runs: nothing there.
    let gone = dir.join("gone.sock");
    let p = start(
        None,
        &dir,
        &[
            &format!("unix:{}", gone.display()),
            &format!("unix:@{name}"),
        ],
    );
    let mut s = std::os::unix::net::UnixStream::connect(&gone).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(s.read(&mut [0u8; 8]).unwrap_or(0), 0);
    p.wait_logged(&format!(
        "cannot connect to backend unix:@{name}: Connection refused"
    ));
    p.stop();
    // An abstract listener in the namespace, in socat's words.
    let name2 = unique("abs2");
    let p = start(
        None,
        &dir,
        &[
            "--listen-netns",
            &ns.name,
            "--target-netns",
            &ns.name,
            "-v",
            &format!("ABSTRACT-LISTEN:{name2},fork"),
            &format!("unix:@{name}"),
        ],
    );
    assert_eq!(echo_abstract(Some(&ns), &name2, "hop").unwrap(), "hop");
    assert!(echo_abstract(None, &name2, "x").is_err());
    p.wait_logged(&format!("-> unix:@{name2} => unix -> unix:@{name}"));
    let log = p.stop();
    assert!(
        log.contains(&format!("listening on unix:@{name2} -> unix:@{name}")),
        "{log}"
    );
}
