//! End-to-end tests of the abuse limits (`[limits]`): the origin allowlist, new connections per
//! second, concurrent connections per source IP and per principal, the per-connection message rate
//! and what happens to a flooder, the stage's route throttling (`api.default_route_settings`,
//! `[routes."KEY"] throttling_*`), the management API's rate, and the request-head limits (URL
//! length, header count and size, handshake timeout). A host in-process over real sockets.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A handler for `$connect`/`$disconnect` that refuses `?reject=1` with 403 and accepts the rest.
async fn gatekeeper() -> Handler {
    Handler::start(|event| {
        if query_param(event, "reject") == Some("1") {
            Reply::proxy(403, None)
        } else {
            Reply::proxy(200, None)
        }
    })
    .await
}

/// Routes `$connect` and `$disconnect` to `handler`, echoes every message (two-way MOCK), and
/// applies `limits` (lines of the `[limits]` section).
fn config(handler: &Handler, limits: &str) -> String {
    format!(
        r#"
[limits]
{limits}
[routes."$connect"]
integration = "h"
[routes."$disconnect"]
integration = "h"
[routes."$default"]
integration = "echo"
two_way = true
[integrations.h]
type = "http"
url = "{url}"
[integrations.echo]
type = "mock"
response_template = "$input.body"
{WHOAMI}
"#,
        url = handler.url
    )
}

fn connects(handler: &Handler) -> usize {
    handler
        .events()
        .iter()
        .filter(|e| event_type(e) == "CONNECT")
        .count()
}

/// A WebSocket handshake from the local address `ip` (any 127.0.0.0/8 address works on Linux).
async fn connect_from(
    ip: Ipv4Addr,
    addr: SocketAddr,
    target: &str,
) -> Result<WebSocketStream<TcpStream>, WsError> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(ip), 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    within(
        "handshake",
        tokio_tungstenite::client_async(format!("ws://{addr}{target}"), stream),
    )
    .await
    .map(|(ws, _)| ws)
}

/// The HTTP status of a handshake made by [`connect_from`] (101 when it succeeded).
fn status_of<S>(result: &Result<S, WsError>) -> u16 {
    match result {
        Ok(_) => 101,
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP answer, got {e}"),
    }
}

