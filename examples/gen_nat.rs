//! Print a synthetic ruleset (used by tools/gen-nat and to make tests/fixtures).
//! Usage: gen_nat kube SERVICES ENDPOINTS | gen_nat cni CONTAINER_IP SUBNET HOST:CONTAINER...

use nettool::nat::synth;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gen_nat kube SERVICES ENDPOINTS | gen_nat cni CONTAINER_IP SUBNET HOST:CONTAINER...";
    match args.first().map(String::as_str) {
        Some("kube") => {
            let n = |i: usize| args.get(i).and_then(|s| s.parse().ok());
            match (n(1), n(2)) {
                (Some(s), Some(e)) => print!("{}", synth::kube_proxy(s, e)),
                _ => {
                    eprintln!("{usage}");
                    std::process::exit(2);
                }
            }
        }
        Some("cni") if args.len() >= 4 => {
            let mut ports = Vec::new();
            for p in &args[3..] {
                match p
                    .split_once(':')
                    .and_then(|(h, c)| Some((h.parse().ok()?, c.parse().ok()?)))
                {
                    Some(x) => ports.push(x),
                    None => {
                        eprintln!("bad port map '{p}': {usage}");
                        std::process::exit(2);
                    }
                }
            }
            print!("{}", synth::cni_portmap(&args[1], &args[2], &ports));
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
