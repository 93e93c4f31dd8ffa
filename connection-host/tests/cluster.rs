//! Several hosts on one DynamoDB store (moto, `DYNAMODB_TEST_ENDPOINT`) as one cluster: management
//! calls reach a connection through any host, broadcasts reach every member once, a killed host's
//! connections are reaped, a restarted host does not bring its old connections back, and a store
//! outage longer than `host_timeout` disconnects nobody.
//!
//! Each host runs on its own tokio runtime, so a test can kill one abruptly: dropping the runtime
//! drops every task and socket at once, without Close frames, `$disconnect` or a goodbye to the
//! store, as when a process dies.

mod common;

use aws_sdk_apigatewaymanagement::primitives::Blob;
use common::proxy::{FaultProxy, Mode};
use common::*;
use connection_host::server::{Listeners, RunError};
use connection_host::store::ConnectionStore;
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "cluster-test-secret-0123456789";

/// Timings of the tests that kill a host: dead after 2 s without a heartbeat.
const FAST_LIVENESS: &str = "heartbeat_interval = \"500ms\"\nhost_timeout = \"2s\"\n";

/// A clustered host on its own runtime, with a public and a management listener.
struct ClusterHost {
    public: SocketAddr,
    management: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), RunError>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ClusterHost {
    fn start(tables: &TestTables, host_id: &str, liveness: &str) -> Self {
        Self::start_with_routes(tables, host_id, liveness, "")
    }

    /// Like [`ClusterHost::start`], with more routes and integrations (TOML) beside `whoami`.
    fn start_with_routes(tables: &TestTables, host_id: &str, liveness: &str, routes: &str) -> Self {
        Self::start_via(tables, tables.endpoint(), host_id, liveness, routes)
    }

    /// Like [`ClusterHost::start_with_routes`], with the store reached at `endpoint` (a proxy).
    fn start_via(
        tables: &TestTables,
        endpoint: &str,
        host_id: &str,
        liveness: &str,
        routes: &str,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Self::launch(tables, endpoint, host_id, liveness, routes, Some(runtime))
    }

    /// Like [`ClusterHost::start`], on the calling test's runtime (current-thread, unlike the
    /// others): tasks woken together run in the order they were woken, so the host takes
    /// requests that arrive together in their order of arrival. Killing it does nothing.
    fn start_here(tables: &TestTables, host_id: &str) -> Self {
        Self::launch(tables, tables.endpoint(), host_id, "", "", None)
    }

    /// Starts a host on `runtime`, or on the calling one when `None`.
    fn launch(
        tables: &TestTables,
        endpoint: &str,
        host_id: &str,
        liveness: &str,
        routes: &str,
        runtime: Option<tokio::runtime::Runtime>,
    ) -> Self {
        let bind = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        };
        let (public, management) = (bind(), bind());
        let (public_addr, management_addr) = (
            public.local_addr().unwrap(),
            management.local_addr().unwrap(),
        );
        let toml = format!(
            r#"{WHOAMI}
{routes}
[extensions.groups]
enabled = true
# One call at a time, so a broadcast's calls to several hosts queue.
remote_concurrency = 1
remote_timeout = "1s"
[store]
kind = "dynamodb"
connections_table = "{}"
groups_table = "{}"
sessions_table = "{}"
endpoint_url = "{}"
[cluster]
host_id = "{host_id}"
advertise_url = "http://{management_addr}"
secret = "{SECRET}"
{liveness}"#,
            tables.connections(),
            tables.groups(),
            tables.sessions(),
            endpoint
        );
        let config = connection_host::Config::from_toml(&toml).expect("valid cluster config");
        let (tx, rx) = oneshot::channel::<()>();
        // Everything (listeners, store client, tasks) is created inside the host's runtime, so
        // dropping that runtime takes all of it down.
        let serve = async move {
            let listeners = Listeners {
                public: tokio::net::TcpListener::from_std(public)?,
                management: Some(tokio::net::TcpListener::from_std(management)?),
            };
            connection_host::run(config, listeners, async move {
                let _ = rx.await;
            })
            .await
        };
        let join = match &runtime {
            Some(runtime) => runtime.spawn(serve),
            None => tokio::spawn(serve),
        };
        Self {
            public: public_addr,
            management: management_addr,
            shutdown: Some(tx),
            join: Some(join),
            runtime,
        }
    }

    fn sdk(&self) -> aws_sdk_apigatewaymanagement::Client {
        mgmt_client(self.management)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.management)
    }

    /// Graceful shutdown: drains, then `run` returns.
    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let join = self.join.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(15), join)
            .await
            .expect("run returns after shutdown")
            .expect("run does not panic")
            .expect("clean shutdown");
    }

    /// Kills the host: every task and socket is dropped at once.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for ClusterHost {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn whoami(ws: &mut Ws) -> String {
    send_text(ws, r#"{"action":"whoami"}"#).await;
    let v: Value = serde_json::from_str(&next_text(ws).await).unwrap();
    v["connectionId"].as_str().unwrap().to_string()
}

async fn client(host: &ClusterHost) -> (Ws, String) {
    let mut ws = connect(host.public).await;
    let id = whoami(&mut ws).await;
    (ws, id)
}

/// PostToConnection through `via`; `Ok` or the HTTP status of the error.
async fn post(via: &ClusterHost, id: &str, data: &str) -> Result<(), Option<u16>> {
    via.sdk()
        .post_to_connection()
        .connection_id(id)
        .data(Blob::new(data))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            assert!(
                matches!(
                    &e,
                    aws_sdk_apigatewaymanagement::error::SdkError::ServiceError(_)
                ),
                "expected a service error, got {e:?}"
            );
            e.raw_response().map(|r| r.status().as_u16())
        })
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// The three headers of a host-to-host call from `from`, signed with `secret` at `date_ms`, as
/// a host sends them.
fn signed_headers(
    secret: &str,
    method: &str,
    path_and_query: &str,
    date_ms: i64,
    from: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    use connection_host::peer_auth as cluster;
    let mac = cluster::signature(
        secret.as_bytes(),
        &method.parse().unwrap(),
        path_and_query,
        date_ms,
        from,
        body,
    );
    vec![
        (cluster::FORWARDED_HEADER, from.to_string()),
        (cluster::DATE_HEADER, date_ms.to_string()),
        (cluster::SIGNATURE_HEADER, mac),
    ]
}

/// POSTs `body` to `url` with `headers`.
async fn send_with(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&'static str, String)],
    body: String,
) -> reqwest::Response {
    let mut request = http.post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.unwrap()
}

