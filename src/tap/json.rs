//! The `--json` event stream: one JSON object per line for every event and L7 decode.

use std::io::Write;

use serde::Serialize;

use super::event::{CloseReason, ConnInfo, Direction, Event};
use super::l7::L7Event;
use super::{Decoders, Output, Sink};

/// What payload bytes a JSON data event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    /// Only sizes.
    None,
    /// The bytes as a (lossy UTF-8) string.
    Text,
    /// The bytes as lowercase hex.
    Hex,
}

/// One line of the stream.
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    event: &'static str,
    conn: &'a ConnInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a CloseReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_c2s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_s2c: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    l7: Vec<L7Event>,
}

/// Renders events as JSON lines.
pub(crate) struct JsonSink {
    out: super::WholeEvents,
    name: String,
    payload: Payload,
    dec: Decoders,
}

impl JsonSink {
    /// A JSON-lines sink.
    pub(crate) fn new(out: Output, name: String, payload: Payload, decode: bool) -> Self {
        JsonSink {
            out: super::WholeEvents::new(out),
            name,
            payload,
            dec: Decoders::new(decode),
        }
    }
}

fn to_hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = Vec::with_capacity(b.len() * 2);
    for &x in b {
        s.push(HEX[(x >> 4) as usize]);
        s.push(HEX[(x & 0xf) as usize]);
    }
    String::from_utf8(s).unwrap_or_default()
}

impl Sink for JsonSink {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        let l7 = self.dec.feed(ev);
        let mut line = Line {
            ts: ev.ts().rfc3339(),
            event: "",
            conn: ev.conn(),
            dir: None,
            offset: None,
            len: None,
            text: None,
            hex: None,
            reason: None,
            bytes_c2s: None,
            bytes_s2c: None,
            l7,
        };
        match ev {
            Event::Open { .. } => line.event = "open",
            Event::Data {
                dir, offset, bytes, ..
            } => {
                line.event = "data";
                line.dir = Some(*dir);
                line.offset = Some(*offset);
                line.len = Some(bytes.len());
                match self.payload {
                    Payload::None => {}
                    Payload::Text => line.text = Some(String::from_utf8_lossy(bytes).into_owned()),
                    Payload::Hex => line.hex = Some(to_hex(bytes)),
                }
            }
            Event::Fin { dir, .. } => {
                line.event = "fin";
                line.dir = Some(*dir);
            }
            Event::Close {
                reason,
                bytes_c2s,
                bytes_s2c,
                ..
            } => {
                line.event = "close";
                line.reason = Some(reason);
                line.bytes_c2s = Some(*bytes_c2s);
                line.bytes_s2c = Some(*bytes_s2c);
            }
        }
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")?;
        self.out.event_done()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn stop_marker(&mut self, why: &str) -> std::io::Result<()> {
        serde_json::to_writer(
            &mut self.out,
            &serde_json::json!({"event": "dump_stopped", "error": why}),
        )?;
        self.out.write_all(b"\n")
    }
}
