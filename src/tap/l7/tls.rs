//! TLS: the ClientHello's SNI and ALPN (everything after it is encrypted).

use serde::Serialize;

use super::L7Event;

/// What a ClientHello reveals.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ClientHello {
    /// The legacy version field of the hello (0x0303 for TLS 1.2 and 1.3).
    pub version: String,
    /// server_name extension.
    pub sni: Option<String>,
    /// application_layer_protocol_negotiation extension.
    pub alpn: Vec<String>,
    /// True when supported_versions offers TLS 1.3.
    pub offers_tls13: bool,
}

impl ClientHello {
    /// Dump line.
    pub fn line(&self) -> String {
        format!(
            "tls client hello: sni={} alpn={} version={}{}",
            self.sni.as_deref().unwrap_or("-"),
            if self.alpn.is_empty() {
                "-".to_string()
            } else {
                self.alpn.join(",")
            },
            self.version,
            if self.offers_tls13 {
                " (offers 1.3)"
            } else {
                ""
            }
        )
    }
}

/// Collects the first handshake record(s) until the ClientHello is complete. Records are
/// unwrapped as they complete (each byte is handled once, however small the reads).
#[derive(Default)]
pub struct TlsDecoder {
    /// Bytes of the record not yet complete.
    buf: Vec<u8>,
    /// Handshake bytes from the complete records so far.
    hs: Vec<u8>,
    done: bool,
}

impl TlsDecoder {
    /// Feed bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<L7Event> {
        if self.done {
            return Vec::new();
        }
        self.buf.extend_from_slice(bytes);
        // Reassemble handshake bytes from consecutive records.
        let mut p = 0;
        while p + 5 <= self.buf.len() {
            if self.buf[p] != 0x16 {
                self.done = true;
                return Vec::new();
            }
            let len = u16::from_be_bytes([self.buf[p + 3], self.buf[p + 4]]) as usize;
            if p + 5 + len > self.buf.len() {
                break;
            }
            self.hs.extend_from_slice(&self.buf[p + 5..p + 5 + len]);
            p += 5 + len;
        }
        self.buf.drain(..p);
        let hs = &self.hs;
        if hs.len() >= 4 {
            let body_len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if hs[0] != 1 {
                self.done = true;
                return Vec::new();
            }
            if hs.len() >= 4 + body_len {
                self.done = true;
                self.buf = Vec::new();
                let hs = std::mem::take(&mut self.hs);
                return parse_client_hello(&hs[4..4 + body_len])
                    .map(L7Event::TlsClientHello)
                    .into_iter()
                    .collect();
            }
        }
        if self.buf.len() + self.hs.len() > 64 * 1024 {
            self.done = true;
            self.buf = Vec::new();
            self.hs = Vec::new();
            return vec![L7Event::Stopped(super::Stopped {
                reason: "a TLS ClientHello over 64 KiB".into(),
            })];
        }
        Vec::new()
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

/// Parse a ClientHello body (after the 4-byte handshake header).
pub fn parse_client_hello(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    let v = r.take(2)?;
    let mut hello = ClientHello {
        version: match (v[0], v[1]) {
            (3, 1) => "TLS1.0".into(),
            (3, 2) => "TLS1.1".into(),
            (3, 3) => "TLS1.2".into(),
            (a, b) => format!("0x{a:02x}{b:02x}"),
        },
        ..Default::default()
    };
    r.take(32)?;
    let n = r.u8()?;
    r.take(n)?;
    let n = r.u16()?;
    r.take(n)?;
    let n = r.u8()?;
    r.take(n)?;
    if r.0.is_empty() {
        return Some(hello);
    }
    let n = r.u16()?;
    let mut ext = Reader(r.take(n)?);
    while !ext.0.is_empty() {
        let ty = ext.u16()?;
        let len = ext.u16()?;
        let mut data = Reader(ext.take(len)?);
        match ty {
            0 => {
                let _list = data.u16()?;
                while !data.0.is_empty() {
                    let kind = data.u8()?;
                    let l = data.u16()?;
                    let name = data.take(l)?;
                    if kind == 0 {
                        hello.sni = Some(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
            16 => {
                let _list = data.u16()?;
                while !data.0.is_empty() {
                    let l = data.u8()?;
                    hello
                        .alpn
                        .push(String::from_utf8_lossy(data.take(l)?).into_owned());
                }
            }
            43 => {
                let l = data.u8()?;
                let vs = data.take(l)?;
                hello.offers_tls13 = vs.chunks(2).any(|c| c == [3, 4]);
            }
            _ => {}
        }
    }
    Some(hello)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        let mut d = TlsDecoder::default();
        for i in 0..300u32 {
            let b = (i.wrapping_mul(2_654_435_761) >> 24) as u8;
            let _ = d.feed(&[0x16, 3, 1, 0, 10, 1, 0, 0, 6, b, b, b, b, b, b]);
        }
        assert!(parse_client_hello(&[3, 3, 1]).is_none());
    }
}
