//! The client's side of `ch-reliable.v1` against a fake host played by the test.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use connection_host_client::{Client, Error, Event, Message, State, TokenPlacement};
use serde_json::json;
use support::{FakeHost, WAIT, connected, error, event, fast, message};

fn text(s: &str) -> Message {
    Message::Text(s.to_owned())
}

#[tokio::test]
async fn delivers_in_order_acknowledges_and_resumes_after_a_drop() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));

    let mut conn = host.accept().await;
    assert_eq!(conn.protocols, ["ch-reliable.v1"]);
    conn.welcome("c1", "tok1", false, 0).await;
    let Event::Connected {
        first,
        recovered,
        connection_id,
        ..
    } = connected(&mut client).await
    else {
        unreachable!()
    };
    assert!(first && !recovered);
    assert_eq!(connection_id.as_deref(), Some("c1"));
    conn.msg(1, "a").await;
    conn.msg(2, "b").await;
    assert_eq!(message(&mut client).await, text("a"));
    assert_eq!(message(&mut client).await, text("b"));
    conn.acked(2).await;

    // An abrupt drop: no Close frame, the TCP connection just goes.
    drop(conn);
    let mut conn = host.accept().await;
    assert_eq!(conn.protocols, ["ch-reliable.v1", "ch-resume.2.tok1"]);
    conn.welcome("c1", "tok2", true, 2).await;
    let Event::Connected {
        first, recovered, ..
    } = connected(&mut client).await
    else {
        unreachable!()
    };
    assert!(!first && recovered);
    // A replay of 2 must be acknowledged but not delivered again.
    conn.msg(2, "b").await;
    conn.msg(3, "c").await;
    assert_eq!(message(&mut client).await, text("c"));
    conn.acked(3).await;

    // The next resume carries the rotated token.
    drop(conn);
    let conn = host.accept().await;
    assert_eq!(conn.protocols, ["ch-reliable.v1", "ch-resume.3.tok2"]);
}

#[tokio::test]
async fn a_gap_is_not_delivered_and_resumes_with_4000() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    conn.msg(1, "a").await;
    conn.msg(3, "c").await;
    assert_eq!(message(&mut client).await, text("a"));
    let close = conn.close_frame().await.expect("a close code");
    assert_eq!(u16::from(close.code), 4000);

    let mut conn = host.accept().await;
    assert_eq!(conn.protocols, ["ch-reliable.v1", "ch-resume.1.t1"]);
    conn.welcome("c1", "t2", true, 1).await;
    conn.msg(2, "b").await;
    conn.msg(3, "c").await;
    assert_eq!(message(&mut client).await, text("b"));
    assert_eq!(message(&mut client).await, text("c"));
}

#[tokio::test]
async fn acknowledges_at_once_every_64_frames() {
    let mut host = FakeHost::start(true).await;
    // An ack delay far beyond the test's patience: only the 64-frame rule can produce the ack.
    let mut client = Client::connect(
        fast(&host.url)
            .reliable(true)
            .ack_delay(Duration::from_secs(60)),
    );
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    for s in 1..=64 {
        conn.msg(s, &format!("m{s}")).await;
    }
    for s in 1..=64 {
        assert_eq!(message(&mut client).await, text(&format!("m{s}")));
    }
    assert_eq!(conn.next_of("ack").await["s"], 64);
}

#[tokio::test]
async fn requests_get_their_replies_and_unanswered_ones_are_resent_after_a_resume() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));
    let sender = client.sender();
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    connected(&mut client).await;

    let first = tokio::spawn({
        let sender = sender.clone();
        async move { sender.request("one").await }
    });
    let m1 = conn.next_of("msg").await;
    assert_eq!(m1["d"], "one");
    let id1 = m1["id"].as_str().unwrap().to_owned();
    let second = tokio::spawn({
        let sender = sender.clone();
        async move { sender.request(vec![0u8, 1, 2]).await }
    });
    let m2 = conn.next_of("msg").await;
    assert_eq!(m2["b"], "AAEC");
    let id2 = m2["id"].as_str().unwrap().to_owned();
    assert_ne!(id1, id2);
    assert!(id1.len() <= 128 && id1.bytes().all(|b| b.is_ascii_graphic()));

    // The host answers the second only, then the connection drops.
    conn.send_json(json!({"t": "reply", "s": 1, "id": id2, "d": "two-done"}))
        .await;
    assert_eq!(second.await.unwrap(), Ok(Some(text("two-done"))));
    drop(conn);

    let mut conn = host.accept().await;
    assert_eq!(conn.protocols, ["ch-reliable.v1", "ch-resume.1.t1"]);
    conn.welcome("c1", "t2", true, 1).await;
    // Only the unanswered message comes again, with its key.
    let again = conn.next_of("msg").await;
    assert_eq!(
        (again["id"].as_str(), again["d"].as_str()),
        (Some(&*id1), Some("one"))
    );
    conn.send_json(json!({"t": "reply", "s": 2, "id": id1}))
        .await;
    assert_eq!(first.await.unwrap(), Ok(None));
    // A duplicate reply (the host answering the resent copy too) is acknowledged and ignored.
    conn.send_json(json!({"t": "reply", "s": 3, "id": id1, "d": "late"}))
        .await;
    conn.acked(3).await;
}

