//! The docker-proxy contract: Go-style flags, fd 3 readiness, fd 4 listener, and the
//! environment / config file that switch on logging and dumping (dockerd passes no extra flags
//! and sends stdout/stderr to /dev/null).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{Mapping, PortRange};
use super::Proto;

/// The flags docker-proxy accepts.
pub(crate) const FLAGS: &[&str] = &[
    "proto",
    "host-ip",
    "host-port",
    "container-ip",
    "container-port",
    "use-listen-fd",
];

/// Default config file.
pub(crate) const CONFIG_PATH: &str = "/etc/nettool/docker-proxy.toml";

/// Bad docker-proxy arguments or config.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DockerProxyError {
    /// A flag is missing or malformed.
    #[error("docker-proxy flags: {0}")]
    Flags(String),
    /// The config file is unreadable or invalid.
    #[error("{path}: {why}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A NETTOOL_PROXY_* environment variable has a value that cannot be used.
    #[error("environment variable {var}={value:?}: expected {want} (fix or unset it in the environment dockerd runs with)")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        want: &'static str,
    },
}

/// docker-proxy's command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DockerArgs {
    /// tcp or udp.
    pub proto: Proto,
    /// Host address to listen on.
    pub host_ip: IpAddr,
    /// Host port.
    pub host_port: u16,
    /// Container address.
    pub container_ip: IpAddr,
    /// Container port.
    pub container_port: u16,
    /// The listener is passed on fd 4 (newer dockerd).
    pub use_listen_fd: bool,
    /// Flags we did not know (ignored, logged).
    pub ignored: Vec<String>,
}

/// The flag name of a Go-style argument (`-x`, `--x`, `-x=v`), if it is one.
pub(crate) fn go_flag_name(arg: &str) -> Option<&str> {
    let rest = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    let name = rest.split('=').next().unwrap_or("");
    (!name.is_empty()).then_some(name)
}

/// Where docker-proxy's flags start in argv, when argv is a docker-proxy invocation: argv[0]
/// named docker-proxy; a docker-proxy flag right after the program name, whatever the binary
/// is called (dockerd's `--userland-proxy-path /usr/local/bin/nettool` runs
/// `/usr/local/bin/nettool -proto tcp -host-ip ...`); or `nettool proxy` followed by its flags.
pub(crate) fn docker_flags_start(args: &[String]) -> Option<usize> {
    let is_flag = |a: &String| go_flag_name(a).is_some_and(|n| FLAGS.contains(&n));
    let base = Path::new(args.first()?)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if base == "docker-proxy" || args.get(1).is_some_and(is_flag) {
        return Some(1);
    }
    (args.get(1).is_some_and(|s| s == "proxy") && args[2..].iter().any(is_flag)).then_some(2)
}

/// True when argv is a docker-proxy invocation (see [`docker_flags_start`]).
pub(crate) fn is_docker_invocation(args: &[String]) -> bool {
    docker_flags_start(args).is_some()
}

fn parse_bool(v: &str) -> Result<bool, DockerProxyError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(DockerProxyError::Flags(format!(
            "invalid boolean value {v:?} for -use-listen-fd"
        ))),
    }
}

