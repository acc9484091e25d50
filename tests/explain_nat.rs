//! `nettool explain-nat`: golden explanations of committed captures, packet walks, and a live
//! namespace whose real traffic (socat) must agree with what the walk predicts.

mod common;

use std::process::{Command, Stdio};

use common::*;
use nettool::nat::{self, explain, walk};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/nat/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn load(name: &str) -> nat::Ruleset {
    let rs = nat::load_file(&fixture(name), None).expect("fixture loads");
    assert!(rs.problems.is_empty(), "{name}: {:?}", rs.problems);
    rs
}

// ---------------------------------------------------------------- golden explanations

#[test]
fn golden_kube_proxy_shaped() {
    let rs = load("kube-proxy-4svc.iptables-save");
    let s = explain::summarize(&rs);
    assert_eq!(s.services.len(), 4);
    for svc in &s.services {
        assert_eq!(svc.endpoints.len(), 3, "{svc:?}");
        for (_, share) in &svc.endpoints {
            assert!((share - 1.0 / 3.0).abs() < 1e-6, "{svc:?}");
        }
    }
    let p = s
        .published
        .iter()
        .find(|p| p.host == "10.96.0.1" && p.host_port == "80")
        .expect("cluster IP 10.96.0.1:80");
    assert_eq!(p.targets.len(), 3);
    assert_eq!(p.service.as_deref(), Some("ns0/svc0:http"));
    assert!(p.sentence.starts_with("TCP to 10.96.0.1 port 80 is balanced over 10.244.0.1:8080 (33.3%), 10.244.0.2:8080 (33.3%), 10.244.0.3:8080 (33.3%): reached from outside, from containers on cni0, from this host"), "{}", p.sentence);
    // NodePort for svc0 and svc3 (every third service)
    assert!(s
        .published
        .iter()
        .any(|p| p.host == "any local address" && p.host_port == "30000"));
    assert_eq!(s.source_nat.len(), 1);
    assert!(
        s.source_nat[0].sentence.contains("KUBE-MARK-MASQ"),
        "{}",
        s.source_nat[0].sentence
    );
    assert!(s.recognised.iter().any(|r| r.system == "kube-proxy"));
    assert!(s.unreached.is_empty(), "{:?}", s.unreached);
}

#[test]
fn golden_cni_portmap_shaped() {
    let rs = load("cni-portmap.iptables-save");
    let s = explain::summarize(&rs);
    let got: Vec<(String, String, String)> = s
        .published
        .iter()
        .map(|p| {
            (
                p.proto.clone(),
                p.host_port.clone(),
                p.targets[0].to.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("tcp".into(), "8080".into(), "10.22.0.5:80".into()),
            ("tcp".into(), "8443".into(), "10.22.0.5:443".into())
        ]
    );
    assert_eq!(
        s.published[0].sentence,
        "TCP to any local address port 8080 is sent to 10.22.0.5:80: reached from outside, from this host to 198.51.100.10, from this host to 127.0.0.1."
    );
    assert!(s.source_nat[0].sentence.contains("CNI-HOSTPORT-SETMARK"));
}

#[test]
fn walk_kube_branches_have_shares() {
    let rs = load("kube-proxy-4svc.iptables-save");
    let p = walk::Packet::parse("tcp 10.0.0.9:40000 -> 10.96.0.2:80 in eth0").unwrap();
    for (branch, want) in [
        (0, "10.244.0.4:8080"),
        (1, "10.244.0.5:8080"),
        (2, "10.244.0.6:8080"),
    ] {
        let w = walk::walk_with(
            &rs,
            &p,
            &walk::LocalFacts::default(),
            &walk::WalkOptions {
                branch,
                ..Default::default()
            },
        );
        assert_eq!(
            w.final_tuple,
            format!("tcp 10.0.0.9:40000 -> {want}"),
            "{w:#?}"
        );
        let lb = w
            .steps
            .iter()
            .find(|s| !s.branches.is_empty())
            .expect("branch point");
        let shares: Vec<f64> = lb.branches.iter().map(|b| b.share).collect();
        assert_eq!(shares.len(), 3);
        assert!(
            shares.iter().all(|s| (s - 1.0 / 3.0).abs() < 1e-6),
            "{shares:?}"
        );
        // not from 10.244/16: KUBE-MARK-MASQ marked it, so POSTROUTING masquerades
        assert!(
            w.steps.iter().any(|s| s.what.starts_with("MASQUERADE")),
            "{w:#?}"
        );
    }
}

#[test]
fn malformed_line_is_reported_and_rest_explained() {
    let dir = std::env::temp_dir().join(unique("badrules"));
    std::fs::write(
        &dir,
        "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n-A DOCKER -p tcp --dport eighty -j DNAT --to-destination 10.0.0.2:80\n-A DOCKER -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.0.0.2:81\nCOMMIT\n",
    )
    .unwrap();
    let path = dir.to_string_lossy().to_string();
    let out = nettool(&["explain-nat", "-f", &path]);
    let _ = std::fs::remove_file(&dir);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(":5: bad port"), "{text}");
    assert!(text.contains("bad port 'eighty'"), "{text}");
    assert!(
        text.contains("port 8081") && text.contains("10.0.0.2:81"),
        "{text}"
    );
}

/// A jump loop (LOOP-A -> LOOP-B -> LOOP-A, reached from PREROUTING and from OUTPUT, two
/// jumps each way) is named with its file line in the summary, in --json and with a packet
/// walked into it, and nothing hangs: the kernel refuses such rules, only a file holds them.
#[test]
fn a_jump_loop_is_named_with_its_line_and_walks_end() {
    let f = fixture("jump-loop.iptables-save");
    let named = format!(
        "{f}:13: a jump loop of 2 chains in table ip nat: LOOP-A -> LOOP-B (line 11) -> LOOP-A (line 13); the kernel refuses"
    );
    let pkt = "tcp 10.0.0.5:1234 -> 192.0.2.1:9000 in eth0";
    for args in [
        vec!["explain-nat", "-f", &f],
        vec!["explain-nat", "-f", &f, "--packet", pkt],
        vec!["explain-nat", "-f", &f, "--json"],
        vec!["explain-nat", "-f", &f, "--json", "--packet", pkt],
    ] {
        let t0 = std::time::Instant::now();
        let out = nettool(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        if args.contains(&"--json") {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let p = &v["summary"]["problems"];
            assert_eq!(p.as_array().map(Vec::len), Some(1), "{args:?}: {p}");
            assert_eq!(p[0]["line"], 13, "{args:?}: {p}");
            assert!(p[0]["message"].as_str().unwrap().starts_with(&named), "{p}");
        } else {
            assert!(text.contains(&named), "{args:?}: {text}");
        }
        if args.contains(&"--packet") && !args.contains(&"--json") {
            assert!(text.contains("Verdict:"), "{text}");
            // The walk stops at the loop (it printed 100,014 lines, branching at every level).
            assert!(text.lines().count() < 100, "{} lines", text.lines().count());
        }
        eprintln!("{args:?}: {:?}", t0.elapsed());
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = nettool(&[
        "explain-nat",
        "-f",
        "/dev/null",
        "--packet",
        "tcp 1.2.3.4 to 5.6.7.8",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PROTO SRC[:PORT] -> DST[:PORT]"));
    let out = nettool(&["explain-nat", "-f", "/dev/null", "--route", "10.0.0.0/8"]);
    assert_eq!(out.status.code(), Some(2));
}

// ---------------------------------------------------------------- live

/// host ns with a bridge and a container ns behind it, an "outside" ns on a veth, Docker-shaped
/// rules applied with iptables-restore inside the host ns.
struct Lab {
    host: TestNs,
    ctr: TestNs,
    out: TestNs,
    _server: ChildGuard,
}

const RULES: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 10.88.0.0/24 ! -o ntbr0 -j MASQUERADE
-A DOCKER -i ntbr0 -j RETURN
-A DOCKER ! -i ntbr0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -o ntbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -d 10.88.0.2/32 ! -i ntbr0 -o ntbr0 -p tcp -m tcp --dport 80 -j ACCEPT
-A FORWARD -i ntbr0 ! -o ntbr0 -j ACCEPT
COMMIT
";

impl Lab {
    fn new() -> Lab {
        let host = TestNs::new("nathost");
        let ctr = TestNs::new("natctr");
        let out = TestNs::new("natout");
        bridge_container(&host, "ntbr0", "10.88.0.1/24", "vh0", &ctr, "10.88.0.2/24");
        veth("ext0", &host, "eth0", &out);
        host.ip(&["addr", "add", "198.51.100.1/24", "dev", "ext0"]);
        out.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
        out.ip(&["route", "add", "10.88.0.0/24", "via", "198.51.100.1"]);
        sysctl(&host, "net.ipv4.ip_forward=1");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &host.name, "iptables-restore", "--noflush"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("iptables-restore");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(RULES.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "iptables-restore failed");
        // an echo server in the container
        let server = ctr.spawn(&["socat", "TCP-LISTEN:80,fork,reuseaddr", "EXEC:cat"]);
        wait_for("echo server", 5, || {
            sh(&[
                "ip",
                "netns",
                "exec",
                &ctr.name,
                "ss",
                "-Htln",
                "sport = :80",
            ])
            .contains(":80")
        });
        Lab {
            host,
            ctr,
            out,
            _server: server,
        }
    }

    fn walk(&self, packet: &str, from_host: bool) -> serde_json::Value {
        let mut args = vec![
            "explain-nat",
            "--netns",
            &self.host.name,
            "--packet",
            packet,
            "--json",
        ];
        if from_host {
            args.push("--from-host");
        }
        nettool_json(&args)["walk"].clone()
    }
}

/// Send "ping" with socat from inside `ns`; Some(reply) when it came back.
fn socat_echo(ns: &TestNs, dst: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "socat", "-t", "2", "-T", "3", "-",
        ])
        .arg(format!("TCP:{dst},connect-timeout=2"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"ping\n")?;
            c.wait_with_output()
        })
        .expect("socat");
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.success() && s.contains("ping")).then_some(s)
}

