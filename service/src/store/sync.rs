//! Sync between this node's SQLite store and the PostgreSQL primary, reached through
//! the mesh's PostgreSQL endpoint (so it follows the route like any client).
//!
//! - Push: the outbox in batches; each batch's rows (`INSERT … SELECT FROM unnest`,
//!   `ON CONFLICT DO NOTHING` for messages, newest-stamp-wins for conversations) and
//!   the device's `acked_seq` commit in one PostgreSQL transaction; the outbox rows
//!   are deleted only after that commit. After every (re)connect the device first
//!   reads its `acked_seq` back, so a crash between the commit and the local delete
//!   neither loses nor repeats anything.
//! - Pull: per table, a cursor on `(xid, change_id)` fenced below the oldest
//!   transaction still running (`pg_snapshot_xmin(pg_current_snapshot())`), so a
//!   row committed late by a transaction that started early is never skipped. Rows
//!   and the cursor are applied in one SQLite transaction.
//! - Every batch carries the schema version it was written for; a primary on
//!   another version refuses it with what to do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::params;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::{Batch, Conversation, Message, Store, StoreError};
use crate::config::SyncConfig;
use crate::events::{EventBus, EventKind};

/// The PostgreSQL schema this build writes; `robbie-mesh db migrate` brings a
/// primary to it.
pub const PG_SCHEMA_VERSION: i32 = 1;

/// Append-only, like the local migrations; entry `i` brings the schema to `i + 1`.
const PG_MIGRATIONS: &[&str] = &["
    CREATE SEQUENCE robbie.change_id;
    CREATE TABLE robbie.devices (
        device_id text PRIMARY KEY,
        node text NOT NULL,
        acked_seq bigint NOT NULL DEFAULT 0,
        last_push timestamptz
    );
    CREATE TABLE robbie.conversations (
        id uuid PRIMARY KEY,
        title text NOT NULL,
        archived boolean NOT NULL,
        created_at bigint NOT NULL,
        origin text NOT NULL,
        updated_hlc text NOT NULL,
        device text NOT NULL,
        xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        change_id bigint NOT NULL DEFAULT nextval('robbie.change_id')
    );
    CREATE INDEX conversations_by_change ON robbie.conversations (xid, change_id);
    CREATE TABLE robbie.messages (
        id uuid PRIMARY KEY,
        conversation_id uuid NOT NULL,
        role text NOT NULL,
        content text NOT NULL,
        model text,
        node text NOT NULL,
        created_at bigint NOT NULL,
        device text NOT NULL,
        xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        change_id bigint NOT NULL DEFAULT nextval('robbie.change_id')
    );
    CREATE INDEX messages_by_change ON robbie.messages (xid, change_id);
    CREATE INDEX messages_by_conversation ON robbie.messages (conversation_id, id);
"];

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("PostgreSQL: {0}")]
    Pg(String),
    #[error("the primary's robbie schema is version {found}, this robbie-mesh writes version {ours}: run `robbie-mesh db migrate` {hint}")]
    Schema {
        found: i32,
        ours: i32,
        hint: &'static str,
    },
    #[error(
        "the primary has no robbie schema yet: run `robbie-mesh db migrate` once (on any node)"
    )]
    NoSchema,
}

impl From<tokio_postgres::Error> for SyncError {
    fn from(e: tokio_postgres::Error) -> Self {
        SyncError::Pg(crate::util::pg_error(&e))
    }
}

