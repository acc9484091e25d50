//! `nettool topology`: the graph has exactly the namespaces, interfaces and edges built here,
//! and every format renders (DOT through the real `dot`).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use nettool::netns::NetNs;
use serde_json::Value;

fn inode(ns: &TestNs) -> u64 {
    NetNs::from_name(&ns.name).unwrap().id().inode
}

fn ifid(ns: &TestNs, index: u64) -> String {
    format!("ns{}:if{index}", inode(ns))
}

fn index_of(ns: &TestNs, name: &str) -> u64 {
    let out = ns.ip(&["-o", "link", "show", name]);
    out.split(':').next().unwrap().trim().parse().unwrap()
}

/// A host namespace with a bridge and three "containers", a published port through a real
/// userland proxy (docker-proxy), listeners, a macvlan in c3 on the bridge, a vxlan and a tun.
struct Lab {
    h: TestNs,
    c: Vec<TestNs>,
    _procs: Vec<ChildGuard>,
}

fn lab() -> Lab {
    let h = TestNs::new("topo-h");
    let c: Vec<TestNs> = (1..=3)
        .map(|i| TestNs::new(&format!("topo-c{i}")))
        .collect();
    h.ip(&["link", "add", "br0", "type", "bridge"]);
    h.ip(&["addr", "add", "10.88.0.1/24", "dev", "br0"]);
    h.ip(&["link", "set", "br0", "up"]);
    for (i, ns) in c.iter().enumerate() {
        let hv = format!("hv{}", i + 1);
        veth(&hv, &h, "eth0", ns);
        h.ip(&["link", "set", &hv, "master", "br0"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("10.88.0.{}/24", i + 2),
            "dev",
            "eth0",
        ]);
        ns.ip(&["route", "add", "default", "via", "10.88.0.1"]);
    }
    h.ip(&[
        "link", "add", "link", "br0", "name", "mv0", "type", "macvlan", "mode", "bridge",
    ]);
    h.ip(&["link", "set", "mv0", "netns", &c[2].name]);
    h.ip(&[
        "link", "add", "vx42", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "br0",
    ]);
    h.ip(&["tuntap", "add", "mode", "tun", "name", "tun7"]);
    // A Docker-style DNAT rule publishing 18081 -> c1:80 (read back through the NAT explainer).
    sh(&[
        "ip",
        "netns",
        "exec",
        &h.name,
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "--dport",
        "18081",
        "-j",
        "DNAT",
        "--to-destination",
        "10.88.0.2:80",
    ]);
    let procs = vec![
        // c1 listens on its own address only, c2 on every address.
        c[0].spawn(&[
            "socat",
            "TCP-LISTEN:80,bind=10.88.0.2,fork,reuseaddr",
            "EXEC:cat",
        ]),
        c[1].spawn(&["socat", "TCP-LISTEN:8080,fork,reuseaddr", "EXEC:cat"]),
        // The host publishes 18080 -> c2:8080 through Docker's own userland proxy, which
        // reports readiness on fd 3 (without it, Go reuses fd 3 and the proxy closes its listener).
        h.spawn(&[
            "sh",
            "-c",
            "exec /usr/sbin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 18080 \
             -container-ip 10.88.0.3 -container-port 8080 3>/dev/null",
        ]),
    ];
    let listening = |ns: &TestNs, port: &str| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "ss", "-Htln"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(port))
            .unwrap_or(false)
    };
    wait_for("listeners", 10, || {
        listening(&c[0], ":80 ") && listening(&c[1], ":8080 ") && listening(&h, ":18080 ")
    });
    Lab {
        h,
        c,
        _procs: procs,
    }
}

fn ids(g: &Value, kind: &str) -> BTreeSet<String> {
    g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] == kind)
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

fn edges(g: &Value) -> BTreeSet<(String, String, String)> {
    g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn node<'a>(g: &'a Value, id: &str) -> &'a Value {
    g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id}"))
}

