//! The files in `installers/`, checked where they run: the system unit under a
//! real systemd (PID 1 of a sandbox, `mesh_tests::systemd`), its hardening
//! scored by `systemd-analyze security`, the launchd plists against launchd's
//! rules, and `robbie-mesh service print` against the files themselves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mesh_tests::systemd::Sandbox;

const UNIT: &str = "robbie-mesh.service";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn bin() -> PathBuf {
    mesh_tests::workspace_bin("robbie-mesh")
}

/// `systemd-analyze security --offline=true`: the system unit's exposure is at
/// most 1.5 (Syncthing's hardened unit scores 2.3, a plain `ssh -N -R` unit 9.2).
#[test]
fn the_system_unit_scores_1_5_or_better_in_systemd_analyze_security() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(repo("installers/systemd/robbie-mesh.service"))
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for robbie-mesh.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no score in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("systemd-analyze security --offline=true: {score}");
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{text}");
}

/// What `service print` prints is what `installers/` holds, byte for byte.
#[test]
fn service_print_is_the_installers_files() {
    for (kind, file) in [
        ("system", "installers/systemd/robbie-mesh.service"),
        ("sysusers", "installers/systemd/robbie-mesh.sysusers"),
        ("user", "installers/systemd/user/robbie-mesh.service"),
        ("autostart", "installers/linux/robbie-mesh-tray.desktop"),
        (
            "launchd",
            "installers/macos/app.robbie-mesh.service.standalone.plist",
        ),
        (
            "launchd-app",
            "installers/macos/app.robbie-mesh.service.plist",
        ),
    ] {
        let out = Command::new(bin())
            .args(["service", "print", kind])
            .output()
            .expect("robbie-mesh service print");
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = std::fs::read(repo(file)).expect("installers file");
        assert!(
            out.stdout == want,
            "`service print {kind}` differs from {file}"
        );
    }
    let out = Command::new(bin())
        .args(["service", "print", "nonsense"])
        .output()
        .expect("robbie-mesh service print");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("system, sysusers"),
        "{err}"
    );
}

