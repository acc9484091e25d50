//! Redis RESP: commands (arrays of bulk strings, or inline) and replies.

use serde::Serialize;

use super::L7Event;
use crate::tap::event::Direction;

const MAX_BUF: usize = 1 << 20;
const MAX_ARG: usize = 64;

/// True when the stream starts like RESP in this direction.
pub fn looks_like_resp(buf: &[u8], dir: Direction) -> bool {
    match dir {
        Direction::ClientToServer => buf[0] == b'*' && buf.len() > 1 && buf[1].is_ascii_digit(),
        Direction::ServerToClient => {
            matches!(
                buf[0],
                b'+' | b'-' | b':' | b'$' | b'*' | b'_' | b'%' | b'#' | b','
            )
        }
    }
}

/// A decoded command (client) or reply (server).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RespValue {
    /// "command" or "reply".
    pub kind: &'static str,
    /// Command words (each cut to 64 bytes) or a one-line summary of the reply.
    pub parts: Vec<String>,
}

impl RespValue {
    /// Dump line.
    pub fn line(&self) -> String {
        format!("redis {}: {}", self.kind, self.parts.join(" "))
    }
}

/// Incremental RESP parser.
#[derive(Default)]
pub struct RespDecoder {
    buf: Vec<u8>,
    off: bool,
}

enum Parsed {
    Incomplete,
    Bad,
    Value(usize, Vec<String>),
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rel = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[at..at + rel], at + rel + 2))
}

fn short(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX_ARG)]).into_owned();
    if b.len() > MAX_ARG {
        format!("{s}...({} bytes)", b.len())
    } else {
        s
    }
}

/// Parse one value at `at`: (end, words).
fn value(buf: &[u8], at: usize, depth: usize) -> Parsed {
    if depth > 8 {
        return Parsed::Bad;
    }
    let Some(&tag) = buf.get(at) else {
        return Parsed::Incomplete;
    };
    let Some((l, next)) = line(buf, at + 1) else {
        return if buf.len() - at > 64 * 1024 {
            Parsed::Bad
        } else {
            Parsed::Incomplete
        };
    };
    let num = || std::str::from_utf8(l).ok()?.trim().parse::<i64>().ok();
    match tag {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' => {
            let prefix = match tag {
                b'-' => "ERR ",
                _ => "",
            };
            Parsed::Value(next, vec![format!("{prefix}{}", short(l))])
        }
        b'$' => match num() {
            Some(-1) => Parsed::Value(next, vec!["(nil)".into()]),
            Some(n) if n >= 0 => {
                let n = n as usize;
                if buf.len() < next + n + 2 {
                    Parsed::Incomplete
                } else {
                    Parsed::Value(next + n + 2, vec![short(&buf[next..next + n])])
                }
            }
            _ => Parsed::Bad,
        },
        b'*' | b'%' => match num() {
            Some(-1) => Parsed::Value(next, vec!["(nil array)".into()]),
            Some(n) if (0..=1_000_000).contains(&n) => {
                let count = if tag == b'%' { n * 2 } else { n };
                let mut pos = next;
                let mut words = Vec::new();
                for _ in 0..count {
                    match value(buf, pos, depth + 1) {
                        Parsed::Value(end, w) => {
                            pos = end;
                            if words.len() < 16 {
                                words.extend(w);
                            }
                        }
                        other => return other,
                    }
                }
                Parsed::Value(pos, words)
            }
            _ => Parsed::Bad,
        },
        _ => Parsed::Bad,
    }
}

impl RespDecoder {
    /// Feed bytes; returns complete commands or replies (direction decides the label).
    pub fn feed_dir(&mut self, bytes: &[u8], dir: Direction) -> Vec<L7Event> {
        if self.off {
            return Vec::new();
        }
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            match value(&self.buf, at, 0) {
                Parsed::Value(end, parts) => {
                    at = end;
                    out.push(L7Event::Resp(RespValue {
                        kind: match dir {
                            Direction::ClientToServer => "command",
                            Direction::ServerToClient => "reply",
                        },
                        parts,
                    }));
                }
                Parsed::Incomplete => break,
                Parsed::Bad => {
                    self.off = true;
                    self.buf = Vec::new();
                    return out;
                }
            }
        }
        self.buf.drain(..at);
        if self.buf.len() > MAX_BUF {
            self.off = true;
            self.buf = Vec::new();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_replies_across_reads() {
        let cmd = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*1\r\n$4\r\nPING\r\n";
        for step in 1..9 {
            let mut d = RespDecoder::default();
            let ev: Vec<_> = cmd
                .chunks(step)
                .flat_map(|c| d.feed_dir(c, Direction::ClientToServer))
                .collect();
            assert_eq!(ev.len(), 2);
            assert_eq!(
                ev[0],
                L7Event::Resp(RespValue {
                    kind: "command",
                    parts: vec!["SET".into(), "key".into(), "value".into()]
                })
            );
        }
        let mut d = RespDecoder::default();
        let ev = d.feed_dir(
            b"+OK\r\n$-1\r\n-ERR nope\r\n:5\r\n",
            Direction::ServerToClient,
        );
        assert_eq!(ev.len(), 4);
    }
}
