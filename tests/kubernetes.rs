//! The kubectl plugin (deploy/kubectl-nettool) driven by the real kubectl client against a
//! stand-in API server (tests/common/fake_kube_api.py) that records what kubectl sends: the
//! pod `kubectl debug node/...` creates (protobuf, decoded here), the pod of `--via pod` and the
//! DaemonSet (JSON). No cluster can run here, so what a kubelet would do with them is not tested.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use serde_json::Value;

/// The stand-in API server, stopped on drop.
struct FakeApi {
    child: Child,
    dir: PathBuf,
}

impl FakeApi {
    fn start(node: &str) -> Self {
        let dir = std::env::temp_dir().join(common::unique("kube"));
        std::fs::create_dir_all(dir.join("rec")).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/fake_kube_api.py");
        let child = Command::new("python3")
            .arg(&script)
            .arg(dir.join("port"))
            .arg(dir.join("rec"))
            .arg(node)
            .stderr(std::fs::File::create(dir.join("server.err")).unwrap())
            .spawn()
            .expect("python3 runs the stand-in API server");
        let port_file = dir.join("port");
        common::wait_for("stand-in API server", 20, || port_file.exists());
        let port = std::fs::read_to_string(&port_file).unwrap();
        std::fs::write(
            dir.join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
                 users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\n\
                 current-context: c\n"
            ),
        )
        .unwrap();
        FakeApi { child, dir }
    }

    /// Run the plugin as kubectl would find it on PATH, against this server.
    fn plugin(&self, args: &[&str]) -> Output {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let path = format!("{}:{}", deploy.display(), std::env::var("PATH").unwrap());
        Command::new("kubectl")
            .arg("nettool")
            .args(args)
            .env("PATH", path)
            .env_remove("KUBECTL_NETTOOL_IMAGE")
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .env("HOME", &self.dir)
            .output()
            .expect("kubectl (the machine's kubectl client)")
    }

    /// The bodies the server received, in order: (file name, bytes).
    fn recorded(&self) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(self.dir.join("rec"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One protobuf field: its number and either a varint or the bytes of a length-delimited value.
#[derive(Debug, Clone)]
enum Field {
    Varint(u64),
    Bytes(Vec<u8>),
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Decode one protobuf message's top-level fields (wire types 0 and 2 are all a Pod uses here).
fn fields(b: &[u8]) -> Vec<(u64, Field)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i);
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, Field::Varint(varint(b, &mut i)))),
            2 => {
                let len = varint(b, &mut i) as usize;
                out.push((num, Field::Bytes(b[i..i + len].to_vec())));
                i += len;
            }
            1 => i += 8,
            5 => i += 4,
            w => panic!("wire type {w} in a Pod"),
        }
    }
    out
}

fn get(msg: &[u8], num: u64) -> Vec<Field> {
    fields(msg)
        .into_iter()
        .filter(|(n, _)| *n == num)
        .map(|(_, f)| f)
        .collect()
}

fn bytes(f: &Field) -> &[u8] {
    match f {
        Field::Bytes(b) => b,
        Field::Varint(_) => panic!("expected bytes"),
    }
}

fn strings(msg: &[u8], num: u64) -> Vec<String> {
    get(msg, num)
        .iter()
        .map(|f| String::from_utf8(bytes(f).to_vec()).unwrap())
        .collect()
}

fn flag(msg: &[u8], num: u64) -> Option<u64> {
    get(msg, num).iter().find_map(|f| match f {
        Field::Varint(v) => Some(*v),
        _ => None,
    })
}

