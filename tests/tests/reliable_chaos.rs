//! Reliable delivery under chaos: three `connection-host` processes clustered on one DynamoDB
//! store (moto, `DYNAMODB_TEST_ENDPOINT`) with `[extensions.sessions]` (`durability = "store"`,
//! `ordered = true`), behind a [`ChaosProxy`] that resets or black-holes every client connection
//! 0.5–3 s after it opens, and one host SIGKILLed mid-run.
//!
//! Many reliable clients (`connection-host-client`, `reliable(true)`) each send numbered
//! messages `c{client}-{n}` to a two-way `$default` route whose handler echoes the body, while the
//! test posts numbered messages `p{client}-{n}` to each client's connection ID with the official
//! SDK, through a host that is not killed (a post answered with an error is posted again after a
//! short delay, with the same `Idempotency-Key`: an error may come after the post was kept, and the
//! key keeps the client from getting it twice). The handler deduplicates on
//! `requestContext.idempotencyKey`, as PROTOCOL.md asks of a handler whose effects must happen
//! once, and records every invocation with the host that made it (each host has its own `api.domain_name`). At the end every message must have arrived
//! exactly once and in order, both ways: the test fails on any loss, duplicate (an effect twice,
//! or a reply twice) or reordering, and on any key invoked again without its host's death to
//! explain it. A key invoked again after the host invoking it was killed is how PROTOCOL.md
//! section 6 keeps such a message from being lost: it is counted and printed, not a failure. The same scenario with plain clients runs after it, paced to last as long, and
//! prints its losses for contrast (it does not fail on them).
//!
//! Scale and knobs (environment variables):
//! - `CHAOS_CLIENTS` (default 5) clients, each sending and receiving `CHAOS_MESSAGES` (default 100)
//!   messages. `tests/run.sh`'s `chaos` step runs 50 × 2,000 (about 15 minutes); the defaults are
//!   for a quick run by hand.
//! - `CHAOS_RUN_SECS` (default 150) bounds each run; what has not arrived by then counts as lost.
//! - `CHAOS_PLAIN=0` skips the plain run; `CHAOS_KILL=0` keeps host-c alive; `CHAOS_FAULTS`
//!   (`reset=1,blackhole=1` by default, or `none`) picks the proxy's faults.
//! - `CONNECTION_HOST_BIN` picks the host binary (the step uses a release build: a debug host
//!   spends about 15 times the CPU per message, which two cores next to moto do not have for 50
//!   clients).
//!
//! `#[ignore]`d, so the test step (every test binary against one shared moto) leaves it out: it
//! needs a moto of its own to keep up. `tests/run.sh`'s `chaos` step runs it on one, started one
//! request at a time (tests/moto_dynamodb.py: moto's own server lets two conditional writes on one
//! item both succeed, which DynamoDB never does). By hand: `DYNAMODB_TEST_ENDPOINT=http://127.0.0.1:PORT
//! cargo test -p e2e-tests --test reliable_chaos -- --ignored`, or `tests/run.sh --only chaos`.
//!
//! The figures are written to stderr past the test harness's capture, so they show without
//! `--nocapture`; the hosts' logs are kept (and their directory printed) when the test fails, and
//! `RUST_LOG=connection_host=debug` makes them say more.

use aws_sdk_apigatewaymanagement as mgmt;
use connection_host_client::{Client, Error as ClientError, Event, Message, Options};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_kit::chaos::{ChaosConfig, ChaosProxy, ChaosSchedule, FaultWeights, Policy, Stats};
use test_kit::{
    Handler, HostProcess, Reply, TempDir, TestTables, WHOAMI, dynamodb_test_endpoint, event_type,
    free_loopback_addrs,
};
use tokio::sync::watch;

const SECRET: &str = "chaos-cluster-secret-0123456789";
/// Fast liveness, so the killed host's sessions are taken over within seconds.
const HEARTBEAT_INTERVAL: &str = "500ms";
const HOST_TIMEOUT: &str = "6s";
/// Messages a reliable client has in flight (sent, not yet answered).
const WINDOW: usize = 8;
/// How long a reliable request may wait for its reply (drops and a host's death included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Pause before a failed post is posted again.
const POST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// A post still failing after this long is given up (and its message counts as lost).
const RELIABLE_POST_GIVE_UP: Duration = Duration::from_secs(60);
/// Plain connections come and go; a post that cannot find its client for this long is lost.
const PLAIN_POST_GIVE_UP: Duration = Duration::from_secs(10);
/// After the last post, how long a plain client may still receive.
const PLAIN_GRACE: Duration = Duration::from_secs(2);
/// After the last post, how long reliable clients have to receive everything.
const RELIABLE_DRAIN: Duration = Duration::from_secs(30);

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        _ => default,
    }
}

