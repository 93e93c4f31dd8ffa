//! The WebSocket handshake: validation, the authorizer, the store write, `$connect`, then the 101.
//!
//! Until `$connect` answers, the client waits for its 101 and the connection is not open: its
//! record is already in the store, but it is not in the registry, so the management API answers
//! 410 for it (on this host, and on any host that forwards a call here after reading the record).
//! It enters the registry just before its 101 is written, so it is usable once the client has it.
//! A connection refused by the authorizer or by `$connect` never gets a `$disconnect`; one refused
//! by `$connect` has its record deleted again.

use super::Origin;
use super::connection;
use super::head::Head;
use super::write_response;
use crate::access_log::Entry;
use crate::authorizer::ConnectRequest;
use crate::events::{ConnectionContext, Event, EventKind, MultiMap};
use crate::host::Host;
use crate::ids;
use crate::limits::{ConnectionPermit, Slot};
use crate::metrics::{Handshake, Throttle};
use crate::routing::table::InvokeFailure;
use crate::sessions::envelope::{RESUME_PREFIX, SUBPROTOCOL};
use crate::sessions::{self, token};
use crate::store::StoreError;
use base64::Engine;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::Instrument;

/// API Gateway's limit on the WebSocket URL.
const MAX_URL_LENGTH: usize = 4096;

/// Runs the handshake on a request head that asked for a WebSocket upgrade.
pub(super) async fn accept<S>(
    host: Arc<Host>,
    mut stream: S,
    origin: Origin,
    head: Head,
    leftover: Vec<u8>,
    permit: ConnectionPermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = origin.peer;
    let (path, query) = match head.target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (head.target.as_str(), None),
    };
    // The slot counts the connection against its source IP from here until the handshake fails
    // or the connection ends (it is held across `establish`, then by the connection's task).
    let admitted = validate(&host, &head, path)
        .and_then(|key| Ok((key.to_string(), admit(&host, &head, peer)?)));
    let (key, ip_slot) = match admitted {
        Ok(admitted) => admitted,
        Err(rejection) => {
            tracing::info!(%peer, target = %head.target, status = rejection.status, reason = rejection.log, "upgrade refused");
            refused(&host, rejection.outcome, rejection.status);
            let _ = write_response(
                &mut stream,
                rejection.status,
                rejection.headers,
                rejection.body,
            )
            .await;
            return;
        }
    };

    let connected_at = ids::now_ms();
    let host_header = head.header("host").unwrap_or_default().to_string();
    let domain_name = if host.config.api.domain_name.is_empty() {
        host_header.clone()
    } else {
        host.config.api.domain_name.clone()
    };
    let context = Arc::new(ConnectionContext {
        connection_id: ids::new_id(),
        connected_at,
        source_ip: peer.ip().to_string(),
        user_agent: head.header("user-agent").map(str::to_string),
        domain_name,
        host: host_header,
        stage: host.config.api.stage.as_str().into(),
        api_id: host.config.api.api_id.as_str().into(),
        authorizer: None,
        // A malformed header is not passed on: the events get traces of their own instead.
        trace: head
            .header("x-amzn-trace-id")
            .map(str::trim)
            .filter(|t| ids::is_valid_trace_header(t))
            .map(Box::from),
    });
    // The authorizer and `$connect` handle one upgrade request: they see the same request ID and
    // the same trace ID, which the `connect` span gives every log line of the handshake.
    let attempt = Attempt {
        request_id: ids::new_id(),
        trace: context.event_trace_id(),
        span: tracing::info_span!("connection", connection_id = %context.connection_id),
    };
    let connect_span = tracing::info_span!(
        parent: &attempt.span,
        "connect",
        route_key = "$connect",
        request_id = %attempt.request_id,
        trace_id = %attempt.trace,
    );
    establish(
        host, stream, origin, head, query, key, leftover, context, ip_slot, permit, attempt,
    )
    .instrument(connect_span)
    .await;
}

/// What identifies one upgrade request in logs.
struct Attempt {
    /// The `requestId` of its authorizer and `$connect` events.
    request_id: String,
    /// Their `X-Amzn-Trace-Id`.
    trace: String,
    /// The span of the connection it opens, which its task runs in.
    span: tracing::Span,
}

