//! Checks across the whole lab, once every section is read: names that must be unique over all
//! containers, and what a Linux bridge can hold.

use std::collections::BTreeSet;

use super::read::{Ctx, RawContainer, RawNetwork};
use super::{ContainerSpec, NetworkSpec, SpecError, MAX_BRIDGE_PORTS};

/// No alias repeats a container name or another alias. Docker only needs this per network; the
/// lab asks it over the whole lab, which is simpler to read and never less safe.
pub(super) fn aliases_unique(
    cx: &Ctx<'_>,
    raw: &[RawContainer],
    containers: &[ContainerSpec],
) -> Result<(), SpecError> {
    let mut names: BTreeSet<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    for (c, rc) in containers.iter().zip(raw) {
        for (a, ra) in c.aliases.iter().zip(&rc.aliases) {
            if !names.insert(a) {
                return Err(cx.err(
                    ra.span(),
                    format!("alias '{a}' is already a container name or alias"),
                ));
            }
        }
    }
    Ok(())
}

/// A Linux bridge takes at most BR_MAX_PORTS - 1 ports (port 0 is reserved); past that the
/// kernel answers EXFULL ("Exchange full") half way through the build, so it is said here.
pub(super) fn bridge_ports(
    cx: &Ctx<'_>,
    raw: &[RawNetwork],
    networks: &[NetworkSpec],
    containers: &[ContainerSpec],
) -> Result<(), SpecError> {
    for (n, rn) in networks.iter().zip(raw) {
        let on = containers
            .iter()
            .flat_map(|c| &c.attachments)
            .filter(|a| a.network == n.name)
            .count();
        if on > MAX_BRIDGE_PORTS {
            return Err(cx.err(
                rn.name.span(),
                format!(
                    "network '{}' has {on} containers, but a Linux bridge takes at most {MAX_BRIDGE_PORTS} ports (the kernel's BR_MAX_PORTS); split them over more networks",
                    n.name
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    #[test]
    fn mistakes_across_the_lab_keep_their_text() {
        super::super::cases::check_mistakes("alias_");
        super::super::cases::check_mistakes("bridge_");
    }

    #[test]
    fn a_bridge_takes_1023_containers() {
        let mut text = String::from("[[network]]\nname = \"big\"\nsubnet = \"10.8.0.0/21\"\n");
        for i in 0..1023 {
            text.push_str(&format!("[[container]]\nname = \"c{i}\"\n"));
        }
        assert_eq!(parse(&text, "t").unwrap().containers.len(), 1023);
    }

    #[test]
    fn an_alias_on_two_networks_of_one_container_is_one_name() {
        let lab = parse("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[network]]\nname = \"b\"\nsubnet = \"10.0.1.0/24\"\n[[container]]\nname = \"x\"\nnetworks = [\"a\", \"b\"]\naliases = [\"db\"]\n", "t").unwrap();
        assert_eq!(lab.containers[0].aliases, ["db"]);
    }
}
