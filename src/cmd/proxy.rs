//! `nettool proxy`: forward ports (TCP/UDP, ranges, across namespaces) and show what passes.
//! Also the docker-proxy drop-in (argv[0] `docker-proxy`, or `nettool proxy -proto ...`).

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::netns::NetNs;
use crate::proxy::docker::{self, DockerArgs, DockerProxyConfig};
use crate::proxy::logq::{LineSink, LogQueue, TextLines};
use crate::proxy::spec::{self, Mapping};
use crate::proxy::syslog::{self as syslog_client, Syslog};
use crate::proxy::{Level, Log, Proto, Proxy, ProxyConfig};
use crate::tap::json::{JsonSink, Payload};
use crate::tap::pcap::{PcapOptions, PcapSink};
use crate::tap::streams::StreamsSink;
use crate::tap::text::{ConsoleSink, Style};
use crate::tap::{self, Output, Sink, TapWriter};

/// Runtime threads unless --threads / NETTOOL_PROXY_THREADS says otherwise. Two: bulk
/// throughput measured the same with one or two (the kernel copies, via splice), but short
/// connections (accept + dial + relay) went twice as fast with two workers on a 2-core machine.
const DEFAULT_THREADS: usize = 2;

/// A mistake in how the command was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// Where log lines go.
#[derive(Debug, Clone)]
enum LogTo {
    Stderr,
    File(PathBuf),
    /// A syslog daemon's unix datagram socket (/dev/log unless told otherwise).
    Syslog(PathBuf),
    Nowhere,
}

/// The tag every log line carries (file, stderr, syslog): `nettool-proxy[PID]`.
const LOG_TAG: &str = "nettool-proxy";

/// How the text/hex/json dump is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Console {
    Text,
    Hex,
    Json(Payload),
}

/// Everything one proxy process does, whichever way it was started.
struct Plan {
    maps: Vec<Mapping>,
    listen_ns: Option<NetNs>,
    target_ns: Option<NetNs>,
    /// The --target-netns text, resolved again when dials fail.
    target_text: Option<String>,
    udp_idle: Duration,
    console: Option<Console>,
    dump_file: Option<PathBuf>,
    decode: bool,
    pcap: Option<PcapOptions>,
    streams: Option<PathBuf>,
    ready_fd: Option<i32>,
    log_to: LogTo,
    log_level: Level,
    listen_fd: Option<OwnedFd>,
    queue: usize,
    json_counters: bool,
    threads: Option<usize>,
    transparent: bool,
    proxy_protocol: Option<crate::proxy::proxy_protocol::ProxyProtocol>,
    /// Said once the log is open (things a person should fix in the setup).
    warnings: Vec<String>,
    /// Started as docker-proxy: its errors name the config key / NETTOOL_PROXY_* variable to
    /// change, since that mode has no command-line options and its stdout/stderr are discarded.
    docker_mode: bool,
}

/// Holds the log's queue, if it has one; dropping it waits briefly for the queued lines (the
/// counters at exit among them) to go out.
struct LogFlush {
    q: Option<Arc<LogQueue>>,
    /// The end of the current stretch where lines wait for room (startup, exit).
    by: Cell<Option<Instant>>,
}

impl LogFlush {
    fn new(q: Option<Arc<LogQueue>>) -> LogFlush {
        LogFlush {
            q,
            by: Cell::new(None),
        }
    }

    /// For the next [`LOG_EXIT_WAIT`], a line that finds the queue full waits for room instead
    /// of being dropped: nothing is forwarded at startup or exit, and those lines (thousands of
    /// listeners for a port range, the counters) are the ones people read.
    fn patient(&self) {
        let by = Instant::now() + LOG_EXIT_WAIT;
        self.by.set(Some(by));
        if let Some(q) = &self.q {
            q.patient_until(Some(by));
        }
    }

    /// Wait (until the stretch's deadline) for the lines so far to be written, then drop lines
    /// on a full queue again. Called before fd 3 is answered: a parent that reads the log
    /// then finds them.
    fn settle(&self) {
        if let Some(q) = &self.q {
            q.flush(self.left());
            q.patient_until(None);
        }
        self.by.set(None);
    }

    fn left(&self) -> Duration {
        match self.by.get() {
            Some(by) => by.saturating_duration_since(Instant::now()),
            None => LOG_EXIT_WAIT,
        }
    }
}

impl Drop for LogFlush {
    fn drop(&mut self) {
        if let Some(q) = &self.q {
            q.flush(self.left());
        }
    }
}

/// How long the process waits at exit for the log destination to take the lines still queued
/// (a dead one must not hold up SIGTERM for long); the same bound for the startup lines.
const LOG_EXIT_WAIT: Duration = Duration::from_secs(2);

