//! The mapping parser's unit tests: every form, names and zones through a test resolver.

use super::*;

/// A resolver that knows a few names and interfaces: `eth0` is 7 where the listener is
/// made and 9 where the backend sockets are, indexes are taken as written.
struct Fake;
impl Lookup for Fake {
    fn addresses(&self, name: &str) -> Result<crate::dns::lookup::Answer, String> {
        let ips: &[&str] = match name {
            "localhost" => &["::1", "127.0.0.1"],
            "db" => &["10.0.0.2", "10.0.0.3"],
            "away" => &["192.0.2.1", "127.0.0.1"],
            "ll" => &["fe80::5"],
            _ => return Err("Name or service not known".into()),
        };
        Ok(crate::dns::lookup::Answer {
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ttl: Some(std::time::Duration::from_secs(60)),
        })
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

/// A services file of a few lines as /etc/services writes them (not the machine's: the
/// tests' ports are the file's).
fn services() -> Services {
    Services::from_text(
        "# Network services, Internet style\n\
         http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP\n\
         domain\t\t53/tcp\n\
         domain\t\t53/udp\n\
         ntp\t\t123/udp\n\
         postgresql\t5432/tcp\tpostgres\n\
         http-alt\t8080/tcp\twebcache\n\
         http\t\t8000/tcp\n",
        "/etc/services",
    )
}

/// The one mapping `spec` stands for.
fn parse_one(spec: &str) -> Mapping {
    let mut m = parse_map(spec, &services())
        .unwrap()
        .resolve(&Fake)
        .unwrap();
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
    let m = parse_map("localhost:8080=db:5432", &services())
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
    assert_eq!(p.targets()[1], "10.0.0.3:5432".parse().unwrap());
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
    let m = parse_map("db:80=10.0.0.1:80", &services())
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
    let e = parse_map("8080=TCP6:db:80", &services())
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
        let e = parse_map(spec, &services()).unwrap_err().to_string();
        assert!(e.contains(want), "{spec}: {e}");
    }
}

/// The one listen address of a mapping written with a socat listen form, and its protocol.
fn socat_listen(listen: &str, target: &str) -> (Proto, Vec<SocketAddr>) {
    let text = format!("{listen} {target}");
    let form = listen_form(&text, listen, &services()).unwrap().unwrap();
    let maps = socat_mapping(&text, form, target, &services())
        .unwrap()
        .resolve(&Fake)
        .unwrap();
    let listens = maps
        .iter()
        .flat_map(|m| m.expand())
        .map(|p| p.listen)
        .collect();
    (maps[0].proto, listens)
}

#[test]
fn socat_listen_forms_set_the_protocol_family_and_address() {
    let a = |s: &str| -> Vec<SocketAddr> { vec![s.parse().unwrap()] };
    for (listen, target, want) in [
        // socat's TCP-LISTEN listens on IPv4 unless pf= says otherwise.
        (
            "TCP-LISTEN:8080,fork,reuseaddr",
            "TCP:db:5432",
            (Proto::Tcp, a("0.0.0.0:8080")),
        ),
        (
            "tcp-l:8080,pf=ip6",
            "10.0.0.1:80",
            (Proto::Tcp, a("[::]:8080")),
        ),
        ("TCP4-LISTEN:80", "db", (Proto::Tcp, a("0.0.0.0:80"))),
        ("TCP6-LISTEN:80,fork", "db", (Proto::Tcp, a("[::]:80"))),
        (
            "UDP-LISTEN:5353,fork,reuseaddr",
            "UDP:db:53",
            (Proto::Udp, a("0.0.0.0:5353")),
        ),
        ("UDP4-LISTEN:53", "db:53", (Proto::Udp, a("0.0.0.0:53"))),
        ("UDP6-L:53", "UDP6:[fd00::1]:53", (Proto::Udp, a("[::]:53"))),
        (
            "TCP-LISTEN:8080,bind=127.0.0.1",
            "db:80",
            (Proto::Tcp, a("127.0.0.1:8080")),
        ),
        // IPv6 in bind= with or without brackets; its family is taken.
        (
            "TCP-LISTEN:8080,bind=[::1]",
            "db:80",
            (Proto::Tcp, a("[::1]:8080")),
        ),
        (
            "TCP6-LISTEN:8080,bind=::1",
            "db:80",
            (Proto::Tcp, a("[::1]:8080")),
        ),
        // A bind= name keeps the form's family: localhost is ::1 and 127.0.0.1.
        (
            "TCP-LISTEN:8080,bind=localhost",
            "db:80",
            (Proto::Tcp, a("127.0.0.1:8080")),
        ),
        (
            "TCP6-LISTEN:8080,bind=localhost",
            "db:80",
            (Proto::Tcp, a("[::1]:8080")),
        ),
    ] {
        assert_eq!(socat_listen(listen, target), want, "{listen} {target}");
    }
    // In a -p spec, bind='s own '=' is not the one before the target.
    let m = parse_one("TCP-LISTEN:8080,bind=127.0.0.1,fork=TCP:db:5432");
    assert_eq!(
        (m.listen_ip, m.target_ip),
        (
            Some("127.0.0.1".parse().unwrap()),
            "10.0.0.2".parse().unwrap()
        )
    );
    let m = parse_one("UDP-LISTEN:53,bind=127.0.0.1=UDP:db:53");
    assert_eq!((m.proto, m.target.first), (Proto::Udp, 53));
    assert_eq!(
        parse_one("TCP-L:80=db:80").listen_ip,
        Some(Ipv4Addr::UNSPECIFIED.into())
    );
}

#[test]
fn socat_listen_mistakes_name_what_is_not_taken() {
    for (spec, want) in [
        (
            "TCP-LISTEN:8080,backlog=5=db:80",
            "socat option 'backlog=5' of TCP-LISTEN: is not taken; nettool proxy takes fork and reuseaddr",
        ),
        ("TCP-LISTEN:8080,reuseport=db:80", "does not set SO_REUSEPORT"),
        (
            "UDP-LISTEN:53=TCP:db:53",
            "the target says tcp but the mapping is udp",
        ),
        ("OPENSSL-LISTEN:443=db:80", "socat's OPENSSL-LISTEN: is not taken"),
        ("SCTP-LISTEN:80=db:80", "SCTP is not supported"),
        (
            "TCP4-LISTEN:80,bind=::1=db:80",
            "TCP4-LISTEN: listens on IPv4 but bind= is an IPv6 address",
        ),
        (
            "TCP6-LISTEN:80,pf=ip4=db:80",
            "listens on IPv6 but pf= says ip4",
        ),
        ("TCP-LISTEN:127.0.0.1:80=db:80", "takes a port only"),
        ("TCP-LISTEN:80,bind=127.0.0.1:80=db:80", "give the address alone"),
        ("TCP-LISTEN:80,pf=ipx=db:80", "pf=ipx"),
        ("TCP-LISTEN:80,,fork=db:80", "an empty option"),
        ("TCP-LISTEN:80,fork", "missing '='"),
        ("TCP-LISTEN:80=TCP:db:5432,nodelay", "socat options on the target"),
    ] {
        let e = parse_map(spec, &services()).unwrap_err().to_string();
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
        let e = parse_map(spec, &services())
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
        let e = parse_map(spec, &services()).unwrap_err().to_string();
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
        "TCP-LISTEN:8080,fork,bind=[::1]=UDP:db:53",
        "udp6-l:53,pf=ip6,bind=localhost,reuseaddr=db",
    ];
    let alphabet = b"0123456789abcdef:.[]%=-_,LISTENbind tcpudTCPUDlocahstxX\xff";
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
            if let Ok(spec) = parse_map(&text, &services()) {
                if let Ok(maps) = spec.resolve(&Fake) {
                    for m in maps {
                        let _ = (m.expand(), m.to_string());
                    }
                }
            }
        }
    }
}

