//! An on-demand peer (the seed's RunPod): no SSH session while a higher-priority
//! node serves; connected when every node above it is down; released after its
//! idle time once it is no longer needed.

use std::time::Duration;

use mesh_tests::ollama::OllamaStub;
use mesh_tests::sshd::Sshd;
use mesh_tests::{eventually, free_port, peer_toml, trust, Mesh};
use serde_json::json;

/// Aurora's own Ollama first, then RunPod's through an on-demand peer (released
/// after 1 s without need); the mesh and its Ollama endpoint's port.
async fn aurora_with_runpod_on_demand(
    sshd: &Sshd,
    aurora: &OllamaStub,
    runpod: &OllamaStub,
) -> (Mesh, u16) {
    let (tunnel, endpoint) = (free_port(), free_port());
    let cfg = format!(
        "node = \"aurora\"\n{}connect = \"on-demand\"\nidle = \"1s\"\n\
         [[peer.forward]]\nname = \"runpod-ollama\"\nlocal = \"127.0.0.1:{tunnel}\"\nremote = \"{}\"\n\
         [[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{endpoint}\"\nhold_down = \"1s\"\n\
         candidates = [{{ node = \"aurora\", address = \"{}\" }}, {{ node = \"runpod\", tunnel = \"runpod-ollama\" }}]\n\
         probe = {{ local_interval = \"200ms\", remote_interval = \"200ms\" }}\n",
        peer_toml("runpod", sshd, &trust(sshd), ""),
        runpod.addr,
        aurora.addr
    );
    (Mesh::start(&cfg).await, endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connected_only_while_needed() {
    let sshd = Sshd::start();
    let aurora = OllamaStub::start("aurora", &["llama3.2:3b"]).await;
    let runpod = OllamaStub::start("runpod", &["llama3.2:3b"]).await;
    let (mesh, endpoint) = aurora_with_runpod_on_demand(&sshd, &aurora, &runpod).await;
    mesh.wait_route("aurora", Duration::from_secs(10)).await;
    // Not needed: no session at all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = mesh.tunnel("runpod-ollama").snapshot().state;
    assert!(t.reason().is_some_and(|r| r.contains("on demand")), "{t:?}");
    assert!(
        sshd.session_pids().is_empty(),
        "an SSH session to the on-demand peer exists"
    );

    // Aurora fails: RunPod is connected and serves.
    *aurora.fail_with.lock().expect("lock") = Some(500);
    mesh.wait_route("runpod", Duration::from_secs(15)).await;
    let r = mesh_tests::http()
        .post(format!("http://127.0.0.1:{endpoint}/api/generate"))
        .json(&json!({"model": "llama3.2:3b", "prompt": "hi"}))
        .send()
        .await
        .expect("request");
    assert_eq!(mesh_tests::served_by(&r), "runpod");

    // Aurora is back: traffic returns after the hold-down, RunPod is released after 1 s idle.
    *aurora.fail_with.lock().expect("lock") = None;
    mesh.wait_route("aurora", Duration::from_secs(15)).await;
    let (state, _) = mesh
        .wait_state("runpod-ollama", Duration::from_secs(10), |s| {
            s.reason().is_some_and(|r| r.contains("on demand"))
        })
        .await;
    assert!(!state.is_up());
    eventually(Duration::from_secs(10), "the session closed", || async {
        sshd.session_pids().is_empty()
    })
    .await;
}

/// Pinning the service to the on-demand node connects it; a model only it has
/// connects it too, and the request waits for it instead of failing elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_or_a_model_only_it_has_connects_it() {
    let sshd = Sshd::start();
    let aurora = OllamaStub::start("aurora", &["llama3.2:3b"]).await;
    let runpod = OllamaStub::start("runpod", &["llama3.2:3b", "llama3.1:405b"]).await;
    let (mesh, endpoint) = aurora_with_runpod_on_demand(&sshd, &aurora, &runpod).await;
    mesh.wait_route("aurora", Duration::from_secs(10)).await;
    let client = mesh_tests::http();
    let api = format!("http://{}", mesh.api);

    // A pin connects it, and the route follows.
    let r = client
        .post(format!("{api}/v1/services/ollama/pin"))
        .json(&json!({"node": "runpod"}))
        .send()
        .await
        .expect("pin");
    assert!(r.status().is_success());
    mesh.wait_route("runpod", Duration::from_secs(15)).await;
    client
        .delete(format!("{api}/v1/services/ollama/pin"))
        .send()
        .await
        .expect("unpin");
    mesh.wait_route("aurora", Duration::from_secs(15)).await;
    eventually(Duration::from_secs(10), "released again", || async {
        sshd.session_pids().is_empty()
    })
    .await;

    // A model only RunPod has: the request connects it and is served there.
    let t = std::time::Instant::now();
    let r = client
        .post(format!("http://127.0.0.1:{endpoint}/api/generate"))
        .json(&json!({"model": "llama3.1:405b", "prompt": "hi"}))
        .send()
        .await
        .expect("request");
    eprintln!(
        "a model only the on-demand node has: served by {} after {:?}",
        mesh_tests::served_by(&r),
        t.elapsed()
    );
    assert_eq!(r.status(), 200);
    assert_eq!(mesh_tests::served_by(&r), "runpod");
}

/// Released while a slow request still runs on it: the tunnel says it is being
/// released (so no new request starts there), the request finishes, then the
/// session goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_lets_the_request_in_flight_finish_and_takes_no_new_one() {
    let sshd = Sshd::start();
    let aurora = OllamaStub::start("aurora", &["llama3.2:3b"]).await;
    let runpod = OllamaStub::start("runpod", &["llama3.2:3b"]).await;
    let (mesh, endpoint) = aurora_with_runpod_on_demand(&sshd, &aurora, &runpod).await;
    mesh.wait_route("aurora", Duration::from_secs(10)).await;
    *aurora.fail_with.lock().expect("lock") = Some(500);
    mesh.wait_route("runpod", Duration::from_secs(15)).await;
    // A slow answer on RunPod (4 s to the first token) is under way when aurora returns.
    runpod
        .first_byte_delay_ms
        .store(4_000, std::sync::atomic::Ordering::Relaxed);
    let url = format!("http://127.0.0.1:{endpoint}/api/generate");
    let slow = tokio::spawn({
        let url = url.clone();
        async move {
            let r = mesh_tests::http()
                .post(url)
                .json(&json!({"model": "llama3.2:3b", "prompt": "slow"}))
                .send()
                .await
                .expect("request");
            (
                r.status().as_u16(),
                mesh_tests::served_by(&r),
                r.text().await.unwrap_or_default(),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    *aurora.fail_with.lock().expect("lock") = None;
    mesh.wait_route("aurora", Duration::from_secs(15)).await;
    let (state, _) = mesh
        .wait_state("runpod-ollama", Duration::from_secs(10), |s| {
            s.reason()
                .is_some_and(|r| r.contains("letting the requests on it finish"))
        })
        .await;
    eprintln!("while releasing: {state:?}");
    // New requests go elsewhere meanwhile.
    let r = mesh_tests::http()
        .post(&url)
        .json(&json!({"model": "llama3.2:3b", "prompt": "hi"}))
        .send()
        .await
        .expect("request");
    assert_eq!(mesh_tests::served_by(&r), "aurora");
    let (status, node, body) = slow.await.expect("slow request");
    assert_eq!((status, node.as_str()), (200, "runpod"), "{body}");
    assert!(
        body.contains("\"done\":true"),
        "the slow answer finished: {body}"
    );
    eventually(
        Duration::from_secs(10),
        "the session closed after it",
        || async { sshd.session_pids().is_empty() },
    )
    .await;
}
