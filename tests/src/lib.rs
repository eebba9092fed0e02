//! The robbie-mesh test harness: real processes (`sshd`, `ssh-agent`), small TCP/HTTP
//! servers on free ports, and a robbie-mesh service run in-process against them.
//! Everything waits by polling with a deadline; nothing sleeps for readiness.

pub mod api;
pub mod delay;
pub mod netns;
pub mod ollama;
pub mod postgres;
pub mod servers;
pub mod sshd;
pub mod systemd;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use robbie_mesh::config::Config;
use robbie_mesh::runtime::Service;
use robbie_mesh::tunnel::{ClockWatch, Tunnel, TunnelState};
use tokio_util::sync::CancellationToken;

/// How long anything may take to become ready before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A port nobody listens on right now, for a listener a test starts later.
///
/// Picked at random below Linux's ephemeral range (32768+), never with a bind to
/// port 0: a port the kernel handed out for port 0 can be handed out again (to
/// another test's port-0 listener or outgoing connection) before the test binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        // Never the same port twice in one process: a test asks for several before it binds any.
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port)
        {
            return port;
        }
    }
}

/// A number from the environment variable `name` (a test's or bench's size
/// knob), `default` when unset or not a number.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until something accepts connections on 127.0.0.1:`port` (a process
/// just started: ssh -L, a service's API); panics naming `what` after [`DEADLINE`].
pub fn wait_listening(port: u16, what: &str) {
    wait_for(
        DEADLINE,
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        || format!("{what} never listened on 127.0.0.1:{port}"),
    );
}

/// Polls `ok` until it is true or `deadline` passes (then panics with `why()`).
pub fn wait_for(deadline: Duration, mut ok: impl FnMut() -> bool, why: impl FnOnce() -> String) {
    let end = Instant::now() + deadline;
    while !ok() {
        assert!(Instant::now() < end, "{}", why());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async polling with a deadline; returns how long it took.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut ok: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if ok().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The API token every service and client of a test run shares:
/// `$ROBBIE_MESH_TOKEN` (tests/run.sh makes one per run), set here if missing
/// so that services started later, in this process or as children, use it.
pub fn token() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| match std::env::var("ROBBIE_MESH_TOKEN") {
            Ok(t) if t.len() >= 16 => t,
            _ => {
                let t = format!("test-token-{}-{}", std::process::id(), free_port());
                std::env::set_var("ROBBIE_MESH_TOKEN", &t);
                t
            }
        })
        .clone()
}

/// A client that sends the API token (every test's API calls go through one).
pub fn http_builder() -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token())).expect("token"),
    );
    reqwest::Client::builder().default_headers(headers)
}

pub fn http() -> reqwest::Client {
    http_builder().build().expect("client")
}

/// A blocking client that sends the API token.
pub fn blocking_http_builder() -> reqwest::blocking::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token())).expect("token"),
    );
    reqwest::blocking::Client::builder().default_headers(headers)
}

/// `reqwest::get` with the API token.
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}

/// The typed client (`robbie_mesh::client`) of the API at `api` (host:port),
/// with the run's token: what the CLI and the tray use.
pub fn client(api: impl std::fmt::Display) -> robbie_mesh::client::Client {
    robbie_mesh::client::Client::new(api, Ok(token()))
}

/// Creates a conversation through the API at `api` (host:port); its id.
pub async fn create_conversation(api: impl std::fmt::Display, title: &str) -> String {
    client(api)
        .create_conversation(title)
        .await
        .expect("create a conversation")
        .id
}

/// A robbie-mesh service running in this process, stopped on drop.
pub struct Mesh {
    pub service: Service,
    pub api: SocketAddr,
    shutdown: CancellationToken,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Holds the store when the config names none (never the user's own).
    _store_dir: Option<tempfile::TempDir>,
}

impl Mesh {
    /// Starts a service from config text (API on a free port).
    pub async fn start(config_text: &str) -> Mesh {
        let cfg = robbie_mesh::config::parse(config_text, "test.toml")
            .unwrap_or_else(|e| panic!("config: {e}\n{config_text}"));
        Mesh::start_config(cfg).await
    }

    pub async fn start_config(cfg: Config) -> Mesh {
        Mesh::start_with_clock(cfg, ClockWatch::never()).await
    }

