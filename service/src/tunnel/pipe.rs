//! Moving bytes: the accept loop of a `-L` forward, the local side of a `-R`
//! connection, and the bidirectional copy between a TCP stream and an SSH channel
//! (half-close respected: an EOF on one side becomes an EOF on the other, and the
//! other direction keeps flowing).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use russh::client::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::{Backoff, Counters, Tunnel};
use crate::config::Backoff as BackoffConfig;
use crate::config::HostPort;
use crate::ssh::Session;

/// A channel open unanswered after this long asks the session to prove it is
/// alive (a frozen or vanished peer is then found within a second more; a slow,
/// busy but healthy one keeps the open going).
pub const CHANNEL_OPEN_SUSPECT: Duration = Duration::from_secs(1);
/// Opening a channel through a live session gives up after this long.
pub const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Copy buffer per direction: one SSH packet (32 KiB), so a read from the local
/// socket fills a whole packet instead of the 8 KiB default's quarter packet.
const COPY_BUF: usize = 32 * 1024;
/// Connecting to the local target of a `-R` forward.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The `-L` side of a tunnel: its listener and what it forwards over.
pub struct LocalForward {
    pub tunnel: Arc<Tunnel>,
    /// The peer's current session, if any.
    pub session: watch::Receiver<Option<Arc<Session>>>,
    /// Told when a channel open waits, so the supervisor checks the session now.
    pub suspect: Arc<Notify>,
    /// Start-up waits for this listener's first bind attempt.
    pub starting: crate::startup::Pending,
}

impl LocalForward {
    /// Binds the listen address (retrying with backoff while it is taken) and
    /// forwards every accepted connection over the peer's current session.
    pub async fn serve(self, backoff: BackoffConfig, cancel: CancellationToken) {
        let tunnel = &self.tunnel;
        let Some(addr) = tunnel.config.listen_addr() else {
            return;
        };
        let Some(listener) =
            bind_with_retry(tunnel, addr, backoff, &cancel, Some(self.starting)).await
        else {
            return;
        };
        let (session, suspect) = (self.session, self.suspect);
        let door = crate::door::Door::tcp(format!("forward {}", tunnel.name()));
        loop {
            let (tcp, from, ticket) = tokio::select! {
                () = cancel.cancelled() => return,
                a = door.accept(&listener) => a,
            };
            let current = session.borrow().clone();
            let Some(current) = current else {
                tracing::debug!(tunnel = %tunnel.name(), "no ssh session; closing connection from {from}");
                continue;
            };
            let (tunnel, suspect, cancel) = (tunnel.clone(), suspect.clone(), cancel.clone());
            tokio::spawn(async move {
                forward_local(&tunnel, current, tcp, from, &suspect, &cancel).await;
                drop(ticket);
            });
        }
    }
}

