//! Mapping specs: `[tcp:|udp:][HOST:]PORT[-PORT]=HOST[:PORT[-PORT]]`, where HOST is an IPv4
//! address, an IPv6 one in brackets (with `%zone` for a link-local one) or a name. Parsed into a
//! [`MapSpec`] (as written), then [`MapSpec::resolve`]d into [`Mapping`]s once at start.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;

use serde::Serialize;

use super::Proto;

mod names;
mod services;
mod socat;
pub(crate) mod unix;
pub(crate) use names::TargetName;
pub(crate) use services::Services;
#[cfg(test)]
use services::ServicesFile;
pub(crate) use socat::{listen_form, listen_head, running as running_socat, SocatListen};

/// A mapping the user wrote that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("bad mapping '{spec}': {why}{}", if *.written { FORMS } else { "" })]
pub(crate) struct SpecError {
    /// What was written.
    pub spec: String,
    /// What is wrong with it.
    pub why: String,
    /// The way it is written is wrong (the message then shows the forms); false when a name or
    /// an interface it names cannot be found.
    pub written: bool,
}

/// The forms a mapping takes, for a mapping written wrong.
const FORMS: &str = " (expected [tcp:|udp:][HOST:]PORT[-PORT]=HOST:PORT[-PORT], HOST an IP, IPv6 in brackets like [::1]:8080 or [fe80::1%eth0]:8080, or a name; or socat's TCP-LISTEN:PORT[,fork,reuseaddr,bind=ADDR] for LISTEN; a unix socket: unix:/PATH on either side, socat's UNIX-LISTEN:/PATH and UNIX-CONNECT:/PATH)";

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (== first for one port).
    pub last: u16,
}

impl PortRange {
    /// How many ports.
    pub(crate) fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One `-p` mapping as written (possibly a range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Mapping {
    /// TCP or UDP.
    pub proto: Proto,
    /// The listen address; None = every address, IPv4 and IPv6.
    pub listen_ip: Option<IpAddr>,
    /// The interface index of a link-local listen address (0: none).
    #[serde(skip_serializing_if = "is_zero")]
    pub listen_scope: u32,
    /// Listen ports.
    pub listen: PortRange,
    /// Backend address.
    pub target_ip: IpAddr,
    /// The interface index of a link-local backend address, in the target namespace (0: none).
    #[serde(skip_serializing_if = "is_zero")]
    pub target_scope: u32,
    /// More addresses of a target name, dialled in this order when `target_ip` fails.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub target_more: Vec<IpAddr>,
    /// Backend ports (same length as `listen`, or one port for all).
    pub target: PortRange,
    /// A target name: the addresses dials use while the proxy runs (its answer asked again;
    /// `target_ip` and `target_more` are the answer at start). None for an address.
    #[serde(skip)]
    pub target_name: Option<Arc<TargetName>>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One listening socket's worth of a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PortMap {
    /// TCP or UDP.
    pub proto: Proto,
    /// Where to listen.
    pub listen: SocketAddr,
    /// True for the IPv6 half of an "every address" mapping: skipped quietly when the
    /// namespace has no IPv6.
    pub optional: bool,
    /// Where to forward.
    pub target: SocketAddr,
    /// Where to forward when `target` cannot be reached, tried in order (a target name's
    /// other addresses at start; empty for an address).
    #[serde(serialize_with = "addr_list")]
    pub more: Arc<[SocketAddr]>,
    /// A target name, whose addresses now are the ones dialled (`target` and `more` were
    /// its answer at start).
    #[serde(skip)]
    pub name: Option<Arc<TargetName>>,
}

fn addr_list<S: serde::Serializer>(v: &Arc<[SocketAddr]>, s: S) -> Result<S::Ok, S::Error> {
    Serialize::serialize(&**v, s)
}

impl PortMap {
    /// The backend addresses in the order they are dialled now (a target name's answer as it
    /// is now).
    pub(crate) fn targets(&self) -> Vec<SocketAddr> {
        match &self.name {
            Some(n) => {
                let port = self.target.port();
                n.current()
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, port))
                    .collect()
            }
            None => std::iter::once(self.target)
                .chain(self.more.iter().copied())
                .collect(),
        }
    }

