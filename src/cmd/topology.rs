//! `nettool topology`: the live namespaces, bridges, veths and published ports as a picture.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use clap::Args;

use crate::facts;
use crate::netns::{NetNs, NsId};
use crate::output::print_json;
use crate::topology::{self, CollectOptions, Scope};

/// Run `nettool topology`.
pub(crate) fn run(a: TopologyArgs) -> anyhow::Result<i32> {
    let opts = CollectOptions {
        skip_docker: a.no_docker,
        include_empty: a.include_empty,
        skip_nat: a.no_nat,
    };
    let graph = match &a.snapshot {
        Some(file) => {
            let snap = facts::load(file)?;
            let scope = snapshot_scope(&snap, &a)?;
            topology::collect(&snap, &scope, opts)?
        }
        None => {
            let (scope, host, extra) = if let Some(t) = &a.netns {
                let ns = NetNs::open(t).with_context(|| format!("--netns {t}"))?;
                around(ns)
            } else if let Some(name) = &a.lab {
                lab_scope(name)?
            } else if a.all {
                let here = NetNs::current().context("the current namespace")?;
                (Scope::Host, here, Vec::new())
            } else {
                default_scope()?
            };
            let snap = topology::read(&scope, &host, &extra, opts)?;
            topology::collect(&snap, &scope, opts)?
        }
    };
    if a.json {
        print_json(&graph)?;
        return Ok(0);
    }
    let bytes: Vec<u8> = match a.format {
        TopologyFormat::Text => topology::to_text(&graph).into_bytes(),
        TopologyFormat::Dot => topology::to_dot(&graph).into_bytes(),
        TopologyFormat::Mermaid => topology::to_mermaid(&graph).into_bytes(),
        TopologyFormat::Svg => render(&topology::to_dot(&graph), "svg")?,
        TopologyFormat::Png => {
            if a.output.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                bail!("PNG is binary: give -o FILE (or redirect stdout to a file)");
            }
            render(&topology::to_dot(&graph), "png")?
        }
    };
    match &a.output {
        Some(path) => std::fs::write(path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().lock().write_all(&bytes)?,
    }
    Ok(0)
}

