//! The names and addresses on a proxy's command line: looked up with the system's resolver
//! files (a bounded budget when doctor or topology read a running proxy's arguments), a
//! link-local address's interface, and the refusal of a target that is the proxy's own listener.

use std::sync::Arc;
use std::time::Duration;

use crate::dns::lookup::Answer;
use crate::netns::NetNs;
use crate::proxy::spec::{self, Lookup, MapSpec, Mapping};
use crate::proxy::Proto;

use super::{Recognised, UnresolvedName, Usage};

/// The addresses /etc/hosts, then the nameservers of /etc/resolv.conf, give for `name`, in
/// the order to try them, each once ([`crate::dns::lookup`]: no getaddrinfo, whose NSS
/// modules a static binary cannot load).
fn system_addresses(name: &str) -> Result<Answer, String> {
    use crate::dns::lookup::{lookup_answer, ResolverConfig};
    lookup_answer(&ResolverConfig::system(), name)
}

/// How long the names in running proxies' arguments may take in all, in one run of doctor or
/// topology: a dead nameserver costs this once, not a second per name, per proxy and per form
/// of the search list (measured before: 1.1 s per name, 4.1 s with a Kubernetes search list).
const NAMES_BUDGET: Duration = Duration::from_secs(1);

/// How long an answer for a running proxy's name is taken again in the same run (a name in
/// several proxies is looked up once); also when a long-lived caller gets its budget again.
const NAMES_FRESH: Duration = Duration::from_secs(10);

/// The answers of this run and when its budget for names ends.
struct NameBudget {
    until: std::time::Instant,
    seen: std::collections::HashMap<String, (std::time::Instant, Result<Answer, String>)>,
}

static NAMES: std::sync::Mutex<Option<NameBudget>> = std::sync::Mutex::new(None);

/// The same for reading a running proxy's arguments (doctor, topology): one query round of at
/// most a second per query, and [`NAMES_BUDGET`] for every name of the run together, each
/// name once, so a dead DNS server does not hold a diagnosis.
pub(super) fn quick_addresses(name: &str) -> Result<Answer, String> {
    budgeted(name, crate::dns::lookup::ResolverConfig::system(), &NAMES)
}

/// [`quick_addresses`] with the resolver configuration and the run's answers given.
fn budgeted(
    name: &str,
    mut cfg: crate::dns::lookup::ResolverConfig,
    names: &std::sync::Mutex<Option<NameBudget>>,
) -> Result<Answer, String> {
    use std::time::Instant;
    let now = Instant::now();
    let until = {
        let mut g = names.lock().unwrap_or_else(|p| p.into_inner());
        let b = g.get_or_insert_with(|| NameBudget {
            until: now + NAMES_BUDGET,
            seen: Default::default(),
        });
        if let Some((at, r)) = b.seen.get(name) {
            if now.duration_since(*at) < NAMES_FRESH {
                return r.clone();
            }
        }
        if now > b.until + NAMES_FRESH {
            b.until = now + NAMES_BUDGET;
        }
        b.until
    };
    cfg.timeout = Duration::from_secs(1);
    cfg.attempts = 1;
    cfg.deadline = Some(until);
    let r =
        crate::dns::lookup::lookup_answer(&cfg, name).map_err(|e| match Instant::now() >= until {
            true => format!(
                "{e} (the names in running proxies' arguments get {} s in all)",
                NAMES_BUDGET.as_secs()
            ),
            false => e,
        });
    let mut g = names.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = g.as_mut() {
        b.seen.insert(name.to_string(), (Instant::now(), r.clone()));
    }
    r
}

/// The index of interface `zone` (a name, or an index that must exist) in the calling
/// thread's namespace; else what went wrong, and the interfaces there when it is not one.
fn interface_index(zone: &str) -> Result<u32, (String, String)> {
    let links = crate::netns::links::Rtnl::open()
        .and_then(|mut r| r.links())
        .map_err(|e| {
            (
                format!("cannot list the interfaces to find '{zone}'"),
                e.to_string(),
            )
        })?;
    let want: Option<u32> = zone.parse().ok();
    if let Some(l) = links
        .iter()
        .find(|l| l.name == zone || Some(l.index) == want)
    {
        return Ok(l.index);
    }
    let names: Vec<String> = links
        .iter()
        .map(|l| format!("{} ({})", l.name, l.index))
        .collect();
    Err((
        format!("no interface '{zone}'"),
        format!("it has {}", names.join(", ")),
    ))
}

/// Names through /etc/hosts and resolv.conf's nameservers, once, in the proxy's own context (--target-netns does
/// not change it: /etc/resolv.conf and /etc/hosts are files, and the queries leave from where
/// nettool runs); zones in the namespace where that side's sockets are made.
struct SystemLookup<'a> {
    listen_ns: Option<&'a NetNs>,
    target_ns: Option<&'a NetNs>,
    /// What each name and interface became, for the log (each once).
    found: std::cell::RefCell<Vec<String>>,
}

