//! Time to first token of a streaming chat through robbie-mesh's Ollama endpoint
//! and tunnel, against OpenSSH's `ssh -L` to the same stub through the same sshd,
//! and against calling the stub directly — on loopback and on a link with 20 ms
//! round trips (a delaying proxy in front of sshd), warm (requests back to back on
//! one client connection) and at a person's pace (one request every 6 s, each on
//! a new client connection, as a client whose keep-alive expired after 5 s).
//!
//! `cargo bench -p mesh-tests --bench ttft` (after `cargo build --release -p
//! robbie-mesh`; tests/bench.sh does both). `MESH_TTFT_PACED` × 3 paced slots
//! (default 3 × 3), each target first in one slot out of three.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::delay::DelayProxy;
use mesh_tests::netns::Proc;
use mesh_tests::ollama::OllamaStub;
use mesh_tests::sshd::Sshd;
use mesh_tests::{free_port, release_bin, wait_for, whoami, DEADLINE};
use serde_json::json;

const WARM: usize = 200;

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// One streamed chat: the time to its first line.
async fn ttft(client: &reqwest::Client, url: &str) -> Duration {
    let t = Instant::now();
    let mut r = client
        .post(format!("{url}/api/chat"))
        .json(&json!({"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}], "stream": true}))
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.expect("first chunk");
    let took = t.elapsed();
    assert!(first.is_some());
    while r.chunk().await.expect("rest").is_some() {}
    took
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Where to send chats on one link: (name, URL).
struct Targets {
    rows: Vec<(&'static str, String)>,
    _mesh: Proc,
    _ssh: Proc,
    _dir: tempfile::TempDir,
}

async fn targets(sshd: &Sshd, ssh_port: u16, stub: &OllamaStub) -> Targets {
    let dir = tempfile::tempdir().expect("tempdir");
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, format!("{}\n", sshd.known_hosts_line_via(ssh_port)))
        .expect("known_hosts");
    let (tunnel, endpoint, api, olocal) = (free_port(), free_port(), free_port(), free_port());
    let cfg = dir.path().join("book.toml");
    std::fs::write(
        &cfg,
        format!(
            "node = \"book\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n[store]\npath = \"{store}\"\n\
             [[peer]]\nname = \"aurora\"\nssh = \"{user}@127.0.0.1:{ssh_port}\"\nidentity = [\"{id}\"]\nknown_hosts = \"{kh}\"\n\
             [[peer.forward]]\nname = \"aurora-ollama\"\nlocal = \"127.0.0.1:{tunnel}\"\nremote = \"{stub}\"\n\
             [[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
             candidates = [{{ node = \"aurora\", tunnel = \"aurora-ollama\" }}]\n",
            store = dir.path().join("store.db").display(),
            user = whoami(),
            id = sshd.client_key.private.display(),
            kh = known.display(),
            stub = stub.addr,
        ),
    )
    .expect("config");
    let mesh = Proc(
        Command::new(release_bin())
            .env("ROBBIE_MESH_TOKEN", mesh_tests::token())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("ROBBIE_MESH_LOG", "error")
            .stderr(Stdio::null())
            .spawn()
            .expect("robbie-mesh"),
    );
    let ssh = Proc(
        sshd.openssh(
            "127.0.0.1",
            ssh_port,
            &known,
            &[
                "-o",
                "Ciphers=aes128-gcm@openssh.com",
                "-L",
                &format!("{olocal}:{}", stub.addr),
            ]
            .map(String::from),
        )
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh"),
    );
    wait_for(
        DEADLINE,
        || listening(olocal) && listening(endpoint),
        || "ssh -L / endpoint".into(),
    );
    // The endpoint serves once its candidate is up.
    let client = mesh_tests::http();
    let url = format!("http://127.0.0.1:{endpoint}");
    let end = Instant::now() + DEADLINE;
    while client
        .get(format!("{url}/api/version"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < end, "the endpoint never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Targets {
        rows: vec![
            ("direct", format!("http://{}", stub.addr)),
            ("robbie-mesh", url),
            ("OpenSSH ssh -L", format!("http://127.0.0.1:{olocal}")),
        ],
        _mesh: mesh,
        _ssh: ssh,
        _dir: dir,
    }
}

#[tokio::main]
async fn main() {
    let paced: usize = mesh_tests::env_or("MESH_TTFT_PACED", 3);
    let sshd = Sshd::start();
    let stub = OllamaStub::start("aurora", &["llama3.2:3b"]).await;
    let far = DelayProxy::start(sshd.addr(), Duration::from_millis(10)).await;
    println!("time to first token of a streamed chat (ms): warm = {WARM} back to back on one connection; paced = {} per target, one slot every 6 s, each request on a new connection", paced * 3);
    println!(
        "{:<16} {:<22} {:>9} {:>9} {:>11} {:>11}",
        "link", "target", "warm p50", "warm p90", "paced p50", "paced max"
    );
    for (link, port) in [
        ("loopback", sshd.addr().port()),
        ("20 ms round trip", far.addr.port()),
    ] {
        let t = targets(&sshd, port, &stub).await;
        let mut warm = Vec::new();
        for (_, url) in &t.rows {
            let client = mesh_tests::http();
            ttft(&client, url).await;
            let mut v: Vec<Duration> = Vec::with_capacity(WARM);
            for _ in 0..WARM {
                v.push(ttft(&client, url).await);
            }
            warm.push(v);
        }
        // Paced: the three targets take turns in each 6 s slot, each slot started
        // by the next one (the first request after a pause also pays for the
        // machine waking up).
        let mut slow: Vec<Vec<Duration>> = vec![Vec::new(); t.rows.len()];
        let n = t.rows.len();
        for slot in 0..paced * n {
            tokio::time::sleep(Duration::from_secs(6)).await;
            for k in 0..n {
                let i = (slot + k) % n;
                let fresh = mesh_tests::http_builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .expect("client");
                slow[i].push(ttft(&fresh, &t.rows[i].1).await);
            }
        }
        for (i, (name, _)) in t.rows.iter().enumerate() {
            let (w, s) = (&mut warm[i], &mut slow[i]);
            println!(
                "{link:<16} {name:<22} {:>9} {:>9} {:>11} {:>11}",
                ms(pct(w, 0.5)),
                ms(pct(w, 0.9)),
                ms(pct(s, 0.5)),
                ms(pct(s, 1.0))
            );
        }
    }
}
