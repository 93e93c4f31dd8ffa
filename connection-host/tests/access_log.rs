//! Access logs and traces, over real sockets: each event's access log line reports what its
//! client saw, and each event's `X-Amzn-Trace-Id` reaches the HTTP integration.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What the integration received: each event with its `X-Amzn-Trace-Id` header.
type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// An HTTP integration recording every event with its trace header. CONNECT `?status=N`
/// answers statusCode N; action `fail` answers HTTP 500; anything else a 200 with body `ok`.
async fn recording_handler() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |headers: http::HeaderMap, body: String| {
        let recorded = recorded.clone();
        async move {
            let event: Value = serde_json::from_str(&body).unwrap();
            let trace = headers
                .get("x-amzn-trace-id")
                .map(|v| v.to_str().unwrap().to_string());
            recorded.lock().unwrap().push((trace, event.clone()));
            if let Some(status) = query_param(&event, "status") {
                let status: u16 = status.parse().unwrap();
                return (
                    http::StatusCode::OK,
                    json!({ "statusCode": status }).to_string(),
                );
            }
            if action(&event).as_deref() == Some("fail") {
                return (http::StatusCode::INTERNAL_SERVER_ERROR, "{}".to_string());
            }
            let ok = json!({"statusCode": 200, "body": "ok"});
            (http::StatusCode::OK, ok.to_string())
        }
    });
    (format!("{}/events", serve(app).await), seen)
}

fn temp_log() -> PathBuf {
    std::env::temp_dir().join(format!(
        "access-log-test-{}-{}.log",
        std::process::id(),
        connection_host::ids::new_id()
    ))
}

fn config(url: &str, log: &std::path::Path, format: Option<&str>) -> String {
    let format = format
        .map(|f| format!("format = '{f}'"))
        .unwrap_or_default();
    format!(
        r#"
[access_log]
enabled = true
destination = "{}"
{format}
[routes."$connect"]
integration = "h"
[routes."$disconnect"]
integration = "h"
[routes.hello]
integration = "h"
two_way = true
[routes.fail]
integration = "h"
two_way = true
[integrations.h]
type = "http"
url = "{url}"
{WHOAMI}"#,
        log.display()
    )
}

/// Stops the host (its writer writes every queued line first) and reads the log.
async fn lines_after_shutdown(mut host: TestHost, log: &std::path::Path) -> String {
    host.trigger_shutdown();
    host.join().await.expect("the host stops cleanly");
    let text = std::fs::read_to_string(log).expect("the access log was written");
    std::fs::remove_file(log).unwrap();
    text
}

