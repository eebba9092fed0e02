//! A hybrid logical clock: wall-clock milliseconds plus a counter, so that every
//! metadata write of this device sorts after every write it has seen, even when the
//! wall clock stands still or steps back. Stamps are fixed-width strings that sort
//! as they compare: `0001764201234567-00000-<device>`; the device id breaks ties.
//! The counter never passes 99 999 (it would then sort below its predecessor as
//! text): the stamp moves to the next millisecond instead.
//!
//! Clock skew is bounded: a stamp from another device more than [`MAX_SKEW`] ahead
//! of our wall clock is not absorbed (it still wins its last-writer-wins compare,
//! but it cannot drag this device's clock into the future).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The largest counter the 5-digit field holds.
const MAX_COUNTER: u32 = 99_999;

/// How far ahead of our wall clock another device's stamp may be and still move ours.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub ms: u64,
    pub counter: u32,
}

impl Stamp {
    pub fn encode(self, device: &str) -> String {
        format!("{:016}-{:05}-{device}", self.ms, self.counter)
    }

    /// The first stamp after this one, whatever the device: a write stamped with it
    /// wins against one stamped with `self`.
    pub fn next(self) -> Stamp {
        if self.counter >= MAX_COUNTER {
            Stamp {
                ms: self.ms + 1,
                counter: 0,
            }
        } else {
            Stamp {
                ms: self.ms,
                counter: self.counter + 1,
            }
        }
    }

    /// The time part of an encoded stamp; `None` if it is not one of ours.
    pub fn decode(s: &str) -> Option<Stamp> {
        let mut parts = s.splitn(3, '-');
        let ms = parts.next()?.parse().ok()?;
        let counter = parts.next()?.parse().ok()?;
        parts.next()?;
        Some(Stamp { ms, counter })
    }
}

#[derive(Debug, Clone)]
pub struct Hlc {
    last: Stamp,
}

impl Hlc {
    pub fn new(last: Stamp) -> Hlc {
        Hlc { last }
    }

    pub fn last(&self) -> Stamp {
        self.last
    }

    /// A stamp for a write happening now (wall clock `now_ms`).
    pub fn tick(&mut self, now_ms: u64) -> Stamp {
        self.last = if now_ms > self.last.ms {
            Stamp {
                ms: now_ms,
                counter: 0,
            }
        } else {
            self.last.next()
        };
        self.last
    }

    /// A stamp for a local write to a row whose current stamp is `row`: above it
    /// whatever the wall clock says (a device whose clock is slow still wins with
    /// its newer edit). The clock itself is not dragged to `row` (that may come
    /// from a device whose clock is far ahead); only this row's stamps climb.
    pub fn tick_above(&mut self, now_ms: u64, row: Option<Stamp>) -> Stamp {
        let s = self.tick(now_ms);
        match row {
            Some(r) if r >= s => r.next(),
            _ => s,
        }
    }

    /// Takes in another device's stamp. Returns how far ahead of `now_ms` it was when
    /// that exceeds [`MAX_SKEW`] (then it is not absorbed).
    pub fn observe(&mut self, remote: Stamp, now_ms: u64) -> Option<Duration> {
        let ahead = remote.ms.saturating_sub(now_ms);
        if ahead > MAX_SKEW.as_millis() as u64 {
            return Some(Duration::from_millis(ahead));
        }
        if remote > self.last {
            self.last = remote;
        }
        None
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_only_move_forward_and_sort_as_strings() {
        let mut c = Hlc::new(Stamp { ms: 0, counter: 0 });
        let a = c.tick(1_000);
        let b = c.tick(1_000); // same millisecond
        let d = c.tick(900); // the wall clock stepped back
        assert!(a < b && b < d, "{a:?} {b:?} {d:?}");
        assert!(a.encode("x") < b.encode("x") && b.encode("x") < d.encode("x"));
        assert_eq!(Stamp::decode(&d.encode("dev-1")), Some(d));
        // A later wall clock beats any counter; strings agree.
        let e = c.tick(1_001);
        assert!(d.encode("zzz") < e.encode("aaa"));
    }

    #[test]
    fn the_counter_never_outgrows_its_field() {
        let mut c = Hlc::new(Stamp {
            ms: 7,
            counter: MAX_COUNTER - 1,
        });
        let a = c.tick(7);
        let b = c.tick(7);
        let d = c.tick(7);
        assert_eq!(
            a,
            Stamp {
                ms: 7,
                counter: MAX_COUNTER
            }
        );
        assert_eq!(b, Stamp { ms: 8, counter: 0 });
        assert!(a.encode("z") < b.encode("a") && b.encode("z") < d.encode("a"));
    }

    #[test]
    fn a_local_edit_is_stamped_above_the_row_whatever_the_clock() {
        let mut c = Hlc::new(Stamp { ms: 0, counter: 0 });
        // The row was stamped by a device two minutes ahead of this one.
        let row = Stamp {
            ms: 120_000 + 1_000,
            counter: 4,
        };
        let s = c.tick_above(1_000, Some(row));
        assert!(s > row && s.encode("aaaa") > row.encode("zzzz"), "{s:?}");
        assert!(
            c.last().ms <= 1_000,
            "the clock itself is not dragged ahead"
        );
        // A row stamped in our past changes nothing.
        let t = c.tick_above(2_000, Some(Stamp { ms: 10, counter: 0 }));
        assert_eq!(
            t,
            Stamp {
                ms: 2_000,
                counter: 0
            }
        );
    }

    #[test]
    fn a_remote_stamp_moves_the_clock_within_the_skew_bound_only() {
        let mut c = Hlc::new(Stamp {
            ms: 1_000,
            counter: 0,
        });
        assert_eq!(
            c.observe(
                Stamp {
                    ms: 5_000,
                    counter: 3
                },
                2_000
            ),
            None
        );
        assert_eq!(
            c.tick(2_000),
            Stamp {
                ms: 5_000,
                counter: 4
            },
            "after what it has seen"
        );
        let far = Stamp {
            ms: 2_000 + MAX_SKEW.as_millis() as u64 + 10_000,
            counter: 0,
        };
        assert_eq!(
            c.observe(far, 2_000),
            Some(MAX_SKEW + Duration::from_secs(10))
        );
        assert_eq!(
            c.tick(2_000),
            Stamp {
                ms: 5_000,
                counter: 5
            },
            "not dragged into the future"
        );
    }
}