fn make_log(to: &LogTo, max: Level, docker_mode: bool) -> anyhow::Result<(Log, LogFlush)> {
    let sink: Box<dyn LineSink> = match to {
        LogTo::Nowhere => return Ok((Log::new(max, |_, _| {}), LogFlush::new(None))),
        LogTo::Syslog(path) => Box::new(Syslog::connect(path, LOG_TAG)?),
        LogTo::Stderr => Box::new(TextLines::new(
            Box::new(std::io::stderr()),
            "stderr",
            LOG_TAG,
        )),
        LogTo::File(p) => {
            let f = tap::open_private(p, true).map_err(|tap::TapError::Open { path, error }| {
                match std_stream_alias(&path) {
                    Some(stream) if docker_mode => anyhow::anyhow!(
                        "cannot open the log file {}: it names this process's {stream}, not a file (dockerd discards it): set `log` in the config file (NETTOOL_PROXY_LOG) to a file path, `syslog` or `syslog:SOCKET`",
                        path.display()
                    ),
                    Some(stream) => anyhow::anyhow!(
                        "cannot open the log file {}: it names this process's {stream}, not a file: the log goes to stderr without --log-file, and `2>&1` moves it to stdout",
                        path.display()
                    ),
                    None => anyhow::anyhow!(
                        "cannot open the log file {} for appending: {error}{}",
                        path.display(),
                        missing_dir_hint(&path, &error)
                    ),
                }
            })?;
            let what = format!("the log file {}", p.display());
            Box::new(TextLines::new(Box::new(f), &what, LOG_TAG))
        }
    };
    // Written from a thread of its own: a destination that stalls must not stall the forwarding.
    let q = Arc::new(LogQueue::start(sink).context("start the log thread")?);
    let q2 = q.clone();
    Ok((
        Log::new(max, move |level, msg| q2.log(level, msg)),
        LogFlush::new(Some(q)),
    ))
}

/// Set once the readiness fd has been answered (and closed): never write to that number again,
/// it may belong to another file by then.
static READY_ANSWERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `fd` is an open descriptor. Asked before the proxy opens anything: an fd the parent
/// did not pass is the next one the proxy's own sockets, pipes and epoll sets get, and writing
/// the readiness answer there (then closing it) would break the proxy itself.
fn fd_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Write docker-proxy's readiness answer to `fd` and close it.
fn answer_ready(fd: i32, result: Result<(), String>) -> anyhow::Result<()> {
    if READY_ANSWERED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    if !fd_open(fd) {
        bail!("--ready-fd {fd}: descriptor {fd} is not open (the parent must pass a pipe there)");
    }
    // SAFETY: the fd is open and is ours to consume: the readiness contract closes it.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let text = match result {
        Ok(()) => "0\n".to_string(),
        Err(e) => format!("1\n{e}"),
    };
    f.write_all(text.as_bytes())
        .with_context(|| format!("--ready-fd {fd}: write"))?;
    Ok(())
}

fn open_ns(what: &str, target: &Option<String>) -> anyhow::Result<Option<NetNs>> {
    target
        .as_deref()
        .map(|t| NetNs::open(t).with_context(|| format!("{what} {t}")))
        .transpose()
}

/// For a file that cannot be made because its directory is missing: say which, and how to
/// make it (nothing creates a log or dump file's directory, /var/log/nettool included).
fn missing_dir_hint(path: &std::path::Path, error: &std::io::Error) -> String {
    match path.parent() {
        Some(dir)
            if error.kind() == std::io::ErrorKind::NotFound
                && !dir.as_os_str().is_empty()
                && !dir.exists() =>
        {
            format!(
                " (the directory {0} does not exist: create it first, e.g. `mkdir -p -m 0700 {0}`)",
                dir.display()
            )
        }
        _ => String::new(),
    }
}

/// A dump destination's open error, with the missing directory named, or for a name of one
/// of this process's own std streams (refused as a symlink, whose message says to remove the
/// link: not /dev/stdout) what to write instead. `docker_key` is the setting that named it in
/// docker-proxy mode (config key, env variable): that mode has no options to suggest.
fn open_error(e: tap::TapError, docker_key: Option<(&str, &str)>) -> anyhow::Error {
    let tap::TapError::Open { path, error } = &e;
    if let Some(stream) = std_stream_alias(path) {
        if let Some((key, var)) = docker_key {
            return anyhow::anyhow!(
                "cannot open dump destination {}: it names this process's {stream}, not a file (dockerd discards it): set `{key}` in the config file ({var}) to a file path",
                path.display()
            );
        }
        return anyhow::anyhow!(
            "cannot open dump destination {}: it names this process's {stream}, not a file: a dump goes to stdout without --dump-file, a pcap with --pcap -, and `2>&1` (or `>&2`) moves either stream",
            path.display()
        );
    }
    let hint = missing_dir_hint(path, error);
    anyhow::anyhow!("{e}{hint}")
}

/// `/dev/stdout` and its other names: the std stream it stands for.
fn std_stream_alias(path: &std::path::Path) -> Option<&'static str> {
    match path.to_str()? {
        "/dev/stdout" | "/dev/fd/1" | "/proc/self/fd/1" => Some("stdout"),
        "/dev/stderr" | "/dev/fd/2" | "/proc/self/fd/2" => Some("stderr"),
        _ => None,
    }
}

/// The dump sinks, and the file the `--json` counters line goes to at exit.
type Sinks = (Vec<Box<dyn Sink>>, Option<File>);

/// The dump sinks, and for `--json --dump-file` a second handle on that file: the counters
/// line at exit goes where the rest of the JSON stream went.
fn build_sinks(plan: &Plan) -> anyhow::Result<Sinks> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let mut counters_to = None;
    if let Some(console) = plan.console {
        let (out, name): (Output, String) = match &plan.dump_file {
            Some(p) => {
                let f = tap::open_private(p, true).map_err(|e| {
                    open_error(
                        e,
                        plan.docker_mode
                            .then_some(("dump_file", "NETTOOL_PROXY_DUMP_FILE")),
                    )
                })?;
                if plan.json_counters {
                    counters_to = Some(f.try_clone().context("dup the dump file")?);
                }
                (Box::new(f), format!("dump to {}", p.display()))
            }
            None => (Box::new(std::io::stdout()), "dump to stdout".into()),
        };
        sinks.push(match console {
            Console::Text => Box::new(ConsoleSink::new(out, name, Style::Text, plan.decode, true)),
            Console::Hex => Box::new(ConsoleSink::new(out, name, Style::Hex, plan.decode, true)),
            Console::Json(p) => Box::new(JsonSink::new(out, name, p, plan.decode)),
        });
    }
    if let Some(p) = &plan.pcap {
        let key = plan.docker_mode.then_some(("pcap", "NETTOOL_PROXY_PCAP"));
        sinks.push(Box::new(
            PcapSink::new(p.clone()).map_err(|e| open_error(e, key))?,
        ));
    }
    if let Some(d) = &plan.streams {
        sinks.push(Box::new(StreamsSink::new(d.clone())?));
    }
    Ok((sinks, counters_to))
}

