//! Which container a process belongs to, from its cgroup path.
//!
//! Only a container's own cgroup counts. A Podman pod's conmon lives under
//! /libpod_parent/PODID/conmon (cgroupfs) or machine.slice/libpod-conmon-CTRID.scope (systemd):
//! it runs in the host's namespace, so taking the pod id or the conmon scope's id for "the
//! container" would name the host namespace after a container.

/// The container id in a process's /proc/PID/cgroup (Docker, containerd/CRI, CRI-O, Podman), if any.
pub(crate) fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(id_in_line)
}

/// A live process whose own cgroup is container `id`'s (its namespace is the container's).
pub(crate) fn pid_in_container(id: &str) -> Option<u32> {
    // The pid namespace is the host's (a debugging container runs with --pid host), like
    // NetNs::from_pid's /proc.
    let proc_dir = std::path::Path::new("/proc");
    std::fs::read_dir(proc_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(proc_dir.join(format!("{pid}/cgroup")))
                .ok()
                .and_then(|cg| container_id_from_cgroup(&cg))
                .is_some_and(|found| found == id)
        })
}

fn id_in_line(line: &str) -> Option<String> {
    let path = line.splitn(3, ':').nth(2).unwrap_or(line);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // conmon (and anything under it) is the engine's monitor, not the container.
    if parts
        .iter()
        .any(|p| *p == "conmon" || p.starts_with("libpod-conmon-"))
    {
        return None;
    }
    for (i, part) in parts.iter().enumerate().rev() {
        let trimmed = part.trim_end_matches(".scope");
        let candidate = trimmed.rsplit(['-', ':']).next().unwrap_or(trimmed);
        if !(candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit())) {
            continue;
        }
        // A bare id directly under libpod_parent is a pod's cgroup, not a container's.
        if i > 0 && parts[i - 1] == "libpod_parent" && trimmed == candidate {
            return None;
        }
        return Some(candidate.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "a631823dc9bc21958e2c58156aa6f82f45249da1cbbc66cbbd37d6f74f7a008a";
    const CTR: &str = "7d984a0e838275c5349f886b1e1010b6d394b408eb63b384fc194d90741c46fd";

    #[test]
    fn docker_and_cri_ids() {
        let id = "a".repeat(64);
        assert_eq!(
            container_id_from_cgroup(&format!("0::/system.slice/docker-{id}.scope")),
            Some(id.clone())
        );
        assert_eq!(
            container_id_from_cgroup(&format!("12:memory:/docker/{id}\n")),
            Some(id.clone())
        );
        assert_eq!(
            container_id_from_cgroup(&format!(
                "0::/kubepods/besteffort/pod1/cri-containerd-{id}.scope"
            )),
            Some(id.clone())
        );
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/user-0.slice/session-1.scope"),
            None
        );
    }

    #[test]
    fn podman_cgroupfs_pod_member_and_its_conmon() {
        // Lines as read on this machine (cgroup v1, cgroupfs manager) for a pod member...
        let member = format!(
            "9:name=systemd:/libpod_parent/{POD}/libpod-{CTR}\n\
             8:pids:/libpod_parent/{POD}/libpod-{CTR}\n"
        );
        assert_eq!(container_id_from_cgroup(&member), Some(CTR.to_string()));
        // ...and for the conmon that watches it, which runs in the host's namespace.
        let conmon = format!(
            "9:name=systemd:/\n8:pids:/libpod_parent/{POD}/conmon\n7:blkio:/libpod_parent/{POD}/conmon\n"
        );
        assert_eq!(container_id_from_cgroup(&conmon), None);
        // conmon of a container outside any pod.
        assert_eq!(
            container_id_from_cgroup("9:name=systemd:/\n8:pids:/libpod_parent/conmon\n"),
            None
        );
        // A process in the pod's own cgroup is not a container either.
        assert_eq!(
            container_id_from_cgroup(&format!("8:pids:/libpod_parent/{POD}\n")),
            None
        );
        // A container outside a pod.
        assert_eq!(
            container_id_from_cgroup(&format!("8:pids:/libpod_parent/libpod-{CTR}\n")),
            Some(CTR.to_string())
        );
    }

    #[test]
    fn podman_systemd_conmon_scope() {
        let conmon = format!("0::/machine.slice/libpod-conmon-{CTR}.scope\n");
        assert_eq!(container_id_from_cgroup(&conmon), None);
        let pod_conmon =
            format!("0::/machine.slice/machine-libpod_pod_{POD}.slice/libpod-conmon-{CTR}.scope\n");
        assert_eq!(container_id_from_cgroup(&pod_conmon), None);
        let member = format!(
            "0::/machine.slice/machine-libpod_pod_{POD}.slice/libpod-{CTR}.scope/container\n"
        );
        assert_eq!(container_id_from_cgroup(&member), Some(CTR.to_string()));
        assert_eq!(
            container_id_from_cgroup(&format!("0::/machine.slice/libpod-{CTR}.scope\n")),
            Some(CTR.to_string())
        );
    }
}
