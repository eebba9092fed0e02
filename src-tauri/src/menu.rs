//! The tray's menu: what it lists (built from the service's status), the action
//! behind each line (one typed enum; a line's id is `Action::id`, read back by
//! `Action::parse`), and what each action does.

use std::sync::atomic::Ordering;

use robbie_mesh::api::wire::{Mode, Status};
use robbie_mesh::sshkeys::StoredKey;
use tauri::menu::{CheckMenuItem, IsMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::{AppHandle, Manager, Wry};

use crate::Tray;

/// What a menu line does when clicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `service`'s requests to `node` first.
    Pin {
        service: String,
        node: String,
    },
    /// Route `service` by itself again.
    Unpin {
        service: String,
    },
    /// Reconnect every peer's SSH session.
    ReconnectAll,
    OpenDashboard,
    GenerateKey,
    /// Pick a private key file and copy it into the keychain.
    ImportKey,
    /// Tell a key's authorized_keys line.
    ShowKey(String),
    /// Delete a key from the keychain, after asking.
    DeleteKey(String),
    ToggleMute,
    ToggleStartAtLogin,
    Quit,
}

impl Action {
    /// The menu item's id: a fixed word, then the names it carries after `:`
    /// (service and node names have no `:`; a key name may, and comes last).
    pub fn id(&self) -> String {
        match self {
            Action::Pin { service, node } => format!("pin:{service}:{node}"),
            Action::Unpin { service } => format!("unpin:{service}"),
            Action::ReconnectAll => "reconnect".into(),
            Action::OpenDashboard => "dashboard".into(),
            Action::GenerateKey => "keys-generate".into(),
            Action::ImportKey => "keys-import".into(),
            Action::ShowKey(name) => format!("key:{name}"),
            Action::DeleteKey(name) => format!("key-delete:{name}"),
            Action::ToggleMute => "mute".into(),
            Action::ToggleStartAtLogin => "at-login".into(),
            Action::Quit => "quit".into(),
        }
    }

    /// The action of a menu item's id; `None` for a line without one.
    pub fn parse(id: &str) -> Option<Action> {
        let (word, rest) = id.split_once(':').unwrap_or((id, ""));
        let named = |f: fn(String) -> Action| (!rest.is_empty()).then(|| f(rest.to_string()));
        match word {
            "pin" => {
                let (service, node) = rest.split_once(':')?;
                Some(Action::Pin {
                    service: service.to_string(),
                    node: node.to_string(),
                })
            }
            "unpin" => named(|service| Action::Unpin { service }),
            "key" => named(Action::ShowKey),
            "key-delete" => named(Action::DeleteKey),
            _ if !rest.is_empty() => None,
            "reconnect" => Some(Action::ReconnectAll),
            "dashboard" => Some(Action::OpenDashboard),
            "keys-generate" => Some(Action::GenerateKey),
            "keys-import" => Some(Action::ImportKey),
            "mute" => Some(Action::ToggleMute),
            "at-login" => Some(Action::ToggleStartAtLogin),
            "quit" => Some(Action::Quit),
            _ => None,
        }
    }
}

/// One menu line.
#[derive(Debug)]
pub enum Line {
    /// Text that does nothing.
    Label(String),
    Separator,
    Do {
        action: Action,
        label: String,
        /// `Some` for a line with a check mark.
        checked: Option<bool>,
    },
    Sub {
        label: String,
        lines: Vec<Line>,
    },
}

impl Line {
    fn label(text: impl Into<String>) -> Line {
        Line::Label(text.into())
    }

    fn act(action: Action, label: impl Into<String>) -> Line {
        Line::Do {
            action,
            label: label.into(),
            checked: None,
        }
    }

    fn check(action: Action, label: impl Into<String>, checked: bool) -> Line {
        Line::Do {
            action,
            label: label.into(),
            checked: Some(checked),
        }
    }
}

