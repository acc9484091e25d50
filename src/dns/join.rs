//! Every lookup once: the sightings of one lookup (the same query seen in a container, on the
//! host's bridge, after the host's MASQUERADE on its uplink, in the resolver's namespace) are
//! joined into one [`Lookup`] whose hops list where it was seen, nearest the client first.
//!
//! What makes two sightings one lookup: the same DNS id, question and transport, within
//! [`WINDOW`] of each other, and the same client and server addresses on the wire, or
//! addresses that one namespace's conntrack entry says are the same flow before and after its
//! NAT. A NAT never changes the DNS id, but two clients behind one MASQUERADE may well use the
//! same id for the same name at the same time: only the kernel's own record of the translation
//! joins across it, so such lookups can stay apart but are never tied to the wrong client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::packet::Transport;
use super::pair::{Hop, Lookup, QKey, Status, UpstreamLeg};
use crate::netns::NsId;

/// Sightings whose first queries are further apart than this are different lookups.
pub(crate) const WINDOW: Duration = Duration::from_secs(2);

/// What the joiner asks of the capture about its namespaces.
pub(crate) trait JoinContext {
    /// A query for `q` with `id` over `transport` is still waiting for its answer somewhere
    /// (its sighting is not finished yet: wait for it).
    fn pending(&self, q: &QKey, id: u16, transport: Transport) -> bool;
    /// A query for `q` from `client` is still waiting for its answer in namespace `ns`.
    fn pending_from(&self, ns: NsId, q: &QKey, client: SocketAddr) -> bool;
    /// What the NAT in namespace `ns` made of the flow `client -> server` (or what it was
    /// before): from that namespace's conntrack.
    fn translated(
        &mut self,
        ns: NsId,
        transport: Transport,
        client: SocketAddr,
        server: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)>;
}

#[derive(Debug)]
struct Sighting {
    ns: NsId,
    lookup: Lookup,
}

#[derive(Debug)]
struct Bucket {
    sightings: Vec<Sighting>,
    /// When the last sighting came in (capture clock).
    last: Duration,
}

/// A lookup joined from its sightings, with where each was seen.
#[derive(Debug)]
struct Joined {
    lookup: Lookup,
    q: QKey,
    /// (namespace, client, server) of each hop, in hop order.
    at: Vec<(NsId, SocketAddr, SocketAddr)>,
    /// The namespace where a resolver's query was linked to the client it serves.
    linked_in: Option<NsId>,
}

impl Joined {
    /// Is this the lookup of `client` asking `q`, seen in `ns`?
    fn asked_by(&self, ns: NsId, client: SocketAddr, q: &QKey) -> bool {
        self.q == *q && self.at.iter().any(|(n, c, _)| *n == ns && *c == client)
    }
}

/// Joins sightings from every watched namespace into lookups.
#[derive(Debug)]
pub(crate) struct Joiner {
    grace: Duration,
    buckets: HashMap<(QKey, u16, Transport), Bucket>,
    /// Queries a resolver made for a client whose lookup is not finished yet.
    children: Vec<Joined>,
    out: Vec<Lookup>,
}

