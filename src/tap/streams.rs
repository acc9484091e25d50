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
    /// The file made, still open though nothing was written to it: only where the filesystem
    /// gives no file handle (see [`Identity`]), as the open fd is then what keeps its inode
    /// number from going to another file.
    held: Option<File>,
    /// The file made: the name is opened again (this direction's first data) or removed (at
    /// the close, empty) only while it is still that file.
    made: Identity,
    name: String,
}

/// What tells the file made from another one under its name later. The device and inode
/// number alone do not: a freed inode number goes to the next file made (ext4 gives it at
/// once), so a file removed and another made in its place can have both. The file handle
/// (name_to_handle_at, what NFS tells files apart by) also holds the inode's generation,
/// which a reuse changes. A filesystem without handles (overlayfs without nfs_export, procfs)
/// gives `None`, and the file is then held open: an inode with an open fd is not freed, so
/// its number cannot go to another file while it is held.
#[derive(PartialEq, Eq, Debug)]
struct Identity {
    dev: u64,
    ino: u64,
    handle: Option<(i32, Vec<u8>)>,
}

impl Identity {
    /// The identity of the open file `fd` (an O_PATH fd will do).
    fn of(fd: BorrowedFd<'_>) -> std::io::Result<Identity> {
        let st = nix::sys::stat::fstat(fd)?;
        Ok(Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            handle: file_handle(fd),
        })
    }
}

/// The file handle of the open file `fd`: its type and bytes, `None` when the filesystem
/// gives none (EOPNOTSUPP) or the call fails.
fn file_handle(fd: BorrowedFd<'_>) -> Option<(i32, Vec<u8>)> {
    use std::os::fd::AsRawFd;
    // MAX_HANDLE_SZ of linux/exportfs.h; file_handle is two 4-byte fields before the bytes.
    const MAX_HANDLE_SZ: usize = 128;
    #[repr(C)]
    struct Handle {
        bytes: libc::c_uint,
        kind: libc::c_int,
        f_handle: [u8; MAX_HANDLE_SZ],
    }
    let mut h = Handle {
        bytes: MAX_HANDLE_SZ as libc::c_uint,
        kind: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: h is a file_handle with room for MAX_HANDLE_SZ bytes, as its `bytes` says; the
    // empty path with AT_EMPTY_PATH names fd itself.
    let r = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&mut h as *mut Handle).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    let len = (h.bytes as usize).min(MAX_HANDLE_SZ);
    (r == 0).then(|| (h.kind, h.f_handle[..len].to_vec()))
}

impl Stream {
    /// Made just now as `f` (kept open when `keep`: its direction writes at once).
    fn made(f: File, name: String, keep: bool) -> std::io::Result<Stream> {
        let made = Identity::of(f.as_fd())?;
        let (w, held) = match (keep, made.handle.is_some()) {
            (true, _) => (Some(BufWriter::with_capacity(64 * 1024, f)), None),
            (false, true) => (None, None),
            (false, false) => (None, Some(f)),
        };
        Ok(Stream {
            w,
            held,
            made,
            name,
        })
    }

