//! The running service: one supervisor per peer, the clock watcher and the API, all
//! under one cancellation token and task tracker. [`run`] takes the API listener
//! already bound and a shutdown token, so tests bind port 0 and stop it cleanly.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::events::EventBus;
use crate::nodes::NodeMap;
use crate::services::ServiceHandle;
use crate::store::sync::SyncHandle;
use crate::store::Store;
use crate::tunnel::{ClockWatch, PeerHandle, PeerSupervisor, Tunnel};

/// Every task gets this long to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// What the API and the CLI see of a running service.
#[derive(Clone)]
pub struct Service {
    pub config: Arc<Config>,
    pub peers: Arc<Vec<PeerHandle>>,
    pub services: Arc<Vec<Arc<ServiceHandle>>>,
    /// Every node's hardware as far as known; this node's a moment after start.
    pub nodes: watch::Receiver<NodeMap>,
    pub events: EventBus,
    /// The local store, or why it could not be opened (the rest runs without it).
    pub store: Result<Store, String>,
    pub sync: SyncHandle,
    /// This node's standby, when `[store.replica]` names one.
    pub replica: watch::Receiver<Option<crate::store::replica::ReplicaStatus>>,
    /// Cancelled when the service stops (long-lived answers end with it).
    pub shutdown: CancellationToken,
    /// Settles once every listener has tried to bind.
    pub startup: crate::startup::Startup,
    pub started: std::time::Instant,
    /// The API token and the browsers' sign-in codes.
    pub access: Arc<crate::access::Access>,
}

impl Service {
    /// Starts every peer's supervisor on `tracker`; `clock` reports wakes from sleep.
    pub fn start(
        config: Config,
        clock: &ClockWatch,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Service {
        let events = EventBus::new();
        let startup = crate::startup::Startup::default();
        let peers: Vec<PeerHandle> = config
            .peers
            .iter()
            .map(|p| {
                PeerSupervisor::spawn(
                    p.clone(),
                    events.clone(),
                    clock,
                    tracker,
                    &startup,
                    cancel.child_token(),
                )
            })
            .collect();
        let tunnel = |name: &str| {
            peers
                .iter()
                .flat_map(|p| p.tunnels.iter())
                .find(|t| t.name() == name)
                .cloned()
        };
        let nodes = crate::nodes::spawn(
            &config.node,
            &config.nodes,
            &tunnel,
            &events,
            tracker,
            cancel,
        );
        let services =
            crate::services::spawn(&config, &tunnel, &nodes, &events, tracker, &startup, cancel);
        let store = Store::open(&config.store.path, &config.node).map_err(|e| {
            tracing::error!("{e}; conversations are unavailable until it is fixed (set [store] path in the config)");
            e.to_string()
        });
        let sync = match &store {
            Ok(st) => crate::store::sync::start(
                st.clone(),
                config.store.sync.clone(),
                events.clone(),
                tracker,
                cancel.child_token(),
            ),
            Err(_) => crate::store::sync::SyncHandle::off(),
        };
        let replica = match &config.store.replica {
            Some(r) => crate::store::replica::watch(r.clone(), tracker, cancel.child_token()),
            None => watch::channel(None).1,
        };
        Service {
            access: Arc::new(crate::access::Access::open(&config.store.path)),
            started: std::time::Instant::now(),
            startup,
            shutdown: cancel.clone(),
            replica,
            config: Arc::new(config),
            peers: Arc::new(peers),
            services: Arc::new(services),
            nodes,
            events,
            store,
            sync,
        }
    }

    pub fn tunnels(&self) -> impl Iterator<Item = &Arc<Tunnel>> {
        self.peers.iter().flat_map(|p| p.tunnels.iter())
    }

    /// The tunnel called `name` and its peer.
    pub fn find_tunnel(&self, name: &str) -> Option<(&PeerHandle, &Arc<Tunnel>)> {
        self.peers
            .iter()
            .find_map(|p| p.tunnels.iter().find(|t| t.name() == name).map(|t| (p, t)))
    }

    pub fn is_local_only(&self) -> bool {
        self.config.peers.is_empty()
    }
}

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
