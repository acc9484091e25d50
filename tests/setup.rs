//! `nettool setup` / `teardown` / `serve`: real labs in isolated host namespaces (or in a
//! TestNs standing in for the host), real curl/dig/getent/socat/iptables-save as peers.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;

/// Run argv inside namespace `ns` via `ip netns exec` (which applies /etc/netns/NS).
fn exec(ns: &str, argv: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()
        .expect("ip netns exec");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn curl(ns: &str, url: &str) -> String {
    let (ok, body) = exec(ns, &["curl", "-s", "-m", "5", url]);
    assert!(ok, "curl {url} from {ns} failed");
    body
}

fn write_lab(body: &str) -> tempfile_path::Path {
    tempfile_path::Path::new(body)
}

/// A lab file in /tmp removed on drop.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Path {
        pub fn new(body: &str) -> Self {
            let p = std::env::temp_dir().join(format!("{}.toml", super::unique("lab")));
            std::fs::write(&p, body).unwrap();
            Path(p)
        }
        pub fn s(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn default_lab_dnat_dns_hairpin_localnet() {
    let (lab, v) = TestLab::isolated("dflt", &["--no-userland-proxy"]);
    // The JSON contract.
    assert_eq!(v["name"], lab.name.as_str());
    assert_eq!(v["host_netns"], lab.name.as_str());
    assert_eq!(v["backend"], "iptables");
    let web = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "web")
        .unwrap();
    assert_eq!(web["netns"], lab.ns("web").as_str());
    assert_eq!(web["networks"][0]["address"], "172.19.0.2");
    assert_eq!(web["networks"][0]["interface"], "eth0");
    assert!(web["networks"][0]["host_veth"]
        .as_str()
        .unwrap()
        .starts_with("veth"));
    assert_eq!(v["ports"][0]["host_port"], 8080);
    assert_eq!(v["networks"][0]["subnet"], "172.19.0.0/16");
    let st = nettool::lab::state::load(&lab.name).unwrap();
    assert_eq!(
        st.container("web").unwrap().networks[0].address.to_string(),
        "172.19.0.2"
    );

    let host = &lab.name;
    // Host -> host address:8080 -> DNAT -> web.
    assert_eq!(curl(host, "http://172.19.0.1:8080/"), "hello from web");
    // localhost:8080 through route_localnet + OUTPUT DNAT (no userland proxy).
    assert_eq!(curl(host, "http://127.0.0.1:8080/"), "hello from web");
    // Embedded DNS from a second container: dig @127.0.0.11 and a plain libc lookup.
    let client = lab.ns("client");
    let (_, a) = exec(
        &client,
        &["dig", "+short", "+time=2", "+tries=2", "@127.0.0.11", "app"],
    );
    assert_eq!(a, "172.20.0.2");
    let (_, a) = exec(
        &client,
        &["dig", "+short", "+tcp", "+time=2", "@127.0.0.11", "api"],
    );
    assert_eq!(a, "172.20.0.2", "alias over TCP");
    let (ok, a) = exec(&client, &["getent", "hosts", "app"]);
    assert!(ok && a.starts_with("172.20.0.2"), "getent: {a}");
    let (_, a) = exec(&client, &["dig", "+time=2", "@127.0.0.11", "no-such-name"]);
    assert!(a.contains("NXDOMAIN"), "{a}");
    let (_, a) = exec(
        &client,
        &[
            "dig",
            "+short",
            "+time=2",
            "@127.0.0.11",
            "-x",
            "172.20.0.2",
        ],
    );
    assert_eq!(a, "app.");
    // By name to a service.
    assert_eq!(curl(&client, "http://app/"), "hello from app");
    // By published port through the gateway (hairpin / cross-network DNAT), and web to itself.
    assert_eq!(curl(&client, "http://172.20.0.1:8080/"), "hello from web");
    assert_eq!(
        curl(&lab.ns("web"), "http://172.19.0.1:8080/"),
        "hello from web"
    );

    // Re-running setup is a no-op that says so.
    let out = nettool(&[
        "setup",
        "--isolated",
        "--name",
        &lab.name,
        "--no-userland-proxy",
    ]);
    assert!(out.status.success());
    assert!(text(&out).contains("already up"), "{}", text(&out));

    let t = lab.teardown();
    assert!(t.contains("removed"), "{t}");
    assert!(!netns_names()
        .iter()
        .any(|n| n == &lab.name || n.starts_with(&format!("{}-", lab.name))));
    assert!(!std::path::Path::new(&format!("/etc/netns/{}", lab.ns("client"))).exists());
    assert!(!std::path::Path::new(&format!("/run/nettool/{}", lab.name)).exists());
    let t = lab.teardown();
    assert!(t.contains("nothing to do"), "{t}");
}

/// iptables-save lines of the nat and filter tables, as a multiset: chain declarations and
/// rules with -I written as -A (order inside a chain is checked by the traffic tests).
fn rule_lines(text: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    let mut table = String::new();
    for l in text.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        if table != "nat" && table != "filter" {
            continue;
        }
        let key = if let Some(r) = l.strip_prefix("-I ") {
            format!("{table} -A {r}")
        } else if l.starts_with("-A ") {
            format!("{table} {l}")
        } else if let Some(c) = l.strip_prefix(':') {
            let chain = c.split_whitespace().next().unwrap_or_default();
            if ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"].contains(&chain) {
                continue;
            }
            format!("{table} :{chain}")
        } else {
            continue;
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

#[test]
fn iptables_save_matches_dry_run_golden_text() {
    // Both modes: the userland proxy (dockerd's default) and hairpin mode.
    for mode in [&[][..], &["--no-userland-proxy"][..]] {
        let name = unique("gold");
        let mut args = vec!["setup", "--isolated", "--name", &name];
        args.extend_from_slice(mode);
        let mut dry_args = args.clone();
        dry_args.push("--dry-run");
        let dry = nettool_ok(&dry_args);
        let fw = dry
            .split("<<'EOF'\n")
            .nth(1)
            .and_then(|s| s.split("\nEOF").next())
            .expect("firewall text in the dry run");
        assert!(fw.contains("-j DNAT --to-destination 172.19.0.2:80"));
        let lab = TestLab {
            name: name.clone(),
            host: None,
        };
        nettool_ok(&args);
        let saved = sh(&["ip", "netns", "exec", &name, "iptables-save"]);
        assert_eq!(
            rule_lines(&saved),
            rule_lines(fw),
            "{mode:?} iptables-save:\n{saved}\n--dry-run:\n{fw}"
        );
        drop(lab);
    }
}

/// Everything about a namespace that setup may touch, normalised for comparison.
fn snapshot(ns: &TestNs) -> String {
    let links = ns.ip(&["-o", "link", "show"]);
    let addrs = ns.ip(&["-o", "addr", "show"]);
    let routes = ns.ip(&["route", "show", "table", "all"]);
    let saved = sh(&["ip", "netns", "exec", &ns.name, "iptables-save"]);
    // Tables with only built-in chains at policy ACCEPT and no rules equal "no table".
    let mut tables: Vec<String> = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    for l in saved.lines().filter(|l| !l.starts_with('#')) {
        if l.starts_with('*') {
            cur = vec![l.to_string()];
        } else if l == "COMMIT" {
            let builtin = |l: &str| {
                ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"]
                    .iter()
                    .any(|b| l[1..].starts_with(&format!("{b} ")))
            };
            let meaningful = cur.iter().any(|l| {
                l.starts_with("-A")
                    || (l.starts_with(':') && (!builtin(l) || !l.ends_with(" ACCEPT")))
            });
            if meaningful {
                tables.push(cur.join("\n"));
            }
        } else {
            cur.push(l.split(" [").next().unwrap_or(l).to_string());
        }
    }
    let sysctls = sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "sysctl",
        "net.ipv4.ip_forward",
        "net.bridge.bridge-nf-call-iptables",
        "net.ipv4.conf.all.route_localnet",
    ]);
    format!(
        "{links}\n{addrs}\n{routes}\n{}\n{sysctls}",
        tables.join("\n")
    )
}

