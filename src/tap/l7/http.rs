//! HTTP/1.x: request and response heads, body sizes (Content-Length, chunked, until close).

use serde::Serialize;

use super::L7Event;
use crate::tap::event::Direction;

const METHODS: &[&str] = &[
    "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ",
];
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (with its extensions).
const MAX_CHUNK_LINE: usize = 1024;

fn stopped(reason: String) -> L7Event {
    L7Event::Stopped(super::Stopped { reason })
}

/// True when the stream starts like an HTTP/1.x request (c2s) or response (s2c).
pub fn looks_like_http(buf: &[u8], dir: Direction) -> bool {
    match dir {
        Direction::ClientToServer => METHODS.iter().any(|m| buf.starts_with(m.as_bytes())),
        Direction::ServerToClient => buf.starts_with(b"HTTP/1."),
    }
}

/// True while `buf` is a prefix of something HTTP could start with (wait for more bytes).
pub fn could_be_http(buf: &[u8]) -> bool {
    METHODS
        .iter()
        .map(|m| m.as_bytes())
        .chain(std::iter::once(&b"HTTP/1."[..]))
        .any(|m| m.starts_with(buf))
}

/// A request or response line with its headers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HttpHead {
    /// "request" or "response".
    pub kind: &'static str,
    /// The first line, as sent.
    pub start_line: String,
    /// Request method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Response status code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
}

impl HttpHead {
    /// Dump lines.
    pub fn lines(&self) -> Vec<String> {
        let mut v = vec![format!("http {}: {}", self.kind, self.start_line)];
        v.extend(self.headers.iter().map(|(k, val)| format!("  {k}: {val}")));
        v
    }
}

/// The end of a message body.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HttpBody {
    /// "request" or "response".
    pub kind: &'static str,
    /// Body bytes (chunk payload only, for chunked bodies).
    pub bytes: u64,
    /// Chunked transfer encoding.
    pub chunked: bool,
    /// Number of chunks (chunked only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// False when the stream closed before the body was complete.
    pub complete: bool,
}

impl HttpBody {
    /// Dump line.
    pub fn line(&self) -> String {
        let how = if self.chunked {
            format!(", chunked in {} chunks", self.chunks.unwrap_or(0))
        } else {
            String::new()
        };
        let inc = if self.complete { "" } else { " (incomplete)" };
        format!("http {} body: {} bytes{how}{inc}", self.kind, self.bytes)
    }
}

enum Chunk {
    Size(Vec<u8>),
    Data(u64),
    DataEnd,
    /// Whether the current trailer line is blank so far (the blank one ends the message), and
    /// the trailer bytes seen (capped at [`MAX_HEAD`], like a head); nothing of it is kept.
    Trailer(bool, usize),
}

enum Phase {
    Head(Vec<u8>),
    Length { remaining: u64, total: u64 },
    Chunked { st: Chunk, total: u64, chunks: u64 },
    UntilClose { total: u64 },
    Off,
}

/// Incremental HTTP/1.x parser for one direction.
pub struct HttpDecoder {
    dir: Direction,
    phase: Phase,
}

impl HttpDecoder {
    /// A parser for `dir` (requests c2s, responses s2c).
    pub fn new(dir: Direction) -> Self {
        HttpDecoder {
            dir,
            phase: Phase::Head(Vec::new()),
        }
    }

