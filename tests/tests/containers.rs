//! The host's container image (`connection-host/Dockerfile`) as a cluster: three containers run
//! with podman on one DynamoDB store (moto, `DYNAMODB_TEST_ENDPOINT`), each on an address of its
//! own, with clients behind a round-robin load balancer (the test kit's proxy) that reconnect as
//! real ones do. It proves:
//!
//! 1. cross-container delivery: a client of each container receives a PostToConnection (official
//!    SDK) made through the next container, and GetConnection answers through the third;
//! 2. `podman kill -s KILL` of one container: its clients reconnect to the others, its
//!    connection records and its liveness record are reaped, posts to every client arrive;
//! 3. a rolling restart of all three (each taken out of the balancer, stopped with SIGTERM, so
//!    it drains and exits 0, started again and healthy before the next): every client ends
//!    connected and receives a final post.
//!
//! `tests/containers.sh` builds the image and runs this with `CONTAINERS_TEST_IMAGE` set (and
//! podman's configuration in `CONTAINERS_CONF`); without it the test says so and passes.
//!
//! The containers share the machine's network (`--network host`), each bound to its own loopback
//! address (`127.X.0.1`, `.2`, `.3`): moto, the balancer and the test stay on loopback, and each
//! host advertises an address the others reach, as tasks with their own IPs do behind a load
//! balancer. A bridge network would need moto and the balancer off loopback.

use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use connection_host_client::{Client, Event, Message, Options, State};
use futures_util::SinkExt;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use test_kit::chaos::{ChaosConfig, ChaosProxy};
use test_kit::{
    WAIT, WHOAMI, dynamodb_client, eventually, mgmt_client, next_text, unique_table, within_for,
};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite;

const SECRET: &str = "containers-cluster-secret-0123456789";
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
const HOST_TIMEOUT: Duration = Duration::from_secs(2);
/// Clients behind the balancer: three on each container.
const CLIENTS: usize = 9;
/// A container's start, a client's reconnect, a reap: bounds for a loaded 2-core machine.
const SLOW: Duration = Duration::from_secs(30);

