//! Choosing the node for a request: pure functions over a snapshot of the
//! candidates, so the rules (ARCHITECTURE.md, "Liveness and failover") are unit-tested without I/O.
//!
//! Order: a user's pin first; then every eligible candidate — up, not ejected, and
//! having the requested model when models are known — online before degraded,
//! recovered-but-held-down after the others, then by the node's priority, then by
//! load. When nothing is eligible, every candidate in priority order ("panic mode"):
//! trying a node that looks down beats failing a request outright.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::health::Health;

/// Failback waits this long after a node recovers (default; `hold_down` in config).
pub const HOLD_DOWN: Duration = Duration::from_secs(30);
/// Consecutive transport errors / 5xx that eject a node.
pub const EJECT_AFTER: u32 = 3;
pub const EJECT_BASE: Duration = Duration::from_secs(30);
pub const EJECT_MAX: Duration = Duration::from_secs(300);

/// What the router knows of one candidate at one moment.
#[derive(Debug, Clone)]
pub struct View {
    pub node: String,
    pub health: Health,
    pub health_reason: String,
    /// Set when the node came back after being down (not on its first success).
    pub recovered_at: Option<Instant>,
    /// Installed models, when the service reports them (Ollama).
    pub models: Option<std::sync::Arc<[String]>>,
    pub in_flight: usize,
    pub ejected_until: Option<Instant>,
    /// Its ejections in a row, each soon after it came back (more than 1: flapping).
    pub ejections: u32,
    /// The node's largest GPU memory, when its inventory is known.
    pub vram_bytes: Option<u64>,
    /// PostgreSQL: `Some(true)` for a read-only replica (used after every primary).
    pub read_only: Option<bool>,
    /// Its rank (1 = first choice); `None`: its position. Equal ranks go by load.
    pub priority: Option<u32>,
}

/// What a request needs.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    pub model: Option<String>,
    /// GPU memory the model needs (declared in the service's `vram`).
    pub vram_bytes: Option<u64>,
}

/// One entry of the ordered candidate list, with why it is where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Choice {
    /// Index into the service's candidates (its priority order).
    pub index: usize,
    pub node: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Plan {
    pub order: Vec<Choice>,
    /// Nothing was eligible: every candidate is tried in priority order.
    pub panic: bool,
    /// Candidates left out, with why.
    pub skipped: Vec<Choice>,
}

impl Plan {
    /// The node requests go to now; `None` in panic mode (requests still try every
    /// node, but none is up).
    pub fn current(&self) -> Option<&str> {
        if self.panic {
            None
        } else {
            self.order.first().map(|c| c.node.as_str())
        }
    }
}

/// Ollama names `llama3` and `llama3:latest` the same model.
pub fn same_model(a: &str, b: &str) -> bool {
    name_and_tag(a) == name_and_tag(b)
}

/// `llama3:8b` → (`llama3`, `8b`); no tag is `latest`.
fn name_and_tag(model: &str) -> (&str, &str) {
    model.split_once(':').unwrap_or((model, "latest"))
}

/// Whether a plan says why (for status, events and a request's tried header) or
/// only the order (a request's path, where the words would be thrown away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explain {
    Why,
    OrderOnly,
}

