//! Running a proxy: the plan either way of starting builds (nettool's flags or docker-proxy's),
//! its log, the readiness answer on fd 3, the dump sinks, and the proxy until a signal ends it.

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::netns::NetNs;
use crate::proxy::logq::{LineSink, LogQueue, TextLines};
use crate::proxy::spec::Mapping;
use crate::proxy::syslog::Syslog;
use crate::proxy::{Level, Log, Proxy, ProxyConfig};
use crate::tap::json::{JsonSink, Payload};
use crate::tap::pcap::{PcapOptions, PcapSink, STDOUT};
use crate::tap::streams::StreamsSink;
use crate::tap::text::{ConsoleSink, Style};
use crate::tap::{self, Output, Sink, TapWriter};

/// Runtime threads unless --threads / NETTOOL_PROXY_THREADS says otherwise. Two: bulk
/// throughput measured the same with one or two (the kernel copies, via splice), but short
/// connections (accept + dial + relay) went twice as fast with two workers on a 2-core machine.
const DEFAULT_THREADS: usize = 2;

/// Where log lines go.
#[derive(Debug, Clone)]
pub(super) enum LogTo {
    Stderr,
    File(PathBuf),
    /// A syslog daemon's unix datagram socket (/dev/log unless told otherwise).
    Syslog(PathBuf),
    Nowhere,
}

/// The tag every log line carries (file, stderr, syslog): `nettool-proxy[PID]`.
pub(super) const LOG_TAG: &str = "nettool-proxy";

/// How the text/hex/json dump is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Console {
    Text,
    Hex,
    Json(Payload),
}

/// Everything one proxy process does, whichever way it was started.
pub(super) struct Plan {
    pub(super) maps: Vec<Mapping>,
    /// Mappings with a unix socket end.
    pub(super) unix_maps: Vec<crate::proxy::unix::UnixMap>,
    pub(super) listen_ns: Option<NetNs>,
    pub(super) target_ns: Option<NetNs>,
    /// The --target-netns text, resolved again when dials fail.
    pub(super) target_text: Option<String>,
    /// What the user gave --listen-netns (watched, and followed to a new namespace).
    pub(super) listen_text: Option<String>,
    pub(super) udp_idle: Duration,
    pub(super) console: Option<Console>,
    pub(super) dump_file: Option<PathBuf>,
    pub(super) decode: bool,
    pub(super) pcap: Option<PcapOptions>,
    pub(super) streams: Option<PathBuf>,
    pub(super) ready_fd: Option<i32>,
    pub(super) log_to: LogTo,
    pub(super) log_level: Level,
    pub(super) listen_fd: Option<OwnedFd>,
    pub(super) queue: usize,
    pub(super) json_counters: bool,
    pub(super) threads: Option<usize>,
    pub(super) transparent: bool,
    pub(super) proxy_protocol: Option<crate::proxy::proxy_protocol::ProxyProtocol>,
    /// What the mappings' names and interfaces became, logged before the listeners.
    pub(super) found: Vec<String>,
    /// Started as docker-proxy: its errors name the config key / NETTOOL_PROXY_* variable to
    /// change, since that mode has no command-line options and its stdout/stderr are discarded.
    pub(super) docker_mode: bool,
}

