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
//!
//! Rootless Docker ([`RootlessDockerd`]): the same user runs Debian's dockerd-rootless.sh in
//! the test's host namespace (rootlesskit with slirp4netns and its builtin port driver, as
//! dockerd-rootless-setuptool.sh installs it), its data-root and exec-root in a temp dir of
//! the test's, its API on $XDG_RUNTIME_DIR/docker.sock; everything stopped and removed on drop.
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
    first_missing(&[
        ("podman", "podman"),
        ("newuidmap", "uidmap"),
        ("slirp4netns", "slirp4netns"),
        ("catatonit", "catatonit"),
    ])
}

/// The first of `tools` (command, Debian package) not on PATH, said with its package.
fn first_missing(tools: &[(&str, &str)]) -> Option<String> {
    for (tool, package) in tools {
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

/// What tests/rootless.rs asks of either engine's harness ([`RootlessHost`],
/// [`RootlessDockerd`]), so that each scenario is written once and run for both.
pub trait Rootless: Sized {
    /// The engine's CLI.
    const CLI: &'static str;
    /// The process that holds a published port in the host namespace.
    const RELAY: &'static str;
    /// The image the harness imported for its containers.
    const IMAGE: &'static str;
    /// The prefix of the harness's container names.
    const PREFIX: &'static str;

    /// Why the engine cannot run here (for a test to print and skip); None when it can.
    fn missing() -> Option<String>;

    /// The engine ready for the user in a fresh host namespace named after `tag`.
    fn start(tag: &str) -> Self;

    /// The host namespace (the relay listens here).
    fn ns(&self) -> &TestNs;

    /// argv that runs `args` as the user with what the engine needs (what a fix prints).
    fn as_user(&self, args: &[&str]) -> Vec<String>;

    /// Container `name` was made: remove it on drop when the engine would not.
    fn made(&mut self, name: &str);

    /// The command doctor's fix prints for stopped container `name`, to the letter.
    fn start_fix(&self, name: &str) -> String;

    /// `args` as the user, entered into the host namespace.
    fn command(&self, args: &[&str]) -> Command {
        user_command(self.ns(), self.as_user(args))
    }

    /// Run the engine's CLI as the user in the host namespace; (success, stdout+stderr).
    fn try_cli(&self, args: &[&str]) -> (bool, String) {
        let mut argv = vec![Self::CLI];
        argv.extend(args);
        super::try_output(&mut self.command(&argv), "")
    }

    /// Run the engine's CLI as the user; panics on failure; returns stdout (trimmed).
    fn cli(&self, args: &[&str]) -> String {
        let mut argv = vec![Self::CLI];
        argv.extend(args);
        checked(&mut self.command(&argv), &format!("rootless {}", Self::CLI))
    }

    /// `CLI run -d --name UNIQUE ARGS IMAGE CMD` as the user; the container's name.
    fn run(&mut self, tag: &str, args: &[&str], cmd: &[&str]) -> String {
        let name = unique(&format!("{}-{tag}", Self::PREFIX));
        self.made(&name);
        let mut argv = vec!["run", "-d", "--name", &name];
        argv.extend(args);
        argv.push(Self::IMAGE);
        argv.extend(cmd);
        self.cli(&argv);
        name
    }
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
        let (lock, uid, runtime_dir) = user_ready();
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
        if !host.try_cli(&["image", "exists", IMAGE]).0 {
            host.import_image();
        }
        host
    }

    fn import_image(&self) {
        let dir = std::env::temp_dir().join(unique("rootless-image"));
        image_tree(&dir);
        // tar runs as root and hands the stream to podman on stdin: the user needs no access.
        super::docker::import_tree(&dir, self.command(&["podman", "import", "-", IMAGE]));
        let _ = std::fs::remove_dir_all(&dir);
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

impl Rootless for RootlessHost {
    const CLI: &'static str = "podman";
    const RELAY: &'static str = "rootlessport";
    const IMAGE: &'static str = IMAGE;
    const PREFIX: &'static str = "rl";

    fn missing() -> Option<String> {
        missing()
    }

    fn start(tag: &str) -> Self {
        RootlessHost::start(tag)
    }

    fn ns(&self) -> &TestNs {
        &self.ns
    }

    fn as_user(&self, args: &[&str]) -> Vec<String> {
        user_argv(&self.runtime_dir, &[], args)
    }

    fn made(&mut self, name: &str) {
        self.containers.push(name.to_string());
    }

    /// Rootless podman finds its containers only from the namespace rootlessport runs in.
    fn start_fix(&self, name: &str) -> String {
        format!(
            "nsenter --net={} {}",
            self.ns.path(),
            self.as_user(&["podman", "start", name]).join(" ")
        )
    }
}

impl Drop for RootlessHost {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.try_cli(&["rm", "-f", "-t", "0", c]);
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

/// argv that runs `args` as the test user with its runtime directory and `env` (what a fix
/// prints: runuser sets HOME and USER; no sudo here).
fn user_argv(runtime_dir: &Path, env: &[String], args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "runuser".to_string(),
        "-u".into(),
        USER.into(),
        "--".into(),
        "env".into(),
        format!("XDG_RUNTIME_DIR={}", runtime_dir.display()),
    ];
    v.extend(env.iter().cloned());
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// `argv` entered into the test's host namespace, none of the caller's engine variables.
fn user_command(ns: &TestNs, argv: Vec<String>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.path()))
        .args(argv)
        .env_remove("CONTAINER_HOST")
        .env_remove("CONTAINERS_CONF")
        .env_remove("DOCKER_HOST")
        .current_dir("/");
    c
}

/// Run `c`; panics (naming `what`) on failure; returns stdout (trimmed).
fn checked(c: &mut Command, what: &str) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{what} {:?} failed: {}{}",
        c.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The image's tree in `dir`: static busybox and the applets the tests run.
fn image_tree(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(super::docker::busybox(), bin.join("busybox")).unwrap();
    for applet in ["sh", "sleep", "nc", "httpd", "cat", "ls"] {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
}

/// The rootless lock held, the user, /dev/net/tun and its runtime directory ready (with
/// `podman/` in it, where `podman system service` binds).
fn user_ready() -> (File, u32, PathBuf) {
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
    (lock, uid, runtime_dir)
}

/// Debian's rootless dockerd launcher (docker.io's contrib).
const DOCKERD_ROOTLESS: &str = "/usr/share/docker.io/contrib/dockerd-rootless.sh";

/// Why rootless Docker cannot run here, for a test to print and skip; None when it can.
pub fn docker_missing() -> Option<String> {
    if !Path::new(DOCKERD_ROOTLESS).exists() {
        return Some(format!(
            "{DOCKERD_ROOTLESS} is missing (Debian package docker.io)"
        ));
    }
    first_missing(&[
        ("rootlesskit", "rootlesskit"),
        ("newuidmap", "uidmap"),
        ("slirp4netns", "slirp4netns"),
    ])
}

/// A rootless Docker host: the test's host namespace (rootlesskit listens here), the user's
/// dockerd inside rootlesskit's namespaces, what the test made.
pub struct RootlessDockerd {
    /// The namespace dockerd-rootless.sh runs in.
    pub ns: TestNs,
    /// The user's id.
    pub uid: u32,
    /// Its XDG_RUNTIME_DIR (/run/user/UID; the API socket is docker.sock in it).
    pub runtime_dir: PathBuf,
    /// data-root, exec-root, pidfile and the daemon's log.
    dir: PathBuf,
    daemon: Option<ChildGuard>,
    _lock: File,
}

/// The image every rootless Docker test runs (busybox-static), imported into each daemon.
pub const DOCKER_IMAGE: &str = "nt-rootless-bb";

impl RootlessDockerd {
    /// The user ready, a fresh host namespace, dockerd-rootless.sh started as the user in it
    /// and answering on its socket, the image imported.
    pub fn start(tag: &str) -> Self {
        let (lock, uid, runtime_dir) = user_ready();
        let ns = TestNs::new(tag);
        let dir = std::env::temp_dir().join(unique("rldockerd"));
        std::fs::create_dir_all(&dir).unwrap();
        sh(&["chown", &format!("{USER}:{USER}"), dir.to_str().unwrap()]);
        let mut d = RootlessDockerd {
            ns,
            uid,
            runtime_dir,
            dir,
            daemon: None,
            _lock: lock,
        };
        let socket = d.socket();
        let _ = std::fs::remove_file(&socket);
        let log = File::create(d.dir.join("log")).unwrap();
        let data = d.dir.join("data");
        let exec = d.dir.join("exec");
        let pidfile = d.dir.join("docker.pid");
        let host = format!("unix://{}", socket.display());
        let mut c = d.command(&[
            "env",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            DOCKERD_ROOTLESS,
            "--data-root",
            data.to_str().unwrap(),
            "--exec-root",
            exec.to_str().unwrap(),
            "--pidfile",
            pidfile.to_str().unwrap(),
            "-H",
            &host,
        ]);
        c.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        d.daemon = Some(ChildGuard(c.spawn().unwrap()));
        let mut up = false;
        for _ in 0..300 {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() && d.try_cli(&["version"]).0
            {
                up = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            up,
            "rootless dockerd did not answer on {} in 30 s: {}",
            socket.display(),
            std::fs::read_to_string(d.dir.join("log")).unwrap_or_default()
        );
        d.import_image();
        d
    }

    fn import_image(&self) {
        let dir = self.dir.join("image");
        image_tree(&dir);
        super::docker::import_tree(&dir, self.command(&["docker", "import", "-", DOCKER_IMAGE]));
    }

    /// The user's API socket.
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("docker.sock")
    }

    /// The rootlesskit process of this daemon (its listener holds the published ports).
    pub fn rootlesskit_pid(&self) -> Option<u32> {
        let runuser = self.daemon.as_ref()?.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{runuser}/task/{runuser}/children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .find(|p: &u32| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "rootlesskit")
            })
    }
}

impl Rootless for RootlessDockerd {
    const CLI: &'static str = "docker";
    const RELAY: &'static str = "rootlesskit";
    const IMAGE: &'static str = DOCKER_IMAGE;
    const PREFIX: &'static str = "rld";

    fn missing() -> Option<String> {
        docker_missing()
    }

    fn start(tag: &str) -> Self {
        RootlessDockerd::start(tag)
    }

    fn ns(&self) -> &TestNs {
        &self.ns
    }

    /// With DOCKER_HOST: the user's socket named, the CLI works from any namespace.
    fn as_user(&self, args: &[&str]) -> Vec<String> {
        let host = format!("DOCKER_HOST=unix://{}", self.socket().display());
        user_argv(&self.runtime_dir, &[host], args)
    }

    /// The daemon's containers all go on drop: nothing to note.
    fn made(&mut self, _name: &str) {}

    fn start_fix(&self, name: &str) -> String {
        self.as_user(&["docker", "start", name]).join(" ")
    }
}

impl Drop for RootlessDockerd {
    fn drop(&mut self) {
        super::docker::remove_containers(|args| self.try_cli(args));
        // A TERM to rootlesskit stops its child (dockerd, containerd) and slirp4netns.
        if let Some(kit) = self.rootlesskit_pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &kit.to_string()])
                .status();
            // No panic in drop: at most 20 s, then on regardless.
            for _ in 0..200 {
                if !Path::new(&format!("/proc/{kit}")).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        drop(self.daemon.take());
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_dir_all(&self.dir);
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
