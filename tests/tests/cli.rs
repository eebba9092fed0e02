//! The `robbie-mesh` binary as a user runs it: local-only mode with no config,
//! SIGTERM/SIGINT stopping it within 2 s with every listener closed, `status`,
//! `check-config` on good and broken files.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::servers::echo;
use mesh_tests::sshd::Sshd;
use mesh_tests::{free_port, peer_toml, trust, wait_for, DEADLINE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn bin() -> PathBuf {
    mesh_tests::workspace_bin("robbie-mesh")
}

/// A command with a private HOME, so no user config is found.
fn cmd(home: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.env("ROBBIE_MESH_TOKEN", mesh_tests::token());
    c.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env_remove("ROBBIE_MESH_CONFIG")
        .env("ROBBIE_MESH_LOG", "info");
    c
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run robbie-mesh")
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `sig` and returns how long the process took to exit, and its stderr.
fn stop(mut svc: Service, sig: Signal) -> (Duration, String) {
    let start = Instant::now();
    kill(Pid::from_raw(svc.0.id() as i32), sig).expect("signal");
    let deadline = start + Duration::from_secs(10);
    loop {
        if let Some(status) = svc.0.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = start.elapsed();
    let mut err = String::new();
    if let Some(mut e) = svc.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (took, err)
}

#[test]
fn local_only_without_config_then_sigterm_within_2s() {
    let home = tempfile::tempdir().expect("home");
    let api = free_port();
    // A user's first run: no config file anywhere (only the API port is moved, so
    // the test does not depend on 8007 being free).
    let svc = Service(
        cmd(home.path())
            .args(["run"])
            .env("ROBBIE_MESH_API", format!("127.0.0.1:{api}"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    wait_for(DEADLINE, || listening(api), || "API did not come up".into());
    let out = run(cmd(home.path()).args(["status", "--api", &format!("127.0.0.1:{api}")]));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("no tunnels (local-only mode)"), "{text}");
    // The local store, in the data dir under this HOME, with nothing to sync to.
    assert!(
        text.contains(&format!(
            "store      {}",
            home.path()
                .join(".local/share/robbie-mesh/store.db")
                .display()
        )),
        "{text}"
    );
    assert!(
        text.contains("0 rows kept here only (no [store.sync] configured)"),
        "{text}"
    );

    // A dashboard or tray listening to the event stream does not hold shutdown up.
    let mut sse = TcpStream::connect(("127.0.0.1", api)).expect("connect");
    std::io::Write::write_all(
        &mut sse,
        b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .expect("GET /v1/events");
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut sse, &mut head).expect("answer head");
    assert_eq!(&head, b"HTTP/1.1 200");

    let (took, log) = stop(svc, Signal::SIGTERM);
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    assert!(!listening(api), "API still listening after exit");
    assert_eq!(
        log.matches("local-only mode").count(),
        1,
        "one line says local-only mode:\n{log}"
    );
}

/// The API token on a first run, as a user meets it: the service writes it
/// (0600) next to its store; the CLI finds it there for a control call and for
/// `dashboard --print`, whose link signs a browser in once.
#[test]
fn the_first_run_makes_a_private_token_that_the_cli_uses() {
    let home = tempfile::tempdir().expect("home");
    let api = free_port();
    let api_arg = format!("127.0.0.1:{api}");
    let svc = Service(
        cmd(home.path())
            .env_remove("ROBBIE_MESH_TOKEN")
            .args(["run"])
            .env("ROBBIE_MESH_API", &api_arg)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    wait_for(DEADLINE, || listening(api), || "API did not come up".into());
    let token = home.path().join(".local/share/robbie-mesh/api-token");
    // (the API's socket is bound before the service writes its token)
    wait_for(DEADLINE, || token.exists(), || "no token file".into());
    let meta = std::fs::metadata(&token).expect("the token file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let out = run(cmd(home.path()).env_remove("ROBBIE_MESH_TOKEN").args([
        "dashboard",
        "--print",
        "--api",
        &api_arg,
    ]));
    let link = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{link} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(link.contains("/login?code="), "{link}");
    let login = |url: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", api)).expect("connect");
        let path = url.split_once(&api_arg).map_or("/", |(_, p)| p);
        std::io::Write::write_all(
            &mut s,
            format!("GET {path} HTTP/1.1\r\nHost: {api_arg}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .expect("write");
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).ok();
        answer
    };
    let first = login(&link);
    assert!(first.starts_with("HTTP/1.1 303"), "{first}");
    assert!(
        first
            .to_ascii_lowercase()
            .contains("set-cookie: robbie_mesh_session="),
        "{first}"
    );
    assert!(
        login(&link).starts_with("HTTP/1.1 403"),
        "a link works once"
    );

    // A control call passes the token check (the tunnel is unknown: 404, not 401).
    let out = run(cmd(home.path()).env_remove("ROBBIE_MESH_TOKEN").args([
        "reconnect",
        "nope",
        "--api",
        &api_arg,
    ]));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(!err.contains("needs the API token"), "{err}");
    assert!(err.contains("nope"), "{err}");
    // Without the token (another user, say), the refusal says where it is.
    let other = tempfile::tempdir().expect("another home");
    let out = run(cmd(other.path()).env_remove("ROBBIE_MESH_TOKEN").args([
        "reconnect",
        "nope",
        "--api",
        &api_arg,
    ]));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("no API token at"), "{err}");
    let _ = stop(svc, Signal::SIGTERM);
}

#[test]
fn sigint_closes_every_listener_and_status_shows_tunnels() {
    let sshd = Sshd::start();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let backend = rt.block_on(echo());
    let home = tempfile::tempdir().expect("home");
    let (api, local) = (free_port(), free_port());
    let cfg = format!(
        "node = \"book\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n{}",
        peer_toml(
            "aurora",
            &sshd,
            &trust(&sshd),
            &format!("[[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"{backend}\"\n"),
        )
    );
    let path = home.path().join("mesh.toml");
    std::fs::write(&path, cfg).expect("write");
    let svc = Service(
        cmd(home.path())
            .args(["run", "--config"])
            .arg(&path)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    wait_for(
        DEADLINE,
        || listening(api) && listening(local),
        || "service did not come up".into(),
    );

    // `status` reads the API address from the config.
    wait_for(
        DEADLINE,
        || {
            let out = run(cmd(home.path()).args(["status", "--config"]).arg(&path));
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains("echo") && text.contains("UP")
        },
        || "status never showed the tunnel up".into(),
    );
    let out =
        run(cmd(home.path()).args(["status", "--json", "--api", &format!("127.0.0.1:{api}")]));
    let json: robbie_mesh::api::wire::Status =
        serde_json::from_slice(&out.stdout).expect("--json prints the status");
    assert_eq!(json.tunnels[0].name, "echo");

    let (took, _) = stop(svc, Signal::SIGINT);
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    assert!(!listening(api), "API still listening");
    assert!(!listening(local), "-L listener still listening");

    // With the service gone, status says how to start it.
    let out = run(cmd(home.path()).args(["status", "--api", &format!("127.0.0.1:{api}")]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("robbie-mesh run"));
}

#[test]
fn check_config_reports_line_and_field_or_a_summary() {
    let home = tempfile::tempdir().expect("home");
    let bad = home.path().join("bad.toml");
    std::fs::write(
        &bad,
        "node = \"book\"\n[[peer]]\nname = \"aurora\"\nssh = \"root@aurora\"\n[[peer.forward]]\nlocal = \"0.0.0.0:21434\"\nremote = \"127.0.0.1:11434\"\ncolour = \"red\"\n",
    )
    .expect("write");
    let out = run(cmd(home.path()).arg("check-config").arg(&bad));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:8:1: peer[0].forward[0].colour: unknown field `colour`"),
        "{err}"
    );

    std::fs::write(&bad, "node = \"book\"\n[[peer]]\nname = \"aurora\"\nssh = \"root@aurora\"\n[[peer.forward]]\nlocal = \"0.0.0.0:21434\"\nremote = \"127.0.0.1:11434\"\n").expect("write");
    let out = run(cmd(home.path()).arg("check-config").arg(&bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "bad.toml:6:9: peer[0].forward[0].local: 0.0.0.0:21434 is not a loopback address"
        ),
        "{err}"
    );

    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/robbiebook1.toml");
    let out = run(cmd(home.path()).arg("check-config").arg(&examples));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("peer aurora = root@aurora-town-u44170.vm.elestio.app:22"),
        "{text}"
    );
    assert!(text.contains("-L aurora-ollama"), "{text}");

    // Running with a broken config fails at once with the same message.
    // Exit 78 (EX_CONFIG): the units do not restart on it.
    let out = run(cmd(home.path()).arg("run").arg("--config").arg(&bad));
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

/// `init --mesh` on the seed's mesh writes exactly `examples/`'s files, into
/// the default config location when no `--out` is given; `check-config` on the
/// three says they fit together, and names the node and port when they do not;
/// a mesh whose configs would not fit writes nothing.
#[test]
fn init_writes_each_nodes_config_from_the_mesh_and_check_config_compares_them() {
    let home = tempfile::tempdir().expect("home");
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mesh = examples.join("mesh.toml");
    let mut written = Vec::new();
    for node in ["aurora", "vengeance", "robbiebook1"] {
        let out_file = home.path().join(format!("{node}.toml"));
        let out = run(cmd(home.path())
            .args(["init", "--mesh"])
            .arg(&mesh)
            .args(["--node", node, "--out"])
            .arg(&out_file));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("Wrote {}", out_file.display())),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(&out_file).expect("written"),
            std::fs::read_to_string(examples.join(format!("{node}.toml"))).expect("example"),
            "examples/{node}.toml is init's output"
        );
        written.push(out_file);
    }
    // Without --out: the default config; a second run changes nothing, a
    // different node's config is not written over it without --force.
    let default = home.path().join(".config/robbie-mesh/config.toml");
    let init = |node: &str, force: bool| {
        let mut c = cmd(home.path());
        c.args(["init", "--mesh"]).arg(&mesh).args(["--node", node]);
        if force {
            c.arg("--force");
        }
        run(&mut c)
    };
    assert!(init("vengeance", false).status.success());
    assert!(default.exists());
    let again = init("vengeance", false);
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));
    let other = init("aurora", false);
    assert_eq!(other.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&other.stderr).contains("exists and differs"));
    assert!(std::fs::read_to_string(&default)
        .expect("config")
        .contains("node = \"vengeance\""));

    let out = run(cmd(home.path()).arg("check-config").args(&written));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("they fit together"));
    // Aurora's config edited by hand to look for Vengeance's Ollama elsewhere.
    let aurora = std::fs::read_to_string(&written[0]).expect("aurora");
    std::fs::write(
        &written[0],
        aurora.replace("127.0.0.1:22434", "127.0.0.1:22435"),
    )
    .expect("edit");
    let out = run(cmd(home.path()).arg("check-config").args(&written));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("aurora: expects vengeance's ollama at 127.0.0.1:22435, but vengeance's config publishes nothing there"),
        "{err}"
    );

    // A mesh whose nodes share a port block: nothing written, the clash named.
    let broken = home.path().join("mesh.toml");
    let text = std::fs::read_to_string(&mesh).expect("mesh");
    std::fs::write(
        &broken,
        text.replace(
            "name = \"robbiebook1\"\n",
            "name = \"robbiebook1\"\nblock = 22\n",
        ),
    )
    .expect("write");
    let target = home.path().join("book.toml");
    let out = run(cmd(home.path())
        .args(["init", "--mesh"])
        .arg(&broken)
        .args(["--node", "robbiebook1", "--out"])
        .arg(&target));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("aurora: 127.0.0.1:22007 is where vengeance's api-to-aurora and robbiebook1's api-to-aurora all land"), "{err}");
    assert!(err.contains("nothing written"), "{err}");
    assert!(!target.exists());
}