#[test]
fn teardown_restores_host_exactly_and_shared_chains() {
    let host = TestNs::new("host");
    // Something of the host's own, which must survive.
    host.ip(&["link", "add", "keepme0", "type", "bridge"]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &host.name,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "keepme0",
        "-j",
        "MASQUERADE",
    ]);
    let before = snapshot(&host);
    let lab_file = write_lab(
        "[[network]]\nname = \"n1\"\nsubnet = \"10.77.0.0/24\"\n[[container]]\nname = \"a\"\nrun = \"nettool serve http 80\"\nports = [\"8081:80\"]\n[[container]]\nname = \"b\"\nmode = \"container:a\"\n[[container]]\nname = \"c\"\nmode = \"none\"\n",
    );
    let (lab1, v) = TestLab::in_host("th1", &host, &[lab_file.s(), "--no-userland-proxy"]);
    assert!(v["host_netns"].is_null());
    assert_eq!(
        v["containers"][1]["netns"], v["containers"][0]["netns"],
        "container:a shares a's namespace"
    );
    assert_eq!(curl(&host.name, "http://127.0.0.1:8081/"), "hello from a");
    // A second lab in the same host shares the NETTOOL chains.
    let lab_file2 = write_lab("[[network]]\nname = \"n2\"\nsubnet = \"10.78.0.0/24\"\n[[container]]\nname = \"x\"\nrun = \"nettool serve http 80\"\nports = [\"8082:80\"]\n");
    let (lab2, _) = TestLab::in_host("th2", &host, &[lab_file2.s(), "--no-userland-proxy"]);
    // A third lab publishing the same host port (or reusing a subnet) is refused up front.
    let lab_file3 = write_lab("[[network]]\nname = \"n3\"\nsubnet = \"10.76.0.0/24\"\n[[container]]\nname = \"y\"\nports = [\"8082:80\"]\n");
    let out = nettool_in(
        Some(&host.name),
        &[
            "setup",
            lab_file3.s(),
            "--name",
            &unique("th3"),
            "--no-userland-proxy",
        ],
        &[],
    );
    assert!(
        !out.status.success() && text(&out).contains("already published by lab"),
        "{}",
        text(&out)
    );
    let lab_file4 = write_lab(
        "[[network]]\nname = \"n4\"\nsubnet = \"10.78.0.0/25\"\n[[container]]\nname = \"z\"\n",
    );
    let out = nettool_in(
        Some(&host.name),
        &[
            "setup",
            lab_file4.s(),
            "--name",
            &unique("th4"),
            "--no-userland-proxy",
        ],
        &[],
    );
    assert!(
        !out.status.success() && text(&out).contains("collides with network"),
        "{}",
        text(&out)
    );
    assert_eq!(curl(&host.name, "http://127.0.0.1:8082/"), "hello from x");
    assert_eq!(
        sh(&[
            "ip",
            "netns",
            "exec",
            &host.name,
            "sysctl",
            "-n",
            "net.ipv4.ip_forward"
        ])
        .trim(),
        "1"
    );
    lab1.teardown();
    // lab2 still works after lab1 is gone.
    assert_eq!(curl(&host.name, "http://127.0.0.1:8082/"), "hello from x");
    lab2.teardown();
    assert_eq!(snapshot(&host), before);
    // Teardown from the wrong namespace is refused, not half-done.
    let (lab3, _) = TestLab::in_host("th3", &host, &[lab_file2.s(), "--no-userland-proxy"]);
    let other = TestNs::new("other");
    let out = nettool_in(Some(&other.name), &["teardown", &lab3.name], &[]);
    let msg = text(&out);
    assert!(
        !out.status.success() && msg.contains("set up in the network namespace"),
        "{msg}"
    );
    // The command it prints tears the lab down from the right namespace.
    let cmd = msg
        .split("run teardown from there: `")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .unwrap_or_else(|| panic!("{msg}"));
    assert!(
        cmd.contains(&format!("--net=/run/netns/{}", host.name)),
        "{cmd}"
    );
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", text(&out));
    assert!(lab3.teardown().contains("nothing to do"));
    assert_eq!(snapshot(&host), before);
}

#[test]
fn failure_mid_setup_leaves_nothing_behind() {
    let host = TestNs::new("fail");
    let before = snapshot(&host);
    let name = unique("inj");
    let dry = nettool_ok(&["setup", "--dry-run", "--name", &name, "--no-userland-proxy"]);
    let steps = dry.lines().filter(|l| l.starts_with("step-")).count();
    assert!(steps > 10);
    for at in [3, steps / 2, steps - 1, steps] {
        let out = nettool_in(
            Some(&host.name),
            &["setup", "--name", &name, "--no-userland-proxy"],
            &[("NETTOOL_LAB_FAIL_AT", &format!("step-{at}"))],
        );
        assert!(!out.status.success());
        let msg = text(&out);
        assert!(
            msg.contains(&format!("step {at} failed")) && msg.contains("rolled back"),
            "{msg}"
        );
        assert_eq!(snapshot(&host), before, "after failing at step {at}");
        assert!(!netns_names().iter().any(|n| n.starts_with(&name)));
        assert!(!std::path::Path::new(&format!("/run/nettool/{name}")).exists());
        assert!(!std::fs::read_dir("/etc/netns")
            .map(|rd| rd
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&name)))
            .unwrap_or(false));
    }
    // The daemon and its services are gone too.
    let ps = sh(&["ps", "-eo", "args"]);
    assert!(!ps.contains(&format!("lab-daemon {name}")), "{ps}");
}

#[test]
fn bad_lab_files_are_rejected_with_file_and_line() {
    let cases = [
        ("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\ncolour = \"red\"\n", 4, "unknown field"),
        ("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/16\"\n[[network]]\nname = \"b\"\nsubnet = \"10.0.3.0/24\"\n", 6, "overlaps"),
        ("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[container]]\nname = \"x\"\naddress = \"10.9.0.2\"\n", 6, "outside"),
        ("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[container]]\nname = \"x\"\n[[container]]\nname = \"x\"\n", 7, "duplicate"),
        ("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[container]]\nname = \"x\"\nports = [\"80:80\"]\n[[container]]\nname = \"y\"\nports = [\"80:80\"]\n", 9, "already published"),
    ];
    for (body, line, what) in cases {
        let f = write_lab(body);
        let name = unique("bad");
        let out = nettool(&["setup", f.s(), "--isolated", "--name", &name]);
        assert!(!netns_names().iter().any(|n| n.starts_with(&name)));
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let msg = text(&out);
        assert!(
            msg.contains(&format!("{}:{line}:", f.s())) && msg.contains(what),
            "{msg}"
        );
    }
}

#[test]
fn nftables_backend_same_behaviour() {
    let (lab, v) = TestLab::isolated("nft", &["--backend", "nftables", "--no-userland-proxy"]);
    assert_eq!(v["backend"], "nftables");
    let host = &lab.name;
    assert_eq!(curl(host, "http://172.19.0.1:8080/"), "hello from web");
    assert_eq!(curl(host, "http://127.0.0.1:8080/"), "hello from web");
    let client = lab.ns("client");
    assert_eq!(curl(&client, "http://app/"), "hello from app");
    assert_eq!(curl(&client, "http://172.20.0.1:8080/"), "hello from web");
    let (_, rules) = exec(host, &["nft", "list", "ruleset"]);
    assert!(rules.contains("dnat to 172.19.0.2:80"), "{rules}");
    let (_, saved) = exec(host, &["iptables-save"]);
    assert!(
        !saved.contains("NETTOOL"),
        "nftables mode must not add iptables rules"
    );
}

#[test]
fn udp_port_and_host_mode() {
    let f = write_lab(
        "[[network]]\nname = \"n\"\nsubnet = \"10.79.0.0/24\"\n[[container]]\nname = \"u\"\nrun = \"nettool serve udp-echo 5000\"\nports = [\"5353:5000/udp\"]\n[[container]]\nname = \"h\"\nmode = \"host\"\nrun = \"nettool serve echo 7000\"\n",
    );
    let (lab, v) = TestLab::isolated("udp", &[f.s(), "--no-userland-proxy"]);
    assert_eq!(
        v["containers"][1]["netns"],
        lab.name.as_str(),
        "host mode runs in the lab host"
    );
    let host = &lab.name;
    // setup waits for TCP services only; a UDP one may bind a moment after "up" (seen once
    // under load), so the first answer is awaited.
    wait_for("udp echo via DNAT", 10, || {
        let (ok, out) = exec(
            host,
            &["sh", "-c", "echo ping | socat -t 1 - UDP:10.79.0.1:5353"],
        );
        ok && out == "ping"
    });
    let (ok, out) = exec(
        host,
        &["sh", "-c", "echo pong | socat -t 2 - TCP:127.0.0.1:7000"],
    );
    assert!(ok && out == "pong", "host-mode service: {out}");
}

