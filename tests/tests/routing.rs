//! The stable Ollama endpoint over real tunnels: requests go to the preferred node,
//! fail over when its SSH session dies (retried requests all succeed), come back
//! only after the hold-down, follow the model, respect a pin, and a backend that
//! dies mid-stream ends the stream with Ollama's error line, never `done: true`.

use std::time::{Duration, Instant};

use mesh_tests::ollama::OllamaStub;
use mesh_tests::sshd::Sshd;
use mesh_tests::{eventually, two_node_ollama, Mesh};
use robbie_mesh::events::EventKind;
use serde_json::{json, Value};

struct Setup {
    sshd: Sshd,
    aurora: OllamaStub,
    book: OllamaStub,
    mesh: Mesh,
    endpoint: String,
}

async fn setup() -> Setup {
    let sshd = Sshd::start();
    let aurora = OllamaStub::start("aurora", &["llama3.2:3b"]).await;
    let book = OllamaStub::start("book", &["llama3.2:3b", "qwen3:8b"]).await;
    let (cfg, endpoint) = two_node_ollama(&sshd, aurora.addr, book.addr, "hold_down = \"3s\"\n");
    let mesh = Mesh::start(&cfg).await;
    let s = Setup {
        sshd,
        aurora,
        book,
        mesh,
        endpoint: format!("http://127.0.0.1:{endpoint}"),
    };
    s.mesh.wait_route("aurora", Duration::from_secs(10)).await;
    s
}

impl Setup {
    /// A streamed generate; returns the node header and the NDJSON lines.
    async fn generate(&self, model: &str) -> (String, Vec<Value>) {
        let resp = mesh_tests::http()
            .post(format!("{}/api/generate", self.endpoint))
            .json(&json!({"model": model, "prompt": "hi"}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{:?}", resp.headers());
        let node = mesh_tests::served_by(&resp);
        if let Some(tried) = resp.headers().get("x-robbie-tried") {
            eprintln!("{node} served after trying: {tried:?}");
        }
        let text = resp.text().await.unwrap_or_default();
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("NDJSON line"))
            .collect();
        (node, lines)
    }
}

fn said(lines: &[Value]) -> String {
    lines
        .iter()
        .filter_map(|l| l["response"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fails_over_and_back_after_the_hold_down() {
    let mut s = setup().await;
    let (node, lines) = s.generate("llama3.2:3b").await;
    assert_eq!(node, "aurora");
    assert_eq!(said(&lines), "hello from aurora");
    assert_eq!(lines.last().map(|l| l["done"].clone()), Some(json!(true)));

    // Aurora's SSH session dies; every request from now on succeeds, on book.
    let mut events = s.mesh.service.events.subscribe();
    let mut sse = mesh_tests::get(format!("http://{}/v1/events", s.mesh.api))
        .await
        .expect("GET /v1/events");
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    s.sshd.kill();
    for _ in 0..10 {
        let (node, lines) = s.generate("llama3.2:3b").await;
        assert_eq!(node, "book");
        assert_eq!(said(&lines), "hello from book");
    }
    s.mesh.wait_route("book", Duration::from_secs(3)).await;
    let mut reason = None;
    while let Ok(e) = events.try_recv() {
        if let EventKind::Route {
            to: Some(to),
            reason: r,
            ..
        } = e.kind
        {
            if to == "book" {
                reason = Some(r);
            }
        }
    }
    let reason = reason.expect("a route event");
    assert!(
        reason.contains("aurora offline") && reason.contains("tunnel aurora-ollama"),
        "{reason}"
    );
    // The same event reached the Server-Sent Events stream.
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(chunk)) = sse.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: route") && seen.contains("\"to\":\"book\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no route event on /v1/events: {seen}"
    );

    // Aurora is back: traffic stays on book for the 3 s hold-down, then returns.
    s.sshd.restart();
    eventually(Duration::from_secs(15), "aurora online", || async {
        let st = s.mesh.status().await;
        st.services[0].candidates[0].health.health == robbie_mesh::api::wire::Health::Online
    })
    .await;
    let online_at = Instant::now();
    let (node, _) = s.generate("llama3.2:3b").await;
    assert_eq!(node, "book", "held down right after recovery");
    s.mesh.wait_route("aurora", Duration::from_secs(6)).await;
    assert!(
        online_at.elapsed() >= Duration::from_secs(2),
        "came back before the hold-down: {:?}",
        online_at.elapsed()
    );
    assert_eq!(s.generate("llama3.2:3b").await.0, "aurora");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_pin_and_mid_stream_failure() {
    let s = setup().await;
    // Only book has qwen3: it serves it while aurora is up.
    eventually(Duration::from_secs(10), "models known", || async {
        let st = s.mesh.status().await;
        st.services[0].candidates[1]
            .ollama
            .as_ref()
            .is_some_and(|o| o.models.len() == 2)
    })
    .await;
    assert_eq!(s.generate("qwen3:8b").await.0, "book");
    assert_eq!(s.generate("llama3.2:3b").await.0, "aurora");

    // Pinned to book, through the API; unpinned, back to aurora.
    let client = s.mesh.client();
    let r = client.pin("ollama", Some("book")).await.expect("pin");
    assert_eq!(r.route.as_deref(), Some("book"));
    assert_eq!(s.generate("llama3.2:3b").await.0, "book");
    let bad = client
        .pin("ollama", Some("nowhere"))
        .await
        .expect_err("no such node");
    assert_eq!(bad.status(), Some(400), "{bad}");
    client.pin("ollama", None).await.expect("unpin");
    assert_eq!(s.generate("llama3.2:3b").await.0, "aurora");

    // Aurora dies mid-answer: the client gets Ollama's error line, not done:true.
    s.aurora
        .die_mid_stream
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (node, lines) = s.generate("llama3.2:3b").await;
    assert_eq!(node, "aurora");
    let last = lines.last().expect("lines");
    assert!(
        last["error"].as_str().is_some_and(|e| e.contains("aurora")),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| l["done"] != json!(true)),
        "never a fake done: {lines:?}"
    );

    // /metrics counts it all, per node.
    let metrics = mesh_tests::get(format!("http://{}/metrics", s.mesh.api))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("# TYPE robbie_requests_total counter"),
        "{metrics}"
    );
    let count = |labels: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("robbie_requests_total{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(
        count("service=\"ollama\",node=\"book\",outcome=\"ok\"") >= 2.0,
        "{metrics}"
    );
    assert!(
        count("service=\"ollama\",node=\"aurora\",outcome=\"failed\"") >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("robbie_candidate_up{service=\"ollama\",node=\"aurora\"}"),
        "{metrics}"
    );
    drop(s.book);
}

/// The official Ollama Python client (`pip install ollama`, installed by
/// tests/setup.sh) streams a chat through the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ollama_python_client_streams_a_chat() {
    let python = std::env::var("MESH_TEST_PYTHON")
        .unwrap_or_else(|_| "/var/cache/robbie-mesh/venv/bin/python".into());
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} missing: run tests/setup.sh (tests/run.sh does)"
    );
    let s = setup().await;
    let script = r#"
import sys, ollama
client = ollama.Client(host=sys.argv[1])
parts = []
for chunk in client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}], stream=True):
    parts.append(chunk["message"]["content"])
    last = chunk
print("".join(parts))
print("done" if last["done"] else "not done")
print(len(client.list()["models"]))
"#;
    let endpoint = s.endpoint.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", script, &endpoint])
            .output()
    })
    .await
    .expect("join")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["hello from aurora", "done", "1"], "{stdout}");
}
