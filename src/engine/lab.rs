//! nettool labs (`nettool setup`) from their state files under /run/nettool.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::lab::state;

use super::{
    Attachment, Container, ContainerState, EngineKind, Intent, Network, PortBinding, SourceStatus,
};

/// Add the containers and networks of every lab that is up to `intent`.
pub(crate) fn read_into(intent: &mut Intent) {
    let labs = state::list();
    if labs.is_empty() {
        return;
    }
    let mut errors = Vec::new();
    for name in labs {
        match state::load(&name) {
            Ok(st) => add_lab(&st, intent),
            // A lab half up (no state.json yet, or being torn down) is not an error.
            Err(state::StateError::NotFound(_)) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    intent.sources.push(SourceStatus {
        engine: EngineKind::Lab,
        endpoint: state::STATE_ROOT.into(),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    });
}

fn add_lab(st: &state::LabState, intent: &mut Intent) {
    for n in &st.networks {
        let mut subnets = vec![ipnet::IpNet::V4(n.subnet)];
        subnets.extend(n.ipv6.map(ipnet::IpNet::V6));
        intent.networks.push(Network {
            engine: EngineKind::Lab,
            name: n.name.clone(),
            id: format!("{}/{}", st.name, n.name),
            bridge: Some(n.bridge.clone()),
            subnets,
            internal: n.internal,
            portmap: None,
            cni_chain: None,
        });
    }
    for c in &st.containers {
        let netns = c
            .netns
            .as_ref()
            .map(|n| PathBuf::from(crate::netns::NETNS_RUN_DIR).join(n));
        let up = netns.as_ref().is_some_and(|p| p.exists());
        intent.containers.push(Container {
            engine: EngineKind::Lab,
            id: format!("{}/{}", st.name, c.name),
            name: c.name.clone(),
            state: if up || c.netns.is_none() {
                ContainerState::Running
            } else {
                ContainerState::Other("namespace gone".into())
            },
            pid: None,
            netns: netns.filter(|p| p.exists()),
            netns_inode: None,
            network_mode: c.mode.clone(),
            attachments: c
                .networks
                .iter()
                .map(|i| Attachment {
                    network: i.network.clone(),
                    ipv4: Some(i.address),
                    ipv6: i.address6,
                    mac: None,
                    ifname: None,
                })
                .collect(),
            ports: st
                .ports
                .iter()
                .filter(|p| p.container == c.name)
                .map(|p| PortBinding {
                    proto: p.proto.to_string(),
                    host_ip: Some(p.host_ip).filter(|ip: &IpAddr| !ip.is_unspecified()),
                    host_port: p.host_port,
                    container_port: p.container_port,
                })
                .collect(),
            pod: None,
            infra: false,
            project: Some(st.name.clone()),
            created_networks: None,
            rootless: None,
        });
    }
}
