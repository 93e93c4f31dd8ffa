//! SigV4 authentication of the management API: the official SDK client with a configured key
//! succeeds; wrong keys, skewed clocks, tampered bodies and unsigned calls get API Gateway's 403s;
//! `auto` stays open on loopback; forwarded-call headers without a valid cluster signature are refused.

mod common;

use aws_sdk_apigatewaymanagement as mgmt;
use aws_sdk_apigatewaymanagement::error::ProvideErrorMetadata;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

const KEY: &str = "AKIAHOSTTEST0001";
const SECRET: &str = "host-test-secret/with+odd=chars";

/// SigV4 required even on loopback, with one key, plus the `whoami` route.
fn sigv4_config(extra: &str) -> String {
    format!(
        r#"{WHOAMI}
[management.auth]
mode = "sigv4"
[management.auth.keys.{KEY}]
secret = "{SECRET}"
{extra}"#
    )
}

/// The official client for `http://ADDR/dev` signing with `key`/`secret`, retries off.
fn client_with(addr: SocketAddr, key: &str, secret: &str) -> mgmt::Client {
    let config = mgmt::Config::builder()
        .behavior_version(mgmt::config::BehaviorVersion::latest())
        .region(mgmt::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}/dev"))
        .credentials_provider(mgmt::config::Credentials::new(
            key, secret, None, None, "test",
        ))
        .retry_config(mgmt::config::retry::RetryConfig::disabled())
        .build();
    mgmt::Client::from_conf(config)
}

