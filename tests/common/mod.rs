//! Test helpers: throwaway namespaces and veths that clean up on drop (panic included),
//! and a runner for the nettool binary.
#![allow(dead_code)]

pub mod cni;
pub mod docker;
pub mod names;
pub mod podman;
pub mod rootless;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name with the nt-test- prefix (namespace names) or a short one (interface names, max 15 chars).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("nt-test-{tag}-{}-{n}", std::process::id())
}

/// A short unique interface name (IFNAMSIZ is 16 with the NUL).
pub fn unique_ifname(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id() % 100_000;
    let name = format!("{tag}{pid}x{n}");
    assert!(name.len() <= 15, "interface name too long: {name}");
    name
}

/// Run a command, panic with its output when it fails.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `argv` inside the named namespace `ns` (`ip netns exec`, so /etc/netns/NS applies);
/// panic with its output when it fails. `ns` is a name or a [`TestNs`].
pub fn in_ns(ns: impl AsRef<str>, argv: &[&str]) -> String {
    let mut a = vec!["ip", "netns", "exec", ns.as_ref()];
    a.extend_from_slice(argv);
    sh(&a)
}

/// Set one sysctl (`net.ipv4.ip_forward=1`) inside the named namespace `ns`.
pub fn sysctl(ns: impl AsRef<str>, kv: &str) {
    in_ns(ns, &["sysctl", "-qw", kv]);
}

/// A container on a bridge of `host`: bridge `br` (made here, up) holds `gw_cidr`; a veth
/// `host_end` (in the bridge) leads to `eth0` in `ctr`, which gets `ctr_cidr` and a default
/// route via the bridge's address.
pub fn bridge_container(
    host: &TestNs,
    br: &str,
    gw_cidr: &str,
    host_end: &str,
    ctr: &TestNs,
    ctr_cidr: &str,
) {
    host.ip(&["link", "add", br, "type", "bridge"]);
    host.ip(&["addr", "add", gw_cidr, "dev", br]);
    host.ip(&["link", "set", br, "up"]);
    veth(host_end, host, "eth0", ctr);
    host.ip(&["link", "set", host_end, "master", br]);
    ctr.ip(&["addr", "add", ctr_cidr, "dev", "eth0"]);
    let gw = gw_cidr.split('/').next().unwrap();
    ctr.ip(&["route", "add", "default", "via", gw]);
}

/// The uplink of a test host: veth `up0` in `host` (192.0.2.1/24) to `eth0` in `outside`
/// (192.0.2.2/24), each the other's default route.
pub fn uplink(host: &TestNs, outside: &TestNs) {
    veth("up0", host, "eth0", outside);
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "up0"]);
    outside.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    host.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    outside.ip(&["route", "add", "default", "via", "192.0.2.1"]);
}

/// IPv6 on an [`uplink`]: 2001:db8:1::1/64 on the host, ::2 outside (no DAD), and the outside's
/// default route via the host (the host's own IPv6 default route is left to the caller).
pub fn uplink6(host: &TestNs, outside: &TestNs) {
    uplink6_on(host, "up0", outside);
}

/// [`uplink6`] on the host's interface `dev` (the hand-built labs call their uplink ext0).
pub fn uplink6_on(host: &TestNs, dev: &str, outside: &TestNs) {
    host.ip(&["-6", "addr", "add", "2001:db8:1::1/64", "dev", dev, "nodad"]);
    outside.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    outside.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
}

