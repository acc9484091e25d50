//! socat's listen addresses as a mapping's listen side: `TCP-LISTEN:8080,fork,reuseaddr`,
//! `TCP4-LISTEN:`, `TCP6-LISTEN:`, `UDP-LISTEN:`, `UDP4-LISTEN:`, `UDP6-LISTEN:` (and socat's
//! `-L` short forms), with the few options that mean something to a proxy that always serves
//! many connections. Anything else socat would take is refused by name, so a socat line never
//! runs with an option silently dropped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::borrow::Cow;

use super::services::{is_service_name, Services};
use super::{
    bad, host_ports, not_found, ports, socat_mapping, Host, MapSpec, PortRange, Proto, SpecError,
};

/// A socat listen address, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocatListen {
    /// The protocol its name says (`TCP-LISTEN`: TCP).
    pub proto: Proto,
    /// `bind=`'s host, or the wildcard of its family.
    pub host: Host,
    /// The listen port(s).
    pub ports: PortRange,
    /// The family a `bind=` name is kept to: IPv6 for `TCP6-LISTEN` or `pf=ip6`, else IPv4
    /// (socat's TCP-LISTEN listens on IPv4 unless told otherwise).
    pub v6: bool,
}

/// The listen forms taken, for messages.
const LISTEN_FORMS: &str =
    "TCP-LISTEN, TCP4-LISTEN, TCP6-LISTEN, UDP-LISTEN, UDP4-LISTEN, UDP6-LISTEN (or TCP-L ...), and UNIX-LISTEN for a unix socket";

/// The options taken, for messages.
const OPTIONS: &str = "fork and reuseaddr (accepted as they are: the proxy always serves many connections, and its TCP listeners set SO_REUSEADDR), bind=ADDR (the address to listen on) and pf=ip4|ip6";

