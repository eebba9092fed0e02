//! What the tray shows: it follows the service (its status, then its event
//! stream; every event redraws, some become notifications) and draws the title,
//! the icon and the menu from the status.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use robbie_mesh::api::wire::{ServiceKind, ServiceStatus, Status, TunnelPhase};
use tauri::tray::TrayIcon;
use tauri::{AppHandle, Manager};

use crate::icon::Look;
use crate::Tray;

/// Follows the service; when it does not answer, says so and tries again.
pub async fn watch(app: AppHandle, tray: TrayIcon) {
    loop {
        let client = app.state::<Tray>().client.clone();
        // The stream first, so no change falls between the status and it.
        let opened = client.events().await;
        match (opened, client.status().await) {
            (Ok(events), Ok(st)) => {
                show(&app, &tray, Some(&st));
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                let notifier = app.state::<Tray>().notifier.clone();
                let read = events.for_each(move |e| {
                    if let Ok(e) = e {
                        if let Some((summary, body)) = crate::notify::for_event(&e.kind) {
                            notifier.tell(summary, body);
                        }
                    }
                    let _ = tx.send(());
                    std::future::ready(())
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
                    () = read => {}
                    () = redraw => {}
                }
            }
            _ => show(&app, &tray, None),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The Ollama service if there is one, else the first.
fn main_service(st: &Status) -> Option<&ServiceStatus> {
    st.services
        .iter()
        .find(|s| s.kind == ServiceKind::Ollama)
        .or_else(|| st.services.first())
}

/// Good: every service on its first choice (or where it is pinned) and every
/// tunnel up; offline: a service with no node up.
pub fn look(st: &Status) -> Look {
    if st.services.iter().any(|s| s.route.is_none()) {
        return Look::Offline;
    }
    let first_choice = st.services.iter().all(|s| {
        s.pinned.is_some() || s.route.as_deref() == s.candidates.first().map(|c| c.node.as_str())
    });
    let tunnels_up = st.tunnels.iter().all(|t| t.state == TunnelPhase::Up);
    if first_choice && tunnels_up {
        Look::Good
    } else {
        Look::Degraded
    }
}

/// Title, icon and menu for a status (`None`: the service is not running);
/// nothing is redrawn when nothing it says changed.
pub fn show(app: &AppHandle, tray: &TrayIcon, st: Option<&Status>) {
    let state = app.state::<Tray>();
    let (title, look) = match st {
        None => (
            "robbie-mesh: service not running".to_string(),
            Look::NotRunning,
        ),
        Some(st) => match main_service(st) {
            Some(s) => match &s.route {
                Some(node) => (format!("⚡ {node}"), look(st)),
                None => (format!("{}: no node up", s.name), Look::Offline),
            },
            None => ("robbie-mesh".to_string(), look(st)),
        },
    };
    let muted = state.notifier.muted.load(Ordering::Relaxed);
    let at_login = state.at_login.load(Ordering::Relaxed);
    let keys = state.keys.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let lines = crate::menu::lines(st, muted, at_login, &keys);
    let signature = format!("{title}|{look:?}|{lines:?}");
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
    match crate::menu::build(app, &lines) {
        Ok(menu) => {
            let _ = tray.set_menu(Some(menu));
        }
        Err(e) => tracing::warn!("cannot build the tray menu: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as the API writes it, read back into the wire types.
    fn status(route: Option<&str>, tunnel: &str) -> Status {
        let candidate = |node: &str| {
            serde_json::json!({"node": node, "address": "127.0.0.1:1", "tunnel": null,
                "health": "online", "reason": "", "since": "2026-01-01T00:00:00.000Z",
                "latency_ms": null})
        };
        serde_json::from_value(serde_json::json!({
            "node": "book", "mode": "mesh", "inventory": null, "nodes": {},
            "services": [{"name": "ollama", "kind": "ollama", "listen": "127.0.0.1:11434",
                "endpoint": "listening", "route": route, "pinned": null,
                "plan": {"order": [], "skipped": [], "panic": false},
                "candidates": [candidate("aurora"), candidate("book")]}],
            "tunnels": [{"name": "t", "peer": "aurora", "kind": "local", "local": "a",
                "remote": "b", "state": tunnel, "reason": null, "retry_at": null,
                "since": "2026-01-01T00:00:00.000Z", "reconnects": 0, "bytes_sent": 0,
                "bytes_received": 0, "connections_open": 0, "connections_total": 0}],
            "store": {"path": "s.db", "error": null, "replica": null,
                "sync": {"state": "off", "device": "d", "pending": 0, "last_sync": null,
                    "last_error": null, "pushed": 0, "pulled": 0, "rejected": 0,
                    "rejected_rows": [], "notice": null, "held_back": null}},
        }))
        .expect("a status")
    }

    #[test]
    fn the_icon_tells_first_choice_fallback_and_nothing_up_apart() {
        assert_eq!(look(&status(Some("aurora"), "up")), Look::Good);
        assert_eq!(look(&status(Some("aurora"), "waiting")), Look::Degraded);
        assert_eq!(look(&status(Some("book"), "up")), Look::Degraded);
        assert_eq!(look(&status(None, "up")), Look::Offline);
    }
}