/// The HTTP status code `curl URL` gets inside namespace `ns` (empty when it gets none).
pub fn http_code(ns: impl AsRef<str>, url: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.as_ref(), "curl", "-g", "-s", "-m", "5"])
        .args(["-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct TestNs {
    /// Its name under /run/netns.
    pub name: String,
}

impl AsRef<str> for TestNs {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl TestNs {
    /// Create a fresh named namespace with lo up.
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = TestNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Run `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        sh(&argv)
    }

    /// Path of the namespace file.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Start a long-running process inside (killed on drop of the returned guard).
    pub fn spawn(&self, argv: &[&str]) -> ChildGuard {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn in netns");
        ChildGuard(child)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        // Kill anything still inside, then remove the name.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process killed and reaped on drop.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Create a veth pair `a` in `ns_a` and `b` in `ns_b` (None = the test's own namespace, which
/// only tests that must never do so avoid), both up.
pub fn veth(a: &str, ns_a: &TestNs, b: &str, ns_b: &TestNs) {
    sh(&[
        "ip", "-n", &ns_a.name, "link", "add", a, "type", "veth", "peer", "name", b, "netns",
        &ns_b.name,
    ]);
    ns_a.ip(&["link", "set", a, "up"]);
    ns_b.ip(&["link", "set", b, "up"]);
}

/// Run the nettool binary with args; returns the whole output.
pub fn nettool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run nettool")
}

/// Run nettool, assert success, return stdout.
pub fn nettool_ok(args: &[&str]) -> String {
    let out = nettool(args);
    assert!(
        out.status.success(),
        "nettool {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run nettool with --json, parse the JSON.
pub fn nettool_json(args: &[&str]) -> serde_json::Value {
    let s = nettool_ok(args);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("nettool {args:?}: bad JSON {e}: {s}"))
}

/// `nettool doctor --netns HOST ARGS... --json`, whatever the verdict (its exit code checked
/// against it: 0 all clear, 1 broken).
pub fn doctor_json(host: &str, args: &[&str]) -> serde_json::Value {
    let mut v = vec!["doctor", "--netns", host, "--json"];
    v.extend_from_slice(args);
    let out = nettool(&v);
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor {args:?}: bad JSON ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let ok = report["diagnosis"]["ok"].as_bool().unwrap();
    assert_eq!(
        out.status.code(),
        Some(if ok { 0 } else { 1 }),
        "{report:#}"
    );
    report
}

/// Hop `id` of a doctor report (the first, when several share the id).
pub fn hop<'a>(r: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == id)
        .unwrap_or_else(|| panic!("no hop {id} in {r:#}"))
}

/// The summary line of hop `id` of a doctor report.
pub fn summary<'a>(r: &'a serde_json::Value, id: &str) -> &'a str {
    hop(r, id)["summary"].as_str().unwrap()
}

/// How many hops of a doctor report fail.
pub fn fails(r: &serde_json::Value) -> usize {
    r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["verdict"] == "fail")
        .count()
}

/// Run `c`; (success, stdout then stderr), or (false, why it could not start, with `hint`).
pub fn try_output(c: &mut Command, hint: &str) -> (bool, String) {
    match c.output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, format!("{:?}: {e}{hint}", c.get_program())),
    }
}

/// With NETTOOL_RECORD_CAPTURES=1, record the host as it is now into captures/doctor/NAME
/// (`tools/record-doctor-capture NAME HOW -- --netns HOST ARGS...`, `env` set for the
/// engine): how the recorded snapshots of real hosts are made. A no-op otherwise.
pub fn record_capture(env: &[(&str, String)], host: &str, name: &str, how: &str, args: &[&str]) {
    if std::env::var_os("NETTOOL_RECORD_CAPTURES").is_none() {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(format!("{root}/tools/record-doctor-capture"))
        .args([name, how, "--", "--netns", host])
        .args(args)
        .env("NETTOOL", env!("CARGO_BIN_EXE_nettool"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "recording {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Wait until `f` is true (polling every 20 ms) or panic after `secs`.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// A nettool lab (`setup --name nt-test-...`), torn down on drop (panic included). Build one
/// with [`TestLab::isolated`] (its host is a fresh namespace named like the lab) and read the
/// state JSON it returns (docs/setup.md), or `nettool::lab::state::load(&lab.name)`.
pub struct TestLab {
    /// The lab name (= its host namespace when isolated; containers are NAME-CONTAINER).
    pub name: String,
    /// Run nettool inside this namespace (non-isolated labs built in a TestNs "host").
    pub host: Option<String>,
}

/// Run nettool with `args` (and extra `env`), inside namespace `host` via nsenter when given.
pub fn nettool_in(host: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let exe = env!("CARGO_BIN_EXE_nettool");
    let mut cmd = match host {
        // nsenter, not `ip netns exec`: the lab's namespace mounts must stay visible outside.
        Some(h) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{h}")).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run nettool")
}

/// stdout and stderr of a finished command, as one string.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl TestLab {
    /// `setup --isolated --name nt-test-... ARGS --json`.
    pub fn isolated(tag: &str, args: &[&str]) -> (TestLab, serde_json::Value) {
        let name = unique(tag);
        let mut a = vec!["setup", "--isolated", "--name", &name, "--json"];
        a.extend_from_slice(args);
        let lab = TestLab {
            name: name.clone(),
            host: None,
        };
        let v = nettool_json(&a);
        (lab, v)
    }

    /// `nsenter --net=HOST nettool setup --name nt-test-... ARGS --json` (HOST acts as the host).
    pub fn in_host(tag: &str, host: &TestNs, args: &[&str]) -> (TestLab, serde_json::Value) {
        let name = unique(tag);
        let mut a = vec!["setup", "--name", &name, "--json"];
        a.extend_from_slice(args);
        let lab = TestLab {
            name: name.clone(),
            host: Some(host.name.clone()),
        };
        let out = nettool_in(Some(&host.name), &a, &[]);
        assert!(out.status.success(), "setup failed: {}", text(&out));
        let v = serde_json::from_slice(&out.stdout).expect("json");
        (lab, v)
    }

    pub fn ns(&self, container: &str) -> String {
        format!("{}-{container}", self.name)
    }

    pub fn teardown(&self) -> String {
        let out = nettool_in(self.host.as_deref(), &["teardown", &self.name], &[]);
        assert!(out.status.success(), "teardown failed: {}", text(&out));
        text(&out)
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = nettool_in(self.host.as_deref(), &["teardown", &self.name], &[]);
    }
}

/// What transparent mode leaves in a namespace: nft tables, policy rules, routes in its tables.
pub fn transparent_traces(ns: Option<&TestNs>) -> String {
    let run = |argv: &[&str]| {
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]);
                c.args(argv);
                c
            }
            None => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        // A command that failed would read as "nothing left": say it instead.
        let o = c.output().unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert!(
            o.status.success(),
            "{argv:?} in {}: {}",
            ns.map_or("the test's namespace", |n| n.name.as_str()),
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut out = String::new();
    for line in run(&["nft", "list", "tables"]).lines() {
        if line.contains("nettool_proxy") {
            out += line;
            out += "\n";
        }
    }
    for argv in [
        &["ip", "-4", "rule"][..],
        &["ip", "-6", "rule"],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
    ] {
        for line in run(argv).lines() {
            if line.contains("0x1000") || line.contains("table 13141") {
                out += line;
                out += "\n";
            }
        }
    }
    out
}
