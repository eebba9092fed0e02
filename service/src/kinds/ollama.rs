//! `kind = "ollama"`: an HTTP endpoint that routes by model, VRAM and GPU.
//!
//! Probe: `GET /api/version` (the engine answers), `/api/tags` (installed
//! models) and `/api/ps` (loaded models and how much of each sits in VRAM) when
//! asked; never `/api/generate`, which would load a model. A model only partly
//! in VRAM makes the node degraded. Every Ollama request may be retried on
//! another node: none has side effects.

use std::net::SocketAddr;
use std::time::Instant;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{http_get, Checked, Endpoint, Kind, Probe};
use crate::health::Observation;

pub struct Ollama;

impl Kind for Ollama {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Http
    }

    fn check<'a>(&'a self, p: &'a Probe<'a>) -> BoxFuture<'a, Checked> {
        Box::pin(async move {
            let (observation, update) = probe(p).await;
            Checked {
                observation,
                ollama: update,
                ..Checked::default()
            }
        })
    }

    fn port_taken_hint(&self, listen: SocketAddr) -> String {
        format!(
            "a local Ollama probably runs there: move it with OLLAMA_HOST=127.0.0.1:11435 (list it as this node's \
             candidate, address \"127.0.0.1:11435\"); robbie-mesh takes {listen} as soon as it is free"
        )
    }

    fn retry_note(&self) -> Option<&'static str> {
        Some("retried: Ollama requests have no side effects")
    }
}

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

#[derive(Debug, Default)]
pub struct OllamaUpdate {
    /// How long `/api/version` alone took: the latency of one light request (the
    /// whole probe also lists models, each on a connection of its own).
    pub light_latency: Option<std::time::Duration>,
    pub version: Option<String>,
    pub models: Option<Vec<String>>,
    pub loaded: Option<Vec<LoadedModel>>,
}

async fn probe(p: &Probe<'_>) -> (Observation, Option<OllamaUpdate>) {
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

    let (http, wants) = (p.http, p.ollama);
    let base = format!("http://{}", p.addr);
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
