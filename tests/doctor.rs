//! `nettool doctor` against a Docker-style lab built in throwaway namespaces: a "host"
//! namespace with a bridge, a container behind a veth with a service on port 80, an
//! "outside" client namespace, and a DNAT from 8080. Each test breaks one thing, checks that
//! doctor names exactly that fault, applies the suggested fix inside the host namespace
//! (argv, no shell) and checks that the probe then gets through.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// Run argv with `input` on stdin; panic on failure.
fn sh_stdin(argv: &[&str], input: &str) {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// A lab built by hand (what the tests used before `nettool setup` existed; still the way to
// get an outside client namespace, iptables-legacy rules and a UDP flow made before the DNAT).
// ---------------------------------------------------------------------------------------------

/// The lab: host (bridge br0 10.89.0.1/24, ext0 192.0.2.1/24), container (eth0 10.89.0.2),
/// outside (eth0 192.0.2.2), DNAT tcp 8080 -> 10.89.0.2:80, service socat on :80.
struct Lab {
    host: TestNs,
    container: TestNs,
    outside: TestNs,
    service: Option<ChildGuard>,
    fixes: Vec<ChildGuard>,
}

const RULES: &str = "*nat
:NETTOOL - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j NETTOOL
-A OUTPUT -m addrtype --dst-type LOCAL -j NETTOOL
-A POSTROUTING -s 10.89.0.0/24 ! -o br0 -j MASQUERADE
-A POSTROUTING -o br0 -m addrtype --src-type LOCAL -j MASQUERADE
-A NETTOOL -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.89.0.2:80
COMMIT
*filter
:NETTOOL-USER - [0:0]
-A FORWARD -j NETTOOL-USER
-A FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i br0 -j ACCEPT
-A FORWARD -d 10.89.0.2/32 -o br0 -p tcp -m tcp --dport 80 -j ACCEPT
-A NETTOOL-USER -j RETURN
COMMIT
";

impl Lab {
    fn new() -> Lab {
        let host = TestNs::new("dhost");
        let container = TestNs::new("dweb");
        let outside = TestNs::new("dout");
        bridge_container(
            &host,
            "br0",
            "10.89.0.1/24",
            "vh0",
            &container,
            "10.89.0.2/24",
        );
        veth("ext0", &host, "eth0", &outside);
        host.ip(&["addr", "add", "192.0.2.1/24", "dev", "ext0"]);
        outside.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
        outside.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        let lab = Lab {
            host,
            container,
            outside,
            service: None,
            fixes: Vec::new(),
        };
        lab.sysctl("net.ipv4.ip_forward=1");
        lab.sysctl("net.ipv4.conf.br0.route_localnet=1");
        sh_stdin(
            &[
                "ip",
                "netns",
                "exec",
                &lab.host.name,
                "iptables-restore",
                "--noflush",
            ],
            RULES,
        );
        let mut lab = lab;
        lab.start_service();
        lab
    }

    fn start_service(&mut self) {
        self.service =
            Some(
                self.container
                    .spawn(&["socat", "TCP-LISTEN:80,fork,reuseaddr", "EXEC:cat"]),
            );
        self.wait_listening(80);
    }

    fn wait_listening(&self, port: u16) {
        wait_tcp_listening(&self.container, port);
    }

    fn sysctl(&self, kv: &str) {
        sysctl(&self.host, kv);
    }

    fn in_host(&self, argv: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.host.name];
        v.extend_from_slice(argv);
        sh(&v);
    }

    fn outside_source(&self) -> String {
        format!("outside:{}", self.outside.name)
    }
}

impl Subject for Lab {
    fn doctor(&self, args: &[&str]) -> Value {
        doctor_json(&self.host.name, args)
    }

    fn apply_fix(&mut self, report: &Value) {
        if let Some(c) = run_fix(&self.host.name, report) {
            self.fixes.push(c);
        }
    }
}

/// The diagnosis line of a report.
fn diag_line(r: &Value) -> &str {
    r["diagnosis"]["line"]
        .as_str()
        .unwrap_or_else(|| panic!("no line: {r:#}"))
}

/// The printed fix of a report, as one line to paste.
fn fix_line(r: &Value) -> &str {
    r["diagnosis"]["fix"]["command"]
        .as_str()
        .unwrap_or_else(|| panic!("no fix: {r:#}"))
}

fn fault(r: &Value) -> &str {
    r["diagnosis"]["fault"].as_str().unwrap_or("none")
}

/// A report with one finding as the bound-listener tests check it: its fault, each part of
/// its line, and one failing hop (one cause, one finding).
fn assert_one_finding(r: &Value, want: &str, parts: &[String]) {
    assert_eq!(fault(r), want, "{r:#}");
    let line = diag_line(r);
    for part in parts {
        assert!(line.contains(part.as_str()), "{part}: {r:#}");
    }
    assert_eq!(fails(r), 1, "one cause, one finding: {r:#}");
}

/// Record the run as a capture (NETTOOL_RECORD_CAPTURES=1) and print doctor's text for it,
/// which docs/doctor.md pastes.
fn record_and_print(host: &str, name: &str, how: &str, args: &[&str]) {
    record_capture(&[], host, name, how, args);
    let text = nettool(&[&["doctor", "--netns", host][..], args].concat());
    println!("{}", String::from_utf8_lossy(&text.stdout));
}

/// What the fault tests drive: a lab that doctor can examine and fixes can be applied to.
trait Subject {
    /// `nettool doctor --netns HOST ARGS... --json`, whatever the exit code.
    fn doctor(&self, args: &[&str]) -> Value;
    /// Run the report's fix inside the host namespace (argv, no shell).
    fn apply_fix(&mut self, report: &Value);
}

