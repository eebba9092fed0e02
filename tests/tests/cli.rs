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

/// The binary built next to this test (tests/run.sh builds it first).
fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("robbie-mesh");
    assert!(bin.exists(), "{} is missing: run `cargo build -p robbie-mesh` (tests/run.sh does)", bin.display());
    bin
}

/// A command with a private HOME, so no user config is found.
fn cmd(home: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("no tunnels (local-only mode)"));

    let (took, log) = stop(svc, Signal::SIGTERM);
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    assert!(!listening(api), "API still listening after exit");
    assert_eq!(log.matches("local-only mode").count(), 1, "one line says local-only mode:\n{log}");
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
    let svc = Service(cmd(home.path()).args(["run", "--config"]).arg(&path).stderr(Stdio::piped()).spawn().expect("spawn"));
    wait_for(DEADLINE, || listening(api) && listening(local), || "service did not come up".into());

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
    let out = run(cmd(home.path()).args(["status", "--json", "--api", &format!("127.0.0.1:{api}")]));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(json["tunnels"][0]["name"], "echo");

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
    assert!(err.contains("bad.toml:8:1: peer[0].forward[0].colour: unknown field `colour`"), "{err}");

    std::fs::write(&bad, "node = \"book\"\n[[peer]]\nname = \"aurora\"\nssh = \"root@aurora\"\n[[peer.forward]]\nlocal = \"0.0.0.0:21434\"\nremote = \"127.0.0.1:11434\"\n").expect("write");
    let out = run(cmd(home.path()).arg("check-config").arg(&bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:6:9: peer[0].forward[0].local: 0.0.0.0:21434 is not a loopback address"), "{err}");

    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/robbiebook1.toml");
    let out = run(cmd(home.path()).arg("check-config").arg(&examples));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("peer aurora = root@aurora-town-u44170.vm.elestio.app:22"), "{text}");
    assert!(text.contains("-L aurora-ollama"), "{text}");

    // Running with a broken config fails at once with the same message.
    let out = run(cmd(home.path()).arg("run").arg("--config").arg(&bad));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}
