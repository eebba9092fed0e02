//! Validation of `[[service]]`: kinds, endpoints, candidates, probes and VRAM needs.

use super::*;

pub(super) fn validate_service(
    c: &mut Checker<'_>,
    rs: &RawService,
    field: &str,
    this_node: &str,
    peers: &[PeerConfig],
    listen_ports: &mut HashMap<SocketAddr, String>,
) -> Option<ServiceConfig> {
    let before = c.errors.len();
    let name = rs.name.get_ref();
    if !valid_name(name) {
        c.err(
            Some(rs.name.span()),
            format!("{field}.name"),
            name_rule(name),
        );
    }
    let kind = ServiceKind::ALL
        .iter()
        .find(|(n, _)| *n == rs.kind.get_ref())
        .map(|(_, k)| *k);
    if kind.is_none() {
        c.err(
            Some(rs.kind.span()),
            format!("{field}.kind"),
            format!(
                "`{}` is not a service kind; use one of {}",
                cut(rs.kind.get_ref()),
                ServiceKind::ALL
                    .iter()
                    .map(|(n, _)| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let listen = loopback_addr(c, &rs.listen, &format!("{field}.listen"));
    if let Some(addr) = listen {
        match listen_ports.iter().find(|(a, _)| a.port() == addr.port()) {
            Some((_, prev)) => c.err(
                Some(rs.listen.span()),
                format!("{field}.listen"),
                format!("port {} is already used by {prev}", addr.port()),
            ),
            None => {
                listen_ports.insert(addr, format!("{field}.listen"));
            }
        }
    }
    if rs.candidates.is_empty() {
        c.err(
            Some(rs.name.span()),
            format!("{field}.candidates"),
            "is empty; list the nodes that serve it, first = preferred",
        );
    }
    let candidates = node_endpoints(
        c,
        &rs.candidates,
        &format!("{field}.candidates"),
        this_node,
        peers,
    );
    let vram = validate_vram(c, rs.vram.as_ref(), field);
    let probe = validate_probe(c, rs.probe.as_ref(), field);
    let hold_down = c.duration(
        &rs.hold_down,
        format!("{field}.hold_down"),
        crate::route::HOLD_DOWN,
    );
    let mut hosts = Vec::new();
    for (i, h) in rs.hosts.iter().flatten().enumerate() {
        if valid_host_name(h.get_ref()) {
            hosts.push(h.get_ref().to_ascii_lowercase());
        } else {
            c.err(
                Some(h.span()),
                format!("{field}.hosts[{i}]"),
                format!(
                    "`{}` is not a host name; write the name clients use, e.g. \"ollama.home.arpa\" (without port or scheme)",
                    cut(h.get_ref())
                ),
            );
        }
    }
    if c.errors.len() > before {
        return None;
    }
    Some(ServiceConfig {
        name: name.clone(),
        kind: kind?,
        listen: listen?,
        candidates,
        probe,
        hold_down,
        vram,
        retry_non_idempotent: rs.retry_non_idempotent.unwrap_or(false),
        hosts,
    })
}

/// A list of `{ node, tunnel | address }`: how this node reaches each node's instance
/// of something (a service's candidates, the other nodes' APIs).
pub(super) fn node_endpoints(
    c: &mut Checker<'_>,
    list: &[RawCandidate],
    field: &str,
    this_node: &str,
    peers: &[PeerConfig],
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for (j, rc) in list.iter().enumerate() {
        let cfield = format!("{field}[{j}]");
        let node = rc.node.get_ref();
        if !valid_name(node) {
            c.err(
                Some(rc.node.span()),
                format!("{cfield}.node"),
                name_rule(node),
            );
            continue;
        }
        if out.iter().any(|x| &x.node == node) {
            c.err(
                Some(rc.node.span()),
                format!("{cfield}.node"),
                format!("`{node}` is listed twice"),
            );
            continue;
        }
        let target = match (&rc.tunnel, &rc.address) {
            (Some(t), None) => tunnel_end(c, t, &cfield, peers),
            (None, Some(a)) => host_port(c, a, &format!("{cfield}.address")).map(|hp| (hp, None)),
            _ => {
                c.err(
                    Some(rc.node.span()),
                    cfield.clone(),
                    "give exactly one of `tunnel` (a -L forward's name) or `address` (host:port)",
                );
                None
            }
        };
        let priority = match &rc.priority {
            Some(p) if *p.get_ref() >= 1 => *p.get_ref(),
            Some(p) => {
                c.err(
                    Some(p.span()),
                    format!("{cfield}.priority"),
                    "must be 1 or more (1 = first choice)",
                );
                1
            }
            None => j as u32 + 1,
        };
        if let Some((address, tunnel)) = target {
            out.push(Candidate {
                node: node.clone(),
                address,
                tunnel,
                is_local: node == this_node,
                priority,
            });
        }
    }
    out
}

/// `vram = { "llama3.1:70b" = "40GiB" }`: what a model needs on one GPU.
pub(super) fn validate_vram(
    c: &mut Checker<'_>,
    v: Option<&std::collections::BTreeMap<String, Spanned<String>>>,
    field: &str,
) -> Vec<(String, u64)> {
    let Some(v) = v else { return Vec::new() };
    v.iter()
        .filter_map(|(model, size)| match parse_size(size.get_ref()) {
            Some(bytes) => Some((model.clone(), bytes)),
            None => {
                c.err(
                    Some(size.span()),
                    format!("{field}.vram.{model}"),
                    format!(
                        "`{}` is not a size; write e.g. \"40GiB\" or \"24GB\"",
                        cut(size.get_ref())
                    ),
                );
                None
            }
        })
        .collect()
}

/// `40GiB`, `24GB`, `512MiB`, `1073741824`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|ch: char| !ch.is_ascii_digit() && ch != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    (num >= 0.0).then_some((num * mult) as u64)
}

/// A candidate's `tunnel`: must name a `-L` forward; its local end is where to connect.
pub(super) fn tunnel_end(
    c: &mut Checker<'_>,
    t: &Spanned<String>,
    field: &str,
    peers: &[PeerConfig],
) -> Option<(HostPort, Option<String>)> {
    let name = t.get_ref();
    let found = peers
        .iter()
        .flat_map(|p| p.forwards.iter())
        .find(|f| &f.name == name);
    match found {
        Some(f) if f.kind == ForwardKind::Local => Some((f.local.clone(), Some(name.clone()))),
        Some(_) => {
            c.err(
                Some(t.span()),
                format!("{field}.tunnel"),
                format!(
                    "`{name}` is a -R forward; a candidate needs a -L forward (or an `address`)"
                ),
            );
            None
        }
        None => {
            let known: Vec<&str> = peers
                .iter()
                .flat_map(|p| p.forwards.iter())
                .filter(|f| f.kind == ForwardKind::Local)
                .map(|f| f.name.as_str())
                .collect();
            c.err(
                Some(t.span()),
                format!("{field}.tunnel"),
                format!(
                    "no -L forward is named `{name}` (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            None
        }
    }
}

pub(super) fn validate_probe(
    c: &mut Checker<'_>,
    p: Option<&RawProbe>,
    field: &str,
) -> ProbeConfig {
    let d = ProbeConfig::default();
    let Some(p) = p else { return d };
    let path = match &p.path {
        Some(path) if path.get_ref().starts_with('/') => path.get_ref().clone(),
        Some(path) => {
            c.err(
                Some(path.span()),
                format!("{field}.probe.path"),
                "must start with `/`",
            );
            d.path.clone()
        }
        None => d.path.clone(),
    };
    ProbeConfig {
        local_interval: c.duration(
            &p.local_interval,
            format!("{field}.probe.local_interval"),
            d.local_interval,
        ),
        remote_interval: c.duration(
            &p.remote_interval,
            format!("{field}.probe.remote_interval"),
            d.remote_interval,
        ),
        timeout: c.duration(&p.timeout, format!("{field}.probe.timeout"), d.timeout),
        path,
        user: p.user.clone().unwrap_or(d.user),
        database: p.database.clone().unwrap_or(d.database),
    }
}
