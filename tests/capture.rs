//! `nettool capture`: many namespaces into one pcapng, kernel filters, NAT legs stitched,
//! rotation, real dockerd, sample captures read back. All in namespaces the tests build.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{sh, unique, veth, TestLab, TestNs};

/// A running `nettool capture`, stopped with SIGINT (so it writes its summary) on `stop`.
struct Running {
    child: Child,
    stderr: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
}

fn start(args: &[&str]) -> Running {
    start_env(args, &[])
}

fn start_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .arg("capture")
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nettool capture");
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut r = Running {
        child,
        stderr: rx,
        log: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match r.stderr.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let ready = l.starts_with("capturing on");
                r.log.push(l);
                if ready {
                    return r;
                }
            }
            Err(_) if Instant::now() > deadline => panic!("capture never started: {:?}", r.log),
            Err(_) => {
                if let Ok(Some(st)) = r.child.try_wait() {
                    let rest: Vec<String> = r.stderr.try_iter().collect();
                    panic!("capture exited {st}: {:?} {rest:?}", r.log);
                }
            }
        }
    }
}

impl Drop for Running {
    // A test that panics before stop() must not leave the capture running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// SIGINT, then (stdout, stderr).
    fn stop(mut self) -> (String, String) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let mut stdout = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            use std::io::Read;
            let _ = o.read_to_string(&mut stdout);
        }
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "capture failed: {:?}", self.log);
        let mut err = self.log.join("\n");
        // The reader thread may still hold the last lines (the summary) when the child has
        // exited: read until it reaches the pipe's end, not just what has arrived.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(l) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            err.push('\n');
            err.push_str(&l);
        }
        (stdout, err)
    }
}

/// tshark -r FILE -T fields -e ...: one Vec per packet; tshark must not complain.
fn tshark_fields(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec![
        "-r".to_string(),
        file.display().to_string(),
        "-T".into(),
        "fields".into(),
    ];
    for f in fields {
        args.push("-e".into());
        args.push(f.to_string());
    }
    let out = Command::new("tshark").args(&args).output().expect("tshark");
    let err = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("Running as user \"root\"") && !l.trim().is_empty())
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "tshark on {}: {err}",
        file.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn tmp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.pcapng", unique(tag)))
}

/// Two namespaces joined by a veth whose both ends are called eth0, addresses 10.201.x.1/.2.
fn pair(tag: &str, net: u8) -> (TestNs, TestNs) {
    let a = TestNs::new(&format!("{tag}a"));
    let b = TestNs::new(&format!("{tag}b"));
    veth("eth0", &a, "eth0", &b);
    a.ip(&["addr", "add", &format!("10.201.{net}.1/24"), "dev", "eth0"]);
    b.ip(&["addr", "add", &format!("10.201.{net}.2/24"), "dev", "eth0"]);
    (a, b)
}

/// `n` UDP datagrams from `ns` to `dst:port`.
fn udp_burst(ns: &TestNs, dst: &str, port: u16, n: usize) {
    let script = format!("for i in $(seq 1 {n}); do echo x | socat -u - UDP:{dst}:{port}; done");
    sh(&["ip", "netns", "exec", &ns.name, "sh", "-c", &script]);
}

#[test]
fn two_namespaces_with_the_same_eth0_are_told_apart_in_one_pcapng() {
    let (a, b) = pair("capn", 1);
    let file = tmp("cap-two");
    let run = start(&[
        "--netns",
        &a.name,
        "--netns",
        &b.path(),
        "-i",
        "eth0",
        "-w",
        file.to_str().unwrap(),
        "udp port 5555",
    ]);
    udp_burst(&a, "10.201.1.2", 5555, 3);
    let (_, err) = run.stop();
    assert!(err.contains("received by filter"), "{err}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let rows = tshark_fields(
        &file,
        &[
            "frame.interface_name",
            "frame.interface_description",
            "udp.dstport",
        ],
    );
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        rows.len(),
        6,
        "3 datagrams seen leaving a and arriving in b: {rows:?}"
    );
    let names: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let want_a = format!("{}/eth0", a.name);
    let want_b = format!("{}/eth0", b.name);
    assert_eq!(
        names,
        [want_a.as_str(), want_b.as_str()].into_iter().collect(),
        "{rows:?}"
    );
    for r in &rows {
        let ns = r[0].trim_end_matches("/eth0");
        assert!(
            r[1].contains(&format!("/run/netns/{ns}")),
            "description names the namespace: {r:?}"
        );
        assert_eq!(r[2], "5555");
    }
}

