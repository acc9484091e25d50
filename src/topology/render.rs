//! Renderers of a [`Graph`]: Graphviz DOT, Mermaid, and a text tree for terminals.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use super::{EdgeKind, Graph, InterfaceNode, Listener, NamespaceNode, Node, PublishedNode};

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn listener_str(l: &Listener) -> String {
    let who = l
        .processes
        .first()
        .map(|p| format!(" {}", p.split_once('/').map(|x| x.1).unwrap_or(p)))
        .unwrap_or_default();
    format!("{} {}{}", l.proto, l.address, who)
}

/// Short form for pictures: "tcp *:80 nettool".
fn listener_short(l: &Listener) -> String {
    let who = l
        .processes
        .first()
        .map(|p| format!(" {}", p.split_once('/').map(|x| x.1).unwrap_or(p)))
        .unwrap_or_default();
    if l.address.ip().is_unspecified() {
        format!("{} *:{}{}", l.proto, l.address.port(), who)
    } else {
        format!("{} {}{}", l.proto, l.address, who)
    }
}

/// Listeners of a namespace as pictures show them: wildcard ones go on its interfaces
/// (returned), loopback ones are folded into one title line.
fn picture_listeners(n: &NamespaceNode, has_interfaces: bool) -> (Vec<String>, Vec<&Listener>) {
    let mut title = Vec::new();
    let mut wildcard = Vec::new();
    let mut loopback: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for l in &n.listeners {
        let ip = l.address.ip();
        if ip.is_unspecified() && has_interfaces {
            wildcard.push(l);
        } else if ip.is_loopback() {
            loopback
                .entry(ip)
                .or_default()
                .push(format!("{} {}", l.proto, l.address.port()));
        } else {
            title.push(format!("● listen {}", listener_short(l)));
        }
    }
    for (ip, ports) in loopback {
        title.push(format!("● local {ip}: {}", ports.join(", ")));
    }
    (title, wildcard)
}

/// A container-like namespace: no bridge and at most two drawn interfaces, so its wildcard
/// listeners can be marked on each interface.
fn few_interfaces(g: &Graph, ns: &str) -> bool {
    let n = g.interfaces_in(ns).count();
    n > 0 && n <= 2 && !g.interfaces_in(ns).any(|i| i.kind == "bridge")
}

/// Title lines of a namespace; `picture` leaves listeners out (see [`picture_listeners`]).
fn ns_title_for(n: &NamespaceNode, picture: bool) -> Vec<String> {
    let mut lines = ns_title(n);
    if picture {
        lines.truncate(lines.len() - n.listeners.len());
    }
    lines
}

fn ns_title(n: &NamespaceNode) -> Vec<String> {
    let mut lines = Vec::new();
    let head = if let Some(pod) = &n.pod {
        format!("pod {pod}: container {}", n.containers.join(", "))
    } else if !n.containers.is_empty() {
        format!("container {}", n.containers.join(", "))
    } else {
        n.label.clone()
    };
    lines.push(head);
    let mut second = Vec::new();
    if !n.containers.is_empty() && n.label != format!("container:{}", n.containers[0]) {
        second.push(n.label.clone());
    }
    second.push(format!("netns {}", n.inode));
    lines.push(second.join(" · "));
    if n.containers.is_empty() && !n.processes.is_empty() {
        let mut p: Vec<String> = n.processes.iter().take(3).cloned().collect();
        if n.processes.len() > 3 {
            p.push(format!("+{}", n.processes.len() - 3));
        }
        lines.push(p.join(" "));
    }
    for r in &n.default_routes {
        lines.push(r.clone());
    }
    for l in &n.listeners {
        lines.push(format!("● listen {}", listener_str(l)));
    }
    lines
}

fn if_label(i: &InterfaceNode, wildcard: &[&Listener]) -> Vec<String> {
    let mut lines = vec![format!("{} ({})", i.name, i.kind)];
    if let Some(net) = &i.network {
        lines.push(format!("network \"{net}\""));
    }
    let mut meta = vec![format!("if{}", i.index)];
    if i.mtu != 1500 {
        meta.push(format!("mtu {}", i.mtu));
    }
    if i.state != "up" && i.state != "unknown" {
        meta.push(i.state.clone());
    }
    lines.push(meta.join(" · "));
    lines.extend(i.addresses.iter().cloned());
    for l in i.listeners.iter().chain(wildcard.iter().copied()) {
        lines.push(format!("● listen {}", listener_short(l)));
    }
    if let Some(o) = &i.outside {
        lines.push(format!("→ {o}"));
    }
    lines
}

