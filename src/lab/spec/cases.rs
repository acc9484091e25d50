//! Test inputs shared by the lab spec parser's parts: one lab file per mistake the parser names,
//! with the exact message it gives (recorded before `parse` was split, so the split shows the
//! texts unchanged), and labs it accepts, whose parsed form is kept in `accepted.golden`.

/// One network `a` on 10.0.0.0/24: most cases add to it.
pub(super) const N: &str = "[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n";

/// (name, lab file text) of every mistake the parser names, one per check.
pub(super) fn mistake_cases() -> Vec<(&'static str, String)> {
    let n = |extra: &str| format!("{N}{extra}");
    let c = |body: &str| format!("{N}[[container]]\nname = \"x\"\n{body}");
    let mut v: Vec<(&'static str, String)> = vec![
        // Reading the file: TOML and the [lab] section.
        ("toml_syntax", "[[network]\n".into()),
        ("toml_unknown_key", n("bogus = 1\n")),
        ("toml_wrong_type", "[[network]]\nname = 5\nsubnet = \"10.0.0.0/24\"\n".into()),
        ("lab_name", "[lab]\nname = \"bad name\"\n".into()),
        ("lab_backend", "[lab]\nbackend = \"pf\"\n".into()),
        // The network section.
        ("net_name", "[[network]]\nname = \"bad name\"\nsubnet = \"10.0.0.0/24\"\n".into()),
        ("net_duplicate", format!("{N}{N}")),
        ("net_subnet_text", "[[network]]\nname = \"a\"\nsubnet = \"ten\"\n".into()),
        ("net_subnet_wide", "[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/7\"\n".into()),
        ("net_subnet_all", "[[network]]\nname = \"a\"\nsubnet = \"0.0.0.0/0\"\n".into()),
        ("net_subnet_small", "[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/31\"\n".into()),
        ("net_subnet_host_bits", "[[network]]\nname = \"a\"\nsubnet = \"10.0.0.1/24\"\n".into()),
        ("net_subnet_overlap", n("[[network]]\nname = \"b\"\nsubnet = \"10.0.0.128/25\"\n")),
        ("net_gateway_text", n("gateway = \"gw\"\n")),
        ("net_gateway_outside", n("gateway = \"10.0.1.1\"\n")),
        ("net_gateway_broadcast", n("gateway = \"10.0.0.255\"\n")),
        ("net_ipv6_text", n("ipv6 = \"v6\"\n")),
        ("net_ipv6_small", n("ipv6 = \"fd00::/121\"\n")),
        ("net_ipv6_host_bits", n("ipv6 = \"fd00::1/64\"\n")),
        ("net_ipv6_overlap", n("ipv6 = \"fd00::/64\"\n[[network]]\nname = \"b\"\nsubnet = \"10.0.1.0/24\"\nipv6 = \"fd00::/80\"\n")),
        ("net_bridge_name", n("bridge = \"br-with-a-long-name\"\n")),
        ("net_bridge_chars", n("bridge = \"br.0\"\n")),
        ("net_bridge_twice", n("bridge = \"br0\"\n[[network]]\nname = \"b\"\nsubnet = \"10.0.1.0/24\"\nbridge = \"br0\"\n")),
        ("net_upstream", n("upstream = \"dns.example\"\n")),
        ("net_mtu", n("mtu = 100\n")),
        // The container section.
        ("ctr_name", format!("{N}[[container]]\nname = \"-x\"\n")),
        ("ctr_duplicate", c("[[container]]\nname = \"x\"\n")),
        ("ctr_mode", c("mode = \"macvlan\"\n")),
        ("ctr_mode_target", c("mode = \"container:y\"\n")),
        ("ctr_mode_self", c("mode = \"container:x\"\n")),
        ("ctr_mode_target_host", c("mode = \"container:h\"\n[[container]]\nname = \"h\"\nmode = \"host\"\n")),
        ("ctr_mode_network", c("mode = \"host\"\nnetwork = \"a\"\n")),
        ("ctr_mode_address", c("mode = \"none\"\naddress = \"10.0.0.9\"\n")),
        ("ctr_mode_address6", c("mode = \"host\"\naddress6 = \"fd00::9\"\n")),
        ("ctr_mode_host_ports", c("mode = \"host\"\nports = [\"80:80\"]\n")),
        ("ctr_mode_none_ports", c("mode = \"none\"\nports = [\"80:80\"]\n")),
        ("ctr_no_network", "[[container]]\nname = \"x\"\n".into()),
        ("ctr_unknown_network", c("network = \"b\"\n")),
        ("ctr_unknown_networks", c("networks = [\"a\", \"b\"]\n")),
        ("ctr_network_twice", c("networks = [\"a\", \"a\"]\n")),
        ("ctr_network_and_networks_twice", c("network = \"a\"\nnetworks = [\"a\"]\n")),
        ("ctr_addresses_not_joined", c("addresses.b = \"10.0.1.2\"\n")),
        ("ctr_alias", c("aliases = [\"a b\"]\n")),
        ("ctr_port", c("ports = [\"80\"]\n")),
        ("ctr_port_zero", c("ports = [\"0:80\"]\n")),
        ("ctr_port_proto", c("ports = [\"80:80/sctp\"]\n")),
        ("ctr_port_ip", c("ports = [\"localhost:80:80\"]\n")),
        ("ctr_port_v6_form", c("ports = [\"[::1:80:80\"]\n")),
        ("ctr_port_v6_host", c("ports = [\"[::1]:80:80\"]\n")),
        ("ctr_port_published", c("ports = [\"8080:80\"]\n[[container]]\nname = \"y\"\nports = [\"127.0.0.1:8080:81\"]\n")),
        ("ctr_port_published_udp_ok_then_tcp", c("ports = [\"53:53/udp\", \"53:53\", \"0.0.0.0:53:54/udp\"]\n")),
        ("ctr_run_quote", c("run = \"echo 'hi\"\n")),
        ("ctr_run_dquote", c("run = 'echo \"hi'\n")),
        ("ctr_run_backslash", c("run = 'echo \\'\n")),
        ("ctr_run_empty", c("run = \"  \"\n")),
        // The address plan: fixed addresses and the next free ones.
        ("addr_text", c("address = \"ten\"\n")),
        ("addr_outside", c("address = \"10.0.1.2\"\n")),
        ("addr_network", c("address = \"10.0.0.0\"\n")),
        ("addr_gateway", c("address = \"10.0.0.1\"\n")),
        ("addr_taken", c("address = \"10.0.0.5\"\n[[container]]\nname = \"y\"\naddress = \"10.0.0.5\"\n")),
        ("addr_taken_by_addresses", c("address = \"10.0.0.5\"\n[[container]]\nname = \"y\"\naddresses.a = \"10.0.0.5\"\n")),
        ("addr6_text", "[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\nipv6 = \"fd00::/64\"\n[[container]]\nname = \"x\"\naddress6 = \"v6\"\n".into()),
        ("addr6_outside", "[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\nipv6 = \"fd00::/64\"\n[[container]]\nname = \"x\"\naddress6 = \"fd01::2\"\n".into()),
        ("addr6_network", "[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\nipv6 = \"fd00::/64\"\n[[container]]\nname = \"x\"\naddress6 = \"fd00::\"\n".into()),
        ("addr6_gateway", "[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\nipv6 = \"fd00::/64\"\n[[container]]\nname = \"x\"\naddress6 = \"fd00::1\"\n".into()),
        ("addr6_no_ipv6", c("address6 = \"fd00::2\"\n")),
        ("addr_full", "[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/30\"\n[[container]]\nname = \"x\"\n[[container]]\nname = \"y\"\n".into()),
        ("addr_full_after_fixed", "[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/30\"\n[[container]]\nname = \"x\"\n[[container]]\nname = \"y\"\naddress = \"10.0.0.2\"\n".into()),
        // Cross-checks over the whole lab.
        ("alias_is_container", c("aliases = [\"y\"]\n[[container]]\nname = \"y\"\n")),
        ("alias_twice", c("aliases = [\"db\"]\n[[container]]\nname = \"y\"\naliases = [\"db\"]\n")),
    ];
    // A /21 holds the 1,024 containers a bridge cannot take.
    let mut many = String::from("[[network]]\nname = \"big\"\nsubnet = \"10.8.0.0/21\"\n");
    for i in 0..1024 {
        many.push_str(&format!("[[container]]\nname = \"c{i}\"\n"));
    }
    v.push(("bridge_ports", many));
    // A /120 holds 254 IPv6 containers (::1 is the gateway), the /23 more than that.
    let mut v6 = String::from(
        "[[network]]\nname = \"a\"\nsubnet = \"10.8.0.0/23\"\nipv6 = \"fd00::/120\"\n",
    );
    for i in 0..256 {
        v6.push_str(&format!("[[container]]\nname = \"c{i}\"\n"));
    }
    v.push(("addr6_full", v6));
    v
}

