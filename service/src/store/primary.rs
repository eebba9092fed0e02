//! The PostgreSQL side of sync: the `robbie` schema on the primary, who the
//! primary is, and the statements that push a batch and pull a page.
//!
//! Every comparison of a transaction id is made on the `xid8` value itself (never
//! on its text: "1000" sorts before "728"), and every comparison of a clock stamp
//! uses the "C" collation (byte order, as SQLite compares them), whatever the
//! database's default collation.
//!
//! Longer than most files on purpose: every statement sync runs on the primary,
//! with the schema it runs against, so the SQL can be read as one.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

use super::outbox::Batch;
use super::{Conversation, Message, StoreError};

/// The PostgreSQL schema this build writes; `robbie-mesh db migrate` brings a
/// primary to it.
pub const PG_SCHEMA_VERSION: i32 = 2;

/// Append-only, like the local migrations; entry `i` brings the schema to `i + 1`.
const PG_MIGRATIONS: &[&str] = &[
    "
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
",
    // 2: a stamp per metadata field, compared byte-wise; the tag of the last row
    // acknowledged per device; an identity for this database (with the cluster's
    // system identifier and timeline it tells a replaced or restored primary apart).
    r#"
    ALTER TABLE robbie.conversations
        ADD COLUMN title_hlc text COLLATE "C",
        ADD COLUMN archived_hlc text COLLATE "C",
        ALTER COLUMN updated_hlc TYPE text COLLATE "C";
    UPDATE robbie.conversations SET title_hlc = updated_hlc, archived_hlc = updated_hlc;
    ALTER TABLE robbie.conversations
        ALTER COLUMN title_hlc SET NOT NULL,
        ALTER COLUMN archived_hlc SET NOT NULL;
    ALTER TABLE robbie.devices ADD COLUMN acked_tag bigint;
    CREATE TABLE robbie.instance (
        id uuid NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO robbie.instance (id) VALUES (gen_random_uuid());
"#,
];

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("PostgreSQL: {message}")]
    Pg {
        message: String,
        /// The SQLSTATE, when the server answered one.
        code: Option<String>,
        /// The connection itself failed (nothing was answered).
        closed: bool,
    },
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
    #[error("the primary acknowledged up to row {primary} for this device, this device knows {ours}: reconnecting to reconcile")]
    AckMismatch { primary: i64, ours: i64 },
    #[error("no answer from the primary within {0:?} while {1}: the link or the server is stuck")]
    Timeout(Duration, &'static str),
}

impl SyncError {
    /// A call needed the connection, and there is none (the next round connects).
    pub fn not_connected() -> SyncError {
        SyncError::Pg {
            message: "not connected".into(),
            code: None,
            closed: true,
        }
    }

    /// The server refused this data (the row, not the connection): a data
    /// exception, a constraint, or a size limit. Such a row is set aside.
    pub fn is_refused_row(&self) -> bool {
        match self {
            SyncError::Pg {
                code: Some(c),
                closed: false,
                ..
            } => c.starts_with("22") || c.starts_with("23") || c.starts_with("54"),
            _ => false,
        }
    }
}

