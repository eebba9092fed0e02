//! One supervisor task per peer: opens the SSH session, asks the server for the `-R`
//! forwards, hands the session to the `-L` accept loops, sends keepalives, and on any
//! failure tears the session down and reconnects with backoff. It is the only writer
//! of its tunnels' session state.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{pipe, Backoff, ClockWatch, Demand, Tunnel, TunnelState, WallClockJump, STABLE_AFTER};
use crate::config::{ForwardKind, Keepalive, PeerConfig};
use crate::events::{EventBus, EventKind};
use crate::ssh::{self, ReverseRoute, ReverseRoutes, Session};

/// What the rest of the service holds of a peer: its tunnels and a reconnect button.
#[derive(Clone)]
pub struct PeerHandle {
    pub name: String,
    pub tunnels: Vec<Arc<Tunnel>>,
    reconnect: Arc<Notify>,
}

impl PeerHandle {
    /// Drops the current session (or ends the backoff wait) and connects again now.
    pub fn reconnect(&self) {
        self.reconnect.notify_one();
    }
}

pub struct PeerSupervisor {
    peer: PeerConfig,
    tunnels: Vec<Arc<Tunnel>>,
    reconnect: Arc<Notify>,
    /// Notified when traffic saw a failure (a channel open timed out): ping now.
    suspect: Arc<Notify>,
    session: watch::Sender<Option<Arc<Session>>>,
    reverse: Arc<ReverseRoutes>,
    events: EventBus,
    clock: watch::Receiver<WallClockJump>,
    /// On-demand peers: whether a service needs this peer now.
    demand: watch::Receiver<bool>,
    cancel: CancellationToken,
}

