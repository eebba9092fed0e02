//! Tasks that must not die of a bug. A panic in a long-lived task (a peer's
//! supervisor, a probe, a service's route watcher) would otherwise end it
//! silently while the rest of the service goes on showing what it last knew:
//! a tunnel "up" with nobody behind it, a candidate "online" nobody probes.
//! Instead the panic is logged, published as an `internal_error` event, kept
//! in the status (`internal_errors`, the newest ten), and the task starts
//! over a second later.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::events::{EventBus, EventKind};

/// One task's failure, as `/v1/status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InternalError {
    #[serde(
        serialize_with = "crate::util::ser_time",
        deserialize_with = "crate::util::de_time"
    )]
    pub at: SystemTime,
    pub task: String,
    pub error: String,
    /// How many times this task has been started again.
    pub restarts: u32,
}

static RECENT: Mutex<Vec<InternalError>> = Mutex::new(Vec::new());

/// The newest failures, newest last.
pub fn recent() -> Vec<InternalError> {
    RECENT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// What a panic said.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Records and tells a task's failure (it is about to start again).
pub fn report(task: &str, error: &str, restarts: u32, events: &EventBus) {
    tracing::error!("{task} failed ({error}); starting it again (restart {restarts})");
    let e = InternalError {
        at: SystemTime::now(),
        task: task.to_string(),
        error: error.to_string(),
        restarts,
    };
    {
        let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
        recent.push(e);
        let excess = recent.len().saturating_sub(10);
        recent.drain(..excess);
    }
    events.publish(EventKind::InternalError {
        task: task.to_string(),
        error: error.to_string(),
        restarts,
    });
}

/// Runs `make()`'s task until it ends by itself or `cancel`; after a panic,
/// reports it and starts a new one a second later.
pub async fn restarting<F, Fut>(
    task: String,
    events: EventBus,
    cancel: CancellationToken,
    mut make: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut restarts = 0u32;
    loop {
        let Err(panic) = AssertUnwindSafe(make()).catch_unwind().await else {
            return;
        };
        restarts += 1;
        report(&task, &panic_text(&*panic), restarts, &events);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
