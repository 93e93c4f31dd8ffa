//! The chat demo's clients and its end-to-end scenario, shared by the tests that start the demo
//! from `functions/demo.toml` and from the SAM template (`functions/demo-template.toml`).

use futures_util::SinkExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use test_kit::{HostProcess, Ws, next_text_within, workspace_binary, ws_connect};
use tokio_tungstenite::tungstenite::Message;

/// The repository's root (the parent of the `tests` package).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the repository")
        .to_path_buf()
}

/// A demo configuration of the repository (`demo_file`, e.g. `functions/demo.toml`), pointed at
/// the workspace build's binaries (already built, so without the `build` commands), at the chat
/// page by absolute path and at `addr`.
pub fn demo_config(demo_file: &str, addr: SocketAddr) -> String {
    let repo = repo_root();
    let demo = std::fs::read_to_string(repo.join(demo_file))
        .unwrap_or_else(|e| panic!("{demo_file}: {e}"));
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
        "{demo_file} no longer sets server.listen"
    );
    config
}

/// Connects as a chat guest (the authorizer takes the nickname from the query string).
pub async fn connect(addr: SocketAddr, nickname: &str) -> Result<Ws, u16> {
    ws_connect(&format!("ws://{addr}/dev?nickname={nickname}")).await
}

/// Sends one JSON message.
pub async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// The next message, as JSON, within 10 s.
pub async fn next_json(ws: &mut Ws) -> Value {
    let text = next_text_within(ws, Duration::from_secs(10)).await;
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Asks for a pong and returns everything that arrived before it: proof of what a client did
/// (or did not) receive up to now.
pub async fn until_pong(ws: &mut Ws) -> Vec<Value> {
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

/// Joins `room` and checks the confirmation.
pub async fn join(ws: &mut Ws, room: &str) {
    send(ws, json!({"action": "join", "room": room})).await;
    let reply = next_json(ws).await;
    assert_eq!(reply, json!({"type": "joined", "room": room}));
}

/// Checks that `notice` is the host's presence notice of `principal`'s `action` in `group`
/// (`[extensions.groups] presence = "frames"`, which the chat's groups rooms backend relies on).
fn assert_presence(notice: &Value, group: &str, action: &str, principal: &str) {
    assert_eq!(
        (
            notice["type"].as_str(),
            notice["group"].as_str(),
            notice["action"].as_str(),
            notice["principal"].as_str(),
        ),
        (Some("presence"), Some(group), Some(action), Some(principal)),
        "{notice}"
    );
    assert!(notice["at"].as_i64().is_some_and(|t| t > 0), "{notice}");
}

/// The demo as a user meets it, against a host serving it at `addr`: the authorizer refuses a
/// bad nickname, three clients chat across two rooms with the host announcing joins and leaves,
/// invalid input gets errors, members are listed, and a client that leaves stops receiving. Ends by checking `host`'s log for panics.
pub async fn three_clients_chat_across_rooms(addr: SocketAddr, host: &HostProcess) {
    // The authorizer refuses a bad nickname before any $connect runs.
    assert_eq!(connect(addr, "%3Cscript%3E").await.err(), Some(401));

    let mut alice = connect(addr, "alice").await.expect("alice");
    let mut bob = connect(addr, "bob").await.expect("bob");
    let mut carol = connect(addr, "carol").await.expect("carol");

    join(&mut alice, "lobby").await;
    join(&mut bob, "lobby").await;
    // The host announces joins and leaves; the principal is the authorizer's.
    assert_presence(&next_json(&mut alice).await, "lobby", "join", "guest:bob");
    join(&mut carol, "games").await;
    join(&mut bob, "games").await;
    assert_presence(&next_json(&mut carol).await, "games", "join", "guest:bob");

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
    assert_presence(&next_json(&mut alice).await, "lobby", "leave", "guest:bob");

    // A client that goes away leaves its rooms (the others are told) and stops receiving; the
    // others carry on.
    drop(carol);
    assert_presence(&next_json(&mut bob).await, "games", "leave", "guest:carol");
    send(
        &mut bob,
        json!({"action": "send", "room": "games", "text": "still here"}),
    )
    .await;
    assert_eq!(next_json(&mut bob).await["text"], "still here");
    let log = host.log_text();
    assert!(!log.contains("panicked"), "a function panicked:\n{log}");
}
