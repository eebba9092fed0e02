//! The configured services at run time: one prober task per candidate (a node's
//! instance of a service), each publishing its layered health on a `watch` channel.
//!
//! Layers (ARCHITECTURE.md, "Liveness and failover"): a candidate behind a `-L` tunnel is offline at once
//! while that tunnel's SSH session is not up (with the tunnel's reason); otherwise
//! its service probe decides, through the rise/fall hysteresis of `health`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Candidate, ServiceConfig};
use crate::events::{EventBus, EventKind};
use crate::health::{HealthState, Observation};
use crate::kinds::{self, OllamaInfo, OllamaWants, PgRole};
use crate::nodes::NodeMap;
use crate::route::{self, Ejection, Explain, Needs, Plan, View};
use crate::tunnel::Tunnel;

/// Installed models change rarely; loaded models and VRAM change often.
const TAGS_EVERY: Duration = Duration::from_secs(30);
const PS_EVERY: Duration = Duration::from_secs(5);
/// Probe interval after a request through the candidate failed.
const RECHECK: Duration = Duration::from_millis(500);

/// One candidate as the API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CandidateStatus {
    pub node: String,
    pub address: String,
    pub tunnel: Option<String>,
    #[serde(flatten)]
    pub health: HealthState,
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ollama: Option<OllamaInfo>,
    /// PostgreSQL: primary (read-write) or replica (read-only), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_role: Option<PgRole>,
}

pub struct CandidateHandle {
    pub service: String,
    pub config: Candidate,
    /// The `-L` tunnel it is reached through, if any.
    pub tunnel: Option<Arc<Tunnel>>,
    state: watch::Sender<CandidateStatus>,
    /// Requests being served by this candidate now.
    pub in_flight: AtomicUsize,
    ejection: Mutex<Ejection>,
    /// An on-demand candidate a request needed (a model, VRAM no reachable node
    /// has): connected until then, whatever the nodes above it do.
    summoned_until: Mutex<Option<Instant>>,
    /// Traffic saw a failure: probe now, then quickly, instead of waiting.
    recheck: Notify,
    /// Told of every change, so the service's route is recomputed at once.
    service_changed: Arc<Notify>,
    pub metrics: CandidateMetrics,
}

/// Request counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CandidateMetrics {
    pub requests_ok: std::sync::atomic::AtomicU64,
    pub requests_failed: std::sync::atomic::AtomicU64,
    /// Time to the answer's head, summed, in microseconds.
    pub answer_micros: std::sync::atomic::AtomicU64,
}

impl CandidateHandle {
    pub fn status(&self) -> CandidateStatus {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<CandidateStatus> {
        self.state.subscribe()
    }

    /// What the router needs to know of it now.
    pub fn view(&self) -> View {
        let (ejected_until, ejections) = {
            let e = self.lock_ejection();
            (e.until, e.ejections())
        };
        let s = self.state.borrow();
        View {
            node: self.config.node.clone(),
            health: s.health.health,
            health_reason: s.health.reason.clone(),
            recovered_at: s.health.recovered_at,
            models: s
                .ollama
                .as_ref()
                .filter(|o| !o.models.is_empty())
                .map(|o| o.models.clone()),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            ejected_until,
            ejections,
            vram_bytes: None,
            read_only: s.postgres_role.map(|r| r == PgRole::Replica),
            priority: Some(self.config.priority),
        }
    }

    /// Counts a request in flight on this candidate (and its tunnel) while the guard lives.
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = &self.tunnel {
            t.counters
                .requests_in_flight
                .fetch_add(1, Ordering::Relaxed);
        }
        RequestGuard(self.clone())
    }

    /// A request through this candidate failed (transport error, 5xx): count it
    /// toward ejection and have the prober look at once.
    pub fn request_failed(&self) {
        self.metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.lock_ejection().failure(Instant::now()) {
            let length = e.until - Instant::now();
            if e.nth > 1 {
                tracing::warn!(service = %self.service, node = %self.config.node, "ejected for {length:?} after repeated errors: flapping (ejection {} in a row, each soon after it came back)", e.nth);
            } else {
                tracing::warn!(service = %self.service, node = %self.config.node, "ejected for {length:?} after repeated errors");
            }
        }
        self.recheck.notify_one();
    }

    /// A request got an answer from this candidate after `took`.
    pub fn request_succeeded(&self, took: Duration) {
        self.metrics.requests_ok.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .answer_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.lock_ejection().success();
    }

    fn lock_ejection(&self) -> std::sync::MutexGuard<'_, Ejection> {
        self.ejection.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request in flight on a candidate; see [`CandidateHandle::begin_request`].
pub struct RequestGuard(Arc<CandidateHandle>);

impl RequestGuard {
    pub fn candidate(&self) -> &CandidateHandle {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(t) = &self.0.tunnel {
            t.counters
                .requests_in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

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

#[derive(Clone)]
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

/// Follows the service's current route (where a request naming no model goes) and
/// turns every change into an event with its reason. Runs on every candidate change
/// and every second (a hold-down ends with no change to observe).
async fn watch_route(
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
