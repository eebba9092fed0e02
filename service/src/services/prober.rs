//! The prober of one candidate: its tunnel's state first (no session, no
//! service), then its kind's probe (`crate::kinds`) on an interval, quicker after
//! a request through it failed; what it sees goes through the hysteresis of
//! `crate::health` into the candidate's status.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::ServiceConfig;
use crate::events::{EventBus, EventKind};
use crate::health::Observation;
use crate::kinds::{self, OllamaInfo, OllamaWants};
use crate::tunnel::Tunnel;

use super::{CandidateHandle, CandidateStatus, RECHECK};

/// Installed models change rarely; loaded models and VRAM change often.
const TAGS_EVERY: Duration = Duration::from_secs(30);
const PS_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(super) struct Prober {
    pub(super) handle: Arc<CandidateHandle>,
    pub(super) service: ServiceConfig,
    pub(super) tunnel: Option<Arc<Tunnel>>,
    pub(super) http: reqwest::Client,
    pub(super) events: EventBus,
}

impl Prober {
    pub(super) async fn run(self, cancel: CancellationToken) {
        let mut tunnel_rx = self.tunnel.as_ref().map(|t| t.subscribe());
        let (mut tags_at, mut ps_at): (Option<Instant>, Option<Instant>) = (None, None);
        let interval = self.service.probe.interval(&self.handle.config);
        // After traffic saw a failure, probe at RECHECK until FALL probes have run.
        let mut quick = 0;
        // What the probe logs in with (PostgreSQL: a password the user stored).
        let secret = {
            let (kind, name) = (kinds::of(self.service.kind), self.service.name.clone());
            tokio::task::spawn_blocking(move || kind.probe_secret(&name))
                .await
                .ok()
                .flatten()
        };
        loop {
            // Lower layer first: no session, no service.
            if let Some(rx) = tunnel_rx.as_mut() {
                let tunnel = rx.borrow_and_update().state.clone();
                if !tunnel.is_up() {
                    let name = self.handle.config.tunnel.as_deref().unwrap_or_default();
                    let why = format!(
                        "tunnel {name} {}: {}",
                        tunnel.label(),
                        tunnel.reason().unwrap_or("not up yet")
                    );
                    self.update(|s, now| s.health.force_offline(why, now));
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        r = rx.changed() => if r.is_err() { return },
                    }
                    continue;
                }
            }
            // Requests in flight prove the node's health themselves; a probe on the
            // same SSH connection would only queue in front of their answers. (A
            // failing request asks for a quick recheck, which is never skipped.)
            if quick == 0 && self.handle.in_flight.load(Ordering::Relaxed) > 0 {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                    () = crate::tunnel::state_changed(tunnel_rx.as_mut()) => {}
                    () = self.handle.recheck.notified() => quick = crate::health::FALL,
                }
                continue;
            }
            let wants = OllamaWants {
                tags: tags_at.is_none_or(|t| t.elapsed() >= TAGS_EVERY),
                ps: ps_at.is_none_or(|t| t.elapsed() >= PS_EVERY),
            };
            let probe = kinds::Probe {
                addr: &self.handle.config.address,
                cfg: &self.service.probe,
                http: &self.http,
                ollama: wants,
                secret: secret.as_deref(),
            };
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                o = kinds::probe(self.service.kind, &probe) => o,
            };
            if let Some(u) = &outcome.ollama {
                if u.models.is_some() {
                    tags_at = Some(Instant::now());
                }
                if u.loaded.is_some() {
                    ps_at = Some(Instant::now());
                }
            }
            self.update(|s, now| {
                if outcome.postgres.is_some() {
                    s.postgres_role = outcome.postgres;
                }
                s.latency_ms = match outcome.observation {
                    Observation::Failed(_) => None,
                    _ => Some(outcome.latency.as_secs_f64() * 1e3),
                };
                if let Some(u) = outcome.ollama {
                    let info = s.ollama.get_or_insert_with(OllamaInfo::default);
                    info.version = u.version.unwrap_or_else(|| info.version.clone());
                    if let Some(m) = u.models {
                        info.models = m.into();
                    }
                    if let Some(l) = u.loaded {
                        info.loaded = l;
                    }
                }
                let observation = match (outcome.observation, &s.ollama) {
                    (Observation::Ok, Some(info)) => match kinds::vram_shortfall(&info.loaded) {
                        Some(why) => Observation::Degraded(why),
                        None => Observation::Ok,
                    },
                    (o, _) => o,
                };
                s.health.observe(observation, now)
            });
            let wait = if quick > 0 {
                quick -= 1;
                interval.min(RECHECK)
            } else {
                interval
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = crate::tunnel::state_changed(tunnel_rx.as_mut()) => {}
                () = self.handle.recheck.notified() => quick = crate::health::FALL,
            }
        }
    }

    /// Applies `f` (which returns whether the health flipped) and publishes; a flip
    /// is logged and becomes an event.
    fn update(&self, f: impl FnOnce(&mut CandidateStatus, SystemTime) -> bool) {
        let mut flipped = None;
        self.handle.state.send_modify(|s| {
            if f(s, SystemTime::now()) {
                flipped = Some(s.health.clone());
            }
        });
        self.handle.service_changed.notify_one();
        if let Some(h) = flipped {
            let (service, node) = (&self.handle.service, &self.handle.config.node);
            if h.is_up() {
                self.handle.lock_ejection().recovered(Instant::now());
                tracing::info!("{service} on {node}: {:?} {}", h.health, h.reason);
            } else {
                tracing::warn!("{service} on {node}: offline: {}", h.reason);
            }
            self.events.publish(EventKind::Health {
                service: service.clone(),
                node: node.clone(),
                health: h.health,
                reason: h.reason,
            });
        }
    }
}