#[test]
fn the_filter_runs_in_the_kernel_so_other_packets_never_reach_user_space() {
    let (a, _b) = pair("capf", 2);
    let run = start(&["--netns", &a.name, "-i", "eth0", "--json", "udp port 7777"]);
    // 40 datagrams the filter refuses, then 2 it keeps.
    udp_burst(&a, "10.201.2.2", 5555, 40);
    udp_burst(&a, "10.201.2.2", 7777, 2);
    std::thread::sleep(Duration::from_millis(300));
    let (out, _) = run.stop();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let end = lines.last().expect("summary");
    let packets = &lines[..lines.len() - 1];
    assert_eq!(packets.len(), 2, "{out}");
    assert!(packets.iter().all(|p| p["dport"] == 7777), "{out}");
    // PACKET_STATISTICS: what passed the socket's filter. The 40 others never got to the socket.
    assert_eq!(end["summary"]["received_by_filter"], 2, "{end}");
    assert_eq!(end["summary"]["dropped_by_kernel"], 0, "{end}");
}

#[test]
fn a_bad_filter_says_what_tcpdump_said() {
    let out = common::nettool(&["capture", "-c", "1", "tcp port nonsense-port-name"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("filter 'tcp port nonsense-port-name'"),
        "{err}"
    );
}

#[test]
fn rotation_makes_several_files_each_readable() {
    let (a, b) = pair("capr", 3);
    let file = tmp("cap-rot");
    // 20 kB files: the 1 000-byte datagrams fill several.
    let run = start(&[
        "--netns",
        &b.name,
        "-i",
        "eth0",
        "-w",
        file.to_str().unwrap(),
        "-C",
        "0.02",
        "udp",
    ]);
    let script = "head -c 1000 /dev/zero | tr '\\0' x > /tmp/.nt-cap-payload; for i in $(seq 1 40); do socat -u FILE:/tmp/.nt-cap-payload UDP:10.201.3.2:5555; done";
    sh(&["ip", "netns", "exec", &a.name, "sh", "-c", script]);
    let (_, err) = run.stop();
    let files: Vec<PathBuf> = (0..10)
        .map(|n| {
            if n == 0 {
                file.clone()
            } else {
                PathBuf::from(format!("{}{n}", file.display()))
            }
        })
        .filter(|p| p.exists())
        .collect();
    assert!(files.len() >= 3, "rotation: {files:?} {err}");
    let mut total = 0;
    for f in &files {
        assert!(
            std::fs::metadata(f).unwrap().len() < 30_000,
            "{f:?} too big"
        );
        let rows = tshark_fields(f, &["frame.interface_name"]);
        assert!(
            rows.iter().all(|r| r[0] == format!("{}/eth0", b.name)),
            "{rows:?}"
        );
        total += rows.len();
        let _ = std::fs::remove_file(f);
    }
    assert_eq!(total, 40, "every datagram in exactly one file: {err}");
}

#[test]
fn a_flow_through_a_labs_dnat_is_stitched_across_its_legs() {
    let (lab, _state) = TestLab::isolated("capl", &["--no-userland-proxy"]);
    let file = tmp("cap-lab");
    // Without /usr/sbin on PATH there is no conntrack tool: the entries come from ctnetlink.
    assert!(!Path::new("/usr/bin/conntrack").exists());
    let run = start_env(
        &[
            "--lab",
            &lab.name,
            "--follow",
            "-w",
            file.to_str().unwrap(),
            "tcp port 8080 or tcp port 80 or icmp",
        ],
        &[("PATH", "/usr/bin:/bin")],
    );
    let client = lab.ns("client");
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &client,
        "curl",
        "-s",
        "--max-time",
        "5",
        "http://172.20.0.1:8080/",
    ]);
    assert!(!out.is_empty(), "curl through the lab's DNAT answered");
    // ICMP echo to the client's gateway: a flow keyed by its echo id.
    sh(&[
        "ip",
        "netns",
        "exec",
        &client,
        "busybox",
        "ping",
        "-c",
        "2",
        "172.20.0.1",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let (_, err) = run.stop();
    let rows = tshark_fields(
        &file,
        &[
            "frame.interface_name",
            "frame.comment",
            "tcp.flags.syn",
            "tcp.flags.ack",
            "icmp.type",
        ],
    );
    let _ = std::fs::remove_file(&file);
    let syns: Vec<&Vec<String>> = rows.iter().filter(|r| r[2] == "1" && r[3] == "0").collect();
    let legs: std::collections::BTreeSet<&str> = syns.iter().map(|r| r[0].as_str()).collect();
    let want = [
        format!("lab:{}/client/eth0", lab.name),
        format!("lab:{}/web/eth0", lab.name),
    ];
    for w in &want {
        assert!(
            legs.contains(w.as_str()),
            "the SYN seen on {w}: {rows:?} {err}"
        );
    }
    assert!(
        legs.iter()
            .any(|l| l.starts_with(&format!("lab:{}/host/", lab.name))),
        "the SYN seen in the lab's host namespace: {legs:?}"
    );
    // Every leg's SYN carries the same flow, with the tuple before and after DNAT.
    let comments: std::collections::BTreeSet<&str> = syns.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(comments.len(), 1, "one flow across the legs: {syns:?}");
    let c = comments.into_iter().next().unwrap();
    assert!(
        c.contains("> 172.20.0.1:8080")
            && c.contains("reply tcp 172.19.0.2:80 >")
            && c.contains("(NAT)"),
        "{c}"
    );
    // The pings: requests and replies on the client's eth0 and in the host, one flow.
    let icmp: Vec<&Vec<String>> = rows.iter().filter(|r| r[4] == "8" || r[4] == "0").collect();
    assert!(
        icmp.len() >= 8,
        "2 echoes and 2 replies on at least two legs: {icmp:?}"
    );
    let flows: std::collections::BTreeSet<&str> = icmp.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(flows.len(), 1, "one ICMP flow: {icmp:?}");
    let f = flows.into_iter().next().unwrap();
    assert!(
        f.contains("original icmp 172.20.0.3 > 172.20.0.1 id ")
            && f.contains("reply icmp 172.20.0.1 > 172.20.0.3 id "),
        "{f}"
    );
    assert!(
        icmp.iter()
            .any(|r| r[0] == format!("lab:{}/client/eth0", lab.name))
            && icmp
                .iter()
                .any(|r| r[0].starts_with(&format!("lab:{}/host/", lab.name))),
        "{icmp:?}"
    );
}

#[test]
fn a_sample_capture_is_read_back() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/captures/capture-lab-dnat-follow.pcapng"
    );
    let out = common::nettool_ok(&["capture", "--read", file]);
    // The client's leg, before DNAT, carries the flow as the host's conntrack saw it.
    let client = out
        .lines()
        .find(|l| l.contains("/client/eth0 IP 172.20.0.3."))
        .expect("a packet on the client's eth0");
    assert!(client.contains(": original tcp 172.20.0.3:"), "{client}");
    assert!(
        client.contains("reply tcp 172.19.0.2:80 > 172.19.0.1:"),
        "{client}"
    );
    let json = common::nettool(&["capture", "--read", file, "--json"]);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&json.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["transport"], "tcp");
}