#[test]
fn live_walk_agrees_with_real_traffic() {
    let lab = Lab::new();

    // The summary, read live from the namespace.
    let j = nettool_json(&["explain-nat", "--netns", &lab.host.name, "--json"]);
    let published = j["summary"]["published"].as_array().unwrap();
    assert_eq!(published.len(), 1, "{j}");
    assert_eq!(published[0]["host_port"], "8080");
    assert_eq!(published[0]["targets"][0]["to"], "10.88.0.2:80");
    assert!(
        published[0]["sentence"]
            .as_str()
            .unwrap()
            .contains("reached from outside"),
        "{}",
        published[0]["sentence"]
    );
    let text = nettool_ok(&["explain-nat", "--netns", &lab.host.name]);
    assert!(text.contains("Published ports"), "{text}");

    // 1. The published port from outside: the walk says forwarded to 10.88.0.2:80; socat gets its echo.
    let w = lab.walk("tcp 198.51.100.2:40000 -> 198.51.100.1:8080 in ext0", false);
    assert_eq!(w["verdict"], "forwarded", "{w}");
    assert_eq!(w["final_tuple"], "tcp 198.51.100.2:40000 -> 10.88.0.2:80");
    assert_eq!(w["final_packet"]["out_iface"], "ntbr0");
    assert!(
        socat_echo(&lab.out, "198.51.100.1:8080").is_some(),
        "published port did not answer"
    );

    // 2. The container directly on port 80 from outside: the walk says forwarded (FORWARD allows it).
    let w = lab.walk("tcp 198.51.100.2:40000 -> 10.88.0.2:80 in ext0", false);
    assert_eq!(w["verdict"], "forwarded", "{w}");
    assert!(socat_echo(&lab.out, "10.88.0.2:80").is_some());

    // 3. Another container port from outside: dropped by the FORWARD policy; socat times out.
    sh(&["ip", "netns", "exec", &lab.ctr.name, "true"]);
    let _other = lab
        .ctr
        .spawn(&["socat", "TCP-LISTEN:81,fork,reuseaddr", "EXEC:cat"]);
    wait_for("server 81", 5, || {
        sh(&[
            "ip",
            "netns",
            "exec",
            &lab.ctr.name,
            "ss",
            "-Htln",
            "sport = :81",
        ])
        .contains(":81")
    });
    let w = lab.walk("tcp 198.51.100.2:40000 -> 10.88.0.2:81 in ext0", false);
    assert_eq!(w["verdict"], "dropped", "{w}");
    assert!(
        w["summary"]
            .as_str()
            .unwrap()
            .contains("policy of filter FORWARD"),
        "{w}"
    );
    assert!(
        socat_echo(&lab.out, "10.88.0.2:81").is_none(),
        "port 81 answered but the walk said dropped"
    );
    // ...but from inside the container's own namespace it answers (no firewall there).
    assert!(socat_echo(&lab.ctr, "127.0.0.1:81").is_some());

    // 4. From the host itself to its own address: OUTPUT DNAT to the container.
    let w = lab.walk("tcp 198.51.100.1:40000 -> 198.51.100.1:8080", true);
    assert_eq!(w["verdict"], "sent", "{w}");
    assert_eq!(w["final_tuple"], "tcp 198.51.100.1:40000 -> 10.88.0.2:80");
    assert!(socat_echo(&lab.host, "198.51.100.1:8080").is_some());

    // 5. localhost from the host is not DNATed (Docker relies on the userland proxy there):
    //    the walk says delivered locally, and nothing listens there, so socat fails.
    let w = lab.walk("tcp 127.0.0.1:40000 -> 127.0.0.1:8080", true);
    assert_eq!(w["verdict"], "accepted-local", "{w}");
    assert_eq!(w["final_tuple"], "tcp 127.0.0.1:40000 -> 127.0.0.1:8080");
    assert!(socat_echo(&lab.host, "127.0.0.1:8080").is_none());
}

#[test]
fn live_split_backends_warn() {
    let ns = TestNs::new("natsplit");
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "iptables-nft",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.1.0.0/16",
        "-j",
        "MASQUERADE",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.2.0.0/16",
        "-j",
        "MASQUERADE",
    ]);
    let j = nettool_json(&["explain-nat", "--netns", &ns.name, "--json"]);
    let warnings = j["summary"]["warnings"].to_string();
    assert!(
        warnings.contains("split between iptables-nft and iptables-legacy"),
        "{j}"
    );
    assert_eq!(
        j["summary"]["source_nat"].as_array().unwrap().len(),
        2,
        "{j}"
    );
    // legacy tables live in the kernel per namespace: flush ours before the namespace goes.
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "iptables-legacy",
            "-t",
            "nat",
            "-F",
        ])
        .status();
}

#[test]
fn live_nft_native_table() {
    let ns = TestNs::new("natnft");
    let rules = "table ip nt-test {\n chain pre {\n  type nat hook prerouting priority dstnat; policy accept;\n  iifname != \"lo\" tcp dport 8080 dnat to 10.9.0.2:80 comment \"web\"\n }\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr 10.9.0.0/24 oifname != \"br9\" masquerade\n }\n}\n";
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let j = nettool_json(&["explain-nat", "--netns", &ns.name, "--json"]);
    let p = &j["summary"]["published"][0];
    assert_eq!(p["host_port"], "8080", "{j}");
    assert_eq!(p["targets"][0]["to"], "10.9.0.2:80");
    assert_eq!(j["summary"]["source_nat"].as_array().unwrap().len(), 1);
}

// ---------------------------------------------------------------- real dockerd captures