/// Parse docker-proxy's flags (the arguments after the program name, or after `proxy`).
pub(crate) fn parse_args(args: &[String]) -> Result<DockerArgs, DockerProxyError> {
    let mut proto = "tcp".to_string();
    let mut host_ip: Option<String> = None;
    let mut host_port: Option<String> = None;
    let mut container_ip: Option<String> = None;
    let mut container_port: Option<String> = None;
    let mut use_listen_fd = false;
    let mut ignored = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            break;
        }
        let Some(name) = go_flag_name(a) else {
            ignored.push(a.clone());
            continue;
        };
        let inline = a.split_once('=').map(|(_, v)| v.to_string());
        if name == "use-listen-fd" {
            use_listen_fd = match inline {
                Some(v) => parse_bool(&v)?,
                None => true,
            };
            continue;
        }
        let known = FLAGS.contains(&name);
        let value = match inline {
            Some(v) => v,
            None if known => {
                let v = args.get(i).cloned().ok_or_else(|| {
                    DockerProxyError::Flags(format!("flag needs an argument: -{name}"))
                })?;
                i += 1;
                v
            }
            None => {
                // Unknown: take a following non-flag word as its value, like Go would.
                if args.get(i).map(|v| !v.starts_with('-')).unwrap_or(false) {
                    ignored.push(format!("{a} {}", args[i]));
                    i += 1;
                } else {
                    ignored.push(a.clone());
                }
                continue;
            }
        };
        match name {
            "proto" => proto = value,
            "host-ip" => host_ip = Some(value),
            "host-port" => host_port = Some(value),
            "container-ip" => container_ip = Some(value),
            "container-port" => container_port = Some(value),
            _ => ignored.push(format!("{a} {value}")),
        }
    }
    let proto = match proto.as_str() {
        "tcp" | "tcp4" | "tcp6" => Proto::Tcp,
        "udp" | "udp4" | "udp6" => Proto::Udp,
        "sctp" => {
            return Err(DockerProxyError::Flags(
                "SCTP is not supported by nettool proxy; point dockerd at the stock docker-proxy for SCTP ports".into(),
            ))
        }
        p => return Err(DockerProxyError::Flags(format!("unsupported -proto {p:?}"))),
    };
    let ip = |name: &str, v: Option<String>| -> Result<Option<IpAddr>, DockerProxyError> {
        v.filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpAddr>().map_err(|_| {
                    DockerProxyError::Flags(format!("-{name} {s:?} is not an IP address"))
                })
            })
            .transpose()
    };
    let port = |name: &str, v: Option<String>| -> Result<u16, DockerProxyError> {
        let v = v.ok_or_else(|| DockerProxyError::Flags(format!("-{name} is required")))?;
        v.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| DockerProxyError::Flags(format!("-{name} {v:?} is not a port")))
    };
    Ok(DockerArgs {
        proto,
        host_ip: ip("host-ip", host_ip)?.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        host_port: port("host-port", host_port)?,
        container_ip: ip("container-ip", container_ip)?
            .ok_or_else(|| DockerProxyError::Flags("-container-ip is required".into()))?,
        container_port: port("container-port", container_port)?,
        use_listen_fd,
        ignored,
    })
}

impl DockerArgs {
    /// The one mapping this docker-proxy process serves.
    pub(crate) fn mapping(&self) -> Mapping {
        Mapping {
            proto: self.proto,
            listen_ip: Some(self.host_ip),
            listen_scope: 0,
            listen: PortRange {
                first: self.host_port,
                last: self.host_port,
            },
            target_ip: self.container_ip,
            target_scope: 0,
            target_more: Vec::new(),
            target_name: None,
            target: PortRange {
                first: self.container_port,
                last: self.container_port,
            },
        }
    }

    /// Fill `{proto} {host_ip} {host_port} {container_ip} {container_port} {pid}` in a path template.
    pub(crate) fn expand(&self, template: &str) -> String {
        template
            .replace("{proto}", &self.proto.to_string())
            .replace("{host_ip}", &self.host_ip.to_string())
            .replace("{host_port}", &self.host_port.to_string())
            .replace("{container_ip}", &self.container_ip.to_string())
            .replace("{container_port}", &self.container_port.to_string())
            .replace("{pid}", &std::process::id().to_string())
    }
}

