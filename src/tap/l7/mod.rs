//! L7 decoding of a byte stream (or datagrams): HTTP/1.x, TLS ClientHello, DNS, Redis RESP.
//!
//! Each direction of each connection gets a [`StreamDecoder`] that sniffs the protocol from the
//! first bytes (and the port: 53 is DNS), then parses incrementally. Decoders never fail the
//! dump: input they cannot parse switches them off for that stream.

pub mod dns;
pub mod http;
pub mod resp;
pub mod tls;

use serde::Serialize;

use super::event::{ConnInfo, Direction, Transport};

/// Something a decoder recognised.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "proto", rename_all = "snake_case")]
pub enum L7Event {
    /// An HTTP request or response head.
    HttpHead(http::HttpHead),
    /// The end of an HTTP message body.
    HttpBody(http::HttpBody),
    /// A TLS ClientHello.
    TlsClientHello(tls::ClientHello),
    /// A DNS message.
    Dns(dns::DnsMessage),
    /// A Redis command or reply.
    Resp(resp::RespValue),
    /// A decoder reached one of its caps: decoding stops for this connection (forwarding,
    /// payload dumps, pcap and streams go on).
    Stopped(Stopped),
}

/// Why decoding stopped for a connection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stopped {
    /// The cap that was reached, e.g. "an HTTP chunked trailer over 64 KiB".
    pub reason: String,
}

impl L7Event {
    /// One or more `# ...` lines for the text and hex dumps.
    pub fn lines(&self) -> Vec<String> {
        match self {
            L7Event::HttpHead(h) => h.lines(),
            L7Event::HttpBody(b) => vec![b.line()],
            L7Event::TlsClientHello(t) => vec![t.line()],
            L7Event::Dns(d) => d.lines(),
            L7Event::Resp(r) => vec![r.line()],
            L7Event::Stopped(s) => vec![format!(
                "decoding stopped for this connection ({}); forwarding goes on",
                s.reason
            )],
        }
    }
}

enum State {
    Sniff(Vec<u8>),
    Http(http::HttpDecoder),
    Tls(tls::TlsDecoder),
    DnsTcp(dns::TcpFramer),
    DnsUdp,
    Resp(resp::RespDecoder),
    Off,
}

/// The decoder for one direction of one connection.
pub struct StreamDecoder {
    state: State,
    dir: Direction,
    /// Server side of HTTP: whether each request not yet answered was a HEAD.
    head_requests: std::collections::VecDeque<bool>,
}

fn is_dns_port(c: &ConnInfo) -> bool {
    c.listen.port() == 53 || c.backend.port() == 53
}

impl StreamDecoder {
    /// A decoder for `dir` of `conn`.
    pub fn new(conn: &ConnInfo, dir: Direction) -> Self {
        let state = match (conn.transport, is_dns_port(conn)) {
            (Transport::Udp, true) => State::DnsUdp,
            (Transport::Udp, false) => State::Sniff(Vec::new()),
            (Transport::Tcp, true) => State::DnsTcp(dns::TcpFramer::default()),
            (Transport::Tcp, false) => State::Sniff(Vec::new()),
        };
        StreamDecoder {
            state,
            dir,
            head_requests: Default::default(),
        }
    }

    /// Feed the next bytes (a TCP read or one UDP datagram).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<L7Event> {
        if let State::Sniff(buf) = &mut self.state {
            buf.extend_from_slice(bytes);
            let buf = std::mem::take(buf);
            self.state = sniff(&buf, self.dir);
            return match &self.state {
                State::Sniff(_) => {
                    self.state = State::Sniff(buf);
                    Vec::new()
                }
                _ => self.feed_known(&buf),
            };
        }
        self.feed_known(bytes)
    }

    fn feed_known(&mut self, bytes: &[u8]) -> Vec<L7Event> {
        let dir = self.dir;
        match &mut self.state {
            State::Http(d) => d.feed_answering(bytes, &mut self.head_requests),
            State::Tls(d) => d.feed(bytes),
            State::DnsTcp(f) => f
                .feed(bytes)
                .into_iter()
                .filter_map(|m| dns::decode(&m).map(L7Event::Dns))
                .collect(),
            State::DnsUdp => dns::decode(bytes).map(L7Event::Dns).into_iter().collect(),
            State::Resp(d) => d.feed_dir(bytes, dir),
            State::Sniff(_) | State::Off => Vec::new(),
        }
    }

    /// The other direction sent these HTTP requests: whether each is a HEAD (its response
    /// carries no body). Kept at most 1024 deep (a client pipelining without end).
    pub fn requests_sent(&mut self, heads: impl IntoIterator<Item = bool>) {
        for h in heads {
            if self.head_requests.len() < 1024 {
                self.head_requests.push_back(h);
            }
        }
    }

    /// The stream ended: report a body that ran until close.
    pub fn finish(&mut self) -> Vec<L7Event> {
        match &mut self.state {
            State::Http(d) => d.finish(),
            _ => Vec::new(),
        }
    }
}

