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

/// The sandbox's own servers for the hub test: an `sshd` on 127.0.0.1:2222
/// (host key and authorized key made here), an HTTP server behind it on
/// 127.0.0.1:9000, and a PostgreSQL on 127.0.0.1:5433; the client key goes in
/// as an encrypted systemd credential, never a file the service can read.
const HUB_SERVERS: &str = r#"
set -eu
t=/root/t; mkdir -p $t/www /run/sshd
ssh-keygen -q -t ed25519 -N '' -f $t/host_ed25519
ssh-keygen -q -t ed25519 -N '' -f $t/id_ed25519
cp $t/id_ed25519.pub $t/authorized_keys
printf 'through the tunnel\n' > $t/www/index.html
cat > $t/sshd_config <<CFG
Port 2222
ListenAddress 127.0.0.1
HostKey $t/host_ed25519
AuthorizedKeysFile $t/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
CFG
systemd-run -q --unit=test-sshd /usr/sbin/sshd -D -e -f $t/sshd_config
systemd-run -q --unit=test-http python3 -m http.server 9000 --bind 127.0.0.1 --directory $t/www
mkdir -p /etc/robbie-mesh
echo "[127.0.0.1]:2222 $(cut -d' ' -f1,2 $t/host_ed25519.pub)" > /etc/robbie-mesh/known_hosts
systemd-creds encrypt --name=aurora $t/id_ed25519 /etc/robbie-mesh/aurora.cred
chmod 0600 /etc/robbie-mesh/aurora.cred
for i in $(seq 200); do
  curl -sf http://127.0.0.1:9000/ >/dev/null && break
  sleep 0.05
done
"#;