impl SystemLookup<'_> {
    fn found(&self, line: String) {
        let mut f = self.found.borrow_mut();
        if !f.contains(&line) {
            f.push(line);
        }
    }
}

impl Lookup for SystemLookup<'_> {
    fn addresses(&self, name: &str) -> Result<Answer, String> {
        let a = system_addresses(name)?;
        let list: Vec<String> = a.ips.iter().map(|ip| ip.to_string()).collect();
        let from = match a.ttl {
            Some(ttl) => format!("DNS, TTL {} s", ttl.as_secs()),
            None => "/etc/hosts".to_string(),
        };
        self.found(format!("{name} is {} ({from})", list.join(", ")));
        Ok(a)
    }

    fn zone(&self, listen: bool, zone: &str) -> Result<u32, String> {
        let (ns, flag) = match listen {
            true => (self.listen_ns, "--listen-netns"),
            false => (self.target_ns, "--target-netns"),
        };
        let z = zone.to_string();
        let r = match ns {
            Some(ns) => ns
                .run(move || interface_index(&z))
                .map_err(|e| e.to_string())?,
            None => interface_index(&z),
        };
        let place = match ns {
            Some(ns) => format!("namespace {} ({flag})", ns.label()),
            None => "the proxy's own namespace".to_string(),
        };
        match r {
            Ok(index) => {
                if zone.parse::<u32>().is_err() {
                    self.found(format!("interface {zone} is index {index} in {place}"));
                }
                Ok(index)
            }
            Err((what, detail)) if ns.is_none() => Err(format!(
                "{what} in {place} ({flag} names another one): {detail}"
            )),
            Err((what, detail)) => Err(format!("{what} in {place}: {detail}")),
        }
    }

    fn listen_local(&self, ip: std::net::IpAddr) -> bool {
        // Bindable is what counts: ::1 is loopback but absent where IPv6 is off.
        let bindable = move || std::net::UdpSocket::bind((ip, 0)).is_ok();
        match self.listen_ns {
            Some(ns) => ns.run(bindable).unwrap_or(false),
            None => bindable(),
        }
    }
}

/// Look the names and zones of `specs` up (see [`SystemLookup`]): the mappings, and a line
/// for the log on what each name and interface became.
pub(super) fn resolve(
    specs: &[MapSpec],
    listen_ns: Option<&NetNs>,
    target_ns: Option<&NetNs>,
) -> Result<(Vec<Mapping>, Vec<String>), spec::SpecError> {
    let look = SystemLookup {
        listen_ns,
        target_ns,
        found: Default::default(),
    };
    let mut out: Vec<Mapping> = Vec::new();
    for s in specs {
        out.extend(s.resolve(&look)?);
    }
    // One name (and family) in several mappings is one list, asked again by one thread.
    let mut seen: Vec<Arc<spec::TargetName>> = Vec::new();
    for m in &mut out {
        let Some(n) = m.target_name.clone() else {
            continue;
        };
        match seen.iter().find(|o| **o == n) {
            Some(o) => m.target_name = Some(o.clone()),
            None => seen.push(n),
        }
    }
    Ok((out, look.found.into_inner()))
}

/// A mapping whose target is its own listening socket (same namespace, same port, and the
/// target is the listen address or, for a wildcard listener, any address of that namespace)
/// would connect to itself for every connection until descriptors run out: refused up front.
pub(super) fn refuse_self_targets(
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
    // A target name's other addresses too: each is dialled when the ones before it fail.
    let pairs = maps.iter().flat_map(Mapping::expand).flat_map(|pm| {
        pm.targets()
            .into_iter()
            .map(|t| (pm.proto, pm.listen, t))
            .collect::<Vec<_>>()
    });
    for (proto, l, t) in pairs {
        if own_listener(l, t, listen_ns)? {
            return Err(Usage(format!(
                "{} {l} -> {t}: the target is this proxy's own listening socket, so every connection would open another one to itself (until file descriptors run out); give the service's address instead, e.g. a container's IP",
                proto
            ))
            .into());
        }
    }
    // A target name's later answers: an address that is one of its mappings' own listeners
    // is not dialled (told once by the name's thread).
    // Every listener of this proxy, and for each name the (protocol, port) pairs it is dialled
    // with: an address that takes one of those to one of these is refused.
    let listeners: Vec<(Proto, std::net::SocketAddr)> = maps
        .iter()
        .flat_map(Mapping::expand)
        .map(|pm| (pm.proto, pm.listen))
        .collect();
    let mut named: Vec<(&Arc<spec::TargetName>, Vec<Dialled>)> = Vec::new();
    for m in maps {
        let Some(n) = &m.target_name else { continue };
        let dialled = m
            .expand()
            .into_iter()
            .map(|pm| (pm.proto, pm.target.port()));
        match named.iter_mut().find(|(o, _)| Arc::ptr_eq(o, n)) {
            Some((_, ds)) => ds.extend(dialled),
            None => named.push((n, dialled.collect())),
        }
    }
    for (n, mut dialled) in named {
        dialled.sort_by_key(|(p, port)| (*p == Proto::Udp, *port));
        dialled.dedup();
        let ns = listen_ns.cloned();
        let listeners = listeners.clone();
        n.refuse_with(move |ip| {
            dialled.iter().find_map(|(proto, port)| {
                let t = std::net::SocketAddr::new(ip, *port);
                listeners.iter().find_map(|(lp, l)| {
                    (lp == proto && own_listener(*l, t, ns.as_ref()).unwrap_or(false)).then_some(*l)
                })
            })
        });
    }
    Ok(())
}

