//! `--streams DIR`: one file per connection and direction, like tcpflow
//! (`c000001-10.0.0.1.40000-10.0.0.2.80` holds what the client sent).
//!
//! The names are predictable, so DIR is opened once (a directory of ours that nobody else can
//! write into) and each file is made with openat relative to it, never following a symlink.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use super::event::{Direction, Event};
use super::{open_private_at, open_private_dir, Sink, Skipped};

/// Writes each direction of each connection to its own file.
pub(crate) struct StreamsSink {
    dir: PathBuf,
    dirfd: OwnedFd,
    open: HashMap<(u64, Direction), BufWriter<File>>,
    /// Directions whose file could not be opened (said once); the next connection tries again,
    /// so a moment of fd shortage costs only the connections of that moment.
    left_out: HashSet<(u64, Direction)>,
}

impl StreamsSink {
    /// Create DIR (0700) if needed and open it; refused when another user could write into it.
    pub(crate) fn new(dir: PathBuf) -> Result<Self, super::TapError> {
        let dirfd = open_private_dir(&dir)?;
        Ok(StreamsSink {
            dir,
            dirfd,
            open: HashMap::new(),
            left_out: HashSet::new(),
        })
    }
}

/// How many names [`StreamsSink::open_new`] tries for one stream (`NAME`, `NAMEc2`, ...).
const NAME_TRIES: u32 = 1000;

impl StreamsSink {
    /// Open a fresh file for a stream: `name`, or when an earlier run left a file of that name
    /// (connection numbers start at 1 in every run; a client port can come again) `name` with
    /// `c2`, `c3`, ... appended, as tcpflow does. Appending to the old file mixed two
    /// connections in one stream.
    fn open_new(&self, name: &str) -> std::io::Result<File> {
        for n in 1..=NAME_TRIES {
            let try_name = match n {
                1 => name.to_string(),
                n => format!("{name}c{n}"),
            };
            let f = open_private_at(self.dirfd.as_fd(), try_name.as_ref(), true)?;
            if f.metadata()?.len() == 0 {
                return Ok(f);
            }
        }
        Err(std::io::Error::other(format!(
            "{name} and {} more files of that name exist already (from earlier runs): empty the directory",
            NAME_TRIES - 1
        )))
    }
}

fn dotted(a: &SocketAddr) -> String {
    format!("{}.{}", a.ip(), a.port())
}

impl Sink for StreamsSink {
    fn name(&self) -> String {
        format!("streams to {}", self.dir.display())
    }

    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        match ev {
            Event::Data {
                conn, dir, bytes, ..
            } => {
                let key = (conn.id, *dir);
                if self.left_out.contains(&key) {
                    return Ok(());
                }
                if !self.open.contains_key(&key) {
                    let (src, dst) = match dir {
                        Direction::ClientToServer => (&conn.client, &conn.backend),
                        Direction::ServerToClient => (&conn.backend, &conn.client),
                    };
                    let name = format!("c{:06}-{}-{}", conn.id, dotted(src), dotted(dst));
                    match self.open_new(&name) {
                        Ok(f) => {
                            self.open
                                .insert(key, BufWriter::with_capacity(64 * 1024, f));
                        }
                        Err(e) => {
                            self.left_out.insert(key);
                            return Err(std::io::Error::other(Skipped(format!(
                                "cannot open {name}: {e}; that stream is not saved, the others are"
                            ))));
                        }
                    }
                }
                if let Some(w) = self.open.get_mut(&key) {
                    w.write_all(bytes)?;
                }
            }
            Event::Close { conn, .. } => {
                for d in [Direction::ClientToServer, Direction::ServerToClient] {
                    self.left_out.remove(&(conn.id, d));
                    if let Some(mut w) = self.open.remove(&(conn.id, d)) {
                        w.flush()?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        for w in self.open.values_mut() {
            w.flush()?;
        }
        Ok(())
    }
}
