//! nettool: debug container networking on Linux from one binary.
//!
//! The library holds the netns-aware core ([`netns`]) and the subsystems the commands drive.
//! `src/main.rs` and `src/cmd/` are the only places that print.

pub mod capture;
pub mod cli;
pub mod cmd;
pub mod dns;
pub mod doctor;
pub mod engine;
pub mod facts;
pub mod lab;
pub mod nat;
pub mod netns;
pub mod output;
mod program;
pub mod proxy;
pub mod tap;
pub mod topology;
pub mod trace;