#[test]
fn real_docker_containers_are_captured_by_name() {
    let d = common::docker::Dockerd::start("cap-dock");
    d.import_busybox("nt-busybox");
    // Names of their own: a machine-wide Podman container "web" would make `container:web`
    // ambiguous.
    let (web, db) = (unique("web"), unique("db"));
    for c in [&web, &db] {
        d.docker(&["run", "-d", "--name", c, "nt-busybox", "sleep", "300"]);
    }
    let db_ip = d
        .docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &db])
        .trim()
        .to_string();
    let file = tmp("cap-dock");
    let run = start_env(
        &[
            "--netns",
            &format!("container:{web}"),
            "--netns",
            &format!("container:{db}"),
            "-i",
            "eth0",
            "-w",
            file.to_str().unwrap(),
            "icmp",
        ],
        &[("DOCKER_HOST", &d.host())],
    );
    d.docker(&["exec", &web, "busybox", "ping", "-c", "2", &db_ip]);
    let (_, err) = run.stop();
    let rows = tshark_fields(
        &file,
        &["frame.interface_name", "frame.interface_description"],
    );
    let _ = std::fs::remove_file(&file);
    let names: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let (web_eth0, db_eth0) = (
        format!("container:{web}/eth0"),
        format!("container:{db}/eth0"),
    );
    assert_eq!(
        names,
        [db_eth0.as_str(), web_eth0.as_str()].into_iter().collect(),
        "{rows:?} {err}"
    );
    assert!(
        rows.iter().all(|r| r[1].contains("(docker, id ")),
        "{rows:?}"
    );
    assert_eq!(
        rows.len(),
        8,
        "2 requests and 2 replies, each on both ends: {rows:?}"
    );
}