/// The stop line's tail: the TCP connections and UDP flows still open, each counted in its
/// own words ("; 2 TCP connections and 1 UDP flow open are closed now"), empty for none.
fn still_open(tcp: u64, udp: u64) -> String {
    let kind = |n: u64, one: &str, many: &str| match n {
        0 => None,
        1 => Some(format!("1 {one}")),
        n => Some(format!("{n} {many}")),
    };
    let parts: Vec<String> = [
        kind(tcp, "TCP connection", "TCP connections"),
        kind(udp, "UDP flow", "UDP flows"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match tcp + udp {
        0 => String::new(),
        1 => format!("; {} open is closed now", parts.join(" and ")),
        _ => format!("; {} open are closed now", parts.join(" and ")),
    }
}

/// Bind, announce readiness, serve until SIGINT/SIGTERM/SIGHUP, print counters. Returns the exit code.
fn execute(mut plan: Plan) -> anyhow::Result<i32> {
    // Declared first so it is dropped last, after every line below (exit paths included).
    let (log, flush) = make_log(&plan.log_to, plan.log_level, plan.docker_mode)?;
    for w in &plan.warnings {
        log.log(Level::Warn, w);
    }
    // A startup failure: in the log (on stderr main prints it anyway; dockerd discards stderr,
    // so a log file must hold it), then on fd 3.
    let log_to_stderr = matches!(plan.log_to, LogTo::Stderr);
    let fail_ready = |fd: Option<i32>, e: &anyhow::Error| {
        if !log_to_stderr {
            log.log(Level::Error, &format!("{e:#}"));
        }
        if let Some(fd) = fd {
            flush.settle();
            let _ = answer_ready(fd, Err(format!("{e:#}")));
        }
    };
    let (sinks, counters_to) = match build_sinks(&plan) {
        Ok(s) => s,
        Err(e) => {
            fail_ready(plan.ready_fd, &e);
            return Err(e);
        }
    };
    let (tap, writer): (Option<tap::Tap>, Option<TapWriter>) = if sinks.is_empty() {
        (None, None)
    } else {
        let hook_log = log.clone();
        let (t, w) = tap::start(
            sinks,
            plan.queue,
            Box::new(move |f| {
                if f.sink_goes_on {
                    return hook_log.log(Level::Error, &format!("{}: {}", f.sink, f.error));
                }
                // A cap that was asked for is a planned stop, not a fault.
                let (level, what, then) = if f.limit_reached {
                    (Level::Warn, "stopped as asked", "")
                } else {
                    (Level::Error, "failed", "that dump is stopped, ")
                };
                hook_log.log(
                    level,
                    &format!("{} {what}: {}; {then}forwarding continues", f.sink, f.error),
                )
            }),
        );
        (Some(t), Some(w))
    };
    let proxy = Proxy::bind(ProxyConfig {
        maps: std::mem::take(&mut plan.maps),
        listen_ns: plan.listen_ns.take(),
        target_ns: plan.target_ns.take(),
        target_text: plan.target_text.take(),
        udp_idle: plan.udp_idle,
        tap,
        log: log.clone(),
        listen_fd: plan.listen_fd.take(),
        transparent: plan.transparent,
        proxy_protocol: plan.proxy_protocol,
        threads: plan.threads.unwrap_or(DEFAULT_THREADS).max(1),
    });
    let proxy = match proxy {
        Ok(p) => p,
        Err(e) => {
            let e = anyhow::Error::from(e);
            fail_ready(plan.ready_fd, &e);
            return Err(e);
        }
    };
    flush.patient();
    for r in proxy.recovered() {
        log.log(
            Level::Info,
            &format!(
                "transparent: removed {} item(s) left by dead proxy pid {}{}",
                r.removed.len(),
                r.pid,
                super::not_removed(r)
            ),
        );
    }
    if let Some((what, ns)) = proxy.transparent() {
        log.log(
            Level::Info,
            &format!("transparent: backends see client addresses; added in namespace {ns}: {what}"),
        );
    }
    for l in proxy.listeners() {
        log.log(
            Level::Info,
            &format!("listening on {} {} -> {}", l.proto, l.listen, l.target),
        );
    }
    let counters = proxy.counters();
    let threads = plan.threads.unwrap_or(DEFAULT_THREADS).max(1);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("nettool-proxy")
            .enable_all()
            .build()
    }
    .context("start the async runtime")?;
    let ready_fd = plan.ready_fd;
    flush.settle();
    let run_log = log.clone();
    let usr1_counters = counters.clone();
    let stop_counters = counters.clone();
    let result: anyhow::Result<Option<crate::proxy::transparent::Transparent>> =
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
            let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
            // SIGHUP (the terminal or ssh session went away) ends it the same clean way: by
            // default it would kill the process mid-write (a torn JSON line, a pcap cut
            // mid-record, no counters).
            let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
            let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
            let usr1_log = run_log.clone();
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    usr1_log.log(
                        Level::Info,
                        &format!("counters: {}", usr1_counters.snapshot()),
                    );
                }
            });
            if let Some(fd) = ready_fd {
                answer_ready(fd, Ok(()))?;
            }
            let stop = async move {
                let signal = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                };
                // Said before they are cut: the counters at exit count them as ended.
                let udp = stop_counters
                    .active_udp
                    .load(std::sync::atomic::Ordering::Relaxed);
                let all = stop_counters
                    .active
                    .load(std::sync::atomic::Ordering::Relaxed);
                let open = still_open(all.saturating_sub(udp), udp);
                run_log.log(Level::Info, &format!("{signal}: stopping{open}"));
            };
            let transparent = proxy.run(stop).await.context("serve")?;
            Ok(transparent)
        });
    // Dropping the runtime drops every connection task and with them the tap senders.
    rt.shutdown_timeout(Duration::from_millis(200));
    // After the connections: their replies needed the rules until now.
    let result = result.and_then(|t| match t {
        Some(mut t) => {
            let r = t.remove();
            if r.is_ok() {
                log.log(Level::Info, "transparent: rules and routes removed");
            }
            r.map_err(|e| {
                anyhow::anyhow!(
                    "transparent: could not remove everything ({e}); the next `nettool proxy --transparent` retries from {}",
                    crate::proxy::transparent::JOURNAL_DIR
                )
            })
        }
        None => Ok(()),
    });
    flush.patient();
    if let Some(w) = writer {
        w.finish();
    }
    // A failure after fd 3 said "0" (serving a listener): main prints it on stderr, which
    // dockerd discards, so the log must hold it too.
    if let (Err(e), false) = (&result, log_to_stderr) {
        log.log(Level::Error, &format!("{e:#}"));
    }
    result?;
    let snap = counters.snapshot();
    log.log(Level::Info, &format!("counters at exit: {snap}"));
    if plan.json_counters {
        // One write, after the dump's writer thread has ended: the stream's last line.
        let line = format!(
            "{}\n",
            serde_json::json!({"event": "counters", "counters": snap})
        );
        let _ = match counters_to {
            Some(mut f) => f.write_all(line.as_bytes()),
            None => std::io::stdout().lock().write_all(line.as_bytes()),
        };
    }
    Ok(0)
}

