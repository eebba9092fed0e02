//! Each service's route watcher: recomputes where requests go whenever a
//! candidate changes, and publishes a change of route as an event with its reason.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::{EventBus, EventKind};
use crate::route::{Needs, Plan};

use super::ServiceHandle;

/// Follows the service's current route (where a request naming no model goes) and
/// turns every change into an event with its reason. Runs on every candidate change
/// and every second (a hold-down ends with no change to observe).
pub(super) async fn watch_route(
    svc: Arc<ServiceHandle>,
    changed: Arc<Notify>,
    events: EventBus,
    cancel: CancellationToken,
) {
    let mut current: Option<String> = None;
    loop {
        // An on-demand peer is needed while every candidate above it is down,
        // while the service is pinned to it, and for a while after a request
        // needed what only it may have (a model, VRAM).
        let mut all_above_down = true;
        let pin = svc.pin();
        let now = Instant::now();
        for c in &svc.candidates {
            if let Some(t) = c.tunnel.as_ref().filter(|t| t.demand.on_demand) {
                let summoned = c
                    .summoned_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some_and(|u| u > now);
                let pinned = pin.as_deref() == Some(c.config.node.as_str());
                t.demand
                    .set(&svc.config.name, all_above_down || pinned || summoned);
            }
            all_above_down &= c.status().health.is_known_down();
        }
        let plan = svc.plan(&Needs::default());
        let next = plan.current().map(str::to_string);
        if next != current {
            let reason = route_reason(&plan, current.as_deref(), next.as_deref());
            match &next {
                Some(to) => tracing::warn!(service = %svc.config.name, "route -> {to}: {reason}"),
                None => tracing::warn!(service = %svc.config.name, "no route: {reason}"),
            }
            svc.route_changes.fetch_add(1, Ordering::Relaxed);
            events.publish(EventKind::Route {
                service: svc.config.name.clone(),
                from: current.clone(),
                to: next.clone(),
                reason,
            });
            current = next;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Why the route moved from `from` to `to`, in words for a notification.
fn route_reason(plan: &Plan, from: Option<&str>, to: Option<&str>) -> String {
    let skipped = |node: &str| {
        plan.skipped
            .iter()
            .find(|c| c.node == node)
            .map(|c| format!("{node} {}", c.why))
    };
    let why_to = || {
        plan.order
            .first()
            .map(|c| c.why.clone())
            .unwrap_or_default()
    };
    match (from, to) {
        (None, Some(_)) => why_to(),
        (Some(f), Some(t)) => match skipped(f) {
            Some(why) => why,
            None => {
                let higher = plan.order.iter().position(|c| c.node == t)
                    < plan.order.iter().position(|c| c.node == f);
                if higher {
                    format!("{t} is up: {}", why_to())
                } else {
                    format!("{t} ranks first now: {}", why_to())
                }
            }
        },
        (Some(f), None) => format!(
            "no node is up; {}",
            skipped(f).unwrap_or_else(|| f.to_string())
        ),
        (None, None) => String::new(),
    }
}
