//! Sync between this node's SQLite store and the PostgreSQL primary, reached through
//! the mesh's PostgreSQL endpoint (so it follows the route like any client).
//!
//! - Push: the outbox in batches (capped by rows and by bytes); each batch's rows
//!   and the device's `acked_seq` (with the tag of its last row) commit in one
//!   PostgreSQL transaction, only if the primary's `acked_seq` is still the one
//!   this file knows; the outbox rows are deleted only after that commit. A row the
//!   primary refuses is found by halving the batch and set aside with the reason;
//!   the rest keeps syncing, and a failed push never keeps the pull from running.
//! - Pull: per table, a cursor on `(xid, change_id)`, compared as `xid8` values,
//!   fenced below the oldest transaction still running, pages capped by rows and
//!   bytes (see `primary::pull_page`).
//! - After every connect, the device reconciles with the primary (`reconcile`): a
//!   crash between the commit and the local delete is recognised by the tag; a
//!   replaced or restored primary (another database, another timeline, an
//!   acknowledgement that went backwards, transaction ids behind the cursor) makes
//!   the device pull everything and push every local row again; a store file that
//!   is behind what the primary acknowledged for its device id (restored from a
//!   backup, or copied) becomes a new device.
//! - The session cannot hang: statement, lock and idle-in-transaction timeouts on
//!   the server, TCP keepalive, and a deadline on every call here.
//!
//! This file: the task, its status and its handle, one round; `session.rs`:
//! connecting and reconciling; `transfer.rs`: push and pull.
//!
//! Longer than most files on purpose: the task's loop, its status and one round
//! belong together; connecting and the transfers are in `session.rs` and
//! `transfer.rs`.

mod session;
mod transfer;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

pub use super::outbox::Rejected;
use super::primary::{self, ServerInfo};
pub use super::primary::{migrate, SyncError, PG_SCHEMA_VERSION};
use super::verify::{self, VerifyReport};
use super::Store;
use crate::config::SyncConfig;
use crate::events::{EventBus, EventKind};

/// The most bytes of row data in one pushed batch or one pulled page (a batch
/// always holds at least one row). PostgreSQL refuses a message over 1 GiB; a
/// slow link must carry a batch well within the call deadline.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// A pull held back by one old transaction longer than this is reported.
const HELD_BACK_AFTER: Duration = Duration::from_secs(60);

/// The same warning is not logged again within this.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the sync task is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// No `[store.sync]` configured (or no store).
    #[default]
    Off,
    Idle,
    Syncing,
    /// The primary cannot be reached (or only a read-only replica can).
    Waiting,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Off => "off",
            SyncState::Idle => "idle",
            SyncState::Syncing => "syncing",
            SyncState::Waiting => "waiting",
        }
    }
}

/// What the sync task is doing, for `/v1/status` and `robbie-mesh status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncStatus {
    pub state: SyncState,
    pub device: String,
    /// Rows written here and not yet acknowledged by the primary.
    pub pending: u64,
    #[serde(
        serialize_with = "crate::util::ser_opt_time",
        deserialize_with = "crate::util::de_opt_time"
    )]
    pub last_sync: Option<SystemTime>,
    pub last_error: Option<String>,
    pub pushed: u64,
    pub pulled: u64,
    /// Rows the primary refused, kept here with the reason (the newest ten).
    pub rejected: u64,
    pub rejected_rows: Vec<Rejected>,
    /// The last time sync had to start over, and why (a replaced primary, a
    /// restored store file).
    pub notice: Option<String>,
    /// Why pulled rows wait (an old transaction on the primary holds them back).
    pub held_back: Option<String>,
}

type VerifyRequest = (bool, oneshot::Sender<Result<VerifyReport, String>>);

/// The sync task's handle: its status, and a way to ask for a round now.
#[derive(Clone)]
pub struct SyncHandle {
    pub status: watch::Receiver<SyncStatus>,
    kick: Arc<Notify>,
    verify: Option<mpsc::Sender<VerifyRequest>>,
}

