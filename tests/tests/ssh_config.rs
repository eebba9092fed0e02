//! `~/.ssh/config` resolved by robbie-mesh and by OpenSSH's `ssh -G` from the same
//! files: every setting that decides where robbie-mesh connects, which host key it
//! trusts and which keys it offers must be what `ssh` would use.

use std::path::{Path, PathBuf};
use std::process::Command;

use robbie_mesh::config::ssh_config::SshConfigFile;

/// `ssh -G -F config host`: keyword → values (lines of the same keyword joined).
fn ssh_g(config: &Path, host: &str) -> std::collections::HashMap<String, String> {
    let out = Command::new("ssh")
        .arg("-G")
        .arg("-F")
        .arg(config)
        .arg(host)
        .output()
        .expect("ssh -G");
    assert!(
        out.status.success(),
        "ssh -G {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map = std::collections::HashMap::<String, String>::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            map.entry(k.to_string())
                .and_modify(|e| {
                    e.push(' ');
                    e.push_str(v);
                })
                .or_insert_with(|| v.to_string());
        }
    }
    map
}

fn paths(list: &[PathBuf]) -> String {
    list.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn resolution_matches_ssh_g() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = PathBuf::from(std::env::var("HOME").expect("HOME"));
    let lab = dir.path().join("lab.conf");
    // Under `Host lab-*` only: its `Host *` must not reach any other host.
    std::fs::write(&lab, "HostName lab.example\nHost *\n  HostName 127.66.66.66\n  UserKnownHostsFile /dev/null\n  ProxyJump evil\n").expect("write");
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "Host lab-*\n  Include {}\n\
             Host a\n  HostKeyAlias Pinned-Name\n  IdentitiesOnly yes\n  GlobalKnownHostsFile /etc/k1 ~/k2\n  UserKnownHostsFile ~/.ssh/kh_%h_%p_%r_%n_%L_%k\n\
             Host c\n  HostName 127.0.0.9\n  Port 2200\n  User carol\n  UserKnownHostsFile ~/.ssh/kh_%C %d/second\n  GlobalKnownHostsFile none\n\
             Host j\n  ProxyJump hub\nHost pc\n  ProxyCommand none\nHost p*\n  ProxyCommand nc %h %p\n\
             Host *\n  User after\n  IdentitiesOnly no\n",
            lab.display()
        ),
    )
    .expect("write");
    let ours = SshConfigFile::load(&config, &home);
    for host in ["127.0.0.1", "LOCALHOST", "lab-1", "a", "c", "j", "pc", "px"] {
        let theirs = ssh_g(&config, host);
        let r = ours.resolve(host);
        let get = |k: &str| theirs.get(k).cloned().unwrap_or_default();
        let mut mine = std::collections::HashMap::new();
        mine.insert(
            "hostname",
            r.hostname
                .clone()
                .unwrap_or_else(|| host.to_ascii_lowercase()),
        );
        mine.insert("user", r.user.clone().unwrap_or_else(mesh_tests::whoami));
        mine.insert("port", r.port.unwrap_or(22).to_string());
        mine.insert(
            "hostkeyalias",
            r.host_key_alias
                .clone()
                .unwrap_or_default()
                .to_ascii_lowercase(),
        );
        mine.insert(
            "identitiesonly",
            if r.identities_only { "yes" } else { "no" }.to_string(),
        );
        let user_files = if r.known_hosts_files.is_empty() {
            vec![
                home.join(".ssh/known_hosts"),
                home.join(".ssh/known_hosts2"),
            ]
        } else {
            r.known_hosts_files.clone()
        };
        mine.insert("userknownhostsfile", paths(&user_files));
        let global = r.global_known_hosts_files.clone().unwrap_or_else(|| {
            vec![
                "/etc/ssh/ssh_known_hosts".into(),
                "/etc/ssh/ssh_known_hosts2".into(),
            ]
        });
        mine.insert(
            "globalknownhostsfile",
            if global.is_empty() {
                "none".into()
            } else {
                paths(&global)
            },
        );
        let proxy = |k: &str| {
            r.proxy
                .as_ref()
                .filter(|p| p.keyword.eq_ignore_ascii_case(k))
                .map(|p| p.value.clone())
                .unwrap_or_default()
        };
        mine.insert("proxyjump", proxy("ProxyJump"));
        mine.insert("proxycommand", proxy("ProxyCommand"));
        for (k, v) in &mine {
            let want = match *k {
                // ssh -G leaves `~` in the system files; robbie-mesh expands it as ssh does when it reads them.
                "globalknownhostsfile" => get(k).replace('~', &home.display().to_string()),
                _ => get(k),
            };
            assert_eq!(
                v, &want,
                "{host}: {k} (ssh -G: {want:?}, robbie-mesh: {v:?})"
            );
        }
        eprintln!("{host}: {mine:?}");
    }
}