#[test]
fn fifty_containers_on_two_networks() {
    let mut body = String::from("[[network]]\nname = \"a\"\nsubnet = \"10.80.0.0/24\"\n[[network]]\nname = \"b\"\nsubnet = \"10.81.0.0/24\"\n");
    for i in 0..50 {
        body.push_str(&format!(
            "[[container]]\nname = \"c{i}\"\nnetwork = \"{}\"\n",
            if i % 2 == 0 { "a" } else { "b" }
        ));
    }
    body.push_str(
        "[[container]]\nname = \"srv\"\nnetwork = \"a\"\nrun = \"nettool serve http 80\"\n",
    );
    let f = write_lab(&body);
    let (lab, v) = TestLab::isolated("fifty", &[f.s(), "--no-userland-proxy"]);
    assert_eq!(v["containers"].as_array().unwrap().len(), 51);
    let ours = netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}-", lab.name)))
        .count();
    assert_eq!(ours, 51);
    assert_eq!(curl(&lab.ns("c48"), "http://srv/"), "hello from srv");
    let (_, a) = exec(
        &lab.ns("c1"),
        &["dig", "+short", "+time=2", "@127.0.0.11", "c49"],
    );
    assert_eq!(a, "10.81.0.26");
    lab.teardown();
    assert!(!netns_names().iter().any(|n| n.starts_with(&lab.name)));
}

#[test]
fn serve_builtins() {
    let ns = TestNs::new("serve");
    let _http = ns.spawn(&[
        env!("CARGO_BIN_EXE_nettool"),
        "serve",
        "http",
        "8000",
        "--text",
        "hi",
    ]);
    wait_for("http", 5, || {
        exec(
            &ns.name,
            &["curl", "-s", "-m", "1", "http://127.0.0.1:8000/"],
        )
        .1 == "hi"
    });
}

#[test]
fn not_root_is_a_clear_error_and_docs_labs_parse() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_nettool"),
        ])
        .args([
            "setup",
            "--isolated",
            "--name",
            &unique("noroot"),
            "--no-userland-proxy",
        ])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("needs root"), "{}", text(&out));
    // No firewall tool in PATH: the error names the package.
    let out = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args([
            "setup",
            "--isolated",
            "--name",
            &unique("notool"),
            "--no-userland-proxy",
        ])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        text(&out).contains("install the 'iptables' package"),
        "{}",
        text(&out)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args([
            "setup",
            "--isolated",
            "--name",
            &unique("notool"),
            "--backend",
            "nftables",
        ])
        .args(["--no-userland-proxy"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        text(&out).contains("install the 'nftables' package"),
        "{}",
        text(&out)
    );
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/labs");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            nettool_ok(&["setup", p.to_str().unwrap(), "--dry-run"]);
            n += 1;
        }
    }
    assert!(n >= 4);
    // The embedded default is the documented one.
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/default.toml")).unwrap(),
        nettool::lab::spec::DEFAULT_LAB
    );
}

#[test]
fn modes_and_two_networks_examples_work() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/labs");
    let (lab, _) = TestLab::isolated(
        "modes",
        &[&format!("{dir}/modes.toml"), "--no-userland-proxy"],
    );
    let (ok, pong) = exec(
        &lab.ns("redis"),
        &["sh", "-c", "echo PONG | socat -t 2 - TCP:127.0.0.1:6379"],
    );
    assert!(
        ok && pong == "PONG",
        "container:redis shares redis's localhost: {pong}"
    );
    assert_eq!(
        curl(&lab.ns("redis"), "http://127.0.0.1:8081/"),
        "hello from redis-cli"
    );
    assert_eq!(
        curl(&lab.name, "http://127.0.0.1:9100/"),
        "hello from monitor"
    );
    let links = sh(&["ip", "-n", &lab.ns("sealed"), "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "mode none has only lo: {links}");
    drop(lab);
    let (lab, _) = TestLab::isolated(
        "two",
        &[&format!("{dir}/two-networks.toml"), "--no-userland-proxy"],
    );
    assert_eq!(
        curl(&lab.ns("db"), "http://backend-api:8000/"),
        "hello from api"
    );
    let (_, a) = exec(
        &lab.ns("db"),
        &["dig", "+short", "+time=2", "@127.0.0.11", "proxy"],
    );
    assert_eq!(a, "", "proxy is not on db's network: no answer");
    let (ok, _) = exec(
        &lab.ns("db"),
        &["curl", "-s", "-m", "1", "http://10.10.0.10/"],
    );
    assert!(!ok, "networks are isolated");
    assert_eq!(curl(&lab.name, "http://127.0.0.1:8443/"), "proxy says hi");
}

#[test]
fn userland_proxy_single_and_docker_style() {
    // One `nettool proxy` for every published port (dockerd's default mode, with our proxy).
    let (lab, v) = TestLab::isolated("uproxy", &[]);
    assert_eq!(v["userland_proxy"], "single");
    let pid = v["proxy_pids"][0].as_u64().expect("a proxy pid") as u32;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .replace('\0', " ");
    assert!(
        cmdline.contains("proxy --map tcp:0.0.0.0:8080=172.19.0.2:80"),
        "{cmdline}"
    );
    // localhost is excluded from the OUTPUT DNAT in this mode: this goes through the proxy.
    assert_eq!(curl(&lab.name, "http://127.0.0.1:8080/"), "hello from web");
    assert_eq!(curl(&lab.name, "http://172.19.0.1:8080/"), "hello from web");
    // Containers get RETURN in NETTOOL and reach the port through the proxy too.
    assert_eq!(
        curl(&lab.ns("client"), "http://172.20.0.1:8080/"),
        "hello from web"
    );
    lab.teardown();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z"),
        "proxy stopped"
    );

    // One process per port with docker-proxy's flags.
    let (lab, v) = TestLab::isolated("dproxy", &["--docker-style-proxies"]);
    assert_eq!(v["userland_proxy"], "docker-style");
    let pid = v["proxy_pids"][0].as_u64().unwrap() as u32;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .replace('\0', " ");
    assert!(cmdline.contains("-proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.19.0.2 -container-port 80"), "{cmdline}");
    assert_eq!(curl(&lab.name, "http://127.0.0.1:8080/"), "hello from web");
    drop(lab);

    // A failure after the proxy started (the last step) still leaves nothing running.
    let name = unique("pfail");
    let dry = nettool_ok(&["setup", "--dry-run", "--isolated", "--name", &name]);
    let last = dry.lines().filter(|l| l.starts_with("step-")).count();
    let out = nettool_in(
        None,
        &["setup", "--isolated", "--name", &name],
        &[("NETTOOL_LAB_FAIL_AT", &format!("step-{last}"))],
    );
    assert!(
        !out.status.success() && text(&out).contains("rolled back"),
        "{}",
        text(&out)
    );
    let ps = sh(&["ps", "-eo", "args"]);
    assert!(!ps.contains(&format!("lab-daemon {name}")));
    assert!(!netns_names().iter().any(|n| n.starts_with(&name)));
}

#[test]
fn teardown_after_a_crash_mid_setup() {
    let host = TestNs::new("crash");
    let before = snapshot(&host);
    let name = unique("crash");
    let dry = nettool_ok(&["setup", "--dry-run", "--name", &name, "--no-userland-proxy"]);
    let last = dry.lines().filter(|l| l.starts_with("step-")).count();
    // Abort at the daemon step: namespaces, bridges, veths, rules and sysctls exist, no rollback.
    let out = nettool_in(
        Some(&host.name),
        &["setup", "--name", &name, "--no-userland-proxy"],
        &[("NETTOOL_LAB_FAIL_AT", &format!("crash-{last}"))],
    );
    assert!(!out.status.success());
    assert!(
        netns_names().iter().any(|n| n.starts_with(&name)),
        "the crash left the lab half built"
    );
    assert_ne!(snapshot(&host), before);
    // The next setup removes what the crashed one left, says so, and builds the lab whole.
    let out = nettool_in(
        Some(&host.name),
        &["setup", "--name", &name, "--no-userland-proxy"],
        &[],
    );
    assert!(
        out.status.success() && text(&out).contains("was interrupted; removed what it left"),
        "{}",
        text(&out)
    );
    let lab = TestLab {
        name: name.clone(),
        host: Some(host.name.clone()),
    };
    lab.teardown();
    assert_eq!(snapshot(&host), before);
    assert!(!netns_names().iter().any(|n| n.starts_with(&name)));
    assert!(lab.teardown().contains("nothing to do"));
}

#[test]
fn dual_stack_network() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/labs");
    let (lab, v) = TestLab::isolated("v6", &[&format!("{dir}/ipv6.toml"), "--no-userland-proxy"]);
    assert_eq!(v["containers"][0]["networks"][0]["address6"], "fd00:30::2");
    let client = lab.ns("client");
    let (_, a) = exec(
        &client,
        &["dig", "+short", "+time=2", "@127.0.0.11", "web", "AAAA"],
    );
    assert_eq!(a, "fd00:30::2");
    assert_eq!(curl(&client, "http://[fd00:30::2]/"), "hello from web");
    let (_, r) = exec(&client, &["ip", "-6", "route", "show", "default"]);
    assert!(r.contains("via fd00:30::1"), "{r}");
}