/// The socat address type `s` starts with when it is written as a listen address
/// (`WORD-LISTEN:` or `WORD-L:`, any case), e.g. `TCP-LISTEN`.
pub(crate) fn listen_head(s: &str) -> Option<&str> {
    let (head, _) = s.trim().split_once(':')?;
    let upper = head.to_ascii_uppercase();
    let kind = upper
        .strip_suffix("-LISTEN")
        .or_else(|| upper.strip_suffix("-L"))?;
    (!kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(head)
}

/// `s` (a part of `spec`) as a socat listen address; None when it is not written as one. A
/// port written by service name (`TCP-LISTEN:http`) is looked up in `services`.
pub(crate) fn listen_form(
    spec: &str,
    s: &str,
    services: &Services,
) -> Result<Option<SocatListen>, SpecError> {
    let Some(head) = listen_head(s) else {
        return Ok(None);
    };
    let rest = &s.trim()[head.len() + 1..];
    let upper = head.to_ascii_uppercase();
    let kind = upper
        .strip_suffix("-LISTEN")
        .or_else(|| upper.strip_suffix("-L"))
        .unwrap_or("");
    let (proto, family) = match kind {
        "TCP" => (Proto::Tcp, None),
        "TCP4" => (Proto::Tcp, Some(false)),
        "TCP6" => (Proto::Tcp, Some(true)),
        "UDP" => (Proto::Udp, None),
        "UDP4" => (Proto::Udp, Some(false)),
        "UDP6" => (Proto::Udp, Some(true)),
        k if k.starts_with("SCTP") => {
            return Err(bad(
                spec,
                "SCTP is not supported by nettool proxy (TCP and UDP are); use docker-proxy for SCTP ports",
            ))
        }
        _ => {
            return Err(bad(
                spec,
                format!("socat's {head}: is not taken; nettool proxy listens with {LISTEN_FORMS}"),
            ))
        }
    };
    let mut parts = rest.split(',');
    let port_text = parts.next().unwrap_or("");
    if port_text.contains(':') || port_text.contains('[') {
        return Err(bad(
            spec,
            format!("{head}: takes a port only ('{port_text}'); give the address with bind=, like {head}:8080,bind=127.0.0.1"),
        ));
    }
    let listen_ports = socat_ports(spec, port_text, proto, services)?;
    let mut bind = None;
    let mut pf = None;
    for opt in parts {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (opt.trim().to_ascii_lowercase(), None),
        };
        match (key.as_str(), value) {
            ("fork", None) | ("reuseaddr" | "so-reuseaddr", None | Some("1")) => {}
            ("bind", Some(v)) => bind = Some(bind_host(spec, head, v)?),
            ("pf" | "protocol-family", Some(v)) => {
                pf = Some(match v.to_ascii_lowercase().as_str() {
                    "ip4" | "ipv4" | "inet" | "inet4" => false,
                    "ip6" | "ipv6" | "inet6" => true,
                    _ => {
                        return Err(bad(
                            spec,
                            format!("pf={v}: the family is ip4 or ip6"),
                        ))
                    }
                })
            }
            ("reuseport" | "so-reuseport", _) => {
                return Err(bad(
                    spec,
                    format!("socat option '{opt}' is not taken: nettool proxy does not set SO_REUSEPORT (another process on the port would take a share of its connections); drop it"),
                ))
            }
            ("", None) => {
                return Err(bad(spec, format!("an empty option after {head}: (',,' or a trailing ',')")))
            }
            _ => {
                return Err(bad(
                    spec,
                    format!("socat option '{opt}' of {head}: is not taken; nettool proxy takes {OPTIONS}"),
                ))
            }
        }
    }
    let v6 = match (family, pf) {
        (Some(f), Some(p)) if f != p => {
            let d = |v6: bool| if v6 { 6 } else { 4 };
            return Err(bad(
                spec,
                format!("{head}: listens on IPv{} but pf= says ip{}", d(f), d(p)),
            ));
        }
        (Some(f), _) => f,
        (None, p) => p.unwrap_or(false),
    };
    let host = match bind {
        Some(h) => {
            let is_v6 = match &h {
                Host::Ip(ip) => Some(ip.is_ipv6()),
                Host::Zoned(..) => Some(true),
                Host::Name(_) => None,
            };
            // TCP-LISTEN without pf= takes the family of a bind= address, as socat does.
            let want = family.or(pf);
            if let (Some(want), Some(is)) = (want, is_v6) {
                if want != is {
                    let d = |v6: bool| if v6 { 6 } else { 4 };
                    return Err(bad(
                        spec,
                        format!(
                            "{head}: listens on IPv{} but bind= is an IPv{} address",
                            d(want),
                            d(is)
                        ),
                    ));
                }
            }
            return Ok(Some(SocatListen {
                proto,
                host: h,
                ports: listen_ports,
                v6: is_v6.unwrap_or(v6),
            }));
        }
        None if v6 => Host::Ip(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        None => Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    };
    Ok(Some(SocatListen {
        proto,
        host,
        ports: listen_ports,
        v6,
    }))
}

/// socat's port text: a port or a range, or a service name (`http`, `postgresql`) looked up
/// for `proto` in `services`, as socat's getservbyname does.
fn socat_ports(
    spec: &str,
    text: &str,
    proto: Proto,
    services: &Services,
) -> Result<PortRange, SpecError> {
    match ports(spec, text) {
        Err(_) if is_service_name(text.trim()) => {
            let port = services
                .port(text.trim(), proto)
                .map_err(|why| not_found(spec, why))?;
            Ok(PortRange {
                first: port,
                last: port,
            })
        }
        r => r,
    }
}

/// A target (`tcp:db:postgresql`, `TCP6:[fd00::2]:http`, `db:http`) with a port written by
/// service name replaced by its number for `proto` (socat's `TCP:HOST:SERVICE`); as written
/// when its port is a number, a range, or not given.
pub(crate) fn numbered_target<'a>(
    spec: &str,
    target: &'a str,
    proto: Proto,
    services: &Services,
) -> Result<Cow<'a, str>, SpecError> {
    let t = target.trim();
    let rest = match t.split_once(':') {
        Some((head, rest))
            if matches!(
                head.to_ascii_lowercase().as_str(),
                "tcp" | "udp" | "tcp4" | "tcp6" | "udp4" | "udp6"
            ) =>
        {
            rest
        }
        _ => t,
    };
    let port = match rest.strip_prefix('[') {
        Some(r) => r.split_once("]:").map(|(_, p)| p),
        None => rest.rsplit_once(':').map(|(_, p)| p),
    };
    match port {
        Some(p) if is_service_name(p) && ports(spec, p).is_err() => {
            let n = socat_ports(spec, p, proto, services)?.first;
            Ok(Cow::Owned(format!("{}{n}", &t[..t.len() - p.len()])))
        }
        _ => Ok(Cow::Borrowed(target)),
    }
}

/// `bind=`'s value: an address (IPv6 with or without brackets) or a name, without a port.
fn bind_host(spec: &str, head: &str, v: &str) -> Result<Host, SpecError> {
    // socat writes IPv6 in bind= with or without brackets.
    let bracketed;
    let text = if !v.starts_with('[') && v.matches(':').count() > 1 {
        bracketed = format!("[{v}]");
        &bracketed
    } else {
        v
    };
    match host_ports(spec, text)? {
        (Some(h), None) => Ok(h),
        (Some(_), Some(p)) => Err(bad(
            spec,
            format!("bind={v}: give the address alone (the port, {p}, is {head}'s own)"),
        )),
        (None, _) => Err(bad(
            spec,
            format!("bind={v}: not an address or a host name"),
        )),
    }
}

/// Where a `-p` spec that starts with a listen form ends its listen side: at the `=` that is
/// not an option's own (`TCP-LISTEN:80,bind=127.0.0.1=10.0.0.2:80` splits after 127.0.0.1;
/// `,fork=10.0.0.2:80` at fork's `=`).
pub(crate) fn split_map(s: &str) -> Option<(&str, &str)> {
    let mut at = 0;
    for (i, part) in s.split(',').enumerate() {
        let key = part
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let own = i > 0 && matches!(key.as_str(), "bind" | "pf" | "protocol-family");
        // `KEY=VALUE=TARGET`: any option with a value (an unknown one is then named whole).
        let split = match part.find('=') {
            Some(e) if own || (i > 0 && part[e + 1..].contains('=')) => {
                part[e + 1..].find('=').map(|j| e + 1 + j)
            }
            e => e,
        };
        if let Some(j) = split {
            let cut = at + j;
            return Some((&s[..cut], &s[cut + 1..]));
        }
        at += part.len() + 1;
    }
    None
}