/// Creates or upgrades the robbie schema on the primary; returns (from, to) versions.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<(i32, i32), SyncError> {
    let tx = client.transaction().await?;
    // One migrator at a time, whichever node runs it.
    tx.execute("SELECT pg_advisory_xact_lock(73612025)", &[])
        .await?;
    tx.batch_execute("CREATE SCHEMA IF NOT EXISTS robbie; CREATE TABLE IF NOT EXISTS robbie.schema_version (version int NOT NULL)")
        .await?;
    let found: Option<i32> = tx
        .query_opt("SELECT version FROM robbie.schema_version", &[])
        .await?
        .map(|r| r.get(0));
    let from = found.unwrap_or(0);
    if from > PG_SCHEMA_VERSION {
        return Err(SyncError::Schema {
            found: from,
            ours: PG_SCHEMA_VERSION,
            hint: "with a newer robbie-mesh",
        });
    }
    for m in &PG_MIGRATIONS[from as usize..] {
        tx.batch_execute(m).await?;
    }
    tx.execute("DELETE FROM robbie.schema_version", &[]).await?;
    tx.execute(
        "INSERT INTO robbie.schema_version VALUES ($1)",
        &[&PG_SCHEMA_VERSION],
    )
    .await?;
    tx.commit().await?;
    Ok((from, PG_SCHEMA_VERSION))
}

/// The primary's robbie schema is the one this build writes, or an error that says
/// what to run. Checked after every connect and in every pushed batch.
async fn check_schema(c: &impl tokio_postgres::GenericClient) -> Result<(), SyncError> {
    let version: Option<i32> = match c
        .query_opt("SELECT version FROM robbie.schema_version", &[])
        .await
    {
        Ok(r) => r.map(|r| r.get(0)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Err(SyncError::NoSchema)
        }
        Err(e) => return Err(e.into()),
    };
    match version {
        Some(PG_SCHEMA_VERSION) => Ok(()),
        Some(v) => Err(SyncError::Schema {
            found: v,
            ours: PG_SCHEMA_VERSION,
            hint: if v > PG_SCHEMA_VERSION {
                "with a newer robbie-mesh here"
            } else {
                ""
            },
        }),
        None => Err(SyncError::NoSchema),
    }
}

/// What the sync task is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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

/// What the sync task is doing, for `/v1/status` and `robbie-mesh status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    pub state: SyncState,
    pub device: String,
    /// Rows written here and not yet acknowledged by the primary.
    pub pending: u64,
    #[serde(serialize_with = "crate::util::ser_opt_time")]
    pub last_sync: Option<SystemTime>,
    pub last_error: Option<String>,
    pub pushed: u64,
    pub pulled: u64,
}