/// Render DOT to `format` with Graphviz's `dot`.
fn render(dot: &str, format: &str) -> anyhow::Result<Vec<u8>> {
    let mut child = match Command::new("dot")
        .arg(format!("-T{format}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "rendering {format} needs Graphviz's `dot`, which is not installed: apt-get install graphviz \
             (Debian package graphviz), or use --format dot|mermaid|text"
        ),
        Err(e) => return Err(e).context("cannot start dot"),
    };
    let mut stdin = child.stdin.take().context("dot stdin")?;
    let input = dot.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().context("dot")?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "dot -T{format} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// A scope with the namespaces the live read must hold: its main namespace and the others
/// it names (discovery may not see a namespace held only by an fd).
type LiveScope = (Scope, NetNs, Vec<NetNs>);

/// `ns` and its neighbours.
fn around(ns: NetNs) -> LiveScope {
    let scope = Scope::Around {
        ns: ns.id(),
        label: ns.label().to_string(),
    };
    (scope, ns.clone(), vec![ns])
}

/// What the user is looking at: the lab whose host is this namespace (one lab), else this
/// namespace and its neighbours. The whole machine (`--all`) was 236 lines on a busy host.
fn default_scope() -> anyhow::Result<LiveScope> {
    let here = NetNs::current().context("the current namespace")?;
    let labs: Vec<String> = crate::lab::health::check_all()
        .into_iter()
        .filter(|h| h.host_inode == Some(here.id().inode))
        .map(|h| h.name)
        .collect();
    match labs.as_slice() {
        [one] => lab_scope(one),
        _ => Ok(around(here)),
    }
}

/// The namespaces of a lab, from its saved state: its host (the isolated namespace, or the
/// current one) and every container namespace, named after the lab's containers.
fn lab_scope(name: &str) -> anyhow::Result<LiveScope> {
    let state = crate::lab::state::load(name)
        .with_context(|| format!("--lab {name} (list labs under /run/nettool/)"))?;
    let host = match &state.host_netns {
        Some(n) => {
            NetNs::from_name(n).with_context(|| format!("lab {name}: host namespace {n}"))?
        }
        None => NetNs::current()?,
    };
    let mut namespaces: Vec<(NetNs, Option<String>)> = vec![(host.clone(), None)];
    for c in &state.containers {
        let Some(n) = &c.netns else { continue };
        let ns = NetNs::from_name(n)
            .with_context(|| format!("lab {name}: namespace {n} of container {}", c.name))?;
        match namespaces.iter_mut().find(|(x, _)| x.id() == ns.id()) {
            // Shared namespaces (mode container:NAME) keep the first container's name.
            Some(_) => {}
            None => namespaces.push((ns, Some(c.name.clone()))),
        }
    }
    let scope = Scope::Set {
        label: format!("lab {}", state.name),
        namespaces: namespaces
            .iter()
            .map(|(ns, c)| (ns.id(), c.clone()))
            .collect(),
        networks: state
            .networks
            .iter()
            .map(|n| (n.bridge.clone(), n.name.clone()))
            .collect(),
    };
    Ok((
        scope,
        host,
        namespaces.into_iter().map(|(n, _)| n).collect(),
    ))
}

/// The scope inside a recorded snapshot: `--netns` names one of its namespaces (as the
/// snapshot names them), `--all` all of them, `--lab` a lab it recorded; by default its host
/// and the host's neighbours (what `doctor --save-snapshot` records).
fn snapshot_scope(snap: &facts::Snapshot, a: &TopologyArgs) -> anyhow::Result<Scope> {
    let file = a.snapshot.as_deref().unwrap_or(std::path::Path::new("-"));
    if a.all {
        return Ok(Scope::Host);
    }
    if let Some(name) = &a.lab {
        let lab = snap
            .labs
            .iter()
            .find(|l| &l.name == name)
            .with_context(|| {
                format!(
                    "--lab {name}: {} recorded no lab of that name",
                    file.display()
                )
            })?;
        let mut namespaces: Vec<(NsId, Option<String>)> =
            lab.host.into_iter().map(|h| (h, None)).collect();
        for c in &lab.containers {
            if let Some(id) = c.ns.filter(|id| !namespaces.iter().any(|(x, _)| x == id)) {
                namespaces.push((id, Some(c.name.clone())));
            }
        }
        return Ok(Scope::Set {
            label: format!("lab {name}"),
            namespaces,
            networks: Vec::new(),
        });
    }
    let n = match &a.netns {
        Some(t) => snap.ns_named(t).with_context(|| {
            format!(
                "--netns {t}: {} holds no namespace of that name (it holds {})",
                file.display(),
                snap.namespaces
                    .iter()
                    .map(|n| n.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?,
        None => snap.host(),
    };
    Ok(Scope::Around {
        ns: n.id,
        label: n.label.clone(),
    })
}

/// Output formats of `topology`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TopologyFormat {
    /// A text tree.
    Text,
    /// Graphviz DOT source.
    Dot,
    /// SVG rendered by `dot`.
    Svg,
    /// PNG rendered by `dot`.
    Png,
    /// A Mermaid flowchart.
    Mermaid,
}

/// Arguments of `topology`.
#[derive(Debug, Args)]
pub(crate) struct TopologyArgs {
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "text")]
    pub format: TopologyFormat,
    /// Write to this file instead of stdout (needed for png on a terminal).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Only this namespace and its neighbours (NAME, PATH, pid:N, container:NAME).
    #[arg(long, short = 'n', value_name = "TARGET", conflicts_with_all = ["lab", "all"])]
    pub netns: Option<String>,
    /// Only the namespaces of this lab (`nettool setup --name NAME`).
    #[arg(long, value_name = "NAME", conflicts_with = "all")]
    pub lab: Option<String>,

    /// The whole machine: every namespace (by default: the lab whose host is this namespace,
    /// else this namespace and its neighbours)
    #[arg(long)]
    pub all: bool,
    /// Also draw namespaces that hold nothing but lo.
    #[arg(long)]
    pub include_empty: bool,
    /// Do not read NAT rules (published ports then come from userland proxies only).
    #[arg(long)]
    pub no_nat: bool,
    /// Do not ask the container engines (Docker, Podman, CNI cache, labs) for names.
    #[arg(long)]
    pub no_docker: bool,
    /// Draw a recorded snapshot (`nettool doctor --save-snapshot FILE`) instead of the live
    /// machine; needs no root. By default its host and the host's neighbours.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<std::path::PathBuf>,
    /// Print the graph (nodes and edges) as JSON.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

/// Formats, default scope and examples for `nettool topology --help`.
pub(crate) const TOPOLOGY_HELP: &str = "DOT is the base format; svg and png are rendered by Graphviz's `dot` (Debian package\ngraphviz). Mermaid pastes into Markdown. text is a tree for terminals. --json is the graph.\n\nBy default it draws what you are looking at: inside a lab's host namespace, that lab; else\nthe current namespace and its neighbours (on a Docker host: the host and its containers).\n\nExamples:\n  nettool topology\n  nettool topology --all --format svg -o host.svg\n  nettool topology --netns container:web --format mermaid\n  nettool topology --lab demo --format png -o demo.png\n  nettool topology --json | jq '.edges[] | select(.kind == \"veth\")'";
