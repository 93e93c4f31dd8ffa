//! The status page on the management listener: `GET /status/data` reports what clients did, the
//! page and its assets are served from the binary, and the data is signed like the management API
//! (the page's own JavaScript signing is exercised by tests/browser/status.test.mjs).

mod common;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use common::*;
use serde_json::Value;
use std::time::{Duration, SystemTime};

const KEY: &str = "AKIASTATUSTEST01";
const SECRET: &str = "status-test-secret/with+odd=chars";

/// Echo on `$default`, and a route whose integration answers 500.
const ROUTES: &str = r#"
[api]
route_selection_expression = "$request.body.action"
[routes."$default"]
integration = "echo"
two_way = true
[routes.fail]
integration = "fail"
[integrations.echo]
type = "mock"
response_template = "echo:$input.body"
[integrations.fail]
type = "mock"
status_code = 500
"#;

/// `GET url`, signed for `execute-api` with `secret` when given.
async fn get(url: &str, secret: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(secret) = secret {
        let identity =
            aws_sdk_apigatewaymanagement::config::Credentials::new(KEY, secret, None, None, "test")
                .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("execute-api")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let signable =
            SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(b"")).unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
    }
    request.send().await.unwrap()
}

async fn status_data(host: &TestHost, secret: Option<&str>) -> Value {
    let response = get(&host.http("/status/data"), secret).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// Waits until `check` passes on the data (a frame is counted just after the client may have
/// read it), then returns that data; panics with the last data after 10 s.
async fn settled(host: &TestHost, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let data = status_data(host, None).await;
        if check(&data) {
            return data;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("status data did not settle: {data:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn status_data_reports_what_clients_did() {
    let host = TestHost::start(ROUTES).await;
    let idle = status_data(&host, None).await;
    assert_eq!(idle["connections"], 0);
    assert_eq!(idle["totals"]["messagesIn"], 0);
    assert_eq!(idle["host"]["stage"], "dev");
    assert!(idle["cluster"].is_null(), "{idle}");

    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(host.addr).await);
    }
    for ws in &mut clients {
        for n in 0..5 {
            send_text(ws, &format!("m{n}")).await;
            assert_eq!(next_text(ws).await, format!("echo:m{n}"));
        }
        send_text(ws, r#"{"action":"fail"}"#).await;
    }
    // 3 clients × (5 echoed + 1 failing): 18 in, 15 out, 3 IntegrationErrors, 18 timed calls.
    let data = settled(&host, |d| d["totals"]["integrationErrors"] == 3).await;
    assert_eq!(data["connections"], 3);
    let totals = &data["totals"];
    for (name, want) in [
        ("messagesIn", 18),
        ("messagesOut", 15),
        ("connects", 3),
        ("refusedConnects", 0),
        ("clientErrors", 0),
        ("executionErrors", 0),
    ] {
        assert_eq!(totals[name], want, "{name}: {data:#}");
    }
    assert_eq!(totals["bytesIn"], 3 * (5 * 2 + 17));
    let latency = &data["integrationLatency"];
    assert_eq!(latency["count"], 18);
    let buckets = latency["buckets"].as_array().unwrap();
    // Ascending, cumulative, summed over both routes, ending with +Inf (null) holding every call.
    assert_eq!(buckets.first().unwrap()["le"], 1.0);
    assert_eq!(buckets.last().unwrap()["le"], Value::Null);
    assert_eq!(buckets.last().unwrap()["count"], 18);
    let counts: Vec<u64> = buckets
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");

    drop(clients);
    settled(&host, |d| d["connections"] == 0).await;
}

#[tokio::test]
async fn the_page_and_its_assets_come_from_the_host() {
    let host = TestHost::start(ROUTES).await;
    let page = get(&host.http("/status"), None).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    // Nothing but the host's own script, styles and data.
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        policy.starts_with("default-src 'none'; script-src 'self';"),
        "{policy}"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<meta name="region" content="us-east-1">"#),
        "{html}"
    );
    assert!(
        html.contains(r#"<meta name="auth" content="none">"#),
        "{html}"
    );
    assert!(!html.contains("{{"), "a placeholder was left: {html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for (path, content_type, marker) in [
        (
            "/status/status.js",
            "text/javascript; charset=utf-8",
            "/status/data",
        ),
        (
            "/status/status.css",
            "text/css; charset=utf-8",
            "prefers-color-scheme",
        ),
    ] {
        let asset = get(&host.http(path), None).await;
        assert_eq!(asset.status(), 200, "{path}");
        assert_eq!(asset.headers()["content-type"], content_type, "{path}");
        assert!(asset.text().await.unwrap().contains(marker), "{path}");
    }
}

#[tokio::test]
async fn status_data_is_signed_like_the_management_api() {
    let host = TestHost::start(&format!(
        r#"{ROUTES}
[management.auth]
mode = "sigv4"
[management.auth.keys.{KEY}]
secret = "{SECRET}"
"#
    ))
    .await;
    let url = host.http("/status/data");
    let unsigned = get(&url, None).await;
    assert_eq!(unsigned.status(), 403);
    assert_eq!(
        unsigned.headers()["x-amzn-ErrorType"],
        "MissingAuthenticationTokenException"
    );
    let wrong = get(&url, Some("not-the-secret")).await;
    assert_eq!(wrong.status(), 403);
    assert_eq!(
        wrong.headers()["x-amzn-ErrorType"],
        "InvalidSignatureException"
    );
    let signed = get(&url, Some(SECRET)).await;
    assert_eq!(signed.status(), 200);
    let data: Value = serde_json::from_slice(&signed.bytes().await.unwrap()).unwrap();
    assert_eq!(data["connections"], 0);
    // The page holds no data: it loads unsigned, and tells its script to sign.
    let page = get(&host.http("/status"), None).await;
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains(r#"<meta name="auth" content="sigv4">"#)
    );
}
