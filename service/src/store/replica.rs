//! The desktop's streaming replica of the primary: `robbie-mesh db replica init`
//! bootstraps it through the tunnel (`pg_basebackup` with a replication slot, its
//! `primary_conninfo` pointing at the tunnel's local end, so it streams through
//! the mesh and reconnects by itself after an outage), and a watcher reports its
//! state and lag — bytes behind what the primary last sent, and seconds since the
//! last replayed commit while it is behind — in `GET /v1/status`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ReplicaConfig, ServiceKind};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Receiving the primary's WAL.
    Streaming,
    /// Serving reads, catching up once the primary is reachable.
    Disconnected,
    /// The standby does not answer (or its state cannot be read).
    #[default]
    Down,
    /// Promoted, or the address is the primary's.
    #[serde(rename = "not a standby")]
    NotAStandby,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ReplicaStatus {
    pub address: String,
    pub state: ReplicaState,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub replay_lsn: Option<String>,
    pub error: Option<String>,
    /// [`ReplicaStatus::summary`], for the dashboard.
    pub summary: String,
}

impl ReplicaStatus {
    /// One line for `robbie-mesh status` and the dashboard.
    pub fn summary(&self) -> String {
        let error = self.error.as_deref().unwrap_or("no answer");
        match self.state {
            ReplicaState::Streaming => format!(
                "streaming, {} bytes / {:.1} s behind",
                self.lag_bytes.unwrap_or(0),
                self.lag_seconds.unwrap_or(0.0)
            ),
            ReplicaState::Disconnected => {
                "disconnected from the primary: serving reads, catches up when the tunnel is back"
                    .into()
            }
            ReplicaState::NotAStandby => {
                "not a standby (promoted, or the address is the primary's)".into()
            }
            ReplicaState::Down => format!("down: {error}"),
        }
    }
}

/// Watches the standby every 2 s.
pub fn watch(
    cfg: ReplicaConfig,
    tracker: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) -> watch::Receiver<Option<ReplicaStatus>> {
    let (tx, rx) = watch::channel::<Option<ReplicaStatus>>(None);
    tracker.spawn(async move {
        loop {
            let st = check(&cfg).await;
            if tx.borrow().as_ref().map(|s| &s.state) != Some(&st.state) {
                tracing::info!("replica at {}: {}", cfg.address, st.summary);
            }
            tx.send_replace(Some(st));
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
    rx
}

pub async fn check(cfg: &ReplicaConfig) -> ReplicaStatus {
    let mut st = ReplicaStatus {
        address: cfg.address.to_string(),
        ..Default::default()
    };
    let mut pg = tokio_postgres::Config::new();
    pg.host(cfg.address.ip().to_string())
        .port(cfg.address.port())
        .user(&cfg.user)
        .dbname(&cfg.database)
        .application_name("robbie-mesh replica watch")
        .connect_timeout(Duration::from_secs(2));
    let client = match pg.connect(tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => {
            st.state = ReplicaState::Down;
            st.error = Some(crate::util::pg_error(&e));
            st.summary = st.summary();
            return st;
        }
    };
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
               (SELECT status FROM pg_stat_wal_receiver), \
               pg_last_wal_replay_lsn()::text, \
               (SELECT greatest(pg_wal_lsn_diff(latest_end_lsn, pg_last_wal_replay_lsn()), 0)::int8 FROM pg_stat_wal_receiver), \
               CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8 \
                    ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END",
            &[],
        )
        .await;
    match row {
        Ok(r) => {
            let standby: bool = r.get(0);
            let receiver: Option<String> = r.get(1);
            st.replay_lsn = r.get(2);
            st.lag_bytes = r.get(3);
            st.lag_seconds = r.get(4);
            st.state = match (standby, receiver.as_deref()) {
                (false, _) => ReplicaState::NotAStandby,
                (true, Some("streaming")) => ReplicaState::Streaming,
                (true, _) => ReplicaState::Disconnected,
            };
        }
        Err(e) => {
            st.state = ReplicaState::Down;
            st.error = Some(format!(
                "cannot read its state: {}",
                crate::util::pg_error(&e)
            ));
        }
    }
    st.summary = st.summary();
    st
}

/// `db replica init --from NODE`: a base backup of NODE's primary through the
/// tunnel the config's postgres service uses to reach it, with progress.
pub fn init(
    cfg: &Config,
    from: &str,
    data_dir: &Path,
    user: &str,
    slot: Option<&str>,
) -> anyhow::Result<()> {
    let candidate = cfg
        .services
        .iter()
        .filter(|s| s.kind == ServiceKind::Postgres)
        .flat_map(|s| s.candidates.iter())
        .find(|c| c.node == from)
        .ok_or_else(|| anyhow::anyhow!("no postgres service in the config lists node `{from}` as a candidate; add its tunnel first"))?;
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        anyhow::bail!(
            "{} exists and is not empty; remove it or choose another --data-dir",
            data_dir.display()
        );
    }
    let slot = slot.map_or_else(
        || format!("robbie_{}", cfg.node.replace('-', "_")),
        str::to_string,
    );
    let bin = pg_bin("pg_basebackup")?;
    let (host, port) = (
        candidate.address.host.clone(),
        candidate.address.port.to_string(),
    );
    eprintln!(
        "base backup of {from}'s primary through {host}:{port} into {} (slot {slot})",
        data_dir.display()
    );
    let run = |create_slot: bool| -> anyhow::Result<(bool, bool)> {
        let mut c = Command::new(&bin);
        c.args(["-h", &host, "-p", &port, "-U", user, "-D"])
            .arg(data_dir)
            .args(["-R", "-X", "stream", "-S", &slot, "--progress", "--verbose"])
            .stderr(Stdio::piped());
        if create_slot {
            c.arg("-C");
        }
        let mut child = c
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {e}", bin.display()))?;
        let mut slot_exists = false;
        if let Some(err) = child.stderr.take() {
            // pg_basebackup's progress lines end in \r: pass them through as they come.
            for line in BufReader::new(err).split(b'\r') {
                let line = String::from_utf8_lossy(&line.unwrap_or_default()).to_string();
                slot_exists |= line.contains("already exists");
                eprint!("{line}\r");
            }
        }
        eprintln!();
        Ok((child.wait()?.success(), slot_exists))
    };
    let (ok, slot_exists) = run(true)?;
    let ok = if !ok && slot_exists {
        eprintln!("slot {slot} exists on the primary: reusing it");
        let _ = std::fs::remove_dir_all(data_dir);
        run(false)?.0
    } else {
        ok
    };
    if !ok {
        anyhow::bail!(
            "pg_basebackup failed (above). The primary needs `wal_level = replica`, free `max_wal_senders` and `max_replication_slots`, \
             and a pg_hba.conf line allowing replication for `{user}` from 127.0.0.1 (see the README)"
        );
    }
    eprintln!(
        "done: {} is a standby that streams from {from} through the tunnel. Start it on this node's own port (e.g. `pg_ctl -D {} -o \"-p 5433\" start`), \
         and name it in [store.replica] to see its lag in `robbie-mesh status`",
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}

/// A PostgreSQL client program: on PATH, else Debian's versioned directory.
fn pg_bin(name: &str) -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists())
    {
        return Ok(p);
    }
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| {
        anyhow::anyhow!(
            "{name} not found: install PostgreSQL's client programs (Debian: postgresql-client)"
        )
    })
}
