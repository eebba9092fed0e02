//! The front door of every listener: the API, each service endpoint, each `-L`
//! forward. One program on the machine that opens connections and never closes
//! them must not take the mesh down, so:
//!
//! - **File descriptors are shared out.** A process has a fixed number of them
//!   (systemd gives a service 1024 unless the soft limit is raised, which
//!   `robbie-mesh run` does). [`RESERVE`] of them are kept for what is not a
//!   client connection (SSH sessions, probes, the store, sync); the API has
//!   [`API_SHARE`] connections of its own, so the CLI, the tray and `/health`
//!   work whatever the endpoints go through; the endpoints and forwards share
//!   the rest (half of it, as each client connection may hold an upstream one),
//!   and no one listener may take more than three quarters of that.
//! - **At its cap, an HTTP listener closes the connection idle the longest**
//!   (no request in progress: a keep-alive connection nobody uses, a slowloris
//!   still sending its head) to let the new one in, so a flood of idle
//!   connections cannot lock out a real client. When every connection is busy
//!   (or for a TCP endpoint or a forward, which cannot tell idle from quiet),
//!   the new connection is closed at once, not left waiting in the kernel's
//!   queue; each refusal is counted, and logged at most once per [`LOG_EVERY`].
//! - **Accept errors back off** (10 ms doubling to 1 s) and are logged once per
//!   burst, with the count when it ends, instead of a warning per attempt.
//! - **HTTP connections are closed when idle** ([`http1`]): waiting for a
//!   request's head longer than `[limits] idle` — a keep-alive connection
//!   nobody uses, a head sent a byte at a time (slowloris), a connection that
//!   never sends anything.
//!
//! Longer than most files on purpose: one admission policy for every listener, with
//! its accounting.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// File descriptors kept for everything that is not a client's connection.
pub const RESERVE: usize = 256;
/// Connections the API has for itself.
pub const API_SHARE: usize = 64;
/// The most often a listener logs that it refuses connections.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Connections the kernel completes and holds for a listener before it accepts
/// them (capped by `net.core.somaxconn`): a flood of connects from a leaking
/// program must not make a new client's SYN wait for a retransmission (1 s).
const BACKLOG: u32 = 4096;

/// Binds a listener the way every door wants it: `SO_REUSEADDR` as tokio's own
/// bind sets it, and the deep accept queue above.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Connections every listener together closed on arrival for being over a cap.
pub fn refused_total() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// The process's shares, fixed at the first listener from the open-file limit
/// then in force.
struct Shares {
    clients: Arc<Semaphore>,
    per_listener: usize,
}

fn shares() -> &'static Shares {
    static SHARES: OnceLock<Shares> = OnceLock::new();
    SHARES.get_or_init(|| {
        let limit = open_file_limit();
        let clients = (limit.saturating_sub(RESERVE + API_SHARE) / 2).max(16);
        let per_listener = (clients * 3 / 4).max(8);
        tracing::debug!(
            "open-file limit {limit}: {API_SHARE} connections for the API, {clients} for endpoints and forwards ({per_listener} per listener), {RESERVE} descriptors kept for tunnels, probes and the store"
        );
        Shares {
            clients: Arc::new(Semaphore::new(clients)),
            per_listener,
        }
    })
}

fn open_file_limit() -> usize {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrlimit, Resource};
        if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
            return usize::try_from(soft).unwrap_or(usize::MAX).min(1 << 20);
        }
    }
    1024
}

/// How many client connections a listener of this kind may hold at most.
pub fn cap(api: bool) -> usize {
    if api {
        API_SHARE
    } else {
        shares().per_listener
    }
}