pub fn plan(
    views: &[View],
    needs: &Needs,
    pin: Option<&str>,
    hold_down: Duration,
    now: Instant,
    explain: Explain,
) -> Plan {
    let why = explain == Explain::Why;
    let someone_has_model = needs.model.as_deref().is_some_and(|m| {
        views.iter().any(|v| {
            v.models
                .as_ref()
                .is_some_and(|ms| ms.iter().any(|x| same_model(x, m)))
        })
    });
    let mut eligible = Vec::new();
    let mut skipped = Vec::new();
    for (index, v) in views.iter().enumerate() {
        let mut skip = |reason: &dyn Fn() -> String| {
            if why {
                skipped.push(Choice {
                    index,
                    node: v.node.clone(),
                    why: reason(),
                });
            }
        };
        if v.health == Health::Offline {
            skip(&|| format!("offline: {}", v.health_reason));
            continue;
        }
        if let Some(until) = v.ejected_until.filter(|u| *u > now) {
            skip(&|| {
                let left = (until - now).as_secs().max(1);
                if v.ejections > 1 {
                    format!(
                        "ejected for {left} s more: flapping (ejection {} in a row, each soon after it came back)",
                        v.ejections
                    )
                } else {
                    format!("ejected for {left} s after repeated errors")
                }
            });
            continue;
        }
        if let (Some(model), Some(models)) = (&needs.model, &v.models) {
            if someone_has_model && !models.iter().any(|m| same_model(m, model)) {
                skip(&|| format!("does not have {model}"));
                continue;
            }
        }
        if let (Some(need), Some(have)) = (needs.vram_bytes, v.vram_bytes) {
            if have < need {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                let model = needs.model.as_deref().unwrap_or("the model");
                skip(&|| {
                    format!(
                        "has {:.0} GiB of VRAM, {model} needs {:.0} GiB",
                        gib(have),
                        gib(need)
                    )
                });
                continue;
            }
        }
        let held = v
            .recovered_at
            .is_some_and(|t| now.duration_since(t) < hold_down);
        eligible.push((index, v, held));
    }
    let pinned = |i: usize| pin.is_some_and(|p| views[i].node == p);
    if eligible.is_empty() {
        let mut order: Vec<Choice> = views
            .iter()
            .enumerate()
            .map(|(index, v)| Choice {
                index,
                node: v.node.clone(),
                why: if why {
                    format!("panic mode: nothing is up ({})", v.health_reason)
                } else {
                    String::new()
                },
            })
            .collect();
        order.sort_by_key(|c| !pinned(c.index));
        return Plan {
            order,
            panic: true,
            skipped: Vec::new(),
        };
    }
    let rank = |i: usize, v: &View| v.priority.unwrap_or(i as u32 + 1);
    eligible.sort_by_key(|(i, v, held)| {
        (
            !pinned(*i),
            v.read_only == Some(true),
            v.health == Health::Degraded,
            *held,
            rank(*i, v),
            v.in_flight,
            *i,
        )
    });
    let order = eligible
        .into_iter()
        .map(|(index, v, held)| {
            if !why {
                return Choice {
                    index,
                    node: v.node.clone(),
                    why: String::new(),
                };
            }
            let mut why = match v.health {
                Health::Degraded => {
                    format!(
                        "degraded ({}), priority {}",
                        v.health_reason,
                        rank(index, v)
                    )
                }
                _ => format!("online, priority {}", rank(index, v)),
            };
            if views
                .iter()
                .enumerate()
                .any(|(j, o)| j != index && rank(j, o) == rank(index, v))
            {
                why.push_str(&format!(", then by load ({} in flight)", v.in_flight));
            }
            match v.read_only {
                Some(true) => why.push_str(", replica (read-only)"),
                Some(false) => why.push_str(", primary"),
                None => {}
            }
            if held {
                let left = v.recovered_at.map_or(0, |t| {
                    hold_down.saturating_sub(now.duration_since(t)).as_secs()
                });
                why.push_str(&format!(", recovered: held back for {left} s more"));
            }
            if pinned(index) {
                why = format!("pinned; {why}");
            }
            Choice {
                index,
                node: v.node.clone(),
                why,
            }
        })
        .collect();
    Plan {
        order,
        panic: false,
        skipped,
    }
}

/// A node that fails again within this of coming back is flapping.
pub const FLAP_WINDOW: Duration = Duration::from_secs(120);

