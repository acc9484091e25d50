//! A small syslog client for the proxy's log lines: RFC 3164-style datagrams
//! (`<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG`, the layout glibc's syslog(3) sends) over a unix
//! datagram socket, /dev/log by default. docker-proxy mode needs it: dockerd sends the proxy's
//! stdout and stderr to /dev/null.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use super::logq::LineSink;
use super::Level;
use crate::tap::event::Timestamp;

/// The socket syslog daemons (rsyslog, syslog-ng, systemd-journald, busybox syslogd) read.
pub(crate) const DEFAULT_SOCKET: &str = "/dev/log";

/// Facility `daemon` (3), shifted into place: PRI = facility * 8 + severity.
const FACILITY_DAEMON: u8 = 3 << 3;

/// Longest message sent; longer ones are cut (many daemons drop datagrams over 8 KiB).
const MAX_MESSAGE: usize = 4096;

/// The syslog socket cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach syslog at {path}: {error}{hint}")]
pub(crate) struct SyslogError {
    /// The socket path.
    pub path: PathBuf,
    /// Why (not a `source`: the message already says it, once).
    pub error: io::Error,
    /// What to do about it.
    pub hint: &'static str,
}

/// A connected syslog socket.
#[derive(Debug)]
pub(crate) struct Syslog {
    path: PathBuf,
    tag: String,
    pid: u32,
    sock: Option<UnixDatagram>,
}

/// The syslog severity of a [`Level`] (RFC 5424 numbers: err 3, warning 4, info 6, debug 7).
pub(crate) fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug => 7,
    }
}

fn connect(path: &Path) -> io::Result<UnixDatagram> {
    let s = UnixDatagram::unbound()?;
    s.connect(path)?;
    Ok(s)
}

impl Syslog {
    /// Connect to the daemon's socket at `path`; lines are tagged `TAG[PID]`.
    pub(crate) fn connect(path: &Path, tag: &str) -> Result<Syslog, SyslogError> {
        let sock = connect(path).map_err(|error| SyslogError {
            path: path.into(),
            hint: match error.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => {
                    " (no syslog daemon listens there: start rsyslog or systemd-journald, or log to a file instead)"
                }
                Some(libc::EPROTOTYPE) => {
                    " (that is not a datagram socket: syslog daemons listen on SOCK_DGRAM)"
                }
                Some(libc::EACCES) => " (permission denied: run as root or fix the socket's mode)",
                _ => "",
            },
            error,
        })?;
        Ok(Syslog {
            path: path.into(),
            tag: tag.into(),
            pid: std::process::id(),
            sock: Some(sock),
        })
    }

    /// The datagram for one line, stamped with local time like syslog(3).
    pub(crate) fn format(&self, level: Level, msg: &str, unix_secs: i64) -> String {
        let pri = FACILITY_DAEMON | severity(level);
        let mut m: String = msg
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        if m.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
        }
        format!(
            "<{pri}>{} {}[{}]: {m}",
            stamp(unix_secs),
            self.tag,
            self.pid
        )
    }

    #[cfg(test)]
    /// Send one line. A daemon that restarted (new socket) is reconnected once; a line that
    /// still cannot go is dropped and the error returned.
    pub(crate) fn send(&mut self, level: Level, msg: &str) -> io::Result<()> {
        self.send_at(level, msg, Timestamp::now().split().0 as i64)
    }

    /// Send one line stamped `unix_secs` (when it was logged, not when it got out of the queue).
    pub(crate) fn send_at(&mut self, level: Level, msg: &str, unix_secs: i64) -> io::Result<()> {
        let line = self.format(level, msg, unix_secs);
        if let Some(s) = &self.sock {
            match s.send(line.as_bytes()) {
                Ok(_) => return Ok(()),
                Err(e)
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED) | Some(libc::ENOTCONN) | Some(libc::ENOENT)
                    ) =>
                {
                    return Err(e)
                }
                Err(_) => {}
            }
        }
        self.sock = None;
        let s = connect(&self.path)?;
        let r = s.send(line.as_bytes()).map(|_| ());
        self.sock = Some(s);
        r
    }
}

