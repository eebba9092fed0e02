//! `robbie-mesh sync --verify [--repair]`: compares this device's store with the
//! primary, both directions, and repairs what differs.
//!
//! Each side computes, per conversation, the number of messages and a digest: the
//! MD5 of the concatenated MD5s of its messages in id order, each over the
//! message's fields joined by U+001F. PostgreSQL computes its side in SQL, so only
//! the digests travel; only conversations whose digest differs are compared
//! message by message. Conversations' titles and archive flags are compared too.
//! Rows still queued here (on their way) and rows the primary refused (set aside)
//! are reported as such, not as missing.
//!
//! Longer than most files on purpose: comparing and repairing both sides share
//! their row summaries and must agree on them.

use std::collections::{BTreeMap, BTreeSet};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::primary::SyncError;
use super::{Conversation, Store, StoreError, CONVERSATION_COLUMNS};

/// At most this many rows of each list are shown (all are repaired).
const SHOWN: usize = 100;

/// One row that differs between the two sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRef {
    /// `conversation` or `message`.
    pub kind: String,
    pub id: String,
    /// For a message, its conversation.
    pub conversation: Option<String>,
}

/// A list of rows, counted in full and shown up to 100.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rows {
    pub count: usize,
    pub rows: Vec<RowRef>,
}

