//! The loopback HTTP API (axum): health, tunnels and their controls. The CLI, the
//! tray app and the dashboard are its clients; it is never reachable off the machine
//! (the config only accepts loopback addresses).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ServiceKind;
use crate::inventory::NodeInventory;
use crate::nodes::NodeMap;
use crate::route::{Needs, Plan};
use crate::service::Service;
use crate::services::CandidateStatus;
use crate::tunnel::TunnelStatus;

#[derive(Debug, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub node: String,
    pub version: String,
    /// `local-only` when no peer is configured, else `mesh`.
    pub mode: String,
    pub config: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TunnelList {
    pub node: String,
    pub tunnels: Vec<TunnelStatus>,
}

/// `GET /v1/status`: everything a user or the tray needs in one answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub mode: String,
    pub inventory: Option<NodeInventory>,
    /// Every node of the mesh this node knows, with its hardware.
    pub nodes: NodeMap,
    pub tunnels: Vec<TunnelStatus>,
    pub services: Vec<ServiceStatus>,
    pub store: StoreStatus,
    /// Tasks that failed of a bug and were started again (newest last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal_errors: Vec<crate::task::InternalError>,
}

/// The local store and its sync.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoreStatus {
    pub path: String,
    /// Why the store is not open, if it is not.
    pub error: Option<String>,
    pub sync: crate::store::sync::SyncStatus,
    pub replica: Option<crate::store::replica::ReplicaStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub kind: ServiceKind,
    pub listen: String,
    /// "listening", or why the endpoint is not.
    pub endpoint: String,
    /// The node a request (with no model named) goes to now.
    pub route: Option<String>,
    pub pinned: Option<String>,
    /// The ordered candidates and why, and those left out.
    pub plan: Plan,
    /// In priority order.
    pub candidates: Vec<CandidateStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReconnectReply {
    pub peer: String,
    /// Every tunnel of that peer: they share its SSH session.
    pub tunnels: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PinRequest {
    pub node: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PinReply {
    pub service: String,
    pub pinned: Option<String>,
    /// Where requests go now.
    pub route: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

pub fn router(service: Service) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/tunnels", get(tunnels))
        .route("/v1/node", get(node))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .route("/v1/tunnels/{name}/reconnect", post(reconnect))
        .route("/v1/services/{name}/pin", post(pin).delete(unpin))
        .merge(crate::store::api::routes())
        .merge(crate::ui::routes())
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see GET /v1/tunnels",
            )
        })
        .route("/v1/auth/link", post(sign_in_link))
        .route("/login", get(login))
        .layer(axum::middleware::from_fn_with_state(service.clone(), guard))
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            loopback_only,
        ))
        .with_state(service)
}

/// Listening on loopback is not enough against a web page in a local browser: a
/// page can send requests to 127.0.0.1 (CSRF) or rebind its own name to it (DNS
/// rebinding). Refuse a `Host` that is not exactly one loopback name, and, on
/// anything that changes state, an `Origin` that is not this API's own
/// (`http://` a loopback name and this API's port): another local web app on
/// another port is another origin.
async fn loopback_only(
    State(s): State<Service>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match refusal(req.headers(), req.method(), s.config.api.listen.port()) {
        Some(why) => error(StatusCode::FORBIDDEN, why),
        None => next.run(req).await,
    }
}

