//! Query <-> answer pairing by (client address, server address, id, question), with retries,
//! duplicate ids, timeouts, truncated answers and the TCP retry, and the upstream leg a
//! forwarding resolver makes on a client's behalf.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::{RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use serde::Serialize;

use super::packet::Transport;

/// How a lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The answer arrived.
    Answered,
    /// No answer within the configured wait.
    Timeout,
    /// An answer whose query was not seen (the capture started in between, or it went elsewhere).
    AnswerOnly,
    /// The capture ended before the answer or the wait.
    Unanswered,
    /// An ICMP error came back instead of an answer (nothing listening, no route, rejected).
    Unreachable,
}

/// One record of an answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnswerRecord {
    /// Owner name.
    pub name: String,
    /// Record type (A, AAAA, CNAME...).
    #[serde(rename = "type")]
    pub rtype: String,
    /// TTL in seconds.
    pub ttl: u32,
    /// The data in presentation form (an address, a name, "10 mail.example"...).
    pub data: String,
}

/// The upstream query a forwarding resolver made for a lookup, when the capture saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamLeg {
    /// The resolver's own address as the upstream saw it.
    pub from: SocketAddr,
    /// The upstream server.
    pub server: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// The upstream's rcode, or None when it did not answer (yet).
    pub rcode: Option<String>,
    /// Upstream round trip in milliseconds.
    pub latency_ms: Option<f64>,
    /// Where the upstream query was seen, nearest the resolver first (empty when only the
    /// client's side of it was seen).
    pub hops: Vec<Hop>,
}

/// One place a lookup was seen: a namespace (and the interface the query arrived or left on),
/// with the addresses the packets carried there (they differ after a NAT) and how it ended there.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hop {
    /// The namespace (or container) label.
    pub netns: String,
    /// The interface the first query was seen on there (None when unknown, e.g. a pcap).
    pub interface: Option<String>,
    /// When the first query was seen there, seconds since the Unix epoch.
    pub time: f64,
    /// The asking side as the packets carried it there.
    pub client: SocketAddr,
    /// The server as the client addressed it there.
    pub server: SocketAddr,
    /// Where the packets really went there, when that differs (a DNAT).
    pub server_real: Option<SocketAddr>,
    /// How it ended there.
    pub status: Status,
    /// The rcode seen there.
    pub rcode: Option<String>,
    /// Query to answer there, in milliseconds.
    pub latency_ms: Option<f64>,
}

impl Hop {
    /// The hop a single sighting `l` makes, seen on `interface`.
    pub fn of(l: &Lookup, interface: Option<String>) -> Hop {
        Hop {
            netns: l.netns.clone(),
            interface,
            time: l.time,
            client: l.client,
            server: l.server,
            server_real: l.server_real,
            status: l.status,
            rcode: l.rcode.clone(),
            latency_ms: l.latency_ms,
        }
    }
}

/// One lookup: a query paired with its answer (or its absence).
#[derive(Debug, Clone, Serialize)]
pub struct Lookup {
    /// When the (first) query was seen, seconds since the Unix epoch.
    pub time: f64,
    /// Which namespace (or container) it was seen in.
    pub netns: String,
    /// The asking side.
    pub client: SocketAddr,
    /// The server as the client addressed it (127.0.0.11:53 for Docker's resolver).
    pub server: SocketAddr,
    /// Where the packets really went when that differs (Docker's DNAT to a random port).
    pub server_real: Option<SocketAddr>,
    /// UDP or TCP.
    pub transport: Transport,
    /// DNS message id.
    pub id: u16,
    /// Question name, without the trailing dot.
    pub name: String,
    /// Question type.
    #[serde(rename = "type")]
    pub qtype: String,
    /// How it ended.
    pub status: Status,
    /// NOERROR, NXDOMAIN, SERVFAIL... (None without an answer).
    pub rcode: Option<String>,
    /// Query to answer in milliseconds (from the first query when it was retried).
    pub latency_ms: Option<f64>,
    /// Answer section.
    pub answers: Vec<AnswerRecord>,
    /// The answer had TC set: the client should retry over TCP.
    pub truncated: bool,
    /// This TCP query follows a truncated UDP answer for the same question.
    pub after_truncated: bool,
    /// How many times the query was sent again (same id, client, server, question).
    pub retries: u32,
    /// Upstream queries a resolver made for this lookup.
    pub upstream: Vec<UpstreamLeg>,
    /// Set on a resolver's own upstream query: the client lookup it served.
    pub on_behalf_of: Option<SocketAddr>,
    /// The ICMP error that ended the lookup ("port unreachable"...), for status unreachable.
    pub icmp: Option<String>,
    /// Every place the lookup was seen, nearest the client first; the fields above are those of
    /// the first hop (what the client saw).
    pub hops: Vec<Hop>,
    /// The question, as pairing compares it (joins sightings across namespaces).
    #[serde(skip)]
    pub(crate) question: Option<QKey>,
    /// The interface the first query was seen on (an ifindex of the capture's namespace).
    #[serde(skip)]
    pub(crate) ifindex: Option<i32>,
}

