use std::path::{Path, PathBuf};
use std::time::Duration;

use super::validate::Env;
use super::*;

fn env() -> Env {
    Env {
        home: PathBuf::from("/home/u"),
        user: "u".into(),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse_with(text, "bad.toml", &env()) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

/// The one error, checked for its line and field.
fn one_error(text: &str, line: usize, field: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = errs.into_iter().next().expect("one");
    assert_eq!(e.location.map(|l| l.0), Some(line), "{e}");
    assert_eq!(e.field, field, "{e}");
    assert!(
        e.to_string().starts_with(&format!("bad.toml:{line}:")),
        "{e}"
    );
    e
}

const PEER: &str = "[[peer]]\nname = \"aurora\"\nssh = \"root@aurora.example:2222\"\n";

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        // mesh.toml describes the whole mesh: `crate::mesh` reads it.
        if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("mesh.toml") {
            let text = std::fs::read_to_string(&path).expect("read");
            let cfg = parse_with(&text, &path.display().to_string(), &env())
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(!cfg.peers.is_empty(), "{}", path.display());
            seen += 1;
        }
    }
    assert_eq!(seen, 3, "aurora, vengeance and robbiebook1");
}

#[test]
fn full_peer_is_validated_with_defaults() {
    let text = format!(
        "node = \"book\"\n{PEER}keepalive = {{ interval = \"1s\", count = 5 }}\n\
         [[peer.forward]]\nlocal = \"127.0.0.1:21434\"\nremote = \"127.0.0.1:11434\"\n\
         [[peer.reverse]]\nremote = \"127.0.0.1:8007\"\nlocal = \"localhost:8007\"\n"
    );
    let cfg = parse_with(&text, "ok.toml", &env()).expect("valid");
    let p = &cfg.peers[0];
    assert_eq!(
        p.server.target,
        SshTarget {
            user: "root".into(),
            host: "aurora.example".into(),
            port: 2222,
            host_key_alias: None,
        }
    );
    assert_eq!(p.server.target.known_hosts_name(), "[aurora.example]:2222");
    assert_eq!(
        p.keepalive,
        Keepalive {
            interval: Duration::from_secs(1),
            count: 5
        }
    );
    assert_eq!(
        p.server.known_hosts,
        vec![PathBuf::from("/home/u/.ssh/known_hosts")]
    );
    assert_eq!(
        p.server.identities[0],
        IdentitySource::Agent {
            socket: None,
            only: None
        }
    );
    assert_eq!(
        p.server.identities[1],
        IdentitySource::Keychain {
            entry: "aurora".into()
        }
    );
    let names: Vec<_> = p.forwards.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["aurora-L21434", "aurora-R8007"]);
    assert_eq!(cfg.api.listen.port(), 8007);
}

#[test]
fn unknown_key_names_line_and_field() {
    let e = one_error(
        &format!("{PEER}keepalive = {{ interval = \"1s\", cuont = 3 }}\n"),
        4,
        "peer[0].keepalive.cuont",
    );
    assert!(e.message.contains("cuont"), "{e}");
}

#[test]
fn toml_syntax_error_has_a_line() {
    let errs = errors("node = \"a\"\n[[peer]\nname = 1\n");
    assert_eq!(errs[0].location.map(|l| l.0), Some(2), "{:?}", errs);
}

#[test]
fn wrong_type_names_the_field() {
    let e = one_error(
        &format!("{PEER}accept_new = \"yes\"\n"),
        4,
        "peer[0].accept_new",
    );
    assert!(e.message.contains("bool"), "{e}");
}

