//! Keeping tunnels alive against a real sshd: a killed server, a frozen server, a
//! local port that is taken, a remote port that is taken, and a reconnect request.
//! Keepalive is 1 s × 3, so a dead server must be seen within 4 s (+1 s slack).

use std::time::Duration;

use mesh_tests::servers::{echo, http, http_get};
use mesh_tests::sshd::Sshd;
use mesh_tests::{echo_mesh, eventually, free_port, peer_toml, trust, Mesh};
use nix::sys::signal::Signal;
use robbie_mesh::tunnel::TunnelState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DETECT: Duration = Duration::from_secs(5); // interval × (count + 1) + 1 s

async fn echo_once(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got))
        .await
        .map_err(std::io::Error::other)??;
    Ok(got)
}

fn not_up(s: &TunnelState) -> bool {
    !s.is_up()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_sshd_is_detected_and_the_tunnel_comes_back_on_restart() {
    let mut sshd = Sshd::start();
    let (mesh, local) = echo_mesh(&sshd).await;
    assert_eq!(echo_once(local, b"before").await.expect("echo"), b"before");

    sshd.kill();
    let (state, took) = mesh.wait_state("echo", DETECT, not_up).await;
    eprintln!("down after {took:?}: {state:?}");

    sshd.restart();
    mesh.wait_up("echo").await;
    assert_eq!(
        echo_once(local, b"after")
            .await
            .expect("echo after restart"),
        b"after"
    );
    assert!(mesh.tunnel("echo").status().reconnects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frozen_sshd_is_detected_by_keepalive_and_recovers() {
    let sshd = Sshd::start();
    let (mesh, local) = echo_mesh(&sshd).await;
    let frozen = sshd.session_pids();
    assert!(!frozen.is_empty(), "the session has sshd processes");

    // SIGSTOP the session's processes: TCP stays open, nothing answers.
    sshd.signal_sessions(Signal::SIGSTOP);
    let (state, took) = mesh.wait_state("echo", DETECT, not_up).await;
    eprintln!("frozen session noticed after {took:?}: {state:?}");
    let events_reason = format!("{state:?}");
    assert!(
        events_reason.contains("keepalive"),
        "reason names the keepalive: {events_reason}"
    );

    // The listener itself still runs, so a new session comes up; SIGCONT the old one.
    mesh.wait_up("echo").await;
    for p in frozen {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), Signal::SIGCONT);
    }
    assert_eq!(echo_once(local, b"thawed").await.expect("echo"), b"thawed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn taken_local_port_is_a_visible_state_and_is_retried() {
    let sshd = Sshd::start();
    let backend = echo().await;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let local = squatter.local_addr().expect("addr").port();
    let cfg = peer_toml(
        "aurora",
        &sshd,
        &trust(&sshd),
        &format!("[[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"{backend}\"\n"),
    );
    let mesh = Mesh::start(&cfg).await;
    let (state, _) = mesh
        .wait_state("echo", Duration::from_secs(10), |s| {
            s.reason()
                .is_some_and(|r| r.contains("address already in use"))
        })
        .await;
    assert!(matches!(state, TunnelState::Down { .. }), "{state:?}");
    let api = mesh.client().tunnels().await.expect("tunnels");
    assert!(
        api.tunnels[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("already in use")),
        "{api:?}"
    );

    drop(squatter);
    mesh.wait_up("echo").await;
    assert_eq!(echo_once(local, b"free").await.expect("echo"), b"free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_remote_forward_is_visible_and_retried() {
    let sshd = Sshd::start();
    let here = http("book").await;
    // Something on the server side already holds the port sshd is asked to listen on.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let remote = squatter.local_addr().expect("addr").port();
    let cfg = peer_toml(
        "aurora",
        &sshd,
        &trust(&sshd),
        &format!("[[peer.reverse]]\nname = \"api\"\nremote = \"127.0.0.1:{remote}\"\nlocal = \"{here}\"\n"),
    );
    let mesh = Mesh::start(&cfg).await;
    let (state, _) = mesh
        .wait_state("api", Duration::from_secs(10), |s| {
            s.reason().is_some_and(|r| r.contains("refused"))
        })
        .await;
    assert!(matches!(state, TunnelState::Down { .. }), "{state:?}");
    drop(squatter);
    mesh.wait_up("api").await;
    let body = http_get(([127, 0, 0, 1], remote).into(), "/x")
        .await
        .expect("GET through -R");
    assert_eq!(body, "hello from book: /x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_through_the_api() {
    let sshd = Sshd::start();
    let (mesh, _) = echo_mesh(&sshd).await;
    let client = mesh_tests::http();
    let r = client
        .post(format!("http://{}/v1/tunnels/echo/reconnect", mesh.api))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["peer"], "aurora");
    let t = mesh.tunnel("echo");
    eventually(Duration::from_secs(10), "a reconnect", || {
        let t = t.clone();
        async move { t.status().reconnects >= 1 && t.snapshot().state.is_up() }
    })
    .await;
    let e = mesh
        .client()
        .reconnect("nope")
        .await
        .expect_err("no such tunnel");
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("nope"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_foreign_hosts_and_cross_site_posts() {
    let mesh = Mesh::start("node = \"book\"\n").await;
    let client = mesh_tests::http();
    let url = |p: &str| format!("http://{}{p}", mesh.api);
    // DNS rebinding: a page on evil.example resolved to 127.0.0.1.
    let r = client
        .get(url("/v1/tunnels"))
        .header("host", "evil.example:8007")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 403);
    // CSRF: a page posting to the loopback API.
    let r = client
        .post(url("/v1/tunnels/x/reconnect"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    // The same from the dashboard's own origin passes through (404: no such tunnel).
    let r = client
        .post(url("/v1/tunnels/x/reconnect"))
        .header("origin", format!("http://{}", mesh.api))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 404);
    let health = mesh.client().health().await.expect("health");
    assert_eq!(health.mode, robbie_mesh::api::wire::Mode::LocalOnly);
}

/// Slow keepalives (3 s × 5: a frozen server would go unnoticed for 18 s), so the
/// quick detections below can only come from the wake and traffic checks.
async fn slow_keepalive_mesh(sshd: &Sshd, clock: robbie_mesh::tunnel::ClockWatch) -> (Mesh, u16) {
    let backend = echo().await;
    let local = free_port();
    let cfg = mesh_tests::peer_toml_keepalive(
        "aurora",
        sshd,
        &trust(sshd),
        "3s",
        5,
        &format!("[[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"{backend}\"\n"),
    );
    let cfg = robbie_mesh::config::parse(&cfg, "test.toml").expect("config");
    let mesh = Mesh::start_with_clock(cfg, clock).await;
    mesh.wait_up("echo").await;
    (mesh, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wake_from_sleep_rechecks_at_once() {
    let sshd = Sshd::start();
    let clock = robbie_mesh::tunnel::ClockWatch::never();
    let (mesh, local) = slow_keepalive_mesh(&sshd, clock.clone()).await;
    sshd.signal_sessions(Signal::SIGSTOP);
    clock.fire(Duration::from_secs(600));
    let (state, took) = mesh
        .wait_state("echo", Duration::from_secs(6), not_up)
        .await;
    assert!(
        state.reason().is_some_and(|r| r.contains("wall clock")),
        "{state:?}"
    );
    eprintln!("wake noticed in {took:?}");
    sshd.signal_sessions(Signal::SIGCONT);
    mesh.wait_up("echo").await;
    assert_eq!(echo_once(local, b"awake").await.expect("echo"), b"awake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_connection_rechecks_the_session_at_once() {
    let sshd = Sshd::start();
    let (mesh, local) = slow_keepalive_mesh(&sshd, robbie_mesh::tunnel::ClockWatch::never()).await;
    sshd.signal_sessions(Signal::SIGSTOP);
    let start = std::time::Instant::now();
    // The channel open gets no answer within 1 s: the session must prove it is
    // alive within 1 s more, and cannot; the connection ends with it.
    let _ = echo_once(local, b"hello?").await;
    let (state, _) = mesh
        .wait_state("echo", Duration::from_secs(8), not_up)
        .await;
    assert!(
        state
            .reason()
            .is_some_and(|r| r.contains("when traffic through it waited")),
        "{state:?}"
    );
    let took = start.elapsed();
    eprintln!("traffic that waited turned into a reconnect after {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "a frozen peer must be found within about 2 s of the first waiting connection: {took:?}"
    );
    sshd.signal_sessions(Signal::SIGCONT);
    mesh.wait_up("echo").await;
}
