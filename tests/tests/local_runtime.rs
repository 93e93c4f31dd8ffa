//! The host's local Lambda runtime with real `lambda_http` binaries (the `faulty` test function
//! of this crate): `$connect` decided by a handler, crashes, panics, hangs and failed starts, and
//! the Lambda Invoke API driven by the official `aws-sdk-lambda` client.

use futures_util::SinkExt;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use test_kit::{
    HostProcess, TempDir, Ws, eventually, free_loopback_addrs, lambda_client, metric,
    next_text_within, scrape, start_host, workspace_binary, ws_connect,
};
use tokio_tungstenite::tungstenite::Message;

/// A host process running `faulty` under its local runtime.
struct Local {
    host: HostProcess,
    addr: SocketAddr,
    _dir: TempDir,
}

/// Starts a host whose `$connect` and `$default` (two-way, 1 s integration timeout) go to
/// `faulty` (2 s function timeout), with `extra` appended to `[functions.faulty]`.
async fn start(name: &str, extra: &str) -> Local {
    start_with_timeout(name, "2s", extra).await
}

/// [`start`] with another function `timeout`.
async fn start_with_timeout(name: &str, timeout: &str, extra: &str) -> Local {
    let dir = TempDir::new(name);
    let addr = free_loopback_addrs(1)[0];
    let command = workspace_binary("faulty");
    let config = format!(
        r#"
[server]
listen = "{addr}"
drain_timeout = "2s"

[routes."$connect"]
integration = "faulty"

[routes."$default"]
integration = "faulty"
two_way = true
timeout = "1s"

[integrations.faulty]
type = "lambda"
function_name = "faulty"

[functions.faulty]
command = "{command}"
timeout = "{timeout}"
{extra}
"#,
        command = command.display()
    );
    let host = start_host(name, dir.path(), addr, &config, &[("RUST_LOG", "info")]).await;
    Local {
        host,
        addr,
        _dir: dir,
    }
}