#[test]
fn bad_addresses_are_explained() {
    let text = format!("{PEER}[[peer.forward]]\nlocal = \"127.0.0.1\"\nremote = \"db:99999\"\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].field, "peer[0].forward[0].local");
    assert_eq!(errs[0].location.map(|l| l.0), Some(5));
    assert!(errs[0].message.contains("no port"), "{}", errs[0]);
    assert_eq!(errs[1].field, "peer[0].forward[0].remote");
    assert_eq!(errs[1].location.map(|l| l.0), Some(6));
    assert!(errs[1].message.contains("not a port number"), "{}", errs[1]);
}

#[test]
fn non_loopback_listen_is_refused() {
    let e = one_error(
        &format!("{PEER}[[peer.forward]]\nlocal = \"0.0.0.0:21434\"\nremote = \"127.0.0.1:1\"\n"),
        5,
        "peer[0].forward[0].local",
    );
    assert!(e.message.contains("loopback"), "{e}");
    let e = one_error("[api]\nlisten = \"192.168.1.4:8007\"\n", 2, "api.listen");
    assert!(e.message.contains("loopback"), "{e}");
}

#[test]
fn duplicate_local_ports_are_refused() {
    let text = format!(
        "{PEER}[[peer.forward]]\nlocal = \"127.0.0.1:21434\"\nremote = \"127.0.0.1:1\"\n\
         [[peer.forward]]\nname = \"other\"\nlocal = \"127.0.0.1:21434\"\nremote = \"127.0.0.1:2\"\n"
    );
    let e = one_error(&text, 9, "peer[0].forward[1].local");
    assert!(
        e.message
            .contains("already used by peer[0].forward[0].local"),
        "{e}"
    );
    // The API port counts too.
    let text =
        format!("{PEER}[[peer.forward]]\nlocal = \"127.0.0.1:8007\"\nremote = \"127.0.0.1:1\"\n");
    let e = one_error(&text, 5, "peer[0].forward[0].local");
    assert!(e.message.contains("api.listen"), "{e}");
}

#[test]
fn duplicate_peer_names_are_refused() {
    let e = one_error(&format!("{PEER}{PEER}"), 5, "peer[1].name");
    assert!(e.message.contains("two peers are named `aurora`"), "{e}");
}

#[test]
fn bad_durations_and_counts() {
    let errs = errors(&format!(
        "{PEER}keepalive = {{ interval = \"soon\", count = 0 }}\n"
    ));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs
        .iter()
        .any(|e| e.field == "peer[0].keepalive.interval" && e.message.contains("not a duration")));
    assert!(errs
        .iter()
        .any(|e| e.field == "peer[0].keepalive.count" && e.message.contains("between 1 and 100")));
}

#[test]
fn ssh_config_alias_is_resolved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ssh_config = dir.path().join("config");
    std::fs::write(
        &ssh_config,
        "Host aurora\n  HostName aurora-town.example\n  User root\n  Port 2200\n  IdentityFile ~/.ssh/aurora_key\n",
    )
    .expect("write");
    let text = format!(
        "ssh_config = \"{}\"\n[[peer]]\nname = \"aurora\"\nssh = \"aurora\"\n[[peer]]\nname = \"b\"\nssh = \"admin@aurora:22\"\n",
        ssh_config.display()
    );
    let cfg = parse_with(&text, "ok.toml", &env()).expect("valid");
    assert_eq!(
        cfg.peers[0].server.target,
        SshTarget {
            user: "root".into(),
            host: "aurora-town.example".into(),
            port: 2200,
            host_key_alias: None,
        }
    );
    assert!(cfg.peers[0]
        .server
        .identities
        .contains(&IdentitySource::File {
            path: "/home/u/.ssh/aurora_key".into()
        }));
    // What the config says explicitly wins over ~/.ssh/config, as on ssh's command line.
    assert_eq!(
        cfg.peers[1].server.target,
        SshTarget {
            user: "admin".into(),
            host: "aurora-town.example".into(),
            port: 22,
            host_key_alias: None,
        }
    );
}

#[test]
fn identity_sources_parse() {
    let text = format!("{PEER}identity = [\"agent\", \"agent:/tmp/a.sock\", \"keychain:aurora\", \"~/.ssh/k\", \"keychain:\"]\n");
    let e = one_error(&text, 4, "peer[0].identity[4]");
    assert!(e.message.contains("entry name"), "{e}");
}

