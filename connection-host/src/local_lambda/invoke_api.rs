//! The Lambda Invoke API (`POST /2015-03-31/functions/{name}/invocations`) for local functions,
//! with real Lambda's semantics so the AWS CLI, boto3 and the SDKs can invoke them: a function
//! error is 200 with `X-Amz-Function-Error: Unhandled`, `Event` invocations answer 202.

use super::LocalFunctions;
use crate::integration::{IntegrationError, LambdaInvoker};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio_util::task::TaskTracker;

/// Lambda's largest synchronous request payload (6 MB).
pub const MAX_REQUEST: usize = 6 * 1024 * 1024;

fn error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-amzn-ErrorType", error_type),
            ("Content-Type", "application/json"),
        ],
        serde_json::json!({"Type": "User", "message": message}).to_string(),
    )
        .into_response()
}

/// Serves one invocation of `name`.
pub async fn invoke(
    functions: &LocalFunctions,
    tasks: &TaskTracker,
    name: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let Some(function) = functions.function(name) else {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {name}"),
        );
    };
    if body.len() > MAX_REQUEST {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            &format!(
                "{} byte payload is too large for the RequestResponse invocation type (limit {MAX_REQUEST} bytes)",
                body.len()
            ),
        );
    }
    // Lambda hands `{}` to a function invoked without a payload (`aws lambda invoke` without --payload).
    let payload = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json",
        );
    } else {
        body
    };
    // A caller's trace is passed on, as Lambda does; a call without one starts a trace.
    let trace_id = headers
        .get(crate::integration::TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| crate::ids::is_valid_trace_header(t))
        .map_or_else(
            || crate::ids::trace_id(crate::ids::now_ms()),
            str::to_string,
        );
    let invocation_type = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    match invocation_type {
        "RequestResponse" => {}
        "Event" => {
            let function = function.clone();
            tasks.spawn(async move {
                if let Err(e) = function.invoke(payload, &trace_id).await {
                    tracing::warn!(function = %function.name(), error = %e, "asynchronous invocation failed");
                }
            });
            return StatusCode::ACCEPTED.into_response();
        }
        "DryRun" => return StatusCode::NO_CONTENT.into_response(),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!("Unsupported invocation type: {other}"),
            );
        }
    }
    let executed = [
        ("X-Amz-Executed-Version", "$LATEST"),
        ("Content-Type", "application/json"),
    ];
    match function.invoke(payload, &trace_id).await {
        Ok(result) => (StatusCode::OK, executed, result).into_response(),
        Err(IntegrationError::Function(payload)) => (
            StatusCode::OK,
            executed,
            [("X-Amz-Function-Error", "Unhandled")],
            payload,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            &e.to_string(),
        ),
    }
}
