//! Property tests of the two parsers that decide whom robbie-mesh trusts and
//! where it connects: random bytes and mutated real files never make them panic,
//! and they never trust a key or pick a host OpenSSH would not (`ssh-keygen -F`
//! and `ssh -G` on the same file are the reference).

use std::path::Path;
use std::process::Command;

use proptest::prelude::*;
use robbie_mesh::config::ssh_config::SshConfigFile;
use robbie_mesh::ssh::known_hosts::{HostKeyVerdict, KnownHosts};
use russh::keys::PublicKey;

const ED1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAA76dJieginodV+Ryl5SwxKSCYFUNVUSrZJnIi1kXs+";
const ED2: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEogFQF8fgu36LCxpMS30/sehb10sSt0LjcPVKVKYtf9";

/// Lines of real known_hosts files (hashed ones as `ssh-keygen -H` writes them).
const LINES: &[&str] = &[
    "aurora.example,10.0.0.1 KEY1",
    "[aurora.example]:2222 KEY1",
    "*.lan,!bad.lan KEY2",
    "@revoked * KEY2",
    "|1|AQEBAQEBAQEBAQEBAQEBAQEBAQE=|NoQ6tRJ1jIxB2kT1hT4XzP2b3eI= KEY1",
    "# a comment",
    "[127.0.0.1]:2200 KEY2",
    "Box.Lan KEY1",
    "@cert-authority *.lan KEY1",
];

const NAMES: &[&str] = &[
    "aurora.example",
    "10.0.0.1",
    "[aurora.example]:2222",
    "box.lan",
    "bad.lan",
    "[127.0.0.1]:2200",
    "other",
    "BOX.LAN",
];

