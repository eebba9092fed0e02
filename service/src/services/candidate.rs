//! One candidate (a node's instance of a service) at run time: its status as the
//! API shows it, its handle (the health watch, requests in flight, ejection,
//! being summoned, metrics) and the guard a request holds while it runs there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::config::Candidate;
use crate::health::HealthState;
use crate::kinds::{OllamaInfo, PgRole};
use crate::route::{Ejection, View};
use crate::tunnel::Tunnel;

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
    pub(super) state: watch::Sender<CandidateStatus>,
    /// Requests being served by this candidate now.
    pub in_flight: AtomicUsize,
    pub(super) ejection: Mutex<Ejection>,
    /// An on-demand candidate a request needed (a model, VRAM no reachable node
    /// has): connected until then, whatever the nodes above it do.
    pub(super) summoned_until: Mutex<Option<Instant>>,
    /// Traffic saw a failure: probe now, then quickly, instead of waiting.
    pub(super) recheck: Notify,
    /// Told of every change, so the service's route is recomputed at once.
    pub(super) service_changed: Arc<Notify>,
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

    pub(super) fn lock_ejection(&self) -> std::sync::MutexGuard<'_, Ejection> {
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