#[test]
fn graph_has_exactly_what_was_built() {
    let l = lab();
    let (h, c) = (&l.h, &l.c);
    let g = nettool_json(&["topology", "--netns", &h.name, "--json"]);

    let want_ns: BTreeSet<String> = std::iter::once(h)
        .chain(c.iter())
        .map(|n| format!("ns{}", inode(n)))
        .collect();
    assert_eq!(ids(&g, "namespace"), want_ns);

    let (br, vx, tun) = (index_of(h, "br0"), index_of(h, "vx42"), index_of(h, "tun7"));
    let hv: Vec<u64> = (1..=3).map(|i| index_of(h, &format!("hv{i}"))).collect();
    let eth: Vec<u64> = c.iter().map(|n| index_of(n, "eth0")).collect();
    let mv = index_of(&c[2], "mv0");
    let mut want_if: BTreeSet<String> = [br, vx, tun].iter().map(|&i| ifid(h, i)).collect();
    want_if.extend(hv.iter().map(|&i| ifid(h, i)));
    want_if.extend(c.iter().zip(&eth).map(|(n, &i)| ifid(n, i)));
    want_if.insert(ifid(&c[2], mv));
    assert_eq!(ids(&g, "interface"), want_if);

    let pub_ids = ids(&g, "published");
    assert_eq!(pub_ids.len(), 2, "{pub_ids:?}");
    let pub_id = format!("ns{}:pub:tcp:0.0.0.0:18080", inode(h));
    let nat_id = format!("ns{}:pub:tcp:0.0.0.0:18081", inode(h));
    assert!(
        pub_ids.contains(&pub_id) && pub_ids.contains(&nat_id),
        "{pub_ids:?}"
    );

    let mut want_edges = BTreeSet::new();
    for i in 0..3 {
        let (a, b) = (ifid(h, hv[i]), ifid(&c[i], eth[i]));
        // A veth edge goes from either end: normalise below.
        want_edges.insert(("veth".to_string(), a.clone().min(b.clone()), a.max(b)));
        want_edges.insert(("bridge_port".into(), ifid(h, hv[i]), ifid(h, br)));
    }
    want_edges.insert(("lower".into(), ifid(&c[2], mv), ifid(h, br)));
    want_edges.insert(("lower".into(), ifid(h, vx), ifid(h, br)));
    want_edges.insert(("published".into(), pub_id.clone(), ifid(&c[1], eth[1])));
    want_edges.insert(("published".into(), nat_id.clone(), ifid(&c[0], eth[0])));
    let got: BTreeSet<_> = edges(&g)
        .into_iter()
        .map(|(k, a, b)| {
            if k == "veth" {
                (k, a.clone().min(b.clone()), a.max(b))
            } else {
                (k, a, b)
            }
        })
        .collect();
    assert_eq!(got, want_edges);

    // Veth labels name both ends with the peer's ifindex, as `ip link` does (eth0@if5).
    let label = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "veth" && (e["from"] == ifid(h, hv[0]) || e["to"] == ifid(h, hv[0])))
        .unwrap()["label"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(label.contains(&format!("hv1@if{}", eth[0])), "{label}");
    assert!(label.contains(&format!("eth0@if{}", hv[0])), "{label}");

    // The published port: found through docker-proxy, target listening.
    let p = node(&g, &pub_id);
    assert_eq!(p["host_port"], "18080");
    assert_eq!(p["target"], "10.88.0.3:8080");
    assert_eq!(p["target_listening"], true);
    assert!(
        p["via"][0].as_str().unwrap().contains("docker-proxy"),
        "{p}"
    );
    assert_eq!(p["namespace"], format!("ns{}", inode(h)));
    // The DNAT rule: found in the nat table's PREROUTING chain, c1 listens on 10.88.0.2:80.
    let n = node(&g, &nat_id);
    assert_eq!(n["target"], "10.88.0.2:80");
    assert_eq!(n["target_listening"], true);
    assert!(
        n["via"][0].as_str().unwrap().starts_with("nat PREROUTING:"),
        "{n}"
    );

    // Listeners: on c1's eth0 (bound to its address), on c2's namespace (wildcard).
    let e1 = node(&g, &ifid(&c[0], eth[0]));
    assert_eq!(e1["listeners"][0]["address"], "10.88.0.2:80", "{e1}");
    let n2 = node(&g, &format!("ns{}", inode(&c[1])));
    assert!(n2["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["address"].as_str().unwrap().ends_with(":8080")));
    assert_eq!(n2["default_routes"][0], "default via 10.88.0.1 dev eth0");
    let hv1 = node(&g, &ifid(h, hv[0]));
    assert_eq!(hv1["kind"], "veth");
    assert_eq!(node(&g, &ifid(h, tun))["kind"], "tun");
}

#[test]
fn neighbour_scope_of_a_container_is_its_host_side_only() {
    let l = lab();
    let (h, c) = (&l.h, &l.c);
    let g = nettool_json(&["topology", "--netns", &c[0].name, "--json"]);
    assert_eq!(
        ids(&g, "namespace"),
        BTreeSet::from([format!("ns{}", inode(&c[0])), format!("ns{}", inode(h))])
    );
    let want: BTreeSet<String> = [
        ifid(&c[0], index_of(&c[0], "eth0")),
        ifid(h, index_of(h, "hv1")),
        ifid(h, index_of(h, "br0")),
    ]
    .into();
    assert_eq!(ids(&g, "interface"), want);
    // The host's DNAT to c1 is drawn; the docker-proxy port to c2 is not.
    let kinds: Vec<String> = edges(&g).into_iter().map(|e| e.0).collect();
    assert_eq!(kinds, vec!["bridge_port", "published", "veth"]);
    assert_eq!(
        ids(&g, "published"),
        BTreeSet::from([format!("ns{}:pub:tcp:0.0.0.0:18081", inode(h))])
    );
}

#[test]
fn every_format_renders() {
    let l = lab();
    let h = &l.h;
    let dot = nettool_ok(&["topology", "--netns", &h.name, "--format", "dot"]);
    assert!(dot.starts_with("digraph topology {"), "{dot}");
    // Graphviz accepts it without a warning.
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dot (Debian package graphviz)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dot.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = String::from_utf8_lossy(&out.stdout);
    assert!(
        svg.contains("hv1@if") && svg.contains("br0"),
        "labels drawn"
    );

    // svg and png through nettool itself.
    let svg = nettool_ok(&["topology", "--netns", &h.name, "--format", "svg"]);
    assert!(svg.contains("<svg"), "{svg}");
    let file = std::env::temp_dir().join(format!("{}.png", unique("topo")));
    nettool_ok(&[
        "topology",
        "--netns",
        &h.name,
        "--format",
        "png",
        "-o",
        file.to_str().unwrap(),
    ]);
    let png = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(&png[..4], b"\x89PNG");

    let mm = nettool_ok(&["topology", "--netns", &h.name, "--format", "mermaid"]);
    assert!(mm.starts_with("flowchart LR\n"), "{mm}");
    assert!(mm.contains("subgraph") && mm.contains("hv1@if"), "{mm}");
    assert!(mm.contains("==>|\"tcp 18080"), "published edge: {mm}");

    let text = nettool_ok(&["topology", "--netns", &h.name]);
    assert!(text.contains(&h.name), "{text}");
    assert!(
        text.contains("published tcp 0.0.0.0:18080 → 10.88.0.3:8080"),
        "{text}"
    );
    assert!(text.contains("● listen tcp 10.88.0.2:80 socat"), "{text}");
}

#[test]
fn whole_host_contains_the_lab() {
    let l = lab();
    let g = nettool_json(&["topology", "--all", "--json", "--no-nat"]);
    let ns = ids(&g, "namespace");
    for n in std::iter::once(&l.h).chain(l.c.iter()) {
        assert!(ns.contains(&format!("ns{}", inode(n))), "{}", n.name);
    }
    assert_eq!(g["scope"], "host");
}

/// A lab from `nettool setup --isolated`, torn down on drop.
struct SetupLab {
    name: String,
}

impl Drop for SetupLab {
    fn drop(&mut self) {
        let _ = nettool(&["teardown", &self.name]);
    }
}

#[test]
fn lab_scope_is_exactly_the_default_lab() {
    let name = unique("topo-lab");
    let lab = SetupLab { name: name.clone() };
    let state = nettool_json(&["setup", "--isolated", "--name", &name, "--json"]);
    let host = state["host_netns"].as_str().unwrap().to_string();
    let inode_of = |n: &str| NetNs::from_name(n).unwrap().id().inode;
    let g = nettool_json(&["topology", "--lab", &lab.name, "--json"]);
    assert_eq!(g["scope"], format!("lab {name}"));

    // Namespaces: the isolated host and one per container, named after the containers.
    let mut want_ns = BTreeSet::from([format!("ns{}", inode_of(&host))]);
    let containers = state["containers"].as_array().unwrap();
    for c in containers {
        let ns = c["netns"].as_str().unwrap();
        want_ns.insert(format!("ns{}", inode_of(ns)));
        let n = node(&g, &format!("ns{}", inode_of(ns)));
        assert_eq!(n["containers"][0], c["name"], "{n}");
    }
    assert_eq!(ids(&g, "namespace"), want_ns);

    // Bridges carry their network names; one veth pair per container attachment.
    let bridges: BTreeSet<(String, String)> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "bridge")
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["network"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want_bridges: BTreeSet<(String, String)> = state["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["bridge"].as_str().unwrap().to_string(),
                n["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(bridges, want_bridges);
    let attachments: usize = containers
        .iter()
        .map(|c| c["networks"].as_array().unwrap().len())
        .sum();
    let count = |kind: &str| {
        g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .count()
    };
    assert_eq!(count("veth"), attachments);
    assert_eq!(count("bridge_port"), attachments);
    // Every host-side veth the lab recorded is in the picture.
    for c in containers {
        for n in c["networks"].as_array().unwrap() {
            let hv = n["host_veth"].as_str().unwrap();
            assert!(
                g["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["name"] == hv && x["namespace"] == format!("ns{}", inode_of(&host))),
                "{hv}"
            );
        }
    }
    // Published ports: exactly the lab's, each reaching the container's address.
    // (Each 0.0.0.0 publish also has its [::] twin, the proxy's IPv6 listener, as with dockerd.)
    let ports = state["ports"].as_array().unwrap();
    let published = ids(&g, "published");
    let v4: Vec<&String> = published.iter().filter(|id| !id.contains("::")).collect();
    assert_eq!(v4.len(), ports.len(), "{published:?}");
    assert_eq!(published.len(), 2 * ports.len(), "{published:?}");
    assert_eq!(count("published"), published.len());
    for p in ports {
        let id = format!(
            "ns{}:pub:{}:0.0.0.0:{}",
            inode_of(&host),
            p["proto"].as_str().unwrap(),
            p["host_port"]
        );
        let n = node(&g, &id);
        assert_eq!(
            n["target"],
            format!(
                "{}:{}",
                p["container_ip"].as_str().unwrap(),
                p["container_port"]
            )
        );
        assert_eq!(n["target_listening"], true, "{n}");
        // Found twice: the lab's userland proxy listener and its DNAT rule.
        let via: Vec<&str> = n["via"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(via.iter().any(|v| v.starts_with("userland proxy")), "{n}");
        assert!(via.iter().any(|v| v.starts_with("nat ")), "{n}");
    }
    // And the picture renders.
    let dot = nettool_ok(&["topology", "--lab", &lab.name, "--format", "svg"]);
    assert!(dot.contains("<svg"));
}

/// The namespace node whose inode is `inode`.
fn ns_node(g: &Value, inode: u64) -> &Value {
    node(g, &format!("ns{inode}"))
}

#[test]
fn podman_and_cni_containers_are_named_with_no_environment_variable() {
    let mut p = common::podman::PodmanHost::start("topo-podman");
    let net = p.network("tnet", &[]);
    let web = p.run(
        "web",
        &["--network", &net, "-p", "18492:80"],
        &["httpd", "-f", "-p", "80"],
    );
    let pod = p.pod("pod", &["--network", &net]);
    let member = p.run("member", &["--pod", &pod], &["sleep", "300"]);
    let infra = p.infra_of(&pod);
    let bridge = p.podman(&["network", "inspect", "-f", "{{.NetworkInterface}}", &net]);
    let ns_of = |c: &str| {
        let pid: u32 = p
            .podman(&["inspect", "-f", "{{.State.Pid}}", c])
            .parse()
            .unwrap();
        NetNs::from_pid(pid).unwrap().id().inode
    };
    // A CNI container on the same host namespace.
    let ctr = TestNs::new("tcni");
    let a = common::cni::CniAttachment::add(&p.ns, &ctr, "10.77.2.0/24", 18493, 80);

    let g = common::podman::nettool_plain_json(&["topology", "--netns", &p.ns.name, "--json"]);
    assert_eq!(
        ns_node(&g, ns_of(&web))["containers"],
        serde_json::json!([web])
    );
    assert_eq!(
        ns_node(&g, ns_of(&member))["containers"],
        serde_json::json!([member, infra])
    );
    assert_eq!(ns_node(&g, ns_of(&member))["pod"], pod.as_str());
    assert_eq!(ns_node(&g, ns_of(&web))["pod"], Value::Null);
    assert_eq!(
        ns_node(&g, inode(&ctr))["containers"],
        serde_json::json!([a.container_id])
    );
    // conmon's cgroup does not make Podman's host a container.
    assert_eq!(
        ns_node(&g, inode(&p.ns))["containers"],
        serde_json::json!([])
    );
    // Bridges carry their network names: netavark's from Podman's network list, CNI's from the cache.
    let network_of = |b: &str| {
        g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["kind"] == "bridge" && n["name"] == b)
            .unwrap_or_else(|| panic!("bridge {b}: {g}"))["network"]
            .clone()
    };
    assert_eq!(network_of(&bridge), net.as_str());
    assert_eq!(network_of(&a.bridge), a.network.as_str());
    let text = String::from_utf8_lossy(
        &common::podman::nettool_plain(&["topology", "--netns", &p.ns.name]).stdout,
    )
    .into_owned();
    assert!(text.contains(&format!("container {web}")), "{text}");
    assert!(
        text.contains(&format!("pod {pod}: container {member}, {infra}")),
        "{text}"
    );
}

/// `nettool topology` with no scope draws what the user is looking at: inside a lab's host
/// namespace, exactly that lab; elsewhere the current namespace and its neighbours; `--all` the
/// whole machine.
#[test]
fn the_default_scope_is_the_lab_here_or_this_namespace_and_its_neighbours() {
    let name = unique("topo-def");
    let setup = SetupLab { name: name.clone() };
    let state = nettool_json(&["setup", "--isolated", "--name", &name, "--json"]);
    let host = state["host_netns"].as_str().unwrap().to_string();
    let in_ns = |ns: &str, extra: &[&str]| -> Value {
        let mut argv = vec![
            "netns",
            "exec",
            ns,
            env!("CARGO_BIN_EXE_nettool"),
            "topology",
        ];
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&["--json", "--no-nat"]);
        let out = std::process::Command::new("ip")
            .args(&argv)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let g = in_ns(&host, &[]);
    assert_eq!(g["scope"], format!("lab {name}"), "inside the lab's host");
    let by_name = nettool_json(&["topology", "--lab", &setup.name, "--json", "--no-nat"]);
    assert_eq!(ids(&g, "namespace"), ids(&by_name, "namespace"));

    // A namespace with one neighbour, and one that has nothing to do with it.
    let l = lab();
    let g = in_ns(&l.h.name, &[]);
    let ns = ids(&g, "namespace");
    assert!(ns.contains(&format!("ns{}", inode(&l.h))), "{ns:?}");
    assert!(
        !ns.contains(&format!(
            "ns{}",
            NetNs::from_name(&host).unwrap().id().inode
        )),
        "the lab is not this namespace's neighbour: {ns:?}"
    );
    let all = in_ns(&l.h.name, &["--all"]);
    assert_eq!(all["scope"], "host");
    assert!(ids(&all, "namespace").len() > ns.len(), "--all draws more");
}

/// What `doctor --save-snapshot` recorded draws the very picture the live read draws, text and
/// graph, replayed by an unprivileged user: topology is a function of the snapshot, so it can
/// be tested from captures/doctor/*.json and drawn from a bug report.
#[test]
fn a_saved_snapshot_renders_the_same_topology_without_root() {
    let l = lab();
    let h = &l.h;
    let file = std::env::temp_dir().join(format!("{}-snapshot.json", h.name));
    let path = file.to_str().unwrap();
    let _ = std::fs::remove_file(&file);
    let rec = nettool(&[
        "doctor",
        "--netns",
        &h.name,
        "18081",
        "--save-snapshot",
        path,
    ]);
    assert!(
        file.exists(),
        "doctor recorded no snapshot: {}",
        String::from_utf8_lossy(&rec.stderr)
    );
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(env!("CARGO_BIN_EXE_nettool"))
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("setpriv (util-linux)");
        assert!(
            out.status.success(),
            "nettool {args:?} as nobody: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let live = nettool_ok(&["topology", "--netns", &h.name]);
    let replay = as_nobody(&["topology", "--snapshot", path]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(replay, live, "replayed:\n{replay}\nlive:\n{live}");
    // The published ports (NAT rule and docker-proxy) and the listeners came through too.
    assert!(
        live.contains("published tcp 0.0.0.0:18081 → 10.88.0.2:80"),
        "{live}"
    );
    assert!(live.contains("userland proxy"), "{live}");
}
