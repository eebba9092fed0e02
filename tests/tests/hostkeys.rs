//! Strict host-key checking against a real sshd: a changed key is refused (nothing
//! forwarded), an unknown host is refused, `accept_new` records and trusts it, a
//! hashed known_hosts entry (as `ssh-keyscan -H` writes) is trusted.

use std::process::Command;
use std::time::Duration;

use mesh_tests::servers::echo;
use mesh_tests::sshd::Sshd;
use mesh_tests::{free_port, peer_toml, trust, Mesh};
use robbie_mesh::events::EventKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn forward(local: u16, backend: std::net::SocketAddr) -> String {
    format!("[[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"{backend}\"\n")
}

/// A mesh with peer "aurora" at `sshd`, checked against `known_hosts` (plus the
/// peer settings in `extra`), forwarding a fresh echo server; and the local port.
async fn echo_mesh(sshd: &Sshd, known_hosts: &std::path::Path, extra: &str) -> (Mesh, u16) {
    let backend = echo().await;
    let local = free_port();
    let cfg = peer_toml(
        "aurora",
        sshd,
        known_hosts,
        &format!("{extra}{}", forward(local, backend)),
    );
    (Mesh::start(&cfg).await, local)
}

/// Nothing comes back through the forward: the connection is closed without data.
async fn nothing_forwarded(local: u16) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", local)).await else {
        return;
    };
    let _ = s.write_all(b"secret").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "data came back through a refused tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changed_host_key_is_refused_with_an_alarm() {
    let mut sshd = Sshd::start();
    let known_hosts = trust(&sshd);
    let (mesh, local) = echo_mesh(&sshd, &known_hosts, "").await;
    mesh.wait_up("echo").await;
    let mut events = mesh.service.events.subscribe();

    sshd.change_host_key();
    let (state, _) = mesh
        .wait_state("echo", Duration::from_secs(15), |s| {
            s.reason().is_some_and(|r| r.contains("host key changed"))
        })
        .await;
    assert!(!state.is_up());
    nothing_forwarded(local).await;

    let mut alarm = None;
    while let Ok(e) = events.try_recv() {
        if let EventKind::HostKeyAlarm { message, .. } = e.kind {
            alarm = Some(message);
        }
    }
    let alarm = alarm.expect("a host-key alarm event");
    assert!(
        alarm.contains("ssh-keygen -R"),
        "the alarm says what to do: {alarm}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_host_is_refused_unless_accept_new() {
    let sshd = Sshd::start();
    let known_hosts = sshd.dir.path().join("empty_known_hosts");
    let (mesh, local) = echo_mesh(&sshd, &known_hosts, "").await;
    let (state, _) = mesh
        .wait_state("echo", Duration::from_secs(10), |s| {
            s.reason().is_some_and(|r| r.contains("host key for"))
        })
        .await;
    assert!(
        state
            .reason()
            .is_some_and(|r| r.contains("unknown") && r.contains("SHA256:")),
        "{state:?}"
    );
    nothing_forwarded(local).await;
    drop(mesh);

    let (mesh, _) = echo_mesh(&sshd, &known_hosts, "accept_new = true\n").await;
    mesh.wait_up("echo").await;
    let recorded = std::fs::read_to_string(&known_hosts).expect("known_hosts written");
    assert!(
        recorded.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)),
        "{recorded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hashed_known_hosts_from_ssh_keyscan() {
    let sshd = Sshd::start();
    let out = Command::new("ssh-keyscan")
        .args([
            "-H",
            "-t",
            "ed25519",
            "-p",
            &sshd.port.to_string(),
            "127.0.0.1",
        ])
        .output()
        .expect("ssh-keyscan");
    let scanned = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(scanned.starts_with("|1|"), "hashed entry: {scanned}");
    let known_hosts = sshd.dir.path().join("hashed_known_hosts");
    std::fs::write(&known_hosts, &scanned).expect("write");
    let (mesh, _) = echo_mesh(&sshd, &known_hosts, "").await;
    mesh.wait_up("echo").await;
}
