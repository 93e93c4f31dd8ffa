//! Heartbeats and reaping: every host writes its heartbeat every `cluster.heartbeat_interval`,
//! and removes the records of hosts whose heartbeat lapsed for `cluster.host_timeout`.
//!
//! A host judges a peer dead only from what it saw itself while it could reach the store: the
//! peer's heartbeat must have stayed unchanged for `host_timeout` on this host's own monotonic
//! clock, through heartbeats of this host that all succeeded (and be older than `host_timeout` by
//! the wall clock as well). A store outage makes every heartbeat lapse at once; measured this way,
//! it lapses nobody: after the outage each host first needs `host_timeout` of successful heartbeats
//! of its own, and by then its peers have heartbeated again. Clock skew between hosts can only
//! delay a reap, never cause one.
//!
//! Reaping a host: claim it (`begin_reap`, which fails if it heartbeated since it was seen), delete
//! each of its connections' records and memberships, then its liveness record. The claim makes
//! the dead host's own heartbeat fail should it come back, so it learns it was reaped. Several
//! hosts may reap the same dead host at once; every step is idempotent. `$disconnect` is not fired
//! for reaped connections: the host that could report how they ended is gone, and API Gateway
//! also delivers `$disconnect` only on a best-effort basis.
//!
//! A host that learns it was reaped while alive (its store was out of reach for it alone, or it
//! stalled) keeps its clients: it registers again and rewrites the record and the memberships of
//! every open connection, and repeats both until a heartbeat succeeds with every record written. A reaper
//! still at work may delete records again; it ends by removing the liveness record, which fails
//! the next heartbeat and so triggers another rewrite.

use crate::config::{Durability, SessionsConfig};
use crate::host::Host;
use crate::ids::now_ms;
use crate::store::{ConnectionStore, HostRecord, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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

/// What this host saw of the cluster's heartbeats, on its own monotonic clock.
#[derive(Debug)]
struct Watch {
    host_timeout: Duration,
    /// Since when every heartbeat and listing of this host succeeded; `None` after a failure.
    healthy_since: Option<Instant>,
    /// Per peer: the incarnation and heartbeat last listed, and when this host first listed them.
    seen: HashMap<String, (String, i64, Instant)>,
}

impl Watch {
    fn new(host_timeout: Duration) -> Self {
        Self {
            host_timeout,
            healthy_since: None,
            seen: HashMap::new(),
        }
    }

    /// This host could not heartbeat or list: whatever it saw of its peers may be stale, so it
    /// starts over once the store answers again.
    fn store_failed(&mut self) {
        self.healthy_since = None;
        self.seen.clear();
    }

    /// This host heartbeated at `now`.
    fn heartbeat_ok(&mut self, now: Instant) {
        self.healthy_since.get_or_insert(now);
    }

    /// Records the peers listed at `now` (wall clock `now_ms`) and returns those this host may
    /// judge dead: claimed by a reaper, or unchanged for `host_timeout` of this host's healthy
    /// time and lapsed by the wall clock too. Nobody, until this host itself has been healthy
    /// for `host_timeout`.
    fn dead<'h>(
        &mut self,
        hosts: &'h [HostRecord],
        me: &str,
        now: Instant,
        now_ms: i64,
    ) -> Vec<&'h HostRecord> {
        let peers: Vec<&HostRecord> = hosts.iter().filter(|h| h.host_id != me).collect();
        self.seen
            .retain(|id, _| peers.iter().any(|h| &h.host_id == id));
        let timeout_ms = i64::try_from(self.host_timeout.as_millis()).unwrap_or(i64::MAX);
        let healthy = self
            .healthy_since
            .is_some_and(|since| now.duration_since(since) >= self.host_timeout);
        let mut dead = Vec::new();
        for peer in peers {
            let entry = self
                .seen
                .entry(peer.host_id.clone())
                .or_insert_with(|| (peer.incarnation.clone(), peer.heartbeat_at, now));
            if entry.0 != peer.incarnation || entry.1 != peer.heartbeat_at {
                *entry = (peer.incarnation.clone(), peer.heartbeat_at, now);
            }
            let unchanged_for = now.duration_since(entry.2);
            let lapsed = unchanged_for >= self.host_timeout
                && now_ms.saturating_sub(peer.heartbeat_at) > timeout_ms;
            if healthy && (peer.reaping || lapsed) {
                dead.push(peer);
            }
        }
        dead
    }
}

