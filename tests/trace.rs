//! `nettool trace` in namespaces the tests build: a client, a host with a bridge and a
//! Docker-like DNAT (iptables-nft: nat PREROUTING -> DOCKER -> DNAT, filter FORWARD ->
//! DOCKER-USER), a container with socat on port 80. Each test breaks one thing the way users
//! do, traces one connection, and checks the rule or kernel reason named; and that nothing of
//! the tracer is left behind (nft tables, tracefs instance, journal).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{in_ns, sh, sysctl, unique_ifname, wait_for, ChildGuard, TestNs};
use serde_json::Value;

/// One trace at a time: kfree_skb is machine-wide, and a tracer cleans up dead tracers.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Topo {
    client: TestNs,
    host: TestNs,
    ctr: TestNs,
    _server: ChildGuard,
    br: String,
    hk: String,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// client 10.77.1.2 / fd77:1::2 -- h0 host br0 10.77.2.1 -- eth0 ctr 10.77.2.2 / fd77:2::2.
/// Host port 8080 (v4 and v6) is DNATed to ctr:80 (socat), 8081 to ctr:81 (nothing listens).
fn topo() -> Topo {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let client = TestNs::new("trc-client");
    let host = TestNs::new("trc-host");
    let ctr = TestNs::new("trc-ctr");
    // Before any link exists: link-local addresses skip DAD too, so IPv6 works at once.
    for ns in [&client, &host, &ctr] {
        sysctl(ns, "net.ipv6.conf.all.accept_dad=0");
        sysctl(ns, "net.ipv6.conf.default.accept_dad=0");
    }
    let (c0, h0) = (unique_ifname("trc"), unique_ifname("trh"));
    common::veth(&c0, &client, &h0, &host);
    let (hk, eth) = (unique_ifname("trk"), unique_ifname("tre"));
    common::veth(&hk, &host, &eth, &ctr);
    let br = unique_ifname("trb");
    host.ip(&["link", "add", &br, "type", "bridge"]);
    host.ip(&["link", "set", &hk, "master", &br]);
    host.ip(&["link", "set", &br, "up"]);
    client.ip(&["addr", "add", "10.77.1.2/24", "dev", &c0]);
    client.ip(&["addr", "add", "fd77:1::2/64", "dev", &c0, "nodad"]);
    client.ip(&["route", "add", "default", "via", "10.77.1.1"]);
    client.ip(&["-6", "route", "add", "default", "via", "fd77:1::1"]);
    host.ip(&["addr", "add", "10.77.1.1/24", "dev", &h0]);
    host.ip(&["addr", "add", "fd77:1::1/64", "dev", &h0, "nodad"]);
    host.ip(&["addr", "add", "10.77.2.1/24", "dev", &br]);
    host.ip(&["addr", "add", "fd77:2::1/64", "dev", &br, "nodad"]);
    ctr.ip(&["link", "set", &eth, "name", "eth0"]);
    ctr.ip(&["addr", "add", "10.77.2.2/24", "dev", "eth0"]);
    ctr.ip(&["addr", "add", "fd77:2::2/64", "dev", "eth0", "nodad"]);
    ctr.ip(&["route", "add", "default", "via", "10.77.2.1"]);
    ctr.ip(&["-6", "route", "add", "default", "via", "fd77:2::1"]);
    sysctl(&host, "net.ipv4.ip_forward=1");
    sysctl(&host, "net.ipv6.conf.all.forwarding=1");
    for (ipt, to80, to81) in [
        ("iptables", "10.77.2.2:80", "10.77.2.2:81"),
        ("ip6tables", "[fd77:2::2]:80", "[fd77:2::2]:81"),
    ] {
        let rules = format!(
            "*nat\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
             -A DOCKER ! -i {br} -p tcp --dport 8080 -j DNAT --to-destination {to80}\n\
             -A DOCKER ! -i {br} -p tcp --dport 8081 -j DNAT --to-destination {to81}\nCOMMIT\n\
             *filter\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\nCOMMIT\n"
        );
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &host.name,
                &format!("{ipt}-restore"),
                "--noflush",
            ])
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
        assert!(child.wait().unwrap().success(), "{ipt}-restore failed");
    }
    let server = ctr.spawn(&[
        "socat",
        "TCP6-LISTEN:80,fork,reuseaddr,ipv6only=0",
        // Read the request first: a child that answers and exits at once makes socat write
        // the request into a closed pipe (EPIPE) and close with no answer (6 of 20 curls).
        "SYSTEM:read l; echo hello",
    ]);
    wait_for("socat listening", 5, || {
        in_ns(&ctr, &["ss", "-tln"]).contains(":80 ")
    });
    let topo = Topo {
        client,
        host,
        ctr,
        _server: server,
        br,
        hk,
        _serial: serial,
    };
    // The healthy path works both ways before a test breaks it.
    for url in ["http://10.77.1.1:8080/", "http://[fd77:1::1]:8080/"] {
        wait_for(url, 10, || curl(&topo, &["-g", url]));
    }
    topo
}

/// Our nft tables in a namespace.
fn trace_tables(ns: &TestNs) -> Vec<String> {
    in_ns(ns, &["nft", "list", "tables"])
        .lines()
        .filter(|l| l.contains("nettool_trace"))
        .map(str::to_string)
        .collect()
}

fn instance_of(pid: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/sys/kernel/tracing/instances/nettool-trace-{pid}"))
}

/// The tracer of `pid` records kernel drops: its instance exists from mkdir on, with every
/// file, but kfree_skb is enabled last. Traffic sent before that has no drop reason.
fn drops_enabled(pid: u32) -> bool {
    std::fs::read_to_string(instance_of(pid).join("events/skb/kfree_skb/enable"))
        .is_ok_and(|v| v.trim() == "1")
}

