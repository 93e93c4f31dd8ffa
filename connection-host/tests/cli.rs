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
        // Keeps reading, so the pipe never fills and blocks the host's logging.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("host: {line}");
                if line.contains("connection host listening") {
                    let _ = tx.send(line);
                }
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
        let host = Self { child, addr };
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
