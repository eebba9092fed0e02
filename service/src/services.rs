//! The configured services at run time: one prober task per candidate (a node's
//! instance of a service), each publishing its layered health on a `watch` channel.
//!
//! Layers, as DESIGN §3 asks: a candidate behind a `-L` tunnel is offline at once
//! while that tunnel's SSH session is not up (with the tunnel's reason); otherwise
//! its service probe decides, through the rise/fall hysteresis of `health`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Candidate, ServiceConfig};
use crate::events::{EventBus, EventKind};
use crate::health::{HealthState, Observation};
use crate::probe::{self, OllamaInfo, OllamaWants};
use crate::tunnel::Tunnel;

/// Installed models change rarely; loaded models and VRAM change often.
const TAGS_EVERY: Duration = Duration::from_secs(30);
const PS_EVERY: Duration = Duration::from_secs(5);

/// One candidate as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateStatus {
    pub node: String,
    pub address: String,
    pub tunnel: Option<String>,
    #[serde(flatten)]
    pub health: HealthState,
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ollama: Option<OllamaInfo>,
}

pub struct CandidateHandle {
    pub service: String,
    pub config: Candidate,
    state: watch::Sender<CandidateStatus>,
}

impl CandidateHandle {
    pub fn status(&self) -> CandidateStatus {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<CandidateStatus> {
        self.state.subscribe()
    }
}

pub struct ServiceHandle {
    pub config: ServiceConfig,
    pub candidates: Vec<Arc<CandidateHandle>>,
}

/// Starts the probers of every candidate of every service.
pub fn spawn(
    services: &[ServiceConfig],
    tunnels: &dyn Fn(&str) -> Option<Arc<Tunnel>>,
    events: &EventBus,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Vec<ServiceHandle> {
    let http = reqwest::Client::builder().no_proxy().build().unwrap_or_else(|_| reqwest::Client::new());
    services
        .iter()
        .map(|svc| {
            let candidates = svc
                .candidates
                .iter()
                .map(|c| {
                    let status = CandidateStatus {
                        node: c.node.clone(),
                        address: c.address.to_string(),
                        tunnel: c.tunnel.clone(),
                        health: HealthState::new(SystemTime::now()),
                        latency_ms: None,
                        ollama: None,
                    };
                    let handle = Arc::new(CandidateHandle {
                        service: svc.name.clone(),
                        config: c.clone(),
                        state: watch::Sender::new(status),
                    });
                    let prober = Prober {
                        handle: handle.clone(),
                        service: svc.clone(),
                        tunnel: c.tunnel.as_deref().and_then(tunnels),
                        http: http.clone(),
                        events: events.clone(),
                    };
                    let span = tracing::info_span!("probe", service = %svc.name, node = %c.node);
                    tracker.spawn(tracing::Instrument::instrument(prober.run(cancel.clone()), span));
                    handle
                })
                .collect();
            ServiceHandle { config: svc.clone(), candidates }
        })
        .collect()
}

struct Prober {
    handle: Arc<CandidateHandle>,
    service: ServiceConfig,
    tunnel: Option<Arc<Tunnel>>,
    http: reqwest::Client,
    events: EventBus,
}

impl Prober {
    async fn run(self, cancel: CancellationToken) {
        let mut tunnel_rx = self.tunnel.as_ref().map(|t| t.subscribe());
        let (mut tags_at, mut ps_at): (Option<Instant>, Option<Instant>) = (None, None);
        let interval = self.service.probe.interval(&self.handle.config);
        loop {
            // Lower layer first: no session, no service.
            if let Some(rx) = tunnel_rx.as_mut() {
                let tunnel = rx.borrow_and_update().state.clone();
                if !tunnel.is_up() {
                    let name = self.handle.config.tunnel.as_deref().unwrap_or_default();
                    let why = format!("tunnel {name} {}: {}", tunnel.label(), tunnel.reason().unwrap_or("not up yet"));
                    self.update(|s, now| s.health.force_offline(why, now));
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        r = rx.changed() => if r.is_err() { return },
                    }
                    continue;
                }
            }
            let wants = OllamaWants {
                tags: tags_at.is_none_or(|t| t.elapsed() >= TAGS_EVERY),
                ps: ps_at.is_none_or(|t| t.elapsed() >= PS_EVERY),
            };
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                o = probe::probe(self.service.kind, &self.handle.config.address, &self.service.probe, &self.http, wants) => o,
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
                s.latency_ms = match outcome.observation {
                    Observation::Failed(_) => None,
                    _ => Some(outcome.latency.as_secs_f64() * 1e3),
                };
                if let Some(u) = outcome.ollama {
                    let info = s.ollama.get_or_insert_with(OllamaInfo::default);
                    info.version = u.version.unwrap_or_else(|| info.version.clone());
                    if let Some(m) = u.models {
                        info.models = m;
                    }
                    if let Some(l) = u.loaded {
                        info.loaded = l;
                    }
                }
                s.health.observe(outcome.observation, now)
            });
            let tunnel_changed = async {
                match tunnel_rx.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
                () = tunnel_changed => {}
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
        if let Some(h) = flipped {
            let (service, node) = (&self.handle.service, &self.handle.config.node);
            if h.is_up() {
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
