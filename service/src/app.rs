//! One node as a process runs it: the runtime (`crate::runtime`) with the loopback
//! API on top, and the order things stop in. [`run`] takes the API listener
//! already bound and a shutdown token, so tests bind port 0 and stop it cleanly.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::runtime::{Service, SHUTDOWN_GRACE};
use crate::tunnel::ClockWatch;

/// Runs the service until `shutdown` is cancelled, then stops every task within
/// [`SHUTDOWN_GRACE`]. The API listener is closed when this returns.
pub async fn run(
    config: Config,
    api: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    start(config, api, shutdown).1.await
}

/// Starts the service and returns at once: its handle, and a future that completes
/// (listeners closed, tasks stopped) after `shutdown` is cancelled.
pub fn start(
    config: Config,
    api: TcpListener,
    shutdown: CancellationToken,
) -> (
    Service,
    impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) {
    let clock = ClockWatch::spawn(shutdown.child_token());
    start_with_clock(config, api, shutdown, clock)
}

/// [`start`] with a given wall-clock watch (tests fire it to simulate a wake).
pub fn start_with_clock(
    config: Config,
    api: TcpListener,
    shutdown: CancellationToken,
    clock: ClockWatch,
) -> (
    Service,
    impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) {
    let tracker = TaskTracker::new();
    let service = Service::start(config, &clock, &tracker, &shutdown);
    let api_task = tokio::spawn(crate::api::serve(api, service.clone(), shutdown.clone()));
    let store = service.store.clone();
    let done = async move {
        let api_result = match api_task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(format!("API task failed: {e}"))),
        };
        shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
        }
        // Closed even if a task is still stuck: a stopped service leaves a store file
        // that can be copied as it is (a backup, a restore).
        if let Ok(store) = store {
            if let Err(e) = tokio::task::spawn_blocking(move || store.close())
                .await
                .unwrap_or_else(|e| Err(crate::store::StoreError::Worker(e.to_string())))
            {
                tracing::warn!("closing the store: {e}");
            }
        }
        api_result
    };
    (service, done)
}
