//! `nettool netns list|inspect|exec` and the core they stand on, against namespaces built here.

mod common;

use common::*;
use nettool::netns::{self, NetNs};

fn find_ns<'a>(list: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    list.as_array()?.iter().find(|n| {
        n["names"]
            .as_array()
            .map(|a| a.iter().any(|x| x == name))
            .unwrap_or(false)
    })
}

#[test]
fn list_shows_named_namespaces_with_nsid_and_interfaces() {
    let a = TestNs::new("lista");
    let b = TestNs::new("listb");
    let (va, vb) = (unique_ifname("la"), unique_ifname("lb"));
    veth(&va, &a, &vb, &b);
    let list = nettool_json(&["netns", "list", "--json"]);
    let na = find_ns(&list, &a.name).expect("namespace a listed");
    let nb = find_ns(&list, &b.name).expect("namespace b listed");
    assert_eq!(na["interfaces"], 2, "lo + veth: {na}");
    assert_eq!(nb["interfaces"], 2);
    assert_ne!(na["id"]["inode"], nb["id"]["inode"]);
    // No process holds them: they are persistent through their /run/netns mount only.
    assert_eq!(na["processes"].as_array().unwrap().len(), 0);
    // The text table names them too.
    let text = nettool_ok(&["netns", "list"]);
    assert!(text.contains(&a.name) && text.contains(&b.name), "{text}");
    assert!(text.lines().next().unwrap().starts_with("INODE"), "{text}");
}

