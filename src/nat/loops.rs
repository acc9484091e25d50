//! Jump loops: a chain that jumps (or goes, or maps a verdict) to itself, directly or through
//! other chains. The kernel refuses a loop that a hooked (base) chain reaches ("Too many
//! links" from iptables-restore and nft), so only file input can hold one of those; a loop
//! nothing reaches is accepted until a jump into it is added. Either is named as a problem at
//! the line of the jump that closes it (walks into it stop at their depth limit, they never
//! hang).
//!
//! The search is an iterative depth-first walk over each table's jump graph: no recursion, so
//! a chain of 100k chains cannot overflow the stack, and linear in chains plus jumps.

use super::model::{Action, Problem, Ruleset, Table};

/// At most this many loops are named per table (a generated file can hold thousands).
const MAX_PER_TABLE: usize = 10;

/// One jump edge: the target chain and the line of the rule that jumps.
struct Edge {
    to: usize,
    line: usize,
}

/// The chains `a` sends packets to (a verdict map's entries included).
fn targets(a: &Action, out: &mut Vec<String>) {
    match a {
        Action::Jump { chain } | Action::Goto { chain } => out.push(chain.clone()),
        Action::Vmap { entries, .. } => {
            for (_, v) in entries {
                targets(v, out);
            }
        }
        _ => {}
    }
}

/// The jump graph of one table: for each chain, its edges in rule order.
fn graph(t: &Table) -> Vec<Vec<Edge>> {
    let by_name: std::collections::HashMap<&str, usize> = t
        .chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let mut names = Vec::new();
    t.chains
        .iter()
        .map(|c| {
            let mut edges = Vec::new();
            for r in &c.rules {
                names.clear();
                targets(&r.action, &mut names);
                for n in &names {
                    if let Some(&to) = by_name.get(n.as_str()) {
                        edges.push(Edge { to, line: r.line });
                    }
                }
            }
            edges
        })
        .collect()
}

/// Every jump loop of every table in `rs`, as problems (line: the jump that closes the loop).
pub(crate) fn find(rs: &Ruleset) -> Vec<Problem> {
    let mut out = Vec::new();
    for t in &rs.tables {
        out.extend(find_in(t));
    }
    out
}

/// Which chains a base chain reaches (itself included).
fn reached_from_base(t: &Table, g: &[Vec<Edge>]) -> Vec<bool> {
    let mut seen = vec![false; g.len()];
    let mut todo: Vec<usize> = (0..g.len())
        .filter(|&i| t.chains[i].base.is_some())
        .collect();
    for &i in &todo {
        seen[i] = true;
    }
    while let Some(c) = todo.pop() {
        for e in &g[c] {
            if !seen[e.to] {
                seen[e.to] = true;
                todo.push(e.to);
            }
        }
    }
    seen
}

fn find_in(t: &Table) -> Vec<Problem> {
    let g = graph(t);
    let n = g.len();
    let reached = reached_from_base(t, &g);
    // 0: not seen, 1: on the current path, 2: done.
    let mut state = vec![0u8; n];
    // Position of each chain on the current path (valid while state is 1).
    let mut pos = vec![0usize; n];
    let mut seen_sets: std::collections::HashSet<Vec<usize>> = Default::default();
    let mut found = Vec::new();
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        // The path: (chain, index of its next edge to follow, line of the jump into it).
        let mut path: Vec<(usize, usize, usize)> = vec![(root, 0, 0)];
        state[root] = 1;
        pos[root] = 0;
        while let Some(&mut (c, ref mut next, _)) = path.last_mut() {
            let Some(e) = g[c].get(*next) else {
                state[c] = 2;
                path.pop();
                continue;
            };
            *next += 1;
            match state[e.to] {
                0 => {
                    state[e.to] = 1;
                    pos[e.to] = path.len();
                    path.push((e.to, 0, e.line));
                }
                1 if found.len() < MAX_PER_TABLE => {
                    // A loop: from e.to along the path back to c, then this jump.
                    let start = pos[e.to];
                    let mut members: Vec<usize> = path[start..].iter().map(|p| p.0).collect();
                    members.sort_unstable();
                    if seen_sets.insert(members) {
                        found.push(describe(t, &path[start..], e.line, reached[e.to]));
                    }
                }
                _ => {}
            }
        }
    }
    found
}