const TUNNEL: &str = "[[peer.forward]]\nname = \"aurora-ollama\"\nlocal = \"127.0.0.1:21434\"\nremote = \"127.0.0.1:11435\"\n\
                      [[peer.reverse]]\nname = \"back\"\nremote = \"127.0.0.1:24007\"\nlocal = \"127.0.0.1:8007\"\n";

#[test]
fn services_resolve_tunnels_and_addresses_in_priority_order() {
    let text = format!(
        "node = \"book\"\n{PEER}{TUNNEL}[[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:11434\"\n\
         candidates = [{{ node = \"aurora\", tunnel = \"aurora-ollama\" }}, {{ node = \"book\", address = \"127.0.0.1:11435\" }}]\n\
         probe = {{ remote_interval = \"7s\" }}\n"
    );
    let cfg = parse_with(&text, "ok.toml", &env()).expect("valid");
    let s = &cfg.services[0];
    assert_eq!(s.kind, ServiceKind::Ollama);
    assert_eq!(s.candidates[0].node, "aurora");
    assert_eq!(s.candidates[0].address.to_string(), "127.0.0.1:21434");
    assert_eq!(s.candidates[0].tunnel.as_deref(), Some("aurora-ollama"));
    assert!(!s.candidates[0].is_local && s.candidates[1].is_local);
    assert_eq!(s.probe.interval(&s.candidates[0]), Duration::from_secs(7));
    assert_eq!(s.probe.interval(&s.candidates[1]), Duration::from_secs(2));
}

#[test]
fn bad_services_are_explained() {
    let svc = |body: &str| format!("{PEER}{TUNNEL}[[service]]\nname = \"ollama\"\n{body}");
    let e = one_error(&svc("kind = \"olama\"\nlisten = \"127.0.0.1:11434\"\ncandidates = [{ node = \"a\", address = \"127.0.0.1:1\" }]\n"), 14, "service[0].kind");
    assert!(e.message.contains("\"ollama\""), "{e}");
    let e = one_error(&svc("kind = \"ollama\"\nlisten = \"127.0.0.1:11434\"\ncandidates = [{ node = \"a\", tunnel = \"nope\" }]\n"), 16, "service[0].candidates[0].tunnel");
    assert!(e.message.contains("known: aurora-ollama"), "{e}");
    let e = one_error(&svc("kind = \"ollama\"\nlisten = \"127.0.0.1:11434\"\ncandidates = [{ node = \"a\", tunnel = \"back\" }]\n"), 16, "service[0].candidates[0].tunnel");
    assert!(e.message.contains("-R forward"), "{e}");
    let e = one_error(
        &svc("kind = \"ollama\"\nlisten = \"127.0.0.1:11434\"\ncandidates = [{ node = \"a\" }]\n"),
        16,
        "service[0].candidates[0]",
    );
    assert!(e.message.contains("exactly one of"), "{e}");
    let e = one_error(&svc("kind = \"tcp\"\nlisten = \"127.0.0.1:21434\"\ncandidates = [{ node = \"a\", address = \"127.0.0.1:1\" }]\n"), 15, "service[0].listen");
    assert!(
        e.message
            .contains("already used by peer[0].forward[0].local"),
        "{e}"
    );
}

#[test]
fn on_demand_peers() {
    let cfg = parse_with(
        &format!("{PEER}connect = \"on-demand\"\nidle = \"2m\"\n"),
        "ok.toml",
        &env(),
    )
    .expect("valid");
    assert_eq!(cfg.peers[0].on_demand, Some(Duration::from_secs(120)));
    let cfg = parse_with(PEER, "ok.toml", &env()).expect("valid");
    assert_eq!(cfg.peers[0].on_demand, None);
    let e = one_error(
        &format!("{PEER}connect = \"sometimes\"\n"),
        4,
        "peer[0].connect",
    );
    assert!(e.message.contains("\"on-demand\""), "{e}");
}

