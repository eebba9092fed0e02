//! The `robbie-mesh` command: run the service, check a config, show status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use robbie_mesh::api::{ReconnectReply, TunnelList};
use robbie_mesh::config::{self, Config};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: tunnels allocate and free a packet-sized
/// buffer per SSH packet across threads, which glibc handles with page faults and
/// trims (measured: download throughput 0.77x of OpenSSH with glibc; see the README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "robbie-mesh",
    version,
    about = "Keeps SSH tunnels between your machines alive and routes services over them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Install, enable and start the service (systemd or launchd); every step
    /// is printed, and a second run changes nothing.
    Install {
        #[command(flatten)]
        scope: ScopeArg,
    },
    /// Stop and remove it; the config and the store (your conversations) stay.
    Uninstall {
        #[command(flatten)]
        scope: ScopeArg,
    },
    /// Whether it is installed, enabled and running, and its status line.
    Status {
        #[command(flatten)]
        scope: ScopeArg,
    },
    /// Print a unit, plist or autostart file as installed: system, sysusers,
    /// user, autostart, launchd or launchd-app (all of them, named, without one).
    Print { kind: Option<String> },
}

/// Which service manager: the system's (the default as root on Linux) or
/// your session's (the default otherwise, and always on macOS).
#[derive(clap::Args)]
struct ScopeArg {
    /// A system service, started at boot (a headless node).
    #[arg(long, conflicts_with = "user")]
    system: bool,
    /// A user service, started at login (a desktop: your keychain, your agent).
    #[arg(long)]
    user: bool,
}

