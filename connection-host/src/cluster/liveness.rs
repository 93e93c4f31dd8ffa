//! Heartbeats and reaping: every host writes its heartbeat every `cluster.heartbeat_interval`,
//! and removes the records of hosts whose heartbeat is older than `cluster.host_timeout`.
//!
//! Reaping a host: claim it (`begin_reap`, which fails if it heartbeated since it was seen), delete
//! each of its connections' records and memberships, then its liveness record. The claim makes
//! the dead host's own heartbeat fail should it come back, so it learns it was reaped. Several
//! hosts may reap the same dead host at once; every step is idempotent. `$disconnect` is not fired
//! for reaped connections: the host that could report how they ended is gone, and API Gateway
//! also delivers `$disconnect` only on a best-effort basis.

use crate::host::Host;
use crate::ids::now_ms;
use crate::store::{ConnectionStore, HostRecord, StoreError};
use std::sync::Arc;

/// Records read per page while reaping.
const REAP_PAGE: usize = 100;

/// This host's liveness record as of now.
fn me(host: &Host) -> HostRecord {
    HostRecord {
        host_id: host.identity.host_id.clone(),
        incarnation: host.identity.incarnation.clone(),
        endpoint: host.identity.endpoint.clone(),
        heartbeat_at: now_ms(),
        reaping: false,
    }
}

/// Registers this host (its first heartbeat), before it accepts connections.
pub async fn register(host: &Host) -> Result<(), StoreError> {
    host.store.register_host(&me(host)).await
}

/// Runs until shutdown: removes what this host's previous runs left, then heartbeats and reaps
/// every `heartbeat_interval`.
pub async fn run(host: Arc<Host>) {
    let Some(cluster) = host.cluster.as_ref() else {
        return;
    };
    let identity = cluster.identity();
    // A previous run with the same host_id died without removing its records; they must not
    // look alive (calls for them already answer 410, as their incarnation is not the live one).
    match remove_records(host.store.as_ref(), &identity.host_id, |inc| {
        inc != identity.incarnation
    })
    .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed records of this host's previous run"),
        Err(e) => {
            tracing::warn!(error = %e, "could not remove records of this host's previous run")
        }
    }
    let mut tick = tokio::time::interval(host.config.cluster.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = host.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        beat(&host).await;
        if let Err(e) = reap(&host).await {
            tracing::warn!(error = %e, "could not look for dead hosts");
        }
    }
}

async fn beat(host: &Host) {
    let identity = &host.identity;
    match host
        .store
        .heartbeat(&identity.host_id, &identity.incarnation, now_ms())
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            // Another host declared this one dead (its heartbeats failed for host_timeout) and is
            // removing its records, or a second host runs with the same host_id. Either way the
            // cluster can no longer reach these connections: close them so clients reconnect, to
            // a host the cluster knows. The process keeps serving; an operator should look.
            tracing::error!(
                host_id = %identity.host_id,
                "this host was reaped by the cluster (or its host_id is used twice); closing its connections"
            );
            for handle in host.registry.all() {
                handle.close(1001, "Going away");
            }
            // Back in the cluster for new connections. A reaper still busy with this incarnation
            // may remove a few of them too (their clients then reconnect); the next heartbeat
            // notices if it removed this record again.
            if let Err(e) = register(host).await {
                tracing::warn!(error = %e, "could not register again");
            }
        }
        Err(e) => tracing::warn!(error = %e, "heartbeat not written"),
    }
}

async fn reap(host: &Host) -> Result<(), StoreError> {
    let Some(cluster) = host.cluster.as_ref() else {
        return Ok(());
    };
    let hosts = host.store.hosts().await?;
    cluster.refresh_view(&hosts);
    let now = now_ms();
    for dead in hosts
        .iter()
        .filter(|h| h.host_id != host.identity.host_id && cluster.is_dead(h, now))
    {
        if !host.store.begin_reap(dead).await? {
            // It heartbeated (or restarted) since it was listed: alive after all.
            continue;
        }
        let removed = remove_records(host.store.as_ref(), &dead.host_id, |inc| {
            inc == dead.incarnation
        })
        .await?;
        host.store
            .remove_host(&dead.host_id, &dead.incarnation)
            .await?;
        tracing::warn!(host_id = %dead.host_id, removed, "reaped a dead host's connections");
    }
    Ok(())
}

/// Deletes (with their memberships) the records of `host_id` whose incarnation `matches`;
/// returns how many.
async fn remove_records(
    store: &dyn ConnectionStore,
    host_id: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<usize, StoreError> {
    let mut removed = 0;
    let mut token: Option<String> = None;
    loop {
        let page = store
            .connections_of_host(host_id, token.as_deref(), REAP_PAGE)
            .await?;
        for record in page
            .records
            .iter()
            .filter(|r| matches(&r.owner_incarnation))
        {
            store.delete_connection(&record.connection_id).await?;
            removed += 1;
        }
        token = page.next_token;
        if token.is_none() {
            return Ok(removed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ConnectionRecord, MemoryStore};

    fn record(id: &str, host: &str, incarnation: &str) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: id.into(),
            owner_host: host.into(),
            owner_incarnation: incarnation.into(),
            ..ConnectionRecord::default()
        }
    }

    #[tokio::test]
    async fn remove_records_takes_only_the_matching_incarnation_across_pages() {
        let store = MemoryStore::new();
        for i in 0..250 {
            store
                .put_connection(record(&format!("old-{i:03}"), "h", "1"))
                .await
                .unwrap();
        }
        store.put_connection(record("new", "h", "2")).await.unwrap();
        store
            .put_connection(record("other", "g", "1"))
            .await
            .unwrap();
        let removed = remove_records(&store, "h", |inc| inc == "1").await.unwrap();
        assert_eq!(removed, 250);
        assert!(store.get_connection("old-000").await.unwrap().is_none());
        assert!(store.get_connection("new").await.unwrap().is_some());
        assert!(store.get_connection("other").await.unwrap().is_some());
    }
}