/// The menu for a status (`None`: the service is not running).
pub fn lines(st: Option<&Status>, muted: bool, at_login: bool, keys: &[StoredKey]) -> Vec<Line> {
    let mut out = Vec::new();
    match st {
        None => out.push(Line::label(
            "Service not running — start it with `robbie-mesh run`",
        )),
        Some(st) if st.mode == Mode::LocalOnly && st.services.is_empty() => {
            // A fresh install: say what to do, not an empty menu.
            out.push(Line::label("Not connected to other machines yet:"));
            out.push(Line::label("    run `robbie-mesh init` in a terminal"));
            out.push(Line::label("    (then `robbie-mesh doctor` checks it all)"));
        }
        Some(st) => {
            for s in &st.services {
                let route = s.route.as_deref().unwrap_or("nothing is up");
                out.push(Line::label(format!("{} → {route}", s.name)));
                for c in &s.candidates {
                    out.push(Line::check(
                        Action::Pin {
                            service: s.name.clone(),
                            node: c.node.clone(),
                        },
                        format!("    {} ({})", c.node, c.health.health.as_str()),
                        s.pinned.as_deref() == Some(c.node.as_str()),
                    ));
                }
                out.push(Line::check(
                    Action::Unpin {
                        service: s.name.clone(),
                    },
                    "    automatic",
                    s.pinned.is_none(),
                ));
            }
            out.push(Line::Separator);
            out.push(Line::act(Action::ReconnectAll, "Reconnect all"));
        }
    }
    out.push(Line::act(
        Action::OpenDashboard,
        "Open dashboard (status, doctor's findings)",
    ));
    out.push(Line::Separator);
    out.push(Line::label("SSH keys (in the keychain)"));
    for k in keys {
        out.push(Line::Sub {
            label: format!("    🔑 {}", k.name),
            lines: vec![
                Line::act(
                    Action::ShowKey(k.name.clone()),
                    "Show its authorized_keys line",
                ),
                Line::act(
                    Action::DeleteKey(k.name.clone()),
                    format!("Delete {} from the keychain…", k.name),
                ),
            ],
        });
    }
    out.push(Line::act(Action::GenerateKey, "    Generate a new key"));
    out.push(Line::act(Action::ImportKey, "    Import a key file…"));
    out.push(Line::check(Action::ToggleMute, "Mute notifications", muted));
    out.push(Line::check(
        Action::ToggleStartAtLogin,
        "Start the service at login",
        at_login,
    ));
    out.push(Line::Separator);
    out.push(Line::act(Action::Quit, "Quit"));
    out
}

pub fn build(app: &AppHandle, lines: &[Line]) -> tauri::Result<Menu<Wry>> {
    let mut n = 0;
    let entries = entries(app, lines, &mut n)?;
    let refs: Vec<&dyn IsMenuItem<Wry>> = entries.iter().map(|e| e.as_ref()).collect();
    Menu::with_items(app, &refs)
}

/// The menu's entries; `n` numbers the lines without an action (ids must be
/// unique, and `Action::parse` reads none from `label:N`).
fn entries(
    app: &AppHandle,
    lines: &[Line],
    n: &mut usize,
) -> tauri::Result<Vec<Box<dyn IsMenuItem<Wry>>>> {
    let mut out: Vec<Box<dyn IsMenuItem<Wry>>> = Vec::new();
    for line in lines {
        *n += 1;
        let entry: Box<dyn IsMenuItem<Wry>> = match line {
            Line::Separator => Box::new(PredefinedMenuItem::separator(app)?),
            Line::Label(text) => Box::new(MenuItem::with_id(
                app,
                format!("label:{n}"),
                text,
                false,
                None::<&str>,
            )?),
            Line::Sub { label, lines } => {
                let id = format!("label:{n}");
                let sub = entries(app, lines, n)?;
                let refs: Vec<&dyn IsMenuItem<Wry>> = sub.iter().map(|e| e.as_ref()).collect();
                Box::new(Submenu::with_id_and_items(app, id, label, true, &refs)?)
            }
            Line::Do {
                action,
                label,
                checked: Some(c),
            } => Box::new(CheckMenuItem::with_id(
                app,
                action.id(),
                label,
                true,
                *c,
                None::<&str>,
            )?),
            Line::Do {
                action,
                label,
                checked: None,
            } => Box::new(MenuItem::with_id(
                app,
                action.id(),
                label,
                true,
                None::<&str>,
            )?),
        };
        out.push(entry);
    }
    Ok(out)
}

