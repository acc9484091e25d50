//! `nettool proxy`: forward ports (TCP/UDP, ranges, across namespaces) and show what passes.
//! Also the docker-proxy drop-in (argv[0] `docker-proxy`, or `nettool proxy -proto ...`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::proxy::docker;
use crate::proxy::spec::unix::{self, UnixSpec};
use crate::proxy::spec::{self, MapSpec, Mapping};
use crate::proxy::syslog as syslog_client;
use crate::proxy::{Level, Proto};
use crate::tap::json::Payload;
use crate::tap::pcap::PcapOptions;

mod docker_mode;
mod names;
mod plan;

pub(crate) use docker_mode::docker_proxy_entry;
use names::{refuse_self_targets, resolve};
use plan::{answer_ready, execute, fd_open, open_ns, Console, LogTo, Plan};

/// A mistake in how the command was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

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

/// The mappings a `nettool proxy` invocation serves (LISTEN TARGET, LISTEN=TARGET, -p SPEC...),
/// as written: [`resolve`] looks their names and zones up. A socat form's ports may be service
/// names, looked up in `services` (the /etc/services of the process that runs them).
pub(crate) fn mappings(a: &ProxyArgs, services: &spec::Services) -> anyhow::Result<Vec<MapSpec>> {
    let mut maps = Vec::new();
    // Mappings with a unix socket end are unix_mappings'.
    let pair_is_unix = match (&a.listen, &a.target) {
        (Some(l), Some(t)) => unix::parse(&format!("{l} {t}"), l, t, services)?.is_some(),
        (Some(l), None) => unix::parse_map(l, services)?.is_some(),
        _ => false,
    };
    match (&a.listen, &a.target) {
        _ if pair_is_unix => {}
        (Some(l), Some(t)) if spec::listen_head(l).is_some() => {
            // socat's own form: `TCP-LISTEN:8080,fork,reuseaddr TCP:db.internal:5432`.
            let spec_text = format!("{l} {t}");
            let form = spec::listen_form(&spec_text, l, services)?
                .ok_or_else(|| Usage(format!("{spec_text}: not a socat listen address")))?;
            if a.udp && form.proto == Proto::Tcp {
                return Err(Usage(format!(
                    "{spec_text}: --udp contradicts {}",
                    spec::listen_head(l).unwrap_or("TCP-LISTEN")
                ))
                .into());
            }
            maps.push(spec::socat_mapping(&spec_text, form, t, services)?);
        }
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
            if let Some(head) = spec::listen_head(l).filter(|_| a.udp) {
                if spec::parse_map(l, services)?.proto == Proto::Tcp {
                    return Err(Usage(format!("{l}: --udp contradicts {head}")).into());
                }
            }
            let mut m = spec::parse_map(l, services)?;
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
        if unix::parse_map(m, services)?.is_none() {
            maps.push(spec::parse_map(m, services)?);
        }
    }
    Ok(maps)
}

/// The mappings with a unix socket end (`unix:/tmp/d.sock 127.0.0.1:2375`,
/// `TCP-LISTEN:2375 UNIX-CONNECT:/var/run/docker.sock`, `-p unix:/a.sock=unix:/b.sock`).
pub(crate) fn unix_mappings(
    a: &ProxyArgs,
    services: &spec::Services,
) -> anyhow::Result<Vec<UnixSpec>> {
    let mut out = Vec::new();
    match (&a.listen, &a.target) {
        (Some(l), Some(t)) => out.extend(unix::parse(&format!("{l} {t}"), l, t, services)?),
        (Some(l), None) => out.extend(unix::parse_map(l, services)?),
        _ => {}
    }
    if a.udp && !out.is_empty() {
        return Err(Usage(format!(
            "{}: --udp does not apply: a unix socket mapping is a stream, forwarded like TCP",
            out[0].text
        ))
        .into());
    }
    for m in &a.maps {
        out.extend(unix::parse_map(m, services)?);
    }
    Ok(out)
}

