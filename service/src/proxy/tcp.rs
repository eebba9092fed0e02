//! The TCP endpoint of a `postgres` or `tcp` service: each connection goes to the
//! first candidate of the plan that accepts it — for PostgreSQL the primary while
//! one is up, else a replica (read-only) — then bytes are copied both ways. A
//! connection is closed when its node is marked down, so a client reconnects to
//! the next one instead of hanging on a dead primary. When no node answers, a
//! PostgreSQL client gets a proper `FATAL` error saying so.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::ServiceKind;
use crate::route::Needs;
use crate::services::ServiceHandle;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn serve(listener: TcpListener, service: Arc<ServiceHandle>, cancel: CancellationToken) {
    loop {
        let (client, from) = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(service = %service.config.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(client, from, service.clone(), cancel.clone()));
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
    let order = if plan.panic && service.config.kind == ServiceKind::Postgres {
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
                let (mut a, mut b) = (client, upstream);
                tokio::select! {
                    () = cancel.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
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
    if service.config.kind == ServiceKind::Postgres {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            pg_refuse(client, &format!("robbie-mesh: {why}")),
        )
        .await;
    }
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
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "08006"),
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
    client.write_all(&msg).await?;
    client.shutdown().await
}
