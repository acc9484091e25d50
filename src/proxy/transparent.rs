//! Transparent mode: the backend sees the client's own address.
//!
//! The backend socket gets IP_TRANSPARENT / IPV6_TRANSPARENT and is bound to the client's
//! address (its port too when free), so the backend's replies are addressed to the client, not
//! to the proxy. Those replies would be routed on towards the client; in the namespace where the
//! backend socket lives they are brought back to the proxy by
//!
//! - an nft table of this process's own (`inet nettool_proxy_PID`) that sets mark [`MARK`] on
//!   every packet that belongs to a transparent socket's connection (its conntrack mark, set
//!   when the socket sends; `socket transparent 1` for a connection's first packet), and
//!   exempts those connections from other source NAT (a null SNAT ahead of MASQUERADE), and
//! - a policy rule `fwmark MARK/MARK lookup TABLE pref` [`RULE_PREF`] with `local default dev lo`
//!   in TABLE (v4 and v6), so the marked packets are delivered locally, to the socket.
//!
//! Each of them is written to a journal (/run/nettool-proxy/PID.json) before it is added,
//! removed when the proxy exits, and by the next proxy to start (transparent or not) after a SIGKILL.
//!
//! A connection keeps the proxy's address (and says why once in the log) when the backend
//! could not answer the client through the proxy: a loopback client and a backend elsewhere,
//! or a client the backend reaches directly (on the same link as the backend, such as another
//! container on the bridge: it would answer the client itself and the client would reset).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Serialize;
use socket2::Socket;

use crate::netns::links::Rtnl;
use crate::netns::NetNs;
use crate::trace::journal::{self, Item, Journal, LOOPBACK_INDEX};

/// The mark bit set on replies to transparent sockets (not used by Docker, Podman/CNI portmap
/// (0x2000), kube-proxy (0x4000, 0x8000), flannel, weave, Istio (0x539/0xfff) or Cilium's low
/// marks (0xf00)).
pub(crate) const MARK: u32 = 0x1000;

/// Preference of the policy rule: before the main table (32766).
pub(crate) const RULE_PREF: u32 = 32700;

/// Where the transparent proxies' journals live.
pub(crate) const JOURNAL_DIR: &str = "/run/nettool-proxy";

/// This process's routing table: one per proxy process, so each removes only its own.
pub(crate) fn table_of(pid: u32) -> u32 {
    0x4e54_0000 + pid
}

/// This process's nft table name.
pub(crate) fn nft_table_of(pid: u32) -> String {
    format!("nettool_proxy_{pid}")
}

/// Errors setting transparent mode up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransparentError {
    /// A step failed.
    #[error("transparent mode in namespace {ns}: {what}: {why}{hint}")]
    Step {
        /// Namespace label.
        ns: String,
        /// The step.
        what: String,
        /// Why.
        why: String,
        /// What to do.
        hint: &'static str,
    },
}

/// The routing and firewall state one transparent proxy added; removed on drop.
#[derive(Debug)]
pub(crate) struct Transparent {
    ns: NetNs,
    journal: Journal,
    /// What was added, for the log.
    pub summary: String,
}

fn step(ns: &NetNs, what: impl Into<String>, why: impl ToString) -> TransparentError {
    TransparentError::Step {
        ns: ns.label().to_string(),
        what: what.into(),
        why: why.to_string(),
        hint: "",
    }
}

