//! The client side: accepts TCP connections (over TLS when `server.tls` is set), reads the request
//! head, and either runs the WebSocket handshake (authorization and `$connect` before the 101) or
//! hands plain HTTP to the management API.

mod connection;
mod handshake;
pub mod head;
pub mod io;
mod reliable;

#[cfg(test)]
mod timer_tests;
use crate::host::Host;
use crate::limits::ConnectionPermit;
use crate::tls::Accepted;
use bytes::BytesMut;
use head::HeadError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[cfg(test)]
use connection::run_connection;

/// How long a handshake response (a refusal, or the 101) may take to write: they are small, so
/// only a client that does not read takes longer, and it must not hold its task.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to a connection over `limits.max_connections`: short, fixed, and final, so a load
/// balancer moves on to another host.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 33\r\nConnection: close\r\n\r\n{\"message\":\"Service Unavailable\"}";

/// Where a client connection arrived, as the forwarding headers of its events report it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The listener's port (`X-Forwarded-Port`).
    pub local_port: u16,
    /// Whether the connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

/// Serves one accepted client connection: a WebSocket upgrade, or plain HTTP (the management API
/// too when `serve_management`); over TLS when `tls` is given.
pub async fn handle_tcp(
    host: Arc<Host>,
    stream: TcpStream,
    peer: SocketAddr,
    serve_management: bool,
    tls: Option<crate::tls::TlsAcceptor>,
) {
    // Counted from the accept, before anything is read: the cap bounds what the host holds
    // whatever its clients send (or do not).
    let Some(permit) = host.limits.try_admit_connection() else {
        tracing::debug!(%peer, "limits.max_connections reached; connection refused");
        host.metrics
            .handshake(crate::metrics::Handshake::Unavailable);
        refuse_over_capacity(stream, tls.is_some()).await;
        return;
    };
    // One budget for the TLS handshake and the request head, so TLS cannot double a slow client's time.
    let deadline = Instant::now() + host.config.server.handshake_timeout;
    let origin = Origin {
        peer,
        local_port: stream.local_addr().map(|a| a.port()).unwrap_or_default(),
        tls: tls.is_some(),
    };
    // Generic rather than boxed: plain TCP keeps its direct, allocation-free reads and writes.
    match tls {
        None => handle(host, stream, origin, deadline, serve_management, permit).await,
        Some(acceptor) => {
            let handshake =
                crate::tls::handshake(&acceptor, stream, peer, deadline, &host.shutdown);
            match handshake.await {
                Some(Accepted::Tls(stream)) => {
                    handle(host, stream, origin, deadline, serve_management, permit).await;
                }
                Some(Accepted::PlainText(mut stream)) => refuse_plain_text(&mut stream).await,
                None => {}
            }
        }
    }
}

/// [`handle_tcp`] once the transport is ready: reads the head by `deadline` and dispatches it.
async fn handle<S>(
    host: Arc<Host>,
    mut stream: S,
    origin: Origin,
    deadline: Instant,
    serve_management: bool,
    permit: ConnectionPermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = origin.peer;
    let mut buf = BytesMut::with_capacity(1024);
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, head::read_head(&mut stream, &mut buf)) => read,
        // Browsers open spare connections they may never use; on shutdown they must not hold the
        // drain up until the handshake timeout.
        _ = host.shutdown.cancelled() => return,
    };
    let (head, len) = match read {
        Ok(Ok(parsed)) => parsed,
        Err(_) => {
            tracing::debug!(%peer, "request head not received within handshake_timeout");
            let _ =
                write_response(&mut stream, 408, &[], b"{\"message\":\"Request Timeout\"}").await;
            return;
        }
        Ok(Err(HeadError::Io(_))) => return,
        Ok(Err(e @ (HeadError::TooLarge | HeadError::TooManyHeaders))) => {
            tracing::info!(%peer, error = %e, "request refused");
            let _ = write_response(
                &mut stream,
                431,
                &[],
                b"{\"message\":\"Request Header Fields Too Large\"}",
            )
            .await;
            return;
        }
        Ok(Err(e @ HeadError::Malformed(_))) => {
            tracing::info!(%peer, error = %e, "request refused");
            let _ = write_response(&mut stream, 400, &[], b"{\"message\":\"Bad Request\"}").await;
            return;
        }
    };
    if head.is_websocket_upgrade() {
        // Copied out so the head buffer is freed: the connection lives on with only what it needs.
        let leftover = buf[len..].to_vec();
        drop(buf);
        // The connection's place under `limits.max_connections` goes with it to its own task.
        handshake::accept(host, stream, origin, head, leftover, permit).await;
    } else {
        let io = io::Prefixed::new(buf.freeze(), stream);
        crate::management::serve_http(host, io, serve_management).await;
    }
}

/// Answers a connection over `limits.max_connections` with [`OVER_CAPACITY`] and closes it. A TLS
/// listener closes without an answer: a TLS handshake is the work the cap is there to refuse.
async fn refuse_over_capacity(mut stream: TcpStream, tls: bool) {
    if tls {
        return;
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(OVER_CAPACITY).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes (briefly, and a head's worth at most): closing
        // with unread bytes would reset the connection, and the client could lose the 503.
        let mut sink = [0u8; 1024];
        let mut left = head::MAX_HEAD_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// Answers a plain-text client on a TLS listener with a plain 400 telling it to use TLS.
pub(crate) async fn refuse_plain_text(stream: &mut TcpStream) {
    let _ = write_response(stream, 400, &[], crate::tls::PLAIN_TEXT_REFUSAL).await;
}

/// Writes a complete, non-upgrade HTTP response and closes the write side, within
/// [`WRITE_TIMEOUT`].
pub(crate) async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nDate: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nx-amzn-RequestId: {}\r\n",
        crate::ids::http_date(crate::ids::now_ms()),
        body.len(),
        uuid::Uuid::new_v4()
    );
    for (k, v) in headers {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await?
}