#[test]
fn list_finds_persistent_namespace_mounted_elsewhere() {
    // A namespace kept alive only by a bind mount outside /run/netns (unshare --net=FILE).
    let dir = std::env::temp_dir().join(unique("mnt"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("netns");
    std::fs::write(&file, b"").unwrap();
    sh(&["unshare", &format!("--net={}", file.display()), "true"]);
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // Lazy: a concurrent `nettool netns list` from another test may hold the file open,
            // and a plain umount would then fail with EBUSY and leak the mount.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }
    let _guard = Unmount(file.clone());
    let list = nettool_json(&["netns", "list", "--json"]);
    let found = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| {
            n["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == file.to_str().unwrap())
        })
        .unwrap_or_else(|| panic!("mount {} not listed: {list}", file.display()));
    assert_eq!(found["interfaces"], 1, "only lo: {found}");
    assert!(found["processes"].as_array().unwrap().is_empty());
    // And it can be opened by path.
    let out = nettool_ok(&["netns", "inspect", file.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"]["inode"], found["id"]["inode"]);
}

#[test]
fn list_shows_process_of_unnamed_namespace() {
    // A namespace held only by a process (like a container's).
    let mut child = std::process::Command::new("unshare")
        .args(["--net", "sleep", "30"])
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for("unshare to enter its namespace", 5, || {
        std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
            != std::fs::read_link("/proc/self/ns/net").ok()
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == "sleep")
                .unwrap_or(false)
    });
    let list = nettool_json(&["netns", "list", "--json"]);
    let _ = child.kill();
    let _ = child.wait();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| {
            n["processes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["pid"] == pid)
        })
        .expect("namespace of the unshare'd process listed");
    assert!(
        entry["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["comm"] == "sleep"),
        "{entry}"
    );
    assert!(entry["names"].as_array().unwrap().is_empty());
}

#[test]
fn inspect_resolves_veth_peer_addresses_routes_and_listener() {
    let a = TestNs::new("insa");
    let b = TestNs::new("insb");
    let (va, vb) = (unique_ifname("ia"), unique_ifname("ib"));
    veth(&va, &a, &vb, &b);
    a.ip(&["addr", "add", "10.250.1.1/24", "dev", &va]);
    b.ip(&["addr", "add", "10.250.1.2/24", "dev", &vb]);
    b.ip(&["route", "add", "default", "via", "10.250.1.1"]);
    let _listener = a.spawn(&["socat", "TCP-LISTEN:7431,reuseaddr,fork", "SYSTEM:true"]);
    let ns_a = NetNs::from_name(&a.name).unwrap();
    wait_for("socat listening", 5, || {
        ns_a.run(|| netns::sockets::list(netns::sockets::Which::Listening).unwrap())
            .unwrap()
            .iter()
            .any(|s| s.local.port() == 7431)
    });

    let v = nettool_json(&["netns", "inspect", &a.name, "--json"]);
    let links = v["links"].as_array().unwrap();
    let veth_link = links
        .iter()
        .find(|l| l["name"] == va.as_str())
        .expect("veth listed");
    assert_eq!(veth_link["kind"], "veth");
    let peer = v["veth_peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["local_name"] == va.as_str())
        .unwrap();
    assert_eq!(
        peer["peer_name"],
        vb.as_str(),
        "peer resolved across namespaces: {peer}"
    );
    assert_eq!(peer["peer_ns_label"], b.name.as_str());
    assert!(v["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["address"] == "10.250.1.1" && x["prefix_len"] == 24));
    let sock = v["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["local"] == "0.0.0.0:7431")
        .expect("listener");
    assert_eq!(sock["proto"], "tcp");
    assert!(
        sock["owners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["comm"] == "socat"),
        "{sock}"
    );
    assert!(v["sysctls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "net.ipv4.ip_forward"));

    // The other side: default route via a.
    let vb_json = nettool_json(&["netns", "inspect", &b.name, "--json"]);
    assert!(vb_json["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["destination"].is_null() && r["gateway"] == "10.250.1.1"));

    // Text output carries the same facts.
    let text = nettool_ok(&["netns", "inspect", &a.name]);
    assert!(text.contains(&format!("peer {vb}@if")), "{text}");
    assert!(
        text.contains("0.0.0.0:7431") && text.contains("socat"),
        "{text}"
    );
    assert!(text.contains("10.250.1.0/24 dev"), "{text}");
}

/// `ip -j -n NS ARGS` parsed.
fn ip_json(ns: &TestNs, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ns.ip(&[&["-j"][..], args].concat())).unwrap()
}

#[test]
fn inspect_agrees_with_ip_addr_and_route_in_both_families() {
    let a = TestNs::new("insip");
    let b = TestNs::new("insipb");
    let (va, vb) = (unique_ifname("qa"), unique_ifname("qb"));
    veth(&va, &a, &vb, &b);
    a.ip(&["addr", "add", "10.252.7.1/24", "dev", &va]);
    a.ip(&["addr", "add", "fd77::1/64", "dev", &va, "nodad"]);
    b.ip(&["addr", "add", "10.252.7.2/24", "dev", &vb]);
    a.ip(&["route", "add", "10.252.8.0/24", "via", "10.252.7.2"]);
    a.ip(&["route", "add", "default", "via", "10.252.7.254"]);
    a.ip(&[
        "-6",
        "route",
        "add",
        "fd78::/64",
        "via",
        "fd77::2",
        "metric",
        "50",
    ]);
    // An established connection, shown with -a only.
    let _srv = b.spawn(&["socat", "TCP-LISTEN:7433,reuseaddr", "SYSTEM:sleep 30"]);
    let ns_b = NetNs::from_name(&b.name).unwrap();
    wait_for("socat listening", 5, || {
        ns_b.run(|| netns::sockets::list(netns::sockets::Which::Listening).unwrap())
            .unwrap()
            .iter()
            .any(|s| s.local.port() == 7433)
    });
    let _cli = a.spawn(&["socat", "SYSTEM:sleep 30", "TCP:10.252.7.2:7433"]);

    let v = nettool_json(&["netns", "inspect", &a.name, "--json"]);
    let name_of = |index: &serde_json::Value| -> String {
        v["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["index"] == *index)
            .map(|l| l["name"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    // Addresses: the same (interface, address, prefix) as `ip addr`, IPv4 and IPv6.
    let mut ours: Vec<(String, String, u64)> = v["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                name_of(&x["index"]),
                x["address"].as_str().unwrap().to_string(),
                x["prefix_len"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut theirs: Vec<(String, String, u64)> = ip_json(&a, &["addr", "show"])
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| {
            let name = l["ifname"].as_str().unwrap().to_string();
            l["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |x| {
                    (
                        name.clone(),
                        x["local"].as_str().unwrap().to_string(),
                        x["prefixlen"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    assert!(ours.iter().any(|(_, a, _)| a == "fd77::1"), "{ours:?}");

    // Routes: the main table of both families, as (destination, gateway, device, metric).
    type R = (String, String, String, u64);
    let mut ours: Vec<R> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let dst = match r["destination"].as_str() {
                Some(d) => format!("{d}/{}", r["prefix_len"]),
                None => "default".into(),
            };
            (
                dst,
                r["gateway"].as_str().unwrap_or("").to_string(),
                name_of(&r["oif"]),
                r["metric"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mut theirs: Vec<R> = Vec::new();
    for fam in ["-4", "-6"] {
        for r in ip_json(&a, &[fam, "route", "show", "table", "main"])
            .as_array()
            .unwrap()
        {
            let dst = r["dst"].as_str().unwrap();
            let dst = match (dst, dst.contains('/')) {
                ("default", _) | (_, true) => dst.to_string(),
                (d, false) if fam == "-4" => format!("{d}/32"),
                (d, false) => format!("{d}/128"),
            };
            theirs.push((
                dst,
                r["gateway"].as_str().unwrap_or("").to_string(),
                r["dev"].as_str().unwrap_or("").to_string(),
                r["metric"].as_u64().unwrap_or(0),
            ));
        }
    }
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    assert!(
        theirs
            .iter()
            .any(|r| r.0 == "fd78::/64" && r.1 == "fd77::2" && r.3 == 50),
        "{theirs:?}"
    );

    // The per-interface sysctls that matter (a forwarding=0 on one interface is a real fault).
    let sysctls = v["sysctls"].as_array().unwrap();
    assert!(
        sysctls
            .iter()
            .any(|s| s["name"] == format!("net.ipv4.conf.{va}.forwarding").as_str()),
        "{sysctls:?}"
    );

    // Listeners only by default; with -a the established connection too.
    let est = |v: &serde_json::Value| {
        v["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["state"] == "ESTAB" && s["remote"] == "10.252.7.2:7433")
    };
    wait_for("the connection", 5, || {
        est(&nettool_json(&[
            "netns", "inspect", &a.name, "--json", "-a",
        ]))
    });
    assert!(!est(&v), "{v}");
}

#[test]
fn listener_made_through_in_netns_stays_in_that_namespace() {
    let a = TestNs::new("inl");
    let ns = NetNs::from_name(&a.name).unwrap();
    // Created inside, held by this (test) process, used from here.
    let listener =
        netns::in_netns(&ns, || std::net::TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let port = listener.local_addr().unwrap().port();
    let inside = ns
        .run(|| netns::sockets::list(netns::sockets::Which::Listening).unwrap())
        .unwrap();
    let me = std::process::id();
    let s = inside
        .iter()
        .find(|s| s.local.port() == port)
        .expect("listener visible inside the namespace");
    assert!(
        s.owners.iter().any(|o| o.pid == me),
        "owned by the test process: {s:?}"
    );
    // And not in ours.
    let here = netns::sockets::list(netns::sockets::Which::Listening).unwrap();
    assert!(!here.iter().any(|s| s.local.port() == port
        && s.local.ip().is_loopback()
        && s.inode == inside[0].inode));
    // A connection from inside the namespace reaches it.
    let got = ns
        .run(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        .unwrap();
    assert!(got);
    let v = nettool_json(&["netns", "inspect", &a.name, "--json"]);
    assert!(v["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["local"] == format!("127.0.0.1:{port}")));
}

#[test]
fn exec_runs_inside_and_passes_exit_code() {
    let a = TestNs::new("exa");
    let b = TestNs::new("exb");
    let (va, vb) = (unique_ifname("ea"), unique_ifname("eb"));
    veth(&va, &a, &vb, &b);
    let out = nettool_ok(&["netns", "exec", &a.name, "--", "ip", "-o", "link"]);
    assert!(out.contains(&va) && !out.contains(&vb), "{out}");
    let code = nettool(&["netns", "exec", &a.name, "--", "sh", "-c", "exit 7"])
        .status
        .code();
    assert_eq!(code, Some(7));
    // --sys gives /sys/class/net of the namespace; without it sysfs is the caller's.
    let with_sys = nettool_ok(&[
        "netns",
        "exec",
        "--sys",
        &a.name,
        "--",
        "ls",
        "/sys/class/net",
    ]);
    assert!(with_sys.split_whitespace().any(|n| n == va), "{with_sys}");
    let without = nettool_ok(&["netns", "exec", &a.name, "--", "ls", "/sys/class/net"]);
    assert!(!without.split_whitespace().any(|n| n == va), "{without}");
    // pid: target: enter the namespace of a process living in b.
    let sleeper = b.spawn(&["sleep", "30"]);
    let pid = sleeper.pid();
    // `ip netns exec` enters b, then execs sleep: once comm is sleep, it is inside.
    wait_for("sleeper in b", 5, || {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim() == "sleep")
            .unwrap_or(false)
    });
    let out = nettool_ok(&[
        "netns",
        "exec",
        &format!("pid:{pid}"),
        "--",
        "ip",
        "-o",
        "link",
    ]);
    assert!(out.contains(&vb), "{out}");
}

#[test]
fn unknown_target_is_a_clear_error() {
    let out = nettool(&["netns", "inspect", "nt-test-does-not-exist"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no network namespace matches 'nt-test-does-not-exist'"),
        "{err}"
    );
    assert!(
        err.contains("name:") && err.contains("pid:") && err.contains("container:"),
        "lists what was tried: {err}"
    );
    let out = nettool(&["netns", "inspect", "pid:999999999"]);
    assert_eq!(out.status.code(), Some(1));
    let out = nettool(&["netns", "inspect", "/etc/hostname"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a network namespace"));
    // Usage errors exit 2.
    assert_eq!(nettool(&["netns", "exec", "x"]).status.code(), Some(2));
}

#[test]
fn help_lists_examples_and_completions_work() {
    let help = nettool_ok(&["--help"]);
    assert!(
        help.contains("netns") && help.contains("Examples"),
        "{help}"
    );
    let help = nettool_ok(&["netns", "inspect", "--help"]);
    assert!(help.contains("nettool netns inspect web"));
    let comp = nettool_ok(&["completions", "bash"]);
    assert!(comp.contains("_nettool"), "bash completion script");
    let v = nettool_ok(&["--version"]);
    assert!(v.starts_with("nettool "));
}

/// The `netns list --json` entry of the namespace with this inode.
fn by_inode(list: &serde_json::Value, inode: u64) -> &serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"]["inode"] == inode)
        .unwrap_or_else(|| panic!("inode {inode} not listed: {list}"))
}

fn container_names(n: &serde_json::Value) -> Vec<String> {
    n["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn podman_containers_and_pods_are_named_with_no_environment_variable() {
    let mut p = common::podman::PodmanHost::start("ls-podman");
    let net = p.network("lsnet", &[]);
    let web = p.run(
        "web",
        &["--network", &net, "-p", "18480:80"],
        &["httpd", "-f", "-p", "80"],
    );
    let pod = p.pod("pod", &["--network", &net]);
    let member = p.run("member", &["--pod", &pod], &["sleep", "300"]);
    let infra = p.infra_of(&pod);
    let pid = |c: &str| -> u32 {
        p.podman(&["inspect", "-f", "{{.State.Pid}}", c])
            .parse()
            .unwrap()
    };
    let ns_of = |c: &str| NetNs::from_pid(pid(c)).unwrap().id().inode;

    let list = common::podman::nettool_plain_json(&["netns", "list", "--json"]);
    let w = by_inode(&list, ns_of(&web));
    assert_eq!(container_names(w), [web.as_str()], "{w}");
    assert_eq!(w["containers"][0]["engine"], "podman");
    assert_eq!(w["containers"][0]["id"], p.id(&web).as_str());
    // The pod's namespace: its member first, then its infra, both with the pod's name.
    let pn = by_inode(&list, ns_of(&member));
    assert_eq!(
        container_names(pn),
        [member.as_str(), infra.as_str()],
        "{pn}"
    );
    assert_eq!(pn["containers"][0]["pod"], pod.as_str());
    assert_eq!(pn["containers"][1]["infra"], true);
    // Podman's host runs conmon for each container (cgroup /libpod_parent/POD/conmon): the
    // host namespace is nobody's container.
    let host = by_inode(&list, NetNs::from_name(&p.ns.name).unwrap().id().inode);
    assert!(
        host["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["comm"] == "conmon"),
        "{host}"
    );
    assert_eq!(host["containers"], serde_json::json!([]), "{host}");

    let out = common::podman::nettool_plain(&["netns", "list"]);
    let text = text(&out);
    let row = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no row with {needle}: {text}"))
            .to_string()
    };
    assert!(row(&web).contains("podman"), "{text}");
    let pod_row = row(&member);
    assert!(pod_row.contains(&format!("pod {pod}")), "{pod_row}");
    assert!(pod_row.contains(&infra), "{pod_row}");
}

#[test]
fn container_name_enters_podman_and_lab_containers() {
    let mut p = common::podman::PodmanHost::start("ex-podman");
    let net = p.network("exnet", &["--subnet", "10.89.47.0/24"]);
    let web = p.run(
        "web",
        &["--network", &net, "--ip", "10.89.47.9"],
        &["sleep", "300"],
    );
    let pod = p.pod("pod", &["--network", &net, "--ip", "10.89.47.10"]);
    let member = p.run("member", &["--pod", &pod], &["sleep", "300"]);
    let stopped = p.run("stopped", &["--network", &net], &["sh", "-c", "exit 3"]);
    wait_for("container to exit", 20, || {
        p.podman(&["inspect", "-f", "{{.State.Status}}", &stopped]) == "exited"
    });

    let addr = |target: &str| {
        let out = common::podman::nettool_plain(&[
            "netns", "exec", target, "--", "ip", "-4", "-o", "addr", "show", "eth0",
        ]);
        assert!(out.status.success(), "{target}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(addr(&format!("container:{web}")).contains("10.89.47.9/24"));
    assert!(addr(&format!("container:{member}")).contains("10.89.47.10/24"));
    // An id prefix works like the engine's own.
    let id = p.id(&web);
    assert!(addr(&format!("container:{}", &id[..12])).contains("10.89.47.9/24"));

    // A stopped container says so, with Podman's own command.
    let out = common::podman::nettool_plain(&[
        "netns",
        "exec",
        &format!("container:{stopped}"),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out);
    assert!(
        err.contains(&format!(
            "container {stopped} is exited (code 3): start it with `podman start {stopped}`"
        )),
        "{err}"
    );
    assert!(!err.contains("is not a network namespace"), "{err}");

    // A nettool lab container, by its name.
    let dir = std::env::temp_dir().join(unique("labfile"));
    std::fs::create_dir_all(&dir).unwrap();
    let cname = format!("box{}", std::process::id());
    let file = dir.join("lab.toml");
    std::fs::write(
        &file,
        format!(
            "[lab]\nname = \"x\"\n\n[[network]]\nname = \"n\"\nsubnet = \"172.31.77.0/24\"\n\n\
             [[container]]\nname = \"{cname}\"\nnetwork = \"n\"\naddress = \"172.31.77.5\"\n"
        ),
    )
    .unwrap();
    let (lab, _) = TestLab::isolated("exlab", &[file.to_str().unwrap()]);
    let out = common::podman::nettool_plain(&[
        "netns",
        "exec",
        &format!("container:{cname}"),
        "--",
        "ip",
        "-4",
        "-o",
        "addr",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("172.31.77.5/24"), "{}", text(&out));
    drop(lab);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_stopped_docker_container_says_so_in_dockers_words() {
    let d = common::docker::Dockerd::start("ex-dock");
    d.import_busybox("nt-busybox");
    // A name of its own: a machine-wide Podman container "web" would make `container:web`
    // ambiguous.
    let web = unique("web");
    d.docker(&[
        "run",
        "-d",
        "--name",
        &web,
        "nt-busybox",
        "sh",
        "-c",
        "exit 137",
    ]);
    wait_for("web to exit", 20, || {
        d.docker(&["inspect", "-f", "{{.State.Status}}", &web])
            .trim()
            == "exited"
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(["netns", "exec", &format!("container:{web}"), "--", "true"])
        .env("DOCKER_HOST", d.host())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out);
    assert!(
        err.contains(&format!(
            "container {web} is exited (code 137): start it with `docker start {web}`"
        )),
        "{err}"
    );
    assert!(!err.contains("is not a network namespace"), "{err}");
}

#[test]
fn cni_container_is_named_by_its_id_from_the_cache() {
    let host = TestNs::new("cnihost");
    let ctr = TestNs::new("cnictr");
    let a = common::cni::CniAttachment::add(&host, &ctr, "10.77.0.0/24", 18490, 80);
    let list = common::podman::nettool_plain_json(&["netns", "list", "--json"]);
    let n = by_inode(&list, NetNs::from_name(&ctr.name).unwrap().id().inode);
    assert_eq!(container_names(n), [a.container_id.as_str()], "{n}");
    assert_eq!(n["containers"][0]["engine"], "cni");
    // inspect names the container and its engine, and the host's veth leads to it by name.
    let target = format!("container:{}", a.container_id);
    let v = common::podman::nettool_plain_json(&["netns", "inspect", &target, "--json"]);
    assert_eq!(v["containers"][0]["engine"], "cni", "{v}");
    assert_eq!(v["containers"][0]["id"], a.container_id.as_str(), "{v}");
    let out = common::podman::nettool_plain(&["netns", "inspect", &target]);
    let id12: String = a.container_id.chars().take(12).collect();
    let header = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("containers "))
        .map(String::from);
    assert!(
        header.as_deref().is_some_and(|h| h.contains(&id12)),
        "{}",
        text(&out)
    );
    let short = n["containers"][0]["name"]
        .as_str()
        .map(String::from)
        .unwrap_or(id12);
    let h = common::podman::nettool_plain_json(&["netns", "inspect", &host.name, "--json"]);
    assert!(
        h["veth_peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |p| p["peer_ns_label"] == format!("container:{short}").as_str()
                    && p["peer_name"] == "eth0"
            ),
        "{h}"
    );
    // And it is a TARGET by that id.
    let out = common::podman::nettool_plain(&[
        "netns",
        "exec",
        &format!("container:{}", a.container_id),
        "--",
        "ip",
        "-4",
        "-o",
        "addr",
    ]);
    assert!(
        text(&out).contains(&format!("{}/24", a.ipv4())),
        "{}",
        text(&out)
    );
}

/// A libcni cache entry whose namespace file opens nothing (missing, or the empty file a bind
/// mount was made on: a crashed runtime, /run's mounts gone) is stale, not "running": the
/// commands that take `container:ID` say so and what brings it back, and no namespace is
/// named after it. Before, an empty file counted as a running container's namespace.
#[test]
fn a_stale_cni_entry_whose_namespace_is_gone_or_an_empty_file_is_named_stale() {
    let host = TestNs::new("cnisth");
    let ctr = TestNs::new("cnistc");
    let a = common::cni::CniAttachment::add(&host, &ctr, "10.77.3.0/24", 18489, 80);
    let empty = format!("/run/netns/{}", common::unique("empty"));
    std::fs::write(&empty, "").unwrap();
    let missing = format!("/run/netns/{}", common::unique("missing"));
    for path in [&empty, &missing] {
        let stale = a.plant_stale(path, "10.77.3.200/24");
        let target = format!("container:{}", stale.container_id);
        for args in [
            vec!["netns", "inspect", target.as_str()],
            vec!["netns", "exec", target.as_str(), "--", "true"],
        ] {
            let out = common::podman::nettool_plain(&args);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
            let err = text(&out);
            assert!(
                err.contains("is stale (namespace gone)")
                    && err.contains(path.as_str())
                    && !err.contains("is running"),
                "{path}: {err}"
            );
            assert!(
                err.contains("doctor container:"),
                "what brings it back: {err}"
            );
        }
        let list = common::podman::nettool_plain_json(&["netns", "list", "--json"]);
        let named = list
            .as_array()
            .unwrap()
            .iter()
            .flat_map(container_names)
            .any(|c| c == stale.container_id);
        assert!(!named, "no namespace is the stale entry's: {list}");
        // Nor do peer and topology name it for a namespace.
        for args in [
            vec!["peer", "--all", "--netns", host.name.as_str(), "--json"],
            vec!["topology", "--netns", host.name.as_str(), "--json"],
        ] {
            let out = common::podman::nettool_plain(&args);
            assert!(out.status.success(), "{args:?}: {}", text(&out));
            let t = String::from_utf8_lossy(&out.stdout);
            assert!(
                t.contains(&a.container_id),
                "{args:?} names the live one: {t}"
            );
            assert!(!t.contains(&stale.container_id), "{args:?}: {t}");
        }
        // What the hint points at: doctor on the stale container names it and prints the DEL.
        let out =
            common::podman::nettool_plain(&["doctor", "--netns", &host.name, "--json", &target]);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["diagnosis"]["fault"], "container_not_running", "{r:#}");
        let fix = &r["diagnosis"]["fix"];
        assert!(
            fix["command"]
                .as_str()
                .unwrap_or("")
                .contains("CNI_COMMAND=DEL")
                && fix["then"]["command"]
                    .as_str()
                    .unwrap_or("")
                    .contains("CNI_COMMAND=ADD"),
            "{r:#}"
        );
        // The live container keeps its name.
        let n = by_inode(&list, NetNs::from_name(&ctr.name).unwrap().id().inode);
        assert_eq!(container_names(n), [a.container_id.as_str()], "{n}");
    }
    let _ = std::fs::remove_file(&empty);
}

#[test]
fn kernel_threads_are_counted_not_listed() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(["netns", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = std::fs::metadata("/proc/self/ns/net").unwrap();
    let current = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"]["inode"] == std::os::unix::fs::MetadataExt::ino(&me))
        .unwrap();
    // kthreadd is pid 2 in the initial pid namespace; every kernel thread has PF_KTHREAD.
    let kthreads: Vec<u64> = current["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s[s.rfind(')').unwrap() + 1..].to_string();
                    after.split_whitespace().nth(6)?.parse::<u64>().ok()
                })
                .is_some_and(|f| f & 0x0020_0000 != 0)
        })
        .collect();
    assert!(kthreads.is_empty(), "kernel threads listed: {kthreads:?}");
    assert!(
        current["kernel_threads"].as_u64().unwrap() > 0,
        "they are counted: {current}"
    );
}
