//! Unix stream socket endpoints of a mapping: nettool's `unix:/path` (either side, and a bare
//! absolute path), socat's `UNIX-LISTEN:/path[,fork,unlink-early,mode=0660]` for the listen
//! side and `UNIX-CONNECT:`, `UNIX-CLIENT:`, `UNIX:` for the target. The other side of such a
//! mapping is TCP, written as everywhere else (one port), or a unix socket too.

use std::path::PathBuf;

use super::{
    bad, build, parse_listen, socat, Host, MapSpec, PortRange, Proto, Services, SpecError,
};

/// A socket file the proxy listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnixListenPath {
    /// Where the socket file is made.
    pub path: PathBuf,
    /// `mode=`: the file's permission bits (None: what the umask gives).
    pub mode: Option<u32>,
}

/// The listen side of a mapping that has a unix end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnixListen {
    /// A socket file.
    Path(UnixListenPath),
    /// An abstract socket (`unix:@NAME`, socat's `ABSTRACT-LISTEN:NAME`): no file; it lives in
    /// the network namespace it is bound in (--listen-netns).
    Abstract(String),
    /// A TCP port: a TCP mapping as written whose target is a stand-in, [`MapSpec::resolve`]d
    /// like any other, so names, zones and `[::]` behave the same.
    Tcp(MapSpec),
}

/// The target side of a mapping that has a unix end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnixTarget {
    /// A socket file to connect to.
    Path(PathBuf),
    /// An abstract socket, looked up in the namespace the connecting socket is made in
    /// (--target-netns).
    Abstract(String),
    /// A TCP backend: a TCP mapping as written whose listen side is a stand-in.
    Tcp(MapSpec),
}

/// A mapping with at least one unix end, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnixSpec {
    /// The text it came from, for errors.
    pub text: String,
    /// Where it listens.
    pub listen: UnixListen,
    /// Where it connects.
    pub target: UnixTarget,
}

/// The listen forms of a unix socket, for messages.
const FORMS: &str = "unix:/PATH, a bare absolute /PATH, or socat's UNIX-LISTEN:/PATH[,fork,unlink-early,mode=0660] (listen) and UNIX-CONNECT:/PATH, UNIX-CLIENT:/PATH, UNIX:/PATH (target)";

/// `s`'s head word before ':' when it names a unix address: its kind (listen or not).
fn unix_head(s: &str) -> Option<(bool, &str, &str)> {
    let s = s.trim();
    if s.starts_with('/') {
        return Some((false, "", s));
    }
    let (head, rest) = s.split_once(':')?;
    let listen = match head.to_ascii_uppercase().as_str() {
        "UNIX-LISTEN" | "UNIX-L" | "ABSTRACT-LISTEN" | "ABSTRACT-L" => true,
        "UNIX" | "UNIX-CONNECT" | "UNIX-CLIENT" | "ABSTRACT-CONNECT" | "ABSTRACT-CLIENT" => false,
        _ => return None,
    };
    Some((listen, head, rest))
}

/// Whether `s` is written as a unix socket endpoint (either side).
pub(crate) fn is_unix(s: &str) -> bool {
    unix_head(s).is_some()
}

/// A unix socket's name as written after `head:`: a path, or an abstract name (`unix:@NAME`,
/// `ABSTRACT-...:NAME`).
enum SocketName {
    Path(PathBuf),
    Abstract(String),
}

/// `p` (what follows `head:`) as a socket name: a path, or after `unix:` an `@NAME`, or
/// after `ABSTRACT-...:` a NAME (abstract).
fn socket_name(spec: &str, head: &str, p: &str) -> Result<SocketName, SpecError> {
    let what = if head.is_empty() {
        String::new()
    } else {
        format!("{head}:")
    };
    let abstract_head = head.to_ascii_uppercase().starts_with("ABSTRACT");
    if abstract_head || (head.eq_ignore_ascii_case("unix") && p.starts_with('@')) {
        let name = if abstract_head { p } else { &p[1..] };
        if name.is_empty() || name.len() > 106 || name.contains('\0') {
            return Err(bad(
                spec,
                format!("{what}{p}: an abstract socket needs a name of 1 to 106 bytes, no NUL"),
            ));
        }
        return Ok(SocketName::Abstract(name.to_string()));
    }
    socket_path(spec, &what, p).map(SocketName::Path)
}