/// `nettool proxy ...` with nettool's own flags.
pub(crate) fn run(a: ProxyArgs, verbose: u8) -> anyhow::Result<i32> {
    let ready_fd = a.ready_fd;
    // Asked before anything is opened: see fd_open.
    let passed = ready_fd.filter(|fd| *fd > 2 && fd_open(*fd));
    let r = match (ready_fd, passed) {
        // Answered and closed, the number would go to the proxy's next socket, and what the
        // proxy writes to that std stream (the log on stderr, a dump on stdout) into a client's
        // connection: seen with `--ready-fd 2 -v` and `--ready-fd 1 --dump`.
        (Some(fd @ 0..=2), _) => Err(Usage(format!(
            "--ready-fd {fd}: descriptor {fd} is the proxy's {}; pass a pipe on 3 or above (in a shell, `--ready-fd 3 3>&1` puts the answer on stdout)",
            ["stdin", "stdout", "stderr"][fd as usize]
        ))
        .into()),
        (Some(fd), None) => Err(Usage(format!(
            "--ready-fd {fd}: descriptor {fd} is not open (the parent must pass a pipe there)"
        ))
        .into()),
        _ => run_args(a, verbose),
    };
    if let (Err(e), Some(fd)) = (&r, passed) {
        let _ = answer_ready(fd, Err(format!("{e:#}")));
    }
    match r {
        // A mistake in the mappings is a usage error: exit 2.
        Err(e)
            if e.downcast_ref::<spec::SpecError>().is_some()
                || e.downcast_ref::<Usage>().is_some() =>
        {
            let _ = writeln!(std::io::stderr(), "nettool: {e:#}");
            Ok(2)
        }
        r => r,
    }
}

/// The mappings a `nettool proxy` invocation serves (LISTEN TARGET, LISTEN=TARGET, -p SPEC...).
pub(crate) fn mappings(a: &ProxyArgs) -> anyhow::Result<Vec<Mapping>> {
    let mut maps = Vec::new();
    match (&a.listen, &a.target) {
        (Some(l), Some(t)) => {
            let spec_text = format!("{l} {t}");
            // `udp:5353 10.0.0.2:53` reads like -p udp:5353=10.0.0.2:53.
            let (prefix, l) = spec::split_proto(&spec_text, l)?;
            let proto = match prefix {
                Some(p) => p,
                None if a.udp => Proto::Udp,
                None => Proto::Tcp,
            };
            if a.udp && prefix == Some(Proto::Tcp) {
                return Err(
                    Usage(format!("{spec_text}: --udp contradicts the tcp: prefix")).into(),
                );
            }
            maps.push(spec::mapping(&spec_text, proto, l, t)?);
        }
        // A lone `LISTEN=TARGET` is a -p spec without the -p; --udp applies to it as well.
        (Some(l), None) if l.contains('=') => {
            let (prefix, _) = spec::split_proto(l, l)?;
            if a.udp && prefix == Some(Proto::Tcp) {
                return Err(Usage(format!("{l}: --udp contradicts the tcp: prefix")).into());
            }
            let mut m = spec::parse_map(l)?;
            if a.udp {
                m.proto = Proto::Udp;
            }
            maps.push(m);
        }
        (Some(l), None) => {
            return Err(Usage(format!(
                "LISTEN {l} given without a TARGET: write `{} proxy {l} IP:PORT` or -p {l}=IP:PORT",
                crate::program::me()
            ))
            .into())
        }
        _ => {}
    }
    for m in &a.maps {
        maps.push(spec::parse_map(m)?);
    }
    Ok(maps)
}

