//! `robbie-mesh doctor`: every check a new user (or a user on a bad day)
//! needs, each answered with ✓ or ✗ and, for a ✗, the fix in one line.
//!
//! The checks run at once, each within its own time limit, so the whole runs in
//! seconds even when a peer does not answer: [`local`] (config, the service,
//! endpoints' ports, keychain, disk, the service unit, the primary and the
//! replica) and [`peers`] (per peer, in the order a connection goes: name,
//! TCP, host key, login, each forward; then the other nodes' clocks).

mod local;
mod peers;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// How long one check may take before it is reported as not answering.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(6);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// ✓
    Pass,
    /// ✗
    Fail,
    /// Not checked, because something it needs is not there (said why).
    Skip,
}

/// One line of the diagnosis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    /// What was checked: "config", "peer aurora: host key", "endpoint ollama".
    pub check: String,
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// For a ✗: what to do, in one line.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fix: Option<String>,
}

impl Finding {
    pub fn pass(check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            verdict: Verdict::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.into(),
            verdict: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn skip(check: impl Into<String>, why: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            verdict: Verdict::Skip,
            detail: why.into(),
            fix: None,
        }
    }

    /// The line `doctor` prints (and the fix under a ✗).
    pub fn line(&self) -> String {
        let mark = match self.verdict {
            Verdict::Pass => "✓",
            Verdict::Fail => "✗",
            Verdict::Skip => "-",
        };
        let mut s = format!("{mark} {}: {}", self.check, self.detail);
        if let Some(fix) = &self.fix {
            s.push_str(&format!("\n    fix: {fix}"));
        }
        s
    }
}

/// The whole diagnosis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Every check passed (or was skipped for a reason that is not a fault).
    pub ok: bool,
    pub findings: Vec<Finding>,
    /// When it ran (RFC 3339).
    #[serde(
        serialize_with = "crate::util::ser_time",
        deserialize_with = "crate::util::de_time"
    )]
    pub at: std::time::SystemTime,
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = String::new();
        for f in &self.findings {
            s.push_str(&f.line());
            s.push('\n');
        }
        let failed = self
            .findings
            .iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .count();
        if failed == 0 {
            s.push_str("All checks passed.\n");
        } else {
            s.push_str(&format!(
                "{failed} of {} checks failed.\n",
                self.findings.len()
            ));
        }
        s
    }
}

type Check = Pin<Box<dyn Future<Output = Vec<Finding>> + Send>>;

/// Runs `check` within [`CHECK_TIMEOUT`]; past it, one ✗ named `name`.
fn bounded(name: String, check: impl Future<Output = Vec<Finding>> + Send + 'static) -> Check {
    Box::pin(async move {
        match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(found) => found,
            Err(_) => vec![Finding::fail(
                name,
                format!("no answer within {CHECK_TIMEOUT:?}"),
                "something on the way does not answer: run `robbie-mesh doctor` again, then look at the service's log",
            )],
        }
    })
}

/// What the checks are run against.
#[derive(Clone)]
pub struct Setup {
    pub config: Config,
    /// The service's API, overriding the config's.
    pub api: Option<std::net::SocketAddr>,
}

/// Runs every check at once; findings in a stable order.
pub async fn run(config_file: Option<&Path>, api: Option<std::net::SocketAddr>) -> Report {
    let (mut setup, config_finding) = local::config(config_file);
    if let Some(s) = setup.as_mut() {
        s.api = api;
    }
    let mut findings = vec![config_finding];
    if let Some(setup) = setup {
        // The service first: several checks read its view when it runs.
        let service = local::service(&setup).await;
        let running = service.1.clone();
        findings.extend(service.0);
        let mut checks: Vec<Check> = Vec::new();
        for peer in setup.config.peers.clone() {
            let (s, r) = (setup.clone(), running.clone());
            checks.push(bounded(format!("peer {}", peer.name), async move {
                peers::peer(&s, &peer, r.as_ref()).await
            }));
        }
        for svc in setup.config.services.clone() {
            let r = running.clone();
            checks.push(bounded(format!("endpoint {}", svc.name), async move {
                vec![local::endpoint(&svc, r.as_ref())]
            }));
        }
        let s = setup.clone();
        checks.push(bounded("keychain".into(), async move {
            local::keychain(&s.config).await
        }));
        let (s, r) = (setup.clone(), running.clone());
        checks.push(bounded("clocks".into(), async move {
            peers::clocks(&s, r.as_ref()).await
        }));
        let (s, up) = (setup.clone(), running.is_some());
        checks.push(bounded("primary".into(), async move {
            local::primary(&s.config, up).await
        }));
        let s = setup.clone();
        checks.push(bounded("replica".into(), async move {
            local::replica(&s.config).await
        }));
        let s = setup.clone();
        checks.push(bounded("disk".into(), async move {
            vec![local::disk(&s.config)]
        }));
        checks.push(bounded("service unit".into(), async move {
            vec![local::unit().await]
        }));
        for found in futures_util::future::join_all(checks).await {
            findings.extend(found);
        }
    }
    Report {
        ok: findings.iter().all(|f| f.verdict != Verdict::Fail),
        findings,
        at: std::time::SystemTime::now(),
    }
}
