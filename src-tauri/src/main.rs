//! robbie-mesh-tray: the tray / menu-bar face of the robbie-mesh service on this
//! machine. Its title shows who serves Ollama now (`⚡ vengeance`), its icon whether
//! all is well; its menu pins a service to a node, reconnects, opens the dashboard
//! (the service's own page, in a window of its own process: see `dashboard`),
//! manages the SSH keys in the keychain; failovers,
//! failbacks and host-key alarms become notifications. It only talks to the
//! service's loopback API, so it follows the service across restarts.

mod client;
mod dashboard;
mod icon;
mod notify;

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tauri::menu::{CheckMenuItem, IsMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Manager, RunEvent, Wry};
use tauri_plugin_dialog::{DialogExt, MessageDialogButtons, MessageDialogKind};

use client::Client;
use icon::Look;
use notify::Notifier;

/// The tray's state, shared by the watcher and the menu handler.
struct Tray {
    client: Client,
    notifier: Notifier,
    /// The menu as last built (rebuilt only when what it says changes).
    shown: Mutex<String>,
    /// The SSH keys in the keychain, as last read.
    keys: Mutex<Vec<robbie_mesh::sshkeys::StoredKey>>,
    /// The dashboard's process while it runs (see `dashboard`): its pid and stdin.
    dashboard: Mutex<Option<(u32, std::process::ChildStdin)>>,
    /// Whether the service starts at login (the user unit is enabled).
    at_login: std::sync::atomic::AtomicBool,
}

/// Menu ids: one table, parsed in `on_menu`.
const ID_RECONNECT: &str = "reconnect";
const ID_DASHBOARD: &str = "dashboard";
const ID_KEY_NEW: &str = "keys:generate";
const ID_KEY_IMPORT: &str = "keys:import";
const KEY: &str = "key:"; // key:<name>: show its authorized_keys line
const KEY_DELETE: &str = "keydel:"; // keydel:<name>: delete it (after asking)
const ID_MUTE: &str = "mute";
const ID_AT_LOGIN: &str = "at-login";
const ID_QUIT: &str = "quit";
const PIN: &str = "pin:"; // pin:<service>:<node>
const UNPIN: &str = "unpin:"; // unpin:<service>

/// The app's context (configuration and assets), made in one place for both modes.
fn context() -> tauri::Context<Wry> {
    tauri::generate_context!()
}

