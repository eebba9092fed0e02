//! `kind = "http"`: any HTTP service. Probe: `GET` the configured `probe.path`;
//! 2xx is up, 429/503 busy (degraded), anything else down.

use futures_util::future::BoxFuture;

use super::{http_get, Checked, Endpoint, Kind, Probe};
use crate::health::Observation;

pub struct Http;

impl Kind for Http {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Http
    }

    fn check<'a>(&'a self, p: &'a Probe<'a>) -> BoxFuture<'a, Checked> {
        Box::pin(async move {
            let url = format!("http://{}{}", p.addr, p.cfg.path);
            Checked {
                observation: http_get(p.http, &url)
                    .await
                    .map_or_else(Observation::Failed, |r| r.0),
                ..Checked::default()
            }
        })
    }
}
