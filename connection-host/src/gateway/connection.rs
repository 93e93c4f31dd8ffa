//! One task per connection: the read loop, outbound delivery, timers and heartbeats.
//!
//! Messages of one connection are invoked concurrently (up to `limits.max_inflight_messages`),
//! as API Gateway does: it gives no ordering guarantee across messages. Beyond that limit the
//! connection is not read further, so an abusive client is slowed by TCP backpressure instead of
//! growing the host's memory.

use crate::access_log::Entry;
use crate::events::{ConnectionContext, Event, EventKind};
use crate::host::Host;
use crate::ids;
use crate::limits::{MessageLimiter, MessageVerdict};
use crate::metrics::Throttle;
use crate::registry::{Attachment, ConnectionHandle, Outbound};
use crate::sessions::envelope::{self, ClientFrame, FrameError};
use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::UnboundedSender;
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
    /// The connection was lost rather than closed: a reliable session outlives it (PROTOCOL.md
    /// section 7).
    lost: bool,
    /// Another connection took the session over: this one goes quietly.
    replaced: bool,
}

impl Ending {
    fn host(code: u16, reason: &'static str) -> Self {
        Ending {
            code,
            reason: reason.to_string(),
            send: Some((code, reason)),
            lost: false,
            replaced: false,
        }
    }

    fn abnormal() -> Self {
        Ending {
            code: 1006,
            reason: "Connection closed abnormally".into(),
            send: None,
            lost: true,
            replaced: false,
        }
    }

    /// A connection the host gives up on while its client may still be there (it stopped reading
    /// or answering pings): for a session, a lost connection the client should resume.
    fn dropped(code: u16, reason: &'static str) -> Self {
        Ending {
            lost: true,
            ..Ending::host(code, reason)
        }
    }

    fn client(code: u16, reason: String) -> Self {
        Ending {
            code,
            reason,
            send: None,
            lost: false,
            replaced: false,
        }
    }
}

/// The close code and reason telling a reliable client to resume (PROTOCOL.md section 7).
const RESUME_CLOSE: (u16, &str) = (4000, "Resume");
/// The close code and reason telling a reliable client its session went to another connection.
const REPLACED_CLOSE: (u16, &str) = (4001, "Replaced");

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
    run_registered(host, ws, handle, (), None).await;
}

/// Puts a connection in the registry: from here on the management API finds it (posts are
/// queued until its task serves them).
pub(super) fn register(host: &Host, context: Arc<ConnectionContext>) -> Arc<ConnectionHandle> {
    let handle = Arc::new(ConnectionHandle::new(context));
    host.registry.insert(handle.clone());
    handle
}

/// Takes a connection out of the registry; later posts to it answer Gone.
pub(super) fn unregister(host: &Host, handle: &Arc<ConnectionHandle>) {
    host.registry
        .remove_if_same(&handle.context.connection_id, handle);
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
    attachment: Option<Attachment>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ending = serve(&host, &mut ws, &handle, attachment.as_ref()).await;
    host.metrics.closed(ending.code);
    // A reliable session outlives a lost connection (unless the host is shutting down), and a
    // replaced connection leaves the session to its successor.
    let keep_session = attachment
        .as_ref()
        .filter(|_| ending.replaced || (ending.lost && !host.shutdown.is_cancelled()));
    if keep_session.is_some() {
        if ending.replaced {
            ending.send = Some(REPLACED_CLOSE);
        } else if ending.send.is_some() {
            ending.send = Some(RESUME_CLOSE);
        }
    } else {
        unregister(&host, &handle);
    }
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
    if let Some(attachment) = keep_session {
        if !ending.replaced {
            crate::sessions::detach(&host, &handle, attachment, ending.code, ending.reason);
        }
        return;
    }
    tracing::debug!(code = ending.code, reason = %ending.reason, "disconnected");
    Box::pin(crate::ending::finish(
        &host,
        &handle.context,
        handle.session(|s| crate::sessions::record_of(s)),
        ending.code,
        &ending.reason,
    ))
    .await;
}