/// The sync task's handle: its status, and a way to ask for a round now.
#[derive(Clone)]
pub struct SyncHandle {
    pub status: watch::Receiver<SyncStatus>,
    kick: Arc<Notify>,
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
        }
    }

    pub fn kick(&self) {
        self.kick.notify_one();
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
        device: store.device().to_string(),
        ..Default::default()
    });
    let kick = Arc::new(Notify::new());
    let handle = SyncHandle {
        status: rx,
        kick: kick.clone(),
    };
    let pending_store = store.clone();
    let status = tx.clone();
    // Pending rows are shown whether or not sync is configured.
    let stop = cancel.clone();
    tracker.spawn(async move {
        let mut writes = pending_store.writes();
        loop {
            if let Ok(n) = pending_store.pending().await {
                status.send_if_modified(|s| std::mem::replace(&mut s.pending, n) != n);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                _ = writes.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    });
    if let Some(cfg) = cfg {
        tracker.spawn(
            Syncer {
                store,
                cfg,
                status: tx,
                client: None,
                password: None,
            }
            .run(kick, events, cancel),
        );
    }
    handle
}

struct Syncer {
    store: Store,
    cfg: SyncConfig,
    status: watch::Sender<SyncStatus>,
    client: Option<tokio_postgres::Client>,
    /// The keychain's password for the primary: `None` until read.
    password: Option<Option<String>>,
}

impl Syncer {
    async fn run(mut self, kick: Arc<Notify>, events: EventBus, cancel: CancellationToken) {
        let mut routes = events.subscribe();
        let mut writes = self.store.writes();
        let service = self.cfg.service.clone();
        self.status.send_modify(|s| s.state = SyncState::Idle);
        loop {
            match self.round().await {
                Ok(()) => {}
                Err(e) => {
                    self.client = None;
                    let msg = e.to_string();
                    // Said once per new reason, not on every retry.
                    if self.status.borrow().last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!("sync: {msg}");
                    }
                    self.status.send_modify(|s| {
                        s.state = SyncState::Waiting;
                        s.last_error = Some(msg);
                    });
                }
            }
            let retry = if self.status.borrow().state == SyncState::Waiting {
                self.cfg.retry
            } else {
                self.cfg.interval
            };
            // The next round: asked for, a local write, the primary reachable again, or time.
            let wait = async {
                loop {
                    tokio::select! {
                        () = kick.notified() => return,
                        _ = writes.changed() => {
                            // Let a burst of writes gather into one batch.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            return;
                        }
                        e = routes.recv() => match e {
                            Ok(ev) => if let EventKind::Route { service: s, to: Some(_), .. } = ev.kind {
                                if s == service { return; }
                            },
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(_) => std::future::pending::<()>().await,
                        },
                    }
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = wait => {}
                () = tokio::time::sleep(retry) => {}
            }
        }
    }

    async fn connect(&mut self) -> Result<&mut tokio_postgres::Client, SyncError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut pg = tokio_postgres::Config::new();
            pg.host(self.cfg.address.ip().to_string())
                .port(self.cfg.address.port())
                .user(&self.cfg.user)
                .dbname(&self.cfg.database)
                .application_name("robbie-mesh sync")
                .connect_timeout(Duration::from_secs(5));
            // The keychain is asked once, and again only after a refused login (not
            // on every retry while the primary is unreachable).
            if self.password.is_none() {
                let account = crate::keys::postgres_account(&self.cfg.service);
                let read =
                    tokio::task::spawn_blocking(move || crate::keys::get(&account).ok().flatten())
                        .await;
                self.password = Some(read.ok().flatten());
            }
            if let Some(Some(p)) = &self.password {
                pg.password(p);
            }
            let (client, conn) = match pg.connect(tokio_postgres::NoTls).await {
                Ok(c) => c,
                Err(e) => {
                    if e.code().is_some_and(|c| c.code().starts_with("28")) {
                        self.password = None;
                    }
                    return Err(e.into());
                }
            };
            tokio::spawn(async move {
                let _ = conn.await;
            });
            // Rows are read and written in this build's shape only.
            check_schema(&client).await?;
            self.client = Some(client);
            // First thing after every connect: what the primary already has from us.
            let acked = self.acked_seq().await?;
            self.store.ack(acked).await?;
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    async fn acked_seq(&mut self) -> Result<i64, SyncError> {
        let device = self.store.device().to_string();
        let client = self
            .client
            .as_ref()
            .ok_or(SyncError::Pg("not connected".into()))?;
        let row = client
            .query_opt(
                "SELECT acked_seq FROM robbie.devices WHERE device_id = $1",
                &[&device],
            )
            .await;
        Ok(row?.map_or(0, |r| r.get(0)))
    }

    /// Push everything pending, then pull everything new.
    async fn round(&mut self) -> Result<(), SyncError> {
        let batch_size = self.cfg.batch;
        self.connect().await?;
        self.status.send_modify(|s| s.state = SyncState::Syncing);
        let read_only = {
            let c = self.client.as_ref().expect("connected");
            c.query_one("SELECT pg_is_in_recovery()", &[])
                .await?
                .get::<_, bool>(0)
        };
        if !read_only {
            loop {
                let batch = self.store.outbox_batch(batch_size).await?;
                if batch.rows == 0 {
                    break;
                }
                let n = (batch.conversations.len() + batch.messages.len()) as u64;
                self.push(&batch).await?;
                crate::failpoint::hit("sync-after-commit");
                self.store.ack(batch.max_seq).await?;
                let pending = self.store.pending().await?;
                self.status.send_modify(|s| {
                    s.pushed += n;
                    s.pending = pending;
                });
            }
        }
        for table in [Table::Conversations, Table::Messages] {
            // Page on while pages come back full.
            loop {
                let n = self.pull(table, batch_size).await?;
                self.status.send_modify(|s| s.pulled += n as u64);
                if n < batch_size {
                    break;
                }
            }
        }
        let pending = self.store.pending().await?;
        self.status.send_modify(|s| {
            s.pending = pending;
            s.state = if read_only {
                SyncState::Waiting
            } else {
                SyncState::Idle
            };
            s.last_error = read_only.then(|| {
                "the primary is down; pulled from a read-only replica, local writes wait".into()
            });
            if !read_only {
                s.last_sync = Some(SystemTime::now());
            }
        });
        Ok(())
    }

    async fn push(&mut self, b: &Batch) -> Result<(), SyncError> {
        let device = self.store.device().to_string();
        let node = self.store.node().to_string();
        let client = self.client.as_mut().expect("connected");
        let tx = client.transaction().await?;
        check_schema(&tx).await?;
        tx.execute("INSERT INTO robbie.devices (device_id, node) VALUES ($1, $2) ON CONFLICT (device_id) DO NOTHING", &[&device, &node])
            .await?;
        let acked: i64 = tx
            .query_one(
                "SELECT acked_seq FROM robbie.devices WHERE device_id = $1 FOR UPDATE",
                &[&device],
            )
            .await?
            .get(0);
        if acked >= b.max_seq {
            // Already there (a crash after the commit, before the local ack).
            tx.rollback().await?;
            return Ok(());
        }
        if !b.conversations.is_empty() {
            let c = &b.conversations;
            let ids: Vec<&str> = c.iter().map(|c| c.id.as_str()).collect();
            let titles: Vec<&str> = c.iter().map(|c| c.title.as_str()).collect();
            let archived: Vec<bool> = c.iter().map(|c| c.archived).collect();
            let created: Vec<i64> = c.iter().map(|c| c.created_at).collect();
            let origins: Vec<&str> = c.iter().map(|c| c.origin.as_str()).collect();
            let stamps: Vec<&str> = c.iter().map(|c| c.updated_hlc.as_str()).collect();
            tx.execute(
                "INSERT INTO robbie.conversations AS c (id, title, archived, created_at, origin, updated_hlc, device) \
                 SELECT id::uuid, title, archived, created_at, origin, hlc, $7 \
                 FROM unnest($1::text[], $2::text[], $3::bool[], $4::int8[], $5::text[], $6::text[]) AS t(id, title, archived, created_at, origin, hlc) \
                 ON CONFLICT (id) DO UPDATE SET title = excluded.title, archived = excluded.archived, \
                   updated_hlc = excluded.updated_hlc, device = excluded.device, \
                   xid = pg_current_xact_id(), change_id = nextval('robbie.change_id') \
                 WHERE excluded.updated_hlc > c.updated_hlc",
                &[&ids, &titles, &archived, &created, &origins, &stamps, &device],
            )
            .await?;
        }
        if !b.messages.is_empty() {
            let m = &b.messages;
            let ids: Vec<&str> = m.iter().map(|m| m.id.as_str()).collect();
            let convs: Vec<&str> = m.iter().map(|m| m.conversation_id.as_str()).collect();
            let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
            let contents: Vec<&str> = m.iter().map(|m| m.content.as_str()).collect();
            let models: Vec<Option<&str>> = m.iter().map(|m| m.model.as_deref()).collect();
            let nodes: Vec<&str> = m.iter().map(|m| m.node.as_str()).collect();
            let created: Vec<i64> = m.iter().map(|m| m.created_at).collect();
            tx.execute(
                "INSERT INTO robbie.messages (id, conversation_id, role, content, model, node, created_at, device) \
                 SELECT id::uuid, conv::uuid, role, content, model, node, created_at, $8 \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[]) \
                   AS t(id, conv, role, content, model, node, created_at) \
                 ON CONFLICT (id) DO NOTHING",
                &[&ids, &convs, &roles, &contents, &models, &nodes, &created, &device],
            )
            .await?;
        }
        tx.execute(
            "UPDATE robbie.devices SET acked_seq = $2, last_push = now() WHERE device_id = $1",
            &[&device, &b.max_seq],
        )
        .await?;
        crate::failpoint::hit("sync-before-commit");
        tx.commit().await?;
        Ok(())
    }

    /// One page of rows other devices wrote after the cursor, applied with the new
    /// cursor; returns how many. Read in one snapshot: when the page is not full,
    /// every other device's row below the fence has been read, so the cursor jumps
    /// to the last row below the fence, past this device's own rows, which no pull
    /// then reads again.
    async fn pull(&mut self, table: Table, limit: usize) -> Result<usize, SyncError> {
        let (xid, change) = self.store.cursor(table.name()).await?;
        let device = self.store.device().to_string();
        let client = self.client.as_mut().expect("connected");
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let fence: String = tx
            .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
            .await?
            .get(0);
        let name = table.name();
        let after = "xid < $5::text::xid8 AND (xid, change_id) > ($1::text::xid8, $2)";
        let sql = match table {
            Table::Conversations => format!(
                "SELECT xid::text, change_id, id::text, title, archived, created_at, origin, updated_hlc \
                 FROM robbie.conversations WHERE {after} AND device <> $3 ORDER BY xid, change_id LIMIT $4"
            ),
            Table::Messages => format!(
                "SELECT xid::text, change_id, id::text, conversation_id::text, role, content, model, node, created_at \
                 FROM robbie.messages WHERE {after} AND device <> $3 ORDER BY xid, change_id LIMIT $4"
            ),
        };
        let rows = tx
            .query(&sql, &[&xid, &change, &device, &(limit as i64), &fence])
            .await?;
        let cursor: Option<(String, i64)> = if rows.len() == limit {
            rows.last().map(|r| (r.get(0), r.get(1)))
        } else {
            tx.query_opt(
                &format!(
                    "SELECT xid::text, change_id FROM robbie.{name} WHERE xid < $3::text::xid8 AND (xid, change_id) > ($1::text::xid8, $2) \
                     ORDER BY xid DESC, change_id DESC LIMIT 1"
                ),
                &[&xid, &change, &fence],
            )
            .await?
            .map(|r| (r.get(0), r.get(1)))
        };
        tx.commit().await?;
        let Some(cursor) = cursor else { return Ok(0) };
        let n = rows.len();
        match table {
            Table::Conversations => {
                let cs = rows
                    .iter()
                    .map(|r| Conversation {
                        id: r.get(2),
                        title: r.get(3),
                        archived: r.get(4),
                        created_at: r.get(5),
                        origin: r.get(6),
                        updated_hlc: r.get(7),
                    })
                    .collect();
                self.store.apply_conversations(cs, cursor).await?;
            }
            Table::Messages => {
                let ms = rows
                    .iter()
                    .map(|r| Message {
                        id: r.get(2),
                        conversation_id: r.get(3),
                        role: r.get(4),
                        content: r.get(5),
                        model: r.get(6),
                        node: r.get(7),
                        created_at: r.get(8),
                    })
                    .collect();
                self.store.apply_messages(ms, cursor).await?;
            }
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy)]
enum Table {
    Conversations,
    Messages,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Conversations => "conversations",
            Table::Messages => "messages",
        }
    }
}

