//! The store's side of sync: what to push next (the outbox), what the primary has
//! acknowledged, the pull cursors, the rows applied from the primary, rows the
//! primary refused (set aside), and the resets that follow a replaced primary or a
//! restored / copied store file.
//!
//! Local bookkeeping in `meta`: `acked_seq` and `acked_tag` (the last outbox row
//! the primary acknowledged, as this file knows it) and `primary` (the identity of
//! the primary this file last synced with, see `primary::ServerInfo::identity`).

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::hlc::{self, Stamp};
use super::primary::Cursor;
use super::{Conversation, Message, Store, StoreError, CONVERSATION_COLUMNS};

/// What `sync` pushes next: outbox rows up to `max_seq`, with the rows they name.
#[derive(Debug, Default)]
pub struct Batch {
    pub max_seq: i64,
    /// The tag of the outbox row `max_seq`.
    pub max_tag: i64,
    /// Outbox rows in the batch.
    pub rows: usize,
    /// The first outbox row: (seq, kind, row id), what is set aside when a batch
    /// of one is refused.
    pub first: Option<(i64, String, String)>,
    pub conversations: Vec<Conversation>,
    pub messages: Vec<Message>,
}

/// A row the primary refused, kept here with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// `conversation` or `message`.
    pub kind: String,
    pub id: String,
    pub reason: String,
    /// Unix ms.
    pub at: i64,
}

fn kind_name(k: &str) -> &'static str {
    if k == "c" {
        "conversation"
    } else {
        "message"
    }
}

impl Store {
    /// The oldest outbox rows, at most `limit` of them and about `max_bytes` (at
    /// least one row), with the rows they name (a conversation once, in its current
    /// state, however often it changed).
    pub async fn outbox_batch(&self, limit: usize, max_bytes: usize) -> Result<Batch, StoreError> {
        self.with(move |conn, inner| {
            let mut q = || -> rusqlite::Result<Batch> {
                let tx = conn.transaction()?;
                let mut b = Batch::default();
                let mut bytes = 0usize;
                {
                    let mut st = tx.prepare_cached(
                        "SELECT o.seq, o.tag, o.kind, o.row_id, \
                           CASE o.kind WHEN 'm' THEN (SELECT octet_length(content) + coalesce(octet_length(model), 0) FROM messages WHERE id = o.row_id) \
                                       ELSE (SELECT octet_length(title) FROM conversations WHERE id = o.row_id) END \
                         FROM outbox o ORDER BY o.seq LIMIT ?1",
                    )?;
                    let mut rows = st.query([limit as i64])?;
                    while let Some(r) = rows.next()? {
                        let size = r.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as usize + 200;
                        bytes = bytes.saturating_add(size);
                        if b.rows > 0 && bytes > max_bytes {
                            break;
                        }
                        b.max_seq = r.get(0)?;
                        b.max_tag = r.get(1)?;
                        if b.rows == 0 {
                            b.first = Some((b.max_seq, r.get(2)?, r.get(3)?));
                        }
                        b.rows += 1;
                    }
                }
                if b.rows == 0 {
                    return Ok(b);
                }
                b.conversations = tx
                    .prepare_cached(&format!(
                        "SELECT {CONVERSATION_COLUMNS} FROM conversations \
                         WHERE id IN (SELECT row_id FROM outbox WHERE kind = 'c' AND seq <= ?1)"
                    ))?
                    .query_map([b.max_seq], super::conversation_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                b.messages = tx
                    .prepare_cached(
                        "SELECT m.id, m.conversation_id, m.role, m.content, m.model, m.node, m.created_at \
                         FROM outbox o JOIN messages m ON m.id = o.row_id WHERE o.kind = 'm' AND o.seq <= ?1 ORDER BY o.seq",
                    )?
                    .query_map([b.max_seq], super::message_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(b)
            };
            q().map_err(|e| inner.sql(e))
        })
        .await
    }

    /// The primary has everything up to `seq` (whose outbox row carries `tag`):
    /// those outbox rows go, and this file remembers the acknowledgement.
    pub async fn ack(&self, seq: i64, tag: Option<i64>) -> Result<(), StoreError> {
        self.with(move |conn, inner| {
            let mut run = || -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                tx.execute("DELETE FROM outbox WHERE seq <= ?1", [seq])?;
                set_acked(&tx, seq, tag)?;
                tx.commit()
            };
            run().map_err(|e| inner.sql(e))
        })
        .await
    }

    /// What this file knows the primary acknowledged: (seq, tag); `None` for a
    /// file that never recorded one (made by an earlier build, or never synced).
    pub async fn acked(&self) -> Result<Option<(i64, Option<i64>)>, StoreError> {
        self.with(|conn, inner| {
            let seq = super::meta(conn, "acked_seq").map_err(|e| inner.sql(e))?;
            let tag = super::meta(conn, "acked_tag").map_err(|e| inner.sql(e))?;
            Ok(seq
                .and_then(|s| s.parse().ok())
                .map(|s| (s, tag.and_then(|t| t.parse().ok()))))
        })
        .await
    }

    /// The tag of outbox row `seq`, if that row is still queued.
    pub async fn outbox_tag(&self, seq: i64) -> Result<Option<i64>, StoreError> {
        self.with(move |conn, inner| {
            conn.query_row("SELECT tag FROM outbox WHERE seq = ?1", [seq], |r| r.get(0))
                .optional()
                .map_err(|e| inner.sql(e))
        })
        .await
    }

    /// The identity of the primary this file last synced with.
    pub async fn known_primary(&self) -> Result<Option<String>, StoreError> {
        self.with(|conn, inner| super::meta(conn, "primary").map_err(|e| inner.sql(e)))
            .await
    }

    pub async fn set_known_primary(&self, id: String) -> Result<(), StoreError> {
        self.with(move |conn, inner| {
            super::set_meta(conn, "primary", &id).map_err(|e| inner.sql(e))
        })
        .await
    }

    /// The primary is not the one this file synced with (or lost what it had
    /// acknowledged): every pull starts over, every local row is queued again
    /// (pushing is idempotent), and the primary's acknowledgement `acked` is taken
    /// as this file's. Returns how many rows were queued again.
    pub async fn reset_for_new_primary(
        &self,
        primary: String,
        acked: (i64, Option<i64>),
    ) -> Result<u64, StoreError> {
        self.with(move |conn, inner| {
            let mut run = || -> rusqlite::Result<u64> {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let n = requeue_all(&tx)?;
                set_acked(&tx, acked.0, acked.1)?;
                super::set_meta(&tx, "primary", &primary)?;
                tx.commit()?;
                Ok(n)
            };
            run().map_err(|e| inner.sql(e))
        })
        .await
    }

    /// This file is behind what the primary acknowledged for its device id (it was
    /// restored from a backup, or copied from another device that kept running):
    /// it becomes a new device with a new id, pulls everything and pushes every
    /// local row again. Returns (the new id, rows queued again).
    pub async fn become_new_device(&self, primary: String) -> Result<(String, u64), StoreError> {
        self.with(move |conn, inner| {
            let id = uuid::Uuid::now_v7().to_string();
            let mut run = || -> rusqlite::Result<u64> {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let n = requeue_all(&tx)?;
                set_acked(&tx, 0, None)?;
                super::set_meta(&tx, "primary", &primary)?;
                super::set_meta(&tx, "device_id", &id)?;
                tx.commit()?;
                Ok(n)
            };
            let n = run().map_err(|e| inner.sql(e))?;
            *inner.device.lock().unwrap_or_else(|p| p.into_inner()) = id.clone();
            Ok((id, n))
        })
        .await
    }

    /// The primary refuses outbox row `seq` for good: it is kept aside with the
    /// reason, out of the outbox, so the rows after it keep syncing.
    pub async fn set_aside(
        &self,
        seq: i64,
        kind: String,
        row_id: String,
        reason: String,
    ) -> Result<(), StoreError> {
        self.with(move |conn, inner| {
            let mut run = || -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                tx.execute(
                    "INSERT OR REPLACE INTO sync_rejected (seq, kind, row_id, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![seq, kind, row_id, reason, hlc::now_ms() as i64],
                )?;
                tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
                tx.commit()
            };
            run().map_err(|e| inner.sql(e))
        })
        .await
    }

