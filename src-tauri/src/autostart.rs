//! "Start the service at login": the same install as `robbie-mesh service
//! install --user` (the user unit, enabled and started; a LaunchAgent on macOS),
//! or its uninstall; the outcome is told as a notification.

use std::sync::atomic::Ordering;

use tauri::{AppHandle, Manager};

use crate::Tray;

/// Turns it on when off, off when on (blocking: call it off the UI thread).
pub fn toggle(app: &AppHandle) {
    use robbie_mesh::install::{self, Scope};
    let state = app.state::<Tray>();
    let on = !state.at_login.load(Ordering::Relaxed);
    // The service's program: next to this one (the Mac bundle's sidecar, a
    // build directory), else where the package puts it.
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("robbie-mesh")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from("/usr/bin/robbie-mesh"));
    let result = if on {
        install::install(Scope::User, Some(program))
    } else {
        install::uninstall(Scope::User)
    };
    let (summary, body) = match result {
        Ok(()) if on => (
            "robbie-mesh starts at login",
            "The service runs now, and from now on whenever you log in.".to_string(),
        ),
        Ok(()) => (
            "robbie-mesh no longer starts at login",
            "Its config and your conversations are kept.".to_string(),
        ),
        Err(e) => ("Start at login: not changed", format!("{e}")),
    };
    state
        .at_login
        .store(install::starts_at_login(), Ordering::Relaxed);
    state.redraw();
    state.notifier.tell(summary.to_string(), body);
}