/// The nft script of this process's table.
fn nft_script(pid: u32) -> String {
    let t = nft_table_of(pid);
    // Declared, flushed, filled: one transaction that also works when a dead proxy with the
    // same pid left the table behind.
    // - replies: a packet for a transparent socket gets the mark the policy rule routes locally.
    //   Known by its connection's mark (set by `ours` when the socket sent): one compare per
    //   packet. The socket lookup, which would run for every packet of every flow in the
    //   namespace (a Docker host's whole traffic), runs only for a connection's first packet
    //   here: a reply that starts a conntrack entry of its own (a UDP entry that timed out
    //   while the proxy's flow lived on, a flush) still finds its socket, and marks the entry.
    // - ours + keep: connections of transparent sockets get a null SNAT before any other
    //   source NAT (Docker's and the lab's `-s SUBNET ! -o BRIDGE -j MASQUERADE` would rewrite
    //   a client from another bridge to the proxy's address); `socket` is not available in
    //   postrouting, hence the conntrack mark set in output.
    format!(
        "table inet {t} {{}}\nflush table inet {t}\ntable inet {t} {{\n  chain replies {{\n    type filter hook prerouting priority mangle; policy accept;\n    ct mark & {MARK:#x} == {MARK:#x} meta mark set meta mark | {MARK:#x}\n    ct state new socket transparent 1 meta mark set meta mark | {MARK:#x} ct mark set ct mark | {MARK:#x}\n  }}\n  chain ours {{\n    type filter hook output priority mangle; policy accept;\n    socket transparent 1 ct mark set ct mark | {MARK:#x}\n  }}\n  chain keep {{\n    type nat hook postrouting priority srcnat - 1; policy accept;\n    ct mark & {MARK:#x} == {MARK:#x} meta nfproto ipv4 snat ip to ip saddr\n    ct mark & {MARK:#x} == {MARK:#x} meta nfproto ipv6 snat ip6 to ip6 saddr\n  }}\n}}\n"
    )
}

/// Remove what dead transparent proxies left behind (their journals say what and in which
/// namespace). Every proxy does it when it starts, transparent or not, so the rules of a
/// SIGKILLed one do not wait for the next transparent proxy; live ones are left alone.
pub(crate) fn recover_dead() -> Vec<journal::Recovered> {
    journal::recover_in(Path::new(JOURNAL_DIR))
}

impl Transparent {
    /// Add this process's mark rule, policy rules and local routes in `ns` (journaled first).
    pub(crate) fn setup(ns: &NetNs) -> Result<Transparent, TransparentError> {
        let pid = std::process::id();
        let table = table_of(pid);
        let mut t = Transparent {
            ns: ns.clone(),
            journal: Journal::in_dir(Path::new(JOURNAL_DIR)),
            summary: format!(
                "nft table inet {}, rules fwmark {MARK:#x}/{MARK:#x} lookup {table:#x} pref {RULE_PREF} and local default routes in table {table:#x} (IPv4, IPv6)",
                nft_table_of(pid)
            ),
        };
        let ns_path = PathBuf::from(ns.path());
        let ns_inode = ns.id().inode;
        let record = |t: &mut Transparent, item: Item| {
            t.journal
                .record(item)
                .map_err(|e| step(ns, format!("write the journal in {JOURNAL_DIR}"), e))
        };
        record(
            &mut t,
            Item::NftTable {
                ns_path: ns_path.clone(),
                ns_inode,
                family: "inet".into(),
                name: nft_table_of(pid),
            },
        )?;
        crate::trace::ruleset::run_nft(ns, &["-f", "-"], Some(&nft_script(pid))).map_err(|e| {
            TransparentError::Step {
                ns: ns.label().to_string(),
                what: "add the nft table that marks replies to transparent sockets".into(),
                why: e,
                hint: " (the kernel needs nft_socket: `modprobe nft_socket`)",
            }
        })?;
        for v6 in [false, true] {
            record(
                &mut t,
                Item::LocalRoute {
                    ns_path: ns_path.clone(),
                    ns_inode,
                    v6,
                    table,
                },
            )?;
            record(
                &mut t,
                Item::FwmarkRule {
                    ns_path: ns_path.clone(),
                    ns_inode,
                    v6,
                    mark: MARK,
                    mask: MARK,
                    table,
                    pref: RULE_PREF,
                },
            )?;
        }
        let r = ns
            .run(move || -> Result<(), String> {
                let mut c =
                    crate::netns::configure::Configure::open().map_err(|e| e.to_string())?;
                for v6 in [false, true] {
                    let exists =
                        |e: &crate::netns::rtnl::NetlinkError| e.errno() == Some(libc::EEXIST);
                    match c.local_default_route(v6, table, LOOPBACK_INDEX, true) {
                        Err(e) if !exists(&e) => return Err(e.to_string()),
                        _ => {}
                    }
                    match c.fwmark_rule(v6, (MARK, MARK), table, RULE_PREF, true) {
                        Err(e) if !exists(&e) => return Err(e.to_string()),
                        _ => {}
                    }
                }
                Ok(())
            })
            .map_err(|e| step(ns, "enter the namespace", e))?;
        r.map_err(|e| step(ns, "add the policy routing for replies", e))?;
        Ok(t)
    }

