//! `ProxyJump`: a peer whose SSH server is reachable only through another one
//! (the desktop behind NAT, through the hub). The hub's `sshd` listens on its
//! namespace's address; the peer's `sshd` on that namespace's own loopback,
//! which nothing outside it can reach. robbie-mesh and OpenSSH's `ssh` read the
//! same `~/.ssh/config` and known_hosts and must agree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_tests::netns::Netns;
use mesh_tests::sshd::{keygen, Sshd};
use mesh_tests::Mesh;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An echo server on the namespace's loopback (the service behind the peer).
const ECHO: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
def echo(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"#;

struct Site {
    hub_ns: Netns,
    hub: Sshd,
    inner: Sshd,
    echo_port: u16,
    _echo: mesh_tests::netns::Proc,
    dir: tempfile::TempDir,
}

impl Site {
    fn new(label: &str) -> Site {
        let hub_ns = Netns::create(label);
        let hub = Sshd::start_in(&hub_ns);
        let inner = Sshd::start_in_loopback(&hub_ns);
        let echo_port = mesh_tests::free_port();
        let echo = hub_ns.spawn_ready(
            Path::new("python3"),
            &["-c", ECHO, &echo_port.to_string()],
            "ready",
        );
        Site {
            hub_ns,
            hub,
            inner,
            echo_port,
            _echo: echo,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// known_hosts pinning the hub's key (or `hub_key`'s) and the inner server's
    /// (or `inner_key`'s), under the names ssh looks them up by.
    fn known_hosts(&self, hub_key: Option<&str>, inner_key: Option<&str>) -> PathBuf {
        let key_of = |line: &str| {
            line.split_once(' ')
                .map(|(_, k)| k.to_string())
                .unwrap_or_default()
        };
        let hub = hub_key.map_or_else(|| key_of(&self.hub.known_hosts_line()), str::to_string);
        let inner =
            inner_key.map_or_else(|| key_of(&self.inner.known_hosts_line()), str::to_string);
        let path = self.dir.path().join("known_hosts");
        std::fs::write(
            &path,
            format!(
                "{} {hub}\n[127.0.0.1]:{} {inner}\n",
                self.hub_ns.ip, self.inner.port
            ),
        )
        .expect("write known_hosts");
        path
    }

    /// `~/.ssh/config`: `hub` and `inner` each with its own key; `inner` through `hub`.
    fn ssh_config(&self, known_hosts: &Path) -> PathBuf {
        let user = mesh_tests::whoami();
        let path = self.dir.path().join("ssh_config");
        std::fs::write(
            &path,
            format!(
                "Host hub\n  HostName {}\n  User {user}\n  IdentityFile {}\n  UserKnownHostsFile {kh}\n\
                 Host inner\n  HostName 127.0.0.1\n  Port {}\n  User {user}\n  IdentityFile {}\n  UserKnownHostsFile {kh}\n  ProxyJump hub\n\
                 Host *\n  IdentitiesOnly yes\n",
                self.hub_ns.ip,
                self.hub.client_key.private.display(),
                self.inner.port,
                self.inner.client_key.private.display(),
                kh = known_hosts.display(),
            ),
        )
        .expect("write ssh_config");
        path
    }

    /// What OpenSSH's `ssh inner true` says with this config: (worked, stderr).
    fn openssh(&self, ssh_config: &Path) -> (bool, String) {
        let out = std::process::Command::new("ssh")
            .arg("-F")
            .arg(ssh_config)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "inner",
                "true",
            ])
            .output()
            .expect("ssh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn mesh(&self, ssh_config: &Path) -> (Mesh, u16) {
        let local = mesh_tests::free_port();
        let cfg = format!(
            "node = \"robbiebook1\"\nssh_config = \"{}\"\n\
             [[peer]]\nname = \"vengeance\"\nssh = \"inner\"\nconnect_timeout = \"3s\"\n\
             keepalive = {{ interval = \"1s\", count = 3 }}\nbackoff = {{ initial = \"200ms\", max = \"1s\" }}\n\
             [[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"127.0.0.1:{}\"\n",
            ssh_config.display(),
            self.echo_port,
        );
        (Mesh::start(&cfg).await, local)
    }

    /// Logins the inner server accepted (each came through the hub: nothing
    /// else can reach it).
    fn inner_logins(&self) -> usize {
        self.inner.log().matches("Accepted publickey").count()
    }
}

async fn echo_through(local: u16) -> Result<Vec<u8>, String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"through the hub")
        .await
        .map_err(|e| e.to_string())?;
    let mut got = vec![0u8; 15];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .map_err(|_| "no echo".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(got)
}

/// The peer's server is reached through the hub, each with its own key and
/// host key, as `ssh inner` reaches it; a link to the hub that goes silent is
/// noticed through the jump, and the session comes back when it heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_behind_a_jump_host_is_reached_as_ssh_reaches_it() {
    let site = Site::new("jump");
    let known_hosts = site.known_hosts(None, None);
    let ssh_config = site.ssh_config(&known_hosts);
    let (ok, stderr) = site.openssh(&ssh_config);
    assert!(
        ok,
        "OpenSSH reaches the inner server through the hub: {stderr}"
    );
    let logins = site.inner_logins();
    assert_eq!(logins, 1, "OpenSSH's login, from the hub");

    let (mesh, local) = site.mesh(&ssh_config).await;
    mesh.wait_up("echo").await;
    assert_eq!(
        echo_through(local).await.as_deref(),
        Ok(&b"through the hub"[..])
    );
    assert_eq!(
        site.inner_logins(),
        2,
        "robbie-mesh logged in to the inner server"
    );
    assert!(
        site.inner.log().contains("from 127.0.0.1"),
        "the inner server saw the hub connect: {}",
        site.inner.log()
    );

    // The hub's link goes silent: the session through it is declared dead.
    site.hub_ns.cut();
    let (state, _) = mesh
        .wait_state("echo", Duration::from_secs(15), |s| !s.is_up())
        .await;
    assert!(!state.is_up());
    site.hub_ns.heal();
    mesh.wait_up("echo").await;
    assert_eq!(
        echo_through(local).await.as_deref(),
        Ok(&b"through the hub"[..])
    );
}

