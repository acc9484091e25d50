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
use super::{create_new_at, open_private_dir, Sink, Skipped};

/// Writes each direction of each connection to its own file.
pub(crate) struct StreamsSink {
    dir: PathBuf,
    dirfd: OwnedFd,
    open: HashMap<(u64, Direction), BufWriter<File>>,
    /// Directions whose file could not be opened (said once); the next connection tries again,
    /// so a moment of fd shortage costs only the connections of that moment.
    left_out: HashSet<(u64, Direction)>,
    /// The name suffix (1: none, n: `cN`) each open connection's first file took: the other
    /// direction's file takes the same one, so a connection's two files pair up by name.
    suffix: HashMap<u64, u32>,
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
            suffix: HashMap::new(),
        })
    }
}

/// How many names [`StreamsSink::open_new`] tries for one stream (`NAME`, `NAMEc2`, ...).
const NAME_TRIES: u32 = 1000;

impl StreamsSink {
    /// Make a fresh file for one direction of connection `id`: `name`, or when an earlier run
    /// left a file of that name or of the other direction's (`partner`; connection numbers
    /// start at 1 in every run, a client port can come again) both with `c2`, `c3`, ...
    /// appended, as tcpflow does: the first suffix free for both names, which the other
    /// direction's file then takes too. Files that exist are never opened (appending mixed
    /// two connections in one stream; opening made them 0600) and O_EXCL keeps two processes
    /// sharing the directory off one name.
    fn open_new(&mut self, id: u64, name: &str, partner: &str) -> std::io::Result<File> {
        let with = |base: &str, n: u32| match n {
            1 => base.to_string(),
            n => format!("{base}c{n}"),
        };
        let chosen = self.suffix.get(&id).copied();
        for n in chosen.unwrap_or(1)..=NAME_TRIES {
            if chosen.is_none() && self.taken(&with(partner, n))? {
                continue;
            }
            match create_new_at(self.dirfd.as_fd(), with(name, n).as_ref()) {
                Ok(f) => {
                    self.suffix.entry(id).or_insert(n);
                    return Ok(f);
                }
                // Taken since (another process in the directory): the next free one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(format!(
            "{name} and {} more files of that name exist already (from earlier runs): empty the directory",
            NAME_TRIES - 1
        )))
    }

    /// Whether the directory has an entry `name` (of any kind, a symlink not followed).
    fn taken(&self, name: &str) -> std::io::Result<bool> {
        use std::os::fd::AsRawFd;
        let c = std::ffi::CString::new(name).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in the name")
        })?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: a valid NUL-terminated name and a stat buffer the call fills.
        let r = unsafe {
            libc::fstatat(
                self.dirfd.as_raw_fd(),
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            e => Err(e),
        }
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
                    let partner = format!("c{:06}-{}-{}", conn.id, dotted(dst), dotted(src));
                    match self.open_new(conn.id, &name, &partner) {
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
                self.suffix.remove(&conn.id);
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
