//! Configuration: the TOML file a user writes, validated into a [`Config`] that the
//! rest of the service uses without unwrapping anything.
//!
//! `raw` holds the serde structs exactly as written; [`parse`] deserializes them (with
//! the path of the offending field on error), then `validate` checks every value,
//! resolves `~/.ssh/config` aliases and applies defaults. Every problem is reported
//! with the file, line, column and field it concerns, and all problems are reported
//! at once rather than the first only.
//!
//! Longer than most files on purpose: it is the whole validated vocabulary, one
//! documented type per section; reading (`raw.rs`) and checking (`validate/`) live
//! apart.

mod raw;
pub mod ssh_config;
pub(crate) mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::{cut, parse_host_port, MAX_REQUEST_BODY};

/// Default loopback address of the service API (the seed's port 8007).
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8007";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from; `None` for the built-in local-only default.
    pub source: Option<PathBuf>,
    /// This node's name.
    pub node: String,
    pub api: ApiConfig,
    pub peers: Vec<PeerConfig>,
    pub services: Vec<ServiceConfig>,
    /// How to reach the other nodes' APIs (for their hardware inventory).
    pub nodes: Vec<Candidate>,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
}

/// `[limits]`: what every listener allows a client (`crate::door`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// An HTTP connection waiting this long for a request's head (from its
    /// start, or the end of the previous answer) is closed: idle keep-alive
    /// connections and slowly sent heads alike. Also the longest pause inside
    /// a request body.
    pub idle: Duration,
    /// Request bodies all endpoints together hold in memory (for retries);
    /// beyond it a request gets 503 with `Retry-After`.
    pub body_memory: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            idle: Duration::from_secs(60),
            body_memory: 256 << 20,
        }
    }
}

/// `[store]`: the local SQLite store, and its sync with the PostgreSQL primary.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub sync: Option<SyncConfig>,
    pub replica: Option<ReplicaConfig>,
}

/// `[store.replica]`: this node's streaming standby, watched for its lag.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub address: SocketAddr,
    pub user: String,
    pub database: String,
}

/// `[store.sync]`: sync through the endpoint of a `postgres` service of this node.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The `[[service]]` whose endpoint leads to the primary.
    pub service: String,
    /// That service's endpoint address.
    pub address: SocketAddr,
    pub database: String,
    pub user: String,
    /// Between rounds when nothing asks for one sooner.
    pub interval: Duration,
    /// Between attempts while the primary cannot be reached.
    pub retry: Duration,
    /// Rows per pushed or pulled batch.
    pub batch: usize,
    /// The longest a statement, a lock wait or a transaction left idle may last
    /// on the primary (then the server ends it); a call from here may take twice
    /// that, transfer included.
    pub timeout: Duration,
}

/// `<data dir>/robbie-mesh/store.db` (`~/.local/share` on Linux,
/// `~/Library/Application Support` on macOS).
pub fn default_store_path() -> PathBuf {
    // Under systemd with `StateDirectory=robbie-mesh`: /var/lib/robbie-mesh.
    if let Some(dir) = systemd_directory("STATE_DIRECTORY") {
        return dir.join("store.db");
    }
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("robbie-mesh")
        .join("store.db")
}

/// The first directory systemd passes in `$STATE_DIRECTORY` or
/// `$CONFIGURATION_DIRECTORY` (set by the unit's `StateDirectory=` and
/// `ConfigurationDirectory=`; colon-separated when several).
fn systemd_directory(var: &str) -> Option<PathBuf> {
    let value = std::env::var_os(var)?;
    let first = value.to_str()?.split(':').next()?.to_string();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// Declares [`ServiceKind`] from one list: each kind's variant and its name in the
/// config file (what a kind does is its module in `crate::kinds`).
macro_rules! service_kinds {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        /// What a service speaks, which decides how it is probed and proxied.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum ServiceKind {
            $(#[serde(rename = $name)] $variant,)+
        }

        impl ServiceKind {
            /// Every kind, with its name in the config file.
            pub const ALL: &'static [(&'static str, ServiceKind)] =
                &[$(($name, ServiceKind::$variant),)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ServiceKind::$variant => $name,)+
                }
            }
        }
    };
}