    /// The `n`th backend address a connection dials now (0 first); None past the last.
    pub(crate) fn nth_target(&self, n: usize) -> Option<SocketAddr> {
        match (&self.name, n) {
            (Some(name), n) => name.nth(n, self.target.port()),
            (None, 0) => Some(self.target),
            (None, n) => self.more.get(n - 1).copied(),
        }
    }

    /// Every address failed one connection's dial: a target name is asked again now (at
    /// most once a second, on its own thread).
    pub(crate) fn all_failed(&self) {
        if let Some(n) = &self.name {
            n.all_failed();
        }
    }

    /// The backend for a log line: its address, or a name's addresses in dialling order
    /// (`[::1]:80 or 127.0.0.1:80`).
    pub(crate) fn target_text(&self) -> String {
        let all: Vec<String> = self.targets().iter().map(|t| t.to_string()).collect();
        all.join(" or ")
    }

    /// The backend in a line that says every dial failed: a name's addresses say that each
    /// was tried and that the error after it is the last one's (not every address's).
    pub(crate) fn failed_text(&self) -> String {
        match self.targets().len() {
            0 | 1 => format!("backend {}", self.nth_target(0).unwrap_or(self.target)),
            _ => format!("backend {} (each tried; the last said)", self.target_text()),
        }
    }
}

fn bad(spec: &str, why: impl Into<String>) -> SpecError {
    SpecError {
        spec: spec.into(),
        why: why.into(),
        written: true,
    }
}

/// A name or interface of `spec` that cannot be looked up.
fn not_found(spec: &str, why: impl Into<String>) -> SpecError {
    SpecError {
        written: false,
        ..bad(spec, why)
    }
}

fn ports(spec: &str, s: &str) -> Result<PortRange, SpecError> {
    let p = |x: &str| -> Result<u16, SpecError> {
        match x.trim().parse::<u16>() {
            Ok(0) => Err(bad(spec, "port 0 cannot be forwarded")),
            Ok(n) => Ok(n),
            Err(_) => Err(bad(spec, format!("'{x}' is not a port (1-65535)"))),
        }
    };
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (p(a)?, p(b)?),
        None => {
            let n = p(s)?;
            (n, n)
        }
    };
    if last < first {
        return Err(bad(
            spec,
            format!("port range {first}-{last} runs backwards"),
        ));
    }
    Ok(PortRange { first, last })
}

/// A host as written: an address, a link-local IPv6 address with its zone, or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// An address.
    Ip(IpAddr),
    /// A link-local IPv6 address and its zone as written after `%`: an interface name or index.
    Zoned(Ipv6Addr, String),
    /// A name (`localhost`, `db.internal`): a listen name is looked up once at start, a
    /// target name again while the proxy runs ([`TargetName`]).
    Name(String),
}

/// Whether `s` reads as a host name (letters, digits, `-`, `_`, dots; at least one letter, so
/// that `8080`, `8000-8010` and `127.1` stay ports and addresses).
fn is_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// fe80::/10: an address that means something only on one link, so a socket needs its interface.
fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.is_unicast_link_local())
}

/// Split `[HOST:]PORTS` / `[v6]:PORTS` / `[v6%zone]:PORTS` / `HOST` into (host, ports).
fn host_ports<'a>(spec: &str, s: &'a str) -> Result<(Option<Host>, Option<&'a str>), SpecError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(spec, "missing ']' after an IPv6 address"))?;
        let (ip, zone) = match inner.split_once('%') {
            Some((ip, zone)) => (ip, Some(zone)),
            None => (inner, None),
        };
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| bad(spec, format!("'{ip}' is not an IPv6 address")))?;
        let host = match zone {
            None if ip.is_unicast_link_local() => {
                return Err(bad(
                    spec,
                    format!("{ip} is link-local: add the interface it is on, like [{ip}%eth0] (a name or an index, in the namespace that socket is made in)"),
                ))
            }
            None => Host::Ip(IpAddr::V6(ip)),
            Some("") => {
                return Err(bad(
                    spec,
                    format!("'{inner}' has nothing after '%': give the interface, like [{ip}%eth0]"),
                ))
            }
            Some(z) if !ip.is_unicast_link_local() => {
                return Err(bad(
                    spec,
                    format!("'{inner}': an interface (%{z}) goes only with a link-local address (fe80::/10); drop it"),
                ))
            }
            Some(z) => Host::Zoned(ip, z.to_string()),
        };
        let ports = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad(spec, format!("unexpected '{after}' after ']'"))),
        };
        return Ok((Some(host), ports));
    }
    if s.contains('%') {
        return Err(bad(
            spec,
            "put a scoped IPv6 address in brackets: [fe80::1%eth0]:8080",
        ));
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Err(bad(spec, "put IPv6 addresses in brackets: [::1]:8080"));
    }
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok((Some(Host::Ip(IpAddr::V4(ip))), None));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => match h.parse::<Ipv4Addr>() {
            Ok(ip) => Ok((Some(Host::Ip(IpAddr::V4(ip))), Some(p))),
            Err(_) if is_name(h) => Ok((Some(Host::Name(h.to_string())), Some(p))),
            Err(_) => Err(bad(
                spec,
                format!("'{h}' is not an IPv4 address or a host name (IPv6 goes in brackets: [::1]:8080)"),
            )),
        },
        None if is_name(s) => Ok((Some(Host::Name(s.to_string())), None)),
        None => Ok((None, Some(s))),
    }
}

