//! Commands that ask the running service, through [`crate::client`]: `status`,
//! `pin`/`unpin`, `reconnect`, `sync` and `dashboard`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};

use super::args::ApiArg;
use super::text;
use crate::api::wire::SyncState;

/// Runs one command's calls on a runtime of its own.
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

/// `doctor`: every check at once, ✓/✗ with the fix; exit status 1 if any failed.
pub fn doctor(json: bool, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async {
            let report = crate::doctor::run(api.config.as_deref(), api.api).await;
            // The running service keeps them for its dashboard (when it runs).
            let _ = api.client().keep_doctor(&report).await;
            report
        });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn status(json: bool, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let client = api.client();
    block_on(async {
        if json {
            println!("{}", client.get_text("/v1/status").await?);
            return Ok(ExitCode::SUCCESS);
        }
        let status = client.status().await?;
        // Services first: which machine serves what, right now.
        print!("{}", text::services_text(&status));
        print!("{}", text::store_text(&status));
        if !status.tunnels.is_empty() || status.services.is_empty() {
            print!(
                "{}",
                text::tunnel_table(&status.node, &status.tunnels, SystemTime::now())
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn reconnect(tunnel: &str, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let client = api.client();
    block_on(async {
        let r = client.reconnect(tunnel).await?;
        println!("reconnecting {} ({})", r.peer, r.tunnels.join(", "));
        Ok(ExitCode::SUCCESS)
    })
}

pub fn pin(service: &str, node: Option<&str>, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let client = api.client();
    block_on(async {
        let r = client.pin(service, node).await?;
        let route = r.route.unwrap_or_else(|| "nothing (no node is up)".into());
        match r.pinned {
            Some(p) => println!("{service} pinned to {p}; requests go to {route}"),
            None => println!("{service} routes automatically; requests go to {route}"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `dashboard`: a one-time sign-in link, opened in the browser.
pub fn dashboard(print: bool, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let client = api.client();
    let link = block_on(async { Ok(client.sign_in_link().await?) })?;
    println!("{}", link.url);
    if print {
        return Ok(ExitCode::SUCCESS);
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    match std::process::Command::new(opener)
        .arg(&link.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {
            eprintln!("opened in your browser (the link works once, for two minutes)")
        }
        _ => eprintln!(
            "open that link in a browser on this machine (it works once, for two minutes)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `sync --verify [--repair]`: the service compares (and repairs) on its connection.
pub fn sync_verify(repair: bool, timeout: Duration, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let client = api.client().with_timeout(timeout);
    eprintln!(
        "comparing this device with the primary{}…",
        if repair { " and repairing" } else { "" }
    );
    let report = block_on(async {
        client
            .verify(repair)
            .await
            .map_err(|e| anyhow::anyhow!("cannot verify: {e}"))
    })?;
    println!("{}", report.text());
    let clean = report
        .after
        .as_ref()
        .map_or(report.is_clean(), |a| a.is_clean());
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `sync --wait`: one round now, with progress, until nothing is pending.
pub fn sync(wait: bool, timeout: Duration, api: &ApiArg) -> anyhow::Result<ExitCode> {
    let client = api.client();
    block_on(async {
        let first = client.sync_now().await?;
        if first.state == SyncState::Off {
            bail!("sync is not configured: add a [store.sync] section naming your postgres service (see the README)");
        }
        if !wait {
            println!("sync requested ({} rows pending)", first.pending);
            return Ok(ExitCode::SUCCESS);
        }
        let started = std::time::Instant::now();
        let since = whole_ms(SystemTime::now());
        let mut shown = String::new();
        loop {
            let s = client.status().await?.store.sync;
            let line = format!(
                "{}: {} pending, {} pushed, {} pulled",
                s.state.as_str(),
                s.pending,
                s.pushed,
                s.pulled
            );
            if line != shown {
                eprintln!("{line}");
                shown = line;
            }
            let synced_after_start = s.last_sync.is_some_and(|t| t >= since);
            if s.pending == 0 && s.state == SyncState::Idle && synced_after_start {
                println!(
                    "in sync: nothing pending (last sync {})",
                    s.last_sync.map_or("?".into(), crate::util::rfc3339)
                );
                return Ok(ExitCode::SUCCESS);
            }
            if started.elapsed() > timeout {
                let why = s
                    .last_error
                    .unwrap_or_else(|| "no answer from the primary yet".into());
                bail!("not in sync after {}: {why}; rows stay queued locally and go when the primary is reachable", humantime::format_duration(timeout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// `t` rounded down to the millisecond, as the API writes times.
fn whole_ms(t: SystemTime) -> SystemTime {
    let below = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1_000_000);
    t - Duration::from_nanos(u64::from(below))
}