/// With NETTOOL_RECORD_CAPTURES=1, keep `file` as the sample captures/NAME (the README says
/// how each was made); the tests that read the samples then read the new one.
fn record_sample(file: &Path, name: &str) {
    if std::env::var_os("NETTOOL_RECORD_CAPTURES").is_some() {
        let dst = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("captures")
            .join(name);
        std::fs::copy(file, &dst).expect("copy the sample into captures/");
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// The SYNs (no ACK) of a capture: (interface, comment, source, destination port).
fn syns(file: &Path) -> Vec<(String, String, String, String)> {
    tshark_fields(
        file,
        &[
            "frame.interface_name",
            "frame.comment",
            "ip.src",
            "tcp.dstport",
            "tcp.flags.syn",
            "tcp.flags.ack",
        ],
    )
    .into_iter()
    .filter(|r| r.len() == 6 && r[4] == "1" && r[5] == "0")
    .map(|r| (r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()))
    .collect()
}

#[test]
fn a_userland_proxys_two_legs_are_one_flow() {
    // The lab's userland proxy (nettool proxy) answers localhost, which is never DNATed.
    let (lab, _state) = TestLab::isolated("capp", &[]);
    let file = tmp("cap-proxy");
    let run = start(&[
        "--lab",
        &lab.name,
        "--follow",
        "-w",
        file.to_str().unwrap(),
        "tcp port 8080 or tcp port 80",
    ]);
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &lab.name,
        "curl",
        "-s",
        "--max-time",
        "5",
        "http://127.0.0.1:8080/",
    ]);
    assert!(
        !out.is_empty(),
        "curl through the lab's userland proxy answered"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, err) = run.stop();
    let rows = syns(&file);
    let host_lo = format!("lab:{}/host/lo", lab.name);
    let web = format!("lab:{}/web/eth0", lab.name);
    let client_leg: Vec<_> = rows
        .iter()
        .filter(|r| r.0 == host_lo && r.3 == "8080")
        .collect();
    let backend_leg: Vec<_> = rows.iter().filter(|r| r.0 == web && r.3 == "80").collect();
    assert!(
        !client_leg.is_empty() && !backend_leg.is_empty(),
        "the SYN to the proxy on lo and the proxy's SYN to web: {rows:?} {err}"
    );
    let c = &client_leg[0].1;
    assert_eq!(&backend_leg[0].1, c, "both legs are one flow: {rows:?}");
    assert!(
        c.contains("original tcp 127.0.0.1:")
            && c.contains("> 127.0.0.1:8080")
            && c.contains(" ; proxied by nettool pid ")
            && c.contains("> 172.19.0.2:80"),
        "{c}"
    );
    record_sample(&file, "capture-lab-proxy-follow.pcapng");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn real_docker_published_port_is_followed_across_dnat_and_docker_proxy() {
    // Docker's default: DNAT for traffic from outside, docker-proxy for localhost.
    let d = common::docker::Dockerd::start_with("cap-dp", &["--userland-proxy=true"]);
    let outside = TestNs::new("cap-dpo");
    veth("eth0", &d.ns, "eth0", &outside);
    d.ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"]);
    outside.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    let web = unique("web");
    d.run_busybox_web(&web, "8080:80");
    let file = tmp("cap-dp");
    let run = start_env(
        &[
            "--netns",
            &outside.name,
            "--netns",
            &d.ns.name,
            "--netns",
            &format!("container:{web}"),
            "--follow",
            "-w",
            file.to_str().unwrap(),
            "tcp port 8080 or tcp port 80",
        ],
        &[("DOCKER_HOST", &d.host())],
    );
    let curl = |ns: &str, url: &str| {
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])
    };
    // Wait for docker-proxy's listener and the DNAT to answer (httpd starts in the container).
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&outside.name, "http://192.0.2.1:8080/").trim() == "000" {
        assert!(Instant::now() < deadline, "web never answered on 8080");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(curl(&d.ns.name, "http://127.0.0.1:8080/").trim(), "000");
    std::thread::sleep(Duration::from_millis(300));
    let (_, err) = run.stop();
    let rows = syns(&file);
    let web = format!("container:{web}/eth0");
    let web = web.as_str();
    // From outside: DNAT, one flow from the outside's eth0 to the container's.
    let dnat: Vec<_> = rows
        .iter()
        .filter(|r| r.1.contains("original tcp 192.0.2.2:"))
        .collect();
    let legs: std::collections::BTreeSet<&str> = dnat.iter().map(|r| r.0.as_str()).collect();
    assert!(
        legs.contains(format!("{}/eth0", outside.name).as_str()) && legs.contains(web),
        "the outside client's SYN on its eth0 and in the container: {rows:?} {err}"
    );
    let flows: std::collections::BTreeSet<&str> = dnat.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(flows.len(), 1, "{dnat:?}");
    let f = flows.into_iter().next().unwrap();
    assert!(
        f.contains("> 192.0.2.1:8080")
            && f.contains("reply tcp 172.17.0.2:80 > 192.0.2.2:")
            && f.contains("(NAT)"),
        "{f}"
    );
    // From localhost: docker-proxy's two legs, one flow.
    let lo = format!("{}/lo", d.ns.name);
    let proxied: Vec<_> = rows
        .iter()
        .filter(|r| r.1.contains("proxied by docker-proxy pid "))
        .collect();
    let legs: std::collections::BTreeSet<&str> = proxied.iter().map(|r| r.0.as_str()).collect();
    assert!(
        legs.contains(lo.as_str()) && legs.contains(web),
        "docker-proxy's client leg on lo and its backend leg in the container: {rows:?} {err}"
    );
    let flows: std::collections::BTreeSet<&str> = proxied.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(flows.len(), 1, "{proxied:?}");
    record_sample(&file, "capture-docker-p-follow.pcapng");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn the_proxy_and_docker_samples_read_back_with_their_joined_legs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("captures");
    for (name, wants) in [
        (
            "capture-lab-proxy-follow.pcapng",
            &["proxied by nettool pid "][..],
        ),
        (
            "capture-docker-p-follow.pcapng",
            &[
                "proxied by docker-proxy pid ",
                "reply tcp 172.17.0.2:80 > 192.0.2.2:",
            ][..],
        ),
    ] {
        let file = dir.join(name);
        // tshark reads it without a warning (tshark_fields asserts it).
        let rows = tshark_fields(&file, &["frame.interface_name", "frame.comment"]);
        assert!(rows.len() > 10, "{name}: {rows:?}");
        let out = common::nettool_ok(&["capture", "--read", file.to_str().unwrap()]);
        for w in wants {
            assert!(out.contains(w), "{name} has '{w}':\n{out}");
        }
    }
}