/// The question part of the key (name compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct QKey {
    name: String,
    qtype: u16,
    qclass: u16,
}

/// The pairing key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    client: SocketAddr,
    server: SocketAddr,
    transport: Transport,
    id: u16,
    q: Option<QKey>,
}

#[derive(Debug)]
struct Pending {
    first: Duration,
    last: Duration,
    name: String,
    qtype: String,
    retries: u32,
    server_real: Option<SocketAddr>,
    after_truncated: bool,
    upstream: Vec<UpstreamLeg>,
    parent: Option<Key>,
    ifindex: Option<i32>,
}

/// What a DNS message said, as far as pairing cares.
#[derive(Debug)]
struct Parsed {
    id: u16,
    response: bool,
    truncated: bool,
    rcode: u16,
    question: Option<(QKey, String, String)>,
    answers: Vec<AnswerRecord>,
}

/// Counters a run reports at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PairStats {
    /// Queries seen (retries included).
    pub queries: u64,
    /// Answers seen.
    pub answers: u64,
    /// Answers that arrived after their lookup was already answered (a retry answered twice).
    pub duplicate_answers: u64,
    /// DNS payloads that did not parse.
    pub malformed: u64,
    /// Lookups seen here (one lookup seen in three namespaces is a sighting in each).
    pub sightings: u64,
}

/// The conventional mnemonic of an rcode.
pub(crate) fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        23 => "BADCOOKIE",
        n => return format!("RCODE{n}"),
    }
    .to_string()
}

fn trim_dot(s: String) -> String {
    match s.strip_suffix('.') {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => s,
    }
}

fn question_of(q: &Query) -> (QKey, String, String) {
    let name = trim_dot(q.name().to_string());
    (
        QKey {
            name: name.to_ascii_lowercase(),
            qtype: u16::from(q.query_type()),
            qclass: u16::from(q.query_class),
        },
        name,
        q.query_type().to_string(),
    )
}

fn answer_of(r: &Record) -> AnswerRecord {
    let data = match &r.data {
        RData::A(a) => a.to_string(),
        RData::AAAA(a) => a.to_string(),
        other => {
            let s = other.to_string();
            // Names in rdata print fully qualified; drop the final dot as for the question.
            s.strip_suffix('.').map(str::to_string).unwrap_or(s)
        }
    };
    AnswerRecord {
        name: trim_dot(r.name.to_string()),
        rtype: r.record_type().to_string(),
        ttl: r.ttl,
        data,
    }
}

