//! Keep-alive HTTP/1.1 connections to one candidate, for the HTTP endpoint.
//!
//! A request takes an idle connection (the most recently used: the one least likely
//! to have been closed by the other side) or opens one. A connection goes back to
//! the pool only when its answer has been read to the end; one that fails, or whose
//! answer is dropped half-way, is closed. A pooled connection the backend closed
//! while idle is noticed before the request is written (hyper gives the request
//! back), and the request goes out on another connection to the same node instead
//! of counting as that node's failure. Idle connections close after `IDLE`, so an
//! on-demand tunnel is not held open by a pool — except, for a node reached
//! directly or through an always-connected tunnel, the most recently used one,
//! kept warm for `WARM` so that a request at a person's pace (one every few
//! seconds) does not pay a new channel and connection each time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, Request, Response};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::config::HostPort;

/// Idle connections close after this.
pub const IDLE: Duration = Duration::from_secs(5);
/// The most recently used idle connection of an always-connected node stays this long.
pub const WARM: Duration = Duration::from_secs(120);
/// At most this many idle connections are kept per node.
const MAX_IDLE: usize = 256;

type Sender = SendRequest<Full<Bytes>>;

pub struct Upstream {
    address: HostPort,
    /// The `Host` header for requests to it.
    host: Option<HeaderValue>,
    connect_timeout: Duration,
    /// Keep the newest idle connection for `WARM` (not on-demand).
    warm: bool,
    idle: Mutex<Vec<(Sender, Instant)>>,
}

/// Why a request could not be sent or answered.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, timed out).
    Connect(String),
    /// The connection failed before an answer came (closed, reset, bad answer).
    Exchange(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

/// A connection lent to one request; `release` gives it back once its answer has
/// been read to the end. Dropped otherwise, it closes.
pub struct Lease {
    sender: Sender,
    upstream: Arc<Upstream>,
}

impl Lease {
    pub fn release(self) {
        self.upstream.put(self.sender);
    }
}

impl Upstream {
    pub fn new(address: HostPort, connect_timeout: Duration, warm: bool) -> Upstream {
        Upstream {
            host: HeaderValue::try_from(address.to_string()).ok(),
            address,
            connect_timeout,
            warm,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// How long the idle connection at `position` (0 = the newest) may stay.
    fn keep(&self, position: usize) -> Duration {
        if self.warm && position == 0 {
            WARM
        } else {
            IDLE
        }
    }

    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((sender, since)) = idle.pop() {
            // The newest is popped first: only it may have been kept warm; an
            // older one past `IDLE` is swept anyway.
            if !sender.is_closed() && since.elapsed() < self.keep(0) {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }

    /// Closes the connections idle for `IDLE` or more (the newest of a warm pool:
    /// `WARM`).
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let newest = idle.len().saturating_sub(1);
        let mut i = 0;
        idle.retain(|(s, since)| {
            let keep = if i == newest {
                self.keep(0)
            } else {
                self.keep(1)
            };
            i += 1;
            since.elapsed() < keep && !s.is_closed()
        });
    }

    async fn connect(&self) -> Result<Sender, SendError> {
        let addr = (self.address.host.as_str(), self.address.port);
        let stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    SendError::Connect(format!("no answer within {:?}", self.connect_timeout))
                })?
                .map_err(|e| SendError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Exchange)?;
        tokio::spawn(async move {
            // Ends when the connection closes; its error is the request's to report.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends `req` (its URI in origin form: path and query) and waits for the
    /// answer's head. A request without a `Host` gets the backend's address.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        if let Some(host) = &self.host {
            req.headers_mut()
                .entry(header::HOST)
                .or_insert_with(|| host.clone());
        }
        // Pooled connections first; a closed one hands the request back unsent.
        while let Some(mut sender) = self.take() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(sender))),
            Err(e) => Err(SendError::Exchange(e)),
        }
    }

    fn lease(self: &Arc<Self>, sender: Sender) -> Lease {
        Lease {
            sender,
            upstream: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A minimal HTTP/1.1 server: answers "ok" to each request; with `close`, closes
    /// the connection after each answer. Counts the connections it accepted.
    async fn server(close: bool) -> (HostPort, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                            if close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let addr = HostPort {
            host: "127.0.0.1".into(),
            port,
        };
        (addr, accepted)
    }

    async fn get(up: &Arc<Upstream>) -> Result<String, SendError> {
        use http_body_util::BodyExt;
        let req = Request::get("/api/version")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (resp, lease) = up.send(req).await?;
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        lease.release();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn answers_read_to_the_end_reuse_their_connection() {
        let (addr, accepted) = server(false).await;
        let up = Arc::new(Upstream::new(addr, Duration::from_secs(2), false));
        for _ in 0..3 {
            assert_eq!(get(&up).await.expect("answer"), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_not_a_failure() {
        let (addr, accepted) = server(true).await;
        let up = Arc::new(Upstream::new(addr, Duration::from_secs(2), false));
        assert_eq!(get(&up).await.expect("first"), "ok");
        // Once the client side has seen the close, the pooled connection is skipped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while up
            .idle
            .lock()
            .expect("lock")
            .iter()
            .any(|(s, _)| !s.is_closed())
        {
            assert!(Instant::now() < deadline, "the close was never noticed");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(get(&up).await.expect("second"), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        let addr = HostPort {
            host: "127.0.0.1".into(),
            port,
        };
        let up = Arc::new(Upstream::new(addr, Duration::from_secs(2), false));
        match get(&up).await {
            Err(SendError::Connect(why)) => assert!(why.contains("refused"), "{why}"),
            other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
        }
    }
}
