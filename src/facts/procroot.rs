//! Files as another process sees them (`/proc/PID/root/etc/hosts`), read by a root process
//! that must not trust them: the process may be any user's, its root a directory that user
//! writes. Its links are resolved inside its root (an absolute link there names its file, not
//! ours: `/etc/hosts -> /etc/shadow` would read the host's), only a regular file is read (a
//! FIFO would block, a device act), and only so much of it.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The most read of such a file (a hosts, resolv.conf or services file is kilobytes).
const MAX: u64 = 4 << 20;

/// The text of `path` (absolute, as the process writes it) inside `root` (`/proc/PID/root`),
/// resolved within that root (openat2 RESOLVE_IN_ROOT; a kernel before 5.6 opens the path
/// as it is), a regular file only, at most 4 MiB.
pub(crate) fn read_in_root(root: &Path, path: &str) -> std::io::Result<String> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(root)?;
    let rel = CString::new(path.trim_start_matches('/'))?;
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: all zeroes is a valid open_how (non_exhaustive: no struct literal).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: openat2 on our directory fd, a valid C string and an open_how of its size.
    let mut fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    } as libc::c_int;
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        // SAFETY: openat on our directory fd and a valid C string.
        fd = unsafe { libc::openat(dir.as_raw_fd(), rel.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX {
        return Err(std::io::Error::other(format!("larger than {MAX} bytes")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_inside_its_root_and_only_a_regular_one() {
        let d = std::env::temp_dir().join(format!("nt-procroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let root = d.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/real-hosts"), "10.0.0.1 inside\n").unwrap();
        // An absolute link is the root's own: etc/hosts -> /etc/real-hosts inside `root`.
        std::os::unix::fs::symlink("/etc/real-hosts", root.join("etc/hosts")).unwrap();
        assert_eq!(
            read_in_root(&root, "/etc/hosts").unwrap(),
            "10.0.0.1 inside\n"
        );
        // A link out of the root stays in it (here: no such file inside).
        std::os::unix::fs::symlink("/../../../../etc/passwd", root.join("etc/out")).unwrap();
        assert!(read_in_root(&root, "/etc/out").is_err());
        // A FIFO is not waited on, a device is not read.
        let fifo = root.join("etc/fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = root.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_in_root(&r, "/etc/fifo").map(|_| ()));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        if got.is_err() {
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        }
        assert!(matches!(got, Ok(Err(_))), "{got:?}");
        // /dev/zero's node: never read (a FIFO or a device is refused before any read).
        let zero = std::ffi::CString::new(root.join("etc/zero").to_str().unwrap()).unwrap();
        // SAFETY: mknod with a valid C string.
        let made =
            unsafe { libc::mknod(zero.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 5)) };
        assert_eq!(made, 0, "{}", std::io::Error::last_os_error());
        assert!(read_in_root(&root, "/etc/zero").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