fn parse(payload: &[u8]) -> Option<Parsed> {
    if payload.len() < 12 {
        return None;
    }
    // The header by hand: it survives a message hickory refuses (a truncated answer cut
    // mid-record still pairs).
    let id = u16::from_be_bytes([payload[0], payload[1]]);
    let flags = u16::from_be_bytes([payload[2], payload[3]]);
    let response = flags & 0x8000 != 0;
    let truncated = flags & 0x0200 != 0;
    match Message::from_vec(payload) {
        Ok(m) => Some(Parsed {
            id,
            response: m.metadata.message_type == MessageType::Response,
            truncated: m.metadata.truncation,
            rcode: u16::from(m.metadata.response_code),
            question: m.queries.first().map(question_of),
            answers: m.answers.iter().map(answer_of).collect(),
        }),
        Err(_) => {
            let qdcount = u16::from_be_bytes([payload[4], payload[5]]);
            let question = if qdcount > 0 {
                let mut d = BinDecoder::new(&payload[12..]);
                Some(question_of(&Query::read(&mut d).ok()?))
            } else {
                None
            };
            Some(Parsed {
                id,
                response,
                truncated,
                rcode: flags & 0x000f,
                question,
                answers: Vec::new(),
            })
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Pairs the DNS messages of one capture point (one namespace).
#[derive(Debug)]
pub struct Pairer {
    label: String,
    timeout: Duration,
    /// (transport, real server) -> the server as clients address it.
    aliases: HashMap<(Transport, SocketAddr), SocketAddr>,
    pending: HashMap<Key, Pending>,
    by_question: HashMap<QKey, Vec<Key>>,
    /// (client ip, server ip, question) -> when a truncated answer was seen.
    truncated: HashMap<(std::net::IpAddr, std::net::IpAddr, QKey), Duration>,
    /// Keys answered recently, to recognise a second answer to a retried query.
    answered: HashMap<Key, Duration>,
    /// A query retried from a new port or id: its key -> the retry's key (and when).
    folded: HashMap<Key, (Key, Duration)>,
    /// (client ip, server, question) -> when it was last asked.
    last_asked: HashMap<(std::net::IpAddr, SocketAddr, QKey), Duration>,
    last_prune: Duration,
    /// The interface the message being fed was seen on.
    ifindex: Option<i32>,
    out: Vec<Lookup>,
    /// Counters.
    pub stats: PairStats,
}

/// How long a TC answer is remembered for linking the TCP retry, and an answered key for
/// recognising duplicate answers.
const MEMORY: Duration = Duration::from_secs(10);

/// A second query for the same question from the same client address to the same server is
/// a retry (dig and many stubs retry from a new port) when the first went unanswered this
/// long; sooner, it is a parallel lookup (a load generator, two processes).
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// A query ends as a timeout this long after `--timeout`. Clients retry on whole-second timers
/// (dig, busybox, glibc): with a wait of whole seconds, a retry sent right at it would race the
/// 100 ms expiry ticks, folding into the first attempt in one namespace and not in the next, and
/// the copies of one lookup would no longer join (tests/image.rs saw it). Half a second away
/// from the retry timers, every capture point decides alike.
const EXPIRY_SLACK: Duration = Duration::from_millis(500);

impl Pairer {
    /// A pairer labelling its lookups with `label`; queries unanswered after `timeout` end as timeouts.
    pub fn new(label: &str, timeout: Duration) -> Self {
        Pairer {
            label: label.to_string(),
            timeout,
            aliases: HashMap::new(),
            pending: HashMap::new(),
            by_question: HashMap::new(),
            truncated: HashMap::new(),
            answered: HashMap::new(),
            folded: HashMap::new(),
            last_asked: HashMap::new(),
            last_prune: Duration::ZERO,
            ifindex: None,
            out: Vec::new(),
            stats: PairStats::default(),
        }
    }

    /// Show `real` (where packets go after DNAT) as `shown` (what the client asked).
    pub fn alias(&mut self, transport: Transport, real: SocketAddr, shown: SocketAddr) {
        self.aliases.insert((transport, real), shown);
    }

    fn unalias(&self, transport: Transport, addr: SocketAddr) -> (SocketAddr, Option<SocketAddr>) {
        match self.aliases.get(&(transport, addr)) {
            Some(shown) => (*shown, Some(addr)),
            None => (addr, None),
        }
    }

    /// The interface the next messages were seen on (an ifindex of the capture's namespace).
    pub fn set_interface(&mut self, ifindex: Option<i32>) {
        self.ifindex = ifindex;
    }

    /// Is a query for question `q` from `client` still waiting for its answer here?
    pub(crate) fn has_pending_from(&self, q: &QKey, client: SocketAddr) -> bool {
        self.by_question
            .get(q)
            .is_some_and(|keys| keys.iter().any(|k| k.client == client))
    }

    /// Is a query for question `q` with `id` over `transport` still waiting for its answer here?
    pub(crate) fn has_pending(&self, q: &QKey, id: u16, transport: Transport) -> bool {
        self.by_question
            .get(q)
            .is_some_and(|keys| keys.iter().any(|k| k.id == id && k.transport == transport))
    }

    /// Feed one DNS message seen at `ts` from `src` to `dst`.
    pub fn message(
        &mut self,
        ts: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        transport: Transport,
        payload: &[u8],
    ) {
        let Some(p) = parse(payload) else {
            tracing::debug!(%src, %dst, len = payload.len(), head = ?&payload[..payload.len().min(16)], "not a DNS message");
            self.stats.malformed += 1;
            return;
        };
        if p.response {
            self.answer(ts, src, dst, transport, p);
        } else {
            self.query(ts, src, dst, transport, p);
        }
    }

    fn query(
        &mut self,
        ts: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        transport: Transport,
        p: Parsed,
    ) {
        self.stats.queries += 1;
        let (server, server_real) = self.unalias(transport, dst);
        let (qkey, name, qtype) = match p.question {
            Some((k, n, t)) => (Some(k), n, t),
            None => (None, String::new(), String::new()),
        };
        let key = Key {
            client: src,
            server,
            transport,
            id: p.id,
            q: qkey.clone(),
        };
        let asked_before = qkey
            .as_ref()
            .and_then(|q| self.last_asked.insert((src.ip(), server, q.clone()), ts));
        if let Some(pend) = self.pending.get_mut(&key) {
            pend.retries += 1;
            pend.last = ts;
            return;
        }
        // A retry from a new port or with a new id: fold the earlier attempt into this one.
        let earlier = qkey.as_ref().and_then(|q| {
            self.by_question.get(q).and_then(|keys| {
                keys.iter()
                    .filter(|k| {
                        k.client.ip() == src.ip() && k.server == server && k.transport == transport
                    })
                    .filter_map(|k| self.pending.get(k).map(|p| (k, p.last)))
                    // Nothing else asked this question in between (a load generator asks
                    // the same name all the time; a retrying client does not).
                    .filter(|(_, last)| {
                        ts.saturating_sub(*last) >= RETRY_AFTER && Some(*last) == asked_before
                    })
                    .max_by_key(|(_, last)| *last)
                    .map(|(k, _)| k.clone())
            })
        });
        if let Some(old) = earlier {
            if let Some(mut pend) = self.forget(&old) {
                pend.retries += 1;
                pend.last = ts;
                self.folded.insert(old, (key.clone(), ts));
                if let Some(q) = &qkey {
                    self.by_question
                        .entry(q.clone())
                        .or_default()
                        .push(key.clone());
                }
                self.pending.insert(key, pend);
                return;
            }
        }
        let after_truncated = transport == Transport::Tcp
            && qkey.as_ref().is_some_and(|q| {
                self.truncated
                    .get(&(src.ip(), server.ip(), q.clone()))
                    .is_some_and(|t| ts.saturating_sub(*t) <= MEMORY)
            });
        // A resolver forwarding a question it was just asked: link to the client's lookup.
        // Only when that client is known: a forward with the client's own id (Docker's
        // resolver and the lab's forward the query as is) picks that client; otherwise there
        // must be one client waiting. Two clients asking the same question at once stay
        // unlinked rather than linked to the wrong one.
        let parent = qkey.as_ref().and_then(|q| {
            let waiting: Vec<&Key> = self
                .by_question
                .get(q)?
                .iter()
                .filter(|k| k.client != src && k.server != server && k.client.ip() != src.ip())
                .filter(|k| self.pending.contains_key(*k))
                .collect();
            let same_id: Vec<&Key> = waiting.iter().copied().filter(|k| k.id == p.id).collect();
            match (same_id.as_slice(), waiting.as_slice()) {
                ([one], _) | ([], [one]) => Some((*one).clone()),
                _ => None,
            }
        });
        if let Some(parent_key) = &parent {
            if let Some(pp) = self.pending.get_mut(parent_key) {
                pp.upstream.push(UpstreamLeg {
                    from: src,
                    server,
                    transport,
                    rcode: None,
                    latency_ms: None,
                    hops: Vec::new(),
                });
            }
        }
        if let Some(q) = &qkey {
            self.by_question
                .entry(q.clone())
                .or_default()
                .push(key.clone());
        }
        self.pending.insert(
            key,
            Pending {
                first: ts,
                last: ts,
                name,
                qtype,
                retries: 0,
                server_real,
                after_truncated,
                upstream: Vec::new(),
                parent,
                ifindex: self.ifindex,
            },
        );
    }

    fn forget(&mut self, key: &Key) -> Option<Pending> {
        let pend = self.pending.remove(key)?;
        if let Some(q) = &key.q {
            if let Some(v) = self.by_question.get_mut(q) {
                v.retain(|k| k != key);
                if v.is_empty() {
                    self.by_question.remove(q);
                }
            }
        }
        Some(pend)
    }

    fn answer(
        &mut self,
        ts: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        transport: Transport,
        p: Parsed,
    ) {
        self.stats.answers += 1;
        let (server, server_real) = self.unalias(transport, src);
        let (qkey, name, qtype) = match p.question {
            Some((k, n, t)) => (Some(k), n, t),
            None => (None, String::new(), String::new()),
        };
        let mut key = Key {
            client: dst,
            server,
            transport,
            id: p.id,
            q: qkey.clone(),
        };
        if key.q.is_none() && !self.pending.contains_key(&key) {
            // Some servers drop the question from error answers: pair on the rest of the key.
            if let Some(k) = self.pending.keys().find(|k| {
                k.client == key.client
                    && k.server == key.server
                    && k.id == key.id
                    && k.transport == transport
            }) {
                key = k.clone();
            }
        }
        let rcode = rcode_name(p.rcode);
        if !self.pending.contains_key(&key) {
            // The answer to an attempt that was retried meanwhile ends the whole lookup.
            if let Some((newer, _)) = self.folded.get(&key) {
                if self.pending.contains_key(newer) {
                    key = newer.clone();
                }
            }
        }
        // A query DNATed to another port of the same address (Docker's 127.0.0.11:53 ->
        // 127.0.0.11:PORT when the rules were not known, e.g. reading a pcap): the answer comes
        // from the address the client asked.
        let mut dnat_real = None;
        if !self.pending.contains_key(&key) {
            if let Some(k) = self
                .pending
                .keys()
                .find(|k| {
                    k.client == key.client
                        && k.id == key.id
                        && k.q == key.q
                        && k.transport == transport
                        && k.server.ip() == key.server.ip()
                        && k.server.port() != key.server.port()
                })
                .cloned()
            {
                dnat_real = Some(k.server);
                key = k;
            }
        }
        let Some(pend) = self.forget(&key) else {
            if self
                .answered
                .get(&key)
                .is_some_and(|t| ts.saturating_sub(*t) <= MEMORY)
            {
                self.stats.duplicate_answers += 1;
                return;
            }
            self.out.push(Lookup {
                time: secs(ts),
                netns: self.label.clone(),
                client: dst,
                server,
                server_real,
                transport,
                id: p.id,
                name,
                qtype,
                status: Status::AnswerOnly,
                rcode: Some(rcode),
                latency_ms: None,
                answers: p.answers,
                truncated: p.truncated,
                after_truncated: false,
                retries: 0,
                upstream: Vec::new(),
                on_behalf_of: None,
                icmp: None,
                hops: Vec::new(),
                question: qkey,
                ifindex: self.ifindex,
            });
            return;
        };
        let latency = ts.saturating_sub(pend.first);
        if p.truncated {
            if let Some(q) = &key.q {
                self.truncated
                    .insert((dst.ip(), server.ip(), q.clone()), ts);
            }
        }
        // Tell the client's lookup how its upstream leg went.
        let mut on_behalf_of = None;
        if let Some(parent) = &pend.parent {
            on_behalf_of = Some(parent.client);
            if let Some(pp) = self.pending.get_mut(parent) {
                if let Some(leg) = pp
                    .upstream
                    .iter_mut()
                    .find(|l| l.from == dst && l.server == server && l.rcode.is_none())
                {
                    leg.rcode = Some(rcode.clone());
                    leg.latency_ms = Some(ms(latency));
                }
            }
        }
        self.answered.insert(key.clone(), ts);
        self.out.push(Lookup {
            time: secs(pend.first),
            netns: self.label.clone(),
            client: dst,
            server,
            server_real: server_real.or(pend.server_real).or(dnat_real),
            transport,
            id: p.id,
            name: pend.name,
            qtype: pend.qtype,
            status: Status::Answered,
            rcode: Some(rcode),
            latency_ms: Some(ms(latency)),
            answers: p.answers,
            truncated: p.truncated,
            after_truncated: pend.after_truncated,
            retries: pend.retries,
            upstream: pend.upstream,
            on_behalf_of,
            icmp: None,
            hops: Vec::new(),
            question: key.q,
            ifindex: pend.ifindex,
        });
    }

    /// End every query unanswered for longer than the wait as a timeout (call it as time passes).
    pub fn expire(&mut self, now: Duration) {
        let late: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.last) >= self.timeout + EXPIRY_SLACK)
            .map(|(k, _)| k.clone())
            .collect();
        let mut late: Vec<(Key, Pending)> = late
            .into_iter()
            .filter_map(|k| self.forget(&k).map(|p| (k, p)))
            .collect();
        late.sort_by_key(|(_, p)| p.first);
        for (k, p) in late {
            self.push_unanswered(k, p, Status::Timeout);
        }
        if now.saturating_sub(self.last_prune) > Duration::from_secs(1) {
            self.truncated
                .retain(|_, t| now.saturating_sub(*t) <= MEMORY);
            self.answered
                .retain(|_, t| now.saturating_sub(*t) <= MEMORY);
            self.last_prune = now;
        }
    }

    /// The capture is over: end what is still pending (timeouts when the wait has passed).
    pub fn finish(&mut self, now: Duration) {
        self.expire(now);
        let keys: Vec<Key> = self.pending.keys().cloned().collect();
        let mut rest: Vec<(Key, Pending)> = keys
            .into_iter()
            .filter_map(|k| self.forget(&k).map(|p| (k, p)))
            .collect();
        rest.sort_by_key(|(_, p)| p.first);
        for (k, p) in rest {
            self.push_unanswered(k, p, Status::Unanswered);
        }
    }

    /// An ICMP error quoting a query from `client` to `server`: that lookup ends unreachable.
    pub fn unreachable(
        &mut self,
        ts: Duration,
        client: SocketAddr,
        server: SocketAddr,
        reason: &str,
        quoted: &[u8],
    ) {
        let (server, _) = self.unalias(Transport::Udp, server);
        // The quote may be cut short: the header and question are enough for the key.
        let id = match quoted {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            _ => return,
        };
        let q = parse(quoted).and_then(|p| p.question).map(|(k, _, _)| k);
        let mut key = Key {
            client,
            server,
            transport: Transport::Udp,
            id,
            q,
        };
        if !self.pending.contains_key(&key) {
            let Some(k) = self
                .pending
                .keys()
                .find(|k| {
                    k.client == client
                        && k.id == id
                        && k.transport == Transport::Udp
                        && k.server.ip() == server.ip()
                })
                .cloned()
            else {
                return;
            };
            key = k;
        }
        let Some(p) = self.forget(&key) else { return };
        let latency = ts.saturating_sub(p.first);
        let mut l = self.unanswered_lookup(key, p, Status::Unreachable);
        l.latency_ms = Some(ms(latency));
        l.icmp = Some(reason.to_string());
        self.out.push(l);
    }

    fn push_unanswered(&mut self, k: Key, p: Pending, status: Status) {
        let l = self.unanswered_lookup(k, p, status);
        self.out.push(l);
    }

    fn unanswered_lookup(&self, k: Key, p: Pending, status: Status) -> Lookup {
        Lookup {
            time: secs(p.first),
            netns: self.label.clone(),
            client: k.client,
            server: k.server,
            server_real: p.server_real,
            transport: k.transport,
            id: k.id,
            name: p.name,
            qtype: p.qtype,
            status,
            rcode: None,
            latency_ms: None,
            answers: Vec::new(),
            truncated: false,
            after_truncated: p.after_truncated,
            retries: p.retries,
            upstream: p.upstream,
            on_behalf_of: p.parent.map(|k| k.client),
            icmp: None,
            hops: Vec::new(),
            question: k.q,
            ifindex: p.ifindex,
        }
    }

    /// Queries still waiting for an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Take the lookups completed since the last call.
    pub fn drain(&mut self) -> Vec<Lookup> {
        self.stats.sightings += self.out.len() as u64;
        std::mem::take(&mut self.out)
    }
}

/// Per-name figures for the end-of-run summary.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NameSummary {
    /// Question name.
    pub name: String,
    /// Lookups.
    pub count: u64,
    /// Lookups that did not end NOERROR (timeouts included).
    pub errors: u64,
    /// Median latency in ms over answered lookups.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in ms.
    pub p99_ms: Option<f64>,
    /// The server with the slowest answer for this name.
    pub slowest_server: Option<SocketAddr>,
    /// That answer's latency in ms.
    pub slowest_ms: Option<f64>,
}