async fn serve<S>(
    host: &Arc<Host>,
    ws: &mut WebSocketStream<S>,
    handle: &Arc<ConnectionHandle>,
    attachment: Option<&Attachment>,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &host.config.limits;
    let connected = Instant::now();
    // A session's timers run from its start and its last message, not from this connection's.
    let (max_deadline, mut idle_deadline) = match attachment {
        None => (
            connected + limits.max_connection_duration,
            connected + limits.idle_timeout,
        ),
        Some(_) => {
            let now = ids::now_ms();
            let left = |since: i64, limit: Duration| {
                let elapsed = u64::try_from(now - since).unwrap_or(0);
                limit.saturating_sub(Duration::from_millis(elapsed))
            };
            (
                connected + left(handle.context.connected_at, limits.max_connection_duration),
                connected + left(handle.last_active_ms(), limits.idle_timeout),
            )
        }
    };
    let replaced = async {
        match attachment {
            Some(a) => a.token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(replaced);
    // Made once: a future made anew on every turn of the loop would register with the host-wide
    // shutdown signal, and unregister, at every message sent, under that signal's lock, which all
    // connections share.
    let shutdown = host.shutdown.cancelled();
    tokio::pin!(shutdown);
    let reliable = attachment.is_some();
    let mut ordered = None;
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
            _ = &mut shutdown => return Ending::host(1001, "Going away"),
            _ = &mut replaced => return Ending { replaced: true, ..Ending::client(4001, "Replaced".into()) },
            _ = handle.queued() => loop {
                // Boxed: inline, the writes and their deadline would enlarge the task that every
                // idle connection holds.
                match Box::pin(send_queued(host, ws, handle)).await {
                    Ok(Batch::Empty) => break,
                    Ok(Batch::Sent) => {
                        idle_deadline = Instant::now() + limits.idle_timeout;
                        handle.touch(ids::now_ms());
                    }
                    Ok(Batch::Close { code, reason }) => {
                        return Ending { send: Some((code, "")), ..Ending::client(code, reason.to_string()) };
                    }
                    Err(failed) => return failed.ending(host),
                }
            },
            // In a block: `select!` builds every branch's future on each turn, disabled or not.
            acquired = async { inflight.clone().acquire_owned().await }, if permit.is_none() => {
                permit = acquired.ok();
            }
            frame = ws.next(), if permit.is_some() => {
                last_heard = Instant::now();
                missed_pongs = 0;
                match frame {
                    Some(Ok(Message::Text(text))) if reliable => {
                        received(host, text.len());
                        if let Some(ending) = envelope_in(host, handle, text, &messages, &mut permit, &mut ordered) {
                            return ending;
                        }
                        idle_deadline = Instant::now() + limits.idle_timeout;
                    }
                    Some(Ok(Message::Binary(_))) if reliable => {
                        let e = FrameError { code: "BadFrame", message: "frames are JSON text messages".into(), id: None };
                        control(host, handle, envelope::error(&e));
                    }
                    Some(Ok(Message::Text(text))) => {
                        received(host, text.len());
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
                        received(host, data.len());
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
                            return failed.ending(host);
                        }
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        // The Close reply tungstenite queued; the client is waiting for it.
                        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, ws.flush()).await;
                        return match frame {
                            // A reliable client closing with 4000 is about to resume (PROTOCOL.md
                            // section 5): the session outlives this connection.
                            Some(f) if reliable && u16::from(f.code) == RESUME_CLOSE.0 => Ending {
                                lost: true,
                                ..Ending::client(RESUME_CLOSE.0, f.reason.to_string())
                            },
                            Some(f) => Ending::client(f.code.into(), f.reason.to_string()),
                            None => Ending::client(1005, "Client-side close frame status not set".into()),
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
                    if now < max_deadline {
                        host.metrics.heartbeat_closes.increment(1);
                    }
                    return Ending::host(1001, "Going away");
                }
                if pinging && now >= next_ping {
                    next_ping = now + limits.ping_interval;
                    if now.duration_since(last_heard) >= limits.ping_interval {
                        if missed_pongs >= limits.missed_pongs {
                            tracing::info!(missed_pongs, "peer stopped answering pings");
                            host.metrics.heartbeat_closes.increment(1);
                            return Ending::dropped(1001, "Going away");
                        }
                        missed_pongs += 1;
                        if let Err(failed) = write_bounded(host, ws.send(Message::Ping(Bytes::new()))).await {
                            return failed.ending(host);
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
    fn ending(self, host: &Host) -> Ending {
        match self {
            SendError::Stalled => {
                tracing::info!("client stopped reading; closing");
                host.metrics.slow_consumer_closes.increment(1);
                Ending::dropped(1008, "Client not reading")
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
    // The write first: one that completes at once (the usual case) never registers with the
    // host-wide shutdown signal, whose lock every connection shares.
    tokio::select! {
        biased;
        written = tokio::time::timeout(host.config.limits.outbound_full_grace, write) => match written {
            Err(_) => Err(SendError::Stalled),
            Ok(Err(_)) => Err(SendError::Closed),
            Ok(Ok(())) => Ok(()),
        },
        _ = host.shutdown.cancelled() => Err(SendError::ShuttingDown),
    }
}

/// Bytes of messages written to the socket with one flush, at most (a message larger than this
/// goes alone).
const BATCH_BYTES: usize = 64 * 1024;

/// What [`send_queued`] did.
enum Batch {
    /// Nothing was queued.
    Empty,
    /// Messages were written; more may be queued.
    Sent,
    /// The queue asked for the connection to close (after the messages before it, still
    /// buffered in the WebSocket for the Close frame's flush).
    Close { code: u16, reason: &'static str },
}

/// Writes the messages queued for the connection, up to [`BATCH_BYTES`], with one flush: a
/// connection with several messages waiting makes one write to its socket rather than one per
/// message. Each message is split into frames of at most `limits.frame_size` bytes as API
/// Gateway does. The whole batch is one write in the sense of [`write_bounded`].
async fn send_queued<S>(
    host: &Host,
    ws: &mut WebSocketStream<S>,
    handle: &ConnectionHandle,
) -> Result<Batch, SendError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Nothing queued (the usual case once a batch went out): no write, no deadline to set.
    let mut next = match handle.pop() {
        None => return Ok(Batch::Empty),
        Some(Outbound::Close { code, reason }) => return Ok(Batch::Close { code, reason }),
        first => first,
    };
    let frame_size = host.config.limits.frame_size;
    let (mut messages, mut bytes) = (0u64, 0usize);
    let mut close = None;
    let write = async {
        while bytes < BATCH_BYTES {
            match next.take().or_else(|| handle.pop()) {
                None => break,
                Some(Outbound::Close { code, reason }) => {
                    close = Some(Batch::Close { code, reason });
                    break;
                }
                Some(Outbound::Text(text)) => {
                    messages += 1;
                    bytes += text.len();
                    if text.len() <= frame_size {
                        ws.feed(Message::Text(text)).await?;
                    } else {
                        feed_frames(ws, OpCode::Data(Data::Text), text.into(), frame_size).await?;
                    }
                }
                Some(Outbound::Binary(data)) => {
                    messages += 1;
                    bytes += data.len();
                    if data.len() <= frame_size {
                        ws.feed(Message::Binary(data)).await?;
                    } else {
                        feed_frames(ws, OpCode::Data(Data::Binary), data, frame_size).await?;
                    }
                }
            }
        }
        ws.flush().await
    };
    write_bounded(host, write).await?;
    host.metrics.messages_out.increment(messages);
    host.metrics.bytes_out.increment(bytes as u64);
    Ok(close.unwrap_or(Batch::Sent))
}

/// Puts one message larger than `frame_size` in the WebSocket's write buffer (written out when it
/// fills or is flushed), split into frames of at most `frame_size` bytes.
async fn feed_frames<S>(
    ws: &mut WebSocketStream<S>,
    opcode: OpCode,
    payload: Bytes,
    frame_size: usize,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
    Ok(())
}

/// Handles one text frame of a reliable connection (PROTOCOL.md); `Some` when the connection
/// must close (a client flooding past its rate).
fn envelope_in(
    host: &Arc<Host>,
    handle: &Arc<ConnectionHandle>,
    text: Utf8Bytes,
    messages: &MessageLimiter,
    permit: &mut Option<OwnedSemaphorePermit>,
    ordered: &mut Option<UnboundedSender<super::reliable::Job>>,
) -> Option<Ending> {
    handle.touch(ids::now_ms());
    let frame = envelope::parse(text.as_str(), host.config.extensions.binary_messages);
    // An ack or a message shows that the client read this connection's welcome (PROTOCOL.md
    // section 4), so it holds the new token; a ping does not (a client may ping a connection
    // whose welcome has not reached it, and then resume with the token it had).
    if matches!(frame, Ok(ClientFrame::Ack { .. } | ClientFrame::Msg { .. })) {
        crate::sessions::confirm_token(host, handle);
    }
    match frame {
        Ok(ClientFrame::Ack { seq }) => {
            if !handle.ack(seq) {
                let e = FrameError {
                    code: "BadAck",
                    message: format!("sequence number {seq} was not sent"),
                    id: None,
                };
                control(host, handle, envelope::error(&e));
            }
        }
        Ok(ClientFrame::Ping { id }) => control(host, handle, envelope::pong(id.as_deref())),
        Ok(ClientFrame::Msg { id, payload }) => match messages.check() {
            MessageVerdict::Accept => {
                super::reliable::spawn(host, handle, id, payload, permit.take(), ordered);
            }
            MessageVerdict::Throttle => {
                host.metrics.throttled(Throttle::Connection);
                super::reliable::refuse(host, handle, &id, "Too Many Requests");
            }
            MessageVerdict::Close => return Some(flooded()),
        },
        Err(e) => {
            tracing::debug!(error = %e, "frame refused");
            control(host, handle, envelope::error(&e));
        }
    }
    None
}

/// Queues a frame of the subprotocol that is not numbered; dropped if the queue is full, as a
/// plain connection's error frames are.
fn control(host: &Host, handle: &ConnectionHandle, frame: String) {
    let _ = handle.post_control(frame, host.config.limits.outbound_queue_bytes);
}

/// Answers a message dropped for exceeding `limits.messages_per_second`: an API Gateway-style
/// error frame (spec §3.3's format, with REST's throttling text), queued like any reply, so a
/// client that does not read them fills its own queue and is dropped after `outbound_full_grace`.
fn throttled(host: &Host, handle: &ConnectionHandle) {
    tracing::debug!("message over limits.messages_per_second dropped");
    host.metrics.throttled(Throttle::Connection);
    let frame = error_frame(
        "Too Many Requests",
        &handle.context.connection_id,
        &ids::new_id(),
    );
    let _ = handle.post(frame, host.config.limits.outbound_queue_bytes);
}

/// Counts a data message received from the client.
fn received(host: &Host, len: usize) {
    host.metrics.messages_in.increment(1);
    host.metrics.bytes_in.increment(len as u64);
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
    // A child of the connection's span, so every log line of the invocation carries the
    // connection ID as well as the event's own IDs.
    let span = tracing::info_span!(
        "message",
        route_key = tracing::field::Empty,
        request_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let task = async move {
        let _permit = permit;
        let request_id = ids::new_id();
        let trace_id = handle.context.event_trace_id();
        let span = tracing::Span::current();
        span.record("request_id", request_id.as_str());
        span.record("trace_id", trace_id.as_str());
        let limit = host.config.limits.outbound_queue_bytes;
        let context = &handle.context;
        let reply = |frame: Outbound| {
            if handle.post(frame, limit).is_err() {
                tracing::debug!("reply dropped: outbound queue full or connection closed");
            }
        };
        // The access log line of a message that was not invoked.
        let refused = |route_key: &str, status: u16, error: &str| {
            if let Some(log) = &host.access_log {
                log.record(&Entry {
                    status,
                    error: Some(error),
                    ..message_entry(context, route_key, &request_id, &trace_id)
                });
            }
        };
        let Some(route) = host.routes.select(&body) else {
            let unmatched = &host.metrics.unmatched;
            unmatched.message_count.increment(1);
            unmatched.client_error.increment(1);
            // No route and no `$default`: API Gateway logs the message under `$default`.
            refused("$default", 403, "Forbidden");
            reply(error_frame(
                "Forbidden",
                &context.connection_id,
                &request_id,
            ));
            return;
        };
        span.record("route_key", route.key.as_str());
        // The route's throttling (`RouteSettings`) is shared with every client, so a message it
        // refuses is no strike against this connection, which kept its own rate.
        route.metrics.message_count.increment(1);
        if !route.admit() {
            tracing::debug!(route = %route.key, "message over the route's throttling dropped");
            route.metrics.client_error.increment(1);
            host.metrics.throttled(Throttle::Route);
            refused(&route.key, 429, "Too Many Requests");
            reply(error_frame(
                "Too Many Requests",
                &context.connection_id,
                &request_id,
            ));
            return;
        }
        let event = Event::new(
            route.key.clone(),
            request_id.clone(),
            trace_id.clone(),
            context.clone(),
            EventKind::Message {
                message_id: ids::new_id(),
                body,
                is_base64_encoded,
                idempotency_key: None,
            },
        );
        let started = Instant::now();
        let invoked = route.invoke(&event).await;
        let latency = started.elapsed();
        // What the client gets back: a frame, nothing, or an error frame with its status.
        let (frame, failure) = match &invoked {
            Err(failure) => (None, Some((failure.status(), failure.client_message()))),
            // No body (absent or null) sends nothing; an empty-string body sends an empty
            // message (so a `$input.body` echo answers an empty message with an empty one).
            Ok(response) => match (&response.body, route.two_way) {
                (Some(body), true) if response.is_base64_encoded => {
                    match base64::engine::general_purpose::STANDARD.decode(body) {
                        Ok(bytes) => (Some(Outbound::Binary(bytes.into())), None),
                        Err(_) => {
                            tracing::warn!(route = %route.key, "route response isBase64Encoded but body is not base64");
                            (None, Some((502, "Internal server error")))
                        }
                    }
                }
                (Some(body), true) => (Some(Outbound::Text(body.clone().into())), None),
                _ => (None, None),
            },
        };
        if let Some(log) = &host.access_log {
            let integration_error = invoked.as_ref().err().map(ToString::to_string);
            log.record(&Entry {
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
                ..message_entry(context, &route.key, &request_id, &trace_id)
            });
        }
        if let Some(frame) = frame {
            // API Gateway counts the route's answer to the client too.
            route.metrics.message_count.increment(1);
            reply(frame);
        } else if let Some((_, message)) = failure {
            reply(error_frame(message, &context.connection_id, &request_id));
        }
    };
    tasks.spawn(tracing::Instrument::instrument(task, span));
}

/// The access log entry of a message delivered with a 200, before the details of its invocation.
pub(super) fn message_entry<'a>(
    connection: &'a crate::events::ConnectionContext,
    route_key: &'a str,
    request_id: &'a str,
    trace_id: &'a str,
) -> Entry<'a> {
    Entry {
        connection,
        event_type: "MESSAGE",
        route_key,
        request_id,
        request_time_epoch: ids::now_ms(),
        trace_id,
        message_id: None,
        disconnect: None,
        status: 200,
        error: None,
        integration_latency: None,
        integration_status: None,
        integration_error: None,
    }
}
