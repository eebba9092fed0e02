//! A server that ignores SSH flow control: once a `-L` channel is open it sends
//! far more than the window robbie-mesh granted while the forward's local client
//! reads nothing. OpenSSH's sshd never does this, so the server is paramiko
//! (installed by tests/setup.sh) told its send window is endless. robbie-mesh
//! must end that session with a reason that says what the server did, and its
//! memory must stay bounded (it used to queue everything: 15 MB → 823 MB).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_tests::netns::Proc;
use mesh_tests::{free_port, Mesh};

const SERVER: &str = r#"
import socket, sys, threading, paramiko
key = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else None
if key is None:
    import subprocess, tempfile, os
    d = tempfile.mkdtemp()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d + "/k"], check=True)
    key = paramiko.Ed25519Key.from_private_key_file(d + "/k")
total = int(sys.argv[1])
class Server(paramiko.ServerInterface):
    def check_auth_publickey(self, username, k):
        return paramiko.AUTH_SUCCESSFUL
    def get_allowed_auths(self, username):
        return "publickey"
    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED
    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        return paramiko.OPEN_SUCCEEDED
def flood(chan):
    chan.out_window_size = 1 << 62
    chunk = b"x" * 32768
    sent = 0
    try:
        while sent < total:
            chan.out_window_size = 1 << 62
            chan.sendall(chunk)
            sent += len(chunk)
    except Exception:
        pass
def serve(c):
    t = paramiko.Transport(c)
    t.add_server_key(key)
    t.start_server(server=Server())
    while True:
        chan = t.accept(60)
        if chan is None:
            return
        threading.Thread(target=flood, args=(chan,), daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(8)
print("ready", s.getsockname()[1], key.get_name(), key.get_base64(), flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_ignores_the_window_is_cut_off_and_memory_stays_bounded() {
    let python = std::env::var("MESH_TEST_PYTHON")
        .unwrap_or_else(|_| "/var/cache/robbie-mesh/venv/bin/python".into());
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} missing: run tests/setup.sh (tests/run.sh does)"
    );
    let total: usize = 768 << 20;
    let mut child = Command::new(&python)
        .args(["-c", SERVER, &total.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("paramiko server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let _server = Proc(child);
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"ready"), "{line}");
    let (port, kind, key) = (f[1], f[2], f[3]);
    let dir = tempfile::tempdir().expect("tempdir");
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{port} {kind} {key}\n")).expect("write");
    let id = mesh_tests::sshd::keygen(dir.path(), "id");
    let local = free_port();
    let cfg = format!(
        "[[peer]]\nname = \"hostile\"\nssh = \"{}@127.0.0.1:{port}\"\nidentity = [\"{}\"]\nknown_hosts = \"{}\"\n\
         backoff = {{ initial = \"5s\", max = \"30s\" }}\nconnect_timeout = \"5s\"\n\
         [[peer.forward]]\nname = \"flood\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"127.0.0.1:9\"\n",
        mesh_tests::whoami(),
        id.private.display(),
        known.display(),
    );
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_up("flood").await;
    let before = rss_mib();
    // A client that opens the forward and never reads.
    let _idle = tokio::net::TcpStream::connect(("127.0.0.1", local))
        .await
        .expect("connect");
    let (state, took) = mesh
        .wait_state("flood", Duration::from_secs(30), |s| !s.is_up())
        .await;
    let after = rss_mib();
    let reason = state.reason().unwrap_or_default().to_string();
    eprintln!("session ended after {took:?}: {reason}; RSS {before} MiB -> {after} MiB");
    assert!(reason.contains("ignores SSH flow control"), "{reason}");
    assert!(
        after < before + 64,
        "memory grew from {before} to {after} MiB"
    );
}
