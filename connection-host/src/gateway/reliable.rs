//! A reliable client's messages (PROTOCOL.md section 6): each is invoked at most once per
//! idempotency key (claimed in the store, so across hosts too), and answered with a numbered
//! `reply` that carries the route's response or the error API Gateway's frame would.

use crate::cluster::Owner;
use crate::events::{Event, EventKind};
use crate::host::Host;
use crate::ids;
use crate::registry::ConnectionHandle;
use crate::routing::table::Route;
use crate::sessions::envelope::{self, Outcome, Payload};
use crate::store::{Claim, KeyClaim};
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::UnboundedSender;

/// A message's processing, queued for a connection's ordered messages.
pub(super) type Job = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// How much longer than the route's timeout (and the cluster's `host_timeout`) a key claimed by a
/// host that still seems alive may stay pending before its attempt counts as lost.
const LOST_ATTEMPT_MARGIN: Duration = Duration::from_secs(5);

/// Starts processing a client's `msg`: concurrently, or after the connection's earlier messages
/// when its route is ordered (`ordered` holds the connection's queue of those, started on first
/// use).
pub(super) fn spawn(
    host: &Arc<Host>,
    handle: &Arc<ConnectionHandle>,
    id: String,
    payload: Payload,
    permit: Option<OwnedSemaphorePermit>,
    ordered: &mut Option<UnboundedSender<Job>>,
) {
    let (body, is_base64_encoded) = match payload {
        Payload::Text(text) => (text, false),
        Payload::Binary(bytes) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            true,
        ),
    };
    // Selected here, in the order messages arrive, so an ordered route queues them in that order.
    let route = host.routes.select(&body).cloned();
    let in_order = route.as_ref().is_some_and(|r| r.ordered);
    let job = {
        let (host, handle) = (host.clone(), handle.clone());
        let span = tracing::info_span!(
            "message",
            key = %id,
            route_key = route.as_ref().map(|r| r.key.as_str()),
            request_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        tracing::Instrument::instrument(
            async move {
                let _permit = permit;
                process(&host, &handle, id, body, is_base64_encoded, route).await;
            },
            span,
        )
    };
    if !in_order {
        host.tasks.spawn(job);
        return;
    }
    let queue = ordered.get_or_insert_with(|| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        host.tasks.spawn(async move {
            while let Some(job) = rx.recv().await {
                job.await;
            }
        });
        tx
    });
    // The queue is bounded by the connection's in-flight permits, which each job holds.
    let _ = queue.send(Box::pin(job));
}

/// Answers a `msg` that is not invoked, without claiming its key (sending it again later can
/// invoke it).
pub(super) fn refuse(host: &Arc<Host>, handle: &Arc<ConnectionHandle>, id: &str, message: &str) {
    let answer = envelope::answer(
        id,
        Outcome::Error {
            message,
            request_id: &ids::new_id(),
        },
    );
    let (host, handle) = (host.clone(), handle.clone());
    let tasks = host.tasks.clone();
    tasks.spawn(async move { reply(&host, &handle, &answer).await });
}

