//! When a failed attempt may run again on the next node.

use super::*;

/// What went wrong with one attempt, for the retry rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made: the request never left.
    Connect,
    /// The connection closed, or the answer was unreadable, before any of it
    /// reached the client: the request may have reached the node.
    Unanswered,
    /// No answer's head within `FIRST_BYTE_TIMEOUT` from a node that is alive.
    Timeout,
    Status(u16),
}

impl From<&SendError> for Failure {
    fn from(e: &SendError) -> Failure {
        match e {
            SendError::Connect(_) => Failure::Connect,
            SendError::Exchange(_) => Failure::Unanswered,
        }
    }
}

/// Whether a failed attempt may run again on the next node, and the rule that
/// says so (shown in `x-robbie-tried`). Running a request twice must be harmless:
/// - never after the first-byte timeout (the node is alive, just slow);
/// - always when the request never reached the node (connect refused), or the
///   node refused to process it (429, 503);
/// - otherwise (closed unanswered, 502, 504): for Ollama (generation has no side
///   effects) and idempotent methods; for a POST or PATCH to an `http` service only
///   when the service sets `retry_non_idempotent`.
pub fn retry_rule(
    svc: &crate::config::ServiceConfig,
    method: &axum::http::Method,
    f: Failure,
) -> (bool, String) {
    match f {
        Failure::Timeout => (
            false,
            "not retried: the node is alive, and running it elsewhere could run it twice".into(),
        ),
        Failure::Connect => (true, "retried: the request never reached it".into()),
        Failure::Status(429 | 503) => (true, "retried: it refused to take the request".into()),
        Failure::Status(_) | Failure::Unanswered => {
            if let Some(note) = crate::kinds::of(svc.kind).retry_note() {
                (true, note.into())
            } else if method.is_idempotent() {
                (true, format!("retried: {method} is idempotent"))
            } else if svc.retry_non_idempotent {
                (
                    true,
                    "retried: the service sets retry_non_idempotent".into(),
                )
            } else {
                (
                    false,
                    format!("not retried: a {method} may already have run there (set retry_non_idempotent to allow)"),
                )
            }
        }
    }
}