/// A flag that cannot go with a mapping's unix end: a socket path lives in a mount
/// namespace, not a network one; transparent mode and PROXY headers carry IP addresses.
fn refuse_with_unix(a: &ProxyArgs, specs: &[UnixSpec]) -> Result<(), Usage> {
    let netns = |flag: &str, ns: &str, path: &std::path::Path, text: &str| {
        Usage(format!(
            "{text}: {flag} {ns} does not apply to the socket file {}: a unix socket path lives in a mount namespace, not a network one (it is made and connected where nettool runs); drop {flag}, or run nettool in that mount namespace (e.g. `nsenter -t PID -m nettool proxy ...`)",
            path.display()
        ))
    };
    for s in specs {
        if let (Some(ns), Some(p)) = (&a.listen_netns, s.listen_path()) {
            return Err(netns("--listen-netns", ns, &p.path, &s.text));
        }
        if let (Some(ns), Some(p)) = (&a.target_netns, s.target_path()) {
            return Err(netns("--target-netns", ns, p, &s.text));
        }
        if a.transparent {
            return Err(Usage(format!(
                "{}: --transparent does not apply to a mapping with a unix socket end (a unix socket has no client address to carry)",
                s.text
            )));
        }
        if a.proxy_protocol.is_some() {
            return Err(Usage(format!(
                "{}: --proxy-protocol does not apply to a mapping with a unix socket end",
                s.text
            )));
        }
    }
    Ok(())
}

/// One mapping of a running proxy, as its arguments read here.
#[derive(Debug, Clone)]
pub(crate) struct Recognised {
    /// The mapping; its `target_ip` is a stand-in (0.0.0.0) when `unresolved` is set.
    pub mapping: Mapping,
    /// The target name, when it does not resolve as the process looks it up.
    pub unresolved: Option<UnresolvedName>,
}

/// A running proxy's target name that does not resolve as it looks it up, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnresolvedName {
    /// The name as written.
    pub name: String,
    /// The resolver's reason (NXDOMAIN, a nameserver that did not answer, ...).
    pub why: String,
    /// Which resolver files and namespace it was looked up with (the proxy's own view).
    pub looked_up: String,
}

/// What a running proxy forwards, read from its command line with the proxy's own parsers:
/// docker-proxy flags (argv[0] docker-proxy, any binary given docker-proxy's flags, or
/// `nettool proxy -container-ip ...`) or the
/// `nettool proxy` arguments, its names looked up as process `pid` does. None when argv is
/// not a proxy of ours or docker's. A target name that does not resolve still makes a
/// mapping: the proxy keeps dialling its last addresses, so it is a proxy whose target is
/// not known here.
pub(crate) fn recognise(argv: &[String], pid: u32) -> Option<Vec<Recognised>> {
    if let Some(start) = docker::docker_flags_start(argv) {
        return docker::parse_args(&argv[start..]).ok().map(|d| {
            vec![Recognised {
                mapping: d.mapping(),
                unresolved: None,
            }]
        });
    }
    if argv.get(1).map(String::as_str) != Some("proxy") {
        return None;
    }
    match <crate::cli::Cli as clap::Parser>::try_parse_from(argv)
        .ok()?
        .command
    {
        crate::cli::Command::Proxy(a) => {
            names::recognised(mappings(&a, &spec::Services::of_pid(pid)).ok()?, pid)
        }
        _ => None,
    }
}

/// A running socat port forward (`socat TCP-LISTEN:8080,fork TCP:db:80`) read with the
/// proxy's socat parser ([`spec::running_socat`]), its names through the same budget and
/// with the same unresolved-name mapping as a `nettool proxy`.
pub(crate) fn recognise_socat(argv: &[String], pid: u32) -> Option<Vec<Recognised>> {
    names::recognised(
        vec![spec::running_socat(argv, &spec::Services::of_pid(pid))?],
        pid,
    )
}

