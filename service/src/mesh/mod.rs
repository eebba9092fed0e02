//! A whole mesh described once (`mesh.toml`, the same file on every node), and
//! what follows from it:
//!
//! - [`Mesh::parse`] reads and checks the description: nodes, who dials whom,
//!   what each node runs and each node's priority rows;
//! - [`plan`] applies the port plan (README, "Ports") to one node: its peers,
//!   forwards, reverse forwards, endpoints and store;
//! - [`render`] writes that plan as the node's config file, with comments saying
//!   where each port comes from (`robbie-mesh init --mesh`);
//! - [`agree`] checks that a set of node configs fit together — every forward
//!   reaches what it is meant to, every reverse forward lands where the other
//!   node expects it — whether `init` wrote them or a person edited them.

pub mod agree;
pub mod discover;
pub mod plan;
pub mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{line_col, ConfigError, ConfigErrors, ServiceKind};

/// The port a node's robbie-mesh API listens on (`xxx` = 007 in a port block).
pub const API_PORT: u16 = 8007;

/// What a mesh service is: its kind and the port programs know it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshService {
    pub name: String,
    pub kind: ServiceKind,
    /// The usual port: the stable endpoint's, and `xxx` of the port blocks.
    pub port: u16,
    /// `http` services: the health path the probe asks.
    pub probe: Option<String>,
}

/// The services every mesh knows without being told.
pub fn builtin_services() -> Vec<MeshService> {
    vec![
        MeshService {
            name: "ollama".into(),
            kind: ServiceKind::Ollama,
            port: 11434,
            probe: None,
        },
        MeshService {
            name: "gpu-api".into(),
            kind: ServiceKind::Http,
            port: 8001,
            probe: Some("/health".into()),
        },
        MeshService {
            name: "postgres".into(),
            kind: ServiceKind::Postgres,
            port: 5432,
            probe: None,
        },
    ]
}

/// One machine of the mesh.
#[derive(Debug, Clone)]
pub struct MeshNode {
    pub name: String,
    /// How the nodes that dial it reach it (`user@host[:port]` or a
    /// `~/.ssh/config` alias); `None`: nobody can (behind NAT, a laptop).
    pub ssh: Option<String>,
    /// The nodes this one opens SSH sessions to.
    pub dials: Vec<String>,
    /// Whether robbie-mesh runs there (a rented GPU box may be plain SSH).
    pub runs_mesh: bool,
    /// Runs as a system service: its keys are systemd credentials, not an agent
    /// or a keychain.
    pub headless: bool,
    /// Dialed only while needed, and released after this long unneeded.
    pub on_demand: Option<String>,
    /// Its port block: its services are at `block`xxx on the other nodes.
    pub block: u16,
    /// The services it runs itself, and on which port.
    pub runs: BTreeMap<String, u16>,
    /// Its PostgreSQL is a streaming replica of the primary (not the primary).
    pub replica: bool,
    /// Its priority rows: per service, the nodes to try, best first.
    pub priority: Vec<(String, Vec<String>)>,
    /// Its local store's file, when not the default.
    pub store: Option<String>,
    /// The identities it logs in to its peers with, when not the defaults
    /// (the agent, the keychain entry named after the peer, the key files).
    pub identity: Option<Vec<String>>,
}

impl MeshNode {
    /// The port this node's own instance of `service` listens on.
    pub fn own_port(&self, service: &str) -> Option<u16> {
        self.runs.get(service).copied()
    }

    /// Whether this node opens SSH sessions to `other`.
    pub fn dials(&self, other: &str) -> bool {
        self.dials.iter().any(|d| d == other)
    }
}

/// A validated mesh description.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The file it came from, for messages.
    pub file: String,
    pub services: Vec<MeshService>,
    pub nodes: Vec<MeshNode>,
}

impl Mesh {
    pub fn node(&self, name: &str) -> Option<&MeshNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn service(&self, name: &str) -> Option<&MeshService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The port of `node`'s `service` as every other node sees it: its block
    /// followed by the service's last three digits (Vengeance's Ollama: 22434).
    pub fn block_port(&self, node: &MeshNode, port: u16) -> u16 {
        node.block * 1000 + port % 1000
    }

    /// The nodes robbie-mesh runs on: those `init` writes a config for.
    pub fn mesh_nodes(&self) -> impl Iterator<Item = &MeshNode> {
        self.nodes.iter().filter(|n| n.runs_mesh)
    }

