//! Rootless Podman as a user runs it (ENGINES.md): the user [`USER`] with subuid/subgid
//! ranges (made when missing), its runtime directory /run/user/UID (0700, its own, as
//! pam_systemd makes it), its ~/.config/containers/containers.conf (cgroupfs, file events,
//! ulimits this sandbox allows: so a printed `podman start` works as printed), /dev/net/tun
//! 0666 (slirp4netns opens it as the user; normal hosts have 0666), and every podman command
//! run as that user inside the test's own host namespace:
//! `nsenter --net=/run/netns/HOST runuser -u USER -- env XDG_RUNTIME_DIR=... podman ...`.
//! rootlessport then listens in HOST, slirp4netns and the container's namespace hang off it.
//!
//! One user's Podman is one storage and one pause process: rootless tests take
//! [`LOCK`] exclusively, so they run one at a time (across test binaries too). Containers
//! have unique names and are removed on drop, with the API service the test started and the
//! user's pause process when this test started it.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{sh, unique, wait_for, ChildGuard, TestNs};

/// The test user.
pub const USER: &str = "nt-rootless";
/// Held exclusively by each rootless test.
const LOCK: &str = "/run/nt-test-rootless.lock";
/// The image every rootless test runs (busybox-static), imported once into the user's storage.
pub const IMAGE: &str = "localhost/nt-rootless-bb";

/// Why rootless Podman cannot run here, for a test to print and skip; None when it can.
/// tools/test installs what is missing (its `need` table).
pub fn missing() -> Option<String> {
    for (tool, package) in [
        ("podman", "podman"),
        ("newuidmap", "uidmap"),
        ("slirp4netns", "slirp4netns"),
        ("catatonit", "catatonit"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (Debian package {package}; tools/test installs it)"
            ));
        }
    }
    None
}

/// A rootless Podman host: the test's host namespace, the user, what the test made.
pub struct RootlessHost {
    /// The namespace `podman run` runs in (rootlessport listens here).
    pub ns: TestNs,
    /// The user's id.
    pub uid: u32,
    /// Its XDG_RUNTIME_DIR (/run/user/UID).
    pub runtime_dir: PathBuf,
    containers: Vec<String>,
    service: Option<ChildGuard>,
    /// The user's pause process was not running when the test began: stop it on drop.
    started_pause: bool,
    _lock: File,
}

impl RootlessHost {
    /// The user, its runtime directory and config ready, a fresh host namespace, the image
    /// imported (once per user).
    pub fn start(tag: &str) -> Self {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .unwrap();
        // SAFETY: flock on an fd this function owns.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let uid = ensure_user();
        tun_for_users();
        let runtime_dir = PathBuf::from(format!("/run/user/{uid}"));
        for dir in [runtime_dir.clone(), runtime_dir.join("podman")] {
            std::fs::create_dir_all(&dir).unwrap();
            sh(&["chown", &format!("{USER}:{USER}"), dir.to_str().unwrap()]);
            sh(&["chmod", "0700", dir.to_str().unwrap()]);
        }
        let ns = TestNs::new(tag);
        let mut host = RootlessHost {
            ns,
            uid,
            runtime_dir,
            containers: Vec::new(),
            service: None,
            started_pause: false,
            _lock: lock,
        };
        host.started_pause = host.pause_pid().is_none();
        if !host.try_podman(&["image", "exists", IMAGE]).0 {
            host.import_image();
        }
        host
    }