impl Attempt {
    /// Writes the access log line of the attempt, if the access log is on.
    fn log(&self, host: &Host, context: &ConnectionContext, outcome: ConnectOutcome<'_>) {
        let Some(log) = &host.access_log else {
            return;
        };
        log.record(&Entry {
            connection: context,
            event_type: "CONNECT",
            route_key: "$connect",
            request_id: &self.request_id,
            request_time_epoch: context.connected_at,
            trace_id: &self.trace,
            message_id: None,
            disconnect: None,
            status: outcome.status,
            error: outcome.error,
            integration_latency: outcome.latency,
            integration_status: outcome.integration_status,
            integration_error: outcome.integration_error,
        });
    }
}

/// How a connection attempt ended, for its access log line.
#[derive(Default)]
struct ConnectOutcome<'a> {
    /// 200 for an accepted connection (its client got the 101), or the refusal's status.
    status: u16,
    error: Option<&'a str>,
    latency: Option<std::time::Duration>,
    integration_status: Option<u16>,
    integration_error: Option<&'a str>,
}

impl<'a> ConnectOutcome<'a> {
    fn refused(status: u16, error: &'a str) -> Self {
        Self {
            status,
            error: Some(error),
            ..Self::default()
        }
    }
}

/// Runs the authorizer, writes the record, runs `$connect`, registers the connection, writes the
/// 101, then hands the connection to a task of its own. `ip_slot` and `permit` count it against
/// its source IP and `limits.max_connections` until it ends.
#[allow(clippy::too_many_arguments)]
async fn establish<S>(
    host: Arc<Host>,
    mut stream: S,
    origin: Origin,
    head: Head,
    query: Option<String>,
    key: String,
    leftover: Vec<u8>,
    mut context: Arc<ConnectionContext>,
    ip_slot: Slot<IpAddr>,
    permit: ConnectionPermit,
    attempt: Attempt,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connected_at = context.connected_at;
    let (request_id, trace) = (&attempt.request_id, &attempt.trace);
    let query = query
        .filter(|q| !q.is_empty())
        .map(|q| MultiMap::from_query(&q));
    // Counts the connection against its principal until the handshake fails or the connection ends.
    let mut _principal_slot = None;
    if let Some(authorizer) = &host.authorizer {
        let request = ConnectRequest {
            connection: context.clone(),
            request_id: request_id.clone(),
            trace_id: trace.clone(),
            headers: request_headers(&head, origin, trace, Audience::Authorizer),
            query: query.clone().unwrap_or_default(),
        };
        match authorizer.authorize(request).await {
            Ok(claims) => {
                if let Some(principal) = claims.get("principalId").and_then(|p| p.as_str()) {
                    match host.limits.per_principal.try_acquire(principal.to_string()) {
                        Some(slot) => _principal_slot = Some(slot),
                        None => {
                            tracing::info!(
                                principal,
                                "connections_per_principal reached; connection refused"
                            );
                            host.metrics.throttled(Throttle::Principal);
                            refused(&host, Handshake::Throttled, 429);
                            attempt.log(
                                &host,
                                &context,
                                ConnectOutcome::refused(429, "Too Many Requests"),
                            );
                            let _ = write_response(&mut stream, 429, &[], TOO_MANY_REQUESTS).await;
                            return;
                        }
                    }
                }
                // The request (and its clone of the context) is gone, so this changes it in place.
                Arc::make_mut(&mut context).authorizer = Some(claims);
            }
            Err(refusal) => {
                let status = refusal.status();
                let name = authorizer.name();
                let outcome = match status {
                    401 => Handshake::Unauthorized,
                    403 => Handshake::Forbidden,
                    _ => Handshake::AuthorizerError,
                };
                refused(&host, outcome, status);
                if status >= 500 {
                    tracing::warn!(authorizer = name, status, error = %refusal,
                        "authorizer failed; connection refused");
                } else {
                    tracing::info!(authorizer = name, status, reason = %refusal,
                        "authorizer refused the connection");
                }
                let error = match status {
                    401 => "Unauthorized",
                    403 => "Forbidden",
                    _ => "Internal server error",
                };
                attempt.log(&host, &context, ConnectOutcome::refused(status, error));
                let _ = write_response(&mut stream, status, &[], refusal.body()).await;
                return;
            }
        }
    }
    let offered: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
        .map(|(_, v)| v.as_str())
        .collect();
    let offer = if host.config.extensions.sessions.enabled {
        token::offer(offered.iter().copied())
    } else {
        token::Offer::default()
    };
    let offered = MultiMap::from_headers(
        head.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
            .map(|(n, v)| (n.as_str(), v.as_str())),
    );
    // The subprotocol the API itself would select, without `$connect`: a JWT authorizer's marker.
    let api_protocol = |chosen: Option<String>| match &host.authorizer {
        Some(authorizer) => authorizer.subprotocol(&offered, chosen),
        None => chosen,
    };
    let mut resume_failed = offer.malformed_resume.then_some("unknown");
    // The key scope a fresh session carries on from the previous session of the same client.
    let mut key_scope = String::new();
    if let Some(resume) = &offer.resume {
        let principal = sessions::principal(context.authorizer.as_ref());
        let protocol = api_protocol(None);
        match sessions::resume(&host, resume, &principal, &context, protocol.as_deref()).await {
            Ok(resumed) => {
                host.metrics.resumes_recovered.increment(1);
                // The resumed connection's own span: its messages belong to the session.
                let span = tracing::info_span!(parent: None, "session", connection_id = %resumed.handle.context.connection_id);
                let upgrade = Upgrade {
                    key,
                    connected_at,
                    subprotocol: Some(SUBPROTOCOL.to_string()),
                    span: span.clone(),
                };
                let held = (ip_slot, _principal_slot, permit);
                open(
                    host,
                    stream,
                    head,
                    leftover,
                    upgrade,
                    resumed.handle,
                    Some(resumed.attachment),
                    held,
                )
                .instrument(span)
                .await;
                return;
            }
            Err(sessions::NotResumed {
                reason: sessions::UNAVAILABLE,
                ..
            }) => {
                // The session may well be there: the client tries again with the same token.
                let _ = write_response(
                    &mut stream,
                    503,
                    &[],
                    b"{\"message\":\"Service Unavailable\"}",
                )
                .await;
                return;
            }
            Err(not_resumed) => {
                let reason = not_resumed.reason;
                let carried = not_resumed.key_scope.is_some();
                tracing::info!(
                    reason,
                    keys_carried_on = carried,
                    "session not resumed; starting a fresh one"
                );
                host.metrics.resumes_lost.increment(1);
                resume_failed = Some(reason);
                key_scope = not_resumed.key_scope.unwrap_or_default();
            }
        }
    }

    // A fresh reliable session: its token is issued now, so that its record carries the hash.
    let session = offer
        .reliable
        .then(|| sessions::start(&host, context.clone(), key_scope));
    // The record is written before `$connect` runs: a store that cannot take it refuses the
    // connection before any handler has seen it, so no handler is left with a CONNECT that no
    // DISCONNECT follows. Until `$connect` accepts, the connection is not in the registry, so the
    // management API (here, and on any host the record sends a call to) still answers 410 for it.
    let record = host.record(
        &context,
        session.as_ref().map(|(_, record, _)| record.clone()),
    );
    if let Err(e) = host.store.put_connection(record).await {
        tracing::error!(error = %e, "connection record not written; refusing the connection");
        refused(&host, Handshake::Unavailable, 503);
        attempt.log(
            &host,
            &context,
            ConnectOutcome::refused(503, "Service Unavailable"),
        );
        let _ = write_response(
            &mut stream,
            503,
            &[],
            b"{\"message\":\"Service Unavailable\"}",
        )
        .await;
        // A write that timed out may still have landed: delete it, so the refused connection
        // leaves no record behind. A record that already existed is another connection's.
        if !matches!(e, StoreError::AlreadyExists(_)) {
            crate::ending::discard_record(&host, &context).await;
        }
        return;
    }

    host.metrics.connect_count.increment(1);
    let mut subprotocol = None;
    if let Some(route) = host.routes.get("$connect") {
        let event = Event::new(
            "$connect",
            request_id.clone(),
            trace.clone(),
            context.clone(),
            EventKind::Connect {
                headers: Arc::new(request_headers(&head, origin, trace, Audience::Integration)),
                query: query.map(Arc::new),
            },
        );
        let started = tokio::time::Instant::now();
        let invoked = route.invoke(&event).await;
        let latency = started.elapsed();
        let (status, body): (u16, &[u8]) = match &invoked {
            Err(InvokeFailure::TimedOut) => (504, b"{\"message\": \"Endpoint request timed out\"}"),
            Err(InvokeFailure::Failed(_)) => (502, b"{\"message\": \"Internal server error\"}"),
            Ok(response) => match response.status_code {
                None => {
                    tracing::warn!("$connect integration response has no statusCode");
                    (502, b"{\"message\": \"Internal server error\"}")
                }
                Some(code) if (200..300).contains(&code) => {
                    subprotocol = response
                        .header("Sec-WebSocket-Protocol")
                        .map(str::to_string);
                    (101, b"")
                }
                Some(code) => (code, b""),
            },
        };
        if host.access_log.is_some() {
            let integration_error = invoked.as_ref().err().map(ToString::to_string);
            let error = match &invoked {
                Err(failure) => Some(failure.client_message()),
                Ok(_) if status == 502 => Some("Internal server error"),
                Ok(_) => None,
            };
            let outcome = ConnectOutcome {
                // The client of an accepted connection gets its 101; API Gateway logs a 200.
                status: if status == 101 { 200 } else { status },
                error,
                latency: Some(latency),
                integration_status: invoked.as_ref().ok().and_then(|r| r.status_code),
                integration_error: integration_error.as_deref(),
            };
            attempt.log(&host, &context, outcome);
        }
        if status != 101 {
            tracing::info!(status, "$connect rejected the connection");
            host.metrics.handshake(Handshake::ConnectRefused);
            crate::ending::discard_record(&host, &context).await;
            let _ = write_response(&mut stream, status, &[], body).await;
            return;
        }
    }
    let subprotocol = api_protocol(subprotocol);
    if host.routes.get("$connect").is_none() {
        let accepted = ConnectOutcome {
            status: 200,
            ..ConnectOutcome::default()
        };
        attempt.log(&host, &context, accepted);
    }

    let held = (ip_slot, _principal_slot, permit);
    let Some((handle, _, token)) = session else {
        let upgrade = Upgrade {
            key,
            connected_at,
            subprotocol,
            span: attempt.span,
        };
        let handle = connection::register(&host, context);
        open(host, stream, head, leftover, upgrade, handle, None, held).await;
        return;
    };
    // On a reliable connection the 101 names the reliable subprotocol, and the API's own choice
    // travels in the welcome frame (PROTOCOL.md section 1.4).
    let welcome = sessions::welcome(
        &host,
        &context.connection_id,
        &token,
        false,
        0,
        subprotocol.as_deref(),
        resume_failed,
    );
    let handle = Arc::new(handle);
    host.registry.insert(handle.clone());
    let attachment = handle.attach_first(welcome);
    let upgrade = Upgrade {
        key,
        connected_at,
        subprotocol: Some(SUBPROTOCOL.to_string()),
        span: attempt.span,
    };
    open(
        host,
        stream,
        head,
        leftover,
        upgrade,
        handle,
        Some(attachment),
        held,
    )
    .await;
}

