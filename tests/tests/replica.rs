//! The desktop replica over a tunnel: `robbie-mesh db replica init --from aurora`
//! bootstraps a real streaming standby through the mesh's tunnel to the primary; a
//! write on the primary shows up on it; with the tunnel cut it keeps serving reads
//! and its status says it is disconnected; healed, it catches up by itself; with
//! the primary stopped, psql through the PostgreSQL endpoint gets it, read-only.

use std::time::Duration;

use mesh_tests::postgres::{as_postgres, psql, Postgres};
use mesh_tests::sshd::Sshd;
use mesh_tests::{eventually, free_port, peer_toml, trust, wait_for, Mesh, DEADLINE};
use robbie_mesh::api::wire::ReplicaState;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_bootstrapped_through_the_tunnel_streams_survives_a_cut_and_catches_up() {
    let mut primary = Postgres::primary();
    assert!(
        psql(
            primary.port,
            "CREATE TABLE notes (t text); INSERT INTO notes VALUES ('before the copy')"
        )
        .0
    );
    let mut sshd = Sshd::start();
    let (tunnel, endpoint) = (free_port(), free_port());
    let (dir, data) = Postgres::new_dir();
    let replica_port = free_port();

    // vengeance: aurora's primary through the tunnel, its own standby second.
    let fwd = format!("[[peer.forward]]\nname = \"aurora-postgres\"\nlocal = \"127.0.0.1:{tunnel}\"\nremote = \"127.0.0.1:{}\"\n", primary.port);
    let service = |aurora: &str| {
        format!(
            "[[service]]\nname = \"postgres\"\nkind = \"postgres\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
             candidates = [{aurora}, {{ node = \"vengeance\", address = \"127.0.0.1:{replica_port}\" }}]\n\
             probe = {{ local_interval = \"200ms\", remote_interval = \"200ms\" }}\n"
        )
    };
    let cfg = format!(
        "node = \"vengeance\"\n{}\n{}[store.replica]\naddress = \"127.0.0.1:{replica_port}\"\n",
        peer_toml("aurora", &sshd, &trust(&sshd), &fwd),
        service("{ node = \"aurora\", tunnel = \"aurora-postgres\" }")
    );
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_up("aurora-postgres").await;

    // The init command runs as the postgres user, who owns the data directory; its
    // config names aurora by the tunnel's local end.
    let init_cfg = dir.path().join("vengeance.toml");
    std::fs::write(
        &init_cfg,
        format!(
            "node = \"vengeance\"\n{}",
            service(&format!(
                "{{ node = \"aurora\", address = \"127.0.0.1:{tunnel}\" }}"
            ))
        ),
    )
    .expect("config");
    std::fs::set_permissions(
        &init_cfg,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let bin = mesh_tests::workspace_bin("robbie-mesh");
    let (init_cfg2, data2) = (init_cfg.clone(), data.clone());
    let out = tokio::task::spawn_blocking(move || {
        as_postgres(&bin)
            .args([
                "db",
                "replica",
                "init",
                "--from",
                "aurora",
                "--user",
                "postgres",
                "--data-dir",
            ])
            .arg(&data2)
            .arg("--config")
            .arg(&init_cfg2)
            .output()
    })
    .await
    .expect("join")
    .expect("robbie-mesh db replica init");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "db replica init failed:\n{stderr}");
    assert!(
        stderr.contains(&format!("through 127.0.0.1:{tunnel}"))
            && stderr.contains("slot robbie_vengeance"),
        "{stderr}"
    );
    let conninfo = std::fs::read_to_string(data.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(
        conninfo.contains(&format!("port={tunnel}")),
        "streams through the tunnel: {conninfo}"
    );
    let replica = tokio::task::spawn_blocking(move || Postgres::standby(dir, data, replica_port))
        .await
        .expect("join");
    assert_eq!(psql(replica.port, "SELECT pg_is_in_recovery()").1, "t");
    assert_eq!(
        psql(replica.port, "SELECT t FROM notes").1,
        "before the copy"
    );
    // The slot exists on the primary.
    assert_eq!(
        psql(
            primary.port,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'robbie_vengeance'"
        )
        .1,
        "1"
    );

    let rport = replica.port;
    let count = move || psql(rport, "SELECT count(*) FROM notes").1;
    // A write on the primary streams over.
    assert!(psql(primary.port, "INSERT INTO notes VALUES ('streamed')").0);
    wait_for(
        DEADLINE,
        || count() == "2",
        || "the replica never saw the write".into(),
    );
    let st = |m: &Mesh| {
        let m = m.api.to_string();
        async move {
            mesh_tests::client(m)
                .status()
                .await
                .expect("status")
                .store
                .replica
                .unwrap_or_default()
        }
    };
    eventually(
        Duration::from_secs(10),
        "replica streaming with no lag",
        || async {
            let r = st(&mesh).await;
            r.state == ReplicaState::Streaming && r.lag_bytes == Some(0)
        },
    )
    .await;

    // The tunnel is cut: reads go on, status says disconnected, writes pile up on the primary.
    sshd.kill();
    eventually(Duration::from_secs(15), "replica disconnected", || async {
        st(&mesh).await.state == ReplicaState::Disconnected
    })
    .await;
    for i in 0..20 {
        assert!(
            psql(
                primary.port,
                &format!("INSERT INTO notes VALUES ('during the cut {i}')")
            )
            .0
        );
    }
    assert_eq!(
        tokio::task::spawn_blocking(count).await.expect("join"),
        "2",
        "still serving reads, behind"
    );

    // Healed: it catches up by itself.
    sshd.restart();
    let caught_up = std::time::Instant::now();
    let c2 = count;
    tokio::task::spawn_blocking(move || {
        wait_for(
            Duration::from_secs(30),
            || c2() == "22",
            || "the replica never caught up".into(),
        )
    })
    .await
    .expect("join");
    eprintln!(
        "caught up {:?} after the tunnel came back",
        caught_up.elapsed()
    );
    eventually(Duration::from_secs(10), "streaming again", || async {
        st(&mesh).await.state == ReplicaState::Streaming
    })
    .await;

    // The primary stops: psql through the endpoint gets the replica, read-only.
    primary.stop();
    mesh.wait_route("vengeance", Duration::from_secs(15)).await;
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        psql(endpoint, "SELECT pg_is_in_recovery(), count(*) FROM notes")
    })
    .await
    .expect("join");
    assert!(ok, "{err}");
    assert_eq!(out, "t|22");
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || psql(endpoint, "INSERT INTO notes VALUES ('x')"))
            .await
            .expect("join");
    assert!(!ok && err.contains("read-only"), "{err}");
}