/// The API token (`crate::access`): conversation calls and every call that
/// changes something need it, as a bearer token (the CLI, the tray) or a
/// browser's session cookie (whose state-changing calls must carry the API's
/// own `Origin`, checked by [`loopback_only`]).
async fn guard(
    State(s): State<Service>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::access::Proof;
    let method = req.method().clone();
    if !crate::access::needs_token(&method, req.uri().path()) {
        return next.run(req).await;
    }
    match s.access.proof(req.headers()) {
        Proof::Bearer => next.run(req).await,
        Proof::Cookie
            if method != axum::http::Method::GET
                && method != axum::http::Method::HEAD
                && !req.headers().contains_key(axum::http::header::ORIGIN) =>
        {
            error(
                StatusCode::FORBIDDEN,
                "a browser's call that changes something must carry its Origin",
            )
        }
        Proof::Cookie => next.run(req).await,
        Proof::None => {
            let mut r = error(StatusCode::UNAUTHORIZED, s.access.missing());
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"robbie-mesh\""),
            );
            r
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SignInLink {
    /// Opens the dashboard signed in; good once, for two minutes.
    pub url: String,
}

/// `POST /v1/auth/link`: a one-time link that signs a browser in.
async fn sign_in_link(State(s): State<Service>) -> Json<SignInLink> {
    let code = s.access.new_code();
    Json(SignInLink {
        url: format!("http://{}/login?code={code}", s.config.api.listen),
    })
}

#[derive(Deserialize)]
struct LoginQuery {
    code: Option<String>,
}

/// `GET /login?code=…`: the browser gets its session cookie and the dashboard.
async fn login(
    State(s): State<Service>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    match q.code.as_deref().and_then(|c| s.access.redeem(c)) {
        Some(cookie) => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            let h = r.headers_mut();
            h.insert(
                axum::http::header::LOCATION,
                axum::http::HeaderValue::from_static("/"),
            );
            if let Ok(v) = axum::http::HeaderValue::from_str(&cookie) {
                h.insert(axum::http::header::SET_COOKIE, v);
            }
            h.insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            r
        }
        None => error(
            StatusCode::FORBIDDEN,
            "this sign-in link was used already or has expired (they are good once, for two minutes): run `robbie-mesh dashboard` again",
        ),
    }
}

fn refusal(
    headers: &axum::http::HeaderMap,
    method: &axum::http::Method,
    port: u16,
) -> Option<String> {
    // Exactly one, readable: a duplicated or garbled header must not let a
    // request through that a clean one would not.
    let one = |name: axum::http::HeaderName| -> Result<Option<&str>, String> {
        let mut all = headers.get_all(&name).iter();
        match (all.next(), all.next()) {
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(format!("more than one {name} header")),
            (Some(v), None) => v
                .to_str()
                .map(Some)
                .map_err(|_| format!("the {name} header is not readable text")),
        }
    };
    let host = match one(axum::http::header::HOST) {
        Ok(Some(h)) => h,
        Ok(None) => return Some("a request needs a Host header".into()),
        Err(why) => return Some(why),
    };
    if !is_loopback_authority(host) {
        return Some(format!(
            "Host `{}` is not a loopback address",
            crate::config::cut(host)
        ));
    }
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        match one(axum::http::header::ORIGIN) {
            Err(why) => return Some(why),
            Ok(Some(origin)) if !is_own_origin(origin, port) => {
                return Some(format!(
                    "requests from origin `{}` are refused (only this API's own page, http://127.0.0.1:{port}, may change things)",
                    crate::config::cut(origin)
                ));
            }
            Ok(_) => {}
        }
    }
    None
}

/// `http://` + a loopback name + exactly this API's port.
fn is_own_origin(origin: &str, port: u16) -> bool {
    let Some(authority) = origin.strip_prefix("http://") else {
        return false;
    };
    let Some((_, p)) = authority.rsplit_once(':') else {
        return false;
    };
    p.parse::<u16>().ok() == Some(port) && is_loopback_authority(authority)
}

/// `127.0.0.1:8007`, `localhost:8007`, `[::1]:8007` (port optional).
pub(crate) fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Serves until `shutdown` is cancelled, through the API's own door (its share
/// of connections, the idle timeout: `crate::door`).
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let http = crate::door::http1(service.config.limits.idle);
    let door = crate::door::Door::api();
    let app = hyper_util::service::TowerToHyperService::new(router(service));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, ticket) = tokio::select! {
            () = shutdown.cancelled() => break,
            (stream, _, ticket) = door.accept(&listener) => (stream, ticket),
        };
        let _ = stream.set_nodelay(true);
        let (app, activity) = (app.clone(), ticket.activity());
        let svc = hyper::service::service_fn(move |req| {
            use hyper::service::Service as _;
            let busy = activity.busy();
            let call = app.call(req);
            async move {
                let resp = call.await?;
                Ok::<_, std::convert::Infallible>(crate::door::HeldBody::wrap(resp, busy))
            }
        });
        let conn = graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc));
        tokio::spawn(crate::door::serve_until_closed(conn, ticket));
    }
    drop(listener);
    // Requests still running at shutdown (an event stream never ends by itself)
    // get a moment, then go.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), graceful.shutdown()).await;
    Ok(())
}

async fn health(State(s): State<Service>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        node: s.config.node.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        mode: if s.is_local_only() {
            "local-only".into()
        } else {
            "mesh".into()
        },
        config: s.config.source.as_ref().map(|p| p.display().to_string()),
    })
}

