//! Shared harness for the end-to-end tests: a host on `127.0.0.1:0`, an HTTP "handler" server
//! that records every event, WebSocket clients (tokio-tungstenite and raw TCP), and the official
//! management SDK client pointed at the host.
#![allow(dead_code)]

pub mod proxy;

use aws_sdk_apigatewaymanagement as mgmt;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use connection_host::server::RunError;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A `whoami` route tells a client its connection ID.
pub const WHOAMI: &str = r#"
[routes.whoami]
integration = "whoami"
two_way = true
[integrations.whoami]
type = "mock"
response_template = '{"connectionId":"$context.connectionId"}'
"#;

/// Upper bound for every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(5);

/// Awaits `f` for at most [`WAIT`], panicking with `what` otherwise.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Credentials for the Lambda SDK client inside the host; set once, before any host starts.
pub fn init_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: every test calls this (through `TestHost::start`) before starting anything that
        // reads the environment, and `Once` makes the others wait until it has returned.
        #[expect(unsafe_code, reason = "std::env::set_var is unsafe since edition 2024")]
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
    });
}

/// The DynamoDB-API endpoint for tests (`DYNAMODB_TEST_ENDPOINT`, set by `tests/run.sh`, which
/// starts moto). Unset: panics when `CI` is set, so CI cannot pass without running the DynamoDB
/// tests; otherwise prints why the test is skipped and returns `None`.
pub fn dynamodb_test_endpoint(test: &str) -> Option<String> {
    match std::env::var("DYNAMODB_TEST_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
        _ if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => panic!(
            "{test}: DYNAMODB_TEST_ENDPOINT is not set but CI is: the DynamoDB tests must run \
             (tests/run.sh starts moto and sets it)"
        ),
        _ => {
            // Written to the real stderr, past the test harness's capture, so a skip is visible.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: DYNAMODB_TEST_ENDPOINT is not set (tests/run.sh starts moto and sets it)"
            );
            None
        }
    }
}

/// Uniquely named tables, created for one test and deleted at its end.
pub struct TestTables {
    pub store: connection_host::store::DynamoDbStore,
    pub config: connection_host::Config,
}

impl TestTables {
    /// The configuration of a DynamoDB store on fresh table names (not created yet).
    pub fn config(endpoint: &str) -> connection_host::Config {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let mut config = connection_host::Config::default();
        config.store.kind = connection_host::config::StoreKind::Dynamodb;
        config.store.connections_table = format!("test-connections-{suffix}");
        config.store.groups_table = format!("test-groups-{suffix}");
        config.store.endpoint_url = endpoint.to_string();
        config
    }

    /// `None` (and a printed reason) when no endpoint is configured outside CI.
    pub async fn create(test: &str) -> Option<Self> {
        let endpoint = dynamodb_test_endpoint(test)?;
        init_env();
        let config = Self::config(&endpoint);
        let store = connection_host::store::DynamoDbStore::from_env(&config).await;
        store.create_tables().await.expect("create the test tables");
        Some(Self { store, config })
    }

    pub async fn delete(self) {
        for table in [
            &self.config.store.connections_table,
            &self.config.store.groups_table,
        ] {
            let _ = self
                .store
                .client()
                .delete_table()
                .table_name(table)
                .send()
                .await;
        }
    }
}

impl TestTables {
    /// The DynamoDB endpoint the tables live on.
    pub fn endpoint(&self) -> &str {
        &self.config.store.endpoint_url
    }

    /// The connections table's name.
    pub fn connections(&self) -> &str {
        &self.config.store.connections_table
    }

    /// The groups table's name.
    pub fn groups(&self) -> &str {
        &self.config.store.groups_table
    }
}

/// A running host.
pub struct TestHost {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), RunError>>>,
}

