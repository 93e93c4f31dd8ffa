//! Prometheus metrics (`GET /metrics` on the management listener; the catalogue is
//! `connection-host/METRICS.md`).
//!
//! Each [`Metrics`] has a recorder of its own, never a global one: several hosts can run in one
//! process (the tests do), and each must count only what it did. Every series is registered when
//! the host is built and its handle kept, so recording on a hot path is an atomic add on a handle
//! the caller already holds: no lookup, no allocation, no label built per message. Series whose
//! label is open-ended (route, function) get their handles once, from [`Metrics::route`] and
//! [`Metrics::function`], and the route table or the function keeps them.
//!
//! Reading back: [`Metrics::render`] is the exposition text, and [`Exposition::parse`] reads it
//! (the tests do, and [`Metrics::snapshot`] builds on it for the few series a status page shows).
//! Gauges that mirror state the host already keeps (open connections, queued bytes) are not
//! updated on the hot path: the host sets them just before rendering.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::time::Duration;

/// `IntegrationLatency`'s bucket bounds, in milliseconds as CloudWatch reports it (the largest
/// finite bound is API Gateway's 29 s integration timeout).
const LATENCY_MS_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 29000.0,
];
/// Bucket bounds of every `_seconds` histogram.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often recorded histogram samples are folded into their buckets when nobody scrapes
/// (a scrape folds them too): until then each sample takes a few bytes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How a WebSocket handshake ended (`connection_host_handshakes{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// The 101 was written.
    Accepted,
    /// `$connect` answered other than 2xx, failed or timed out.
    ConnectRefused,
    /// The authorizer answered 401.
    Unauthorized,
    /// The authorizer answered 403.
    Forbidden,
    /// The authorizer failed (500).
    AuthorizerError,
    /// Refused by a rate or concurrency limit (429).
    Throttled,
    /// The `Origin` is not in `limits.allowed_origins`.
    OriginRefused,
    /// Not a valid upgrade request for this API (wrong stage, method, version, key; URL too long).
    BadRequest,
    /// The host could not take it: over `limits.max_connections`, or the store refused the record.
    Unavailable,
}

impl Handshake {
    const ALL: [Handshake; 9] = [
        Handshake::Accepted,
        Handshake::ConnectRefused,
        Handshake::Unauthorized,
        Handshake::Forbidden,
        Handshake::AuthorizerError,
        Handshake::Throttled,
        Handshake::OriginRefused,
        Handshake::BadRequest,
        Handshake::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            Handshake::Accepted => "accepted",
            Handshake::ConnectRefused => "connect_refused",
            Handshake::Unauthorized => "unauthorized",
            Handshake::Forbidden => "forbidden",
            Handshake::AuthorizerError => "authorizer_error",
            Handshake::Throttled => "throttled",
            Handshake::OriginRefused => "origin_refused",
            Handshake::BadRequest => "bad_request",
            Handshake::Unavailable => "unavailable",
        }
    }
}

/// Which limit refused something (`connection_host_throttles{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// `limits.connections_per_second`: the host's new-connection rate (API Gateway's account-level
    /// connection rate).
    Account,
    /// `limits.connections_per_ip`.
    Ip,
    /// `limits.connections_per_principal`.
    Principal,
    /// A route's throttling (`RouteSettings`), on `$connect` or a message.
    Route,
    /// `limits.messages_per_second` of one connection.
    Connection,
    /// `limits.management_requests_per_second`.
    Management,
}

impl Throttle {
    const ALL: [Throttle; 6] = [
        Throttle::Account,
        Throttle::Ip,
        Throttle::Principal,
        Throttle::Route,
        Throttle::Connection,
        Throttle::Management,
    ];

    fn label(self) -> &'static str {
        match self {
            Throttle::Account => "account",
            Throttle::Ip => "ip",
            Throttle::Principal => "principal",
            Throttle::Route => "route",
            Throttle::Connection => "connection",
            Throttle::Management => "management",
        }
    }
}

/// A `@connections` operation (`connection_host_management_calls{operation}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /{stage}/@connections/{id}`.
    PostToConnection,
    /// `GET /{stage}/@connections/{id}`.
    GetConnection,
    /// `DELETE /{stage}/@connections/{id}`.
    DeleteConnection,
}

