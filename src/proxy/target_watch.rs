//! [`TargetWatch`]: the --target-netns text resolved again when the namespace it named is gone
//! or replaced (seen by [`super::listen_watch`]'s thread) or a dial fails (a restarted
//! container), told in the log and followed by the threads that dial.

use std::io;
use std::net::SocketAddr;

use crate::netns::NetNs;
use verdicts::Verdicts;
pub(crate) use verdicts::{Hint, Wake};

mod verdicts;

/// How long a verdict on --target-netns stands: a storm of refused dials resolves the text at
/// most this often (a container's lookup asks the engine's API).
pub(super) const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the interface of a link-local target is looked for in a followed namespace.
const SCOPE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The --target-netns text the user gave and the namespace the proxy dials in. A restarted
/// container, or a named namespace deleted and made again, is a new namespace while the proxy
/// still holds the old one, where every dial is refused: a failed dial resolves the text again
/// and says so, and (unless transparent mode's rules live in the old one) the dialing threads
/// follow the new namespace.
pub(crate) struct TargetWatch {
    /// What the user typed (`container:web`, `web`, `/run/netns/x`, `pid:N`).
    text: String,
    /// What is resolved again: the text, or `container:TEXT` for a bare word that named a
    /// container at start (so a stopped one is told as such, not as every kind of lookup that
    /// failed, and a namespace name made later does not take its place).
    lookup: String,
    /// Whether the dialing threads move to a new namespace the text names.
    follow: bool,
    /// The mappings' target addresses that were the first namespace's own (read at start:
    /// a stopped container's namespace has lost its eth0 by the time a dial fails). One that
    /// the namespace followed lacks is told: a restarted Podman container gets a new address.
    own_targets: Vec<std::net::IpAddr>,
    /// The namespace dials go to now.
    held: std::sync::Mutex<NetNs>,
    /// Bumped each time `held` changes; a dialing thread compares it with its own.
    gen: std::sync::atomic::AtomicU64,
    /// The verdicts, and the lookup under way.
    verdicts: std::sync::Mutex<Verdicts>,
    /// The namespace the proxy started in, where lookups run: a dialing thread sits in the
    /// target one, where a DOCKER_HOST over TCP or an engine's child process would be wrong.
    home: Option<NetNs>,
    /// When the text is worth resolving again without a failed dial (polled each second by
    /// [`super::listen_watch::Watcher`]), and the namespace the text named at the last lookup.
    wire: std::sync::Mutex<super::listen_watch::Tripwire>,
    /// The id of the container `held` belongs to (learned at the first look that an engine
    /// answered), to tell a restart from a container removed and made again.
    container: std::sync::Mutex<Option<String>>,
    /// What resolves the text ([`super::listen_watch::resolve`]; a stand-in in unit tests).
    resolve: super::listen_watch::Resolver,
    /// What was said about the text naming no namespace (a stopped container): said once
    /// until it names one again, by its key ([`super::listen_watch::gone_key`]).
    said: std::sync::Mutex<Option<String>>,
    /// The inode of the last namespace told but not followed (transparent mode): told once.
    told: std::sync::atomic::AtomicU64,
    /// The interfaces link-local targets were scoped to at start (index there, name).
    scopes: Vec<super::listen_watch::Scope>,
    /// Their indexes in the namespace followed now: (index at start, index now).
    rescope: std::sync::Mutex<Vec<(u32, u32)>>,
    /// Since when some of them are missing in the namespace followed (a container's eth0
    /// comes a moment after its namespace): looked up again at each poll, told after
    /// [`SCOPE_WAIT`].
    scopes_missing: std::sync::Mutex<Option<std::time::Instant>>,
    log: super::Log,
}

impl std::fmt::Debug for TargetWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TargetWatch({})", self.text)
    }
}

