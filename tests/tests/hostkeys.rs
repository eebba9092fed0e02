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

/// What OpenSSH's `ssh` says connecting to `host:port` of `sshd` with this
/// known_hosts file and `accept-new`: its stderr (it is refused or not).
fn openssh_verdict(sshd: &Sshd, host: &str, known_hosts: &std::path::Path) -> String {
    let out = sshd
        .openssh(host, sshd.port, known_hosts, &["-o", "StrictHostKeyChecking=accept-new"].map(String::from))
        .arg("true")
        .output()
        .expect("ssh");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A known_hosts that pins another key for this server — once with a Latin-1
/// comment in the file, once as a hashed entry written for the lower-case name
/// while the config says `LOCALHOST` — is a changed host key for robbie-mesh as
/// for OpenSSH, even with `accept_new`: refused with an alarm, nothing appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pinned_key_is_enforced_like_openssh_whatever_the_bytes_or_the_case() {
    let sshd = Sshd::start();
    let other = mesh_tests::sshd::keygen(sshd.dir.path(), "not_the_host_key");
    let key: Vec<&str> = other.public_line.split_whitespace().take(2).collect();
    let key = key.join(" ");

    // 1. A comment that is not UTF-8.
    let latin1 = sshd.dir.path().join("known_hosts_latin1");
    let mut bytes = b"# server room caf\xe9\n".to_vec();
    bytes.extend_from_slice(format!("[127.0.0.1]:{} {key}\n", sshd.port).as_bytes());
    std::fs::write(&latin1, &bytes).expect("write");
    // 2. A hashed entry for [localhost]:port, as `ssh-keygen -H` writes it.
    let hashed = sshd.dir.path().join("known_hosts_hashed");
    std::fs::write(&hashed, format!("[localhost]:{} {key}\n", sshd.port)).expect("write");
    let out = Command::new("ssh-keygen").arg("-H").arg("-f").arg(&hashed).output().expect("ssh-keygen -H");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&hashed).expect("read").starts_with("|1|"));

    for (file, host) in [(&latin1, "127.0.0.1"), (&hashed, "LOCALHOST")] {
        let before = std::fs::read(file).expect("read");
        let openssh = openssh_verdict(&sshd, host, file);
        assert!(openssh.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"), "OpenSSH: {openssh}");
        let backend = echo().await;
        let local = free_port();
        let cfg = format!(
            "[[peer]]\nname = \"aurora\"\nssh = \"{user}@{host}:{port}\"\nidentity = [\"{id}\"]\nknown_hosts = \"{kh}\"\naccept_new = true\n\
             backoff = {{ initial = \"200ms\", max = \"1s\" }}\nconnect_timeout = \"3s\"\n{}",
            forward(local, backend),
            user = mesh_tests::whoami(),
            port = sshd.port,
            id = sshd.client_key.private.display(),
            kh = file.display(),
        );
        let mesh = Mesh::start(&cfg).await;
        let (state, _) = mesh
            .wait_state("echo", Duration::from_secs(10), |s| {
                s.reason().is_some_and(|r| r.contains("host key"))
            })
            .await;
        eprintln!("{host} with {}: robbie-mesh: {:?}; OpenSSH: {}", file.display(), state.reason(), openssh.lines().find(|l| l.contains("CHANGED")).unwrap_or(""));
        assert!(state.reason().is_some_and(|r| r.contains("host key changed")), "{state:?}");
        nothing_forwarded(local).await;
        assert_eq!(std::fs::read(file).expect("read"), before, "nothing appended to {}", file.display());
    }
}