/// Run a fix's argv inside `host`; a background fix is spawned and returned.
fn run_fix(host: &str, report: &Value) -> Option<ChildGuard> {
    let fix = &report["diagnosis"]["fix"];
    assert!(fix.is_object(), "no fix in {report:#}");
    let argv: Vec<String> = fix["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut v = vec!["ip", "netns", "exec", host];
    v.extend(argv.iter().map(String::as_str));
    if fix["background"].as_bool() == Some(true) {
        let child = Command::new(v[0])
            .args(&v[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Some(ChildGuard(child))
    } else {
        sh(&v);
        None
    }
}

/// Break, diagnose, check the fault, fix, probe: the shared shape of every fault test.
fn break_fix_probe(lab: &mut impl Subject, args: &[&str], expect: &str) -> Value {
    let broken = lab.doctor(args);
    assert_eq!(fault(&broken), expect, "{broken:#}");
    assert_eq!(broken["diagnosis"]["ok"], false);
    assert!(
        broken["diagnosis"]["fix"]["command"].is_string(),
        "{broken:#}"
    );
    lab.apply_fix(&broken);
    let mut args = args.to_vec();
    args.push("--probe");
    if broken["diagnosis"]["fix"]["background"] == true {
        wait_for("the started service", 10, || {
            lab.doctor(&args[..args.len() - 1])["diagnosis"]["ok"] == true
        });
    }
    let fixed = lab.doctor(&args);
    assert_eq!(fixed["diagnosis"]["ok"], true, "after the fix: {fixed:#}");
    assert_eq!(fixed["probe"]["ok"], true, "{fixed:#}");
    broken
}

#[test]
fn healthy_lab_gets_an_all_clear() {
    let lab = Lab::new();
    for from in [
        vec!["--from", "localhost"],
        vec!["--from", "host"],
        vec!["--from", &lab.outside_source()],
    ] {
        let mut args = from.clone();
        args.extend(["8080", "--probe"]);
        let r = lab.doctor(&args);
        assert_eq!(r["diagnosis"]["ok"], true, "{from:?}: {r:#}");
        assert_eq!(r["probe"]["ok"], true, "{r:#}");
        assert!(
            r["diagnosis"]["line"]
                .as_str()
                .unwrap()
                .starts_with("all clear"),
            "{r:#}"
        );
        assert_eq!(r["destination"]["addr"], "10.89.0.2");
        assert_eq!(r["destination"]["port"], 80);
        assert_eq!(r["destination"]["netns"], lab.container.name.as_str());
        assert_eq!(hop(&r, "service")["verdict"], "ok");
        assert!(
            hop(&r, "service")["summary"]
                .as_str()
                .unwrap()
                .contains("socat"),
            "{r:#}"
        );
    }
    // From outside with no client namespace: doctor attaches a temporary one for the probe
    // and removes it again.
    let r = lab.doctor(&["--from", "outside", "8080", "--probe"]);
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    assert!(
        r["probe"]["from_netns"]
            .as_str()
            .unwrap()
            .contains("temporary"),
        "{r:#}"
    );
    let links = lab.host.ip(&["-o", "link"]);
    assert!(
        !links.contains("ntprobe"),
        "temporary veth left behind: {links}"
    );
}

#[test]
fn drop_rule_hidden_in_iptables_legacy() {
    let mut lab = Lab::new();
    // The rules are iptables-nft; a DROP added with iptables-legacy is invisible to `iptables -S`.
    lab.in_host(&[
        "iptables-legacy",
        "-I",
        "FORWARD",
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DROP",
    ]);
    let from = lab.outside_source();
    let r = break_fix_probe(&mut lab, &["--from", &from, "8080"], "firewall_drop");
    assert_eq!(r["diagnosis"]["fix"]["argv"][0], "iptables-legacy", "{r:#}");
    assert_eq!(hop(&r, "backends")["verdict"], "warn", "{r:#}");
}

#[test]
fn stale_udp_conntrack_entry() {
    let mut lab = Lab::new();
    let _udp = lab
        .container
        .spawn(&["socat", "UDP-LISTEN:53,fork,reuseaddr", "EXEC:cat"]);
    // A client sends before the port is published: conntrack remembers an un-NATed flow.
    let mut c = Command::new("ip")
        .args(["netns", "exec", &lab.outside.name, "socat", "-t0.3", "-"])
        .arg("UDP:192.0.2.1:5353,sourceport=40000")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"early\n").unwrap();
    let _ = c.wait();
    lab.in_host(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "NETTOOL",
        "-p",
        "udp",
        "--dport",
        "5353",
        "-j",
        "DNAT",
        "--to-destination",
        "10.89.0.2:53",
    ]);
    lab.in_host(&[
        "iptables",
        "-A",
        "FORWARD",
        "-d",
        "10.89.0.2/32",
        "-o",
        "br0",
        "-p",
        "udp",
        "--dport",
        "53",
        "-j",
        "ACCEPT",
    ]);
    let from = lab.outside_source();
    let r = lab.doctor(&["--from", &from, "udp:5353"]);
    assert_eq!(fault(&r), "stale_conntrack", "{r:#}");
    assert!(hop(&r, "conntrack")["evidence"][0]
        .as_str()
        .unwrap()
        .contains("sport=40000"));
    lab.apply_fix(&r);
    let r = lab.doctor(&["--from", &from, "udp:5353", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
}

/// Forwarding off on one interface while net.ipv4.ip_forward is 1: IPv4 asks the interface a
/// packet comes in on, so the uplink (the client's packets) and the bridge (the container's
/// answers) each stop the connection. One FAIL naming the sysctl; the printed fix opens the
/// port again. The container's bridged veth is not where a packet is routed in: doctor's
/// verdict agrees with the probe there too.
#[test]
fn forwarding_off_on_one_interface_is_named_with_its_sysctl() {
    let mut lab = Lab::new();
    let from = lab.outside_source();
    let args = ["--from", from.as_str(), "8080"];
    for dev in ["br0", "ext0"] {
        lab.sysctl(&format!("net.ipv4.conf.{dev}.forwarding=0"));
        record_capture(
            &[],
            &lab.host.name,
            &format!("lab-forwarding-off-on-{dev}"),
            &format!("hand-built lab (bridge br0, uplink ext0, DNAT 8080 -> 10.89.0.2:80, socat on :80), ip_forward=1 and net.ipv4.conf.{dev}.forwarding=0"),
            &args,
        );
        let r = break_fix_probe(&mut lab, &args, "interface_forwarding_off");
        let fails = r["hops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["verdict"] == "fail")
            .count();
        assert_eq!(fails, 1, "one cause, one FAIL: {r:#}");
        assert_eq!(
            r["diagnosis"]["fix"]["argv"],
            serde_json::json!(["sysctl", "-w", format!("net.ipv4.conf.{dev}.forwarding=1")]),
            "{r:#}"
        );
        assert!(
            r["diagnosis"]["line"].as_str().unwrap().contains(dev),
            "{r:#}"
        );
    }
    // New interfaces get forwarding off: --probe's temporary client comes in on one, and
    // the fix is the default (the interface is gone when doctor exits).
    lab.sysctl("net.ipv4.conf.default.forwarding=0");
    let r = lab.doctor(&["--from", "outside", "8080", "--probe"]);
    assert_eq!(fault(&r), "interface_forwarding_off", "{r:#}");
    assert_eq!(r["probe"]["ok"], false, "{r:#}");
    assert_eq!(
        r["diagnosis"]["fix"]["argv"],
        serde_json::json!(["sysctl", "-w", "net.ipv4.conf.default.forwarding=1"]),
        "{r:#}"
    );
    lab.apply_fix(&r);
    let r = lab.doctor(&["--from", "outside", "8080", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["probe"]["ok"], true, "{r:#}");

    lab.sysctl("net.ipv4.conf.vh0.forwarding=0");
    let r = lab.doctor(&["--from", &from, "8080", "--probe"]);
    assert_eq!(
        r["diagnosis"]["ok"], r["probe"]["ok"],
        "doctor agrees with the probe: {r:#}"
    );
}

#[test]
fn nothing_receives_an_unpublished_port() {
    let lab = Lab::new();
    let r = lab.doctor(&["9999"]);
    assert_eq!(fault(&r), "no_receiver", "{r:#}");
    // A userland proxy on the port is found with its process, and followed to its target.
    let _proxy = lab.host.spawn(&[
        "socat",
        "TCP-LISTEN:9999,fork,reuseaddr",
        "TCP:10.89.0.2:80",
    ]);
    wait_for("proxy listening", 10, || {
        lab.doctor(&["9999"])["hops"][0]["verdict"] == "ok"
    });
    let r = lab.doctor(&["9999", "--probe"]);
    let recv = hop(&r, "receiver");
    assert!(recv["summary"].as_str().unwrap().contains("socat"), "{r:#}");
    // The proxy's target is read from its command line and followed to the container.
    assert_eq!(r["destination"]["via"], "proxy", "{r:#}");
    assert_eq!(r["destination"]["netns"], lab.container.name.as_str());
    assert_eq!(hop(&r, "service")["verdict"], "ok");
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    // A plain service on the host itself: the path ends there.
    let _local = lab
        .host
        .spawn(&["socat", "TCP-LISTEN:7777,fork,reuseaddr", "EXEC:cat"]);
    wait_for("local service", 10, || {
        lab.doctor(&["7777"])["diagnosis"]["ok"] == true
    });
    let r = lab.doctor(&["7777", "--probe", "--from", "host"]);
    assert_eq!(r["destination"]["via"], "local", "{r:#}");
    assert_eq!(hop(&r, "service")["verdict"], "ok", "{r:#}");
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
}

#[test]
fn packet_spec_from_an_outside_address() {
    let lab = Lab::new();
    // The exact packet: doctor follows it like explain-nat's walk, then the whole path.
    let r = lab.doctor(&["--packet", "tcp 192.0.2.2:40000 -> 192.0.2.1:8080 in ext0"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["packet"]["iif"], "ext0");
    assert_eq!(r["packet"]["hook"], "prerouting");
    assert_eq!(r["destination"]["addr"], "10.89.0.2");
    // A packet to a port nothing publishes.
    let r = lab.doctor(&["--packet", "tcp 192.0.2.2 -> 192.0.2.1:8081 in ext0"]);
    assert_eq!(fault(&r), "no_receiver", "{r:#}");
    // Bad specs are usage errors.
    let out = nettool(&[
        "doctor",
        "--netns",
        &lab.host.name,
        "--packet",
        "tcp nowhere",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn container_target_finds_its_published_port() {
    let lab = Lab::new();
    let r = lab.doctor(&[&format!("container:{}", lab.container.name), "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["packet"]["dport"], 8080);
    // From another container namespace on the same bridge the DNAT still applies.
    let _ = &lab.outside;
}

#[test]
fn bad_usage_exits_2() {
    let out = nettool(&["doctor"]);
    assert_eq!(out.status.code(), Some(2));
    let out = nettool(&["doctor", "notaport"]);
    assert_eq!(out.status.code(), Some(2));
    let out = nettool(&["doctor", "--from", "mars", "80"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn real_docker_published_port() {
    let d = common::docker::Dockerd::start("doc-dock");
    // A name of its own: a machine-wide Podman container "web" would make `container:web`
    // ambiguous.
    let web = unique("web");
    d.run_busybox_web(&web, "8080:80");
    let in_web = format!("container:{web}");
    let run = |args: &[&str]| -> Value {
        let mut v = vec!["doctor", "--netns", &d.ns.name, "--json"];
        v.extend_from_slice(args);
        let out = Command::new(env!("CARGO_BIN_EXE_nettool"))
            .args(&v)
            .env("DOCKER_HOST", d.host())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{v:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    wait_for("httpd listening in the container", 20, || {
        run(&["8080"])["diagnosis"]["ok"] == true
    });
    for from in ["localhost", "outside", in_web.as_str()] {
        let r = run(&["--from", from, "8080", "--probe"]);
        assert_eq!(r["diagnosis"]["ok"], true, "{from}: {r:#}");
        assert_eq!(r["probe"]["ok"], true, "{from}: {r:#}");
        assert!(
            hop(&r, "receiver")["evidence"][0]
                .as_str()
                .unwrap()
                .contains("DOCKER"),
            "{r:#}"
        );
        assert_eq!(r["destination"]["netns"], in_web.as_str(), "{r:#}");
        assert!(hop(&r, "service")["summary"]
            .as_str()
            .unwrap()
            .contains("httpd"));
    }
    let r = run(&[&in_web, "--probe"]);
    assert_eq!(r["packet"]["dport"], 8080, "{r:#}");
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    // Docker's user chain: a DROP there breaks the port for outside clients only.
    let in_ns = |argv: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", &d.ns.name];
        v.extend_from_slice(argv);
        sh(&v);
    };
    in_ns(&[
        "iptables",
        "-I",
        "DOCKER-USER",
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DROP",
    ]);
    let r = run(&["--from", "outside", "8080", "--probe"]);
    assert_eq!(fault(&r), "firewall_drop", "{r:#}");
    assert!(r["diagnosis"]["line"]
        .as_str()
        .unwrap()
        .contains("DOCKER-USER"));
    assert_eq!(r["probe"]["ok"], false);
    let argv: Vec<String> = r["diagnosis"]["fix"]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    in_ns(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let r = run(&["--from", "outside", "8080", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
}

// ---------------------------------------------------------------------------------------------
// A lab built by `nettool setup --isolated`: every fault of the issue, one at a time.
// ---------------------------------------------------------------------------------------------

const LAB_FILE: &str = r#"[lab]
name = "doctor"

[[network]]
name = "front"
subnet = "10.89.0.0/24"

[[container]]
name = "web"
network = "front"
address = "10.89.0.2"
run = "nettool serve http 80"
ports = ["8080:80"]

[[container]]
name = "idle"
network = "front"
address = "10.89.0.3"
ports = ["8081:80"]

[[container]]
name = "client"
network = "front"
address = "10.89.0.4"
"#;

/// `nettool setup LAB_FILE --isolated --name nt-test-... --no-userland-proxy --json`, torn
/// down on drop. Its containers are named `ROLE-LAB` (`web-nt-test-dok-PID-N`), not the
/// file's bare roles: a daemon's container (a machine-wide Podman one) named `web` would be
/// what `container:web` finds before a lab's.
struct SetupLab {
    name: String,
    state: Value,
    fixes: Vec<ChildGuard>,
    file: std::path::PathBuf,
}

impl SetupLab {
    fn new(tag: &str) -> SetupLab {
        Self::with(tag, &["--no-userland-proxy"])
    }

    /// With these extra `setup` arguments (e.g. `--backend nftables`).
    fn with(tag: &str, extra: &[&str]) -> SetupLab {
        let name = unique(tag);
        let file = std::env::temp_dir().join(format!("{name}.toml"));
        let mut text = LAB_FILE.to_string();
        for role in ["web", "idle", "client"] {
            text = text.replace(
                &format!("name = \"{role}\""),
                &format!("name = \"{role}-{name}\""),
            );
        }
        std::fs::write(&file, text).unwrap();
        let mut args = vec![
            "setup",
            file.to_str().unwrap(),
            "--isolated",
            "--name",
            &name,
            "--json",
        ];
        args.extend_from_slice(extra);
        let state = nettool_json(&args);
        let lab = SetupLab {
            name,
            state,
            fixes: Vec::new(),
            file,
        };
        // The lab daemon starts web's service: wait until doctor sees the path clear.
        wait_for("the lab's web service", 10, || {
            lab.doctor(&["8080"])["diagnosis"]["ok"] == true
        });
        lab
    }

    fn host(&self) -> &str {
        self.state["host_netns"].as_str().unwrap()
    }

    /// The name of the container of LAB_FILE's `role` (web, idle, client).
    fn named(&self, role: &str) -> String {
        format!("{role}-{}", self.name)
    }

    fn container(&self, role: &str) -> &Value {
        let name = self.named(role);
        self.state["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap()
    }

    /// The namespace of the container of `role`.
    fn ns(&self, role: &str) -> String {
        self.container(role)["netns"].as_str().unwrap().to_string()
    }

    /// The host-side veth of the container of `role`.
    fn host_veth(&self, role: &str) -> String {
        self.container(role)["networks"][0]["host_veth"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn bridge(&self) -> String {
        self.state["networks"][0]["bridge"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn in_host(&self, argv: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", self.host()];
        v.extend_from_slice(argv);
        sh(&v);
    }

    fn sysctl(&self, kv: &str) {
        self.in_host(&["sysctl", "-qw", kv]);
    }
}

impl Subject for SetupLab {
    fn doctor(&self, args: &[&str]) -> Value {
        doctor_json(self.host(), args)
    }

    fn apply_fix(&mut self, report: &Value) {
        let host = self.host().to_string();
        if let Some(c) = run_fix(&host, report) {
            self.fixes.push(c);
        }
    }
}

impl Drop for SetupLab {
    fn drop(&mut self) {
        self.fixes.clear();
        let _ = nettool(&["teardown", &self.name]);
        let _ = std::fs::remove_file(&self.file);
    }
}

#[test]
fn lab_healthy_gets_an_all_clear() {
    let lab = SetupLab::new("dok");
    let client = format!("container:{}", lab.ns("client"));
    for from in ["localhost", "host", "outside", client.as_str()] {
        let r = lab.doctor(&["--from", from, "8080", "--probe"]);
        assert_eq!(r["diagnosis"]["ok"], true, "{from}: {r:#}");
        assert_eq!(r["probe"]["ok"], true, "{from}: {r:#}");
        assert!(r["diagnosis"]["line"]
            .as_str()
            .unwrap()
            .starts_with("all clear"));
        assert_eq!(r["destination"]["addr"], "10.89.0.2");
        assert_eq!(r["destination"]["port"], 80);
        assert_eq!(r["destination"]["netns"], lab.ns("web").as_str());
        assert!(
            hop(&r, "veth")["summary"]
                .as_str()
                .unwrap()
                .contains(&lab.host_veth("web")),
            "{r:#}"
        );
        assert!(
            hop(&r, "service")["summary"]
                .as_str()
                .unwrap()
                .contains("nettool"),
            "{r:#}"
        );
    }
    // The lab's containers by their lab names.
    let r = lab.doctor(&[&format!("container:{}", lab.named("web")), "--probe"]);
    assert_eq!(r["packet"]["dport"], 8080, "{r:#}");
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    let r = lab.doctor(&[
        "--from",
        &format!("container:{}", lab.named("client")),
        "8080",
    ]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(hop(&r, "br_netfilter")["verdict"], "ok", "{r:#}");
    // The text report names every hop and ends with the verdict.
    let text = nettool_ok(&["doctor", "--netns", lab.host(), "8080", "--from", "outside"]);
    for h in [
        "who receives it",
        "ip_forward",
        "firewall",
        "route",
        "bridge",
        "veth",
        "mtu",
        "service",
    ] {
        assert!(text.contains(h), "{h}: {text}");
    }
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("all clear"),
        "{text}"
    );
}

#[test]
fn lab_service_not_listening() {
    let mut lab = SetupLab::new("dnl");
    let r = break_fix_probe(&mut lab, &["8081"], "not_listening");
    assert_eq!(r["diagnosis"]["fix"]["background"], true);
    assert!(r["diagnosis"]["line"]
        .as_str()
        .unwrap()
        .contains(&lab.ns("idle")));
}

#[test]
fn lab_veth_down() {
    let mut lab = SetupLab::new("dvd");
    let veth = lab.host_veth("web");
    lab.in_host(&["ip", "link", "set", &veth, "down"]);
    let r = break_fix_probe(&mut lab, &["8080"], "veth_down");
    assert_eq!(r["diagnosis"]["hop"], "veth");
    assert!(r["diagnosis"]["line"].as_str().unwrap().contains(&veth));
}

#[test]
fn lab_ip_forward_off() {
    let mut lab = SetupLab::new("dfw");
    lab.sysctl("net.ipv4.ip_forward=0");
    let r = break_fix_probe(&mut lab, &["--from", "outside", "8080"], "ip_forward_off");
    assert_eq!(
        r["diagnosis"]["fix"]["argv"],
        serde_json::json!(["sysctl", "-w", "net.ipv4.ip_forward=1"])
    );
    // From localhost nothing is forwarded: the same lab works.
    lab.sysctl("net.ipv4.ip_forward=0");
    let r = lab.doctor(&["8080", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
}

#[test]
fn lab_forward_policy_drop_with_no_accept_rule() {
    let mut lab = SetupLab::new("dpd");
    // The lab accepts published ports in its filter chain NETTOOL: empty it, policy DROP.
    lab.in_host(&["iptables", "-F", "NETTOOL"]);
    lab.in_host(&["iptables", "-P", "FORWARD", "DROP"]);
    let r = break_fix_probe(
        &mut lab,
        &["--from", "outside", "8080"],
        "forward_policy_drop",
    );
    assert_eq!(r["diagnosis"]["hop"], "firewall");
    // The fix appends: the user chain still comes first.
    let rules = sh(&[
        "ip",
        "netns",
        "exec",
        lab.host(),
        "iptables",
        "-S",
        "FORWARD",
    ]);
    let lines: Vec<&str> = rules.lines().collect();
    assert_eq!(lines[1], "-A FORWARD -j NETTOOL-USER", "{rules}");
}

#[test]
fn lab_drop_rule_in_the_user_chain() {
    let mut lab = SetupLab::new("dud");
    let drop = [
        "iptables",
        "-I",
        "NETTOOL-USER",
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DROP",
    ];
    lab.in_host(&drop);
    let r = break_fix_probe(&mut lab, &["--from", "outside", "8080"], "firewall_drop");
    let line = r["diagnosis"]["line"].as_str().unwrap();
    assert!(line.contains("NETTOOL-USER"), "{line}");
    assert_eq!(r["diagnosis"]["fix"]["argv"][1], "-D");
    // From localhost nothing is forwarded: the same rule does not matter there.
    lab.in_host(&drop);
    let r = lab.doctor(&["8080", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
}

#[test]
fn lab_wrong_port_in_the_dnat() {
    let mut lab = SetupLab::new("dwp");
    lab.in_host(&[
        "iptables",
        "-t",
        "nat",
        "-R",
        "NETTOOL",
        "1",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "8080",
        "-j",
        "DNAT",
        "--to-destination",
        "10.89.0.2:81",
    ]);
    let r = break_fix_probe(&mut lab, &["8080"], "dnat_wrong_port");
    assert!(r["diagnosis"]["line"].as_str().unwrap().contains("81"));
}

#[test]
fn lab_route_localnet_off_without_userland_proxy() {
    let mut lab = SetupLab::new("drl");
    let br = lab.bridge();
    lab.sysctl(&format!("net.ipv4.conf.{br}.route_localnet=0"));
    let r = break_fix_probe(
        &mut lab,
        &["--from", "localhost", "8080"],
        "route_localnet_off",
    );
    assert!(r["diagnosis"]["fix"]["argv"][2]
        .as_str()
        .unwrap()
        .contains(&br));
}

#[test]
fn lab_mtu_mismatch() {
    let mut lab = SetupLab::new("dmt");
    let web = lab.ns("web");
    sh(&["ip", "-n", &web, "link", "set", "eth0", "mtu", "9000"]);
    let r = break_fix_probe(&mut lab, &["8080"], "mtu_mismatch");
    assert!(r["diagnosis"]["line"].as_str().unwrap().contains("9000"));
}

#[test]
fn lab_br_netfilter_off_for_a_neighbour_on_the_same_bridge() {
    let mut lab = SetupLab::new("dbn");
    lab.sysctl("net.bridge.bridge-nf-call-iptables=0");
    let client = format!("container:{}", lab.named("client"));
    let r = break_fix_probe(&mut lab, &["--from", &client, "8080"], "br_netfilter");
    assert_eq!(r["packet"]["dst"], "10.89.0.1", "{r:#}");
}

#[test]
fn lab_nftables_backend_drop_in_the_user_chain() {
    let mut lab = SetupLab::with("dnf", &["--no-userland-proxy", "--backend", "nftables"]);
    let r = lab.doctor(&["--from", "outside", "8080", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert!(
        hop(&r, "receiver")["evidence"][0]
            .as_str()
            .unwrap()
            .contains("nft"),
        "{r:#}"
    );
    let table = format!("nettool_{}", lab.name.replace('-', "_"));
    lab.in_host(&[
        "nft",
        "insert",
        "rule",
        "ip",
        &table,
        "nettool-user",
        "tcp",
        "dport",
        "80",
        "drop",
    ]);
    let r = break_fix_probe(&mut lab, &["--from", "outside", "8080"], "firewall_drop");
    assert_eq!(r["diagnosis"]["fix"]["argv"][0], "nft", "{r:#}");
    assert!(r["diagnosis"]["line"]
        .as_str()
        .unwrap()
        .contains("nettool-user"));
}

#[test]
fn lab_userland_proxy_gone() {
    let mut lab = SetupLab::with("dpx", &[]);
    // Userland-proxy mode: localhost is not DNATed; the proxy receives it and connects on.
    let r = lab.doctor(&["8080", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["destination"]["via"], "proxy", "{r:#}");
    assert_eq!(r["destination"]["netns"], lab.ns("web").as_str(), "{r:#}");
    let pid = lab.state["proxy_pids"][0].as_u64().unwrap().to_string();
    sh(&["kill", &pid]);
    wait_for("the proxy to exit", 10, || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    let r = break_fix_probe(&mut lab, &["8080"], "no_receiver");
    assert!(
        r["diagnosis"]["fix"]["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "tcp:127.0.0.1:8080=10.89.0.2:80"),
        "{r:#}"
    );
}

#[test]
fn strict_rp_filter_with_asymmetric_routing() {
    let mut lab = Lab::new();
    // A second link to the client; the host routes back to the client through it.
    veth("ext1", &lab.host, "eth1", &lab.outside);
    lab.host.ip(&["addr", "add", "192.0.3.1/24", "dev", "ext1"]);
    lab.outside
        .ip(&["addr", "add", "192.0.3.2/24", "dev", "eth1"]);
    lab.host.ip(&[
        "route",
        "add",
        "192.0.2.2/32",
        "via",
        "192.0.3.2",
        "dev",
        "ext1",
    ]);
    lab.sysctl("net.ipv4.conf.all.rp_filter=1");
    lab.sysctl("net.ipv4.conf.ext0.rp_filter=1");
    let from = lab.outside_source();
    let r = break_fix_probe(&mut lab, &["--from", &from, "8080"], "rp_filter");
    let line = r["diagnosis"]["line"].as_str().unwrap();
    assert!(line.contains("ext0") && line.contains("ext1"), "{line}");
}

#[test]
fn lab_container_without_a_route_back() {
    let mut lab = SetupLab::new("drb");
    let web = lab.ns("web");
    sh(&["ip", "-n", &web, "route", "del", "default"]);
    // From localhost the answers go to the bridge address (MASQUERADE): still fine.
    assert_eq!(lab.doctor(&["8080"])["diagnosis"]["ok"], true);
    let r = break_fix_probe(&mut lab, &["--from", "outside", "8080"], "no_return_route");
    assert_eq!(r["diagnosis"]["hop"], "return");
}

#[test]
fn a_saved_snapshot_replays_to_the_same_report_without_root_or_live_reads() {
    let lab = Lab::new();
    lab.sysctl("net.ipv4.ip_forward=0");
    let file = std::env::temp_dir().join(format!("{}.json", unique("snap")));
    let from = lab.outside_source();
    let live = lab.doctor(&[
        "--from",
        &from,
        "8080",
        "--probe",
        "--save-snapshot",
        file.to_str().unwrap(),
    ]);
    assert_eq!(fault(&live), "ip_forward_off", "{live:#}");
    // Replayed as nobody: no root, so nothing can be read live; the verdict is the same.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_nettool"))
        .args(["doctor", "--json", "--snapshot", file.to_str().unwrap()])
        .output()
        .unwrap();
    let replayed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert_eq!(out.status.code(), Some(1));
    for key in [
        "diagnosis",
        "hops",
        "packet",
        "destination",
        "probe",
        "from",
    ] {
        assert_eq!(replayed[key], live[key], "{key} differs");
    }
    // The snapshot's cost: every namespace entered once (plus one per tool run in the host).
    let reads = &live["reads"];
    let ns = reads["namespaces"].as_u64().unwrap();
    assert!(ns >= 4, "{reads}");
    assert_eq!(
        reads["namespace_entries"].as_u64().unwrap(),
        ns + reads["tool_runs"].as_u64().unwrap(),
        "{reads}"
    );
    assert!(reads["proc_scans"].as_u64().unwrap() <= 2, "{reads}");
    // A bad file is an error that names it.
    let out = nettool(&["doctor", "--snapshot", "/nonexistent/snap.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("/nonexistent/snap.json"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_file(&file);
}

// ---------------------------------------------------------------------------------------------
// A real dockerd (Docker's defaults: userland proxy on) in a host namespace with an uplink to
// an "outside" namespace: the faults users bring, broken the way users break them.
// ---------------------------------------------------------------------------------------------

/// dockerd in `d.ns` (uplink up0 192.0.2.1/24, default route via the outside namespace at
/// 192.0.2.2), image nt-busybox; fixes that keep running are kept until drop.
struct DockerHost {
    d: common::docker::Dockerd,
    outside: TestNs,
    fixes: Vec<ChildGuard>,
}

impl DockerHost {
    fn new(tag: &str) -> DockerHost {
        Self::new_with(tag, &["--userland-proxy=true"], false)
    }

    /// A dual-stack Docker host: dockerd with IPv6 NAT (`--ipv6 --fixed-cidr-v6 fd00:d0c::/64
    /// --ip6tables`; Docker 20.10 wants `--experimental` for it) and the uplink with
    /// 2001:db8:1::1/64 (outside at 2001:db8:1::2).
    fn dual(tag: &str) -> DockerHost {
        let h = Self::new_with(
            tag,
            &[
                "--userland-proxy=true",
                "--ipv6",
                "--fixed-cidr-v6",
                "fd00:d0c::/64",
                "--ip6tables",
                "--experimental",
            ],
            true,
        );
        uplink6(&h.d.ns, &h.outside);
        h.d.ns
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:1::2"]);
        h
    }

    fn new_with(tag: &str, dockerd_args: &[&str], _dual: bool) -> DockerHost {
        let d = common::docker::Dockerd::start_with(tag, dockerd_args);
        let outside = TestNs::new(&format!("{tag}o"));
        uplink(&d.ns, &outside);
        d.import_busybox("nt-busybox");
        DockerHost {
            d,
            outside,
            fixes: Vec::new(),
        }
    }

    fn docker(&self, args: &[&str]) -> String {
        self.d.docker(args)
    }

    /// `docker run -d --name UNIQUE ARGS... nt-busybox CMD...`, with nettool and the host's
    /// libraries mounted read-only (so `/nettool serve ...` runs inside the container);
    /// returns the container's name. Unique (`nt-test-TAG-PID-N`): a Podman container of the
    /// machine under the same name would make `container:NAME` ambiguous.
    fn run(&self, tag: &str, args: &[&str], cmd: &[&str]) -> String {
        let name = unique(tag);
        let exe = format!("{}:/nettool:ro", env!("CARGO_BIN_EXE_nettool"));
        let mut v = vec![
            "run",
            "-d",
            "--name",
            &name,
            "-v",
            "/usr:/usr:ro",
            "-v",
            "/lib64:/lib64:ro",
            "-v",
            "/usr/lib:/lib:ro",
            "-v",
            &exe,
        ];
        v.extend_from_slice(args);
        v.push("nt-busybox");
        v.extend_from_slice(cmd);
        self.docker(&v);
        name
    }

    fn outside_from(&self) -> String {
        format!("outside:{}", self.outside.name)
    }

    /// Record this host as captures/doctor/NAME (with NETTOOL_RECORD_CAPTURES=1).
    fn record(&self, name: &str, how: &str, args: &[&str]) {
        record_capture(
            &[("DOCKER_HOST", self.d.host())],
            &self.d.ns.name,
            name,
            how,
            args,
        );
    }

    /// `curl` from the outside namespace to the host's uplink address: the HTTP status.
    fn curl_outside(&self, port: u16) -> String {
        self.curl_outside_at("192.0.2.1", port)
    }

    /// The same to the host's IPv6 uplink address (a dual host).
    fn curl_outside6(&self, port: u16) -> String {
        self.curl_outside_at("[2001:db8:1::1]", port)
    }

    fn curl_outside_at(&self, host: &str, port: u16) -> String {
        http_code(&self.outside, &format!("http://{host}:{port}/"))
    }

    /// Wait until `doctor ARGS` is all clear (a container just started).
    fn wait_clear(&self, args: &[&str]) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let last = self.doctor(args);
            if last["diagnosis"]["ok"] == true {
                return last;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "doctor {args:?} never all clear: {last:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
}

impl Subject for DockerHost {
    fn doctor(&self, args: &[&str]) -> Value {
        let mut v = vec!["doctor", "--netns", &self.d.ns.name, "--json"];
        v.extend_from_slice(args);
        let out = Command::new(env!("CARGO_BIN_EXE_nettool"))
            .args(&v)
            .env("DOCKER_HOST", self.d.host())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let r: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{v:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        let ok = r["diagnosis"]["ok"].as_bool().unwrap();
        assert_eq!(out.status.code(), Some(if ok { 0 } else { 1 }), "{r:#}");
        r
    }

    /// The printed fix, as printed (argv in the host namespace, DOCKER_HOST as the user has it).
    fn apply_fix(&mut self, report: &Value) {
        let fix = &report["diagnosis"]["fix"];
        assert!(fix.is_object(), "no fix in {report:#}");
        let argv: Vec<&str> = fix["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.d.ns.name])
            .args(&argv)
            .env("DOCKER_HOST", self.d.host());
        if fix["background"] == true {
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            self.fixes.push(ChildGuard(c.spawn().unwrap()));
        } else {
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "fix {argv:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Break, check the named fault, run the printed fix, check doctor, the probe and curl.
fn docker_break_fix(h: &mut DockerHost, args: &[&str], expect: &str, port: u16) -> Value {
    let broken = h.doctor(args);
    assert_eq!(fault(&broken), expect, "{broken:#}");
    let fails: Vec<&Value> = broken["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["verdict"] == "fail")
        .collect();
    assert_eq!(fails.len(), 1, "one cause, one FAIL: {broken:#}");
    h.apply_fix(&broken);
    let mut probe = args.to_vec();
    probe.push("--probe");
    let fixed = h.wait_clear(&probe);
    assert_eq!(fixed["probe"]["ok"], true, "{fixed:#}");
    let code = h.curl_outside(port);
    assert!(
        code.starts_with('2') || code.starts_with('4'),
        "curl got {code:?}"
    );
    broken
}

#[test]
fn docker_healthy_host_is_all_clear_tcp_and_udp() {
    let h = DockerHost::new("dk-ok");
    h.run(
        "web",
        &["-p", "8080:80"],
        &["/nettool", "serve", "http", "80"],
    );
    let dns = h.run(
        "dns",
        &["-p", "5353:53/udp"],
        &["/nettool", "serve", "udp-echo", "53"],
    );
    let web = h.wait_clear(&["8080"]);
    assert_eq!(hop(&web, "engine")["verdict"], "ok", "{web:#}");
    let outside = h.outside_from();
    let from_dns = format!("container:{dns}");
    for from in ["localhost", "host", outside.as_str(), from_dns.as_str()] {
        let r = h.doctor(&["--from", from, "8080", "--probe"]);
        assert_eq!(r["diagnosis"]["ok"], true, "{from}: {r:#}");
        assert_eq!(r["probe"]["ok"], true, "{from}: {r:#}");
    }
    // UDP through docker-proxy: localhost clients are answered by the proxy's socket; that
    // conntrack entry is right, not stale (it was a false FAIL with a fix deleting live flows).
    wait_for("udp echo", 20, || {
        h.doctor(&["udp:5353", "--probe"])["probe"]["ok"] == true
    });
    for from in ["localhost", outside.as_str()] {
        let r = h.doctor(&["--from", from, "udp:5353", "--probe"]);
        assert_eq!(r["diagnosis"]["ok"], true, "{from}: {r:#}");
        assert_eq!(hop(&r, "conntrack")["verdict"], "ok", "{r:#}");
    }
    let mut c = Command::new("ip")
        .args([
            "netns",
            "exec",
            &h.d.ns.name,
            "socat",
            "-t1",
            "-",
            "UDP:127.0.0.1:5353",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"ping\n").unwrap();
    let out = c.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ping\n");
    let r = h.doctor(&["udp:5353"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert!(
        hop(&r, "conntrack")["summary"]
            .as_str()
            .unwrap()
            .contains("none stale"),
        "{r:#}"
    );
}

#[test]
fn docker_container_exited_paused_created() {
    let mut h = DockerHost::new("dk-st");
    let web = h.run(
        "web",
        &["-p", "8080:80"],
        &["/nettool", "serve", "http", "80"],
    );
    h.wait_clear(&["8080"]);
    let outside = h.outside_from();
    h.docker(&["stop", "-t", "1", &web]);
    let r = docker_break_fix(
        &mut h,
        &["--from", &outside, "8080"],
        "container_not_running",
        8080,
    );
    assert!(
        r["diagnosis"]["line"].as_str().unwrap().contains("exited"),
        "{r:#}"
    );
    assert_eq!(
        r["diagnosis"]["fix"]["command"],
        format!("docker start {web}").as_str(),
        "{r:#}"
    );
    // `doctor container:NAME` on a stopped container says so in words (not "not a namespace").
    h.docker(&["stop", "-t", "1", &web]);
    let r = h.doctor(&[&format!("container:{web}")]);
    assert_eq!(fault(&r), "container_not_running", "{r:#}");
    assert_eq!(r["packet"]["dport"], 8080, "{r:#}");
    h.docker(&["start", &web]);
    h.wait_clear(&["8080"]);
    h.docker(&["pause", &web]);
    let r = docker_break_fix(
        &mut h,
        &["--from", &outside, "8080"],
        "container_not_running",
        8080,
    );
    assert_eq!(
        r["diagnosis"]["fix"]["command"],
        format!("docker unpause {web}").as_str(),
        "{r:#}"
    );
    let late = unique("late");
    h.docker(&[
        "create",
        "--name",
        &late,
        "-p",
        "8081:80",
        "nt-busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/",
    ]);
    let r = docker_break_fix(
        &mut h,
        &["--from", &outside, "8081"],
        "container_not_running",
        8081,
    );
    assert!(
        r["diagnosis"]["line"].as_str().unwrap().contains("created"),
        "{r:#}"
    );
    // It never ran: the line must not say it starts "again".
    assert!(
        r["diagnosis"]["line"]
            .as_str()
            .unwrap()
            .contains("starts it for the first time"),
        "{r:#}"
    );
}

#[test]
fn docker_disconnected_and_dnat_deleted_behind_the_userland_proxy() {
    let mut h = DockerHost::new("dk-net");
    let web = h.run(
        "web",
        &["-p", "8080:80"],
        &["/nettool", "serve", "http", "80"],
    );
    h.wait_clear(&["8080"]);
    let outside = h.outside_from();
    h.docker(&["network", "disconnect", "bridge", &web]);
    let r = docker_break_fix(
        &mut h,
        &["--from", &outside, "8080"],
        "not_on_network",
        8080,
    );
    assert_eq!(
        r["diagnosis"]["fix"]["command"],
        format!("docker network connect bridge {web}").as_str()
    );
    // Docker's DNAT rule deleted: docker-proxy silently takes over (today's verdict was
    // "all clear"); the container sees the bridge address instead of its clients.
    let save = Command::new("ip")
        .args([
            "netns",
            "exec",
            &h.d.ns.name,
            "iptables",
            "-t",
            "nat",
            "-S",
            "DOCKER",
        ])
        .output()
        .unwrap();
    let rule = String::from_utf8_lossy(&save.stdout)
        .lines()
        .find(|l| l.contains("--dport 8080 "))
        .expect("Docker's DNAT rule for 8080")
        .replacen("-A", "-D", 1);
    let mut del = vec!["ip", "netns", "exec", &h.d.ns.name, "iptables", "-t", "nat"];
    del.extend(rule.split_whitespace());
    sh(&del);
    assert!(
        h.curl_outside(8080).starts_with('2'),
        "the proxy still answers"
    );
    let r = docker_break_fix(&mut h, &["--from", &outside, "8080"], "dnat_missing", 8080);
    let line = r["diagnosis"]["line"].as_str().unwrap();
    assert!(
        line.contains("docker-proxy") && line.contains("172.17.0.1"),
        "{r:#}"
    );
    assert_eq!(
        r["diagnosis"]["fix"]["command"],
        format!("docker restart {web}").as_str()
    );
    assert_eq!(r["probe"], Value::Null);
}

#[test]
fn docker_service_on_loopback_port_on_loopback_wrong_port_and_forwarding_off() {
    let mut h = DockerHost::new("dk-svc");
    let outside = h.outside_from();
    // The service listens on the container's 127.0.0.1 only.
    h.run(
        "lo",
        &["-p", "8081:80"],
        &["/nettool", "serve", "http", "80", "--bind", "127.0.0.1"],
    );
    wait_for("lo listening", 20, || {
        fault(&h.doctor(&["--from", &outside, "8081"])) == "service_on_loopback"
    });
    let r = docker_break_fix(
        &mut h,
        &["--from", &outside, "8081"],
        "service_on_loopback",
        8081,
    );
    assert!(
        r["diagnosis"]["line"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:80"),
        "{r:#}"
    );
    // Published on 127.0.0.1 only, tried from another machine.
    h.run(
        "lon",
        &["-p", "127.0.0.1:8084:80"],
        &["/nettool", "serve", "http", "80"],
    );
    h.wait_clear(&["8084"]);
    let r = docker_break_fix(
        &mut h,
        &["--from", &outside, "8084"],
        "published_elsewhere",
        8084,
    );
    assert!(
        r["diagnosis"]["line"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1 only"),
        "{r:#}"
    );
    // Forwarding off: one FAIL (ip_forward), not a second one blaming Docker's DNAT rule.
    h.run(
        "web",
        &["-p", "8080:80"],
        &["/nettool", "serve", "http", "80"],
    );
    h.wait_clear(&["8080"]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &h.d.ns.name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);
    docker_break_fix(
        &mut h,
        &["--from", &outside, "8080"],
        "ip_forward_off",
        8080,
    );
    // The wrong container port: published to 8000, the service listens on 80.
    h.run(
        "wp",
        &["-p", "8085:8000"],
        &["/nettool", "serve", "http", "80"],
    );
    wait_for("wp listening", 20, || {
        fault(&h.doctor(&["--from", &outside, "8085"])) == "dnat_wrong_port"
    });
    docker_break_fix(
        &mut h,
        &["--from", &outside, "8085"],
        "dnat_wrong_port",
        8085,
    );
}

#[test]
fn docker_without_userland_proxy_dnat_deleted_is_named_and_restart_restores_it() {
    // dockerd --userland-proxy=false holds the port itself (a reservation that never
    // accepts): with Docker's DNAT rule gone connections hang (before: "all clear").
    let mut h = DockerHost::new_with("dk-np", &["--userland-proxy=false"], false);
    let outside = h.outside_from();
    let web = h.run(
        "web",
        &["-p", "8080:80"],
        &["/nettool", "serve", "http", "80"],
    );
    h.wait_clear(&["--from", &outside, "8080"]);
    let save = Command::new("ip")
        .args(["netns", "exec", &h.d.ns.name])
        .args(["iptables", "-t", "nat", "-S", "DOCKER"])
        .output()
        .unwrap();
    let rule = String::from_utf8_lossy(&save.stdout)
        .lines()
        .find(|l| l.contains("--dport 8080 "))
        .expect("Docker's DNAT rule for 8080")
        .replacen("-A", "-D", 1);
    let mut del = vec!["ip", "netns", "exec", &h.d.ns.name, "iptables", "-t", "nat"];
    del.extend(rule.split_whitespace());
    sh(&del);
    assert!(!h.curl_outside(8080).starts_with('2'), "broken");
    h.record(
        "docker-no-proxy-dnat-deleted",
        "dockerd --userland-proxy=false, web (nettool serve http) -p 8080:80, Docker's DNAT rule for 8080 deleted (iptables -t nat -D DOCKER ...); dockerd holds the port",
        &["--from", &outside, "8080"],
    );
    let r = docker_break_fix(&mut h, &["--from", &outside, "8080"], "dnat_missing", 8080);
    let line = r["diagnosis"]["line"].as_str().unwrap();
    assert!(
        line.starts_with(&format!(
            "Docker's DNAT rule for tcp/8080 is missing (docker container {web}): dockerd"
        )),
        "{r:#}"
    );
    assert_eq!(
        r["diagnosis"]["fix"]["command"],
        format!("docker restart {web}").as_str()
    );
}

/// An 8 KB HTTP body (`serve http --text`): at mtu 9000 the response is one full-size
/// segment, never a GSO packet, so a 1500 veth drops it (and each retransmission) every time.
/// A 100 KB body stalls only when its tail happens to go out as a lone segment (measured: 1
/// run in 8), so it cannot prove the break.
fn big_body() -> String {
    "x".repeat(8 * 1024)
}

/// The bytes of `url`'s body that reached curl in `ns` within 5 s.
fn curl_size(ns: &str, url: &str) -> usize {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-g", "-s", "-m", "5"])
        .args(["-o", "/dev/null", "-w", "%{size_download}", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A jumbo-frame LAN between the host and the outside (both ends of the uplink at mtu 9000):
/// outside clients then offer an MSS that only a 9000-byte path carries.
fn jumbo_uplink(host: &TestNs, outside: &TestNs) {
    host.ip(&["link", "set", "up0", "mtu", "9000"]);
    outside.ip(&["link", "set", "eth0", "mtu", "9000"]);
}

/// Poll `f` for up to `secs` seconds: true once it holds.
fn wait_for_ok(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// The report's fix line, run as printed by a shell on the machine.
fn run_printed(r: &Value) {
    let command = r["diagnosis"]["fix"]["command"]
        .as_str()
        .unwrap_or_else(|| panic!("no fix printed: {r:#}"));
    assert_ne!(r["diagnosis"]["fix"]["background"], true, "{r:#}");
    sh(&["sh", "-c", command]);
}

/// MTU on a real dockerd, both ways, with a jumbo-frame uplink (without it outside clients
/// offer an MSS of 1460 and nothing breaks). The container's eth0 at 9000 while docker0 and
/// its veth are 1500: an 8 KB response never arrives (its full-size segment dies at the veth); doctor names it and its fix, run as printed, sets the container's end back.
/// docker0 and the host end raised to 9000 while the container stays at 1500: the fix raises
/// the container's end and leaves docker0 at 9000 (it never lowers a bridge others use).
#[test]
fn docker_mtu_container_above_the_bridge_then_bridge_above_the_container() {
    let h = DockerHost::new("dk-mtu");
    jumbo_uplink(&h.d.ns, &h.outside);
    let body = big_body();
    let web = h.run(
        "web",
        &["-p", "8080:80"],
        &["/nettool", "serve", "http", "80", "--text", &body],
    );
    let outside = h.outside_from();
    let args = ["--from", outside.as_str(), "8080"];
    h.wait_clear(&args);
    let url = "http://192.0.2.1:8080/";
    assert_eq!(curl_size(&h.outside.name, url), body.len(), "healthy");
    let pid = h.docker(&["inspect", "-f", "{{.State.Pid}}", &web]);
    let in_web = format!("--net=/proc/{}/ns/net", pid.trim());
    sh(&[
        "nsenter", &in_web, "ip", "link", "set", "eth0", "mtu", "9000",
    ]);
    assert!(
        curl_size(&h.outside.name, url) < body.len(),
        "the container at 9000 behind a 1500 veth loses full-size segments"
    );
    h.record(
        "docker-mtu-container-9000",
        "web (nettool serve http, 8 KB body) -p 8080:80, its eth0 set to mtu 9000 (nsenter --net=/proc/PID/ns/net ip link set eth0 mtu 9000) while docker0 and the host end are 1500; uplink and outside at mtu 9000",
        &args,
    );
    let r = h.doctor(&args);
    assert_eq!(fault(&r), "mtu_mismatch", "{r:#}");
    let fails = r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["verdict"] == "fail")
        .count();
    assert_eq!(fails, 1, "{r:#}");
    let command = r["diagnosis"]["fix"]["command"].as_str().unwrap();
    assert!(
        command.contains("eth0 mtu 1500") && !command.contains("docker0"),
        "{r:#}"
    );
    run_printed(&r);
    let fixed = h.wait_clear(&["--from", &outside, "8080", "--probe"]);
    assert_eq!(fixed["probe"]["ok"], true, "{fixed:#}");
    assert_eq!(curl_size(&h.outside.name, url), body.len(), "after the fix");

    // The other way: docker0 and web's host end raised to 9000, the container left at 1500.
    let veth =
        h.d.ns
            .ip(&["-o", "link", "show", "master", "docker0"])
            .split(": ")
            .nth(1)
            .and_then(|n| n.split('@').next())
            .expect("web's host end on docker0")
            .to_string();
    h.d.ns.ip(&["link", "set", "docker0", "mtu", "9000"]);
    h.d.ns.ip(&["link", "set", &veth, "mtu", "9000"]);
    h.record(
        "docker-mtu-bridge-9000",
        "the same host, docker0 and web's host end set to mtu 9000 (ip link set docker0 mtu 9000; ip link set VETH mtu 9000), web's eth0 left at 1500",
        &args,
    );
    let r = h.doctor(&args);
    assert_eq!(fault(&r), "mtu_mismatch", "{r:#}");
    let command = r["diagnosis"]["fix"]["command"].as_str().unwrap();
    assert!(
        command.contains("eth0 mtu 9000") && !command.contains(&veth),
        "the container's end is raised, the bridge's side untouched: {r:#}"
    );
    run_printed(&r);
    assert!(
        h.d.ns.ip(&["link", "show", "docker0"]).contains("mtu 9000"),
        "docker0 kept its mtu"
    );
    let fixed = h.wait_clear(&["--from", &outside, "8080", "--probe"]);
    assert_eq!(fixed["probe"]["ok"], true, "{fixed:#}");
    assert_eq!(curl_size(&h.outside.name, url), body.len(), "after the fix");
}

/// The hops of one family.
fn hops_of<'a>(r: &'a Value, family: &str) -> Vec<&'a Value> {
    r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["family"] == family)
        .collect()
}

#[test]
fn docker_dual_stack_port_over_ipv4_and_ipv6() {
    let mut h = DockerHost::dual("dk-v6");
    let outside = h.outside_from();
    // Healthy: the service listens on [::]:80 (both families); the port is published over
    // IPv4 and IPv6 (ip6tables DNAT to the container's fd00:d0c:: address).
    let web = h.run(
        "web",
        &["-p", "8080:80"],
        &["/nettool", "serve", "http", "80", "--bind", "::"],
    );
    h.wait_clear(&["--from", &outside, "8080"]);
    for from in [outside.as_str(), "localhost"] {
        let r = h.doctor(&["--from", from, "8080", "--probe"]);
        assert_eq!(r["diagnosis"]["ok"], true, "{from}: {r:#}");
        assert!(
            r["diagnosis"]["line"]
                .as_str()
                .unwrap()
                .starts_with("all clear over IPv4 and IPv6"),
            "{from}: {r:#}"
        );
        assert_eq!(r["probe"]["ok"], true, "{from}: {r:#}");
        assert_eq!(r["ipv6"]["probe"]["ok"], true, "{from}: {r:#}");
        assert!(
            r["ipv6"]["probe"]["target"]
                .as_str()
                .unwrap()
                .starts_with('['),
            "{r:#}"
        );
        assert!(!hops_of(&r, "ipv6").is_empty(), "{r:#}");
    }
    // UDP over both families: the probe's datagram comes back over IPv4 and IPv6, and the
    // conntrack entries of one family are not judged against the other's destination.
    h.run(
        "echo",
        &["-p", "5353:53/udp"],
        &["/nettool", "serve", "udp-echo", "53", "--bind", "::"],
    );
    wait_for("udp echo over both families", 20, || {
        h.doctor(&["--from", &outside, "udp:5353", "--probe"])["diagnosis"]["ok"] == true
    });
    let r = h.doctor(&["--from", &outside, "udp:5353", "--probe"]);
    assert_eq!(r["ipv6"]["probe"]["ok"], true, "{r:#}");
    assert!(
        hops_of(&r, "ipv6")
            .iter()
            .any(|x| x["id"] == "conntrack" && x["verdict"] == "ok"),
        "{r:#}"
    );
    // From a throwaway outside client doctor attaches itself: it gets IPv6 too.
    let r = h.doctor(&["--from", "outside", "8080", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["ipv6"]["probe"]["ok"], true, "{r:#}");
    let r = h.doctor(&["--from", &outside, "8080"]);
    let d6 = r["ipv6"]["destination"]["addr"].as_str().unwrap();
    assert!(d6.starts_with("fd00:d0c::"), "{r:#}");
    assert_eq!(r["ipv6"]["destination"]["via"], "dnat", "{r:#}");
    assert!(h.curl_outside6(8080).starts_with('2'));
    h.record(
        "docker-dual-stack-healthy",
        "dual-stack dockerd (--ipv6 --fixed-cidr-v6 fd00:d0c::/64 --ip6tables), web (nettool serve http on [::]:80) -p 8080:80, uplink also 2001:db8:1::1/64",
        &["--from", &outside, "8080", "--probe"],
    );

    // A fault on IPv6 only: Docker's ip6tables DNAT rule for 8080 deleted. docker-proxy on
    // [::]:8080 takes over (curl still gets 200), the container sees the bridge's address.
    let save = Command::new("ip")
        .args(["netns", "exec", &h.d.ns.name])
        .args(["ip6tables", "-t", "nat", "-S", "DOCKER"])
        .output()
        .unwrap();
    let rule = String::from_utf8_lossy(&save.stdout)
        .lines()
        .find(|l| l.contains("--dport 8080 "))
        .expect("Docker's ip6tables DNAT rule for 8080")
        .replacen("-A", "-D", 1);
    let mut del = vec![
        "ip",
        "netns",
        "exec",
        &h.d.ns.name,
        "ip6tables",
        "-t",
        "nat",
    ];
    del.extend(rule.split_whitespace());
    sh(&del);
    assert!(h.curl_outside6(8080).starts_with('2'), "the proxy answers");
    h.record(
        "docker-ipv6-dnat-deleted",
        "dual-stack dockerd, Docker's ip6tables DNAT rule for 8080 deleted (ip6tables -t nat -D DOCKER ...), docker-proxy answers on [::]:8080",
        &["--from", &outside, "8080", "--probe"],
    );
    let r = docker_break_fix(&mut h, &["--from", &outside, "8080"], "dnat_missing", 8080);
    let line = r["diagnosis"]["line"].as_str().unwrap();
    assert!(line.starts_with("over IPv6: Docker's DNAT rule"), "{r:#}");
    assert_eq!(
        r["diagnosis"]["fix"]["command"],
        format!("docker restart {web}").as_str()
    );
    // The engine hop both paths share shows Docker's listing of each family (it showed only
    // 0.0.0.0:8080 while the port was diagnosed over IPv6).
    assert!(
        hop(&r, "engine")["summary"]
            .as_str()
            .unwrap()
            .ends_with("publishes 0.0.0.0:8080->80/tcp and [::]:8080->80/tcp"),
        "{r:#}"
    );
    assert!(
        hops_of(&r, "ipv4").iter().all(|h| h["verdict"] == "ok"),
        "{r:#}"
    );
    let fixed = h.doctor(&["--from", &outside, "8080", "--probe"]);
    assert_eq!(fixed["ipv6"]["probe"]["ok"], true, "{fixed:#}");
    assert_eq!(fixed["ipv6"]["destination"]["via"], "dnat", "{fixed:#}");
    assert!(h.curl_outside6(8080).starts_with('2'));

    // A fault on IPv6 only: the service listens on 0.0.0.0 (IPv4) inside the container.
    h.run(
        "web4",
        &["-p", "8081:80"],
        &["/nettool", "serve", "http", "80"],
    );
    wait_for("web4 listening", 20, || {
        fault(&h.doctor(&["--from", &outside, "8081"])) == "service_ipv4_only"
    });
    assert!(!h.curl_outside6(8081).starts_with('2'), "broken over IPv6");
    h.record(
        "docker-ipv6-service-on-ipv4-only",
        "dual-stack dockerd, web4 (nettool serve http on 0.0.0.0:80, IPv4 only) -p 8081:80",
        &["--from", &outside, "8081", "--probe"],
    );
    let r = docker_break_fix(
        &mut h,
        &["--from", &outside, "8081"],
        "service_ipv4_only",
        8081,
    );
    let line = r["diagnosis"]["line"].as_str().unwrap();
    assert!(
        line.starts_with("over IPv6: ") && line.contains("0.0.0.0:80"),
        "{r:#}"
    );
    let fixed = h.doctor(&["--from", &outside, "8081", "--probe"]);
    assert_eq!(fixed["ipv6"]["probe"]["ok"], true, "{fixed:#}");
    assert!(h.curl_outside6(8081).starts_with('2'));
}

// ---------------------------------------------------------------------------------------------
// Real rootful Podman + netavark (tests/common/podman.rs), names from the default API socket.
// ---------------------------------------------------------------------------------------------

/// A Podman host with an uplink to an outside namespace, a network of its own and web
/// (busybox httpd) published on `port`.
struct PodmanLab {
    /// Background fixes (a relay) started as printed, stopped first on drop.
    fixes: std::cell::RefCell<Vec<ChildGuard>>,
    p: common::podman::PodmanHost,
    outside: TestNs,
    /// The network web is on (the test's own).
    net: String,
    web: String,
    port: u16,
}

impl PodmanLab {
    fn new(tag: &str, port: u16) -> PodmanLab {
        Self::new_with(common::podman::PodmanHost::start(tag), tag, port)
    }

    /// The same for a test that runs `podman network reload --all` (see ReloadLock).
    fn reloading(tag: &str, port: u16) -> PodmanLab {
        Self::new_with(common::podman::PodmanHost::start_reloading(tag), tag, port)
    }

    fn new_with(mut p: common::podman::PodmanHost, tag: &str, port: u16) -> PodmanLab {
        let outside = TestNs::new(&format!("{tag}o"));
        uplink(&p.ns, &outside);
        let net = p.network("dnet", &[]);
        let publish = format!("{port}:80");
        let web = p.run(
            "web",
            &["--network", &net, "-p", &publish],
            &["httpd", "-f", "-p", "80", "-h", "/"],
        );
        PodmanLab {
            fixes: Default::default(),
            p,
            outside,
            net,
            web,
            port,
        }
    }

    /// A dual-stack Podman host: the uplink also 2001:db8:1::1/64 (outside ::2), web on a
    /// `podman network create --ipv6` network (Podman picks an IPv4 and an IPv6 subnet),
    /// busybox httpd on [::]:80 (both families). Its test reloads (see ReloadLock).
    fn dual(tag: &str, port: u16) -> PodmanLab {
        let mut p = common::podman::PodmanHost::start_reloading(tag);
        let outside = TestNs::new(&format!("{tag}o"));
        uplink(&p.ns, &outside);
        uplink6(&p.ns, &outside);
        let net = p.network("dnet6", &["--ipv6"]);
        let publish = format!("{port}:80");
        let web = p.run(
            "web",
            &["--network", &net, "-p", &publish],
            &["httpd", "-f", "-p", "80", "-h", "/"],
        );
        PodmanLab {
            fixes: Default::default(),
            p,
            outside,
            net,
            web,
            port,
        }
    }

    fn curl_outside6(&self) -> String {
        http_code(
            &self.outside,
            &format!("http://[2001:db8:1::1]:{}/", self.port),
        )
    }

    fn record(&self, name: &str, how: &str, args: &[&str]) {
        record_capture(&[], &self.p.ns.name, name, how, args);
    }

    fn outside_from(&self) -> String {
        format!("outside:{}", self.outside.name)
    }

    /// doctor with no engine variable: names come from Podman's default socket.
    fn doctor(&self, args: &[&str]) -> Value {
        let mut v = vec!["doctor", "--netns", &self.p.ns.name, "--json"];
        v.extend_from_slice(args);
        let out = common::podman::nettool_plain(&v);
        let r: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{v:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        let ok = r["diagnosis"]["ok"].as_bool().unwrap();
        assert_eq!(out.status.code(), Some(if ok { 0 } else { 1 }), "{r:#}");
        r
    }

    fn wait_clear(&self, args: &[&str]) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let r = self.doctor(args);
            if r["diagnosis"]["ok"] == true {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never all clear: {r:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }

    /// The printed fix line, run exactly as printed (a shell, as a user pastes it). A fix that
    /// keeps running (printed with a trailing `&`) is started with `exec` instead, so the test
    /// holds its pid and stops it on drop.
    fn run_printed_fix(&self, r: &Value) {
        let line = r["diagnosis"]["fix"]["command"]
            .as_str()
            .unwrap_or_else(|| panic!("no fix: {r:#}"));
        if r["diagnosis"]["fix"]["background"] == true {
            let line = line.strip_suffix(" &").unwrap_or(line);
            let child = Command::new("sh")
                .args(["-c", &format!("exec {line}")])
                .env("CONTAINERS_CONF", self.p.dir.join("containers.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.fixes.borrow_mut().push(ChildGuard(child));
            return;
        }
        let out = Command::new("sh")
            .args(["-c", line])
            .env("CONTAINERS_CONF", self.p.dir.join("containers.conf"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn curl_outside(&self) -> String {
        http_code(&self.outside, &format!("http://192.0.2.1:{}/", self.port))
    }

    /// Break (done by the caller), then: doctor from outside names `expect` as the one FAIL,
    /// the printed fix run as printed, doctor all clear with the probe, and curl from outside
    /// gets an HTTP answer on `port` (busybox httpd answers 404 for /: any answer is the port
    /// working).
    fn break_fix(&self, port: u16, expect: &str) -> Value {
        let port_s = port.to_string();
        let outside = self.outside_from();
        let args = ["--from", outside.as_str(), port_s.as_str()];
        let broken = self.doctor(&args);
        assert_eq!(fault(&broken), expect, "{broken:#}");
        let fails = broken["hops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["verdict"] == "fail")
            .count();
        assert_eq!(fails, 1, "one cause, one FAIL: {broken:#}");
        self.run_printed_fix(&broken);
        let fixed = self.wait_clear(&["--from", &outside, &port_s, "--probe"]);
        assert_eq!(fixed["probe"]["ok"], true, "{fixed:#}");
        let code = http_code(&self.outside, &format!("http://192.0.2.1:{port}/"));
        assert_ne!(code, "000", "curl from outside to {port} after the fix");
        broken
    }
}

#[test]
fn podman_healthy_then_flushed_rules_then_stopped() {
    let l = PodmanLab::reloading("dpod", 18581);
    let port = l.port.to_string();
    let outside = l.outside_from();
    let r = l.wait_clear(&["--from", &outside, &port, "--probe"]);
    assert!(
        hop(&r, "engine")["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("podman container {}", l.web)),
        "{r:#}"
    );
    for from in ["localhost", "host", outside.as_str()] {
        let r = l.doctor(&["--from", from, &port, "--probe"]);
        assert_eq!(r["diagnosis"]["ok"], true, "{from}: {r:#}");
        assert_eq!(r["probe"]["ok"], true, "{from}: {r:#}");
    }
    // A firewall reload flushed netavark's rules: conmon still holds the port (a reservation
    // that never accepts); before, that was "conmon receives it ... service ok".
    sh(&[
        "ip",
        "netns",
        "exec",
        &l.p.ns.name,
        "iptables",
        "-t",
        "nat",
        "-F",
    ]);
    for from in ["localhost", outside.as_str()] {
        let r = l.doctor(&["--from", from, &port]);
        assert_eq!(fault(&r), "dnat_missing", "{from}: {r:#}");
        assert!(diag_line(&r).contains("conmon"), "{r:#}");
    }
    let r = l.doctor(&["--from", &outside, &port]);
    assert!(
        fix_line(&r).ends_with("podman network reload --all"),
        "{r:#}"
    );
    l.run_printed_fix(&r);
    let r = l.wait_clear(&["--from", &outside, &port, "--probe"]);
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    assert_ne!(l.curl_outside(), "000");
    // podman stop -> podman start NAME.
    l.p.podman(&["stop", "-t", "0", &l.web]);
    let r = l.doctor(&["--from", &outside, &port]);
    assert_eq!(fault(&r), "container_not_running", "{r:#}");
    assert!(
        fix_line(&r).ends_with(&format!("podman start {}", l.web)),
        "{r:#}"
    );
    l.run_printed_fix(&r);
    let r = l.wait_clear(&["--from", &outside, &port, "--probe"]);
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    assert_ne!(l.curl_outside(), "000");
}

/// A dual-stack Podman network (netavark, `podman network create --ipv6`): healthy is all
/// clear over IPv4 and IPv6; netavark's ip6tables DNAT rule deleted is named over IPv6 with
/// `podman network reload --all`, which, run as printed, brings IPv6 back.
#[test]
fn podman_dual_stack_port_over_ipv4_and_ipv6_then_v6_dnat_deleted() {
    let l = PodmanLab::dual("dpod6", 18582);
    let port = l.port.to_string();
    let outside = l.outside_from();
    let r = l.wait_clear(&["--from", &outside, &port, "--probe"]);
    assert!(
        diag_line(&r).starts_with("all clear over IPv4 and IPv6"),
        "{r:#}"
    );
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    assert_eq!(r["ipv6"]["probe"]["ok"], true, "{r:#}");
    assert_eq!(r["ipv6"]["destination"]["via"], "dnat", "{r:#}");
    assert_ne!(l.curl_outside(), "000");
    assert_ne!(l.curl_outside6(), "000");
    // busybox httpd answers 404 (no index): any HTTP answer is the port working.
    l.record(
        "podman-dual-stack-healthy",
        "Podman 4.3 + netavark, podman network create --ipv6, web (busybox httpd on [::]:80) -p 18582:80, uplink also 2001:db8:1::1/64",
        &["--from", &outside, &port, "--probe"],
    );

    // netavark's ip6tables DNAT rule for the port deleted: IPv6 clients get nothing.
    let rules = l.p.ns.ip(&[
        "netns",
        "exec",
        &l.p.ns.name,
        "ip6tables",
        "-t",
        "nat",
        "-S",
    ]);
    let rule = rules
        .lines()
        .find(|x| x.contains(&format!("--dport {port}")) && x.contains("-j DNAT"))
        .unwrap_or_else(|| panic!("netavark's ip6tables DNAT rule in {rules}"))
        .replacen("-A", "-D", 1);
    let mut del = vec![
        "ip",
        "netns",
        "exec",
        &l.p.ns.name,
        "ip6tables",
        "-t",
        "nat",
    ];
    del.extend(rule.split_whitespace());
    sh(&del);
    assert_eq!(l.curl_outside6(), "000", "broken over IPv6");
    assert_ne!(l.curl_outside(), "000", "IPv4 still works");
    l.record(
        "podman-ipv6-dnat-deleted",
        "the dual-stack Podman host, netavark's ip6tables DNAT rule for 18582 deleted (ip6tables -t nat -D NETAVARK-DN-... -j DNAT ...)",
        &["--from", &outside, &port, "--probe"],
    );
    let r = l.doctor(&["--from", &outside, &port]);
    assert_eq!(fault(&r), "dnat_missing", "{r:#}");
    assert!(diag_line(&r).starts_with("over IPv6: "), "{r:#}");
    assert!(
        hops_of(&r, "ipv4").iter().all(|h| h["verdict"] == "ok"),
        "{r:#}"
    );
    assert!(
        fix_line(&r).ends_with("podman network reload --all"),
        "{r:#}"
    );
    l.run_printed_fix(&r);
    let r = l.wait_clear(&["--from", &outside, &port, "--probe"]);
    assert_eq!(r["ipv6"]["probe"]["ok"], true, "{r:#}");
    assert_ne!(l.curl_outside6(), "000");
}

/// Podman, two faults broken for real: busybox httpd on the container's 127.0.0.1 only is named
/// service_on_loopback and the printed relay, run as printed, makes the port answer; a
/// container disconnected from its network is named not_on_network in Podman's words
/// (`podman network connect NET CTR`, NET read from the command it was created with: Podman's
/// inspect forgets it), and the fix, run as printed, brings the port back, from a custom
/// network and from Podman's default one.
#[test]
fn podman_service_on_loopback_then_disconnected() {
    let mut l = PodmanLab::new("dpodl", 18583);
    let port = l.port.to_string();
    let outside = l.outside_from();
    l.wait_clear(&["--from", &outside, &port]);
    // A second container on the same network, its service on 127.0.0.1:80 only.
    let net = l.net.clone();
    let lo = l.p.run(
        "lo",
        &["--network", &net, "-p", "18584:80"],
        &["httpd", "-f", "-p", "127.0.0.1:80", "-h", "/"],
    );
    wait_for("lo listening", 20, || {
        fault(&l.doctor(&["--from", &outside, "18584"])) == "service_on_loopback"
    });
    l.record(
        "podman-service-on-loopback",
        "Podman 4.3 + netavark, lo (busybox httpd -p 127.0.0.1:80 inside the container) --network NET -p 18584:80",
        &["--from", &outside, "18584"],
    );
    let r = l.doctor(&["--from", &outside, "18584"]);
    assert!(diag_line(&r).contains("127.0.0.1:80"), "{r:#}");
    assert_eq!(r["diagnosis"]["fix"]["background"], true, "{r:#}");
    // The relay: before, `sh -c "exec LINE &"` left it running after the test.
    l.run_printed_fix(&r);
    let r = l.wait_clear(&["--from", &outside, "18584", "--probe"]);
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    let code = http_code(&l.outside, "http://192.0.2.1:18584/");
    assert_ne!(code, "000", "{lo} through the relay");
    // web disconnected from the network that carries its port.
    l.p.podman(&["network", "disconnect", &net, &l.web]);
    assert_eq!(l.curl_outside(), "000", "broken");
    l.record(
        "podman-disconnected-custom-network",
        "Podman 4.3 + netavark, web (busybox httpd) --network NET -p 18583:80, podman network disconnect NET web (inspect then shows no networks)",
        &["--from", &outside, &port],
    );
    // Podman's inspect forgets the network after a disconnect (network mode "bridge",
    // networks none); the create command libpod keeps names it, and the fix connects it.
    let r = l.doctor(&["--from", &outside, &port]);
    assert_eq!(fault(&r), "not_on_network", "{r:#}");
    assert!(
        fix_line(&r).ends_with(&format!("podman network connect {net} {}", l.web)),
        "{r:#}"
    );
    assert!(
        diag_line(&r).contains(&format!("it was created with --network {net}")),
        "{r:#}"
    );
    l.run_printed_fix(&r);
    let r = l.wait_clear(&["--from", &outside, &port, "--probe"]);
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    assert_ne!(l.curl_outside(), "000");
    // A container on Podman's default network, disconnected: the printed fix, run as printed.
    let name = l.p.run(
        "dft",
        &["-p", "18585:80"],
        &["httpd", "-f", "-p", "80", "-h", "/"],
    );
    l.wait_clear(&["--from", &outside, "18585"]);
    l.p.podman(&["network", "disconnect", "podman", &name]);
    assert_eq!(
        http_code(&l.outside, "http://192.0.2.1:18585/"),
        "000",
        "broken"
    );
    l.record(
        "podman-disconnected-default-network",
        "Podman 4.3 + netavark, dft (busybox httpd) -p 18585:80 with no --network, podman network disconnect podman dft",
        &["--from", &outside, "18585"],
    );
    let r = l.doctor(&["--from", &outside, "18585"]);
    assert_eq!(fault(&r), "not_on_network", "{r:#}");
    assert!(
        diag_line(&r).contains("created with no --network, so on Podman's default network podman"),
        "{r:#}"
    );
    assert!(
        fix_line(&r).ends_with(&format!("podman network connect podman {name}")),
        "{r:#}"
    );
    l.run_printed_fix(&r);
    let r = l.wait_clear(&["--from", &outside, "18585", "--probe"]);
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    assert_ne!(http_code(&l.outside, "http://192.0.2.1:18585/"), "000");
}

/// Podman containers that do not run, the way users leave them: `podman pause` is named
/// with `podman unpause NAME`, a `podman create`d container never started with `podman start
/// NAME`, a stopped pod with `podman pod start POD`, and a pod's member stopped while its infra
/// container holds the port with `podman start MEMBER`; each fix, run as printed, brings the
/// port back (seen from outside with curl).
#[test]
fn podman_paused_and_created_containers() {
    let mut l = PodmanLab::new("dpodp", 18586);
    let port = l.port.to_string();
    let outside = l.outside_from();
    l.wait_clear(&["--from", &outside, &port]);
    l.p.podman(&["pause", &l.web]);
    assert_eq!(l.curl_outside(), "000", "broken");
    l.record(
        "podman-paused",
        "Podman 4.3 + netavark, web (busybox httpd) --network NET -p 18586:80, podman pause web",
        &["--from", &outside, &port],
    );
    let r = l.break_fix(l.port, "container_not_running");
    let line = diag_line(&r);
    assert!(line.contains(" is paused"), "{r:#}");
    assert!(
        fix_line(&r).ends_with(&format!("podman unpause {}", l.web)),
        "{r:#}"
    );
    // `doctor container:NAME` on a paused, then a stopped Podman container: named in words
    // with the port it publishes (a stopped one has no namespace to enter).
    let target = format!("container:{}", l.web);
    l.p.podman(&["pause", &l.web]);
    let r = l.doctor(&[&target]);
    assert_eq!(fault(&r), "container_not_running", "{r:#}");
    assert_eq!(r["packet"]["dport"], l.port, "{r:#}");
    l.p.podman(&["unpause", &l.web]);
    l.p.podman(&["stop", "-t", "0", &l.web]);
    let r = l.doctor(&[&target]);
    assert_eq!(fault(&r), "container_not_running", "{r:#}");
    assert_eq!(r["packet"]["dport"], l.port, "{r:#}");
    l.run_printed_fix(&r);
    l.wait_clear(&["--from", &outside, &port, "--probe"]);
    // Created, never started: no namespace, no address, no rules yet.
    let net = l.net.clone();
    let late = l.p.create(
        "late",
        &["--network", net.as_str(), "-p", "18587:80"],
        &["httpd", "-f", "-p", "80", "-h", "/"],
    );
    l.record(
        "podman-created",
        "Podman 4.3 + netavark, late: podman create --network NET -p 18587:80 (never started)",
        &["--from", &outside, "18587"],
    );
    let r = l.break_fix(18587, "container_not_running");
    assert!(diag_line(&r).contains(" is created"), "{r:#}");
    assert!(
        diag_line(&r).contains("starts it for the first time"),
        "{r:#}"
    );
    assert!(
        fix_line(&r).ends_with(&format!("podman start {late}")),
        "{r:#}"
    );
    // A pod publishing 18593 (the port is its infra container's), httpd in a member.
    let pod =
        l.p.pod("pod", &["--network", net.as_str(), "-p", "18593:80"]);
    let app = l.p.run(
        "app",
        &["--pod", &pod],
        &["httpd", "-f", "-p", "80", "-h", "/"],
    );
    l.wait_clear(&["--from", &outside, "18593"]);
    // The whole pod stopped: started again as a pod.
    l.p.podman(&["pod", "stop", "-t", "0", &pod]);
    l.record(
        "podman-pod-stopped",
        "Podman 4.3 + netavark, pod (infra /pause) --network NET -p 18593:80, app (busybox httpd) in it, podman pod stop POD",
        &["--from", &outside, "18593"],
    );
    let r = l.break_fix(18593, "container_not_running");
    assert!(
        fix_line(&r).ends_with(&format!("podman pod start {pod}")),
        "{r:#}"
    );
    // The line names the command the fix runs (before: `podman start POD-infra`).
    assert!(
        diag_line(&r).contains(&format!("`podman pod start {pod}` starts the pod again")),
        "{r:#}"
    );
    // Only the member stopped: the infra container still holds the namespace and the port.
    l.p.podman(&["stop", "-t", "0", &app]);
    l.record(
        "podman-pod-member-stopped",
        "Podman 4.3 + netavark, pod (infra /pause) --network NET -p 18593:80, podman stop app (its busybox httpd); the infra container runs",
        &["--from", &outside, "18593"],
    );
    // Before: "nothing listens on tcp/80 in container:POD-infra", fix `nettool serve http 80`.
    let r = l.break_fix(18593, "container_not_running");
    assert!(
        diag_line(&r).contains(&format!("its container {app} is exited")),
        "{r:#}"
    );
    assert!(
        fix_line(&r).ends_with(&format!("podman start {app}")),
        "{r:#}"
    );
    // The member paused: its socket still listens (the kernel completes handshakes) but
    // nothing answers.
    l.p.podman(&["pause", &app]);
    l.record(
        "podman-pod-member-paused",
        "Podman 4.3 + netavark, pod (infra /pause) --network NET -p 18593:80, podman pause app (its busybox httpd still listens, frozen); the infra container runs",
        &["--from", &outside, "18593"],
    );
    // Before: all clear (the socket listens; only a probe would hang).
    let r = l.break_fix(18593, "container_not_running");
    assert!(
        fix_line(&r).ends_with(&format!("podman unpause {app}")),
        "{r:#}"
    );
}

/// Podman, four more faults on one host, each broken as users break it, named as one FAIL,
/// its printed fix run as printed and the port then answering from outside: the wrong
/// container port (`-p H:81`, the service on 80), a port published on 127.0.0.1 only tried
/// from outside (the finding is the explanation; the printed relay stands in until the
/// container is re-created), forwarding off in the Podman host namespace, and an MTU
/// mismatch (the container's eth0 at 9000, its host end at 1500).
#[test]
fn podman_wrong_port_published_on_127_forwarding_off_and_mtu() {
    let mut l = PodmanLab::new("dpodw", 18588);
    let port = l.port.to_string();
    let outside = l.outside_from();
    l.wait_clear(&["--from", &outside, &port]);
    let net = l.net.clone();
    // The wrong container port: published to 81, httpd listens on 80.
    l.p.run(
        "wp",
        &["--network", &net, "-p", "18589:81"],
        &["httpd", "-f", "-p", "80", "-h", "/"],
    );
    wait_for("wp listening", 20, || {
        fault(&l.doctor(&["--from", &outside, "18589"])) == "dnat_wrong_port"
    });
    l.record(
        "podman-wrong-container-port",
        "Podman 4.3 + netavark, wp (busybox httpd on 80) --network NET -p 18589:81",
        &["--from", &outside, "18589"],
    );
    let r = l.break_fix(18589, "dnat_wrong_port");
    assert!(diag_line(&r).contains("listens on 80"), "{r:#}");
    // Published on 127.0.0.1 only, tried from the outside namespace.
    l.p.run(
        "lon",
        &["--network", &net, "-p", "127.0.0.1:18590:80"],
        &["httpd", "-f", "-p", "80", "-h", "/"],
    );
    l.wait_clear(&["--from", "localhost", "18590"]);
    assert_eq!(
        http_code(&l.outside, "http://192.0.2.1:18590/"),
        "000",
        "broken"
    );
    l.record(
        "podman-published-on-127",
        "Podman 4.3 + netavark, lon (busybox httpd) --network NET -p 127.0.0.1:18590:80, tried from outside",
        &["--from", &outside, "18590"],
    );
    let r = l.break_fix(18590, "published_elsewhere");
    assert!(
        diag_line(&r).contains("publishes 18590 on 127.0.0.1 only"),
        "{r:#}"
    );
    // Forwarding off in the Podman host namespace: one FAIL (not a second one blaming
    // netavark's DNAT rule).
    sh(&[
        "ip",
        "netns",
        "exec",
        &l.p.ns.name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);
    assert_eq!(l.curl_outside(), "000", "broken");
    l.record(
        "podman-ip-forward-off",
        "Podman 4.3 + netavark, web (busybox httpd) --network NET -p 18588:80, sysctl -w net.ipv4.ip_forward=0 in the Podman host namespace",
        &["--from", &outside, &port],
    );
    let r = l.break_fix(l.port, "ip_forward_off");
    assert!(fix_line(&r).contains("net.ipv4.ip_forward=1"), "{r:#}");
    // MTU: the container's eth0 at 9000, its host end (netavark's veth) at 1500.
    let key = l.p.podman(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.SandboxKey}}",
        &l.web,
    ]);
    let ctr_ns = key
        .trim()
        .strip_prefix("/run/netns/")
        .unwrap_or_else(|| panic!("sandbox key {key}"))
        .to_string();
    sh(&["ip", "-n", &ctr_ns, "link", "set", "eth0", "mtu", "9000"]);
    l.record(
        "podman-mtu-mismatch",
        "Podman 4.3 + netavark, web (busybox httpd) --network NET -p 18588:80, ip -n CTR link set eth0 mtu 9000 (host end 1500)",
        &["--from", &outside, &port],
    );
    let r = l.break_fix(l.port, "mtu_mismatch");
    let line = diag_line(&r);
    assert!(line.contains("9000") && line.contains("1500"), "{r:#}");
    assert!(fix_line(&r).ends_with("link set eth0 mtu 1500"), "{r:#}");
}

// ---------------------------------------------------------------------------------------------
// CNI: the reference plugins (bridge + host-local + portmap + firewall) run as libcni runs
// them (tests/common/cni.rs), in a host namespace with an uplink to an outside namespace.
// ---------------------------------------------------------------------------------------------

/// A CNI host: `host` (uplink up0 192.0.2.1/24 to `outside` at 192.0.2.2), container `ctr`
/// attached with the chain, its port `port` mapped to 80, a service inside on `bind`:80.
/// Fields drop in order: fixes and the service, the CNI DEL, then the namespaces.
struct CniHost {
    fixes: Vec<ChildGuard>,
    service: Option<ChildGuard>,
    att: Option<common::cni::CniAttachment>,
    ctr: TestNs,
    outside: TestNs,
    host: TestNs,
    port: u16,
}

impl CniHost {
    fn new(tag: &str, subnet: &str, port: u16, bind: &str) -> CniHost {
        let host = TestNs::new(&format!("{tag}h"));
        let outside = TestNs::new(&format!("{tag}o"));
        let ctr = TestNs::new(&format!("{tag}c"));
        uplink(&host, &outside);
        let att = common::cni::CniAttachment::add(&host, &ctr, subnet, port, 80);
        let service = ctr.spawn(&[
            env!("CARGO_BIN_EXE_nettool"),
            "serve",
            "http",
            "80",
            "--bind",
            bind,
        ]);
        CniHost {
            fixes: Vec::new(),
            service: Some(service),
            att: Some(att),
            ctr,
            outside,
            host,
            port,
        }
    }

    /// A CNI host whose chain is run with `mappings` as portmap's runtimeConfig and
    /// CNI_IFNAME=`ifname`, the container running `service` (argv); `port` is the first
    /// mapping's host port.
    fn with(tag: &str, subnet: &str, mappings: Value, ifname: &str, service: &[&str]) -> CniHost {
        let host = TestNs::new(&format!("{tag}h"));
        let outside = TestNs::new(&format!("{tag}o"));
        let ctr = TestNs::new(&format!("{tag}c"));
        uplink(&host, &outside);
        let port = mappings[0]["hostPort"].as_u64().unwrap() as u16;
        let att = common::cni::CniAttachment::add_with(&host, &ctr, &[subnet], mappings, ifname);
        let service = ctr.spawn(service);
        CniHost {
            fixes: Vec::new(),
            service: Some(service),
            att: Some(att),
            ctr,
            outside,
            host,
            port,
        }
    }

    /// A dual-stack CNI host: the uplink also 2001:db8:1::1/64 (outside ::2), the network
    /// with an IPv4 and an IPv6 range, the service on `bind`:80.
    fn dual(tag: &str, subnet: &str, subnet6: &str, port: u16, bind: &str) -> CniHost {
        let host = TestNs::new(&format!("{tag}h"));
        let outside = TestNs::new(&format!("{tag}o"));
        let ctr = TestNs::new(&format!("{tag}c"));
        uplink(&host, &outside);
        uplink6(&host, &outside);
        sysctl(&host, "net.ipv6.conf.all.forwarding=1");
        let att = common::cni::CniAttachment::add_ranges(&host, &ctr, &[subnet, subnet6], port, 80);
        let service = ctr.spawn(&[
            env!("CARGO_BIN_EXE_nettool"),
            "serve",
            "http",
            "80",
            "--bind",
            bind,
        ]);
        CniHost {
            fixes: Vec::new(),
            service: Some(service),
            att: Some(att),
            ctr,
            outside,
            host,
            port,
        }
    }

    /// curl from outside to the host's IPv6 uplink address.
    fn curl_outside6(&self) -> String {
        http_code(
            &self.outside,
            &format!("http://[2001:db8:1::1]:{}/", self.port),
        )
    }

    fn from(&self) -> String {
        format!("outside:{}", self.outside.name)
    }

    fn id(&self) -> String {
        self.att.as_ref().unwrap().container_id.clone()
    }

    fn curl_outside(&self) -> String {
        http_code(&self.outside, &format!("http://192.0.2.1:{}/", self.port))
    }

    fn record(&self, name: &str, how: &str, args: &[&str]) {
        record_capture(&[], &self.host.name, name, how, args);
    }

    /// doctor until its fault is `want` (a service just started).
    fn wait_fault(&self, args: &[&str], want: &str) -> Value {
        let mut last = Value::Null;
        wait_for(want, 20, || {
            last = self.doctor(args);
            fault(&last) == want
        });
        last
    }
}

impl Subject for CniHost {
    fn doctor(&self, args: &[&str]) -> Value {
        doctor_json(&self.host.name, args)
    }

    fn apply_fix(&mut self, report: &Value) {
        if let Some(c) = run_fix(&self.host.name, report) {
            self.fixes.push(c);
        }
    }
}

/// One FAIL, naming the CNI container.
fn one_cni_fail(r: &Value, id: &str) {
    let fails = r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["verdict"] == "fail")
        .count();
    assert_eq!(fails, 1, "one cause, one FAIL: {r:#}");
    assert!(
        r["diagnosis"]["line"].as_str().unwrap().contains(id),
        "the CNI container is named: {r:#}"
    );
}

#[test]
fn cni_healthy_then_portmap_dnat_deleted_and_re_added_as_printed() {
    let h = CniHost::new("cnidr", "10.77.5.0/24", 18495, "0.0.0.0");
    let from = h.from();
    let args = ["--from", from.as_str(), "18495"];
    let ok = h.wait_fault(&args, "none");
    assert_eq!(ok["diagnosis"]["ok"], true, "{ok:#}");
    assert_eq!(hop(&ok, "engine")["verdict"], "ok", "{ok:#}");
    assert!(
        hop(&ok, "engine")["summary"]
            .as_str()
            .unwrap()
            .contains(&h.id()),
        "{ok:#}"
    );
    for from in [from.as_str(), "localhost", "outside"] {
        let r = h.doctor(&["--from", from, "18495", "--probe"]);
        assert_eq!(r["diagnosis"]["ok"], true, "{from}: {r:#}");
        assert_eq!(r["probe"]["ok"], true, "{from}: {r:#}");
    }
    assert!(h.curl_outside().starts_with('2'));
    h.record(
        "cni-healthy",
        "CNI plugins 1.1.1 chain bridge + host-local + portmap (snat) + firewall, container (nettool serve http on 0.0.0.0:80) hostPort 18495 -> 80",
        &["--from", &from, "18495", "--probe"],
    );

    // portmap's DNAT rule deleted (the jump from CNI-HOSTPORT-DNAT with the container id in
    // its comment stays): nothing receives 18495.
    let rules = h
        .host
        .ip(&["netns", "exec", &h.host.name, "iptables", "-t", "nat", "-S"]);
    let rule = rules
        .lines()
        .find(|l| l.contains("--dport 18495") && l.contains("-j DNAT"))
        .unwrap_or_else(|| panic!("portmap's DNAT rule in {rules}"))
        .replacen("-A", "-D", 1);
    let mut del = vec!["ip", "netns", "exec", &h.host.name, "iptables", "-t", "nat"];
    del.extend(rule.split_whitespace());
    sh(&del);
    assert!(!h.curl_outside().starts_with('2'), "broken");
    h.record(
        "cni-portmap-dnat-deleted",
        "the CNI host, portmap's DNAT rule for 18495 deleted from its CNI-DN chain (iptables -t nat -D CNI-DN-... -j DNAT ...)",
        &["--from", &from, "18495", "--probe"],
    );
    let broken = h.doctor(&args);
    assert_eq!(fault(&broken), "dnat_missing", "{broken:#}");
    one_cni_fail(&broken, &h.id());
    // The printed line, run as printed by a shell on the machine.
    let command = broken["diagnosis"]["fix"]["command"].as_str().unwrap();
    assert!(command.contains("portmap"), "{command}");
    sh(&["sh", "-c", command]);
    let fixed = h.doctor(&["--from", &from, "18495", "--probe"]);
    assert_eq!(fixed["diagnosis"]["ok"], true, "{fixed:#}");
    assert_eq!(fixed["probe"]["ok"], true, "{fixed:#}");
    assert!(h.curl_outside().starts_with('2'));
}

#[test]
fn cni_service_on_loopback_then_veth_removed_then_namespace_gone() {
    let mut h = CniHost::new("cnilo", "10.77.6.0/24", 18496, "127.0.0.1");
    let from = h.from();
    let args = ["--from", from.as_str(), "18496"];
    let lo = h.wait_fault(&args, "service_on_loopback");
    h.record(
        "cni-service-on-loopback",
        "the CNI host, the service inside the container on 127.0.0.1:80 only (hostPort 18496 -> 80)",
        &args,
    );
    let fails = lo["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["verdict"] == "fail")
        .count();
    assert_eq!(fails, 1, "{lo:#}");
    h.apply_fix(&lo);
    let mut fixed = Value::Null;
    // The snapshot is read before the probe runs: a relay that starts in between lets the
    // probe through while the snapshot still lacks it. Wait for both.
    let clear = wait_for_ok(20, || {
        fixed = h.doctor(&["--from", &from, "18496", "--probe"]);
        fixed["probe"]["ok"] == true && fixed["diagnosis"]["ok"] == true
    });
    assert!(clear, "after the relay: {fixed:#}");
    assert!(h.curl_outside().starts_with('2'));
    h.fixes.clear();
    h.service.take();

    // The container's veth removed: its namespace is there, its address is not.
    h.ctr.ip(&["link", "del", "eth0"]);
    let r = h.doctor(&args);
    h.record(
        "cni-veth-removed",
        "the CNI host, the container's eth0 deleted (ip -n CTR link del eth0)",
        &args,
    );
    assert_eq!(fault(&r), "not_on_network", "{r:#}");
    one_cni_fail(&r, &h.id());

    // Its namespace gone (removed without a CNI DEL).
    sh(&["ip", "netns", "del", &h.ctr.name]);
    let r = h.doctor(&args);
    h.record(
        "cni-namespace-gone",
        "the CNI host, the container's namespace deleted without a CNI DEL (ip netns del CTR)",
        &args,
    );
    assert_eq!(fault(&r), "container_not_running", "{r:#}");
    one_cni_fail(&r, &h.id());
    let line = r["diagnosis"]["line"].as_str().unwrap();
    assert!(
        line.contains("namespace is gone") && line.contains("runtime"),
        "{r:#}"
    );
    // The printed DEL, run as printed: every rule naming its address, its cache entry and its
    // address reservation go (the same address is free for the ADD below).
    let ip = h.att.as_ref().unwrap().ipv4();
    let att = h.att.as_ref().unwrap();
    let cache = format!(
        "{}/{}-{}-{}",
        common::cni::CACHE_DIR,
        att.network,
        att.container_id,
        att.ifname
    );
    assert!(std::path::Path::new(&cache).exists());
    run_printed(&r);
    let rules = sh(&["ip", "netns", "exec", &h.host.name, "iptables-save"]);
    assert!(
        !rules.contains(&format!("{ip}/")) && !rules.contains(&format!("{ip}:")),
        "no rule names {ip} after the DEL: {rules}"
    );
    assert!(
        !std::path::Path::new(&cache).exists(),
        "cache entry removed"
    );
    // Then the runtime's part: a new namespace at the cached path (by hand, as the fix's
    // second command says), the service in it, and the printed ADD.
    let then = &r["diagnosis"]["fix"]["then"];
    let summary = then["summary"].as_str().unwrap_or("");
    assert!(
        summary.contains(&format!("ip netns add {}", h.ctr.name)),
        "{r:#}"
    );
    sh(&["ip", "netns", "add", &h.ctr.name]);
    h.service = Some(
        h.ctr
            .spawn(&[env!("CARGO_BIN_EXE_nettool"), "serve", "http", "80"]),
    );
    sh(&["sh", "-c", then["command"].as_str().unwrap()]);
    assert!(std::path::Path::new(&cache).exists(), "cache entry written");
    assert!(h.ctr.ip(&["-4", "addr", "show", "eth0"]).contains(&ip));
    let mut fixed = Value::Null;
    wait_for("the port after the ADD", 10, || {
        fixed = h.doctor(&["--from", &from, "18496", "--probe"]);
        fixed["probe"]["ok"] == true
    });
    assert_eq!(fixed["diagnosis"]["ok"], true, "{fixed:#}");
    assert!(h.curl_outside().starts_with('2'));
}

/// A libcni cache entry left by a crashed runtime claims the live container's port: doctor
/// judges the live container (the one whose namespace exists; of two that exist, the one the
/// DNAT or the listener belongs to), never the stale one.
#[test]
fn cni_stale_cache_entry_for_the_same_port_does_not_hide_the_live_container() {
    let h = CniHost::new("cnist", "10.77.7.0/24", 18497, "0.0.0.0");
    let from = h.from();
    let args = ["--from", from.as_str(), "18497"];
    let att = h.att.as_ref().unwrap();
    // Its namespace gone: a path that opens nothing.
    let gone = format!("/run/netns/{}", common::unique("gone"));
    let stale = att.plant_stale(&gone, "10.77.7.200/24");
    let ok = h.wait_fault(&args, "none");
    assert_eq!(ok["diagnosis"]["ok"], true, "{ok:#}");
    let engine = hop(&ok, "engine")["summary"].as_str().unwrap();
    assert!(engine.contains(&h.id()), "the live container: {ok:#}");
    assert!(!engine.contains(&stale.container_id), "{ok:#}");
    drop(stale);
    // The path left as an empty file (its mount gone with a crash or a reboot of /run's
    // mounts): it opens no namespace either.
    let file = format!("/tmp/{}", common::unique("gonefile"));
    std::fs::write(&file, "").unwrap();
    let stale = att.plant_stale(&file, "10.77.7.202/24");
    let ok = h.doctor(&args);
    let _ = std::fs::remove_file(&file);
    assert_eq!(ok["diagnosis"]["ok"], true, "{ok:#}");
    let engine = hop(&ok, "engine")["summary"].as_str().unwrap();
    assert!(engine.contains(&h.id()), "the live container: {ok:#}");
    drop(stale);

    // Its namespace still there (the runtime crashed before removing it), empty.
    let left = TestNs::new("cnistl");
    let stale = att.plant_stale(&left.path(), "10.77.7.201/24");
    let ok = h.doctor(&["--from", &from, "18497", "--probe"]);
    assert_eq!(ok["diagnosis"]["ok"], true, "{ok:#}");
    assert_eq!(ok["probe"]["ok"], true, "{ok:#}");
    let engine = hop(&ok, "engine")["summary"].as_str().unwrap();
    assert!(engine.contains(&h.id()), "the one the DNAT goes to: {ok:#}");
    h.record(
        "cni-stale-cache-entry",
        "the CNI host with a second libcni cache entry (another container id, namespace left empty, 10.77.7.201) claiming the same hostPort 18497",
        &args,
    );

    // The live one's DNAT deleted: its fault, named for it (it has the listener).
    let rules = h
        .host
        .ip(&["netns", "exec", &h.host.name, "iptables", "-t", "nat", "-S"]);
    let rule = rules
        .lines()
        .find(|l| l.contains("--dport 18497") && l.contains("-j DNAT"))
        .unwrap_or_else(|| panic!("portmap's DNAT rule in {rules}"))
        .replacen("-A", "-D", 1);
    let mut del = vec!["ip", "netns", "exec", &h.host.name, "iptables", "-t", "nat"];
    del.extend(rule.split_whitespace());
    sh(&del);
    h.record(
        "cni-stale-cache-entry-dnat-deleted",
        "the CNI host with the stale cache entry for 18497, the live container's portmap DNAT rule deleted",
        &args,
    );
    let broken = h.doctor(&args);
    assert_eq!(fault(&broken), "dnat_missing", "{broken:#}");
    one_cni_fail(&broken, &h.id());
    let command = broken["diagnosis"]["fix"]["command"].as_str().unwrap();
    sh(&["sh", "-c", command]);
    let fixed = h.doctor(&["--from", &from, "18497", "--probe"]);
    assert_eq!(fixed["diagnosis"]["ok"], true, "{fixed:#}");
    assert!(h.curl_outside().starts_with('2'));
    drop(stale);
}

/// A dual-stack CNI network (an IPv4 and an IPv6 host-local range; portmap writes ip6tables
/// rules too): healthy is all clear over both families; portmap's ip6tables DNAT deleted is
/// named over IPv6 with the CNI re-add, which, run as printed, brings IPv6 back; a service on
/// [::]:80 with IPV6_V6ONLY takes no IPv4, and doctor says so (the socket's flag is read).
#[test]
fn cni_dual_stack_port_over_ipv4_and_ipv6_then_v6_dnat_deleted_then_a_v6only_service() {
    let mut h = CniHost::dual("cni6", "10.77.8.0/24", "fd00:77:8::/64", 18498, "::");
    let from = h.from();
    let args = ["--from", from.as_str(), "18498"];
    h.wait_fault(&args, "none");
    let ok = h.doctor(&["--from", &from, "18498", "--probe"]);
    assert_eq!(ok["diagnosis"]["ok"], true, "{ok:#}");
    assert!(
        ok["diagnosis"]["line"]
            .as_str()
            .unwrap()
            .starts_with("all clear over IPv4 and IPv6"),
        "{ok:#}"
    );
    assert_eq!(ok["probe"]["ok"], true, "{ok:#}");
    assert_eq!(ok["ipv6"]["probe"]["ok"], true, "{ok:#}");
    let v6 = h.att.as_ref().unwrap().ipv6();
    assert_eq!(ok["ipv6"]["destination"]["addr"], v6.as_str(), "{ok:#}");
    assert!(h.curl_outside().starts_with('2'));
    assert!(h.curl_outside6().starts_with('2'));
    h.record(
        "cni-dual-stack-healthy",
        "CNI chain bridge + host-local (ranges 10.77.8.0/24 and fd00:77:8::/64) + portmap (snat) + firewall, container (nettool serve http on [::]:80) hostPort 18498 -> 80, uplink also 2001:db8:1::1/64",
        &["--from", &from, "18498", "--probe"],
    );

    // portmap's ip6tables DNAT rule deleted: IPv6 clients find nothing, IPv4 ones are fine.
    let rules = h.host.ip(&[
        "netns",
        "exec",
        &h.host.name,
        "ip6tables",
        "-t",
        "nat",
        "-S",
    ]);
    let rule = rules
        .lines()
        .find(|l| l.contains("--dport 18498") && l.contains("-j DNAT"))
        .unwrap_or_else(|| panic!("portmap's ip6tables DNAT rule in {rules}"))
        .replacen("-A", "-D", 1);
    let mut del = vec![
        "ip",
        "netns",
        "exec",
        &h.host.name,
        "ip6tables",
        "-t",
        "nat",
    ];
    del.extend(rule.split_whitespace());
    sh(&del);
    assert!(!h.curl_outside6().starts_with('2'), "broken over IPv6");
    assert!(h.curl_outside().starts_with('2'), "IPv4 still works");
    h.record(
        "cni-ipv6-dnat-deleted",
        "the dual-stack CNI host, portmap's ip6tables DNAT rule for 18498 deleted (ip6tables -t nat -D CNI-DN-... -j DNAT ...)",
        &["--from", &from, "18498", "--probe"],
    );
    let broken = h.doctor(&args);
    assert_eq!(fault(&broken), "dnat_missing", "{broken:#}");
    let line = broken["diagnosis"]["line"].as_str().unwrap();
    assert!(
        line.starts_with("over IPv6: CNI portmap's DNAT rule"),
        "{broken:#}"
    );
    one_cni_fail(&broken, &h.id());
    let command = broken["diagnosis"]["fix"]["command"].as_str().unwrap();
    assert!(command.contains("portmap"), "{command}");
    sh(&["sh", "-c", command]);
    let fixed = h.doctor(&["--from", &from, "18498", "--probe"]);
    assert_eq!(fixed["diagnosis"]["ok"], true, "{fixed:#}");
    assert_eq!(fixed["ipv6"]["probe"]["ok"], true, "{fixed:#}");
    assert!(h.curl_outside6().starts_with('2'));
    assert!(h.curl_outside().starts_with('2'));

    // The service on [::]:80 with IPV6_V6ONLY: IPv6 only. Over IPv4 nothing listens.
    h.service = None;
    h.service = Some(h.ctr.spawn(&[
        "socat",
        "TCP6-LISTEN:80,ipv6only=1,fork,reuseaddr",
        "EXEC:cat",
    ]));
    let r = h.wait_fault(&args, "service_ipv6_only");
    assert!(
        r["diagnosis"]["line"]
            .as_str()
            .unwrap()
            .contains("IPV6_V6ONLY"),
        "{r:#}"
    );
    let fails = r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["verdict"] == "fail")
        .count();
    assert_eq!(fails, 1, "{r:#}");
    h.record(
        "cni-service-ipv6-only",
        "the dual-stack CNI host, the service replaced by socat TCP6-LISTEN:80,ipv6only=1 (IPV6_V6ONLY on [::]:80)",
        &args,
    );
    h.apply_fix(&r);
    let mut fixed = Value::Null;
    // The snapshot is read before the probe runs: a relay that starts in between lets the
    // probe through while the snapshot still lacks it. Wait for both.
    let clear = wait_for_ok(20, || {
        fixed = h.doctor(&["--from", &from, "18498", "--probe"]);
        fixed["probe"]["ok"] == true && fixed["diagnosis"]["ok"] == true
    });
    assert!(clear, "after the relay: {fixed:#}");
    assert_eq!(fixed["ipv6"]["probe"]["ok"], true, "{fixed:#}");
}

/// CNI faults besides the DNAT, each with a printed fix run as printed: the container's
/// interface removed (the chain's DEL then ADD from libcni's cache, keeping its address), the
/// network's bridge down, the container's eth0 down. After each fix the port answers again.
#[test]
fn cni_interface_removed_bridge_down_and_eth0_down_are_fixed_as_printed() {
    let h = CniHost::new("cnifx", "10.77.9.0/24", 18499, "0.0.0.0");
    let from = h.from();
    let args = ["--from", from.as_str(), "18499"];
    h.wait_fault(&args, "none");
    assert!(h.curl_outside().starts_with('2'));
    let bridge = h.att.as_ref().unwrap().bridge.clone();
    let ip = h.att.as_ref().unwrap().ipv4();
    let fix_as_printed = |r: &Value| {
        let command = r["diagnosis"]["fix"]["command"]
            .as_str()
            .unwrap_or_else(|| panic!("no fix printed: {r:#}"));
        sh(&["sh", "-c", command]);
        let mut fixed = Value::Null;
        wait_for("the port after the fix", 10, || {
            fixed = h.doctor(&["--from", &from, "18499", "--probe"]);
            fixed["probe"]["ok"] == true
        });
        assert_eq!(fixed["diagnosis"]["ok"], true, "{fixed:#}");
        assert!(h.curl_outside().starts_with('2'));
    };

    // The container's interface removed: its namespace is there, its address is not.
    h.ctr.ip(&["link", "del", "eth0"]);
    assert!(!h.curl_outside().starts_with('2'), "broken");
    h.record(
        "cni-interface-removed",
        "the CNI host, the container's eth0 deleted (ip -n CTR link del eth0), the service on 0.0.0.0:80 still running",
        &args,
    );
    let r = h.doctor(&args);
    assert_eq!(fault(&r), "not_on_network", "{r:#}");
    one_cni_fail(&r, &h.id());
    let command = r["diagnosis"]["fix"]["command"].as_str().unwrap_or("");
    assert!(command.contains("CNI_COMMAND=ADD"), "{r:#}");
    fix_as_printed(&r);
    // The same address again: libcni's cached result (and every rule naming it) holds.
    assert!(
        h.ctr.ip(&["-4", "addr", "show", "eth0"]).contains(&ip),
        "the cached address {ip} again"
    );

    // The network's bridge down.
    h.host.ip(&["link", "set", &bridge, "down"]);
    assert!(!h.curl_outside().starts_with('2'), "broken");
    h.record(
        "cni-bridge-down",
        "the CNI host, the network's bridge set down (ip link set CNIBR down): its prefix route is gone, the host routes the container's address out of the uplink",
        &args,
    );
    let r = h.doctor(&args);
    assert_eq!(fault(&r), "bridge_down", "{r:#}");
    one_cni_fail(&r, &bridge);
    fix_as_printed(&r);

    // The container's eth0 down.
    h.ctr.ip(&["link", "set", "eth0", "down"]);
    assert!(!h.curl_outside().starts_with('2'), "broken");
    h.record(
        "cni-eth0-down",
        "the CNI host, the container's eth0 set down (ip -n CTR link set eth0 down): its default route went with it",
        &args,
    );
    let r = h.doctor(&args);
    assert_eq!(fault(&r), "veth_down", "{r:#}");
    assert!(
        r["diagnosis"]["fix"]["command"]
            .as_str()
            .unwrap_or("")
            .contains("CNI_COMMAND=ADD"),
        "the chain's ADD brings its routes back too: {r:#}"
    );
    let fails = r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["verdict"] == "fail")
        .count();
    assert_eq!(fails, 1, "{r:#}");
    fix_as_printed(&r);
}

/// A chain added with CNI_IFNAME=net1 (a second network's interface, as runtimes name it):
/// every fix that runs the chain again takes the name from libcni's cache (ifName), so the
/// interface comes back as net1 with its address (before: as eth0, the fix "worked" while the
/// container had a second interface the cache does not know).
#[test]
fn cni_chain_on_net1_is_re_added_as_net1_after_removal_and_down() {
    let nettool = env!("CARGO_BIN_EXE_nettool");
    let h = CniHost::with(
        "cnin1",
        "10.77.10.0/24",
        serde_json::json!([{"hostPort": 18510, "containerPort": 80, "protocol": "tcp"}]),
        "net1",
        &[nettool, "serve", "http", "80"],
    );
    let from = h.from();
    let args = ["--from", from.as_str(), "18510"];
    h.wait_fault(&args, "none");
    assert!(h.curl_outside().starts_with('2'));
    let ip = h.att.as_ref().unwrap().ipv4();
    let fix_as_printed = |r: &Value| {
        let command = r["diagnosis"]["fix"]["command"].as_str().unwrap_or("");
        assert!(command.contains("net1"), "the cached ifName: {r:#}");
        assert!(!command.contains("eth0"), "{r:#}");
        run_printed(r);
        let mut fixed = Value::Null;
        wait_for("the port after the fix", 10, || {
            fixed = h.doctor(&["--from", &from, "18510", "--probe"]);
            fixed["probe"]["ok"] == true
        });
        assert_eq!(fixed["diagnosis"]["ok"], true, "{fixed:#}");
        assert!(h.curl_outside().starts_with('2'));
        let links = h.ctr.ip(&["-o", "link"]);
        assert!(!links.contains("eth0"), "no eth0 made: {links}");
        assert!(
            h.ctr.ip(&["-4", "addr", "show", "net1"]).contains(&ip),
            "net1 holds {ip} again"
        );
    };
    h.ctr.ip(&["link", "del", "net1"]);
    h.record(
        "cni-net1-interface-removed",
        "a CNI chain added with CNI_IFNAME=net1 (libcni cache ifName net1), the container's net1 deleted (ip -n CTR link del net1)",
        &args,
    );
    let r = h.doctor(&args);
    assert_eq!(fault(&r), "not_on_network", "{r:#}");
    one_cni_fail(&r, &h.id());
    fix_as_printed(&r);
    h.ctr.ip(&["link", "set", "net1", "down"]);
    let r = h.doctor(&args);
    assert_eq!(fault(&r), "veth_down", "{r:#}");
    fix_as_printed(&r);
}

/// CNI faults of the port itself and of the host, several on one CNI host (its start-up is
/// the cost): portmap's containerPort 81 while the service is on 80; a mapping with hostIP
/// 127.0.0.1 tried from outside; forwarding off in the host namespace; MTU both ways with a
/// jumbo-frame uplink (the container's eth0 at 9000 behind the 1500 bridge: an 8 KB response
/// never arrives; the bridge and host end at 9000 with the container at 1500: the fix raises
/// the container's end, the bridge keeps 9000). One FAIL each, the fix run as printed, and the
/// port works again.
#[test]
fn cni_wrong_container_port_port_on_127_forwarding_off_and_mtu_both_ways() {
    let nettool = env!("CARGO_BIN_EXE_nettool");
    let body = big_body();
    let mut h = CniHost::with(
        "cnipf",
        "10.77.11.0/24",
        serde_json::json!([
            {"hostPort": 18511, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 18512, "containerPort": 81, "protocol": "tcp"},
            {"hostPort": 18513, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}
        ]),
        "eth0",
        &[nettool, "serve", "http", "80", "--text", &body],
    );
    let from = h.from();
    let at = |port: u16| format!("http://192.0.2.1:{port}/");
    let args = |port: &'static str| ["--from".to_string(), from.clone(), port.to_string()];
    let doctor = |h: &CniHost, a: &[String]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        h.doctor(&a)
    };
    let probe_clear = |h: &CniHost, port: &str| {
        let mut fixed = Value::Null;
        let clear = wait_for_ok(15, || {
            fixed = h.doctor(&["--from", &from, port, "--probe"]);
            fixed["probe"]["ok"] == true && fixed["diagnosis"]["ok"] == true
        });
        assert!(clear, "port {port} after the fix: {fixed:#}");
    };
    h.wait_fault(&["--from", &from, "18511"], "none");
    assert_eq!(curl_size(&h.outside.name, &at(18511)), body.len());

    // The wrong container port: 18512 -> 81, the service on 80.
    assert_eq!(curl_size(&h.outside.name, &at(18512)), 0, "broken");
    h.record(
        "cni-wrong-container-port",
        "the CNI host, a second mapping hostPort 18512 -> containerPort 81 while the service listens on 80",
        &args("18512").iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let r = doctor(&h, &args("18512"));
    assert_eq!(fault(&r), "dnat_wrong_port", "{r:#}");
    one_cni_fail(&r, &h.id());
    assert!(
        r["diagnosis"]["line"]
            .as_str()
            .unwrap()
            .contains("containerPort"),
        "in CNI's words: {r:#}"
    );
    h.apply_fix(&r);
    probe_clear(&h, "18512");
    assert_eq!(curl_size(&h.outside.name, &at(18512)), body.len());
    h.fixes.clear();

    // hostIP 127.0.0.1, tried from outside.
    assert_eq!(curl_size(&h.outside.name, &at(18513)), 0, "broken");
    h.record(
        "cni-published-on-127",
        "the CNI host, a mapping hostPort 18513 with hostIP 127.0.0.1, tried from the outside namespace",
        &args("18513").iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let r = doctor(&h, &args("18513"));
    assert_eq!(fault(&r), "published_elsewhere", "{r:#}");
    one_cni_fail(&r, &h.id());
    let line = r["diagnosis"]["line"].as_str().unwrap();
    assert!(
        line.contains("127.0.0.1 only") && line.contains("hostIP"),
        "in CNI's words: {r:#}"
    );
    h.apply_fix(&r);
    probe_clear(&h, "18513");
    assert_eq!(curl_size(&h.outside.name, &at(18513)), body.len());
    h.fixes.clear();

    // Forwarding off in the CNI host namespace.
    sysctl(&h.host, "net.ipv4.ip_forward=0");
    assert_eq!(curl_size(&h.outside.name, &at(18511)), 0, "broken");
    h.record(
        "cni-ip-forward-off",
        "the CNI host, net.ipv4.ip_forward=0 in its namespace",
        &args("18511").iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let r = doctor(&h, &args("18511"));
    assert_eq!(fault(&r), "ip_forward_off", "{r:#}");
    let fails = r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["verdict"] == "fail")
        .count();
    assert_eq!(fails, 1, "{r:#}");
    run_printed(&r);
    probe_clear(&h, "18511");
    assert_eq!(curl_size(&h.outside.name, &at(18511)), body.len());

    // MTU: the container's eth0 at 9000 behind the 1500 bridge, on a jumbo-frame LAN.
    jumbo_uplink(&h.host, &h.outside);
    assert_eq!(curl_size(&h.outside.name, &at(18511)), body.len());
    h.ctr.ip(&["link", "set", "eth0", "mtu", "9000"]);
    assert!(
        curl_size(&h.outside.name, &at(18511)) < body.len(),
        "broken"
    );
    h.record(
        "cni-mtu-container-9000",
        "the CNI host with uplink and outside at mtu 9000, the container's eth0 set to mtu 9000 (ip -n CTR link set eth0 mtu 9000) while its bridge and host end are 1500",
        &args("18511").iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let r = doctor(&h, &args("18511"));
    assert_eq!(fault(&r), "mtu_mismatch", "{r:#}");
    let command = r["diagnosis"]["fix"]["command"].as_str().unwrap();
    assert!(command.contains("eth0 mtu 1500"), "{r:#}");
    run_printed(&r);
    probe_clear(&h, "18511");
    assert_eq!(curl_size(&h.outside.name, &at(18511)), body.len());

    // The other way: the bridge and the host end at 9000, the container's eth0 at 1500.
    let bridge = h.att.as_ref().unwrap().bridge.clone();
    let veth = h
        .host
        .ip(&["-o", "link", "show", "master", &bridge])
        .split(": ")
        .nth(1)
        .and_then(|n| n.split('@').next())
        .expect("the container's host end on the bridge")
        .to_string();
    h.host.ip(&["link", "set", &bridge, "mtu", "9000"]);
    h.host.ip(&["link", "set", &veth, "mtu", "9000"]);
    h.record(
        "cni-mtu-bridge-9000",
        "the CNI host with the jumbo uplink, its bridge and the container's host end set to mtu 9000, the container's eth0 at 1500",
        &args("18511").iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let r = doctor(&h, &args("18511"));
    assert_eq!(fault(&r), "mtu_mismatch", "{r:#}");
    let command = r["diagnosis"]["fix"]["command"].as_str().unwrap();
    assert!(
        command.contains("eth0 mtu 9000") && !command.contains(&veth),
        "{r:#}"
    );
    run_printed(&r);
    assert!(h.host.ip(&["link", "show", &bridge]).contains("mtu 9000"));
    probe_clear(&h, "18511");
    assert_eq!(curl_size(&h.outside.name, &at(18511)), body.len());
}

/// doctor on a Podman host whose API it cannot ask (no service on the socket it names): a
/// disconnected container looks like flushed netavark rules there, and `podman network reload
/// --all` would not bring it back. The finding says the API is missing; its printed fix starts
/// the API, after which doctor names the real fault, whose printed fix brings the port back.
#[test]
fn podman_without_its_api_says_so_and_the_printed_fix_lets_doctor_name_the_fault() {
    let l = PodmanLab::new("dpapi", 18602);
    let port = l.port.to_string();
    let outside = l.outside_from();
    l.wait_clear(&["--from", &outside, &port]);
    l.p.podman(&["network", "disconnect", &l.net, &l.web]);
    assert_eq!(l.curl_outside(), "000", "broken");
    // A socket nobody serves yet, named the way a user points nettool at Podman.
    let sock = format!("/run/nt-test-papi-{}.sock", std::process::id());
    let _ = std::fs::remove_file(&sock);
    let doctor = || -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_nettool"))
            .args([
                "doctor",
                "--netns",
                &l.p.ns.name,
                "--json",
                "--from",
                &outside,
                &port,
            ])
            .env("NO_COLOR", "1")
            .env_remove("DOCKER_HOST")
            .env("CONTAINER_HOST", format!("unix://{sock}"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let r = doctor();
    // Before: dnat_missing with `podman network reload --all`, which leaves the port broken.
    assert_eq!(fault(&r), "engine_unreachable", "{r:#}");
    assert!(diag_line(&r).contains(&sock), "{r:#}");
    assert!(
        fix_line(&r).ends_with(&format!("podman system service --time=0 unix://{sock} &")),
        "{r:#}"
    );
    l.run_printed_fix(&r);
    wait_for("Podman's API socket", 30, || {
        std::path::Path::new(&sock).exists()
    });
    let mut r = doctor();
    for _ in 0..50 {
        if fault(&r) == "not_on_network" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        r = doctor();
    }
    assert_eq!(fault(&r), "not_on_network", "{r:#}");
    assert!(
        fix_line(&r).ends_with(&format!("podman network connect {} {}", l.net, l.web)),
        "{r:#}"
    );
    l.run_printed_fix(&r);
    l.wait_clear(&["--from", &outside, &port]);
    assert_ne!(l.curl_outside(), "000");
    drop(l);
    let _ = std::fs::remove_file(&sock);
}

use common::names::{name_server, NsAnswer};

/// `unshare` argv that runs nettool `argv` in `host` with `hosts` and `resolv` as its
/// /etc/hosts and /etc/resolv.conf (a mount namespace of its own: the machine's files are
/// untouched).
fn with_resolver(
    hosts: &std::path::Path,
    resolv: &std::path::Path,
    host: &str,
    argv: &[&str],
) -> Command {
    resolver_run(hosts, resolv, host, env!("CARGO_BIN_EXE_nettool"), argv)
}

/// `nettool doctor --netns HOST --json ARGS` with the resolver files `hosts` and `resolv`
/// ([`with_resolver`]): its report and exit code.
fn doctor_with_resolver(
    hosts: &std::path::Path,
    resolv: &std::path::Path,
    host: &str,
    args: &[&str],
) -> (Value, Option<i32>) {
    let mut v = vec!["doctor", "--netns", host, "--json"];
    v.extend_from_slice(args);
    let out = with_resolver(hosts, resolv, host, &v).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor {args:?}: bad JSON ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (r, out.status.code())
}

/// [`with_resolver`] for any program.
fn resolver_run(
    hosts: &std::path::Path,
    resolv: &std::path::Path,
    host: &str,
    program: &str,
    argv: &[&str],
) -> Command {
    with_files(
        &[(hosts, "/etc/hosts"), (resolv, "/etc/resolv.conf")],
        host,
        program,
        argv,
    )
}

/// `program argv` in `host` with each file of `binds` mounted over its path (a mount
/// namespace of its own: the machine's files are untouched).
fn with_files(
    binds: &[(&std::path::Path, &str)],
    host: &str,
    program: &str,
    argv: &[&str],
) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; shift 2; done; shift; exec "$@""#)
        .arg("sh");
    for (file, over) in binds {
        c.arg(file).arg(over);
    }
    c.arg("--")
        .args(["ip", "netns", "exec", host, program])
        .args(argv)
        .env("NO_COLOR", "1");
    c
}

#[test]
fn a_nettool_proxy_whose_target_name_does_not_resolve_is_named_with_the_name() {
    // A `nettool proxy 9090 db.nt-test:80` on the host, the name answered by the host's own
    // nameserver; doctor runs with the same resolver files. Healthy: followed through the
    // name to the container's service. Then the name answers NXDOMAIN: before, the proxy was
    // not recognised at all and doctor said "all clear" with the proxy as the service.
    use std::sync::{Arc, Mutex};
    let lab = Lab::new();
    let dir = std::env::temp_dir().join(unique("docnames"));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let answer = Arc::new(Mutex::new(NsAnswer::A("10.89.0.2".parse().unwrap(), 1)));
    name_server(&lab.host, "db.nt-test", answer.clone());
    let proxy = ChildGuard(
        with_resolver(
            &hosts,
            &resolv,
            &lab.host.name,
            &["proxy", "9090", "db.nt-test:80"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let doctor = |args: &[&str]| doctor_with_resolver(&hosts, &resolv, &lab.host.name, args);
    wait_for("the proxy followed", 10, || {
        doctor(&["9090"]).0["destination"]["via"] == "proxy"
    });
    // Healthy: no finding, the name's address followed into the container.
    let (r, code) = doctor(&["9090", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(
        r["destination"]["netns"],
        lab.container.name.as_str(),
        "{r:#}"
    );
    assert_eq!(hop(&r, "service")["verdict"], "ok", "{r:#}");

    // The name stops resolving: one finding, the proxy and the name, exit 1.
    *answer.lock().unwrap() = NsAnswer::NxDomain;
    let (r, code) = doctor(&["9090"]);
    assert_eq!(fault(&r), "proxy_target_unresolved", "{r:#}");
    assert_eq!(r["diagnosis"]["ok"], false, "{r:#}");
    assert_eq!(code, Some(1), "{r:#}");
    let line = diag_line(&r);
    let pid = proxy.pid();
    for part in [
        format!("nettool (pid {pid})"),
        "proxies to db.nt-test:80, which does not resolve where it runs".into(),
        // The files it was looked up with: the proxy's, not doctor's own /etc/hosts.
        format!("no such name (not in /proc/{pid}/root/etc/hosts; the nameservers of /proc/{pid}/root/etc/resolv.conf know none of its forms)"),
    ] {
        assert!(line.contains(&part), "{part}: {r:#}");
    }
    let fails: Vec<&Value> = r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["verdict"] == "fail")
        .collect();
    assert_eq!(fails.len(), 1, "one cause, one finding: {r:#}");
    let evidence = hop(&r, "receiver")["evidence"].to_string();
    for part in [
        "db.nt-test does not resolve now",
        "getent hosts db.nt-test",
        "dig db.nt-test",
    ] {
        assert!(evidence.contains(part), "{part}: {r:#}");
    }
    // A probe gets through: the proxy dials the address it had. Still the finding, said so.
    let (r, code) = doctor(&["9090", "--probe"]);
    assert_eq!(fault(&r), "proxy_target_unresolved", "{r:#}");
    assert_eq!(
        (r["probe"]["ok"].as_bool(), code),
        (Some(true), Some(1)),
        "{r:#}"
    );
    assert!(
        diag_line(&r).ends_with(
            "; the probe got through the proxy (it dials the last addresses it had for the name)"
        ),
        "{r:#}"
    );
    // DNS down (the nameserver answers nothing): the same finding, with the resolver's reason.
    *answer.lock().unwrap() = NsAnswer::Silent;
    let (r, code) = doctor(&["9090"]);
    assert_eq!(fault(&r), "proxy_target_unresolved", "{r:#}");
    assert_eq!(code, Some(1), "{r:#}");
    assert!(diag_line(&r).contains("127.0.0.1:53"), "{r:#}");
    println!("{}", diag_line(&r));
    *answer.lock().unwrap() = NsAnswer::NxDomain;
    // The text report says the same (docs/doctor.md shows it).
    let out = with_resolver(
        &hosts,
        &resolv,
        &lab.host.name,
        &["doctor", "--netns", &lab.host.name, "9090"],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("broken: nettool (pid"), "{text}");
    // topology draws the proxy's port with its target unresolved (before: not drawn).
    let out = with_resolver(
        &hosts,
        &resolv,
        &lab.host.name,
        &["topology", "--netns", &lab.host.name],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        text.contains("db.nt-test:80 (does not resolve where it runs: no such name"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_socat_forward_to_a_name_is_followed_and_its_unresolved_name_is_named() {
    // `socat TCP-LISTEN:9091,fork,reuseaddr TCP:db.nt-test:80` on the host, the name answered
    // by the host's own nameserver, socat and doctor with the same resolver files. Before,
    // doctor's own socat parser took only an address target: socat was the service, "all
    // clear", also once the name was gone.
    use std::sync::{Arc, Mutex};
    let lab = Lab::new();
    let dir = std::env::temp_dir().join(unique("docsocat"));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let answer = Arc::new(Mutex::new(NsAnswer::A("10.89.0.2".parse().unwrap(), 1)));
    name_server(&lab.host, "db.nt-test", answer.clone());
    let log = dir.join("socat.log");
    let socat = ChildGuard(
        resolver_run(
            &hosts,
            &resolv,
            &lab.host.name,
            "socat",
            &[
                "-d",
                "-T",
                "10",
                "TCP-LISTEN:9091,fork,reuseaddr",
                "TCP:db.nt-test:80",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap(),
    );
    let doctor = |args: &[&str]| doctor_with_resolver(&hosts, &resolv, &lab.host.name, args);
    wait_for("socat followed", 10, || {
        doctor(&["9091"]).0["destination"]["via"] == "proxy"
    });
    // Healthy: socat read with its name, followed to the container's service.
    let (r, code) = doctor(&["9091", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(
        r["destination"]["netns"],
        lab.container.name.as_str(),
        "{r:#}"
    );
    assert_eq!(hop(&r, "service")["verdict"], "ok", "{r:#}");
    let recv = hop(&r, "receiver")["summary"].as_str().unwrap().to_string();
    assert!(
        recv.contains(&format!(
            "socat (pid {}) listens on 0.0.0.0:9091 and proxies to 10.89.0.2:80",
            socat.pid()
        )),
        "{r:#}"
    );
    // The name is gone: the finding a nettool proxy gets, naming socat, exit 1.
    *answer.lock().unwrap() = NsAnswer::NxDomain;
    let (r, code) = doctor(&["9091", "--probe"]);
    assert_eq!(fault(&r), "proxy_target_unresolved", "{r:#}");
    assert_eq!(code, Some(1), "{r:#}");
    let line = diag_line(&r);
    for part in [
        format!("socat (pid {}) listens on 0.0.0.0:9091", socat.pid()),
        "proxies to db.nt-test:80, which does not resolve where it runs".into(),
    ] {
        assert!(line.contains(&part), "{part}: {r:#}");
    }
    // socat accepted the probe and closed it: nothing got through, and the line says nothing
    // of a probe through the proxy.
    assert_eq!(r["probe"]["received"], 0, "{r:#}");
    assert!(!line.contains("the probe got through"), "{r:#}");
    let fails = r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["verdict"] == "fail")
        .count();
    assert_eq!(fails, 1, "one cause, one finding: {r:#}");
    let evidence = hop(&r, "receiver")["evidence"].to_string();
    assert!(
        evidence.contains("socat looks db.nt-test up for each connection it takes"),
        "{r:#}"
    );
    // What the evidence says socat logs, it logs (socat looked the name up for the probe).
    wait_for("socat's failed lookup in its log", 10, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("getaddrinfo(\"db.nt-test\""))
    });
    let out = with_resolver(
        &hosts,
        &resolv,
        &lab.host.name,
        &["doctor", "--netns", &lab.host.name, "9091"],
    )
    .output()
    .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    drop(socat);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_socat_bound_to_loopback_is_named_for_a_client_from_outside() {
    // `socat TCP-LISTEN:9092,bind=127.0.0.1,fork TCP:10.89.0.2:80` on the host, probed from
    // the outside namespace: socat listens on loopback only. Before: "nothing receives
    // tcp/9092 ... no process listens on the host" (and socat read as listening everywhere).
    let lab = Lab::new();
    let socat = lab.host.spawn(&[
        "socat",
        "TCP-LISTEN:9092,bind=127.0.0.1,fork,reuseaddr",
        "TCP:10.89.0.2:80",
    ]);
    wait_for("socat listening", 10, || {
        lab.doctor(&["9092"])["destination"]["via"] == "proxy"
    });
    let outside = lab.outside_source();
    let r = lab.doctor(&["--from", &outside, "9092", "--probe"]);
    assert_eq!(fault(&r), "service_on_loopback", "{r:#}");
    assert_eq!(r["probe"]["ok"], false, "{r:#}");
    let line = diag_line(&r);
    for part in [
        format!("socat (pid {}) listens on 127.0.0.1:9092 only (the host's loopback) and proxies to 10.89.0.2:80", socat.pid()),
        "connections to 192.0.2.1:9092".into(),
        "make it listen on 0.0.0.0:9092 (drop socat's bind=127.0.0.1)".into(),
    ] {
        assert!(line.contains(&part), "{part}: {r:#}");
    }
    let fails = r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["verdict"] == "fail")
        .count();
    assert_eq!(fails, 1, "one cause, one finding: {r:#}");
    // From the host itself (localhost) the same socat is the way in, followed to the container.
    let r = lab.doctor(&["9092", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["destination"]["netns"], lab.container.name.as_str());
    let out = nettool(&[
        "doctor",
        "--netns",
        &lab.host.name,
        "--from",
        &outside,
        "9092",
    ]);
    println!("{}", String::from_utf8_lossy(&out.stdout));
}

/// Wait until a TCP socket listens on `port` in `ns`.
fn wait_tcp_listening(ns: &TestNs, port: u16) {
    wait_for("the service to listen", 10, || {
        in_ns(&ns.name, &["ss", "-Htln"]).contains(&format!(":{port} "))
    });
}

#[test]
fn a_socat_bound_to_another_host_address_is_named_and_a_wildcard_restart_clears_it() {
    // The host has 192.0.2.1 on its uplink and 198.51.100.1 on lo; `socat
    // TCP-LISTEN:9093,bind=198.51.100.1,fork TCP:10.89.0.2:80` listens on the second, the
    // outside client uses the first. Before: "nothing receives tcp/9093 ... no process listens
    // on the host" (no_receiver).
    let lab = Lab::new();
    lab.host
        .ip(&["addr", "add", "198.51.100.1/32", "dev", "lo"]);
    let outside = lab.outside_source();
    let args = ["--from", outside.as_str(), "9093"];
    let socat = lab.host.spawn(&[
        "socat",
        "TCP-LISTEN:9093,bind=198.51.100.1,fork,reuseaddr",
        "TCP:10.89.0.2:80",
    ]);
    wait_tcp_listening(&lab.host, 9093);
    let r = lab.doctor(&[&args[..], &["--probe"]].concat());
    assert_eq!(r["diagnosis"]["ok"], false, "{r:#}");
    assert_eq!(r["probe"]["ok"], false, "{r:#}");
    assert_one_finding(
        &r,
        "service_on_other_address",
        &[
        format!(
            "socat (pid {}) listens on 198.51.100.1:9093 only (another address of the host) and proxies to 10.89.0.2:80",
            socat.pid()
        ),
        format!("connections to 192.0.2.1:9093 from {outside} find nothing"),
        "make it listen on 0.0.0.0:9093 or on 192.0.2.1:9093 (socat's bind=198.51.100.1: drop it, or bind=192.0.2.1)".into(),
        ],
    );
    record_and_print(&lab.host.name, "lab-socat-on-other-address", "socat TCP-LISTEN:9093,bind=198.51.100.1,fork,reuseaddr TCP:10.89.0.2:80 on the host (198.51.100.1/32 on its lo), the client outside using 192.0.2.1", &args);
    // To the address socat listens on, the path is open: socat followed to the container.
    let to_bound = lab.doctor(&[
        "--from",
        &outside,
        "--packet",
        "tcp 192.0.2.2 -> 198.51.100.1:9093 in ext0",
        "--probe",
    ]);
    assert_eq!(to_bound["diagnosis"]["ok"], true, "{to_bound:#}");
    assert_eq!(
        to_bound["destination"]["netns"],
        lab.container.name.as_str()
    );
    // A nettool proxy with an address in its LISTEN: the same finding, in its own words.
    let proxy = lab.host.spawn(&[
        env!("CARGO_BIN_EXE_nettool"),
        "proxy",
        "198.51.100.1:9095",
        "10.89.0.2:80",
    ]);
    wait_tcp_listening(&lab.host, 9095);
    let r = lab.doctor(&["--from", &outside, "9095"]);
    assert_eq!(fault(&r), "service_on_other_address", "{r:#}");
    assert!(
        diag_line(&r).contains(&format!(
            "nettool (pid {}) listens on 198.51.100.1:9095 only (another address of the host) and proxies to 10.89.0.2:80: connections to 192.0.2.1:9095 from {outside} find nothing; make it listen on 0.0.0.0:9095 or on 192.0.2.1:9095 (its LISTEN address 198.51.100.1:9095: give the port alone, or 192.0.2.1:9095)",
            proxy.pid()
        )),
        "{r:#}"
    );
    drop(proxy);
    // The fix as printed: socat again without bind= (every address). All clear, probe through.
    drop(socat);
    let _socat = lab.host.spawn(&[
        "socat",
        "TCP-LISTEN:9093,fork,reuseaddr",
        "TCP:10.89.0.2:80",
    ]);
    wait_for("socat on every address", 10, || {
        lab.doctor(&args)["diagnosis"]["ok"] == true
    });
    let r = lab.doctor(&[&args[..], &["--probe"]].concat());
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    assert_eq!(fails(&r), 0, "a wildcard listener: no finding: {r:#}");
    assert_eq!(r["destination"]["netns"], lab.container.name.as_str());
}

#[test]
fn an_ipv6_listener_on_another_host_address_is_named_and_a_wildcard_restart_clears_it() {
    // The host has 2001:db8:1::1 on its uplink and fd00:6::1 on lo; `nettool serve echo
    // --bind fd00:6::1` (a plain service, no proxy) listens on the second; the outside client
    // uses the first. Before: no_receiver.
    let lab = Lab::new();
    uplink6_on(&lab.host, "ext0", &lab.outside);
    lab.host
        .ip(&["-6", "addr", "add", "fd00:6::1/128", "dev", "lo", "nodad"]);
    let outside = lab.outside_source();
    let args = [
        "--from",
        outside.as_str(),
        "--packet",
        "tcp 2001:db8:1::2 -> [2001:db8:1::1]:9094 in ext0",
    ];
    let nt = env!("CARGO_BIN_EXE_nettool");
    let service = lab
        .host
        .spawn(&[nt, "serve", "echo", "9094", "--bind", "fd00:6::1"]);
    wait_tcp_listening(&lab.host, 9094);
    let r = lab.doctor(&[&args[..], &["--probe"]].concat());
    assert_eq!(r["probe"]["ok"], false, "{r:#}");
    assert_one_finding(
        &r,
        "service_on_other_address",
        &[
            format!(
                "nettool (pid {}) listens on [fd00:6::1]:9094 only (another address of the host): ",
                service.pid()
            ),
            format!("connections to [2001:db8:1::1]:9094 from {outside} find nothing"),
            "make it listen on [::]:9094 or on [2001:db8:1::1]:9094 (its listen/bind setting)"
                .into(),
        ],
    );
    record_and_print(&lab.host.name, "lab-ipv6-service-on-other-address", "nettool serve echo 9094 --bind fd00:6::1 on the host (fd00:6::1/128 on its lo), the client outside using 2001:db8:1::1", &args);
    // The fix as printed: the service again on [::].
    drop(service);
    let _service = lab
        .host
        .spawn(&[nt, "serve", "echo", "9094", "--bind", "::"]);
    wait_for("the service on [::]", 10, || {
        lab.doctor(&args)["diagnosis"]["ok"] == true
    });
    let r = lab.doctor(&[&args[..], &["--probe"]].concat());
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    assert_eq!(fails(&r), 0, "{r:#}");
}

#[test]
fn a_container_service_on_another_of_its_addresses_gets_a_relay_that_works() {
    // Inside the container the service listens on 10.89.0.9 (a second address of eth0); the
    // DNAT sends to 10.89.0.2. Before: not_listening with `nettool serve` as the fix.
    let mut lab = Lab::new();
    lab.service = None;
    lab.container
        .ip(&["addr", "add", "10.89.0.9/24", "dev", "eth0"]);
    lab.service = Some(lab.container.spawn(&[
        "socat",
        "TCP-LISTEN:80,bind=10.89.0.9,fork,reuseaddr",
        "EXEC:cat",
    ]));
    lab.wait_listening(80);
    let outside = lab.outside_source();
    let args = ["--from", outside.as_str(), "8080"];
    record_and_print(&lab.host.name, "lab-service-on-other-container-address", "socat TCP-LISTEN:80,bind=10.89.0.9,fork,reuseaddr EXEC:cat in the container (10.89.0.9/24 a second address of its eth0), the DNAT to 10.89.0.2:80", &args);
    let broken = break_fix_probe(&mut lab, &args, "service_on_other_address");
    let line = diag_line(&broken);
    for part in [
        format!(
            "socat listens on 10.89.0.9:80 inside {}, on that address only: connections to 10.89.0.2:80 find nothing",
            lab.container.name
        ),
        // socat's own setting, as on the host (before: "its listen/bind setting").
        "make socat listen on 0.0.0.0:80 or on 10.89.0.2:80 (socat's bind=10.89.0.9: drop it, or bind=10.89.0.2)".into(),
    ] {
        assert!(line.contains(&part), "{part}: {broken:#}");
    }
    assert!(
        fix_line(&broken).contains("proxy 10.89.0.2:80 10.89.0.9:80"),
        "{broken:#}"
    );
    assert_eq!(fails(&broken), 1, "{broken:#}");
}

#[test]
fn a_proxy_with_two_maps_on_one_port_is_named_with_the_map_of_its_listen_address() {
    // `nettool proxy -p 198.51.100.2:9096=10.89.0.3:80 -p 198.51.100.1:9096=10.89.0.2:80` on
    // the host (both addresses on its lo): each socket proxies to its own map's target. Before:
    // doctor took the port's first map for both, so the 198.51.100.1 socket "proxies to
    // 10.89.0.3:80".
    let lab = Lab::new();
    for a in ["198.51.100.1/32", "198.51.100.2/32"] {
        lab.host.ip(&["addr", "add", a, "dev", "lo"]);
    }
    let proxy = lab.host.spawn(&[
        env!("CARGO_BIN_EXE_nettool"),
        "proxy",
        "-p",
        "198.51.100.2:9096=10.89.0.3:80",
        "-p",
        "198.51.100.1:9096=10.89.0.2:80",
    ]);
    wait_for("both listeners", 10, || {
        let ss = in_ns(&lab.host.name, &["ss", "-Htln"]);
        ss.contains("198.51.100.1:9096 ") && ss.contains("198.51.100.2:9096 ")
    });
    let outside = lab.outside_source();
    let r = lab.doctor(&["--from", &outside, "9096"]);
    assert_eq!(fault(&r), "service_on_other_address", "{r:#}");
    assert!(
        diag_line(&r).contains(&format!(
            "nettool (pid {}) listens on 198.51.100.1:9096 only (another address of the host) and proxies to 10.89.0.2:80: ",
            proxy.pid()
        )),
        "{r:#}"
    );
    assert_eq!(fails(&r), 1, "{r:#}");
    // To each address: that map's target (10.89.0.2 is the container, the probe gets through).
    for (addr, target) in [
        ("198.51.100.1", "10.89.0.2:80"),
        ("198.51.100.2", "10.89.0.3:80"),
    ] {
        let r = lab.doctor(&[
            "--from",
            &outside,
            "--packet",
            &format!("tcp 192.0.2.2 -> {addr}:9096 in ext0"),
        ]);
        assert_eq!(hop(&r, "receiver")["verdict"], "ok", "{addr}: {r:#}");
        assert!(
            summary(&r, "receiver")
                .ends_with(&format!("listens on {addr}:9096 and proxies to {target}")),
            "{addr}: {r:#}"
        );
    }
    let r = lab.doctor(&[
        "--from",
        &outside,
        "--packet",
        "tcp 192.0.2.2 -> 198.51.100.1:9096 in ext0",
        "--probe",
    ]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    assert_eq!(r["destination"]["netns"], lab.container.name.as_str());
}

#[test]
fn a_host_listener_on_ipv6_only_is_named_for_an_ipv4_client_and_v6only_off_clears_it() {
    // `socat TCP6-LISTEN:9099,ipv6only=1,fork TCP:10.89.0.2:80` on the host: [::] with
    // IPV6_V6ONLY, and the outside client uses 192.0.2.1 over IPv4. Before: no_receiver
    // ("nothing receives ... no process listens on the host").
    let lab = Lab::new();
    let outside = lab.outside_source();
    let args = ["--from", outside.as_str(), "9099"];
    let socat = lab.host.spawn(&[
        "socat",
        "TCP6-LISTEN:9099,ipv6only=1,fork,reuseaddr",
        "TCP:10.89.0.2:80",
    ]);
    wait_tcp_listening(&lab.host, 9099);
    let r = lab.doctor(&[&args[..], &["--probe"]].concat());
    assert_eq!(r["diagnosis"]["hop"], "receiver", "{r:#}");
    assert_eq!(r["probe"]["ok"], false, "{r:#}");
    assert_one_finding(
        &r,
        "service_ipv6_only",
        &[
        format!(
            "socat (pid {}) listens on [::]:9099 with IPV6_V6ONLY set, IPv6 only and proxies to 10.89.0.2:80",
            socat.pid()
        ),
        format!("connections over IPv4 to 192.0.2.1:9099 from {outside} find nothing"),
        "make it listen on 0.0.0.0:9099 too, or on [::]:9099 with IPV6_V6ONLY off (socat's ipv6only=1 (ipv6-v6only=1): drop it, or give ipv6-v6only=0)".into(),
        ],
    );
    record_and_print(&lab.host.name, "lab-socat-ipv6-only", "socat TCP6-LISTEN:9099,ipv6only=1,fork,reuseaddr TCP:10.89.0.2:80 on the host, the client outside over IPv4 (192.0.2.1)", &args);
    // The fix as printed: ipv6-v6only=0, the dual-stack socket takes IPv4. All clear.
    drop(socat);
    let _socat = lab.host.spawn(&[
        "socat",
        "TCP6-LISTEN:9099,ipv6-v6only=0,fork,reuseaddr",
        "TCP:10.89.0.2:80",
    ]);
    wait_for("socat on both families", 10, || {
        lab.doctor(&args)["diagnosis"]["ok"] == true
    });
    let r = lab.doctor(&[&args[..], &["--probe"]].concat());
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    assert_eq!(fails(&r), 0, "{r:#}");
    assert_eq!(r["destination"]["netns"], lab.container.name.as_str());
}

#[test]
fn ports_by_service_name_in_socat_and_nettool_proxy_are_read_from_the_process_services_file() {
    // A services file of the test's own names (none in the machine's /etc/services), mounted
    // as /etc/services for a socat and a nettool proxy, each in a mount namespace of its own:
    // both listen on the named ports, and doctor (with the machine's file) reads each one's
    // names from /proc/PID/root/etc/services and follows them to the container. Before: a
    // socat `TCP-LISTEN:NAME` was no forward to doctor, and nettool proxy refused it ("'NAME'
    // is not a port").
    let lab = Lab::new();
    let dir = std::env::temp_dir().join(unique("docservices"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("services");
    std::fs::write(
        &file,
        "nt-test-front\t9097/tcp\nnt-test-front2\t9098/tcp\nnt-test-back\t80/tcp\n",
    )
    .unwrap();
    let run = |program: &str, argv: &[&str]| {
        ChildGuard(
            with_files(&[(&file, "/etc/services")], &lab.host.name, program, argv)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let socat = run(
        "socat",
        &[
            "TCP-LISTEN:nt-test-front,fork,reuseaddr",
            "TCP:10.89.0.2:nt-test-back",
        ],
    );
    let proxy = run(
        env!("CARGO_BIN_EXE_nettool"),
        &[
            "proxy",
            "TCP-LISTEN:nt-test-front2,fork",
            "TCP:10.89.0.2:nt-test-back",
        ],
    );
    wait_tcp_listening(&lab.host, 9097);
    wait_tcp_listening(&lab.host, 9098);
    for (port, comm, pid) in [
        ("9097", "socat", socat.pid()),
        ("9098", "nettool", proxy.pid()),
    ] {
        let r = lab.doctor(&[port, "--probe"]);
        assert_eq!(r["diagnosis"]["ok"], true, "{comm}: {r:#}");
        assert_eq!(r["probe"]["ok"], true, "{comm}: {r:#}");
        assert_eq!(
            r["destination"]["netns"],
            lab.container.name.as_str(),
            "{r:#}"
        );
        let recv = hop(&r, "receiver")["summary"].as_str().unwrap();
        assert!(
            recv.contains(&format!(
                "{comm} (pid {pid}) listens on 0.0.0.0:{port} and proxies to 10.89.0.2:80"
            )),
            "{r:#}"
        );
    }
    // Without the file, nettool proxy names what is missing where it looked.
    let out = nettool(&["proxy", "TCP-LISTEN:nt-test-front,fork", "TCP:10.89.0.2:80"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'nt-test-front' is not a port (1-65535) nor a tcp service in /etc/services"),
        "{err}"
    );
    drop((socat, proxy));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Doctor's JSON report run with the resolver files `hosts` and `resolv` in `ns`.
fn doctor_viewing(
    hosts: &std::path::Path,
    resolv: &std::path::Path,
    ns: &str,
    args: &[&str],
) -> (Value, Option<i32>) {
    let mut v = vec!["doctor", "--netns", ns, "--json"];
    v.extend_from_slice(args);
    let out = with_resolver(hosts, resolv, ns, &v).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor {args:?}: bad JSON ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (r, out.status.code())
}

#[test]
fn a_proxys_target_name_is_looked_up_with_the_proxys_own_hosts_file() {
    // `nettool proxy 9095 db.nt-test:80` in a private mount namespace whose /etc/hosts knows
    // db.nt-test; doctor's own /etc/hosts does not, and its nameserver says NXDOMAIN. Before,
    // doctor used its own files: proxy_target_unresolved on a healthy host. Now it reads
    // /proc/PID/root/etc/hosts: followed to the container, all clear.
    use std::sync::{Arc, Mutex};
    let lab = Lab::new();
    let dir = std::env::temp_dir().join(unique("docview"));
    std::fs::create_dir_all(&dir).unwrap();
    let own_hosts = dir.join("hosts");
    std::fs::write(&own_hosts, "127.0.0.1 localhost\n").unwrap();
    let proxy_hosts = dir.join("proxy-hosts");
    std::fs::write(&proxy_hosts, "127.0.0.1 localhost\n10.89.0.2 db.nt-test\n").unwrap();
    let socat_hosts = dir.join("socat-hosts");
    std::fs::write(&socat_hosts, "127.0.0.1 localhost\n").unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    name_server(
        &lab.host,
        "db.nt-test",
        Arc::new(Mutex::new(NsAnswer::NxDomain)),
    );
    let proxy = ChildGuard(
        with_resolver(
            &proxy_hosts,
            &resolv,
            &lab.host.name,
            &["proxy", "9095", "db.nt-test:80"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let doctor = |args: &[&str]| doctor_viewing(&own_hosts, &resolv, &lab.host.name, args);
    let pid = proxy.pid();
    wait_for("the proxy read", 10, || {
        doctor(&["9095"])
            .0
            .to_string()
            .contains(&format!("(pid {pid})"))
    });
    let (r, code) = doctor(&["9095", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["destination"]["via"], "proxy", "{r:#}");
    assert_eq!(
        r["destination"]["netns"],
        lab.container.name.as_str(),
        "{r:#}"
    );
    assert_eq!(hop(&r, "service")["verdict"], "ok", "{r:#}");

    // A socat whose own view does not know the name either (while doctor's does): still the
    // finding, with the files it was looked up with (before: doctor's own hosts file
    // followed it to the container, all clear).
    let doctor_hosts = dir.join("doctor-hosts");
    std::fs::write(&doctor_hosts, "127.0.0.1 localhost\n10.89.0.2 db.nt-test\n").unwrap();
    let socat = ChildGuard(
        resolver_run(
            &socat_hosts,
            &resolv,
            &lab.host.name,
            "socat",
            &[
                "-T",
                "10",
                "TCP-LISTEN:9097,fork,reuseaddr",
                "TCP:db.nt-test:80",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let doctor = |args: &[&str]| doctor_viewing(&doctor_hosts, &resolv, &lab.host.name, args);
    wait_for("socat listening", 10, || {
        doctor(&["9097"]).0["hops"]
            .to_string()
            .contains("socat (pid")
    });
    let (r, code) = doctor(&["9097"]);
    assert_eq!(fault(&r), "proxy_target_unresolved", "{r:#}");
    assert_eq!(code, Some(1), "{r:#}");
    let evidence = hop(&r, "receiver")["evidence"].to_string();
    let pid = socat.pid();
    let said = format!(
        "looked up as pid {pid} does: /proc/{pid}/root/etc/hosts, /proc/{pid}/root/etc/resolv.conf, nameserver 127.0.0.1 from its network namespace (doctor's too)"
    );
    assert!(evidence.contains(&said), "{said}: {r:#}");
    // The text reports (docs/doctor.md shows them).
    for (hosts, port) in [(&own_hosts, "9095"), (&doctor_hosts, "9097")] {
        let out = with_resolver(
            hosts,
            &resolv,
            &lab.host.name,
            &["doctor", "--netns", &lab.host.name, port],
        )
        .output()
        .unwrap();
        println!("{}", String::from_utf8_lossy(&out.stdout));
    }
    drop((proxy, socat));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_proxys_target_name_is_asked_from_its_own_network_namespace() {
    // `nettool proxy --listen-netns HOST 9096 db.nt-test:80` running in another namespace,
    // whose nameserver on 127.0.0.1 (as Docker's 127.0.0.11 is: reachable only from inside)
    // knows db.nt-test. Doctor's namespace has its own 127.0.0.1:53 saying NXDOMAIN. Before:
    // asked from doctor's namespace, proxy_target_unresolved. Now: asked from the proxy's.
    use std::sync::{Arc, Mutex};
    let lab = Lab::new();
    let dir = std::env::temp_dir().join(unique("docviewns"));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    name_server(
        &lab.host,
        "db.nt-test",
        Arc::new(Mutex::new(NsAnswer::NxDomain)),
    );
    name_server(
        &lab.outside,
        "db.nt-test",
        Arc::new(Mutex::new(NsAnswer::A("10.89.0.2".parse().unwrap(), 30))),
    );
    let proxy = ChildGuard(
        with_resolver(
            &hosts,
            &resolv,
            &lab.outside.name,
            &[
                "proxy",
                "--listen-netns",
                &lab.host.name,
                "9096",
                "db.nt-test:80",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let doctor = |args: &[&str]| doctor_viewing(&hosts, &resolv, &lab.host.name, args);
    wait_for("the proxy recognised", 10, || {
        let r = doctor(&["9096"]).0;
        r["destination"]["via"] == "proxy" || fault(&r) == "proxy_target_unresolved"
    });
    let (r, code) = doctor(&["9096"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["destination"]["via"], "proxy", "{r:#}");
    assert_eq!(
        r["destination"]["netns"],
        lab.container.name.as_str(),
        "{r:#}"
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
