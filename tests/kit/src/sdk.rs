//! The official AWS SDK clients, pointed at a host.

use aws_sdk_apigatewaymanagement as mgmt;
use std::net::SocketAddr;

/// The official SDK client for `http://ADDR/dev`, retries off so each call is one request.
pub fn mgmt_client(addr: SocketAddr) -> mgmt::Client {
    let config = mgmt::Config::builder()
        .behavior_version(mgmt::config::BehaviorVersion::latest())
        .region(mgmt::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}/dev"))
        .credentials_provider(mgmt::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .retry_config(mgmt::config::retry::RetryConfig::disabled())
        .build();
    mgmt::Client::from_conf(config)
}

/// PostToConnection with an `Idempotency-Key` (the extension's header, added before the request
/// is signed, as an application would with `customize().mutate_request`); `Err` carries the
/// status and body of a refusal, status 0 when there was no answer.
pub async fn post_with_key(
    client: &mgmt::Client,
    id: &str,
    data: &str,
    key: &str,
) -> Result<(), (u16, String)> {
    let key = key.to_string();
    client
        .post_to_connection()
        .connection_id(id)
        .data(mgmt::primitives::Blob::new(data))
        .customize()
        .mutate_request(move |request| {
            request.headers_mut().insert("Idempotency-Key", key.clone());
        })
        .send()
        .await
        .map(drop)
        .map_err(|e| match e.raw_response() {
            Some(r) => (
                r.status().as_u16(),
                String::from_utf8_lossy(r.body().bytes().unwrap_or_default()).into_owned(),
            ),
            None => (0, e.to_string()),
        })
}

/// Percent-encodes a connection ID for a URL path (`=` → `%3D`).
pub fn encode_id(id: &str) -> String {
    id.replace('=', "%3D")
}

/// A connection ID in API Gateway's format.
pub fn is_connection_id(id: &str) -> bool {
    regex_lite::Regex::new(r"^[A-Za-z0-9_-]{15}=$")
        .unwrap()
        .is_match(id)
}

/// The official Lambda client, pointed at a host's Invoke API (`http://ADDR`).
pub async fn lambda_client(addr: SocketAddr) -> aws_sdk_lambda::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(aws_sdk_lambda::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await;
    aws_sdk_lambda::Client::new(&config)
}
