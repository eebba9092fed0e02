//! A new user's first run, scripted with flags only: on a machine of its own
//! (a network namespace) with an empty home directory, `robbie-mesh init`
//! against a real sshd it has never connected to (on a network behind it).
//! The host key's fingerprint is shown and nothing is trusted until it is
//! confirmed; the key's authorized_keys line and the command to install it are
//! printed; once installed, init asks the peer what it runs, notices the local
//! Ollama in the endpoint's way, writes the config; that config runs, its
//! tunnel comes up, and a request to the Ollama endpoint is served by the
//! peer's Ollama — then `doctor` finds nothing wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mesh_tests::netns::{Netns, Proc};
use mesh_tests::sshd::Sshd;
use mesh_tests::{wait_for, whoami};

fn bin() -> PathBuf {
    mesh_tests::workspace_bin("robbie-mesh")
}

/// `robbie-mesh ARGS` on `desk` as its user would run it: their empty home,
/// no D-Bus session (a fresh server login), no terminal.
fn on_desk(desk: &Netns, home: &Path, args: &[&str]) -> Command {
    let mut c = as_user(desk.command(bin()), home);
    c.args(args).stdin(Stdio::null());
    c
}

/// Their environment: their home, no D-Bus session.
fn as_user(mut c: Command, home: &Path) -> Command {
    c.env_clear()
        .env("HOME", home)
        .env("USER", whoami())
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    c
}

fn show(what: &str, out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- {what} (exit {:?}):\n{text}", out.status.code());
    text
}

/// The user's machine (`desk`) and a server only it can reach (`hub`), where
/// a real sshd and an Ollama on the hub's 127.0.0.1:11435 run.
struct Machines {
    desk: Netns,
    sshd: Sshd,
    _ollama: Proc,
    _hub: Netns,
}

impl Machines {
    fn start(desk: &str, hub: &str) -> Machines {
        let desk = Netns::create(desk);
        let hub = Netns::create_behind(&desk, hub);
        let sshd = Sshd::start_behind(&hub);
        let ollama = hub.spawn_ready(
            Path::new(env!("CARGO_BIN_EXE_ollama-stub")),
            &[
                "--node",
                "hub",
                "--listen",
                "127.0.0.1:11435",
                "llama3.1:8b",
            ],
            "listening on",
        );
        Machines {
            _ollama: ollama,
            sshd,
            _hub: hub,
            desk,
        }
    }
}

