//! Whether a set of node configs fit together. Each config is valid on its own
//! (`config::parse` says so); this checks what no single file can: that a
//! forward to another node reaches what it is meant to there, and that a
//! reverse forward lands where the other node's config looks for it. A peer is
//! matched to a config by name (`[[peer]] name` = the other file's `node`);
//! forwards to nodes without a config here (a plain SSH box) are not checked.
//!
//! One wrong port and a service silently goes to the wrong node — so every
//! finding names the node, the port and what is (or is not) there instead.

use std::collections::BTreeMap;

use crate::config::{Config, ForwardKind, HostPort, ServiceKind};

/// What one node's config says listens on its loopback, by port.
fn listeners(cfg: &Config) -> BTreeMap<u16, String> {
    let mut at = BTreeMap::new();
    at.insert(cfg.api.listen.port(), "its robbie-mesh API".to_string());
    for s in &cfg.services {
        at.insert(s.listen.port(), format!("its {} endpoint", s.name));
    }
    for (peer, f) in cfg.forwards() {
        if f.kind == ForwardKind::Local {
            at.insert(
                f.local.port,
                format!("its forward {} (to {})", f.name, peer.name),
            );
        }
    }
    for (port, what) in own_instances(cfg) {
        at.entry(port).or_insert(what);
    }
    at
}

/// The node's own instances its config names: `{ node = itself, address }`
/// candidates and its replica. By port: "its own ollama".
fn own_instances(cfg: &Config) -> BTreeMap<u16, String> {
    let mut own = BTreeMap::new();
    for s in &cfg.services {
        for c in &s.candidates {
            if c.node == cfg.node && c.tunnel.is_none() && is_loopback(&c.address) {
                own.insert(c.address.port, format!("its own {}", s.name));
            }
        }
    }
    if let Some(r) = &cfg.store.replica {
        own.entry(r.address.port())
            .or_insert_with(|| "its own PostgreSQL replica".to_string());
    }
    own
}

