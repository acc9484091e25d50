//! Following a namespace text without waiting for a failed dial: a thread of its own looks,
//! once a second and cheaply (one stat of the namespace's file), whether the namespace the
//! --listen-netns and --target-netns texts named is still there, and only then resolves the
//! text again (which may ask a container engine's API). While the text names nothing (a
//! stopped container), it asks again when a namespace file appears beside the old one, or
//! after a wait that doubles up to half a minute.
//!
//! The listen side ([`ListenWatch`]): a restarted container (or a named namespace made again)
//! gets the same listen addresses bound in its new namespace, handed to the running loops by
//! [`super::Proxy::run`]; the target side is [`super::target_watch::TargetWatch`], polled from here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::spec::PortMap;
use super::target_watch::TargetWatch;
use super::{Bound, Level, Log};
use crate::netns::{NetNs, NetnsError, NsId};

/// How often the namespaces' files are looked at.
const TICK: Duration = Duration::from_secs(1);
/// The first wait before a text that names nothing is resolved again; it doubles each time.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two lookups while a text names nothing and nothing changes.
const LONGEST_WAIT: Duration = Duration::from_secs(30);
/// Waits between the tries to bind in a new namespace: a container's eth0 and its addresses
/// come up a moment after its process starts.
const BIND_RETRIES: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// When a namespace text is worth resolving again: the namespace it named is gone or
/// replaced (its file is another inode now, or none), or, while it names nothing, a new
/// namespace file appeared beside the old one or the doubling wait is over.
#[derive(Debug)]
pub(super) struct Tripwire {
    /// The file the namespace was opened from and the identity it had.
    path: PathBuf,
    id: NsId,
    /// Whether the text names a container, whose id is learned by a look while its first
    /// namespace is still there (to tell a restart from a container made again later).
    learn: bool,
    /// When to resolve whatever the file says, to learn that id: at the first look, then,
    /// while looks fail (an engine's API that errs), after `learn_wait`, which doubles.
    again: Option<Instant>,
    learn_wait: Duration,
    /// Set while the text names no namespace.
    down: Option<Down>,
}

#[derive(Debug)]
struct Down {
    /// When to resolve again, and the wait after that.
    next: Instant,
    wait: Duration,
    /// The directory the old namespace file was in and its last modification time: an engine
    /// makes a started container's namespace file there.
    dir: Option<(PathBuf, Option<SystemTime>)>,
}

fn mtime(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Tripwire {
    /// Watch the namespace `ns` (opened from a file: /run/netns/NAME, an engine's namespace
    /// file, /proc/PID/ns/net); `learn`: it names a container, whose id is to be learned.
    pub(super) fn new(ns: &NetNs, learn: bool) -> Self {
        Tripwire {
            path: ns.path().to_path_buf(),
            id: ns.id(),
            learn,
            again: learn.then(Instant::now),
            learn_wait: FIRST_WAIT,
            down: None,
        }
    }

    /// Whether to resolve the text now (at most once a [`TICK`] it is asked).
    pub(super) fn due(&mut self, now: Instant) -> bool {
        if self.again.is_some_and(|at| now >= at) {
            self.again = None;
            return true;
        }
        let Some(d) = &mut self.down else {
            return !self.still_there();
        };
        let appeared = d.dir.as_mut().is_some_and(|(dir, seen)| {
            let now = mtime(dir);
            let changed = now != *seen;
            *seen = now;
            changed
        });
        if appeared {
            d.wait = FIRST_WAIT;
        }
        if appeared || now >= d.next {
            d.next = now + d.wait;
            d.wait = (d.wait * 2).min(LONGEST_WAIT);
            return true;
        }
        false
    }

    /// Whether the namespace's file is still that namespace. stat follows /proc/PID/ns/net to
    /// the namespace itself: a process that exited has none, a namespace file made again is
    /// another inode.
    pub(super) fn still_there(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.id.dev && m.ino() == self.id.inode)
    }

    /// The text names `ns` now: watch its file.
    pub(super) fn found(&mut self, ns: &NetNs) {
        self.path = ns.path().to_path_buf();
        self.id = ns.id();
        self.down = None;
    }

    /// A look that found the namespace still there (or could not tell: the lookup failed
    /// while its file is the same): `found` is the container id it gave, kept in `known`.
    /// While no id is known, the text is resolved again later, whatever the file says.
    pub(super) fn learn(
        &mut self,
        known: &mut Option<String>,
        found: Option<String>,
        now: Instant,
    ) {
        if found.is_some() {
            *known = found;
        }
        if !self.learn || known.is_some() {
            self.again = None;
            return;
        }
        self.again = Some(now + self.learn_wait);
        self.learn_wait = (self.learn_wait * 2).min(LONGEST_WAIT);
    }

    /// The text names nothing now (or nothing that could be used): resolve again when a
    /// namespace file appears beside the old one, or after the doubling wait.
    pub(super) fn lost(&mut self, now: Instant) {
        if self.down.is_some() {
            return;
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.starts_with("/proc"))
            .map(|d| (d.to_path_buf(), mtime(d)));
        self.down = Some(Down {
            next: now + FIRST_WAIT,
            wait: FIRST_WAIT * 2,
            dir,
        });
    }
}

