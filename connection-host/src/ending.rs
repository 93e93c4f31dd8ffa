//! How a connection (or a reliable session) ends for the rest of the system: its record is
//! deleted, retrying while the store is unavailable, and `$disconnect` runs. The gateway calls it
//! when a connection closes, and the sessions extension when a session ends without one.

use crate::access_log::Entry;
use crate::events::{ConnectionContext, Event, EventKind};
use crate::host::Host;
use crate::ids;
use crate::store::SessionRecord;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long `$disconnect` waits for the first attempt to delete the record: long enough that with
/// a healthy store the record is gone before `$disconnect` runs, short enough that an unreachable
/// store (whose calls can take the client's whole operation timeout) barely delays it.
const FIRST_DELETE_WAIT: Duration = Duration::from_secs(1);
/// Backoff between attempts to delete a record while the store is unavailable: doubling from the
/// first delay up to the longest one, each delay shortened by a random 0–50 % so that connections
/// closed during the same outage do not retry in lockstep when the store comes back.
const DELETE_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const DELETE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// After this long the record is left to its `ttl` (the store's items expire by themselves).
const DELETE_RETRY_FOR: Duration = Duration::from_secs(120);

/// Deletes the connection's record and runs `$disconnect` (best effort, as on API Gateway).
///
/// The record is deleted as [`discard_record`] does, so `$disconnect` waits at most
/// [`FIRST_DELETE_WAIT`] for the first attempt. A reliable session's `ended` record is kept
/// first, for `dedup_window`: a resume with its token can carry its idempotency keys on into
/// the client's next session (PROTOCOL.md section 6.7).
pub(crate) async fn finish(
    host: &Arc<Host>,
    context: &Arc<ConnectionContext>,
    ended: Option<SessionRecord>,
    code: u16,
    reason: &str,
) {
    let request_id = ids::new_id();
    let trace_id = context.event_trace_id();
    let span = tracing::info_span!(
        "disconnect",
        route_key = "$disconnect",
        request_id = %request_id,
        trace_id = %trace_id,
    );
    async {
        delete(host, context, ended).await;
        let mut entry = Entry {
            connection: context,
            event_type: "DISCONNECT",
            route_key: "$disconnect",
            request_id: &request_id,
            request_time_epoch: ids::now_ms(),
            trace_id: &trace_id,
            message_id: None,
            disconnect: Some((code, reason)),
            status: 200,
            error: None,
            integration_latency: None,
            integration_status: None,
            integration_error: None,
        };
        let Some(route) = host.routes.get("$disconnect") else {
            if let Some(log) = &host.access_log {
                log.record(&entry);
            }
            return;
        };
        let event = Event::new(
            "$disconnect",
            request_id.clone(),
            trace_id.clone(),
            context.clone(),
            EventKind::Disconnect {
                status_code: code,
                reason: reason.to_string(),
            },
        );
        // Its answer goes nowhere: the client is gone. A failure is logged by `invoke`.
        let started = tokio::time::Instant::now();
        let invoked = route.invoke(&event).await;
        if let Some(log) = &host.access_log {
            let integration_error = invoked.as_ref().err().map(ToString::to_string);
            entry.request_time_epoch = event.request_time_epoch;
            entry.integration_latency = Some(started.elapsed());
            if let Err(failure) = &invoked {
                entry.status = failure.status();
                entry.error = Some(failure.client_message());
            }
            entry.integration_status = invoked.as_ref().ok().and_then(|r| r.status_code);
            entry.integration_error = integration_error.as_deref();
            log.record(&entry);
        }
    }
    .instrument(span)
    .await;
}

/// Deletes the record of a connection that ended (or that `$connect` refused) without running
/// `$disconnect`: a background task on `host.tasks` retries while the store is unavailable (see
/// [`delete_record`]); this waits at most [`FIRST_DELETE_WAIT`] for its first attempt. The groups
/// the connection was in are told it left (`host.on_leave`).
pub(crate) async fn discard_record(host: &Arc<Host>, context: &Arc<ConnectionContext>) {
    delete(host, context, None).await;
}

async fn delete(host: &Arc<Host>, context: &Arc<ConnectionContext>, ended: Option<SessionRecord>) {
    let (first_done, first_attempt) = tokio::sync::oneshot::channel();
    host.tasks
        .spawn(tracing::Instrument::in_current_span(delete_record(
            host.clone(),
            context.clone(),
            ended,
            first_done,
        )));
    let _ = tokio::time::timeout(FIRST_DELETE_WAIT, first_attempt).await;
}

/// Deletes a closed connection's record, retrying with backoff while the store fails, for at most
/// [`DELETE_RETRY_FOR`]. Signals `first_done` after the first attempt. Once the host shuts down the
/// retries continue for at most `server.drain_timeout` (the time `run` waits for its tasks).
/// Repeating a delete is harmless: it is idempotent.
///
/// What is kept of an `ended` session is written first (one attempt), so that a resume racing
/// the end finds either the record or what replaces it.
async fn delete_record(
    host: Arc<Host>,
    context: Arc<ConnectionContext>,
    ended: Option<SessionRecord>,
    first_done: tokio::sync::oneshot::Sender<()>,
) {
    let connection_id = &context.connection_id;
    let retry = async {
        if let Some(session) = ended {
            let window = host.config.extensions.sessions.dedup_window;
            let expires = ids::now_ms() + i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
            if let Err(e) = host
                .store
                .keep_ended_session(connection_id, &session, expires)
                .await
            {
                tracing::warn!(error = %e, "ended session not kept; a resume with its token cannot carry its idempotency keys on");
            }
        }
        let mut first_done = Some(first_done);
        let mut delay = DELETE_BACKOFF_FIRST;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let result = host.store.delete_connection(connection_id).await;
            if let Some(tx) = first_done.take() {
                let _ = tx.send(());
            }
            match result {
                Ok(groups) => {
                    if attempts > 1 {
                        tracing::info!(attempts, "connection record deleted after retries");
                    }
                    if let Some(on_leave) = host.on_leave.filter(|_| !groups.is_empty()) {
                        on_leave(host.clone(), context.clone(), groups).await;
                    }
                    return;
                }
                Err(e) if attempts == 1 => {
                    tracing::warn!(error = %e, "connection record not deleted; retrying in the background")
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempts, "connection record still not deleted")
                }
            }
            tokio::time::sleep(delay.mul_f64(rand::random_range(0.5..=1.0))).await;
            delay = (delay * 2).min(DELETE_BACKOFF_MAX);
        }
    };
    let shut_down = async {
        host.shutdown.cancelled().await;
        tokio::time::sleep(host.config.server.drain_timeout).await;
    };
    tokio::select! {
        done = tokio::time::timeout(DELETE_RETRY_FOR, retry) => if done.is_err() {
            tracing::error!(after = ?DELETE_RETRY_FOR, "giving up on deleting the connection record; its ttl will remove it");
        },
        _ = shut_down => {
            tracing::warn!("host shut down before the connection record could be deleted; its ttl will remove it");
        }
    }
}