/// (name, lab file text) of labs the parser accepts: every file in docs/labs and one that uses
/// every key.
pub(super) fn accepted_cases() -> Vec<(&'static str, String)> {
    vec![
        ("default", super::DEFAULT_LAB.into()),
        (
            "docs_udp",
            include_str!("../../../docs/labs/udp.toml").into(),
        ),
        (
            "docs_ipv6",
            include_str!("../../../docs/labs/ipv6.toml").into(),
        ),
        (
            "docs_ten",
            include_str!("../../../docs/labs/ten-containers.toml").into(),
        ),
        (
            "docs_two_networks",
            include_str!("../../../docs/labs/two-networks.toml").into(),
        ),
        (
            "docs_modes",
            include_str!("../../../docs/labs/modes.toml").into(),
        ),
        (
            "every_key",
            r#"
[lab]
name = "all.keys"
description = "every key once"
userland_proxy = false
transparent_proxy = true
backend = "nftables"

[[network]]
name = "front"
bridge = "br-front"
subnet = "10.50.0.0/24"
gateway = "10.50.0.254"
ipv6 = "fd50::/64"
dns = false
upstream = "192.0.2.53"
mtu = 1400

[[network]]
name = "back"
subnet = "10.51.0.0/29"
internal = true
upstream = "[2001:db8::53]:5353"

[[container]]
name = "first"

[[container]]
name = "web"
networks = ["front", "back"]
address = "10.50.0.2"
address6 = "fd50::99"
addresses.back = "10.51.0.3"
aliases = ["www", "site"]
ports = ["8080:80", "127.0.0.1:8443:443/tcp", "5353:53/udp", "127.0.0.2:8443:81"]
run = "sh -c 'echo \"hi there\" && sleep 1' tail\\ word"

[[container]]
name = "side"
mode = "container:web"

[[container]]
name = "lonely"
mode = "none"

[[container]]
name = "hosty"
mode = "host"
run = "true"

[[container]]
name = "last"
network = "front"
"#
            .into(),
        ),
    ]
}