    /// Rows the primary refused: how many, and the newest `limit` of them.
    pub async fn rejected(&self, limit: usize) -> Result<(u64, Vec<Rejected>), StoreError> {
        self.with(move |conn, inner| {
            let run = || -> rusqlite::Result<(u64, Vec<Rejected>)> {
                let n: i64 = conn.query_row("SELECT count(*) FROM sync_rejected", [], |r| r.get(0))?;
                let rows = conn
                    .prepare_cached("SELECT kind, row_id, reason, at FROM sync_rejected ORDER BY seq DESC LIMIT ?1")?
                    .query_map([limit as i64], |r| {
                        Ok(Rejected {
                            kind: kind_name(&r.get::<_, String>(0)?).to_string(),
                            id: r.get(1)?,
                            reason: r.get(2)?,
                            at: r.get(3)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((n as u64, rows))
            };
            run().map_err(|e| inner.sql(e))
        })
        .await
    }

    /// Queues rows again for the primary (`sync --verify --repair`): `kind` is `c`
    /// or `m`.
    pub async fn requeue(&self, rows: Vec<(char, String)>) -> Result<(), StoreError> {
        self.write_with(move |conn, inner| {
            let mut run = || -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                for (k, id) in &rows {
                    super::outbox(&tx, *k, id)?;
                }
                tx.commit()
            };
            run().map_err(|e| inner.sql(e))
        })
        .await
    }

    pub async fn cursor(&self, table: &'static str) -> Result<Cursor, StoreError> {
        self.with(move |conn, inner| {
            conn.query_row(
                "SELECT xid, change_id FROM sync_cursor WHERE tbl = ?1",
                [table],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map(|c| c.unwrap_or((0, 0)))
            .map_err(|e| inner.sql(e))
        })
        .await
    }

    /// Conversations from the primary, each field's newest stamp winning, with the
    /// cursor (none: a repair, the cursor stays).
    pub async fn apply_conversations(
        &self,
        rows: Vec<Conversation>,
        cursor: Option<Cursor>,
    ) -> Result<(), StoreError> {
        self.with(move |conn, inner| {
            let now = hlc::now_ms();
            let mut skewed: HashMap<String, Duration> = HashMap::new();
            {
                let mut clock = inner.hlc.lock().unwrap_or_else(|p| p.into_inner());
                for c in &rows {
                    if let Some(stamp) = Stamp::decode(&c.updated_hlc) {
                        if let Some(ahead) = clock.observe(stamp, now) {
                            skewed.insert(c.updated_hlc.splitn(3, '-').nth(2).unwrap_or("?").to_string(), ahead);
                        }
                    }
                }
            }
            for (device, ahead) in skewed {
                tracing::warn!("device {device}'s clock is {}s ahead of ours; its stamps are not followed", ahead.as_secs());
            }
            let pulled = cursor.is_some();
            inner.write_maybe_pulled(pulled, conn, |tx| {
                let mut st = tx.prepare_cached(
                    "INSERT INTO conversations (id, title, archived, created_at, origin, updated_hlc, title_hlc, archived_hlc) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (id) DO UPDATE SET \
                       title = CASE WHEN excluded.title_hlc > conversations.title_hlc THEN excluded.title ELSE conversations.title END, \
                       title_hlc = max(conversations.title_hlc, excluded.title_hlc), \
                       archived = CASE WHEN excluded.archived_hlc > conversations.archived_hlc THEN excluded.archived ELSE conversations.archived END, \
                       archived_hlc = max(conversations.archived_hlc, excluded.archived_hlc), \
                       updated_hlc = max(conversations.updated_hlc, excluded.updated_hlc) \
                     WHERE excluded.title_hlc > conversations.title_hlc OR excluded.archived_hlc > conversations.archived_hlc",
                )?;
                for c in &rows {
                    st.execute(params![c.id, c.title, c.archived, c.created_at, c.origin, c.updated_hlc, c.title_hlc, c.archived_hlc])?;
                }
                match &cursor {
                    Some(c) => save_cursor(tx, "conversations", c),
                    None => Ok(()),
                }
            })
        })
        .await
    }

    /// Messages from the primary (already here: ignored, unless `replace`), with
    /// the cursor (none: a repair).
    pub async fn apply_messages(
        &self,
        rows: Vec<Message>,
        cursor: Option<Cursor>,
        replace: bool,
    ) -> Result<(), StoreError> {
        self.with(move |conn, inner| {
            inner.write_maybe_pulled(cursor.is_some(), conn, |tx| {
                let mut st = tx.prepare_cached(if replace {
                    "INSERT OR REPLACE INTO messages (id, conversation_id, role, content, model, node, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                } else {
                    "INSERT INTO messages (id, conversation_id, role, content, model, node, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (id) DO NOTHING"
                })?;
                for m in &rows {
                    st.execute(params![m.id, m.conversation_id, m.role, m.content, m.model, m.node, m.created_at])?;
                }
                match &cursor {
                    Some(c) => save_cursor(tx, "messages", c),
                    None => Ok(()),
                }
            })
        })
        .await
    }
}

fn set_acked(conn: &Connection, seq: i64, tag: Option<i64>) -> rusqlite::Result<()> {
    super::set_meta(conn, "acked_seq", &seq.to_string())?;
    match tag {
        Some(t) => super::set_meta(conn, "acked_tag", &t.to_string()),
        None => conn
            .execute("DELETE FROM meta WHERE key = 'acked_tag'", [])
            .map(drop),
    }
}

/// Every local row into the outbox again (those already queued, or set aside,
/// excepted), and every pull cursor back to the start.
fn requeue_all(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<u64> {
    tx.execute("DELETE FROM sync_cursor", [])?;
    let c = tx.execute(
        "INSERT INTO outbox (kind, row_id, tag) SELECT 'c', id, random() FROM conversations \
         WHERE id NOT IN (SELECT row_id FROM outbox WHERE kind = 'c') \
           AND id NOT IN (SELECT row_id FROM sync_rejected WHERE kind = 'c') ORDER BY id",
        [],
    )?;
    let m = tx.execute(
        "INSERT INTO outbox (kind, row_id, tag) SELECT 'm', id, random() FROM messages \
         WHERE id NOT IN (SELECT row_id FROM outbox WHERE kind = 'm') \
           AND id NOT IN (SELECT row_id FROM sync_rejected WHERE kind = 'm') ORDER BY id",
        [],
    )?;
    Ok((c + m) as u64)
}

fn save_cursor(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    (xid, change): &Cursor,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO sync_cursor (tbl, xid, change_id) VALUES (?1, ?2, ?3) ON CONFLICT (tbl) DO UPDATE SET xid = excluded.xid, change_id = excluded.change_id",
    )?
    .execute(params![table, xid, change])?;
    Ok(())
}
