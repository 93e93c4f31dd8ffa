//! One task per connection: the read loop, outbound delivery, timers and heartbeats.
//!
//! Messages of one connection are invoked concurrently (up to `limits.max_inflight_messages`),
//! as API Gateway does: it gives no ordering guarantee across messages. Beyond that limit the
//! connection is not read further, so an abusive client is slowed by TCP backpressure instead of
//! growing the host's memory.

use crate::events::{ConnectionContext, Event, EventKind};
use crate::host::Host;
use crate::ids;
use crate::limits::{MessageLimiter, MessageVerdict};
use crate::registry::{ConnectionHandle, Outbound};
use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// How long the host's closing Close frame may take to write, with the client's Close reply:
/// also the bound on delivering a Close frame to a client that had stopped reading.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the connection ended, as `$disconnect` reports it.
struct Ending {
    code: u16,
    reason: String,
    /// A Close frame the host still has to send (None when the client closed or vanished).
    send: Option<(u16, &'static str)>,
}

impl Ending {
    fn host(code: u16, reason: &'static str) -> Self {
        Ending {
            code,
            reason: reason.to_string(),
            send: Some((code, reason)),
        }
    }

    fn abnormal() -> Self {
        Ending {
            code: 1006,
            reason: "Connection closed abnormally".into(),
            send: None,
        }
    }
}

/// Serves an established connection until it closes, then removes it and fires `$disconnect`
/// (the handshake registers first and calls [`run_registered`] itself).
#[cfg(test)]
pub(super) async fn run_connection<S>(
    host: Arc<Host>,
    ws: WebSocketStream<S>,
    context: Arc<ConnectionContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handle = register(&host, context);
    run_registered(host, ws, handle, ()).await;
}

/// Puts a connection in the registry: from here on the management API finds it (posts are
/// queued until its task serves them).
pub(super) fn register(host: &Host, context: Arc<ConnectionContext>) -> Arc<ConnectionHandle> {
    let handle = Arc::new(ConnectionHandle::new(context));
    host.registry.insert(handle.clone());
    handle
}

/// Takes a connection out of the registry; later posts to it answer Gone.
pub(super) fn unregister(host: &Host, handle: &ConnectionHandle) {
    host.registry.remove(&handle.context.connection_id);
    handle.mark_closed();
}

/// Serves a connection already [`register`]ed until it closes, then removes it and fires
/// `$disconnect`, holding `_held` (its places in the per-IP and per-principal counts) until then.
/// Taken as an argument rather than by a wrapping future, which would keep a second copy of the
/// WebSocket in the task of every open connection.
pub(super) async fn run_registered<S, H>(
    host: Arc<Host>,
    mut ws: WebSocketStream<S>,
    handle: Arc<ConnectionHandle>,
    _held: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ending = serve(&host, &mut ws, &handle).await;
    unregister(&host, &handle);
    // The closing steps are boxed: their futures would otherwise be part of this task's size,
    // and so of the memory every open connection holds.
    if let Some((code, reason)) = ending.send {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(reason),
        };
        // Bounded: a client that does not read (or has stopped reading) gets its Close frame only
        // if it reads within the timeout.
        let _ = Box::pin(tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        }))
        .await;
    }
    drop(ws);
    tracing::debug!(code = ending.code, reason = %ending.reason, "disconnected");
    Box::pin(finish(&host, &handle.context, ending.code, &ending.reason)).await;
}

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
/// [`FIRST_DELETE_WAIT`] for the first attempt.
pub(super) async fn finish(
    host: &Arc<Host>,
    context: &Arc<ConnectionContext>,
    code: u16,
    reason: &str,
) {
    discard_record(host, &context.connection_id).await;
    let Some(route) = host.routes.get("$disconnect") else {
        return;
    };
    let event = Event::new(
        "$disconnect",
        ids::new_id(),
        context.clone(),
        EventKind::Disconnect {
            status_code: code,
            reason: reason.to_string(),
        },
    );
    // Its answer goes nowhere: the client is gone. A failure is logged by `invoke`.
    let _ = route.invoke(&event).await;
}

