//! The HTTP endpoint of an `ollama` or `http` service: a reverse proxy that sends
//! each request to the best candidate and streams the answer back unbuffered.
//!
//! The request body is buffered (bounded) so that, while no byte of the answer has
//! reached the client, a failed attempt is retried on the next candidate — a
//! different node each time: connect errors, a connection closed with no answer,
//! 502/503/504, 429, and Ollama's 404 "model not found". After the first byte a
//! failure cannot be hidden: a streaming (NDJSON) answer ends with Ollama's own
//! `{"error": …}` line — never a made-up `done: true` — and anything else is cut.
//! A client that goes away drops the upstream request at once.
//!
//! `headers.rs`: which headers go on; `retry.rs`: when an attempt runs again;
//! `relay.rs`: the answer on its way back.
//!
//! Longer than most files on purpose: `handle` is one request's whole life (read,
//! route, attempt, retry, answer).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::upstream::{Lease, SendError, Upstream};

mod headers;
mod relay;
mod retry;

use crate::route::Needs;
use crate::services::{RequestGuard, ServiceHandle};
pub(crate) use headers::strip_hop_by_hop;
use headers::{forward_headers, host_refusal};
use relay::Relay;
pub use retry::{retry_rule, Failure};

/// The largest request body buffered for retries (prompts with images included).
pub const MAX_BODY: usize = crate::config::MAX_REQUEST_BODY as usize;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Until the answer starts: a model load can take minutes.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(600);
/// An answer's head taking longer than this through a tunnel makes the tunnel's
/// session prove it is alive.
pub const PROOF_AFTER: Duration = Duration::from_secs(1);
/// Between two chunks of a streaming answer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The response header that names the node that served the request.
pub const NODE_HEADER: &str = "x-robbie-node";
/// When other nodes were tried first: which, and why they failed.
pub const TRIED_HEADER: &str = "x-robbie-tried";

#[derive(Clone)]
pub struct Endpoint {
    pub service: Arc<ServiceHandle>,
    /// Keep-alive connections, one pool per candidate (same order).
    upstreams: Arc<[Arc<Upstream>]>,
    limits: super::Limits,
}

impl Endpoint {
    pub fn new(service: Arc<ServiceHandle>, limits: super::Limits) -> Endpoint {
        let upstreams = service
            .candidates
            .iter()
            .map(|c| {
                // An on-demand peer must be free to go: nothing of it is kept warm.
                let warm = c.tunnel.as_ref().is_none_or(|t| !t.demand.on_demand);
                Arc::new(Upstream::new(
                    c.config.address.clone(),
                    CONNECT_TIMEOUT,
                    warm,
                ))
            })
            .collect();
        Endpoint {
            service,
            upstreams,
            limits,
        }
    }

    /// Serves HTTP/1.1 on `listener` until `cancel`; then gives open connections
    /// a moment to finish their answers.
    pub async fn serve(self, listener: TcpListener, cancel: CancellationToken) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let http = crate::door::http1(self.limits.idle);
        let door = crate::door::Door::http(format!("endpoint {}", self.service.config.name));
        // Idle upstream connections go after a while (they keep on-demand tunnels open).
        let sweeper = {
            let upstreams = self.upstreams.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                while cancel.run_until_cancelled(every.tick()).await.is_some() {
                    upstreams.iter().for_each(|u| u.sweep());
                }
            })
        };
        loop {
            let (stream, ticket) = tokio::select! {
                () = cancel.cancelled() => break,
                (stream, _, ticket) = door.accept(&listener) => (stream, ticket),
            };
            let _ = stream.set_nodelay(true);
            let ep = self.clone();
            let activity = ticket.activity();
            let svc = hyper::service::service_fn(move |req| {
                let ep = ep.clone();
                let busy = activity.busy();
                async move {
                    let resp = handle(ep, req).await;
                    Ok::<_, std::convert::Infallible>(crate::door::HeldBody::wrap(resp, busy))
                }
            });
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
            tokio::spawn(crate::door::serve_until_closed(conn, ticket));
        }
        drop(listener);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
        sweeper.abort();
    }
}

/// How long answers still streaming at shutdown may go on.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Ollama's error shape, which its clients show to the user.
fn ollama_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": msg.into() })),
    )
        .into_response()
}

