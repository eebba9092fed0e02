//! A bad network day beyond a clean cut: the hub's stock `sshd` that keeps a dead
//! session (and its `-R` port) after the laptop's link went away; a slow link
//! (200 kB/s) carrying a large download; a far one (200 ms round trips).

use std::time::Duration;

use mesh_tests::netns::Netns;
use mesh_tests::sshd::Sshd;
use mesh_tests::{peer_toml, servers, trust, Mesh};
use robbie_mesh::tunnel::TunnelState;

/// The slow-link and far-link tests take turns: each measures timing on a 2-core
/// machine, and the slow link's transfers would skew the far link's probes.
static ONE_LINK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The laptop's link goes silently; robbie-mesh notices and reconnects when it is
/// back, but a stock sshd (no ClientAliveInterval) still holds the old session and
/// its `-R` port: the refusal says that an earlier session probably holds it, and
/// which sshd settings end such sessions — not merely "port in use".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reverse_forward_refused_after_a_reconnect_names_the_stale_session() {
    let sshd = Sshd::start_stock();
    let link = mesh_tests::delay::DelayProxy::start(sshd.addr(), Duration::ZERO).await;
    let (cfg, _) = reverse_through(&sshd, &link).await;
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_up("api").await;
    // The laptop's connection vanishes without a word reaching the hub (as after a
    // sleep, or a new Wi-Fi address): the hub's sshd keeps the old session and its
    // port, while new connections get through.
    link.sever_existing();
    let (state, _) = mesh
        .wait_state("api", Duration::from_secs(20), |s| {
            s.reason().is_some_and(|r| r.contains("refused"))
        })
        .await;
    let reason = match &state {
        TunnelState::Down { reason } | TunnelState::Waiting { reason, .. } => reason.clone(),
        other => format!("{other:?}"),
    };
    eprintln!("after the reconnect: {reason}");
    assert!(
        reason.contains("probably our previous session still holds the port")
            && reason.contains("ClientAliveInterval"),
        "{reason}"
    );
}

/// The laptop's config for an `-R` forward "api" (a fresh echo server here, a
/// free port on the hub) to `sshd` through the proxy `link`; and that port.
async fn reverse_through(sshd: &Sshd, link: &mesh_tests::delay::DelayProxy) -> (String, u16) {
    let known = sshd.dir.path().join("known_hosts_via");
    std::fs::write(
        &known,
        format!("{}\n", sshd.known_hosts_line_via(link.addr.port())),
    )
    .expect("known_hosts");
    let here = servers::echo().await;
    let remote = mesh_tests::free_port();
    let cfg = format!(
        "node = \"robbiebook1\"\n[[peer]]\nname = \"aurora\"\nssh = \"{}@127.0.0.1:{}\"\nidentity = [\"{}\"]\nknown_hosts = \"{}\"\n\
         keepalive = {{ interval = \"1s\", count = 3 }}\nbackoff = {{ initial = \"200ms\", max = \"1s\" }}\nconnect_timeout = \"3s\"\n\
         [[peer.reverse]]\nname = \"api\"\nremote = \"127.0.0.1:{remote}\"\nlocal = \"{here}\"\n",
        mesh_tests::whoami(),
        link.addr.port(),
        sshd.client_key.private.display(),
        known.display(),
    );
    (cfg, remote)
}

/// A firehose (port 9000: sends `total` bytes to whoever connects) and an echo
/// (port 9001) on the node's loopback, in Python so they run inside its namespace.
const SERVERS: &str = r#"
import socket, sys, threading
total = int(sys.argv[1])
def firehose(c):
    chunk = b"x" * 65536
    left = total
    try:
        while left > 0:
            n = min(left, len(chunk))
            c.sendall(chunk[:n])
            left -= n
    finally:
        c.close()
def echo(c):
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    finally:
        c.close()
def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s
def serve(s, f):
    while True:
        c, _ = s.accept()
        threading.Thread(target=f, args=(c,), daemon=True).start()
for port, f in ((9000, firehose), (9001, echo)):
    threading.Thread(target=serve, args=(listen(port), f), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// Downloads everything from `bulk` while, every second, a second connection
/// echoes through `echo`: (bytes, seconds, echoes that worked, echoes tried, the
/// slowest echo).
async fn download_with_echoes(bulk: u16, echo: u16) -> (usize, f64, usize, usize, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = std::time::Instant::now();
    let download = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", bulk))
            .await
            .expect("connect");
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k,
            }
        }
    };
    let stats = std::sync::Mutex::new((0usize, 0usize, Duration::ZERO));
    let echoes = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let t = std::time::Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(40), async {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", echo)).await?;
                s.write_all(b"still there?").await?;
                let mut got = [0u8; 12];
                s.read_exact(&mut got).await?;
                std::io::Result::Ok(&got == b"still there?")
            })
            .await;
            let mut st = stats.lock().expect("stats");
            st.1 += 1;
            if matches!(r, Ok(Ok(true))) {
                st.0 += 1;
                st.2 = st.2.max(t.elapsed());
            }
        }
    };
    let n = tokio::select! {
        n = download => n,
        () = echoes => 0,
    };
    let done = start.elapsed().as_secs_f64();
    // The echo under way when the download ended is not counted.
    let stats = *stats.lock().expect("stats");
    (n, done, stats.0, stats.1, stats.2)
}

