//! UDP conntrack entries of the host, as `conntrack -L` prints them (IPv4 and IPv6).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::netns::NetNs;

use super::firewall::capture;

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

/// Parse `conntrack -L` output (UDP lines).
pub(crate) fn parse(text: &str) -> Vec<CtEntry> {
    text.lines()
        .filter(|l| l.starts_with("udp") || l.starts_with("ipv4") || l.starts_with("ipv6"))
        .filter(|l| l.split_whitespace().any(|w| w == "udp"))
        .map(|l| {
            let vals = |key: &str| -> Vec<&str> {
                l.split_whitespace()
                    .filter_map(|w| w.strip_prefix(key))
                    .collect()
            };
            let (srcs, dsts, sports, dports) =
                (vals("src="), vals("dst="), vals("sport="), vals("dport="));
            let ip = |v: &Vec<&str>, i: usize| v.get(i).and_then(|s| s.parse().ok());
            let port = |v: &Vec<&str>, i: usize| v.get(i).and_then(|s| s.parse().ok());
            CtEntry {
                src: ip(&srcs, 0),
                dst: ip(&dsts, 0),
                sport: port(&sports, 0),
                dport: port(&dports, 0),
                reply_src: ip(&srcs, 1),
                reply_sport: port(&sports, 1),
                text: l.trim().to_string(),
            }
        })
        .collect()
}

/// Every UDP entry of `ns` (None when the conntrack tool is missing or failed).
pub(crate) fn read(ns: &NetNs) -> Option<Vec<CtEntry>> {
    let v4 = capture(ns, &["conntrack", "-L", "-p", "udp"]).ok()?;
    let mut all = parse(&v4);
    if let Ok(v6) = capture(ns, &["conntrack", "-L", "-f", "ipv6", "-p", "udp"]) {
        all.extend(parse(&v6));
    }
    Some(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let e = parse("udp      17 29 src=10.0.0.9 dst=127.0.0.1 sport=40000 dport=5353 [UNREPLIED] src=127.0.0.1 dst=10.0.0.9 sport=5353 dport=40000 mark=0 use=1\n");
        assert_eq!(e[0].reply_src, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(e[0].reply_sport, Some(5353));
        assert_eq!(e[0].dport, Some(5353));
        assert_eq!(e[0].src, Some("10.0.0.9".parse().unwrap()));
        assert!(
            parse("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n")
                .is_empty()
        );
    }
}