impl Rows {
    fn push(&mut self, r: RowRef) {
        self.count += 1;
        if self.rows.len() < SHOWN {
            self.rows.push(r);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub here: usize,
    pub primary: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repaired {
    /// Rows queued again for the primary.
    pub pushed: usize,
    /// Rows fetched from the primary.
    pub pulled: usize,
    /// Messages whose content differed, replaced by the primary's.
    pub replaced: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub conversations: Counts,
    pub messages: Counts,
    /// Here, not on the primary (and not queued).
    pub missing_on_primary: Rows,
    /// On the primary, not here.
    pub missing_here: Rows,
    /// On both, different: a message's content, a conversation's title or flag.
    pub differ: Rows,
    /// Queued here, on their way to the primary.
    pub pending: u64,
    /// Refused by the primary and set aside here.
    pub rejected: u64,
    pub repaired: Option<Repaired>,
    /// The comparison after the repair.
    pub after: Option<Box<VerifyReport>>,
    pub elapsed_ms: u64,
    /// Every row behind the lists (for the repair; not sent).
    #[serde(skip)]
    all: Vec<(Side, RowRef)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    MissingOnPrimary,
    MissingHere,
    Differ,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing_on_primary.count == 0 && self.missing_here.count == 0 && self.differ.count == 0
    }

    fn add(&mut self, side: Side, r: RowRef) {
        match side {
            Side::MissingOnPrimary => self.missing_on_primary.push(r.clone()),
            Side::MissingHere => self.missing_here.push(r.clone()),
            Side::Differ => self.differ.push(r.clone()),
        }
        self.all.push((side, r));
    }

    /// What a person reads: one line per finding, then the verdict.
    pub fn text(&self) -> String {
        let mut out = format!(
            "conversations: {} here, {} on the primary; messages: {} here, {} on the primary",
            self.conversations.here,
            self.conversations.primary,
            self.messages.here,
            self.messages.primary
        );
        let list = |out: &mut String, title: &str, rows: &Rows| {
            if rows.count == 0 {
                return;
            }
            out.push_str(&format!("\n{title}: {}", rows.count));
            for r in &rows.rows {
                match &r.conversation {
                    Some(c) => out.push_str(&format!("\n  {} {} (conversation {c})", r.kind, r.id)),
                    None => out.push_str(&format!("\n  {} {}", r.kind, r.id)),
                }
            }
            if rows.count > rows.rows.len() {
                out.push_str(&format!("\n  … and {} more", rows.count - rows.rows.len()));
            }
        };
        list(&mut out, "missing on the primary", &self.missing_on_primary);
        list(&mut out, "missing here", &self.missing_here);
        list(&mut out, "different on the two sides", &self.differ);
        if self.pending > 0 {
            out.push_str(&format!(
                "\n{} rows are queued here, on their way to the primary",
                self.pending
            ));
        }
        if self.rejected > 0 {
            out.push_str(&format!(
                "\n{} rows were refused by the primary and are set aside here (see `robbie-mesh status`)",
                self.rejected
            ));
        }
        if let Some(r) = &self.repaired {
            out.push_str(&format!(
                "\nrepaired: {} rows pushed again, {} fetched from the primary, {} replaced by the primary's copy",
                r.pushed, r.pulled, r.replaced
            ));
        }
        match &self.after {
            Some(after) if after.is_clean() => out.push_str("\nafter the repair: in agreement"),
            Some(after) => out.push_str(&format!("\nafter the repair, still:\n{}", after.text())),
            None if self.is_clean() => out.push_str("\nthis device and the primary agree"),
            None => out.push_str("\nrun `robbie-mesh sync --verify --repair` to repair"),
        }
        out.push_str(&format!(" ({} ms)", self.elapsed_ms));
        out
    }
}

/// A message's fields as both sides hash them.
const PG_ROW_HASH: &str = "md5(concat_ws(chr(31), id::text, conversation_id::text, role, \
     CASE WHEN model IS NULL THEN 'n' ELSE 's' || model END, node, created_at::text, content))";

fn row_hash(m: &super::Message) -> String {
    let model = match &m.model {
        Some(s) => format!("s{s}"),
        None => "n".into(),
    };
    let text = [
        m.id.as_str(),
        m.conversation_id.as_str(),
        m.role.as_str(),
        model.as_str(),
        m.node.as_str(),
        &m.created_at.to_string(),
        m.content.as_str(),
    ]
    .join("\u{1f}");
    hex(&Md5::digest(text.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// (messages, digest) per conversation id.
type Summary = BTreeMap<String, (usize, String)>;

fn local_summary(store: &Store) -> Result<(Summary, BTreeMap<String, Conversation>), StoreError> {
    store.with_blocking(|conn| {
        let mut sums = Summary::new();
        let mut st = conn.prepare(
            "SELECT id, conversation_id, role, content, model, node, created_at FROM messages ORDER BY conversation_id, id",
        )?;
        let mut rows = st.query([])?;
        let mut current: Option<(String, usize, Md5)> = None;
        while let Some(r) = rows.next()? {
            let m = super::message_row(r)?;
            let h = row_hash(&m);
            match &mut current {
                Some((c, n, d)) if *c == m.conversation_id => {
                    *n += 1;
                    d.update(h.as_bytes());
                }
                _ => {
                    if let Some((c, n, d)) = current.take() {
                        sums.insert(c, (n, hex(&d.finalize())));
                    }
                    let mut d = Md5::new();
                    d.update(h.as_bytes());
                    current = Some((m.conversation_id.clone(), 1, d));
                }
            }
        }
        if let Some((c, n, d)) = current.take() {
            sums.insert(c, (n, hex(&d.finalize())));
        }
        let convs = conn
            .prepare(&format!("SELECT {CONVERSATION_COLUMNS} FROM conversations"))?
            .query_map([], super::conversation_row)?
            .map(|c| c.map(|c| (c.id.clone(), c)))
            .collect::<Result<_, _>>()?;
        Ok((sums, convs))
    })
}

fn local_hashes(store: &Store, conversation: &str) -> Result<BTreeMap<String, String>, StoreError> {
    store.with_blocking(|conn| {
        conn.prepare("SELECT id, conversation_id, role, content, model, node, created_at FROM messages WHERE conversation_id = ?1")?
            .query_map([conversation], super::message_row)?
            .map(|m| m.map(|m| (m.id.clone(), row_hash(&m))))
            .collect()
    })
}

/// Rows as (kind, id).
type RowKeys = BTreeSet<(String, String)>;

/// Rows queued or set aside here: (kind, id).
fn queued(store: &Store) -> Result<(RowKeys, u64, u64), StoreError> {
    store.with_blocking(|conn| {
        let mut set = BTreeSet::new();
        let mut pending = 0;
        let mut rejected = 0;
        for (sql, n) in [
            ("SELECT kind, row_id FROM outbox", &mut pending),
            ("SELECT kind, row_id FROM sync_rejected", &mut rejected),
        ] {
            let mut st = conn.prepare(sql)?;
            let rows =
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for r in rows {
                set.insert(r?);
                *n += 1;
            }
        }
        Ok((set, pending, rejected))
    })
}

/// Compares this device with the primary.
pub async fn compare(
    client: &tokio_postgres::Client,
    store: &Store,
) -> Result<VerifyReport, SyncError> {
    let s = store.clone();
    let (local, local_convs) = tokio::task::spawn_blocking(move || local_summary(&s))
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))??;
    let s = store.clone();
    let (queued, pending, rejected) = tokio::task::spawn_blocking(move || queued(&s))
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))??;
    let remote: Summary = client
        .query(
            &format!(
                "SELECT conversation_id::text, count(*), md5(string_agg({PG_ROW_HASH}, '' ORDER BY id)) \
                 FROM robbie.messages GROUP BY conversation_id"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get::<_, i64>(1) as usize, r.get(2))))
        .collect();
    let remote_convs: BTreeMap<String, Conversation> = client
        .query(
            "SELECT id::text, title, archived, created_at, origin, updated_hlc, title_hlc, archived_hlc FROM robbie.conversations",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let c = super::primary::conversation(r);
            (c.id.clone(), c)
        })
        .collect();

    let mut report = VerifyReport {
        conversations: Counts {
            here: local_convs.len(),
            primary: remote_convs.len(),
        },
        messages: Counts {
            here: local.values().map(|v| v.0).sum(),
            primary: remote.values().map(|v| v.0).sum(),
        },
        pending,
        rejected,
        ..Default::default()
    };
    let is_queued = |k: &str, id: &str| queued.contains(&(k.to_string(), id.to_string()));
    let conv = |id: &str| RowRef {
        kind: "conversation".into(),
        id: id.to_string(),
        conversation: None,
    };
    for (id, c) in &local_convs {
        match remote_convs.get(id) {
            None if !is_queued("c", id) => report.add(Side::MissingOnPrimary, conv(id)),
            Some(r) if (r.title != c.title || r.archived != c.archived) && !is_queued("c", id) => {
                report.add(Side::Differ, conv(id))
            }
            _ => {}
        }
    }
    for id in remote_convs.keys() {
        if !local_convs.contains_key(id) {
            report.add(Side::MissingHere, conv(id));
        }
    }
    // Message by message, only where the digests differ.
    let differing: BTreeSet<&String> = local
        .iter()
        .filter(|(c, v)| remote.get(*c) != Some(*v))
        .map(|(c, _)| c)
        .chain(remote.keys().filter(|c| !local.contains_key(*c)))
        .collect();
    if !differing.is_empty() {
        let ids: Vec<&str> = differing.iter().map(|s| s.as_str()).collect();
        let mut theirs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for r in client
            .query(
                &format!(
                    "SELECT conversation_id::text, id::text, {PG_ROW_HASH} FROM robbie.messages \
                     WHERE conversation_id = ANY($1::text[]::uuid[])"
                ),
                &[&ids],
            )
            .await?
        {
            theirs
                .entry(r.get(0))
                .or_default()
                .insert(r.get(1), r.get(2));
        }
        for c in differing {
            let s = store.clone();
            let cid = c.clone();
            let ours = tokio::task::spawn_blocking(move || local_hashes(&s, &cid))
                .await
                .map_err(|e| StoreError::Worker(e.to_string()))??;
            let empty = BTreeMap::new();
            let theirs = theirs.get(c).unwrap_or(&empty);
            let msg = |id: &str| RowRef {
                kind: "message".into(),
                id: id.to_string(),
                conversation: Some(c.clone()),
            };
            for (id, h) in &ours {
                match theirs.get(id) {
                    None if !is_queued("m", id) => report.add(Side::MissingOnPrimary, msg(id)),
                    Some(t) if t != h => report.add(Side::Differ, msg(id)),
                    _ => {}
                }
            }
            for id in theirs.keys() {
                if !ours.contains_key(id) {
                    report.add(Side::MissingHere, msg(id));
                }
            }
        }
    }
    Ok(report)
}

