//! What the `robbie-mesh db` commands do with the store: list conversations, export
//! everything as JSON Lines, and connect to the primary for `db migrate`. They read
//! the SQLite file directly, so they work whether or not the service runs.

use std::io::Write;

use rusqlite::params;

use super::{conversation_row, message_row, Store, StoreError};
use crate::config::SyncConfig;

/// One line per conversation: id, messages, created, title (archived marked).
pub fn list(store: &Store, archived: bool) -> Result<String, StoreError> {
    store.with_blocking(|conn| {
        let mut st = conn.prepare(
            "SELECT c.id, c.title, c.archived, c.created_at, c.origin, c.updated_hlc, c.title_hlc, c.archived_hlc, \
             (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) \
             FROM conversations c WHERE (?1 OR c.archived = 0) ORDER BY c.id DESC",
        )?;
        let mut out = format!(
            "{:<36}  {:>8}  {:<16}  {:<12}  TITLE\n",
            "ID", "MESSAGES", "CREATED (UTC)", "NODE"
        );
        let rows = st.query_map(params![archived], |r| {
            Ok((conversation_row(r)?, r.get::<_, i64>(8)?))
        })?;
        let mut n = 0;
        for row in rows {
            let (c, count) = row?;
            let created = crate::util::rfc3339(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(c.created_at as u64),
            );
            let created = created.get(..16).unwrap_or(&created).replace('T', " ");
            let title = if c.archived {
                format!("{} (archived)", c.title)
            } else {
                c.title
            };
            out.push_str(&format!(
                "{:<36}  {count:>8}  {created:<16}  {:<12}  {title}\n",
                c.id, c.origin
            ));
            n += 1;
        }
        if n == 0 {
            out = "no conversations in the local store yet\n".into();
        }
        Ok(out)
    })
}

/// Every conversation, then its messages, one JSON object per line, each with a
/// `type` of `conversation` or `message`. Returns (conversations, messages).
pub fn export(store: &Store, out: &mut dyn Write) -> Result<(u64, u64), StoreError> {
    let io = |e: std::io::Error| StoreError::Invalid(format!("writing the export: {e}"));
    let mut counts = (0, 0);
    let mut lines: Vec<String> = Vec::new();
    store.with_blocking(|conn| {
        let mut convs = conn.prepare(&format!("SELECT {} FROM conversations ORDER BY id", super::CONVERSATION_COLUMNS))?;
        let mut msgs = conn.prepare(
            "SELECT id, conversation_id, role, content, model, node, created_at FROM messages WHERE conversation_id = ?1 ORDER BY id",
        )?;
        for c in convs.query_map([], conversation_row)? {
            let c = c?;
            lines.push(tagged("conversation", &c));
            counts.0 += 1;
            for m in msgs.query_map([&c.id], message_row)? {
                lines.push(tagged("message", &m?));
                counts.1 += 1;
            }
        }
        Ok(())
    })?;
    for l in lines {
        out.write_all(l.as_bytes()).map_err(io)?;
        out.write_all(b"\n").map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(counts)
}

fn tagged<T: serde::Serialize>(kind: &str, v: &T) -> String {
    let mut j = serde_json::to_value(v).unwrap_or_default();
    if let Some(o) = j.as_object_mut() {
        o.insert("type".into(), kind.into());
    }
    j.to_string()
}

/// A PostgreSQL connection: from a URL / conninfo string if given, else the
/// config's `[store.sync]` (through the PostgreSQL endpoint, password from the
/// keychain or `PGPASSWORD`).
pub async fn connect(
    url: Option<&str>,
    sync: Option<&SyncConfig>,
) -> anyhow::Result<tokio_postgres::Client> {
    let pg: tokio_postgres::Config = match (url, sync) {
        (Some(u), _) => u.parse().map_err(|e| anyhow::anyhow!("--url `{u}`: {e}"))?,
        (None, Some(s)) => {
            let mut pg = tokio_postgres::Config::new();
            pg.host(s.address.ip().to_string()).port(s.address.port()).user(&s.user).dbname(&s.database);
            let password = std::env::var("PGPASSWORD")
                .ok()
                .or_else(|| crate::keychain::get(&crate::keychain::postgres_account(&s.service)).ok().flatten());
            if let Some(p) = password {
                pg.password(p);
            }
            pg
        }
        (None, None) => anyhow::bail!(
            "no PostgreSQL to talk to: pass --url postgres://USER@HOST:PORT/DB, or configure [store.sync] in the config"
        ),
    };
    let (client, conn) = pg.connect(tokio_postgres::NoTls).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to PostgreSQL: {}",
            super::sync::SyncError::from(e)
        )
    })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
