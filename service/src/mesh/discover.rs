//! What a new peer runs, asked through one temporary SSH session: for each
//! known service, whether something accepts a connection on its moved-up port
//! (a robbie-mesh node's own instance) or its usual one, and whether a
//! robbie-mesh API answers — the ports sshd on the peer can connect to,
//! exactly what a `-L` forward would reach.

use std::time::Duration;

use super::{MeshService, API_PORT};
use crate::ssh::Session;

/// What answered on the peer.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Service name and the port it answered on, in the services' order.
    pub services: Vec<(String, u16)>,
    /// A robbie-mesh API answers on 8007.
    pub api: bool,
}

/// Whether the peer's sshd can connect to `127.0.0.1:port` there.
async fn answers(session: &Session, port: u16) -> bool {
    let open =
        session
            .handle
            .channel_open_direct_tcpip("127.0.0.1", u32::from(port), "127.0.0.1", 0);
    match tokio::time::timeout(Duration::from_secs(3), open).await {
        Ok(Ok(ch)) => {
            let _ = ch.close().await;
            true
        }
        _ => false,
    }
}

/// Asks the peer about every service (its own port first, then the usual one).
pub async fn peer(session: &Session, services: &[MeshService]) -> Found {
    let mut found = Found::default();
    for s in services {
        for port in [s.port + 1, s.port] {
            if answers(session, port).await {
                found.services.push((s.name.clone(), port));
                break;
            }
        }
    }
    found.api = answers(session, API_PORT).await;
    found
}

/// What answers on this machine: per service, its own (moved-up) port, or the
/// usual one — which the endpoint needs, so that one must move.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// Instances already on the moved-up port: this node's own candidates.
    pub own: Vec<(String, u16)>,
    /// Instances on the usual port, in the endpoint's way.
    pub in_the_way: Vec<(String, u16)>,
}

pub async fn local(services: &[MeshService]) -> Local {
    let mut l = Local::default();
    let up = |port: u16| async move {
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    };
    for s in services {
        if up(s.port + 1).await {
            l.own.push((s.name.clone(), s.port + 1));
        }
        if up(s.port).await {
            l.in_the_way.push((s.name.clone(), s.port));
        }
    }
    l
}
