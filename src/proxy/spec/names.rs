//! A target name's addresses while the proxy runs. Dials take the list as it is now and never
//! wait for a lookup; the names' one thread asks again once an answer's TTL is past (a
//! hosts-file answer: the file is read again every few seconds) and a dial comes, or at once
//! (at most once a second) when a connection found every address failing. A changed answer
//! is logged once; a name that stops resolving keeps its last list and says so once.
//!
//! One thread keeps every name's time (a proxy with hundreds of names had hundreds of idle
//! threads); each lookup runs on a thread of its own while it lasts, at most [`MAX_LOOKUPS`]
//! at once, so a slow nameserver for one name does not hold the others' answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::dns::lookup::{lookup_answer, Answer, ResolverConfig};
use crate::proxy::{Level, Log};

/// How long a hosts-file answer stands before the file is read again (it has no TTL).
pub(crate) const HOSTS_RECHECK: Duration = Duration::from_secs(5);
/// The shortest time an answer stands (a TTL of 0), and the least time between two lookups
/// forced by failing dials.
const MIN_RECHECK: Duration = Duration::from_secs(1);
/// The longest an answer stands whatever its TTL.
const MAX_RECHECK: Duration = Duration::from_secs(3600);
/// How long a name that did not resolve waits before a dial may ask again.
const RETRY: Duration = Duration::from_secs(5);
/// How many lookups run at once; names wanted beyond it wait for one to end.
const MAX_LOOKUPS: usize = 16;

/// A target name and the addresses dials use for it.
pub(crate) struct TargetName {
    /// The name as written.
    pub name: String,
    /// Only IPv6 (true) or only IPv4 (false) addresses (socat's TCP6:/TCP4:); None: both.
    v6: Option<bool>,
    /// The addresses dials use now, in the resolver's order.
    list: RwLock<Arc<[IpAddr]>>,
    /// How long the first answer stands (its TTL), counted from the thread's start.
    first_valid: Duration,
    /// The list's time is past: the next dial asks the thread for a lookup.
    stale: AtomicBool,
    /// A lookup is wanted (the names' thread is woken through [`SCHEDULE`]).
    wanted: AtomicBool,
    /// When (ms after `epoch`) failing dials may force the next lookup.
    force_after: AtomicU64,
    epoch: Instant,
    /// The last lookup failed (said once until it resolves again).
    failing: AtomicBool,
    /// Which of an answer's addresses is one of this proxy's own listeners (set by the
    /// command, which knows the namespaces): the listener, for the line that says so.
    own: std::sync::OnceLock<OwnListener>,
    /// The addresses already said to be a listener of ours (each once).
    said_own: Mutex<Vec<IpAddr>>,
}

/// The listener of ours a target address would reach, if any.
type OwnListener = Box<dyn Fn(IpAddr) -> Option<SocketAddr> + Send + Sync>;

impl std::fmt::Debug for TargetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TargetName({}: {:?})", self.name, self.list())
    }
}

/// Two mappings with the same name and family dial the same addresses.
impl PartialEq for TargetName {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.v6 == other.v6
    }
}
impl Eq for TargetName {}

/// The addresses of `name` a target can dial, in order: no wildcard, only the family asked
/// for (`v6`), no link-local one (it needs an interface), the first
/// [`super::MAX_TARGET_ADDRESSES`]; else why there are none.
pub(crate) fn usable(
    name: &str,
    mut ips: Vec<IpAddr>,
    v6: Option<bool>,
    proto: super::Proto,
) -> Result<Vec<IpAddr>, String> {
    if let Some(ll) = ips.iter().find(|ip| super::is_link_local(**ip)) {
        return Err(format!("'{name}' resolves to {ll}, which is link-local: write it with its interface instead, like [{ll}%eth0]"));
    }
    if ips.is_empty() {
        return Err(format!("'{name}' resolves to no address"));
    }
    ips.retain(|ip| !ip.is_unspecified());
    if let Some(v6) = v6 {
        let all = ips.len();
        ips.retain(|ip| ip.is_ipv6() == v6);
        if ips.is_empty() && all > 0 {
            let d = if v6 { 6 } else { 4 };
            return Err(format!(
                "'{name}' has no IPv{d} address (the target asks for one: {}{d}:)",
                proto.to_string().to_uppercase()
            ));
        }
    }
    if ips.is_empty() {
        return Err(format!(
            "'{name}' resolves to 0.0.0.0 or ::, which cannot be a target"
        ));
    }
    ips.truncate(super::MAX_TARGET_ADDRESSES);
    Ok(ips)
}