/// A namespace text resolved again: the namespace it names now, and the id of the container
/// behind it when it names a container (to tell a restart from a container made again).
pub(super) struct Resolved {
    pub(super) ns: Result<NetNs, NetnsError>,
    pub(super) container: Option<String>,
}

/// What resolves a namespace text: [`resolve`], or a stand-in in unit tests.
pub(super) type Resolver = fn(&str) -> Resolved;

/// Resolve `lookup` (a namespace text as [`NetNs::open`] takes it) in the calling thread's
/// namespace; a `container:NAME` asks the engines once for both the namespace and the id.
pub(super) fn resolve(lookup: &str) -> Resolved {
    let Some(name) = lookup.strip_prefix("container:") else {
        return Resolved {
            ns: NetNs::open(lookup),
            container: None,
        };
    };
    let intent = crate::engine::Intent::read();
    let container = match intent.lookup(name) {
        crate::engine::Lookup::Found(c) => Some(c.id.clone()),
        _ => None,
    };
    Resolved {
        ns: NetNs::open_with(lookup, Some(&intent)),
        container,
    }
}

/// Why a text labelled `label` names another namespace now, in words: `was`/`now` are the
/// container ids before and after, when known.
pub(super) fn why_moved(label: &str, was: Option<&str>, now: Option<&str>) -> &'static str {
    if label.starts_with("container:") || label.starts_with("pod:") {
        match (was, now) {
            (Some(a), Some(b)) if a == b => "the container was restarted",
            (Some(_), Some(_)) => "the container was removed and made again (a new container id)",
            _ => "the container was restarted?",
        }
    } else if label.starts_with("pid:") {
        "the process moved to another one?"
    } else {
        "it was deleted and made again?"
    }
}

/// What tells one "names nothing" line from another for [`ListenWatch::say_once`]: the
/// error's words, but not the list of engines asked that a missing container's error ends
/// with (which changes without the container changing: an engine's socket that stops
/// answering, /run/nettool made by a lab), so the watch does not say the same thing again.
pub(super) fn gone_key(e: &NetnsError) -> String {
    match e {
        NetnsError::NoContainer { name, .. } => format!("no container {name}"),
        NetnsError::NotFound { target, .. } => format!("nothing matches {target}"),
        e => e.to_string(),
    }
}

/// An interface a link-local address was scoped to at start: its index then and its name.
pub(super) type Scope = (u32, String);