/// Accumulates lookups into per-name figures.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    names: HashMap<String, NameAcc>,
}

/// Running figures for one name: count, errors, latencies, slowest (ms, server).
#[derive(Debug, Default)]
struct NameAcc(u64, u64, Vec<f64>, Option<(f64, SocketAddr)>);

impl Summary {
    /// Count one lookup.
    pub(crate) fn add(&mut self, l: &Lookup) {
        let e = self.names.entry(l.name.clone()).or_default();
        e.0 += 1;
        if l.rcode.as_deref() != Some("NOERROR") {
            e.1 += 1;
        }
        // Latency figures are about answers (an ICMP error's quick return would flatter them).
        if let Some(ms) = l.latency_ms.filter(|_| l.status == Status::Answered) {
            e.2.push(ms);
            if e.3.is_none_or(|(worst, _)| ms > worst) {
                e.3 = Some((ms, l.server));
            }
        }
    }

    /// Rows sorted by count (most asked first), then name.
    pub(crate) fn rows(&self) -> Vec<NameSummary> {
        let mut rows: Vec<NameSummary> = self
            .names
            .iter()
            .map(|(name, NameAcc(count, errors, lat, slowest))| {
                let mut v = lat.clone();
                v.sort_by(f64::total_cmp);
                // Nearest rank: the smallest value with at least p% of the samples at or below it.
                let pct =
                    |p: usize| (!v.is_empty()).then(|| v[(v.len() * p).div_ceil(100).max(1) - 1]);
                NameSummary {
                    name: name.clone(),
                    count: *count,
                    errors: *errors,
                    p50_ms: pct(50),
                    p99_ms: pct(99),
                    slowest_server: slowest.map(|s| s.1),
                    slowest_ms: slowest.map(|s| s.0),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn answer(id: u16, name: &str, tc: bool) -> Vec<u8> {
        let mut m = Message::response(id, hickory_proto::op::OpCode::Query);
        m.metadata.truncation = tc;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn pairs_retries_duplicates_and_timeouts() {
        let c1: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let c2: SocketAddr = "10.0.0.3:4000".parse().unwrap();
        let s: SocketAddr = "10.0.0.1:53".parse().unwrap();
        let mut p = Pairer::new("ns", Duration::from_secs(2));
        p.message(t(1000), c1, s, Transport::Udp, &query(7, "a.test."));
        p.message(t(1001), c2, s, Transport::Udp, &query(7, "a.test."));
        p.message(t(1500), c1, s, Transport::Udp, &query(7, "a.test."));
        p.message(t(1502), s, c2, Transport::Udp, &answer(7, "a.test.", false));
        p.message(t(1503), s, c1, Transport::Udp, &answer(7, "a.test.", false));
        p.message(t(1504), s, c1, Transport::Udp, &answer(7, "a.test.", false));
        p.message(t(2000), c1, s, Transport::Udp, &query(8, "b.test."));
        p.expire(t(4100));
        let mut out = p.drain();
        assert_eq!(
            out.len(),
            2,
            "b.test still waits (the expiry slack): {out:#?}"
        );
        p.expire(t(4600));
        out.extend(p.drain());
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(out[0].client, c2);
        assert_eq!(out[0].latency_ms, Some(501.0));
        assert_eq!(out[1].client, c1);
        assert_eq!(out[1].retries, 1);
        assert_eq!(out[2].status, Status::Timeout);
        assert_eq!(out[2].name, "b.test");
        assert_eq!(p.stats.duplicate_answers, 1);
    }

    #[test]
    fn retry_from_a_new_port_is_one_lookup() {
        let c1: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let c2: SocketAddr = "10.0.0.2:4001".parse().unwrap();
        let s: SocketAddr = "10.0.0.1:53".parse().unwrap();
        let mut p = Pairer::new("ns", Duration::from_secs(2));
        // Parallel queries for one name (a load generator) stay separate.
        p.message(t(0), c1, s, Transport::Udp, &query(1, "a.test."));
        p.message(t(1), c2, s, Transport::Udp, &query(2, "a.test."));
        p.message(t(2), s, c1, Transport::Udp, &answer(1, "a.test.", false));
        p.message(t(3), s, c2, Transport::Udp, &answer(2, "a.test.", false));
        assert_eq!(p.drain().len(), 2);
        // A retry a second later from a new port and id folds into the first attempt.
        p.message(t(1000), c1, s, Transport::Udp, &query(5, "b.test."));
        p.message(t(2000), c2, s, Transport::Udp, &query(6, "b.test."));
        p.message(t(2010), s, c2, Transport::Udp, &answer(6, "b.test.", false));
        let out = p.drain();
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].retries, 1);
        assert_eq!(out[0].latency_ms, Some(1010.0));
        p.expire(t(9000));
        assert!(p.drain().is_empty());
        // A lost query followed by other queries for the same name is a timeout, not a retry.
        p.message(t(10_000), c1, s, Transport::Udp, &query(7, "c.test."));
        p.message(t(10_001), c2, s, Transport::Udp, &query(8, "c.test."));
        p.message(
            t(10_002),
            s,
            c2,
            Transport::Udp,
            &answer(8, "c.test.", false),
        );
        p.message(t(10_500), c2, s, Transport::Udp, &query(9, "c.test."));
        p.message(
            t(10_502),
            s,
            c2,
            Transport::Udp,
            &answer(9, "c.test.", false),
        );
        p.expire(t(13_000));
        let out = p.drain();
        assert_eq!(out.len(), 3, "{out:#?}");
        assert!(out.iter().all(|l| l.retries == 0));
        assert_eq!(out[2].status, Status::Timeout);
    }

    #[test]
    fn tcp_retry_after_truncation_is_linked() {
        let c: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let ct: SocketAddr = "10.0.0.2:4001".parse().unwrap();
        let s: SocketAddr = "10.0.0.1:53".parse().unwrap();
        let mut p = Pairer::new("ns", Duration::from_secs(2));
        p.message(t(0), c, s, Transport::Udp, &query(1, "big.test."));
        p.message(t(1), s, c, Transport::Udp, &answer(1, "big.test.", true));
        p.message(t(2), ct, s, Transport::Tcp, &query(2, "big.test."));
        p.message(t(3), s, ct, Transport::Tcp, &answer(2, "big.test.", false));
        let out = p.drain();
        assert!(out[0].truncated && !out[0].after_truncated);
        assert!(!out[1].truncated && out[1].after_truncated);
    }

    #[test]
    fn docker_alias_and_upstream_leg() {
        let c: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let real: SocketAddr = "127.0.0.11:41000".parse().unwrap();
        let shown: SocketAddr = "127.0.0.11:53".parse().unwrap();
        let fwd: SocketAddr = "172.18.0.2:5000".parse().unwrap();
        let up: SocketAddr = "10.0.0.1:53".parse().unwrap();
        let mut p = Pairer::new("ns", Duration::from_secs(2));
        p.alias(Transport::Udp, real, shown);
        p.message(t(0), c, real, Transport::Udp, &query(1, "x.test."));
        p.message(t(1), fwd, up, Transport::Udp, &query(9, "x.test."));
        p.message(t(3), up, fwd, Transport::Udp, &answer(9, "x.test.", false));
        p.message(t(4), shown, c, Transport::Udp, &answer(1, "x.test.", false));
        let out = p.drain();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].on_behalf_of, Some(c));
        assert_eq!(out[1].server, shown);
        assert_eq!(out[1].server_real, Some(real));
        assert_eq!(out[1].upstream.len(), 1);
        assert_eq!(out[1].upstream[0].latency_ms, Some(2.0));
    }

    #[test]
    fn unknown_dnat_port_pairs_by_address() {
        let c: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let real: SocketAddr = "127.0.0.11:41000".parse().unwrap();
        let shown: SocketAddr = "127.0.0.11:53".parse().unwrap();
        let mut p = Pairer::new("f", Duration::from_secs(2));
        p.message(t(0), c, real, Transport::Udp, &query(3, "y.test."));
        p.message(t(1), shown, c, Transport::Udp, &answer(3, "y.test.", false));
        let out = p.drain();
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].server, shown);
        assert_eq!(out[0].server_real, Some(real));
        assert_eq!(out[0].status, Status::Answered);
    }

    #[test]
    fn garbage_does_not_panic() {
        let a: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let mut p = Pairer::new("ns", Duration::from_secs(2));
        for n in 0..80u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(91) ^ 0x80).collect();
            p.message(t(0), a, a, Transport::Udp, &data);
        }
        p.finish(t(10));
    }
}