/// A 200 kB/s link (`tc tbf` on the hub's side): a large download through a
/// forward completes in one SSH session while a second connection to the same
/// node keeps working — keepalive answers wait behind the bulk data, and bytes
/// arriving count as alive. OpenSSH's `ssh -L` with the same ServerAlive settings
/// does the same on the same link; both are measured. `MESH_SLOW_LINK_MB` sets the
/// size (3 MB by default to keep CI short; the issue's 50 MB takes 4 min a side).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_link_carries_a_large_download_in_one_session_and_other_connections_keep_working() {
    let _turn = ONE_LINK_AT_A_TIME.lock().await;
    let mb: usize = mesh_tests::env_or("MESH_SLOW_LINK_MB", 3);
    let total = mb << 20;
    let hub = Netns::create("slowhub");
    let sshd = Sshd::start_in_stock(&hub);
    let _servers = hub.spawn_ready(
        std::path::Path::new("python3"),
        &["-c", SERVERS, &total.to_string()],
        "ready",
    );
    let tc = hub
        .command("tc")
        .args([
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1600kbit", "burst", "16kb",
            "latency", "400ms",
        ])
        .output()
        .expect("tc");
    assert!(
        tc.status.success(),
        "tc: {}",
        String::from_utf8_lossy(&tc.stderr)
    );
    let (bulk, echo) = (mesh_tests::free_port(), mesh_tests::free_port());
    let cfg = format!(
        "node = \"robbiebook1\"\n{}",
        peer_toml(
            "aurora",
            &sshd,
            &trust(&sshd),
            &format!(
                "[[peer.forward]]\nname = \"bulk\"\nlocal = \"127.0.0.1:{bulk}\"\nremote = \"127.0.0.1:9000\"\n\
                 [[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{echo}\"\nremote = \"127.0.0.1:9001\"\n"
            ),
        )
    );
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_up("bulk").await;
    let (n, secs, ok, tried, slowest) = download_with_echoes(bulk, echo).await;
    let tunnels = mesh.client().tunnels().await.expect("tunnels");
    let reconnects = tunnels.tunnels[0].reconnects;
    eprintln!(
        "robbie-mesh, 200 kB/s link, keepalive 1 s × 3: {n} of {total} bytes in {secs:.1} s ({:.0} kB/s), \
         {reconnects} reconnects; second connection: {ok}/{tried} echoes, slowest {slowest:?}",
        n as f64 / secs / 1e3
    );
    drop(mesh);

    // OpenSSH on the same link, same keepalive.
    let (obulk, oecho) = (mesh_tests::free_port(), mesh_tests::free_port());
    let mut ssh = sshd
        .openssh(
            &hub.ip.to_string(),
            22,
            &trust(&sshd),
            &[
                "-o",
                "ServerAliveInterval=1",
                "-o",
                "ServerAliveCountMax=3",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("{obulk}:127.0.0.1:9000"),
                "-L",
                &format!("{oecho}:127.0.0.1:9001"),
            ]
            .map(String::from),
        )
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ssh");
    mesh_tests::wait_listening(oecho, "ssh -L");
    let (on, osecs, ook, otried, oslowest) = download_with_echoes(obulk, oecho).await;
    let alive = ssh.try_wait().ok().flatten().is_none();
    let _ = ssh.kill();
    let _ = ssh.wait();
    eprintln!(
        "OpenSSH ssh -L, same link and keepalive: {on} of {total} bytes in {osecs:.1} s ({:.0} kB/s), session {}; \
         second connection: {ook}/{otried} echoes, slowest {oslowest:?}",
        on as f64 / osecs / 1e3,
        if alive { "still up" } else { "ended" }
    );
    assert_eq!(n, total, "the whole download through robbie-mesh");
    assert_eq!(reconnects, 0, "in one session");
    assert!(
        tried > 0 && ok == tried,
        "every echo on the second connection worked: {ok}/{tried}"
    );
}

