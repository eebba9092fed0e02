//! `robbie-mesh doctor` against a real node: a running service, a real sshd
//! with a -L and a -R forward, a real PostgreSQL primary behind the endpoint,
//! and another node's API (a stub that reports its time, so its clock can be
//! faked). First everything passes; then one fault at a time, each found by
//! the right check with the right fix, every finding printed with its ✓/✗.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mesh_tests::postgres::Postgres;
use mesh_tests::sshd::{keygen, Sshd};
use mesh_tests::{free_port, wait_for, whoami};
use robbie_mesh::doctor::{Finding, Report, Verdict};

fn bin() -> PathBuf {
    mesh_tests::workspace_bin("robbie-mesh")
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Another node's API that says the time `offset` seconds off this clock
/// (`i64::MIN`: a JSON answer that is not robbie-mesh's).
async fn peer_api(offset: Arc<AtomicI64>) -> std::net::SocketAddr {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/health",
        get(move || {
            let offset = offset.load(Ordering::Relaxed);
            async move {
                // A peer that answers, but not as robbie-mesh does.
                if offset == i64::MIN {
                    return axum::Json(serde_json::json!({"hello": "not a health answer"}));
                }
                let now = SystemTime::now();
                let time = if offset >= 0 {
                    now + Duration::from_secs(offset as u64)
                } else {
                    now - Duration::from_secs((-offset) as u64)
                };
                axum::Json(serde_json::json!({
                    "status": "ok", "node": "hub", "version": "0.1.0", "mode": "mesh",
                    "config": null, "time": humantime::format_rfc3339_millis(time).to_string(),
                }))
            }
        }),
    );
    mesh_tests::servers::app(app).await
}

struct Node {
    dir: tempfile::TempDir,
    sshd: Sshd,
    known_hosts: PathBuf,
    pg: Postgres,
    backend: std::net::SocketAddr,
    peer_api: std::net::SocketAddr,
    api: u16,
    endpoint: u16,
    landing: u16,
}

