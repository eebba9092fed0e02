//! Tunnels: the `-L` and `-R` forwards of every peer, kept alive by one supervisor
//! task per peer (`supervisor`), with the bytes moved by `pipe`.
//!
//! Each tunnel publishes its state on a `watch` channel and every change on the
//! event bus. A tunnel's state is derived from two inputs: its peer's SSH session
//! (connecting, up, down, waiting to retry) and a problem of its own (the local port
//! cannot be bound, the server refused the remote forward).

mod backoff;
mod clock;
pub mod pipe;
mod supervisor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

use crate::config::{ForwardConfig, ForwardKind};
use crate::events::{EventBus, EventKind};

pub use backoff::{Backoff, STABLE_AFTER};
pub use clock::{ClockWatch, WallClockJump};
pub use supervisor::{PeerHandle, PeerSupervisor};

/// What a tunnel is doing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TunnelState {
    /// Opening the SSH session (or, for `-R`, asking the server to listen).
    Connecting,
    /// Forwarding.
    Up,
    /// Not forwarding, for this reason.
    Down { reason: String },
    /// Not forwarding; the next attempt is at `until`.
    Waiting {
        reason: String,
        #[serde(
            serialize_with = "crate::util::ser_time",
            deserialize_with = "crate::util::de_time"
        )]
        until: SystemTime,
    },
}

impl TunnelState {
    pub fn is_up(&self) -> bool {
        matches!(self, TunnelState::Up)
    }

    pub fn label(&self) -> &'static str {
        self.phase().as_str()
    }

    /// The state without its reason and time, as `/v1/tunnels` reports it.
    pub fn phase(&self) -> TunnelPhase {
        match self {
            TunnelState::Connecting => TunnelPhase::Connecting,
            TunnelState::Up => TunnelPhase::Up,
            TunnelState::Down { .. } => TunnelPhase::Down,
            TunnelState::Waiting { .. } => TunnelPhase::Waiting,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            TunnelState::Down { reason } | TunnelState::Waiting { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// [`TunnelState`] on the wire: its reason and retry time are fields of their own
/// in [`TunnelStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelPhase {
    Connecting,
    Up,
    Down,
    Waiting,
}

impl TunnelPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelPhase::Connecting => "connecting",
            TunnelPhase::Up => "up",
            TunnelPhase::Down => "down",
            TunnelPhase::Waiting => "waiting",
        }
    }
}

/// A state and when it began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: TunnelState,
    pub since: SystemTime,
}

/// Live byte and connection counts of one tunnel.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes from the local side into the SSH channel.
    pub bytes_sent: AtomicU64,
    /// Bytes from the SSH channel to the local side.
    pub bytes_received: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    /// Requests of a service endpoint going through this tunnel now (an idle pooled
    /// connection is open but carries none).
    pub requests_in_flight: AtomicU64,
}

/// The JSON shape of one tunnel in `GET /v1/tunnels`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TunnelStatus {
    pub name: String,
    pub peer: String,
    pub kind: ForwardKind,
    /// `-L`: the address we listen on; `-R`: what we connect to.
    pub local: String,
    /// `-L`: what the server connects to; `-R`: what the server listens on.
    pub remote: String,
    pub state: TunnelPhase,
    pub reason: Option<String>,
    pub retry_at: Option<String>,
    pub since: String,
    pub reconnects: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub connections_open: u64,
    pub connections_total: u64,
}

/// Who needs an on-demand peer right now (services whose every higher-priority
/// candidate is down). Shared by all tunnels of the peer.
pub struct Demand {
    pub on_demand: bool,
    wanted_by: Mutex<std::collections::BTreeSet<String>>,
    tx: watch::Sender<bool>,
}

impl Demand {
    pub fn new(on_demand: bool) -> Arc<Demand> {
        Arc::new(Demand {
            on_demand,
            wanted_by: Mutex::new(Default::default()),
            tx: watch::Sender::new(false),
        })
    }