#[tokio::test]
async fn a_new_session_is_reported_and_unanswered_messages_are_sent_again() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));
    let sender = client.sender();
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    conn.msg(1, "a").await;
    conn.msg(2, "b").await;
    assert_eq!(message(&mut client).await, text("a"));
    assert_eq!(message(&mut client).await, text("b"));
    sender.send("fire").await.unwrap();
    let sent = conn.next_of("msg").await;
    drop(conn);

    let mut conn = host.accept().await;
    assert_eq!(conn.protocols, ["ch-reliable.v1", "ch-resume.2.t1"]);
    conn.send_json(
        json!({"t": "welcome", "v": 1, "connectionId": "c2", "resumeToken": "t9",
        "recovered": false, "seq": 0, "protocol": null, "reason": "expired"}),
    )
    .await;
    let Event::Connected {
        first,
        recovered,
        connection_id,
        reason,
        ..
    } = connected(&mut client).await
    else {
        unreachable!()
    };
    assert!(!first && !recovered);
    assert_eq!(
        (connection_id.as_deref(), reason.as_deref()),
        (Some("c2"), Some("expired"))
    );
    let again = conn.next_of("msg").await;
    assert_eq!(again["id"], sent["id"]);
    // The new session numbers from 1 again, and its 1 is delivered.
    conn.msg(1, "fresh").await;
    assert_eq!(message(&mut client).await, text("fresh"));
    drop(conn);
    let conn = host.accept().await;
    assert_eq!(conn.protocols, ["ch-reliable.v1", "ch-resume.1.t9"]);
}

#[tokio::test]
async fn error_replies_fail_requests_and_are_reported_for_sends() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));
    let sender = client.sender();
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;

    let request = tokio::spawn({
        let sender = sender.clone();
        async move { sender.request("x").await }
    });
    let id = conn.next_of("msg").await["id"].as_str().unwrap().to_owned();
    conn.send_json(json!({"t": "reply", "s": 1, "id": id,
        "error": {"message": "Forbidden", "requestId": "r-1"}}))
        .await;
    assert_eq!(
        request.await.unwrap(),
        Err(Error::Reply {
            id,
            message: "Forbidden".into(),
            request_id: Some("r-1".into())
        })
    );

    let key = sender
        .send("y")
        .await
        .unwrap()
        .expect("a key in reliable mode");
    let id = conn.next_of("msg").await["id"].as_str().unwrap().to_owned();
    assert_eq!(key, id);
    conn.send_json(
        json!({"t": "reply", "s": 2, "id": id, "error": {"message": "Internal server error"}}),
    )
    .await;
    let Error::Reply { message, id, .. } = error(&mut client).await else {
        panic!("not a reply error")
    };
    assert_eq!((message.as_str(), id), ("Internal server error", key));
}

#[tokio::test]
async fn close_code_4001_resumes_again() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    connected(&mut client).await;
    conn.ws
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4001.into(),
            reason: "Replaced".into(),
        }))
        .await
        .unwrap();
    // One of its own late attempts took the session: the client resumes with its token.
    let again = host.accept().await;
    assert_eq!(again.protocols, ["ch-reliable.v1", "ch-resume.0.t1"]);
}

