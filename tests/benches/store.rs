//! Store benchmark, in one run against a real PostgreSQL primary through a real
//! `sshd` tunnel, with the release service binary:
//!
//! - local append latency through the API (each append durable: SQLite WAL with
//!   `synchronous=FULL`, one transaction with its outbox row), p50/p99;
//! - push throughput: 100 000 messages queued offline, then pushed (rows/s);
//! - incremental sync of 1 000 new rows into a 100 000-row database, against the
//!   seed's `pg_dump | psql` copy of the same data, pull and push directions.
//!
//!     bash tests/bench.sh        (or: cargo build --release -p robbie-mesh && cargo bench -p mesh-tests --bench store)

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::postgres::{bin_dir, book_syncing_to, client_args, migrate, psql, Postgres};
use mesh_tests::release_bin;
use mesh_tests::sshd::Sshd;
use robbie_mesh::api::wire::{
    Conversation, NewConversation, NewMessage, Status, SyncState, SyncStatus, VerifyReport,
    VerifyRequest,
};

const APPENDS: usize = 2_000;
const QUEUED: usize = 100_000;
const NEW: usize = 1_000;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p) as usize)
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// `n` messages from `device` straight into a store file, with their outbox rows,
/// in one transaction (what `n` offline appends leave behind, made fast).
fn queue_offline(path: &std::path::Path, node: &str, conv: &str, n: usize, tag: &str) {
    let store = robbie_mesh::store::Store::open(path, node).expect("open store");
    store
        .with_blocking(|c| {
            let tx = c.transaction()?;
            {
                let mut m = tx.prepare(
                    "INSERT INTO messages (id, conversation_id, role, content, model, node, created_at) VALUES (?1, ?2, 'user', ?3, NULL, ?4, ?5)",
                )?;
                let mut o = tx.prepare("INSERT INTO outbox (kind, row_id) VALUES ('m', ?1)")?;
                for i in 0..n {
                    let id = uuid_v7();
                    m.execute((&id, conv, format!("{tag} message {i}: a typical short chat line"), node, i as i64))?;
                    o.execute([&id])?;
                }
            }
            tx.commit()
        })
        .expect("queue");
}

fn uuid_v7() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64;
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
        ms >> 16,
        ms & 0xffff,
        (n >> 48) & 0xfff,
        (n >> 36) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

struct Node {
    _proc: Proc,
    api: String,
    client: reqwest::blocking::Client,
}

impl Node {
    fn start(cfg: &std::path::Path, api_port: u16) -> Node {
        let child = Command::new(release_bin())
            .env("ROBBIE_MESH_TOKEN", mesh_tests::token())
            .args(["run", "--config"])
            .arg(cfg)
            .env("ROBBIE_MESH_LOG", "error")
            .stderr(Stdio::null())
            .spawn()
            .expect("robbie-mesh");
        mesh_tests::wait_listening(api_port, "the API");
        Node {
            _proc: Proc(child),
            api: format!("http://127.0.0.1:{api_port}"),
            client: mesh_tests::blocking_http_builder().build().expect("client"),
        }
    }

    fn sync_state(&self) -> SyncStatus {
        let st: Status = self
            .client
            .get(format!("{}/v1/status", self.api))
            .send()
            .expect("status")
            .json()
            .expect("the status");
        st.store.sync
    }