fn run_args(a: ProxyArgs, verbose: u8) -> anyhow::Result<i32> {
    let services = spec::Services::system();
    let specs = mappings(&a, &services)?;
    let unix_specs = unix_mappings(&a, &services)?;
    refuse_with_unix(&a, &unix_specs)?;
    if specs.is_empty() && unix_specs.is_empty() {
        return Err(Usage(format!(
            "nothing to forward: give LISTEN TARGET (e.g. `{} proxy 8080 172.19.0.2:80`) or -p SPEC",
            crate::program::me()
        ))
        .into());
    }
    if let Some(pp) = a.proxy_protocol {
        if let Some(why) = specs.iter().find_map(|m| pp.refuses(m.proto)) {
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
    let listen_ns = open_ns("--listen-netns", &a.listen_netns)?;
    let target_ns = open_ns("--target-netns", &a.target_netns)?;
    let (maps, mut found) = resolve(&specs, listen_ns.as_ref(), target_ns.as_ref())?;
    let mut unix_maps = Vec::new();
    for u in &unix_specs {
        unix_maps.extend(crate::proxy::unix::maps_of(
            u,
            target_ns.as_ref(),
            &mut |m| {
                let (maps, more) = resolve(
                    std::slice::from_ref(m),
                    listen_ns.as_ref(),
                    target_ns.as_ref(),
                )?;
                found.extend(more);
                Ok(maps)
            },
        )?);
    }
    // What each namespace text became, first: a bare word may be a name, a pid or a container,
    // and the inode is what a --target-netns follow line later says the proxy dialed in.
    let namespaces = [
        (
            "--listen-netns",
            &a.listen_netns,
            &listen_ns,
            "listeners are bound there",
        ),
        (
            "--target-netns",
            &a.target_netns,
            &target_ns,
            "backends are dialed there",
        ),
    ];
    for (i, (flag, text, ns, role)) in namespaces.into_iter().enumerate() {
        if let (Some(text), Some(ns)) = (text, ns) {
            let is = match ns.label() == text {
                true => String::new(),
                false => format!(" {},", ns.label()),
            };
            let inode = ns.id().inode;
            found.insert(
                i.min(found.len()),
                format!("{flag} {text} is{is} network namespace inode {inode} ({role})"),
            );
        }
    }
    if let Some((first, second, proto, addr)) = spec::first_overlap(&maps) {
        return Err(Usage(format!(
            "{second} would listen on {proto} {addr}, which {first} takes already: a port can be forwarded once per address; drop one or give it another port"
        ))
        .into());
    }
    refuse_self_targets(&maps, listen_ns.as_ref(), target_ns.as_ref())?;
    let plan = Plan {
        maps,
        unix_maps,
        listen_ns,
        target_ns,
        target_text: a.target_netns.clone(),
        listen_text: a.listen_netns.clone(),
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
        found,
        docker_mode: false,
    };
    execute(plan)
}

/// Examples and notes for `nettool proxy --help`.
pub(crate) const PROXY_HELP: &str =
    "SPEC is [tcp:|udp:]LISTEN=TARGET with LISTEN = [HOST:]PORT[-PORT] and TARGET = HOST[:PORT[-PORT]].
HOST is an IPv4 address, an IPv6 one in brackets ([::1]:8080), a link-local one with its
interface ([fe80::1%eth0]:8080, the name or index looked up in --listen-netns/--target-netns),
or a name. Names are resolved (/etc/hosts, then resolv.conf's nameservers) where nettool runs,
--target-netns or not: a LISTEN name at start, on each of its addresses the listen namespace
has; a TARGET name is dialled in the resolver's order until one connects (the first 256; UDP:
the first one routed), and resolved again while the proxy runs: once the answer's TTL is past
(a hosts-file line: every 5 s) on a thread of its own, and at once when a connection found
every address failing. A change is logged (NAME now resolves to X (was Y)).
A TARGET may start with socat's TCP: or UDP:; TCP4:/TCP6: (UDP4:/UDP6:) keep one family.
LISTEN may be socat's TCP-LISTEN:PORT, TCP4-/TCP6-/UDP-/UDP4-/UDP6-LISTEN: (IPv4 unless
TCP6-/UDP6- or pf=ip6, as in socat), with options fork and reuseaddr (what the proxy always
does: many connections, SO_REUSEADDR on TCP listeners), bind=ADDR and pf=ip4|ip6; any other
option is refused by name.
A LISTEN without a HOST listens on 0.0.0.0 and [::].
Either side may be a unix stream socket: unix:/PATH (or a bare /PATH), socat's
UNIX-LISTEN:/PATH[,fork,unlink-early,mode=0660] to listen and UNIX-CONNECT:/PATH,
UNIX-CLIENT:/PATH or UNIX:/PATH to connect; the other side is one TCP port or a socket too.
A stale socket file at the listen path is replaced; a regular file, a symlink, a directory
or a socket something listens on is refused, and the file is removed at exit. A unix client
shows as the process that connected (pid=N(COMM),uid=,gid= from SO_PEERCRED). A socket path
lives in a mount namespace: --listen-netns/--target-netns do not apply to it; an abstract
socket (unix:@NAME, socat's ABSTRACT-LISTEN:NAME / ABSTRACT-CONNECT:NAME) lives in a network
namespace, and they do.
Without --dump/--hex/--pcap/--streams/--json, TCP bytes move with splice(2) once a read fills
the 8 KiB buffer (short exchanges are copied through it). -v logs a line per connection.
SIGUSR1 logs the counters; SIGINT/SIGTERM/SIGHUP stop (exit 0) after logging them.

Examples:
  nettool proxy 8080 172.19.0.2:80
  nettool proxy localhost:8080 TCP:db.internal:5432
  nettool proxy TCP-LISTEN:8080,fork,reuseaddr TCP:db.internal:5432
  nettool proxy '[fe80::1%eth0]:8080' '[fe80::2%eth0]:80'
  nettool proxy --dump 8080 172.19.0.2:80
  nettool proxy --dump UNIX-LISTEN:/tmp/d.sock,fork UNIX-CONNECT:/var/run/docker.sock
      then DOCKER_HOST=unix:///tmp/d.sock docker ps       (what the CLI asks dockerd)
  nettool proxy 127.0.0.1:2375 unix:/var/run/docker.sock   (an engine socket over TCP)
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
    /// Listen side of one mapping: [HOST:]PORT[-PORT], unix:/PATH, or socat's
    /// TCP-LISTEN:PORT[,OPTS] / UNIX-LISTEN:/PATH[,OPTS].
    pub listen: Option<String>,
    /// Target of that mapping: HOST:PORT[-PORT] or unix:/PATH (socat's UNIX-CONNECT:/PATH).
    pub target: Option<String>,
    /// A mapping [tcp:|udp:]LISTEN=TARGET (repeatable).
    #[arg(short = 'p', long = "map", value_name = "SPEC")]
    pub maps: Vec<String>,
    /// The positional LISTEN TARGET pair is UDP.
    #[arg(long)]
    pub udp: bool,
    /// Listen inside this namespace (name, path, pid:N, container:NAME); watched, so a
    /// restarted or re-made container is followed: the listeners move to its new namespace.
    #[arg(long, value_name = "NS")]
    pub listen_netns: Option<String>,
    /// Connect to the backend from inside this namespace (name, path, pid:N, container:NAME);
    /// watched, and resolved again when a dial fails, so a restarted container is followed. A target
    /// name is still resolved where nettool runs (resolv.conf and hosts are files).
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

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// A running proxy written with names and zones is still recognised (doctor, topology):
    /// names as the resolver gives them now, an interface index as written, a name for an
    /// interface (maybe in another namespace) as no index.
    #[test]
    fn a_proxy_with_names_and_zones_is_recognised() {
        let m = recognise(
            &argv("nettool proxy -p 127.0.0.1:8080=localhost:80"),
            std::process::id(),
        )
        .unwrap();
        assert!(m[0].mapping.target_ip.is_loopback(), "{m:?}");
        let m = recognise(
            &argv("nettool proxy [fe80::1%eth0]:8080 [fe80::2%3]:80"),
            std::process::id(),
        )
        .unwrap();
        assert_eq!(
            (
                m[0].mapping.listen_ip,
                m[0].mapping.listen_scope,
                m[0].mapping.target_scope
            ),
            (Some("fe80::1".parse().unwrap()), 0, 3)
        );
        assert!(recognise(&argv("nettool proxy 8080 [fe80::2]:80"), std::process::id()).is_none());
    }

    /// A target name whose first address refuses and whose next one is the listener itself
    /// (`-p 127.0.0.1:8080=localhost:8080`, localhost being [::1] then 127.0.0.1) would
    /// connect to itself for every connection: refused like a target that is the listener.
    #[test]
    fn a_target_names_later_address_that_is_the_listener_is_refused() {
        let m = |more: &str| Mapping {
            proto: Proto::Tcp,
            listen_ip: Some("127.0.0.1".parse().unwrap()),
            listen_scope: 0,
            listen: spec::PortRange {
                first: 8080,
                last: 8080,
            },
            target_ip: "::1".parse().unwrap(),
            target_scope: 0,
            target_more: vec![more.parse().unwrap()],
            target_name: None,
            target: spec::PortRange {
                first: 8080,
                last: 8080,
            },
        };
        let e = refuse_self_targets(&[m("127.0.0.1")], None, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("tcp 127.0.0.1:8080 -> 127.0.0.1:8080: the target is this proxy's own"),
            "{e}"
        );
        refuse_self_targets(&[m("127.0.0.2")], None, None).unwrap();
    }
}
