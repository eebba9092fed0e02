//! The stable local endpoints: one listener per service on its configured loopback
//! port, HTTP (`http.rs`) for `ollama`/`http` services and TCP (`tcp.rs`) for
//! `postgres`/`tcp`. A port that cannot be bound is a visible state, retried with
//! backoff, with a message that says what to do.

pub mod http;
mod tcp;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::kinds::Endpoint;
use crate::services::ServiceHandle;
use crate::tunnel::Backoff;

/// What the endpoints share: `[limits]`, and the memory budget for the request
/// bodies they hold (permits of 1 KiB).
#[derive(Clone)]
pub struct Limits {
    pub idle: Duration,
    pub body_memory: u64,
    pub bodies: Arc<tokio::sync::Semaphore>,
}

impl Limits {
    pub fn new(config: &crate::config::LimitsConfig) -> Limits {
        let kib = usize::try_from(config.body_memory / 1024)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Limits {
            idle: config.idle,
            body_memory: config.body_memory,
            bodies: Arc::new(tokio::sync::Semaphore::new(kib)),
        }
    }
}

/// Binds the service's endpoint (retrying while the port is taken) and serves it
/// until `cancel`. `starting` is dropped after the first attempt to bind.
pub async fn serve(
    service: Arc<ServiceHandle>,
    limits: Limits,
    starting: crate::startup::Pending,
    cancel: CancellationToken,
) {
    let mut starting = Some(starting);
    let addr = service.config.listen;
    let mut backoff = Backoff::new(crate::config::Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(10),
    });
    let listener = loop {
        match crate::door::bind(addr) {
            Ok(l) => break l,
            Err(e) => {
                let why = bind_problem(&service, &e);
                if service.endpoint_problem().as_deref() != Some(why.as_str()) {
                    tracing::error!(service = %service.config.name, "{why}");
                }
                service.set_endpoint_problem(Some(why));
            }
        }
        starting.take();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    };
    service.set_endpoint_problem(None);
    drop(starting);
    tracing::info!(service = %service.config.name, "endpoint listening on {addr}");
    match crate::kinds::of(service.config.kind).endpoint() {
        Endpoint::Http => {
            http::Endpoint::new(service.clone(), limits)
                .serve(listener, cancel)
                .await
        }
        Endpoint::Tcp | Endpoint::Postgres => tcp::serve(listener, service, cancel).await,
    }
}

fn bind_problem(service: &ServiceHandle, e: &std::io::Error) -> String {
    let (name, addr) = (&service.config.name, service.config.listen);
    if e.kind() != std::io::ErrorKind::AddrInUse {
        return format!("cannot listen on {addr} for {name}: {e}");
    }
    let hint = crate::kinds::of(service.config.kind).port_taken_hint(addr);
    format!("cannot listen on {addr} for {name}: address already in use; {hint}")
}