async fn connect(addr: SocketAddr, query: &str) -> Result<Ws, u16> {
    ws_connect(&format!("ws://{addr}/dev{query}")).await
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

/// The gateway error frame's message, checking it is one (`{"message": …, "connectionId":…}`).
fn error_message(frame: &str) -> String {
    let v: Value = serde_json::from_str(frame).unwrap_or_else(|_| panic!("not JSON: {frame}"));
    assert!(
        v.get("connectionId").is_some(),
        "not an error frame: {frame}"
    );
    v["message"].as_str().unwrap_or_default().to_string()
}

/// The `faulty` function's echo reply: the process ID that answered.
fn echo_pid(frame: &str) -> u64 {
    let v: Value = serde_json::from_str(frame).unwrap_or_else(|_| panic!("not JSON: {frame}"));
    assert!(v.get("echo").is_some(), "not an echo reply: {frame}");
    v["pid"].as_u64().expect("pid")
}

#[tokio::test]
async fn a_real_handler_accepts_or_rejects_connect_and_answers_messages() {
    let local = start("runtime-connect", "").await;
    assert_eq!(connect(local.addr, "?reject=1").await.err(), Some(403));
    let mut ws = connect(local.addr, "?name=a").await.expect("accepted");
    send(&mut ws, r#"{"action":"hello"}"#).await;
    let reply = next_text_within(&mut ws, Duration::from_secs(10)).await;
    let v: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(v["echo"], r#"{"action":"hello"}"#);
    let log = local.host.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("faulty handling hello") && l.contains("function=faulty")),
        "the function's output is not in the host log, named by the function:\n{log}"
    );
}

#[tokio::test]
async fn crashes_and_panics_give_internal_server_error_and_the_function_recovers() {
    let local = start("runtime-crash", "").await;
    let mut ws = connect(local.addr, "").await.expect("accepted");
    send(&mut ws, r#"{"action":"first"}"#).await;
    let first_pid = echo_pid(&next_text_within(&mut ws, Duration::from_secs(10)).await);

    // A panic is caught by the runtime and reported as a function error; the process lives on.
    send(&mut ws, r#"{"action":"panic"}"#).await;
    let frame = next_text_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(error_message(&frame), "Internal server error");
    send(&mut ws, r#"{"action":"after-panic"}"#).await;
    assert_eq!(
        echo_pid(&next_text_within(&mut ws, Duration::from_secs(5)).await),
        first_pid
    );

    // A returned error is a function error too.
    send(&mut ws, r#"{"action":"error"}"#).await;
    assert_eq!(
        error_message(&next_text_within(&mut ws, Duration::from_secs(5)).await),
        "Internal server error"
    );

    // The process exiting mid-invocation fails that invocation; a new process takes the next one.
    send(&mut ws, r#"{"action":"exit"}"#).await;
    assert_eq!(
        error_message(&next_text_within(&mut ws, Duration::from_secs(5)).await),
        "Internal server error"
    );
    send(&mut ws, r#"{"action":"after-exit"}"#).await;
    let frame = next_text_within(&mut ws, Duration::from_secs(5)).await;
    let new_pid = echo_pid(&frame);
    assert_ne!(new_pid, first_pid, "the crashed process was not replaced");
    // Only the exit was a crash: the panics were answered as function errors.
    let e = scrape(&format!("http://{}", local.addr)).await;
    let crashed = [("function", "faulty"), ("outcome", "crash")];
    assert_eq!(e.sum("connection_host_function_invocations", &crashed), 1.0);
    assert_eq!(
        e.sum(
            "connection_host_function_crashes",
            &[("function", "faulty")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_hanging_handler_times_out_and_is_restarted_after_its_deadline() {
    let local = start("runtime-hang", "").await;
    let mut ws = connect(local.addr, "").await.expect("accepted");
    send(&mut ws, r#"{"action":"first"}"#).await;
    let first_pid = echo_pid(&next_text_within(&mut ws, Duration::from_secs(10)).await);

    // The route's 1 s integration timeout answers first; the function's own 2 s deadline then
    // kills the process, and the next message is served by its replacement.
    let started = std::time::Instant::now();
    send(&mut ws, r#"{"action":"hang"}"#).await;
    let frame = next_text_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(error_message(&frame), "Endpoint request timed out");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The host kills the hung process at its deadline and counts it; the next message waits for
    // the replacement.
    let base = format!("http://{}", local.addr);
    let timed_out = [("function", "faulty"), ("outcome", "timeout")];
    eventually(
        "the hung process killed at its deadline",
        Duration::from_secs(10),
        async || metric(&base, "connection_host_function_invocations", &timed_out).await >= 1.0,
    )
    .await;
    send(&mut ws, r#"{"action":"after-hang"}"#).await;
    let pid = echo_pid(&next_text_within(&mut ws, Duration::from_secs(5)).await);
    assert_ne!(
        pid, first_pid,
        "the hung process was not killed and replaced"
    );
    let e = scrape(&base).await;
    assert_eq!(
        e.sum("connection_host_function_invocations", &timed_out),
        1.0
    );
    // The hung process was killed, not counted as a crash; its replacement started cold.
    assert_eq!(e.sum("connection_host_function_crashes", &[]), 0.0);
    assert_eq!(e.sum("connection_host_function_cold_starts", &[]), 2.0);
}

#[tokio::test]
async fn a_function_that_cannot_start_fails_invocations_at_once() {
    let local = start(
        "runtime-init",
        r#"environment = { FAULTY_FAIL_INIT = "1" }"#,
    )
    .await;
    // No $connect answer is possible: the handler's failure is a function error, so 502.
    assert_eq!(connect(local.addr, "").await.err(), Some(502));
    // The host logs the process's stderr as it reads it, which may finish after the 502.
    eventually(
        "the function's stderr in the host's log",
        Duration::from_secs(5),
        || async { local.host.log_text().contains("FAULTY_FAIL_INIT is set") },
    )
    .await;
}

#[tokio::test]
async fn the_invoke_api_behaves_like_lambda_for_the_official_sdk() {
    use aws_sdk_lambda::primitives::Blob;
    use aws_sdk_lambda::types::InvocationType;
    let local = start("runtime-invoke", "").await;
    let lambda = lambda_client(local.addr).await;
    let event =
        include_str!("../../connection-host/tests/fixtures/apiGatewayWebSocketApiMessage.json");
    let out = lambda
        .invoke()
        .function_name("faulty")
        .payload(Blob::new(event))
        .send()
        .await
        .expect("invoke");
    assert_eq!(out.status_code(), 200);
    assert_eq!(out.function_error(), None);
    assert_eq!(out.executed_version(), Some("$LATEST"));
    let response: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
    assert_eq!(response["statusCode"], 200, "{response}");

    // A function error is a 200 with X-Amz-Function-Error and Lambda's error payload.
    let mut failing: Value = serde_json::from_str(event).unwrap();
    failing["body"] = r#"{"action":"error"}"#.into();
    let out = lambda
        .invoke()
        .function_name("arn:aws:lambda:us-east-1:000000000000:function:faulty")
        .payload(Blob::new(failing.to_string()))
        .send()
        .await
        .expect("invoke");
    assert_eq!(out.status_code(), 200);
    assert_eq!(out.function_error(), Some("Unhandled"));
    let error: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
    assert_eq!(error["errorMessage"], "asked to fail", "{error}");

    let out = lambda
        .invoke()
        .function_name("faulty")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(event))
        .send()
        .await
        .expect("async invoke");
    assert_eq!(out.status_code(), 202);

    let err = lambda
        .invoke()
        .function_name("missing")
        .payload(Blob::new("{}"))
        .send()
        .await
        .expect_err("unknown function");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_resource_not_found_exception()),
        "{err:?}"
    );
}

/// One `sleep` invocation's reply from `faulty`: which process served it, and when.
#[derive(Debug, Clone, Copy)]
struct Served {
    pid: u64,
    started_ms: u64,
    finished_ms: u64,
}

/// The API Gateway message event asking `faulty` to sleep `ms` milliseconds.
fn sleep_event(ms: u64) -> String {
    let event =
        include_str!("../../connection-host/tests/fixtures/apiGatewayWebSocketApiMessage.json");
    let mut event: Value = serde_json::from_str(event).unwrap();
    event["body"] = serde_json::json!({"action": "sleep", "ms": ms})
        .to_string()
        .into();
    event.to_string()
}

/// Invokes `faulty` through the Invoke API and reads the `sleep` reply out of its proxy response.
async fn invoke_sleep(lambda: &aws_sdk_lambda::Client, ms: u64) -> Served {
    let out = lambda
        .invoke()
        .function_name("faulty")
        .payload(aws_sdk_lambda::primitives::Blob::new(sleep_event(ms)))
        .send()
        .await
        .expect("invoke");
    assert_eq!(out.function_error(), None);
    let response: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
    let body: Value = serde_json::from_str(response["body"].as_str().expect("body")).unwrap();
    Served {
        pid: body["pid"].as_u64().expect("pid"),
        started_ms: body["started_ms"].as_u64().expect("started_ms"),
        finished_ms: body["finished_ms"].as_u64().expect("finished_ms"),
    }
}

/// Waits until `count` processes of `faulty` have reached the Runtime API's `next` (counted as
/// cold starts), so every one of them can take an invocation.
async fn wait_for_processes(local: &Local, count: usize) {
    let what = format!("{count} processes started");
    let base = format!("http://{}", local.addr);
    eventually(&what, Duration::from_secs(10), async || {
        let started = metric(&base, "connection_host_function_cold_starts", &[]).await;
        started >= count as f64
    })
    .await;
}

/// Three simultaneous 500 ms invocations, their replies in the order they started, and the wall
/// time the three took together.
async fn three_at_once(lambda: &aws_sdk_lambda::Client) -> (Vec<Served>, Duration) {
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        invoke_sleep(lambda, 500),
        invoke_sleep(lambda, 500),
        invoke_sleep(lambda, 500)
    );
    let elapsed = started.elapsed();
    let mut served = vec![a, b, c];
    served.sort_by_key(|s| s.started_ms);
    (served, elapsed)
}

#[tokio::test]
async fn concurrency_three_serves_three_invocations_at_once_in_three_processes() {
    let local = start("runtime-concurrency-3", "concurrency = 3").await;
    wait_for_processes(&local, 3).await;
    let lambda = lambda_client(local.addr).await;
    let (served, elapsed) = three_at_once(&lambda).await;
    let pids: std::collections::BTreeSet<u64> = served.iter().map(|s| s.pid).collect();
    assert_eq!(pids.len(), 3, "not three processes: {served:?}");
    // Every invocation started before any of them finished: all three ran at the same time.
    let first_finished = served.iter().map(|s| s.finished_ms).min().unwrap();
    assert!(
        served[2].started_ms < first_finished,
        "the invocations did not overlap: {served:?}"
    );
    // Served one after another they would take 1.5 s.
    assert!(
        elapsed < Duration::from_millis(1200),
        "three concurrent 500 ms invocations took {elapsed:?}"
    );
}

#[tokio::test]
async fn concurrency_one_serves_simultaneous_invocations_one_after_another() {
    let local = start("runtime-concurrency-1", "concurrency = 1").await;
    wait_for_processes(&local, 1).await;
    let lambda = lambda_client(local.addr).await;
    let (served, elapsed) = three_at_once(&lambda).await;
    assert!(
        served.iter().all(|s| s.pid == served[0].pid),
        "more than one process: {served:?}"
    );
    for pair in served.windows(2) {
        assert!(
            pair[1].started_ms >= pair[0].finished_ms,
            "invocations overlapped in one process: {served:?}"
        );
    }
    assert!(
        elapsed >= Duration::from_millis(1500),
        "three queued 500 ms invocations took only {elapsed:?}"
    );
}

/// Invocations of `faulty` that failed: here, `Event` invocations refused with the queue full.
async fn refused_events(local: &Local) -> f64 {
    let base = format!("http://{}", local.addr);
    let failed = [("function", "faulty"), ("outcome", "error")];
    metric(&base, "connection_host_function_invocations", &failed).await
}

#[tokio::test]
async fn a_busy_function_queues_1024_invocations_and_throttles_the_next() {
    use aws_sdk_lambda::primitives::Blob;
    use aws_sdk_lambda::types::InvocationType;
    // The one process sleeps 30 s in its first invocation, far longer than the test takes, so
    // nothing leaves the queue while it is filled. A sleep rather than a `hang`: the host is killed
    // at the end, and a sleeping process notices its Runtime API is gone and exits by itself.
    let local = start_with_timeout("runtime-queue-full", "60s", "concurrency = 1").await;
    wait_for_processes(&local, 1).await;
    let lambda = lambda_client(local.addr).await;
    // Throttling is retried by the SDK by default; the test wants to see the first answer.
    let lambda = aws_sdk_lambda::Client::from_conf(
        lambda
            .config()
            .to_builder()
            .retry_config(aws_sdk_lambda::config::retry::RetryConfig::disabled())
            .build(),
    );
    let busy = sleep_event(30_000);
    let event = |lambda: aws_sdk_lambda::Client, payload: String| async move {
        let out = lambda
            .invoke()
            .function_name("faulty")
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await
            .expect("async invoke");
        assert_eq!(out.status_code(), 202);
    };

    event(lambda.clone(), busy.clone()).await;
    eventually(
        "the process to take an invocation",
        Duration::from_secs(10),
        async || local.host.log_text().contains("faulty handling sleep"),
    )
    .await;

    // The process is busy: 1024 more wait in the queue, and the one after them is refused.
    for _ in 0..(1024 / 32) {
        futures_util::future::join_all((0..32).map(|_| event(lambda.clone(), busy.clone()))).await;
    }
    event(lambda.clone(), busy.clone()).await;
    eventually(
        "an Event invocation refused",
        Duration::from_secs(10),
        async || refused_events(&local).await > 0.0,
    )
    .await;
    // A window in which no second refusal may appear (nothing to wait for).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        refused_events(&local).await,
        1.0,
        "the queue did not hold exactly 1024:\n{}",
        local.host.log_text()
    );

    // A synchronous call now is throttled at once, as Lambda throttles, instead of waiting.
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        lambda
            .invoke()
            .function_name("faulty")
            .payload(Blob::new(sleep_event(0)))
            .send(),
    )
    .await
    .expect("a call to a full queue waited instead of being throttled")
    .expect_err("a call to a full queue succeeded");
    let service = err.as_service_error().unwrap_or_else(|| panic!("{err:?}"));
    assert!(service.is_too_many_requests_exception(), "{err:?}");
    assert!(
        service
            .to_string()
            .contains("1024 invocations of faulty already waiting"),
        "{service}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