impl TestHost {
    /// Starts `connection_host::run` with a configuration given as TOML (on top of the defaults).
    pub async fn start(toml: &str) -> Self {
        init_env();
        let config = connection_host::Config::from_toml(toml).expect("test config is valid");
        let listener = connection_host::bind(([127, 0, 0, 1], 0).into(), 128).expect("bind");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(connection_host::run(config, listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    /// Starts `connection_host::run_with_store` with `store` and a TOML configuration.
    pub async fn start_with_store(
        toml: &str,
        store: Arc<dyn connection_host::store::ConnectionStore>,
    ) -> Self {
        init_env();
        let config = connection_host::Config::from_toml(toml).expect("test config is valid");
        let listener = connection_host::bind(([127, 0, 0, 1], 0).into(), 128).expect("bind");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(connection_host::run_with_store(
            config,
            listener,
            store,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    /// `http://ADDR{path}`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Fires the shutdown signal without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `run` to return after `trigger_shutdown`.
    pub async fn join(&mut self) -> Result<(), RunError> {
        let join = self.join.take().expect("joined once");
        tokio::time::timeout(Duration::from_secs(15), join)
            .await
            .expect("run returns after shutdown")
            .expect("run does not panic")
    }
}

// ---------------------------------------------------------------------------------------------
// Handler server: the `type = "http"` integration.
// ---------------------------------------------------------------------------------------------

/// What the handler answers for one event.
#[derive(Debug, Clone)]
pub struct Reply {
    pub http_status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    /// HTTP 200 with a Lambda proxy response `{"statusCode": status, "body": body}`.
    pub fn proxy(status: u16, body: Option<&str>) -> Self {
        let mut v = json!({ "statusCode": status });
        if let Some(b) = body {
            v["body"] = b.into();
        }
        Self::json(v)
    }

    /// HTTP 200 with `value` as the body.
    pub fn json(value: Value) -> Self {
        Self::raw(200, &value.to_string())
    }

    /// An arbitrary HTTP status and body (e.g. 500, or non-JSON garbage).
    pub fn raw(http_status: u16, body: &str) -> Self {
        Self {
            http_status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// Answers only after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Behaviour = Arc<dyn Fn(Value) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

#[derive(Clone)]
struct HandlerState {
    events: Arc<watch::Sender<Vec<Value>>>,
    behaviour: Behaviour,
}

/// A recording event handler on `127.0.0.1:0`.
pub struct Handler {
    pub url: String,
    events: Arc<watch::Sender<Vec<Value>>>,
}

impl Handler {
    /// A handler answering synchronously.
    pub async fn start(f: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> Self {
        let f = Arc::new(f);
        Self::start_async(move |event| {
            let reply = f(&event);
            async move { reply }
        })
        .await
    }

    /// A handler that may await (e.g. call the management API) before answering.
    pub async fn start_async<F, Fut>(f: F) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let behaviour: Behaviour = Arc::new(move |event| Box::pin(f(event)));
        let events = Arc::new(watch::channel(Vec::new()).0);
        let state = HandlerState {
            events: events.clone(),
            behaviour,
        };
        let app = axum::Router::new().fallback(handle_event).with_state(state);
        let url = serve(app).await;
        Self {
            url: format!("{url}/events"),
            events,
        }
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.borrow().clone()
    }

    /// Waits for the first event matching `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut rx = self.events.subscribe();
        let found = within(what, rx.wait_for(|evs| evs.iter().any(&pred))).await;
        let found = found.expect("sender lives as long as the handler");
        found.iter().find(|e| pred(e)).cloned().unwrap()
    }

    /// Waits for an event of `route_key`, for `connection_id` when given.
    pub async fn wait_route(&self, route_key: &str, connection_id: Option<&str>) -> Value {
        self.wait_for(&format!("{route_key} event for {connection_id:?}"), |e| {
            route(e) == route_key && connection_id.is_none_or(|id| conn_id(e) == id)
        })
        .await
    }

    /// Waits for a MESSAGE event whose body is exactly `body`.
    pub async fn wait_body(&self, body: &str) -> Value {
        self.wait_for(&format!("message {body}"), |e| {
            e.get("body").and_then(Value::as_str) == Some(body)
        })
        .await
    }
}

async fn handle_event(State(state): State<HandlerState>, body: axum::body::Bytes) -> Response {
    let event: Value = serde_json::from_slice(&body).expect("the host posts JSON events");
    state.events.send_modify(|evs| evs.push(event.clone()));
    let reply = (state.behaviour)(event).await;
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    (
        http::StatusCode::from_u16(reply.http_status).unwrap(),
        [(http::header::CONTENT_TYPE, "application/json")],
        reply.body,
    )
        .into_response()
}

/// Serves `app` on `127.0.0.1:0`; returns `http://ADDR`.
pub async fn serve(app: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

/// A URL on which nothing listens.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/nothing")
}

/// `requestContext.routeKey`.
pub fn route(e: &Value) -> &str {
    e["requestContext"]["routeKey"].as_str().unwrap_or_default()
}

/// `requestContext.connectionId`.
pub fn conn_id(e: &Value) -> &str {
    e["requestContext"]["connectionId"]
        .as_str()
        .unwrap_or_default()
}

/// `requestContext.eventType`.
pub fn event_type(e: &Value) -> &str {
    e["requestContext"]["eventType"]
        .as_str()
        .unwrap_or_default()
}

/// The `action` of a MESSAGE event's JSON body, if any.
pub fn action(e: &Value) -> Option<String> {
    let body: Value = serde_json::from_str(e.get("body")?.as_str()?).ok()?;
    body.get("action")?.as_str().map(str::to_string)
}

/// A CONNECT event's `queryStringParameters[name]`.
pub fn query_param<'e>(e: &'e Value, name: &str) -> Option<&'e str> {
    e.get("queryStringParameters")?.get(name)?.as_str()
}

// ---------------------------------------------------------------------------------------------
// WebSocket clients.
// ---------------------------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Proves that refused attempts produced no event: `allowed`, a connection opened after them, is
/// closed, and once its `$disconnect` has arrived its two events must be all the handler saw.
pub async fn assert_only_events_of(handler: &Handler, mut allowed: Ws) {
    allowed.close(None).await.unwrap();
    let disconnect = handler.wait_route("$disconnect", None).await;
    let id = conn_id(&disconnect);
    let events = handler.events();
    assert!(
        events.iter().all(|e| conn_id(e) == id),
        "refused attempts produced events: {events:#?}"
    );
    assert_eq!(events.len(), 2, "{events:#?}");
}
pub type HandshakeResponse = tokio_tungstenite::tungstenite::handshake::client::Response;

/// Connects to `ws://ADDR{path}` with extra request headers.
pub async fn try_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    config: Option<WebSocketConfig>,
) -> Result<(Ws, HandshakeResponse), WsError> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    for (k, v) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    within(
        "WebSocket handshake",
        tokio_tungstenite::connect_async_with_config(request, config, true),
    )
    .await
}

/// Connects to `ws://ADDR/dev`, expecting success.
pub async fn connect(addr: SocketAddr) -> Ws {
    try_connect(addr, "/dev", &[], None)
        .await
        .expect("connect to /dev")
        .0
}

/// The HTTP status of a refused handshake.
pub fn refused_status(result: Result<(Ws, HandshakeResponse), WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok((_, response)) => panic!("expected a refusal, got {}", response.status()),
    }
}

/// The next data or close message (pings and pongs skipped).
pub async fn next_message(ws: &mut Ws) -> Message {
    within("a WebSocket message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                Some(Err(e)) => panic!("WebSocket error: {e}"),
                None => panic!("WebSocket ended without a Close frame"),
            }
        }
    })
    .await
}

