//! The dashboard window, in a process of its own (`robbie-mesh-tray --dashboard`),
//! started by the tray when the user opens it ([`open`], the tray's side; [`run`],
//! the window's). The tray itself never loads a web
//! page, so the process that runs all day stays small; the window's WebKit
//! processes live only while the dashboard is open (or hidden for a little while).
//!
//! Closing the window hides it. A hidden window is shown again at once when the
//! tray asks (a line on this process's stdin); after `keep_hidden()` the process
//! exits and takes WebKit's processes with it. It exits at once when the tray is
//! gone (stdin closed): it is the tray's window.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tauri::{AppHandle, Manager, WebviewUrl, WebviewWindowBuilder, WindowEvent};

use crate::Tray;

const LABEL: &str = "dashboard";

/// How long a hidden dashboard stays ready to be shown again at once; after it the
/// process goes (about 120 MiB with WebKit's). `ROBBIE_MESH_TRAY_KEEP_HIDDEN`
/// (seconds) changes it.
fn keep_hidden() -> Duration {
    const DEFAULT: Duration = Duration::from_secs(120);
    let Ok(v) = std::env::var("ROBBIE_MESH_TRAY_KEEP_HIDDEN") else {
        return DEFAULT;
    };
    v.trim().parse().map(Duration::from_secs).unwrap_or_else(|_| {
        tracing::warn!(
            "ROBBIE_MESH_TRAY_KEEP_HIDDEN={v:?} is not a whole number of seconds; keeping the default, {} s",
            DEFAULT.as_secs()
        );
        DEFAULT
    })
}

/// Counts the showings, so that an exit planned at one hiding does not close a
/// window shown again since.
static SHOWN: AtomicU64 = AtomicU64::new(0);

/// `from_tray`: started by the tray, which it then follows (see the module's doc);
/// otherwise (`robbie-mesh-tray --dashboard` by hand) it is a plain window.
pub fn run(from_tray: bool) -> std::process::ExitCode {
    let url = robbie_mesh::client::Client::for_config(None, None).url("/");
    let app = tauri::Builder::default()
        .setup(move |app| {
            let url = url
                .parse()
                .map_err(|e| format!("bad dashboard address {url}: {e}"))?;
            WebviewWindowBuilder::new(app, LABEL, WebviewUrl::External(url))
                .title("robbie-mesh")
                .inner_size(420.0, 680.0)
                .build()?;
            SHOWN.fetch_add(1, Ordering::SeqCst);
            if from_tray {
                follow_tray(app.handle().clone());
            }
            Ok(())
        })
        .on_window_event(move |w, e| {
            if let WindowEvent::CloseRequested { api, .. } = e {
                if !from_tray {
                    return; // nothing could show it again: it closes
                }
                api.prevent_close();
                let _ = w.hide();
                exit_later(w.app_handle().clone(), keep_hidden());
            }
        })
        .build(crate::context());
    match app {
        Ok(app) => {
            app.run(|_, _| {});
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("robbie-mesh-tray --dashboard: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Each line from the tray shows the window; the tray gone, the dashboard goes.
fn follow_tray(app: AppHandle) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
            SHOWN.fetch_add(1, Ordering::SeqCst);
            let app2 = app.clone();
            let _ = app.run_on_main_thread(move || {
                if let Some(w) = app2.get_webview_window(LABEL) {
                    let _ = w.show();
                    let _ = w.unminimize();
                    let _ = w.set_focus();
                }
            });
        }
        tracing::debug!("the tray is gone: so is its dashboard");
        app.exit(0);
    });
}

/// Ends the process after `after` if the window is still hidden then.
fn exit_later(app: AppHandle, after: Duration) {
    let shown = SHOWN.load(Ordering::SeqCst);
    tauri::async_runtime::spawn(async move {
        tokio::time::sleep(after).await;
        let hidden = app
            .get_webview_window(LABEL)
            .is_none_or(|w| !w.is_visible().unwrap_or(false));
        if SHOWN.load(Ordering::SeqCst) == shown && hidden {
            tracing::debug!("the dashboard stayed hidden: its process ends");
            app.exit(0);
        }
    });
}

// --- The tray's side ---------------------------------------------------------

/// Shows the dashboard: tells its process to show the window, or starts one.
pub fn open(app: &AppHandle) {
    use std::io::Write;
    let state = app.state::<Tray>();
    let mut running = state.dashboard.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, stdin)) = running.as_mut() {
        // Fails once the process has ended: then a new one.
        if stdin
            .write_all(b"show\n")
            .and_then(|()| stdin.flush())
            .is_ok()
        {
            return;
        }
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return tracing::warn!("cannot open the dashboard: {e}"),
    };
    let child = std::process::Command::new(exe)
        .args(["--dashboard", "--from-tray"])
        .env("ROBBIE_MESH_API", state.client.addr())
        .stdin(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return tracing::warn!("cannot open the dashboard: {e}"),
    };
    let pid = child.id();
    *running = child.stdin.take().map(|stdin| (pid, stdin));
    // Reaps it when it ends, and forgets it.
    let app = app.clone();
    std::thread::spawn(move || {
        let _ = child.wait();
        let state = app.state::<Tray>();
        let mut running = state.dashboard.lock().unwrap_or_else(|p| p.into_inner());
        if running.as_ref().is_some_and(|(p, _)| *p == pid) {
            *running = None;
        }
    });
}

/// Ends the dashboard with the tray: its stdin closes, and it exits.
pub fn close(app: &AppHandle) {
    let state = app.state::<Tray>();
    state
        .dashboard
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
}
