//! --follow: the legs of one flow across NAT told apart and joined, from conntrack. Every
//! entry has an original tuple (as the client sent it) and a reply tuple (as the server answers,
//! i.e. after DNAT/SNAT). A packet on any leg matches one of four keys: original, original
//! reversed, reply, reply reversed; entries from several namespaces (the host's DNAT, the
//! container's own) that share a key are one flow. The entries come from ctnetlink events
//! ([`crate::netns::conntrack::Events`]). ICMP echo is keyed by its id in both port fields.

pub(crate) use crate::netns::conntrack::{Entry as CtFlow, Tuple};
use std::collections::HashMap;

/// The flows known so far, by any of their keys. Entries read from different namespaces at
/// slightly different moments may first make two flows that a later entry shows are one: flows
/// are merged (union-find), so every leg ends up under one number.
#[derive(Debug, Default)]
pub(crate) struct FlowTable {
    by_key: HashMap<Tuple, usize>,
    flows: Vec<CtFlow>,
    parent: Vec<usize>,
    /// Per flow: the legs a userland proxy joined to it (`docker-proxy pid 9: tcp A > B`).
    proxied: Vec<Vec<String>>,
}

impl FlowTable {
    fn root(&self, mut id: usize) -> usize {
        while self.parent[id] != id {
            id = self.parent[id];
        }
        id
    }

    /// Add an entry: joins (and merges) the flows that share a key, else starts one. A NATed
    /// entry becomes the flow's description (it says more).
    pub(crate) fn add(&mut self, e: CtFlow) {
        // Also the states in between: DNAT done but not SNAT (a bridge sees the packet after
        // PREROUTING, before POSTROUTING), and SNAT without DNAT.
        // ICMP echo keeps its id (both port fields) through DNAT.
        let icmp = matches!(e.original.proto, 1 | 58);
        let dnat_only = Tuple {
            dst: e.reply.src,
            dport: if icmp {
                e.original.dport
            } else {
                e.reply.sport
            },
            ..e.original
        };
        let snat_only = Tuple {
            src: e.reply.dst,
            sport: if icmp {
                e.original.sport
            } else {
                e.reply.dport
            },
            ..e.original
        };
        let keys = [
            e.original,
            e.original.reversed(),
            e.reply,
            e.reply.reversed(),
            dnat_only,
            dnat_only.reversed(),
            snat_only,
            snat_only.reversed(),
        ];
        let mut roots: Vec<usize> = keys
            .iter()
            .filter_map(|k| self.by_key.get(k).map(|&id| self.root(id)))
            .collect();
        roots.sort_unstable();
        roots.dedup();
        let id = match roots.first() {
            Some(&first) => {
                for &other in &roots[1..] {
                    self.parent[other] = first;
                    let moved = std::mem::take(&mut self.proxied[other]);
                    self.proxied[first].extend(moved);
                    if self.flows[other].natted() && !self.flows[first].natted() {
                        self.flows[first] = self.flows[other];
                    }
                }
                if e.natted() && !self.flows[first].natted() {
                    self.flows[first] = e;
                }
                first
            }
            None => {
                self.flows.push(e);
                self.parent.push(self.flows.len() - 1);
                self.proxied.push(Vec::new());
                self.flows.len() - 1
            }
        };
        for k in keys {
            self.by_key.entry(k).or_insert(id);
        }
    }

    /// A userland proxy's two legs are one conversation: join the flow of `client` (client to
    /// the proxy) and the flow of `backend` (the proxy to the backend). A leg conntrack has not
    /// shown is added as a flow of its own first (no NAT).
    pub(crate) fn join_proxy(&mut self, proxy: &str, client: Tuple, backend: Tuple) {
        for t in [client, backend] {
            if self.lookup(&t).is_none() {
                self.add(CtFlow {
                    original: t,
                    reply: t.reversed(),
                    tcp_state: None,
                });
            }
        }
        let (Some(c), Some(b)) = (self.by_key.get(&client), self.by_key.get(&backend)) else {
            return;
        };
        let (c, b) = (self.root(*c), self.root(*b));
        let leg = format!("{proxy}: {backend}");
        if c == b {
            if !self.proxied[c].contains(&leg) {
                self.proxied[c].push(leg);
            }
            return;
        }
        // The client's flow keeps its number (it came first) and its description.
        self.parent[b] = c;
        let moved = std::mem::take(&mut self.proxied[b]);
        self.proxied[c].extend(moved);
        self.proxied[c].push(leg);
    }