/// What the docker-proxy mode should do beyond forwarding; from the config file, then env.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DockerProxyConfig {
    /// Where log lines go: a file path (appended), `syslog` (through /dev/log) or
    /// `syslog:SOCKET`. Key `log` (or `log_file`); env NETTOOL_PROXY_LOG.
    #[serde(alias = "log")]
    pub log_file: Option<String>,
    /// "text", "hex", "json" or "off". Env NETTOOL_PROXY_DUMP.
    pub dump: Option<String>,
    /// Where the text/hex/json dump goes (default: the log file). Env NETTOOL_PROXY_DUMP_FILE.
    pub dump_file: Option<String>,
    /// A pcap file. Env NETTOOL_PROXY_PCAP.
    pub pcap: Option<String>,
    /// Cap each pcap file at this many megabytes (decimals allowed). Env NETTOOL_PROXY_PCAP_MAX_MB.
    pub pcap_max_mb: Option<f64>,
    /// Rotate over this many pcap files once the cap is reached (1: stop capturing). Env
    /// NETTOOL_PROXY_PCAP_FILES.
    pub pcap_files: Option<u32>,
    /// A directory for per-connection stream files. Env NETTOOL_PROXY_STREAMS.
    pub streams: Option<String>,
    /// L7 decoding in the dump (default true).
    pub decode: Option<bool>,
    /// UDP flow idle timeout in seconds (default 90).
    pub udp_timeout: Option<u64>,
    /// Transparent mode: the container sees the client's address (default false). Env
    /// NETTOOL_PROXY_TRANSPARENT (1/true/yes or 0/false/no).
    pub transparent: Option<bool>,
    /// Send a PROXY protocol header to the container first: `"v1"` or `"v2"`. Env
    /// NETTOOL_PROXY_PROXY_PROTOCOL.
    pub proxy_protocol: Option<super::proxy_protocol::ProxyProtocol>,
}

/// The `dump` values docker-proxy mode takes ("" = not set).
const DUMP_MODES: [&str; 5] = ["text", "hex", "json", "off", ""];

