//! The checks on this machine: the config, the service, each endpoint's port,
//! the keychain, free disk, the service unit, the primary and the replica.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::{Finding, Setup};
use crate::api::wire::{Status, TunnelPhase};
use crate::client::Client;
use crate::config::{self, Config, IdentitySource, ServiceConfig};

/// The running service's view, when it answers.
pub type Running = Arc<Status>;

/// The config (or the fact that there is none), and the setup the other
/// checks run against; `None` when the config cannot be used.
pub fn config(file: Option<&Path>) -> (Option<Setup>, Finding) {
    let setup = |config| Setup { config, api: None };
    let local_only = |why: String| {
        (
            Some(setup(Config::local_only())),
            Finding::pass("config", format!("{why}: local-only mode (no peers); to join a mesh, `robbie-mesh init` writes it")),
        )
    };
    let Some(path) = file.map(Path::to_path_buf).or_else(config::default_path) else {
        return local_only("no default config location here".into());
    };
    if !path.exists() {
        if file.is_some() {
            return (
                None,
                Finding::fail(
                    "config",
                    format!("{}: no such file", path.display()),
                    "give the path of an existing config, or none for the default",
                ),
            );
        }
        return local_only(format!("{} does not exist", path.display()));
    }
    match config::load(&path) {
        Ok(cfg) => {
            let detail = format!(
                "{}: node {}, {} peer(s), {} tunnel(s), {} endpoint(s)",
                path.display(),
                cfg.node,
                cfg.peers.len(),
                cfg.forwards().count(),
                cfg.services.len()
            );
            (Some(setup(cfg)), Finding::pass("config", detail))
        }
        Err(errors) => {
            let first = errors.0.first().map(|e| e.to_string()).unwrap_or_default();
            (
                None,
                Finding::fail(
                    "config",
                    format!("{} problem(s): {first}", errors.0.len()),
                    format!(
                        "fix what `robbie-mesh check-config {}` lists, at the line it names",
                        path.display()
                    ),
                ),
            )
        }
    }
}

/// The client of the service this config describes.
pub fn client(setup: &Setup) -> Client {
    let addr = setup
        .api
        .map(|a| a.to_string())
        .unwrap_or_else(|| setup.config.api.listen.to_string());
    Client::new(addr, crate::access::client_token(&setup.config.store.path))
        .with_timeout(std::time::Duration::from_secs(3))
}

/// Whether the service runs and answers for this config; its status if so.
pub async fn service(setup: &Setup) -> (Vec<Finding>, Option<Running>) {
    let client = client(setup);
    let health = match client.health().await {
        Ok(h) => h,
        Err(e) => {
            let detail = match e {
                crate::client::ClientError::NotRunning { .. } => {
                    format!("not running: nothing answers at {}", client.addr())
                }
                e => format!("not answering at {}: {e}", client.addr()),
            };
            return (
                vec![Finding::fail(
                    "service",
                    detail,
                    "start it: `robbie-mesh service install` (at boot or login) or `robbie-mesh run` (in this terminal)",
                )],
                None,
            );
        }
    };
    if health.node != setup.config.node {
        return (
            vec![Finding::fail(
                "service",
                format!(
                    "the service at {} is node {}, not {} (it runs another config: {})",
                    client.addr(),
                    health.node,
                    setup.config.node,
                    health.config.as_deref().unwrap_or("its built-in default")
                ),
                "restart it with this config (`robbie-mesh service install` again, or `robbie-mesh run --config FILE`)",
            )],
            None,
        );
    }
    let status = match client.status().await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            return (
                vec![Finding::fail(
                    "service",
                    format!("answers /health but not its status: {e}"),
                    "look at its log (`journalctl -u robbie-mesh`, or the terminal running it)",
                )],
                None,
            )
        }
    };
    let up = status
        .tunnels
        .iter()
        .filter(|t| t.state == TunnelPhase::Up)
        .count();
    (
        vec![Finding::pass(
            "service",
            format!(
                "running {} at {}: {up}/{} tunnel(s) up",
                health.version,
                client.addr(),
                status.tunnels.len()
            ),
        )],
        Some(status),
    )
}

