//! `GET /metrics`: Prometheus text, built from the live state on each scrape.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::runtime::Service;
use crate::tunnel::TunnelPhase;

/// Prometheus text: route changes, requests and answer times per node, probe
/// results, tunnel state and bytes. Each family's samples follow its header.
pub(super) async fn metrics(State(s): State<Service>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let mut m = Metrics::default();
    // Always there, local-only mode included: what the process is and how it
    // is doing.
    m.sample(
        "robbie_build_info",
        format!(
            "version=\"{}\",node=\"{}\",mode=\"{}\"",
            env!("CARGO_PKG_VERSION"),
            s.config.node,
            super::mode(&s).as_str()
        ),
        1.0,
    );
    m.sample(
        "robbie_uptime_seconds",
        String::new(),
        s.started.elapsed().as_secs_f64(),
    );
    if let Ok(store) = &s.store {
        if let Ok(n) = store.pending().await {
            m.sample("robbie_store_pending_rows", String::new(), n as f64);
        }
    }
    let sync = s.sync.status.borrow().clone();
    if let Some(t) = sync.last_sync {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            m.sample(
                "robbie_store_last_sync_timestamp_seconds",
                String::new(),
                d.as_secs_f64(),
            );
        }
    }
    m.sample(
        "robbie_connections_refused_total",
        String::new(),
        crate::door::refused_total() as f64,
    );
    let process = crate::util::process_figures();
    if let Some(n) = process.open_fds {
        m.sample("robbie_process_open_fds", String::new(), n as f64);
    }
    if let Some(n) = process.max_fds {
        m.sample("robbie_process_max_fds", String::new(), n as f64);
    }
    if let Some(n) = process.resident_bytes {
        m.sample(
            "robbie_process_resident_memory_bytes",
            String::new(),
            n as f64,
        );
    }
    for svc in s.services.iter() {
        let name = &svc.config.name;
        m.sample(
            "robbie_route_changes_total",
            format!("service=\"{name}\""),
            svc.route_changes.load(Relaxed) as f64,
        );
        for c in &svc.candidates {
            let labels = format!("service=\"{name}\",node=\"{}\"", c.config.node);
            let cm = &c.metrics;
            m.sample(
                "robbie_requests_total",
                format!("{labels},outcome=\"ok\""),
                cm.requests_ok.load(Relaxed) as f64,
            );
            m.sample(
                "robbie_requests_total",
                format!("{labels},outcome=\"failed\""),
                cm.requests_failed.load(Relaxed) as f64,
            );
            m.sample(
                "robbie_answer_seconds_sum",
                labels.clone(),
                cm.answer_micros.load(Relaxed) as f64 / 1e6,
            );
            let st = c.status();
            let up = match st.health.health {
                crate::health::Health::Online => 1.0,
                crate::health::Health::Degraded => 0.5,
                crate::health::Health::Offline => 0.0,
            };
            m.sample("robbie_candidate_up", labels.clone(), up);
            if let Some(ms) = st.latency_ms {
                m.sample("robbie_probe_latency_seconds", labels, ms / 1e3);
            }
        }
    }
    for t in s.tunnels() {
        let st = t.status();
        let labels = format!("tunnel=\"{}\",peer=\"{}\"", st.name, st.peer);
        m.sample(
            "robbie_tunnel_up",
            labels.clone(),
            f64::from(u8::from(st.state == TunnelPhase::Up)),
        );
        m.sample(
            "robbie_tunnel_bytes_total",
            format!("{labels},direction=\"sent\""),
            st.bytes_sent as f64,
        );
        m.sample(
            "robbie_tunnel_bytes_total",
            format!("{labels},direction=\"received\""),
            st.bytes_received as f64,
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        m.render(),
    )
        .into_response()
}

/// Samples grouped by family, rendered with each family's HELP and TYPE.
#[derive(Default)]
struct Metrics {
    families: Vec<(&'static str, Vec<(String, f64)>)>,
}

impl Metrics {
    const HELP: [(&'static str, &'static str, &'static str); 15] = [
        (
            "robbie_build_info",
            "gauge",
            "1, labelled with the version, this node and its mode.",
        ),
        (
            "robbie_uptime_seconds",
            "gauge",
            "Seconds since the service started.",
        ),
        (
            "robbie_store_pending_rows",
            "gauge",
            "Rows written here and not yet acknowledged by the primary.",
        ),
        (
            "robbie_store_last_sync_timestamp_seconds",
            "gauge",
            "When the last sync round with the primary succeeded (Unix time).",
        ),
        (
            "robbie_process_open_fds",
            "gauge",
            "File descriptors the process holds.",
        ),
        (
            "robbie_process_max_fds",
            "gauge",
            "The process's open-file limit.",
        ),
        (
            "robbie_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
        ),
        (
            "robbie_connections_refused_total",
            "counter",
            "Connections closed on arrival for being over a listener's cap.",
        ),
        (
            "robbie_route_changes_total",
            "counter",
            "Times a service's route moved to another node.",
        ),
        (
            "robbie_requests_total",
            "counter",
            "Requests per service, node and outcome.",
        ),
        (
            "robbie_answer_seconds_sum",
            "counter",
            "Time to the answer's head, summed over successful requests.",
        ),
        (
            "robbie_candidate_up",
            "gauge",
            "1 when the node's instance is online, 0.5 degraded, 0 offline.",
        ),
        (
            "robbie_probe_latency_seconds",
            "gauge",
            "Latency of the last successful probe.",
        ),
        ("robbie_tunnel_up", "gauge", "1 when the tunnel forwards."),
        (
            "robbie_tunnel_bytes_total",
            "counter",
            "Bytes through a tunnel, by direction.",
        ),
    ];

    fn sample(&mut self, family: &'static str, labels: String, value: f64) {
        match self.families.iter_mut().find(|(f, _)| *f == family) {
            Some((_, v)) => v.push((labels, value)),
            None => self.families.push((family, vec![(labels, value)])),
        }
    }

    fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for (name, kind, help) in Self::HELP {
            let Some((_, samples)) = self.families.iter().find(|(f, _)| *f == name) else {
                continue;
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}
