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
use crate::authorizer::ConnectRequest;
use crate::events::{ConnectionContext, Event, EventKind, MultiMap};
use crate::host::Host;
use crate::ids;
use crate::limits::{ConnectionPermit, Slot};
use crate::routing::table::InvokeFailure;
use crate::store::{ConnectionRecord, StoreError};
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
    });
    let span = tracing::info_span!("connection", connection_id = %context.connection_id);
    establish(
        host, stream, origin, head, query, key, leftover, context, ip_slot, permit,
    )
    .instrument(span)
    .await;
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
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connected_at = context.connected_at;
    // The authorizer and `$connect` handle one upgrade request: they see the same request ID and
    // the same trace ID.
    let request_id = ids::new_id();
    let trace = head
        .header("x-amzn-trace-id")
        .map(str::to_string)
        .unwrap_or_else(|| ids::trace_id(connected_at));
    let query = query
        .filter(|q| !q.is_empty())
        .map(|q| MultiMap::from_query(&q));
    // Counts the connection against its principal until the handshake fails or the connection ends.
    let mut _principal_slot = None;
    if let Some(authorizer) = &host.authorizer {
        let request = ConnectRequest {
            connection: context.clone(),
            request_id: request_id.clone(),
            headers: request_headers(&head, origin, &trace, Audience::Authorizer),
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
                if status >= 500 {
                    tracing::warn!(authorizer = name, status, error = %refusal,
                        "authorizer failed; connection refused");
                } else {
                    tracing::info!(authorizer = name, status, reason = %refusal,
                        "authorizer refused the connection");
                }
                let _ = write_response(&mut stream, status, &[], refusal.body()).await;
                return;
            }
        }
    }
    // The record is written before `$connect` runs: a store that cannot take it refuses the
    // connection before any handler has seen it, so no handler is left with a CONNECT that no
    // DISCONNECT follows. Until `$connect` accepts, the connection is not in the registry, so the
    // management API (here, and on any host the record sends a call to) still answers 410 for it.
    let record = ConnectionRecord {
        connection_id: context.connection_id.clone(),
        connected_at,
        source_ip: context.source_ip.clone(),
        user_agent: context.user_agent.clone(),
        owner_host: host.identity.host_id.clone(),
        owner_incarnation: host.identity.incarnation.clone(),
        owner_endpoint: host.identity.endpoint.clone(),
        authorizer: context.authorizer.clone(),
        session: None,
    };
    if let Err(e) = host.store.put_connection(record).await {
        tracing::error!(error = %e, "connection record not written; refusing the connection");
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
            connection::discard_record(&host, &context.connection_id).await;
        }
        return;
    }

    let mut subprotocol = None;
    if let Some(route) = host.routes.get("$connect") {
        let event = Event::new(
            "$connect",
            request_id,
            context.clone(),
            EventKind::Connect {
                headers: Arc::new(request_headers(
                    &head,
                    origin,
                    &trace,
                    Audience::Integration,
                )),
                query: query.map(Arc::new),
            },
        );
        let (status, body): (u16, &[u8]) = match route.invoke(&event).await {
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
        if status != 101 {
            tracing::info!(status, "$connect rejected the connection");
            connection::discard_record(&host, &context.connection_id).await;
            let _ = write_response(&mut stream, status, &[], body).await;
            return;
        }
    }

    if let Some(authorizer) = &host.authorizer {
        let offered = MultiMap::from_headers(
            head.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
                .map(|(n, v)| (n.as_str(), v.as_str())),
        );
        subprotocol = authorizer.subprotocol(&offered, subprotocol);
    }

    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nDate: {}\r\nConnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {}\r\n",
        ids::http_date(connected_at),
        derive_accept_key(key.as_bytes())
    );
    if let Some(p) = &subprotocol {
        response.push_str("sec-websocket-protocol: ");
        response.push_str(p);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    // Registered before the 101 is written, so the ID is usable the moment the client reads it
    // (as on API Gateway): a post that arrives first waits in the queue until the 101 is out.
    let handle = connection::register(&host, context);
    let written =
        tokio::time::timeout(super::WRITE_TIMEOUT, stream.write_all(response.as_bytes())).await;
    if let Err(e) = written.map_err(std::io::Error::from).and_then(|w| w) {
        tracing::info!(error = %e, "client left before the 101 was sent");
        connection::unregister(&host, &handle);
        connection::finish(&host, &handle.context, 1006, "Connection closed abnormally").await;
        return;
    }
    tracing::debug!("connected");
    // The request head is not needed for the rest of the connection's life.
    drop(head);
    let ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(host.ws_config))
            .await;
    // A task's memory is its future's largest state, held for as long as the task runs. The
    // handshake's states (TLS, the request head, the authorizer, the store write, `$connect`) are
    // many times larger than an open connection needs, so the connection moves to a task sized
    // for serving it alone, and this one ends (see BENCHMARKS.md, idle memory).
    let held = (ip_slot, _principal_slot, permit);
    let tasks = host.tasks.clone();
    tasks.spawn(connection::run_registered(host, ws, handle, held).in_current_span());
}

struct Rejection {
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
    log: &'static str,
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
            headers: &[],
            body: b"{\"message\":\"Forbidden\"}",
            log: "origin not in limits.allowed_origins",
        });
    }
    let too_many = |log| Rejection {
        status: 429,
        headers: &[],
        body: TOO_MANY_REQUESTS,
        log,
    };
    // IPv4 clients of a dual-stack listener arrive as IPv4-mapped IPv6 addresses.
    let slot = limits
        .per_ip
        .try_acquire(peer.ip().to_canonical())
        .ok_or(too_many("limits.connections_per_ip reached"))?;
    if !limits.new_connections.try_acquire() {
        return Err(too_many("limits.connections_per_second reached"));
    }
    if host
        .routes
        .get("$connect")
        .is_some_and(|route| !route.admit())
    {
        return Err(too_many("the $connect route's throttling reached"));
    }
    Ok(slot)
}

fn validate<'h>(host: &Host, head: &'h Head, path: &str) -> Result<&'h str, Rejection> {
    if head.target.len() > MAX_URL_LENGTH {
        return Err(Rejection {
            status: 414,
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
            headers: &[],
            body: b"{\"message\":\"Forbidden\"}",
            log: "unknown stage",
        });
    }
    let bad = |log| Rejection {
        status: 400,
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
    let client = head
        .headers
        .iter()
        .filter(|(n, _)| !dropped(n))
        .map(|(n, v)| (n.as_str(), v.as_str()));
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
