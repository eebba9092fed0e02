//! robbie-mesh-tray: the tray / menu-bar face of the robbie-mesh service on this
//! machine. Its title shows who serves Ollama now (`⚡ vengeance`), its icon whether
//! all is well; its menu pins a service to a node, reconnects, opens the dashboard,
//! manages the SSH keys in the keychain; failovers, failbacks and host-key alarms
//! become notifications. It only talks to the service's loopback API (through
//! `robbie_mesh::client`), so it follows the service across restarts.
//!
//! - `view`: follows the service and draws title, icon and menu;
//! - `menu`: the menu's lines and the typed action behind each;
//! - `keys`: the keychain's SSH keys; `autostart`: "Start the service at login";
//! - `dashboard`: the dashboard window, in a process of its own;
//! - `notify`: notifications; `icon`: the icon for each look.

mod autostart;
mod dashboard;
mod icon;
mod keys;
mod menu;
mod notify;
mod view;

use std::sync::Mutex;

use robbie_mesh::client::Client;
use tauri::menu::Menu;
use tauri::tray::TrayIconBuilder;
use tauri::{Manager, RunEvent, Wry};

use icon::Look;
use notify::Notifier;

/// The tray's state, shared by the watcher and the menu's actions.
struct Tray {
    client: Client,
    notifier: Notifier,
    /// What the title, icon and menu last said (redrawn only when it changes).
    shown: Mutex<String>,
    /// The SSH keys in the keychain, as last read.
    keys: Mutex<Vec<robbie_mesh::sshkeys::StoredKey>>,
    /// The dashboard's process while it runs (see `dashboard`): its pid and stdin.
    dashboard: Mutex<Option<(u32, std::process::ChildStdin)>>,
    /// Whether the service starts at login (the user unit is enabled).
    at_login: std::sync::atomic::AtomicBool,
}

impl Tray {
    /// Makes the next status redraw everything (a setting or the key list changed).
    fn redraw(&self) {
        self.shown.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

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
            dashboard::open(app)
        }))
        .plugin(tauri_plugin_dialog::init())
        .setup(|app| {
            // A menu-bar app: no Dock icon (the dashboard's own process has one).
            #[cfg(target_os = "macos")]
            app.set_activation_policy(tauri::ActivationPolicy::Accessory);
            let client = Client::for_config(None, None);
            if let Some(why) = client.token_problem() {
                tracing::warn!("pin and reconnect will be refused: {why}");
            }
            app.manage(Tray {
                client,
                notifier: Notifier::start(),
                shown: Mutex::new(String::new()),
                keys: Mutex::new(Vec::new()),
                dashboard: Mutex::new(None),
                at_login: robbie_mesh::install::starts_at_login().into(),
            });
            keys::reload(app.handle().clone());
            let menu = Menu::with_items(app, &[])?;
            let tray = TrayIconBuilder::with_id("main")
                .icon(Look::NotRunning.image())
                .title("robbie-mesh")
                .tooltip("robbie-mesh")
                .menu(&menu)
                .show_menu_on_left_click(true)
                .on_menu_event(|app, e| menu::on_click(app, e.id().as_ref()))
                .build(app)?;
            tauri::async_runtime::spawn(view::watch(app.handle().clone(), tray));
            Ok(())
        })
        .build(context());
    match app {
        Ok(app) => {
            app.run(|app, e| match e {
                RunEvent::ExitRequested {
                    api, code: None, ..
                } => api.prevent_exit(),
                RunEvent::Exit => dashboard::close(app),
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
