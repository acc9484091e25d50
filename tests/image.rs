//! The nettool image (tools/build-image) run by podman as a host debugging container, next to a
//! real dockerd and a real Podman host: what it says about each host (`netns list`, `peer --all`,
//! `doctor`, `dns --all-netns`) must be what the binary on the host says.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use common::docker::Dockerd;
use common::podman::PodmanHost;
use serde_json::Value;

/// An image built by tools/build-image for this test, removed on drop.
struct Image {
    tag: String,
}

impl Image {
    fn build() -> Self {
        let tag = format!("localhost/{}:test", common::unique("img"));
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // With NETTOOL_TEST_STATIC_IMAGE=1 (tools/test, so CI, sets it after building it once)
        // the image is the one users get: the static build, profile image. Without, the test
        // binary stands in for it (the static build takes minutes) and build-image copies its
        // shared libraries into the image as well.
        let static_build = std::env::var_os("NETTOOL_TEST_STATIC_IMAGE")
            .is_some_and(|v| v != "0" && !v.is_empty());
        let mut build = Command::new(root.join("tools/build-image"));
        if !static_build {
            build.args(["--bin", env!("CARGO_BIN_EXE_nettool")]);
        }
        // No CONTAINER_HOST: set, it makes podman a remote client of that socket.
        let out = build
            .args(["--tag", &tag])
            .env_remove("CONTAINER_HOST")
            .output()
            .expect("tools/build-image");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "tools/build-image: {said}");
        assert!(said.contains(&format!("image {tag}")), "{said}");
        assert!(said.contains(" MB"), "the size is printed: {said}");
        if static_build {
            // "image TAG (revision R): 14.6 MB unpacked, ..."
            let unpacked: f64 = said
                .split(": ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|mb| mb.parse().ok())
                .unwrap_or_else(|| panic!("no size in: {said}"));
            assert!(
                unpacked < 15.0,
                "the image of the static build (profile image) is {unpacked} MB unpacked (goal < 15): {said}"
            );
            assert!(
                !said.contains("dynamically linked"),
                "the static build needs no shared library: {said}"
            );
        }
        Image { tag }
    }

    /// `podman run` the image the way docs/kubernetes.md tells users to on a Docker host.
    fn run(&self, d: &Dockerd, args: &[&str]) -> Output {
        self.command(Some(d), args).output().expect("podman run")
    }

