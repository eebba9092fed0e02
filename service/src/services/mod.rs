//! The configured services at run time: one prober task per candidate (a node's
//! instance of a service), each publishing its layered health on a `watch` channel.
//!
//! Layers (ARCHITECTURE.md, "Liveness and failover"): a candidate behind a `-L` tunnel is offline at once
//! while that tunnel's SSH session is not up (with the tunnel's reason); otherwise
//! its service probe decides, through the rise/fall hysteresis of `health`.
//!
//! - `candidate`: one candidate's status and handle;
//! - `prober`: the task that probes one candidate;
//! - `watch`: the task that publishes a service's route changes.

mod candidate;
mod prober;
mod route_watch;

pub use candidate::{CandidateHandle, CandidateMetrics, CandidateStatus, RequestGuard};

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServiceConfig;
use crate::events::EventBus;
use crate::health::HealthState;
use crate::nodes::NodeMap;
use crate::route::{self, Ejection, Explain, Needs, Plan, View};
use crate::tunnel::Tunnel;

use prober::Prober;
use route_watch::watch_route;

/// Probe interval after a request through the candidate failed.
const RECHECK: Duration = Duration::from_millis(500);

pub struct ServiceHandle {
    pub config: ServiceConfig,
    pub candidates: Vec<Arc<CandidateHandle>>,
    /// A node the user pinned this service to (tried first while it is up).
    pin: Mutex<Option<String>>,
    /// Why the endpoint is not listening, if it is not.
    endpoint: Mutex<Option<String>>,
    changed: Arc<Notify>,
    pub route_changes: std::sync::atomic::AtomicU64,
    /// The mesh's hardware: GPU memory for models that declare a need.
    nodes: watch::Receiver<NodeMap>,
}

/// How long a request's need keeps an on-demand peer connected (then its own
/// `idle` applies), and how long the request waits for it to come up.
pub const SUMMON_FOR: Duration = Duration::from_secs(60);
pub const SUMMON_WAIT: Duration = Duration::from_secs(30);

impl ServiceHandle {
    /// Whether candidate `c` can serve `needs` as far as is known now (up, has the
    /// model when its models are known, enough VRAM when its GPUs are known).
    fn fits(&self, c: &CandidateHandle, needs: &Needs) -> bool {
        let v = c.view();
        let model_ok = match (&needs.model, &v.models) {
            (Some(m), Some(have)) => have.iter().any(|x| route::same_model(x, m)),
            _ => true,
        };
        let vram_ok = match (needs.vram_bytes, self.vram_of(c)) {
            (Some(need), Some(have)) => have >= need,
            _ => true,
        };
        v.health != crate::health::Health::Offline && model_ok && vram_ok
    }

    fn vram_of(&self, c: &CandidateHandle) -> Option<u64> {
        self.nodes
            .borrow()
            .get(&c.config.node)
            .and_then(|n| n.max_vram())
    }

