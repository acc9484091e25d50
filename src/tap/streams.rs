//! `--streams DIR`: one file per connection and direction, like tcpflow
//! (`c000001-10.0.0.1.40000-10.0.0.2.80` holds what the client sent).
//!
//! The names are predictable, so DIR is opened once (a directory of ours that nobody else can
//! write into) and each file is made with openat relative to it, never following a symlink.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use super::event::{Direction, Event};
use super::{create_new_at, open_private_dir, Sink, Skipped};

/// One direction's file. Made with its partner at the connection's first data, but held open
/// (an fd) and buffered (64 KiB) only from its own first data: a direction that carries
/// nothing (a one-way connection's, a UDP flow's answers that never come) holds neither. An
/// empty one is removed at the close: files are for directions that carried data, as tcpflow
/// has them.
struct Stream {
    /// The file, open and buffered once something was written to it.
    w: Option<BufWriter<File>>,
    /// The device and inode of the file made: the name is opened again (this direction's
    /// first data) or removed (at the close, empty) only while it is still that file.
    made: (u64, u64),
    name: String,
}

/// A file's device and inode.
fn identity(st: &nix::sys::stat::FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl Stream {
    /// Made just now as `f` (kept open when `keep`: its direction writes at once).
    fn made(f: File, name: String, keep: bool) -> std::io::Result<Stream> {
        let made = identity(&nix::sys::stat::fstat(&f)?);
        Ok(Stream {
            w: keep.then(|| BufWriter::with_capacity(64 * 1024, f)),
            made,
            name,
        })
    }

    /// The file to write to: opened again by name at this direction's first data (O_NOFOLLOW,
    /// never created) and refused unless it is the file made.
    fn writer(&mut self, dir: BorrowedFd<'_>) -> std::io::Result<&mut BufWriter<File>> {
        if self.w.is_none() {
            use nix::fcntl::OFlag;
            let fd = nix::fcntl::openat(
                dir,
                self.name.as_str(),
                OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )?;
            let f = File::from(fd);
            if identity(&nix::sys::stat::fstat(&f)?) != self.made {
                return Err(std::io::Error::other(
                    "another file took its name since it was made",
                ));
            }
            self.w = Some(BufWriter::with_capacity(64 * 1024, f));
        }
        self.w
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no file"))
    }
}

/// Writes each direction of each connection to its own file.
pub(crate) struct StreamsSink {
    dir: PathBuf,
    dirfd: OwnedFd,
    open: HashMap<(u64, Direction), Stream>,
    /// Connections whose files could not be made (said once); the next connection tries
    /// again, so a moment of fd shortage costs only the connections of that moment.
    left_out: HashSet<u64>,
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

/// How many names [`StreamsSink::make_pair`] tries for one connection (`NAME`, `NAMEc2`, ...).
const NAME_TRIES: u32 = 1000;

impl StreamsSink {
    /// Make both files of a connection at once, each fresh (O_EXCL): `name` (this direction)
    /// and `partner` (the other), or when an earlier run or another process sharing the
    /// directory has either name (connection numbers start at 1 in every run, a client port
    /// can come again) both with `c2`, `c3`, ... appended, as tcpflow does. Made together, the
    /// pair cannot be split by a name taken between one direction's first data and the
    /// other's. Files that exist are never opened (appending mixed two connections in one
    /// stream; opening made them 0600).
    /// `name`'s file stays open when `keep` (its first data is at hand).
    fn make_pair(
        &self,
        name: &str,
        partner: &str,
        keep: bool,
    ) -> std::io::Result<(Stream, Stream)> {
        let with = |base: &str, n: u32| match n {
            1 => base.to_string(),
            n => format!("{base}c{n}"),
        };
        let taken = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AlreadyExists;
        for n in 1..=NAME_TRIES {
            let (first, second) = (with(name, n), with(partner, n));
            let f = match create_new_at(self.dirfd.as_fd(), first.as_ref()) {
                Ok(f) => f,
                Err(e) if taken(&e) => continue,
                Err(e) => return Err(e),
            };
            let g = create_new_at(self.dirfd.as_fd(), second.as_ref());
            if g.is_err() {
                // Ours, just made and empty: give the name back.
                let _ = nix::unistd::unlinkat(
                    self.dirfd.as_fd(),
                    first.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
            }
            let g = match g {
                Ok(g) => g,
                Err(e) if taken(&e) => continue,
                Err(e) => return Err(e),
            };
            return Ok((
                Stream::made(f, first, keep)?,
                Stream::made(g, second, false)?,
            ));
        }
        Err(std::io::Error::other(format!(
            "{name} and {} more files of that name exist already (from earlier runs): empty the directory",
            NAME_TRIES - 1
        )))
    }

    /// Flush a direction's file at the close, or remove it if nothing was written to it.
    fn end(&self, s: Stream) -> std::io::Result<()> {
        let Stream { w, made, name } = s;
        if let Some(mut w) = w {
            return w.flush();
        }
        // Only the file we made: another process sharing the directory may have moved ours
        // away and put its own under the name (the same check as make_pair's O_EXCL).
        let there = nix::sys::stat::fstatat(
            self.dirfd.as_fd(),
            name.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if there.is_ok_and(|st| identity(&st) == made) {
            // Best effort: an empty file left behind harms nobody, and an error here would
            // stop the whole sink.
            let _ = nix::unistd::unlinkat(
                self.dirfd.as_fd(),
                name.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        Ok(())
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
                if self.left_out.contains(&conn.id) {
                    return Ok(());
                }
                if !self.open.contains_key(&key) {
                    let (src, dst) = match dir {
                        Direction::ClientToServer => (&conn.client, &conn.backend),
                        Direction::ServerToClient => (&conn.backend, &conn.client),
                    };
                    let name = format!("c{:06}-{}-{}", conn.id, dotted(src), dotted(dst));
                    let partner = format!("c{:06}-{}-{}", conn.id, dotted(dst), dotted(src));
                    match self.make_pair(&name, &partner, !bytes.is_empty()) {
                        Ok((this, other)) => {
                            self.open.insert(key, this);
                            self.open.insert((conn.id, dir.other()), other);
                        }
                        Err(e) => {
                            self.left_out.insert(conn.id);
                            return Err(std::io::Error::other(Skipped(format!(
                                "cannot open {name}: {e}; that connection's streams are not saved, the others are"
                            ))));
                        }
                    }
                }
                let dirfd = self.dirfd.as_fd();
                if let Some(s) = self.open.get_mut(&key).filter(|_| !bytes.is_empty()) {
                    match s.writer(dirfd) {
                        Ok(w) => w.write_all(bytes)?,
                        Err(e) => {
                            let name = s.name.clone();
                            self.left_out.insert(conn.id);
                            return Err(std::io::Error::other(Skipped(format!(
                                "cannot open {name} again: {e}; that connection's streams are not saved from here on, the others are"
                            ))));
                        }
                    }
                }
            }
            Event::Close { conn, .. } => {
                self.left_out.remove(&conn.id);
                let mut first = Ok(());
                for d in [Direction::ClientToServer, Direction::ServerToClient] {
                    if let Some(s) = self.open.remove(&(conn.id, d)) {
                        let r = self.end(s);
                        first = first.and(r);
                    }
                }
                first?;
            }
            _ => {}
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        for s in self.open.values_mut() {
            if let Some(w) = &mut s.w {
                w.flush()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
impl StreamsSink {
    /// The bytes of buffer the open streams hold.
    fn buffered(&self) -> usize {
        self.open
            .values()
            .filter_map(|s| s.w.as_ref())
            .map(|w| w.capacity())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::event::{CloseReason, ConnInfo, Timestamp, Transport};
    use std::sync::Arc;

    fn conn(id: u64) -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            id,
            transport: Transport::Tcp,
            client: "127.0.0.1:4000".parse().unwrap(),
            listen: "127.0.0.1:8080".parse().unwrap(),
            local: "127.0.0.1:4001".parse().unwrap(),
            backend: "127.0.0.1:7000".parse().unwrap(),
        })
    }

    /// Connection `id`'s request (`req`, client to server).
    fn request(id: u64) -> Event {
        Event::Data {
            conn: conn(id),
            dir: Direction::ClientToServer,
            offset: 0,
            ts: Timestamp(0),
            bytes: Arc::new(b"req".to_vec()),
        }
    }

    fn close(id: u64) -> Event {
        Event::Close {
            conn: conn(id),
            ts: Timestamp(0),
            reason: CloseReason::Normal,
            bytes_c2s: 3,
            bytes_s2c: 0,
        }
    }

    /// A sink on a fresh directory `nt-test-streams-NAME-PID` under the temp directory.
    fn sink(name: &str) -> (StreamsSink, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("nt-test-streams-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (StreamsSink::new(dir.clone()).unwrap(), dir)
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files
    }

    /// A direction that carried nothing has its empty file removed at the close, but only the
    /// file the sink made: one another process put under that name since stays.
    #[test]
    fn only_our_own_empty_file_is_removed_at_the_close() {
        let (mut sink, dir) = sink("own");
        for id in [1, 2] {
            sink.event(&request(id)).unwrap();
        }
        // Connection 1's answer file is moved away and another one put in its place.
        let answer = dir.join("c000001-127.0.0.1.7000-127.0.0.1.4000");
        std::fs::rename(&answer, dir.join("moved")).unwrap();
        std::fs::write(&answer, b"").unwrap();
        sink.event(&close(1)).unwrap();
        sink.event(&close(2)).unwrap();
        let files = names(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            files,
            [
                "c000001-127.0.0.1.4000-127.0.0.1.7000",
                "c000001-127.0.0.1.7000-127.0.0.1.4000",
                "c000002-127.0.0.1.4000-127.0.0.1.7000",
                "moved",
            ]
        );
    }

    /// Both files of a connection are made at its first data, but only a direction that
    /// carries data holds its file open and a 64 KiB buffer: one-way connections and UDP
    /// flows whose answers never come hold one of each, not two. The other direction's file
    /// is opened again at its first data, and only while it is still the file made.
    #[test]
    fn a_direction_that_carries_nothing_holds_no_fd_and_no_buffer() {
        let (mut sink, dir) = sink("buf");
        for id in 1..=3 {
            sink.event(&request(id)).unwrap();
        }
        let open = sink.open.values().filter(|s| s.w.is_some()).count();
        let (held, files) = (sink.buffered(), names(&dir).len());
        let answer = |id: u64| Event::Data {
            conn: conn(id),
            dir: Direction::ServerToClient,
            offset: 0,
            ts: Timestamp(0),
            bytes: Arc::new(b"answer".to_vec()),
        };
        sink.event(&answer(1)).unwrap();
        // Connection 2's answer file is replaced before its first data: left alone. (Moved
        // away, not removed: a removed file's inode number may be the new one's.)
        let other = dir.join("c000002-127.0.0.1.7000-127.0.0.1.4000");
        std::fs::rename(&other, dir.join("moved")).unwrap();
        std::fs::write(&other, b"theirs").unwrap();
        let refused = sink.event(&answer(2)).unwrap_err().to_string();
        for id in 1..=3 {
            sink.event(&close(id)).unwrap();
        }
        let written = (
            std::fs::read(dir.join("c000001-127.0.0.1.7000-127.0.0.1.4000")),
            std::fs::read(&other),
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!((open, held, files), (3, 3 * 64 * 1024, 6));
        assert!(refused.contains("another file took its name"), "{refused}");
        assert_eq!(
            (written.0.unwrap(), written.1.unwrap()),
            (b"answer".to_vec(), b"theirs".to_vec())
        );
    }
}
