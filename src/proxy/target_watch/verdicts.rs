//! What a failed dial's log line adds about --target-netns, and waiting for the lookup that
//! tells it without holding the thread that asked ([`TargetWatch::hint_later`]): an event
//! loop thread serves many connections, and a container's lookup asks its engine's API,
//! which a busy daemon answers in seconds.

use super::{TargetWatch, RECHECK};

/// How long a refused dial waits for a lookup before it goes on with the last verdict. A
/// lookup takes about 10 ms against a live dockerd; a wedged engine API holds it for its 10 s
/// timeout. The event loop waits without holding its thread ([`Hint::Later`]); a blocking
/// thread of tokio's path waits in [`TargetWatch::hint`].
pub(super) const LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Called when a lookup under way ends (an event loop's eventfd written, a channel sent to).
pub(crate) type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

/// What a failed dial's log line adds about --target-netns ([`TargetWatch::hint_later`]).
#[derive(Debug)]
pub(crate) enum Hint {
    /// The verdict that stands, or the last one when no lookup can be waited for.
    Now(String),
    /// A lookup is under way: the waker is called when it ends, and
    /// [`TargetWatch::verdict_since`]`(ticket)` gives its verdict then; at `until` the last
    /// verdict ([`TargetWatch::last_hint`]) stands instead.
    Later {
        /// Lookups ended when this one was asked for.
        ticket: u64,
        /// When waiting stops.
        until: std::time::Instant,
    },
}

/// The verdicts on --target-netns and the lookup under way (one lock: a waiter registers
/// while the lookup it waits for cannot end unseen).
#[derive(Default)]
pub(super) struct Verdicts {
    /// When the text was last resolved and what the failed dials' lines add since.
    pub(super) last: Option<(std::time::Instant, String)>,
    /// Since when a lookup is under way: one at a time, the others wait for it or take `last`.
    since: Option<std::time::Instant>,
    /// How many lookups ended, and what the latest one said.
    ended: u64,
    /// What the latest lookup said (also a look that found nothing new, which `last` skips).
    said: String,
    /// Called when the lookup under way ends.
    wakers: Vec<Wake>,
}

impl TargetWatch {
    /// What a failed dial's log line adds: why the namespace is the wrong one, or "" when the
    /// text still names the namespace dials go to. Blocks up to [`LOOKUP_WAIT`] (on a blocking
    /// thread only: the event loop uses [`TargetWatch::hint_later`]); waits only when no
    /// lookup was under way, else repeats the last verdict at once (a storm of refused dials
    /// does not hold a blocking thread each).
    pub(crate) fn hint(self: &std::sync::Arc<Self>) -> String {
        if let Some(said) = self.fresh_hint() {
            return said;
        }
        if self.verdicts.lock().is_ok_and(|v| v.since.is_some()) {
            return self.last_hint();
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let wake: Wake = std::sync::Arc::new(move || {
            let _ = tx.try_send(());
        });
        match self.hint_later(&wake) {
            Hint::Now(said) => said,
            Hint::Later { ticket, until } => {
                let _ = rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now()));
                self.verdict_since(ticket)
                    .unwrap_or_else(|| self.last_hint())
            }
        }
    }

    /// [`TargetWatch::hint`] without waiting: the verdict that stands, or a lookup to wait for
    /// (started here, on a thread of its own in the proxy's first namespace, when none is
    /// under way: a container's lookup asks its engine), after which `wake` is called. A
    /// lookup that has run [`LOOKUP_WAIT`] already is not waited for.
    pub(crate) fn hint_later(self: &std::sync::Arc<Self>, wake: &Wake) -> Hint {
        let now = std::time::Instant::now();
        let Ok(mut v) = self.verdicts.lock() else {
            return Hint::Now(String::new());
        };
        // Under the lock: a lookup that ended a moment ago is not made again.
        if let Some((at, said)) = &v.last {
            if now.saturating_duration_since(*at) < RECHECK {
                return Hint::Now(said.clone());
            }
        }
        let start = match v.since {
            Some(since) if since + LOOKUP_WAIT <= now => {
                drop(v);
                return Hint::Now(self.last_hint());
            }
            Some(_) => false,
            None => {
                v.since = Some(now);
                true
            }
        };
        let until = v.since.unwrap_or(now) + LOOKUP_WAIT;
        // One per waiter: an event loop with many refused dials waiting is woken once.
        if !v.wakers.iter().any(|w| std::sync::Arc::ptr_eq(w, wake)) {
            v.wakers.push(wake.clone());
        }
        let ticket = v.ended;
        drop(v);
        if !start {
            return Hint::Later { ticket, until };
        }
        let me = self.clone();
        let lookup = move || {
            if let Some(home) = &me.home {
                // A thread of our own that nothing else shares.
                let _ = home.enter_this_thread();
            }
            let said = me.check(std::time::Instant::now());
            me.ended(Some(said), true);
        };
        match std::thread::Builder::new()
            .name("nettool-nswatch".into())
            .spawn(lookup)
        {
            Ok(_) => Hint::Later { ticket, until },
            Err(_) => {
                // No thread to be had: no verdict this time, the next failed dial asks again.
                self.ended(None, false);
                Hint::Now(self.last_hint())
            }
        }
    }

    /// The verdict of a lookup that ended after `ticket` ([`Hint::Later`]) was given, if any.
    pub(crate) fn verdict_since(&self, ticket: u64) -> Option<String> {
        let v = self.verdicts.lock().ok()?;
        (v.ended > ticket).then(|| v.said.clone())
    }

    /// Start a lookup unless one is under way (true: this caller makes it, and ends it with
    /// [`TargetWatch::ended`]).
    pub(super) fn begin(&self) -> bool {
        self.verdicts.lock().is_ok_and(|mut v| {
            let free = v.since.is_none();
            if free {
                v.since = Some(std::time::Instant::now());
            }
            free
        })
    }

    /// The lookup under way ended with `said`, which stands for the failed dials of the next
    /// second when it says something or `stands` (a failed dial's lookup); None: it could not
    /// start, and its waiters take the last verdict. They are woken.
    pub(super) fn ended(&self, said: Option<String>, stands: bool) {
        let Ok(mut v) = self.verdicts.lock() else {
            return;
        };
        v.since = None;
        v.ended += 1;
        v.said = match said {
            Some(said) => {
                if stands || !said.is_empty() {
                    v.last = Some((std::time::Instant::now(), said.clone()));
                }
                said
            }
            None => v.last.as_ref().map(|(_, s)| s.clone()).unwrap_or_default(),
        };
        let wakers = std::mem::take(&mut v.wakers);
        drop(v);
        for w in wakers {
            w();
        }
    }

    /// The last verdict, however old ("" before the first).
    pub(crate) fn last_hint(&self) -> String {
        let last = self.verdicts.lock().ok().and_then(|v| v.last.clone());
        last.map(|(_, s)| s).unwrap_or_default()
    }

    /// The last verdict while it stands (under a second old), without resolving anything:
    /// callers on an async thread move to a blocking one only when this is None.
    pub(crate) fn fresh_hint(&self) -> Option<String> {
        let v = self.verdicts.lock().ok()?;
        let (at, said) = v.last.as_ref()?;
        (at.elapsed() < RECHECK).then(|| said.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::{NetNs, NetnsError};
    use crate::proxy::listen_watch::Resolved;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    static SLOW_LOOKS: AtomicUsize = AtomicUsize::new(0);

    /// An engine that answers after 300 ms, with an error (the namespace's file stays).
    fn slow_engine(_: &str) -> Resolved {
        SLOW_LOOKS.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        Resolved {
            ns: Err(NetnsError::NoContainer {
                name: "nt-test-web".into(),
                asked: "asked docker at /var/run/docker.sock: 500 Internal Server Error".into(),
            }),
            container: None,
        }
    }

    /// A failed dial's lookup is waited for without holding the thread that asked:
    /// hint_later starts it and returns; a second dial meanwhile waits for the same lookup
    /// (no second one); the waker is called once when it ends, its verdict is there then,
    /// and stands for the next dial. Before, the asking thread (an event loop's) waited for
    /// it itself.
    #[test]
    fn a_lookup_is_waited_for_without_holding_the_thread_that_asked() {
        let log = super::super::super::Log::new(super::super::super::Level::Debug, |_, _| {});
        let ns = NetNs::current().unwrap();
        let mut w = TargetWatch::new("container:nt-test-web", ns, true, log, Vec::new());
        w.resolve = slow_engine;
        let w = Arc::new(w);
        let (tx, rx) = std::sync::mpsc::channel();
        let wake: Wake = Arc::new(move || {
            let _ = tx.send(());
        });
        let Hint::Later { ticket, until } = w.hint_later(&wake) else {
            panic!("no lookup to wait for");
        };
        // Returned while the lookup runs: its verdict is not in yet.
        assert_eq!(w.verdict_since(ticket), None);
        let again = w.hint_later(&wake);
        assert!(
            matches!(again, Hint::Later { ticket: t, until: u } if t == ticket && u == until),
            "{again:?}"
        );
        rx.recv_timeout(Duration::from_secs(10))
            .expect("not woken when the lookup ended");
        let said = w.verdict_since(ticket).expect("no verdict once woken");
        assert!(
            said.contains(": the engine could not be asked (no container 'nt-test-web'"),
            "{said}"
        );
        assert_eq!(SLOW_LOOKS.load(Ordering::SeqCst), 1);
        assert!(rx.try_recv().is_err(), "woken twice for one lookup");
        // It stands: the next failed dial has it at once, without a lookup.
        assert!(matches!(w.hint_later(&wake), Hint::Now(s) if s == said));
        assert_eq!(SLOW_LOOKS.load(Ordering::SeqCst), 1);
    }
}
