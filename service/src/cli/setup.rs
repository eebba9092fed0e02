//! `robbie-mesh init` without a mesh file: a first run by questions, each also
//! a flag (`--node`, `--peer`, `--key`, `--accept-host-key`, `--service`,
//! `--install`), so a script can answer them all.
//!
//! In order: the node's name; its peers; the key it logs in with (made in the
//! keychain on a desktop, in a file elsewhere) and the line to install on each
//! peer; each peer's host key, shown by fingerprint and trusted only on a yes
//! (or a matching `--accept-host-key`) — OpenSSH's first-connect question, never
//! a silent trust; what each peer runs, asked through that SSH session; what
//! runs here (an Ollama on 11434 is in the endpoint's way: how to move it).
//! From the answers it builds a one-node mesh description and writes its config
//! the way `init --mesh` does, then checks it and offers to install the service.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::config::{self, PeerConfig};
use crate::mesh::{discover, plan, render, Mesh, MeshNode};
use crate::ssh::{self, SshError};

/// Everything `init` may ask, as given on the command line.
pub struct Answers {
    pub node: Option<String>,
    pub peers: Vec<String>,
    pub services: Vec<String>,
    pub key: Option<String>,
    pub accept_host_key: Vec<String>,
    pub install: bool,
    pub out: Option<PathBuf>,
    pub force: bool,
}

/// Asks on the terminal when there is one; `None` without one.
fn ask(question: &str, default: Option<&str>) -> Option<String> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    match default {
        Some(d) => print!("{question} [{d}]: "),
        None => print!("{question}: "),
    }
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok()?;
    let line = line.trim().to_string();
    Some(if line.is_empty() {
        default.unwrap_or("").to_string()
    } else {
        line
    })
}

pub(super) fn yes(question: &str) -> bool {
    ask(&format!("{question} [y/N]"), None)
        .is_some_and(|a| a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes"))
}

/// `NAME=TARGET`, or an alias that names itself.
fn peer_arg(s: &str) -> anyhow::Result<(String, String)> {
    let (name, target) = match s.split_once('=') {
        Some((n, t)) => (n.trim().to_string(), t.trim().to_string()),
        None => {
            let t = s.trim();
            if t.contains('@') || t.contains(':') {
                bail!("`{s}`: give the peer a name: NAME=user@host[:port] (or use a ~/.ssh/config Host alias)");
            }
            (t.to_string(), t.to_string())
        }
    };
    if name.is_empty() || target.is_empty() {
        bail!("`{s}`: NAME=user@host[:port], or a ~/.ssh/config Host alias");
    }
    Ok((name.to_lowercase(), target))
}

/// The key this node logs in with: its identity entry, and its public line.
fn key(answer: Option<&str>, node: &str) -> anyhow::Result<(String, crate::sshkeys::StoredKey)> {
    let desktop = crate::keychain::usable().is_ok();
    let kind = answer
        .map(str::to_string)
        .unwrap_or_else(|| if desktop { "keychain" } else { "file" }.to_string());
    match kind.as_str() {
        "keychain" => {
            let name = format!("{node}-mesh");
            let stored = match crate::sshkeys::show(&name) {
                Ok(k) => k,
                Err(_) => crate::sshkeys::generate(&name).with_context(|| {
                    "cannot keep a key in the keychain: pass `--key file` to keep it in ~/.ssh instead"
                })?,
            };
            Ok((format!("keychain:{name}"), stored))
        }
        "file" => {
            let home = dirs::home_dir().context("no home directory for ~/.ssh")?;
            let path = home.join(".ssh").join("robbie-mesh_ed25519");
            let stored = crate::sshkeys::file_key(&path, &format!("robbie-mesh:{node}"))?;
            Ok(("~/.ssh/robbie-mesh_ed25519".to_string(), stored))
        }
        path => {
            let p = PathBuf::from(path);
            if !p.exists() {
                bail!("--key {path}: no such file (`keychain` or `file` make a new key)");
            }
            let stored = crate::sshkeys::file_key(&p, "")
                .with_context(|| format!("--key {path}: an existing, unencrypted private key"))?;
            Ok((p.display().to_string(), stored))
        }
    }
}

/// How to put `line` in the peer's authorized_keys, as one command.
pub(super) fn install_command(peer: &PeerConfig, line: &str, key_file: Option<&str>) -> String {
    let t = &peer.server.target;
    let dest = if !peer.ssh.contains('@') && !peer.ssh.contains(':') {
        peer.ssh.clone()
    } else if t.port == 22 {
        format!("{}@{}", t.user, t.host)
    } else {
        format!("-p {} {}@{}", t.port, t.user, t.host)
    };
    match key_file {
        Some(f) => format!("ssh-copy-id -i {f}.pub {dest}"),
        None => format!(
            "echo '{line}' | ssh {dest} 'umask 077; mkdir -p ~/.ssh && cat >> ~/.ssh/authorized_keys'"
        ),
    }
}

/// One peer's first connection: its host key confirmed (and recorded), then a
/// login. `Ok(None)`: the key is not installed there yet.
pub(super) async fn connect(
    peer: &PeerConfig,
    accepted: &[String],
) -> anyhow::Result<Option<ssh::Session>> {
    let routes = || Arc::new(ssh::ReverseRoutes::default());
    let mut recorded = false;
    loop {
        match ssh::connect(peer, routes()).await {
            Ok(s) => return Ok(Some(s)),
            Err(SshError::HostKeyUnknown {
                name,
                fingerprint,
                key,
            }) if !recorded => {
                println!(
                    "{} ({}) is new to this machine. Its host key is\n  {fingerprint}\n\
                     Compare it with the server's own, on {}: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`.",
                    peer.name, peer.server.target, peer.name
                );
                let confirmed = if accepted.iter().any(|a| a.trim() == fingerprint) {
                    println!("  confirmed by --accept-host-key");
                    true
                } else if !accepted.is_empty() && !std::io::stdin().is_terminal() {
                    bail!(
                        "{}'s host key is {fingerprint}, which no --accept-host-key names ({}): someone may be in the middle, or it is another server. Nothing was trusted.",
                        peer.name,
                        accepted.join(", ")
                    );
                } else {
                    yes("Is it the same? Trust it")
                };
                if !confirmed {
                    bail!(
                        "{}'s host key was not confirmed, so nothing was trusted: once you have compared it, run this again with --accept-host-key {fingerprint}",
                        peer.name
                    );
                }
                let file = peer
                    .server
                    .known_hosts
                    .first()
                    .context("no known_hosts file to record it in")?;
                ssh::known_hosts::append(file, &name, &key)
                    .map_err(|e| anyhow::anyhow!("cannot record the host key: {e}"))?;
                println!("  recorded in {}", file.display());
                recorded = true;
            }
            Err(SshError::AuthFailed { .. }) => return Ok(None),
            Err(e) => bail!("{}: {e}", peer.name),
        }
    }
}

pub fn init(a: Answers) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(a))
}