#[test]
fn the_live_view_merges_interfaces_by_time_and_counts_in_that_order() {
    let (a, b) = pair("capo", 31);
    // b first: its ring is read first; the first packets in time are a's.
    let run = start(&[
        "--netns",
        &b.name,
        "--netns",
        &a.name,
        "-i",
        "eth0",
        "-c",
        "2",
        "udp port 9",
    ]);
    udp_burst(&a, "10.201.31.2", 9, 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut run = run;
    while run.child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "-c 2 never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (out, err) = run.stop();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out} {err}");
    // The first datagram leaving a, then arriving at b: not b's two packets.
    assert!(lines[0].contains(&format!(" {}/eth0 ", a.name)), "{out}");
    assert!(lines[1].contains(&format!(" {}/eth0 ", b.name)), "{out}");
}

/// `n` UDP datagrams of 1,200 bytes from `ns` to `dst:port`, as fast as Python sends them; the
/// payload of datagram `i` is `i` as 8 digits, 150 times.
fn numbered_datagrams(ns: &TestNs, dst: &str, port: u16, n: usize) {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range({n}):\n    s.sendto(b'%08d' % i * 150, ('{dst}', {port}))\n"
    );
    sh(&["ip", "netns", "exec", &ns.name, "python3", "-c", &script]);
}