    fn kind(&self) -> &'static str {
        match self.dir {
            Direction::ClientToServer => "request",
            Direction::ServerToClient => "response",
        }
    }

    /// Feed bytes; returns heads and completed bodies.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<L7Event> {
        self.feed_answering(bytes, &mut std::collections::VecDeque::new())
    }

    /// Feed response bytes knowing the requests they answer: `head_requests` holds, oldest
    /// first, whether each request not yet answered was a HEAD (its response has no body,
    /// whatever Content-Length says). Requests feed it; each final response takes one.
    pub fn feed_answering(
        &mut self,
        mut bytes: &[u8],
        head_requests: &mut std::collections::VecDeque<bool>,
    ) -> Vec<L7Event> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let kind = self.kind();
            match &mut self.phase {
                Phase::Off => break,
                Phase::Head(buf) => {
                    let old = buf.len();
                    buf.extend_from_slice(bytes);
                    // Search only what is new (and the 3 bytes before it): a head arriving a
                    // byte at a time must not be rescanned from its start each time.
                    let from = old.saturating_sub(3);
                    let Some(end) = find(&buf[from..], b"\r\n\r\n").map(|p| from + p + 4) else {
                        if buf.len() > MAX_HEAD {
                            self.phase = Phase::Off;
                            out.push(stopped(format!(
                                "an HTTP {kind} head over {} KiB",
                                MAX_HEAD / 1024
                            )));
                        }
                        break;
                    };
                    let head = buf[..end].to_vec();
                    bytes = &bytes[end - old..];
                    match parse_head(&head, self.dir) {
                        Some((h, mut body)) => {
                            // A final response answers the oldest open request (1xx do not).
                            if h.status.is_some_and(|s| s >= 200)
                                && head_requests.pop_front() == Some(true)
                            {
                                body = BodyKind::None;
                            }
                            out.push(L7Event::HttpHead(h));
                            self.phase = match body {
                                BodyKind::None => Phase::Head(Vec::new()),
                                BodyKind::Length(0) => {
                                    out.push(L7Event::HttpBody(HttpBody {
                                        kind,
                                        bytes: 0,
                                        chunked: false,
                                        chunks: None,
                                        complete: true,
                                    }));
                                    Phase::Head(Vec::new())
                                }
                                BodyKind::Length(n) => Phase::Length {
                                    remaining: n,
                                    total: n,
                                },
                                BodyKind::Chunked => Phase::Chunked {
                                    st: Chunk::Size(Vec::new()),
                                    total: 0,
                                    chunks: 0,
                                },
                                BodyKind::UntilClose => Phase::UntilClose { total: 0 },
                            };
                        }
                        None => self.phase = Phase::Off,
                    }
                }
                Phase::Length { remaining, total } => {
                    let take = (*remaining).min(bytes.len() as u64);
                    *remaining -= take;
                    bytes = &bytes[take as usize..];
                    if *remaining == 0 {
                        out.push(L7Event::HttpBody(HttpBody {
                            kind,
                            bytes: *total,
                            chunked: false,
                            chunks: None,
                            complete: true,
                        }));
                        self.phase = Phase::Head(Vec::new());
                    }
                }
                Phase::UntilClose { total } => {
                    *total += bytes.len() as u64;
                    bytes = &[];
                }
                Phase::Chunked { st, total, chunks } => match st {
                    Chunk::Size(line) => {
                        let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                            line.extend_from_slice(bytes);
                            if line.len() > MAX_CHUNK_LINE {
                                self.phase = Phase::Off;
                                out.push(stopped(format!(
                                    "an HTTP chunk size line over {MAX_CHUNK_LINE} bytes"
                                )));
                            }
                            break;
                        };
                        line.extend_from_slice(&bytes[..nl]);
                        bytes = &bytes[nl + 1..];
                        let text = String::from_utf8_lossy(line);
                        let hex = text.trim().split(';').next().unwrap_or("").trim();
                        match u64::from_str_radix(hex, 16) {
                            Ok(0) => *st = Chunk::Trailer(true, 0),
                            Ok(n) => {
                                *chunks += 1;
                                *st = Chunk::Data(n)
                            }
                            Err(_) => self.phase = Phase::Off,
                        }
                    }
                    Chunk::Data(n) => {
                        let take = (*n).min(bytes.len() as u64);
                        *n -= take;
                        *total += take;
                        bytes = &bytes[take as usize..];
                        if *n == 0 {
                            *st = Chunk::DataEnd;
                        }
                    }
                    Chunk::DataEnd => {
                        // The CRLF after chunk data.
                        match bytes.iter().position(|&b| b == b'\n') {
                            Some(nl) => {
                                bytes = &bytes[nl + 1..];
                                *st = Chunk::Size(Vec::new());
                            }
                            None => bytes = &[],
                        }
                    }
                    Chunk::Trailer(blank, seen) => {
                        let nl = bytes.iter().position(|&b| b == b'\n');
                        let part = &bytes[..nl.unwrap_or(bytes.len())];
                        *seen += part.len() + 1;
                        *blank &= part.iter().all(|b| b.is_ascii_whitespace());
                        if *seen > MAX_HEAD {
                            self.phase = Phase::Off;
                            out.push(stopped(format!(
                                "an HTTP chunked trailer over {} KiB",
                                MAX_HEAD / 1024
                            )));
                            break;
                        }
                        let Some(nl) = nl else {
                            break;
                        };
                        bytes = &bytes[nl + 1..];
                        if *blank {
                            out.push(L7Event::HttpBody(HttpBody {
                                kind,
                                bytes: *total,
                                chunked: true,
                                chunks: Some(*chunks),
                                complete: true,
                            }));
                            self.phase = Phase::Head(Vec::new());
                        } else {
                            *blank = true;
                        }
                    }
                },
            }
        }
        out
    }

    /// The stream closed: a body that runs until close is complete now; others are cut short.
    pub fn finish(&mut self) -> Vec<L7Event> {
        let kind = self.kind();
        let ev = match &self.phase {
            Phase::UntilClose { total } => Some(HttpBody {
                kind,
                bytes: *total,
                chunked: false,
                chunks: None,
                complete: true,
            }),
            Phase::Length { remaining, total } => Some(HttpBody {
                kind,
                bytes: total - remaining,
                chunked: false,
                chunks: None,
                complete: false,
            }),
            Phase::Chunked { total, chunks, .. } => Some(HttpBody {
                kind,
                bytes: *total,
                chunked: true,
                chunks: Some(*chunks),
                complete: false,
            }),
            _ => None,
        };
        self.phase = Phase::Off;
        ev.map(L7Event::HttpBody).into_iter().collect()
    }
}

