//! The mesh's nodes and their hardware: this node's inventory (detected at start)
//! and every other node's, fetched from its `GET /v1/node` through the tunnel or
//! address the config gives (`nodes = [...]`), every 30 s and whenever that tunnel
//! comes up. The router reads GPU memory from here for models that declare a need.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Candidate;
use crate::inventory::NodeInventory;
use crate::tunnel::Tunnel;

const REFRESH: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry after a failed fetch.
const RETRY_FIRST: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NodeEntry {
    pub inventory: Option<NodeInventory>,
    /// Why the last fetch failed, if it did (the inventory kept is the last good one).
    pub error: Option<String>,
    #[serde(
        serialize_with = "crate::util::ser_time",
        deserialize_with = "crate::util::de_time"
    )]
    pub updated: SystemTime,
}

impl NodeEntry {
    /// The largest GPU memory of the node (0 without a GPU), if its inventory is known.
    pub fn max_vram(&self) -> Option<u64> {
        Some(
            self.inventory
                .as_ref()?
                .gpus
                .iter()
                .map(|g| g.vram_bytes)
                .max()
                .unwrap_or(0),
        )
    }
}

pub type NodeMap = BTreeMap<String, NodeEntry>;

/// Starts the detection of this node and the fetchers of the others.
pub fn spawn(
    this_node: &str,
    remotes: &[Candidate],
    tunnels: &dyn Fn(&str) -> Option<Arc<Tunnel>>,
    events: &crate::events::EventBus,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> watch::Receiver<NodeMap> {
    let (tx, rx) = watch::channel(NodeMap::new());
    let tx = Arc::new(tx);
    let node = this_node.to_string();
    let own = tx.clone();
    tracker.spawn(async move {
        if let Ok(inv) = tokio::task::spawn_blocking({
            let node = node.clone();
            move || crate::inventory::detect(&node)
        })
        .await
        {
            tracing::info!(
                "this node: {} ({} cores), {} MiB RAM, GPUs: {}",
                inv.cpu.model,
                inv.cpu.cores,
                inv.memory_bytes >> 20,
                if inv.gpus.is_empty() {
                    inv.gpu_source.clone()
                } else {
                    inv.gpus
                        .iter()
                        .map(|g| g.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            own.send_modify(|m| {
                m.insert(
                    node,
                    NodeEntry {
                        inventory: Some(inv),
                        error: None,
                        updated: SystemTime::now(),
                    },
                );
            });
        }
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(FETCH_TIMEOUT)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    for remote in remotes.iter().filter(|r| r.node != this_node) {
        let tunnel = remote.tunnel.as_deref().and_then(tunnels);
        let (remote, http, tx, c) = (remote.clone(), http.clone(), tx.clone(), cancel.clone());
        tracker.spawn(crate::task::restarting(
            format!("the inventory fetch of {}", remote.node),
            events.clone(),
            cancel.clone(),
            move || {
                fetch_loop(
                    remote.clone(),
                    tunnel.clone(),
                    http.clone(),
                    tx.clone(),
                    c.clone(),
                )
            },
        ));
    }
    rx
}

async fn fetch_loop(
    remote: Candidate,
    tunnel: Option<Arc<Tunnel>>,
    http: reqwest::Client,
    tx: Arc<watch::Sender<NodeMap>>,
    cancel: CancellationToken,
) {
    let mut tunnel_rx = tunnel.as_ref().map(|t| t.subscribe());
    let url = format!("http://{}/v1/node", remote.address);
    // After a failed fetch (the other node still starting, its API not up yet
    // behind a tunnel that is), again soon: 1 s, doubling up to REFRESH.
    let mut retry = RETRY_FIRST;
    loop {
        let mut wait = REFRESH;
        let up = tunnel_rx
            .as_mut()
            .is_none_or(|rx| rx.borrow_and_update().state.is_up());
        if up {
            let result = async {
                let resp = http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| format!("{}", e.without_url()))?;
                if !resp.status().is_success() {
                    return Err(format!("HTTP {}", resp.status()));
                }
                resp.json::<NodeInventory>()
                    .await
                    .map_err(|e| format!("not a robbie-mesh node answer: {}", e.without_url()))
            }
            .await;
            tx.send_modify(|m| {
                let entry = m.entry(remote.node.clone()).or_insert(NodeEntry {
                    inventory: None,
                    error: None,
                    updated: SystemTime::now(),
                });
                match result {
                    Ok(inv) => {
                        entry.inventory = Some(inv);
                        entry.error = None;
                        retry = RETRY_FIRST;
                    }
                    Err(e) => {
                        entry.error = Some(e);
                        wait = retry;
                        retry = (retry * 2).min(REFRESH);
                    }
                }
                entry.updated = SystemTime::now();
            });
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = crate::tunnel::state_changed(tunnel_rx.as_mut()) => {}
        }
    }
}