/// One listener's admission: its own cap, and the share it draws from.
pub struct Door {
    what: String,
    own: Arc<Semaphore>,
    cap: usize,
    shared: Option<Arc<Semaphore>>,
    /// Only HTTP listeners know when a connection is idle, so only they evict.
    evicts: bool,
    open: Arc<Mutex<Open>>,
    refused: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

/// The connections a door admitted, and since when each is idle.
#[derive(Default)]
struct Open {
    next: u64,
    conns: std::collections::HashMap<u64, Conn>,
}

struct Conn {
    /// `None` while a request is being served (its answer included).
    idle_since: Option<Instant>,
    busy: usize,
    close: tokio_util::sync::CancellationToken,
}

/// Held as long as an admitted connection is open.
pub struct Ticket {
    id: u64,
    open: Arc<Mutex<Open>>,
    close: tokio_util::sync::CancellationToken,
    _own: OwnedSemaphorePermit,
    _shared: Option<OwnedSemaphorePermit>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.open).conns.remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ticket {
    /// Cancelled when the door closes this connection to make room.
    pub fn closed(&self) -> tokio_util::sync::CancellationToken {
        self.close.clone()
    }

    /// Marks the connection busy (a request in progress) until the returned
    /// guard is dropped.
    pub fn activity(&self) -> Activity {
        Activity {
            id: self.id,
            open: self.open.clone(),
        }
    }
}

/// A connection's activity, for its requests to mark it busy.
#[derive(Clone)]
pub struct Activity {
    id: u64,
    open: Arc<Mutex<Open>>,
}

impl Activity {
    pub fn busy(&self) -> Busy {
        if let Some(c) = lock(&self.open).conns.get_mut(&self.id) {
            c.busy += 1;
            c.idle_since = None;
        }
        Busy(self.clone())
    }
}

/// A request in progress on a connection; idle again once every one is done.
pub struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.0.open).conns.get_mut(&self.0.id) {
            c.busy = c.busy.saturating_sub(1);
            if c.busy == 0 {
                c.idle_since = Some(Instant::now());
            }
        }
    }
}

/// A response body that keeps its connection marked busy until it has been
/// sent (or dropped): a streaming answer is not an idle connection.
pub struct HeldBody {
    inner: axum::body::Body,
    _busy: Busy,
}

impl HeldBody {
    pub fn wrap(resp: axum::response::Response, busy: Busy) -> axum::response::Response {
        resp.map(|inner| axum::body::Body::new(HeldBody { inner, _busy: busy }))
    }
}

impl hyper::body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Door {
    /// The API's door: its own share, untouched by the endpoints.
    pub fn api() -> Door {
        Door::new(
            "the API".into(),
            Arc::new(Semaphore::new(API_SHARE)),
            API_SHARE,
            None,
            true,
        )
    }

    /// An HTTP endpoint's door (`what` names it in logs): at its cap, the
    /// connection idle the longest is closed to make room.
    pub fn http(what: impl Into<String>) -> Door {
        Door::shared(what.into(), true)
    }

    /// A TCP endpoint's or a forward's door: at its cap, new connections are
    /// closed on arrival (a byte stream says nothing of being idle).
    pub fn tcp(what: impl Into<String>) -> Door {
        Door::shared(what.into(), false)
    }

    /// A door drawing from the endpoints' and forwards' share.
    fn shared(what: String, evicts: bool) -> Door {
        let s = shares();
        Door::new(
            what,
            Arc::new(Semaphore::new(s.per_listener)),
            s.per_listener,
            Some(s.clients.clone()),
            evicts,
        )
    }

    fn new(
        what: String,
        own: Arc<Semaphore>,
        cap: usize,
        shared: Option<Arc<Semaphore>>,
        evicts: bool,
    ) -> Door {
        Door {
            what,
            own,
            cap,
            shared,
            evicts,
            open: Arc::default(),
            refused: AtomicU64::new(0),
            last_log: Mutex::new(None),
        }
    }

