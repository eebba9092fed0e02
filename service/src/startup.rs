//! When start-up is over: every listener (the `-L` forwards' and the service
//! endpoints') has tried to bind once. The service manager is told the service
//! is ready only then (`notify`), so `systemctl start` returns when a client can
//! connect, or when the port it wants is known to be taken (and said so).
//!
//! Each listener takes a [`Pending`] when it is spawned, before any of them
//! runs, and drops it after its first bind attempt, whatever came of it.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone)]
pub struct Startup {
    pending: Arc<watch::Sender<usize>>,
}

/// A listener that has not tried to bind yet.
pub struct Pending(Startup);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.send_modify(|n| *n -= 1);
    }
}

impl Default for Startup {
    fn default() -> Self {
        Startup {
            pending: Arc::new(watch::channel(0).0),
        }
    }
}

impl Startup {
    /// One more listener to wait for.
    pub fn pending(&self) -> Pending {
        self.pending.send_modify(|n| *n += 1);
        Pending(self.clone())
    }

    /// Returns once every [`Pending`] is dropped.
    pub async fn settled(&self) {
        let mut rx = self.pending.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn settles_when_the_last_listener_has_tried() {
        let startup = Startup::default();
        let (a, b) = (startup.pending(), startup.pending());
        drop(a);
        let waiting = tokio::time::timeout(Duration::from_millis(50), startup.settled()).await;
        assert!(waiting.is_err(), "one listener still pending");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), startup.settled())
            .await
            .expect("settled");
    }
}