impl From<tokio_postgres::Error> for SyncError {
    fn from(e: tokio_postgres::Error) -> Self {
        SyncError::Pg {
            message: crate::util::pg_error(&e),
            code: e.code().map(|c| c.code().to_string()),
            closed: e.is_closed() || e.code().is_none(),
        }
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
pub async fn check_schema(c: &impl GenericClient) -> Result<(), SyncError> {
    let version: Option<i32> = match c
        .query_typed_opt("SELECT version FROM robbie.schema_version", &[])
        .await
    {
        Ok(r) => r.map(|r| r.get(0)),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Err(SyncError::NoSchema),
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

/// Who the server is, read after every connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `<cluster system identifier>/<robbie instance id>`: a dump restored into
    /// another cluster keeps the instance id but not the system identifier.
    pub database: String,
    /// The WAL timeline (a promoted replica or a point-in-time recovery starts a
    /// new one); `None` on a read-only standby.
    pub timeline: Option<String>,
    pub read_only: bool,
    /// The next transaction id the server will hand out.
    pub next_xid: i64,
}

impl ServerInfo {
    /// What a device remembers of its primary: database and timeline.
    pub fn identity(&self) -> String {
        format!(
            "{}/tl{}",
            self.database,
            self.timeline.as_deref().unwrap_or("?")
        )
    }
}

pub async fn server_info(c: &impl GenericClient) -> Result<ServerInfo, SyncError> {
    let r = c
        .query_typed_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()) || '/' || \
                    coalesce((SELECT id::text FROM robbie.instance LIMIT 1), '-'), \
                    pg_is_in_recovery(), \
                    pg_snapshot_xmax(pg_current_snapshot())::text::int8, \
                    CASE WHEN pg_is_in_recovery() THEN NULL \
                         ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
            &[],
        )
        .await?;
    Ok(ServerInfo {
        database: r.get(0),
        read_only: r.get(1),
        next_xid: r.get(2),
        timeline: r.get(3),
    })
}

/// What the primary has acknowledged from a device: (seq, tag of that row).
pub async fn acked(c: &impl GenericClient, device: &str) -> Result<(i64, Option<i64>), SyncError> {
    Ok(c.query_typed_opt(
        "SELECT acked_seq, acked_tag FROM robbie.devices WHERE device_id = $1",
        &[(&device, Type::TEXT)],
    )
    .await?
    .map_or((0, None), |r| (r.get(0), r.get(1))))
}

/// Pushes one batch in one transaction with the device's new `acked_seq`, provided
/// the primary's `acked_seq` is still `known` (else nothing is written: another
/// copy of this store pushed, or an earlier commit was not seen here).
pub async fn push_batch(
    client: &mut tokio_postgres::Client,
    device: &str,
    node: &str,
    known: i64,
    b: &Batch,
) -> Result<(), SyncError> {
    let tx = client.transaction().await?;
    check_schema(&tx).await?;
    tx.query_typed(
        "INSERT INTO robbie.devices (device_id, node) VALUES ($1, $2) ON CONFLICT (device_id) DO NOTHING",
        &[(&device, Type::TEXT), (&node, Type::TEXT)],
    )
    .await?;
    let acked: i64 = tx
        .query_typed_one(
            "SELECT acked_seq FROM robbie.devices WHERE device_id = $1 FOR UPDATE",
            &[(&device, Type::TEXT)],
        )
        .await?
        .get(0);
    if acked != known {
        tx.rollback().await?;
        return Err(SyncError::AckMismatch {
            primary: acked,
            ours: known,
        });
    }
    if !b.conversations.is_empty() {
        let c = &b.conversations;
        let ids: Vec<&str> = c.iter().map(|c| c.id.as_str()).collect();
        let titles: Vec<&str> = c.iter().map(|c| c.title.as_str()).collect();
        let archived: Vec<bool> = c.iter().map(|c| c.archived).collect();
        let created: Vec<i64> = c.iter().map(|c| c.created_at).collect();
        let origins: Vec<&str> = c.iter().map(|c| c.origin.as_str()).collect();
        let stamps: Vec<&str> = c.iter().map(|c| c.updated_hlc.as_str()).collect();
        let title_stamps: Vec<&str> = c.iter().map(|c| c.title_hlc.as_str()).collect();
        let archived_stamps: Vec<&str> = c.iter().map(|c| c.archived_hlc.as_str()).collect();
        // Each field is last-writer-wins by its own stamp.
        tx.query_typed(
            r#"INSERT INTO robbie.conversations AS c (id, title, archived, created_at, origin, updated_hlc, title_hlc, archived_hlc, device)
               SELECT id::uuid, title, archived, created_at, origin, hlc, title_hlc, archived_hlc, $9
               FROM unnest($1::text[], $2::text[], $3::bool[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[])
                 AS t(id, title, archived, created_at, origin, hlc, title_hlc, archived_hlc)
               ON CONFLICT (id) DO UPDATE SET
                 title = CASE WHEN excluded.title_hlc > c.title_hlc THEN excluded.title ELSE c.title END,
                 title_hlc = GREATEST(c.title_hlc, excluded.title_hlc),
                 archived = CASE WHEN excluded.archived_hlc > c.archived_hlc THEN excluded.archived ELSE c.archived END,
                 archived_hlc = GREATEST(c.archived_hlc, excluded.archived_hlc),
                 updated_hlc = GREATEST(c.updated_hlc, excluded.updated_hlc),
                 -- The pusher's own row only if it won both fields; a merge is
                 -- everyone's to pull (the pusher's included).
                 device = CASE WHEN excluded.title_hlc >= c.title_hlc AND excluded.archived_hlc >= c.archived_hlc
                               THEN excluded.device ELSE '' END,
                 xid = pg_current_xact_id(), change_id = nextval('robbie.change_id')
               WHERE excluded.title_hlc > c.title_hlc OR excluded.archived_hlc > c.archived_hlc"#,
            &[
                (&ids, Type::TEXT_ARRAY),
                (&titles, Type::TEXT_ARRAY),
                (&archived, Type::BOOL_ARRAY),
                (&created, Type::INT8_ARRAY),
                (&origins, Type::TEXT_ARRAY),
                (&stamps, Type::TEXT_ARRAY),
                (&title_stamps, Type::TEXT_ARRAY),
                (&archived_stamps, Type::TEXT_ARRAY),
                (&device, Type::TEXT),
            ],
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
        tx.query_typed(
            "INSERT INTO robbie.messages (id, conversation_id, role, content, model, node, created_at, device) \
             SELECT id::uuid, conv::uuid, role, content, model, node, created_at, $8 \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[]) \
               AS t(id, conv, role, content, model, node, created_at) \
             ON CONFLICT (id) DO NOTHING",
            &[
                (&ids, Type::TEXT_ARRAY),
                (&convs, Type::TEXT_ARRAY),
                (&roles, Type::TEXT_ARRAY),
                (&contents, Type::TEXT_ARRAY),
                (&models, Type::TEXT_ARRAY),
                (&nodes, Type::TEXT_ARRAY),
                (&created, Type::INT8_ARRAY),
                (&device, Type::TEXT),
            ],
        )
        .await?;
    }
    tx.query_typed(
        "UPDATE robbie.devices SET acked_seq = $2, acked_tag = $3, last_push = now() WHERE device_id = $1",
        &[(&device, Type::TEXT), (&b.max_seq, Type::INT8), (&b.max_tag, Type::INT8)],
    )
    .await?;
    crate::failpoint::hit("sync-before-commit");
    tx.commit().await?;
    Ok(())
}

/// A pull cursor: the `(xid, change_id)` of the last row applied.
pub type Cursor = (i64, i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Conversations,
    Messages,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Conversations => "conversations",
            Table::Messages => "messages",
        }
    }
}