impl Node {
    /// The node's config, with `peer_extra` added to its peer and `extra` at the end.
    fn config(&self, identity: &Path, known_hosts: &Path, peer_extra: &str, extra: &str) -> String {
        format!(
            "node = \"desk\"\nnodes = [{{ node = \"hub\", address = \"{peer_api}\" }}]\n\
             [api]\nlisten = \"127.0.0.1:{api}\"\n\
             [store]\npath = \"{store}\"\n\
             [store.sync]\nservice = \"postgres\"\ndatabase = \"postgres\"\nuser = \"postgres\"\n\
             [[peer]]\nname = \"hub\"\nssh = \"{user}@{ssh}\"\nidentity = [\"{identity}\"]\n\
             known_hosts = \"{kh}\"\nconnect_timeout = \"3s\"\n\
             [[peer.forward]]\nname = \"hub-web\"\nlocal = \"127.0.0.1:{fwd}\"\nremote = \"{backend}\"\n\
             [[peer.reverse]]\nname = \"api-to-hub\"\nremote = \"127.0.0.1:{landing}\"\nlocal = \"127.0.0.1:{api}\"\n\
             {peer_extra}\n\
             [[service]]\nname = \"postgres\"\nkind = \"postgres\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
             candidates = [{{ node = \"desk\", address = \"127.0.0.1:{pg}\" }}]\n{extra}",
            peer_api = self.peer_api,
            api = self.api,
            store = self.dir.path().join("store.db").display(),
            user = whoami(),
            ssh = self.sshd.addr(),
            identity = identity.display(),
            kh = known_hosts.display(),
            fwd = free_port(),
            backend = self.backend,
            landing = self.landing,
            endpoint = self.endpoint,
            pg = self.pg.port,
        )
    }

    fn good(&self) -> String {
        self.config(&self.sshd.client_key.private, &self.known_hosts, "", "")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("config");
        path
    }
}

/// `doctor --json --config FILE` (with `env` added); its report, printed
/// line by line, and how long it took.
fn doctor(config: &Path, env: &[(&str, &str)]) -> (Report, Duration) {
    let started = Instant::now();
    let out = Command::new(bin())
        .args(["doctor", "--json", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("doctor");
    let took = started.elapsed();
    let report: Report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        out.status.success(),
        report.ok,
        "the exit status says whether all passed"
    );
    eprintln!(
        "--- doctor {} ({took:?}):\n{}",
        config.display(),
        report.text()
    );
    (report, took)
}

fn find<'r>(report: &'r Report, check: &str) -> &'r Finding {
    report
        .findings
        .iter()
        .find(|f| f.check.starts_with(check))
        .unwrap_or_else(|| panic!("no `{check}` finding:\n{}", report.text()))
}

/// The one failed finding of a report, which must be `check`'s; its fix.
fn only_failure<'r>(report: &'r Report, check: &str) -> &'r Finding {
    let failed: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .collect();
    assert_eq!(failed.len(), 1, "one fault, one ✗:\n{}", report.text());
    assert!(failed[0].check.starts_with(check), "{}", report.text());
    assert!(!report.ok);
    failed[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_each_fault_with_its_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start();
    let known_hosts = mesh_tests::trust(&sshd);
    let pg = Postgres::primary();
    mesh_tests::postgres::migrate(&bin(), &pg.url());
    let offset = Arc::new(AtomicI64::new(2));
    let node = Node {
        backend: mesh_tests::servers::http("behind").await,
        peer_api: peer_api(offset.clone()).await,
        api: free_port(),
        endpoint: free_port(),
        landing: free_port(),
        dir,
        sshd,
        known_hosts,
        pg,
    };
    let good = node.write("good.toml", &node.good());
    let log = std::fs::File::create(node.dir.path().join("service.log")).expect("log");
    let service = Service(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(&good)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the service"),
    );
    let client = mesh_tests::client(format!("127.0.0.1:{}", node.api));
    let up = || {
        let client = client.clone();
        async move {
            client.status().await.is_ok_and(|s| {
                s.tunnels
                    .iter()
                    .all(|t| t.state == robbie_mesh::api::wire::TunnelPhase::Up)
                    && s.services.iter().all(|s| s.route.is_some())
            })
        }
    };
    mesh_tests::eventually(
        Duration::from_secs(30),
        "tunnels up and the primary routed",
        up,
    )
    .await;

    // Healthy: every check passes, in seconds.
    let (report, took) = doctor(&good, &[]);
    assert!(report.ok, "{}", report.text());
    for check in [
        "config",
        "service",
        "peer hub: name",
        "peer hub: TCP",
        "peer hub: host key",
        "peer hub: login",
        "peer hub: -L hub-web",
        "peer hub: -R api-to-hub",
        "endpoint postgres",
        "clock hub",
        "primary",
        "disk",
    ] {
        assert_eq!(
            find(&report, check).verdict,
            Verdict::Pass,
            "{check}:\n{}",
            report.text()
        );
    }
    assert!(
        find(&report, "peer hub: login").detail.contains("id_"),
        "which key logged in"
    );
    assert!(
        took < robbie_mesh::doctor::CHECK_TIMEOUT * 2,
        "doctor took {took:?}"
    );

    // A wrong host key: known_hosts lists another key for the server.
    let other = keygen(node.dir.path(), "other-host");
    let public = other.public_line.clone();
    let wrong_kh = node.write(
        "wrong_known_hosts",
        &format!(
            "[127.0.0.1]:{} {}\n",
            node.sshd.addr().port(),
            public.trim()
        ),
    );
    let cfg = node.write(
        "hostkey.toml",
        &node.config(&node.sshd.client_key.private, &wrong_kh, "", ""),
    );
    let (report, _) = doctor(&cfg, &[]);
    let f = only_failure(&report, "peer hub: host key");
    assert!(f.detail.contains("HAS CHANGED"), "{}", f.detail);
    assert!(
        f.fix.as_deref().unwrap_or("").contains("ssh-keygen -f"),
        "{f:?}"
    );
    assert!(
        f.fix
            .as_deref()
            .unwrap_or("")
            .contains(&format!("ssh -p {} ", node.sshd.addr().port())),
        "the OpenSSH command that connects: {f:?}"
    );

    // A refused key: one the server does not list.
    let stranger = keygen(node.dir.path(), "stranger");
    let cfg = node.write(
        "key.toml",
        &node.config(&stranger.private, &node.known_hosts, "", ""),
    );
    let (report, _) = doctor(&cfg, &[]);
    let f = only_failure(&report, "peer hub: login");
    assert!(f.detail.contains("refused"), "{}", f.detail);
    assert!(
        f.fix.as_deref().unwrap_or("").contains("authorized_keys"),
        "{f:?}"
    );

    // A forward whose remote port is closed.
    let closed = free_port();
    let cfg = node.write(
        "closed.toml",
        &node.config(
            &node.sshd.client_key.private,
            &node.known_hosts,
            &format!("[[peer.forward]]\nname = \"hub-gone\"\nlocal = \"127.0.0.1:{}\"\nremote = \"127.0.0.1:{closed}\"\n", free_port()),
            "",
        ),
    );
    let (report, _) = doctor(&cfg, &[]);
    let f = only_failure(&report, "peer hub: -L hub-gone");
    assert!(
        f.detail
            .contains(&format!("nothing accepts 127.0.0.1:{closed}")),
        "{}",
        f.detail
    );

    // An endpoint's port held by another process.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").port();
    let cfg = node.write(
        "taken.toml",
        &node.config(
            &node.sshd.client_key.private,
            &node.known_hosts,
            "",
            &format!(
                "[[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{taken}\"\n\
                 candidates = [{{ node = \"desk\", address = \"127.0.0.1:{}\" }}]\n",
                free_port()
            ),
        ),
    );
    let (report, _) = doctor(&cfg, &[]);
    let f = only_failure(&report, "endpoint ollama");
    assert!(
        f.detail
            .contains(&format!("held by PID {}", std::process::id())),
        "{}",
        f.detail
    );
    assert!(
        f.fix.as_deref().unwrap_or("").contains("OLLAMA_HOST"),
        "{f:?}"
    );
    drop(squatter);

    // A locked keychain (a keyring of this test's own, on a bus of its own).
    let keyring = LockedKeyring::start(node.dir.path());
    let cfg = node.write(
        "keychain.toml",
        &node
            .good()
            .replace("identity = [\"", "identity = [\"keychain:hub\", \""),
    );
    let (report, _) = doctor(&cfg, &keyring.env());
    let f = only_failure(&report, "keychain");
    assert!(f.detail.starts_with("locked"), "{}", f.detail);
    assert!(f.fix.as_deref().unwrap_or("").contains("unlock"), "{f:?}");
    drop(keyring);

    // The other node's clock 5 minutes ahead.
    offset.store(300, Ordering::Relaxed);
    let (report, _) = doctor(&good, &[]);
    let f = only_failure(&report, "clock hub");
    assert!(
        f.detail.contains("hub's clock is 5m") && f.detail.contains("ahead"),
        "{}",
        f.detail
    );
    assert!(f.detail.contains("within 60s"), "{}", f.detail);
    assert!(
        f.fix
            .as_deref()
            .unwrap_or("")
            .contains("timedatectl set-ntp true"),
        "{f:?}"
    );
    // Something else answering where the peer's API should be.
    offset.store(i64::MIN, Ordering::Relaxed);
    let (report, _) = doctor(&good, &[]);
    let f = only_failure(&report, "clock hub");
    assert!(
        f.fix
            .as_deref()
            .unwrap_or("")
            .contains("`nodes` points at hub's"),
        "{f:?}"
    );
    offset.store(-2, Ordering::Relaxed);

    // The primary on an old schema.
    shift_schema_version(node.pg.port, -1);
    let (report, _) = doctor(&good, &[]);
    let f = only_failure(&report, "primary");
    assert!(
        f.fix
            .as_deref()
            .unwrap_or("")
            .contains("robbie-mesh db migrate"),
        "{f:?}"
    );
    shift_schema_version(node.pg.port, 1);

    // The service not running.
    drop(service);
    wait_for(
        Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", node.api)).is_err(),
        || "the service did not stop".into(),
    );
    let (report, _) = doctor(&good, &[]);
    let f = only_failure(&report, "service");
    assert!(
        f.fix
            .as_deref()
            .unwrap_or("")
            .contains("robbie-mesh service install"),
        "{f:?}"
    );
    // What needs the service's tunnels says so instead of failing.
    assert_eq!(
        find(&report, "peer hub: -R api-to-hub").verdict,
        Verdict::Pass,
        "{}",
        report.text()
    );
    assert_eq!(
        find(&report, "primary").verdict,
        Verdict::Skip,
        "{}",
        report.text()
    );
}

/// Moves the primary's robbie schema version by `by` (an older primary: -1).
fn shift_schema_version(port: u16, by: i32) {
    let out = Command::new(mesh_tests::postgres::bin_dir().join("psql"))
        .args(mesh_tests::postgres::client_args(port, "postgres"))
        .args([
            "-c",
            &format!("UPDATE robbie.schema_version SET version = version + ({by})"),
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Secret Service of this test's own (dbus-daemon + gnome-keyring-daemon),
/// its login keyring locked.
struct LockedKeyring {
    bus: Child,
    keyring: Child,
    address: String,
    home: tempfile::TempDir,
}

impl LockedKeyring {
    fn start(_dir: &Path) -> LockedKeyring {
        let home = tempfile::tempdir().expect("home");
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--print-address=1", "--nofork"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon");
        let mut line = String::new();
        {
            use std::io::BufRead;
            let out = bus.stdout.take().expect("stdout");
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .expect("address");
        }
        let address = line.trim().to_string();
        let (data, run) = (home.path().join("data"), home.path().join("run"));
        std::fs::create_dir_all(&data).expect("data");
        std::fs::create_dir_all(&run).expect("run");
        let mut keyring = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("XDG_DATA_HOME", &data)
            .env("XDG_RUNTIME_DIR", &run)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring-daemon");
        {
            use std::io::Write;
            let mut stdin = keyring.stdin.take().expect("stdin");
            stdin.write_all(b"doctor-test").expect("password");
        }
        let send = |args: &[&str]| {
            Command::new("dbus-send")
                .args([
                    "--session",
                    "--print-reply",
                    "--dest=org.freedesktop.secrets",
                    "/org/freedesktop/secrets",
                ])
                .args(args)
                .env("DBUS_SESSION_BUS_ADDRESS", &address)
                .output()
                .expect("dbus-send")
        };
        wait_for(
            Duration::from_secs(20),
            || {
                String::from_utf8_lossy(
                    &send(&["org.freedesktop.Secret.Service.ReadAlias", "string:default"]).stdout,
                )
                .contains("collection/login")
            },
            || "the keyring's login collection did not appear".into(),
        );
        let out = send(&[
            "org.freedesktop.Secret.Service.Lock",
            "array:objpath:/org/freedesktop/secrets/collection/login",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        LockedKeyring {
            bus,
            keyring,
            address,
            home,
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        vec![("DBUS_SESSION_BUS_ADDRESS", self.address.as_str())]
    }
}

impl Drop for LockedKeyring {
    fn drop(&mut self) {
        let _ = self.keyring.kill();
        let _ = self.keyring.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
        let _ = &self.home;
    }
}