impl PeerSupervisor {
    /// Starts the supervisor and the `-L` listeners of `peer` on `tracker`.
    pub fn spawn(
        peer: PeerConfig,
        events: EventBus,
        clock: &ClockWatch,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> PeerHandle {
        let demand = Demand::new(peer.on_demand.is_some());
        let tunnels: Vec<_> = peer
            .forwards
            .iter()
            .map(|f| Tunnel::new(&peer.name, f.clone(), events.clone(), demand.clone()))
            .collect();
        let reconnect = Arc::new(Notify::new());
        let suspect = Arc::new(Notify::new());
        let handle = PeerHandle {
            name: peer.name.clone(),
            tunnels: tunnels.clone(),
            reconnect: reconnect.clone(),
        };
        let (session, session_rx) = watch::channel(None);
        for t in tunnels
            .iter()
            .filter(|t| t.config.kind == ForwardKind::Local)
        {
            let local = pipe::LocalForward {
                tunnel: t.clone(),
                session: session_rx.clone(),
                suspect: suspect.clone(),
            };
            tracker.spawn(local.serve(peer.backoff, cancel.clone()));
        }
        let sup = PeerSupervisor {
            peer,
            tunnels,
            reconnect,
            suspect,
            session,
            reverse: Arc::new(ReverseRoutes::default()),
            events,
            clock: clock.subscribe(),
            demand: demand.subscribe(),
            cancel,
        };
        let span = tracing::info_span!("peer", name = %sup.peer.name);
        tracker.spawn(tracing::Instrument::instrument(sup.run(), span));
        handle
    }

    fn set_session(&self, s: TunnelState) {
        for t in &self.tunnels {
            t.set_session(s.clone());
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(self.peer.backoff);
        let mut ever_up = false;
        self.clock.mark_unchanged();
        while !self.cancel.is_cancelled() {
            if self.peer.on_demand.is_some() && !*self.demand.borrow_and_update() {
                self.set_session(TunnelState::Down {
                    reason: "on demand: not needed now (connects when every higher-priority node is down)".into(),
                });
                tokio::select! {
                    () = self.cancel.cancelled() => break,
                    r = self.demand.wait_for(|d| *d) => if r.is_err() { break },
                }
                tracing::info!("needed now: connecting on demand");
                backoff.reset();
            }
            self.set_session(TunnelState::Connecting);
            let attempt = tokio::select! {
                () = self.cancel.cancelled() => break,
                r = ssh::connect(&self.peer, self.reverse.clone()) => r,
            };
            let reason = match attempt {
                Err(e) => {
                    if e.is_host_key_alarm() {
                        tracing::error!("{e}");
                        self.events.publish(EventKind::HostKeyAlarm {
                            peer: self.peer.name.clone(),
                            message: e.to_string(),
                        });
                    }
                    e.to_string()
                }
                Ok(session) => {
                    // A reconnect asked for while connecting is served by this session.
                    let _ = futures_util::FutureExt::now_or_never(self.reconnect.notified());
                    if ever_up {
                        self.tunnels.iter().for_each(|t| t.count_reconnect());
                    }
                    ever_up = true;
                    let up_at = Instant::now();
                    let reason = self.connected(Arc::new(session)).await;
                    if up_at.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                    reason
                }
            };
            if self.cancel.is_cancelled() {
                break;
            }
            let delay = backoff.next_delay();
            self.set_session(TunnelState::Waiting {
                reason,
                until: SystemTime::now() + delay,
            });
            let no_longer_needed = async {
                if self.peer.on_demand.is_some() {
                    let _ = self.demand.wait_for(|d| !*d).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
                () = self.reconnect.notified() => tracing::info!("reconnect requested"),
                Ok(()) = self.clock.changed() => {}
                () = no_longer_needed => {}
            }
        }
        self.set_session(TunnelState::Down {
            reason: "service stopped".into(),
        });
    }

    /// Runs one established session until it fails; returns why it ended.
    async fn connected(&mut self, session: Arc<Session>) -> String {
        let session_cancel = self.cancel.child_token();
        let target = self.peer.target.to_string();
        tracing::info!("ssh session to {target} up");

        // -R forwards are requested before the tunnels are announced up.
        let remotes: Vec<_> = self
            .tunnels
            .iter()
            .filter(|t| t.config.kind == ForwardKind::Remote)
            .cloned()
            .collect();
        for t in &remotes {
            let route = ReverseRoute {
                local: t.config.local.clone(),
                counters: t.counters.clone(),
                cancel: session_cancel.clone(),
            };
            self.reverse.insert(&t.config.remote, Arc::new(route));
            if let Err(why) = request_remote(&session, t).await {
                t.set_problem(Some(why));
                tokio::spawn(retry_remote(
                    session.clone(),
                    t.clone(),
                    self.peer.backoff,
                    session_cancel.clone(),
                ));
            }
        }
        self.session.send_replace(Some(session.clone()));
        self.set_session(TunnelState::Up);

        let released = async {
            match self.peer.on_demand {
                Some(idle) => released(&mut self.demand, idle, &self.tunnels).await,
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            () = self.cancel.cancelled() => "service stopped".to_string(),
            () = self.reconnect.notified() => "reconnect requested".to_string(),
            () = session.closed.cancelled() => "connection closed by the server".to_string(),
            r = keepalive(&session, self.peer.keepalive, &mut self.clock, &self.suspect) => r,
            r = released => r,
        };
        tracing::warn!("ssh session to {target} ended: {reason}");
        self.session.send_replace(None);
        session_cancel.cancel();
        for t in &remotes {
            self.reverse.remove(&t.config.remote);
            t.set_problem(None);
        }
        let bye = session.handle.disconnect(
            russh::Disconnect::ByApplication,
            "robbie-mesh reconnecting",
            "en",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
        reason
    }
}

/// An on-demand session ends once no service has needed it for `idle` and no
/// request through it is in flight.
async fn released(
    demand: &mut watch::Receiver<bool>,
    idle: Duration,
    tunnels: &[Arc<Tunnel>],
) -> String {
    loop {
        if demand.wait_for(|d| !*d).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::select! {
            _ = demand.wait_for(|d| *d) => continue,
            () = tokio::time::sleep(idle) => {}
        }
        while tunnels.iter().any(|t| {
            t.counters
                .requests_in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        }) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if !*demand.borrow() {
            return format!(
                "released: not needed for {}",
                humantime::format_duration(idle)
            );
        }
    }
}

async fn request_remote(session: &Session, t: &Tunnel) -> Result<(), String> {
    let bind = &t.config.remote;
    match session.handle.tcpip_forward(bind.host.clone(), u32::from(bind.port)).await {
        Ok(_) => Ok(()),
        Err(russh::Error::RequestDenied) => Err(format!(
            "server refused to listen on {bind} (port in use there, or AllowTcpForwarding/PermitListen forbids it)"
        )),
        Err(e) => Err(format!("remote forward {bind} failed: {e}")),
    }
}

/// Asks again, with backoff, until the server accepts the `-R` forward or the session ends.
async fn retry_remote(
    session: Arc<Session>,
    t: Arc<Tunnel>,
    cfg: crate::config::Backoff,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(cfg);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
        match request_remote(&session, &t).await {
            Ok(()) => {
                t.set_problem(None);
                return;
            }
            Err(why) => t.set_problem(Some(why)),
        }
    }
}

/// Pings every `interval`; a session is dead after `count` unanswered pings in a row,
/// or after one unanswered ping right after a wall-clock jump or a failure seen by
/// traffic (then it pings at once). Returns why it died.
async fn keepalive(
    session: &Session,
    ka: Keepalive,
    clock: &mut watch::Receiver<WallClockJump>,
    suspect: &Notify,
) -> String {
    let mut misses = 0;
    let mut next = tokio::time::Instant::now() + ka.interval;
    loop {
        let mut why_now = None;
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            Ok(()) = clock.changed() => why_now = Some("after the wall clock jumped (wake from sleep?)"),
            () = suspect.notified() => why_now = Some("after a connection through it timed out"),
        }
        let start = tokio::time::Instant::now();
        match tokio::time::timeout(ka.interval, session.handle.send_ping()).await {
            Ok(Ok(())) => {
                misses = 0;
                next = start + ka.interval;
            }
            Ok(Err(_)) => return "connection closed".to_string(),
            Err(_) if why_now.is_some() => {
                return format!(
                    "no keepalive answer within {:?} {}",
                    ka.interval,
                    why_now.unwrap_or_default()
                )
            }
            Err(_) => {
                misses += 1;
                if misses >= ka.count {
                    return format!(
                        "keepalive timeout: {misses} keepalives unanswered ({:?} each)",
                        ka.interval
                    );
                }
                next = tokio::time::Instant::now();
            }
        }
    }
}
