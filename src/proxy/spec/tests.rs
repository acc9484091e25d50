//! The mapping parser's unit tests: every form, names and zones through a test resolver.

use super::*;

/// A resolver that knows a few names and interfaces: `eth0` is 7 where the listener is
/// made and 9 where the backend sockets are, indexes are taken as written.
struct Fake;
impl Lookup for Fake {
    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        let ips: &[&str] = match name {
            "localhost" => &["::1", "127.0.0.1"],
            "db" => &["10.0.0.2", "10.0.0.3"],
            "away" => &["192.0.2.1", "127.0.0.1"],
            "ll" => &["fe80::5"],
            _ => return Err("Name or service not known".into()),
        };
        Ok(ips.iter().map(|s| s.parse().unwrap()).collect())
    }
    fn zone(&self, listen: bool, zone: &str) -> Result<u32, String> {
        match (zone, listen) {
            ("eth0", true) => Ok(7),
            ("eth0", false) => Ok(9),
            (z, _) => z.parse().map_err(|_| format!("no interface {z}")),
        }
    }
    fn listen_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
    }
}

/// The one mapping `spec` stands for.
fn parse_one(spec: &str) -> Mapping {
    let mut m = parse_map(spec).unwrap().resolve(&Fake).unwrap();
    assert_eq!(m.len(), 1, "{spec}");
    m.remove(0)
}

#[test]
fn forms() {
    let m = parse_one("8080=172.19.0.2:80");
    assert_eq!(
        (m.proto, m.listen_ip, m.listen.first),
        (Proto::Tcp, None, 8080)
    );
    assert_eq!(m.expand().len(), 2);
    let m = parse_one("udp:[::1]:5300-5301=[fd00::2]:53");
    assert_eq!(m.proto, Proto::Udp);
    let e = m.expand();
    assert_eq!(e.len(), 2);
    assert_eq!(e[1].listen, "[::1]:5301".parse().unwrap());
    assert_eq!(e[1].target, "[fd00::2]:53".parse().unwrap());
    let m = parse_one("127.0.0.1:9000-9002=10.0.0.1:7000-7002");
    assert_eq!(m.expand()[2].target, "10.0.0.1:7002".parse().unwrap());
    let m = parse_one("9000=10.0.0.1");
    assert_eq!(m.target.first, 9000);
    assert_eq!(m.to_string(), "tcp:9000=10.0.0.1:9000");
}

#[test]
fn names_are_resolved_listen_on_each_local_address_target_in_order() {
    let m = parse_map("localhost:8080=db:5432")
        .unwrap()
        .resolve(&Fake)
        .unwrap();
    let listens: Vec<_> = m
        .iter()
        .flat_map(|m| m.expand())
        .map(|p| p.listen)
        .collect();
    assert_eq!(
        listens,
        [
            "[::1]:8080".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        ]
    );
    let p = &m[0].expand()[0];
    assert_eq!(p.target, "10.0.0.2:5432".parse().unwrap());
    assert_eq!(
        p.targets().collect::<Vec<_>>()[1],
        "10.0.0.3:5432".parse().unwrap()
    );
    // Only the addresses the listen namespace has; a name alone is a target with the
    // listen side's ports; socat's `TCP:` prefix in any case.
    let m = parse_one("away:80=db");
    assert_eq!(m.listen_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(m.target.first, 80);
    let m = parse_one("udp:5353=UDP:db:53");
    assert_eq!(
        (m.proto, m.target_ip),
        (Proto::Udp, "10.0.0.2".parse().unwrap())
    );
    // A name with none of its addresses here keeps them all: the bind says why.
    let m = parse_map("db:80=10.0.0.1:80")
        .unwrap()
        .resolve(&Fake)
        .unwrap();
    assert_eq!(m.len(), 2);
}

#[test]
fn socat_tcp4_and_tcp6_keep_one_family_of_a_name() {
    let m = parse_one("8080=TCP4:localhost:80");
    assert_eq!(
        (m.target_ip, m.target_more.len()),
        ("127.0.0.1".parse().unwrap(), 0)
    );
    let m = parse_one("8080=tcp6:localhost");
    assert_eq!(
        (m.target_ip, m.target_more.len()),
        ("::1".parse().unwrap(), 0)
    );
    let m = parse_one("udp:53=UDP4:db:53");
    assert_eq!(m.target_more, ["10.0.0.3".parse::<IpAddr>().unwrap()]);
    let m = parse_one("8080=TCP6:[fd00::1]:80");
    assert_eq!(m.target_ip, "fd00::1".parse::<IpAddr>().unwrap());
    let e = parse_map("8080=TCP6:db:80")
        .unwrap()
        .resolve(&Fake)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("'db' has no IPv6 address (the target asks for one: TCP6:)"),
        "{e}"
    );
    for (spec, want) in [
        (
            "8080=TCP6:10.0.0.1:80",
            "the target asks for IPv6 (TCP6:) but its address is IPv4",
        ),
        (
            "8080=udp4:db:80",
            "the target says udp but the mapping is tcp",
        ),
    ] {
        let e = parse_map(spec).unwrap_err().to_string();
        assert!(e.contains(want), "{spec}: {e}");
    }
}

