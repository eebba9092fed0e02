//! The one event bus: every state change worth telling a user about (a tunnel going
//! up or down, a host-key alarm, a route change, a task restarted after a bug) is
//! published here once, and the API's event stream (the dashboard, the tray) reads it. A slow subscriber loses old events, never blocks a sender.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::tunnel::TunnelState;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A tunnel's state changed.
    Tunnel {
        tunnel: String,
        peer: String,
        state: TunnelState,
    },
    /// A server presented a host key we refuse (changed, revoked or unknown).
    HostKeyAlarm { peer: String, message: String },
    /// A node's instance of a service changed health.
    Health {
        service: String,
        node: String,
        health: crate::health::Health,
        reason: String,
    },
    /// A task failed of a bug and was started again (`crate::task`).
    InternalError {
        task: String,
        error: String,
        restarts: u32,
    },
    /// Where a service's requests go changed (failover, failback, pin).
    Route {
        service: String,
        from: Option<String>,
        to: Option<String>,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    #[serde(
        serialize_with = "crate::util::ser_time",
        deserialize_with = "crate::util::de_time"
    )]
    pub at: SystemTime,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        EventBus {
            tx: broadcast::channel(1024).0,
        }
    }

    pub fn publish(&self, kind: EventKind) {
        // No subscribers is fine: the event is already logged by whoever changed state.
        let _ = self.tx.send(Event {
            at: SystemTime::now(),
            kind,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
