//! Wake-from-sleep detection. While a laptop sleeps the monotonic clock stops and the
//! wall clock does not; when they disagree by more than a threshold after a tick, the
//! machine slept (or its clock was set), its TCP sessions are probably dead, and the
//! supervisors re-check at once instead of waiting for keepalives to time out.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How far the two clocks may drift apart in one tick before it counts as a jump.
const THRESHOLD: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_secs(1);

/// Compares one tick of both clocks; `Some(jump)` if they disagree by more than the threshold.
pub fn jump(
    mono_elapsed: Duration,
    wall_before: SystemTime,
    wall_now: SystemTime,
) -> Option<Duration> {
    let wall_elapsed = match wall_now.duration_since(wall_before) {
        Ok(d) => d.abs_diff(mono_elapsed),
        // The wall clock went backwards.
        Err(e) => e.duration() + mono_elapsed,
    };
    (wall_elapsed > THRESHOLD).then_some(wall_elapsed)
}

/// A jump seen by the watcher: a counter that only grows, and the size of the last
/// jump; and a second counter of the times a session's link went silent (every
/// other session then proves itself too: this machine's own link may be the one
/// that went, as in airplane mode or a closed lid). `cause` says which came last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WallClockJump {
    pub count: u64,
    pub last: Duration,
    pub silent_links: u64,
    pub cause: Cause,
}

/// Why every session was asked to prove itself last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cause {
    #[default]
    ClockJump,
    SilentLink,
    TrafficWaited,
}

impl WallClockJump {
    /// Why every session should prove itself now, in words.
    pub fn why(&self) -> &'static str {
        match self.cause {
            Cause::ClockJump => "after the wall clock jumped (wake from sleep?)",
            Cause::SilentLink => "after another peer's link went silent",
            Cause::TrafficWaited => "when traffic through another peer waited",
        }
    }
}

/// Publishes every wall-clock jump on a `watch` channel.
#[derive(Clone)]
pub struct ClockWatch {
    tx: Arc<watch::Sender<WallClockJump>>,
}

impl ClockWatch {
    pub fn spawn(cancel: CancellationToken) -> ClockWatch {
        let watch = ClockWatch::never();
        let fire = watch.clone();
        tokio::spawn(async move {
            let mut mono = Instant::now();
            let mut wall = SystemTime::now();
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(TICK) => {}
                }
                let (mono_now, wall_now) = (Instant::now(), SystemTime::now());
                if let Some(j) = jump(mono_now - mono, wall, wall_now) {
                    tracing::info!(
                        "wall clock jumped by {j:?} (wake from sleep?); re-checking every session"
                    );
                    fire.fire(j);
                }
                (mono, wall) = (mono_now, wall_now);
            }
        });
        watch
    }

    /// A watch with no task behind it: it fires only through [`ClockWatch::fire`].
    pub fn never() -> ClockWatch {
        ClockWatch {
            tx: Arc::new(watch::Sender::new(WallClockJump::default())),
        }
    }

    /// Reports a jump as the watcher would (tests simulate a wake from sleep with it).
    pub fn fire(&self, jump: Duration) {
        self.tx.send_modify(|w| {
            w.count += 1;
            w.last = jump;
            w.cause = Cause::ClockJump;
        });
    }

    /// A session died of silence: every other session checks itself now.
    pub fn link_went_silent(&self) {
        self.tx.send_modify(|w| {
            w.silent_links += 1;
            w.cause = Cause::SilentLink;
        });
    }

    /// Traffic through one session waits: every session proves itself now (this
    /// machine's own link may be what went; in airplane mode all go at once).
    pub fn traffic_waited(&self) {
        self.tx.send_modify(|w| w.cause = Cause::TrafficWaited);
    }

    pub fn subscribe(&self) -> watch::Receiver<WallClockJump> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_sleep_and_backwards_steps_but_not_jitter() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let one = Duration::from_secs(1);
        assert_eq!(jump(one, t0, t0 + Duration::from_millis(1100)), None);
        assert_eq!(
            jump(one, t0, t0 + Duration::from_secs(600)),
            Some(Duration::from_secs(599))
        );
        assert_eq!(
            jump(one, t0, t0 - Duration::from_secs(5)),
            Some(Duration::from_secs(6))
        );
    }
}