/// Parse a listen side `[HOST:]PORT[-PORT]`.
pub(crate) fn parse_listen(spec: &str, s: &str) -> Result<(Option<Host>, PortRange), SpecError> {
    let (host, p) = host_ports(spec, s.trim())?;
    let p = p.ok_or_else(|| bad(spec, "the listen side needs a port"))?;
    Ok((host, ports(spec, p)?))
}

/// Parse a target side `HOST:PORT[-PORT]` (or just `HOST`: the same ports as the listen side).
pub(crate) fn parse_target(spec: &str, s: &str) -> Result<(Host, Option<PortRange>), SpecError> {
    let (host, p) = host_ports(spec, s.trim())?;
    let host = host.ok_or_else(|| bad(spec, "the target needs an address: HOST:PORT"))?;
    let p = p.map(|p| ports(spec, p)).transpose()?;
    Ok((host, p))
}

/// One mapping as written, before its names and zones are looked up ([`MapSpec::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MapSpec {
    /// The text it came from, for errors.
    pub text: String,
    /// TCP or UDP.
    pub proto: Proto,
    /// The listen host; None = every address, IPv4 and IPv6.
    pub listen_host: Option<Host>,
    /// Listen ports.
    pub listen: PortRange,
    /// The backend host.
    pub target_host: Host,
    /// Backend ports (same length as `listen`, or one port for all).
    pub target: PortRange,
    /// socat's `TCP4:`/`TCP6:` (`UDP4:`/`UDP6:`) on the target: only IPv6 (true) or only
    /// IPv4 (false) addresses of a name; None: any.
    pub target_v6: Option<bool>,
    /// The same for a listen name: socat's listen forms keep one family (`TCP-LISTEN`'s
    /// `bind=localhost` listens on 127.0.0.1 only, as socat does).
    pub listen_v6: Option<bool>,
}

/// How many of a target name's addresses are dialled, in order (the event loop's connection
/// counts the one it dials in a u8; a name with more is rare, and 256 failed dials are plenty).
pub(crate) const MAX_TARGET_ADDRESSES: usize = 256;

/// What [`MapSpec::resolve`] asks of the system: names of the resolver, zones of the
/// namespace each socket is made in.
pub(crate) trait Lookup {
    /// The addresses `name` stands for, in the resolver's order, and for how long.
    fn addresses(&self, name: &str) -> Result<crate::dns::lookup::Answer, String>;
    /// The index of the interface `zone` (a name or a number) in the namespace where the
    /// listening socket (`listen`) or the backend sockets are made.
    fn zone(&self, listen: bool, zone: &str) -> Result<u32, String>;
    /// Whether `ip` is configured in the listen namespace.
    fn listen_local(&self, ip: IpAddr) -> bool;
}

