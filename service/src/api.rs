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

use crate::service::Service;
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

#[derive(Debug, Serialize, Deserialize)]
pub struct ReconnectReply {
    pub peer: String,
    /// Every tunnel of that peer: they share its SSH session.
    pub tunnels: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

pub fn router(service: Service) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/tunnels", get(tunnels))
        .route("/v1/tunnels/{name}/reconnect", post(reconnect))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see GET /v1/tunnels") })
        .with_state(service)
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, service: Service, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(service))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn health(State(s): State<Service>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        node: s.config.node.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        mode: if s.is_local_only() { "local-only".into() } else { "mesh".into() },
        config: s.config.source.as_ref().map(|p| p.display().to_string()),
    })
}

async fn tunnels(State(s): State<Service>) -> Json<TunnelList> {
    Json(TunnelList { node: s.config.node.clone(), tunnels: s.tunnels().map(|t| t.status()).collect() })
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
        None => error(StatusCode::NOT_FOUND, format!("no tunnel named `{name}`; GET /v1/tunnels lists them")),
    }
}