/// A PostgreSQL on 127.0.0.1:5433 in the sandbox (the probe's peer).
const POSTGRES: &str = r#"
set -eu
pg=$(ls -d /usr/lib/postgresql/*/bin | head -1)
install -d -o postgres -g postgres /var/tmp/pg
runuser -u postgres -- $pg/initdb -D /var/tmp/pg/data -A trust -U postgres >/dev/null
systemd-run -q --unit=test-pg --uid=postgres $pg/postgres -D /var/tmp/pg/data -p 5433 -k /var/tmp/pg -c listen_addresses=127.0.0.1
for i in $(seq 200); do
  $pg/pg_isready -q -h 127.0.0.1 -p 5433 && exit 0
  sleep 0.05
done
exit 1
"#;

/// The hub's unit, under its full hardening, brings a real tunnel up: the key
/// arrives as an encrypted credential (a keychain identity before it fails at
/// once: a system service has no Secret Service), a request goes through the
/// forward, the PostgreSQL probe answers, the store is written.
#[test]
fn the_hub_unit_carries_a_tunnel_under_its_full_hardening() {
    let sb = installed("hub");
    sb.ok(HUB_SERVERS);
    sb.ok(POSTGRES);
    sb.write(
        "/etc/robbie-mesh/config.toml",
        "node = \"aurora\"\n\
         [[peer]]\nname = \"gpu\"\nssh = \"root@127.0.0.1:2222\"\n\
         identity = [\"keychain:aurora\", \"credential:aurora\"]\n\
         known_hosts = \"/etc/robbie-mesh/known_hosts\"\n\
         [[peer.forward]]\nname = \"api\"\nlocal = \"127.0.0.1:19000\"\nremote = \"127.0.0.1:9000\"\n\
         [[service]]\nname = \"pg\"\nkind = \"postgres\"\nlisten = \"127.0.0.1:15432\"\n\
         candidates = [ { node = \"aurora\", address = \"127.0.0.1:5433\" } ]\n",
        "0644",
    );
    sb.write(
        "/etc/systemd/system/robbie-mesh.service.d/key.conf",
        "[Service]\nLoadCredentialEncrypted=aurora:/etc/robbie-mesh/aurora.cred\n",
        "0644",
    );
    sb.ok("systemctl daemon-reload && systemctl start robbie-mesh");
    // Only the unit reads the key: not the service user outside it.
    let outside =
        sb.sh_text("runuser -u robbie-mesh -- cat /etc/robbie-mesh/aurora.cred | head -c 40");
    assert!(!outside.contains("OPENSSH PRIVATE KEY"), "{outside}");

    let through = sb.ok(
        "for i in $(seq 200); do curl -sf http://127.0.0.1:19000/ && exit 0; sleep 0.05; done; \
         journalctl --no-pager -u robbie-mesh; exit 1",
    );
    assert_eq!(through, "through the tunnel\n");
    let services = sb.ok(
        "for i in $(seq 200); do s=$(curl -sf http://127.0.0.1:8007/v1/status); \
         echo \"$s\" | grep -q '\"postgres_role\":\"primary\"' && { echo \"$s\"; exit 0; }; sleep 0.05; done; echo \"$s\"; exit 1",
    );
    assert!(
        services.contains("\"health\":\"online\""),
        "the PostgreSQL probe answered: {services}"
    );
    let created = sb.ok(
        "curl -sf -H \"Authorization: Bearer $(cat /var/lib/robbie-mesh/api-token)\" -H 'Content-Type: application/json' -d '{\"title\":\"from the hub\"}' \
         http://127.0.0.1:8007/v1/conversations",
    );
    assert!(created.contains("from the hub"), "{created}");
    let listed = sb.ok("curl -sf -H \"Authorization: Bearer $(cat /var/lib/robbie-mesh/api-token)\" http://127.0.0.1:8007/v1/conversations");
    assert!(
        listed.contains("from the hub"),
        "the store was written: {listed}"
    );
    // The status line follows within its refresh period.
    sb.wait_property(UNIT, "StatusText", Duration::from_secs(5), |s| {
        s == "pg → aurora · 1/1 tunnels up"
    });
}

/// `service install --system` from a binary outside /usr/bin: the unit, a
/// drop-in naming the binary, the user, enabled and running; a second run
/// changes nothing (same process); `status` says so; `uninstall` stops and
/// removes it and keeps the store.
#[test]
fn service_install_system_round_trip() {
    let bin = bin();
    let sb = Sandbox::boot("instsys", &[(bin.as_path(), "robbie-mesh")]);
    sb.ok("install -D -m 0755 /bring/robbie-mesh /opt/rm/robbie-mesh");
    let first = sb.ok("/opt/rm/robbie-mesh service install --system");
    for line in [
        "+ /etc/systemd/system/robbie-mesh.service",
        "+ /etc/systemd/system/robbie-mesh.service.d/robbie-mesh-binary.conf",
        "$ systemctl enable robbie-mesh.service",
        "Done: active. No config at /etc/robbie-mesh/config.toml yet",
    ] {
        assert!(first.contains(line), "`{line}` in:\n{first}");
    }
    assert!(sb
        .property(UNIT, "ExecStart")
        .contains("/opt/rm/robbie-mesh"));
    let pid = sb.property(UNIT, "MainPID");
    let second = sb.ok("/opt/rm/robbie-mesh service install --system");
    assert!(
        second.contains("= /etc/systemd/system/robbie-mesh.service (up to date)"),
        "{second}"
    );
    assert!(!second.contains("  + "), "nothing rewritten:\n{second}");
    assert_eq!(sb.property(UNIT, "MainPID"), pid, "not restarted");
    let status = sb.ok("/opt/rm/robbie-mesh service status --system");
    assert!(status.contains(": enabled, active"), "{status}");

    let gone = sb.ok("/opt/rm/robbie-mesh service uninstall --system");
    assert!(
        gone.contains("- /etc/systemd/system/robbie-mesh.service"),
        "{gone}"
    );
    assert!(
        gone.contains("Kept: the config (/etc/robbie-mesh/) and the store"),
        "{gone}"
    );
    assert_eq!(sb.property(UNIT, "LoadState"), "not-found");
    sb.ok("test -f /var/lib/robbie-mesh/store.db");

    // From a home directory (cargo install puts it there), which the unit
    // cannot see: the program is copied to /usr/local/bin first.
    sb.ok("install -D -m 0755 /bring/robbie-mesh /root/.cargo/bin/robbie-mesh");
    let from_home = sb.ok("/root/.cargo/bin/robbie-mesh service install --system");
    assert!(
        from_home.contains("+ /usr/local/bin/robbie-mesh"),
        "{from_home}"
    );
    assert!(sb
        .property(UNIT, "ExecStart")
        .contains("/usr/local/bin/robbie-mesh"));
    assert_eq!(sb.property(UNIT, "ActiveState"), "active");
}

/// `service install --user` for a lingering user (nobody logged in): the user
/// unit starts in that user's manager and brings a tunnel up with a key file
/// after a keychain identity that cannot work there, the reason in its log.
#[test]
fn service_install_user_for_a_lingering_user() {
    let bin = bin();
    let sb = Sandbox::boot("instuser", &[(bin.as_path(), "robbie-mesh")]);
    sb.ok("install -m 0755 /bring/robbie-mesh /usr/bin/robbie-mesh");
    sb.ok(HUB_SERVERS);
    sb.ok(
        "useradd -m tester && install -d -m 700 -o tester -g tester /home/tester/.ssh \
         && install -m 600 -o tester -g tester /root/t/id_ed25519 /home/tester/.ssh/id_ed25519 \
         && install -m 644 -o tester -g tester /etc/robbie-mesh/known_hosts /home/tester/.ssh/known_hosts \
         && loginctl enable-linger tester",
    );
    let uid = sb.ok("id -u tester").trim().to_string();
    sb.ok(&format!(
        "for i in $(seq 200); do test -S /run/user/{uid}/bus && exit 0; sleep 0.05; done; exit 1"
    ));
    sb.write(
        "/home/tester/.config/robbie-mesh/config.toml",
        "node = \"vengeance\"\n\
         [[peer]]\nname = \"aurora\"\nssh = \"root@127.0.0.1:2222\"\n\
         identity = [\"keychain:aurora\", \"~/.ssh/id_ed25519\"]\n\
         [[peer.forward]]\nname = \"api\"\nlocal = \"127.0.0.1:19000\"\nremote = \"127.0.0.1:9000\"\n",
        "0644",
    );
    sb.ok("chown -R tester:tester /home/tester/.config");
    let as_tester = format!(
        "runuser -u tester -- env HOME=/home/tester XDG_RUNTIME_DIR=/run/user/{uid} \
         DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus"
    );
    let out = sb.ok(&format!("{as_tester} robbie-mesh service install --user"));
    assert!(
        out.contains("+ /home/tester/.config/systemd/user/robbie-mesh.service"),
        "{out}"
    );
    assert!(
        out.contains("Done: active. It runs with /home/tester/.config/robbie-mesh/config.toml"),
        "{out}"
    );
    let through = sb.ok(
        "for i in $(seq 300); do curl -sf http://127.0.0.1:19000/ && exit 0; sleep 0.05; done; exit 1",
    );
    assert_eq!(through, "through the tunnel\n");
    let log = sb.ok("journalctl --no-pager _SYSTEMD_USER_UNIT=robbie-mesh.service");
    assert!(
        log.contains("with /home/tester/.ssh/id_ed25519, after: keychain:aurora ("),
        "the keychain's reason is in the log:\n{log}"
    );
    let gone = sb.ok(&format!("{as_tester} robbie-mesh service uninstall --user"));
    assert!(
        gone.contains("- /home/tester/.config/systemd/user/robbie-mesh.service"),
        "{gone}"
    );
}

/// The service package `installers/build.sh` made (tests/run.sh makes it first).
fn deb() -> PathBuf {
    package("robbie-mesh_")
}

/// The tray's package, made by the same script.
fn tray_deb() -> PathBuf {
    package("robbie-mesh-tray_")
}

fn package(prefix: &str) -> PathBuf {
    let dist = repo("dist");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dist)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
        })
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop().unwrap_or_else(|| {
        panic!(
            "no {prefix}*.deb in {}: run `bash installers/build.sh`",
            dist.display()
        )
    })
}

/// The same package with a higher version, as the next release would be.
fn newer(deb: &Path, dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    let st = Command::new("dpkg-deb")
        .arg("-R")
        .arg(deb)
        .arg(&tree)
        .status()
        .expect("dpkg-deb");
    assert!(st.success());
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("control");
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .expect("version")
        .to_string();
    std::fs::write(
        &control,
        text.replace(
            &format!("Version: {version}"),
            &format!("Version: {version}+next1"),
        ),
    )
    .expect("control");
    let out = dir.join("robbie-mesh-next.deb");
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("dpkg-deb");
    assert!(st.success());
    out
}

/// The service `.deb` through its life: installed (user created, units in
/// place, not enabled), enabled after a config is written, upgraded (restarted,
/// config and store intact), removed (stopped, data kept and said so), purged
/// (data deleted, and said so).
#[test]
fn the_service_deb_installs_upgrades_removes_and_purges() {
    let deb = deb();
    let tmp = tempfile::tempdir().expect("tempdir");
    let next = newer(&deb, tmp.path());
    let sb = Sandbox::boot(
        "deb",
        &[
            (deb.as_path(), "robbie-mesh.deb"),
            (next.as_path(), "next.deb"),
        ],
    );

    let out = sb.ok("dpkg -i /bring/robbie-mesh.deb 2>&1");
    assert!(
        out.contains("its system service is not enabled yet"),
        "{out}"
    );
    sb.ok("getent passwd robbie-mesh | grep -q :/var/lib/robbie-mesh:");
    sb.ok("test -f /usr/lib/systemd/system/robbie-mesh.service && test -f /usr/lib/systemd/user/robbie-mesh.service");
    sb.ok("man -w robbie-mesh >/dev/null 2>&1 || test -f /usr/share/man/man1/robbie-mesh.1.gz");
    assert_eq!(sb.property(UNIT, "UnitFileState"), "disabled");
    assert_eq!(sb.property(UNIT, "ActiveState"), "inactive");

    sb.write("/etc/robbie-mesh/config.toml", &config(11434), "0644");
    sb.ok("systemctl enable --now robbie-mesh");
    sb.ok(
        "for t in one two three; do curl -sf -H \"Authorization: Bearer $(cat /var/lib/robbie-mesh/api-token)\" -H 'Content-Type: application/json' \
         -d \"{\\\"title\\\":\\\"$t\\\"}\" http://127.0.0.1:8007/v1/conversations >/dev/null; done",
    );
    let count = || {
        let list = sb.ok("curl -sf -H \"Authorization: Bearer $(cat /var/lib/robbie-mesh/api-token)\" http://127.0.0.1:8007/v1/conversations");
        list.matches("\"title\"").count()
    };
    assert_eq!(count(), 3);
    let pid = sb.property(UNIT, "MainPID");

    let out = sb.ok("dpkg -i /bring/next.deb 2>&1");
    let new_pid = sb.wait_property(UNIT, "MainPID", Duration::from_secs(10), |p| {
        p != pid && p != "0"
    });
    sb.wait_property(UNIT, "ActiveState", Duration::from_secs(10), |s| {
        s == "active"
    });
    assert!(
        !out.contains("not enabled yet"),
        "an upgrade does not repeat the first-install note: {out}"
    );
    assert_eq!(
        sb.property(UNIT, "UnitFileState"),
        "enabled",
        "still enabled after the upgrade"
    );
    assert_eq!(
        sb.ok("cat /etc/robbie-mesh/config.toml"),
        config(11434),
        "config kept"
    );
    sb.ok("for i in $(seq 200); do curl -sf http://127.0.0.1:8007/health >/dev/null && exit 0; sleep 0.05; done; exit 1");
    assert_eq!(
        count(),
        3,
        "store kept across the upgrade (restarted as {new_pid})"
    );

    let out = sb.ok("dpkg -r robbie-mesh 2>&1");
    assert!(out.contains("kept /var/lib/robbie-mesh"), "{out}");
    assert_eq!(sb.property(UNIT, "ActiveState"), "inactive");
    sb.ok("test -f /var/lib/robbie-mesh/store.db && test -f /etc/robbie-mesh/config.toml");

    let out = sb.ok("dpkg -P robbie-mesh 2>&1");
    assert!(out.contains("deleting /var/lib/robbie-mesh"), "{out}");
    sb.ok("test ! -e /var/lib/robbie-mesh && test ! -e /etc/robbie-mesh && test ! -e /usr/bin/robbie-mesh");
}

/// lintian, Debian's package checker: no errors and no warnings in either
/// package.
#[test]
fn lintian_finds_no_errors_or_warnings_in_the_debs() {
    for deb in [deb(), tray_deb()] {
        let out = Command::new("lintian")
            .args(["--tag-display-limit", "0"])
            .arg(&deb)
            .output()
            .expect("lintian (tests/setup.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        // Errors and warnings both, but the one about a Debian archive's bug
        // tracker: this package is not uploaded to Debian.
        let found: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
            .filter(|l| !l.contains("initial-upload-closes-no-bugs"))
            .collect();
        eprintln!("lintian {}:\n{text}", deb.display());
        assert!(found.is_empty(), "lintian:\n{}", found.join("\n"));
    }
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tray's `.deb` (Tauri's bundler) depends on the service package instead
/// of carrying a second copy of it, will not configure without it, and once
/// installed starts the tray at login (XDG autostart) with a binary whose
/// libraries all resolve.
#[test]
fn the_tray_deb_depends_on_the_service_package_and_starts_at_login() {
    let (svc, tray) = (deb(), tray_deb());
    let depends = dpkg_deb(&["-f"], &tray);
    assert!(depends.contains("robbie-mesh (>= 0.1.0)"), "{depends}");
    let files = dpkg_deb(&["-c"], &tray);
    assert!(files.contains("./usr/bin/robbie-mesh-tray"), "{files}");
    assert!(
        !files.contains("./usr/bin/robbie-mesh\n"),
        "no second copy of the service:\n{files}"
    );

    let sb = Sandbox::boot(
        "traydeb",
        &[(svc.as_path(), "svc.deb"), (tray.as_path(), "tray.deb")],
    );
    let alone = sb.sh_text("dpkg -i /bring/tray.deb");
    assert!(alone.contains("depends on robbie-mesh"), "{alone}");
    sb.ok("dpkg -i /bring/svc.deb /bring/tray.deb >/dev/null");
    let autostart = sb.ok("cat /etc/xdg/autostart/robbie-mesh-tray.desktop");
    assert_eq!(
        autostart,
        std::fs::read_to_string(repo("installers/linux/robbie-mesh-tray.desktop"))
            .expect("desktop file")
    );
    let ldd = sb.ok("ldd /usr/bin/robbie-mesh-tray");
    assert!(!ldd.contains("not found"), "{ldd}");
    sb.ok("test -x /usr/bin/robbie-mesh");
}

/// The Mac bundle's configuration: the service rides along as a sidecar at
/// `Contents/MacOS/robbie-mesh` (the in-bundle LaunchAgent's `BundleProgram`),
/// the LaunchAgent is placed in `Contents/Library/LaunchAgents` (where
/// SMAppService looks), and `LSUIElement` keeps the menu-bar app out of the Dock.
/// (The bundle itself needs a Mac to build.)
#[test]
fn the_mac_bundle_carries_the_service_and_its_launch_agent() {
    let conf: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("src-tauri/tauri.macos.conf.json")).expect("macOS config"),
    )
    .expect("JSON");
    assert_eq!(conf["bundle"]["externalBin"][0], "binaries/robbie-mesh");
    let agent =
        &conf["bundle"]["macOS"]["files"]["Library/LaunchAgents/app.robbie-mesh.service.plist"];
    assert_eq!(agent, "../installers/macos/app.robbie-mesh.service.plist");
    let out = Command::new("python3")
        .args([
            "-c",
            "import plistlib,sys; p=plistlib.load(open(sys.argv[1],'rb')); assert p['LSUIElement'] is True",
        ])
        .arg(repo("src-tauri/Info.plist"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `sh` blocks of one `## ` section of `installers/README.md`, in order,
/// without the build line (the test run has made `dist/` with that very
/// command, `tests/run.sh`, before any test).
fn readme_blocks(section: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo("installers/README.md")).expect("installers/README.md");
    let start = text
        .find(&format!("\n## {section}"))
        .unwrap_or_else(|| panic!("no `## {section}` in installers/README.md"));
    let rest = &text[start + 1..];
    let body = match rest[3..].find("\n## ") {
        Some(end) => &rest[..end + 3],
        None => rest,
    };
    let run_sh = std::fs::read_to_string(repo("tests/run.sh")).expect("tests/run.sh");
    let mut blocks = Vec::new();
    let mut lines = body.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```sh" {
            continue;
        }
        let mut block = String::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            if l.starts_with("bash installers/build.sh") {
                assert!(
                    run_sh.contains("bash installers/build.sh"),
                    "tests/run.sh builds the packages as the README says"
                );
                continue;
            }
            block.push_str(l);
            block.push('\n');
        }
        blocks.push(block);
    }
    blocks
}

/// A sandbox with a user who has `sudo` (no password, as on a fresh cloud VM),
/// the packages in `~/src/dist/`, the test servers (`HUB_SERVERS`), and the
/// user's own SSH key and `known_hosts` that already trusts the sshd's key.
fn new_user(label: &str, user: &str) -> Sandbox {
    let (deb, tray) = (deb(), tray_deb());
    let names = [
        deb.file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string(),
        tray.file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string(),
    ];
    let sb = Sandbox::boot(
        label,
        &[(deb.as_path(), &names[0]), (tray.as_path(), &names[1])],
    );
    sb.ok(HUB_SERVERS);
    sb.ok(&format!(
        "useradd -m -s /bin/bash {user} \
         && echo '{user} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{user} && chmod 0440 /etc/sudoers.d/{user} \
         && install -d -m 0755 -o {user} -g {user} /home/{user}/src/dist \
         && cp /bring/*.deb /home/{user}/src/dist/ && chown {user}: /home/{user}/src/dist/* \
         && install -d -m 0700 -o {user} -g {user} /home/{user}/.ssh \
         && install -m 0600 -o {user} -g {user} /root/t/id_ed25519 /home/{user}/.ssh/id_ed25519 \
         && install -m 0644 -o {user} -g {user} /etc/robbie-mesh/known_hosts /home/{user}/.ssh/known_hosts \
         && rm -rf /etc/robbie-mesh && echo '127.0.1.1 sandbox' >> /etc/hosts \
         && loginctl enable-linger {user}"
    ));
    let uid = sb.ok(&format!("id -u {user}")).trim().to_string();
    sb.ok(&format!(
        "for i in $(seq 200); do test -S /run/user/{uid}/bus && exit 0; sleep 0.05; done; exit 1"
    ));
    sb
}

/// Runs one README block as `user` in `~/src`, the way they would paste it
/// into a login shell (stopping at the first failing command); `config` is
/// what their editor saves.
fn as_user(sb: &Sandbox, user: &str, step: usize, block: &str, config: &str) -> String {
    let uid = sb.ok(&format!("id -u {user}")).trim().to_string();
    sb.write(&format!("/home/{user}/their-config.toml"), config, "0644");
    sb.write(
        &format!("/home/{user}/their-editor"),
        &format!("#!/bin/sh\ncp /home/{user}/their-config.toml \"$1\"\n"),
        "0755",
    );
    sb.write(
        &format!("/home/{user}/step{step}.sh"),
        &format!("set -eu\ncd ~/src\n{block}"),
        "0644",
    );
    sb.ok(&format!(
        "cd /home/{user} && runuser -u {user} -- env -i HOME=/home/{user} USER={user} LOGNAME={user} SHELL=/bin/bash \
         PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin XDG_RUNTIME_DIR=/run/user/{uid} \
         DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus \
         EDITOR=/home/{user}/their-editor bash step{step}.sh 2>&1"
    ))
}

/// installers/README.md's Aurora section, run as written by an admin with
/// sudo: the package installed, the config written, the key as an encrypted
/// credential, the host keys the admin trusts, enabled → a tunnel carries a
/// request and the status line says so; removed → stopped, the store kept.
#[test]
fn readme_install_aurora_as_written() {
    let blocks = readme_blocks("Aurora");
    assert_eq!(
        blocks.len(),
        5,
        "install, config, key, start, remove: {blocks:#?}"
    );
    let sb = new_user("rdm-aurora", "admin");
    let config = "node = \"aurora\"\n\
         [[peer]]\nname = \"runpod\"\nssh = \"root@127.0.0.1:2222\"\nidentity = [\"credential:runpod\"]\n\
         known_hosts = \"~/.ssh/known_hosts\"\n\
         [[peer.forward]]\nname = \"api\"\nlocal = \"127.0.0.1:19000\"\nremote = \"127.0.0.1:9000\"\n";
    for (i, block) in blocks[..4].iter().enumerate() {
        let out = as_user(&sb, "admin", i + 1, block, config);
        eprintln!("--- step {}:\n{block}{out}", i + 1);
        if i == 3 {
            assert!(
                out.contains("runpod") && out.contains("Status: \""),
                "check-config and status: {out}"
            );
        }
    }
    assert_eq!(sb.property(UNIT, "UnitFileState"), "enabled");
    let through = sb.ok(
        "for i in $(seq 200); do curl -sf http://127.0.0.1:19000/ && exit 0; sleep 0.05; done; \
         journalctl --no-pager -u robbie-mesh; exit 1",
    );
    assert_eq!(through, "through the tunnel\n");
    sb.wait_property(UNIT, "StatusText", Duration::from_secs(5), |s| {
        s.contains("1/1 tunnels up")
    });
    let created = sb.ok(
        "curl -sf -H \"Authorization: Bearer $(cat /var/lib/robbie-mesh/api-token)\" -H 'Content-Type: application/json' -d '{\"title\":\"kept\"}' http://127.0.0.1:8007/v1/conversations",
    );
    assert!(created.contains("kept"), "{created}");

    let out = as_user(&sb, "admin", 5, &blocks[4], config);
    assert!(out.contains("kept /var/lib/robbie-mesh"), "{out}");
    assert_eq!(sb.property(UNIT, "ActiveState"), "inactive");
    sb.ok("test -f /var/lib/robbie-mesh/store.db && test -f /etc/robbie-mesh/config.toml");
}

/// installers/README.md's Vengeance section, run as written by a desktop
/// user: both packages, the user's config, `service install --user` → the
/// user unit carries a tunnel with the user's own key, the tray starts at
/// login; removed → nothing of it runs.
#[test]
fn readme_install_vengeance_as_written() {
    let blocks = readme_blocks("Vengeance");
    assert_eq!(blocks.len(), 2, "install, remove: {blocks:#?}");
    let sb = new_user("rdm-veng", "robbie");
    let config = "node = \"vengeance\"\n\
         [[peer]]\nname = \"aurora\"\nssh = \"root@127.0.0.1:2222\"\n\
         identity = [\"keychain:aurora\", \"~/.ssh/id_ed25519\"]\n\
         [[peer.forward]]\nname = \"api\"\nlocal = \"127.0.0.1:19000\"\nremote = \"127.0.0.1:9000\"\n";
    let out = as_user(&sb, "robbie", 1, &blocks[0], config);
    eprintln!("--- install:\n{}{out}", blocks[0]);
    assert!(out.contains("Done: active."), "{out}");
    sb.ok(
        "test -x /usr/bin/robbie-mesh-tray && test -f /etc/xdg/autostart/robbie-mesh-tray.desktop",
    );
    let through = sb.ok(
        "for i in $(seq 300); do curl -sf http://127.0.0.1:19000/ && exit 0; sleep 0.05; done; \
         journalctl --no-pager _SYSTEMD_USER_UNIT=robbie-mesh.service; exit 1",
    );
    assert_eq!(through, "through the tunnel\n");

    let out = as_user(&sb, "robbie", 2, &blocks[1], config);
    eprintln!("--- remove:\n{}{out}", blocks[1]);
    sb.ok("test ! -e /usr/bin/robbie-mesh && test ! -e /usr/bin/robbie-mesh-tray");
    sb.ok("! curl -sf http://127.0.0.1:19000/");
}