/// What the 101 says.
struct Upgrade {
    /// The client's `Sec-WebSocket-Key`.
    key: String,
    /// For the `Date` header.
    connected_at: i64,
    /// The subprotocol selected, if any.
    subprotocol: Option<String>,
    /// The span the connection's task runs in.
    span: tracing::Span,
}

/// Writes the 101 for a connection already in the registry, then hands it to a task of its own;
/// `held` (its places under the limits) goes with it.
#[allow(clippy::too_many_arguments)]
async fn open<S, H>(
    host: Arc<Host>,
    mut stream: S,
    head: Head,
    leftover: Vec<u8>,
    upgrade: Upgrade,
    handle: Arc<crate::registry::ConnectionHandle>,
    attachment: Option<crate::registry::Attachment>,
    held: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Send + 'static,
{
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nDate: {}\r\nConnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {}\r\n",
        ids::http_date(upgrade.connected_at),
        derive_accept_key(upgrade.key.as_bytes())
    );
    if let Some(p) = &upgrade.subprotocol {
        response.push_str("sec-websocket-protocol: ");
        response.push_str(p);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    // Registered before the 101 is written, so the ID is usable the moment the client reads it
    // (as on API Gateway): a post that arrives first waits in the queue until the 101 is out.
    let written =
        tokio::time::timeout(super::WRITE_TIMEOUT, stream.write_all(response.as_bytes())).await;
    if let Err(e) = written.map_err(std::io::Error::from).and_then(|w| w) {
        tracing::info!(error = %e, "client left before the 101 was sent");
        match &attachment {
            // A session outlives the connection that never opened.
            Some(attachment) => {
                sessions::detach(
                    &host,
                    &handle,
                    attachment,
                    1006,
                    "Connection closed abnormally".into(),
                );
            }
            None => {
                connection::unregister(&host, &handle);
                crate::ending::finish(
                    &host,
                    &handle.context,
                    None,
                    1006,
                    "Connection closed abnormally",
                )
                .await;
            }
        }
        return;
    }
    tracing::debug!("connected");
    host.metrics.handshake(Handshake::Accepted);
    // The request head is not needed for the rest of the connection's life.
    drop(head);
    let ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(host.ws_config))
            .await;
    // A task's memory is its future's largest state, held for as long as the task runs. The
    // handshake's states (TLS, the request head, the authorizer, the store write, `$connect`) are
    // many times larger than an open connection needs, so the connection moves to a task sized
    // for serving it alone, and this one ends (see BENCHMARKS.md, idle memory).
    let tasks = host.tasks.clone();
    tasks.spawn(
        connection::run_registered(host, ws, handle, held, attachment).instrument(upgrade.span),
    );
}