/// Runs `podman ARGS` (bounded), returning its standard output; panics with its error output
/// when it fails.
async fn podman(args: &[&str]) -> String {
    let mut command = Command::new("podman");
    command.args(args).stdin(Stdio::null());
    let what = format!("podman {}", args.join(" "));
    let output = within_for(
        &what,
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The tables of one run.
struct Tables {
    connections: String,
    groups: String,
    sessions: String,
}

impl Tables {
    fn store_toml(&self) -> String {
        format!(
            "[store]\nkind = \"dynamodb\"\nconnections_table = \"{}\"\ngroups_table = \"{}\"\nsessions_table = \"{}\"\n",
            self.connections, self.groups, self.sessions
        )
    }
}

/// One host container: its name, the host ID inside it and its two listeners.
struct Container {
    name: String,
    id: &'static str,
    public: SocketAddr,
    management: SocketAddr,
}

/// A free port on `ip` (the socket closed again before the container binds it).
fn free_addr(ip: Ipv4Addr) -> SocketAddr {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"))
}

impl Container {
    /// The configuration the container gets through `ENTRYPOINT_CONFIG_TOML`.
    fn config(&self, tables: &Tables) -> String {
        format!(
            r#"[server]
listen = "{public}"
management_listen = "{management}"
drain_timeout = "3s"
{store}[cluster]
host_id = "{id}"
advertise_url = "http://{management}"
heartbeat_interval = "{heartbeat}ms"
host_timeout = "{timeout}ms"
{WHOAMI}"#,
            public = self.public,
            management = self.management,
            store = tables.store_toml(),
            id = self.id,
            heartbeat = HEARTBEAT_INTERVAL.as_millis(),
            timeout = HOST_TIMEOUT.as_millis(),
        )
    }

    /// `podman run -d`: the host on the machine's network, with the configuration and moto.
    async fn run(&self, image: &str, endpoint: &str, tables: &Tables, label: &str) {
        let config = format!("ENTRYPOINT_CONFIG_TOML={}", self.config(tables));
        let mut args = vec![
            "run",
            "-d",
            "--init",
            "--network",
            "host",
            "--name",
            &self.name,
            "--label",
            label,
            "-e",
            &config,
        ];
        let env = aws_env(endpoint);
        for e in &env {
            args.extend(["-e", e.as_str()]);
        }
        args.push(image);
        podman(&args).await;
    }

    async fn wait_healthy(&self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let url = format!("http://{}/health", self.management);
        eventually(
            &format!("{}: {url} to answer 200", self.name),
            SLOW,
            async || matches!(http.get(&url).send().await, Ok(r) if r.status() == 200),
        )
        .await;
    }

    /// The container's exit code, once it has stopped.
    async fn exit_code(&self) -> i64 {
        let code = podman(&["inspect", "-f", "{{.State.ExitCode}}", &self.name]).await;
        code.parse()
            .unwrap_or_else(|_| panic!("{}: exit code {code:?}", self.name))
    }

    /// PostToConnection through this container with the official SDK; `Ok` or the error code.
    async fn post(&self, id: &str, data: &str) -> Result<(), String> {
        within_for(
            "PostToConnection",
            WAIT,
            mgmt_client(self.management)
                .post_to_connection()
                .connection_id(id)
                .data(Blob::new(data))
                .send(),
        )
        .await
        .map(|_| ())
        .map_err(|e| match e.as_service_error() {
            Some(s) => s.meta().code().unwrap_or("(no code)").to_string(),
            None => panic!("PostToConnection through {}: {e:?}", self.id),
        })
    }
}

/// The environment of the host (and of `store init`) in a container: moto and dummy credentials.
fn aws_env(endpoint: &str) -> Vec<String> {
    vec![
        format!("AWS_ENDPOINT_URL={endpoint}"),
        "AWS_ACCESS_KEY_ID=test".into(),
        "AWS_SECRET_ACCESS_KEY=test".into(),
        "AWS_REGION=us-east-1".into(),
        "AWS_EC2_METADATA_DISABLED=true".into(),
        format!("CONNECTION_HOST_CLUSTER__SECRET={SECRET}"),
        format!(
            "RUST_LOG={}",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())
        ),
    ]
}

/// Removes every container of the run when the test ends, and prints their logs when it failed.
struct Cleanup {
    names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.names {
            if std::thread::panicking() {
                let logs = Command::new("podman").args(["logs", name]).output();
                if let Ok(logs) = logs {
                    eprintln!(
                        "----- podman logs {name} -----\n{}{}",
                        String::from_utf8_lossy(&logs.stdout),
                        String::from_utf8_lossy(&logs.stderr)
                    );
                }
            }
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A reconnecting client (connection-host-client, plain mode) behind the balancer. On every
/// connection it asks `whoami`; `id` holds the current connection's ID (`None` while it
/// reconnects), `messages` everything else it receives.
struct ReconnectingClient {
    id: watch::Receiver<Option<String>>,
    state: watch::Receiver<State>,
    messages: mpsc::UnboundedReceiver<String>,
}

impl ReconnectingClient {
    fn connect(url: &str) -> Self {
        let options = Options::new(url)
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
            .backoff_jitter(Duration::from_millis(200));
        let mut client = Client::connect(options);
        let sender = client.sender();
        let state = sender.watch_state();
        let (id_tx, id) = watch::channel(None);
        let (message_tx, messages) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = client.recv().await {
                match event {
                    Event::Connected { .. } => {
                        let _ = sender.send(r#"{"action":"whoami"}"#).await;
                    }
                    Event::StateChanged(State::Reconnecting) => {
                        id_tx.send_replace(None);
                    }
                    Event::Message(Message::Text(text)) => {
                        match serde_json::from_str::<Value>(&text)
                            .ok()
                            .and_then(|v| v["connectionId"].as_str().map(str::to_string))
                        {
                            Some(connection) => {
                                id_tx.send_replace(Some(connection));
                            }
                            None => {
                                let _ = message_tx.send(text);
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        Self {
            id,
            state,
            messages,
        }
    }

    fn current(&self) -> Option<String> {
        self.id.borrow().clone()
    }

    /// The next message (not a `whoami` answer), within [`WAIT`].
    async fn next(&mut self) -> String {
        within_for(
            "a message to a reconnecting client",
            WAIT,
            self.messages.recv(),
        )
        .await
        .expect("the client's task ended")
    }
}

/// The host holding each client's current connection (its record's `ownerHost`), once every
/// client is connected and none holds an ID in `stale`.
async fn owners(
    db: &aws_sdk_dynamodb::Client,
    tables: &Tables,
    clients: &[ReconnectingClient],
    stale: &[String],
) -> Vec<(String, String)> {
    let ids = test_kit::eventually_some(
        "every client connected with a fresh connection",
        SLOW,
        async || {
            let ids: Option<Vec<String>> = clients.iter().map(|c| c.current()).collect();
            ids.filter(|ids| ids.iter().all(|id| !stale.contains(id)))
        },
    )
    .await;
    let mut owners = Vec::new();
    for id in ids {
        let item = db
            .get_item()
            .table_name(&tables.connections)
            .key("connectionId", AttributeValue::S(id.clone()))
            .consistent_read(true)
            .send()
            .await
            .expect("GetItem")
            .item
            .unwrap_or_else(|| panic!("no record for the connected client {id}"));
        let owner = item["ownerHost"].as_s().expect("ownerHost").clone();
        owners.push((id, owner));
    }
    owners
}

/// Whether the connections table holds `key`.
async fn has_record(db: &aws_sdk_dynamodb::Client, tables: &Tables, key: &str) -> bool {
    db.get_item()
        .table_name(&tables.connections)
        .key("connectionId", AttributeValue::S(key.to_string()))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item
        .is_some()
}

/// Posts `data` to every client, each through a different container in turn, and checks that
/// each receives it.
async fn post_to_all(
    clients: &mut [ReconnectingClient],
    owners: &[(String, String)],
    via: &[&Container],
    data: &str,
) {
    for (i, (id, _)) in owners.iter().enumerate() {
        let host = via[i % via.len()];
        host.post(id, data)
            .await
            .unwrap_or_else(|e| panic!("post to {id} through {}: {e}", host.id));
    }
    for (client, (id, owner)) in clients.iter_mut().zip(owners) {
        assert_eq!(client.next().await, data, "client {id} on {owner}");
    }
}

#[tokio::test]
async fn three_host_containers_deliver_across_survive_a_kill_and_a_rolling_restart() {
    let test = "three_host_containers_deliver_across_survive_a_kill_and_a_rolling_restart";
    let Ok(image) = std::env::var("CONTAINERS_TEST_IMAGE") else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: CONTAINERS_TEST_IMAGE is not set (tests/containers.sh builds the image and sets it)"
        );
        return;
    };
    let endpoint = std::env::var("DYNAMODB_TEST_ENDPOINT")
        .expect("DYNAMODB_TEST_ENDPOINT (tests/containers.sh starts moto)");
    let started = Instant::now();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let label = format!("connection-host-test={run}");
    let tables = Tables {
        connections: unique_table("containers-connections"),
        groups: unique_table("containers-groups"),
        sessions: unique_table("containers-sessions"),
    };

    // The tables, made by the image's own `store init`.
    let store = format!("ENTRYPOINT_CONFIG_TOML={}", tables.store_toml());
    let mut args = vec!["run", "--rm", "--network", "host", "-e", &store];
    let env = aws_env(&endpoint);
    for e in &env {
        args.extend(["-e", e.as_str()]);
    }
    args.extend([image.as_str(), "store", "init"]);
    let init = podman(&args).await;
    for table in [&tables.connections, &tables.groups, &tables.sessions] {
        assert!(
            init.contains(&format!("created table {table}")),
            "store init in a container did not create {table}:\n{init}"
        );
    }

    // Three containers, each on its own loopback address.
    let net = 100 + rand_octet() % 100;
    let hosts: Vec<Container> = ["host-a", "host-b", "host-c"]
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let ip = Ipv4Addr::new(127, net, 0, i as u8 + 1);
            Container {
                name: format!("ch-test-{run}-{id}"),
                id,
                public: free_addr(ip),
                management: free_addr(ip),
            }
        })
        .collect();
    let _cleanup = Cleanup {
        names: hosts.iter().map(|h| h.name.clone()).collect(),
    };
    for host in &hosts {
        host.run(&image, &endpoint, &tables, &label).await;
    }
    for host in &hosts {
        host.wait_healthy().await;
    }
    let db = dynamodb_client(&endpoint);
    eprintln!(
        "three containers healthy {:?} after the start",
        started.elapsed()
    );

    // 1. Cross-container delivery: a client on each container, posted to through the next one;
    // GetConnection through the third sees it.
    for (i, host) in hosts.iter().enumerate() {
        let (next, third) = (&hosts[(i + 1) % 3], &hosts[(i + 2) % 3]);
        let (mut ws, _) = within_for(
            "WebSocket handshake",
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{}/dev", host.public)),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", host.id));
        ws.send(tungstenite::Message::text(r#"{"action":"whoami"}"#))
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        let id = v["connectionId"]
            .as_str()
            .expect("whoami answers")
            .to_string();
        let data = format!("to {} through {}", host.id, next.id);
        next.post(&id, &data).await.expect("cross-container post");
        assert_eq!(next_text(&mut ws).await, data);
        let info = mgmt_client(third.management)
            .get_connection()
            .connection_id(&id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetConnection through {}: {e:?}", third.id));
        assert!(
            info.connected_at().is_some(),
            "GetConnection through {}",
            third.id
        );
    }

    // Reconnecting clients behind a round-robin balancer: three on each container.
    let mut balancer = ChaosConfig::to(hosts.iter().map(|h| h.public));
    balancer.lifetime = Duration::from_secs(300);
    let balancer = ChaosProxy::start(balancer).await.expect("the balancer");
    let url = format!("ws://{}/dev", balancer.addr());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = ReconnectingClient::connect(&url);
        // One at a time, so that round-robin spreads them evenly.
        test_kit::eventually("the client's whoami", SLOW, async || {
            client.current().is_some()
        })
        .await;
        clients.push(client);
    }
    let before = owners(&db, &tables, &clients, &[]).await;
    for host in &hosts {
        let n = before.iter().filter(|(_, o)| o == host.id).count();
        assert_eq!(n, CLIENTS / 3, "clients on {}: {before:?}", host.id);
    }
    post_to_all(
        &mut clients,
        &before,
        &[&hosts[0], &hosts[1], &hosts[2]],
        "all up",
    )
    .await;

    // 2. SIGKILL of host-c: out of the balancer, its clients reconnect to a and b.
    let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
    podman(&["kill", "-s", "KILL", &c.name]).await;
    let killed = Instant::now();
    balancer
        .set_upstreams(vec![a.public, b.public])
        .expect("balancer upstreams");
    let on_c: Vec<String> = before
        .iter()
        .filter(|(_, o)| o == c.id)
        .map(|(id, _)| id.clone())
        .collect();
    let after_kill = owners(&db, &tables, &clients, &on_c).await;
    eprintln!(
        "host-c's {} clients reconnected {:?} after the kill",
        on_c.len(),
        killed.elapsed()
    );
    for ((old, old_owner), (new, owner)) in before.iter().zip(&after_kill) {
        assert_ne!(owner, c.id, "{new} on the killed host");
        if old_owner != c.id {
            assert_eq!(old, new, "a client of {old_owner} lost its connection");
        }
    }
    // Its records, and its liveness record, are reaped by the survivors.
    eventually("the killed container's records reaped", SLOW, async || {
        for id in on_c.iter().map(String::as_str).chain(["@host#host-c"]) {
            if has_record(&db, &tables, id).await {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("host-c reaped {:?} after the kill", killed.elapsed());
    for id in &on_c {
        assert_eq!(
            a.post(id, "to the dead").await.err().as_deref(),
            Some("GoneException")
        );
    }
    post_to_all(&mut clients, &after_kill, &[a, b], "after the kill").await;
    assert_eq!(c.exit_code().await, 137, "SIGKILL");

    // host-c back (the same container, so the same configuration), into the balancer.
    podman(&["start", &c.name]).await;
    c.wait_healthy().await;
    balancer
        .set_upstreams(hosts.iter().map(|h| h.public).collect())
        .expect("balancer upstreams");

    // 3. Rolling restart: each container out of the balancer, stopped (SIGTERM: drain, exit 0),
    // started, healthy, back in; its clients reconnect to the others meanwhile.
    let mut current = after_kill;
    let rolling = Instant::now();
    for (i, host) in hosts.iter().enumerate() {
        let others: Vec<&Container> = hosts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, h)| h)
            .collect();
        balancer
            .set_upstreams(others.iter().map(|h| h.public).collect())
            .expect("balancer upstreams");
        let drained: Vec<String> = current
            .iter()
            .filter(|(_, o)| o == host.id)
            .map(|(id, _)| id.clone())
            .collect();
        podman(&["stop", "-t", "20", &host.name]).await;
        assert_eq!(host.exit_code().await, 0, "{}: a graceful stop", host.id);
        // A drained host removes its own records: no reaping needed.
        for id in drained
            .iter()
            .map(String::as_str)
            .chain([&*format!("@host#{}", host.id)])
        {
            assert!(
                !has_record(&db, &tables, id).await,
                "{id} left behind by {}",
                host.id
            );
        }
        current = owners(&db, &tables, &clients, &drained).await;
        assert!(current.iter().all(|(_, o)| o != host.id));
        podman(&["start", &host.name]).await;
        host.wait_healthy().await;
        balancer
            .set_upstreams(hosts.iter().map(|h| h.public).collect())
            .expect("balancer upstreams");
        eprintln!(
            "{} restarted, its {} clients moved, {:?} into the rolling restart",
            host.id,
            drained.len(),
            rolling.elapsed()
        );
    }
    // No client lost: all connected, each receives a final post through each container in turn.
    for client in &clients {
        assert_eq!(*client.state.borrow(), State::Connected);
    }
    post_to_all(&mut clients, &current, &[a, b, c], "final").await;

    for table in [&tables.connections, &tables.groups, &tables.sessions] {
        let _ = db.delete_table().table_name(table).send().await;
    }
    drop(balancer);
    let total = started.elapsed();
    eprintln!("{test}: {total:?}");
    assert!(total < Duration::from_secs(240), "took {total:?}");
}

/// A random byte, so that concurrent runs pick different loopback networks.
fn rand_octet() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}