impl MapSpec {
    /// The mappings this stands for: a listen name gives one per address it has in the listen
    /// namespace (all of them when it has none there: binding says why), a target name its
    /// first address with the others as fallbacks in the resolver's order; zones become
    /// interface indexes.
    pub(crate) fn resolve(&self, look: &dyn Lookup) -> Result<Vec<Mapping>, SpecError> {
        let spec = &self.text;
        let answer = |n: &str| {
            look.addresses(n).map_err(|e| {
                not_found(
                    spec,
                    format!("cannot resolve '{n}': {e} (names are looked up where nettool runs: /etc/hosts, then the nameservers of /etc/resolv.conf)"),
                )
            })
        };
        let name = |n: &str| -> Result<Vec<IpAddr>, SpecError> {
            let ips = answer(n)?.ips;
            if let Some(ll) = ips.iter().find(|ip| is_link_local(**ip)) {
                return Err(not_found(
                    spec,
                    format!("'{n}' resolves to {ll}, which is link-local: write it with its interface instead, like [{ll}%eth0]"),
                ));
            }
            if ips.is_empty() {
                return Err(not_found(spec, format!("'{n}' resolves to no address")));
            }
            Ok(ips)
        };
        let zone = |listen: bool, z: &str| look.zone(listen, z).map_err(|e| not_found(spec, e));
        let (target_ip, target_scope, target_more, target_name) = match &self.target_host {
            Host::Ip(ip) => (*ip, 0, Vec::new(), None),
            Host::Zoned(ip, z) => (IpAddr::V6(*ip), zone(false, z)?, Vec::new(), None),
            Host::Name(n) => {
                let a = answer(n)?;
                let mut ips = names::usable(n, a.ips, self.target_v6, self.proto)
                    .map_err(|e| not_found(spec, e))?;
                let named = TargetName::new(n, self.target_v6, ips.clone(), a.ttl);
                let first = ips.remove(0);
                (first, 0, ips, Some(Arc::new(named)))
            }
        };
        let listens: Vec<(Option<IpAddr>, u32)> = match &self.listen_host {
            None => vec![(None, 0)],
            Some(Host::Ip(ip)) => vec![(Some(*ip), 0)],
            Some(Host::Zoned(ip, z)) => vec![(Some(IpAddr::V6(*ip)), zone(true, z)?)],
            Some(Host::Name(n)) => {
                let mut all = name(n)?;
                if let Some(v6) = self.listen_v6 {
                    all.retain(|ip| ip.is_ipv6() == v6);
                    if all.is_empty() {
                        let d = if v6 { 6 } else { 4 };
                        return Err(not_found(
                            spec,
                            format!("'{n}' has no IPv{d} address (the listen side asks for one)"),
                        ));
                    }
                }
                let here: Vec<IpAddr> = all
                    .iter()
                    .copied()
                    .filter(|ip| look.listen_local(*ip))
                    .collect();
                let ips = if here.is_empty() { all } else { here };
                ips.into_iter().map(|ip| (Some(ip), 0)).collect()
            }
        };
        Ok(listens
            .into_iter()
            .map(|(listen_ip, listen_scope)| Mapping {
                proto: self.proto,
                listen_ip,
                listen_scope,
                listen: self.listen,
                target_ip,
                target_scope,
                target_more: target_more.clone(),
                target: self.target,
                target_name: target_name.clone(),
            })
            .collect())
    }
}

/// Parse `proto` + listen + target into a checked [`MapSpec`]. The target may carry a
/// `tcp:`/`udp:` prefix of its own (socat's `TCP:host:port`) when it agrees with `proto`.
pub(crate) fn mapping(
    spec: &str,
    proto: Proto,
    listen: &str,
    target: &str,
) -> Result<MapSpec, SpecError> {
    let (listen_host, lp) = parse_listen(spec, listen)?;
    build(spec, proto, (listen_host, lp, None), target)
}

/// A socat listen address (`TCP-LISTEN:8080,fork`) and a target into a checked [`MapSpec`];
/// the protocol is the listen form's.
pub(crate) fn socat_mapping(
    spec: &str,
    listen: SocatListen,
    target: &str,
    services: &Services,
) -> Result<MapSpec, SpecError> {
    // socat's TCP:HOST:SERVICE: the port by name, for the listen form's protocol.
    let target = socat::numbered_target(spec, target, listen.proto, services)?;
    let side = (Some(listen.host), listen.ports, Some(listen.v6));
    build(spec, listen.proto, side, &target)
}

/// The listen side as parsed: its host, ports and the family a listen name is kept to.
type ListenSide = (Option<Host>, PortRange, Option<bool>);

