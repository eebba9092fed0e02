//! The conversations part of the loopback API, for the programs on this node. Always
//! answered from the local SQLite file, so it works in airplane mode:
//!
//! - `GET  /v1/conversations?archived=true&before=ID&limit=N` (newest first)
//! - `POST /v1/conversations` `{"title": …}`
//! - `GET  /v1/conversations/{id}`, `PATCH` it with `{"title"?, "archived"?}`
//! - `GET  /v1/conversations/{id}/messages?after=ID&limit=N` (oldest first)
//! - `POST /v1/conversations/{id}/messages` `{"role", "content", "model"?}`
//! - `POST /v1/sync`: a sync round now; answers the sync status.
//! - `POST /v1/sync/verify` `{"repair"?: bool}`: compares this device with the
//!   primary (and repairs); answers the report.

use super::error;
use super::wire::{ConversationPatch, NewConversation, NewMessage, Page, VerifyRequest};
use crate::runtime::Service;
use crate::store::{Store, StoreError, MAX_CONTENT};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

/// The largest request body the store's calls take: a message's content at
/// its largest ([`MAX_CONTENT`]) with room for JSON's escapes of
/// newlines and quotes, and its other fields.
pub const MAX_BODY: usize = 2 * MAX_CONTENT + (1 << 20);

pub fn routes() -> Router<Service> {
    Router::new()
        .route("/v1/conversations", get(list).post(create))
        .route("/v1/conversations/{id}", get(one).patch(update))
        .route(
            "/v1/conversations/{id}/messages",
            get(messages).post(append),
        )
        .route("/v1/sync", post(sync_now))
        .route("/v1/sync/verify", post(verify))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// A refusal: its status and what to say.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let too_large = self.0 == StatusCode::PAYLOAD_TOO_LARGE;
        let mut r = error(self.0, self.1);
        if too_large {
            // The rest of the body was not read: this connection cannot carry
            // another request, and the client must not try.
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        r
    }
}

fn store(s: &Service) -> Result<&Store, Fail> {
    s.store.as_ref().map_err(|why| {
        Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the local store is not open: {why}"),
        )
    })
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Fail> {
    b.map(|Json(t)| t).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over {} MiB; a message's content may be up to {} MiB",
                    MAX_BODY >> 20,
                    MAX_CONTENT >> 20
                ),
            );
        }
        Fail(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {}", e.body_text()),
        )
    })
}

fn answer<T: serde::Serialize>(r: Result<T, StoreError>, created: bool) -> Response {
    match r {
        Ok(v) if created => (StatusCode::CREATED, Json(v)).into_response(),
        Ok(v) => Json(v).into_response(),
        Err(e @ StoreError::NoConversation(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) if e.is_client_error() => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            tracing::error!("store: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

type Answer = Result<Response, Fail>;

async fn list(State(s): State<Service>, Query(p): Query<Page>) -> Answer {
    Ok(answer(
        store(&s)?
            .conversations(p.archived, p.before.clone(), p.limit())
            .await,
        false,
    ))
}

async fn create(
    State(s): State<Service>,
    b: Result<Json<NewConversation>, JsonRejection>,
) -> Answer {
    let (st, b) = (store(&s)?, body(b)?);
    Ok(answer(st.create_conversation(&b.title).await, true))
}

async fn one(State(s): State<Service>, Path(id): Path<String>) -> Answer {
    Ok(answer(store(&s)?.conversation(&id).await, false))
}

async fn update(
    State(s): State<Service>,
    Path(id): Path<String>,
    b: Result<Json<ConversationPatch>, JsonRejection>,
) -> Answer {
    let (st, b) = (store(&s)?, body(b)?);
    Ok(answer(
        st.update_conversation(&id, b.title, b.archived).await,
        false,
    ))
}

async fn messages(
    State(s): State<Service>,
    Path(id): Path<String>,
    Query(p): Query<Page>,
) -> Answer {
    Ok(answer(
        store(&s)?.messages(&id, p.after.clone(), p.limit()).await,
        false,
    ))
}

async fn append(
    State(s): State<Service>,
    Path(id): Path<String>,
    b: Result<Json<NewMessage>, JsonRejection>,
) -> Answer {
    let (st, b) = (store(&s)?, body(b)?);
    Ok(answer(
        st.append_message(&id, &b.role, b.content, b.model).await,
        true,
    ))
}

async fn verify(State(s): State<Service>, b: Option<Json<VerifyRequest>>) -> Response {
    let repair = b.is_some_and(|Json(b)| b.repair);
    match s.sync.verify(repair).await {
        Ok(report) => Json(report).into_response(),
        Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn sync_now(State(s): State<Service>) -> Response {
    s.sync.kick();
    let status = s.sync.status.borrow().clone();
    Json(status).into_response()
}
