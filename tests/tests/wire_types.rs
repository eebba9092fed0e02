//! The API's answers are the library's types, both ways: what a running service
//! sends deserializes into `robbie_mesh::api::wire` types and serializes back to
//! the very same JSON, so the typed client (`robbie_mesh::client`: the CLI's, the
//! tray's, the harness's) reads exactly what the dashboard reads. The only test
//! that reads answers as untyped JSON: that is what it checks.

use futures_util::StreamExt;
use robbie_mesh::api::wire::{EventKind, Health, NewMessage, Page, TunnelPhase};

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
    let status = round_trip::<robbie_mesh::api::wire::Status>(&format!("{base}/v1/status")).await;
    // The parts a client reads are there (not an empty shape that trivially matches).
    assert_eq!(status["tunnels"][0]["state"], "up", "{status}");
    assert_eq!(
        status["services"][0]["candidates"][0]["health"], "online",
        "{status}"
    );
    round_trip::<robbie_mesh::api::wire::TunnelList>(&format!("{base}/v1/tunnels")).await;
    round_trip::<robbie_mesh::api::wire::HealthReply>(&format!("{base}/health")).await;

    // The typed client reads the same answers.
    let client = mesh.client();
    let typed = client.status().await.expect("status");
    assert_eq!(typed.tunnels[0].state, TunnelPhase::Up);
    assert_eq!(
        typed.services[0].candidates[0].health.health,
        Health::Online
    );
    assert_eq!(client.health().await.expect("health").node, "here");

    // Its event stream: a reconnect is told as the tunnel's new state.
    let mut events = Box::pin(client.events().await.expect("events"));
    let r = client.reconnect("echo").await.expect("reconnect");
    assert_eq!(r.tunnels, ["echo"]);
    let told = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(e) = events.next().await {
            if let EventKind::Tunnel { tunnel, .. } = e.expect("a typed event").kind {
                return tunnel;
            }
        }
        panic!("the event stream ended")
    })
    .await
    .expect("a tunnel event within 10 s");
    assert_eq!(told, "echo");

    // A refusal carries the API's message.
    let e = client.reconnect("nope").await.expect_err("no such tunnel");
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("no tunnel named `nope`"), "{e}");

    // Conversations: what the client writes, it reads back; the raw JSON agrees.
    let c = client.create_conversation("typed").await.expect("create");
    let m = client
        .append_message(
            &c.id,
            &NewMessage {
                role: "user".into(),
                content: "hello".into(),
                model: None,
            },
        )
        .await
        .expect("append");
    let page = client
        .messages(&c.id, &Page::default())
        .await
        .expect("messages");
    assert_eq!(page.len(), 1);
    assert_eq!(
        (page[0].id.as_str(), page[0].content.as_str()),
        (m.id.as_str(), "hello")
    );
    let raw = round_trip::<Vec<robbie_mesh::api::wire::Message>>(&format!(
        "{base}/v1/conversations/{}/messages",
        c.id
    ))
    .await;
    assert_eq!(raw[0]["content"], "hello");
    mesh.stop().await;
}