#[test]
fn debug_node_creates_a_privileged_root_pod_in_the_host_namespaces_running_nettool() {
    let api = FakeApi::start("worker-1");
    let out = api.plugin(&[
        "worker-1",
        "--detach",
        "--image",
        "registry.test/nettool:0.1.0",
        "--",
        "doctor",
        "8080",
    ]);
    let rec = api.recorded();
    assert_eq!(rec.len(), 1, "one pod created: {rec:?} {}", text(&out));
    let body = &rec[0].1;
    // k8s protobuf envelope: "k8s\0" then Unknown{typeMeta=1, raw=2}; raw is the Pod.
    assert_eq!(&body[..4], b"k8s\0", "{}", text(&out));
    let unknown = &body[4..];
    let pod = bytes(&get(unknown, 2)[0]).to_vec();
    let meta = bytes(&get(&pod, 1)[0]).to_vec();
    let name = strings(&meta, 1);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().last(),
        Some(name[0].as_str()),
        "--detach prints the pod kubectl made"
    );
    let spec = bytes(&get(&pod, 2)[0]).to_vec();
    assert_eq!(strings(&spec, 10), ["worker-1"], "nodeName");
    assert_eq!(flag(&spec, 11), Some(1), "hostNetwork");
    assert_eq!(flag(&spec, 12), Some(1), "hostPID");
    let containers = get(&spec, 2);
    assert_eq!(containers.len(), 1);
    let c = bytes(&containers[0]).to_vec();
    assert_eq!(strings(&c, 2), ["registry.test/nettool:0.1.0"], "image");
    assert!(
        strings(&c, 3).is_empty(),
        "the image's entrypoint (nettool) is kept: no command"
    );
    assert_eq!(strings(&c, 4), ["doctor", "8080"], "args");
    let sc = bytes(&get(&c, 15)[0]).to_vec();
    assert_eq!(flag(&sc, 2), Some(1), "privileged (the sysadmin profile)");
    assert_eq!(flag(&sc, 4), Some(0), "runAsUser 0");
    assert_eq!(flag(&sc, 5), Some(0), "runAsNonRoot false");
    let env: Vec<(String, String)> = get(&c, 7)
        .iter()
        .map(|e| {
            let e = bytes(e);
            (strings(e, 1)[0].clone(), strings(e, 2)[0].clone())
        })
        .collect();
    assert!(
        env.contains(&("NETTOOL_HOST_ROOT".into(), "/host".into())),
        "nettool looks for the node's files where kubectl debug mounts them: {env:?}"
    );
}

