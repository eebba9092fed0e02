//! The TCP endpoint of a `postgres` or `tcp` service: each connection goes to the
//! first candidate of the plan that accepts it — for PostgreSQL the primary while
//! one is up, else a replica (read-only) — then bytes are copied both ways. A
//! connection is closed when its node is marked down, so a client reconnects to
//! the next one instead of hanging on a dead primary. When no node answers, a
//! PostgreSQL client gets a proper `FATAL` error saying so.
//!
//! A PostgreSQL connection that went to a read-only replica (the primary was down)
//! does not stay there once a primary is eligible again: at its next idle moment
//! (a ReadyForQuery outside a transaction) it gets `FATAL 57P01` ("the primary is
//! back") and is closed, so pools and drivers reconnect — to the primary.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::kinds::Endpoint;
use crate::route::Needs;
use crate::services::ServiceHandle;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn serve(listener: TcpListener, service: Arc<ServiceHandle>, cancel: CancellationToken) {
    let door = crate::door::Door::tcp(format!("endpoint {}", service.config.name));
    loop {
        let (client, from, ticket) = tokio::select! {
            () = cancel.cancelled() => return,
            a = door.accept(&listener) => a,
        };
        let (service, cancel) = (service.clone(), cancel.clone());
        tokio::spawn(async move {
            connection(client, from, service, cancel).await;
            drop(ticket);
        });
    }
}

async fn connection(
    client: TcpStream,
    from: std::net::SocketAddr,
    service: Arc<ServiceHandle>,
    cancel: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let mut failures = Vec::new();
    let plan = service.route(&Needs::default());
    // Through a -L tunnel a connect always succeeds, so "try everyone" (panic mode)
    // would hand a PostgreSQL client a dead end: refuse it with a clear error instead.
    let postgres = crate::kinds::of(service.config.kind).endpoint() == Endpoint::Postgres;
    let order = if plan.panic && postgres {
        failures.extend(
            service
                .candidates
                .iter()
                .map(|c| format!("{}: {}", c.config.node, c.status().health.reason)),
        );
        Vec::new()
    } else {
        plan.order
    };
    for choice in order {
        let cand = &service.candidates[choice.index];
        let addr = &cand.config.address;
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((addr.host.as_str(), addr.port)),
        )
        .await
        {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                let _in_flight = cand.begin_request();
                let mut health = cand.subscribe();
                let on_replica = postgres && cand.view().read_only == Some(true);
                let copy = async {
                    if on_replica {
                        if until_primary_is_back(client, upstream, &service, choice.index).await {
                            tracing::info!(service = %service.config.name, "moved a connection off the replica on {}: a primary is back", choice.node);
                        }
                    } else {
                        let (mut a, mut b) = (client, upstream);
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = copy => {}
                    _ = health.wait_for(|s| !s.health.is_up()) => {
                        tracing::info!(service = %service.config.name, "closing a connection to {}: it is marked down", choice.node);
                    }
                }
                return;
            }
            Ok(Err(e)) => failures.push(format!("{}: {e}", choice.node)),
            Err(_) => failures.push(format!(
                "{}: no answer within {CONNECT_TIMEOUT:?}",
                choice.node
            )),
        }
        cand.request_failed();
    }
    let why = format!(
        "no {} node is up ({})",
        service.config.name,
        failures.join("; ")
    );
    tracing::warn!(service = %service.config.name, "refused a connection from {from}: {why}");
    if postgres {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            pg_refuse(client, &format!("robbie-mesh: {why}")),
        )
        .await;
    }
}

/// Copies a connection to a replica both ways, reading the server's messages as it
/// goes (type byte, length, body): once a primary is eligible again and the
/// session is idle outside a transaction (ReadyForQuery `I`), the client gets
/// `FATAL 57P01` and both sides are closed. A TLS session cannot be read: it is
/// left as it is.
async fn until_primary_is_back(
    mut client: TcpStream,
    server: TcpStream,
    service: &ServiceHandle,
    replica: usize,
) -> bool {
    let primary_back = || {
        let plan = service.route(&Needs::default());
        plan.order.first().is_some_and(|c| {
            c.index != replica && service.candidates[c.index].view().read_only == Some(false)
        })
    };
    let (mut from_server, mut to_server) = server.into_split();
    let (mut from_client, mut to_client) = client.split();
    let up = tokio::io::copy(&mut from_client, &mut to_server);
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        let mut frames = PgFrames::default();
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                r = from_server.read(&mut buf) => {
                    let n = match r {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => n,
                    };
                    frames.feed(&buf[..n]);
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        return false;
                    }
                }
                _ = check.tick() => {}
            }
            if frames.idle() && primary_back() {
                return true;
            }
        }
    };
    let moved = {
        tokio::pin!(up, down);
        tokio::select! {
            _ = &mut up => false,
            m = &mut down => m,
        }
    };
    if moved {
        let _ = to_client
            .write_all(&pg_error(
                "57P01",
                "robbie-mesh: the primary is back; this connection to a read-only replica ends, reconnect",
            ))
            .await;
        let _ = to_client.shutdown().await;
    }
    moved
}

