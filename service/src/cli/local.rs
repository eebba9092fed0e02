//! Commands that work on this machine without the running service:
//! `check-config`, `db`, `keys`, `service` and `man`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::args::{DbCommand, KeysCommand, ReplicaCommand, ServiceCommand};
use super::run::load_config;
use crate::config::{self, Config};

/// `check-config [FILE...]`: one file as below; several (one per node) each
/// checked, then checked against each other.
pub fn check_configs(files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    if files.len() < 2 {
        return check_config(files.into_iter().next());
    }
    let mut configs = Vec::new();
    let mut bad = false;
    for path in &files {
        match config::load(path) {
            Ok(cfg) => {
                println!("{}: node {}, valid", path.display(), cfg.node);
                configs.push(cfg);
            }
            Err(errors) => {
                eprintln!("{errors}");
                bad = true;
            }
        }
    }
    if bad {
        eprintln!("fix the files above first; then whether they fit together is checked");
        return Ok(ExitCode::from(2));
    }
    let found = crate::mesh::agree::check(&configs);
    if found.is_empty() {
        println!(
            "they fit together: every forward reaches what it is meant to, every reverse forward lands where the other node expects it"
        );
        return Ok(ExitCode::SUCCESS);
    }
    for f in &found {
        eprintln!("{f}");
    }
    eprintln!(
        "{} disagreement(s) between the nodes' configs: with a mesh description, `robbie-mesh init --mesh FILE --node NAME` writes configs that agree",
        found.len()
    );
    Ok(ExitCode::from(2))
}

pub fn check_config(file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
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
            print!("{}", super::text::config_summary(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} problem(s) in {}", errors.0.len(), path.display());
            Ok(ExitCode::from(2))
        }
    }
}

pub fn man() -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    clap_mangen::Man::new(super::args::Cli::command())
        .render(&mut std::io::stdout())
        .context("cannot write the man page")?;
    Ok(ExitCode::SUCCESS)
}

pub fn service(command: ServiceCommand) -> anyhow::Result<ExitCode> {
    use crate::units;
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
        ServiceCommand::Install { scope } => crate::install::install(scope.scope(), None)?,
        ServiceCommand::Uninstall { scope } => crate::install::uninstall(scope.scope())?,
        ServiceCommand::Status { scope } => crate::install::status(scope.scope())?,
        ServiceCommand::Print { kind: None } => {
            for f in units::FILES {
                println!("# {} — {} (installed as {})", f.kind, f.source, f.installed);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The local store named by the config (the default place without one).
fn open_store(config: Option<PathBuf>) -> anyhow::Result<(Config, crate::store::Store)> {
    let cfg = load_config(config)?;
    let store = crate::store::Store::open(&cfg.store.path, &cfg.node)?;
    Ok((cfg, store))
}

pub fn db(command: DbCommand) -> anyhow::Result<ExitCode> {
    use crate::store::cli;
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
                crate::store::sync::migrate(&mut client)
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
            crate::store::replica::init(&cfg, &from, &data_dir, &user, slot.as_deref())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    use crate::sshkeys;
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
