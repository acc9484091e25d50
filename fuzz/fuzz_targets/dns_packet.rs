//! Fuzz `nettool dns`'s frame decoding (every link kind, ICMP unreachables) and the DNS
//! message decoder: no input may panic. The body is `nettool::dns::packet::fuzz_one`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nettool::dns::packet::fuzz_one(data);
});
