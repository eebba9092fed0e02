//! Service probes: one check of one candidate, by kind.
//!
//! - `ollama`: `GET /api/version` (the engine answers), `/api/tags` (installed models)
//!   and `/api/ps` (loaded models and how much of each sits in VRAM) when asked;
//!   never `/api/generate`, which would load a model;
//! - `http`: `GET` the configured path; 2xx is up, 429/503 is busy;
//! - `postgres`: a real login (as `probe.user`, with the keychain's password if one
//!   is needed) and `SELECT pg_is_in_recovery()`, which tells a primary from a
//!   replica; a server that answers but refuses the login is degraded;
//! - `tcp`: a connect.
//!
//! Through a `-L` forward the local connect always succeeds, so only these service
//! answers say the service is alive.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HostPort, ProbeConfig, ServiceKind};
use crate::health::Observation;

/// What Ollama told us about a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OllamaInfo {
    pub version: String,
    /// Installed models (`/api/tags`); shared, as every request's plan reads them.
    pub models: std::sync::Arc<[String]>,
    /// Loaded models (`/api/ps`).
    pub loaded: Vec<LoadedModel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedModel {
    pub name: String,
    pub size: u64,
    pub size_vram: u64,
}

/// Which Ollama lists to refresh on this probe (they change rarely).
#[derive(Debug, Clone, Copy, Default)]
pub struct OllamaWants {
    pub tags: bool,
    pub ps: bool,
}