impl LineSink for Syslog {
    fn write_line(&mut self, level: Level, at: Timestamp, msg: &str) -> io::Result<()> {
        self.send_at(level, msg, at.split().0 as i64)
    }

    fn describe(&self) -> String {
        format!("the syslog daemon at {}", self.path.display())
    }
}

/// `Nov 27 23:58:04` in local time (day padded with a space, as RFC 3164 says).
fn stamp(unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t: libc::time_t = unix_secs as libc::time_t;
    // SAFETY: localtime_r fills the zeroed struct we own; both pointers are valid for the call.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return "Jan  1 00:00:00".into();
        }
        tm
    };
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[(tm.tm_mon.clamp(0, 11)) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::logq::{LogQueue, QUEUE_LINES};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A stand-in daemon: a datagram socket bound at DIR/SOCK in a fresh temporary DIR
    /// (removed by the caller): the directory, the socket's path and the socket.
    fn stand_in_daemon(
        tag: &str,
        sock: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf, UnixDatagram) {
        let dir = std::env::temp_dir().join(format!("nt-syslog-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(sock);
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        (dir, path, rx)
    }

    #[test]
    fn pri_and_layout() {
        let (dir, path, rx) = stand_in_daemon("unit", "log.sock");
        let mut s = Syslog::connect(&path, "nettool-proxy").unwrap();
        s.send(Level::Warn, "two\nlines").unwrap();
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(line.starts_with("<28>"), "{line}");
        assert!(
            line.ends_with(&format!("nettool-proxy[{}]: two lines", std::process::id())),
            "{line}"
        );
        // `<28>Mmm dd hh:mm:ss ` is 4 + 16 bytes.
        assert_eq!(&line[7..8], " ", "{line}");
        assert_eq!(&line[13..14], ":", "{line}");
        assert_eq!(severity(Level::Error), 3);
        assert_eq!(severity(Level::Debug), 7);
        let e = Syslog::connect(&dir.join("none"), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no syslog daemon listens there"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stalled_daemon_costs_dropped_lines_that_are_counted_never_a_wait() {
        let (dir, path, rx) = stand_in_daemon("q", "stalled.sock");
        let q = LogQueue::start(Box::new(Syslog::connect(&path, "t").unwrap())).unwrap();
        // Nobody reads: the daemon's socket and then the queue fill up; logging never blocks.
        let total = QUEUE_LINES + 300;
        for i in 0..total {
            q.log(Level::Info, &format!("line {i}"));
        }
        // The daemon comes back and reads everything.
        let got = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok(n) = rx.recv(&mut buf) {
                let l = String::from_utf8_lossy(&buf[..n]).into_owned();
                g.lock().unwrap().push(l);
            }
        });
        assert!(q.flush(Duration::from_secs(10)), "the queue drains");
        // Dropped lines are reported in notes ("N log line(s) dropped: ..."), one per run of drops.
        let suffix = format!(
            " log line(s) dropped: the syslog daemon at {} did not keep up",
            path.display()
        );
        let count = |lines: &[String]| {
            let dropped: usize = lines
                .iter()
                .filter_map(|l| {
                    l.split_once("]: ")?
                        .1
                        .strip_suffix(&suffix)?
                        .parse::<usize>()
                        .ok()
                })
                .sum();
            let delivered = lines.iter().filter(|l| l.contains("]: line ")).count();
            (delivered, dropped)
        };
        // Every line either reaches the daemon or is in a count.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (delivered, dropped) = count(&got.lock().unwrap());
            if delivered + dropped == total {
                assert!(dropped > 0, "nothing dropped");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{delivered} delivered + {dropped} dropped != {total} logged"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