impl TargetWatch {
    /// Watch `text`, which named `ns` at start; `addrs`: the mappings' target addresses.
    pub(crate) fn new(
        text: &str,
        ns: NetNs,
        follow: bool,
        log: super::Log,
        addrs: Vec<SocketAddr>,
    ) -> Self {
        let scopes = match follow {
            true => super::listen_watch::scopes_of(&ns, addrs.iter().copied()),
            false => Vec::new(),
        };
        let mut targets: Vec<std::net::IpAddr> = addrs.iter().map(|a| a.ip()).collect();
        targets.retain(|ip| !ip.is_loopback() && !ip.is_unspecified());
        targets.sort();
        targets.dedup();
        // Read only for a namespace that may be followed (not in transparent mode).
        if !follow {
            targets.clear();
        }
        if !targets.is_empty() {
            let here = addresses_of(&ns).unwrap_or_default();
            targets.retain(|ip| here.contains(ip));
        }
        let lookup = lookup_text(text, ns.label());
        let learn = lookup.starts_with("container:");
        TargetWatch {
            text: text.to_string(),
            wire: std::sync::Mutex::new(super::listen_watch::Tripwire::new(&ns, learn)),
            container: Default::default(),
            resolve: super::listen_watch::resolve,
            said: Default::default(),
            told: Default::default(),
            scopes,
            rescope: Default::default(),
            scopes_missing: Default::default(),
            lookup,
            follow,
            own_targets: targets,
            held: std::sync::Mutex::new(ns),
            gen: Default::default(),
            verdicts: Default::default(),
            home: NetNs::current().ok(),
            log,
        }
    }

    /// Which namespace dials go to: its generation, for [`TargetWatch::enter_if_moved`].
    pub(crate) fn gen(&self) -> u64 {
        self.gen.load(std::sync::atomic::Ordering::Acquire)
    }

    /// On a dialing thread (one made by NetNs::run, never a tokio worker): enter the namespace
    /// dials go to now if it is not generation `*seen`. True when the thread moved.
    pub(crate) fn enter_if_moved(&self, seen: &mut u64) -> bool {
        let gen = self.gen();
        if gen == *seen {
            return false;
        }
        let ns = match self.held.lock() {
            Ok(h) => h.clone(),
            Err(_) => return false,
        };
        match ns.enter_this_thread() {
            Ok(()) => {
                *seen = gen;
                true
            }
            Err(e) => {
                // Stays in the old one; said once per thread and generation.
                *seen = gen;
                self.log.log(
                    super::Level::Error,
                    &format!("--target-netns {}: {e}", self.text),
                );
                false
            }
        }
    }

    /// One look from the watch thread (which is in the proxy's first namespace): resolve the
    /// text again when the namespace it named is gone or replaced, so a restart is followed
    /// before a client is refused. The one-verdict-a-second rule holds: a verdict under a
    /// second old, or a lookup under way for a failed dial, stands.
    pub(crate) fn poll(&self, now: std::time::Instant) {
        let missing = self.scopes_missing.lock().ok().and_then(|m| *m);
        if let Some(since) = missing {
            self.rescope_now(&since);
        }
        // A verdict that stands first: a look the wire asks for is not spent on nothing.
        if self.fresh_hint().is_some() {
            return;
        }
        let due = self.wire.lock().is_ok_and(|mut w| w.due(now));
        if !due {
            return;
        }
        if !self.begin() {
            return;
        }
        let said = self.check(now);
        // Kept for failed dials only when it says something: a look that found nothing new
        // (the one that learns a container's id at start) does not stand in for the lookup
        // of a dial refused just after it (one refused while it ran takes it all the same).
        self.ended(Some(said), false);
    }

    /// Look the interfaces of link-local targets up in the namespace followed (`since`: when
    /// it was followed); one still missing after [`SCOPE_WAIT`] is told, and no longer looked for.
    fn rescope_now(&self, since: &std::time::Instant) {
        let Ok(ns) = self.held.lock().map(|h| h.clone()) else {
            return;
        };
        let (table, missing) = super::listen_watch::rescope_in(&ns, &self.scopes);
        if let Ok(mut r) = self.rescope.lock() {
            *r = table;
        }
        let Ok(mut m) = self.scopes_missing.lock() else {
            return;
        };
        if missing.is_empty() {
            *m = None;
            return;
        }
        let first = *m.get_or_insert(*since);
        if first.elapsed() >= SCOPE_WAIT {
            *m = None;
            self.log.log(
                super::Level::Warn,
                &format!("--target-netns {}: interface {} of a link-local target is not in the new network namespace (inode {}) after {} s: dials to it fail there", self.text, missing.join(", "), ns.id().inode, SCOPE_WAIT.as_secs()),
            );
        }
    }