enum BodyKind {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8], dir: Direction) -> Option<(HttpHead, BodyKind)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let start = lines.next()?.to_string();
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let chunked = get("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    let length = get("content-length").and_then(|v| v.parse::<u64>().ok());
    let mut parts = start.splitn(3, ' ');
    let (head, body) = match dir {
        Direction::ClientToServer => {
            let method = parts.next()?.to_string();
            let target = parts.next()?.to_string();
            let body = if chunked {
                BodyKind::Chunked
            } else {
                length.map(BodyKind::Length).unwrap_or(BodyKind::None)
            };
            (
                HttpHead {
                    kind: "request",
                    start_line: start.clone(),
                    method: Some(method),
                    target: Some(target),
                    status: None,
                    headers: headers.clone(),
                },
                body,
            )
        }
        Direction::ServerToClient => {
            let _version = parts.next()?;
            let status: u16 = parts.next()?.parse().ok()?;
            let body = if (100..200).contains(&status) || status == 204 || status == 304 {
                BodyKind::None
            } else if chunked {
                BodyKind::Chunked
            } else {
                length.map(BodyKind::Length).unwrap_or(BodyKind::UntilClose)
            };
            (
                HttpHead {
                    kind: "response",
                    start_line: start.clone(),
                    method: None,
                    target: None,
                    status: Some(status),
                    headers: headers.clone(),
                },
                body,
            )
        }
    };
    Some((head, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_then_chunked_response_split_anywhere() {
        let req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut d = HttpDecoder::new(Direction::ClientToServer);
        let ev: Vec<_> = req.chunks(3).flat_map(|c| d.feed(c)).collect();
        assert_eq!(ev.len(), 1);
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=1\r\nabc\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        for step in 1..7 {
            let mut d = HttpDecoder::new(Direction::ServerToClient);
            let ev: Vec<_> = resp.chunks(step).flat_map(|c| d.feed(c)).collect();
            assert_eq!(ev.len(), 3, "step {step}: {ev:?}");
            match &ev[1] {
                L7Event::HttpBody(b) => {
                    assert_eq!((b.bytes, b.chunks, b.complete), (8, Some(2), true))
                }
                e => panic!("{e:?}"),
            }
        }
    }

    #[test]
    fn an_endless_trailer_stops_decoding_once_and_holds_nothing() {
        let mut d = HttpDecoder::new(Direction::ServerToClient);
        let ev = d.feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: 1\r\n\r\n",
        );
        assert_eq!(ev.len(), 2, "{ev:?}");
        d.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n");
        let mut stops = Vec::new();
        for _ in 0..1000 {
            stops.extend(d.feed(&[b'x'; 1000]));
        }
        assert_eq!(stops.len(), 1, "{stops:?}");
        assert!(stops[0].lines()[0].contains("chunked trailer over 64 KiB"));
    }

    #[test]
    fn a_response_to_head_has_no_body() {
        let mut d = HttpDecoder::new(Direction::ServerToClient);
        let mut heads: std::collections::VecDeque<bool> = [true, false].into();
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        let ev = d.feed_answering(resp, &mut heads);
        let lines: Vec<String> = ev.iter().flat_map(|e| e.lines()).collect();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("http response:"))
                .count(),
            2,
            "{lines:?}"
        );
        assert!(
            lines.contains(&"http response body: 2 bytes".to_string()),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("5 bytes")), "{lines:?}");
    }

    #[test]
    fn garbage_turns_it_off() {
        let mut d = HttpDecoder::new(Direction::ServerToClient);
        assert!(d.feed(b"HTTP/1.1 abc\r\n\r\n").is_empty());
        assert!(d.feed(b"more").is_empty());
    }
}