/// This node's hardware; waits (briefly) for the detection that runs at start-up.
async fn node(State(s): State<Service>) -> Response {
    let mut rx = s.nodes.clone();
    let me = s.config.node.clone();
    let ready = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        rx.wait_for(|m| m.get(&me).is_some_and(|e| e.inventory.is_some())),
    )
    .await;
    match ready {
        Ok(Ok(map)) => Json(map.get(&me).and_then(|e| e.inventory.clone())).into_response(),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "still detecting this node's hardware; try again in a moment",
        ),
    }
}

async fn status(State(s): State<Service>) -> Json<Status> {
    let services = s
        .services
        .iter()
        .map(|svc| {
            let plan = svc.plan(&Needs::default());
            ServiceStatus {
                name: svc.config.name.clone(),
                kind: svc.config.kind,
                listen: svc.config.listen.to_string(),
                endpoint: svc.endpoint_problem().unwrap_or_else(|| "listening".into()),
                route: plan.current().map(str::to_string),
                pinned: svc.pin(),
                plan,
                candidates: svc.candidates.iter().map(|c| c.status()).collect(),
            }
        })
        .collect();
    Json(Status {
        internal_errors: crate::task::recent(),
        node: s.config.node.clone(),
        mode: if s.is_local_only() {
            "local-only".into()
        } else {
            "mesh".into()
        },
        inventory: s
            .nodes
            .borrow()
            .get(&s.config.node)
            .and_then(|e| e.inventory.clone()),
        nodes: s.nodes.borrow().clone(),
        tunnels: s.tunnels().map(|t| t.status()).collect(),
        services,
        store: StoreStatus {
            path: s.config.store.path.display().to_string(),
            error: s.store.as_ref().err().cloned(),
            sync: s.sync.status.borrow().clone(),
            replica: s.replica.borrow().clone(),
        },
    })
}

/// Prometheus text: route changes, requests and answer times per node, probe
/// results, tunnel state and bytes. Each family's samples follow its header.
async fn metrics(State(s): State<Service>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let mut m = Metrics::default();
    // Always there, local-only mode included: what the process is and how it
    // is doing.
    m.sample(
        "robbie_build_info",
        format!(
            "version=\"{}\",node=\"{}\",mode=\"{}\"",
            env!("CARGO_PKG_VERSION"),
            s.config.node,
            if s.is_local_only() {
                "local-only"
            } else {
                "mesh"
            }
        ),
        1.0,
    );
    m.sample(
        "robbie_uptime_seconds",
        String::new(),
        s.started.elapsed().as_secs_f64(),
    );
    if let Ok(store) = &s.store {
        if let Ok(n) = store.pending().await {
            m.sample("robbie_store_pending_rows", String::new(), n as f64);
        }
    }
    let sync = s.sync.status.borrow().clone();
    if let Some(t) = sync.last_sync {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            m.sample(
                "robbie_store_last_sync_timestamp_seconds",
                String::new(),
                d.as_secs_f64(),
            );
        }
    }
    m.sample(
        "robbie_connections_refused_total",
        String::new(),
        crate::door::refused_total() as f64,
    );
    let process = crate::util::process_figures();
    if let Some(n) = process.open_fds {
        m.sample("robbie_process_open_fds", String::new(), n as f64);
    }
    if let Some(n) = process.max_fds {
        m.sample("robbie_process_max_fds", String::new(), n as f64);
    }
    if let Some(n) = process.resident_bytes {
        m.sample(
            "robbie_process_resident_memory_bytes",
            String::new(),
            n as f64,
        );
    }
    for svc in s.services.iter() {
        let name = &svc.config.name;
        m.sample(
            "robbie_route_changes_total",
            format!("service=\"{name}\""),
            svc.route_changes.load(Relaxed) as f64,
        );
        for c in &svc.candidates {
            let labels = format!("service=\"{name}\",node=\"{}\"", c.config.node);
            let cm = &c.metrics;
            m.sample(
                "robbie_requests_total",
                format!("{labels},outcome=\"ok\""),
                cm.requests_ok.load(Relaxed) as f64,
            );
            m.sample(
                "robbie_requests_total",
                format!("{labels},outcome=\"failed\""),
                cm.requests_failed.load(Relaxed) as f64,
            );
            m.sample(
                "robbie_answer_seconds_sum",
                labels.clone(),
                cm.answer_micros.load(Relaxed) as f64 / 1e6,
            );
            let st = c.status();
            let up = match st.health.health {
                crate::health::Health::Online => 1.0,
                crate::health::Health::Degraded => 0.5,
                crate::health::Health::Offline => 0.0,
            };
            m.sample("robbie_candidate_up", labels.clone(), up);
            if let Some(ms) = st.latency_ms {
                m.sample("robbie_probe_latency_seconds", labels, ms / 1e3);
            }
        }
    }
    for t in s.tunnels() {
        let st = t.status();
        let labels = format!("tunnel=\"{}\",peer=\"{}\"", st.name, st.peer);
        m.sample(
            "robbie_tunnel_up",
            labels.clone(),
            f64::from(u8::from(st.state == "up")),
        );
        m.sample(
            "robbie_tunnel_bytes_total",
            format!("{labels},direction=\"sent\""),
            st.bytes_sent as f64,
        );
        m.sample(
            "robbie_tunnel_bytes_total",
            format!("{labels},direction=\"received\""),
            st.bytes_received as f64,
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        m.render(),
    )
        .into_response()
}