/// A mapping whose target is its own listening socket (same namespace, same port, and the
/// target is the listen address or, for a wildcard listener, any address of that namespace)
/// would connect to itself for every connection until descriptors run out: refused up front.
fn refuse_self_targets(
    maps: &[Mapping],
    listen_ns: Option<&NetNs>,
    target_ns: Option<&NetNs>,
) -> anyhow::Result<()> {
    let current = || NetNs::current().map(|n| n.id());
    let lid = listen_ns.map_or_else(current, |n| Ok(n.id()))?;
    let tid = target_ns.map_or_else(current, |n| Ok(n.id()))?;
    if lid != tid {
        return Ok(());
    }
    for pm in maps.iter().flat_map(Mapping::expand) {
        let (l, t) = (pm.listen, pm.target);
        // A v4-mapped target ([::ffff:127.0.0.1]) is dialled as IPv4; the IPv6 listeners the
        // proxy binds are V6ONLY, so only a listener of the target's own family can be it.
        let t_ip = t.ip().to_canonical();
        if l.port() != t.port() || l.is_ipv4() != t_ip.is_ipv4() {
            continue;
        }
        let mine = l.ip() == t_ip
            || (l.ip().is_unspecified()
                && match listen_ns {
                    Some(ns) => ns.run(move || is_local(t_ip))?,
                    None => is_local(t_ip),
                });
        if mine {
            return Err(Usage(format!(
                "{} {l} -> {t}: the target is this proxy's own listening socket, so every connection would open another one to itself (until file descriptors run out); give the service's address instead, e.g. a container's IP",
                pm.proto
            ))
            .into());
        }
    }
    Ok(())
}

/// Is `ip` an address of the calling thread's namespace? A UDP socket connected to it leaves
/// from it exactly when it is local (no packet is sent).
fn is_local(ip: std::net::IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    let any: std::net::IpAddr = if ip.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    std::net::UdpSocket::bind((any, 0))
        .and_then(|s| s.connect((ip, 9)).map(|()| s))
        .and_then(|s| s.local_addr())
        .is_ok_and(|a| a.ip() == ip)
}

/// What a running proxy forwards, read from its command line with the proxy's own parsers:
/// docker-proxy flags (argv[0] docker-proxy, any binary given docker-proxy's flags, or
/// `nettool proxy -container-ip ...`) or the
/// `nettool proxy` arguments. None when argv is not a proxy of ours or docker's.
pub(crate) fn recognise(argv: &[String]) -> Option<Vec<Mapping>> {
    if let Some(start) = docker::docker_flags_start(argv) {
        return docker::parse_args(&argv[start..])
            .ok()
            .map(|d| vec![d.mapping()]);
    }
    if argv.get(1).map(String::as_str) != Some("proxy") {
        return None;
    }
    match <crate::cli::Cli as clap::Parser>::try_parse_from(argv)
        .ok()?
        .command
    {
        crate::cli::Command::Proxy(a) => mappings(&a).ok(),
        _ => None,
    }
}

fn run_args(a: ProxyArgs, verbose: u8) -> anyhow::Result<i32> {
    let maps = mappings(&a)?;
    if maps.is_empty() {
        return Err(Usage(format!(
            "nothing to forward: give LISTEN TARGET (e.g. `{} proxy 8080 172.19.0.2:80`) or -p SPEC",
            crate::program::me()
        ))
        .into());
    }
    if let Some(pp) = a.proxy_protocol {
        if let Some(why) = maps.iter().find_map(|m| pp.refuses(m.proto)) {
            return Err(Usage(why.into()).into());
        }
    }
    let console = if a.json {
        Some(Console::Json(if a.hex {
            Payload::Hex
        } else if a.dump {
            Payload::Text
        } else {
            Payload::None
        }))
    } else if a.hex {
        Some(Console::Hex)
    } else if a.dump {
        Some(Console::Text)
    } else {
        None
    };
    if a.pcap.as_deref() == Some(std::path::Path::new(crate::tap::pcap::STDOUT)) {
        if console.is_some() && a.dump_file.is_none() {
            return Err(Usage(
                "--pcap - writes the capture to stdout, where --dump/--hex/--json go too: give those a --dump-file".into(),
            )
            .into());
        }
        if a.pcap_files > 1 {
            return Err(Usage(
                "--pcap - (stdout) cannot rotate: --pcap-files needs a file name".into(),
            )
            .into());
        }
    }
    if a.dump_file.is_some() && console.is_none() {
        return Err(Usage(
            "--dump-file needs --dump, --hex or --json (it says where that output goes)".into(),
        )
        .into());
    }
    if let Some((first, second, proto, addr)) = spec::first_overlap(&maps) {
        return Err(Usage(format!(
            "{second} would listen on {proto} {addr}, which {first} takes already: a port can be forwarded once per address; drop one or give it another port"
        ))
        .into());
    }
    let listen_ns = open_ns("--listen-netns", &a.listen_netns)?;
    let target_ns = open_ns("--target-netns", &a.target_netns)?;
    refuse_self_targets(&maps, listen_ns.as_ref(), target_ns.as_ref())?;
    let plan = Plan {
        maps,
        listen_ns,
        target_ns,
        target_text: a.target_netns.clone(),
        udp_idle: Duration::from_secs(a.udp_timeout.max(1)),
        console,
        dump_file: a.dump_file,
        decode: !a.no_decode,
        pcap: a.pcap.map(|path| PcapOptions {
            path,
            max_bytes: a.pcap_max_mb,
            files: a.pcap_files.max(1),
        }),
        streams: a.streams,
        ready_fd: a.ready_fd,
        log_to: match (a.log_file, a.syslog_socket) {
            (Some(p), _) => LogTo::File(p),
            (None, Some(p)) => LogTo::Syslog(p),
            (None, None) if a.syslog => LogTo::Syslog(syslog_client::DEFAULT_SOCKET.into()),
            (None, None) => LogTo::Stderr,
        },
        log_level: if verbose > 0 {
            Level::Debug
        } else {
            Level::Info
        },
        listen_fd: None,
        queue: a.dump_queue.max(1),
        json_counters: a.json,
        threads: a.threads,
        transparent: a.transparent,
        proxy_protocol: a.proxy_protocol,
        warnings: Vec::new(),
        docker_mode: false,
    };
    execute(plan)
}