/// The numbers of the datagrams in `file`, in file order; panics on a payload that is not one
/// number repeated (bytes of two packets mixed).
fn datagram_numbers(file: &Path) -> Vec<u64> {
    tshark_fields(file, &["data.data"])
        .iter()
        .map(|r| {
            let hex = &r[0];
            assert_eq!(hex.len(), 2400, "a 1,200-byte payload: {hex:.80}");
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            let first = &bytes[..8];
            assert!(
                bytes.chunks(8).all(|c| c == first),
                "one number repeated: {:?}",
                String::from_utf8_lossy(&bytes[..64])
            );
            String::from_utf8_lossy(first).parse().expect("digits")
        })
        .collect()
}

#[test]
fn a_file_holds_the_bytes_that_were_on_the_wire_while_the_ring_wraps() {
    let (a, b) = pair("capw", 32);
    let file = tmp("cap-wrap");
    // The smallest ring (2 MiB): 30 MB of datagrams go round it many times while the file is
    // written from it.
    let run = start(&[
        "--netns",
        &b.name,
        "-i",
        "eth0",
        "-B",
        "2048",
        "-w",
        file.to_str().unwrap(),
        "udp port 5555",
    ]);
    numbered_datagrams(&a, "10.201.32.2", 5555, 25_000);
    let (_, err) = run.stop();
    let numbers = datagram_numbers(&file);
    let _ = std::fs::remove_file(&file);
    assert!(numbers.len() > 1000, "{} datagrams: {err}", numbers.len());
    // Each datagram once, in the order sent (the kernel may drop some when the ring is full,
    // but a packet written after its ring block was handed back shows a later one's bytes).
    let bad: Vec<(u64, u64)> = numbers
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} datagrams out of order or repeated, e.g. {:?}: {err}",
        bad.len(),
        numbers.len(),
        &bad[..bad.len().min(5)]
    );
}

#[test]
fn a_file_of_two_namespaces_is_in_time_order() {
    let (a, b) = pair("capt", 33);
    let file = tmp("cap-order");
    // b first: its ring is read first, though the first packet of each datagram is a's.
    let run = start(&[
        "--netns",
        &b.name,
        "--netns",
        &a.name,
        "-i",
        "eth0",
        "-w",
        file.to_str().unwrap(),
        "udp port 5555",
    ]);
    numbered_datagrams(&a, "10.201.33.2", 5555, 200);
    let (_, err) = run.stop();
    let rows = tshark_fields(&file, &["frame.time_epoch", "frame.interface_name"]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        rows.len(),
        400,
        "each datagram leaving a and reaching b: {err}"
    );
    let times: Vec<f64> = rows.iter().map(|r| r[0].parse().expect("time")).collect();
    let back: Vec<usize> = (1..times.len())
        .filter(|&i| times[i] < times[i - 1])
        .collect();
    assert!(
        back.is_empty(),
        "frame.time_epoch goes back at {} of {} packets, first at {:?}",
        back.len(),
        rows.len(),
        back.first().map(|&i| (&rows[i - 1], &rows[i]))
    );
}

