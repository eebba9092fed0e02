//! An ssh-agent holding five keys, the authorized one last, and ~/.ssh/config
//! naming that key's file: robbie-mesh offers the server the keys OpenSSH's `ssh`
//! offers with the same files, in the same order — the server's log shows which
//! keys each client offered. The file's key first (nothing refused); with no
//! `IdentityFile`, the agent's keys in its order (four refused); with the key
//! only in the file, `IdentitiesOnly yes` offers none of the agent's keys and
//! `no` offers all four first.
//!
//! The service runs as its own process here, with `SSH_AUTH_SOCK` set as a
//! user's session sets it.

use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_tests::netns::Proc;
use mesh_tests::sshd::{keygen_with, Sshd};
use mesh_tests::{eventually, free_port, trust, wait_for, whoami, workspace_bin, DEADLINE};

/// Key fingerprints sshd logged as refused since `from` bytes of its log.
fn refused_since(sshd: &Sshd, from: usize) -> Vec<String> {
    sshd.log()[from..]
        .lines()
        .filter(|l| l.contains("Failed publickey"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_only_offers_just_the_configured_key_like_openssh() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let _agent = Proc(
        Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent"),
    );
    wait_for(DEADLINE, || sock.exists(), || "ssh-agent socket".into());
    // Four strangers first, the authorized key last.
    for i in 0..4 {
        let k = keygen_with(dir.path(), &format!("stranger{i}"), "ed25519", "");
        let st = Command::new("ssh-add")
            .arg(&k.private)
            .env("SSH_AUTH_SOCK", &sock)
            .stderr(Stdio::null())
            .status()
            .expect("ssh-add");
        assert!(st.success());
    }
    let st = Command::new("ssh-add")
        .arg(&sshd.client_key.private)
        .env("SSH_AUTH_SOCK", &sock)
        .stderr(Stdio::null())
        .status()
        .expect("ssh-add");
    assert!(st.success());
    let known = trust(&sshd);

    // (IdentitiesOnly, IdentityFile set, refused keys expected); after the third
    // case the authorized key leaves the agent (it stays a file).
    let cases = [
        ("yes", true, 0),
        ("no", true, 0),
        ("no", false, 4),
        ("yes", true, 0),
        ("no", true, 4),
    ];
    for (case, (only, file, expected)) in cases.into_iter().enumerate() {
        if case == 3 {
            let st = Command::new("ssh-add")
                .arg("-d")
                .arg(&sshd.client_key.private)
                .env("SSH_AUTH_SOCK", &sock)
                .stderr(Stdio::null())
                .status()
                .expect("ssh-add -d");
            assert!(st.success());
        }
        let ssh_config = dir.path().join(format!("ssh_config_{case}"));
        let identity_file = if file {
            format!("  IdentityFile {}\n", sshd.client_key.private.display())
        } else {
            String::new()
        };
        std::fs::write(
            &ssh_config,
            format!(
                "Host box\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentitiesOnly {only}\n{identity_file}  UserKnownHostsFile {}\n",
                sshd.port,
                whoami(),
                known.display()
            ),
        )
        .expect("write");

        let mark = sshd.log().len();
        let out = Command::new("ssh")
            .args(["-F"])
            .arg(&ssh_config)
            .args(["-o", "BatchMode=yes", "box", "true"])
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .expect("ssh");
        assert!(
            out.status.success(),
            "OpenSSH: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let openssh = refused_since(&sshd, mark);

        let api = free_port();
        let local = free_port();
        let backend = mesh_tests::servers::echo().await;
        let cfg = dir.path().join(format!("mesh_{case}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "ssh_config = \"{}\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n[store]\npath = \"{}\"\n\
                 [[peer]]\nname = \"aurora\"\nssh = \"box\"\nbackoff = {{ initial = \"200ms\", max = \"1s\" }}\n\
                 [[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"{backend}\"\n",
                ssh_config.display(),
                dir.path().join(format!("store_{case}.db")).display(),
            ),
        )
        .expect("write");
        let mark = sshd.log().len();
        let _mesh = Proc(
            Command::new(workspace_bin("robbie-mesh"))
                .args(["run", "--config"])
                .arg(&cfg)
                .env("SSH_AUTH_SOCK", &sock)
                .env("ROBBIE_MESH_LOG", "warn")
                .spawn()
                .expect("robbie-mesh"),
        );
        eventually(Duration::from_secs(20), "the tunnel up", || async {
            let Ok(v) = mesh_tests::client(format!("127.0.0.1:{api}"))
                .tunnels()
                .await
            else {
                return false;
            };
            v.tunnels
                .first()
                .is_some_and(|t| t.state == robbie_mesh::api::wire::TunnelPhase::Up)
        })
        .await;
        let ours = refused_since(&sshd, mark);
        eprintln!(
            "IdentitiesOnly {only}, IdentityFile {}, authorized key {} the agent: OpenSSH offered {} refused keys, robbie-mesh {}",
            if file { "set" } else { "unset" },
            if case < 3 { "in" } else { "not in" },
            openssh.len(),
            ours.len()
        );
        assert_eq!(ours, openssh, "the same keys refused, in the same order");
        assert_eq!(ours.len(), expected, "{ours:?}");
    }
}