    /// A service whose wall-clock watch the test fires by hand.
    pub async fn start_with_clock(mut cfg: Config, clock: ClockWatch) -> Mesh {
        token();
        // The service's logs, shown with a failing test (ROBBIE_MESH_LOG=debug for more).
        let filter = tracing_subscriber::EnvFilter::try_from_env("ROBBIE_MESH_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,russh=error"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind api");
        let api = listener.local_addr().expect("addr");
        cfg.api.listen = api;
        let store_dir = (cfg.store.path == robbie_mesh::config::default_store_path()).then(|| {
            let d = tempfile::tempdir().expect("tempdir");
            cfg.store.path = d.path().join("store.db");
            d
        });
        let shutdown = CancellationToken::new();
        let (service, done) =
            robbie_mesh::app::start_with_clock(cfg, listener, shutdown.clone(), clock);
        Mesh {
            service,
            api,
            shutdown,
            done: Some(tokio::spawn(done)),
            _store_dir: store_dir,
        }
    }

    pub fn tunnel(&self, name: &str) -> Arc<Tunnel> {
        self.service
            .find_tunnel(name)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("no tunnel {name}"))
    }

    /// Waits until the tunnel's reason mentions `needle`; returns the whole reason.
    pub async fn wait_reason(&self, name: &str, deadline: Duration, needle: &str) -> String {
        let (state, _) = self
            .wait_state(name, deadline, |s| {
                s.reason().is_some_and(|r| r.contains(needle))
            })
            .await;
        state.reason().unwrap_or_default().to_string()
    }

    /// Waits until the tunnel's state satisfies `pred`; returns the state and the wait.
    pub async fn wait_state(
        &self,
        name: &str,
        deadline: Duration,
        pred: impl Fn(&TunnelState) -> bool,
    ) -> (TunnelState, Duration) {
        let t = self.tunnel(name);
        let mut rx = t.subscribe();
        let start = Instant::now();
        let found = tokio::time::timeout(deadline, async {
            loop {
                let s = rx.borrow_and_update().state.clone();
                if pred(&s) {
                    return s;
                }
                if rx.changed().await.is_err() {
                    return s;
                }
            }
        })
        .await;
        match found {
            Ok(s) if pred(&s) => (s, start.elapsed()),
            _ => panic!(
                "tunnel {name} did not reach the expected state within {deadline:?}; it is {:?}",
                t.snapshot().state
            ),
        }
    }

    pub async fn wait_up(&self, name: &str) -> Duration {
        self.wait_state(name, DEADLINE, TunnelState::is_up).await.1
    }

    /// The typed client of this service's API.
    pub fn client(&self) -> robbie_mesh::client::Client {
        client(self.api)
    }

    /// `GET /v1/status`, typed.
    pub async fn status(&self) -> robbie_mesh::api::wire::Status {
        self.client().status().await.expect("status")
    }

    /// Who serves the first service now (`None` when nothing is up).
    pub async fn route(&self) -> Option<String> {
        self.status()
            .await
            .services
            .first()
            .and_then(|s| s.route.clone())
    }

    /// Waits until the first service is routed to `node`; how long it took.
    pub async fn wait_route(&self, node: &str, deadline: Duration) -> Duration {
        eventually(deadline, &format!("route to {node}"), || async {
            self.route().await.as_deref() == Some(node)
        })
        .await
    }

    /// An answer as JSON, for the tests of the wire format itself (the others
    /// read typed answers through [`Mesh::client`]).
    pub async fn api_get(&self, path: &str) -> serde_json::Value {
        get(format!("http://{}{path}", self.api))
            .await
            .expect("api get")
            .json()
            .await
            .expect("json")
    }

