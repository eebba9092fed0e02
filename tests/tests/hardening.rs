//! A hostile web page, a leaking client and a careless config against the API
//! and the endpoints (all on loopback): the `Host` check, hop-by-hop and
//! `x-robbie-*` headers, idle and half-sent connections, the memory budget for
//! request bodies, the store's body limit, and `/metrics` in local-only mode.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use mesh_tests::{free_port, Mesh};

/// A backend that answers every request with the headers it received (JSON),
/// and a forged `x-robbie-node` and hop-by-hop header of its own.
async fn header_echo() -> SocketAddr {
    let app = axum::Router::new()
        .fallback(|headers: HeaderMap, _body: axum::body::Bytes| async move {
            let seen: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
                    )
                })
                .collect();
            (
                [
                    ("x-robbie-node", "forged-by-backend"),
                    ("connection", "x-backend-hop"),
                    ("x-backend-hop", "1"),
                ],
                axum::Json(serde_json::Value::Object(seen)),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable());
    mesh_tests::servers::app(app).await
}

fn http_service(port: u16, backend: SocketAddr, extra: &str) -> String {
    format!(
        "node = \"here\"\n{extra}\n[[service]]\nname = \"gpu\"\nkind = \"http\"\nlisten = \"127.0.0.1:{port}\"\n\
         hosts = [\"gpu.home.arpa\"]\n\
         candidates = [ {{ node = \"here\", address = \"{backend}\" }} ]\n"
    )
}

/// One raw HTTP/1.1 exchange: what the client writes, the whole answer (the
/// request asks to close); empty if nothing listens.
fn raw(addr: SocketAddr, request: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// DNS rebinding: a page whose name now resolves to 127.0.0.1 sends its own
/// name as `Host`. The endpoint refuses it (as the API does), serves loopback
/// names and the names the service lists, refuses two `Host`s or an
/// unreadable one; the backend sees the client's `Host`, so its own check of
/// it still means something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_refuse_a_rebound_host_and_pass_the_clients_on() {
    let backend = header_echo().await;
    let port = free_port();
    let mesh = Mesh::start(&http_service(port, backend, "")).await;
    let ep: SocketAddr = ([127, 0, 0, 1], port).into();
    mesh_tests::wait_listening(port, "endpoint");
    let ask = |host: &str| {
        raw(
            ep,
            &format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    let evil = ask("attacker.example:11434");
    assert_eq!(status_of(&evil), 403, "{evil}");
    assert!(evil.contains("not a loopback name"), "{evil}");
    for ok in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "gpu.home.arpa".to_string(),
        format!("GPU.home.arpa:{port}"),
    ] {
        let a = ask(&ok);
        assert_eq!(status_of(&a), 200, "Host {ok}: {a}");
        assert!(
            a.to_ascii_lowercase()
                .contains(&format!("\"host\":\"{}\"", ok.to_ascii_lowercase())),
            "the backend saw the client's Host {ok}: {a}"
        );
    }
    let two = raw(
        ep,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    );
    assert!(matches!(status_of(&two), 400 | 403), "{two}");
    let mut bad = TcpStream::connect(ep).expect("connect");
    bad.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\xff\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = Vec::new();
    let _ = bad.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(matches!(status_of(&out), 400 | 403), "{out}");
    mesh.stop().await;
}

/// Hop-by-hop headers (the fixed ones and those a `Connection` header names)
/// stop at the endpoint both ways, and `x-robbie-*` from a client or a
/// backend never passes: `x-robbie-node` names the node that really served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_forged_robbie_headers_stop_at_the_endpoint() {
    let backend = header_echo().await;
    let port = free_port();
    let mesh = Mesh::start(&http_service(port, backend, "")).await;
    mesh_tests::wait_listening(port, "endpoint");
    let answer = raw(
        ([127, 0, 0, 1], port).into(),
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close, x-secret\r\n\
         Proxy-Connection: x-other\r\nX-Secret: s\r\nX-Other: o\r\nKeep-Alive: timeout=5\r\n\
         X-Robbie-Node: forged-by-client\r\nx-robbie-tried: forged\r\nX-Kept: yes\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 200, "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
    let seen: serde_json::Value = serde_json::from_str(body.trim()).expect("json");
    for gone in [
        "x-secret",
        "x-other",
        "keep-alive",
        "proxy-connection",
        "x-robbie-node",
        "x-robbie-tried",
    ] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the backend: {seen}"
        );
    }
    assert_eq!(seen["x-kept"], "yes", "{seen}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-robbie-node: here"), "{head}");
    assert!(!head.contains("forged"), "{head}");
    assert!(!head.contains("x-backend-hop: 1"), "{head}");
    mesh.stop().await;
}

