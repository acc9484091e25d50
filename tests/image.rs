//! The nettool image (tools/build-image) run by podman as a host debugging container, next to a
//! real dockerd: what it says about the Docker host must be what the binary on the host says.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use common::docker::Dockerd;
use serde_json::Value;

/// An image built by tools/build-image for this test, removed on drop.
struct Image {
    tag: String,
}

impl Image {
    fn build() -> Self {
        let tag = format!("localhost/{}:test", common::unique("img"));
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // The test binary stands in for the static release one (building that takes minutes);
        // build-image then copies its shared libraries into the image as well.
        let out = Command::new(root.join("tools/build-image"))
            .args(["--bin", env!("CARGO_BIN_EXE_nettool"), "--tag", &tag])
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
        Image { tag }
    }

    /// `podman run` the image the way docs/kubernetes.md tells users to on a Docker host.
    fn run(&self, d: &Dockerd, args: &[&str]) -> Output {
        let dir = d.dir.display().to_string();
        Command::new("podman")
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
            .args(["-v", "/run:/run:rslave", "-v", &format!("{dir}:{dir}")])
            .args([
                "-e",
                &format!("DOCKER_HOST={}", d.host()),
                "-e",
                "NO_COLOR=1",
            ])
            .arg(&self.tag)
            .args(args)
            .output()
            .expect("podman run")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
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
    d.run_busybox_web("web", "8080:80");
    let pid: u32 = d
        .docker(&["inspect", "-f", "{{.State.Pid}}", "web"])
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
    for inode in [web_inode, host_inode] {
        let (h, i) = (ns_entry(&host, inode), ns_entry(&img, inode));
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
    let web = ns_entry(&img, web_inode).to_string();
    assert!(web.contains("web"), "the image names the container: {web}");

    // peer: the container's veth, both ends, alike.
    let veths = |v: &Value| -> Vec<String> {
        let mut rows: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .filter(|r| r.contains(&web_inode.to_string()) || r.contains("\"web\""))
            .collect();
        rows.sort();
        rows
    };
    let hp = veths(&json(
        "peer --all (host)",
        &on_host(&d, &["peer", "--all", "--json"]),
    ));
    let ip = veths(&json(
        "peer --all (image)",
        &image.run(&d, &["peer", "--all", "--json"]),
    ));
    assert!(!hp.is_empty(), "peer --all shows web's veth");
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
    let hops = |v: &Value| -> Vec<(Value, Value, Value)> {
        v["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["id"].clone(), h["verdict"].clone(), h["summary"].clone()))
            .collect()
    };
    assert!(hops(&hd).len() >= 3, "{hd:#}");
    assert_eq!(hops(&hd), hops(&id));
}