async fn bind_with_retry(
    tunnel: &Tunnel,
    addr: SocketAddr,
    backoff: BackoffConfig,
    cancel: &CancellationToken,
    mut starting: Option<crate::startup::Pending>,
) -> Option<TcpListener> {
    let mut backoff = Backoff::new(backoff);
    loop {
        match crate::door::bind(addr) {
            Ok(l) => {
                tunnel.set_problem(None);
                return Some(l);
            }
            Err(e) => {
                let why = if e.kind() == io::ErrorKind::AddrInUse {
                    format!("cannot listen on {addr}: address already in use (another program holds the port; stop it or change `local`)")
                } else {
                    format!("cannot listen on {addr}: {e}")
                };
                tunnel.set_problem(Some(why));
            }
        }
        // Tried once: start-up need not wait for the port to come free.
        starting.take();
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One `-L` connection: a channel through `session`, then the bytes both ways until
/// either side is done, the session ends, or the service stops. When the channel
/// open waits, the session is asked to prove it is alive; if it is declared dead,
/// the open fails at once (the local client sees its connection closed and can
/// go elsewhere).
async fn forward_local(
    tunnel: &Tunnel,
    session: Arc<Session>,
    tcp: TcpStream,
    from: SocketAddr,
    suspect: &Notify,
    cancel: &CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let remote = &tunnel.config.remote;
    let open = session.handle.channel_open_direct_tcpip(
        remote.host.clone(),
        u32::from(remote.port),
        from.ip().to_string(),
        u32::from(from.port()),
    );
    let mut open = Box::pin(open);
    let ended = session.closed.clone();
    let opened = tokio::select! {
        r = &mut open => Some(r),
        () = ended.cancelled() => None,
        () = tokio::time::sleep(CHANNEL_OPEN_SUSPECT) => {
            tracing::debug!(tunnel = %tunnel.name(), "no answer to a channel open within {CHANNEL_OPEN_SUSPECT:?}; asking the session to prove it is alive");
            suspect.notify_one();
            tokio::select! {
                r = &mut open => Some(r),
                () = ended.cancelled() => None,
                () = tokio::time::sleep(CHANNEL_OPEN_TIMEOUT - CHANNEL_OPEN_SUSPECT) => {
                    tracing::warn!(tunnel = %tunnel.name(), "no answer to a channel open within {CHANNEL_OPEN_TIMEOUT:?} on a live session");
                    None
                }
            }
        }
    };
    let channel = match opened {
        Some(Ok(ch)) => ch,
        Some(Err(e)) => {
            tracing::debug!(tunnel = %tunnel.name(), "server could not connect to {remote}: {e}");
            return;
        }
        None => return,
    };
    // The connection's end follows the session's (`ended`), not its handle.
    drop(open);
    drop(session);
    pipe(tcp, channel, &tunnel.counters, cancel, &ended).await;
}

/// The local half of a `-R` connection: connect to the target first, then accept the
/// server's channel (or refuse it, so the remote client sees the failure at once).
/// Where one `-R` forward's connections go, and its accounting.
pub struct ReverseTarget {
    pub local: HostPort,
    pub counters: Arc<Counters>,
    /// Ends this forward's connections at shutdown.
    pub cancel: tokio_util::sync::CancellationToken,
}

pub async fn serve_reverse(
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    route: Arc<ReverseTarget>,
) {
    let target = (route.local.host.as_str(), route.local.port);
    match tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            reply.accept().await;
            pipe(tcp, channel, &route.counters, &route.cancel, &route.cancel).await;
        }
        Ok(Err(e)) => {
            tracing::debug!("-R target {} refused: {e}", route.local);
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
        }
        Err(_) => {
            tracing::debug!(
                "-R target {} did not answer within {LOCAL_CONNECT_TIMEOUT:?}",
                route.local
            );
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
        }
    }
}

/// Copies both ways until both sides are done (or the service stops, or the
/// session ends), counting bytes.
///
/// Server-to-client data is written to the socket straight from the channel's
/// messages (no intermediate copy); an EOF either way becomes a write shutdown on
/// the other side, and a channel closed by the server ends the connection.
pub async fn pipe(
    tcp: TcpStream,
    channel: Channel<Msg>,
    counters: &Arc<Counters>,
    cancel: &CancellationToken,
    session_ended: &CancellationToken,
) {
    counters.connections_open.fetch_add(1, Ordering::Relaxed);
    counters.connections_total.fetch_add(1, Ordering::Relaxed);
    let (mut from_server, to_server) = channel.split();
    let (mut tcp_r, mut tcp_w) = tcp.into_split();

    let up = async {
        // Each read becomes one owned chunk handed to the session as is (no copy).
        let mut buf = BytesMut::with_capacity(COPY_BUF);
        loop {
            buf.reserve(COPY_BUF);
            let n = match tcp_r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            counters.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
            if to_server.data_bytes(buf.split().freeze()).await.is_err() {
                return;
            }
        }
        let _ = to_server.eof().await;
    };
    // Returns true when the server closed the channel (nothing more will flow).
    let down = async {
        let closed = loop {
            match from_server.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    if tcp_w.write_all(&data).await.is_err() {
                        break true;
                    }
                    counters
                        .bytes_received
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Some(ChannelMsg::Eof) => {
                    tracing::trace!("server sent EOF");
                    break false;
                }
                Some(ChannelMsg::Close) | None => {
                    tracing::trace!("server closed the channel");
                    break true;
                }
                Some(_) => {}
            }
        };
        let _ = tcp_w.shutdown().await;
        closed
    };

    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = session_ended.cancelled() => break,
            () = &mut up, if !up_done => up_done = true,
            closed = &mut down, if !down_done => {
                down_done = true;
                if closed {
                    break;
                }
            }
        }
    }
    let _ = to_server.close().await;
    counters.connections_open.fetch_sub(1, Ordering::Relaxed);
}
