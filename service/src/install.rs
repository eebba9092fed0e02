//! `robbie-mesh service install | uninstall | status`: the files of
//! [`crate::units`] written where the service manager reads them, then enabled
//! and started, every step printed. Running it twice changes nothing the
//! second time; uninstalling leaves the config and the store (the user's data).
//!
//! - Linux, system (`--system`, the default as root): the unit and its sysusers
//!   file under `/etc`, the user created, `systemctl enable --now`. The service
//!   cannot see home directories (`ProtectHome=yes`), so a binary there is
//!   copied to `/usr/local/bin` first.
//! - Linux, user (`--user`, the default otherwise): the user unit under
//!   `~/.config/systemd/user`, `systemctl --user enable --now`.
//! - macOS: run from the menu-bar app, the LaunchAgent inside the app bundle,
//!   registered with SMAppService (macOS 13+: listed under Login Items, may
//!   ask for the user's approval); otherwise the plain LaunchAgent in
//!   `~/Library/LaunchAgents`, `launchctl bootstrap gui/UID`.
//!
//! Where the binary is not the packages' `/usr/bin/robbie-mesh`, a drop-in
//! (systemd) or the plist's first argument (launchd) names the real one. The
//! tray's "Start at login" is `install(Scope::User, …)` and `uninstall`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::units;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    System,
    User,
}

impl Scope {
    /// `--system` or `--user` as given, else system for root, user otherwise.
    pub fn pick(system: bool, user: bool) -> Scope {
        if system {
            Scope::System
        } else if user || !nix::unistd::geteuid().is_root() || cfg!(target_os = "macos") {
            Scope::User
        } else {
            Scope::System
        }
    }
}

/// What went wrong, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{what}: {why}")]
    Step { what: String, why: String },
}