    /// Remove everything this process added (also done on drop).
    pub(crate) fn remove(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        for item in self.journal.items.iter().rev() {
            if let Err(e) = journal::undo(item) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            self.journal.finish();
            Ok(())
        } else {
            // The journal stays: the next proxy to start tries again.
            self.journal.items.clear();
            Err(errors.join("; "))
        }
    }

    /// The namespace the rules are in.
    pub(crate) fn netns(&self) -> &NetNs {
        &self.ns
    }
}

impl Drop for Transparent {
    fn drop(&mut self) {
        if !self.journal.items.is_empty() {
            let _ = self.remove();
        }
    }
}

/// Why a connection keeps the proxy's address instead of the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Fallback {
    /// Client and backend are of different address families.
    Family,
    /// The client is on loopback and the backend is not: nothing could route the reply back.
    Loopback,
    /// The backend reaches the client on the same link: it would answer the client directly.
    SameLink,
    /// The kernel refused the bind (the error text is logged).
    Bind,
}

impl Fallback {
    /// One sentence for the log.
    pub(crate) fn why(self) -> &'static str {
        match self {
            Fallback::Family => "the client and the backend use different IP versions",
            Fallback::Loopback => {
                "the client is on loopback and the backend is not: its replies could not come back"
            }
            Fallback::SameLink => {
                "the backend reaches the client on the same link and would answer it directly, bypassing the proxy"
            }
            Fallback::Bind => "the kernel refused to bind the client's address",
        }
    }

    /// An index for "said once" bookkeeping.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Whether the backend socket can carry the client's address, judged in the calling thread's
/// namespace (the backend socket's): None when it can.
pub(crate) fn judge(rtnl: Option<&mut Rtnl>, client: IpAddr, target: IpAddr) -> Option<Fallback> {
    if client.is_ipv4() != target.is_ipv4() {
        return Some(Fallback::Family);
    }
    if client.is_loopback() {
        return (!target.is_loopback()).then_some(Fallback::Loopback);
    }
    let rtnl = rtnl?;
    let (Ok(to_client), Ok(to_target)) = (
        rtnl.route_get(client, None, None),
        rtnl.route_get(target, None, None),
    ) else {
        return None;
    };
    if to_client.kind == "local" {
        return None; // the client's address is one of ours: replies come here anyway
    }
    (to_client.oif.is_some() && to_client.oif == to_target.oif).then_some(Fallback::SameLink)
}

/// IP_TRANSPARENT (or IPV6_TRANSPARENT) on `s`, then bind it to the client's address: its
/// port when free, else any port.
pub(crate) fn bind_as(s: &Socket, client: SocketAddr) -> io::Result<()> {
    let (level, opt) = if client.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT)
    } else {
        (libc::IPPROTO_IP, libc::IP_TRANSPARENT)
    };
    super::sock::set_int_opt(s, level, opt, 1)?;
    match s.bind(&client.into()) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            s.bind(&SocketAddr::new(client.ip(), 0).into())
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_family_are_judged_without_routes() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let c: IpAddr = "10.1.0.2".parse().unwrap();
        let t: IpAddr = "172.17.0.2".parse().unwrap();
        let t6: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(judge(None, lo, t), Some(Fallback::Loopback));
        assert_eq!(judge(None, lo, lo), None);
        assert_eq!(judge(None, c, t6), Some(Fallback::Family));
        assert_eq!(
            judge(None, "::1".parse().unwrap(), t6),
            Some(Fallback::Loopback)
        );
        assert_eq!(judge(None, c, t), None);
    }

    #[test]
    fn the_nft_script_marks_only_transparent_sockets_in_a_table_of_its_own() {
        let s = nft_script(42);
        assert!(s.contains("table inet nettool_proxy_42 {"), "{s}");
        assert!(s.contains("flush table inet nettool_proxy_42"), "{s}");
        assert!(
            s.contains("ct mark & 0x1000 == 0x1000 meta mark set meta mark | 0x1000"),
            "{s}"
        );
        // The per-packet socket lookup only for a connection's first packet.
        assert!(
            s.contains("ct state new socket transparent 1 meta mark set meta mark | 0x1000 ct mark set ct mark | 0x1000"),
            "{s}"
        );
        assert_eq!(table_of(1), 0x4e54_0001);
    }
}
