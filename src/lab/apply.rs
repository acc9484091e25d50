//! Carry out a [`Plan`]: every object is journaled as it is created, any failure rolls back
//! everything already done, and [`teardown`] undoes exactly what the journal says (also after
//! a crash or a half-applied setup).
//!
//! Test hook: `NETTOOL_LAB_FAIL_AT=step-N` makes step N (1-based, as `--dry-run` numbers them)
//! fail on purpose, so tests can check that a failure mid-setup leaves nothing behind;
//! N = last step + 1 fails once everything (processes included) is up; `crash-N` aborts the
//! process at step N without any rollback (what a crash or `kill -9` leaves behind).

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::firewall;
use super::plan::{Plan, ProxyMode, Step};
use super::spec::Backend;
use super::state::{self, HostRecord, Journal, LabState, ProcessState, StateError, Undo, Where};
use crate::netns::configure::Configure;
use crate::netns::{named, sysctl, NetNs};

/// Why setup or teardown failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Not running as root.
    #[error("nettool setup/teardown needs root: it creates namespaces, links and firewall rules (run it with sudo)")]
    NotRoot,
    /// A required program is missing.
    #[error("{tool} not found in PATH: install the '{package}' package (apt-get install {package}), or pick the other backend with --backend")]
    MissingTool {
        /// The program.
        tool: String,
        /// The Debian package that has it.
        package: String,
    },
    /// The lab is already up.
    #[error("lab '{0}' is already up")]
    AlreadyUp(String),
    /// A previous setup left a half-built lab.
    #[error("lab '{0}' is half set up (an earlier setup crashed or is still running); run `nettool teardown {0}` first")]
    HalfUp(String),
    /// A name the lab needs is taken.
    #[error("{0}")]
    Conflict(String),
    /// One step failed (everything before it was rolled back).
    #[error("step {number} failed: {what}: {message}{}", if rollback.is_empty() { " (rolled back: nothing is left behind)".to_string() } else { format!(" (rollback problems: {})", rollback.join("; ")) })]
    Step {
        /// 1-based step number.
        number: usize,
        /// The step, as a command.
        what: String,
        /// Why it failed.
        message: String,
        /// Problems met while rolling back (empty when the rollback was clean).
        rollback: Vec<String>,
    },
    /// Teardown was asked from a different namespace than setup ran in.
    #[error("lab '{name}' was set up in the network namespace with inode {inode}, not this one; run teardown from there (e.g. `nsenter --net=/proc/PID/ns/net nettool teardown {name}`)")]
    WrongNamespace {
        /// Lab name.
        name: String,
        /// The inode recorded at setup.
        inode: u64,
    },
    /// State files.
    #[error(transparent)]
    State(#[from] StateError),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// What teardown did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TeardownReport {
    /// Lab name.
    pub name: String,
    /// False when there was no such lab (a second teardown).
    pub existed: bool,
    /// Namespaces removed.
    pub namespaces: Vec<String>,
    /// Links removed explicitly.
    pub links: Vec<String>,
    /// Processes stopped.
    pub processes: Vec<u32>,
    /// Sysctls restored.
    pub sysctls: Vec<String>,
    /// Firewall rule sets removed.
    pub firewall: usize,
    /// Things that could not be undone (reported, never fatal).
    pub warnings: Vec<String>,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Find a program in PATH (the same lookup the spawned command will do).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn need_tool(name: &str, package: &str) -> Result<PathBuf, LabError> {
    find_tool(name).ok_or_else(|| LabError::MissingTool {
        tool: name.into(),
        package: package.into(),
    })
}

/// The firewall programs a backend needs: (apply tool, save tool).
pub fn backend_tools(backend: Backend) -> Result<(PathBuf, Option<PathBuf>), LabError> {
    match backend {
        Backend::Iptables => Ok((
            need_tool("iptables-restore", "iptables")?,
            Some(need_tool("iptables-save", "iptables")?),
        )),
        Backend::Nftables => Ok((need_tool("nft", "nftables")?, None)),
    }
}

/// Check root and tools before anything is planned or built.
pub fn preflight(backend: Backend) -> Result<(), LabError> {
    if !is_root() {
        return Err(LabError::NotRoot);
    }
    backend_tools(backend).map(|_| ())
}

/// Feed `text` to `argv` on stdin in the calling thread's namespace; Err(stderr) on failure.
fn run_with_stdin(argv: &[&str], text: &str) -> Result<(), String> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} exited with {}: {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Apply firewall text with the backend's tool in the calling thread's namespace.
pub fn apply_firewall_text(backend: Backend, text: &str) -> Result<(), String> {
    match backend {
        Backend::Iptables => run_with_stdin(&["iptables-restore", "--noflush"], text),
        Backend::Nftables => run_with_stdin(&["nft", "-f", "-"], text),
    }
}

/// True when the shared NETTOOL chains exist in the calling thread's namespace.
fn base_chains_exist_here() -> bool {
    Command::new("iptables-save")
        .args(["-t", "nat"])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with(&format!(":{} ", firewall::CHAIN)))
        })
        .unwrap_or(false)
}

