//! UDP conntrack entries of the host (IPv4 and IPv6), read over ctnetlink.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::netns::conntrack::{Conntrack, Entry, Tuple};
use crate::netns::NetNs;

/// One UDP conntrack entry: the original direction and where replies come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CtEntry {
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
    /// A UDP entry as read from ctnetlink; its text is in `conntrack -L`'s key=value words.
    fn from_entry(e: &Entry) -> CtEntry {
        let (o, r) = (e.original, e.reply);
        let words = |t: Tuple| {
            format!(
                "src={} dst={} sport={} dport={}",
                t.src, t.dst, t.sport, t.dport
            )
        };
        CtEntry {
            src: Some(o.src),
            dst: Some(o.dst),
            sport: Some(o.sport),
            dport: Some(o.dport),
            reply_src: Some(r.src),
            reply_sport: Some(r.sport),
            text: format!("udp {} {}", words(o), words(r)),
        }
    }
}

/// Every UDP entry of `ns`, IPv4 and IPv6, from one ctnetlink dump (None when it failed:
/// conntrack not loaded, or no permission).
pub(crate) fn read(ns: &NetNs) -> Option<Vec<CtEntry>> {
    let dumped = ns.run(|| Conntrack::open_here()?.dump()).ok()?;
    match dumped {
        Ok(all) => Some(
            all.iter()
                .filter(|e| e.original.proto == libc::IPPROTO_UDP as u8)
                .map(CtEntry::from_entry)
                .collect(),
        ),
        Err(e) => {
            tracing::debug!("conntrack dump in {}: {e}", ns.label());
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
        });
        assert_eq!(e.reply_src, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(e.reply_sport, Some(5353));
        assert_eq!((e.sport, e.dport), (Some(40000), Some(5353)));
        assert_eq!(
            e.text,
            "udp src=10.0.0.9 dst=127.0.0.1 sport=40000 dport=5353 src=127.0.0.1 dst=10.0.0.9 sport=5353 dport=40000"
        );
    }
}
