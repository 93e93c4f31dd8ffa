//! Load figures for the connection host (a benchmark program, not a test).
//!
//! ```sh
//! cargo build --release -p connection-host
//! cargo run --release -p connection-host-bench -- [--host-bin PATH] [--out FILE] \
//!     [--duration SECS] [--dynamodb-endpoint URL] [idle-memory] [post] [post-dynamodb] \
//!     [post-cross-host] [echo-http] [echo-lambda] [connect-rate] [connect-rate-dynamodb] \
//!     [reliable] [reliable-store] [presence-list] [baseline] [broadcast] [--members N] \
//!     [--targets URL[=MGMT_URL],...]
//! cargo run --release -p connection-host-bench -- [--connections N] [--hosts H] [--loaders L] \
//!     [--dynalite PATH] [--dynamodb-endpoint URL] scale|scale-broadcast
//! ```
//!
//! Starts the real host binary as a child process (one per scenario, two for `post-cross-host`,
//! each with a generated config in a temp dir), drives it over loopback from this process, and
//! prints a Markdown table. Children are killed on exit, on panic (a Drop guard) and on Ctrl-C.
//! Everything is bounded in count and time; all sockets are on 127.0.0.0/8.
//!
//! `echo-lambda` runs the `echo` example function (`cargo build --release -p ws-handler --bin
//! echo`, found beside the host binary) under the host's local Lambda runtime.
//!
//! `scale` and `scale-broadcast` (run only when named) hold 100,000 connections over a local cluster
//! of host processes and loader processes (this binary again, `bench --loader …`) on dynalite: see
//! `scenarios/scale.rs` and BENCHMARKS.md.
//!
//! `broadcast` joins `--members` WebSockets (10,000 by default) to one group and times
//! `POST /{stage}/@groups/{group}`: on one host it starts, or spread over running hosts given by
//! `--targets` (each `http://IP:PORT`, with `=http://IP:MGMT_PORT` when its management API listens
//! apart), broadcasting through the first.
//!
//! `presence-list` lists a 10,000-member group through every page and counts it, on the memory
//! store and then on the DynamoDB store (dynalite, or `--dynamodb-endpoint`), side by side.
//!
//! `reliable` and `reliable-store` post to clients speaking the `ch-reliable.v1` subprotocol
//! (PROTOCOL.md) beside plain clients on the same host, and time a session's resume.
//!
//! The `*-dynamodb`, `reliable-store` and `post-cross-host` scenarios use `[store] kind = "dynamodb"` with freshly
//! named tables (`connection-host store init`). The endpoint is `--dynamodb-endpoint URL`; without
//! it the bench starts moto through `tests/moto_dynamodb.py` with `.venv-test`'s Python (installed by
//! `bash tests/run.sh --only tools`) on a free loopback port and stops it at exit. With neither,
//! those scenarios print a "skipped" row.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

mod scenarios;

use scenarios::*;

type Ws = WebSocketStream<TcpStream>;
type AnyError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, AnyError>;

const ALL: &[&str] = &[
    "idle-memory",
    "post",
    "post-dynamodb",
    "post-cross-host",
    "echo-http",
    "echo-lambda",
    "connect-rate",
    "connect-rate-dynamodb",
    "reliable",
    "reliable-store",
    "presence-list",
    "baseline",
    "broadcast",
];

/// Scenarios run only when named: they take minutes and most of the machine.
const ON_REQUEST: &[&str] = &["scale", "scale-broadcast"];

/// The scenarios that need a DynamoDB endpoint.
const NEED_DYNAMODB: &[&str] = &[
    "post-dynamodb",
    "post-cross-host",
    "connect-rate-dynamodb",
    "reliable-store",
];

// ---------------------------------------------------------------------------------------------
// The host child process

/// PIDs of running children (hosts and moto), killed by the Ctrl-C handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The host binary running as a child; killed when dropped (also while unwinding from a panic).
struct HostProc {
    child: Child,
    /// The public listener (`{PORT}` in the config).
    port: u16,
    /// The management listener (`{MPORT}` in the config); 0 when the config has none.
    mport: u16,
    dir: PathBuf,
}

impl HostProc {
    /// Writes `config` (with `{PORT}` replaced) to a temp dir and starts the host on a free port.
    async fn start(bin: &Path, name: &str, config: &str) -> Res<Self> {
        Self::start_with_env(bin, name, config, &[]).await
    }

