//! The console dump: socat -v style text (or socat -x style hex) blocks, each naming the
//! connection, both address pairs, the direction, byte offsets and a microsecond timestamp,
//! with L7 lines (`# ...`) under the data.

use std::io::Write;

use super::event::Event;
use super::{describe_conn, Decoders, Output, Sink, WholeEvents};

/// Text (socat -v) or hex (socat -x) payload rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// Printable text, `\r` and non-printables escaped.
    Text,
    /// Hex lines with an ASCII column.
    Hex,
}

/// Renders events as text blocks.
pub(crate) struct ConsoleSink {
    out: WholeEvents,
    name: String,
    style: Style,
    dec: Decoders,
    /// Write only the L7 lines and connection events, not payloads (--json-less summary mode).
    payload: bool,
}

impl ConsoleSink {
    /// A console sink writing to `out` (named `name` in error reports).
    pub(crate) fn new(
        out: Output,
        name: String,
        style: Style,
        decode: bool,
        payload: bool,
    ) -> Self {
        ConsoleSink {
            out: WholeEvents::new(out),
            name,
            style,
            dec: Decoders::new(decode),
            payload,
        }
    }
}

/// What starts every payload line of the text dump. Lines the proxy writes itself start with
/// `*`, `>`, `<`, `#` or `--`, so whatever a peer sends (`\n* #77 open ...`) cannot pass for one.
pub(crate) const PAYLOAD_INDENT: &[u8] = b"  ";

