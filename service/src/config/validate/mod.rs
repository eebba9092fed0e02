//! Turns a [`RawConfig`] into a [`Config`]: checks every value, applies defaults and
//! resolves `~/.ssh/config` aliases, collecting every problem with its location.
//! This file holds the checker and the top level; each section has its file
//! (`peers`, `services`, `store`, `limits`), and `values` the shared value types.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{
    RawBackoff, RawCandidate, RawConfig, RawForward, RawKeepalive, RawPaths, RawPeer, RawProbe,
    RawService, RawStore,
};
use super::{
    line_col, ApiConfig, Backoff, Candidate, Config, ConfigError, ConfigErrors, ForwardConfig,
    ForwardKind, HostPort, IdentitySource, Keepalive, PeerConfig, ProbeConfig, ReplicaConfig,
    ServiceConfig, ServiceKind, SshServer, SshTarget, StoreConfig, SyncConfig, DEFAULT_API_LISTEN,
};
use crate::config::ssh_config::{Proxy, Resolved, SshConfigFile};

mod limits;
mod peers;
mod services;
mod store;
mod values;

use limits::*;
use peers::*;
use services::*;
use store::*;
use values::*;

pub use limits::MAX_REQUEST_BODY;
pub use values::parse_host_port;

/// What validation needs from the machine; tests build their own.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub home: PathBuf,
    pub user: String,
}

impl Env {
    pub fn from_process() -> Env {
        let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"));
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "root".to_string());
        Env { home, user }
    }

    /// `~` and `~/…` expanded against this environment's home.
    pub fn expand(&self, path: &str) -> PathBuf {
        expand_tilde(path, &self.home)
    }
}

pub(crate) fn expand_tilde(path: &str, home: &Path) -> PathBuf {
    if path == "~" {
        home.to_path_buf()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else {
        PathBuf::from(path)
    }
}

struct Checker<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn err(
        &mut self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            location: span.map(|s| line_col(self.text, s.start)),
            field: field.into(),
            message: msg.into(),
        });
    }

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        field: String,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) if d > MAX_DURATION => {
                self.err(
                    Some(v.span()),
                    field,
                    format!(
                        "`{}` is longer than robbie-mesh's longest timer ({}); write e.g. \"30s\" or \"5m\"",
                        cut(v.get_ref()),
                        humantime::format_duration(MAX_DURATION)
                    ),
                );
                default
            }
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(Some(v.span()), field, "must be longer than zero");
                default
            }
            Err(e) => {
                self.err(
                    Some(v.span()),
                    field,
                    format!(
                        "`{}` is not a duration ({e}); write e.g. \"5s\" or \"500ms\"",
                        cut(v.get_ref())
                    ),
                );
                default
            }
        }
    }
}

