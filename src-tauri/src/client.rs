//! The tray's client of the service's loopback API: the status, the event stream
//! (Server-Sent Events, parsed here), and the controls behind the menu.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    stream: reqwest::Client,
}

impl Client {
    /// `$ROBBIE_MESH_API` (host:port), else the config's `[api] listen`, else the
    /// default; the API token (for pin and reconnect) from `$ROBBIE_MESH_TOKEN`
    /// or the file next to the config's store.
    pub fn from_env() -> Client {
        let config = robbie_mesh::config::default_path()
            .filter(|p| p.exists())
            .and_then(|p| robbie_mesh::config::load(&p).ok())
            .unwrap_or_else(robbie_mesh::config::Config::local_only);
        let addr = std::env::var("ROBBIE_MESH_API")
            .ok()
            .unwrap_or_else(|| config.api.listen.to_string());
        let mut headers = reqwest::header::HeaderMap::new();
        match robbie_mesh::access::client_token(&config.store.path) {
            Ok(token) => {
                if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
                    headers.insert(reqwest::header::AUTHORIZATION, v);
                }
            }
            Err(why) => tracing::warn!("pin and reconnect will be refused: {why}"),
        }
        Client {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .default_headers(headers)
                .build()
                .unwrap_or_default(),
            stream: reqwest::Client::new(),
        }
    }

    /// The API's host:port.
    pub fn api_addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn dashboard_url(&self) -> String {
        format!("{}/", self.base)
    }

    pub async fn status(&self) -> Result<Value, reqwest::Error> {
        self.http
            .get(format!("{}/v1/status", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    pub async fn pin(&self, service: &str, node: Option<&str>) -> Result<(), reqwest::Error> {
        let url = format!("{}/v1/services/{service}/pin", self.base);
        let req = match node {
            Some(n) => self.http.post(url).json(&serde_json::json!({ "node": n })),
            None => self.http.delete(url),
        };
        req.send().await?.error_for_status().map(drop)
    }

    pub async fn reconnect(&self, tunnel: &str) -> Result<(), reqwest::Error> {
        self.http
            .post(format!("{}/v1/tunnels/{tunnel}/reconnect", self.base))
            .send()
            .await?
            .error_for_status()
            .map(drop)
    }

    /// Opens the event stream (before reading the status, so no change falls
    /// between the two).
    pub async fn open_events(&self) -> Result<reqwest::Response, reqwest::Error> {
        let resp = self
            .stream
            .get(format!("{}/v1/events", self.base))
            .send()
            .await?
            .error_for_status()?;
        tracing::debug!("following {}/v1/events", self.base);
        Ok(resp)
    }

    /// Calls `on_event(type, data)` for every event of an opened stream until it ends.
    pub async fn read_events(
        resp: reqwest::Response,
        mut on_event: impl FnMut(&str, Value),
    ) -> Result<(), reqwest::Error> {
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut kind, mut data) = ("message".to_string(), String::new());
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event:") {
                        kind = k.trim().to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if let Ok(v) = serde_json::from_str(&data) {
                    on_event(&kind, v);
                }
            }
        }
        Ok(())
    }
}
