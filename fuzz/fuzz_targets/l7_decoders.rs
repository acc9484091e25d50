//! Fuzz the proxy's L7 decoders (HTTP both ways, TLS ClientHello, RESP both ways, DNS over
//! TCP) fed in reads of a size the input picks: no input may panic. The body is
//! `nettool::tap::l7::fuzz_one`, which `cargo test --lib fuzz_replay` also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nettool::tap::l7::fuzz_one(data);
});