    /// `to` as dialed in the namespace followed now: a link-local address's interface index
    /// is that namespace's index of the interface it named at start.
    pub(crate) fn rescoped(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V6(a) if a.scope_id() != 0 && !self.scopes.is_empty() => self
                .rescope
                .lock()
                .map_or(to, |t| super::listen_watch::rescoped(to, &t)),
            _ => to,
        }
    }

    fn check(&self, now: std::time::Instant) -> String {
        use super::listen_watch::why_moved;
        let Ok(held) = self.held.lock().map(|h| h.clone()) else {
            return String::new();
        };
        let text = &self.text;
        let r = (self.resolve)(&self.lookup);
        let held_inode = held.id().inode;
        let ns = match r.ns {
            Ok(ns) => {
                let back = self.said.lock().ok().and_then(|mut s| s.take()).is_some();
                let (Ok(mut w), Ok(mut c)) = (self.wire.lock(), self.container.lock()) else {
                    return String::new();
                };
                w.found(&ns);
                if ns.id() == held.id() {
                    w.learn(&mut c, r.container, now);
                    if back {
                        self.log.log(
                            super::Level::Info,
                            &format!("--target-netns {text} names the network namespace the proxy dials in again (inode {})", ns.id().inode),
                        );
                    }
                    return String::new();
                }
                // A moved one is told below, with the line that follows it.
                ns
            }
            Err(e) => {
                let gone = match (self.wire.lock(), self.container.lock()) {
                    (Ok(mut w), Ok(mut c)) if w.still_there() => {
                        // The lookup failed (an engine's API that did not answer), not
                        // the namespace, whose file is still the one dials go to.
                        w.learn(&mut c, r.container, now);
                        false
                    }
                    (Ok(mut w), Ok(mut c)) => {
                        w.lost(now);
                        // A stopped container's id is the one it had while it ran.
                        if c.is_none() {
                            *c = r.container;
                        }
                        true
                    }
                    _ => false,
                };
                if !gone {
                    return format!(
                        "; --target-netns {text}{} ({e}); dials go on in network namespace inode {held_inode}, which is still there",
                        self.not_asked()
                    );
                }
                self.say_gone(&held, &e);
                return format!(
                    "; --target-netns {text} names no namespace now: {}",
                    gone_why(held.label(), &e)
                );
            }
        };
        let was_id = self.container.lock().ok().and_then(|c| c.clone());
        let why = why_moved(ns.label(), was_id.as_deref(), r.container.as_deref());
        let (was, new) = (held.id().inode, ns.id().inode);
        let said = format!(
            "; --target-netns {text} now names another network namespace (inode {new}; the proxy dialed in {was}: {why})"
        );
        if !self.follow {
            let told = self.told.swap(new, std::sync::atomic::Ordering::Relaxed);
            if told != new {
                self.log.log(
                    super::Level::Warn,
                    &format!("--target-netns {text} now names another network namespace (inode {new}; the proxy dials in {was}: {why}); restart the proxy to dial there (transparent mode's rules are in the old one)"),
                );
            }
            return format!("{said}; restart the proxy to dial there (transparent mode's rules are in the old one)");
        }
        let stale = self.stale_targets(&ns);
        if let Ok(mut h) = self.held.lock() {
            *h = ns;
        }
        if let Ok(mut c) = self.container.lock() {
            *c = r.container;
        }
        if !self.scopes.is_empty() {
            if let Ok(mut m) = self.scopes_missing.lock() {
                *m = None;
            }
            self.rescope_now(&now);
        }
        self.gen.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.log.log(
            super::Level::Info,
            &format!("--target-netns {text}: following the new network namespace (inode {new}; was {was}: {why}); connections open in the old one stay as they are"),
        );
        for ip in stale {
            let lo = if ip.is_ipv6() { "[::1]" } else { "127.0.0.1" };
            self.log.log(
                super::Level::Warn,
                &format!("--target-netns {text}: target {ip} was an address of the namespace at start and is none of the new one's (a restarted container may get another address): dials to it fail there; target {lo}, the container's own loopback, to follow it"),
            );
        }
        format!("{said}; the proxy dials there from now on")
    }

    /// What a lookup that failed while the namespace's file is still there means: a
    /// container's engine that did not answer (its API wedged or gone), not a namespace gone.
    fn not_asked(&self) -> &'static str {
        match self.lookup.starts_with("container:") || self.lookup.starts_with("pod:") {
            true => ": the engine could not be asked",
            false => " could not be looked up again",
        }
    }

    /// Say (once until the text names a namespace again) that it names none now: a stopped
    /// container in its engine's words, as the listen side and a refused dial say it.
    fn say_gone(&self, held: &NetNs, e: &crate::netns::NetnsError) {
        let key = super::listen_watch::gone_key(e);
        let Ok(mut said) = self.said.lock() else {
            return;
        };
        if said.as_deref() == Some(key.as_str()) {
            return;
        }
        *said = Some(key);
        let (text, old) = (&self.text, held.id().inode);
        let down = matches!(e, crate::netns::NetnsError::ContainerDown { .. });
        let then = match (self.follow, down) {
            (true, true) => format!("the proxy dials in its new network namespace when it starts (until then dials go to the old one, inode {old}, and are refused)"),
            (true, false) => format!("the proxy dials there again when it names one (until then dials go to the old one, inode {old}, and are refused)"),
            (false, _) => format!("dials go to the old one, inode {old}, and are refused; restart the proxy once it is back (transparent mode's rules are in the old one)"),
        };
        let line = match down {
            true => format!("--target-netns {text}: {e}; {then}"),
            false => format!(
                "--target-netns {text} names no namespace now: {}; {then}",
                gone_why(held.label(), e)
            ),
        };
        self.log.log(super::Level::Warn, &line);
    }

    /// The targets that were the first namespace's own addresses and are none of `new`'s (a
    /// namespace that cannot be read tells nothing).
    fn stale_targets(&self, new: &NetNs) -> Vec<std::net::IpAddr> {
        if self.own_targets.is_empty() {
            return Vec::new();
        }
        let Some(now) = addresses_of(new) else {
            return Vec::new();
        };
        self.own_targets
            .iter()
            .copied()
            .filter(|ip| !now.contains(ip))
            .collect()
    }
}