/// Escape like socat -v: keep printable ASCII, newlines and tabs; `\r` and others as escapes.
/// Unlike socat, each payload line is indented by [`PAYLOAD_INDENT`].
pub(crate) fn write_text(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return out.write_all(b"\n");
    }
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        out.write_all(PAYLOAD_INDENT)?;
        let mut start = 0;
        for (i, &b) in line.iter().enumerate() {
            let plain = (0x20..0x7f).contains(&b) || b == b'\n' || b == b'\t';
            if plain {
                continue;
            }
            out.write_all(&line[start..i])?;
            if b == b'\r' {
                out.write_all(b"\\r")?;
            } else {
                write!(out, "\\x{b:02x}")?;
            }
            start = i + 1;
        }
        out.write_all(&line[start..])?;
    }
    if bytes.last() != Some(&b'\n') {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A decoded value (HTTP header, RESP argument, server name) made safe for a dump line, the
/// way [`write_text`] treats payloads: a peer's bytes can neither drive the terminal (escape
/// sequences, C1 controls) nor start a line of their own (`\r`, `\n`).
pub(crate) fn escape_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.chars().all(|c| (' '..='~').contains(&c)) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        match c {
            ' '..='~' => out.push(c),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            _ => {
                let mut b = [0u8; 4];
                for byte in c.encode_utf8(&mut b).bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Sink for ConsoleSink {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        let l7 = self.dec.feed(ev);
        let c = ev.conn();
        let ts = ev.ts().socat();
        match ev {
            Event::Open { .. } => writeln!(
                self.out,
                "* #{} open {} {}  {ts}",
                c.id,
                c.kind(),
                describe_conn(c)
            )?,
            Event::Data {
                dir, offset, bytes, ..
            } => {
                if self.payload {
                    let len = bytes.len() as u64;
                    writeln!(
                        self.out,
                        "{} #{} {}  {ts}  length={len} from={offset} to={}",
                        dir.arrow(),
                        c.id,
                        describe_conn(c),
                        offset + len.max(1) - 1
                    )?;
                    match self.style {
                        Style::Text => write_text(&mut self.out, bytes)?,
                        Style::Hex => {
                            super::hex::write_hex(&mut self.out, bytes, *offset)?;
                            self.out.write_all(b"--\n")?;
                        }
                    }
                }
            }
            Event::Fin { dir, .. } => writeln!(
                self.out,
                "* #{} {} end of data (FIN)  {ts}",
                c.id,
                dir.short()
            )?,
            Event::Close {
                reason,
                bytes_c2s,
                bytes_s2c,
                ..
            } => writeln!(
                self.out,
                "* #{} close {reason} c2s={bytes_c2s} s2c={bytes_s2c}  {ts}",
                c.id,
            )?,
        }
        let dir = match ev {
            Event::Data { dir, .. } => dir.short(),
            _ => "",
        };
        for e in l7 {
            for line in e.lines() {
                writeln!(self.out, "# #{} {dir} {}", c.id, escape_line(&line))?;
            }
        }
        self.out.event_done()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn stop_marker(&mut self, why: &str) -> std::io::Result<()> {
        writeln!(self.out, "* nettool: dump stopped: {why}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_like_socat() {
        let mut v = Vec::new();
        super::write_text(&mut v, b"GET / HTTP/1.1\r\nx\x01y").unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "  GET / HTTP/1.1\\r\n  x\\x01y\n"
        );
    }

    #[test]
    fn no_payload_line_starts_where_the_proxy_writes() {
        let mut v = Vec::new();
        let evil = b"\n* #77 open tcp 1.2.3.4:1 -> 5.6.7.8:2\n\n> #1 x\n# #1 c2s y\n--\n\tz\n";
        super::write_text(&mut v, evil).unwrap();
        let text = String::from_utf8(v).unwrap();
        assert_eq!(text.lines().count(), 7, "{text}");
        for line in text.lines() {
            assert!(line.starts_with("  "), "{line:?} in\n{text}");
        }
        let mut v = Vec::new();
        super::write_text(&mut v, b"").unwrap();
        assert_eq!(v, b"\n");
    }

    #[test]
    fn decoded_lines_cannot_start_a_line_or_drive_a_terminal() {
        let l = super::escape_line("a\x1b[2J\r\n* #77 open\u{9b}é");
        assert_eq!(l, "a\\x1b[2J\\r\\n* #77 open\\xc2\\x9b\\xc3\\xa9");
        assert!(matches!(
            super::escape_line("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// Every write that reaches the destination holds whole events (text, hex and JSON): two
    /// processes appending to one file (docker-proxy mode's two per port) cannot tear each
    /// other's lines. The 256 KiB BufWriter wrote whenever it filled, mid-line.
    #[test]
    fn a_dump_reaches_its_file_in_whole_events_only() {
        use crate::tap::event::{ConnInfo, Direction, Event, Timestamp, Transport};
        use crate::tap::Sink;
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);
        impl std::io::Write for Writes {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().push(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let conn = Arc::new(ConnInfo {
            id: 1,
            transport: Transport::Tcp,
            client: "127.0.0.1:40000".parse().unwrap(),
            listen: "127.0.0.1:8080".parse().unwrap(),
            local: "127.0.0.1:40001".parse().unwrap(),
            backend: "127.0.0.1:7000".parse().unwrap(),
            unix: None,
        });
        let line: Vec<u8> = (0..70)
            .map(|i| b'A' + (i % 26) as u8)
            .chain([b'\n'])
            .collect();
        for kind in ["text", "hex", "json"] {
            let w = Writes::default();
            let out: super::Output = Box::new(w.clone());
            let mut sink: Box<dyn Sink> = match kind {
                "text" => Box::new(super::ConsoleSink::new(
                    out,
                    "t".into(),
                    super::Style::Text,
                    false,
                    true,
                )),
                "hex" => Box::new(super::ConsoleSink::new(
                    out,
                    "t".into(),
                    super::Style::Hex,
                    false,
                    true,
                )),
                _ => Box::new(crate::tap::json::JsonSink::new(
                    out,
                    "t".into(),
                    crate::tap::json::Payload::Text,
                    false,
                )),
            };
            let mut offset = 0u64;
            // 64 events of 8 KiB + 1 (ragged against any buffer size): ~1.5 MB of text.
            for _ in 0..64 {
                let bytes: Vec<u8> = line.iter().copied().cycle().take(8193).collect();
                let n = bytes.len() as u64;
                sink.event(&Event::Data {
                    conn: conn.clone(),
                    dir: Direction::ServerToClient,
                    offset,
                    ts: Timestamp(0),
                    bytes: Arc::new(bytes),
                })
                .unwrap();
                offset += n;
            }
            sink.flush().unwrap();
            let writes = w.0.lock().unwrap();
            assert!(writes.len() > 2, "{kind}: {} writes", writes.len());
            for (i, chunk) in writes.iter().enumerate() {
                let starts = match kind {
                    "json" => chunk.starts_with(b"{\"ts\""),
                    _ => chunk.starts_with(b"< #1 "),
                };
                assert!(
                    starts && chunk.ends_with(b"\n"),
                    "{kind}: write {i} of {} does not hold whole events: starts {:?}, ends {:?}",
                    writes.len(),
                    String::from_utf8_lossy(&chunk[..40.min(chunk.len())]),
                    String::from_utf8_lossy(&chunk[chunk.len().saturating_sub(40)..])
                );
            }
        }
    }
}
