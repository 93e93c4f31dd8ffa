//! The `connection-host` binary as a user runs it: `config default`, `config check` on bad files
//! and on every example configuration in the repository, `CONNECTION_HOST_CONFIG`, the "Without
//! handlers" walk-through of CONFIGURATION.md, and a graceful stop on SIGINT. Each host runs as a
//! child process on a loopback port the system picks.

mod common;

use common::*;
use futures_util::StreamExt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_connection-host");

/// The workspace root: example configurations name their paths relative to it.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The binary, run from the workspace root, without this environment's host settings.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(root());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CONNECTION_HOST_") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_BACKTRACE");
    command
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = command(args);
    command.envs(env.iter().copied());
    command.output().expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// A file under the system's temporary directory, unique to this test process, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("connection-host-cli-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn config_default_prints_the_default_configuration() {
    let output = run(&["config", "default"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let parsed = connection_host::Config::from_toml(&text).expect("the printed file loads");
    assert_eq!(parsed, connection_host::Config::default());
    // Commented, as the help says.
    assert!(text.lines().filter(|l| l.starts_with('#')).count() > 20);
}

#[test]
fn config_check_names_the_bad_field() {
    for (name, contents, expected) in [
        (
            "bad-duration.toml",
            "[limits]\nidle_timeout = \"forever\"\n",
            &["limits.idle_timeout", "forever"][..],
        ),
        (
            "unknown-field.toml",
            "[limits]\nidle_timout = \"5m\"\n",
            &["limits.idle_timout", "unknown field"][..],
        ),
        (
            "unknown-section.toml",
            "[limitz]\nidle_timeout = \"5m\"\n",
            &["limitz"][..],
        ),
        (
            "bad-access-log.toml",
            "[access_log]\nenabled = true\nformat = '{\"id\":\"$context.requestId\",\"s\":\"$context.stauts\"}'\n",
            &["access_log.format", "unknown variable $context.stauts"][..],
        ),
    ] {
        let file = TempFile::new(name, contents);
        let output = run(&["config", "check", file.path()], &[]);
        let err = stderr(&output);
        println!("config check {name}: {:?}, {err}", output.status.code());
        assert_eq!(output.status.code(), Some(1), "{name}: {err}");
        assert!(err.starts_with(file.path()), "{name}: {err}");
        for word in expected {
            assert!(err.contains(word), "{name} does not name {word}: {err}");
        }
        assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    }
    let output = run(&["config", "check", "no/such/file.toml"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("does not exist"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn every_example_configuration_checks() {
    for file in [
        "connection-host/local.toml",
        "functions/demo.toml",
        "functions/demo-template.toml",
        "tests/conformance.toml",
        "localstack/connection-host.toml",
    ] {
        assert!(
            root().join(file).is_file(),
            "{file} is gone: update this list"
        );
        let output = run(&["config", "check", file], &[]);
        println!("{}", stdout(&output).trim_end());
        assert!(output.status.success(), "{file}: {}", stderr(&output));
        assert!(
            stdout(&output).starts_with(&format!("{file}: ok (")),
            "{}",
            stdout(&output)
        );
    }
    // CONFIGURATION.md's form, naming the template on the command line.
    let output = run(
        &[
            "config",
            "check",
            "functions/demo-template.toml",
            "--template",
            "infra/managed.yaml",
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("template infra/managed.yaml"),
        "{}",
        stdout(&output)
    );

    // The container's file listens off loopback, so it refuses to pass without a management key
    // (its comment says so) and passes with one or with the API declared open.
    let docker = "connection-host/docker.toml";
    let output = run(&["config", "check", docker], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("management.auth.keys"),
        "{}",
        stderr(&output)
    );
    for env in [
        &[("CONNECTION_HOST_MANAGEMENT__AUTH__MODE", "none")][..],
        &[
            (
                "CONNECTION_HOST_MANAGEMENT__AUTH__KEYS__AKIAEXAMPLEHOST01__SECRET_ENV",
                "CLI_TEST_MANAGEMENT_SECRET",
            ),
            ("CLI_TEST_MANAGEMENT_SECRET", "a-management-secret"),
        ][..],
    ] {
        let output = run(&["config", "check", docker], env);
        assert!(output.status.success(), "{env:?}: {}", stderr(&output));
    }
    // A key whose variable is unset stops the start, so the check fails too, naming it. (An ID
    // given through the environment arrives lowercased, so the field is compared as such.)
    let output = run(
        &["config", "check", docker],
        &[(
            "CONNECTION_HOST_MANAGEMENT__AUTH__KEYS__AKIAEXAMPLEHOST01__SECRET_ENV",
            "CLI_TEST_UNSET_MANAGEMENT_SECRET",
        )],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stderr(&output)
            .to_lowercase()
            .contains("management.auth.keys.akiaexamplehost01.secret_env")
            && stderr(&output).contains("CLI_TEST_UNSET_MANAGEMENT_SECRET"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn config_check_reads_connection_host_config() {
    let output = run(
        &["config", "check"],
        &[("CONNECTION_HOST_CONFIG", "connection-host/local.toml")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("connection-host/local.toml: ok (3 routes"),
        "{}",
        stdout(&output)
    );
    let bad = TempFile::new("env-bad.toml", "[limits]\nidle_timeout = \"forever\"\n");
    let output = run(
        &["config", "check"],
        &[("CONNECTION_HOST_CONFIG", bad.path())],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("limits.idle_timeout"));
    // The argument wins over the variable.
    let output = run(
        &["config", "check", "connection-host/local.toml"],
        &[("CONNECTION_HOST_CONFIG", bad.path())],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    // Neither: a usage error that says what is missing.
    let output = run(&["config", "check"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("CONNECTION_HOST_CONFIG"));
}

/// A host started as a user starts it, with `args`, killed on drop if it is still running.
struct Host {
    child: Child,
    addr: SocketAddr,
    /// Every line the host wrote to stdout so far.
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Host {
    /// Starts the binary with `args` plus `--listen 127.0.0.1:0`, and waits until it logs its
    /// address and answers `/health`.
    async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// [`Host::start`] with extra environment variables.
    async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = command(args)
            .envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let kept = stdout.clone();
        // Keeps reading, so the pipe never fills and blocks the host's logging.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("host: {line}");
                if line.contains("connection host listening") {
                    let _ = tx.send(line.clone());
                }
                kept.lock().unwrap().push(line);
            }
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
            .await
            .unwrap()
            .expect("the host logs its address");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"));
        let host = Self {
            child,
            addr,
            stdout,
        };
        let health = eventually_some("/health", WAIT, async || {
            reqwest::get(format!("http://{addr}/health"))
                .await
                .ok()
                .map(|r| r.status())
        })
        .await;
        assert_eq!(health, 200);
        host
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// The CloudWatch Embedded Metric Format documents among the stdout lines so far.
    fn emf_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).expect("a JSON line is one whole document"))
            .collect()
    }

    /// Waits up to `WAIT` for the process to exit.
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        eventually_some("the host's exit", WAIT, async || {
            self.child.try_wait().unwrap()
        })
        .await
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn the_without_handlers_walkthrough_works() {
    let host = Host::start(&["--config", "connection-host/local.toml"]).await;
    let mut ws = connect(host.addr).await;

    send_text(&mut ws, r#"{"action":"echo","text":"hello"}"#).await;
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"action":"echo","text":"hello"}"#
    );
    send_text(&mut ws, r#"{"action":"whoami"}"#).await;
    let whoami = next_text(&mut ws).await;
    let re = regex_lite::Regex::new(r#"^\{"connectionId":"([A-Za-z0-9_-]{15}=)"\}$"#).unwrap();
    let id = re
        .captures(&whoami)
        .unwrap_or_else(|| panic!("{whoami}"))
        .get(1)
        .unwrap()
        .as_str()
        .to_string();
    // local.toml's comment: anything else says which route handled it.
    send_text(&mut ws, "hi").await;
    let other: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(other["route"], "$default");

    // The AWS SDK, with any credentials: loopback needs no signature.
    let sdk = mgmt_client(host.addr);
    sdk.post_to_connection()
        .connection_id(&id)
        .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(
            "hello from the server",
        ))
        .send()
        .await
        .expect("PostToConnection");
    assert_eq!(next_text(&mut ws).await, "hello from the server");
    let connection = sdk
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("GetConnection");
    assert!(connection.connected_at().is_some());
    assert_eq!(
        connection.identity().and_then(|i| i.source_ip()),
        Some("127.0.0.1")
    );

    // Plain HTTP, with the `=` encoded.
    let url = format!("http://{}/dev/@connections/{}", host.addr, encode_id(&id));
    let http = reqwest::Client::new();
    let posted = http.post(&url).body("hello again").send().await.unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(next_text(&mut ws).await, "hello again");
    let got = http.get(&url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    let got: serde_json::Value = serde_json::from_str(&got.text().await.unwrap()).unwrap();
    assert!(got["connectedAt"].is_string(), "{got}");
    let deleted = http.delete(&url).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(
        matches!(next_message(&mut ws).await, Message::Close(_)),
        "DeleteConnection closes the client"
    );
    let gone = http.get(&url).send().await.unwrap();
    assert_eq!(gone.status(), 410);
}

#[tokio::test]
async fn sigint_closes_clients_with_1001_and_exits_0() {
    let mut host = Host::start(&["--config", "connection-host/local.toml"]).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut ws = connect(host.addr).await;
        send_text(&mut ws, r#"{"action":"whoami"}"#).await;
        next_text(&mut ws).await;
        clients.push(ws);
    }
    let signalled = Instant::now();
    host.signal("INT");
    for ws in &mut clients {
        match next_message(ws).await {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001, "{frame:?}"),
            other => panic!("expected a close frame, got {other:?}"),
        }
        // Reading on answers the close, which lets the drain finish.
        while within("the end of the stream", ws.next()).await.is_some() {}
    }
    let status = host.exit_status().await;
    println!(
        "SIGINT with {} clients: exited with {status} after {:?}",
        clients.len(),
        signalled.elapsed()
    );
    assert!(status.success(), "{status}");
    // The port is free again.
    assert!(tokio::net::TcpStream::connect(host.addr).await.is_err());
}

/// An access key configured only through the environment keeps the case of its ID (figment
/// lower-cases environment keys), so a call the official SDK signs with the upper-case ID is
/// accepted, while an unsigned one is refused: the key, not an open API, let it through.
#[tokio::test]
async fn an_access_key_from_the_environment_signs_management_calls() {
    const KEY: &str = "AKIAENVIRONMENT01";
    const SECRET: &str = "from-the-environment/with+odd=chars";
    let host = Host::start_with_env(
        &["--config", "connection-host/local.toml"],
        &[
            ("CONNECTION_HOST_MANAGEMENT__AUTH__MODE", "sigv4"),
            (
                "CONNECTION_HOST_MANAGEMENT__AUTH__KEYS__AKIAENVIRONMENT01__SECRET_ENV",
                "CLI_TEST_MANAGEMENT_SECRET",
            ),
            ("CLI_TEST_MANAGEMENT_SECRET", SECRET),
        ],
    )
    .await;
    let mut ws = connect(host.addr).await;
    send_text(&mut ws, r#"{"action":"whoami"}"#).await;
    let whoami: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    let id = whoami["connectionId"].as_str().unwrap().to_string();

    let url = format!("http://{}/dev/@connections/{}", host.addr, encode_id(&id));
    let unsigned = reqwest::get(&url).await.unwrap();
    assert_eq!(unsigned.status(), 403, "signatures are required");

    use aws_sdk_apigatewaymanagement as mgmt;
    let sdk = mgmt::Client::from_conf(
        mgmt::Config::builder()
            .behavior_version(mgmt::config::BehaviorVersion::latest())
            .region(mgmt::config::Region::new("us-east-1"))
            .endpoint_url(format!("http://{}/dev", host.addr))
            .credentials_provider(mgmt::config::Credentials::new(
                KEY, SECRET, None, None, "test",
            ))
            .retry_config(mgmt::config::retry::RetryConfig::disabled())
            .build(),
    );
    let connection = sdk
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("a call signed with the key from the environment is accepted");
    assert!(connection.connected_at().is_some());
}

/// A cluster secret with a control character (here a newline inside the value given through the
/// environment, a copy mistake that would give this host another key than its peers) is refused
/// by `config check` and by a start, never run unclustered.
#[test]
fn a_cluster_secret_that_is_not_a_header_value_is_refused() {
    let file = TempFile::new(
        "cluster-secret.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nkind = \"dynamodb\"\n[cluster]\nadvertise_url = \"http://127.0.0.1:9080\"\n",
    );
    let env = [("CONNECTION_HOST_CLUSTER__SECRET", "0123456789\nabcdef0123")];
    for args in [
        &["config", "check", file.path()][..],
        &["--config", file.path()][..],
    ] {
        let output = run(args, &env);
        let err = stderr(&output);
        println!("{args:?}: {:?}, {err}", output.status.code());
        assert_ne!(output.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.contains("cluster.secret"), "{args:?}: {err}");
        assert!(err.contains("no control characters"), "{args:?}: {err}");
    }
}

/// `metrics.emf` turned on as infra/self-hosted.yaml turns it on (the environment): under a known
/// load, every JSON line on stdout is an Embedded Metric Format document that follows the
/// specification, and the lines' counts add up to exactly what the clients did, the last interval
/// (written after the drain) included.
#[tokio::test]
async fn emf_lines_on_stdout_add_up_to_what_the_clients_did() {
    const CLIENTS: usize = 3;
    const ECHOES: usize = 4;
    let started_ms = now_ms();
    let mut host = Host::start_with_env(
        &["--config", "connection-host/local.toml"],
        &[
            ("CONNECTION_HOST_METRICS__EMF", "true"),
            ("CONNECTION_HOST_METRICS__EMF_INTERVAL", "200ms"),
        ],
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut ws = connect(host.addr).await;
        for _ in 0..ECHOES {
            send_text(&mut ws, r#"{"action":"echo"}"#).await;
            next_text(&mut ws).await;
        }
        // No route matches: local.toml's $default answers.
        send_text(&mut ws, "hi").await;
        next_text(&mut ws).await;
        clients.push(ws);
    }
    send_text(&mut clients[0], r#"{"action":"whoami"}"#).await;
    let whoami: serde_json::Value =
        serde_json::from_str(&next_text(&mut clients[0]).await).unwrap();
    let id = whoami["connectionId"].as_str().unwrap().to_string();
    let url = format!("http://{}/dev/@connections/{}", host.addr, encode_id(&id));
    let posted = reqwest::Client::new()
        .post(&url)
        .body("posted")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(next_text(&mut clients[0]).await, "posted");
    // The gauge, as an interval read it while every client was connected.
    eventually_some(
        "an EMF line with every client connected",
        WAIT,
        async || {
            host.emf_lines()
                .iter()
                .any(|l| l.get("Route").is_none() && l["Connections"] == CLIENTS)
                .then_some(())
        },
    )
    .await;

    host.signal("INT");
    for ws in &mut clients {
        while within("the end of the stream", ws.next()).await.is_some() {}
    }
    assert!(host.exit_status().await.success());
    let lines = host.emf_lines();
    for line in &lines {
        check_emf(line, started_ms..=now_ms());
    }
    let (totals, routes): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l.get("Route").is_none());
    let total = |name: &str| -> u64 { totals.iter().map(|l| count(&l[name])).sum() };
    let route = |key: &str, name: &str| -> u64 {
        routes
            .iter()
            .filter(|l| l["Route"] == key)
            .map(|l| count(&l[name]))
            .sum()
    };
    println!("{} EMF lines over {} intervals", lines.len(), totals.len());
    let (echoes, defaults) = ((CLIENTS * ECHOES) as u64, CLIENTS as u64);
    assert_eq!(total("ConnectCount"), CLIENTS as u64);
    // A message in and its reply out, on its route; the post on @connections.
    assert_eq!(total("MessageCount"), 2 * (echoes + defaults + 1) + 1);
    assert_eq!(route("echo", "MessageCount"), 2 * echoes);
    assert_eq!(route("$default", "MessageCount"), 2 * defaults);
    assert_eq!(route("whoami", "MessageCount"), 2);
    assert_eq!(route("@connections", "MessageCount"), 1);
    assert_eq!(total("MessagesIn"), echoes + defaults + 1);
    assert_eq!(total("MessagesOut"), echoes + defaults + 1 + 1);
    // Every routed message invoked its mock integration once (local.toml has no $connect).
    assert_eq!(total("IntegrationLatency"), echoes + defaults + 1);
    assert_eq!(route("echo", "IntegrationLatency"), echoes);
    for error in [
        "ClientError",
        "IntegrationError",
        "ExecutionError",
        "StoreErrors",
    ] {
        assert_eq!(total(error), 0, "{error}");
    }
    // The drain's closes (1001) are in the last interval, with nobody left connected.
    let last = totals.last().unwrap();
    assert_eq!(last["Connections"], 0, "{last}");
    assert!(totals.len() >= 2, "{totals:?}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What an EMF value counts: a number, or a distribution's `Count`; 0 when absent.
fn count(value: &serde_json::Value) -> u64 {
    match value {
        serde_json::Value::Null => 0,
        serde_json::Value::Object(d) => d["Count"].as_u64().unwrap(),
        v => v.as_u64().unwrap_or_else(|| panic!("{v} is not a count")),
    }
}

/// Checks `line` against the rules of CloudWatch's Embedded Metric Format specification, and the
/// host's namespace and dimensions; panics naming the rule broken.
fn check_emf(line: &serde_json::Value, stamped: std::ops::RangeInclusive<u64>) {
    use serde_json::Value;
    const UNITS: [&str; 27] = [
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    ];
    let only = |object: &Value, allowed: &[&str]| {
        let object = object
            .as_object()
            .unwrap_or_else(|| panic!("not an object in {line}"));
        for key in object.keys() {
            assert!(
                allowed.contains(&key.as_str()),
                "member {key} not in the specification: {line}"
            );
        }
    };
    let root = line.as_object().expect("the root is an object");
    let aws = &root["_aws"];
    only(aws, &["Timestamp", "CloudWatchMetrics"]);
    let timestamp = aws["Timestamp"]
        .as_u64()
        .expect("Timestamp: milliseconds since the epoch");
    assert!(
        stamped.contains(&timestamp),
        "Timestamp {timestamp} outside {stamped:?}"
    );
    let directives = aws["CloudWatchMetrics"]
        .as_array()
        .expect("CloudWatchMetrics is an array");
    assert!(!directives.is_empty(), "{line}");
    for directive in directives {
        only(directive, &["Namespace", "Dimensions", "Metrics"]);
        assert_eq!(directive["Namespace"], "ConnectionHost");
        let sets = directive["Dimensions"]
            .as_array()
            .expect("Dimensions is an array");
        for set in sets {
            let set = set.as_array().expect("a dimension set is an array");
            assert!(
                !set.is_empty() && set.len() <= 30,
                "1 to 30 dimensions: {line}"
            );
            for key in set {
                let key = key.as_str().expect("a dimension key is a string");
                let value = root[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("dimension {key} needs a string member: {line}"));
                assert!(
                    !value.trim().is_empty() && value.len() <= 1024 && value.is_ascii(),
                    "dimension value {value:?}"
                );
            }
        }
        let names: Vec<_> = sets
            .iter()
            .map(|s| {
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            names == [vec!["ApiId", "Stage"]] || names == [vec!["ApiId", "Stage", "Route"]],
            "{names:?}"
        );
        let metrics = directive["Metrics"]
            .as_array()
            .expect("Metrics is an array");
        assert!(
            !metrics.is_empty() && metrics.len() <= 100,
            "1 to 100 metrics: {line}"
        );
        for definition in metrics {
            only(definition, &["Name", "Unit", "StorageResolution"]);
            let name = definition["Name"].as_str().expect("Name is a string");
            let unit = definition["Unit"].as_str().expect("Unit is a string");
            assert!(UNITS.contains(&unit), "{unit} is not a CloudWatch unit");
            match &root[name] {
                Value::Number(_) => {}
                Value::Array(values) => {
                    assert!(
                        values.len() <= 100 && values.iter().all(Value::is_number),
                        "{name}"
                    )
                }
                Value::Object(d) => {
                    only(
                        &root[name],
                        &["Values", "Counts", "Max", "Min", "Count", "Sum"],
                    );
                    let values: Vec<f64> = d["Values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect();
                    let counts: Vec<u64> = d["Counts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_u64().unwrap())
                        .collect();
                    assert!(
                        !values.is_empty() && values.len() == counts.len() && values.len() <= 100,
                        "{name}"
                    );
                    let (min, max) = (d["Min"].as_f64().unwrap(), d["Max"].as_f64().unwrap());
                    let (n, sum) = (d["Count"].as_u64().unwrap(), d["Sum"].as_f64().unwrap());
                    assert_eq!(n, counts.iter().sum::<u64>(), "{name}: Count");
                    assert!(
                        values.iter().all(|v| (min..=max).contains(v)),
                        "{name}: Min/Max"
                    );
                    assert!(
                        values.contains(&min) && values.contains(&max),
                        "{name}: Min/Max"
                    );
                    let expected: f64 =
                        values.iter().zip(&counts).map(|(v, &c)| v * c as f64).sum();
                    assert!(
                        (sum - expected).abs() < 1e-6 * expected.max(1.0),
                        "{name}: Sum"
                    );
                    // A statistic set some values could have.
                    let nf = n as f64;
                    assert!(
                        max + min * (nf - 1.0) <= sum + 1e-9
                            && sum <= min + max * (nf - 1.0) + 1e-9,
                        "{name}: statistic set"
                    );
                }
                other => panic!("{name} has no numeric member ({other}): {line}"),
            }
        }
    }
}
