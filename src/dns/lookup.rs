//! Host names to addresses without glibc's NSS: /etc/hosts, then the nameservers of
//! /etc/resolv.conf (A and AAAA over UDP, TCP when an answer is truncated), with its search
//! list and `ndots`. The static binary of the image links glibc statically, where getaddrinfo
//! would dlopen libnss_*.so at run time (absent in the image, and of another glibc on a host);
//! this lookup needs nothing but the two files, so a name resolves the same in the image, on a
//! host and in a Kubernetes pod (`svc.ns.svc.cluster.local` through the pod's search list).
//!
//! Order of the answer: as glibc's getaddrinfo does it in the common cases (RFC 6724, reduced
//! to what decides there): addresses this namespace has no route to go last, then by the
//! RFC's precedence table (::1, then global IPv6, then IPv4), each family in the order the
//! source gave.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// The two files a [`ResolverConfig`]'s texts were read from: /etc/hosts and /etc/resolv.conf
/// here, /proc/PID/root/etc/... for doctor's look at a running proxy's names. Its errors name
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ResolverFiles {
    /// Where the hosts file's text came from.
    pub hosts: PathBuf,
    /// Where resolv.conf's text came from.
    pub resolv: PathBuf,
}

impl ResolverFiles {
    /// This process's own: /etc/hosts and /etc/resolv.conf.
    pub(crate) fn system() -> ResolverFiles {
        ResolverFiles {
            hosts: "/etc/hosts".into(),
            resolv: "/etc/resolv.conf".into(),
        }
    }
}

/// Where names are looked up: the hosts file's lines and resolv.conf's settings.
#[derive(Debug, Clone)]
pub(crate) struct ResolverConfig {
    /// The files the texts below came from.
    pub files: ResolverFiles,
    /// The hosts file's text.
    pub hosts: String,
    /// Nameservers in resolv.conf's order (port 53; tests set another).
    pub nameservers: Vec<SocketAddr>,
    /// Domains tried for a name with fewer than `ndots` dots (and after it otherwise).
    pub search: Vec<String>,
    /// resolv.conf's `options ndots:N` (1 by default).
    pub ndots: usize,
    /// How long one query waits for an answer (`options timeout:N`, 5 s by default).
    pub timeout: Duration,
    /// How many rounds over the nameservers (`options attempts:N`, 2 by default).
    pub attempts: usize,
    /// When the whole lookup gives up, whatever is left of its names, nameservers and rounds
    /// (a caller's budget; None: resolv.conf's timeouts alone).
    pub deadline: Option<Instant>,
}

impl ResolverConfig {
    /// The machine's: /etc/hosts and /etc/resolv.conf as this process sees them (a missing
    /// file is an empty one; no nameserver line means 127.0.0.1, as glibc does).
    pub(crate) fn system() -> ResolverConfig {
        let files = ResolverFiles::system();
        let hosts = std::fs::read_to_string(&files.hosts).unwrap_or_default();
        let resolv = std::fs::read_to_string(&files.resolv).unwrap_or_default();
        ResolverConfig::from_texts(files, hosts, &resolv)
    }