/// Follows the framing of a PostgreSQL server's messages, to know when the
/// session is idle outside a transaction.
#[derive(Default)]
struct PgFrames {
    /// Bytes of the current message's header still to come (type + length).
    header: Vec<u8>,
    /// Bytes of the current message's body still to skip.
    skip: usize,
    /// The current message is a ReadyForQuery: its status byte comes next.
    ready: bool,
    /// The last ReadyForQuery said idle, and nothing came after it.
    idle: bool,
    started: bool,
    /// TLS or GSS encryption: nothing can be read.
    opaque: bool,
}

impl PgFrames {
    fn feed(&mut self, mut data: &[u8]) {
        if self.opaque {
            return;
        }
        if !self.started && !data.is_empty() {
            self.started = true;
            // The answer to an SSLRequest / GSSENCRequest is one unframed byte.
            match data[0] {
                b'N' if data.len() == 1 || !matches!(data.get(1), Some(0)) => {
                    data = &data[1..];
                    self.started = false;
                    if data.is_empty() {
                        return;
                    }
                    self.started = true;
                }
                b'S' | b'G' if data.len() == 1 => {
                    self.opaque = true;
                    return;
                }
                _ => {}
            }
        }
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                if self.ready && n >= 1 {
                    self.idle = data[0] == b'I' && self.skip == 1 && data.len() == 1;
                    self.ready = false;
                } else {
                    self.idle = false;
                }
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            self.idle = false;
            let need = 5 - self.header.len();
            let n = need.min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == 5 {
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                self.ready = self.header[0] == b'Z';
                self.skip = len.saturating_sub(4);
                self.header.clear();
            }
        }
    }

    fn idle(&self) -> bool {
        self.idle && !self.opaque
    }
}

/// A PostgreSQL ErrorResponse, FATAL, with `code` and `message`.
fn pg_error(code: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&fields);
    msg
}

/// Answers a PostgreSQL client's opening with a FATAL ErrorResponse, which psql and
/// drivers show as they are: "FATAL: robbie-mesh: no postgres node is up (…)".
async fn pg_refuse(mut client: TcpStream, message: &str) -> std::io::Result<()> {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSSENC_REQUEST: u32 = 80_877_104;
    loop {
        let len = client.read_u32().await? as usize;
        let code = client.read_u32().await?;
        let mut rest = vec![0u8; len.saturating_sub(8).min(64 * 1024)];
        client.read_exact(&mut rest).await?;
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            client.write_all(b"N").await?; // no encryption here; the startup message follows
            continue;
        }
        break;
    }
    client.write_all(&pg_error("08006", message)).await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::PgFrames;

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn idle_only_after_a_ready_for_query_outside_a_transaction() {
        let mut f = PgFrames::default();
        // The answer to an SSLRequest, then authentication and ready, in pieces.
        f.feed(b"N");
        assert!(!f.idle());
        let mut stream = msg(b'R', &[0, 0, 0, 0]);
        stream.extend(msg(b'S', b"server_version\x0015\x00"));
        stream.extend(msg(b'Z', b"I"));
        for chunk in stream.chunks(3) {
            f.feed(chunk);
        }
        assert!(f.idle(), "idle after ReadyForQuery I");
        // A query's answer ending inside a transaction: not idle.
        let mut answer = msg(b'C', b"BEGIN\x00");
        answer.extend(msg(b'Z', b"T"));
        f.feed(&answer);
        assert!(!f.idle());
        // More data after an idle ReadyForQuery: not idle any more.
        let mut two = msg(b'Z', b"I");
        two.extend(msg(b'N', b"notice\x00"));
        f.feed(&two);
        assert!(!f.idle());
        // TLS: nothing can be read, never idle.
        let mut tls = PgFrames::default();
        tls.feed(b"S");
        tls.feed(&msg(b'Z', b"I"));
        assert!(!tls.idle());
    }
}