    /// Reads and checks a mesh description; every problem is reported at once,
    /// each with its line and what to do.
    pub fn parse(text: &str, file: &str) -> Result<Mesh, ConfigErrors> {
        let raw: RawMesh = crate::config::deserialize(text, file)?;
        let mut c = Check {
            file,
            text,
            errors: Vec::new(),
        };
        let mesh = validate(raw, &mut c);
        if c.errors.is_empty() {
            Ok(mesh)
        } else {
            Err(ConfigErrors(c.errors))
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Mesh, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::single(&file, format!("cannot read the mesh description: {e}"))
        })?;
        Mesh::parse(&text, &file)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMesh {
    #[serde(default)]
    service: BTreeMap<String, RawMeshService>,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeshService {
    kind: Spanned<String>,
    port: Spanned<u16>,
    probe: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    ssh: Option<Spanned<String>>,
    #[serde(default)]
    dials: Vec<Spanned<String>>,
    mesh: Option<bool>,
    #[serde(default)]
    headless: bool,
    connect: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
    block: Option<Spanned<u16>>,
    #[serde(default)]
    runs: Vec<Spanned<String>>,
    #[serde(default)]
    replica: Option<Spanned<bool>>,
    ports: Option<Spanned<BTreeMap<String, u16>>>,
    priority: Option<Spanned<toml::Table>>,
    store: Option<String>,
}

struct Check<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    fn err(&mut self, span: Option<Range<usize>>, field: String, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            location: span.map(|s| line_col(self.text, s.start)),
            field,
            message,
        });
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn validate(raw: RawMesh, c: &mut Check) -> Mesh {
    let mut services = builtin_services();
    for (name, rs) in &raw.service {
        let field = format!("service.{name}");
        if !valid_name(name) {
            c.err(
                Some(rs.kind.span()),
                field.clone(),
                "a service name is lowercase letters, digits and `-`".into(),
            );
        }
        let kind = ServiceKind::ALL
            .iter()
            .find(|(n, _)| n == rs.kind.get_ref())
            .map(|(_, k)| *k);
        let Some(kind) = kind else {
            let names: Vec<&str> = ServiceKind::ALL.iter().map(|(n, _)| *n).collect();
            c.err(
                Some(rs.kind.span()),
                format!("{field}.kind"),
                format!(
                    "unknown kind `{}`; one of {}",
                    rs.kind.get_ref(),
                    names.join(", ")
                ),
            );
            continue;
        };
        if *rs.port.get_ref() == 0 || *rs.port.get_ref() == u16::MAX {
            c.err(
                Some(rs.port.span()),
                format!("{field}.port"),
                "the usual port of the service, 1 to 65534 (its own instances listen one above)"
                    .into(),
            );
        }
        let s = MeshService {
            name: name.clone(),
            kind,
            port: *rs.port.get_ref(),
            probe: rs.probe.clone(),
        };
        match services.iter_mut().find(|b| b.name == *name) {
            Some(b) => *b = s,
            None => services.push(s),
        }
    }
    for (i, s) in services.iter().enumerate() {
        if let Some(other) = services[..i].iter().find(|o| o.port == s.port) {
            c.err(
                None,
                format!("service.{}.port", s.name),
                format!(
                    "{} is also {}'s port: each service needs its own",
                    s.port, other.name
                ),
            );
        }
        if s.port == API_PORT || s.port % 1000 == API_PORT % 1000 {
            c.err(
                None,
                format!("service.{}.port", s.name),
                format!(
                    "{} would share its port block slot (xxx = {:03}) with the robbie-mesh API's {API_PORT}",
                    s.port,
                    s.port % 1000
                ),
            );
        }
        if let Some(other) = services[..i]
            .iter()
            .find(|o| o.port % 1000 == s.port % 1000)
        {
            c.err(
                None,
                format!("service.{}.port", s.name),
                format!(
                    "{} and {}'s {} end in the same three digits ({:03}): their ports in each node's block would collide",
                    s.port,
                    other.name,
                    other.port,
                    s.port % 1000
                ),
            );
        }
    }

    if raw.node.is_empty() {
        c.err(
            None,
            String::new(),
            "no [[node]]: describe each machine of the mesh (see examples/mesh.toml)".into(),
        );
    }
    let names: Vec<String> = raw.node.iter().map(|n| n.name.get_ref().clone()).collect();
    let mut nodes = Vec::new();
    for (i, rn) in raw.node.iter().enumerate() {
        let name = rn.name.get_ref().clone();
        let field = format!("node[{i}]");
        if !valid_name(&name) {
            c.err(
                Some(rn.name.span()),
                format!("{field}.name"),
                format!("`{name}`: a node name is lowercase letters, digits and `-` (it names tunnels and keychain entries)"),
            );
        }
        if names[..i].contains(&name) {
            c.err(
                Some(rn.name.span()),
                format!("{field}.name"),
                format!("two nodes are called `{name}`"),
            );
        }
        let runs_mesh = rn.mesh.unwrap_or(true);
        let mut runs = BTreeMap::new();
        for (j, s) in rn.runs.iter().enumerate() {
            match services.iter().find(|m| m.name == *s.get_ref()) {
                Some(m) => {
                    // A robbie-mesh node's own instance moves one port up, so
                    // that the stable endpoint can have the usual one.
                    let port = if runs_mesh { m.port + 1 } else { m.port };
                    runs.insert(m.name.clone(), port);
                }
                None => c.err(
                    Some(s.span()),
                    format!("{field}.runs[{j}]"),
                    format!(
                        "unknown service `{}`; known: {} (or describe it in a [service.{}] table)",
                        s.get_ref(),
                        services
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        s.get_ref()
                    ),
                ),
            }
        }
        if let Some(ports) = &rn.ports {
            for (svc, port) in ports.get_ref() {
                match runs.get_mut(svc) {
                    Some(p) => *p = *port,
                    None => c.err(
                        Some(ports.span()),
                        format!("{field}.ports.{svc}"),
                        format!("{name} does not run `{svc}` (add it to `runs`)"),
                    ),
                }
            }
        }
        let replica = rn.replica.as_ref().is_some_and(|r| *r.get_ref());
        if let Some(r) = &rn.replica {
            let runs_pg = runs.keys().any(|s| {
                services
                    .iter()
                    .any(|m| m.name == *s && m.kind == ServiceKind::Postgres)
            });
            if *r.get_ref() && !runs_pg {
                c.err(
                    Some(r.span()),
                    format!("{field}.replica"),
                    format!(
                        "{name} runs no PostgreSQL to be a replica (add \"postgres\" to `runs`)"
                    ),
                );
            }
        }
        let on_demand = match (&rn.connect, &rn.idle) {
            (None, None) => None,
            (Some(m), idle) if m.get_ref() == "on-demand" => Some(
                idle.as_ref()
                    .map(|i| i.get_ref().clone())
                    .unwrap_or_else(|| "5m".into()),
            ),
            (Some(m), _) if m.get_ref() == "always" => None,
            (Some(m), _) => {
                c.err(
                    Some(m.span()),
                    format!("{field}.connect"),
                    format!("`{}`: \"always\" or \"on-demand\"", m.get_ref()),
                );
                None
            }
            (None, Some(i)) => {
                c.err(
                    Some(i.span()),
                    format!("{field}.idle"),
                    "`idle` is for connect = \"on-demand\" nodes".into(),
                );
                None
            }
        };
        if let Some(idle) = &on_demand {
            if humantime::parse_duration(idle).is_err() {
                c.err(
                    rn.idle.as_ref().map(|i| i.span()),
                    format!("{field}.idle"),
                    format!("`{idle}` is not a duration (e.g. \"5m\")"),
                );
            }
        }
        let block = match &rn.block {
            Some(b) => {
                if !(10..=64).contains(b.get_ref()) {
                    c.err(
                        Some(b.span()),
                        format!("{field}.block"),
                        format!(
                            "{}: a port block is 10 to 64 (its ports are {}000 to {}999)",
                            b.get_ref(),
                            b.get_ref(),
                            b.get_ref()
                        ),
                    );
                }
                *b.get_ref()
            }
            None => 21 + i as u16,
        };
        let mut dials = Vec::new();
        for (j, d) in rn.dials.iter().enumerate() {
            let target = d.get_ref();
            let f = format!("{field}.dials[{j}]");
            match raw.node.iter().find(|n| n.name.get_ref() == target) {
                None => c.err(
                    Some(d.span()),
                    f,
                    format!("no node called `{target}`; nodes: {}", names.join(", ")),
                ),
                Some(_) if *target == name => {
                    c.err(Some(d.span()), f, format!("{name} cannot dial itself"))
                }
                Some(t) if t.ssh.is_none() => c.err(
                    Some(d.span()),
                    f,
                    format!("{target} has no `ssh`: say how {name} reaches it (user@host or a ~/.ssh/config alias), or let {target} dial {name} instead"),
                ),
                Some(_) if dials.contains(target) => {
                    c.err(Some(d.span()), f, format!("{target} is listed twice"))
                }
                Some(_) => dials.push(target.clone()),
            }
        }
        if let Some(ssh) = &rn.ssh {
            if ssh.get_ref().trim().is_empty() || ssh.get_ref().contains(char::is_whitespace) {
                c.err(
                    Some(ssh.span()),
                    format!("{field}.ssh"),
                    "user@host[:port] or a ~/.ssh/config Host alias, without spaces".into(),
                );
            }
        }
        if !runs_mesh && (!dials.is_empty() || rn.priority.is_some()) {
            c.err(
                Some(rn.name.span()),
                field.clone(),
                format!("{name} runs no robbie-mesh (mesh = false): it cannot dial others or route by a priority row"),
            );
        }
        nodes.push(MeshNode {
            name,
            ssh: rn.ssh.as_ref().map(|s| s.get_ref().clone()),
            dials,
            runs_mesh,
            headless: rn.headless,
            on_demand,
            block,
            runs,
            replica,
            priority: Vec::new(),
            store: rn.store.clone(),
            identity: None,
        });
    }

    // Priority rows, now that every node is known.
    for (i, rn) in raw.node.iter().enumerate() {
        let Some(table) = &rn.priority else { continue };
        let name = nodes[i].name.clone();
        let mut rows = Vec::new();
        for (svc, value) in table.get_ref() {
            let field = format!("node[{i}].priority.{svc}");
            let Some(service) = services.iter().find(|m| m.name == *svc) else {
                c.err(
                    Some(table.span()),
                    field,
                    format!("unknown service `{svc}`"),
                );
                continue;
            };
            let Some(list) = value.as_array() else {
                c.err(
                    Some(table.span()),
                    field,
                    "a list of node names, best first".into(),
                );
                continue;
            };
            let mut row: Vec<String> = Vec::new();
            for item in list {
                let Some(other) = item.as_str() else {
                    c.err(
                        Some(table.span()),
                        field.clone(),
                        "node names are strings".into(),
                    );
                    continue;
                };
                let why = match nodes.iter().find(|n| n.name == other) {
                    None => Some(format!("no node called `{other}`; nodes: {}", names.join(", "))),
                    Some(_) if row.iter().any(|r| r == other) => {
                        Some(format!("{other} is listed twice"))
                    }
                    Some(n) if !n.runs.contains_key(svc) => Some(format!(
                        "{name}'s {svc} row lists {other}, which does not run {svc} (add \"{svc}\" to {other}'s `runs`)"
                    )),
                    Some(n) if n.name != name && !nodes[i].dials(other) && !n.dials(&name) => {
                        Some(format!(
                            "{name}'s {svc} row lists {other}, but neither dials the other: add \"{other}\" to {name}'s `dials`{}",
                            if n.ssh.is_none() {
                                format!(" (and give {other} an `ssh`), or \"{name}\" to {other}'s")
                            } else {
                                String::new()
                            }
                        ))
                    }
                    Some(n) if n.name != name && !nodes[i].dials(other) && !n.runs_mesh => {
                        Some(format!(
                            "{other} runs no robbie-mesh, so it cannot publish its {svc} to {name}: {name} must dial it"
                        ))
                    }
                    Some(_) => None,
                };
                match why {
                    Some(why) => c.err(Some(table.span()), field.clone(), why),
                    None => row.push(other.to_string()),
                }
            }
            if row.is_empty() && !list.is_empty() {
                continue;
            }
            rows.push((service.name.clone(), row));
        }
        // The file's order of services, not the table's (alphabetical).
        rows.sort_by_key(|(s, _)| services.iter().position(|m| m.name == *s));
        nodes[i].priority = rows;
    }
    Mesh {
        file: c.file.to_string(),
        services,
        nodes,
    }
}