/// socat's ports by service name (`TCP-LISTEN:http`, `TCP:db:postgresql`, an alias, a name
/// with a dash), looked up for the form's protocol as socat's getservbyname does; before,
/// "'http' is not a port". A name the file lacks for that protocol is named with the file.
#[test]
fn socat_ports_by_service_name() {
    let port_of = |listen: &str, target: &str| {
        let text = format!("{listen} {target}");
        let form = listen_form(&text, listen, &services()).unwrap().unwrap();
        let m = socat_mapping(&text, form, target, &services()).unwrap();
        (m.proto, m.listen, m.target_host, m.target)
    };
    let one = |p: u16| PortRange { first: p, last: p };
    let db = || Host::Name("db".into());
    assert_eq!(
        port_of("TCP-LISTEN:http,fork", "TCP:db:postgresql"),
        (Proto::Tcp, one(80), db(), one(5432))
    );
    // An alias; the first line for a name wins (http 80, not the later 8000).
    assert_eq!(
        port_of("TCP-LISTEN:www", "TCP:db:postgres"),
        (Proto::Tcp, one(80), db(), one(5432))
    );
    // A name with a dash is a name, not a range; a range is still a range.
    assert_eq!(
        port_of("TCP-LISTEN:http-alt", "db:80"),
        (Proto::Tcp, one(8080), db(), one(80))
    );
    assert_eq!(
        port_of("TCP-LISTEN:8000-8001", "TCP:db:9000-9001"),
        (
            Proto::Tcp,
            PortRange {
                first: 8000,
                last: 8001
            },
            db(),
            PortRange {
                first: 9000,
                last: 9001
            }
        )
    );
    // UDP's own entries; an IPv6 target in brackets; TCP6: keeps its family.
    assert_eq!(
        port_of("UDP-LISTEN:domain", "UDP:[fd00::2]:domain"),
        (
            Proto::Udp,
            one(53),
            Host::Ip("fd00::2".parse().unwrap()),
            one(53)
        )
    );
    let text = "TCP-LISTEN:http TCP6:db:http";
    let form = listen_form(text, "TCP-LISTEN:http", &services())
        .unwrap()
        .unwrap();
    let m = socat_mapping(text, form, "TCP6:db:http", &services()).unwrap();
    assert_eq!((m.target, m.target_v6), (one(80), Some(true)));
    // The -p form.
    let m = parse_map("TCP-LISTEN:http,fork=TCP:10.0.0.2:postgresql", &services()).unwrap();
    assert_eq!((m.listen, m.target), (one(80), one(5432)));
    // A target name with no port keeps the listen ports (no service lookup of the host).
    assert_eq!(
        port_of("TCP-LISTEN:http", "TCP:db"),
        (Proto::Tcp, one(80), db(), one(80))
    );
    // Named with the file: a name it lacks, and one it has for the other protocol only.
    for (listen, target, want) in [
        (
            "TCP-LISTEN:nosuch",
            "TCP:db:80",
            "'nosuch' is not a port (1-65535) nor a tcp service in /etc/services",
        ),
        (
            "TCP-LISTEN:ntp",
            "TCP:db:80",
            "'ntp' is not a port (1-65535) nor a tcp service in /etc/services",
        ),
        (
            "UDP-LISTEN:53",
            "UDP:db:http",
            "'http' is not a port (1-65535) nor a udp service in /etc/services",
        ),
    ] {
        let text = format!("{listen} {target}");
        let e = listen_form(&text, listen, &services())
            .and_then(|f| socat_mapping(&text, f.unwrap(), target, &services()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
    // nettool's own form takes numbers only (names there are hosts).
    assert!(parse_map("http=10.0.0.2:80", &services()).is_err());
    // The file cannot be read: said with the path and the error.
    let none = Services::at(vec![ServicesFile::here("/nonexistent/nt-test-services")]);
    let e = listen_form("TCP-LISTEN:http x", "TCP-LISTEN:http", &none)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "the services file that names ports could not be read (/nonexistent/nt-test-services: "
        ),
        "{e}"
    );
}
