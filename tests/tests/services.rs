//! Service health over real tunnels: each candidate's health is layered (the SSH
//! session of its tunnel, then the service's own answer), with rise/fall hysteresis,
//! and shown by `GET /v1/status`. Ollama is the harness's API-faithful stub.

use std::time::Duration;

use mesh_tests::ollama::OllamaStub;
use mesh_tests::sshd::Sshd;
use mesh_tests::{eventually, two_node_ollama, Mesh};
use serde_json::Value;

fn candidate<'a>(status: &'a Value, node: &str) -> &'a Value {
    status["services"][0]["candidates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["node"] == node))
        .unwrap_or_else(|| panic!("no candidate {node} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn candidates_are_probed_in_layers() {
    let mut sshd = Sshd::start();
    let aurora = OllamaStub::start("aurora", &["llama3.1:70b", "llama3.2:3b"]).await;
    let local = OllamaStub::start("book", &["llama3.2:3b"]).await;
    let (cfg, _) = two_node_ollama(&sshd, aurora.addr, local.addr, "");
    let mesh = Mesh::start(&cfg).await;
    let online = |node: &'static str| {
        let mesh = &mesh;
        move || async move { candidate(&mesh.api_get("/v1/status").await, node)["health"] == "online" }
    };
    eventually(Duration::from_secs(10), "aurora online", online("aurora")).await;
    eventually(Duration::from_secs(10), "book online", online("book")).await;
    let status = mesh.api_get("/v1/status").await;
    let a = candidate(&status, "aurora");
    assert_eq!(a["tunnel"], "aurora-ollama");
    assert_eq!(a["ollama"]["version"], "0.13.0");
    assert_eq!(
        a["ollama"]["models"],
        serde_json::json!(["llama3.1:70b", "llama3.2:3b"])
    );
    assert!(a["latency_ms"].as_f64().is_some(), "{a}");
    assert_eq!(status["services"][0]["kind"], "ollama");

    // A model only partly in VRAM makes the node degraded (still up).
    aurora.models.lock().expect("lock")[0].loaded_vram = Some(500_000_000);
    eventually(Duration::from_secs(10), "aurora degraded", || async {
        let s = mesh.api_get("/v1/status").await;
        let a = candidate(&s, "aurora");
        a["health"] == "degraded" && a["reason"].as_str().unwrap_or("").contains("25% in VRAM")
    })
    .await;
    aurora.models.lock().expect("lock")[0].loaded_vram = None;

    // The SSH session goes: aurora is offline at once, with the tunnel's reason.
    let mut events = mesh.service.events.subscribe();
    sshd.kill();
    let took = eventually(Duration::from_secs(2), "aurora offline", || async {
        let s = mesh.api_get("/v1/status").await;
        let a = candidate(&s, "aurora");
        a["health"] == "offline"
            && a["reason"]
                .as_str()
                .unwrap_or("")
                .contains("tunnel aurora-ollama")
    })
    .await;
    eprintln!("aurora offline {took:?} after sshd died");
    assert_eq!(
        candidate(&mesh.api_get("/v1/status").await, "book")["health"],
        "online"
    );
    let mut saw_event = false;
    while let Ok(e) = events.try_recv() {
        if let robbie_mesh::events::EventKind::Health { node, health, .. } = &e.kind {
            saw_event |= node == "aurora" && *health == robbie_mesh::health::Health::Offline;
        }
    }
    assert!(saw_event, "the flip is an event");

    // The local Ollama answers 503: degraded (busy), not offline.
    *local.fail_with.lock().expect("lock") = Some(503);
    eventually(Duration::from_secs(10), "book degraded", || async {
        candidate(&mesh.api_get("/v1/status").await, "book")["health"] == "degraded"
    })
    .await;

    // sshd is back: aurora comes back after its rise checks.
    sshd.restart();
    eventually(
        Duration::from_secs(15),
        "aurora back online",
        online("aurora"),
    )
    .await;
}