/// Whether robbie-mesh holds the endpoint's port (or can take it), and who
/// holds it instead.
pub fn endpoint(svc: &ServiceConfig, running: Option<&Running>) -> Finding {
    let name = format!("endpoint {} ({})", svc.name, svc.listen);
    let hint = crate::kinds::of(svc.kind).port_taken_hint(svc.listen);
    if let Some(status) = running {
        if let Some(s) = status.services.iter().find(|s| s.name == svc.name) {
            if s.endpoint == "listening" {
                return Finding::pass(name, "held by robbie-mesh");
            }
            return Finding::fail(name, format!("{}{}", s.endpoint, held_by(svc.listen)), hint);
        }
    }
    // The service is not running: can it take the port?
    match std::net::TcpListener::bind(svc.listen) {
        Ok(_) => Finding::pass(name, "free: robbie-mesh takes it when it starts"),
        Err(e) => Finding::fail(name, format!("taken ({e}){}", held_by(svc.listen)), hint),
    }
}

/// ", held by PID 1234 (ollama)" when this machine says who listens there.
fn held_by(addr: SocketAddr) -> String {
    match crate::util::port_owner(addr.port()) {
        Some(who) => format!(", held by {who}"),
        None => String::new(),
    }
}

/// The OS keychain, when an identity (or the store's PostgreSQL password) is
/// in it: reachable and unlocked.
pub async fn keychain(cfg: &Config) -> Vec<Finding> {
    let uses: Vec<String> = cfg
        .peers
        .iter()
        .flat_map(|p| p.jumps.iter().chain(std::iter::once(&p.server)))
        .flat_map(|s| s.identities.iter())
        .filter_map(|i| match i {
            IdentitySource::Keychain { entry } => Some(format!("keychain:{entry}")),
            _ => None,
        })
        .collect();
    if uses.is_empty() {
        return vec![Finding::skip(
            "keychain",
            "no identity of this config is in the keychain",
        )];
    }
    let answer = tokio::task::spawn_blocking(crate::keychain::usable);
    match tokio::time::timeout(std::time::Duration::from_secs(4), answer).await {
        Ok(Ok(Ok(()))) => vec![Finding::pass("keychain", "reachable and unlocked")],
        Ok(Ok(Err(crate::keychain::KeychainError::Locked))) => vec![Finding::fail(
            "keychain",
            format!("locked: {} cannot be read, so those logins fall through to the next identity", uses.join(", ")),
            "unlock it: log in to the desktop session (or unlock the \"Login\" keyring in Passwords and Keys / Keychain Access)",
        )],
        // No keychain in this session at all (a server, a system service):
        // those identities are passed over and the next one tried; the login
        // check says whether one works.
        Ok(Ok(Err(
            e @ (crate::keychain::KeychainError::Unavailable(_)
            | crate::keychain::KeychainError::NoBackend),
        ))) => vec![Finding::skip(
            "keychain",
            format!("{e}: {} passed over, the next identity is tried", uses.join(", ")),
        )],
        Ok(Ok(Err(e))) => vec![Finding::fail(
            "keychain",
            e.to_string(),
            "run the service in your desktop session (`robbie-mesh service install --user`), or use a key file or `credential:NAME` instead",
        )],
        _ => vec![Finding::fail(
            "keychain",
            "did not answer within 4 s (waiting for a password prompt?)",
            "unlock it in the desktop session, then run doctor again",
        )],
    }
}