/// Where docker-proxy mode logs: the config's `log` / NETTOOL_PROXY_LOG value is a file path,
/// `syslog` (/dev/log) or `syslog:SOCKET`.
fn docker_log_to(d: &DockerArgs, value: Option<&str>) -> LogTo {
    match value {
        None => LogTo::Nowhere,
        Some("syslog") => LogTo::Syslog(syslog_client::DEFAULT_SOCKET.into()),
        Some(v) => match v.strip_prefix("syslog:") {
            Some(sock) => LogTo::Syslog(PathBuf::from(sock)),
            None => LogTo::File(PathBuf::from(d.expand(v))),
        },
    }
}

fn docker_plan(d: &DockerArgs, cfg: &DockerProxyConfig) -> Plan {
    let log_to = docker_log_to(d, cfg.log_file.as_deref());
    let log_file = match &log_to {
        LogTo::File(p) => Some(p.clone()),
        _ => None,
    };
    let mut warnings = Vec::new();
    let console = match cfg.dump.as_deref() {
        Some("text") => Some(Console::Text),
        Some("hex") => Some(Console::Hex),
        // `--json --dump`, not `--json`: this mode's one knob shows the payloads (docs/proxy.md
        // says why; `json_dump_is_json_with_text_payloads` pins it).
        Some("json") => Some(Console::Json(Payload::Text)),
        _ => None,
    };
    let dump_file = cfg
        .dump_file
        .as_deref()
        .map(|p| PathBuf::from(d.expand(p)))
        .or_else(|| log_file.clone());
    if console.is_some() && dump_file.is_none() {
        warnings.push(format!(
            "dump = {:?} but no dump_file (NETTOOL_PROXY_DUMP_FILE) and the log is not a file: the dump goes to stdout, which dockerd discards",
            cfg.dump.as_deref().unwrap_or_default()
        ));
    }
    Plan {
        maps: vec![d.mapping()],
        listen_ns: None,
        target_ns: None,
        target_text: None,
        udp_idle: Duration::from_secs(cfg.udp_timeout.unwrap_or(90).max(1)),
        console,
        dump_file,
        decode: cfg.decode.unwrap_or(true),
        pcap: cfg.pcap.as_deref().map(|p| PcapOptions {
            path: PathBuf::from(d.expand(p)),
            max_bytes: cfg.pcap_max_mb.map(|mb| (mb * 1e6) as u64),
            files: cfg.pcap_files.unwrap_or(1).max(1),
        }),
        streams: cfg.streams.as_deref().map(|p| PathBuf::from(d.expand(p))),
        ready_fd: Some(3),
        log_to,
        log_level: Level::Info,
        listen_fd: None,
        queue: 1024,
        json_counters: false,
        threads: std::env::var("NETTOOL_PROXY_THREADS")
            .ok()
            .and_then(|v| v.parse().ok()),
        transparent: cfg.transparent.unwrap_or(false),
        proxy_protocol: cfg.proxy_protocol,
        warnings,
        docker_mode: true,
    }
}

