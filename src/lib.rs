//! nettool: debug container networking on Linux from one binary.
//!
//! The library holds the netns-aware core ([`netns`]) and the subsystems the commands drive.
//! `src/main.rs` and `src/cmd/` are the only places that print.

#![warn(unreachable_pub)]

pub(crate) mod capture;
pub mod cli;
pub mod cmd;
pub mod dns;
pub(crate) mod doctor;
pub(crate) mod engine;
pub(crate) mod facts;
pub mod lab;
pub mod nat;
pub mod netns;
pub(crate) mod output;
mod program;
pub(crate) mod proxy;
pub mod tap;
pub(crate) mod topology;
pub(crate) mod trace;