/// Reads until the server closes the connection; how long that took.
fn closed_after(mut s: TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).ok();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t.elapsed(),
            // A signal to this process (another test's child exiting) is not an answer.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("not closed within {limit:?}: {e}"),
        }
    }
}

/// A connection that never sends, one that sends its head a byte at a time
/// (slowloris), an idle keep-alive after an answer, and a body that stalls:
/// each is closed within `[limits] idle`, on the API and on an endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed_within_the_idle_limit() {
    let backend = header_echo().await;
    let port = free_port();
    let mesh = Mesh::start(&http_service(port, backend, "[limits]\nidle = \"1s\"\n")).await;
    mesh_tests::wait_listening(port, "endpoint");
    let limit = Duration::from_secs(4);
    for addr in [mesh.api, SocketAddr::from(([127, 0, 0, 1], port))] {
        let silent = TcpStream::connect(addr).expect("connect");
        let took = closed_after(silent, limit);
        assert!(
            took >= Duration::from_millis(900),
            "{addr}: closed too early {took:?}"
        );

        let mut slow = TcpStream::connect(addr).expect("connect");
        let dripping = std::thread::spawn(move || {
            let t = Instant::now();
            for b in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
                .iter()
                .cycle()
            {
                if slow.write_all(&[*b]).is_err() || t.elapsed() > Duration::from_secs(8) {
                    return t.elapsed();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            unreachable!()
        });
        let took = dripping.join().expect("thread");
        assert!(
            took < limit,
            "{addr}: slowloris kept its connection {took:?}"
        );

        let mut kept = TcpStream::connect(addr).expect("connect");
        kept.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("write");
        let took = closed_after(kept, limit);
        assert!(took < limit, "{addr}: idle keep-alive {took:?}");
    }
    // A body that stops half way: 408, the connection closed.
    let mut half = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect");
    half.write_all(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc")
        .expect("write");
    half.set_read_timeout(Some(limit)).ok();
    let mut out = Vec::new();
    let _ = half.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&out), 408, "{out}");
    mesh.stop().await;
}

/// Bodies held for retries share one budget (`[limits] body_memory`): a
/// request that would go over it gets 503 with `Retry-After` at once, and is
/// served once memory is free again; one over the endpoint's largest body is
/// 413, naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_share_a_memory_budget() {
    let backend = header_echo().await;
    let port = free_port();
    let mesh = Mesh::start(&http_service(
        port,
        backend,
        "[limits]\nbody_memory = \"64MiB\"\n",
    ))
    .await;
    mesh_tests::wait_listening(port, "endpoint");
    let ep = SocketAddr::from(([127, 0, 0, 1], port));
    // 40 MB declared and being sent: its share is held.
    let mut first = TcpStream::connect(ep).expect("connect");
    first
        .write_all(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 40000000\r\n\r\n")
        .expect("write");
    first.write_all(&vec![b'a'; 1 << 20]).expect("write");
    let client = mesh_tests::http();
    let url = format!("http://127.0.0.1:{port}/y");
    let second = std::sync::Arc::new(std::sync::Mutex::new(None));
    // The first request's head is read before its body: poll until its share is taken.
    mesh_tests::eventually(Duration::from_secs(5), "the budget is taken", || {
        let (client, url, second) = (client.clone(), url.clone(), second.clone());
        async move {
            let r = client
                .post(&url)
                .body(vec![b'b'; 30_000_000])
                .send()
                .await
                .expect("send");
            let busy = r.status() == 503;
            if busy {
                *second.lock().expect("lock") = Some((
                    r.headers().get("retry-after").cloned(),
                    r.text().await.unwrap_or_default(),
                ));
            }
            busy
        }
    })
    .await;
    let (retry_after, text) = second.lock().expect("lock").take().expect("503");
    assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"2"[..]));
    assert!(text.contains("body_memory"), "{text}");
    // The first finishes; the budget is free again.
    first
        .write_all(&vec![b'a'; 40_000_000 - (1 << 20)])
        .expect("write");
    let mut head = [0u8; 12];
    first.read_exact(&mut head).expect("answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(first);
    let r = client
        .post(&url)
        .body(vec![b'b'; 30_000_000])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let r = client
        .post(&url)
        .header("content-length", "70000000")
        .body(vec![b'c'; 70_000_000])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
        assert!(r.text().await.unwrap_or_default().contains("64 MiB"));
    }
    mesh.stop().await;
}