/// The interfaces (index, name) that the scoped addresses among `addrs` name in `ns`: what a
/// followed namespace's interfaces are looked up by (an index is one namespace's own).
pub(super) fn scopes_of(ns: &NetNs, addrs: impl Iterator<Item = SocketAddr>) -> Vec<Scope> {
    let mut ids: Vec<u32> = addrs
        .filter_map(|a| match a {
            SocketAddr::V6(a) if a.scope_id() != 0 => Some(a.scope_id()),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Vec::new();
    }
    let links = ns
        .run(|| crate::netns::links::Rtnl::open().and_then(|mut r| r.links()))
        .ok()
        .and_then(|l| l.ok())
        .unwrap_or_default();
    links
        .into_iter()
        .filter(|l| ids.contains(&l.index))
        .map(|l| (l.index, l.name))
        .collect()
}

/// The indexes the interfaces of `scopes` have in `ns`: (index at start, index in `ns`) for
/// each found, and the names of those `ns` lacks.
pub(super) fn rescope_in(ns: &NetNs, scopes: &[Scope]) -> (Vec<(u32, u32)>, Vec<String>) {
    if scopes.is_empty() {
        return Default::default();
    }
    let links = ns
        .run(|| crate::netns::links::Rtnl::open().and_then(|mut r| r.links()))
        .ok()
        .and_then(|l| l.ok())
        .unwrap_or_default();
    let mut table = Vec::new();
    let mut missing = Vec::new();
    for (was, name) in scopes {
        match links.iter().find(|l| &l.name == name) {
            Some(l) => table.push((*was, l.index)),
            None => missing.push(name.clone()),
        }
    }
    (table, missing)
}

/// `addr` with its scope (an interface index at start) replaced by the index `table` gives.
pub(super) fn rescoped(addr: SocketAddr, table: &[(u32, u32)]) -> SocketAddr {
    match addr {
        SocketAddr::V6(mut a) if a.scope_id() != 0 => {
            if let Some((_, now)) = table.iter().find(|(was, _)| *was == a.scope_id()) {
                a.set_scope_id(*now);
            }
            SocketAddr::V6(a)
        }
        other => other,
    }
}

/// New listeners for every listen address, bound in the namespace --listen-netns names now,
/// and the line that tells it (logged once they serve).
pub(super) struct Relisten {
    pub(super) bound: Vec<Bound>,
    pub(super) line: String,
}

/// --listen-netns, followed: the text the user gave, the namespace the listeners are in, and
/// the listen addresses to bind again when the text names another one.
pub(crate) struct ListenWatch {
    text: String,
    lookup: String,
    held: NetNs,
    /// The id of the container `held` belongs to (learned at the first look that an engine
    /// answered).
    container: Option<String>,
    wire: Tripwire,
    resolve: Resolver,
    /// The mappings bound at start, bound again in a new namespace.
    maps: Vec<PortMap>,
    /// The interfaces the link-local listen addresses were scoped to at start.
    scopes: Vec<Scope>,
    /// What was said about the text naming nothing or a namespace that cannot be bound (each
    /// said once until the listeners move), by its key (see [`gone_key`]).
    said: Option<String>,
    log: Log,
}

impl ListenWatch {
    /// Watch `text`, which named `ns` at start, where `maps` are bound.
    pub(super) fn new(text: &str, ns: NetNs, maps: Vec<PortMap>, log: Log) -> Self {
        let lookup = super::target_watch::lookup_text(text, ns.label());
        let learn = lookup.starts_with("container:");
        let scopes = scopes_of(&ns, maps.iter().map(|m| m.listen));
        ListenWatch {
            scopes,
            text: text.to_string(),
            wire: Tripwire::new(&ns, learn),
            lookup,
            held: ns,
            container: None,
            resolve,
            maps,
            said: None,
            log,
        }
    }

    /// Say `line` at `level` unless what was said last had the same `key`.
    fn say_once(&mut self, level: Level, key: String, line: String) {
        if self.said.as_deref() != Some(&key) {
            self.log.log(level, &line);
            self.said = Some(key);
        }
    }

    /// Say (once) that the text names no namespace now, or a container that is down.
    fn say_gone(&mut self, e: &NetnsError) {
        let (text, old) = (&self.text, self.held.id().inode);
        let line = match e {
            NetnsError::ContainerDown { .. } => format!(
                "--listen-netns {text}: {e}; the proxy listens again in its new network namespace when it starts (its listeners stay in the old one, inode {old}, until then)"
            ),
            _ => format!(
                "--listen-netns {text} names no namespace now: {}; the proxy listens there again when it names one (its listeners stay in the old one, inode {old}, until then)",
                super::target_watch::gone_why(self.held.label(), e)
            ),
        };
        self.say_once(Level::Warn, gone_key(e), line);
    }

    /// One look: Some when the listeners are to move to a new namespace. Waits between bind
    /// tries on `stop` (an end of the proxy ends the wait).
    fn tick(&mut self, now: Instant, stop: &Receiver<()>) -> Option<Relisten> {
        if !self.wire.due(now) {
            return None;
        }
        let r = (self.resolve)(&self.lookup);
        let ns = match r.ns {
            Ok(ns) if ns.id() == self.held.id() => {
                self.wire.found(&ns);
                self.wire.learn(&mut self.container, r.container, now);
                return None;
            }
            Ok(ns) => ns,
            Err(e) => {
                if self.wire.still_there() {
                    // The lookup failed (an engine's API that did not answer), not the
                    // namespace, whose file is still the one the listeners are in.
                    self.wire.learn(&mut self.container, r.container, now);
                    return None;
                }
                // A stopped container's id is the one it had while it ran.
                if self.container.is_none() {
                    self.container = r.container;
                }
                self.wire.lost(now);
                self.say_gone(&e);
                return None;
            }
        };
        let label = ns.label().to_string();
        let mut tries = BIND_RETRIES.iter();
        let bound = loop {
            // A link-local address's interface is looked up by its name there (again at
            // each try: it may come up late).
            let (table, missing) = rescope_in(&ns, &self.scopes);
            let maps: Vec<PortMap> = self
                .maps
                .iter()
                .map(|m| PortMap {
                    listen: rescoped(m.listen, &table),
                    ..m.clone()
                })
                .collect();
            let scoped = self
                .maps
                .iter()
                .find(|m| matches!(m.listen, SocketAddr::V6(a) if a.scope_id() != 0));
            let bind = || {
                match (missing.first(), scoped) {
                (Some(name), Some(m)) => Err(super::ProxyError::Bind {
                    proto: m.proto,
                    addr: m.listen,
                    ns: label.clone(),
                    error: std::io::Error::from_raw_os_error(libc::ENODEV),
                    hint: format!(" (interface {name} of a link-local listen address is not in that namespace)"),
                }),
                _ => super::bind_all(&maps, &label),
            }
            };
            match ns.run(bind) {
                Ok(Ok(b)) => break b,
                Ok(Err(e)) => match tries.next() {
                    Some(wait) => match stop.recv_timeout(*wait) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        _ => return None,
                    },
                    None => {
                        self.wire.lost(now);
                        let line = format!(
                            "--listen-netns {}: cannot listen in its new network namespace (inode {}) after {} tries: {e}; trying again later (the listeners stay in the old one, inode {}, until then)",
                            self.text,
                            ns.id().inode,
                            BIND_RETRIES.len() + 1,
                            self.held.id().inode
                        );
                        self.say_once(Level::Warn, line.clone(), line);
                        return None;
                    }
                },
                Err(e) => {
                    self.wire.lost(now);
                    let line = format!("--listen-netns {}: {e}", self.text);
                    self.say_once(Level::Warn, line.clone(), line);
                    return None;
                }
            }
        };
        let why = why_moved(&label, self.container.as_deref(), r.container.as_deref());
        let what: Vec<String> = bound
            .iter()
            .map(|b| {
                let m = b.map();
                format!("{} {}", m.proto, m.listen)
            })
            .collect();
        let line = format!(
            "--listen-netns {}: listening in the new network namespace (inode {}; was {}: {why}): {}; the old listeners are closed, connections open through them stay as they are",
            self.text,
            ns.id().inode,
            self.held.id().inode,
            what.join(", ")
        );
        self.wire.found(&ns);
        self.held = ns;
        self.container = r.container;
        self.said = None;
        Some(Relisten { bound, line })
    }
}