/// A socket path: absolute or relative, not empty, no NUL, at most sun_path's 107 bytes.
fn socket_path(spec: &str, what: &str, p: &str) -> Result<PathBuf, SpecError> {
    if p.is_empty() {
        return Err(bad(spec, format!("{what} needs a socket path ({FORMS})")));
    }
    if p.contains('\0') {
        return Err(bad(spec, format!("{what}: the path holds a NUL byte")));
    }
    // sun_path holds 108 bytes with the NUL.
    if p.len() > 107 {
        return Err(bad(
            spec,
            format!(
                "{what}{p}: a unix socket path is at most 107 bytes (this one is {})",
                p.len()
            ),
        ));
    }
    Ok(PathBuf::from(p))
}

/// A unix listen side (`unix:/p`, `unix:@name`, `/p`, `UNIX-LISTEN:/p,opts`,
/// `ABSTRACT-LISTEN:name`); None when `s` is not one.
fn listen_side(spec: &str, s: &str) -> Result<Option<UnixListen>, SpecError> {
    let Some((socat_form, head, rest)) = unix_head(s) else {
        return Ok(None);
    };
    if !socat_form {
        if head.eq_ignore_ascii_case("unix") || head.is_empty() {
            return Ok(Some(match socket_name(spec, head, rest)? {
                SocketName::Path(path) => UnixListen::Path(UnixListenPath { path, mode: None }),
                SocketName::Abstract(n) => UnixListen::Abstract(n),
            }));
        }
        return Err(bad(
            spec,
            format!("{head}: is a connect address; listen on a unix socket with UNIX-LISTEN:/PATH or unix:/PATH"),
        ));
    }
    let mut parts = rest.split(',');
    let name = socket_name(spec, head, parts.next().unwrap_or(""))?;
    let abstract_name = matches!(name, SocketName::Abstract(_));
    let mut mode = None;
    for opt in parts {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (opt.trim().to_ascii_lowercase(), None),
        };
        match (key.as_str(), value) {
            // What the proxy always does: many connections; a stale socket file is replaced
            // (only a socket, and only when nothing listens on it).
            ("fork", None) => {}
            ("unlink-early" | "unlink", None) if !abstract_name => {}
            ("mode" | "perm", Some(v)) if !abstract_name => {
                let bits = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| bad(spec, format!("{key}={v}: not an octal mode like 0660")))?;
                mode = Some(bits);
            }
            ("", None) => {
                return Err(bad(
                    spec,
                    format!("an empty option after {head}: (',,' or a trailing ',')"),
                ))
            }
            _ => {
                return Err(bad(
                    spec,
                    format!(
                        "socat option '{opt}' of {head}: is not taken; nettool proxy takes {}",
                        match abstract_name {
                            true =>
                                "fork (an abstract socket has no file: no unlink-early or mode=)",
                            false => "fork, unlink-early and mode=OCTAL",
                        }
                    ),
                ))
            }
        }
    }
    Ok(Some(match name {
        SocketName::Path(path) => UnixListen::Path(UnixListenPath { path, mode }),
        SocketName::Abstract(n) => UnixListen::Abstract(n),
    }))
}

/// A unix target (`unix:/p`, `unix:@name`, `/p`, `UNIX-CONNECT:/p`, `ABSTRACT-CONNECT:name`
/// ...); None when `s` is not one.
fn target_side(spec: &str, s: &str) -> Result<Option<UnixTarget>, SpecError> {
    let Some((listen, head, rest)) = unix_head(s) else {
        return Ok(None);
    };
    if listen {
        return Err(bad(
            spec,
            format!("{head}: is a listen address; the target is UNIX-CONNECT:/PATH or unix:/PATH"),
        ));
    }
    if rest.contains(',') {
        return Err(bad(
            spec,
            format!("'{s}': socat options on the target are not taken (the proxy dials each connection itself); drop what follows the ','"),
        ));
    }
    Ok(Some(match socket_name(spec, head, rest)? {
        SocketName::Path(p) => UnixTarget::Path(p),
        SocketName::Abstract(n) => UnixTarget::Abstract(n),
    }))
}

/// One TCP port, for the TCP end of a unix mapping (a range would need as many sockets).
fn one_port(spec: &str, p: PortRange) -> Result<PortRange, SpecError> {
    match p.len() {
        1 => Ok(p),
        _ => Err(bad(
            spec,
            format!("a mapping with a unix socket end forwards one TCP port, not the range {p}"),
        )),
    }
}

