//! The docker-proxy drop-in: dockerd's Go-style flags and the config file / NETTOOL_PROXY_*
//! environment turned into a plan, and the fd-3 answer of a startup failure.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use super::plan::{answer_ready, execute, fd_open, make_log, Console, LogTo, Plan, LOG_TAG};

use anyhow::bail;

use crate::proxy::docker::{self, DockerArgs, DockerProxyConfig};
use crate::proxy::syslog::{self as syslog_client, Syslog};
use crate::proxy::Level;
use crate::tap::json::Payload;
use crate::tap::pcap::PcapOptions;

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
    Plan {
        maps: vec![d.mapping()],
        unix_maps: Vec::new(),
        listen_ns: None,
        listen_text: None,
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
        found: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::json::Payload;

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
