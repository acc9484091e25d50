//! Redis RESP: commands (arrays of bulk strings, or inline) and replies.

use serde::Serialize;

use super::L7Event;
use crate::tap::event::Direction;

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

/// Incremental RESP parser: every byte is looked at once, whatever way the stream is cut
/// into reads; it holds at most one type line (<= [`MAX_LINE`]) and the first bytes of one
/// bulk string, never a whole value.
#[derive(Default)]
pub struct RespDecoder {
    off: bool,
    /// The type line being gathered (tag included), up to its `\n`.
    line: Vec<u8>,
    /// Inside a bulk string: payload bytes (and its CRLF) still to come, its length, its start.
    bulk: Option<Bulk>,
    /// Elements still to come in each open array or map, outermost first.
    open: Vec<u64>,
    /// The words of the value being decoded (the first [`MAX_WORDS`]).
    words: Vec<String>,
}

struct Bulk {
    left: u64,
    len: u64,
    head: Vec<u8>,
}

/// Longest type line kept (a simple string, an error, a length): a per-message cap.
pub const MAX_LINE: usize = 64 * 1024;
/// Words kept per command or reply (the rest are counted, not shown).
const MAX_WORDS: usize = 16;
/// Largest bulk string Redis accepts (proto-max-bulk-len).
const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Deepest nesting of arrays and maps.
const MAX_DEPTH: usize = 8;
/// Most elements in one array or map.
const MAX_ELEMENTS: i64 = 1_000_000;

/// Why a value cannot be RESP (the decoder stops quietly: it was not Redis) or exceeded a cap
/// (it stops and says so).
enum Stop {
    NotResp,
    Cap(String),
}

impl RespDecoder {
    /// Feed bytes; returns complete commands or replies (direction decides the label).
    pub fn feed_dir(&mut self, mut bytes: &[u8], dir: Direction) -> Vec<L7Event> {
        let mut out = Vec::new();
        let kind = match dir {
            Direction::ClientToServer => "command",
            Direction::ServerToClient => "reply",
        };
        while !bytes.is_empty() && !self.off {
            if let Some(b) = &mut self.bulk {
                let take = b.left.min(bytes.len() as u64) as usize;
                // Payload bytes are those before the final CRLF.
                let payload_left = b.left.saturating_sub(2) as usize;
                let keep = take
                    .min(payload_left)
                    .min(MAX_ARG.saturating_sub(b.head.len()));
                b.head.extend_from_slice(&bytes[..keep]);
                b.left -= take as u64;
                bytes = &bytes[take..];
                if b.left == 0 {
                    let word = short_of(&b.head, b.len);
                    self.bulk = None;
                    self.word(word);
                    self.element_done(kind, &mut out);
                }
                continue;
            }
            let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                self.line.extend_from_slice(bytes);
                if self.line.len() > MAX_LINE {
                    self.stop(
                        Stop::Cap(format!("a RESP line over {} KiB", MAX_LINE / 1024)),
                        &mut out,
                    );
                }
                break;
            };
            self.line.extend_from_slice(&bytes[..nl]);
            bytes = &bytes[nl + 1..];
            let line = std::mem::take(&mut self.line);
            if line.len() > MAX_LINE {
                self.stop(
                    Stop::Cap(format!("a RESP line over {} KiB", MAX_LINE / 1024)),
                    &mut out,
                );
                break;
            }
            if let Err(why) = self.type_line(&line, kind, &mut out) {
                self.stop(why, &mut out);
            }
            self.line = line;
            self.line.clear();
        }
        out
    }

    fn stop(&mut self, why: Stop, out: &mut Vec<L7Event>) {
        self.off = true;
        self.line = Vec::new();
        self.bulk = None;
        self.open = Vec::new();
        self.words = Vec::new();
        if let Stop::Cap(reason) = why {
            out.push(L7Event::Stopped(super::Stopped { reason }));
        }
    }

    fn word(&mut self, w: String) {
        if self.words.len() < MAX_WORDS {
            self.words.push(w);
        }
    }

    /// One element is complete: close the aggregates it completes; a complete top-level value
    /// is an event.
    fn element_done(&mut self, kind: &'static str, out: &mut Vec<L7Event>) {
        loop {
            match self.open.last_mut() {
                None => {
                    out.push(L7Event::Resp(RespValue {
                        kind,
                        parts: std::mem::take(&mut self.words),
                    }));
                    return;
                }
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        return;
                    }
                    self.open.pop();
                }
            }
        }
    }

    /// A type line without its `\n`.
    fn type_line(
        &mut self,
        line: &[u8],
        kind: &'static str,
        out: &mut Vec<L7Event>,
    ) -> Result<(), Stop> {
        let Some((&tag, rest)) = line.split_first() else {
            return Err(Stop::NotResp);
        };
        let Some(l) = rest.strip_suffix(b"\r") else {
            return Err(Stop::NotResp);
        };
        let num = || -> Result<i64, Stop> {
            std::str::from_utf8(l)
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .ok_or(Stop::NotResp)
        };
        match tag {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' => {
                let prefix = if tag == b'-' { "ERR " } else { "" };
                self.word(format!("{prefix}{}", short(l)));
                self.element_done(kind, out);
            }
            b'$' => match num()? {
                -1 => {
                    self.word("(nil)".into());
                    self.element_done(kind, out);
                }
                n @ 0..=MAX_BULK => {
                    self.bulk = Some(Bulk {
                        left: n as u64 + 2,
                        len: n as u64,
                        head: Vec::new(),
                    });
                }
                n if n > MAX_BULK => {
                    return Err(Stop::Cap(format!(
                        "a RESP bulk string of {n} bytes, over Redis's 512 MB limit"
                    )))
                }
                _ => return Err(Stop::NotResp),
            },
            b'*' | b'%' => match num()? {
                -1 => {
                    self.word("(nil array)".into());
                    self.element_done(kind, out);
                }
                0 => self.element_done(kind, out),
                n @ 1..=MAX_ELEMENTS => {
                    if self.open.len() >= MAX_DEPTH {
                        return Err(Stop::Cap(format!(
                            "RESP arrays nested deeper than {MAX_DEPTH}"
                        )));
                    }
                    self.open
                        .push(if tag == b'%' { n as u64 * 2 } else { n as u64 });
                }
                n if n > MAX_ELEMENTS => {
                    return Err(Stop::Cap(format!(
                        "a RESP array of {n} elements (more than {MAX_ELEMENTS})"
                    )))
                }
                _ => return Err(Stop::NotResp),
            },
            _ => return Err(Stop::NotResp),
        }
        Ok(())
    }
}

