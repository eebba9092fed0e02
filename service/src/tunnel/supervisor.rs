//! One supervisor task per peer: opens the SSH session, asks the server for the `-R`
//! forwards, hands the session to the `-L` accept loops, sends keepalives, and on any
//! failure tears the session down and reconnects with backoff. It is the only writer
//! of its tunnels' session state.
//!
//! Longer than most files on purpose: one state machine per peer; split, its states
//! and their transitions would be read across files.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{pipe, Backoff, ClockWatch, Demand, Tunnel, TunnelState, WallClockJump, STABLE_AFTER};
use crate::config::{ForwardKind, Keepalive, PeerConfig};
use crate::events::{EventBus, EventKind};
use crate::ssh::{self, ReverseRoute, ReverseRoutes, Session};

/// The reason a session ends when `reconnect` asked for it: the next attempt is
/// made at once, without a backoff wait.
const RECONNECT_REQUESTED: &str = "reconnect requested";

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
    /// To tell the other supervisors when this session's link went silent.
    clock_watch: ClockWatch,
    /// On-demand peers: whether a service needs this peer now.
    demand: watch::Receiver<bool>,
    /// A session was up before (a refused `-R` is then likely our own stale one).
    ever_up: bool,
    cancel: CancellationToken,
}

impl PeerSupervisor {
    /// Starts the supervisor and the `-L` listeners of `peer` on `tracker`.
    pub fn spawn(
        peer: PeerConfig,
        events: EventBus,
        clock: &ClockWatch,
        tracker: &TaskTracker,
        startup: &crate::startup::Startup,
        cancel: CancellationToken,
    ) -> PeerHandle {
        let demand = Demand::new(peer.on_demand.is_some());
        let suspect = Arc::new(Notify::new());
        let tunnels: Vec<_> = peer
            .forwards
            .iter()
            .map(|f| {
                Tunnel::new(
                    &peer.name,
                    f.clone(),
                    events.clone(),
                    demand.clone(),
                    suspect.clone(),
                )
            })
            .collect();
        let reconnect = Arc::new(Notify::new());
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
                starting: startup.pending(),
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
            clock_watch: clock.clone(),
            demand: demand.subscribe(),
            ever_up: false,
            cancel,
        };
        let span = tracing::info_span!("peer", name = %sup.peer.name);
        tracker.spawn(tracing::Instrument::instrument(sup.supervise(), span));
        handle
    }

    fn set_session(&self, s: TunnelState) {
        for t in &self.tunnels {
            t.set_session(s.clone());
        }
    }

    /// Runs the peer until the service stops. A panic in it (a bug) does not
    /// leave its tunnels showing a stale state with nobody behind them: they
    /// are marked down with the reason (in status and as events), it is
    /// logged, and the peer starts over a second later.
    async fn supervise(mut self) {
        use futures_util::FutureExt;
        let mut restarts = 0u32;
        loop {
            let outcome = std::panic::AssertUnwindSafe(self.run())
                .catch_unwind()
                .await;
            let Err(panic) = outcome else { return };
            restarts += 1;
            let what = crate::task::panic_text(&*panic);
            crate::task::report(
                &format!("the supervisor of peer {}", self.peer.name),
                &what,
                restarts,
                &self.events,
            );
            let _ = self.session.send(None);
            self.set_session(TunnelState::Down {
                reason: format!("internal error, restarted ({restarts}): {what}"),
            });
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn run(&mut self) {
        let mut backoff = Backoff::new(self.peer.backoff);
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
                    crate::failpoint::hit("supervisor-session");
                    // A reconnect asked for while connecting is served by this session.
                    let _ = futures_util::FutureExt::now_or_never(self.reconnect.notified());
                    if self.ever_up {
                        self.tunnels.iter().for_each(|t| t.count_reconnect());
                    }
                    let up_at = Instant::now();
                    let reason = self.connected(Arc::new(session)).await;
                    self.ever_up = true;
                    if up_at.elapsed() >= STABLE_AFTER || reason == RECONNECT_REQUESTED {
                        backoff.reset();
                    }
                    reason
                }
            };
            if self.cancel.is_cancelled() {
                break;
            }
            // Asked to reconnect: now, not after a backoff wait.
            let delay = if reason == RECONNECT_REQUESTED {
                Duration::ZERO
            } else {
                backoff.next_delay()
            };
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
                () = self.reconnect.notified() => {
                    tracing::info!("reconnect requested");
                    backoff.reset();
                }
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
        let mut target = self.peer.server.target.to_string();
        for (i, jump) in self.peer.jumps.iter().enumerate() {
            target.push_str(if i == 0 { " through " } else { ", " });
            target.push_str(&jump.target.to_string());
        }
        tracing::info!("ssh session to {target} up");

        // -R forwards are requested before the tunnels are announced up; each
        // request has a deadline (a link that dies now must not hang us here).
        let remotes: Vec<_> = self
            .tunnels
            .iter()
            .filter(|t| t.config.kind == ForwardKind::Remote)
            .cloned()
            .collect();
        let deadline = self.peer.connect_timeout;
        let mut registered = Ok(());
        for t in &remotes {
            let route = Arc::new(pipe::ReverseTarget {
                local: t.config.local.clone(),
                counters: t.counters.clone(),
                cancel: session_cancel.clone(),
            });
            let serve: Arc<ReverseRoute> = Arc::new(move |channel, reply| {
                tokio::spawn(pipe::serve_reverse(channel, reply, route.clone()));
            });
            self.reverse.insert(&t.config.remote, serve);
            match tokio::time::timeout(deadline, request_remote(&session, t, self.ever_up)).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    t.set_problem(Some(why));
                    tokio::spawn(retry_remote(
                        session.clone(),
                        t.clone(),
                        self.peer.backoff,
                        deadline,
                        session_cancel.clone(),
                    ));
                }
                Err(_) => {
                    registered = Err(format!(
                        "no answer to the -R request for {} within {deadline:?}: the link or the server is gone",
                        t.config.remote
                    ));
                    break;
                }
            }
        }
        let reason = match registered {
            Err(why) => why,
            Ok(()) => {
                self.session.send_replace(Some(session.clone()));
                self.set_session(TunnelState::Up);
                let released = async {
                    match self.peer.on_demand {
                        Some(idle) => released(&mut self.demand, idle, &self.tunnels).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = self.cancel.cancelled() => "service stopped".to_string(),
                    () = self.reconnect.notified() => RECONNECT_REQUESTED.to_string(),
                    () = session.closed.cancelled() => session.end_reason(),
                    (r, silent) = keepalive(&session, self.peer.keepalive, &mut self.clock, &self.suspect, &self.clock_watch) => {
                        if silent {
                            self.clock_watch.link_went_silent();
                            // Ours: not a reason to skip our own backoff.
                            self.clock.mark_unchanged();
                        }
                        r
                    }
                    r = released => r,
                }
            }
        };
        tracing::warn!("ssh session to {target} ended: {reason}");
        self.session.send_replace(None);
        // Every connection on it ends now (-L and -R alike), so that what waits on
        // them fails over instead of waiting for TCP to give up.
        session.closed.cancel();
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
/// request through it is in flight. Its tunnels say "releasing" (down) first, so
/// that no new request starts on a session about to go; the requests already on
/// it finish. If it is needed again meanwhile, it stays.
async fn released(
    demand: &mut watch::Receiver<bool>,
    idle: Duration,
    tunnels: &[Arc<Tunnel>],
) -> String {
    let in_flight = || {
        tunnels
            .iter()
            .map(|t| {
                t.counters
                    .requests_in_flight
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum::<u64>()
    };
    loop {
        if demand.wait_for(|d| !*d).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::select! {
            _ = demand.wait_for(|d| *d) => continue,
            () = tokio::time::sleep(idle) => {}
        }
        let why = format!(
            "released: on demand, not needed for {}",
            humantime::format_duration(idle)
        );
        for t in tunnels {
            t.set_session(TunnelState::Down {
                reason: format!("{why}; letting the requests on it finish"),
            });
        }
        while in_flight() > 0 && !*demand.borrow() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !*demand.borrow() {
            return why;
        }
        for t in tunnels {
            t.set_session(TunnelState::Up);
        }
    }
}

async fn request_remote(session: &Session, t: &Tunnel, reconnected: bool) -> Result<(), String> {
    let bind = &t.config.remote;
    match session.handle.tcpip_forward(bind.host.clone(), u32::from(bind.port)).await {
        Ok(_) => Ok(()),
        // Right after a reconnect the likeliest holder of the port is our own
        // previous session, which sshd keeps until its ClientAlive checks end it.
        Err(russh::Error::RequestDenied) if reconnected => Err(format!(
            "server refused to listen on {bind}: probably our previous session still holds the port there \
             (sshd ends a dead session only after ClientAliveInterval × ClientAliveCountMax; \
             set ClientAliveInterval 15 and ClientAliveCountMax 3 in the hub's sshd_config); \
             otherwise another program uses the port, or AllowTcpForwarding/PermitListen forbids it"
        )),
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
    deadline: Duration,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(cfg);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
        match tokio::time::timeout(deadline, request_remote(&session, &t, true)).await {
            Ok(Ok(())) => {
                t.set_problem(None);
                return;
            }
            Ok(Err(why)) => t.set_problem(Some(why)),
            // The keepalive decides whether the session is gone.
            Err(_) => t.set_problem(Some(format!(
                "no answer to the -R request within {deadline:?}"
            ))),
        }
    }
}

/// How long a session has to prove it is alive when asked to now (a request or a
/// channel open waits, the wall clock jumped): an answer to a keepalive, or any
/// bytes from the server.
pub const PROOF_TIMEOUT: Duration = Duration::from_secs(1);

/// The proof window of a session that was receiving bulk data when asked
/// (at most the keepalive budget, which OpenSSH's ServerAlive gives any silence).
pub const BUSY_PROOF: Duration = Duration::from_secs(3);

/// Arrivals per second (bytes read plus kernel data segments) above which the
/// link counts as busy with bulk data: far more than keepalives and a steady
/// stream of small requests bring.
const BUSY_RATE: f64 = 64.0 * 1024.0;

/// The session's liveness: pings every `interval`, one at a time. A session is
/// alive while pings are answered **or bytes keep arriving** (a keepalive answer
/// may wait behind bulk data on a slow link: that is not a dead peer). It is dead
/// after `count` intervals in a row with neither, or — when traffic asks it to
/// prove itself now (`Tunnel::demand_proof`, a wall-clock jump; traffic waiting
/// on one session makes every session prove itself) — after
/// [`PROOF_TIMEOUT`] with neither (or twice the slowest of the last answers, or
/// four times TCP's own retransmission timeout for the connection, if longer: a
/// slow or lossy link is not a dead one); such a demand shortens the ping already in
/// flight rather than queueing another. Returns why it died, and whether it died
/// of silence (rather than a closed connection).
async fn keepalive(
    session: &Session,
    ka: Keepalive,
    clock: &mut watch::Receiver<WallClockJump>,
    suspect: &Notify,
    everyone: &ClockWatch,
) -> (String, bool) {
    enum Outcome {
        Answered,
        Closed,
        Silent,
    }
    // How long the last answers took (they wait behind bulk data on a slow,
    // deep-buffered link): a proof gets twice the slowest of them, at least
    // `PROOF_TIMEOUT`, at most the whole keepalive budget. A saturated link can
    // go quiet for more than a second while TCP retransmits; that is not a dead
    // peer. On an idle or fast link the answers take milliseconds: 1 s it is.
    let mut answers: std::collections::VecDeque<Duration> =
        std::collections::VecDeque::with_capacity(8);
    let floor = PROOF_TIMEOUT.min(ka.interval);
    let ceiling = ka.interval.saturating_mul(ka.count).max(floor);
    // And TCP's retransmission timeout (RTO): after a lost segment the
    // server's TCP sends nothing for one RTO, and if that retransmission is
    // lost too, for two more (the timer doubles): four RTOs cover it. On a
    // saturated link the RTO is most of a second (the queue is in the round
    // trip; CI saw a session killed 2 s into a download with a 1 s window);
    // on an idle one it is 200 ms, and the window stays 1 s.
    // And whether bulk data was arriving when the proof was asked for: a
    // saturated link that drops (a shaper's full queue) can go quiet for
    // several retransmission timeouts in a row, each twice the last, so it
    // gets [`BUSY_PROOF`] (CI saw 1.9 s of such silence end a download that
    // OpenSSH, with the same keepalive budget, carried through).
    let proof_now = |answers: &std::collections::VecDeque<Duration>, busy: bool| {
        let slowest = answers.iter().max().copied().unwrap_or_default();
        let rto = session.arrivals.retransmit_timeout().unwrap_or_default();
        let proof = slowest
            .saturating_mul(2)
            .max(rto.saturating_mul(4))
            .max(if busy { BUSY_PROOF } else { Duration::ZERO })
            .clamp(floor, ceiling);
        tracing::debug!("proof window {proof:?} (slowest recent answer {slowest:?}, TCP retransmission timeout {rto:?}, bulk arriving: {busy})");
        proof
    };
    // What had arrived when the last round began, and when: arriving faster
    // than [`BUSY_RATE`] since then means bulk data is flowing.
    let mut round_began = (session.arrivals.count(), tokio::time::Instant::now());
    let busy = |since: (u64, tokio::time::Instant)| {
        let got = session.arrivals.count().wrapping_sub(since.0) as f64;
        got / since.1.elapsed().as_secs_f64().max(0.1) > BUSY_RATE
    };
    let mut misses = 0;
    let mut next = tokio::time::Instant::now() + ka.interval;
    loop {
        let mut urgent: Option<&'static str> = None;
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            Ok(()) = clock.changed() => urgent = Some(clock.borrow_and_update().why()),
            () = suspect.notified() => {
                urgent = Some("when traffic through it waited");
                everyone.traffic_waited();
                clock.mark_unchanged();
            }
        }
        let sent = tokio::time::Instant::now();
        let ping = session.handle.send_ping();
        tokio::pin!(ping);
        let mut seen = session.arrivals.count();
        let was_busy = busy(round_began);
        round_began = (seen, sent);
        // How long this ping may go unanswered with nothing arriving: the proof
        // window when asked to prove itself now, else one interval.
        let mut proof = if urgent.is_some() {
            proof_now(&answers, was_busy)
        } else {
            ka.interval
        };
        let mut deadline = sent + proof;
        let outcome = loop {
            tokio::select! {
                r = &mut ping => break if r.is_ok() { Outcome::Answered } else { Outcome::Closed },
                () = tokio::time::sleep_until(deadline) => {
                    let now = session.arrivals.count();
                    if now == seen {
                        break Outcome::Silent;
                    }
                    // Bytes arrived: alive; the answer is on its way behind them.
                    seen = now;
                    misses = 0;
                    deadline = tokio::time::Instant::now() + proof;
                }
                Ok(()) = clock.changed(), if urgent.is_none() => {
                    urgent = Some(clock.borrow_and_update().why());
                    proof = proof_now(&answers, was_busy || busy((seen, sent)));
                    seen = session.arrivals.count();
                    deadline = deadline.min(tokio::time::Instant::now() + proof);
                }
                () = suspect.notified(), if urgent.is_none() => {
                    urgent = Some("when traffic through it waited");
                    everyone.traffic_waited();
                    clock.mark_unchanged();
                    proof = proof_now(&answers, was_busy || busy((seen, sent)));
                    seen = session.arrivals.count();
                    deadline = deadline.min(tokio::time::Instant::now() + proof);
                }
            }
        };
        match outcome {
            Outcome::Answered => {
                misses = 0;
                next = sent + ka.interval;
                if answers.len() == 8 {
                    answers.pop_front();
                }
                answers.push_back(sent.elapsed());
            }
            Outcome::Closed => return ("connection closed".to_string(), false),
            Outcome::Silent => {
                if let Some(why) = urgent {
                    return (
                        format!("no keepalive answer and no data within {proof:?} {why}: the peer or the link is gone"),
                        true,
                    );
                }
                misses += 1;
                if misses >= ka.count {
                    return (
                        format!(
                            "keepalive timeout: {misses} keepalives unanswered and no data ({:?} each)",
                            ka.interval
                        ),
                        true,
                    );
                }
                next = tokio::time::Instant::now();
            }
        }
    }
}
