//! An investigation, not part of the suite (`--ignored`): the round trips of a
//! pull (a repeatable-read transaction of a few small queries) through the
//! PostgreSQL endpoint and a tunnel, timed one by one, to find where a ~40 ms
//! stall comes from. `MESH_PULL_ROUNDS` rounds (default 200).

use std::time::{Duration, Instant};

use mesh_tests::postgres::Postgres;
use mesh_tests::sshd::Sshd;
use mesh_tests::{free_port, peer_toml, trust, Mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "an investigation: run with --ignored --nocapture"]
async fn pull_round_trips_through_the_tunnel() {
    let primary = Postgres::primary();
    let sshd = Sshd::start();
    let (tunnel, endpoint) = (free_port(), free_port());
    let cfg = format!(
        "node = \"book\"\n{}\n[[service]]\nname = \"postgres\"\nkind = \"postgres\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
         candidates = [{{ node = \"aurora\", tunnel = \"pg\" }}]\n",
        peer_toml(
            "aurora",
            &sshd,
            &trust(&sshd),
            &format!("[[peer.forward]]\nname = \"pg\"\nlocal = \"127.0.0.1:{tunnel}\"\nremote = \"127.0.0.1:{}\"\n", primary.port)
        )
    );
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_route("aurora", Duration::from_secs(15)).await;
    let rounds: usize = mesh_tests::env_or("MESH_PULL_ROUNDS", 200);
    // OpenSSH's ssh -L to the same sshd, for comparison.
    let olocal = free_port();
    let mut ssh = sshd
        .openssh(
            "127.0.0.1",
            sshd.addr().port(),
            &trust(&sshd),
            &[
                "-L".to_string(),
                format!("{olocal}:127.0.0.1:{}", primary.port),
            ],
        )
        .spawn()
        .expect("ssh");
    mesh_tests::wait_listening(olocal, "ssh -L");
    for (label, port) in [
        ("direct", primary.port),
        ("endpoint+tunnel", endpoint),
        ("tunnel alone", tunnel),
        ("openssh -L", olocal),
    ] {
        let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
        let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let mut times = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .expect("begin");
            let _: i64 = tx
                .query_one(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8",
                    &[],
                )
                .await
                .expect("fence")
                .get(0);
            // The pull's shape: 1000 keys, then the rows by a 1000-id parameter.
            let keys: Vec<String> = tx
                .query("SELECT md5(g::text) FROM generate_series(1, 1000) g", &[])
                .await
                .expect("keys")
                .iter()
                .map(|r| r.get(0))
                .collect();
            let _ = tx
                .query(
                    "SELECT k, repeat('x', 60) FROM unnest($1::text[]) AS k",
                    &[&keys],
                )
                .await
                .expect("rows");
            tx.commit().await.expect("commit");
            times.push(t.elapsed());
        }
        times.sort();
        let slow = times
            .iter()
            .filter(|t| **t > Duration::from_millis(30))
            .count();
        eprintln!(
            "{label}: {rounds} pull-shaped rounds: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}; {slow} over 30 ms",
            times[rounds / 2],
            times[rounds * 9 / 10],
            times[rounds * 99 / 100],
            times[rounds - 1]
        );
    }
    let _ = ssh.kill();
    let _ = ssh.wait();
}

/// An investigation too: whether a request at a person's pace reuses the warm
/// upstream connection (no new channel through the tunnel).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "an investigation: run with --ignored --nocapture"]
async fn a_paced_request_reuses_the_warm_connection() {
    let sshd = Sshd::start();
    let stub = mesh_tests::ollama::OllamaStub::start("aurora", &["llama3.2:3b"]).await;
    let link = mesh_tests::delay::DelayProxy::start(sshd.addr(), Duration::from_millis(10)).await;
    let known = sshd.dir.path().join("kh_far");
    std::fs::write(
        &known,
        format!("{}\n", sshd.known_hosts_line_via(link.addr.port())),
    )
    .expect("kh");
    let (tunnel, endpoint) = (free_port(), free_port());
    let cfg = format!(
        "node = \"book\"\n[[peer]]\nname = \"aurora\"\nssh = \"{}@127.0.0.1:{}\"\nidentity = [\"{}\"]\nknown_hosts = \"{}\"\n\
         [[peer.forward]]\nname = \"t\"\nlocal = \"127.0.0.1:{tunnel}\"\nremote = \"{}\"\n\
         [[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
         candidates = [{{ node = \"aurora\", tunnel = \"t\" }}]\n",
        mesh_tests::whoami(), link.addr.port(), sshd.client_key.private.display(), known.display(), stub.addr
    );
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_route("aurora", Duration::from_secs(15)).await;
    let total =
        || async { mesh.client().tunnels().await.expect("tunnels").tunnels[0].connections_total };
    for i in 0..4 {
        let before = total().await;
        let fresh = mesh_tests::http_builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let t = Instant::now();
        let r = fresh
            .post(format!("http://127.0.0.1:{endpoint}/api/chat"))
            .json(&serde_json::json!({"model": "llama3.2:3b", "messages": [], "stream": true}))
            .send()
            .await
            .expect("chat");
        let _ = r.bytes().await;
        eprintln!(
            "request {i}: {:?}, new channels {}",
            t.elapsed(),
            total().await - before
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
}