async fn process(
    host: &Arc<Host>,
    handle: &ConnectionHandle,
    id: String,
    body: String,
    is_base64_encoded: bool,
    route: Option<Arc<Route>>,
) {
    // Where the key is claimed: the session's scope, which a session started by a resume that
    // could not recover the previous one carries on from it (PROTOCOL.md section 6.7).
    let scope = handle
        .session(|s| crate::sessions::scope_of(&handle.context.connection_id, &s.key_scope))
        .unwrap_or_else(|| handle.context.connection_id.clone());
    let request_id = ids::new_id();
    let trace_id = handle.context.event_trace_id();
    let span = tracing::Span::current();
    span.record("request_id", request_id.as_str());
    span.record("trace_id", trace_id.as_str());
    let refused = |route_key: &str, status: u16, error: &str| {
        if let Some(log) = &host.access_log {
            log.record(&crate::access_log::Entry {
                status,
                error: Some(error),
                ..super::connection::message_entry(
                    &handle.context,
                    route_key,
                    &request_id,
                    &trace_id,
                )
            });
        }
    };
    let error = |message: &str, request_id: &str| {
        envelope::answer(
            &id,
            Outcome::Error {
                message,
                request_id,
            },
        )
    };
    let Some(route) = route else {
        let unmatched = &host.metrics.unmatched;
        unmatched.message_count.increment(1);
        unmatched.client_error.increment(1);
        refused("$default", 403, "Forbidden");
        return reply(host, handle, &error("Forbidden", &request_id)).await;
    };
    route.metrics.message_count.increment(1);
    if !route.admit() {
        tracing::debug!(route = %route.key, "message over the route's throttling refused");
        route.metrics.client_error.increment(1);
        host.metrics.throttled(crate::metrics::Throttle::Route);
        refused(&route.key, 429, "Too Many Requests");
        return reply(host, handle, &error("Too Many Requests", &request_id)).await;
    }
    // One attempt, whatever it tries: a try whose write landed unseen is recognised as its own.
    let attempt = ids::new_id();
    let mine = claim_now(host, &attempt);
    let expires = mine.claimed_at + millis(host.config.extensions.sessions.dedup_window);
    match claim(host, &scope, &id, &mine, expires).await {
        Ok(KeyClaim::Claimed) => {}
        Ok(KeyClaim::Done(answer)) => {
            tracing::debug!("message sent again; answered without invoking");
            host.metrics.idempotency_completed.increment(1);
            return reply(host, handle, &answer).await;
        }
        Ok(KeyClaim::Pending(other)) => {
            host.metrics.idempotency_pending.increment(1);
            let waited = await_other_attempt(
                host,
                handle,
                (&scope, &id, &attempt),
                other,
                route.timeout,
                expires,
            );
            match waited.await {
                Waited::Answered => return,
                Waited::Reclaimed => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "idempotency key not claimed; message not invoked");
            release(host, &scope, &id, mine, route.timeout);
            return reply(host, handle, &error(NOT_CLAIMED, &request_id)).await;
        }
    }
    let event = Event::new(
        route.key.clone(),
        request_id.clone(),
        trace_id.clone(),
        handle.context.clone(),
        EventKind::Message {
            message_id: ids::new_id(),
            body,
            is_base64_encoded,
            idempotency_key: Some(id.clone()),
        },
    );
    let started = tokio::time::Instant::now();
    let invoked = route.invoke(&event).await;
    let latency = started.elapsed();
    let mut failure = invoked
        .as_ref()
        .err()
        .map(|f| (f.status(), f.client_message()));
    let answer = match &invoked {
        Err(failure) => error(failure.client_message(), &event.request_id),
        Ok(response) => match response.body.as_ref().filter(|_| route.two_way) {
            None => envelope::answer(&id, Outcome::Accepted),
            Some(body) if response.is_base64_encoded => {
                match base64::engine::general_purpose::STANDARD.decode(body) {
                    Ok(bytes) => envelope::answer(&id, Outcome::Binary(&bytes)),
                    Err(_) => {
                        tracing::warn!(route = %route.key, "route response isBase64Encoded but body is not base64");
                        failure = Some((502, "Internal server error"));
                        error("Internal server error", &event.request_id)
                    }
                }
            }
            Some(body) => envelope::answer(&id, Outcome::Text(body)),
        },
    };
    if route.two_way {
        route.metrics.message_count.increment(1);
    }
    if let Some(log) = &host.access_log {
        let integration_error = invoked.as_ref().err().map(ToString::to_string);
        log.record(&crate::access_log::Entry {
            status: failure.map_or(200, |(status, _)| status),
            error: failure.map(|(_, message)| message),
            message_id: match &event.kind {
                EventKind::Message { message_id, .. } => Some(message_id),
                _ => None,
            },
            request_time_epoch: event.request_time_epoch,
            integration_latency: Some(latency),
            integration_status: invoked.as_ref().ok().and_then(|r| r.status_code),
            integration_error: integration_error.as_deref(),
            ..super::connection::message_entry(&handle.context, &route.key, &request_id, &trace_id)
        });
    }
    complete(host, &scope, &id, &answer, expires).await;
    reply(host, handle, &answer).await;
}

/// Stores the answer to `key`, trying again briefly while the store fails: a key left pending by
/// a live host makes a resend wait for it, then answer `Outcome unknown`.
async fn complete(host: &Host, scope: &str, key: &str, answer: &str, expires: i64) {
    let stored = retried("answer not stored", || {
        host.store.complete_key(scope, key, answer, expires)
    });
    if let Err(e) = stored.await {
        tracing::warn!(error = %e, "idempotency key's answer not stored; a resend will wait for it");
    }
}

