//! The local store's API on a node with no sync configured (airplane mode from the
//! start): conversations and messages are written and paged, metadata changes, bad
//! requests get clear errors, pending rows are shown, and everything survives a
//! restart of the service.

use mesh_tests::Mesh;
use robbie_mesh::api::wire::{ApiError, ConversationPatch, NewMessage, Page};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_and_messages_are_local_durable_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = format!(
        "node = \"robbiebook1\"\n[store]\npath = \"{}\"\n",
        dir.path().join("book.db").display()
    );
    let mesh = Mesh::start(&cfg).await;
    let api = mesh.client();

    let conv = api.create_conversation("first").await.expect("create");
    let id = conv.id.clone();
    assert_eq!(conv.origin, "robbiebook1");
    for i in 0..25 {
        let m = NewMessage {
            role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
            content: format!("m{i}"),
            model: Some("llama3.2:3b".into()),
        };
        api.append_message(&id, &m).await.expect("append");
    }
    // Pages of 10, oldest first.
    let page = |after: Option<String>| Page {
        after,
        limit: Some(10),
        ..Page::default()
    };
    let p1 = api.messages(&id, &page(None)).await.expect("page 1");
    assert_eq!(p1.len(), 10);
    assert_eq!(p1[0].content, "m0");
    let p2 = api
        .messages(&id, &page(Some(p1[9].id.clone())))
        .await
        .expect("page 2");
    assert_eq!(p2[0].content, "m10");

    // Rename and archive: archived ones are listed only when asked for.
    let patch = ConversationPatch {
        title: Some("renamed".into()),
        archived: Some(true),
    };
    let c = api.update_conversation(&id, &patch).await.expect("patch");
    assert_eq!(c.title, "renamed");
    assert!(c.updated_hlc > conv.updated_hlc, "a later clock stamp");
    let listed = api.conversations(&Page::default()).await.expect("list");
    assert!(listed.is_empty(), "{listed:?}");
    let archived = Page {
        archived: true,
        ..Page::default()
    };
    let listed = api.conversations(&archived).await.expect("list");
    assert_eq!(listed[0].title, "renamed");

    // Bad requests say what is wrong; nothing is written.
    let robot = NewMessage {
        role: "robot".into(),
        content: "x".into(),
        model: None,
    };
    let e = api.append_message(&id, &robot).await.expect_err("a robot");
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("role `robot`"), "{e}");
    let user = NewMessage {
        role: "user".into(),
        content: "x".into(),
        model: None,
    };
    let e = api
        .append_message("nope", &user)
        .await
        .expect_err("no such conversation");
    assert_eq!(e.status(), Some(404), "{e}");
    // A field no type has: sent by hand.
    let r = api
        .request(reqwest::Method::POST, "/v1/conversations")
        .json(&serde_json::json!({"colour": "red"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    let e: ApiError = r.json().await.expect("an error");
    assert!(e.error.contains("colour"), "{}", e.error);

    // Not synced anywhere: all of it pending; sync is off.
    let st = mesh.status().await;
    assert_eq!(st.store.sync.state, robbie_mesh::api::wire::SyncState::Off);
    mesh_tests::eventually(
        std::time::Duration::from_secs(10),
        "pending rows shown",
        || async { mesh.status().await.store.sync.pending == 27 },
    )
    .await;

    // A restart keeps everything.
    mesh.stop().await;
    let mesh = Mesh::start(&cfg).await;
    let api = mesh.client();
    let all = Page {
        limit: Some(1000),
        ..Page::default()
    };
    assert_eq!(api.messages(&id, &all).await.expect("page").len(), 25);
    let c = api.conversation(&id).await.expect("conversation");
    assert_eq!(c.title, "renamed");
}
