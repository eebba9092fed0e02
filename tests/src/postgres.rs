//! Real PostgreSQL servers for tests: a primary made by `initdb` and streaming
//! replicas made by `pg_basebackup -R`, in temp dirs owned by the `postgres` user
//! (PostgreSQL refuses to run as root), on free loopback ports, stopped on drop.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::sshd::Sshd;
use crate::{free_port, peer_toml, trust, wait_for, DEADLINE};

/// The directory of the installed PostgreSQL binaries (Debian layout).
pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL server binaries under /usr/lib/postgresql (tests/setup.sh installs them)",
    )
}

fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .expect("id");
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("postgres user");
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .expect("id");
    let gid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("postgres group");
    (uid, gid)
}

/// `cmd` run as the postgres user (via setpriv when we are root).
/// `program` run as the `postgres` user (when we are root; as ourselves otherwise).
pub fn as_postgres(program: &Path) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn check(out: std::io::Result<Output>, what: &str) {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Postgres {
    pub port: u16,
    _dir: tempfile::TempDir,
    data: PathBuf,
    child: Option<Child>,
}

impl Postgres {
    /// A temp dir the `postgres` user owns, and the data directory path inside it.
    pub fn new_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (uid, gid) = postgres_ids();
        if nix::unistd::Uid::effective().is_root() {
            chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        (dir, data)
    }

    /// A fresh primary (trust authentication on loopback, replication allowed).
    pub fn primary() -> Postgres {
        Postgres::primary_on(free_port())
    }

    /// The same on a given port (a new cluster in place of a stopped one).
    pub fn primary_on(port: u16) -> Postgres {
        let (dir, data) = Postgres::new_dir();
        let bin = bin_dir();
        check(
            as_postgres(&bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data)
                .output(),
            "initdb",
        );
        let mut pg = Postgres {
            port,
            _dir: dir,
            data,
            child: None,
        };
        pg.configure("wal_level = replica\nmax_wal_senders = 5\n");
        pg.start();
        pg
    }

    /// A streaming replica of `primary`, made with `pg_basebackup -R`.
    pub fn replica_of(primary: &Postgres) -> Postgres {
        let (dir, data) = Postgres::new_dir();
        let bin = bin_dir();
        check(
            as_postgres(&bin.join("pg_basebackup"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data)
                .output(),
            "pg_basebackup",
        );
        let mut pg = Postgres {
            port: free_port(),
            _dir: dir,
            data,
            child: None,
        };
        pg.configure("hot_standby = on\n");
        pg.start();
        pg
    }

    /// Starts the standby that `db replica init` made in `data` (inside `dir`), on `port`.
    pub fn standby(dir: tempfile::TempDir, data: PathBuf, port: u16) -> Postgres {
        let mut pg = Postgres {
            port,
            _dir: dir,
            data,
            child: None,
        };
        pg.configure("hot_standby = on\n");
        pg.start();
        pg
    }

    fn configure(&mut self, extra: &str) {
        let sock = self.data.parent().expect("dir").display().to_string();
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\nfsync = off\n{extra}",
            self.port
        );
        let path = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&path, text).expect("write postgresql.conf");
    }

    /// Its `postgres` database as a URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start(&mut self) {
        let log = std::fs::File::create(self.data.parent().expect("dir").join("postgres.log"))
            .expect("log");
        let child = as_postgres(&bin_dir().join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        let port = self.port;
        let bin = bin_dir();
        wait_for(
            DEADLINE,
            || {
                Command::new(bin.join("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                    .status()
                    .is_ok_and(|s| s.success())
            },
            || format!("postgres on {port} did not start: {}", self.log()),
        );
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.parent().expect("dir").join("postgres.log"))
            .unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The arguments that point a PostgreSQL client (psql, pg_dump) at database `db`
/// of the server on 127.0.0.1:`port`, as `postgres`.
pub fn client_args(port: u16, db: &str) -> [String; 8] {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        db,
    ]
    .map(String::from)
}

/// `robbie-mesh db migrate --url URL` with the binary `bin`, which must succeed; its
/// output.
pub fn migrate(bin: &Path, url: &str) -> String {
    let out = Command::new(bin)
        .args(["db", "migrate", "--url", url])
        .output()
        .expect("db migrate");
    assert!(
        out.status.success(),
        "db migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Uses up transaction ids until the primary's next one is at least `next` (each
/// a committed transaction of its own), as a busy primary would have.
pub fn burn_xids_to(port: u16, next: u64) {
    let (ok, out, err) = psql(
        port,
        &format!(
            "DO $$ BEGIN WHILE pg_snapshot_xmax(pg_current_snapshot())::text::int8 < {next} LOOP \
             PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$"
        ),
    );
    assert!(ok, "burning transaction ids: {err}{out}");
}

/// The primary's next transaction id.
pub fn next_xid(port: u16) -> u64 {
    let (ok, out, err) = psql(port, "SELECT pg_snapshot_xmax(pg_current_snapshot())");
    assert!(ok, "{err}");
    out.trim().parse().expect("a number")
}

/// `psql -Atc SQL` against 127.0.0.1:`port`: (success, stdout, stderr).
pub fn psql(port: u16, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t"])
        .args(client_args(port, "postgres"))
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("psql (postgresql-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// robbiebook1's config, written to `dir/book.toml`: its store (`dir/<store>`)
/// syncs with aurora's PostgreSQL (`primary`, behind `sshd`) through a tunnel and
/// the `postgres` endpoint. `service_extra` and `sync_extra` are more lines for the
/// service and `[store.sync]`. Returns the file and the API port.
pub fn book_syncing_to(
    primary: &Postgres,
    sshd: &Sshd,
    dir: &Path,
    store: &str,
    service_extra: &str,
    sync_extra: &str,
) -> (PathBuf, u16) {
    node_syncing_to(
        "robbiebook1",
        primary,
        sshd,
        dir,
        store,
        service_extra,
        sync_extra,
    )
}

/// The same for any node: `dir/<node>.toml`.
pub fn node_syncing_to(
    node: &str,
    primary: &Postgres,
    sshd: &Sshd,
    dir: &Path,
    store: &str,
    service_extra: &str,
    sync_extra: &str,
) -> (PathBuf, u16) {
    let (api, endpoint, tunnel) = (free_port(), free_port(), free_port());
    let fwd = format!(
        "[[peer.forward]]\nname = \"aurora-postgres\"\nlocal = \"127.0.0.1:{tunnel}\"\nremote = \"127.0.0.1:{}\"\n",
        primary.port
    );
    let text = format!(
        "node = \"{node}\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n{}\n\
         [[service]]\nname = \"postgres\"\nkind = \"postgres\"\nlisten = \"127.0.0.1:{endpoint}\"\n\
         candidates = [{{ node = \"aurora\", tunnel = \"aurora-postgres\" }}]\n{service_extra}\
         [store]\npath = \"{}\"\n[store.sync]\nservice = \"postgres\"\ndatabase = \"postgres\"\nuser = \"postgres\"\n{sync_extra}",
        peer_toml("aurora", sshd, &trust(sshd), &fwd),
        dir.join(store).display()
    );
    let path = dir.join(if node == "robbiebook1" {
        "book.toml".to_string()
    } else {
        format!("{node}.toml")
    });
    std::fs::write(&path, text).expect("config");
    (path, api)
}
