//! `echo-http` and `echo-lambda`: the closed echo loop through an `http` integration and through
//! the local Lambda runtime running the real `echo` function.

use crate::*;

/// The handler: parses the event JSON, answers a proxy response whose body is the event's body.
async fn handler(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let answer = serde_json::json!({ "statusCode": 200, "body": event["body"] });
    Ok(hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .expect("static response"))
}

/// Starts the in-process HTTP handler server; returns its port.
async fn start_handler_server() -> Res<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper::service::service_fn(handler),
                    )
                    .await;
            });
        }
    });
    Ok(port)
}

pub(crate) async fn echo_http(o: &Opts) -> Res<Vec<Row>> {
    let hport = start_handler_server().await?;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{{PORT}}"

[routes."$default"]
integration = "handler"
two_way = true

[integrations.handler]
type = "http"
url = "http://127.0.0.1:{hport}/"
"#
    );
    let host = HostProc::start(&o.host_bin, "echo", &config).await?;
    let mut rows = Vec::new();
    for conns in [100, 1] {
        let figures = echo_loop(host.port, "/dev", conns, o.duration).await?;
        let target = (conns == 100).then_some((10_000.0, 20_000));
        let row = echo_row(
            "echo-http",
            "closed-loop echo via $default → HTTP handler (in-process hyper)",
            conns,
            figures,
            target,
        );
        rows.push(row);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    host.report_log();
    Ok(rows)
}

/// Processes the `echo` function runs as in `echo-lambda` (Lambda's concurrency).
const ECHO_LAMBDA_CONCURRENCY: u32 = 4;

pub(crate) async fn echo_lambda(o: &Opts) -> Res<Vec<Row>> {
    let echo = o.host_bin.with_file_name("echo");
    if !echo.is_file() {
        return Err(format!(
            "{} is missing: cargo build --release -p ws-handler --bin echo",
            echo.display()
        )
        .into());
    }
    // One-way route: the function's PostToConnection is the only reply, as in a deployed echo.
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{{PORT}}"

[routes."$default"]
integration = "echo"

[integrations.echo]
type = "lambda"
function_name = "echo"

[functions.echo]
command = "{}"
concurrency = {ECHO_LAMBDA_CONCURRENCY}
environment = {{ RUST_LOG = "warn" }}
"#,
        echo.display()
    );
    let host = HostProc::start(&o.host_bin, "echo-lambda", &config).await?;
    let mut rows = Vec::new();
    for conns in [100, 1] {
        let figures = echo_loop(host.port, "/dev", conns, o.duration).await?;
        let row = echo_row(
            "echo-lambda",
            &format!(
                "closed-loop echo via $default → local Lambda runtime → `echo` function \
                 ({ECHO_LAMBDA_CONCURRENCY} processes) → PostToConnection"
            ),
            conns,
            figures,
            None,
        );
        rows.push(row);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    host.report_log();
    Ok(rows)
}
