//! The command line's grammar (clap): every command, its arguments and its help.
//! `robbie-mesh man` renders the man page from it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "robbie-mesh",
    version,
    about = "Keeps SSH tunnels between your machines alive and routes services over them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum ServiceCommand {
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
pub struct ScopeArg {
    /// A system service, started at boot (a headless node).
    #[arg(long, conflicts_with = "user")]
    pub system: bool,
    /// A user service, started at login (a desktop: your keychain, your agent).
    #[arg(long)]
    pub user: bool,
}

impl ScopeArg {
    pub fn scope(&self) -> crate::install::Scope {
        crate::install::Scope::pick(self.system, self.user)
    }
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Validate a config file and summarise what would run; given several
    /// nodes' files, also whether they fit together (every forward reaches what
    /// it is meant to, every reverse forward lands where the other node expects).
    CheckConfig { files: Vec<PathBuf> },
    /// Check everything this node needs — config, service, each peer (name,
    /// TCP, host key, login, forwards), endpoints' ports, keychain, clocks,
    /// primary, replica, disk, service unit — each ✓ or ✗ with the fix; exit
    /// status 1 if any failed.
    Doctor {
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Write this node's config: from a mesh description (`--mesh mesh.toml`,
    /// one file for every node, see examples/mesh.toml) with the port plan
    /// applied; or, without one, by asking (every question is also a flag):
    /// the node's name, its peers, its key, each peer's host key, and what each
    /// peer runs (asked of the peer through SSH).
    Init {
        /// The mesh description.
        #[arg(long, value_name = "FILE")]
        mesh: Option<PathBuf>,
        /// Which node this machine is (default: the host name).
        #[arg(long)]
        node: Option<String>,
        /// A peer to dial: NAME=user@host[:port], or a ~/.ssh/config Host alias
        /// (its name then); repeat for several.
        #[arg(long, value_name = "PEER", conflicts_with = "mesh")]
        peer: Vec<String>,
        /// Only these services (default: every one a peer or this machine runs:
        /// ollama, gpu-api, postgres).
        #[arg(long, value_name = "NAME", conflicts_with = "mesh")]
        service: Vec<String>,
        /// The key this machine logs in with: `keychain` (a new key in the OS
        /// keychain; the default in a desktop session), `file` (a new
        /// ~/.ssh/robbie-mesh_ed25519; the default elsewhere) or the path of an
        /// existing private key.
        #[arg(long, value_name = "KIND", conflicts_with = "mesh")]
        key: Option<String>,
        /// Trust a peer's host key with this fingerprint (SHA256:…, as
        /// `ssh-keygen -lf` shows it on the server): what a script answers to
        /// the fingerprint question. Never trusted without it or a yes.
        #[arg(long, value_name = "FINGERPRINT")]
        accept_host_key: Vec<String>,
        /// With --mesh: once written, connect to each peer this node dials:
        /// confirm its host key (shown by fingerprint), check the login, and
        /// say which key to install where (asked on a terminal without it).
        #[arg(long, requires = "mesh")]
        connect: bool,
        /// Install and start the service once the config is written.
        #[arg(long, conflicts_with = "mesh")]
        install: bool,
        /// Where to write (`-`: standard output); default the config's usual
        /// place ($ROBBIE_MESH_CONFIG or ~/.config/robbie-mesh/config.toml).
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace an existing config that differs.
        #[arg(long)]
        force: bool,
    },
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
pub enum KeysCommand {
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
pub enum DbCommand {
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
pub enum ReplicaCommand {
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
pub struct ApiArg {
    /// API address of the service (default: from the config, else 127.0.0.1:8007).
    #[arg(long)]
    pub api: Option<SocketAddr>,
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

impl ApiArg {
    /// The client of the service this command talks to.
    pub fn client(&self) -> crate::client::Client {
        crate::client::Client::for_config(self.config.as_deref(), self.api)
    }
}
