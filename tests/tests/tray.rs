//! The tray app under Xvfb on this session bus, with a StatusNotifierWatcher and a
//! notification server (tests/tray/sni_host.py) standing in for the desktop's
//! panel: the item registers; its label and menu, read back over D-Bus, show who
//! serves Ollama; after a failover (aurora's sshd killed) both change and the
//! notification server receives "Ollama → book" with the reason; a menu click sent
//! over D-Bus pins a node (seen in /v1/status); with the service stopped the label
//! says so.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::netns::Proc;
use mesh_tests::ollama::OllamaStub;
use mesh_tests::sshd::Sshd;
use mesh_tests::{eventually, two_node_ollama, Mesh};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

/// `xvfb-run` with everything it starts (Xvfb, the tray, the dashboard's process
/// and WebKit's) in a process group of its own, ended together on drop — killing
/// xvfb-run alone would leave its Xvfb running.
struct Display(Child);

impl Display {
    fn run(bin: &std::path::Path, configure: impl FnOnce(&mut Command)) -> Display {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("xvfb-run");
        cmd.args(["-a", "-s", "-screen 0 1024x768x24"])
            .arg(bin)
            .process_group(0);
        configure(&mut cmd);
        Display(cmd.spawn().expect("xvfb-run (package xvfb)"))
    }

    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        // xvfb-run stops its Xvfb on SIGTERM; whatever is left then goes for good.
        let _ = killpg(group, Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end && self.try_wait().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The host script: commands in, lines out.
struct Host {
    _proc: Proc,
    stdin: ChildStdin,
    lines: UnboundedReceiver<String>,
    notifications: Vec<Value>,
}

impl Host {
    fn start() -> Host {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tray/sni_host.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with python3-dbus and python3-gi (tests/setup.sh installs them)");
        let stdin = child.stdin.take().expect("stdin");
        let lines = mesh_tests::lines_of(child.stdout.take().expect("stdout"));
        Host {
            _proc: Proc(child),
            stdin,
            lines,
            notifications: Vec::new(),
        }
    }

    /// The next line starting with `prefix` (notifications seen on the way are kept).
    async fn expect(&mut self, prefix: &str) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(left, self.lines.recv())
                .await
                .ok()
                .flatten();
            let Some(line) = line else {
                panic!("the tray host never printed {prefix}")
            };
            if std::env::var_os("MESH_TRAY_DEBUG").is_some() {
                eprintln!("host: {line}");
            }
            if let Some(n) = line.strip_prefix("NOTIFY ") {
                self.notifications
                    .push(serde_json::from_str(n).expect("json"));
            }
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// The first notification (seen so far or within 15 s) that `pred` accepts.
    async fn notification(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(n) = self.notifications.iter().find(|n| pred(n)) {
                return n.clone();
            }
            assert!(
                Instant::now() < end,
                "no notification {what}: {:?}",
                self.notifications
            );
            self.state().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&mut self, text: &str) {
        writeln!(self.stdin, "click {text}").expect("host stdin");
        let clicked = self.expect("CLICKED").await;
        assert_ne!(clicked, "CLICKED none", "no menu item {text:?}");
    }

    async fn state(&mut self) -> Value {
        writeln!(self.stdin, "state").expect("host stdin");
        let line = self.expect("STATE ").await;
        serde_json::from_str(&line["STATE ".len()..]).expect("json")
    }

    /// Waits until the label, a menu line and the icon's colour are as expected.
    async fn wait_label(&mut self, label: &str, menu_line: &str, icon: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let st = self.state().await;
            let menu = st["menu"].as_array().cloned().unwrap_or_default();
            if st["label"] == label
                && st["icon"] == icon
                && menu
                    .iter()
                    .any(|i| i["label"].as_str().is_some_and(|l| l.contains(menu_line)))
            {
                return st;
            }
            assert!(
                Instant::now() < end,
                "the tray never showed {label:?} with {menu_line:?} and icon {icon}: {st}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tray_shows_the_current_resource_notifies_and_pins() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "run under a session bus (tests/run.sh does)"
    );
    let mut sshd = Sshd::start();
    let aurora = OllamaStub::start("aurora", &["llama3.2:3b"]).await;
    let book = OllamaStub::start("book", &["llama3.2:3b"]).await;
    let (cfg, _) = two_node_ollama(&sshd, aurora.addr, book.addr, "");
    let mesh = Mesh::start(&cfg).await;
    mesh.wait_route("aurora", Duration::from_secs(10)).await;

    let mut host = Host::start();
    host.expect("READY").await;
    // MESH_TRAY_BIN: another build to measure (a release one, say).
    let bin = std::env::var_os("MESH_TRAY_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| mesh_tests::workspace_bin("robbie-mesh-tray"));
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p robbie-mesh-tray (tests/run.sh does)",
        bin.display()
    );
    let tray = Display::run(&bin, |c| {
        c.env("ROBBIE_MESH_API", mesh.api.to_string())
            .env("ROBBIE_MESH_LOG", "warn,robbie_mesh_tray=debug")
            // A hidden dashboard's process ends after 2 s (default 120 s).
            .env("ROBBIE_MESH_TRAY_KEEP_HIDDEN", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
    });
    host.expect("REGISTERED").await;
    // Icon colours: all good, degraded (served, not by the first choice), no node up,
    // not running.
    const GOOD: &str = "#1f9d55";
    const DEGRADED: &str = "#c77c02";
    const NOT_RUNNING: &str = "#808086";
    const OFFLINE: &str = "#d12f2f";
    let st = host.wait_label("⚡ aurora", "ollama → aurora", GOOD).await;
    let labels: Vec<&str> = st["menu"]
        .as_array()
        .expect("menu")
        .iter()
        .filter_map(|i| i["label"].as_str())
        .collect();
    for want in [
        "aurora (online)",
        "book (online)",
        "automatic",
        "Reconnect all",
        "Open dashboard",
        "SSH keys (in the keychain)",
        "Generate a new key",
        "Mute notifications",
        "Quit",
    ] {
        assert!(
            labels.iter().any(|l| l.contains(want)),
            "menu lacks {want:?}: {labels:?}"
        );
    }

    // Failover: the label, the menu and a notification with the reason (alone, or
    // one line of a burst told as one, if the start-up's route change was recent).
    sshd.kill();
    host.wait_label("⚡ book", "ollama → book", DEGRADED).await;
    let tells_failover = |n: &Value| {
        let (summary, body) = (
            n["summary"].as_str().unwrap_or(""),
            n["body"].as_str().unwrap_or(""),
        );
        (summary == "Ollama → book" && body.starts_with("aurora offline"))
            || body
                .lines()
                .any(|l| l.starts_with("Ollama → book: aurora offline"))
    };
    let n = host.notification("of the failover", tells_failover).await;
    assert_eq!(n["app"], "robbie-mesh");

    // A click on "book" in the menu pins Ollama to book.
    host.click("book (").await;
    let client = mesh.client().with_timeout(Duration::from_secs(2));
    eventually(
        Duration::from_secs(5),
        "pinned through the tray",
        || async {
            match client.status().await {
                Ok(st) => st.services[0].pinned.as_deref() == Some("book"),
                Err(e) => {
                    eprintln!("status: {e}");
                    false
                }
            }
        },
    )
    .await;

    // A key generated in the tray lands in the keychain (Secret Service), and the
    // service logs in to a real sshd with it.
    if tokio::task::spawn_blocking(keychain_usable)
        .await
        .expect("probe")
    {
        let pid = tray_pid(&bin).expect("the tray process");
        host.click("Generate a new key").await;
        let made = host
            .notification("about the new key", summary_starts("SSH key "))
            .await;
        let (name, public) = stored_key(&made);
        host.wait_label("⚡ book", &format!("🔑 {name}"), DEGRADED)
            .await;

        let server = Sshd::start();
        server.authorize(&public);
        let backend = mesh_tests::servers::echo().await;
        let local = mesh_tests::free_port();
        let cfg = format!(
            "[[peer]]\nname = \"k\"\nssh = \"{}@{}\"\nidentity = [\"keychain:{name}\"]\nknown_hosts = \"{}\"\n\
             [[peer.forward]]\nname = \"echo\"\nlocal = \"127.0.0.1:{local}\"\nremote = \"{backend}\"\n",
            mesh_tests::whoami(),
            server.addr(),
            mesh_tests::trust(&server).display()
        );
        let keyed = Mesh::start(&cfg).await;
        keyed.wait_up("echo").await;
        drop(keyed);

        // Import a key file chosen in the file picker (typed in, as a user can).
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tray_import_test");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "imported", "-f"])
            .arg(&file)
            .status()
            .expect("ssh-keygen");
        assert!(made.success());
        let file_public = std::fs::read_to_string(file.with_extension("pub")).expect("pub");
        host.click("Import a key file").await;
        let path = format!("type:{}", file.display());
        answer_dialog(
            pid,
            "Import an SSH private key",
            &["ctrl+l", &path],
            "Return",
        );
        let imported = host
            .notification(
                "about the imported key",
                summary_starts("SSH key tray_import_test"),
            )
            .await;
        let (imported, public) = stored_key(&imported);
        assert_eq!(
            public.split_whitespace().nth(1),
            file_public.split_whitespace().nth(1),
            "the keychain holds another key than the file's"
        );

        // Delete both through the menu, confirming in the dialog.
        for name in [&name, &imported] {
            host.wait_label("⚡ book", &format!("🔑 {name}"), DEGRADED)
                .await;
            host.click(&format!("Delete {name} from the keychain"))
                .await;
            answer_dialog(pid, &format!("Delete SSH key {name}?"), &[], "alt+d");
            let want = format!("SSH key {name} deleted");
            host.notification("about the deletion", |n| n["summary"] == want.as_str())
                .await;
            let listed = tokio::task::spawn_blocking(robbie_mesh::sshkeys::list)
                .await
                .expect("join")
                .expect("list keys");
            assert!(listed.iter().all(|k| k.name != *name), "{listed:?}");
        }
    }

    // "Start the service at login" is `service install --user`; where systemd
    // is not running (this test's host) the tray says so and what to do. (On a
    // desktop with systemd it would install a real user unit: not tried there;
    // the sandbox tests run that install.)
    if !std::path::Path::new("/run/systemd/system").exists() {
        host.click("Start the service at login").await;
        let n = host
            .notification(
                "about starting at login",
                summary_starts("Start at login: not changed"),
            )
            .await;
        assert!(
            n["body"]
                .as_str()
                .is_some_and(|b| b.contains("does not run systemd")),
            "{n}"
        );
    }

    // Memory at rest: the tray alone, then with the dashboard window open (the tray
    // process and its WebKit processes together).
    let (rss, pss) = settle_memory(&bin, 1).await;
    eprintln!("tray idle, no window: RSS {rss:.1} MiB, PSS {pss:.1} MiB");
    // One instance at a time: a second launch exits and the first opens its
    // dashboard window.
    let mut second = Display::run(&bin, |c| {
        c.env("ROBBIE_MESH_API", mesh.api.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    });
    let end = Instant::now() + Duration::from_secs(15);
    let exited = loop {
        if let Some(st) = second.try_wait() {
            break Some(st);
        }
        if Instant::now() > end {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        exited.is_some_and(|s| s.success()),
        "the second instance did not hand over and exit: {exited:?}"
    );
    // The tray, the dashboard's process and its two WebKit processes.
    let (rss, pss) = settle_memory(&bin, 4).await;
    eprintln!("tray idle with the dashboard open: RSS {:.1} MiB summed, PSS {:.1} MiB (goal <= 150 MiB together)", rss, pss);
    assert!(pss > 0.0, "the tray process was not found");
    let pid = tray_pid(&bin).expect("the tray process");
    assert!(dashboard_mapped(pid), "the dashboard window is not shown");

    // Closing the window (as a window manager's close button does) hides it; the
    // tray goes on, and after a while (2 s here) the hidden dashboard's processes go.
    assert_eq!(x11(pid, &["close", "robbie-mesh"]), "CLOSED");
    eventually(Duration::from_secs(5), "the dashboard hidden", || async {
        !dashboard_mapped(pid)
    })
    .await;
    assert_eq!(
        tray_pid(&bin),
        Some(pid),
        "closing the window ended the tray"
    );
    eventually(
        Duration::from_secs(20),
        "the hidden dashboard's processes gone",
        || async { mesh_tests::process_tree(pid).len() == 1 },
    )
    .await;
    let (rss, pss) = settle_memory(&bin, 1).await;
    eprintln!("tray idle after the dashboard was closed: RSS {rss:.1} MiB, PSS {pss:.1} MiB");
    // "Open dashboard" brings it back.
    writeln!(host.stdin, "click Open dashboard").expect("stdin");
    assert_ne!(host.expect("CLICKED").await, "CLICKED none");
    eventually(
        Duration::from_secs(15),
        "the dashboard shown again",
        || async { dashboard_mapped(pid) },
    )
    .await;

    // No node left for Ollama (book's Ollama quits too): red, and the label says so.
    book.stop();
    host.wait_label("ollama: no node up", "ollama → nothing is up", OFFLINE)
        .await;
    book.start_again().await;
    host.wait_label("⚡ book", "ollama → book", DEGRADED).await;

    // The service stops: the tray says so.
    mesh.stop().await;
    host.wait_label(
        "robbie-mesh: service not running",
        "Service not running",
        NOT_RUNNING,
    )
    .await;
    drop(tray);
}

/// The Secret Service keychain on this bus (tests/run.sh starts one); required when
/// MESH_TESTS_REQUIRE_KEYCHAIN=1.
fn keychain_usable() -> bool {
    let required = std::env::var("MESH_TESTS_REQUIRE_KEYCHAIN").is_ok_and(|v| v == "1");
    let probe = robbie_mesh::keychain::set("robbie-mesh-test-probe", "x")
        .and_then(|()| robbie_mesh::keychain::delete("robbie-mesh-test-probe"));
    match probe {
        Ok(()) => true,
        Err(e) if required => panic!("the OS keychain is required here but failed: {e}"),
        Err(e) => {
            eprintln!(
                "SKIPPED the key part: no usable OS keychain ({e}); run through tests/run.sh"
            );
            false
        }
    }
}

/// (RSS summed, PSS) in MiB of the process running `bin` and its descendants, once
/// there are `processes` of them and they have stopped growing (polled, at most 20 s).
async fn settle_memory(bin: &std::path::Path, processes: usize) -> (f64, f64) {
    let read = |pid: u32, key: &str| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let tree = || {
        tray_pid(bin)
            .map(mesh_tests::process_tree)
            .unwrap_or_default()
    };
    let end = Instant::now() + Duration::from_secs(20);
    let mut last = (0.0, 0.0);
    let mut steady = 0;
    while Instant::now() < end && steady < 6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pids = tree();
        let now = (
            pids.iter().map(|p| read(*p, "Rss:")).sum::<f64>(),
            pids.iter().map(|p| read(*p, "Pss:")).sum::<f64>(),
        );
        // Steady once the web process exists and the total moves by under 1 MiB.
        if pids.len() >= processes && (now.0 - last.0).abs() < 1.0 {
            steady += 1;
        } else {
            steady = 0;
        }
        last = now;
    }
    for p in tree() {
        let name = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        eprintln!(
            "  {p} {}: RSS {:.1} MiB, PSS {:.1} MiB",
            name.trim(),
            read(p, "Rss:"),
            read(p, "Pss:")
        );
    }
    last
}

/// The running tray process of `bin` (not its dashboard's).
fn tray_pid(bin: &std::path::Path) -> Option<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == bin)
                && !std::fs::read(format!("/proc/{p}/cmdline"))
                    .unwrap_or_default()
                    .split(|b| *b == 0)
                    .any(|a| a == b"--dashboard")
        })
}

/// Accepts a notification whose summary starts with `prefix`.
fn summary_starts(prefix: &str) -> impl Fn(&Value) -> bool + '_ {
    move |n| n["summary"].as_str().is_some_and(|s| s.starts_with(prefix))
}