/// Every address of `ns`'s interfaces, read from a thread of its own (NetNs::run).
fn addresses_of(ns: &NetNs) -> Option<Vec<std::net::IpAddr>> {
    let listed = ns.run(|| {
        crate::netns::links::Rtnl::open()
            .and_then(|mut r| r.addresses())
            .map(|a| a.into_iter().map(|a| a.address).collect::<Vec<_>>())
    });
    listed.ok()?.ok()
}

/// What [`TargetWatch`] (and [`super::listen_watch::ListenWatch`]) resolve again for `text`,
/// which named a namespace labelled `label` at start: a bare word (no `name:`/`pid:`/
/// `container:`/`pod:` prefix, no path) that was a container is looked up as that container
/// only, and one that was a namespace name as that name only (so a gone one is told as a
/// missing file, not as every kind of lookup that failed).
pub(super) fn lookup_text(text: &str, label: &str) -> String {
    let prefixed = ["name:", "pid:", "container:", "pod:"]
        .iter()
        .any(|p| text.starts_with(p));
    if prefixed || text.contains('/') {
        text.to_string()
    } else if label.starts_with("container:") {
        format!("container:{text}")
    } else if label == text {
        format!("name:{text}")
    } else {
        text.to_string()
    }
}

/// Why a --target-netns text that named the namespace labelled `label` names none now. A
/// process id and an engine's namespace file are one start's: a restarted container has new
/// ones, which only a lookup by the container finds.
pub(super) fn gone_why(label: &str, e: &crate::netns::NetnsError) -> String {
    use crate::netns::NetnsError;
    let follow = "a container's process and namespace file are new at each start: --target-netns container:NAME follows the container";
    match e {
        NetnsError::Open { error, .. } if error.kind() == io::ErrorKind::NotFound => {
            match label.strip_prefix("pid:") {
                Some(pid) => format!("process {pid} has exited ({follow})"),
                None if engine_made(label) => format!("{e} ({follow})"),
                None => e.to_string(),
            }
        }
        _ => e.to_string(),
    }
}

