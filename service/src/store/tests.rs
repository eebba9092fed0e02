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
    let b = s.outbox_batch(100, 1 << 20).await.expect("batch");
    assert_eq!((b.rows, b.conversations.len(), b.messages.len()), (4, 1, 1));
    assert_eq!(b.conversations[0].title, "three");
    // A batch of 2 stops at the second outbox row.
    let b2 = s.outbox_batch(2, 1 << 20).await.expect("batch");
    assert_eq!((b2.rows, b2.messages.len()), (2, 1));
    s.ack(b2.max_seq, Some(b2.max_tag)).await.expect("ack");
    assert_eq!(s.pending().await.expect("pending"), 2);
    s.ack(b.max_seq, Some(b.max_tag)).await.expect("ack");
    assert_eq!(s.pending().await.expect("pending"), 0);
    assert_eq!(s.outbox_batch(100, 1 << 20).await.expect("batch").rows, 0);
}

#[tokio::test]
async fn pulled_metadata_wins_only_with_a_later_stamp_and_messages_are_never_doubled() {
    let (_d, s) = store();
    let c = s.create_conversation("mine").await.expect("create");
    let older = Conversation {
        title: "theirs, older".into(),
        updated_hlc: "0000000000000001-00000-x".into(),
        title_hlc: "0000000000000001-00000-x".into(),
        archived_hlc: "0000000000000001-00000-x".into(),
        ..c.clone()
    };
    s.apply_conversations(vec![older], Some((10, 1)))
        .await
        .expect("apply");
    assert_eq!(s.conversation(&c.id).await.expect("get").title, "mine");
    let newer = Conversation {
        title: "theirs, newer".into(),
        updated_hlc: "9999999999999999-00000-x".into(),
        title_hlc: "9999999999999999-00000-x".into(),
        ..c.clone()
    };
    s.apply_conversations(vec![newer], Some((11, 2)))
        .await
        .expect("apply");
    assert_eq!(
        s.conversation(&c.id).await.expect("get").title,
        "theirs, newer"
    );
    assert_eq!(s.cursor("conversations").await.expect("cursor"), (11, 2));

    let m = s
        .append_message(&c.id, "user", "once".into(), None)
        .await
        .expect("append");
    s.apply_messages(vec![m.clone(), m.clone()], Some((12, 3)), false)
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
    // A NUL PostgreSQL could never store is refused, naming the field.
    for (title, content, model, field) in [
        ("a\0b", "x", None, "title"),
        ("ok", "a\u{0}b", None, "content"),
        ("ok", "x", Some("llama\0"), "model"),
    ] {
        let r = if field == "title" {
            s.create_conversation(title).await.map(drop)
        } else {
            s.append_message(&c.id, "user", content.into(), model.map(String::from))
                .await
                .map(drop)
        };
        match r {
            Err(StoreError::Invalid(why)) => {
                assert!(why.starts_with(field) && why.contains("NUL"), "{why}")
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(
        s.pending().await.expect("pending"),
        1,
        "only the conversation"
    );
}

#[tokio::test]
async fn a_batch_is_capped_by_bytes_but_always_carries_a_row() {
    let (_d, s) = store();
    let c = s.create_conversation("big").await.expect("create");
    for _ in 0..3 {
        s.append_message(&c.id, "assistant", "x".repeat(1 << 20), None)
            .await
            .expect("append");
    }
    // 1 MiB each: a 2.5 MiB cap takes the conversation and two messages.
    let b = s.outbox_batch(100, 5 << 19).await.expect("batch");
    assert_eq!((b.rows, b.messages.len()), (3, 2));
    // A cap below one row still takes one.
    s.ack(1, None).await.expect("ack the conversation");
    let b = s.outbox_batch(100, 10).await.expect("batch");
    assert_eq!((b.rows, b.messages.len()), (1, 1));
}

#[tokio::test]
async fn a_rename_and_an_archive_from_two_devices_both_survive() {
    let (_d, s) = store();
    let c = s.create_conversation("first").await.expect("create");
    // Another device archived it later than our rename; we renamed after that.
    let archived_elsewhere = Conversation {
        archived: true,
        archived_hlc: "9999999999999990-00000-other".into(),
        updated_hlc: "9999999999999990-00000-other".into(),
        ..c.clone()
    };
    let renamed = s
        .update_conversation(&c.id, Some("renamed here".into()), None)
        .await
        .expect("rename");
    s.apply_conversations(vec![archived_elsewhere], Some((1, 1)))
        .await
        .expect("apply");
    let now = s.conversation(&c.id).await.expect("get");
    assert_eq!((now.title.as_str(), now.archived), ("renamed here", true));
    assert_eq!(now.title_hlc, renamed.title_hlc);
    // A local edit after that is stamped above the row, whatever our clock says.
    let again = s
        .update_conversation(&c.id, None, Some(false))
        .await
        .expect("unarchive");
    assert!(
        again.archived_hlc > now.archived_hlc,
        "{} > {}",
        again.archived_hlc,
        now.archived_hlc
    );
}

#[tokio::test]
async fn a_pulled_page_leaves_the_connection_durable_and_the_log_is_checkpointed_aside() {
    let (d, s) = store();
    let c = s.create_conversation("big").await.expect("create");
    let db = d.path().join("s.db");
    let before = std::fs::metadata(&db).expect("db").len();
    // About 6 MiB in one pulled page: more than the 1 000-page threshold.
    let rows: Vec<Message> = (0..750)
        .map(|i| Message {
            id: uuid::Uuid::now_v7().to_string(),
            conversation_id: c.id.clone(),
            role: "assistant".into(),
            content: format!("{i}:{}", "x".repeat(8 * 1024)),
            model: None,
            node: "aurora".into(),
            created_at: i,
        })
        .collect();
    s.apply_messages(rows, Some((5, 1)), false)
        .await
        .expect("apply");
    let sync: i64 = s
        .with_blocking(|c| c.query_row("PRAGMA synchronous", [], |r| r.get(0)))
        .expect("pragma");
    assert_eq!(
        sync, 2,
        "the connection is back to synchronous=FULL for local writes"
    );
    // Only a checkpoint writes the database file itself: the thread does it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = std::fs::metadata(&db).expect("db").len();
        if now > before + 4 * 1024 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint: database file {before} -> {now} bytes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.messages(&c.id, None, 1000).await.expect("messages").len(),
        750
    );
}

/// The store holds conversations: under the usual umask (022) its directory is
/// created 0700 and the database and its WAL 0600; an existing store others
/// could read is made private on open.
#[tokio::test]
async fn the_store_is_its_owners_alone_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new").join("store.db");
    let s = Store::open(&path, "book").expect("open");
    s.create_conversation("secret").await.expect("write");
    assert_eq!(mode(path.parent().expect("dir")), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("new").join("store.db-wal")), 0o600);
    drop(s);

    let old = dir.path().join("old.db");
    std::fs::write(&old, b"").expect("write");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    Store::open(&old, "book").expect("open");
    assert_eq!(mode(&old), 0o600, "made private");
}

#[tokio::test]
async fn a_closed_store_is_one_file_that_a_copy_carries_whole_and_later_calls_fail() {
    let (dir, s) = store();
    let c = s.create_conversation("kept").await.expect("create");
    for i in 0..50 {
        s.append_message(&c.id, "user", format!("m{i}"), None)
            .await
            .expect("append");
    }
    let other = s.clone();
    s.close().expect("close");
    s.close().expect("a second close does nothing");
    let wal = dir.path().join("s.db-wal");
    assert!(
        std::fs::metadata(&wal)
            .map(|m| m.len() == 0)
            .unwrap_or(true),
        "the log was checkpointed into the file"
    );
    assert!(matches!(
        other.create_conversation("late").await,
        Err(StoreError::Closed(_))
    ));
    // The database file alone, as a backup tool would copy it.
    let copy = dir.path().join("copy.db");
    std::fs::copy(dir.path().join("s.db"), &copy).expect("copy");
    let back = Store::open(&copy, "book").expect("open the copy");
    let n: i64 = back
        .with_blocking(|c| c.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)))
        .expect("count");
    assert_eq!(n, 50);
}