    /// Asks for a round and times it until `done(sync status)` and nothing is pending.
    /// `done` sees the rows pushed and pulled since the round was asked for.
    fn sync_round(&self, what: &str, done: impl Fn(&SyncStatus) -> bool) -> Duration {
        let base = self.sync_state();
        let (pushed0, pulled0) = (base.pushed, base.pulled);
        let t = Instant::now();
        self.client
            .post(format!("{}/v1/sync", self.api))
            .send()
            .expect("kick");
        loop {
            let mut s = self.sync_state();
            s.pushed -= pushed0;
            s.pulled -= pulled0;
            // The round is over: another last_sync, and idle.
            if done(&s)
                && s.pending == 0
                && s.state == SyncState::Idle
                && s.last_sync != base.last_sync
            {
                return t.elapsed();
            }
            assert!(t.elapsed() < Duration::from_secs(300), "{what}: {s:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until nothing is pending and a round finished after `since`.
    fn wait_synced(&self, what: &str) {
        let since = std::time::SystemTime::now() - Duration::from_millis(1);
        let end = Instant::now() + Duration::from_secs(300);
        loop {
            let s = self.sync_state();
            // The API's times are whole milliseconds.
            if s.pending == 0
                && s.state == SyncState::Idle
                && s.last_sync
                    .is_some_and(|t| t + Duration::from_millis(1) >= since)
            {
                return;
            }
            assert!(Instant::now() < end, "{what}: never in sync: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn main() {
    let primary = Postgres::primary();
    migrate(&release_bin(), &primary.url());
    let sshd = Sshd::start();
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir on disk");
    let store_path = dir.path().join("book.db");
    let (cfg, api) = book_syncing_to(&primary, &sshd, dir.path(), "book.db", "", "");

    println!("robbie-mesh store benchmark (store on ext4: local writes synchronous=FULL, pulled pages NORMAL; the harness's primary runs with fsync=off)");
    println!();
    // 1. Appends through the API, each durable before it is answered.
    let node = Node::start(&cfg, api);
    let conv: Conversation = node
        .client
        .post(format!("{}/v1/conversations", node.api))
        .json(&NewConversation {
            title: "bench".into(),
        })
        .send()
        .expect("create")
        .json()
        .expect("a conversation");
    let conv = conv.id;
    let mut lat = Vec::with_capacity(APPENDS);
    for i in 0..APPENDS {
        let t = Instant::now();
        let r = node
            .client
            .post(format!("{}/v1/conversations/{conv}/messages", node.api))
            .json(&NewMessage {
                role: "user".into(),
                content: format!("append {i}: a typical short chat line"),
                model: None,
            })
            .send()
            .expect("append");
        assert_eq!(r.status(), 201);
        lat.push(t.elapsed());
    }
    lat.sort();
    println!("local append through the API ({APPENDS}, sync running): p50 {}, p99 {}   (goal p50 <= 1 ms, p99 <= 5 ms)", ms(pct(&lat, 0.5)), ms(pct(&lat, 0.99)));
    node.wait_synced("appends pushed");
    drop(node);

    // 2. 100 000 rows queued while the primary was out of reach (written into the
    // store file beside the running service), then one sync round pushes them.
    let node = Node::start(&cfg, api);
    node.wait_synced("started");
    queue_offline(&store_path, "robbiebook1", &conv, QUEUED, "queued");
    let push = node.sync_round("100k pushed", |s| s.pushed >= QUEUED as u64);
    let on_primary: usize = psql(primary.port, "SELECT count(*) FROM robbie.messages")
        .1
        .parse()
        .expect("count");
    assert_eq!(on_primary, APPENDS + QUEUED, "every row on the primary");
    println!(
        "push of {QUEUED} queued messages through the tunnel: {:.2} s = {:.0} rows/s   (goal >= 20000 rows/s)",
        push.as_secs_f64(),
        QUEUED as f64 / push.as_secs_f64()
    );

    // 3. Incremental sync, `MESH_STORE_RUNS` times (default 3) in a row: 1 000 rows
    // written on aurora come down into the 100k-row store (pull), 1 000 rows written
    // here go up (push), each against the seed's way — the whole database through
    // `pg_dump | psql` into a fresh copy — timed in the same run.
    let runs: usize = mesh_tests::env_or("MESH_STORE_RUNS", 3);
    for run in 1..=runs {
        let insert = format!(
            "INSERT INTO robbie.messages (id, conversation_id, role, content, node, created_at, device) \
             SELECT gen_random_uuid(), '{conv}', 'assistant', 'from aurora ' || g, 'aurora', g, 'aurora-device' FROM generate_series(1, {NEW}) g"
        );
        assert!(psql(primary.port, &insert).0);
        let pull = node.sync_round("1000 pulled", |s| s.pulled >= NEW as u64);
        queue_offline(&store_path, "robbiebook1", &conv, NEW, &format!("new{run}"));
        let push_new = node.sync_round("1000 pushed", |s| s.pushed >= NEW as u64);
        let bin = bin_dir();
        let t = Instant::now();
        assert!(psql(primary.port, "DROP DATABASE IF EXISTS seedcopy").0);
        assert!(psql(primary.port, "CREATE DATABASE seedcopy").0);
        let mut dump = Command::new(bin.join("pg_dump"))
            .args(client_args(primary.port, "postgres"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("pg_dump");
        let restore = Command::new("psql")
            .args(["-X", "-q"])
            .args(client_args(primary.port, "seedcopy"))
            .stdin(dump.stdout.take().expect("pipe"))
            .stdout(Stdio::null())
            .status()
            .expect("psql");
        assert!(
            restore.success() && dump.wait().is_ok_and(|s| s.success()),
            "pg_dump | psql failed"
        );
        let seed = t.elapsed();
        let copied: usize = psql(primary.port, "SELECT count(*) FROM robbie.messages")
            .1
            .parse()
            .unwrap_or(0);
        println!(
            "run {run}: incremental sync of {NEW} new rows into a {}-row database: pull {} ({:.0}x faster), push {} ({:.0}x faster) vs pg_dump | psql {}   (goal >= 20x)",
            copied - NEW,
            ms(pull),
            seed.as_secs_f64() / pull.as_secs_f64(),
            ms(push_new),
            seed.as_secs_f64() / push_new.as_secs_f64(),
            ms(seed)
        );
    }

    // 4. `sync --verify` over the whole store, both directions.
    let t = Instant::now();
    let report: VerifyReport = node
        .client
        .post(format!("{}/v1/sync/verify", node.api))
        .timeout(Duration::from_secs(300))
        .json(&VerifyRequest::default())
        .send()
        .expect("verify")
        .json()
        .expect("a report");
    let took = t.elapsed();
    assert_eq!(report.missing_on_primary.count, 0, "{report:?}");
    assert_eq!(report.missing_here.count, 0, "{report:?}");
    println!(
        "sync --verify of {} messages here against {} on the primary: {:.2} s (of which the comparison {} ms)   (goal: seconds)",
        report.messages.here,
        report.messages.primary,
        took.as_secs_f64(),
        report.elapsed_ms
    );
}