#[test]
fn services_are_supervised_and_dns_forwards_only_when_asked() {
    // A lab-local upstream (dnsmasq in a container): forwarding never leaves the lab.
    let f = write_lab(
        "[[network]]\nname = \"n\"\nsubnet = \"10.82.0.0/24\"\nupstream = \"10.82.0.53\"\n\
[[container]]\nname = \"up\"\naddress = \"10.82.0.53\"\n\
run = \"dnsmasq --keep-in-foreground --no-resolv --no-hosts --listen-address=10.82.0.53 --bind-interfaces --address=/example.test/10.9.9.9\"\n\
[[container]]\nname = \"web\"\nrun = \"nettool serve http 80\"\n\
[[container]]\nname = \"client\"\n",
    );
    let (lab, _) = TestLab::isolated("sup", &[f.s(), "--no-userland-proxy"]);
    let client = lab.ns("client");
    wait_for("dnsmasq answers", 5, || {
        exec(
            &client,
            &[
                "dig",
                "+short",
                "+time=1",
                "+tries=1",
                "@10.82.0.53",
                "example.test",
            ],
        )
        .1 == "10.9.9.9"
    });
    let (_, a) = exec(
        &client,
        &["dig", "+short", "+time=2", "@127.0.0.11", "example.test"],
    );
    assert_eq!(a, "10.9.9.9", "unknown names go to the network's upstream");
    let (_, a) = exec(&client, &["dig", "+short", "+time=2", "@127.0.0.11", "web"]);
    assert_eq!(a, "10.82.0.2", "lab names are still answered by the lab");
    // Kill the web service: the daemon starts it again.
    let st = nettool::lab::state::load(&lab.name).unwrap();
    assert_eq!(
        st.container("web").unwrap().run.as_deref(),
        Some("nettool serve http 80")
    );
    let pids: Vec<(u32, u64)> = serde_json::from_slice(
        &std::fs::read(format!("/run/nettool/{}/services.json", lab.name)).unwrap(),
    )
    .unwrap();
    let web_pid = pids
        .iter()
        .map(|p| p.0)
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .contains("http")
        })
        .expect("web pid");
    sh(&["kill", "-9", &web_pid.to_string()]);
    wait_for("web restarted", 10, || {
        exec(&client, &["curl", "-s", "-m", "1", "http://web/"]).1 == "hello from web"
    });
    let log = std::fs::read_to_string(format!("/run/nettool/{}/daemon.log", lab.name)).unwrap();
    assert!(log.contains("restarting"), "{log}");
}

/// A small lab for the kill tests: one network with IPv6 and DNS, two services, one published
/// port (single proxy). Service texts carry the lab name, so its processes are found by
/// their command lines, independently of the lab's own bookkeeping.
fn kill_lab_file(name: &str, net: u8) -> tempfile_path::Path {
    write_lab(&format!(
        "[[network]]\nname = \"n1\"\nsubnet = \"10.{net}.0.0/24\"\nipv6 = \"fd00:{net}::/64\"\n\
[[container]]\nname = \"a\"\nrun = \"nettool serve http 80 --text {name}-a\"\nports = [\"80{net}:80\"]\n\
[[container]]\nname = \"b\"\nrun = \"nettool serve http 80 --text {name}-b\"\n"
    ))
}

/// Firewall state of a namespace, rules only: iptables-save and ip6tables-save rule and
/// non-builtin chain lines, and nft rule lines (tables and base chains iptables-nft makes
/// are not rules).
fn firewall_rules(ns: &str) -> Vec<String> {
    let mut v = Vec::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        for l in sh(&["ip", "netns", "exec", ns, tool]).lines() {
            let builtin = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"]
                .iter()
                .any(|b| l.starts_with(&format!(":{b} ")));
            if l.starts_with("-A") || (l.starts_with(':') && !builtin) {
                v.push(format!("{tool}: {}", l.split(" [").next().unwrap_or(l)));
            }
        }
    }
    for l in sh(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"]).lines() {
        let t = l.trim();
        let structure = t.is_empty()
            || t == "}"
            || t.starts_with("table ")
            || t.starts_with("chain ")
            || t.starts_with("type ");
        if !structure {
            v.push(format!("nft: {t}"));
        }
    }
    v
}

/// What lab `name` could have left on the machine, seen with outside tools: namespaces and
/// /run/netns entries, links named in its plan (in the root namespace and in `host`), state
/// and /etc/netns folders, processes whose command line names it.
fn lab_leftovers(name: &str, links: &[String], host: Option<&TestNs>) -> Vec<String> {
    let mut left = Vec::new();
    for n in netns_names() {
        if n == name || n.starts_with(&format!("{name}-")) {
            left.push(format!("/run/netns/{n}"));
        }
    }
    for d in ["/run/nettool", "/etc/netns"] {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let f = e.file_name().to_string_lossy().into_owned();
                if f == name || f.starts_with(&format!("{name}-")) {
                    left.push(format!("{d}/{f}"));
                }
            }
        }
    }
    let mut link_lists = vec![("root".to_string(), sh(&["ip", "-o", "link", "show"]))];
    if let Some(h) = host {
        link_lists.push((h.name.clone(), h.ip(&["-o", "link", "show"])));
    }
    for (ns, list) in &link_lists {
        for l in links {
            if list.contains(&format!(": {l}:")) || list.contains(&format!(": {l}@")) {
                left.push(format!("link {l} in {ns}"));
            }
        }
    }
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(name) {
                left.push(format!("process {pid}: {cmd}"));
            }
        }
    }
    left
}

/// Bridge and host-side veth names of a lab, from its plan.
fn planned_links(args: &[&str]) -> Vec<String> {
    let mut a = vec!["setup", "--dry-run", "--json"];
    a.extend_from_slice(args);
    let plan = nettool_json(&a);
    let mut v = Vec::new();
    for s in plan["steps"].as_array().unwrap() {
        match s["step"].as_str() {
            Some("create_bridge") => v.push(s["name"].as_str().unwrap().to_string()),
            Some("create_veth") => v.push(s["host"].as_str().unwrap().to_string()),
            _ => {}
        }
    }
    assert!(v.len() >= 3, "{plan}");
    v
}

/// Start `nettool ARGS` (inside `host` via nsenter, which execs: same pid), signal it after
/// `delay`, wait; returns its exit status and stderr.
fn signal_setup_after(
    host: Option<&TestNs>,
    args: &[&str],
    delay: std::time::Duration,
    sig: i32,
) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let exe = env!("CARGO_BIN_EXE_nettool");
    let mut cmd = match host {
        Some(h) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", h.path())).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap(), err)
}

