//! What the command line prints: the `check-config` summary and the `status` table.
//! Pure functions over config and API types, so tests can check the text.

use std::fmt::Write;
use std::time::SystemTime;

use crate::api::wire::Status;
use crate::config::{Config, ForwardKind};
use crate::store::sync::SyncState;
use crate::tunnel::{TunnelPhase, TunnelStatus};

/// A short summary of what `robbie-mesh run` would do with this config.
pub fn config_summary(cfg: &Config) -> String {
    let mut out = String::new();
    let src = cfg
        .source
        .as_ref()
        .map_or("built-in default".to_string(), |p| p.display().to_string());
    let _ = writeln!(out, "{src}: OK");
    let _ = writeln!(out, "node {}, API on http://{}", cfg.node, cfg.api.listen);
    if cfg.peers.is_empty() {
        let _ = writeln!(out, "no peers: local-only mode");
    }
    for p in &cfg.peers {
        let ids: Vec<String> = p
            .server
            .identities
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(
            out,
            "peer {} = {} (keepalive {:?} x {})",
            p.name, p.server.target, p.keepalive.interval, p.keepalive.count
        );
        if !p.jumps.is_empty() {
            let via: Vec<String> = p.jumps.iter().map(|j| j.target.to_string()).collect();
            let _ = writeln!(out, "  through jump host {}", via.join(", then "));
        }
        let _ = writeln!(out, "  keys: {}", ids.join(", "));
        let kh: Vec<String> = p
            .server
            .known_hosts
            .iter()
            .map(|k| k.display().to_string())
            .collect();
        let _ = writeln!(
            out,
            "  host keys: {}{}",
            kh.join(", "),
            if p.accept_new {
                " (accept new)"
            } else {
                " (strict)"
            }
        );
        for f in &p.forwards {
            let arrow = match f.kind {
                ForwardKind::Local => format!("listen {} -> {} on {}", f.local, f.remote, p.name),
                ForwardKind::Remote => {
                    format!("{} listens on {} -> {} here", p.name, f.remote, f.local)
                }
            };
            let _ = writeln!(out, "  {} {:<20} {arrow}", f.kind.flag(), f.name);
        }
    }
    for s in &cfg.services {
        let _ = writeln!(
            out,
            "service {} ({}) on {}:",
            s.name,
            s.kind.as_str(),
            s.listen
        );
        for (i, c) in s.candidates.iter().enumerate() {
            let via = c
                .tunnel
                .as_ref()
                .map_or(String::new(), |t| format!(" via {t}"));
            let _ = writeln!(out, "  {}. {:<12} {}{via}", i + 1, c.node, c.address);
        }
    }
    let _ = write!(out, "store {}", cfg.store.path.display());
    match &cfg.store.sync {
        Some(sy) => {
            let _ = writeln!(
                out,
                ", synced through service {} (database {}, user {}) at least every {}",
                sy.service,
                sy.database,
                sy.user,
                humantime::format_duration(sy.interval)
            );
        }
        None => {
            let _ = writeln!(out, ", kept on this node only (no [store.sync])");
        }
    }
    if let Some(r) = &cfg.store.replica {
        let _ = writeln!(out, "replica watched at {}", r.address);
    }
    out
}

