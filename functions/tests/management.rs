//! How `Management` reads the management API's answers, against a plain HTTP server that answers
//! what a test wants (the connection host's own answers are covered in tests/host.rs).

use aws_sdk_apigatewaymanagement::config::retry::RetryConfig;
use aws_sdk_apigatewaymanagement::config::{BehaviorVersion, Credentials, Region};
use axum::http::{HeaderMap, StatusCode};
use ws_handler::{Management, ManagementError};

/// A server answering every request with `status`, `headers` and `body`.
async fn answering(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: &'static str,
) -> String {
    let status = StatusCode::from_u16(status).unwrap();
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, value.parse().unwrap());
    }
    let app = axum::Router::new().fallback(move || {
        let map = map.clone();
        async move { (status, map, body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/dev", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn management(endpoint: &str) -> Management {
    let config = aws_sdk_apigatewaymanagement::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        // The SDK retries 429 and 5xx; one answer is what these tests look at.
        .retry_config(RetryConfig::disabled())
        .build();
    Management::from_client(
        aws_sdk_apigatewaymanagement::Client::from_conf(config),
        endpoint,
    )
}

#[tokio::test]
async fn gone_with_or_without_the_error_type_header() {
    let with_header = answering(410, &[("x-amzn-ErrorType", "GoneException")], "").await;
    let bare = answering(410, &[], "").await;
    for endpoint in [with_header, bare] {
        let error = management(&endpoint)
            .post_text("AAAAAAAAAAAAAAA=", "hi")
            .await
            .unwrap_err();
        assert!(error.is_gone(), "{endpoint}: {error:?}");
        let error = management(&endpoint)
            .delete("AAAAAAAAAAAAAAA=")
            .await
            .unwrap_err();
        assert!(error.is_gone(), "{endpoint}: {error:?}");
    }
}

#[tokio::test]
async fn modelled_errors_have_their_own_variants() {
    for (status, error_type, expected) in [
        (403, "ForbiddenException", "Forbidden"),
        (429, "LimitExceededException", "LimitExceeded"),
        (413, "PayloadTooLargeException", "PayloadTooLarge"),
    ] {
        let endpoint = answering(status, &[("x-amzn-ErrorType", error_type)], "{}").await;
        let error = management(&endpoint)
            .post_text("AAAAAAAAAAAAAAA=", "hi")
            .await
            .unwrap_err();
        assert_eq!(format!("{error:?}"), expected);
    }
    let endpoint = answering(500, &[], "boom").await;
    let error = management(&endpoint)
        .post_text("AAAAAAAAAAAAAAA=", "hi")
        .await
        .unwrap_err();
    assert!(matches!(error, ManagementError::Other(_)), "{error:?}");
}

#[tokio::test]
async fn get_connection_reads_times_as_epoch_milliseconds() {
    let endpoint = answering(
        200,
        &[("content-type", "application/json")],
        r#"{"connectedAt":"2022-10-26T19:57:25.104Z","identity":{"sourceIp":"203.0.113.7"},"lastActiveAt":"2022-10-26T19:57:26.361Z"}"#,
    )
    .await;
    let info = management(&endpoint).get("AAAAAAAAAAAAAAA=").await.unwrap();
    assert_eq!(info.connected_at, Some(1666814245104));
    assert_eq!(info.last_active_at, Some(1666814246361));
    assert_eq!(info.source_ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(info.user_agent, None);
}

#[tokio::test]
async fn post_with_key_sends_the_key_signed_and_reads_a_reused_key() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None::<HeaderMap>));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            *record.lock().unwrap() = Some(headers);
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/dev", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    management(&endpoint)
        .post_with_key("AAAAAAAAAAAAAAA=", "order-1", "hi")
        .await
        .unwrap();
    let headers = seen.lock().unwrap().take().unwrap();
    assert_eq!(headers["idempotency-key"], "order-1");
    let authorization = headers["authorization"].to_str().unwrap();
    assert!(
        authorization.contains("idempotency-key"),
        "the key is signed: {authorization}"
    );

    let endpoint = answering(
        422,
        &[("x-amzn-ErrorType", "IdempotencyKeyReusedException")],
        "{}",
    )
    .await;
    let error = management(&endpoint)
        .post_with_key("AAAAAAAAAAAAAAA=", "order-1", "other")
        .await
        .unwrap_err();
    assert!(matches!(error, ManagementError::KeyReused), "{error:?}");
    for bad in ["", "é", &"k".repeat(129)] {
        let error = management(&endpoint)
            .post_with_key("AAAAAAAAAAAAAAA=", bad, "x")
            .await
            .unwrap_err();
        assert!(matches!(error, ManagementError::InvalidKey), "{bad:?}");
    }
}
