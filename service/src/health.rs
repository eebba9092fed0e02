//! Health of one candidate (a node's instance of a service), with hysteresis:
//! HAProxy-style rise/fall counts, so one lost probe does not flap a route and one
//! lucky probe does not bring back a sick node. Pure logic, no I/O: the prober
//! (`services::prober`, through `kinds`) feeds it observations, the router reads the state.

use std::time::SystemTime;

use serde::Serialize;

/// Consecutive successes that bring an offline candidate back.
pub const RISE: u32 = 2;
/// Consecutive failures that take an up candidate offline.
pub const FALL: u32 = 3;
/// Consecutive slow or busy probes that make an online candidate degraded (and
/// consecutive good ones, `RISE`, that make it online again): a link whose latency
/// hovers at the threshold does not flip the route back and forth.
pub const DEGRADE_AFTER: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Online,
    /// Up, but slow, busy (429/503) or short of VRAM: used after every online one.
    Degraded,
    Offline,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Online => "online",
            Health::Degraded => "degraded",
            Health::Offline => "offline",
        }
    }
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Ok,
    Degraded(String),
    Failed(String),
}

/// A candidate's health state, its reason and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HealthState {
    pub health: Health,
    pub reason: String,
    #[serde(
        serialize_with = "crate::util::ser_time",
        deserialize_with = "crate::util::de_time"
    )]
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
    /// A probe of its own has failed since start (a lower layer being down does
    /// not count: the first good probe after start-up is enough then).
    #[serde(skip)]
    failed_once: bool,
    #[serde(skip)]
    degraded_streak: u32,
    #[serde(skip)]
    ok_streak: u32,
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
            failed_once: false,
            degraded_streak: 0,
            ok_streak: 0,
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
    /// - at start-up one success is enough (also after a tunnel that was not up yet);
    /// - offline → up after [`RISE`] successes in a row;
    /// - up → offline after [`FALL`] failures in a row;
    /// - online → degraded after [`DEGRADE_AFTER`] slow or busy probes in a row,
    ///   degraded → online after [`RISE`] good ones (both are up; it only
    ///   reorders candidates).
    pub fn observe(&mut self, obs: Observation, now: SystemTime) -> bool {
        let first = !self.probed;
        self.probed = true;
        let (next, reason) = match obs {
            Observation::Failed(reason) => {
                self.failed_once = true;
                self.failures += 1;
                self.successes = 0;
                self.ok_streak = 0;
                self.degraded_streak = 0;
                let down = !self.is_up() || self.failures >= FALL || first;
                if !down {
                    return false; // a failure or two while up: wait for more
                }
                (Health::Offline, reason)
            }
            ok => {
                self.successes += 1;
                self.failures = 0;
                let coming_back = !self.is_up();
                let needs_rise = self.ever_up || self.failed_once;
                if coming_back && needs_rise && self.successes < RISE {
                    return false; // coming back: wait for the rise count
                }
                match ok {
                    Observation::Degraded(reason) => {
                        self.degraded_streak += 1;
                        self.ok_streak = 0;
                        if self.health == Health::Online && self.degraded_streak < DEGRADE_AFTER {
                            return false;
                        }
                        (Health::Degraded, reason)
                    }
                    _ => {
                        self.ok_streak += 1;
                        self.degraded_streak = 0;
                        if self.health == Health::Degraded && self.ok_streak < RISE {
                            return false;
                        }
                        (Health::Online, String::new())
                    }
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
    fn degraded_is_up_and_has_its_own_hysteresis() {
        let t = SystemTime::UNIX_EPOCH;
        let mut h = HealthState::new(t);
        h.observe(Observation::Ok, t);
        let slow = || Observation::Degraded("slow: answered in 600 ms".into());
        assert!(!h.observe(slow(), t), "one slow probe is not enough");
        assert!(!h.observe(Observation::Ok, t));
        assert!(!h.observe(slow(), t), "alternating never flips it");
        assert_eq!(h.health, Health::Online);
        assert!(h.observe(slow(), t));
        assert!(h.is_up());
        assert_eq!(h.health, Health::Degraded);
        assert!(
            !h.observe(Observation::Ok, t),
            "one good probe is not enough back"
        );
        assert!(!h.observe(slow(), t));
        assert!(!h.observe(Observation::Ok, t));
        assert!(h.observe(Observation::Ok, t));
        assert_eq!(h.health, Health::Online);
        // Degraded straight from start-up: one probe says it.
        let mut h = HealthState::new(t);
        assert!(h.observe(Observation::Degraded("429 busy".into()), t));
        assert_eq!(
            (h.health, h.reason.as_str()),
            (Health::Degraded, "429 busy")
        );
    }

    #[test]
    fn one_good_probe_at_start_up_even_after_the_tunnel_was_not_up_yet() {
        let t = SystemTime::UNIX_EPOCH;
        let mut h = HealthState::new(t);
        h.force_offline("tunnel connecting".into(), t);
        assert!(h.observe(Observation::Ok, t), "up on the first good probe");
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