/// If this process was started as docker-proxy, run that and return the exit code.
/// Called by main before the normal CLI parse (Go flag syntax is not clap's).
pub(crate) fn docker_proxy_entry() -> Option<i32> {
    let argv: Vec<String> = std::env::args().collect();
    let flags = &argv[docker::docker_flags_start(&argv)?..];
    if flags
        .iter()
        .any(|a| a == "-h" || a == "--help" || a == "-help")
    {
        let mut e = std::io::stderr();
        let _ = writeln!(
            e,
            "Usage of docker-proxy (nettool):\n  -container-ip string\n  -container-port int\n  -host-ip string\n  -host-port int\n  -proto string (tcp, udp)\n  -use-listen-fd\n\nLogging and dumping: NETTOOL_PROXY_LOG=FILE|syslog|syslog:SOCKET, NETTOOL_PROXY_DUMP=text|hex|json,\nNETTOOL_PROXY_DUMP_FILE, NETTOOL_PROXY_PCAP, NETTOOL_PROXY_PCAP_MAX_MB, NETTOOL_PROXY_PCAP_FILES,\nNETTOOL_PROXY_STREAMS, NETTOOL_PROXY_TRANSPARENT=1, NETTOOL_PROXY_PROXY_PROTOCOL=v1|v2,\nNETTOOL_PROXY_THREADS, or {}\n(NETTOOL_PROXY_CONFIG overrides the path). See docs/proxy.md.",
            docker::CONFIG_PATH
        );
        return Some(2);
    }
    // dockerd always passes fd 3 for the answer; a person running the drop-in by hand does
    // not, and then there is no one to answer (fd 3 would be the proxy's own first socket).
    let ready_fd = fd_open(3).then_some(3);
    let listen_fd_passed = fd_open(4);
    let outcome = (|| -> anyhow::Result<i32> {
        let d = docker::parse_args(flags)?;
        let cfg = DockerProxyConfig::load(|k| std::env::var(k).ok())?;
        let mut plan = docker_plan(&d, &cfg);
        plan.ready_fd = ready_fd;
        if let LogTo::Syslog(p) = &plan.log_to {
            // A missing syslog daemon must not stop `docker run -p`: forward anyway, say it on
            // stderr (seen when run by hand; dockerd discards it).
            if let Err(e) = Syslog::connect(p, LOG_TAG) {
                let _ = writeln!(
                    std::io::stderr(),
                    "docker-proxy (nettool): {e}; logging to stderr instead, forwarding goes on"
                );
                plan.log_to = LogTo::Stderr;
            }
        }
        if d.use_listen_fd {
            // SAFETY: with -use-listen-fd the parent passes the listening socket as fd 4; we take it once.
            if !listen_fd_passed {
                bail!("-use-listen-fd given but fd 4 is not open: the parent must pass the socket it bound as fd 4 (as a newer dockerd does), or leave out -use-listen-fd and the proxy binds -host-ip:-host-port itself");
            }
            plan.listen_fd = Some(unsafe { OwnedFd::from_raw_fd(4) });
        }
        if !d.ignored.is_empty() {
            let (log, _flush) = make_log(&plan.log_to, Level::Info, true)?;
            log.log(
                Level::Warn,
                &format!(
                    "ignoring unknown docker-proxy arguments: {}",
                    d.ignored.join(" ")
                ),
            );
        }
        execute(plan)
    })();
    Some(match outcome {
        Ok(code) => code,
        Err(e) => {
            // The daemon reads the reason from fd 3; stderr is usually /dev/null.
            if let Some(fd) = ready_fd {
                let _ = answer_ready(fd, Err(format!("{e:#}")));
            }
            let _ = writeln!(std::io::stderr(), "docker-proxy (nettool): {e:#}");
            1
        }
    })
}

/// Examples and notes for `nettool proxy --help`.
pub(crate) const PROXY_HELP: &str =
    "SPEC is [tcp:|udp:]LISTEN=TARGET with LISTEN = [IP:]PORT[-PORT] and TARGET = IP[:PORT[-PORT]];
IPv6 goes in brackets ([::1]:8080). A LISTEN without an IP listens on 0.0.0.0 and [::].
Without --dump/--hex/--pcap/--streams/--json, TCP bytes move with splice(2) once a read fills
the 8 KiB buffer (short exchanges are copied through it). -v logs a line per connection.
SIGUSR1 logs the counters; SIGINT/SIGTERM stop (exit 0) after logging them.

Examples:
  nettool proxy 8080 172.19.0.2:80
  nettool proxy --dump 8080 172.19.0.2:80
  nettool proxy -p 8080=172.19.0.2:80 -p udp:5353=172.19.0.3:53 -p 9000-9099=10.0.0.5:9000-9099
  nettool proxy --listen-netns host --target-netns web 8080 127.0.0.1:80
  nettool proxy --hex --dump-file /tmp/dump.txt --pcap /tmp/p.pcap 6379 172.19.0.4:6379
  nettool proxy --pcap /tmp/p.pcap --pcap-max-mb 100 --pcap-files 5 8080 172.19.0.2:80
  nettool proxy --pcap - 8080 172.19.0.2:80 | tshark -l -r -     (pcap on stdout, live)
  nettool proxy --json --pcap /tmp/dns.pcap udp:53 172.19.0.5:53
  nettool proxy --syslog 8080 172.19.0.2:80       (log to /dev/log, facility daemon)

docker-proxy drop-in: give dockerd --userland-proxy-path=/path/to/nettool (or a symlink
named docker-proxy). docker-proxy's flags are recognised whatever the binary is called,
-use-listen-fd (the socket on fd 4) included, and it answers on fd 3, so a startup failure's
reason shows in `docker run`'s error. Logging, dumping and the rest come from the environment
or /etc/nettool/docker-proxy.toml (NETTOOL_PROXY_CONFIG):
  NETTOOL_PROXY_LOG=FILE|syslog|syslog:SOCKET   (key log)
  NETTOOL_PROXY_DUMP=text|hex|json, NETTOOL_PROXY_DUMP_FILE, NETTOOL_PROXY_PCAP,
  NETTOOL_PROXY_PCAP_MAX_MB, NETTOOL_PROXY_PCAP_FILES, NETTOOL_PROXY_STREAMS,
  NETTOOL_PROXY_TRANSPARENT=yes, NETTOOL_PROXY_PROXY_PROTOCOL=v1|v2,
  NETTOOL_PROXY_THREADS (environment only)
  e.g. NETTOOL_PROXY_LOG=syslog nettool -proto tcp -host-ip 127.0.0.1 -host-port 8080 \\
         -container-ip 172.17.0.2 -container-port 80";

