//! What differs between the kinds of service (`kind = "…"` in the config): one
//! module each, implementing [`Kind`], and [`of`], the one place that maps a
//! [`ServiceKind`] to its module (an exhaustive match: a new kind does not
//! compile until it is here).
//!
//! A kind decides how its candidates are probed (through a `-L` forward the local
//! connect always succeeds, so only a service's own answer says it is alive),
//! what its endpoint speaks, what to tell a user whose port is taken, which
//! secret its probe logs in with, and whether a failed request may be retried
//! elsewhere whatever its method. Everything else (health hysteresis, routing,
//! the endpoints themselves) is the same for every kind.
//!
//! Adding a kind: a module here implementing [`Kind`], its line in the
//! `service_kinds!` list (`config/mod.rs`), its arm in [`of`], and a line in the
//! README.

mod http;
mod ollama;
mod postgres;
mod tcp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

pub use ollama::{vram_shortfall, LoadedModel, OllamaInfo, OllamaUpdate, OllamaWants};
pub use postgres::PgRole;

use crate::config::{HostPort, ProbeConfig, ServiceKind};
use crate::health::Observation;

/// A kind's behaviour.
pub trait Kind: Send + Sync + 'static {
    /// What the service's local endpoint speaks.
    fn endpoint(&self) -> Endpoint;

    /// One check of one candidate (the caller bounds it by the probe timeout).
    fn check<'a>(&'a self, p: &'a Probe<'a>) -> BoxFuture<'a, Checked>;

    /// What to do when the endpoint's port is taken by something else.
    fn port_taken_hint(&self, listen: SocketAddr) -> String {
        format!(
            "stop what holds it (`ss -ltnp 'sport = :{}'` shows it) or change `listen`",
            listen.port()
        )
    }

    /// The secret the probe logs in with, read once when probing starts (a
    /// blocking keychain call: run it off the async threads).
    fn probe_secret(&self, _service: &str) -> Option<String> {
        None
    }

    /// Set when any failed request may be retried on another node whatever its
    /// method (requests without side effects): the note the log gives.
    fn retry_note(&self) -> Option<&'static str> {
        None
    }
}

/// The module of a kind.
pub fn of(kind: ServiceKind) -> &'static dyn Kind {
    match kind {
        ServiceKind::Ollama => &ollama::Ollama,
        ServiceKind::Http => &http::Http,
        ServiceKind::Postgres => &postgres::Postgres,
        ServiceKind::Tcp => &tcp::Tcp,
    }
}

/// The local endpoints `crate::proxy` has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// An HTTP reverse proxy: routes each request.
    Http,
    /// Bytes both ways: routes each connection.
    Tcp,
    /// A TCP endpoint that speaks enough PostgreSQL to refuse a client with a
    /// real error and to move sessions off a replica when a primary is back.
    Postgres,
}

/// What one probe gets to work with.
pub struct Probe<'a> {
    pub addr: &'a HostPort,
    pub cfg: &'a ProbeConfig,
    pub http: &'a reqwest::Client,
    /// Ollama: which lists to refresh.
    pub ollama: OllamaWants,
    /// From [`Kind::probe_secret`].
    pub secret: Option<&'a str>,
}

/// What a check saw, and what it learnt on the way.
#[derive(Debug)]
pub struct Checked {
    pub observation: Observation,
    /// Ollama: what changed (lists not refreshed are `None` inside).
    pub ollama: Option<OllamaUpdate>,
    /// PostgreSQL: the server's role, when the probe could log in.
    pub postgres: Option<PgRole>,
}

impl Default for Checked {
    fn default() -> Self {
        Checked {
            observation: Observation::Ok,
            ollama: None,
            postgres: None,
        }
    }
}

pub struct Outcome {
    pub observation: Observation,
    pub latency: Duration,
    /// Ollama only: what changed (lists not refreshed are `None` inside).
    pub ollama: Option<OllamaUpdate>,
    /// PostgreSQL only: the server's role, when the probe could log in.
    pub postgres: Option<PgRole>,
}

/// One probe of one candidate by its kind, within the probe's timeout; up but
/// slower than half the timeout is degraded.
pub async fn probe(kind: ServiceKind, p: &Probe<'_>) -> Outcome {
    let start = Instant::now();
    let timeout = p.cfg.timeout;
    let checked = match tokio::time::timeout(timeout, of(kind).check(p)).await {
        Ok(c) => c,
        Err(_) => Checked {
            observation: Observation::Failed(format!("no answer within {timeout:?}")),
            ..Checked::default()
        },
    };
    let latency = checked
        .ollama
        .as_ref()
        .and_then(|u| u.light_latency)
        .unwrap_or_else(|| start.elapsed());
    let observation = match checked.observation {
        Observation::Ok if latency > timeout / 2 => {
            Observation::Degraded(format!("slow: answered in {} ms", latency.as_millis()))
        }
        o => o,
    };
    Outcome {
        observation,
        latency,
        ollama: checked.ollama,
        postgres: checked.postgres,
    }
}

/// GET a URL: the observation its status means, and the body of a 2xx.
async fn http_get(
    http: &reqwest::Client,
    url: &str,
) -> Result<(Observation, Option<bytes::Bytes>), String> {
    let resp = http.get(url).send().await.map_err(describe)?;
    let status = resp.status();
    match status.as_u16() {
        200..=299 => {
            let body = resp
                .bytes()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            Ok((Observation::Ok, Some(body)))
        }
        429 | 503 => Ok((Observation::Degraded(format!("busy: HTTP {status}")), None)),
        _ => Ok((Observation::Failed(format!("HTTP {status}")), None)),
    }
}

fn describe(e: reqwest::Error) -> String {
    if e.is_connect() {
        "connection refused".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        // Through a -L tunnel whose far end is down, the connection closes at once.
        format!("no HTTP answer ({})", e.without_url())
    }
}