fn is_loopback(hp: &HostPort) -> bool {
    hp.host == "localhost"
        || hp
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The ports where `cfg`'s own instances of services of `kind` (or named
/// `name`) listen.
fn own_of(cfg: &Config, name: &str, kind: ServiceKind) -> Vec<u16> {
    let mut ports: Vec<u16> = cfg
        .services
        .iter()
        .filter(|s| s.name == name || s.kind == kind)
        .flat_map(|s| s.candidates.iter())
        .filter(|c| c.node == cfg.node && c.tunnel.is_none())
        .map(|c| c.address.port)
        .collect();
    if kind == ServiceKind::Postgres {
        ports.extend(cfg.store.replica.iter().map(|r| r.address.port()));
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn there(at: &BTreeMap<u16, String>, port: u16) -> String {
    match at.get(&port) {
        Some(what) => format!("where {what} listens"),
        None => "where nothing in its config listens".to_string(),
    }
}

/// Every disagreement between the configs, one line each (empty: they agree).
pub fn check(configs: &[Config]) -> Vec<String> {
    let by_node: BTreeMap<&str, &Config> = configs.iter().map(|c| (c.node.as_str(), c)).collect();
    let listening: BTreeMap<&str, BTreeMap<u16, String>> = configs
        .iter()
        .map(|c| (c.node.as_str(), listeners(c)))
        .collect();
    let mut found = Vec::new();
    // Reverse forwards landing on each node: (port) -> (from node, tunnel).
    let mut landings: BTreeMap<(&str, u16), Vec<(&str, &str)>> = BTreeMap::new();

    for cfg in configs {
        let n = cfg.node.as_str();
        // Its own instances, on ports it also listens on itself.
        let own = own_instances(cfg);
        for (port, what) in &listening[n] {
            if let Some(instance) = own.get(port).filter(|i| *i != what) {
                found.push(format!(
                    "{n}: {instance} would be at 127.0.0.1:{port}, where {what} listens"
                ));
            }
        }
        for peer in &cfg.peers {
            let Some(other) = by_node.get(peer.name.as_str()) else {
                continue;
            };
            let p = other.node.as_str();
            let at = &listening[p];
            for f in &peer.forwards {
                match f.kind {
                    ForwardKind::Local => {
                        if !is_loopback(&f.remote) {
                            continue;
                        }
                        let r = f.remote.port;
                        // What this forward is for, if a candidate or the nodes
                        // list uses it.
                        let as_candidate = cfg.services.iter().find(|s| {
                            s.candidates
                                .iter()
                                .any(|c| c.tunnel.as_deref() == Some(&f.name))
                        });
                        let as_api = cfg
                            .nodes
                            .iter()
                            .any(|c| c.tunnel.as_deref() == Some(&f.name));
                        if let Some(s) = as_candidate {
                            let own = own_of(other, &s.name, s.kind);
                            if !own.contains(&r) {
                                found.push(format!(
                                    "{n}: forward {} (its {} candidate {p}) dials {p}'s 127.0.0.1:{r}, {}; {}",
                                    f.name,
                                    s.name,
                                    there(at, r),
                                    match own.as_slice() {
                                        [] => format!("{p}'s config runs no {} of its own", s.name),
                                        ports => format!(
                                            "{p}'s own {} is at {}",
                                            s.name,
                                            ports
                                                .iter()
                                                .map(|p| format!("127.0.0.1:{p}"))
                                                .collect::<Vec<_>>()
                                                .join(" and ")
                                        ),
                                    }
                                ));
                            }
                        } else if as_api {
                            if r != other.api.listen.port() {
                                found.push(format!(
                                    "{n}: forward {} (how it reaches {p}'s API) dials {p}'s 127.0.0.1:{r}, {}; {p}'s API is at {}",
                                    f.name,
                                    there(at, r),
                                    other.api.listen
                                ));
                            }
                        } else if !at.contains_key(&r) {
                            found.push(format!(
                                "{n}: forward {} dials {p}'s 127.0.0.1:{r}, where nothing in {p}'s config listens",
                                f.name
                            ));
                        }
                    }
                    ForwardKind::Remote => {
                        let l = f.remote.port;
                        landings
                            .entry((p, l))
                            .or_default()
                            .push((n, f.name.as_str()));
                        if let Some(what) = at.get(&l) {
                            found.push(format!(
                                "{n}: reverse forward {} would land on {p}'s 127.0.0.1:{l}, where {what} listens",
                                f.name
                            ));
                        } else if !expects(other, n, l) {
                            found.push(format!(
                                "{n}: reverse forward {} lands on {p}'s 127.0.0.1:{l}, but {p}'s config expects nothing from {n} there{}",
                                f.name,
                                expected_from(other, n)
                            ));
                        }
                        let here = &listening[n];
                        if is_loopback(&f.local) && !here.contains_key(&f.local.port) {
                            found.push(format!(
                                "{n}: reverse forward {} publishes 127.0.0.1:{}, where nothing in {n}'s config listens",
                                f.name, f.local.port
                            ));
                        }
                    }
                }
            }
        }
    }
    for ((p, l), from) in &landings {
        if from.len() > 1 {
            let who: Vec<String> = from.iter().map(|(n, t)| format!("{n}'s {t}")).collect();
            found.push(format!(
                "{p}: 127.0.0.1:{l} is where {} all land: only the first to connect gets the port",
                who.join(" and ")
            ));
        }
    }

    // What each node expects another to publish to it.
    for cfg in configs {
        let p = cfg.node.as_str();
        let mut expected: Vec<(&str, u16, String)> = Vec::new();
        for s in &cfg.services {
            for c in &s.candidates {
                if c.node != p && c.tunnel.is_none() && is_loopback(&c.address) {
                    expected.push((&c.node, c.address.port, format!("{} {}", c.node, s.name)));
                }
            }
        }
        for c in &cfg.nodes {
            if c.tunnel.is_none() && is_loopback(&c.address) {
                expected.push((&c.node, c.address.port, format!("{} API", c.node)));
            }
        }
        for (m, port, what) in expected {
            let Some(other) = by_node.get(m) else {
                continue;
            };
            let published = other
                .peers
                .iter()
                .filter(|peer| peer.name == p)
                .any(|peer| {
                    peer.forwards
                        .iter()
                        .any(|f| f.kind == ForwardKind::Remote && f.remote.port == port)
                });
            if !published {
                let what = what.replacen(' ', "'s ", 1);
                found.push(format!(
                    "{p}: expects {what} at 127.0.0.1:{port}, but {m}'s config publishes nothing there{}",
                    published_to(other, p)
                ));
            }
        }
    }
    found
}

/// Whether `cfg` looks for something of node `from` at `port`.
fn expects(cfg: &Config, from: &str, port: u16) -> bool {
    cfg.services
        .iter()
        .flat_map(|s| s.candidates.iter())
        .chain(cfg.nodes.iter())
        .any(|c| c.node == from && c.tunnel.is_none() && c.address.port == port)
}

/// "; it expects vengeance's at 22434, 22007" (or nothing).
fn expected_from(cfg: &Config, from: &str) -> String {
    let ports: Vec<String> = cfg
        .services
        .iter()
        .flat_map(|s| s.candidates.iter())
        .chain(cfg.nodes.iter())
        .filter(|c| c.node == from && c.tunnel.is_none())
        .map(|c| c.address.port.to_string())
        .collect();
    if ports.is_empty() {
        String::new()
    } else {
        format!(" (it expects {from}'s at {})", ports.join(", "))
    }
}

/// "; its reverse forwards to aurora land on 22434, 22007" (or nothing).
fn published_to(cfg: &Config, to: &str) -> String {
    let ports: Vec<String> = cfg
        .peers
        .iter()
        .filter(|peer| peer.name == to)
        .flat_map(|peer| peer.forwards.iter())
        .filter(|f| f.kind == ForwardKind::Remote)
        .map(|f| f.remote.port.to_string())
        .collect();
    if ports.is_empty() {
        format!(" (it has no reverse forward to {to})")
    } else {
        format!(
            " (its reverse forwards to {to} land on {})",
            ports.join(", ")
        )
    }
}