service_kinds! {
    Ollama => "ollama",
    Http => "http",
    Postgres => "postgres",
    Tcp => "tcp",
}

/// A stable local endpoint and, in priority order, the nodes that can serve it.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub kind: ServiceKind,
    pub listen: SocketAddr,
    pub candidates: Vec<Candidate>,
    pub probe: ProbeConfig,
    pub hold_down: Duration,
    /// VRAM each listed model needs on one GPU, in bytes.
    pub vram: Vec<(String, u64)>,
    /// `http` services: retry a request whose method is not idempotent (POST,
    /// PATCH) on the next node even when it may have reached the first one.
    pub retry_non_idempotent: bool,
    /// `Host` names the endpoint accepts besides loopback ones (lowercase).
    pub hosts: Vec<String>,
}

/// One node's instance of a service, as reached from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    /// Where to connect: a tunnel's local end, or a direct address.
    pub address: HostPort,
    /// The `-L` tunnel it is reached through (its session is a health layer).
    pub tunnel: Option<String>,
    /// The instance runs on this node (probed at the local interval).
    pub is_local: bool,
    /// Its rank, 1 = first choice (default: its position); equal ranks share by load.
    pub priority: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub local_interval: Duration,
    pub remote_interval: Duration,
    pub timeout: Duration,
    /// `http` services: the path probed.
    pub path: String,
    /// `postgres` services: the probe's user and database (a password, if needed,
    /// is the keychain entry `postgres:<service>`).
    pub user: String,
    pub database: String,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            local_interval: Duration::from_secs(2),
            remote_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            path: "/".into(),
            user: "postgres".into(),
            database: "postgres".into(),
        }
    }
}

impl ProbeConfig {
    pub fn interval(&self, c: &Candidate) -> Duration {
        if c.is_local {
            self.local_interval
        } else {
            self.remote_interval
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
}

/// One SSH server this node keeps a session with, and the forwards over it.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub name: String,
    /// The `ssh =` value as written (alias or user@host:port), for display.
    pub ssh: String,
    /// The peer's SSH server.
    pub server: SshServer,
    /// Jump hosts (`ProxyJump` in `~/.ssh/config`), in the order they are
    /// reached: the first is dialled, each next one (and then `server`) through
    /// a session to the one before, as `ssh -J` does. Empty: `server` is dialled.
    pub jumps: Vec<SshServer>,
    /// An unknown host key (of `server` or a jump host) is recorded in the first
    /// known_hosts file and trusted, as `StrictHostKeyChecking accept-new`.
    pub accept_new: bool,
    pub keepalive: Keepalive,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    /// `Some(idle)`: connected only while a service needs it (every higher-priority
    /// candidate down), released after `idle` without need.
    pub on_demand: Option<Duration>,
    pub forwards: Vec<ForwardConfig>,
}

/// An SSH server robbie-mesh logs in to: where it is, which host keys it is
/// trusted with, which keys log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshServer {
    pub target: SshTarget,
    /// Tried in order until the server accepts one.
    pub identities: Vec<IdentitySource>,
    /// known_hosts files; the first one is where `accept_new` records a new key.
    pub known_hosts: Vec<PathBuf>,
    /// The system's known_hosts files (`GlobalKnownHostsFile`, by default
    /// `/etc/ssh/ssh_known_hosts` and `/etc/ssh/ssh_known_hosts2`): read, never
    /// written.
    pub global_known_hosts: Vec<PathBuf>,
}

