//! Fuzz the `nft -j list ruleset` loader alone (sets, maps, xt, counters) and everything built on
//! what it loads: no input may panic. Seeds: fuzz/seed-nat (nft -j of every .nft fixture).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nettool::nat;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rs) = nat::nft::parse(text) {
        nat::fuzz_ruleset(&rs);
    }
});
