//! The TCP stream under an SSH session: reads are buffered, counted (what arrives
//! proves the peer alive: see [`Arrivals`] and the keepalive in
//! `tunnel::supervisor`), and `TCP_QUICKACK` is re-armed after every read on Linux.
//!
//! russh reads each packet with two `read` calls (its length, then its body); a
//! 64 KiB buffer turns that into one syscall per several packets during transfers.
//!
//! sshd does not set `TCP_NODELAY` on a session without a terminal (port
//! forwarding only), so Nagle's algorithm holds its next packet until our ACK of
//! the previous one, and Linux drops out of quick-ack mode on its own: our ACK then
//! comes after the delayed-ACK timer (≈40 ms). Measured with a packet capture on
//! loopback (`tests/tests/pull_latency.rs`): a PostgreSQL answer of 40 KB through
//! the tunnel arrived as a 24 KB segment, no ACK from us for 43 ms, and the other
//! 18 KB right after our late ACK — in one round trip out of three. Re-arming after
//! every read, large ones included (one 24 KB segment is less than the two full
//! segments that make Linux ACK at once on a 64 KB-MSS loopback), keeps our ACKs
//! immediate; it costs one `setsockopt` per read of up to 64 KiB.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const READ_BUF: usize = 64 * 1024;

/// What has arrived from the server: while [`Arrivals::count`] moves, the peer is
/// sending and the link carries it, even when a keepalive answer waits behind
/// bulk data.
///
/// Two depths are counted. The bytes the session has read; and on Linux the data
/// segments the kernel has taken in for the connection (`tcpi_data_segs_in`),
/// out-of-order ones included. The second matters on a lossy, saturated link:
/// after a lost segment TCP holds everything behind it until the retransmission
/// arrives (a retransmission timeout, doubled if that one is lost too, is
/// seconds), so the session reads nothing for that long while the peer's data
/// keeps arriving. Pure ACKs are not counted: a peer whose kernel answers but
/// whose sshd does not is not alive.
#[derive(Default)]
pub struct Arrivals {
    read: AtomicU64,
    /// The connection's descriptor while it is open (cleared before it closes).
    #[cfg(target_os = "linux")]
    fd: std::sync::Mutex<Option<std::os::fd::RawFd>>,
}

impl Arrivals {
    /// A number that changes whenever anything more has arrived.
    pub fn count(&self) -> u64 {
        self.read
            .load(Ordering::Relaxed)
            .wrapping_add(self.kernel_segments())
    }

    /// TCP's current retransmission timeout for the connection (Linux): how
    /// long the server's TCP, on a similar round trip, may send nothing after
    /// a loss. `None` where it is not known (another system, a jump host's
    /// channel).
    pub fn retransmit_timeout(&self) -> Option<std::time::Duration> {
        self.tcp_info()
            .map(|i| std::time::Duration::from_micros(u64::from(i.tcpi_rto)))
    }

    fn add(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn kernel_segments(&self) -> u64 {
        self.tcp_info()
            .map_or(0, |i| u64::from(i.tcpi_data_segs_in))
    }

    /// The one `unsafe` block of the crate: `getsockopt(TCP_INFO)` has no safe
    /// wrapper in `socket2` or `nix`.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn tcp_info(&self) -> Option<libc::tcp_info> {
        let fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        let fd = (*fd)?;
        // SAFETY: `fd` is open while it is stored here: `QuickAck`'s `Drop` clears
        // it, under this lock, before the socket closes. `info` and `len` are a
        // properly sized buffer and its length, as `getsockopt` requires.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            );
            (rc == 0).then_some(info)
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn tcp_info(&self) -> Option<NoTcpInfo> {
        None
    }
}

/// Where `TCP_INFO` is not read: nothing to say.
#[cfg(not(target_os = "linux"))]
#[allow(dead_code)]
struct NoTcpInfo {
    tcpi_rto: u32,
    tcpi_data_segs_in: u32,
}

pub struct QuickAck {
    inner: TcpStream,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    arrivals: Arc<Arrivals>,
}

impl QuickAck {
    pub fn new(inner: TcpStream, arrivals: Arc<Arrivals>) -> Self {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            *arrivals.fd.lock().unwrap_or_else(|e| e.into_inner()) = Some(inner.as_raw_fd());
        }
        QuickAck {
            inner,
            buf: vec![0; READ_BUF].into_boxed_slice(),
            pos: 0,
            len: 0,
            arrivals,
        }
    }

    #[cfg(target_os = "linux")]
    fn rearm(&self) {
        let _ = socket2::SockRef::from(&self.inner).set_tcp_quickack(true);
    }

    #[cfg(not(target_os = "linux"))]
    fn rearm(&self) {}
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.len {
            // Empty: read once, into our buffer (or straight into a big enough caller's).
            if out.remaining() >= this.buf.len() {
                let before = out.filled().len();
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                let n = out.filled().len() - before;
                this.arrivals.add(n);
                if n > 0 {
                    this.rearm();
                }
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.len = rb.filled().len();
            this.pos = 0;
            this.arrivals.add(this.len);
            if this.len > 0 {
                this.rearm();
            }
        }
        let n = out.remaining().min(this.len - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// A stream that is not this process's socket (a channel through a jump host):
/// its reads are counted.
pub struct Counted<S> {
    inner: S,
    arrivals: Arc<Arrivals>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, arrivals: Arc<Arrivals>) -> Self {
        Counted { inner, arrivals }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = out.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, out))?;
        self.arrivals.add(out.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

/// The write half of a wrapper that only watches reads: straight to `inner`.
macro_rules! write_through {
    () => {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    };
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    write_through!();
}

impl Drop for QuickAck {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        {
            *self.arrivals.fd.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

impl AsyncWrite for QuickAck {
    write_through!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Data the kernel has taken in counts before the session reads it (a session
    /// waiting on a retransmission, or a busy runtime, still sees the peer alive);
    /// the connection closed, nothing is asked of its old descriptor.
    #[tokio::test]
    async fn arrivals_count_what_the_kernel_holds_and_what_was_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback");
        let client = TcpStream::connect(listener.local_addr().expect("loopback"))
            .await
            .expect("loopback");
        let (mut server, _) = listener.accept().await.expect("loopback");
        let arrivals = Arc::new(Arrivals::default());
        let mut wire = QuickAck::new(client, arrivals.clone());
        assert_eq!(arrivals.count(), 0, "nothing sent yet");

        server.write_all(b"hello").await.expect("loopback");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while arrivals.count() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the kernel's segment never counted"
            );
            tokio::task::yield_now().await;
        }
        if cfg!(target_os = "linux") {
            assert_eq!(
                arrivals.read.load(Ordering::Relaxed),
                0,
                "counted unread, by the kernel"
            );
            let rto = arrivals.retransmit_timeout().expect("TCP_INFO");
            assert!(
                rto >= std::time::Duration::from_millis(200),
                "Linux's minimum RTO: {rto:?}"
            );
        }
        let before = arrivals.count();
        let mut got = [0u8; 5];
        wire.read_exact(&mut got).await.expect("loopback");
        assert_eq!(&got, b"hello");
        assert_eq!(arrivals.count(), before + 5, "and then as read");

        drop(wire);
        assert_eq!(arrivals.count(), 5, "closed: only what was read");
    }
}