/// Whether a namespace path or name looks like one an engine made for a container start:
/// Podman's /run/netns/netns-UUID, Docker's /run/docker/netns/ID, containerd's cni-UUID, a
/// /proc/PID/ns/net path (not a name someone gave with `ip netns add`).
fn engine_made(label: &str) -> bool {
    let file = label.rsplit('/').next().unwrap_or(label);
    label.contains("/docker/netns/")
        || label.starts_with("/proc/")
        || file.starts_with("netns-")
        || file.starts_with("cni-")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log whose lines are kept.
    fn kept_log() -> (
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        super::super::Log,
    ) {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let kept = lines.clone();
        let log = super::super::Log::new(super::super::Level::Debug, move |_, l| {
            kept.lock().unwrap().push(l.into())
        });
        (lines, log)
    }

    #[test]
    fn a_bare_word_that_was_a_container_is_looked_up_as_one() {
        assert_eq!(lookup_text("web", "container:web"), "container:web");
        // An id prefix stays an id prefix (the label has the container's name).
        assert_eq!(
            lookup_text("4b33264a75b9", "container:web"),
            "container:4b33264a75b9"
        );
        for (text, label) in [
            ("container:web", "container:web"),
            ("pod:shop", "pod:shop"),
            ("pid:42", "pid:42"),
            ("42", "pid:42"),
            ("/run/netns/netns-1", "container:web"),
        ] {
            assert_eq!(lookup_text(text, label), text);
        }
        assert_eq!(lookup_text("blue", "blue"), "name:blue");
    }

    #[test]
    fn only_a_watch_that_may_follow_reads_the_namespace() {
        let log = super::super::Log::new(super::super::Level::Debug, |_, _| {});
        // A link-local target on lo (index 1): its interface's name is read to be looked up
        // again in a followed namespace; in transparent mode nothing is followed, and nothing
        // of the namespace is read.
        let addrs = vec!["[fe80::1%1]:80".parse().unwrap()];
        let ns = NetNs::current().unwrap();
        let w = TargetWatch::new("x", ns.clone(), true, log.clone(), addrs.clone());
        assert_eq!(w.scopes, vec![(1, "lo".to_string())]);
        let w = TargetWatch::new("x", ns, false, log, addrs);
        assert!(w.scopes.is_empty() && w.own_targets.is_empty());
    }

    /// The same on the target side: an engine API that errs at the first look, the id
    /// learned at the next poll.
    #[test]
    fn a_container_id_the_first_look_missed_is_learned_at_the_next_poll() {
        use super::super::listen_watch::tests::{api_errs_then_answers, looks};
        let log = super::super::Log::new(super::super::Level::Debug, |_, _| {});
        let ns = NetNs::current().unwrap();
        let mut w = TargetWatch::new("container:nt-test-web", ns, true, log, Vec::new());
        w.resolve = api_errs_then_answers;
        let t = std::time::Instant::now();
        w.poll(t);
        assert_eq!(looks(), 1);
        assert!(w.container.lock().unwrap().is_none());
        // The first look's verdict stands for a second for failed dials; not here.
        w.verdicts.lock().unwrap().last = None;
        w.poll(t + std::time::Duration::from_secs(2));
        assert_eq!(looks(), 2);
        assert_eq!(w.container.lock().unwrap().as_deref(), Some("4b3"));
        for s in 3..60 {
            w.poll(t + std::time::Duration::from_secs(s));
        }
        assert_eq!(looks(), 2, "no more looks once learned");
    }

    /// A stopped container is said once however often it is looked up, in its engine's
    /// words; a look that finds the namespace again says it is back.
    #[test]
    fn a_stopped_target_is_said_once_and_its_return_told() {
        let (lines, log) = kept_log();
        let ns = NetNs::current().unwrap();
        let inode = ns.id().inode;
        let mut w = TargetWatch::new("container:nt-test-web", ns.clone(), true, log, Vec::new());
        let down = crate::netns::NetnsError::ContainerDown {
            name: "nt-test-web".into(),
            state: "exited (code 0)".into(),
            hint: Some("start it with `docker start nt-test-web`".into()),
        };
        for _ in 0..3 {
            w.say_gone(&ns, &down);
        }
        w.resolve = |_| super::super::listen_watch::Resolved {
            ns: NetNs::current(),
            container: Some("4b3".into()),
        };
        w.check(std::time::Instant::now());
        w.check(std::time::Instant::now());
        let lines = lines.lock().unwrap();
        assert_eq!(
            *lines,
            vec![
                format!("--target-netns container:nt-test-web: container nt-test-web is exited (code 0): start it with `docker start nt-test-web`; the proxy dials in its new network namespace when it starts (until then dials go to the old one, inode {inode}, and are refused)"),
                format!("--target-netns container:nt-test-web names the network namespace the proxy dials in again (inode {inode})"),
            ]
        );
    }

    /// An engine API that errs while the namespace's file is still there is told as that:
    /// the engine could not be asked, dials go on in the same namespace, and nothing is said
    /// as a stopped target. Before, a failed dial's line said "names no namespace now: ...".
    #[test]
    fn an_engine_that_cannot_be_asked_is_not_told_as_a_namespace_gone() {
        use super::super::listen_watch::tests::api_errs_then_answers;
        let (lines, log) = kept_log();
        let ns = NetNs::current().unwrap();
        let inode = ns.id().inode;
        let mut w = TargetWatch::new("container:nt-test-web", ns, true, log, Vec::new());
        // Its first look errs.
        w.resolve = api_errs_then_answers;
        assert_eq!(
            w.check(std::time::Instant::now()),
            format!("; --target-netns container:nt-test-web: the engine could not be asked (no container 'nt-test-web' (asked docker at /var/run/docker.sock failed: 500 Internal Server Error)); dials go on in network namespace inode {inode}, which is still there")
        );
        assert!(lines.lock().unwrap().is_empty(), "{lines:?}");
    }

    #[test]
    fn a_gone_pid_or_file_says_how_to_follow_a_container() {
        let gone = |path: &str| crate::netns::NetnsError::Open {
            path: path.into(),
            error: io::Error::from_raw_os_error(libc::ENOENT),
        };
        let said = gone_why("pid:3670", &gone("/proc/3670/ns/net"));
        assert!(
            said.starts_with("process 3670 has exited (")
                && said.contains("--target-netns container:NAME follows the container"),
            "{said}"
        );
        for label in [
            "/run/netns/netns-1",
            "netns-1",
            "/var/run/docker/netns/3c1f",
            "/proc/3670/ns/net",
        ] {
            let said = gone_why(label, &gone(label));
            assert!(
                said.starts_with(&format!("cannot open network namespace {label}: "))
                    && said.contains("container:NAME follows"),
                "{said}"
            );
        }
        // A name someone made with `ip netns add` is not a container's.
        let said = gone_why("blue", &gone("/run/netns/blue"));
        assert!(!said.contains("container:NAME"), "{said}");
        // A container's own lookup already says what happened to it.
        let e = crate::netns::NetnsError::ContainerDown {
            name: "web".into(),
            state: "exited (code 0)".into(),
            hint: Some("start it with `podman start web`".into()),
        };
        assert_eq!(
            gone_why("container:web", &e),
            "container web is exited (code 0): start it with `podman start web`"
        );
    }
}