/// Deletes the record of a connection that ended (or that `$connect` refused) without running
/// `$disconnect`: a background task on `host.tasks` retries while the store is unavailable (see
/// [`delete_record`]); this waits at most [`FIRST_DELETE_WAIT`] for its first attempt.
pub(super) async fn discard_record(host: &Arc<Host>, connection_id: &str) {
    let (first_done, first_attempt) = tokio::sync::oneshot::channel();
    host.tasks
        .spawn(tracing::Instrument::in_current_span(delete_record(
            host.clone(),
            connection_id.to_string(),
            first_done,
        )));
    let _ = tokio::time::timeout(FIRST_DELETE_WAIT, first_attempt).await;
}

/// Deletes a closed connection's record, retrying with backoff while the store fails, for at most
/// [`DELETE_RETRY_FOR`]. Signals `first_done` after the first attempt. Once the host shuts down the
/// retries continue for at most `server.drain_timeout` (the time `run` waits for its tasks).
/// Repeating a delete is harmless: it is idempotent.
async fn delete_record(
    host: Arc<Host>,
    connection_id: String,
    first_done: tokio::sync::oneshot::Sender<()>,
) {
    let retry = async {
        let mut first_done = Some(first_done);
        let mut delay = DELETE_BACKOFF_FIRST;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let result = host.store.delete_connection(&connection_id).await;
            if let Some(tx) = first_done.take() {
                let _ = tx.send(());
            }
            match result {
                Ok(()) if attempts > 1 => {
                    tracing::info!(attempts, "connection record deleted after retries");
                    return;
                }
                Ok(()) => return,
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

async fn serve<S>(
    host: &Arc<Host>,
    ws: &mut WebSocketStream<S>,
    handle: &Arc<ConnectionHandle>,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &host.config.limits;
    let connected = Instant::now();
    let max_deadline = connected + limits.max_connection_duration;
    let mut idle_deadline = connected + limits.idle_timeout;
    let pinging = !limits.ping_interval.is_zero();
    let mut next_ping = connected + limits.ping_interval;
    let mut last_heard = connected;
    let mut missed_pongs = 0u32;
    let inflight = Arc::new(Semaphore::new(limits.max_inflight_messages));
    let messages = MessageLimiter::new(limits);
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let wakeup = tokio::time::sleep_until(idle_deadline.min(max_deadline));
    tokio::pin!(wakeup);

    loop {
        let mut deadline = idle_deadline.min(max_deadline);
        if pinging {
            deadline = deadline.min(next_ping);
        }
        if wakeup.deadline() != deadline {
            wakeup.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            _ = host.shutdown.cancelled() => return Ending::host(1001, "Going away"),
            _ = handle.queued() => {
                while let Some(item) = handle.pop() {
                    let sent = match item {
                        Outbound::Close { code, reason } => {
                            return Ending { code, reason: reason.to_string(), send: Some((code, "")) };
                        }
                        // Boxed: inline, the write and its deadline would enlarge the task that
                        // every idle connection holds.
                        Outbound::Text(text) => Box::pin(send_data(host, ws, OpCode::Data(Data::Text), text.into())).await,
                        Outbound::Binary(bytes) => Box::pin(send_data(host, ws, OpCode::Data(Data::Binary), bytes)).await,
                    };
                    if let Err(failed) = sent {
                        return failed.ending();
                    }
                    idle_deadline = Instant::now() + limits.idle_timeout;
                    handle.touch(ids::now_ms());
                }
            }
            acquired = inflight.clone().acquire_owned(), if permit.is_none() => {
                permit = acquired.ok();
            }
            frame = ws.next(), if permit.is_some() => {
                last_heard = Instant::now();
                missed_pongs = 0;
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        idle_deadline = Instant::now() + limits.idle_timeout;
                        handle.touch(ids::now_ms());
                        match messages.check() {
                            MessageVerdict::Accept => {
                                let body = text.as_str().to_string();
                                spawn_message(host, handle, body, false, permit.take());
                            }
                            MessageVerdict::Throttle => throttled(host, handle),
                            MessageVerdict::Close => return flooded(),
                        }
                    }
                    Some(Ok(Message::Binary(data))) => {
                        if !host.config.extensions.binary_messages {
                            return Ending::host(1003, "Unsupported data");
                        }
                        idle_deadline = Instant::now() + limits.idle_timeout;
                        handle.touch(ids::now_ms());
                        match messages.check() {
                            MessageVerdict::Accept => {
                                let body = base64::engine::general_purpose::STANDARD.encode(&data);
                                spawn_message(host, handle, body, true, permit.take());
                            }
                            MessageVerdict::Throttle => throttled(host, handle),
                            MessageVerdict::Close => return flooded(),
                        }
                    }
                    Some(Ok(Message::Ping(_))) => {
                        // tungstenite queued the Pong; push it out now rather than with the next
                        // write. Bounded like any write: a client that pings but never reads must
                        // not pin this task past its timers or shutdown.
                        if let Err(failed) = write_bounded(host, ws.flush()).await {
                            return failed.ending();
                        }
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        // The Close reply tungstenite queued; the client is waiting for it.
                        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, ws.flush()).await;
                        return match frame {
                            Some(f) => Ending { code: f.code.into(), reason: f.reason.to_string(), send: None },
                            None => Ending { code: 1005, reason: "Client-side close frame status not set".into(), send: None },
                        };
                    }
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        return Ending::host(1009, "Message too big");
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        return Ending::host(1007, "Invalid frame payload data");
                    }
                    // TCP closed without a Close frame: nothing to send back (RFC 6455 §7.1.5).
                    Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                        return Ending::abnormal();
                    }
                    Some(Err(WsError::Protocol(e))) => {
                        tracing::info!(error = %e, "WebSocket protocol error");
                        return Ending::host(1002, "Protocol error");
                    }
                    Some(Err(WsError::Capacity(e))) => {
                        tracing::info!(error = %e, "WebSocket capacity error");
                        return Ending::host(1009, "Message too big");
                    }
                    Some(Err(_)) | None => return Ending::abnormal(),
                }
            }
            _ = &mut wakeup => {
                let now = Instant::now();
                if now >= max_deadline || now >= idle_deadline {
                    return Ending::host(1001, "Going away");
                }
                if pinging && now >= next_ping {
                    next_ping = now + limits.ping_interval;
                    if now.duration_since(last_heard) >= limits.ping_interval {
                        if missed_pongs >= limits.missed_pongs {
                            tracing::info!(missed_pongs, "peer stopped answering pings");
                            return Ending::host(1001, "Going away");
                        }
                        missed_pongs += 1;
                        if let Err(failed) = write_bounded(host, ws.send(Message::Ping(Bytes::new()))).await {
                            return failed.ending();
                        }
                    }
                }
            }
        }
    }
}

