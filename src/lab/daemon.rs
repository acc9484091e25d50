//! The lab daemon (`nettool lab-daemon NAME`, started by setup, stopped by teardown): one
//! process that serves the embedded DNS in every container namespace and starts and
//! supervises the `run = "..."` services. Logs go to stderr, which setup points at
//! /run/nettool/<NAME>/daemon.log.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::FromRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::firewall;
use super::resolver;
use super::spec::{split_words, Backend};
use super::state::{self, LabState};
use crate::netns::exec::{self, ExecOptions};
use crate::netns::NetNs;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    /// The lab state could not be read.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Something in a namespace failed.
    #[error("{0}")]
    Setup(String),
}

struct Service {
    container: String,
    argv: Vec<String>,
    netns: Option<String>,
    dns: bool,
    log: std::path::PathBuf,
    child: Option<Child>,
    restarts: u32,
    next_start: Instant,
}

fn start(svc: &mut Service, host: &NetNs) -> Result<(), String> {
    let mut argv = svc.argv.clone();
    // `nettool ...` means this very binary, so the default lab needs nothing installed.
    if argv[0] == "nettool" {
        if let Ok(exe) = std::env::current_exe() {
            argv[0] = exe.display().to_string();
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&svc.log)
        .map_err(|e| format!("{}: {e}", svc.log.display()))?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("NETTOOL_CONTAINER", &svc.container)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    let ns = match &svc.netns {
        Some(n) => NetNs::from_name(n).map_err(|e| e.to_string())?,
        None => host.clone(),
    };
    let opts = ExecOptions {
        remount_sys: false,
        etc_netns: if svc.dns { svc.netns.clone() } else { None },
    };
    let child =
        exec::spawn(&ns, cmd, &opts).map_err(|e| format!("service {}: {e}", svc.container))?;
    tracing::info!(container = %svc.container, pid = child.id(), "started {:?}", svc.argv);
    svc.child = Some(child);
    Ok(())
}

/// For `nettool serve http|echo PORT [--bind IP]`: the TCP address to wait for (udp-echo has
/// none). An unspecified bind address is probed on loopback.
fn serve_addr(argv: &[String]) -> Option<SocketAddr> {
    if argv.first().map(String::as_str) != Some("nettool")
        || argv.get(1).map(String::as_str) != Some("serve")
        || !matches!(argv.get(2).map(String::as_str), Some("http") | Some("echo"))
    {
        return None;
    }
    let port: u16 = argv.get(3)?.parse().ok()?;
    let bind = argv
        .iter()
        .position(|a| a == "--bind")
        .and_then(|i| argv.get(i + 1))
        .or_else(|| {
            argv.iter()
                .find_map(|a| a.strip_prefix("--bind=").map(|_| a))
        })
        .map(|a| a.trim_start_matches("--bind="));
    let ip: std::net::IpAddr = match bind {
        None => Ipv4Addr::LOCALHOST.into(),
        Some(b) => match b.parse::<std::net::IpAddr>().ok()? {
            std::net::IpAddr::V4(v) if v.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(v) if v.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        },
    };
    Some(SocketAddr::new(ip, port))
}

fn write_ready(fd: Option<i32>, msg: &str) {
    if let Some(fd) = fd {
        // SAFETY: the fd was handed to us by our parent for exactly this; we own it now.
        let mut f = unsafe { File::from_raw_fd(fd) };
        let _ = f.write_all(msg.as_bytes());
    }
}

/// Run the daemon for lab `name` until SIGTERM/SIGINT. `ready_fd` gets "0\n" once DNS and the
/// services are up, or "1\n<error>".
pub(crate) fn run(name: &str, ready_fd: Option<i32>) -> Result<(), DaemonError> {
    match prepare(name) {
        Ok((dns, services, host)) => {
            write_ready(ready_fd, "0\n");
            serve(name, dns, services, host);
            Ok(())
        }
        Err(e) => {
            write_ready(ready_fd, &format!("1\n{e}\n"));
            Err(e)
        }
    }
}

type DnsSockets = Vec<(
    std::net::UdpSocket,
    std::net::TcpListener,
    Arc<resolver::Records>,
)>;

fn prepare(name: &str) -> Result<(DnsSockets, Vec<Service>, NetNs), DaemonError> {
    let lab: LabState = state::load(name)?;
    let host = NetNs::current().map_err(|e| DaemonError::Setup(e.to_string()))?;
    // DNS: one UDP socket and one TCP listener on 127.0.0.11 inside each container namespace,
    // plus the nat rules that send 127.0.0.11:53 there.
    let mut dns: DnsSockets = Vec::new();
    let mut dns_ns: Vec<String> = Vec::new();
    for c in &lab.containers {
        let Some(ns_name) = &c.netns else { continue };
        if Some(ns_name) == lab.host_netns.as_ref() || dns_ns.contains(ns_name) {
            continue;
        }
        let on_dns = lab
            .containers
            .iter()
            .filter(|o| o.netns.as_ref() == Some(ns_name))
            .flat_map(|o| o.networks.iter())
            .any(|i| lab.network(&i.network).is_some_and(|n| n.dns));
        if !on_dns {
            continue;
        }
        dns_ns.push(ns_name.clone());
        let ns = NetNs::from_name(ns_name).map_err(|e| DaemonError::Setup(e.to_string()))?;
        let backend = lab.backend;
        let made = ns
            .run(
                move || -> Result<(std::net::UdpSocket, std::net::TcpListener), String> {
                    let addr = SocketAddr::from((firewall::DNS_ADDR, 0));
                    let udp = std::net::UdpSocket::bind(addr)
                        .map_err(|e| format!("bind udp {addr}: {e}"))?;
                    let tcp = std::net::TcpListener::bind(addr)
                        .map_err(|e| format!("bind tcp {addr}: {e}"))?;
                    let up = udp.local_addr().map_err(|e| e.to_string())?.port();
                    let tp = tcp.local_addr().map_err(|e| e.to_string())?.port();
                    let text = match backend {
                        Backend::Iptables => firewall::dns_iptables(up, tp),
                        Backend::Nftables => firewall::dns_nftables(up, tp),
                    };
                    super::apply::apply_firewall_text(backend, &text)?;
                    udp.set_nonblocking(true).map_err(|e| e.to_string())?;
                    tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
                    Ok((udp, tcp))
                },
            )
            .map_err(|e| DaemonError::Setup(e.to_string()))?
            .map_err(|e| DaemonError::Setup(format!("embedded DNS in {ns_name}: {e}")))?;
        let records = Arc::new(resolver::records_for(&lab, ns_name));
        tracing::info!(netns = %ns_name, names = records.names.len(), "embedded DNS ready");
        dns.push((made.0, made.1, records));
    }
    // Services.
    let mut services = Vec::new();
    for c in &lab.containers {
        let Some(run) = &c.run else { continue };
        let argv =
            split_words(run).map_err(|e| DaemonError::Setup(format!("run of {}: {e}", c.name)))?;
        if argv.is_empty() {
            continue;
        }
        let in_host = c.netns.is_none() || c.netns == lab.host_netns;
        let mut svc = Service {
            container: c.name.clone(),
            argv,
            netns: if in_host { None } else { c.netns.clone() },
            dns: c.netns.as_ref().is_some_and(|n| dns_ns.contains(n)),
            log: state::dir(name).join(format!("{}.log", c.name)),
            child: None,
            restarts: 0,
            next_start: Instant::now(),
        };
        start(&mut svc, &host).map_err(DaemonError::Setup)?;
        services.push(svc);
    }
    // Wait until built-in TCP services listen, so a test can connect as soon as setup returns.
    let deadline = Instant::now() + Duration::from_secs(5);
    for svc in &mut services {
        let Some(addr) = serve_addr(&svc.argv) else {
            continue;
        };
        let ns = match &svc.netns {
            Some(n) => NetNs::from_name(n).map_err(|e| DaemonError::Setup(e.to_string()))?,
            None => host.clone(),
        };
        loop {
            let ok = ns
                .run(|| {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })
                .unwrap_or(false);
            if ok {
                break;
            }
            if let Some(child) = svc.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(DaemonError::Setup(format!(
                        "service {} ({}) exited with {st}; see {}",
                        svc.container,
                        svc.argv.join(" "),
                        svc.log.display()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(DaemonError::Setup(format!(
                    "service {} did not listen on {addr} within 5 s; see {}",
                    svc.container,
                    svc.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    record_services(name, &services);
    Ok((dns, services, host))
}

fn record_services(name: &str, services: &[Service]) {
    let pids: Vec<(u32, u64)> = services
        .iter()
        .filter_map(|s| s.child.as_ref())
        .map(|c| (c.id(), state::process_start_time(c.id()).unwrap_or(0)))
        .collect();
    let _ = std::fs::write(
        super::apply::services_file(name),
        serde_json::to_vec(&pids).unwrap_or_default(),
    );
}

fn stop_all(services: &mut [Service]) {
    use nix::sys::signal::{kill, Signal};
    for s in services.iter_mut() {
        if let Some(c) = &s.child {
            let _ = kill(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    for s in services.iter_mut() {
        if let Some(c) = s.child.as_mut() {
            loop {
                if !matches!(c.try_wait(), Ok(None)) {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        s.child = None;
    }
}

fn serve(name: &str, dns: DnsSockets, services: Vec<Service>, host: NetNs) {
    let services = Arc::new(Mutex::new(services));
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Supervision on a plain thread: restart a service that exits, with a growing delay.
    {
        let services = services.clone();
        let stopping = stopping.clone();
        let name = name.to_string();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let mut list = services.lock().unwrap_or_else(|p| p.into_inner());
            let mut changed = false;
            for s in list.iter_mut() {
                if let Some(c) = s.child.as_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        tracing::warn!(container = %s.container, "service exited with {st}; restarting");
                        s.child = None;
                        s.restarts += 1;
                        s.next_start = Instant::now()
                            + Duration::from_millis(250 * u64::from(s.restarts.min(20)));
                    }
                }
                if s.child.is_none() && Instant::now() >= s.next_start {
                    if let Err(e) = start(s, &host) {
                        tracing::warn!("{e}");
                        s.restarts += 1;
                        s.next_start = Instant::now() + Duration::from_secs(5);
                    }
                    changed = true;
                }
            }
            if changed {
                record_services(&name, &list);
            }
        });
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("tokio runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut handles = HashMap::new();
        for (k, (udp, tcp, records)) in dns.into_iter().enumerate() {
            let (Ok(udp), Ok(tcp)) = (
                tokio::net::UdpSocket::from_std(udp),
                tokio::net::TcpListener::from_std(tcp),
            ) else {
                tracing::error!("cannot register DNS sockets with tokio");
                continue;
            };
            handles.insert(
                k,
                (
                    tokio::spawn(resolver::serve_udp(udp, records.clone())),
                    tokio::spawn(resolver::serve_tcp(tcp, records)),
                ),
            );
        }
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("signal handler: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
    });
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut list = services.lock().unwrap_or_else(|p| p.into_inner());
    stop_all(&mut list);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn probe_address_follows_bind() {
        assert_eq!(
            serve_addr(&argv("nettool serve http 80")),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            serve_addr(&argv("nettool serve echo 7 --bind 10.0.0.2")),
            Some("10.0.0.2:7".parse().unwrap())
        );
        assert_eq!(
            serve_addr(&argv("nettool serve http 80 --bind ::")),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(serve_addr(&argv("nettool serve udp-echo 53")), None);
        assert_eq!(serve_addr(&argv("socat TCP-LISTEN:80 -")), None);
    }
}