/// The store takes what it says it takes: a 3 MB message (it had got "length
/// limit exceeded"), and a body over the limit is 413 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_takes_a_large_message_and_names_its_limit() {
    let mesh = Mesh::start("node = \"here\"\n").await;
    let client = mesh.client();
    let id = client.create_conversation("big").await.expect("create").id;
    let message = |content: String| robbie_mesh::api::wire::NewMessage {
        role: "user".into(),
        content,
        model: None,
    };
    let m = client
        .append_message(&id, &message("x".repeat(3 << 20)))
        .await
        .expect("a 3 MB message");
    assert_eq!(m.content.len(), 3 << 20);
    // Over the limit: sent by hand, to see the answer's headers.
    let path = format!("/v1/conversations/{id}/messages");
    let r = client
        .request(reqwest::Method::POST, &path)
        .json(&message("x".repeat(20 << 20)))
        .send()
        .await
        .expect("append");
    assert_eq!(r.status(), 413);
    // The body was not read to its end: the client is told not to reuse the
    // connection (it had reused it, and the next request failed).
    assert_eq!(
        r.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let text = r.text().await.unwrap_or_default();
    assert!(text.contains("8 MiB"), "{text}");
    let mut long_model = message("hi".into());
    long_model.model = Some("m".repeat(5000));
    let e = client
        .append_message(&id, &long_model)
        .await
        .expect_err("a 5000-byte model name");
    assert_eq!(e.status(), Some(400), "{e}");
    mesh.stop().await;
}

/// `/metrics` in local-only mode still says what the process is and how it
/// is doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_in_local_only_mode_describe_the_process() {
    let mesh = Mesh::start("node = \"here\"\n").await;
    let text = mesh_tests::get(format!("http://{}/metrics", mesh.api))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "robbie_build_info{version=\"",
        "mode=\"local-only\"} 1",
        "robbie_uptime_seconds ",
        "robbie_store_pending_rows 0",
        "robbie_process_open_fds ",
        "robbie_process_max_fds ",
        "robbie_process_resident_memory_bytes ",
        "robbie_connections_refused_total ",
    ] {
        assert!(text.contains(line), "`{line}` in:\n{text}");
    }
    mesh.stop().await;
}

/// VmHWM (peak resident memory) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |k| k * 1024)
}

/// One request on a fresh connection; its status and how long it took.
fn timed_get(addr: SocketAddr, path: &str) -> (u16, Duration) {
    let t = Instant::now();
    let answer = raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    );
    (status_of(&answer), t.elapsed())
}