/// How "host-like" a namespace node is, to draw edges from the host towards containers
/// (Graphviz ranks a directed layout along the edges).
fn hostness(g: &Graph, ns: &str) -> i64 {
    let Some(Node::Namespace(n)) = g.node(ns) else {
        return 0;
    };
    let mut score = g.interfaces_in(ns).count() as i64;
    score += 10 * g.interfaces_in(ns).filter(|i| i.kind == "bridge").count() as i64;
    score += 5 * g.published_in(ns).count() as i64;
    if n.current {
        score += 1000;
    }
    if !n.containers.is_empty() {
        score -= 100;
    }
    score
}

/// An edge as drawn: oriented from the host side, with a label naming both ends.
struct DrawnEdge<'a> {
    from: &'a str,
    to: &'a str,
    kind: EdgeKind,
    label: String,
}

fn drawn_edges(g: &Graph) -> Vec<DrawnEdge<'_>> {
    let ns_of = |id: &str| {
        g.interface(id)
            .map(|i| i.namespace.clone())
            .unwrap_or_default()
    };
    let bridge_ports: HashSet<&str> = g
        .edges
        .iter()
        .filter(|e| e.kind == EdgeKind::BridgePort)
        .map(|e| e.from.as_str())
        .collect();
    g.edges
        .iter()
        .map(|e| match e.kind {
            EdgeKind::Veth => {
                let (a, b) = (e.from.as_str(), e.to.as_str());
                let score = |x: &str| {
                    hostness(g, &ns_of(x)) + if bridge_ports.contains(x) { 10_000 } else { 0 }
                };
                let (from, to) = if score(b) > score(a) { (b, a) } else { (a, b) };
                let label = match (g.interface(from), g.interface(to)) {
                    (Some(f), Some(t)) => {
                        let mut s = format!("{}@if{} ⇄ {}@if{}", f.name, t.index, t.name, f.index);
                        if f.mtu != t.mtu {
                            let _ = write!(s, " (MTU {}≠{}!)", f.mtu, t.mtu);
                        }
                        s
                    }
                    _ => e.label.clone(),
                };
                DrawnEdge {
                    from,
                    to,
                    kind: e.kind,
                    label,
                }
            }
            // Bridge and lower device first, so they sit left of what hangs off them.
            EdgeKind::BridgePort | EdgeKind::Lower => DrawnEdge {
                from: &e.to,
                to: &e.from,
                kind: e.kind,
                label: e.label.clone(),
            },
            EdgeKind::Published => DrawnEdge {
                from: &e.from,
                to: &e.to,
                kind: e.kind,
                label: e.label.clone(),
            },
        })
        .collect()
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", dot_escape(s))
}

