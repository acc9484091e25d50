//! The socket file a unix listener makes, made safely by a proxy that usually runs as root:
//! what is at the path is looked at without following a link (lstat), and only a socket that
//! nothing listens on is removed to bind again (socat's `unlink-early`, limited to what is
//! safe); a file, a link or a directory is left alone with an error. At exit the file is
//! removed only while it is still the one this process made (same device and inode).
//!
//! Every step goes through the parent directory opened once (O_PATH): a user who controls a
//! directory on the path and swaps it for a link since cannot make root look at, remove or
//! bind a socket of the same name in another directory.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::proxy::spec::unix::UnixListenPath;

/// Why a unix socket file could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SockFileError {
    /// Something other than a socket is at the path.
    #[error("cannot listen on unix socket {}: {what} is there; nettool proxy replaces only a stale socket file and removed nothing: move it away or listen on another path", .path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there ("a regular file", "a symbolic link", ...).
        what: &'static str,
    },
    /// A socket is there and something accepts connections on it.
    #[error("cannot listen on unix socket {p}: another process listens on {p} (a connection to it was accepted); stop it or listen on another path", p = .0.display())]
    Live(PathBuf),
    /// A system call failed.
    #[error("cannot listen on unix socket {}: {doing}: {error}{hint}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The step that failed.
        doing: &'static str,
        /// The error.
        error: std::io::Error,
        /// What to do about it.
        hint: String,
    },
}

/// A socket file this process made, removed on drop while it is still the same file.
#[derive(Debug)]
pub(crate) struct SockFile {
    dir: PinnedDir,
    dev: u64,
    ino: u64,
}

impl Drop for SockFile {
    fn drop(&mut self) {
        let at = self.dir.entry();
        if let Ok(m) = std::fs::symlink_metadata(&at) {
            if m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&at);
            }
        }
    }
}

/// The directory a socket file is in, opened once (O_PATH|O_DIRECTORY), and the file's name
/// in it: whatever the path's directories become later, its entry names a file in that
/// same directory.
#[derive(Debug)]
struct PinnedDir {
    dir: std::fs::File,
    name: OsString,
}

impl PinnedDir {
    /// Open the directory `path` is in; `path` must name a file (not end in `..` or `/`).
    fn open(path: &Path) -> Result<Self, SockFileError> {
        let name = match path.file_name() {
            Some(n) if !path.as_os_str().as_encoded_bytes().ends_with(b"/") => n.to_owned(),
            _ => {
                return Err(io(
                    path,
                    "name the socket file",
                    std::io::Error::other("the path names no file in a directory"),
                ))
            }
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)
            .map_err(|e| io(path, "open its directory", e))?;
        Ok(PinnedDir { dir, name })
    }

    /// The file's entry through the pinned directory's /proc link: the kernel resolves it to
    /// that directory (not by its path), and the last component, a name without `/`, is not
    /// followed by lstat, unlink or bind.
    fn entry(&self) -> PathBuf {
        Path::new(&format!("/proc/self/fd/{}", self.dir.as_raw_fd())).join(&self.name)
    }
}

/// What a file type is called in an error.
fn what_is(t: std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "a device file"
    }
}

fn io(path: &Path, doing: &'static str, error: std::io::Error) -> SockFileError {
    let hint = match (error.kind(), path.parent()) {
        (std::io::ErrorKind::NotFound, Some(dir)) if !dir.as_os_str().is_empty() => {
            format!(" (is the directory {} there?)", dir.display())
        }
        _ => String::new(),
    };
    SockFileError::Io {
        path: path.to_path_buf(),
        doing,
        error,
        hint,
    }
}

/// Make way for a new socket at `path`: nothing there, or a stale socket (connect refused),
/// which is removed. Never follows a symbolic link, never removes anything but a socket.
/// `path` is what errors name; every step goes through `dir`.
fn clear_stale(path: &Path, dir: &PinnedDir) -> Result<(), SockFileError> {
    let at = dir.entry();
    let m = match std::fs::symlink_metadata(&at) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path, "look at the path", e)),
    };
    if !m.file_type().is_socket() {
        return Err(SockFileError::NotASocket {
            path: path.to_path_buf(),
            what: what_is(m.file_type()),
        });
    }
    match UnixStream::connect(&at) {
        Ok(_) => Err(SockFileError::Live(path.to_path_buf())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            // Looked at again right before: a link put there since is not a socket.
            let again = std::fs::symlink_metadata(&at).map_err(|e| io(path, "look again", e))?;
            if !again.file_type().is_socket() || again.ino() != m.ino() || again.dev() != m.dev() {
                return Err(SockFileError::NotASocket {
                    path: path.to_path_buf(),
                    what: "a file that changed while it was checked",
                });
            }
            std::fs::remove_file(&at).map_err(|e| io(path, "remove the stale socket", e))
        }
        Err(e) => Err(io(
            path,
            "check whether something listens on the socket there",
            e,
        )),
    }
}