/// Samples grouped by family, rendered with each family's HELP and TYPE.
#[derive(Default)]
struct Metrics {
    families: Vec<(&'static str, Vec<(String, f64)>)>,
}

impl Metrics {
    const HELP: [(&'static str, &'static str, &'static str); 15] = [
        (
            "robbie_build_info",
            "gauge",
            "1, labelled with the version, this node and its mode.",
        ),
        (
            "robbie_uptime_seconds",
            "gauge",
            "Seconds since the service started.",
        ),
        (
            "robbie_store_pending_rows",
            "gauge",
            "Rows written here and not yet acknowledged by the primary.",
        ),
        (
            "robbie_store_last_sync_timestamp_seconds",
            "gauge",
            "When the last sync round with the primary succeeded (Unix time).",
        ),
        (
            "robbie_process_open_fds",
            "gauge",
            "File descriptors the process holds.",
        ),
        (
            "robbie_process_max_fds",
            "gauge",
            "The process's open-file limit.",
        ),
        (
            "robbie_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
        ),
        (
            "robbie_connections_refused_total",
            "counter",
            "Connections closed on arrival for being over a listener's cap.",
        ),
        (
            "robbie_route_changes_total",
            "counter",
            "Times a service's route moved to another node.",
        ),
        (
            "robbie_requests_total",
            "counter",
            "Requests per service, node and outcome.",
        ),
        (
            "robbie_answer_seconds_sum",
            "counter",
            "Time to the answer's head, summed over successful requests.",
        ),
        (
            "robbie_candidate_up",
            "gauge",
            "1 when the node's instance is online, 0.5 degraded, 0 offline.",
        ),
        (
            "robbie_probe_latency_seconds",
            "gauge",
            "Latency of the last successful probe.",
        ),
        ("robbie_tunnel_up", "gauge", "1 when the tunnel forwards."),
        (
            "robbie_tunnel_bytes_total",
            "counter",
            "Bytes through a tunnel, by direction.",
        ),
    ];

    fn sample(&mut self, family: &'static str, labels: String, value: f64) {
        match self.families.iter_mut().find(|(f, _)| *f == family) {
            Some((_, v)) => v.push((labels, value)),
            None => self.families.push((family, vec![(labels, value)])),
        }
    }

    fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for (name, kind, help) in Self::HELP {
            let Some((_, samples)) = self.families.iter().find(|(f, _)| *f == name) else {
                continue;
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

/// Server-Sent Events: every event of the bus as it happens (`event:` is its type,
/// `data:` its JSON). A client that falls behind is told how many it missed.
async fn events(
    State(s): State<Service>,
) -> axum::response::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event as SseEvent, KeepAlive};
    use futures_util::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    let rx = s.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = match rx.recv().await {
            Ok(e) => {
                let kind = serde_json::to_value(&e)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string))
                    .unwrap_or_default();
                SseEvent::default()
                    .event(kind)
                    .json_data(&e)
                    .unwrap_or_default()
            }
            Err(RecvError::Lagged(n)) => SseEvent::default().event("lagged").data(n.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(item), rx))
    });
    // The stream ends when the service stops, so shutdown need not wait for it.
    let stream = stream.take_until(s.shutdown.clone().cancelled_owned());
    axum::response::Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn tunnels(State(s): State<Service>) -> Json<TunnelList> {
    Json(TunnelList {
        node: s.config.node.clone(),
        tunnels: s.tunnels().map(|t| t.status()).collect(),
    })
}