/// The `model` a request asks for, from its JSON body.
fn requested_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithModel {
        model: Option<String>,
        name: Option<String>,
    }
    let m: WithModel = serde_json::from_slice(body).ok()?;
    m.model.or(m.name).filter(|s| !s.is_empty())
}

/// Why a request body could not be buffered.
enum BodyError {
    TooLarge,
    Busy,
    Slow,
    Broken(String),
}

/// The request body, buffered for retries: at most [`MAX_BODY`], with no pause
/// longer than `[limits] idle`, and within the endpoints' shared memory budget
/// (the permit is held until the request is done).
async fn read_body(
    body: Incoming,
    declared: Option<u64>,
    limits: &super::Limits,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), BodyError> {
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BodyError::TooLarge);
    }
    // Permits are KiB; a declared length is reserved up front, a chunked body
    // as it arrives. Over the budget, the rest of the body is read and thrown
    // away before the 503: a client still sending would otherwise see a broken
    // connection instead of the answer.
    let kib = |n: usize| u32::try_from(n.div_ceil(1024)).unwrap_or(u32::MAX);
    let mut permit = match declared {
        Some(n) if n > 0 => limits
            .bodies
            .clone()
            .try_acquire_many_owned(kib(n as usize))
            .ok(),
        _ => None,
    };
    let mut busy = declared.is_some_and(|n| n > 0) && permit.is_none();
    let mut held = if busy {
        0
    } else {
        declared.unwrap_or(0) as usize
    };
    // A declared length is allocated once (growing by doubling would hold up
    // to twice the body).
    let mut buf = bytes::BytesMut::with_capacity(if busy { 0 } else { held });
    let mut received = 0usize;
    let mut body = std::pin::pin!(body);
    loop {
        let frame = match tokio::time::timeout(limits.idle, body.as_mut().frame()).await {
            Err(_) => return Err(BodyError::Slow),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Broken(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len();
        if received > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        if busy {
            continue;
        }
        buf.extend_from_slice(&data);
        if buf.len() > held {
            let more = kib(buf.len() - held + 64 * 1024);
            match limits.bodies.clone().try_acquire_many_owned(more) {
                Ok(p) => {
                    held += more as usize * 1024;
                    match &mut permit {
                        Some(have) => have.merge(p),
                        None => permit = Some(p),
                    }
                }
                Err(_) => {
                    busy = true;
                    permit = None;
                    buf = bytes::BytesMut::new();
                }
            }
        }
    }
    if busy {
        return Err(BodyError::Busy);
    }
    Ok((buf.freeze(), permit))
}

async fn handle(ep: Endpoint, req: hyper::Request<Incoming>) -> Response {
    if let Some(why) = host_refusal(&ep.service.config, req.headers()) {
        return ollama_error(StatusCode::FORBIDDEN, why);
    }
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (body, _budget) = match read_body(body, declared, &ep.limits).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            let mut r = ollama_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over {} MiB, the most an endpoint takes",
                    MAX_BODY >> 20
                ),
            );
            // The rest of the body is not read: the connection ends with this answer.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        Err(BodyError::Busy) => {
            let mut r = ollama_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} MiB of request bodies are already being held ([limits] body_memory); try again in a moment",
                    ep.limits.body_memory >> 20
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return r;
        }
        Err(BodyError::Slow) => {
            return ollama_error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body paused for over {:?} ([limits] idle)",
                    ep.limits.idle
                ),
            )
        }
        Err(BodyError::Broken(e)) => {
            return ollama_error(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
        }
    };
    let model = requested_model(&body);
    let vram_bytes = model.as_deref().and_then(|m| ep.service.vram_need(m));
    let needs = Needs { model, vram_bytes };
    // Only an on-demand node (RunPod's big GPU, say) may have what this asks for:
    // connect it and wait for it, rather than trying nodes that cannot serve it.
    if ep.service.summon_for(&needs) {
        ep.service.wait_for_fit(&needs).await;
    }
    let plan = ep.service.route(&needs);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let forwarded = forward_headers(&parts.headers);
    let mut failures = Vec::new();
    let attempts = plan.order.len();
    for (k, choice) in plan.order.iter().enumerate() {
        let cand = &ep.service.candidates[choice.index];
        let last = k + 1 == attempts;
        let mut up = hyper::Request::new(Full::new(body.clone()));
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = Uri::from(path.clone());
        *up.headers_mut() = forwarded.clone();
        let in_flight = cand.begin_request();
        let started = std::time::Instant::now();
        let upstream = &ep.upstreams[choice.index];
        let answer = first_byte(cand, upstream.send(up)).await;
        let (resp, lease) = match answer {
            Some(Ok(answer)) => answer,
            Some(Err(e)) => {
                cand.request_failed();
                let what = Failure::from(&e);
                let (retry, rule) = retry_rule(&ep.service.config, &parts.method, what);
                failures.push(format!("{}: {} ({rule})", choice.node, transport_error(&e)));
                if retry && !last {
                    continue;
                }
                return not_retried(&ep, &failures);
            }
            None => {
                // Alive (its session proved itself every second) but not done:
                // running it elsewhere too could run it twice.
                cand.request_failed();
                failures.push(format!(
                    "{}: no answer within {FIRST_BYTE_TIMEOUT:?} ({})",
                    choice.node,
                    retry_rule(&ep.service.config, &parts.method, Failure::Timeout).1
                ));
                return not_retried(&ep, &failures);
            }
        };
        let status = resp.status();
        if status.is_server_error() {
            cand.request_failed();
        } else {
            cand.request_succeeded(started.elapsed());
        }
        if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
            let (retry, rule) = retry_rule(
                &ep.service.config,
                &parts.method,
                Failure::Status(status.as_u16()),
            );
            failures.push(format!("{}: HTTP {status} ({rule})", choice.node));
            if retry && !last {
                continue;
            }
        }
        // Ollama's 404 for a model this node lacks: another node may have it.
        if status == StatusCode::NOT_FOUND && !last && needs.model.is_some() {
            let (head, body) = resp.into_parts();
            let text = match body.collect().await {
                Ok(b) => {
                    lease.release();
                    b.to_bytes()
                }
                Err(_) => Bytes::new(),
            };
            if String::from_utf8_lossy(&text).contains("not found") {
                failures.push(format!("{}: model not found", choice.node));
                continue;
            }
            return respond(
                hyper::Response::from_parts(head, Full::new(text).map_err(|e| match e {}).boxed()),
                &choice.node,
                &failures,
                in_flight,
                None,
            );
        }
        if k > 0 {
            tracing::info!(service = %ep.service.config.name, "served by {} after: {}", choice.node, failures.join("; "));
        }
        return respond(
            resp.map(|b| b.boxed()),
            &choice.node,
            &failures,
            in_flight,
            Some(lease),
        );
    }
    let why = if failures.is_empty() {
        "no candidate is configured".to_string()
    } else {
        failures.join("; ")
    };
    ollama_error(
        StatusCode::BAD_GATEWAY,
        format!("no node could serve {}: {why}", ep.service.config.name),
    )
}

