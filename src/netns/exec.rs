//! Start processes inside a namespace, like `ip netns exec` / `nsenter -n`.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::{NetNs, NetnsError};

/// How to set up the child's view beyond the network namespace.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExecOptions {
    /// Give the child its own mount namespace with a fresh /sys, so `ip` and
    /// /sys/class/net inside agree with the network namespace (what `ip netns exec` does).
    pub remount_sys: bool,
    /// Bind-mount /etc/netns/NAME/* over /etc/* (resolv.conf, hosts), like `ip netns exec NAME`.
    pub etc_netns: Option<String>,
}

/// Errors starting a process in a namespace.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The command could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// argv[0].
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// No command given.
    #[error("no command given")]
    Empty,
}

/// Binds to make in the child: (source, target) under /etc.
fn etc_binds(name: &str) -> Vec<(CString, CString)> {
    let dir = Path::new("/etc/netns").join(name);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let target = Path::new("/etc").join(e.file_name());
            if !target.exists() {
                return None;
            }
            Some((
                CString::new(e.path().as_os_str().as_encoded_bytes()).ok()?,
                CString::new(target.as_os_str().as_encoded_bytes()).ok()?,
            ))
        })
        .collect()
}

/// Prepare `cmd` so that, once started, it runs with `opts` applied to its mount view.
/// The namespace itself comes from the thread that spawns it (see [`spawn`]).
fn prepare(cmd: &mut Command, opts: &ExecOptions) {
    let binds = opts.etc_netns.as_deref().map(etc_binds).unwrap_or_default();
    let remount_sys = opts.remount_sys;
    if !remount_sys && binds.is_empty() {
        return;
    }
    // SAFETY: the closure runs between fork and exec and only makes raw syscalls on data
    // prepared before the fork (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            unshare(CloneFlags::CLONE_NEWNS)?;
            // Keep our mounts from propagating back to the parent's mount namespace.
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_SLAVE,
                None::<&str>,
            )?;
            if remount_sys {
                let _ = umount2("/sys", MntFlags::MNT_DETACH);
                mount(
                    Some("sysfs"),
                    "/sys",
                    Some("sysfs"),
                    MsFlags::empty(),
                    None::<&str>,
                )?;
            }
            for (src, dst) in &binds {
                mount(
                    Some(src.as_c_str()),
                    dst.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
            }
            Ok(())
        });
    }
}

/// Start `cmd` inside `ns` and return the running child.
pub(crate) fn spawn(ns: &NetNs, mut cmd: Command, opts: &ExecOptions) -> Result<Child, ExecError> {
    prepare(&mut cmd, opts);
    let program = cmd.get_program().to_string_lossy().into_owned();
    // fork from a thread that has entered the namespace: the child inherits it.
    ns.run(move || cmd.spawn())?
        .map_err(|source| ExecError::Spawn { program, source })
}

/// Run argv inside `ns`, wait, and return its exit code (128+signal when killed, like a shell).
pub(crate) fn run(ns: &NetNs, argv: &[String], opts: &ExecOptions) -> Result<i32, ExecError> {
    let (program, args) = argv.split_first().ok_or(ExecError::Empty)?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    let mut child = spawn(ns, cmd, opts)?;
    let status = child.wait().map_err(|source| ExecError::Spawn {
        program: program.clone(),
        source,
    })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