/// Repairs what `report` found: rows missing on the primary are queued again (the
/// next round pushes them); rows missing here are fetched; a message whose content
/// differs takes the primary's copy; a conversation whose title or flag differs is
/// pushed and fetched again, so each field's newest stamp wins on both sides.
pub async fn repair(
    client: &tokio_postgres::Client,
    store: &Store,
    report: &VerifyReport,
) -> Result<Repaired, SyncError> {
    let mut requeue = Vec::new();
    let mut fetch_convs = Vec::new();
    let mut fetch_msgs = Vec::new();
    let mut replace_msgs = Vec::new();
    for (side, r) in &report.all {
        let kind = if r.kind == "conversation" { 'c' } else { 'm' };
        match (side, kind) {
            (Side::MissingOnPrimary, k) => requeue.push((k, r.id.clone())),
            (Side::MissingHere, 'c') => fetch_convs.push(r.id.clone()),
            (Side::MissingHere, _) => fetch_msgs.push(r.id.clone()),
            (Side::Differ, 'c') => {
                requeue.push(('c', r.id.clone()));
                fetch_convs.push(r.id.clone());
            }
            (Side::Differ, _) => replace_msgs.push(r.id.clone()),
        }
    }
    let mut done = Repaired {
        pushed: requeue.len(),
        ..Default::default()
    };
    if !fetch_convs.is_empty() {
        let rows: Vec<Conversation> = client
            .query(
                "SELECT id::text, title, archived, created_at, origin, updated_hlc, title_hlc, archived_hlc \
                 FROM robbie.conversations WHERE id = ANY($1::text[]::uuid[])",
                &[&fetch_convs],
            )
            .await?
            .iter()
            .map(super::primary::conversation)
            .collect();
        done.pulled += rows.len();
        store.apply_conversations(rows, None).await?;
    }
    for (ids, replace) in [(fetch_msgs, false), (replace_msgs, true)] {
        for chunk in ids.chunks(1000) {
            let rows: Vec<super::Message> = client
                .query(
                    "SELECT id::text, conversation_id::text, role, content, model, node, created_at \
                     FROM robbie.messages WHERE id = ANY($1::text[]::uuid[])",
                    &[&chunk],
                )
                .await?
                .iter()
                .map(super::primary::message)
                .collect();
            if replace {
                done.replaced += rows.len();
            } else {
                done.pulled += rows.len();
            }
            store.apply_messages(rows, None, replace).await?;
        }
    }
    if !requeue.is_empty() {
        store.requeue(requeue).await?;
    }
    Ok(done)
}