/// Why a write to the socket did not complete.
enum SendError {
    /// The write did not complete within `limits.outbound_full_grace`: the client is not reading.
    Stalled,
    /// The host started shutting down during the write.
    ShuttingDown,
    /// The socket failed.
    Closed,
}

impl SendError {
    /// How the connection ends after the failed write. A stalled client still gets its Close
    /// frame if it reads within [`CLOSE_HANDSHAKE_TIMEOUT`] (after the bytes already queued).
    fn ending(self) -> Ending {
        match self {
            SendError::Stalled => {
                tracing::info!("client stopped reading; closing");
                Ending::host(1008, "Client not reading")
            }
            SendError::ShuttingDown => Ending::host(1001, "Going away"),
            SendError::Closed => Ending::abnormal(),
        }
    }
}

/// Runs one write to the socket (data, Ping, Pong) within `limits.outbound_full_grace`, cut short
/// when the host shuts down: every write has a deadline, so a client that does not read cannot
/// hold its connection's task past the idle timer, the duration cap or shutdown.
async fn write_bounded(
    host: &Host,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), SendError> {
    tokio::select! {
        biased;
        _ = host.shutdown.cancelled() => Err(SendError::ShuttingDown),
        written = tokio::time::timeout(host.config.limits.outbound_full_grace, write) => match written {
            Err(_) => Err(SendError::Stalled),
            Ok(Err(_)) => Err(SendError::Closed),
            Ok(Ok(())) => Ok(()),
        },
    }
}

/// Sends one message, split into frames of at most `limits.frame_size` bytes as API Gateway
/// does, within the bounds of [`write_bounded`].
async fn send_data<S>(
    host: &Host,
    ws: &mut WebSocketStream<S>,
    opcode: OpCode,
    payload: Bytes,
) -> Result<(), SendError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame_size = host.config.limits.frame_size;
    let write = async {
        if payload.len() <= frame_size {
            let message = match opcode {
                OpCode::Data(Data::Text) => Message::Text(
                    Utf8Bytes::try_from(payload).map_err(|_| WsError::Utf8(String::new()))?,
                ),
                _ => Message::Binary(payload),
            };
            return ws.send(message).await;
        }
        let chunks = payload.len().div_ceil(frame_size);
        for i in 0..chunks {
            let chunk = payload.slice(i * frame_size..((i + 1) * frame_size).min(payload.len()));
            let code = if i == 0 {
                opcode
            } else {
                OpCode::Data(Data::Continue)
            };
            ws.feed(Message::Frame(Frame::message(chunk, code, i + 1 == chunks)))
                .await?;
        }
        ws.flush().await
    };
    write_bounded(host, write).await
}

