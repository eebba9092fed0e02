//! An Ollama stand-in for tests (Ollama itself and its GPU cannot run here). It
//! follows Ollama's HTTP API for what robbie-mesh uses — `/api/version`, `/api/tags`,
//! `/api/ps`, `/api/show`, and streaming NDJSON from `/api/generate` and `/api/chat`
//! with `done` on the last line — and names its node in every answer, so a test
//! can see which machine served it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// What the stub reports; change it while the test runs.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub size: u64,
    /// Loaded, with this many bytes in VRAM.
    pub loaded_vram: Option<u64>,
}

#[derive(Clone)]
pub struct OllamaStub {
    pub node: String,
    pub addr: SocketAddr,
    pub models: Arc<Mutex<Vec<Model>>>,
    /// Answer every request with this status (e.g. 503) instead.
    pub fail_with: Arc<Mutex<Option<u16>>>,
    /// Streams break after two lines (the process "dies" mid-answer).
    pub die_mid_stream: Arc<std::sync::atomic::AtomicBool>,
    /// Generation waits this long (ms) before its first line, as a model load does.
    pub first_byte_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Stops the server (see `stop`).
    running: Arc<Mutex<Option<tokio_util::sync::CancellationToken>>>,
}

impl OllamaStub {
    pub async fn start(node: &str, models: &[&str]) -> OllamaStub {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        OllamaStub::serve(l, node, models)
    }

    /// The stub on a listener the caller bound (the `ollama-stub` binary binds
    /// Ollama's usual address inside a node's network namespace).
    pub fn serve(l: tokio::net::TcpListener, node: &str, models: &[&str]) -> OllamaStub {
        let stub = OllamaStub {
            node: node.to_string(),
            addr: l.local_addr().expect("addr"),
            models: Arc::new(Mutex::new(
                models
                    .iter()
                    .map(|m| Model {
                        name: m.to_string(),
                        size: 2_000_000_000,
                        loaded_vram: None,
                    })
                    .collect(),
            )),
            fail_with: Arc::new(Mutex::new(None)),
            die_mid_stream: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            first_byte_delay_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            running: Arc::new(Mutex::new(None)),
        };
        stub.run(l);
        stub
    }