    /// A configuration from the two files' texts, read from `files`.
    pub(crate) fn from_texts(files: ResolverFiles, hosts: String, resolv: &str) -> ResolverConfig {
        let mut c = ResolverConfig {
            files,
            hosts,
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
            deadline: None,
        };
        for line in resolv.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                // glibc reads at most three nameservers.
                Some("nameserver") if c.nameservers.len() < 3 => {
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        c.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                // The last of `domain` and `search` wins, as in glibc.
                Some("search") => c.search = words.map(|w| w.to_string()).collect(),
                Some("domain") => c.search = words.take(1).map(|w| w.to_string()).collect(),
                Some("options") => {
                    for o in words {
                        let (k, v) = o.split_once(':').unwrap_or((o, ""));
                        let n = v.parse::<usize>().ok();
                        match (k, n) {
                            ("ndots", Some(n)) => c.ndots = n.min(15),
                            ("timeout", Some(n)) => {
                                c.timeout = Duration::from_secs(n.clamp(1, 30) as u64)
                            }
                            ("attempts", Some(n)) => c.attempts = n.clamp(1, 5),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if c.nameservers.is_empty() {
            c.nameservers
                .push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        }
        c
    }
}

/// What a name resolved to, and for how long that holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The addresses, each once, in the order a connection should try them.
    pub ips: Vec<IpAddr>,
    /// The smallest TTL of the DNS records that gave them; None when they came from the
    /// hosts file (which has none: it is read again instead).
    pub ttl: Option<Duration>,
}

/// The addresses `name` has, each once, in the order a connection should try them, and the
/// answer's TTL; an error says what failed (no such name, no answer from which nameservers).
pub(crate) fn lookup_answer(cfg: &ResolverConfig, name: &str) -> Result<Answer, String> {
    let found = from_hosts(&cfg.hosts, name);
    let (mut ips, ttl) = if found.is_empty() {
        let (ips, ttl) = from_dns(cfg, name)?;
        (ips, Some(ttl))
    } else {
        (found, None)
    };
    order(&mut ips);
    Ok(Answer { ips, ttl })
}

/// Every address the hosts file gives `name` (or an alias), in file order, each once.
fn from_hosts(hosts: &str, name: &str) -> Vec<IpAddr> {
    let want = name.trim_end_matches('.');
    let mut out = Vec::new();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        // A scoped address (fe80::1%eth0) in a hosts file is skipped: its interface would be
        // looked up where nettool runs, which is not where the socket lives.
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        if words.any(|n| n.eq_ignore_ascii_case(want)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// The names to ask for, in resolv.conf's order: an absolute name (trailing dot) as it is; a
/// name with at least `ndots` dots as it is and then with each search domain; a shorter one
/// with each search domain first.
fn candidates(cfg: &ResolverConfig, name: &str) -> Vec<String> {
    if let Some(abs) = name.strip_suffix('.') {
        return vec![abs.to_string()];
    }
    let searched = cfg
        .search
        .iter()
        .map(|d| format!("{name}.{}", d.trim_end_matches('.')));
    if name.matches('.').count() >= cfg.ndots {
        std::iter::once(name.to_string()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(name.to_string())).collect()
    }
}

/// How one name's two queries went.
enum Asked {
    /// Addresses (A and AAAA together) and the smallest TTL of their records.
    Found(Vec<IpAddr>, Duration),
    /// NXDOMAIN, or no address of either type: try the next candidate.
    NoSuchName,
    /// What went wrong with the last nameserver asked.
    Failed(String),
}

fn from_dns(cfg: &ResolverConfig, name: &str) -> Result<(Vec<IpAddr>, Duration), String> {
    let mut failed: Option<String> = None;
    for cand in candidates(cfg, name) {
        let Ok(qname) = Name::from_ascii(format!("{cand}.")) else {
            continue;
        };
        if cfg.query_timeout().is_none() {
            failed = Some(format!(
                "{}; the lookup's time was up before '{cand}' was asked",
                failed.unwrap_or_else(|| "no answer".into())
            ));
            break;
        }
        match ask_all(cfg, &qname) {
            Asked::Found(ips, ttl) => return Ok((ips, ttl)),
            Asked::NoSuchName => {}
            Asked::Failed(e) => failed = Some(e),
        }
    }
    Err(match failed {
        Some(e) => e,
        None => format!(
            "no such name (not in {}; the nameservers of {} know none of its forms)",
            cfg.files.hosts.display(),
            cfg.files.resolv.display()
        ),
    })
}

impl ResolverConfig {
    /// How long the next query may wait: `timeout`, cut to what is left before `deadline`
    /// (None once it has passed).
    fn query_timeout(&self) -> Option<Duration> {
        match self.deadline {
            None => Some(self.timeout),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(self.timeout))
            }
        }
    }
}

/// Ask each nameserver in turn, `attempts` rounds, until one answers both queries.
fn ask_all(cfg: &ResolverConfig, qname: &Name) -> Asked {
    let mut last = String::new();
    for _ in 0..cfg.attempts {
        for ns in &cfg.nameservers {
            let Some(timeout) = cfg.query_timeout() else {
                return Asked::Failed(last);
            };
            match ask(*ns, qname, timeout) {
                Ok(a) => return a,
                // A nameserver that answered with an error code did answer.
                Err(e) if e.starts_with("answered ") => last = format!("nameserver {ns} {e}"),
                Err(e) => last = format!("no answer from nameserver {ns}: {e}"),
            }
        }
    }
    Asked::Failed(last)
}

/// A wait in seconds for a message: whole when it is (`5`), else to a tenth (`0.8`).
fn secs(d: Duration) -> String {
    match d.subsec_millis() {
        0 => d.as_secs().to_string(),
        _ => format!("{:.1}", d.as_secs_f32()),
    }
}

/// A and AAAA for `qname` from one nameserver, over UDP (both sent at once, as glibc does),
/// again over TCP when an answer comes back truncated.
fn ask(ns: SocketAddr, qname: &Name, timeout: Duration) -> Result<Asked, String> {
    let bind: SocketAddr = match ns {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.connect(ns).map_err(|e| e.to_string())?;
    // Not guessable from outside is not the point here (the socket is connected, so only the
    // nameserver's address can answer); two runs must not reuse ids by accident.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let id0 = (std::process::id() as u16) ^ (nanos as u16);
    let types = [RecordType::A, RecordType::AAAA];
    let mut pending: Vec<(u16, RecordType)> = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let id = id0.wrapping_add(i as u16);
        sock.send(&query(id, qname, *t)?)
            .map_err(|e| e.to_string())?;
        pending.push((id, *t));
    }
    let deadline = Instant::now() + timeout;
    let mut ips = Vec::new();
    let mut ttl = u32::MAX;
    let mut nxdomain = false;
    let mut buf = vec![0u8; 4096];
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timed out after {} s", secs(timeout)));
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("timed out after {} s", secs(timeout)))
            }
            Err(e) => return Err(e.to_string()),
        };
        let Ok(mut m) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(at) = pending.iter().position(|(id, _)| *id == m.metadata.id) else {
            continue;
        };
        let (id, t) = pending.remove(at);
        if m.metadata.truncation {
            m = ask_tcp(ns, id, qname, t, timeout)?;
        }
        match m.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => nxdomain = true,
            code => return Err(format!("answered {code}")),
        }
        for r in &m.answers {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            ttl = ttl.min(r.ttl);
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    Ok(match (ips.is_empty(), nxdomain) {
        (false, _) => Asked::Found(ips, Duration::from_secs(ttl.into())),
        _ => Asked::NoSuchName,
    })
}

