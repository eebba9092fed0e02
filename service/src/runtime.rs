//! The composition root: [`Service::start`] builds every part of a node from its
//! `Config` (one supervisor per peer, the node map, the services' probers, route
//! watchers and endpoints, the store, sync and the replica watch) under one
//! cancellation token and task tracker. The only module that imports every
//! layer; `crate::app` puts the API on top.

use std::sync::Arc;
use std::time::Duration;

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
    /// The last `doctor` findings (run here, or sent by `robbie-mesh doctor`),
    /// for the dashboard.
    pub doctor: Arc<std::sync::Mutex<Option<crate::doctor::Report>>>,
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
        let services = crate::services::spawn(&config, &tunnel, &nodes, &events, tracker, cancel);
        // Their endpoints, sharing one budget of connections and body memory.
        let limits = crate::proxy::Limits::new(&config.limits);
        for s in &services {
            tracker.spawn(crate::proxy::serve(
                s.clone(),
                limits.clone(),
                startup.pending(),
                cancel.clone(),
            ));
        }
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
            doctor: Arc::default(),
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
