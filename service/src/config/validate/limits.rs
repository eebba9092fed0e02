//! Validation of `[limits]`: idle timeout, body memory and request sizes.

use super::*;

/// `[limits]`, each within bounds a listener can live with.
pub(super) fn validate_limits(
    c: &mut Checker<'_>,
    raw: &crate::config::raw::RawLimits,
) -> crate::config::LimitsConfig {
    let default = crate::config::LimitsConfig::default();
    let idle = c.duration(&raw.idle, "limits.idle".into(), default.idle);
    let idle = if idle < Duration::from_secs(1) || idle > Duration::from_secs(3600) {
        if let Some(v) = &raw.idle {
            c.err(
                Some(v.span()),
                "limits.idle",
                "must be between 1s and 1h (clients keep connections open for seconds to minutes)",
            );
        }
        default.idle
    } else {
        idle
    };
    let body_memory = match &raw.body_memory {
        None => default.body_memory,
        Some(v) => match parse_size(v.get_ref()) {
            Some(b) if (MAX_REQUEST_BODY..=64 << 30).contains(&b) => b,
            Some(_) => {
                c.err(
                    Some(v.span()),
                    "limits.body_memory",
                    format!(
                        "must be between {} MiB (one request's largest body) and 64 GiB",
                        MAX_REQUEST_BODY >> 20
                    ),
                );
                default.body_memory
            }
            None => {
                c.err(
                    Some(v.span()),
                    "limits.body_memory",
                    format!(
                        "`{}` is not a size; write e.g. \"256MiB\"",
                        cut(v.get_ref())
                    ),
                );
                default.body_memory
            }
        },
    };
    crate::config::LimitsConfig { idle, body_memory }
}

/// The largest request body an endpoint takes (prompts with images included).
pub const MAX_REQUEST_BODY: u64 = 64 << 20;
