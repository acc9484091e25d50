//! CNI in doctor: libcni's cache says what was attached, the namespaces say what is left. The
//! engine hop's CNI findings (namespace gone, interface gone) and the fixes that run the
//! network's cached plugin chain as libcni would (portmap re-add, chain re-attach, the DEL of
//! a container whose namespace is gone and the ADD into its new one).

use std::net::IpAddr;

use crate::engine::{Container, ContainerState, EngineKind};
use crate::facts::Snapshot;

use super::fix::Fixer;
use super::{Fault, Hop};

const ID: &str = "engine";
const TITLE: &str = "engine intent";

/// CNI has no daemon to ask: its cache says what was attached, the namespaces say what is
/// left. A namespace gone (the runtime removed the sandbox without a CNI DEL) or the
/// container's interface gone from it (its veth deleted) leaves the port's rules pointing at
/// an address nobody holds. The runtime (containerd, CRI-O, kubelet) owns the namespace: the
/// fix is the chain's DEL from the cache, then (`then`) the ADD into the new namespace it makes.
pub(super) fn cni_hop(
    snap: &Snapshot,
    c: &Container,
    port: u16,
    who: &str,
    fixer: &Fixer,
) -> Option<Hop> {
    let addrs: Vec<IpAddr> = c.attachments.iter().flat_map(|a| a.addresses()).collect();
    let list = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let netns = c
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "?".into());
    if c.state != ContainerState::Running {
        let what = match c.netns.as_ref().map(|p| p.exists()) {
            Some(true) => "a file that opens no namespace",
            _ => "missing",
        };
        return Some(
            Hop::fail(
                ID,
                TITLE,
                Fault::ContainerNotRunning,
                format!(
                    "{who}'s network namespace is gone ({netns}: {what}): the runtime that made the container owns its namespace and removed it without a CNI DEL, so nothing serves its port {port} and its port rules and address {list} are left over; the chain's DEL from libcni's cache clears them, then the runtime's ADD into a new namespace brings it back"
                ),
            )
            .with_fix(cni_namespace_gone_fix(snap, c, fixer)),
        );
    }
    let ns = snap
        .namespaces
        .iter()
        .find(|n| n.containers.iter().any(|r| r.id == c.id))?;
    if addrs.is_empty() || addrs.iter().any(|a| ns.has_address(*a)) {
        return None;
    }
    let networks = c
        .attachments
        .iter()
        .map(|a| a.network.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Some(
        Hop::fail(
            ID,
            TITLE,
            Fault::NotOnNetwork,
            format!(
                "{who} no longer holds {list} in its namespace {netns} (its interface on {networks} was removed): its port {port} is sent to an address nobody holds; attach it again with the network's CNI chain (DEL, then ADD keeping {list})"
            ),
        )
        .with_evidence(format!("{}: addresses {}", ns.label, ns.address_list()))
        .with_fix(cni_chain_readd(snap, c, fixer)),
    )
}

/// The container's port mappings as libcni hands them to portmap (runtimeConfig).
fn cni_mappings(c: &Container) -> Vec<serde_json::Value> {
    c.ports
        .iter()
        .map(|b| {
            let mut m = serde_json::json!({
                "hostPort": b.host_port,
                "containerPort": b.container_port,
                "protocol": b.proto,
            });
            if let Some(ip) = b.host_ip {
                m["hostIP"] = serde_json::Value::String(ip.to_string());
            }
            m
        })
        .collect()
}

/// The attachment's addresses and the result's `ips` for them (prefix from the network's
/// subnets).
fn cni_ips(
    att: &crate::engine::Attachment,
    net: &crate::engine::Network,
) -> (Vec<IpAddr>, Vec<serde_json::Value>) {
    let addrs: Vec<IpAddr> = att.addresses().collect();
    let ips = addrs
        .iter()
        .map(|a| {
            let prefix = net
                .subnets
                .iter()
                .find(|s| s.contains(a))
                .map(|s| s.prefix_len())
                .unwrap_or(if a.is_ipv4() { 32 } else { 128 });
            serde_json::json!({"address": format!("{a}/{prefix}"), "interface": 0})
        })
        .collect();
    (addrs, ips)
}

