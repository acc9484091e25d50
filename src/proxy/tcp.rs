//! TCP: accept, dial the backend from the target namespace, relay, report.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::Type;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

use super::relay::relay;
use super::spec::PortMap;
use super::{Ctx, Level, Proto};
use crate::tap::event::{CloseReason, ConnInfo, Event, Timestamp};

/// How long a backend dial may take before the client is reset.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(20);

/// An IPv4-mapped IPv6 address shown as the IPv4 address it is.
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Accept forever on one listener.
pub(crate) async fn serve(listener: TcpListener, map: PortMap, ctx: Arc<Ctx>) {
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                let (ctx, map) = (ctx.clone(), map.clone());
                tokio::spawn(async move { handle(s, canonical(peer), map, ctx).await });
            }
            Err(e) => {
                ctx.log(Level::Warn, format!("accept on tcp {}: {e}", map.listen));
                // Out of fds or memory: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connect to `target` with a socket made in the dialer's namespace (carrying the client's
/// address in transparent mode).
pub(crate) async fn dial(
    ctx: &Ctx,
    id: u64,
    client: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<TcpStream> {
    let target = ctx.rescoped(target);
    let d = ctx
        .dialer
        .socket(target, Type::STREAM, ctx.source_for(client))
        .await?;
    if let Some(f) = &d.fallback {
        ctx.fallback(id, client, f);
    }
    // A non-blocking connect, then one wait for writability. Not TcpSocket::connect: it asks
    // for SO_ERROR after every connect, a syscall per connection that only a failure needs
    // (a failed connect reports HUP/ERR, which is when the error is read).
    match d.socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(d.socket))?;
    let ready = match tokio::time::timeout(DIAL_TIMEOUT, stream.ready(Interest::WRITABLE)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}s", DIAL_TIMEOUT.as_secs()),
            ))
        }
    };
    if ready.is_write_closed() || ready.is_error() {
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    Ok(stream)
}

/// [`dial`] each of `map`'s backend addresses in turn until one connects: the socket and the
/// address; else the last address's error, and that address.
pub(crate) async fn dial_in_order(
    ctx: &Ctx,
    id: u64,
    client: SocketAddr,
    map: &PortMap,
) -> Result<(TcpStream, SocketAddr), (std::io::Error, SocketAddr)> {
    // A target name's addresses as they are now (asked again on a thread of its own).
    let all = map.targets();
    let mut tried = all.first().copied().unwrap_or(map.target);
    let mut r = dial(ctx, id, client, tried)
        .await
        .map(|s| (s, tried))
        .map_err(|e| (e, tried));
    for to in all.iter().skip(1).copied() {
        match &r {
            Ok(_) => break,
            Err((e, _)) => {
                ctx.debug(|| format!("#{id} cannot connect to backend {tried}: {e}; trying {to}"))
            }
        }
        tried = to;
        r = dial(ctx, id, client, to)
            .await
            .map(|s| (s, to))
            .map_err(|e| (e, to));
    }
    r
}

/// A connection counted as open until this drops (it counts the connection in as it is made).
pub(crate) struct Active<'a>(&'a Ctx);

