//! Ports written by service name in socat's forms (`TCP-LISTEN:http`, `TCP:db:postgresql`):
//! socat looks them up in /etc/services (getservbyname, by protocol), so the proxy's socat
//! parser does too, from the file the process that runs them sees. The file is read once, when
//! the first name is asked: a line of numbers never reads it.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::PathBuf;

use super::Proto;

/// The services file(s) a port name is looked up in, read on first use.
pub(crate) struct Services {
    /// The files to try, in order: the first one that reads is the table.
    paths: Vec<PathBuf>,
    /// The table and the file it came from, or why none could be read.
    table: OnceCell<Result<(Table, String), String>>,
}

/// (name or alias, protocol) -> port.
type Table = HashMap<(String, Proto), u16>;

impl Services {
    /// /etc/services, as a process of this system looks it up.
    pub(crate) fn system() -> Services {
        Services::at(vec![PathBuf::from("/etc/services")])
    }

    /// The /etc/services process `pid` sees (/proc/PID/root/etc/services), else this system's
    /// when that cannot be read (the process gone, or another user's root).
    pub(crate) fn of_pid(pid: u32) -> Services {
        Services::at(vec![
            PathBuf::from(format!("/proc/{pid}/root/etc/services")),
            PathBuf::from("/etc/services"),
        ])
    }

    /// The first of `paths` that reads.
    pub(super) fn at(paths: Vec<PathBuf>) -> Services {
        Services {
            paths,
            table: OnceCell::new(),
        }
    }

    /// A table from a services file's text (`FILE` in messages), read now.
    #[cfg(test)]
    pub(crate) fn from_text(text: &str, file: &str) -> Services {
        let s = Services::at(Vec::new());
        let _ = s.table.set(Ok((parse(text), file.to_string())));
        s
    }

    /// The port `name` stands for over `proto`, or why it stands for none.
    pub(crate) fn port(&self, name: &str, proto: Proto) -> Result<u16, String> {
        let table = self.table.get_or_init(|| {
            let mut why = Vec::new();
            for p in &self.paths {
                match std::fs::read_to_string(p) {
                    Ok(text) => return Ok((parse(&text), p.display().to_string())),
                    Err(e) => why.push(format!("{}: {e}", p.display())),
                }
            }
            Err(why.join("; "))
        });
        match table {
            Ok((t, file)) => t
                .get(&(name.to_string(), proto))
                .copied()
                .ok_or_else(|| format!("'{name}' is not a port (1-65535) nor a {proto} service in {file}")),
            Err(why) => Err(format!(
                "'{name}' is not a port (1-65535), and the services file that names ports could not be read ({why})"
            )),
        }
    }
}

/// Whether `s` can be a service name rather than a port or a range: a letter first, then
/// letters, digits and `-`, `_`, `.`, `+` as /etc/services writes them (`http-alt`, `x11`).
pub(crate) fn is_service_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

/// A services file: `name port/proto [aliases...] [# comment]`, names and aliases case as
/// written (getservbyname compares them exactly). The first line for a name wins, as in libc.
fn parse(text: &str) -> Table {
    let mut t = Table::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (Some(name), Some(port_proto)) = (words.next(), words.next()) else {
            continue;
        };
        let Some((port, proto)) = port_proto.split_once('/') else {
            continue;
        };
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => continue,
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if port == 0 {
            continue;
        }
        for n in std::iter::once(name).chain(words) {
            t.entry((n.to_string(), proto)).or_insert(port);
        }
    }
    t
}
