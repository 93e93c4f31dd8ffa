//! `GET /metrics`: every series a client's actions move, moved by exactly what the test did.

mod common;

use aws_sdk_apigatewaymanagement::primitives::Blob;
use common::*;
use futures_util::SinkExt;
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Mock integrations only, plus one HTTP integration whose endpoint is closed (`down`).
fn config(down: &str) -> String {
    format!(
        r#"
[api]
api_id = "metrics001"
route_selection_expression = "$request.body.action"
[routes."$connect"]
integration = "ok"
[routes."$default"]
integration = "echo"
two_way = true
[routes.fail]
integration = "err"
[routes.down]
integration = "down"
[integrations.ok]
type = "mock"
[integrations.echo]
type = "mock"
response_template = "echo:$input.body"
[integrations.err]
type = "mock"
status_code = 500
[integrations.down]
type = "http"
url = "{down}"
{WHOAMI}
"#
    )
}

/// A series and the value it must reach.
type Expected<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// Waits until every series in `expected` has its value (the host counts a written frame just
/// after the client may have read it), then checks they all do.
async fn settle(host: &TestHost, expected: &[Expected<'_>]) {
    let base = host.http("");
    let mismatches = async || {
        let e = scrape(&base).await;
        expected
            .iter()
            .filter_map(|(name, labels, want)| {
                let got = e.sum(name, labels);
                (got != *want).then(|| format!("{name}{labels:?}: {got}, expected {want}"))
            })
            .collect::<Vec<_>>()
    };
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if mismatches().await.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if settled.is_err() {
        panic!("metrics did not settle:\n{}", mismatches().await.join("\n"));
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

#[tokio::test]
async fn each_series_moves_by_exactly_what_clients_and_callers_did() {
    let host = TestHost::start(&config(&closed_port_url().await)).await;
    let base = host.http("");
    // Before anything: every fixed series is there, at zero, with the API's dimensions.
    let before = scrape(&base).await;
    assert_eq!(before.sum("ConnectCount", &[]), 0.0);
    assert_eq!(
        before.sum(
            "connection_host_handshakes",
            &[
                ("outcome", "accepted"),
                ("api_id", "metrics001"),
                ("stage", "dev")
            ]
        ),
        0.0
    );
    assert_eq!(
        before
            .matching("connection_host_handshakes", &[("api_id", "metrics001")])
            .count(),
        9
    );

    let (mut bytes_in, mut bytes_out) = (0usize, 0usize);
    let mut a = connect(host.addr).await;
    let mut b = connect(host.addr).await;
    for text in ["one", "two", "three"] {
        send(&mut a, text).await;
        let reply = next_text(&mut a).await;
        assert_eq!(reply, format!("echo:{text}"));
        bytes_in += text.len();
        bytes_out += reply.len();
    }
    // No statusCode problem but a 500 from the integration: IntegrationError, nothing sent back.
    let fail = r#"{"action":"fail"}"#;
    send(&mut a, fail).await;
    bytes_in += fail.len();
    // An unreachable integration: ExecutionError, and the client gets the error frame.
    let down = r#"{"action":"down"}"#;
    send(&mut a, down).await;
    bytes_in += down.len();
    let frame = next_text(&mut a).await;
    assert!(frame.contains("Internal server error"), "{frame}");
    bytes_out += frame.len();
    let whoami = r#"{"action":"whoami"}"#;
    send(&mut b, whoami).await;
    bytes_in += whoami.len();
    let reply = next_text(&mut b).await;
    bytes_out += reply.len();
    let id_b = serde_json::from_str::<Value>(&reply).unwrap()["connectionId"]
        .as_str()
        .unwrap()
        .to_string();

    // A refused handshake (unknown stage): counted, and as the $connect route's ClientError.
    assert_eq!(
        ws_connect(&format!("ws://{}/prod", host.addr)).await.err(),
        Some(403)
    );

    let sdk = mgmt_client(host.addr);
    sdk.post_to_connection()
        .connection_id(&id_b)
        .data(Blob::new("pushed"))
        .send()
        .await
        .expect("post");
    assert_eq!(next_text(&mut b).await, "pushed");
    bytes_out += "pushed".len();
    sdk.get_connection()
        .connection_id(&id_b)
        .send()
        .await
        .expect("get");
    sdk.delete_connection()
        .connection_id(&id_b)
        .send()
        .await
        .expect("delete");
    assert_eq!(expect_close(&mut b).await.0, 1000);
    let gone = sdk
        .post_to_connection()
        .connection_id(&id_b)
        .data(Blob::new("late"))
        .send()
        .await;
    assert!(gone.is_err(), "a post to a closed connection is refused");

    let route = |r| vec![("route", r)];
    let call = |op, status| vec![("operation", op), ("status", status)];
    settle(
        &host,
        &[
            ("ConnectCount", vec![], 2.0),
            (
                "connection_host_handshakes",
                vec![("outcome", "accepted")],
                2.0,
            ),
            (
                "connection_host_handshakes",
                vec![("outcome", "bad_request")],
                1.0,
            ),
            ("connection_host_handshakes", vec![], 3.0),
            ("ClientError", route("$connect"), 1.0),
            ("ClientError", vec![], 1.0),
            // Three messages in and their three replies.
            ("MessageCount", route("$default"), 6.0),
            ("MessageCount", route("fail"), 1.0),
            ("MessageCount", route("down"), 1.0),
            ("MessageCount", route("@connections"), 1.0),
            ("IntegrationError", route("fail"), 1.0),
            ("IntegrationError", vec![], 1.0),
            ("ExecutionError", route("down"), 1.0),
            ("ExecutionError", vec![], 1.0),
            ("IntegrationLatency_count", route("$default"), 3.0),
            ("IntegrationLatency_count", route("$connect"), 2.0),
            (
                "IntegrationLatency_bucket",
                vec![("route", "$connect"), ("le", "+Inf")],
                2.0,
            ),
            ("connection_host_messages", vec![("direction", "in")], 6.0),
            ("connection_host_messages", vec![("direction", "out")], 6.0),
            (
                "connection_host_message_bytes",
                vec![("direction", "in")],
                bytes_in as f64,
            ),
            (
                "connection_host_message_bytes",
                vec![("direction", "out")],
                bytes_out as f64,
            ),
            (
                "connection_host_management_calls",
                call("PostToConnection", "200"),
                1.0,
            ),
            (
                "connection_host_management_calls",
                call("PostToConnection", "410"),
                1.0,
            ),
            (
                "connection_host_management_calls",
                call("GetConnection", "200"),
                1.0,
            ),
            (
                "connection_host_management_calls",
                call("DeleteConnection", "204"),
                1.0,
            ),
            ("connection_host_management_calls", vec![], 4.0),
            ("connection_host_closes", vec![("code", "1000")], 1.0),
            ("connection_host_closes", vec![], 1.0),
            ("connection_host_connections", vec![], 1.0),
            // One record written per accepted connection, one deleted for the closed one.
            (
                "connection_host_store_calls",
                vec![("operation", "PutItem"), ("outcome", "ok")],
                2.0,
            ),
            (
                "connection_host_store_calls",
                vec![("operation", "DeleteItem"), ("outcome", "ok")],
                1.0,
            ),
            (
                "connection_host_store_calls",
                vec![("outcome", "error")],
                0.0,
            ),
            ("connection_host_throttles", vec![], 0.0),
            ("connection_host_build_info", vec![], 1.0),
        ],
    )
    .await;
    drop(a);
}

#[tokio::test]
async fn refusals_are_counted_by_outcome_and_limit() {
    let host = TestHost::start(
        r#"
[limits]
allowed_origins = ["https://app.example"]
connections_per_ip = 1
messages_per_second = 1
message_burst = 1
"#,
    )
    .await;
    let refused = |origin: &str| {
        let origin = origin.to_string();
        async move {
            try_connect(host.addr, "/dev", &[("Origin", &origin)], None)
                .await
                .map(|_| ())
                .map_err(|e| refused_status(Err(e)))
        }
    };
    assert_eq!(refused("https://evil.example").await, Err(403));
    let (mut ws, _) = try_connect(
        host.addr,
        "/dev",
        &[("Origin", "https://app.example")],
        None,
    )
    .await
    .expect("first connection");
    assert_eq!(refused("https://app.example").await, Err(429));
    // Over the connection's message rate: the second of two back-to-back messages is throttled.
    send(&mut ws, "a").await;
    send(&mut ws, "b").await;
    let frame = next_text(&mut ws).await;
    assert!(frame.contains("Too Many Requests"), "{frame}");
    settle(
        &host,
        &[
            (
                "connection_host_handshakes",
                vec![("outcome", "origin_refused")],
                1.0,
            ),
            (
                "connection_host_handshakes",
                vec![("outcome", "throttled")],
                1.0,
            ),
            (
                "connection_host_handshakes",
                vec![("outcome", "accepted")],
                1.0,
            ),
            ("connection_host_throttles", vec![("kind", "ip")], 1.0),
            (
                "connection_host_throttles",
                vec![("kind", "connection")],
                1.0,
            ),
            ("connection_host_throttles", vec![], 2.0),
            ("ClientError", vec![("route", "$connect")], 2.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn hosts_in_one_process_keep_their_own_counts() {
    let one = TestHost::start("").await;
    let two = TestHost::start("").await;
    let _ws = connect(one.addr).await;
    settle(
        &one,
        &[(
            "connection_host_handshakes",
            vec![("outcome", "accepted")],
            1.0,
        )],
    )
    .await;
    settle(&two, &[("connection_host_handshakes", vec![], 0.0)]).await;
}
