//! The report type of a veth's other end (`netns inspect` resolves it from the snapshot:
//! IFLA_LINK + IFLA_LINK_NETNSID through the nsids each namespace gave), and parallel_map.

use serde::Serialize;

use super::NsId;

/// The other end of a veth.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct VethPeer {
    /// ifindex of the veth in the namespace that was asked.
    pub local_index: u32,
    /// Name of the veth in the namespace that was asked.
    pub local_name: String,
    /// The peer's ifindex, in the peer's namespace.
    pub peer_index: u32,
    /// The peer's name, when its namespace could be found and read.
    pub peer_name: Option<String>,
    /// The namespace holding the peer (None when it could not be found).
    pub peer_ns: Option<NsId>,
    /// A short label for that namespace (name, container, pid:N).
    pub peer_ns_label: Option<String>,
    /// The nsid, as seen from the namespace that was asked; None when the peer is in the same one.
    pub link_netnsid: Option<i32>,
}

/// Run `f(i)` for i in 0..n on a few threads; results in order.
pub(crate) fn parallel_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let workers = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(2)
        .clamp(2, 8)
        .min(n.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, T)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        mine.push((i, f(i)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, t)| t).collect()
}
