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
    seen: std::collections::HashMap<(String, u64), (std::time::Instant, Result<Answer, String>)>,
}

static NAMES: std::sync::Mutex<Option<NameBudget>> = std::sync::Mutex::new(None);

/// Where a running proxy's names are looked up: with the /etc/hosts and /etc/resolv.conf
/// that process sees (/proc/PID/root/etc/..., doctor's own where one cannot be read), and
/// from its network namespace when that is not the caller's (its nameserver may be
/// 127.0.0.11, Docker's embedded DNS, reachable only from inside).
pub(crate) struct View {
    /// The resolver files' settings.
    cfg: crate::dns::lookup::ResolverConfig,
    /// The namespace the queries leave from (None: the caller's).
    ns: Option<NetNs>,
    /// The files' texts and the namespace: one name in two views is asked twice.
    key: u64,
    /// How the names were looked up, for a finding's evidence.
    said: String,
}

/// A resolver file as process `pid` sees it: its text, the path read and that path in the
/// evidence's words; else doctor's own (`own`), with why the process's could not be read.
fn view_file(root: &std::path::Path, own: &str) -> (String, std::path::PathBuf, String) {
    let theirs = root.join(own.trim_start_matches('/'));
    match crate::facts::procroot::read_in_root(root, own) {
        Ok(t) => {
            let said = theirs.display().to_string();
            (t, theirs, said)
        }
        Err(e) => (
            std::fs::read_to_string(own).unwrap_or_default(),
            own.into(),
            format!("{own} ({} could not be read: {e})", theirs.display()),
        ),
    }
}

impl View {
    /// Process `pid`'s view of names (see [`View`]).
    pub(crate) fn of_pid(pid: u32) -> View {
        let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
        let (hosts, hosts_file, hosts_at) = view_file(&root, "/etc/hosts");
        let (resolv, resolv_file, resolv_at) = view_file(&root, "/etc/resolv.conf");
        let files = crate::dns::lookup::ResolverFiles {
            hosts: hosts_file,
            resolv: resolv_file,
        };
        let cfg = crate::dns::lookup::ResolverConfig::from_texts(files, hosts, &resolv);
        let (ns, from) = match (NetNs::from_pid(pid), NetNs::current()) {
            (Ok(theirs), Ok(here)) if theirs.id() != here.id() => {
                (Some(theirs), "from its network namespace".to_string())
            }
            (Ok(_), Ok(_)) => (None, "from its network namespace (doctor's too)".into()),
            (Err(e), _) | (_, Err(e)) => (None, format!("from doctor's network namespace ({e})")),
        };
        let servers: Vec<String> = cfg.nameservers.iter().map(|s| s.ip().to_string()).collect();
        let said = format!(
            "looked up as pid {pid} does: {hosts_at}, {resolv_at}, nameserver {} {from}",
            servers.join(", ")
        );
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            // The files too: an answer's error names them.
            (&cfg.files, &cfg.hosts, &resolv, ns.as_ref().map(|n| n.id())).hash(&mut h);
            h.finish()
        };
        View { cfg, ns, key, said }
    }

    /// Look `name` up within the run's budget ([`budgeted`]).
    fn addresses(&self, name: &str) -> Result<Answer, String> {
        budgeted(name, self, &NAMES)
    }
}

