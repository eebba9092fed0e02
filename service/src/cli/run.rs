//! `robbie-mesh run`: logging, the process's limits, the config, then the
//! service until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROBBIE_MESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Logging into `path` (a leading `~/` is the home directory): its directory is
/// created 0700, and a file over 10 MiB is moved aside to `FILE.1` first.
fn init_file_logging(path: &std::path::Path) -> anyhow::Result<()> {
    const KEEP: u64 = 10 * 1024 * 1024;
    let path = match path.strip_prefix("~") {
        Ok(rest) => dirs::home_dir()
            .context("--log-file starts with ~/ but there is no home directory")?
            .join(rest),
        Err(_) => path.to_path_buf(),
    };
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the log directory {}", dir.display()))?;
    }
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > KEEP) {
        let mut old = path.clone().into_os_string();
        old.push(".1");
        let _ = std::fs::rename(&path, old);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROBBIE_MESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    Ok(())
}

/// `run`'s exit status for a config that cannot be used (EX_CONFIG in
/// sysexits.h): the units do not restart on it (`RestartPreventExitStatus=78`),
/// since a restart would only repeat the error.
const EX_CONFIG: u8 = 78;

/// What a long-running service needs of the process before anything else:
/// files it creates are its user's alone whatever umask it inherited (the
/// store holds conversations; keys and known_hosts are secrets), and the
/// open-file limit is as high as allowed (services get 1024 by default,
/// launchd agents 256; each tunnelled connection takes two).
fn prepare_process() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        // macOS refuses an unlimited soft limit; OPEN_MAX (10240) is its ceiling.
        let want = if cfg!(target_os = "macos") {
            hard.min(10240)
        } else {
            hard
        };
        if soft < want {
            match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
                Ok(()) => tracing::debug!("open-file limit raised from {soft} to {want}"),
                Err(e) => tracing::warn!(
                    "open-file limit stays at {soft} (cannot raise it to {want}: {e}); each tunnelled connection takes two"
                ),
            }
        }
    }
}

/// The config to run with: the file given, else the default file if it exists, else
/// the built-in local-only default.
pub(super) fn load_config(explicit: Option<PathBuf>) -> anyhow::Result<Config> {
    if let Some(path) = explicit {
        return config::load(&path).map_err(|e| anyhow::anyhow!("{e}"));
    }
    match config::default_path() {
        Some(path) if path.exists() => config::load(&path).map_err(|e| anyhow::anyhow!("{e}")),
        other => {
            let where_ = other.map_or("the default place".into(), |p| p.display().to_string());
            tracing::info!("no config at {where_}: running in local-only mode (no peers); see `robbie-mesh check-config`");
            Ok(Config::local_only())
        }
    }
}

pub fn run(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    log_file: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    match log_file {
        Some(path) => init_file_logging(path)?,
        None => init_logging(),
    }
    prepare_process();
    let mut cfg = match load_config(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            // The journal (stderr) or the log file shows file:line:column and
            // what to change.
            if log_file.is_some() {
                tracing::error!("{e:#}");
            }
            eprintln!("robbie-mesh: {e:#}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    if let Some(addr) = listen {
        if !addr.ip().is_loopback() {
            eprintln!(
                "robbie-mesh: --listen {addr}: the API only listens on loopback; use e.g. 127.0.0.1:{}",
                addr.port()
            );
            return Ok(ExitCode::from(EX_CONFIG));
        }
        cfg.api.listen = addr;
    }
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = crate::door::bind(cfg.api.listen).with_context(|| {
            format!(
                "cannot listen on {} for the API (is robbie-mesh already running? try `robbie-mesh status`; or set [api] listen)",
                cfg.api.listen
            )
        })?;
        tracing::info!(
            "robbie-mesh {} on node {}: API on http://{}, {} peer(s)",
            env!("CARGO_PKG_VERSION"),
            cfg.node,
            cfg.api.listen,
            cfg.peers.len()
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let (service, done) = crate::app::start(cfg, listener, shutdown);
        tokio::spawn(crate::notify::run(service));
        done.await.context("API server failed")?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