#[test]
fn zones_name_interfaces_where_each_socket_is_made() {
    let m = parse_one("[fe80::1%eth0]:8080=[fe80::2%eth0]:80");
    let p = &m.expand()[0];
    assert_eq!(p.listen, "[fe80::1%7]:8080".parse().unwrap());
    assert_eq!(p.target, "[fe80::2%9]:80".parse().unwrap());
    assert_eq!(m.to_string(), "tcp:[fe80::1%7]:8080=[fe80::2%9]:80");
    let m = parse_one("8080=[fe80::2%3]:80");
    assert_eq!(m.expand()[0].target, "[fe80::2%3]:80".parse().unwrap());
}

#[test]
fn names_and_zones_that_cannot_be_looked_up_are_explained() {
    for (spec, want) in [
        (
            "80=nosuch.invalid:80",
            "cannot resolve 'nosuch.invalid': Name or service not known",
        ),
        ("nosuch:80=1.2.3.4:80", "cannot resolve 'nosuch'"),
        ("80=ll:80", "'ll' resolves to fe80::5, which is link-local"),
        ("80=[fe80::1%eth9]:80", "no interface eth9"),
    ] {
        let e = parse_map(spec)
            .unwrap()
            .resolve(&Fake)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{spec}: {e}");
    }
}

#[test]
fn overlapping_listeners_are_found() {
    let maps = |specs: &[&str]| -> Vec<Mapping> { specs.iter().map(|s| parse_one(s)).collect() };
    let none: &[&[&str]] = &[
        &["8080=10.0.0.1:80", "udp:8080=10.0.0.1:80"],
        &["127.0.0.1:53=10.0.0.1:53", "127.0.0.2:53=10.0.0.1:53"],
        &["[::1]:80=10.0.0.1:80", "127.0.0.1:80=10.0.0.1:80"],
        &["8000-8009=10.0.0.1:80", "8010=10.0.0.1:80"],
    ];
    for specs in none {
        assert!(first_overlap(&maps(specs)).is_none(), "{specs:?}");
    }
    let m = maps(&["8100-8105=10.0.0.1:80", "8103=10.0.0.1:81"]);
    let (a, b, proto, addr) = first_overlap(&m).unwrap();
    assert_eq!((a, b), (&m[0], &m[1]));
    assert_eq!((proto, addr), (Proto::Tcp, "0.0.0.0:8103".parse().unwrap()));
    let m = maps(&["udp:127.0.0.1:53=10.0.0.1:53", "udp:53=10.0.0.2:53"]);
    assert_eq!(first_overlap(&m).unwrap().3, "0.0.0.0:53".parse().unwrap());
    let m = maps(&["[::]:80=10.0.0.1:80", "[::1]:80=10.0.0.1:80"]);
    assert_eq!(first_overlap(&m).unwrap().3, "[::1]:80".parse().unwrap());
}