struct Rejection {
    status: u16,
    /// How `connection_host_handshakes` counts it.
    outcome: Handshake,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
    log: &'static str,
}

/// Counts a handshake refused with `status` before any integration ran: a 4XX is also the
/// `$connect` route's `ClientError`.
fn refused(host: &Host, outcome: Handshake, status: u16) {
    host.metrics.handshake(outcome);
    if (400..500).contains(&status) {
        host.metrics.connect_route.client_error.increment(1);
    }
}

/// The body of a 429 refusal: API Gateway's throttling answer on REST APIs.
const TOO_MANY_REQUESTS: &[u8] = b"{\"message\":\"Too Many Requests\"}";

/// Applies the abuse limits a valid upgrade request meets before anything is invoked: the origin
/// allowlist, the connections per source IP, the host's new-connection rate, then the `$connect`
/// route's throttling (the rates last, so that requests refused anyway take no token from them).
fn admit(host: &Host, head: &Head, peer: SocketAddr) -> Result<Slot<IpAddr>, Rejection> {
    let limits = &host.limits;
    if !limits.origins.allows(head.header("origin")) {
        return Err(Rejection {
            status: 403,
            outcome: Handshake::OriginRefused,
            headers: &[],
            body: b"{\"message\":\"Forbidden\"}",
            log: "origin not in limits.allowed_origins",
        });
    }
    let too_many = |kind, log| {
        host.metrics.throttled(kind);
        Rejection {
            status: 429,
            outcome: Handshake::Throttled,
            headers: &[],
            body: TOO_MANY_REQUESTS,
            log,
        }
    };
    // IPv4 clients of a dual-stack listener arrive as IPv4-mapped IPv6 addresses.
    let slot = limits
        .per_ip
        .try_acquire(peer.ip().to_canonical())
        .ok_or_else(|| too_many(Throttle::Ip, "limits.connections_per_ip reached"))?;
    if !limits.new_connections.try_acquire() {
        return Err(too_many(
            Throttle::Account,
            "limits.connections_per_second reached",
        ));
    }
    if host
        .routes
        .get("$connect")
        .is_some_and(|route| !route.admit())
    {
        return Err(too_many(
            Throttle::Route,
            "the $connect route's throttling reached",
        ));
    }
    Ok(slot)
}

