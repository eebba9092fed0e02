//! The config file exactly as written: serde structs with `deny_unknown_fields`, and
//! `Spanned` wherever validation later needs to point at a line. Nothing here is
//! trusted; `super::validate` turns it into a [`super::Config`].

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node: Option<Spanned<String>>,
    /// Path of the OpenSSH client config used to resolve host aliases.
    pub ssh_config: Option<String>,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub peer: Vec<RawPeer>,
    #[serde(default)]
    pub service: Vec<RawService>,
    /// The other nodes' APIs, to learn their hardware: `{ node, tunnel | address }`.
    #[serde(default)]
    pub nodes: Vec<RawCandidate>,
    pub store: Option<RawStore>,
    #[serde(default)]
    pub limits: RawLimits,
}

/// `[limits]`: what every listener allows a client.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// An HTTP connection waiting this long for a request's head is closed.
    pub idle: Option<Spanned<String>>,
    /// Request bodies held in memory by all endpoints together (for retries).
    pub body_memory: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// The SQLite file (default: the platform's data dir).
    pub path: Option<String>,
    pub sync: Option<RawSync>,
    pub replica: Option<RawReplica>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplica {
    /// This node's standby (loopback).
    pub address: Spanned<String>,
    pub user: Option<String>,
    pub database: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSync {
    /// A `postgres` `[[service]]` of this node: sync goes through its endpoint.
    pub service: Spanned<String>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub interval: Option<Spanned<String>>,
    pub retry: Option<Spanned<String>>,
    pub batch: Option<Spanned<u32>>,
    /// The longest a statement, a lock wait or an idle transaction may last on the
    /// primary.
    pub timeout: Option<Spanned<String>>,
}

/// One `[[service]]`: a stable local endpoint and the nodes that can serve it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub listen: Spanned<String>,
    /// In priority order: this node's row of the Resource Priority Matrix.
    #[serde(default)]
    pub candidates: Vec<RawCandidate>,
    pub probe: Option<RawProbe>,
    /// How long a recovered node waits before traffic moves back to it.
    pub hold_down: Option<Spanned<String>>,
    /// VRAM a model needs: `{ "llama3.1:70b" = "40GiB" }`.
    pub vram: Option<std::collections::BTreeMap<String, Spanned<String>>>,
    /// `http` services: retry POST/PATCH elsewhere even if it may have run.
    pub retry_non_idempotent: Option<bool>,
    /// Names besides loopback ones that clients may use to reach the endpoint
    /// (its `Host`), e.g. "ollama.home.arpa" mapped to 127.0.0.1.
    pub hosts: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCandidate {
    pub node: Spanned<String>,
    /// A `-L` tunnel whose local end reaches the node's instance.
    pub tunnel: Option<Spanned<String>>,
    /// Or an address reached directly (this node's own instance, a `-R` landing port).
    pub address: Option<Spanned<String>>,
    /// Its rank (1 = first choice; default: its position in the list). Candidates
    /// of equal rank share the traffic by load.
    pub priority: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    /// Between probes of a candidate on this node (default 2 s).
    pub local_interval: Option<Spanned<String>>,
    /// Between probes of a candidate behind a tunnel (default 5 s).
    pub remote_interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    /// `http` services: the health path (default `/`).
    pub path: Option<Spanned<String>>,
    /// `postgres` services: who the probe logs in as (default `postgres`), and where.
    pub user: Option<String>,
    pub database: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    pub name: Spanned<String>,
    pub ssh: Spanned<String>,
    pub identity: Option<Vec<Spanned<String>>>,
    pub known_hosts: Option<RawPaths>,
    #[serde(default)]
    pub accept_new: bool,
    pub keepalive: Option<RawKeepalive>,
    pub backoff: Option<RawBackoff>,
    pub connect_timeout: Option<Spanned<String>>,
    /// "always" (default) or "on-demand": connected only while needed.
    pub connect: Option<Spanned<String>>,
    /// On-demand peers: released after not being needed for this long.
    pub idle: Option<Spanned<String>>,
    #[serde(default)]
    pub forward: Vec<RawForward>,
    #[serde(default)]
    pub reverse: Vec<RawForward>,
}

/// `known_hosts` takes one path or a list, like OpenSSH's `UserKnownHostsFile`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPaths {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepalive {
    pub interval: Option<Spanned<String>>,
    pub count: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub initial: Option<Spanned<String>>,
    pub max: Option<Spanned<String>>,
}

/// One `[[peer.forward]]` (ssh -L) or `[[peer.reverse]]` (ssh -R).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub name: Option<Spanned<String>>,
    pub local: Spanned<String>,
    pub remote: Spanned<String>,
}