impl Operation {
    const ALL: [Operation; 3] = [
        Operation::PostToConnection,
        Operation::GetConnection,
        Operation::DeleteConnection,
    ];

    fn label(self) -> &'static str {
        match self {
            Operation::PostToConnection => "PostToConnection",
            Operation::GetConnection => "GetConnection",
            Operation::DeleteConnection => "DeleteConnection",
        }
    }
}

/// The statuses a management call answers with, registered up front; another one (none is
/// expected) is looked up when it happens.
const MANAGEMENT_STATUSES: [u16; 11] = [200, 204, 400, 403, 410, 413, 426, 429, 500, 502, 503];

/// The close codes registered up front; any other code a client sends counts as `other`, so a
/// client cannot grow the number of series.
const CLOSE_CODES: [u16; 14] = [
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 4000, 4001,
];
const CLOSE_LABELS: [&str; 14] = [
    "1000", "1001", "1002", "1003", "1005", "1006", "1007", "1008", "1009", "1010", "1011", "1012",
    "4000", "4001",
];

/// The DynamoDB operation a store call makes (its first, for calls that make several):
/// `connection_host_store_calls{operation}`. The in-memory store is counted under the same
/// names, as the calls it stands in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOperation {
    /// `PutItem`.
    PutItem,
    /// `GetItem`.
    GetItem,
    /// `DeleteItem`.
    DeleteItem,
    /// `UpdateItem`.
    UpdateItem,
    /// `Query`.
    Query,
}

impl StoreOperation {
    const ALL: [StoreOperation; 5] = [
        StoreOperation::PutItem,
        StoreOperation::GetItem,
        StoreOperation::DeleteItem,
        StoreOperation::UpdateItem,
        StoreOperation::Query,
    ];

    fn label(self) -> &'static str {
        match self {
            StoreOperation::PutItem => "PutItem",
            StoreOperation::GetItem => "GetItem",
            StoreOperation::DeleteItem => "DeleteItem",
            StoreOperation::UpdateItem => "UpdateItem",
            StoreOperation::Query => "Query",
        }
    }
}

/// How a local function's invocation ended (`connection_host_function_invocations{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionOutcome {
    /// The function answered.
    Ok,
    /// The function reported an error (or could not be invoked).
    Error,
    /// The function overran its timeout and its process was killed.
    Timeout,
    /// The process died during the invocation.
    Crash,
}

/// The API Gateway metrics of one route (`route` label), kept by whatever handles its requests.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// `MessageCount`: a message in on this route, or a reply or post out.
    pub message_count: Counter,
    /// `IntegrationError`: the integration answered with a 4XX/5XX status.
    pub integration_error: Counter,
    /// `ClientError`: refused with a 4XX before the integration was invoked.
    pub client_error: Counter,
    /// `ExecutionError`: the integration could not be called, failed or timed out.
    pub execution_error: Counter,
    /// `IntegrationLatency`, in milliseconds.
    pub integration_latency: Histogram,
}

impl Default for RouteMetrics {
    /// Handles that record nothing, for a route built outside a host (unit tests).
    fn default() -> Self {
        Self {
            message_count: Counter::noop(),
            integration_error: Counter::noop(),
            client_error: Counter::noop(),
            execution_error: Counter::noop(),
            integration_latency: Histogram::noop(),
        }
    }
}

impl RouteMetrics {
    /// Records one integration call that took `elapsed`: its latency, and an `ExecutionError`
    /// when it gave no response (`status` None) or an `IntegrationError` for a 4XX/5XX answer.
    pub fn integration_call(&self, elapsed: Duration, status: Option<u16>) {
        self.integration_latency
            .record(elapsed.as_secs_f64() * 1000.0);
        match status {
            None => self.execution_error.increment(1),
            Some(code) if code >= 400 => self.integration_error.increment(1),
            Some(_) => {}
        }
    }
}

/// The metrics of one local function (`function` label), kept by the function.
#[derive(Debug, Clone)]
pub struct FunctionMetrics {
    invocations: [Counter; 4],
    /// `connection_host_function_duration_seconds`.
    pub duration: Histogram,
    /// `connection_host_function_cold_starts`: a process initialized.
    pub cold_starts: Counter,
    /// `connection_host_function_crashes`: a process exited without being asked to.
    pub crashes: Counter,
}

