//! The local-first store: conversations and messages in a SQLite file on this node
//! (WAL, `synchronous=FULL`; rows pulled from the primary, which can be pulled
//! again, commit without waiting for the disk), answered locally whether or not any other node is
//! reachable. Every write commits together with its outbox row, which `sync` pushes
//! to the PostgreSQL primary later; rows written elsewhere come back through `sync`
//! too. Ids are UUIDv7 made here; messages never change once written; conversation
//! metadata (title, archived) is last-writer-wins by a hybrid logical clock (`hlc`).
//!
//! rusqlite is blocking: every call runs on tokio's blocking pool, holding the one
//! connection's lock only inside that closure.
//!
//! Longer than most files on purpose: the store's one connection and every local
//! read and write on it, so that each transaction can be read whole; what sync adds
//! to the file is in `outbox.rs`.

pub mod cli;
pub mod hlc;
mod outbox;
pub mod primary;
pub mod replica;
mod schema;
pub mod sync;
pub mod verify;

pub use outbox::{Batch, Rejected};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use hlc::{Hlc, Stamp};

/// The longest title, model name and message accepted (a message may hold a long answer).
pub const MAX_TITLE: usize = 1_000;
pub const MAX_MODEL: usize = 1_000;
pub const MAX_CONTENT: usize = 8 * 1024 * 1024;
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    pub archived: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The node that created it.
    pub origin: String,
    /// The clock stamp of the last metadata write (rename, archive): the larger of
    /// the two below.
    pub updated_hlc: String,
    /// The stamp of the last rename, and of the last archive / unarchive: each field
    /// is last-writer-wins on its own, so a rename on one device and an archive on
    /// another both survive.
    #[serde(default)]
    pub title_hlc: String,
    #[serde(default)]
    pub archived_hlc: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub role: String,
    pub content: String,
    pub model: Option<String>,
    /// The node it was written on.
    pub node: String,
    pub created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the local store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the store's directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the local store {path} has schema version {found}; this robbie-mesh knows up to {known}: upgrade robbie-mesh")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("no conversation {0}")]
    NoConversation(String),
    #[error("the store's worker failed: {0}")]
    Worker(String),
    #[error("the local store {0} is closed (the service is stopping)")]
    Closed(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// A problem with the request (not with the store).
    pub fn is_client_error(&self) -> bool {
        matches!(self, StoreError::NoConversation(_) | StoreError::Invalid(_))
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` once [`Store::close`] has run.
    conn: Mutex<Option<Connection>>,
    /// The thread of `checkpoint_aside`; it ends with `conn`.
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
    node: String,
    /// One per SQLite file; replaced when the file turns out to be a restored or
    /// copied one (see `outbox::become_new_device`).
    device: Mutex<String>,
    hlc: Mutex<Hlc>,
    /// Counts local writes; a subscriber sees every change, even one made while it
    /// was busy (the sync task pushes soon after a write).
    written: tokio::sync::watch::Sender<u64>,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path, node: &str) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Dir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        private_file(path).map_err(|source| StoreError::Dir {
            path: path.to_path_buf(),
            source,
        })?;
        let sql = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(sql)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
        )
        .map_err(sql)?;
        schema::migrate(&mut conn, path)?;
        let checkpointer = checkpoint_aside(&mut conn, path)?;
        let device = match meta(&conn, "device_id").map_err(sql)? {
            Some(d) => d,
            None => {
                let d = uuid::Uuid::now_v7().to_string();
                set_meta(&conn, "device_id", &d).map_err(sql)?;
                d
            }
        };
        let last = meta(&conn, "hlc")
            .map_err(sql)?
            .and_then(|s| Stamp::decode(&s))
            .unwrap_or(Stamp { ms: 0, counter: 0 });
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                conn: Mutex::new(Some(conn)),
                checkpointer: Mutex::new(Some(checkpointer)),
                node: node.to_string(),
                device: Mutex::new(device),
                hlc: Mutex::new(Hlc::new(last)),
                written: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// This store's device id (one per SQLite file).
    pub fn device(&self) -> String {
        self.inner.device()
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Changes after every local write.
    pub fn writes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.written.subscribe()
    }

    /// `with` for a local write: `writes()` changes once it is committed.
    async fn write_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let done = self.with(f).await?;
        self.inner.written.send_modify(|n| *n += 1);
        Ok(done)
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            let conn = conn
                .as_mut()
                .ok_or_else(|| StoreError::Closed(inner.path.clone()))?;
            f(conn, &inner)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Worker(e.to_string())))
    }

    /// The same, synchronously (the CLI, tests).
    pub fn with_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = conn
            .as_mut()
            .ok_or_else(|| StoreError::Closed(self.inner.path.clone()))?;
        f(conn).map_err(|source| StoreError::Sqlite {
            path: self.inner.path.clone(),
            source,
        })
    }

    /// Checkpoints the WAL into the database file and closes it: when this returns,
    /// the file alone holds every committed row and may be copied or backed up.
    /// Later calls on any clone of this store fail with [`StoreError::Closed`].
    /// The service calls it once its tasks have stopped.
    pub fn close(&self) -> Result<(), StoreError> {
        let conn = self
            .inner
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(conn) = conn else { return Ok(()) };
        let sql = |source| StoreError::Sqlite {
            path: self.inner.path.clone(),
            source,
        };
        let checkpointed = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        let closed = conn.close().map_err(|(_, e)| sql(e));
        // Its connection, the last one, is closed when it returns.
        let checkpointer = self
            .inner
            .checkpointer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = checkpointer {
            let _ = t.join();
        }
        checkpointed.map_err(sql)?;
        closed
    }

    pub async fn create_conversation(&self, title: &str) -> Result<Conversation, StoreError> {
        check_text("title", title, MAX_TITLE)?;
        let title = title.to_string();
        self.write_with(move |conn, inner| {
                let stamp = inner.tick(None);
                let c = Conversation {
                    id: uuid::Uuid::now_v7().to_string(),
                    title,
                    archived: false,
                    created_at: hlc::now_ms() as i64,
                    origin: inner.node.clone(),
                    updated_hlc: stamp.clone(),
                    title_hlc: stamp.clone(),
                    archived_hlc: stamp,
                };
                inner.write(conn, |tx| {
                    tx.execute(
                        "INSERT INTO conversations (id, title, archived, created_at, origin, updated_hlc, title_hlc, archived_hlc) \
                         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?5, ?5)",
                        params![c.id, c.title, c.created_at, c.origin, c.updated_hlc],
                    )?;
                    outbox(tx, 'c', &c.id)
                })?;
                Ok(c)
            })
        .await
    }

    /// Renames and/or archives a conversation (a metadata write: newest stamp wins,
    /// per field; this write's stamp is above the row's whatever the local clock says).
    pub async fn update_conversation(
        &self,
        id: &str,
        title: Option<String>,
        archived: Option<bool>,
    ) -> Result<Conversation, StoreError> {
        if let Some(t) = &title {
            check_text("title", t, MAX_TITLE)?;
        }
        let id = id.to_string();
        self.write_with(move |conn, inner| {
                let mut c = get_conversation(conn, &id).map_err(|e| inner.sql(e))?.ok_or(StoreError::NoConversation(id))?;
                let row = [&c.updated_hlc, &c.title_hlc, &c.archived_hlc]
                    .into_iter()
                    .filter_map(|s| Stamp::decode(s))
                    .max();
                let stamp = inner.tick(row);
                if let Some(t) = title {
                    c.title = t;
                    c.title_hlc = stamp.clone();
                }
                if let Some(a) = archived {
                    c.archived = a;
                    c.archived_hlc = stamp.clone();
                }
                c.updated_hlc = stamp;
                inner.write(conn, |tx| {
                    tx.execute(
                        "UPDATE conversations SET title = ?2, archived = ?3, updated_hlc = ?4, title_hlc = ?5, archived_hlc = ?6 WHERE id = ?1",
                        params![c.id, c.title, c.archived, c.updated_hlc, c.title_hlc, c.archived_hlc],
                    )?;
                    outbox(tx, 'c', &c.id)
                })?;
                Ok(c)
            })
        .await
    }

    pub async fn conversation(&self, id: &str) -> Result<Conversation, StoreError> {
        let id = id.to_string();
        self.with(move |conn, inner| {
            get_conversation(conn, &id)
                .map_err(|e| inner.sql(e))?
                .ok_or(StoreError::NoConversation(id))
        })
        .await
    }

    /// Newest first; `before` (an id) pages on.
    pub async fn conversations(
        &self,
        archived: bool,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        self.with(move |conn, inner| {
            let mut st = conn
                .prepare_cached(
                    "SELECT id, title, archived, created_at, origin, updated_hlc, title_hlc, archived_hlc FROM conversations \
                     WHERE (?1 OR archived = 0) AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
                )
                .map_err(|e| inner.sql(e))?;
            let rows = st.query_map(params![archived, before, limit as i64], conversation_row).map_err(|e| inner.sql(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| inner.sql(e))
        })
        .await
    }

    pub async fn append_message(
        &self,
        conversation: &str,
        role: &str,
        content: String,
        model: Option<String>,
    ) -> Result<Message, StoreError> {
        if !ROLES.contains(&role) {
            return Err(StoreError::Invalid(format!(
                "role `{role}` is not one of {}",
                ROLES.join(", ")
            )));
        }
        check_text("content", &content, MAX_CONTENT)?;
        if let Some(m) = &model {
            check_text("model", m, MAX_MODEL)?;
        }
        let (conversation, role) = (conversation.to_string(), role.to_string());
        self.write_with(move |conn, inner| {
                let m = Message {
                    id: uuid::Uuid::now_v7().to_string(),
                    conversation_id: conversation,
                    role,
                    content,
                    model,
                    node: inner.node.clone(),
                    created_at: hlc::now_ms() as i64,
                };
                let ok = inner.write(conn, |tx| {
                    let exists: bool = tx
                        .prepare_cached("SELECT EXISTS (SELECT 1 FROM conversations WHERE id = ?1)")?
                        .query_row([&m.conversation_id], |r| r.get(0))?;
                    if !exists {
                        return Ok(false);
                    }
                    tx.prepare_cached(
                        "INSERT INTO messages (id, conversation_id, role, content, model, node, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![m.id, m.conversation_id, m.role, m.content, m.model, m.node, m.created_at])?;
                    outbox(tx, 'm', &m.id)?;
                    Ok(true)
                })?;
                if ok {
                    Ok(m)
                } else {
                    Err(StoreError::NoConversation(m.conversation_id))
                }
            })
        .await
    }

    /// Oldest first; `after` (an id) pages on.
    pub async fn messages(
        &self,
        conversation: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let conversation = conversation.to_string();
        self.with(move |conn, inner| {
            if get_conversation(conn, &conversation).map_err(|e| inner.sql(e))?.is_none() {
                return Err(StoreError::NoConversation(conversation));
            }
            let mut st = conn
                .prepare_cached(
                    "SELECT id, conversation_id, role, content, model, node, created_at FROM messages \
                     WHERE conversation_id = ?1 AND (?2 IS NULL OR id > ?2) ORDER BY id LIMIT ?3",
                )
                .map_err(|e| inner.sql(e))?;
            let rows = st.query_map(params![conversation, after, limit as i64], message_row).map_err(|e| inner.sql(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| inner.sql(e))
        })
        .await
    }

    /// Rows written here and not yet acknowledged by the primary.
    pub async fn pending(&self) -> Result<u64, StoreError> {
        self.with(|conn, inner| {
            conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(|e| inner.sql(e))
        })
        .await
    }
}

impl Inner {
    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn device(&self) -> String {
        self.device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A new clock stamp (above `row`, the current stamp of the row it is for),
    /// persisted with the write that uses it.
    fn tick(&self, row: Option<Stamp>) -> String {
        let mut h = self.hlc.lock().unwrap_or_else(|p| p.into_inner());
        h.tick_above(hlc::now_ms(), row).encode(&self.device())
    }

    /// One immediate transaction around `f`, with the clock saved in it.
    fn write<T>(
        &self,
        conn: &mut Connection,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let run = || -> rusqlite::Result<T> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            let last = self.hlc.lock().unwrap_or_else(|p| p.into_inner()).last();
            tx.prepare_cached("INSERT INTO meta (key, value) VALUES ('hlc', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
                .execute([last.encode(&self.device())])?;
            tx.commit()?;
            Ok(out)
        };
        run().map_err(|e| self.sql(e))
    }

    /// `write`, or for rows pulled from the primary with their cursor: committed
    /// without waiting for the disk (`synchronous=NORMAL`). WAL keeps such a
    /// transaction atomic; a power cut can only undo it whole, rows and cursor
    /// together, and they come down again on the next pull. The next durable
    /// commit (any local write) makes it durable too: the log is synced in order.
    fn write_maybe_pulled<T>(
        &self,
        pulled: bool,
        conn: &mut Connection,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        if !pulled {
            return self.write(conn, f);
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL")
            .map_err(|e| self.sql(e))?;
        let out = self.write(conn, f);
        let full = conn
            .execute_batch("PRAGMA synchronous=FULL")
            .map_err(|e| self.sql(e));
        let out = out?;
        full?;
        Ok(out)
    }
}

/// The log is copied back into the database file by a thread of its own, not by
/// whichever commit happens to cross SQLite's threshold (that commit would wait
/// for a checkpoint's writes and fsync: a 1 000-row pull took 5 ms or, one time in
/// three, 17). The hook replaces SQLite's automatic checkpoint; the thread runs a
/// passive one (it never blocks the writer) once the log holds
/// `CHECKPOINT_PAGES`, and ends with the connection.
fn checkpoint_aside(
    conn: &mut Connection,
    path: &Path,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    const CHECKPOINT_PAGES: std::ffi::c_int = 1000;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let file = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            let path = file;
            // A connection finds the log only once it has read the database.
            let conn = match Connection::open(&path).and_then(|c| {
                c.execute_batch("PRAGMA busy_timeout=5000;")?;
                c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
                Ok(c)
            }) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("store {}: no checkpoint connection ({e}); the log is checkpointed when the service stops", path.display());
                    return;
                }
            };
            while rx.recv().is_ok() {
                if let Err(e) = conn.wal_checkpoint_v2(Some("main"), rusqlite::wal::CheckpointMode::PASSIVE) {
                    tracing::warn!("store {}: checkpoint failed ({e}); tried again after the next writes", path.display());
                }
            }
        })
        .map_err(|e| StoreError::Worker(format!("starting the checkpoint thread: {e}")))?;
    conn.wal_hook(Some(
        move |_: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
            if pages >= CHECKPOINT_PAGES {
                // Full: one is already asked for.
                let _ = tx.try_send(());
            }
            Ok(())
        },
    ))
    .map_err(|source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(thread)
}

/// Text every store accepts: PostgreSQL cannot store a NUL character, so a row
/// holding one would be refused by the primary for good; it is refused here,
/// before it is written, naming the field.
fn check_text(field: &str, t: &str, max: usize) -> Result<(), StoreError> {
    if t.len() > max {
        let limit = if max >= 1 << 20 {
            format!("{} MiB", max >> 20)
        } else {
            format!("{max} bytes")
        };
        return Err(StoreError::Invalid(format!(
            "{field} is over {limit} ({} bytes)",
            t.len()
        )));
    }
    if let Some(at) = t.find('\0') {
        return Err(StoreError::Invalid(format!(
            "{field} contains a NUL character (\\u0000) at byte {at}, which PostgreSQL cannot store: remove it or send the data base64-encoded"
        )));
    }
    Ok(())
}

/// Queues a write for the primary. The random tag names this very write: the
/// primary keeps the tag of the last row it acknowledged, so a store file that
/// was restored or copied cannot mistake its own later writes for acknowledged ones.
fn outbox(tx: &rusqlite::Transaction<'_>, kind: char, id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO outbox (kind, row_id, tag) VALUES (?1, ?2, random())")?
        .execute(params![kind.to_string(), id])?;
    Ok(())
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", [key, value])?;
    Ok(())
}

/// The columns `conversation_row` reads, in its order.
const CONVERSATION_COLUMNS: &str =
    "id, title, archived, created_at, origin, updated_hlc, title_hlc, archived_hlc";

fn get_conversation(conn: &Connection, id: &str) -> rusqlite::Result<Option<Conversation>> {
    conn.prepare_cached("SELECT id, title, archived, created_at, origin, updated_hlc, title_hlc, archived_hlc FROM conversations WHERE id = ?1")?
        .query_row([id], conversation_row)
        .optional()
}

fn conversation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: r.get(0)?,
        title: r.get(1)?,
        archived: r.get(2)?,
        created_at: r.get(3)?,
        origin: r.get(4)?,
        updated_hlc: r.get(5)?,
        title_hlc: r.get(6)?,
        archived_hlc: r.get(7)?,
    })
}

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        role: r.get(2)?,
        content: r.get(3)?,
        model: r.get(4)?,
        node: r.get(5)?,
        created_at: r.get(6)?,
    })
}

/// The store file exists and only its owner can read it, whatever the umask:
/// it holds conversations. SQLite gives its `-wal` and `-shm` files the same
/// mode. An existing file that others could read is made private (and said so).
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "{} had mode {mode:04o}, readable by others; made it 0600 (it holds conversations)",
            path.display()
        );
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