impl SyncHandle {
    /// The handle of a store that could not be opened.
    pub fn off() -> SyncHandle {
        let (_, rx) = watch::channel(SyncStatus {
            state: SyncState::Off,
            ..Default::default()
        });
        SyncHandle {
            status: rx,
            kick: Arc::new(Notify::new()),
            verify: None,
        }
    }

    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Compares this device with the primary (and repairs what differs when
    /// `repair`): runs in the sync task, on its connection.
    pub async fn verify(&self, repair: bool) -> Result<VerifyReport, String> {
        let Some(tx) = &self.verify else {
            return Err("sync is not configured: add a [store.sync] section naming your postgres service (see the README)".into());
        };
        let (reply, answer) = oneshot::channel();
        tx.send((repair, reply))
            .await
            .map_err(|_| "the sync task has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the sync task has stopped".to_string())?
    }
}

/// Starts the sync task (or, with no `[store.sync]`, a status that says `off`).
pub fn start(
    store: Store,
    cfg: Option<SyncConfig>,
    events: EventBus,
    tracker: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) -> SyncHandle {
    let (tx, rx) = watch::channel(SyncStatus {
        state: SyncState::Off,
        device: store.device(),
        ..Default::default()
    });
    let kick = Arc::new(Notify::new());
    let (verify_tx, verify_rx) = mpsc::channel(4);
    let handle = SyncHandle {
        status: rx,
        kick: kick.clone(),
        verify: cfg.is_some().then_some(verify_tx),
    };
    let pending_store = store.clone();
    let status = tx.clone();
    // Pending and set-aside rows are shown whether or not sync is configured.
    let stop = cancel.clone();
    tracker.spawn(async move {
        let mut writes = pending_store.writes();
        loop {
            if let Ok(n) = pending_store.pending().await {
                status.send_if_modified(|s| std::mem::replace(&mut s.pending, n) != n);
            }
            if let Ok((n, rows)) = pending_store.rejected(10).await {
                status.send_if_modified(|s| {
                    let changed = s.rejected != n;
                    s.rejected = n;
                    s.rejected_rows = rows;
                    changed
                });
            }
            tokio::select! {
                () = stop.cancelled() => return,
                _ = writes.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    });
    if let Some(cfg) = cfg {
        let mut syncer = Syncer {
            store,
            cfg,
            status: tx,
            client: None,
            server: None,
            password: None,
            warned: None,
            held_checked: None,
        };
        // A panic in a round (a bug) does not end sync: it is reported
        // (`crate::task`), shown as the last error, and sync starts over on a
        // new connection a second later.
        tracker.spawn(async move {
            use futures_util::FutureExt;
            let mut verify_rx = verify_rx;
            let mut restarts = 0u32;
            loop {
                let run = syncer.run(kick.clone(), &mut verify_rx, events.clone(), cancel.clone());
                let Err(panic) = std::panic::AssertUnwindSafe(run).catch_unwind().await else {
                    return;
                };
                restarts += 1;
                let what = crate::task::panic_text(&*panic);
                crate::task::report("sync", &what, restarts, &events);
                syncer.client = None;
                syncer.server = None;
                syncer.status.send_modify(|s| {
                    s.state = SyncState::Waiting;
                    s.last_error = Some(format!("internal error, restarted ({restarts}): {what}"));
                });
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
    handle
}

struct Syncer {
    store: Store,
    cfg: SyncConfig,
    status: watch::Sender<SyncStatus>,
    client: Option<tokio_postgres::Client>,
    /// Who the connected server is (read after connecting, and every round).
    server: Option<ServerInfo>,
    /// The keychain's password for the primary: `None` until read.
    password: Option<Option<String>>,
    /// The last warning logged, and when.
    warned: Option<(String, Instant)>,
    /// When held-back rows were last looked for.
    held_checked: Option<Instant>,
}

/// Why the sync task woke up.
enum Wake {
    Round,
    Verify(VerifyRequest),
}

impl Syncer {
    async fn run(
        &mut self,
        kick: Arc<Notify>,
        verify_rx: &mut mpsc::Receiver<VerifyRequest>,
        events: EventBus,
        cancel: CancellationToken,
    ) {
        let mut routes = events.subscribe();
        let mut writes = self.store.writes();
        let service = self.cfg.service.clone();
        self.status.send_modify(|s| s.state = SyncState::Idle);
        let mut wake = Wake::Round;
        loop {
            let result = match wake {
                Wake::Round => self.round().await,
                Wake::Verify((repair, reply)) => {
                    let r = self.verify(repair).await;
                    let failed = r.as_ref().err().map(|e| SyncError::Pg {
                        message: e.to_string(),
                        code: None,
                        closed: true,
                    });
                    let _ = reply.send(r.map_err(|e| e.to_string()));
                    failed.map_or(Ok(()), Err)
                }
            };
            if let Err(e) = result {
                self.failed(e);
            }
            let waiting = self.status.borrow().state == SyncState::Waiting;
            let retry = if waiting {
                self.cfg.retry
            } else {
                self.cfg.interval
            };
            // The next round: asked for, a local write (not while the primary is
            // unreachable: then the retry delay holds, whatever the write rate), the
            // primary reachable again, or time.
            let next = async {
                loop {
                    tokio::select! {
                        () = kick.notified() => return Wake::Round,
                        r = verify_rx.recv() => match r {
                            Some(req) => return Wake::Verify(req),
                            None => std::future::pending::<()>().await,
                        },
                        _ = writes.changed(), if !waiting => {
                            // Let a burst of writes gather into one batch.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            return Wake::Round;
                        }
                        e = routes.recv() => match e {
                            Ok(ev) => if let EventKind::Route { service: s, to: Some(_), .. } = ev.kind {
                                if s == service { return Wake::Round; }
                            },
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return Wake::Round,
                            Err(_) => std::future::pending::<()>().await,
                        },
                    }
                }
            };
            wake = tokio::select! {
                () = cancel.cancelled() => return,
                w = next => w,
                () = tokio::time::sleep(retry) => Wake::Round,
            };
        }
    }

    /// A round failed: drop the connection (the next one reconciles), say why —
    /// once per reason, and not more than once a minute.
    fn failed(&mut self, e: SyncError) {
        self.client = None;
        self.server = None;
        let msg = e.to_string();
        let now = Instant::now();
        let say = match &self.warned {
            Some((last, at)) => {
                (last != &msg && now.duration_since(*at) >= Duration::from_secs(5))
                    || now.duration_since(*at) >= WARN_EVERY
            }
            None => true,
        };
        if say {
            tracing::warn!("sync: {msg}");
            self.warned = Some((msg.clone(), now));
        } else {
            tracing::debug!("sync: {msg}");
        }
        self.status.send_modify(|s| {
            s.state = SyncState::Waiting;
            s.last_error = Some(msg);
        });
    }

    /// How long one call to the primary may take, transfer included.
    fn deadline(&self) -> Duration {
        (self.cfg.timeout * 2).max(Duration::from_secs(10))
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T, SyncError>>,
    ) -> Result<T, SyncError> {
        let d = self.deadline();
        tokio::time::timeout(d, f)
            .await
            .unwrap_or(Err(SyncError::Timeout(d, what)))
    }

    fn client(&mut self) -> Result<&mut tokio_postgres::Client, SyncError> {
        self.client.as_mut().ok_or_else(SyncError::not_connected)
    }

    fn notice(&self, what: String) {
        tracing::warn!("sync: {what}");
        let at = crate::util::rfc3339(SystemTime::now());
        self.status
            .send_modify(|s| s.notice = Some(format!("{at}: {what}")));
    }

    /// Push everything pending, then pull everything new (the pull runs even if
    /// the push failed, unless the connection is gone).
    async fn round(&mut self) -> Result<(), SyncError> {
        crate::failpoint::hit("sync-round");
        self.connect().await?;
        self.status.send_modify(|s| s.state = SyncState::Syncing);
        // A standby may have been promoted since the connect (a writable primary
        // cannot turn read-only without ending this connection).
        let info = if self.server.as_ref().is_some_and(|s| !s.read_only) {
            self.server.clone().ok_or_else(SyncError::not_connected)?
        } else {
            let d = self.deadline();
            let c = self.client()?;
            let f = primary::server_info(&*c);
            tokio::time::timeout(d, f)
                .await
                .unwrap_or(Err(SyncError::Timeout(d, "asking the server who it is")))?
        };
        if self.server.as_ref() != Some(&info) {
            let was_read_only = self.server.as_ref().is_some_and(|s| s.read_only);
            self.server = Some(info.clone());
            if was_read_only && !info.read_only {
                self.timed_reconcile(&info).await?;
            }
        }
        let mut push_error = None;
        if !info.read_only {
            if let Err(e) = self.push_all().await {
                if matches!(
                    e,
                    SyncError::Pg { closed: true, .. } | SyncError::Timeout(..)
                ) {
                    return Err(e);
                }
                push_error = Some(e);
            }
        }
        // A read-only standby is pulled from only if it is a copy of the primary
        // this device knows (its transaction ids are that primary's).
        let pull = !info.read_only
            || self
                .store
                .known_primary()
                .await?
                .is_some_and(|k| k.starts_with(&format!("{}/", info.database)));
        if pull {
            self.pull_all().await?;
        }
        // Looked at now and then, not every round (a minute is its threshold).
        let held = match self.held_checked {
            Some(at) if at.elapsed() < Duration::from_secs(20) => {
                self.status.borrow().held_back.clone()
            }
            _ => {
                self.held_checked = Some(Instant::now());
                self.held_back().await.unwrap_or(None)
            }
        };
        if info.read_only {
            // A connection that found itself on a read-only standby is dropped
            // after the round: the next one goes where the endpoint routes now
            // (the primary, once it is back).
            self.client = None;
            self.server = None;
        }
        let pending = self.store.pending().await?;
        let (rejected, rejected_rows) = self.store.rejected(10).await?;
        let read_only = info.read_only;
        self.status.send_modify(|s| {
            s.pending = pending;
            s.rejected = rejected;
            s.rejected_rows = rejected_rows;
            s.held_back = held;
            s.state = if read_only {
                SyncState::Waiting
            } else {
                SyncState::Idle
            };
            s.last_error = read_only.then(|| {
                "the primary is down; pulled from a read-only replica, local writes wait".into()
            });
            if !read_only && push_error.is_none() {
                s.last_sync = Some(SystemTime::now());
            }
        });
        push_error.map_or(Ok(()), Err)
    }

    /// `sync --verify [--repair]`: a round first (so what is merely on its way is
    /// not counted), then the comparison, then the repair and a second comparison.
    async fn verify(&mut self, repair: bool) -> Result<VerifyReport, SyncError> {
        self.round().await?;
        if self.server.as_ref().is_some_and(|s| s.read_only) {
            return Err(SyncError::Pg {
                message: "only a read-only replica is reachable: verify needs the primary".into(),
                code: None,
                closed: false,
            });
        }
        let started = Instant::now();
        let store = self.store.clone();
        let d = self.deadline() * 10;
        let client = self.client()?;
        let mut report = tokio::time::timeout(d, verify::compare(client, &store))
            .await
            .unwrap_or(Err(SyncError::Timeout(d, "verifying")))?;
        if repair && !report.is_clean() {
            let client = self.client()?;
            let repaired = tokio::time::timeout(d, verify::repair(client, &store, &report))
                .await
                .unwrap_or(Err(SyncError::Timeout(d, "repairing")))?;
            self.round().await?;
            let client = self.client()?;
            let mut after = tokio::time::timeout(d, verify::compare(client, &store))
                .await
                .unwrap_or(Err(SyncError::Timeout(d, "verifying")))?;
            after.elapsed_ms = started.elapsed().as_millis() as u64;
            report.repaired = Some(repaired);
            report.after = Some(Box::new(after));
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }
}