fn build(
    spec: &str,
    proto: Proto,
    (listen_host, lp, listen_v6): ListenSide,
    target: &str,
) -> Result<MapSpec, SpecError> {
    // socat's TCP4:/TCP6: (UDP4:/UDP6:): one family of a name's addresses.
    let target = target.trim();
    let (target_v6, target) = match target.get(..5).map(|p| p.to_ascii_lowercase()) {
        Some(p) if matches!(p.as_str(), "tcp4:" | "udp4:") => {
            (Some(false), format!("{}:{}", &p[..3], &target[5..]))
        }
        Some(p) if matches!(p.as_str(), "tcp6:" | "udp6:") => {
            (Some(true), format!("{}:{}", &p[..3], &target[5..]))
        }
        _ => (None, target.to_string()),
    };
    let (tproto, target) = split_proto(spec, &target)?;
    if let Some(t) = tproto.filter(|t| *t != proto) {
        return Err(bad(
            spec,
            format!("the target says {t} but the mapping is {proto}"),
        ));
    }
    if target.contains(',') {
        return Err(bad(
            spec,
            format!("'{target}': socat options on the target are not taken (the proxy dials each connection itself); drop what follows the ','"),
        ));
    }
    let (target_host, tp) = parse_target(spec, target)?;
    let literal_v6 = match &target_host {
        Host::Ip(ip) => Some(ip.is_ipv6()),
        Host::Zoned(..) => Some(true),
        Host::Name(_) => None,
    };
    if let (Some(want), Some(is)) = (target_v6, literal_v6) {
        if want != is {
            let d = |v6: bool| if v6 { 6 } else { 4 };
            return Err(bad(
                spec,
                format!(
                    "the target asks for IPv{} ({}{}:) but its address is IPv{}",
                    d(want),
                    proto.to_string().to_uppercase(),
                    d(want),
                    d(is)
                ),
            ));
        }
    }
    let tp = tp.unwrap_or(lp);
    if tp.len() != 1 && tp.len() != lp.len() {
        return Err(bad(
            spec,
            format!(
                "the listen range has {} ports but the target range has {}; give ranges of the same length or one target port",
                lp.len(),
                tp.len()
            ),
        ));
    }
    if matches!(target_host, Host::Ip(ip) if ip.is_unspecified()) {
        return Err(bad(spec, "the target address cannot be 0.0.0.0 or ::"));
    }
    Ok(MapSpec {
        text: spec.to_string(),
        proto,
        listen_host,
        listen: lp,
        target_host,
        target: tp,
        target_v6,
        listen_v6,
    })
}

/// Split an optional `tcp:` / `udp:` prefix (any case: socat writes `TCP:`) off `s` (a part
/// of `spec`); `sctp:` is refused with a message naming SCTP.
pub(crate) fn split_proto<'a>(
    spec: &str,
    s: &'a str,
) -> Result<(Option<Proto>, &'a str), SpecError> {
    let has = |p: &str| s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    if has("tcp:") {
        Ok((Some(Proto::Tcp), &s[4..]))
    } else if has("udp:") {
        Ok((Some(Proto::Udp), &s[4..]))
    } else if has("sctp:") {
        Err(bad(
            spec,
            "SCTP is not supported by nettool proxy (TCP and UDP are); use docker-proxy for SCTP ports",
        ))
    } else {
        Ok((None, s))
    }
}

/// Parse a `-p` spec: `[tcp:|udp:]LISTEN=TARGET`, or a socat listen address for LISTEN
/// (`TCP-LISTEN:8080,fork=TCP:10.0.0.2:80`, whose ports may be service names, looked up in
/// `services`).
pub(crate) fn parse_map(spec: &str, services: &Services) -> Result<MapSpec, SpecError> {
    if socat::listen_head(spec).is_some() {
        let (l, t) = socat::split_map(spec)
            .ok_or_else(|| bad(spec, "missing '=' between the listen side and the target"))?;
        let form = socat::listen_form(spec, l, services)?
            .ok_or_else(|| bad(spec, "not a socat listen address"))?;
        return socat_mapping(spec, form, t, services);
    }
    let (proto, rest) = split_proto(spec, spec)?;
    let proto = proto.unwrap_or(Proto::Tcp);
    let (l, t) = rest
        .split_once('=')
        .ok_or_else(|| bad(spec, "missing '=' between the listen side and the target"))?;
    mapping(spec, proto, l, t)
}