/// SIGKILL and SIGINT at many instants of a setup (an `--isolated` lab, or one whose host is
/// a namespace of the test's own); SIGINT must roll back on its own, SIGKILL's remains must
/// go with the next teardown or setup. Nothing may be left: namespaces, /run/netns entries,
/// links, rules in every table of the host, sysctls, processes, state and /etc/netns folders.
fn kill_anywhere(host: Option<&TestNs>, net: u8) {
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;
    let name = unique("kill");
    let file = kill_lab_file(&name, net);
    let mut args = vec!["setup", file.s(), "--name", &name];
    if host.is_none() {
        args.push("--isolated");
    }
    let links = planned_links(&args[1..]);
    let hostname = host.map(|h| h.name.clone());
    let v6 = |h: &TestNs| {
        let argv = [
            "ip",
            "netns",
            "exec",
            &h.name,
            "sysctl",
            "net.ipv6.conf.all.forwarding",
        ];
        sh(&argv)
    };
    let before = host.map(|h| (snapshot(h), firewall_rules(&h.name), v6(h)));
    let check = |when: &str| {
        let left = lab_leftovers(&name, &links, host);
        assert!(left.is_empty(), "{when}: left behind: {left:#?}");
        if let (Some(h), Some((snap, rules, fwd6))) = (host, &before) {
            assert_eq!(firewall_rules(&h.name), *rules, "{when}: firewall");
            assert_eq!(snapshot(h), *snap, "{when}: host namespace");
            assert_eq!(v6(h), *fwd6, "{when}: sysctl");
        }
    };
    let teardown = |when: &str| {
        let out = nettool_in(hostname.as_deref(), &["teardown", &name], &[]);
        assert!(out.status.success(), "{when}: teardown: {}", text(&out));
    };
    // How long a whole setup takes here (the faster of two: the first may be cold), to
    // spread the signals over it.
    let mut full = std::time::Duration::MAX;
    for _ in 0..2 {
        let t0 = Instant::now();
        let out = nettool_in(hostname.as_deref(), &args, &[]);
        full = full.min(t0.elapsed());
        assert!(out.status.success(), "{}", text(&out));
        teardown("first runs");
        check("after a normal setup and teardown");
    }
    let n = 14u32;
    let (mut rolled_back, mut half_built) = (0, 0);
    for i in 0..n {
        let delay = full * i / (n - 2);
        for sig in [libc::SIGKILL, libc::SIGINT] {
            let when = format!("signal {sig} after {delay:?} (setup takes {full:?})");
            let (status, err) = signal_setup_after(host, &args, delay, sig);
            if sig == libc::SIGINT {
                // Rolled back (130), killed before any change (signal), or finished (0).
                if status.code() == Some(0) {
                    teardown(&when);
                } else {
                    assert!(
                        status.code() == Some(130) || status.signal() == Some(sig),
                        "{when}: {status:?} {err}"
                    );
                    rolled_back += usize::from(status.code() == Some(130));
                }
                check(&format!("{when}, without teardown"));
                continue;
            }
            half_built += usize::from(!lab_leftovers(&name, &links, host).is_empty());
            if i % 2 == 0 {
                teardown(&when);
            } else {
                // The next setup of the lab cleans up on its own, then builds it whole.
                let out = nettool_in(hostname.as_deref(), &args, &[]);
                assert!(out.status.success(), "{when}: setup again: {}", text(&out));
                teardown(&when);
            }
            check(&when);
        }
    }
    eprintln!("{name}: setup takes {full:?}; {rolled_back} SIGINTs rolled back, {half_built} SIGKILLs left a half-built lab");
    // The signals must have landed mid-setup, or this proved nothing.
    assert!(
        rolled_back >= 3 && half_built >= 3,
        "{rolled_back} {half_built}"
    );
}

#[test]
fn setup_killed_or_interrupted_anywhere_leaves_nothing() {
    let t0 = std::time::Instant::now();
    kill_anywhere(None, 91);
    let host = TestNs::new("killhost");
    kill_anywhere(Some(&host), 92);
    eprintln!("kill-anywhere took {:?}", t0.elapsed());
}

/// A link's ifindex in namespace `ns`, None when there is no such link.
fn link_index(ns: &TestNs, link: &str) -> Option<u32> {
    ns.ip(&["-o", "link", "show"]).lines().find_map(|l| {
        let (idx, rest) = l.split_once(": ")?;
        let n = rest.split([':', '@']).next()?;
        (n == link).then(|| idx.parse().ok())?
    })
}

/// A setup SIGKILLed between a create refused on a taken name and its "not created" journal
/// record (the test hook NETTOOL_LAB_FAIL_AT=crash-on-taken kills it right there): the mark
/// in the journal (the ifindex setup asked the kernel for) keeps teardown off the link that
/// was there first, for a bridge's name and for a veth's host side; the lab's own links go.
#[test]
fn a_setup_killed_after_a_refused_create_leaves_the_owners_link_alone() {
    use std::os::unix::process::ExitStatusExt;
    for which in ["bridge", "veth"] {
        let host = TestNs::new("taken");
        let name = unique("taken");
        let args = ["setup", "--name", &name, "--no-userland-proxy"];
        // Bridges come first in a plan, then the veths.
        let links = planned_links(&args[1..]);
        let taken = if which == "bridge" {
            links[0].clone()
        } else {
            links[links.len() - 1].clone()
        };
        host.ip(&["link", "add", &taken, "type", "bridge"]);
        let theirs = link_index(&host, &taken).expect("their link exists");
        let before = snapshot(&host);
        let out = nettool_in(
            Some(&host.name),
            &args,
            &[("NETTOOL_LAB_FAIL_AT", "crash-on-taken")],
        );
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{which}: setup was not killed in the window: {}",
            text(&out)
        );
        if which == "veth" {
            assert_ne!(snapshot(&host), before, "the kill left a half-built lab");
        }
        let out = nettool_in(Some(&host.name), &["teardown", &name], &[]);
        assert!(out.status.success(), "{which}: teardown: {}", text(&out));
        assert_eq!(
            link_index(&host, &taken),
            Some(theirs),
            "{which}: teardown deleted {taken}, which was there before the lab: {}",
            text(&out)
        );
        assert_eq!(snapshot(&host), before, "{which}: {}", text(&out));
        let ours: Vec<String> = links.into_iter().filter(|l| *l != taken).collect();
        let left = lab_leftovers(&name, &ours, Some(&host));
        assert!(left.is_empty(), "{which}: left behind: {left:#?}");
    }
}

/// The same window for a namespace whose name was taken between setup's check and its
/// create. `named::create_marked` journals the /run/netns entry's inode before the name
/// exists; run here on a taken name it leaves exactly what a SIGKILL right after the refused
/// create leaves (the record, no "not created"), and teardown must keep the namespace that
/// was there first.
#[test]
fn a_namespace_taken_under_a_killed_setup_survives_its_teardown() {
    use nettool::lab::state::{HostRecord, Journal, Undo};
    use nettool::netns::named;
    let theirs = TestNs::new("theirs");
    let name = theirs.name.clone();
    let inode = std::fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let host = HostRecord {
        netns: Some(name.clone()),
        inode,
        setup_pid: None,
        setup_start_time: None,
    };
    let mut journal = None;
    let made = named::create_marked(&name, |entry| {
        assert!(entry.is_some(), "/run/netns makes no unnamed files here");
        let mut j = Journal::create(&name, &host).map_err(|e| e.to_string())?;
        j.record(&Undo::Netns {
            name: name.clone(),
            entry,
        })
        .map_err(|e| e.to_string())?;
        journal = Some(j);
        Ok(())
    });
    assert!(
        matches!(made, Err(named::NamedError::Exists(_))),
        "{:?}",
        made.map(|_| ())
    );
    drop(journal);
    let out = nettool_in(None, &["teardown", &name], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        netns_names().contains(&name),
        "teardown removed the namespace that was there first: {}",
        text(&out)
    );
    assert!(!std::path::Path::new(&format!("/run/nettool/{name}")).exists());
    // And a namespace made with the mark is found as the lab's own.
    let mine = unique("mine");
    let mut entry = None;
    let ns = named::create_marked(&mine, |e| {
        entry = e;
        Ok(())
    })
    .unwrap();
    assert_eq!(named::entry_inode(&mine), entry);
    drop(ns);
    assert!(named::delete(&mine).unwrap());
}

/// A lab that would swallow the host is refused before anything exists: a subnet that is
/// absurdly wide (0.0.0.0/0 masquerades every outgoing packet), and one that covers a route of
/// the host namespace.
#[test]
fn subnets_that_cover_the_host_are_refused_up_front() {
    let host = TestNs::new("wide");
    let outside = TestNs::new("wideout");
    veth("upl0", &host, "upl1", &outside);
    host.ip(&["addr", "add", "10.93.4.5/24", "dev", "upl0"]);
    let before = snapshot(&host);
    for (subnet, want) in [
        ("0.0.0.0/0", "too wide"),
        ("10.0.0.0/7", "too wide"),
        ("10.93.0.0/16", "overlaps the route 10.93.4.0/24 dev upl0"),
        ("10.93.4.0/26", "overlaps the route 10.93.4.0/24 dev upl0"),
    ] {
        let file = write_lab(&format!(
            "[[network]]\nname = \"n\"\nsubnet = \"{subnet}\"\n[[container]]\nname = \"a\"\nports = [\"8093:80\"]\n"
        ));
        let name = unique("wide");
        // A guard, so a lab that does come up is removed again.
        let _lab = TestLab {
            name: name.clone(),
            host: Some(host.name.clone()),
        };
        let out = nettool_in(Some(&host.name), &["setup", file.s(), "--name", &name], &[]);
        assert!(
            !out.status.success() && text(&out).contains(want),
            "{subnet}: {}",
            text(&out)
        );
        assert_eq!(snapshot(&host), before, "{subnet}");
        assert!(!std::path::Path::new(&format!("/run/nettool/{name}")).exists());
    }
    // The same lab file works where the host has no such route.
    let file = write_lab(
        "[[network]]\nname = \"n\"\nsubnet = \"10.93.0.0/16\"\n[[container]]\nname = \"a\"\n",
    );
    let (lab, _) = TestLab::isolated("wideok", &[file.s()]);
    lab.teardown();
}