    /// argv that runs `args` as the user with its runtime directory (what a fix prints).
    pub fn as_user(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            "runuser".to_string(),
            "-u".into(),
            USER.into(),
            "--".into(),
            "env".into(),
            format!("XDG_RUNTIME_DIR={}", self.runtime_dir.display()),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns.path()))
            .args(self.as_user(args))
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINERS_CONF")
            .current_dir("/");
        c
    }

    /// Run podman as the user in the host namespace; (success, stdout+stderr).
    pub fn try_podman(&self, args: &[&str]) -> (bool, String) {
        let mut argv = vec!["podman"];
        argv.extend(args);
        super::try_output(&mut self.command(&argv), "")
    }

    /// Run podman as the user; panics on failure; returns stdout (trimmed).
    pub fn podman(&self, args: &[&str]) -> String {
        let mut argv = vec!["podman"];
        argv.extend(args);
        let o = self.command(&argv).output().unwrap();
        assert!(
            o.status.success(),
            "rootless podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn import_image(&self) {
        let dir = std::env::temp_dir().join(unique("rootless-image"));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(super::docker::busybox(), bin.join("busybox")).unwrap();
        for applet in ["sh", "sleep", "nc", "httpd", "cat", "ls"] {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        // tar runs as root and hands the stream to podman on stdin: the user needs no access.
        super::docker::import_tree(&dir, self.command(&["podman", "import", "-", IMAGE]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `podman run -d --name UNIQUE ARGS IMAGE CMD` as the user; the name, removed on drop.
    pub fn run(&mut self, tag: &str, args: &[&str], cmd: &[&str]) -> String {
        let name = unique(&format!("rl-{tag}"));
        self.containers.push(name.clone());
        let mut argv = vec!["run", "-d", "--name", &name];
        argv.extend(args);
        argv.push(IMAGE);
        argv.extend(cmd);
        self.podman(&argv);
        name
    }

    /// The user's API service (`podman system service` on $XDG_RUNTIME_DIR/podman/podman.sock,
    /// what podman.socket serves), stopped on drop.
    pub fn serve_api(&mut self) {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let child = self
            .command(&[
                "podman",
                "system",
                "service",
                "--time=0",
                &format!("unix://{}", socket.display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.service = Some(ChildGuard(child));
        wait_for("the rootless podman API", 20, || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    /// The user's API socket.
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("podman/podman.sock")
    }

    fn pause_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.runtime_dir.join("libpod/tmp/pause.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "catatonit").then_some(pid)
    }
}

impl Drop for RootlessHost {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.try_podman(&["rm", "-f", "-t", "0", c]);
        }
        if let Some(s) = self.service.take() {
            // runuser's child is podman: a TERM to runuser ends it too.
            let _ = Command::new("kill")
                .args(["-TERM", &s.pid().to_string()])
                .status();
            drop(s);
            let _ = std::fs::remove_file(self.socket());
        }
        if self.started_pause {
            if let Some(pid) = self.pause_pid() {
                let _ = Command::new("kill").args([&pid.to_string()]).status();
            }
        }
    }
}

/// The test user's id, the user made first when missing (useradd gives it subuid/subgid
/// ranges; added by hand when an older useradd did not), with its containers.conf.
fn ensure_user() -> u32 {
    let id = |_: ()| {
        Command::new("id")
            .args(["-u", USER])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
    };
    if id(()).is_none() {
        sh(&["useradd", "--create-home", "--shell", "/bin/sh", USER]);
    }
    let uid = id(()).expect("the test user exists");
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
            // Past every range listed (65536 ids, as useradd gives).
            let end = text
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(':').skip(1);
                    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
                })
                .max()
                .unwrap_or(100_000)
                .max(100_000);
            let mut f = File::options()
                .append(true)
                .create(true)
                .open(file)
                .unwrap();
            std::io::Write::write_all(&mut f, format!("{USER}:{end}:65536\n").as_bytes()).unwrap();
        }
    }
    let home = PathBuf::from(format!("/home/{USER}"));
    let conf = home.join(".config/containers");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("containers.conf"),
        "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
         [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    sh(&[
        "chown",
        "-R",
        &format!("{USER}:{USER}"),
        home.join(".config").to_str().unwrap(),
    ]);
    uid
}

/// slirp4netns opens /dev/net/tun as the user: 0666 on normal hosts, 0600 on this sandbox.
fn tun_for_users() {
    let tun = Path::new("/dev/net/tun");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(tun).unwrap().permissions());
    if mode & 0o666 != 0o666 {
        sh(&["chmod", "0666", "/dev/net/tun"]);
    }
}