/// Graphviz DOT: namespaces as clusters, bridges as hubs, veth pairs as labelled edges,
/// published ports as green arrows (red when nothing listens at the target).
pub(crate) fn to_dot(g: &Graph) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "digraph topology {{");
    let _ = writeln!(
        o,
        "  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=13, nodesep=0.2, ranksep=1.0, newrank=true, labelloc=t, label=\"nettool topology: {}\"];",
        dot_escape(&g.scope)
    );
    let _ = writeln!(
        o,
        "  node [fontname=\"Helvetica\", fontsize=10, shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\", color=\"#555555\", margin=\"0.12,0.04\"];"
    );
    let _ = writeln!(
        o,
        "  edge [fontname=\"Helvetica\", fontsize=9, arrowhead=none, color=\"#4a6fa5\"];"
    );
    let mut nss: Vec<&NamespaceNode> = g.namespaces().collect();
    nss.sort_by_key(|n| (-hostness(g, &n.id), n.label.clone()));
    for (k, n) in nss.iter().enumerate() {
        // Hosts (bridges, or nettool's own namespace) blue-grey; containers cream.
        let host = n.current || g.interfaces_in(&n.id).any(|i| i.kind == "bridge");
        let fill = if host { "#eef2f8" } else { "#f7f7ef" };
        // Containers put their title under their interfaces: edges come in from above-left
        // and would otherwise cross the text.
        let loc = if host { "t" } else { "b" };
        let _ = writeln!(o, "  subgraph cluster_{k} {{");
        let (extra, wildcard) = picture_listeners(n, few_interfaces(g, &n.id));
        let title: String = ns_title_for(n, true)
            .iter()
            .chain(extra.iter())
            .map(|l| dot_escape(l) + "\\l")
            .collect();
        let _ = writeln!(
            o,
            "    label=\"{title}\"; labeljust=l; labelloc={loc}; style=\"rounded,filled\"; fillcolor=\"{fill}\"; color=\"#8899aa\"; fontsize=11;"
        );
        let mut any = false;
        for i in g.interfaces_in(&n.id) {
            any = true;
            let (shape, fill) = match i.kind.as_str() {
                "bridge" => ("ellipse", "#ffe8a8"),
                "veth" => ("box", "#ffffff"),
                "macvlan" | "ipvlan" | "vlan" | "vxlan" | "macvtap" => ("box", "#e6f0ff"),
                "tun" | "tap" => ("box", "#f0e6ff"),
                _ => ("box", "#eeeeee"),
            };
            let pen = if i.listeners.is_empty() && wildcard.is_empty() {
                "1"
            } else {
                "2"
            };
            let label = if_label(i, &wildcard)
                .iter()
                .map(|l| dot_escape(l))
                .collect::<Vec<_>>()
                .join("\\n");
            let _ = writeln!(
                o,
                "    {} [label=\"{label}\", shape={shape}, fillcolor=\"{fill}\", penwidth={pen}];",
                dot_id(&i.id)
            );
        }
        for p in g.published_in(&n.id) {
            any = true;
            let _ = writeln!(
                o,
                "    {} [label=\"{} {}:{}\", shape=cds, fillcolor=\"#d7f0d2\", color=\"#2e7d32\"];",
                dot_id(&p.id),
                p.proto,
                dot_escape(&p.host_ip),
                p.host_port
            );
        }
        if !any {
            // Graphviz does not draw an empty cluster: give it an invisible anchor.
            let _ = writeln!(
                o,
                "    \"{}:empty\" [label=\"\", shape=point, style=invis];",
                dot_escape(&n.id)
            );
        }
        let _ = writeln!(o, "  }}");
    }
    for e in drawn_edges(g) {
        let attrs = match e.kind {
            EdgeKind::Veth => format!(
                "label=\"{}\", penwidth=1.4, headport=w, tailport=e",
                dot_escape(&e.label)
            ),
            EdgeKind::BridgePort => "style=dashed, color=\"#999999\"".to_string(),
            EdgeKind::Lower => format!(
                "label=\"{}\", style=dotted, color=\"#6a4aa5\", fontcolor=\"#6a4aa5\"",
                dot_escape(&e.label)
            ),
            EdgeKind::Published => {
                let listening = g.node(e.from).and_then(|n| match n {
                    Node::Published(p) => p.target_listening,
                    _ => None,
                });
                let (color, note) = match listening {
                    Some(false) => ("#c62828", " (nothing listening)"),
                    _ => ("#2e7d32", ""),
                };
                format!(
                    "label=\"{}{note}\", arrowhead=normal, color=\"{color}\", fontcolor=\"{color}\", penwidth=1.8, headport=w",
                    dot_escape(&e.label)
                )
            }
        };
        let _ = writeln!(o, "  {} -> {} [{attrs}];", dot_id(e.from), dot_id(e.to));
    }
    let _ = writeln!(o, "}}");
    o
}

fn mm_id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn mm_text(s: &str) -> String {
    s.replace('"', "#quot;")
}

/// Mermaid flowchart for pasting into Markdown.
pub(crate) fn to_mermaid(g: &Graph) -> String {
    let mut o = String::from("flowchart LR\n");
    let mut nss: Vec<&NamespaceNode> = g.namespaces().collect();
    nss.sort_by_key(|n| (-hostness(g, &n.id), n.label.clone()));
    for n in nss {
        let (extra, wildcard) = picture_listeners(n, few_interfaces(g, &n.id));
        let mut title = ns_title_for(n, true);
        title.extend(extra);
        let _ = writeln!(
            o,
            "  subgraph {}[\"{}\"]",
            mm_id(&n.id),
            mm_text(&title.join("<br/>"))
        );
        let mut any = false;
        for i in g.interfaces_in(&n.id) {
            any = true;
            let text = mm_text(&if_label(i, &wildcard).join("<br/>"));
            if i.kind == "bridge" {
                let _ = writeln!(o, "    {}((\"{}\"))", mm_id(&i.id), text);
            } else {
                let _ = writeln!(o, "    {}[\"{}\"]", mm_id(&i.id), text);
            }
        }
        for p in g.published_in(&n.id) {
            any = true;
            let _ = writeln!(
                o,
                "    {}>\"{} {}:{}\"]",
                mm_id(&p.id),
                p.proto,
                mm_text(&p.host_ip),
                p.host_port
            );
        }
        if !any {
            let _ = writeln!(o, "    {}_empty[\" \"]", mm_id(&n.id));
        }
        let _ = writeln!(o, "  end");
    }
    for e in drawn_edges(g) {
        let (a, b) = (mm_id(e.from), mm_id(e.to));
        let line = match e.kind {
            EdgeKind::Veth => format!("  {a} ---|\"{}\"| {b}", mm_text(&e.label)),
            EdgeKind::BridgePort => format!("  {a} -.- {b}"),
            EdgeKind::Lower => format!("  {a} -.-|\"{}\"| {b}", mm_text(&e.label)),
            EdgeKind::Published => format!("  {a} ==>|\"{}\"| {b}", mm_text(&e.label)),
        };
        let _ = writeln!(o, "{line}");
    }
    o
}