async fn reconnect(State(s): State<Service>, Path(name): Path<String>) -> Response {
    match s.find_tunnel(&name) {
        Some((peer, _)) => {
            peer.reconnect();
            let reply = ReconnectReply {
                peer: peer.name.clone(),
                tunnels: peer.tunnels.iter().map(|t| t.name().to_string()).collect(),
            };
            (StatusCode::ACCEPTED, Json(reply)).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no tunnel named `{name}`; GET /v1/tunnels lists them"),
        ),
    }
}

fn set_pin(s: &Service, name: &str, node: Option<&str>) -> Response {
    let Some(svc) = s.services.iter().find(|x| x.config.name == name) else {
        let known: Vec<&str> = s.services.iter().map(|x| x.config.name.as_str()).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!("no service named `{name}` (services: {})", known.join(", ")),
        );
    };
    if let Err(why) = svc.set_pin(node) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    svc.notify_changed();
    let route = svc.plan(&Needs::default()).current().map(str::to_string);
    Json(PinReply {
        service: name.to_string(),
        pinned: svc.pin(),
        route,
    })
    .into_response()
}

async fn pin(
    State(s): State<Service>,
    Path(name): Path<String>,
    Json(req): Json<PinRequest>,
) -> Response {
    set_pin(&s, &name, Some(&req.node))
}

async fn unpin(State(s): State<Service>, Path(name): Path<String>) -> Response {
    set_pin(&s, &name, None)
}

#[cfg(test)]
mod tests {
    use super::{is_loopback_authority, refusal};
    use axum::http::{HeaderMap, HeaderValue, Method};

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v).expect("value"));
        }
        h
    }

    #[test]
    fn only_this_apis_own_origin_may_change_state() {
        let post = Method::POST;
        let ok = |pairs: &[(&'static str, &[u8])]| refusal(&headers(pairs), &post, 8007);
        assert_eq!(
            ok(&[("host", b"127.0.0.1:8007")]),
            None,
            "the CLI sends no Origin"
        );
        assert_eq!(
            ok(&[
                ("host", b"127.0.0.1:8007"),
                ("origin", b"http://127.0.0.1:8007")
            ]),
            None
        );
        assert_eq!(
            ok(&[
                ("host", b"localhost:8007"),
                ("origin", b"http://localhost:8007")
            ]),
            None
        );
        for (pairs, why) in [
            (
                &[
                    ("host", &b"127.0.0.1:8007"[..]),
                    ("origin", b"http://localhost:3000"),
                ][..],
                "origin",
            ),
            (
                &[("host", b"127.0.0.1:8007"), ("origin", b"http://127.0.0.1")],
                "origin",
            ),
            (
                &[
                    ("host", b"127.0.0.1:8007"),
                    ("origin", b"https://127.0.0.1:8007"),
                ],
                "origin",
            ),
            (
                &[("host", b"127.0.0.1:8007"), ("origin", b"null")],
                "origin",
            ),
            (
                &[
                    ("host", b"127.0.0.1:8007"),
                    ("origin", b"http://127.0.0.1:8007"),
                    ("origin", b"http://evil.example"),
                ],
                "more than one",
            ),
            (
                &[
                    ("host", b"127.0.0.1:8007"),
                    ("origin", b"http://127.0.0.1:8007\xff"),
                ],
                "not readable",
            ),
            (
                &[("host", b"127.0.0.1:8007"), ("host", b"evil.example")],
                "more than one",
            ),
            (&[("host", b"evil.example:8007")], "not a loopback"),
            (&[], "needs a Host"),
        ] {
            let got = ok(pairs).unwrap_or_default();
            assert!(got.contains(why), "{pairs:?}: {got}");
        }
        // Reading is not changing: a GET with a foreign Origin is answered
        // (the browser keeps the answer from the page without CORS headers).
        assert_eq!(
            refusal(
                &headers(&[
                    ("host", b"127.0.0.1:8007"),
                    ("origin", b"http://localhost:3000")
                ]),
                &Method::GET,
                8007
            ),
            None
        );
    }

    #[test]
    fn loopback_authorities() {
        for ok in [
            "127.0.0.1:8007",
            "localhost:8007",
            "LOCALHOST",
            "[::1]:8007",
            "127.0.0.2",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example:8007",
            "192.168.1.2:8007",
            "",
            "[2001:db8::1]:80",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }
}
