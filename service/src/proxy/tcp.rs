//! The TCP endpoint of a `postgres` or `tcp` service: each connection goes to the
//! first candidate of the plan that accepts it, then bytes are copied both ways.
//! (Choosing a PostgreSQL primary by its read-write role needs credentials for the
//! probe and comes with it; until then the plan's order decides.)

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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
        let (service, cancel) = (service.clone(), cancel.clone());
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let mut failures = Vec::new();
            for choice in service.plan(&Needs::default()).order {
                let cand = &service.candidates[choice.index];
                let addr = &cand.config.address;
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((addr.host.as_str(), addr.port))).await {
                    Ok(Ok(upstream)) => {
                        let _ = upstream.set_nodelay(true);
                        let _in_flight = cand.begin_request();
                        let (mut a, mut b) = (client, upstream);
                        tokio::select! {
                            () = cancel.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        }
                        return;
                    }
                    Ok(Err(e)) => failures.push(format!("{}: {e}", choice.node)),
                    Err(_) => failures.push(format!("{}: no answer within {CONNECT_TIMEOUT:?}", choice.node)),
                }
                cand.request_failed();
            }
            tracing::warn!(service = %service.config.name, "refused a connection from {from}: no node answered ({})", failures.join("; "));
        });
    }
}
