//! `nettool doctor` on a rootless Podman host and a rootless Docker host
//! (tests/common/rootless.rs): a user's container published with `-p`, the engine's relay
//! (rootlessport, rootlesskit) listening in the test's host namespace and relaying into the
//! container. doctor (as root) follows the relay into the container: a healthy one is all
//! clear at the container's own listener, a service on the container's loopback is named, a
//! stopped container gets the engine's `start` run as its user, which the test runs as
//! printed, and a port the host's INPUT chain drops is named from outside. Each scenario is
//! written once, generic over the harness ([`Rootless`]), and run by one test per engine.

mod common;

use std::process::Command;

use common::rootless::{Rootless, RootlessDockerd, RootlessHost, USER};
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

/// Engine `E` started for the test `tag`, or None (said why) when it cannot run here.
fn engine<E: Rootless>(tag: &str) -> Option<E> {
    if let Some(why) = E::missing() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(E::start(tag))
}

/// busybox httpd on port 80 of a new container (`tag`) published on `port`, answering
/// through the relay; its name.
fn serving<E: Rootless>(host: &mut E, tag: &str, port: u16) -> String {
    let name = host.run(
        tag,
        &["-p", &format!("{port}:80")],
        &["httpd", "-f", "-p", "80"],
    );
    wait_for("the rootless container to answer", 20, || {
        answers(host.ns(), port)
    });
    name
}

/// The engine's relay holds `port` in the host namespace.
fn relay_listens<E: Rootless>(host: &E, port: u16) -> bool {
    let ss = sh(&[
        "ip",
        "netns",
        "exec",
        &host.ns().name,
        "ss",
        "-Htlnp",
        &format!("sport = :{port}"),
    ]);
    ss.contains(&format!("\"{}\"", E::RELAY))
}

/// All clear at container `name`'s own listener (port 80 in container:NAME), not the relay's
/// socket on the host, which is the first receiver.
fn clear_at_the_containers_listener<E: Rootless>(r: &Value, name: &str) {
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    let dest = &r["destination"];
    assert_eq!(dest["port"], 80, "{r:#}");
    assert_eq!(dest["netns"], format!("container:{name}"), "{r:#}");
    let relay = summary(r, "receiver");
    assert!(relay.starts_with(&format!("{} (pid ", E::RELAY)), "{r:#}");
    let service = hop(r, "service");
    assert_eq!(service["verdict"], "ok", "{r:#}");
    let s = service["summary"].as_str().unwrap();
    assert!(
        s.starts_with("httpd (pid ") && s.contains(&format!("in container:{name}")),
        "{s}"
    );
}