async fn connected(addr: SocketAddr) -> (Ws, String) {
    let (mut ws, _) = try_connect(addr, "/dev", &[], None).await.unwrap();
    send_text(&mut ws, r#"{"action":"whoami"}"#).await;
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    let id = reply["connectionId"].as_str().unwrap().to_string();
    (ws, id)
}

/// A request signed by aws-sigv4 itself, so the time, service and key can be chosen freely;
/// `send_body` is what actually goes on the wire (differs from `body` to tamper).
#[allow(clippy::too_many_arguments)]
async fn signed(
    method: &str,
    url: &str,
    body: &[u8],
    send_body: &[u8],
    key: &str,
    secret: &str,
    service: &str,
    time: SystemTime,
    extra_headers: &[(&str, &str)],
) -> reqwest::Response {
    let identity = mgmt::config::Credentials::new(key, secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        extra_headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .body(send_body.to_vec());
    for (name, value) in extra_headers {
        request = request.header(*name, *value);
    }
    for (name, value) in instructions.headers() {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

async fn refusal(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let error_type = r
        .headers()
        .get("x-amzn-ErrorType")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    (
        status,
        error_type,
        body["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn the_sdk_with_a_configured_key_posts_gets_and_deletes() {
    let host = TestHost::start(&sigv4_config("")).await;
    let (mut ws, id) = connected(host.addr).await;
    let client = client_with(host.addr, KEY, SECRET);
    client
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new("signed hello"))
        .send()
        .await
        .expect("signed post");
    assert_eq!(next_text(&mut ws).await, "signed hello");
    let got = client
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("signed get");
    assert!(got.connected_at().is_some());
    client
        .delete_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("signed delete");
    // Unknown connections still answer 410 once authenticated.
    let gone = client
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some("GoneException"));
}

#[tokio::test]
async fn wrong_secret_unknown_key_and_unsigned_calls_are_403() {
    let host = TestHost::start(&sigv4_config("")).await;
    let (_ws, id) = connected(host.addr).await;

    let wrong = client_with(host.addr, KEY, "not-the-secret")
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some("InvalidSignatureException"));
    assert_eq!(wrong.raw_response().unwrap().status().as_u16(), 403);
    assert!(
        wrong
            .message()
            .unwrap()
            .starts_with("The request signature we calculated does not match")
    );

    let unknown = client_with(host.addr, "AKIAUNKNOWN", SECRET)
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some("UnrecognizedClientException"));
    assert_eq!(
        unknown.message(),
        Some("The security token included in the request is invalid.")
    );

    let unsigned = reqwest::Client::new()
        .post(host.http(&format!("/dev/@connections/{}", encode_id(&id))))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refusal(unsigned).await,
        (
            403,
            "MissingAuthenticationTokenException".into(),
            "Missing Authentication Token".into()
        )
    );
    // /health stays open.
    let health = reqwest::get(host.http("/health")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn skewed_clocks_and_tampered_bodies_are_403() {
    let host = TestHost::start(&sigv4_config("")).await;
    let (mut ws, id) = connected(host.addr).await;
    let url = host.http(&format!("/dev/@connections/{}", encode_id(&id)));
    let now = SystemTime::now();
    let post = |body: &'static [u8], sent: &'static [u8], time| {
        signed(
            "POST",
            &url,
            body,
            sent,
            KEY,
            SECRET,
            "execute-api",
            time,
            &[],
        )
    };

    let (status, error_type, message) =
        refusal(post(b"late", b"late", now - Duration::from_secs(600)).await).await;
    assert_eq!(
        (status, error_type.as_str()),
        (403, "InvalidSignatureException")
    );
    assert!(message.starts_with("Signature expired: "), "{message}");
    assert!(message.ends_with(" - 5 min.)"), "{message}");

    let (status, error_type, message) =
        refusal(post(b"early", b"early", now + Duration::from_secs(600)).await).await;
    assert_eq!(
        (status, error_type.as_str()),
        (403, "InvalidSignatureException")
    );
    assert!(
        message.starts_with("Signature not yet current: "),
        "{message}"
    );

    let (status, error_type, message) = refusal(post(b"signed", b"swapped", now).await).await;
    assert_eq!(
        (status, error_type.as_str()),
        (403, "InvalidSignatureException")
    );
    assert!(
        message.starts_with("The request signature we calculated"),
        "{message}"
    );

    // Within the window (a clock 2 minutes off) and untampered, the same call goes through.
    let ok = post(b"on time", b"on time", now - Duration::from_secs(120)).await;
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(next_text(&mut ws).await, "on time");

    // The wrong signing name: the Invoke API's, or another region's, is not the management API's.
    let r = signed("GET", &url, b"", b"", KEY, SECRET, "lambda", now, &[]).await;
    let (status, _, message) = refusal(r).await;
    assert_eq!(status, 403);
    assert_eq!(
        message,
        "Credential should be scoped to correct service: 'execute-api'. "
    );
}

#[tokio::test]
async fn the_invoke_api_takes_signatures_for_lambda() {
    let host = TestHost::start(&sigv4_config("")).await;
    let url = host.http("/2015-03-31/functions/nope/invocations");
    let now = SystemTime::now();
    // Authenticated: the call reaches the Invoke API, which does not know the function.
    let r = signed("POST", &url, b"{}", b"{}", KEY, SECRET, "lambda", now, &[]).await;
    assert_eq!(r.status().as_u16(), 404);
    let r = signed(
        "POST",
        &url,
        b"{}",
        b"{}",
        KEY,
        SECRET,
        "execute-api",
        now,
        &[],
    )
    .await;
    let (status, error_type, _) = refusal(r).await;
    assert_eq!(
        (status, error_type.as_str()),
        (403, "InvalidSignatureException")
    );
    let r = reqwest::Client::new()
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(r).await.1, "MissingAuthenticationTokenException");
}

#[tokio::test]
async fn forwarded_call_headers_without_the_cluster_secret_are_refused() {
    let host = TestHost::start(&sigv4_config("")).await;
    let (_ws, id) = connected(host.addr).await;
    let url = host.http(&format!("/dev/@connections/{}", encode_id(&id)));
    for headers in [
        vec![("x-connection-host-forwarded", "other-host")],
        vec![
            ("x-connection-host-forwarded", "other-host"),
            ("x-connection-host-date", "1700000000000"),
            (
                "x-connection-host-signature",
                "00112233445566778899aabbccddeeff",
            ),
        ],
        vec![(
            "x-connection-host-signature",
            "00112233445566778899aabbccddeeff",
        )],
    ] {
        // Unsigned: a forwarded-call header does not skip SigV4.
        let mut request = reqwest::Client::new().get(&url);
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{headers:?}");
        // Signed with a valid key: still refused, as a host-to-host call with no valid signature.
        let r = signed(
            "GET",
            &url,
            b"",
            b"",
            KEY,
            SECRET,
            "execute-api",
            SystemTime::now(),
            &headers,
        )
        .await;
        let (status, error_type, _) = refusal(r).await;
        assert_eq!((status, error_type.as_str()), (403, "ForbiddenException"));
    }
}

#[tokio::test]
async fn auto_mode_on_loopback_stays_open() {
    // The defaults: `auto`, no keys, the listener on 127.0.0.1.
    let host = TestHost::start(WHOAMI).await;
    let (mut ws, id) = connected(host.addr).await;
    let r = reqwest::Client::new()
        .post(host.http(&format!("/dev/@connections/{}", encode_id(&id))))
        .body("unsigned hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(next_text(&mut ws).await, "unsigned hello");
}

/// Builds a host from `toml` as a start and `config check` do.
async fn build(toml: &str) -> Result<connection_host::Host, connection_host::BuildError> {
    let config = connection_host::Config::from_toml(toml)?;
    let store = std::sync::Arc::new(connection_host::store::MemoryStore::new());
    connection_host::Host::build(config, store).await
}

#[tokio::test]
async fn sigv4_without_keys_refuses_to_start_naming_the_field() {
    let err = build("[management.auth]\nmode = \"sigv4\"")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("management.auth.keys: "), "{err}");
    // `auto` on a non-loopback address requires keys too.
    let err = build("[server]\nlisten = \"0.0.0.0:8080\"")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("management.auth.keys: "), "{err}");
    let open = "[server]\nlisten = \"0.0.0.0:8080\"\n[management.auth]\nmode = \"none\"";
    assert!(build(open).await.is_ok());
    let err = build(&format!(
        "[management.auth.keys.{KEY}]\nsecret = \"a\"\nsecret_env = \"B\""
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("exactly one of"), "{err}");
}