/// Do the shared iptables chains already exist in the lab's host namespace?
/// (`isolated` labs get a fresh namespace, where they never do.)
pub fn base_chains_exist(isolated: bool) -> bool {
    !isolated && base_chains_exist_here()
}

/// The test hook: `step-N` fails step N (with rollback); `crash-N` kills the process at step N
/// (no rollback, like a crash or `kill -9`), leaving a half-built lab for teardown to clean.
fn fail_at() -> Option<usize> {
    let v = std::env::var("NETTOOL_LAB_FAIL_AT").ok()?;
    let n = v
        .strip_prefix("step-")
        .or_else(|| v.strip_prefix("crash-"))?;
    n.parse().ok()
}

fn crash_requested() -> bool {
    std::env::var("NETTOOL_LAB_FAIL_AT").is_ok_and(|v| v.starts_with("crash-"))
}

struct Run<'a> {
    plan: &'a Plan,
    journal: Journal,
    netns: HashMap<String, NetNs>,
    host: Option<NetNs>,
    bridges: HashMap<String, u32>,
    conf: Option<Configure>,
    state: LabState,
}

/// A clearer message when a link name is taken in the lab host.
fn exists_hint(e: crate::netns::rtnl::NetlinkError, name: &str) -> String {
    if e.errno() == Some(libc::EEXIST) {
        format!("{e} (a link named {name} already exists in the lab's host namespace: another lab with the same name or file? choose `bridge =` / --name, or use --isolated)")
    } else {
        e.to_string()
    }
}