    /// Stops the service and waits until it has (every listener closed).
    pub async fn stop(mut self) -> Duration {
        let start = Instant::now();
        self.shutdown.cancel();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        start.elapsed()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A peer section for `sshd`, authenticating with its client key file (keepalive 1 s × 3).
pub fn peer_toml(
    name: &str,
    sshd: &sshd::Sshd,
    known_hosts: &std::path::Path,
    extra: &str,
) -> String {
    peer_toml_keepalive(name, sshd, known_hosts, "1s", 3, extra)
}

pub fn peer_toml_keepalive(
    name: &str,
    sshd: &sshd::Sshd,
    known_hosts: &std::path::Path,
    interval: &str,
    count: u32,
    extra: &str,
) -> String {
    format!(
        "[[peer]]\nname = \"{name}\"\nssh = \"{user}@{addr}\"\nidentity = [\"{key}\"]\n\
         known_hosts = \"{kh}\"\nkeepalive = {{ interval = \"{interval}\", count = {count} }}\n\
         backoff = {{ initial = \"200ms\", max = \"1s\" }}\nconnect_timeout = \"3s\"\n{extra}\n",
        user = whoami(),
        addr = sshd.addr(),
        key = sshd.client_key.private.display(),
        kh = known_hosts.display(),
    )
}

/// Writes a known_hosts file that trusts `sshd`.
pub fn trust(sshd: &sshd::Sshd) -> std::path::PathBuf {
    let path = sshd.dir.path().join("known_hosts");
    std::fs::write(&path, format!("{}\n", sshd.known_hosts_line())).expect("known_hosts");
    path
}

pub fn whoami() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let out = std::process::Command::new("id")
                .arg("-un")
                .output()
                .expect("id -un");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
}

/// A peer section for `sshd` with one `-L` forward named `echo` to a fresh echo
/// server, and the local port of that forward.
pub async fn echo_peer(sshd: &sshd::Sshd) -> (String, u16) {
    let backend = servers::echo().await;
    let local = free_port();
    let forward = format!("[[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"{backend}\"\n");
    (peer_toml("aurora", sshd, &trust(sshd), &forward), local)
}

/// A service running `echo_peer`, once its tunnel is up.
pub async fn echo_mesh(sshd: &sshd::Sshd) -> (Mesh, u16) {
    let (cfg, local) = echo_peer(sshd).await;
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_up("echo").await;
    (mesh, local)
}

/// Node "book" with an `ollama` service: aurora's Ollama at `aurora` through a `-L`
/// tunnel (`aurora-ollama`) of `sshd` first, book's own at `local` second, probed
/// every 200 ms; `extra` adds lines to the service. Returns the config and the
/// endpoint's port.
pub fn two_node_ollama(
    sshd: &sshd::Sshd,
    aurora: SocketAddr,
    local: SocketAddr,
    extra: &str,
) -> (String, u16) {
    let (tunnel_port, endpoint) = (free_port(), free_port());
    let forward = format!("[[peer.forward]]\nname = \"aurora-ollama\"\nlocal = \"127.0.0.1:{tunnel_port}\"\nremote = \"{aurora}\"\n");
    let cfg = format!(
        "node = \"book\"\n{}\n[[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{endpoint}\"\n{extra}\
         candidates = [{{ node = \"aurora\", tunnel = \"aurora-ollama\" }}, {{ node = \"book\", address = \"{local}\" }}]\n\
         probe = {{ local_interval = \"200ms\", remote_interval = \"200ms\", timeout = \"1s\" }}\n",
        peer_toml("aurora", sshd, &trust(sshd), &forward)
    );
    (cfg, endpoint)
}

/// The release build of robbie-mesh, for the benchmarks (a bench binary runs from
/// `target/release/deps`; tests/bench.sh builds it first).
pub fn release_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("release")
        .join("robbie-mesh");
    assert!(
        bin.exists(),
        "{}: run `cargo build --release -p robbie-mesh` (tests/bench.sh does)",
        bin.display()
    );
    bin
}

/// A binary of the workspace built next to the running test (`robbie-mesh`,
/// `robbie-mesh-tray`; tests/run.sh builds them first).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p {name}` (tests/run.sh does)",
        bin.display()
    );
    bin
}

/// A child's output, line by line, on a channel (read by a thread, so a test can
/// wait for a line with a deadline).
pub fn lines_of(
    out: impl std::io::Read + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use std::io::BufRead;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The GPU seam: an `nvidia-smi` in `dir` that prints what a desktop with an RTX
/// 4090 (24 GiB) prints, `used_mib` of it in use.
pub fn fake_nvidia_smi(dir: &std::path::Path, used_mib: u32) -> std::path::PathBuf {
    let smi = dir.join("nvidia-smi");
    std::fs::write(
        &smi,
        format!("#!/bin/sh\necho 'NVIDIA GeForce RTX 4090, 24564, {used_mib}'\n"),
    )
    .expect("write nvidia-smi");
    std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod nvidia-smi");
    smi
}

/// The node an endpoint's answer names (its `x-robbie-node` header).
pub fn served_by(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(robbie_mesh::proxy::http::NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// `<target>/test-artifacts`, where tests keep screenshots; made if missing.
pub fn artifacts_dir() -> std::path::PathBuf {
    let dir = std::env::current_exe()
        .expect("test exe")
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// `root` and its descendants.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        // Each thread's children (a process started from any thread is listed there).
        let threads = std::fs::read_dir(format!("/proc/{}/task", all[i]))
            .into_iter()
            .flatten()
            .flatten();
        for t in threads {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            all.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    all
}
