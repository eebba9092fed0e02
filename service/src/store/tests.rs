//! The store's own rules, without PostgreSQL: what a batch carries, what an ack
//! removes, and last-writer-wins when rows come back from the primary.

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&dir.path().join("s.db"), "book").expect("open");
    (dir, s)
}

#[tokio::test]
async fn a_batch_carries_a_conversation_once_in_its_latest_state_and_an_ack_empties_it() {
    let (_d, s) = store();
    let c = s.create_conversation("one").await.expect("create");
    s.append_message(&c.id, "user", "hi".into(), None)
        .await
        .expect("append");
    s.update_conversation(&c.id, Some("two".into()), None)
        .await
        .expect("rename");
    s.update_conversation(&c.id, Some("three".into()), None)
        .await
        .expect("rename");
    assert_eq!(s.pending().await.expect("pending"), 4);
    let b = s.outbox_batch(100).await.expect("batch");
    assert_eq!((b.rows, b.conversations.len(), b.messages.len()), (4, 1, 1));
    assert_eq!(b.conversations[0].title, "three");
    // A batch of 2 stops at the second outbox row.
    let b2 = s.outbox_batch(2).await.expect("batch");
    assert_eq!((b2.rows, b2.messages.len()), (2, 1));
    s.ack(b2.max_seq).await.expect("ack");
    assert_eq!(s.pending().await.expect("pending"), 2);
    s.ack(b.max_seq).await.expect("ack");
    assert_eq!(s.pending().await.expect("pending"), 0);
    assert_eq!(s.outbox_batch(100).await.expect("batch").rows, 0);
}

#[tokio::test]
async fn pulled_metadata_wins_only_with_a_later_stamp_and_messages_are_never_doubled() {
    let (_d, s) = store();
    let c = s.create_conversation("mine").await.expect("create");
    let older = Conversation {
        title: "theirs, older".into(),
        updated_hlc: "0000000000000001-00000-x".into(),
        ..c.clone()
    };
    s.apply_conversations(vec![older], ("10".into(), 1))
        .await
        .expect("apply");
    assert_eq!(s.conversation(&c.id).await.expect("get").title, "mine");
    let newer = Conversation {
        title: "theirs, newer".into(),
        updated_hlc: "9999999999999999-00000-x".into(),
        ..c.clone()
    };
    s.apply_conversations(vec![newer], ("11".into(), 2))
        .await
        .expect("apply");
    assert_eq!(
        s.conversation(&c.id).await.expect("get").title,
        "theirs, newer"
    );
    assert_eq!(
        s.cursor("conversations").await.expect("cursor"),
        ("11".to_string(), 2)
    );

    let m = s
        .append_message(&c.id, "user", "once".into(), None)
        .await
        .expect("append");
    s.apply_messages(vec![m.clone(), m.clone()], ("12".into(), 3))
        .await
        .expect("apply");
    assert_eq!(s.messages(&c.id, None, 100).await.expect("list").len(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_written() {
    let (_d, s) = store();
    let c = s.create_conversation("x").await.expect("create");
    assert!(matches!(
        s.append_message(&c.id, "robot", "x".into(), None).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(
        matches!(s.append_message("nope", "user", "x".into(), None).await, Err(StoreError::NoConversation(id)) if id == "nope")
    );
    assert!(matches!(
        s.create_conversation(&"t".repeat(MAX_TITLE + 1)).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        s.pending().await.expect("pending"),
        1,
        "only the conversation"
    );
}
