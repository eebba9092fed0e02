//! The TCP stream under an SSH session: reads are buffered, counted (bytes arriving
//! prove the peer alive: see the keepalive in `tunnel::supervisor`), and
//! `TCP_QUICKACK` is re-armed after every read on Linux.
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

pub struct QuickAck {
    inner: TcpStream,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// Bytes read from the server so far.
    received: Arc<AtomicU64>,
}

impl QuickAck {
    pub fn new(inner: TcpStream, received: Arc<AtomicU64>) -> Self {
        QuickAck {
            inner,
            buf: vec![0; READ_BUF].into_boxed_slice(),
            pos: 0,
            len: 0,
            received,
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
                this.received.fetch_add(n as u64, Ordering::Relaxed);
                if n > 0 {
                    this.rearm();
                }
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.len = rb.filled().len();
            this.pos = 0;
            this.received.fetch_add(this.len as u64, Ordering::Relaxed);
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

impl AsyncWrite for QuickAck {
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
}