/// A 200 ms round trip to the serving node (a tethered or far link, through a
/// delaying proxy in front of its sshd), probed with the default timeout every
/// second under steady load: the node stays online (its probe latency is one
/// light request, and degraded needs several slow probes in a row) and the route
/// never moves. `MESH_DELAY_LINK_SECS` sets how long (45 s by default in CI; the
/// issue's 5 minutes with 300).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_200_ms_link_keeps_its_route_under_steady_load() {
    let _turn = ONE_LINK_AT_A_TIME.lock().await;
    let secs: u64 = mesh_tests::env_or("MESH_DELAY_LINK_SECS", 45);
    let sshd = Sshd::start();
    let link = mesh_tests::delay::DelayProxy::start(sshd.addr(), Duration::from_millis(100)).await;
    let aurora = mesh_tests::ollama::OllamaStub::start("aurora", &["llama3.2:3b"]).await;
    let book = mesh_tests::ollama::OllamaStub::start("book", &["llama3.2:3b"]).await;
    let known = sshd.dir.path().join("known_hosts_far");
    // The server's key, under the address robbie-mesh dials (the proxy's).
    std::fs::write(
        &known,
        format!("{}\n", sshd.known_hosts_line_via(link.addr.port())),
    )
    .expect("known_hosts");
    let (tunnel, endpoint) = (mesh_tests::free_port(), mesh_tests::free_port());
    let cfg = format!(
        "node = \"book\"\n[[peer]]\nname = \"aurora\"\nssh = \"{user}@127.0.0.1:{port}\"\nidentity = [\"{key}\"]\nknown_hosts = \"{kh}\"\n\
         [[peer.forward]]\nname = \"aurora-ollama\"\nlocal = \"127.0.0.1:{tunnel}\"\nremote = \"{remote}\"\n\
         [[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
         candidates = [{{ node = \"aurora\", tunnel = \"aurora-ollama\" }}, {{ node = \"book\", address = \"{local}\" }}]\n\
         probe = {{ remote_interval = \"1s\" }}\n",
        user = mesh_tests::whoami(),
        port = link.addr.port(),
        key = sshd.client_key.private.display(),
        kh = known.display(),
        remote = aurora.addr,
        local = book.addr,
    );
    let mesh = Mesh::start(&cfg).await;
    // Subscribed before the first route is chosen (the SSH handshake alone takes
    // several round trips): the start-up's own events are read up to the route
    // to aurora, and only what follows counts.
    let mut events = mesh.service.events.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Ok(e) if matches!(&e.kind, robbie_mesh::events::EventKind::Route { to: Some(n), .. } if n == "aurora") => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("the route goes to aurora within 20 s");
    let client = mesh_tests::http();
    let url = format!("http://127.0.0.1:{endpoint}/api/generate");
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let (mut served, mut failed, mut slowest) = (0usize, Vec::new(), Duration::ZERO);
    while std::time::Instant::now() < end {
        let t = std::time::Instant::now();
        match client
            .post(&url)
            .json(&serde_json::json!({"model": "llama3.2:3b", "prompt": "hi"}))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 && mesh_tests::served_by(&r) == "aurora" => {
                let _ = r.bytes().await;
                served += 1;
            }
            Ok(r) => failed.push(format!("{} from {}", r.status(), mesh_tests::served_by(&r))),
            Err(e) => failed.push(e.to_string()),
        }
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut changes = Vec::new();
    while let Ok(e) = events.try_recv() {
        match e.kind {
            robbie_mesh::events::EventKind::Route { to, reason, .. } => {
                changes.push(format!("{to:?}: {reason}"))
            }
            robbie_mesh::events::EventKind::Health {
                node,
                health,
                reason,
                ..
            } => changes.push(format!("{node} {health:?}: {reason}")),
            _ => {}
        }
    }
    let st = mesh.status().await;
    let latency = st.services[0].candidates[0].latency_ms.unwrap_or(f64::NAN);
    eprintln!(
        "200 ms link, {secs} s of steady load: {served} requests served by aurora, {} elsewhere or failed, slowest {slowest:?}; \
         probe latency now {latency} ms; route and health changes: {changes:?}",
        failed.len()
    );
    assert!(
        changes.is_empty(),
        "the route and aurora's health never moved: {changes:?}"
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(served > 0);
}

/// The link goes quiet just as the `-R` forwards are being registered (the
/// server's "authenticated" got through, our request does not): registration has
/// a deadline, the session is given up, and the tunnel comes back by itself once
/// the link does — no restart, no tunnel stuck in "connecting".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_that_dies_during_reverse_forward_registration_recovers_by_itself() {
    let sshd = Sshd::start();
    let link = mesh_tests::delay::DelayProxy::start(sshd.addr(), Duration::from_millis(10)).await;
    let (cfg, remote) = reverse_through(&sshd, &link).await;
    // Freeze our side of the link the moment sshd has accepted the key: the
    // server's success reaches us, our tcpip-forward request does not.
    let log = sshd.dir.path().join("sshd.log");
    let accepted_before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("Accepted publickey")
        .count();
    let mesh = Mesh::start(&cfg).await;
    let t = std::time::Instant::now();
    loop {
        let n = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Accepted publickey")
            .count();
        if n > accepted_before {
            link.freeze_upstream(true);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "sshd never accepted the key"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (state, took) = mesh
        .wait_state("api", Duration::from_secs(10), |s| {
            s.reason()
                .is_some_and(|r| r.contains("no answer to the -R request"))
        })
        .await;
    eprintln!("registration given up after {took:?}: {state:?}");
    link.freeze_upstream(false);
    let (_, back) = mesh
        .wait_state("api", Duration::from_secs(15), TunnelState::is_up)
        .await;
    eprintln!("the -R forward is up {back:?} after the link came back");
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", remote)).await?;
        s.write_all(b"through").await?;
        let mut got = [0u8; 7];
        s.read_exact(&mut got).await?;
        std::io::Result::Ok(got)
    })
    .await;
    assert!(
        matches!(answer, Ok(Ok(g)) if &g == b"through"),
        "{answer:?}"
    );
}