#[test]
fn from_an_empty_home_to_a_served_request() {
    let Machines {
        desk,
        sshd,
        _ollama,
        _hub,
    } = Machines::start("desk", "hub");
    let home = tempfile::tempdir().expect("home");
    let target = format!("hub={}@{}", whoami(), sshd.addr().ip());
    let init = |extra: &[&str]| {
        let mut args = vec!["init", "--node", "desk", "--peer", &target, "--key", "file"];
        args.extend_from_slice(extra);
        on_desk(&desk, home.path(), &args)
            .output()
            .expect("robbie-mesh init")
    };
    let known_hosts = home.path().join(".ssh/known_hosts");
    let config = home.path().join(".config/robbie-mesh/config.toml");
    let fingerprint = fingerprint_of(&sshd);

    // Never connected: the fingerprint is shown, and nothing trusted unasked.
    let out = init(&[]);
    let text = show("init, first", &out);
    assert!(!out.status.success());
    assert!(
        text.contains(&fingerprint),
        "the server's fingerprint: {text}"
    );
    assert!(
        text.contains(&format!("--accept-host-key {fingerprint}")),
        "what to run once it is checked: {text}"
    );
    assert!(!known_hosts.exists() && !config.exists());

    // A fingerprint that is not the server's: refused, still nothing trusted.
    let out = init(&[
        "--accept-host-key",
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ]);
    let text = show("init, wrong fingerprint", &out);
    assert!(!out.status.success());
    assert!(text.contains("which no --accept-host-key names"), "{text}");
    assert!(!known_hosts.exists() && !config.exists());

    // Confirmed: recorded; the key is new there, so its line and how to
    // install it are printed, and no config is written yet.
    let out = init(&["--accept-host-key", &fingerprint]);
    let text = show("init, confirmed", &out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let recorded = std::fs::read_to_string(&known_hosts).expect("known_hosts");
    let host_key = sshd.known_hosts_line();
    let key_part = host_key.split_once(' ').expect("line").1;
    assert!(recorded.contains(key_part), "{recorded}");
    let line = text
        .lines()
        .skip_while(|l| !l.contains("Its authorized_keys line"))
        .nth(1)
        .expect("the key's line")
        .trim()
        .to_string();
    assert!(line.starts_with("ssh-ed25519 "), "{line}");
    assert!(
        text.contains(&format!(
            "ssh-copy-id -i ~/.ssh/robbie-mesh_ed25519.pub {}@{}",
            whoami(),
            sshd.addr().ip()
        )),
        "{text}"
    );
    assert!(!config.exists());

    // The user installs it (as ssh-copy-id would), and a local Ollama sits on
    // 11434, where the endpoint goes.
    sshd.authorize(&line);
    let mut local_ollama = desk.spawn_ready(
        Path::new(env!("CARGO_BIN_EXE_ollama-stub")),
        &["--node", "desk", "--listen", "127.0.0.1:11434", "tinyllama"],
        "listening on",
    );
    let out = init(&["--accept-host-key", &fingerprint]);
    let text = show("init, key installed", &out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Logged in to hub"), "{text}");
    assert!(
        text.contains("ollama answers on its 127.0.0.1:11435"),
        "{text}"
    );
    assert!(
        text.contains("A local ollama listens on 127.0.0.1:11434")
            && text.contains("OLLAMA_HOST=127.0.0.1:11435"),
        "how to move the local Ollama: {text}"
    );
    let written = std::fs::read_to_string(&config).expect("config written");
    assert!(written.contains("name = \"hub-ollama\""), "{written}");
    local_ollama.kill();

    let out = on_desk(&desk, home.path(), &["check-config"])
        .output()
        .expect("check-config");
    let text = show("check-config", &out);
    assert!(out.status.success(), "{text}");

    // The written config runs: the tunnel comes up, the endpoint serves.
    let _service = serve(&desk, home.path());

    // And doctor agrees.
    let out = on_desk(&desk, home.path(), &["doctor"])
        .output()
        .expect("doctor");
    let text = show("doctor", &out);
    assert!(out.status.success(), "{text}");
}

/// The same first run answered on a terminal (a pty, as a person types): the
/// name, the peer, "y" to the fingerprint, Enter once the key is installed,
/// the endpoints offered, "n" to installing the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answering_the_questions_on_a_terminal() {
    use std::io::Write;
    let Machines {
        desk,
        sshd,
        _ollama,
        _hub,
    } = Machines::start("tty-desk", "tty-hub");
    let home = tempfile::tempdir().expect("home");
    let command = format!("{} init --key file", bin().display());
    // `script` gives it a terminal, as a person's shell would.
    let mut child = as_user(desk.command("script"), home.path())
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("script (util-linux)");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = mesh_tests::lines_of(child.stdout.take().expect("stdout"));
    // Typed ahead, as a person would answer each question in turn.
    write!(stdin, "desk\nhub={}@{}\n\ny\n", whoami(), sshd.addr().ip()).expect("type");
    let mut seen = String::new();
    let mut key_line = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while key_line.is_none() || !seen.contains("does not accept this key yet") {
        let line = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("init stopped before asking for the key:\n{seen}"));
        let line = line.trim_end_matches('\r').to_string();
        if line.trim_start().starts_with("ssh-ed25519 ") && key_line.is_none() {
            key_line = Some(line.trim().to_string());
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    assert!(seen.contains("Is it the same? Trust it"), "{seen}");
    sshd.authorize(key_line.as_deref().expect("key line"));
    // Enter (installed), the endpoints offered, no service install.
    write!(stdin, "\n\nn\n").expect("type");
    drop(stdin);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    while let Ok(line) = lines.try_recv() {
        seen.push_str(line.trim_end_matches('\r'));
        seen.push('\n');
    }
    eprintln!("--- init on a terminal:\n{seen}");
    assert!(status.success(), "{seen}");
    assert!(seen.contains("Endpoints to set up here"), "{seen}");
    let written = std::fs::read_to_string(home.path().join(".config/robbie-mesh/config.toml"))
        .expect("config");
    assert!(
        written.contains("node = \"desk\"") && written.contains("name = \"hub-ollama\""),
        "{written}"
    );
}

/// `robbie-mesh run` on desk with the config init wrote, until a request to
/// its Ollama endpoint is served by the hub's Ollama.
fn serve(desk: &Netns, home: &Path) -> Proc {
    let log = std::fs::File::create(home.join("service.log")).expect("log");
    let service = Proc(
        on_desk(desk, home, &["run"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("robbie-mesh run"),
    );
    let last = std::cell::RefCell::new(String::new());
    wait_for(
        Duration::from_secs(30),
        || {
            let out = desk
                .command("curl")
                .args(["-si", "--max-time", "3", "http://127.0.0.1:11434/api/tags"])
                .output()
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let served = text.contains("llama3.1:8b");
            *last.borrow_mut() = text;
            served
        },
        || {
            format!(
                "no request served through the endpoint; last answer:\n{}\nlog:\n{}",
                last.borrow(),
                std::fs::read_to_string(home.join("service.log")).unwrap_or_default()
            )
        },
    );
    let last = last.into_inner();
    assert!(last.to_lowercase().contains("x-robbie-node: hub"), "{last}");
    service
}

/// The host key fingerprint of `sshd`, as `ssh-keygen -lf` shows it on the server.
fn fingerprint_of(sshd: &Sshd) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(sshd.dir.path().join("host_ed25519.pub"))
        .output()
        .expect("ssh-keygen -lf");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string()
}

/// With a mesh description: `init --mesh … --connect` writes the config, then
/// connects to the peer as the service will — the fingerprint confirmed, the
/// user's own key file found and the command to install it printed — and once
/// installed, the config runs and serves.
#[test]
fn init_from_a_mesh_file_connects_once_and_serves() {
    let Machines {
        desk,
        sshd,
        _ollama,
        _hub: hub,
    } = Machines::start("mesh-desk", "mesh-hub");
    let home = tempfile::tempdir().expect("home");
    // The user's own key, as most have one.
    std::fs::create_dir_all(home.path().join(".ssh")).expect(".ssh");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(home.path().join(".ssh/id_ed25519"))
        .status()
        .expect("ssh-keygen");
    assert!(keygen.success());
    let mesh = home.path().join("mesh.toml");
    std::fs::write(
        &mesh,
        format!(
            "[[node]]\nname = \"hub\"\nssh = \"{}@{}\"\nmesh = false\nruns = [\"ollama\"]\nports = {{ ollama = 11435 }}\n\n\
             [[node]]\nname = \"desk\"\ndials = [\"hub\"]\npriority = {{ ollama = [\"hub\"] }}\n",
            whoami(),
            sshd.addr().ip()
        ),
    )
    .expect("mesh");
    let fingerprint = fingerprint_of(&sshd);
    let mesh_arg = mesh.display().to_string();
    let init = || {
        on_desk(
            &desk,
            home.path(),
            &[
                "init",
                "--mesh",
                &mesh_arg,
                "--node",
                "desk",
                "--connect",
                "--accept-host-key",
                &fingerprint,
            ],
        )
        .output()
        .expect("init")
    };
    let out = init();
    let text = show("init --mesh --connect, key not installed", &out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&fingerprint) && text.contains("confirmed by --accept-host-key"),
        "{text}"
    );
    let public = home.path().join(".ssh/id_ed25519.pub");
    assert!(
        text.contains(&format!(
            "ssh-copy-id -i {} {}@{}",
            public.display(),
            whoami(),
            sshd.addr().ip()
        )),
        "{text}"
    );
    sshd.authorize(std::fs::read_to_string(&public).expect("pub").trim());
    let out = init();
    let text = show("init --mesh --connect, key installed", &out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("✓ hub: host key trusted, logged in as"),
        "{text}"
    );
    let _service = serve(&desk, home.path());

    // The hub's link goes silent (a lid closed, a cable out): doctor says so
    // within its time limits, with what to check.
    hub.cut();
    let started = std::time::Instant::now();
    let out = on_desk(&desk, home.path(), &["doctor", "--json"])
        .output()
        .expect("doctor");
    let took = started.elapsed();
    let report: robbie_mesh::doctor::Report =
        serde_json::from_slice(&out.stdout).expect("doctor --json");
    eprintln!("--- doctor, hub's link cut ({took:?}):\n{}", report.text());
    assert!(!out.status.success());
    let tcp = report
        .findings
        .iter()
        .find(|f| f.check == "peer hub: TCP")
        .unwrap_or_else(|| panic!("{}", report.text()));
    assert_eq!(
        tcp.verdict,
        robbie_mesh::doctor::Verdict::Fail,
        "{}",
        report.text()
    );
    assert!(
        tcp.detail.contains("no answer within 3 s"),
        "{}",
        tcp.detail
    );
    assert!(
        tcp.fix.as_deref().unwrap_or("").contains("firewall"),
        "{tcp:?}"
    );
    assert!(
        took < robbie_mesh::doctor::CHECK_TIMEOUT * 2,
        "doctor took {took:?}"
    );
}
