//! Logging in to a real sshd with keys from a real `ssh-agent`, from the OS keychain
//! (Secret Service: `gnome-keyring-daemon` on a D-Bus session bus, as `tests/run.sh`
//! provides), and from an encrypted key file whose passphrase is in the keychain.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_tests::servers::echo;
use mesh_tests::sshd::{keygen_with, Sshd};
use mesh_tests::{free_port, trust, wait_for, whoami, Mesh, DEADLINE};
use robbie_mesh::keychain as keys;

struct Agent {
    child: Child,
    sock: std::path::PathBuf,
}

impl Agent {
    fn start(dir: &std::path::Path) -> Agent {
        let sock = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client)");
        let s = sock.clone();
        wait_for(
            DEADLINE,
            || s.exists(),
            || "ssh-agent socket did not appear".into(),
        );
        Agent { child, sock }
    }

    fn add(&self, key: &std::path::Path) {
        let st = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.sock)
            .stderr(Stdio::null())
            .status()
            .expect("ssh-add");
        assert!(st.success(), "ssh-add failed");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(sshd: &Sshd, identity: &str, local: u16, backend: std::net::SocketAddr) -> String {
    format!(
        "[[peer]]\nname = \"aurora\"\nssh = \"{user}@127.0.0.1:{port}\"\nidentity = [{identity}]\n\
         known_hosts = \"{kh}\"\nkeepalive = {{ interval = \"1s\", count = 3 }}\nbackoff = {{ initial = \"200ms\", max = \"1s\" }}\n\
         [[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"{backend}\"\n",
        user = whoami(),
        port = sshd.port,
        kh = trust(sshd).display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_keys_log_in_and_a_refused_agent_says_why() {
    let sshd = Sshd::start();
    let backend = echo().await;

    // An agent holding only an unauthorized key: refused, and the reason says so.
    let stranger_dir = tempfile::tempdir().expect("tempdir");
    let stranger = keygen_with(stranger_dir.path(), "stranger", "ed25519", "");
    let agent = Agent::start(stranger_dir.path());
    agent.add(&stranger.private);
    let id = format!("\"agent:{}\"", agent.sock.display());
    let mesh = Mesh::start(&config(&sshd, &id, free_port(), backend)).await;
    let reason = mesh
        .wait_reason("echo", Duration::from_secs(10), "authentication")
        .await;
    assert!(reason.contains("1 key refused"), "{reason}");
    drop(mesh);

    // The authorized key added to the same agent: logged in.
    agent.add(&sshd.client_key.private);
    let mesh = Mesh::start(&config(&sshd, &id, free_port(), backend)).await;
    mesh.wait_up("echo").await;
}

/// Secret Service needs a session bus and an unlocked keyring (tests/run.sh starts
/// both). Outside that runner the test says so and passes only if not required.
fn keychain_available() -> bool {
    let required = std::env::var("MESH_TESTS_REQUIRE_KEYCHAIN").is_ok_and(|v| v == "1");
    let probe = keys::set("robbie-mesh-test-probe", "x")
        .and_then(|()| keys::delete("robbie-mesh-test-probe"));
    match probe {
        Ok(()) => true,
        Err(e) if required => panic!("the OS keychain is required here but failed: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: no usable OS keychain ({e}); run tests through tests/run.sh");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keychain_key_and_keychain_passphrase_log_in() {
    if !tokio::task::spawn_blocking(keychain_available)
        .await
        .expect("probe")
    {
        return;
    }
    let sshd = Sshd::start();
    let backend = echo().await;

    // A private key stored in the keychain under the shared entry name.
    let entry = format!("test-{}", sshd.port);
    let pem = std::fs::read_to_string(&sshd.client_key.private).expect("key");
    keys::set(&keys::key_account(&entry), &pem).expect("store key in keychain");
    let mesh = Mesh::start(&config(
        &sshd,
        &format!("\"keychain:{entry}\""),
        free_port(),
        backend,
    ))
    .await;
    mesh.wait_up("echo").await;
    drop(mesh);
    keys::delete(&keys::key_account(&entry)).expect("delete");

    // An encrypted key file; its passphrase lives in the keychain.
    let dir = tempfile::tempdir().expect("tempdir");
    let locked = keygen_with(dir.path(), "locked", "ed25519", "correct horse");
    sshd.authorize(&locked.public_line);
    let id = format!("\"{}\"", locked.private.display());
    let account = keys::passphrase_account(&locked.private);

    let mesh = Mesh::start(&config(&sshd, &id, free_port(), backend)).await;
    let (state, _) = mesh
        .wait_state("echo", Duration::from_secs(10), |s| {
            s.reason().is_some_and(|r| r.contains("encrypted"))
        })
        .await;
    assert!(
        state.reason().unwrap_or_default().contains(&account),
        "says which entry to create: {state:?}"
    );
    drop(mesh);

    keys::set(&account, "correct horse").expect("store passphrase");
    let mesh = Mesh::start(&config(&sshd, &id, free_port(), backend)).await;
    mesh.wait_up("echo").await;
    keys::delete(&account).expect("delete");
}

/// `robbie-mesh keys`: generate, list, show and delete keys in the keychain; a
/// bad name is refused with what to use instead.
#[test]
fn the_keys_command_manages_keychain_keys() {
    if !keychain_available() {
        return;
    }
    let bin = mesh_tests::workspace_bin("robbie-mesh");
    let run = |args: &[&str]| {
        std::process::Command::new(&bin)
            .args(args)
            .output()
            .expect("robbie-mesh keys")
    };
    let name = format!("cli-test-{}", std::process::id());
    let made = run(&["keys", "generate", &name]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let public = String::from_utf8_lossy(&made.stdout).trim().to_string();
    assert!(
        public.starts_with("ssh-ed25519 ") && public.ends_with(&format!("robbie-mesh:{name}")),
        "{public}"
    );
    assert!(String::from_utf8_lossy(&made.stderr).contains(&format!("keychain:{name}")));
    let again = run(&["keys", "generate", &name]);
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("exists already")
    );
    let listed = run(&["keys", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&public));
    assert_eq!(
        String::from_utf8_lossy(&run(&["keys", "show", &name]).stdout).trim(),
        public
    );
    // The private half is where the service looks for it.
    let pem = keys::private_key(&name).expect("in the keychain");
    assert!(pem.contains("BEGIN OPENSSH PRIVATE KEY"));
    let bad = run(&["keys", "generate", "no spaces"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use letters, digits"));
    assert!(run(&["keys", "delete", &name]).status.success());
    assert!(
        keys::private_key(&name).is_err(),
        "deleted from the keychain"
    );
    assert!(!run(&["keys", "show", &name]).status.success());
}

/// A key file that others may read (mode 0644) is refused, as OpenSSH refuses
/// it, and the reason says how to fix it; after `chmod 600` it logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_file_others_can_read_is_refused_like_openssh() {
    use std::os::unix::fs::PermissionsExt;
    let sshd = Sshd::start();
    let key = &sshd.client_key.private;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = sshd.openssh_true("127.0.0.1", &trust(&sshd), key, &[]);
    let openssh = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && openssh.contains("UNPROTECTED PRIVATE KEY FILE"),
        "OpenSSH: {openssh}"
    );
    let backend = echo().await;
    let id = format!("\"{}\"", key.display());
    let mesh = Mesh::start(&config(&sshd, &id, free_port(), backend)).await;
    let reason = mesh
        .wait_reason("echo", Duration::from_secs(10), "authentication")
        .await;
    eprintln!("robbie-mesh: {reason}");
    assert!(
        reason.contains("0644 are too open") && reason.contains("chmod 600"),
        "{reason}"
    );
    drop(mesh);
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mesh = Mesh::start(&config(&sshd, &id, free_port(), backend)).await;
    mesh.wait_up("echo").await;
}

/// `keys import` of an encrypted key file asks for its passphrase on the
/// terminal (driven here through a pty), does not echo it, says plainly that the
/// key is stored decrypted in the keychain, and stores the right key.
#[test]
fn importing_an_encrypted_key_asks_for_the_passphrase_without_echo() {
    if !keychain_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen_with(dir.path(), "locked", "ed25519", "pass-word-42");
    let name = format!("pty-test-{}", std::process::id());
    const DRIVE: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out, sent, end = b"", False, time.time() + 30
while time.time() < end:
    r, _, _ = select.select([fd], [], [], 0.5)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    if not sent and b"Passphrase for" in out:
        os.write(fd, b"pass-word-42\n")
        sent = True
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let bin = mesh_tests::workspace_bin("robbie-mesh");
    let out = Command::new("python3")
        .args(["-c", DRIVE])
        .arg(&bin)
        .args(["keys", "import", &name])
        .arg(&key.private)
        .env_remove("ROBBIE_MESH_KEY_PASSPHRASE")
        .output()
        .expect("python3 pty");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("terminal:\n{screen}");
    let _ = Command::new(&bin).args(["keys", "delete", &name]).output();
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains(&format!("Passphrase for {}", key.private.display())),
        "{screen}"
    );
    assert!(
        !screen.contains("pass-word-42"),
        "the passphrase was echoed: {screen}"
    );
    assert!(
        screen.contains("stored decrypted in the keychain"),
        "{screen}"
    );
    let public: Vec<&str> = key.public_line.split_whitespace().take(2).collect();
    assert!(
        screen.contains(&public.join(" ")),
        "the file's public key was stored: {screen}"
    );
}
