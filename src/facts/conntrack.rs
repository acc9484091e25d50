//! TCP and UDP conntrack entries of the host (IPv4 and IPv6), read over ctnetlink. doctor
//! judges the UDP ones (a stale entry misdirects a flow that keeps its source port); TCP
//! entries are evidence (a new connection gets a new entry).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::netns::conntrack::{Conntrack, Entry, TcpState, Tuple};
use crate::netns::sockets::Proto;
use crate::netns::NetNs;

/// Snapshots recorded before TCP was read hold UDP entries only.
fn udp() -> Proto {
    Proto::Udp
}

/// One TCP or UDP conntrack entry: the original direction and where replies come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CtEntry {
    /// tcp or udp.
    #[serde(default = "udp")]
    pub proto: Proto,
    /// A TCP entry's state (ESTABLISHED, TIME_WAIT...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<TcpState>,
    /// Original source.
    pub src: Option<IpAddr>,
    /// Original destination (what the client used).
    pub dst: Option<IpAddr>,
    /// Original source port.
    pub sport: Option<u16>,
    /// Original destination port.
    pub dport: Option<u16>,
    /// Where replies come from (the DNAT target, or the original destination).
    pub reply_src: Option<IpAddr>,
    /// Their source port.
    pub reply_sport: Option<u16>,
    /// The line as printed.
    pub text: String,
}

impl CtEntry {
    /// A TCP or UDP entry as read from ctnetlink (None for other protocols); its text is in
    /// `conntrack -L`'s words (protocol, TCP state, key=value tuples).
    fn from_entry(e: &Entry) -> Option<CtEntry> {
        let (o, r) = (e.original, e.reply);
        let proto = match o.proto as i32 {
            libc::IPPROTO_TCP => Proto::Tcp,
            libc::IPPROTO_UDP => Proto::Udp,
            _ => return None,
        };
        let words = |t: Tuple| {
            format!(
                "src={} dst={} sport={} dport={}",
                t.src, t.dst, t.sport, t.dport
            )
        };
        let state = e
            .tcp_state
            .map(|s| format!(" {}", s.as_str()))
            .unwrap_or_default();
        Some(CtEntry {
            proto,
            tcp_state: e.tcp_state,
            src: Some(o.src),
            dst: Some(o.dst),
            sport: Some(o.sport),
            dport: Some(o.dport),
            reply_src: Some(r.src),
            reply_sport: Some(r.sport),
            text: format!("{proto}{state} {} {}", words(o), words(r)),
        })
    }
}

/// Every TCP and UDP entry of `ns`, IPv4 and IPv6, from one ctnetlink dump (None when it
/// failed: conntrack not loaded, or no permission).
pub(crate) fn read(ns: &NetNs) -> Option<Vec<CtEntry>> {
    ns.run(read_here).ok().flatten()
}

/// [`read`] in the calling thread's namespace (a namespace thread the snapshot is already in).
pub(crate) fn read_here() -> Option<Vec<CtEntry>> {
    match Conntrack::open_here().and_then(|mut c| c.dump()) {
        Ok(all) => Some(all.iter().filter_map(CtEntry::from_entry).collect()),
        Err(e) => {
            tracing::debug!("conntrack dump: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_entry_keeps_both_sides_and_reads_as_conntrack_prints_it() {
        let t = |s: &str, d: &str| Tuple::new(17, s.parse().unwrap(), d.parse().unwrap());
        let e = CtEntry::from_entry(&Entry {
            original: t("10.0.0.9:40000", "127.0.0.1:5353"),
            reply: t("127.0.0.1:5353", "10.0.0.9:40000"),
            tcp_state: None,
        })
        .unwrap();
        assert_eq!(e.proto, Proto::Udp);
        assert_eq!(e.reply_src, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(e.reply_sport, Some(5353));
        assert_eq!((e.sport, e.dport), (Some(40000), Some(5353)));
        assert_eq!(
            e.text,
            "udp src=10.0.0.9 dst=127.0.0.1 sport=40000 dport=5353 src=127.0.0.1 dst=10.0.0.9 sport=5353 dport=40000"
        );
    }

    #[test]
    fn a_tcp_entry_carries_its_state_and_an_old_snapshots_entries_are_udp() {
        let t = |s: &str, d: &str| Tuple::new(6, s.parse().unwrap(), d.parse().unwrap());
        let e = CtEntry::from_entry(&Entry {
            original: t("192.0.2.2:40000", "192.0.2.1:8080"),
            reply: t("172.17.0.2:80", "192.0.2.2:40000"),
            tcp_state: Some(TcpState::TimeWait),
        })
        .unwrap();
        assert_eq!(
            (e.proto, e.tcp_state),
            (Proto::Tcp, Some(TcpState::TimeWait))
        );
        assert_eq!(
            e.text,
            "tcp TIME_WAIT src=192.0.2.2 dst=192.0.2.1 sport=40000 dport=8080 src=172.17.0.2 dst=192.0.2.2 sport=80 dport=40000"
        );
        // Recorded, then read back: typed as it was.
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["proto"], "tcp");
        assert_eq!(json["tcp_state"], "TIME_WAIT");
        assert_eq!(serde_json::from_value::<CtEntry>(json).unwrap(), e);
        // Snapshots recorded before TCP was read: no proto, UDP.
        let old: CtEntry = serde_json::from_str(
            r#"{"src":"10.0.0.9","dst":"127.0.0.1","sport":1,"dport":2,"reply_src":"127.0.0.1","reply_sport":2,"text":"udp"}"#,
        )
        .unwrap();
        assert_eq!((old.proto, old.tcp_state), (Proto::Udp, None));
        // ICMP is not kept.
        let icmp = Tuple::new(
            1,
            "10.0.0.1:7".parse().unwrap(),
            "10.0.0.2:7".parse().unwrap(),
        );
        assert!(CtEntry::from_entry(&Entry {
            original: icmp,
            reply: icmp.reversed(),
            tcp_state: None,
        })
        .is_none());
    }
}