    /// Connections this listener closed at once for being over a cap.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn try_permits(&self) -> Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)> {
        let own = self.own.clone().try_acquire_owned().ok()?;
        let shared = match &self.shared {
            Some(s) => Some(s.clone().try_acquire_owned().ok()?),
            None => None,
        };
        Some((own, shared))
    }

    /// Closes the connection idle the longest, if any is idle; true if one was.
    fn evict_one(&self) -> bool {
        let open = lock(&self.open);
        let oldest = open
            .conns
            .values()
            .filter_map(|c| c.idle_since.map(|t| (t, &c.close)))
            .min_by_key(|(t, _)| *t);
        match oldest {
            Some((_, close)) if !close.is_cancelled() => {
                close.cancel();
                true
            }
            _ => false,
        }
    }

    /// Permits for one more connection: at once, or (HTTP) after closing the
    /// connection idle the longest; `None` if the cap is held by busy ones.
    ///
    /// Waiting for a closed connection's permits is a wake-up, not a poll: a
    /// burst of hundreds of arrivals at the cap (a slowloris reconnecting) is
    /// admitted in microseconds each, so a real client queued behind it in the
    /// listen backlog is not kept waiting.
    async fn admit(&self) -> Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)> {
        if let Some(p) = self.try_permits() {
            return Some(p);
        }
        if !self.evicts {
            return None;
        }
        // Each closed connection gives its permits back as its task ends.
        for _ in 0..4 {
            if !self.evict_one() {
                return None;
            }
            let permits = async {
                let own = self.own.clone().acquire_owned().await.ok()?;
                let shared = match &self.shared {
                    Some(s) => Some(s.clone().acquire_owned().await.ok()?),
                    None => None,
                };
                Some((own, shared))
            };
            if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(50), permits).await {
                return Some(p);
            }
        }
        None
    }

    /// The next connection within the caps (others are closed on arrival);
    /// waits out accept errors with a back-off.
    pub async fn accept(&self, listener: &TcpListener) -> (TcpStream, SocketAddr, Ticket) {
        let mut failed: u64 = 0;
        let mut delay = Duration::from_millis(10);
        loop {
            match listener.accept().await {
                Ok((stream, from)) => {
                    if failed > 0 {
                        tracing::warn!(
                            "{}: accepting again after {failed} failed attempts",
                            self.what
                        );
                        failed = 0;
                        delay = Duration::from_millis(10);
                    }
                    match self.admit().await {
                        Some((own, shared)) => {
                            // A connection whose request header has all arrived is
                            // about to be busy: not the idle one to close for the
                            // next arrival, however many come before it is read.
                            // Looked at only near the cap, where eviction can
                            // happen: a connection's usual accept costs no peek.
                            let waiting = self.evicts
                                && self.own.available_permits() < (self.cap / 4).max(2)
                                && request_waiting(&stream);
                            let close = tokio_util::sync::CancellationToken::new();
                            let mut open = lock(&self.open);
                            let id = open.next;
                            open.next += 1;
                            open.conns.insert(
                                id,
                                Conn {
                                    idle_since: (!waiting).then(Instant::now),
                                    busy: 0,
                                    close: close.clone(),
                                },
                            );
                            drop(open);
                            let ticket = Ticket {
                                id,
                                open: self.open.clone(),
                                close,
                                _own: own,
                                _shared: shared,
                            };
                            return (stream, from, ticket);
                        }
                        None => {
                            drop(stream);
                            self.note_refusal();
                        }
                    }
                }
                Err(e) => {
                    if failed == 0 {
                        tracing::warn!(
                            "{}: cannot accept connections: {e}; retrying with back-off (said once until it recovers){}",
                            self.what,
                            if e.raw_os_error() == Some(24) {
                                " — too many open files: a program on this machine holds many connections open"
                            } else {
                                ""
                            }
                        );
                    }
                    failed += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn note_refusal(&self) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        REFUSED.fetch_add(1, Ordering::Relaxed);
        let mut last = lock(&self.last_log);
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                "{}: {} connections open (its cap is {}), all busy, or the endpoints' share of open files is used up: closing new ones at once ({n} so far); a program on this machine may be leaking connections",
                self.what,
                lock(&self.open).conns.len(),
                self.cap
            );
        }
    }
}

/// Serves one admitted HTTP connection until it ends or its door closes it to
/// make room; the ticket goes with it.
/// Whether a whole HTTP request header is already waiting to be read (a peek:
/// nothing is consumed). A slowloris, by its nature, never has one.
fn request_waiting(stream: &TcpStream) -> bool {
    let mut storage = [0u8; 2048];
    let mut buf = tokio::io::ReadBuf::new(&mut storage);
    // Nothing there yet is `Pending`: a look, never a wait.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match stream.poll_peek(&mut cx, &mut buf) {
        std::task::Poll::Ready(Ok(_)) => buf.filled().windows(4).any(|w| w == b"\r\n\r\n"),
        _ => false,
    }
}