/// The next message, which must be text.
pub async fn next_text(ws: &mut Ws) -> String {
    match next_message(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Reads the server's Close frame (the next message), completes the close handshake, and returns
/// the frame's code and reason.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    let closed = match next_message(ws).await {
        Message::Close(Some(frame)) => (frame.code.into(), frame.reason.to_string()),
        Message::Close(None) => (1005, String::new()),
        other => panic!("expected a Close frame, got {other:?}"),
    };
    // Polling on sends the queued Close reply; the stream then ends.
    let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    closed
}

/// Sends a text message.
pub async fn send_text(ws: &mut Ws, text: &str) {
    within("send", ws.send(Message::text(text)))
        .await
        .expect("send text");
}

// ---------------------------------------------------------------------------------------------
// Raw TCP: exact request heads, header casing, raw frames.
// ---------------------------------------------------------------------------------------------

/// Sends `request` verbatim and reads the whole response (the host closes after refusals).
/// Returns (status, head, body).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    within("raw response", stream.read_to_end(&mut out))
        .await
        .expect("read response");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("complete response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// A header's value in a raw response head (case-insensitive name).
pub fn raw_header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An upgrade request for `target` with exact header lines (`extra` ends with `\r\n` per line).
pub fn upgrade_request(addr: SocketAddr, target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Performs an upgrade over raw TCP (optionally with a custom socket) and returns the stream
/// positioned after the 101 head.
pub async fn raw_upgrade(addr: SocketAddr, target: &str, extra: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap();
    raw_upgrade_on(stream, addr, target, extra).await
}

/// Like [`raw_upgrade`] on an already connected stream.
pub async fn raw_upgrade_on(
    mut stream: TcpStream,
    addr: SocketAddr,
    target: &str,
    extra: &str,
) -> TcpStream {
    stream
        .write_all(upgrade_request(addr, target, extra).as_bytes())
        .await
        .unwrap();
    // Read byte by byte so nothing after the head is consumed.
    let mut head = Vec::new();
    within("101 head", async {
        while !head.ends_with(b"\r\n\r\n") {
            let b = stream.read_u8().await.expect("101 head");
            head.push(b);
        }
    })
    .await;
    let head = String::from_utf8(head).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "expected 101, got {head}"
    );
    stream
}

/// A masked client frame with FIN set.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Wraps a raw, upgraded stream as a client WebSocket (for reading what the host sends).
pub async fn wrap_client(stream: TcpStream) -> Ws {
    WebSocketStream::from_raw_socket(
        MaybeTlsStream::Plain(stream),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Management API.
// ---------------------------------------------------------------------------------------------

/// The official SDK client for `http://ADDR/dev`, retries off so each call is one request.
pub fn mgmt_client(addr: SocketAddr) -> mgmt::Client {
    let config = mgmt::Config::builder()
        .behavior_version(mgmt::config::BehaviorVersion::latest())
        .region(mgmt::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}/dev"))
        .credentials_provider(mgmt::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .retry_config(mgmt::config::retry::RetryConfig::disabled())
        .build();
    mgmt::Client::from_conf(config)
}

/// Percent-encodes a connection ID for a URL path (`=` → `%3D`).
pub fn encode_id(id: &str) -> String {
    id.replace('=', "%3D")
}

/// A connection ID in API Gateway's format.
pub fn is_connection_id(id: &str) -> bool {
    regex_lite::Regex::new(r"^[A-Za-z0-9_-]{15}=$")
        .unwrap()
        .is_match(id)
}