#[tokio::test]
async fn after_the_session_ended_the_next_one_is_offered_its_token_and_gets_its_messages_again() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));
    let sender = client.sender();
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    connected(&mut client).await;
    sender.send("unanswered").await.unwrap();
    let sent = conn.next_of("msg").await;
    conn.ws
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1001.into(),
            reason: "Going away".into(),
        }))
        .await
        .unwrap();
    // The ended session cannot be resumed, but its token carries its keys on into the next.
    let mut conn = host.accept().await;
    assert_eq!(conn.protocols, ["ch-reliable.v1", "ch-resume.0.t1"]);
    conn.send_json(
        json!({"t": "welcome", "v": 1, "connectionId": "c2", "resumeToken": "t2",
        "recovered": false, "seq": 0, "protocol": null, "reason": "expired"}),
    )
    .await;
    let again = conn.next_of("msg").await;
    assert_eq!((&again["id"], &again["d"]), (&sent["id"], &sent["d"]));
}

#[tokio::test]
async fn a_refused_handshake_is_terminal() {
    let mut host = FakeHost::start(true).await;
    host.policy.lock().unwrap().refuse = Some(403);
    let mut client = Client::connect(fast(&host.url).reliable(true));
    assert_eq!(
        error(&mut client).await,
        Error::Unauthorized { status: 403 }
    );
    assert_eq!(client.connected().await, Err(Error::Closed));
    host.expect_none(Duration::from_millis(300)).await;
    assert_eq!(host.attempts(), 1);
}

#[tokio::test]
async fn other_handshake_refusals_are_retried() {
    let mut host = FakeHost::start(true).await;
    host.policy.lock().unwrap().refuse = Some(500);
    let mut client = Client::connect(fast(&host.url).reliable(true));
    assert!(matches!(error(&mut client).await, Error::Connect(_)));
    host.policy.lock().unwrap().refuse = None;
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    tokio::time::timeout(WAIT, client.connected())
        .await
        .unwrap()
        .unwrap();
    assert!(host.attempts() >= 2);
}

#[tokio::test]
async fn a_host_without_sessions_is_refused() {
    let host = FakeHost::start(false).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));
    assert_eq!(error(&mut client).await, Error::ReliableNotSupported);
    assert_eq!(client.state(), State::Disconnected);
}

#[tokio::test]
async fn the_token_provider_runs_before_every_connection() {
    let mut host = FakeHost::start(true).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let options = fast(&host.url).reliable(true).token_provider_async(
        TokenPlacement::subprotocol("bearer"),
        move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(format!("jwt-{n}")) }
        },
    );
    let mut client = Client::connect(options);
    let mut conn = host.accept().await;
    assert_eq!(conn.protocols, ["ch-reliable.v1", "bearer", "jwt-1"]);
    conn.welcome("c1", "t1", false, 0).await;
    connected(&mut client).await;
    drop(conn);
    let conn = host.accept().await;
    assert_eq!(
        conn.protocols,
        ["ch-reliable.v1", "ch-resume.0.t1", "bearer", "jwt-2"]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_silent_connection_is_detected_by_the_heartbeat() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(
        fast(&host.url)
            .reliable(true)
            .heartbeat(Duration::from_millis(100), Duration::from_millis(100)),
    );
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    connected(&mut client).await;
    // The host reads the ping but never answers: the client must give the connection up.
    let ping = conn.next_of("ping").await;
    assert_eq!(ping, json!({"t": "ping"}));
    let again = host.accept().await;
    assert_eq!(again.protocols, ["ch-reliable.v1", "ch-resume.0.t1"]);
    drop(conn);
}

#[tokio::test]
async fn answered_pings_keep_the_connection() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(
        fast(&host.url)
            .reliable(true)
            .heartbeat(Duration::from_millis(50), Duration::from_millis(100)),
    );
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    connected(&mut client).await;
    for _ in 0..5 {
        conn.next_of("ping").await;
        conn.send_json(json!({"t": "pong"})).await;
    }
    host.expect_none(Duration::from_millis(50)).await;
    assert_eq!(client.state(), State::Connected);
}