/// A click on the menu line with this id.
pub fn on_click(app: &AppHandle, id: &str) {
    let Some(action) = Action::parse(id) else {
        return;
    };
    let state = app.state::<Tray>();
    let client = state.client.clone();
    match action {
        Action::Quit => app.exit(0),
        Action::OpenDashboard => crate::dashboard::open(app),
        Action::GenerateKey => crate::keys::add(app.clone(), None),
        Action::ImportKey => crate::keys::pick_and_import(app),
        Action::ShowKey(name) => crate::keys::show(app, &name),
        Action::DeleteKey(name) => crate::keys::delete(app, name),
        Action::ToggleStartAtLogin => {
            let app = app.clone();
            tauri::async_runtime::spawn_blocking(move || crate::autostart::toggle(&app));
        }
        Action::ToggleMute => {
            state.notifier.muted.fetch_xor(true, Ordering::Relaxed);
            state.redraw();
        }
        Action::ReconnectAll => {
            tauri::async_runtime::spawn(async move {
                if let Ok(st) = client.status().await {
                    let mut peers = std::collections::BTreeSet::new();
                    for t in &st.tunnels {
                        // One tunnel per peer: they share its SSH session.
                        if peers.insert(t.peer.clone()) {
                            if let Err(e) = client.reconnect(&t.name).await {
                                tracing::warn!("reconnect {}: {e}", t.peer);
                            }
                        }
                    }
                }
            });
        }
        Action::Pin { service, node } => pin(client, service, Some(node)),
        Action::Unpin { service } => pin(client, service, None),
    }
}

fn pin(client: robbie_mesh::client::Client, service: String, node: Option<String>) {
    tauri::async_runtime::spawn(async move {
        if let Err(e) = client.pin(&service, node.as_deref()).await {
            tracing::warn!("pin {service}: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_install_says_to_run_init() {
        let st: Status = serde_json::from_value(serde_json::json!({
            "node": "book", "mode": "local-only", "inventory": null, "nodes": {},
            "services": [], "tunnels": [],
            "store": {"path": "s.db", "error": null, "replica": null,
                "sync": {"state": "off", "device": "d", "pending": 0, "last_sync": null,
                    "last_error": null, "pushed": 0, "pulled": 0, "rejected": 0,
                    "rejected_rows": [], "notice": null, "held_back": null}},
        }))
        .expect("a status");
        let text = format!("{:?}", lines(Some(&st), false, false, &[]));
        assert!(
            text.contains("run `robbie-mesh init` in a terminal"),
            "{text}"
        );
        assert!(!text.contains("Reconnect all"), "{text}");
    }

    #[test]
    fn every_action_reads_back_from_its_id_and_labels_read_as_none() {
        let all = [
            Action::Pin {
                service: "ollama".into(),
                node: "aurora".into(),
            },
            Action::Unpin {
                service: "ollama".into(),
            },
            Action::ReconnectAll,
            Action::OpenDashboard,
            Action::GenerateKey,
            Action::ImportKey,
            Action::ShowKey("id:odd".into()),
            Action::DeleteKey("book-1".into()),
            Action::ToggleMute,
            Action::ToggleStartAtLogin,
            Action::Quit,
        ];
        for a in all {
            assert_eq!(Action::parse(&a.id()), Some(a.clone()), "{}", a.id());
        }
        for none in ["label:3", "pin:ollama", "key:", "quit:now", "", "nothing"] {
            assert_eq!(Action::parse(none), None, "{none}");
        }
    }
}
