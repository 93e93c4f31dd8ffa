//! WebSocket clients of a host: tokio-tungstenite for ordinary clients, raw TCP for exact request
//! heads, header casing and hand-made frames.

use crate::{WAIT, within, within_for};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The HTTP response to a client handshake.
pub type HandshakeResponse = tokio_tungstenite::tungstenite::handshake::client::Response;

/// Connects to `ws://ADDR{path}` with extra request headers.
pub async fn try_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    config: Option<WebSocketConfig>,
) -> Result<(Ws, HandshakeResponse), WsError> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    for (k, v) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    within(
        "WebSocket handshake",
        tokio_tungstenite::connect_async_with_config(request, config, true),
    )
    .await
}

/// Connects to `ws://ADDR/dev`, expecting success.
pub async fn connect(addr: SocketAddr) -> Ws {
    try_connect(addr, "/dev", &[], None)
        .await
        .expect("connect to /dev")
        .0
}

/// Opens a WebSocket to `url`; a refused handshake is its HTTP status. Bounded by 30 s, not
/// [`WAIT`]: a host process may start a function process for the first `$connect`.
pub async fn ws_connect(url: &str) -> Result<Ws, u16> {
    let handshake = tokio_tungstenite::connect_async(url);
    match within_for("WebSocket handshake", Duration::from_secs(30), handshake).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connecting to {url} failed unexpectedly: {e}"),
    }
}

/// The HTTP status of a refused handshake.
pub fn refused_status(result: Result<(Ws, HandshakeResponse), WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok((_, response)) => panic!("expected a refusal, got {}", response.status()),
    }
}

/// The next data or close message (pings and pongs skipped), within [`WAIT`].
pub async fn next_message(ws: &mut Ws) -> Message {
    next_message_within(ws, WAIT).await
}

/// The next data or close message (pings and pongs skipped), within `bound`.
pub async fn next_message_within(ws: &mut Ws, bound: Duration) -> Message {
    within_for("a WebSocket message", bound, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                Some(Err(e)) => panic!("WebSocket error: {e}"),
                None => panic!("WebSocket ended without a Close frame"),
            }
        }
    })
    .await
}

/// The next message, which must be text, within [`WAIT`].
pub async fn next_text(ws: &mut Ws) -> String {
    next_text_within(ws, WAIT).await
}

/// The next message, which must be text, within `bound` (e.g. longer, for a function process that
/// starts on the first event).
pub async fn next_text_within(ws: &mut Ws, bound: Duration) -> String {
    match next_message_within(ws, bound).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Reads the server's Close frame (the next message), completes the close handshake, and returns
/// the frame's code and reason.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    let closed = match next_message(ws).await {
        Message::Close(Some(frame)) => (frame.code.into(), frame.reason.to_string()),
        Message::Close(None) => (1005, String::new()),
        other => panic!("expected a Close frame, got {other:?}"),
    };
    // Polling on sends the queued Close reply; the stream then ends.
    let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    closed
}

/// Sends a text message.
pub async fn send_text(ws: &mut Ws, text: &str) {
    within("send", ws.send(Message::text(text)))
        .await
        .expect("send text");
}

/// Sends `request` verbatim and reads the whole response (the host closes after refusals).
/// Returns (status, head, body).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    within("raw response", stream.read_to_end(&mut out))
        .await
        .expect("read response");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("complete response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// A header's value in a raw response head (case-insensitive name).
pub fn raw_header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An upgrade request for `target` with exact header lines (`extra` ends with `\r\n` per line).
pub fn upgrade_request(addr: SocketAddr, target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Performs an upgrade over raw TCP (optionally with a custom socket) and returns the stream
/// positioned after the 101 head.
pub async fn raw_upgrade(addr: SocketAddr, target: &str, extra: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap();
    raw_upgrade_on(stream, addr, target, extra).await
}

/// Like [`raw_upgrade`] on an already connected stream.
pub async fn raw_upgrade_on(
    mut stream: TcpStream,
    addr: SocketAddr,
    target: &str,
    extra: &str,
) -> TcpStream {
    stream
        .write_all(upgrade_request(addr, target, extra).as_bytes())
        .await
        .unwrap();
    // Read byte by byte so nothing after the head is consumed.
    let mut head = Vec::new();
    within("101 head", async {
        while !head.ends_with(b"\r\n\r\n") {
            let b = stream.read_u8().await.expect("101 head");
            head.push(b);
        }
    })
    .await;
    let head = String::from_utf8(head).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "expected 101, got {head}"
    );
    stream
}

/// A masked client frame with FIN set.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Wraps a raw, upgraded stream as a client WebSocket (for reading what the host sends).
pub async fn wrap_client(stream: TcpStream) -> Ws {
    WebSocketStream::from_raw_socket(
        MaybeTlsStream::Plain(stream),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await
}
