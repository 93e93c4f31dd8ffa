//! A real Prometheus (Debian's `prometheus`, which tests/run.sh installs) scraping a host's
//! management listener every second, with infra/monitoring/alerts.yml loaded: after a known load
//! (connects, messages, posts through the official SDK client, an integration answering 500 and one
//! that cannot be reached) the values
//! it answers on its HTTP API equal what the test did; every expression of the Grafana dashboard
//! evaluates, and every alert rule evaluates without error.

use aws_sdk_apigatewaymanagement::primitives::Blob;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use test_kit::{
    Handler, Reply, TempDir, WAIT, Ws, closed_port_url, conn_id, eventually, eventually_some,
    free_loopback_addrs, mgmt_client, route, send_text, start_host, try_connect,
};

/// Connections opened (and kept open until the values are checked).
const CONNECTS: usize = 3;
/// Messages sent to `$default`, spread over the connections.
const MESSAGES: usize = 5;
/// PostToConnection calls through the official SDK client.
const POSTS: usize = 4;
const API_ID: &str = "promtest01";
const STAGE: &str = "dev";
/// How long Prometheus may take to start, and to scrape what the load did (1 s interval).
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);

/// The `prometheus` binary on `PATH`. Missing: panics when `CI` is set (CI must run this test);
/// otherwise prints `SKIPPED …` past the test harness's capture and returns `None`.
fn prometheus_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty()),
            "prometheus is not installed but CI is set: tests/run.sh installs it (apt-get)"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED prometheus_scrapes_what_the_host_did: no prometheus on PATH (tests/run.sh installs it)"
        );
    }
    found
}

/// A Prometheus server on loopback with its data in a temporary directory, killed by PID on drop.
struct Prometheus {
    url: String,
    child: Child,
    log: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts `bin` scraping `target` (`/metrics`) every second, with `rules` loaded, and waits
    /// until it is ready.
    async fn start(bin: &Path, dir: &TempDir, target: SocketAddr, rules: &Path) -> Self {
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: connection-host\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .expect("write prometheus.yml");
        let listen = free_loopback_addrs(1)[0];
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).expect("create prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self {
            url: format!("http://{listen}"),
            child,
            log,
            http: reqwest::Client::new(),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        eventually("prometheus ready", PROMETHEUS_WAIT, async || {
            prometheus
                .http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        prometheus
    }

    /// `GET /api/v1/{path}` with `query`; the `data` of a successful answer, else the error text.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())
            .and_then(|body| serde_json::from_slice(&body).map_err(|e| e.to_string()))?;
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"].clone()),
            _ => Err(answer.to_string()),
        }
    }

    /// An instant query; panics on an error answer (an expression Prometheus cannot evaluate).
    async fn query(&self, expr: &str) -> Vec<Value> {
        match self.api("query", &[("query", expr)]).await {
            Ok(data) => data["result"].as_array().cloned().unwrap_or_default(),
            Err(e) => panic!("prometheus cannot evaluate {expr}: {e}"),
        }
    }

