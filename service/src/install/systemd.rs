//! Installing on Linux: the system unit (with its sysusers user) or the user
//! unit, through `systemctl`; every step printed, nothing rewritten that is
//! already as it should be.

use super::*;

const SYSTEM_DIR: &str = "/etc/systemd/system";
const UNIT: &str = "robbie-mesh.service";

fn systemd() -> Result<(), InstallError> {
    if Path::new("/run/systemd/system").is_dir() {
        return Ok(());
    }
    Err(InstallError::Unsupported(
        "this system does not run systemd (no /run/systemd/system), so there is nothing to install into: \
         start `robbie-mesh run` from your init system, or see `robbie-mesh service print system` for what the unit does"
            .into(),
    ))
}

fn user_dir() -> Result<PathBuf, InstallError> {
    dirs::config_dir()
        .map(|d| d.join("systemd").join("user"))
        .ok_or_else(|| InstallError::Unsupported("no home directory for a user unit".into()))
}

fn systemctl(scope: Scope, args: &[&str]) -> Result<String, InstallError> {
    run("systemctl", &scoped(scope, args))
}

/// Where the unit goes, and where its drop-in goes.
fn places(scope: Scope) -> Result<(PathBuf, PathBuf), InstallError> {
    let dir = match scope {
        Scope::System => PathBuf::from(SYSTEM_DIR),
        Scope::User => user_dir()?,
    };
    Ok((
        dir.join(UNIT),
        dir.join(format!("{UNIT}.d"))
            .join("robbie-mesh-binary.conf"),
    ))
}

pub fn install(scope: Scope, program: Option<PathBuf>) -> Result<(), InstallError> {
    systemd()?;
    let mut bin = match program {
        Some(p) => p,
        None => exe()?,
    };
    if scope == Scope::System && (bin.starts_with("/home") || bin.starts_with("/root")) {
        // ProtectHome=yes: the service could not run it from there.
        let to = Path::new("/usr/local/bin/robbie-mesh");
        println!("The system service cannot see home directories; copying the program:");
        let bytes = std::fs::read(&bin).map_err(step(format!("read {}", bin.display())))?;
        put(to, bytes, 0o755)?;
        bin = to.to_path_buf();
    }
    let (unit_path, dropin) = places(scope)?;
    let kind = if scope == Scope::System {
        "system"
    } else {
        "user"
    };
    let unit = units::find(kind).expect("the unit is built in");
    println!("Writing the {kind} unit:");
    let mut changed = put(&unit_path, unit.text, 0o644)?;
    if bin == Path::new(PACKAGED_BIN) {
        remove(&dropin)?;
    } else {
        let text = format!(
            "# Written by `robbie-mesh service install`: the program is not at {PACKAGED_BIN}.\n\
             [Service]\nExecStart=\nExecStart={} run\n",
            bin.display()
        );
        changed |= put(&dropin, &text, 0o644)?;
    }
    if scope == Scope::System {
        let sysusers = units::find("sysusers").expect("built in");
        let path = Path::new("/etc/sysusers.d/robbie-mesh.conf");
        println!("Creating its user:");
        put(path, sysusers.text, 0o644)?;
        run("systemd-sysusers", &[&path.display().to_string()])?;
    }
    println!("Enabling and starting it:");
    let was_active = ask("systemctl", &scoped(scope, &["is-active", UNIT])) == "active";
    if changed {
        systemctl(scope, &["daemon-reload"])?;
    }
    systemctl(scope, &["enable", UNIT])?;
    // Running an older unit: restart into the new one; else start (a no-op if up).
    systemctl(
        scope,
        &[
            if was_active && changed {
                "restart"
            } else {
                "start"
            },
            UNIT,
        ],
    )?;
    let config = match scope {
        Scope::System => PathBuf::from("/etc/robbie-mesh/config.toml"),
        Scope::User => crate::config::default_path().unwrap_or_default(),
    };
    println!(
        "Done: {}. {}",
        ask("systemctl", &scoped(scope, &["is-active", UNIT])),
        if config.exists() {
            format!("It runs with {}.", config.display())
        } else {
            format!(
                "No config at {} yet: it runs local-only until you write one, then `systemctl {}restart robbie-mesh`.",
                config.display(),
                if scope == Scope::User { "--user " } else { "" }
            )
        }
    );
    Ok(())
}

/// The unit as systemd sees it, for `doctor`: `None` when systemd does not
/// know it in that scope (not installed, or no systemd).
pub fn state(scope: Scope) -> Option<UnitState> {
    systemd().ok()?;
    let out = ask(
        "systemctl",
        &scoped(
            scope,
            &[
                "show",
                "-p",
                "LoadState,UnitFileState,ActiveState,SubState,StatusText",
                UNIT,
            ],
        ),
    );
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or("")
            .to_string()
    };
    (field("LoadState") == "loaded").then(|| UnitState {
        scope,
        enabled: field("UnitFileState"),
        active: field("ActiveState"),
        sub: field("SubState"),
        status: field("StatusText"),
    })
}

fn scoped<'a>(scope: Scope, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = Vec::new();
    if scope == Scope::User {
        all.push("--user");
    }
    all.extend_from_slice(args);
    all
}

pub fn uninstall(scope: Scope) -> Result<(), InstallError> {
    systemd()?;
    let (unit_path, dropin) = places(scope)?;
    println!("Stopping and disabling it:");
    if unit_path.exists() {
        systemctl(scope, &["disable", "--now", UNIT])?;
    }
    println!("Removing its files:");
    remove(&dropin)?;
    if let Some(dir) = dropin.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    remove(&unit_path)?;
    if scope == Scope::System {
        remove(Path::new("/etc/sysusers.d/robbie-mesh.conf"))?;
    }
    systemctl(scope, &["daemon-reload"])?;
    let (config, store) = match scope {
        Scope::System => (
            "/etc/robbie-mesh/".to_string(),
            "/var/lib/robbie-mesh/".to_string(),
        ),
        Scope::User => (
            crate::config::default_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            crate::config::default_store_path().display().to_string(),
        ),
    };
    println!("Done. Kept: the config ({config}) and the store with your conversations ({store}); delete them yourself if you want them gone.");
    Ok(())
}

pub fn status(scope: Scope) -> Result<(), InstallError> {
    systemd()?;
    let (unit_path, dropin) = places(scope)?;
    let state = |what: &str| ask("systemctl", &scoped(scope, &[what, UNIT]));
    println!(
        "{} unit {}: {}, {}{}",
        if scope == Scope::System {
            "system"
        } else {
            "user"
        },
        unit_path.display(),
        if unit_path.exists() {
            state("is-enabled")
        } else {
            "not installed".into()
        },
        state("is-active"),
        if dropin.exists() {
            format!(" (program set in {})", dropin.display())
        } else {
            String::new()
        }
    );
    let status = ask(
        "systemctl",
        &scoped(scope, &["show", "-p", "StatusText", "--value", UNIT]),
    );
    if !status.is_empty() {
        println!("  {status}");
    }
    Ok(())
}