/// The same for reading a running proxy's arguments (doctor, topology): one query round of at
/// most a second per query, and [`NAMES_BUDGET`] for every name of the run together, each
/// name once per view, so a dead DNS server does not hold a diagnosis.
fn budgeted(
    name: &str,
    view: &View,
    names: &std::sync::Mutex<Option<NameBudget>>,
) -> Result<Answer, String> {
    use std::time::Instant;
    let now = Instant::now();
    let key = (name.to_string(), view.key);
    let until = {
        let mut g = names.lock().unwrap_or_else(|p| p.into_inner());
        let b = g.get_or_insert_with(|| NameBudget {
            until: now + NAMES_BUDGET,
            seen: Default::default(),
        });
        if let Some((at, r)) = b.seen.get(&key) {
            if now.duration_since(*at) < NAMES_FRESH {
                return r.clone();
            }
        }
        if now > b.until + NAMES_FRESH {
            b.until = now + NAMES_BUDGET;
        }
        b.until
    };
    let mut cfg = view.cfg.clone();
    cfg.timeout = Duration::from_secs(1);
    cfg.attempts = 1;
    cfg.deadline = Some(until);
    let ask = move || crate::dns::lookup::lookup_answer(&cfg, name);
    // In the process's namespace through the core (NetNs::run: a thread of its own that
    // enters it; never the calling thread, which may be a tokio worker).
    let r = match &view.ns {
        Some(ns) => ns.run(ask).unwrap_or_else(|e| Err(e.to_string())),
        None => ask(),
    };
    let r = r.map_err(|e| match Instant::now() >= until {
        true => format!(
            "{e} (the names in running proxies' arguments get {} s in all)",
            NAMES_BUDGET.as_secs()
        ),
        false => e,
    });
    let mut g = names.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = g.as_mut() {
        b.seen.insert(key, (Instant::now(), r.clone()));
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

/// A running proxy's mappings as its arguments read here (doctor, topology): names as
/// process `pid` looks them up now ([`View::of_pid`], within the run's budget of
/// [`budgeted`]); a target name that does not resolve for it keeps its listen side, with
/// the name, why and how it was looked up ([`UnresolvedName`]). None when a mapping is no
/// mapping here.
pub(super) fn recognised(specs: Vec<MapSpec>, pid: u32) -> Option<Vec<Recognised>> {
    // Names as the process sees them now; zones only where they are indexes: the interface
    // may be in another namespace.
    struct Recognise {
        pid: u32,
        view: std::cell::OnceCell<View>,
    }
    impl Recognise {
        fn view(&self) -> &View {
            self.view.get_or_init(|| View::of_pid(self.pid))
        }
    }
    impl Lookup for Recognise {
        fn addresses(&self, name: &str) -> Result<Answer, String> {
            self.view().addresses(name)
        }
        fn zone(&self, _listen: bool, zone: &str) -> Result<u32, String> {
            Ok(zone.parse().unwrap_or(0))
        }
        fn listen_local(&self, _ip: std::net::IpAddr) -> bool {
            true
        }
    }
    let look = Recognise {
        pid,
        view: Default::default(),
    };
    let mut out = Vec::new();
    for s in specs {
        match (s.resolve(&look), &s.target_host) {
            (Ok(maps), _) => out.extend(maps.into_iter().map(|mapping| Recognised {
                mapping,
                unresolved: None,
            })),
            (Err(e), spec::Host::Name(name)) => {
                // The resolver's own words when it failed (they are cached: no second
                // query); else why its answer is no target (e.g. no IPv4 for TCP4:).
                let why = look.addresses(name).err().unwrap_or(e.why);
                let unresolved = UnresolvedName {
                    name: name.clone(),
                    why,
                    looked_up: look.view().said.clone(),
                };
                // The listen side as written, with a stand-in target never shown.
                let mut stand_in = s.clone();
                stand_in.target_host = spec::Host::Ip(std::net::Ipv4Addr::UNSPECIFIED.into());
                out.extend(
                    stand_in
                        .resolve(&look)
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
            crate::dns::lookup::ResolverFiles::system(),
            String::new(),
            "search a.example b.example\noptions ndots:5\n",
        );
        let cfg = crate::dns::lookup::ResolverConfig {
            nameservers: vec![silent.local_addr().unwrap()],
            ..cfg
        };
        let view = View {
            cfg,
            ns: None,
            key: 1,
            said: String::new(),
        };
        let names = std::sync::Mutex::new(None);
        let e = budgeted("db", &view, &names).unwrap_err();
        assert!(e.contains("get 1 s in all"), "{e}");
        let sent = |s: &std::net::UdpSocket| {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 512];
            std::iter::from_fn(|| s.recv(&mut buf).ok()).count()
        };
        let first = sent(&silent);
        assert!(first > 0);
        for n in ["cache", "web", "db"] {
            let e = budgeted(n, &view, &names).unwrap_err();
            assert!(e.contains("get 1 s in all"), "{n}: {e}");
        }
        assert_eq!(sent(&silent), 0, "queries after the budget was spent");
    }

    /// A process's resolver file is read under its root; one that cannot be read (missing,
    /// or /proc/PID/root not readable) is doctor's own, and the evidence says why.
    #[test]
    fn a_process_file_falls_back_to_doctors_own_and_says_so() {
        let root = std::env::temp_dir().join(format!("nt-test-view-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hosts"), "10.1.2.3 db.nt-test\n").unwrap();
        let (text, read, at) = view_file(&root, "/etc/hosts");
        assert_eq!(text, "10.1.2.3 db.nt-test\n");
        assert_eq!(read, root.join("etc/hosts"));
        assert_eq!(at, root.join("etc/hosts").display().to_string());
        let (text, read, at) = view_file(&root, "/etc/resolv.conf");
        assert_eq!(
            text,
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
        );
        assert_eq!(read, std::path::Path::new("/etc/resolv.conf"));
        assert!(
            at.starts_with("/etc/resolv.conf (")
                && at.contains(&format!(
                    "{}/etc/resolv.conf could not be read",
                    root.display()
                )),
            "{at}"
        );
        let _ = std::fs::remove_dir_all(&root);
        // This process's own view: its files, its namespace (no thread of another one).
        let me = std::process::id();
        let v = View::of_pid(me);
        assert!(v.ns.is_none());
        // The lookup's errors name the files it read (its own fields, not the evidence's words).
        assert_eq!(
            v.cfg.files.hosts,
            std::path::PathBuf::from(format!("/proc/{me}/root/etc/hosts"))
        );
        assert!(
            v.said.starts_with(&format!(
                "looked up as pid {me} does: /proc/{me}/root/etc/hosts, /proc/{me}/root/etc/resolv.conf, nameserver "
            )),
            "{}",
            v.said
        );
        // A process gone: doctor's own files and namespace, and the evidence says so.
        let gone = View::of_pid(u32::MAX);
        assert!(gone.said.contains("could not be read"), "{}", gone.said);
        assert!(
            gone.said.contains("from doctor's network namespace"),
            "{}",
            gone.said
        );
    }
}