/// Where the SSH server is, after `~/.ssh/config` resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: String,
    pub host: String,
    pub port: u16,
    /// `HostKeyAlias` from `~/.ssh/config`: known_hosts lists the host under it.
    pub host_key_alias: Option<String>,
}

impl SshTarget {
    /// The name known_hosts lists this server under: `host`, or `[host]:port`, or
    /// the `HostKeyAlias` as it is (no port, as in OpenSSH); lowercased, as
    /// OpenSSH looks it up (a hashed entry hashes the lowercased name).
    pub fn known_hosts_name(&self) -> String {
        if let Some(alias) = &self.host_key_alias {
            return alias.to_ascii_lowercase();
        }
        let host = self.host.to_ascii_lowercase();
        if self.port == 22 {
            host
        } else {
            format!("[{host}]:{}", self.port)
        }
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// One place a private key may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// An ssh-agent: the socket given, or `$SSH_AUTH_SOCK`. `only`: offer just
    /// the agent's keys that are these files' keys (`IdentitiesOnly yes`).
    Agent {
        socket: Option<PathBuf>,
        only: Option<Vec<PathBuf>>,
    },
    /// A private key stored in the OS keychain under this entry name
    /// (see [`crate::keychain::keychain_entry`]).
    Keychain { entry: String },
    /// A private key file; a passphrase, if needed, comes from the keychain.
    File { path: PathBuf },
    /// A private key the service manager passes in (systemd's
    /// `LoadCredentialEncrypted=NAME:FILE`): `$CREDENTIALS_DIRECTORY/NAME`,
    /// encrypted at rest and readable only inside the unit.
    Credential { name: String },
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentitySource::Agent { socket, only } => {
                match socket {
                    None => write!(f, "agent")?,
                    Some(p) => write!(f, "agent:{}", p.display())?,
                }
                match only {
                    Some(files) => {
                        let names: Vec<String> =
                            files.iter().map(|p| p.display().to_string()).collect();
                        write!(
                            f,
                            " (only the keys of {}: IdentitiesOnly)",
                            names.join(", ")
                        )
                    }
                    None => Ok(()),
                }
            }
            IdentitySource::Keychain { entry } => write!(f, "keychain:{entry}"),
            IdentitySource::File { path } => write!(f, "{}", path.display()),
            IdentitySource::Credential { name } => write!(f, "credential:{name}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub count: u32,
}

impl Keepalive {
    /// The longest a dead server can go unnoticed: interval × (count + 1).
    pub fn detection_bound(&self) -> Duration {
        self.interval * (self.count + 1)
    }
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: Duration::from_secs(5),
            count: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardKind {
    /// `ssh -L`: listen here, connect from the server.
    Local,
    /// `ssh -R`: the server listens, we connect here.
    Remote,
}

impl ForwardKind {
    pub fn flag(self) -> &'static str {
        match self {
            ForwardKind::Local => "-L",
            ForwardKind::Remote => "-R",
        }
    }
}

/// A host (name or address) and port, as sshd or this node will resolve it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Unique across the config: the tunnel's name in the API.
    pub name: String,
    pub kind: ForwardKind,
    /// `-L`: the loopback address we listen on; `-R`: where we connect to.
    pub local: HostPort,
    /// `-L`: where the server connects to; `-R`: what the server listens on.
    pub remote: HostPort,
}

impl ForwardConfig {
    /// For `-L`, the parsed listen address (validated to be loopback).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        match self.kind {
            ForwardKind::Local => format!("{}", self.local).parse().ok(),
            ForwardKind::Remote => None,
        }
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line and column, when the problem is at a known place.
    pub location: Option<(usize, usize)>,
    /// The field's path, e.g. `peer[0].forward[1].local`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => write!(f, "{}:{}:{}: ", self.file, line, col)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Everything wrong with a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub(crate) fn single(file: &str, message: String) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            location: None,
            field: String::new(),
            message,
        }])
    }
}

