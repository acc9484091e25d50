//! Fuzz the iptables-save / ip6tables-save / `iptables -S` loaders alone and everything built on
//! what they load: no input may panic. Seeds: fuzz/seed-nat (the iptables-save fixtures).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nettool::nat;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    nat::fuzz_ruleset(&nat::iptables::parse(text));
    nat::fuzz_ruleset(&nat::iptables::parse_save_family(text, "ip6"));
    nat::fuzz_ruleset(&nat::iptables::parse_rules(text, "nat"));
});
