//! Create and delete named namespaces the way `ip netns add/del` does, without spawning `ip`.
//!
//! A named namespace is a bind mount of a namespace file onto /run/netns/NAME. /run/netns is
//! made a shared mount point first (as iproute2 does) so the name is visible in every mount
//! namespace, including the private ones `ip netns exec` creates.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::configure::Configure;
use super::{NetNs, NetnsError, NETNS_RUN_DIR};

/// Errors creating or deleting a named namespace.
#[derive(Debug, thiserror::Error)]
pub enum NamedError {
    /// The name is not usable as a file name.
    #[error("invalid namespace name '{0}' (no '/', not empty, at most 200 characters)")]
    BadName(String),
    /// A namespace with that name exists.
    #[error(
        "network namespace {0} already exists (remove it with `ip netns del {0}` if it is stale)"
    )]
    Exists(String),
    /// A filesystem or mount step failed.
    #[error("{what} {path}: {source} (creating namespaces needs root)")]
    Io {
        /// The step.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The errno.
        source: io::Error,
    },
    /// Opening the new namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

fn io_err(what: &'static str, path: &Path, e: impl Into<io::Error>) -> NamedError {
    NamedError::Io {
        what,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// The path of a named namespace.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// True when /run/netns/NAME exists.
pub fn exists(name: &str) -> bool {
    path_of(name).exists()
}

/// Make /run/netns exist and be a shared mount point (iproute2's netns_add dance).
fn prepare_run_dir() -> Result<(), NamedError> {
    let dir = Path::new(NETNS_RUN_DIR);
    std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
    let mut bound = false;
    loop {
        match mount(
            Some("none"),
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL) if !bound => {
                // Not a mount point yet: bind it onto itself, then retry.
                mount(
                    Some(dir),
                    dir,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| io_err("bind-mount", dir, e))?;
                bound = true;
            }
            Err(e) => return Err(io_err("make shared", dir, e)),
        }
    }
}

/// `ip netns add NAME` plus `ip -n NAME link set lo up`; returns a handle to the new namespace.
pub fn create(name: &str) -> Result<NetNs, NamedError> {
    create_marked(name, |_| Ok(()))
}

/// Like [`create`], but before the name appears `mark` is told the inode its /run/netns entry
/// will have (None where /run/netns cannot make unnamed files): the entry is made unnamed
/// (O_TMPFILE) and linked under NAME only afterwards, which fails if the name is taken. A
/// journal that records the inode can later tell this namespace's entry from one somebody
/// else made under the same name ([`entry_inode`]). An error from `mark` creates nothing.
pub fn create_marked(
    name: &str,
    mark: impl FnOnce(Option<u64>) -> Result<(), String>,
) -> Result<NetNs, NamedError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.len() > 200 {
        return Err(NamedError::BadName(name.into()));
    }
    prepare_run_dir()?;
    let path = path_of(name);
    let marked = |e: String| io_err("record", &path, io::Error::other(e));
    match OpenOptions::new()
        .write(true)
        .mode(0o0)
        .custom_flags(libc::O_TMPFILE)
        .open(NETNS_RUN_DIR)
    {
        Ok(f) => {
            use std::os::unix::fs::MetadataExt;
            let ino = f.metadata().map_err(|e| io_err("stat", &path, e))?.ino();
            mark(Some(ino)).map_err(marked)?;
            // linkat of an O_TMPFILE through /proc needs no CAP_DAC_READ_SEARCH.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
            match nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                format!("/proc/self/fd/{fd}").as_str(),
                nix::fcntl::AT_FDCWD,
                &path,
                nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
            ) {
                Ok(()) => {}
                Err(Errno::EEXIST) => return Err(NamedError::Exists(name.into())),
                Err(e) => return Err(io_err("name", &path, e)),
            }
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
            ) =>
        {
            mark(None).map_err(marked)?;
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o0)
                .open(&path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(NamedError::Exists(name.into()))
                }
                Err(e) => return Err(io_err("create", &path, e)),
            }
        }
        Err(e) => return Err(io_err("create", &path, e)),
    }
    // unshare on a throwaway thread: the new namespace must not leak into the caller's thread.
    let p = path.clone();
    let made = std::thread::spawn(move || -> Result<(), NamedError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| io_err("unshare for", &p, e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| io_err("bind-mount namespace onto", &p, e))?;
        // lo up here, while we are inside anyway.
        let mut c = Configure::open().map_err(|e| io_err("netlink in", &p, io::Error::other(e)))?;
        c.set_up(1, true)
            .map_err(|e| io_err("set lo up in", &p, io::Error::other(e)))?;
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(io_err("thread for", &path, io::Error::other("panicked"))));
    if let Err(e) = made {
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(NetNs::from_path(&path)?.with_label(name))
}

/// The inode of /run/netns/NAME's directory entry (not of the namespace mounted on it), the
/// mark [`create_marked`] hands out; None when there is no such entry.
pub fn entry_inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::DirEntryExt;
    std::fs::read_dir(NETNS_RUN_DIR)
        .ok()?
        .flatten()
        .find(|e| e.file_name() == std::ffi::OsStr::new(name))
        .map(|e| e.ino())
}

/// `ip netns del NAME`: unmount and remove the name. Ok(false) when it did not exist.
/// The namespace itself goes away when no process and no open fd holds it any more.
pub fn delete(name: &str) -> Result<bool, NamedError> {
    let path = path_of(name);
    if !path.exists() {
        return Ok(false);
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(io_err("unmount", &path, e)),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", &path, e)),
    }
}
