//! Captured API Gateway events (tests/fixtures/) as `lambda_http` requests, as-is or edited: this
//! crate's own test data. The harness (hosts, clients, the DynamoDB test endpoint) is the
//! workspace's test kit, `test_kit` (tests/kit).
#![allow(dead_code)]

use serde_json::Value;

/// The JSON of a captured event.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An event's JSON as the `lambda_http` request a deployed handler receives.
pub fn request(event: &Value) -> lambda_http::Request {
    lambda_http::request::from_str(&event.to_string()).expect("a WebSocket event")
}

/// The captured CONNECT event (sample A) with a query string and an authorizer context added.
pub fn connect(query: Option<&[(&str, &str)]>, authorizer: Option<Value>) -> Value {
    let mut event = fixture("apiGatewayWebSocketApiConnect.json");
    if let Some(query) = query {
        let single: serde_json::Map<String, Value> = query
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let multi: serde_json::Map<String, Value> = query
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!([v])))
            .collect();
        event["queryStringParameters"] = single.into();
        event["multiValueQueryStringParameters"] = multi.into();
    }
    if let Some(authorizer) = authorizer {
        event["requestContext"]["authorizer"] = authorizer;
    }
    event
}

/// The captured MESSAGE event (sample B) from `connection_id` with `body`, and an authorizer
/// context when given.
pub fn message(connection_id: &str, body: &str, authorizer: Option<Value>) -> Value {
    let mut event = fixture("apiGatewayWebSocketApiMessage.json");
    event["requestContext"]["connectionId"] = connection_id.into();
    event["body"] = body.into();
    if let Some(authorizer) = authorizer {
        event["requestContext"]["authorizer"] = authorizer;
    }
    event
}

/// The captured DISCONNECT event (sample C) for `connection_id`.
pub fn disconnect(connection_id: &str, authorizer: Option<Value>) -> Value {
    let mut event = fixture("apiGatewayWebSocketApiDisconnect.json");
    event["requestContext"]["connectionId"] = connection_id.into();
    if let Some(authorizer) = authorizer {
        event["requestContext"]["authorizer"] = authorizer;
    }
    event
}

/// The authorizer context of a guest with `nickname`, as API Gateway puts it into events.
pub fn guest(nickname: &str) -> Value {
    serde_json::json!({ "principalId": format!("guest:{nickname}"), "nickname": nickname, "guest": true })
}

/// A response body as text.
pub fn body_text(response: &lambda_http::Response<lambda_http::Body>) -> &str {
    match response.body() {
        lambda_http::Body::Text(text) => text,
        lambda_http::Body::Empty => "",
        other => panic!("expected a text body, got {other:?}"),
    }
}
