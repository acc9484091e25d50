//! Tiny built-in services for lab containers (`nettool serve http|echo|udp-echo PORT`), so a
//! lab needs nothing installed. tokio, a few lines each.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// HTTP/1.1 server: every request gets `body` (200, text/plain); keeps connections alive.
pub(crate) async fn http(addr: SocketAddr, body: String) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (mut conn, _) = listener.accept().await?;
        let body = body.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                // Read one request head (bodies are ignored unless Content-Length says so).
                let head_end = loop {
                    if let Some(i) = find(&buf, b"\r\n\r\n") {
                        break i + 4;
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if buf.len() > 64 * 1024 {
                        return;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let clen: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + clen {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..head_end + clen);
                let close = head.to_ascii_lowercase().contains("connection: close");
                let is_head = head.starts_with("HEAD ");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: nettool-serve\r\n{}\r\n{}",
                    body.len(),
                    if close { "Connection: close\r\n" } else { "" },
                    if is_head { "" } else { body.as_str() }
                );
                if conn.write_all(resp.as_bytes()).await.is_err() || close {
                    return;
                }
            }
        });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// TCP echo server.
pub(crate) async fn echo(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (mut conn, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (mut r, mut w) = conn.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// UDP echo server.
pub(crate) async fn udp_echo(addr: SocketAddr) -> std::io::Result<()> {
    let sock = tokio::net::UdpSocket::bind(addr).await?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        let _ = sock.send_to(&buf[..n], peer).await;
    }
}