#[test]
fn store_sync_names_a_postgres_service() {
    let svc = "[[service]]\nname = \"ollama\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:11434\"\n\
               candidates = [{ node = \"a\", address = \"127.0.0.1:11435\" }]\n\
               [[service]]\nname = \"pg\"\nkind = \"postgres\"\nlisten = \"127.0.0.1:5432\"\n\
               candidates = [{ node = \"a\", address = \"127.0.0.1:5433\" }]\n";
    let e = one_error(
        &format!("{svc}[store.sync]\nservice = \"nope\"\n"),
        12,
        "store.sync.service",
    );
    assert!(e.message.contains("no [[service]] is named `nope`"), "{e}");
    let e = one_error(
        &format!("{svc}[store.sync]\nservice = \"ollama\"\n"),
        12,
        "store.sync.service",
    );
    assert!(e.message.contains("sync needs a postgres service"), "{e}");
    let e = one_error(
        &format!("{svc}[store.sync]\nservice = \"pg\"\nbatch = 0\n"),
        13,
        "store.sync.batch",
    );
    assert!(e.message.contains("between 1 and 50000"), "{e}");
    let e = one_error(
        &format!("{svc}[store.replica]\naddress = \"0.0.0.0:5433\"\n"),
        12,
        "store.replica.address",
    );
    assert!(e.message.contains("loopback"), "{e}");

    let cfg = parse_with(
        &format!("{svc}[store]\npath = \"~/robbie-local.db\"\n[store.sync]\nservice = \"pg\"\n"),
        "ok.toml",
        &env(),
    )
    .expect("valid");
    assert_eq!(cfg.store.path, PathBuf::from("/home/u/robbie-local.db"));
    let sync = cfg.store.sync.expect("sync");
    assert_eq!(
        (sync.address.port(), sync.database.as_str(), sync.batch),
        (5432, "robbie", 2000)
    );
    assert_eq!(sync.interval, Duration::from_secs(30));
}

fn with_ssh_config(ssh_config: &str, peers: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config");
    std::fs::write(&path, ssh_config).expect("write");
    let text = format!("ssh_config = \"{}\"\n{peers}", path.display());
    (dir, text)
}

/// `ProxyJump a,b`: `a` is dialled, `b` reached through it, the peer through
/// `b`; each hop with its own `Host` block (HostName, User, Port, keys, known
/// hosts); the first hop's own `ProxyJump` comes first, the others' are not
/// followed (as `ssh -J` on a command line overrides them); `none` wins when
/// it comes first; `ssh://` URIs as ssh takes them.
#[test]
fn proxy_jump_becomes_the_chain_of_servers_ssh_would_go_through() {
    let (_dir, text) = with_ssh_config(
        "Host direct\n  ProxyJump none\n\
         Host gate\n  HostName 127.0.0.9\n  User gateuser\n  ProxyJump ssh://edge:2200\n\
         Host hub\n  HostName 127.0.0.10\n  Port 2222\n  IdentityFile ~/.ssh/hub_key\n  IdentitiesOnly yes\n  UserKnownHostsFile ~/.ssh/hub_hosts\n  ProxyJump never-followed\n\
         Host aurora\n  HostName 127.0.0.5\n  ProxyJump gate,admin@hub\n\
         Host d*\n  ProxyJump hub\n",
        "[[peer]]\nname = \"aurora\"\nssh = \"aurora\"\n[[peer]]\nname = \"b\"\nssh = \"direct\"\n",
    );
    let cfg = parse_with(&text, "ok.toml", &env()).expect("valid");
    let via: Vec<String> = cfg.peers[0]
        .jumps
        .iter()
        .map(|j| j.target.to_string())
        .collect();
    assert_eq!(
        via,
        [
            "u@edge:2200",
            "gateuser@127.0.0.9:22",
            "admin@127.0.0.10:2222"
        ]
    );
    let hub = &cfg.peers[0].jumps[2];
    assert_eq!(
        hub.known_hosts,
        vec![PathBuf::from("/home/u/.ssh/hub_hosts")]
    );
    assert_eq!(
        hub.identities[0],
        IdentitySource::Agent {
            socket: None,
            only: Some(vec![PathBuf::from("/home/u/.ssh/hub_key")])
        }
    );
    assert_eq!(cfg.peers[0].server.target.to_string(), "u@127.0.0.5:22");
    assert!(cfg.peers[1].jumps.is_empty(), "ProxyJump none came first");
}