#[test]
fn a_udp_proxys_two_legs_are_one_flow() {
    // A lab whose UDP port is published through the userland proxy (nettool proxy): a datagram
    // to 127.0.0.1 goes to the proxy, which sends it on to the container.
    let spec = std::env::temp_dir().join(format!("{}.toml", unique("capu-lab")));
    std::fs::write(
        &spec,
        "[lab]\nuserland_proxy = true\n\n[[network]]\nname = \"net\"\nsubnet = \"10.57.0.0/24\"\n\n\
         [[container]]\nname = \"echo\"\nnetwork = \"net\"\nrun = \"nettool serve udp-echo 5000\"\n\
         ports = [\"5000:5000/udp\"]\n",
    )
    .unwrap();
    let (lab, _state) = TestLab::isolated("capu", &[spec.to_str().unwrap()]);
    let _ = std::fs::remove_file(&spec);
    let file = tmp("cap-udp-proxy");
    let run = start(&[
        "--lab",
        &lab.name,
        "--follow",
        "-w",
        file.to_str().unwrap(),
        "udp port 5000",
    ]);
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &lab.name,
        "sh",
        "-c",
        "echo hello | socat -t 2 - UDP:127.0.0.1:5000",
    ]);
    assert!(
        out.contains("hello"),
        "the echo answered through the proxy: {out}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, err) = run.stop();
    let rows = tshark_fields(
        &file,
        &["frame.interface_name", "frame.comment", "udp.dstport"],
    );
    let _ = std::fs::remove_file(&file);
    let host_lo = format!("lab:{}/host/lo", lab.name);
    let echo = format!("lab:{}/echo/eth0", lab.name);
    let leg = |iface: &str| {
        rows.iter()
            .find(|r| r[0] == iface && r[2] == "5000")
            .unwrap_or_else(|| panic!("a datagram to port 5000 on {iface}: {rows:?} {err}"))
            .clone()
    };
    let (client, backend) = (leg(&host_lo), leg(&echo));
    assert_eq!(client[1], backend[1], "both legs are one flow: {rows:?}");
    let c = &client[1];
    assert!(
        c.contains("original udp 127.0.0.1:")
            && c.contains("> 127.0.0.1:5000")
            && c.contains(" ; proxied by nettool pid ")
            && c.contains("(paired by time)")
            && c.contains("> 10.57.0.2:5000"),
        "{c}"
    );
}

#[test]
fn capturing_starts_before_a_slow_engine_answers_and_names_come_from_it() {
    let d = common::docker::Dockerd::start("cap-slow");
    d.import_busybox("nt-busybox");
    let (web, db) = (unique("web"), unique("db"));
    for c in [&web, &db] {
        d.docker(&["run", "-d", "--name", c, "nt-busybox", "sleep", "300"]);
    }
    let db_ip = d
        .docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &db])
        .trim()
        .to_string();
    let pid = d
        .docker(&["inspect", "-f", "{{.State.Pid}}", &web])
        .trim()
        .to_string();
    // nettool reaches dockerd through a relay that the test holds stopped: the engine does not
    // answer (like a socket-activated podman starting) until capturing has started.
    let relay_sock = std::env::temp_dir().join(format!("{}.sock", unique("cap-relay")));
    let real = d.host();
    let mut relay = Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork", relay_sock.display()))
        .arg(format!(
            "UNIX-CONNECT:{}",
            real.trim_start_matches("unix://")
        ))
        .spawn()
        .expect("socat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay_sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    sh(&["kill", "-STOP", &relay.id().to_string()]);
    let file = tmp("cap-slow");
    let run = start_env(
        &[
            "--netns",
            &format!("/proc/{pid}/ns/net"),
            "-i",
            "eth0",
            "-w",
            file.to_str().unwrap(),
            "icmp",
        ],
        &[("DOCKER_HOST", &format!("unix://{}", relay_sock.display()))],
    );
    // Sent while the engine still has not answered: it must be in the file all the same.
    d.docker(&["exec", &web, "busybox", "ping", "-c", "1", &db_ip]);
    sh(&["kill", "-CONT", &relay.id().to_string()]);
    let (_, err) = run.stop();
    let _ = relay.kill();
    let _ = relay.wait();
    let _ = std::fs::remove_file(&relay_sock);
    let rows = tshark_fields(
        &file,
        &["frame.interface_name", "frame.interface_description"],
    );
    let _ = std::fs::remove_file(&file);
    assert_eq!(rows.len(), 2, "the request and its reply: {rows:?} {err}");
    let (label, description) = (
        format!("container:{web}/eth0"),
        format!("container {web} (docker, id "),
    );
    assert!(
        rows.iter()
            .all(|r| r[0] == label && r[1].contains(&description)),
        "named after the engine's answer: {rows:?} {err}"
    );
}

