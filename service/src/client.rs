//! The one client of the loopback API (`crate::api`), typed with its wire types
//! (`crate::api::wire`): the CLI, the tray and the test harness all call the
//! service through it, so a renamed field breaks them at compile time.
//!
//! A client finds the service the way the service finds its own settings: the
//! address from `$ROBBIE_MESH_API` or the config's `[api] listen`, the token from
//! `$ROBBIE_MESH_TOKEN` or the file next to the config's store (`crate::access`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::wire::*;

/// Why a call did not get its answer, said so that the user knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("robbie-mesh is not running at {addr} (start it with `robbie-mesh run`, or `systemctl --user start robbie-mesh`)")]
    NotRunning { addr: String },
    /// The API wants its token and this client has none; says why.
    #[error("{0}")]
    NoToken(String),
    /// The API refused: its status and its message.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("the API at {addr} failed: {source}")]
    Http {
        addr: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the API answered {path} with something this robbie-mesh does not read ({source}); are the service and this program the same version?")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

#[derive(Clone)]
pub struct Client {
    addr: String,
    http: reqwest::Client,
    /// For the event stream: no overall timeout.
    stream: reqwest::Client,
    token: std::result::Result<String, String>,
}

impl Client {
    /// A client of the API at `addr` with this token (or why there is none).
    pub fn new(addr: impl std::fmt::Display, token: std::result::Result<String, String>) -> Client {
        Client {
            addr: addr.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            stream: reqwest::Client::new(),
            token,
        }
    }

    /// The service that `config` (the default config when `None`, the built-in
    /// default without one) describes: `api` (or `$ROBBIE_MESH_API`) overrides
    /// its address. Reads the config once.
    pub fn for_config(config: Option<&Path>, api: Option<SocketAddr>) -> Client {
        let cfg = config
            .map(Path::to_path_buf)
            .or_else(crate::config::default_path)
            .filter(|p| p.exists())
            .and_then(|p| crate::config::load(&p).ok())
            .unwrap_or_else(crate::config::Config::local_only);
        let addr = api.map(|a| a.to_string()).unwrap_or_else(|| {
            std::env::var("ROBBIE_MESH_API")
                .ok()
                .filter(|a| !a.trim().is_empty())
                .unwrap_or_else(|| cfg.api.listen.to_string())
        });
        Client::new(addr, crate::access::client_token(&cfg.store.path))
    }

    /// The same client with another timeout per call (a long `sync --verify`).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        self
    }

    /// The API's host:port.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Why this client has no token, if it has none.
    pub fn token_problem(&self) -> Option<&str> {
        self.token.as_ref().err().map(String::as_str)
    }

    /// A request with the token: for calls this client has no method for.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Ok(t) => req.bearer_auth(t),
            Err(_) => req,
        }
    }

    /// Sends `req`; a refusal becomes [`ClientError::Refused`] with the API's
    /// message (or [`ClientError::NoToken`] when a missing token is the reason).
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.http_error(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            if let Err(why) = &self.token {
                return Err(ClientError::NoToken(why.clone()));
            }
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&text)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("the API answered {status}: {text}"));
        Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        })
    }

    fn http_error(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::NotRunning {
                addr: self.addr.clone(),
            }
        } else {
            ClientError::Http {
                addr: self.addr.clone(),
                source: e,
            }
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        let text = self
            .send(req)
            .await?
            .text()
            .await
            .map_err(|e| self.http_error(e))?;
        serde_json::from_str(&text).map_err(|source| ClientError::Decode {
            path: path.to_string(),
            source,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// An answer's text as the API sent it (`status --json`).
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let resp = self.send(self.request(Method::GET, path)).await?;
        resp.text().await.map_err(|e| self.http_error(e))
    }

    // --- The mesh -------------------------------------------------------------

    pub async fn health(&self) -> Result<HealthReply> {
        self.get("/health").await
    }

    /// The last `doctor` findings the service keeps.
    pub async fn doctor(&self) -> Result<Option<Report>> {
        Ok(self.get::<DoctorReply>("/v1/doctor").await?.report)
    }

    /// Runs every check in the service, now.
    pub async fn run_doctor(&self) -> Result<Report> {
        self.call(Method::POST, "/v1/doctor", None::<&()>).await
    }

    /// Hands the service findings made here, for its dashboard.
    pub async fn keep_doctor(&self, report: &Report) -> Result<()> {
        self.send(self.request(Method::PUT, "/v1/doctor").json(report))
            .await
            .map(|_| ())
    }

    pub async fn status(&self) -> Result<Status> {
        self.get("/v1/status").await
    }

    pub async fn tunnels(&self) -> Result<TunnelList> {
        self.get("/v1/tunnels").await
    }

    /// This node's hardware.
    pub async fn node(&self) -> Result<Option<NodeInventory>> {
        self.get("/v1/node").await
    }

    /// Reconnects the SSH session a tunnel runs over (and so its siblings).
    pub async fn reconnect(&self, tunnel: &str) -> Result<ReconnectReply> {
        self.call(
            Method::POST,
            &format!("/v1/tunnels/{}/reconnect", segment(tunnel)),
            None::<&()>,
        )
        .await
    }

    /// Pins a service to a node, or (`None`) lets it route by itself again.
    pub async fn pin(&self, service: &str, node: Option<&str>) -> Result<PinReply> {
        let path = format!("/v1/services/{}/pin", segment(service));
        match node {
            Some(n) => {
                let body = PinRequest {
                    node: n.to_string(),
                };
                self.call(Method::POST, &path, Some(&body)).await
            }
            None => self.call(Method::DELETE, &path, None::<&()>).await,
        }
    }

    /// A one-time link that signs a browser in to the dashboard.
    pub async fn sign_in_link(&self) -> Result<SignInLink> {
        self.call(Method::POST, "/v1/auth/link", None::<&()>).await
    }

    /// Every event from now on, as the service publishes it. The stream is
    /// open when this returns, so a status read next misses no change.
    pub async fn events(&self) -> Result<impl Stream<Item = Result<Event>> + Send + 'static> {
        let resp = self.send(self.stream.get(self.url("/v1/events"))).await?;
        let addr = self.addr.clone();
        let bytes = resp.bytes_stream();
        let parser = Sse::default();
        Ok(futures_util::stream::unfold(
            (bytes, parser, addr),
            |(mut bytes, mut parser, addr)| async move {
                loop {
                    if let Some(item) = parser.next_event() {
                        return Some((item, (bytes, parser, addr)));
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => parser.push(&chunk),
                        Some(Err(source)) => {
                            let e = ClientError::Http {
                                addr: addr.clone(),
                                source,
                            };
                            return Some((Err(e), (bytes, parser, addr)));
                        }
                        None => return None,
                    }
                }
            },
        ))
    }

    // --- The store ------------------------------------------------------------

    pub async fn conversations(&self, page: &Page) -> Result<Vec<Conversation>> {
        self.get(&format!("/v1/conversations?{}", query(page)))
            .await
    }

    pub async fn create_conversation(&self, title: &str) -> Result<Conversation> {
        let body = NewConversation {
            title: title.to_string(),
        };
        self.call(Method::POST, "/v1/conversations", Some(&body))
            .await
    }

    pub async fn conversation(&self, id: &str) -> Result<Conversation> {
        self.get(&format!("/v1/conversations/{}", segment(id)))
            .await
    }

    pub async fn update_conversation(
        &self,
        id: &str,
        patch: &ConversationPatch,
    ) -> Result<Conversation> {
        let path = format!("/v1/conversations/{}", segment(id));
        self.call(Method::PATCH, &path, Some(patch)).await
    }

    pub async fn messages(&self, conversation: &str, page: &Page) -> Result<Vec<Message>> {
        self.get(&format!(
            "/v1/conversations/{}/messages?{}",
            segment(conversation),
            query(page)
        ))
        .await
    }

    pub async fn append_message(&self, conversation: &str, m: &NewMessage) -> Result<Message> {
        let path = format!("/v1/conversations/{}/messages", segment(conversation));
        self.call(Method::POST, &path, Some(m)).await
    }

    /// Asks for a sync round now; the sync status as it was when asked.
    pub async fn sync_now(&self) -> Result<SyncStatus> {
        self.call(Method::POST, "/v1/sync", None::<&()>).await
    }

    /// Compares this device with the primary (and repairs both sides).
    pub async fn verify(&self, repair: bool) -> Result<VerifyReport> {
        let body = VerifyRequest { repair };
        self.call(Method::POST, "/v1/sync/verify", Some(&body))
            .await
    }
}