impl FunctionMetrics {
    /// Counts an invocation refused before any process took it (queue full, every process
    /// failing to initialize): an error, with no duration.
    pub fn refused(&self) {
        self.invocations[FunctionOutcome::Error as usize].increment(1);
    }

    /// Records one invocation that ended with `outcome` after `elapsed`.
    pub fn invoked(&self, outcome: FunctionOutcome, elapsed: Duration) {
        self.invocations[outcome as usize].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// Every series of one host, registered on its own recorder. Fields are the handles the host's
/// parts record on; the enum-keyed families have a method each.
#[derive(Debug)]
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// `ConnectCount`.
    pub connect_count: Counter,
    /// `connection_host_connections` (set from the registry before rendering).
    pub connections: Gauge,
    handshakes: [Counter; 9],
    /// `connection_host_messages{direction="in"}`: data messages received from clients.
    pub messages_in: Counter,
    /// `connection_host_messages{direction="out"}`: data messages written to clients.
    pub messages_out: Counter,
    /// `connection_host_message_bytes{direction="in"}`.
    pub bytes_in: Counter,
    /// `connection_host_message_bytes{direction="out"}`.
    pub bytes_out: Counter,
    management: [[Counter; MANAGEMENT_STATUSES.len()]; 3],
    /// `MessageCount` and friends for `@connections` posts.
    pub posts: RouteMetrics,
    /// `ClientError` of messages no route matched (`route="(unmatched)"`).
    pub unmatched: RouteMetrics,
    /// The `$connect` route's metrics, also for an API without a `$connect` route.
    pub connect_route: RouteMetrics,
    /// `connection_host_outbound_queue_bytes` (set from the registry before rendering).
    pub outbound_queue_bytes: Gauge,
    /// `connection_host_slow_consumer_closes`.
    pub slow_consumer_closes: Counter,
    throttles: [Counter; 6],
    /// `connection_host_heartbeat_closes`.
    pub heartbeat_closes: Counter,
    closes: [Counter; CLOSE_CODES.len() + 1],
    store_calls: [[Counter; 2]; 5],
    store_latency: [Histogram; 5],
    /// `connection_host_cluster_forwards{outcome="ok"}`.
    pub forwards_ok: Counter,
    /// `connection_host_cluster_forwards{outcome="error"}`.
    pub forwards_error: Counter,
    /// `connection_host_cluster_reaped_connections`.
    pub reaped_connections: Counter,
    /// `connection_host_cluster_hosts`.
    pub cluster_hosts: Gauge,
    /// `connection_host_session_resumes{recovered="true"}`.
    pub resumes_recovered: Counter,
    /// `connection_host_session_resumes{recovered="false"}`.
    pub resumes_lost: Counter,
    /// `connection_host_session_replayed_frames`.
    pub replayed_frames: Counter,
    /// `connection_host_idempotency_hits{kind="completed"}`.
    pub idempotency_completed: Counter,
    /// `connection_host_idempotency_hits{kind="pending"}`.
    pub idempotency_pending: Counter,
}

/// The route label of messages no route matched.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";
/// The route label of `@connections` posts (as API Gateway's `MessageCount` counts them).
pub const POSTS_ROUTE: &str = "@connections";

impl Metrics {
    /// A recorder for one host of API `api_id`, stage `stage` (labels of every series), with
    /// every fixed series registered.
    pub fn new(api_id: &str, stage: &str) -> Self {
        let recorder = PrometheusBuilder::new()
            .add_global_label("api_id", api_id)
            .add_global_label("stage", stage)
            .set_buckets_for_metric(
                Matcher::Full("IntegrationLatency".into()),
                LATENCY_MS_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let r = Registrar(&recorder);
        let counter = |name: &'static str, label: &'static str, value: &'static str| {
            r.counter(name, &[(label, value)])
        };
        let metrics = Self {
            connect_count: r.counter("ConnectCount", &[]),
            connections: r.gauge("connection_host_connections", &[]),
            handshakes: Handshake::ALL
                .map(|o| counter("connection_host_handshakes", "outcome", o.label())),
            messages_in: counter("connection_host_messages", "direction", "in"),
            messages_out: counter("connection_host_messages", "direction", "out"),
            bytes_in: counter("connection_host_message_bytes", "direction", "in"),
            bytes_out: counter("connection_host_message_bytes", "direction", "out"),
            management: Operation::ALL.map(|op| {
                MANAGEMENT_STATUSES.map(|status| management_counter(&recorder, op, status))
            }),
            posts: route_metrics(&recorder, POSTS_ROUTE),
            unmatched: route_metrics(&recorder, UNMATCHED_ROUTE),
            connect_route: route_metrics(&recorder, "$connect"),
            outbound_queue_bytes: r.gauge("connection_host_outbound_queue_bytes", &[]),
            slow_consumer_closes: r.counter("connection_host_slow_consumer_closes", &[]),
            throttles: Throttle::ALL
                .map(|k| counter("connection_host_throttles", "kind", k.label())),
            heartbeat_closes: r.counter("connection_host_heartbeat_closes", &[]),
            closes: std::array::from_fn(|i| {
                counter(
                    "connection_host_closes",
                    "code",
                    CLOSE_LABELS.get(i).copied().unwrap_or("other"),
                )
            }),
            store_calls: StoreOperation::ALL.map(|op| {
                ["ok", "error"].map(|outcome| {
                    r.counter(
                        "connection_host_store_calls",
                        &[("operation", op.label()), ("outcome", outcome)],
                    )
                })
            }),
            store_latency: StoreOperation::ALL.map(|op| {
                r.histogram(
                    "connection_host_store_latency_seconds",
                    &[("operation", op.label())],
                )
            }),
            forwards_ok: counter("connection_host_cluster_forwards", "outcome", "ok"),
            forwards_error: counter("connection_host_cluster_forwards", "outcome", "error"),
            reaped_connections: r.counter("connection_host_cluster_reaped_connections", &[]),
            cluster_hosts: r.gauge("connection_host_cluster_hosts", &[]),
            resumes_recovered: counter("connection_host_session_resumes", "recovered", "true"),
            resumes_lost: counter("connection_host_session_resumes", "recovered", "false"),
            replayed_frames: r.counter("connection_host_session_replayed_frames", &[]),
            idempotency_completed: counter("connection_host_idempotency_hits", "kind", "completed"),
            idempotency_pending: counter("connection_host_idempotency_hits", "kind", "pending"),
            recorder,
            handle,
        };
        Registrar(&metrics.recorder)
            .gauge(
                "connection_host_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))],
            )
            .set(1.0);
        metrics
    }