/// Frees in the background the claim `mine` of a message that will not be invoked: a claim
/// seen to fail may have landed all the same, and a resend (here or on another host) would then
/// wait for this attempt until `Outcome unknown`. Tried while the store fails, for as long as
/// such a resend waits at most.
fn release(host: &Arc<Host>, scope: &str, key: &str, mine: Claim, timeout: Duration) {
    let (store, shutdown) = (host.store.clone(), host.shutdown.clone());
    let (scope, key) = (scope.to_string(), key.to_string());
    // As long as `await_other_attempt` waits for a live host's claim.
    let judged = host
        .cluster
        .as_ref()
        .map_or(Duration::ZERO, |c| c.host_timeout());
    let give_up = tokio::time::Instant::now() + timeout + judged + LOST_ATTEMPT_MARGIN;
    host.tasks.spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            match store.release_key(&scope, &key, &mine).await {
                Ok(()) => return,
                Err(e) if tokio::time::Instant::now() + delay > give_up => {
                    tracing::warn!(error = %e, "unused idempotency key claim not released; a resend may answer Outcome unknown");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "unused idempotency key claim not released; trying again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
}

/// Claims `key` in `scope`, trying again briefly while the store fails.
async fn claim(
    host: &Host,
    scope: &str,
    key: &str,
    mine: &Claim,
    expires: i64,
) -> Result<KeyClaim, crate::store::StoreError> {
    retried("not claimed", || {
        host.store.claim_key(scope, key, mine, expires)
    })
    .await
}

/// Runs a store call for an idempotency key up to [`CLAIM_TRIES`] times, with a doubling pause
/// while it fails (`failed` says what, in the log); the last result either way.
async fn retried<T, F>(
    failed: &str,
    mut call: impl FnMut() -> F,
) -> Result<T, crate::store::StoreError>
where
    F: Future<Output = Result<T, crate::store::StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    for _ in 1..CLAIM_TRIES {
        match call().await {
            Err(e) => tracing::debug!(error = %e, "idempotency key {failed}; trying again"),
            done => return done,
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    call().await
}

/// How many times [`retried`] tries a key's claim or answer.
const CLAIM_TRIES: u32 = 3;

/// The error of a message whose key could not be claimed (the store failed): it was not
/// invoked, and the client sends it again (PROTOCOL.md section 6).
const NOT_CLAIMED: &str = "Service Unavailable";

/// How [`await_other_attempt`] ended.
enum Waited {
    /// The other attempt's answer (or `Outcome unknown`) was sent.
    Answered,
    /// The other attempt's host died before completing it, and the key is claimed for this
    /// attempt now: invoke it.
    Reclaimed,
}

/// A key another attempt claimed (before a reconnect, perhaps on another host): waits for its
/// answer and sends it. If the cluster judges the other attempt's host dead before it completed,
/// claims the key again (only one attempt wins) for this attempt to invoke; if the attempt's host
/// seems alive but the attempt never completes, answers `Outcome unknown`.
async fn await_other_attempt(
    host: &Host,
    handle: &ConnectionHandle,
    (scope, id, attempt): (&str, &str, &str),
    mut other: Claim,
    timeout: Duration,
    expires: i64,
) -> Waited {
    // A host killed at the last moment of the invocation is judged dead `host_timeout` later.
    let judged = host
        .cluster
        .as_ref()
        .map_or(Duration::ZERO, |c| c.host_timeout());
    let mut delay = Duration::from_millis(50);
    loop {
        let now = ids::now_ms();
        if claimer_gone(host, &other).await {
            let reclaimed = host
                .store
                .reclaim_key(scope, id, &other, &claim_now(host, attempt), expires)
                .await;
            // Otherwise completed or reclaimed meanwhile (or a store error): the next read says.
            if let Ok(true) = reclaimed {
                tracing::warn!(
                    lost_on = %other.host_id,
                    "message's host died before completing it; invoking it again"
                );
                return Waited::Reclaimed;
            }
        } else if now > other.claimed_at + millis(timeout + judged + LOST_ATTEMPT_MARGIN) {
            tracing::warn!("message's earlier attempt did not complete; outcome unknown");
            reply(host, handle, &outcome_unknown(id)).await;
            return Waited::Answered;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        let claimed = host
            .store
            .claim_key(scope, id, &claim_now(host, attempt), expires)
            .await;
        match claimed {
            Ok(KeyClaim::Done(answer)) => {
                reply(host, handle, &answer).await;
                return Waited::Answered;
            }
            Ok(KeyClaim::Pending(claim)) => other = claim,
            // The claim expired meanwhile (past the dedup window), and this call claimed the key.
            Ok(KeyClaim::Claimed) => return Waited::Reclaimed,
            Err(_) => {}
        }
    }
}

/// A claim of a key by `attempt` on this host, now.
fn claim_now(host: &Host, attempt: &str) -> Claim {
    Claim {
        claimed_at: ids::now_ms(),
        host_id: host.identity.host_id.clone(),
        incarnation: host.identity.incarnation.clone(),
        attempt: attempt.to_string(),
    }
}

/// Whether the host that made `claim` is gone: this host's previous run, or a host the cluster
/// has judged dead (as for adopting its sessions). A claim without a host (written by an earlier
/// version) is never judged.
async fn claimer_gone(host: &Host, claim: &Claim) -> bool {
    if claim.host_id.is_empty() {
        return false;
    }
    if claim.host_id == host.identity.host_id {
        return claim.incarnation != host.identity.incarnation;
    }
    let Some(cluster) = &host.cluster else {
        return false;
    };
    let owner = Owner {
        host_id: claim.host_id.clone(),
        incarnation: claim.incarnation.clone(),
        endpoint: String::new(),
    };
    matches!(
        cluster.is_live(host.store.as_ref(), &owner).await,
        Ok(false)
    )
}

/// The answer to a key whose earlier attempt may or may not have invoked the route.
fn outcome_unknown(id: &str) -> String {
    envelope::answer(
        id,
        Outcome::Error {
            message: "Outcome unknown",
            request_id: &ids::new_id(),
        },
    )
}

/// Sends a `reply` (numbered, kept until acknowledged, and written to the store with
/// `durability = "store"`). A reply to a session that moved on is dropped: the client sends the
/// message again after its resume and gets the stored answer.
async fn reply(host: &Host, handle: &ConnectionHandle, answer: &str) {
    match handle.post_reply(answer) {
        Ok((seq, _)) => {
            let _ = crate::sessions::keep(host, handle, seq).await;
        }
        Err(e) => tracing::debug!(error = ?e, "reply not queued"),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
