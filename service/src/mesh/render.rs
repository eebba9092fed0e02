//! A node's plan written as its config file: plain TOML a person can read and
//! edit afterwards, with a comment on every port saying where it comes from.

use std::fmt::Write;

use super::plan::{Forward, NodePlan, Reach};
use super::Mesh;

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn addr(port: u16) -> String {
    q(&format!("127.0.0.1:{port}"))
}

fn reach(r: &Reach) -> String {
    match r {
        Reach::Tunnel(t) => format!("tunnel = {}", q(t)),
        Reach::Address(p) => format!("address = {}", addr(*p)),
    }
}

/// A `[[peer.forward]]` (local end first) or `[[peer.reverse]]` (remote end
/// first: where it lands), with why it exists.
fn forward(out: &mut String, reverse: bool, f: &Forward) {
    let (table, ends) = if reverse {
        ("reverse", [("remote", f.remote), ("local", f.local)])
    } else {
        ("forward", [("local", f.local), ("remote", f.remote)])
    };
    let _ = writeln!(out, "\n  [[peer.{table}]]                  # {}", f.why);
    let _ = writeln!(out, "  name = {}", q(&f.name));
    for (key, port) in ends {
        let _ = writeln!(out, "  {key} = {}", addr(port));
    }
}

/// The config file of `plan`'s node; `how` is the command that wrote it (its
/// header says so), `from_mesh` whether a mesh file was its source.
pub fn render(mesh: &Mesh, plan: &NodePlan, how: &str, from_mesh: bool) -> String {
    let mut out = String::new();
    let node = mesh.node(&plan.node);
    let _ = writeln!(out, "# {}: written by `{how}`.", plan.node);
    if from_mesh {
        let _ = writeln!(
            out,
            "# Change the mesh file and run it again rather than editing ports here: the\n\
             # other nodes' configs are written from the same file and must agree with this\n\
             # one (`robbie-mesh check-config` on all of them says whether they do).\n#"
        );
    } else {
        let _ = writeln!(
            out,
            "# From what its peers answered when it was written; edit freely, then\n\
             # `robbie-mesh check-config` and `robbie-mesh doctor`.\n#"
        );
    }
    if let Some(n) = node {
        let _ = writeln!(
            out,
            "# Ports (README, \"Ports\"): the stable endpoints keep the usual ports, this\n\
             # node's own services sit one above, the other nodes' are in their blocks:"
        );
        if !n.runs.is_empty() {
            let own: Vec<String> = n.runs.iter().map(|(s, p)| format!("{s} {p}")).collect();
            let _ = writeln!(out, "#   own:    {}", own.join(", "));
        }
        let blocks: Vec<String> = mesh
            .nodes
            .iter()
            .filter(|o| o.name != n.name)
            .map(|o| format!("{} {}xxx", o.name, o.block))
            .collect();
        let _ = writeln!(out, "#   others: {}", blocks.join(", "));
        if let Some(p) = n.runs.get("ollama") {
            let _ = writeln!(
                out,
                "# Start this node's own Ollama with OLLAMA_HOST=127.0.0.1:{p}."
            );
        }
    }
    let _ = writeln!(out, "node = {}", q(&plan.node));
    if !plan.nodes.is_empty() {
        let _ = writeln!(
            out,
            "# The other nodes' APIs, to learn their hardware (GET /v1/node)."
        );
        let _ = writeln!(out, "nodes = [");
        for (n, r) in &plan.nodes {
            let _ = writeln!(out, "  {{ node = {}, {} }},", q(n), reach(r));
        }
        let _ = writeln!(out, "]");
    }
    let _ = writeln!(out, "\n[api]\nlisten = {}", addr(super::API_PORT));

    for p in &plan.peers {
        let _ = writeln!(out, "\n[[peer]]\nname = {}", q(&p.name));
        let _ = writeln!(out, "ssh = {}", q(&p.ssh));
        if let Some(ids) = &p.identity {
            if ids.iter().any(|i| i.starts_with("credential:")) {
                let _ = writeln!(
                    out,
                    "# A system service has no agent or keychain: the key is an encrypted systemd\n\
                     # credential (installers/README.md, \"Aurora\")."
                );
            }
            let list: Vec<String> = ids.iter().map(|i| q(i)).collect();
            let _ = writeln!(out, "identity = [{}]", list.join(", "));
        }
        if let Some(idle) = &p.on_demand {
            let _ = writeln!(
                out,
                "connect = \"on-demand\"               # only while a service needs it"
            );
            let _ = writeln!(out, "idle = {}", q(idle));
        }
        for f in &p.reverses {
            forward(&mut out, true, f);
        }
        for f in &p.forwards {
            forward(&mut out, false, f);
        }
    }

    for s in &plan.services {
        let row: Vec<&str> = s.candidates.iter().map(|(n, _, _)| n.as_str()).collect();
        let _ = writeln!(
            out,
            "\n# {}'s {} row: {}.",
            plan.node,
            s.name,
            row.join(", then ")
        );
        let _ = writeln!(out, "[[service]]\nname = {}", q(&s.name));
        let _ = writeln!(out, "kind = {}", q(s.kind.as_str()));
        let _ = writeln!(out, "listen = {}", addr(s.listen));
        let _ = writeln!(out, "candidates = [");
        for (n, r, why) in &s.candidates {
            let line = format!("  {{ node = {}, {} }},", q(n), reach(r));
            if why.is_empty() {
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(out, "{line:<58} # {why}");
            }
        }
        let _ = writeln!(out, "]");
        if let Some(path) = &s.probe {
            let _ = writeln!(out, "probe = {{ path = {} }}", q(path));
        }
    }

    if plan.store.is_some() || plan.sync.is_some() {
        let _ = writeln!(
            out,
            "\n# Conversations: local-first in SQLite{}.",
            if plan.sync.is_some() {
                ", synced with the primary whenever it\n# is reachable (create its schema once: `robbie-mesh db migrate`)"
            } else {
                ""
            }
        );
        if let Some(path) = &plan.store {
            let _ = writeln!(out, "[store]\npath = {}", q(path));
        }
        if let Some(svc) = &plan.sync {
            let _ = writeln!(out, "[store.sync]\nservice = {}", q(svc));
        }
    }
    if let Some(port) = plan.replica {
        let _ = writeln!(
            out,
            "\n# This node's streaming replica (`robbie-mesh db replica init --from NODE`),\n\
             # watched for its lag.\n[store.replica]\naddress = {}",
            addr(port)
        );
    }
    out
}