    /// The file to write to: the one held, or opened again by name at this direction's
    /// first data (O_NOFOLLOW, never created; O_NONBLOCK so a FIFO put there cannot stall
    /// the sink) and refused unless it is the file made.
    fn writer(&mut self, dir: BorrowedFd<'_>) -> std::io::Result<&mut BufWriter<File>> {
        if self.w.is_none() {
            let f = match self.held.take() {
                Some(f) => f,
                None => {
                    use nix::fcntl::OFlag;
                    let fd = nix::fcntl::openat(
                        dir,
                        self.name.as_str(),
                        OFlag::O_WRONLY
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_NONBLOCK
                            | OFlag::O_NOCTTY
                            | OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )?;
                    let f = File::from(fd);
                    if Identity::of(f.as_fd())? != self.made {
                        return Err(std::io::Error::other(
                            "another file took its name since it was made",
                        ));
                    }
                    f
                }
            };
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
        let Stream {
            w,
            held,
            made,
            name,
        } = s;
        if let Some(mut w) = w {
            return w.flush();
        }
        // Only the file we made: another process sharing the directory may have moved ours
        // away and put its own under the name (the same check as make_pair's O_EXCL). The
        // name is looked at through an O_PATH fd (nothing is opened: a FIFO or a device there
        // is not touched), which also keeps that inode while it is compared and removed.
        use nix::fcntl::OFlag;
        let there = nix::fcntl::openat(
            self.dirfd.as_fd(),
            name.as_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        );
        if there.is_ok_and(|fd| Identity::of(fd.as_fd()).is_ok_and(|id| id == made)) {
            // Best effort: an empty file left behind harms nobody, and an error here would
            // stop the whole sink.
            let _ = nix::unistd::unlinkat(
                self.dirfd.as_fd(),
                name.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        // Held (no file handles) up to here: until the name was compared, no other file could
        // have this inode number.
        drop(held);
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
            unix: None,
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

    /// Connection `id`'s answer (`answer`, server to client).
    fn answer(id: u64) -> Event {
        Event::Data {
            conn: conn(id),
            dir: Direction::ServerToClient,
            offset: 0,
            ts: Timestamp(0),
            bytes: Arc::new(b"answer".to_vec()),
        }
    }

    /// The name of connection `id`'s answer file.
    fn answer_name(id: u64) -> String {
        format!("c{id:06}-127.0.0.1.7000-127.0.0.1.4000")
    }

    /// Remove `path` and make another file there with `text`; whether the new file got the
    /// removed one's inode number (ext4 gives a freed one to the next file at once).
    fn remade(path: &std::path::Path, text: &[u8]) -> bool {
        use std::os::unix::fs::MetadataExt;
        let before = std::fs::metadata(path).unwrap().ino();
        std::fs::remove_file(path).unwrap();
        std::fs::write(path, text).unwrap();
        // Only where the filesystem gives the number again (ext4) does the test show the reuse;
        // the callers name this in their assertion messages instead of printing it.
        before == std::fs::metadata(path).unwrap().ino()
    }

    /// A file removed and another made under its name can have the same device and inode
    /// number (ext4 reuses a freed inode at once): that file is someone else's, and neither
    /// written to at the direction's first data nor removed at the close.
    #[test]
    fn a_file_made_in_place_of_ours_with_its_inode_number_is_not_taken_for_ours() {
        let (mut sink, dir) = sink("reuse");
        for id in [1, 2] {
            sink.event(&request(id)).unwrap();
        }
        let (one, two) = (dir.join(answer_name(1)), dir.join(answer_name(2)));
        let reused = (remade(&one, b"theirs"), remade(&two, b""));
        let refused = sink.event(&answer(1)).unwrap_err().to_string();
        for id in [1, 2] {
            sink.event(&close(id)).unwrap();
        }
        let left = (std::fs::read(&one), two.exists());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            refused.contains("another file took its name"),
            "{refused} (inode numbers given again: {reused:?})"
        );
        assert_eq!(
            left.0.unwrap(),
            b"theirs",
            "connection 1's answer written into their file (inode numbers given again: {reused:?})"
        );
        assert!(
            left.1,
            "connection 2's empty answer file was theirs, and it was removed (inode numbers given again: {reused:?})"
        );
    }

    /// Where the filesystem gives no file handle, a direction's file is held open from its
    /// making (an inode with an open fd keeps its number), so the same checks hold.
    #[test]
    fn without_file_handles_the_file_made_is_held_open() {
        let (mut sink, dir) = sink("nohandle");
        for id in [1, 2] {
            sink.event(&request(id)).unwrap();
        }
        // What Stream::made gives on such a filesystem, for both answers.
        for id in [1, 2] {
            let name = answer_name(id);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join(&name))
                .unwrap();
            let mut made = Identity::of(f.as_fd()).unwrap();
            made.handle = None;
            let s = sink.open.get_mut(&(id, Direction::ServerToClient)).unwrap();
            *s = Stream {
                w: None,
                held: Some(f),
                made,
                name,
            };
        }
        let (one, two) = (dir.join(answer_name(1)), dir.join(answer_name(2)));
        let reused = (remade(&one, b"theirs"), remade(&two, b""));
        sink.event(&answer(1)).unwrap();
        for id in [1, 2] {
            sink.event(&close(id)).unwrap();
        }
        let left = (std::fs::read(&one), two.exists());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            reused,
            (false, false),
            "an inode held open was given to another file"
        );
        assert_eq!(left.0.unwrap(), b"theirs");
        assert!(left.1);
    }
}
