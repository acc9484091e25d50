//! A real containerd + dockerd running inside a test namespace, with every directory and
//! socket under a temp dir, stopped and cleaned on drop (DESIGN.md: start them with nsenter,
//! not `ip netns exec`; make images with `docker import` from busybox-static).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{unique, wait_for, ChildGuard, TestNs};

/// A private Docker daemon. Its "host" is `ns`; containers get their own namespaces.
pub struct Dockerd {
    /// The namespace containerd and dockerd run in (the daemon's host network).
    pub ns: TestNs,
    /// Temp dir holding data roots, sockets and logs.
    pub dir: PathBuf,
    /// The API socket (use as DOCKER_HOST=unix://...).
    pub socket: PathBuf,
    dockerd: Option<ChildGuard>,
    containerd: Option<ChildGuard>,
}

impl Dockerd {
    /// Start containerd and dockerd in a fresh namespace; panics (with the daemon log) when
    /// the daemon does not answer within 60 s.
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, &["--userland-proxy=false"])
    }

    /// The same with these extra dockerd arguments (e.g. `--userland-proxy=true`, Docker's
    /// default, which runs docker-proxy for every published port).
    pub fn start_with(tag: &str, extra: &[&str]) -> Self {
        let ns = TestNs::new(tag);
        let dir = std::env::temp_dir().join(unique(&format!("{tag}-docker")));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{d}/containerd/root\"\nstate = \"{d}/containerd/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("daemon.json"), "{}").unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let nsenter = format!("--net={}", ns.path());
        let containerd = ChildGuard(
            Command::new("nsenter")
                .args([&nsenter, "containerd", "--config"])
                .arg(dir.join("containerd.toml"))
                .stdin(Stdio::null())
                .stdout(log("containerd.log"))
                .stderr(log("containerd.err"))
                .spawn()
                .expect("start containerd (Debian package containerd)"),
        );
        let csock = dir.join("containerd.sock");
        wait_for("containerd socket", 30, || csock.exists());
        let socket = dir.join("docker.sock");
        let dockerd = ChildGuard(
            Command::new("nsenter")
                .args([&nsenter, "dockerd", "--config-file"])
                .arg(dir.join("daemon.json"))
                .arg("--data-root")
                .arg(dir.join("docker"))
                .arg("--exec-root")
                .arg(dir.join("exec"))
                .arg("--pidfile")
                .arg(dir.join("docker.pid"))
                .arg("-H")
                .arg(format!("unix://{}", socket.display()))
                .arg("--containerd")
                .arg(&csock)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(log("dockerd.log"))
                .stderr(log("dockerd.err"))
                .spawn()
                .expect("start dockerd (Debian package docker.io)"),
        );
        let me = Dockerd {
            ns,
            dir,
            socket,
            dockerd: Some(dockerd),
            containerd: Some(containerd),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !me.try_docker(&["version"]).0 {
            if std::time::Instant::now() > deadline {
                panic!(
                    "dockerd did not answer: {}",
                    std::fs::read_to_string(me.dir.join("dockerd.err")).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        me
    }

    /// The value for DOCKER_HOST.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Run the docker CLI against this daemon: (success, stdout+stderr).
    pub fn try_docker(&self, args: &[&str]) -> (bool, String) {
        super::try_output(
            Command::new("docker").arg("-H").arg(self.host()).args(args),
            "",
        )
    }

    /// Run the docker CLI against this daemon; panics on failure; returns stdout+stderr.
    pub fn docker(&self, args: &[&str]) -> String {
        let (ok, out) = self.try_docker(args);
        assert!(ok, "docker {args:?} failed: {out}");
        out
    }

    /// Import the busybox image (nt-busybox) and run busybox httpd in container `name`,
    /// published as `publish` (docker run -p syntax): the web container most tests start.
    pub fn run_busybox_web(&self, name: &str, publish: &str) -> String {
        self.import_busybox("nt-busybox");
        self.docker(&[
            "run",
            "-d",
            "--name",
            name,
            "-p",
            publish,
            "nt-busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/",
        ])
    }

    /// Import a busybox-static image called `name` (sh, sleep, nc, httpd... as busybox applets).
    pub fn import_busybox(&self, name: &str) {
        let rootfs = self.dir.join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(busybox(), bin.join("busybox")).unwrap();
        for applet in ["sh", "sleep", "nc", "httpd", "ip", "cat", "ls", "wget"] {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        let mut import = Command::new("docker");
        import
            .arg("-H")
            .arg(self.host())
            .args(["import", "-", name]);
        import_tree(&rootfs, import);
    }
}

/// `tar -C ROOTFS -c . | IMPORT` (`docker import - NAME`, `podman import - NAME`); panics with
/// the importer's message when it fails.
pub fn import_tree(rootfs: &Path, mut import: Command) {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = import.stdin(tar.stdout.take().unwrap()).output().unwrap();
    let _ = tar.wait();
    assert!(
        out.status.success(),
        "{:?}: {}",
        import.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every container of a daemon removed (`docker ps -aq`, `docker rm -f`) through `try_docker`,
/// while the daemon runs, so it unmounts what it mounted.
pub fn remove_containers(try_docker: impl Fn(&[&str]) -> (bool, String)) {
    let (_, ids) = try_docker(&["ps", "-aq"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        let _ = try_docker(&args);
    }
}

/// The static busybox binary the test images are made from.
pub fn busybox() -> &'static Path {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return Path::new(p);
        }
    }
    panic!("busybox not found (Debian package busybox-static)");
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        remove_containers(|args| self.try_docker(args));
        // SIGTERM for a clean shutdown, then the guards kill whatever is left.
        for guard in [&self.dockerd, &self.containerd].into_iter().flatten() {
            let _ = Command::new("kill")
                .args(["-TERM", &guard.pid().to_string()])
                .status();
        }
        if let Some(mut d) = self.dockerd.take() {
            wait_exit(&mut d, 15);
        }
        if let Some(mut c) = self.containerd.take() {
            wait_exit(&mut c, 10);
        }
        // Anything still mounted under the temp dir (overlay, netns) goes before the dir.
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            let prefix = self.dir.display().to_string();
            let mut points: Vec<&str> = mi
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&prefix))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").args(["-l", p]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_exit(child: &mut ChildGuard, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.0.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