#[test]
fn ctrl_c_under_heavy_traffic_stops_while_it_still_flows_and_the_file_is_whole() {
    let (a, b) = pair("capi", 9);
    let port = "5291";
    let mut server = Command::new("ip")
        .args(["netns", "exec", &b.name, "iperf3", "-s", "-1", "-p", port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    let file = tmp("cap-heavy");
    // Both ends: two rings, so packets wait for time order as with --all-netns.
    let run = start(&[
        "--netns",
        &a.name,
        "--netns",
        &b.name,
        "-i",
        "eth0",
        "-w",
        file.to_str().unwrap(),
        "tcp port 5291",
    ]);
    // Traffic that outlasts the test: the capture must stop while it still flows.
    let mut client = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a.name,
            "iperf3",
            "-c",
            "10.201.9.2",
            "-p",
            port,
            "-t",
            "120",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -c");
    let grown = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) < 64 << 20
        && Instant::now() < grown
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, err) = run.stop();
    let still_flowing = client.try_wait().expect("iperf3 -c").is_none();
    let _ = client.kill();
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let rows = tshark_fields(&file, &["frame.number"]);
    let _ = std::fs::remove_file(&file);
    assert!(still_flowing, "Ctrl-C waited for the traffic to end: {err}");
    assert!(err.contains("received by filter"), "summary: {err}");
    assert!(!rows.is_empty() && size >= 64 << 20, "{size} bytes: {err}");
}

#[test]
fn ctrl_c_does_not_wait_for_an_engine_asked_about_a_new_namespace() {
    let d = common::docker::Dockerd::start("cap-rescan");
    // nettool reaches dockerd through a relay the test stops once capturing has started: a new
    // namespace then makes the rescanner ask an engine that does not answer (a busy or
    // socket-activated engine), which must not hold up Ctrl-C.
    let relay_sock = std::env::temp_dir().join(format!("{}.sock", unique("cap-rescan")));
    let real = d.host();
    let mut relay = Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork", relay_sock.display()))
        .arg(format!(
            "UNIX-CONNECT:{}",
            real.trim_start_matches("unix://")
        ))
        .spawn()
        .expect("socat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay_sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut run = start_env(
        &["--all-netns", "-i", "lo", "-c", "1000000", "udp port 9"],
        &[("DOCKER_HOST", &format!("unix://{}", relay_sock.display()))],
    );
    sh(&["kill", "-STOP", &relay.id().to_string()]);
    let (new_ns, _) = pair("caprs", 11);
    // The rescanner looks every second: give it time to find the namespace and ask the engine.
    std::thread::sleep(Duration::from_millis(2500));
    let _ = Command::new("kill")
        .args(["-INT", &run.child.id().to_string()])
        .status();
    // The engine's read times out after 10 s; the capture must end well before that, while the
    // relay is still stopped.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut exited = None;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = run.child.try_wait() {
            exited = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sh(&["kill", "-CONT", &relay.id().to_string()]);
    let _ = relay.kill();
    let _ = relay.wait();
    let _ = std::fs::remove_file(&relay_sock);
    drop(new_ns);
    let st = exited.expect("capture still running 5 s after Ctrl-C, waiting on the engine");
    assert!(st.success(), "capture failed: {st} {:?}", run.log);
}