impl<'a> Active<'a> {
    /// Count a new connection, open until the returned value drops.
    pub(crate) fn new(ctx: &'a Ctx) -> Self {
        ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
        ctx.counters.active.fetch_add(1, Ordering::Relaxed);
        Active(ctx)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tell the tap (if one watches) that `conn` closed, why, and how many bytes went each way.
pub(crate) async fn tap_close(
    ctx: &Ctx,
    conn: Arc<ConnInfo>,
    reason: CloseReason,
    (up, down): (u64, u64),
) {
    if let Some(tap) = &ctx.tap {
        tap.send(Event::Close {
            conn,
            ts: Timestamp::now(),
            reason,
            bytes_c2s: up,
            bytes_s2c: down,
        })
        .await;
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, map: PortMap, ctx: Arc<Ctx>) {
    let id = ctx.next_id();
    let _active = Active::new(&ctx);
    // getsockname only when someone will read the addresses (a dump, -v, a PROXY header).
    let detail = ctx.tap.is_some() || ctx.log.enabled(Level::Debug) || ctx.proxy_protocol.is_some();
    let listen = if detail {
        client.local_addr().map(canonical).unwrap_or(map.listen)
    } else {
        map.listen
    };
    // TCP_NODELAY on the client side is inherited from the listener (sock::set_listener_nodelay).
    let dialed_in = ctx.target.as_ref().map(|w| w.gen());
    let mut dialed = dial_in_order(&ctx, id, peer, &map).await;
    let mut hint = String::new();
    if let Err((e, _)) = &dialed {
        hint = ctx.target_hint_async().await;
        // Refused in a namespace --target-netns no longer names: once more in the new one
        // (the dialer thread moves before its next socket).
        if ctx.target.as_ref().map(|w| w.gen()) != dialed_in {
            let listen = client.local_addr().map(canonical).unwrap_or(listen);
            ctx.log(
                Level::Warn,
                format!(
                    "#{id} {peer} -> {listen}: cannot connect to {}: {e}{hint}; dialing this connection again there",
                    map.failed_text()
                ),
            );
            dialed = dial_in_order(&ctx, id, peer, &map).await;
            hint = String::new();
        }
    }
    let (backend, to) = match dialed {
        Ok(b) => b,
        Err((e, last)) => {
            let listen = client.local_addr().map(canonical).unwrap_or(listen);
            ctx.counters.dial_errors.fetch_add(1, Ordering::Relaxed);
            map.all_failed();
            if hint.is_empty() {
                hint = ctx.target_hint_async().await;
            }
            ctx.log(
                Level::Warn,
                format!(
                    "#{id} {peer} -> {listen}: cannot connect to {}: {e}{hint}; resetting the client",
                    map.failed_text()
                ),
            );
            let _ = client.set_zero_linger();
            if ctx.tap.is_some() {
                let conn = Arc::new(ConnInfo {
                    id,
                    transport: Proto::Tcp,
                    client: peer,
                    listen,
                    // The address whose failure the reason gives (a name's last).
                    local: SocketAddr::new(last.ip(), 0),
                    backend: last,
                    unix: None,
                });
                tap_close(&ctx, conn, CloseReason::DialFailed(e.to_string()), (0, 0)).await;
            }
            return;
        }
    };
    let _ = backend.set_nodelay(true);
    let mut backend = backend;
    if let Some(pp) = ctx.proxy_protocol {
        // Before any byte of the client's: the backend reads it first.
        let header = pp.header(Proto::Tcp, peer, listen);
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut backend, &header).await {
            ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
            ctx.log(
                Level::Warn,
                format!(
                    "#{id} {peer} -> {listen}: cannot send the PROXY header to backend {to}: {e}; resetting the client",
                ),
            );
            let _ = client.set_zero_linger();
            return;
        }
    }
    let conn = Arc::new(ConnInfo {
        id,
        transport: Proto::Tcp,
        client: peer,
        listen,
        local: if detail {
            backend.local_addr().map(canonical).unwrap_or(to)
        } else {
            SocketAddr::new(to.ip(), 0)
        },
        backend: to,
        unix: None,
    });
    ctx.debug(|| {
        format!(
            "#{id} open {peer} -> {listen} => {} -> {}",
            conn.local, conn.backend
        )
    });
    if let Some(tap) = &ctx.tap {
        tap.send(Event::Open {
            conn: conn.clone(),
            ts: Timestamp::now(),
        })
        .await;
    }
    let (reason, up, down) = relay(client, backend, &conn, &ctx).await;
    ctx.debug(|| format!("#{id} close {reason} c2s={up} s2c={down}"));
    tap_close(&ctx, conn, reason, (up, down)).await;
}
