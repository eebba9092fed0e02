//! `-L` and `-R` forwards against a real sshd: HTTP end to end, many concurrent
//! connections with every byte checked, half-close, and the API's view of it.

use std::time::Duration;

use mesh_tests::servers::{http, http_get};
use mesh_tests::sshd::Sshd;
use mesh_tests::{echo_mesh, free_port, peer_toml, trust, Mesh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_forward_carries_http() {
    let sshd = Sshd::start();
    let backend = http("aurora").await;
    let local = free_port();
    let cfg = peer_toml(
        "aurora",
        &sshd,
        &trust(&sshd),
        &format!("[[peer.forward]]\nname = \"web\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"{backend}\"\n"),
    );
    let mesh = Mesh::start(&format!("node = \"book\"\n{cfg}")).await;
    mesh.wait_up("web").await;

    let body = http_get(([127, 0, 0, 1], local).into(), "/api/tags")
        .await
        .expect("GET through -L");
    assert_eq!(body, "hello from aurora: /api/tags");

    // The API reports the tunnel, its addresses and the bytes it moved.
    let client = mesh.client();
    let list = client.tunnels().await.expect("tunnels");
    let t = &list.tunnels[0];
    assert_eq!(t.name, "web");
    assert_eq!(t.peer, "aurora");
    assert_eq!(t.kind, robbie_mesh::api::wire::ForwardKind::Local);
    assert_eq!(t.state, robbie_mesh::api::wire::TunnelPhase::Up);
    assert_eq!(t.local, format!("127.0.0.1:{local}"));
    assert!(t.bytes_sent > 0, "{t:?}");
    assert!(t.bytes_received > 0, "{t:?}");
    assert_eq!(client.health().await.expect("health").status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reverse_forward_carries_http() {
    let sshd = Sshd::start();
    let here = http("book").await;
    let remote_port = free_port();
    let cfg = peer_toml(
        "aurora",
        &sshd,
        &trust(&sshd),
        &format!("[[peer.reverse]]\nremote = \"127.0.0.1:{remote_port}\"\nlocal = \"{here}\"\n"),
    );
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_up(&format!("aurora-R{remote_port}")).await;

    // sshd listens on remote_port (this machine plays the server too) and the
    // connection comes back through the session to `here`.
    for i in 0..3 {
        let body = http_get(([127, 0, 0, 1], remote_port).into(), &format!("/r{i}"))
            .await
            .expect("GET through -R");
        assert_eq!(body, format!("hello from book: /r{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_connections_every_byte_checked() {
    let sshd = Sshd::start();
    let (mesh, local) = echo_mesh(&sshd).await;

    let mut tasks = Vec::new();
    for i in 0..200u32 {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", local))
                .await
                .expect("connect");
            // Each connection sends its own pattern, 64 KiB, then half-closes.
            let data: Vec<u8> = (0..65536u32)
                .map(|j| (j.wrapping_mul(31).wrapping_add(i) % 256) as u8)
                .collect();
            let (mut r, mut w) = s.split();
            let send = async {
                w.write_all(&data).await.expect("write");
                w.shutdown().await.expect("half-close");
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(send, recv);
            n.expect("read");
            assert_eq!(got.len(), data.len(), "connection {i}: length");
            assert!(got == data, "connection {i}: bytes differ");
        }));
    }
    for t in tasks {
        t.await.expect("connection task");
    }
    let status = mesh.tunnel("echo").status();
    assert_eq!(status.connections_total, 200);
    assert_eq!(status.bytes_sent, 200 * 65536);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_close_keeps_the_other_direction_open() {
    let sshd = Sshd::start();
    let (_mesh, local) = echo_mesh(&sshd).await;
    let mut s = TcpStream::connect(("127.0.0.1", local))
        .await
        .expect("connect");
    s.write_all(b"ping").await.expect("write");
    s.shutdown().await.expect("shutdown write side");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("EOF must follow the echo")
        .expect("read");
    assert_eq!(got, b"ping");
}