/// Set the mode of the socket this process bound at `path` (`dev`, `ino`), through an
/// O_PATH|O_NOFOLLOW handle on it: what was checked is what changes. A file put in its place
/// since the bind (a link, or a hard link to another file, in a directory a user can write)
/// is left as it is.
fn chmod_own_socket(path: &Path, dev: u64, ino: u64, mode: u32) -> std::io::Result<()> {
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)?;
    let m = handle.metadata()?;
    if !m.file_type().is_socket() || m.dev() != dev || m.ino() != ino {
        return Err(std::io::Error::other(
            "the file there is no longer the socket this proxy made (left as it is)",
        ));
    }
    // chmod through the handle's /proc link: the pinned file, whatever the path names now.
    std::fs::set_permissions(
        format!("/proc/self/fd/{}", handle.as_raw_fd()),
        std::fs::Permissions::from_mode(mode),
    )
}

/// A non-blocking listener on a new socket file at `l.path` (a stale socket there replaced),
/// with `l.mode` set, and the guard that removes the file at exit.
pub(crate) fn bind(l: &UnixListenPath) -> Result<(UnixListener, SockFile), SockFileError> {
    let path = l.path.as_path();
    let dir = PinnedDir::open(path)?;
    clear_stale(path, &dir)?;
    let at = dir.entry();
    let listener = UnixListener::bind(&at).map_err(|e| match e.raw_os_error() {
        // Made between the check and the bind.
        Some(libc::EADDRINUSE) => match std::fs::symlink_metadata(&at) {
            Ok(m) if !m.file_type().is_socket() => SockFileError::NotASocket {
                path: path.to_path_buf(),
                what: what_is(m.file_type()),
            },
            _ => SockFileError::Live(path.to_path_buf()),
        },
        _ => io(path, "bind", e),
    })?;
    let m = std::fs::symlink_metadata(&at).map_err(|e| io(path, "look at the new socket", e))?;
    let file = SockFile {
        dir,
        dev: m.dev(),
        ino: m.ino(),
    };
    if let Some(mode) = l.mode {
        chmod_own_socket(&at, file.dev, file.ino, mode).map_err(|e| io(path, "set its mode", e))?;
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| io(path, "make it non-blocking", e))?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nt-sockfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn at(path: &Path) -> UnixListenPath {
        UnixListenPath {
            path: path.to_path_buf(),
            mode: None,
        }
    }

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_refused_and_the_file_removed_at_drop() {
        let d = dir("stale");
        let p = d.join("s.sock");
        drop(UnixListener::bind(&p).unwrap());
        assert!(p.exists(), "a closed listener leaves its file");
        let (l, f) = bind(&UnixListenPath {
            mode: Some(0o600),
            ..at(&p)
        })
        .unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        let e = bind(&at(&p)).unwrap_err().to_string();
        assert!(
            e.contains(&format!("another process listens on {}", p.display())),
            "{e}"
        );
        drop(l);
        drop(f);
        assert!(!p.exists(), "removed at drop");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_a_link_or_a_directory_is_left_alone() {
        let d = dir("other");
        let file = d.join("file");
        std::fs::write(&file, "keep").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        for (p, what) in [
            (&file, "a regular file"),
            (&link, "a symbolic link"),
            (&sub, "a directory"),
        ] {
            let e = bind(&at(p)).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("removed nothing"), "{e}");
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_put_in_its_place_before_the_mode_is_set_keeps_its_mode() {
        let d = dir("chmod");
        let p = d.join("s.sock");
        let (l, f) = bind(&at(&p)).unwrap();
        drop(l);
        // Another file where the socket was (a user's hard link to /etc/shadow, say).
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "not yours").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = chmod_own_socket(&p, f.dev, f.ino, 0o666).unwrap_err();
        assert!(e.to_string().contains("no longer the socket"), "{e}");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        // A link there is not followed either.
        std::fs::remove_file(&p).unwrap();
        let target = d.join("target");
        std::fs::write(&target, "").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(chmod_own_socket(&p, f.dev, f.ino, 0o666).is_err());
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o600);
        drop(f);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_put_in_its_place_is_not_removed_at_drop() {
        let d = dir("swap");
        let p = d.join("s.sock");
        let (l, f) = bind(&at(&p)).unwrap();
        drop(l);
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "someone else's").unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "someone else's");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_swapped_for_a_link_since_the_start_leaves_the_other_directory_alone() {
        let d = dir("dirswap");
        let (user_dir, other, moved) = (d.join("user"), d.join("other"), d.join("moved"));
        std::fs::create_dir(&user_dir).unwrap();
        std::fs::create_dir(&other).unwrap();
        let p = user_dir.join("s.sock");
        let (l, f) = bind(&at(&p)).unwrap();
        drop(l);
        // The user moves its directory away and puts a link to another one in its place,
        // whose socket of the same name is (a hard link to) the very file this proxy made.
        std::fs::rename(&user_dir, &moved).unwrap();
        std::os::unix::fs::symlink(&other, &user_dir).unwrap();
        std::fs::hard_link(moved.join("s.sock"), other.join("s.sock")).unwrap();
        drop(f);
        assert!(
            std::fs::symlink_metadata(other.join("s.sock")).is_ok(),
            "the other directory's socket survives"
        );
        assert!(
            std::fs::symlink_metadata(moved.join("s.sock")).is_err(),
            "the file removed is the one in the directory the proxy started in"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