/// Waits for the answer's head (up to `FIRST_BYTE_TIMEOUT`: a model load can take
/// minutes; `None` past it). Through a tunnel, every `PROOF_AFTER` of waiting asks
/// the SSH session to prove it is alive (one ping at a time per session, however
/// many requests wait): a node that vanished is found within about a second more,
/// its connections fail, and the request goes to the next node; a slow but living
/// node keeps its request.
async fn first_byte<F: std::future::Future>(
    cand: &crate::services::CandidateHandle,
    send: F,
) -> Option<F::Output> {
    let Some(tunnel) = &cand.tunnel else {
        return tokio::time::timeout(FIRST_BYTE_TIMEOUT, send).await.ok();
    };
    let deadline = tokio::time::Instant::now() + FIRST_BYTE_TIMEOUT;
    tokio::pin!(send);
    loop {
        tokio::select! {
            r = &mut send => return Some(r),
            () = tokio::time::sleep(PROOF_AFTER) => {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tunnel.demand_proof();
            }
        }
    }
}

/// The answer when a failed attempt may not run elsewhere: 502 (504 after the
/// first-byte timeout) with every attempt and its rule.
fn not_retried(ep: &Endpoint, failures: &[String]) -> Response {
    let timed_out = failures
        .last()
        .is_some_and(|f| f.contains("no answer within"));
    let mut r = ollama_error(
        if timed_out {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        },
        format!("{} failed: {}", ep.service.config.name, failures.join("; ")),
    );
    if let Ok(v) = HeaderValue::from_str(&failures.join("; ")) {
        r.headers_mut().insert(TRIED_HEADER, v);
    }
    r
}

