//! `nettool peer`: both directions, `--all`, non-veth links and errors, against namespaces built here.
//!
//! The test never touches its own namespace: a namespace built here plays the host, and
//! `--netns` says where to look an interface up.

mod common;

use std::collections::BTreeSet;

use common::*;
use nettool::netns::NetNs;
use serde_json::Value;

fn inode(ns: &TestNs) -> u64 {
    NetNs::from_name(&ns.name).unwrap().id().inode
}

fn names(v: &Value) -> Vec<String> {
    v["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

/// `ip -n NS link add HOST index HI type veth peer name PEER index PI netns OTHER`, both up.
fn veth_at(host: &TestNs, h: &str, hi: u32, other: &str, p: &str, pi: u32) {
    sh(&[
        "ip",
        "-n",
        &host.name,
        "link",
        "add",
        h,
        "index",
        &hi.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        p,
        "index",
        &pi.to_string(),
        "netns",
        other,
    ]);
    host.ip(&["link", "set", h, "up"]);
}

/// A namespace held by two processes and by no name: `unshare --net` plus a second process
/// joined with nsenter.
struct SharedNs {
    first: ChildGuard,
    _second: ChildGuard,
}

impl SharedNs {
    fn new() -> Self {
        let first = ChildGuard(
            std::process::Command::new("unshare")
                .args(["--net", "sleep", "120"])
                .spawn()
                .unwrap(),
        );
        let me = std::fs::read_link("/proc/self/ns/net").unwrap();
        let path = format!("/proc/{}/ns/net", first.pid());
        wait_for("unshare to enter its namespace", 10, || {
            std::fs::read_link(&path).map(|l| l != me).unwrap_or(false)
        });
        let second = ChildGuard(
            std::process::Command::new("nsenter")
                .args([&format!("--net={path}"), "sleep", "120"])
                .spawn()
                .unwrap(),
        );
        let path2 = format!("/proc/{}/ns/net", second.pid());
        let target = std::fs::read_link(&path).unwrap();
        wait_for("nsenter to join", 10, || {
            std::fs::read_link(&path2)
                .map(|l| l == target)
                .unwrap_or(false)
        });
        SharedNs {
            first,
            _second: second,
        }
    }

    fn pid(&self) -> u32 {
        self.first.pid()
    }
}

/// The machine the tests below share: two "hosts" with identically numbered veths.
struct World {
    h: TestNs,
    h2: TestNs,
    c1: TestNs,
    c2: TestNs,
    c3: TestNs,
    c4: TestNs,
    shared: SharedNs,
}

fn world() -> World {
    let h = TestNs::new("peer-h");
    let h2 = TestNs::new("peer-h2");
    let (c1, c2, c3, c4) = (
        TestNs::new("peer-c1"),
        TestNs::new("peer-c2"),
        TestNs::new("peer-c3"),
        TestNs::new("peer-c4"),
    );
    let shared = SharedNs::new();
    h.ip(&["link", "add", "br0", "type", "bridge"]);
    h.ip(&["link", "set", "br0", "up"]);
    h.ip(&["addr", "add", "10.77.0.1/24", "dev", "br0"]);
    // ifindex 5 and 15 side by side, crosswise: hv5 (5) <-> c1 eth0 (15), hv15 (15) <-> c2 eth0 (5).
    veth_at(&h, "hv5", 5, &c1.name, "eth0", 15);
    veth_at(&h, "hv15", 15, &c2.name, "eth0", 5);
    // c3's eth0 has the same ifindex (5) as c2's; its host side is named hv1, a prefix of hv15.
    veth_at(&h, "hv1", 25, &c3.name, "eth0", 5);
    // The second host numbers its veth like the first: hv5 (5) <-> c4 eth0 (15).
    veth_at(&h2, "hv5", 5, &c4.name, "eth0", 15);
    h2.ip(&["link", "add", "br0", "type", "bridge"]);
    h2.ip(&["link", "set", "hv5", "master", "br0"]);
    // The shared namespace (no name, two processes) with an MTU mismatch.
    sh(&[
        "ip",
        "-n",
        &h.name,
        "link",
        "add",
        "hvsh",
        "mtu",
        "1400",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &shared.pid().to_string(),
    ]);
    h.ip(&["link", "set", "hvsh", "up"]);
    for v in ["hv5", "hv15", "hv1", "hvsh"] {
        h.ip(&["link", "set", v, "master", "br0"]);
    }
    c1.ip(&["addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    c1.ip(&["link", "set", "eth0", "up"]);
    World {
        h,
        h2,
        c1,
        c2,
        c3,
        c4,
        shared,
    }
}

#[test]
fn host_side_to_peer_exact_ifindex_and_namespace() {
    let w = world();
    let r = nettool_json(&["peer", "--netns", &w.h.name, "hv5", "--json"]);
    assert_eq!(r["kind"], "veth");
    assert_eq!(r["interface"]["index"], 5);
    assert_eq!(r["interface"]["master"], "br0");
    assert_eq!(r["peer"]["name"], "eth0");
    assert_eq!(r["peer"]["index"], 15);
    assert_eq!(r["peer"]["namespace"]["inode"], inode(&w.c1), "{r}");
    assert_eq!(names(&r["peer"]["namespace"]), vec![w.c1.name.clone()]);
    assert!(r["peer"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "10.77.0.2/24"));
    assert!(r["peer"]["namespace"]["processes"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(r["mtu_mismatch"].is_null());

    // hv15's peer has ifindex 5 in c2: not c1's 15, not c3's 5.
    let r = nettool_json(&["peer", "--netns", &w.h.name, "hv15", "--json"]);
    assert_eq!(r["peer"]["index"], 5);
    assert_eq!(r["peer"]["namespace"]["inode"], inode(&w.c2));
    // hv1 is a prefix of hv15 and its peer shares c2's ifindex: still c3.
    let r = nettool_json(&["peer", "--netns", &w.h.name, "hv1", "--json"]);
    assert_eq!(r["interface"]["index"], 25);
    assert_eq!(r["peer"]["index"], 5);
    assert_eq!(r["peer"]["namespace"]["inode"], inode(&w.c3));
    // The second host's hv5 (same name, same ifindex, same peer ifindex) leads to c4.
    let r = nettool_json(&["peer", "--netns", &w.h2.name, "hv5", "--json"]);
    assert_eq!(r["peer"]["index"], 15);
    assert_eq!(r["peer"]["namespace"]["inode"], inode(&w.c4));

    // The text form names the namespace and the bridge.
    let text = nettool_ok(&["peer", "--netns", &w.h.name, "hv5"]);
    assert!(text.contains(&w.c1.name) && text.contains("br0"), "{text}");
}

#[test]
fn peer_in_shared_unnamed_namespace_lists_both_processes_and_mtu_warning() {
    let w = world();
    let r = nettool_json(&["peer", "--netns", &w.h.name, "hvsh", "--json"]);
    let ns = &r["peer"]["namespace"];
    let pids: BTreeSet<u64> = ns["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{ns}");
    assert!(pids.contains(&(w.shared.pid() as u64)));
    assert!(names(ns).is_empty());
    assert_eq!(r["interface"]["mtu"], 1400);
    assert_eq!(r["peer"]["mtu"], 1500);
    assert!(r["mtu_mismatch"].as_str().unwrap().contains("1400"), "{r}");
    let text = nettool_ok(&["peer", "--netns", &w.h.name, "hvsh"]);
    assert!(text.contains("warning: MTU mismatch"), "{text}");
    // Reverse through the process.
    let rev = nettool_json(&["peer", &format!("pid:{}", w.shared.pid()), "--json"]);
    assert_eq!(rev[0]["interface"]["name"], "eth0");
    assert_eq!(rev[0]["peer"]["name"], "hvsh");
    assert_eq!(rev[0]["peer"]["namespace"]["inode"], inode(&w.h));
}

#[test]
fn reverse_lookup_gives_host_side() {
    let w = world();
    // A namespace TARGET as the positional argument.
    let r = nettool_json(&["peer", &w.c1.name, "--json"]);
    let list = r.as_array().unwrap();
    assert_eq!(list.len(), 1, "only eth0 besides lo: {r}");
    assert_eq!(list[0]["interface"]["index"], 15);
    assert_eq!(list[0]["peer"]["name"], "hv5");
    assert_eq!(list[0]["peer"]["index"], 5);
    assert_eq!(list[0]["peer"]["master"], "br0");
    assert_eq!(list[0]["peer"]["namespace"]["inode"], inode(&w.h));
    // `--netns TARGET eth0`.
    for (ns, host, idx) in [(&w.c2, "hv15", 15), (&w.c3, "hv1", 25)] {
        let r = nettool_json(&["peer", "--netns", &ns.name, "eth0", "--json"]);
        assert_eq!(r["peer"]["name"], host, "{r}");
        assert_eq!(r["peer"]["index"], idx);
        assert_eq!(r["peer"]["namespace"]["inode"], inode(&w.h));
    }
    let r = nettool_json(&["peer", "--netns", &w.c4.name, "eth0", "--json"]);
    assert_eq!(r["peer"]["namespace"]["inode"], inode(&w.h2));
    let text = nettool_ok(&["peer", "--netns", &w.c2.name, "eth0"]);
    assert!(text.contains("peer hv15 (ifindex 15"), "{text}");
}

#[test]
fn all_lists_exactly_the_pairs_created() {
    let w = world();
    let key = |p: &Value| {
        (
            p["host"]["namespace"]["inode"].as_u64().unwrap(),
            p["host"]["name"].as_str().unwrap().to_string(),
            p["host"]["index"].as_u64().unwrap(),
            p["peer"]["namespace"]["inode"].as_u64().unwrap(),
            p["peer"]["name"].as_str().unwrap().to_string(),
            p["peer"]["index"].as_u64().unwrap(),
        )
    };
    let (h, h2) = (inode(&w.h), inode(&w.h2));
    let shared = NetNs::from_pid(w.shared.pid()).unwrap().id().inode;
    let want: BTreeSet<_> = [
        (h, "hv5", 5, inode(&w.c1), "eth0", 15),
        (h, "hv15", 15, inode(&w.c2), "eth0", 5),
        (h, "hv1", 25, inode(&w.c3), "eth0", 5),
        (h2, "hv5", 5, inode(&w.c4), "eth0", 15),
    ]
    .into_iter()
    .map(|(a, b, c, d, e, f)| (a, b.to_string(), c, d, e.to_string(), f))
    .chain([(h, "hvsh".to_string(), 0, shared, "eth0".to_string(), 0)])
    .collect();
    // The whole machine: our pairs are there, host side first, each once.
    let all = nettool_json(&["peer", "--all", "--json"]);
    let ours: BTreeSet<_> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["peer"].is_null())
        .map(key)
        .filter(|k| k.0 == h || k.0 == h2 || k.3 == h || k.3 == h2)
        .map(|mut k| {
            if k.1 == "hvsh" {
                (k.2, k.5) = (0, 0); // kernel-chosen ifindexes
            }
            k
        })
        .collect();
    assert_eq!(ours, want);
    // --all --netns H: only H's pairs.
    let hs = nettool_json(&["peer", "--all", "--netns", &w.h.name, "--json"]);
    assert_eq!(hs.as_array().unwrap().len(), 4, "{hs}");
    assert!(hs
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["host"]["namespace"]["inode"] == h && p["host"]["master"] == "br0"));
    let text = nettool_ok(&["peer", "--all", "--netns", &w.h.name]);
    assert!(text.starts_with("HOST-NS"), "{text}");
    assert!(text.contains("1400/1500!"), "{text}");
}

#[test]
fn non_veth_links_are_described() {
    let w = world();
    // A macvlan on the bridge, moved into c3; a vxlan over the bridge; a tun.
    w.h.ip(&[
        "link", "add", "link", "br0", "name", "mv0", "type", "macvlan", "mode", "bridge",
    ]);
    w.h.ip(&["link", "set", "mv0", "netns", &w.c3.name]);
    w.h.ip(&[
        "link", "add", "vx42", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "br0",
    ]);
    w.h.ip(&["tuntap", "add", "mode", "tun", "name", "tun7"]);

    let br = nettool_json(&["peer", "--netns", &w.h.name, "br0", "--json"]);
    assert_eq!(br["kind"], "bridge");
    assert!(br["peer"].is_null());
    let ports: BTreeSet<&str> = br["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, BTreeSet::from(["hv5", "hv15", "hv1", "hvsh"]));
    let children: Vec<(&str, u64)> = br["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["namespace"]["inode"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(children.contains(&("mv0", inode(&w.c3))), "{br}");
    assert!(children.contains(&("vx42", inode(&w.h))), "{br}");

    let mv = nettool_json(&["peer", "--netns", &w.c3.name, "mv0", "--json"]);
    assert_eq!(mv["kind"], "macvlan");
    assert_eq!(mv["parent"]["name"], "br0");
    assert_eq!(mv["parent"]["namespace"]["inode"], inode(&w.h));
    let vx = nettool_json(&["peer", "--netns", &w.h.name, "vx42", "--json"]);
    assert_eq!(vx["kind"], "vxlan");
    assert_eq!(vx["parent"]["name"], "br0");
    let tun = nettool_json(&["peer", "--netns", &w.h.name, "tun7", "--json"]);
    assert_eq!(tun["kind"], "tun");
    assert!(tun["parent"].is_null() && tun["peer"].is_null());
    let text = nettool_ok(&["peer", "--netns", &w.c3.name, "mv0"]);
    assert!(text.contains("macvlan (not a veth") && text.contains("parent     br0"));
}

#[test]
fn unknown_interface_suggests_close_names() {
    let w = world();
    let out = nettool(&["peer", "--netns", &w.h.name, "hv"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no interface named 'hv'"), "{err}");
    assert!(err.contains("did you mean") && err.contains("hv1"), "{err}");
    // A name that exists in another namespace only.
    let out = nettool(&["peer", "--netns", &w.c1.name, "hv15"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'hv15' exists in") && err.contains(&w.h.name),
        "{err}"
    );
    // No argument at all is a usage error.
    assert_eq!(nettool(&["peer"]).status.code(), Some(2));
}

#[test]
fn docker_container_is_named_both_ways() {
    let d = common::docker::Dockerd::start("peer-dock");
    d.import_busybox("nt-busybox");
    // A name of its own: a machine-wide Podman container "web" would make `container:web`
    // ambiguous.
    let web = unique("web");
    d.docker(&["run", "-d", "--name", &web, "nt-busybox", "sleep", "300"]);
    let id = d
        .docker(&["inspect", "-f", "{{.Id}}", &web])
        .trim()
        .to_string();
    let run = |args: &[&str]| -> Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nettool"))
            .args(args)
            .env("DOCKER_HOST", d.host())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The daemon's host namespace has docker0 and one veth: its peer is web's eth0.
    let pairs = run(&["peer", "--all", "--netns", &d.ns.name, "--json"]);
    let pairs = pairs.as_array().unwrap();
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    let host_veth = pairs[0]["host"]["name"].as_str().unwrap().to_string();
    assert_eq!(pairs[0]["host"]["master"], "docker0");
    let r = run(&["peer", "--netns", &d.ns.name, &host_veth, "--json"]);
    assert_eq!(r["peer"]["name"], "eth0");
    let c = &r["peer"]["namespace"]["containers"][0];
    assert_eq!(c["name"], web.as_str(), "{r}");
    assert_eq!(c["id"], id.as_str());
    let label = format!("container:{web}");
    assert_eq!(r["peer"]["namespace"]["label"], label.as_str());
    // Reverse: container:NAME through the Docker API gives the host-side veth.
    let rev = run(&["peer", &label, "--json"]);
    assert_eq!(rev[0]["peer"]["name"], host_veth.as_str(), "{rev}");
    assert_eq!(rev[0]["peer"]["master"], "docker0");
}

#[test]
fn podman_containers_and_pods_are_named_with_no_environment_variable() {
    let mut p = common::podman::PodmanHost::start("peer-podman");
    let net = p.network("pnet", &[]);
    let web = p.run("web", &["--network", &net], &["sleep", "300"]);
    let pod = p.pod("pod", &["--network", &net]);
    let member = p.run("member", &["--pod", &pod], &["sleep", "300"]);
    let infra = p.infra_of(&pod);
    let bridge = p.podman(&["network", "inspect", "-f", "{{.NetworkInterface}}", &net]);

    let pairs =
        common::podman::nettool_plain_json(&["peer", "--all", "--netns", &p.ns.name, "--json"]);
    let pairs = pairs.as_array().unwrap();
    assert_eq!(pairs.len(), 2, "{pairs:?}");
    let mut labels = BTreeSet::new();
    for pair in pairs {
        assert_eq!(pair["host"]["master"], bridge.as_str(), "{pair}");
        // The host side is Podman's host namespace: conmon runs there, yet it is no container.
        assert_eq!(
            pair["host"]["namespace"]["label"],
            p.ns.name.as_str(),
            "{pair}"
        );
        assert_eq!(
            pair["host"]["namespace"]["containers"],
            serde_json::json!([]),
            "{pair}"
        );
        let ns = &pair["peer"]["namespace"];
        labels.insert(ns["label"].as_str().unwrap().to_string());
        if ns["label"] == format!("container:{member}") {
            let cs = ns["containers"].as_array().unwrap();
            let names: Vec<&str> = cs.iter().map(|c| c["name"].as_str().unwrap()).collect();
            assert_eq!(names, [member.as_str(), infra.as_str()], "{ns}");
            assert!(cs
                .iter()
                .all(|c| c["pod"] == pod.as_str() && c["engine"] == "podman"));
            assert_eq!(cs[1]["infra"], true);
        }
    }
    assert_eq!(
        labels,
        BTreeSet::from([format!("container:{web}"), format!("container:{member}")])
    );
    // Reverse, by name through Podman's API on its default socket.
    let rev = common::podman::nettool_plain_json(&["peer", &format!("container:{web}"), "--json"]);
    assert_eq!(rev[0]["peer"]["master"], bridge.as_str(), "{rev}");
    let out = common::podman::nettool_plain(&["peer", "--netns", &p.ns.name, "--all"]);
    assert!(
        text(&out).contains(&format!("container:{web}")),
        "{}",
        text(&out)
    );
}

#[test]
fn cni_container_is_named_by_its_container_id() {
    let host = TestNs::new("pcnih");
    let ctr = TestNs::new("pcnic");
    let a = common::cni::CniAttachment::add(&host, &ctr, "10.77.1.0/24", 18491, 80);
    let pairs =
        common::podman::nettool_plain_json(&["peer", "--all", "--netns", &host.name, "--json"]);
    let pairs = pairs.as_array().unwrap();
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    assert_eq!(pairs[0]["host"]["master"], a.bridge.as_str());
    let ns = &pairs[0]["peer"]["namespace"];
    assert_eq!(ns["containers"][0]["name"], a.container_id.as_str(), "{ns}");
    assert_eq!(ns["containers"][0]["engine"], "cni");
    // Labelled as a TARGET that opens it, by the container id (not its /run/netns name).
    assert_eq!(ns["label"], format!("container:{}", a.container_id));
    assert_eq!(ns["names"][0], ctr.name.as_str());
}