#[test]
fn via_pod_and_the_daemonset_carry_the_privileges_and_mounts_nettool_needs() {
    let api = FakeApi::start("worker-2");
    let out = api.plugin(&[
        "worker-2", "--via", "pod", "--detach", "-n", "tools", "--", "netns", "list", "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(name.starts_with("nettool-worker-2-"), "{name}");

    let ds_out = api.plugin(&["--daemonset", "--image", "registry.test/nettool:0.1.0"]);
    assert!(ds_out.status.success(), "{}", text(&ds_out));
    let dir = api.dir.join("ds.json");
    std::fs::write(&dir, &ds_out.stdout).unwrap();
    let create = Command::new("kubectl")
        .args(["create", "--validate=false", "-o", "name", "-f"])
        .arg(&dir)
        .env("KUBECONFIG", api.dir.join("kubeconfig"))
        .env("HOME", &api.dir)
        .output()
        .unwrap();
    assert!(create.status.success(), "{}", text(&create));

    let rec = api.recorded();
    assert_eq!(rec.len(), 2, "{rec:?}");
    let pod: serde_json::Value = serde_json::from_slice(&rec[0].1).unwrap();
    assert_eq!(pod["path"], "/api/v1/namespaces/tools/pods");
    let ds: serde_json::Value = serde_json::from_slice(&rec[1].1).unwrap();
    assert_eq!(ds["path"], "/apis/apps/v1/namespaces/nettool/daemonsets");

    let pod_spec = &pod["object"]["spec"];
    assert_eq!(pod["object"]["metadata"]["name"], name.as_str());
    assert_eq!(pod_spec["nodeName"], "worker-2");
    let ds_spec = &ds["object"]["spec"]["template"]["spec"];
    for (what, spec) in [("pod", pod_spec), ("daemonset", ds_spec)] {
        assert_eq!(spec["hostNetwork"], true, "{what}");
        assert_eq!(spec["hostPID"], true, "{what}");
        let c = &spec["containers"][0];
        assert_eq!(c["securityContext"]["privileged"], true, "{what}");
        assert_eq!(c["securityContext"]["runAsUser"], 0, "{what}");
        let run = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/run")
            .unwrap_or_else(|| panic!("{what}: /run mounted"));
        assert_eq!(run["mountPropagation"], "HostToContainer", "{what}");
        let vol = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == run["name"])
            .unwrap();
        assert_eq!(vol["hostPath"]["path"], "/run", "{what}");
    }
    assert_eq!(
        pod_spec["containers"][0]["args"],
        serde_json::json!(["netns", "list", "--json"])
    );
    assert_eq!(
        ds_spec["containers"][0]["args"],
        serde_json::json!(["dns", "--all-netns", "--json"])
    );
    assert_eq!(
        ds_spec["containers"][0]["image"],
        "registry.test/nettool:0.1.0"
    );
}

#[test]
fn plugin_argument_errors_are_usage_errors_that_say_what_to_do() {
    let api = FakeApi::start("n");
    for (args, says) in [
        (&[][..], "which node?"),
        (&["a", "b"][..], "one node at a time"),
        (&["a", "--via", "ssh"][..], "--via takes debug or pod"),
        (&["a", "--bogus"][..], "unknown option '--bogus'"),
        (&["--daemonset", "a"][..], "--daemonset runs on every node"),
        (&["a", "--image"][..], "--image needs a value"),
    ] {
        let out = api.plugin(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    assert!(api.recorded().is_empty(), "nothing was sent");
    let help = api.plugin(&["--help"]);
    assert!(help.status.success());
    assert!(text(&help).contains("kubectl nettool worker-1 -- doctor 30080"));
}

/// The container spec kubectl sent for `kubectl debug` (protobuf, as recorded): its image and args.
fn debug_container(body: &[u8]) -> (Vec<String>, Vec<String>) {
    assert_eq!(&body[..4], b"k8s\0");
    let pod = bytes(&get(&body[4..], 2)[0]).to_vec();
    let spec = bytes(&get(&pod, 2)[0]).to_vec();
    let c = bytes(&get(&spec, 2)[0]).to_vec();
    (strings(&c, 2), strings(&c, 4))
}

/// Every `kubectl nettool ...` line of `text`'s code blocks (a `$ ` prompt dropped), or of its
/// Examples when it is the plugin's --help.
fn documented_lines(text: &str, help: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for l in text.lines() {
        if help && l.starts_with("Examples:") || !help && l.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let l = l.trim().trim_start_matches("$ ");
        if in_code && l.starts_with("kubectl nettool ") {
            out.push(l.to_string());
        }
    }
    out
}

/// Output lines to compare, trimmed, a temporary directory's name made `/tmp/*`.
fn dry_run_lines(t: &str) -> Vec<String> {
    t.lines()
        .map(|l| {
            l.split_whitespace()
                .map(|w| match (w.find("/tmp/"), w.rfind('/')) {
                    (Some(i), Some(j)) if j > i + 4 => format!("{}/tmp/*{}", &w[..i], &w[j..]),
                    _ => w.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn every_documented_plugin_command_runs_as_printed() {
    let api = FakeApi::start("worker-1");
    let help = text(&api.plugin(&["--help"]));
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/kubernetes.md"))
            .unwrap();
    let mut lines = documented_lines(&help, true);
    lines.extend(documented_lines(&docs, false));
    assert!(lines.len() >= 8, "{lines:#?}");
    for line in &lines {
        // `CMD | kubectl apply -f -` and `CMD   # comment`.
        let (cmd, pipe) = match line.split_once(" | ") {
            Some((c, p)) => (c, Some(p.trim())),
            None => (line.as_str(), None),
        };
        let cmd = cmd.split(" #").next().unwrap();
        let argv: Vec<&str> = cmd.split_whitespace().skip(2).collect();
        let nettool_args: Vec<&str> = match argv.iter().position(|a| *a == "--") {
            Some(i) => argv[i + 1..].to_vec(),
            None => Vec::new(),
        };
        let before = api.recorded().len();
        if argv.contains(&"--daemonset") {
            let out = api.plugin(&argv);
            assert!(out.status.success(), "{line}: {}", text(&out));
            assert_eq!(pipe, Some("kubectl apply -f -"), "{line}");
            // What the pipe does, client side only (no schema to fetch from the stand-in).
            let dir = api.dir.join("ds-doc.json");
            std::fs::write(&dir, &out.stdout).unwrap();
            let apply = Command::new("kubectl")
                .args(["apply", "--dry-run=client", "--validate=false", "-f"])
                .arg(&dir)
                .env("KUBECONFIG", api.dir.join("kubeconfig"))
                .env("HOME", &api.dir)
                .output()
                .unwrap();
            assert!(apply.status.success(), "{line}: {}", text(&apply));
            assert!(
                text(&apply).contains("daemonset.apps/nettool created (dry run)"),
                "{line}: {}",
                text(&apply)
            );
            assert_eq!(
                api.recorded().len(),
                before,
                "{line}: a dry run sends nothing"
            );
            continue;
        }
        assert_eq!(pipe, None, "{line}");
        if argv.contains(&"--dry-run") {
            // The docs print this one's output: the same lines, the temporary path aside.
            let out = api.plugin(&argv);
            assert!(out.status.success(), "{line}: {}", text(&out));
            let shown = docs
                .split(&format!("$ {line}\n"))
                .nth(1)
                .and_then(|rest| rest.split("```").next())
                .unwrap_or_else(|| panic!("docs/kubernetes.md shows no output for {line}"));
            assert_eq!(
                dry_run_lines(&String::from_utf8_lossy(&out.stdout)),
                dry_run_lines(shown),
                "{line}: what it prints is what the docs show"
            );
            assert_eq!(
                api.recorded().len(),
                before,
                "{line}: --dry-run sends nothing"
            );
            continue;
        }
        // A node command: started detached (attaching needs a kubelet), then what kubectl sent.
        let mut args = argv.clone();
        if !args.contains(&"--detach") {
            let at = args.iter().position(|a| *a == "--").unwrap_or(args.len());
            args.insert(at, "--detach");
        }
        let out = api.plugin(&args);
        assert!(out.status.success(), "{line}: {}", text(&out));
        let rec = api.recorded();
        assert_eq!(rec.len(), before + 1, "{line}: one pod: {}", text(&out));
        let (file, body) = &rec[before];
        let (image, sent_args) = if file.ends_with(".bin") {
            debug_container(body)
        } else {
            let v: Value = serde_json::from_slice(body).unwrap();
            let c = &v["object"]["spec"]["containers"][0];
            let strs = |x: &Value| -> Vec<String> {
                x.as_array()
                    .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
                    .unwrap_or_else(|| vec![x.as_str().unwrap_or_default().to_string()])
            };
            (strs(&c["image"]), strs(&c["args"]))
        };
        assert_eq!(sent_args, nettool_args, "{line}");
        let want_image = argv
            .iter()
            .position(|a| *a == "--image")
            .map(|i| argv[i + 1])
            .unwrap_or("nettool:latest");
        assert_eq!(image, [want_image], "{line}");
    }
}

/// A cgroup made like the kubelet's (cgroupfs driver), removed on drop.
struct KubeletCgroup {
    dir: PathBuf,
}

impl KubeletCgroup {
    /// `/sys/fs/cgroup/pids/kubepods/besteffort/pod<uid>/<container id>` with `pid` moved in.
    fn new(pod_uid: &str, container_id: &str, pid: u32) -> Self {
        let dir = Path::new("/sys/fs/cgroup/pids/kubepods/besteffort")
            .join(format!("pod{pod_uid}"))
            .join(container_id);
        // Another test's guard may remove the shared parents in between: try again.
        let mut made = std::fs::create_dir_all(&dir);
        for _ in 0..5 {
            if made.is_ok() {
                break;
            }
            made = std::fs::create_dir_all(&dir);
        }
        made.expect("make a cgroup (cgroup v1 pids controller)");
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        KubeletCgroup { dir }
    }
}

impl Drop for KubeletCgroup {
    fn drop(&mut self) {
        // Move whatever is left back to the root, then remove the leaf and its empty parents.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for p in procs.lines() {
                let _ = std::fs::write("/sys/fs/cgroup/pids/cgroup.procs", p);
            }
        }
        let mut d = Some(self.dir.as_path());
        while let Some(dir) = d {
            if dir == Path::new("/sys/fs/cgroup/pids") || std::fs::remove_dir(dir).is_err() {
                break;
            }
            d = dir.parent();
        }
    }
}

/// A Kubernetes node as nettool finds one, with no kubelet running: the node's namespace and a
/// pod's namespace joined by a veth (kn0 10.244.0.1 in the node, eth0 10.244.0.5 in the pod),
/// a process in the pod under a cgroup made like the kubelet's, and the kubelet's log link that
/// names it container `container` of pod `namespace/pod`. Everything goes on drop.
struct FakeNode {
    // Dropped first: the process leaves its cgroup before the cgroup is removed.
    _proc: common::ChildGuard,
    _cg: KubeletCgroup,
    node: common::TestNs,
    pod: common::TestNs,
    /// The container's id (its cgroup's name and its log link's).
    id: String,
    /// Where the node's files go (the log links in logs/), removed on drop.
    dir: PathBuf,
    logs: PathBuf,
}

impl FakeNode {
    fn new(tag: &str, pod_ref: (&str, &str, &str), argv: &[&str]) -> Self {
        let (namespace, pod_name, container) = pod_ref;
        let node = common::TestNs::new(&format!("{tag}n"));
        let pod = common::TestNs::new(&format!("{tag}p"));
        common::veth("kn0", &node, "eth0", &pod);
        node.ip(&["addr", "add", "10.244.0.1/24", "dev", "kn0"]);
        pod.ip(&["addr", "add", "10.244.0.5/24", "dev", "eth0"]);
        pod.ip(&["route", "add", "default", "via", "10.244.0.1"]);
        // `ip netns exec` execs argv: the child's pid is the process in the pod.
        let proc = pod.spawn(argv);
        // Unique per node in this run: a container id and a pod uid.
        let n = common::unique(tag);
        let serial: u64 = n.rsplit('-').next().unwrap().parse().unwrap();
        let id = format!(
            "{:064x}",
            u128::from(std::process::id()) << 64 | u128::from(serial) << 16 | 0xfeed
        );
        let uid = format!("{}_{serial}_2222_3333_444455556666", std::process::id());
        let cg = KubeletCgroup::new(&uid, &id, proc.pid());
        let dir = std::env::temp_dir().join(&n);
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(
            logs.join(format!("{pod_name}_{namespace}_{container}-{id}.log")),
            "",
        )
        .unwrap();
        FakeNode {
            _proc: proc,
            _cg: cg,
            node,
            pod,
            id,
            dir,
            logs,
        }
    }

    /// Run nettool on this node (the kubelet's log links where this node keeps them).
    fn nettool(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nettool"));
        c.args(args)
            .env("NETTOOL_KUBE_LOG_DIR", &self.logs)
            .env("NO_COLOR", "1");
        c
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// kube-proxy's rules for NodePort 30080 of service web/shop to the pod's port 80, in its chain
/// shape (iptables mode): the port is matched in KUBE-NODEPORTS, the DNAT two jumps later in
/// KUBE-SEP-* has no --dport.
const NODEPORT_RULES: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-WEBSHOP - [0:0]
:KUBE-SEP-WEBSHOP1 - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -j MASQUERADE
-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment \"web/shop:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-WEBSHOP
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m comment --comment \"web/shop:http\" -m tcp --dport 30080 -j KUBE-SVC-WEBSHOP
-A KUBE-SVC-WEBSHOP -p tcp -m comment --comment \"web/shop:http\" -m tcp --dport 30080 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEBSHOP -m comment --comment \"web/shop:http -> 10.244.0.5:80\" -j KUBE-SEP-WEBSHOP1
-A KUBE-SEP-WEBSHOP1 -p tcp -m comment --comment \"web/shop:http\" -m tcp -j DNAT --to-destination 10.244.0.5:80
COMMIT
";

#[test]
fn doctor_on_a_node_names_the_pod_and_follows_it_by_pod_or_container_name() {
    let n = FakeNode::new(
        "kdoc",
        ("web", "shop-7d9f", "nginx"),
        &["socat", "TCP-LISTEN:80,fork,reuseaddr", "SYSTEM:echo hi"],
    );
    let rules = n.dir.join("kube-proxy.rules");
    std::fs::write(&rules, NODEPORT_RULES).unwrap();
    common::in_ns(&n.node.name, &["iptables-restore", rules.to_str().unwrap()]);
    // What kube-proxy sets for NodePorts on localhost, and a node forwards.
    common::sysctl(&n.node.name, "net.ipv4.conf.all.route_localnet=1");
    common::sysctl(&n.node.name, "net.ipv4.ip_forward=1");
    common::wait_for("the pod's service listening", 10, || {
        common::in_ns(&n.pod.name, &["ss", "-Htln", "sport", "=", ":80"]).contains("LISTEN")
    });
    for target in [
        "30080",
        "container:nginx",
        "pod:web/shop-7d9f",
        "pod:web/shop-7d9f:80",
    ] {
        let out = n
            .nettool(&["doctor", "--netns", &n.node.name, target])
            .output()
            .unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(0), "doctor {target}: {said}");
        assert!(
            said.contains("rewrites 127.0.0.1:30080 to 10.244.0.5:80"),
            "doctor {target} follows the NodePort: {said}"
        );
        assert!(
            said.contains("listens on 0.0.0.0:80 in pod:web/shop-7d9f")
                && said.contains("in pod:web/shop-7d9f is open"),
            "doctor {target} names the pod: {said}"
        );
        assert!(
            !said.contains(&n.pod.name),
            "the pod, not its namespace's name: {said}"
        );
    }
    let json = n
        .nettool(&[
            "doctor",
            "--netns",
            &n.node.name,
            "pod:web/shop-7d9f",
            "--json",
        ])
        .output()
        .unwrap();
    let v: Value =
        serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&json)));
    assert_eq!(v["destination"]["netns"], "pod:web/shop-7d9f", "{v:#}");
    // A pod no log link names: said so, with what was asked.
    let none = n
        .nettool(&["doctor", "--netns", &n.node.name, "pod:web/nope"])
        .output()
        .unwrap();
    assert_ne!(none.status.code(), Some(0), "{}", text(&none));
    assert!(text(&none).contains("pod 'web/nope'"), "{}", text(&none));
}

#[test]
fn dns_all_netns_names_a_pods_lookups_pod_namespace_name() {
    let n = FakeNode::new("kdns", ("shop", "cart-66b8", "cart"), &["sleep", "300"]);
    let _dnsmasq = n.node.spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=10.244.0.1",
        "--pid-file=",
        "--log-facility=/dev/null",
        "--local=/test/",
        "--host-record=ready.test,10.1.2.3",
    ]);
    let dig = |name: &str| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &n.pod.name])
            .args([
                "dig",
                "+short",
                "+tries=1",
                "+timeout=1",
                "@10.244.0.1",
                name,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    common::wait_for("dnsmasq answering", 10, || {
        dig("ready.test").contains("10.1.2.3")
    });

    // Other tests may look things up meanwhile: this test's own name only.
    let name = format!("kdns{}.test", std::process::id());
    let mut watch = n
        .nettool(&[
            "dns",
            "--all-netns",
            "--json",
            "--no-summary",
            "--timeout",
            "1s",
            "--duration",
            "6s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(watch.stderr.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("capturing in"), "dns did not start: {first}");
    dig(&name);
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let lookups: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v: &Value| v["name"] == name.as_str())
        .collect();
    assert_eq!(lookups.len(), 1, "{lookups:#?}");
    let l = &lookups[0];
    assert_eq!(l["netns"], "pod:shop/cart-66b8", "{l:#}");
    assert_eq!(l["rcode"], "NXDOMAIN", "{l:#}");
    let seen: Vec<&str> = l["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["netns"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["pod:shop/cart-66b8", n.node.name.as_str()], "{l:#}");
}

#[test]
fn pods_on_a_node_are_named_pod_namespace_name_from_the_kubelets_log_links() {
    let n = FakeNode::new("kubepod", ("web", "shop-7d9f", "nginx"), &["sleep", "300"]);
    let list = |env_logs: &Path| -> Value {
        let out = n
            .nettool(&["netns", "list", "--json"])
            .env("NETTOOL_KUBE_LOG_DIR", env_logs)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let ino = std::fs::metadata(n.pod.path()).unwrap().ino();
    let entry = |v: &Value| -> Value {
        v.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"]["inode"] == ino)
            .cloned()
            .unwrap()
    };
    let named = entry(&list(&n.logs));
    let c = &named["containers"][0];
    assert_eq!(c["id"], n.id.as_str(), "{named:#}");
    assert_eq!(c["name"], "nginx", "{named:#}");
    assert_eq!(c["engine"], "kubernetes", "{named:#}");
    assert_eq!(c["pod"], "web/shop-7d9f", "{named:#}");

    let table = n.nettool(&["netns", "list"]).output().unwrap();
    let row = String::from_utf8_lossy(&table.stdout)
        .lines()
        .find(|l| l.contains(&n.pod.name))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.contains("nginx (kubernetes pod web/shop-7d9f)"),
        "{row}"
    );

    // The names it prints are TARGETs every command takes: pod:NS/NAME and container:NAME
    // (the process found by its kubelet cgroup: a log link knows no pid or state).
    for target in ["pod:web/shop-7d9f", "container:nginx"] {
        let out = n
            .nettool(&["netns", "inspect", target, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{target}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v.to_string().contains(&ino.to_string()), "{target}: {v:#}");
    }
    // peer --all and topology name the pod too.
    for args in [
        vec!["peer", "--all"],
        vec!["topology", "--netns", n.node.name.as_str()],
    ] {
        let out = n.nettool(&args).output().unwrap();
        let said = text(&out);
        assert!(out.status.success(), "{args:?}: {said}");
        let line = said.lines().find(|l| l.contains("kn0")).unwrap_or_default();
        assert!(
            said.contains("pod:web/shop-7d9f") && !line.is_empty(),
            "{args:?} names the pod: {said}"
        );
    }

    // Without the kubelet's links the same namespace is only a cgroup id.
    let empty = n.dir.join("no-logs");
    let bare = entry(&list(&empty));
    assert_eq!(bare["containers"][0]["name"], Value::Null, "{bare:#}");

    // A hostNetwork pod (kube-proxy, a CNI agent, nettool's own debug pod) runs in the node's
    // namespace, here this test's: that namespace is the node's, not the pod's.
    let hostnet = common::ChildGuard(Command::new("sleep").arg("300").spawn().unwrap());
    let hid = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xbeef);
    let _hcg = KubeletCgroup::new(
        &format!("{}_4444_hostnet", std::process::id()),
        &hid,
        hostnet.pid(),
    );
    std::fs::write(
        n.logs
            .join(format!("kube-proxy-x1_kube-system_kube-proxy-{hid}.log")),
        "",
    )
    .unwrap();
    let all = list(&n.logs);
    let here = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["current"] == true)
        .unwrap_or_else(|| panic!("{all:#}"));
    // The node's namespace is the kernel threads' one (the tests run in it).
    assert!(here["kernel_threads"].as_u64() > Some(0), "{here:#}");
    assert!(
        !here.to_string().contains(&hid),
        "the node's namespace is not kube-proxy's: {here:#}"
    );
    assert_eq!(entry(&all)["containers"][0]["name"], "nginx");
}

/// A bind mount, unmounted on drop.
struct Bind(PathBuf);

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

#[test]
fn with_the_hosts_root_mounted_elsewhere_named_namespaces_and_pods_are_found_there() {
    // What `kubectl debug node` gives: the node's / at /host, the container's own /run.
    let ns = common::TestNs::new("hostroot");
    let root = std::env::temp_dir().join(common::unique("hostroot"));
    let netns_dir = root.join("run/netns");
    std::fs::create_dir_all(&netns_dir).unwrap();
    let name = format!("node-ns-{}", std::process::id());
    std::fs::write(netns_dir.join(&name), "").unwrap();
    common::sh(&[
        "mount",
        "--bind",
        &ns.path(),
        netns_dir.join(&name).to_str().unwrap(),
    ]);
    let bind = Bind(netns_dir.join(&name));
    let logs = root.join("var/log/containers");
    std::fs::create_dir_all(&logs).unwrap();

    let run = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_nettool"))
            .args(args)
            .env("NETTOOL_HOST_ROOT", &root)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let out = run(&["netns", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ino = std::fs::metadata(ns.path()).unwrap().ino();
    let e = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"]["inode"] == ino)
        .unwrap_or_else(|| panic!("{list:#}"));
    // Only the name it has under the host root: /run/netns of this process is not the host's.
    assert_eq!(e["names"], serde_json::json!([name]), "{e:#}");
    let inspect = run(&["netns", "inspect", &name]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    assert!(text(&inspect).contains("lo"), "{}", text(&inspect));
    drop(bind);
    let _ = std::fs::remove_dir_all(&root);
}
