//! The mesh-wide inventory: a node learns another node's GPUs from that node's
//! `GET /v1/node` through a tunnel, and routes a model that declares a VRAM need
//! to the node whose GPU is big enough. "vengeance" is the robbie-mesh binary with
//! the GPU seam fed an RTX 4090; this machine (no GPU) plays "book".

use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_tests::ollama::OllamaStub;
use mesh_tests::sshd::Sshd;
use mesh_tests::{eventually, free_port, peer_toml, trust, Mesh};
use robbie_mesh::api::wire::Health;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_model_goes_to_the_node_with_the_big_gpu() {
    // vengeance: its own robbie-mesh, whose nvidia-smi reports a 24 GiB RTX 4090.
    let dir = tempfile::tempdir().expect("tempdir");
    let smi = mesh_tests::fake_nvidia_smi(dir.path(), 0);
    let v_api = free_port();
    let v_cfg = dir.path().join("vengeance.toml");
    std::fs::write(
        &v_cfg,
        format!(
            "node = \"vengeance\"\n[api]\nlisten = \"127.0.0.1:{v_api}\"\n[store]\npath = \"{}\"\n",
            dir.path().join("store.db").display()
        ),
    )
    .expect("write");
    let bin = mesh_tests::workspace_bin("robbie-mesh");
    let mut vengeance = Command::new(bin)
        .args(["run", "--config"])
        .arg(&v_cfg)
        .env("ROBBIE_MESH_NVIDIA_SMI", &smi)
        .stderr(Stdio::null())
        .spawn()
        .expect("robbie-mesh binary (cargo build -p robbie-mesh)");
    mesh_tests::wait_listening(v_api, "the vengeance API");

    // book reaches vengeance's Ollama and API through one SSH server.
    let sshd = Sshd::start();
    let v_ollama = OllamaStub::start("vengeance", &["llama3.1:70b", "llama3.2:3b"]).await;
    let b_ollama = OllamaStub::start("book", &["llama3.1:70b", "llama3.2:3b"]).await;
    let (t_ollama, t_api, endpoint) = (free_port(), free_port(), free_port());
    let cfg = format!(
        "node = \"book\"\nnodes = [{{ node = \"vengeance\", tunnel = \"vengeance-api\" }}]\n{}\n\
         [[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
         vram = {{ \"llama3.1:70b\" = \"20GiB\" }}\n\
         candidates = [{{ node = \"book\", address = \"{}\" }}, {{ node = \"vengeance\", tunnel = \"vengeance-ollama\" }}]\n\
         probe = {{ local_interval = \"200ms\", remote_interval = \"200ms\" }}\n",
        peer_toml(
            "vengeance",
            &sshd,
            &trust(&sshd),
            &format!(
                "[[peer.forward]]\nname = \"vengeance-ollama\"\nlocal = \"127.0.0.1:{t_ollama}\"\nremote = \"{}\"\n\
                 [[peer.forward]]\nname = \"vengeance-api\"\nlocal = \"127.0.0.1:{t_api}\"\nremote = \"127.0.0.1:{v_api}\"\n",
                v_ollama.addr
            ),
        ),
        b_ollama.addr
    );
    let mesh = Mesh::start(&cfg).await;
    eventually(
        Duration::from_secs(15),
        "vengeance's GPU known on book",
        || async {
            let st = mesh.status().await;
            let gpu = st
                .nodes
                .get("vengeance")
                .and_then(|e| e.inventory.as_ref())
                .and_then(|i| i.gpus.first())
                .map(|g| g.name.clone());
            gpu.as_deref() == Some("NVIDIA GeForce RTX 4090")
                && st.services[0].candidates[1].health.health == Health::Online
        },
    )
    .await;

    let ask = |model: &'static str| {
        let url = format!("http://127.0.0.1:{endpoint}/api/generate");
        async move {
            let r = mesh_tests::http()
                .post(url)
                .json(&json!({"model": model, "prompt": "hi"}))
                .send()
                .await
                .expect("request");
            mesh_tests::served_by(&r)
        }
    };
    assert_eq!(
        ask("llama3.2:3b").await,
        "book",
        "no need declared: priority wins"
    );
    assert_eq!(
        ask("llama3.1:70b").await,
        "vengeance",
        "20 GiB needed: only vengeance's GPU has it"
    );
    let st = mesh.status().await;
    let book = st.nodes.get("book").and_then(|e| e.inventory.as_ref());
    assert!(book.is_some_and(|i| i.cpu.cores >= 1), "{book:?}");
    let _ = vengeance.kill();
    let _ = vengeance.wait();
}

/// A node whose API is not up yet when this one first asks (its tunnel came up
/// first, or it is still starting): its hardware is asked for again within
/// seconds, not at the next 30 s refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_api_starts_late_is_known_within_seconds() {
    let port = free_port();
    let mesh = Mesh::start(&format!(
        "node = \"book\"\nnodes = [ {{ node = \"late\", address = \"127.0.0.1:{port}\" }} ]\n"
    ))
    .await;
    eventually(
        Duration::from_secs(10),
        "the first fetch refused",
        || async {
            mesh.status()
                .await
                .nodes
                .get("late")
                .is_some_and(|e| e.error.is_some() && e.inventory.is_none())
        },
    )
    .await;
    // Its API comes up, answering with an inventory (this node's own, renamed).
    let mut inventory = mesh
        .client()
        .node()
        .await
        .expect("GET /v1/node")
        .expect("this node's inventory");
    inventory.node = "late".into();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the late node's port");
    let app = axum::Router::new().route(
        "/v1/node",
        axum::routing::get(move || {
            let inventory = inventory.clone();
            async move { axum::Json(inventory) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let took = eventually(
        Duration::from_secs(20),
        "the late node's inventory",
        || async {
            mesh.status()
                .await
                .nodes
                .get("late")
                .is_some_and(|e| e.inventory.as_ref().is_some_and(|i| i.node == "late"))
        },
    )
    .await;
    assert!(
        took < Duration::from_secs(10),
        "known {took:?} after its API came up"
    );
    mesh.stop().await;
}