    /// The flow (its number from 1, and entry) a packet with this tuple belongs to.
    pub(crate) fn lookup(&self, t: &Tuple) -> Option<(usize, &CtFlow)> {
        let id = self.root(*self.by_key.get(t)?);
        Some((id + 1, &self.flows[id]))
    }

    /// The comment written on each packet of a flow.
    pub(crate) fn comment(&self, t: &Tuple) -> Option<String> {
        let (n, f) = self.lookup(t)?;
        let mut c = format!(
            "flow {n}: original {} ; reply {}{}",
            f.original,
            f.reply,
            if f.natted() { " (NAT)" } else { "" }
        );
        for leg in &self.proxied[n - 1] {
            c.push_str(" ; proxied by ");
            c.push_str(leg);
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `conntrack -L` lines (tcp and udp) as entries: the tests write entries as conntrack prints them.
    fn parse_conntrack(text: &str) -> Vec<CtFlow> {
        text.lines()
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let proto = match words.iter().find(|w| **w == "tcp" || **w == "udp")? {
                    &"tcp" => 6,
                    _ => 17,
                };
                let vals = |key: &str| -> Vec<&str> {
                    words.iter().filter_map(|w| w.strip_prefix(key)).collect()
                };
                let (s, d, sp, dp) = (vals("src="), vals("dst="), vals("sport="), vals("dport="));
                let t = |i: usize| -> Option<Tuple> {
                    Some(Tuple {
                        proto,
                        src: s.get(i)?.parse().ok()?,
                        sport: sp.get(i)?.parse().ok()?,
                        dst: d.get(i)?.parse().ok()?,
                        dport: dp.get(i)?.parse().ok()?,
                    })
                };
                Some(CtFlow {
                    original: t(0)?,
                    reply: t(1)?,
                    tcp_state: None,
                })
            })
            .collect()
    }

    #[test]
    fn legs_across_dnat_are_one_flow() {
        let host = "tcp      6 117 TIME_WAIT src=172.20.0.3 dst=172.20.0.1 sport=40000 dport=8080 src=172.20.0.2 dst=172.19.0.1 sport=80 dport=40000 [ASSURED] mark=0 use=1";
        let inside = "tcp      6 117 TIME_WAIT src=172.19.0.1 dst=172.20.0.2 sport=40000 dport=80 src=172.20.0.2 dst=172.19.0.1 sport=80 dport=40000 [ASSURED] mark=0 use=1";
        let mut t = FlowTable::default();
        for e in parse_conntrack(&format!(
            "{inside}\n{host}\nconntrack v1.4.7: 2 flow entries\n"
        )) {
            t.add(e);
        }
        let t1 = |s: &str, sp, d: &str, dp| Tuple {
            proto: 6,
            src: s.parse().unwrap(),
            sport: sp,
            dst: d.parse().unwrap(),
            dport: dp,
        };
        let client_leg = t1("172.20.0.3", 40000, "172.20.0.1", 8080);
        let server_leg = t1("172.20.0.2", 80, "172.19.0.1", 40000);
        assert_eq!(t.lookup(&client_leg).unwrap().0, 1);
        assert_eq!(t.lookup(&server_leg).unwrap().0, 1);
        let c = t.comment(&server_leg).unwrap();
        assert!(
            c.contains("original tcp 172.20.0.3:40000 > 172.20.0.1:8080"),
            "{c}"
        );
        assert!(c.contains("(NAT)"), "{c}");
        // Seen on the client's bridge: DNAT applied, SNAT not yet.
        assert_eq!(
            t.lookup(&t1("172.20.0.3", 40000, "172.20.0.2", 80))
                .unwrap()
                .0,
            1
        );
        assert!(t.lookup(&t1("1.1.1.1", 1, "2.2.2.2", 2)).is_none());

        // A userland proxy's legs: the client's flow keeps its number and names the other leg.
        let client = t1("127.0.0.1", 41000, "127.0.0.1", 8080);
        t.add(CtFlow {
            original: client,
            reply: client.reversed(),
            tcp_state: None,
        });
        let backend = t1("172.19.0.1", 52000, "172.19.0.2", 80);
        t.join_proxy("nettool pid 7", client, backend);
        let (n, _) = t.lookup(&backend.reversed()).unwrap();
        assert_eq!(n, t.lookup(&client).unwrap().0);
        assert_eq!(n, 2);
        assert!(t
            .comment(&backend)
            .unwrap()
            .ends_with("; proxied by nettool pid 7: tcp 172.19.0.1:52000 > 172.19.0.2:80"));
    }
}
