//! End-to-end tests of reliable sessions (PROTOCOL.md) on one host: negotiation, the welcome,
//! numbered frames and acknowledgements, resume after a drop, exactly-once invocation, the
//! session's end, and bad input. Raw frames, so every byte the protocol promises is checked.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Echoes a message's body on the two-way `$default` route as `echo:{body}`, and answers
/// `{"action":"slow"}` after 1.5 s.
fn echo(e: &Value) -> Reply {
    match event_type(e) {
        "MESSAGE" => {
            let body = e["body"].as_str().unwrap_or_default();
            let reply = Reply::proxy(200, Some(&format!("echo:{body}")));
            if action(e).as_deref() == Some("slow") {
                reply.delayed(Duration::from_millis(1500))
            } else {
                reply
            }
        }
        _ => Reply::proxy(200, None),
    }
}

fn config(handler: &Handler, extra: &str) -> String {
    format!(
        r#"
[extensions.sessions]
enabled = true
resume_window = "3s"
session_buffer_bytes = 4096
{extra}

[integrations.h]
type = "http"
url = "{url}"

[routes."$connect"]
integration = "h"
[routes."$disconnect"]
integration = "h"
[routes."$default"]
integration = "h"
two_way = true
"#,
        url = handler.url
    )
}

async fn reliable(host: &TestHost, resume: Option<&str>) -> (Ws, Value) {
    reliable_connect(host.addr, resume).await
}

async fn frame(ws: &mut Ws) -> Value {
    next_frame(ws).await
}

async fn send(ws: &mut Ws, frame: Value) {
    send_frame(ws, frame).await;
}

async fn post(host: &TestHost, id: &str, data: &str) -> Result<(), u16> {
    let client = mgmt_client(host.addr);
    client
        .post_to_connection()
        .connection_id(id)
        .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(data))
        .send()
        .await
        .map(drop)
        .map_err(|e| e.raw_response().map_or(0, |r| r.status().as_u16()))
}

/// Upgrades over raw TCP offering `offer`; returns the 101's head and the open WebSocket.
async fn upgrade_offering(host: &TestHost, offer: &str) -> (String, Ws) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let extra = format!("Sec-WebSocket-Protocol: {offer}\r\n");
    stream
        .write_all(upgrade_request(host.addr, "/dev", &extra).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(within("101 head", stream.read_u8()).await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    (head, wrap_client(stream).await)
}

#[tokio::test]
async fn a_client_that_does_not_offer_the_subprotocol_is_a_plain_connection() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (mut ws, response) = try_connect(host.addr, "/dev", &[], None).await.unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    send_text(&mut ws, "hi").await;
    assert_eq!(next_text(&mut ws).await, "echo:hi");
    // Another protocol offered: not reliable either, and the 101 names none (no $connect chose).
    let (head, mut ws) = upgrade_offering(&host, "chat").await;
    assert_eq!(raw_header(&head, "sec-websocket-protocol"), None);
    send_text(&mut ws, "hi").await;
    assert_eq!(next_text(&mut ws).await, "echo:hi");
}

#[tokio::test]
async fn the_extension_off_ignores_the_offer() {
    let handler = Handler::start(echo).await;
    let host =
        TestHost::start(&config(&handler, "").replace("enabled = true", "enabled = false")).await;
    let (head, mut ws) = upgrade_offering(&host, "ch-reliable.v1").await;
    assert_eq!(raw_header(&head, "sec-websocket-protocol"), None);
    send_text(&mut ws, "hi").await;
    assert_eq!(next_text(&mut ws).await, "echo:hi");
}