/// Holds the log's queue, if it has one; dropping it waits briefly for the queued lines (the
/// counters at exit among them) to go out.
pub(super) struct LogFlush {
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

pub(super) fn make_log(
    to: &LogTo,
    max: Level,
    docker_mode: bool,
) -> anyhow::Result<(Log, LogFlush)> {
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
pub(super) fn fd_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Write docker-proxy's readiness answer to `fd` and close it.
pub(super) fn answer_ready(fd: i32, result: Result<(), String>) -> anyhow::Result<()> {
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

pub(super) fn open_ns(what: &str, target: &Option<String>) -> anyhow::Result<Option<NetNs>> {
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

/// In docker-proxy mode, refuse a dump or capture that would go to stdout: dockerd discards
/// it, so it would be lost with no word. Refused before anything is opened, on fd 3, so
/// `docker run` shows the setting to change.
fn to_discarded_stdout(plan: &Plan) -> anyhow::Result<()> {
    if plan
        .pcap
        .as_ref()
        .is_some_and(|p| p.path.as_os_str() == STDOUT)
    {
        bail!(
            "pcap = \"{STDOUT}\" writes the capture to stdout, which dockerd discards: set `pcap` in the config file (NETTOOL_PROXY_PCAP) to a file path"
        );
    }
    if let (Some(console), None) = (plan.console, &plan.dump_file) {
        let what = match console {
            Console::Text => "text",
            Console::Hex => "hex",
            Console::Json(_) => "json",
        };
        bail!(
            "dump = \"{what}\" has no file: no `dump_file` (NETTOOL_PROXY_DUMP_FILE) and the log is not a file, so it would go to stdout, which dockerd discards: set `dump_file` in the config file (NETTOOL_PROXY_DUMP_FILE) to a file path"
        );
    }
    Ok(())
}

/// The dump sinks, and the file the `--json` counters line goes to at exit.
type Sinks = (Vec<Box<dyn Sink>>, Option<File>);

/// The dump sinks, and for `--json --dump-file` a second handle on that file: the counters
/// line at exit goes where the rest of the JSON stream went.
fn build_sinks(plan: &Plan) -> anyhow::Result<Sinks> {
    if plan.docker_mode {
        to_discarded_stdout(plan)?;
    }
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
pub(super) fn execute(mut plan: Plan) -> anyhow::Result<i32> {
    // Declared first so it is dropped last, after every line below (exit paths included).
    let (log, flush) = make_log(&plan.log_to, plan.log_level, plan.docker_mode)?;
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
    // The runtime and the signal handlers come before the listeners: the plain path serves
    // from threads of its own as soon as it is bound, and a SIGTERM sent once a connection got
    // through must find its handler (the default action kills the proxy with no counters and
    // no removal of transparent mode's rules). A signal before the loop waits is kept.
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
    let (mut int, mut term, mut hup, mut usr1) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _in_runtime = rt.enter();
        (
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
            // SIGHUP (the terminal or ssh session went away) ends it the same clean way: by
            // default it would kill the process mid-write (a torn JSON line, a pcap cut
            // mid-record, no counters).
            signal(SignalKind::hangup()).context("SIGHUP handler")?,
            signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?,
        )
    };
    let proxy = Proxy::bind(ProxyConfig {
        maps: std::mem::take(&mut plan.maps),
        listen_ns: plan.listen_ns.take(),
        listen_text: plan.listen_text.take(),
        target_ns: plan.target_ns.take(),
        target_text: plan.target_text.take(),
        udp_idle: plan.udp_idle,
        tap,
        log: log.clone(),
        listen_fd: plan.listen_fd.take(),
        transparent: plan.transparent,
        proxy_protocol: plan.proxy_protocol,
        threads: plan.threads.unwrap_or(DEFAULT_THREADS).max(1),
        unix: std::mem::take(&mut plan.unix_maps),
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
                crate::cmd::not_removed(r)
            ),
        );
    }
    if let Some((what, ns)) = proxy.transparent() {
        log.log(
            Level::Info,
            &format!("transparent: backends see client addresses; added in namespace {ns}: {what}"),
        );
    }
    for line in &plan.found {
        log.log(Level::Info, line);
    }
    for l in proxy.listeners() {
        let more: String = l.more.iter().map(|t| format!(" or {t}")).collect();
        log.log(
            Level::Info,
            &format!(
                "listening on {} {} -> {}{more}",
                l.proto, l.listen, l.target
            ),
        );
    }
    for u in proxy.unix_listeners() {
        log.log(
            Level::Info,
            &format!("listening on {} -> {}", u.listen, u.target),
        );
    }
    let counters = proxy.counters();
    let ready_fd = plan.ready_fd;
    flush.settle();
    let run_log = log.clone();
    let usr1_counters = counters.clone();
    let stop_counters = counters.clone();
    let result: anyhow::Result<Option<crate::proxy::transparent::Transparent>> =
        rt.block_on(async move {
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
}
