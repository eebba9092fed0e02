//! `kind = "postgres"`: PostgreSQL, through an endpoint that speaks enough of its
//! protocol to refuse a client with a real error when no node is up and to move
//! sessions off a replica once a primary is back (`crate::proxy::tcp`).
//!
//! Probe: a real login (as `probe.user`, with the password stored in the keychain
//! entry `postgres:<service>` if one is needed) and `SELECT pg_is_in_recovery()`,
//! which tells a primary from a replica; a server that answers but refuses the
//! login is degraded, not down.

use std::net::SocketAddr;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Checked, Endpoint, Kind, Probe};
use crate::config::HostPort;
use crate::health::Observation;

pub struct Postgres;

impl Kind for Postgres {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Postgres
    }

    fn check<'a>(&'a self, p: &'a Probe<'a>) -> BoxFuture<'a, Checked> {
        Box::pin(async move {
            let (observation, role) = probe(p).await;
            Checked {
                observation,
                postgres: role,
                ..Checked::default()
            }
        })
    }

    fn port_taken_hint(&self, _listen: SocketAddr) -> String {
        "a local PostgreSQL probably runs there: move it to port 5433 (postgresql.conf `port`) and list it as this node's candidate".to_string()
    }

    fn probe_secret(&self, service: &str) -> Option<String> {
        crate::keychain::get(&crate::keychain::postgres_account(service))
            .ok()
            .flatten()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgRole {
    /// Read-write.
    Primary,
    /// In recovery: a streaming standby, read-only.
    Replica,
}

/// A real login and `SELECT pg_is_in_recovery()`.
async fn probe(p: &Probe<'_>) -> (Observation, Option<PgRole>) {
    let (addr, cfg) = (p.addr, p.cfg);
    let mut pg = tokio_postgres::Config::new();
    pg.host(&addr.host)
        .port(addr.port)
        .user(&cfg.user)
        .dbname(&cfg.database)
        .application_name("robbie-mesh probe");
    if let Some(s) = p.secret {
        pg.password(s);
    }
    let (client, conn) = match pg.connect(tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            return match e.as_db_error() {
                Some(db) => (
                    Observation::Degraded(format!(
                        "up, but the probe cannot log in as {} ({}); store its password in the keychain entry postgres:<service>",
                        cfg.user,
                        db.message()
                    )),
                    None,
                ),
                // No PostgreSQL answer at all: is anything there?
                None => match alive(addr).await {
                    Ok(()) => (Observation::Degraded(format!("up, but the probe's login failed: {e}")), None),
                    Err(why) => (Observation::Failed(why), None),
                },
            };
        }
    };
    let conn = tokio::spawn(conn);
    let role = client.query_one("SELECT pg_is_in_recovery()", &[]).await;
    drop(client);
    let _ = conn.await;
    match role {
        Ok(row) => {
            let in_recovery: bool = row.try_get(0).unwrap_or(false);
            (
                Observation::Ok,
                Some(if in_recovery {
                    PgRole::Replica
                } else {
                    PgRole::Primary
                }),
            )
        }
        Err(e) => (
            Observation::Degraded(format!("logged in, but pg_is_in_recovery() failed: {e}")),
            None,
        ),
    }
}

/// PostgreSQL's SSLRequest: 8 bytes out, and a server answers `S` or `N`.
async fn alive(addr: &HostPort) -> Result<(), String> {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut s = TcpStream::connect((addr.host.as_str(), addr.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(&SSL_REQUEST)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = [0u8; 1];
    match s.read_exact(&mut answer).await {
        Ok(_) if answer[0] == b'S' || answer[0] == b'N' => Ok(()),
        Ok(_) => Err(format!("not PostgreSQL (answered {:?})", answer[0] as char)),
        Err(_) => Err("closed without a PostgreSQL answer".into()),
    }
}