fn short(b: &[u8]) -> String {
    short_of(&b[..b.len().min(MAX_ARG)], b.len() as u64)
}

/// [`short`] for a bulk string of which only the first bytes were kept.
fn short_of(head: &[u8], len: u64) -> String {
    let s = String::from_utf8_lossy(head).into_owned();
    if len > MAX_ARG as u64 {
        format!("{s}...({len} bytes)")
    } else {
        s
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

    #[test]
    fn nested_maps_big_bulk_and_caps() {
        let mut d = RespDecoder::default();
        let ev = d.feed_dir(
            b"*2\r\n%1\r\n+a\r\n:1\r\n*0\r\n$70\r\n",
            Direction::ServerToClient,
        );
        assert_eq!(
            ev,
            vec![L7Event::Resp(RespValue {
                kind: "reply",
                parts: vec!["a".into(), "1".into()]
            })]
        );
        let body = [b'x'; 70];
        let mut ev = d.feed_dir(&body[..30], Direction::ServerToClient);
        ev.extend(d.feed_dir(&body[30..], Direction::ServerToClient));
        ev.extend(d.feed_dir(b"\r\n", Direction::ServerToClient));
        assert_eq!(ev.len(), 1);
        assert!(format!("{ev:?}").contains("...(70 bytes)"));
        // A line that never ends: stopped once, saying why, whatever is fed after.
        let mut d = RespDecoder::default();
        let mut stops = 0;
        for _ in 0..100 {
            for e in d.feed_dir(&[b'+'; 4096], Direction::ServerToClient) {
                assert!(matches!(e, L7Event::Stopped(_)), "{e:?}");
                stops += 1;
            }
        }
        assert_eq!(stops, 1);
        assert!(d.line.capacity() == 0);
    }
}