    /// The handles of route `key`; call once per route and keep them (registering allocates).
    pub fn route(&self, key: &str) -> RouteMetrics {
        route_metrics(&self.recorder, key)
    }

    /// The handles of local function `name`; call once per function and keep them.
    pub fn function(&self, name: &str) -> FunctionMetrics {
        let r = Registrar(&self.recorder);
        let labels = |outcome: &'static str| {
            vec![
                Label::new("function", name.to_string()),
                Label::from_static_parts("outcome", outcome),
            ]
        };
        let one = vec![Label::new("function", name.to_string())];
        FunctionMetrics {
            invocations: ["ok", "error", "timeout", "crash"]
                .map(|o| r.counter_with("connection_host_function_invocations", labels(o))),
            duration: r.histogram_with("connection_host_function_duration_seconds", one.clone()),
            cold_starts: r.counter_with("connection_host_function_cold_starts", one.clone()),
            crashes: r.counter_with("connection_host_function_crashes", one),
        }
    }

    /// Counts a handshake that ended with `outcome`.
    pub fn handshake(&self, outcome: Handshake) {
        self.handshakes[outcome as usize].increment(1);
    }

    /// Counts a request refused by the limit `kind`.
    pub fn throttled(&self, kind: Throttle) {
        self.throttles[kind as usize].increment(1);
    }

