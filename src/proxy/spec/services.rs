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
    paths: Vec<ServicesFile>,
    /// The table and the file it came from, or why none could be read.
    table: OnceCell<Result<(Table, String), String>>,
}

/// A services file: `file` on this system, or inside a process's `root` (/proc/PID/root, read
/// as that process sees it: [`crate::facts::procroot`]).
pub(crate) struct ServicesFile {
    /// The process's root, if the file is its.
    root: Option<PathBuf>,
    /// The file's absolute path (inside `root` when there is one).
    file: String,
}

impl ServicesFile {
    /// A file of this system.
    pub(crate) fn here(file: &str) -> ServicesFile {
        ServicesFile {
            root: None,
            file: file.into(),
        }
    }
}

/// (name or alias, protocol) -> port.
type Table = HashMap<(String, Proto), u16>;

impl Services {
    /// /etc/services, as a process of this system looks it up.
    pub(crate) fn system() -> Services {
        Services::at(vec![ServicesFile::here("/etc/services")])
    }

    /// The /etc/services process `pid` sees (/proc/PID/root/etc/services), else this system's
    /// when that cannot be read (the process gone, or another user's root).
    pub(crate) fn of_pid(pid: u32) -> Services {
        Services::at(vec![
            ServicesFile {
                root: Some(PathBuf::from(format!("/proc/{pid}/root"))),
                file: "/etc/services".into(),
            },
            ServicesFile::here("/etc/services"),
        ])
    }

    /// The first of `paths` that reads.
    pub(super) fn at(paths: Vec<ServicesFile>) -> Services {
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
                let read = match &p.root {
                    Some(root) => crate::facts::procroot::read_in_root(root, &p.file),
                    None => std::fs::read_to_string(&p.file),
                };
                let name = match &p.root {
                    Some(root) => root.join(p.file.trim_start_matches('/')),
                    None => PathBuf::from(&p.file),
                };
                match read {
                    Ok(text) => return Ok((parse(&text), name.display().to_string())),
                    Err(e) => why.push(format!("{}: {e}", name.display())),
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