/// The store's side of sync.
impl Store {
    /// The oldest `limit` outbox rows and the rows they name (a conversation once,
    /// in its current state, however often it changed).
    pub async fn outbox_batch(&self, limit: usize) -> Result<Batch, StoreError> {
        self.with(move |conn, inner| {
            let mut q = || -> rusqlite::Result<Batch> {
                let tx = conn.transaction()?;
                let (max_seq, rows): (Option<i64>, i64) = tx.query_row(
                    "SELECT max(seq), count(*) FROM (SELECT seq FROM outbox ORDER BY seq LIMIT ?1)",
                    [limit as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let Some(max_seq) = max_seq else { return Ok(Batch::default()) };
                let conversations = tx
                    .prepare_cached(
                        "SELECT id, title, archived, created_at, origin, updated_hlc FROM conversations \
                         WHERE id IN (SELECT row_id FROM outbox WHERE kind = 'c' AND seq <= ?1)",
                    )?
                    .query_map([max_seq], super::conversation_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                let messages = tx
                    .prepare_cached(
                        "SELECT m.id, m.conversation_id, m.role, m.content, m.model, m.node, m.created_at \
                         FROM outbox o JOIN messages m ON m.id = o.row_id WHERE o.kind = 'm' AND o.seq <= ?1 ORDER BY o.seq",
                    )?
                    .query_map([max_seq], super::message_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Batch { max_seq, rows: rows as usize, conversations, messages })
            };
            q().map_err(|e| inner.sql(e))
        })
        .await
    }

    /// The primary has everything up to `seq`: those outbox rows go.
    pub async fn ack(&self, seq: i64) -> Result<(), StoreError> {
        self.with(move |conn, inner| {
            conn.execute("DELETE FROM outbox WHERE seq <= ?1", [seq])
                .map(drop)
                .map_err(|e| inner.sql(e))
        })
        .await
    }

    pub async fn cursor(&self, table: &'static str) -> Result<(String, i64), StoreError> {
        self.with(move |conn, inner| {
            use rusqlite::OptionalExtension;
            conn.query_row(
                "SELECT xid, change_id FROM sync_cursor WHERE tbl = ?1",
                [table],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map(|c| c.unwrap_or_else(|| ("0".to_string(), 0)))
            .map_err(|e| inner.sql(e))
        })
        .await
    }

    /// Conversations from the primary, newest stamp winning, with the cursor.
    pub async fn apply_conversations(
        &self,
        rows: Vec<Conversation>,
        cursor: (String, i64),
    ) -> Result<(), StoreError> {
        self.with(move |conn, inner| {
            let now = super::hlc::now_ms();
            let mut skewed: HashMap<String, Duration> = HashMap::new();
            {
                let mut clock = inner.hlc.lock().unwrap_or_else(|p| p.into_inner());
                for c in &rows {
                    if let Some(stamp) = super::hlc::Stamp::decode(&c.updated_hlc) {
                        if let Some(ahead) = clock.observe(stamp, now) {
                            skewed.insert(c.updated_hlc.splitn(3, '-').nth(2).unwrap_or("?").to_string(), ahead);
                        }
                    }
                }
            }
            for (device, ahead) in skewed {
                tracing::warn!("device {device}'s clock is {}s ahead of ours; its stamps are not followed", ahead.as_secs());
            }
            inner.write(conn, |tx| {
                let mut st = tx.prepare_cached(
                    "INSERT INTO conversations (id, title, archived, created_at, origin, updated_hlc) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (id) DO UPDATE SET title = excluded.title, archived = excluded.archived, updated_hlc = excluded.updated_hlc \
                     WHERE excluded.updated_hlc > conversations.updated_hlc",
                )?;
                for c in &rows {
                    st.execute(params![c.id, c.title, c.archived, c.created_at, c.origin, c.updated_hlc])?;
                }
                save_cursor(tx, "conversations", &cursor)
            })
        })
        .await
    }

    /// Messages from the primary (already here: ignored), with the cursor.
    pub async fn apply_messages(
        &self,
        rows: Vec<Message>,
        cursor: (String, i64),
    ) -> Result<(), StoreError> {
        self.with(move |conn, inner| {
            inner.write(conn, |tx| {
                let mut st = tx.prepare_cached(
                    "INSERT INTO messages (id, conversation_id, role, content, model, node, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (id) DO NOTHING",
                )?;
                for m in &rows {
                    st.execute(params![m.id, m.conversation_id, m.role, m.content, m.model, m.node, m.created_at])?;
                }
                save_cursor(tx, "messages", &cursor)
            })
        })
        .await
    }
}

fn save_cursor(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    (xid, change): &(String, i64),
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO sync_cursor (tbl, xid, change_id) VALUES (?1, ?2, ?3) ON CONFLICT (tbl) DO UPDATE SET xid = excluded.xid, change_id = excluded.change_id",
    )?
    .execute(params![table, xid, change])?;
    Ok(())
}