async fn whoami(ws: &mut Ws) -> String {
    send_text(ws, r#"{"action":"whoami"}"#).await;
    let reply: Value = serde_json::from_str(&next_text(ws).await).unwrap();
    reply["connectionId"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_event_has_a_line_reporting_what_its_client_saw() {
    let (url, seen) = recording_handler().await;
    let log = temp_log();
    let host = TestHost::start(&config(&url, &log, None)).await;
    let client_trace = "Root=1-6731ebfc-08e1e656421db73c5d2eef31;Parent=53995c3f42cd8ad8;Sampled=1";
    let (mut ws, _) = try_connect(
        host.addr,
        "/dev",
        &[("X-Amzn-Trace-Id", client_trace)],
        None,
    )
    .await
    .expect("accepted");
    let id = whoami(&mut ws).await;
    send_text(&mut ws, r#"{"action":"hello"}"#).await;
    assert_eq!(next_text(&mut ws).await, "ok");
    let mut error_frame = async |body: &str| -> Value {
        send_text(&mut ws, body).await;
        serde_json::from_str(&next_text(&mut ws).await).unwrap()
    };
    let failed = error_frame(r#"{"action":"fail"}"#).await;
    assert_eq!(failed["message"], "Internal server error");
    let unrouted = error_frame(r#"{"action":"nowhere"}"#).await;
    assert_eq!(unrouted["message"], "Forbidden");
    ws.close(None).await.unwrap();
    let refused = try_connect(host.addr, "/dev?status=403", &[], None).await;
    assert_eq!(refused_status(refused), 403);
    // The $disconnect has run once the integration saw it: its line is queued before shutdown.
    eventually("$disconnect delivered", WAIT, async || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(_, e)| route(e) == "$disconnect")
    })
    .await;

    let text = lines_after_shutdown(host, &log).await;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of = |route: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["routeKey"] == route && l["connectionId"] == id.as_str())
            .collect()
    };
    let root = "1-6731ebfc-08e1e656421db73c5d2eef31";
    let connect = of("$connect");
    assert_eq!(connect.len(), 1, "{text}");
    assert_eq!(connect[0]["eventType"], "CONNECT");
    assert_eq!(connect[0]["status"], "200");
    assert_eq!(connect[0]["ip"], "127.0.0.1");
    assert_eq!(connect[0]["caller"], "-");
    assert_eq!(connect[0]["errorMessage"], "-");
    assert_eq!(connect[0]["xrayTraceId"], root);
    let ms: u64 = connect[0]["integrationLatency"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms < 30_000);
    for (route, status, error) in [
        ("whoami", "200", "-"),
        ("hello", "200", "-"),
        ("fail", "502", "Internal server error"),
        ("$default", "403", "Forbidden"),
    ] {
        let line = of(route);
        assert_eq!(line.len(), 1, "{route}: {text}");
        assert_eq!(line[0]["eventType"], "MESSAGE");
        assert_eq!(line[0]["status"], status, "{route}");
        assert_eq!(line[0]["errorMessage"], error, "{route}");
        assert_eq!(line[0]["xrayTraceId"], root, "{route}");
    }
    // The request IDs are the ones the client's error frames named.
    assert_eq!(of("fail")[0]["requestId"], failed["requestId"]);
    assert_eq!(of("$default")[0]["requestId"], unrouted["requestId"]);
    assert_eq!(
        of("$default")[0]["integrationLatency"],
        "-",
        "nothing invoked"
    );
    let disconnect = of("$disconnect");
    assert_eq!(disconnect.len(), 1, "{text}");
    assert_eq!(disconnect[0]["eventType"], "DISCONNECT");
    assert_eq!(disconnect[0]["status"], "200");
    // The refused attempt has its line too, with the status its client got.
    let refusals: Vec<&Value> = lines
        .iter()
        .filter(|l| l["eventType"] == "CONNECT" && l["status"] == "403")
        .collect();
    assert_eq!(refusals.len(), 1, "{text}");
    assert_ne!(refusals[0]["connectionId"], id.as_str());
    assert_eq!(lines.len(), 7, "{text}");

    // Every event of the connection reached the integration with the client's trace.
    let seen = seen.lock().unwrap();
    let of_connection: Vec<_> = seen.iter().filter(|(_, e)| conn_id(e) == id).collect();
    assert_eq!(of_connection.len(), 4, "connect, hello, fail, disconnect");
    for (trace, event) in of_connection {
        assert_eq!(trace.as_deref(), Some(client_trace), "{event}");
    }
}

/// `Root=1-{8 hex}-{24 hex}`.
fn is_generated_trace(trace: &str) -> bool {
    regex_lite::Regex::new("^Root=1-[0-9a-f]{8}-[0-9a-f]{24}$")
        .unwrap()
        .is_match(trace)
}

#[tokio::test]
async fn without_a_valid_client_trace_each_event_gets_its_own_in_a_custom_format() {
    let (url, seen) = recording_handler().await;
    let log = temp_log();
    let format = "$context.requestId $context.eventType $context.routeKey $context.status [$context.xrayTraceId] $context.disconnectStatusCode";
    let host = TestHost::start(&config(&url, &log, Some(format))).await;
    // Not an X-Ray header: not passed on.
    let (mut ws, _) = try_connect(
        host.addr,
        "/dev",
        &[("X-Amzn-Trace-Id", "Root=1-nope")],
        None,
    )
    .await
    .expect("accepted");
    for _ in 0..2 {
        send_text(&mut ws, r#"{"action":"hello"}"#).await;
        assert_eq!(next_text(&mut ws).await, "ok");
    }
    ws.close(None).await.unwrap();
    eventually("$disconnect delivered", WAIT, async || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(_, e)| route(e) == "$disconnect")
    })
    .await;
    let text = lines_after_shutdown(host, &log).await;

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4, "connect, two messages, disconnect");
    let mut traces = std::collections::BTreeSet::new();
    for (trace, event) in seen.iter() {
        let trace = trace.as_deref().expect("every event carries a trace");
        assert!(is_generated_trace(trace), "{trace}");
        traces.insert(trace.to_string());
        // The event's line names the same request and the same trace.
        let request_id = event["requestContext"]["requestId"].as_str().unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(request_id))
            .unwrap_or_else(|| panic!("no line for {request_id}: {text}"));
        let root = trace.strip_prefix("Root=").unwrap();
        assert!(line.contains(&format!("[{root}]")), "{line} / {trace}");
    }
    assert_eq!(traces.len(), 4, "a new trace per event");
    // The CONNECT event's own header is the trace it was sent with.
    let (trace, connect) = &seen[0];
    assert_eq!(
        connect["headers"]["X-Amzn-Trace-Id"].as_str(),
        trace.as_deref()
    );
    let last = text.lines().last().unwrap();
    assert!(last.contains(" DISCONNECT $disconnect 200 ["), "{text}");
    // A Close frame without a code: $disconnect's 1005.
    assert!(last.ends_with("] 1005"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
}

/// A local function (a shell script speaking the Lambda Runtime API) answering each message with
/// the `Lambda-Runtime-Trace-Id` its `next` carried: what `lambda_runtime` sets as
/// `_X_AMZN_TRACE_ID` in a real handler.
const TRACE_REPORTER: &str = r#"
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
head=$(mktemp)
while true; do
  curl -sf -D "$head" -o /dev/null "$api/invocation/next" || exit 1
  id=$(grep -i '^lambda-runtime-aws-request-id:' "$head" | cut -d' ' -f2 | tr -d '\r')
  trace=$(grep -i '^lambda-runtime-trace-id:' "$head" | cut -d' ' -f2 | tr -d '\r')
  curl -sf -o /dev/null -X POST "$api/invocation/$id/response" -d "{\"statusCode\":200,\"body\":\"$trace\"}"
done
"#;

#[tokio::test]
async fn a_local_function_runs_in_the_trace_the_client_sent() {
    let config = format!(
        r#"
[routes.trace]
integration = "local"
two_way = true
[integrations.local]
type = "lambda"
function_name = "tracer"
[functions.tracer]
command = "sh"
args = ["-c", '''{TRACE_REPORTER}''']
"#
    );
    let host = TestHost::start(&config).await;
    let client_trace = "Root=1-6731ebfc-08e1e656421db73c5d2eef31;Sampled=0";
    let (mut ws, _) = try_connect(
        host.addr,
        "/dev",
        &[("X-Amzn-Trace-Id", client_trace)],
        None,
    )
    .await
    .expect("accepted");
    send_text(&mut ws, r#"{"action":"trace"}"#).await;
    assert_eq!(
        next_text_within(&mut ws, std::time::Duration::from_secs(30)).await,
        client_trace
    );
    // Without a client trace, the function still runs in one of its own.
    let mut other = connect(host.addr).await;
    send_text(&mut other, r#"{"action":"trace"}"#).await;
    let generated = next_text_within(&mut other, std::time::Duration::from_secs(30)).await;
    assert!(is_generated_trace(&generated), "{generated}");
}

#[tokio::test]
async fn the_lambda_invoke_api_receives_the_trace_header() {
    let (url, seen) = recording_handler().await;
    // The recording handler answers any path, the Invoke API's included.
    let endpoint = url.trim_end_matches("/events");
    let config = format!(
        r#"
[routes.hello]
integration = "remote"
two_way = true
[integrations.remote]
type = "lambda"
function_name = "hello"
endpoint_url = "{endpoint}"
"#
    );
    let host = TestHost::start(&config).await;
    let client_trace = "Root=1-6731ebfc-08e1e656421db73c5d2eef31;Parent=53995c3f42cd8ad8;Sampled=1";
    let (mut ws, _) = try_connect(
        host.addr,
        "/dev",
        &[("X-Amzn-Trace-Id", client_trace)],
        None,
    )
    .await
    .expect("accepted");
    send_text(&mut ws, r#"{"action":"hello"}"#).await;
    assert_eq!(next_text(&mut ws).await, "ok");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.as_deref(), Some(client_trace));
    assert_eq!(route(&seen[0].1), "hello");
}

#[tokio::test]
async fn a_reliable_clients_message_has_its_line() {
    let (url, seen) = recording_handler().await;
    let log = temp_log();
    let format = "$context.requestId $context.eventType $context.routeKey $context.status $context.connectionId";
    let config = format!(
        "{}\n[extensions.sessions]\nenabled = true\n",
        config(&url, &log, Some(format))
    );
    let host = TestHost::start(&config).await;
    let (mut ws, welcome) = reliable_connect(host.addr, None).await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    send_frame(
        &mut ws,
        json!({"t":"msg","id":"k1","d":r#"{"action":"hello"}"#}),
    )
    .await;
    assert_eq!(next_frame(&mut ws).await["d"], "ok");
    send_frame(
        &mut ws,
        json!({"t":"msg","id":"k2","d":r#"{"action":"nowhere"}"#}),
    )
    .await;
    let refused = next_frame(&mut ws).await;
    assert_eq!(refused["error"]["message"], "Forbidden", "{refused}");
    drop(ws);
    let text = lines_after_shutdown(host, &log).await;
    let hello = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(_, e)| route(e) == "hello")
        .map(|(_, e)| {
            e["requestContext"]["requestId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .expect("hello invoked");
    assert!(
        text.contains(&format!("{hello} MESSAGE hello 200 {id}\n")),
        "{text}"
    );
    let forbidden = refused["error"]["requestId"].as_str().unwrap();
    assert!(
        text.contains(&format!("{forbidden} MESSAGE $default 403 {id}\n")),
        "{text}"
    );
}