pub async fn serve_until_closed<F: std::future::Future>(conn: F, ticket: Ticket) {
    let closed = ticket.closed();
    tokio::select! {
        _ = conn => {}
        () = closed.cancelled() => {}
    }
    drop(ticket);
}

/// The HTTP/1.1 server settings every listener uses: the idle timeout (a
/// request's head must arrive within `idle` of the connection's start or the
/// previous answer's end) enforced by hyper's header-read timer.
pub fn http1(idle: Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(idle);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_its_cap_a_connection_is_closed_at_once_and_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let door = Door::new("test".into(), Arc::new(Semaphore::new(2)), 2, None, false);
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let (_a, _, t1) = door.accept(&listener).await;
        let (_b, _, _t2) = door.accept(&listener).await;
        // The third is accepted and closed; a fourth waits until a ticket is back.
        let waiting = tokio::spawn(async move {
            let (_, from, _) = door.accept(&listener).await;
            (from, door.refused())
        });
        let mut third = clients.pop().expect("third");
        let mut buf = [0u8; 1];
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without a byte");
        drop(t1);
        let fourth = TcpStream::connect(addr).await.expect("connect");
        let (from, refused) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("admitted in time")
            .expect("task");
        assert_eq!(from, fourth.local_addr().expect("addr"));
        assert_eq!(refused, 1);
    }

    #[tokio::test]
    async fn at_its_cap_an_http_door_closes_the_connection_idle_the_longest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let door = Arc::new(Door::new(
            "test".into(),
            Arc::new(Semaphore::new(2)),
            2,
            None,
            true,
        ));
        // Each admitted connection's task: ends when the door closes it.
        let hold = |ticket: Ticket| {
            tokio::spawn(async move {
                ticket.closed().cancelled().await;
                drop(ticket);
            })
        };
        let _c1 = TcpStream::connect(addr).await.expect("connect");
        let (_s1, _, t1) = door.accept(&listener).await;
        let _c2 = TcpStream::connect(addr).await.expect("connect");
        let (_s2, _, t2) = door.accept(&listener).await;
        // The second is busy, the first idle: the first makes room.
        let busy = t2.activity().busy();
        let first_closed = t1.closed();
        let (h1, h2) = (hold(t1), hold(t2));
        let _c3 = TcpStream::connect(addr).await.expect("connect");
        let (_s3, _, t3) = door.accept(&listener).await;
        assert!(first_closed.is_cancelled(), "the idle one was closed");
        h1.await.expect("task");
        // Now both are busy: a fourth is refused.
        let _b3 = t3.activity().busy();
        let door2 = door.clone();
        let fourth = tokio::spawn(async move { door2.accept(&listener).await.1 });
        let _c4 = TcpStream::connect(addr).await.expect("connect");
        tokio::time::timeout(Duration::from_secs(5), async {
            while door.refused() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("refused in time");
        fourth.abort();
        drop((busy, h2));
    }

    #[tokio::test]
    async fn a_connection_whose_request_has_arrived_is_not_the_one_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let door = Door::new("test".into(), Arc::new(Semaphore::new(2)), 2, None, true);
        let hold = |ticket: Ticket| {
            tokio::spawn(async move {
                ticket.closed().cancelled().await;
                drop(ticket);
            })
        };
        use tokio::io::AsyncWriteExt;
        // The older connection's request is already there when it is accepted…
        let mut c1 = TcpStream::connect(addr).await.expect("connect");
        c1.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let (_s1, _, t1) = door.accept(&listener).await;
        // …the newer one has sent half a header, as a slowloris does.
        let mut c2 = TcpStream::connect(addr).await.expect("connect");
        c2.write_all(b"GET / HTTP/1.1\r\nX-a: ")
            .await
            .expect("write");
        let (_s2, _, t2) = door.accept(&listener).await;
        let (first, second) = (t1.closed(), t2.closed());
        let (_h1, h2) = (hold(t1), hold(t2));
        let _c3 = TcpStream::connect(addr).await.expect("connect");
        let _t3 = tokio::time::timeout(Duration::from_secs(5), door.accept(&listener))
            .await
            .expect("admitted in time");
        assert!(second.is_cancelled(), "the half-sent one made room");
        assert!(
            !first.is_cancelled(),
            "the one with its request waiting was kept"
        );
        h2.await.expect("task");
    }
}