    /// A request needs a model or VRAM that no reachable candidate offers: the
    /// on-demand candidates that may offer it (GPU unknown or big enough) are
    /// connected now. Returns whether any was.
    pub fn summon_for(&self, needs: &Needs) -> bool {
        if needs.model.is_none() && needs.vram_bytes.is_none() {
            return false;
        }
        if self.candidates.iter().any(|c| self.fits(c, needs)) {
            return false;
        }
        let mut summoned = false;
        for c in &self.candidates {
            let on_demand = c.tunnel.as_ref().is_some_and(|t| t.demand.on_demand);
            let too_small =
                matches!((needs.vram_bytes, self.vram_of(c)), (Some(n), Some(h)) if h < n);
            if on_demand && !too_small {
                *c.summoned_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + SUMMON_FOR);
                summoned = true;
            }
        }
        if summoned {
            tracing::info!(service = %self.config.name, "a request needs {}: connecting on-demand nodes", needs.model.as_deref().unwrap_or("more VRAM"));
            self.changed.notify_one();
        }
        summoned
    }

    /// Waits (up to `SUMMON_WAIT`) until some candidate can serve `needs`, or every
    /// summoned one is up and still cannot (a model nobody has).
    pub async fn wait_for_fit(&self, needs: &Needs) {
        let end = Instant::now() + SUMMON_WAIT;
        let now = Instant::now();
        let summoned: Vec<&Arc<CandidateHandle>> = self
            .candidates
            .iter()
            .filter(|c| {
                c.summoned_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some_and(|u| u > now)
            })
            .collect();
        while Instant::now() < end {
            if self.candidates.iter().any(|c| self.fits(c, needs)) {
                return;
            }
            if summoned.iter().all(|c| c.status().health.is_up()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The VRAM the service's config declares for `model`.
    pub fn vram_need(&self, model: &str) -> Option<u64> {
        self.config
            .vram
            .iter()
            .find(|(m, _)| route::same_model(m, model))
            .map(|(_, b)| *b)
    }

    /// The ordered candidates for a request with these needs.
    /// The ordered candidates, each with why (for status and events).
    pub fn plan(&self, needs: &Needs) -> Plan {
        self.plan_explained(needs, Explain::Why)
    }

    /// The order alone, for a request on its way (no words to throw away).
    pub fn route(&self, needs: &Needs) -> Plan {
        self.plan_explained(needs, Explain::OrderOnly)
    }

    fn plan_explained(&self, needs: &Needs, explain: Explain) -> Plan {
        let nodes = self.nodes.borrow();
        let views: Vec<View> = self
            .candidates
            .iter()
            .map(|c| View {
                vram_bytes: nodes.get(&c.config.node).and_then(|n| n.max_vram()),
                ..c.view()
            })
            .collect();
        drop(nodes);
        let pin = self.pin();
        route::plan(
            &views,
            needs,
            pin.as_deref(),
            self.config.hold_down,
            Instant::now(),
            explain,
        )
    }

    /// Has the route recomputed now (after a pin, say).
    pub fn notify_changed(&self) {
        self.changed.notify_one();
    }

    pub fn endpoint_problem(&self) -> Option<String> {
        self.endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_endpoint_problem(&self, p: Option<String>) {
        *self.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    pub fn pin(&self) -> Option<String> {
        self.pin.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Pins to `node` (or unpins with `None`); the node must be a candidate.
    pub fn set_pin(&self, node: Option<&str>) -> Result<(), String> {
        if let Some(n) = node {
            if !self.candidates.iter().any(|c| c.config.node == n) {
                let known: Vec<&str> = self
                    .candidates
                    .iter()
                    .map(|c| c.config.node.as_str())
                    .collect();
                return Err(format!(
                    "{n} does not serve {} (candidates: {})",
                    self.config.name,
                    known.join(", ")
                ));
            }
        }
        *self.pin.lock().unwrap_or_else(|e| e.into_inner()) = node.map(str::to_string);
        // The route (and an on-demand peer's need) follow at once.
        self.changed.notify_one();
        Ok(())
    }
}

/// Starts the probers of every candidate of every service, and each service's
/// route watcher (its endpoint is started by the caller: `crate::proxy::serve`).
pub fn spawn(
    config: &crate::config::Config,
    tunnels: &dyn Fn(&str) -> Option<Arc<Tunnel>>,
    nodes: &watch::Receiver<NodeMap>,
    events: &EventBus,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Vec<Arc<ServiceHandle>> {
    let services = &config.services;
    // No keep-alive: an idle probe connection would hold an on-demand tunnel open.
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    services
        .iter()
        .map(|svc| {
            let changed = Arc::new(Notify::new());
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
                        postgres_role: None,
                    };
                    let handle = Arc::new(CandidateHandle {
                        service: svc.name.clone(),
                        config: c.clone(),
                        tunnel: c.tunnel.as_deref().and_then(tunnels),
                        state: watch::Sender::new(status),
                        in_flight: AtomicUsize::new(0),
                        ejection: Mutex::new(Ejection::default()),
                        summoned_until: Mutex::new(None),
                        recheck: Notify::new(),
                        service_changed: changed.clone(),
                        metrics: CandidateMetrics::default(),
                    });
                    let prober = Prober {
                        handle: handle.clone(),
                        service: svc.clone(),
                        tunnel: handle.tunnel.clone(),
                        http: http.clone(),
                        events: events.clone(),
                    };
                    let span = tracing::info_span!("probe", service = %svc.name, node = %c.node);
                    let probe_cancel = cancel.clone();
                    tracker.spawn(tracing::Instrument::instrument(
                        crate::task::restarting(
                            format!("the probe of {} on {}", svc.name, c.node),
                            events.clone(),
                            cancel.clone(),
                            move || prober.clone().run(probe_cancel.clone()),
                        ),
                        span,
                    ));
                    handle
                })
                .collect();
            let handle = Arc::new(ServiceHandle {
                config: svc.clone(),
                candidates,
                pin: Mutex::new(None),
                endpoint: Mutex::new(Some("starting".into())),
                changed: changed.clone(),
                route_changes: std::sync::atomic::AtomicU64::new(0),
                nodes: nodes.clone(),
            });
            let (h, ev, c) = (handle.clone(), events.clone(), cancel.clone());
            tracker.spawn(crate::task::restarting(
                format!("the route watcher of {}", svc.name),
                events.clone(),
                cancel.clone(),
                move || watch_route(h.clone(), changed.clone(), ev.clone(), c.clone()),
            ));
            handle
        })
        .collect()
}