    /// Serves on `l` until `stop`.
    fn run(&self, l: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/api/version", get(version))
            .route("/api/tags", get(tags))
            .route("/api/ps", get(ps))
            .route("/api/show", post(show))
            .route("/api/generate", post(generate))
            .route("/api/chat", post(chat))
            // Not Ollama's: lets a test reach into a stub running in another process.
            .route("/_stub/die_mid_stream", post(set_die_mid_stream))
            .route("/_stub/first_byte_delay_ms", post(set_first_byte_delay))
            .with_state(self.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        *self.running.lock().expect("lock") = Some(stop.clone());
        tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }

    /// Quits like Ollama's process: the port refuses connections (the few open
    /// idle ones close) until `start_again`.
    pub fn stop(&self) {
        if let Some(stop) = self.running.lock().expect("lock").take() {
            stop.cancel();
        }
    }

    /// Serves again on the same address.
    pub async fn start_again(&self) {
        let deadline = std::time::Instant::now() + crate::DEADLINE;
        let l = loop {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            match socket.bind(self.addr).and_then(|()| socket.listen(1024)) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "cannot bind {} again: {e}",
                        self.addr
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        };
        self.run(l);
    }

    fn failing(&self) -> Option<Response> {
        let code = (*self.fail_with.lock().expect("lock"))?;
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        Some(
            (
                status,
                Json(json!({"error": format!("{} is busy", self.node)})),
            )
                .into_response(),
        )
    }
}

async fn set_first_byte_delay(State(s): State<OllamaStub>, Json(ms): Json<u64>) -> StatusCode {
    s.first_byte_delay_ms
        .store(ms, std::sync::atomic::Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn set_die_mid_stream(State(s): State<OllamaStub>, Json(on): Json<bool>) -> StatusCode {
    s.die_mid_stream
        .store(on, std::sync::atomic::Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn version(State(s): State<OllamaStub>) -> Response {
    s.failing()
        .unwrap_or_else(|| Json(json!({"version": "0.13.0"})).into_response())
}

async fn tags(State(s): State<OllamaStub>) -> Response {
    listed(&s, |m| {
        Some(json!({
            "name": m.name, "model": m.name, "modified_at": "2026-11-01T12:00:00Z", "size": m.size,
            "digest": format!("{:064x}", m.size),
            "details": {"format": "gguf", "family": "llama", "parameter_size": "8B", "quantization_level": "Q4_K_M"}
        }))
    })
}

async fn ps(State(s): State<OllamaStub>) -> Response {
    listed(&s, |m| {
        m.loaded_vram.map(|vram| {
            json!({
                "name": m.name, "model": m.name, "size": m.size, "digest": format!("{:064x}", m.size),
                "details": {"format": "gguf", "family": "llama"}, "expires_at": "2026-11-26T23:59:59Z", "size_vram": vram
            })
        })
    })
}

/// `{"models": [...]}` with one entry per model `entry` describes.
fn listed(s: &OllamaStub, entry: impl Fn(&Model) -> Option<Value>) -> Response {
    if let Some(r) = s.failing() {
        return r;
    }
    let models: Vec<Value> = s
        .models
        .lock()
        .expect("lock")
        .iter()
        .filter_map(entry)
        .collect();
    Json(json!({ "models": models })).into_response()
}

/// The requested model's name, or Ollama's 404 for a model it does not have.
fn has_model(s: &OllamaStub, body: &Value) -> Result<String, Box<Response>> {
    let name = body["model"].as_str().unwrap_or_default().to_string();
    if s.models
        .lock()
        .expect("lock")
        .iter()
        .any(|m| m.name == name)
    {
        Ok(name)
    } else {
        Err(Box::new(
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("model '{name}' not found")})),
            )
                .into_response(),
        ))
    }
}

async fn show(State(s): State<OllamaStub>, Json(body): Json<Value>) -> Response {
    match has_model(&s, &body) {
        Ok(name) => Json(json!({"modelfile": format!("FROM {name}"), "details": {"family": "llama"}, "model_info": {}})).into_response(),
        Err(r) => *r,
    }
}

/// NDJSON lines, the last with `done: true`, as Ollama streams them; or, when the
/// stub is told to die, two lines, a pause (the client has them by then) and a
/// broken connection.
fn stream(s: &OllamaStub, lines: Vec<Value>) -> Response {
    use futures_util::StreamExt;
    let die = s.die_mid_stream.load(std::sync::atomic::Ordering::Relaxed);
    let mut chunks: Vec<Result<String, std::io::Error>> =
        lines.into_iter().map(|l| Ok(format!("{l}\n"))).collect();
    if die {
        chunks.truncate(2);
        let death = futures_util::stream::once(async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            Err::<String, _>(std::io::Error::other("killed"))
        });
        let body = futures_util::stream::iter(chunks).chain(death);
        return Response::builder()
            .header("content-type", "application/x-ndjson")
            .body(Body::from_stream(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn generate(State(s): State<OllamaStub>, Json(body): Json<Value>) -> Response {
    let delay = s
        .first_byte_delay_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    answer(&s, &body, |text| json!({ "response": text }))
}

async fn chat(State(s): State<OllamaStub>, Json(body): Json<Value>) -> Response {
    answer(
        &s,
        &body,
        |text| json!({ "message": {"role": "assistant", "content": text} }),
    )
}

/// "hello from NODE" streamed word by word, each line shaped by `content` (a
/// generate `response` or a chat `message`), then the `done` line.
fn answer(s: &OllamaStub, body: &Value, content: impl Fn(&str) -> Value) -> Response {
    if let Some(r) = s.failing() {
        return r;
    }
    let name = match has_model(s, body) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let line = |text: &str, done: bool| {
        let mut l = json!({"model": name, "created_at": "2026-11-26T23:00:00Z", "done": done});
        if let (Some(obj), Value::Object(extra)) = (l.as_object_mut(), content(text)) {
            obj.extend(extra);
        }
        if done {
            l["done_reason"] = json!("stop");
        }
        l
    };
    let mut lines: Vec<Value> = ["hello", " from", " ", &s.node]
        .iter()
        .map(|w| line(w, false))
        .collect();
    lines.push(line("", true));
    stream(s, lines)
}
