//! Turns a [`RawConfig`] into a [`Config`]: checks every value, applies defaults and
//! resolves `~/.ssh/config` aliases, collecting every problem with its location.

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

fn validate_store(
    c: &mut Checker<'_>,
    raw: Option<&RawStore>,
    services: &[ServiceConfig],
    env: &Env,
) -> StoreConfig {
    let path = raw
        .and_then(|r| r.path.as_deref())
        .map_or_else(super::default_store_path, |p| env.expand(p));
    let sync = raw.and_then(|r| r.sync.as_ref()).and_then(|s| {
        let name = s.service.get_ref();
        let svc = services.iter().find(|x| &x.name == name);
        let address = match svc {
            Some(svc) if svc.kind == ServiceKind::Postgres => Some(svc.listen),
            Some(svc) => {
                c.err(Some(s.service.span()), "store.sync.service", format!("service `{name}` is {}; sync needs a postgres service", svc.kind.as_str()));
                None
            }
            None => {
                c.err(Some(s.service.span()), "store.sync.service", format!("no [[service]] is named `{name}`; name the postgres service whose endpoint leads to the primary"));
                None
            }
        };
        let interval = c.duration(&s.interval, "store.sync.interval".into(), Duration::from_secs(30));
        let retry = c.duration(&s.retry, "store.sync.retry".into(), Duration::from_secs(5));
        let timeout = c.duration(&s.timeout, "store.sync.timeout".into(), Duration::from_secs(30));
        if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(3600) {
            c.err(s.timeout.as_ref().map(|t| t.span()), "store.sync.timeout", "must be between 1s and 1h");
        }
        let batch = match &s.batch {
            Some(b) if (1..=50_000).contains(b.get_ref()) => *b.get_ref() as usize,
            Some(b) => {
                c.err(Some(b.span()), "store.sync.batch", "must be between 1 and 50000 rows");
                2_000
            }
            None => 2_000,
        };
        Some(SyncConfig {
            service: name.clone(),
            address: address?,
            database: s.database.clone().unwrap_or_else(|| "robbie".into()),
            user: s.user.clone().unwrap_or_else(|| "robbie".into()),
            interval,
            retry,
            batch,
            timeout,
        })
    });
    let replica = raw.and_then(|r| r.replica.as_ref()).and_then(|r| {
        let address = loopback_addr(c, &r.address, "store.replica.address")?;
        Some(ReplicaConfig {
            address,
            user: r.user.clone().unwrap_or_else(|| "postgres".into()),
            database: r.database.clone().unwrap_or_else(|| "postgres".into()),
        })
    });
    StoreConfig {
        path,
        sync,
        replica,
    }
}

