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

/// A DNS header's size: nothing shorter is a message.
const HEADER: usize = 12;

/// Splits a TCP byte stream into DNS messages. Holds at most one incomplete message
/// (<= 65 537 bytes: the length prefix caps it); each byte is copied once.
#[derive(Default)]
pub struct TcpFramer {
    buf: Vec<u8>,
}

impl TcpFramer {
    /// Feed bytes; returns complete messages.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        while self.buf.len() - at >= 2 {
            let n = u16::from_be_bytes([self.buf[at], self.buf[at + 1]]) as usize;
            if self.buf.len() - at < 2 + n {
                break;
            }
            // Shorter than a DNS header: cannot be a message (skipped without a copy; a peer
            // sending thousands of empty frames per read costs a counter, not an allocation).
            if n >= HEADER {
                out.push(self.buf[at + 2..at + 2 + n].to_vec());
            }
            at += 2 + n;
        }
        // One move per read, not one per message (many tiny frames in one read made it
        // quadratic).
        self.buf.drain(..at);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere() {
        let mut stream = Vec::new();
        for i in 0..50u8 {
            stream.extend([0, i]);
            stream.extend(std::iter::repeat_n(i, i as usize));
        }
        for step in [1, 2, 3, 7, 64, 10_000] {
            let mut f = TcpFramer::default();
            let msgs: Vec<_> = stream.chunks(step).flat_map(|c| f.feed(c)).collect();
            assert_eq!(msgs.len(), 50 - HEADER, "step {step}");
            assert!(msgs.iter().enumerate().all(|(i, m)| m.len() == i + HEADER));
        }
    }
}