/// Passive ejection, once per outage: `EJECT_AFTER` transport errors or 5xx in a
/// row eject a node for `EJECT_BASE`; failures of requests that were already on
/// their way while it is ejected are the same outage and change nothing. A node
/// that comes back (its health passed its rise checks) is eligible again, after the
/// route's hold-down. Only a node ejected again within `FLAP_WINDOW` of coming back
/// — flapping — gets longer ejections: `EJECT_BASE` × n for its n-th in a row, at
/// most `EJECT_MAX`.
#[derive(Debug, Clone, Default)]
pub struct Ejection {
    errors: u32,
    /// Ejections in a row without a stable stretch between them.
    ejections: u32,
    pub until: Option<Instant>,
    /// When it last came back.
    back_at: Option<Instant>,
}

/// An ejection that just began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejected {
    pub until: Instant,
    /// Its n-th ejection in a row (more than 1: it is flapping).
    pub nth: u32,
}

impl Ejection {
    /// Records a failed request; returns the ejection when this one ejects.
    pub fn failure(&mut self, now: Instant) -> Option<Ejected> {
        if self.until.is_some_and(|u| u > now) {
            return None;
        }
        self.errors += 1;
        if self.errors < EJECT_AFTER {
            return None;
        }
        self.errors = 0;
        let flapping = self
            .back_at
            .is_some_and(|b| now.saturating_duration_since(b) < FLAP_WINDOW);
        self.ejections = if flapping { self.ejections + 1 } else { 1 };
        let until = now + EJECT_BASE.saturating_mul(self.ejections).min(EJECT_MAX);
        self.until = Some(until);
        Some(Ejected {
            until,
            nth: self.ejections,
        })
    }

    pub fn success(&mut self) {
        self.errors = 0;
    }

    /// The node came back (passed its rise checks): after one outage it is
    /// eligible again (after the hold-down); a flapping node serves out its
    /// ejection. Failures from now on are a new outage.
    pub fn recovered(&mut self, now: Instant) {
        if self.ejections <= 1 {
            self.until = None;
        }
        self.errors = 0;
        self.back_at = Some(now);
    }

