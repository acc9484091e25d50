//! tools/bench-nat: time parse + explain + summarise (the summary walks a representative packet
//! for every claim) of a 50,000-rule kube-proxy-style ruleset, IPv4 and IPv6, and one packet
//! walk through it, against an anchor measured in the same run (`iptables-restore --test` /
//! `ip6tables-restore --test` of the same text in a throwaway namespace).
//! Usage: bench_nat [RULES] [ROUNDS] (default 50000 rules, 3 rounds interleaved with the anchor)

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

/// The 1-minute load average (`/proc/loadavg`), printed beside the figures: up to 9 agents
/// share 2 cores here, so only ratios measured side by side mean anything.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// One family: the rule text, and what one round measures.
struct Family {
    v6: bool,
    services: usize,
    text: String,
}

/// One round of one family: parse + summarise (ours) and the anchor, back to back.
struct Round {
    ours: Duration,
    parse: Duration,
    anchor: Option<Duration>,
}

fn family(target: usize, v6: bool) -> Family {
    // 3 endpoints per service: 2 + 3*3 rules per service, plus a NodePort for every third.
    let endpoints = 3;
    let per_service = 2.0 + 3.0 * endpoints as f64 + 1.0 / 3.0;
    let services = (target as f64 / per_service).ceil() as usize;
    Family {
        v6,
        services,
        text: synth::kube_proxy_family(services, endpoints, v6),
    }
}

fn tool(v6: bool) -> &'static str {
    if v6 {
        "ip6tables-restore"
    } else {
        "iptables-restore"
    }
}

fn round(f: &Family) -> Round {
    let t = Instant::now();
    let rs = iptables::parse(&f.text);
    let parse = t.elapsed();
    let summary = explain::summarize(&rs);
    let ours = t.elapsed();
    assert!(!summary.published.is_empty());
    Round {
        ours,
        parse,
        anchor: anchor(tool(f.v6), &f.text),
    }
}

/// Once per family: the sizes, and one packet walk (full words, and quiet as the summary walks).
fn describe(f: &Family) {
    let family = if f.v6 { "IPv6" } else { "IPv4" };
    let rs = iptables::parse(&f.text);
    assert!(rs.problems.is_empty(), "{:?}", rs.problems.first());
    let summary = explain::summarize(&rs);
    let walks: usize = summary
        .published
        .iter()
        .map(|p| p.probes.len())
        .sum::<usize>()
        + summary.drops.iter().filter(|d| d.probe.is_some()).count()
        + summary.flows.len();
    // The worst case for the walk: the last service in KUBE-SERVICES (a linear chain).
    let last = f.services - 1;
    let (a, b) = ((last / 250) % 250, last % 250 + 1);
    let spec = if f.v6 {
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
    let quiet = walk::WalkOptions {
        quiet: true,
        ..Default::default()
    };
    let (t_quiet, _) = best_of(5, || walk::walk_with(&rs, &packet, &facts, &quiet));
    println!(
        "bench-nat {family}: kube-proxy-style ruleset, {} services x 3 endpoints = {} rules, {} KiB; {} published entries, {walks} representative walks",
        f.services,
        rs.rule_count(),
        f.text.len() / 1024,
        summary.published.len()
    );
    println!(
        "  one packet walk {:.3} ms with its words, {:.3} ms quiet (goal < 1 ms: {})   ({} steps, {} -> {})",
        ms(t_walk),
        ms(t_quiet),
        if t_walk < Duration::from_millis(1) {
            "met"
        } else {
            "NOT met"
        },
        w.steps.len(),
        packet,
        w.final_tuple
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let target: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let fams = [family(target, false), family(target, true)];
    for f in &fams {
        describe(f);
    }
    println!(
        "{rounds} rounds, each family then its anchor ({} / {} --test of the same text in a throwaway namespace), interleaved; load at start {}",
        tool(false),
        tool(true),
        load()
    );
    let mut results: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
    for r in 0..rounds {
        for (i, f) in fams.iter().enumerate() {
            let x = round(f);
            println!(
                "  round {} {}: parse + explain + summarise {:7.1} ms (parse {:6.1} ms), anchor {}, load {}",
                r + 1,
                if f.v6 { "IPv6" } else { "IPv4" },
                ms(x.ours),
                ms(x.parse),
                x.anchor
                    .map(|a| format!("{:7.1} ms, ratio {:.2}x", ms(a), x.ours.as_secs_f64() / a.as_secs_f64()))
                    .unwrap_or_else(|| "unavailable (needs root and the iptables package)".into()),
                load()
            );
            results[i].push(x);
        }
    }
    for (i, f) in fams.iter().enumerate() {
        let ours = median(results[i].iter().map(|x| ms(x.ours)).collect());
        let ratios: Vec<f64> = results[i]
            .iter()
            .filter_map(|x| x.anchor.map(|a| x.ours.as_secs_f64() / a.as_secs_f64()))
            .collect();
        println!(
            "median {}: {ours:.1} ms (goal < 1000 ms: {}){}",
            if f.v6 { "IPv6" } else { "IPv4" },
            if ours < 1000.0 {
                "met"
            } else {
                "NOT met at this load"
            },
            if ratios.is_empty() {
                String::new()
            } else {
                format!(", {:.2}x the anchor", median(ratios))
            }
        );
    }
    println!("load at end {}", load());
}
