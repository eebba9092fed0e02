//! One client that stops reading must not stall anything else on the same SSH
//! session: not the other connections (of the same forward or another), not the
//! keepalives. russh alone freezes the whole session in this case (ARCHITECTURE.md, "Decisions": the patched russh).

use std::time::{Duration, Instant};

use mesh_tests::servers::{echo, firehose};
use mesh_tests::sshd::Sshd;
use mesh_tests::{free_port, peer_toml, trust, Mesh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_reader_does_not_stall_the_session() {
    let sshd = Sshd::start();
    let hose = firehose(1024 * MIB).await;
    let backend = echo().await;
    let (l_hose, l_echo) = (free_port(), free_port());
    let cfg = peer_toml(
        "aurora",
        &sshd,
        &trust(&sshd),
        &format!(
            "[[peer.forward]]\nname = \"hose\"\nlocal = \"127.0.0.1:{l_hose}\"\nremote = \"{hose}\"\n\
             [[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{l_echo}\"\nremote = \"{backend}\"\n"
        ),
    );
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_up("hose").await;
    mesh.wait_up("echo").await;

    // The stalled client: connects, reads nothing, keeps the connection open.
    let stalled = TcpStream::connect(("127.0.0.1", l_hose))
        .await
        .expect("connect");
    // Let the firehose fill every buffer between it and the stalled client.
    let t = mesh.tunnel("hose");
    let start = Instant::now();
    while t.status().bytes_received < 4 * MIB as u64 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Another connection of the same forward still gets 1 MiB within 2 s…
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", l_hose))
        .await
        .expect("connect");
    let mut buf = vec![0u8; MIB];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
        .await
        .expect("1 MiB through the same forward within 2 s")
        .expect("read");
    eprintln!("same forward: 1 MiB in {:?}", start.elapsed());
    drop(s);

    // …and a connection of another forward moves 1 MiB both ways within 2 s.
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", l_echo))
        .await
        .expect("connect");
    let data: Vec<u8> = (0..MIB).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = s.split();
    let mut got = Vec::new();
    let io = async {
        let send = async {
            w.write_all(&data).await.expect("write");
            w.shutdown().await.expect("shutdown");
        };
        let (_, n) = tokio::join!(send, r.read_to_end(&mut got));
        n.expect("read");
    };
    tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .expect("1 MiB echoed within 2 s");
    assert!(got == data);
    eprintln!("other forward: 1 MiB echoed in {:?}", start.elapsed());

    // The keepalives kept working: the session never went down (4 s would be enough
    // for three missed keepalives).
    tokio::time::sleep(Duration::from_secs(5)).await;
    for name in ["hose", "echo"] {
        let st = mesh.tunnel(name).status();
        assert_eq!(
            st.state,
            robbie_mesh::api::wire::TunnelPhase::Up,
            "{name}: {st:?}"
        );
        assert_eq!(st.reconnects, 0, "{name} reconnected: {st:?}");
    }
    drop(stalled);
}