/// `ssh-keygen -F name -f file`: the lines it lists for `name`.
fn keygen_lines(file: &Path, name: &str) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-F")
        .arg(name)
        .arg("-f")
        .arg(file)
        .output()
        .expect("ssh-keygen -F");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mutate(text: &str, edits: &[(usize, u8)]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for (at, b) in edits {
        if bytes.is_empty() {
            break;
        }
        let i = at % bytes.len();
        match b % 4 {
            0 => bytes[i] = *b,
            1 => bytes.insert(i, *b),
            2 => {
                bytes.remove(i);
            }
            _ => bytes[i] = bytes[i].to_ascii_uppercase(),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn known_hosts_never_trusts_what_openssh_does_not_list(
        picks in proptest::collection::vec(0..LINES.len(), 1..8),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        name in 0..NAMES.len(),
        key in 0..2usize,
    ) {
        let text: String = picks.iter().map(|&i| format!("{}\n", LINES[i].replace("KEY1", ED1).replace("KEY2", ED2))).collect();
        let bytes = mutate(&text, &edits);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, &bytes).expect("write");
        let (kh, _) = KnownHosts::load(std::slice::from_ref(&file));
        let offered = PublicKey::from_openssh(if key == 0 { ED1 } else { ED2 }).expect("key");
        let name = NAMES[name];
        if kh.check(name, &offered) == HostKeyVerdict::Trusted {
            let listed = keygen_lines(&file, &name.to_ascii_lowercase());
            let b64 = (if key == 0 { ED1 } else { ED2 }).split_whitespace().nth(1).unwrap_or_default();
            prop_assert!(
                listed.lines().any(|l| !l.starts_with('@') && l.contains(b64)),
                "robbie-mesh trusts {name} with key {key}; ssh-keygen -F lists:\n{listed}\nfile:\n{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn random_bytes_never_panic_either_parser(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        let kh = KnownHosts::parse(Path::new("kh"), &text);
        let key = PublicKey::from_openssh(ED1).expect("key");
        let _ = kh.check("aurora.example", &key);
        let cfg = SshConfigFile::parse(&text, Path::new("/home/u"));
        let _ = cfg.resolve("aurora");
    }

    #[test]
    fn ssh_config_picks_the_host_ssh_g_picks(
        blocks in proptest::collection::vec((0..5usize, 0..4usize, 0..3usize), 1..6),
        host in 0..4usize,
    ) {
        const PATTERNS: &[&str] = &["*", "a*", "box,!bad", "lab-?", "!x *"];
        const HOSTS: &[&str] = &["box", "bad", "lab-1", "aurora"];
        let mut text = String::new();
        for (i, (p, hn, port)) in blocks.iter().enumerate() {
            text.push_str(&format!("Host {}\n", PATTERNS[*p]));
            if *hn > 0 {
                text.push_str(&format!("  HostName 127.0.{i}.{hn}\n"));
            }
            if *port > 0 {
                text.push_str(&format!("  Port {}\n", 2200 + i * 10 + port));
            }
            text.push_str(&format!("  User u{i}\n"));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config");
        std::fs::write(&file, &text).expect("write");
        let host = HOSTS[host];
        let out = Command::new("ssh").arg("-G").arg("-F").arg(&file).arg(host).output().expect("ssh -G");
        prop_assume!(out.status.success());
        let g = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |k: &str| g.lines().find_map(|l| l.strip_prefix(&format!("{k} "))).unwrap_or_default().to_string();
        let r = SshConfigFile::load(&file, Path::new("/home/u")).resolve(host);
        prop_assert_eq!(r.hostname.unwrap_or_else(|| host.to_string()), field("hostname"), "{}", text);
        prop_assert_eq!(r.port.unwrap_or(22).to_string(), field("port"), "{}", text);
        prop_assert_eq!(r.user.unwrap_or_else(mesh_tests::whoami), field("user"), "{}", text);
    }
}

/// A config using every kind of field, for mutation.
const CONFIG: &str = r#"node = "book"
nodes = [ { node = "aurora", address = "127.0.0.1:22007" } ]
[api]
listen = "127.0.0.1:8007"
[limits]
idle = "60s"
body_memory = "256MiB"
[[peer]]
name = "aurora"
ssh = "root@127.0.0.1:2222"
identity = ["agent", "~/.ssh/id_ed25519"]
known_hosts = "~/.ssh/known_hosts"
keepalive = { interval = "5s", count = 3 }
backoff = { initial = "500ms", max = "30s" }
connect_timeout = "10s"
  [[peer.forward]]
  name = "ollama"
  local = "127.0.0.1:21434"
  remote = "127.0.0.1:11434"
[[service]]
name = "ollama"
kind = "ollama"
listen = "127.0.0.1:11434"
hold_down = "30s"
hosts = ["ollama.home.arpa"]
vram = { "llama3.1:70b" = "40GiB" }
probe = { local_interval = "2s", remote_interval = "5s", timeout = "2s" }
candidates = [ { node = "aurora", tunnel = "ollama" }, { node = "book", address = "127.0.0.1:11435" } ]
"#;

/// Every error says where: the file, and a line or a field.
fn located(errors: &robbie_mesh::config::ConfigErrors) -> Result<(), String> {
    for e in &errors.0 {
        let shown = e.to_string();
        if !shown.starts_with("t.toml")
            || (e.location.is_none() && e.field.is_empty())
            || e.message.is_empty()
        {
            return Err(format!("an error without its place: {shown:?} ({e:?})"));
        }
        if shown.len() > 2000 {
            return Err(format!("an error echoing {} bytes", shown.len()));
        }
    }
    Ok(())
}

/// What the running service does with a config's durations: deadlines from
/// now, back-offs grown to their cap, keepalive windows. None may panic.
fn exercise(cfg: &robbie_mesh::config::Config) {
    let now = std::time::Instant::now();
    for p in &cfg.peers {
        let _ = now + p.keepalive.interval * p.keepalive.count;
        let _ = now + p.connect_timeout;
        let mut b = robbie_mesh::tunnel::Backoff::new(p.backoff);
        for _ in 0..64 {
            let _ = now + b.next_delay();
        }
    }
    for s in &cfg.services {
        let _ =
            now + s.hold_down + s.probe.timeout + s.probe.local_interval + s.probe.remote_interval;
    }
    let _ = now + cfg.limits.idle;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random edits of a full config: never a panic, every error located, and
    /// whatever is accepted can run.
    #[test]
    fn mutated_configs_never_panic_and_errors_say_where(
        edits in proptest::collection::vec((0..CONFIG.len(), any::<u8>()), 0..6),
    ) {
        let text = String::from_utf8_lossy(&mutate(CONFIG, &edits)).into_owned();
        match robbie_mesh::config::parse(&text, "t.toml") {
            Ok(cfg) => exercise(&cfg),
            Err(e) => prop_assert_eq!(located(&e), Ok(())),
        }
    }

    /// Any string in any duration field: accepted only within bounds, never a
    /// panic later.
    #[test]
    fn any_duration_in_any_field_is_refused_or_safe(
        value in prop_oneof![
            "[0-9]{1,25}(ns|us|ms|s|m|h|d|w|y|)",
            "[0-9 .a-z]{0,12}",
            Just("500000000000y".to_string()),
            Just("18446744073709551615s".to_string()),
            Just("0s".to_string()),
        ],
        field in 0..8usize,
        count in any::<u32>(),
    ) {
        let fields = [
            ("keepalive = { interval = \"5s\", count = 3 }", format!("keepalive = {{ interval = \"{value}\", count = 3 }}")),
            ("backoff = { initial = \"500ms\", max = \"30s\" }", format!("backoff = {{ initial = \"{value}\", max = \"30s\" }}")),
            ("backoff = { initial = \"500ms\", max = \"30s\" }", format!("backoff = {{ initial = \"500ms\", max = \"{value}\" }}")),
            ("connect_timeout = \"10s\"", format!("connect_timeout = \"{value}\"")),
            ("hold_down = \"30s\"", format!("hold_down = \"{value}\"")),
            ("idle = \"60s\"", format!("idle = \"{value}\"")),
            ("timeout = \"2s\"", format!("timeout = \"{value}\"")),
            ("local_interval = \"2s\"", format!("local_interval = \"{value}\"")),
        ];
        let (from, to) = &fields[field];
        let text = CONFIG
            .replacen(from, to, 1)
            .replacen("count = 3", &format!("count = {count}"), 1);
        match robbie_mesh::config::parse(&text, "t.toml") {
            Ok(cfg) => exercise(&cfg),
            Err(e) => prop_assert_eq!(located(&e), Ok(())),
        }
    }
}