/// More containers on one network than a Linux bridge has ports (BR_MAX_PORTS) is refused at
/// once, naming the limit, instead of failing with "Exchange full" after building 1023 of them.
#[test]
fn more_containers_than_a_bridge_takes_is_refused_up_front() {
    let mut body = String::from("[[network]]\nname = \"big\"\nsubnet = \"10.94.0.0/16\"\n");
    for i in 0..1100 {
        body.push_str(&format!("[[container]]\nname = \"c{i}\"\n"));
    }
    let file = write_lab(&body);
    let name = unique("big");
    let _lab = TestLab {
        name: name.clone(),
        host: None,
    };
    let t0 = std::time::Instant::now();
    let out = nettool(&["setup", file.s(), "--isolated", "--name", &name]);
    let took = t0.elapsed();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(
        msg.contains("1100 containers") && msg.contains("at most 1023 ports"),
        "{msg}"
    );
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
    assert!(!netns_names().iter().any(|n| n.starts_with(&name)));
}

/// Teardown says which process still holds a lab namespace alive (pid, comm), instead of
/// reporting it removed while it lives on.
#[test]
fn teardown_names_the_process_holding_a_namespace() {
    let (lab, _) = TestLab::isolated("held", &[]);
    let ns = lab.ns("client");
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["sleep", "600"])
        .spawn()
        .unwrap();
    let pid = child.id();
    // nsenter execs sleep: wait until the pid is sleep inside the namespace.
    wait_for("sleep in the lab namespace", 5, || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    let out = lab.teardown();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.contains(&format!("namespace {ns} lives on: pid {pid} (sleep)")),
        "{out}"
    );
}

/// Without root, setup and teardown say once, naming the command, that root is needed.
#[test]
fn setup_and_teardown_without_root_say_so_once() {
    for args in [
        vec!["setup", "--isolated", "--name", "nt-test-noroot"],
        vec!["teardown", "nt-test-noroot"],
    ] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_nettool"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.matches("root").count(), 2, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "`{} {}` needs root",
                env!("CARGO_BIN_EXE_nettool"),
                args[0]
            )),
            "{err}"
        );
    }
}

/// `nettool labs` lists a lab with its host and health; once its proxy dies, labs and a
/// second `setup` say so (instead of "already up").
#[test]
fn labs_shows_health_and_setup_says_what_is_broken() {
    let (lab, v) = TestLab::isolated("health", &[]);
    let labs = nettool_json(&["labs", "--json"]);
    let me = labs
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == lab.name.as_str())
        .unwrap_or_else(|| panic!("{labs}"))
        .clone();
    assert_eq!(me["phase"], "up", "{me}");
    assert_eq!(me["host_netns"], lab.name.as_str(), "{me}");
    assert_eq!(me["problems"], serde_json::json!([]), "{me}");
    assert!(me["namespaces"].as_array().unwrap().len() >= 4, "{me}");
    let table = nettool_ok(&["labs"]);
    let row = table.lines().find(|l| l.starts_with(&lab.name)).unwrap();
    assert!(
        row.contains(&format!("{} (isolated)", lab.name)) && row.contains("ok ("),
        "{table}"
    );
    // The proxy dies.
    let proxy = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "proxy")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    sh(&["kill", "-9", &proxy.to_string()]);
    let want = format!("its proxy (pid {proxy}) is not running");
    wait_for("labs to see the dead proxy", 5, || {
        nettool_ok(&["labs"]).contains(&want)
    });
    let out = nettool(&["setup", "--isolated", "--name", &lab.name]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(
        msg.contains("is up but broken") && msg.contains(&want) && !msg.contains("already up"),
        "{msg}"
    );
    // The command it prints rebuilds the lab whole.
    let rebuild = msg
        .lines()
        .find_map(|l| l.strip_prefix("Rebuild it: "))
        .unwrap_or_else(|| panic!("{msg}"));
    let out = Command::new("sh").args(["-c", rebuild]).output().unwrap();
    assert!(out.status.success(), "{rebuild}: {}", text(&out));
    let labs = nettool_ok(&["labs"]);
    let row = labs.lines().find(|l| l.starts_with(&lab.name)).unwrap();
    assert!(row.contains("ok ("), "{labs}");
}

/// Flags that contradict the running lab are refused with the command that does it.
#[test]
fn setup_refuses_flags_that_contradict_the_running_lab() {
    let (lab, _) = TestLab::isolated("contra", &["--no-userland-proxy"]);
    let out = nettool(&[
        "setup",
        "--isolated",
        "--name",
        &lab.name,
        "--no-userland-proxy",
        "--backend",
        "nftables",
    ]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(
        msg.contains("--backend nftables (the lab runs with iptables)"),
        "{msg}"
    );
    let rebuild = msg
        .lines()
        .find_map(|l| l.strip_prefix("Rebuild it that way: "))
        .unwrap_or_else(|| panic!("{msg}"));
    let out = Command::new("sh").args(["-c", rebuild]).output().unwrap();
    assert!(out.status.success(), "{rebuild}: {}", text(&out));
    let st = nettool::lab::state::load(&lab.name).unwrap();
    assert_eq!(st.backend.to_string(), "nftables");
}

/// Inside `ip netns exec` (a slave mount namespace) setup is refused before anything exists,
/// and the nsenter command it prints works.
#[test]
fn setup_inside_ip_netns_exec_is_refused_with_the_command_that_works() {
    let host = TestNs::new("mnt");
    let name = unique("mnt");
    let lab = TestLab {
        name: name.clone(),
        host: Some(host.name.clone()),
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &host.name])
        .arg(env!("CARGO_BIN_EXE_nettool"))
        .args(["setup", "--name", &name, "--no-userland-proxy"])
        .output()
        .unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("slave mount"), "{msg}");
    assert!(!netns_names().iter().any(|n| n.starts_with(&name)), "{msg}");
    let cmd = msg
        .lines()
        .find_map(|l| l.split_once("entering only the network namespace: "))
        .map(|(_, c)| c.to_string())
        .unwrap_or_else(|| panic!("{msg}"));
    assert!(
        cmd.starts_with(&format!("nsenter --net=/run/netns/{} ", host.name)),
        "{cmd}"
    );
    let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", text(&out));
    assert!(exec(&format!("{name}-client"), &["getent", "hosts", "app"]).0);
    lab.teardown();
}

/// In a mount namespace of its own (`unshare -m`) setup is refused before anything exists
/// when its /run/netns mounts would not reach the machine's mount namespace (private, slave),
/// and the printed command works; with `--propagation shared` (the mounts propagate back) it
/// is accepted and its namespaces are usable from here, like in the normal case. The machine's
/// mount namespace is found without /proc/1/ns (a kernel thread's where pid 1 is hidden).
#[test]
fn setup_in_a_mount_namespace_of_its_own_is_refused_unless_its_mounts_reach_the_machine() {
    for prop in ["private", "slave", "shared", "normal"] {
        let host = TestNs::new("unsh");
        let name = unique("unsh");
        let lab = TestLab {
            name: name.clone(),
            host: Some(host.name.clone()),
        };
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", host.path()));
        if prop != "normal" {
            cmd.args(["unshare", "-m", "--propagation", prop]);
        }
        let out = cmd
            .arg(env!("CARGO_BIN_EXE_nettool"))
            .args(["setup", "--name", &name, "--no-userland-proxy"])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let msg = text(&out);
        if prop == "shared" || prop == "normal" {
            assert!(out.status.success(), "{prop}: {msg}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{prop}: {msg}");
            assert!(
                msg.contains(&format!("/run/netns is a {prop} mount")),
                "{msg}"
            );
            assert!(!netns_names().iter().any(|n| n.starts_with(&name)), "{msg}");
            let cmd = msg
                .lines()
                .find_map(|l| l.split_once("entering only the network namespace: "))
                .map(|(_, c)| c.to_string())
                .unwrap_or_else(|| panic!("{msg}"));
            let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
            assert!(out.status.success(), "{cmd}: {}", text(&out));
        }
        // Built where the rest of the machine sees it.
        assert!(
            exec(&format!("{name}-client"), &["getent", "hosts", "app"]).0,
            "{prop}"
        );
        lab.teardown();
    }
}

/// The same lab name asked for from another namespace is not "(this namespace as host)".
#[test]
fn same_lab_name_from_another_namespace_is_not_claimed_here() {
    let a = TestNs::new("hosta");
    let b = TestNs::new("hostb");
    let (lab, _) = TestLab::in_host("twice", &a, &["--no-userland-proxy"]);
    let out = nettool_in(
        Some(&b.name),
        &["setup", "--name", &lab.name, "--no-userland-proxy"],
        &[],
    );
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(!msg.contains("this namespace as host"), "{msg}");
    assert!(
        msg.contains("its host is another network namespace") && msg.contains(&a.name),
        "{msg}"
    );
}