/// Rows of one pulled page.
#[derive(Debug)]
pub enum Rows {
    Conversations(Vec<Conversation>),
    Messages(Vec<Message>),
}

impl Rows {
    pub fn len(&self) -> usize {
        match self {
            Rows::Conversations(r) => r.len(),
            Rows::Messages(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One pulled page.
#[derive(Debug)]
pub struct Page {
    pub rows: Rows,
    /// Where the next page starts; `None`: nothing new below the fence.
    pub cursor: Option<Cursor>,
    /// More rows may follow right after this page (it was cut by `limit` or by
    /// bytes): pull again at once.
    pub more: bool,
}

/// One page of the rows other devices wrote after `cursor`, in `(xid, change_id)`
/// order, below `fence` (the oldest transaction still running: a row committed
/// late by a transaction that started early is never skipped), at most `limit`
/// rows and about `max_bytes` (always at least one row). Run it inside one
/// repeatable-read transaction. When the page is not cut, the cursor moves to
/// the last row below the fence, past this device's own rows.
pub async fn pull_page(
    tx: &impl GenericClient,
    table: Table,
    cursor: Cursor,
    device: &str,
    limit: usize,
    max_bytes: usize,
    fence: i64,
) -> Result<Page, SyncError> {
    let name = table.name();
    let size = match table {
        Table::Conversations => "octet_length(t.title) + 200",
        Table::Messages => "octet_length(t.content) + coalesce(octet_length(t.model), 0) + 200",
    };
    // Keys and sizes first (octet_length of a stored value does not read it), and
    // the last key below the fence whoever wrote it (where the cursor goes if
    // the page is not cut), both sent at once: one round trip, not two.
    let keys_sql = format!(
        "SELECT t.xid::text::int8 AS x, t.change_id, t.id::text, ({size})::int8 AS size \
         FROM robbie.{name} t \
         WHERE t.xid < $5::int8::text::xid8 AND (t.xid, t.change_id) > ($1::int8::text::xid8, $2) AND t.device <> $3 \
         ORDER BY t.xid, t.change_id LIMIT $4"
    );
    let last_sql = format!(
        "SELECT t.xid::text::int8 AS x, t.change_id FROM robbie.{name} t \
         WHERE t.xid < $3::int8::text::xid8 AND (t.xid, t.change_id) > ($1::int8::text::xid8, $2) \
         ORDER BY t.xid DESC, t.change_id DESC LIMIT 1"
    );
    let limit_param = limit as i64;
    let keys_params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&cursor.0, Type::INT8),
        (&cursor.1, Type::INT8),
        (&device, Type::TEXT),
        (&limit_param, Type::INT8),
        (&fence, Type::INT8),
    ];
    let last_params: [(&(dyn ToSql + Sync), Type); 3] = [
        (&cursor.0, Type::INT8),
        (&cursor.1, Type::INT8),
        (&fence, Type::INT8),
    ];
    let (keys, last) = tokio::try_join!(
        tx.query_typed(&keys_sql, &keys_params),
        tx.query_typed_opt(&last_sql, &last_params)
    )?;
    let mut take = 0;
    let mut bytes = 0usize;
    for k in &keys {
        let s: i64 = k.get(3);
        bytes = bytes.saturating_add(s.max(0) as usize);
        if take > 0 && bytes > max_bytes {
            break;
        }
        take += 1;
    }
    let cut = take < keys.len() || keys.len() == limit;
    let ids: Vec<String> = keys[..take].iter().map(|k| k.get(2)).collect();
    let next = if cut {
        keys.get(take.wrapping_sub(1)).map(|k| (k.get(0), k.get(1)))
    } else {
        last.map(|r| (r.get(0), r.get(1)))
    };
    // ...then the rows themselves, in the same snapshot and order.
    let rows = if ids.is_empty() {
        match table {
            Table::Conversations => Rows::Conversations(Vec::new()),
            Table::Messages => Rows::Messages(Vec::new()),
        }
    } else {
        match table {
            Table::Conversations => Rows::Conversations(
                tx.query_typed(
                    "SELECT t.id::text, t.title, t.archived, t.created_at, t.origin, t.updated_hlc, t.title_hlc, t.archived_hlc \
                     FROM unnest($1::text[]) WITH ORDINALITY AS k(id, n) JOIN robbie.conversations t ON t.id = k.id::uuid ORDER BY k.n",
                    &[(&ids, Type::TEXT_ARRAY)],
                )
                .await?
                .iter()
                .map(conversation)
                .collect(),
            ),
            Table::Messages => Rows::Messages(
                tx.query_typed(
                    "SELECT t.id::text, t.conversation_id::text, t.role, t.content, t.model, t.node, t.created_at \
                     FROM unnest($1::text[]) WITH ORDINALITY AS k(id, n) JOIN robbie.messages t ON t.id = k.id::uuid ORDER BY k.n",
                    &[(&ids, Type::TEXT_ARRAY)],
                )
                .await?
                .iter()
                .map(message)
                .collect(),
            ),
        }
    };
    Ok(Page {
        rows,
        cursor: next,
        more: cut,
    })
}

/// The oldest transaction holding the pull fence back, when rows wait behind it:
/// (its age, its pid, its application name).
pub async fn held_back_by(
    tx: &impl GenericClient,
    cursor_xid: i64,
    fence: i64,
) -> Result<Option<(Duration, i32, String)>, SyncError> {
    let r = tx
        .query_typed_opt(
            "SELECT extract(epoch FROM now() - a.xact_start)::float8, a.pid, coalesce(a.application_name, '') \
             FROM pg_stat_activity a \
             WHERE a.backend_xid IS NOT NULL AND a.xact_start IS NOT NULL \
               AND (EXISTS (SELECT 1 FROM robbie.messages m WHERE m.xid >= $2::int8::text::xid8 AND m.xid > $1::int8::text::xid8) \
                 OR EXISTS (SELECT 1 FROM robbie.conversations c WHERE c.xid >= $2::int8::text::xid8 AND c.xid > $1::int8::text::xid8)) \
             ORDER BY a.xact_start LIMIT 1",
            &[(&cursor_xid, Type::INT8), (&fence, Type::INT8)],
        )
        .await?;
    Ok(r.map(|r| {
        (
            Duration::from_secs_f64(r.get::<_, f64>(0).max(0.0)),
            r.get(1),
            r.get(2),
        )
    }))
}

pub(super) fn conversation(r: &tokio_postgres::Row) -> Conversation {
    Conversation {
        id: r.get(0),
        title: r.get(1),
        archived: r.get(2),
        created_at: r.get(3),
        origin: r.get(4),
        updated_hlc: r.get(5),
        title_hlc: r.get(6),
        archived_hlc: r.get(7),
    }
}

pub(super) fn message(r: &tokio_postgres::Row) -> Message {
    Message {
        id: r.get(0),
        conversation_id: r.get(1),
        role: r.get(2),
        content: r.get(3),
        model: r.get(4),
        node: r.get(5),
        created_at: r.get(6),
    }
}