    /// Ejections in a row (more than 1: flapping).
    pub fn ejections(&self) -> u32 {
        self.ejections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(node: &str, health: Health) -> View {
        View {
            node: node.into(),
            health,
            health_reason: if health == Health::Online {
                String::new()
            } else {
                "reason".into()
            },
            recovered_at: None,
            models: None,
            in_flight: 0,
            ejected_until: None,
            ejections: 0,
            vram_bytes: None,
            read_only: None,
            priority: None,
        }
    }

    /// The plan with reasons, under the tests' hold-down.
    fn explained(v: &[View], needs: &Needs, pin: Option<&str>, now: Instant) -> Plan {
        plan(v, needs, pin, HOLD_DOWN, now, Explain::Why)
    }

    fn nodes(p: &Plan) -> Vec<&str> {
        p.order.iter().map(|c| c.node.as_str()).collect()
    }

    #[test]
    fn priority_then_health() {
        let now = Instant::now();
        let views = [
            view("aurora", Health::Degraded),
            view("vengeance", Health::Online),
            view("book", Health::Online),
        ];
        let p = explained(&views, &Needs::default(), None, now);
        assert_eq!(nodes(&p), ["vengeance", "book", "aurora"]);
        assert!(p.order[2].why.starts_with("degraded"));
        assert!(!p.panic);
    }

    #[test]
    fn offline_and_ejected_are_skipped_with_reasons() {
        let now = Instant::now();
        let mut v = [
            view("aurora", Health::Offline),
            view("vengeance", Health::Online),
            view("book", Health::Online),
        ];
        v[1].ejected_until = Some(now + Duration::from_secs(30));
        let p = explained(&v, &Needs::default(), None, now);
        assert_eq!(nodes(&p), ["book"]);
        assert_eq!(p.skipped.len(), 2);
        assert!(p.skipped[0].why.starts_with("offline"));
        assert!(p.skipped[1].why.contains("ejected for 30 s"));
    }

    #[test]
    fn model_filter_only_when_someone_has_it() {
        let now = Instant::now();
        let mut v = [
            view("aurora", Health::Online),
            view("vengeance", Health::Online),
        ];
        v[0].models = Some(vec!["llama3.2:3b".into()].into());
        v[1].models = Some(vec!["llama3.1:70b".into(), "qwen3".into()].into());
        let needs = |m: &str| Needs {
            model: Some(m.into()),
            vram_bytes: None,
        };
        assert_eq!(
            nodes(&explained(&v, &needs("llama3.1:70b"), None, now)),
            ["vengeance"]
        );
        assert_eq!(
            nodes(&explained(&v, &needs("qwen3:latest"), None, now)),
            ["vengeance"]
        );
        // Nobody has it: let the preferred node answer (Ollama's own 404).
        assert_eq!(
            nodes(&explained(&v, &needs("mistral"), None, now)),
            ["aurora", "vengeance"]
        );
    }

    #[test]
    fn recovered_node_is_held_down_then_preferred_again() {
        let now = Instant::now();
        let mut v = [
            view("aurora", Health::Online),
            view("vengeance", Health::Online),
        ];
        v[0].recovered_at = Some(now);
        let p = explained(&v, &Needs::default(), None, now + Duration::from_secs(10));
        assert_eq!(nodes(&p), ["vengeance", "aurora"]);
        assert!(
            p.order[1].why.contains("held back for 20 s"),
            "{:?}",
            p.order[1]
        );
        let p = explained(&v, &Needs::default(), None, now + HOLD_DOWN);
        assert_eq!(nodes(&p), ["aurora", "vengeance"]);
        // Held down but alone: still used.
        v[1].health = Health::Offline;
        assert_eq!(
            nodes(&explained(&v, &Needs::default(), None, now)),
            ["aurora"]
        );
    }

    #[test]
    fn pin_goes_first_and_panic_mode_keeps_everyone() {
        let now = Instant::now();
        let v = [
            view("aurora", Health::Online),
            view("vengeance", Health::Online),
        ];
        let p = explained(&v, &Needs::default(), Some("vengeance"), now);
        assert_eq!(nodes(&p), ["vengeance", "aurora"]);
        assert!(p.order[0].why.starts_with("pinned"));
        let v = [
            view("aurora", Health::Offline),
            view("vengeance", Health::Offline),
        ];
        let p = explained(&v, &Needs::default(), None, now);
        assert!(p.panic);
        assert_eq!(nodes(&p), ["aurora", "vengeance"]);
    }

    #[test]
    fn vram_need_skips_small_gpus_but_not_unknown_ones() {
        let now = Instant::now();
        let mut v = [
            view("aurora", Health::Online),
            view("vengeance", Health::Online),
            view("book", Health::Online),
        ];
        v[0].vram_bytes = Some(8 << 30);
        v[1].vram_bytes = Some(24 << 30);
        let needs = Needs {
            model: Some("llama3.1:70b".into()),
            vram_bytes: Some(20 << 30),
        };
        let p = explained(&v, &needs, None, now);
        assert_eq!(nodes(&p), ["vengeance", "book"]);
        assert_eq!(
            p.skipped[0].why,
            "has 8 GiB of VRAM, llama3.1:70b needs 20 GiB"
        );
    }

    #[test]
    fn a_primary_goes_before_a_replica_whatever_the_priority() {
        let now = Instant::now();
        let mut v = [
            view("vengeance", Health::Online),
            view("aurora", Health::Online),
        ];
        v[0].read_only = Some(true);
        v[1].read_only = Some(false);
        let p = explained(&v, &Needs::default(), None, now);
        assert_eq!(nodes(&p), ["aurora", "vengeance"]);
        assert!(p.order[1].why.ends_with("replica (read-only)"));
    }

    #[test]
    fn load_breaks_ties() {
        let now = Instant::now();
        let mut v = [view("a", Health::Online), view("b", Health::Online)];
        v[0].in_flight = 5;
        // Different priorities: priority wins over load.
        assert_eq!(
            nodes(&explained(&v, &Needs::default(), None, now)),
            ["a", "b"]
        );
    }

    #[test]
    fn equal_priorities_go_by_load() {
        let now = Instant::now();
        let mut v = vec![
            view("a", Health::Online),
            view("b", Health::Online),
            view("c", Health::Online),
        ];
        v[0].priority = Some(1);
        v[1].priority = Some(1);
        v[2].priority = Some(2);
        v[0].in_flight = 3;
        v[1].in_flight = 1;
        let p = explained(&v, &Needs::default(), None, now);
        assert_eq!(nodes(&p), ["b", "a", "c"]);
        assert!(
            p.order[0].why.contains("then by load (1 in flight)"),
            "{}",
            p.order[0].why
        );
        v[1].in_flight = 5;
        assert_eq!(
            nodes(&explained(&v, &Needs::default(), None, now)),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn one_outage_is_one_ejection_and_only_flapping_grows_it() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut e = Ejection::default();
        assert_eq!(e.failure(t), None);
        assert_eq!(e.failure(t), None);
        assert_eq!(e.failure(t).map(|x| x.until), Some(t + EJECT_BASE));
        // Requests that were on their way fail too: the same outage.
        for _ in 0..20 {
            assert_eq!(e.failure(t + s(1)), None);
        }
        assert_eq!(e.until, Some(t + EJECT_BASE));
        e.success();
        // Back after its rise checks: eligible, and a later outage starts over.
        e.recovered(t + s(5));
        assert_eq!(e.until, None);
        let later = t + s(5) + FLAP_WINDOW + s(1);
        e.failure(later);
        e.failure(later);
        assert_eq!(
            e.failure(later),
            Some(Ejected {
                until: later + EJECT_BASE,
                nth: 1
            })
        );
        // Flapping: failing again soon after each return grows the ejection,
        // capped, and coming back no longer ends it early.
        let mut now = later;
        for n in 2..20u32 {
            now += s(1);
            e.recovered(now);
            now = e.until.unwrap_or(now).max(now) + s(1);
            e.recovered(now);
            e.failure(now);
            e.failure(now);
            let x = e.failure(now).expect("ejected");
            assert_eq!(x.nth, n);
            assert_eq!(x.until, now + EJECT_BASE.saturating_mul(n).min(EJECT_MAX));
            e.recovered(now + s(1));
            assert_eq!(
                e.until,
                Some(x.until),
                "a flapping node serves out its ejection"
            );
        }
    }

    #[test]
    fn model_names_without_a_tag_are_latest() {
        assert!(same_model("llama3", "llama3:latest"));
        assert!(same_model("llama3:latest", "llama3"));
        assert!(same_model("qwen3:8b", "qwen3:8b"));
        assert!(!same_model("qwen3:8b", "qwen3"));
        assert!(!same_model("llama3", "llama3.1"));
        assert!(!same_model("a:b:c", "a:b"));
    }

    #[test]
    fn a_request_gets_the_same_order_without_the_words() {
        let now = Instant::now();
        let v = vec![
            view("aurora", Health::Offline),
            view("vengeance", Health::Degraded),
            view("book", Health::Online),
        ];
        let full = explained(&v, &Needs::default(), None, now);
        let bare = plan(
            &v,
            &Needs::default(),
            None,
            HOLD_DOWN,
            now,
            Explain::OrderOnly,
        );
        assert_eq!(nodes(&full), nodes(&bare));
        assert!(full.order.iter().all(|c| !c.why.is_empty()));
        assert!(bare.order.iter().all(|c| c.why.is_empty()));
        assert_eq!(full.skipped.len(), 1);
        assert!(bare.skipped.is_empty());
    }
}