/// What `parse(text, "lab.toml")` says for each case of [`mistake_cases`], by case name.
pub(super) const MISTAKES: &[(&str, &str)] = &[
        ("toml_syntax", "lab.toml:1: invalid table header\nexpected `.`, `]]`"),
        ("toml_unknown_key", "lab.toml:4: unknown field `bogus`, expected one of `name`, `bridge`, `subnet`, `gateway`, `ipv6`, `dns`, `internal`, `upstream`, `mtu`"),
        ("toml_wrong_type", "lab.toml:2: invalid type: integer `5`, expected a string"),
        ("lab_name", "lab.toml:2: lab name 'bad name' must be 1-48 characters of letters, digits, '-', '_', '.', starting with a letter or digit"),
        ("lab_backend", "lab.toml:2: unknown backend 'pf' (iptables or nftables)"),
        ("net_name", "lab.toml:2: network name 'bad name' must be letters, digits, '-', '_', '.'"),
        ("net_duplicate", "lab.toml:5: duplicate network name 'a'"),
        ("net_subnet_text", "lab.toml:3: 'ten' is not an IPv4 subnet like 172.19.0.0/16"),
        ("net_subnet_wide", "lab.toml:3: subnet 10.0.0.0/7 is too wide: a lab network masquerades everything it covers, and /7 covers 2^25 addresses (the host's own routes included); use a /8 or narrower, e.g. 10.99.0.0/16"),
        ("net_subnet_all", "lab.toml:3: subnet 0.0.0.0/0 is too wide: a lab network masquerades everything it covers, and /0 covers every IPv4 address (the host's own routes included); use a /8 or narrower, e.g. 10.99.0.0/16"),
        ("net_subnet_small", "lab.toml:3: subnet 10.0.0.0/31 is too small (at most /30)"),
        ("net_subnet_host_bits", "lab.toml:3: subnet 10.0.0.1/24 has host bits set; did you mean 10.0.0.0/24?"),
        ("net_subnet_overlap", "lab.toml:6: subnet 10.0.0.128/25 of network 'b' overlaps 10.0.0.0/24 of network 'a'"),
        ("net_gateway_text", "lab.toml:4: 'gw' is not an IPv4 address"),
        ("net_gateway_outside", "lab.toml:4: gateway 10.0.1.1 is outside subnet 10.0.0.0/24 (or is its network/broadcast address)"),
        ("net_gateway_broadcast", "lab.toml:4: gateway 10.0.0.255 is outside subnet 10.0.0.0/24 (or is its network/broadcast address)"),
        ("net_ipv6_text", "lab.toml:4: 'v6' is not an IPv6 subnet like fd00:19::/64"),
        ("net_ipv6_small", "lab.toml:4: IPv6 subnet fd00::/121 must be a network address of at most /120"),
        ("net_ipv6_host_bits", "lab.toml:4: IPv6 subnet fd00::1/64 must be a network address of at most /120"),
        ("net_ipv6_overlap", "lab.toml:8: IPv6 subnet fd00::/80 overlaps fd00::/64 of network 'a'"),
        ("net_bridge_name", "lab.toml:4: bridge name 'br-with-a-long-name' must be 1-15 letters, digits, '-' or '_'"),
        ("net_bridge_chars", "lab.toml:4: bridge name 'br.0' must be 1-15 letters, digits, '-' or '_'"),
        ("net_bridge_twice", "lab.toml:8: bridge name 'br0' is used twice"),
        ("net_upstream", "lab.toml:4: upstream 'dns.example' is not an IP or IP:PORT"),
        ("net_mtu", "lab.toml:4: mtu must be between 576 and 65535"),
        ("ctr_name", "lab.toml:5: container name '-x' must be letters, digits, '-', '_', '.'"),
        ("ctr_duplicate", "lab.toml:7: duplicate container name 'x'"),
        ("ctr_mode", "lab.toml:6: unknown mode 'macvlan' (bridge, host, none or container:NAME)"),
        ("ctr_mode_target", "lab.toml:6: mode container:y: no container named 'y' in this lab"),
        ("ctr_mode_self", "lab.toml:6: a container cannot join its own namespace"),
        ("ctr_mode_target_host", "lab.toml:6: mode container:h: 'h' has mode host; only bridge or none containers can be joined"),
        ("ctr_mode_network", "lab.toml:7: container 'x' has mode host: it joins no network (remove network/networks)"),
        ("ctr_mode_address", "lab.toml:7: container 'x' has mode none: it gets no address"),
        ("ctr_mode_address6", "lab.toml:7: container 'x' has mode host: it gets no address"),
        ("ctr_mode_host_ports", "lab.toml:7: container 'x' has mode host: publish ports on the container that owns the namespace (Docker refuses this too)"),
        ("ctr_mode_none_ports", "lab.toml:7: container 'x' has mode none: it has no network to publish from"),
        ("ctr_no_network", "lab.toml:2: container 'x' needs a network, but the lab defines none (add a [[network]])"),
        ("ctr_unknown_network", "lab.toml:6: container 'x': no network named 'b' (networks: a)"),
        ("ctr_unknown_networks", "lab.toml:6: container 'x': no network named 'b' (networks: a)"),
        ("ctr_network_twice", "lab.toml:6: container 'x' joins network 'a' twice"),
        ("ctr_network_and_networks_twice", "lab.toml:7: container 'x' joins network 'a' twice"),
        ("ctr_addresses_not_joined", "lab.toml:6: addresses.b: container 'x' does not join network 'b'"),
        ("ctr_alias", "lab.toml:6: alias 'a b' is not a valid DNS name"),
        ("ctr_port", "lab.toml:6: port '80': expected HOST_PORT:CONTAINER_PORT or HOST_IP:HOST_PORT:CONTAINER_PORT, optionally /udp"),
        ("ctr_port_zero", "lab.toml:6: port '0:80': '0' is not a port (1-65535)"),
        ("ctr_port_proto", "lab.toml:6: port '80:80/sctp': unknown protocol 'sctp' (tcp or udp)"),
        ("ctr_port_ip", "lab.toml:6: port 'localhost:80:80': 'localhost' is not an IP address"),
        ("ctr_port_v6_form", "lab.toml:6: port '[::1:80:80': IPv6 host address must look like [::1]:8080:80"),
        ("ctr_port_v6_host", "lab.toml:6: port '[::1]:80:80': publishing on an IPv6 host address is not supported yet (the lab's DNAT is IPv4); use an IPv4 host address or leave it out"),
        ("ctr_port_published", "lab.toml:9: port 8080/tcp on 127.0.0.1 is already published by container 'x'"),
        ("ctr_port_published_udp_ok_then_tcp", "lab.toml:6: port 53/udp on 0.0.0.0 is already published by container 'x'"),
        ("ctr_run_quote", "lab.toml:6: run: unterminated single quote"),
        ("ctr_run_dquote", "lab.toml:6: run: unterminated double quote"),
        ("ctr_run_backslash", "lab.toml:6: run: trailing backslash"),
        ("ctr_run_empty", "lab.toml:6: run is empty"),
        ("addr_text", "lab.toml:6: 'ten' is not an IPv4 address"),
        ("addr_outside", "lab.toml:6: address 10.0.1.2 of container 'x' is outside subnet 10.0.0.0/24 of network 'a'"),
        ("addr_network", "lab.toml:6: address 10.0.0.0 of container 'x' is outside subnet 10.0.0.0/24 of network 'a'"),
        ("addr_gateway", "lab.toml:6: address 10.0.0.1 of container 'x' is already the gateway of network 'a'"),
        ("addr_taken", "lab.toml:9: address 10.0.0.5 of container 'y' is already container 'x'"),
        ("addr_taken_by_addresses", "lab.toml:9: address 10.0.0.5 of container 'y' is already container 'x'"),
        ("addr6_text", "lab.toml:7: 'v6' is not an IPv6 address"),
        ("addr6_outside", "lab.toml:7: address fd01::2 is outside IPv6 subnet fd00::/64 of network 'a'"),
        ("addr6_network", "lab.toml:7: address fd00:: is outside IPv6 subnet fd00::/64 of network 'a'"),
        ("addr6_gateway", "lab.toml:7: address fd00::1 is already the gateway of network 'a'"),
        ("addr6_no_ipv6", "lab.toml:6: network 'a' has no ipv6 subnet for address6"),
        ("addr_full", "lab.toml:7: subnet 10.0.0.0/30 of network 'a' is full"),
        ("addr_full_after_fixed", "lab.toml:5: subnet 10.0.0.0/30 of network 'a' is full"),
        ("alias_is_container", "lab.toml:6: alias 'y' is already a container name or alias"),
        ("alias_twice", "lab.toml:9: alias 'db' is already a container name or alias"),
        ("bridge_ports", "lab.toml:2: network 'big' has 1024 containers, but a Linux bridge takes at most 1023 ports (the kernel's BR_MAX_PORTS); split them over more networks"),
        ("addr6_full", "lab.toml:514: IPv6 subnet of network 'a' is full"),
];

/// Every mistake case whose name starts with `prefix` gives its recorded message, and there is
/// at least one: each part of the parser checks the cases of its own checks.
pub(super) fn check_mistakes(prefix: &str) {
    let cases: Vec<_> = mistake_cases()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect();
    assert!(!cases.is_empty(), "no case named {prefix}*");
    for (name, text) in cases {
        let want = MISTAKES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no recorded message for {name}"))
            .1;
        match super::parse(&text, "lab.toml") {
            Err(e) => assert_eq!(e.to_string(), want, "case {name}"),
            Ok(_) => panic!("case {name} was accepted; wanted {want}"),
        }
    }
}