/// Answers a message dropped for exceeding `limits.messages_per_second`: an API Gateway-style
/// error frame (spec §3.3's format, with REST's throttling text), queued like any reply, so a
/// client that does not read them fills its own queue and is dropped after `outbound_full_grace`.
fn throttled(host: &Host, handle: &ConnectionHandle) {
    tracing::debug!("message over limits.messages_per_second dropped");
    let frame = error_frame(
        "Too Many Requests",
        &handle.context.connection_id,
        &ids::new_id(),
    );
    let _ = handle.post(frame, host.config.limits.outbound_queue_bytes);
}

/// The ending of a connection that kept flooding past `limits.max_throttled_messages`.
fn flooded() -> Ending {
    tracing::info!("too many throttled messages; closing with 1008");
    Ending::host(1008, "Message rate exceeded")
}

/// The frame API Gateway sends when it cannot deliver a message (byte-exact, including spacing).
pub(crate) fn error_frame(message: &str, connection_id: &str, request_id: &str) -> Outbound {
    Outbound::Text(Utf8Bytes::from(format!(
        "{{\"message\": \"{message}\", \"connectionId\":\"{connection_id}\", \"requestId\":\"{request_id}\"}}"
    )))
}

fn spawn_message(
    host: &Arc<Host>,
    handle: &Arc<ConnectionHandle>,
    body: String,
    is_base64_encoded: bool,
    permit: Option<OwnedSemaphorePermit>,
) {
    let tasks = host.tasks.clone();
    let host = host.clone();
    let handle = handle.clone();
    // A child of the connection's span, so the invocation's log lines carry the connection ID.
    let span = tracing::debug_span!("message");
    let task = async move {
        let _permit = permit;
        let request_id = ids::new_id();
        let limit = host.config.limits.outbound_queue_bytes;
        let context = &handle.context;
        let reply = |frame: Outbound| {
            if handle.post(frame, limit).is_err() {
                tracing::debug!("reply dropped: outbound queue full or connection closed");
            }
        };
        let Some(route) = host.routes.select(&body) else {
            reply(error_frame(
                "Forbidden",
                &context.connection_id,
                &request_id,
            ));
            return;
        };
        // The route's throttling (`RouteSettings`) is shared with every client, so a message it
        // refuses is no strike against this connection, which kept its own rate.
        if !route.admit() {
            tracing::debug!(route = %route.key, "message over the route's throttling dropped");
            reply(error_frame(
                "Too Many Requests",
                &context.connection_id,
                &request_id,
            ));
            return;
        }
        let event = Event::new(
            route.key.clone(),
            request_id,
            context.clone(),
            EventKind::Message {
                message_id: ids::new_id(),
                body,
                is_base64_encoded,
            },
        );
        let failure = match route.invoke(&event).await {
            Err(failure) => failure.client_message(),
            Ok(response) => {
                // No body (absent or null) sends nothing; an empty-string body sends an empty
                // message (so a `$input.body` echo answers an empty message with an empty one).
                if route.two_way
                    && let Some(body) = response.body
                {
                    let frame = if response.is_base64_encoded {
                        match base64::engine::general_purpose::STANDARD.decode(&body) {
                            Ok(bytes) => Outbound::Binary(bytes.into()),
                            Err(_) => {
                                tracing::warn!(route = %route.key, "route response isBase64Encoded but body is not base64");
                                reply(error_frame(
                                    "Internal server error",
                                    &context.connection_id,
                                    &event.request_id,
                                ));
                                return;
                            }
                        }
                    } else {
                        Outbound::Text(body.into())
                    };
                    reply(frame);
                }
                return;
            }
        };
        reply(error_frame(
            failure,
            &context.connection_id,
            &event.request_id,
        ));
    };
    tasks.spawn(tracing::Instrument::instrument(task, span));
}
