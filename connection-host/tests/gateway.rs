//! End-to-end tests of the client side: handshake, `$connect`, events, routing, error frames,
//! limits, integrations (http, http_proxy, lambda) and shutdown, over real sockets.

mod common;

use axum::response::IntoResponse;
use base64::Engine;
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// The handler every gateway test uses; what it answers depends on the event:
/// - CONNECT: `?status=N` → statusCode N; `?sub=multi|single` → accepts with
///   `Sec-WebSocket-Protocol: chat` in `multiValueHeaders` (as `lambda_http` answers) or `headers`;
///   `?fail` → HTTP 500; `?slow` → answers after 2 s; otherwise 200.
/// - MESSAGE: action `fail` → HTTP 500; `slow` → after 2 s; `garbage` → a non-JSON 200;
///   otherwise a proxy response whose body is `{routeKey}:{body}`.
fn standard(e: &Value) -> Reply {
    match event_type(e) {
        "CONNECT" => {
            if let Some(status) = query_param(e, "status") {
                return Reply::proxy(status.parse().unwrap(), None);
            }
            if query_param(e, "fail").is_some() {
                return Reply::raw(500, r#"{"message":"handler crashed"}"#);
            }
            if query_param(e, "slow").is_some() {
                return Reply::proxy(200, None).delayed(Duration::from_secs(2));
            }
            match query_param(e, "sub") {
                Some("multi") => {
                    // Exactly what lambda_http produces for a WebSocket request.
                    let mut response = aws_lambda_events::apigw::ApiGatewayProxyResponse::default();
                    response.status_code = 200;
                    response.multi_value_headers.insert(
                        "sec-websocket-protocol",
                        http::HeaderValue::from_static("chat"),
                    );
                    Reply::json(serde_json::to_value(response).unwrap())
                }
                Some("single") => Reply::json(
                    json!({"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "chat"}}),
                ),
                _ => Reply::proxy(200, None),
            }
        }
        "MESSAGE" => match action(e).as_deref() {
            Some("fail") => Reply::raw(500, "{}"),
            Some("slow") => Reply::proxy(200, Some("late")).delayed(Duration::from_secs(2)),
            Some("garbage") => Reply::raw(200, "this is not a proxy response"),
            // A proxy response just over the limit: its body alone is the limit's size.
            Some("huge") => Reply::proxy(
                200,
                Some(&"x".repeat(connection_host::integration::MAX_RESPONSE_BYTES)),
            ),
            _ => {
                let body = format!("{}:{}", route(e), e["body"].as_str().unwrap());
                Reply::proxy(200, Some(&body))
            }
        },
        _ => Reply::proxy(200, None),
    }
}

/// Routes: lifecycle routes and `$default` (two-way) to `url`, plus custom keys.
fn config(url: &str, down: &str, extra: &str) -> String {
    format!(
        r#"
[api]
route_selection_expression = "$request.body.action"

[routes."$connect"]
integration = "h"
[routes."$disconnect"]
integration = "h"
[routes."$default"]
integration = "h"
two_way = true
[routes.chat]
integration = "h"
two_way = true
[routes.quiet]
integration = "h"
[routes.fail]
integration = "h"
[routes.slow]
integration = "h"
timeout = "200ms"
[routes.garbage]
integration = "h"
two_way = true
[routes.huge]
integration = "h"
two_way = true
[routes.down]
integration = "down"

[integrations.h]
type = "http"
url = "{url}"
[integrations.down]
type = "http"
url = "{down}"
{extra}
"#
    )
}

async fn standard_host(extra: &str) -> (TestHost, Handler) {
    let handler = Handler::start(standard).await;
    let host = TestHost::start(&config(&handler.url, &closed_port_url().await, extra)).await;
    (host, handler)
}

/// Connects with `?tag={tag}` and learns the connection ID from the CONNECT event.
async fn connect_tagged(host: &TestHost, handler: &Handler, tag: &str) -> (Ws, String) {
    let (ws, _) = try_connect(host.addr, &format!("/dev?tag={tag}"), &[], None)
        .await
        .expect("connect");
    let id = connect_id(handler, tag).await;
    (ws, id)
}

async fn connect_id(handler: &Handler, tag: &str) -> String {
    let event = handler
        .wait_for(&format!("CONNECT tagged {tag}"), |e| {
            event_type(e) == "CONNECT" && query_param(e, "tag") == Some(tag)
        })
        .await;
    conn_id(&event).to_string()
}

/// `{"message": "<message>", "connectionId":"<id>", "requestId":"<16 chars>"}`, byte for byte.
fn assert_error_frame(frame: &str, message: &str, connection_id: &str) {
    let re = regex_lite::Regex::new(&format!(
        r#"^\{{"message": "{message}", "connectionId":"([A-Za-z0-9_=-]{{16}})", "requestId":"([A-Za-z0-9_-]{{15}}=)"\}}$"#
    ))
    .unwrap();
    let caps = re
        .captures(frame)
        .unwrap_or_else(|| panic!("not a {message:?} error frame: {frame}"));
    assert_eq!(&caps[1], connection_id, "{frame}");
}

async fn disconnect_of(handler: &Handler, id: &str) -> Value {
    handler.wait_route("$disconnect", Some(id)).await
}

// ---------------------------------------------------------------------------------------------
// Handshake refusals (raw TCP).
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn plain_get_on_the_stage_is_426() {
    let host = TestHost::start("").await;
    let req = format!(
        "GET /dev HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        host.addr
    );
    let (status, _, _) = raw_exchange(host.addr, req.as_bytes()).await;
    assert_eq!(status, 426);
    let resp = reqwest::get(host.http("/dev/")).await.unwrap();
    assert_eq!(resp.status(), 426);
}

#[tokio::test]
async fn plain_get_under_the_stage_is_426_and_the_api_paths_are_untouched() {
    let management = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let management_addr = management.local_addr().unwrap();
    drop(management);
    // The public listener serving the management API too, and one that does not.
    let shared = TestHost::start("").await;
    let separate = TestHost::start(&format!(
        "[server]\nmanagement_listen = \"{management_addr}\"\n"
    ))
    .await;
    for host in [&shared, &separate] {
        for path in ["/dev/x", "/dev/x/y", "/dev/x/"] {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                host.addr
            );
            let (status, head, body) = raw_exchange(host.addr, req.as_bytes()).await;
            assert_eq!(status, 426, "{path}: {head}");
            assert_eq!(raw_header(&head, "Upgrade"), Some("websocket"), "{path}");
            assert_eq!(body, r#"{"message":"Upgrade Required"}"#, "{path}");
        }
        // Other methods, and the `@` paths of the APIs, answer as before.
        for (request, expected) in [
            ("POST /dev/x HTTP/1.1", 403),
            ("GET /dev/@connections HTTP/1.1", 403),
            ("GET /dev/@other/x HTTP/1.1", 403),
            ("GET /prod/x HTTP/1.1", 403),
        ] {
            let req = format!(
                "{request}\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                host.addr
            );
            let (status, head, _) = raw_exchange(host.addr, req.as_bytes()).await;
            assert_eq!(status, expected, "{request}: {head}");
        }
    }
    // GetConnection is still GetConnection (410 for an unknown ID).
    let req = format!(
        "GET /dev/@connections/AAAAAAAAAAAAAAA%3D HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        shared.addr
    );
    let (status, head, _) = raw_exchange(shared.addr, req.as_bytes()).await;
    assert_eq!(status, 410, "{head}");
}

#[tokio::test]
async fn upgrade_on_a_wrong_stage_is_403_forbidden() {
    let host = TestHost::start("").await;
    let req = upgrade_request(host.addr, "/prod", "");
    let (status, _, body) = raw_exchange(host.addr, req.as_bytes()).await;
    assert_eq!(status, 403);
    assert_eq!(body, r#"{"message":"Forbidden"}"#);
    // And through a real client.
    assert_eq!(
        refused_status(try_connect(host.addr, "/other", &[], None).await),
        403
    );
}

#[tokio::test]
async fn malformed_upgrades_are_refused() {
    let host = TestHost::start("").await;
    let a = host.addr;
    let missing_key = format!(
        "GET /dev HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (status, _, _) = raw_exchange(a, missing_key.as_bytes()).await;
    assert_eq!(status, 400, "missing Sec-WebSocket-Key");

    let wrong_version = upgrade_request(a, "/dev", "")
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let (status, head, _) = raw_exchange(a, wrong_version.as_bytes()).await;
    assert_eq!(status, 426, "wrong version: {head}");
    assert_eq!(raw_header(&head, "Sec-WebSocket-Version"), Some("13"));
}

#[tokio::test]
async fn oversized_head_is_431_and_long_url_is_414() {
    let host = TestHost::start("").await;
    let a = host.addr;
    // Exactly 16 KiB with no end of head: the host reads all of it, then refuses.
    let mut big = format!("GET /dev HTTP/1.1\r\nHost: {a}\r\nX-Pad: ").into_bytes();
    big.resize(16 * 1024, b'a');
    let (status, _, _) = raw_exchange(a, &big).await;
    assert_eq!(status, 431);

    let long = format!("/dev?q={}", "x".repeat(4100));
    let (status, _, _) = raw_exchange(a, upgrade_request(a, &long, "").as_bytes()).await;
    assert_eq!(status, 414);
    // 4096 characters exactly is still accepted.
    let exact = format!("/dev?q={}", "x".repeat(4096 - "/dev?q=".len()));
    let mut ws = wrap_client(raw_upgrade(a, &exact, "").await).await;
    ws.close(None).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// $connect outcomes.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_2xx_accepts_and_copies_the_subprotocol() {
    let (host, _handler) = standard_host("").await;
    for via in ["multi", "single"] {
        let (mut ws, response) = try_connect(
            host.addr,
            &format!("/dev?sub={via}"),
            &[("Sec-WebSocket-Protocol", "chat, superchat")],
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("sub={via}: {e}"));
        assert_eq!(response.status(), 101);
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap()),
            Some("chat"),
            "sub={via}"
        );
        send_text(&mut ws, r#"{"action":"chat"}"#).await;
        assert_eq!(next_text(&mut ws).await, r#"chat:{"action":"chat"}"#);
    }
    // Without a subprotocol in the response, none is in the 101.
    let (_ws, response) = try_connect(host.addr, "/dev", &[], None).await.unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
}

#[tokio::test]
async fn connect_rejections_carry_the_status_and_get_no_disconnect() {
    let (host, handler) = standard_host("").await;
    for status in [401, 403, 400, 301] {
        let got = refused_status(
            try_connect(
                host.addr,
                &format!("/dev?status={status}&tag=r{status}"),
                &[],
                None,
            )
            .await,
        );
        assert_eq!(got, status);
    }
    assert_eq!(
        refused_status(try_connect(host.addr, "/dev?fail&tag=f", &[], None).await),
        502,
        "handler HTTP 500"
    );
    let mut rejected: BTreeSet<String> = BTreeSet::new();
    for tag in ["r401", "r403", "r400", "r301", "f"] {
        rejected.insert(connect_id(&handler, tag).await);
    }
    assert_eq!(rejected.len(), 5);

    // A connection that is accepted and closed afterwards: its $disconnect arrives, and by then
    // none has arrived for the rejected ones.
    let (mut ws, id) = connect_tagged(&host, &handler, "ok").await;
    ws.close(None).await.unwrap();
    disconnect_of(&handler, &id).await;
    let disconnected: Vec<String> = handler
        .events()
        .iter()
        .filter(|e| route(e) == "$disconnect")
        .map(|e| conn_id(e).to_string())
        .collect();
    assert_eq!(disconnected, vec![id]);
}

#[tokio::test]
async fn connect_slower_than_the_route_timeout_is_504() {
    let handler = Handler::start(standard).await;
    let host = TestHost::start(&format!(
        r#"
[routes."$connect"]
integration = "h"
timeout = "200ms"
[integrations.h]
type = "http"
url = "{}"
"#,
        handler.url
    ))
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        refused_status(try_connect(host.addr, "/dev?slow", &[], None).await),
        504
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at the timeout"
    );
}

#[tokio::test]
async fn no_connect_route_accepts_connections() {
    let host = TestHost::start(
        r#"
[routes."$default"]
integration = "echo"
two_way = true
[integrations.echo]
type = "mock"
response_template = "echo:$input.body"
"#,
    )
    .await;
    let (mut ws, response) = try_connect(host.addr, "/dev", &[], None).await.unwrap();
    assert_eq!(response.status(), 101);
    send_text(&mut ws, "hi").await;
    assert_eq!(next_text(&mut ws).await, "echo:hi");
}

// ---------------------------------------------------------------------------------------------
// Event JSON.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_event_has_client_headers_forwarding_headers_and_query_maps() {
    let (host, handler) = standard_host("").await;
    let extra = "X-Mixed-Case: v\r\nUser-Agent: e2e-client/1.0\r\n";
    let _with = raw_upgrade(host.addr, "/dev?tag=q&a=1&a=2&b=x%20y", extra).await;
    let e = handler
        .wait_for("CONNECT with query", |e| query_param(e, "tag") == Some("q"))
        .await;

    let headers = e["headers"].as_object().expect("headers");
    assert_eq!(
        headers.get("X-Mixed-Case"),
        Some(&json!("v")),
        "{headers:?}"
    );
    assert!(headers.get("x-mixed-case").is_none());
    for hop in ["connection", "upgrade"] {
        assert!(
            !headers.keys().any(|k| k.eq_ignore_ascii_case(hop)),
            "{hop} must not be forwarded: {headers:?}"
        );
    }
    for added in [
        "X-Forwarded-For",
        "X-Forwarded-Port",
        "X-Forwarded-Proto",
        "X-Amzn-Trace-Id",
    ] {
        assert!(headers.contains_key(added), "{added} missing: {headers:?}");
    }
    assert_eq!(headers["X-Forwarded-For"], "127.0.0.1");
    assert_eq!(
        headers["X-Forwarded-Port"],
        host.addr.port().to_string().as_str()
    );
    let trace = regex_lite::Regex::new(r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24}$").unwrap();
    assert!(trace.is_match(headers["X-Amzn-Trace-Id"].as_str().unwrap()));
    assert_eq!(e["multiValueHeaders"]["X-Mixed-Case"], json!(["v"]));

    assert_eq!(e["queryStringParameters"]["b"], "x y");
    assert_eq!(e["multiValueQueryStringParameters"]["a"], json!(["1", "2"]));
    assert_eq!(e["multiValueQueryStringParameters"]["b"], json!(["x y"]));
    let rc = &e["requestContext"];
    assert_eq!(rc["identity"]["userAgent"], "e2e-client/1.0");
    assert_eq!(rc["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(rc["eventType"], "CONNECT");
    assert_eq!(rc["stage"], "dev");
    assert_eq!(rc["domainName"], host.addr.to_string().as_str());
    assert!(rc.get("messageId").is_none());
    assert!(is_connection_id(rc["connectionId"].as_str().unwrap()));
    assert_eq!(rc["requestId"], rc["extendedRequestId"]);
    assert!(e.get("body").is_none());
    assert!(e.get("httpMethod").is_none());

    // The event is what Rust handlers deserialize.
    let typed: aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest =
        serde_json::from_value(e.clone()).expect("ApiGatewayWebsocketProxyRequest");
    assert_eq!(typed.request_context.route_key.as_deref(), Some("$connect"));
    assert_eq!(typed.headers.get("x-mixed-case").unwrap(), "v");
    let request: lambda_http::request::LambdaRequest =
        serde_json::from_value(e.clone()).expect("lambda_http accepts the event");
    #[allow(irrefutable_let_patterns)]
    let lambda_http::request::LambdaRequest::WebSocket(_) = request else {
        panic!("lambda_http classified the CONNECT event as {request:?}")
    };

    // Without a query string and without User-Agent, those keys are absent.
    let _without = raw_upgrade(host.addr, "/dev", "X-Probe: plain\r\n").await;
    let e = handler
        .wait_for("CONNECT without query", |e| {
            e["headers"]["X-Probe"].as_str() == Some("plain")
        })
        .await;
    assert!(e.get("queryStringParameters").is_none(), "{e}");
    assert!(e.get("multiValueQueryStringParameters").is_none(), "{e}");
    assert!(e["requestContext"]["identity"].get("userAgent").is_none());
}

#[tokio::test]
async fn message_and_disconnect_events_have_their_shapes() {
    let (host, handler) = standard_host("").await;
    let (mut ws, id) = connect_tagged(&host, &handler, "m").await;
    send_text(&mut ws, r#"{"action":"chat","n":1}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"chat:{"action":"chat","n":1}"#);
    let m = handler.wait_body(r#"{"action":"chat","n":1}"#).await;
    let rc = &m["requestContext"];
    assert_eq!(rc["eventType"], "MESSAGE");
    assert_eq!(rc["connectionId"], id.as_str());
    assert!(is_connection_id(rc["messageId"].as_str().unwrap()));
    assert!(rc["connectedAt"].is_i64() && rc["requestTimeEpoch"].is_i64());
    for absent in [
        "headers",
        "multiValueHeaders",
        "queryStringParameters",
        "multiValueQueryStringParameters",
    ] {
        assert!(m.get(absent).is_none(), "MESSAGE has {absent}: {m}");
    }
    assert_eq!(m["isBase64Encoded"], false);
    serde_json::from_value::<aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest>(m.clone())
        .expect("MESSAGE deserializes");

    // Close with a code and reason.
    ws.close(Some(CloseFrame {
        code: 4000.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let d = disconnect_of(&handler, &id).await;
    let rc = &d["requestContext"];
    assert_eq!(rc["disconnectStatusCode"], 4000);
    assert_eq!(rc["disconnectReason"], "bye");
    assert_eq!(rc["eventType"], "DISCONNECT");
    assert!(rc.get("messageId").is_none());
    let keys: Vec<&str> = d["headers"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec!["Host", "x-api-key", "X-Forwarded-For", "x-restapi"];
    let mut sorted = keys.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "{d}");
    assert_eq!(d["headers"]["Host"], host.addr.to_string().as_str());
    assert_eq!(d["headers"]["x-api-key"], "");
    assert_eq!(d["multiValueHeaders"]["x-restapi"], json!([""]));
    serde_json::from_value::<aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest>(d.clone())
        .expect("DISCONNECT deserializes");

    // Close without a code.
    let (mut ws, id) = connect_tagged(&host, &handler, "n").await;
    ws.close(None).await.unwrap();
    let d = disconnect_of(&handler, &id).await;
    assert_eq!(d["requestContext"]["disconnectStatusCode"], 1005);
    assert_eq!(
        d["requestContext"]["disconnectReason"],
        "Client-side close frame status not set"
    );
}

// ---------------------------------------------------------------------------------------------
// Routing and route responses.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn messages_are_routed_by_the_selection_expression() {
    let (host, handler) = standard_host("").await;
    let (mut ws, _) = connect_tagged(&host, &handler, "r").await;
    send_text(&mut ws, r#"{"action":"chat","x":1}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"chat:{"action":"chat","x":1}"#);
    send_text(&mut ws, "not json").await;
    assert_eq!(next_text(&mut ws).await, "$default:not json");
    send_text(&mut ws, r#"{"action":"unknown"}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"$default:{"action":"unknown"}"#);
    send_text(&mut ws, r#"{"action":"$connect"}"#).await;
    assert_eq!(
        next_text(&mut ws).await,
        r#"$default:{"action":"$connect"}"#
    );
    let e = handler.wait_body(r#"{"action":"chat","x":1}"#).await;
    assert_eq!(route(&e), "chat");
    let e = handler.wait_body("not json").await;
    assert_eq!(route(&e), "$default");
}

#[tokio::test]
async fn two_way_routes_answer_and_one_way_routes_do_not() {
    // One invocation at a time: the reply to `quiet` (if any) would be queued before `chat`'s.
    let (host, handler) = standard_host("[limits]\nmax_inflight_messages = 1").await;
    let (mut ws, _) = connect_tagged(&host, &handler, "w").await;
    send_text(&mut ws, r#"{"action":"quiet"}"#).await;
    send_text(&mut ws, r#"{"action":"chat"}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"chat:{"action":"chat"}"#);
    let quiet = handler.wait_body(r#"{"action":"quiet"}"#).await;
    assert_eq!(route(&quiet), "quiet", "the one-way route was invoked");
}

#[tokio::test]
async fn no_route_and_no_default_sends_the_forbidden_frame_and_stays_open() {
    let handler = Handler::start(standard).await;
    let host = TestHost::start(&format!(
        r#"
[limits]
max_inflight_messages = 1
[routes."$connect"]
integration = "h"
[routes.chat]
integration = "h"
two_way = true
[integrations.h]
type = "http"
url = "{}"
"#,
        handler.url
    ))
    .await;
    let (mut ws, id) = connect_tagged(&host, &handler, "f").await;
    send_text(&mut ws, r#"{"action":"nope"}"#).await;
    let first = next_text(&mut ws).await;
    assert_error_frame(&first, "Forbidden", &id);
    send_text(&mut ws, "plain text").await;
    let second = next_text(&mut ws).await;
    assert_error_frame(&second, "Forbidden", &id);
    assert_ne!(first, second, "each frame has its own requestId");
    send_text(&mut ws, r#"{"action":"chat"}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"chat:{"action":"chat"}"#);
}

#[tokio::test]
async fn integration_failures_send_error_frames() {
    let (host, handler) = standard_host("[limits]\nmax_inflight_messages = 1").await;
    let (mut ws, id) = connect_tagged(&host, &handler, "e").await;
    let cases = [
        ("fail", "Internal server error"),
        ("slow", "Endpoint request timed out"),
        ("down", "Internal server error"),
        ("garbage", "Internal server error"),
        // Larger than an integration may return: refused, not buffered, not delivered.
        ("huge", "Internal server error"),
    ];
    for (action, message) in cases {
        send_text(&mut ws, &format!(r#"{{"action":"{action}"}}"#)).await;
        let frame = next_text(&mut ws).await;
        assert_error_frame(&frame, message, &id);
    }
    // The connection is still usable.
    send_text(&mut ws, r#"{"action":"chat"}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"chat:{"action":"chat"}"#);
}

// ---------------------------------------------------------------------------------------------
// Ordering.
// ---------------------------------------------------------------------------------------------

/// When each message's invocation started and ended at a handler that takes `delay` per message.
type Spans = Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>;

/// A host whose `$default` route (one-way) goes to a handler taking `delay` per message, with
/// `extra` configuration; the handler records each invocation's span.
async fn sleeping_host(delay: Duration, extra: &str) -> (TestHost, Handler, Spans) {
    let spans: Spans = Arc::default();
    let handler = {
        let spans = spans.clone();
        Handler::start_async(move |event| {
            let spans = spans.clone();
            async move {
                if event_type(&event) == "MESSAGE" {
                    let started = Instant::now();
                    // The handler's work (the scenario), not a wait for anything.
                    tokio::time::sleep(delay).await;
                    spans.lock().unwrap().push((started, Instant::now()));
                }
                Reply::proxy(200, None)
            }
        })
        .await
    };
    let host = TestHost::start(&format!(
        r#"
{extra}
[routes."$default"]
integration = "h"
[integrations.h]
type = "http"
url = "{}"
"#,
        handler.url
    ))
    .await;
    (host, handler, spans)
}

/// Sends `n` messages at once on one connection and returns the spans of their invocations, in
/// the order they started.
async fn invoke_burst(host: &TestHost, spans: &Spans, n: usize) -> Vec<(Instant, Instant)> {
    let mut ws = connect(host.addr).await;
    for i in 0..n {
        ws.feed(Message::text(format!("message {i}")))
            .await
            .unwrap();
    }
    ws.flush().await.unwrap();
    eventually(
        "every message invoked",
        Duration::from_secs(10),
        async || spans.lock().unwrap().len() >= n,
    )
    .await;
    let mut spans = spans.lock().unwrap().clone();
    spans.sort_by_key(|(started, _)| *started);
    spans
}

#[tokio::test]
async fn one_connections_messages_are_invoked_concurrently_up_to_max_inflight() {
    let delay = Duration::from_millis(300);
    // The default limit (16) lets all four run at once: each starts before any has finished.
    let (host, _handler, spans) = sleeping_host(delay, "").await;
    let spans = invoke_burst(&host, &spans, 4).await;
    let first_end = spans.iter().map(|(_, end)| *end).min().unwrap();
    let last_start = spans.iter().map(|(start, _)| *start).max().unwrap();
    assert!(
        last_start < first_end,
        "the 4th invocation started {:?} after the 1st finished",
        last_start - first_end
    );
    let total = spans.iter().map(|(_, end)| *end).max().unwrap() - spans[0].0;
    assert!(
        total < delay * 2,
        "4 overlapping invocations took {total:?}"
    );
}

#[tokio::test]
async fn max_inflight_messages_1_invokes_one_message_after_another() {
    let delay = Duration::from_millis(300);
    let (host, _handler, spans) = sleeping_host(delay, "[limits]\nmax_inflight_messages = 1").await;
    let spans = invoke_burst(&host, &spans, 4).await;
    for pair in spans.windows(2) {
        let ((_, end), (start, _)) = (pair[0], pair[1]);
        assert!(
            start >= end,
            "an invocation started before the previous one finished"
        );
    }
    let total = spans[3].1 - spans[0].0;
    assert!(
        total >= delay * 4,
        "4 invocations in sequence took only {total:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------------------------

async fn assert_still_works(bystander: &mut Ws, n: usize) {
    let msg = format!(r#"{{"action":"chat","n":{n}}}"#);
    send_text(bystander, &msg).await;
    assert_eq!(next_text(bystander).await, format!("chat:{msg}"));
}

#[tokio::test]
async fn protocol_violations_close_only_the_offender() {
    let (host, handler) = standard_host("").await;
    let (mut bystander, _) = connect_tagged(&host, &handler, "bystander").await;

    // Binary frame → 1003.
    let (mut ws, id) = connect_tagged(&host, &handler, "bin").await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(expect_close(&mut ws).await.0, 1003);
    let d = disconnect_of(&handler, &id).await;
    assert_eq!(d["requestContext"]["disconnectStatusCode"], 1003);
    assert_still_works(&mut bystander, 1).await;

    // A 40,000-byte frame (over the 32 KB frame limit) → 1009.
    let (mut ws, id) = connect_tagged(&host, &handler, "big").await;
    let envelope = r#"{"action":"chat","pad":""}"#.len();
    let big = format!(
        r#"{{"action":"chat","pad":"{}"}}"#,
        "x".repeat(40_000 - envelope)
    );
    assert_eq!(big.len(), 40_000);
    ws.send(Message::text(big)).await.unwrap();
    assert_eq!(expect_close(&mut ws).await.0, 1009);
    disconnect_of(&handler, &id).await;
    assert_still_works(&mut bystander, 2).await;

    // Invalid UTF-8 in a text frame → 1007.
    let mut stream = raw_upgrade(host.addr, "/dev?tag=utf8", "").await;
    let id = connect_id(&handler, "utf8").await;
    stream
        .write_all(&client_frame(0x1, &[b'o', b'k', 0xff, 0xfe]))
        .await
        .unwrap();
    let mut ws = wrap_client(stream).await;
    assert_eq!(expect_close(&mut ws).await.0, 1007);
    disconnect_of(&handler, &id).await;
    assert_still_works(&mut bystander, 3).await;
}

/// Sends a text message of `len` bytes as frames of at most `frame` bytes (`x`s throughout).
async fn send_fragmented(ws: &mut Ws, len: usize, frame: usize) {
    let chunks = len.div_ceil(frame);
    for i in 0..chunks {
        let size = frame.min(len - i * frame);
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let payload = Bytes::from(vec![b'x'; size]);
        // The host may close as soon as the message is too big; later frames then go nowhere.
        if ws
            .feed(Message::Frame(Frame::message(
                payload,
                opcode,
                i + 1 == chunks,
            )))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = ws.flush().await;
}

#[tokio::test]
async fn a_message_over_128_kb_in_frames_within_32_kb_closes_with_1009() {
    let (host, handler) = standard_host("").await;
    // Fragments are reassembled: a 96,000-byte message in 30,000-byte frames is one message.
    let (mut ws, _) = connect_tagged(&host, &handler, "fits").await;
    send_fragmented(&mut ws, 96_000, 30_000).await;
    let e = handler.wait_body(&"x".repeat(96_000)).await;
    assert_eq!(route(&e), "$default");

    // 150,000 bytes (over the 128 KB message limit) in frames that are each within 32 KB.
    let (mut ws, id) = connect_tagged(&host, &handler, "long").await;
    send_fragmented(&mut ws, 150_000, 30_000).await;
    assert_eq!(expect_close(&mut ws).await.0, 1009);
    let d = disconnect_of(&handler, &id).await;
    assert_eq!(d["requestContext"]["disconnectStatusCode"], 1009);
    assert!(
        !handler
            .events()
            .iter()
            .any(|e| conn_id(e) == id && event_type(e) == "MESSAGE"),
        "the oversized message was not invoked"
    );
}

#[tokio::test]
async fn binary_messages_extension_delivers_base64() {
    let (host, handler) = standard_host("[extensions]\nbinary_messages = true").await;
    let (mut ws, id) = connect_tagged(&host, &handler, "b").await;
    let data = vec![0u8, 1, 2, 0xff, 0xfe];
    ws.send(Message::binary(data.clone())).await.unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
    // $default is two-way: the reply carries the base64 body back.
    assert_eq!(next_text(&mut ws).await, format!("$default:{encoded}"));
    let e = handler.wait_body(&encoded).await;
    assert_eq!(e["isBase64Encoded"], true);
    assert_eq!(conn_id(&e), id);
}

// ---------------------------------------------------------------------------------------------
// Other integration types.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http_proxy_passes_the_body_through_with_mapped_parameters() {
    /// (connectionId header, body) of each backend request.
    type Seen = (Option<String>, String);
    let (tx, _) = watch::channel::<Vec<Seen>>(Vec::new());
    let tx = Arc::new(tx);
    let seen = tx.clone();
    let app = axum::Router::new().route(
        "/backend",
        axum::routing::post(move |headers: http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let id = headers
                    .get("connectionId")
                    .map(|v| v.to_str().unwrap().to_string());
                seen.send_modify(|v| v.push((id, body.clone())));
                format!("proxied:{body}")
            }
        }),
    );
    let backend = serve(app).await;
    let handler = Handler::start(standard).await;
    let host = TestHost::start(&format!(
        r#"
[routes."$connect"]
integration = "h"
[routes."$default"]
integration = "p"
two_way = true
[integrations.h]
type = "http"
url = "{}"
[integrations.p]
type = "http_proxy"
url = "{backend}/backend"
request_parameters = {{ "integration.request.header.connectionId" = "context.connectionId" }}
"#,
        handler.url
    ))
    .await;
    let (mut ws, id) = connect_tagged(&host, &handler, "p").await;
    send_text(&mut ws, r#"{"hello":"proxy"}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"proxied:{"hello":"proxy"}"#);
    let seen = tx.borrow().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.as_deref(), Some(id.as_str()));
    assert_eq!(seen[0].1, r#"{"hello":"proxy"}"#);
}

#[tokio::test]
async fn lambda_integration_invokes_with_the_event_payload() {
    let (tx, _) = watch::channel::<Vec<(String, Value)>>(Vec::new());
    let tx = Arc::new(tx);
    let seen = tx.clone();
    let app = axum::Router::new().route(
        "/2015-03-31/functions/{name}/invocations",
        axum::routing::post(
            move |axum::extract::Path(name): axum::extract::Path<String>, body: String| {
                let seen = seen.clone();
                async move {
                    let event: Value = serde_json::from_str(&body).expect("payload is JSON");
                    seen.send_modify(|v| v.push((name, event.clone())));
                    let error = || {
                        (
                            [("X-Amz-Function-Error", "Unhandled")],
                            json!({"errorType": "Error", "errorMessage": "boom"}).to_string(),
                        )
                            .into_response()
                    };
                    match event_type(&event) {
                        "CONNECT" if query_param(&event, "fail").is_some() => error(),
                        "MESSAGE" if action(&event).as_deref() == Some("boom") => error(),
                        "MESSAGE" => {
                            let body = format!("lambda:{}", event["body"].as_str().unwrap());
                            json!({"statusCode": 200, "body": body})
                                .to_string()
                                .into_response()
                        }
                        _ => json!({"statusCode": 200}).to_string().into_response(),
                    }
                }
            },
        ),
    );
    let endpoint = serve(app).await;
    let host = TestHost::start(&format!(
        r#"
[limits]
max_inflight_messages = 1
[routes."$connect"]
integration = "l"
[routes."$default"]
integration = "l"
two_way = true
[integrations.l]
type = "lambda"
function_name = "myfn"
endpoint_url = "{endpoint}"
"#
    ))
    .await;

    assert_eq!(
        refused_status(try_connect(host.addr, "/dev?fail=1", &[], None).await),
        502,
        "function error on $connect"
    );
    let mut ws = connect(host.addr).await;
    send_text(&mut ws, r#"{"action":"hi"}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"lambda:{"action":"hi"}"#);
    send_text(&mut ws, r#"{"action":"boom"}"#).await;
    let frame = next_text(&mut ws).await;
    let id = {
        let seen = tx.borrow();
        let (name, event) = seen
            .iter()
            .find(|(_, e)| e["body"] == r#"{"action":"hi"}"#)
            .expect("the message reached the function");
        assert_eq!(name, "myfn");
        assert_eq!(route(event), "$default");
        serde_json::from_value::<aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest>(
            event.clone(),
        )
        .expect("payload is the event JSON");
        assert!(seen.iter().any(|(_, e)| route(e) == "$connect"));
        conn_id(event).to_string()
    };
    assert_error_frame(&frame, "Internal server error", &id);
}

// ---------------------------------------------------------------------------------------------
// Shutdown.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_closes_with_1001_delivers_disconnects_and_returns_ok() {
    let (mut host, handler) = standard_host("").await;
    let (mut a, id_a) = connect_tagged(&host, &handler, "a").await;
    let (mut b, id_b) = connect_tagged(&host, &handler, "b").await;
    let ca = tokio::spawn(async move { expect_close(&mut a).await });
    let cb = tokio::spawn(async move { expect_close(&mut b).await });
    host.trigger_shutdown();
    assert_eq!(ca.await.unwrap().0, 1001);
    assert_eq!(cb.await.unwrap().0, 1001);
    for id in [&id_a, &id_b] {
        let d = disconnect_of(&handler, id).await;
        assert_eq!(d["requestContext"]["disconnectStatusCode"], 1001);
    }
    host.join().await.expect("run returns Ok after draining");
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(host.addr).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Registration, abnormal closes and slow consumers.
// ---------------------------------------------------------------------------------------------

/// API Gateway: a connection ID is usable once the 101 is sent. Each connect is followed at once
/// by a GetConnection or a PostToConnection through the official SDK; none may answer 410.
/// Several worker threads, so the host's task and the client really race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_is_usable_as_soon_as_its_101_arrives() {
    const TRIES: usize = 400;
    let (host, handler) = standard_host("").await;
    let sdk = mgmt_client(host.addr);
    let mut gone = 0;
    for i in 0..TRIES {
        let tag = format!("usable{i}");
        let (ws, _) = try_connect(host.addr, &format!("/dev?tag={tag}"), &[], None)
            .await
            .expect("connect");
        // The CONNECT event is recorded before `$connect` answers, so it is there already.
        let id = connect_id(&handler, &tag).await;
        let result = if i % 2 == 0 {
            sdk.get_connection()
                .connection_id(&id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.into_service_error().meta().code().map(str::to_string))
        } else {
            sdk.post_to_connection()
                .connection_id(&id)
                .data(aws_sdk_apigatewaymanagement::primitives::Blob::new("hi"))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.into_service_error().meta().code().map(str::to_string))
        };
        match result {
            Ok(()) => {}
            Err(Some(code)) if code == "GoneException" => gone += 1,
            Err(other) => panic!("call {i} failed: {other:?}"),
        }
        drop(ws);
    }
    assert_eq!(
        gone, 0,
        "{gone} of {TRIES} calls right after the 101 answered 410"
    );
}

#[tokio::test]
async fn a_peer_that_drops_tcp_without_a_close_frame_gets_1006() {
    let (host, handler) = standard_host("").await;
    let stream = raw_upgrade(host.addr, "/dev?tag=vanish", "").await;
    let id = connect_id(&handler, "vanish").await;
    // A FIN with no Close frame before it.
    drop(stream);
    let d = disconnect_of(&handler, &id).await;
    assert_eq!(d["requestContext"]["disconnectStatusCode"], 1006, "{d:#}");
    assert_eq!(
        d["requestContext"]["disconnectReason"],
        "Connection closed abnormally"
    );
}

#[tokio::test]
async fn a_slow_consumer_dropped_after_its_grace_gets_a_1008_close_frame() {
    let (host, handler) = standard_host("[limits]\noutbound_full_grace = \"1s\"\n").await;
    // A small receive buffer and no reading: the host's writes stall.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(host.addr).await.unwrap();
    let stream = raw_upgrade_on(stream, host.addr, "/dev?tag=slow", "").await;
    let id = connect_id(&handler, "slow").await;
    let sdk = mgmt_client(host.addr);
    let big = vec![b'x'; 128 * 1024];
    // Posts until the outbound queue is full (429): the host is stalled on its writes.
    let mut full = false;
    for _ in 0..400 {
        let posted = sdk
            .post_to_connection()
            .connection_id(&id)
            .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(
                big.clone(),
            ))
            .send()
            .await;
        match posted {
            Ok(_) => {}
            Err(e) => {
                let code = e.into_service_error().meta().code().map(str::to_string);
                assert_eq!(code.as_deref(), Some("LimitExceededException"));
                full = true;
                break;
            }
        }
    }
    assert!(full, "the outbound queue never filled");
    // The host gives up after the grace: the connection leaves the registry (410)...
    eventually("the host to drop the slow consumer", WAIT, async || {
        sdk.get_connection()
            .connection_id(&id)
            .send()
            .await
            .is_err()
    })
    .await;
    // ...and the client, reading again, finds the Close frame after the data already sent.
    let mut ws = wrap_client(stream).await;
    let (code, reason) = within("the Close frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected data then a Close frame, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!((code, reason.as_str()), (1008, "Client not reading"));
    let d = disconnect_of(&handler, &id).await;
    assert_eq!(d["requestContext"]["disconnectStatusCode"], 1008, "{d:#}");
    let e = scrape(&host.http("")).await;
    assert_eq!(e.sum("connection_host_slow_consumer_closes", &[]), 1.0);
    assert_eq!(e.sum("connection_host_closes", &[("code", "1008")]), 1.0);
    assert_eq!(
        d["requestContext"]["disconnectReason"],
        "Client not reading"
    );
}