    /// The `podman run` line of docs/kubernetes.md: on a Docker host (DOCKER_HOST names the
    /// test's dockerd) or, with no Docker, on a Podman host (names from the default socket
    /// under /run, no variable).
    fn command(&self, d: Option<&Dockerd>, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.env_remove("CONTAINER_HOST")
            .args([
                "run",
                "--rm",
                "--privileged",
                "--network",
                "host",
                "--pid",
                "host",
            ])
            // This sandbox has no CAP_SYS_RESOURCE (ENGINES.md): podman cannot raise rlimits.
            .args([
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .args(["-v", "/run:/run:rslave", "-e", "NO_COLOR=1"]);
        if let Some(d) = d {
            let dir = d.dir.display().to_string();
            c.args(["-v", &format!("{dir}:{dir}")])
                .args(["-e", &format!("DOCKER_HOST={}", d.host())]);
        }
        c.arg(&self.tag).args(args);
        c
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // tools/build-image tags NAME:latest as well; removing one tag keeps the image.
        let latest = format!(
            "{}:latest",
            self.tag.rsplit_once(':').map_or(&*self.tag, |t| t.0)
        );
        let _ = Command::new("podman")
            .env_remove("CONTAINER_HOST")
            .args(["rmi", "-f", &self.tag, &latest])
            .output();
    }
}

/// The host binary with no engine variable (a Podman host: names from the default socket).
fn on_plain_host(args: &[&str]) -> Output {
    common::podman::nettool_plain(args)
}

fn on_host(d: &Dockerd, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(args)
        .env("DOCKER_HOST", d.host())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn json(what: &str, o: &Output) -> Value {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: {e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// Host and image name these namespaces alike in `netns list --json`.
fn named_alike(host: &Value, img: &Value, inodes: &[u64]) {
    for &inode in inodes {
        let (h, i) = (ns_entry(host, inode), ns_entry(img, inode));
        assert_eq!(h["names"], i["names"], "names of {inode}");
        assert_eq!(
            h.get("container"),
            i.get("container"),
            "container of {inode}"
        );
        assert_eq!(
            h.get("containers"),
            i.get("containers"),
            "containers of {inode}"
        );
    }
}

/// The `peer --all --json` rows that mention this namespace or this text, sorted.
fn rows_naming(v: &Value, inode: u64, text: &str) -> Vec<String> {
    let mut rows: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .filter(|r| r.contains(&inode.to_string()) || r.contains(text))
        .collect();
    rows.sort();
    rows
}

/// doctor's hops as (id, verdict, summary).
fn doctor_hops(v: &Value) -> Vec<(Value, Value, Value)> {
    v["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["id"].clone(), h["verdict"].clone(), h["summary"].clone()))
        .collect()
}

/// The `netns list --json` entry of the namespace with this inode.
fn ns_entry(list: &Value, inode: u64) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"]["inode"] == inode)
        .cloned()
        .unwrap_or_else(|| panic!("no namespace {inode} in {list:#}"))
}

#[test]
fn the_image_names_docker_containers_and_diagnoses_as_the_host_binary_does() {
    let d = Dockerd::start("img-dock");
    // A name of its own: a machine-wide Podman container "web" would be named by it too.
    let web = common::unique("web");
    d.run_busybox_web(&web, "8080:80");
    let pid: u32 = d
        .docker(&["inspect", "-f", "{{.State.Pid}}", &web])
        .trim()
        .parse()
        .unwrap();
    let web_inode = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    let host_inode = std::fs::metadata(d.ns.path()).unwrap().ino();
    let image = Image::build();

    // netns list: the container's namespace and the Docker host's, named alike.
    let host = json(
        "netns list (host)",
        &on_host(&d, &["netns", "list", "--json"]),
    );
    let img = json(
        "netns list (image)",
        &image.run(&d, &["netns", "list", "--json"]),
    );
    named_alike(&host, &img, &[web_inode, host_inode]);
    let entry = ns_entry(&img, web_inode).to_string();
    assert!(
        entry.contains(&web),
        "the image names the container: {entry}"
    );

    // peer: the container's veth, both ends, alike.
    let quoted = format!("\"{web}\"");
    let veths = |v: &Value| rows_naming(v, web_inode, &quoted);
    let hp = veths(&json(
        "peer --all (host)",
        &on_host(&d, &["peer", "--all", "--json"]),
    ));
    let ip = veths(&json(
        "peer --all (image)",
        &image.run(&d, &["peer", "--all", "--json"]),
    ));
    assert!(!hp.is_empty(), "peer --all shows {web}'s veth");
    assert_eq!(hp, ip);

    // doctor: the same verdict, hop for hop.
    let netns = d.ns.path();
    let args = ["doctor", "--netns", &netns, "--json", "8080"];
    common::wait_for("httpd listening", 20, || {
        json("doctor (host)", &on_host(&d, &args))["diagnosis"]["ok"] == true
    });
    let hd = json("doctor (host)", &on_host(&d, &args));
    let id = json("doctor (image)", &image.run(&d, &args));
    assert_eq!(hd["diagnosis"], id["diagnosis"]);
    assert_eq!(hd["destination"], id["destination"]);
    assert!(doctor_hops(&hd).len() >= 3, "{hd:#}");
    assert_eq!(doctor_hops(&hd), doctor_hops(&id));

    // dns --all-netns: web's lookups named alike (sent to the bridge's gateway, where nothing
    // answers: each ends as a timeout after 1 s).
    let gateway = d.docker(&["inspect", "-f", "{{.NetworkSettings.Gateway}}", &web]);
    let gateway = gateway.trim().to_string();
    let name = format!("{}.image.test", common::unique("q"));
    let mut host_cmd = Command::new(env!("CARGO_BIN_EXE_nettool"));
    host_cmd
        .args(DNS_WATCH)
        .env("DOCKER_HOST", d.host())
        .env("NO_COLOR", "1");
    let mut asked = String::new();
    let (hdns, idns) =
        dns_side_by_side(host_cmd, image.command(Some(&d), &DNS_WATCH), &name, || {
            asked = d
                .try_docker(&["exec", "-d", &web, "busybox", "nslookup", &name, &gateway])
                .1;
        });
    dns_named_alike(
        &hdns,
        &idns,
        &name,
        &web,
        &format!("asked {gateway}: {asked}"),
    );
}

/// Each lookup of `name` in `dns --json` output, by (client, id), with the namespace it names.
fn lookups(out: &Output, name: &str) -> std::collections::BTreeMap<(String, u64), String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["name"] == name)
        .map(|v| {
            let key = (v["client"].to_string(), v["id"].as_u64().unwrap_or(0));
            (key, v["netns"].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

/// The lookups both watchers saw name the same namespace, the asker's (`who`). Compared lookup
/// by lookup: one watcher may start a second later than the other and miss the first ones.
fn dns_named_alike(host: &Output, image: &Output, name: &str, who: &str, context: &str) {
    let (h, i) = (lookups(host, name), lookups(image, name));
    let both: Vec<_> = h.keys().filter(|k| i.contains_key(*k)).collect();
    let said = || {
        format!(
            "{context}\nhost:\n{}{}\nimage:\n{}{}",
            String::from_utf8_lossy(&host.stdout),
            String::from_utf8_lossy(&host.stderr),
            String::from_utf8_lossy(&image.stdout),
            String::from_utf8_lossy(&image.stderr)
        )
    };
    assert!(
        both.len() >= 3,
        "at least 3 lookups seen by both: {}",
        said()
    );
    for k in both {
        assert_eq!(
            h[k],
            i[k],
            "lookup {k:?}: host and image name it alike: {}",
            said()
        );
        assert!(
            h[k].contains(who),
            "lookup {k:?} is named for {who}: {}",
            said()
        );
    }
}

/// `dns --all-netns` on the host and in the image at once, while `ask` sends lookups of `name`
/// for a while; returns what each printed.
fn dns_side_by_side(
    on_host: Command,
    mut in_image: Command,
    name: &str,
    mut ask: impl FnMut(),
) -> (Output, Output) {
    let spawn = |mut c: Command| {
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn dns")
    };
    let host = spawn(on_host);
    in_image.stdin(std::process::Stdio::null());
    let image = spawn(in_image);
    // Both watch for 25 s; lookups go out from the 5th to the 20th second (the image starts
    // in a second or two here; a slow start under load still leaves it ten lookups).
    std::thread::sleep(std::time::Duration::from_secs(5));
    for _ in 0..15 {
        ask();
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let host = host.wait_with_output().unwrap();
    let image = image.wait_with_output().unwrap();
    for (what, o) in [("host", &host), ("image", &image)] {
        assert!(
            o.status.success(),
            "dns --all-netns ({what}) for {name}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    (host, image)
}

const DNS_WATCH: [&str; 7] = [
    "dns",
    "--all-netns",
    "--json",
    "--no-summary",
    "--timeout",
    "1s",
    "--duration=25s",
];

#[test]
fn the_image_names_podman_containers_and_diagnoses_as_the_host_binary_does() {
    let mut p = PodmanHost::start("img-pod");
    let net = p.network("imgnet", &[]);
    let web = p.run(
        "web",
        &["--network", &net, "-p", "8080:80"],
        &["httpd", "-f", "-p", "80", "-h", "/"],
    );
    let pid: u32 = p
        .podman(&["inspect", "-f", "{{.State.Pid}}", &web])
        .parse()
        .unwrap();
    let web_inode = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    let host_inode = std::fs::metadata(p.ns.path()).unwrap().ino();
    let image = Image::build();
    let in_image = |args: &[&str]| image.command(None, args).output().expect("podman run");

    // netns list: the container's namespace and the Podman host's, named alike, no variable.
    let host = json(
        "netns list (host)",
        &on_plain_host(&["netns", "list", "--json"]),
    );
    let img = json(
        "netns list (image)",
        &in_image(&["netns", "list", "--json"]),
    );
    named_alike(&host, &img, &[web_inode, host_inode]);
    let entry = ns_entry(&img, web_inode).to_string();
    assert!(
        entry.contains(&web),
        "the image names the Podman container: {entry}"
    );

    // peer: the container's veth, both ends, alike.
    let veths = |v: &Value| rows_naming(v, web_inode, &web);
    let hp = veths(&json(
        "peer --all (host)",
        &on_plain_host(&["peer", "--all", "--json"]),
    ));
    let ip = veths(&json(
        "peer --all (image)",
        &in_image(&["peer", "--all", "--json"]),
    ));
    assert!(!hp.is_empty(), "peer --all shows {web}'s veth");
    assert_eq!(hp, ip);

    // doctor: the same verdict, hop for hop (conmon's reservation socket and netavark's DNAT).
    let netns = p.ns.path();
    let args = ["doctor", "--netns", &netns, "--json", "8080"];
    common::wait_for("httpd listening", 20, || {
        json("doctor (host)", &on_plain_host(&args))["diagnosis"]["ok"] == true
    });
    let hd = json("doctor (host)", &on_plain_host(&args));
    let id = json("doctor (image)", &in_image(&args));
    assert_eq!(hd["diagnosis"], id["diagnosis"]);
    assert_eq!(hd["destination"], id["destination"]);
    assert!(doctor_hops(&hd).len() >= 3, "{hd:#}");
    assert_eq!(doctor_hops(&hd), doctor_hops(&id));

    // dns --all-netns: the container's lookups named alike. Nothing answers on the gateway
    // (DNS is off on the test's network), so each lookup ends as a timeout after 1 s.
    let gateway = p.podman(&[
        "network",
        "inspect",
        "-f",
        "{{range .Subnets}}{{.Gateway}}{{end}}",
        &net,
    ]);
    let name = format!("{}.image.test", common::unique("q"));
    let mut host_cmd = Command::new(env!("CARGO_BIN_EXE_nettool"));
    host_cmd
        .args(DNS_WATCH)
        .env("NO_COLOR", "1")
        .env_remove("DOCKER_HOST")
        .env_remove("CONTAINER_HOST");
    let (hdns, idns) = dns_side_by_side(host_cmd, image.command(None, &DNS_WATCH), &name, || {
        let _ = p.try_podman(&["exec", "-d", &web, "busybox", "nslookup", &name, &gateway]);
    });
    dns_named_alike(&hdns, &idns, &name, &web, "");
}