fn e2s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Run<'_> {
    fn ns(&mut self, name: &str) -> Result<NetNs, String> {
        if let Some(n) = self.netns.get(name) {
            return Ok(n.clone());
        }
        let n = NetNs::from_name(name).map_err(e2s)?;
        self.netns.insert(name.into(), n.clone());
        Ok(n)
    }

    fn conf(&mut self) -> Result<&mut Configure, String> {
        if self.conf.is_none() {
            self.conf = Some(Configure::open().map_err(e2s)?);
        }
        Ok(self.conf.as_mut().expect("just set"))
    }

    fn record(&mut self, u: Undo) -> Result<(), String> {
        self.journal.record(&u).map_err(e2s)
    }

    /// Run one step. Host-namespace steps run on the calling thread, which is in the lab host.
    fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::CreateNetns { name } => {
                let ns = named::create(name).map_err(e2s)?;
                self.record(Undo::Netns { name: name.clone() })?;
                self.netns.insert(name.clone(), ns);
            }
            Step::Sysctl {
                at,
                name,
                value,
                restore,
            } => {
                let ns = match at {
                    Where::Host => None,
                    Where::Netns(n) => Some(self.ns(n)?),
                };
                let (name, value, restore) = (name.clone(), value.clone(), *restore);
                let go = move || -> Result<Option<String>, String> {
                    let Some(old) = sysctl::read(&name) else {
                        // Absent (e.g. no br_netfilter): nothing to set, nothing to restore.
                        return Ok(None);
                    };
                    if old == value {
                        return Ok(None);
                    }
                    sysctl::write(&name, &value)
                        .map_err(|e| format!("sysctl {name}={value}: {e}"))?;
                    Ok(restore.then_some(old))
                };
                let old = match ns {
                    None => go()?,
                    Some(ns) => ns.run(go).map_err(e2s)??,
                };
                if let (Some(old), Step::Sysctl { at, name, .. }) = (old, step) {
                    self.record(Undo::Sysctl {
                        at: at.clone(),
                        name: name.clone(),
                        old,
                    })?;
                }
            }
            Step::CreateBridge { name, mtu } => {
                let idx = self
                    .conf()?
                    .add_bridge(name, *mtu)
                    .map_err(|e| exists_hint(e, name))?;
                self.record(Undo::Link {
                    at: Where::Host,
                    name: name.clone(),
                    dies_with: None,
                })?;
                self.bridges.insert(name.clone(), idx);
            }
            Step::HostAddress {
                link,
                address,
                prefix_len,
            } => {
                let idx = match self.bridges.get(link) {
                    Some(i) => *i,
                    None => self
                        .conf()?
                        .index_of(link)
                        .map_err(e2s)?
                        .ok_or(format!("no link {link}"))?,
                };
                self.conf()?
                    .add_address(idx, *address, *prefix_len)
                    .map_err(e2s)?;
            }
            Step::CreateVeth {
                host,
                peer,
                netns,
                bridge,
                mtu,
                hairpin,
            } => {
                let ns = self.ns(netns)?;
                let master = self.bridges.get(bridge).copied();
                let idx = self
                    .conf()?
                    .add_veth(host, peer, &ns, master, *mtu)
                    .map_err(|e| exists_hint(e, host))?;
                self.record(Undo::Link {
                    at: Where::Host,
                    name: host.clone(),
                    dies_with: Some(netns.clone()),
                })?;
                if *hairpin {
                    self.conf()?.set_hairpin(idx, true).map_err(e2s)?;
                }
            }
            Step::ConfigureInterface {
                netns,
                interface,
                addresses,
                gateway,
                gateway6,
            } => {
                let ns = self.ns(netns)?;
                ns.run(|| -> Result<(), String> {
                    let mut c = Configure::open().map_err(e2s)?;
                    let idx = c
                        .index_of(interface)
                        .map_err(e2s)?
                        .ok_or(format!("no {interface} in {netns}"))?;
                    c.set_up(idx, true).map_err(e2s)?;
                    for (a, l) in addresses {
                        c.add_address(idx, *a, *l).map_err(e2s)?;
                    }
                    if let Some(g) = gateway {
                        c.add_route(None, Some((*g).into()), Some(idx))
                            .map_err(e2s)?;
                    }
                    if let Some(g) = gateway6 {
                        c.add_route(None, Some((*g).into()), Some(idx))
                            .map_err(e2s)?;
                    }
                    Ok(())
                })
                .map_err(e2s)??;
            }
            Step::Firewall {
                backend,
                apply,
                undo,
            } => {
                apply_firewall_text(*backend, apply)?;
                self.record(Undo::Firewall {
                    at: Where::Host,
                    backend: *backend,
                    undo: undo.clone(),
                })?;
            }
            Step::ResolvConf { netns } => {
                let dir = Path::new("/etc/netns").join(netns);
                if !dir.exists() {
                    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    self.record(Undo::Dir {
                        path: dir.display().to_string(),
                    })?;
                }
                let f = dir.join("resolv.conf");
                std::fs::write(
                    &f,
                    format!(
                        "# written by nettool setup {}\nnameserver {}\noptions ndots:0\n",
                        self.plan.name,
                        firewall::DNS_ADDR
                    ),
                )
                .map_err(|e| format!("{}: {e}", f.display()))?;
            }
            Step::StartDaemon => {
                // The daemon reads the lab from state.json.
                state::save(&self.state).map_err(e2s)?;
                let exe = std::env::current_exe().map_err(e2s)?;
                let log = state::dir(&self.plan.name).join("daemon.log");
                let mut cmd = Command::new(exe);
                cmd.args(["-v", "lab-daemon", &self.plan.name, "--ready-fd", "3"]);
                let pid = self.spawn_ready(cmd, &log, "daemon")?;
                self.state.processes.push(ProcessState {
                    role: "daemon".into(),
                    pid,
                    log: Some(log.display().to_string()),
                });
            }
            Step::StartProxies { mode } => self.start_proxies(*mode)?,
        }
        Ok(())
    }

    /// Start a detached process with a readiness pipe on fd 3; wait for "0\n".
    fn spawn_ready(&mut self, mut cmd: Command, log: &Path, role: &str) -> Result<u32, String> {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        // CLOEXEC: only the dup'ed fd 3 may reach the child, or EOF would never come.
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(e2s)?;
        let wfd = w.as_raw_fd();
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(e2s)?)
            .stderr(logf);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::dup2(wfd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {role}: {e}"))?;
        drop(w);
        let pid = child.id();
        let start_time = state::process_start_time(pid).unwrap_or(0);
        self.record(Undo::Process {
            role: role.into(),
            pid,
            start_time,
        })?;
        // Reap it in the background if it dies while we are still around.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        let got = read_ready(r, Duration::from_secs(15));
        if got.starts_with("0\n") || got == "0" {
            Ok(pid)
        } else if let Some(msg) = got.strip_prefix("1\n") {
            Err(format!("{role} failed to start: {}", msg.trim()))
        } else {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            Err(format!(
                "{role} exited before it was ready (log {}): {}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        }
    }

    fn start_proxies(&mut self, mode: ProxyMode) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(e2s)?;
        let dir = state::dir(&self.plan.name);
        let ports = self.state.ports.clone();
        match mode {
            ProxyMode::Off => {}
            ProxyMode::Single => {
                let log = dir.join("proxy.log");
                let mut cmd = Command::new(&exe);
                cmd.arg("proxy");
                for p in &ports {
                    let listen = match p.host_ip {
                        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", p.host_port),
                        ip => format!("{ip}:{}", p.host_port),
                    };
                    cmd.arg("--map").arg(format!(
                        "{}:{listen}={}:{}",
                        p.proto, p.container_ip, p.container_port
                    ));
                }
                cmd.arg("--log-file").arg(&log).args(["--ready-fd", "3"]);
                let pid = self.spawn_ready(cmd, &log, "proxy")?;
                self.state.proxy_pids.push(pid);
                self.state.processes.push(ProcessState {
                    role: "proxy".into(),
                    pid,
                    log: Some(log.display().to_string()),
                });
            }
            ProxyMode::DockerStyle => {
                for p in &ports {
                    let log = dir.join(format!("docker-proxy-{}-{}.log", p.proto, p.host_port));
                    let mut cmd = Command::new(&exe);
                    cmd.arg("proxy")
                        .args(["-proto", &p.proto.to_string()])
                        .args(["-host-ip", &p.host_ip.to_string()])
                        .args(["-host-port", &p.host_port.to_string()])
                        .args(["-container-ip", &p.container_ip.to_string()])
                        .args(["-container-port", &p.container_port.to_string()]);
                    let pid = self.spawn_ready(cmd, &log, "docker-proxy")?;
                    self.state.proxy_pids.push(pid);
                    self.state.processes.push(ProcessState {
                        role: format!("docker-proxy {}/{}", p.proto, p.host_port),
                        pid,
                        log: Some(log.display().to_string()),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Bring the lab up. On any failure everything already created is removed again.
pub fn setup(plan: &Plan) -> Result<LabState, LabError> {
    if !is_root() {
        return Err(LabError::NotRoot);
    }
    let name = &plan.name;
    if state::exists(name) {
        if state::dir(name).join("up").exists() {
            return Err(LabError::AlreadyUp(name.clone()));
        }
        return Err(LabError::HalfUp(name.clone()));
    }
    for s in &plan.steps {
        if let Step::CreateNetns { name: n } = s {
            if named::exists(n) {
                return Err(LabError::Conflict(format!("network namespace {n} already exists (left over from another lab? `ip netns del {n}`, or choose another lab --name)")));
            }
        }
    }
    let isolated = plan.state.host_netns.is_some();
    let current = NetNs::current().map_err(e2s).map_err(LabError::Other)?;
    if !isolated {
        check_shared_host(plan, current.id().inode)?;
    }
    let host_rec = HostRecord {
        netns: plan.state.host_netns.clone(),
        inode: current.id().inode,
    };
    let journal = Journal::create(name, &host_rec)?;
    let mut run = Run {
        plan,
        journal,
        netns: HashMap::new(),
        host: None,
        bridges: HashMap::new(),
        conf: None,
        state: plan.state.clone(),
    };
    let inject = fail_at();
    let host_name = plan.state.host_netns.clone();
    let mut start = 0;
    let mut failure: Option<(usize, String)> = None;
    // Step 1 of an isolated lab makes its host; everything after runs on a thread inside it.
    if isolated {
        if inject == Some(1) {
            failure = Some((0, "injected failure (NETTOOL_LAB_FAIL_AT=step-1)".into()));
        } else if let Err(e) = run.step(&plan.steps[0]) {
            failure = Some((0, e));
        }
        start = 1;
    }
    if failure.is_none() {
        let host = if isolated {
            run.netns
                .get(host_name.as_deref().unwrap_or_default())
                .cloned()
                .expect("host created")
        } else {
            current.clone()
        };
        run.host = Some(host.clone());
        let steps = &plan.steps[start..];
        let res = host.run(|| {
            for (k, s) in steps.iter().enumerate() {
                let number = start + k + 1;
                if inject == Some(number) {
                    if crash_requested() {
                        // Like `kill -9`: no destructors, no rollback, no core file.
                        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                    }
                    return Err((
                        number - 1,
                        format!("injected failure (NETTOOL_LAB_FAIL_AT=step-{number})"),
                    ));
                }
                run.step(s).map_err(|e| (number - 1, e))?;
            }
            // step-(last+1): everything exists, then fail (tests the full rollback).
            let after = plan.steps.len() + 1;
            if inject == Some(after) {
                return Err((
                    after - 1,
                    format!("injected failure (NETTOOL_LAB_FAIL_AT=step-{after})"),
                ));
            }
            Ok(())
        });
        match res {
            Ok(Ok(())) => {}
            Ok(Err(f)) => failure = Some(f),
            Err(e) => failure = Some((start, e.to_string())),
        }
    }
    if let Some((idx, message)) = failure {
        drop(run);
        let report = teardown(name);
        let rollback = match report {
            Ok(r) => r.warnings,
            Err(e) => vec![e.to_string()],
        };
        return Err(LabError::Step {
            number: idx + 1,
            what: plan
                .steps
                .get(idx)
                .map(|st| {
                    st.describe(&host_name)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .unwrap_or_else(|| "after the last step".into()),
            message,
            rollback,
        });
    }
    let state = run.state.clone();
    state::save(&state)?;
    let up = state::dir(name).join("up");
    std::fs::write(&up, b"").map_err(|e| LabError::Other(format!("{}: {e}", up.display())))?;
    Ok(state)
}

/// Read a readiness pipe: "0\n" (ready) or "1\n<error>" then EOF; empty on EOF or timeout.
fn read_ready(fd: OwnedFd, limit: Duration) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        // Up to the first newline; after "1\n" read the error text to EOF.
        while let Ok(1) = f.read(&mut byte) {
            buf.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        if buf.starts_with(b"1") {
            let _ = f.read_to_end(&mut buf);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx.recv_timeout(limit).unwrap_or_default()
}

fn kill_process(pid: u32, start_time: u64, sig: nix::sys::signal::Signal) -> bool {
    match state::process_start_time(pid) {
        Some(t) if start_time == 0 || t == start_time => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).is_ok()
        }
        _ => false,
    }
}

/// Processes the daemon started, as it recorded them (pid, start time).
pub fn services_file(name: &str) -> PathBuf {
    state::dir(name).join("services.json")
}

/// Remove lab `name` exactly as its journal says. A lab that does not exist is not an error
/// (`existed: false`), so a second teardown is a no-op.
pub fn teardown(name: &str) -> Result<TeardownReport, LabError> {
    if !is_root() {
        return Err(LabError::NotRoot);
    }
    let mut rep = TeardownReport {
        name: name.into(),
        ..Default::default()
    };
    if !state::exists(name) {
        return Ok(rep);
    }
    rep.existed = true;
    let host = state::read_host(name);
    let records = state::read_journal(name)?;
    let owned: BTreeSet<String> = records
        .iter()
        .filter_map(|u| match u {
            Undo::Netns { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    // Host-side records matter only when the host is not a namespace we delete anyway.
    let host_is_ours = host
        .as_ref()
        .and_then(|h| h.netns.as_ref())
        .is_some_and(|n| owned.contains(n));
    let host_ns_missing = host
        .as_ref()
        .and_then(|h| h.netns.as_ref())
        .is_some_and(|n| !owned.contains(n));
    let touches_host = records.iter().any(|u| {
        matches!(
            u,
            Undo::Link {
                at: Where::Host,
                ..
            } | Undo::Sysctl {
                at: Where::Host,
                ..
            } | Undo::Firewall {
                at: Where::Host,
                ..
            }
        )
    });
    if !host_is_ours && !host_ns_missing && touches_host {
        if let Some(h) = &host {
            let cur = NetNs::current().map_err(|e| LabError::Other(e.to_string()))?;
            if cur.id().inode != h.inode {
                return Err(LabError::WrongNamespace {
                    name: name.into(),
                    inode: h.inode,
                });
            }
        }
    }

    // 1. Processes: the daemon (it stops its services), proxies; then anything it left.
    use nix::sys::signal::Signal;
    let mut procs: Vec<(u32, u64)> = records
        .iter()
        .filter_map(|u| match u {
            Undo::Process {
                pid, start_time, ..
            } => Some((*pid, *start_time)),
            _ => None,
        })
        .collect();
    for (pid, st) in &procs {
        if kill_process(*pid, *st, Signal::SIGTERM) {
            rep.processes.push(*pid);
        }
    }
    wait_gone(&procs, Duration::from_secs(3));
    if let Ok(bytes) = std::fs::read(services_file(name)) {
        if let Ok(extra) = serde_json::from_slice::<Vec<(u32, u64)>>(&bytes) {
            procs.extend(extra);
        }
    }
    for (pid, st) in &procs {
        if kill_process(*pid, *st, Signal::SIGKILL) && !rep.processes.contains(pid) {
            rep.processes.push(*pid);
        }
    }
    wait_gone(&procs, Duration::from_secs(2));

    // 2. Everything else, newest first.
    let mut waiting_links: Vec<String> = Vec::new();
    let mut conf: Option<Configure> = None;
    let mut fw_undone = false;
    for u in records.iter().rev() {
        match u {
            Undo::Process { .. } => {}
            Undo::Dir { path } => {
                if let Err(e) = std::fs::remove_dir_all(path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        rep.warnings.push(format!("remove {path}: {e}"));
                    }
                }
            }
            Undo::Firewall {
                at: Where::Host,
                backend,
                undo,
            } => {
                if host_is_ours || host_ns_missing {
                    continue;
                }
                match apply_firewall_text(*backend, undo) {
                    Ok(()) => {
                        rep.firewall += 1;
                        fw_undone = *backend == Backend::Iptables;
                    }
                    Err(e) => rep.warnings.push(format!("firewall: {e}")),
                }
            }
            Undo::Sysctl {
                at: Where::Host,
                name: s,
                old,
            } => {
                if host_is_ours || host_ns_missing {
                    continue;
                }
                match sysctl::write(s, old) {
                    Ok(()) => rep.sysctls.push(format!("{s}={old}")),
                    Err(e) => rep.warnings.push(format!("restore {s}={old}: {e}")),
                }
            }
            Undo::Link {
                at: Where::Host,
                name: l,
                dies_with,
            } => {
                if host_is_ours || host_ns_missing {
                    continue;
                }
                if dies_with.as_ref().is_some_and(|n| owned.contains(n)) {
                    waiting_links.push(l.clone());
                    continue;
                }
                if conf.is_none() {
                    conf = Configure::open().ok();
                }
                if let Some(c) = conf.as_mut() {
                    match c.delete_link_by_name(l) {
                        Ok(true) => rep.links.push(l.clone()),
                        Ok(false) => {}
                        Err(e) => rep.warnings.push(format!("delete link {l}: {e}")),
                    }
                }
            }
            // Records inside container namespaces die with them.
            Undo::Firewall { .. } | Undo::Sysctl { .. } | Undo::Link { .. } => {}
            Undo::Netns { name: n } => match named::delete(n) {
                Ok(true) => rep.namespaces.push(n.clone()),
                Ok(false) => {}
                Err(e) => rep.warnings.push(e.to_string()),
            },
        }
    }
    // 3. The shared chains go with the last lab that uses them in this namespace.
    if fw_undone && !other_labs_here(name, host.as_ref()) {
        let _ = apply_firewall_text(Backend::Iptables, &firewall::iptables_base_cleanup());
    }
    // 4. Host-side veths vanish when the kernel finishes destroying their namespaces; wait
    //    for that so "after teardown" really means gone, then delete any straggler.
    if !waiting_links.is_empty() {
        if conf.is_none() {
            conf = Configure::open().ok();
        }
        if let Some(c) = conf.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                waiting_links.retain(|l| matches!(c.index_of(l), Ok(Some(_))));
                if waiting_links.is_empty() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            for l in &waiting_links {
                if let Ok(true) = c.delete_link_by_name(l) {
                    rep.links.push(l.clone());
                }
            }
        }
    }
    let d = state::dir(name);
    if let Err(e) = std::fs::remove_dir_all(&d) {
        rep.warnings.push(format!("remove {}: {e}", d.display()));
    }
    Ok(rep)
}

/// Labs sharing a host namespace must not publish the same port or use the same bridge names.
fn check_shared_host(plan: &Plan, inode: u64) -> Result<(), LabError> {
    for other in state::list() {
        let same_host =
            state::read_host(&other).is_some_and(|h| h.netns.is_none() && h.inode == inode);
        if !same_host {
            continue;
        }
        let Ok(o) = state::load(&other) else { continue };
        for p in &plan.state.ports {
            let clash = o.ports.iter().find(|q| {
                q.proto == p.proto
                    && q.host_port == p.host_port
                    && (q.host_ip.is_unspecified()
                        || p.host_ip.is_unspecified()
                        || q.host_ip == p.host_ip)
            });
            if let Some(q) = clash {
                return Err(LabError::Conflict(format!(
                    "host port {}/{} is already published by lab '{other}' (container {}) in this namespace; change the port or tear that lab down",
                    p.host_port, p.proto, q.container
                )));
            }
        }
        for n in &plan.state.networks {
            if let Some(on) = o.networks.iter().find(|m| {
                m.bridge == n.bridge
                    || m.subnet.contains(&n.subnet.network())
                    || n.subnet.contains(&m.subnet.network())
            }) {
                return Err(LabError::Conflict(format!(
                    "network '{}' ({} on {}) collides with network '{}' ({} on {}) of lab '{other}' in this namespace; choose another subnet/bridge or use --isolated",
                    n.name, n.subnet, n.bridge, on.name, on.subnet, on.bridge
                )));
            }
        }
    }
    Ok(())
}

/// Is another lab (up or half up) using the same host namespace as `host`?
fn other_labs_here(name: &str, host: Option<&HostRecord>) -> bool {
    let Some(h) = host else { return false };
    state::list().into_iter().filter(|n| n != name).any(|n| {
        state::read_host(&n)
            .is_some_and(|o| o.netns.is_none() && h.netns.is_none() && o.inode == h.inode)
    })
}

fn wait_gone(procs: &[(u32, u64)], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if procs
            .iter()
            .all(|(pid, st)| match state::process_start_time(*pid) {
                Some(t) => *st != 0 && t != *st,
                None => true,
            })
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
