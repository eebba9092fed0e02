//! The PostgreSQL endpoint over real tunnels to real servers: `psql` reaches the
//! primary (whatever the priority order says); with the primary stopped it reaches
//! the streaming replica, read-only; with both stopped it gets a clear FATAL error.

use std::time::Duration;

use mesh_tests::postgres::{psql, Postgres};
use mesh_tests::sshd::Sshd;
use mesh_tests::{eventually, free_port, peer_toml, trust, wait_for, Mesh};
use robbie_mesh::api::wire::{PgRole, SyncState};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psql_reaches_the_primary_then_the_replica() {
    // Blocking set-up, before anything async runs.
    let mut primary = Postgres::primary();
    assert!(psql(primary.port, "CREATE TABLE notes (t text)").0);
    let replica = Postgres::replica_of(&primary);

    let sshd = Sshd::start();
    let (t_primary, t_replica, endpoint) = (free_port(), free_port(), free_port());
    // The replica's node is listed first: the role decides, not the priority.
    let cfg = format!(
        "node = \"vengeance\"\n{}\n[[service]]\nname = \"postgres\"\nkind = \"postgres\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
         candidates = [{{ node = \"vengeance\", tunnel = \"replica\" }}, {{ node = \"aurora\", tunnel = \"primary\" }}]\n\
         probe = {{ local_interval = \"200ms\", remote_interval = \"200ms\" }}\n",
        peer_toml(
            "aurora",
            &sshd,
            &trust(&sshd),
            &format!(
                "[[peer.forward]]\nname = \"primary\"\nlocal = \"127.0.0.1:{t_primary}\"\nremote = \"127.0.0.1:{}\"\n\
                 [[peer.forward]]\nname = \"replica\"\nlocal = \"127.0.0.1:{t_replica}\"\nremote = \"127.0.0.1:{}\"\n",
                primary.port, replica.port
            ),
        )
    );
    let mesh = Mesh::start(&cfg).await;
    eventually(Duration::from_secs(15), "route to the primary", || async {
        let st = mesh.status().await;
        let s = &st.services[0];
        s.route.as_deref() == Some("aurora")
            && s.candidates[0].postgres_role == Some(PgRole::Replica)
            && s.candidates[1].postgres_role == Some(PgRole::Primary)
    })
    .await;

    let q = move |sql: &'static str| tokio::task::spawn_blocking(move || psql(endpoint, sql));
    let (ok, out, err) = q("SELECT pg_is_in_recovery()").await.expect("psql");
    assert!(ok, "{err}");
    assert_eq!(out, "f", "through the endpoint: the primary");
    let (ok, _, err) = q("INSERT INTO notes VALUES ('written through robbie-mesh')")
        .await
        .expect("psql");
    assert!(ok, "{err}");
    // Streaming replication carries it to the replica.
    let rport = replica.port;
    wait_for(
        mesh_tests::DEADLINE,
        || psql(rport, "SELECT count(*) FROM notes").1 == "1",
        || "replica never saw the row".into(),
    );

    // The primary stops: the endpoint serves the replica, read-only, and says so.
    tokio::task::spawn_blocking(move || {
        primary.stop();
        primary
    })
    .await
    .expect("stop");
    mesh.wait_route("vengeance", Duration::from_secs(15)).await;
    let (ok, out, err) = q("SELECT pg_is_in_recovery(), count(*) FROM notes")
        .await
        .expect("psql");
    assert!(ok, "{err}\nreplica log:\n{}", replica.log());
    assert_eq!(out, "t|1", "the replica, with the row");
    let (ok, _, err) = q("INSERT INTO notes VALUES ('x')").await.expect("psql");
    assert!(!ok && err.contains("read-only"), "{err}");
    let st = mesh.status().await;
    let plan = &st.services[0].plan;
    assert!(
        plan.order
            .first()
            .is_some_and(|c| c.why.contains("replica (read-only)")),
        "{plan:?}"
    );

    // Nothing left: psql is told why, by a FATAL error.
    drop(replica);
    eventually(Duration::from_secs(15), "no route", || async {
        mesh.route().await.is_none()
    })
    .await;
    let (ok, _, err) = q("SELECT 1").await.expect("psql");
    assert!(
        !ok && err.contains("FATAL") && err.contains("no postgres node is up"),
        "{err}"
    );
}

/// The primary comes back: new connections go to it after the hold-down, and a
/// connection left open on the replica (a pool's) is closed at its next idle
/// moment — never inside a transaction — so the client reconnects to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_leave_the_replica_when_the_primary_is_back() {
    let mut primary = Postgres::primary();
    assert!(psql(primary.port, "CREATE TABLE notes (t text)").0);
    mesh_tests::postgres::migrate(&mesh_tests::workspace_bin("robbie-mesh"), &primary.url());
    let replica = Postgres::replica_of(&primary);
    let sshd = Sshd::start();
    let (t_primary, t_replica, endpoint) = (free_port(), free_port(), free_port());
    let cfg = format!(
        "node = \"vengeance\"\n{}\n[store.sync]\nservice = \"postgres\"\ndatabase = \"postgres\"\nuser = \"postgres\"\n\
         interval = \"1s\"\nretry = \"300ms\"\n\
         [[service]]\nname = \"postgres\"\nkind = \"postgres\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
         hold_down = \"2s\"\n\
         candidates = [{{ node = \"aurora\", tunnel = \"primary\" }}, {{ node = \"vengeance\", tunnel = \"replica\" }}]\n\
         probe = {{ local_interval = \"200ms\", remote_interval = \"200ms\" }}\n",
        peer_toml(
            "aurora",
            &sshd,
            &trust(&sshd),
            &format!(
                "[[peer.forward]]\nname = \"primary\"\nlocal = \"127.0.0.1:{t_primary}\"\nremote = \"127.0.0.1:{}\"\n\
                 [[peer.forward]]\nname = \"replica\"\nlocal = \"127.0.0.1:{t_replica}\"\nremote = \"127.0.0.1:{}\"\n",
                primary.port, replica.port
            ),
        )
    );
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_route("aurora", Duration::from_secs(15)).await;
    let mut primary = tokio::task::spawn_blocking(move || {
        primary.stop();
        primary
    })
    .await
    .expect("stop");
    mesh.wait_route("vengeance", Duration::from_secs(15)).await;

    // A conversation written meanwhile waits for the primary (sync reads the replica).
    let conv = mesh
        .client()
        .create_conversation("while the primary was away")
        .await
        .expect("create");
    eventually(
        Duration::from_secs(10),
        "sync waiting with the row pending",
        || async {
            let s = mesh.status().await.store.sync;
            s.state == SyncState::Waiting && s.pending == 1
        },
    )
    .await;

    // A pooled connection, opened while only the replica is there.
    let url = format!("host=127.0.0.1 port={endpoint} user=postgres dbname=postgres");
    let (pooled, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect through the endpoint");
    tokio::spawn(conn);
    let on_replica: bool = pooled
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("query")
        .get(0);
    assert!(on_replica);
    // It is inside a transaction when the primary returns: it must not be cut then.
    pooled.batch_execute("BEGIN").await.expect("begin");

    let primary = tokio::task::spawn_blocking(move || {
        primary.start();
        primary
    })
    .await
    .expect("start");
    let back = std::time::Instant::now();
    mesh.wait_route("aurora", Duration::from_secs(15)).await;
    let rerouted = back.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t,): (i64,) = (pooled
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .expect("the open transaction goes on")
        .get(0),);
    assert_eq!(t, 0);
    pooled.batch_execute("COMMIT").await.expect("commit");
    // Idle now: it is closed with 57P01, and the next connection is on the primary.
    let closed = eventually(
        Duration::from_secs(5),
        "the pooled connection closed",
        || async { pooled.is_closed() || pooled.query_one("SELECT 1", &[]).await.is_err() },
    )
    .await;
    let (fresh, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("reconnect");
    tokio::spawn(conn);
    let on_replica: bool = fresh
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("query")
        .get(0);
    eprintln!("primary back: route moved after {rerouted:?}, the idle pooled connection closed {closed:?} after its commit");
    assert!(!on_replica, "the new connection is on the primary");
    fresh
        .batch_execute("INSERT INTO notes VALUES ('after the failback')")
        .await
        .expect("writable again");
    // And sync went back to the primary by itself and pushed the pending row.
    let id = conv.id;
    let port = primary.port;
    eventually(
        Duration::from_secs(15),
        "the pending row on the primary",
        || async {
            let id = id.clone();
            tokio::task::spawn_blocking(move || {
                psql(
                    port,
                    &format!("SELECT count(*) FROM robbie.conversations WHERE id = '{id}'"),
                )
                .1 == "1"
            })
            .await
            .unwrap_or(false)
        },
    )
    .await;
    drop((primary, replica));
}
