//! DNS messages, over UDP (one per datagram) and TCP (2-byte length framing).

use hickory_proto::op::{Message, MessageType};
use serde::Serialize;

/// A decoded DNS message.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DnsMessage {
    /// Transaction id.
    pub id: u16,
    /// True for a response.
    pub response: bool,
    /// Response code (NoError, NXDomain...).
    pub rcode: String,
    /// Questions as `name TYPE`.
    pub questions: Vec<String>,
    /// Answers as `name ttl TYPE data`.
    pub answers: Vec<String>,
}

impl DnsMessage {
    /// Dump lines.
    pub fn lines(&self) -> Vec<String> {
        let mut v = vec![format!(
            "dns {} id={} {}{}",
            if self.response { "response" } else { "query" },
            self.id,
            self.questions.join(", "),
            if self.response {
                format!(" rcode={} answers={}", self.rcode, self.answers.len())
            } else {
                String::new()
            }
        )];
        v.extend(self.answers.iter().map(|a| format!("  {a}")));
        v
    }
}

/// Decode one DNS message; None when it is not one.
pub fn decode(bytes: &[u8]) -> Option<DnsMessage> {
    let m = Message::from_vec(bytes).ok()?;
    Some(DnsMessage {
        id: m.metadata.id,
        response: m.metadata.message_type == MessageType::Response,
        rcode: format!("{:?}", m.metadata.response_code),
        questions: m
            .queries
            .iter()
            .map(|q| format!("{} {}", q.name(), q.query_type()))
            .collect(),
        answers: m
            .answers
            .iter()
            .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
            .collect(),
    })
}

/// Splits a TCP byte stream into DNS messages.
#[derive(Default)]
pub struct TcpFramer {
    buf: Vec<u8>,
}

impl TcpFramer {
    /// Feed bytes; returns complete messages.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while self.buf.len() >= 2 {
            let n = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
            if self.buf.len() < 2 + n {
                break;
            }
            out.push(self.buf[2..2 + n].to_vec());
            self.buf.drain(..2 + n);
        }
        out
    }
}
