//! Health of one candidate (a node's instance of a service), with hysteresis:
//! HAProxy-style rise/fall counts, so one lost probe does not flap a route and one
//! lucky probe does not bring back a sick node. Pure logic, no I/O: the prober
//! (`probe`) feeds it observations, the router reads the state.

use std::time::SystemTime;

use serde::Serialize;

/// Consecutive successes that bring an offline candidate back.
pub const RISE: u32 = 2;
/// Consecutive failures that take an up candidate offline.
pub const FALL: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Online,
    /// Up, but slow, busy (429/503) or short of VRAM: used after every online one.
    Degraded,
    Offline,
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Ok,
    Degraded(String),
    Failed(String),
}

/// A candidate's health state, its reason and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthState {
    pub health: Health,
    pub reason: String,
    #[serde(serialize_with = "crate::util::ser_time")]
    pub since: SystemTime,
    #[serde(skip)]
    probed: bool,
    /// Has been up since start: a later comeback is a recovery (failback hold-down).
    #[serde(skip)]
    ever_up: bool,
    /// When it last came back after having been up and then down.
    #[serde(skip)]
    pub recovered_at: Option<std::time::Instant>,
    #[serde(skip)]
    successes: u32,
    #[serde(skip)]
    failures: u32,
}

impl HealthState {
    /// Not probed yet: offline until the first answer.
    pub fn new(now: SystemTime) -> Self {
        HealthState {
            health: Health::Offline,
            reason: "not probed yet".into(),
            since: now,
            probed: false,
            ever_up: false,
            recovered_at: None,
            successes: 0,
            failures: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.health != Health::Offline
    }

    /// Known to be down: offline after at least one probe (not merely unprobed).
    pub fn is_known_down(&self) -> bool {
        self.probed && self.health == Health::Offline
    }

    /// Takes one observation; returns true when the health changed (log and emit then).
    ///
    /// - at start-up one success is enough;
    /// - offline → up after [`RISE`] successes in a row;
    /// - up → offline after [`FALL`] failures in a row;
    /// - online ↔ degraded at once (both are up; it only reorders candidates).
    pub fn observe(&mut self, obs: Observation, now: SystemTime) -> bool {
        let first = !self.probed;
        self.probed = true;
        let (next, reason) = match obs {
            Observation::Failed(reason) => {
                self.failures += 1;
                self.successes = 0;
                let down = !self.is_up() || self.failures >= FALL || first;
                if !down {
                    return false; // a failure or two while up: wait for more
                }
                (Health::Offline, reason)
            }
            ok => {
                self.successes += 1;
                self.failures = 0;
                if !self.is_up() && !first && self.successes < RISE {
                    return false; // coming back: wait for the rise count
                }
                match ok {
                    Observation::Degraded(reason) => (Health::Degraded, reason),
                    _ => (Health::Online, String::new()),
                }
            }
        };
        let changed = next != self.health;
        self.reason = reason;
        if changed {
            if self.health == Health::Offline && self.ever_up {
                self.recovered_at = Some(std::time::Instant::now());
            }
            self.ever_up = true;
            self.health = next;
            self.since = now;
        }
        changed
    }

    /// A lower layer (the SSH session of its tunnel) is down: offline at once.
    pub fn force_offline(&mut self, reason: String, now: SystemTime) -> bool {
        self.successes = 0;
        self.failures = FALL;
        self.probed = true;
        let changed = self.health != Health::Offline;
        if changed {
            self.since = now;
        }
        self.health = Health::Offline;
        self.reason = reason;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Observation {
        Observation::Failed("connection refused".into())
    }

    #[test]
    fn one_success_at_start_then_fall_after_three() {
        let t = SystemTime::UNIX_EPOCH;
        let mut h = HealthState::new(t);
        assert!(h.observe(Observation::Ok, t));
        assert_eq!(h.health, Health::Online);
        assert!(!h.observe(fail(), t));
        assert!(!h.observe(fail(), t));
        assert_eq!(h.health, Health::Online, "two failures are not enough");
        assert!(h.observe(fail(), t));
        assert_eq!(h.health, Health::Offline);
        assert_eq!(h.reason, "connection refused");
    }

    #[test]
    fn rise_needs_two_successes_in_a_row() {
        let t = SystemTime::UNIX_EPOCH;
        let mut h = HealthState::new(t);
        assert!(!h.observe(fail(), t), "offline at start stays offline");
        assert!(!h.observe(Observation::Ok, t));
        assert!(!h.observe(fail(), t), "the streak is broken");
        assert!(!h.observe(Observation::Ok, t));
        assert!(h.observe(Observation::Ok, t));
        assert_eq!(h.health, Health::Online);
    }

    #[test]
    fn degraded_is_up_and_switches_at_once() {
        let t = SystemTime::UNIX_EPOCH;
        let mut h = HealthState::new(t);
        h.observe(Observation::Ok, t);
        assert!(h.observe(Observation::Degraded("429 busy".into()), t));
        assert!(h.is_up());
        assert_eq!(h.reason, "429 busy");
        assert!(h.observe(Observation::Ok, t));
        assert_eq!(h.health, Health::Online);
    }

    #[test]
    fn a_lower_layer_down_is_offline_at_once_and_needs_the_rise() {
        let t = SystemTime::UNIX_EPOCH;
        let mut h = HealthState::new(t);
        h.observe(Observation::Ok, t);
        assert!(h.force_offline("ssh: keepalive timeout".into(), t));
        assert!(!h.observe(Observation::Ok, t));
        assert!(h.observe(Observation::Ok, t));
    }
}