/// The mapping `listen` -> `target` when either end is a unix socket; None when neither is.
/// A TCP port may be a service name (socat's `TCP-LISTEN:http`), looked up in `services`.
pub(crate) fn parse(
    spec: &str,
    listen: &str,
    target: &str,
    services: &Services,
) -> Result<Option<UnixSpec>, SpecError> {
    let l = listen_side(spec, listen)?;
    let t = target_side(spec, target)?;
    let stand_in = Host::Ip(std::net::Ipv4Addr::LOCALHOST.into());
    let listen = match (l, &t) {
        (None, None) => return Ok(None),
        (Some(l), _) => l,
        (None, Some(_)) => {
            let l = listen.trim();
            let (host, ports, v6) = match socat::listen_form(spec, l, services)? {
                Some(f) if f.proto == Proto::Udp => {
                    return Err(bad(spec, "a unix socket end takes TCP, not UDP"));
                }
                Some(f) => (Some(f.host), f.ports, Some(f.v6)),
                None => {
                    let (proto, rest) = super::split_proto(spec, l)?;
                    if proto == Some(Proto::Udp) {
                        return Err(bad(spec, "a unix socket end takes TCP, not UDP"));
                    }
                    let (h, p) = parse_listen(spec, rest)?;
                    (h, p, None)
                }
            };
            let port = one_port(spec, ports)?;
            UnixListen::Tcp(MapSpec {
                text: spec.to_string(),
                proto: Proto::Tcp,
                listen_host: host,
                listen: port,
                target_host: stand_in.clone(),
                target: port,
                target_v6: None,
                listen_v6: v6,
            })
        }
    };
    let target = match t {
        Some(t) => t,
        None => {
            let target = socat::numbered_target(spec, target, Proto::Tcp, services)?;
            let target = target.as_ref();
            let port = match target_ports(target) {
                Some(p) => one_port(spec, super::ports(spec, &p)?)?,
                None => {
                    return Err(bad(
                        spec,
                        "the TCP target of a unix socket needs a port: HOST:PORT",
                    ))
                }
            };
            let m = build(spec, Proto::Tcp, (None, port, None), target)?;
            UnixTarget::Tcp(MapSpec { listen: port, ..m })
        }
    };
    Ok(Some(UnixSpec {
        text: spec.to_string(),
        listen,
        target,
    }))
}

/// The ports a TCP target is written with (`10.0.0.2:80`, `TCP:db:80-81`); None without
/// (the listen side is a socket path, so there is no port to take from it).
fn target_ports(target: &str) -> Option<String> {
    let t = target.trim();
    let t = match t.split_once(':') {
        Some((w, rest)) if matches!(w.to_ascii_lowercase().as_str(), "tcp" | "tcp4" | "tcp6") => {
            rest
        }
        _ => t,
    };
    match super::host_ports("", t) {
        Ok((_, p)) => p.map(str::to_string),
        Err(_) => Some("1".into()),
    }
}

/// A `-p` spec with a unix end (`unix:/tmp/d.sock=127.0.0.1:2375`,
/// `UNIX-LISTEN:/tmp/d.sock,mode=0660=UNIX-CONNECT:/run/docker.sock`,
/// `8080=unix:/run/docker.sock`); None when it has none.
pub(crate) fn parse_map(spec: &str, services: &Services) -> Result<Option<UnixSpec>, SpecError> {
    let split = match socat::listen_head(spec) {
        Some(_) => socat::split_map(spec),
        None => spec.split_once('='),
    };
    let Some((l, t)) = split else {
        return Ok(None);
    };
    if !is_unix(l) && !is_unix(t) {
        return Ok(None);
    }
    parse(spec, l, t, services)
}

impl UnixSpec {
    /// The unix listen path, when it listens on one.
    pub(crate) fn listen_path(&self) -> Option<&UnixListenPath> {
        match &self.listen {
            UnixListen::Path(p) => Some(p),
            _ => None,
        }
    }