fn validate_service(
    c: &mut Checker<'_>,
    rs: &RawService,
    field: &str,
    this_node: &str,
    peers: &[PeerConfig],
    listen_ports: &mut HashMap<SocketAddr, String>,
) -> Option<ServiceConfig> {
    let before = c.errors.len();
    let name = rs.name.get_ref();
    if !valid_name(name) {
        c.err(
            Some(rs.name.span()),
            format!("{field}.name"),
            name_rule(name),
        );
    }
    let kind = ServiceKind::ALL
        .iter()
        .find(|(n, _)| *n == rs.kind.get_ref())
        .map(|(_, k)| *k);
    if kind.is_none() {
        c.err(
            Some(rs.kind.span()),
            format!("{field}.kind"),
            format!(
                "`{}` is not a service kind; use one of {}",
                cut(rs.kind.get_ref()),
                ServiceKind::ALL
                    .iter()
                    .map(|(n, _)| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let listen = loopback_addr(c, &rs.listen, &format!("{field}.listen"));
    if let Some(addr) = listen {
        match listen_ports.iter().find(|(a, _)| a.port() == addr.port()) {
            Some((_, prev)) => c.err(
                Some(rs.listen.span()),
                format!("{field}.listen"),
                format!("port {} is already used by {prev}", addr.port()),
            ),
            None => {
                listen_ports.insert(addr, format!("{field}.listen"));
            }
        }
    }
    if rs.candidates.is_empty() {
        c.err(
            Some(rs.name.span()),
            format!("{field}.candidates"),
            "is empty; list the nodes that serve it, first = preferred",
        );
    }
    let candidates = node_endpoints(
        c,
        &rs.candidates,
        &format!("{field}.candidates"),
        this_node,
        peers,
    );
    let vram = validate_vram(c, rs.vram.as_ref(), field);
    let probe = validate_probe(c, rs.probe.as_ref(), field);
    let hold_down = c.duration(
        &rs.hold_down,
        format!("{field}.hold_down"),
        crate::route::HOLD_DOWN,
    );
    let mut hosts = Vec::new();
    for (i, h) in rs.hosts.iter().flatten().enumerate() {
        if valid_host_name(h.get_ref()) {
            hosts.push(h.get_ref().to_ascii_lowercase());
        } else {
            c.err(
                Some(h.span()),
                format!("{field}.hosts[{i}]"),
                format!(
                    "`{}` is not a host name; write the name clients use, e.g. \"ollama.home.arpa\" (without port or scheme)",
                    cut(h.get_ref())
                ),
            );
        }
    }
    if c.errors.len() > before {
        return None;
    }
    Some(ServiceConfig {
        name: name.clone(),
        kind: kind?,
        listen: listen?,
        candidates,
        probe,
        hold_down,
        vram,
        retry_non_idempotent: rs.retry_non_idempotent.unwrap_or(false),
        hosts,
    })
}

/// `[limits]`, each within bounds a listener can live with.
fn validate_limits(c: &mut Checker<'_>, raw: &super::raw::RawLimits) -> super::LimitsConfig {
    let default = super::LimitsConfig::default();
    let idle = c.duration(&raw.idle, "limits.idle".into(), default.idle);
    let idle = if idle < Duration::from_secs(1) || idle > Duration::from_secs(3600) {
        if let Some(v) = &raw.idle {
            c.err(
                Some(v.span()),
                "limits.idle",
                "must be between 1s and 1h (clients keep connections open for seconds to minutes)",
            );
        }
        default.idle
    } else {
        idle
    };
    let body_memory = match &raw.body_memory {
        None => default.body_memory,
        Some(v) => match parse_size(v.get_ref()) {
            Some(b) if (MAX_REQUEST_BODY..=64 << 30).contains(&b) => b,
            Some(_) => {
                c.err(
                    Some(v.span()),
                    "limits.body_memory",
                    format!(
                        "must be between {} MiB (one request's largest body) and 64 GiB",
                        MAX_REQUEST_BODY >> 20
                    ),
                );
                default.body_memory
            }
            None => {
                c.err(
                    Some(v.span()),
                    "limits.body_memory",
                    format!(
                        "`{}` is not a size; write e.g. \"256MiB\"",
                        cut(v.get_ref())
                    ),
                );
                default.body_memory
            }
        },
    };
    super::LimitsConfig { idle, body_memory }
}

/// The largest request body an endpoint takes (prompts with images included).
pub const MAX_REQUEST_BODY: u64 = 64 << 20;

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

/// A list of `{ node, tunnel | address }`: how this node reaches each node's instance
/// of something (a service's candidates, the other nodes' APIs).
fn node_endpoints(
    c: &mut Checker<'_>,
    list: &[RawCandidate],
    field: &str,
    this_node: &str,
    peers: &[PeerConfig],
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for (j, rc) in list.iter().enumerate() {
        let cfield = format!("{field}[{j}]");
        let node = rc.node.get_ref();
        if !valid_name(node) {
            c.err(
                Some(rc.node.span()),
                format!("{cfield}.node"),
                name_rule(node),
            );
            continue;
        }
        if out.iter().any(|x| &x.node == node) {
            c.err(
                Some(rc.node.span()),
                format!("{cfield}.node"),
                format!("`{node}` is listed twice"),
            );
            continue;
        }
        let target = match (&rc.tunnel, &rc.address) {
            (Some(t), None) => tunnel_end(c, t, &cfield, peers),
            (None, Some(a)) => host_port(c, a, &format!("{cfield}.address")).map(|hp| (hp, None)),
            _ => {
                c.err(
                    Some(rc.node.span()),
                    cfield.clone(),
                    "give exactly one of `tunnel` (a -L forward's name) or `address` (host:port)",
                );
                None
            }
        };
        let priority = match &rc.priority {
            Some(p) if *p.get_ref() >= 1 => *p.get_ref(),
            Some(p) => {
                c.err(
                    Some(p.span()),
                    format!("{cfield}.priority"),
                    "must be 1 or more (1 = first choice)",
                );
                1
            }
            None => j as u32 + 1,
        };
        if let Some((address, tunnel)) = target {
            out.push(Candidate {
                node: node.clone(),
                address,
                tunnel,
                is_local: node == this_node,
                priority,
            });
        }
    }
    out
}

/// `vram = { "llama3.1:70b" = "40GiB" }`: what a model needs on one GPU.
fn validate_vram(
    c: &mut Checker<'_>,
    v: Option<&std::collections::BTreeMap<String, Spanned<String>>>,
    field: &str,
) -> Vec<(String, u64)> {
    let Some(v) = v else { return Vec::new() };
    v.iter()
        .filter_map(|(model, size)| match parse_size(size.get_ref()) {
            Some(bytes) => Some((model.clone(), bytes)),
            None => {
                c.err(
                    Some(size.span()),
                    format!("{field}.vram.{model}"),
                    format!(
                        "`{}` is not a size; write e.g. \"40GiB\" or \"24GB\"",
                        cut(size.get_ref())
                    ),
                );
                None
            }
        })
        .collect()
}

/// `40GiB`, `24GB`, `512MiB`, `1073741824`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|ch: char| !ch.is_ascii_digit() && ch != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    (num >= 0.0).then_some((num * mult) as u64)
}

/// A candidate's `tunnel`: must name a `-L` forward; its local end is where to connect.
fn tunnel_end(
    c: &mut Checker<'_>,
    t: &Spanned<String>,
    field: &str,
    peers: &[PeerConfig],
) -> Option<(HostPort, Option<String>)> {
    let name = t.get_ref();
    let found = peers
        .iter()
        .flat_map(|p| p.forwards.iter())
        .find(|f| &f.name == name);
    match found {
        Some(f) if f.kind == ForwardKind::Local => Some((f.local.clone(), Some(name.clone()))),
        Some(_) => {
            c.err(
                Some(t.span()),
                format!("{field}.tunnel"),
                format!(
                    "`{name}` is a -R forward; a candidate needs a -L forward (or an `address`)"
                ),
            );
            None
        }
        None => {
            let known: Vec<&str> = peers
                .iter()
                .flat_map(|p| p.forwards.iter())
                .filter(|f| f.kind == ForwardKind::Local)
                .map(|f| f.name.as_str())
                .collect();
            c.err(
                Some(t.span()),
                format!("{field}.tunnel"),
                format!(
                    "no -L forward is named `{name}` (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            None
        }
    }
}

fn validate_probe(c: &mut Checker<'_>, p: Option<&RawProbe>, field: &str) -> ProbeConfig {
    let d = ProbeConfig::default();
    let Some(p) = p else { return d };
    let path = match &p.path {
        Some(path) if path.get_ref().starts_with('/') => path.get_ref().clone(),
        Some(path) => {
            c.err(
                Some(path.span()),
                format!("{field}.probe.path"),
                "must start with `/`",
            );
            d.path.clone()
        }
        None => d.path.clone(),
    };
    ProbeConfig {
        local_interval: c.duration(
            &p.local_interval,
            format!("{field}.probe.local_interval"),
            d.local_interval,
        ),
        remote_interval: c.duration(
            &p.remote_interval,
            format!("{field}.probe.remote_interval"),
            d.remote_interval,
        ),
        timeout: c.duration(&p.timeout, format!("{field}.probe.timeout"), d.timeout),
        path,
        user: p.user.clone().unwrap_or(d.user),
        database: p.database.clone().unwrap_or(d.database),
    }
}

fn validate_peer(
    c: &mut Checker<'_>,
    rp: &RawPeer,
    field: &str,
    env: &Env,
    ssh_config: &SshConfigFile,
) -> Option<PeerConfig> {
    let errors_before = c.errors.len();
    let name = rp.name.get_ref().clone();

    // user@host:port, or an alias that ~/.ssh/config resolves.
    let target = match parse_ssh_target(rp.ssh.get_ref()) {
        Ok((user, host, port)) => Some(resolve_target(user, host, port, ssh_config, env)),
        Err(msg) => {
            c.err(Some(rp.ssh.span()), format!("{field}.ssh"), msg);
            None
        }
    };
    // The jump hosts on the way, each with its own `~/.ssh/config` block.
    let jump_targets = match target.as_ref().and_then(|(_, r)| r.proxy.as_ref()) {
        None => Vec::new(),
        Some(proxy) => match jump_chain(proxy, ssh_config, env, 0) {
            Ok(hops) => hops,
            Err(msg) => {
                c.err(Some(rp.ssh.span()), format!("{field}.ssh"), msg);
                Vec::new()
            }
        },
    };

    // `identity` and `known_hosts`, when given, serve the jump hosts too (as
    // one key and one known_hosts file usually do); otherwise each server gets
    // what its own `Host` block says.
    let identities = match &rp.identity {
        Some(list) if list.is_empty() => {
            c.err(
                None,
                format!("{field}.identity"),
                "is empty; list at least one of \"agent\", \"keychain:NAME\" or a key file",
            );
            Some(Vec::new())
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .filter_map(|(j, s)| match parse_identity(s.get_ref(), env) {
                    Ok(id) => Some(id),
                    Err(msg) => {
                        c.err(Some(s.span()), format!("{field}.identity[{j}]"), msg);
                        None
                    }
                })
                .collect(),
        ),
        None => None,
    };
    let known_hosts = match &rp.known_hosts {
        Some(RawPaths::One(p)) => Some(vec![env.expand(p)]),
        Some(RawPaths::Many(ps)) if !ps.is_empty() => {
            Some(ps.iter().map(|p| env.expand(p)).collect())
        }
        Some(RawPaths::Many(_)) => {
            c.err(
                None,
                format!("{field}.known_hosts"),
                "is an empty list; give at least one file",
            );
            Some(Vec::new())
        }
        None => None,
    };
    let server_of = |(target, resolved): (SshTarget, Resolved)| SshServer {
        identities: identities
            .clone()
            .unwrap_or_else(|| default_identities(&resolved, env, &name)),
        known_hosts: known_hosts
            .clone()
            .unwrap_or_else(|| default_known_hosts(&resolved, env)),
        global_known_hosts: global_known_hosts(&resolved),
        target,
    };
    let jumps: Vec<SshServer> = jump_targets.into_iter().map(server_of).collect();

    let keepalive = validate_keepalive(c, rp.keepalive.as_ref(), field);
    let backoff = validate_backoff(c, rp.backoff.as_ref(), field);
    let connect_timeout = c.duration(
        &rp.connect_timeout,
        format!("{field}.connect_timeout"),
        Duration::from_secs(10),
    );
    let idle = c.duration(&rp.idle, format!("{field}.idle"), Duration::from_secs(300));
    let on_demand = match rp.connect.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "always")) => None,
        Some((_, "on-demand")) => Some(idle),
        Some((s, other)) => {
            c.err(
                Some(s.span()),
                format!("{field}.connect"),
                format!("`{other}` is not \"always\" or \"on-demand\""),
            );
            None
        }
    };

    let mut forwards = Vec::new();
    for (j, f) in rp.forward.iter().enumerate() {
        if let Some(f) = validate_forward(
            c,
            f,
            ForwardKind::Local,
            &format!("{field}.forward[{j}]"),
            &name,
        ) {
            forwards.push(f);
        }
    }
    let mut remote_binds: HashMap<HostPort, usize> = HashMap::new();
    for (j, f) in rp.reverse.iter().enumerate() {
        let ffield = format!("{field}.reverse[{j}]");
        if let Some(f) = validate_forward(c, f, ForwardKind::Remote, &ffield, &name) {
            if let Some(prev) = remote_binds.insert(f.remote.clone(), j) {
                let span = rp.reverse[j].remote.span();
                c.err(
                    Some(span),
                    format!("{ffield}.remote"),
                    format!(
                        "{} is already forwarded by {field}.reverse[{prev}]",
                        f.remote
                    ),
                );
            }
            forwards.push(f);
        }
    }

    if c.errors.len() > errors_before {
        return None;
    }
    let server = server_of(target?);
    Some(PeerConfig {
        name,
        ssh: rp.ssh.get_ref().clone(),
        server,
        jumps,
        accept_new: rp.accept_new,
        keepalive,
        backoff,
        connect_timeout,
        on_demand,
        forwards,
    })
}

/// `user`, `host`, `port` as written, completed from `~/.ssh/config` as `ssh`
/// does (what is written wins).
fn resolve_target(
    user: Option<String>,
    host: String,
    port: Option<u16>,
    ssh_config: &SshConfigFile,
    env: &Env,
) -> (SshTarget, Resolved) {
    let resolved = ssh_config.resolve(&host);
    let target = SshTarget {
        user: user
            .or(resolved.user.clone())
            .unwrap_or_else(|| env.user.clone()),
        host: resolved.hostname.clone().unwrap_or(host),
        port: port.or(resolved.port).unwrap_or(22),
        host_key_alias: resolved.host_key_alias.clone(),
    };
    (target, resolved)
}

/// The jump hosts a `ProxyJump` line leads through, in the order they are
/// reached, as `ssh` builds the chain: `ProxyJump a,b` reaches `b` through `a`;
/// the first host's own `ProxyJump` (from its `Host` block) comes before it,
/// the others' are overridden, as `ssh -J` on a command line overrides them.
/// A `ProxyCommand` is refused, naming where it is set.
fn jump_chain(
    proxy: &Proxy,
    ssh_config: &SshConfigFile,
    env: &Env,
    depth: usize,
) -> Result<Vec<(SshTarget, Resolved)>, String> {
    const MAX_DEPTH: usize = 8;
    let set = format!("{} sets {} {}", proxy.origin, proxy.keyword, proxy.value);
    if proxy.keyword == "ProxyCommand" {
        return Err(format!(
            "{set}, and robbie-mesh does not run a command to reach a server (it would not silently connect directly instead): \
             use `ProxyJump` for a jump host, set `ProxyCommand none` for this host in a `Host` block above that line, \
             or give the peer an address it can reach directly"
        ));
    }
    if depth > MAX_DEPTH {
        return Err(format!(
            "{set}: following the jump hosts' own ProxyJump lines goes more than {MAX_DEPTH} deep (a loop?); \
             set `ProxyJump none` in the jump host's `Host` block"
        ));
    }
    let mut hops = Vec::new();
    for (i, spec) in proxy.value.split(',').enumerate() {
        let spec = spec.trim();
        let (user, host, port) = parse_ssh_target(spec.strip_prefix("ssh://").unwrap_or(spec))
            .map_err(|m| format!("{set}: {m}"))?;
        let (target, resolved) = resolve_target(user, host, port, ssh_config, env);
        if i == 0 {
            if let Some(own) = &resolved.proxy {
                hops.extend(jump_chain(own, ssh_config, env, depth + 1)?);
            }
        }
        hops.push((target, resolved));
    }
    Ok(hops)
}

/// With no `identity` list: OpenSSH's order, the agent first, then our keychain
/// entry, then the files `~/.ssh/config` names (or the default key files). With
/// `IdentitiesOnly yes`, the agent offers only the files' keys.
fn default_identities(resolved: &Resolved, env: &Env, peer: &str) -> Vec<IdentitySource> {
    let files = if resolved.identity_files.is_empty() {
        ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|f| env.home.join(".ssh").join(f))
            .collect()
    } else {
        resolved.identity_files.clone()
    };
    let only = resolved.identities_only.then(|| files.clone());
    let mut ids = vec![
        IdentitySource::Agent { socket: None, only },
        IdentitySource::Keychain {
            entry: peer.to_string(),
        },
    ];
    ids.extend(files.into_iter().map(|path| IdentitySource::File { path }));
    ids
}

/// With no `known_hosts`: `UserKnownHostsFile`, or `~/.ssh/known_hosts`.
fn default_known_hosts(resolved: &Resolved, env: &Env) -> Vec<PathBuf> {
    if resolved.known_hosts_files.is_empty() {
        vec![env.home.join(".ssh").join("known_hosts")]
    } else {
        resolved.known_hosts_files.clone()
    }
}

/// `GlobalKnownHostsFile`, or the system's files.
fn global_known_hosts(resolved: &Resolved) -> Vec<PathBuf> {
    resolved
        .global_known_hosts_files
        .clone()
        .unwrap_or_else(|| {
            vec![
                PathBuf::from("/etc/ssh/ssh_known_hosts"),
                PathBuf::from("/etc/ssh/ssh_known_hosts2"),
            ]
        })
}

fn validate_keepalive(c: &mut Checker<'_>, k: Option<&RawKeepalive>, field: &str) -> Keepalive {
    let d = Keepalive::default();
    let Some(k) = k else { return d };
    let interval = c.duration(
        &k.interval,
        format!("{field}.keepalive.interval"),
        d.interval,
    );
    let count = match &k.count {
        Some(n) if !(1..=100).contains(n.get_ref()) => {
            c.err(
                Some(n.span()),
                format!("{field}.keepalive.count"),
                "must be between 1 and 100 (the session is declared dead after this many unanswered keepalives)",
            );
            d.count
        }
        Some(n) => *n.get_ref(),
        None => d.count,
    };
    Keepalive { interval, count }
}

fn validate_backoff(c: &mut Checker<'_>, b: Option<&RawBackoff>, field: &str) -> Backoff {
    let d = Backoff::default();
    let Some(b) = b else { return d };
    let initial = c.duration(&b.initial, format!("{field}.backoff.initial"), d.initial);
    let max = c.duration(&b.max, format!("{field}.backoff.max"), d.max.max(initial));
    if max < initial {
        let span = b.max.as_ref().map(|m| m.span());
        c.err(
            span,
            format!("{field}.backoff.max"),
            "must not be shorter than backoff.initial",
        );
    }
    Backoff { initial, max }
}

fn validate_forward(
    c: &mut Checker<'_>,
    f: &RawForward,
    kind: ForwardKind,
    field: &str,
    peer: &str,
) -> Option<ForwardConfig> {
    let before = c.errors.len();
    let local = match kind {
        ForwardKind::Local => {
            loopback_addr(c, &f.local, &format!("{field}.local")).map(|a| HostPort {
                host: a.ip().to_string(),
                port: a.port(),
            })
        }
        ForwardKind::Remote => host_port(c, &f.local, &format!("{field}.local")),
    };
    let remote = host_port(c, &f.remote, &format!("{field}.remote"));
    let name = match &f.name {
        Some(n) if valid_name(n.get_ref()) => Some(n.get_ref().clone()),
        Some(n) => {
            c.err(
                Some(n.span()),
                format!("{field}.name"),
                name_rule(n.get_ref()),
            );
            None
        }
        None => None,
    };
    if c.errors.len() > before {
        return None;
    }
    let (local, remote) = (local?, remote?);
    let name = name.unwrap_or_else(|| match kind {
        ForwardKind::Local => format!("{peer}-L{}", local.port),
        ForwardKind::Remote => format!("{peer}-R{}", remote.port),
    });
    Some(ForwardConfig {
        name,
        kind,
        local,
        remote,
    })
}

fn host_port(c: &mut Checker<'_>, v: &Spanned<String>, field: &str) -> Option<HostPort> {
    match parse_host_port(v.get_ref()) {
        Ok(hp) => Some(hp),
        Err(msg) => {
            c.err(Some(v.span()), field, msg);
            None
        }
    }
}

/// An address this node listens on: must be an IP on loopback with a port.
fn loopback_addr(c: &mut Checker<'_>, v: &Spanned<String>, field: &str) -> Option<SocketAddr> {
    let s = v.get_ref();
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            c.err(
                Some(v.span()),
                field,
                format!("port 0 would be a different random port at each start, which the CLI, the tray and your clients could not find; choose one, e.g. \"{}:8007\"", a.ip()),
            );
            None
        }
        Ok(a) if a.ip().is_loopback() => Some(a),
        Ok(a) => {
            c.err(
                Some(v.span()),
                field,
                format!("{a} is not a loopback address; robbie-mesh only listens on loopback (use 127.0.0.1:{})", a.port()),
            );
            None
        }
        Err(_) => {
            let hint = match parse_host_port(s) {
                Ok(hp) => format!("; write an IP address, e.g. \"127.0.0.1:{}\"", hp.port),
                Err(m) => format!(" ({m})"),
            };
            c.err(
                Some(v.span()),
                field,
                format!("`{}` is not an IP:port address{hint}", cut(s)),
            );
            None
        }
    }
}