/// A loop of jump hosts, a `ProxyCommand`, a jump that is not a host: each an
/// error naming the file and line that set it, and what to do.
#[test]
fn a_proxy_command_or_a_jump_loop_is_refused_naming_where_it_is_set() {
    let (dir, text) = with_ssh_config(
        "Host direct\n  ProxyCommand none\n\
         Host loop\n  ProxyJump loop\n\
         Host via-loop\n  ProxyJump loop\n\
         Host bad\n  ProxyJump hub:notaport\n\
         Host *\n  ProxyCommand nc %h %p\n",
        "[[peer]]\nname = \"a\"\nssh = \"aurora\"\n[[peer]]\nname = \"b\"\nssh = \"direct\"\n\
         [[peer]]\nname = \"c\"\nssh = \"via-loop\"\n[[peer]]\nname = \"d\"\nssh = \"bad\"\n",
    );
    let config = dir.path().join("config").display().to_string();
    let errs = errors(&text);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["peer[0].ssh", "peer[2].ssh", "peer[3].ssh"],
        "{errs:?}"
    );
    let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(
        msgs[0].contains(&format!("{config}:10 sets ProxyCommand nc %h %p")),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[0].contains("ProxyCommand none"),
        "says what to do: {}",
        msgs[0]
    );
    assert!(
        msgs[1].contains(&format!("{config}:4 sets ProxyJump loop")),
        "{}",
        msgs[1]
    );
    assert!(msgs[1].contains("a loop?"), "{}", msgs[1]);
    assert!(
        msgs[2].contains(&format!("{config}:8 sets ProxyJump hub:notaport")),
        "{}",
        msgs[2]
    );
    assert!(msgs[2].contains("not a port number"), "{}", msgs[2]);
}

#[test]
fn an_ssh_config_or_include_others_can_change_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let inc = dir.path().join("inc.conf");
    std::fs::write(&inc, "Host *\n  HostName 127.66.66.66\n").expect("write");
    std::fs::set_permissions(&inc, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let ssh_config = dir.path().join("config");
    std::fs::write(&ssh_config, format!("Include {}\n", inc.display())).expect("write");
    let text = format!(
        "ssh_config = \"{}\"\n[[peer]]\nname = \"aurora\"\nssh = \"aurora\"\n",
        ssh_config.display()
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let msg = errs[0].to_string();
    assert!(
        msg.contains("Bad owner or permissions")
            && msg.contains("0666")
            && msg.contains("chmod go-w"),
        "{msg}"
    );
    std::fs::set_permissions(&inc, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cfg = parse_with(&text, "ok.toml", &env()).expect("valid once fixed");
    assert_eq!(cfg.peers[0].server.target.host, "127.66.66.66");
    // The robbie-mesh config itself, the same way.
    let own = dir.path().join("robbie-mesh.toml");
    std::fs::write(&own, "node = \"book\"\n").expect("write");
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o620)).expect("chmod");
    let e = load(&own).expect_err("refused");
    assert!(e.to_string().contains("Bad owner or permissions"), "{e}");
}

/// `credential:NAME` is a systemd credential; a name with a slash or none at
/// all is an error saying what the name is.
#[test]
fn a_credential_identity_names_what_the_unit_passes() {
    let cfg = parse_with(
        &format!("{PEER}identity = [\"credential:aurora\", \"agent\"]\n"),
        "ok.toml",
        &env(),
    )
    .expect("valid");
    assert_eq!(
        cfg.peers[0].server.identities[0],
        IdentitySource::Credential {
            name: "aurora".into()
        }
    );
    assert_eq!(
        cfg.peers[0].server.identities[0].to_string(),
        "credential:aurora"
    );
    for bad in ["credential:", "credential:../key"] {
        let e = one_error(
            &format!("{PEER}identity = [\"{bad}\"]\n"),
            4,
            "peer[0].identity[0]",
        );
        assert!(
            e.to_string().contains("LoadCredentialEncrypted=NAME:FILE"),
            "{e}"
        );
    }
}