    /// Counts a management call that answered `status`.
    pub fn management_call(&self, operation: Operation, status: u16) {
        match MANAGEMENT_STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.management[operation as usize][i].increment(1),
            None => management_counter(&self.recorder, operation, status).increment(1),
        }
    }

    /// Counts a connection that ended with close `code` (sent or received).
    pub fn closed(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.closes[i].increment(1);
    }

    /// Records one store call of `operation` that took `elapsed` and succeeded or not.
    pub fn store_call(&self, operation: StoreOperation, elapsed: Duration, ok: bool) {
        let op = operation as usize;
        self.store_calls[op][usize::from(!ok)].increment(1);
        self.store_latency[op].record(elapsed.as_secs_f64());
    }

    /// Folds recorded histogram samples into their buckets; run every [`UPKEEP_INTERVAL`].
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The exposition text of every series (Prometheus text format 0.0.4). Gauges mirrored from
    /// the host's state are as last set: [`crate::host::Host::metrics_text`] sets them first.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// The few figures a status page or a periodic writer needs, read from [`Self::render`]:
    /// cheap enough to take every second (it renders every series once).
    pub fn snapshot(&self) -> Snapshot {
        let e = Exposition::parse(&self.render());
        let count = |name: &str| e.sum(name, &[]) as u64;
        Snapshot {
            connections: count("connection_host_connections"),
            messages_in: e.sum("connection_host_messages", &[("direction", "in")]) as u64,
            messages_out: e.sum("connection_host_messages", &[("direction", "out")]) as u64,
            connect_count: count("ConnectCount"),
            client_errors: count("ClientError"),
            integration_errors: count("IntegrationError"),
            execution_errors: count("ExecutionError"),
            integration_latency_count: count("IntegrationLatency_count"),
            integration_latency_sum_ms: e.sum("IntegrationLatency_sum", &[]),
        }
    }
}

/// Current totals of a host's headline series (every route summed), from [`Metrics::snapshot`].
/// Counters only grow: a rate is the difference of two snapshots over the time between them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    /// Open WebSocket connections.
    pub connections: u64,
    /// Data messages received from clients.
    pub messages_in: u64,
    /// Data messages written to clients.
    pub messages_out: u64,
    /// `ConnectCount`.
    pub connect_count: u64,
    /// `ClientError`.
    pub client_errors: u64,
    /// `IntegrationError`.
    pub integration_errors: u64,
    /// `ExecutionError`.
    pub execution_errors: u64,
    /// Integration calls timed (`IntegrationLatency_count`).
    pub integration_latency_count: u64,
    /// Their total time in milliseconds (`IntegrationLatency_sum`).
    pub integration_latency_sum_ms: f64,
}

/// Registers series on one recorder.
struct Registrar<'r>(&'r PrometheusRecorder);

/// Metadata the exporter ignores but the `Recorder` API asks for.
const METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

