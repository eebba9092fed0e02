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
#[path = "install/systemd.rs"]
mod platform;

#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
mod login_items;

#[cfg(target_os = "macos")]
#[path = "install/launchd.rs"]
mod platform;

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

#[cfg(target_os = "linux")]
pub use platform::state;
pub use platform::{install, status, uninstall};

/// A unit's state as its service manager says (`doctor`).
#[derive(Debug, Clone)]
pub struct UnitState {
    pub scope: Scope,
    /// enabled, disabled, …
    pub enabled: String,
    /// active, failed, inactive, activating, …
    pub active: String,
    pub sub: String,
    /// Its status line (`sd_notify STATUS=`).
    pub status: String,
}

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