fn start_trace(topo: &Topo, filter: &[&str]) -> Child {
    let mut args: Vec<String> = filter.iter().map(|s| s.to_string()).collect();
    for ns in [&topo.host, &topo.ctr] {
        args.push("--netns".into());
        args.push(ns.name.clone());
    }
    args.extend(["--json".into(), "--duration".into(), "20s".into()]);
    let child = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .arg("trace")
        .args(&args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nettool trace");
    let pid = child.id();
    wait_for("trace tables and tracefs instance", 15, || {
        !trace_tables(&topo.host).is_empty()
            && !trace_tables(&topo.ctr).is_empty()
            && drops_enabled(pid)
    });
    child
}

/// Trace `filter` while `traffic` runs; SIGINT the tracer, return its JSON packets.
fn trace_around(topo: &Topo, filter: &[&str], traffic: impl FnOnce()) -> Vec<Value> {
    let child = start_trace(topo, filter);
    let pid = child.id();
    traffic();
    std::thread::sleep(Duration::from_millis(600));
    sh(&["kill", "-INT", &pid.to_string()]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "trace failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing left behind.
    assert!(trace_tables(&topo.host).is_empty(), "table left in host");
    assert!(trace_tables(&topo.ctr).is_empty(), "table left in ctr");
    assert!(!instance_of(pid).exists(), "tracefs instance left");
    assert!(!std::path::Path::new(&format!("/run/nettool-trace/{pid}.json")).exists());
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {e}: {l}")))
        .collect();
    assert!(
        lines.last().is_some_and(|l| l.get("summary").is_some()),
        "no summary line: {stdout}"
    );
    eprintln!("{}", lines.last().unwrap());
    lines
        .into_iter()
        .filter(|l| l.get("summary").is_none())
        .collect()
}

fn curl(topo: &Topo, args: &[&str]) -> bool {
    let mut a = vec![
        "ip",
        "netns",
        "exec",
        &topo.client.name,
        "curl",
        "-s",
        "--http0.9",
        "--max-time",
        "2",
    ];
    a.extend_from_slice(args);
    let out = Command::new(a[0]).args(&a[1..]).output().unwrap();
    eprintln!(
        "curl {args:?}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    out.status.success()
}

fn ns_of<'a>(pkts: &'a [Value], ns: &TestNs) -> Vec<&'a Value> {
    pkts.iter()
        .filter(|p| p["netns"] == ns.name.as_str())
        .collect()
}

fn show(pkts: &[Value]) -> String {
    pkts.iter()
        .map(|p| serde_json::to_string_pretty(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn healthy(v6: bool) {
    let topo = topo();
    let url = if v6 {
        "http://[fd77:1::1]:8080/"
    } else {
        "http://10.77.1.1:8080/"
    };
    let (dst_host, dst_ctr) = if v6 {
        ("[fd77:1::1]:8080", "[fd77:2::2]:80")
    } else {
        ("10.77.1.1:8080", "10.77.2.2:80")
    };
    let mut ok = false;
    let pkts = trace_around(&topo, &["tcp:8080"], || ok = curl(&topo, &["-g", url]));
    assert!(ok, "the healthy path must work");
    let all = show(&pkts);
    // In the host: the SYN meets Docker's DNAT rule and leaves towards the bridge.
    let syn_host = ns_of(&pkts, &topo.host)
        .into_iter()
        .find(|p| p["flags"] == "SYN" && p["dst"] == dst_host)
        .unwrap_or_else(|| panic!("no SYN in the host: {all}"));
    let dnat = syn_host["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["chain"] == "DOCKER")
        .unwrap_or_else(|| panic!("no DOCKER hop: {all}"));
    assert_eq!(dnat["engine"], "docker");
    // The DNAT from the flow's conntrack entry, on the rule that set it up.
    assert_eq!(dnat["nat"]["kind"], "dnat", "{all}");
    assert!(
        dnat["nat"]["after"].as_str().unwrap().ends_with(dst_ctr),
        "{all}"
    );
    assert_eq!(syn_host["conntrack"]["direction"], "original", "{all}");
    // iptables wrote it: the hop carries its iptables-save line (nft cannot print an ip6 DNAT
    // target of iptables-nft when listing the whole rule set).
    assert!(
        dnat["iptables"]
            .as_str()
            .unwrap()
            .contains("-j DNAT --to-destination"),
        "{dnat}"
    );
    assert_eq!(syn_host["end"], "sent", "{all}");
    assert_eq!(syn_host["oif"], topo.br.as_str(), "{all}");
    // In the container: delivered to socat's socket on port 80.
    let syn_ctr = ns_of(&pkts, &topo.ctr)
        .into_iter()
        .find(|p| p["flags"] == "SYN" && p["dst"] == dst_ctr)
        .unwrap_or_else(|| panic!("no SYN in the container: {all}"));
    assert_eq!(syn_ctr["end"], "delivered", "{all}");
    let procs = syn_ctr["receiver"]["processes"].to_string();
    assert!(procs.contains("socat"), "{all}");
    let _ = &topo.hk;
}

#[test]
fn healthy_flow_ipv4_is_traced_through_dnat_to_the_socket() {
    healthy(false);
}

#[test]
fn healthy_flow_ipv6_is_traced_through_dnat_to_the_socket() {
    healthy(true);
}

fn dropped_by_rule(pkts: &[Value], chain_part: &str) -> Value {
    let all = show(pkts);
    pkts.iter()
        .find(|p| p["end"] == "dropped_by_rule")
        .cloned()
        .filter(|p| p["chain"].as_str().unwrap_or("").contains(chain_part))
        .unwrap_or_else(|| panic!("no packet dropped in {chain_part}: {all}"))
}

#[test]
fn a_drop_in_docker_user_names_the_rule_and_the_user() {
    let topo = topo();
    for ipt in ["iptables", "ip6tables"] {
        in_ns(
            &topo.host,
            &[
                ipt,
                "-A",
                "DOCKER-USER",
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "DROP",
            ],
        );
    }
    for (url, fam) in [
        ("http://10.77.1.1:8080/", "ip"),
        ("http://[fd77:1::1]:8080/", "ip6"),
    ] {
        let pkts = trace_around(&topo, &["tcp:8080"], || {
            assert!(!curl(&topo, &["-g", url]));
        });
        let d = dropped_by_rule(&pkts, &format!("{fam} filter DOCKER-USER"));
        assert_eq!(d["engine"], "user");
        assert_eq!(d["netns"], topo.host.name.as_str());
        assert!(d["rule"].as_str().unwrap().contains("drop"), "{d}");
        assert_eq!(
            d["iptables"], "-A DOCKER-USER -p tcp -m tcp --dport 80 -j DROP",
            "{d}"
        );
    }
}

#[test]
fn a_drop_in_the_raw_table_names_the_rule() {
    let topo = topo();
    for ipt in ["iptables", "ip6tables"] {
        in_ns(
            &topo.host,
            &[
                ipt,
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                "8080",
                "-j",
                "DROP",
            ],
        );
    }
    for (url, fam) in [
        ("http://10.77.1.1:8080/", "ip"),
        ("http://[fd77:1::1]:8080/", "ip6"),
    ] {
        let pkts = trace_around(&topo, &["tcp:8080"], || {
            assert!(!curl(&topo, &["-g", url]));
        });
        let d = dropped_by_rule(&pkts, &format!("{fam} raw PREROUTING"));
        assert_eq!(d["hops"][0]["hook"], "prerouting");
        assert!(d["hops"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["chain"] != "DOCKER"));
    }
}

fn kernel_drop<'a>(pkts: &'a [Value], ns: &TestNs, reason: &str) -> &'a Value {
    let all = show(pkts);
    ns_of(pkts, ns)
        .into_iter()
        .find(|p| p["end"] == "dropped_by_kernel" && p["reason"] == reason)
        .unwrap_or_else(|| panic!("no {reason} drop in {}: {all}", ns.name))
}

#[test]
fn strict_rp_filter_is_named_by_the_kernel() {
    let topo = topo();
    // The client sends from an address the host routes elsewhere: strict rp_filter drops it.
    topo.client
        .ip(&["addr", "add", "10.77.9.2/32", "dev", "lo"]);
    // ARP from the interface's own address, so only the TCP packets carry the odd source.
    sysctl(&topo.client, "net.ipv4.conf.all.arp_announce=2");
    // The host routes that source through the bridge, not through where it comes in.
    topo.host
        .ip(&["route", "add", "10.77.9.0/24", "dev", &topo.br]);
    sysctl(&topo.host, "net.ipv4.conf.all.rp_filter=1");
    sysctl(&topo.host, "net.ipv4.conf.default.rp_filter=1");
    for l in in_ns(&topo.host, &["ls", "/proc/sys/net/ipv4/conf"]).split_whitespace() {
        sysctl(&topo.host, &format!("net.ipv4.conf.{l}.rp_filter=1"));
    }
    let pkts = trace_around(&topo, &["tcp:8080"], || {
        assert!(!curl(
            &topo,
            &["--interface", "10.77.9.2", "http://10.77.1.1:8080/"]
        ));
    });
    let d = kernel_drop(&pkts, &topo.host, "IP_RPFILTER");
    assert_eq!(
        d["src"].as_str().unwrap().split(':').next(),
        Some("10.77.9.2")
    );
}

#[test]
fn no_listener_is_no_socket_in_the_container_and_a_reset() {
    let topo = topo();
    for url in ["http://10.77.1.1:8081/", "http://[fd77:1::1]:8081/"] {
        let pkts = trace_around(&topo, &["tcp:8081"], || {
            assert!(!curl(&topo, &["-g", url]));
        });
        let d = kernel_drop(&pkts, &topo.ctr, "NO_SOCKET");
        assert_eq!(d["flags"], "SYN", "{d}");
        // Joined by the reset the kernel sent about that very skb, not by time alone.
        assert_eq!(d["kernel_drop"]["answer"]["what"], "TCP reset", "{d}");
        assert!(
            d["join"].as_str().unwrap().contains("the same skb address"),
            "{d}"
        );
        let all = show(&pkts);
        assert!(
            ns_of(&pkts, &topo.ctr)
                .iter()
                .any(|p| p["flags"].as_str().unwrap_or("").contains("RST")),
            "no reset traced: {all}"
        );
    }
}

#[test]
fn forwarding_off_is_named_by_the_kernel() {
    let topo = topo();
    sysctl(&topo.host, "net.ipv4.ip_forward=0");
    let pkts = trace_around(&topo, &["tcp:8080"], || {
        assert!(!curl(&topo, &["http://10.77.1.1:8080/"]));
    });
    let all = show(&pkts);
    let d = ns_of(&pkts, &topo.host)
        .into_iter()
        .find(|p| p["end"] == "dropped_by_kernel")
        .unwrap_or_else(|| panic!("no kernel drop in the host: {all}"));
    assert_eq!(d["flags"], "SYN", "{all}");
    assert!(
        ["IP_INNOROUTES", "IP_INADDRERRORS"].contains(&d["reason"].as_str().unwrap()),
        "{all}"
    );
}

#[test]
fn an_mtu_too_small_with_df_is_pkt_too_big() {
    let topo = topo();
    // The bridge port (and so the bridge) is smaller than what the client sends.
    topo.host.ip(&["link", "set", &topo.hk, "mtu", "1280"]);
    let big = "x".repeat(4000);
    let pkts = trace_around(&topo, &["tcp:8080"], || {
        let _ = curl(&topo, &["--data", &big, "http://10.77.1.1:8080/"]);
    });
    let d = kernel_drop(&pkts, &topo.host, "PKT_TOO_BIG");
    // Joined by the ICMP "fragmentation needed" sent about that very skb.
    assert_eq!(
        d["kernel_drop"]["answer"]["what"], "ICMP type 3 code 4",
        "{d}"
    );
    assert!(
        d["join"].as_str().unwrap().contains("the same skb address"),
        "{d}"
    );
    assert_eq!(d["dont_fragment"], true);
    assert!(d["length"].as_u64().unwrap() > 1280, "{d}");
}

#[test]
fn a_missing_route_back_drops_the_answer_in_the_host() {
    let topo = topo();
    // The client's source is routed nowhere by the host (loose rp_filter lets the SYN in).
    topo.client
        .ip(&["addr", "add", "10.77.9.2/32", "dev", "lo"]);
    // ARP from the interface's own address, so only the TCP packets carry the odd source.
    sysctl(&topo.client, "net.ipv4.conf.all.arp_announce=2");
    for l in in_ns(&topo.host, &["ls", "/proc/sys/net/ipv4/conf"]).split_whitespace() {
        sysctl(&topo.host, &format!("net.ipv4.conf.{l}.rp_filter=0"));
    }
    let pkts = trace_around(&topo, &["tcp:8080"], || {
        assert!(!curl(
            &topo,
            &["--interface", "10.77.9.2", "http://10.77.1.1:8080/"]
        ));
    });
    let all = show(&pkts);
    // The SYN reached the container; its SYN-ACK died in the host, un-DNATed, with no route.
    assert!(
        ns_of(&pkts, &topo.ctr)
            .iter()
            .any(|p| p["flags"] == "SYN" && p["end"] == "delivered"),
        "{all}"
    );
    let d = ns_of(&pkts, &topo.host)
        .into_iter()
        .find(|p| p["flags"] == "SYN|ACK" && p["end"] == "dropped_by_kernel")
        .unwrap_or_else(|| panic!("no dropped SYN-ACK in the host: {all}"));
    assert_eq!(d["reason"], "IP_INNOROUTES", "{all}");
    // ip_error answered that very skb with "network unreachable" to its sender.
    assert_eq!(
        d["kernel_drop"]["answer"]["what"], "ICMP type 3 code 0",
        "{all}"
    );
}

#[test]
fn a_sigkilled_tracer_is_cleaned_up_by_the_next_run() {
    let topo = topo();
    let mut child = start_trace(&topo, &["tcp:8080"]);
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !trace_tables(&topo.host).is_empty(),
        "the kill should leave the table"
    );
    assert!(instance_of(pid).exists());
    let journal = format!("/run/nettool-trace/{pid}.json");
    assert!(std::path::Path::new(&journal).exists());
    // The next run removes it before it starts.
    let pkts = trace_around(&topo, &["tcp:8080"], || {
        assert!(curl(&topo, &["http://10.77.1.1:8080/"]));
    });
    assert!(!pkts.is_empty());
    assert!(!instance_of(pid).exists(), "dead tracer's instance left");
    assert!(!std::path::Path::new(&journal).exists());
    assert!(trace_tables(&topo.host).is_empty());
}

#[test]
fn a_lab_container_is_named_and_its_rules_are_the_labs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, _state) = common::TestLab::isolated("trc-lab", &[]);
    let web = lab.ns("web");
    let child = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args([
            "trace", "tcp:8080", "--netns", &lab.name, "--netns", &web, "--json",
        ])
        .args(["--duration", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for("trace started", 15, || drops_enabled(pid));
    std::thread::sleep(Duration::from_millis(300));
    // The lab host itself asks its published port (DNAT in OUTPUT, as Docker does).
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.name, "curl", "-s", "--max-time", "3"])
        .arg("http://172.19.0.1:8080/")
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    sh(&["kill", "-INT", &pid.to_string()]);
    let out_trace = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out_trace.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab curl failed: {}",
        common::text(&out)
    );
    let pkts: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l.get("summary").is_none())
        .collect();
    let all = show(&pkts);
    let in_web = pkts
        .iter()
        .find(|p| p["netns"] == web.as_str() && p["flags"] == "SYN")
        .unwrap_or_else(|| panic!("no SYN in web: {all}"));
    assert_eq!(in_web["container"], "web (lab)", "{all}");
    assert_eq!(in_web["end"], "delivered", "{all}");
    // The lab's DNAT is the lab's.
    assert!(
        pkts.iter()
            .flat_map(|p| p["hops"].as_array().unwrap().iter())
            .any(|h| h["engine"] == "nettool-lab"
                && h["verdict"] == "accept"
                && h["iptables"].as_str().unwrap_or("").contains("DNAT")),
        "{all}"
    );
    // Its rewrite, from the lab host's conntrack entry, on that rule in OUTPUT (the host asked
    // its own published port).
    let nat = pkts
        .iter()
        .flat_map(|p| p["hops"].as_array().unwrap().iter())
        .find(|h| h["engine"] == "nettool-lab" && h["nat"]["kind"] == "dnat")
        .unwrap_or_else(|| panic!("no DNAT from conntrack on the lab's rule: {all}"));
    assert_eq!(nat["nat"]["hook"], "output", "{all}");
    assert!(
        nat["nat"]["conntrack"]["original"]
            .as_str()
            .unwrap()
            .ends_with("> 172.19.0.1:8080"),
        "{all}"
    );
    assert!(
        nat["nat"]["conntrack"]["reply"]
            .as_str()
            .unwrap()
            .starts_with("tcp 172.19.0.2:80 > "),
        "{all}"
    );
}

