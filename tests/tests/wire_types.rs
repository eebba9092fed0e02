//! The API's answers are the library's types, both ways: what a running service
//! sends deserializes into `robbie_mesh::api` types and serializes back to the
//! very same JSON, so a typed client reads exactly what the dashboard reads.

use mesh_tests::ollama::OllamaStub;
use mesh_tests::{free_port, Mesh};

async fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    url: &str,
) -> serde_json::Value {
    let text = mesh_tests::get(url)
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let sent: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let typed: T = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url}: the answer is not the library's type: {e}\n{text}"));
    let again = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(again, sent, "{url}: a field was lost or renamed on the way");
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_tunnels_answers_round_trip_through_the_typed_api() {
    let sshd = mesh_tests::sshd::Sshd::start();
    let (peer, _) = mesh_tests::echo_peer(&sshd).await;
    let ollama = OllamaStub::start("here", &["llama3.2:3b"]).await;
    let ep = free_port();
    let mesh = Mesh::start(&format!(
        "node = \"here\"\n{peer}\n[[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{ep}\"\n\
         candidates = [ {{ node = \"here\", address = \"{}\" }} ]\n",
        ollama.addr
    ))
    .await;
    mesh.wait_up("echo").await;
    mesh.wait_route("here", std::time::Duration::from_secs(10))
        .await;
    let base = format!("http://{}", mesh.api);
    let status = round_trip::<robbie_mesh::api::Status>(&format!("{base}/v1/status")).await;
    // The parts a client reads are there (not an empty shape that trivially matches).
    assert_eq!(status["tunnels"][0]["state"], "up", "{status}");
    assert_eq!(
        status["services"][0]["candidates"][0]["health"], "online",
        "{status}"
    );
    round_trip::<robbie_mesh::api::TunnelList>(&format!("{base}/v1/tunnels")).await;
    round_trip::<robbie_mesh::api::Health>(&format!("{base}/health")).await;
    mesh.stop().await;
}
