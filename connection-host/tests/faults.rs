//! Fault behaviour on DynamoDB: the host with a `DynamoDbStore` whose traffic goes through a TCP
//! proxy that can refuse or black-hole connections, so DynamoDB (moto, in `DYNAMODB_TEST_ENDPOINT`)
//! becomes unreachable and comes back without losing its state.
//!
//! While DynamoDB is unreachable: new connects get 503 within the store client's timeouts, before
//! `$connect` runs (the record is written first), connections made before keep working
//! (PostToConnection, two-way routes), `$disconnect` is not held up, and a closed connection's
//! record is deleted by background retries once DynamoDB is back; new connects then succeed again
//! by themselves. On shutdown during an outage the retries
//! end with the drain timeout. A record write whose answer is lost (it landed, the client timed out)
//! is retried without refusing the connection, and a connect refused after such a write leaves no
//! record. Throttling is not simulated: the store client retries throttling
//! errors itself (the SDK's standard retry mode, 3 attempts).

mod common;

use aws_sdk_apigatewaymanagement::primitives::Blob;
use common::proxy::{FaultProxy, Mode};
use common::*;
use connection_host::store::dynamodb::client as dynamodb_client;
use connection_host::store::{ConnectionStore, DynamoDbStore, DynamoDbTables};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Error as WsError;

// ---------------------------------------------------------------------------------------------
// The host on a proxied DynamoDB store.
// ---------------------------------------------------------------------------------------------

/// Uniquely named tables on moto, the proxy, the host on a store through the proxy, and a
/// recording `$disconnect` handler (also `$connect`'s when `extra_toml` routes it there).
struct Setup {
    direct: Direct,
    proxy: FaultProxy,
    /// The host's store, through the proxy.
    store: Arc<DynamoDbStore>,
    handler: Handler,
    host: TestHost,
}

impl Setup {
    /// Shuts the host down cleanly and drops the test's tables.
    async fn finish(self) {
        let Self {
            direct, mut host, ..
        } = self;
        host.trigger_shutdown();
        host.join().await.expect("clean shutdown");
        direct.drop_tables().await;
    }

    /// `None` (and a printed reason) when no endpoint is configured outside CI.
    async fn start(test: &str, extra_toml: &str) -> Option<Self> {
        let endpoint = dynamodb_test_endpoint(test)?;
        init_env();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let tables = DynamoDbTables {
            connections: format!("faults-connections-{suffix}"),
            groups: format!("faults-groups-{suffix}"),
            sessions: format!("faults-sessions-{suffix}"),
        };
        let direct = Direct(DynamoDbStore::new(
            dynamodb_client(&endpoint, "us-east-1").await,
            tables.clone(),
        ));
        direct
            .0
            .create_tables()
            .await
            .expect("create the test tables");
        let proxy = FaultProxy::start(&endpoint).await;
        // Built like `DynamoDbStore::from_env` builds it: the same timeouts and retry policy.
        let store = Arc::new(DynamoDbStore::new(
            dynamodb_client(&proxy.url, "us-east-1").await,
            tables,
        ));
        // `?status=N` on the URL makes `$connect` (where routed) answer N.
        let handler = Handler::start(|e| {
            let status = query_param(e, "status").map_or(200, |s| s.parse().unwrap());
            Reply::proxy(status, None)
        })
        .await;
        let toml = format!(
            "{WHOAMI}\n[routes.\"$disconnect\"]\nintegration = \"h\"\n[integrations.h]\ntype = \"http\"\nurl = \"{}\"\n{extra_toml}",
            handler.url
        );
        let host = TestHost::start_with_store(&toml, store.clone()).await;
        Some(Self {
            direct,
            proxy,
            store,
            handler,
            host,
        })
    }
}

/// A store on moto directly (not through the proxy): creates and inspects the tables.
struct Direct(DynamoDbStore);

impl Direct {
    /// Whether the connections table holds `id`'s record (read from moto directly).
    async fn has_record(&self, id: &str) -> bool {
        self.0
            .get_connection(id)
            .await
            .expect("moto is reachable directly")
            .is_some()
    }

    /// Polls the table until `id`'s record is gone; panics after `limit`.
    async fn wait_record_gone(&self, id: &str, limit: Duration) {
        let what = format!("the record of {id} to leave the table");
        eventually(&what, limit, async || !self.has_record(id).await).await;
    }