/// Native nftables rule sets (no iptables-nft table): a lab built with `--backend nftables`
/// and a user's own table. The lab host asks its published port: the lab's DNAT (native nft,
/// in OUTPUT) is traced as the lab's, and a user's drop in an output chain after it is traced
/// to that rule as nft lists it, with the user as its engine.
#[test]
fn a_drop_in_a_native_nftables_rule_set_names_the_rule() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, _state) =
        common::TestLab::isolated("trc-nft", &["--backend", "nftables", "--no-userland-proxy"]);
    let web = lab.ns("web");
    let table = format!("nettool_{}", lab.name.replace('-', "_"));
    for cmd in [
        "add table ip nt_user_test",
        "add chain ip nt_user_test out { type filter hook output priority 0 ; }",
        "add rule ip nt_user_test out tcp dport 80 drop",
    ] {
        let mut argv = vec!["nft"];
        argv.extend(cmd.split(' '));
        in_ns(&lab.name, &argv);
    }
    let child = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args([
            "trace", "tcp:8080", "--netns", &lab.name, "--netns", &web, "--json",
        ])
        .args(["--duration", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for("trace started", 15, || drops_enabled(pid));
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.name, "curl", "-s", "--max-time", "2"])
        .arg("http://172.19.0.1:8080/")
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    sh(&["kill", "-INT", &pid.to_string()]);
    let out_trace = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out_trace.stdout).into_owned();
    assert!(!out.status.success(), "the drop let curl through");
    let pkts: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l.get("summary").is_none())
        .collect();
    let all = show(&pkts);
    assert!(
        !in_ns(&lab.name, &["nft", "list", "tables"]).contains("ip filter"),
        "an iptables-nft table in a native nftables lab"
    );
    let hops: Vec<&Value> = pkts
        .iter()
        .flat_map(|p| p["hops"].as_array().unwrap().iter())
        .collect();
    let dnat = hops
        .iter()
        .find(|h| h["table"] == table.as_str() && h["rule"].as_str().unwrap_or("").contains("dnat"))
        .unwrap_or_else(|| panic!("no hop on the lab's native DNAT: {all}"));
    assert_eq!(dnat["iptables_nft"], false, "{all}");
    assert_eq!(dnat["engine"], "nettool-lab", "{all}");
    let drop = hops
        .iter()
        .find(|h| h["verdict"] == "drop")
        .unwrap_or_else(|| panic!("no drop hop: {all}"));
    assert_eq!(drop["table"], "nt_user_test", "{all}");
    assert_eq!(drop["chain"], "out", "{all}");
    assert_eq!(drop["iptables_nft"], false, "{all}");
    assert_eq!(drop["engine"], "user", "{all}");
    assert!(
        drop["rule"]
            .as_str()
            .unwrap_or("")
            .contains("tcp dport 80 drop"),
        "{all}"
    );
}

