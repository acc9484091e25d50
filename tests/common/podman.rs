//! A real rootful Podman (netavark, aardvark-dns) whose host network is a test namespace
//! (ENGINES.md): every podman command runs as `nsenter --net=/run/netns/HOST podman ...` with a
//! private CONTAINERS_CONF (default_ulimits: this sandbox lacks CAP_SYS_RESOURCE), an image
//! imported from busybox-static (with a /pause script for pods), unique network, container
//! and pod names (Podman's storage and network definitions are machine-wide), all removed on
//! drop. Podman runs with no CONTAINER_HOST (set, it makes podman a remote client of that
//! socket: the user's variable must not take the tests' podman elsewhere).
//!
//! The API service is what users get from podman.socket: `podman system service --time=0` on
//! the default rootful socket /run/podman/podman.sock, so nettool names containers with no
//! environment variable. It is shared by every PodmanHost alive on the machine (test threads
//! and test binaries alike) through two lock files: each host holds USERS_LOCK shared; starting
//! and stopping happen under START_LOCK; the last one to leave stops the service and removes
//! the socket.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{unique, wait_for, TestNs};

/// Podman's default rootful API socket.
pub const SOCKET: &str = "/run/podman/podman.sock";
/// Held shared by every user of the service.
const USERS_LOCK: &str = "/run/nt-test-podman-service.users";
/// Held exclusively, briefly, to start or stop the service.
const START_LOCK: &str = "/run/nt-test-podman-service.lock";
/// See [`ReloadLock`].
const RELOAD_LOCK: &str = "/run/nt-test-podman-reload.lock";
const PIDFILE: &str = "/run/nt-test-podman-service.pid";
/// The namespace the shared API service runs in (it only answers reads).
const SERVICE_NS: &str = "nt-test-podman-service";

/// Why real Podman cannot run here (podman or netavark not installed), for a test to print
/// and skip; None when both are. tools/test installs them (its `need` table).
pub fn missing() -> Option<String> {
    let podman = Command::new("podman")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !podman {
        return Some(
            "podman is not installed (Debian package podman; tools/test installs it)".into(),
        );
    }
    if !Path::new("/usr/lib/podman/netavark").exists() {
        return Some(
            "netavark is not installed (Debian package netavark; tools/test installs it)".into(),
        );
    }
    None
}

/// A Podman host: its network namespace, private config, image, and what the test made.
pub struct PodmanHost {
    /// The namespace acting as Podman's host network (bridges, NETAVARK rules live here).
    pub ns: TestNs,
    /// Temp dir: containers.conf and the image's rootfs.
    pub dir: PathBuf,
    /// The imported image (busybox-static + /pause).
    pub image: String,
    networks: Vec<String>,
    containers: Vec<String>,
    pods: Vec<String>,
    _service: ApiService,
    /// Shared, or exclusive for a host whose test reloads ([`ReloadLock`]).
    _reload: ReloadLock,
}

