//! The local store's schema, as append-only migrations: each entry runs once, in
//! order, in one transaction with the `user_version` it brings the file to. Never
//! edit a shipped entry; add the next one.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

pub const MIGRATIONS: &[&str] = &[
    // 1: conversations, messages, the outbox and the sync cursors.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE conversations (
         id TEXT PRIMARY KEY,           -- UUIDv7, made on the device that created it
         title TEXT NOT NULL,
         archived INTEGER NOT NULL DEFAULT 0,
         created_at INTEGER NOT NULL,   -- unix ms
         origin TEXT NOT NULL,          -- the node that created it
         updated_hlc TEXT NOT NULL      -- hybrid logical clock of the last metadata write
     );
     CREATE TABLE messages (
         id TEXT PRIMARY KEY,           -- UUIDv7; messages never change
         conversation_id TEXT NOT NULL,
         role TEXT NOT NULL,
         content TEXT NOT NULL,
         model TEXT,
         node TEXT NOT NULL,            -- the node it was written on
         created_at INTEGER NOT NULL
     );
     CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
     CREATE TABLE outbox (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         kind TEXT NOT NULL,            -- 'c' conversation, 'm' message
         row_id TEXT NOT NULL
     );
     CREATE TABLE sync_cursor (
         tbl TEXT PRIMARY KEY,          -- 'conversations' | 'messages'
         xid TEXT NOT NULL,             -- PostgreSQL xid8 of the last row applied
         change_id INTEGER NOT NULL
     );",
    // 2: a stamp per metadata field (a rename and an archive made on two devices both
    // win); a random tag per outbox row (the primary's acknowledgement names the
    // exact write, so a restored or copied file is told apart from a crash); rows
    // the primary refused, set aside; cursors as numbers, reset once: the pulls of
    // builds before this one ordered transaction ids as text and could skip rows
    // (pulling again is idempotent).
    "ALTER TABLE conversations ADD COLUMN title_hlc TEXT NOT NULL DEFAULT '';
     ALTER TABLE conversations ADD COLUMN archived_hlc TEXT NOT NULL DEFAULT '';
     UPDATE conversations SET title_hlc = updated_hlc, archived_hlc = updated_hlc;
     ALTER TABLE outbox ADD COLUMN tag INTEGER NOT NULL DEFAULT 0;
     DROP TABLE sync_cursor;
     CREATE TABLE sync_cursor (
         tbl TEXT PRIMARY KEY,          -- 'conversations' | 'messages'
         xid INTEGER NOT NULL,          -- PostgreSQL xid8 of the last row applied
         change_id INTEGER NOT NULL
     );
     CREATE TABLE sync_rejected (
         seq INTEGER PRIMARY KEY,       -- the outbox row it was
         kind TEXT NOT NULL,
         row_id TEXT NOT NULL,
         reason TEXT NOT NULL,
         at INTEGER NOT NULL            -- unix ms
     );",
];

pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(sql)?;
        tx.execute_batch(m).map_err(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    Ok(())
}