/// A text tree for terminals: each namespace, its interfaces and where each one leads.
pub(crate) fn to_text(g: &Graph) -> String {
    let mut o = String::new();
    let names: HashMap<&str, (String, String, &str)> = g
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Interface(i) => {
                let ns = g
                    .node(&i.namespace)
                    .and_then(|n| match n {
                        Node::Namespace(x) => Some(x.label.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let same = i.namespace.as_str();
                Some((
                    i.id.as_str(),
                    (format!("{} (if{})", i.name, i.index), ns, same),
                ))
            }
            _ => None,
        })
        .collect();
    let mut nss: Vec<&NamespaceNode> = g.namespaces().collect();
    // The current namespace first, then hosts (bridges, many links), then containers.
    nss.sort_by_key(|n| (-hostness(g, &n.id), n.label.clone()));
    for n in nss {
        let title = ns_title(n);
        let _ = writeln!(o, "{} [{}]", title[0], title[1]);
        for extra in &title[2..] {
            let _ = writeln!(o, "│   {extra}");
        }
        let items: Vec<&InterfaceNode> = g.interfaces_in(&n.id).collect();
        let pubs: Vec<&PublishedNode> = g.published_in(&n.id).collect();
        let total = items.len() + pubs.len();
        for (k, i) in items.iter().enumerate() {
            let last = k + 1 == total;
            let (branch, cont) = if last {
                ("└─", "   ")
            } else {
                ("├─", "│  ")
            };
            let mut line = format!("{branch} {} ({}, if{})", i.name, i.kind, i.index);
            if let Some(net) = &i.network {
                let _ = write!(line, "  network \"{net}\"");
            }
            if !i.addresses.is_empty() {
                let _ = write!(line, "  {}", i.addresses.join(" "));
            }
            if i.mtu != 1500 {
                let _ = write!(line, "  mtu {}", i.mtu);
            }
            if i.state != "up" && i.state != "unknown" {
                let _ = write!(line, "  [{}]", i.state);
            }
            let _ = writeln!(o, "{line}");
            for e in &g.edges {
                let other = if e.from == i.id {
                    &e.to
                } else if e.to == i.id {
                    &e.from
                } else {
                    continue;
                };
                // "name (ifN)", plus "in NS" when it lives in another namespace.
                let far = |id: &str| match names.get(id) {
                    Some((name, ns, nsid)) if *nsid != i.namespace => format!("{name} in {ns}"),
                    Some((name, _, _)) => name.clone(),
                    None => id.to_string(),
                };
                let desc = match e.kind {
                    EdgeKind::Veth => {
                        let mut d = format!("⇄ {}", far(other));
                        if let Some(mtu) = g.interface(other).map(|x| x.mtu).filter(|m| *m != i.mtu)
                        {
                            let _ = write!(d, "  MTU {}≠{}!", i.mtu, mtu);
                        }
                        d
                    }
                    EdgeKind::BridgePort if e.from == i.id => format!("port of {}", far(other)),
                    EdgeKind::BridgePort => continue,
                    EdgeKind::Lower if e.from == i.id => format!("{} on {}", i.kind, far(other)),
                    EdgeKind::Lower => format!("lower device of {}", far(other)),
                    EdgeKind::Published => format!("◀ published {}", e.label),
                };
                let _ = writeln!(o, "{cont}  {desc}");
            }
            for l in &i.listeners {
                let _ = writeln!(o, "{cont}  ● listen {}", listener_str(l));
            }
            if let Some(x) = &i.outside {
                let _ = writeln!(o, "{cont}  → {x} (not drawn)");
            }
        }
        for (k, p) in pubs.iter().enumerate() {
            let last = items.len() + k + 1 == total;
            let branch = if last { "└─" } else { "├─" };
            let to = g
                .edges
                .iter()
                .find(|e| e.from == p.id)
                .and_then(|e| names.get(e.to.as_str()))
                .map(|(name, ns, _)| format!("{name} in {ns}"))
                .unwrap_or_else(|| "(target not drawn)".into());
            let state = match p.target_listening {
                Some(true) => "",
                Some(false) => "  NOTHING LISTENING",
                None => "",
            };
            let _ = writeln!(
                o,
                "{branch} published {} {}:{} → {} via {}  [{}]{state}",
                p.proto,
                p.host_ip,
                p.host_port,
                p.target,
                to,
                p.via.join("; ")
            );
        }
        let _ = writeln!(o);
    }
    if g.hidden_empty_namespaces > 0 {
        let _ = writeln!(
            o,
            "({} namespaces holding only lo not shown; --include-empty shows them)",
            g.hidden_empty_namespaces
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::super::{collect, CollectOptions, Scope};
    use super::*;
    use crate::facts::{self, Snapshot};

    fn capture(name: &str) -> Snapshot {
        let path = format!("{}/captures/doctor/{name}.json", env!("CARGO_MANIFEST_DIR"));
        facts::load(std::path::Path::new(&path)).expect("a recorded snapshot")
    }

    fn around_host(snap: &Snapshot) -> Graph {
        let h = snap.host();
        let scope = Scope::Around {
            ns: h.id,
            label: h.label.clone(),
        };
        collect(snap, &scope, CollectOptions::default()).expect("the host is in its snapshot")
    }

    /// A real Docker host's snapshot drawn as text: every container on docker0 by its name,
    /// each published port to the container holding its target, from the NAT rule and the
    /// userland proxy both; a port whose target nothing listens on is said so.
    #[test]
    fn text_of_a_docker_host() {
        let t = to_text(&around_host(&capture("docker-healthy")));
        for want in [
            "├─ docker0 (bridge, if3)  network \"bridge\"  172.17.0.1/16",
            "├─ veth86d1498 (veth, if29)\n│    ⇄ eth0 (if28) in container:web\n│    port of docker0 (if3)",
            "published tcp 0.0.0.0:8080 → 172.17.0.2:80 via eth0 (if28) in container:web  [userland proxy 13971/docker-proxy; nat DOCKER:48]\n",
            "published tcp 0.0.0.0:8085 → 172.17.0.6:8000 via eth0 (if16) in container:wp  [userland proxy 14669/docker-proxy; nat DOCKER:47]  NOTHING LISTENING",
            "container dns [netns 4026532384]\n│   default via 172.17.0.1 dev eth0\n│   ● listen udp 0.0.0.0:53 nettool\n└─ eth0 (veth, if10)  172.17.0.3/16",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        // The host first (most host-like), every namespace once.
        assert!(t.starts_with("pid:1802 [netns 4026532174]\n"), "{t}");
        assert_eq!(t.matches("[netns ").count(), 7, "{t}");
    }

    /// A Podman host: netavark's bridges named after their networks, ports from its DN chains.
    #[test]
    fn text_of_a_podman_host() {
        let t = to_text(&around_host(&capture("podman-healthy")));
        for want in [
            "├─ podman1 (bridge, if5)  network \"shop\"  10.89.0.1/24",
            "published tcp 0.0.0.0:8080 → 10.89.0.5:80 via eth0 (if4) in container:shop-web  [nat NETAVARK-DN-FD84A3CE64124:42]",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }

    /// DOT and Mermaid of the same graph: one cluster/subgraph per namespace, one labelled
    /// edge per veth pair (host side first), published ports as arrows, red when nothing
    /// listens at the target.
    #[test]
    fn dot_and_mermaid_of_a_docker_host() {
        let g = around_host(&capture("docker-healthy"));
        let namespaces = g.namespaces().count();
        let dot = to_dot(&g);
        assert!(dot.starts_with("digraph topology {\n"), "{dot}");
        assert!(dot.trim_end().ends_with('}'), "{dot}");
        assert_eq!(dot.matches("subgraph cluster_").count(), namespaces);
        assert!(
            dot.contains("[label=\"veth86d1498@if28 ⇄ eth0@if29\", penwidth=1.4"),
            "{dot}"
        );
        let red = dot
            .lines()
            .filter(|l| l.contains("(nothing listening)") && l.contains("#c62828"))
            .count();
        assert!(red >= 1, "{dot}");
        let mm = to_mermaid(&g);
        assert!(mm.starts_with("flowchart LR\n"));
        assert_eq!(mm.matches("  subgraph ").count(), namespaces);
        assert_eq!(
            mm.matches(" ---|").count(),
            g.edges.iter().filter(|e| e.kind == EdgeKind::Veth).count()
        );
        assert!(mm.contains("==>|\"tcp 8080 → 172.17.0.2:80\"|"), "{mm}");
    }
}