impl Joiner {
    /// A joiner that holds a finished sighting `grace` for the other namespaces' sightings of
    /// the same lookup (zero when there is one capture point: it saw every copy in order).
    pub(crate) fn new(grace: Duration) -> Self {
        Joiner {
            grace,
            buckets: HashMap::new(),
            children: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Take one finished sighting from namespace `ns`, at `now`.
    pub(crate) fn add(&mut self, ns: NsId, lookup: Lookup, now: Duration) {
        let Some(q) = lookup.question.clone() else {
            // Nothing to join on: it stands alone.
            self.out.push(lookup);
            return;
        };
        let b = self
            .buckets
            .entry((q, lookup.id, lookup.transport))
            .or_insert_with(|| Bucket {
                sightings: Vec::new(),
                last: now,
            });
        b.last = now;
        b.sightings.push(Sighting { ns, lookup });
    }

    #[cfg(test)]
    /// Sightings held (not yet joined and handed out).
    pub(crate) fn held(&self) -> usize {
        self.buckets
            .values()
            .map(|b| b.sightings.len())
            .sum::<usize>()
            + self.children.len()
    }

    /// Join what can be joined now: buckets quiet for the grace period with no query of
    /// theirs still waiting anywhere. `all` joins everything held (the capture is over).
    pub(crate) fn ready(
        &mut self,
        now: Duration,
        all: bool,
        cx: &mut dyn JoinContext,
    ) -> Vec<Lookup> {
        let done: Vec<(QKey, u16, Transport)> = self
            .buckets
            .iter()
            .filter(|((q, id, t), b)| {
                all || (now.saturating_sub(b.last) >= self.grace && !cx.pending(q, *id, *t))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = std::mem::take(&mut self.out);
        if done.is_empty() && self.children.is_empty() {
            return out;
        }
        let mut batch: Vec<Joined> = Vec::new();
        for k in done {
            if let Some(b) = self.buckets.remove(&k) {
                batch.extend(join_bucket(b.sightings, k.0, k.2, cx));
            }
        }
        let mut batch = embedded_forwards(batch);
        // A resolver's query for a client goes inside that client's lookup, as its upstream leg.
        let (mut children, mut lookups): (Vec<Joined>, Vec<Joined>) = batch
            .drain(..)
            .partition(|j| j.linked_in.is_some() && j.lookup.on_behalf_of.is_some());
        children.append(&mut self.children);
        children.sort_by(|a, b| a.lookup.time.total_cmp(&b.lookup.time));
        // Latest first, so a resolver's query reaches its parent after its own forwards did.
        while let Some(child) = children.pop() {
            let (ns, client) = match (child.linked_in, child.lookup.on_behalf_of) {
                (Some(ns), Some(c)) => (ns, c),
                _ => {
                    lookups.push(child);
                    continue;
                }
            };
            let parent = lookups
                .iter_mut()
                .chain(children.iter_mut())
                .find(|p| p.asked_by(ns, client, &child.q));
            if let Some(p) = parent {
                adopt(&mut p.lookup, child, ns);
                continue;
            }
            let waiting = cx.pending_from(ns, &child.q, client)
                || self.buckets.values().any(|b| {
                    b.sightings.iter().any(|s| {
                        s.ns == ns
                            && s.lookup.client == client
                            && s.lookup.question.as_ref() == Some(&child.q)
                    })
                });
            if waiting && !all {
                self.children.push(child);
            } else {
                lookups.push(child);
            }
        }
        let mut joined: Vec<Lookup> = lookups.into_iter().map(|j| j.lookup).collect();
        joined.sort_by(|a, b| a.time.total_cmp(&b.time));
        out.extend(joined);
        out
    }
}

/// An embedded resolver (Docker's or the lab's 127.0.0.11, DNATed to its real port) answers
/// in the container's namespace but may forward from another one (the lab's from its host,
/// Docker's to a host-loopback server) with the client's id and question: that forward lands
/// in the client's bucket as a group of its own. It goes inside the client's lookup when the
/// bucket leaves no doubt: one such client, one other group, asked and answered within the
/// client's wait. Two clients asking at once leave both forwards apart.
fn embedded_forwards(batch: Vec<Joined>) -> Vec<Joined> {
    let mut buckets: HashMap<(QKey, u16, Transport), Vec<Joined>> = HashMap::new();
    for j in batch {
        buckets
            .entry((j.q.clone(), j.lookup.id, j.lookup.transport))
            .or_default()
            .push(j);
    }
    let mut out = Vec::new();
    for (_, mut groups) in buckets {
        if groups.len() == 2 {
            let embedded = |j: &Joined| {
                j.lookup.server_real.is_some()
                    && j.lookup.upstream.is_empty()
                    && j.lookup.status == Status::Answered
            };
            let pos = match (embedded(&groups[0]), embedded(&groups[1])) {
                (true, false) => Some(0),
                (false, true) => Some(1),
                _ => None,
            };
            if let Some(p) = pos {
                let child = groups.remove(1 - p);
                let parent = &mut groups[0];
                let (t0, wait) = (
                    parent.lookup.time,
                    parent.lookup.latency_ms.unwrap_or(0.0) / 1e3,
                );
                let end = child.lookup.time + child.lookup.latency_ms.unwrap_or(0.0) / 1e3;
                let shares_ns = child
                    .at
                    .iter()
                    .any(|(n, _, _)| parent.at.iter().any(|(m, _, _)| m == n));
                if child.lookup.time >= t0
                    && end <= t0 + wait
                    && !shares_ns
                    && child.lookup.on_behalf_of.is_none()
                {
                    let l = child.lookup;
                    parent.lookup.upstream.push(UpstreamLeg {
                        from: l.client,
                        server: l.server,
                        transport: l.transport,
                        rcode: l.rcode,
                        latency_ms: l.latency_ms,
                        hops: l.hops,
                    });
                } else {
                    groups.push(child);
                }
            }
        }
        out.extend(groups);
    }
    out
}

/// Put a resolver's query (`child`, linked to its client in namespace `ns`) into the client's
/// lookup as the hops of the matching upstream leg.
fn adopt(parent: &mut Lookup, child: Joined, ns: NsId) {
    let (from, server) = child
        .at
        .iter()
        .find(|(n, _, _)| *n == ns)
        .map(|(_, c, s)| (*c, *s))
        .unwrap_or((child.lookup.client, child.lookup.server));
    let l = child.lookup;
    match parent
        .upstream
        .iter_mut()
        .find(|u| u.from == from && u.server == server && u.transport == l.transport)
    {
        Some(leg) => leg.hops = l.hops,
        None => parent.upstream.push(UpstreamLeg {
            from,
            server,
            transport: l.transport,
            rcode: l.rcode,
            latency_ms: l.latency_ms,
            hops: l.hops,
        }),
    }
}

/// A client and a server address: one direction of a flow.
type Flow = (SocketAddr, SocketAddr);

/// The wire tuple of a sighting: client and the server its packets really went to.
fn wire(l: &Lookup) -> Flow {
    (l.client, l.server_real.unwrap_or(l.server))
}

fn root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (root(parent, a), root(parent, b));
    if ra != rb {
        parent[ra.max(rb)] = ra.min(rb);
    }
}

fn close(a: &Lookup, b: &Lookup) -> bool {
    (a.time - b.time).abs() <= WINDOW.as_secs_f64()
}

/// Split one bucket (same id, question, transport) into lookups.
fn join_bucket(
    s: Vec<Sighting>,
    q: QKey,
    transport: Transport,
    cx: &mut dyn JoinContext,
) -> Vec<Joined> {
    let n = s.len();
    let mut parent: Vec<usize> = (0..n).collect();
    let tuples: Vec<(SocketAddr, SocketAddr)> = s.iter().map(|x| wire(&x.lookup)).collect();
    for i in 0..n {
        for j in i + 1..n {
            // Loopback never leaves its namespace: two containers asking 127.0.0.11 from the
            // same port are two lookups.
            let crosses = s[i].ns != s[j].ns;
            let looped = tuples[i].0.ip().is_loopback() || tuples[i].1.ip().is_loopback();
            if tuples[i] == tuples[j] && close(&s[i].lookup, &s[j].lookup) && !(crosses && looped) {
                union(&mut parent, i, j);
            }
        }
    }
    let distinct = {
        let mut t = tuples.clone();
        t.sort();
        t.dedup();
        t.len()
    };
    if distinct > 1 {
        // Ask each namespace's conntrack once per tuple it saw.
        let mut asked: HashMap<(NsId, Flow), Option<Flow>> = HashMap::new();
        for i in 0..n {
            let key = (s[i].ns, tuples[i]);
            let other = *asked
                .entry(key)
                .or_insert_with(|| cx.translated(s[i].ns, transport, tuples[i].0, tuples[i].1));
            let Some(other) = other else { continue };
            for j in 0..n {
                let shown = (s[j].lookup.client, s[j].lookup.server);
                if j != i
                    && (tuples[j] == other || shown == other)
                    && close(&s[i].lookup, &s[j].lookup)
                {
                    union(&mut parent, i, j);
                }
            }
        }
    }
    let mut groups: HashMap<usize, Vec<Sighting>> = HashMap::new();
    for (i, x) in s.into_iter().enumerate() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(x);
    }
    groups.into_values().map(|g| merge(g, q.clone())).collect()
}

/// One lookup from its sightings: the one nearest the client (first query seen earliest; on a
/// tie, the longest wait, as the client waits longest) gives the fields, every one a hop.
fn merge(mut v: Vec<Sighting>, q: QKey) -> Joined {
    v.sort_by(|a, b| {
        let (a, b) = (&a.lookup, &b.lookup);
        a.time.total_cmp(&b.time).then_with(|| {
            let la = a.latency_ms.unwrap_or(-1.0);
            let lb = b.latency_ms.unwrap_or(-1.0);
            lb.total_cmp(&la)
        })
    });
    // A sighting of the answer alone sorts by its answer time; it is never the client's view
    // while a sighting of the query exists.
    if let Some(pos) = v.iter().position(|x| x.lookup.status != Status::AnswerOnly) {
        let first = v.remove(pos);
        v.insert(0, first);
    }
    let at: Vec<(NsId, SocketAddr, SocketAddr)> = v
        .iter()
        .map(|x| (x.ns, x.lookup.client, x.lookup.server))
        .collect();
    let clients: Vec<SocketAddr> = at.iter().map(|a| a.1).collect();
    let mut it = v.into_iter();
    let first = it.next().expect("a group has a sighting");
    let mut base = first.lookup;
    let mut hops = std::mem::take(&mut base.hops);
    let mut upstream: Vec<UpstreamLeg> = std::mem::take(&mut base.upstream);
    // A NATed copy of the lookup itself is not a client it was made for.
    let mut linked = base
        .on_behalf_of
        .filter(|c| !clients.contains(c))
        .map(|c| (c, first.ns));
    for x in it {
        hops.extend(x.lookup.hops);
        upstream.extend(x.lookup.upstream);
        if linked.is_none() {
            linked = x
                .lookup
                .on_behalf_of
                .filter(|c| !clients.contains(c))
                .map(|c| (c, x.ns));
        }
    }
    // ... nor an upstream leg of it.
    upstream.retain(|u| !at.iter().any(|(_, c, s)| (*c, *s) == (u.from, u.server)));
    let mut seen: Vec<(SocketAddr, SocketAddr, Transport)> = Vec::new();
    upstream.retain(|u| {
        let k = (u.from, u.server, u.transport);
        let new = !seen.contains(&k);
        seen.push(k);
        new
    });
    base.upstream = upstream;
    base.on_behalf_of = linked.map(|l| l.0);
    base.hops = hops;
    Joined {
        lookup: base,
        q,
        at,
        linked_in: linked.map(|l| l.1),
    }
}

/// The hops of a lookup seen at one point only.
pub(crate) fn single(mut l: Lookup, interface: Option<String>) -> Lookup {
    let h = Hop::of(&l, interface);
    l.hops = vec![h];
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::pair::Pairer;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn answer(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::response(id, hickory_proto::op::OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ns(i: u64) -> NsId {
        NsId { dev: 1, inode: i }
    }

    /// conntrack of the host namespace (2): each client's flow and its MASQUERADEd form.
    struct Nat(Vec<((SocketAddr, SocketAddr), (SocketAddr, SocketAddr))>);

    impl JoinContext for Nat {
        fn pending(&self, _: &QKey, _: u16, _: Transport) -> bool {
            false
        }
        fn pending_from(&self, _: NsId, _: &QKey, _: SocketAddr) -> bool {
            false
        }
        fn translated(
            &mut self,
            n: NsId,
            _: Transport,
            c: SocketAddr,
            s: SocketAddr,
        ) -> Option<(SocketAddr, SocketAddr)> {
            if n != ns(2) {
                return None;
            }
            self.0.iter().find_map(|(before, after)| {
                if *before == (c, s) {
                    Some(*after)
                } else if *after == (c, s) {
                    Some(*before)
                } else {
                    None
                }
            })
        }
    }

    /// One sighting of a lookup from `c` to `s`, query at `t0` ms and answer at `t1` ms.
    fn seen(label: &str, c: SocketAddr, s: SocketAddr, id: u16, t0: u64, t1: u64) -> Lookup {
        let mut p = Pairer::new(label, Duration::from_secs(5));
        p.message(
            Duration::from_millis(t0),
            c,
            s,
            Transport::Udp,
            &query(id, "x.test."),
        );
        p.message(
            Duration::from_millis(t1),
            s,
            c,
            Transport::Udp,
            &answer(id, "x.test."),
        );
        let l = p.drain().pop().unwrap();
        single(l, None)
    }

    #[test]
    fn two_clients_with_one_id_behind_one_masquerade_stay_two() {
        let srv = a("10.53.0.1:53");
        let (c1, c2) = (a("172.20.0.2:5000"), a("172.20.0.3:5000"));
        let (m1, m2) = (a("10.99.0.1:5000"), a("10.99.0.1:61000"));
        let mut cx = Nat(vec![((c1, srv), (m1, srv)), ((c2, srv), (m2, srv))]);
        let mut j = Joiner::new(Duration::ZERO);
        // c2's upstream leg is answered first: a join by time or order would cross them.
        for (n, l) in [
            (ns(1), seen("c1", c1, srv, 7, 0, 40)),
            (ns(3), seen("c2", c2, srv, 7, 1, 20)),
            (ns(2), seen("host", c1, srv, 7, 2, 39)),
            (ns(2), seen("host", c2, srv, 7, 3, 19)),
            (ns(2), seen("host", m1, srv, 7, 4, 38)),
            (ns(2), seen("host", m2, srv, 7, 5, 18)),
            (ns(4), seen("srv", m2, srv, 7, 6, 17)),
            (ns(4), seen("srv", m1, srv, 7, 7, 37)),
        ] {
            j.add(n, l, Duration::ZERO);
        }
        let out = j.ready(Duration::ZERO, false, &mut cx);
        assert_eq!(out.len(), 2, "{out:#?}");
        for (l, c, m) in [(&out[0], c1, m1), (&out[1], c2, m2)] {
            assert_eq!(l.client, c);
            let path: Vec<(&str, SocketAddr)> = l
                .hops
                .iter()
                .map(|h| (h.netns.as_str(), h.client))
                .collect();
            assert_eq!(
                path,
                [(l.netns.as_str(), c), ("host", c), ("host", m), ("srv", m)]
            );
        }
        assert_eq!(out[0].latency_ms, Some(40.0));
        assert_eq!(out[1].latency_ms, Some(19.0));
    }

    #[test]
    fn an_embedded_resolvers_forward_from_elsewhere_is_tied_only_when_alone() {
        let shown = a("127.0.0.11:53");
        let up = a("10.53.0.1:53");
        let client = |port: u16, t0: u64| {
            let mut l = seen(
                "c",
                SocketAddr::from(([127, 0, 0, 1], port)),
                shown,
                7,
                t0,
                t0 + 10,
            );
            l.server_real = Some(a("127.0.0.11:41000"));
            l
        };
        let forward =
            |port: u16, t0: u64| seen("host", a(&format!("10.53.0.254:{port}")), up, 7, t0, t0 + 5);
        // One client, one forward inside its wait: one lookup.
        let mut j = Joiner::new(Duration::ZERO);
        j.add(ns(1), client(4000, 0), Duration::ZERO);
        j.add(ns(2), forward(5000, 2), Duration::ZERO);
        let out = j.ready(Duration::ZERO, false, &mut Nat(Vec::new()));
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].upstream.len(), 1);
        assert_eq!(out[0].upstream[0].from, a("10.53.0.254:5000"));
        // Two clients in two containers at once, same id and name: nothing is tied.
        let mut j = Joiner::new(Duration::ZERO);
        j.add(ns(1), client(4000, 0), Duration::ZERO);
        j.add(ns(3), client(4000, 1), Duration::ZERO);
        j.add(ns(2), forward(5000, 2), Duration::ZERO);
        j.add(ns(2), forward(5001, 3), Duration::ZERO);
        let out = j.ready(Duration::ZERO, false, &mut Nat(Vec::new()));
        assert_eq!(out.len(), 4, "{out:#?}");
        assert!(out.iter().all(|l| l.upstream.is_empty()));
    }

    #[test]
    fn without_conntrack_a_translated_flow_stays_apart() {
        let srv = a("10.53.0.1:53");
        let (c1, m1) = (a("172.20.0.2:5000"), a("10.99.0.1:5000"));
        let mut cx = Nat(Vec::new());
        let mut j = Joiner::new(Duration::ZERO);
        j.add(ns(1), seen("c1", c1, srv, 7, 0, 40), Duration::ZERO);
        j.add(ns(2), seen("host", c1, srv, 7, 1, 39), Duration::ZERO);
        j.add(ns(2), seen("host", m1, srv, 7, 2, 38), Duration::ZERO);
        let out = j.ready(Duration::ZERO, false, &mut cx);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!(out[0].hops.len(), 2);
        assert_eq!(out[1].hops.len(), 1);
    }

    #[test]
    fn held_for_the_grace_and_while_a_query_waits() {
        struct Waiting(bool);
        impl JoinContext for Waiting {
            fn pending(&self, _: &QKey, _: u16, _: Transport) -> bool {
                self.0
            }
            fn pending_from(&self, _: NsId, _: &QKey, _: SocketAddr) -> bool {
                false
            }
            fn translated(
                &mut self,
                _: NsId,
                _: Transport,
                _: SocketAddr,
                _: SocketAddr,
            ) -> Option<(SocketAddr, SocketAddr)> {
                None
            }
        }
        let srv = a("10.53.0.1:53");
        let c = a("172.20.0.2:5000");
        let mut j = Joiner::new(Duration::from_millis(200));
        j.add(
            ns(4),
            seen("srv", c, srv, 7, 1, 2),
            Duration::from_millis(1000),
        );
        let t = |ms| Duration::from_millis(ms);
        assert!(j.ready(t(1100), false, &mut Waiting(false)).is_empty());
        assert!(j.ready(t(1300), false, &mut Waiting(true)).is_empty());
        j.add(ns(1), seen("c", c, srv, 7, 0, 3), t(1300));
        let out = j.ready(t(1500), false, &mut Waiting(false));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].netns, "c");
        assert_eq!(out[0].hops.len(), 2);
        assert_eq!(j.held(), 0);
    }
}
