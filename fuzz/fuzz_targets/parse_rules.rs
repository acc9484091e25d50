//! Fuzz the rule loaders (auto-detecting parse_text, iptables-save / -S, ip6tables-save, nft JSON,
//! nft text) and everything built on a loaded ruleset (the walked summary, packet walks): no input
//! may panic. The body is `nettool::nat::fuzz_one`, which `cargo test --test explain_nat
//! fuzz_replay` also runs on stable over the fixtures and their mutations.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nettool::nat::fuzz_one(data);
});
