//! tcpdump-style filter expressions compiled to classic BPF by tcpdump itself (`tcpdump -ddd`),
//! once per link type, at run time: the full pcap-filter language with no C library linked into
//! nettool (a fresh machine builds it with cargo alone). The program is attached to each socket
//! with SO_ATTACH_FILTER before bind, so packets outside the filter never reach user space.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use super::ring::LinkType;
use super::CaptureError;

/// A filter expression compiled for each link type it is needed on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    programs: HashMap<LinkType, Vec<libc::sock_filter>>,
}

/// A pcap file header with link type `lt`: tcpdump reads it from stdin (`-r -`) to learn the
/// link type it compiles for, without opening any interface.
fn dead_header(lt: u16, snaplen: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&snaplen.to_le_bytes());
    h.extend_from_slice(&(lt as u32).to_le_bytes());
    h
}

/// Parse `tcpdump -ddd` output: a count line, then `code jt jf k` per instruction.
pub(crate) fn parse_ddd(text: &str) -> Option<Vec<libc::sock_filter>> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let n: usize = lines.next()?.parse().ok()?;
    let prog: Vec<libc::sock_filter> = lines
        .map(|l| {
            let v: Vec<u32> = l
                .split_whitespace()
                .map(|w| w.parse().ok())
                .collect::<Option<_>>()?;
            match v[..] {
                [code, jt, jf, k] => Some(libc::sock_filter {
                    code: u16::try_from(code).ok()?,
                    jt: u8::try_from(jt).ok()?,
                    jf: u8::try_from(jf).ok()?,
                    k,
                }),
                _ => None,
            }
        })
        .collect::<Option<_>>()?;
    (prog.len() == n && n > 0).then_some(prog)
}

/// Compile `expr` for `link` with tcpdump.
fn compile_one(
    expr: &str,
    link: LinkType,
    snaplen: u32,
) -> Result<Vec<libc::sock_filter>, CaptureError> {
    let err = |m: String| CaptureError::Filter {
        expr: expr.to_string(),
        message: m,
    };
    let mut child = Command::new("tcpdump")
        .args(["-r", "-", "-s", &snaplen.to_string(), "-ddd", "--", expr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::NotFound {
                "tcpdump is not installed: nettool compiles filter expressions with `tcpdump -ddd` \
                 (install the Debian package tcpdump: apt-get install tcpdump)"
                    .into()
            } else {
                format!("cannot run tcpdump: {e}")
            })
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&dead_header(link.linktype(), snaplen));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("tcpdump: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg
            .lines()
            .filter(|l| !l.starts_with("reading from file"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(err(msg.trim_start_matches("tcpdump: ").to_string()));
    }
    parse_ddd(&stdout).ok_or_else(|| err(format!("unexpected tcpdump -ddd output: {stdout:.200}")))
}

impl Filter {
    /// Compile `expr` for Ethernet and raw-IP interfaces (a bad expression fails here, once).
    pub(crate) fn compile(expr: &str, snaplen: u32) -> Result<Filter, CaptureError> {
        let mut programs = HashMap::new();
        programs.insert(
            LinkType::Ethernet,
            compile_one(expr, LinkType::Ethernet, snaplen)?,
        );
        // Some expressions (ether host ...) have no meaning on raw IP: such interfaces then
        // capture nothing rather than everything.
        if let Ok(p) = compile_one(expr, LinkType::RawIp, snaplen) {
            programs.insert(LinkType::RawIp, p);
        }
        Ok(Filter { programs })
    }

    /// The program for `link`: the compiled one, or one that accepts nothing.
    pub(crate) fn program(&self, link: LinkType) -> Vec<libc::sock_filter> {
        self.programs.get(&link).cloned().unwrap_or_else(|| {
            vec![libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0,
            }]
        })
    }
}

/// A program that keeps `snaplen` bytes of every packet (no expression given).
pub(crate) fn accept_all(snaplen: u32) -> Vec<libc::sock_filter> {
    vec![libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: snaplen,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddd_output_is_read_and_junk_is_refused() {
        let p = parse_ddd("4\n40 0 0 12\n21 0 1 2048\n6 0 0 262144\n6 0 0 0\n").unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[1].code, 21);
        assert_eq!(p[1].jf, 1);
        assert_eq!(p[2].k, 262144);
        assert!(parse_ddd("3\n40 0 0 12\n").is_none());
        assert!(parse_ddd("tcpdump: syntax error").is_none());
        assert!(parse_ddd("1\n70000 0 0 1\n").is_none());
    }
}
