//! The loopback HTTP API (axum): health, status, tunnels and their controls, the
//! conversations, metrics and the dashboard. The CLI, the tray app and the
//! dashboard are its clients (`crate::client` for the first two); it is never
//! reachable off the machine (the config only accepts loopback addresses).
//!
//! - [`wire`]: every request and answer type;
//! - [`guard`]: who may call (loopback names, own Origin, the API token);
//! - [`conversations`]: the store's calls;
//! - [`metrics`]: Prometheus text;
//! - `ui`: the dashboard's files, compiled in.

pub mod conversations;
mod guard;
mod metrics;
mod ui;
pub mod wire;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use guard::{guard, login, loopback_only, sign_in_link};
use metrics::metrics;
use wire::*;

use crate::route::Needs;
use crate::runtime::Service;

/// Whether this node has peers.
fn mode(s: &Service) -> Mode {
    if s.is_local_only() {
        Mode::LocalOnly
    } else {
        Mode::Mesh
    }
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
        .route(
            "/v1/doctor",
            get(doctor_last).post(doctor_run).put(doctor_keep),
        )
        .merge(conversations::routes())
        .merge(ui::routes())
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

async fn health(State(s): State<Service>) -> Json<HealthReply> {
    Json(HealthReply {
        status: "ok".into(),
        node: s.config.node.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        mode: mode(&s),
        config: s.config.source.as_ref().map(|p| p.display().to_string()),
        time: Some(std::time::SystemTime::now()),
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
        mode: mode(&s),
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

/// `GET /v1/doctor`: the last findings.
async fn doctor_last(State(s): State<Service>) -> Json<DoctorReply> {
    let report = s.doctor.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(DoctorReply { report })
}

/// `POST /v1/doctor`: every check now, as this service sees it; kept for the
/// dashboard.
async fn doctor_run(State(s): State<Service>) -> Json<Report> {
    let report = crate::doctor::run(s.config.source.as_deref(), Some(s.config.api.listen)).await;
    *s.doctor.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
    Json(report)
}

/// `PUT /v1/doctor`: findings `robbie-mesh doctor` made, kept for the dashboard.
async fn doctor_keep(State(s): State<Service>, Json(report): Json<Report>) -> StatusCode {
    *s.doctor.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    StatusCode::NO_CONTENT
}
