//! `nettool doctor` on a rootless Podman host (tests/common/rootless.rs): a user's container
//! published with `-p`, rootlessport listening in the test's host namespace and relaying into
//! the container's slirp4netns namespace. doctor (as root) follows rootlessport into the
//! container: a healthy one is all clear at the container's own listener, a service on the
//! container's loopback is named, and a stopped container gets Podman's `podman start` run as
//! its user, which the test runs as printed.

mod common;

use std::process::Command;

use common::rootless::{docker_missing, missing, RootlessDockerd, RootlessHost, USER};
use common::*;
use serde_json::Value;

/// `nettool doctor --netns HOST ARGS... --json`.
fn doctor(host: &TestNs, args: &[&str]) -> Value {
    doctor_json(&host.name, args)
}

/// The text report, for the test's output (and docs/doctor.md).
fn doctor_text(host: &TestNs, args: &[&str]) -> String {
    let mut v = vec!["doctor", "--netns", &host.name];
    v.extend_from_slice(args);
    let out = nettool(&v);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hop<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == id)
        .unwrap_or_else(|| panic!("no {id} hop: {report:#}"))
}

fn fails(report: &Value) -> usize {
    report["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["verdict"] == "fail")
        .count()
}

/// The page a container's httpd serves (busybox httpd answers 404 for a missing index).
fn answers(host: &TestNs, port: u16) -> bool {
    let code = http_code(host, &format!("http://127.0.0.1:{port}/"));
    !code.is_empty() && code != "000"
}

/// One finding: the service listens on container `name`'s loopback only.
fn on_containers_loopback(r: &Value, name: &str) {
    assert_eq!(r["diagnosis"]["ok"], false, "{r:#}");
    assert_eq!(r["diagnosis"]["fault"], "service_on_loopback", "{r:#}");
    assert_eq!(r["diagnosis"]["hop"], "service", "{r:#}");
    assert_eq!(fails(r), 1, "one cause, one finding: {r:#}");
    let line = r["diagnosis"]["line"].as_str().unwrap();
    assert!(
        line.contains("listens on 127.0.0.1:80")
            && line.contains(&format!("inside container:{name}")),
        "{line}"
    );
}

#[test]
fn a_rootless_container_is_followed_through_rootlessport_into_its_namespace() {
    if let Some(why) = missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut host = RootlessHost::start("rl-healthy");
    let name = host.run("web", &["-p", "8089:80"], &["httpd", "-f", "-p", "80"]);
    wait_for("the rootless container to answer", 20, || {
        answers(&host.ns, 8089)
    });
    // Without the user's API service: what rootlessport and conmon say of themselves.
    for api in [false, true] {
        if api {
            host.serve_api();
        }
        let r = doctor(&host.ns, &["8089", "--probe"]);
        if api {
            record_capture(
                &[],
                &host.ns.name,
                "rootless-healthy",
                "rootless Podman 4.3.1 (user nt-rootless, slirp4netns): web (busybox httpd) -p 8089:80, the user's API served (tests/rootless.rs)",
                &["8089", "--probe"],
            );
        }
        println!(
            "api {api}:\n{}",
            doctor_text(&host.ns, &["8089", "--probe"])
        );
        assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
        let dest = &r["destination"];
        assert_eq!(dest["via"], "rootlessport", "{r:#}");
        assert_eq!(dest["port"], 80, "{r:#}");
        assert_eq!(dest["netns"], format!("container:{name}"), "{r:#}");
        let receiver = hop(&r, "receiver");
        assert!(
            receiver["summary"]
                .as_str()
                .unwrap()
                .starts_with("rootlessport (pid "),
            "{r:#}"
        );
        // The container's own listener, not rootlessport's socket on the host.
        let service = hop(&r, "service");
        assert_eq!(service["verdict"], "ok", "{r:#}");
        let s = service["summary"].as_str().unwrap();
        assert!(
            s.starts_with("httpd (pid ") && s.contains(&format!("in container:{name}")),
            "{s}"
        );
        let line = r["diagnosis"]["line"].as_str().unwrap();
        assert!(line.contains(&format!("in container:{name}")), "{line}");
        let engine = r["hops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == "engine");
        if api {
            // `doctor container:NAME[:80]`: no DNAT names its port, rootlessport does.
            for target in [format!("container:{name}"), format!("container:{name}:80")] {
                let c = doctor(&host.ns, &[&target]);
                assert_eq!(c["diagnosis"]["ok"], true, "{target}: {c:#}");
                assert_eq!(c["destination"]["via"], "rootlessport", "{c:#}");
                assert_eq!(c["packet"]["dport"], 8089, "{c:#}");
            }
            let e = engine.unwrap_or_else(|| panic!("no engine hop with the API: {r:#}"));
            assert_eq!(e["verdict"], "ok", "{r:#}");
            assert!(
                e["summary"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("(rootless, user {USER}) is running")),
                "{r:#}"
            );
        } else {
            assert!(engine.is_none(), "{r:#}");
            assert!(
                receiver["evidence"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e.as_str().unwrap().contains("is the one port that listens")),
                "{r:#}"
            );
        }
    }
}

#[test]
fn a_rootless_service_on_the_containers_loopback_is_named() {
    if let Some(why) = missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut host = RootlessHost::start("rl-loopback");
    let name = host.run(
        "lo",
        &["-p", "8090:80"],
        &["httpd", "-f", "-p", "127.0.0.1:80"],
    );
    // rootlessport answers the connection, then resets it: nothing listens on 10.0.2.100:80.
    wait_for("rootlessport on 8090", 20, || {
        sh(&[
            "ip",
            "netns",
            "exec",
            &host.ns.name,
            "ss",
            "-Htln",
            "sport = :8090",
        ])
        .contains("8090")
    });
    assert!(
        !answers(&host.ns, 8090),
        "the service should not answer yet"
    );
    for api in [false, true] {
        if api {
            host.serve_api();
        }
        let r = doctor(&host.ns, &["8090"]);
        if !api {
            record_capture(
                &[],
                &host.ns.name,
                "rootless-service-on-loopback",
                "rootless Podman: httpd -f -p 127.0.0.1:80 published -p 8090:80, the user's API not served (tests/rootless.rs)",
                &["8090"],
            );
        }
        println!(
            "api {api}:\n{}",
            doctor_text(&host.ns, &["8090", "--probe"])
        );
        on_containers_loopback(&r, &name);
    }
}

#[test]
fn a_stopped_rootless_container_gets_podman_start_as_its_user() {
    if let Some(why) = missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut host = RootlessHost::start("rl-stopped");
    host.serve_api();
    let name = host.run("stop", &["-p", "8091:80"], &["httpd", "-f", "-p", "80"]);
    wait_for("the rootless container to answer", 20, || {
        answers(&host.ns, 8091)
    });
    host.podman(&["stop", "-t", "0", &name]);
    assert!(
        !answers(&host.ns, 8091),
        "a stopped container should not answer"
    );
    let r = doctor(&host.ns, &["8091"]);
    println!("{}", doctor_text(&host.ns, &["8091"]));
    record_capture(
        &[],
        &host.ns.name,
        "rootless-stopped",
        "rootless Podman: podman stop (as the user) of a container published -p 8091:80, the user's API served (tests/rootless.rs)",
        &["8091"],
    );
    assert_eq!(r["diagnosis"]["fault"], "container_not_running", "{r:#}");
    assert_eq!(fails(&r), 1, "{r:#}");
    let fix = &r["diagnosis"]["fix"];
    let command = fix["command"].as_str().unwrap();
    let want: Vec<String> = host.as_user(&["podman", "start", &name]);
    assert!(command.ends_with(&want.join(" ")), "{command}");
    assert!(
        command.starts_with(&format!("nsenter --net={} ", host.ns.path())),
        "{command}"
    );
    // The fix as printed, by a shell.
    let out = Command::new("sh").args(["-c", command]).output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the restarted container to answer", 20, || {
        answers(&host.ns, 8091)
    });
    let r = doctor(&host.ns, &["8091"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
}

/// A rootless relay (rootlessport, rootlesskit) accepts on the host, so the host's INPUT chain
/// judges the client's packet: all clear from `outside` (uplink 192.0.2.1), then an INPUT
/// DROP of `port` is the one FAIL, and its printed fix, run by sh, lets the port answer again.
/// `capture`: (name, what) to record the dropped case as.
fn input_drop_named_and_fixed(
    host: &TestNs,
    outside: &TestNs,
    port: u16,
    capture: Option<(&str, &str)>,
) {
    let from = format!("outside:{}", outside.name);
    let p = port.to_string();
    let url = format!("http://192.0.2.1:{port}/");
    let http = |ns: &TestNs| http_code(ns, &url);
    wait_for("the rootless container to answer from outside", 20, || {
        !http(outside).is_empty() && http(outside) != "000"
    });
    let r = doctor(host, &["--from", &from, &p, "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    in_ns(
        host,
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP",
        ],
    );
    assert_eq!(http(outside), "000");
    let r = doctor(host, &["--from", &from, &p]);
    println!("{}", doctor_text(host, &["--from", &from, &p]));
    if let Some((name, what)) = capture {
        record_capture(&[], &host.name, name, what, &["--from", &from, &p]);
    }
    assert_eq!(r["diagnosis"]["fault"], "firewall_drop", "{r:#}");
    assert_eq!(fails(&r), 1, "{r:#}");
    let command = r["diagnosis"]["fix"]["command"].as_str().unwrap();
    let out = Command::new("sh").args(["-c", command]).output().unwrap();
    assert!(out.status.success(), "{command}: {out:?}");
    wait_for("the port to answer from outside again", 10, || {
        http(outside) != "000"
    });
}

#[test]
fn a_rootless_port_dropped_by_the_hosts_input_chain_is_named_from_outside() {
    if let Some(why) = missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut host = RootlessHost::start("rl-input");
    let outside = TestNs::new("rl-input-o");
    uplink(&host.ns, &outside);
    host.run("in", &["-p", "8092:80"], &["httpd", "-f", "-p", "80"]);
    input_drop_named_and_fixed(
        &host.ns,
        &outside,
        8092,
        Some((
            "rootless-input-drop",
            "rootless Podman: -p 8092:80, iptables -A INPUT -p tcp --dport 8092 -j DROP in the host namespace, the user's API not served (tests/rootless.rs)",
        )),
    );
}

/// rootlesskit (builtin port driver) holds `port` in the host namespace.
fn kit_listens(host: &RootlessDockerd, port: u16) -> bool {
    let ss = sh(&[
        "ip",
        "netns",
        "exec",
        &host.ns.name,
        "ss",
        "-Htlnp",
        &format!("sport = :{port}"),
    ]);
    ss.contains("rootlesskit")
}

#[test]
fn a_rootless_docker_port_is_followed_through_rootlesskit_into_dockerds_namespace() {
    if let Some(why) = docker_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut host = RootlessDockerd::start("rld-healthy");
    let name = host.run("web", &["-p", "8095:80"], &["httpd", "-f", "-p", "80"]);
    wait_for("the rootless Docker container to answer", 20, || {
        answers(&host.ns, 8095)
    });
    assert!(kit_listens(&host, 8095), "rootlesskit should hold 8095");
    let r = doctor(&host.ns, &["8095", "--probe"]);
    println!("{}", doctor_text(&host.ns, &["8095", "--probe"]));
    record_capture(
        &[],
        &host.ns.name,
        "rootless-docker-healthy",
        "rootless Docker 20.10 (dockerd-rootless.sh as nt-rootless, rootlesskit builtin port driver): busybox httpd -p 8095:80 (tests/rootless.rs)",
        &["8095", "--probe"],
    );
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    assert_eq!(fails(&r), 0, "{r:#}");
    let dest = &r["destination"];
    assert_eq!(dest["port"], 80, "{r:#}");
    assert_eq!(dest["netns"], format!("container:{name}"), "{r:#}");
    // The first receiver is rootlesskit on the host; the path goes on in its child namespace.
    let kit = hop(&r, "receiver");
    let s = kit["summary"].as_str().unwrap();
    assert!(
        s.starts_with("rootlesskit (pid ") && s.contains(&format!("user {USER}")),
        "{s}"
    );
    assert!(
        s.contains("relays to 127.0.0.1:8095 in its child namespace"),
        "{s}"
    );
    let receivers: Vec<&str> = r["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["id"] == "receiver")
        .map(|h| h["summary"].as_str().unwrap())
        .collect();
    assert!(
        receivers
            .iter()
            .any(|s| s.starts_with("docker-proxy (pid ")),
        "docker-proxy in rootlesskit's namespace: {receivers:?}"
    );
    // The engine asked at the user's docker.sock (no DOCKER_HOST given).
    let engine = hop(&r, "engine");
    assert_eq!(engine["verdict"], "ok", "{r:#}");
    assert!(
        engine["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("(rootless, user {USER}) is running")),
        "{r:#}"
    );
    // The container's own listener, not rootlesskit's socket on the host.
    let service = hop(&r, "service");
    assert_eq!(service["verdict"], "ok", "{r:#}");
    let s = service["summary"].as_str().unwrap();
    assert!(
        s.starts_with("httpd (pid ") && s.contains(&format!("in container:{name}")),
        "{s}"
    );
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    // `doctor container:NAME[:80]`: the port rootlesskit holds for it, followed the same way.
    for target in [format!("container:{name}"), format!("container:{name}:80")] {
        let c = doctor(&host.ns, &[&target]);
        println!("{target}:\n{}", doctor_text(&host.ns, &[&target]));
        assert_eq!(c["diagnosis"]["ok"], true, "{target}: {c:#}");
        assert_eq!(c["packet"]["dport"], 8095, "{c:#}");
        assert_eq!(
            c["destination"]["netns"],
            format!("container:{name}"),
            "{c:#}"
        );
    }
}

#[test]
fn a_rootless_docker_service_on_the_containers_loopback_is_named() {
    if let Some(why) = docker_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut host = RootlessDockerd::start("rld-loopback");
    let name = host.run(
        "lo",
        &["-p", "8096:80"],
        &["httpd", "-f", "-p", "127.0.0.1:80"],
    );
    wait_for("rootlesskit on 8096", 20, || kit_listens(&host, 8096));
    assert!(!answers(&host.ns, 8096), "the service should not answer");
    let r = doctor(&host.ns, &["8096", "--probe"]);
    println!("{}", doctor_text(&host.ns, &["8096", "--probe"]));
    on_containers_loopback(&r, &name);
}

#[test]
fn a_stopped_rootless_docker_container_gets_docker_start_as_its_user() {
    if let Some(why) = docker_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut host = RootlessDockerd::start("rld-stopped");
    let name = host.run("stop", &["-p", "8097:80"], &["httpd", "-f", "-p", "80"]);
    wait_for("the rootless Docker container to answer", 20, || {
        answers(&host.ns, 8097)
    });
    host.docker(&["stop", "-t", "0", &name]);
    assert!(
        !answers(&host.ns, 8097),
        "a stopped container should not answer"
    );
    let r = doctor(&host.ns, &["8097"]);
    println!("{}", doctor_text(&host.ns, &["8097"]));
    record_capture(
        &[],
        &host.ns.name,
        "rootless-docker-stopped",
        "rootless Docker: docker stop (as the user) of a container published -p 8097:80 (tests/rootless.rs)",
        &["8097"],
    );
    assert_eq!(r["diagnosis"]["fault"], "container_not_running", "{r:#}");
    assert_eq!(fails(&r), 1, "{r:#}");
    // docker as the user, with its socket named: the CLI works from anywhere as printed.
    let command = r["diagnosis"]["fix"]["command"].as_str().unwrap();
    assert_eq!(
        command,
        host.as_user(&["docker", "start", &name]).join(" "),
        "{r:#}"
    );
    let out = Command::new("sh").args(["-c", command]).output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the restarted container to answer", 20, || {
        answers(&host.ns, 8097)
    });
    let r = doctor(&host.ns, &["8097", "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
}

#[test]
fn a_rootless_docker_port_dropped_by_the_hosts_input_chain_is_named_from_outside() {
    if let Some(why) = docker_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut host = RootlessDockerd::start("rld-input");
    let outside = TestNs::new("rld-input-o");
    uplink(&host.ns, &outside);
    host.run("in", &["-p", "8098:80"], &["httpd", "-f", "-p", "80"]);
    input_drop_named_and_fixed(&host.ns, &outside, 8098, None);
}