#[test]
fn status_shows_services_first_and_node_reports_its_gpu() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let stub = rt.block_on(mesh_tests::ollama::OllamaStub::start(
        "book",
        &["llama3.2:3b"],
    ));
    let home = tempfile::tempdir().expect("home");
    let smi = mesh_tests::fake_nvidia_smi(home.path(), 1031);
    // A squatter holds the second service's port, as a local Ollama on 11434 would.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").port();
    let (api, endpoint) = (free_port(), free_port());
    let cfg = format!(
        "node = \"book\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n\
         [[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
         candidates = [{{ node = \"book\", address = \"{}\" }}]\nprobe = {{ local_interval = \"200ms\" }}\n\
         [[service]]\nname = \"ollama2\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{taken}\"\n\
         candidates = [{{ node = \"book\", address = \"{}\" }}]\n",
        stub.addr, stub.addr
    );
    let path = home.path().join("mesh.toml");
    std::fs::write(&path, cfg).expect("write");
    let svc = Service(
        cmd(home.path())
            .args(["run", "--config"])
            .arg(&path)
            .env("ROBBIE_MESH_NVIDIA_SMI", &smi)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    wait_for(DEADLINE, || listening(api), || "API did not come up".into());
    let text = std::cell::RefCell::new(String::new());
    wait_for(
        DEADLINE,
        || {
            let out = run(cmd(home.path()).args(["status", "--config"]).arg(&path));
            *text.borrow_mut() = String::from_utf8_lossy(&out.stdout).to_string();
            text.borrow().contains("-> book") && text.borrow().contains("online")
        },
        || {
            format!(
                "status never showed ollama served by book:\n{}",
                text.borrow()
            )
        },
    );
    let text = text.into_inner();
    assert!(text.starts_with("ollama "), "services come first:\n{text}");
    assert!(
        text.contains("a local Ollama probably runs there"),
        "the taken port is explained:\n{text}"
    );

    let node = rt
        .block_on(mesh_tests::client(format!("127.0.0.1:{api}")).node())
        .expect("GET /v1/node")
        .expect("this node's inventory");
    assert_eq!(node.node, "book");
    assert_eq!(node.gpus[0].name, "NVIDIA GeForce RTX 4090");
    assert_eq!(node.gpus[0].vram_bytes, 24564u64 * 1024 * 1024);
    assert_eq!(node.gpu_source, "nvidia-smi");
    assert!(node.cpu.cores >= 1);

    // pin / unpin from the command line.
    let out = run(cmd(home.path())
        .args(["pin", "ollama", "book", "--config"])
        .arg(&path));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ollama pinned to book"),
        "{out:?}"
    );
    let out = run(cmd(home.path())
        .args(["pin", "ollama", "mars", "--config"])
        .arg(&path));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mars does not serve ollama"),
        "{out:?}"
    );
    let out = run(cmd(home.path())
        .args(["unpin", "ollama", "--config"])
        .arg(&path));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("routes automatically"),
        "{out:?}"
    );
    drop(squatter);
    let _ = stop(svc, Signal::SIGTERM);
}

