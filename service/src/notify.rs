//! The service manager's side of running: systemd's notify protocol.
//!
//! - `READY=1` once every listener has tried to bind ([`crate::startup`]), with
//!   the first status line;
//! - `STATUS=` one line of what matters, kept current (`systemctl status` shows
//!   it): `ollama → aurora · 5/5 tunnels up · 0 rows pending`;
//! - `WATCHDOG=1` from a task on the async runtime, so a runtime that stops
//!   making progress stops the pings and systemd restarts the service;
//! - `STOPPING=1` when shutdown begins.
//!
//! Without `$NOTIFY_SOCKET` (a terminal, launchd, a test) every message is
//! dropped by `sd_notify` itself and this is only the status line.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::route::Needs;
use crate::runtime::Service;
use crate::store::sync::SyncState;

/// How often the status line is refreshed (and, at most, the watchdog pinged).
const TICK: Duration = Duration::from_secs(2);

/// One line: where each service goes now, how many tunnels are up, what the
/// store still has to send.
pub fn status_line(service: &Service) -> String {
    let mut parts = Vec::new();
    for s in service.services.iter() {
        let plan = s.plan(&Needs::default());
        parts.push(format!(
            "{} → {}",
            s.config.name,
            plan.current().unwrap_or("no node up")
        ));
    }
    let tunnels: Vec<_> = service.tunnels().collect();
    if !tunnels.is_empty() {
        let up = tunnels
            .iter()
            .filter(|t| t.snapshot().state.is_up())
            .count();
        parts.push(format!("{up}/{} tunnels up", tunnels.len()));
    }
    match &service.store {
        Err(_) => parts.push("store unavailable".into()),
        Ok(_) => {
            let sync = service.sync.status.borrow();
            if sync.state != SyncState::Off {
                parts.push(format!(
                    "{} row{} pending",
                    sync.pending,
                    if sync.pending == 1 { "" } else { "s" }
                ));
            }
        }
    }
    if parts.is_empty() {
        "local-only mode: no peers, no services".into()
    } else {
        parts.join(" · ")
    }
}

/// Tells the service manager about `service` until its shutdown begins.
pub async fn run(service: Service) {
    let shutdown = service.shutdown.clone();
    tokio::select! {
        () = service.startup.settled() => {}
        () = shutdown.cancelled() => return stopping(),
    }
    let mut line = status_line(&service);
    send(&[NotifyState::Ready, NotifyState::Status(&line)]);
    tracing::debug!("ready: {line}");
    // The watchdog wants a ping well within its timeout: half of it, or sooner.
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog.map_or(TICK, |t| (t / 2).min(TICK));
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = shutdown.cancelled() => return stopping(),
        }
        if watchdog.is_some() {
            send(&[NotifyState::Watchdog]);
        }
        let now = status_line(&service);
        if now != line {
            line = now;
            send(&[NotifyState::Status(&line)]);
        }
    }
}

fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot tell the service manager: {e}");
    }
}