#[test]
fn golden_real_docker_host() {
    // Captured from a real dockerd by tools/capture-docker-nat.
    let rs = load("docker-host.iptables-save");
    let s = explain::summarize(&rs);
    assert!(
        s.recognised
            .iter()
            .any(|r| r.detail.contains("older chain set")),
        "{:?}",
        s.recognised
    );
    let ports: Vec<(&str, &str, &str, &str)> = s
        .published
        .iter()
        .map(|p| {
            (
                p.proto.as_str(),
                p.host.as_str(),
                p.host_port.as_str(),
                p.targets[0].to.as_str(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            ("tcp", "any local address", "8080", "172.17.0.2:80"),
            ("tcp", "127.0.0.1", "9090", "172.30.0.2:8080"),
            ("udp", "any local address", "5353", "172.30.0.2:53"),
        ]
    );
    let web = &s.published[0];
    assert!(
        web.sentence.starts_with(
            "TCP to any local address port 8080 is sent to 172.17.0.2:80: reached from outside, from this host to 198.51.100.10; not from containers on br-ccc0901072c6 (not translated: delivered to this host), not from containers on docker0"
        ),
        "{}",
        web.sentence
    );
    // Docker 20 published 127.0.0.1:9090 to the whole link: a packet from outside to 127.0.0.1 is translated.
    let lo = &s.published[1];
    assert!(
        lo.sentence.contains("reached from outside"),
        "{}",
        lo.sentence
    );
    assert_eq!(web.targets[0].line, 47);
    assert_eq!(s.source_nat.len(), 5);
    assert!(s
        .drops
        .iter()
        .any(|d| d.action == "policy DROP" && d.chain == "FORWARD"));
    assert_eq!(
        s.drops
            .iter()
            .filter(|d| d.chain == "DOCKER-ISOLATION-STAGE-2")
            .count(),
        2
    );
}

#[test]
fn walk_real_docker_host() {
    let rs = load("docker-host.iptables-save");
    let facts = walk::LocalFacts {
        addrs: vec![
            ("192.0.2.10".parse().unwrap(), "eth0".into()),
            ("172.17.0.1".parse().unwrap(), "docker0".into()),
            ("172.30.0.1".parse().unwrap(), "br-ccc0901072c6".into()),
        ],
        routes: vec![
            walk::RouteFact {
                net: "172.17.0.0/16".parse().unwrap(),
                dev: "docker0".into(),
                src: None,
            },
            walk::RouteFact {
                net: "172.30.0.0/24".parse().unwrap(),
                dev: "br-ccc0901072c6".into(),
                src: None,
            },
            walk::RouteFact {
                net: "192.0.2.0/24".parse().unwrap(),
                dev: "eth0".into(),
                src: None,
            },
            walk::RouteFact {
                net: "0.0.0.0/0".parse().unwrap(),
                dev: "eth0".into(),
                src: None,
            },
        ],
        forwarding: Some(true),
    };
    let cases = [
        // (packet, from_host, verdict, final tuple)
        (
            "tcp 203.0.113.5:40000 -> 192.0.2.10:8080 in eth0",
            false,
            "forwarded",
            "tcp 203.0.113.5:40000 -> 172.17.0.2:80",
        ),
        (
            "udp 203.0.113.5:40000 -> 192.0.2.10:5353 in eth0",
            false,
            "forwarded",
            "udp 203.0.113.5:40000 -> 172.30.0.2:53",
        ),
        (
            "tcp 203.0.113.5:40000 -> 172.17.0.2:22 in eth0",
            false,
            "dropped",
            "tcp 203.0.113.5:40000 -> 172.17.0.2:22",
        ),
        // container on the other network: RETURN before the DNAT, so it reaches the host itself
        (
            "tcp 172.30.0.2:40000 -> 192.0.2.10:8080 in br-ccc0901072c6",
            false,
            "accepted-local",
            "tcp 172.30.0.2:40000 -> 192.0.2.10:8080",
        ),
        // container to the internet: masqueraded behind eth0's address
        (
            "tcp 172.17.0.2:40000 -> 198.51.100.7:443 in docker0",
            false,
            "forwarded",
            "tcp 192.0.2.10:40000 -> 198.51.100.7:443",
        ),
        (
            "tcp 192.0.2.10:40000 -> 192.0.2.10:8080",
            true,
            "sent",
            "tcp 192.0.2.10:40000 -> 172.17.0.2:80",
        ),
        (
            "tcp 127.0.0.1:40000 -> 127.0.0.1:9090",
            true,
            "accepted-local",
            "tcp 127.0.0.1:40000 -> 127.0.0.1:9090",
        ),
    ];
    for (spec, from_host, verdict, tuple) in cases {
        let mut p = walk::Packet::parse(spec).unwrap();
        p.from_host = from_host;
        let w = walk::walk(&rs, &p, &facts);
        assert_eq!(w.verdict, verdict, "{spec}: {w:#?}");
        assert_eq!(w.final_tuple, tuple, "{spec}: {w:#?}");
    }
}

#[test]
fn golden_real_docker_container_dns() {
    let rs = load("docker-container-dns.iptables-save");
    let s = explain::summarize(&rs);
    assert_eq!(s.recognised[0].system, "docker-dns");
    assert_eq!(s.published.len(), 2);
    assert_eq!(
        s.published[1].sentence,
        "UDP to 127.0.0.11 port 53 is sent to 127.0.0.11:45340: reached from this host to 127.0.0.11."
    );
    // A query from inside the container: DNAT to the resolver's port; the reply gets :53 back.
    let mut q = walk::Packet::parse("udp 127.0.0.1:33333 -> 127.0.0.11:53").unwrap();
    q.from_host = true;
    let w = walk::walk(&rs, &q, &walk::LocalFacts::default());
    assert_eq!(w.final_tuple, "udp 127.0.0.1:33333 -> 127.0.0.11:45340");
    assert_eq!(w.verdict, "accepted-local");
}

// ---------------------------------------------------------------- nettool labs, both backends

/// `nettool setup --isolated` default lab, torn down on drop.
struct IsolatedLab {
    name: String,
    state: serde_json::Value,
}

impl IsolatedLab {
    fn new(backend: &str) -> IsolatedLab {
        let name = unique("natlab");
        let state = nettool_json(&[
            "setup",
            "--isolated",
            "--name",
            &name,
            "--no-userland-proxy",
            "--backend",
            backend,
            "--json",
        ]);
        let lab = IsolatedLab { name, state };
        let host = lab.host().to_string();
        wait_for("web's service", 10, || {
            curl(&host, "http://172.19.0.2:80/").is_some()
        });
        lab
    }

    fn host(&self) -> &str {
        self.state["host_netns"].as_str().unwrap()
    }

    fn bridge(&self, network: &str) -> String {
        self.state["networks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == network)
            .unwrap()["bridge"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn container_ns(&self, name: &str) -> String {
        self.state["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["netns"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn walk(&self, packet: &str, from_host: bool) -> serde_json::Value {
        let mut args = vec![
            "explain-nat",
            "--netns",
            self.host(),
            "--packet",
            packet,
            "--json",
        ];
        if from_host {
            args.push("--from-host");
        }
        nettool_json(&args)["walk"].clone()
    }
}

impl Drop for IsolatedLab {
    fn drop(&mut self) {
        let _ = nettool(&["teardown", &self.name]);
    }
}

/// curl inside namespace `ns`; Some(body) on success.
fn curl(ns: &str, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-m", "2", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lab_walks_agree_with_curl(backend: &str) {
    let lab = IsolatedLab::new(backend);
    let host = lab.host().to_string();
    let j = nettool_json(&["explain-nat", "--netns", &host, "--json"]);
    let s = &j["summary"];
    assert!(s["recognised"].to_string().contains("nettool lab"), "{s}");
    let p = &s["published"][0];
    assert_eq!(p["host_port"], "8080", "{s}");
    assert_eq!(p["targets"][0]["to"], "172.19.0.2:80");
    assert!(
        p["targets"][0]["name"]
            .as_str()
            .unwrap_or("")
            .contains("web"),
        "{p}"
    );

    // From the lab's host to localhost:8080: OUTPUT DNAT (no userland proxy) and MASQUERADE.
    let w = lab.walk("tcp 127.0.0.1:40000 -> 127.0.0.1:8080", true);
    assert_eq!(w["verdict"], "sent", "{w}");
    assert_eq!(w["final_packet"]["dst"], "172.19.0.2");
    assert_eq!(w["final_packet"]["dport"], 80);
    assert_eq!(
        w["final_packet"]["out_iface"].as_str(),
        Some(lab.bridge("bridge").as_str())
    );
    let body = curl(&host, "http://127.0.0.1:8080/").expect("localhost:8080 from the lab host");
    assert!(body.contains("hello from web"), "{body}");

    // client (backend network) straight to web (bridge network): the isolation chains drop it.
    let backend_br = lab.bridge("backend");
    let w = lab.walk(
        &format!("tcp 172.20.0.3:40000 -> 172.19.0.2:80 in {backend_br}"),
        false,
    );
    assert_eq!(w["verdict"], "dropped", "{w}");
    assert!(
        w["summary"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("isolation"),
        "{w}"
    );
    let client = lab.container_ns("client");
    assert!(
        curl(&client, "http://172.19.0.2:80/").is_none(),
        "isolation did not hold but the walk said dropped"
    );

    // client to the published port on its gateway: DNATed, allowed by the DNAT exception.
    let w = lab.walk(
        &format!("tcp 172.20.0.3:40000 -> 172.20.0.1:8080 in {backend_br}"),
        false,
    );
    assert_eq!(w["verdict"], "forwarded", "{w}");
    assert_eq!(w["final_packet"]["dst"], "172.19.0.2");
    let body = curl(&client, "http://172.20.0.1:8080/").expect("published port from client");
    assert!(body.contains("hello from web"), "{body}");
}

#[test]
fn lab_iptables_walks_agree_with_curl() {
    lab_walks_agree_with_curl("iptables");
}

#[test]
fn lab_nftables_walks_agree_with_curl() {
    lab_walks_agree_with_curl("nftables");
}

#[test]
fn golden_lab_captures() {
    // Captured from nettool labs (default lab, --no-userland-proxy), one per backend.
    for (file, table) in [
        ("lab-iptables.iptables-save", "nat"),
        ("lab-nftables.json", "nettool_nt_doc_labn"),
    ] {
        let rs = load(file);
        let s = explain::summarize(&rs);
        assert!(s.recognised.iter().any(|r| r.system == "nettool"), "{file}");
        assert_eq!(s.published.len(), 1, "{file}");
        let p = &s.published[0];
        assert_eq!(
            (p.proto.as_str(), p.host.as_str(), p.host_port.as_str()),
            ("tcp", "any local address", "8080")
        );
        assert_eq!(p.targets[0].to, "172.19.0.2:80");
        assert_eq!(p.targets[0].table, table);
        assert!(p.sentence.starts_with("TCP to any local address port 8080 is sent to 172.19.0.2:80: reached from outside, from containers on nt-"), "{}", p.sentence);
        assert!(
            p.sentence
                .ends_with("from this host to 198.51.100.10, from this host to 127.0.0.1."),
            "{}",
            p.sentence
        );
        assert_eq!(s.source_nat.len(), 5, "{file}");
        assert_eq!(s.drops.len(), 2, "{file}: {:?}", s.drops);
        assert_eq!(s.forward_accepts.len(), 1, "{file}");
    }
}

// ---------------------------------------------------------------- one truth: summary = walks

/// Every rule set the consistency test reads: the committed captures, and the shared reference
/// rule sets when CI laid `../shared/nat-fixtures` beside the clone.
fn all_rule_sets() -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [root.join("tests/fixtures/nat"), shared_dir()] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            eprintln!(
                "consistency: {} is absent, its rule sets are skipped",
                dir.display()
            );
            continue;
        };
        let mut files: Vec<_> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.extension().is_some_and(|x| x == "md" || x == "txt"))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

/// Every branch of a walk: how many branches its first load-balancing point has.
fn walks_of(rs: &nat::Ruleset, p: &walk::Packet, facts: &walk::LocalFacts) -> Vec<walk::Walk> {
    let first = walk::walk(rs, p, facts);
    let n = first
        .steps
        .iter()
        .find(|s| !s.branches.is_empty())
        .map(|s| s.branches.len())
        .unwrap_or(1);
    let mut out = vec![first];
    for k in 1..n.min(64) {
        out.push(walk::walk_with(
            rs,
            p,
            facts,
            &walk::WalkOptions {
                branch: k,
                ..Default::default()
            },
        ));
    }
    out
}

/// The claims of the summary, checked against independent walks of the packets they name:
/// each mapping is reached by a packet it covers, each shadowed rule by none, each drop and
/// each open/closed class ends where the summary says.
fn check_consistent(name: &str, rs: &nat::Ruleset) -> usize {
    let s = explain::summarize(rs);
    let host = s
        .host
        .as_ref()
        .expect("the summary names the host it walked through");
    let facts = &host.facts;
    let mut checked = 0;
    for p in &s.published {
        let walks: Vec<walk::Walk> = p
            .probes
            .iter()
            .flat_map(|pr| walks_of(rs, &pr.packet, facts))
            .collect();
        for t in &p.targets {
            let hit = |w: &walk::Walk| {
                w.dnat_by
                    .as_ref()
                    .is_some_and(|r| r.table == t.table && r.chain == t.chain && r.line == t.line)
                    && t.addr.is_none_or(|a| w.final_packet.dst == a)
            };
            if t.shadowed {
                for w in &walks {
                    assert!(
                        !w.touched(&t.table, &t.chain, t.line),
                        "{name}: {} [{} {} line {}] is called shadowed, but a walk of {} reaches it",
                        t.to,
                        t.table,
                        t.chain,
                        t.line,
                        w.packet
                    );
                }
            } else {
                assert!(
                    walks.iter().any(hit),
                    "{name}: the summary says '{}' reaches {}, but no walk of its packets does",
                    p.sentence,
                    t.to
                );
            }
            checked += 1;
        }
        // "reached from X" in the sentence: that probe's walk reaches a target and gets through.
        for pr in &p.probes {
            let w = walk::walk(rs, &pr.packet, facts);
            assert_eq!(w.verdict, pr.verdict, "{name}: {}", pr.packet);
            assert_eq!(w.dnat_by, pr.dnat_by, "{name}: {}", pr.packet);
            checked += 1;
        }
    }
    for d in &s.drops {
        let Some(pr) = &d.probe else { continue };
        let w = walk::walk(rs, &pr.packet, facts);
        let here = w
            .decided_by
            .as_ref()
            .is_some_and(|r| r.table == d.table && r.chain == d.chain && r.line == d.line);
        assert_eq!(
            here,
            d.verified.contains("is dropped here") || d.verified.contains("is rejected here"),
            "{name}: drop [{} {} line {}] says '{}', the walk of {} says '{}'",
            d.table,
            d.chain,
            d.line,
            d.verified,
            pr.packet,
            w.summary
        );
        checked += 1;
    }
    for f in &s.flows {
        let w = walk::walk(rs, &f.probe.packet, facts);
        let open = matches!(w.verdict.as_str(), "forwarded" | "accepted-local" | "sent");
        assert_eq!(
            open,
            f.verdict == "open",
            "{name}: '{}' but the walk says {}",
            f.sentence,
            w.summary
        );
        checked += 1;
    }
    checked
}

#[test]
fn summary_and_walk_agree_on_every_rule_set() {
    let files = all_rule_sets();
    assert!(!files.is_empty());
    let mut total = 0;
    for f in &files {
        let rs = nat::load_file(f.to_str().unwrap(), None).expect("loads");
        let n = check_consistent(&f.display().to_string(), &rs);
        eprintln!("{}: {n} claims checked", f.display());
        total += n;
    }
    assert!(total > 50, "only {total} claims checked");
}

const TWO_NETWORKS: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.20.0.0/16 ! -o br-a -j MASQUERADE
-A POSTROUTING -s 172.21.0.0/16 ! -o br-b -j MASQUERADE
-A DOCKER ! -i br-a -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.20.0.2:80
-A DOCKER ! -i br-b -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.21.0.2:80
-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.22.0.2:80
COMMIT
";

#[test]
fn two_networks_one_publish_is_not_balanced_and_a_dead_rule_is_shadowed() {
    let rs = nat::iptables::parse(TWO_NETWORKS);
    let s = explain::summarize(&rs);
    let p = &s.published[0];
    assert!(!p.sentence.contains("balanced"), "{}", p.sentence);
    assert!(!p.sentence.contains("100%"), "{}", p.sentence);
    let by = |a: &str| p.targets.iter().find(|t| t.to == a).unwrap();
    // From outside and from br-b the first rule wins; from br-a the second: both live.
    assert!(!by("172.20.0.2:80").shadowed);
    assert!(!by("172.21.0.2:80").shadowed);
    // The third catches nothing the first two leave.
    let third = by("172.22.0.2:80");
    assert!(third.shadowed, "{p:#?}");
    assert_eq!(third.shadowed_by.as_ref().map(|r| r.line), Some(10));
    assert!(p.sentence.contains("is shadowed"), "{}", p.sentence);
    check_consistent("two networks", &rs);
}

/// `../shared/nat-fixtures` beside the clone (CI), or two levels up (a git worktree).
fn shared_dir() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let near = root.join("../shared/nat-fixtures");
    let far = root.join("../../shared/nat-fixtures");
    if !near.exists() && far.exists() {
        far
    } else {
        near
    }
}

fn shared(name: &str) -> Option<nat::Ruleset> {
    let path = shared_dir().join(name);
    if !path.exists() {
        eprintln!(
            "skipped: {} is absent (CI lays shared/ beside the clone)",
            path.display()
        );
        return None;
    }
    Some(nat::load_file(path.to_str().unwrap(), None).expect("loads"))
}

#[test]
fn docker28_loopback_publish_is_not_reachable_from_outside() {
    let Some(rs) = shared("moby-usernet-portmap-lo.iptables-save") else {
        return;
    };
    let s = explain::summarize(&rs);
    let p = &s.published[0];
    assert_eq!(p.host, "127.0.0.1");
    assert!(!p.sentence.contains("from anywhere"), "{}", p.sentence);
    assert!(
        p.sentence
            .contains("not from outside (dropped by raw PREROUTING line 45)"),
        "{}",
        p.sentence
    );
    // Only the userland proxy on 127.0.0.1 serves it: the DNAT itself is never applied.
    assert!(p.targets[0].shadowed, "{}", p.sentence);
}

#[test]
fn accepts_before_drops_and_open_ports_are_said() {
    // DOCKER-CT accepts replies before the drop of unpublished ports.
    let Some(rs) = shared("moby-usernet-portmap.iptables-save") else {
        return;
    };
    let s = explain::summarize(&rs);
    let d = s
        .drops
        .iter()
        .find(|d| d.chain == "DOCKER" && d.when.iter().any(|w| w == "leaving by docker0"))
        .expect("the docker0 drop");
    assert!(
        d.verified.contains("only new connections") && d.verified.contains("DOCKER-CT"),
        "{}",
        d.verified
    );
    // nat-unprotected: everything into the bridge is accepted: said as open.
    let rs = shared("moby-usernet-portmap-natunprot.iptables-save").unwrap();
    let s = explain::summarize(&rs);
    let f = s
        .flows
        .iter()
        .find(|f| f.kind == "inbound" && f.to.contains("bridge1"))
        .expect("an inbound flow to bridge1");
    assert_eq!(f.verdict, "open", "{}", f.sentence);
    // Docker 20 with FORWARD policy ACCEPT: unpublished container ports are open.
    let text = std::fs::read_to_string(fixture("docker-host.iptables-save"))
        .unwrap()
        .replace(":FORWARD DROP", ":FORWARD ACCEPT");
    let s = explain::summarize(&nat::iptables::parse(&text));
    let f = s
        .flows
        .iter()
        .find(|f| f.kind == "inbound" && f.to.contains("docker0"))
        .expect("an inbound flow to docker0");
    assert_eq!(f.verdict, "open", "{}", f.sentence);
    assert!(f.sentence.contains("OPEN"), "{}", f.sentence);
}

// ---------------------------------------------------------------- broken input is named

fn write_tmp(tag: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("nt-test-{tag}-{}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn empty_input_is_named_not_a_clean_no_nat() {
    let f = write_tmp("empty", "\n  \n");
    let out = nettool(&["explain-nat", "-f", &f]);
    let _ = std::fs::remove_file(&f);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("the input is empty"), "{}", text(&out));
}

#[test]
fn dump_cut_mid_line_names_the_line_and_drops_the_half_rule() {
    let full = std::fs::read_to_string(fixture("docker-host.iptables-save")).unwrap();
    // Cut inside the DNAT of port 8080: "... --to-destination 172.17.0.2:80" -> "... --to-destination 172.1"
    let at = full.find("--to-destination 172.17.0.2:80").unwrap() + "--to-destination 172.1".len();
    let cut = &full[..at];
    let line = cut.lines().count();
    let rs = nat::parse_text(cut, None, "cut").unwrap();
    assert!(
        rs.problems
            .iter()
            .any(|p| p.line == line && p.message.contains("cut")),
        "{:?}",
        rs.problems
    );
    assert!(
        !rs.tables
            .iter()
            .flat_map(|t| &t.chains)
            .flat_map(|c| &c.rules)
            .any(|r| r.line == line),
        "the half line was kept as a rule"
    );
    assert!(
        rs.warnings.iter().any(|w| w.contains("COMMIT")),
        "{:?}",
        rs.warnings
    );
}

#[test]
fn dash_s_of_another_table_says_its_guess() {
    let mangle = "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n-A PREROUTING -i eth0 -j MARK --set-xmark 0x1/0xffffffff\n";
    let rs = nat::parse_text(mangle, None, "x").unwrap();
    assert_eq!(rs.tables[0].name, "mangle");
    assert!(
        rs.warnings
            .iter()
            .any(|w| w.contains("guessed 'mangle'") && w.contains("--table")),
        "{:?}",
        rs.warnings
    );
    let nat_s = "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n";
    let rs = nat::parse_text(nat_s, None, "x").unwrap();
    assert_eq!(rs.tables[0].name, "nat");
    assert!(rs.warnings.iter().any(|w| w.contains("guessed 'nat'")));
    // With --table no guess is said.
    let rs = nat::parse_text(nat_s, Some("nat"), "x").unwrap();
    assert!(rs.warnings.is_empty(), "{:?}", rs.warnings);
}

#[test]
fn nft_json_of_an_iptables_nft_host_warns_what_it_cannot_read() {
    let ns = TestNs::new("xt");
    let ipt = |args: &str| {
        let argv: Vec<&str> = ["ip", "netns", "exec", &ns.name, "iptables-nft"]
            .into_iter()
            .chain(args.split_whitespace())
            .collect();
        sh(&argv);
    };
    ipt("-t nat -A PREROUTING -p tcp --dport 8080 -m addrtype --dst-type LOCAL -j DNAT --to-destination 10.0.0.2:80");
    ipt("-t nat -A POSTROUTING -s 10.0.0.0/24 ! -o br0 -j MASQUERADE");
    let json = sh(&[
        "ip", "netns", "exec", &ns.name, "nft", "-j", "list", "ruleset",
    ]);
    let rs = nat::parse_text(&json, None, "nft -j").unwrap();
    let w = rs.warnings.join("\n");
    assert!(
        w.contains("iptables-nft") && w.contains("DNAT x1") && w.contains("MASQUERADE x1"),
        "{w}"
    );
    let s = explain::summarize(&rs);
    // Not a clean "none": the DNAT and the masquerade are there, with what is unknown said.
    assert_eq!(s.published.len(), 1, "{:#?}", s.published);
    assert!(
        s.published[0].targets[0].to.contains("does not carry"),
        "{:?}",
        s.published[0].targets
    );
    assert_eq!(s.source_nat.len(), 1);
}

#[test]
fn kube_proxy_dump_without_builtin_chains_lists_every_front_end() {
    let Some(rs) = shared("k8s-TestOverallIPTablesRules.iptables-save") else {
        return;
    };
    assert!(
        rs.warnings
            .iter()
            .any(|w| w.contains("assuming kube-proxy's usual jumps")),
        "{:?}",
        rs.warnings
    );
    let s = explain::summarize(&rs);
    let hosts: Vec<(&str, &str)> = s
        .published
        .iter()
        .map(|p| (p.host.as_str(), p.host_port.as_str()))
        .collect();
    for want in [
        ("172.30.0.41", "80"),         // ClusterIP
        ("any local address", "3001"), // NodePort
        ("192.168.99.22", "80"),       // external IP
        ("5.6.7.8", "80"),             // load-balancer IP
    ] {
        assert!(hosts.contains(&want), "{want:?} missing from {hosts:?}");
    }
    // The load balancer's source range is said, and others are dropped by KUBE-PROXY-FIREWALL.
    let lb = s.published.iter().find(|p| p.host == "5.6.7.8").unwrap();
    assert!(lb.sentence.contains("203.0.113"), "{}", lb.sentence);
    assert!(
        s.drops.iter().any(|d| d.action == "REJECT"
            && d.comment
                .as_deref()
                .is_some_and(|c| c.contains("has no endpoints"))),
        "{:?}",
        s.drops
    );
    assert!(!s.source_nat.is_empty());
}

// ---------------------------------------------------------------- IPv6

const DUAL_V6: &str = "# Generated by ip6tables-save v1.8.9 (nf_tables) on a dual-stack Docker host
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:d0c::2]:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -d fd00:d0c::2/128 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A FORWARD -s fd00:d0c::/64 -i docker0 -j ACCEPT
COMMIT
";

#[test]
fn dual_stack_files_are_explained_and_walked_per_family() {
    let v4 = nat::load_file(&fixture("docker-host.iptables-save"), None).unwrap();
    let v6 = nat::parse_text(DUAL_V6, None, "v6").unwrap();
    assert!(
        v6.tables.iter().all(|t| t.family == "ip6"),
        "the ip6tables-save header makes every table ip6"
    );
    let mut rs = v4;
    rs.merge(v6);
    let s = explain::summarize(&rs);
    let p6 = s
        .published
        .iter()
        .find(|p| p.targets.iter().any(|t| t.to == "[fd00:d0c::2]:80"))
        .expect("the IPv6 publish");
    assert!(
        p6.sentence.contains("reached from outside"),
        "{}",
        p6.sentence
    );
    assert!(p6.probes.iter().all(|pr| pr.packet.dst.is_ipv6()));
    // The IPv4 publish of the same port number is still walked with IPv4 packets.
    let p4 = s
        .published
        .iter()
        .find(|p| p.targets.iter().any(|t| t.to == "172.17.0.2:80"))
        .unwrap();
    assert!(p4.probes.iter().all(|pr| pr.packet.dst.is_ipv4()));
    // The masquerade without any address is in the ip6 table: an IPv6 packet meets it, an IPv4 one does not.
    let facts = walk::LocalFacts {
        addrs: vec![("2001:db8::1".parse().unwrap(), "eth0".into())],
        routes: vec![walk::RouteFact {
            net: "::/0".parse().unwrap(),
            dev: "eth0".into(),
            src: Some("2001:db8::1".parse().unwrap()),
        }],
        forwarding: Some(true),
    };
    let p =
        walk::Packet::parse("tcp [fd00:d0c::5]:4000 -> [2001:db8:9::9]:443 in docker0").unwrap();
    let w = walk::walk(&rs, &p, &facts);
    assert_eq!(w.verdict, "forwarded", "{w:#?}");
    assert_eq!(w.snat_by.as_ref().map(|r| r.table.as_str()), Some("nat"));
    assert_eq!(
        w.final_packet.src,
        "2001:db8::1".parse::<std::net::IpAddr>().unwrap()
    );
    check_consistent("dual stack", &rs);
}

#[test]
fn live_ip6tables_rules_are_read_from_a_namespace() {
    let ns = TestNs::new("nat6");
    ns.ip(&["link", "set", "lo", "up"]);
    let ip6t = |args: &str| {
        let argv: Vec<&str> = ["ip", "netns", "exec", &ns.name, "ip6tables"]
            .into_iter()
            .chain(args.split_whitespace())
            .collect();
        sh(&argv);
    };
    ip6t("-t nat -A PREROUTING -p tcp --dport 8080 -j DNAT --to-destination [fd00:6::2]:80");
    ip6t("-t nat -A POSTROUTING -o eth0 -j MASQUERADE");
    let j = nettool_json(&["explain-nat", "--netns", &ns.name, "--json"]);
    // Read whole from ip6tables-nft-save: no warning that nft's JSON of the same table is partial.
    assert!(
        !j["summary"]["warnings"].to_string().contains("compat (xt)"),
        "{}",
        j["summary"]["warnings"]
    );
    let published = j["summary"]["published"].as_array().unwrap();
    assert!(
        published
            .iter()
            .any(|p| p["targets"][0]["to"] == "[fd00:6::2]:80" && p["host_port"] == "8080"),
        "{j}"
    );
    assert!(
        j["summary"]["source_nat"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["action"] == "MASQUERADE"),
        "{j}"
    );
    // The walk of an IPv6 packet in that namespace meets the ip6 nat table.
    let out = nettool_ok(&[
        "explain-nat",
        "--netns",
        &ns.name,
        "--local-addr",
        "2001:db8:6::1@eth0",
        "--packet",
        "tcp [2001:db8:6::9]:40000 -> [2001:db8:6::1]:8080 in eth0",
    ]);
    assert!(out.contains("-> [fd00:6::2]:80"), "{out}");
}

// ---------------------------------------------------------------- --rules in words, counters

#[test]
fn rules_listing_is_in_words() {
    let f = write_tmp(
        "words",
        "*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -i eth0 -j MARK --xor-mark 0x4000\n-A PREROUTING -i eth1 -j MARK --or-mark 0x2\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n",
    );
    let out = nettool_ok(&["explain-nat", "-f", &f, "--rules"]);
    let _ = std::fs::remove_file(&f);
    assert!(!out.contains(" { "), "Rust debug text in: {out}");
    assert!(
        out.contains("flip bits 0x4000 of the mark (XOR, --xor-mark)"),
        "{out}"
    );
    assert!(
        out.contains("set bits 0x2 of the mark (OR, --or-mark)"),
        "{out}"
    );
    assert!(
        out.contains("MASQUERADE: source becomes the outgoing interface's address"),
        "{out}"
    );
}

#[test]
fn kube_source_limits_say_only_once() {
    let Some(rs) = shared("k8s-TestTracePacket.iptables-save") else {
        return;
    };
    let s = explain::summarize(&rs);
    for p in &s.published {
        for e in &p.entries {
            assert!(e.from.matches("only").count() <= 1, "{}", e.from);
        }
    }
}

#[test]
fn live_rules_show_their_counters() {
    let ns = TestNs::new("natcnt");
    ns.ip(&["link", "set", "lo", "up"]);
    sh(&[
        "ip", "netns", "exec", &ns.name, "iptables", "-A", "INPUT", "-i", "lo", "-p", "udp",
        "--dport", "9", "-j", "ACCEPT",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "sh",
        "-c",
        "for i in 1 2 3; do echo x | socat -u - UDP:127.0.0.1:9; done",
    ]);
    let j = nettool_json(&["explain-nat", "--netns", &ns.name, "--rules", "--json"]);
    let hit = j["ruleset"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["chains"].as_array().unwrap())
        .flat_map(|c| c["rules"].as_array().unwrap())
        .find(|r| r["text"].as_str().unwrap_or("").contains("--dport 9"))
        .expect("the udp rule");
    assert!(hit["counters"][0].as_u64().unwrap() >= 3, "{hit}");
    let out = nettool_ok(&["explain-nat", "--netns", &ns.name, "--rules"]);
    assert!(out.contains("packets      bytes"), "{out}");
}

// ---------------------------------------------------------------- fuzz replay (stable)

/// The fuzz target's body over every rule set and deterministic mutations of it (cut at many
/// points, bytes flipped, lines dropped or doubled): cargo-fuzz needs nightly, this runs anywhere.
/// FUZZ_REPLAY_ROUNDS raises the number of mutations per file.
#[test]
fn fuzz_replay_of_fixtures_and_mutations_never_panics() {
    let rounds: usize = std::env::var("FUZZ_REPLAY_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut inputs = 0;
    for f in all_rule_sets() {
        let base = std::fs::read(&f).unwrap();
        nat::fuzz_one(&base);
        inputs += 1;
        for _ in 0..rounds {
            let mut m = base.clone();
            match next() % 4 {
                0 => m.truncate((next() as usize) % (m.len() + 1)),
                1 => {
                    for _ in 0..8 {
                        if !m.is_empty() {
                            let i = (next() as usize) % m.len();
                            m[i] = (next() % 128) as u8;
                        }
                    }
                }
                2 => {
                    let text = String::from_utf8_lossy(&m).into_owned();
                    let lines: Vec<&str> = text.lines().collect();
                    let drop = (next() as usize) % lines.len().max(1);
                    m = lines
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != drop)
                        .map(|(_, l)| *l)
                        .collect::<Vec<_>>()
                        .join("\n")
                        .into_bytes();
                }
                _ => {
                    let text = String::from_utf8_lossy(&m).into_owned();
                    let lines: Vec<&str> = text.lines().collect();
                    let dup = (next() as usize) % lines.len().max(1);
                    let mut out = Vec::new();
                    for (i, l) in lines.iter().enumerate() {
                        out.push(*l);
                        if i == dup {
                            out.push(*l);
                        }
                    }
                    m = out.join("\n").into_bytes();
                }
            }
            nat::fuzz_one(&m);
            inputs += 1;
        }
    }
    eprintln!("fuzz replay: {inputs} inputs, no panic");
    assert!(inputs > 100);
}

// ---------------------------------------------------------------- kube-proxy nftables mode

/// The shape kube-proxy's nftables proxier writes (pkg/proxy/nftables): `service-ips` and
/// `no-endpoint-services` verdict maps keyed on address . protocol . port, numgen endpoint maps.
/// Written by hand for this test (names and elements like kube-proxy's), not a capture.
const KUBE_NFT: &str = r#"table ip kube-proxy {
	comment "rules for kube-proxy"
	set nodeport-ips {
		type ipv4_addr
		elements = { 192.168.0.2 }
	}
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
		elements = { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80,
			     172.30.0.42 . tcp . 80 : goto service-42NFTM6N-ns2/svc2/tcp/p80,
			     192.168.99.22 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
	}
	map no-endpoint-services {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}
	chain nat-output {
		type nat hook output priority dstnat; policy accept;
		jump services
	}
	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		jump masquerading
	}
	chain filter-input {
		type filter hook input priority -110; policy accept;
		ct state new jump service-endpoints-check
	}
	chain filter-forward {
		type filter hook forward priority -110; policy accept;
		ct state new jump service-endpoints-check
	}
	chain service-endpoints-check {
		ip daddr . meta l4proto . th dport vmap @no-endpoint-services
	}
	chain reject-chain {
		comment "helper for @no-endpoint-services / @no-endpoint-nodeports"
		reject
	}
	chain masquerading {
		meta mark & 0x00004000 == 0 return
		meta mark set meta mark ^ 0x00004000
		masquerade fully-random
	}
	chain mark-for-masquerade {
		meta mark set meta mark | 0x00004000
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
	}
	chain service-ULMVA6XW-ns1/svc1/tcp/p80 {
		ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
		numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
	}
	chain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 {
		ip saddr 10.180.0.1 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.180.0.1:80
	}
	chain service-42NFTM6N-ns2/svc2/tcp/p80 {
		ip daddr 172.30.0.42 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
		numgen random mod 2 vmap { 0 : goto endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80, 1 : goto endpoint-NEW2-ns2/svc2/tcp/p80__10.180.0.3/80 }
	}
	chain external-42NFTM6N-ns2/svc2/tcp/p80 {
		jump mark-for-masquerade
		goto service-42NFTM6N-ns2/svc2/tcp/p80
	}
	chain endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 {
		ip saddr 10.180.0.2 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.180.0.2:80
	}
	chain endpoint-NEW2-ns2/svc2/tcp/p80__10.180.0.3/80 {
		ip saddr 10.180.0.3 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.180.0.3:80
	}
}
"#;

#[test]
fn kube_proxy_nftables_mode_reads_its_verdict_maps() {
    let rs = nat::parse_text(KUBE_NFT, None, "kube-nft").unwrap();
    assert!(rs.problems.is_empty(), "{:?}", rs.problems);
    let s = explain::summarize(&rs);
    assert!(
        s.recognised
            .iter()
            .any(|r| r.detail.starts_with("kube-proxy nftables mode")),
        "{:?}",
        s.recognised
    );
    let hosts: Vec<&str> = s.published.iter().map(|p| p.host.as_str()).collect();
    assert_eq!(hosts, ["172.30.0.41", "172.30.0.42", "192.168.99.22"]);
    let svc2 = &s.published[1];
    assert!(
        svc2.sentence
            .starts_with("TCP to 172.30.0.42 port 80 is balanced over 10.180.0.2:80 (50%), 10.180.0.3:80 (50%): reached from outside"),
        "{}",
        svc2.sentence
    );
    // The no-endpoint service is rejected, and a walk agrees.
    let rej = s
        .drops
        .iter()
        .find(|d| d.action == "REJECT")
        .expect("a reject");
    assert!(
        rej.when.iter().any(|w| w == "destination 172.30.0.46"),
        "{:?}",
        rej.when
    );
    assert!(
        rej.verified.contains("is rejected here"),
        "{}",
        rej.verified
    );
    // Marks set with `meta mark set meta mark | 0x4000` are understood (no unknown matches).
    assert!(s.unknown.is_empty(), "{:?}", s.unknown);
    let p = walk::Packet::parse("tcp 203.0.113.7:40000 -> 172.30.0.41:80 in eth0").unwrap();
    let w = walk::walk(&rs, &p, &s.host.as_ref().unwrap().facts);
    // Translated, and masqueraded (from outside the pod network: mark-for-masquerade) to the
    // address of the pods' bridge (the cluster CIDR 10.0.0.0/8 behind cni0 in the made-up host).
    assert_eq!(
        w.final_tuple, "tcp 10.0.0.1:40000 -> 10.180.0.1:80",
        "{w:#?}"
    );
    check_consistent("kube-proxy nftables", &rs);
}

#[test]
fn real_dockerd_with_ip6tables_publishes_over_ipv6() {
    // Docker 20.10: IPv6 NAT needs --experimental with --ip6tables.
    let d = common::docker::Dockerd::start_with(
        "nat6-dock",
        &[
            "--ipv6",
            "--fixed-cidr-v6",
            "fd00:d0c::/64",
            "--ip6tables",
            "--experimental",
        ],
    );
    d.import_busybox("nt-busybox");
    d.docker(&[
        "run",
        "-d",
        "--name",
        "web6",
        "-p",
        "8080:80",
        "nt-busybox",
        "sleep",
        "300",
    ]);
    let path = d.ns.path();
    let j = nettool_json(&["explain-nat", "--netns", &path, "--json"]);
    let published = j["summary"]["published"].as_array().unwrap();
    let v6 = published
        .iter()
        .find(|p| p["ipv6"] == true)
        .unwrap_or_else(|| panic!("no IPv6 publish in {j}"));
    let to = v6["targets"][0]["to"].as_str().unwrap();
    assert!(
        to.starts_with("[fd00:d0c::") && to.ends_with("]:80"),
        "{to}"
    );
    assert_eq!(v6["host_port"], "8080");
    assert!(
        v6["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["packet"]["dst"].as_str().unwrap().contains(':')),
        "{v6}"
    );
    // The IPv4 publish of the same port is its own entry.
    assert!(published
        .iter()
        .any(|p| p["ipv6"] == false && p["targets"][0]["to"].as_str().unwrap().ends_with(":80")));
    // ip6tables-save was read (its tables are ip6), with counters.
    let tables = j["summary"]["tables"].as_u64().unwrap();
    assert!(tables >= 4, "{j}");
}

// ---------------------------------------------------------------- nft set membership

/// kube-proxy's nftables mode with `--nodeport-addresses` (pkg/proxy/nftables/proxier.go): NodePorts
/// are reached through `ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports`,
/// ClusterIPs on a wrong port are rejected through `ip daddr @cluster-ips`, LoadBalancer source
/// ranges are an anonymous set. Written by hand in kube-proxy's shape (names, chains, element
/// forms), not a capture; loaded into a real nft in a test namespace so nft prints it (text and
/// JSON) as it would print kube-proxy's.
const KUBE_NFT_SETS: &str = r#"table ip kube-proxy {
	comment "rules for kube-proxy"
	set cluster-ips {
		type ipv4_addr
		comment "Active ClusterIPs"
		elements = { 172.30.0.41 }
	}
	set nodeport-ips {
		type ipv4_addr
		flags interval
		comment "IPs that accept NodePort traffic"
		elements = { 192.168.0.2, 10.99.0.0/24 }
	}
	set allowed-pairs {
		type ipv4_addr . inet_proto . inet_service
		comment "a concatenated set (kube-proxy keys its maps this way)"
		elements = { 172.30.0.41 . tcp . 8443 }
	}
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
		elements = { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
	}
	map service-nodeports {
		type inet_proto . inet_service : verdict
		comment "NodePort traffic"
		elements = { tcp . 30080 : goto external-ULMVA6XW-ns1/svc1/tcp/p80 }
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}
	chain filter-prerouting {
		type filter hook prerouting priority -110; policy accept;
		ct state new jump firewall-check
	}
	chain filter-forward {
		type filter hook forward priority -110; policy accept;
		ct state new jump cluster-ips-check
	}
	chain cluster-ips-check {
		ip daddr . meta l4proto . th dport @allowed-pairs accept
		ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
	}
	chain firewall-check {
		ip daddr 192.168.0.2 tcp dport 30080 ip saddr != { 203.0.113.0/25, 198.51.100.0/24 } drop
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
		ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
	}
	chain mark-for-masquerade {
		meta mark set meta mark | 0x00004000
	}
	chain external-ULMVA6XW-ns1/svc1/tcp/p80 {
		jump mark-for-masquerade
		goto service-ULMVA6XW-ns1/svc1/tcp/p80
	}
	chain service-ULMVA6XW-ns1/svc1/tcp/p80 {
		numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
	}
	chain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 {
		meta l4proto tcp dnat to 10.180.0.1:80
	}
}
"#;

fn check_kube_sets(label: &str, rs: &nat::Ruleset) {
    assert!(rs.problems.is_empty(), "{label}: {:?}", rs.problems);
    let s = explain::summarize(rs);
    // The NodePort is published on each address of the set, walked there.
    let hosts: Vec<(&str, &str)> = s
        .published
        .iter()
        .map(|p| (p.host.as_str(), p.host_port.as_str()))
        .collect();
    assert!(
        hosts.contains(&("192.168.0.2", "30080")),
        "{label}: {hosts:?}"
    );
    assert!(
        hosts.contains(&("10.99.0.0/24", "30080")),
        "{label}: {hosts:?}"
    );
    let np = s
        .published
        .iter()
        .find(|p| p.host == "192.168.0.2")
        .unwrap();
    assert_eq!(np.targets[0].to, "10.180.0.1:80", "{label}");
    assert!(
        np.sentence.contains("reached from outside"),
        "{label}: {}",
        np.sentence
    );
    // A set walked element by element is said once, by its element.
    let acc = s
        .forward_accepts
        .iter()
        .find(|a| a.chain == "cluster-ips-check")
        .expect("the allowed-pairs accept");
    assert!(
        !acc.sentence.contains("@allowed-pairs")
            && acc.sentence.contains("destination 172.30.0.41"),
        "{label}: {}",
        acc.sentence
    );
    // Nothing about the sets is left "cannot be evaluated".
    assert!(
        !s.unknown.iter().any(|u| u.what.contains("@")),
        "{label}: {:?}",
        s.unknown
    );
    let facts = &s.host.as_ref().unwrap().facts;
    let walk_to = |pkt: &str| {
        let p = walk::Packet::parse(pkt).unwrap();
        walk::walk(rs, &p, facts)
    };
    // In the set: translated. Outside it: not.
    let w = walk_to("tcp 198.51.100.7:40000 -> 192.168.0.2:30080 in eth0");
    assert!(
        w.final_tuple.ends_with("-> 10.180.0.1:80"),
        "{label}: {w:#?}"
    );
    let w = walk_to("tcp 198.51.100.7:40000 -> 10.99.0.77:30080 in eth0");
    assert!(
        w.final_tuple.ends_with("-> 10.180.0.1:80"),
        "{label}: {w:#?}"
    );
    let w = walk_to("tcp 198.51.100.7:40000 -> 192.168.0.3:30080 in eth0");
    assert!(
        w.final_tuple.ends_with("-> 192.168.0.3:30080"),
        "{label}: {w:#?}"
    );
    assert!(
        !w.assumptions
            .iter()
            .any(|a| a.contains("cannot be evaluated")),
        "{label}: {:?}",
        w.assumptions
    );
    // A source outside the anonymous source-range set is dropped, one inside is not.
    let w = walk_to("tcp 192.0.2.9:40000 -> 192.168.0.2:30080 in eth0");
    assert_eq!(w.verdict, "dropped", "{label}: {w:#?}");
    let w = walk_to("tcp 203.0.113.9:40000 -> 192.168.0.2:30080 in eth0");
    assert_ne!(w.verdict, "dropped", "{label}: {w:#?}");
    // A ClusterIP on a port it does not serve is rejected (@cluster-ips), unless the
    // concatenated set lets it through; an address outside the set is not rejected.
    let w = walk_to("tcp 10.180.0.9:40000 -> 172.30.0.41:81 in eth0");
    assert_eq!(w.verdict, "rejected", "{label}: {w:#?}");
    let w = walk_to("tcp 10.180.0.9:40000 -> 172.30.0.41:8443 in eth0");
    assert_ne!(w.verdict, "rejected", "{label}: {w:#?}");
    let w = walk_to("tcp 10.180.0.9:40000 -> 172.30.0.99:81 in eth0");
    assert_ne!(w.verdict, "rejected", "{label}: {w:#?}");
    check_consistent(label, rs);
}

#[test]
fn kube_proxy_nftables_nodeports_through_the_nodeport_ips_set() {
    // The hand-written text itself.
    let rs = nat::parse_text(KUBE_NFT_SETS, None, "kube-nft-sets").unwrap();
    check_kube_sets("hand-written text", &rs);
    // And as a real nft prints it back, text and JSON.
    let ns = TestNs::new("natset");
    let file = std::env::temp_dir().join(format!("nt-test-natset-{}.nft", std::process::id()));
    std::fs::write(&file, KUBE_NFT_SETS).unwrap();
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "nft",
        "-f",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    let text = sh(&["ip", "netns", "exec", &ns.name, "nft", "list", "ruleset"]);
    let rs = nat::parse_text(&text, None, "nft list ruleset").unwrap();
    check_kube_sets("nft list ruleset", &rs);
    let json = sh(&[
        "ip", "netns", "exec", &ns.name, "nft", "-j", "list", "ruleset",
    ]);
    let rs = nat::parse_text(&json, None, "nft -j list ruleset").unwrap();
    check_kube_sets("nft -j list ruleset", &rs);
}

#[test]
fn ipset_matches_say_their_members_are_not_in_the_dump() {
    let rules = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m set --match-set allowed src -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80\nCOMMIT\n";
    let rs = nat::parse_text(rules, None, "ipset").unwrap();
    let s = explain::summarize(&rs);
    assert!(
        s.unknown.iter().any(|u| u.what.contains("ipset allowed")
            && u.what.contains("does not carry the set's members")),
        "{:?}",
        s.unknown
    );
}

/// netavark keeps every published port of a network in one NETAVARK-DN-<id> chain, reached by a
/// jump per port: the 8081 DNAT is on the path through the `--dport 8081` jump, not through the
/// 8080 one (the summary called it shadowed, topology then drew no port for it).
#[test]
fn one_dnat_chain_for_several_ports_is_walked_by_the_matching_jump() {
    let rules = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :POSTROUTING ACCEPT [0:0]\n:NETAVARK-HOSTPORT-DNAT - [0:0]\n:NETAVARK-DN-X - [0:0]\n\
        -A PREROUTING -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT\n\
        -A OUTPUT -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT\n\
        -A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport 8080 -j NETAVARK-DN-X\n\
        -A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport 8081 -j NETAVARK-DN-X\n\
        -A NETAVARK-DN-X -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.89.0.5:80\n\
        -A NETAVARK-DN-X -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.89.0.6:80\n\
        -A NETAVARK-DN-X -d 10.0.0.0/8 ! -d 10.89.0.0/16 -p tcp -j DNAT --to-destination 10.89.0.7:80\n\
        COMMIT\n";
    let file = std::env::temp_dir().join(format!("{}.rules", unique("netavark")));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(["explain-nat", "--json", "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v.to_string();
    for (port, to) in [("8080", "10.89.0.5:80"), ("8081", "10.89.0.6:80")] {
        let p = v["summary"]["published"]
            .as_array()
            .unwrap_or_else(|| panic!("{text}"))
            .iter()
            .find(|p| p["host_port"] == port)
            .unwrap_or_else(|| panic!("port {port}: {text}"));
        let t = &p["targets"][0];
        assert_eq!(t["to"], to, "{p}");
        assert_eq!(t["shadowed"], false, "port {port} is not shadowed: {p}");
    }
}

// ---------------------------------------------------------------- issue 15: what was left

/// Drops whose first-guess packet an earlier rule takes: port 80 is accepted above the TCP drop,
/// 10.9.0.2 above its network's drop, and the UDP drop in FORWARD was walked to a local address.
const DROPS_BEHIND_ACCEPTS: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -i eth0 -p tcp -m tcp --dport 80 -j ACCEPT
-A FORWARD -i eth0 -p tcp -j DROP
-A FORWARD -s 10.9.0.2/32 -j ACCEPT
-A FORWARD -s 10.9.0.0/24 -j DROP
-A FORWARD -p udp -j DROP
COMMIT
";

#[test]
fn drop_checks_walk_a_packet_the_rule_matches_and_earlier_accepts_leave() {
    let rs = nat::iptables::parse(DROPS_BEHIND_ACCEPTS);
    let s = explain::summarize(&rs);
    for line in [6, 8, 9] {
        let d = s
            .drops
            .iter()
            .find(|d| d.line == line)
            .unwrap_or_else(|| panic!("drop at line {line}: {:#?}", s.drops));
        assert!(
            d.verified.contains("is dropped here"),
            "line {line}: {}",
            d.verified
        );
    }
    let by_line = |l: usize| &s.drops.iter().find(|d| d.line == l).unwrap().probe;
    let p6 = &by_line(6).as_ref().unwrap().packet;
    assert_ne!(p6.dport, Some(80), "{p6}");
    let p8 = &by_line(8).as_ref().unwrap().packet;
    assert_ne!(p8.src.to_string(), "10.9.0.2", "{p8}");
    check_consistent("drops behind accepts", &rs);
}

#[test]
fn an_isolated_lab_has_no_outside() {
    let lab = IsolatedLab::new("iptables");
    let host = lab.host().to_string();
    let j = nettool_json(&["explain-nat", "--netns", &host, "--json"]);
    let s = &j["summary"];
    assert_eq!(s["host"]["isolated"], true, "{}", s["host"]);
    let said = s["host"]["assumptions"].to_string();
    assert!(said.contains("no uplink"), "{said}");
    for p in s["published"].as_array().unwrap() {
        let sentence = p["sentence"].as_str().unwrap();
        assert!(!sentence.contains("from outside"), "{sentence}");
        for pr in p["probes"].as_array().unwrap() {
            assert_ne!(pr["from"]["kind"], "outside", "{pr}");
        }
        // Still walked from the lab's own networks and from its host.
        assert!(
            sentence.contains("reached from containers on"),
            "{sentence}"
        );
    }
    for f in s["flows"].as_array().unwrap() {
        assert_ne!(f["kind"], "inbound", "{f}");
        if f["kind"] == "outbound" {
            assert_eq!(f["verdict"], "closed", "{f}");
            assert!(f["sentence"].as_str().unwrap().contains("no route"), "{f}");
        }
    }
    let out = nettool(&["explain-nat", "--netns", &host]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("from outside"),
        "{text}"
    );
}

/// An nft DNAT over an anonymous set of `n` addresses 10.50.X.Y.
fn nft_set_dnat(n: usize) -> String {
    let els: Vec<String> = (0..n)
        .map(|i| format!("10.50.{}.{}", i / 250, i % 250 + 1))
        .collect();
    format!(
        "table ip t {{\n\tchain pre {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tip daddr {{ {} }} tcp dport 8080 dnat to 192.0.2.2:80\n\t}}\n}}\n",
        els.join(", ")
    )
}

#[test]
fn a_200_element_set_is_walked_element_by_element() {
    let rs = nat::nft::parse_text(&nft_set_dnat(200));
    assert!(rs.problems.is_empty(), "{:?}", rs.problems);
    let s = explain::summarize(&rs);
    assert_eq!(s.published.len(), 200, "{:#?}", s.published.first());
    for i in [0usize, 63, 64, 199] {
        let host = format!("10.50.{}.{}", i / 250, i % 250 + 1);
        let p = s
            .published
            .iter()
            .find(|p| p.host == host)
            .unwrap_or_else(|| panic!("{host} is not summarised"));
        assert!(
            p.sentence.contains("reached from outside"),
            "{}",
            p.sentence
        );
        assert!(p.probes.iter().all(|pr| pr.packet.dst.to_string() == host));
    }
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    // Past what is walked one by one, the warning says how many and which are left out.
    let rs = nat::nft::parse_text(&nft_set_dnat(1100));
    let s = explain::summarize(&rs);
    assert_eq!(s.published.len(), 1024);
    let w = s.warnings.join("\n");
    assert!(
        w.contains("1100 elements")
            && w.contains("other 76")
            && w.contains("10.50.4.25 to 10.50.4.100"),
        "{w}"
    );
}

#[test]
fn docker_swarm_ingress_publish_is_named() {
    let rs = load("docker-swarm-ingress.iptables-save");
    let s = explain::summarize(&rs);
    assert!(
        s.recognised
            .iter()
            .any(|r| r.detail.contains("swarm ingress")),
        "{:?}",
        s.recognised
    );
    let p = s
        .published
        .iter()
        .find(|p| p.host_port == "8080")
        .expect("the ingress publish");
    assert_eq!(p.targets[0].to, "172.18.0.2:8080");
    assert!(
        p.sentence
            .starts_with("TCP to any local address port 8080 is sent to 172.18.0.2:8080 (ingress_sbox: the swarm routing mesh"),
        "{}",
        p.sentence
    );
    assert!(
        p.sentence.contains("reached from outside"),
        "{}",
        p.sentence
    );
    check_consistent("swarm ingress", &rs);
}

#[test]
fn kube_pod_network_comes_from_the_cluster_cidr() {
    let rs = load("kube-proxy-4svc.iptables-save");
    let s = explain::summarize(&rs);
    let host = s.host.as_ref().unwrap();
    let pods = host
        .networks
        .iter()
        .find(|n| n.net.to_string() == "10.244.0.0/16")
        .unwrap_or_else(|| panic!("{:?}", host.networks));
    assert!(
        host.assumptions
            .iter()
            .any(|a| a.contains("cluster CIDR") && a.contains(&pods.iface)),
        "{:?}",
        host.assumptions
    );
    let kinds: Vec<&str> = s.flows.iter().map(|f| f.kind.as_str()).collect();
    assert!(
        kinds.contains(&"inbound") && kinds.contains(&"outbound"),
        "{kinds:?}"
    );
    for f in &s.flows {
        assert!(f.sentence.contains(&pods.iface), "{}", f.sentence);
    }
    // The nftables mode says it as `ip saddr != CIDR ... jump mark-for-masquerade`.
    let nft = "table ip kube-proxy {\n\tchain mark-for-masquerade {\n\t\tmeta mark set meta mark | 0x4000\n\t}\n\tchain services {\n\t\tip daddr 10.96.0.10 tcp dport 53 ip saddr != 10.42.0.0/16 jump mark-for-masquerade\n\t}\n\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n}\n";
    let rs = nat::nft::parse_text(nft);
    let s = explain::summarize(&rs);
    let nets: Vec<String> = s
        .host
        .as_ref()
        .unwrap()
        .networks
        .iter()
        .map(|n| n.net.to_string())
        .collect();
    assert_eq!(nets, ["10.42.0.0/16"]);
    check_consistent("kube nft pods", &rs);
}

/// Two labs with the same addresses (two default labs: 172.19.0.2 is web in both): each lab's
/// explain-nat names its own container, not the other lab's (before: the first lab listed won).
#[test]
fn two_labs_sharing_an_address_each_name_their_own_container() {
    let a = IsolatedLab::new("iptables");
    let b = IsolatedLab::new("iptables");
    for lab in [&a, &b] {
        let j = nettool_json(&["explain-nat", "--netns", lab.host(), "--json"]);
        let t = &j["summary"]["published"][0]["targets"][0];
        assert_eq!(t["addr"], "172.19.0.2", "{t}");
        assert_eq!(
            t["name"],
            format!("container web of lab {}", lab.name),
            "{t}"
        );
    }
}

/// A packet the walk delivers to the host: the verdict says which socket takes it, or that
/// none does (before: "delivered locally: a socket on ADDR:PORT receives it" with nothing
/// listening), and real traffic agrees. From a file, with no sockets read, it says only where
/// the packet arrives.
#[test]
fn a_walk_delivered_here_says_whether_a_socket_listens_there() {
    let lab = Lab::new();
    let packet = "tcp 198.51.100.2:40000 -> 198.51.100.1:8181 in ext0";
    let w = lab.walk(packet, false);
    assert_eq!(w["verdict"], "accepted-local", "{w}");
    assert_eq!(
        w["summary"],
        "delivered locally to 198.51.100.1:8181: no socket listens there, nor on 0.0.0.0:8181",
        "{w}"
    );
    let out = nettool_ok(&["explain-nat", "--netns", &lab.host.name, "--packet", packet]);
    assert!(
        out.contains("Verdict: delivered locally to 198.51.100.1:8181: no socket listens there")
            && !out.contains("receives it"),
        "{out}"
    );
    assert!(socat_echo(&lab.out, "198.51.100.1:8181").is_none());

    // Something listens there now: it is named, and it answers.
    let server = lab
        .host
        .spawn(&["socat", "TCP-LISTEN:8181,fork,reuseaddr", "EXEC:cat"]);
    wait_for("server 8181", 5, || {
        sh(&[
            "ip",
            "netns",
            "exec",
            &lab.host.name,
            "ss",
            "-Htln",
            "sport = :8181",
        ])
        .contains(":8181")
    });
    let w = lab.walk(packet, false);
    assert_eq!(
        w["summary"],
        format!(
            "delivered locally to 198.51.100.1:8181: socat (pid {}) listens on 0.0.0.0:8181",
            server.pid()
        ),
        "{w}"
    );
    assert!(socat_echo(&lab.out, "198.51.100.1:8181").is_some());
    // From the host itself, over lo: the same words, the same socket.
    let w = lab.walk("tcp 127.0.0.1:40000 -> 127.0.0.1:8181", true);
    assert_eq!(
        w["summary"],
        format!(
            "delivered locally (over lo) to 127.0.0.1:8181: socat (pid {}) listens on 0.0.0.0:8181",
            server.pid()
        ),
        "{w}"
    );

    // The same rules from a file: no sockets were read, so no socket is claimed.
    let f = write_tmp("delivered", RULES);
    let j = nettool_json(&[
        "explain-nat",
        "-f",
        &f,
        "--local-addr",
        "198.51.100.1@ext0",
        "--route",
        "198.51.100.0/24@ext0",
        "--packet",
        packet,
        "--json",
    ]);
    let _ = std::fs::remove_file(&f);
    assert_eq!(
        j["walk"]["summary"], "delivered locally to 198.51.100.1:8181",
        "{j}"
    );
}