fn validate<'h>(host: &Host, head: &'h Head, path: &str) -> Result<&'h str, Rejection> {
    if head.target.len() > MAX_URL_LENGTH {
        return Err(Rejection {
            status: 414,
            outcome: Handshake::BadRequest,
            headers: &[],
            body: b"{\"message\":\"Request-URI Too Long\"}",
            log: "URL longer than 4096 characters",
        });
    }
    let stage = path.strip_prefix('/').unwrap_or(path);
    let stage = stage.strip_suffix('/').unwrap_or(stage);
    if stage != host.config.api.stage {
        return Err(Rejection {
            status: 403,
            outcome: Handshake::BadRequest,
            headers: &[],
            body: b"{\"message\":\"Forbidden\"}",
            log: "unknown stage",
        });
    }
    let bad = |log| Rejection {
        status: 400,
        outcome: Handshake::BadRequest,
        headers: &[],
        body: b"{\"message\":\"Bad Request\"}",
        log,
    };
    if head.method != "GET" {
        return Err(bad("upgrade with a method other than GET"));
    }
    if !head.header_has_token("connection", "upgrade") {
        return Err(bad("Connection header lacks 'upgrade'"));
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Rejection {
            status: 426,
            outcome: Handshake::BadRequest,
            headers: &[("Sec-WebSocket-Version", "13")],
            body: b"{\"message\":\"Upgrade Required\"}",
            log: "unsupported Sec-WebSocket-Version",
        });
    }
    let key = head
        .header("sec-websocket-key")
        .map(str::trim)
        .unwrap_or("");
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if decoded.map(|k| k.len()) != Ok(16) {
        return Err(bad("missing or malformed Sec-WebSocket-Key"));
    }
    Ok(key)
}

