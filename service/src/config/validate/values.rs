//! Validation of Values that appear in several sections: `host:port` and loopback addresses.

use super::*;

pub(super) fn host_port(c: &mut Checker<'_>, v: &Spanned<String>, field: &str) -> Option<HostPort> {
    match parse_host_port(v.get_ref()) {
        Ok(hp) => Some(hp),
        Err(msg) => {
            c.err(Some(v.span()), field, msg);
            None
        }
    }
}

/// An address this node listens on: must be an IP on loopback with a port.
pub(super) fn loopback_addr(
    c: &mut Checker<'_>,
    v: &Spanned<String>,
    field: &str,
) -> Option<SocketAddr> {
    let s = v.get_ref();
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            c.err(
                Some(v.span()),
                field,
                format!("port 0 would be a different random port at each start, which the CLI, the tray and your clients could not find; choose one, e.g. \"{}:8007\"", a.ip()),
            );
            None
        }
        Ok(a) if a.ip().is_loopback() => Some(a),
        Ok(a) => {
            c.err(
                Some(v.span()),
                field,
                format!("{a} is not a loopback address; robbie-mesh only listens on loopback (use 127.0.0.1:{})", a.port()),
            );
            None
        }
        Err(_) => {
            let hint = match parse_host_port(s) {
                Ok(hp) => format!("; write an IP address, e.g. \"127.0.0.1:{}\"", hp.port),
                Err(m) => format!(" ({m})"),
            };
            c.err(
                Some(v.span()),
                field,
                format!("`{}` is not an IP:port address{hint}", cut(s)),
            );
            None
        }
    }
}

/// `host:port` or `[v6]:port`.
pub fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let shown = cut(s);
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("`{shown}` is not [address]:port"))?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(|| {
            format!("`{shown}` has no port; write host:port, e.g. \"127.0.0.1:11434\"")
        })?
    };
    if host.is_empty() {
        return Err(format!(
            "`{shown}` has no host; write host:port, e.g. \"127.0.0.1:11434\""
        ));
    }
    if host.contains(':') && !s.starts_with('[') {
        return Err(format!(
            "`{shown}`: write IPv6 addresses in brackets, e.g. \"[::1]:11434\""
        ));
    }
    let port: u16 = port.parse().map_err(|_| {
        format!(
            "`{}` in `{shown}` is not a port number (1-65535)",
            cut(port)
        )
    })?;
    if port == 0 {
        return Err(format!(
            "port 0 in `{shown}` is not allowed; give a fixed port"
        ));
    }
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}
