//! A backend dial that failed for good: the client is reset and the line says why, with what
//! --target-netns names now. That verdict may take a lookup (a container's asks its engine's
//! API, which a busy daemon answers in seconds): the connection waits for it parked while the
//! loop's thread goes on serving its other connections, and the lookup's end wakes the loop
//! through its eventfd ([`TargetWatch::hint_later`]).
//!
//! [`TargetWatch::hint_later`]: crate::proxy::target_watch::TargetWatch::hint_later

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::super::super::target_watch::Hint;
use super::super::super::Level;
use super::super::pump::zero_linger;
use super::super::Listener;
use super::{listen_addr, Loop};

/// A dial that failed for good, its line not written yet.
pub(super) struct Refused {
    /// The number the log lines give the connection.
    pub(super) id: u64,
    /// Index of the listener that accepted it.
    pub(super) li: usize,
    /// The accepted socket (out of the epoll set).
    pub(super) client: OwnedFd,
    /// The client's address.
    pub(super) peer: SocketAddr,
    /// Why the dial failed.
    pub(super) error: io::Error,
    /// Whether it is dialed once more when --target-netns was followed to a new namespace.
    pub(super) again: bool,
    /// The generation of --target-netns's namespace it was dialed in (its low 32 bits).
    pub(super) ns_gen: u32,
}

/// A refused dial waiting for --target-netns's lookup ([`Hint::Later`]).
pub(super) struct Parked {
    refused: Refused,
    ticket: u64,
    until: Instant,
}

/// The line for a dial refused in the namespace --target-netns named before, made again in
/// the one it names now (`hint` says which).
fn retry_line(r: &Refused, l: &Listener, hint: &str) -> String {
    format!(
        "#{} {} -> {}: cannot connect to {}: {}{hint}; dialing this connection again there",
        r.id,
        r.peer,
        listen_addr(&r.client, l),
        l.map.failed_text(),
        r.error
    )
}

impl Loop {
    /// Say why `r` failed, with what --target-netns names now; when that takes a lookup, the
    /// connection is parked until it is in ([`Loop::unpark`]) and the loop goes on.
    pub(super) fn refused(&mut self, r: Refused) {
        let hint = match &self.ctx.target {
            None => String::new(),
            Some(w) => match w.hint_later(&self.wake) {
                Hint::Now(hint) => hint,
                Hint::Later { ticket, until } => {
                    let refused = r;
                    return self.parked.push(Parked {
                        refused,
                        ticket,
                        until,
                    });
                }
            },
        };
        self.judged(r, &hint)
    }

    /// Go on with the parked dials whose verdict is in, or whose wait is over (with the last
    /// verdict then), in the order they were parked.
    pub(super) fn unpark(&mut self) {
        let Some(w) = self.ctx.target.clone().filter(|_| !self.parked.is_empty()) else {
            return;
        };
        let now = Instant::now();
        let mut i = 0;
        while i < self.parked.len() {
            let p = &self.parked[i];
            let hint = match w.verdict_since(p.ticket) {
                Some(hint) => hint,
                None if p.until <= now => w.last_hint(),
                None => {
                    i += 1;
                    continue;
                }
            };
            let p = self.parked.remove(i);
            self.judged(p.refused, &hint);
        }
    }

    /// When the first parked dial stops waiting for its verdict.
    pub(super) fn parked_until(&self) -> Option<Instant> {
        self.parked.iter().map(|p| p.until).min()
    }

    /// The parked dials' clients, closed when the loop stops.
    pub(super) fn close_parked(&mut self) {
        let c = &self.ctx.counters;
        for _ in self.parked.drain(..) {
            c.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// `r` with its verdict (`hint`): refused in a namespace --target-netns no longer names,
    /// it is dialed once more in the new one; else the client is reset and the line says why.
    fn judged(&mut self, r: Refused, hint: &str) {
        let listeners = self.listeners.clone();
        let l = &listeners[r.li];
        let moved = |gen: u64| gen as u32 != r.ns_gen;
        if r.again && self.ctx.target.as_ref().is_some_and(|w| moved(w.gen())) {
            self.ctx.log(Level::Warn, retry_line(&r, l, hint));
            return self.dial(r.id, r.li, l, r.client, r.peer, false, 0);
        }
        let (map, listen) = (&l.map, listen_addr(&r.client, l));
        let c = &self.ctx.counters;
        c.dial_errors.fetch_add(1, Ordering::Relaxed);
        map.all_failed();
        self.ctx.log(
            Level::Warn,
            format!(
                "#{} {} -> {listen}: cannot connect to {}: {}{hint}; resetting the client",
                r.id,
                r.peer,
                map.failed_text(),
                r.error
            ),
        );
        zero_linger(&r.client);
        c.active.fetch_sub(1, Ordering::Relaxed);
        // Dropping r closes the client, with a reset.
    }
}