    /// How many items the connections table holds (read from moto directly).
    async fn records(&self) -> i32 {
        self.0
            .client()
            .scan()
            .table_name(&self.0.tables().connections)
            .select(aws_sdk_dynamodb::types::Select::Count)
            .consistent_read(true)
            .send()
            .await
            .expect("moto is reachable directly")
            .count()
    }

    async fn drop_tables(&self) {
        let tables = self.0.tables();
        for table in [&tables.connections, &tables.groups, &tables.sessions] {
            let _ = self
                .0
                .client()
                .delete_table()
                .table_name(table)
                .send()
                .await;
        }
    }
}

async fn whoami(ws: &mut Ws) -> String {
    send_text(ws, r#"{"action":"whoami"}"#).await;
    let v: Value = serde_json::from_str(&next_text(ws).await).unwrap();
    v["connectionId"].as_str().unwrap().to_string()
}

/// Connects to `ws://ADDR/dev` once DynamoDB is back, retrying while the host answers 503: within
/// 10 s of refusals, plus the last attempt's own 20 s bound.
async fn connect_after_recovery(addr: std::net::SocketAddr) -> Ws {
    let what = "a connect accepted after DynamoDB came back";
    eventually_some(what, Duration::from_secs(30), async || {
        match attempt(addr, Duration::from_secs(20)).await.0 {
            Ok(ws) => Some(ws),
            Err(503) => None,
            Err(status) => panic!("unexpected refusal {status} after recovery"),
        }
    })
    .await
}

/// One connect to `ws://ADDR/dev`, bounded by `limit`: the client on a 101, else the refusal's
/// HTTP status; and how long the handshake took.
async fn attempt(addr: std::net::SocketAddr, limit: Duration) -> (Result<Ws, u16>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(
        limit,
        tokio_tungstenite::connect_async(format!("ws://{addr}/dev")),
    )
    .await
    .unwrap_or_else(|_| panic!("the handshake did not end within {limit:?}"));
    let outcome = match result {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("expected a 101 or an HTTP refusal, got {e}"),
    };
    (outcome, started.elapsed())
}

/// Written past the test harness's capture, so the measured figures show in the run's output.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

/// The whole outage cycle with the proxy in `mode`; a new connect must be refused with 503 within
/// `refused_within`.
async fn outage_cycle(test: &str, mode: Mode, refused_within: Duration) {
    let Some(s) = Setup::start(test, "").await else {
        return;
    };
    let addr = s.host.addr;
    let sdk = mgmt_client(addr);
    // Connected while DynamoDB is reachable: `a` stays throughout, `b` leaves during the outage.
    let mut a = connect(addr).await;
    let id_a = whoami(&mut a).await;
    let mut b = connect(addr).await;
    let id_b = whoami(&mut b).await;
    assert!(s.direct.has_record(&id_a).await && s.direct.has_record(&id_b).await);

    s.proxy.set(mode);
    let outage = Instant::now();
    // In the background: a black-holed request takes the client's whole operation timeout.
    let refused = tokio::spawn(attempt(addr, refused_within + Duration::from_secs(5)));

    // Connections made before the outage keep working: local PostToConnection and a two-way route.
    sdk.post_to_connection()
        .connection_id(&id_a)
        .data(Blob::new("during the outage"))
        .send()
        .await
        .expect("PostToConnection during the outage");
    assert_eq!(next_text(&mut a).await, "during the outage");
    assert_eq!(whoami(&mut a).await, id_a);

    // b leaves: $disconnect is not held up by the unreachable store, and the record stays.
    let closed = Instant::now();
    b.close(None).await.unwrap();
    s.handler.wait_route("$disconnect", Some(&id_b)).await;
    let disconnect_after = closed.elapsed();
    assert!(
        disconnect_after < Duration::from_secs(3),
        "$disconnect took {disconnect_after:?}"
    );
    assert!(
        s.direct.has_record(&id_b).await,
        "b's record cannot be deleted while DynamoDB is unreachable"
    );

    let (outcome, refused_after) = refused.await.unwrap();
    assert_eq!(
        outcome.err(),
        Some(503),
        "a connect during the outage is refused with 503"
    );
    assert!(
        refused_after < refused_within,
        "503 after {refused_after:?}, expected under {refused_within:?}"
    );
    // Still refused later in the outage (not a one-off).
    if mode == Mode::Refuse {
        let (outcome, _) = attempt(addr, refused_within).await;
        assert_eq!(outcome.err(), Some(503));
    }
    let outage_lasted = outage.elapsed();

    // DynamoDB comes back: new connects succeed again by themselves.
    s.proxy.set(Mode::Pass);
    let back = Instant::now();
    let mut c = connect_after_recovery(addr).await;
    let recovered_after = back.elapsed();
    let id_c = whoami(&mut c).await;
    assert!(s.direct.has_record(&id_c).await, "c's record was written");

    // b's record goes by the background retries: at most one backoff step (5 s) after recovery.
    s.direct
        .wait_record_gone(&id_b, Duration::from_secs(10))
        .await;
    let b_deleted_after = back.elapsed();
    assert!(s.direct.has_record(&id_a).await, "a's record is untouched");
    report(&format!(
        "{test}: outage of {outage_lasted:?}: 503 after {refused_after:?}, $disconnect after \
         {disconnect_after:?}; after recovery: connect in {recovered_after:?}, closed record \
         deleted in {b_deleted_after:?}"
    ));

    // Shutdown with DynamoDB healthy deletes the remaining records.
    let Setup {
        direct, mut host, ..
    } = s;
    host.trigger_shutdown();
    host.join().await.expect("clean shutdown");
    for id in [&id_a, &id_c] {
        direct.wait_record_gone(id, Duration::from_secs(5)).await;
    }
    direct.drop_tables().await;
}

#[tokio::test]
async fn refused_dynamodb_connects_503_existing_work_and_it_recovers() {
    outage_cycle(
        "refused_dynamodb_connects_503_existing_work_and_it_recovers",
        Mode::Refuse,
        Duration::from_secs(10),
    )
    .await;
}

/// A black hole costs a connect the client's whole operation timeout (6 s in
/// `store::dynamodb::client`), so the bound is looser than for a refused connection.
#[tokio::test]
async fn blackholed_dynamodb_connects_503_existing_work_and_it_recovers() {
    outage_cycle(
        "blackholed_dynamodb_connects_503_existing_work_and_it_recovers",
        Mode::Blackhole,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn shutdown_during_an_outage_ends_the_delete_retries_with_the_drain_timeout() {
    let test = "shutdown_during_an_outage_ends_the_delete_retries_with_the_drain_timeout";
    let Some(s) = Setup::start(test, "[server]\ndrain_timeout = \"1s\"\n").await else {
        return;
    };
    let mut a = connect(s.host.addr).await;
    let id_a = whoami(&mut a).await;
    s.proxy.set(Mode::Refuse);
    a.close(None).await.unwrap();
    s.handler.wait_route("$disconnect", Some(&id_a)).await;

    // The delete is being retried: new attempts keep reaching the proxy.
    let seen = s.proxy.accepted();
    eventually("delete retries reaching the proxy", WAIT, async || {
        s.proxy.accepted() >= seen + 2
    })
    .await;

    let Setup {
        direct,
        store,
        mut host,
        ..
    } = s;
    let shutdown = Instant::now();
    host.trigger_shutdown();
    host.join().await.expect("clean shutdown");
    // Once every task of the host has ended, the test holds the only reference to the store; a
    // retry loop that ignored the shutdown would keep it for its whole 2 min.
    while Arc::strong_count(&store) > 1 {
        assert!(
            shutdown.elapsed() < Duration::from_secs(5),
            "the host's tasks still hold the store {:?} after shutdown with a 1 s drain timeout",
            shutdown.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended_after = shutdown.elapsed();
    assert!(
        ended_after >= Duration::from_millis(900),
        "retries continue through the drain timeout, ended after {ended_after:?}"
    );
    assert!(
        direct.has_record(&id_a).await,
        "the record is left to its ttl when the host shuts down during the outage"
    );
    report(&format!(
        "{test}: delete retries ended {ended_after:?} after shutdown (drain timeout 1 s)"
    ));
    direct.drop_tables().await;
}

/// The record is written before `$connect` runs: while DynamoDB is unreachable a connect is
/// refused with 503 before any handler sees it, so no handler is left with a CONNECT that no
/// DISCONNECT follows; once DynamoDB is back, the handler sees the CONNECT of the next connect.
#[tokio::test]
async fn a_store_outage_refuses_connects_before_connect_runs() {
    let test = "a_store_outage_refuses_connects_before_connect_runs";
    let Some(s) = Setup::start(test, "[routes.\"$connect\"]\nintegration = \"h\"\n").await else {
        return;
    };
    let addr = s.host.addr;
    let connects = || {
        s.handler
            .events()
            .iter()
            .filter(|e| event_type(e) == "CONNECT")
            .count()
    };

    s.proxy.set(Mode::Refuse);
    let (outcome, _) = attempt(addr, Duration::from_secs(15)).await;
    assert_eq!(outcome.err(), Some(503), "a connect during the outage");
    assert_eq!(
        connects(),
        0,
        "the handler saw no CONNECT for the refused connect"
    );

    s.proxy.set(Mode::Pass);
    let mut ws = connect_after_recovery(addr).await;
    let id = whoami(&mut ws).await;
    let connect = s.handler.wait_route("$connect", Some(&id)).await;
    assert_eq!(event_type(&connect), "CONNECT");
    assert_eq!(
        connects(),
        1,
        "only the accepted connect reached the handler"
    );
    assert!(s.direct.has_record(&id).await, "the record was written");

    // A connect that `$connect` refuses has its record (written before `$connect`) deleted again.
    let refused = try_connect(addr, "/dev?status=403", &[], None).await;
    assert_eq!(refused_status(refused), 403);
    let rejected = s
        .handler
        .wait_for("CONNECT of the refused connect", |e| {
            event_type(e) == "CONNECT" && query_param(e, "status") == Some("403")
        })
        .await;
    s.direct
        .wait_record_gone(conn_id(&rejected), Duration::from_secs(5))
        .await;

    ws.close(None).await.unwrap();
    s.handler.wait_route("$disconnect", Some(&id)).await;
    s.direct.wait_record_gone(&id, Duration::from_secs(5)).await;
    s.finish().await;
}

/// The record write of a new connection lands, but its answer is lost, so the store client's
/// attempt times out and the SDK retries: the retry finds the record its first attempt wrote and
/// must accept it (the write is idempotent for its writer), not refuse the connection with 503.
#[tokio::test]
async fn a_retried_record_write_that_had_landed_accepts_the_connection() {
    let test = "a_retried_record_write_that_had_landed_accepts_the_connection";
    let Some(s) = Setup::start(test, "").await else {
        return;
    };
    s.proxy.set(Mode::HoldAnswers);
    let connecting = tokio::spawn(attempt(s.host.addr, Duration::from_secs(20)));
    // The first attempt (which landed) timed out and the retry reached DynamoDB: answer it.
    eventually(
        "the store client to retry its write",
        Duration::from_secs(10),
        async || s.proxy.held_requests() >= 2,
    )
    .await;
    s.proxy.set(Mode::Pass);
    let (outcome, took) = connecting.await.unwrap();
    let mut ws = outcome
        .unwrap_or_else(|status| panic!("the retried write refused the connection with {status}"));
    let id = whoami(&mut ws).await;
    assert!(s.direct.has_record(&id).await, "the record is in the table");
    assert_eq!(s.direct.records().await, 1, "one record, the connection's");
    report(&format!(
        "{test}: connected after {took:?} (first write attempt timed out)"
    ));

    ws.close(None).await.unwrap();
    s.direct.wait_record_gone(&id, Duration::from_secs(5)).await;
    s.finish().await;
}

/// Every attempt of the record write lands but none is answered in time, so the connect is refused
/// with 503: the record those attempts wrote is deleted, not left as an orphan until its ttl.
#[tokio::test]
async fn a_connect_refused_after_its_write_landed_leaves_no_record() {
    let test = "a_connect_refused_after_its_write_landed_leaves_no_record";
    let Some(s) = Setup::start(test, "").await else {
        return;
    };
    s.proxy.set(Mode::HoldAnswers);
    let (outcome, took) = attempt(s.host.addr, Duration::from_secs(20)).await;
    assert_eq!(outcome.err(), Some(503), "every write attempt timed out");
    assert!(s.proxy.held_requests() >= 1, "the write reached DynamoDB");
    s.proxy.set(Mode::Pass);
    let gone_after = eventually(
        "the refused connection's record to leave the table after DynamoDB answers again",
        Duration::from_secs(10),
        async || s.direct.records().await == 0,
    )
    .await;
    report(&format!(
        "{test}: 503 after {took:?}; record gone {gone_after:?} after DynamoDB answered again"
    ));
    s.finish().await;
}
