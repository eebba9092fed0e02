//! The dashboard in real headless Chromium against a running service with real
//! tunnels: it shows the node that serves Ollama; when that node's sshd is killed,
//! the page shows the new node within 2 s without a reload, and the route event in
//! its timeline; at 360 px (the tray popover) nothing overflows sideways.
//! Screenshots are kept in `<target>/test-artifacts/`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_tests::ollama::OllamaStub;
use mesh_tests::sshd::Sshd;
use mesh_tests::{two_node_ollama, Mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_follows_a_failover_live() {
    let mut sshd = Sshd::start();
    let aurora = OllamaStub::start("aurora", &["llama3.2:3b"]).await;
    let book = OllamaStub::start("book", &["llama3.2:3b"]).await;
    let (cfg, _) = two_node_ollama(&sshd, aurora.addr, book.addr, "");
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_route("aurora", Duration::from_secs(10)).await;

    // The page is served by the API, with a strict content security policy.
    let index = mesh_tests::get(format!("http://{}/", mesh.api))
        .await
        .expect("GET /");
    assert_eq!(index.status(), 200);
    assert!(index.headers()["content-security-policy"]
        .to_str()
        .is_ok_and(|c| c.contains("script-src 'self'")));

    let artifacts = mesh_tests::artifacts_dir();
    let mut browser = Browser::start("dashboard.mjs", mesh.api, &artifacts);
    let ready = browser.next().await;
    assert_eq!(ready, "READY aurora", "the page shows who serves Ollama");

    sshd.kill();
    browser.tell();
    let changed = browser.next().await;
    let parts: Vec<&str> = changed.split_whitespace().collect();
    assert_eq!(parts.first(), Some(&"CHANGED"), "{changed}");
    let ms: u64 = parts[1].parse().expect("ms");
    assert_eq!(&parts[2..], ["book", "same-page"], "{changed}");
    assert!(ms <= 2000, "the page took {ms} ms to show the failover");
    let timeline = browser.next().await;
    assert!(
        timeline.contains("ollama → book: aurora offline"),
        "{timeline}"
    );
    let narrow = browser.next().await;
    let width: u32 = narrow
        .strip_prefix("NARROW ")
        .and_then(|w| w.parse().ok())
        .unwrap_or(9999);
    assert!(width <= 360, "at 360 px the page is {width} px wide");
    let errors = browser.next().await;
    assert_eq!(errors, "ERRORS []", "the page logged errors");
    let status = browser.finish().await;
    assert!(status, "the browser script did not finish cleanly");
    assert!(artifacts.join("dashboard-after.png").exists());
    eprintln!(
        "dashboard showed the failover after {ms} ms; screenshots in {}",
        artifacts.display()
    );
}

/// A fresh install (no config: local-only) in real headless Chromium: the page
/// says what to run first instead of showing nothing; then findings that
/// `robbie-mesh doctor` handed the service show up — failed first, each with
/// its fix — without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_install_says_what_next_and_shows_the_doctors_findings() {
    let mesh = Mesh::start("node = \"fresh\"\n").await;
    let artifacts = mesh_tests::artifacts_dir();
    let mut browser = Browser::start("fresh.mjs", mesh.api, &artifacts);
    let setup = browser.next().await;
    assert!(
        setup.starts_with("SETUP \"This machine runs alone") && setup.contains("robbie-mesh init"),
        "{setup}"
    );

    // What `robbie-mesh doctor` hands the running service.
    let report = robbie_mesh::doctor::Report {
        ok: false,
        at: std::time::SystemTime::now(),
        findings: vec![
            robbie_mesh::doctor::Finding::pass("config", "no config file: local-only mode"),
            robbie_mesh::doctor::Finding::fail(
                "endpoint ollama (127.0.0.1:11434)",
                "taken, held by PID 42 (ollama)",
                "move it with OLLAMA_HOST=127.0.0.1:11435",
            ),
        ],
    };
    mesh.client()
        .keep_doctor(&report)
        .await
        .expect("PUT /v1/doctor");
    assert_eq!(
        mesh.client()
            .doctor()
            .await
            .expect("GET /v1/doctor")
            .map(|r| r.findings.len()),
        Some(2)
    );
    browser.tell();
    let doctor = browser.next().await;
    let rows: Vec<String> = doctor
        .strip_prefix("DOCTOR ")
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("{doctor}"));
    assert!(rows[0].contains("✗ 1 of 2 checks failed"), "{rows:?}");
    assert!(
        rows[1].contains("✗ endpoint ollama") && rows[1].contains("fix: move it with OLLAMA_HOST"),
        "the failed one first, with its fix: {rows:?}"
    );
    let errors = browser.next().await;
    assert_eq!(errors, "ERRORS []", "the page logged errors");
    assert!(
        browser.finish().await,
        "the browser script did not finish cleanly"
    );
}

/// A browser script of `tests/ui/` driving the dashboard at `api`, talking in
/// lines: what it saw on its stdout, "go" on its stdin.
struct Browser {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Browser {
    fn start(script: &str, api: std::net::SocketAddr, artifacts: &std::path::Path) -> Browser {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("ui")
            .join(script);
        let mut child = Command::new("node")
            .arg(&script)
            .arg(format!("http://{api}/"))
            .arg(artifacts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (nodejs; tests/setup.sh installs it with playwright-core and chromium)");
        let stdin = child.stdin.take();
        let lines = mesh_tests::lines_of(child.stdout.take().expect("stdout"));
        Browser {
            child,
            stdin,
            lines,
        }
    }

    /// Its next line (within a minute).
    async fn next(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), self.lines.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "(browser script ended)".into())
    }

    /// The test has done what the script waits for.
    fn tell(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "go").expect("tell the script");
    }

    /// Whether it ended cleanly within 20 s.
    async fn finish(mut self) -> bool {
        drop(self.stdin.take());
        tokio::task::spawn_blocking(move || {
            let end = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(st)) = self.child.try_wait() {
                    return st.success();
                }
                if std::time::Instant::now() > end {
                    let _ = self.child.kill();
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .expect("join")
    }
}