/// Pick the protocol from the first bytes; stay in Sniff while too few bytes arrived.
fn sniff(buf: &[u8], dir: Direction) -> State {
    if buf.is_empty() {
        return State::Sniff(Vec::new());
    }
    if http::looks_like_http(buf, dir) {
        return State::Http(http::HttpDecoder::new(dir));
    }
    if buf.len() < 5 && http::could_be_http(buf) {
        return State::Sniff(buf.to_vec());
    }
    if buf[0] == 0x16 && buf.len() >= 2 && buf[1] == 0x03 {
        return if dir == Direction::ClientToServer {
            State::Tls(tls::TlsDecoder::default())
        } else {
            State::Off
        };
    }
    if resp::looks_like_resp(buf, dir) {
        return State::Resp(resp::RespDecoder::default());
    }
    State::Off
}

/// One fuzz input through every L7 decoder (the cargo-fuzz target `l7_decoders` and the stable
/// replay in `cargo test` call it): the first byte picks where the input is cut into reads, the
/// rest is fed to HTTP (both directions), TLS, RESP (both directions) and DNS over TCP. No
/// input may panic, and no decoder may hold more than its caps.
pub fn fuzz_one(data: &[u8]) {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let mut http_c = http::HttpDecoder::new(Direction::ClientToServer);
    let mut http_s = http::HttpDecoder::new(Direction::ServerToClient);
    let mut heads: std::collections::VecDeque<bool> = [true, false, true].into();
    let mut tls = tls::TlsDecoder::default();
    let mut resp_c = resp::RespDecoder::default();
    let mut resp_s = resp::RespDecoder::default();
    let mut framer = dns::TcpFramer::default();
    for chunk in data.chunks(step) {
        let _ = http_c.feed(chunk);
        let _ = http_s.feed_answering(chunk, &mut heads);
        let _ = tls.feed(chunk);
        let _ = resp_c.feed_dir(chunk, Direction::ClientToServer);
        let _ = resp_s.feed_dir(chunk, Direction::ServerToClient);
        for m in framer.feed(chunk) {
            if let Some(d) = dns::decode(&m) {
                let _ = d.lines();
            }
        }
    }
    let _ = http_c.finish();
    let _ = http_s.finish();
    let _ = dns::decode(data);
    let _ = tls::parse_client_hello(data);
}

#[cfg(test)]
mod fuzz_replay {
    /// The fuzz target's body on stable: structured seeds and a bounded pseudo-random loop of
    /// mutations (cargo-fuzz runs the same body for real; see docs/proxy.md).
    #[test]
    fn l7_decoders_survive_seeds_and_mutations() {
        let seeds: [&[u8]; 6] = [
            b"\x03GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            b"\x01HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 204 No\r\n\r\n",
            b"\x07*3\r\n$3\r\nSET\r\n$1\r\nk\r\n%1\r\n+a\r\n:1\r\n",
            b"\x02\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x03\x03",
            b"\x05\x00\x0c\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
            b"\x09*9999999999\r\n$-5\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in seeds {
            super::fuzz_one(seed);
            for _ in 0..300 {
                let mut v = seed.to_vec();
                for _ in 0..(next() % 8 + 1) {
                    let r = next() as usize;
                    match r % 4 {
                        0 if !v.is_empty() => {
                            let i = r / 4 % v.len();
                            v[i] = (next() & 0xff) as u8;
                        }
                        1 => v.insert(r / 4 % (v.len() + 1), (next() & 0xff) as u8),
                        2 if !v.is_empty() => {
                            v.remove(r / 4 % v.len());
                        }
                        _ => {
                            let extra = v.clone();
                            v.extend_from_slice(&extra[..extra.len().min(64)]);
                        }
                    }
                }
                super::fuzz_one(&v);
            }
        }
    }
}
