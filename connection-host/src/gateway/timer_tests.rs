//! Time-based connection behaviour (idle timeout, 2-hour limit, dead-peer pings, outbound grace)
//! on tokio's paused clock: a connection is served over an in-memory duplex pipe, so the runtime
//! auto-advances time whenever every task is waiting.

use crate::config::{Config, LimitsConfig};
use crate::events::{ConnectionContext, Event, EventKind, ProxyResponse};
use crate::gateway::run_connection;
use crate::host::Host;
use crate::integration::{Integration, IntegrationError};
use crate::registry::Outbound;
use crate::routing::table::{Route, RouteTable};
use crate::store::MemoryStore;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const MIN: Duration = Duration::from_secs(60);
const CONNECTION_ID: &str = "TiMeRsTeStCoNn0=";

/// A `$disconnect` integration that records `(disconnectStatusCode, disconnectReason)`.
#[derive(Debug, Default)]
struct Recorder {
    disconnects: Mutex<Vec<(u16, String)>>,
}

#[async_trait::async_trait]
impl Integration for Recorder {
    async fn invoke(&self, event: &Event) -> Result<ProxyResponse, IntegrationError> {
        if let EventKind::Disconnect {
            status_code,
            reason,
        } = &event.kind
        {
            self.disconnects
                .lock()
                .unwrap()
                .push((*status_code, reason.clone()));
        }
        Ok(ProxyResponse::default())
    }
}

impl Recorder {
    fn taken(&self) -> Vec<(u16, String)> {
        self.disconnects.lock().unwrap().clone()
    }
}

struct Server {
    host: Arc<Host>,
    recorder: Arc<Recorder>,
    task: JoinHandle<()>,
}

/// Starts a connection served by a host with `limits` adjusted; returns the raw client side.
async fn start(
    adjust: impl FnOnce(&mut LimitsConfig),
    pipe_buffer: usize,
) -> (Server, WebSocketStream<DuplexStream>) {
    let mut config = Config::default();
    adjust(&mut config.limits);
    start_with(config, pipe_buffer).await
}

/// [`start`] with a whole configuration.
async fn start_with(config: Config, pipe_buffer: usize) -> (Server, WebSocketStream<DuplexStream>) {
    let expression = config.api.route_selection_expression.clone();
    let mut host = Host::build(config, Arc::new(MemoryStore::new()))
        .await
        .expect("the default configuration builds");
    let recorder = Arc::new(Recorder::default());
    host.routes = RouteTable::new(
        expression,
        [Route {
            key: "$disconnect".into(),
            integration: recorder.clone(),
            two_way: false,
            timeout: Duration::from_secs(29),
            ordered: false,
            throttle: crate::limits::RouteThrottle::Unlimited,
            metrics: Default::default(),
        }],
    );
    let host = Arc::new(host);
    let context = Arc::new(ConnectionContext {
        connection_id: CONNECTION_ID.into(),
        connected_at: 1_731_332_735_513,
        source_ip: "127.0.0.1".into(),
        user_agent: None,
        domain_name: "localhost".into(),
        host: "localhost".into(),
        stage: "dev".into(),
        api_id: "local00api".into(),
        authorizer: None,
    });
    let (server_io, client_io) = tokio::io::duplex(pipe_buffer);
    let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, Some(host.ws_config)).await;
    let task = tokio::spawn(run_connection(host.clone(), ws, context));
    let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    // run_connection registers the connection before it waits for anything.
    for _ in 0..100 {
        if host.registry.get(CONNECTION_ID).is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        host.registry.get(CONNECTION_ID).is_some(),
        "never registered"
    );
    (
        Server {
            host,
            recorder,
            task,
        },
        client,
    )
}

type Sink = SplitSink<WebSocketStream<DuplexStream>, Message>;

/// Splits the client and keeps reading it in the background (so it answers pings and the host's
/// Close, as a live client does); everything it receives lands in the returned channel.
fn keep_reading(client: WebSocketStream<DuplexStream>) -> (Sink, mpsc::UnboundedReceiver<Message>) {
    let (sink, mut stream) = client.split();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if tx.send(message).is_err() {
                break;
            }
        }
    });
    (sink, rx)
}

/// Waits for the host's Close frame, counting the Pings and Pongs that came before it.
async fn close_frame(inbox: &mut mpsc::UnboundedReceiver<Message>) -> (CloseFrame, usize, usize) {
    let (mut pings, mut pongs) = (0, 0);
    loop {
        match inbox.recv().await {
            Some(Message::Close(Some(frame))) => return (frame, pings, pongs),
            Some(Message::Close(None)) => panic!("Close frame without a status code"),
            Some(Message::Ping(_)) => pings += 1,
            Some(Message::Pong(_)) => pongs += 1,
            Some(_) => {}
            None => panic!("client stream ended without a Close frame"),
        }
    }
}

