//! The upstream answer on its way to the client, frame by frame.

use super::*;

/// The upstream answer on its way to the client: frames pass through as they come.
/// A failure, or `IDLE_TIMEOUT` without a frame, ends it with Ollama's error line
/// (NDJSON) or a cut connection, and counts against the node. The idle timer is
/// armed only while the upstream keeps the relay waiting.
pub(super) struct Relay {
    pub(super) inner: UpstreamBody,
    pub(super) idle: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    pub(super) ndjson: bool,
    pub(super) node: String,
    /// Held until the answer ends (the candidate's requests in flight).
    pub(super) in_flight: Option<RequestGuard>,
    /// The upstream connection, back to its pool once the answer was read to the end.
    pub(super) lease: Option<Lease>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // An answer with nothing left to read (a bodiless one, say) may never be
        // polled to its end.
        if self.in_flight.is_some() && hyper::body::Body::is_end_stream(&self.inner) {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
    }
}

impl Relay {
    /// The answer failed after it began: the error line, or an error that cuts it.
    fn fail(&mut self, msg: String) -> Option<Result<hyper::body::Frame<Bytes>, std::io::Error>> {
        tracing::warn!("{msg}");
        if let Some(g) = self.in_flight.take() {
            g.candidate().request_failed();
        }
        if self.ndjson {
            let line = format!("{}\n", serde_json::json!({ "error": msg }));
            Some(Ok(hyper::body::Frame::data(Bytes::from(line))))
        } else {
            Some(Err(std::io::Error::other(msg)))
        }
    }
}

impl hyper::body::Body for Relay {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.in_flight.is_none() {
            return Poll::Ready(None); // ended (after an error line)
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.in_flight = None;
                if let Some(lease) = this.lease.take() {
                    lease.release();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = format!("{} failed mid-answer: {e}", this.node);
                Poll::Ready(this.fail(msg))
            }
            Poll::Pending => {
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(IDLE_TIMEOUT)));
                if std::future::Future::poll(idle.as_mut(), cx).is_ready() {
                    let msg = format!(
                        "{} sent nothing for {} s",
                        this.node,
                        IDLE_TIMEOUT.as_secs()
                    );
                    return Poll::Ready(this.fail(msg));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.in_flight.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // An error line may follow only a chunked answer, whose size is unknown.
        self.inner.size_hint()
    }
}
