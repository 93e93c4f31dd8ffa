//! Plain mode against a fake host, and the offline behaviour (backoff schedule, queue bounds,
//! request timeouts) with tokio's paused clock and a token provider that always fails, so that
//! no attempt reaches the network.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use connection_host_client::{Client, Error, Event, Message, Options, State, TokenPlacement};
use support::{FakeHost, connected, event, fast, message};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn text_and_binary_messages_flow_both_ways_and_survive_a_reconnect() {
    let mut host = FakeHost::start(true).await;
    let mut client = Client::connect(
        fast(&host.url).token_provider(TokenPlacement::bearer(), || Ok("secret".into())),
    );
    let mut conn = host.accept().await;
    // Plain mode offers no subprotocol, even to a host that has sessions.
    assert!(conn.protocols.is_empty());
    assert_eq!(conn.authorization.as_deref(), Some("Bearer secret"));
    let Event::Connected {
        first,
        connection_id,
        ..
    } = connected(&mut client).await
    else {
        unreachable!()
    };
    assert!(first && connection_id.is_none());

    client.send("hello").await.unwrap();
    client.send(vec![1u8, 2]).await.unwrap();
    assert_eq!(conn.next().await, Some(WsMessage::text("hello")));
    assert_eq!(
        conn.next().await,
        Some(WsMessage::Binary(Bytes::from_static(&[1, 2])))
    );
    futures_util::SinkExt::send(&mut conn.ws, WsMessage::text("hi"))
        .await
        .unwrap();
    futures_util::SinkExt::send(&mut conn.ws, WsMessage::Binary(Bytes::from_static(&[3])))
        .await
        .unwrap();
    assert_eq!(message(&mut client).await, Message::Text("hi".into()));
    assert_eq!(
        message(&mut client).await,
        Message::Binary(Bytes::from_static(&[3]))
    );

    drop(conn);
    // Sent while the connection is down: queued and written, in order, on the next one.
    let mut state = client.watch_state();
    state.wait_for(|s| *s == State::Reconnecting).await.unwrap();
    client.send("q1").await.unwrap();
    client.send("q2").await.unwrap();
    let mut conn = host.accept().await;
    assert_eq!(conn.next().await, Some(WsMessage::text("q1")));
    assert_eq!(conn.next().await, Some(WsMessage::text("q2")));
    let Event::Connected { first, .. } = connected(&mut client).await else {
        unreachable!()
    };
    assert!(!first);
}

#[tokio::test]
async fn query_tokens_go_into_the_url() {
    let mut host = FakeHost::start(false).await;
    let url = format!("{}?room=a", host.url);
    let _client = Client::connect(
        fast(&url).token_provider(TokenPlacement::query("token"), || Ok("a.b.c".into())),
    );
    let conn = host.accept().await;
    assert_eq!(conn.uri, "/dev?room=a&token=a.b.c");
}

#[tokio::test]
async fn requests_need_reliable_mode() {
    let host = FakeHost::start(false).await;
    let client = Client::connect(fast(&host.url));
    assert_eq!(client.request("x").await, Err(Error::NotReliable));
}

#[tokio::test]
async fn plain_heartbeats_are_websocket_pings() {
    let mut host = FakeHost::start(false).await;
    let mut client = Client::connect(
        fast(&host.url).heartbeat(Duration::from_millis(50), Duration::from_millis(100)),
    );
    let mut conn = host.accept().await;
    connected(&mut client).await;
    assert!(matches!(conn.next().await, Some(WsMessage::Ping(_))));
    // Not answered (the fake host only answers pings while it reads): the client reconnects.
    let _again = host.accept().await;
}

#[tokio::test]
async fn a_401_at_the_handshake_is_terminal_in_plain_mode_too() {
    let mut host = FakeHost::start(false).await;
    host.policy.lock().unwrap().refuse = Some(401);
    let mut client = Client::connect(fast(&host.url));
    loop {
        if let Event::Error(e) = event(&mut client).await {
            assert_eq!(e, Error::Unauthorized { status: 401 });
            break;
        }
    }
    host.expect_none(Duration::from_millis(200)).await;
    assert_eq!(host.attempts(), 1);
}