/// One name in the names' thread's schedule.
struct Due {
    name: Arc<TargetName>,
    proto: super::Proto,
    log: Log,
    /// When its answer's time is past.
    at: Instant,
    /// Past it: the list is marked stale and waits for a dial's want.
    stale: bool,
    /// Its lookup runs now.
    busy: bool,
}

/// Every running name's time, and the lookups running now.
struct Schedule {
    names: Vec<Due>,
    lookups: usize,
    running: bool,
}

static SCHEDULE: Mutex<Schedule> = Mutex::new(Schedule {
    names: Vec::new(),
    lookups: 0,
    running: false,
});
/// Wakes the names' thread: a want, a new name, a lookup's end.
static WAKE: Condvar = Condvar::new();

/// The names' thread: marks a name's list stale once its answer's time is past (the next dial
/// wants a lookup), and starts the lookup of each wanted name on a thread of its own (on this
/// one when none can be had), at most [`MAX_LOOKUPS`] at once. Sleeps until the next time is
/// due or it is woken.
fn keep_time() {
    let mut g = SCHEDULE.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut start = Vec::new();
        let free = MAX_LOOKUPS.saturating_sub(g.lookups);
        for d in g.names.iter_mut().filter(|d| !d.busy) {
            if d.name.wanted.load(Ordering::Acquire) {
                if start.len() < free {
                    d.busy = true;
                    start.push((d.name.clone(), d.proto, d.log.clone()));
                }
            } else if !d.stale {
                if now >= d.at {
                    d.name.stale.store(true, Ordering::Release);
                    d.stale = true;
                } else {
                    next = Some(next.map_or(d.at, |n| n.min(d.at)));
                }
            }
        }
        g.lookups += start.len();
        if !start.is_empty() {
            drop(g);
            for (name, proto, log) in start {
                let n = name.clone();
                let l = log.clone();
                let spawned = std::thread::Builder::new()
                    .name("nettool-lookup".into())
                    .spawn(move || n.ask_again(proto, &l));
                if spawned.is_err() {
                    name.ask_again(proto, &log);
                }
            }
            g = SCHEDULE.lock().unwrap_or_else(|p| p.into_inner());
            continue;
        }
        g = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                WAKE.wait_timeout(g, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
            None => WAKE.wait(g).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// How long an answer stands: its TTL within [1 s, 1 h]; a hosts-file one [`HOSTS_RECHECK`].
fn valid_for(ttl: Option<Duration>) -> Duration {
    match ttl {
        Some(t) => t.clamp(MIN_RECHECK, MAX_RECHECK),
        None => HOSTS_RECHECK,
    }
}

fn list_text(ips: &[IpAddr]) -> String {
    let all: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
    all.join(", ")
}

impl TargetName {
    /// `name`, whose usable addresses are `ips` (never empty), for `ttl` (None: the hosts file).
    pub(crate) fn new(
        name: &str,
        v6: Option<bool>,
        ips: Vec<IpAddr>,
        ttl: Option<Duration>,
    ) -> Self {
        TargetName {
            name: name.to_string(),
            v6,
            list: RwLock::new(ips.into()),
            first_valid: valid_for(ttl),
            stale: AtomicBool::new(false),
            wanted: AtomicBool::new(false),
            force_after: AtomicU64::new(0),
            epoch: Instant::now(),
            failing: AtomicBool::new(false),
            own: Default::default(),
            said_own: Default::default(),
        }
    }

    /// Refuse the addresses of later answers that `f` says are one of this proxy's own
    /// listeners: a dial there would open a connection to itself, and that one another, until
    /// descriptors run out (the command refuses them at start the same way).
    pub(crate) fn refuse_with(
        &self,
        f: impl Fn(IpAddr) -> Option<SocketAddr> + Send + Sync + 'static,
    ) {
        let _ = self.own.set(Box::new(f));
    }

    /// `ips` without this proxy's own listeners, each dropped one said once at warn.
    fn not_ours(&self, mut ips: Vec<IpAddr>, log: &Log) -> Vec<IpAddr> {
        let Some(own) = self.own.get() else {
            return ips;
        };
        ips.retain(|ip| match own(*ip) {
            None => true,
            Some(l) => {
                let mut said = self.said_own.lock().unwrap_or_else(|p| p.into_inner());
                if !said.contains(ip) {
                    said.push(*ip);
                    log.log(
                        Level::Warn,
                        &format!("{} resolves to {ip}, which is this proxy's own listener {l}: not dialled (each connection would open another one to itself)", self.name),
                    );
                }
                false
            }
        });
        ips
    }

    /// The addresses as they are now. A list past its time asks for a lookup (one atomic load
    /// when it is not; the dial never waits for the lookup).
    pub(crate) fn current(&self) -> Arc<[IpAddr]> {
        if self.stale.load(Ordering::Relaxed) && self.stale.swap(false, Ordering::AcqRel) {
            self.want();
        }
        self.list()
    }

    fn list(&self) -> Arc<[IpAddr]> {
        match self.list.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Every address failed a connection's dial: a lookup now, at most once a second.
    pub(crate) fn all_failed(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let after = self.force_after.load(Ordering::Relaxed);
        let next = now + MIN_RECHECK.as_millis() as u64;
        if now >= after
            && self
                .force_after
                .compare_exchange(after, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.want();
        }
    }

    fn want(&self) {
        self.wanted.store(true, Ordering::Release);
        // Under the schedule's lock: the thread either sees the flag or is waiting already.
        let _g = SCHEDULE.lock().unwrap_or_else(|p| p.into_inner());
        WAKE.notify_one();
    }

    /// Have the names' thread ask again for this name (`proto`: the mapping's, for messages).
    /// A thread that cannot be had leaves the list as it is, and says so.
    pub(crate) fn start(self: &Arc<Self>, proto: super::Proto, log: Log) {
        let mut g = SCHEDULE.lock().unwrap_or_else(|p| p.into_inner());
        if !g.running {
            let spawned = std::thread::Builder::new()
                .name("nettool-names".into())
                .spawn(keep_time);
            if let Err(e) = spawned {
                drop(g);
                log.log(
                    Level::Warn,
                    &format!(
                        "{}: no thread to resolve it again ({e}): its addresses stay {}",
                        self.name,
                        list_text(&self.list())
                    ),
                );
                return;
            }
            g.running = true;
        }
        g.names.push(Due {
            name: self.clone(),
            proto,
            log,
            at: Instant::now() + self.first_valid,
            stale: false,
            busy: false,
        });
        WAKE.notify_one();
    }

    /// One lookup, where nettool runs, from the resolver files as they are now; the name's
    /// next time back in the schedule.
    fn ask_again(&self, proto: super::Proto, log: &Log) {
        let answer = lookup_answer(&ResolverConfig::system(), &self.name);
        let valid = self.take(answer, proto, log);
        // Cleared after the lookup: a want raised while it ran is for this answer.
        self.wanted.store(false, Ordering::Release);
        self.stale.store(false, Ordering::Release);
        let mut g = SCHEDULE.lock().unwrap_or_else(|p| p.into_inner());
        g.lookups -= 1;
        if let Some(d) = g.names.iter_mut().find(|d| std::ptr::eq(&*d.name, self)) {
            d.at = Instant::now() + valid;
            d.stale = false;
            d.busy = false;
        }
        WAKE.notify_one();
    }

    /// Take a lookup's answer: a changed list is used from the next dial on and logged once;
    /// a failure keeps the last list and is said once. How long until the next lookup.
    pub(crate) fn take(
        &self,
        answer: Result<Answer, String>,
        proto: super::Proto,
        log: &Log,
    ) -> Duration {
        let got = answer
            .and_then(|a| usable(&self.name, a.ips, self.v6, proto).map(|ips| (ips, a.ttl)))
            .and_then(|(ips, ttl)| match self.not_ours(ips, log) {
                ips if ips.is_empty() => {
                    Err("its every address is this proxy's own listener".to_string())
                }
                ips => Ok((ips, ttl)),
            });
        let old = self.list();
        match got {
            Ok((ips, ttl)) => {
                let was_failing = self.failing.swap(false, Ordering::AcqRel);
                if *old != *ips {
                    log.log(
                        Level::Info,
                        &format!(
                            "{} now resolves to {} (was {})",
                            self.name,
                            list_text(&ips),
                            list_text(&old)
                        ),
                    );
                    if let Ok(mut l) = self.list.write() {
                        *l = ips.into();
                    }
                } else if was_failing {
                    log.log(
                        Level::Info,
                        &format!("{} resolves again, to {}", self.name, list_text(&ips)),
                    );
                }
                valid_for(ttl)
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::AcqRel) {
                    log.log(
                        Level::Warn,
                        &format!(
                            "{} does not resolve now ({e}); dials go on to its last addresses, {}",
                            self.name,
                            list_text(&old)
                        ),
                    );
                }
                RETRY
            }
        }
    }

    /// `n`th address of the list now with `port`.
    pub(crate) fn nth(&self, n: usize, port: u16) -> Option<SocketAddr> {
        self.current().get(n).map(|ip| SocketAddr::new(*ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Proto;

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// A log that keeps its lines.
    fn kept() -> (Log, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let log = Log::new(Level::Debug, move |lv, m| {
            l.lock().unwrap().push(format!("{lv:?}: {m}"))
        });
        (log, lines)
    }

    #[test]
    fn a_changed_answer_is_used_and_said_once_and_a_failure_keeps_the_last_list() {
        let n = TargetName::new(
            "db.internal",
            None,
            ips(&["10.0.0.2"]),
            Some(Duration::from_secs(30)),
        );
        let (log, lines) = kept();
        let ans = |a: &[&str], ttl: u64| {
            Ok(Answer {
                ips: ips(a),
                ttl: Some(Duration::from_secs(ttl)),
            })
        };
        assert_eq!(
            n.take(ans(&["10.0.0.2"], 30), Proto::Tcp, &log),
            Duration::from_secs(30)
        );
        assert!(
            lines.lock().unwrap().is_empty(),
            "an unchanged answer is not said"
        );
        assert_eq!(
            n.take(ans(&["10.0.0.3", "10.0.0.4"], 0), Proto::Tcp, &log),
            MIN_RECHECK
        );
        assert_eq!(n.nth(1, 5432), Some("10.0.0.4:5432".parse().unwrap()));
        assert_eq!(n.take(Err("timed out".into()), Proto::Tcp, &log), RETRY);
        assert_eq!(n.take(Err("timed out".into()), Proto::Tcp, &log), RETRY);
        assert_eq!(&*n.current(), &ips(&["10.0.0.3", "10.0.0.4"])[..]);
        // A link-local answer is no usable one: the last list stays.
        let _ = n.take(ans(&["fe80::1"], 30), Proto::Tcp, &log);
        let _ = n.take(ans(&["10.0.0.3", "10.0.0.4"], 30), Proto::Tcp, &log);
        let hosts = n.take(
            Ok(Answer {
                ips: ips(&["10.0.0.3", "10.0.0.4"]),
                ttl: None,
            }),
            Proto::Tcp,
            &log,
        );
        assert_eq!(hosts, HOSTS_RECHECK);
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "Info: db.internal now resolves to 10.0.0.3, 10.0.0.4 (was 10.0.0.2)",
                "Warn: db.internal does not resolve now (timed out); dials go on to its last addresses, 10.0.0.3, 10.0.0.4",
                "Info: db.internal resolves again, to 10.0.0.3, 10.0.0.4",
            ]
        );
    }

    #[test]
    fn an_address_that_is_our_own_listener_is_dropped_and_said_once() {
        let n = TargetName::new("db", None, ips(&["10.0.0.2"]), None);
        n.refuse_with(|ip| {
            (ip == "127.0.0.1".parse::<IpAddr>().unwrap())
                .then(|| "127.0.0.1:8080".parse().unwrap())
        });
        let (log, lines) = kept();
        let both = || {
            Ok(Answer {
                ips: ips(&["127.0.0.1", "10.0.0.3"]),
                ttl: None,
            })
        };
        let _ = n.take(both(), Proto::Tcp, &log);
        let _ = n.take(both(), Proto::Tcp, &log);
        assert_eq!(&*n.current(), &ips(&["10.0.0.3"])[..]);
        let _ = n.take(
            Ok(Answer {
                ips: ips(&["127.0.0.1"]),
                ttl: None,
            }),
            Proto::Tcp,
            &log,
        );
        assert_eq!(&*n.current(), &ips(&["10.0.0.3"])[..]);
        let l = lines.lock().unwrap();
        assert_eq!(
            l.iter()
                .filter(|l| l.contains("own listener 127.0.0.1:8080: not dialled"))
                .count(),
            1,
            "{l:?}"
        );
        assert!(
            l.last()
                .unwrap()
                .contains("does not resolve now (its every address is this proxy's own listener)"),
            "{l:?}"
        );
    }

    #[test]
    fn a_family_kept_applies_to_every_answer() {
        let n = TargetName::new("db", Some(false), ips(&["10.0.0.2"]), None);
        let (log, lines) = kept();
        let _ = n.take(
            Ok(Answer {
                ips: ips(&["fd00::2"]),
                ttl: None,
            }),
            Proto::Udp,
            &log,
        );
        assert_eq!(&*n.current(), &ips(&["10.0.0.2"])[..]);
        assert!(
            lines.lock().unwrap()[0]
                .contains("'db' has no IPv4 address (the target asks for one: UDP4:)"),
            "{:?}",
            lines.lock().unwrap()
        );
    }

    /// Hundreds of names were hundreds of threads: one thread keeps every name's time, and a
    /// wanted lookup still runs (`localhost` is answered by /etc/hosts: no query leaves).
    #[test]
    fn every_name_is_kept_by_one_thread() {
        let names: Vec<Arc<TargetName>> = (1..=200)
            .map(|i| {
                let ip = format!("10.0.{}.{}", i / 250, i % 250 + 1);
                Arc::new(TargetName::new("localhost", None, ips(&[&ip]), None))
            })
            .collect();
        let (log, _lines) = kept();
        for n in &names {
            n.start(Proto::Tcp, log.clone());
        }
        let threads = |comm: &str| {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == comm)
                })
                .count()
        };
        // (a thread names itself once it runs)
        let until = Instant::now() + Duration::from_secs(10);
        while threads("nettool-names") == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(threads("nettool-names"), 1);
        names[7].all_failed();
        let until = Instant::now() + Duration::from_secs(10);
        while !names[7].current().iter().any(|ip| ip.is_loopback()) {
            assert!(Instant::now() < until, "no lookup: {:?}", names[7]);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!names[8].current().iter().any(|ip| ip.is_loopback()));
        assert_eq!(threads("nettool-names"), 1);
    }

    #[test]
    fn failing_dials_force_a_lookup_at_most_once_a_second() {
        let n = TargetName::new("db", None, ips(&["10.0.0.2"]), None);
        n.all_failed();
        assert!(n.wanted.load(Ordering::Acquire));
        n.wanted.store(false, Ordering::Release);
        n.all_failed();
        assert!(
            !n.wanted.load(Ordering::Acquire),
            "a second force within the second"
        );
        // A stale list asks once, at the first dial.
        n.stale.store(true, Ordering::Release);
        let _ = n.current();
        assert!(n.wanted.load(Ordering::Acquire) && !n.stale.load(Ordering::Acquire));
    }
}