/// Free space where the store lives.
pub fn disk(cfg: &Config) -> Finding {
    let mut dir = cfg.store.path.parent().map(Path::to_path_buf);
    while let Some(d) = &dir {
        if d.exists() {
            break;
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    let Some(dir) = dir else {
        return Finding::skip("disk", "the store's directory is not known");
    };
    match nix::sys::statvfs::statvfs(&dir) {
        Ok(st) => {
            // The counts are u32 on macOS.
            #[allow(clippy::unnecessary_cast)]
            let free = st.blocks_available() as u64 * st.fragment_size() as u64;
            #[allow(clippy::unnecessary_cast)]
            let total = st.blocks() as u64 * st.fragment_size() as u64;
            let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
            // What matters is room for the store to grow, not a percentage.
            if free < (1 << 30) {
                Finding::fail(
                    "disk",
                    format!(
                        "only {} free of {} where the store is ({})",
                        gib(free),
                        gib(total),
                        dir.display()
                    ),
                    "free some space there: SQLite cannot write the conversations of a full disk",
                )
            } else {
                Finding::pass(
                    "disk",
                    format!("{} free where the store is ({})", gib(free), dir.display()),
                )
            }
        }
        Err(e) => Finding::skip("disk", format!("cannot ask {}: {e}", dir.display())),
    }
}

/// The service unit, where one is installed.
pub async fn unit() -> Finding {
    #[cfg(target_os = "linux")]
    {
        use crate::install::Scope;
        let states = tokio::task::spawn_blocking(|| {
            [Scope::System, Scope::User]
                .into_iter()
                .filter_map(crate::install::state)
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let Some(st) = states.first() else {
            return Finding::skip(
                "service unit",
                "not installed as a service (`robbie-mesh service install` starts it at boot or login)",
            );
        };
        let (what, journal) = if st.scope == Scope::System {
            ("system unit", "journalctl -u robbie-mesh")
        } else {
            ("user unit", "journalctl --user -u robbie-mesh")
        };
        let detail = format!(
            "{what}: {}, {} ({}){}",
            st.enabled,
            st.active,
            st.sub,
            if st.status.is_empty() {
                String::new()
            } else {
                format!(": {}", st.status)
            }
        );
        if st.active == "active" && st.enabled == "enabled" {
            Finding::pass("service unit", detail)
        } else if st.active == "active" {
            Finding::fail(
                "service unit",
                detail,
                "it will not start at the next boot or login: `robbie-mesh service install` enables it",
            )
        } else {
            Finding::fail(
                "service unit",
                detail,
                format!(
                    "see why in `{journal}`, then `robbie-mesh service install` starts it again"
                ),
            )
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Finding::skip(
            "service unit",
            "`robbie-mesh service status` shows the LaunchAgent",
        )
    }
}

/// The PostgreSQL primary through the sync endpoint, with this build's schema.
pub async fn primary(cfg: &Config, running: bool) -> Vec<Finding> {
    let Some(sync) = &cfg.store.sync else {
        return vec![Finding::skip(
            "primary",
            "no [store.sync]: conversations stay on this machine",
        )];
    };
    let name = format!("primary (through {})", sync.address);
    if !running {
        return vec![Finding::skip(
            name,
            format!(
                "the {} endpoint is the service's, which is not running",
                sync.service
            ),
        )];
    }
    let connect = crate::store::cli::connect(None, Some(sync));
    let client = match tokio::time::timeout(std::time::Duration::from_secs(4), connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return vec![Finding::fail(
                name,
                format!("{e:#}"),
                format!(
                "the {} endpoint reaches no primary: see its candidates in `robbie-mesh status`",
                sync.service
            ),
            )]
        }
        Err(_) => {
            return vec![Finding::fail(
                name,
                "no answer within 4 s",
                "see the endpoint's candidates in `robbie-mesh status`",
            )]
        }
    };
    match crate::store::primary::check_schema(&client).await {
        Ok(()) => vec![Finding::pass(
            name,
            format!(
                "reachable, robbie schema version {}",
                crate::store::primary::PG_SCHEMA_VERSION
            ),
        )],
        Err(e) => vec![Finding::fail(
            name,
            e.to_string().trim().to_string(),
            "run `robbie-mesh db migrate` (once, from any node) to bring the primary's schema to this version",
        )],
    }
}

/// The replica's state and lag.
pub async fn replica(cfg: &Config) -> Vec<Finding> {
    let Some(r) = &cfg.store.replica else {
        return vec![Finding::skip("replica", "no [store.replica] on this node")];
    };
    let st = crate::store::replica::check(r).await;
    let name = format!("replica ({})", r.address);
    let lag = st.lag_seconds.unwrap_or(0.0);
    match st.state {
        crate::api::wire::ReplicaState::Streaming if lag <= 60.0 => {
            vec![Finding::pass(name, st.summary())]
        }
        crate::api::wire::ReplicaState::Streaming => vec![Finding::fail(
            name,
            st.summary(),
            "it streams but lags: look for a slow link or a long query on it",
        )],
        _ => vec![Finding::fail(
            name,
            st.summary(),
            "start it, or make it again: `robbie-mesh db replica init --from NODE --data-dir DIR`",
        )],
    }
}