/// A changed host key, at the hub or at the inner server, is refused by both
/// robbie-mesh and `ssh`, and robbie-mesh's reason names the server whose key
/// changed; with the hub's key wrong nothing reaches the inner server at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_host_key_on_either_hop_is_refused_and_named() {
    let site = Site::new("jumpkeys");
    let other = keygen(site.dir.path(), "other");
    let other_key: String = other
        .public_line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    for (hub_wrong, expect) in [
        (true, "at the jump host "),
        (false, "host key changed for [127.0.0.1]:"),
    ] {
        let known_hosts = if hub_wrong {
            site.known_hosts(Some(&other_key), None)
        } else {
            site.known_hosts(None, Some(&other_key))
        };
        let ssh_config = site.ssh_config(&known_hosts);
        let logins = site.inner_logins();
        let (ok, stderr) = site.openssh(&ssh_config);
        assert!(
            !ok && stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "OpenSSH refuses: {stderr}"
        );

        let (mesh, local) = site.mesh(&ssh_config).await;
        let reason = mesh
            .wait_reason("echo", Duration::from_secs(15), "host key changed")
            .await;
        assert!(
            reason.contains(expect),
            "hub key wrong: {hub_wrong}: {reason}"
        );
        if hub_wrong {
            assert!(
                reason.contains(&site.hub_ns.ip.to_string()),
                "names the hub: {reason}"
            );
        } else {
            assert!(
                !reason.contains("jump host"),
                "the inner server's own key: {reason}"
            );
        }
        assert!(echo_through(local).await.is_err(), "nothing forwarded");
        assert_eq!(site.inner_logins(), logins, "no login on the inner server");
        drop(mesh);
    }
}