fn transport_error(e: &SendError) -> String {
    match e {
        SendError::Connect(_) => e.to_string(),
        // Through a -L tunnel whose far end is down, the connection closes unanswered.
        SendError::Exchange(e) if e.is_incomplete_message() || e.is_closed() || e.is_canceled() => {
            "connection closed without an answer".into()
        }
        SendError::Exchange(e) => format!("bad answer: {e}"),
    }
}

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Streams the upstream answer back, chunk by chunk, naming the node.
fn respond(
    resp: hyper::Response<UpstreamBody>,
    node: &str,
    tried: &[String],
    in_flight: RequestGuard,
    lease: Option<Lease>,
) -> Response {
    let (mut head, body) = resp.into_parts();
    strip_hop_by_hop(&mut head.headers);
    if let Ok(v) = HeaderValue::from_str(node) {
        head.headers.insert(NODE_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&tried.join("; "))
        .map_err(drop)
        .and_then(|v| (!tried.is_empty()).then_some(v).ok_or(()))
    {
        head.headers.insert(TRIED_HEADER, v);
    }
    // An error line can be appended only to a chunked NDJSON stream.
    let ndjson = !head.headers.contains_key(header::CONTENT_LENGTH)
        && head
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/x-ndjson"));
    let body = Relay {
        inner: body,
        idle: None,
        ndjson,
        node: node.to_string(),
        in_flight: Some(in_flight),
        lease,
    };
    Response::from_parts(head, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::{requested_model, retry_rule, Failure};
    use axum::http::Method;

    fn service(kind: &str, opt_in: bool) -> crate::config::ServiceConfig {
        let text = format!(
            "node = \"book\"\n[[service]]\nname = \"s\"\nkind = \"{kind}\"\nlisten = \"127.0.0.1:18001\"\n\
             retry_non_idempotent = {opt_in}\ncandidates = [{{ node = \"book\", address = \"127.0.0.1:18002\" }}]\n"
        );
        let cfg = crate::config::parse(&text, "t.toml").expect("config");
        cfg.services.into_iter().next().expect("service")
    }

    #[test]
    fn a_request_runs_again_only_where_running_twice_is_harmless() {
        let (ollama, http, opted) = (
            service("ollama", false),
            service("http", false),
            service("http", true),
        );
        let retried = |svc, m: Method, f| retry_rule(svc, &m, f).0;
        // Never after the first-byte timeout: the node is alive.
        assert!(!retried(&ollama, Method::POST, Failure::Timeout));
        assert!(!retried(&http, Method::GET, Failure::Timeout));
        // Never reached, or refused: always.
        for svc in [&ollama, &http] {
            assert!(retried(svc, Method::POST, Failure::Connect));
            assert!(retried(svc, Method::POST, Failure::Status(503)));
            assert!(retried(svc, Method::POST, Failure::Status(429)));
        }
        // May have run: Ollama yes, idempotent yes, a POST to an http service only if opted in.
        for f in [
            Failure::Unanswered,
            Failure::Status(502),
            Failure::Status(504),
        ] {
            assert!(retried(&ollama, Method::POST, f));
            assert!(retried(&http, Method::GET, f));
            assert!(retried(&http, Method::PUT, f));
            assert!(!retried(&http, Method::POST, f));
            assert!(!retried(&http, Method::PATCH, f));
            assert!(retried(&opted, Method::POST, f));
        }
        let (_, rule) = retry_rule(&http, &Method::POST, Failure::Unanswered);
        assert!(
            rule.starts_with("not retried: a POST may already have run"),
            "{rule}"
        );
    }

    #[test]
    fn model_from_ollama_requests() {
        assert_eq!(
            requested_model(br#"{"model":"llama3.2","prompt":"hi"}"#).as_deref(),
            Some("llama3.2")
        );
        assert_eq!(
            requested_model(br#"{"name":"llama3.2"}"#).as_deref(),
            Some("llama3.2")
        );
        assert_eq!(requested_model(b"not json"), None);
        assert_eq!(requested_model(br#"{"model":""}"#), None);
    }
}
