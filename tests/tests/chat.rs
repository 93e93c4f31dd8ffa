//! The demo as a user runs it (`functions/demo.toml`): the real `authorizer` and `chat` binaries
//! under the host's local Lambda runtime, the groups extension as the rooms backend, and three
//! WebSocket clients chatting across rooms.

use e2e_tests::chat::{connect, demo_config, join, three_clients_chat_across_rooms};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use test_kit::{
    HostProcess, TempDir, free_loopback_addrs, lambda_client, start_host, within_for,
    workspace_binary,
};
use tokio_tungstenite::tungstenite::Message;

struct Demo {
    host: HostProcess,
    addr: SocketAddr,
    _dir: TempDir,
}

async fn start_demo() -> Demo {
    let dir = TempDir::new("chat-demo");
    let addr = free_loopback_addrs(1)[0];
    let config = demo_config("functions/demo.toml", addr);
    let host = start_host("demo", dir.path(), addr, &config, &[]).await;
    Demo {
        host,
        addr,
        _dir: dir,
    }
}

#[tokio::test]
async fn three_clients_chat_across_rooms_through_the_real_functions() {
    let demo = start_demo().await;
    three_clients_chat_across_rooms(demo.addr, &demo.host).await;
}

#[tokio::test]
async fn the_demo_page_is_served() {
    let demo = start_demo().await;
    let page = reqwest::get(format!("http://{}/", demo.addr))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("chat.js"), "{html}");
    let missing = reqwest::get(format!("http://{}/nope.html", demo.addr))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The stage path is still the WebSocket endpoint, not a file.
    let stage = reqwest::get(format!("http://{}/dev", demo.addr))
        .await
        .unwrap();
    assert_eq!(stage.status(), 426);
}

/// Invokes `function` through the host's Lambda Invoke API with the official SDK client; returns
/// the function error kind (if any) and the payload.
async fn invoke(addr: SocketAddr, function: &str, event: &str) -> (Option<String>, Value) {
    let out = lambda_client(addr)
        .await
        .invoke()
        .function_name(function)
        .payload(aws_sdk_lambda::primitives::Blob::new(event))
        .send()
        .await
        .unwrap_or_else(|e| panic!("invoking {function}: {e:?}"));
    let payload = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
    (out.function_error().map(str::to_string), payload)
}

#[tokio::test]
async fn the_example_functions_answer_the_captured_aws_sample_events() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/tests/fixtures");
    let sample = |name: &str| std::fs::read_to_string(fixtures.join(name)).unwrap();
    let (connect, message, disconnect) = (
        sample("apiGatewayWebSocketApiConnect.json"),
        sample("apiGatewayWebSocketApiMessage.json"),
        sample("apiGatewayWebSocketApiDisconnect.json"),
    );
    let dir = TempDir::new("examples");
    let addr = free_loopback_addrs(1)[0];
    let config = format!(
        "{}\n[functions.echo]\ncommand = \"{}\"\n",
        demo_config("functions/demo.toml", addr),
        workspace_binary("echo").display()
    );
    let host = start_host("examples", dir.path(), addr, &config, &[]).await;

    // The samples come from an API without an authorizer or a nickname: chat refuses the
    // connect with 400 and answers the rest (its pushes to the sample's connection are Gone).
    let (error, response) = invoke(addr, "chat", &connect).await;
    assert_eq!(error, None, "{response}");
    assert_eq!(response["statusCode"], 400, "{response}");
    for event in [&message, &disconnect] {
        let (error, response) = invoke(addr, "chat", event).await;
        assert_eq!(error, None, "{response}");
        assert_eq!(response["statusCode"], 200, "{response}");
    }
    for event in [&connect, &message, &disconnect] {
        let (error, response) = invoke(addr, "echo", event).await;
        assert_eq!(error, None, "{response}");
        assert_eq!(response["statusCode"], 200, "{response}");
    }
    let sample_message: Value = serde_json::from_str(&message).unwrap();
    let (_, echoed) = invoke(addr, "echo", &message).await;
    assert_eq!(
        echoed["body"], sample_message["body"],
        "echo returns the body"
    );

    // The authorizer sample carries no token: the authorizer answers API Gateway's Unauthorized.
    let (error, response) = invoke(
        addr,
        "authorizer",
        &sample("apiGatewayAuthorizerWebSocketEvent.json"),
    )
    .await;
    assert_eq!(error.as_deref(), Some("Unhandled"), "{response}");
    assert_eq!(response["errorMessage"], "Unauthorized", "{response}");
    let log = host.log_text();
    assert!(!log.contains("panicked"), "a function panicked:\n{log}");
}

#[tokio::test]
async fn shutdown_runs_the_chat_disconnects_and_exits_promptly() {
    let mut demo = start_demo().await;
    let mut clients = Vec::new();
    for nickname in ["alice", "bob", "carol"] {
        let mut ws = connect(demo.addr, nickname).await.expect(nickname);
        join(&mut ws, "lobby").await;
        clients.push(ws);
    }
    let pid = demo.host.pid().expect("running");
    let started = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Every client is told the host is going away.
    for ws in &mut clients {
        let close = within_for("the close frame", Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        // Sends the queued close reply, as a browser does at once.
                        let _ = ws.flush().await;
                        return frame.map(|f| u16::from(f.code));
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await;
        assert_eq!(close, Some(1001));
    }
    let exited = test_kit::eventually("the host exits", Duration::from_secs(15), || {
        let done = demo.host.try_exit_status().is_some();
        async move { done }
    })
    .await;
    let log = demo.host.log_text();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the host took {:?} to drain three chat connections (exited after {exited:?}):\n{log}",
        started.elapsed()
    );
    assert!(!log.contains("drain timeout reached"), "{log}");
}

#[tokio::test]
async fn an_unused_browser_preconnect_does_not_hold_up_shutdown() {
    let mut demo = start_demo().await;
    // Chromium opens spare connections and may never send a request on them.
    let _spare = tokio::net::TcpStream::connect(demo.addr).await.unwrap();
    // Idle for a moment before the shutdown, as the spare connection would be (the scenario).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = demo.host.pid().expect("running");
    let started = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    test_kit::eventually("the host exits", Duration::from_secs(15), || {
        let done = demo.host.try_exit_status().is_some();
        async move { done }
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "an idle connection held the shutdown for {:?}",
        started.elapsed()
    );
}