impl ScopeArg {
    fn scope(&self) -> robbie_mesh::install::Scope {
        robbie_mesh::install::Scope::pick(self.system, self.user)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (in the foreground; systemd/launchd keep it running).
    Run {
        /// Config file; default $ROBBIE_MESH_CONFIG or ~/.config/robbie-mesh/config.toml
        /// (~/Library/Application Support/robbie-mesh/config.toml on macOS).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// API address, overriding the config's `[api] listen` (loopback only).
        #[arg(long, env = "ROBBIE_MESH_API")]
        listen: Option<SocketAddr>,
        /// Log to this file (appended; a leading `~/` is your home) instead of
        /// stderr: for launchd, where an agent's stderr goes nowhere.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
    },
    /// Validate a config file and summarise what would run.
    CheckConfig { file: Option<PathBuf> },
    /// Show the tunnels of the running service.
    Status {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Send a service's requests to one node first (while it is up).
    Pin {
        service: String,
        node: String,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Route a service automatically again.
    Unpin {
        service: String,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Open the dashboard in your browser, signed in (a one-time link).
    Dashboard {
        /// Only print the link (for a browser on another machine, through a tunnel).
        #[arg(long)]
        print: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Drop a tunnel's SSH session and connect again now.
    Reconnect {
        tunnel: String,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Sync the local store with the PostgreSQL primary now.
    Sync {
        /// Show progress and return once nothing is pending (or fail with why not).
        #[arg(long)]
        wait: bool,
        /// Compare this device with the primary, both directions: what is missing
        /// where (exit status 1 when they differ).
        #[arg(long)]
        verify: bool,
        /// With --verify: push what the primary lacks, fetch what this device lacks.
        #[arg(long, requires = "verify")]
        repair: bool,
        /// With --wait: give up after this long.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        api: ApiArg,
    },
    /// The man page (roff), for packages.
    #[command(hide = true)]
    Man,
    /// The files that make robbie-mesh start at boot or login (systemd, launchd).
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// SSH keys in the OS keychain (what `identity = ["keychain:NAME"]` logs in with).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The local store and the PostgreSQL side of sync.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// The keys robbie-mesh keeps in the keychain.
    List,
    /// Make a new ed25519 key; prints its authorized_keys line.
    Generate { name: String },
    /// Copy a private key file into the keychain. An encrypted file's passphrase
    /// is asked on the terminal, without echo (or taken from
    /// $ROBBIE_MESH_KEY_PASSPHRASE); the key is stored decrypted, protected by the
    /// keychain's own encryption.
    Import { name: String, file: PathBuf },
    /// Print a key's authorized_keys line.
    Show { name: String },
    /// Remove a key from the keychain.
    Delete { name: String },
}

#[derive(Subcommand)]
enum DbCommand {
    /// List the conversations in the local store.
    List {
        /// Archived ones too.
        #[arg(long)]
        archived: bool,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write every conversation and message as JSON Lines (to stdout, or --output).
    Export {
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Create or upgrade robbie-mesh's schema on the PostgreSQL primary (idempotent).
    Migrate {
        /// The primary, e.g. postgres://robbie@127.0.0.1:5433/robbie (default: the
        /// config's [store.sync], through the PostgreSQL endpoint).
        #[arg(long)]
        url: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// This node's streaming replica of the primary.
    Replica {
        #[command(subcommand)]
        command: ReplicaCommand,
    },
}

#[derive(Subcommand)]
enum ReplicaCommand {
    /// Bootstrap a standby of NODE's primary through the tunnel (pg_basebackup with
    /// a replication slot); run it as the user that will own the data directory.
    Init {
        /// The node whose primary to copy (a candidate of a postgres service).
        #[arg(long)]
        from: String,
        /// Where the standby's data goes (must not exist, or be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The replication user on the primary.
        #[arg(long, default_value = "replicator")]
        user: String,
        /// The replication slot (default robbie_<this node>).
        #[arg(long)]
        slot: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ApiArg {
    /// API address of the service (default: from the config, else 127.0.0.1:8007).
    #[arg(long)]
    api: Option<SocketAddr>,
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            listen,
            log_file,
        } => run(config, listen, log_file.as_deref()),
        Command::CheckConfig { file } => check_config(file),
        Command::Status { json, api } => status(json, &api),
        Command::Reconnect { tunnel, api } => reconnect(&tunnel, &api),
        Command::Dashboard { print, api } => dashboard(print, &api),
        Command::Pin { service, node, api } => pin(&service, Some(&node), &api),
        Command::Unpin { service, api } => pin(&service, None, &api),
        Command::Sync {
            verify: true,
            repair,
            timeout,
            api,
            ..
        } => sync_verify(repair, timeout, &api),
        Command::Sync {
            wait, timeout, api, ..
        } => sync(wait, timeout, &api),
        Command::Db { command } => db(command),
        Command::Keys { command } => keys(command),
        Command::Service { command } => service(command),
        Command::Man => man(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("robbie-mesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

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
fn load_config(explicit: Option<PathBuf>) -> anyhow::Result<Config> {
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

fn run(
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
        let listener = tokio::net::TcpListener::bind(cfg.api.listen).await.with_context(|| {
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
        let (service, done) = robbie_mesh::service::start(cfg, listener, shutdown);
        tokio::spawn(robbie_mesh::notify::run(service));
        done.await.context("API server failed")?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn man() -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .context("cannot write the man page")?;
    Ok(ExitCode::SUCCESS)
}

fn service(command: ServiceCommand) -> anyhow::Result<ExitCode> {
    use robbie_mesh::units;
    match command {
        ServiceCommand::Print { kind: Some(kind) } => match units::find(&kind) {
            Some(f) => print!("{}", f.text),
            None => {
                let kinds: Vec<&str> = units::FILES.iter().map(|f| f.kind).collect();
                bail!(
                    "no file called `{kind}`; choose one of {}",
                    kinds.join(", ")
                )
            }
        },
        ServiceCommand::Install { scope } => robbie_mesh::install::install(scope.scope(), None)?,
        ServiceCommand::Uninstall { scope } => robbie_mesh::install::uninstall(scope.scope())?,
        ServiceCommand::Status { scope } => robbie_mesh::install::status(scope.scope())?,
        ServiceCommand::Print { kind: None } => {
            for f in units::FILES {
                println!("# {} — {} (installed as {})", f.kind, f.source, f.installed);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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

fn check_config(file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // A file named on the command line must exist, as `run --config` requires.
    if let Some(named) = &file {
        if !named.exists() {
            eprintln!(
                "{}: no such file (`robbie-mesh run --config` would fail the same way); without a file name, the default config is checked",
                named.display()
            );
            return Ok(ExitCode::from(2));
        }
    }
    let path = match file.or_else(config::default_path) {
        Some(p) => p,
        None => bail!("no config file given and no default location on this system"),
    };
    if !path.exists() {
        println!(
            "{} does not exist: robbie-mesh would run in local-only mode.",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    match config::load(&path) {
        Ok(cfg) => {
            print!("{}", robbie_mesh::cli::config_summary(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} problem(s) in {}", errors.0.len(), path.display());
            Ok(ExitCode::from(2))
        }
    }
}

fn api_addr(arg: &ApiArg) -> SocketAddr {
    if let Some(a) = arg.api {
        return a;
    }
    let from_config = arg
        .config
        .clone()
        .or_else(config::default_path)
        .filter(|p| p.exists())
        .and_then(|p| config::load(&p).ok())
        .map(|c| c.api.listen);
    from_config.unwrap_or_else(|| Config::local_only().api.listen)
}

/// One request to the running service's API: its status and body text.
fn api_call(
    arg: &ApiArg,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    api_call_json(arg, method, path, None)
}

fn api_call_json(
    arg: &ApiArg,
    method: reqwest::Method,
    path: &str,
    json: Option<serde_json::Value>,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let addr = api_addr(arg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = api_token(arg);
    rt.block_on(async {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).build()?;
        let mut req = client.request(method, format!("http://{addr}{path}"));
        if let Ok(t) = &token {
            req = req.bearer_auth(t);
        }
        if let Some(body) = json {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!("robbie-mesh is not running at {addr} (start it with `robbie-mesh run`, or `systemctl --user start robbie-mesh`)")
            } else {
                anyhow::anyhow!("API at {addr} failed: {e}")
            }
        })?;
        let status = resp.status();
        let text = resp.text().await?;
        // Without a readable token, say why rather than the API's generic refusal.
        if status == reqwest::StatusCode::UNAUTHORIZED {
            if let Err(why) = &token {
                bail!("{why}");
            }
        }
        Ok((status, text))
    })
}

/// The API token for the service this CLI talks to: `$ROBBIE_MESH_TOKEN`, or
/// the file next to its store (from the same config the service reads).
fn api_token(arg: &ApiArg) -> Result<String, String> {
    let store = arg
        .config
        .clone()
        .or_else(config::default_path)
        .filter(|p| p.exists())
        .and_then(|p| config::load(&p).ok())
        .map_or_else(config::default_store_path, |c| c.store.path);
    robbie_mesh::access::client_token(&store)
}

/// `dashboard`: a one-time sign-in link, opened in the browser.
fn dashboard(print: bool, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let (code, text) = api_call(api, reqwest::Method::POST, "/v1/auth/link")?;
    if !code.is_success() {
        bail!("API answered {code}: {text}");
    }
    let link: robbie_mesh::api::SignInLink =
        serde_json::from_str(&text).context("the API answered something that is not a link")?;
    println!("{}", link.url);
    if print {
        return Ok(ExitCode::SUCCESS);
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    match std::process::Command::new(opener)
        .arg(&link.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {
            eprintln!("opened in your browser (the link works once, for two minutes)")
        }
        _ => eprintln!(
            "open that link in a browser on this machine (it works once, for two minutes)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn status(json: bool, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let (code, text) = api_call(api, reqwest::Method::GET, "/v1/status")?;
    if !code.is_success() {
        bail!("API answered {code}: {text}");
    }
    if json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let status: serde_json::Value =
        serde_json::from_str(&text).context("the API answered something that is not JSON")?;
    // Services first: which machine serves what, right now.
    print!("{}", robbie_mesh::cli::services_text(&status));
    print!("{}", robbie_mesh::cli::store_text(&status));
    let list: TunnelList =
        serde_json::from_value(status.clone()).context("the API's status has no tunnel list")?;
    if !list.tunnels.is_empty() || status["services"].as_array().is_none_or(|s| s.is_empty()) {
        print!(
            "{}",
            robbie_mesh::cli::tunnel_table(&list.node, &list.tunnels, SystemTime::now())
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn reconnect(tunnel: &str, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let (code, text) = api_call(
        api,
        reqwest::Method::POST,
        &format!("/v1/tunnels/{tunnel}/reconnect"),
    )?;
    match serde_json::from_str::<ReconnectReply>(&text).ok() {
        Some(r) if code.is_success() => {
            println!("reconnecting {} ({})", r.peer, r.tunnels.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let msg =
                serde_json::from_str::<robbie_mesh::api::ApiError>(&text).map_or(text, |e| e.error);
            bail!("{msg}")
        }
    }
}

fn pin(service: &str, node: Option<&str>, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/services/{service}/pin");
    let (code, text) = match node {
        Some(n) => api_call_json(
            api,
            reqwest::Method::POST,
            &path,
            Some(serde_json::json!({ "node": n })),
        )?,
        None => api_call(api, reqwest::Method::DELETE, &path)?,
    };
    match serde_json::from_str::<robbie_mesh::api::PinReply>(&text).ok() {
        Some(r) if code.is_success() => {
            let route = r.route.unwrap_or_else(|| "nothing (no node is up)".into());
            match r.pinned {
                Some(p) => println!("{service} pinned to {p}; requests go to {route}"),
                None => println!("{service} routes automatically; requests go to {route}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let msg =
                serde_json::from_str::<robbie_mesh::api::ApiError>(&text).map_or(text, |e| e.error);
            bail!("{msg}")
        }
    }
}

/// The local store named by the config (the default place without one).
fn open_store(config: Option<PathBuf>) -> anyhow::Result<(Config, robbie_mesh::store::Store)> {
    let cfg = load_config(config)?;
    let store = robbie_mesh::store::Store::open(&cfg.store.path, &cfg.node)?;
    Ok((cfg, store))
}

fn db(command: DbCommand) -> anyhow::Result<ExitCode> {
    use robbie_mesh::store::cli;
    match command {
        DbCommand::List { archived, config } => {
            let (_, store) = open_store(config)?;
            print!("{}", cli::list(&store, archived)?);
        }
        DbCommand::Export { output, config } => {
            let (_, store) = open_store(config)?;
            let (c, m) = match &output {
                Some(path) => {
                    // Conversations: readable by their owner only, as the store.
                    use std::os::unix::fs::OpenOptionsExt;
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    cli::export(&store, &mut std::io::BufWriter::new(file))?
                }
                None => cli::export(&store, &mut std::io::stdout().lock())?,
            };
            eprintln!(
                "exported {c} conversations and {m} messages from {}",
                store.path().display()
            );
        }
        DbCommand::Migrate { url, config } => {
            let cfg = load_config(config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (from, to) = rt.block_on(async {
                let mut client = cli::connect(url.as_deref(), cfg.store.sync.as_ref()).await?;
                robbie_mesh::store::sync::migrate(&mut client)
                    .await
                    .map_err(anyhow::Error::from)
            })?;
            if from == to {
                println!("the robbie schema is up to date (version {to})");
            } else {
                println!("the robbie schema: version {from} -> {to}");
            }
        }
        DbCommand::Replica {
            command:
                ReplicaCommand::Init {
                    from,
                    data_dir,
                    user,
                    slot,
                    config,
                },
        } => {
            let cfg = load_config(config)?;
            robbie_mesh::store::replica::init(&cfg, &from, &data_dir, &user, slot.as_deref())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sync --verify [--repair]`: the service compares (and repairs) on its connection.
fn sync_verify(
    repair: bool,
    timeout: std::time::Duration,
    api: &ApiArg,
) -> anyhow::Result<ExitCode> {
    let addr = api_addr(api);
    eprintln!(
        "comparing this device with the primary{}…",
        if repair { " and repairing" } else { "" }
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = api_token(api).map_err(|why| anyhow::anyhow!("{why}"))?;
    let (code, text) = rt.block_on(async {
        let r = reqwest::Client::builder()
            .timeout(timeout)
            .build()?
            .post(format!("http://{addr}/v1/sync/verify"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "repair": repair }))
            .send()
            .await
            .with_context(|| {
                format!("cannot reach the service's API at {addr}: is `robbie-mesh run` running?")
            })?;
        let code = r.status();
        anyhow::Ok((code, r.text().await?))
    })?;
    if !code.is_success() {
        let why = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("cannot verify: {why}");
    }
    let report: robbie_mesh::store::verify::VerifyReport =
        serde_json::from_str(&text).context("the API answered something that is not a report")?;
    println!("{}", report.text());
    let clean = report
        .after
        .as_ref()
        .map_or(report.is_clean(), |a| a.is_clean());
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `sync --wait`: one round now, with progress, until nothing is pending.
fn sync(wait: bool, timeout: std::time::Duration, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let (code, text) = api_call(api, reqwest::Method::POST, "/v1/sync")?;
    if !code.is_success() {
        bail!("API answered {code}: {text}");
    }
    let first: serde_json::Value =
        serde_json::from_str(&text).context("the API answered something that is not JSON")?;
    if first["state"] == "off" {
        bail!("sync is not configured: add a [store.sync] section naming your postgres service (see the README)");
    }
    if !wait {
        println!("sync requested ({} rows pending)", first["pending"]);
        return Ok(ExitCode::SUCCESS);
    }
    let started = std::time::Instant::now();
    let since = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let mut shown = String::new();
    loop {
        let (_, text) = api_call(api, reqwest::Method::GET, "/v1/status")?;
        let st: serde_json::Value =
            serde_json::from_str(&text).context("the API answered something that is not JSON")?;
        let s = &st["store"]["sync"];
        let line = format!(
            "{}: {} pending, {} pushed, {} pulled",
            s["state"].as_str().unwrap_or("?"),
            s["pending"],
            s["pushed"],
            s["pulled"]
        );
        if line != shown {
            eprintln!("{line}");
            shown = line;
        }
        let synced_after_start = s["last_sync"].as_str().is_some_and(|t| t >= since.as_str());
        if s["pending"] == 0 && s["state"] == "idle" && synced_after_start {
            println!(
                "in sync: nothing pending (last sync {})",
                s["last_sync"].as_str().unwrap_or("?")
            );
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() > timeout {
            let why = s["last_error"]
                .as_str()
                .unwrap_or("no answer from the primary yet");
            bail!("not in sync after {}: {why}; rows stay queued locally and go when the primary is reachable", humantime::format_duration(timeout));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    use robbie_mesh::sshkeys;
    let added = |k: sshkeys::StoredKey| {
        println!("{}", k.public);
        eprintln!(
            "stored `{}` ({}) in the keychain; add the line above to ~/.ssh/authorized_keys on your servers \
             and use identity = [\"keychain:{}\"]",
            k.name, k.fingerprint, k.name
        );
    };
    match command {
        KeysCommand::List => {
            let list = sshkeys::list()?;
            if list.is_empty() {
                println!("no keys in the keychain yet: `robbie-mesh keys generate NAME` makes one");
            }
            for k in list {
                println!("{:<20} {}  {}", k.name, k.fingerprint, k.public);
            }
        }
        KeysCommand::Generate { name } => added(sshkeys::generate(&name)?),
        KeysCommand::Import { name, file } => {
            let encrypted = sshkeys::is_encrypted(&file)?;
            let pass = match std::env::var("ROBBIE_MESH_KEY_PASSPHRASE") {
                Ok(p) => Some(zeroize::Zeroizing::new(p)),
                Err(_) if encrypted => Some(zeroize::Zeroizing::new(
                    ask_secret(&format!("Passphrase for {}: ", file.display())).map_err(|e| {
                        anyhow::anyhow!(
                            "{} is encrypted and no passphrase could be asked for ({e}): run this in a terminal, \
                             or set ROBBIE_MESH_KEY_PASSPHRASE",
                            file.display()
                        )
                    })?,
                )),
                Err(_) => None,
            };
            added(sshkeys::import(
                &name,
                &file,
                pass.as_ref().map(|p| p.as_str()),
            )?);
            if encrypted {
                eprintln!(
                    "`{name}` is stored decrypted in the keychain: the keychain's own encryption (unlocked with your login) \
                     protects it from now on, not its passphrase; {} is unchanged",
                    file.display()
                );
            }
        }
        KeysCommand::Show { name } => println!("{}", sshkeys::show(&name)?.public),
        KeysCommand::Delete { name } => {
            sshkeys::delete(&name)?;
            eprintln!("deleted `{name}` from the keychain");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal (`/dev/tty`, whatever stdin is) with echo off — turned
/// off before the prompt is shown, so nothing typed ahead is echoed either, as
/// OpenSSH's readpassphrase does — and restores the terminal afterwards.
fn ask_secret(prompt: &str) -> std::io::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::io::{BufRead, Write};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let saved = tcgetattr(&tty).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&tty, SetArg::TCSAFLUSH, &quiet).map_err(std::io::Error::from)?;
    let answer = (|| -> std::io::Result<String> {
        let mut out = &tty;
        out.write_all(prompt.as_bytes())?;
        out.flush()?;
        let mut line = zeroize::Zeroizing::new(String::new());
        std::io::BufReader::new(&tty).read_line(&mut line)?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    })();
    let restored = tcsetattr(&tty, SetArg::TCSAFLUSH, &saved).map_err(std::io::Error::from);
    let answer = answer?;
    restored?;
    Ok(answer)
}
