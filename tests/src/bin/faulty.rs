//! A real `lambda_http` handler that misbehaves on request, for the local runtime's tests.
//!
//! `$connect`: rejected with 403 when the query string has `reject`. Messages (`{"action": …}`):
//! `panic` panics in the handler, `exit` ends the process, `hang` never answers, `error` returns an
//! error; `{"action": "sleep", "ms": N}` answers after N ms with `started_ms` and `finished_ms`
//! (Unix epoch milliseconds) beside the echo, so tests can see which invocations overlapped;
//! anything else is answered with `{"echo": <body>, "pid": <process id>}`. Each process prints
//! `faulty started pid=N` before it asks for its first invocation. With `FAULTY_FAIL_INIT=1` in
//! the environment the process fails before reaching the runtime loop.

use lambda_http::request::RequestContext;
use lambda_http::{Body, Error, Request, RequestExt, Response, run, service_fn};

async fn handle(request: Request) -> Result<Response<Body>, Error> {
    let RequestContext::WebSocket(context) = request.request_context() else {
        return Err("not a WebSocket event".into());
    };
    if context.event_type.as_deref() == Some("CONNECT") {
        let status = if request.query_string_parameters().first("reject").is_some() {
            403
        } else {
            200
        };
        return Ok(Response::builder().status(status).body(Body::Empty)?);
    }
    let body = std::str::from_utf8(request.body())
        .unwrap_or_default()
        .to_string();
    let action = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("action").and_then(|a| a.as_str()).map(str::to_string));
    // Goes to the host's log, named by the function, as Lambda sends it to CloudWatch.
    println!("faulty handling {}", action.as_deref().unwrap_or("?"));
    match action.as_deref() {
        Some("panic") => panic!("asked to panic"),
        Some("exit") => std::process::exit(3),
        Some("hang") => std::future::pending().await,
        Some("error") => Err("asked to fail".into()),
        Some("sleep") => {
            let ms = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("ms").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            let started_ms = epoch_ms();
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            let reply = serde_json::json!({
                "echo": body,
                "pid": std::process::id(),
                "started_ms": started_ms,
                "finished_ms": epoch_ms(),
            });
            Ok(Response::new(Body::from(reply.to_string())))
        }
        _ => {
            let reply = serde_json::json!({"echo": body, "pid": std::process::id()});
            Ok(Response::new(Body::from(reply.to_string())))
        }
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::var("FAULTY_FAIL_INIT").as_deref() == Ok("1") {
        return Err("FAULTY_FAIL_INIT is set: failing initialization".into());
    }
    println!("faulty started pid={}", std::process::id());
    run(service_fn(handle)).await
}