/// Which event the handshake's headers are for; API Gateway shows them differently to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// The REQUEST authorizer: hop-by-hop `Connection`/`Upgrade` kept, `content-length: 0` added
    /// (spec §6.2).
    Authorizer,
    /// The `$connect` integration: hop-by-hop `Connection`/`Upgrade` removed (spec §2.3).
    Integration,
}

/// The headers an event of the handshake carries: the client's, adjusted for `audience`, plus the
/// forwarding headers API Gateway adds (`trace` is the request's `X-Amzn-Trace-Id`).
fn request_headers(head: &Head, origin: Origin, trace: &str, audience: Audience) -> MultiMap {
    // A resume offer carries a secret token: neither the authorizer nor `$connect` sees it.
    let without_resume = |name: &str, value: &str| -> Option<String> {
        if !name.eq_ignore_ascii_case("sec-websocket-protocol") || !value.contains(RESUME_PREFIX) {
            return None;
        }
        Some(
            value
                .split(',')
                .map(str::trim)
                .filter(|entry| !token::is_resume_entry(entry))
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    let rewritten: Vec<(&str, std::borrow::Cow<'_, str>)> = head
        .headers
        .iter()
        .filter_map(|(n, v)| match without_resume(n, v) {
            None => Some((n.as_str(), std::borrow::Cow::Borrowed(v.as_str()))),
            Some(v) if v.is_empty() => None,
            Some(v) => Some((n.as_str(), std::borrow::Cow::Owned(v))),
        })
        .collect();
    let peer_ip = origin.peer.ip().to_string();
    let forwarded_for = match head.header("x-forwarded-for") {
        Some(existing) if !existing.is_empty() => format!("{existing}, {peer_ip}"),
        _ => peer_ip,
    };
    let port = origin.local_port.to_string();
    let forwarding = [
        "x-forwarded-for",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-amzn-trace-id",
    ];
    let dropped = |name: &str| {
        let is = |other: &str| name.eq_ignore_ascii_case(other);
        forwarding.iter().any(|f| is(f))
            || match audience {
                Audience::Integration => is("connection") || is("upgrade"),
                // Replaced by the upgrade request's real body length, zero.
                Audience::Authorizer => is("content-length"),
            }
    };
    let client = rewritten
        .iter()
        .filter(|(n, _)| !dropped(n))
        .map(|(n, v)| (*n, v.as_ref()));
    let mut added = vec![
        ("X-Amzn-Trace-Id", trace),
        ("X-Forwarded-For", forwarded_for.as_str()),
        ("X-Forwarded-Port", port.as_str()),
        (
            "X-Forwarded-Proto",
            if origin.tls { "https" } else { "http" },
        ),
    ];
    if audience == Audience::Authorizer {
        added.push(("content-length", "0"));
    }
    MultiMap::from_headers(client.chain(added))
}