    /// `who` (a service) needs the peer, or no longer does.
    pub fn set(&self, who: &str, wanted: bool) {
        let any = {
            let mut w = self.wanted_by.lock().unwrap_or_else(|e| e.into_inner());
            if wanted {
                w.insert(who.to_string());
            } else {
                w.remove(who);
            }
            !w.is_empty()
        };
        self.tx
            .send_if_modified(|v| std::mem::replace(v, any) != any);
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// Inputs a tunnel's state is derived from.
#[derive(Debug, Clone)]
struct Inputs {
    session: TunnelState,
    own_problem: Option<String>,
}

/// One tunnel: its config, counters and published state.
pub struct Tunnel {
    pub config: ForwardConfig,
    pub peer: String,
    pub counters: Arc<Counters>,
    reconnects: AtomicU64,
    inputs: Mutex<Inputs>,
    state: watch::Sender<Snapshot>,
    events: EventBus,
    /// The peer's demand (meaningful for on-demand peers).
    pub demand: Arc<Demand>,
    /// Asks the peer's session to prove it is alive now (shared by the peer's tunnels).
    liveness: Arc<tokio::sync::Notify>,
}

impl Tunnel {
    pub fn new(
        peer: &str,
        config: ForwardConfig,
        events: EventBus,
        demand: Arc<Demand>,
        liveness: Arc<tokio::sync::Notify>,
    ) -> Arc<Tunnel> {
        let snapshot = Snapshot {
            state: TunnelState::Connecting,
            since: SystemTime::now(),
        };
        Arc::new(Tunnel {
            config,
            peer: peer.to_string(),
            counters: Arc::new(Counters::default()),
            reconnects: AtomicU64::new(0),
            inputs: Mutex::new(Inputs {
                session: TunnelState::Connecting,
                own_problem: None,
            }),
            state: watch::Sender::new(snapshot),
            events,
            demand,
            liveness,
        })
    }

    /// Traffic through this tunnel waits longer than it should (no answer to a
    /// request, no answer to a channel open): the session must prove it is alive
    /// now — an answer or any bytes within a second — or it is declared dead and
    /// every connection on it fails, so requests move to another node.
    pub fn demand_proof(&self) {
        self.liveness.notify_one();
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.state.subscribe()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.state.borrow().clone()
    }

    /// The peer's session changed state.
    pub(crate) fn set_session(&self, s: TunnelState) {
        self.update(|i| i.session = s);
    }

    /// A problem of this tunnel alone (bind failure, refused forward), or `None` once solved.
    pub(crate) fn set_problem(&self, p: Option<String>) {
        self.update(|i| i.own_problem = p);
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn update(&self, f: impl FnOnce(&mut Inputs)) {
        let state = {
            let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut inputs);
            derive_state(&inputs)
        };
        let changed = self.state.send_if_modified(|snap| {
            if snap.state == state {
                return false;
            }
            *snap = Snapshot {
                state: state.clone(),
                since: SystemTime::now(),
            };
            true
        });
        if changed {
            match state.reason() {
                Some(r) => {
                    tracing::warn!(tunnel = %self.name(), peer = %self.peer, "tunnel {}: {r}", state.label())
                }
                None => {
                    tracing::info!(tunnel = %self.name(), peer = %self.peer, "tunnel {}", state.label())
                }
            }
            self.events.publish(EventKind::Tunnel {
                tunnel: self.name().to_string(),
                peer: self.peer.clone(),
                state,
            });
        }
    }

    pub fn status(&self) -> TunnelStatus {
        let snap = self.snapshot();
        let c = &self.counters;
        let (local, remote) = (
            self.config.local.to_string(),
            self.config.remote.to_string(),
        );
        TunnelStatus {
            name: self.name().to_string(),
            peer: self.peer.clone(),
            kind: self.config.kind,
            local,
            remote,
            state: snap.state.phase(),
            reason: snap.state.reason().map(str::to_string),
            retry_at: match &snap.state {
                TunnelState::Waiting { until, .. } => Some(crate::util::rfc3339(*until)),
                _ => None,
            },
            since: crate::util::rfc3339(snap.since),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            connections_open: c.connections_open.load(Ordering::Relaxed),
            connections_total: c.connections_total.load(Ordering::Relaxed),
        }
    }
}

/// Resolves when the watched tunnel's state changes; never without a tunnel.
pub async fn state_changed(rx: Option<&mut watch::Receiver<Snapshot>>) {
    let gone = match rx {
        Some(rx) => rx.changed().await.is_err(),
        None => true,
    };
    if gone {
        std::future::pending::<()>().await;
    }
}

/// A tunnel's own problem outranks its session's state: it is local and actionable.
fn derive_state(i: &Inputs) -> TunnelState {
    match (&i.own_problem, &i.session) {
        (Some(p), TunnelState::Up) => TunnelState::Down { reason: p.clone() },
        (Some(p), TunnelState::Connecting) => TunnelState::Down { reason: p.clone() },
        (Some(p), TunnelState::Down { reason } | TunnelState::Waiting { reason, .. }) => {
            TunnelState::Down {
                reason: format!("{p}; ssh: {reason}"),
            }
        }
        (None, s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostPort;

    fn tunnel() -> Arc<Tunnel> {
        let hp = |p| HostPort {
            host: "127.0.0.1".into(),
            port: p,
        };
        let cfg = ForwardConfig {
            name: "t".into(),
            kind: ForwardKind::Local,
            local: hp(1),
            remote: hp(2),
        };
        Tunnel::new(
            "p",
            cfg,
            EventBus::new(),
            Demand::new(false),
            Default::default(),
        )
    }

    #[test]
    fn state_is_derived_and_each_change_is_one_event() {
        let t = tunnel();
        let mut events = t.events.subscribe();
        t.set_session(TunnelState::Up);
        assert!(t.snapshot().state.is_up());
        t.set_session(TunnelState::Up); // no change, no event
        t.set_problem(Some("cannot listen on 127.0.0.1:1: address in use".into()));
        assert_eq!(
            t.snapshot().state.reason(),
            Some("cannot listen on 127.0.0.1:1: address in use")
        );
        t.set_problem(None);
        assert!(t.snapshot().state.is_up());
        let mut n = 0;
        while events.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 3);
    }
}
