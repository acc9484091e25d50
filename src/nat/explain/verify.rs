//! The summary checked by walks: representative packets into each published port and each
//! drop, and whole classes of traffic between outside and container networks.

use std::net::IpAddr;

use super::super::model::*;
use super::super::reach::{self, HostModel, Probe};
use super::super::walk::RuleRef;
use super::words::{sentence, target_ref, why_not};
use super::{DropRule, Flow, PublishedPort};

/// Walk representative packets into a published port; its sentence says what they found.
pub(super) fn verify_published(rs: &Ruleset, model: &HostModel, p: &mut PublishedPort) {
    let v6 = p.ipv6;
    let mut probes: Vec<Probe> = Vec::new();
    for e in &p.entries {
        let conds: Vec<&Match> = e.conds.iter().collect();
        for pr in reach::probes_for(rs, model, &conds, e.hook, v6) {
            if !probes.iter().any(|x| x.packet == pr.packet) {
                probes.push(pr);
            }
        }
    }
    // No OUTPUT path into the rule: whether this host itself gets translated is walked too.
    if !p.entries.iter().any(|e| e.hook == Hook::Output) {
        if let Some(e) = p.entries.first() {
            let conds: Vec<&Match> = e.conds.iter().collect();
            let pkt = reach::satisfy(&conds, Hook::Output, model, v6);
            if !probes.iter().any(|x| x.packet == pkt) {
                probes.push(reach::probe(rs, model, reach::From::ThisHost, pkt));
            }
        }
    }
    let refs: Vec<RuleRef> = p.targets.iter().map(target_ref).collect();
    for (t, r) in p.targets.iter_mut().zip(&refs) {
        t.shadowed = !probes.iter().any(|pr| reach::reaches(pr, r));
        if t.shadowed {
            t.shadowed_by = probes.iter().find_map(|pr| pr.dnat_by.clone());
        }
    }
    p.reach = probes
        .iter()
        .map(|pr| {
            let i = refs
                .iter()
                .position(|r| pr.dnat_by.as_ref() == Some(r))
                .or_else(|| refs.iter().position(|r| reach::reaches(pr, r)))
                .unwrap_or(0);
            reach::fate(pr, &refs[i], &p.targets[i].to)
        })
        .collect();
    p.probes = probes;
    p.sentence = sentence(p);
}

/// Walk a packet that meets a drop rule's conditions: does it really end there?
pub(super) fn verify_drop(rs: &Ruleset, model: &HostModel, d: &mut DropRule) {
    if d.action == "policy DROP" {
        d.verified = "a policy: applies to whatever no rule decided (see the flows below)".into();
        return;
    }
    let me = RuleRef {
        table: d.table.clone(),
        chain: d.chain.clone(),
        line: d.line,
    };
    let (pkt, pr) = drop_probe(rs, model, d, &me);
    d.verified = if pr.decided_by.as_ref() == Some(&me) {
        format!("walked: {} is {} here", pr.packet, pr.verdict)
    } else {
        format!(
            "walked: {} does not end here: {}",
            pr.packet,
            match (&pr.decided_by, pr.verdict.as_str()) {
                (Some(r), v) => format!("{v} earlier by {r}"),
                (None, _) => pr.summary.clone(),
            }
        )
    };
    let stateful = d
        .conds
        .iter()
        .any(|m| matches!(m.cond, Cond::CtState { .. }));
    if !stateful && pr.decided_by.as_ref() == Some(&me) {
        let mut est = pkt;
        est.state = "ESTABLISHED".into();
        let e = reach::probe(rs, model, reach::From::AsTheRuleSays, est);
        if e.decided_by.as_ref() != Some(&me) {
            let by = e
                .accepted_by
                .last()
                .map(|r| format!(" by {r}"))
                .unwrap_or_default();
            d.verified.push_str(&format!(
                "; only new connections: packets of established or related ones are accepted before it{by}"
            ));
            d.established = Some(e);
        }
    }
    d.probe = Some(pr);
}

/// Tries at most this many packets per drop rule.
const DROP_TRIES: usize = 8;

/// A packet the drop rule really matches and that earlier rules do not take first: satisfy
/// the rule's path; when the walk ends elsewhere (an ACCEPT, a RETURN, a NAT or another drop
/// before it), steer away from that rule with the negation of one of its conditions that the
/// drop's own path allows (`--dport 80 -j ACCEPT` above `-p tcp -j DROP`: a port other than 80),
/// and walk again. The first packet is kept when no try ends at the rule.
fn drop_probe(
    rs: &Ruleset,
    model: &HostModel,
    d: &DropRule,
    me: &RuleRef,
) -> (super::super::walk::Packet, Probe) {
    let mut extra: Vec<Match> = Vec::new();
    let mut first = None;
    for _ in 0..DROP_TRIES {
        let conds: Vec<&Match> = d.conds.iter().chain(extra.iter()).collect();
        let pkt = reach::satisfy(&conds, d.hook, model, d.v6);
        let w = super::super::walk::walk(rs, &pkt, &model.facts);
        let pr = reach::probe_of(reach::From::AsTheRuleSays, pkt.clone(), &w);
        if pr.decided_by.as_ref() == Some(me) {
            return (pkt, pr);
        }
        let tried = first.is_some();
        if !tried {
            first = Some((pkt.clone(), pr));
        } else if first.as_ref().is_some_and(|(p, _)| *p == pkt) {
            break;
        }
        // The rule that took the packet before the drop: the last decisive step at its hook.
        let culprit = w
            .steps
            .iter()
            .rev()
            .filter(|s| s.hook == d.hook && s.line > 0)
            .find(|s| {
                s.rewritten.is_some()
                    || ["ACCEPT", "RETURN", "DROP", "REJECT"]
                        .iter()
                        .any(|v| s.what.starts_with(v))
            })
            .map(|s| RuleRef {
                table: s.table.clone(),
                chain: s.chain.clone(),
                line: s.line,
            })
            .or(w.decided_by.clone());
        let Some(rule) = culprit.and_then(|c| rule_at(rs, &c)) else {
            break;
        };
        let all: Vec<&Match> = d.conds.iter().chain(extra.iter()).collect();
        let away = rule
            .matches
            .iter()
            .filter(|m| {
                matches!(
                    m.cond,
                    Cond::Port { .. }
                        | Cond::Addr { .. }
                        | Cond::AddrRange { .. }
                        | Cond::Proto { .. }
                        | Cond::InIface { .. }
                        | Cond::Mark { .. }
                )
            })
            .map(|m| Match {
                negated: !m.negated,
                cond: m.cond.clone(),
            })
            .find(|n| !all.contains(&n) && !all.iter().any(|c| super::paths::contradicts(n, c)));
        match away {
            Some(n) => extra.push(n),
            None => break,
        }
    }
    first.expect("DROP_TRIES > 0")
}