/// Two labs in one host, both torn down: nftables is byte for byte what it was (no empty
/// tables or base chains left by iptables-nft), and no empty /etc/netns or /run/nettool
/// folder stays behind.
#[test]
fn teardown_returns_the_host_byte_for_byte() {
    let host = TestNs::new("bytes");
    let nft = || sh(&["ip", "netns", "exec", &host.name, "nft", "list", "ruleset"]);
    let before = (nft(), snapshot(&host));
    let folders = ["/run/nettool", "/etc/netns"];
    let existed: Vec<bool> = folders
        .iter()
        .map(|d| std::path::Path::new(d).exists())
        .collect();
    let f1 = write_lab("[[network]]\nname = \"n\"\nsubnet = \"10.95.0.0/24\"\n[[container]]\nname = \"a\"\nports = [\"8095:80\"]\n");
    let f2 = write_lab("[[network]]\nname = \"n\"\nsubnet = \"10.96.0.0/24\"\n[[container]]\nname = \"b\"\nports = [\"8096:80\"]\n");
    let (l1, _) = TestLab::in_host("bytes1", &host, &[f1.s()]);
    let (l2, _) = TestLab::in_host("bytes2", &host, &[f2.s()]);
    assert_ne!(nft(), before.0);
    l1.teardown();
    l2.teardown();
    assert_eq!(nft(), before.0);
    assert_eq!(snapshot(&host), before.1);
    // Folders the labs made: gone, unless another lab (a test running beside this one) uses them.
    wait_for("no empty lab folders", 5, || {
        folders
            .iter()
            .zip(&existed)
            .all(|(d, was)| *was || std::fs::read_dir(d).map_or(true, |mut rd| rd.next().is_some()))
    });
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PATH without any directory holding a `nettool`: the shell of someone who only cloned.
fn path_without_nettool() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path)
        .filter(|d| !d.join("nettool").exists())
        .collect();
    std::env::join_paths(dirs)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The "Try next" commands of a `setup` output, without their comments.
fn try_next_lines(out: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.starts_with("Try next:"))
        .skip(1)
        .map(|l| l.split("  # ").next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// On a fresh clone, after the README's main command, every "Try next" line setup prints runs
/// as printed (nettool is not on the PATH there) and exits 0. The clone is made with git from
/// this checkout. The release binary put where the README's build leaves it
/// (target/release/nettool in the clone) is, in order: NETTOOL_TEST_README_BUILD=1, a real
/// `cargo build --release` of the clone (sharing this target directory's dependencies through
/// CARGO_TARGET_DIR); NETTOOL_TEST_README_BIN, the README's release build tools/test made of
/// this checkout (CI's fresh clone), taken only if the checkout is clean at the commit cloned;
/// else the binary this test suite built (a developer's quick run). The watchers (`proxy
/// --dump`, `dns`) run until they are up, then get the Ctrl-C a person would give them, and
/// must exit 0 too.
#[test]
fn every_try_next_line_runs_as_printed_from_a_fresh_clone() {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    let clone = TempDir(std::env::temp_dir().join(unique("clone")));
    sh(&[
        "git",
        "clone",
        "-q",
        env!("CARGO_MANIFEST_DIR"),
        clone.0.to_str().unwrap(),
    ]);
    let release = clone.0.join("target/release/nettool");
    if std::env::var_os("NETTOOL_TEST_README_BUILD").is_some() {
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        let st = Command::new("cargo")
            .args(["build", "--release"])
            .current_dir(&clone.0)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::create_dir_all(release.parent().unwrap()).unwrap();
        std::fs::copy(target.join("release/nettool"), &release).unwrap();
    } else {
        // NETTOOL_TEST_README_BIN is built from this checkout: it is the clone's build only if
        // the sources are the same (CI's fresh clone); otherwise the test build's binary stands in.
        let here = env!("CARGO_MANIFEST_DIR");
        let git = |dir: &std::path::Path, args: &[&str]| {
            let out = Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let here = std::path::Path::new(here);
        let same_source = git(here, &["status", "--porcelain", "--untracked-files=no"]).is_empty()
            && git(here, &["rev-parse", "HEAD"]) == git(&clone.0, &["rev-parse", "HEAD"]);
        let bin = match std::env::var_os("NETTOOL_TEST_README_BIN").filter(|b| !b.is_empty()) {
            Some(bin) if same_source => std::path::PathBuf::from(bin),
            Some(_) => {
                eprintln!("NETTOOL_TEST_README_BIN: this checkout has changes; the test build's binary stands in");
                std::path::PathBuf::from(env!("CARGO_BIN_EXE_nettool"))
            }
            None => std::path::PathBuf::from(env!("CARGO_BIN_EXE_nettool")),
        };
        std::fs::create_dir_all(release.parent().unwrap()).unwrap();
        std::fs::copy(&bin, &release).unwrap();
    }
    let path = path_without_nettool();
    let name = unique("tour");
    let _guard = TestLab {
        name: name.clone(),
        host: None,
    };
    // `cargo run --release -- setup`, as the README says (isolated, so this machine is untouched).
    let out = Command::new(&release)
        .args(["setup", "--isolated", "--name", &name])
        .current_dir(&clone.0)
        .env("PATH", &path)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = try_next_lines(&printed);
    assert!(lines.len() >= 8, "{printed}");
    let (teardown, rest) = lines.split_last().unwrap();
    assert!(teardown.contains(" teardown "), "{printed}");
    let log = clone.0.join("line.log");
    for line in rest {
        let logf = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {line}"))
            .current_dir(&clone.0)
            .env("PATH", &path)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .process_group(0)
            .spawn()
            .unwrap();
        let watcher = line.contains(" proxy ") || line.contains(" dns ");
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            let up = said.contains("listening on") || said.contains("capturing in");
            if watcher && (up || t0.elapsed() > Duration::from_secs(5)) {
                std::thread::sleep(Duration::from_millis(200));
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGINT);
                }
                break child.wait().unwrap();
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("`{line}` did not finish in 60 s: {said}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "`{line}` as printed: {status}: {said}");
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(teardown)
        .current_dir(&clone.0)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "`{teardown}`: {}", text(&out));
    assert!(!netns_names().iter().any(|n| n.starts_with(&name)));
}

/// `proxy --dump 8080 ...` right after setup (the lab's proxy holds 8080) names who holds it.
#[test]
fn proxy_on_a_port_the_lab_holds_says_who_holds_it() {
    let (lab, v) = TestLab::isolated("holds", &[]);
    let proxy = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "proxy")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.name])
        .arg(env!("CARGO_BIN_EXE_nettool"))
        .args(["proxy", "--dump", "8080", "172.19.0.2:80"])
        .output()
        .unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(
        msg.contains(&format!(
            "held by pid {proxy} (nettool) of lab {}",
            lab.name
        )),
        "{msg}"
    );
}

/// Like dockerd, a port published on 0.0.0.0 answers on [::1] too, in both proxy modes.
#[test]
fn localhost_publish_answers_on_ipv6_loopback_too() {
    for mode in [&[][..], &["--docker-style-proxies"][..]] {
        let (lab, v) = TestLab::isolated("v6lo", mode);
        assert_eq!(curl(&lab.name, "http://127.0.0.1:8080/"), "hello from web");
        let (ok, body) = exec(
            &lab.name,
            &["curl", "-s", "-g", "-m", "5", "http://[::1]:8080/"],
        );
        assert!(ok && body == "hello from web", "{mode:?}: {body} {v}");
        lab.teardown();
    }
}