/// "jump loop in table ip nat: A -> B (line 7) -> A (line 9) ...".
fn describe(
    t: &Table,
    cycle: &[(usize, usize, usize)],
    closing_line: usize,
    reached: bool,
) -> Problem {
    let name = |i: usize| t.chains[i].name.as_str();
    let mut steps = name(cycle[0].0).to_string();
    for (k, &(c, _, line)) in cycle.iter().enumerate().skip(1) {
        // A long loop is shown by its first and last steps.
        if cycle.len() > 8 && (5..cycle.len() - 2).contains(&k) {
            if k == 5 {
                steps.push_str(&format!(" -> ... ({} more)", cycle.len() - 7));
            }
            continue;
        }
        steps.push_str(&format!(" -> {} (line {line})", name(c)));
    }
    steps.push_str(&format!(" -> {} (line {closing_line})", name(cycle[0].0)));
    let what = if cycle.len() == 1 {
        format!("chain {} jumps to itself", name(cycle[0].0))
    } else {
        format!("a jump loop of {} chains", cycle.len())
    };
    let why = if reached {
        "the kernel refuses a loop that a hooked chain reaches (iptables-restore and nft: 'Too many links'), so these rules cannot be loaded as they are (this is not a dump of live rules); walks into the loop stop after 32 jumps"
    } else {
        "no hooked chain reaches it, so no packet enters it (the kernel accepts it only until a jump into it from a hooked chain is added, which fails with 'Too many links')"
    };
    Problem {
        line: closing_line,
        message: format!(
            "{what} in table {} {}: {steps}; {why} (remove the jump at line {closing_line})",
            t.family, t.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use crate::nat::iptables;

    #[test]
    fn names_a_loop_through_chains_and_a_self_jump_with_their_lines() {
        let text =
            "*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n:D - [0:0]\n\
-A PREROUTING -j A\n-A A -p tcp -j B\n-A B -j C\n-A C -d 10.0.0.1/32 -j A\n-A D -j D\nCOMMIT\n";
        let rs = iptables::parse_save(text);
        let p = super::find(&rs);
        assert_eq!(p.len(), 2, "{p:#?}");
        assert_eq!(p[0].line, 10);
        assert!(
            p[0].message.starts_with(
                "a jump loop of 3 chains in table ip nat: A -> B (line 8) -> C (line 9) -> A (line 10)"
            ),
            "{}",
            p[0].message
        );
        assert!(p[0].message.contains("cannot be loaded as they are"));
        assert_eq!(p[1].line, 11);
        assert!(p[1].message.starts_with("chain D jumps to itself"));
        assert!(p[1].message.contains("no hooked chain reaches it"));
    }

    #[test]
    fn no_loop_in_a_diamond_and_a_long_chain_does_not_overflow() {
        let mut text = String::from(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n\
-A PREROUTING -j A\n-A PREROUTING -j B\n-A A -j C\n-A B -j C\n",
        );
        let n = 30_000;
        for i in 0..n {
            text.push_str(&format!(":L{i} - [0:0]\n"));
        }
        for i in 0..n - 1 {
            text.push_str(&format!("-A L{i} -j L{}\n", i + 1));
        }
        text.push_str("COMMIT\n");
        let rs = iptables::parse_save(&text);
        assert!(super::find(&rs).is_empty());
        // Closing the long chain makes one loop of every chain in it.
        text.insert_str(text.len() - 7, &format!("-A L{} -j L0\n", n - 1));
        let rs = iptables::parse_save(&text);
        let p = super::find(&rs);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].message
                .starts_with("a jump loop of 30000 chains in table ip nat: L0 -> L1 (line")
                && p[0]
                    .message
                    .contains(" -> ... (29993 more) -> L29998 (line")
                && p[0].message.len() < 600,
            "{}",
            p[0].message
        );
    }
}