/// `host:port` or `[v6]:port`.
pub fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let shown = cut(s);
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("`{shown}` is not [address]:port"))?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(|| {
            format!("`{shown}` has no port; write host:port, e.g. \"127.0.0.1:11434\"")
        })?
    };
    if host.is_empty() {
        return Err(format!(
            "`{shown}` has no host; write host:port, e.g. \"127.0.0.1:11434\""
        ));
    }
    if host.contains(':') && !s.starts_with('[') {
        return Err(format!(
            "`{shown}`: write IPv6 addresses in brackets, e.g. \"[::1]:11434\""
        ));
    }
    let port: u16 = port.parse().map_err(|_| {
        format!(
            "`{}` in `{shown}` is not a port number (1-65535)",
            cut(port)
        )
    })?;
    if port == 0 {
        return Err(format!(
            "port 0 in `{shown}` is not allowed; give a fixed port"
        ));
    }
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// `[user@]host[:port]`; user and port are `None` when not written.
fn parse_ssh_target(s: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let s = s.trim();
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(format!(
            "`{s}` is not user@host[:port] or a ~/.ssh/config Host alias"
        ));
    }
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
        Some(_) => return Err(format!("`{s}` has an empty user name")),
        None => (None, s),
    };
    let (host, port) = if rest.starts_with('[') {
        let hp = parse_host_port(rest)?;
        (hp.host, Some(hp.port))
    } else if let Some((h, p)) = rest.split_once(':') {
        let port = p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{p}` in `{s}` is not a port number (1-65535)"))?;
        (h.to_string(), Some(port))
    } else {
        (rest.to_string(), None)
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    Ok((user, host, port))
}

fn parse_identity(s: &str, env: &Env) -> Result<IdentitySource, String> {
    let s = s.trim();
    if s == "agent" {
        Ok(IdentitySource::Agent {
            socket: None,
            only: None,
        })
    } else if let Some(p) = s.strip_prefix("agent:") {
        Ok(IdentitySource::Agent {
            socket: Some(env.expand(p)),
            only: None,
        })
    } else if let Some(e) = s.strip_prefix("keychain:") {
        if e.is_empty() {
            Err("`keychain:` needs an entry name, e.g. \"keychain:aurora\"".to_string())
        } else {
            Ok(IdentitySource::Keychain {
                entry: e.to_string(),
            })
        }
    } else if let Some(name) = s.strip_prefix("credential:") {
        if name.is_empty() || name.contains('/') {
            Err("`credential:` needs the credential's name, as in the unit's `LoadCredentialEncrypted=NAME:FILE`, e.g. \"credential:aurora\"".to_string())
        } else {
            Ok(IdentitySource::Credential {
                name: name.to_string(),
            })
        }
    } else if s.is_empty() {
        Err(
            "is empty; write \"agent\", \"keychain:NAME\", \"credential:NAME\" or a key file path"
                .to_string(),
        )
    } else {
        Ok(IdentitySource::File {
            path: env.expand(s),
        })
    }
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