impl PodmanHost {
    /// A fresh host namespace, the image imported, and the shared API service up; no
    /// `podman network reload --all` runs on the machine while it lives.
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, ReloadLock::shared)
    }

    /// The same for a test that runs `podman network reload --all`: no other Podman test host
    /// lives meanwhile (the reload would move its containers here).
    pub fn start_reloading(tag: &str) -> Self {
        Self::start_with(tag, ReloadLock::exclusive)
    }

    fn start_with(tag: &str, lock: fn() -> ReloadLock) -> Self {
        let service = ApiService::acquire();
        let reload = lock();
        let ns = TestNs::new(tag);
        let dir = std::env::temp_dir().join(unique(&format!("{tag}-podman")));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n",
        )
        .unwrap();
        let image = format!("localhost/{}", unique("img"));
        sweep_dead_runs(&ns, &dir);
        let me = PodmanHost {
            ns,
            dir,
            image,
            networks: Vec::new(),
            containers: Vec::new(),
            pods: Vec::new(),
            _service: service,
            _reload: reload,
        };
        me.import_image();
        me
    }

    fn command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns.path()))
            .arg("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env_remove("CONTAINER_HOST");
        c
    }

    /// Run podman in the host namespace; (success, stdout+stderr).
    pub fn try_podman(&self, args: &[&str]) -> (bool, String) {
        super::try_output(self.command().args(args), " (Debian package podman)")
    }

    /// Run podman in the host namespace; panics on failure; returns stdout (trimmed).
    pub fn podman(&self, args: &[&str]) -> String {
        let o = self
            .command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("podman {args:?}: {e} (Debian package podman)"));
        assert!(
            o.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn import_image(&self) {
        let rootfs = self.dir.join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(super::docker::busybox(), bin.join("busybox")).unwrap();
        for applet in ["sh", "sleep", "nc", "httpd", "ip", "cat", "ls"] {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        // Pods need an infra command (catatonit is not installed here).
        std::fs::write(
            rootfs.join("pause"),
            "#!/bin/sh\nexec /bin/sleep 2147483647\n",
        )
        .unwrap();
        std::fs::set_permissions(
            rootfs.join("pause"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut import = self.command();
        import.args(["import", "-", &self.image]);
        super::docker::import_tree(&rootfs, import);
    }

    /// A network with a unique name (`podman network create`, DNS off unless `args` say so:
    /// aardvark-dns is one process per machine), removed on drop.
    pub fn network(&mut self, tag: &str, args: &[&str]) -> String {
        let name = unique(tag);
        let mut a = vec!["network", "create", "--disable-dns"];
        a.extend_from_slice(args);
        a.push(&name);
        self.podman(&a);
        self.networks.push(name.clone());
        name
    }

    /// `podman run -d --name UNIQUE ARGS... IMAGE CMD...`; returns the container's name.
    pub fn run(&mut self, tag: &str, args: &[&str], cmd: &[&str]) -> String {
        self.make(&["run", "-d"], tag, args, cmd)
    }

    /// `podman create --name UNIQUE ARGS... IMAGE CMD...` (never started); its name.
    pub fn create(&mut self, tag: &str, args: &[&str], cmd: &[&str]) -> String {
        self.make(&["create"], tag, args, cmd)
    }

    fn make(&mut self, verb: &[&str], tag: &str, args: &[&str], cmd: &[&str]) -> String {
        let name = unique(tag);
        let mut a = verb.to_vec();
        a.extend_from_slice(&["--name", &name]);
        a.extend_from_slice(args);
        a.push(&self.image);
        a.extend_from_slice(cmd);
        self.containers.push(name.clone());
        self.podman(&a);
        name
    }

    /// `podman pod create --name UNIQUE` with this image's /pause as infra; returns its name.
    pub fn pod(&mut self, tag: &str, args: &[&str]) -> String {
        let name = unique(tag);
        let image = self.image.clone();
        let mut a = vec![
            "pod",
            "create",
            "--name",
            &name,
            "--infra-image",
            &image,
            "--infra-command",
            "/pause",
        ];
        a.extend_from_slice(args);
        self.pods.push(name.clone());
        self.podman(&a);
        name
    }

    /// The full id of a container.
    pub fn id(&self, name: &str) -> String {
        self.podman(&["inspect", "-f", "{{.Id}}", name])
    }

    /// The pod's infra container name.
    pub fn infra_of(&self, pod: &str) -> String {
        let id = self.podman(&["pod", "inspect", "-f", "{{.InfraContainerID}}", pod]);
        self.podman(&["inspect", "-f", "{{.Name}}", &id])
    }
}

impl Drop for PodmanHost {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let mut a = vec!["rm", "-f", "-t", "0"];
            a.extend(self.containers.iter().map(String::as_str));
            let _ = self.try_podman(&a);
        }
        for p in &self.pods {
            let _ = self.try_podman(&["pod", "rm", "-f", "-t", "0", p]);
        }
        for n in &self.networks {
            let _ = self.try_podman(&["network", "rm", "-f", n]);
        }
        let _ = self.try_podman(&["rmi", "-f", &self.image]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test process that made `name` (nt-test-TAG-PID-N, see `unique`), when it is gone.
fn dead_owner(name: &str) -> bool {
    let name = name.trim_start_matches("localhost/");
    let name = name.split(':').next().unwrap_or(name);
    if !name.starts_with("nt-test-") {
        return false;
    }
    let parts: Vec<&str> = name.rsplitn(3, '-').collect();
    match (
        parts.get(1).and_then(|p| p.parse::<u32>().ok()),
        parts.first(),
    ) {
        (Some(pid), Some(n)) if n.parse::<u32>().is_ok() => {
            !Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

/// Remove what a killed test run left (its drop never ran): containers, pods, networks and
/// images named by a test process that no longer exists. Podman's storage is machine-wide.
fn sweep_dead_runs(ns: &TestNs, dir: &Path) {
    let podman = |args: &[&str]| -> String {
        Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", dir.join("containers.conf"))
            .env_remove("CONTAINER_HOST")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let dead = |out: String| -> Vec<String> {
        out.lines()
            .map(str::trim)
            .filter(|n| dead_owner(n))
            .map(str::to_string)
            .collect()
    };
    let containers = dead(podman(&["ps", "-a", "--format", "{{.Names}}"]));
    if !containers.is_empty() {
        let mut a = vec!["rm", "-f", "-t", "0"];
        a.extend(containers.iter().map(String::as_str));
        podman(&a);
    }
    for p in dead(podman(&["pod", "ls", "--format", "{{.Name}}"])) {
        podman(&["pod", "rm", "-f", "-t", "0", &p]);
    }
    for n in dead(podman(&["network", "ls", "--format", "{{.Name}}"])) {
        podman(&["network", "rm", "-f", &n]);
    }
    for i in dead(podman(&["images", "--format", "{{.Repository}}"])) {
        podman(&["rmi", "-f", &i]);
    }
}

/// Held by every [`PodmanHost`], across test threads and test processes:
/// `podman network reload --all` tears down and sets up again every running container of the
/// machine's Podman from the namespace it runs in (their veths move there), so a host whose
/// test reloads holds it exclusively and every other one shared.
pub struct ReloadLock(File);

impl ReloadLock {
    /// For a test that runs containers but never reloads.
    pub fn shared() -> Self {
        Self::take(libc::LOCK_SH)
    }

    /// For a test that runs `podman network reload --all`.
    pub fn exclusive() -> Self {
        Self::take(libc::LOCK_EX)
    }

    /// Waited for at most 10 minutes (a reloading test waits for every other Podman test to
    /// end): a process holding the lock for good (a shell's `flock ... sleep`, a hung test)
    /// fails the test with its name instead of hanging the suite.
    fn take(op: libc::c_int) -> Self {
        let f = lock_file(RELOAD_LOCK);
        lock_wait(&f, op, RELOAD_LOCK, Duration::from_secs(600));
        ReloadLock(f)
    }
}

/// A hold on the shared Podman API service on the default socket.
pub struct ApiService {
    users: File,
}

fn lock_file(path: &str) -> File {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn flock(f: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on a valid open fd.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

/// The exclusive start lock, waited for at most 3 minutes: a process left over from a killed
/// run (or a shell that passed the lock's fd to a child) must fail the test with the holder's
/// name, not hang the whole suite.
fn lock_start(start: &File) {
    lock_wait(start, libc::LOCK_EX, START_LOCK, Duration::from_secs(180));
}

/// flock(`op`) on `f` (the lock file `path`), waited for at most `limit`; then a panic that
/// names the processes holding it.
fn lock_wait(f: &File, op: libc::c_int, path: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !flock(f, op | libc::LOCK_NB) {
        if Instant::now() > deadline {
            panic!(
                "{path} is held for over {} s by: {} (a leftover of a killed run, or a shell holding it? end it)",
                limit.as_secs(),
                lock_holders(path)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Which processes have `path` open (pid and command line), for the message above.
fn lock_holders(path: &str) -> String {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new(path)))
        {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            out.push(format!(
                "{} ({})",
                e.file_name().to_string_lossy(),
                cmd.trim()
            ));
        }
    }
    out.join(", ")
}

/// True when Podman's API answers on the default socket.
pub fn answers() -> bool {
    let Ok(mut s) = UnixStream::connect(SOCKET) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.") && out.contains(" 200 ")
}

impl ApiService {
    /// Start the service unless it already answers, and hold it for as long as this lives.
    pub fn acquire() -> Self {
        let start = lock_file(START_LOCK);
        lock_start(&start);
        if !answers() {
            start_service();
        }
        let users = lock_file(USERS_LOCK);
        assert!(flock(&users, libc::LOCK_SH), "flock {USERS_LOCK}");
        flock(&start, libc::LOCK_UN);
        ApiService { users }
    }
}

fn start_service() {
    if !Path::new(&format!("/run/netns/{SERVICE_NS}")).exists() {
        let _ = Command::new("ip")
            .args(["netns", "add", SERVICE_NS])
            .status();
    }
    let _ = std::fs::create_dir_all("/run/podman");
    let _ = std::fs::remove_file(SOCKET);
    let log = File::create(std::env::temp_dir().join("nt-test-podman-service.log")).unwrap();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{SERVICE_NS}"))
        .args(["podman", "system", "service", "--time=0"])
        .arg(format!("unix://{SOCKET}"))
        .env_remove("CONTAINER_HOST")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // Its own process group: a test's Ctrl-C must not take the shared service down mid-run.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .expect("start podman system service (Debian package podman)");
    std::fs::write(PIDFILE, child.id().to_string()).unwrap();
    // Whoever is last stops it by pid (it may not be this process).
    std::mem::forget(child);
    wait_for("podman API on /run/podman/podman.sock", 30, answers);
}

/// True while `pid` is a live podman process (not a reused pid).
fn is_podman(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("podman"))
        .unwrap_or(false)
}

impl Drop for ApiService {
    fn drop(&mut self) {
        flock(&self.users, libc::LOCK_UN);
        let start = lock_file(START_LOCK);
        lock_start(&start);
        // Exclusive on the users' lock means nobody else holds the service: stop it.
        if flock(&self.users, libc::LOCK_EX | libc::LOCK_NB) {
            if let Some(pid) = std::fs::read_to_string(PIDFILE)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) on the pid the starter recorded, checked to be podman.
                if is_podman(pid) {
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while is_podman(pid) && Instant::now() < deadline {
                    // Reap it when it is this process's child (else it stays a zombie).
                    // SAFETY: waitpid WNOHANG; harmless when it is not our child.
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                    std::thread::sleep(Duration::from_millis(50));
                }
                if is_podman(pid) {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                // SAFETY: as above (a zombie child of ours is reaped here).
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            }
            let _ = std::fs::remove_file(PIDFILE);
            let _ = std::fs::remove_file(SOCKET);
            let _ = Command::new("ip")
                .args(["netns", "del", SERVICE_NS])
                .status();
            flock(&self.users, libc::LOCK_UN);
        }
        flock(&start, libc::LOCK_UN);
    }
}

/// Run nettool with no engine variable set (DOCKER_HOST, CONTAINER_HOST), as a user on a
/// Podman host would: names must come from the default socket.
pub fn nettool_plain(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("DOCKER_HOST")
        .env_remove("CONTAINER_HOST")
        .output()
        .expect("run nettool")
}

/// The same, asserting success and parsing stdout as JSON.
pub fn nettool_plain_json(args: &[&str]) -> serde_json::Value {
    let out = nettool_plain(args);
    assert!(
        out.status.success(),
        "nettool {args:?}: {}",
        super::text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nettool {args:?}: bad JSON {e}: {}", super::text(&out)))
}
