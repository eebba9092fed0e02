//! Which headers go on: hop-by-hop ones and our own `x-robbie-*` are dropped,
//! and a `Host` must be a loopback name or one the service lists.

use super::*;

/// Headers about one connection, never passed on (RFC 9110 §7.6.1), besides
/// those a message's `Connection` header names. No protocol switch (`Upgrade`)
/// is offered through an endpoint.
pub(super) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// This endpoint's own headers: whatever a client or a backend sends under
/// these names is dropped, so that `x-robbie-node` always tells the truth.
pub(super) const OWN_PREFIX: &str = "x-robbie-";

/// Removes the hop-by-hop headers (the fixed ones and those named in
/// `Connection` or `Proxy-Connection`) and any `x-robbie-*` header.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = ["connection", "proxy-connection"]
        .iter()
        .flat_map(|h| headers.get_all(*h).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(h);
    }
    let own: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(OWN_PREFIX))
        .cloned()
        .collect();
    for k in own {
        headers.remove(k);
    }
}

/// The client's headers that go on to the backend: hyper sets the length; the
/// `Host` (checked to be a loopback name or one the service allows) goes on
/// as the client sent it, so a backend's own check of it still means something.
pub(super) fn forward_headers(from: &HeaderMap) -> HeaderMap {
    let mut to = from.clone();
    strip_hop_by_hop(&mut to);
    to.remove(header::CONTENT_LENGTH);
    to
}

/// A page in a browser can reach 127.0.0.1 under a name it controls (DNS
/// rebinding): only a loopback `Host`, or a name the service lists in
/// `hosts`, is served — exactly one, readable.
pub(super) fn host_refusal(
    service: &crate::config::ServiceConfig,
    headers: &HeaderMap,
) -> Option<String> {
    let mut all = headers.get_all(header::HOST).iter();
    let (Some(host), None) = (all.next(), all.next()) else {
        return Some("a request needs exactly one Host header".into());
    };
    let Ok(host) = host.to_str() else {
        return Some("the Host header is not readable text".into());
    };
    if crate::util::is_loopback_authority(host) {
        return None;
    }
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    if service.hosts.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        return None;
    }
    Some(format!(
        "Host `{}` is not a loopback name; list it in the service's `hosts` if clients really use it",
        crate::config::cut(host)
    ))
}
