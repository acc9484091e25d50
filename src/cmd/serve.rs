//! `nettool serve http|echo|udp-echo PORT`: the lab's built-in services.

use anyhow::Context;

use crate::cli::{ServeArgs, ServeKind};
use crate::lab::serve;

/// Run a built-in service until killed.
pub fn run(a: ServeArgs) -> anyhow::Result<i32> {
    let addr = std::net::SocketAddr::new(a.bind, a.port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let who = std::env::var("NETTOOL_CONTAINER").unwrap_or_else(|_| "nettool".into());
    let body = a.text.unwrap_or_else(|| format!("hello from {who}\n"));
    rt.block_on(async {
        let task = async {
            match a.kind {
                ServeKind::Http => serve::http(addr, body).await,
                ServeKind::Echo => serve::echo(addr).await,
                ServeKind::UdpEcho => serve::udp_echo(addr).await,
            }
        };
        tokio::select! {
            r = task => r.with_context(|| format!("serve on {addr}")),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(0)
}