pub struct Outcome {
    pub observation: Observation,
    pub latency: Duration,
    /// Ollama only: what changed (lists not refreshed are `None` inside).
    pub ollama: Option<OllamaUpdate>,
    /// PostgreSQL only: the server's role, when the probe could log in.
    pub postgres: Option<PgRole>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgRole {
    /// Read-write.
    Primary,
    /// In recovery: a streaming standby, read-only.
    Replica,
}

#[derive(Debug, Default)]
pub struct OllamaUpdate {
    /// How long `/api/version` alone took: the latency of one light request (the
    /// whole probe also lists models, each on a connection of its own).
    pub light_latency: Option<std::time::Duration>,
    pub version: Option<String>,
    pub models: Option<Vec<String>>,
    pub loaded: Option<Vec<LoadedModel>>,
}

pub async fn probe(
    kind: ServiceKind,
    addr: &HostPort,
    cfg: &ProbeConfig,
    http: &reqwest::Client,
    wants: OllamaWants,
    pg_password: Option<&str>,
) -> Outcome {
    let start = Instant::now();
    let (observation, ollama, postgres) = match tokio::time::timeout(
        cfg.timeout,
        check(kind, addr, cfg, http, wants, pg_password),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => (
            Observation::Failed(format!("no answer within {:?}", cfg.timeout)),
            None,
            None,
        ),
    };
    let latency = ollama
        .as_ref()
        .and_then(|u| u.light_latency)
        .unwrap_or_else(|| start.elapsed());
    // Up but slow: more than half the timeout.
    let observation = match observation {
        Observation::Ok if latency > cfg.timeout / 2 => {
            Observation::Degraded(format!("slow: answered in {} ms", latency.as_millis()))
        }
        o => o,
    };
    Outcome {
        observation,
        latency,
        ollama,
        postgres,
    }
}

async fn check(
    kind: ServiceKind,
    addr: &HostPort,
    cfg: &ProbeConfig,
    http: &reqwest::Client,
    wants: OllamaWants,
    pg_password: Option<&str>,
) -> (Observation, Option<OllamaUpdate>, Option<PgRole>) {
    match kind {
        ServiceKind::Ollama => {
            let (obs, update) = ollama(addr, http, wants).await;
            (obs, update, None)
        }
        ServiceKind::Http => {
            let obs = http_get(http, &format!("http://{addr}{}", cfg.path))
                .await
                .map_or_else(Observation::Failed, |r| r.0);
            (obs, None, None)
        }
        ServiceKind::Postgres => {
            let (obs, role) = postgres(addr, cfg, pg_password).await;
            (obs, None, role)
        }
        ServiceKind::Tcp => match TcpStream::connect((addr.host.as_str(), addr.port)).await {
            Ok(_) => (Observation::Ok, None, None),
            Err(e) => (Observation::Failed(format!("connect: {e}")), None, None),
        },
    }
}

/// GET a URL: the observation its status means, and the body of a 2xx.
async fn http_get(
    http: &reqwest::Client,
    url: &str,
) -> Result<(Observation, Option<bytes::Bytes>), String> {
    let resp = http.get(url).send().await.map_err(describe)?;
    let status = resp.status();
    match status.as_u16() {
        200..=299 => {
            let body = resp
                .bytes()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            Ok((Observation::Ok, Some(body)))
        }
        429 | 503 => Ok((Observation::Degraded(format!("busy: HTTP {status}")), None)),
        _ => Ok((Observation::Failed(format!("HTTP {status}")), None)),
    }
}

fn describe(e: reqwest::Error) -> String {
    if e.is_connect() {
        "connection refused".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        // Through a -L tunnel whose far end is down, the connection closes at once.
        format!("no HTTP answer ({})", e.without_url())
    }
}

async fn ollama(
    addr: &HostPort,
    http: &reqwest::Client,
    wants: OllamaWants,
) -> (Observation, Option<OllamaUpdate>) {
    #[derive(Deserialize)]
    struct Version {
        version: String,
    }
    #[derive(Deserialize)]
    struct Tags {
        models: Vec<Tag>,
    }
    #[derive(Deserialize)]
    struct Tag {
        name: String,
    }
    #[derive(Deserialize)]
    struct Ps {
        models: Vec<LoadedModel>,
    }

    let base = format!("http://{addr}");
    let mut update = OllamaUpdate::default();
    let light = Instant::now();
    let version = http_get(http, &format!("{base}/api/version")).await;
    update.light_latency = Some(light.elapsed());
    match version {
        Ok((Observation::Ok, Some(body))) => match serde_json::from_slice::<Version>(&body) {
            Ok(v) => update.version = Some(v.version),
            Err(_) => {
                return (
                    Observation::Failed("/api/version did not answer like Ollama".into()),
                    None,
                )
            }
        },
        Ok((obs, _)) => return (obs, None),
        Err(why) => return (Observation::Failed(why), None),
    }
    if wants.tags {
        if let Ok((Observation::Ok, Some(body))) = http_get(http, &format!("{base}/api/tags")).await
        {
            if let Ok(t) = serde_json::from_slice::<Tags>(&body) {
                update.models = Some(t.models.into_iter().map(|m| m.name).collect());
            }
        }
    }
    if wants.ps {
        if let Ok((Observation::Ok, Some(body))) = http_get(http, &format!("{base}/api/ps")).await {
            if let Ok(ps) = serde_json::from_slice::<Ps>(&body) {
                update.loaded = Some(ps.models);
            }
        }
    }
    (Observation::Ok, Some(update))
}

/// A loaded model only partly in VRAM (the rest runs on the CPU, slowly): why the
/// node is degraded. Judged on every probe from the last `/api/ps` seen (it is
/// fetched less often than the node is probed).
pub fn vram_shortfall(loaded: &[LoadedModel]) -> Option<String> {
    let m = loaded.iter().find(|m| m.size_vram < m.size)?;
    let pct = m.size_vram.saturating_mul(100) / m.size.max(1);
    Some(format!("{} only {pct}% in VRAM", m.name))
}

/// A real login and `SELECT pg_is_in_recovery()`. A server that is up but refuses
/// the login is degraded (its role is unknown), not offline.
async fn postgres(
    addr: &HostPort,
    cfg: &ProbeConfig,
    password: Option<&str>,
) -> (Observation, Option<PgRole>) {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&addr.host)
        .port(addr.port)
        .user(&cfg.user)
        .dbname(&cfg.database)
        .application_name("robbie-mesh probe");
    if let Some(p) = password {
        pg.password(p);
    }
    let (client, conn) = match pg.connect(tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            return match e.as_db_error() {
                Some(db) => (
                    Observation::Degraded(format!(
                        "up, but the probe cannot log in as {} ({}); store its password in the keychain entry postgres:<service>",
                        cfg.user,
                        db.message()
                    )),
                    None,
                ),
                // No PostgreSQL answer at all: is anything there?
                None => match alive(addr).await {
                    Ok(()) => (Observation::Degraded(format!("up, but the probe's login failed: {e}")), None),
                    Err(why) => (Observation::Failed(why), None),
                },
            };
        }
    };
    let conn = tokio::spawn(conn);
    let role = client.query_one("SELECT pg_is_in_recovery()", &[]).await;
    drop(client);
    let _ = conn.await;
    match role {
        Ok(row) => {
            let in_recovery: bool = row.try_get(0).unwrap_or(false);
            (
                Observation::Ok,
                Some(if in_recovery {
                    PgRole::Replica
                } else {
                    PgRole::Primary
                }),
            )
        }
        Err(e) => (
            Observation::Degraded(format!("logged in, but pg_is_in_recovery() failed: {e}")),
            None,
        ),
    }
}

/// PostgreSQL's SSLRequest: 8 bytes out, and a server answers `S` or `N`.
async fn alive(addr: &HostPort) -> Result<(), String> {
    match sslrequest(addr).await {
        Observation::Failed(why) => Err(why),
        _ => Ok(()),
    }
}

async fn sslrequest(addr: &HostPort) -> Observation {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut s = match TcpStream::connect((addr.host.as_str(), addr.port)).await {
        Ok(s) => s,
        Err(e) => return Observation::Failed(format!("connect: {e}")),
    };
    if let Err(e) = s.write_all(&SSL_REQUEST).await {
        return Observation::Failed(format!("write: {e}"));
    }
    let mut answer = [0u8; 1];
    match s.read_exact(&mut answer).await {
        Ok(_) if answer[0] == b'S' || answer[0] == b'N' => Observation::Ok,
        Ok(_) => Observation::Failed(format!("not PostgreSQL (answered {:?})", answer[0] as char)),
        Err(_) => Observation::Failed("closed without a PostgreSQL answer".into()),
    }
}