fn main() -> std::process::ExitCode {
    // A tray and a page of text need no GPU: without WebKit's GPU compositing its
    // web process takes about half the memory (measured: 94 vs 175 MiB PSS), and
    // without GTK's GL the tray process does not load Mesa and LLVM (91 vs 76 MiB
    // PSS before any window opens).
    // A user's own settings win.
    #[cfg(target_os = "linux")]
    for (var, value) in [
        ("WEBKIT_DISABLE_COMPOSITING_MODE", "1"),
        ("GDK_GL", "disable"),
    ] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, value);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROBBIE_MESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if std::env::args().any(|a| a == "--dashboard") {
        return dashboard::run(std::env::args().any(|a| a == "--from-tray"));
    }
    let app = tauri::Builder::default()
        // One instance: a second launch opens the first one's dashboard.
        .plugin(tauri_plugin_single_instance::init(|app, _, _| {
            open_dashboard(app)
        }))
        .plugin(tauri_plugin_dialog::init())
        .setup(|app| {
            // A menu-bar app: no Dock icon (the dashboard's own process has one).
            #[cfg(target_os = "macos")]
            app.set_activation_policy(tauri::ActivationPolicy::Accessory);
            let client = Client::from_env();
            app.manage(Tray {
                client: client.clone(),
                notifier: Notifier::start(),
                shown: Mutex::new(String::new()),
                keys: Mutex::new(Vec::new()),
                dashboard: Mutex::new(None),
                at_login: robbie_mesh::install::starts_at_login().into(),
            });
            reload_keys(app.handle().clone());
            let menu = Menu::with_items(app, &[])?;
            let tray = TrayIconBuilder::with_id("main")
                .icon(Look::NotRunning.image())
                .title("robbie-mesh")
                .tooltip("robbie-mesh")
                .menu(&menu)
                .show_menu_on_left_click(true)
                .on_menu_event(|app, e| on_menu(app, e.id().as_ref()))
                .build(app)?;
            tauri::async_runtime::spawn(watch(app.handle().clone(), tray));
            Ok(())
        })
        .build(context());
    match app {
        Ok(app) => {
            app.run(|app, e| match e {
                RunEvent::ExitRequested {
                    api, code: None, ..
                } => api.prevent_exit(),
                RunEvent::Exit => close_dashboard(app),
                _ => {}
            });
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("robbie-mesh-tray: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Follows the service: its status now, then its events (each one redraws, and
/// some become notifications); when it does not answer, says so and tries again.
async fn watch(app: AppHandle, tray: TrayIcon) {
    loop {
        let client = app.state::<Tray>().client.clone();
        let opened = client.open_events().await;
        match (opened, client.status().await) {
            (Ok(stream), Ok(st)) => {
                show(&app, &tray, Some(&st));
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                let notifier = app.state::<Tray>().notifier.clone();
                let events = Client::read_events(stream, move |kind, e| {
                    if let Some((summary, body)) = notify::for_event(kind, &e) {
                        notifier.tell(summary, body);
                    }
                    let _ = tx.send(());
                });
                // Redraw on events (a burst once) while the stream lasts.
                let redraw = async {
                    while rx.recv().await.is_some() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        while rx.try_recv().is_ok() {}
                        if let Ok(st) = client.status().await {
                            show(&app, &tray, Some(&st));
                        }
                    }
                };
                tokio::select! {
                    _ = events => {}
                    () = redraw => {}
                }
            }
            _ => show(&app, &tray, None),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The Ollama service if there is one, else the first.
fn main_service(st: &Value) -> Option<&Value> {
    let services = st["services"].as_array()?;
    services
        .iter()
        .find(|s| s["kind"] == "ollama")
        .or_else(|| services.first())
}

fn look(st: &Value) -> Look {
    let services = st["services"].as_array().cloned().unwrap_or_default();
    if services.iter().any(|s| s["route"].is_null()) {
        return Look::Offline;
    }
    let first_choice = services
        .iter()
        .all(|s| s["route"] == s["candidates"][0]["node"] || !s["pinned"].is_null());
    let tunnels_up = st["tunnels"]
        .as_array()
        .is_none_or(|t| t.iter().all(|t| t["state"] == "up"));
    if first_choice && tunnels_up {
        Look::Good
    } else {
        Look::Degraded
    }
}

/// "Start the service at login": the same install as `robbie-mesh service
/// install --user` (the user unit, enabled and started; a LaunchAgent on
/// macOS), or its uninstall; the outcome is told as a notification.
fn toggle_at_login(app: &AppHandle) {
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
    state
        .shown
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    state.notifier.tell(summary.to_string(), body);
}

/// Title, icon and menu for a status (`None`: the service is not running).
fn show(app: &AppHandle, tray: &TrayIcon, st: Option<&Value>) {
    let state = app.state::<Tray>();
    let (title, look) = match st {
        None => (
            "robbie-mesh: service not running".to_string(),
            Look::NotRunning,
        ),
        Some(st) => match main_service(st) {
            Some(s) => match s["route"].as_str() {
                Some(node) => (format!("⚡ {node}"), look(st)),
                None => (
                    format!("{}: no node up", s["name"].as_str().unwrap_or("?")),
                    Look::Offline,
                ),
            },
            None => ("robbie-mesh".to_string(), look(st)),
        },
    };
    let muted = state.notifier.muted.load(Ordering::Relaxed);
    let keys = state.keys.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let at_login = state.at_login.load(Ordering::Relaxed);
    let mut items = menu_items(st, muted, &keys);
    // Above "Quit" and its separator.
    let at = items.len().saturating_sub(2);
    items.insert(
        at,
        Item::check(ID_AT_LOGIN.into(), "Start the service at login", at_login),
    );
    let signature = format!("{title}|{look:?}|{items:?}");
    {
        let mut shown = state.shown.lock().unwrap_or_else(|p| p.into_inner());
        if *shown == signature {
            return;
        }
        *shown = signature;
    }
    let _ = tray.set_title(Some(&title));
    let _ = tray.set_tooltip(Some(&title));
    let _ = tray.set_icon(Some(look.image()));
    match build_menu(app, &items) {
        Ok(menu) => {
            let _ = tray.set_menu(Some(menu));
        }
        Err(e) => tracing::warn!("cannot build the tray menu: {e}"),
    }
}

/// One menu line; `sub` makes it a submenu.
#[derive(Debug, Default)]
struct Item {
    id: String,
    label: String,
    enabled: bool,
    checked: Option<bool>,
    sub: Vec<Item>,
}

impl Item {
    fn text(id: &str, label: impl Into<String>, enabled: bool) -> Item {
        Item {
            id: id.to_string(),
            label: label.into(),
            enabled,
            ..Item::default()
        }
    }

    fn check(id: String, label: impl Into<String>, checked: bool) -> Item {
        Item {
            id,
            label: label.into(),
            enabled: true,
            checked: Some(checked),
            sub: Vec::new(),
        }
    }

    fn separator() -> Item {
        Item::text("-", "", false)
    }
}

fn menu_items(
    st: Option<&Value>,
    muted: bool,
    keys: &[robbie_mesh::sshkeys::StoredKey],
) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    match st {
        None => items.push(Item::text(
            "",
            "Service not running — start it with `robbie-mesh run`",
            false,
        )),
        Some(st) => {
            for s in st["services"].as_array().cloned().unwrap_or_default() {
                let name = s["name"].as_str().unwrap_or("?").to_string();
                let route = s["route"].as_str().unwrap_or("nothing is up");
                items.push(Item::text("", format!("{name} → {route}"), false));
                let pinned = s["pinned"].as_str();
                for c in s["candidates"].as_array().cloned().unwrap_or_default() {
                    let node = c["node"].as_str().unwrap_or("?");
                    let label = format!("    {node} ({})", c["health"].as_str().unwrap_or("?"));
                    items.push(Item::check(
                        format!("{PIN}{name}:{node}"),
                        label,
                        pinned == Some(node),
                    ));
                }
                items.push(Item::check(
                    format!("{UNPIN}{name}"),
                    "    automatic",
                    pinned.is_none(),
                ));
            }
            items.push(Item::separator());
            items.push(Item::text(ID_RECONNECT, "Reconnect all", true));
        }
    }
    items.push(Item::text(ID_DASHBOARD, "Open dashboard", true));
    items.push(Item::separator());
    items.push(Item::text("", "SSH keys (in the keychain)", false));
    for k in keys {
        items.push(Item {
            label: format!("    🔑 {}", k.name),
            enabled: true,
            sub: vec![
                Item::text(
                    &format!("{KEY}{}", k.name),
                    "Show its authorized_keys line",
                    true,
                ),
                Item::text(
                    &format!("{KEY_DELETE}{}", k.name),
                    format!("Delete {} from the keychain…", k.name),
                    true,
                ),
            ],
            ..Item::default()
        });
    }
    items.push(Item::text(ID_KEY_NEW, "    Generate a new key", true));
    items.push(Item::text(ID_KEY_IMPORT, "    Import a key file…", true));
    items.push(Item::check(ID_MUTE.into(), "Mute notifications", muted));
    items.push(Item::separator());
    items.push(Item::text(ID_QUIT, "Quit", true));
    items
}

fn build_menu(app: &AppHandle, items: &[Item]) -> tauri::Result<Menu<Wry>> {
    let mut n = 0;
    let entries = menu_entries(app, items, &mut n)?;
    let refs: Vec<&dyn IsMenuItem<Wry>> = entries.iter().map(|e| e.as_ref()).collect();
    Menu::with_items(app, &refs)
}

/// The menu's entries; `n` numbers the ones without an id (ids must be unique).
fn menu_entries(
    app: &AppHandle,
    items: &[Item],
    n: &mut usize,
) -> tauri::Result<Vec<Box<dyn IsMenuItem<Wry>>>> {
    let mut out: Vec<Box<dyn IsMenuItem<Wry>>> = Vec::new();
    for item in items {
        *n += 1;
        let id = if item.id.is_empty() {
            format!("label:{n}")
        } else {
            item.id.clone()
        };
        if item.id == "-" {
            out.push(Box::new(PredefinedMenuItem::separator(app)?));
        } else if !item.sub.is_empty() {
            let sub = menu_entries(app, &item.sub, n)?;
            let refs: Vec<&dyn IsMenuItem<Wry>> = sub.iter().map(|e| e.as_ref()).collect();
            out.push(Box::new(Submenu::with_id_and_items(
                app,
                id,
                &item.label,
                item.enabled,
                &refs,
            )?));
        } else if let Some(c) = item.checked {
            out.push(Box::new(CheckMenuItem::with_id(
                app,
                id,
                &item.label,
                item.enabled,
                c,
                None::<&str>,
            )?));
        } else {
            out.push(Box::new(MenuItem::with_id(
                app,
                id,
                &item.label,
                item.enabled,
                None::<&str>,
            )?));
        }
    }
    Ok(out)
}

fn on_menu(app: &AppHandle, id: &str) {
    let state = app.state::<Tray>();
    let client = state.client.clone();
    match id {
        ID_QUIT => app.exit(0),
        ID_DASHBOARD => open_dashboard(app),
        ID_KEY_NEW => add_key(app.clone(), None),
        ID_KEY_IMPORT => {
            let app2 = app.clone();
            let mut picker = app
                .dialog()
                .file()
                .set_title("Import an SSH private key into the keychain");
            if let Some(dir) = home().map(|h| h.join(".ssh")).filter(|d| d.is_dir()) {
                picker = picker.set_directory(dir);
            }
            picker.pick_file(move |file| {
                if let Some(path) = file.and_then(|f| f.into_path().ok()) {
                    add_key(app2, Some(path));
                }
            });
        }
        ID_AT_LOGIN => {
            let app = app.clone();
            tauri::async_runtime::spawn_blocking(move || toggle_at_login(&app));
        }
        ID_MUTE => {
            state.notifier.muted.fetch_xor(true, Ordering::Relaxed);
            // Redrawn with the next status.
            state
                .shown
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        ID_RECONNECT => {
            tauri::async_runtime::spawn(async move {
                if let Ok(st) = client.status().await {
                    let mut peers = std::collections::BTreeSet::new();
                    for t in st["tunnels"].as_array().cloned().unwrap_or_default() {
                        // One tunnel per peer: they share its SSH session.
                        if peers.insert(t["peer"].as_str().unwrap_or_default().to_string()) {
                            let _ = client
                                .reconnect(t["name"].as_str().unwrap_or_default())
                                .await;
                        }
                    }
                }
            });
        }
        _ if id.starts_with(KEY_DELETE) => {
            let Some(name) = id.strip_prefix(KEY_DELETE).map(str::to_string) else {
                return;
            };
            let app2 = app.clone();
            // On Linux (GTK) the underscore makes Alt+D press the button.
            let delete = if cfg!(target_os = "linux") {
                "_Delete"
            } else {
                "Delete"
            };
            app.dialog()
                .message(
                    "The key goes from the keychain for good. Servers that know only this key \
                     will no longer let robbie-mesh in.",
                )
                .title(format!("Delete SSH key {name}?"))
                .kind(MessageDialogKind::Warning)
                .buttons(MessageDialogButtons::OkCancelCustom(
                    delete.into(),
                    "Cancel".into(),
                ))
                .show(move |yes| {
                    if !yes {
                        return;
                    }
                    tauri::async_runtime::spawn(async move {
                        let gone = {
                            let name = name.clone();
                            tokio::task::spawn_blocking(move || robbie_mesh::sshkeys::delete(&name))
                                .await
                        };
                        match gone {
                            Ok(Ok(())) => show_now(
                                format!("SSH key {name} deleted"),
                                "It is no longer in the keychain.".into(),
                            ),
                            Ok(Err(e)) => {
                                show_now(format!("SSH key {name} not deleted"), e.to_string())
                            }
                            Err(e) => {
                                show_now(format!("SSH key {name} not deleted"), e.to_string())
                            }
                        }
                        reload_keys(app2);
                    });
                });
        }
        _ if id.starts_with(KEY) => {
            let keys = state.keys.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(k) = keys
                .iter()
                .find(|k| id.strip_prefix(KEY) == Some(k.name.as_str()))
            {
                show_now(
                    format!("SSH key {} ({})", k.name, k.fingerprint),
                    k.public.clone(),
                );
            }
        }
        _ => {
            let (service, node) = if let Some(rest) = id.strip_prefix(PIN) {
                match rest.split_once(':') {
                    Some((s, n)) => (s.to_string(), Some(n.to_string())),
                    None => return,
                }
            } else if let Some(s) = id.strip_prefix(UNPIN) {
                (s.to_string(), None)
            } else {
                return;
            };
            tauri::async_runtime::spawn(async move {
                if let Err(e) = client.pin(&service, node.as_deref()).await {
                    tracing::warn!("pin {service}: {e}");
                }
            });
        }
    }
}

/// Shows the dashboard: tells its process to show the window, or starts one.
fn open_dashboard(app: &AppHandle) {
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
        .env("ROBBIE_MESH_API", state.client.api_addr())
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
fn close_dashboard(app: &AppHandle) {
    let state = app.state::<Tray>();
    state
        .dashboard
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
}

fn home() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(std::path::PathBuf::from)
}

/// Generates a key (`file` None) or imports `file` into the keychain, then says
/// how to use it.
fn add_key(app: AppHandle, file: Option<std::path::PathBuf>) {
    tauri::async_runtime::spawn(async move {
        let node = app
            .state::<Tray>()
            .client
            .status()
            .await
            .ok()
            .and_then(|st| st["node"].as_str().map(str::to_string))
            .unwrap_or_else(|| "robbie-mesh".into());
        let taken: Vec<String> = app
            .state::<Tray>()
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|k| k.name.clone())
            .collect();
        let name = key_name(&node, file.as_deref(), &taken);
        let made = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || match file {
                Some(path) => robbie_mesh::sshkeys::import(&name, &path, None),
                None => robbie_mesh::sshkeys::generate(&name),
            })
            .await
        };
        let failed = |why: String| {
            let hint = match &file {
                // The tray cannot ask for a passphrase; the CLI can.
                Some(path) if why.contains("passphrase") => format!(
                    "{why}\nImport it in a terminal instead: robbie-mesh keys import NAME {}",
                    path.display()
                ),
                _ => why,
            };
            show_now("SSH key not stored".into(), hint);
        };
        match made {
            Ok(Ok(k)) => show_now(
                format!("SSH key {} is in the keychain", k.name),
                format!("Add this line to ~/.ssh/authorized_keys on your servers, and use identity = [\"keychain:{}\"]:\n{}", k.name, k.public),
            ),
            Ok(Err(e)) => failed(e.to_string()),
            Err(e) => failed(e.to_string()),
        }
        reload_keys(app);
    });
}

/// A new key's name: the key file's (`id_ed25519`), or `<node>-<seconds>` for a
/// generated key; made unique against `taken`, and valid as a key name.
fn key_name(node: &str, file: Option<&std::path::Path>, taken: &[String]) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect()
    };
    let base = file
        .and_then(|f| f.file_stem())
        .map(|s| clean(&s.to_string_lossy()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-{secs}", clean(node)));
    if taken.contains(&base) {
        format!("{base}-{secs}")
    } else {
        base
    }
}

/// Re-reads the key list from the keychain (blocking calls, off the UI thread).
fn reload_keys(app: AppHandle) {
    tauri::async_runtime::spawn(async move {
        let keys = tokio::task::spawn_blocking(robbie_mesh::sshkeys::list).await;
        let state = app.state::<Tray>();
        match keys {
            Ok(Ok(k)) => *state.keys.lock().unwrap_or_else(|p| p.into_inner()) = k,
            Ok(Err(e)) => tracing::warn!("cannot list the SSH keys: {e}"),
            Err(_) => {}
        }
        state
            .shown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    });
}

/// A notification the user asked for (never muted, never merged).
fn show_now(summary: String, body: String) {
    tauri::async_runtime::spawn_blocking(move || notify::show(&summary, &body));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_names_come_from_the_file_or_the_node_and_stay_unique() {
        let file = std::path::Path::new("/home/u/.ssh/id_ed25519");
        assert_eq!(key_name("book", Some(file), &[]), "id_ed25519");
        let again = key_name("book", Some(file), &["id_ed25519".into()]);
        assert!(
            again.starts_with("id_ed25519-") && again != "id_ed25519",
            "{again}"
        );
        let odd = std::path::Path::new("/keys/my key (old).pem");
        assert_eq!(key_name("book", Some(odd), &[]), "my-key--old-");
        assert!(key_name("robbie book", None, &[]).starts_with("robbie-book-"));
    }

    #[test]
    fn the_icon_tells_first_choice_fallback_and_nothing_up_apart() {
        let st = |route: Value, tunnel: &str| {
            json!({
                "services": [{"name": "ollama", "route": route, "pinned": null,
                              "candidates": [{"node": "aurora"}, {"node": "book"}]}],
                "tunnels": [{"state": tunnel}],
            })
        };
        assert_eq!(look(&st(json!("aurora"), "up")), Look::Good);
        assert_eq!(look(&st(json!("aurora"), "waiting")), Look::Degraded);
        assert_eq!(look(&st(json!("book"), "up")), Look::Degraded);
        assert_eq!(look(&st(Value::Null, "up")), Look::Offline);
    }
}
