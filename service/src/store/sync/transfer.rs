//! Push (the outbox, in batches bounded by rows and bytes) and pull (pages by
//! `(xid8, change_id)` below the oldest running transaction).

use super::super::primary::SyncError;
use super::super::primary::{self, Table};

use super::{Syncer, HELD_BACK_AFTER, MAX_BATCH_BYTES};

impl Syncer {
    pub(super) async fn push_all(&mut self) -> Result<(), SyncError> {
        let full = self.cfg.batch;
        let mut limit = full;
        let node = self.store.node().to_string();
        let mut reconciled = 0;
        loop {
            let device = self.store.device();
            let batch = self.store.outbox_batch(limit, MAX_BATCH_BYTES).await?;
            if batch.rows == 0 {
                return Ok(());
            }
            let known = self.store.acked().await?.map_or(0, |a| a.0);
            let n = (batch.conversations.len() + batch.messages.len()) as u64;
            let d = self.deadline();
            let client = self.client()?;
            let pushed = tokio::time::timeout(
                d,
                primary::push_batch(client, &device, &node, known, &batch),
            )
            .await
            .unwrap_or(Err(SyncError::Timeout(d, "pushing a batch")));
            match pushed {
                Ok(()) => {
                    crate::failpoint::hit("sync-after-commit");
                    self.store.ack(batch.max_seq, Some(batch.max_tag)).await?;
                    let pending = self.store.pending().await?;
                    self.status.send_modify(|s| {
                        s.pushed += n;
                        s.pending = pending;
                    });
                    limit = (limit * 2).min(full);
                }
                // One row the primary cannot take: halve the batch until it is
                // alone, then set it aside.
                Err(e) if e.is_refused_row() && batch.rows > 1 => {
                    limit = (batch.rows / 2).max(1);
                }
                Err(e) if e.is_refused_row() => {
                    let (seq, kind, id) = batch.first.clone().unwrap_or_default();
                    let what = if kind == "c" {
                        "conversation"
                    } else {
                        "message"
                    };
                    tracing::warn!(
                        "sync: the primary refuses {what} {id}: {e}; it is kept here and set aside \
                         (see `robbie-mesh status`), the other rows keep syncing"
                    );
                    self.store.set_aside(seq, kind, id, e.to_string()).await?;
                }
                // The primary's acknowledgement moved without us (a commit whose
                // answer was lost, or another copy of this file): agree again.
                Err(SyncError::AckMismatch { .. }) if reconciled < 2 => {
                    reconciled += 1;
                    let info = self.server.clone().ok_or_else(SyncError::not_connected)?;
                    self.timed_reconcile(&info).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every table's new rows, page by page, in one repeatable-read transaction
    /// (one snapshot and one fence for the round). Each page is applied with its
    /// cursor, so a round cut short keeps what it applied, and while it is being
    /// written here the next page (or the end of the transaction) is already on
    /// its way: one page at a time in each place, in order.
    pub(super) async fn pull_all(&mut self) -> Result<(), SyncError> {
        let device = self.store.device();
        let limit = self.cfg.batch;
        let store = self.store.clone();
        let d = self.deadline();
        let timed = |what| move || SyncError::Timeout(d, what);
        let client = self.client.as_mut().ok_or_else(SyncError::not_connected)?;
        let mut pulled = 0u64;
        // The page being written here: its row count, once written.
        let mut applying: Option<tokio::task::JoinHandle<Result<u64, crate::store::StoreError>>> =
            None;
        let mut applied =
            |done: Result<Result<u64, crate::store::StoreError>, tokio::task::JoinError>| {
                let n =
                    done.unwrap_or_else(|e| Err(crate::store::StoreError::Worker(e.to_string())))?;
                pulled += n;
                Ok::<_, SyncError>(())
            };
        let result = async {
            let tx = tokio::time::timeout(
                d,
                client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start(),
            )
            .await
            .map_err(|_| timed("starting a pull")())??;
            let fence: i64 = tokio::time::timeout(
                d,
                tx.query_typed_one(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8",
                    &[],
                ),
            )
            .await
            .map_err(|_| timed("starting a pull")())??
            .get(0);
            for table in [Table::Conversations, Table::Messages] {
                let mut cursor = store.cursor(table.name()).await?;
                loop {
                    let page = tokio::time::timeout(
                        d,
                        primary::pull_page(
                            &tx,
                            table,
                            cursor,
                            &device,
                            limit,
                            MAX_BATCH_BYTES,
                            fence,
                        ),
                    )
                    .await
                    .map_err(|_| timed("pulling a page")())??;
                    let Some(next) = page.cursor else { break };
                    cursor = next;
                    if let Some(previous) = applying.take() {
                        applied(previous.await)?;
                    }
                    let store = store.clone();
                    applying = Some(tokio::spawn(async move {
                        match page.rows {
                            primary::Rows::Conversations(rows) => {
                                let n = rows.len() as u64;
                                store
                                    .apply_conversations(rows, Some(next))
                                    .await
                                    .map(|()| n)
                            }
                            primary::Rows::Messages(rows) => {
                                let n = rows.len() as u64;
                                store
                                    .apply_messages(rows, Some(next), false)
                                    .await
                                    .map(|()| n)
                            }
                        }
                    }));
                    if !page.more {
                        break;
                    }
                }
            }
            let (ended, last) = tokio::join!(tokio::time::timeout(d, tx.commit()), async {
                match applying.take() {
                    Some(page) => Some(page.await),
                    None => None,
                }
            });
            if let Some(last) = last {
                applied(last)?;
            }
            ended.map_err(|_| timed("ending a pull")())??;
            Ok::<_, SyncError>(())
        }
        .await;
        if let Some(page) = applying.take() {
            // Cut short: the page being written still counts once it is.
            let _ = applied(page.await);
        }
        self.status.send_modify(|s| s.pulled += pulled);
        result
    }

    /// Rows wait behind a transaction open for more than a minute: which one.
    pub(super) async fn held_back(&mut self) -> Result<Option<String>, SyncError> {
        let cursor = self.store.cursor(Table::Messages.name()).await?.0;
        let d = self.deadline();
        let client = self.client()?;
        let r = tokio::time::timeout(d, async {
            let fence: i64 = client
                .query_typed_one(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8",
                    &[],
                )
                .await?
                .get(0);
            primary::held_back_by(&*client, cursor, fence).await
        })
        .await
        .unwrap_or(Ok(None))?;
        Ok(r.filter(|(age, ..)| *age >= HELD_BACK_AFTER).map(|(age, pid, app)| {
            format!(
                "rows written on the primary wait behind a transaction open for {} s (pid {pid}{}); \
                 they come down once it ends (`SELECT pg_terminate_backend({pid})` on the primary ends it)",
                age.as_secs(),
                if app.is_empty() { String::new() } else { format!(", {app}") }
            )
        }))
    }
}