/// Attach a CNI container again as libcni would: the network's cached chain, DEL in reverse
/// order (each plugin drops what is left of the attachment: the address reservation, port
/// and firewall rules), then ADD in order, each plugin given the previous one's result; the
/// IPAM plugin is asked for the container's cached addresses (`args.cni.ips`), so the cached
/// result (and every rule naming the address) stays true. One `sh -c` line: the configs are
/// its arguments.
pub(super) fn cni_chain_readd(snap: &Snapshot, c: &Container, fixer: &Fixer) -> Option<super::Fix> {
    let chain = CniChain::of(snap, c)?;
    let mut script = String::from("set -e; ");
    script.push_str(&chain.prelude("\"$2\""));
    chain.push_del(&mut script, 0);
    chain.push_add(&mut script, 0);
    let argv = chain.argv(script, "cni-chain-add", &[]);
    Some(fixer.fix_owned(
        &format!(
            "attach CNI container {} to {} again (the chain {}: DEL, then ADD with its cached config and addresses)",
            c.name,
            chain.network,
            chain.kinds.join(" + ")
        ),
        argv,
        false,
    ))
}

/// A CNI container whose namespace is gone: the chain's DEL as libcni runs it from its cache
/// (the port and firewall rules, the address reservation and the cache entry go), run against
/// a scratch namespace holding the cached interface (a veth: the dummy driver may be absent)
/// and addresses, because the bridge plugin
/// finds the masquerade rule to remove from the addresses on the interface it deletes (with
/// the real, missing namespace it returns early and leaves it). Then, once the runtime has
/// made the new namespace at the cached path, the chain's ADD into it with the same
/// addresses, writing libcni's cache entry again.
fn cni_namespace_gone_fix(snap: &Snapshot, c: &Container, fixer: &Fixer) -> Option<super::Fix> {
    let chain = CniChain::of(snap, c)?;
    let cache = format!(
        "{}/{}-{}-{}",
        crate::engine::cni::RESULTS_DIR,
        chain.network,
        c.id,
        chain.ifname
    );
    // $5 the cache file, $6 the cached addresses (CIDR, space-separated).
    let cidrs = chain
        .ips
        .iter()
        .filter_map(|i| i.get("address")?.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let mut del = String::from(
        "set -e; s=nettool-cni-del-$$; ip netns add \"$s\"; trap 'ip netns del \"$s\"' EXIT; ip -n \"$s\" link add \"$3\" type veth peer name nettool-del0; for a in $6; do ip -n \"$s\" addr add \"$a\" dev \"$3\"; done; ",
    );
    del.push_str(&chain.prelude("/run/netns/$s"));
    // The firewall plugin removes its rules by address: when a live namespace holds the
    // address now (host-local gave it to another container), they are that container's.
    // Everything else is found by this container's id (portmap's chain, bridge's masquerade
    // rule, host-local's reservation).
    let reused = chain
        .addrs
        .iter()
        .any(|a| snap.namespaces.iter().any(|n| n.has_address(*a)));
    let skip: &[&str] = if reused { &["firewall"] } else { &[] };
    chain.push_del_skipping(&mut del, 2, skip);
    // libcni's DEL removes the cache entry; an empty file left where the namespace was
    // mounted would stop the runtime (or `ip netns add`) making the new one there (rm cannot
    // remove a live mount: it fails, and that is ignored).
    del.push_str("; rm -f \"$5\"; if [ -f \"$2\" ] && [ ! -s \"$2\" ]; then rm -f \"$2\" 2>/dev/null || true; fi");
    let del_argv = chain.argv(del, "cni-chain-del", &[cache.clone(), cidrs]);

    let config = crate::engine::cni::base64_encode(chain.list.as_bytes());
    let head = serde_json::json!({
        "kind": "cniCacheV1",
        "containerId": c.id,
        "config": config,
        "ifName": chain.ifname,
        "networkName": chain.network,
        "capabilityArgs": {"portMappings": cni_mappings(c)},
    })
    .to_string();
    // The entry without its closing brace: the script appends the chain's result.
    let head = format!("{},", head.strip_suffix('}').unwrap_or(&head));
    let mut add = String::from("set -e; ");
    add.push_str(&chain.prelude("\"$2\""));
    chain.push_add(&mut add, 2);
    add.push_str("; mkdir -p \"${5%/*}\"; printf '%s\"result\":%s}' \"$6\" \"$r\" > \"$5\"");
    let add_argv = chain.argv(add, "cni-chain-add", &[cache, head]);
    let by_hand = chain
        .netns
        .strip_prefix("/run/netns/")
        .or_else(|| chain.netns.strip_prefix("/var/run/netns/"))
        .filter(|n| !n.contains('/'))
        .map(|n| format!(" (made by hand: ip netns add {n})"))
        .unwrap_or_default();
    let mut fix = fixer.fix_owned(
        &format!(
            "DEL CNI container {} from {} as libcni does (the chain {} from the cached config): its port and firewall rules, masquerade rule, address reservation and cache entry go",
            c.name,
            chain.network,
            chain.kinds.join(" + ")
        ),
        del_argv,
        false,
    );
    fix.then = Some(Box::new(fixer.fix_owned(
        &format!(
            "once the runtime has made the container's new namespace at {}{by_hand}: the chain's ADD into it, keeping {}",
            chain.netns,
            chain
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        add_argv,
        false,
    )));
    Some(fix)
}

/// A CNI container's chain as libcni would run it: each plugin's config (name and version
/// from the list, runtimeConfig for portmap, the cached addresses for IPAM), the cached
/// result to DEL with, and the arguments a `sh -c` script gets.
struct CniChain {
    network: String,
    /// The network's list, as the cache holds it (for a cache entry written again).
    list: String,
    netns: String,
    ifname: String,
    addrs: Vec<IpAddr>,
    ips: Vec<serde_json::Value>,
    /// The cached result (prevResult of the DEL).
    result: String,
    kinds: Vec<String>,
    confs: Vec<String>,
    id: String,
}

impl CniChain {
    fn of(snap: &Snapshot, c: &Container) -> Option<CniChain> {
        use serde_json::{json, Value};
        let intent = snap.intent.as_ref()?;
        let (att, net) = c.attachments.iter().find_map(|a| {
            let n = intent.networks.iter().find(|n| {
                n.engine == EngineKind::Cni && n.name == a.network && n.cni_chain.is_some()
            })?;
            Some((a, n))
        })?;
        let list = net.cni_chain.clone()?;
        let chain: Value = serde_json::from_str(&list).ok()?;
        let plugins = chain.get("plugins")?.as_array()?;
        let netns = c.netns.as_ref()?.display().to_string();
        // The interface the chain was run with (libcni's ifName): a second network is net1.
        let ifname = att.ifname.clone().unwrap_or_else(|| "eth0".into());
        let (addrs, ips) = cni_ips(att, net);
        let version = chain
            .get("cniVersion")
            .cloned()
            .unwrap_or(Value::String("1.0.0".into()));
        let mut confs = Vec::new();
        let mut kinds = Vec::new();
        for p in plugins {
            let kind = p.get("type")?.as_str()?;
            // The plugin's name is a word on the command line: a path or an option is refused.
            if kind.is_empty()
                || !kind
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
                || kind.starts_with('.')
            {
                return None;
            }
            let mut conf = p.clone();
            conf["name"] = chain.get("name")?.clone();
            conf["cniVersion"] = version.clone();
            if p.pointer("/capabilities/portMappings") == Some(&Value::Bool(true)) {
                conf["runtimeConfig"] = json!({ "portMappings": cni_mappings(c) });
            }
            if p.get("ipam").is_some() {
                conf["args"] = json!({"cni": {"ips": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>()}});
            }
            kinds.push(kind.to_string());
            confs.push(conf.to_string());
        }
        let result = json!({
            "cniVersion": version,
            "interfaces": [{"name": ifname, "sandbox": netns}],
            "ips": ips,
        })
        .to_string();
        Some(CniChain {
            network: net.name.clone(),
            list,
            netns,
            ifname,
            addrs,
            ips,
            result,
            kinds,
            confs,
            id: c.id.clone(),
        })
    }

    /// The script's start: PATH and the CNI variables ($1 id, $3 ifname; the namespace as
    /// given), and `p`, which puts a result into a config as its prevResult.
    fn prelude(&self, netns: &str) -> String {
        format!(
            "PATH=/opt/cni/bin:/usr/lib/cni:$PATH; export CNI_CONTAINERID=\"$1\" CNI_NETNS={netns} CNI_IFNAME=\"$3\" CNI_PATH=/opt/cni/bin:/usr/lib/cni; p() {{ printf '{{\"prevResult\":%s,%s' \"$1\" \"${{2#?}}\"; }}"
        )
    }

    /// The configs follow the fixed arguments and `extra`: "${N}" for plugin `i`.
    fn arg(&self, i: usize, extra: usize) -> String {
        format!("\"${{{}}}\"", i + 5 + extra)
    }

    /// DEL in reverse order, each plugin given the cached result ($4).
    fn push_del(&self, script: &mut String, extra: usize) {
        self.push_del_skipping(script, extra, &[]);
    }

    /// DEL as [`CniChain::push_del`], leaving out the plugins of the kinds in `skip`.
    fn push_del_skipping(&self, script: &mut String, extra: usize, skip: &[&str]) {
        for (i, k) in self.kinds.iter().enumerate().rev() {
            if skip.contains(&k.as_str()) {
                continue;
            }
            script.push_str(&format!(
                "; p \"$4\" {} | CNI_COMMAND=DEL {k} >/dev/null",
                self.arg(i, extra)
            ));
        }
    }

    /// ADD in order, each plugin given the previous one's result; the last in $r.
    fn push_add(&self, script: &mut String, extra: usize) {
        for (i, k) in self.kinds.iter().enumerate() {
            if i == 0 {
                script.push_str(&format!(
                    "; r=$(printf '%s' {} | CNI_COMMAND=ADD {k})",
                    self.arg(i, extra)
                ));
            } else {
                script.push_str(&format!(
                    "; r=$(p \"$r\" {} | CNI_COMMAND=ADD {k})",
                    self.arg(i, extra)
                ));
            }
        }
    }

    /// `sh -c SCRIPT NAME id netns ifname result EXTRA... CONFS...`.
    fn argv(&self, script: String, name: &str, extra: &[String]) -> Vec<String> {
        let mut argv = vec![
            "sh".to_string(),
            "-c".into(),
            script,
            name.into(),
            self.id.clone(),
            self.netns.clone(),
            self.ifname.clone(),
            self.result.clone(),
        ];
        argv.extend(extra.iter().cloned());
        argv.extend(self.confs.iter().cloned());
        argv
    }
}

/// A CNI re-add of portmap for `c`, as libcni runs it: the network's portmap config from the
/// cache, the container's port mappings as runtimeConfig and its addresses as prevResult,
/// given on stdin to the portmap plugin with CNI_COMMAND=ADD in the host namespace. portmap
/// only adds the rules that are missing (its chain for the container is named from the
/// network and the container id, so it is the same chain).
pub(super) fn cni_portmap_readd(
    snap: &Snapshot,
    c: &Container,
    fixer: &Fixer,
) -> Option<super::Fix> {
    use serde_json::{json, Value};
    let intent = snap.intent.as_ref()?;
    let (att, net) = c.attachments.iter().find_map(|a| {
        let n = intent
            .networks
            .iter()
            .find(|n| n.engine == EngineKind::Cni && n.name == a.network && n.portmap.is_some())?;
        Some((a, n))
    })?;
    let mut conf: Value = serde_json::from_str(net.portmap.as_deref()?).ok()?;
    let netns = c.netns.as_ref()?.display().to_string();
    let mappings = cni_mappings(c);
    // The container's interface: libcni's ifName, else the one holding its address in its
    // namespace, else eth0.
    let (addrs, ips) = cni_ips(att, net);
    let ifname = att.ifname.clone().unwrap_or_else(|| {
        snap.namespaces
            .iter()
            .find(|n| n.containers.iter().any(|r| r.id == c.id))
            .and_then(|n| {
                let a = n.addresses.iter().find(|x| addrs.contains(&x.address))?;
                n.link(a.index).map(|l| l.name.clone())
            })
            .unwrap_or_else(|| "eth0".into())
    });
    conf["runtimeConfig"] = json!({ "portMappings": mappings });
    conf["prevResult"] = json!({
        "cniVersion": conf.get("cniVersion").cloned().unwrap_or(Value::String("1.0.0".into())),
        "interfaces": [{"name": ifname, "sandbox": netns}],
        "ips": ips,
    });
    // The plugin is looked up where runtimes install plugins: /opt/cni/bin, then Debian's.
    let script = "PATH=/opt/cni/bin:/usr/lib/cni:$PATH; printf '%s' \"$1\" | CNI_COMMAND=ADD CNI_CONTAINERID=\"$2\" CNI_NETNS=\"$3\" CNI_IFNAME=\"$4\" CNI_PATH=/opt/cni/bin:/usr/lib/cni portmap >/dev/null";
    Some(fixer.fix_owned(
        &format!(
            "re-add the port mappings of CNI container {} on {} (the portmap plugin, ADD, with the cached config)",
            c.name, net.name
        ),
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "cni-portmap-add".into(),
            conf.to_string(),
            c.id.clone(),
            netns,
            ifname,
        ],
        false,
    ))
}

#[cfg(test)]
mod tests {
    use crate::doctor::{replay, Fault};

    #[test]
    fn a_cni_namespace_gone_is_deleted_from_the_cache_then_added_again() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("captures/doctor/cni-namespace-gone.json");
        let mut snap = crate::facts::load(&p).unwrap();
        let r = replay(&snap).unwrap();
        assert_eq!(r.diagnosis.fault, Some(Fault::ContainerNotRunning));
        let fix = r.diagnosis.fix.unwrap();
        let del = &fix.argv[2];
        for k in ["DEL firewall", "DEL portmap", "DEL bridge", "rm -f"] {
            assert!(del.contains(k), "{k}: {del}");
        }
        assert!(!del.contains("CNI_COMMAND=ADD"), "{del}");
        let then = fix
            .then
            .expect("the ADD once the runtime made the namespace");
        assert!(
            then.argv[2].contains("CNI_COMMAND=ADD bridge"),
            "{:?}",
            then.argv
        );
        assert!(then.summary.contains("ip netns add"), "{}", then.summary);
        // Its address now another container's (host-local handed it out again): the firewall
        // plugin, which removes rules by address, is left out of the DEL.
        let ip = snap.intent.as_ref().unwrap().containers[0].attachments[0]
            .ipv4
            .unwrap();
        let host = snap.host;
        let ns = snap.namespaces.iter_mut().find(|n| n.id != host).unwrap();
        ns.addresses.push(crate::netns::links::Address {
            index: 1,
            address: ip.into(),
            prefix_len: 24,
        });
        let r = replay(&snap).unwrap();
        let del = &r.diagnosis.fix.unwrap().argv[2];
        assert!(!del.contains("DEL firewall"), "{del}");
        assert!(
            del.contains("DEL portmap") && del.contains("DEL bridge"),
            "{del}"
        );
    }
}