/// The tracer's journal is not a lab: `nettool labs` listed a half-built lab called "trace"
/// while its journal folder lived under /run/nettool.
#[test]
fn a_trace_journal_is_not_taken_for_a_lab() {
    // A folder an older nettool left there is not this run's doing.
    let old = std::path::Path::new("/run/nettool/trace");
    let was_there = old.exists();
    let ns = common::TestNs::new("trjournal");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(["trace", "--netns", &ns.name, "--duration", "300ms", "udp:1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labs = std::process::Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(["labs", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&labs.stdout).unwrap_or_default();
    let names: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if !was_there {
        assert!(!names.contains(&"trace".to_string()), "{names:?}");
        assert!(!old.exists(), "the journal went under /run/nettool");
    }
}

/// `doctor --probe` runs the trace around its probe: a DROP in DOCKER-USER is named in the
/// probe's evidence and in the one-line diagnosis, with the rule as iptables wrote it.
#[test]
fn doctor_probe_names_the_rule_that_dropped_it() {
    let topo = topo();
    in_ns(
        &topo.host,
        &[
            "iptables",
            "-A",
            "DOCKER-USER",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DROP",
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(["doctor", "8080", "--netns", &topo.host.name])
        .args(["--from", &format!("outside:{}", topo.client.name)])
        .args(["--probe", "--json"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let probe = &v["probe"];
    assert_eq!(probe["ok"], false, "{probe:#}");
    let d = &probe["trace"]["drop"];
    assert_eq!(
        d["rule"], "-A DOCKER-USER -p tcp -m tcp --dport 80 -j DROP",
        "{probe:#}"
    );
    assert_eq!(d["chain"], "ip filter DOCKER-USER", "{probe:#}");
    assert_eq!(d["engine"], "user", "{probe:#}");
    assert_eq!(d["netns"], topo.host.name.as_str(), "{probe:#}");
    // Nothing of the trace is left in any namespace it traced.
    for ns in [&topo.client, &topo.host, &topo.ctr] {
        assert!(trace_tables(ns).is_empty(), "table left in {}", ns.name);
    }
    // The text report says it under the probe line.
    let out = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(["doctor", "8080", "--netns", &topo.host.name])
        .args(["--from", &format!("outside:{}", topo.client.name)])
        .arg("--probe")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("trace:")
            && l.contains("by a rule in ip filter DOCKER-USER: -A DOCKER-USER -p tcp -m tcp --dport 80 -j DROP")),
        "{text}"
    );
}

/// The mount point of tracefs in the mount namespace of `sh` run through unshare.
const TRACEFS_MOUNTED: &str =
    "awk '$5 == \"/sys/kernel/tracing\" {n++} END {print n+0}' /proc/self/mountinfo";

/// A tracefs that trace had to mount is unmounted when it ends, and by the next run after a
/// SIGKILL. Run in a private mount namespace with tracefs unmounted, so the test's own
/// namespace is not touched.
#[test]
fn a_tracefs_mount_it_made_is_undone_even_after_a_sigkill() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = TestNs::new("trmount");
    let bin = env!("CARGO_BIN_EXE_nettool");
    let script = format!(
        r#"set -e
umount /sys/kernel/tracing
echo "before: $({TRACEFS_MOUNTED})"
{bin} trace --netns {ns} --duration 300ms udp:1 >/dev/null
echo "after a clean run: $({TRACEFS_MOUNTED})"
{bin} trace --netns {ns} udp:1 >/dev/null 2>&1 &
pid=$!
for i in $(seq 1 100); do grep -qx 1 /sys/kernel/tracing/instances/nettool-trace-$pid/events/skb/kfree_skb/enable 2>/dev/null && break; sleep 0.1; done
kill -9 $pid; wait $pid || true
echo "after SIGKILL: $({TRACEFS_MOUNTED})"
grep -q tracefs_mount /run/nettool-trace/$pid.json && echo "journaled"
{bin} trace --cleanup
echo "after cleanup: $({TRACEFS_MOUNTED})"
[ ! -e /run/nettool-trace/$pid.json ] && echo "journal gone"
"#,
        ns = ns.name
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    for want in [
        "before: 0",
        "after a clean run: 0",
        "after SIGKILL: 1",
        "journaled",
        "after cleanup: 0",
        "journal gone",
    ] {
        assert!(text.contains(want), "no '{want}' in: {text}");
    }
    // The test's own mount namespace still has its tracefs.
    assert!(std::path::Path::new("/sys/kernel/tracing/instances").is_dir());
}

/// A real dockerd: `docker run -p 8080:80` traced from the port alone. The container's
/// namespace is added because the port is published to it; the SYN is followed through
/// Docker's DNAT to busybox httpd's socket in the web container; then a DROP in DOCKER-USER is
/// named.
#[test]
fn real_docker_published_port_is_traced_to_the_container_and_a_docker_user_drop() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = common::docker::Dockerd::start("trc-dock");
    // A name of its own: a machine-wide Podman container "web" would be named by it too.
    let web = common::unique("web");
    d.run_busybox_web(&web, "8080:80");
    // An uplink: a client namespace reaching the Docker host as another machine would.
    let client = TestNs::new("trc-dcl");
    let (c0, h0) = (unique_ifname("tdc"), unique_ifname("tdh"));
    common::veth(&c0, &client, &h0, &d.ns);
    client.ip(&["addr", "add", "10.78.1.2/24", "dev", &c0]);
    client.ip(&["route", "add", "default", "via", "10.78.1.1"]);
    d.ns.ip(&["addr", "add", "10.78.1.1/24", "dev", &h0]);
    let curl = || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.name,
                "curl",
                "-s",
                "-o",
                "/dev/null",
            ])
            .args(["--max-time", "2", "http://10.78.1.1:8080/"])
            .status()
            .unwrap()
            .success()
    };
    wait_for("httpd answers through the published port", 20, curl);
    let trace = |expect_ok: bool| -> Vec<Value> {
        let child = Command::new(env!("CARGO_BIN_EXE_nettool"))
            .args(["trace", "tcp:8080", "--netns", &d.ns.name, "--json"])
            .args(["--duration", "20s"])
            .env("DOCKER_HOST", d.host())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_for("trace started", 15, || drops_enabled(pid));
        assert_eq!(curl(), expect_ok);
        std::thread::sleep(Duration::from_millis(600));
        sh(&["kill", "-INT", &pid.to_string()]);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}{}", common::text(&out));
        assert!(
            trace_tables(&d.ns).is_empty(),
            "table left in the docker host"
        );
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let summary = lines.last().unwrap()["summary"].clone();
        assert!(
            summary["notes"]
                .to_string()
                .contains(&format!("port 8080 is published to container {web}")),
            "{summary}"
        );
        lines
            .into_iter()
            .filter(|l| l.get("summary").is_none())
            .collect()
    };
    let pkts = trace(true);
    let all = show(&pkts);
    let syn_host = pkts
        .iter()
        .find(|p| p["netns"] == d.ns.name.as_str() && p["flags"] == "SYN")
        .unwrap_or_else(|| panic!("no SYN in the docker host: {all}"));
    assert!(
        syn_host["hops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["chain"] == "DOCKER"
                && h["engine"] == "docker"
                && h["iptables"].as_str().unwrap_or("").contains("DNAT")),
        "{all}"
    );
    assert_eq!(syn_host["end"], "sent", "{all}");
    let syn_web = pkts
        .iter()
        .find(|p| p["netns"] == format!("container:{web}").as_str() && p["flags"] == "SYN")
        .unwrap_or_else(|| panic!("no SYN in the web container: {all}"));
    assert!(
        syn_web["container"]
            .as_str()
            .unwrap_or("")
            .starts_with(&web),
        "{all}"
    );
    assert_eq!(syn_web["end"], "delivered", "{all}");
    assert!(
        syn_web["receiver"]["processes"]
            .to_string()
            .contains("httpd"),
        "{all}"
    );
    // The user's DROP in Docker's user chain.
    let mut a = vec!["ip", "netns", "exec", &d.ns.name];
    a.extend([
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
    sh(&a);
    let pkts = trace(false);
    let dropped = dropped_by_rule(&pkts, "ip filter DOCKER-USER");
    assert_eq!(dropped["engine"], "user");
    assert_eq!(dropped["netns"], d.ns.name.as_str());
    assert_eq!(
        dropped["iptables"], "-A DOCKER-USER -p tcp -m tcp --dport 80 -j DROP",
        "{dropped}"
    );
}

/// Trace `filter` (text output) while `traffic` runs; SIGINT the tracer, return what it printed.
fn trace_text(topo: &Topo, filter: &[&str], traffic: impl FnOnce()) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .arg("trace")
        .args(filter)
        .args(["--netns", &topo.host.name, "--netns", &topo.ctr.name])
        .args(["--duration", "20s"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nettool trace");
    let pid = child.id();
    wait_for("trace started", 15, || drops_enabled(pid));
    traffic();
    std::thread::sleep(Duration::from_millis(600));
    sh(&["kill", "-INT", &pid.to_string()]);
    let _ = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    text
}

fn hop_with_nat<'a>(p: &'a Value, kind: &str) -> Option<&'a Value> {
    p["hops"]
        .as_array()?
        .iter()
        .find(|h| h["nat"]["kind"] == kind)
}