/// `run --log-file ~/…` (what the LaunchAgents pass: an agent's stderr goes
/// nowhere): the directory is made private, the log has what stderr would
/// have, a config error included, and the exit is still 78.
#[test]
fn run_logs_to_a_file_when_asked() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("home");
    let bad = home.path().join("bad.toml");
    std::fs::write(&bad, "node = \"book\"\n[api]\nlisten = \"0.0.0.0:8007\"\n").expect("write");
    let out = run(cmd(home.path())
        .args([
            "run",
            "--log-file",
            "~/Library/Logs/robbie-mesh/robbie-mesh.log",
            "--config",
        ])
        .arg(&bad));
    assert_eq!(out.status.code(), Some(78));
    let dir = home.path().join("Library/Logs/robbie-mesh");
    let log = std::fs::read_to_string(dir.join("robbie-mesh.log")).expect("the log file");
    assert!(
        log.contains("bad.toml:3:") && log.contains("not a loopback address"),
        "{log}"
    );
    let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// `check-config FILE` of a file that is not there fails, as `run --config FILE`
/// does (it used to say "would run local-only" and exit 0).
#[test]
fn check_config_of_a_missing_named_file_fails() {
    let home = tempfile::tempdir().expect("home");
    let typo = home.path().join("confgi.toml");
    let out = run(cmd(home.path()).arg("check-config").arg(&typo));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("confgi.toml: no such file"), "{err}");
    let out = run(cmd(home.path()).arg("run").arg("--config").arg(&typo));
    assert_eq!(out.status.code(), Some(78), "run agrees");
}