    /// As [`HostProc::start`], with extra environment variables; a `{MPORT}` in `config` gets a
    /// second free port (the management listener), and the host is ready when both listen.
    async fn start_with_env(
        bin: &Path,
        name: &str,
        config: &str,
        env: &[(&str, String)],
    ) -> Res<Self> {
        let port = free_port()?;
        let mport = if config.contains("{MPORT}") {
            free_port()?
        } else {
            0
        };
        let dir = std::env::temp_dir().join(format!("ch-bench-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("config.toml");
        let config = config
            .replace("{PORT}", &port.to_string())
            .replace("{MPORT}", &mport.to_string());
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("host.log"))?;
        let mut child = Command::new(bin);
        child
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            // The rate limits (API Gateway's quotas by default) would cap the very figures measured
            // here; they are off so the bench shows the host's capacity.
            .envs(UNLIMITED.iter().map(|k| (k, "0")))
            .envs(env.iter().map(|(k, v)| (k, v)));
        let child = spawn_logged(child, bin, log)?;
        let mut host = HostProc {
            child,
            port,
            mport,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = host.child.try_wait()? {
                return Err(format!("host exited at start ({status}): {}", host.log_tail()).into());
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok()
                && (mport == 0 || TcpStream::connect(("127.0.0.1", mport)).await.is_ok())
            {
                break;
            }
            if Instant::now() > deadline {
                return Err("host did not start listening within 15 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(host)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the host's log (RUST_LOG=warn).
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("host.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Reports how many warning lines the host logged, with a sample.
    fn report_log(&self) {
        let text = std::fs::read_to_string(self.dir.join("host.log")).unwrap_or_default();
        let n = text.lines().count();
        if n > 0 {
            eprintln!("  host logged {n} line(s); last ones:\n{}", self.log_tail());
        }
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        CHILDREN.lock().unwrap().retain(|p| *p != self.child.id());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("bad VmRSS line")?
        .parse()?)
}

// ---------------------------------------------------------------------------------------------
// The DynamoDB endpoint: given, or moto started here

/// moto started by the bench; stopped (by PID) when dropped, and by the Ctrl-C handler.
struct MotoProc {
    child: Child,
    endpoint: String,
    dir: PathBuf,
}

impl MotoProc {
    /// The workspace's `.venv-test/bin/python` and `tests/moto_dynamodb.py` (moto answering one
    /// request at a time, so conditional writes are atomic as on DynamoDB), if the venv exists.
    fn find() -> Option<(PathBuf, PathBuf)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.parent()?;
        let python = root.join(".venv-test/bin/python");
        let script = root.join("tests/moto_dynamodb.py");
        (python.is_file() && script.is_file()).then_some((python, script))
    }

    /// Starts moto on a free loopback port and waits until it answers (at most 30 s).
    async fn start((bin, script): &(PathBuf, PathBuf)) -> Res<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("ch-bench-{}-moto", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("moto.log"))?;
        let mut child = Command::new(bin);
        child.arg(script);
        child.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let child = spawn_logged(child, bin, log)?;
        let mut moto = MotoProc {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = moto.child.try_wait()? {
                let log = std::fs::read_to_string(moto.dir.join("moto.log")).unwrap_or_default();
                return Err(format!("moto exited at start ({status}): {log}").into());
            }
            let ready = async {
                let mut c = RawHttp::connect(port).await?;
                let (status, _) = c
                    .request(b"GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    .await?;
                Ok::<_, AnyError>(status == 200)
            };
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(1), ready).await {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                return Err("moto did not answer within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for MotoProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        CHILDREN.lock().unwrap().retain(|p| *p != self.child.id());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The environment of a host (and of `store init`) using `endpoint`: dummy credentials, a fixed
/// region, and the endpoint for every AWS service.
fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", "bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// A pair of freshly created tables, unique to this run and scenario.
struct Tables {
    endpoint: String,
    connections: String,
    groups: String,
    sessions: String,
}

impl Tables {
    /// Creates the tables with `connection-host --config F store init` (bounded to 60 s).
    async fn create(o: &Opts, endpoint: &str, scenario: &str) -> Res<Self> {
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
        );
        let tables = Tables {
            endpoint: endpoint.to_string(),
            connections: format!("bench-{scenario}-connections-{unique}"),
            groups: format!("bench-{scenario}-groups-{unique}"),
            sessions: format!("bench-{scenario}-sessions-{unique}"),
        };
        let dir =
            std::env::temp_dir().join(format!("ch-bench-{}-{scenario}-init", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, tables.store_section())?;
        let mut cmd = tokio::process::Command::new(&o.host_bin);
        cmd.arg("--config")
            .arg(&config_path)
            .args(["store", "init"])
            .envs(aws_env(endpoint))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await;
        let _ = std::fs::remove_dir_all(&dir);
        let out = out.map_err(|_| "store init took more than 60 s")??;
        if !out.status.success() {
            return Err(format!(
                "store init failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(tables)
    }

    /// The `[store]` section naming these tables.
    fn store_section(&self) -> String {
        format!(
            "[store]\nkind = \"dynamodb\"\nconnections_table = \"{}\"\ngroups_table = \"{}\"\nsessions_table = \"{}\"\n",
            self.connections, self.groups, self.sessions
        )
    }

    /// Deletes the tables, best effort (a DeleteTable call each, unsigned: enough for moto and
    /// other local endpoints). A moto started by the bench goes away anyway.
    async fn delete(self) {
        let Some(addr) = self.endpoint.strip_prefix("http://") else {
            return;
        };
        let addr = addr.trim_end_matches('/').to_string();
        for table in [&self.connections, &self.groups, &self.sessions] {
            let body = format!(r#"{{"TableName":"{table}"}}"#);
            let request = format!(
                "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.0\r\n\
                 X-Amz-Target: DynamoDB_20120810.DeleteTable\r\n\
                 Authorization: AWS4-HMAC-SHA256 Credential=bench/20200101/us-east-1/dynamodb/aws4_request, \
                 SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let mut c = RawHttp::connect_addr(&addr).await?;
                c.request(request.as_bytes()).await
            })
            .await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// Next client source address: 127.0.0.2 .. 127.0.0.61, so no one source runs out of ports.
static SOURCE: AtomicUsize = AtomicUsize::new(0);

fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// A TCP connection to `127.0.0.1:port` from the next 127.0.0.x source address.
async fn client_tcp(port: u16) -> Res<TcpStream> {
    client_tcp_to(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// A TCP connection to `addr` (on 127.0.0.0/8) from the next 127.0.0.x source address.
async fn client_tcp_to(addr: SocketAddr) -> Res<TcpStream> {
    let n = SOURCE.fetch_add(1, Ordering::Relaxed);
    let src = Ipv4Addr::new(127, 0, 0, 2 + (n % 60) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src.into(), 0))?;
    socket.set_nodelay(true)?;
    Ok(socket.connect(addr).await?)
}

/// Opens a WebSocket to `127.0.0.1:port{path}` from the next 127.0.0.x source address.
async fn ws_connect(port: u16, path: &str) -> Res<Ws> {
    ws_connect_to(SocketAddr::from(([127, 0, 0, 1], port)), path).await
}

/// Opens a WebSocket to `addr{path}` from the next 127.0.0.x source address.
async fn ws_connect_to(addr: SocketAddr, path: &str) -> Res<Ws> {
    let stream = client_tcp_to(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}{path}"),
        stream,
        Some(client_ws_config()),
    )
    .await?;
    Ok(ws)
}

/// Opens `n` WebSockets with at most `in_flight` handshakes at a time; returns them with each
/// handshake's latency in µs and the number of failures.
async fn open_many(port: u16, n: usize, in_flight: usize) -> (Vec<Ws>, Vec<u64>, usize) {
    let results: Vec<_> = futures_util::stream::iter(0..n)
        .map(|_| async move {
            let t = Instant::now();
            ws_connect(port, "/dev")
                .await
                .map(|ws| (ws, t.elapsed().as_micros() as u64))
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let mut sockets = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    let mut failed = 0;
    for r in results {
        match r {
            Ok((ws, us)) => {
                sockets.push(ws);
                lat.push(us);
            }
            Err(e) => {
                if failed == 0 {
                    eprintln!("  first connect failure: {e}");
                }
                failed += 1;
            }
        }
    }
    (sockets, lat, failed)
}

/// Closes the sockets (Close frame, then drop), `in_flight` at a time, each bounded to 2 s.
async fn close_many(sockets: Vec<Ws>, in_flight: usize) {
    futures_util::stream::iter(sockets)
        .for_each_concurrent(in_flight, |mut ws| async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = ws.close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        })
        .await;
}

/// The next text message, answering nothing else (tungstenite queues Pongs itself).
async fn next_text(ws: &mut Ws) -> Res<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}").into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("connection ended".into()),
        }
    }
}

/// A minimal keep-alive HTTP/1.1 client on one connection (cheaper per request than reqwest, so
/// the client's own cost does not hide the host's on 2 cores).
struct RawHttp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawHttp {
    async fn connect(port: u16) -> Res<Self> {
        Self::connect_addr(&format!("127.0.0.1:{port}")).await
    }

    async fn connect_addr(addr: &str) -> Res<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends a complete request and reads the response; returns the status and the body.
    async fn request(&mut self, request: &[u8]) -> Res<(u16, Vec<u8>)> {
        self.stream.write_all(request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 24];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = response.parse(&self.buf)? {
                let status = response.code.unwrap_or(0);
                let body_len = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0usize);
                if self.buf.len() >= head_len + body_len {
                    let body = self.buf[head_len..head_len + body_len].to_vec();
                    self.buf.drain(..head_len + body_len);
                    return Ok((status, body));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("HTTP connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// GET /health → the host's connection count.
async fn health_connections(port: u16) -> Res<u64> {
    let mut c = RawHttp::connect(port).await?;
    let (status, body) = c
        .request(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    if status != 200 {
        return Err(format!("/health answered {status}").into());
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(v["connections"].as_u64().unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Figures

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// One line of the table.
struct Row {
    scenario: String,
    what: String,
    count: String,
    rate: String,
    p50: String,
    p99: String,
    target: String,
    verdict: String,
}

impl Row {
    fn new(scenario: &str, what: &str) -> Self {
        Row {
            scenario: scenario.into(),
            what: what.into(),
            count: "—".into(),
            rate: "—".into(),
            p50: "—".into(),
            p99: "—".into(),
            target: "—".into(),
            verdict: "—".into(),
        }
    }

    fn failed(scenario: &str, error: &str) -> Self {
        let mut row = Row::new(scenario, "scenario failed");
        row.verdict = format!("ERROR: {error}");
        row
    }

    fn print_line(&self) {
        eprintln!(
            "  => {} | {} | {} | {} | p50 {} | p99 {} | target {} | {}",
            self.scenario,
            self.what,
            self.count,
            self.rate,
            self.p50,
            self.p99,
            self.target,
            self.verdict
        );
    }
}

fn verdict(ok: bool) -> String {
    if ok { "PASS".into() } else { "MISS".into() }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Opts {
    host_bin: PathBuf,
    duration: Duration,
    /// `broadcast`: group members (`--members`).
    members: usize,
    /// `broadcast`: hosts already running to use instead of starting one (`--hosts`).
    hosts: Vec<Target>,
    /// The DynamoDB endpoint, or why there is none.
    dynamodb: Result<String, String>,
    /// `--dynamodb-endpoint` for the scale and `presence-list` scenarios; without it they start
    /// dynalite.
    scale_endpoint: Option<String>,
    /// The dynalite executable (`--dynalite`).
    dynalite: PathBuf,
    /// The scale scenarios' connections, hosts and loader processes.
    shape: Shape,
}

/// Environment variables that turn the host's rate limits off.
const UNLIMITED: &[&str] = &[
    "CONNECTION_HOST_LIMITS__CONNECTIONS_PER_SECOND",
    "CONNECTION_HOST_LIMITS__MESSAGES_PER_SECOND",
    "CONNECTION_HOST_LIMITS__MANAGEMENT_REQUESTS_PER_SECOND",
];

const BASE_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:{PORT}"
"#;

/// 30000.0 → "30,000".
fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Closed-loop echo over `conns` WebSockets for `duration`: returns messages, latencies (µs,
/// sorted) and wrong answers.
async fn echo_loop(
    port: u16,
    path: &str,
    conns: usize,
    duration: Duration,
) -> Res<(u64, Vec<u64>, u64, Duration)> {
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        sockets.push(ws_connect(port, path).await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(conns);
    for (n, mut ws) in sockets.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut wrong = 0u64;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let text = format!("echo {n} {seq} ........................................");
                seq += 1;
                let t = Instant::now();
                ws.send(Message::text(text.clone())).await?;
                let got =
                    tokio::time::timeout(Duration::from_secs(30), next_text(&mut ws)).await??;
                lat.push(t.elapsed().as_micros() as u64);
                if got != text {
                    if wrong == 0 {
                        eprintln!("  unexpected echo: {got:?}");
                    }
                    wrong += 1;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
            Ok::<_, AnyError>((lat, wrong))
        }));
    }
    let mut lat = Vec::new();
    let mut wrong = 0;
    for t in tasks {
        let (l, w) = t.await??;
        lat.extend(l);
        wrong += w;
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    Ok((lat.len() as u64, lat, wrong, elapsed))
}

fn echo_row(
    scenario: &str,
    what: &str,
    conns: usize,
    figures: (u64, Vec<u64>, u64, Duration),
    target: Option<(f64, u64)>,
) -> Row {
    let (count, lat, wrong, elapsed) = figures;
    let rate = count as f64 / elapsed.as_secs_f64();
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    let mut row = Row::new(scenario, what);
    row.count = format!(
        "{count} msgs, {conns} conn{}",
        if conns == 1 { "" } else { "s" }
    );
    if wrong > 0 {
        row.count.push_str(&format!(", {wrong} WRONG"));
    }
    row.rate = format!("{rate:.0} msg/s");
    row.p50 = ms(p50);
    row.p99 = ms(p99);
    match target {
        Some((min_rate, max_p99_us)) => {
            row.target = format!("≥ {min_rate:.0} msg/s, p99 ≤ {}", ms(max_p99_us));
            row.verdict = verdict(rate >= min_rate && p99 <= max_p99_us && wrong == 0);
        }
        None => row.target = "— (reported)".into(),
    }
    row
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--host-bin PATH] [--out FILE] [--duration SECS] \
         [--dynamodb-endpoint URL] [--members N] [--targets URL[=MGMT_URL],...] \
         [--connections N] [--hosts H] [--loaders L] [--dynalite PATH] [{}|{}]...",
        ALL.join("|"),
        ON_REQUEST.join("|")
    );
    std::process::exit(2);
}

fn machine_facts(host_bin: &Path) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let rev = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let bin_time = std::fs::metadata(host_bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| format!(", built {} min ago", d.as_secs() / 60))
        .unwrap_or_default();
    format!(
        "- date: {date}\n- nproc: {nproc} (bench clients and the host share these cores)\n- kernel: {}\n\
         - host binary: {}{bin_time} (git {rev})\n",
        kernel.trim(),
        host_bin.display()
    )
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | what | count | rate | p50 | p99 | target | result |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario, r.what, r.count, r.rate, r.p50, r.p99, r.target, r.verdict
        );
    }
    s
}

fn main() {
    let mut host_bin: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut duration = Duration::from_secs(10);
    let mut dynamodb_endpoint: Option<String> = None;
    let mut members = 10_000;
    let mut hosts = Vec::new();
    let mut scenarios = Vec::new();
    let mut shape = Shape::default();
    let mut dynalite = default_dynalite();
    let all_args: Vec<String> = std::env::args().collect();
    if all_args.get(1).map(String::as_str) == Some("--loader") {
        loader_main(&all_args[2..]);
    }
    let mut args = all_args.into_iter().skip(1);
    let count = |args: &mut dyn Iterator<Item = String>| -> usize {
        args.next()
            .and_then(|s| s.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| usage())
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--connections" => shape.connections = count(&mut args),
            "--hosts" => shape.hosts = count(&mut args),
            "--loaders" => shape.loaders = count(&mut args),
            "--dynalite" => dynalite = args.next().unwrap_or_else(|| usage()).into(),
            "--host-bin" => host_bin = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--out" => out = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--dynamodb-endpoint" => {
                dynamodb_endpoint = Some(args.next().unwrap_or_else(|| usage()));
            }
            "--duration" => {
                let secs: f64 = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage());
                duration = Duration::from_secs_f64(secs.clamp(0.5, 120.0));
            }
            "--members" => {
                members = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage());
            }
            "--targets" => {
                let list = args.next().unwrap_or_else(|| usage());
                hosts = list
                    .split(',')
                    .map(Target::parse)
                    .collect::<Result<_, _>>()
                    .unwrap_or_else(|e| {
                        eprintln!("--targets: {e}");
                        usage()
                    });
            }
            "-h" | "--help" => usage(),
            s if ALL.contains(&s) || ON_REQUEST.contains(&s) => scenarios.push(s.to_string()),
            _ => usage(),
        }
    }
    if scenarios.is_empty() {
        scenarios = ALL.iter().map(|s| s.to_string()).collect();
    }
    let host_bin = host_bin.unwrap_or_else(|| {
        // target/release/bench → target/release/connection-host
        std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.join("connection-host")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("target/release/connection-host"))
    });
    if !host_bin.exists() {
        eprintln!(
            "host binary {} not found (build it: cargo build --release -p connection-host)",
            host_bin.display()
        );
        std::process::exit(2);
    }
    let mut opts = Opts {
        host_bin: host_bin.clone(),
        duration,
        members,
        hosts,
        dynamodb: Err("not needed".into()),
        scale_endpoint: dynamodb_endpoint.clone(),
        dynalite,
        shape,
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    // Stops moto (if the bench started it) when main returns or unwinds.
    let mut moto_guard: Option<MotoProc> = None;
    let rows = runtime.block_on(async {
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                for pid in CHILDREN.lock().unwrap().iter() {
                    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                }
                let prefix = format!("ch-bench-{}-", std::process::id());
                if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
                    for e in entries.flatten() {
                        if e.file_name().to_string_lossy().starts_with(&prefix) {
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                    }
                }
                eprintln!("interrupted; host processes killed");
                std::process::exit(130);
            }
        });
        if scenarios
            .iter()
            .any(|s| NEED_DYNAMODB.contains(&s.as_str()))
        {
            opts.dynamodb = match (dynamodb_endpoint, MotoProc::find()) {
                (Some(url), _) => Ok(url),
                (None, Some(bin)) => match MotoProc::start(&bin).await {
                    Ok(moto) => {
                        eprintln!(
                            "== moto (pid {}) on {} for the DynamoDB scenarios",
                            moto.child.id(),
                            moto.endpoint
                        );
                        let endpoint = moto.endpoint.clone();
                        moto_guard = Some(moto);
                        Ok(endpoint)
                    }
                    Err(e) => Err(format!("moto did not start: {e}")),
                },
                (None, None) => Err(
                    "no --dynamodb-endpoint, and no .venv-test/bin/python with moto \
                                     (bash tests/run.sh --only tools installs it)"
                        .into(),
                ),
            };
        }
        let mut rows = Vec::new();
        for s in &scenarios {
            eprintln!("== {s}");
            if NEED_DYNAMODB.contains(&s.as_str())
                && let Err(why) = &opts.dynamodb
            {
                eprintln!("  skipped: no DynamoDB endpoint: {why}");
                let mut row = Row::new(s, &format!("skipped: no DynamoDB endpoint ({why})"));
                row.verdict = "SKIPPED".into();
                rows.push(row);
                continue;
            }
            let endpoint = opts.dynamodb.as_deref().unwrap_or_default();
            let result = match s.as_str() {
                "idle-memory" => idle_memory(&opts).await,
                "post" => post(&opts).await,
                "post-dynamodb" => post_dynamodb(&opts, endpoint).await,
                "post-cross-host" => post_cross_host(&opts, endpoint).await,
                "echo-http" => echo_http(&opts).await,
                "echo-lambda" => echo_lambda(&opts).await,
                "connect-rate" => connect_rate(&opts).await,
                "connect-rate-dynamodb" => connect_rate_dynamodb(&opts, endpoint).await,
                "reliable" => reliable(&opts).await,
                "reliable-store" => reliable_store(&opts, endpoint).await,
                "presence-list" => presence_list(&opts).await,
                "baseline" => baseline(&opts).await,
                "scale" => scale(&opts, opts.shape).await,
                "scale-broadcast" => scale_broadcast(&opts, opts.shape).await,
                "broadcast" => broadcast(&opts).await,
                _ => unreachable!("checked when parsing"),
            };
            match result {
                Ok(r) => {
                    for row in &r {
                        row.print_line();
                    }
                    rows.extend(r);
                }
                Err(e) => {
                    eprintln!("  {s} failed: {e}");
                    rows.push(Row::failed(s, &e.to_string()));
                }
            }
            // Let sockets in TIME_WAIT and the previous host's exit settle.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        rows
    });
    drop(moto_guard);
    runtime.shutdown_timeout(Duration::from_secs(1));
    let report = format!(
        "## connection-host bench\n\n{}\n{}\nPeer figures on this machine kind (reference doc): tokio-tungstenite echo \
         76k msg/s p99 4.9 ms (100 conns), 33k msg/s (1 conn); Pushpin push 4.5k/s; serverless-offline push 7.8k/s.\n",
        machine_facts(&host_bin),
        table(&rows)
    );
    print!("{report}");
    if let Some(path) = out
        && let Err(e) = std::fs::write(&path, &report)
    {
        eprintln!("could not write {}: {e}", path.display());
    }
}

/// Spawns `command` (the program `bin`) with its output going to `log` and no input, and
/// registers it so that it is killed when the bench exits.
fn spawn_logged(mut command: Command, bin: &Path, log: std::fs::File) -> Res<Child> {
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    CHILDREN.lock().unwrap().push(child.id());
    Ok(child)
}
