//! tools/bench-nat: time parse + explain + summarise (the summary walks a representative packet
//! for every claim) of a 50,000-rule kube-proxy-style ruleset, IPv4 and IPv6, and one packet
//! walk through it, against an anchor measured in the same run (`iptables-restore --test` /
//! `ip6tables-restore --test` of the same text in a throwaway namespace).
//! Usage: bench_nat [RULES] (default 50000)

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nettool::nat::{explain, iptables, synth, walk};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        last = Some(v);
    }
    (best, last.expect("n > 0"))
}

/// `iptables-restore --test` (or ip6tables-restore) of `text` in a throwaway namespace.
fn anchor(tool: &str, text: &str) -> Option<Duration> {
    let t = Instant::now();
    let mut child = Command::new("unshare")
        .args(["--net", tool, "--test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        eprintln!(
            "  anchor failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
        return None;
    }
    Some(t.elapsed())
}

fn run(target: usize, v6: bool) {
    // 3 endpoints per service: 2 + 3*3 rules per service, plus a NodePort for every third.
    let endpoints = 3;
    let per_service = 2.0 + 3.0 * endpoints as f64 + 1.0 / 3.0;
    let services = (target as f64 / per_service).ceil() as usize;
    let text = synth::kube_proxy_family(services, endpoints, v6);
    let family = if v6 { "IPv6" } else { "IPv4" };

    let (t_parse, rs) = best_of(3, || iptables::parse(&text));
    assert!(rs.problems.is_empty(), "{:?}", rs.problems.first());
    let rules = rs.rule_count();
    let (t_summary, summary) = best_of(3, || explain::summarize(&rs));
    let total = t_parse + t_summary;
    let walks: usize = summary
        .published
        .iter()
        .map(|p| p.probes.len())
        .sum::<usize>()
        + summary.drops.iter().filter(|d| d.probe.is_some()).count()
        + summary.flows.len();

    // The worst case for the walk: the last service in KUBE-SERVICES (a linear chain).
    let last = services - 1;
    let (a, b) = ((last / 250) % 250, last % 250 + 1);
    let spec = if v6 {
        format!("tcp [2001:db8:c::77]:40000 -> [fd00:96::{a:x}:{b:x}]:80 in eth0")
    } else {
        format!("tcp 203.0.113.77:40000 -> 10.96.{a}.{b}:80 in eth0")
    };
    let packet = walk::Packet::parse(&spec).unwrap();
    let facts = summary
        .host
        .as_ref()
        .map(|h| h.facts.clone())
        .unwrap_or_default();
    let (t_walk, w) = best_of(5, || walk::walk(&rs, &packet, &facts));

    println!("bench-nat {family}: kube-proxy-style ruleset, {services} services x {endpoints} endpoints = {rules} rules, {} KiB", text.len() / 1024);
    println!("  parse                       {:8.1} ms", ms(t_parse));
    println!(
        "  explain + summarise         {:8.1} ms   ({} published entries, {} services, {walks} representative walks)",
        ms(t_summary),
        summary.published.len(),
        summary.services.len()
    );
    println!(
        "  parse + explain + summarise {:8.1} ms   goal < 1000 ms: {}",
        ms(total),
        if total < Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  one packet walk             {:8.3} ms   goal < 1 ms: {}   ({} steps, {} -> {})",
        ms(t_walk),
        if t_walk < Duration::from_millis(1) {
            "met"
        } else {
            "NOT met"
        },
        w.steps.len(),
        packet,
        w.final_tuple
    );
    let tool = if v6 {
        "ip6tables-restore"
    } else {
        "iptables-restore"
    };
    match anchor(tool, &text) {
        Some(a) => println!(
            "  anchor: {tool} --test of the same text {:8.1} ms; parse+explain+summarise = {:.2}x the anchor; a walk = 1/{:.0} of it",
            ms(a),
            total.as_secs_f64() / a.as_secs_f64(),
            a.as_secs_f64() / t_walk.as_secs_f64().max(1e-9)
        ),
        None => println!("  anchor: {tool} --test unavailable (needs root and the iptables package)"),
    }
}

fn main() {
    let target: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    run(target, false);
    run(target, true);
}
