//! Three `connection-host` processes (the binary of the workspace build) on one DynamoDB store
//! (moto, `DYNAMODB_TEST_ENDPOINT`) as one cluster, with real clients: posts and GetConnection
//! through any host, a broadcast across hosts, a host killed with SIGKILL (its clients drop, its
//! connections answer 410 and are reaped from the table, the others carry on), and that host
//! restarted with the same `host_id` (its old connections stay gone, new ones are reachable).

use aws_sdk_apigatewaymanagement as mgmt;
use aws_sdk_dynamodb as ddb;
use futures_util::{SinkExt, StreamExt};
use mgmt::primitives::Blob;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use test_kit::{
    HostProcess, TempDir, WAIT, WHOAMI, Ws, dynamodb_test_endpoint, eventually,
    free_loopback_addrs, host_command, next_text, within_for,
};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "e2e-cluster-secret-0123456789";
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
const HOST_TIMEOUT: Duration = Duration::from_secs(2);
/// The environment of every host process: moto, dummy credentials, the cluster secret.
fn host_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("CONNECTION_HOST_CLUSTER__SECRET", SECRET.into()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ),
    ]
}

/// One host's configuration and the process running it (none while killed).
struct Host {
    id: &'static str,
    public: SocketAddr,
    management: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    process: Option<HostProcess>,
}

impl Host {
    /// Writes `{dir}/{id}.toml`.
    fn configure(
        dir: &TempDir,
        id: &'static str,
        public: SocketAddr,
        management: SocketAddr,
        tables: (&str, &str, &str),
    ) -> Self {
        let config = dir.path().join(format!("{id}.toml"));
        let toml = format!(
            r#"[server]
listen = "{public}"
management_listen = "{management}"
[store]
kind = "dynamodb"
connections_table = "{}"
groups_table = "{}"
sessions_table = "{}"
[cluster]
host_id = "{id}"
advertise_url = "http://{management}"
heartbeat_interval = "{}ms"
host_timeout = "{}ms"
[extensions]
groups = true
{WHOAMI}"#,
            tables.0,
            tables.1,
            tables.2,
            HEARTBEAT_INTERVAL.as_millis(),
            HOST_TIMEOUT.as_millis(),
        );
        std::fs::write(&config, toml).expect("write the host configuration");
        Self {
            id,
            public,
            management,
            log: dir.path().join(format!("{id}.log")),
            config,
            process: None,
        }
    }

    /// Starts the process (not waiting for it).
    fn spawn(&mut self, env: &[(&str, String)]) {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.process = Some(HostProcess::spawn(self.id, &self.config, &self.log, &env));
    }

    async fn wait_healthy(&mut self) {
        let url = self.url("/health");
        self.process
            .as_mut()
            .expect("started")
            .wait_healthy(&url, WAIT)
            .await;
    }

    /// SIGKILL, and the process reaped.
    fn kill(&mut self) {
        let mut process = self.process.take().expect("running");
        let status = process.kill().expect("the host was running");
        assert!(!status.success(), "{}: killed, yet {status}", self.id);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.management)
    }

    /// The official SDK client for `http://MANAGEMENT/dev`, retries off so each call is one
    /// request, and a bound on each call.
    fn sdk(&self) -> mgmt::Client {
        let config = mgmt::Config::builder()
            .behavior_version(mgmt::config::BehaviorVersion::latest())
            .region(mgmt::config::Region::new("us-east-1"))
            .endpoint_url(self.url("/dev"))
            .credentials_provider(mgmt::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .retry_config(mgmt::config::retry::RetryConfig::disabled())
            .timeout_config(
                mgmt::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(WAIT)
                    .build(),
            )
            .build();
        mgmt::Client::from_conf(config)
    }

    /// A client on this host, and its connection ID.
    async fn client(&self) -> (Ws, String) {
        let (mut ws, _) = within_for(
            &format!("WebSocket handshake with {}", self.id),
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{}/dev", self.public)),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", self.id));
        within_for(
            "send whoami",
            WAIT,
            ws.send(Message::text(r#"{"action":"whoami"}"#)),
        )
        .await
        .expect("send whoami");
        let v: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        let id = v["connectionId"]
            .as_str()
            .expect("whoami answers")
            .to_string();
        (ws, id)
    }
}

/// PostToConnection through `via`; `Ok` or the error code (`GoneException`, …).
async fn post(via: &Host, id: &str, data: &str) -> Result<(), String> {
    via.sdk()
        .post_to_connection()
        .connection_id(id)
        .data(Blob::new(data))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| match e.as_service_error() {
            Some(service) => service.meta().code().unwrap_or("(no code)").to_string(),
            None => panic!(
                "PostToConnection through {}: not a service error: {e:?}",
                via.id
            ),
        })
}