/// A protocol and a port a target name is dialled on.
type Dialled = (Proto, u16);

/// Whether a dial to `t` would reach the listener on `l` (made in `listen_ns`, the namespace
/// the dial is made in too): the same port and address, or any address of that namespace for
/// a wildcard listener.
fn own_listener(
    l: std::net::SocketAddr,
    t: std::net::SocketAddr,
    listen_ns: Option<&NetNs>,
) -> Result<bool, crate::netns::NetnsError> {
    // A v4-mapped target ([::ffff:127.0.0.1]) is dialled as IPv4; the IPv6 listeners the
    // proxy binds are V6ONLY, so only a listener of the target's own family can be it.
    let t_ip = t.ip().to_canonical();
    if l.port() != t.port() || l.is_ipv4() != t_ip.is_ipv4() {
        return Ok(false);
    }
    Ok(l.ip() == t_ip
        || (l.ip().is_unspecified()
            && match listen_ns {
                Some(ns) => ns.run(move || is_local(t_ip))?,
                None => is_local(t_ip),
            }))
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

/// A running proxy's mappings as its arguments read here (doctor, topology): names as the
/// proxy resolved them at its start (or the resolver's answer now, within the budget of
/// [`quick_addresses`]); a target name that does not resolve here keeps its listen side, with
/// the name and why ([`UnresolvedName`]). None when a mapping is no mapping here.
pub(super) fn recognised(specs: Vec<MapSpec>) -> Option<Vec<Recognised>> {
    // Names as the proxy resolved them at its start (or the resolver's answer now);
    // zones only where they are indexes: the interface may be in another namespace.
    struct Recognise;
    impl Lookup for Recognise {
        fn addresses(&self, name: &str) -> Result<Answer, String> {
            quick_addresses(name)
        }
        fn zone(&self, _listen: bool, zone: &str) -> Result<u32, String> {
            Ok(zone.parse().unwrap_or(0))
        }
        fn listen_local(&self, _ip: std::net::IpAddr) -> bool {
            true
        }
    }
    let mut out = Vec::new();
    for s in specs {
        match (s.resolve(&Recognise), &s.target_host) {
            (Ok(maps), _) => out.extend(maps.into_iter().map(|mapping| Recognised {
                mapping,
                unresolved: None,
            })),
            (Err(e), spec::Host::Name(name)) => {
                // The resolver's own words when it failed (they are cached: no second
                // query); else why its answer is no target (e.g. no IPv4 for TCP4:).
                let why = quick_addresses(name).err().unwrap_or(e.why);
                let unresolved = UnresolvedName {
                    name: name.clone(),
                    why,
                };
                // The listen side as written, with a stand-in target never shown.
                let mut stand_in = s.clone();
                stand_in.target_host = spec::Host::Ip(std::net::Ipv4Addr::UNSPECIFIED.into());
                out.extend(
                    stand_in
                        .resolve(&Recognise)
                        .ok()?
                        .into_iter()
                        .map(|mapping| Recognised {
                            mapping,
                            unresolved: Some(unresolved.clone()),
                        }),
                );
            }
            (Err(_), _) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in running proxies' arguments share one second: behind a nameserver that
    /// never answers, the first name's lookup spends it and the next names send nothing; a
    /// name asked again is answered from the run's memory (no second query).
    #[test]
    fn names_in_running_proxies_share_one_budget() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let cfg = crate::dns::lookup::ResolverConfig::from_texts(
            String::new(),
            "search a.example b.example\noptions ndots:5\n",
        );
        let cfg = crate::dns::lookup::ResolverConfig {
            nameservers: vec![silent.local_addr().unwrap()],
            ..cfg
        };
        let names = std::sync::Mutex::new(None);
        let e = budgeted("db", cfg.clone(), &names).unwrap_err();
        assert!(e.contains("get 1 s in all"), "{e}");
        let sent = |s: &std::net::UdpSocket| {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 512];
            std::iter::from_fn(|| s.recv(&mut buf).ok()).count()
        };
        let first = sent(&silent);
        assert!(first > 0);
        for n in ["cache", "web", "db"] {
            let e = budgeted(n, cfg.clone(), &names).unwrap_err();
            assert!(e.contains("get 1 s in all"), "{n}: {e}");
        }
        assert_eq!(sent(&silent), 0, "queries after the budget was spent");
    }
}
