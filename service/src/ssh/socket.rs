//! The TCP stream under an SSH session: reads are buffered, counted (bytes arriving
//! prove the peer alive: see `tunnel::supervisor::liveness`), and `TCP_QUICKACK` is
//! re-armed after small reads on Linux.
//!
//! russh reads each packet with two `read` calls (its length, then its body); a
//! 64 KiB buffer turns that into one syscall per several packets during transfers.
//!
//! Linux drops out of quick-ack mode on its own; sshd then waits for our delayed ACK
//! (≈40 ms) before it sends the next small packet, which is what made a `-R`
//! connection opened right after another one take ≈38 ms here. Re-arming after a
//! small read keeps ACKs immediate where latency matters; during a bulk transfer
//! (large reads) the kernel ACKs every other segment anyway and the syscall is saved.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const READ_BUF: usize = 64 * 1024;
/// Reads shorter than this are "interactive": re-arm quick ACKs after them.
const SMALL_READ: usize = 16 * 1024;

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
                if n < SMALL_READ {
                    this.rearm();
                }
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.len = rb.filled().len();
            this.pos = 0;
            this.received.fetch_add(this.len as u64, Ordering::Relaxed);
            if this.len < SMALL_READ {
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
