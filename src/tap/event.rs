//! What a tap observes on a proxied connection: open, data, half-close, reset, close.
//!
//! Events carry the connection's identity (an `Arc<ConnInfo>`) so every renderer can name
//! both address pairs without a lookup table, and payloads as `Arc<Vec<u8>>` so the relay can
//! hand the same buffer to the tap and to the socket without copying it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The transport a mapping forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP streams.
    Tcp,
    /// UDP datagrams, one flow per client address.
    Udp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// Which way bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Direction {
    /// From the client, through the proxy, to the backend.
    #[serde(rename = "c2s")]
    ClientToServer,
    /// From the backend, through the proxy, back to the client.
    #[serde(rename = "s2c")]
    ServerToClient,
}

impl Direction {
    /// "c2s" or "s2c".
    pub fn short(self) -> &'static str {
        match self {
            Direction::ClientToServer => "c2s",
            Direction::ServerToClient => "s2c",
        }
    }
    /// socat's direction marker: `>` towards the backend, `<` back to the client.
    pub fn arrow(self) -> char {
        match self {
            Direction::ClientToServer => '>',
            Direction::ServerToClient => '<',
        }
    }
    /// The direction back.
    pub(crate) fn other(self) -> Direction {
        match self {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        }
    }
}

/// One proxied connection (TCP) or flow (UDP): both legs' address pairs.
#[derive(Debug, Clone, Serialize)]
pub struct ConnInfo {
    /// Connection number, unique within one proxy process, starting at 1.
    pub id: u64,
    /// TCP or UDP.
    pub transport: Transport,
    /// The client's address (leg 1 source).
    pub client: SocketAddr,
    /// The address the client connected to (leg 1 destination).
    pub listen: SocketAddr,
    /// The proxy's own address towards the backend (leg 2 source).
    pub local: SocketAddr,
    /// The backend's address (leg 2 destination).
    pub backend: SocketAddr,
    /// The unix socket ends, when a leg is one: its addresses above are then stand-ins made
    /// for the pcap (docs/proxy.md, "Unix sockets"), and renderers name these instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix: Option<Box<UnixEnds>>,
}

impl ConnInfo {
    /// What the dump calls the connection's kind: `unix` when a leg is a unix socket.
    pub fn kind(&self) -> String {
        match &self.unix {
            Some(_) => "unix".into(),
            None => self.transport.to_string(),
        }
    }
}

/// The unix socket ends of a proxied connection.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnixEnds {
    /// The socket file the client connected to (unix listen side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::path::PathBuf>,
    /// The connecting process, from SO_PEERCRED (unix listen side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerCred>,
    /// The socket file the proxy connected to (unix target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<std::path::PathBuf>,
}

/// Who connected to a unix socket: the process and its user and group, as the kernel saw
/// them at connect (SO_PEERCRED), and the process's name when it was accepted.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerCred {
    /// The process id (None when the kernel could not tell: another pid namespace).
    pub pid: Option<i32>,
    /// Its command name (/proc/PID/comm) at accept, anything but printable ASCII as `?`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

impl std::fmt::Display for PeerCred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, &self.comm) {
            (Some(p), Some(c)) => write!(f, "pid={p}({c}),uid={},gid={}", self.uid, self.gid),
            (Some(p), None) => write!(f, "pid={p},uid={},gid={}", self.uid, self.gid),
            (None, _) => write!(f, "uid={},gid={}", self.uid, self.gid),
        }
    }
}

/// A wall-clock timestamp with microsecond precision (microseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_micros() as u64)
    }

    /// Seconds and microseconds since the epoch.
    pub fn split(self) -> (u64, u32) {
        (self.0 / 1_000_000, (self.0 % 1_000_000) as u32)
    }

    /// `2026/11/27 21:17:00.123456` in UTC, the layout socat -v uses.
    pub fn socat(self) -> String {
        let (secs, micros) = self.split();
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        format!(
            "{y:04}/{mo:02}/{d:02} {:02}:{:02}:{:02}.{micros:06}",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }

    /// RFC 3339 in UTC with microseconds (`2026-11-27T21:17:00.123456Z`).
    pub fn rfc3339(self) -> String {
        let s = self.socat();
        format!("{}T{}Z", s[..10].replace('/', "-"), &s[11..])
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm), so we need no date crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// How a connection ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// Both sides closed normally (FIN both ways), or a UDP flow went idle.
    Normal,
    /// The client reset the connection; the reset was passed to the backend.
    ClientReset,
    /// The backend reset the connection; the reset was passed to the client.
    BackendReset,
    /// The proxy could not reach the backend; the client was reset.
    DialFailed(String),
    /// A socket error other than a reset.
    Error(String),
    /// Still open when the proxy was stopped (SIGINT/SIGTERM/SIGHUP): closed by the dump writer.
    Shutdown,
}

/// How the text dump and the `-v` log say it: `normal`, `reset by client`, ...
impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Normal => f.write_str("normal"),
            CloseReason::ClientReset => f.write_str("reset by client"),
            CloseReason::BackendReset => f.write_str("reset by backend"),
            CloseReason::DialFailed(e) => write!(f, "dial failed: {e}"),
            CloseReason::Error(e) => write!(f, "error: {e}"),
            CloseReason::Shutdown => f.write_str("proxy stopped"),
        }
    }
}

/// Something that happened on a connection.
#[derive(Debug, Clone)]
pub enum Event {
    /// A connection was accepted and its backend dialled (or a UDP flow started).
    Open {
        /// The connection.
        conn: Arc<ConnInfo>,
        /// When.
        ts: Timestamp,
    },
    /// Bytes passed in one direction.
    Data {
        /// The connection.
        conn: Arc<ConnInfo>,
        /// Which way.
        dir: Direction,
        /// Offset of the first byte in this direction's stream.
        offset: u64,
        /// When they were read.
        ts: Timestamp,
        /// The bytes.
        bytes: Arc<Vec<u8>>,
    },
    /// One side finished sending (FIN); the half-close was passed on.
    Fin {
        /// The connection.
        conn: Arc<ConnInfo>,
        /// The direction that ended.
        dir: Direction,
        /// When.
        ts: Timestamp,
    },
    /// The connection is gone.
    Close {
        /// The connection.
        conn: Arc<ConnInfo>,
        /// When.
        ts: Timestamp,
        /// Why.
        reason: CloseReason,
        /// Bytes client -> backend.
        bytes_c2s: u64,
        /// Bytes backend -> client.
        bytes_s2c: u64,
    },
}

impl Event {
    /// The connection this event belongs to.
    pub fn conn(&self) -> &Arc<ConnInfo> {
        match self {
            Event::Open { conn, .. }
            | Event::Data { conn, .. }
            | Event::Fin { conn, .. }
            | Event::Close { conn, .. } => conn,
        }
    }

    /// When it happened.
    pub fn ts(&self) -> Timestamp {
        match self {
            Event::Open { ts, .. }
            | Event::Data { ts, .. }
            | Event::Fin { ts, .. }
            | Event::Close { ts, .. } => *ts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_in_utc() {
        assert_eq!(Timestamp(0).socat(), "1970/01/01 00:00:00.000000");
        // 2024-02-29 12:34:56.000789 UTC
        let t = Timestamp(1_709_210_096_000_789);
        assert_eq!(t.socat(), "2024/02/29 12:34:56.000789");
        assert_eq!(t.rfc3339(), "2024-02-29T12:34:56.000789Z");
    }
}
