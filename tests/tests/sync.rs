//! The local-first store and its sync with a real PostgreSQL primary through a real
//! tunnel: robbiebook1 writes in airplane mode, and once the tunnel is back its rows
//! reach PostgreSQL exactly once while aurora's rows come down; two nodes that both
//! wrote while apart converge (metadata by clock, every message kept).

use std::time::Duration;

use mesh_tests::api::Api;
use mesh_tests::postgres::{psql, Postgres};
use mesh_tests::sshd::Sshd;
use mesh_tests::{eventually, free_port, peer_toml, trust, Mesh};
use robbie_mesh::api::wire::{Message, Page, SyncState};

/// A node whose store syncs through a `postgres` endpoint: through `sshd`'s tunnel
/// to the primary when given, else straight to it (the hub itself).
fn node_config(node: &str, primary: &Postgres, via: Option<&Sshd>) -> String {
    let endpoint = free_port();
    let (peer, candidate) = match via {
        Some(sshd) => {
            let t = free_port();
            let fwd = format!(
                "[[peer.forward]]\nname = \"aurora-postgres\"\nlocal = \"127.0.0.1:{t}\"\nremote = \"127.0.0.1:{}\"\n",
                primary.port
            );
            (
                peer_toml("aurora", sshd, &trust(sshd), &fwd),
                "{ node = \"aurora\", tunnel = \"aurora-postgres\" }".to_string(),
            )
        }
        None => (
            String::new(),
            format!(
                "{{ node = \"aurora\", address = \"127.0.0.1:{}\" }}",
                primary.port
            ),
        ),
    };
    format!(
        "node = \"{node}\"\n{peer}\n[[service]]\nname = \"postgres\"\nkind = \"postgres\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
         candidates = [{candidate}]\nprobe = {{ local_interval = \"200ms\", remote_interval = \"200ms\" }}\n\
         [store.sync]\nservice = \"postgres\"\ndatabase = \"postgres\"\nuser = \"postgres\"\ninterval = \"1s\"\nretry = \"300ms\"\n"
    )
}

fn pg(port: u16, sql: &str) -> String {
    let (ok, out, err) = psql(port, sql);
    assert!(ok, "{sql}: {err}");
    out
}

async fn migrate(primary: &Postgres) {
    let url = primary.url();
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    assert_eq!(
        robbie_mesh::store::sync::migrate(&mut client)
            .await
            .expect("migrate"),
        (0, robbie_mesh::store::sync::PG_SCHEMA_VERSION)
    );
    assert_eq!(
        robbie_mesh::store::sync::migrate(&mut client)
            .await
            .expect("again"),
        (2, 2),
        "idempotent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn airplane_writes_reach_postgres_exactly_once_and_aurora_rows_come_down() {
    let primary = Postgres::primary();
    migrate(&primary).await;
    let mut sshd = Sshd::start();
    let book = Mesh::start(&node_config("robbiebook1", &primary, Some(&sshd))).await;
    let aurora = Mesh::start(&node_config("aurora", &primary, None)).await;
    let (b, a) = (Api::of(&book), Api::of(&aurora));

    let conv = b.conversation("trip notes").await;
    b.say(&conv, "written online").await;
    b.wait_synced("book's first rows pushed").await;
    assert_eq!(
        pg(primary.port, "SELECT count(*) FROM robbie.messages"),
        "1"
    );

    // Airplane mode: the tunnel is gone; writes still answer at once, locally.
    sshd.kill();
    eventually(Duration::from_secs(10), "sync waiting", || async {
        b.sync_state().await.state == SyncState::Waiting
    })
    .await;
    let mut offline = Vec::new();
    for i in 0..50 {
        offline.push(b.say(&conv, &format!("offline {i}")).await);
    }
    b.rename(&conv, "trip notes (plane)", None).await;
    assert_eq!(
        b.messages(&conv, 7).await.len(),
        51,
        "paged reads see every local row"
    );
    eventually(Duration::from_secs(5), "pending shown", || async {
        b.sync_state().await.pending == 51
    })
    .await;
    assert_eq!(
        pg(primary.port, "SELECT count(*) FROM robbie.messages"),
        "1",
        "nothing left the plane"
    );

    // Meanwhile on aurora.
    let a_conv = a.conversation("from the hub").await;
    for i in 0..5 {
        a.say(&a_conv, &format!("hub {i}")).await;
    }
    a.wait_synced("aurora pushed").await;

    // Landed: the tunnel comes back and sync catches up by itself.
    sshd.restart();
    b.wait_synced("book caught up").await;
    assert_eq!(
        pg(primary.port, "SELECT count(*) FROM robbie.messages"),
        "56"
    );
    assert_eq!(
        pg(
            primary.port,
            "SELECT count(DISTINCT id) FROM robbie.messages"
        ),
        "56",
        "no row twice"
    );
    assert_eq!(
        pg(
            primary.port,
            "SELECT count(*) FROM robbie.messages WHERE node = 'robbiebook1'"
        ),
        "51"
    );
    assert_eq!(
        pg(
            primary.port,
            &format!("SELECT title FROM robbie.conversations WHERE id = '{conv}'")
        ),
        "trip notes (plane)"
    );
    let listed = b.0.conversations(&Page::default()).await.expect("list");
    let titles: Vec<&str> = listed.iter().map(|c| c.title.as_str()).collect();
    assert!(
        titles.contains(&"from the hub"),
        "aurora's conversation came down: {titles:?}"
    );
    let hub_msgs = b.messages(&a_conv, 7).await;
    assert_eq!(hub_msgs.len(), 5, "and its messages");
    assert!(hub_msgs.iter().all(|m| m.node == "aurora"));
    // And book's offline rows reached aurora through the primary.
    eventually(
        Duration::from_secs(10),
        "aurora pulled book's rows",
        || async { a.messages(&conv, 7).await.len() == 51 },
    )
    .await;
    // A second round changes nothing.
    b.sync_now().await;
    b.wait_synced("idle again").await;
    assert_eq!(
        pg(primary.port, "SELECT count(*) FROM robbie.messages"),
        "56"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_apart_converge() {
    let primary = Postgres::primary();
    migrate(&primary).await;
    let mut sshd_b = Sshd::start();
    let mut sshd_v = Sshd::start();
    let book = Mesh::start(&node_config("robbiebook1", &primary, Some(&sshd_b))).await;
    let veng = Mesh::start(&node_config("vengeance", &primary, Some(&sshd_v))).await;
    let (b, v) = (Api::of(&book), Api::of(&veng));

    let conv = b.conversation("shared").await;
    b.wait_synced("pushed").await;
    eventually(Duration::from_secs(10), "vengeance has it", || async {
        v.0.conversation(&conv).await.is_ok_and(|c| c.id == conv)
    })
    .await;

    // Both go offline and both write: messages to the same conversation, and a rename each.
    sshd_b.kill();
    sshd_v.kill();
    for i in 0..10 {
        b.say(&conv, &format!("book {i}")).await;
        v.say(&conv, &format!("vengeance {i}")).await;
    }
    b.rename(&conv, "renamed on book", None).await;
    tokio::time::sleep(Duration::from_millis(5)).await; // vengeance's rename is the later one
    v.rename(&conv, "renamed on vengeance", Some(true)).await;

    sshd_b.restart();
    sshd_v.restart();
    b.wait_synced("book synced").await;
    v.wait_synced("vengeance synced").await;
    // One more round each, so each has pulled what the other pushed last.
    for n in [&b, &v] {
        n.sync_now().await;
    }
    for (api, who) in [(&b, "book"), (&v, "vengeance")] {
        eventually(
            Duration::from_secs(10),
            &format!("{who} converged"),
            || async {
                let c = api.get(&conv).await;
                c.title == "renamed on vengeance"
                    && c.archived
                    && api.messages(&conv, 7).await.len() == 20
            },
        )
        .await;
    }
    let ids = |m: Vec<Message>| m.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(b.messages(&conv, 7).await),
        ids(v.messages(&conv, 7).await),
        "the same messages in the same order"
    );
    assert_eq!(
        pg(primary.port, "SELECT count(*) FROM robbie.messages"),
        "20"
    );
    assert_eq!(
        pg(primary.port, "SELECT title FROM robbie.conversations"),
        "renamed on vengeance"
    );
}

/// The pull fence: a transaction that took its change id early but commits late
/// (after a later one was already pulled) is still received.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_committed_late_with_a_lower_change_id_is_not_skipped() {
    let primary = Postgres::primary();
    migrate(&primary).await;
    let url = primary.url();
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        c
    };
    let (mut early, late) = (connect().await, connect().await);
    let conv = uuid_v7();
    late.execute(
        "INSERT INTO robbie.conversations (id, title, archived, created_at, origin, updated_hlc, title_hlc, archived_hlc, device) \
         VALUES ($1::text::uuid, 'written on aurora', false, 0, 'aurora', '0000000000000001-00000-x', '0000000000000001-00000-x', '0000000000000001-00000-x', 'other-device')",
        &[&conv],
    )
    .await
    .expect("conversation");
    let insert = "INSERT INTO robbie.messages (id, conversation_id, role, content, node, created_at, device) \
                  VALUES ($1::text::uuid, $2::text::uuid, 'user', $3, 'aurora', 0, 'other-device') RETURNING change_id";
    // The early transaction takes the lower change id and stays open...
    let tx = early.transaction().await.expect("begin");
    let low: i64 = tx
        .query_one(insert, &[&uuid_v7(), &conv, &"early"])
        .await
        .expect("insert")
        .get(0);
    // ...while a later one commits a higher id.
    let high: i64 = late
        .query_one(insert, &[&uuid_v7(), &conv, &"late"])
        .await
        .expect("insert")
        .get(0);
    assert!(low < high);

    let mesh = Mesh::start(&node_config("robbiebook1", &primary, None)).await;
    let b = Api::of(&mesh);
    // A full round happens while the early transaction is still open.
    b.wait_synced("a sync round").await;
    let first = b.sync_state().await.last_sync;
    b.sync_now().await;
    eventually(Duration::from_secs(10), "another round", || async {
        b.sync_state().await.last_sync != first
    })
    .await;
    tx.commit().await.expect("commit the early one");
    b.sync_now().await;
    eventually(Duration::from_secs(10), "both rows pulled", || async {
        b.messages(&conv, 7).await.len() == 2
    })
    .await;
    let contents: Vec<String> = b
        .messages(&conv, 7)
        .await
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert!(
        contents.contains(&"early".to_string()) && contents.contains(&"late".to_string()),
        "{contents:?}"
    );
}

fn uuid_v7() -> String {
    // Time-ordered like the devices' own ids.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:08x}-{:04x}-7000-8000-{:012x}", ms >> 16, ms & 0xffff, n)
}