/// The rule at `r` (lines are unique in one input).
fn rule_at<'r>(rs: &'r Ruleset, r: &RuleRef) -> Option<&'r Rule> {
    rs.tables
        .iter()
        .filter(|t| t.name == r.table)
        .filter_map(|t| t.chain(&r.chain))
        .find_map(|c| c.rules.iter().find(|x| x.line == r.line))
}

/// Whole classes of traffic, walked: from outside straight to a container (a port nothing
/// publishes), from a container out, and from one container network to another.
pub(super) fn flows(rs: &Ruleset, model: &HostModel) -> Vec<Flow> {
    let mut out = Vec::new();
    let nets: Vec<&reach::Network> = model.networks.iter().take(16).collect();
    let packet = |src: IpAddr, dst: IpAddr, in_iface: &str| super::super::walk::Packet {
        proto: "tcp".into(),
        src,
        sport: Some(40000),
        dst,
        dport: Some(65001),
        in_iface: Some(in_iface.to_string()),
        out_iface: None,
        mark: 0,
        state: "NEW".into(),
        from_host: false,
    };
    let mut push = |kind: &str, from: String, to: String, pr: Probe| {
        let open = matches!(pr.verdict.as_str(), "forwarded" | "accepted-local" | "sent");
        let why = if open {
            let mut s = match pr.accepted_by.last() {
                Some(r) => format!("accepted by {r}"),
                None => "nothing drops it (the chains' policies accept)".into(),
            };
            if let Some(r) = &pr.snat_by {
                s.push_str(&format!(", source rewritten by {r}"));
            }
            s
        } else {
            why_not(&pr)
        };
        let sentence = format!(
            "{} {from} to {to} ({}): {} — {why}.",
            match kind {
                "inbound" => "New connections",
                "outbound" => "New connections",
                _ => "New connections",
            },
            pr.packet,
            if open { "OPEN" } else { "closed" }
        );
        out.push(Flow {
            kind: kind.into(),
            from,
            to,
            verdict: if open { "open" } else { "closed" }.into(),
            probe: pr,
            sentence,
        });
    };
    for n in &nets {
        let v6 = n.net.addr().is_ipv6();
        // No uplink: nothing comes from another host (outbound is still walked: no route).
        if !model.isolated {
            let c = reach::host_in(&n.net, 2);
            let pkt = packet(model.client_addrs[v6 as usize], c, &model.external_iface);
            let pr = reach::probe(rs, model, reach::From::Outside, pkt);
            push(
                "inbound",
                "from outside".into(),
                format!(
                    "a container on {} ({}), on a port nothing publishes",
                    n.iface, n.net
                ),
                pr,
            );
        }
        let mut pkt = packet(
            reach::host_in(&n.net, 200),
            model.client_addrs[v6 as usize],
            &n.iface,
        );
        pkt.dport = Some(443);
        let pr = reach::probe(
            rs,
            model,
            reach::From::Container {
                iface: n.iface.clone(),
            },
            pkt,
        );
        push(
            "outbound",
            format!("from a container on {}", n.iface),
            "outside".into(),
            pr,
        );
        for m in &nets {
            if m.iface == n.iface || m.net.addr().is_ipv6() != v6 {
                continue;
            }
            let pkt = packet(
                reach::host_in(&n.net, 200),
                reach::host_in(&m.net, 2),
                &n.iface,
            );
            let pr = reach::probe(
                rs,
                model,
                reach::From::Container {
                    iface: n.iface.clone(),
                },
                pkt,
            );
            push(
                "between",
                format!("from a container on {}", n.iface),
                format!("a container on {} ({})", m.iface, m.net),
                pr,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::summarize;
    use crate::nat::iptables;

    #[test]
    fn a_drop_behind_an_accept_is_walked_as_not_ending_there() {
        let rs = iptables::parse(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -p tcp -j ACCEPT\n-A FORWARD -p tcp --dport 22 -j DROP\n-A FORWARD -p udp -j DROP\nCOMMIT\n",
        );
        let s = summarize(&rs);
        let by_line = |l: usize| s.drops.iter().find(|d| d.line == l).unwrap();
        assert!(
            by_line(6).verified.contains("does not end here"),
            "{}",
            by_line(6).verified
        );
        // A FORWARD drop is walked with a packet that is forwarded (not to this host's address).
        assert!(
            by_line(7).verified.contains("is dropped here"),
            "{}",
            by_line(7).verified
        );
    }
}