/// Arguments of `proxy`.
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// Listen side of one mapping: [IP:]PORT[-PORT].
    pub listen: Option<String>,
    /// Target of that mapping: IP:PORT[-PORT].
    pub target: Option<String>,
    /// A mapping [tcp:|udp:]LISTEN=TARGET (repeatable).
    #[arg(short = 'p', long = "map", value_name = "SPEC")]
    pub maps: Vec<String>,
    /// The positional LISTEN TARGET pair is UDP.
    #[arg(long)]
    pub udp: bool,
    /// Listen inside this namespace (name, path, pid:N, container:NAME).
    #[arg(long, value_name = "NS")]
    pub listen_netns: Option<String>,
    /// Connect to the backend from inside this namespace (name, path, pid:N, container:NAME);
    /// resolved again when a dial fails, so a restarted container is followed.
    #[arg(long, value_name = "NS")]
    pub target_netns: Option<String>,
    /// Append log lines here instead of stderr (file mode 0600).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["syslog", "syslog_socket"])]
    pub log_file: Option<PathBuf>,
    /// Send log lines to syslog (facility daemon, tag nettool-proxy) through /dev/log.
    #[arg(long)]
    pub syslog: bool,
    /// Send log lines to the syslog daemon listening on this unix datagram socket (implies --syslog).
    #[arg(long, value_name = "PATH")]
    pub syslog_socket: Option<PathBuf>,
    /// When every listener is bound write "0\n" to this fd (3 or above) and close it; on failure "1\n<error>".
    #[arg(long, value_name = "N")]
    pub ready_fd: Option<i32>,
    /// Dump payloads as text, like socat -v (L7 decoding on).
    #[arg(long)]
    pub dump: bool,
    /// Dump payloads as hex, like socat -x.
    #[arg(long)]
    pub hex: bool,
    /// Write a pcap with synthesised headers for both legs of every connection (`-`: stdout,
    /// for `| tshark -r -`).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Cap each pcap file at this many megabytes, decimals allowed (0.5 = 500 kB); then rotate
    /// (see --pcap-files) or, with one file, stop the capture (forwarding goes on).
    // Parsed to bytes.
    #[arg(long, value_name = "MB", value_parser = parse_megabytes, requires = "pcap")]
    pub pcap_max_mb: Option<u64>,
    /// Keep this many pcap files when rotating (FILE, FILE.1, ...).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "pcap")]
    pub pcap_files: u32,
    /// Write one file per connection and direction into DIR (like tcpflow).
    #[arg(long, value_name = "DIR")]
    pub streams: Option<PathBuf>,
    /// A JSON-lines event stream (opens, data sizes, L7 decodes, closes) on stdout or --dump-file.
    #[arg(long)]
    pub json: bool,
    /// Write the --dump/--hex/--json output here (appended, mode 0600) instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub dump_file: Option<PathBuf>,
    /// Do not decode HTTP/TLS/DNS/Redis in the dump.
    #[arg(long)]
    pub no_decode: bool,
    /// Forget a UDP flow after this many idle seconds.
    #[arg(long, value_name = "SECS", default_value_t = 90)]
    pub udp_timeout: u64,
    /// The backend sees the client's address, not the proxy's (IP_TRANSPARENT, plus a mark
    /// rule and a policy route in the target namespace, removed on exit).
    #[arg(long)]
    pub transparent: bool,
    /// Send a PROXY protocol header with the client's address to the backend first (TCP: once
    /// per connection; UDP: in front of every datagram, v2 only), for HAProxy accept-proxy,
    /// nginx proxy_protocol. v1 is the text line older backends read.
    #[arg(long, value_name = "VERSION", value_enum)]
    pub proxy_protocol: Option<crate::proxy::proxy_protocol::ProxyProtocol>,
    /// Events queued for the dump writer before the proxy waits (lossless back-pressure).
    #[arg(long, value_name = "N", default_value_t = 1024, hide = true)]
    pub dump_queue: usize,
    /// Threads serving TCP connections (default 2): the plain path's event loops, or tokio's
    /// workers when something watches (a dump, -v, a PROXY header). 1 serves everything on one
    /// thread; more spread connections over cores.
    #[arg(long, value_name = "N", env = "NETTOOL_PROXY_THREADS")]
    pub threads: Option<usize>,
}

/// `--pcap-max-mb`: megabytes (10^6 bytes, decimals allowed) to a byte count.
fn parse_megabytes(s: &str) -> Result<u64, String> {
    match s.trim().parse::<f64>() {
        Ok(mb) if mb.is_finite() && mb * 1e6 >= 1000.0 && mb <= 1e9 => Ok((mb * 1e6) as u64),
        _ => Err(format!(
            "'{s}' is not a size in megabytes from 0.001 to 1000000000 (e.g. 100 or 0.5)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_line_names_connections_and_flows_apart() {
        assert_eq!(still_open(0, 0), "");
        assert_eq!(still_open(1, 0), "; 1 TCP connection open is closed now");
        assert_eq!(still_open(0, 1), "; 1 UDP flow open is closed now");
        assert_eq!(
            still_open(2, 1),
            "; 2 TCP connections and 1 UDP flow open are closed now"
        );
        assert_eq!(still_open(0, 3), "; 3 UDP flows open are closed now");
    }

    #[test]
    fn json_dump_is_json_with_text_payloads() {
        let d = docker::parse_args(
            &[
                "-container-ip",
                "172.17.0.2",
                "-container-port",
                "80",
                "-host-port",
                "8080",
            ]
            .map(String::from),
        )
        .unwrap();
        let cfg = DockerProxyConfig {
            dump: Some("json".into()),
            ..Default::default()
        };
        assert_eq!(
            docker_plan(&d, &cfg).console,
            Some(Console::Json(Payload::Text))
        );
    }
}
