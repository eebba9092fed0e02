//! Nothing lost, nothing duplicated: a crash campaign against the real service
//! binary, a real PostgreSQL primary and a real tunnel. Each round starts the
//! service, writes messages through its API while sync pushes them in small
//! batches, and then kills it at a random point: SIGKILL at a random moment, an
//! abort at the failpoint after the PostgreSQL commit and before the local ack, or
//! before the commit; or it cuts the tunnel mid-batch. At the end every message the
//! API acknowledged is on both sides, the contents are equal, and no id appears twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::postgres::{
    book_syncing_to, burn_xids_to, migrate, next_xid, node_syncing_to, psql, Postgres,
};
use mesh_tests::sshd::Sshd;
use robbie_mesh::api::wire::{Conversation, Message, NewConversation};
use serde_json::{json, Value};

const ROUNDS: usize = 200;

fn bin() -> PathBuf {
    mesh_tests::workspace_bin("robbie-mesh")
}

/// A small xorshift: the campaign is random but reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Service {
    child: Child,
    api: String,
}

impl Service {
    fn start(cfg: &Path, api_port: u16, failpoint: Option<String>) -> Service {
        let mut c = Command::new(bin());
        c.env("ROBBIE_MESH_TOKEN", mesh_tests::token());
        c.args(["run", "--config"])
            .arg(cfg)
            .env("ROBBIE_MESH_LOG", "error")
            .stderr(Stdio::null());
        if let Some(f) = failpoint {
            c.env("ROBBIE_MESH_FAILPOINT", f);
        }
        let child = c.spawn().expect("robbie-mesh");
        mesh_tests::wait_listening(api_port, "the API");
        Service {
            child,
            api: format!("http://127.0.0.1:{api_port}"),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the process to end by itself (a failpoint), up to `deadline`.
    fn exited_within(&mut self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// POSTs a message; the id when the service acknowledged it (it may be dying).
fn say(client: &reqwest::blocking::Client, api: &str, conv: &str, content: &str) -> Option<String> {
    let r = client
        .post(format!("{api}/v1/conversations/{conv}/messages"))
        .json(&json!({"role": "user", "content": content}))
        .send()
        .ok()?;
    if r.status() != 201 {
        return None;
    }
    r.json::<Message>().ok().map(|m| m.id)
}

/// (id, content) of every message in the local store, through `robbie-mesh db export`.
fn local_messages(cfg: &Path) -> BTreeMap<String, String> {
    local_rows(cfg).1
}

/// Every conversation (id → (title, archived)) and message (id → content) in the
/// local store, through `robbie-mesh db export`.
fn local_rows(cfg: &Path) -> (BTreeMap<String, (String, bool)>, BTreeMap<String, String>) {
    let out = Command::new(bin())
        .args(["db", "export", "--config"])
        .arg(cfg)
        .output()
        .expect("db export");
    assert!(
        out.status.success(),
        "db export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m = BTreeMap::new();
    let mut convs = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        if v["type"] == "conversation" {
            convs.insert(
                v["id"].as_str().expect("id").to_string(),
                (
                    v["title"].as_str().expect("title").to_string(),
                    v["archived"].as_bool().expect("archived"),
                ),
            );
        }
        if v["type"] == "message" {
            let dup = m.insert(
                v["id"].as_str().expect("id").to_string(),
                v["content"].as_str().expect("content").to_string(),
            );
            assert!(dup.is_none(), "an id twice in the local store");
        }
    }
    (convs, m)
}

fn primary_messages(port: u16) -> (BTreeMap<String, String>, usize) {
    let (ok, out, err) = psql(
        port,
        "SELECT id::text || '|' || content FROM robbie.messages",
    );
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    let m: BTreeMap<String, String> = rows
        .iter()
        .filter_map(|l| l.split_once('|'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    (m, rows.len())
}

#[test]
fn a_crash_campaign_loses_and_duplicates_nothing() {
    let primary = Postgres::primary();
    assert!(migrate(&bin(), &primary.url()).contains("version 0 -> 2"));
    assert!(
        migrate(&bin(), &primary.url()).contains("up to date"),
        "idempotent"
    );

    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, api) = book_syncing_to(
        &primary,
        &sshd,
        dir.path(),
        "store.db",
        "probe = { local_interval = \"100ms\", remote_interval = \"100ms\" }\n",
        "interval = \"200ms\"\nretry = \"100ms\"\nbatch = 5\n",
    );

    let client = mesh_tests::blocking_http_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let seed = std::env::var("MESH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("crash campaign seed {seed} (MESH_CRASH_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let conv = {
        let s = Service::start(&cfg, api, None);
        let c: Conversation = client
            .post(format!("{}/v1/conversations", s.api))
            .json(&NewConversation {
                title: "campaign".into(),
            })
            .send()
            .expect("create")
            .json()
            .expect("a conversation");
        c.id
    };
    let mut acked = Vec::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut aborted = 0;
    for round in 0..ROUNDS {
        let kind =
            ["sigkill", "after-commit", "before-commit", "tunnel-cut"][rng.below(4) as usize];
        *kinds.entry(kind).or_default() += 1;
        let failpoint = match kind {
            "after-commit" => Some(format!("sync-after-commit@{}", 1 + rng.below(3))),
            "before-commit" => Some(format!("sync-before-commit@{}", 1 + rng.below(3))),
            _ => None,
        };
        let mut s = Service::start(&cfg, api, failpoint);
        let writes = 1 + rng.below(15);
        let kill_after = rng.below(writes + 1);
        for i in 0..writes {
            if kind == "sigkill" && i == kill_after {
                s.kill();
                break;
            }
            if kind == "tunnel-cut" && i == kill_after {
                sshd.signal_sessions(nix::sys::signal::Signal::SIGKILL);
            }
            if let Some(id) = say(
                &client,
                &s.api,
                &conv,
                &format!("round {round} message {i}"),
            ) {
                acked.push(id);
            }
        }
        match kind {
            // Dies by itself at its failpoint, or is killed if it never got there.
            "after-commit" | "before-commit" => {
                if s.exited_within(Duration::from_millis(1500)) {
                    aborted += 1;
                } else {
                    s.kill();
                }
            }
            "sigkill" => {
                std::thread::sleep(Duration::from_millis(rng.below(100)));
                s.kill();
            }
            _ => {
                std::thread::sleep(Duration::from_millis(rng.below(300)));
                s.kill();
            }
        }
    }

    // Calm weather: the service runs until nothing is pending.
    let s = Service::start(&cfg, api, None);
    let out = Command::new(bin())
        .args([
            "sync",
            "--wait",
            "--timeout",
            "60s",
            "--api",
            &format!("127.0.0.1:{api}"),
        ])
        .output()
        .expect("sync --wait");
    assert!(
        out.status.success(),
        "sync --wait: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(s);

    let local = local_messages(&cfg);
    let (remote, remote_rows) = primary_messages(primary.port);
    eprintln!(
        "{ROUNDS} rounds {kinds:?}, {aborted} aborted at their failpoint: {} acknowledged, {} local, {} on the primary",
        acked.len(),
        local.len(),
        remote_rows
    );
    assert!(
        aborted >= ROUNDS / 10,
        "only {aborted} rounds died at a failpoint: the campaign missed the sync"
    );
    assert_eq!(remote_rows, remote.len(), "an id twice on the primary");
    for id in &acked {
        assert!(
            local.contains_key(id),
            "acknowledged message {id} lost locally"
        );
        assert!(
            remote.contains_key(id),
            "acknowledged message {id} never reached the primary"
        );
    }
    assert_eq!(
        local, remote,
        "the same messages with the same contents on both sides"
    );
    assert!(
        acked.len() >= ROUNDS,
        "the campaign wrote too little to mean anything: {}",
        acked.len()
    );
}

fn sync_wait(api: u16) {
    let out = Command::new(bin())
        .args(["sync", "--wait", "--timeout", "60s", "--api"])
        .arg(format!("127.0.0.1:{api}"))
        .output()
        .expect("sync --wait");
    assert!(
        out.status.success(),
        "sync --wait: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn primary_conversations(port: u16) -> BTreeMap<String, (String, bool)> {
    let (ok, out, err) = psql(
        port,
        "SELECT id::text || '|' || archived::text || '|' || title FROM robbie.conversations",
    );
    assert!(ok, "{err}");
    out.lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, '|');
            let id = p.next()?.to_string();
            let archived = p.next()? == "true";
            Some((id, (p.next()?.to_string(), archived)))
        })
        .collect()
}

/// One device of the two-device campaign.
struct Device {
    node: &'static str,
    sshd: Sshd,
    conv: String,
}

/// Two devices (a laptop and a desktop) write through their APIs while both sync
/// with one primary through their own tunnels; both are killed at random moments
/// (SIGKILL, aborts right before and after the primary's commit), their tunnels
/// are cut, the primary restarts fast, the batch size varies from 1 to 2000 — and
/// the primary's transaction ids cross 1000 and 10 000 during the campaign. At the
/// end every acknowledged message is on the primary and on both devices, with the
/// same contents, no id twice, and the same titles and archive flags everywhere.
#[test]
fn two_devices_crash_campaign_each_ends_with_every_row() {
    const ROUNDS: usize = 100;
    let mut primary = Postgres::primary();
    migrate(&bin(), &primary.url());
    // A fresh primary starts near id 730: start the campaign just below 1000.
    burn_xids_to(primary.port, 960);
    let xid_start = next_xid(primary.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = mesh_tests::blocking_http_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let seed = std::env::var("MESH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("two-device campaign seed {seed} (MESH_CRASH_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let config = |d: &Device, batch: u64, primary: &Postgres| {
        node_syncing_to(
            d.node,
            primary,
            &d.sshd,
            dir.path(),
            &format!("{}.db", d.node),
            "probe = { local_interval = \"100ms\", remote_interval = \"100ms\" }\n",
            &format!(
                "interval = \"200ms\"\nretry = \"100ms\"\nbatch = {batch}\ntimeout = \"3s\"\n"
            ),
        )
    };
    let mut devices = [
        Device {
            node: "robbiebook1",
            sshd: Sshd::start(),
            conv: String::new(),
        },
        Device {
            node: "vengeance",
            sshd: Sshd::start(),
            conv: String::new(),
        },
    ];
    // Each device starts a conversation of its own; both end up knowing both.
    for d in devices.iter_mut() {
        let (cfg, api) = config(d, 50, &primary);
        let s = Service::start(&cfg, api, None);
        let c: Conversation = client
            .post(format!("{}/v1/conversations", s.api))
            .json(&NewConversation {
                title: format!("started on {}", d.node),
            })
            .send()
            .expect("create")
            .json()
            .expect("a conversation");
        d.conv = c.id;
        sync_wait(api);
    }
    let convs = [devices[0].conv.clone(), devices[1].conv.clone()];

    let mut acked: Vec<String> = Vec::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut restarts = 0;
    let (mut xid_half, mut xid_mid) = (0, 0);
    let mut running: [Option<(Service, &str)>; 2] = [None, None];
    for round in 0..ROUNDS {
        if round == ROUNDS / 2 {
            // Halfway: just below 10 000.
            xid_half = next_xid(primary.port);
            burn_xids_to(primary.port, 9_960);
            xid_mid = next_xid(primary.port);
        }
        // Each device is restarted now and then (with another batch size and fault),
        // and stays down once it died: the other writes on, so the one that comes
        // back has a backlog to pull, across whatever ids the primary reached.
        for (k, d) in devices.iter().enumerate() {
            let dead = running[k].as_mut().is_none_or(|(s, _)| s.has_exited());
            if !(dead && rng.below(2) == 0 || rng.below(4) == 0) {
                continue;
            }
            if let Some((mut s, _)) = running[k].take() {
                s.kill();
            }
            let batch = [1, 2, 3, 7, 50, 2000][rng.below(6) as usize];
            let kind = [
                "sigkill",
                "after-commit",
                "before-commit",
                "tunnel-cut",
                "calm",
            ][rng.below(5) as usize];
            *kinds.entry(kind).or_default() += 1;
            let failpoint = match kind {
                "after-commit" => Some(format!("sync-after-commit@{}", 1 + rng.below(3))),
                "before-commit" => Some(format!("sync-before-commit@{}", 1 + rng.below(3))),
                _ => None,
            };
            let (cfg, api) = config(d, batch, &primary);
            running[k] = Some((Service::start(&cfg, api, failpoint), kind));
        }
        let restart_at = (rng.below(4) == 0).then(|| rng.below(10));
        let writes = 1 + rng.below(12);
        let kill_at = [rng.below(3 * writes + 1), rng.below(3 * writes + 1)];
        for i in 0..writes {
            if restart_at == Some(i) {
                primary.stop();
                primary.start();
                restarts += 1;
            }
            for (k, d) in devices.iter().enumerate() {
                let Some((s, kind)) = running[k].as_mut() else {
                    continue;
                };
                if i == kill_at[k] {
                    match *kind {
                        "sigkill" => s.kill(),
                        "tunnel-cut" => {
                            d.sshd.signal_sessions(nix::sys::signal::Signal::SIGKILL);
                        }
                        _ => {}
                    }
                }
                // Mostly its own conversation; sometimes the other's.
                let conv = &convs[if rng.below(4) == 0 { 1 - k } else { k }];
                if let Some(id) = say(
                    &client,
                    &s.api,
                    conv,
                    &format!("round {round} {} {i}", d.node),
                ) {
                    acked.push(id);
                }
                if rng.below(8) == 0 {
                    let patch = if rng.below(2) == 0 {
                        json!({"title": format!("renamed on {} in round {round}", d.node)})
                    } else {
                        json!({"archived": rng.below(2) == 0})
                    };
                    let _ = client
                        .patch(format!("{}/v1/conversations/{conv}", s.api))
                        .json(&patch)
                        .send();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(200)));
    }
    for (mut s, _) in running.into_iter().flatten() {
        s.kill();
    }
    let xid_end = next_xid(primary.port);

    // Calm weather: both run until nothing is pending; twice, so that each has
    // pulled what the other pushed last.
    let services: Vec<(Service, u16, PathBuf)> = devices
        .iter()
        .map(|d| {
            let (cfg, api) = config(d, 2000, &primary);
            (Service::start(&cfg, api, None), api, cfg)
        })
        .collect();
    for _ in 0..2 {
        for (_, api, _) in &services {
            sync_wait(*api);
        }
    }
    let cfgs: Vec<PathBuf> = services.iter().map(|s| s.2.clone()).collect();
    drop(services);

    let (remote, remote_rows) = primary_messages(primary.port);
    let remote_convs = primary_conversations(primary.port);
    let locals: Vec<_> = cfgs.iter().map(|c| local_rows(c)).collect();
    eprintln!(
        "{ROUNDS} rounds × 2 devices {kinds:?}, {restarts} primary restarts; transaction ids {xid_start} → {xid_half}, {xid_mid} → {xid_end}; \
         {} acknowledged; on the primary {remote_rows}; robbiebook1 {}, vengeance {}",
        acked.len(),
        locals[0].1.len(),
        locals[1].1.len()
    );
    assert!(
        xid_start < 1000 && xid_half > 1000 && xid_mid < 10_000 && xid_end > 10_000,
        "the campaign must cross 1000 and 10 000: {xid_start} → {xid_half}, {xid_mid} → {xid_end}"
    );
    assert_eq!(remote_rows, remote.len(), "an id twice on the primary");
    for (i, (convs_here, msgs)) in locals.iter().enumerate() {
        let node = devices[i].node;
        let missing: Vec<&String> = acked.iter().filter(|id| !msgs.contains_key(*id)).collect();
        assert!(
            missing.is_empty(),
            "{node} lacks {} acknowledged messages, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        assert_eq!(
            msgs, &remote,
            "{node} and the primary hold the same messages"
        );
        assert_eq!(
            convs_here, &remote_convs,
            "{node}'s titles and archive flags are the primary's"
        );
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !remote.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages never reached the primary",
        missing.len()
    );
    assert!(
        acked.len() >= ROUNDS * 4,
        "the campaign wrote too little: {}",
        acked.len()
    );
}
