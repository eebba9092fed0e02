//! The PostgreSQL endpoint over real tunnels to real servers: `psql` reaches the
//! primary (whatever the priority order says); with the primary stopped it reaches
//! the streaming replica, read-only; with both stopped it gets a clear FATAL error.

use std::time::Duration;

use mesh_tests::postgres::{psql, Postgres};
use mesh_tests::sshd::Sshd;
use mesh_tests::{eventually, free_port, peer_toml, trust, wait_for, Mesh};

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
        let st = mesh.api_get("/v1/status").await;
        let s = &st["services"][0];
        s["route"] == "aurora"
            && s["candidates"][0]["postgres_role"] == "replica"
            && s["candidates"][1]["postgres_role"] == "primary"
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
    let st = mesh.api_get("/v1/status").await;
    assert!(
        st["services"][0]["plan"]["order"][0]["why"]
            .as_str()
            .unwrap_or("")
            .contains("replica (read-only)"),
        "{st}"
    );

    // Nothing left: psql is told why, by a FATAL error.
    drop(replica);
    eventually(Duration::from_secs(15), "no route", || async {
        mesh.api_get("/v1/status").await["services"][0]["route"].is_null()
    })
    .await;
    let (ok, _, err) = q("SELECT 1").await.expect("psql");
    assert!(
        !ok && err.contains("FATAL") && err.contains("no postgres node is up"),
        "{err}"
    );
}
