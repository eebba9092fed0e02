//! Validation of `[store]`, `[store.sync]` and `[store.replica]`.

use super::*;

pub(super) fn validate_store(
    c: &mut Checker<'_>,
    raw: Option<&RawStore>,
    services: &[ServiceConfig],
    env: &Env,
) -> StoreConfig {
    let path = raw
        .and_then(|r| r.path.as_deref())
        .map_or_else(crate::config::default_store_path, |p| env.expand(p));
    let sync = raw.and_then(|r| r.sync.as_ref()).and_then(|s| {
        let name = s.service.get_ref();
        let svc = services.iter().find(|x| &x.name == name);
        let address = match svc {
            Some(svc) if svc.kind == ServiceKind::Postgres => Some(svc.listen),
            Some(svc) => {
                c.err(Some(s.service.span()), "store.sync.service", format!("service `{name}` is {}; sync needs a postgres service", svc.kind.as_str()));
                None
            }
            None => {
                c.err(Some(s.service.span()), "store.sync.service", format!("no [[service]] is named `{name}`; name the postgres service whose endpoint leads to the primary"));
                None
            }
        };
        let interval = c.duration(&s.interval, "store.sync.interval".into(), Duration::from_secs(30));
        let retry = c.duration(&s.retry, "store.sync.retry".into(), Duration::from_secs(5));
        let timeout = c.duration(&s.timeout, "store.sync.timeout".into(), Duration::from_secs(30));
        if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(3600) {
            c.err(s.timeout.as_ref().map(|t| t.span()), "store.sync.timeout", "must be between 1s and 1h");
        }
        let batch = match &s.batch {
            Some(b) if (1..=50_000).contains(b.get_ref()) => *b.get_ref() as usize,
            Some(b) => {
                c.err(Some(b.span()), "store.sync.batch", "must be between 1 and 50000 rows");
                2_000
            }
            None => 2_000,
        };
        Some(SyncConfig {
            service: name.clone(),
            address: address?,
            database: s.database.clone().unwrap_or_else(|| "robbie".into()),
            user: s.user.clone().unwrap_or_else(|| "robbie".into()),
            interval,
            retry,
            batch,
            timeout,
        })
    });
    let replica = raw.and_then(|r| r.replica.as_ref()).and_then(|r| {
        let address = loopback_addr(c, &r.address, "store.replica.address")?;
        Some(ReplicaConfig {
            address,
            user: r.user.clone().unwrap_or_else(|| "postgres".into()),
            database: r.database.clone().unwrap_or_else(|| "postgres".into()),
        })
    });
    StoreConfig {
        path,
        sync,
        replica,
    }
}
