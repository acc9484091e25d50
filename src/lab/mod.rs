//! `nettool setup` / `teardown`: a complete Docker-style bridge network lab without Docker.
//!
//! [`spec`] reads the lab file, [`plan`] turns it into steps, [`firewall`] writes the rules as
//! text, [`apply`] carries the plan out with a journal and rollback, [`state`] is what a
//! running lab looks like (state.json, read by other tests), [`health`] how it is doing, [`daemon`] + [`resolver`] serve the
//! embedded DNS and the lab's services, [`serve`] holds the tiny built-in services.

pub(crate) mod apply;
pub(crate) mod daemon;
pub(crate) mod firewall;
pub(crate) mod health;
pub(crate) mod plan;
pub(crate) mod resolver;
pub(crate) mod serve;
pub mod spec;
pub mod state;
