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
        alarm.contains("ssh-keygen -f") && alarm.contains(" -R "),
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
    let out = openssh_true(
        sshd,
        host,
        known_hosts,
        &["-o", "StrictHostKeyChecking=accept-new"],
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ssh … true` with the harness's client key (see [`Sshd::openssh_true`]).
fn openssh_true(
    sshd: &Sshd,
    host: &str,
    known_hosts: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    sshd.openssh_true(host, known_hosts, &sshd.client_key.private, args)
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
    let out = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&hashed)
        .output()
        .expect("ssh-keygen -H");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(&hashed)
        .expect("read")
        .starts_with("|1|"));

    for (file, host) in [(&latin1, "127.0.0.1"), (&hashed, "LOCALHOST")] {
        let before = std::fs::read(file).expect("read");
        let openssh = openssh_verdict(&sshd, host, file);
        assert!(
            openssh.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "OpenSSH: {openssh}"
        );
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
        eprintln!(
            "{host} with {}: robbie-mesh: {:?}; OpenSSH: {}",
            file.display(),
            state.reason(),
            openssh
                .lines()
                .find(|l| l.contains("CHANGED"))
                .unwrap_or("")
        );
        assert!(
            state
                .reason()
                .is_some_and(|r| r.contains("host key changed")),
            "{state:?}"
        );
        nothing_forwarded(local).await;
        assert_eq!(
            std::fs::read(file).expect("read"),
            before,
            "nothing appended to {}",
            file.display()
        );
    }
}

/// A peer whose config text is `extra` plus a forward to a fresh echo server:
/// (the mesh, the forward's local port).
async fn peer_mesh(ssh: &str, id: &std::path::Path, extra: &str) -> (Mesh, u16) {
    let backend = echo().await;
    let local = free_port();
    let cfg = format!(
        "[[peer]]\nname = \"aurora\"\nssh = \"{ssh}\"\nidentity = [\"{}\"]\n{extra}\n\
         backoff = {{ initial = \"200ms\", max = \"1s\" }}\nconnect_timeout = \"3s\"\n{}",
        id.display(),
        forward(local, backend),
    );
    (Mesh::start(&cfg).await, local)
}

/// Peer "aurora" at `sshd` (settings `extra`) until its forward is refused with a
/// reason containing `what`, and its forward is checked to carry nothing: the
/// reason.
async fn refused(sshd: &Sshd, extra: &str, what: &str) -> String {
    let (mesh, local) = peer_mesh(
        &format!("{}@127.0.0.1:{}", mesh_tests::whoami(), sshd.port),
        &sshd.client_key.private,
        extra,
    )
    .await;
    let (state, _) = mesh
        .wait_state("echo", Duration::from_secs(10), |s| {
            s.reason().is_some_and(|r| r.contains(what))
        })
        .await;
    nothing_forwarded(local).await;
    state.reason().unwrap_or_default().to_string()
}

/// A server known with an ed25519 key that now offers only an RSA key: OpenSSH
/// says the identification has changed (it does not ask to add a "new" key);
/// robbie-mesh refuses it as a changed key too, even with `accept_new`, naming
/// the ed25519 line, and appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_of_another_type_than_the_pinned_one_is_a_changed_key_like_openssh() {
    let mut sshd = Sshd::start();
    let known = trust(&sshd);
    sshd.use_host_key("rsa");
    let before = std::fs::read(&known).expect("read");
    let openssh = openssh_verdict(&sshd, "127.0.0.1", &known);
    assert!(
        openssh.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "OpenSSH: {openssh}"
    );
    let reason = refused(
        &sshd,
        &format!("known_hosts = \"{}\"\naccept_new = true", known.display()),
        "host key",
    )
    .await;
    eprintln!(
        "robbie-mesh: {reason}\nOpenSSH: {}",
        openssh
            .lines()
            .find(|l| l.contains("Offending"))
            .unwrap_or("")
    );
    assert!(
        reason.contains("host key changed")
            && reason.contains("ssh-rsa")
            && reason.contains("ssh-ed25519")
            && reason.contains(":1 "),
        "{reason}"
    );
    assert_eq!(
        std::fs::read(&known).expect("read"),
        before,
        "nothing appended"
    );
}

/// `accept_new` with `/dev/null` as the first known_hosts (written in the peer,
/// or inherited from `UserKnownHostsFile` in ~/.ssh/config): OpenSSH "adds" the
/// key to /dev/null and trusts any key on every connection; robbie-mesh refuses
/// and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accept_new_into_a_file_that_cannot_keep_keys_is_refused() {
    let sshd = Sshd::start();
    let openssh = openssh_verdict(&sshd, "127.0.0.1", std::path::Path::new("/dev/null"));
    eprintln!("OpenSSH with /dev/null and accept-new: {}", openssh.trim());
    let ssh_config = sshd.dir.path().join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host box\n  HostName 127.0.0.1\n  Port {}\n  UserKnownHostsFile /dev/null\n",
            sshd.port
        ),
    )
    .expect("write");
    for (ssh, extra) in [
        (
            format!("{}@127.0.0.1:{}", mesh_tests::whoami(), sshd.port),
            "known_hosts = \"/dev/null\"\naccept_new = true".to_string(),
        ),
        ("box".to_string(), "accept_new = true".to_string()),
    ] {
        let (mesh, local) = peer_mesh(&ssh, &sshd.client_key.private, &extra).await;
        let mesh = if ssh == "box" {
            drop(mesh);
            let backend = echo().await;
            let cfg = format!(
                "ssh_config = \"{}\"\n[[peer]]\nname = \"aurora\"\nssh = \"box\"\nidentity = [\"{}\"]\naccept_new = true\n\
                 backoff = {{ initial = \"200ms\", max = \"1s\" }}\nconnect_timeout = \"3s\"\n{}",
                ssh_config.display(),
                sshd.client_key.private.display(),
                forward(local, backend),
            );
            Mesh::start(&cfg).await
        } else {
            mesh
        };
        let reason = mesh
            .wait_reason("echo", Duration::from_secs(10), "host key")
            .await;
        eprintln!("robbie-mesh ({ssh}): {reason}");
        assert!(
            reason.contains("/dev/null is not a regular file"),
            "{reason}"
        );
        nothing_forwarded(local).await;
    }
}

/// Ten peers, each naming the same server under its own `HostKeyAlias`, all
/// accepting a new key at the same moment into a known_hosts whose last line
/// has no newline: every alias ends up on a line of its own, the old pin is
/// intact, and OpenSSH trusts each alias with the file (`ssh-keygen -F` finds
/// it, `ssh -o HostKeyAlias=…` connects under strict checking).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_peers_accepting_new_keys_at_once_keep_every_line_and_openssh_agrees() {
    let sshd = Sshd::start();
    let other = mesh_tests::sshd::keygen(sshd.dir.path(), "someone_else");
    let other_key: Vec<&str> = other.public_line.split_whitespace().take(2).collect();
    let known = sshd.dir.path().join("kh_shared");
    std::fs::write(&known, format!("old.example {}", other_key.join(" "))).expect("write");
    let ssh_config = sshd.dir.path().join("ssh_config");
    let mut text = String::new();
    let mut cfg = format!("ssh_config = \"{}\"\n", ssh_config.display());
    let backend = echo().await;
    for i in 0..10 {
        text.push_str(&format!(
            "Host box{i}\n  HostName 127.0.0.1\n  Port {}\n  HostKeyAlias alias-{i}\n",
            sshd.port
        ));
        cfg.push_str(&format!(
            "[[peer]]\nname = \"p{i}\"\nssh = \"{}@box{i}\"\nidentity = [\"{}\"]\nknown_hosts = \"{}\"\naccept_new = true\n\
             backoff = {{ initial = \"200ms\", max = \"1s\" }}\nconnect_timeout = \"5s\"\n\
             [[peer.forward]]\nname = \"e{i}\"\nlocal = \"127.0.0.1:{}\"\nremote = \"{backend}\"\n",
            mesh_tests::whoami(),
            sshd.client_key.private.display(),
            known.display(),
            free_port(),
        ));
    }
    std::fs::write(&ssh_config, text).expect("write");
    let mesh = Mesh::start(&cfg).await;
    for i in 0..10 {
        mesh.wait_up(&format!("e{i}")).await;
    }
    let after = std::fs::read_to_string(&known).expect("read");
    assert_eq!(after.lines().count(), 11, "{after}");
    assert!(
        after.starts_with(&format!("old.example {}\n", other_key.join(" "))),
        "{after}"
    );
    for i in 0..10 {
        let found = Command::new("ssh-keygen")
            .args(["-F", &format!("alias-{i}"), "-f"])
            .arg(&known)
            .output()
            .expect("ssh-keygen -F");
        assert!(
            found.status.success() && !found.stdout.is_empty(),
            "ssh-keygen -F alias-{i}: {after}"
        );
        let out = openssh_true(
            &sshd,
            "127.0.0.1",
            &known,
            &["-o", &format!("HostKeyAlias=alias-{i}")],
        );
        assert!(
            out.status.success(),
            "OpenSSH under alias-{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A key pinned only in the system's known_hosts (`GlobalKnownHostsFile`) is
/// trusted, and another key there is a changed key, as for OpenSSH.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_known_hosts_file_is_honoured() {
    let mut sshd = Sshd::start();
    let global = trust(&sshd);
    let empty = sshd.dir.path().join("kh_user_empty");
    std::fs::write(&empty, "").expect("write");
    let ssh_config = sshd.dir.path().join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!("Host *\n  GlobalKnownHostsFile {}\n", global.display()),
    )
    .expect("write");
    let (port, key) = (sshd.port, sshd.client_key.private.clone());
    let cfg = |local: u16, backend: std::net::SocketAddr| {
        format!(
            "ssh_config = \"{}\"\n[[peer]]\nname = \"aurora\"\nssh = \"{}@127.0.0.1:{}\"\nidentity = [\"{}\"]\nknown_hosts = \"{}\"\n\
             backoff = {{ initial = \"200ms\", max = \"1s\" }}\nconnect_timeout = \"3s\"\n{}",
            ssh_config.display(),
            mesh_tests::whoami(),
            port,
            key.display(),
            empty.display(),
            forward(local, backend),
        )
    };
    let ssh_ok = |sshd: &Sshd| {
        openssh_true(
            sshd,
            "127.0.0.1",
            &empty,
            &["-o", &format!("GlobalKnownHostsFile={}", global.display())],
        )
    };
    assert!(
        ssh_ok(&sshd).status.success(),
        "OpenSSH trusts the global pin"
    );
    let (local, backend) = (free_port(), echo().await);
    let mesh = Mesh::start(&cfg(local, backend)).await;
    mesh.wait_up("echo").await;
    drop(mesh);
    sshd.change_host_key();
    let out = ssh_ok(&sshd);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "OpenSSH: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (local, backend) = (free_port(), echo().await);
    let mesh = Mesh::start(&cfg(local, backend)).await;
    let reason = mesh
        .wait_reason("echo", Duration::from_secs(10), "host key")
        .await;
    assert!(
        reason.contains("host key changed") && reason.contains(&global.display().to_string()),
        "{reason}"
    );
}

/// A server whose only host-key algorithm is `ssh-rsa` (SHA-1 signatures):
/// OpenSSH refuses to negotiate, and so does robbie-mesh, saying what to change,
/// even though known_hosts pins that very RSA key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_offering_only_sha1_rsa_signatures_is_refused_like_openssh() {
    let mut sshd = Sshd::start();
    sshd.use_host_key("rsa");
    sshd.configure("HostKeyAlgorithms ssh-rsa");
    let known = trust(&sshd);
    let out = openssh_true(&sshd, "127.0.0.1", &known, &[]);
    let openssh = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && openssh.contains("no matching host key type"),
        "OpenSSH: {openssh}"
    );
    let reason = refused(
        &sshd,
        &format!("known_hosts = \"{}\"", known.display()),
        "ssh-rsa",
    )
    .await;
    eprintln!("robbie-mesh: {reason}\nOpenSSH: {}", openssh.trim());
    assert!(
        reason.contains("SHA-1") && reason.contains("ed25519"),
        "{reason}"
    );
}
