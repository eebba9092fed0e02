//! Crash points for the sync's crash tests: `ROBBIE_MESH_FAILPOINT=NAME@N` makes the
//! N-th time the code passes the point named NAME abort the process on the spot (as
//! a power cut would: no destructors, no flushing); `NAME@N:stop` makes the process
//! stop itself there instead (SIGSTOP: a laptop whose lid closed mid-transaction),
//! until a SIGCONT; `NAME@N:panic` panics there (a bug: what the code around it
//! must survive). Unset, a point costs one load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Stop,
    Panic,
}

fn armed() -> Option<&'static (String, u64, Action)> {
    static ARMED: OnceLock<Option<(String, u64, Action)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("ROBBIE_MESH_FAILPOINT").ok()?;
            let (v, action) = if let Some(v) = v.strip_suffix(":stop") {
                (v.to_string(), Action::Stop)
            } else if let Some(v) = v.strip_suffix(":panic") {
                (v.to_string(), Action::Panic)
            } else {
                (v, Action::Abort)
            };
            let (name, n) = v.split_once('@').unwrap_or((v.as_str(), "1"));
            Some((name.to_string(), n.parse().ok()?, action))
        })
        .as_ref()
}

/// Passes the point `name`; aborts if it is the armed one's N-th pass.
pub fn hit(name: &str) {
    static PASSES: AtomicU64 = AtomicU64::new(0);
    if let Some((armed, n, action)) = armed() {
        if armed == name && PASSES.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            match action {
                Action::Stop => {
                    eprintln!("failpoint {name}@{n}: stopping");
                    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
                }
                Action::Panic => panic!("failpoint {name}@{n}"),
                Action::Abort => {
                    eprintln!("failpoint {name}@{n}: aborting");
                    std::process::abort();
                }
            }
        }
    }
}
