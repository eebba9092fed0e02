//! `robbie-mesh init --mesh FILE`: this node's config, written from the mesh
//! description with the port plan applied — after checking that the configs of
//! every node of the mesh agree, so no node gets a port another does not serve.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config;
use crate::mesh::{agree, plan, render, Mesh};

/// Every robbie-mesh node's config text, each validated, and whether they agree.
fn configs(mesh: &Mesh, source: &str) -> Result<Vec<(String, String)>, Vec<String>> {
    let mut texts = Vec::new();
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for n in mesh.mesh_nodes() {
        let how = format!("robbie-mesh init --mesh {source} --node {}", n.name);
        let text = render::render(mesh, &plan::plan(mesh, n), &how, true);
        match config::parse(&text, &format!("{}'s config", n.name)) {
            Ok(cfg) => parsed.push(cfg),
            Err(e) => problems.extend(e.0.iter().map(|e| e.to_string())),
        }
        texts.push((n.name.clone(), text));
    }
    if problems.is_empty() {
        problems = agree::check(&parsed);
    }
    if problems.is_empty() {
        Ok(texts)
    } else {
        Err(problems)
    }
}

/// The node this machine is: `--node`, else the host name if the mesh has it.
fn which<'m>(mesh: &'m Mesh, node: Option<&str>) -> anyhow::Result<&'m str> {
    let names: Vec<&str> = mesh.mesh_nodes().map(|n| n.name.as_str()).collect();
    let wanted = match node {
        Some(n) => n.to_string(),
        None => config::hostname(),
    };
    match names.iter().find(|n| n.eq_ignore_ascii_case(&wanted)) {
        Some(n) => Ok(n),
        None if mesh.node(&wanted).is_some() => anyhow::bail!(
            "{wanted} runs no robbie-mesh in {} (mesh = false); the nodes that do: {}",
            mesh.file,
            names.join(", ")
        ),
        None if node.is_none() => anyhow::bail!(
            "this machine is called {wanted}, which is no node of {}; say which it is with --node ({})",
            mesh.file,
            names.join(", ")
        ),
        None => anyhow::bail!(
            "no node called {wanted} in {}; its nodes: {}",
            mesh.file,
            names.join(", ")
        ),
    }
}

/// What [`write`] did.
pub enum Written {
    To(std::path::PathBuf),
    Stdout,
    /// The file there already is exactly this config.
    Unchanged(std::path::PathBuf),
    /// A different config is there and `--force` was not given (said why).
    Refused,
}

/// Writes `node`'s config `text` to `out` (`-`: standard output; default: the
/// config's usual place): whole or not at all, never over a different one
/// without `force`. `source` names where it came from, for messages.
pub fn write(
    text: &str,
    out: Option<&Path>,
    force: bool,
    node: &str,
    source: &str,
) -> anyhow::Result<Written> {
    let path = match out {
        Some(p) if p == Path::new("-") => {
            std::io::stdout().write_all(text.as_bytes())?;
            return Ok(Written::Stdout);
        }
        Some(p) => p.to_path_buf(),
        None => config::default_path()
            .context("no default config location on this system: give --out FILE")?,
    };
    match std::fs::read_to_string(&path) {
        Ok(old) if old == *text => {
            println!(
                "{} is already {node}'s config from {source}: unchanged",
                path.display()
            );
            return Ok(Written::Unchanged(path));
        }
        Ok(_) if !force => {
            eprintln!(
                "{} exists and differs from what {source} gives {node}; see the new one with `--out -`, replace it with --force",
                path.display()
            );
            return Ok(Written::Refused);
        }
        _ => {}
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Written whole or not at all: a new file renamed over the old one.
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    let cfg = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("Wrote {} for {node}:", path.display());
    print!("{}", super::text::config_summary(&cfg));
    Ok(Written::To(path))
}

pub fn from_mesh(
    mesh_file: &Path,
    node: Option<&str>,
    out: Option<&Path>,
    force: bool,
    connect: Option<&[String]>,
) -> anyhow::Result<ExitCode> {
    let mesh = match Mesh::load(mesh_file) {
        Ok(m) => m,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{} problem(s) in {}; nothing written",
                errors.0.len(),
                mesh_file.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let name = which(&mesh, node)?;
    let source = mesh_file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| mesh_file.display().to_string());
    let texts = match configs(&mesh, &source) {
        Ok(t) => t,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "the nodes' configs written from {} would not fit together ({} problem(s)); nothing written",
                mesh_file.display(),
                problems.len()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let text = &texts
        .iter()
        .find(|(n, _)| n == name)
        .context("the node's config")?
        .1;

    let path = match write(text, out, force, name, &mesh_file.display().to_string())? {
        Written::To(p) => p,
        Written::Unchanged(p) if connect.is_some() => p,
        Written::Stdout | Written::Unchanged(_) => return Ok(ExitCode::SUCCESS),
        Written::Refused => return Ok(ExitCode::from(2)),
    };
    let cfg = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Each peer's host key and login, now (asked on a terminal).
    let connect = connect.map(<[String]>::to_vec).or_else(|| {
        (!cfg.peers.is_empty()
            && super::setup::yes(&format!(
                "Connect to {} now, to check each host key and this machine's key",
                cfg.peers
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        .then(Vec::new)
    });
    if let Some(accepted) = connect {
        let all = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(super::setup::trust_peers(&cfg, &accepted))?;
        if !all {
            eprintln!(
                "Install the keys as shown, then run this command again (what is trusted is kept)."
            );
            return Ok(ExitCode::from(2));
        }
        println!("\nNext: `robbie-mesh service install` (or `robbie-mesh run`), then `robbie-mesh doctor`.");
        return Ok(ExitCode::SUCCESS);
    }
    println!("\nNext:");
    let mut step = 1;
    for p in &cfg.peers {
        println!(
            "  {step}. Let this machine log in to {} ({}): `robbie-mesh keys generate {}`, then add the line it prints to {}'s ~/.ssh/authorized_keys",
            p.name, p.ssh, p.name, p.name
        );
        step += 1;
    }
    if !cfg.peers.is_empty() {
        println!(
            "  {step}. Trust each peer's host key and check the login: run this again with --connect (it shows each fingerprint to compare with the server's)"
        );
        step += 1;
    }
    println!("  {step}. Start it: `robbie-mesh service install` (or `robbie-mesh run` in the foreground), then `robbie-mesh doctor`");
    Ok(ExitCode::SUCCESS)
}
