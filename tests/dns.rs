//! `nettool dns` against a real resolver (dnsmasq) in one namespace and real clients (dig, or
//! small senders made inside the namespace) in another: each lookup line checked.

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nettool::netns::NetNs;
use serde_json::Value;

/// A server namespace running dnsmasq on 10.53.0.1 / fd53::1, and a client namespace
/// (10.53.0.2 and 10.53.0.4 / fd53::2) joined by a veth.
struct DnsLab {
    server: TestNs,
    client: TestNs,
    _dnsmasq: ChildGuard,
}

impl DnsLab {
    fn new(tag: &str) -> Self {
        let server = TestNs::new(&format!("{tag}s"));
        let client = TestNs::new(&format!("{tag}c"));
        let (vs, vc) = (unique_ifname("ds"), unique_ifname("dc"));
        veth(&vs, &server, &vc, &client);
        server.ip(&["addr", "add", "10.53.0.1/24", "dev", &vs]);
        server.ip(&["addr", "add", "10.53.0.3/24", "dev", &vs]);
        server.ip(&["addr", "add", "10.53.0.5/24", "dev", &vs]);
        server.ip(&["addr", "add", "fd53::1/64", "dev", &vs, "nodad"]);
        client.ip(&["addr", "add", "10.53.0.2/24", "dev", &vc]);
        client.ip(&["addr", "add", "10.53.0.4/24", "dev", &vc]);
        client.ip(&["addr", "add", "fd53::2/64", "dev", &vc, "nodad"]);
        let mut argv: Vec<String> = [
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=10.53.0.1",
            "--listen-address=fd53::1",
            "--pid-file=",
            "--log-facility=/dev/null",
            "--local=/test/",
            "--host-record=a.test,10.1.2.3,fd00::3",
            "--cname=www.a.test,a.test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Enough TXT records that a plain 512-byte UDP answer must be truncated.
        for i in 0..20 {
            argv.push(format!(
                "--txt-record=big.test,record-{i:02}-padding-padding-padding-padding"
            ));
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let dnsmasq = server.spawn(&argv);
        let lab = DnsLab {
            server,
            client,
            _dnsmasq: dnsmasq,
        };
        wait_for("dnsmasq answering", 10, || {
            Command::new("ip")
                .args(["netns", "exec", &lab.client.name])
                .args([
                    "dig",
                    "+short",
                    "+tries=1",
                    "+timeout=1",
                    "@10.53.0.1",
                    "a.test",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("10.1.2.3"))
                .unwrap_or(false)
        });
        lab
    }

    /// Run dig in the client namespace; returns its stdout (failure is fine: timeouts).
    fn dig(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client.name, "dig"])
            .args(args)
            .output()
            .expect("run dig");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A running `nettool dns`, started and ready (its capture socket is open).
struct Trace(Option<Child>);

impl Trace {
    fn start(args: &[&str]) -> Trace {
        Trace::start_env(args, &[])
    }

    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Trace {
        // A safety net so a broken test cannot hang the suite.
        let safety: &[&str] = if args.contains(&"--duration") {
            &[]
        } else {
            &["--duration", "30s"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_nettool"))
            .arg("dns")
            .args(args)
            .args(safety)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nettool dns");
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains("capturing in"),
            "nettool dns did not start: {line}"
        );
        Trace(Some(child))
    }

    /// Wait for it to stop by itself (--count) and return stdout.
    fn output(mut self) -> String {
        let child = self.0.take().unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nettool dns failed: {}", out.status);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// JSON lines: (lookups, summary).
    fn json(self) -> (Vec<Value>, Value) {
        let text = self.output();
        let mut lookups = Vec::new();
        let mut summary = Value::Null;
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            if v.get("summary").is_some() {
                summary = v["summary"].clone();
            } else {
                lookups.push(v);
            }
        }
        (lookups, summary)
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn find<'a>(lookups: &'a [Value], name: &str, qtype: &str) -> &'a Value {
    lookups
        .iter()
        .find(|l| l["name"] == name && l["type"] == qtype)
        .unwrap_or_else(|| panic!("no {qtype} {name} lookup in {lookups:#?}"))
}

fn ip_of(v: &Value) -> String {
    let s = v.as_str().unwrap();
    s.rsplit_once(':')
        .unwrap()
        .0
        .trim_matches(['[', ']'])
        .to_string()
}

#[test]
fn a_aaaa_nxdomain_and_tcp_are_paired() {
    let lab = DnsLab::new("dnsa");
    let t = Trace::start(&["--netns", &lab.client.name, "--json", "--count", "5"]);
    assert!(lab
        .dig(&["+short", "@10.53.0.1", "a.test"])
        .contains("10.1.2.3"));
    assert!(lab
        .dig(&["+short", "@fd53::1", "a.test", "AAAA"])
        .contains("fd00::3"));
    assert!(lab.dig(&["@10.53.0.1", "nope.test"]).contains("NXDOMAIN"));
    assert!(lab
        .dig(&["+short", "+tcp", "@10.53.0.1", "www.a.test"])
        .contains("10.1.2.3"));
    lab.dig(&["+short", "@10.53.0.1", "a.test", "MX"]);
    let (lookups, summary) = t.json();
    assert_eq!(lookups.len(), 5, "{lookups:#?}");

    let a = find(&lookups, "a.test", "A");
    assert_eq!(a["status"], "answered");
    assert_eq!(a["rcode"], "NOERROR");
    assert_eq!(a["transport"], "udp");
    assert_eq!(ip_of(&a["client"]), "10.53.0.2");
    assert_eq!(a["server"], "10.53.0.1:53");
    assert_eq!(a["netns"], lab.client.name.as_str());
    assert_eq!(a["answers"][0]["data"], "10.1.2.3");
    assert!(a["latency_ms"].as_f64().unwrap() >= 0.0);

    let aaaa = find(&lookups, "a.test", "AAAA");
    assert_eq!(aaaa["server"], "[fd53::1]:53");
    assert_eq!(ip_of(&aaaa["client"]), "fd53::2");
    assert_eq!(aaaa["answers"][0]["data"], "fd00::3");

    let nx = find(&lookups, "nope.test", "A");
    assert_eq!(nx["rcode"], "NXDOMAIN");
    assert_eq!(nx["answers"].as_array().unwrap().len(), 0);

    let tcp = find(&lookups, "www.a.test", "A");
    assert_eq!(tcp["transport"], "tcp");
    assert_eq!(tcp["rcode"], "NOERROR");
    let data: Vec<&str> = tcp["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["a.test", "10.1.2.3"], "CNAME then A: {tcp}");

    let mx = find(&lookups, "a.test", "MX");
    assert_eq!(mx["rcode"], "NOERROR");

    // The summary: one row per name, errors counted.
    let names = summary["names"].as_array().unwrap();
    let row = |n: &str| names.iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(row("a.test")["count"], 3);
    assert_eq!(row("a.test")["errors"], 0);
    assert_eq!(row("nope.test")["errors"], 1);
    assert!(row("a.test")["slowest_server"]
        .as_str()
        .unwrap()
        .ends_with(":53"));
    assert_eq!(summary["lookups"], 5);
    assert_eq!(summary["sources"][0]["kernel_drops"], 0);
}

#[test]
fn text_lines_and_summary() {
    let lab = DnsLab::new("dnst");
    let t = Trace::start(&["--netns", &lab.client.name, "--count", "2"]);
    lab.dig(&["+short", "@10.53.0.1", "a.test"]);
    lab.dig(&["@10.53.0.1", "nope.test"]);
    let text = t.output();
    let lines: Vec<&str> = text.lines().collect();
    // time  netns  client -> server  TYPE NAME  RCODE  LATENCY  ANSWERS
    let first = lines[0];
    let cols: Vec<&str> = first.split("  ").collect();
    assert_eq!(cols[0].len(), "12:34:56.789".len(), "{first}");
    assert_eq!(cols[1], lab.client.name, "{first}");
    assert!(
        cols[2].starts_with("10.53.0.2:") && cols[2].ends_with(" -> 10.53.0.1:53"),
        "{first}"
    );
    assert_eq!(cols[3], "A a.test", "{first}");
    assert_eq!(cols[4], "NOERROR", "{first}");
    assert!(cols[5].ends_with(" ms"), "{first}");
    assert_eq!(cols[6], "10.1.2.3", "{first}");
    assert!(lines[1].contains("  A nope.test  NXDOMAIN  "), "{text}");
    // Summary table after a blank line.
    let header = lines
        .iter()
        .position(|l| l.starts_with("NAME "))
        .expect("summary");
    assert!(
        lines[header + 1..].iter().any(|l| l.starts_with("a.test ")),
        "{text}"
    );
    assert!(lines.iter().any(|l| l.starts_with("2 lookups")), "{text}");
}

/// A UDP responder inside `ns` answering every query with `rcode` (echoing the question),
/// except the first `ignore` queries, which it drops.
fn responder(ns: &TestNs, addr: &str, rcode: u8, mut ignore: usize) -> std::thread::JoinHandle<()> {
    let sock = NetNs::from_name(&ns.name)
        .unwrap()
        .run(|| UdpSocket::bind(addr))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            if ignore > 0 {
                ignore -= 1;
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80; // QR: a response
            reply[3] = (reply[3] & 0xf0) | 0x80 | rcode; // RA + rcode
            let _ = sock.send_to(&reply, from);
        }
    })
}

fn query_bytes(id: u16, name: &str) -> Vec<u8> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

#[test]
fn servfail_timeout_and_duplicate_ids() {
    let lab = DnsLab::new("dnsf");
    let _servfail = responder(&lab.server, "10.53.0.3:53", 2, 0);
    let t = Trace::start(&[
        "--netns",
        &lab.client.name,
        "--json",
        "--count",
        "4",
        "--timeout",
        "1s",
    ]);
    // SERVFAIL from a server that fails everything.
    assert!(lab
        .dig(&["+tries=1", "@10.53.0.3", "x.fail.test"])
        .contains("SERVFAIL"));
    // A silent server: it receives and never answers.
    let ns_s = NetNs::from_name(&lab.server.name).unwrap();
    let _silent = ns_s
        .run(|| UdpSocket::bind("10.53.0.5:53"))
        .unwrap()
        .unwrap();
    lab.dig(&["+tries=1", "+timeout=1", "@10.53.0.5", "silent.test"]);
    // Two clients, same id, same question, same server, at the same time.
    let ns = NetNs::from_name(&lab.client.name).unwrap();
    let (s1, s2) = ns
        .run(|| {
            (
                UdpSocket::bind("10.53.0.2:0").unwrap(),
                UdpSocket::bind("10.53.0.4:0").unwrap(),
            )
        })
        .unwrap();
    let q = query_bytes(0x4242, "a.test.");
    s1.send_to(&q, "10.53.0.1:53").unwrap();
    s2.send_to(&q, "10.53.0.1:53").unwrap();
    for s in [&s1, &s2] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        s.recv_from(&mut buf)
            .expect("answer to the duplicate-id query");
    }
    let (lookups, _) = t.json();
    assert_eq!(lookups.len(), 4, "{lookups:#?}");

    let sf = find(&lookups, "x.fail.test", "A");
    assert_eq!(sf["rcode"], "SERVFAIL");
    assert_eq!(sf["server"], "10.53.0.3:53");
    assert_eq!(sf["status"], "answered");

    let to = find(&lookups, "silent.test", "A");
    assert_eq!(to["status"], "timeout");
    assert_eq!(to["server"], "10.53.0.5:53");
    assert!(to["rcode"].is_null() && to["latency_ms"].is_null());

    let dup: Vec<&Value> = lookups.iter().filter(|l| l["id"] == 0x4242).collect();
    assert_eq!(dup.len(), 2, "{lookups:#?}");
    let mut clients: Vec<String> = dup.iter().map(|l| ip_of(&l["client"])).collect();
    clients.sort();
    assert_eq!(clients, ["10.53.0.2", "10.53.0.4"]);
    for d in dup {
        assert_eq!(d["status"], "answered");
        assert_eq!(d["answers"][0]["data"], "10.1.2.3");
        assert_eq!(d["retries"], 0);
    }
}

#[test]
fn truncated_answer_then_tcp_retry() {
    let lab = DnsLab::new("dnstc");
    let t = Trace::start(&["--netns", &lab.client.name, "--json", "--count", "2"]);
    // No EDNS: the answer must fit 512 bytes, so it comes back TC and dig retries over TCP.
    let out = lab.dig(&["+noedns", "@10.53.0.1", "big.test", "TXT"]);
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    let (lookups, _) = t.json();
    assert_eq!(lookups.len(), 2, "{lookups:#?}");
    assert_eq!(lookups[0]["transport"], "udp");
    assert_eq!(lookups[0]["truncated"], true);
    assert_eq!(lookups[0]["after_truncated"], false);
    assert_eq!(lookups[1]["transport"], "tcp");
    assert_eq!(lookups[1]["truncated"], false);
    assert_eq!(lookups[1]["after_truncated"], true);
    assert_eq!(lookups[1]["answers"].as_array().unwrap().len(), 20);
    assert!(
        lookups[0]["answers"].as_array().unwrap().len() < 20,
        "the UDP answer holds only what fits"
    );
}

#[test]
fn pcap_written_and_read_back() {
    let lab = DnsLab::new("dnsp");
    let dir = std::env::temp_dir().join(unique("pcap"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dns.pcap");
    let t = Trace::start(&[
        "--netns",
        &lab.client.name,
        "--count",
        "2",
        "--pcap",
        file.to_str().unwrap(),
    ]);
    lab.dig(&["+short", "@10.53.0.1", "a.test"]);
    lab.dig(&["+short", "+tcp", "@10.53.0.1", "a.test", "AAAA"]);
    let live = t.output();
    // tshark reads our file and sees the four DNS messages.
    let ts = sh(&["tshark", "-r", file.to_str().unwrap(), "-Y", "dns"]);
    assert_eq!(ts.lines().count(), 4, "{ts}");
    // --read explains it the same way.
    let read = nettool_ok(&[
        "dns",
        "--read",
        file.to_str().unwrap(),
        "--json",
        "--no-summary",
    ]);
    let lookups: Vec<Value> = read
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lookups.len(), 2, "{read}");
    assert_eq!(lookups[0]["netns"], "dns.pcap");
    assert_eq!(
        find(&lookups, "a.test", "A")["answers"][0]["data"],
        "10.1.2.3"
    );
    assert_eq!(find(&lookups, "a.test", "AAAA")["transport"], "tcp");
    assert!(live.contains("  A a.test  NOERROR  "), "{live}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn read_rejects_a_non_capture_with_a_clear_message() {
    let dir = std::env::temp_dir().join(unique("bad"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not.pcap");
    std::fs::write(&file, b"hello, this is not a pcap file").unwrap();
    let out = nettool(&["dns", "--read", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not.pcap") && err.contains("not a pcap"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn all_netns_shows_a_lookup_once_with_a_hop_on_each_side() {
    let lab = DnsLab::new("dnsall");
    // Other tests may run DNS in their own namespaces meanwhile: stop on time, then look
    // only at this test's unique name.
    let name = format!("allns{}.test", std::process::id());
    let t = Trace::start(&[
        "--all-netns",
        "--json",
        "--duration",
        "3s",
        "--timeout",
        "1s",
    ]);
    lab.dig(&["+short", "@10.53.0.1", &name]);
    let (lookups, summary) = t.json();
    let ours: Vec<&Value> = lookups
        .iter()
        .filter(|l| l["name"] == name.as_str())
        .collect();
    // Seen on both sides of the veth: one lookup, two hops (it was two lines before).
    assert_eq!(ours.len(), 1, "{ours:#?}");
    let l = ours[0];
    assert_eq!(l["netns"], lab.client.name.as_str());
    assert_eq!(l["rcode"], "NXDOMAIN");
    assert_eq!(ip_of(&l["client"]), "10.53.0.2");
    assert_eq!(l["server"], "10.53.0.1:53");
    let hops = l["hops"].as_array().unwrap();
    let where_seen: Vec<&str> = hops.iter().map(|h| h["netns"].as_str().unwrap()).collect();
    assert_eq!(
        where_seen,
        [lab.client.name.as_str(), lab.server.name.as_str()],
        "{l:#}"
    );
    for h in hops {
        assert_eq!(h["client"], l["client"]);
        assert_eq!(h["rcode"], "NXDOMAIN");
        assert!(h["interface"].as_str().unwrap().starts_with('d'), "{h}");
    }
    assert!(summary["sources"].as_array().unwrap().len() >= 2);
}

/// A resolver namespace (dnsmasq on 10.53.0.1, or a caller-made responder) joined by a veth
/// to `host` (a namespace given by name: a lab's isolated host), which gets 10.53.0.254.
struct Upstream {
    ns: TestNs,
    _dnsmasq: Option<ChildGuard>,
    host_if: String,
}

impl Upstream {
    fn new(tag: &str, host: &str, dnsmasq: bool) -> Upstream {
        let ns = TestNs::new(tag);
        let (h, u) = (unique_ifname("uh"), unique_ifname("uu"));
        sh(&[
            "ip", "link", "add", &h, "netns", host, "type", "veth", "peer", "name", &u, "netns",
            &ns.name,
        ]);
        sh(&["ip", "-n", host, "addr", "add", "10.53.0.254/24", "dev", &h]);
        sh(&["ip", "-n", host, "link", "set", &h, "up"]);
        ns.ip(&["addr", "add", "10.53.0.1/24", "dev", &u]);
        ns.ip(&["link", "set", &u, "up"]);
        let guard = dnsmasq.then(|| {
            ns.spawn(&[
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=10.53.0.1",
                "--pid-file=",
                "--log-facility=/dev/null",
                "--local=/test/",
                "--host-record=up.test,10.1.2.3",
            ])
        });
        Upstream {
            ns,
            _dnsmasq: guard,
            host_if: h,
        }
    }
}

fn hop_clients(l: &Value) -> Vec<String> {
    l["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["client"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_lab_containers_lookup_through_the_bridge_and_masquerade_is_one_lookup() {
    let (lab, state) = TestLab::isolated("dnsone", &["--no-userland-proxy"]);
    let up = Upstream::new("dnsoneu", &lab.name, true);
    let client = lab.ns("client");
    let client_ip = state["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "client")
        .map(|c| c["networks"][0]["address"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no client in {state:#}"));
    let dig = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &client, "dig"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("the upstream through the lab's MASQUERADE", 10, || {
        dig(&["+short", "+tries=1", "+timeout=1", "@10.53.0.1", "up.test"]).contains("10.1.2.3")
    });
    let name = format!("once{}.test", std::process::id());
    let t = Trace::start(&[
        "--all-netns",
        "--json",
        "--duration",
        "4s",
        "--timeout",
        "1s",
    ]);
    assert!(dig(&["@10.53.0.1", &name]).contains("NXDOMAIN"));
    let (lookups, summary) = t.json();
    let ours: Vec<&Value> = lookups
        .iter()
        .filter(|l| l["name"] == name.as_str())
        .collect();
    // Seen in the container, on the lab's bridge, on its uplink after the MASQUERADE and in
    // the resolver's namespace: one lookup (four lines before).
    assert_eq!(ours.len(), 1, "{ours:#?}");
    let l = ours[0];
    assert_eq!(ip_of(&l["client"]), client_ip, "{l:#}");
    assert_eq!(l["rcode"], "NXDOMAIN");
    let hops = l["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 4, "{l:#}");
    let clients = hop_clients(l);
    assert_eq!(clients[0], l["client"].as_str().unwrap());
    assert_eq!(
        clients[1], clients[0],
        "the bridge sees the container's address"
    );
    assert_eq!(
        ip_of(&hops[2]["client"]),
        "10.53.0.254",
        "after the MASQUERADE"
    );
    assert_eq!(clients[3], clients[2]);
    assert_eq!(hops[2]["interface"], up.host_if.as_str());
    assert_eq!(
        hops[1]["netns"], hops[2]["netns"],
        "both in the lab's host: {l:#}"
    );
    assert!(
        hops[3]["netns"].as_str().unwrap().contains(&up.ns.name),
        "{l:#}"
    );
    // Each namespace counted its sighting.
    let sightings = |label: &str| {
        summary["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["netns"] == label)
            .map(|s| s["sightings"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no source {label} in {summary:#}"))
    };
    assert!(sightings(hops[1]["netns"].as_str().unwrap()) >= 2);
    assert!(sightings(hops[3]["netns"].as_str().unwrap()) >= 1);
}

#[test]
fn a_lab_forward_from_its_host_goes_inside_the_containers_lookup() {
    // The lab's embedded DNS answers in the container's namespace (127.0.0.11, DNATed) and
    // forwards unknown names from the lab's host with the client's id: a second group in the
    // same bucket, joined only because nothing else asked that question then.
    let dir = std::env::temp_dir().join(unique("dnsfw"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lab.toml");
    std::fs::write(
        &file,
        "[lab]\nname = \"fw\"\n\n[[network]]\nname = \"backend\"\nsubnet = \"172.20.0.0/16\"\nupstream = \"10.53.0.1\"\n\n\
         [[container]]\nname = \"app\"\nnetwork = \"backend\"\n\n[[container]]\nname = \"client\"\nnetwork = \"backend\"\n",
    )
    .unwrap();
    let (lab, _) = TestLab::isolated("dnsfw", &[file.to_str().unwrap()]);
    let up = Upstream::new("dnsfwu", &lab.name, true);
    let client = lab.ns("client");
    let dig = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &client, "dig"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("the lab's resolver forwarding upstream", 10, || {
        dig(&["+short", "+tries=1", "+timeout=2", "@127.0.0.11", "up.test"]).contains("10.1.2.3")
    });
    let name = format!("labfw{}.test", std::process::id());
    let t = Trace::start(&[
        "--all-netns",
        "--json",
        "--duration",
        "4s",
        "--timeout",
        "2s",
    ]);
    assert!(dig(&["@127.0.0.11", &name]).contains("NXDOMAIN"));
    let (lookups, _) = t.json();
    let ours: Vec<&Value> = lookups
        .iter()
        .filter(|l| l["name"] == name.as_str())
        .collect();
    // Two lines before: the container's lookup and the host's forward.
    assert_eq!(ours.len(), 1, "{ours:#?}");
    let l = ours[0];
    assert_eq!(l["netns"], client.as_str());
    assert_eq!(l["server"], "127.0.0.11:53");
    assert_eq!(l["rcode"], "NXDOMAIN");
    let legs = l["upstream"].as_array().unwrap();
    assert_eq!(legs.len(), 1, "{l:#}");
    assert_eq!(legs[0]["server"], "10.53.0.1:53");
    assert_eq!(legs[0]["rcode"], "NXDOMAIN");
    assert_eq!(ip_of(&legs[0]["from"]), "10.53.0.254");
    let hops = legs[0]["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 2, "the lab's host and the resolver: {l:#}");
    assert_eq!(hops[0]["interface"], up.host_if.as_str());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two client namespaces (172.31.9.2 and .3) behind a host namespace that MASQUERADEs them
/// onto its uplink (10.53.0.254) towards a resolver namespace.
struct Masqueraded {
    host: TestNs,
    clients: Vec<TestNs>,
    up: Upstream,
}

impl Masqueraded {
    fn new(tag: &str, dnsmasq: bool) -> Masqueraded {
        let host = TestNs::new(&format!("{tag}h"));
        let up = Upstream::new(&format!("{tag}u"), &host.name, dnsmasq);
        let br = unique_ifname("mb");
        host.ip(&["link", "add", &br, "type", "bridge"]);
        host.ip(&["addr", "add", "172.31.9.1/24", "dev", &br]);
        host.ip(&["link", "set", &br, "up"]);
        let mut clients = Vec::new();
        for i in 2..4 {
            let c = TestNs::new(&format!("{tag}c{i}"));
            let (h, e) = (unique_ifname("mv"), unique_ifname("me"));
            veth(&h, &host, &e, &c);
            host.ip(&["link", "set", &h, "master", &br]);
            c.ip(&["addr", "add", &format!("172.31.9.{i}/24"), "dev", &e]);
            c.ip(&["route", "add", "default", "via", "172.31.9.1"]);
            clients.push(c);
        }
        sysctl(&host, "net.ipv4.ip_forward=1");
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
            "-s",
            "172.31.9.0/24",
            "!",
            "-o",
            &br,
            "-j",
            "MASQUERADE",
        ]);
        Masqueraded { host, clients, up }
    }
}

#[test]
fn two_clients_asking_one_name_with_one_id_through_one_masquerade_stay_two_lookups() {
    let m = Masqueraded::new("dnstw", false);
    // The resolver answers each query with an address that spells the source port it saw
    // (10.77.HI.LO), once both queries are in, the second one first: the answer each client
    // gets is the truth about which upstream flow was its own.
    let sock = NetNs::from_name(&m.up.ns.name)
        .unwrap()
        .run(|| UdpSocket::bind("10.53.0.1:53"))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let resolver = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while got.len() < 2 {
            let (n, from) = sock.recv_from(&mut buf).expect("both queries");
            got.push((buf[..n].to_vec(), from));
        }
        for (q, from) in got.into_iter().rev() {
            let mut r = q.clone();
            r[2] |= 0x80;
            r[3] |= 0x80;
            r[7] = 1; // ANCOUNT
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 77]);
            r.extend_from_slice(&from.port().to_be_bytes());
            sock.send_to(&r, from).unwrap();
        }
    });
    let name = format!("same{}.test", std::process::id());
    let query = query_bytes(0x4242, &name);
    let t = Trace::start(&[
        "--all-netns",
        "--json",
        "--duration",
        "4s",
        "--timeout",
        "2s",
    ]);
    // Both clients bind port 5000 and use id 0x4242: the MASQUERADE keeps 5000 for one and
    // moves the other, so after it the two differ only by a port the client never chose.
    let socks: Vec<UdpSocket> = m
        .clients
        .iter()
        .map(|c| {
            let s = NetNs::from_name(&c.name)
                .unwrap()
                .run(|| UdpSocket::bind("0.0.0.0:5000"))
                .unwrap()
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect();
    for s in &socks {
        s.send_to(&query, "10.53.0.1:53").unwrap();
    }
    let answers: Vec<String> = socks
        .iter()
        .map(|s| {
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf).expect("an answer");
            let a = &buf[n - 4..n];
            format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
        })
        .collect();
    resolver.join().unwrap();
    let (lookups, _) = t.json();
    let ours: Vec<&Value> = lookups
        .iter()
        .filter(|l| l["name"] == name.as_str())
        .collect();
    assert_eq!(ours.len(), 2, "{ours:#?}");
    let mut upstream_ports = Vec::new();
    for (i, c) in m.clients.iter().enumerate() {
        let me = format!("172.31.9.{}:5000", i + 2);
        let l = ours
            .iter()
            .find(|l| l["client"] == me.as_str())
            .unwrap_or_else(|| panic!("no lookup from {me}: {ours:#?}"));
        assert_eq!(l["netns"], c.name.as_str());
        assert_eq!(l["id"], 0x4242);
        // What the client really received.
        assert_eq!(l["answers"][0]["data"], answers[i].as_str(), "{l:#}");
        let hops = l["hops"].as_array().unwrap();
        assert_eq!(hops.len(), 4, "{l:#}");
        assert_eq!(hops[1]["netns"], m.host.name.as_str());
        assert_eq!(hops[1]["client"], me.as_str());
        assert_eq!(hops[2]["netns"], m.host.name.as_str());
        // The upstream leg tied to this client is the flow the resolver answered with this
        // client's answer.
        let port: u16 = hops[3]["client"]
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(ip_of(&hops[3]["client"]), "10.53.0.254");
        assert_eq!(
            answers[i],
            format!("10.77.{}.{}", port >> 8, port & 0xff),
            "{l:#}"
        );
        assert_eq!(hops[2]["client"], hops[3]["client"]);
        upstream_ports.push(port);
    }
    assert_ne!(upstream_ports[0], upstream_ports[1]);
}

#[test]
fn retries_from_new_ports_fold_into_one_lookup() {
    let lab = DnsLab::new("dnsr");
    // Drops the first query, answers the retry.
    let _flaky = responder(&lab.server, "10.53.0.3:53", 0, 1);
    let ns_s = NetNs::from_name(&lab.server.name).unwrap();
    let _silent = ns_s
        .run(|| UdpSocket::bind("10.53.0.5:53"))
        .unwrap()
        .unwrap();
    let t = Trace::start(&[
        "--netns",
        &lab.client.name,
        "--json",
        "--count",
        "2",
        "--timeout",
        "3s",
    ]);
    // dig retries from a new port after its 1 s timeout.
    let out = lab.dig(&["+tries=2", "+timeout=1", "@10.53.0.3", "flaky.test"]);
    assert!(out.contains("NOERROR"), "{out}");
    lab.dig(&["+tries=2", "+timeout=1", "@10.53.0.5", "gone.test"]);
    let (lookups, _) = t.json();
    assert_eq!(lookups.len(), 2, "{lookups:#?}");
    let flaky = find(&lookups, "flaky.test", "A");
    assert_eq!(flaky["status"], "answered");
    assert_eq!(flaky["retries"], 1);
    let gone = find(&lookups, "gone.test", "A");
    assert_eq!(gone["status"], "timeout");
    assert_eq!(gone["retries"], 1);
}

/// Docker's embedded-DNS pattern built by hand in the client namespace: nat OUTPUT DNATs
/// 127.0.0.11:53 to 127.0.0.11:PORT, POSTROUTING SNATs the reply back to :53, and a resolver
/// (dnsmasq) listens on 127.0.0.11:PORT forwarding to the lab's server.
fn docker_style_resolver(lab: &DnsLab, port: u16) -> ChildGuard {
    docker_style_rules(lab, port);
    let guard = lab.client.spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.11",
        &format!("--port={port}"),
        "--server=10.53.0.1",
        "--pid-file=",
        "--log-facility=/dev/null",
    ]);
    wait_for("the docker-style resolver", 10, || {
        lab.dig(&["+short", "+tries=1", "+timeout=1", "@127.0.0.11", "a.test"])
            .contains("10.1.2.3")
    });
    guard
}

#[test]
fn docker_embedded_dns_is_one_lookup_with_its_upstream_leg() {
    let lab = DnsLab::new("dnsdk");
    let _resolver = docker_style_resolver(&lab, 41753);
    let dir = std::env::temp_dir().join(unique("dnsdk"));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("dk.pcap");
    let t = Trace::start(&[
        "--netns",
        &lab.client.name,
        "--json",
        "--count",
        "2",
        "--pcap",
        pcap.to_str().unwrap(),
    ]);
    assert!(lab
        .dig(&["+short", "@127.0.0.11", "www.a.test"])
        .contains("10.1.2.3"));
    assert!(lab
        .dig(&["+tcp", "@127.0.0.11", "nope.test"])
        .contains("NXDOMAIN"));
    let (lookups, summary) = t.json();
    // The resolver's own queries are inside the lookups they were made for, as their
    // upstream legs (each was a line of its own before: 4 lines).
    assert_eq!(lookups.len(), 2, "{lookups:#?}");
    let clients: Vec<&Value> = lookups
        .iter()
        .filter(|l| l["server"] == "127.0.0.11:53")
        .collect();
    assert_eq!(
        clients.len(),
        2,
        "one lookup per query to 127.0.0.11:53: {lookups:#?}"
    );
    for c in &clients {
        assert_eq!(c["status"], "answered", "{c}");
        assert_eq!(c["server_real"], "127.0.0.11:41753");
        assert_eq!(c["upstream"].as_array().unwrap().len(), 1, "{c}");
        assert_eq!(c["upstream"][0]["server"], "10.53.0.1:53");
        let leg = &c["upstream"][0]["hops"];
        assert_eq!(leg.as_array().unwrap().len(), 1, "{c}");
        assert_eq!(leg[0]["client"], c["upstream"][0]["from"]);
        assert_eq!(leg[0]["netns"], lab.client.name.as_str());
    }
    let www = clients.iter().find(|l| l["name"] == "www.a.test").unwrap();
    assert_eq!(www["transport"], "udp");
    assert_eq!(www["rcode"], "NOERROR");
    assert_eq!(www["upstream"][0]["rcode"], "NOERROR");
    let nx: Vec<&Value> = lookups
        .iter()
        .filter(|l| l["name"] == "nope.test")
        .collect();
    let nx_client = nx.iter().find(|l| l["server"] == "127.0.0.11:53").unwrap();
    assert_eq!(nx_client["transport"], "tcp");
    assert_eq!(nx_client["rcode"], "NXDOMAIN");
    assert_eq!(nx_client["upstream"][0]["rcode"], "NXDOMAIN");
    let aliases = summary["sources"][0]["aliases"].as_array().unwrap();
    assert!(aliases
        .iter()
        .any(|a| a["real"] == "127.0.0.11:41753" && a["transport"] == "udp"));
    // Read back from the pcap (no nat rules known there): the same two lookups.
    let (code, read, err) = read_lookups(&pcap);
    assert_eq!(code, Some(0), "{err}");
    let www: Vec<&Value> = read.iter().filter(|l| l["name"] == "www.a.test").collect();
    assert_eq!(www.len(), 1, "{read:#?}");
    assert_eq!(www[0]["server"], "127.0.0.11:53");
    assert_eq!(www[0]["upstream"][0]["server"], "10.53.0.1:53");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Only the nat rules of the Docker pattern (DNAT to PORT, SNAT back to :53).
fn docker_style_rules(lab: &DnsLab, port: u16) {
    let ns = lab.client.name.as_str();
    let to = format!("127.0.0.11:{port}");
    let p = port.to_string();
    for proto in ["udp", "tcp"] {
        let dnat = [
            "-A",
            "OUTPUT",
            "-d",
            "127.0.0.11/32",
            "-p",
            proto,
            "--dport",
            "53",
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ];
        let snat = [
            "-A",
            "POSTROUTING",
            "-s",
            "127.0.0.11/32",
            "-p",
            proto,
            "--sport",
            &p,
            "-j",
            "SNAT",
            "--to-source",
            ":53",
        ];
        for rule in [&dnat[..], &snat[..]] {
            let mut argv = vec!["ip", "netns", "exec", ns, "iptables", "-t", "nat"];
            argv.extend_from_slice(rule);
            sh(&argv);
        }
    }
}

#[test]
fn docker_resolver_down_is_seen_through_the_nat_rules() {
    // The rules are there, the resolver is not: queries go to 127.0.0.11:PORT and bounce
    // (ICMP port unreachable). Only the nat rules tell the capture about PORT.
    let lab = DnsLab::new("dnsdn");
    docker_style_rules(&lab, 41999);
    let t = Trace::start(&[
        "--netns",
        &lab.client.name,
        "--json",
        "--count",
        "1",
        "--timeout",
        "1s",
    ]);
    lab.dig(&["+tries=1", "+timeout=1", "@127.0.0.11", "down.test"]);
    let (lookups, summary) = t.json();
    assert_eq!(lookups.len(), 1, "{lookups:#?}");
    let l = &lookups[0];
    assert_eq!(l["name"], "down.test");
    // Nothing listens on PORT: the kernel bounces the query with ICMP port unreachable.
    assert_eq!(l["status"], "unreachable");
    assert_eq!(l["icmp"], "port unreachable");
    assert!(l["rcode"].is_null());
    assert_eq!(l["server"], "127.0.0.11:53");
    assert_eq!(l["server_real"], "127.0.0.11:41999");
    let aliases = summary["sources"][0]["aliases"].as_array().unwrap();
    assert_eq!(
        aliases.len(),
        2,
        "udp and tcp from the DNAT rules: {aliases:?}"
    );
}

/// A `nettool setup --isolated` lab, torn down on drop.
struct IsolatedLab(String);

impl Drop for IsolatedLab {
    fn drop(&mut self) {
        let _ = nettool(&["teardown", &self.0]);
    }
}

#[test]
fn lab_embedded_dns_pairs_through_its_dnat() {
    let name = unique("dnslab");
    nettool_ok(&[
        "setup",
        "--isolated",
        "--name",
        &name,
        "--no-userland-proxy",
        "--json",
    ]);
    let _lab = IsolatedLab(name.clone());
    let client = format!("{name}-client");
    let t = Trace::start(&["--netns", &client, "--json", "--count", "3"]);
    let dig = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &client, "dig"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(dig(&["+short", "@127.0.0.11", "app"]).contains("172.20.0.2"));
    assert!(dig(&["+short", "+tcp", "@127.0.0.11", "api"]).contains("172.20.0.2"));
    assert!(dig(&["@127.0.0.11", "no-such-name"]).contains("NXDOMAIN"));
    let (lookups, _) = t.json();
    assert_eq!(lookups.len(), 3, "{lookups:#?}");
    for l in &lookups {
        assert_eq!(l["server"], "127.0.0.11:53", "{l}");
        assert_eq!(l["status"], "answered", "{l}");
        let real = l["server_real"].as_str().expect("the DNAT target");
        assert!(
            real.starts_with("127.0.0.11:") && real != "127.0.0.11:53",
            "{l}"
        );
    }
    let app = find(&lookups, "app", "A");
    assert_eq!(app["answers"][0]["data"], "172.20.0.2");
    assert_eq!(app["transport"], "udp");
    let api = find(&lookups, "api", "A");
    assert_eq!(api["transport"], "tcp");
    assert_ne!(
        app["server_real"], api["server_real"],
        "udp and tcp ports differ"
    );
    assert_eq!(find(&lookups, "no-such-name", "A")["rcode"], "NXDOMAIN");
}

#[test]
fn real_docker_embedded_dns() {
    let d = common::docker::Dockerd::start("dns-dock");
    d.import_busybox("nt-busybox");
    d.docker(&["network", "create", "ntdns"]);
    // beta, the namespace watched, by a name of its own: a machine-wide Podman container
    // "beta" would make `container:beta` ambiguous.
    let beta = unique("beta");
    for c in ["alpha", beta.as_str()] {
        d.docker(&[
            "run",
            "-d",
            "--network",
            "ntdns",
            "--name",
            c,
            "nt-busybox",
            "sleep",
            "300",
        ]);
    }
    let pid = d
        .docker(&["inspect", "-f", "{{.State.Pid}}", &beta])
        .trim()
        .to_string();
    let in_beta = format!("container:{beta}");
    let t = Trace::start_env(
        &["--netns", &in_beta, "--json", "--count", "2"],
        &[("DOCKER_HOST", &d.host())],
    );
    let dig = |args: &[&str]| {
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-n", "dig"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Container names only: the embedded resolver answers them itself (nothing leaves).
    let a = dig(&["+short", "@127.0.0.11", "alpha"]);
    assert!(a.trim().starts_with("172."), "{a}");
    let b = dig(&["+short", "+tcp", "@127.0.0.11", &beta]);
    assert!(b.trim().starts_with("172."), "{b}");
    let (lookups, summary) = t.json();
    assert_eq!(lookups.len(), 2, "{lookups:#?}");
    for l in &lookups {
        assert_eq!(l["netns"], in_beta.as_str());
        assert_eq!(l["server"], "127.0.0.11:53", "{l}");
        assert_eq!(l["status"], "answered", "{l}");
        assert!(l["server_real"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.11:"));
    }
    assert_eq!(find(&lookups, "alpha", "A")["answers"][0]["data"], a.trim());
    assert_eq!(find(&lookups, &beta, "A")["transport"], "tcp");
    assert_eq!(
        summary["sources"][0]["aliases"].as_array().unwrap().len(),
        2,
        "udp and tcp ports from DOCKER_OUTPUT"
    );
}

#[test]
fn real_docker_embedded_dns_forwarding_is_one_lookup_across_namespaces() {
    // dockerd's host gets an uplink to a resolver namespace; the container is told to use it
    // (--dns), so the embedded resolver forwards from the container's namespace and Docker's
    // MASQUERADE rewrites the forward on the uplink.
    let d = common::docker::Dockerd::start("dns-dfw");
    let up = Upstream::new("dnsdfwu", &d.ns.name, true);
    d.import_busybox("nt-busybox");
    d.docker(&["network", "create", "ntdnsfw"]);
    for c in ["alpha", "beta"] {
        d.docker(&[
            "run",
            "-d",
            "--network",
            "ntdnsfw",
            "--dns",
            "10.53.0.1",
            "--name",
            c,
            "nt-busybox",
            "sleep",
            "300",
        ]);
    }
    let pid = d
        .docker(&["inspect", "-f", "{{.State.Pid}}", "beta"])
        .trim()
        .to_string();
    let dig = |args: &[&str]| {
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-n", "dig"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("the forward through Docker's MASQUERADE", 15, || {
        dig(&["+short", "+tries=1", "+timeout=2", "@127.0.0.11", "up.test"]).contains("10.1.2.3")
    });
    let name = format!("fw{}.test", std::process::id());
    let t = Trace::start_env(
        &[
            "--all-netns",
            "--json",
            "--duration",
            "5s",
            "--timeout",
            "2s",
        ],
        &[("DOCKER_HOST", &d.host())],
    );
    assert!(dig(&["+short", "@127.0.0.11", "alpha"])
        .trim()
        .starts_with("172."));
    assert!(dig(&["@127.0.0.11", &name]).contains("NXDOMAIN"));
    let (lookups, _) = t.json();
    let named = |n: &str| -> Vec<&Value> { lookups.iter().filter(|l| l["name"] == n).collect() };
    // A container name, answered by the resolver itself: once.
    let alpha = named("alpha");
    assert_eq!(alpha.len(), 1, "{alpha:#?}");
    assert_eq!(alpha[0]["netns"], "container:beta");
    // A forwarded name: the client's lookup once, the forward inside it as its upstream leg,
    // seen in the container, on the host's bridge, after the MASQUERADE and at the resolver
    // (five lines before).
    let fw = named(&name);
    assert_eq!(fw.len(), 1, "{fw:#?}");
    let l = fw[0];
    assert_eq!(l["netns"], "container:beta");
    assert_eq!(l["server"], "127.0.0.11:53");
    assert!(l["server_real"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.11:"));
    assert_eq!(l["rcode"], "NXDOMAIN");
    assert_eq!(l["upstream"].as_array().unwrap().len(), 1, "{l:#}");
    let leg = &l["upstream"][0];
    assert_eq!(leg["server"], "10.53.0.1:53");
    assert_eq!(leg["rcode"], "NXDOMAIN");
    let hops = leg["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 4, "{l:#}");
    assert_eq!(hops[0]["netns"], "container:beta");
    assert_eq!(hops[0]["client"], leg["from"]);
    assert_eq!(hops[1]["client"], leg["from"], "the bridge: {l:#}");
    assert_eq!(ip_of(&hops[2]["client"]), "10.53.0.254", "{l:#}");
    assert_eq!(hops[2]["interface"], up.host_if.as_str());
    assert_eq!(hops[3]["client"], hops[2]["client"]);
}

#[test]
fn query_to_a_closed_port_ends_unreachable() {
    let lab = DnsLab::new("dnsun");
    // Addresses the server has, where nothing listens on port 53 (dnsmasq binds 10.53.0.1
    // and fd53::1 only).
    lab.server.ip(&["addr", "add", "fd53::7/128", "dev", "lo"]);
    lab.client
        .ip(&["route", "add", "fd53::7/128", "via", "fd53::1"]);
    let t = Trace::start(&["--netns", &lab.client.name, "--json", "--count", "2"]);
    lab.dig(&["+tries=1", "+timeout=2", "@10.53.0.3", "closed.test"]);
    lab.dig(&["+tries=1", "+timeout=2", "@fd53::7", "closed6.test"]);
    let (lookups, _) = t.json();
    assert_eq!(lookups.len(), 2, "{lookups:#?}");
    let v4 = find(&lookups, "closed.test", "A");
    assert_eq!(v4["status"], "unreachable");
    assert_eq!(v4["icmp"], "port unreachable");
    assert_eq!(v4["server"], "10.53.0.3:53");
    assert!(v4["rcode"].is_null() && v4["latency_ms"].as_f64().is_some());
    let v6 = find(&lookups, "closed6.test", "A");
    assert_eq!(v6["status"], "unreachable");
    assert_eq!(v6["icmp"], "port unreachable");
    assert_eq!(v6["server"], "[fd53::7]:53");
}

#[test]
fn pcap_output_never_follows_a_planted_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let ns = TestNs::new("dnssym");
    let dir = std::env::temp_dir().join(unique("dnssym"));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, b"root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The unprivileged user's own directory (no sticky bit: the kernel's protected_symlinks
    // does not apply there) holds a link named like the capture file.
    let evil = dir.join("evil");
    std::fs::create_dir(&evil).unwrap();
    std::os::unix::fs::chown(&evil, Some(65534), Some(65534)).unwrap();
    let link = evil.join("dns.pcap");
    let st = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "ln",
            "-s",
        ])
        .arg(&secret)
        .arg(&link)
        .status()
        .unwrap();
    assert!(st.success());
    // `timeout`: a capture that started anyway ends instead of waiting for a query.
    let out = Command::new("timeout")
        .args([
            "5",
            env!("CARGO_BIN_EXE_nettool"),
            "dns",
            "--netns",
            &ns.name,
            "--pcap",
        ])
        .arg(&link)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&secret).unwrap(), b"root only\n");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `nettool dns --read FILE --json --no-summary`: (exit code, lookups, stderr).
fn read_lookups(file: &std::path::Path) -> (Option<i32>, Vec<Value>, String) {
    let out = nettool(&[
        "dns",
        "--read",
        file.to_str().unwrap(),
        "--json",
        "--no-summary",
    ]);
    let lookups = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.code(),
        lookups,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn read_a_torn_pcap_and_microsecond_pcapng_like_tshark() {
    let lab = DnsLab::new("dnstorn");
    let dir = std::env::temp_dir().join(unique("torn"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dns.pcap");
    let t = Trace::start(&[
        "--netns",
        &lab.client.name,
        "--count",
        "2",
        "--pcap",
        file.to_str().unwrap(),
    ]);
    lab.dig(&["+short", "@10.53.0.1", "a.test"]);
    lab.dig(&["+short", "@10.53.0.1", "b.test"]);
    t.output();
    let (code, whole, _) = read_lookups(&file);
    assert_eq!((code, whole.len()), (Some(0), 2), "{whole:?}");

    // The last record cut short, as a capture killed mid-write leaves it.
    let bytes = std::fs::read(&file).unwrap();
    let torn = dir.join("torn.pcap");
    std::fs::write(&torn, &bytes[..bytes.len() - 5]).unwrap();
    let ts = Command::new("tshark")
        .arg("-r")
        .arg(&torn)
        .output()
        .unwrap();
    let tshark_frames = String::from_utf8_lossy(&ts.stdout).lines().count();
    assert_eq!(tshark_frames, 3, "tshark reads the three whole records");
    let (code, lookups, err) = read_lookups(&torn);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!("record {} is torn", tshark_frames + 1)),
        "the warning names the torn record: {err}"
    );
    assert_eq!(find(&lookups, "a.test", "A")["status"], whole[0]["status"]);
    assert_eq!(
        lookups.len(),
        2,
        "b.test's query is whole (its answer torn): {lookups:?}"
    );

    // The same capture as microsecond pcapng, as editcap and `tshark -F pcapng` write it.
    for (tool, args) in [
        ("editcap", vec!["-F", "pcapng"]),
        ("tshark", vec!["-F", "pcapng", "-r"]),
    ] {
        let ng = dir.join(format!("{tool}.pcapng"));
        let mut c = Command::new(tool);
        c.args(&args);
        if tool == "editcap" {
            c.arg(&file).arg(&ng);
        } else {
            c.arg(&file).arg("-w").arg(&ng);
        }
        assert!(c.output().unwrap().status.success(), "{tool}");
        let (code, ng_lookups, err) = read_lookups(&ng);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(ng_lookups.len(), 2);
        for (a, b) in whole.iter().zip(&ng_lookups) {
            assert_eq!(a["time"], b["time"], "{tool}: the same times as the pcap");
            assert_eq!(a["latency_ms"], b["latency_ms"], "{tool}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
