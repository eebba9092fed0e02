//! Service health over real tunnels: each candidate's health is layered (the SSH
//! session of its tunnel, then the service's own answer), with rise/fall hysteresis,
//! and shown by `GET /v1/status`. Ollama is the harness's API-faithful stub.

use std::time::Duration;

use mesh_tests::ollama::OllamaStub;
use mesh_tests::sshd::Sshd;
use mesh_tests::{eventually, two_node_ollama, Mesh};
use robbie_mesh::api::wire::{CandidateStatus, Health, ServiceKind};

/// The first service's candidate on `node`, as `GET /v1/status` tells it now.
async fn candidate(mesh: &Mesh, node: &str) -> CandidateStatus {
    let status = mesh.status().await;
    status.services[0]
        .candidates
        .iter()
        .find(|c| c.node == node)
        .cloned()
        .unwrap_or_else(|| panic!("no candidate {node} in {status:?}"))
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
        move || async move { candidate(mesh, node).await.health.health == Health::Online }
    };
    eventually(Duration::from_secs(10), "aurora online", online("aurora")).await;
    eventually(Duration::from_secs(10), "book online", online("book")).await;
    let status = mesh.status().await;
    let a = candidate(&mesh, "aurora").await;
    assert_eq!(a.tunnel.as_deref(), Some("aurora-ollama"));
    let ollama = a.ollama.as_ref().expect("aurora's Ollama answers");
    assert_eq!(ollama.version, "0.13.0");
    assert_eq!(&*ollama.models, ["llama3.1:70b", "llama3.2:3b"]);
    assert!(a.latency_ms.is_some(), "{a:?}");
    assert_eq!(status.services[0].kind, ServiceKind::Ollama);

    // A model only partly in VRAM makes the node degraded (still up).
    aurora.models.lock().expect("lock")[0].loaded_vram = Some(500_000_000);
    eventually(Duration::from_secs(10), "aurora degraded", || async {
        let a = candidate(&mesh, "aurora").await.health;
        a.health == Health::Degraded && a.reason.contains("25% in VRAM")
    })
    .await;
    aurora.models.lock().expect("lock")[0].loaded_vram = None;

    // The SSH session goes: aurora is offline at once, with the tunnel's reason.
    let mut events = mesh.service.events.subscribe();
    sshd.kill();
    let took = eventually(Duration::from_secs(2), "aurora offline", || async {
        let a = candidate(&mesh, "aurora").await.health;
        a.health == Health::Offline && a.reason.contains("tunnel aurora-ollama")
    })
    .await;
    eprintln!("aurora offline {took:?} after sshd died");
    assert_eq!(candidate(&mesh, "book").await.health.health, Health::Online);
    let mut saw_event = false;
    while let Ok(e) = events.try_recv() {
        if let robbie_mesh::events::EventKind::Health { node, health, .. } = &e.kind {
            saw_event |= node == "aurora" && *health == Health::Offline;
        }
    }
    assert!(saw_event, "the flip is an event");

    // The local Ollama answers 503: degraded (busy), not offline.
    *local.fail_with.lock().expect("lock") = Some(503);
    eventually(Duration::from_secs(10), "book degraded", || async {
        candidate(&mesh, "book").await.health.health == Health::Degraded
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