async fn broadcast(via: &ClusterHost, group: &str, data: &str) -> Value {
    let r = reqwest::Client::new()
        .post(via.url(&format!("/dev/@groups/{group}")))
        .body(data.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn management_calls_reach_a_connection_through_any_host() {
    let Some(tables) =
        TestTables::create("management_calls_reach_a_connection_through_any_host").await
    else {
        return;
    };
    let mut a = ClusterHost::start(&tables, "a", "");
    let mut b = ClusterHost::start(&tables, "b", "");
    let mut c = ClusterHost::start(&tables, "c", "");
    let (mut ws, id) = client(&a).await;

    let record = tables.store.get_connection(&id).await.unwrap().unwrap();
    assert_eq!(record.owner_host, "a");
    assert_eq!(record.owner_endpoint, format!("http://{}", a.management));
    assert!(!record.owner_incarnation.is_empty());

    // PostToConnection through B, with the official SDK client.
    post(&b, &id, "via b").await.expect("post through b");
    assert_eq!(next_text(&mut ws).await, "via b");
    // Again, now from B's owner cache.
    post(&b, &id, "via b again")
        .await
        .expect("second post through b");
    assert_eq!(next_text(&mut ws).await, "via b again");

    let info = c
        .sdk()
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("GetConnection through c");
    assert_eq!(info.identity().unwrap().source_ip(), Some("127.0.0.1"));
    assert!(info.connected_at().is_some());

    // Host-to-host calls need a signature made with the secret: a wrong one is refused (and
    // delivers nothing), the right one is served by the owner.
    let http = reqwest::Client::new();
    let path = format!("/dev/@connections/{}", encode_id(&id));
    let batch = format!(r#"{{"connectionIds":["{id}"],"data":"bm90IGZvciB5b3U="}}"#);
    let wrong = signed_headers(
        "wrong-secret-wrong-secret",
        "POST",
        &path,
        now_ms(),
        "b",
        batch.as_bytes(),
    );
    let wrong_deliver = signed_headers(
        "wrong-secret-wrong-secret",
        "POST",
        "/dev/@internal/deliver",
        now_ms(),
        "b",
        batch.as_bytes(),
    );
    for (headers, target) in [
        (wrong.clone(), a.url(&path)),
        (wrong[1..].to_vec(), b.url(&path)),
        (wrong[..1].to_vec(), a.url(&path)),
        (wrong_deliver, a.url("/dev/@internal/deliver")),
        (vec![], a.url("/dev/@internal/deliver")),
    ] {
        let r = send_with(&http, &target, &headers, batch.clone()).await;
        assert_eq!(r.status(), 403, "{target} with {headers:?}");
        assert_eq!(
            r.headers()
                .get("x-amzn-ErrorType")
                .map(|v| v.to_str().unwrap()),
            Some("ForbiddenException")
        );
    }
    let body = "with the secret";
    let headers = signed_headers(SECRET, "POST", &path, now_ms(), "b", body.as_bytes());
    let r = send_with(&http, &a.url(&path), &headers, body.to_string()).await;
    assert_eq!(r.status(), 200);
    // The refused calls delivered nothing: this is the next message.
    assert_eq!(next_text(&mut ws).await, "with the secret");

    // DeleteConnection through C closes the client with 1000.
    c.sdk()
        .delete_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("DeleteConnection through c");
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    // B still has A cached as the owner: A answers 410 and B passes it on, then B forgets.
    for attempt in ["cached owner", "after 410"] {
        let err = b
            .sdk()
            .post_to_connection()
            .connection_id(&id)
            .data(Blob::new("too late"))
            .send()
            .await
            .expect_err("posting to a deleted connection fails");
        assert!(
            err.as_service_error()
                .is_some_and(|e| e.is_gone_exception()),
            "{attempt}: {err:?}"
        );
    }

    for host in [&mut a, &mut b, &mut c] {
        host.stop().await;
    }
    // Drained hosts leave nothing behind: no records, no liveness records.
    let hosts = tables.store.hosts().await.unwrap();
    assert!(hosts.is_empty(), "{hosts:?}");
    tables.delete().await;
}

/// Reads one HTTP/1.1 answer with a `content-length` from `stream`, leaving the connection open.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "answer cut short");
        answer.push(byte[0]);
    }
    let head = String::from_utf8(answer.clone()).unwrap();
    let length: usize = raw_header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    answer.extend(body);
    String::from_utf8(answer).unwrap()
}

/// Posts for one connection that reach host B a moment apart, each on its own HTTP connection
/// and all in flight at once, are forwarded to the owner in the order B received them. Without
/// a line per connection on B the first posts race: each misses the owner cache and reads the
/// record, and whichever read returns first is forwarded first; later ones may overtake each
/// other on different pooled connections to A.
#[tokio::test]
async fn posts_through_another_host_arrive_in_the_order_it_received_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const POSTS: usize = 200;
    // Between two requests: short enough that the first posts are still looking up the owner
    // when the next ones arrive. B runs on this test's runtime, so it takes requests that reach
    // it together in the order they were written (a multi-threaded runtime may run the last
    // one woken first), and that order is the one the test knows.
    const GAP: Duration = Duration::from_micros(500);
    let Some(tables) = TestTables::create("posts_in_order_across_hosts").await else {
        return;
    };
    let mut a = ClusterHost::start(&tables, "a", "");
    let mut b = ClusterHost::start_here(&tables, "b");
    let (mut ws, id) = client(&a).await;

    // One connection per post, opened beforehand and served once (`/health`), so that B waits
    // on each for its next request, each request goes out whole at once, and nothing orders them
    // but the moment they are written.
    let mut streams = Vec::with_capacity(POSTS);
    for _ in 0..POSTS {
        let mut stream = tokio::net::TcpStream::connect(b.management).await.unwrap();
        let health = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", b.management);
        stream.write_all(health.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        streams.push(stream);
    }
    let path = format!("/dev/@connections/{}", encode_id(&id));
    let mut answers = Vec::with_capacity(POSTS);
    for (n, mut stream) in streams.into_iter().enumerate() {
        let body = n.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            b.management,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        answers.push(tokio::spawn(async move {
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        }));
        tokio::time::sleep(GAP).await;
    }
    for (n, answer) in answers.into_iter().enumerate() {
        let answer = within("an answer from b", answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "post {n}: {answer}");
    }
    let mut received = Vec::with_capacity(POSTS);
    for _ in 0..POSTS {
        received.push(next_text(&mut ws).await.parse::<usize>().unwrap());
    }
    let first_out_of_order = received.iter().enumerate().find(|(n, m)| n != *m);
    assert_eq!(
        first_out_of_order, None,
        "posts delivered out of order: {received:?}"
    );

    drop(ws);
    for host in [&mut a, &mut b] {
        host.stop().await;
    }
    tables.delete().await;
}

/// The record is written before `$connect` runs, but the connection is not open until the 101:
/// another host that reads the record forwards a post to the owner, which answers 410, so nothing
/// is delivered; once the connection is open, the same post through that host is delivered.
/// What an observer of the hosts' network could capture of a host-to-host call is of no use to
/// them: the call carries no secret, a changed body breaks its signature, and it expires after
/// `cluster::FORWARD_WINDOW` (here signed just outside it, either way).
#[tokio::test]
async fn a_captured_host_to_host_call_cannot_be_replayed_late_or_with_another_body() {
    let Some(tables) = TestTables::create("a_captured_host_to_host_call_cannot_be_replayed").await
    else {
        return;
    };
    let mut a = ClusterHost::start(&tables, "a", "");
    let (mut ws, id) = client(&a).await;
    let http = reqwest::Client::new();
    let path = format!("/dev/@connections/{}", encode_id(&id));
    let url = a.url(&path);

    let captured = signed_headers(SECRET, "POST", &path, now_ms(), "b", b"original");
    assert!(
        captured.iter().all(|(_, v)| !v.contains(SECRET)),
        "the secret itself never travels"
    );
    let r = send_with(&http, &url, &captured, "original".into()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(next_text(&mut ws).await, "original");

    // The captured headers with another body.
    let r = send_with(&http, &url, &captured, "forged".into()).await;
    assert_eq!(r.status(), 403);
    // The captured headers with another path (another connection, or another API).
    let r = send_with(
        &http,
        &a.url("/dev/@internal/deliver"),
        &captured,
        "original".into(),
    )
    .await;
    assert_eq!(r.status(), 403);

    // A call captured longer ago than the window, and one dated ahead of it.
    let window = i64::try_from(connection_host::peer_auth::FORWARD_WINDOW.as_millis()).unwrap();
    for date in [now_ms() - window - 1_000, now_ms() + window + 1_000] {
        let late = signed_headers(SECRET, "POST", &path, date, "b", b"replayed");
        let r = send_with(&http, &url, &late, "replayed".into()).await;
        assert_eq!(r.status(), 403, "signed at {date}");
    }
    // A call still within the window is served: the refusals above were for their dates.
    let fresh = signed_headers(
        SECRET,
        "POST",
        &path,
        now_ms() - window / 2,
        "b",
        b"in time",
    );
    let r = send_with(&http, &url, &fresh, "in time".into()).await;
    assert_eq!(r.status(), 200);
    // Nothing refused was delivered: this is the next message.
    assert_eq!(next_text(&mut ws).await, "in time");
    a.stop().await;
}

#[tokio::test]
async fn a_post_through_another_host_during_connect_is_gone() {
    let Some(tables) =
        TestTables::create("a_post_through_another_host_during_connect_is_gone").await
    else {
        return;
    };
    let via: Arc<OnceLock<SocketAddr>> = Arc::default();
    // The HTTP status of each post made during `$connect` (200 when it succeeded).
    let statuses: Arc<Mutex<Vec<Option<u16>>>> = Arc::default();
    // Whether the record was in the store when `$connect` ran.
    let recorded: Arc<Mutex<Vec<bool>>> = Arc::default();
    let handler = {
        let (via, statuses, recorded) = (via.clone(), statuses.clone(), recorded.clone());
        let store = tables.store.clone();
        Handler::start_async(move |event| {
            let (via, statuses, recorded) = (via.clone(), statuses.clone(), recorded.clone());
            let store = store.clone();
            async move {
                if event_type(&event) == "CONNECT" {
                    let record = store.get_connection(conn_id(&event)).await.unwrap();
                    recorded.lock().unwrap().push(record.is_some());
                    let sdk = mgmt_client(*via.get().expect("b started"));
                    let sent = sdk
                        .post_to_connection()
                        .connection_id(conn_id(&event))
                        .data(Blob::new("too early"))
                        .send()
                        .await;
                    let status = sent.map_or_else(
                        |e| e.raw_response().map(|r| r.status().as_u16()),
                        |_| Some(200),
                    );
                    statuses.lock().unwrap().push(status);
                }
                Reply::proxy(200, None)
            }
        })
        .await
    };
    let routes = format!(
        "[routes.\"$connect\"]\nintegration = \"h\"\n[integrations.h]\ntype = \"http\"\nurl = \"{}\"\n",
        handler.url
    );
    let mut a = ClusterHost::start_with_routes(&tables, "a", "", &routes);
    let mut b = ClusterHost::start(&tables, "b", "");
    via.set(b.management).unwrap();

    let (mut ws, id) = client(&a).await;
    assert_eq!(
        *recorded.lock().unwrap(),
        vec![true],
        "the record exists during $connect"
    );
    assert_eq!(*statuses.lock().unwrap(), vec![Some(410)]);
    post(&b, &id, "once open").await.expect("post through b");
    // The early post was never delivered: this is the next message.
    assert_eq!(next_text(&mut ws).await, "once open");

    drop(ws);
    for host in [&mut a, &mut b] {
        host.stop().await;
    }
    tables.delete().await;
}

#[tokio::test]
async fn a_broadcast_through_any_host_reaches_every_member_once() {
    let Some(tables) =
        TestTables::create("a_broadcast_through_any_host_reaches_every_member_once").await
    else {
        return;
    };
    let mut hosts = [
        ClusterHost::start(&tables, "a", ""),
        ClusterHost::start(&tables, "b", ""),
        ClusterHost::start(&tables, "c", ""),
    ];
    // Two members on A, one each on B and C, and a bystander on C.
    let mut members = vec![
        client(&hosts[0]).await,
        client(&hosts[0]).await,
        client(&hosts[1]).await,
        client(&hosts[2]).await,
    ];
    let (mut bystander, bystander_id) = client(&hosts[2]).await;
    let http = reqwest::Client::new();
    for (i, (_, id)) in members.iter().enumerate() {
        // Joined through a host that does not hold the connection: the owner writes it.
        let via = &hosts[(i + 1) % 3];
        let r = http
            .put(via.url(&format!("/dev/@connections/{}/groups/room", encode_id(id))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "join {id}");
    }

    for (via, data) in hosts.iter().zip(["from a", "from b", "from c"]) {
        let v = broadcast(via, "room", data).await;
        assert_eq!(
            (v["delivered"].as_u64(), v["failed"].as_u64()),
            (Some(4), Some(0)),
            "{data}: {v}"
        );
    }
    // A marker behind the broadcasts: each member's queue is FIFO, so a duplicate would show up
    // before it, and a broadcast to the bystander too.
    for id in members.iter().map(|(_, id)| id).chain([&bystander_id]) {
        post(&hosts[1], id, "marker").await.expect("marker");
    }
    for (ws, id) in &mut members {
        for expected in ["from a", "from b", "from c", "marker"] {
            assert_eq!(next_text(ws).await, expected, "member {id}");
        }
    }
    assert_eq!(next_text(&mut bystander).await, "marker");

    for host in &mut hosts {
        host.stop().await;
    }
    tables.delete().await;
}

#[tokio::test]
async fn a_leave_through_another_host_reaches_the_owner_and_its_broadcasts() {
    let Some(tables) = TestTables::create("a_leave_through_another_host").await else {
        return;
    };
    let a = ClusterHost::start(&tables, "a", "");
    let b = ClusterHost::start(&tables, "b", "");
    let (mut ws, id) = client(&a).await;
    let (mut stays, stays_id) = client(&b).await;
    let http = reqwest::Client::new();
    let membership = |via: &ClusterHost, id: &str| {
        via.url(&format!("/dev/@connections/{}/groups/room", encode_id(id)))
    };
    for id in [&id, &stays_id] {
        let r = http.put(membership(&b, id)).send().await.unwrap();
        assert_eq!(r.status(), 204, "join {id}");
    }
    // Left through B: A, which holds the connection, takes it out of the group it broadcasts from.
    let r = http.delete(membership(&b, &id)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let members = tables.store.group_members("room", None, 10).await.unwrap();
    let ids: Vec<_> = members
        .members
        .into_iter()
        .map(|m| m.connection_id)
        .collect();
    assert_eq!(ids, vec![stays_id.clone()]);
    for via in [&a, &b] {
        let v = broadcast(via, "room", "after the leave").await;
        assert_eq!(v["delivered"], 1, "{v}");
    }
    post(&b, &id, "marker").await.expect("still connected");
    assert_eq!(
        next_text(&mut ws).await,
        "marker",
        "no broadcast after the leave"
    );
    for _ in 0..2 {
        assert_eq!(next_text(&mut stays).await, "after the leave");
    }
    // A connection that no longer exists anywhere leaves as before (idempotent).
    drop(ws);
    eventually("the connection ends", Duration::from_secs(10), || async {
        post(&b, &id, "x").await == Err(Some(410))
    })
    .await;
    let r = http.delete(membership(&b, &id)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    drop((a, b));
    tables.delete().await;
}

#[tokio::test]
async fn a_broadcast_to_members_on_dead_and_hung_hosts_answers_and_reaches_the_living() {
    let Some(tables) = TestTables::create("a_broadcast_to_members_on_dead_and_hung_hosts").await
    else {
        return;
    };
    // Default liveness: a killed host still looks alive (a fresh heartbeat) for 20 s.
    let a = ClusterHost::start(&tables, "a", "");
    let b = ClusterHost::start(&tables, "b", "");
    let mut c = ClusterHost::start(&tables, "c", "");
    let mut living = Vec::new();
    for host in [&a, &a, &b, &b] {
        living.push(client(host).await);
    }
    let doomed = [client(&c).await, client(&c).await];
    let http = reqwest::Client::new();
    for (host, id) in living
        .iter()
        .map(|(_, id)| id)
        .zip([&a, &a, &b, &b])
        .map(|(id, h)| (h, id))
        .chain(doomed.iter().map(|(_, id)| (&c, id)))
    {
        let r = http
            .put(host.url(&format!("/dev/@connections/{}/groups/room", encode_id(id))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "join {id}");
    }
    // A hung host: a fresh heartbeat, and a management listener that accepts calls and never
    // answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", hung.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let holder = accepted.clone();
    let listener = tokio::spawn(async move {
        while let Ok((socket, _)) = hung.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    let store = &tables.store;
    store
        .register_host(&connection_host::store::HostRecord {
            host_id: "hung".into(),
            incarnation: "hung-1".into(),
            endpoint: endpoint.clone(),
            heartbeat_at: now_ms(),
            reaping: false,
        })
        .await
        .unwrap();
    for i in 0..3 {
        let id = format!("~hung-{i}");
        store
            .put_connection(connection_host::store::ConnectionRecord {
                connection_id: id.clone(),
                connected_at: now_ms(),
                owner_host: "hung".into(),
                owner_incarnation: "hung-1".into(),
                owner_endpoint: endpoint.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let member = connection_host::store::Member {
            connection_id: id,
            principal: String::new(),
            joined_at: now_ms(),
        };
        store.add_to_group("room", &member).await.unwrap();
    }
    // A dead host (its heartbeat lapsed long ago) at the same address: never called.
    store
        .register_host(&connection_host::store::HostRecord {
            host_id: "lapsed".into(),
            incarnation: "lapsed-1".into(),
            endpoint: endpoint.clone(),
            heartbeat_at: now_ms() - 3_600_000,
            reaping: false,
        })
        .await
        .unwrap();
    // Both say hello to A, as a starting host does, so A knows them before its next heartbeat.
    for (id, heartbeat_at) in [("hung", now_ms()), ("lapsed", now_ms() - 3_600_000)] {
        let body = serde_json::json!({
            "hostId": id, "incarnation": format!("{id}-1"), "endpoint": endpoint,
            "heartbeatAt": heartbeat_at,
        })
        .to_string();
        let path = "/dev/@internal/hello";
        let headers = signed_headers(SECRET, "POST", path, now_ms(), id, body.as_bytes());
        let r = send_with(&http, &a.url(path), &headers, body).await;
        assert_eq!(r.status(), 204, "hello from {id}");
    }
    c.kill();
    drop(doomed);

    let v = broadcast(&a, "room", "to the living").await;
    // The members of the killed and the hung host are in no count: the broadcast reads no
    // membership, and their hosts did not answer.
    assert_eq!(
        ["delivered", "dropped", "gone", "failed"].map(|k| v[k].as_u64()),
        [Some(4), Some(0), Some(0), Some(0)],
        "{v}"
    );
    // One call to the hung host (answered by its timeout), none to the lapsed one.
    assert_eq!(accepted.lock().unwrap().len(), 1, "calls to the hung host");
    for (ws, id) in &mut living {
        assert_eq!(next_text(ws).await, "to the living", "member {id}");
    }
    listener.abort();
    drop((a, b));
    tables.delete().await;
}

#[tokio::test]
async fn a_killed_host_is_reaped_and_the_others_carry_on() {
    let Some(tables) = TestTables::create("a_killed_host_is_reaped_and_the_others_carry_on").await
    else {
        return;
    };
    let mut a = ClusterHost::start(&tables, "a", FAST_LIVENESS);
    let mut b = ClusterHost::start(&tables, "b", FAST_LIVENESS);
    let mut c = ClusterHost::start(&tables, "c", FAST_LIVENESS);
    let (mut ws_a, id_a) = client(&a).await;
    let (mut ws_c, id_c) = client(&c).await;
    let http = reqwest::Client::new();
    for id in [&id_a, &id_c] {
        let r = http
            .put(b.url(&format!("/dev/@connections/{}/groups/room", encode_id(id))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    post(&a, &id_c, "before").await.expect("c reachable");
    assert_eq!(next_text(&mut ws_c).await, "before");

    c.kill();
    let killed = Instant::now();
    // The client sees its socket drop: no Close frame.
    let ended = within("the killed host's socket to drop", async {
        loop {
            match futures_util::StreamExt::next(&mut ws_c).await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(
        !matches!(ended, Some(Ok(_))),
        "expected the socket to drop, got {ended:?}"
    );

    // Posts through another host answer 410 within the reap time (at once: C is unreachable).
    let reap_time = Duration::from_millis(2_500);
    eventually("410 for the dead host's connection", reap_time, || async {
        post(&a, &id_c, "to the dead").await == Err(Some(410))
    })
    .await;
    // Its records, membership and liveness record are removed by the survivors' reaper.
    let store = &tables.store;
    let took = eventually("the dead host reaped", Duration::from_secs(10), || async {
        let record = store.get_connection(&id_c).await.unwrap();
        let members = store.group_members("room", None, 10).await.unwrap();
        let hosts = store.hosts().await.unwrap();
        record.is_none()
            && members.members.iter().map(|m| &m.connection_id).eq([&id_a])
            && !hosts.iter().any(|h| h.host_id == "c")
    })
    .await;
    let since_kill = killed.elapsed();
    eprintln!("reaped {since_kill:?} after the kill (polled for {took:?})");
    // The last heartbeat came at most one interval before the kill: dead host_timeout after it.
    assert!(
        since_kill >= Duration::from_millis(1_500),
        "reaped before host_timeout: {since_kill:?}"
    );

    // The other hosts and their connections are unaffected.
    post(&b, &id_a, "still here").await.expect("a reachable");
    assert_eq!(next_text(&mut ws_a).await, "still here");
    let v = broadcast(&b, "room", "room").await;
    assert_eq!(
        (v["delivered"].as_u64(), v["failed"].as_u64()),
        (Some(1), Some(0)),
        "{v}"
    );
    assert_eq!(next_text(&mut ws_a).await, "room");
    let hosts: Vec<String> = store
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.host_id)
        .collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");

    a.stop().await;
    b.stop().await;
    tables.delete().await;
}

#[tokio::test]
async fn a_restarted_host_does_not_resurrect_its_old_connections() {
    let Some(tables) =
        TestTables::create("a_restarted_host_does_not_resurrect_its_old_connections").await
    else {
        return;
    };
    // Default timings: the reaper would take 20 s, so a quick removal is the restart's doing.
    let mut a = ClusterHost::start(&tables, "a", "");
    let mut r = ClusterHost::start(&tables, "r", "");
    let (_ws_old, id_old) = client(&r).await;
    post(&a, &id_old, "hello").await.expect("old reachable");
    r.kill();

    let mut r2 = ClusterHost::start(&tables, "r", "");
    let store = &tables.store;
    let took = eventually(
        "the previous run's record removed",
        Duration::from_secs(10),
        || async { store.get_connection(&id_old).await.unwrap().is_none() },
    )
    .await;
    eprintln!("previous run's records removed {took:?} after the restart began");
    for via in [&a, &r2] {
        assert_eq!(post(via, &id_old, "again").await, Err(Some(410)));
    }
    // The restarted host serves new connections across the cluster.
    let (mut ws_new, id_new) = client(&r2).await;
    let record = store.get_connection(&id_new).await.unwrap().unwrap();
    assert_eq!(record.owner_host, "r");
    post(&a, &id_new, "to the new run")
        .await
        .expect("new reachable");
    assert_eq!(next_text(&mut ws_new).await, "to the new run");

    a.stop().await;
    r2.stop().await;
    tables.delete().await;
}

/// A client whose messages a task reads all the time (so pings are answered however long the test
/// waits): texts and the end of the connection arrive on a channel.
struct Watched {
    id: String,
    messages: tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
}

impl Watched {
    async fn start(host: &ClusterHost) -> Self {
        let (mut ws, id) = client(host).await;
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let ended = match futures_util::StreamExt::next(&mut ws).await {
                    Some(Ok(Message::Text(t))) => {
                        let _ = tx.send(Ok(t.to_string()));
                        continue;
                    }
                    Some(Ok(Message::Close(frame))) => format!("closed with {frame:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => format!("error {e}"),
                    None => "ended".to_string(),
                };
                let _ = tx.send(Err(ended));
                return;
            }
        });
        Self { id, messages }
    }

    /// The next text, or how the connection ended.
    async fn next(&mut self) -> Result<String, String> {
        within("a message", self.messages.recv())
            .await
            .unwrap_or_else(|| Err("reader gone".into()))
    }
}

/// A DynamoDB outage many times `host_timeout` long: every heartbeat lapses, yet no host reaps
/// another when the store comes back (none saw a peer's heartbeat unchanged for `host_timeout`
/// while its own heartbeats succeeded), so no client is closed, and posts through any host reach
/// every client again within seconds. `CLUSTER_OUTAGE_SECS` lengthens the outage (10 s by default).
#[tokio::test]
async fn a_store_outage_longer_than_host_timeout_closes_no_connection() {
    let test = "a_store_outage_longer_than_host_timeout_closes_no_connection";
    let Some(tables) = TestTables::create(test).await else {
        return;
    };
    let outage = Duration::from_secs(
        std::env::var("CLUSTER_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    );
    let host_timeout = Duration::from_secs(2);
    let proxy = FaultProxy::start(tables.endpoint()).await;
    let mut hosts: Vec<ClusterHost> = ["a", "b", "c"]
        .into_iter()
        .map(|id| ClusterHost::start_via(&tables, &proxy.url, id, FAST_LIVENESS, ""))
        .collect();
    let mut clients = Vec::new();
    for i in 0..21 {
        clients.push((i % 3, Watched::start(&hosts[i % 3]).await));
    }
    // Every client is reachable through another host before the outage.
    for (owner, client) in &mut clients {
        let via = &hosts[(*owner + 1) % 3];
        post(via, &client.id, "before")
            .await
            .expect("post before the outage");
        assert_eq!(client.next().await, Ok("before".to_string()));
    }

    proxy.set(Mode::Refuse);
    // The outage's length is the scenario, not a wait for an event.
    tokio::time::sleep(outage).await;
    proxy.set(Mode::Pass);
    let back = Instant::now();

    // Posts through another host resume once the owners heartbeat again.
    for (owner, client) in &mut clients {
        let via = &hosts[(*owner + 1) % 3];
        eventually(
            "a post through another host",
            Duration::from_secs(15),
            || async { post(via, &client.id, "back").await.is_ok() },
        )
        .await;
        assert_eq!(client.next().await, Ok("back".to_string()), "{}", client.id);
    }
    let resumed = back.elapsed();

    // A host that judged its peers dead would reap them at its first heartbeats after the outage:
    // give the cluster three host_timeouts, then every client must still be open and reachable.
    // (A window in which nothing may happen: there is no event to wait for.)
    tokio::time::sleep(host_timeout * 3).await;
    let mut closed = Vec::new();
    for (owner, client) in &mut clients {
        let via = &hosts[(*owner + 2) % 3];
        let posted = post(via, &client.id, "after").await;
        match client.next().await {
            Ok(text) if posted.is_ok() => assert_eq!(text, "after"),
            other => closed.push(format!("{}: post {posted:?}, client {other:?}", client.id)),
        }
    }
    assert!(
        closed.is_empty(),
        "connections lost to the outage: {closed:#?}"
    );
    let store = &tables.store;
    for (_, client) in &clients {
        assert!(
            store.get_connection(&client.id).await.unwrap().is_some(),
            "record of {}",
            client.id
        );
    }
    let live = store.hosts().await.unwrap();
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(live.iter().all(|h| !h.reaping), "{live:?}");
    // Past the harness's capture, so the figures show in the run's output.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {outage:?} outage with host_timeout {host_timeout:?}: 0 of {} connections closed; \
         posts through other hosts resumed {resumed:?} after recovery",
        clients.len()
    );

    for host in &mut hosts {
        host.stop().await;
    }
    tables.delete().await;
}

/// A host reaped while alive (as if its heartbeats had failed for `host_timeout`) keeps its
/// clients: it registers again and rewrites their records, so they stay reachable through the
/// cluster.
#[tokio::test]
async fn a_host_reaped_while_alive_rejoins_and_keeps_its_clients() {
    let test = "a_host_reaped_while_alive_rejoins_and_keeps_its_clients";
    let Some(tables) = TestTables::create(test).await else {
        return;
    };
    let mut a = ClusterHost::start(&tables, "a", FAST_LIVENESS);
    let mut b = ClusterHost::start(&tables, "b", FAST_LIVENESS);
    let mut client = Watched::start(&b).await;
    let store = &tables.store;
    let member = a.url(&format!(
        "/dev/@connections/{}/groups/room",
        encode_id(&client.id)
    ));
    let joined = reqwest::Client::new().put(&member).send().await.unwrap();
    assert_eq!(joined.status(), 204);
    // Reap b as a peer would: claim it, delete its records, remove its liveness record.
    eventually("b claimed", Duration::from_secs(5), || async {
        let record = store.get_host("b").await.unwrap().expect("b registered");
        store.begin_reap(&record).await.unwrap()
    })
    .await;
    let incarnation = store.get_host("b").await.unwrap().unwrap().incarnation;
    store.delete_connection(&client.id).await.unwrap();
    store.remove_host("b", &incarnation).await.unwrap();

    // b notices at its next heartbeat, registers again and rewrites the record and membership.
    eventually(
        "b back with its record",
        Duration::from_secs(10),
        || async {
            let host = store.get_host("b").await.unwrap();
            let record = store.get_connection(&client.id).await.unwrap();
            let groups = store.groups_of(&client.id).await.unwrap();
            host.is_some_and(|h| !h.reaping && h.incarnation == incarnation)
                && record.is_some_and(|r| r.owner_host == "b" && r.owner_incarnation == incarnation)
                && groups == ["room"]
        },
    )
    .await;
    // The client was not closed, and is reachable through the other host.
    eventually("a post through a", Duration::from_secs(10), || async {
        post(&a, &client.id, "still here").await.is_ok()
    })
    .await;
    assert_eq!(client.next().await, Ok("still here".to_string()));

    a.stop().await;
    b.stop().await;
    tables.delete().await;
}

/// A `msg` frame's sequence number and text (a forwarded post's frame also carries its `p`).
fn msg(frame: &Value) -> (u64, String) {
    assert_eq!(frame["t"], "msg", "{frame}");
    (
        frame["s"].as_u64().unwrap(),
        frame["d"].as_str().unwrap().into(),
    )
}

/// Reliable sessions with `durability`, and a two-way echo route for their messages.
fn sessions(durability: &str) -> String {
    format!(
        r#"
[extensions.sessions]
enabled = true
durability = "{durability}"
[routes."$default"]
integration = "echo"
two_way = true
[integrations.echo]
type = "mock"
response_template = 'echo:$input.body'
"#
    )
}

async fn get_status(via: &ClusterHost, id: &str) -> Result<(), Option<u16>> {
    via.sdk()
        .get_connection()
        .connection_id(id)
        .send()
        .await
        .map(drop)
        .map_err(|e| e.raw_response().map(|r| r.status().as_u16()))
}

#[tokio::test]
async fn a_session_resumes_on_another_host_with_its_buffer_and_memberships() {
    let Some(tables) = TestTables::create("sessions_move").await else {
        return;
    };
    let routes = sessions("memory");
    let a = ClusterHost::start_with_routes(&tables, "a", "", &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", "", &routes);
    let (mut ws, welcome) = reliable_connect(a.public, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    let member = b.url(&format!("/dev/@connections/{}/groups/room", encode_id(&id)));
    let joined = reqwest::Client::new().put(&member).send().await.unwrap();
    assert_eq!(joined.status(), 204);
    // Posts through B reach the client on A, numbered.
    post(&b, &id, "one").await.unwrap();
    post(&b, &id, "two").await.unwrap();
    assert_eq!(next_frame(&mut ws).await["s"], 1);
    assert_eq!(next_frame(&mut ws).await["s"], 2);
    send_frame(&mut ws, serde_json::json!({"t":"ack","s":1})).await;
    drop(ws);
    // While the client is away, A keeps posts for it.
    post(&b, &id, "three").await.unwrap();
    get_status(&b, &id).await.unwrap();
    // The client comes back on B: same ID, frames 2 and 3 again, in order.
    let (mut ws, resumed) = reliable_connect(b.public, Some(&resume_offer(&welcome, 1))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["connectionId"], id.as_str());
    assert_eq!(msg(&next_frame(&mut ws).await), (2, "two".into()));
    assert_eq!(msg(&next_frame(&mut ws).await), (3, "three".into()));
    // A let go: posts through A now reach the client on B, after the replayed ones.
    post(&a, &id, "four").await.unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (4, "four".into()));
    // The membership survived the move.
    let delivered = broadcast(&a, "room", "to the room").await;
    assert_eq!(delivered["delivered"], 1, "{delivered}");
    assert_eq!(next_frame(&mut ws).await["d"], "to the room");
    // Messages keep being answered, numbered in the same sequence.
    send_frame(&mut ws, serde_json::json!({"t":"msg","id":"k","d":"hi"})).await;
    assert_eq!(
        next_frame(&mut ws).await,
        serde_json::json!({"t":"reply","s":6,"id":"k","d":"echo:hi"})
    );
    tables.delete().await;
}

#[tokio::test]
async fn a_store_durable_session_survives_its_host_being_killed() {
    let Some(tables) = TestTables::create("sessions_kill").await else {
        return;
    };
    let routes = sessions("store");
    let mut a = ClusterHost::start_with_routes(&tables, "a", FAST_LIVENESS, &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", FAST_LIVENESS, &routes);
    let c = ClusterHost::start_with_routes(&tables, "c", FAST_LIVENESS, &routes);
    let (mut ws, welcome) = reliable_connect(a.public, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    let member = b.url(&format!("/dev/@connections/{}/groups/room", encode_id(&id)));
    let joined = reqwest::Client::new().put(&member).send().await.unwrap();
    assert_eq!(joined.status(), 204);
    post(&b, &id, "before").await.unwrap();
    assert_eq!(next_frame(&mut ws).await["s"], 1);
    // A dies with the frame unacknowledged; posts keep coming through B. Until the cluster judges
    // A dead (host_timeout), B answers 503 (try again), never 410: the session lives on.
    a.kill();
    drop(ws);
    eventually_some(
        "B takes the session in",
        Duration::from_secs(10),
        async || match post(&b, &id, "after-0").await {
            Ok(()) => Some(()),
            Err(Some(503)) => None,
            Err(other) => panic!("a post for a session whose host died answered {other:?}"),
        },
    )
    .await;
    for n in 1..3 {
        post(&b, &id, &format!("after-{n}")).await.unwrap();
    }
    // B took the session in with its membership: a broadcast through C reaches it there.
    let v = broadcast(&c, "room", "to the room").await;
    assert_eq!(v["delivered"], 1, "{v}");
    // The client resumes on C: everything after what it had, in order, none lost.
    let (mut ws, resumed) = reliable_connect(c.public, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["connectionId"], id.as_str());
    let mut frames = Vec::new();
    for _ in 0..5 {
        frames.push(next_frame(&mut ws).await);
    }
    let seqs: Vec<u64> = frames.iter().map(|f| f["s"].as_u64().unwrap()).collect();
    let data: Vec<&str> = frames.iter().map(|f| f["d"].as_str().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        data,
        vec!["before", "after-0", "after-1", "after-2", "to the room"]
    );
    // And C, which took it over from B, broadcasts to it from its own index.
    let v = broadcast(&c, "room", "again").await;
    assert_eq!(v["delivered"], 1, "{v}");
    assert_eq!(msg(&next_frame(&mut ws).await), (6, "again".into()));
    tables.delete().await;
}

#[tokio::test]
async fn a_keyed_post_sent_again_after_its_owner_died_is_delivered_once() {
    let Some(tables) = TestTables::create("sessions_post_key").await else {
        return;
    };
    let routes = sessions("store");
    let mut a = ClusterHost::start_with_routes(&tables, "a", FAST_LIVENESS, &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", FAST_LIVENESS, &routes);
    let (mut ws, welcome) = reliable_connect(a.public, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    // Through B, kept by A (its frame written to the store with the key).
    post_with_key(&b.sdk(), &id, "once", "order-1")
        .await
        .unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (1, "once".into()));
    // A dies. The caller, not knowing whether A kept its post (the answer could have been lost
    // with A), sends it again through B: 503 until the cluster judges A dead, then 200 from B,
    // which took the session in with A's frames and their keys.
    a.kill();
    drop(ws);
    eventually_some(
        "B takes the session in",
        Duration::from_secs(10),
        async || match post_with_key(&b.sdk(), &id, "once", "order-1").await {
            Ok(()) => Some(()),
            Err((503, _)) => None,
            Err(other) => panic!("a keyed post sent again answered {other:?}"),
        },
    )
    .await;
    // The key names that post only.
    let refused = post_with_key(&b.sdk(), &id, "another", "order-1").await;
    assert_eq!(refused.map_err(|(status, _)| status), Err(422));
    // Without a key, a post sent again is kept twice.
    post(&b, &id, "twice").await.unwrap();
    post(&b, &id, "twice").await.unwrap();
    let (mut ws, resumed) = reliable_connect(b.public, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let mut data = Vec::new();
    for seq in 1..=3 {
        let (s, d) = msg(&next_frame(&mut ws).await);
        assert_eq!(s, seq);
        data.push(d);
    }
    assert_eq!(data, ["once", "twice", "twice"]);
    post(&b, &id, "end").await.unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (4, "end".into()));
    tables.delete().await;
}

#[tokio::test]
async fn a_keyed_post_acknowledged_before_its_owner_was_lost_is_not_kept_again() {
    let Some(tables) = TestTables::create("sessions_post_key_acked").await else {
        return;
    };
    let routes = sessions("store");
    let a = ClusterHost::start_with_routes(&tables, "a", "", &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", "", &routes);
    // A session whose owner, "ghost", kept a keyed post (frame 1, which the client has) and
    // cannot be reached for a hand-over.
    let id = "cG9zdEtleUFja2Q=";
    let store = &tables.store;
    let token = ghost_session(store, id).await;
    // A key that needs escaping in the query of a forward.
    let key = "order 7/a&b=c%";
    let frame = connection_host::store::StoredFrame {
        seq: 1,
        frame: serde_json::json!({"t":"msg","s":1,"p":key,"d":"once"}).to_string(),
    };
    let expires = now_ms() + 600_000;
    assert!(
        store
            .append_frame(id, "ghost", "ghost-1", &frame, expires)
            .await
            .unwrap()
    );
    // The client, which has frame 1, resumes on B: B reads the frames from the store (those the
    // client has too, for their keys) and fences.
    let offer = resume_offer(&serde_json::json!({ "resumeToken": token }), 1);
    let (mut ws, resumed) = reliable_connect(b.public, Some(&offer)).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    // The post sent again through A is forwarded to B, which answers 200 and keeps nothing.
    post_with_key(&a.sdk(), id, "once", key).await.unwrap();
    post(&a, id, "next").await.unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (2, "next".into()));
    tables.delete().await;
}

#[tokio::test]
async fn a_take_over_without_a_hand_over_reads_the_keys_of_the_newest_frames_only() {
    let Some(tables) = TestTables::create("sessions_post_key_bound").await else {
        return;
    };
    let routes = sessions("store");
    let a = ClusterHost::start_with_routes(&tables, "a", "", &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", "", &routes);
    // A ghost's session with a keyed post in frame 1, 1,025 frames without keys, and a keyed
    // post in the newest frame, all of which the client has.
    let id = "cG9zdEtleUJvdW4=";
    let store = &tables.store;
    let token = ghost_session(store, id).await;
    let expires = now_ms() + 600_000;
    let last = 1027;
    for seq in 1..=last {
        let frame = match seq {
            1 => serde_json::json!({"t":"msg","s":seq,"p":"oldest","d":"old"}),
            s if s == last => serde_json::json!({"t":"msg","s":seq,"p":"newest","d":"new"}),
            _ => serde_json::json!({"t":"msg","s":seq,"d":"filler"}),
        };
        let frame = connection_host::store::StoredFrame {
            seq,
            frame: frame.to_string(),
        };
        assert!(
            store
                .append_frame(id, "ghost", "ghost-1", &frame, expires)
                .await
                .unwrap()
        );
    }
    let offer = resume_offer(&serde_json::json!({ "resumeToken": token }), last);
    let (mut ws, resumed) = reliable_connect(b.public, Some(&offer)).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    // The newest key is known: its retry is answered 200 and kept no second time.
    post_with_key(&a.sdk(), id, "new", "newest").await.unwrap();
    // The key of frame 1, 1,026 frames before the client's last, was not read (PROTOCOL.md
    // section 3: the newest 1,024 frames): its retry is kept again.
    post_with_key(&a.sdk(), id, "old", "oldest").await.unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (last + 1, "old".into()));
    tables.delete().await;
}

#[tokio::test]
async fn an_adopted_session_keeps_the_frames_its_client_can_need_and_not_older_ones() {
    let Some(tables) = TestTables::create("sessions_adoption_bound").await else {
        return;
    };
    // A buffer that more than the newest 1,024 frames fill, so that it sets what is kept.
    let limit = 1_100_000;
    let routes = sessions("store").replace(
        "durability = \"store\"",
        &format!("durability = \"store\"\nsession_buffer_bytes = {limit}"),
    );
    let b = ClusterHost::start_with_routes(&tables, "b", "", &routes);
    // Two sessions of "ghost" (no heartbeat: gone) with 1,300 frames each: `msg` frames of 1 KB,
    // then 5 replies of 1 KB, which the previous owner numbered past its buffer's bound. Written
    // as a host writes them, their type first.
    let (last_msg, last) = (1295, 1300);
    let frame = |seq: u64| connection_host::store::StoredFrame {
        seq,
        frame: if seq <= last_msg {
            format!(r#"{{"t":"msg","s":{seq},"d":"{}"}}"#, "x".repeat(1000))
        } else {
            format!(
                r#"{{"t":"reply","s":{seq},"id":"k","d":"{}"}}"#,
                "y".repeat(1000)
            )
        },
    };
    // The furthest back a client can be: the previous owner numbered the newest `msg` only with
    // every frame the client had not acknowledged, and that `msg`, within the buffer.
    let mut held = frame(last_msg).frame.len();
    let mut furthest = last_msg - 1;
    while held + frame(furthest).frame.len() <= limit {
        held += frame(furthest).frame.len();
        furthest -= 1;
    }
    let store = &tables.store;
    let expires = now_ms() + 600_000;
    let (far, old) = ("YWRvcHRGYXJCYWM=", "YWRvcHRPbGRQb3M=");
    let mut tokens = Vec::new();
    for id in [far, old] {
        tokens.push(ghost_session(store, id).await);
        for seq in 1..=last {
            let frame = frame(seq);
            let written = store.append_frame(id, "ghost", "ghost-1", &frame, expires);
            assert!(written.await.unwrap());
        }
        // A call for the session makes B adopt it: its client has not resumed yet.
        get_status(&b, id).await.unwrap();
    }
    // The client furthest back gets every frame after its position, replies included, in order.
    let offer = resume_offer(&serde_json::json!({ "resumeToken": tokens[0] }), furthest);
    let (mut ws, resumed) = reliable_connect(b.public, Some(&offer)).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    for seq in furthest + 1..=last {
        let replayed = next_frame(&mut ws).await;
        assert_eq!(replayed["s"], seq, "{replayed}");
        assert_eq!(replayed["t"], if seq <= last_msg { "msg" } else { "reply" });
    }
    // A position before that cannot have been a client's: those frames were not kept.
    let offer = resume_offer(&serde_json::json!({ "resumeToken": tokens[1] }), 50);
    let (_ws, fresh) = reliable_connect(b.public, Some(&offer)).await;
    assert_eq!(fresh["recovered"], false, "{fresh}");
    assert_eq!(fresh["reason"], "sequence", "{fresh}");
    tables.delete().await;
}

#[tokio::test]
async fn a_sessions_post_keys_move_with_it_to_another_host() {
    let Some(tables) = TestTables::create("sessions_post_key_moved").await else {
        return;
    };
    let routes = sessions("memory");
    let a = ClusterHost::start_with_routes(&tables, "a", "", &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", "", &routes);
    let (mut ws, welcome) = reliable_connect(a.public, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    let key = "order 8/a&b=c%";
    post_with_key(&b.sdk(), &id, "once", key).await.unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (1, "once".into()));
    send_frame(&mut ws, serde_json::json!({"t":"ack","s":1})).await;
    drop(ws);
    // Resumed on B: A hands the session over with its keys, the acknowledged post's included.
    let (mut ws, resumed) = reliable_connect(b.public, Some(&resume_offer(&welcome, 1))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    post_with_key(&a.sdk(), &id, "once", key).await.unwrap();
    post(&a, &id, "next").await.unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (2, "next".into()));
    tables.delete().await;
}

/// Writes the record of a detached reliable session `id` owned by "ghost", a host out of reach
/// (its endpoint refuses connections), and returns the session's resume token: as the host
/// issues them, the ID without its `=`, a dot, 43 characters of secret.
async fn ghost_session(store: &impl ConnectionStore, id: &str) -> String {
    let token = format!("{}.{}", id.trim_end_matches('='), "s".repeat(43));
    let token_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let record = connection_host::store::ConnectionRecord {
        connection_id: id.into(),
        connected_at: now_ms(),
        source_ip: "127.0.0.1".into(),
        owner_host: "ghost".into(),
        owner_incarnation: "ghost-1".into(),
        owner_endpoint: "http://127.0.0.1:9".into(),
        session: Some(Box::new(connection_host::store::SessionRecord {
            token_hash,
            detached_at: now_ms(),
            ..Default::default()
        })),
        ..Default::default()
    };
    store.put_connection(record).await.unwrap();
    token
}

#[tokio::test]
async fn a_session_taken_without_a_hand_over_fences_out_its_previous_owner() {
    let Some(tables) = TestTables::create("sessions_fence").await else {
        return;
    };
    let b = ClusterHost::start_with_routes(&tables, "b", "", &sessions("store"));
    // A session whose owner, "ghost", is still writing frames but cannot be reached for a
    // hand-over (its endpoint refuses connections).
    let id = "Zm9yRmVuY2luZ3Q=";
    let store = &tables.store;
    let token = ghost_session(store, id).await;
    let frame = |seq: u64, data: &str| connection_host::store::StoredFrame {
        seq,
        frame: serde_json::json!({"t":"msg","s":seq,"d":data}).to_string(),
    };
    let expires = now_ms() + 600_000;
    for (seq, data) in [(1, "one"), (2, "two")] {
        assert!(
            store
                .append_frame(id, "ghost", "ghost-1", &frame(seq, data), expires)
                .await
                .unwrap()
        );
    }
    // The client resumes on B: B takes the record, cannot reach the ghost, reads the frames from
    // the store and fences the number of its own first frame.
    let offer = resume_offer(&serde_json::json!({ "resumeToken": token }), 0);
    let (mut ws, resumed) = reliable_connect(b.public, Some(&offer)).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(msg(&next_frame(&mut ws).await), (1, "one".into()));
    assert_eq!(msg(&next_frame(&mut ws).await), (2, "two".into()));
    // The ghost's next frame comes after B's read: it is refused (the ghost learns it lost the
    // session, and would not answer its post 200), and never reaches the store.
    assert!(
        !store
            .append_frame(id, "ghost", "ghost-1", &frame(3, "late"), expires)
            .await
            .unwrap()
    );
    // B's own first frame takes that number.
    post(&b, id, "three").await.unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (3, "three".into()));
    let kept = store.frames_after(id, 2).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].frame.contains("three"), "{kept:?}");
    tables.delete().await;
}

#[tokio::test]
async fn a_session_handed_over_by_a_host_that_fenced_it_keeps_its_next_post() {
    let Some(tables) = TestTables::create("sessions_fence_handed").await else {
        return;
    };
    let routes = sessions("store");
    let a = ClusterHost::start_with_routes(&tables, "a", "", &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", "", &routes);
    // A session of an unreachable "ghost" with one frame: A takes it over without a hand-over
    // and fences number 2, where its own first frame would go.
    let id = "ZmVuY2VIYW5kZWQ=";
    let store = &tables.store;
    let token = ghost_session(store, id).await;
    let frame = connection_host::store::StoredFrame {
        seq: 1,
        frame: serde_json::json!({"t":"msg","s":1,"d":"one"}).to_string(),
    };
    let expires = now_ms() + 600_000;
    assert!(
        store
            .append_frame(id, "ghost", "ghost-1", &frame, expires)
            .await
            .unwrap()
    );
    let offer = resume_offer(&serde_json::json!({ "resumeToken": token }), 1);
    let (ws, on_a) = reliable_connect(a.public, Some(&offer)).await;
    assert_eq!(on_a["recovered"], true, "{on_a}");
    drop(ws);
    // Before A numbers anything, the client resumes on B, which A hands the session to. B's first
    // frame takes the number A fenced: told so by the hand-over, B fences it too (a fence replaces
    // a fence), so its frame is written there, not refused as if B had been fenced out.
    let (mut ws, on_b) = reliable_connect(b.public, Some(&resume_offer(&on_a, 1))).await;
    assert_eq!(on_b["recovered"], true, "{on_b}");
    post(&b, id, "two").await.unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (2, "two".into()));
    let kept = store.frames_after(id, 1).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].frame.contains("two"), "{kept:?}");
    tables.delete().await;
}

#[tokio::test]
async fn an_owner_fenced_out_of_its_session_lets_go_and_its_post_is_not_lost() {
    let Some(tables) = TestTables::create("sessions_fenced").await else {
        return;
    };
    let a = ClusterHost::start_with_routes(&tables, "a", "", &sessions("store"));
    let (mut ws, welcome) = reliable_connect(a.public, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    post(&a, &id, "one").await.unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (1, "one".into()));
    // Another owner ("ghost", out of A's reach) takes the session over without a hand-over, and
    // fences the number of its first frame, as a host resuming it would.
    let store = &tables.store;
    let record = store.get_connection(&id).await.unwrap().unwrap();
    let taken = connection_host::store::ConnectionRecord {
        owner_host: "ghost".into(),
        owner_incarnation: "ghost-1".into(),
        owner_endpoint: "http://127.0.0.1:9".into(),
        ..record.clone()
    };
    assert!(
        store
            .take_over(&taken, &record.owner_host, &record.owner_incarnation)
            .await
            .unwrap()
    );
    assert!(
        store
            .fence_frames(&id, 2, "ghost", "ghost-1", now_ms() + 600_000)
            .await
            .unwrap()
    );
    // A's next frame meets the fence: A lets go (its connection is told to go) and does not
    // answer the post from the frame it could not write. The post goes where the record points;
    // the ghost has no liveness record, so A takes the session in again from the store, and the
    // post is kept there, answered 200.
    post(&a, &id, "two").await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match futures_util::StreamExt::next(&mut ws).await {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("expected a close 4001, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(closed.expect("A lets go of the session"), Some(4001));
    let kept = store.frames_after(&id, 1).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].frame.contains("two"), "{kept:?}");
    // The client resumes and gets the post once, after what it had.
    let (mut ws, resumed) = reliable_connect(a.public, Some(&resume_offer(&welcome, 1))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(msg(&next_frame(&mut ws).await), (2, "two".into()));
    post(&a, &id, "three").await.unwrap();
    assert_eq!(msg(&next_frame(&mut ws).await), (3, "three".into()));
    tables.delete().await;
}

#[tokio::test]
async fn a_memory_session_whose_host_died_starts_afresh_and_says_why() {
    let Some(tables) = TestTables::create("sessions_lost").await else {
        return;
    };
    let routes = sessions("memory");
    let mut a = ClusterHost::start_with_routes(&tables, "a", FAST_LIVENESS, &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", FAST_LIVENESS, &routes);
    let (ws, welcome) = reliable_connect(a.public, None).await;
    a.kill();
    drop(ws);
    let (_ws, fresh) = reliable_connect(b.public, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(fresh["recovered"], false);
    assert_eq!(fresh["reason"], "lost");
    assert_ne!(fresh["connectionId"], welcome["connectionId"]);
    tables.delete().await;
}

/// Reliable sessions with `durability` and a 2 s resume window, their messages echoed by
/// `handler` as `echo:{body}` on a two-way route.
fn echoed_sessions(handler: &Handler, durability: &str) -> String {
    format!(
        r#"
[extensions.sessions]
enabled = true
durability = "{durability}"
resume_window = "2s"
[routes."$default"]
integration = "h"
two_way = true
[integrations.h]
type = "http"
url = "{}"
"#,
        handler.url
    )
}

/// Echoes a message's body as `echo:{body}`.
async fn echo_handler() -> Handler {
    Handler::start(|e| {
        let body = e["body"].as_str().unwrap_or_default();
        Reply::proxy(200, Some(&format!("echo:{body}")))
    })
    .await
}

/// How many times `handler` was invoked for idempotency key `key`.
fn invocations(handler: &Handler, key: &str) -> usize {
    handler
        .events()
        .iter()
        .filter(|e| e["requestContext"]["idempotencyKey"] == key)
        .count()
}

/// Sends `{"t":"msg","id":key,"d":data}` and returns the reply's `d`.
async fn request(ws: &mut Ws, key: &str, data: &str) -> Value {
    send_frame(ws, serde_json::json!({"t":"msg","id":key,"d":data})).await;
    let reply = next_frame(ws).await;
    assert_eq!(reply["id"], key, "{reply}");
    reply["d"].clone()
}

#[tokio::test]
async fn a_key_answered_on_a_host_that_died_is_not_invoked_again_in_the_fresh_session() {
    let Some(tables) = TestTables::create("keys_lost").await else {
        return;
    };
    let handler = echo_handler().await;
    let routes = echoed_sessions(&handler, "memory");
    let mut a = ClusterHost::start_with_routes(&tables, "a", FAST_LIVENESS, &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", FAST_LIVENESS, &routes);
    let (mut ws, welcome) = reliable_connect(a.public, None).await;
    assert_eq!(request(&mut ws, "k", "work").await, "echo:work");
    // The reply's acknowledgement is lost with the host: to the client, "k" is unanswered.
    a.kill();
    drop(ws);
    let (mut ws, fresh) = reliable_connect(b.public, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(
        (fresh["recovered"].as_bool(), fresh["reason"].as_str()),
        (Some(false), Some("lost"))
    );
    assert_eq!(request(&mut ws, "k", "work").await, "echo:work");
    assert_eq!(invocations(&handler, "k"), 1);
    // A forged token for the same session proves nothing: its session's keys are its own.
    let id = welcome["connectionId"].as_str().unwrap();
    let forged = format!(
        "ch-resume.0.{}.{}",
        id.trim_end_matches('='),
        "A".repeat(43)
    );
    let (mut ws, other) = reliable_connect(b.public, Some(&forged)).await;
    assert_eq!(other["recovered"], false);
    assert_eq!(request(&mut ws, "k", "work").await, "echo:work");
    assert_eq!(invocations(&handler, "k"), 2);
    tables.delete().await;
}

#[tokio::test]
async fn a_key_is_carried_on_after_the_reaper_removed_the_dead_hosts_session() {
    let Some(tables) = TestTables::create("keys_reaped").await else {
        return;
    };
    let handler = echo_handler().await;
    let routes = echoed_sessions(&handler, "memory");
    let mut a = ClusterHost::start_with_routes(&tables, "a", FAST_LIVENESS, &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", FAST_LIVENESS, &routes);
    let (mut ws, welcome) = reliable_connect(a.public, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    assert_eq!(request(&mut ws, "k", "work").await, "echo:work");
    a.kill();
    drop(ws);
    // B's reaper deletes the session's record, leaving what proves its token.
    let store = &tables.store;
    eventually(
        "the dead host's session reaped",
        Duration::from_secs(15),
        || async { store.get_connection(&id).await.unwrap().is_none() },
    )
    .await;
    let (mut ws, fresh) = reliable_connect(b.public, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(fresh["reason"], "expired");
    assert_eq!(request(&mut ws, "k", "work").await, "echo:work");
    assert_eq!(invocations(&handler, "k"), 1);
    tables.delete().await;
}

#[tokio::test]
async fn a_key_is_not_invoked_again_after_the_window_passed_and_the_client_came_back_elsewhere() {
    let Some(tables) = TestTables::create("keys_expired").await else {
        return;
    };
    let handler = echo_handler().await;
    let routes = echoed_sessions(&handler, "store");
    let a = ClusterHost::start_with_routes(&tables, "a", "", &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", "", &routes);
    let (mut ws, welcome) = reliable_connect(a.public, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    assert_eq!(request(&mut ws, "k", "work").await, "echo:work");
    drop(ws);
    // A ends the session once its window has passed.
    let ended = Instant::now();
    while get_status(&b, &id).await != Err(Some(410)) {
        assert!(
            ended.elapsed() < Duration::from_secs(30),
            "the session did not end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut ws, fresh) = reliable_connect(b.public, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(
        (fresh["recovered"].as_bool(), fresh["reason"].as_str()),
        (Some(false), Some("expired"))
    );
    assert_eq!(request(&mut ws, "k", "work").await, "echo:work");
    // A key the first session never saw is the fresh session's to invoke.
    assert_eq!(request(&mut ws, "new", "more").await, "echo:more");
    assert_eq!(
        (invocations(&handler, "k"), invocations(&handler, "new")),
        (1, 1)
    );
    tables.delete().await;
}

#[tokio::test]
async fn a_message_sent_again_on_another_host_is_invoked_once() {
    let Some(tables) = TestTables::create("sessions_dedup").await else {
        return;
    };
    // Answers after 1.5 s, so the client drops and resends while the first attempt runs.
    let handler =
        Handler::start(|_| Reply::proxy(200, Some("done")).delayed(Duration::from_millis(1500)))
            .await;
    let routes = format!(
        r#"
[extensions.sessions]
enabled = true
[routes."$default"]
integration = "slow"
two_way = true
[integrations.slow]
type = "http"
url = "{}"
"#,
        handler.url
    );
    let a = ClusterHost::start_with_routes(&tables, "a", "", &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", "", &routes);
    let (mut ws, welcome) = reliable_connect(a.public, None).await;
    let message = serde_json::json!({"t":"msg","id":"once","d":"work"});
    send_frame(&mut ws, message.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(ws);
    let (mut ws, resumed) = reliable_connect(b.public, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    send_frame(&mut ws, message).await;
    let reply = next_frame(&mut ws).await;
    assert_eq!(
        (reply["id"].as_str(), reply["d"].as_str()),
        (Some("once"), Some("done"))
    );
    // The same key once more, after it completed: answered from the store, not invoked.
    send_frame(
        &mut ws,
        serde_json::json!({"t":"msg","id":"once","d":"work"}),
    )
    .await;
    assert_eq!(next_frame(&mut ws).await["d"], "done");
    let invoked = handler
        .events()
        .iter()
        .filter(|e| e["requestContext"]["idempotencyKey"] == "once")
        .count();
    assert_eq!(invoked, 1);
    tables.delete().await;
}

/// The hosts `via`'s status page lists: `(host ID, endpoint, state, this host)`.
async fn status_hosts(via: &ClusterHost) -> Vec<(String, String, String, bool)> {
    let body = reqwest::get(via.url("/status/data"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let data: Value = serde_json::from_slice(&body).unwrap();
    data["cluster"]["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no cluster in {data}"))
        .iter()
        .map(|h| {
            (
                h["hostId"].as_str().unwrap().to_string(),
                h["endpoint"].as_str().unwrap().to_string(),
                h["state"].as_str().unwrap().to_string(),
                h["thisHost"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_status_page_lists_the_cluster_hosts_and_a_lost_one() {
    let Some(tables) =
        TestTables::create("the_status_page_lists_the_cluster_hosts_and_a_lost_one").await
    else {
        return;
    };
    let a = ClusterHost::start(&tables, "a", FAST_LIVENESS);
    let mut b = ClusterHost::start(&tables, "b", FAST_LIVENESS);
    let both = vec![
        ("a".into(), a.url(""), "live".into(), true),
        ("b".into(), b.url(""), "live".into(), false),
    ];
    eventually(
        "both hosts live on a's page",
        Duration::from_secs(5),
        || async { status_hosts(&a).await == both },
    )
    .await;
    b.kill();
    // Lapsed, then reaped and gone from the list.
    eventually(
        "b no longer live on a's page",
        Duration::from_secs(10),
        || async {
            !status_hosts(&a)
                .await
                .iter()
                .any(|(id, _, state, _)| id == "b" && state == "live")
        },
    )
    .await;
    assert_eq!(status_hosts(&a).await[0], both[0]);
}

#[tokio::test]
async fn a_message_whose_host_died_mid_invocation_is_invoked_again_where_it_is_resent() {
    let Some(tables) = TestTables::create("sessions_reclaim").await else {
        return;
    };
    // The first invocation never answers in time (its host dies during it); later ones at once.
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = calls.clone();
    let handler = Handler::start(move |e| {
        if e["requestContext"]["eventType"] != "MESSAGE" {
            return Reply::proxy(200, None);
        }
        let reply = Reply::proxy(200, Some("done"));
        if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            reply.delayed(Duration::from_secs(60))
        } else {
            reply
        }
    })
    .await;
    let routes = format!(
        r#"
[extensions.sessions]
enabled = true
durability = "store"
[routes."$default"]
integration = "slow"
two_way = true
[integrations.slow]
type = "http"
url = "{}"
"#,
        handler.url
    );
    let mut a = ClusterHost::start_with_routes(&tables, "a", FAST_LIVENESS, &routes);
    let b = ClusterHost::start_with_routes(&tables, "b", FAST_LIVENESS, &routes);
    let (mut ws, welcome) = reliable_connect(a.public, None).await;
    let message = serde_json::json!({"t":"msg","id":"k1","d":"work"});
    send_frame(&mut ws, message.clone()).await;
    // A claimed the key and is invoking the route when it dies.
    handler
        .wait_for("the first invocation", |e| {
            e["requestContext"]["idempotencyKey"] == "k1"
        })
        .await;
    a.kill();
    drop(ws);
    let (mut ws, resumed) = reliable_connect(b.public, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    send_frame(&mut ws, message).await;
    // Once the cluster judges A dead, B claims the key again and invokes it, with the same key.
    let reply = next_message_within(&mut ws, Duration::from_secs(20)).await;
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(
        (reply["id"].as_str(), reply["d"].as_str()),
        (Some("k1"), Some("done")),
        "{reply}"
    );
    let keys: Vec<Value> = handler
        .events()
        .iter()
        .filter(|e| e["requestContext"]["eventType"] == "MESSAGE")
        .map(|e| e["requestContext"]["idempotencyKey"].clone())
        .collect();
    assert_eq!(keys, vec![Value::from("k1"), Value::from("k1")]);
    tables.delete().await;
}

#[tokio::test]
async fn a_message_whose_key_cannot_be_claimed_is_refused_for_a_resend_then_invoked() {
    let Some(tables) = TestTables::create("sessions_unclaimed").await else {
        return;
    };
    let proxy = FaultProxy::start(tables.endpoint()).await;
    let mut a = ClusterHost::start_via(&tables, &proxy.url, "a", "", &sessions("memory"));
    let (mut ws, _) = reliable_connect(a.public, None).await;
    let message = serde_json::json!({"t":"msg","id":"k1","d":"hi"});
    proxy.set(Mode::Refuse);
    send_frame(&mut ws, message.clone()).await;
    let reply = next_message_within(&mut ws, Duration::from_secs(20)).await;
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    // Not invoked, and said so in a way the client resends on (not a lost `Internal server error`).
    assert_eq!(reply["error"]["message"], "Service Unavailable", "{reply}");
    proxy.set(Mode::Pass);
    send_frame(&mut ws, message).await;
    let reply = next_frame(&mut ws).await;
    assert_eq!(
        (reply["id"].as_str(), reply["d"].as_str()),
        (Some("k1"), Some("echo:hi")),
        "{reply}"
    );
    a.stop().await;
    tables.delete().await;
}

#[tokio::test]
async fn a_message_whose_claim_landed_unseen_is_invoked_when_sent_again() {
    let Some(tables) = TestTables::create("sessions_unseen_claim").await else {
        return;
    };
    let proxy = FaultProxy::start(tables.endpoint()).await;
    let mut a = ClusterHost::start_via(&tables, &proxy.url, "a", "", &sessions("memory"));
    let (mut ws, _) = reliable_connect(a.public, None).await;
    let message = serde_json::json!({"t":"msg","id":"k1","d":"hi"});
    // The store does the work but its answers never come back in time: the claim lands while the
    // host sees it fail, and the message is refused for a resend.
    proxy.set(Mode::HoldAnswers);
    send_frame(&mut ws, message.clone()).await;
    let reply = next_message_within(&mut ws, Duration::from_secs(60)).await;
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["error"]["message"], "Service Unavailable", "{reply}");
    assert!(
        proxy.held_requests() > 0,
        "no request reached the store while answers were held"
    );
    // The resend finds the refused attempt's claim, which the host releases once the store
    // answers again: it is invoked, not left waiting for an attempt that never runs.
    proxy.set(Mode::Pass);
    send_frame(&mut ws, message).await;
    let reply = next_message_within(&mut ws, Duration::from_secs(20)).await;
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(
        (reply["id"].as_str(), reply["d"].as_str()),
        (Some("k1"), Some("echo:hi")),
        "{reply}"
    );
    a.stop().await;
    tables.delete().await;
}

#[tokio::test]
async fn a_resume_during_a_store_outage_is_refused_for_a_retry_not_started_afresh() {
    let Some(tables) = TestTables::create("sessions_outage").await else {
        return;
    };
    let proxy = FaultProxy::start(tables.endpoint()).await;
    let mut a = ClusterHost::start_via(&tables, &proxy.url, "a", "", &sessions("memory"));
    let (ws, welcome) = reliable_connect(a.public, None).await;
    drop(ws);
    proxy.set(Mode::Refuse);
    // The new token cannot be written: 503, so the client tries again with the token it holds,
    // instead of a fresh session that would lose its connection ID and messages.
    let offer = format!("ch-reliable.v1, {}", resume_offer(&welcome, 0));
    let refused = try_connect(
        a.public,
        "/dev",
        &[("Sec-WebSocket-Protocol", &offer)],
        None,
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
        }
        other => panic!("a resume during a store outage answered {other:?}"),
    }
    proxy.set(Mode::Pass);
    let (_ws, resumed) = reliable_connect(a.public, Some(&resume_offer(&welcome, 0))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["connectionId"], welcome["connectionId"]);
    a.stop().await;
    tables.delete().await;
}