/// A leaking program on the machine: the service (release build) under the
/// open-file limit systemd gives a service (1024), 1100 idle connections and
/// 500 slowloris ones on the API and an endpoint. Meanwhile a tunnel carries
/// requests, the probes stay green, `/health` answers within 100 ms, and every
/// idle connection is closed within `[limits] idle`. Then 20 concurrent 60 MB
/// bodies: memory stays within the body budget (256 MiB) plus the process's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leaking_client_does_not_take_the_mesh_down() {
    // This test's own side needs more than 2000 sockets.
    let _ = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            "--nofile=65536:65536",
        ])
        .status();
    let sshd = mesh_tests::sshd::Sshd::start();
    let behind = mesh_tests::servers::http("behind-the-tunnel").await;
    let local = mesh_tests::servers::http("here").await;
    let (api, fwd, ep) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "node = \"here\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n[limits]\nidle = \"2s\"\n\
         [store]\npath = \"{store}\"\n{peer}\
         [[service]]\nname = \"gpu\"\nkind = \"http\"\nlisten = \"127.0.0.1:{ep}\"\n\
         probe = {{ local_interval = \"500ms\" }}\n\
         candidates = [ {{ node = \"here\", address = \"{local}\" }} ]\n",
        store = dir.path().join("store.db").display(),
        peer = mesh_tests::peer_toml(
            "aurora",
            &sshd,
            &mesh_tests::trust(&sshd),
            &format!("[[peer.forward]]\nname = \"web\"\nlocal = \"127.0.0.1:{fwd}\"\nremote = \"{behind}\"\n"),
        ),
    );
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, &config).expect("config");
    let log = std::fs::File::create(dir.path().join("service.log")).expect("log");
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=1024:1024")
        .arg(mesh_tests::release_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("ROBBIE_MESH_LOG", "info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the service");
    let pid = child.id();
    let api_addr = SocketAddr::from(([127, 0, 0, 1], api));
    let ep_addr = SocketAddr::from(([127, 0, 0, 1], ep));
    let fwd_addr = SocketAddr::from(([127, 0, 0, 1], fwd));
    mesh_tests::wait_for(
        Duration::from_secs(20),
        || timed_get(fwd_addr, "/").0 == 200 && timed_get(ep_addr, "/").0 == 200,
        || std::fs::read_to_string(dir.path().join("service.log")).unwrap_or_default(),
    );
    let limit = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    assert!(
        limit
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")),
        "{limit}"
    );

    // The flood: 1100 silent connections on the endpoint, 250 slowloris on each.
    let mut idle = Vec::new();
    for _ in 0..1100 {
        if let Ok(s) = TcpStream::connect(ep_addr) {
            idle.push(s);
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slowloris = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conns: Vec<TcpStream> = (0..500)
                .filter_map(|i| {
                    TcpStream::connect(if i % 2 == 0 { api_addr } else { ep_addr }).ok()
                })
                .collect();
            let mut reopened = 0usize;
            let head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ";
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, c) in conns.iter_mut().enumerate() {
                    if c.write_all(&[head[k % head.len()]]).is_err() {
                        // Closed by the service: come back, as an attacker would.
                        if let Ok(n) =
                            TcpStream::connect(if i % 2 == 0 { api_addr } else { ep_addr })
                        {
                            *c = n;
                            reopened += 1;
                        }
                    }
                }
                k += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            reopened
        })
    };

    // Meanwhile: /health, the tunnel and the probes, for 8 s.
    let started = Instant::now();
    let (mut worst_health, mut tunnel_ok, mut tunnel_failed) = (Duration::ZERO, 0, 0);
    while started.elapsed() < Duration::from_secs(8) {
        let (status, took) = timed_get(api_addr, "/health");
        assert_eq!(status, 200, "/health during the flood");
        worst_health = worst_health.max(took);
        match timed_get(fwd_addr, "/").0 {
            200 => tunnel_ok += 1,
            _ => tunnel_failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = mesh_tests::client(api_addr).status().await.expect("status");
    let health = status.services[0].candidates[0].health.health;
    // Every idle connection was closed by now (2 s idle; refused ones at once).
    let mut still_open = 0;
    for mut s in idle {
        s.set_nonblocking(true).ok();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            _ => still_open += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reopened = slowloris.join().expect("slowloris");
    let log = std::fs::read_to_string(dir.path().join("service.log")).unwrap_or_default();
    let accept_warnings = log.matches("cannot accept").count();
    eprintln!(
        "flood: /health worst {worst_health:?}; tunnel {tunnel_ok} ok / {tunnel_failed} failed; probe {health:?}; \
         idle still open {still_open} of 1100; slowloris reconnected {reopened} times; accept warnings {accept_warnings}"
    );
    assert!(
        worst_health < Duration::from_millis(100),
        "/health took {worst_health:?}"
    );
    assert_eq!(tunnel_failed, 0, "requests through the tunnel failed");
    assert_eq!(health, robbie_mesh::api::wire::Health::Online, "{status:?}");
    assert_eq!(still_open, 0, "idle connections outlived the idle limit");
    assert!(
        accept_warnings <= 2,
        "accept warnings are said once per burst:\n{log}"
    );

    // Twenty 60 MB bodies at once: 503 beyond the budget, memory bounded.
    let before = peak_rss(pid);
    let client = mesh_tests::http();
    let url = format!("http://{ep_addr}/upload");
    let body = axum::body::Bytes::from(vec![b'x'; 60_000_000]);
    let sends: Vec<_> = (0..20)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                client
                    .post(url)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut codes = Vec::new();
    for s in sends {
        codes.push(s.await.expect("task").unwrap_or(0));
    }
    let peak = peak_rss(pid);
    eprintln!(
        "20 x 60 MB: answers {codes:?}; peak RSS {} MiB (before {} MiB)",
        peak >> 20,
        before >> 20
    );
    assert!(codes.iter().all(|c| matches!(c, 200 | 503)), "{codes:?}");
    assert!(codes.contains(&503), "some went over the budget: {codes:?}");
    assert!(
        peak < before + (256 << 20) + (64 << 20),
        "peak RSS {} MiB for a 256 MiB budget (before {} MiB)",
        peak >> 20,
        before >> 20
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// DNS rebinding and cross-port requests from real headless Chromium: a page
/// whose name resolves to 127.0.0.1 reads nothing from the API or an endpoint
/// under that name, and a page of another local web app (another port) makes
/// the API do nothing: no reconnect, no conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_page_in_chromium_gets_nothing() {
    let sshd = mesh_tests::sshd::Sshd::start();
    let (peer, _) = mesh_tests::echo_peer(&sshd).await;
    let ollama = mesh_tests::ollama::OllamaStub::start("here", &["llama3.2:3b"]).await;
    let ep = free_port();
    let mesh = Mesh::start(&format!(
        "node = \"here\"\n{peer}\n[[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{ep}\"\n\
         candidates = [ {{ node = \"here\", address = \"{}\" }} ]\n",
        ollama.addr
    ))
    .await;
    mesh.wait_up("echo").await;
    mesh_tests::wait_listening(ep, "endpoint");
    // Straight from this machine the endpoint answers (it is not simply down).
    let tags = mesh_tests::get(format!("http://127.0.0.1:{ep}/api/tags"))
        .await
        .expect("tags");
    assert_eq!(tags.status(), 200);

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/rebinding.mjs");
    let out = std::process::Command::new("node")
        .arg(&script)
        .args([
            mesh.api.port().to_string(),
            ep.to_string(),
            free_port().to_string(),
            "echo".to_string(),
        ])
        .output()
        .expect("node (tests/setup.sh installs it with playwright-core and chromium)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(text.trim()).expect("the script's JSON");
    eprintln!("what the hostile pages saw: {seen:#}");
    for read in ["api_conversations", "api_status", "endpoint_tags"] {
        assert_eq!(seen[read]["status"], 403, "{read}: {seen}");
        let body = seen[read]["body"].as_str().unwrap_or("");
        assert!(
            !body.contains("llama3.2")
                && !body.contains("\"tunnels\"")
                && !body.contains("\"items\""),
            "{read} leaked: {body}"
        );
    }
    // The browser did send the cross-port requests (an opaque answer): it is
    // robbie-mesh that refused them.
    assert_eq!(seen["cross_port"]["reconnect"]["type"], "opaque", "{seen}");
    // Nothing happened on the API's side.
    let client = mesh.client();
    let tunnels = client.tunnels().await.expect("tunnels");
    assert_eq!(tunnels.tunnels[0].reconnects, 0, "{tunnels:?}");
    let conversations = client
        .conversations(&robbie_mesh::api::wire::Page::default())
        .await
        .expect("conversations");
    assert!(
        !conversations.iter().any(|c| c.title == "pwned"),
        "{conversations:?}"
    );
    mesh.stop().await;
}

/// The API token: conversations and every state-changing call need it (the
/// read-only status does not); a browser signs in with a one-time link that
/// sets an HTTP-only, SameSite=Strict cookie, and then its state-changing
/// calls must carry the API's own Origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_and_controls_need_the_token_or_a_signed_in_browser() {
    let sshd = mesh_tests::sshd::Sshd::start();
    let (mesh, _) = mesh_tests::echo_mesh(&sshd).await;
    let base = format!("http://{}", mesh.api);
    let anyone = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for (method, path) in [
        ("GET", "/v1/conversations"),
        ("POST", "/v1/conversations"),
        ("POST", "/v1/tunnels/echo/reconnect"),
        ("POST", "/v1/services/x/pin"),
        ("POST", "/v1/sync"),
        ("POST", "/v1/auth/link"),
    ] {
        let r = anyone
            .request(method.parse().expect("method"), format!("{base}{path}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401, "{method} {path}");
        assert!(r.headers().contains_key("www-authenticate"));
        let text = r.text().await.unwrap_or_default();
        assert!(text.contains("needs the API token"), "{text}");
    }
    for open in ["/health", "/v1/status", "/v1/tunnels", "/metrics", "/"] {
        let r = anyone
            .get(format!("{base}{open}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{open} stays open on loopback");
    }
    let wrong = anyone
        .get(format!("{base}/v1/conversations"))
        .bearer_auth("not-the-token-at-all")
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), 401);

    // The CLI's way: the token.
    let link: serde_json::Value = mesh_tests::http()
        .post(format!("{base}/v1/auth/link"))
        .send()
        .await
        .expect("link")
        .json()
        .await
        .expect("json");
    let url = link["url"].as_str().expect("url").to_string();
    assert!(url.contains("/login?code="), "{url}");
    // A browser follows it once: a cookie, and the dashboard.
    let signed = anyone.get(&url).send().await.expect("login");
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()["location"], "/");
    let cookie = signed.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let again = anyone.get(&url).send().await.expect("login");
    assert_eq!(again.status(), 403, "a link works once");
    let session = cookie.split(';').next().expect("name=value").to_string();
    let read = anyone
        .get(format!("{base}/v1/conversations"))
        .header("cookie", &session)
        .send()
        .await
        .expect("send");
    assert_eq!(read.status(), 200);
    let no_origin = anyone
        .post(format!("{base}/v1/conversations"))
        .header("cookie", &session)
        .json(&serde_json::json!({"title": "t"}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        no_origin.status(),
        403,
        "a browser's change carries its Origin"
    );
    let own = anyone
        .post(format!("{base}/v1/conversations"))
        .header("cookie", &session)
        .header("origin", &base)
        .json(&serde_json::json!({"title": "from the dashboard"}))
        .send()
        .await
        .expect("send");
    assert_eq!(own.status(), 201);
    // And the CLI's token does the same without a browser.
    let r = mesh_tests::http()
        .post(format!("{base}/v1/tunnels/echo/reconnect"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 202);
    mesh.stop().await;
}

/// A bug in a peer's supervisor (a panic, injected with a failpoint once its
/// first session is up): its tunnel does not stay "up" with nobody behind it.
/// Status shows it down with the reason, the log says so, and the supervisor
/// starts over: the tunnel comes back and carries bytes, the service never
/// stopped answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_supervisor_that_panics_is_restarted_and_says_so() {
    let sshd = mesh_tests::sshd::Sshd::start();
    let (peer, local) = mesh_tests::echo_peer(&sshd).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let api = free_port();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "node = \"book\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n[store]\npath = \"{}\"\n{peer}",
            dir.path().join("store.db").display()
        ),
    )
    .expect("config");
    let log_path = dir.path().join("service.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = std::process::Command::new(mesh_tests::workspace_bin("robbie-mesh"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("ROBBIE_MESH_FAILPOINT", "supervisor-session@1:panic")
        .env("ROBBIE_MESH_TOKEN", mesh_tests::token())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start");
    let url = format!("127.0.0.1:{api}");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let restarted = "the supervisor of peer aurora failed (failpoint supervisor-session@1); starting it again (restart 1)";
    mesh_tests::eventually(
        Duration::from_secs(20),
        "the tunnel back up after the restart",
        || {
            let (url, seen, log_path) = (url.clone(), seen.clone(), log_path.clone());
            async move {
                let Ok(v) = mesh_tests::client(&url).tunnels().await else {
                    return false;
                };
                let Some(t) = v.tunnels.first() else {
                    return false;
                };
                if let Some(reason) = t.reason.as_ref().filter(|r| r.contains("internal error")) {
                    *seen.lock().expect("lock") = Some(reason.clone());
                }
                t.state == robbie_mesh::api::wire::TunnelPhase::Up
                    && std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains(restarted))
            }
        },
    )
    .await;
    let reason = seen.lock().expect("lock").take();
    assert_eq!(
        reason.as_deref(),
        Some("internal error, restarted (1): failpoint supervisor-session@1"),
        "status showed why the tunnel was down"
    );
    let status: serde_json::Value = mesh_tests::get(format!("http://127.0.0.1:{api}/v1/status"))
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(
        status["internal_errors"][0]["task"], "the supervisor of peer aurora",
        "{status}"
    );
    let mut s = TcpStream::connect(("127.0.0.1", local)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"still here").expect("write");
    let mut back = [0u8; 10];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"still here");
    let _ = child.kill();
    let _ = child.wait();
}