/// A duration too long for any timer is an error at its place, not a panic in
/// the running service (it overflowed the clock arithmetic); port 0, which no
/// client could find, is refused for every listener.
#[test]
fn absurd_durations_and_port_zero_are_errors_where_they_are_written() {
    for (text, line, field) in [
        (
            "keepalive = { interval = \"500000000000y\", count = 3 }\n",
            4,
            "peer[0].keepalive.interval",
        ),
        (
            "backoff = { initial = \"1s\", max = \"8d\" }\n",
            4,
            "peer[0].backoff.max",
        ),
    ] {
        let e = one_error(&format!("{PEER}{text}"), line, field);
        let msg = e.to_string();
        assert!(
            msg.contains("longer than robbie-mesh's longest timer (7days)"),
            "{msg}"
        );
    }
    let e = one_error("[api]\nlisten = \"127.0.0.1:0\"\n", 2, "api.listen");
    assert!(e.to_string().contains("port 0"), "{e}");
}

/// A value of the wrong type names the field as written, not serde's
/// internal wrapper.
#[test]
fn a_wrongly_typed_value_names_its_field_cleanly() {
    let e = one_error("node = 5\n", 1, "node");
    assert!(!e.to_string().contains("serde_spanned"), "{e}");
}

#[test]
fn limits_are_bounded_and_have_defaults() {
    let cfg = parse_with("node = \"n\"\n", "ok.toml", &env()).expect("ok");
    assert_eq!(cfg.limits.idle, Duration::from_secs(60));
    assert_eq!(cfg.limits.body_memory, 256 << 20);
    let cfg = parse_with(
        "node = \"n\"\n[limits]\nidle = \"5s\"\nbody_memory = \"1GiB\"\n",
        "ok.toml",
        &env(),
    )
    .expect("ok");
    assert_eq!(cfg.limits.idle, Duration::from_secs(5));
    assert_eq!(cfg.limits.body_memory, 1 << 30);
    let e = one_error("[limits]\nidle = \"500ms\"\n", 2, "limits.idle");
    assert!(e.message.contains("between 1s and 1h"), "{e}");
    let e = one_error(
        "[limits]\nbody_memory = \"1MiB\"\n",
        2,
        "limits.body_memory",
    );
    assert!(e.message.contains("64 MiB"), "{e}");
    let e = one_error(
        "[limits]\nbody_memory = \"lots\"\n",
        2,
        "limits.body_memory",
    );
    assert!(e.message.contains("not a size"), "{e}");
}

#[test]
fn service_hosts_are_host_names() {
    let svc = |hosts: &str| {
        format!(
            "node = \"n\"\n[[service]]\nname = \"o\"\nkind = \"ollama\"\nlisten = \"127.0.0.1:11434\"\n\
             hosts = [{hosts}]\ncandidates = [ {{ node = \"n\", address = \"127.0.0.1:11435\" }} ]\n"
        )
    };
    let cfg = parse_with(&svc("\"Ollama.Home.arpa\""), "ok.toml", &env()).expect("ok");
    assert_eq!(cfg.services[0].hosts, vec!["ollama.home.arpa".to_string()]);
    let e = one_error(
        &svc("\"http://ollama.lan:11434\""),
        6,
        "service[0].hosts[0]",
    );
    assert!(e.message.contains("without port or scheme"), "{e}");
}

#[test]
fn a_huge_value_is_cut_in_its_message() {
    let name = "x".repeat(5 << 20);
    let errs = errors(&format!("node = \"{name} \"\n"));
    let text = errs[0].to_string();
    assert!(text.len() < 500, "{} bytes", text.len());
    assert!(text.contains("bytes in all"), "{text}");
}
