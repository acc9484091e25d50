//! `nettool serve http|echo|udp-echo PORT`: the lab's built-in services.

use anyhow::Context;
use clap::Args;

use crate::lab::serve;

/// Which built-in service `serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ServeKind {
    /// HTTP/1.1: answers every request with "hello from CONTAINER".
    Http,
    /// TCP echo.
    Echo,
    /// UDP echo.
    UdpEcho,
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The service.
    #[arg(value_enum)]
    pub kind: ServeKind,
    /// The port.
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
    /// HTTP body (default: "hello from $NETTOOL_CONTAINER").
    #[arg(long)]
    pub text: Option<String>,
}

/// Run a built-in service until killed.
pub(crate) fn run(a: ServeArgs) -> anyhow::Result<i32> {
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