    /// The unix target path, when it connects to one.
    pub(crate) fn target_path(&self) -> Option<&PathBuf> {
        match &self.target {
            UnixTarget::Path(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Services {
        Services::from_text("http 80/tcp www\n", "test")
    }

    fn one(l: &str, t: &str) -> UnixSpec {
        parse("x", l, t, &services()).unwrap().unwrap()
    }

    #[test]
    fn every_form_and_pairing_parses() {
        let s = one("unix:/tmp/a.sock", "127.0.0.1:80");
        assert_eq!(s.listen_path().unwrap().path, PathBuf::from("/tmp/a.sock"));
        assert!(matches!(&s.target, UnixTarget::Tcp(m) if m.target.first == 80));
        let s = one(
            "UNIX-LISTEN:/tmp/a.sock,fork,unlink-early,mode=0660",
            "UNIX-CONNECT:/run/d.sock",
        );
        assert_eq!(s.listen_path().unwrap().mode, Some(0o660));
        assert_eq!(s.target_path().unwrap(), &PathBuf::from("/run/d.sock"));
        for t in [
            "UNIX-CLIENT:/r.sock",
            "UNIX:/r.sock",
            "unix:/r.sock",
            "/r.sock",
        ] {
            assert_eq!(
                one("8080", t).target_path().unwrap(),
                &PathBuf::from("/r.sock"),
                "{t}"
            );
        }
        let s = one(
            "TCP-LISTEN:7777,fork,reuseaddr,bind=127.0.0.1",
            "UNIX-CONNECT:/run/x.sock",
        );
        assert!(
            matches!(&s.listen, UnixListen::Tcp(m) if m.listen.first == 7777
            && m.listen_host == Some(Host::Ip("127.0.0.1".parse().unwrap())))
        );
        let s = one("127.0.0.1:7777", "/var/run/docker.sock");
        assert!(matches!(&s.listen, UnixListen::Tcp(m) if m.listen.first == 7777));
        assert!(parse("x", "8080", "10.0.0.1:80", &services())
            .unwrap()
            .is_none());
        let s = parse_map(
            "UNIX-LISTEN:/tmp/a.sock,mode=600=TCP:10.0.0.2:80",
            &services(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.listen_path().unwrap().mode, Some(0o600));
        let s = parse_map("unix:/tmp/a.sock=unix:/tmp/b.sock", &services())
            .unwrap()
            .unwrap();
        assert_eq!(s.target_path().unwrap(), &PathBuf::from("/tmp/b.sock"));
        assert!(parse_map("8080=10.0.0.1:80", &services())
            .unwrap()
            .is_none());
        // Ports by service name, as socat takes them.
        let s = one("TCP-LISTEN:http", "/r.sock");
        assert!(matches!(&s.listen, UnixListen::Tcp(m) if m.listen.first == 80));
        let s = one("/l.sock", "TCP:10.0.0.2:www");
        assert!(matches!(&s.target, UnixTarget::Tcp(m) if m.target.first == 80));
        // Abstract sockets: nettool's @ and socat's words.
        let s = one("unix:@nt-a", "ABSTRACT-CONNECT:nt-b");
        assert_eq!(
            (s.listen, s.target),
            (
                UnixListen::Abstract("nt-a".into()),
                UnixTarget::Abstract("nt-b".into())
            )
        );
        let s = one("ABSTRACT-LISTEN:nt-a,fork", "unix:@/containerd-shim/x.sock");
        assert_eq!(
            s.target,
            UnixTarget::Abstract("/containerd-shim/x.sock".into())
        );
    }

    #[test]
    fn mistakes_are_named() {
        let e = |l: &str, t: &str| parse("x", l, t, &services()).unwrap_err().to_string();
        assert!(e("UNIX-LISTEN:/a,backlog=5", "/b").contains("'backlog=5'"));
        assert!(e("UNIX-LISTEN:/a,mode=rw", "/b").contains("mode=rw"));
        assert!(e("unix:@", "/b").contains("1 to 106 bytes"));
        assert!(e("ABSTRACT-LISTEN:a,mode=0600", "/b").contains("no unlink-early or mode="));
        assert!(e("unix:", "/b").contains("needs a socket path"));
        assert!(e("/a", "10.0.0.1").contains("needs a port"));
        assert!(e("/a", "10.0.0.1:80-81").contains("one TCP port"));
        assert!(e("udp:53", "/b").contains("not UDP"));
        assert!(e("UDP-LISTEN:53", "/b").contains("not UDP"));
        assert!(e("/a", "UNIX-LISTEN:/b").contains("listen address"));
        assert!(e("UNIX-CONNECT:/a", "/b").contains("connect address"));
        assert!(e("/a", "UNIX-CONNECT:/b,retry=3").contains("options on the target"));
        let long = format!("/{}", "x".repeat(120));
        assert!(e(&long, "/b").contains("at most 107 bytes"));
    }
}