#[tokio::test]
async fn messages_are_numbered_answered_once_per_key_and_replayed_after_a_drop() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (mut ws, welcome) = reliable(&host, None).await;
    assert_eq!(welcome["recovered"], false);
    assert_eq!(welcome["seq"], 0);
    assert!(welcome.get("reason").is_none());
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    assert!(is_connection_id(&id));
    let connect = handler.wait_route("$connect", Some(&id)).await;
    assert_eq!(
        connect["headers"]["Sec-WebSocket-Protocol"], "ch-reliable.v1",
        "$connect sees the offer"
    );

    // A message is answered by a numbered reply carrying the route's response.
    send(&mut ws, json!({"t":"msg","id":"k1","d":"hello"})).await;
    let reply = frame(&mut ws).await;
    assert_eq!(reply, json!({"t":"reply","s":1,"id":"k1","d":"echo:hello"}));
    let event = handler.wait_body("hello").await;
    assert_eq!(event["requestContext"]["idempotencyKey"], "k1");

    // The same key again: the same answer, no second invocation.
    send(&mut ws, json!({"t":"msg","id":"k1","d":"hello"})).await;
    let again = frame(&mut ws).await;
    assert_eq!(again, json!({"t":"reply","s":2,"id":"k1","d":"echo:hello"}));
    let invocations = handler
        .events()
        .iter()
        .filter(|e| e["requestContext"]["idempotencyKey"] == "k1")
        .count();
    assert_eq!(invocations, 1);

    // Posts are numbered msg frames.
    post(&host, &id, "p1").await.unwrap();
    assert_eq!(frame(&mut ws).await, json!({"t":"msg","s":3,"d":"p1"}));
    send(&mut ws, json!({"t":"ack","s":3})).await;

    // The connection drops without a Close frame; posts meanwhile answer 200.
    drop(ws);
    post(&host, &id, "p2").await.unwrap();
    post(&host, &id, "p3").await.unwrap();
    let (mut ws, resumed) = reliable(&host, Some(&resume_offer(&welcome, 3))).await;
    assert_eq!(resumed["recovered"], true);
    assert_eq!(resumed["connectionId"], id.as_str());
    assert_eq!(resumed["seq"], 3);
    assert_ne!(
        resumed["resumeToken"], welcome["resumeToken"],
        "the token rotates"
    );
    assert_eq!(frame(&mut ws).await, json!({"t":"msg","s":4,"d":"p2"}));
    assert_eq!(frame(&mut ws).await, json!({"t":"msg","s":5,"d":"p3"}));
    // No $disconnect and no second $connect for the drop.
    let events = handler.events();
    assert_eq!(events.iter().filter(|e| route(e) == "$connect").count(), 1);
    assert_eq!(
        events.iter().filter(|e| route(e) == "$disconnect").count(),
        0
    );

    // Once the client has shown it has the new token (any frame), the old one is spent: a replay
    // of it starts a fresh session.
    send(&mut ws, json!({"t":"ack","s":5})).await;
    send(&mut ws, json!({"t":"ping"})).await;
    assert_eq!(frame(&mut ws).await["t"], "pong");
    let (_fresh, replayed) = reliable(&host, Some(&resume_offer(&welcome, 3))).await;
    assert_eq!(replayed["recovered"], false);
    assert_eq!(replayed["reason"], "unknown");
    assert_ne!(replayed["connectionId"], id.as_str());

    // A clean close ends the session: $disconnect once, with the client's code.
    ws.close(Some(CloseFrame {
        code: 4321.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let disconnect = handler.wait_route("$disconnect", Some(&id)).await;
    assert_eq!(disconnect["requestContext"]["disconnectStatusCode"], 4321);
    assert_eq!(post(&host, &id, "late").await, Err(410));

    // One resume recovered with the two posts replayed, one refused; one message answered
    // from its key.
    let e = scrape(&host.http("")).await;
    let resumes = |recovered| {
        e.sum(
            "connection_host_session_resumes",
            &[("recovered", recovered)],
        )
    };
    assert_eq!((resumes("true"), resumes("false")), (1.0, 1.0));
    assert_eq!(e.sum("connection_host_session_replayed_frames", &[]), 2.0);
    let hits = |kind| e.sum("connection_host_idempotency_hits", &[("kind", kind)]);
    assert_eq!((hits("completed"), hits("pending")), (1.0, 0.0));
}

#[tokio::test]
async fn the_window_ends_a_detached_session_once_with_its_closing_status() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (ws, welcome) = reliable(&host, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    drop(ws);
    // Away, but the session answers GetConnection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = mgmt_client(host.addr)
        .get_connection()
        .connection_id(&id)
        .send()
        .await;
    assert!(got.is_ok(), "GetConnection answers for a detached session");
    let disconnect = handler.wait_route("$disconnect", Some(&id)).await;
    assert_eq!(disconnect["requestContext"]["disconnectStatusCode"], 1006);
    assert_eq!(post(&host, &id, "late").await, Err(410));
    let (_ws, late) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(late["recovered"], false);
    assert_eq!(late["reason"], "expired");
}

/// How many times the route was invoked for idempotency key `key`.
fn invocations(handler: &Handler, key: &str) -> usize {
    handler
        .events()
        .iter()
        .filter(|e| e["requestContext"]["idempotencyKey"] == key)
        .count()
}

#[tokio::test]
async fn messages_sent_again_after_the_window_passed_are_not_invoked_again() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (mut ws, first) = reliable(&host, None).await;
    let id = first["connectionId"].as_str().unwrap().to_string();
    send(&mut ws, json!({"t":"msg","id":"done","d":"one"})).await;
    assert_eq!(frame(&mut ws).await["d"], "echo:one");
    drop(ws);
    // A resume the client confirms: the first token is spent.
    let (mut ws, latest) = reliable(&host, Some(&resume_offer(&first, 1))).await;
    assert_eq!(latest["recovered"], true);
    send(&mut ws, json!({"t":"ack","s":1})).await;
    // Still running when the connection drops: its reply never reaches the client.
    let slow = json!({"t":"msg","id":"slow","d":"{\"action\":\"slow\"}"});
    send(&mut ws, slow.clone()).await;
    handler.wait_body("{\"action\":\"slow\"}").await;
    drop(ws);
    handler.wait_route("$disconnect", Some(&id)).await;

    // After the window, a forged token and the spent one prove nothing: their fresh sessions
    // start with keys of their own.
    let forged = format!(
        "ch-resume.0.{}.{}",
        id.trim_end_matches('='),
        "A".repeat(43)
    );
    for (n, offer) in [forged, resume_offer(&first, 1)].iter().enumerate() {
        let (mut ws, other) = reliable(&host, Some(offer)).await;
        assert_eq!(other["recovered"], false);
        send(&mut ws, json!({"t":"msg","id":"done","d":"one"})).await;
        assert_eq!(frame(&mut ws).await["d"], "echo:one");
        assert_eq!(invocations(&handler, "done"), 2 + n, "{offer}");
    }
    // The session's latest token does: the fresh session carries on its keys, and what the
    // client sends again is answered as before, not invoked again.
    let (mut ws, fresh) = reliable(&host, Some(&resume_offer(&latest, 1))).await;
    assert_eq!(
        (fresh["recovered"].clone(), fresh["reason"].clone()),
        (json!(false), json!("expired"))
    );
    assert_ne!(fresh["connectionId"], id.as_str());
    send(&mut ws, slow.clone()).await;
    assert_eq!(
        frame(&mut ws).await,
        json!({"t":"reply","s":1,"id":"slow","d":"echo:{\"action\":\"slow\"}"})
    );
    send(&mut ws, json!({"t":"msg","id":"done","d":"one"})).await;
    assert_eq!(frame(&mut ws).await["d"], "echo:one");
    assert_eq!(
        (invocations(&handler, "done"), invocations(&handler, "slow")),
        (3, 1)
    );
    // And on into the session after that one, once it ended too.
    ws.close(None).await.unwrap();
    let second = fresh["connectionId"].as_str().unwrap();
    handler.wait_route("$disconnect", Some(second)).await;
    let (mut ws, third) = reliable(&host, Some(&resume_offer(&fresh, 2))).await;
    assert_eq!(third["reason"], "expired");
    send(&mut ws, slow).await;
    assert_eq!(frame(&mut ws).await["s"], 1);
    assert_eq!(invocations(&handler, "slow"), 1);
}

#[tokio::test]
async fn a_message_sent_again_while_its_first_attempt_runs_past_the_session_is_invoked_once() {
    let handler = Handler::start(echo).await;
    let toml = config(&handler, "").replace("resume_window = \"3s\"", "resume_window = \"300ms\"");
    let host = TestHost::start(&toml).await;
    let (mut ws, welcome) = reliable(&host, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    // Answered 1.5 s after it arrives: the session ends while it runs.
    let slow = json!({"t":"msg","id":"slow","d":"{\"action\":\"slow\"}"});
    send(&mut ws, slow.clone()).await;
    handler.wait_body("{\"action\":\"slow\"}").await;
    drop(ws);
    handler.wait_route("$disconnect", Some(&id)).await;
    let (mut ws, fresh) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(fresh["reason"], "expired");
    // The key is still claimed by the first attempt: the fresh session answers with its outcome.
    send(&mut ws, slow).await;
    let reply = frame(&mut ws).await;
    assert_eq!(
        (reply["id"].as_str(), reply["d"].as_str()),
        (Some("slow"), Some("echo:{\"action\":\"slow\"}"))
    );
    assert_eq!(invocations(&handler, "slow"), 1);
}

#[tokio::test]
async fn delete_connection_ends_a_detached_session() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (ws, welcome) = reliable(&host, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    mgmt_client(host.addr)
        .delete_connection()
        .connection_id(&id)
        .send()
        .await
        .unwrap();
    let disconnect = handler.wait_route("$disconnect", Some(&id)).await;
    assert_eq!(disconnect["requestContext"]["disconnectStatusCode"], 1000);
}

#[tokio::test]
async fn a_post_sent_again_with_its_idempotency_key_is_kept_once() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (mut ws, welcome) = reliable(&host, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    let sdk = mgmt_client(host.addr);
    // A keyed post sent again (its first answer lost, say) is kept once, and answered 200.
    post_with_key(&sdk, &id, "one", "order-1").await.unwrap();
    post_with_key(&sdk, &id, "one", "order-1").await.unwrap();
    // The header's structured form (a quoted string) names the same key.
    post_with_key(&sdk, &id, "one", "\"order-1\"")
        .await
        .unwrap();
    // Without a key, a post sent again is kept again: the client gets both.
    post(&host, &id, "plain").await.unwrap();
    post(&host, &id, "plain").await.unwrap();
    assert_eq!(
        frame(&mut ws).await,
        json!({"t":"msg","s":1,"p":"order-1","d":"one"})
    );
    assert_eq!(frame(&mut ws).await, json!({"t":"msg","s":2,"d":"plain"}));
    assert_eq!(frame(&mut ws).await, json!({"t":"msg","s":3,"d":"plain"}));
    // Acknowledged, the key is still remembered: sent again, nothing is kept.
    send(&mut ws, json!({"t":"ack","s":3})).await;
    post_with_key(&sdk, &id, "one", "order-1").await.unwrap();
    // The same key for another body is refused, and nothing is kept.
    let (status, body) = post_with_key(&sdk, &id, "two", "order-1")
        .await
        .unwrap_err();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("different body"), "{body}");
    // Bad keys are refused with what is wrong.
    for bad in ["", "\"\"", &"k".repeat(129)] {
        let (status, body) = post_with_key(&sdk, &id, "bad", bad).await.unwrap_err();
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(
            body.contains("Idempotency-Key") && body.contains("1 to 128 printable ASCII"),
            "{body}"
        );
    }
    // The next post is the next frame: nothing was kept in between.
    post_with_key(&sdk, &id, "two", "order-2").await.unwrap();
    assert_eq!(
        frame(&mut ws).await,
        json!({"t":"msg","s":4,"p":"order-2","d":"two"})
    );
    // Kept across a drop and a resume on the same host.
    drop(ws);
    post_with_key(&sdk, &id, "two", "order-2").await.unwrap();
    let (mut ws, resumed) = reliable(&host, Some(&resume_offer(&welcome, 3))).await;
    assert_eq!(resumed["recovered"], true);
    assert_eq!(frame(&mut ws).await["s"], 4);
    post(&host, &id, "last").await.unwrap();
    assert_eq!(frame(&mut ws).await, json!({"t":"msg","s":5,"d":"last"}));
}

#[tokio::test]
async fn a_full_buffer_refuses_posts_with_429_and_the_resume_cannot_recover() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (ws, welcome) = reliable(&host, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let chunk = "x".repeat(1000);
    let mut refused = None;
    for i in 0..10 {
        if let Err(status) = post(&host, &id, &chunk).await {
            refused = Some((i, status));
            break;
        }
    }
    let (accepted, status) = refused.expect("a 4 KiB buffer refuses some of ten 1 KB posts");
    assert_eq!(status, 429);
    assert!(accepted >= 3, "{accepted} posts fit");
    let (_ws, resumed) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(resumed["recovered"], false);
    assert_eq!(resumed["reason"], "overflow");
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (mut ws, _) = reliable(&host, None).await;
    for (sent, code) in [
        ("not json", "BadFrame"),
        (r#"{"t":"nope"}"#, "UnknownType"),
        (r#"{"t":"msg","d":"x"}"#, "BadKey"),
        (r#"{"t":"msg","id":"k","d":"x","b":"AA=="}"#, "BadPayload"),
        (r#"{"t":"msg","id":"k","b":"AA=="}"#, "BadPayload"),
        (r#"{"t":"ack","s":99}"#, "BadAck"),
    ] {
        send_text(&mut ws, sent).await;
        let error = frame(&mut ws).await;
        assert_eq!(error["t"], "error", "{sent}");
        assert_eq!(error["code"], code, "{sent}");
    }
    ws.send(Message::Binary(vec![1, 2].into())).await.unwrap();
    assert_eq!(frame(&mut ws).await["code"], "BadFrame");
    send(&mut ws, json!({"t":"ping","id":"p"})).await;
    assert_eq!(frame(&mut ws).await, json!({"t":"pong","id":"p"}));
    // Still serving: the first numbered frame is 1.
    send(&mut ws, json!({"t":"msg","id":"ok","d":"fine"})).await;
    assert_eq!(
        frame(&mut ws).await,
        json!({"t":"reply","s":1,"id":"ok","d":"echo:fine"})
    );
}

#[tokio::test]
async fn forged_and_cross_session_tokens_do_not_resume() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (a, welcome_a) = reliable(&host, None).await;
    let (_b, welcome_b) = reliable(&host, None).await;
    drop(a);
    let id_a = welcome_a["connectionId"].as_str().unwrap();
    // A forged secret for A's ID.
    let forged = format!(
        "ch-resume.0.{}.{}",
        id_a.trim_end_matches('='),
        "A".repeat(43)
    );
    let (_ws, answer) = reliable(&host, Some(&forged)).await;
    assert_eq!(
        (answer["recovered"].clone(), answer["reason"].clone()),
        (json!(false), json!("unknown"))
    );
    // B's token with A's ID.
    let b_secret = welcome_b["resumeToken"]
        .as_str()
        .unwrap()
        .split_once('.')
        .unwrap()
        .1;
    let crossed = format!("ch-resume.0.{}.{b_secret}", id_a.trim_end_matches('='));
    let (_ws, answer) = reliable(&host, Some(&crossed)).await;
    assert_eq!(answer["recovered"], false);
    // Garbage in the resume entry.
    let (_ws, answer) = reliable(&host, Some("ch-resume.x.y")).await;
    assert_eq!(answer["reason"], "unknown");
    // A sequence number ahead of what was sent.
    let (_ws, answer) = reliable(&host, Some(&resume_offer(&welcome_a, 7))).await;
    assert_eq!(
        (answer["recovered"].clone(), answer["reason"].clone()),
        (json!(false), json!("sequence"))
    );
    // The resume entry never reaches $connect.
    for e in handler.events().iter().filter(|e| route(e) == "$connect") {
        let offered = e["headers"]["Sec-WebSocket-Protocol"]
            .as_str()
            .unwrap_or_default();
        assert!(!offered.contains("ch-resume"), "{offered}");
    }
}

#[tokio::test]
async fn a_resume_while_the_old_connection_is_still_open_replaces_it() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (mut old, welcome) = reliable(&host, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    let (mut new, resumed) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(resumed["recovered"], true);
    let (code, _) = expect_close(&mut old).await;
    assert_eq!(code, 4001);
    post(&host, &id, "to the new one").await.unwrap();
    assert_eq!(
        frame(&mut new).await,
        json!({"t":"msg","s":1,"d":"to the new one"})
    );
    assert_eq!(
        handler
            .events()
            .iter()
            .filter(|e| route(e) == "$disconnect")
            .count(),
        0
    );
}

#[tokio::test]
async fn a_message_resent_while_its_first_attempt_runs_is_invoked_once() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (mut ws, welcome) = reliable(&host, None).await;
    send(
        &mut ws,
        json!({"t":"msg","id":"s1","d":"{\"action\":\"slow\"}"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(ws);
    let (mut ws, resumed) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(resumed["recovered"], true);
    send(
        &mut ws,
        json!({"t":"msg","id":"s1","d":"{\"action\":\"slow\"}"}),
    )
    .await;
    let reply = frame(&mut ws).await;
    assert_eq!(reply["id"], "s1");
    assert_eq!(reply["d"], "echo:{\"action\":\"slow\"}");
    let invocations = handler
        .events()
        .iter()
        .filter(|e| e["requestContext"]["idempotencyKey"] == "s1")
        .count();
    assert_eq!(invocations, 1);
}

#[tokio::test]
async fn ordered_routes_invoke_a_sessions_messages_one_at_a_time_in_order() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "ordered = true")).await;
    let (mut ws, _) = reliable(&host, None).await;
    send(
        &mut ws,
        json!({"t":"msg","id":"a","d":"{\"action\":\"slow\"}"}),
    )
    .await;
    send(&mut ws, json!({"t":"msg","id":"b","d":"quick"})).await;
    let first = frame(&mut ws).await;
    let second = frame(&mut ws).await;
    assert_eq!(
        (first["id"].clone(), second["id"].clone()),
        (json!("a"), json!("b"))
    );
}

#[tokio::test]
async fn the_connect_routes_subprotocol_travels_in_the_welcome() {
    // `$connect` selects `chat` (as lambda_http answers); the 101 can name only one protocol.
    let handler = Handler::start(|e| match event_type(e) {
        "CONNECT" => Reply::json(json!({
            "statusCode": 200,
            "headers": {"Sec-WebSocket-Protocol": "chat"}
        })),
        _ => Reply::proxy(200, None),
    })
    .await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (head, mut ws) = upgrade_offering(&host, "chat, ch-reliable.v1").await;
    assert_eq!(
        raw_header(&head, "sec-websocket-protocol"),
        Some("ch-reliable.v1")
    );
    let welcome = frame(&mut ws).await;
    assert_eq!(welcome["protocol"], "chat");
    // A plain client offering `chat` gets `chat` in the 101, as on API Gateway.
    let (head, _ws) = upgrade_offering(&host, "chat").await;
    assert_eq!(raw_header(&head, "sec-websocket-protocol"), Some("chat"));
}

#[tokio::test]
async fn a_resume_as_another_principal_starts_afresh() {
    use jsonwebtoken::{EncodingKey, Header};
    const SECRET: &str = "a-session-test-secret-0123456789";
    let token = |sub: &str| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        jsonwebtoken::encode(
            &Header::default(),
            &json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let handler = Handler::start(echo).await;
    let jwt = format!(
        r#"
[authorizers.jwt]
type = "jwt"
token_source = "query"
query_parameter = "token"
[[authorizers.jwt.keys]]
algorithm = "HS256"
secret = "{SECRET}"
"#
    );
    let toml = config(&handler, "").replace(
        "[routes.\"$connect\"]\nintegration = \"h\"",
        "[routes.\"$connect\"]\nintegration = \"h\"\nauthorizer = \"jwt\"",
    ) + &jwt;
    let host = TestHost::start(&toml).await;
    let connect = |sub: &str, resume: Option<String>| {
        let mut offer = "ch-reliable.v1".to_string();
        if let Some(r) = resume {
            offer = format!("{offer}, {r}");
        }
        let path = format!("/dev?token={}", token(sub));
        let addr = host.addr;
        async move {
            let (mut ws, _) = try_connect(addr, &path, &[("Sec-WebSocket-Protocol", &offer)], None)
                .await
                .expect("authorized handshake");
            let welcome = next_frame(&mut ws).await;
            (ws, welcome)
        }
    };
    let (mut ws, alice) = connect("alice", None).await;
    send(&mut ws, json!({"t":"msg","id":"k","d":"work"})).await;
    assert_eq!(frame(&mut ws).await["d"], "echo:work");
    drop(ws);
    // Mallory holds alice's token (stolen), but the authorizer says she is someone else.
    let (_ws, stolen) = connect("mallory", Some(resume_offer(&alice, 0))).await;
    assert_eq!(stolen["recovered"], false);
    assert_eq!(stolen["reason"], "principal");
    // Alice herself resumes.
    let (mut ws, resumed) = connect("alice", Some(resume_offer(&alice, 0))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["connectionId"], alice["connectionId"]);
    // Once the session has ended, its token carries its keys on into a fresh session, for alice
    // (her message is answered as before, not invoked again) and not for mallory.
    send(&mut ws, json!({"t":"ack","s":1})).await;
    ws.close(None).await.unwrap();
    let id = alice["connectionId"].as_str().unwrap();
    handler.wait_route("$disconnect", Some(id)).await;
    let (mut ws, stolen) = connect("mallory", Some(resume_offer(&resumed, 1))).await;
    assert_eq!(stolen["reason"], "expired");
    send(&mut ws, json!({"t":"msg","id":"k","d":"work"})).await;
    assert_eq!(frame(&mut ws).await["d"], "echo:work");
    assert_eq!(invocations(&handler, "k"), 2);
    let (mut ws, fresh) = connect("alice", Some(resume_offer(&resumed, 1))).await;
    assert_eq!(fresh["reason"], "expired");
    send(&mut ws, json!({"t":"msg","id":"k","d":"work"})).await;
    assert_eq!(frame(&mut ws).await["d"], "echo:work");
    assert_eq!(invocations(&handler, "k"), 2);
    // Without a token the authorizer refuses the resume like any connection.
    let refused = try_connect(
        host.addr,
        "/dev",
        &[(
            "Sec-WebSocket-Protocol",
            &format!("ch-reliable.v1, {}", resume_offer(&resumed, 0)),
        )],
        None,
    )
    .await;
    assert_eq!(refused_status(refused), 401);
}

#[tokio::test]
async fn the_maximum_duration_counts_from_the_sessions_start() {
    let handler = Handler::start(echo).await;
    let toml = config(&handler, "") + "\n[limits]\nmax_connection_duration = \"2s\"\n";
    let host = TestHost::start(&toml).await;
    let started = std::time::Instant::now();
    let (ws, welcome) = reliable(&host, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(ws);
    let (mut ws, resumed) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(resumed["recovered"], true);
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, 1001);
    let lasted = started.elapsed();
    assert!(
        lasted < Duration::from_millis(2900),
        "the resumed connection closed {lasted:?} after the session started, not 2 s after the resume"
    );
    let disconnect = handler.wait_route("$disconnect", Some(&id)).await;
    assert_eq!(disconnect["requestContext"]["disconnectStatusCode"], 1001);
}

#[tokio::test]
async fn a_welcome_lost_in_a_drop_does_not_lose_the_session() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (ws, welcome) = reliable(&host, None).await;
    drop(ws);
    // The resume's welcome (with the new token) is lost: the connection drops before the client
    // reads it, so the client still holds the first token.
    let offer = format!("ch-reliable.v1, {}", resume_offer(&welcome, 0));
    let (ws, _) = try_connect(
        host.addr,
        "/dev",
        &[("Sec-WebSocket-Protocol", &offer)],
        None,
    )
    .await
    .unwrap();
    drop(ws);
    let (mut ws, again) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(again["recovered"], true, "{again}");
    assert_eq!(again["connectionId"], welcome["connectionId"]);
    // Confirmed now (an acknowledgement shows the client read the welcome): the first token
    // stops working.
    send(&mut ws, json!({"t":"ack","s":0})).await;
    send(&mut ws, json!({"t":"ping"})).await;
    assert_eq!(frame(&mut ws).await["t"], "pong");
    let (_ws, replayed) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(replayed["recovered"], false);
}

#[tokio::test]
async fn an_attempt_the_client_gave_up_on_that_wins_late_does_not_lose_the_session() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (ws, welcome) = reliable(&host, None).await;
    let id = welcome["connectionId"].clone();
    drop(ws);
    // The client's first reconnect attempt stalls on its way (a slow network); it gives up on
    // it and tries again with the same token, and that second attempt resumes.
    let (mut second, resumed) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    // Then the first attempt arrives after all, and takes the session over: the client's
    // connection is replaced (4001).
    let (late, _) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    let (code, _) = expect_close(&mut second).await;
    assert_eq!(code, 4001);
    drop(late);
    // The client resumes with the latest token it holds, the second attempt's: still its session.
    let (mut ws, again) = reliable(&host, Some(&resume_offer(&resumed, 0))).await;
    assert_eq!(
        (again["recovered"].clone(), again["connectionId"].clone()),
        (json!(true), id),
        "{again}"
    );
    // Once the client shows it holds the newest token, the others stop working.
    send(&mut ws, json!({"t":"ack","s":0})).await;
    send(&mut ws, json!({"t":"ping"})).await;
    assert_eq!(frame(&mut ws).await["t"], "pong");
    for stale in [&welcome, &resumed] {
        let (_ws, refused) = reliable(&host, Some(&resume_offer(stale, 0))).await;
        assert_eq!(refused["recovered"], false, "{refused}");
    }
}

#[tokio::test]
async fn a_ping_before_the_welcome_arrived_keeps_the_token_the_client_holds() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (ws, welcome) = reliable(&host, None).await;
    drop(ws);
    // A resume whose welcome has not reached the client yet (a slow network); the client pings
    // it meanwhile, then gives up on it and resumes again with the token it holds.
    let offer = format!("ch-reliable.v1, {}", resume_offer(&welcome, 0));
    let (mut ws, _) = try_connect(
        host.addr,
        "/dev",
        &[("Sec-WebSocket-Protocol", &offer)],
        None,
    )
    .await
    .unwrap();
    send(&mut ws, json!({"t":"ping","id":"before-welcome"})).await;
    // The welcome, then the pong: the ping was read before the connection goes.
    assert_eq!(frame(&mut ws).await["t"], "welcome");
    assert_eq!(frame(&mut ws).await["t"], "pong");
    drop(ws);
    let (mut ws, again) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(again["recovered"], true, "{again}");
    // An acknowledgement shows the client read the welcome: the older token stops working.
    send(&mut ws, json!({"t":"ack","s":0})).await;
    send(&mut ws, json!({"t":"ping"})).await;
    assert_eq!(frame(&mut ws).await["t"], "pong");
    let (_ws, refused) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(refused["recovered"], false, "{refused}");
}

#[tokio::test]
async fn many_lost_welcomes_in_a_row_do_not_lose_the_session() {
    let handler = Handler::start(echo).await;
    let host = TestHost::start(&config(&handler, "")).await;
    let (ws, welcome) = reliable(&host, None).await;
    drop(ws);
    // Resume after resume whose welcome never reaches the client (each connection drops first):
    // the client keeps offering the token it holds.
    for _ in 0..6 {
        let (ws, _) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
        drop(ws);
    }
    let (_ws, again) = reliable(&host, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(again["recovered"], true, "{again}");
}
