//! Fuzz the lab file parser (`nettool setup FILE`, `--dry-run`): parse, render the error with
//! its line, plan an accepted lab both ways and serialise the plan: no input may panic. The body
//! is `nettool::lab::spec::fuzz_one`, which `cargo test --lib fuzz_replay` also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nettool::lab::spec::fuzz_one(data);
});