/// The engine hop: asked at the user's socket (no variable given), the engine runs.
fn engine_runs_as_the_user(r: &Value) {
    let e = hop(r, "engine");
    assert_eq!(e["verdict"], "ok", "{r:#}");
    assert!(
        e["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("(rootless, user {USER}) is running")),
        "{r:#}"
    );
}

/// `doctor container:NAME` and `container:NAME:80`: no DNAT names the port, the relay holds
/// `port` for it; both all clear (their reports, for the engine's own checks).
fn by_container_name(host: &TestNs, name: &str, port: u16) -> Vec<Value> {
    [format!("container:{name}"), format!("container:{name}:80")]
        .iter()
        .map(|target| {
            let c = doctor(host, &[target]);
            println!("{target}:\n{}", doctor_text(host, &[target]));
            assert_eq!(c["diagnosis"]["ok"], true, "{target}: {c:#}");
            assert_eq!(c["packet"]["dport"], port, "{c:#}");
            c
        })
        .collect()
}

#[test]
fn a_rootless_container_is_followed_through_rootlessport_into_its_namespace() {
    let Some(mut host) = engine::<RootlessHost>("rl-healthy") else {
        return;
    };
    let name = serving(&mut host, "web", 8089);
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
        clear_at_the_containers_listener::<RootlessHost>(&r, &name);
        assert_eq!(r["destination"]["via"], "rootlessport", "{r:#}");
        let line = r["diagnosis"]["line"].as_str().unwrap();
        assert!(line.contains(&format!("in container:{name}")), "{line}");
        if api {
            for c in by_container_name(&host.ns, &name, 8089) {
                assert_eq!(c["destination"]["via"], "rootlessport", "{c:#}");
            }
            engine_runs_as_the_user(&r);
        } else {
            let hops = r["hops"].as_array().unwrap();
            assert!(!hops.iter().any(|h| h["id"] == "engine"), "{r:#}");
            assert!(
                hop(&r, "receiver")["evidence"]
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
fn a_rootless_docker_port_is_followed_through_rootlesskit_into_dockerds_namespace() {
    let Some(mut host) = engine::<RootlessDockerd>("rld-healthy") else {
        return;
    };
    let name = serving(&mut host, "web", 8095);
    assert!(relay_listens(&host, 8095), "rootlesskit should hold 8095");
    let r = doctor(&host.ns, &["8095", "--probe"]);
    println!("{}", doctor_text(&host.ns, &["8095", "--probe"]));
    record_capture(
        &[],
        &host.ns.name,
        "rootless-docker-healthy",
        "rootless Docker 20.10 (dockerd-rootless.sh as nt-rootless, rootlesskit builtin port driver): busybox httpd -p 8095:80 (tests/rootless.rs)",
        &["8095", "--probe"],
    );
    clear_at_the_containers_listener::<RootlessDockerd>(&r, &name);
    assert_eq!(fails(&r), 0, "{r:#}");
    // The first receiver is rootlesskit on the host; the path goes on in its child namespace.
    let s = summary(&r, "receiver");
    assert!(s.contains(&format!("user {USER}")), "{s}");
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
    engine_runs_as_the_user(&r);
    assert_eq!(r["probe"]["ok"], true, "{r:#}");
    for c in by_container_name(&host.ns, &name, 8095) {
        assert_eq!(
            c["destination"]["netns"],
            format!("container:{name}"),
            "{c:#}"
        );
    }
}

/// A container whose httpd listens on its own 127.0.0.1:80 only, published on `port`: the
/// relay accepts (then resets) and nothing answers; its name.
fn serving_on_loopback<E: Rootless>(host: &mut E, port: u16) -> String {
    let name = host.run(
        "lo",
        &["-p", &format!("{port}:80")],
        &["httpd", "-f", "-p", "127.0.0.1:80"],
    );
    wait_for(&format!("{} on {port}", E::RELAY), 20, || {
        relay_listens(host, port)
    });
    assert!(!answers(host.ns(), port), "the service should not answer");
    name
}

/// doctor ARGS names container `name`'s loopback listener; `capture`: (name, what) to record.
fn loopback_named(host: &TestNs, name: &str, args: &[&str], capture: Option<(&str, &str)>) {
    let r = doctor(host, args);
    if let Some((capture, what)) = capture {
        record_capture(&[], &host.name, capture, what, args);
    }
    println!("{}", doctor_text(host, args));
    on_containers_loopback(&r, name);
}

#[test]
fn a_rootless_service_on_the_containers_loopback_is_named() {
    let Some(mut host) = engine::<RootlessHost>("rl-loopback") else {
        return;
    };
    let name = serving_on_loopback(&mut host, 8090);
    loopback_named(
        &host.ns,
        &name,
        &["8090"],
        Some((
            "rootless-service-on-loopback",
            "rootless Podman: httpd -f -p 127.0.0.1:80 published -p 8090:80, the user's API not served (tests/rootless.rs)",
        )),
    );
    host.serve_api();
    loopback_named(&host.ns, &name, &["8090"], None);
}

#[test]
fn a_rootless_docker_service_on_the_containers_loopback_is_named() {
    let Some(mut host) = engine::<RootlessDockerd>("rld-loopback") else {
        return;
    };
    let name = serving_on_loopback(&mut host, 8096);
    loopback_named(&host.ns, &name, &["8096", "--probe"], None);
}

/// A container published on `port`, stopped by the engine as the user: doctor's one FAIL is
/// container_not_running, its fix is the engine's `start` as the user ([`Rootless::start_fix`],
/// to the letter), and that fix run by sh brings the port back to all clear.
/// `capture`: (name, what) to record the stopped case as.
fn stopped_then_started_as_printed<E: Rootless>(host: &mut E, port: u16, capture: (&str, &str)) {
    let name = serving(host, "stop", port);
    host.cli(&["stop", "-t", "0", &name]);
    let ns = host.ns();
    assert!(!answers(ns, port), "a stopped container should not answer");
    let p = port.to_string();
    let r = doctor(ns, &[&p]);
    println!("{}", doctor_text(ns, &[&p]));
    record_capture(&[], &ns.name, capture.0, capture.1, &[&p]);
    assert_eq!(r["diagnosis"]["fault"], "container_not_running", "{r:#}");
    assert_eq!(fails(&r), 1, "{r:#}");
    let command = r["diagnosis"]["fix"]["command"].as_str().unwrap();
    assert_eq!(command, host.start_fix(&name), "{r:#}");
    // The fix as printed, by a shell.
    let out = Command::new("sh").args(["-c", command]).output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the restarted container to answer", 20, || {
        answers(ns, port)
    });
    let r = doctor(ns, &[&p, "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
}

#[test]
fn a_stopped_rootless_container_gets_podman_start_as_its_user() {
    let Some(mut host) = engine::<RootlessHost>("rl-stopped") else {
        return;
    };
    host.serve_api();
    stopped_then_started_as_printed(
        &mut host,
        8091,
        (
            "rootless-stopped",
            "rootless Podman: podman stop (as the user) of a container published -p 8091:80, the user's API served (tests/rootless.rs)",
        ),
    );
}

#[test]
fn a_stopped_rootless_docker_container_gets_docker_start_as_its_user() {
    let Some(mut host) = engine::<RootlessDockerd>("rld-stopped") else {
        return;
    };
    stopped_then_started_as_printed(
        &mut host,
        8097,
        (
            "rootless-docker-stopped",
            "rootless Docker: docker stop (as the user) of a container published -p 8097:80 (tests/rootless.rs)",
        ),
    );
}

/// A rootless relay (rootlessport, rootlesskit) accepts on the host, so the host's INPUT chain
/// judges the client's packet: a container published on `port` is all clear from `outside`
/// (uplink 192.0.2.1), then an INPUT DROP of `port` is the one FAIL, and its printed fix, run
/// by sh, lets the port answer again. `capture`: (name, what) to record the dropped case as.
fn input_drop_named_and_fixed<E: Rootless>(tag: &str, port: u16, capture: Option<(&str, &str)>) {
    let Some(mut harness) = engine::<E>(tag) else {
        return;
    };
    let outside = TestNs::new(&format!("{tag}-o"));
    uplink(harness.ns(), &outside);
    harness.run(
        "in",
        &["-p", &format!("{port}:80")],
        &["httpd", "-f", "-p", "80"],
    );
    let host = harness.ns();
    let from = format!("outside:{}", outside.name);
    let p = port.to_string();
    let url = format!("http://192.0.2.1:{port}/");
    let http = |ns: &TestNs| http_code(ns, &url);
    wait_for("the rootless container to answer from outside", 20, || {
        !http(&outside).is_empty() && http(&outside) != "000"
    });
    let r = doctor(host, &["--from", &from, &p, "--probe"]);
    assert_eq!(r["diagnosis"]["ok"], true, "{r:#}");
    in_ns(
        host,
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP",
        ],
    );
    assert_eq!(http(&outside), "000");
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
        http(&outside) != "000"
    });
}

#[test]
fn a_rootless_port_dropped_by_the_hosts_input_chain_is_named_from_outside() {
    input_drop_named_and_fixed::<RootlessHost>(
        "rl-input",
        8092,
        Some((
            "rootless-input-drop",
            "rootless Podman: -p 8092:80, iptables -A INPUT -p tcp --dport 8092 -j DROP in the host namespace, the user's API not served (tests/rootless.rs)",
        )),
    );
}

#[test]
fn a_rootless_docker_port_dropped_by_the_hosts_input_chain_is_named_from_outside() {
    input_drop_named_and_fixed::<RootlessDockerd>("rld-input", 8098, None);
}