fn query(id: u16, qname: &Name, t: RecordType) -> Result<Vec<u8>, String> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(qname.clone(), t));
    m.to_vec().map_err(|e| e.to_string())
}

/// One query over TCP (two-byte length in front of each message).
fn ask_tcp(
    ns: SocketAddr,
    id: u16,
    qname: &Name,
    t: RecordType,
    timeout: Duration,
) -> Result<Message, String> {
    let tcp = |e: std::io::Error| format!("over TCP: {e}");
    let mut s = TcpStream::connect_timeout(&ns, timeout).map_err(tcp)?;
    s.set_read_timeout(Some(timeout)).map_err(tcp)?;
    let q = query(id, qname, t)?;
    let mut out = (q.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&q);
    s.write_all(&out).map_err(tcp)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(tcp)?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body).map_err(tcp)?;
    Message::from_vec(&body).map_err(|e| format!("over TCP: not a DNS answer: {e}"))
}

/// RFC 6724's precedence (its default policy table) of a destination.
fn precedence(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 35,
        IpAddr::V6(v6) if v6.is_loopback() => 50,
        IpAddr::V6(v6) => match v6.segments()[0] {
            0x2002 => 30,
            0x2001 if v6.segments()[1] == 0 => 5,
            s if s & 0xfe00 == 0xfc00 => 3,
            0x3ffe | 0xfec0 => 1,
            _ if v6.segments()[..6] == [0; 6] => 1,
            _ => 40,
        },
    }
}

/// Whether this namespace has a route to `ip` (a UDP connect sends nothing).
fn routable(ip: &IpAddr) -> bool {
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    UdpSocket::bind(bind)
        .and_then(|s| s.connect(SocketAddr::new(*ip, 9)))
        .is_ok()
}