/// Options whose every connection attempt fails in the token provider, recording when.
fn offline(calls: Arc<Mutex<Vec<Instant>>>) -> Options {
    Options::new("ws://127.0.0.1:9/never").token_provider(TokenPlacement::bearer(), move || {
        calls.lock().unwrap().push(Instant::now());
        Err("identity service down".into())
    })
}

#[tokio::test(start_paused = true)]
async fn reconnect_delays_follow_the_backoff_formula() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut client = Client::connect(offline(calls.clone()).backoff_jitter(Duration::ZERO));
    let mut errors = 0;
    while errors < 7 {
        if let Event::Error(e) = client.recv().await.unwrap() {
            assert_eq!(e, Error::Token("identity service down".into()));
            errors += 1;
        }
    }
    let offsets: Vec<u64> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|t| (*t - start).as_secs())
        .collect();
    // Delays 1, 2, 4, 8, 16, then capped at 30.
    assert_eq!(offsets, [0, 1, 3, 7, 15, 31, 61]);
    // Never connected: still the first connection being made.
    assert_eq!(client.state(), State::Connecting);
}

#[tokio::test(start_paused = true)]
async fn reconnect_jitter_stays_below_one_second() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut client = Client::connect(
        offline(calls.clone()).backoff(Duration::from_millis(100), Duration::from_secs(30)),
    );
    let mut errors = 0;
    while errors < 6 {
        if let Event::Error(_) = client.recv().await.unwrap() {
            errors += 1;
        }
    }
    let calls = calls.lock().unwrap();
    for (attempt, pair) in calls.windows(2).enumerate() {
        let delay = pair[1] - pair[0];
        let exp = Duration::from_millis(100 << attempt);
        assert!(
            delay >= exp && delay < exp + Duration::from_secs(1),
            "attempt {attempt}: {delay:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_queue_refuses_past_its_bounds_without_dropping_anything() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let client = Client::connect(offline(calls.clone()).max_queued_messages(2));
    client.send("a").await.unwrap();
    client.send("b").await.unwrap();
    assert_eq!(client.send("c").await, Err(Error::QueueFull));

    let client = Client::connect(offline(calls).max_queued_bytes(10));
    // One message bigger than the bound still goes when the queue is empty…
    client.send("0123456789abcdef").await.unwrap();
    // …but nothing after it.
    assert_eq!(client.send("x").await, Err(Error::QueueFull));
}

#[tokio::test(start_paused = true)]
async fn a_request_that_times_out_offline_is_withdrawn() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let client = Client::connect(offline(calls).reliable(true).max_queued_messages(1));
    let start = Instant::now();
    assert_eq!(
        client.request_timeout("x", Duration::from_secs(5)).await,
        Err(Error::Timeout)
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    // The withdrawn request no longer takes the queue's one place.
    tokio::task::yield_now().await;
    client.send("y").await.unwrap();
    assert_eq!(client.send("z").await, Err(Error::QueueFull));
}

#[tokio::test(start_paused = true)]
async fn the_default_request_timeout_applies() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let client = Client::connect(
        offline(calls)
            .reliable(true)
            .request_timeout(Duration::from_secs(3)),
    );
    let start = Instant::now();
    assert_eq!(client.request("x").await, Err(Error::Timeout));
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn close_while_offline_ends_the_client() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut client = Client::connect(offline(calls.clone()));
    client.close().await;
    assert_eq!(client.state(), State::Disconnected);
    let attempts = calls.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        calls.lock().unwrap().len(),
        attempts,
        "no attempt after close"
    );
    let mut last = None;
    while let Some(e) = client.recv().await {
        last = Some(e);
    }
    assert_eq!(last, Some(Event::StateChanged(State::Disconnected)));
}

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn wss_without_the_tls_feature_is_an_option_error() {
    let mut client = Client::connect(Options::new("wss://127.0.0.1:9/dev"));
    loop {
        if let Event::Error(e) = event(&mut client).await {
            assert!(matches!(e, Error::InvalidOptions(_)), "{e:?}");
            break;
        }
    }
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn wss_is_accepted_with_the_tls_feature() {
    let mut client = Client::connect(Options::new("wss://127.0.0.1:9/dev"));
    loop {
        if let Event::Error(e) = event(&mut client).await {
            assert!(matches!(e, Error::Connect(_)), "{e:?}");
            break;
        }
    }
}
