//! Desktop notifications (notify-rust: the freedesktop Notifications service on
//! Linux, Notification Center on macOS) for failover, failback and host-key alarms.
//! What arrives within 2 s of the first is told in one notification; a setting
//! mutes them all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use robbie_mesh::api::wire::EventKind;
use tokio::sync::mpsc;

/// How long after the first of a burst the notification goes out.
pub const BURST: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<(String, String)>,
    pub muted: Arc<AtomicBool>,
}

impl Notifier {
    pub fn start() -> Notifier {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, String)>();
        let muted = Arc::new(AtomicBool::new(false));
        let m = muted.clone();
        tauri::async_runtime::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut all = vec![first];
                let until = tokio::time::Instant::now() + BURST;
                while let Ok(Some(more)) = tokio::time::timeout_at(until, rx.recv()).await {
                    all.push(more);
                }
                if m.load(Ordering::Relaxed) {
                    continue;
                }
                let (summary, body) = if all.len() == 1 {
                    all.remove(0)
                } else {
                    let lines: Vec<String> = all.iter().map(|(s, b)| format!("{s}: {b}")).collect();
                    (
                        format!("robbie-mesh: {} changes", all.len()),
                        lines.join("\n"),
                    )
                };
                let _ = tokio::task::spawn_blocking(move || show(&summary, &body)).await;
            }
        });
        Notifier { tx, muted }
    }

    pub fn tell(&self, summary: String, body: String) {
        tracing::debug!("to tell: {summary}: {body}");
        let _ = self.tx.send((summary, body));
    }
}

/// What an event says to the user, if it is worth a notification.
pub fn for_event(e: &EventKind) -> Option<(String, String)> {
    match e {
        EventKind::Route {
            service,
            from,
            to,
            reason,
        } => {
            // The first route after start-up is not news.
            if from.is_none() && to.is_some() {
                return None;
            }
            let mut name = service.chars();
            let service = name
                .next()
                .map(|c| c.to_uppercase().collect::<String>() + name.as_str())
                .unwrap_or_default();
            let to = to.as_deref().unwrap_or("nothing (no node is up)");
            Some((format!("{service} → {to}"), reason.clone()))
        }
        EventKind::HostKeyAlarm { peer, message } => {
            Some((format!("Host key alarm: {peer}"), message.clone()))
        }
        EventKind::Tunnel { .. } | EventKind::Health { .. } | EventKind::InternalError { .. } => {
            None
        }
    }
}

/// A notification the user asked for (never muted, never merged).
pub fn show_now(summary: String, body: String) {
    tauri::async_runtime::spawn_blocking(move || show(&summary, &body));
}

/// Shows one notification now (blocking: call it off the UI thread).
pub fn show(summary: &str, body: &str) {
    tracing::debug!("notification: {summary}: {body}");
    if let Err(e) = notify_rust::Notification::new()
        .appname("robbie-mesh")
        .summary(summary)
        .body(body)
        .show()
    {
        tracing::warn!("cannot show a notification: {e}");
    }
}