/// The watch thread; it ends at its next look once [`Watcher`] is dropped.
pub(super) struct Watcher {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Watcher {
    /// Start looking once a second at what `listen` and `target` follow; new listeners go to
    /// `to`. None when there is nothing to watch. Call from a thread in the proxy's own
    /// namespace (a tokio worker is: nothing enters a namespace on one), which the watch
    /// thread inherits: the texts are resolved from there.
    pub(super) fn start(
        mut listen: Option<ListenWatch>,
        target: Option<Arc<TargetWatch>>,
        to: tokio::sync::mpsc::UnboundedSender<Relisten>,
    ) -> std::io::Result<Option<Watcher>> {
        // NETTOOL_PROXY_NSWATCH=0: a namespace made again is found only by a failed dial
        // (what the tests of that path need; not for users).
        let off = std::env::var_os("NETTOOL_PROXY_NSWATCH").is_some_and(|v| v == "0");
        if off || (listen.is_none() && target.is_none()) {
            return Ok(None);
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("nettool-nsfollow".into())
            .spawn(move || loop {
                if let Some(t) = &target {
                    t.poll(Instant::now());
                }
                if let Some(l) = &mut listen {
                    if let Some(r) = l.tick(Instant::now(), &stopped) {
                        if to.send(r).is_err() {
                            return;
                        }
                    }
                }
                match stopped.recv_timeout(TICK) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })?;
        Ok(Some(Watcher { _stop: stop }))
    }
}

impl Bound {
    /// The mapping a listener serves.
    pub(super) fn map(&self) -> &PortMap {
        match self {
            Bound::Tcp(_, m) | Bound::Udp(_, m) => m,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn a_restart_and_a_container_made_again_are_told_apart() {
        let l = "container:web";
        assert_eq!(
            why_moved(l, Some("4b3"), Some("4b3")),
            "the container was restarted"
        );
        assert!(why_moved(l, Some("4b3"), Some("9a1"))
            .starts_with("the container was removed and made again"));
        assert_eq!(
            why_moved(l, None, Some("9a1")),
            "the container was restarted?"
        );
        assert_eq!(
            why_moved("blue", None, None),
            "it was deleted and made again?"
        );
    }

    #[test]
    fn a_missing_container_is_said_once_whatever_engines_were_asked() {
        use std::sync::Mutex;
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let kept = lines.clone();
        let log = Log::new(Level::Debug, move |_, l| {
            kept.lock().unwrap().push(l.into())
        });
        let ns = NetNs::current().unwrap();
        let mut w = ListenWatch::new("container:nt-test-web", ns, Vec::new(), log);
        let none = |asked: &str| NetnsError::NoContainer {
            name: "nt-test-web".into(),
            asked: asked.into(),
        };
        let down = |state: &str| NetnsError::ContainerDown {
            name: "nt-test-web".into(),
            state: state.into(),
            hint: None,
        };
        // The engines asked change (a lab's /run/nettool appears, dockerd stops answering):
        // the same fact, said once.
        w.say_gone(&none("asked docker at /var/run/docker.sock"));
        w.say_gone(&none(
            "asked docker at /var/run/docker.sock; nettool lab at /run/nettool",
        ));
        w.say_gone(&none(
            "asked docker at /var/run/docker.sock failed: timed out",
        ));
        let said = lines.lock().unwrap().clone();
        assert_eq!(said.len(), 1, "{said:?}");
        // Another fact is said: the container is back but down, then removing.
        w.say_gone(&down("exited (code 0)"));
        w.say_gone(&down("exited (code 0)"));
        w.say_gone(&down("removing"));
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("--listen-netns container:nt-test-web names no namespace now: no container 'nt-test-web' (asked docker at /var/run/docker.sock)"), "{lines:?}");
        assert!(
            lines[2].contains("container nt-test-web is removing"),
            "{lines:?}"
        );
    }

    thread_local! {
        /// How many times [`api_errs_then_answers`] was asked, on this test's thread.
        static LOOKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// The engine lookup, stubbed: the engine's API errs at the first look, then answers
    /// with the namespace the test runs in and the container id 4b3.
    pub(in crate::proxy) fn api_errs_then_answers(_: &str) -> Resolved {
        let n = LOOKS.with(|l| l.replace(l.get() + 1));
        match n {
            0 => Resolved {
                ns: Err(NetnsError::NoContainer {
                    name: "nt-test-web".into(),
                    asked: "asked docker at /var/run/docker.sock failed: 500 Internal Server Error"
                        .into(),
                }),
                container: None,
            },
            _ => Resolved {
                ns: NetNs::current(),
                container: Some("4b3".into()),
            },
        }
    }

    /// The number of stubbed looks on this thread so far.
    pub(in crate::proxy) fn looks() -> usize {
        LOOKS.with(|l| l.get())
    }

    /// An engine API that errs at the first look: the container id is learned at the next
    /// look an engine answers (a second later, not only once the namespace is gone), so a
    /// later restart is told as one. Before, the id stayed unknown and a restart read
    /// "the container was restarted?".
    #[test]
    fn a_container_id_the_first_look_missed_is_learned_at_the_next() {
        let log = Log::new(Level::Debug, |_, _| {});
        let ns = NetNs::current().unwrap();
        let mut w = ListenWatch::new("container:nt-test-web", ns, Vec::new(), log);
        w.resolve = api_errs_then_answers;
        let (_stop, stopped) = std::sync::mpsc::channel();
        let t = Instant::now();
        assert!(w.tick(t, &stopped).is_none());
        assert_eq!((looks(), w.container.as_deref()), (1, None));
        assert!(w.tick(t + Duration::from_secs(2), &stopped).is_none());
        assert_eq!((looks(), w.container.as_deref()), (2, Some("4b3")));
        let why = why_moved("container:nt-test-web", w.container.as_deref(), Some("4b3"));
        assert_eq!(why, "the container was restarted");
        // Learned: no more looks while the namespace stays.
        for s in 3..60 {
            assert!(w.tick(t + Duration::from_secs(s), &stopped).is_none());
        }
        assert_eq!(looks(), 2);
    }

    #[test]
    fn a_scoped_address_takes_the_index_its_interface_has_now() {
        let table = [(2, 5)];
        let a: SocketAddr = "[fe80::1%2]:80".parse().unwrap();
        assert_eq!(rescoped(a, &table), "[fe80::1%5]:80".parse().unwrap());
        // Another interface, an unscoped address, IPv4: as they were.
        for a in ["[fe80::1%3]:80", "[::1]:80", "10.0.0.1:80"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(rescoped(a, &table), a);
        }
    }

    #[test]
    fn a_text_that_names_nothing_is_resolved_again_less_and_less_often() {
        let ns = NetNs::current().unwrap();
        let mut w = Tripwire::new(&ns, false);
        let t = Instant::now();
        assert!(!w.due(t), "the namespace is still there");
        w.path = "/nonexistent/nt-test-gone".into();
        assert!(w.due(t), "its file is gone");
        w.lost(t);
        // Due at 1 s, then 2 s later, then 4 s later...: never once a second while nothing
        // changes.
        let due_at: Vec<u64> = (0..40)
            .filter(|s| w.due(t + Duration::from_secs(*s)))
            .collect();
        assert_eq!(due_at, vec![1, 3, 7, 15, 31], "{due_at:?}");
        w.found(&ns);
        assert!(!w.due(t), "found again");
    }
}
