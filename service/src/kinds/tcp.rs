//! `kind = "tcp"`: any TCP service, forwarded byte for byte. Probe: a connect
//! (through a `-L` tunnel that only proves the tunnel; prefer a kind that speaks
//! the service's protocol where there is one).

use futures_util::future::BoxFuture;
use tokio::net::TcpStream;

use super::{Checked, Endpoint, Kind, Probe};
use crate::health::Observation;

pub struct Tcp;

impl Kind for Tcp {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Tcp
    }

    fn check<'a>(&'a self, p: &'a Probe<'a>) -> BoxFuture<'a, Checked> {
        Box::pin(async move {
            let observation = match TcpStream::connect((p.addr.host.as_str(), p.addr.port)).await {
                Ok(_) => Observation::Ok,
                Err(e) => Observation::Failed(format!("connect: {e}")),
            };
            Checked {
                observation,
                ..Checked::default()
            }
        })
    }
}