/// The LaunchAgents parse (Python's `plistlib`, as `plutil` is macOS-only) and
/// follow launchd's rules: a label, `ProgramArguments` absolute where there is
/// no bundle and `BundleProgram` relative inside one, started at load, kept
/// alive, loaded only in a GUI session (the login Keychain is there).
#[test]
fn the_launch_agents_follow_launchds_rules() {
    const CHECK: &str = r#"
import plistlib, sys
p = plistlib.load(open(sys.argv[1], "rb"))
bundled = sys.argv[2] == "app"
assert p["Label"] == "app.robbie-mesh.service", p
args = p["ProgramArguments"]
assert args[1] == "run", args
if bundled:
    assert not p["BundleProgram"].startswith("/"), "BundleProgram is relative to the bundle"
    assert p["BundleProgram"] == "Contents/MacOS/robbie-mesh"
else:
    assert "BundleProgram" not in p
    assert args[0].startswith("/"), "ProgramArguments[0] must be absolute: launchd has no PATH search"
assert p["RunAtLoad"] is True
assert p["KeepAlive"] is True
assert p["LimitLoadToSessionType"] == "Aqua"
assert "--log-file" in args, "an agent's stderr goes nowhere"
print("ok")
"#;
    for (file, how) in [
        ("installers/macos/app.robbie-mesh.service.plist", "app"),
        (
            "installers/macos/app.robbie-mesh.service.standalone.plist",
            "plain",
        ),
    ] {
        let out = Command::new("python3")
            .args(["-c", CHECK])
            .arg(repo(file))
            .arg(how)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A sandbox with the service's binary, system unit and sysusers file
/// installed as a package puts them, the user created, the unit not enabled.
fn installed(label: &str) -> Sandbox {
    let bin = bin();
    let sb = Sandbox::boot(label, &[(bin.as_path(), "robbie-mesh")]);
    sb.ok("install -m 0755 /bring/robbie-mesh /usr/bin/robbie-mesh");
    for kind in ["system", "sysusers"] {
        let f = robbie_mesh::units::find(kind).expect("unit file");
        sb.write(f.installed, f.text, "0644");
    }
    sb.ok("systemd-sysusers && systemctl daemon-reload");
    let home = sb.ok("getent passwd robbie-mesh");
    assert!(
        home.contains(":/var/lib/robbie-mesh:"),
        "the service user's home: {home}"
    );
    assert_eq!(
        sb.property(UNIT, "UnitFileState"),
        "disabled",
        "installed, not enabled"
    );
    sb
}

/// A config with one service endpoint (nothing behind it) on `port`.
fn config(port: u16) -> String {
    format!(
        "node = \"aurora\"\n[[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:{port}\"\n\
         candidates = [ {{ node = \"aurora\", address = \"127.0.0.1:11435\" }} ]\n"
    )
}

/// `systemctl start` returns once the service said READY=1, and by then its
/// endpoint accepts connections; `systemctl status` shows its status line;
/// the store is the service user's alone; `kill -9` and a frozen process
/// (the watchdog) both bring it back with a new PID.
#[test]
fn the_system_unit_starts_ready_says_its_status_and_comes_back() {
    let sb = installed("life");
    sb.write("/etc/robbie-mesh/config.toml", &config(11434), "0644");
    // A short watchdog for the test, as a user's drop-in would set it.
    sb.write(
        "/etc/systemd/system/robbie-mesh.service.d/watchdog.conf",
        "[Service]\nWatchdogSec=3\n",
        "0644",
    );
    sb.ok("systemctl daemon-reload");
    let started = sb
        .sh_text("systemctl start robbie-mesh && echo > /dev/tcp/127.0.0.1/11434 && echo accepted");
    assert!(
        started.contains("accepted"),
        "the endpoint listened when start returned: {started}"
    );
    assert_eq!(sb.property(UNIT, "ActiveState"), "active");
    let status = sb.wait_property(UNIT, "StatusText", Duration::from_secs(5), |s| {
        !s.is_empty()
    });
    assert!(status.contains("ollama → "), "STATUS= line: {status}");
    let shown = sb.ok("systemctl status --no-pager robbie-mesh || true");
    assert!(shown.contains("Status: \"ollama → "), "{shown}");

    // The inventory reads /proc and /sys under the hardening.
    let node = sb.ok("curl -sf http://127.0.0.1:8007/v1/node");
    let node: serde_json::Value = serde_json::from_str(&node).expect("node JSON");
    assert!(node["cpu"]["cores"].as_u64() > Some(0), "{node}");
    assert!(node["memory_bytes"].as_u64() > Some(0), "{node}");
    assert!(node.get("problems").is_none(), "{node}");

    let store = sb.ok("stat -c '%a %U' /var/lib/robbie-mesh /var/lib/robbie-mesh/store.db");
    assert_eq!(
        store, "700 robbie-mesh\n600 robbie-mesh\n",
        "the store is the service user's alone"
    );

    // kill -9: back within 3 s with a new PID.
    let pid = sb.property(UNIT, "MainPID");
    sb.ok(&format!("kill -9 {pid}"));
    let t = Instant::now();
    let new = sb.wait_property(UNIT, "MainPID", Duration::from_secs(3), |p| {
        p != pid && p != "0"
    });
    sb.wait_property(UNIT, "ActiveState", Duration::from_secs(3), |s| {
        s == "active"
    });
    eprintln!("after kill -9: running again as {new} in {:?}", t.elapsed());

    // Frozen: no more WATCHDOG=1, so systemd kills and restarts it.
    sb.ok(&format!("kill -STOP {new}"));
    let again = sb.wait_property(UNIT, "MainPID", Duration::from_secs(15), |p| {
        p != new && p != "0"
    });
    sb.wait_property(UNIT, "ActiveState", Duration::from_secs(5), |s| {
        s == "active"
    });
    let journal = sb.ok("journalctl --no-pager -u robbie-mesh");
    assert!(
        journal.contains("Watchdog timeout"),
        "the watchdog restarted it ({again}):\n{journal}"
    );

    // A drop-in hiding /proc's system files: the inventory says why it knows nothing.
    sb.write(
        "/etc/systemd/system/robbie-mesh.service.d/procsubset.conf",
        "[Service]\nProcSubset=pid\n",
        "0644",
    );
    sb.ok("systemctl daemon-reload && systemctl restart robbie-mesh");
    let node = sb.ok("curl -sf http://127.0.0.1:8007/v1/node");
    assert!(
        node.contains("cannot read the memory size (/proc/meminfo: "),
        "{node}"
    );

    // Stopping sends STOPPING=1 and ends cleanly.
    sb.ok("systemctl stop robbie-mesh");
    assert_eq!(sb.property(UNIT, "ActiveState"), "inactive");
    assert_eq!(sb.property(UNIT, "Result"), "success");
}

/// A typo in the config: the unit fails with status 78 and is not restarted
/// in a loop, and the journal says file:line:column. Fixed and enabled, the
/// unit comes up at the next boot.
#[test]
fn a_config_typo_fails_once_and_an_enabled_unit_comes_up_at_boot() {
    let mut sb = installed("typo");
    sb.write(
        "/etc/robbie-mesh/config.toml",
        "node = \"aurora\"\n[api]\nlisten = \"127.0.0.1:80x\"\n",
        "0644",
    );
    let _ = sb.sh("systemctl start robbie-mesh");
    sb.wait_property(UNIT, "ActiveState", Duration::from_secs(10), |s| {
        s == "failed"
    });
    assert_eq!(sb.property(UNIT, "ExecMainStatus"), "78");
    let restarts = sb.property(UNIT, "NRestarts");
    std::thread::sleep(Duration::from_secs(2)); // long enough for RestartSec=1 to have fired
    assert_eq!(
        sb.property(UNIT, "ActiveState"),
        "failed",
        "no restart loop"
    );
    assert_eq!(sb.property(UNIT, "NRestarts"), restarts);
    let journal = sb.ok("journalctl --no-pager -u robbie-mesh");
    assert!(
        journal.contains("/etc/robbie-mesh/config.toml:3:"),
        "the journal names file:line:column:\n{journal}"
    );

    sb.write("/etc/robbie-mesh/config.toml", &config(11434), "0644");
    sb.ok("systemctl reset-failed robbie-mesh; systemctl enable robbie-mesh");
    sb.reboot();
    sb.wait_property(UNIT, "ActiveState", Duration::from_secs(15), |s| {
        s == "active"
    });
    let out = sb.sh_text("echo > /dev/tcp/127.0.0.1/11434 && echo accepted");
    assert!(out.contains("accepted"), "up at boot: {out}");
}