/// Writes to the real stderr, past the test harness's capture.
fn report(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// `"c{client}-{n}"` or `"p{client}-{n}"` → `(client, n)`.
fn parse_numbered(text: &str, prefix: char) -> Option<(usize, u64)> {
    let (client, n) = text.strip_prefix(prefix)?.split_once('-')?;
    Some((client.parse().ok()?, n.parse().ok()?))
}

/// What the handler saw of the clients' messages.
#[derive(Default)]
struct Invocations {
    /// Effects per message body: invocations with a key not seen before (the handler dedupes on
    /// `idempotencyKey`, as PROTOCOL.md asks of a handler), or without a key.
    by_body: HashMap<String, u32>,
    /// Every invocation per idempotency key: which host invoked it (its `domainName`), and when.
    by_key: HashMap<String, Vec<(String, Instant)>>,
    /// Per client, the number of each message's first invocation, in the order they came.
    first_order: HashMap<usize, Vec<u64>>,
    /// Keys whose counter (`<prefix>-<k>`) is not the message's number: the client submitted the
    /// messages in another order than the test meant (a check of the test itself).
    keys_out_of_submission_order: u64,
}

/// The echo handler: a MESSAGE's body comes back as the reply. It dedupes on the idempotency key
/// as a real handler would (a key seen before has no second effect), and records every
/// invocation.
async fn echo_handler() -> (Handler, Arc<Mutex<Invocations>>) {
    let seen = Arc::new(Mutex::new(Invocations::default()));
    let recorder = seen.clone();
    let handler = Handler::start(move |e: &Value| {
        if event_type(e) != "MESSAGE" {
            return Reply::proxy(200, None);
        }
        let body = e["body"].as_str().unwrap_or_default().to_string();
        let key = e["requestContext"]["idempotencyKey"].as_str();
        let host = e["requestContext"]["domainName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut seen = recorder.lock().unwrap();
        let repeated = key.is_some_and(|key| {
            let invocations = seen.by_key.entry(key.to_string()).or_default();
            invocations.push((host, Instant::now()));
            invocations.len() > 1
        });
        if repeated {
            return Reply::proxy(200, Some(&body));
        }
        let count = seen.by_body.entry(body.clone()).or_default();
        *count += 1;
        let first = *count == 1;
        if let Some((client, n)) = parse_numbered(&body, 'c') {
            if first {
                seen.first_order.entry(client).or_default().push(n);
            }
            let counter = key
                .and_then(|key| key.rsplit_once('-'))
                .and_then(|(_, k)| k.parse::<u64>().ok());
            if first && key.is_some() && counter != Some(n) {
                seen.keys_out_of_submission_order += 1;
            }
        }
        Reply::proxy(200, Some(&body))
    })
    .await;
    (handler, seen)
}

/// Keys invoked more than once: `(after_death, unexplained)`, where an invocation again is
/// explained when the one before it was on `killed` and it came after the kill (the host died
/// mid-invocation, and the key was claimed again: PROTOCOL.md section 6).
fn repeated_invocations(
    invocations: &Invocations,
    killed: &str,
    kill: Option<Instant>,
    examples: &mut Vec<String>,
) -> (u64, u64) {
    let (mut after_death, mut unexplained) = (0, 0);
    for (key, calls) in &invocations.by_key {
        if calls.len() < 2 {
            continue;
        }
        let explained = calls.windows(2).all(|pair| {
            let ((before, _), (_, at)) = (&pair[0], &pair[1]);
            before == killed && kill.is_some_and(|kill| *at >= kill)
        });
        let hosts: Vec<&str> = calls.iter().map(|(h, _)| h.as_str()).collect();
        if explained {
            after_death += 1;
            note(
                examples,
                format!("invoked again after its host's death: {key} on {hosts:?}"),
            );
        } else {
            unexplained += 1;
            note(
                examples,
                format!("invoked again without a host's death: {key} on {hosts:?}"),
            );
        }
    }
    (after_death, unexplained)
}

/// One host process and its addresses.
struct Host {
    id: &'static str,
    public: SocketAddr,
    management: SocketAddr,
    process: Option<HostProcess>,
}

/// Three clustered hosts on fresh tables.
struct Cluster {
    hosts: Vec<Host>,
    tables: TestTables,
    _dir: TempDir,
}

impl Cluster {
    async fn start(tables: TestTables, handler_url: &str) -> Self {
        let dir = TempDir::new("e2e-reliable-chaos");
        let addrs = free_loopback_addrs(6);
        let env = [
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            (
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "connection_host=info".into()),
            ),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut hosts = Vec::new();
        for (i, id) in ["host-a", "host-b", "host-c"].into_iter().enumerate() {
            let (public, management) = (addrs[2 * i], addrs[2 * i + 1]);
            let store = &tables.config.store;
            let toml = format!(
                r#"[server]
listen = "{public}"
management_listen = "{management}"
[api]
# Tells the handler which host invoked it.
domain_name = "{id}"
[store]
kind = "dynamodb"
connections_table = "{connections}"
groups_table = "{groups}"
sessions_table = "{sessions}"
endpoint_url = "{endpoint}"
[cluster]
host_id = "{id}"
advertise_url = "http://{management}"
secret = "{SECRET}"
heartbeat_interval = "{HEARTBEAT_INTERVAL}"
host_timeout = "{HOST_TIMEOUT}"
[limits]
# The load is the point here, not the per-connection rate.
messages_per_second = 10000
message_burst = 10000
# A black-holed connection is noticed by the host too, not only by its client.
ping_interval = "2s"
[extensions.sessions]
enabled = true
durability = "store"
ordered = true
[integrations.echo]
type = "http"
url = "{url}"
[routes."$default"]
integration = "echo"
two_way = true
{WHOAMI}"#,
                connections = store.connections_table,
                groups = store.groups_table,
                sessions = store.sessions_table,
                endpoint = store.endpoint_url,
                url = handler_url,
            );
            let config = dir.path().join(format!("{id}.toml"));
            std::fs::write(&config, toml).expect("write the host configuration");
            let log = dir.path().join(format!("{id}.log"));
            let process = HostProcess::spawn(id, &config, &log, &env);
            hosts.push(Host {
                id,
                public,
                management,
                process: Some(process),
            });
        }
        for host in &mut hosts {
            let url = format!("http://{}/health", host.management);
            host.process
                .as_mut()
                .unwrap()
                .wait_healthy(&url, Duration::from_secs(30))
                .await;
        }
        Self {
            hosts,
            tables,
            _dir: dir,
        }
    }

    /// Stops every host still running, saying which had exited by itself, and drops the tables.
    /// Returns the directory of the logs, kept if the test fails.
    async fn stop(mut self) -> (Vec<String>, TempDir) {
        let mut crashed = Vec::new();
        for host in &mut self.hosts {
            if let Some(mut process) = host.process.take() {
                if let Some(status) = process.try_exit_status() {
                    crashed.push(format!("{} exited by itself: {status}", host.id));
                    report(&format!(
                        "----- log of {} -----\n{}\n",
                        host.id,
                        process.log_text()
                    ));
                }
                process.kill();
            }
        }
        self.tables.delete().await;
        (crashed, self._dir)
    }
}

/// The official SDK client for a host's management API, retries off (the poster retries, and
/// counts), each call bounded.
fn sdk(management: SocketAddr) -> mgmt::Client {
    let config = mgmt::Config::builder()
        .behavior_version(mgmt::config::BehaviorVersion::latest())
        .region(mgmt::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{management}/dev"))
        .credentials_provider(mgmt::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .retry_config(mgmt::config::retry::RetryConfig::disabled())
        .timeout_config(
            mgmt::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .build();
    mgmt::Client::from_conf(config)
}

/// PostToConnection; the HTTP status of a refusal (0: no answer, e.g. a timeout). With `key`,
/// the post carries it as its `Idempotency-Key`, so that posting it again after an error (which
/// may have come after the post was kept) is kept once.
async fn post(client: &mgmt::Client, id: &str, data: &str, key: Option<&str>) -> Result<(), u16> {
    match key {
        Some(key) => test_kit::post_with_key(client, id, data, key)
            .await
            .map_err(|(status, _)| status),
        None => client
            .post_to_connection()
            .connection_id(id)
            .data(mgmt::primitives::Blob::new(data))
            .send()
            .await
            .map(drop)
            .map_err(|e| e.raw_response().map_or(0, |r| r.status().as_u16())),
    }
}

/// Counters shared by every client and poster of a run.
#[derive(Default)]
struct Progress {
    /// Messages answered (reliable) or sent (plain).
    messages_done: AtomicU64,
    /// Posts answered 200 (or given up).
    posts_done: AtomicU64,
}

/// What one client saw and did.
#[derive(Default)]
struct ClientRecord {
    /// Messages answered or failed (reliable) or sent (plain): the poster keeps pace with it.
    messages_done: u64,
    /// The `n` of each post delivered to the application, in delivery order.
    delivered: Vec<u64>,
    /// Reliable: the `n` of each message whose reply was its own body, in the order they came.
    replies: Vec<u64>,
    /// Reliable: failed requests, `n` → the error.
    failed_requests: BTreeMap<u64, String>,
    /// Plain: messages the client refused to take.
    refused_sends: u64,
    /// Connections ready after the first (reconnects; in reliable mode, resume attempts).
    reconnects: u64,
    /// Reliable: reconnects that resumed the session.
    recovered: u64,
    /// Reliable: reconnects that got a new session, with the welcome's reason.
    new_sessions: Vec<String>,
    /// Reliable: what happened to the session at each new session or terminal error, with the
    /// wall-clock time, to find it in the hosts' logs.
    session_events: Vec<String>,
    /// Errors the client reported, by kind.
    errors: BTreeMap<String, u64>,
    /// Posts: retries, errors by status, posts given up, posts answered 410 in reliable mode.
    post_retries: u64,
    post_errors: BTreeMap<u16, u64>,
    /// The statuses of the failed attempts of each post that needed more than one.
    post_failures: HashMap<u64, Vec<u16>>,
    posts_given_up: Vec<u64>,
    gone_for_live_session: Vec<(u64, String, String)>,
}

fn error_kind(error: &ClientError) -> String {
    match error {
        ClientError::Connect(_) => "Connect".into(),
        ClientError::Reply { message, .. } => format!("Reply({message})"),
        ClientError::Protocol { code, .. } => format!("Protocol({code})"),
        other => format!("{other:?}"),
    }
}

/// Reads a client's events: posts delivered, connections and sessions, the connection ID (for
/// the poster), errors. Plain clients learn their connection ID with `whoami` after each connect.
async fn read_events(
    index: usize,
    mut client: Client,
    reliable: bool,
    record: Arc<Mutex<ClientRecord>>,
    connection_id: watch::Sender<Option<String>>,
) {
    let whoami = client.sender();
    let now = || humantime::format_rfc3339_millis(std::time::SystemTime::now());
    while let Some(event) = client.recv().await {
        match event {
            Event::Message(Message::Text(text)) => {
                if let Some((client, n)) = parse_numbered(&text, 'p') {
                    assert_eq!(client, index, "client {index} got {text}");
                    record.lock().unwrap().delivered.push(n);
                } else if let Ok(v) = serde_json::from_str::<Value>(&text)
                    && let Some(id) = v["connectionId"].as_str()
                {
                    connection_id.send_replace(Some(id.to_string()));
                }
                // Otherwise a plain client's echo of its own message.
            }
            Event::Message(Message::Binary(_)) => panic!("client {index}: a binary message"),
            Event::Connected {
                first,
                recovered,
                connection_id: id,
                reason,
                ..
            } => {
                {
                    let mut record = record.lock().unwrap();
                    if !first {
                        record.reconnects += 1;
                        if recovered {
                            record.recovered += 1;
                        } else if reliable {
                            let reason = reason.unwrap_or_else(|| "(no reason)".into());
                            let old = connection_id.borrow().clone().unwrap_or_default();
                            let new = id.clone().unwrap_or_default();
                            record.session_events.push(format!(
                                "{}: client {index}: session {old} not resumed ({reason}); new session {new}",
                                now()
                            ));
                            record.new_sessions.push(reason);
                        }
                    }
                }
                if reliable {
                    connection_id.send_replace(id);
                } else {
                    // Plain: a new connection, a new ID; ask for it (lost with the connection if
                    // it breaks first; the next connect asks again).
                    // Sent from a task of its own: this task must keep reading events meanwhile.
                    let whoami = whoami.clone();
                    tokio::spawn(async move {
                        let _ = whoami.send(r#"{"action":"whoami"}"#).await;
                    });
                }
            }
            Event::Error(e) => {
                if e.is_terminal() {
                    let session = connection_id.borrow().clone().unwrap_or_default();
                    record.lock().unwrap().session_events.push(format!(
                        "{}: client {index}: stopped on session {session}: {e}",
                        now()
                    ));
                }
                *record
                    .lock()
                    .unwrap()
                    .errors
                    .entry(error_kind(&e))
                    .or_default() += 1;
            }
            Event::StateChanged(_) => {}
            _ => {}
        }
    }
}

/// Sends `c{index}-{n}` for every `n`: reliable clients through `request`, [`WINDOW`] at a time
/// (submitted in order: `FuturesUnordered` polls new futures first in, first out); plain clients
/// through `send`, one per `pace`.
async fn send_messages(
    index: usize,
    sender: connection_host_client::Sender,
    reliable: bool,
    messages: u64,
    pace: Duration,
    record: Arc<Mutex<ClientRecord>>,
    progress: Arc<Progress>,
) {
    if !reliable {
        for n in 1..=messages {
            if sender.send(format!("c{index}-{n}")).await.is_err() {
                record.lock().unwrap().refused_sends += 1;
            }
            progress.messages_done.fetch_add(1, Ordering::Relaxed);
            record.lock().unwrap().messages_done = n;
            tokio::time::sleep(pace).await;
        }
        return;
    }
    let mut next = 1;
    let mut inflight = FuturesUnordered::new();
    while next <= messages || !inflight.is_empty() {
        while next <= messages && inflight.len() < WINDOW {
            let sender = sender.clone();
            let n = next;
            inflight.push(async move {
                let result = sender
                    .request_timeout(format!("c{index}-{n}"), REQUEST_TIMEOUT)
                    .await;
                (n, result)
            });
            next += 1;
        }
        let Some((n, result)) = inflight.next().await else {
            break;
        };
        progress.messages_done.fetch_add(1, Ordering::Relaxed);
        let mut record = record.lock().unwrap();
        record.messages_done += 1;
        match result {
            Ok(Some(Message::Text(body))) if body == format!("c{index}-{n}") => {
                record.replies.push(n);
            }
            Ok(other) => {
                record
                    .failed_requests
                    .insert(n, format!("unexpected reply {other:?}"));
            }
            Err(e) => {
                record.failed_requests.insert(n, e.to_string());
            }
        }
    }
}

/// Posts `p{index}-{n}` for every `n`, once the client's own message `n` is done, to the client's
/// current connection ID through `via`, each until it is answered 200 (retried after [`POST_RETRY_DELAY`]) or `give_up` has passed.
#[allow(clippy::too_many_arguments)]
async fn post_messages(
    index: usize,
    via: mgmt::Client,
    mut connection_id: watch::Receiver<Option<String>>,
    reliable: bool,
    messages: u64,
    pace: Duration,
    record: Arc<Mutex<ClientRecord>>,
    progress: Arc<Progress>,
) {
    let _ = connection_id.wait_for(Option::is_some).await;
    let give_up = if reliable {
        RELIABLE_POST_GIVE_UP
    } else {
        PLAIN_POST_GIVE_UP
    };
    for n in 1..=messages {
        // In step with the client's own messages, so that both directions (and the frames of
        // both on one session) span the whole run, the host's kill included.
        while record.lock().unwrap().messages_done < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let data = format!("p{index}-{n}");
        let first_try = Instant::now();
        loop {
            let id = connection_id.borrow().clone().expect("waited for it");
            // Reliable posts carry their text as their key; plain ones go as API Gateway's.
            let key = reliable.then_some(data.as_str());
            match post(&via, &id, &data, key).await {
                Ok(()) => break,
                Err(status) => {
                    let mut record = record.lock().unwrap();
                    *record.post_errors.entry(status).or_default() += 1;
                    record.post_failures.entry(n).or_default().push(status);
                    if reliable && status == 410 {
                        record.gone_for_live_session.push((
                            n,
                            id.clone(),
                            humantime::format_rfc3339_millis(std::time::SystemTime::now())
                                .to_string(),
                        ));
                    }
                    if first_try.elapsed() > give_up {
                        record.posts_given_up.push(n);
                        break;
                    }
                    record.post_retries += 1;
                }
            }
            tokio::time::sleep(POST_RETRY_DELAY).await;
        }
        progress.posts_done.fetch_add(1, Ordering::Relaxed);
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
}

/// The figures of one run.
struct Figures {
    reliable: bool,
    clients: usize,
    messages: u64,
    took: Duration,
    killed_at: Option<Duration>,
    timed_out: bool,
    c2h_received: u64,
    c2h_lost: u64,
    c2h_duplicated: u64,
    c2h_out_of_order_handler: u64,
    c2h_out_of_order_replies: u64,
    /// Keys invoked again because their host died mid-invocation (the handler's dedup absorbs
    /// them; not a failure).
    c2h_invoked_again_after_death: u64,
    /// Keys invoked again with no host death to explain it (a failure).
    c2h_invoked_again_unexplained: u64,
    keys_out_of_submission_order: u64,
    h2c_received: u64,
    h2c_lost: u64,
    h2c_duplicated: u64,
    h2c_out_of_order: u64,
    post_retries: u64,
    post_errors: BTreeMap<u16, u64>,
    posts_given_up: u64,
    gone_for_live_session: Vec<(usize, u64, String, String)>,
    reconnects: u64,
    recovered: u64,
    new_sessions: BTreeMap<String, u64>,
    client_errors: BTreeMap<String, u64>,
    failed_requests: BTreeMap<String, u64>,
    refused_sends: u64,
    proxy: Stats,
    crashed_hosts: Vec<String>,
    session_events: Vec<String>,
    examples: Vec<String>,
    /// The hosts' configurations and logs, printed and kept if the test fails.
    _logs: TempDir,
}

impl Figures {
    fn failed(&self) -> bool {
        self.c2h_lost
            + self.c2h_duplicated
            + self.c2h_out_of_order_handler
            + self.c2h_out_of_order_replies
            + self.c2h_invoked_again_unexplained
            + self.h2c_lost
            + self.h2c_duplicated
            + self.h2c_out_of_order
            > 0
            || !self.crashed_hosts.is_empty()
    }

    fn text(&self) -> String {
        let total = self.clients as u64 * self.messages;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} clients: {} × {} messages each way, 3 hosts, host-c SIGKILLed at {}, {:.1}s{}",
            if self.reliable { "reliable" } else { "plain" },
            self.clients,
            self.messages,
            self.killed_at.map_or("(not killed)".into(), |t| format!(
                "{:.1}s",
                t.as_secs_f64()
            )),
            self.took.as_secs_f64(),
            if self.timed_out {
                " (RUN BOUND REACHED)"
            } else {
                ""
            },
        );
        let _ = writeln!(
            s,
            "  client→host: sent {total}, received {}, lost {}, duplicated {}, out-of-order {} (handler order {}, reply order {})",
            self.c2h_received,
            self.c2h_lost,
            self.c2h_duplicated,
            self.c2h_out_of_order_handler + self.c2h_out_of_order_replies,
            self.c2h_out_of_order_handler,
            self.c2h_out_of_order_replies,
        );
        let _ = writeln!(
            s,
            "  host→client: sent {total}, received {}, lost {}, duplicated {}, out-of-order {}",
            self.h2c_received, self.h2c_lost, self.h2c_duplicated, self.h2c_out_of_order,
        );
        let _ = writeln!(
            s,
            "  posts: retries {}, errors by status {:?} (0 = no answer), given up {}, 410 for a live session {}",
            self.post_retries,
            self.post_errors,
            self.posts_given_up,
            self.gone_for_live_session.len(),
        );
        let _ = writeln!(
            s,
            "  clients: reconnects {} (resumes in reliable mode), recovered {}, new sessions {:?}, errors {:?}",
            self.reconnects, self.recovered, self.new_sessions, self.client_errors,
        );
        if self.reliable {
            let _ = writeln!(
                s,
                "  keys invoked again: after their host's death {} (deduped by the handler), without one {}",
                self.c2h_invoked_again_after_death, self.c2h_invoked_again_unexplained,
            );
            let _ = writeln!(
                s,
                "  requests failed {:?}; keys out of submission order {}",
                self.failed_requests, self.keys_out_of_submission_order
            );
        } else {
            let _ = writeln!(s, "  sends refused by the client {}", self.refused_sends);
        }
        let _ = writeln!(s, "  proxy: {}", self.proxy);
        for crashed in &self.crashed_hosts {
            let _ = writeln!(s, "  HOST CRASHED: {crashed}");
        }
        for (client, n, id, at) in self.gone_for_live_session.iter().take(10) {
            let _ = writeln!(s, "  {at}: 410 for client {client}'s post {n} to {id}");
        }
        let (stops, changes): (Vec<_>, Vec<_>) = self
            .session_events
            .iter()
            .partition(|e| e.contains("stopped"));
        for event in changes.iter().take(12).chain(&stops) {
            let _ = writeln!(s, "  {event}");
        }
        for example in &self.examples {
            let _ = writeln!(s, "  e.g. {example}");
        }
        s
    }
}

/// Keeps `example` if fewer than four of its kind (the text before its first `:`) are kept.
fn note(examples: &mut Vec<String>, example: String) {
    let kind = example.split(':').next().unwrap_or_default().to_string();
    let kept = examples
        .iter()
        .filter(|e| e.split(':').next() == Some(kind.as_str()))
        .count();
    if kept < 4 {
        examples.push(example);
    }
}

/// Counts of a per-client sequence against `1..=messages`: `(received, lost, duplicated,
/// out_of_order)`, where a number below one seen before it is out of order; a few examples.
fn sequence_figures(
    what: &str,
    client: usize,
    seq: &[u64],
    messages: u64,
    examples: &mut Vec<String>,
) -> (u64, u64, u64, u64) {
    let mut seen = vec![false; messages as usize + 1];
    let (mut duplicated, mut out_of_order, mut max) = (0, 0, 0);
    for &n in seq {
        let slot = &mut seen[n as usize];
        if *slot {
            duplicated += 1;
            note(examples, format!("{what}: client {client} got {n} again"));
        } else if n < max {
            out_of_order += 1;
            note(
                examples,
                format!("{what}: client {client} got {n} after {max}"),
            );
        }
        *slot = true;
        max = max.max(n);
    }
    let received = seen.iter().filter(|s| **s).count() as u64;
    let lost = messages - received;
    if lost > 0 {
        let missing: Vec<u64> = (1..=messages)
            .filter(|n| !seen[*n as usize])
            .take(5)
            .collect();
        note(
            examples,
            format!("{what}: client {client} lost {lost}, first {missing:?}"),
        );
    }
    (received, lost, duplicated, out_of_order)
}

/// One run of the scenario; `pace` spaces a plain client's sends and posts (zero for reliable
/// clients, whose pace is their replies').
async fn run(
    test: &str,
    reliable: bool,
    clients: usize,
    messages: u64,
    pace: Duration,
    bound: Duration,
) -> Option<Figures> {
    let kill = env_number("CHAOS_KILL", 1) != 0;
    // `none`: no faults at all, for a baseline of the store's throughput.
    let faults: Option<FaultWeights> = match std::env::var("CHAOS_FAULTS") {
        Ok(f) if f == "none" => None,
        Ok(f) if !f.is_empty() => Some(
            f.parse()
                .expect("CHAOS_FAULTS: none, or reset=N,blackhole=N,halfopen=N"),
        ),
        _ => Some(FaultWeights {
            reset: 1,
            blackhole: 1,
            half_open: 0,
        }),
    };
    let tables = TestTables::create(test).await?;
    let (handler, invocations) = echo_handler().await;
    let cluster = Cluster::start(tables, &handler.url).await;
    let [a, b, c] = &cluster.hosts[..] else {
        unreachable!()
    };
    let proxy = ChaosProxy::start(ChaosConfig {
        upstreams: vec![a.public, b.public, c.public],
        policy: Policy::Random,
        chaos: faults.map(|weights| ChaosSchedule {
            min: Duration::from_millis(500),
            max: Duration::from_secs(3),
            weights,
        }),
        lifetime: bound + Duration::from_secs(60),
        max_hold: Duration::from_secs(10),
        ..ChaosConfig::default()
    })
    .await
    .expect("start the fault proxy");
    let url = format!("ws://{}/dev", proxy.addr());
    let via = sdk(a.management);
    let (killed_public, killed_id) = (c.public, c.id);
    let survivors = vec![a.public, b.public];

    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    let mut records = Vec::new();
    let mut senders = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    let mut work = tokio::task::JoinSet::new();
    for index in 0..clients {
        let options = Options::new(url.clone())
            .reliable(reliable)
            .backoff(Duration::from_millis(50), Duration::from_millis(500))
            .backoff_jitter(Duration::from_millis(100))
            .stable_after(Duration::from_millis(300))
            .heartbeat(Duration::from_millis(500), Duration::from_secs(1))
            .connect_timeout(Duration::from_secs(3))
            .ack_delay(Duration::from_millis(50));
        let client = Client::connect(options);
        let sender = client.sender();
        let record = Arc::new(Mutex::new(ClientRecord::default()));
        let (id_tx, id_rx) = watch::channel(None);
        readers.spawn(read_events(index, client, reliable, record.clone(), id_tx));
        work.spawn(send_messages(
            index,
            sender.clone(),
            reliable,
            messages,
            pace,
            record.clone(),
            progress.clone(),
        ));
        work.spawn(post_messages(
            index,
            via.clone(),
            id_rx,
            reliable,
            messages,
            pace,
            record.clone(),
            progress.clone(),
        ));
        records.push(record);
        senders.push(sender);
    }

    // Mid-run (half of everything done), host-c leaves the proxy's upstreams and is SIGKILLed.
    let mut cluster = cluster;
    let total = 2 * clients as u64 * messages;
    let mut killed_at = None;
    let deadline = tokio::time::Instant::now() + bound;
    let mut timed_out = false;
    loop {
        if work.is_empty() {
            break;
        }
        tokio::select! {
            joined = work.join_next() => {
                if let Some(Err(e)) = joined {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = tokio::time::sleep_until(deadline) => {
                timed_out = true;
                work.abort_all();
                break;
            }
        }
        let done = progress.messages_done.load(Ordering::Relaxed)
            + progress.posts_done.load(Ordering::Relaxed);
        if kill && killed_at.is_none() && done >= total / 2 {
            proxy
                .set_upstreams(survivors.clone())
                .expect("loopback upstreams");
            let host = cluster
                .hosts
                .iter_mut()
                .find(|h| h.id == killed_id)
                .unwrap();
            assert_eq!(host.public, killed_public);
            let status = host.process.take().unwrap().kill();
            assert!(
                status.is_some_and(|s| !s.success()),
                "{killed_id} had exited before its kill: {status:?}"
            );
            killed_at = Some(started.elapsed());
            report(&format!(
                "{test}: {killed_id} SIGKILLed at {:.1}s\n",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    // What was posted must still arrive: reliable clients get every post (or until the drain
    // bound), plain ones a short grace.
    let drain_until = if reliable {
        tokio::time::Instant::now() + RELIABLE_DRAIN
    } else {
        tokio::time::Instant::now() + PLAIN_GRACE
    };
    while reliable && tokio::time::Instant::now() < drain_until {
        let complete = records
            .iter()
            .all(|r| r.lock().unwrap().delivered.len() as u64 >= messages);
        if complete {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !reliable {
        tokio::time::sleep_until(drain_until).await;
    }
    let took = started.elapsed();
    for sender in &senders {
        let _ = tokio::time::timeout(Duration::from_secs(3), sender.close()).await;
    }
    drop(senders);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
    let proxy_stats = proxy.shutdown().await;
    let (crashed_hosts, logs) = cluster.stop().await;

    // The figures.
    let invocations = invocations.lock().unwrap();
    let mut figures = Figures {
        reliable,
        clients,
        messages,
        took,
        killed_at,
        timed_out,
        c2h_received: 0,
        c2h_lost: 0,
        c2h_duplicated: 0,
        c2h_out_of_order_handler: 0,
        c2h_out_of_order_replies: 0,
        c2h_invoked_again_after_death: 0,
        c2h_invoked_again_unexplained: 0,
        keys_out_of_submission_order: invocations.keys_out_of_submission_order,
        h2c_received: 0,
        h2c_lost: 0,
        h2c_duplicated: 0,
        h2c_out_of_order: 0,
        post_retries: 0,
        post_errors: BTreeMap::new(),
        posts_given_up: 0,
        gone_for_live_session: Vec::new(),
        reconnects: 0,
        recovered: 0,
        new_sessions: BTreeMap::new(),
        client_errors: BTreeMap::new(),
        failed_requests: BTreeMap::new(),
        refused_sends: 0,
        proxy: proxy_stats,
        crashed_hosts,
        session_events: Vec::new(),
        examples: Vec::new(),
        _logs: logs,
    };
    let examples = &mut figures.examples;
    for (index, record) in records.iter().enumerate() {
        let record = record.lock().unwrap();
        // Client → host: invoked once, answered (reliable), in order.
        for n in 1..=messages {
            let body = format!("c{index}-{n}");
            let count = invocations.by_body.get(&body).copied().unwrap_or(0);
            let replied = !reliable || !record.failed_requests.contains_key(&n);
            if count >= 1 && replied {
                figures.c2h_received += 1;
            } else {
                figures.c2h_lost += 1;
                note(
                    examples,
                    format!(
                        "client→host lost: {body} took effect {count}×, request {:?}",
                        record.failed_requests.get(&n)
                    ),
                );
            }
            if count > 1 {
                figures.c2h_duplicated += 1;
                note(
                    examples,
                    format!(
                        "client→host duplicated: {body} took effect {count}× (under different keys)"
                    ),
                );
            }
        }
        let order = invocations
            .first_order
            .get(&index)
            .cloned()
            .unwrap_or_default();
        let (_, _, _, ooo) = sequence_figures("handler order", index, &order, messages, examples);
        figures.c2h_out_of_order_handler += ooo;
        if reliable {
            let (_, _, dup, ooo) =
                sequence_figures("reply order", index, &record.replies, messages, examples);
            figures.c2h_out_of_order_replies += ooo;
            figures.c2h_duplicated += dup;
        }
        // Host → client.
        let (received, lost, duplicated, ooo) =
            sequence_figures("host→client", index, &record.delivered, messages, examples);
        if duplicated > 0 {
            let mut seen = std::collections::HashSet::new();
            for n in &record.delivered {
                if !seen.insert(*n) {
                    let failed = record.post_failures.get(n).cloned().unwrap_or_default();
                    note(
                        examples,
                        format!(
                            "duplicate post: client {index}'s post {n}, failed attempts before its 200: {failed:?}"
                        ),
                    );
                }
            }
        }
        figures.h2c_received += received;
        figures.h2c_lost += lost;
        figures.h2c_duplicated += duplicated;
        figures.h2c_out_of_order += ooo;

        figures.post_retries += record.post_retries;
        for (status, count) in &record.post_errors {
            *figures.post_errors.entry(*status).or_default() += count;
        }
        figures.posts_given_up += record.posts_given_up.len() as u64;
        figures.gone_for_live_session.extend(
            record
                .gone_for_live_session
                .iter()
                .map(|(n, id, at)| (index, *n, id.clone(), at.clone())),
        );
        figures.reconnects += record.reconnects;
        figures.recovered += record.recovered;
        figures
            .session_events
            .extend(record.session_events.iter().cloned());
        for reason in &record.new_sessions {
            *figures.new_sessions.entry(reason.clone()).or_default() += 1;
        }
        for (kind, count) in &record.errors {
            *figures.client_errors.entry(kind.clone()).or_default() += count;
        }
        for error in record.failed_requests.values() {
            *figures.failed_requests.entry(error.clone()).or_default() += 1;
        }
        figures.refused_sends += record.refused_sends;
    }
    let (after_death, unexplained) = repeated_invocations(
        &invocations,
        killed_id,
        killed_at.map(|at| started + at),
        &mut figures.examples,
    );
    figures.c2h_invoked_again_after_death = after_death;
    figures.c2h_invoked_again_unexplained = unexplained;
    figures.session_events.sort();
    figures.gone_for_live_session.sort_by(|a, b| a.3.cmp(&b.3));
    Some(figures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes against moto, which it needs to itself: tests/run.sh's chaos step runs it on \
            its own moto with 50 clients (connection-host/SESSIONS.md, The chaos test)"]
async fn reliable_clients_lose_nothing_under_chaos_and_a_host_kill() {
    let test = "reliable_clients_lose_nothing_under_chaos_and_a_host_kill";
    if dynamodb_test_endpoint(test).is_none() {
        return;
    }
    let clients = env_number("CHAOS_CLIENTS", 5) as usize;
    let messages = env_number("CHAOS_MESSAGES", 100);
    let bound = Duration::from_secs(env_number("CHAOS_RUN_SECS", 150));
    assert!(
        clients > 0 && messages > 0,
        "CHAOS_CLIENTS and CHAOS_MESSAGES must be above 0"
    );

    let reliable = run(test, true, clients, messages, Duration::ZERO, bound)
        .await
        .expect("the endpoint is set");
    report(&format!("{test}:\n{}", reliable.text()));

    if env_number("CHAOS_PLAIN", 1) != 0 {
        // As long as the reliable run took (at most a minute), so both live through about as
        // many faults.
        let pace = reliable
            .took
            .min(Duration::from_secs(60))
            .div_f64(messages as f64);
        let plain = run(test, false, clients, messages, pace, bound)
            .await
            .expect("the endpoint is set");
        report(&format!(
            "{test} (for contrast, not checked):\n{}",
            plain.text()
        ));
        // The contrast holds only if the chaos reached the plain clients too.
        assert!(plain.proxy.faults() > 0, "no fault hit the plain run");
    }

    assert!(
        reliable.proxy.resets > 0 && reliable.proxy.blackholes > 0,
        "the chaos did not happen: {}",
        reliable.proxy
    );
    assert!(
        reliable.killed_at.is_some() || env_number("CHAOS_KILL", 1) == 0,
        "the host was never killed"
    );
    assert!(
        reliable.recovered > 0,
        "no session was ever resumed: the chaos did not test resumes"
    );
    assert!(
        !reliable.failed(),
        "reliable delivery failed under chaos:\n{}",
        reliable.text()
    );
}