/// The services part of `status`: for each, where requests go now, then every
/// candidate with its health.
pub fn services_text(status: &Status) -> String {
    let mut out = String::new();
    for s in &status.services {
        let route = match &s.route {
            Some(node) => format!("-> {node}"),
            None => "-> nothing is up (requests try every node)".into(),
        };
        let pinned = s
            .pinned
            .as_ref()
            .map_or(String::new(), |p| format!(" [pinned: {p}]"));
        let _ = writeln!(out, "{:<10} {:<22} {route}{pinned}", s.name, s.listen);
        if s.endpoint != "listening" {
            let _ = writeln!(out, "    endpoint: {}", s.endpoint);
        }
        for c in &s.candidates {
            let mut line = format!("    {:<12} {:<9}", c.node, c.health.health.as_str());
            if let Some(ms) = c.latency_ms {
                line.push_str(&format!(" {ms:>6.1} ms"));
            }
            if !c.health.reason.is_empty() {
                line.push_str(&format!("  {}", c.health.reason));
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    out
}

/// The store part of `status`: where it is, what is pending, when it last synced.
pub fn store_text(status: &Status) -> String {
    let st = &status.store;
    let sync = &st.sync;
    let mut out = format!("store      {}", st.path);
    if let Some(e) = &st.error {
        let _ = writeln!(out, "\n    not open: {e}");
        return out;
    }
    let pending = sync.pending;
    if sync.state == SyncState::Off {
        let _ = write!(
            out,
            "\n    {pending} rows kept here only (no [store.sync] configured)"
        );
    } else {
        let last = sync.last_sync.map_or("never".to_string(), |t| {
            format!("last sync {}", crate::util::rfc3339(t))
        });
        let _ = write!(
            out,
            "\n    {}: {pending} rows pending, {last}",
            sync.state.as_str()
        );
        for line in [&sync.last_error, &sync.held_back, &sync.notice]
            .into_iter()
            .flatten()
        {
            let _ = write!(out, "\n    {line}");
        }
        if sync.rejected > 0 {
            let _ = write!(
                out,
                "\n    {} rows refused by the primary, kept here and set aside:",
                sync.rejected
            );
            for r in &sync.rejected_rows {
                let _ = write!(out, "\n      {} {}: {}", r.kind, r.id, r.reason);
            }
        }
    }
    if let Some(r) = &st.replica {
        let _ = write!(out, "\n    replica: {}", r.summary());
    }
    out.push('\n');
    out
}

/// The `status` table: one line per tunnel, its reason underneath when it is not up.
pub fn tunnel_table(node: &str, tunnels: &[TunnelStatus], now: SystemTime) -> String {
    let mut out = String::new();
    if tunnels.is_empty() {
        let _ = writeln!(out, "{node}: no tunnels (local-only mode)");
        return out;
    }
    let _ = writeln!(
        out,
        "{node}: {} tunnel(s), {} up",
        tunnels.len(),
        tunnels
            .iter()
            .filter(|t| t.state == TunnelPhase::Up)
            .count()
    );
    let rows: Vec<[String; 7]> = tunnels
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.peer.clone(),
                match t.kind {
                    ForwardKind::Local => "-L".into(),
                    ForwardKind::Remote => "-R".into(),
                },
                format!("{} -> {}", t.local, t.remote),
                t.state.as_str().to_uppercase(),
                ago(&t.since, now),
                format!("{} / {}", bytes(t.bytes_received), bytes(t.bytes_sent)),
            ]
        })
        .collect();
    let header = [
        "TUNNEL", "PEER", "KIND", "FORWARD", "STATE", "SINCE", "IN / OUT",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(s, "{:<w$}  ", c, w = widths[i]);
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header));
    for (r, t) in rows.iter().zip(tunnels) {
        let _ = writeln!(
            out,
            "{}",
            line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]])
        );
        if let Some(reason) = &t.reason {
            let retry = t
                .retry_at
                .as_ref()
                .map(|at| format!(" (retry {})", until(at, now)))
                .unwrap_or_default();
            let _ = writeln!(out, "    {reason}{retry}");
        }
    }
    out
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()
}

fn ago(at: &str, now: SystemTime) -> String {
    match parse_time(at).and_then(|t| now.duration_since(t).ok()) {
        Some(d) => format!("{} ago", short(d.as_secs())),
        None => "just now".into(),
    }
}

fn until(at: &str, now: SystemTime) -> String {
    match parse_time(at).and_then(|t| t.duration_since(now).ok()) {
        Some(d) if d.as_secs() > 0 => format!("in {}", short(d.as_secs())),
        _ => "now".into(),
    }
}

fn short(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_state_reason_and_sizes() {
        let now = SystemTime::now();
        let t = TunnelStatus {
            name: "aurora-L21434".into(),
            peer: "aurora".into(),
            kind: ForwardKind::Local,
            local: "127.0.0.1:21434".into(),
            remote: "127.0.0.1:11434".into(),
            state: TunnelPhase::Waiting,
            reason: Some("host key changed".into()),
            retry_at: None,
            since: crate::util::rfc3339(now - std::time::Duration::from_secs(125)),
            reconnects: 2,
            bytes_sent: 1536,
            bytes_received: 3 * 1024 * 1024,
            connections_open: 0,
            connections_total: 4,
        };
        let out = tunnel_table("robbiebook1", &[t], now);
        assert!(out.contains("aurora-L21434"), "{out}");
        assert!(out.contains("WAITING"), "{out}");
        assert!(out.contains("2m5s ago"), "{out}");
        assert!(out.contains("3.0 MiB / 1.5 KiB"), "{out}");
        assert!(out.contains("    host key changed"), "{out}");
    }
}
