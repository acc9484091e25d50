//! The lab's embedded DNS (Docker's 127.0.0.11): answers the names and aliases of the
//! containers sharing a network with the asker (A, AAAA, PTR), NXDOMAIN for anything else,
//! and forwards to an upstream only when the lab file names one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::state::LabState;

/// TTL of the answers (Docker uses 600).
const TTL: u32 = 600;

/// What one container's resolver knows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Records {
    /// Lower-case name (no trailing dot) -> addresses.
    pub names: HashMap<String, Vec<IpAddr>>,
    /// Address -> name, for PTR.
    pub reverse: HashMap<IpAddr, String>,
    /// Where to forward unknown names (none: NXDOMAIN).
    pub upstream: Option<SocketAddr>,
}

/// The records visible from container `container` of `lab`: every container (and alias) with an
/// interface on a DNS network that `container` also joins, with that network's addresses.
pub(crate) fn records_for(lab: &LabState, netns: &str) -> Records {
    let mut r = Records::default();
    let mine: Vec<&str> = lab
        .containers
        .iter()
        .filter(|c| c.netns.as_deref() == Some(netns))
        .flat_map(|c| c.networks.iter().map(|i| i.network.as_str()))
        .filter(|n| lab.network(n).is_some_and(|n| n.dns))
        .collect();
    for c in &lab.containers {
        // Containers sharing a namespace (container:NAME) answer with the owner's addresses.
        let owner = lab
            .containers
            .iter()
            .find(|o| o.netns == c.netns && !o.networks.is_empty());
        let Some(owner) = owner else { continue };
        for i in owner
            .networks
            .iter()
            .filter(|i| mine.contains(&i.network.as_str()))
        {
            for name in std::iter::once(&c.name).chain(c.aliases.iter()) {
                let e = r.names.entry(name.to_ascii_lowercase()).or_default();
                let mut addrs = vec![IpAddr::V4(i.address)];
                addrs.extend(i.address6.map(IpAddr::V6));
                for a in addrs {
                    if !e.contains(&a) {
                        e.push(a);
                    }
                    if c.name == owner.name || !r.reverse.contains_key(&a) {
                        r.reverse.entry(a).or_insert_with(|| c.name.clone());
                    }
                }
            }
        }
        if r.upstream.is_none() {
            r.upstream = mine
                .iter()
                .filter_map(|n| lab.network(n).and_then(|n| n.upstream))
                .next();
        }
    }
    r
}

/// The in-addr.arpa / ip6.arpa name of an address, lower case without the trailing dot.
fn reverse_name(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// What to do with one query.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Unknown name and an upstream is set: forward the query as is.
    Forward(SocketAddr),
    /// Not a DNS message: drop it.
    Drop,
}

/// Answer one DNS query from `records`.
pub(crate) fn answer(records: &Records, query: &[u8]) -> Answer {
    let Ok(req) = Message::from_vec(query) else {
        return Answer::Drop;
    };
    if req.metadata.message_type != MessageType::Query {
        return Answer::Drop;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.add_queries(req.queries.clone());
    if req.metadata.op_code != OpCode::Query || req.queries.len() != 1 {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop);
    }
    let q = &req.queries[0];
    let qname = q.name.to_ascii().to_ascii_lowercase();
    let key = qname.trim_end_matches('.').to_string();
    let mut known = false;
    if let Some(addrs) = records.names.get(&key) {
        known = true;
        for a in addrs {
            let rdata = match (a, q.query_type) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            resp.add_answer(Record::from_rdata(q.name.clone(), TTL, rdata));
        }
    } else if key.ends_with(".arpa") {
        if let Some((ip, name)) = records
            .reverse
            .iter()
            .find(|(ip, _)| reverse_name(ip) == key)
        {
            let _ = ip;
            known = true;
            if matches!(q.query_type, RecordType::PTR | RecordType::ANY) {
                if let Ok(target) = Name::from_ascii(format!("{name}.")) {
                    resp.add_answer(Record::from_rdata(
                        q.name.clone(),
                        TTL,
                        RData::PTR(PTR(target)),
                    ));
                }
            }
        }
    }
    if !known {
        if let Some(up) = records.upstream {
            return Answer::Forward(up);
        }
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    resp.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop)
}

async fn forward_udp(up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = tokio::net::UdpSocket::bind(bind).await.ok()?;
    s.send_to(query, up).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), s.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Serve DNS over UDP on `sock` (made inside the container namespace) forever.
pub(crate) async fn serve_udp(sock: tokio::net::UdpSocket, records: Arc<Records>) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        match answer(&records, &buf[..n]) {
            Answer::Reply(r) => {
                let _ = sock.send_to(&r, peer).await;
            }
            Answer::Forward(up) => {
                let q = buf[..n].to_vec();
                let sock = sock.clone();
                tokio::spawn(async move {
                    if let Some(r) = forward_udp(up, &q).await {
                        let _ = sock.send_to(&r, peer).await;
                    }
                });
            }
            Answer::Drop => {}
        }
    }
}

/// Serve DNS over TCP on `listener` (made inside the container namespace) forever.
pub(crate) async fn serve_tcp(listener: tokio::net::TcpListener, records: Arc<Records>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let records = records.clone();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if conn.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                if conn.read_exact(&mut q).await.is_err() {
                    return;
                }
                let reply = match answer(&records, &q) {
                    Answer::Reply(r) => r,
                    Answer::Forward(up) => match forward_udp(up, &q).await {
                        Some(r) => r,
                        None => return,
                    },
                    Answer::Drop => return,
                };
                let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&reply);
                if conn.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn ask(r: &Records, name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        match answer(r, &m.to_vec().unwrap()) {
            Answer::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_and_nxdomain() {
        let mut r = Records::default();
        r.names
            .insert("web".into(), vec!["172.19.0.2".parse().unwrap()]);
        r.reverse
            .insert("172.19.0.2".parse().unwrap(), "web".into());
        let m = ask(&r, "web.", RecordType::A);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.metadata.id, 7);
        let m = ask(&r, "WEB", RecordType::A);
        assert_eq!(m.answers.len(), 1);
        let m = ask(&r, "nope.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(&r, "2.0.19.172.in-addr.arpa.", RecordType::PTR);
        assert_eq!(m.answers.len(), 1);
        let m = ask(&r, "web.", RecordType::AAAA);
        assert_eq!(m.answers.len(), 0);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
}
