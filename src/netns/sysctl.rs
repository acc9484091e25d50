//! The sysctls that matter for container networking, read and written per namespace.
//!
//! /proc/sys/net resolves against the calling thread's namespace, so these work inside
//! [`crate::netns::NetNs::run`].

use std::path::PathBuf;

use serde::Serialize;

/// The sysctls `netns inspect` and `doctor` report, when present in the namespace.
pub(crate) const INTERESTING: &[&str] = &[
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.ipv6.conf.all.disable_ipv6",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
];

/// One sysctl and its value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Sysctl {
    /// Dotted name, e.g. net.ipv4.ip_forward.
    pub name: String,
    /// Value as the kernel prints it, trimmed.
    pub value: String,
}

/// The /proc/sys path of a dotted sysctl name.
pub(crate) fn path_of(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

/// Read one sysctl in the calling thread's namespace (`None` when absent).
pub(crate) fn read(name: &str) -> Option<String> {
    std::fs::read_to_string(path_of(name))
        .ok()
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Write one sysctl in the calling thread's namespace.
pub(crate) fn write(name: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(path_of(name), value)
}

/// The [`INTERESTING`] sysctls present in the calling thread's namespace.
pub(crate) fn interesting() -> Vec<Sysctl> {
    INTERESTING
        .iter()
        .filter_map(|n| {
            read(n).map(|value| Sysctl {
                name: n.to_string(),
                value,
            })
        })
        .collect()
}