#[tokio::test]
async fn close_sends_1000_fails_pending_requests_and_stays_closed() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));
    let sender = client.sender();
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    connected(&mut client).await;
    let pending = tokio::spawn({
        let sender = sender.clone();
        async move { sender.request("never answered").await }
    });
    conn.next_of("msg").await;
    let closing = tokio::spawn(async move { sender.close().await });
    let close = conn.close_frame().await.expect("a close code");
    assert_eq!(u16::from(close.code), 1000);
    drop(conn);
    closing.await.unwrap();
    assert_eq!(pending.await.unwrap(), Err(Error::Closed));
    assert_eq!(client.state(), State::Disconnected);
    host.expect_none(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn messages_sent_offline_wait_for_the_welcome_and_keep_their_order() {
    let mut host = FakeHost::start(true).await;
    let client = Client::connect(fast(&host.url).reliable(true));
    client.send("1").await.unwrap();
    client.send("2").await.unwrap();
    let mut conn = host.accept().await;
    // Nothing may be sent before the welcome.
    assert!(
        tokio::time::timeout(
            Duration::from_millis(100),
            futures_util::StreamExt::next(&mut conn.ws)
        )
        .await
        .is_err()
    );
    conn.welcome("c1", "t1", false, 0).await;
    assert_eq!(conn.next_of("msg").await["d"], "1");
    assert_eq!(conn.next_of("msg").await["d"], "2");
}

#[tokio::test]
async fn state_changes_are_reported_in_order() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;
    let mut seen = Vec::new();
    loop {
        match event(&mut client).await {
            Event::StateChanged(s) => seen.push(s),
            Event::Connected { .. } => break,
            _ => {}
        }
    }
    drop(conn);
    let mut conn = host.accept().await;
    conn.welcome("c1", "t2", true, 0).await;
    loop {
        match event(&mut client).await {
            Event::StateChanged(s) => seen.push(s),
            Event::Connected { .. } => break,
            _ => {}
        }
    }
    client.close().await;
    while let Some(e) = tokio::time::timeout(WAIT, client.recv()).await.unwrap() {
        if let Event::StateChanged(s) = e {
            seen.push(s);
        }
    }
    assert_eq!(
        seen,
        [
            State::Connected,
            State::Reconnecting,
            State::Connected,
            State::Disconnected
        ]
    );
    drop(conn);
}

#[tokio::test]
async fn the_attempt_count_restarts_only_after_a_stable_connection() {
    // Three drops in a row, each right after the welcome; the gap before each reconnect shows
    // the attempt number the client used.
    async fn gaps(stable_after: Duration) -> Vec<Duration> {
        let mut host = FakeHost::start(true).await;
        let _client = Client::connect(
            fast(&host.url)
                .reliable(true)
                .backoff(Duration::from_millis(150), Duration::from_secs(5))
                .stable_after(stable_after),
        );
        let mut gaps = Vec::new();
        let mut conn = host.accept().await;
        for _ in 0..3 {
            conn.welcome("c1", "t1", true, 0).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(conn);
            let dropped = std::time::Instant::now();
            conn = host.accept().await;
            gaps.push(dropped.elapsed());
        }
        gaps
    }
    let unstable = gaps(Duration::from_secs(60)).await;
    // 150 ms, 300 ms, 600 ms: the count grows.
    assert!(unstable[2] >= Duration::from_millis(550), "{unstable:?}");
    assert!(unstable[2] > unstable[0] * 3, "{unstable:?}");
    let stable = gaps(Duration::ZERO).await;
    // Every connection counts as stable: each reconnect is attempt 0 again.
    assert!(
        stable.iter().all(|g| *g < Duration::from_millis(450)),
        "{stable:?}"
    );
    assert!(
        stable.iter().all(|g| *g >= Duration::from_millis(140)),
        "{stable:?}"
    );
}

#[tokio::test]
async fn a_resume_token_that_cannot_be_offered_is_not_kept() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(fast(&host.url).reliable(true));
    let mut conn = host.accept().await;
    conn.welcome("c1", "bad token", false, 0).await;
    connected(&mut client).await;
    drop(conn);
    let conn = host.accept().await;
    assert_eq!(conn.protocols, ["ch-reliable.v1"]);
}

#[tokio::test]
async fn a_message_the_host_could_not_invoke_is_sent_again_with_its_key() {
    let mut host = FakeHost::start(true).await;
    let client = Client::connect(fast(&host.url).reliable(true));
    let sender = client.sender();
    let mut conn = host.accept().await;
    conn.welcome("c1", "t1", false, 0).await;

    let request = tokio::spawn({
        let sender = sender.clone();
        async move { sender.request("x").await }
    });
    let first = conn.next_of("msg").await;
    let id = first["id"].as_str().unwrap().to_owned();
    // The host's store failed: not invoked, try again.
    conn.send_json(json!({"t": "reply", "s": 1, "id": id,
        "error": {"message": "Service Unavailable", "requestId": "r-1"}}))
        .await;
    let again = conn.next_of("msg").await;
    assert_eq!(again, first, "the same message, with the same key");
    conn.send_json(json!({"t": "reply", "s": 2, "id": id, "d": "done"}))
        .await;
    assert_eq!(request.await.unwrap(), Ok(Some(text("done"))));
}