/// `ip` (with interface index `scope` when it is IPv6 and that is not 0) and `port`.
fn scoped(ip: IpAddr, scope: u32, port: u16) -> SocketAddr {
    match ip {
        IpAddr::V6(a) if scope != 0 => SocketAddr::V6(SocketAddrV6::new(a, port, 0, scope)),
        ip => SocketAddr::new(ip, port),
    }
}

impl Mapping {
    /// One [`PortMap`] per listening socket: every port of the range, and for an "every
    /// address" mapping both 0.0.0.0 and [::].
    pub(crate) fn expand(&self) -> Vec<PortMap> {
        let mut out = Vec::with_capacity(self.listen.len() as usize * 2);
        for i in 0..self.listen.len() {
            let lport = self.listen.first + i as u16;
            let tport = if self.target.len() == 1 {
                self.target.first
            } else {
                self.target.first + i as u16
            };
            let target = scoped(self.target_ip, self.target_scope, tport);
            let more: Arc<[SocketAddr]> = self
                .target_more
                .iter()
                .map(|ip| SocketAddr::new(*ip, tport))
                .collect();
            match self.listen_ip {
                Some(ip) => out.push(PortMap {
                    proto: self.proto,
                    listen: scoped(ip, self.listen_scope, lport),
                    optional: false,
                    target,
                    more,
                    name: self.target_name.clone(),
                }),
                None => {
                    out.push(PortMap {
                        proto: self.proto,
                        listen: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), lport),
                        optional: false,
                        target,
                        more: more.clone(),
                        name: self.target_name.clone(),
                    });
                    out.push(PortMap {
                        proto: self.proto,
                        listen: SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), lport),
                        optional: true,
                        target,
                        more,
                        name: self.target_name.clone(),
                    });
                }
            }
        }
        out
    }
}

/// Whether a listener on `ours` (IPv6 ones are IPV6_V6ONLY, as the proxy binds them) cannot be
/// bound next to one on `other`: the same port and either the same address or a wildcard of
/// the family; an IPv6 `other` that is not V6ONLY (`other_dual`) takes IPv4 too, as
/// `[::]` or as an IPv4-mapped address.
pub(crate) fn listens_clash(ours: SocketAddr, other: SocketAddr, other_dual: bool) -> bool {
    if ours.port() != other.port() {
        return false;
    }
    let (a, b) = (ours.ip(), other.ip());
    if a.is_ipv4() == b.is_ipv4() {
        return a == b || a.is_unspecified() || b.is_unspecified();
    }
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V6(b)) if other_dual => {
            b.is_unspecified()
                || b.to_ipv4_mapped()
                    .is_some_and(|b| a.is_unspecified() || a == b)
        }
        _ => false,
    }
}

/// Two mappings that both listen on one address and port (the same protocol): the second
/// could not be bound next to the first. The first such pair and the address, in order.
pub(crate) fn first_overlap(maps: &[Mapping]) -> Option<(&Mapping, &Mapping, Proto, SocketAddr)> {
    let mut seen: std::collections::HashMap<(Proto, u16), Vec<(SocketAddr, usize)>> =
        Default::default();
    for (i, m) in maps.iter().enumerate() {
        for pm in m.expand() {
            let here = seen.entry((pm.proto, pm.listen.port())).or_default();
            if let Some(&(_, j)) = here
                .iter()
                .find(|(other, _)| listens_clash(pm.listen, *other, false))
            {
                return Some((&maps[j], m, pm.proto, pm.listen));
            }
            here.push((pm.listen, i));
        }
    }
    None
}

impl std::fmt::Display for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = |ip: IpAddr, scope: u32| match ip {
            IpAddr::V6(a) if scope != 0 => format!("[{a}%{scope}]"),
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        match self.listen_ip {
            Some(l) => write!(
                f,
                "{}:{}:{}",
                self.proto,
                ip(l, self.listen_scope),
                self.listen
            )?,
            None => write!(f, "{}:{}", self.proto, self.listen)?,
        }
        write!(
            f,
            "={}:{}",
            ip(self.target_ip, self.target_scope),
            self.target
        )
    }
}

#[cfg(test)]
mod tests;