/// (name, authorized_keys line) of the key a "SSH key NAME is in the keychain"
/// notification tells of; checks that the keychain lists it so.
fn stored_key(n: &Value) -> (String, String) {
    let name = n["summary"]
        .as_str()
        .and_then(|s| s.strip_prefix("SSH key "))
        .and_then(|s| s.strip_suffix(" is in the keychain"))
        .unwrap_or_else(|| panic!("not a stored key: {n}"))
        .to_string();
    let public = n["body"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("ssh-ed25519 "))
        .unwrap_or_else(|| panic!("no authorized_keys line: {n}"))
        .to_string();
    let listed = robbie_mesh::sshkeys::list().expect("list keys");
    assert!(
        listed.iter().any(|k| k.name == name && k.public == public),
        "{listed:?}"
    );
    (name, public)
}

/// Runs `program` on the X display of the process `pid`; its output.
fn on_display(pid: u32, program: &str, args: &[&str]) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let var = |name: &str| {
        environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    for name in ["DISPLAY", "XAUTHORITY"] {
        if let Some(v) = var(name) {
            cmd.env(name, v);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (tests/setup.sh installs it)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs tests/tray/x11.py on the X display of the process `pid`; its output.
fn x11(pid: u32, args: &[&str]) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tray/x11.py");
    let script = script.to_string_lossy();
    let mut all = vec![script.as_ref()];
    all.extend(args);
    on_display(pid, "/usr/bin/python3", &all)
}

/// Types `keys` (xdotool words like `ctrl+l`, or `type:TEXT`) into the window
/// titled `title` once it appears, then presses `confirm` until the window is gone
/// (GTK's location bar may take a first Return to complete the path it is still
/// loading). On failure a screenshot goes to the test artifacts.
fn answer_dialog(pid: u32, title: &str, keys: &[&str], confirm: &str) {
    let search = [
        "15",
        "xdotool",
        "search",
        "--sync",
        "--onlyvisible",
        "--name",
        title,
    ];
    let id = on_display(pid, "timeout", &search);
    let id = id.lines().next().expect("a window").to_string();
    on_display(pid, "xdotool", &["windowfocus", "--sync", &id]);
    for k in keys {
        match k.strip_prefix("type:") {
            Some(text) => on_display(pid, "xdotool", &["type", "--delay", "20", text]),
            None => on_display(pid, "xdotool", &["key", k]),
        };
    }
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        on_display(pid, "xdotool", &["key", confirm]);
        let settle = Instant::now() + Duration::from_secs(1);
        while Instant::now() < settle {
            if !window_shown(pid, |n| n.starts_with(title)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if Instant::now() > end {
            let shot = mesh_tests::artifacts_dir().join("tray-dialog.png");
            x11(pid, &["shot", &shot.to_string_lossy()]);
            panic!(
                "the dialog {title:?} never went (screen: {})",
                shot.display()
            );
        }
    }
}

/// Whether a window whose title `matches` is on screen.
fn window_shown(pid: u32, matches: impl Fn(&str) -> bool) -> bool {
    let windows: Value = serde_json::from_str(&x11(pid, &["windows"])).expect("json");
    windows.as_array().is_some_and(|w| {
        w.iter()
            .any(|w| w["mapped"] == true && w["name"].as_str().is_some_and(&matches))
    })
}

/// Whether the dashboard window is on screen.
fn dashboard_mapped(pid: u32) -> bool {
    window_shown(pid, |n| n == "robbie-mesh")
}