/// Usable addresses first, then by precedence; a stable sort keeps the source's order within.
fn order(ips: &mut [IpAddr]) {
    let mut keyed: Vec<(bool, u8, IpAddr)> = ips
        .iter()
        .map(|ip| (!routable(ip), 255 - precedence(ip), *ip))
        .collect();
    keyed.sort_by_key(|(unroutable, prec, _)| (*unroutable, *prec));
    for (slot, (_, _, ip)) in ips.iter_mut().zip(keyed) {
        *slot = ip;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::MessageType;
    use hickory_proto::rr::rdata::{A, AAAA};
    use hickory_proto::rr::Record;

    const DEBIAN_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n# a comment\n10.0.0.5 db.internal db # the db\n";

    #[test]
    fn hosts_file_names_and_aliases_in_file_order_then_ordered() {
        assert_eq!(
            from_hosts(DEBIAN_HOSTS, "localhost"),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            from_hosts(DEBIAN_HOSTS, "DB"),
            vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        assert!(from_hosts(DEBIAN_HOSTS, "comment").is_empty());
        // getaddrinfo's order: ::1 (precedence 50) before 127.0.0.1 (35).
        let cfg = ResolverConfig::from_texts(ResolverFiles::system(), DEBIAN_HOSTS.into(), "");
        assert_eq!(
            lookup_answer(&cfg, "localhost").unwrap().ips,
            vec![
                "::1".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn resolv_conf_settings_and_the_search_order() {
        let c = ResolverConfig::from_texts(
            ResolverFiles::system(),
            String::new(),
            "# k8s\nnameserver 10.96.0.10\nnameserver bad\nsearch ns.svc.cluster.local svc.cluster.local\noptions ndots:5 timeout:2 attempts:3\n",
        );
        assert_eq!(c.nameservers, vec!["10.96.0.10:53".parse().unwrap()]);
        assert_eq!(
            (c.ndots, c.timeout, c.attempts),
            (5, Duration::from_secs(2), 3)
        );
        assert_eq!(
            candidates(&c, "web"),
            ["web.ns.svc.cluster.local", "web.svc.cluster.local", "web"]
        );
        assert_eq!(candidates(&c, "web.example."), ["web.example"]);
        let d = ResolverConfig::from_texts(
            ResolverFiles::system(),
            String::new(),
            "search a.example\n",
        );
        assert_eq!(d.nameservers, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!(candidates(&d, "db.corp"), ["db.corp", "db.corp.a.example"]);
    }

    /// A nameserver on loopback that knows `known` (A and AAAA), answers NXDOMAIN for the
    /// rest, truncates over UDP when `truncate`, and answers over TCP on the same port.
    fn nameserver(known: &'static str, truncate: bool) -> SocketAddr {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = udp.local_addr().unwrap();
        let tcp = std::net::TcpListener::bind(at).unwrap();
        let answer = move |q: &[u8], over_udp: bool| {
            let req = Message::from_vec(q).unwrap();
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.metadata.message_type = MessageType::Response;
            resp.add_queries(req.queries.clone());
            let qn = &req.queries[0];
            if qn.name.to_ascii().trim_end_matches('.') != known {
                resp.metadata.response_code = ResponseCode::NXDomain;
            } else if truncate && over_udp {
                resp.metadata.truncation = true;
            } else {
                let (rd, ttl) = match qn.query_type {
                    RecordType::A => (RData::A(A("192.0.2.7".parse().unwrap())), 60),
                    _ => (RData::AAAA(AAAA("2001:db8::7".parse().unwrap())), 30),
                };
                resp.add_answer(Record::from_rdata(qn.name.clone(), ttl, rd));
            }
            resp.to_vec().unwrap()
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&answer(&buf[..n], true), from);
            }
        });
        std::thread::spawn(move || {
            for mut s in tcp.incoming().flatten() {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                if s.read_exact(&mut q).is_err() {
                    continue;
                }
                let a = answer(&q, false);
                let mut out = (a.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&a);
                let _ = s.write_all(&out);
            }
        });
        at
    }

    fn cfg_for(ns: SocketAddr, search: &str) -> ResolverConfig {
        let mut c = ResolverConfig::from_texts(
            ResolverFiles::system(),
            String::new(),
            &format!("search {search}\n"),
        );
        c.nameservers = vec![ns];
        c.timeout = Duration::from_secs(2);
        c
    }

    #[test]
    fn a_name_through_the_search_list_over_udp_and_over_tcp_when_truncated() {
        for truncate in [false, true] {
            let ns = nameserver("web.ns.svc.cluster.local", truncate);
            let c = cfg_for(ns, "ns.svc.cluster.local");
            let (mut got, ttl) = from_dns(&c, "web").unwrap();
            got.sort();
            assert_eq!(
                ttl,
                Duration::from_secs(30),
                "the smallest TTL of the records"
            );
            assert_eq!(
                got,
                vec![
                    "192.0.2.7".parse::<IpAddr>().unwrap(),
                    "2001:db8::7".parse().unwrap()
                ],
                "truncate {truncate}"
            );
            let e = from_dns(&c, "nosuch").unwrap_err();
            assert!(e.contains("no such name"), "{e}");
        }
    }

    /// The error names the files the lookup read: a running proxy's (/proc/PID/root/etc/...,
    /// as doctor reads them), not this process's /etc/hosts and /etc/resolv.conf.
    #[test]
    fn no_such_name_names_the_files_it_was_looked_up_with() {
        let ns = nameserver("web.example", false);
        let mut c = cfg_for(ns, "x.example");
        c.files = ResolverFiles {
            hosts: "/proc/4242/root/etc/hosts".into(),
            resolv: "/proc/4242/root/etc/resolv.conf".into(),
        };
        let e = lookup_answer(&c, "nosuch").unwrap_err();
        assert_eq!(
            e,
            "no such name (not in /proc/4242/root/etc/hosts; the nameservers of /proc/4242/root/etc/resolv.conf know none of its forms)"
        );
        // This process's own files, by default.
        c.files = ResolverFiles::system();
        let e = lookup_answer(&c, "nosuch").unwrap_err();
        assert!(
            e.contains("not in /etc/hosts; the nameservers of /etc/resolv.conf know"),
            "{e}"
        );
    }

    #[test]
    fn a_silent_nameserver_is_named_in_the_error() {
        // Bound, never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut c = cfg_for(silent.local_addr().unwrap(), "x");
        c.timeout = Duration::from_secs(1);
        c.attempts = 1;
        let e = from_dns(&c, "web.example.").unwrap_err();
        assert!(
            e.contains(&silent.local_addr().unwrap().to_string()) && e.contains("timed out"),
            "{e}"
        );
    }

    /// A deadline bounds the whole lookup: a silent nameserver and a search list of three
    /// cost one second in all, not one per form of the name.
    #[test]
    fn a_deadline_bounds_every_form_of_the_name_together() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut c = cfg_for(
            silent.local_addr().unwrap(),
            "a.example b.example c.example",
        );
        c.ndots = 5;
        c.timeout = Duration::from_secs(1);
        c.attempts = 1;
        c.deadline = Some(Instant::now() + Duration::from_millis(1500));
        let e = from_dns(&c, "web").unwrap_err();
        assert!(e.contains("the lookup's time was up before"), "{e}");
        // What the nameserver was asked: the first forms, never the last (`web.` itself).
        silent.set_nonblocking(true).unwrap();
        let mut asked = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = silent.recv(&mut buf) {
            asked.push(
                Message::from_vec(&buf[..n]).unwrap().queries[0]
                    .name
                    .to_ascii(),
            );
        }
        assert!(
            asked.contains(&"web.a.example.".to_string()) && !asked.contains(&"web.".to_string()),
            "{asked:?}"
        );
    }

    #[test]
    fn precedence_puts_loopback_v6_then_global_v6_then_v4() {
        let mut ips: Vec<IpAddr> = ["127.0.0.1", "2001:db8::1", "::1", "10.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ips.sort_by_key(|ip| 255 - precedence(ip));
        let want: Vec<IpAddr> = ["::1", "2001:db8::1", "127.0.0.1", "10.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ips, want);
        // Teredo (2001::/32) and unique-local (fc00::/7) go after IPv4.
        assert!(precedence(&"2001::1".parse().unwrap()) < 35);
        assert!(precedence(&"fd00::1".parse().unwrap()) < 35);
    }
}
