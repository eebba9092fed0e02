//! The port plan applied to one node: which SSH sessions it opens, what each
//! carries, and the endpoints and store that use them.
//!
//! The rule (README, "Ports"): a service keeps its usual port for the stable
//! endpoint on every node; a node's own instance sits one above; and node X's
//! instance is at `X's block` + the last three digits everywhere else — through
//! a `-L` forward when this node dials X, or where X's `-R` forward lands when X
//! dials this node (behind NAT, it cannot be dialed).

use super::{Mesh, MeshNode, API_PORT};
use crate::config::ServiceKind;

/// One node's config, before it is written out.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub node: String,
    pub headless: bool,
    /// The other robbie-mesh nodes' APIs, for their hardware.
    pub nodes: Vec<(String, Reach)>,
    pub peers: Vec<PeerPlan>,
    pub services: Vec<ServicePlan>,
    pub store: Option<String>,
    /// The `postgres` service sync goes through.
    pub sync: Option<String>,
    /// This node's own replica's port.
    pub replica: Option<u16>,
}

/// How this node reaches another node's instance of something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Through this node's `-L` forward of that name.
    Tunnel(String),
    /// At this loopback port: its own instance, or another node's `-R` landing.
    Address(u16),
}

#[derive(Debug, Clone)]
pub struct PeerPlan {
    pub name: String,
    pub ssh: String,
    /// `None`: the defaults (the agent, the keychain entry, the key files).
    pub identity: Option<Vec<String>>,
    /// On-demand peers: released after this long unneeded.
    pub on_demand: Option<String>,
    pub forwards: Vec<Forward>,
    pub reverses: Vec<Forward>,
}

/// A `-L` (local = here, remote = on the peer) or `-R` forward (remote = the
/// landing on the peer, local = here), with why it exists.
#[derive(Debug, Clone)]
pub struct Forward {
    pub name: String,
    pub local: u16,
    pub remote: u16,
    pub why: String,
}

#[derive(Debug, Clone)]
pub struct ServicePlan {
    pub name: String,
    pub kind: ServiceKind,
    pub listen: u16,
    pub probe: Option<String>,
    pub candidates: Vec<(String, Reach, String)>,
}

/// The services `from`'s priority rows use of node `of`.
fn needs(from: &MeshNode, of: &MeshNode) -> Vec<String> {
    from.priority
        .iter()
        .filter(|(_, row)| row.contains(&of.name))
        .map(|(s, _)| s.clone())
        .collect()
}

/// The port plan of `node` (a robbie-mesh node of a validated mesh).
pub fn plan(mesh: &Mesh, node: &MeshNode) -> NodePlan {
    let here = &node.name;
    let mut peers = Vec::new();
    for target in node.dials.iter().filter_map(|d| mesh.node(d)) {
        let mut forwards = Vec::new();
        // What this node uses of the target: a -L forward each, landing in the
        // target's block.
        for svc in needs(node, target) {
            let (Some(m), Some(own)) = (mesh.service(&svc), target.own_port(&svc)) else {
                continue;
            };
            forwards.push(Forward {
                name: format!("{}-{svc}", target.name),
                local: mesh.block_port(target, m.port),
                remote: own,
                why: format!(
                    "{}'s {svc}, in {}'s {}xxx block",
                    target.name, target.name, target.block
                ),
            });
        }
        if target.runs_mesh {
            forwards.push(Forward {
                name: format!("{}-api", target.name),
                local: mesh.block_port(target, API_PORT),
                remote: API_PORT,
                why: format!(
                    "{}'s robbie-mesh API: its hardware, its dashboard",
                    target.name
                ),
            });
        }
        // What the target uses of this node, when it does not dial here itself:
        // published on it with -R, landing in this node's block.
        let mut reverses = Vec::new();
        if target.runs_mesh && !target.dials(here) {
            for svc in needs(target, node) {
                let (Some(m), Some(own)) = (mesh.service(&svc), node.own_port(&svc)) else {
                    continue;
                };
                reverses.push(Forward {
                    name: format!("{svc}-to-{}", target.name),
                    local: own,
                    remote: mesh.block_port(node, m.port),
                    why: format!(
                        "{}'s {svc} row lists {here}; {} cannot dial {here}",
                        target.name, target.name
                    ),
                });
            }
            reverses.push(Forward {
                name: format!("api-to-{}", target.name),
                local: API_PORT,
                remote: mesh.block_port(node, API_PORT),
                why: format!("lets {}'s dashboard see {here}", target.name),
            });
        }
        peers.push(PeerPlan {
            name: target.name.clone(),
            ssh: target.ssh.clone().unwrap_or_default(),
            identity: node.identity.clone().or_else(|| {
                node.headless
                    .then(|| vec![format!("credential:{}", target.name)])
            }),
            on_demand: target.on_demand.clone(),
            forwards,
            reverses,
        });
    }

    // Where this node finds another node's instance of a service.
    let reach = |other: &MeshNode, svc: &str, port: u16| -> (Reach, String) {
        if other.name == *here {
            let own = other.own_port(svc).unwrap_or(port);
            let what = if other.replica
                && mesh
                    .service(svc)
                    .is_some_and(|m| m.kind == ServiceKind::Postgres)
            {
                "this node's replica".to_string()
            } else {
                format!("this node's own {svc}")
            };
            (Reach::Address(own), what)
        } else if node.dials(&other.name) {
            (
                Reach::Tunnel(format!("{}-{svc}", other.name)),
                String::new(),
            )
        } else {
            (
                Reach::Address(mesh.block_port(other, port)),
                format!("{}'s -R landing port", other.name),
            )
        }
    };
    let mut services = Vec::new();
    for (svc, row) in &node.priority {
        let Some(m) = mesh.service(svc) else { continue };
        let candidates = row
            .iter()
            .filter_map(|n| mesh.node(n))
            .map(|other| {
                let (r, why) = reach(other, svc, m.port);
                (other.name.clone(), r, why)
            })
            .collect();
        services.push(ServicePlan {
            name: svc.clone(),
            kind: m.kind,
            listen: m.port,
            probe: m.probe.clone(),
            candidates,
        });
    }

    let mut nodes = Vec::new();
    for other in mesh.mesh_nodes().filter(|o| o.name != *here) {
        if node.dials(&other.name) {
            nodes.push((
                other.name.clone(),
                Reach::Tunnel(format!("{}-api", other.name)),
            ));
        } else if other.dials(here) {
            nodes.push((
                other.name.clone(),
                Reach::Address(mesh.block_port(other, API_PORT)),
            ));
        }
    }

    let sync = services
        .iter()
        .find(|s| s.kind == ServiceKind::Postgres)
        .map(|s| s.name.clone());
    let replica = node
        .replica
        .then(|| {
            node.runs.iter().find_map(|(s, p)| {
                mesh.service(s)
                    .filter(|m| m.kind == ServiceKind::Postgres)
                    .map(|_| *p)
            })
        })
        .flatten();
    NodePlan {
        node: here.clone(),
        headless: node.headless,
        nodes,
        peers,
        services,
        store: node.store.clone(),
        sync,
        replica,
    }
}