#[test]
fn a_listener_clashes_only_within_its_family_unless_the_other_is_dual_stack() {
    let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
    assert!(listens_clash(a("0.0.0.0:80"), a("127.0.0.1:80"), false));
    assert!(!listens_clash(a("0.0.0.0:80"), a("127.0.0.1:81"), false));
    assert!(!listens_clash(a("[::]:80"), a("0.0.0.0:80"), false));
    assert!(!listens_clash(a("0.0.0.0:80"), a("[::]:80"), false));
    assert!(listens_clash(a("0.0.0.0:80"), a("[::]:80"), true));
    assert!(listens_clash(
        a("127.0.0.1:80"),
        a("[::ffff:127.0.0.1]:80"),
        true
    ));
    assert!(!listens_clash(
        a("127.0.0.2:80"),
        a("[::ffff:127.0.0.1]:80"),
        true
    ));
    assert!(listens_clash(a("[::1]:80"), a("[::]:80"), false));
}

#[test]
fn mistakes_are_explained() {
    for (spec, want) in [
        ("8080", "missing '='"),
        ("8080=::1:80", "brackets"),
        ("0=1.2.3.4:80", "port 0"),
        ("90-80=1.2.3.4:80", "backwards"),
        ("80-82=1.2.3.4:80-81", "same length"),
        ("sctp:80=1.2.3.4:80", "SCTP"),
        ("80=0.0.0.0:80", "cannot be 0.0.0.0"),
        ("80=a..b:80", "'a..b' is not an IPv4 address or a host name"),
        (
            "[fe80::1]:80=1.2.3.4:80",
            "fe80::1 is link-local: add the interface",
        ),
        ("80=[fe80::1%]:80", "nothing after '%'"),
        ("80=[fd00::1%eth0]:80", "goes only with a link-local"),
        ("80=fe80::1%eth0:80", "in brackets: [fe80::1%eth0]"),
        (
            "udp:80=tcp:1.2.3.4:80",
            "the target says tcp but the mapping is udp",
        ),
        ("localhost=1.2.3.4:80", "the listen side needs a port"),
        ("[::1=1.2.3.4:5", "']'"),
    ] {
        let e = parse_map(spec).unwrap_err().to_string();
        assert!(e.contains(want), "{spec}: {e}");
    }
}

/// No input panics the parser, the lookup or the expansion: seeds of every form, each
/// mutated a few thousand times (bytes changed, inserted, cut; a fixed pseudo-random
/// sequence, so a failure reproduces).
#[test]
fn mutated_mappings_never_panic() {
    let seeds = [
        "8080=172.19.0.2:80",
        "udp:[::1]:5300-5301=[fd00::2]:53",
        "localhost:8080=TCP:db:5432",
        "[fe80::1%eth0]:8080=[fe80::2%3]:80",
        "away:65535=ll",
        "UDP:db.:1-65535=db:1",
        "80=TCP6:localhost:80",
    ];
    let alphabet = b"0123456789abcdef:.[]%=-_ tcpudTCPUDlocahstxX\xff";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for seed in seeds {
        for _ in 0..3000 {
            let mut b = seed.as_bytes().to_vec();
            for _ in 0..=next(3) {
                let at = next(b.len() + 1);
                match next(3) {
                    0 if at < b.len() => b[at] = alphabet[next(alphabet.len())],
                    1 => b.insert(at, alphabet[next(alphabet.len())]),
                    _ if at < b.len() => {
                        b.remove(at);
                    }
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&b);
            if let Ok(spec) = parse_map(&text) {
                if let Ok(maps) = spec.resolve(&Fake) {
                    for m in maps {
                        let _ = (m.expand(), m.to_string());
                    }
                }
            }
        }
    }
}
