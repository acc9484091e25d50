//! Moving bytes between the two streams of a connection with a unix socket end (TCP or unix
//! on either side): a plain copy through a buffer, each read handed to the tap when one
//! watches. A FIN (EOF) is passed on as a half-close; a reset ends the connection and a TCP
//! peer on the other side gets one too (SO_LINGER 0). The TCP-only relay (splice, urgent
//! data) stays untouched by this path.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::proxy::relay::{is_reset, resets_after};
use crate::proxy::Ctx;
use crate::tap::event::{CloseReason, ConnInfo, Direction, Event, Timestamp};
use crate::tap::Tap;

/// One side of a connection.
pub(crate) enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A unix stream socket.
    Unix(UnixStream),
}

type Reader<'a> = Pin<Box<dyn AsyncRead + Send + 'a>>;
type Writer<'a> = Pin<Box<dyn AsyncWrite + Send + 'a>>;

impl Stream {
    /// Borrowed read and write halves (a write half's shutdown is shutdown(SHUT_WR)).
    fn halves(&mut self) -> (Reader<'_>, Writer<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (Box::pin(r), Box::pin(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.split();
                (Box::pin(r), Box::pin(w))
            }
        }
    }

    /// Reset a TCP peer when this closes (a unix socket has no reset: it is closed).
    pub(crate) fn reset_on_close(&self) {
        if let Stream::Tcp(s) = self {
            let _ = s.set_zero_linger();
        }
    }
}

/// How a direction stopped early.
enum End {
    /// Reading the source failed.
    Src(io::Error),
    /// Writing the destination failed.
    Dst(io::Error),
}

/// Bytes read at a time.
const BUF: usize = 64 * 1024;

/// Copy `src` to `dst` until EOF, then shut `dst`'s write side (the half-close passed on).
#[allow(clippy::too_many_arguments)]
async fn pump(
    mut src: Reader<'_>,
    mut dst: Writer<'_>,
    tap: Option<&Tap>,
    conn: &Arc<ConnInfo>,
    dir: Direction,
    count: (&AtomicU64, &AtomicU64),
) -> Result<(), End> {
    let mut buf = vec![0u8; BUF];
    let mut offset = 0u64;
    loop {
        let n = src.read(&mut buf).await.map_err(End::Src)?;
        let ts = Timestamp::now();
        if n == 0 {
            if let Some(tap) = tap.filter(|t| !t.is_closed()) {
                tap.send(Event::Fin {
                    conn: conn.clone(),
                    dir,
                    ts,
                })
                .await;
            }
            // A peer already gone makes this fail; the other direction says so.
            let _ = dst.shutdown().await;
            return Ok(());
        }
        if let Some(tap) = tap.filter(|t| !t.is_closed()) {
            // Queued before the write, so a request shows before its response.
            tap.send(Event::Data {
                conn: conn.clone(),
                dir,
                offset,
                ts,
                bytes: Arc::new(buf[..n].to_vec()),
            })
            .await;
        }
        dst.write_all(&buf[..n]).await.map_err(End::Dst)?;
        offset += n as u64;
        count.0.fetch_add(n as u64, Ordering::Relaxed);
        count.1.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Why the connection ended, from the direction that stopped it.
fn reason(dir: Direction, end: End) -> CloseReason {
    let (client_side, e) = match (dir, end) {
        (Direction::ClientToServer, End::Src(e)) | (Direction::ServerToClient, End::Dst(e)) => {
            (true, e)
        }
        (Direction::ServerToClient, End::Src(e)) | (Direction::ClientToServer, End::Dst(e)) => {
            (false, e)
        }
    };
    match (is_reset(&e), client_side) {
        (true, true) => CloseReason::ClientReset,
        (true, false) => CloseReason::BackendReset,
        (false, _) => CloseReason::Error(e.to_string()),
    }
}

/// Relay until both directions end or one side resets; returns why and the byte counts.
pub(crate) async fn relay(
    mut client: Stream,
    mut backend: Stream,
    conn: &Arc<ConnInfo>,
    ctx: &Ctx,
) -> (CloseReason, u64, u64) {
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let c = &ctx.counters;
    let reason = {
        let (cr, cw) = client.halves();
        let (br, bw) = backend.halves();
        let tap = ctx.tap.as_ref();
        let c2s = pump(
            cr,
            bw,
            tap,
            conn,
            Direction::ClientToServer,
            (&up, &c.bytes_c2s),
        );
        let s2c = pump(
            br,
            cw,
            tap,
            conn,
            Direction::ServerToClient,
            (&down, &c.bytes_s2c),
        );
        tokio::pin!(c2s, s2c);
        let (dir, r) = tokio::select! {
            r = &mut c2s => (Direction::ClientToServer, r),
            r = &mut s2c => (Direction::ServerToClient, r),
        };
        match r {
            Err(e) => reason(dir, e),
            // One half-closed: the other direction runs on to its own end.
            Ok(()) => {
                let rest = match dir {
                    Direction::ClientToServer => s2c.await,
                    Direction::ServerToClient => c2s.await,
                };
                match rest {
                    Ok(()) => CloseReason::Normal,
                    Err(e) => reason(dir.other(), e),
                }
            }
        }
    };
    let (reset_client, reset_backend) = resets_after(&reason, ctx, conn.id);
    if reset_client {
        client.reset_on_close();
    }
    if reset_backend {
        backend.reset_on_close();
    }
    (
        reason,
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
    )
}