/// `netns exec NAME CMD` works as `ip netns exec NAME CMD` does: `--` is optional, and a named
/// namespace's /etc/netns files apply without `--sys`, so a lab container resolves the lab's
/// names (before: "unexpected argument 'curl' found", and with `--` curl could not resolve
/// `app` because the lab's resolv.conf was only bound with `--sys`).
#[test]
fn netns_exec_resolves_lab_names_without_sys_or_dashes() {
    let (lab, _) = TestLab::isolated("nxname", &[]);
    let client = lab.ns("client");
    for dashes in [&["--"][..], &[][..]] {
        let mut args = vec!["netns", "exec", client.as_str()];
        args.extend_from_slice(dashes);
        args.extend_from_slice(&["curl", "-s", "-m", "5", "http://app/"]);
        let out = nettool_in(None, &args, &[]);
        assert!(out.status.success(), "{dashes:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("hello from app"),
            "{dashes:?}: {}",
            text(&out)
        );
    }
    // An option of the command is the command's, not nettool's; its exit code passes through.
    let out = nettool_in(None, &["netns", "exec", &client, "sh", "-c", "exit 3"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = nettool_in(None, &["netns", "exec", &client, "ip", "-o", "link"], &[]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `container:NAME` of a lab container is a TARGET of every command that takes a namespace
/// (one resolver), and `netns list` names the container instead of "-". Issue 19 found it
/// working in doctor only; this keeps it so for each command.
#[test]
fn a_lab_container_is_a_target_of_every_command_and_named_in_netns_list() {
    let cname = format!("box{}", std::process::id());
    let file = write_lab(&format!(
        "[lab]\nname = \"x\"\n[[network]]\nname = \"n\"\nsubnet = \"172.31.78.0/24\"\n\
         [[container]]\nname = \"{cname}\"\nnetwork = \"n\"\naddress = \"172.31.78.5\"\n\
         run = \"nettool serve http 80\"\nports = [\"8080:80\"]\n"
    ));
    let (lab, _) = TestLab::isolated("anytgt", &[file.s()]);
    let target = format!("container:{cname}");
    let list = nettool_json(&["netns", "list", "--json"]);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["names"][0] == lab.ns(&cname))
        .unwrap_or_else(|| panic!("{} not in netns list: {list}", lab.ns(&cname)));
    assert_eq!(row["containers"][0]["name"], cname.as_str(), "{row}");
    assert_eq!(row["containers"][0]["engine"], "lab", "{row}");
    let commands: Vec<Vec<&str>> = vec![
        vec!["netns", "inspect", &target],
        vec!["netns", "exec", &target, "--", "true"],
        vec!["peer", "--netns", &target, "--all"],
        vec!["topology", "--netns", &target],
        vec!["explain-nat", "--netns", &target],
        vec!["doctor", &target, "--netns", &lab.name],
        vec!["dns", "--netns", &target, "--duration", "1s"],
        vec!["capture", "--netns", &target, "--duration", "1s"],
        vec!["trace", "--netns", &target, "--duration", "1s", "tcp:80"],
    ];
    for args in commands {
        let out = nettool_in(None, &args, &[]);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    // What inspect and doctor say is about that container.
    let said = text(&nettool_in(None, &["netns", "inspect", &target], &[]));
    assert!(said.contains("172.31.78.5"), "{said}");
    let said = text(&nettool_in(
        None,
        &["doctor", &target, "--netns", &lab.name],
        &[],
    ));
    assert!(
        said.contains(&format!("lab container {cname} is running")),
        "{said}"
    );
}

/// Is `pid` a kernel thread (PF_KTHREAD in /proc/PID/stat's flags)?
fn is_kernel_thread(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().nth(6)?.to_string();
            after.parse::<u64>().ok()
        })
        .is_some_and(|flags| flags & 0x0020_0000 != 0)
}

/// The host namespace's processes in `topology --all` (text and JSON) and in `peer --all --json`
/// leave out kernel threads (issue 19: they filled the host namespace's box); `netns list` is
/// tested in tests/netns.rs. Only reads the machine. peer shows the host namespace only when one
/// of its veths is there, so that half checks whatever the machine has.
#[test]
fn the_host_namespace_lists_no_kernel_threads_in_topology_or_peer() {
    let kthreadd_comm = std::fs::read_to_string("/proc/2/comm").unwrap_or_default();
    assert!(
        is_kernel_thread(2),
        "pid 2 is kthreadd here: {kthreadd_comm}"
    );
    let topo = nettool_json(&["topology", "--all", "--json"]);
    let mut seen = 0;
    for n in topo["nodes"].as_array().unwrap() {
        for p in n["processes"].as_array().into_iter().flatten() {
            let pid: u64 = p
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            seen += 1;
            assert!(
                !is_kernel_thread(pid),
                "kernel thread {p} in {}",
                n["label"]
            );
        }
    }
    assert!(seen > 0, "no process at all in topology --all: {topo}");
    let text = nettool_ok(&["topology", "--all", "--format", "text"]);
    for k in ["/kthreadd", "/ksoftirqd", "/kworker", "/rcu_"] {
        assert!(!text.contains(k), "{k} in topology text");
    }
    let peers = nettool_json(&["peer", "--all", "--json"]);
    for pair in peers.as_array().unwrap() {
        for side in ["host", "peer"] {
            for p in pair[side]["namespace"]["processes"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let pid = p["pid"].as_u64().unwrap();
                assert!(!is_kernel_thread(pid), "kernel thread {p} in peer --all");
            }
        }
    }
}

/// SIGKILL `pid` and wait until it is gone or a zombie (its parent, PID 1 here, may not reap
/// it soon: a zombie must count as dead).
fn killed(pid: u32) {
    sh(&["kill", "-9", &pid.to_string()]);
    wait_for("the killed proxy to go", 5, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
    });
}

#[test]
fn teardown_and_setup_remove_what_a_sigkilled_transparent_proxy_left() {
    let host = TestNs::new("tphost");
    let before = transparent_traces(Some(&host));
    let lab_file = |net: u8, port: u16| {
        write_lab(&format!("[lab]\ntransparent_proxy = true\n[[network]]\nname = \"n\"\nsubnet = \"10.{net}.0.0/24\"\n[[container]]\nname = \"a\"\nrun = \"nettool serve http 80\"\nports = [\"{port}:80\"]\n"))
    };
    let proxy_of = |v: &serde_json::Value| v["proxy_pids"][0].as_u64().expect("a proxy pid") as u32;
    let journal = |pid: u32| std::path::PathBuf::from(format!("/run/nettool-proxy/{pid}.json"));
    // Any proxy start removes a dead proxy's leftovers too, and other tests start proxies all
    // the time: an attempt counts only when teardown (setup) itself says it removed them; one
    // where another start was first is tried again, and never saying it fails.
    let mut teardown_did = false;
    for attempt in 0..4u8 {
        // teardown: the lab's proxy was SIGKILLed (no chance to clean up); the host namespace
        // outlives the lab, and with it the proxy's nft table, policy rules and routes.
        let f1 = lab_file(71, 8091 + u16::from(attempt) * 10);
        let (lab, v) = TestLab::in_host("tpk1", &host, &[f1.s()]);
        let pid = proxy_of(&v);
        let during = transparent_traces(Some(&host));
        assert!(during.contains(&format!("nettool_proxy_{pid}")), "{during}");
        killed(pid);
        let said = lab.teardown();
        assert_eq!(
            transparent_traces(Some(&host)),
            before,
            "teardown left what the SIGKILLed transparent proxy pid {pid} added"
        );
        assert!(!journal(pid).exists(), "{}", journal(pid).display());
        if said.contains(&format!("left by dead transparent proxy pid {pid}")) {
            teardown_did = true;
            break;
        }
    }
    assert!(
        teardown_did,
        "teardown never said it removed a dead proxy's leftovers in 4 attempts"
    );
    // setup: a lab without a userland proxy starts none that would clean up; its setup does.
    let mut setup_did = false;
    for attempt in 0..4u8 {
        let f2 = lab_file(72, 8092 + u16::from(attempt) * 10);
        let (lab2, v) = TestLab::in_host("tpk2", &host, &[f2.s(), "--docker-style-proxies"]);
        let pid = proxy_of(&v);
        killed(pid);
        let f3 = lab_file(73, 8093 + u16::from(attempt) * 10);
        let name3 = unique("tpk3");
        let lab3 = TestLab {
            name: name3.clone(),
            host: Some(host.name.clone()),
        };
        let out = nettool_in(
            Some(&host.name),
            &[
                "setup",
                "--name",
                &name3,
                "--json",
                f3.s(),
                "--no-userland-proxy",
            ],
            &[],
        );
        assert!(out.status.success(), "setup failed: {}", text(&out));
        let now = transparent_traces(Some(&host));
        assert!(
            !now.contains(&format!("nettool_proxy_{pid}")),
            "setup left what the SIGKILLed transparent proxy pid {pid} added: {now}"
        );
        assert!(!journal(pid).exists(), "{}", journal(pid).display());
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        lab3.teardown();
        lab2.teardown();
        assert_eq!(transparent_traces(Some(&host)), before);
        if said.contains(&format!("left by dead transparent proxy pid {pid}")) {
            setup_did = true;
            break;
        }
    }
    assert!(
        setup_did,
        "setup never said it removed a dead proxy's leftovers in 4 attempts"
    );
}
