//! Fuzz the `nft list ruleset` text loader alone (sets, maps, concatenations) and everything built
//! on what it loads: no input may panic. Seeds: fuzz/seed-nat (the .nft fixtures).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nettool::nat;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    nat::fuzz_ruleset(&nat::nft::parse_text(text));
});
