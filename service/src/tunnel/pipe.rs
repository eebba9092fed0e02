//! Moving bytes: the accept loop of a `-L` forward, the local side of a `-R`
//! connection, and the bidirectional copy between a TCP stream and an SSH channel
//! (half-close respected: an EOF on one side becomes an EOF on the other, and the
//! other direction keeps flowing).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use russh::client::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Counters, Tunnel};
use crate::config::Backoff as BackoffConfig;
use crate::ssh::{ReverseRoute, Session};

/// Opening a channel through the tunnel gives up after this long: through a `-L`
/// forward the local connect always succeeds, so without it a frozen peer hangs clients.
pub const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// Copy buffer per direction: one SSH packet (32 KiB), so a read from the local
/// socket fills a whole packet instead of the 8 KiB default's quarter packet.
const COPY_BUF: usize = 32 * 1024;
/// Connecting to the local target of a `-R` forward.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the `-L` listen address (retrying with backoff while it is taken) and
/// forwards every accepted connection over the peer's current session.
pub async fn serve_local(
    tunnel: Arc<Tunnel>,
    session: watch::Receiver<Option<Arc<Session>>>,
    backoff: BackoffConfig,
    cancel: CancellationToken,
) {
    let Some(addr) = tunnel.config.listen_addr() else { return };
    let Some(listener) = bind_with_retry(&tunnel, addr, backoff, &cancel).await else { return };
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(tunnel = %tunnel.name(), "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let current = session.borrow().clone();
        let Some(current) = current else {
            tracing::debug!(tunnel = %tunnel.name(), "no ssh session; closing connection from {from}");
            continue;
        };
        tokio::spawn(forward_local(tunnel.clone(), current, tcp, from, cancel.clone()));
    }
}

async fn bind_with_retry(
    tunnel: &Tunnel,
    addr: SocketAddr,
    backoff: BackoffConfig,
    cancel: &CancellationToken,
) -> Option<TcpListener> {
    let mut backoff = Backoff::new(backoff);
    loop {
        match TcpListener::bind(addr).await {
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
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn forward_local(
    tunnel: Arc<Tunnel>,
    session: Arc<Session>,
    tcp: TcpStream,
    from: SocketAddr,
    cancel: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let remote = &tunnel.config.remote;
    let open = session.handle.channel_open_direct_tcpip(
        remote.host.clone(),
        u32::from(remote.port),
        from.ip().to_string(),
        u32::from(from.port()),
    );
    let channel = match tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, open).await {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => {
            tracing::debug!(tunnel = %tunnel.name(), "server could not connect to {remote}: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(tunnel = %tunnel.name(), "no answer to channel open within {CHANNEL_OPEN_TIMEOUT:?}");
            return;
        }
    };
    drop(session);
    pipe(tcp, channel, &tunnel.counters, &cancel).await;
}

/// The local half of a `-R` connection: connect to the target first, then accept the
/// server's channel (or refuse it, so the remote client sees the failure at once).
pub async fn serve_reverse(channel: Channel<Msg>, reply: ChannelOpenHandle, route: Arc<ReverseRoute>) {
    let target = (route.local.host.as_str(), route.local.port);
    match tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            reply.accept().await;
            pipe(tcp, channel, &route.counters, &route.cancel).await;
        }
        Ok(Err(e)) => {
            tracing::debug!("-R target {} refused: {e}", route.local);
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
        }
        Err(_) => {
            tracing::debug!("-R target {} did not answer within {LOCAL_CONNECT_TIMEOUT:?}", route.local);
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
        }
    }
}

/// Copies both ways until both sides are done (or shutdown), counting bytes.
pub async fn pipe(tcp: TcpStream, channel: Channel<Msg>, counters: &Arc<Counters>, cancel: &CancellationToken) {
    counters.connections_open.fetch_add(1, Ordering::Relaxed);
    counters.connections_total.fetch_add(1, Ordering::Relaxed);
    let mut local = Counted { inner: tcp, counters: counters.clone() };
    let mut remote = channel.into_stream();
    tokio::select! {
        () = cancel.cancelled() => {}
        r = tokio::io::copy_bidirectional_with_sizes(&mut local, &mut remote, COPY_BUF, COPY_BUF) => {
            if let Err(e) = r {
                tracing::trace!("connection ended: {e}");
            }
        }
    }
    counters.connections_open.fetch_sub(1, Ordering::Relaxed);
}

/// A local stream that counts what passes: reads go to the server, writes come from it.
struct Counted {
    inner: TcpStream,
    counters: Arc<Counters>,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.counters.bytes_sent.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.counters.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
