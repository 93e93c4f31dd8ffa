//! Management API errors in API Gateway's wire format: the status code, `x-amzn-ErrorType` naming
//! the modelled exception, and the body the SDKs expect (empty for `GoneException`).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

/// A management call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// 410: the connection does not exist (any more, or not yet during its `$connect`).
    #[error("GoneException")]
    Gone,
    /// 400: the request is malformed (e.g. a connection ID not in API Gateway's format).
    #[error("BadRequestException: {0}")]
    BadRequest(String),
    /// 413: the data exceeds the payload limit.
    #[error("PayloadTooLargeException")]
    PayloadTooLarge,
    /// 429: the connection's outbound queue is full, or (in a cluster) the calls for it queued
    /// ahead of this one on the forwarding host took longer than the forward timeout.
    #[error("LimitExceededException")]
    LimitExceeded,
    /// 429: more calls per second than `limits.management_requests_per_second` allows.
    #[error("LimitExceededException: too many requests")]
    Throttled,
    /// 429: the group's broadcasts used up `extensions.groups.fanout_burst`; it may broadcast
    /// again after this long.
    #[error("LimitExceededException: group fan-out rate exceeded")]
    FanoutLimited(std::time::Duration),
    /// 403: unknown path, stage or method.
    #[error("ForbiddenException")]
    Forbidden,
    /// 422: the post's `Idempotency-Key` was already used for a different body to this
    /// connection (nothing kept).
    #[error("IdempotencyKeyReusedException")]
    KeyReused,
    /// 503: the store could not be reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// 426: a plain HTTP request on the WebSocket URL.
    #[error("Upgrade Required")]
    UpgradeRequired,
}

impl IntoResponse for ManagementError {
    fn into_response(self) -> Response {
        let (status, error_type, body): (StatusCode, Option<&str>, String) = match &self {
            ManagementError::Gone => (StatusCode::GONE, Some("GoneException"), String::new()),
            ManagementError::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                Some("BadRequestException"),
                serde_json::json!({ "message": m }).to_string(),
            ),
            ManagementError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("PayloadTooLargeException"),
                r#"{"message":"The data has exceeded the maximum size allowed."}"#.into(),
            ),
            ManagementError::LimitExceeded => (
                StatusCode::TOO_MANY_REQUESTS,
                Some("LimitExceededException"),
                r#"{"message":"The WebSocket client side buffer is full."}"#.into(),
            ),
            ManagementError::Throttled => (
                StatusCode::TOO_MANY_REQUESTS,
                Some("LimitExceededException"),
                r#"{"message":"Too Many Requests"}"#.into(),
            ),
            ManagementError::FanoutLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                Some("LimitExceededException"),
                serde_json::json!({
                    "message": format!(
                        "The group's broadcasts exceeded its fan-out rate (extensions.groups.fanout_rate); nothing was sent. Retry in {} ms.",
                        wait.as_millis().max(1)
                    )
                })
                .to_string(),
            ),
            ManagementError::Forbidden => (
                StatusCode::FORBIDDEN,
                Some("ForbiddenException"),
                r#"{"message":"Forbidden"}"#.into(),
            ),
            ManagementError::KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("IdempotencyKeyReusedException"),
                r#"{"message":"This Idempotency-Key was already used with a different body for this connection."}"#.into(),
            ),
            ManagementError::Unavailable(detail) => {
                tracing::error!(%detail, "management call failed: service unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("ServiceUnavailableException"),
                    r#"{"message":"Service Unavailable"}"#.into(),
                )
            }
            ManagementError::UpgradeRequired => (
                StatusCode::UPGRADE_REQUIRED,
                None,
                r#"{"message":"Upgrade Required"}"#.into(),
            ),
        };
        let mut response = Response::new(axum::body::Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if let Some(t) = error_type {
            headers.insert("x-amzn-ErrorType", HeaderValue::from_static(t));
        }
        // GoneException has an empty body, and no content type to go with it.
        if !matches!(self, ManagementError::Gone) {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let ManagementError::FanoutLimited(wait) = &self {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            );
        }
        if matches!(self, ManagementError::UpgradeRequired) {
            headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        response
    }
}

// A refused signature is a 403 in AWS's format, like the other management errors.
impl IntoResponse for crate::sigv4::AuthError {
    fn into_response(self) -> Response {
        let error_type = match self {
            crate::sigv4::AuthError::Missing => "MissingAuthenticationTokenException",
            crate::sigv4::AuthError::Incomplete(_) => "IncompleteSignatureException",
            crate::sigv4::AuthError::UnknownKey => "UnrecognizedClientException",
            crate::sigv4::AuthError::Invalid(_) => "InvalidSignatureException",
        };
        let body = serde_json::json!({ "message": self.to_string() }).to_string();
        (
            StatusCode::FORBIDDEN,
            [
                ("x-amzn-ErrorType", HeaderValue::from_static(error_type)),
                (
                    http::header::CONTENT_TYPE.as_str(),
                    HeaderValue::from_static("application/json"),
                ),
            ],
            body,
        )
            .into_response()
    }
}