/// Runs until shutdown: removes what this host's previous runs left, then heartbeats and reaps
/// every `heartbeat_interval`.
pub async fn run(host: Arc<Host>) {
    let Some(cluster) = host.cluster.as_ref() else {
        return;
    };
    let identity = cluster.identity();
    // The hosts already running learn of this one now, not at their next heartbeat: their
    // broadcasts call only the hosts they know. Apart, so a peer slow to answer delays no
    // heartbeat.
    let hello = host.clone();
    host.tasks.spawn(async move {
        let Some(cluster) = hello.cluster.as_ref() else {
            return;
        };
        match hello.store.hosts().await {
            Ok(hosts) => {
                let stage = hello.config.api.stage.as_str();
                cluster.announce(stage, &me(&hello), &hosts).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not list the cluster's hosts to say hello"),
        }
    });
    // A previous run with the same host_id died without removing its records; they must not
    // look alive (calls for them already answer 410, as their incarnation is not the live one).
    match remove_records(
        host.store.as_ref(),
        &identity.host_id,
        &host.config.extensions.sessions,
        |inc| inc != identity.incarnation,
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed records of this host's previous run"),
        Err(e) => {
            tracing::warn!(error = %e, "could not remove records of this host's previous run")
        }
    }
    let mut watch = Watch::new(host.config.cluster.host_timeout);
    // Whether this host was reaped and has not yet written all its records again.
    let mut rejoining = false;
    let mut tick = tokio::time::interval(host.config.cluster.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = host.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match beat(&host).await {
            Beat::Written => watch.heartbeat_ok(Instant::now()),
            Beat::Failed => {
                watch.store_failed();
                continue;
            }
            Beat::Reaped => {
                watch.store_failed();
                rejoining = true;
            }
        }
        if rejoining {
            rejoining = !rejoin(&host).await;
            continue;
        }
        if let Err(e) = reap(&host, &mut watch).await {
            watch.store_failed();
            tracing::warn!(error = %e, "could not look for dead hosts");
        }
    }
}

/// How a heartbeat went.
enum Beat {
    /// Written: the cluster knows this host is alive.
    Written,
    /// The store could not be reached (or refused the write).
    Failed,
    /// The liveness record was claimed by a reaper, removed, or replaced by another incarnation.
    Reaped,
}

async fn beat(host: &Host) -> Beat {
    let identity = &host.identity;
    match host
        .store
        .heartbeat(&identity.host_id, &identity.incarnation, now_ms())
        .await
    {
        Ok(true) => Beat::Written,
        Ok(false) => {
            // Another host declared this one dead (it could not reach the store for host_timeout,
            // or stalled) and is removing its records, or a second host runs with the same
            // host_id. The clients are still connected here: keep them, and tell the cluster.
            tracing::error!(
                host_id = %identity.host_id,
                "this host was reaped by the cluster while alive (or its host_id is used twice); registering again and rewriting its connection records"
            );
            Beat::Reaped
        }
        Err(e) => {
            tracing::warn!(error = %e, "heartbeat not written");
            Beat::Failed
        }
    }
}

/// Registers this host again and rewrites the record and memberships of every open connection;
/// `true` when all of it was written.
async fn rejoin(host: &Host) -> bool {
    if let Err(e) = register(host).await {
        tracing::warn!(error = %e, "could not register again; retrying at the next heartbeat");
        return false;
    }
    let (mut written, mut failed) = (0usize, 0usize);
    for handle in host.registry.all() {
        let session = handle.session(|s| crate::sessions::record_of(s));
        let record = host.record(&handle.context, session);
        // Idempotent for this host: a record the reaper has not deleted yet is rewritten as is.
        match host.store.put_connection(record).await {
            Ok(()) => {
                written += 1;
                // The reaper deleted its memberships too; this host's index still has them (not
                // when each was made: a rewritten membership's joinedAt is now).
                let member = crate::store::Member {
                    connection_id: handle.context.connection_id.clone(),
                    principal: handle.context.principal_id().to_string(),
                    joined_at: crate::ids::now_ms(),
                };
                for group in handle.groups() {
                    if let Err(e) = host.store.add_to_group(&group, &member).await {
                        failed += 1;
                        tracing::debug!(error = %e, "membership not rewritten");
                    }
                }
            }
            Err(StoreError::AlreadyExists(id)) => {
                tracing::warn!(connection_id = %id, "another host's record holds this connection's ID; not overwritten");
            }
            Err(e) => {
                failed += 1;
                tracing::debug!(error = %e, "connection record not rewritten");
            }
        }
    }
    if failed > 0 {
        tracing::warn!(
            written,
            failed,
            "connection records not all rewritten; retrying at the next heartbeat"
        );
        return false;
    }
    tracing::warn!(
        written,
        "registered again and rewrote this host's connection records"
    );
    true
}

async fn reap(host: &Host, watch: &mut Watch) -> Result<(), StoreError> {
    let Some(cluster) = host.cluster.as_ref() else {
        return Ok(());
    };
    let hosts = host.store.hosts().await?;
    cluster.refresh_view(&hosts);
    let dead = watch.dead(&hosts, &host.identity.host_id, Instant::now(), now_ms());
    let live = hosts
        .iter()
        .filter(|h| !h.reaping && !dead.iter().any(|d| d.host_id == h.host_id))
        .count();
    host.metrics.cluster_hosts.set(live as f64);
    for dead in dead {
        if !host.store.begin_reap(dead).await? {
            // It heartbeated (or restarted) since it was listed: alive after all.
            continue;
        }
        let removed = remove_records(
            host.store.as_ref(),
            &dead.host_id,
            &host.config.extensions.sessions,
            |inc| inc == dead.incarnation,
        )
        .await?;
        host.store
            .remove_host(&dead.host_id, &dead.incarnation)
            .await?;
        tracing::warn!(host_id = %dead.host_id, removed, "reaped a dead host's connections");
        host.metrics.reaped_connections.increment(removed as u64);
    }
    Ok(())
}

/// Deletes (with their memberships) the records of `host_id` whose incarnation `matches`;
/// returns how many. With `durability = "store"` (in `sessions`), reliable sessions' records are
/// not deleted: their frames survive the host, so a client may still resume them within
/// `resume_window`, which from now on counts from this reap. A reliable session's record that is
/// deleted leaves what proves its token for `dedup_window`, as a session that ends on its host
/// does (PROTOCOL.md section 6.7).
async fn remove_records(
    store: &dyn ConnectionStore,
    host_id: &str,
    sessions: &SessionsConfig,
    matches: impl Fn(&str) -> bool,
) -> Result<usize, StoreError> {
    let keep_sessions = sessions.durability == Durability::Store;
    let dedup_window = i64::try_from(sessions.dedup_window.as_millis()).unwrap_or(i64::MAX / 2);
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
            match &record.session {
                Some(session) if keep_sessions => {
                    if session.detached_at == 0 {
                        let mut detached = record.clone();
                        if let Some(s) = detached.session.as_mut() {
                            s.detached_at = now_ms();
                        }
                        store
                            .take_over(&detached, &record.owner_host, &record.owner_incarnation)
                            .await?;
                    }
                }
                _ => {
                    if let Some(session) = &record.session {
                        store
                            .keep_ended_session(
                                &record.connection_id,
                                session,
                                now_ms() + dedup_window,
                            )
                            .await?;
                    }
                    // Its groups are not told: the notice would come from a host that never
                    // held the connection, long after it ended (STORE.md, "Presence").
                    store.delete_connection(&record.connection_id).await?;
                    removed += 1;
                }
            }
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

    fn peer(id: &str, heartbeat_at: i64) -> HostRecord {
        HostRecord {
            host_id: id.into(),
            incarnation: "1".into(),
            heartbeat_at,
            ..HostRecord::default()
        }
    }

    fn ids(dead: &[&HostRecord]) -> Vec<String> {
        dead.iter().map(|h| h.host_id.clone()).collect()
    }

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// Every host's heartbeat lapses during a store outage; once the store answers again, the
    /// wall-clock timestamps are all stale, but this host judges nobody dead until it has seen a
    /// peer's heartbeat unchanged for host_timeout of its own successful heartbeats, and peers
    /// that heartbeat again in that time are never judged dead.
    #[tokio::test(start_paused = true)]
    async fn an_outage_lapses_nobody() {
        let mut watch = Watch::new(TIMEOUT);
        let t0 = Instant::now();
        watch.heartbeat_ok(t0);
        let hosts = [peer("me", 0), peer("b", 0), peer("c", 0)];
        assert!(watch.dead(&hosts, "me", t0, 0).is_empty());
        // A 60 s outage: every heartbeat and listing fails.
        tokio::time::advance(Duration::from_secs(60)).await;
        watch.store_failed();
        // Back: this host heartbeats first, and lists its peers with their 60 s old heartbeats.
        let back = Instant::now();
        watch.heartbeat_ok(back);
        let now_ms = 60_000;
        assert!(watch.dead(&hosts, "me", back, now_ms).is_empty());
        // b heartbeats again within the timeout; c does not (it really died in the outage).
        tokio::time::advance(TIMEOUT / 2).await;
        let hosts = [peer("me", 61_000), peer("b", 61_000), peer("c", 0)];
        assert!(watch.dead(&hosts, "me", Instant::now(), 61_000).is_empty());
        tokio::time::advance(TIMEOUT / 2).await;
        assert_eq!(
            ids(&watch.dead(&hosts, "me", Instant::now(), 62_000)),
            vec!["c".to_string()],
            "c, unchanged for host_timeout of healthy time, is dead; b is not"
        );
    }

    /// A peer whose heartbeat stops while this host is healthy is dead after host_timeout, and a
    /// peer another host claimed for reaping is followed once this host is healthy itself.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_is_dead_after_host_timeout() {
        let mut watch = Watch::new(TIMEOUT);
        watch.heartbeat_ok(Instant::now());
        let claimed = HostRecord {
            reaping: true,
            ..peer("claimed", 1_000)
        };
        let hosts = [peer("b", 1_000), claimed];
        assert!(watch.dead(&hosts, "me", Instant::now(), 1_000).is_empty());
        tokio::time::advance(TIMEOUT - Duration::from_millis(1)).await;
        assert_eq!(
            ids(&watch.dead(&hosts, "me", Instant::now(), 3_999)),
            Vec::<String>::new()
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            ids(&watch.dead(&hosts, "me", Instant::now(), 4_001)),
            vec!["b".to_string(), "claimed".to_string()]
        );
        // A failed heartbeat of this host starts the judgement over.
        watch.store_failed();
        watch.heartbeat_ok(Instant::now());
        assert!(watch.dead(&hosts, "me", Instant::now(), 4_500).is_empty());
    }

    /// A peer whose clock runs ahead is not dead until the wall clock agrees too; a peer whose
    /// clock runs behind is not dead while this host sees its heartbeat change.
    #[tokio::test(start_paused = true)]
    async fn clock_skew_only_delays_a_reap() {
        let mut watch = Watch::new(TIMEOUT);
        watch.heartbeat_ok(Instant::now());
        let ahead = [peer("ahead", 10_000)];
        watch.dead(&ahead, "me", Instant::now(), 0);
        tokio::time::advance(TIMEOUT * 2).await;
        assert!(watch.dead(&ahead, "me", Instant::now(), 4_000).is_empty());
        assert_eq!(watch.dead(&ahead, "me", Instant::now(), 12_001).len(), 1);
        for step in 1..10 {
            tokio::time::advance(TIMEOUT / 2).await;
            // Its heartbeats read an hour old by this host's clock, but they keep coming.
            let behind = [peer("behind", step * 1_000)];
            assert!(
                watch
                    .dead(&behind, "me", Instant::now(), 3_600_000)
                    .is_empty()
            );
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
        let sessions = SessionsConfig::default();
        let removed = remove_records(&store, "h", &sessions, |inc| inc == "1")
            .await
            .unwrap();
        assert_eq!(removed, 250);
        assert!(store.get_connection("old-000").await.unwrap().is_none());
        assert!(store.get_connection("new").await.unwrap().is_some());
        assert!(store.get_connection("other").await.unwrap().is_some());
    }
}