/// A path segment with what would end it escaped.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn query(page: &Page) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if page.archived {
        q.append_pair("archived", "true");
    }
    for (k, v) in [("before", &page.before), ("after", &page.after)] {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    if let Some(l) = page.limit {
        q.append_pair("limit", &l.to_string());
    }
    q.finish()
}

/// Server-Sent Events, as the API sends them: blocks of `event:` and `data:`
/// lines ending in a blank line. A `lagged` block (this client fell behind and
/// missed events) has no JSON and is skipped, as are comments (keep-alives).
#[derive(Default)]
struct Sse {
    buf: String,
}

impl Sse {
    fn push(&mut self, chunk: &[u8]) {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
    }

    fn next_event(&mut self) -> Option<Result<Event>> {
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let (mut lagged, mut data) = (false, String::new());
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event:") {
                    lagged = k.trim() == "lagged";
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if lagged || data.is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(&data).map_err(|source| ClientError::Decode {
                    path: "/v1/events".into(),
                    source,
                }),
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_across_chunks_and_keep_alives_and_lag_notes_are_skipped() {
        let mut p = Sse::default();
        p.push(b": keep-alive\n\nevent: route\ndata: {\"at\":\"2026-01-01T00:00:00.000Z\",\"type\":\"route\",");
        assert!(p.next_event().is_none(), "half an event");
        p.push(b"\"service\":\"ollama\",\"from\":null,\"to\":\"aurora\",\"reason\":\"up\"}\n\nevent: lagged\ndata: 3\n\n");
        let e = p.next_event().expect("one").expect("parsed");
        assert!(
            matches!(e.kind, EventKind::Route { ref to, .. } if to.as_deref() == Some("aurora"))
        );
        assert!(p.next_event().is_none(), "the lag note is not an event");
    }

    #[test]
    fn path_segments_and_queries_are_escaped() {
        assert_eq!(segment("a b/c?"), "a%20b%2Fc%3F");
        let page = Page {
            after: Some("x&y".into()),
            limit: Some(5),
            ..Page::default()
        };
        assert_eq!(query(&page), "after=x%26y&limit=5");
    }
}