async fn run(a: Answers) -> anyhow::Result<ExitCode> {
    let tty = std::io::stdin().is_terminal();
    // 1. The node's name.
    let node = match a.node {
        Some(n) => n,
        None => ask("This machine's name in the mesh", Some(&config::hostname()))
            .unwrap_or_else(config::hostname),
    }
    .to_lowercase();

    // 2. Its peers.
    let mut peers = Vec::new();
    for p in &a.peers {
        peers.push(peer_arg(p)?);
    }
    if peers.is_empty() && tty {
        println!("The machines this one connects to, one per line (NAME=user@host[:port] or a ~/.ssh/config alias); an empty line ends the list.");
        while let Some(line) = ask("Peer", None).filter(|l| !l.is_empty()) {
            match peer_arg(&line) {
                Ok(p) => peers.push(p),
                Err(e) => println!("  {e}"),
            }
        }
    }
    if peers.is_empty() {
        bail!("no peers: give each with --peer NAME=user@host[:port] (or write a mesh description: `init --mesh`)");
    }

    // 3. Its key.
    let (identity, stored) = key(a.key.as_deref(), &node)?;
    println!(
        "This machine logs in with the key {} ({identity}). Its authorized_keys line:\n  {}",
        stored.fingerprint, stored.public
    );
    if identity.starts_with('~') && nix::unistd::geteuid().is_root() {
        println!(
            "  (For the system service, which cannot read home directories, keep it as an encrypted credential: \
             `sudo systemd-creds encrypt --name=NAME {identity} /etc/robbie-mesh/NAME.cred` and `identity = [\"credential:NAME\"]`; \
             installers/README.md, \"Aurora\", step 3.)"
        );
    }

    // The peers as the service will see them (aliases resolved, defaults).
    let mut text = format!("node = {}\n", toml::Value::String(node.clone()));
    for (name, target) in &peers {
        text.push_str(&format!(
            "[[peer]]\nname = {}\nssh = {}\nidentity = [{}]\nconnect_timeout = \"5s\"\n",
            toml::Value::String(name.clone()),
            toml::Value::String(target.clone()),
            toml::Value::String(identity.clone())
        ));
    }
    let draft = config::parse(&text, "the peers given").map_err(|e| anyhow::anyhow!("{e}"))?;
    let key_file = (!identity.starts_with("keychain:")).then_some(identity.as_str());

    // 4. Each peer: host key, login, what it runs.
    let services: Vec<crate::mesh::MeshService> = crate::mesh::builtin_services()
        .into_iter()
        .filter(|s| a.services.is_empty() || a.services.contains(&s.name))
        .collect();
    let mut found = Vec::new();
    let mut not_installed = Vec::new();
    for peer in &draft.peers {
        let session = loop {
            match connect(peer, &a.accept_host_key).await? {
                Some(s) => break Some(s),
                None => {
                    println!(
                        "{} does not accept this key yet. Install it there:\n  {}",
                        peer.name,
                        install_command(peer, &stored.public, key_file)
                    );
                    if tty
                        && ask("Press Enter once it is installed (or type skip)", Some(""))
                            .as_deref()
                            != Some("skip")
                    {
                        continue;
                    }
                    break None;
                }
            }
        };
        let Some(session) = session else {
            not_installed.push(peer.name.clone());
            continue;
        };
        println!("Logged in to {} as {}.", peer.name, session.login.user);
        let f = discover::peer(&session, &services).await;
        let _ = session
            .handle
            .disconnect(russh::Disconnect::ByApplication, "init is done", "en")
            .await;
        if f.services.is_empty() {
            println!(
                "  it runs none of {} on their ports",
                services
                    .iter()
                    .map(|s| format!("{} ({}, {})", s.name, s.port + 1, s.port))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for (s, port) in &f.services {
            println!("  {s} answers on its 127.0.0.1:{port}");
        }
        found.push((peer.name.clone(), peer.ssh.clone(), f));
    }
    if !not_installed.is_empty() {
        eprintln!(
            "Not written yet: install the key on {} as shown above, then run this command again (what is done is kept: the key, the trusted host keys).",
            not_installed.join(", ")
        );
        return Ok(ExitCode::from(2));
    }

    // 5. What runs here.
    let local = discover::local(&services).await;
    for (s, port) in &local.in_the_way {
        let owner = crate::util::port_owner(*port).unwrap_or_default();
        if owner.contains("robbie-mesh") {
            continue;
        }
        let hint = if s == "ollama" {
            format!(
                "restart it with OLLAMA_HOST=127.0.0.1:{} (systemd: `sudo systemctl edit ollama`, Environment=OLLAMA_HOST=127.0.0.1:{}; macOS: `launchctl setenv OLLAMA_HOST 127.0.0.1:{}` and restart the app)",
                port + 1,
                port + 1,
                port + 1
            )
        } else {
            format!("move it to 127.0.0.1:{}", port + 1)
        };
        println!(
            "A local {s} listens on 127.0.0.1:{port}{}, the port robbie-mesh's {s} endpoint takes: {hint}. There it becomes this machine's own candidate, after its peers.",
            if owner.is_empty() { String::new() } else { format!(" ({owner})") }
        );
    }

    // 6. The config: a one-node mesh of what was found.
    let mut nodes = Vec::new();
    let mut priority: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, (name, ssh, f)) in found.iter().enumerate() {
        for (s, _) in &f.services {
            priority.entry(s.clone()).or_default().push(name.clone());
        }
        nodes.push(MeshNode {
            name: name.clone(),
            ssh: Some(ssh.clone()),
            dials: Vec::new(),
            runs_mesh: false,
            headless: false,
            on_demand: None,
            block: 21 + i as u16,
            runs: f.services.iter().cloned().collect(),
            replica: false,
            priority: Vec::new(),
            store: None,
            identity: None,
        });
    }
    let mut own = BTreeMap::new();
    for (s, _) in local.own.iter().chain(&local.in_the_way) {
        if let Some(m) = services.iter().find(|m| m.name == *s) {
            own.insert(s.clone(), m.port + 1);
            priority.entry(s.clone()).or_default().push(node.clone());
        }
    }
    // Which of them to reach (asked when not given as --service).
    let mut offered: Vec<String> = services
        .iter()
        .filter(|s| priority.contains_key(&s.name))
        .map(|s| s.name.clone())
        .collect();
    if a.services.is_empty() && !offered.is_empty() {
        if let Some(answer) = ask(
            "Endpoints to set up here (comma-separated)",
            Some(&offered.join(", ")),
        ) {
            let wanted: Vec<String> = answer
                .split(',')
                .map(|w| w.trim().to_lowercase())
                .filter(|w| !w.is_empty())
                .collect();
            if let Some(unknown) = wanted.iter().find(|w| !offered.contains(w)) {
                bail!(
                    "`{unknown}` is none of what was found: {}",
                    offered.join(", ")
                );
            }
            offered = wanted;
        }
    }
    let rows = services
        .iter()
        .filter(|s| offered.contains(&s.name))
        .filter_map(|s| priority.get(&s.name).map(|r| (s.name.clone(), r.clone())))
        .collect();
    nodes.push(MeshNode {
        name: node.clone(),
        ssh: None,
        dials: found.iter().map(|(n, _, _)| n.clone()).collect(),
        runs_mesh: true,
        headless: false,
        on_demand: None,
        block: 21 + found.len() as u16,
        runs: own,
        replica: false,
        priority: rows,
        store: None,
        identity: Some(vec![identity.clone()]),
    });
    let mesh = Mesh {
        file: "the answers".into(),
        services,
        nodes,
    };
    let me = mesh.node(&node).context("this node")?;
    let how = {
        let mut c = format!("robbie-mesh init --node {node}");
        for (n, t) in &peers {
            c.push_str(&format!(" --peer {n}={t}"));
        }
        c
    };
    let text = render::render(&mesh, &plan::plan(&mesh, me), &how, false);
    let path = match super::init::write(
        &text,
        a.out.as_deref(),
        a.force,
        &node,
        "its peers' answers",
    )? {
        super::init::Written::To(p) => p,
        super::init::Written::Unchanged(p) => p,
        super::init::Written::Stdout => return Ok(ExitCode::SUCCESS),
        super::init::Written::Refused => return Ok(ExitCode::from(2)),
    };

    // 7. Start it.
    let install = a.install || yes("Install it as a service now (starts at boot or login)");
    if install {
        crate::install::install(crate::install::Scope::pick(false, false), None)?;
    } else {
        let run = if Some(&path) == config::default_path().as_ref() {
            "robbie-mesh run".to_string()
        } else {
            format!("robbie-mesh run --config {}", path.display())
        };
        println!(
            "Start it with `robbie-mesh service install` (at boot or login) or `{run}`; then `robbie-mesh doctor`."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// After `init --mesh`: each peer of the written config connected to once, as
/// the service will: its host key confirmed and recorded, the login checked;
/// where the key is not installed yet, which line to install and how (a
/// keychain entry the config names is made if there is none). `Ok(false)`: some
/// peer still needs its key installed.
pub(super) async fn trust_peers(cfg: &config::Config, accepted: &[String]) -> anyhow::Result<bool> {
    let mut all = true;
    for peer in &cfg.peers {
        match connect(peer, accepted).await {
            Ok(Some(session)) => {
                println!(
                    "✓ {}: host key trusted, logged in as {} with {}",
                    peer.name, session.login.user, session.login.with
                );
                let _ = session
                    .handle
                    .disconnect(russh::Disconnect::ByApplication, "init is done", "en")
                    .await;
            }
            Ok(None) => {
                all = false;
                match key_to_install(peer) {
                    Some((line, file)) => println!(
                        "✗ {} does not accept this machine's key yet. Install it there:\n  {}",
                        peer.name,
                        install_command(peer, &line, file.as_deref())
                    ),
                    None => println!(
                        "✗ {}: no key to log in with: `robbie-mesh keys generate {}` (keychain) or `ssh-keygen -t ed25519` (file), then run this again",
                        peer.name, peer.name
                    ),
                }
            }
            Err(e) => {
                all = false;
                println!("✗ {e:#}");
            }
        }
    }
    Ok(all)
}

/// The public line of the first identity the peer's config names that can be
/// had here (a keychain entry, made if missing while the keychain is usable; a
/// key file's `.pub`), and the file when it is one.
fn key_to_install(peer: &PeerConfig) -> Option<(String, Option<String>)> {
    for id in &peer.server.identities {
        match id {
            config::IdentitySource::Keychain { entry } if crate::keychain::usable().is_ok() => {
                let stored = crate::sshkeys::show(entry)
                    .or_else(|_| crate::sshkeys::generate(entry))
                    .ok()?;
                return Some((stored.public, None));
            }
            config::IdentitySource::File { path } => {
                let public = std::fs::read_to_string(format!("{}.pub", path.display())).ok();
                if let Some(line) = public.filter(|l| !l.trim().is_empty()) {
                    return Some((line.trim().to_string(), Some(path.display().to_string())));
                }
            }
            _ => {}
        }
    }
    None
}
