//! What every command says when it is run without the privileges it needs: once, with the
//! reason and what works instead; and that the commands that need none still work.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_nettool");

/// Run nettool as the unprivileged user nobody (no capabilities).
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("setpriv (util-linux)")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn without_root_every_command_says_so_once_with_the_reason() {
    for (args, instead) in [
        (&["netns", "list"][..], ""),
        (&["-v", "peer", "eth0"][..], ""),
        (&["netns", "inspect", "lo"][..], ""),
        (&["peer", "lo"][..], ""),
        (&["peer", "--all", "--json"][..], ""),
        (
            &["topology", "--format", "text"][..],
            "topology --snapshot FILE",
        ),
        (&["explain-nat"][..], "nettool explain-nat -f"), // the path ends in nettool
        (&["doctor", "8080"][..], "--snapshot FILE"),
        (&["dns", "--duration", "1s"][..], "--read FILE"),
        (&["labs"][..], ""),
        (&["trace", "--duration", "1s"][..], ""),
    ] {
        let out = as_nobody(args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout: {said}");
        let args: Vec<&str> = args.iter().copied().filter(|a| *a != "-v").collect();
        // Not installed here: the hint names the binary by the path that runs it.
        let me = env!("CARGO_BIN_EXE_nettool");
        let cmd = match args[0] {
            "netns" => format!("`{me} netns {}` needs root", args[1]),
            c => format!("`{me} {c}` needs root"),
        };
        assert_eq!(said.matches(&cmd).count(), 1, "{args:?}: {said}");
        assert!(
            said.contains(instead),
            "{args:?} says what works instead: {said}"
        );
        // No OS error (and no "install iptables") standing in for the reason.
        assert!(
            !said.contains("EPERM") && !said.contains("os error"),
            "{args:?}: {said}"
        );
        assert_eq!(said.lines().count(), 1, "{args:?}: one line: {said}");
    }
}

#[test]
fn what_needs_no_privileges_still_works_as_an_unprivileged_user() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nat");
    let file = std::fs::read_dir(fixture)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("docker"))
        .expect("a docker rule set in tests/fixtures/nat");
    let out = as_nobody(&["explain-nat", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("DNAT") || text(&out).contains("ublished"),
        "{}",
        text(&out)
    );
    let out = as_nobody(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out));
    // A recorded snapshot is drawn with no privileges.
    let snap = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/captures/doctor/docker-healthy.json"
    );
    let out = as_nobody(&["topology", "--snapshot", snap]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("docker0 (bridge"), "{}", text(&out));
}

/// `nettool ... | head` must end quietly: stdout is a pipe whose reader is gone.
#[test]
fn a_closed_stdout_ends_a_report_quietly() {
    use std::os::fd::OwnedFd;
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/captures/capture-lab-dns.pcapng"
    );
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nat/docker-host.iptables-save"
    );
    for args in [
        &["dns", "--read", sample][..],
        &["explain-nat", "-f", fixture][..],
        &["completions", "bash"][..],
    ] {
        let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        drop(r);
        let out = Command::new(BIN)
            .args(args)
            .stdout(std::process::Stdio::from(w))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(libc::SIGPIPE),
            "{args:?}: ended by SIGPIPE like other tools: {:?} {err}",
            out.status
        );
    }
}

#[test]
fn an_os_error_is_said_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_nettool"))
        .args(["netns", "inspect", "/nonexistent/ns"])
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert_eq!(said.matches("os error 2").count(), 1, "{said}");
}

/// A proxy pointed at its own listening socket is refused before it binds, with the reason
/// (before: it ran and opened 3392 connections to itself in 3 s for one client). Run as nobody
/// on loopback ports: no privileges needed. A target on another port still starts.
#[test]
fn a_proxy_pointed_at_itself_is_refused() {
    use std::time::{Duration, Instant};
    let p = 20000 + std::process::id() % 20000;
    let (ps, next) = (p.to_string(), (p + 1).to_string());
    let own = format!("127.0.0.1:{p}");
    let spawn = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(BIN)
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Some(output) when it exits within 5 s, None (after a kill) when it keeps running.
    let finish = |mut c: std::process::Child| {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if c.try_wait().unwrap().is_some() {
                return Some(c.wait_with_output().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    };
    let udp = format!("udp:{p}=127.0.0.1:{p}");
    let v6 = format!("[::1]:{p}");
    for args in [
        &["proxy", own.as_str(), own.as_str()][..],
        &["proxy", ps.as_str(), own.as_str()],
        &["proxy", ps.as_str(), v6.as_str()],
        &["proxy", "-p", udp.as_str()],
    ] {
        let out =
            finish(spawn(args)).unwrap_or_else(|| panic!("{args:?} ran on, pointed at itself"));
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains("the target is this proxy's own listening socket")
                && said.matches('\n').count() == 1,
            "{args:?}: {said}"
        );
    }
    let other = format!("127.0.0.1:{next}");
    assert!(
        finish(spawn(&["proxy", own.as_str(), other.as_str()])).is_none(),
        "a proxy to another port must keep running"
    );
}
