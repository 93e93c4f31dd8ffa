//! The demo as a user runs it (`functions/demo.toml`): the real `authorizer` and `chat` binaries
//! under the host's local Lambda runtime, the groups extension as the rooms backend, and three
//! WebSocket clients chatting across rooms.

use e2e_tests::{
    HostProcess, TempDir, Ws, free_loopback_addrs, lambda_client, next_text, start_host, within,
    workspace_binary, ws_connect,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// The repository's `functions/demo.toml`, pointed at the workspace build's binaries (already
/// built, so without the `build` commands) and at `addr`.
fn demo_config(addr: SocketAddr) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let demo =
        std::fs::read_to_string(repo.join("functions/demo.toml")).expect("functions/demo.toml");
    let bin_dir = workspace_binary("chat").parent().unwrap().to_path_buf();
    let config = demo
        .lines()
        .filter(|l| !l.starts_with("build = "))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "${CARGO_TARGET_DIR:-target}/debug",
            &bin_dir.display().to_string(),
        )
        .replace(
            "\"functions/web\"",
            &format!("\"{}\"", repo.join("functions/web").display()),
        )
        .replace("127.0.0.1:8080", &addr.to_string());
    assert!(
        config.contains(&addr.to_string()),
        "demo.toml no longer sets server.listen"
    );
    config
}

struct Demo {
    host: HostProcess,
    addr: SocketAddr,
    _dir: TempDir,
}

async fn start_demo() -> Demo {
    let dir = TempDir::new("chat-demo");
    let addr = free_loopback_addrs(1)[0];
    let host = start_host("demo", dir.path(), addr, &demo_config(addr), &[]).await;
    Demo {
        host,
        addr,
        _dir: dir,
    }
}

async fn connect(addr: SocketAddr, nickname: &str) -> Result<Ws, u16> {
    ws_connect(&format!("ws://{addr}/dev?nickname={nickname}")).await
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

async fn next_json(ws: &mut Ws) -> Value {
    let text = next_text(ws, Duration::from_secs(10)).await;
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Asks for a pong and returns everything that arrived before it: proof of what a client did
/// (or did not) receive up to now.
async fn until_pong(ws: &mut Ws) -> Vec<Value> {
    send(ws, json!({"action": "ping"})).await;
    let mut before = Vec::new();
    loop {
        let v = next_json(ws).await;
        if v["type"] == "pong" {
            return before;
        }
        before.push(v);
    }
}

async fn join(ws: &mut Ws, room: &str) {
    send(ws, json!({"action": "join", "room": room})).await;
    let reply = next_json(ws).await;
    assert_eq!(reply, json!({"type": "joined", "room": room}));
}

#[tokio::test]
async fn three_clients_chat_across_rooms_through_the_real_functions() {
    let demo = start_demo().await;
    let addr = demo.addr;
    // The authorizer refuses a bad nickname before any $connect runs.
    assert_eq!(connect(addr, "%3Cscript%3E").await.err(), Some(401));

    let mut alice = connect(addr, "alice").await.expect("alice");
    let mut bob = connect(addr, "bob").await.expect("bob");
    let mut carol = connect(addr, "carol").await.expect("carol");

    join(&mut alice, "lobby").await;
    join(&mut bob, "lobby").await;
    let presence = next_json(&mut alice).await;
    assert_eq!(presence["type"], "presence");
    assert_eq!(presence["event"], "join");
    assert_eq!(
        presence["nickname"], "bob",
        "the nickname comes from the authorizer context"
    );
    join(&mut carol, "games").await;
    join(&mut bob, "games").await;
    assert_eq!(next_json(&mut carol).await["nickname"], "bob");

    // A lobby message reaches the lobby (sender included), not carol.
    let text = "<b>hi</b> & <img src=x>";
    send(
        &mut alice,
        json!({"action": "send", "room": "lobby", "text": text}),
    )
    .await;
    for ws in [&mut alice, &mut bob] {
        let m = next_json(ws).await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["room"], "lobby");
        assert_eq!(m["nickname"], "alice");
        assert_eq!(m["text"], text);
    }
    assert_eq!(until_pong(&mut carol).await, Vec::<Value>::new());

    // A games message reaches bob and carol, not alice.
    send(
        &mut carol,
        json!({"action": "send", "room": "games", "text": "gg"}),
    )
    .await;
    for ws in [&mut carol, &mut bob] {
        let m = next_json(ws).await;
        assert_eq!(
            (m["room"].as_str(), m["text"].as_str()),
            (Some("games"), Some("gg"))
        );
        assert_eq!(m["nickname"], "carol");
    }
    assert_eq!(until_pong(&mut alice).await, Vec::<Value>::new());

    // Invalid input is answered with an error to the sender only.
    for bad in [
        json!({"action": "send", "room": "games", "text": "not a member"}),
        json!({"action": "join", "room": "no spaces allowed"}),
        json!({"action": "fly"}),
        json!({"action": "send", "room": "lobby", "text": "hi", "extra": 1}),
    ] {
        send(&mut alice, bad.clone()).await;
        let reply = next_json(&mut alice).await;
        assert_eq!(reply["type"], "error", "{bad} → {reply}");
    }
    alice.send(Message::text("not json")).await.unwrap();
    assert_eq!(next_json(&mut alice).await["type"], "error");
    assert_eq!(until_pong(&mut bob).await, Vec::<Value>::new());

    // Members and leaving.
    send(&mut bob, json!({"action": "list", "room": "lobby"})).await;
    let members = next_json(&mut bob).await;
    assert_eq!(members["type"], "members");
    assert_eq!(members["connectionIds"].as_array().map(Vec::len), Some(2));
    send(&mut bob, json!({"action": "leave", "room": "lobby"})).await;
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "left", "room": "lobby"})
    );
    let left = next_json(&mut alice).await;
    assert_eq!(
        (left["event"].as_str(), left["nickname"].as_str()),
        (Some("leave"), Some("bob"))
    );

    // A client that goes away stops receiving; the others carry on.
    drop(carol);
    send(
        &mut bob,
        json!({"action": "send", "room": "games", "text": "still here"}),
    )
    .await;
    assert_eq!(next_json(&mut bob).await["text"], "still here");
    let log = demo.host.log_text();
    assert!(!log.contains("panicked"), "a function panicked:\n{log}");
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
        demo_config(addr),
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
        let close = within("the close frame", Duration::from_secs(5), async {
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
    let exited = e2e_tests::eventually("the host exits", Duration::from_secs(15), || {
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = demo.host.pid().expect("running");
    let started = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    e2e_tests::eventually("the host exits", Duration::from_secs(15), || {
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