impl Registrar<'_> {
    fn labels(labels: &[(&'static str, &'static str)]) -> Vec<Label> {
        labels
            .iter()
            .map(|&(k, v)| Label::from_static_parts(k, v))
            .collect()
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
        self.counter_with(name, Self::labels(labels))
    }

    fn counter_with(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.0
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Gauge {
        self.0
            .register_gauge(&Key::from_parts(name, Self::labels(labels)), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Histogram {
        self.histogram_with(name, Self::labels(labels))
    }

    fn histogram_with(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.0
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }
}

fn management_counter(recorder: &PrometheusRecorder, operation: Operation, status: u16) -> Counter {
    Registrar(recorder).counter_with(
        "connection_host_management_calls",
        vec![
            Label::from_static_parts("operation", operation.label()),
            Label::new("status", status.to_string()),
        ],
    )
}

fn route_metrics(recorder: &PrometheusRecorder, key: &str) -> RouteMetrics {
    let r = Registrar(recorder);
    let labels = || vec![Label::new("route", key.to_string())];
    RouteMetrics {
        message_count: r.counter_with("MessageCount", labels()),
        integration_error: r.counter_with("IntegrationError", labels()),
        client_error: r.counter_with("ClientError", labels()),
        execution_error: r.counter_with("ExecutionError", labels()),
        integration_latency: r.histogram_with("IntegrationLatency", labels()),
    }
}

/// The `# HELP` text (and unit) of every series, as METRICS.md states it.
fn describe(recorder: &PrometheusRecorder) {
    use Unit::{Bytes, Count, Milliseconds, Seconds};
    for (name, unit, help) in [
        (
            "ConnectCount",
            Count,
            "Messages sent to the $connect route integration.",
        ),
        (
            "MessageCount",
            Count,
            "Messages sent to the API, from or to clients (posts: route=\"@connections\").",
        ),
        (
            "IntegrationError",
            Count,
            "Requests for which the integration answered 4XX/5XX.",
        ),
        (
            "ClientError",
            Count,
            "Requests refused with a 4XX before the integration was invoked.",
        ),
        (
            "ExecutionError",
            Count,
            "Errors while calling the integration (unreachable, failed, timed out).",
        ),
        (
            "connection_host_connections",
            Count,
            "Open WebSocket connections on this host.",
        ),
        (
            "connection_host_handshakes",
            Count,
            "WebSocket handshakes by outcome.",
        ),
        (
            "connection_host_messages",
            Count,
            "Data messages received from (in) and written to (out) clients.",
        ),
        (
            "connection_host_message_bytes",
            Bytes,
            "Bytes of data messages received from (in) and written to (out) clients.",
        ),
        (
            "connection_host_management_calls",
            Count,
            "@connections calls by operation and HTTP status.",
        ),
        (
            "connection_host_outbound_queue_bytes",
            Bytes,
            "Bytes waiting in every connection's outbound queue.",
        ),
        (
            "connection_host_slow_consumer_closes",
            Count,
            "Connections closed because the client stopped reading.",
        ),
        (
            "connection_host_throttles",
            Count,
            "Requests refused by a rate or concurrency limit, by limit.",
        ),
        (
            "connection_host_heartbeat_closes",
            Count,
            "Connections closed for not answering pings or for being idle.",
        ),
        (
            "connection_host_closes",
            Count,
            "Connections ended, by WebSocket close code.",
        ),
        (
            "connection_host_store_calls",
            Count,
            "Connection store calls by DynamoDB operation and outcome.",
        ),
        (
            "connection_host_cluster_forwards",
            Count,
            "Management calls forwarded to the owning host, by outcome.",
        ),
        (
            "connection_host_cluster_reaped_connections",
            Count,
            "Records of dead hosts' connections removed by this host.",
        ),
        (
            "connection_host_cluster_hosts",
            Count,
            "Live hosts this host knows, itself included.",
        ),
        (
            "connection_host_function_invocations",
            Count,
            "Local function invocations by outcome.",
        ),
        (
            "connection_host_function_cold_starts",
            Count,
            "Local function processes initialized.",
        ),
        (
            "connection_host_function_crashes",
            Count,
            "Local function processes that exited unasked.",
        ),
        (
            "connection_host_session_resumes",
            Count,
            "Reliable sessions resumed, by whether their frames were recovered.",
        ),
        (
            "connection_host_session_replayed_frames",
            Count,
            "Frames replayed to resumed sessions.",
        ),
        (
            "connection_host_idempotency_hits",
            Count,
            "Messages answered from an idempotency key instead of invoking.",
        ),
        (
            "connection_host_build_info",
            Count,
            "Always 1; the version label names the build.",
        ),
    ] {
        recorder.describe_counter(KeyName::from_const_str(name), Some(unit), help.into());
    }
    for (name, unit, help) in [
        (
            "IntegrationLatency",
            Milliseconds,
            "Time from the request to the integration to its response, in milliseconds.",
        ),
        (
            "connection_host_store_latency_seconds",
            Seconds,
            "Connection store call latency by DynamoDB operation.",
        ),
        (
            "connection_host_function_duration_seconds",
            Seconds,
            "Local function invocation duration.",
        ),
    ] {
        recorder.describe_histogram(KeyName::from_const_str(name), Some(unit), help.into());
    }
}

/// One sample of an exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name, with any `_bucket`/`_sum`/`_count` suffix.
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// A parsed Prometheus text exposition, for reading values back (tests, [`Metrics::snapshot`]).
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Every sample, in the order written.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Reads the samples of `text`; comments and lines that are not samples are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Self { samples }
    }

    /// The sum of every sample called `name` whose labels include all of `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The samples called `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"`, with the exposition's escapes (`\\`, `\"`, `\n`) in values.
fn parse_labels(mut rest: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_with_the_catalogue_names_and_real_histograms() {
        let m = Metrics::new("abc123", "dev");
        let route = m.route("sendmessage");
        route.message_count.increment(2);
        route.integration_call(Duration::from_millis(30), Some(200));
        route.integration_call(Duration::from_millis(3), Some(502));
        route.integration_call(Duration::from_secs(40), None);
        m.handshake(Handshake::OriginRefused);
        m.management_call(Operation::PostToConnection, 410);
        m.management_call(Operation::PostToConnection, 418);
        m.closed(1000);
        m.closed(3999);
        m.store_call(StoreOperation::Query, Duration::from_millis(2), false);
        m.function("chat")
            .invoked(FunctionOutcome::Crash, Duration::from_millis(5));
        let text = m.render();
        let e = Exposition::parse(&text);
        let r = [("route", "sendmessage")];
        assert_eq!(e.sum("MessageCount", &r), 2.0);
        assert_eq!(e.sum("IntegrationError", &r), 1.0);
        assert_eq!(e.sum("ExecutionError", &r), 1.0);
        assert_eq!(e.sum("IntegrationLatency_count", &r), 3.0);
        // Milliseconds: 30 and 3 fall under the 50 ms bound, 40 s only under +Inf.
        let le = |bound| {
            e.sum(
                "IntegrationLatency_bucket",
                &[("route", "sendmessage"), ("le", bound)],
            )
        };
        assert_eq!(le("50"), 2.0);
        assert_eq!(le("29000"), 2.0);
        assert_eq!(le("+Inf"), 3.0);
        assert_eq!(
            e.sum(
                "connection_host_handshakes",
                &[("outcome", "origin_refused")]
            ),
            1.0
        );
        assert_eq!(
            e.sum("connection_host_handshakes", &[("outcome", "accepted")]),
            0.0
        );
        let post = |status| {
            e.sum(
                "connection_host_management_calls",
                &[("operation", "PostToConnection"), ("status", status)],
            )
        };
        assert_eq!((post("410"), post("418"), post("200")), (1.0, 1.0, 0.0));
        assert_eq!(e.sum("connection_host_closes", &[("code", "1000")]), 1.0);
        assert_eq!(e.sum("connection_host_closes", &[("code", "other")]), 1.0);
        let query = [("operation", "Query"), ("outcome", "error")];
        assert_eq!(e.sum("connection_host_store_calls", &query), 1.0);
        let le = [("operation", "Query"), ("le", "0.0025")];
        assert_eq!(
            e.sum("connection_host_store_latency_seconds_bucket", &le),
            1.0
        );
        let chat = [("function", "chat"), ("outcome", "crash")];
        assert_eq!(e.sum("connection_host_function_invocations", &chat), 1.0);
        // Every series carries the API and stage; counters have no `_total` suffix.
        assert!(
            e.samples
                .iter()
                .all(|s| s.labels.contains(&("api_id".into(), "abc123".into()))
                    && s.labels.contains(&("stage".into(), "dev".into()))),
            "{text}"
        );
        assert!(text.contains("# TYPE MessageCount counter"), "{text}");
        assert!(
            text.contains("# TYPE IntegrationLatency histogram"),
            "{text}"
        );
        assert_eq!(e.sum("connection_host_build_info", &[]), 1.0);
        let snapshot = m.snapshot();
        assert_eq!(snapshot.integration_latency_count, 3);
        assert_eq!(snapshot.execution_errors, 1);
    }

    #[test]
    fn two_hosts_in_one_process_count_apart() {
        let a = Metrics::new("a", "dev");
        let b = Metrics::new("b", "dev");
        a.messages_in.increment(5);
        assert_eq!(a.snapshot().messages_in, 5);
        assert_eq!(b.snapshot().messages_in, 0);
    }

    #[test]
    fn label_values_with_escapes_parse() {
        let e = Exposition::parse("# HELP x y\nx{a=\"q\\\"u,o\\\\te\",b=\"2\"} 3\ny 1.5\n");
        assert_eq!(e.sum("x", &[("a", "q\"u,o\\te"), ("b", "2")]), 3.0);
        assert_eq!(e.sum("y", &[]), 1.5);
    }
}
