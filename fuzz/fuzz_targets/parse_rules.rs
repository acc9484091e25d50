//! Fuzz the rule loaders (iptables-save / -S, nft JSON, nft text) and everything built on a
//! loaded ruleset (summary, packet walk): no input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nettool::nat::{self, explain, walk};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sets = [
        Some(nat::iptables::parse(text)),
        Some(nat::iptables::parse_rules(text, "nat")),
        nat::nft::parse(text).ok(),
        Some(nat::nft::parse_text(text)),
    ];
    let packets = [
        "tcp 203.0.113.5:40000 -> 192.0.2.10:8080 in eth0",
        "udp 10.0.0.2:5353 -> 127.0.0.11:53",
    ];
    for rs in sets.into_iter().flatten() {
        let s = explain::summarize(&rs);
        let _ = serde_json::to_string(&s);
        for (i, spec) in packets.iter().enumerate() {
            if let Ok(mut p) = walk::Packet::parse(spec) {
                p.from_host = i == 1;
                let _ = walk::walk(&rs, &p, &walk::LocalFacts::default());
            }
        }
    }
    // The packet spec parser too.
    let _ = walk::Packet::parse(text);
});
