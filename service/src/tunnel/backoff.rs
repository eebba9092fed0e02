//! Reconnect delays: exponential from `initial` to `max`, ×2 each failure, ±20 %
//! jitter, and a reset once a session has stayed up for [`STABLE_AFTER`].

use std::time::Duration;

use crate::config::Backoff as BackoffConfig;

/// A session up this long counts as stable: the next failure starts from `initial`.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    pub fn new(cfg: BackoffConfig) -> Self {
        Backoff { cfg, attempt: 0 }
    }

    /// The delay before the next attempt, without jitter.
    pub fn base_delay(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        self.cfg.initial.saturating_mul(factor).min(self.cfg.max)
    }

    /// The delay before the next attempt (jittered), and one more failure counted.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base_delay();
        self.attempt = self.attempt.saturating_add(1);
        let jitter = rand::random_range(0.8..1.2);
        base.mul_f64(jitter).min(self.cfg.max)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_cap_with_bounded_jitter_and_resets() {
        let cfg = BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        let mut b = Backoff::new(cfg);
        let mut bases = Vec::new();
        for _ in 0..10 {
            let base = b.base_delay();
            let d = b.next_delay();
            assert!(
                d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2).min(cfg.max),
                "{d:?} vs {base:?}"
            );
            bases.push(base.as_millis());
        }
        assert_eq!(
            bases,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.base_delay(), Duration::from_millis(500));
    }
}