/// GetConnection through `via`; the error code on failure.
async fn get_connection(
    via: &Host,
    id: &str,
) -> Result<mgmt::operation::get_connection::GetConnectionOutput, String> {
    via.sdk()
        .get_connection()
        .connection_id(id)
        .send()
        .await
        .map_err(|e| match e.as_service_error() {
            Some(service) => service.meta().code().unwrap_or("(no code)").to_string(),
            None => panic!(
                "GetConnection through {}: not a service error: {e:?}",
                via.id
            ),
        })
}

/// `PUT /dev/@connections/{id}/groups/{group}` through `via` (raw HTTP).
async fn join(http: &reqwest::Client, via: &Host, id: &str, group: &str) {
    let r = http
        .put(via.url(&format!(
            "/dev/@connections/{}/groups/{group}",
            id.replace('=', "%3D")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "join {id} to {group} through {}", via.id);
}

/// `POST /dev/@groups/{group}` through `via` (raw HTTP); `(delivered, failed)`.
async fn broadcast(http: &reqwest::Client, via: &Host, group: &str, data: &str) -> (u64, u64) {
    let r = http
        .post(via.url(&format!("/dev/@groups/{group}")))
        .body(data.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "broadcast through {}", via.id);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    match (v["delivered"].as_u64(), v["failed"].as_u64()) {
        (Some(d), Some(f)) => (d, f),
        _ => panic!("broadcast answer without counts: {v}"),
    }
}

/// Reads the tables directly, as an operator would.
struct Table {
    client: ddb::Client,
    connections: String,
    groups: String,
    sessions: String,
}

impl Table {
    fn new(endpoint: &str, connections: &str, groups: &str, sessions: &str) -> Self {
        let config = ddb::Config::builder()
            .behavior_version(ddb::config::BehaviorVersion::latest())
            .region(ddb::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(ddb::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .timeout_config(
                ddb::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(WAIT)
                    .build(),
            )
            .build();
        Self {
            client: ddb::Client::from_conf(config),
            connections: connections.to_string(),
            groups: groups.to_string(),
            sessions: sessions.to_string(),
        }
    }

    /// A strongly consistent GetItem.
    async fn get(
        &self,
        table: &str,
        key: &[(&str, &str)],
    ) -> Option<std::collections::HashMap<String, ddb::types::AttributeValue>> {
        let mut request = self
            .client
            .get_item()
            .table_name(table)
            .consistent_read(true);
        for (k, v) in key {
            request = request.key(*k, ddb::types::AttributeValue::S(v.to_string()));
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetItem on {table}: {e:?}"))
            .item
    }

    /// A connection record (or a liveness record, `@host#{id}`) as `attribute → string value`.
    async fn connection(&self, id: &str) -> Option<std::collections::HashMap<String, String>> {
        let item = self.get(&self.connections, &[("connectionId", id)]).await?;
        Some(
            item.into_iter()
                .filter_map(|(k, v)| v.as_s().ok().map(|s| (k, s.clone())))
                .collect(),
        )
    }

    /// Whether `id` is a member of `group`, read through the `byConnection` index: the
    /// membership's partition is one of the group's shards (`{group}#{k}`, STORE.md), whichever
    /// the host picked.
    async fn member(&self, group: &str, id: &str) -> bool {
        let shard_prefix = format!("{group}#");
        self.client
            .query()
            .table_name(&self.groups)
            .index_name("byConnection")
            .key_condition_expression("connectionId = :id AND begins_with(#g, :g)")
            .expression_attribute_names("#g", "group")
            .expression_attribute_values(":id", ddb::types::AttributeValue::S(id.to_string()))
            .expression_attribute_values(":g", ddb::types::AttributeValue::S(shard_prefix))
            .send()
            .await
            .unwrap_or_else(|e| panic!("Query byConnection on {}: {e:?}", self.groups))
            .count()
            > 0
    }

    async fn delete(&self) {
        for table in [&self.connections, &self.groups, &self.sessions] {
            let _ = self.client.delete_table().table_name(table).send().await;
        }
    }
}

#[tokio::test]
async fn three_host_processes_survive_a_sigkill_and_a_restart() {
    let test = "three_host_processes_survive_a_sigkill_and_a_restart";
    let Some(endpoint) = dynamodb_test_endpoint(test) else {
        return;
    };
    let started = Instant::now();
    let dir = TempDir::new("e2e-cluster");
    let env = host_env(&endpoint);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Unique tables, created by the binary itself.
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (connections, groups, sessions) = (
        format!("e2e-connections-{suffix}"),
        format!("e2e-groups-{suffix}"),
        format!("e2e-sessions-{suffix}"),
    );
    let store_config = dir.path().join("store.toml");
    std::fs::write(
        &store_config,
        format!(
            "[store]\nkind = \"dynamodb\"\nconnections_table = \"{connections}\"\ngroups_table = \"{groups}\"\nsessions_table = \"{sessions}\"\n"
        ),
    )
    .unwrap();
    let init = tokio::task::spawn_blocking({
        let mut command = host_command(&store_config, &env_refs);
        command.args(["store", "init"]);
        move || command.output()
    });
    let init = within_for("store init", Duration::from_secs(20), init)
        .await
        .unwrap()
        .expect("run store init");
    let init_out = String::from_utf8_lossy(&init.stdout);
    assert!(
        init.status.success(),
        "store init failed ({}):\n{init_out}\n{}",
        init.status,
        String::from_utf8_lossy(&init.stderr)
    );
    for table in [&connections, &groups, &sessions] {
        assert!(
            init_out.contains(&format!("created table {table}")),
            "store init did not create {table}:\n{init_out}"
        );
    }
    let table = Table::new(&endpoint, &connections, &groups, &sessions);

    // Three hosts, each with its own configuration file and ports.
    let addrs = free_loopback_addrs(6);
    let mut hosts = ["host-a", "host-b", "host-c"]
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            Host::configure(
                &dir,
                id,
                addrs[2 * i],
                addrs[2 * i + 1],
                (&connections, &groups, &sessions),
            )
        })
        .collect::<Vec<_>>();
    for host in &mut hosts {
        host.spawn(&env);
    }
    for host in &mut hosts {
        host.wait_healthy().await;
    }
    let [a, b, c] = &mut hosts[..] else {
        unreachable!()
    };
    let (a, b): (&Host, &Host) = (a, b);
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    for host in [a, b, &*c] {
        let live = table.connection(&format!("@host#{}", host.id)).await;
        let live = live.unwrap_or_else(|| panic!("{}: no liveness record", host.id));
        assert_eq!(live["endpoint"], format!("http://{}", host.management));
    }

    // 1. A client on A, reached through B (PostToConnection) and C (GetConnection).
    let (mut ws_a, id_a) = a.client().await;
    let record = table.connection(&id_a).await.expect("A's record");
    assert_eq!(record["ownerHost"], "host-a");
    assert_eq!(record["ownerEndpoint"], format!("http://{}", a.management));
    post(b, &id_a, "via b")
        .await
        .expect("post to A's client through B");
    assert_eq!(next_text(&mut ws_a).await, "via b");
    let info = get_connection(c, &id_a)
        .await
        .expect("GetConnection of A's client through C");
    assert_eq!(
        info.identity().and_then(|i| i.source_ip()),
        Some("127.0.0.1")
    );
    assert!(info.connected_at().is_some() && info.last_active_at().is_some());

    // 2. One group member on each host; a broadcast through A reaches each exactly once: a marker
    // posted behind it must be the next message (each connection's queue is FIFO).
    let (mut ws_b, id_b) = b.client().await;
    let (mut ws_c, id_c) = c.client().await;
    let c_record = table.connection(&id_c).await.expect("C's record");
    assert_eq!(c_record["ownerHost"], "host-c");
    // Each joined through a host that does not hold it.
    join(&http, b, &id_a, "room").await;
    join(&http, c, &id_b, "room").await;
    join(&http, a, &id_c, "room").await;
    assert_eq!(broadcast(&http, a, "room", "to the room").await, (3, 0));
    for id in [&id_a, &id_b, &id_c] {
        post(b, id, "marker").await.expect("marker");
    }
    for (ws, id) in [(&mut ws_a, &id_a), (&mut ws_b, &id_b), (&mut ws_c, &id_c)] {
        assert_eq!(next_text(ws).await, "to the room", "member {id}");
        assert_eq!(next_text(ws).await, "marker", "member {id}");
    }
    assert!(table.member("room", &id_c).await);
    assert!(table.connection("@host#host-c").await.is_some());

    // 3. SIGKILL C.
    c.kill();
    let killed = Instant::now();
    // Its client sees the socket drop: an error or the end of the stream, never a Close frame.
    let ended = within_for("the killed host's socket to drop", WAIT, async {
        loop {
            match ws_c.next().await {
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
    // Posts through A to C's connection answer GoneException within host_timeout (plus a margin).
    let took = eventually(
        "GoneException for the killed host's connection",
        HOST_TIMEOUT + Duration::from_secs(3),
        || async { post(a, &id_c, "to the dead").await.err().as_deref() == Some("GoneException") },
    )
    .await;
    eprintln!("410 through host-a {took:?} after the kill");
    assert_eq!(
        post(b, &id_c, "to the dead").await.err().as_deref(),
        Some("GoneException")
    );
    // The survivors reap C: its record, its membership and its liveness record leave the tables.
    let reap_bound = HOST_TIMEOUT + 2 * HEARTBEAT_INTERVAL + Duration::from_secs(5);
    eventually("the killed host reaped", reap_bound, || async {
        table.connection(&id_c).await.is_none()
            && !table.member("room", &id_c).await
            && table.connection("@host#host-c").await.is_none()
    })
    .await;
    let reaped = killed.elapsed();
    eprintln!("host-c reaped {reaped:?} after the kill");
    // Its last heartbeat came at most one interval before the kill: not dead before host_timeout
    // after that.
    assert!(
        reaped >= HOST_TIMEOUT - HEARTBEAT_INTERVAL,
        "reaped before host_timeout: {reaped:?}"
    );
    // A and B and their clients carry on.
    post(b, &id_a, "still here a").await.expect("A reachable");
    assert_eq!(next_text(&mut ws_a).await, "still here a");
    post(a, &id_b, "still here b").await.expect("B reachable");
    assert_eq!(next_text(&mut ws_b).await, "still here b");
    assert_eq!(broadcast(&http, b, "room", "survivors").await, (2, 0));
    assert_eq!(next_text(&mut ws_a).await, "survivors");
    assert_eq!(next_text(&mut ws_b).await, "survivors");
    for id in [&id_a, &id_b] {
        assert!(table.connection(id).await.is_some(), "{id} was reaped");
    }

    // 4. C restarted with the same host_id (same configuration and ports).
    c.spawn(&env);
    c.wait_healthy().await;
    for via in [a, b, &*c] {
        assert_eq!(
            post(via, &id_c, "again").await.err().as_deref(),
            Some("GoneException"),
            "old connection through {}",
            via.id
        );
    }
    assert_eq!(
        get_connection(a, &id_c).await.err().as_deref(),
        Some("GoneException")
    );
    let (mut ws_c2, id_c2) = c.client().await;
    assert_ne!(id_c2, id_c);
    let record = table.connection(&id_c2).await.expect("the new record");
    assert_eq!(record["ownerHost"], "host-c");
    assert_ne!(
        record["ownerIncarnation"], c_record["ownerIncarnation"],
        "a restart is a new incarnation"
    );
    post(a, &id_c2, "to the new run")
        .await
        .expect("the restarted host's client through A");
    assert_eq!(next_text(&mut ws_c2).await, "to the new run");
    // The restarted host fans out to the others too.
    assert_eq!(broadcast(&http, c, "room", "from the new c").await, (2, 0));
    assert_eq!(next_text(&mut ws_a).await, "from the new c");
    assert_eq!(next_text(&mut ws_b).await, "from the new c");

    for host in &mut hosts {
        if let Some(mut process) = host.process.take() {
            // Still running: nothing crashed along the way.
            assert_eq!(process.try_exit_status(), None, "{} exited", host.id);
            process.kill();
        }
    }
    table.delete().await;
    let total = started.elapsed();
    eprintln!("{test}: {total:?}");
    assert!(total < Duration::from_secs(60), "took {total:?}");
}
