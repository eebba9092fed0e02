//! Connecting to the primary through the PostgreSQL endpoint, and reconciling
//! this device with it after every connect (see the module's doc in `mod.rs`).

use std::time::Duration;

use super::super::primary::SyncError;
use super::super::primary::{self, ServerInfo, Table};

use super::Syncer;

impl Syncer {
    pub(super) async fn connect(&mut self) -> Result<(), SyncError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_some() {
            return Ok(());
        }
        let t = self.cfg.timeout.as_millis();
        let mut pg = tokio_postgres::Config::new();
        pg.host(self.cfg.address.ip().to_string())
            .port(self.cfg.address.port())
            .user(&self.cfg.user)
            .dbname(&self.cfg.database)
            .application_name("robbie-mesh sync")
            .connect_timeout(Duration::from_secs(5))
            // A device that vanishes mid-transaction (a lid closed) is cut off by
            // the server, so it holds neither the pull fence nor a row lock for long.
            .options(format!(
                "-c statement_timeout={t} -c lock_timeout={t} -c idle_in_transaction_session_timeout={t}"
            ))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        // The keychain is asked once, and again only after a refused login (not
        // on every retry while the primary is unreachable).
        if self.password.is_none() {
            let account = crate::keychain::postgres_account(&self.cfg.service);
            let read =
                tokio::task::spawn_blocking(move || crate::keychain::get(&account).ok().flatten())
                    .await;
            self.password = Some(read.ok().flatten());
        }
        if let Some(Some(p)) = &self.password {
            pg.password(p);
        }
        let (client, conn) = match self
            .timed("connecting", async {
                pg.connect(tokio_postgres::NoTls).await.map_err(Into::into)
            })
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if let SyncError::Pg { code: Some(c), .. } = &e {
                    if c.starts_with("28") {
                        self.password = None;
                    }
                }
                return Err(e);
            }
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // Rows are read and written in this build's shape only.
        let info = self
            .timed("checking the schema", async {
                primary::check_schema(&client).await?;
                primary::server_info(&client).await
            })
            .await?;
        self.client = Some(client);
        self.server = Some(info.clone());
        if !info.read_only {
            self.timed_reconcile(&info).await?;
        }
        Ok(())
    }

    pub(super) async fn timed_reconcile(&mut self, info: &ServerInfo) -> Result<(), SyncError> {
        let d = self.deadline();
        tokio::time::timeout(d, self.reconcile(info))
            .await
            .unwrap_or(Err(SyncError::Timeout(d, "reconciling with the primary")))
    }

    /// First thing after connecting to a writable primary: agree with it on what
    /// it has from this device, and whether it is still the same primary.
    pub(super) async fn reconcile(&mut self, info: &ServerInfo) -> Result<(), SyncError> {
        let identity = info.identity();
        let device = self.store.device();
        let known = self.store.known_primary().await?;
        let local = self.store.acked().await?;
        let (p_seq, p_tag) = primary::acked(self.client()?, &device).await?;
        let cursor = self
            .store
            .cursor(Table::Conversations.name())
            .await?
            .0
            .max(self.store.cursor(Table::Messages.name()).await?.0);
        let replaced = if let Some(k) = known.as_ref().filter(|k| **k != identity) {
            Some(format!(
                "it is another database or timeline than the one this device last synced with ({k} before, {identity} now)"
            ))
        } else if let Some((l, _)) = local.filter(|(l, _)| p_seq < *l) {
            Some(format!(
                "it holds this device's rows up to {p_seq} only, but had acknowledged up to {l}"
            ))
        } else if cursor >= info.next_xid {
            Some(format!(
                "its transaction ids (next {}) are behind what this device already pulled ({cursor})",
                info.next_xid
            ))
        } else {
            None
        };
        if let Some(why) = replaced {
            let n = self
                .store
                .reset_for_new_primary(identity, (p_seq, p_tag))
                .await?;
            self.notice(format!(
                "the primary was replaced or restored: {why}; pulling everything again and pushing all {n} local rows again"
            ));
            return Ok(());
        }
        if known.is_none() {
            self.store.set_known_primary(identity.clone()).await?;
        }
        let l_seq = local.map_or(0, |l| l.0);
        if p_seq > l_seq {
            // The primary has more from this device id than this file knows: a
            // crash between its commit and the local delete — then the outbox
            // row p_seq is still here, with the same tag — or a file that was
            // restored or copied, whose row p_seq (if any) is another write.
            let ours = self.store.outbox_tag(p_seq).await?;
            let same = match (p_tag, ours) {
                (Some(t), Some(o)) => t == o,
                // Pushed by a build that kept no tags: trusted, as it was.
                (None, Some(_)) => true,
                (None, None) => local.is_none(),
                (Some(_), None) => false,
            };
            if same {
                self.store.ack(p_seq, p_tag).await?;
            } else {
                let (id, n) = self.store.become_new_device(identity).await?;
                self.status.send_modify(|s| s.device = id.clone());
                self.notice(format!(
                    "this store file is behind what the primary acknowledged for device {device} \
                     (its rows up to {p_seq}; this file knew {l_seq}): it was restored from a backup or copied from \
                     another device. It continues as a new device {id}, pulls everything and pushes its {n} rows again"
                ));
            }
        } else if local.is_none() {
            // The first time this file records an acknowledgement.
            self.store.ack(p_seq, p_tag).await?;
        }
        Ok(())
    }
}