#[tokio::test]
async fn origins_outside_the_allowlist_get_403() {
    let handler = gatekeeper().await;
    let host = TestHost::start(&config(
        &handler,
        r#"allowed_origins = ["https://app.example.com", "https://*.example.org"]"#,
    ))
    .await;
    let a = host.addr;
    let (status, _, body) = raw_exchange(
        a,
        upgrade_request(a, "/dev", "Origin: https://evil.example.com\r\n").as_bytes(),
    )
    .await;
    assert_eq!((status, body.as_str()), (403, r#"{"message":"Forbidden"}"#));
    let refused = try_connect(a, "/dev", &[("Origin", "https://example.org")], None).await;
    assert_eq!(refused_status(refused), 403);

    for origin in [
        Some("https://app.example.com"),
        Some("https://chat.example.org"),
        None,
    ] {
        let headers: Vec<_> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let (mut ws, _) = try_connect(a, "/dev", &headers, None)
            .await
            .unwrap_or_else(|e| panic!("{origin:?} is allowed: {e}"));
        ws.close(None).await.unwrap();
    }
    // Only the three allowed connections reached $connect.
    handler
        .wait_for("three $disconnects", |_| {
            handler
                .events()
                .iter()
                .filter(|e| event_type(e) == "DISCONNECT")
                .count()
                == 3
        })
        .await;
    assert_eq!(connects(&handler), 3);
}

#[tokio::test]
async fn a_burst_above_connections_per_second_gets_429() {
    let handler = gatekeeper().await;
    let host = TestHost::start(&config(&handler, "connections_per_second = 5")).await;
    let attempts =
        futures_util::future::join_all((0..20).map(|_| try_connect(host.addr, "/dev", &[], None)))
            .await;
    let mut open = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt {
            Ok((ws, _)) => open.push(ws),
            Err(WsError::Http(response)) => {
                assert_eq!(response.status().as_u16(), 429);
                let body = response.body().as_deref().unwrap_or_default();
                assert_eq!(body, br#"{"message":"Too Many Requests"}"#);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    println!(
        "20 simultaneous handshakes at 5/s: {} accepted, {refused} refused with 429",
        open.len()
    );
    // The burst is 5; one more may have refilled while the 20 were answered.
    assert!((5..=6).contains(&open.len()), "{} accepted", open.len());
    assert_eq!(
        connects(&handler),
        open.len(),
        "refused handshakes ran no $connect"
    );
    // A token comes back every 200 ms: a client is admitted again once it has.
    let mut later = eventually_some("a client admitted after the refill", WAIT, async || {
        try_connect(host.addr, "/dev", &[], None).await.ok()
    })
    .await
    .0;
    later.close(None).await.unwrap();
}

#[tokio::test]
async fn connections_per_ip_counts_open_connections_and_frees_them() {
    let handler = gatekeeper().await;
    let host = TestHost::start(&config(&handler, "connections_per_ip = 2")).await;
    let a = host.addr;
    let local = Ipv4Addr::new(127, 0, 0, 1);
    let mut first = connect_from(local, a, "/dev").await.expect("first");
    let _second = connect_from(local, a, "/dev").await.expect("second");
    assert_eq!(status_of(&connect_from(local, a, "/dev").await), 429);
    // Another address has its own count.
    let other = connect_from(Ipv4Addr::new(127, 0, 0, 2), a, "/dev").await;
    assert_eq!(status_of(&other), 101);

    // Handshakes that fail give their place back: with 2 open, rejected ones still reach $connect
    // (403), never 429.
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    eventually(
        "the closed connection's place to come back",
        WAIT,
        async || status_of(&connect_from(local, a, "/dev?reject=1").await) == 403,
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            status_of(&connect_from(local, a, "/dev?reject=1").await),
            403
        );
    }
    let _third = connect_from(local, a, "/dev")
        .await
        .expect("room for one again");
    assert_eq!(status_of(&connect_from(local, a, "/dev").await), 429);
}

/// `config` with `$connect` guarded by a Lambda authorizer at `function`.
fn with_authorizer(config: &str, function: &str) -> String {
    format!(
        "{}\n[authorizers.auth]\nfunction_name = \"auth\"\nendpoint_url = \"{function}\"\n",
        config.replace(
            "[routes.\"$connect\"]\nintegration = \"h\"",
            "[routes.\"$connect\"]\nintegration = \"h\"\nauthorizer = \"auth\"",
        )
    )
}

#[tokio::test]
async fn connections_per_principal_counts_the_authorizers_principal() {
    let handler = gatekeeper().await;
    let function = authorizer_function().await;
    let host = TestHost::start(&with_authorizer(
        &config(&handler, "connections_per_principal = 2"),
        &function,
    ))
    .await;
    let a = host.addr;
    let as_user = |user: &'static str| async move {
        try_connect(a, "/dev", &[("Authorization", user)], None).await
    };
    let (mut alice1, _) = as_user("alice").await.expect("alice 1");
    let (_alice2, _) = as_user("alice").await.expect("alice 2");
    assert_eq!(refused_status(as_user("alice").await), 429);
    let (_bob, _) = as_user("bob").await.expect("bob has his own count");
    assert_eq!(
        connects(&handler),
        3,
        "the refused handshake ran no $connect"
    );

    alice1.close(None).await.unwrap();
    while alice1.next().await.is_some() {}
    let _again = eventually_some(
        "alice's closed connection to give its place back",
        WAIT,
        async || as_user("alice").await.ok(),
    )
    .await;
    let events = handler.events();
    let connect = events
        .iter()
        .rev()
        .find(|e| event_type(e) == "CONNECT")
        .unwrap();
    assert_eq!(
        connect["requestContext"]["authorizer"]["principalId"],
        "alice"
    );
}

/// API Gateway does not count connections per principal: under `profile = "aws"` one principal
/// opens more connections than the default profile's 5.
#[tokio::test]
async fn the_aws_profile_does_not_count_connections_per_principal() {
    let handler = gatekeeper().await;
    let function = authorizer_function().await;
    let host = TestHost::start(&format!(
        "[api]\nprofile = \"aws\"\n{}",
        with_authorizer(&config(&handler, ""), &function)
    ))
    .await;
    let mut open = Vec::new();
    for n in 1..=8 {
        let (ws, _) = try_connect(host.addr, "/dev", &[("Authorization", "alice")], None)
            .await
            .unwrap_or_else(|e| panic!("alice's connection {n} refused: {e}"));
        open.push(ws);
    }
    assert_eq!(connects(&handler), 8);
}

#[tokio::test]
async fn a_flooder_is_throttled_then_closed_while_others_keep_their_latency() {
    let handler = gatekeeper().await;
    let host = TestHost::start(&config(
        &handler,
        "messages_per_second = 50\nmessage_burst = 50\nmax_throttled_messages = 20000",
    ))
    .await;
    let (mut calm, _) = try_connect(host.addr, "/dev", &[], None).await.unwrap();
    let (flooder, _) = try_connect(host.addr, "/dev", &[], None).await.unwrap();
    send_text(&mut calm, r#"{"action":"whoami"}"#).await;
    let calm_reply: Value = serde_json::from_str(&next_text(&mut calm).await).unwrap();
    assert!(calm_reply["connectionId"].is_string());

    let (mut sink, mut stream) = flooder.split();
    let flood_start = Instant::now();
    let flood = tokio::spawn(async move {
        let mut sent = 0u32;
        for i in 0..1_000_000 {
            if sink
                .send(Message::text(format!("flood {i}")))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    });
    let flooding = Arc::new(AtomicBool::new(true));
    let flood_on = flooding.clone();
    let watch = tokio::spawn(async move {
        let (mut echoes, mut throttled, mut close) = (0u32, 0u32, None);
        let mut throttle_frame = None;
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(t) if t.starts_with("flood ") => echoes += 1,
                Message::Text(t) => {
                    throttled += 1;
                    throttle_frame.get_or_insert_with(|| t.to_string());
                }
                Message::Close(frame) => {
                    close = frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                _ => {}
            }
        }
        flood_on.store(false, Ordering::Relaxed);
        (
            echoes,
            throttled,
            close,
            throttle_frame,
            flood_start.elapsed(),
        )
    });

    // Meanwhile the calm client's round trips, one every 25 ms (40/s, within its own rate), for
    // as long as the flood lasts (and at least 20).
    let mut latencies = Vec::new();
    let mut during_flood = 0;
    for i in 0.. {
        let flood_active = flooding.load(Ordering::Relaxed);
        if !flood_active && i >= 20 {
            break;
        }
        assert!(i < 2000, "the flooder was never closed");
        let text = format!("calm {i}");
        let t = Instant::now();
        send_text(&mut calm, &text).await;
        assert_eq!(next_text(&mut calm).await, text);
        latencies.push(t.elapsed());
        during_flood += usize::from(flood_active);
        // The calm client's pace (part of the scenario, not a wait for anything).
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (echoes, throttled, close, frame, flood_time) =
        within("the flooder's end", watch).await.unwrap();
    let sent = flood.await.unwrap();
    latencies.sort();
    println!(
        "flooder: {sent} sent in {flood_time:?} before the close, {echoes} echoed, {throttled} throttle frames, closed with {close:?}; \
         calm client: {} round trips ({during_flood} during the flood), p50 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert_eq!(close, Some((1008, "Message rate exceeded".to_string())));
    assert!(echoes >= 50, "the burst was served: {echoes}");
    // 20,000 per 10 s: the whole tolerance, plus what refilled (2,000/s) while the flood lasted.
    let refilled = (flood_time.as_secs_f64() * 2_000.0).ceil() as u32;
    assert!(
        (20_000..=20_000 + refilled + 100).contains(&throttled),
        "{throttled} throttle frames in {flood_time:?}"
    );
    let frame = frame.unwrap();
    let re = regex_lite::Regex::new(
        r#"^\{"message": "Too Many Requests", "connectionId":"[A-Za-z0-9_-]{15}=", "requestId":"[A-Za-z0-9_-]{15}="\}$"#,
    )
    .unwrap();
    assert!(re.is_match(&frame), "{frame}");
    assert!(
        latencies[latencies.len() - 1] < Duration::from_secs(1),
        "the calm client kept being served"
    );
    let disconnect = handler
        .wait_for("the flooder's $disconnect", |e| {
            event_type(e) == "DISCONNECT" && e["requestContext"]["disconnectStatusCode"] == 1008
        })
        .await;
    assert_eq!(
        disconnect["requestContext"]["disconnectReason"],
        "Message rate exceeded"
    );
    // The calm client is still connected.
    send_text(&mut calm, "still here").await;
    assert_eq!(next_text(&mut calm).await, "still here");
}

#[tokio::test]
async fn a_management_flood_gets_limit_exceeded_then_recovers() {
    let handler = gatekeeper().await;
    let host = TestHost::start(&config(
        &handler,
        "management_requests_per_second = 100\nmanagement_burst = 20",
    ))
    .await;
    let mut ws = connect(host.addr).await;
    send_text(&mut ws, r#"{"action":"whoami"}"#).await;
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    let id = reply["connectionId"].as_str().unwrap().to_string();
    let sdk = mgmt_client(host.addr);

    let calls = (0..60).map(|_| sdk.get_connection().connection_id(&id).send());
    let flood_start = Instant::now();
    let results = futures_util::future::join_all(calls).await;
    let flood_time = flood_start.elapsed();
    let mut ok = 0;
    let mut limited = 0;
    for result in results {
        match result {
            Ok(_) => ok += 1,
            Err(e) => {
                let e = e.into_service_error();
                assert!(e.is_limit_exceeded_exception(), "{e:?}");
                limited += 1;
            }
        }
    }
    println!(
        "60 simultaneous GetConnection at 100/s, burst 20, in {flood_time:?}: {ok} served, {limited} LimitExceededException"
    );
    // The burst, plus what refilled (100/s) while the calls were arriving.
    let refilled = (flood_time.as_secs_f64() * 100.0).ceil() as usize;
    assert!(
        (20..=20 + refilled + 1).contains(&ok),
        "{ok} served in {flood_time:?}"
    );

    // The wire format: 429, x-amzn-ErrorType, a JSON message.
    let mut stream = TcpStream::connect(host.addr).await.unwrap();
    let request = format!(
        "GET /dev/@connections/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        id.replace('=', "%3D"),
        host.addr
    );
    let mut raw = String::new();
    for _ in 0..40 {
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.read_to_string(&mut raw).await.unwrap();
        if raw.starts_with("HTTP/1.1 429") {
            break;
        }
        raw.clear();
        stream = TcpStream::connect(host.addr).await.unwrap();
    }
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a 429 among 40 quick calls");
    assert_eq!(
        raw_header(head, "x-amzn-ErrorType"),
        Some("LimitExceededException")
    );
    assert_eq!(body, r#"{"message":"Too Many Requests"}"#);

    // Tokens come back at 100/s: calls are served again once they have.
    eventually("a call served again after the refill", WAIT, async || {
        sdk.post_to_connection()
            .connection_id(&id)
            .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(
                "after the flood",
            ))
            .send()
            .await
            .is_ok()
    })
    .await;
    assert_eq!(next_text(&mut ws).await, "after the flood");
}

#[tokio::test]
async fn request_head_limits() {
    let host = TestHost::start("[server]\nhandshake_timeout = \"300ms\"").await;
    let a = host.addr;

    // URL: 4096 characters at most (API Gateway's quota), else 414.
    let long = format!("/dev?q={}", "x".repeat(4097 - "/dev?q=".len()));
    assert_eq!(long.len(), 4097);
    let (status, _, _) = raw_exchange(a, upgrade_request(a, &long, "").as_bytes()).await;
    assert_eq!(status, 414);

    // More than 100 header lines, or a head over 16 KiB: 431.
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _, body) = raw_exchange(a, upgrade_request(a, "/dev", &many).as_bytes()).await;
    assert_eq!(status, 431);
    assert_eq!(body, r#"{"message":"Request Header Fields Too Large"}"#);
    let big = format!("X-Big: {}\r\n", "b".repeat(16 * 1024));
    let (status, _, _) = raw_exchange(a, upgrade_request(a, "/dev", &big).as_bytes()).await;
    assert_eq!(status, 431);

    // A slow client that sends half a head gets 408 after handshake_timeout.
    for partial in [&b"GET /dev HTTP/1.1\r\nHost: x\r\n"[..], b""] {
        let started = Instant::now();
        let mut stream = TcpStream::connect(a).await.unwrap();
        stream.write_all(partial).await.unwrap();
        let mut out = String::new();
        within("408", stream.read_to_string(&mut out))
            .await
            .unwrap();
        let waited = started.elapsed();
        println!(
            "half-sent head ({} bytes): 408 after {waited:?}",
            partial.len()
        );
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(out.ends_with(r#"{"message":"Request Timeout"}"#), "{out}");
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
    }
}

#[tokio::test]
async fn a_connection_flood_is_refused_while_a_connected_client_keeps_its_latency() {
    const RATE: usize = 20;
    const ATTEMPTS: usize = 500;
    const IN_FLIGHT: usize = 50;
    let handler = gatekeeper().await;
    let host = TestHost::start(&config(
        &handler,
        &format!("connections_per_second = {RATE}"),
    ))
    .await;
    let mut calm = connect(host.addr).await;
    send_text(&mut calm, r#"{"action":"whoami"}"#).await;
    let calm_reply: Value = serde_json::from_str(&next_text(&mut calm).await).unwrap();
    assert!(calm_reply["connectionId"].is_string());

    let addr = host.addr;
    let flooding = Arc::new(AtomicBool::new(true));
    let flood_on = flooding.clone();
    let flood = tokio::spawn(async move {
        let started = Instant::now();
        let mut attempts = futures_util::stream::iter(0..ATTEMPTS)
            .map(|_| try_connect(addr, "/dev", &[], None))
            .buffer_unordered(IN_FLIGHT);
        let (mut accepted, mut refused) = (0usize, 0usize);
        while let Some(attempt) = attempts.next().await {
            match attempt {
                Ok((mut ws, _)) => {
                    accepted += 1;
                    ws.close(None).await.unwrap();
                }
                Err(WsError::Http(response)) => {
                    assert_eq!(response.status().as_u16(), 429);
                    let body = response.body().as_deref().unwrap_or_default();
                    assert_eq!(body, br#"{"message":"Too Many Requests"}"#);
                    refused += 1;
                }
                Err(e) => panic!("a flood handshake failed without an HTTP answer: {e}"),
            }
        }
        let took = started.elapsed();
        flood_on.store(false, Ordering::Relaxed);
        (accepted, refused, took)
    });

    // The calm client's round trips, one every 10 ms, for as long as the flood lasts (and at
    // least 20).
    let mut latencies = Vec::new();
    let mut during_flood = 0;
    for i in 0.. {
        let flood_active = flooding.load(Ordering::Relaxed);
        if !flood_active && i >= 20 {
            break;
        }
        assert!(i < 3000, "the flood never ended");
        let text = format!(r#"{{"action":"echo","n":{i}}}"#);
        let t = Instant::now();
        send_text(&mut calm, &text).await;
        assert_eq!(next_text(&mut calm).await, text);
        latencies.push(t.elapsed());
        during_flood += usize::from(flood_active);
        // The calm client's pace (part of the scenario, not a wait for anything).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (accepted, refused, flood_time) = within("the flood's end", flood).await.unwrap();
    latencies.sort();
    let (p50, max) = (
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    println!(
        "{ATTEMPTS} handshakes ({IN_FLIGHT} in flight) at {RATE}/s in {flood_time:?}: {accepted} accepted, \
         {refused} refused with 429; calm client: {} round trips ({during_flood} during the flood), p50 {p50:?}, max {max:?}",
        latencies.len()
    );
    assert_eq!(accepted + refused, ATTEMPTS);
    // The calm client took one token just before; what is left of the burst, at least, is served.
    assert!(accepted >= RATE - 1, "{accepted} accepted");
    // At most the burst, plus what refilled while the flood lasted.
    let refilled = (flood_time.as_secs_f64() * RATE as f64).ceil() as usize;
    assert!(
        accepted <= RATE + refilled,
        "{accepted} accepted in {flood_time:?}"
    );
    assert!(
        during_flood > 0,
        "the calm client was served during the flood"
    );
    assert!(max < Duration::from_secs(1), "calm round trip took {max:?}");
    // $connect runs before the 101, so every accepted handshake has been seen by now.
    assert_eq!(
        connects(&handler),
        accepted + 1,
        "refused handshakes ran no $connect"
    );
    send_text(&mut calm, r#"{"action":"echo","after":true}"#).await;
    assert_eq!(
        next_text(&mut calm).await,
        r#"{"action":"echo","after":true}"#
    );
}

// ---------------------------------------------------------------------------------------------
// Clients that ping but never read, and the connection cap.
// ---------------------------------------------------------------------------------------------

/// Connects from a socket with small buffers, upgrades, then keeps sending Pings (125-byte
/// payloads, so each Pong is 127 bytes) without ever reading, until the host closes the
/// connection. Returns the flooding task and a signal that fires once a batch has not gone out
/// for 500 ms: the host has stopped reading, stalled on its Pong writes (the flooding goes on, so
/// a slow host that was only behind stalls soon after).
async fn flood_pings(addr: SocketAddr) -> (tokio::task::JoinHandle<()>, oneshot::Receiver<()>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut stream = raw_upgrade_on(stream, addr, "/dev", "").await;
    let batch: Vec<u8> = (0..64)
        .flat_map(|_| client_frame(0x9, &[b'p'; 125]))
        .collect();
    let (stalled, stalled_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut stalled = Some(stalled);
        loop {
            // Never cancelled mid-batch: a torn frame would be a protocol error of its own.
            let write = stream.write_all(&batch);
            tokio::pin!(write);
            let written = match tokio::time::timeout(Duration::from_millis(500), &mut write).await {
                Ok(written) => written,
                Err(_) => {
                    if let Some(stalled) = stalled.take() {
                        let _ = stalled.send(());
                    }
                    write.await
                }
            };
            if written.is_err() {
                return;
            }
        }
    });
    (task, stalled_rx)
}

/// Waits for [`flood_pings`]'s signal.
async fn stalled(signal: oneshot::Receiver<()>) {
    tokio::time::timeout(Duration::from_secs(60), signal)
        .await
        .expect("the host kept reading Pings it could not answer for 60 s")
        .expect("the flooder was closed before the host stalled");
}

/// The CONNECT event's connection ID of the only connection made so far.
async fn only_connection(handler: &Handler) -> String {
    conn_id(&handler.wait_route("$connect", None).await).to_string()
}

/// A bystander's echo round trip.
async fn still_echoes(addr: SocketAddr) {
    let mut ws = connect(addr).await;
    send_text(&mut ws, "still here").await;
    assert_eq!(next_text(&mut ws).await, "still here");
}

#[tokio::test]
async fn a_client_that_pings_but_never_reads_is_dropped_after_the_outbound_grace() {
    let handler = gatekeeper().await;
    let host = TestHost::start(&config(&handler, "outbound_full_grace = \"1s\"")).await;
    let (flooder, signal) = flood_pings(host.addr).await;
    let id = only_connection(&handler).await;
    // The host's receive buffer can take the flood for longer than the grace: either the flooder
    // sees the stall, or the host has already closed its connection.
    let _ = tokio::time::timeout(Duration::from_secs(60), signal).await;
    still_echoes(host.addr).await;
    // Its Pong write gives up after the grace (1 s), the Close frame after 2 s more.
    let d = handler.wait_route("$disconnect", Some(&id)).await;
    assert_eq!(d["requestContext"]["disconnectStatusCode"], 1008, "{d:#}");
    assert_eq!(
        d["requestContext"]["disconnectReason"],
        "Client not reading"
    );
    within("the flooder to see its connection closed", flooder)
        .await
        .unwrap();
    still_echoes(host.addr).await;
}

#[tokio::test]
async fn a_client_that_pings_but_never_reads_does_not_hold_up_shutdown() {
    let handler = gatekeeper().await;
    let mut host = TestHost::start(&config(&handler, "outbound_full_grace = \"1h\"")).await;
    let (flooder, signal) = flood_pings(host.addr).await;
    let id = only_connection(&handler).await;
    stalled(signal).await;
    still_echoes(host.addr).await;
    host.trigger_shutdown();
    // The stalled write ends with the shutdown; the Close frame gets its 2 s.
    let d = handler.wait_route("$disconnect", Some(&id)).await;
    assert_eq!(d["requestContext"]["disconnectStatusCode"], 1001, "{d:#}");
    host.join().await.expect("clean shutdown");
    within("the flooder to see its connection closed", flooder)
        .await
        .unwrap();
}

#[tokio::test]
async fn max_connections_refuses_with_503_before_the_head_and_admits_again_after_a_close() {
    let handler = gatekeeper().await;
    let host = TestHost::start(&config(&handler, "max_connections = 2")).await;
    let mut open = connect(host.addr).await;
    send_text(&mut open, "one").await;
    assert_eq!(next_text(&mut open).await, "one");
    // A connection that has sent nothing holds its place too: the cap is checked at the accept.
    let silent = TcpStream::connect(host.addr).await.unwrap();
    // The third gets the fixed 503 without sending anything...
    let mut third = TcpStream::connect(host.addr).await.unwrap();
    let mut answer = Vec::new();
    within("the 503", third.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with(r#"{"message":"Service Unavailable"}"#),
        "{answer}"
    );
    // ...and so does a WebSocket client, which never reaches `$connect`.
    let refused = try_connect(host.addr, "/dev", &[], None).await;
    assert_eq!(refused_status(refused), 503);
    assert_eq!(connects(&handler), 1);
    // Once one closes, a new connection is admitted (as soon as the host has let go of it).
    drop(silent);
    let admitted = eventually_some("a place after a close", WAIT, async || {
        match tokio_tungstenite::connect_async(format!("ws://{}/dev", host.addr)).await {
            Ok((ws, _)) => Some(ws),
            Err(WsError::Http(r)) if r.status() == 503 => None,
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    })
    .await;
    let mut admitted = admitted;
    send_text(&mut admitted, "two").await;
    assert_eq!(next_text(&mut admitted).await, "two");
    assert_eq!(connects(&handler), 2);
}

/// `GET {path}` on `addr`: the status and the JSON body.
async fn health_of(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test]
async fn health_reports_a_full_host_and_ready_answers_503_until_a_place_frees() {
    init_env();
    let config =
        connection_host::Config::from_toml(&format!("[limits]\nmax_connections = 2\n{WHOAMI}"))
            .unwrap();
    let public = connection_host::bind(([127, 0, 0, 1], 0).into(), 128).unwrap();
    let internal = connection_host::bind(([127, 0, 0, 1], 0).into(), 128).unwrap();
    let (public_addr, internal_addr) =
        (public.local_addr().unwrap(), internal.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let run = tokio::spawn(connection_host::run(
        config,
        connection_host::Listeners {
            public,
            management: Some(internal),
        },
        async move {
            let _ = rx.await;
        },
    ));
    let (status, body) = health_of(internal_addr, "/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "ok", "accepting": true, "connections": 0,
               "heldConnections": 0, "maxConnections": 2})
    );

    let _ws = connect(public_addr).await;
    // A TCP connection that has sent nothing takes a place too.
    let silent = TcpStream::connect(public_addr).await.unwrap();
    let full = json!({"status": "full", "accepting": false, "connections": 1,
                      "heldConnections": 2, "maxConnections": 2});
    let (status, body) = eventually_some("the host to count both", WAIT, async || {
        let (status, body) = health_of(internal_addr, "/health/ready").await;
        (body["heldConnections"] == 2).then_some((status, body))
    })
    .await;
    assert_eq!((status, &body), (503, &full));
    // `/health` itself stays 200: the process is alive, and a container health check must not
    // replace a host only because it is full.
    assert_eq!(health_of(internal_addr, "/health").await, (200, full));

    drop(silent);
    let (_, body) = eventually_some("a place after a close", WAIT, async || {
        let (status, body) = health_of(internal_addr, "/health/ready").await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(body["accepting"], true, "{body}");
    assert_eq!(body["heldConnections"], 1, "{body}");

    let _ = tx.send(());
    within("run to return", run).await.unwrap().unwrap();
}

#[tokio::test]
async fn ready_answers_503_draining_once_shutdown_has_started() {
    init_env();
    // A long handshake timeout: the held connection below sends its request only after the
    // shutdown has begun, however slow the machine.
    let config = connection_host::Config::from_toml(&format!(
        "[server]\nhandshake_timeout = \"60s\"\n{WHOAMI}"
    ))
    .unwrap();
    let public = connection_host::bind(([127, 0, 0, 1], 0).into(), 128).unwrap();
    let internal = connection_host::bind(([127, 0, 0, 1], 0).into(), 128).unwrap();
    let internal_addr = internal.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let run = tokio::spawn(connection_host::run(
        config,
        connection_host::Listeners {
            public,
            management: Some(internal),
        },
        async move {
            let _ = rx.await;
        },
    ));
    // A health checker's request in progress: its first line is sent, the rest comes once the
    // shutdown has begun. The management listener accepts in order, so once the request on the
    // connection made after it is answered, this one is being served; a connection that has
    // begun a request gets its answer while the host drains.
    let mut held = TcpStream::connect(internal_addr).await.unwrap();
    held.write_all(b"GET /health/ready HTTP/1.1\r\n")
        .await
        .unwrap();
    let (status, body) = health_of(internal_addr, "/health/ready").await;
    assert_eq!(
        (status, body["status"].clone()),
        (200, json!("ok")),
        "{body}"
    );

    let _ = tx.send(());
    // The listener closes once the shutdown has begun.
    eventually("the management listener to close", WAIT, async || {
        TcpStream::connect(internal_addr).await.is_err()
    })
    .await;
    held.write_all(b"Host: checker\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    within("the answer while draining", held.read_to_end(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 503 "),
        "a draining host is not ready: {response}"
    );
    let body: Value =
        serde_json::from_str(&response[response.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["status"], "draining", "{body}");
    assert_eq!(body["accepting"], false, "{body}");
    within("run to return", run).await.unwrap().unwrap();
}

/// API Gateway's frame for a throttled message.
fn is_throttle_frame(text: &str) -> bool {
    regex_lite::Regex::new(
        r#"^\{"message": "Too Many Requests", "connectionId":"[A-Za-z0-9_-]{15}=", "requestId":"[A-Za-z0-9_-]{15}="\}$"#,
    )
    .unwrap()
    .is_match(text)
}

#[tokio::test]
async fn a_throttled_route_answers_too_many_requests_while_other_routes_are_served() {
    // `limited`: 1 a second, burst 1. `rare`: one per 100 s, so its bucket stays empty for the
    // whole test whatever the machine's load. `$default`: not throttled.
    let route = |key: &str, settings: &str| {
        format!("[routes.{key}]\nintegration = \"echo\"\ntwo_way = true\n{settings}\n")
    };
    let toml = format!(
        "{}{}{}[integrations.echo]\ntype = \"mock\"\nresponse_template = \"$input.body\"\n",
        route(
            "limited",
            "throttling_rate_limit = 1\nthrottling_burst_limit = 1"
        ),
        route(
            "rare",
            "throttling_rate_limit = 0.01\nthrottling_burst_limit = 1"
        ),
        route("\"$default\"", ""),
    );
    let host = TestHost::start(&toml).await;
    let mut a = connect(host.addr).await;
    let mut b = connect(host.addr).await;

    // Two messages to `limited` at once: one is routed, the other (within the same second) gets
    // the throttling frame; the connection stays open.
    let limited = r#"{"action":"limited"}"#;
    let sent = Instant::now();
    send_text(&mut a, limited).await;
    send_text(&mut a, limited).await;
    let between = sent.elapsed();
    assert!(between < Duration::from_secs(1), "sent {between:?} apart");
    let mut replies = [next_text(&mut a).await, next_text(&mut a).await];
    replies.sort();
    assert_eq!(replies[0], limited, "{replies:?}");
    assert!(is_throttle_frame(&replies[1]), "{replies:?}");
    println!("two messages {between:?} apart to a route at 1/s, burst 1: {replies:?}");

    // Other routes are not affected, on this connection or another.
    for i in 0..20 {
        let body = format!(r#"{{"action":"other","i":{i}}}"#);
        send_text(&mut a, &body).await;
        assert_eq!(next_text(&mut a).await, body);
    }
    send_text(&mut b, "plain text goes to $default").await;
    assert_eq!(next_text(&mut b).await, "plain text goes to $default");

    // The bucket is the route's, over every connection: `rare`'s one token, taken by `a`, is not
    // there for `b`.
    let rare = r#"{"action":"rare"}"#;
    send_text(&mut a, rare).await;
    assert_eq!(next_text(&mut a).await, rare);
    send_text(&mut b, rare).await;
    assert!(is_throttle_frame(&next_text(&mut b).await));
    send_text(&mut b, "still served").await;
    assert_eq!(next_text(&mut b).await, "still served");
}

#[tokio::test]
async fn a_throttled_connect_route_answers_429_and_routes_override_the_stage_default() {
    let handler = gatekeeper().await;
    // The stage default (burst 2, then one per 100 s) throttles $connect; $default sets its own.
    let toml = format!(
        r#"
[api.default_route_settings]
throttling_rate_limit = 0.01
throttling_burst_limit = 2
[routes."$connect"]
integration = "h"
[routes."$default"]
integration = "echo"
two_way = true
throttling_rate_limit = 1000
throttling_burst_limit = 100
[integrations.h]
type = "http"
url = "{url}"
[integrations.echo]
type = "mock"
response_template = "$input.body"
"#,
        url = handler.url
    );
    let host = TestHost::start(&toml).await;
    let mut first = connect(host.addr).await;
    let _second = connect(host.addr).await;
    match try_connect(host.addr, "/dev", &[], None).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            let body = response.body().as_deref().unwrap_or_default();
            assert_eq!(body, br#"{"message":"Too Many Requests"}"#);
        }
        other => panic!("expected 429, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(
        connects(&handler),
        2,
        "the throttled upgrade ran no $connect"
    );
    // $default's own limits win over the stage's burst of 2.
    for i in 0..10 {
        let body = format!("message {i}");
        send_text(&mut first, &body).await;
        assert_eq!(next_text(&mut first).await, body);
    }
}
