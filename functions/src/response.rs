//! Responses a handler returns to API Gateway.
//!
//! What API Gateway does with them depends on the route:
//! - `$connect`: a 2xx status accepts the connection; any other status is sent to the client as
//!   the HTTP status of the failed upgrade (the body is not forwarded by API Gateway).
//! - message routes: the status is ignored; on a two-way route the body is sent back to the
//!   client as one message, on a one-way route (the default) nothing is sent.
//! - `$disconnect`: ignored.

use lambda_http::Body;
use lambda_http::http::StatusCode;
use lambda_http::http::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;

/// The response type every helper here returns; `lambda_http` serializes it as the Lambda proxy
/// response API Gateway expects.
pub type Response = lambda_http::Response<Body>;

fn with(status: StatusCode, content_type: Option<&'static str>, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

/// 200 with no body: accepts a connection, or acknowledges a message without replying.
pub fn ok() -> Response {
    with(StatusCode::OK, None, Body::Empty)
}

/// 200 with a text body: on a two-way route, the client receives `text` as one message.
pub fn ok_text(text: impl Into<String>) -> Response {
    with(
        StatusCode::OK,
        Some("text/plain; charset=utf-8"),
        Body::Text(text.into()),
    )
}

/// 200 with `value` serialized as JSON: on a two-way route, the client receives the JSON text.
pub fn ok_json<T: Serialize + ?Sized>(value: &T) -> Result<Response, serde_json::Error> {
    Ok(with(
        StatusCode::OK,
        Some("application/json"),
        Body::Text(serde_json::to_string(value)?),
    ))
}

/// 200 with a binary body (sent base64-encoded with `isBase64Encoded: true`).
pub fn ok_binary(bytes: impl Into<Vec<u8>>) -> Response {
    with(
        StatusCode::OK,
        Some("application/octet-stream"),
        Body::Binary(bytes.into()),
    )
}

/// `status` with the body `{"message": message}`: on `$connect`, refuses the connection and the
/// client's upgrade fails with `status` (use a 4xx; 2xx would accept).
pub fn reject(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "message": message }).to_string();
    with(status, Some("application/json"), Body::Text(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(response: &Response) -> &str {
        match response.body() {
            Body::Text(text) => text,
            other => panic!("expected a text body, got {other:?}"),
        }
    }

    #[test]
    fn ok_has_status_200_and_no_body() {
        let response = ok();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), &Body::Empty);
        assert!(response.headers().get(CONTENT_TYPE).is_none());
    }

    #[test]
    fn ok_text_carries_the_text() {
        let response = ok_text("hello");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(&response), "hello");
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn ok_json_serializes_the_value() {
        let response = ok_json(&serde_json::json!({"type": "pong"})).unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(&response), r#"{"type":"pong"}"#);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn ok_binary_keeps_the_bytes() {
        let response = ok_binary(vec![0, 159, 146, 150]);
        assert_eq!(response.body(), &Body::Binary(vec![0, 159, 146, 150]));
    }

    #[test]
    fn reject_carries_status_and_a_json_message() {
        let response = reject(StatusCode::BAD_REQUEST, "nickname \"required\"");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = serde_json::from_str(text(&response)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"message": "nickname \"required\""})
        );
    }
}