fn step(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> InstallError {
    let what = what.into();
    move |e| InstallError::Step {
        what,
        why: e.to_string(),
    }
}

/// The packages' binary; anything else needs the unit pointed at it.
const PACKAGED_BIN: &str = "/usr/bin/robbie-mesh";

/// Writes `bytes` to `path` (a new file renamed into place) unless they are
/// there already; says which.
fn put(path: &Path, bytes: impl AsRef<[u8]>, mode: u32) -> Result<bool, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = bytes.as_ref();
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        println!("  = {} (up to date)", path.display());
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(step(format!("create {}", dir.display())))?;
    }
    let tmp = path.with_extension("robbie-mesh-new");
    std::fs::write(&tmp, bytes).map_err(step(format!("write {}", tmp.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(step(format!("chmod {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(step(format!("write {}", path.display())))?;
    println!("  + {}", path.display());
    Ok(true)
}

fn remove(path: &Path) -> Result<(), InstallError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            println!("  - {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(step(format!("remove {}", path.display()))(e)),
    }
}

/// Runs a service-manager command, printing it; its failure is an error
/// with its own words.
fn run(program: &str, args: &[&str]) -> Result<String, InstallError> {
    println!("  $ {program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(step(format!("run {program}")))?;
    if !out.status.success() {
        return Err(InstallError::Step {
            what: format!("{program} {}", args.join(" ")),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A service-manager query whose non-zero exit is an answer (`is-active`).
fn ask(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

fn exe() -> Result<PathBuf, InstallError> {
    std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(step("find this program's path"))
}

#[cfg(target_os = "linux")]
mod platform {
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
}

#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
mod login_items;

#[cfg(target_os = "macos")]
mod platform {
    use super::login_items;
    use super::*;

    const LABEL: &str = "app.robbie-mesh.service";

    fn plist_path() -> Result<PathBuf, InstallError> {
        dirs::home_dir()
            .map(|h| {
                h.join("Library/LaunchAgents")
                    .join(format!("{LABEL}.plist"))
            })
            .ok_or_else(|| InstallError::Unsupported("no home directory".into()))
    }

    fn domain() -> String {
        format!("gui/{}", nix::unistd::getuid())
    }

    /// The LaunchAgent shipped inside the menu-bar app, when this process is
    /// that app (`robbie-mesh.app/Contents/MacOS/…`): macOS 13+ registers it
    /// with SMAppService, which lists it under Login Items and follows the app
    /// if it is moved (the plist names its program relative to the bundle).
    fn bundled_agent() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let contents = exe.parent()?.parent()?;
        let plist = contents
            .join("Library/LaunchAgents")
            .join(format!("{LABEL}.plist"));
        (contents.file_name()? == "Contents" && plist.is_file()).then_some(plist)
    }

    /// The plain LaunchAgent of an install without the app, in the way of the
    /// bundled one (the same label): unloaded and removed.
    fn remove_plain_agent() -> Result<(), InstallError> {
        let path = plist_path()?;
        if path.exists() {
            println!("Replacing the LaunchAgent written without the app:");
            let _ = run("launchctl", &["bootout", &format!("{}/{LABEL}", domain())]);
            remove(&path)?;
        }
        Ok(())
    }

    pub fn install(scope: Scope, program: Option<PathBuf>) -> Result<(), InstallError> {
        if scope == Scope::System {
            return Err(InstallError::Unsupported(
                "on macOS robbie-mesh runs as a LaunchAgent in your session (your login Keychain is there); run `robbie-mesh service install` without --system".into(),
            ));
        }
        if let Some(plist) = bundled_agent() {
            remove_plain_agent()?;
            println!("Registering {} with macOS (Login Items):", plist.display());
            let state = login_items::register().map_err(|why| InstallError::Step {
                what: "register the LaunchAgent with SMAppService".into(),
                why,
            })?;
            return login_items::explain(state);
        }
        let bin = match program {
            Some(p) => p,
            None => exe()?,
        };
        let text = units::find("launchd")
            .expect("built in")
            .text
            .replace("/usr/local/bin/robbie-mesh", &bin.display().to_string());
        let path = plist_path()?;
        println!("Writing the LaunchAgent:");
        put(&path, &text, 0o644)?;
        println!("Loading it:");
        let _ = Command::new("launchctl")
            .args(["bootout", &format!("{}/{LABEL}", domain())])
            .output();
        run(
            "launchctl",
            &["bootstrap", &domain(), &path.display().to_string()],
        )?;
        println!("Done. Logs: ~/Library/Logs/robbie-mesh/robbie-mesh.log");
        Ok(())
    }

    pub fn uninstall(_scope: Scope) -> Result<(), InstallError> {
        if bundled_agent().is_some() {
            println!("Unregistering the app's LaunchAgent (Login Items):");
            login_items::unregister().map_err(|why| InstallError::Step {
                what: "unregister the LaunchAgent with SMAppService".into(),
                why,
            })?;
        }
        let path = plist_path()?;
        if path.exists() {
            println!("Unloading it:");
            let _ = run("launchctl", &["bootout", &format!("{}/{LABEL}", domain())]);
            println!("Removing it:");
            remove(&path)?;
        }
        println!("Done. Kept: the config and the store with your conversations.");
        Ok(())
    }

    pub fn status(_scope: Scope) -> Result<(), InstallError> {
        if bundled_agent().is_some() {
            println!("The app's LaunchAgent: {}", login_items::status().words());
        }
        let path = plist_path()?;
        println!(
            "LaunchAgent {}: {}",
            path.display(),
            if path.exists() {
                "installed"
            } else {
                "not installed"
            }
        );
        println!(
            "{}",
            ask("launchctl", &["print", &format!("{}/{LABEL}", domain())])
        );
        Ok(())
    }

    pub fn starts_at_login() -> bool {
        if bundled_agent().is_some()
            && matches!(
                login_items::status(),
                login_items::State::Enabled | login_items::State::RequiresApproval
            )
        {
            return true;
        }
        plist_path().is_ok_and(|p| p.exists())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod platform {
    use super::*;
    fn none() -> Result<(), InstallError> {
        Err(InstallError::Unsupported(
            "robbie-mesh installs into systemd (Linux) or launchd (macOS) only; run `robbie-mesh run` from your service manager".into(),
        ))
    }
    pub fn install(_: Scope, _: Option<PathBuf>) -> Result<(), InstallError> {
        none()
    }
    pub fn uninstall(_: Scope) -> Result<(), InstallError> {
        none()
    }
    pub fn status(_: Scope) -> Result<(), InstallError> {
        none()
    }
}

pub use platform::{install, status, uninstall};

/// Whether the user service is set to start at login (the tray's check mark):
/// the user unit enabled (systemd), the app's LaunchAgent registered or the
/// plain one present (launchd).
pub fn starts_at_login() -> bool {
    #[cfg(target_os = "macos")]
    {
        platform::starts_at_login()
    }
    #[cfg(not(target_os = "macos"))]
    {
        ask(
            "systemctl",
            &["--user", "is-enabled", "robbie-mesh.service"],
        ) == "enabled"
    }
}