/// The longest duration any setting takes: every timer of the service (keepalives,
/// back-offs, idle times, sync intervals) is seconds to hours, and a longer one
/// would only overflow the clock arithmetic it feeds.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) fn validate(
    raw: RawConfig,
    text: &str,
    file: &str,
    env: &Env,
) -> Result<Config, ConfigErrors> {
    let mut c = Checker {
        text,
        file,
        errors: Vec::new(),
    };

    let node = match &raw.node {
        Some(n) if valid_name(n.get_ref()) => n.get_ref().clone(),
        Some(n) => {
            c.err(Some(n.span()), "node", name_rule(n.get_ref()));
            String::new()
        }
        None => super::hostname(),
    };

    let api_listen = match &raw.api.listen {
        None => DEFAULT_API_LISTEN.parse().ok(),
        Some(l) => loopback_addr(&mut c, l, "api.listen"),
    };

    let ssh_config_path = raw
        .ssh_config
        .as_deref()
        .map(|p| env.expand(p))
        .unwrap_or_else(|| env.home.join(".ssh").join("config"));
    let ssh_config = SshConfigFile::load(&ssh_config_path, &env.home);
    for why in ssh_config.refused() {
        c.err(None, "ssh_config", why.clone());
    }

    let mut peers = Vec::new();
    let mut peer_names: HashMap<String, usize> = HashMap::new();
    let mut tunnel_names: HashMap<String, String> = HashMap::new();
    let mut listen_ports: HashMap<SocketAddr, String> = HashMap::new();
    if let Some(a) = api_listen {
        listen_ports.insert(a, "api.listen".to_string());
    }

    for (i, rp) in raw.peer.iter().enumerate() {
        let field = format!("peer[{i}]");
        let name = rp.name.get_ref();
        if !valid_name(name) {
            c.err(
                Some(rp.name.span()),
                format!("{field}.name"),
                name_rule(name),
            );
        } else if let Some(prev) = peer_names.insert(name.clone(), i) {
            c.err(
                Some(rp.name.span()),
                format!("{field}.name"),
                format!(
                    "two peers are named `{name}` (peer[{prev}] too); peer names must be unique"
                ),
            );
        }
        if let Some(peer) = validate_peer(&mut c, rp, &field, env, &ssh_config) {
            // validate_peer keeps the order: every -L in file order, then every -R.
            let raws = rp
                .forward
                .iter()
                .enumerate()
                .map(|(j, r)| (format!("{field}.forward[{j}]"), r));
            let raws = raws.chain(
                rp.reverse
                    .iter()
                    .enumerate()
                    .map(|(j, r)| (format!("{field}.reverse[{j}]"), r)),
            );
            for (f, (ffield, raw_f)) in peer.forwards.iter().zip(raws) {
                if let Some(prev) = tunnel_names.insert(f.name.clone(), ffield.clone()) {
                    let span = raw_f.name.as_ref().map_or(raw_f.local.span(), |n| n.span());
                    c.err(
                        Some(span),
                        format!("{ffield}.name"),
                        format!(
                            "tunnel name `{}` is already used by {prev}; set a unique `name`",
                            f.name
                        ),
                    );
                }
                if let Some(addr) = f.listen_addr() {
                    let clash = listen_ports.iter().find(|(a, _)| {
                        a.port() == addr.port()
                            && (a.ip() == addr.ip()
                                || a.ip().is_unspecified()
                                || addr.ip().is_unspecified())
                    });
                    if let Some((_, prev)) = clash {
                        c.err(
                            Some(raw_f.local.span()),
                            format!("{ffield}.local"),
                            format!("local port {} is already used by {prev}; each -L forward needs its own local port", addr.port()),
                        );
                    } else {
                        listen_ports.insert(addr, format!("{ffield}.local"));
                    }
                }
            }
            peers.push(peer);
        }
    }

    let nodes = node_endpoints(&mut c, &raw.nodes, "nodes", &node, &peers);
    let mut services = Vec::new();
    let mut service_names: HashMap<String, usize> = HashMap::new();
    for (i, rs) in raw.service.iter().enumerate() {
        let field = format!("service[{i}]");
        if let Some(prev) = service_names.insert(rs.name.get_ref().clone(), i) {
            c.err(
                Some(rs.name.span()),
                format!("{field}.name"),
                format!("service[{prev}] has this name too; service names must be unique"),
            );
        }
        if let Some(svc) = validate_service(&mut c, rs, &field, &node, &peers, &mut listen_ports) {
            services.push(svc);
        }
    }

    let store = validate_store(&mut c, raw.store.as_ref(), &services, env);
    let limits = validate_limits(&mut c, &raw.limits);

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        limits,
        source: None,
        node,
        api: ApiConfig {
            listen: api_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8007))),
        },
        peers,
        services,
        nodes,
        store,
    })
}

/// A value as shown in a message: long ones cut, so a 5 MB value is not echoed
/// whole into a terminal or a log.
pub fn cut(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        return s.to_string();
    }
    let head: String = s.chars().take(MAX).collect();
    format!("{head}… ({} bytes in all)", s.len())
}

/// A `Host` name as clients write it: letters, digits, `-` and `.`, at most
/// 253 characters.
fn valid_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.')
}

fn name_rule(s: &str) -> String {
    format!(
        "`{}` is not a valid name: use 1-64 letters, digits, '-', '_' or '.'",
        cut(s)
    )
}