/// The NAT of a flow comes from its conntrack entry: the DNAT on Docker's DNAT rule and the
/// MASQUERADE on the POSTROUTING rule, each with the entry's original and reply tuples; the
/// answer is rewritten back by conntrack alone. In JSON and in text.
#[test]
fn dnat_and_masquerade_are_shown_from_conntrack_on_their_rules() {
    let topo = topo();
    in_ns(
        &topo.host,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            &topo.br,
            "-j",
            "MASQUERADE",
        ],
    );
    // Flows the trace did not ask for (UDP to other ports, each a conntrack entry in the
    // host): made during the trace, the kernel's socket filter keeps them from the tracer;
    // made before, they fill the dump at start over several datagrams.
    let unrelated = |ports: std::ops::Range<u16>| {
        in_ns(
            &topo.client,
            &[
                "bash",
                "-c",
                &format!(
                    "for p in $(seq {} {}); do echo x > /dev/udp/10.77.1.1/$p; done",
                    ports.start,
                    ports.end - 1
                ),
            ],
        );
    };
    unrelated(9000..9300);
    // A connection made before the trace: its entry comes from the dump at start.
    let go = std::env::temp_dir().join(format!("nt-test-trc-go-{}", std::process::id()));
    let _ = std::fs::remove_file(&go);
    let early = Command::new("ip")
        .args(["netns", "exec", &topo.client.name, "sh", "-c"])
        .arg(format!(
            "(while [ ! -e {g} ]; do sleep 0.1; done; echo early; sleep 1) | socat - TCP:10.77.1.1:8080",
            g = go.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the early connection", 5, || {
        in_ns(
            &topo.host,
            &["conntrack", "-L", "-p", "tcp", "--dport", "8080"],
        )
        .contains("ESTABLISHED")
    });
    let entries = |ns: &TestNs| -> u64 { in_ns(ns, &["conntrack", "-C"]).trim().parse().unwrap() };
    let before = entries(&topo.host) + entries(&topo.ctr);
    let mut ok = false;
    let child = start_trace(&topo, &["tcp:8080"]);
    let pid = child.id();
    std::fs::write(&go, "").unwrap();
    let early = early.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&go);
    assert!(
        String::from_utf8_lossy(&early.stdout).contains("hello"),
        "the early connection got no answer"
    );
    unrelated(9300..9340);
    ok |= curl(&topo, &["http://10.77.1.1:8080/"]);
    std::thread::sleep(Duration::from_millis(600));
    sh(&["kill", "-INT", &pid.to_string()]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(ok, "the path must work with the MASQUERADE");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = lines.last().unwrap()["summary"].clone();
    let pkts: Vec<Value> = lines
        .into_iter()
        .filter(|l| l.get("summary").is_none())
        .collect();
    let all = show(&pkts);
    let syn = ns_of(&pkts, &topo.host)
        .into_iter()
        .find(|p| p["flags"] == "SYN")
        .unwrap_or_else(|| panic!("no SYN in the host: {all}"));
    let sport = syn["src"].as_str().unwrap().rsplit(':').next().unwrap();
    let dnat = hop_with_nat(syn, "dnat").unwrap_or_else(|| panic!("no DNAT hop: {all}"));
    assert_eq!(dnat["chain"], "DOCKER", "{all}");
    assert_eq!(dnat["hook"], "prerouting", "{all}");
    assert_eq!(
        dnat["nat"]["before"],
        format!("10.77.1.2:{sport} -> 10.77.1.1:8080"),
        "{all}"
    );
    assert_eq!(
        dnat["nat"]["after"],
        format!("10.77.1.2:{sport} -> 10.77.2.2:80"),
        "{all}"
    );
    let ct = &dnat["nat"]["conntrack"];
    assert_eq!(
        ct["original"],
        format!("tcp 10.77.1.2:{sport} > 10.77.1.1:8080"),
        "{all}"
    );
    // MASQUERADE keeps the port when it is free.
    assert_eq!(
        ct["reply"],
        format!("tcp 10.77.2.2:80 > 10.77.2.1:{sport}"),
        "{all}"
    );
    let masq = hop_with_nat(syn, "snat").unwrap_or_else(|| panic!("no SNAT hop: {all}"));
    assert_eq!(masq["chain"], "POSTROUTING", "{all}");
    assert!(
        masq["iptables"]
            .as_str()
            .unwrap_or("")
            .contains("MASQUERADE"),
        "{all}"
    );
    assert_eq!(
        masq["nat"]["after"],
        format!("10.77.2.1:{sport} -> 10.77.2.2:80"),
        "{all}"
    );
    assert_eq!(syn["conntrack"]["direction"], "original", "{all}");
    // The answer in the host: conntrack undoes both, no rule involved.
    let synack = ns_of(&pkts, &topo.host)
        .into_iter()
        .find(|p| p["flags"] == "SYN|ACK")
        .unwrap_or_else(|| panic!("no SYN-ACK in the host: {all}"));
    assert_eq!(synack["conntrack"]["direction"], "reply", "{all}");
    let kinds: Vec<&str> = synack["rewrites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["snat_reply", "dnat_reply"], "{all}");
    assert!(synack["rewrites"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["by_rule"] == false));
    assert_eq!(
        synack["rewrites"][1]["after"],
        format!("10.77.1.1:8080 -> 10.77.1.2:{sport}"),
        "{all}"
    );
    // The container sees the masqueraded source and NATs nothing itself.
    let in_ctr = ns_of(&pkts, &topo.ctr)
        .into_iter()
        .find(|p| p["flags"] == "SYN")
        .unwrap_or_else(|| panic!("no SYN in the container: {all}"));
    assert_eq!(in_ctr["src"], format!("10.77.2.1:{sport}"), "{all}");
    assert!(in_ctr["conntrack"].is_null(), "{all}");
    // The early connection's data, DNATed by conntrack from the entry the dump brought.
    let syn_ports: Vec<&str> = ns_of(&pkts, &topo.host)
        .iter()
        .filter(|p| p["flags"] == "SYN")
        .filter_map(|p| p["src"].as_str()?.rsplit(':').next())
        .collect();
    assert!(
        ns_of(&pkts, &topo.host).iter().any(|p| {
            p["flags"].as_str().unwrap_or("").contains("PSH")
                && p["dst"] == "10.77.1.1:8080"
                && !syn_ports.contains(&p["src"].as_str().unwrap().rsplit(':').next().unwrap())
                && p["rewrites"][0]["kind"] == "dnat"
                && p["rewrites"][0]["by_rule"] == false
        }),
        "no NAT for the connection made before the trace: {all}"
    );
    // 40 unrelated flows were made while tracing; the kernel's filter let none in: what was
    // read is the dump of the tables at start and the traced flows' events.
    let read = summary["conntrack_read"].as_u64().unwrap();
    assert!(
        read >= before && read < before + 20,
        "conntrack entries read: {read}, {before} in the tables at start"
    );

    // The same in text.
    let text = trace_text(&topo, &["tcp:8080"], || {
        assert!(curl(&topo, &["http://10.77.1.1:8080/"]));
    });
    eprintln!("{text}");
    for want in [
        "DNAT 10.77.1.2:",
        "-> 10.77.1.1:8080  =>  10.77.1.2:",
        "SNAT 10.77.1.2:",
        "conntrack: SNAT undone on the reply",
        "conntrack: DNAT undone on the reply",
        "conntrack   original tcp 10.77.1.2:",
        "reply tcp 10.77.2.2:80 > 10.77.2.1:",
    ] {
        assert!(text.contains(want), "no '{want}' in:\n{text}");
    }
}

/// The number of a kfree_skb drop reason in this kernel's tracepoint format.
fn reason_number(name: &str) -> String {
    let format = std::fs::read_to_string("/sys/kernel/tracing/events/skb/kfree_skb/format")
        .expect("kfree_skb format");
    let at = format
        .find(&format!("\"{name}\" }}"))
        .unwrap_or_else(|| panic!("no {name}"));
    let open = format[..at].rfind('{').unwrap();
    format[open + 1..at]
        .trim()
        .trim_end_matches(',')
        .to_string()
}

/// skb:kfree_skb is enabled only in a tracefs instance of the tracer's own, with a filter
/// narrowed to the trace (an IPv4 UDP trace: IPv4 only, no TCP reasons); the global event is
/// not touched; the instance goes at the end, and after a SIGKILL with the next run.
#[test]
fn kfree_skb_is_filtered_in_an_instance_of_its_own_and_removed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = TestNs::new("trkfree");
    let global = |f: &str| {
        std::fs::read_to_string(format!("/sys/kernel/tracing/events/skb/kfree_skb/{f}"))
            .unwrap_or_default()
    };
    let before = (global("enable"), global("filter"));
    let start = || {
        let child = Command::new(env!("CARGO_BIN_EXE_nettool"))
            .args(["trace", "udp:7000", "10.77.2.2", "--netns", &ns.name])
            .args(["--duration", "20s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_for("kfree_skb enabled in the instance", 15, || {
            drops_enabled(pid)
        });
        (child, pid)
    };
    for kill in ["-INT", "-KILL"] {
        let (mut child, pid) = start();
        // One read: tracefs answers a filter file's second read (at an offset) with nothing.
        let mut buf = vec![0u8; 1 << 16];
        let n = std::io::Read::read(
            &mut std::fs::File::open(instance_of(pid).join("events/skb/kfree_skb/filter")).unwrap(),
            &mut buf,
        )
        .unwrap();
        let filter = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(filter.contains("protocol == 2048"), "{filter}");
        assert!(
            !filter.contains("34525"),
            "an IPv4 trace keeps IPv6 drops: {filter}"
        );
        let not = |r: &str| format!("reason != {} ", reason_number(r));
        for r in ["NOT_SPECIFIED", "QUEUE_PURGE", "TCP_CSUM", "TCP_OFO_DROP"] {
            assert!(filter.contains(&not(r)), "{r} kept: {filter}");
        }
        for r in ["NO_SOCKET", "UDP_CSUM", "IP_RPFILTER", "NETFILTER_DROP"] {
            assert!(!filter.contains(&not(r)), "{r} left out: {filter}");
        }
        assert_eq!(
            (global("enable"), global("filter")),
            before,
            "the global event changed"
        );
        sh(&["kill", kill, &pid.to_string()]);
        child.wait().unwrap();
        let journal = format!("/run/nettool-trace/{pid}.json");
        if kill == "-KILL" {
            assert!(instance_of(pid).exists(), "a SIGKILL leaves the instance");
            assert!(std::path::Path::new(&journal).exists());
            let out = Command::new(env!("CARGO_BIN_EXE_nettool"))
                .args(["trace", "--netns", &ns.name, "--duration", "300ms", "udp:1"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", common::text(&out));
        }
        assert!(!instance_of(pid).exists(), "instance left after {kill}");
        assert!(
            !std::path::Path::new(&journal).exists(),
            "journal left after {kill}"
        );
    }
}

/// The tools each successful execve of the process tree ran, by name, from `strace -ff` files
/// under `dir`.
fn tools_run(dir: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let mut n = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in text.lines() {
            let Some(rest) = l.strip_prefix("execve(\"") else {
                continue;
            };
            if !l.trim_end().ends_with("= 0") {
                continue;
            }
            let path = rest.split('"').next().unwrap_or_default();
            let tool = path.rsplit('/').next().unwrap_or_default().to_string();
            *n.entry(tool).or_insert(0) += 1;
        }
    }
    n
}

/// A trace reads each namespace's rules once, through the snapshot's firewall loader: the
/// DNAT targets to follow, the legacy tables nf_tables tracing cannot see and the
/// iptables-save lines of the rules come from the same dump. Before, iptables-nft-save ran
/// three times and iptables-legacy-save four for the two namespaces (nat::load_live, then the
/// legacy check and the rule index each ran their own).
#[test]
fn a_trace_reads_each_namespaces_rules_once() {
    let topo = topo();
    // A legacy rule in the host: said in the notes (nf_tables tracing cannot see it).
    sh(&[
        "ip",
        "netns",
        "exec",
        &topo.host.name,
        "iptables-legacy",
        "-A",
        "INPUT",
        "-p",
        "udp",
        "--dport",
        "9",
        "-j",
        "ACCEPT",
    ]);
    let dir = std::env::temp_dir().join(common::unique("nt-test-strace"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("strace")
        .args(["-f", "-ff", "-qq", "-e", "trace=execve", "-o"])
        .arg(dir.join("x"))
        .arg(env!("CARGO_BIN_EXE_nettool"))
        .args([
            "trace",
            "tcp:8080",
            "--netns",
            &topo.host.name,
            "--netns",
            &topo.ctr.name,
            "--no-drops",
            "--json",
            "--duration",
            "1s",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("strace (apt-get install strace)");
    let runs = tools_run(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", common::text(&out));
    for tool in [
        "iptables-nft-save",
        "iptables-legacy-save",
        "ip6tables-nft-save",
        "ip6tables-legacy-save",
    ] {
        assert_eq!(runs.get(tool), Some(&2), "{tool}: {runs:?}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let notes = summary["summary"]["notes"].to_string();
    assert!(
        notes.contains(&format!(
            "{}: ip filter (legacy) holds legacy iptables rules",
            topo.host.name
        )),
        "{notes}"
    );
    // Followed from the same dump: 8080 is DNATed to port 80 in the host.
    assert!(
        notes.contains("following DNAT: also tracing port 80"),
        "{notes}"
    );
}
