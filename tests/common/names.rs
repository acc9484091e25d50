//! A test nameserver that knows one name and answers it as the test says now (an address,
//! NXDOMAIN, SERVFAIL or nothing at all), written byte by byte (RFC 1035 4.1).

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::{Arc, Mutex};

use super::TestNs;

/// What a [`name_server`] answers for its one name now.
#[derive(Clone, Copy, Debug)]
pub enum NsAnswer {
    /// An A record (no AAAA) with this TTL in seconds.
    A(Ipv4Addr, u32),
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// SERVFAIL: the name stops resolving.
    Fail,
    /// No answer to any query: the nameserver is down.
    Silent,
}

/// A nameserver on 127.0.0.1:53 inside `ns` that knows `name` only (A as `answer` says now,
/// AAAA empty, other names NXDOMAIN).
pub fn name_server(ns: &TestNs, name: &'static str, answer: Arc<Mutex<NsAnswer>>) {
    let s = nettool::netns::NetNs::from_name(&ns.name)
        .unwrap()
        .run(|| UdpSocket::bind("127.0.0.1:53").unwrap())
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let wire: Vec<u8> = name
            .split('.')
            .flat_map(|l| std::iter::once(l.len() as u8).chain(l.bytes()))
            .chain([0])
            .collect();
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let q = &buf[..n];
            let now = *answer.lock().unwrap();
            if n < 12 + wire.len() + 4 || matches!(now, NsAnswer::Silent) {
                continue;
            }
            let qname = &q[12..12 + wire.len()];
            let qtype = &q[12 + wire.len()..12 + wire.len() + 2];
            let ours = qname.eq_ignore_ascii_case(&wire);
            let rcode = match (ours, now) {
                (false, _) | (true, NsAnswer::NxDomain | NsAnswer::Silent) => 3,
                (true, NsAnswer::Fail) => 2,
                (true, NsAnswer::A(..)) => 0,
            };
            let a = match now {
                NsAnswer::A(ip, ttl) if ours && qtype == [0, 1] => Some((ip, ttl)),
                _ => None,
            };
            let mut r = q[..2].to_vec();
            r.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1, 0, a.is_some() as u8, 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..12 + wire.len() + 4]);
            if let Some((ip, ttl)) = a {
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
                r.extend_from_slice(&ttl.to_be_bytes());
                r.extend_from_slice(&[0, 4]);
                r.extend_from_slice(&ip.octets());
            }
            let _ = s.send_to(&r, from);
        }
    });
}