/// socat's flags that take their value as the next argument when it is not attached
/// (`-T 10`, `-lf /var/log/x`); the others (`-d`, `-v`, `-x`, `-b8192`) are one argument.
const VALUE_FLAGS: &[&str] = &["-b", "-t", "-T", "-r", "-R", "-L", "-W", "-lf", "-lp"];

/// A running socat's command line (`socat [FLAGS] LISTEN-ADDRESS CONNECT-ADDRESS`, the two
/// addresses in either order) as the mapping it serves, for doctor and topology. Lenient
/// where the proxy is strict: socat already took its options and runs with them, and only
/// the address, port, family and `bind=` say where a connection goes, so every other option
/// (`reuseport`, `su=`, `range=`, a target's `connect-timeout=`, OPENSSL's `cert=` ...) is
/// dropped unread instead of making a running forward unrecognised. OPENSSL (SSL) addresses
/// are TCP to their address and port. Ports written by service name are looked up in
/// `services` (the process's /etc/services). None when it is not one TCP/UDP listen address
/// and one TCP/UDP connect address.
pub(crate) fn running(argv: &[String], services: &Services) -> Option<MapSpec> {
    let mut addrs = Vec::new();
    let mut prefer_v6 = None;
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-4" => prefer_v6 = Some(false),
            "-6" => prefer_v6 = Some(true),
            f if VALUE_FLAGS.contains(&f) => {
                args.next();
            }
            // `-` alone is socat's stdio address, not a flag.
            f if f.len() > 1 && f.starts_with('-') => {}
            _ => addrs.push(a.as_str()),
        }
    }
    let [a, b] = addrs[..] else {
        return None;
    };
    let (listen, target) = if listen_head(a).is_some() {
        (a, b)
    } else {
        (b, a)
    };
    let head = listen_head(listen)?;
    let upper = head.to_ascii_uppercase();
    let kind = upper
        .strip_suffix("-LISTEN")
        .or_else(|| upper.strip_suffix("-L"))?;
    let kind = match kind {
        "OPENSSL" | "SSL" => "TCP",
        k => k,
    };
    let mut parts = listen.trim()[head.len() + 1..].split(',');
    let port = parts.next()?;
    let key = |o: &str| {
        o.split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let kept: Vec<&str> = parts
        .filter(|o| matches!(key(o).as_str(), "bind" | "pf" | "protocol-family"))
        .collect();
    let mut listen_text = format!("{kind}-LISTEN:{port}");
    for o in &kept {
        listen_text.push(',');
        listen_text.push_str(o);
    }
    // socat's -6 (-4): the family of a listen address that names none itself.
    if let (Some(v6), false, true) = (prefer_v6, kind.ends_with(['4', '6']), kept.is_empty()) {
        listen_text.push_str(if v6 { ",pf=ip6" } else { ",pf=ip4" });
    }
    let spec = argv.join(" ");
    let form = listen_form(&spec, &listen_text, services).ok()??;
    let (word, rest) = target.trim().split_once(':')?;
    let (addr, opts) = rest.split_once(',').unwrap_or((rest, ""));
    let (proto, family) = match word.to_ascii_uppercase().as_str() {
        "TCP" | "TCP-CONNECT" | "OPENSSL" | "OPENSSL-CONNECT" | "SSL" => ("tcp", None),
        "TCP4" | "TCP4-CONNECT" => ("tcp", Some(false)),
        "TCP6" | "TCP6-CONNECT" => ("tcp", Some(true)),
        "UDP" | "UDP-CONNECT" | "UDP-SENDTO" => ("udp", None),
        "UDP4" | "UDP4-CONNECT" | "UDP4-SENDTO" => ("udp", Some(false)),
        "UDP6" | "UDP6-CONNECT" | "UDP6-SENDTO" => ("udp", Some(true)),
        _ => return None,
    };
    let pf = opts.split(',').find_map(|o| {
        let (k, v) = o.split_once('=')?;
        matches!(
            k.trim().to_ascii_lowercase().as_str(),
            "pf" | "protocol-family"
        )
        .then(|| v.trim().to_ascii_lowercase().ends_with('6'))
    });
    let digit = |v6: Option<bool>| match v6 {
        Some(true) => "6",
        Some(false) => "4",
        None => "",
    };
    let written = family.or(pf);
    let mapping = |v6| {
        socat_mapping(
            &spec,
            form.clone(),
            &format!("{proto}{}:{addr}", digit(v6)),
            services,
        )
    };
    // -6 (-4) only prefers a family: an address literal of the other one is still dialled.
    mapping(written.or(prefer_v6))
        .or_else(|e| {
            if written.is_none() {
                mapping(None)
            } else {
                Err(e)
            }
        })
        .ok()
}