/// Why a config file others could change is not read, as OpenSSH refuses a
/// `~/.ssh/config` with "Bad owner or permissions": owned by someone other than
/// root or us, or writable by group or others. `None` if it is safe (or
/// missing: said when it is read).
pub fn unsafe_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let uid = nix::unistd::getuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 && meta.uid() != uid {
        Some(format!(
            "Bad owner or permissions on {}: it belongs to user {}, who could redirect every tunnel; \
             robbie-mesh reads it only if it is yours or root's (as ssh does with ~/.ssh/config)",
            path.display(),
            meta.uid()
        ))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "Bad owner or permissions on {}: mode {mode:04o} lets others change it, and so redirect every tunnel; \
             run `chmod go-w {}` (ssh refuses such a ~/.ssh/config too)",
            path.display(),
            path.display()
        ))
    } else {
        None
    }
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    if let Some(why) = unsafe_permissions(path) {
        return Err(ConfigErrors::single(&path.display().to_string(), why));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(
            &path.display().to_string(),
            format!("cannot read the config file: {e}"),
        )
    })?;
    let mut cfg = parse(&text, &path.display().to_string())?;
    cfg.source = Some(path.to_path_buf());
    Ok(cfg)
}

/// Validate config text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    parse_with(text, file, &validate::Env::from_process())
}

pub(crate) fn parse_with(
    text: &str,
    file: &str,
    env: &validate::Env,
) -> Result<Config, ConfigErrors> {
    let raw: raw::RawConfig = deserialize(text, file)?;
    validate::validate(raw, text, file, env)
}

/// Deserializes a TOML file into `T`; an error names the file, line, column and
/// field (the mesh description is read the same way).
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ConfigErrors> {
    let to_error = |span: Option<std::ops::Range<usize>>, field: String, message: String| {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            location: span.map(|s| line_col(text, s.start)),
            field,
            message,
        }])
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| to_error(e.span(), String::new(), e.message().to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` values show up in the path as a private field name: not the
        // user's.
        let field = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "")
            .replace("$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        let field = if field == "." { String::new() } else { field };
        to_error(inner.span(), field, inner.message().to_string())
    })
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// Where the service looks for its config when none is given:
/// `$ROBBIE_MESH_CONFIG`, else `<config dir>/robbie-mesh/config.toml`
/// (`~/.config` on Linux, `~/Library/Application Support` on macOS).
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ROBBIE_MESH_CONFIG") {
        return Some(PathBuf::from(p));
    }
    // Under systemd with `ConfigurationDirectory=robbie-mesh`: /etc/robbie-mesh.
    if let Some(dir) = systemd_directory("CONFIGURATION_DIRECTORY") {
        return Some(dir.join("config.toml"));
    }
    dirs::config_dir().map(|d| d.join("robbie-mesh").join("config.toml"))
}

impl Config {
    /// The embedded default: no peers, API on its default port. The service runs
    /// like this when no config file exists.
    pub fn local_only() -> Config {
        let node = hostname();
        Config {
            source: None,
            node,
            api: ApiConfig {
                listen: DEFAULT_API_LISTEN
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8007))),
            },
            peers: Vec::new(),
            services: Vec::new(),
            nodes: Vec::new(),
            limits: LimitsConfig::default(),
            store: StoreConfig {
                path: default_store_path(),
                sync: None,
                replica: None,
            },
        }
    }

    /// Every forward of every peer, with its peer.
    pub fn forwards(&self) -> impl Iterator<Item = (&PeerConfig, &ForwardConfig)> {
        self.peers
            .iter()
            .flat_map(|p| p.forwards.iter().map(move |f| (p, f)))
    }
}

/// `~` and `~/…` expanded against `home`.
pub fn expand_tilde_path(path: &str, home: &Path) -> PathBuf {
    validate::expand_tilde(path, home)
}

/// This machine's short host name, lower-case ("localhost" if it cannot be read).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.trim().split('.').next().unwrap_or("").to_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests;
