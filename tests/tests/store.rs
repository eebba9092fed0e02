//! The local store's API on a node with no sync configured (airplane mode from the
//! start): conversations and messages are written and paged, metadata changes, bad
//! requests get clear errors, pending rows are shown, and everything survives a
//! restart of the service.

use mesh_tests::Mesh;
use serde_json::{json, Value};

async fn call(
    mesh: &Mesh,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = mesh_tests::http().request(method, format!("http://{}{path}", mesh.api));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_and_messages_are_local_durable_and_checked() {
    use reqwest::Method;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = format!(
        "node = \"robbiebook1\"\n[store]\npath = \"{}\"\n",
        dir.path().join("book.db").display()
    );
    let mesh = Mesh::start(&cfg).await;

    let (code, conv) = call(
        &mesh,
        Method::POST,
        "/v1/conversations",
        Some(json!({"title": "first"})),
    )
    .await;
    assert_eq!(code, 201, "{conv}");
    let id = conv["id"].as_str().expect("id").to_string();
    assert_eq!(conv["origin"], "robbiebook1");
    for i in 0..25 {
        let (code, m) = call(&mesh, Method::POST, &format!("/v1/conversations/{id}/messages"), Some(json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("m{i}"), "model": "llama3.2:3b"}))).await;
        assert_eq!(code, 201, "{m}");
    }
    // Pages of 10, oldest first.
    let (_, p1) = call(
        &mesh,
        Method::GET,
        &format!("/v1/conversations/{id}/messages?limit=10"),
        None,
    )
    .await;
    let p1 = p1.as_array().expect("page").clone();
    assert_eq!(p1.len(), 10);
    assert_eq!(p1[0]["content"], "m0");
    let after = p1[9]["id"].as_str().expect("id");
    let (_, p2) = call(
        &mesh,
        Method::GET,
        &format!("/v1/conversations/{id}/messages?limit=10&after={after}"),
        None,
    )
    .await;
    assert_eq!(p2[0]["content"], "m10");

    // Rename and archive: archived ones are listed only when asked for.
    let (code, c) = call(
        &mesh,
        Method::PATCH,
        &format!("/v1/conversations/{id}"),
        Some(json!({"title": "renamed", "archived": true})),
    )
    .await;
    assert_eq!((code, c["title"].as_str()), (200, Some("renamed")));
    assert!(
        c["updated_hlc"].as_str() > conv["updated_hlc"].as_str(),
        "a later clock stamp"
    );
    let (_, listed) = call(&mesh, Method::GET, "/v1/conversations", None).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(0));
    let (_, listed) = call(&mesh, Method::GET, "/v1/conversations?archived=true", None).await;
    assert_eq!(listed[0]["title"], "renamed");

    // Bad requests say what is wrong; nothing is written.
    let (code, e) = call(
        &mesh,
        Method::POST,
        &format!("/v1/conversations/{id}/messages"),
        Some(json!({"role": "robot", "content": "x"})),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("role `robot`")),
        "{e}"
    );
    let (code, e) = call(
        &mesh,
        Method::POST,
        "/v1/conversations/nope/messages",
        Some(json!({"role": "user", "content": "x"})),
    )
    .await;
    assert_eq!(code, 404, "{e}");
    let (code, e) = call(
        &mesh,
        Method::POST,
        "/v1/conversations",
        Some(json!({"colour": "red"})),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("colour")),
        "{e}"
    );

    // Not synced anywhere: all of it pending; sync is off.
    let st = mesh.api_get("/v1/status").await;
    assert_eq!(st["store"]["sync"]["state"], "off");
    mesh_tests::eventually(
        std::time::Duration::from_secs(10),
        "pending rows shown",
        || async { mesh.api_get("/v1/status").await["store"]["sync"]["pending"] == 27 },
    )
    .await;

    // A restart keeps everything.
    mesh.stop().await;
    let mesh = Mesh::start(&cfg).await;
    let (_, page) = call(
        &mesh,
        Method::GET,
        &format!("/v1/conversations/{id}/messages?limit=1000"),
        None,
    )
    .await;
    assert_eq!(page.as_array().map(Vec::len), Some(25));
    let (_, c) = call(&mesh, Method::GET, &format!("/v1/conversations/{id}"), None).await;
    assert_eq!(c["title"], "renamed");
}