/// Whether a Close frame is waiting in the inbox (drains what arrived so far).
fn saw_close(inbox: &mut mpsc::UnboundedReceiver<Message>) -> bool {
    let mut closed = false;
    while let Ok(message) = inbox.try_recv() {
        closed |= matches!(message, Message::Close(_));
    }
    closed
}

fn assert_going_away(frame: &CloseFrame) {
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "Going away");
}

/// Waits (bounded) for the connection task to end, then checks the single `$disconnect`.
async fn assert_disconnected(server: Server, code: u16, reason: &str) {
    timeout(Duration::from_secs(10), server.task)
        .await
        .expect("connection task ends after the close")
        .expect("connection task does not panic");
    assert_eq!(server.recorder.taken(), [(code, reason.to_string())]);
    assert!(server.host.registry.get(CONNECTION_ID).is_none());
}

/// `connection_host_heartbeat_closes` of the server's host.
fn heartbeat_closes(server: &Server) -> f64 {
    crate::metrics::Exposition::parse(&server.host.metrics_text())
        .sum("connection_host_heartbeat_closes", &[])
}

fn assert_between(elapsed: Duration, from: Duration, to: Duration) {
    assert!(
        (from..=to).contains(&elapsed),
        "elapsed {elapsed:?}, expected between {from:?} and {to:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_connection_closes_after_ten_minutes() {
    let (server, client) = start(|_| {}, 1 << 16).await;
    let started = Instant::now();
    let (_sink, mut inbox) = keep_reading(client);
    let (frame, pings, _) = timeout(11 * MIN, close_frame(&mut inbox))
        .await
        .expect("closed within 11 minutes");
    assert_going_away(&frame);
    assert_between(
        started.elapsed(),
        10 * MIN,
        10 * MIN + Duration::from_secs(1),
    );
    // The host heartbeat ran meanwhile (and the answered pings did not keep the connection open).
    assert!(pings >= 20, "only {pings} pings in 10 minutes");
    assert_eq!(heartbeat_closes(&server), 1.0);
    assert_disconnected(server, 1001, "Going away").await;
}

#[tokio::test(start_paused = true)]
async fn data_message_postpones_the_idle_timeout() {
    let (server, client) = start(|_| {}, 1 << 16).await;
    let started = Instant::now();
    let (mut sink, mut inbox) = keep_reading(client);
    sleep(9 * MIN).await;
    assert!(!saw_close(&mut inbox));
    // No route matches: the host answers with the Forbidden frame, also a data message.
    sink.send(Message::text(r#"{"action":"nothing"}"#))
        .await
        .unwrap();
    sleep(2 * MIN).await;
    assert!(
        !saw_close(&mut inbox),
        "closed at 11 min despite data at 9 min"
    );
    assert!(server.host.registry.get(CONNECTION_ID).is_some());
    let (frame, _, _) = timeout(9 * MIN, close_frame(&mut inbox))
        .await
        .expect("closed by 20 minutes");
    assert_going_away(&frame);
    assert_between(
        started.elapsed(),
        19 * MIN,
        19 * MIN + Duration::from_secs(1),
    );
    assert_disconnected(server, 1001, "Going away").await;
}

#[tokio::test(start_paused = true)]
async fn client_pings_do_not_postpone_the_idle_timeout() {
    let (server, client) = start(|_| {}, 1 << 16).await;
    let started = Instant::now();
    let (mut sink, mut inbox) = keep_reading(client);
    let pinger = tokio::spawn(async move {
        for _ in 0..30 {
            sleep(MIN).await;
            if sink.send(Message::Ping("hi".into())).await.is_err() {
                break;
            }
        }
    });
    let (frame, _, pongs) = timeout(11 * MIN, close_frame(&mut inbox))
        .await
        .expect("closed within 11 minutes despite pings");
    assert_going_away(&frame);
    assert_between(
        started.elapsed(),
        10 * MIN,
        10 * MIN + Duration::from_secs(1),
    );
    // The host did receive (and answer) the pings.
    assert!(pongs >= 9, "only {pongs} pongs for 9 pings");
    pinger.abort();
    assert_disconnected(server, 1001, "Going away").await;
}

#[tokio::test(start_paused = true)]
async fn busy_connection_closes_after_two_hours() {
    let (server, client) = start(|_| {}, 1 << 16).await;
    let started = Instant::now();
    let (mut sink, mut inbox) = keep_reading(client);
    let chatter = tokio::spawn(async move {
        for _ in 0..30 {
            sleep(5 * MIN).await;
            if sink.send(Message::text("{}")).await.is_err() {
                break;
            }
        }
    });
    let (frame, _, _) = timeout(121 * MIN, close_frame(&mut inbox))
        .await
        .expect("closed within 2 h 1 min");
    assert_going_away(&frame);
    assert_between(
        started.elapsed(),
        120 * MIN,
        120 * MIN + Duration::from_secs(1),
    );
    chatter.abort();
    // The duration cap is no heartbeat's doing.
    assert_eq!(heartbeat_closes(&server), 0.0);
    assert_disconnected(server, 1001, "Going away").await;
}

#[tokio::test(start_paused = true)]
async fn peer_that_never_answers_pings_is_closed_after_three_intervals() {
    // The client is never polled, so tungstenite never sends its Pongs.
    let (server, mut client) = start(|_| {}, 1 << 16).await;
    let started = Instant::now();
    sleep(Duration::from_secs(70)).await;
    assert!(
        server.host.registry.get(CONNECTION_ID).is_some(),
        "closed before the third interval"
    );
    timeout(Duration::from_secs(10), async {
        while server.recorder.taken().is_empty() {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("$disconnect within 80 s");
    // 25 s × 3 = 75 s, plus up to 2 s waiting for the Close reply that never comes.
    assert_between(
        started.elapsed(),
        Duration::from_secs(75),
        Duration::from_secs(78),
    );
    // The unanswered heartbeat is waiting in the pipe. (Reading further fails: the client then
    // tries to send its Pong into the pipe the host has already dropped.)
    let first = timeout(Duration::from_secs(1), client.next()).await;
    assert!(
        matches!(first, Ok(Some(Ok(Message::Ping(_))))),
        "expected the host's Ping, got {first:?}"
    );
    assert_eq!(heartbeat_closes(&server), 1.0);
    assert_disconnected(server, 1001, "Going away").await;
}

/// API Gateway sends no pings: under `profile = "aws"` a peer that never reads (so never answers
/// a ping) stays open until the idle timeout, where the default profile closes it after 75 s.
#[tokio::test(start_paused = true)]
async fn the_aws_profile_sends_no_pings() {
    let config = Config::from_toml("[api]\nprofile = \"aws\"").expect("valid");
    let (server, client) = start_with(config, 1 << 16).await;
    let started = Instant::now();
    // The client is not polled yet, so it could not answer a ping.
    sleep(5 * MIN).await;
    assert!(
        server.host.registry.get(CONNECTION_ID).is_some(),
        "closed as a dead peer"
    );
    let (_sink, mut inbox) = keep_reading(client);
    let (frame, pings, _) = timeout(6 * MIN, close_frame(&mut inbox))
        .await
        .expect("closed by the idle timeout");
    assert_eq!(pings, 0, "the host sent pings");
    assert_going_away(&frame);
    assert_between(
        started.elapsed(),
        10 * MIN,
        10 * MIN + Duration::from_secs(1),
    );
    assert_disconnected(server, 1001, "Going away").await;
}

#[tokio::test(start_paused = true)]
async fn peer_that_answers_pings_stays_open() {
    let (server, client) = start(|l| l.idle_timeout = 60 * MIN, 1 << 16).await;
    let (_sink, mut inbox) = keep_reading(client);
    sleep(5 * MIN + Duration::from_secs(10)).await;
    let mut pings = 0;
    while let Ok(message) = inbox.try_recv() {
        assert!(!matches!(message, Message::Close(_)), "closed: {message:?}");
        pings += usize::from(matches!(message, Message::Ping(_)));
    }
    // Pinged every 25 s and answered each time.
    assert!(pings >= 12, "only {pings} pings in 5 minutes");
    assert!(server.host.registry.get(CONNECTION_ID).is_some());
    assert!(!server.task.is_finished());
    assert!(server.recorder.taken().is_empty());
}

#[tokio::test(start_paused = true)]
async fn client_not_reading_is_closed_after_the_outbound_grace() {
    // A 1 KiB pipe and a client that never reads: the host's writes stall.
    let (server, _client) = start(|l| l.outbound_full_grace = Duration::from_secs(10), 1024).await;
    let started = Instant::now();
    let handle = server.host.registry.get(CONNECTION_ID).unwrap();
    let limit = server.host.config.limits.outbound_queue_bytes;
    let big = Utf8Bytes::from("x".repeat(64 * 1024));
    for _ in 0..4 {
        handle
            .post(Outbound::Text(big.clone()), limit)
            .expect("queued");
    }
    sleep(Duration::from_secs(9)).await;
    assert!(
        server.recorder.taken().is_empty(),
        "closed before the grace period"
    );
    timeout(Duration::from_secs(5), async {
        while server.recorder.taken().is_empty() {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("$disconnect within 14 s");
    // The grace, then up to 2 s offering the Close frame to a client that does not read.
    assert_between(
        started.elapsed(),
        Duration::from_secs(12),
        Duration::from_secs(13),
    );
    assert_disconnected(server, 1008, "Client not reading").await;
}