    /// The value of an instant query that returns one series, or `None` for no series.
    async fn scalar(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).await;
        assert!(
            result.len() <= 1,
            "{expr}: more than one series: {result:?}"
        );
        result
            .first()
            .and_then(|s| s["value"][1].as_str())
            .map(|v| v.parse().expect("a sample value is a number"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "prometheus log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The PromQL of every panel of the Grafana dashboard, with its variables replaced by what Grafana
/// would send: every API, stage and host, a one-minute rate interval.
fn dashboard_expressions() -> Vec<(String, String)> {
    let path = repository_file("infra/monitoring/grafana-dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .expect("a Prometheus target has expr");
            let expr = ["$api_id", "$stage", "$instance"]
                .iter()
                .fold(expr.to_string(), |e, v| e.replace(v, ".*"))
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m");
            exprs.push((
                panel["title"].as_str().unwrap_or_default().to_string(),
                expr,
            ));
        }
    }
    exprs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_what_the_host_did() {
    let Some(bin) = prometheus_binary() else {
        return;
    };
    let dir = TempDir::new("prometheus-e2e");

    // The integration: `fail` answers statusCode 500 (an IntegrationError), everything else 200;
    // `down`'s integration is a closed port (an ExecutionError).
    let handler = Handler::start(|e| match route(e) {
        "fail" => Reply::proxy(500, Some("failed on purpose")),
        _ => Reply::proxy(200, None),
    })
    .await;
    let down = closed_port_url().await;
    // The host as a process of the workspace's binary, as operators run it.
    let [public, management] = free_loopback_addrs(2)[..] else {
        unreachable!("two addresses")
    };
    let _host = start_host(
        "host",
        dir.path(),
        management,
        &format!(
            r#"[server]
listen = "{public}"
management_listen = "{management}"
[api]
api_id = "{API_ID}"
stage = "{STAGE}"
[routes."$connect"]
integration = "h"
[routes."$default"]
integration = "h"
[routes.fail]
integration = "h"
[routes.down]
integration = "down"
[integrations.h]
type = "http"
url = "{url}"
[integrations.down]
type = "http"
url = "{down}"
"#,
            url = handler.url
        ),
        &[("RUST_LOG", "warn")],
    )
    .await;
    let prometheus = Prometheus::start(
        &bin,
        &dir,
        management,
        &repository_file("infra/monitoring/alerts.yml"),
    )
    .await;

    // The load.
    let mut clients: Vec<Ws> = Vec::new();
    for i in 0..CONNECTS {
        let (ws, _) = try_connect(public, &format!("/{STAGE}?n={i}"), &[], None)
            .await
            .expect("connect");
        clients.push(ws);
    }
    let connects = eventually_some("every $connect event", WAIT, async || {
        let events: Vec<Value> = handler
            .events()
            .into_iter()
            .filter(|e| route(e) == "$connect")
            .collect();
        (events.len() == CONNECTS).then_some(events)
    })
    .await;
    for i in 0..MESSAGES {
        send_text(&mut clients[i % CONNECTS], &format!("message {i}")).await;
    }
    send_text(&mut clients[0], r#"{"action":"fail"}"#).await;
    send_text(&mut clients[1], r#"{"action":"down"}"#).await;
    let sdk = mgmt_client(management);
    for i in 0..POSTS {
        sdk.post_to_connection()
            .connection_id(conn_id(&connects[i % CONNECTS]))
            .data(Blob::new(format!("post {i}")))
            .send()
            .await
            .expect("PostToConnection");
    }
    // What Prometheus must have scraped, once the host has counted it all.
    let labels = format!(r#"api_id="{API_ID}", stage="{STAGE}""#);
    let expected: Vec<(String, f64)> = vec![
        (r#"up{job="connection-host"}"#.into(), 1.0),
        (
            format!("connection_host_connections{{{labels}}}"),
            CONNECTS as f64,
        ),
        (
            format!(r#"connection_host_handshakes{{{labels}, outcome="accepted"}}"#),
            CONNECTS as f64,
        ),
        (format!("ConnectCount{{{labels}}}"), CONNECTS as f64),
        (
            format!(r#"MessageCount{{{labels}, route="$default"}}"#),
            MESSAGES as f64,
        ),
        (format!(r#"MessageCount{{{labels}, route="fail"}}"#), 1.0),
        (
            format!(r#"MessageCount{{{labels}, route="@connections"}}"#),
            POSTS as f64,
        ),
        (format!(r#"MessageCount{{{labels}, route="down"}}"#), 1.0),
        (
            format!(r#"IntegrationError{{{labels}, route="fail"}}"#),
            1.0,
        ),
        (format!(r#"sum(IntegrationError{{{labels}}})"#), 1.0),
        (format!(r#"ExecutionError{{{labels}, route="down"}}"#), 1.0),
        (format!(r#"sum(ExecutionError{{{labels}}})"#), 1.0),
        (format!(r#"sum(ClientError{{{labels}}})"#), 0.0),
        (
            format!(r#"connection_host_messages{{{labels}, direction="in"}}"#),
            (MESSAGES + 2) as f64,
        ),
        // The posts, and the `Internal server error` frame of the unreachable integration (a one-way
        // route's statusCode 500 sends nothing).
        (
            format!(r#"connection_host_messages{{{labels}, direction="out"}}"#),
            (POSTS + 1) as f64,
        ),
        (
            format!(
                r#"connection_host_management_calls{{{labels}, operation="PostToConnection", status="200"}}"#
            ),
            POSTS as f64,
        ),
        (
            format!(r#"IntegrationLatency_count{{{labels}, route="$default"}}"#),
            MESSAGES as f64,
        ),
        (
            format!(r#"sum(IntegrationLatency_count{{{labels}}})"#),
            (CONNECTS + MESSAGES + 2) as f64,
        ),
    ];
    let mut last = Vec::new();
    let matched = tokio::time::timeout(PROMETHEUS_WAIT, async {
        loop {
            last.clear();
            for (expr, _) in &expected {
                last.push(prometheus.scalar(expr).await);
            }
            if expected
                .iter()
                .zip(&last)
                .all(|((_, want), got)| *got == Some(*want))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    if matched.is_err() {
        let report: Vec<String> = expected
            .iter()
            .zip(&last)
            .map(|((expr, want), got)| format!("{expr}: want {want}, Prometheus has {got:?}"))
            .collect();
        panic!(
            "Prometheus's values did not reach what the test did within {PROMETHEUS_WAIT:?}:\n{}",
            report.join("\n")
        );
    }

    // A latency quantile as the dashboard computes it: some positive number of milliseconds.
    let p95 = prometheus
        .scalar(&format!(
            "histogram_quantile(0.95, sum by (le) (IntegrationLatency_bucket{{{labels}}}))"
        ))
        .await
        .expect("a p95 of IntegrationLatency");
    assert!(p95 > 0.0, "p95 of IntegrationLatency: {p95}");

    // Every panel's expression is valid PromQL over these series.
    let exprs = dashboard_expressions();
    assert!(exprs.len() >= 20, "dashboard expressions: {}", exprs.len());
    for (title, expr) in &exprs {
        if let Err(e) = prometheus.api("query", &[("query", expr)]).await {
            panic!("dashboard panel '{title}': prometheus cannot evaluate {expr}: {e}");
        }
    }

    // Every alert rule has been evaluated, without error.
    let rules = eventually_some("every alert rule evaluated", PROMETHEUS_WAIT, async || {
        let data = prometheus.api("rules", &[]).await.ok()?;
        let rules: Vec<Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules
            .iter()
            .all(|r| r["health"] != "unknown")
            .then_some(rules)
    })
    .await;
    let alerts_yml = std::fs::read_to_string(repository_file("infra/monitoring/alerts.yml"))
        .expect("read alerts.yml");
    let declared = alerts_yml
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(rules.len(), declared, "alert rules loaded: {rules:?}");
    for rule in &rules {
        assert_eq!(
            rule["health"], "ok",
            "alert {} does not evaluate: {}",
            rule["name"], rule["lastError"]
        );
    }
    // Open until here, for connection_host_connections.
    drop(clients);
}