impl DockerProxyConfig {
    /// Read the config file (NETTOOL_PROXY_CONFIG or /etc/nettool/docker-proxy.toml; a missing
    /// file is fine) and apply the NETTOOL_PROXY_* environment on top.
    pub(crate) fn load(env: impl Fn(&str) -> Option<String>) -> Result<Self, DockerProxyError> {
        let path = PathBuf::from(env("NETTOOL_PROXY_CONFIG").unwrap_or_else(|| CONFIG_PATH.into()));
        let mut cfg = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<DockerProxyConfig>(&text).map_err(|e| {
                DockerProxyError::Config {
                    path: path.clone(),
                    why: e.to_string(),
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerProxyConfig::default(),
            Err(e) => {
                return Err(DockerProxyError::Config {
                    path,
                    why: e.to_string(),
                })
            }
        };
        let set = |slot: &mut Option<String>, key: &str| {
            if let Some(v) = env(key).filter(|v| !v.is_empty()) {
                *slot = Some(v);
            }
        };
        // The file's dump value is checked here; the environment's below, under its own name.
        if let Some(d) = cfg.dump.as_deref() {
            if !DUMP_MODES.contains(&d) {
                return Err(DockerProxyError::Config {
                    path,
                    why: format!("dump = {d:?}: expected \"text\", \"hex\", \"json\" or \"off\""),
                });
            }
        }
        if let Some(mb) = cfg.pcap_max_mb {
            if !(mb.is_finite() && mb >= 0.001) {
                return Err(DockerProxyError::Config {
                    path,
                    why: format!("pcap_max_mb = {mb}: expected at least 0.001 (megabytes)"),
                });
            }
        }
        set(&mut cfg.log_file, "NETTOOL_PROXY_LOG");
        set(&mut cfg.dump, "NETTOOL_PROXY_DUMP");
        set(&mut cfg.dump_file, "NETTOOL_PROXY_DUMP_FILE");
        set(&mut cfg.pcap, "NETTOOL_PROXY_PCAP");
        set(&mut cfg.streams, "NETTOOL_PROXY_STREAMS");
        let bad = |var: &'static str, value: String, want: &'static str| DockerProxyError::Env {
            var,
            value,
            want,
        };
        if let Some(d) = env("NETTOOL_PROXY_DUMP").filter(|v| !DUMP_MODES.contains(&v.as_str())) {
            return Err(bad(
                "NETTOOL_PROXY_DUMP",
                d,
                "\"text\", \"hex\", \"json\" or \"off\"",
            ));
        }
        if let Some(v) = env("NETTOOL_PROXY_PCAP_MAX_MB").filter(|v| !v.is_empty()) {
            match v.parse::<f64>() {
                Ok(mb) if mb.is_finite() && mb >= 0.001 => cfg.pcap_max_mb = Some(mb),
                _ => {
                    return Err(bad(
                        "NETTOOL_PROXY_PCAP_MAX_MB",
                        v,
                        "megabytes, at least 0.001",
                    ))
                }
            }
        }
        if let Some(v) = env("NETTOOL_PROXY_PROXY_PROTOCOL").filter(|v| !v.is_empty()) {
            cfg.proxy_protocol = match v.as_str() {
                "v1" => Some(super::proxy_protocol::ProxyProtocol::V1),
                "v2" => Some(super::proxy_protocol::ProxyProtocol::V2),
                "off" => None,
                _ => return Err(bad("NETTOOL_PROXY_PROXY_PROTOCOL", v, "v1, v2 or off")),
            };
        }
        if let Some(v) = env("NETTOOL_PROXY_TRANSPARENT").filter(|v| !v.is_empty()) {
            cfg.transparent = Some(match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(bad(
                        "NETTOOL_PROXY_TRANSPARENT",
                        v,
                        "1, true, yes, on or 0, false, no, off",
                    ))
                }
            });
        }
        if let Some(v) = env("NETTOOL_PROXY_PCAP_FILES").filter(|v| !v.is_empty()) {
            match v.parse::<u32>() {
                Ok(n) => cfg.pcap_files = Some(n),
                Err(_) => {
                    return Err(bad(
                        "NETTOOL_PROXY_PCAP_FILES",
                        v,
                        "a file count (1 or more)",
                    ))
                }
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn go_flag_syntax() {
        let a = parse_args(&v(&[
            "-proto",
            "tcp",
            "--host-ip=0.0.0.0",
            "-host-port",
            "8080",
            "-container-ip=172.17.0.2",
            "--container-port",
            "80",
            "-use-listen-fd",
        ]))
        .unwrap();
        assert_eq!(a.host_port, 8080);
        assert_eq!(a.container_ip.to_string(), "172.17.0.2");
        assert!(a.use_listen_fd);
        let a = parse_args(&v(&[
            "-proto=udp",
            "-host-ip",
            "::",
            "-host-port",
            "53",
            "-container-ip",
            "fd00::2",
            "-container-port",
            "53",
            "-use-listen-fd=false",
            "-bogus",
            "x",
        ]))
        .unwrap();
        assert_eq!(a.proto, Proto::Udp);
        assert!(!a.use_listen_fd);
        assert_eq!(a.ignored, vec!["-bogus x".to_string()]);
        assert!(parse_args(&v(&["-host-port", "80"])).is_err());
        assert!(parse_args(&v(&[
            "-proto",
            "sctp",
            "-host-port",
            "1",
            "-container-ip",
            "1.1.1.1",
            "-container-port",
            "1"
        ]))
        .unwrap_err()
        .to_string()
        .contains("SCTP"));
    }

    #[test]
    fn invocation_detection() {
        assert!(is_docker_invocation(&v(&[
            "/usr/local/bin/docker-proxy",
            "-proto",
            "tcp"
        ])));
        assert!(is_docker_invocation(&v(&[
            "nettool",
            "proxy",
            "-host-port",
            "1"
        ])));
        assert!(!is_docker_invocation(&v(&[
            "nettool",
            "proxy",
            "-p",
            "1=1.1.1.1:1"
        ])));
        assert!(!is_docker_invocation(&v(&["nettool", "netns", "-proto"])));
        // dockerd --userland-proxy-path pointing at the nettool binary itself.
        let by_path = v(&[
            "/usr/local/bin/nettool",
            "-proto",
            "tcp",
            "-host-port",
            "80",
        ]);
        assert_eq!(docker_flags_start(&by_path), Some(1));
        assert_eq!(docker_flags_start(&v(&["nettool", "--proto=udp"])), Some(1));
        assert_eq!(docker_flags_start(&v(&["nettool", "-h"])), None);
        assert_eq!(docker_flags_start(&v(&["nettool", "-v", "netns"])), None);
    }

    #[test]
    fn env_overrides_file() {
        let cfg = DockerProxyConfig::load(|k| match k {
            "NETTOOL_PROXY_CONFIG" => Some("/nonexistent/x.toml".into()),
            "NETTOOL_PROXY_DUMP" => Some("hex".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.dump.as_deref(), Some("hex"));
        let cfg = DockerProxyConfig::load(|k| match k {
            "NETTOOL_PROXY_CONFIG" => Some("/nonexistent/x.toml".into()),
            "NETTOOL_PROXY_PCAP_MAX_MB" => Some("0.5".into()),
            "NETTOOL_PROXY_PCAP_FILES" => Some("4".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!((cfg.pcap_max_mb, cfg.pcap_files), (Some(0.5), Some(4)));
        let cfg = DockerProxyConfig::load(|k| match k {
            "NETTOOL_PROXY_CONFIG" => Some("/nonexistent/x.toml".into()),
            "NETTOOL_PROXY_TRANSPARENT" => Some("yes".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.transparent, Some(true));
        let dir = std::env::temp_dir().join(format!("nt-dppp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "proxy_protocol = \"v2\"\ntransparent = true\n").unwrap();
        let cfg = DockerProxyConfig::load(|k| {
            (k == "NETTOOL_PROXY_CONFIG").then(|| file.to_str().unwrap().into())
        })
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            (cfg.proxy_protocol, cfg.transparent),
            (
                Some(super::super::proxy_protocol::ProxyProtocol::V2),
                Some(true)
            )
        );
        // A bad value from the environment is blamed on the variable, not on a config file
        // that may not even exist.
        for (var, bad) in [
            ("NETTOOL_PROXY_PCAP_MAX_MB", "0"),
            ("NETTOOL_PROXY_PCAP_MAX_MB", "-1"),
            ("NETTOOL_PROXY_PCAP_MAX_MB", "lots"),
            ("NETTOOL_PROXY_PCAP_FILES", "-1"),
            ("NETTOOL_PROXY_DUMP", "loud"),
            ("NETTOOL_PROXY_TRANSPARENT", "maybe"),
            ("NETTOOL_PROXY_PROXY_PROTOCOL", "v3"),
        ] {
            let e = DockerProxyConfig::load(|k| match k {
                "NETTOOL_PROXY_CONFIG" => Some("/nonexistent/x.toml".into()),
                k if k == var => Some(bad.into()),
                _ => None,
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with(&format!("environment variable {var}={bad:?}: expected "))
                    && !e.contains("x.toml"),
                "{e}"
            );
        }
        // One from the file names the file and the key.
        let dir = std::env::temp_dir().join(format!("nt-dpcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "pcap_max_mb = 0\n").unwrap();
        let e = DockerProxyConfig::load(|k| {
            (k == "NETTOOL_PROXY_CONFIG").then(|| file.to_str().unwrap().into())
        })
        .unwrap_err()
        .to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            e.starts_with(&format!("{}: pcap_max_mb = 0: expected", file.display())),
            "{e}"
        );
        assert!(
            DockerProxyConfig::load(|k| (k == "NETTOOL_PROXY_DUMP").then(|| "loud".into()))
                .is_err()
        );
    }
}
