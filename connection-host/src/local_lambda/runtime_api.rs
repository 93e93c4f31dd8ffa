//! The Lambda Runtime API (`/2018-06-01/runtime/…`) for one function process, as real
//! `lambda_runtime` clients expect it: a long-polled `next`, then a response or an error.

use super::process::{SlotEvent, SlotState};
use super::{Invocation, process::InFlight};
use crate::integration::IntegrationError;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Lambda's largest synchronous response payload (6 MB).
pub(super) const MAX_RESPONSE: usize = 6 * 1024 * 1024;

/// The routes of one process's Runtime API.
pub(super) fn router(slot: Arc<SlotState>) -> Router {
    Router::new()
        .route(
            "/2018-06-01/runtime/invocation/next",
            axum::routing::get(next),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            axum::routing::post(response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            axum::routing::post(error),
        )
        .route(
            "/2018-06-01/runtime/init/error",
            axum::routing::post(init_error),
        )
        // One byte over the limit tells a too-large response from one exactly at it.
        .layer(DefaultBodyLimit::max(MAX_RESPONSE + 1))
        .with_state(slot)
}

/// Counts the process as ready while it waits, so a failing sibling knows someone can still
/// take queued invocations.
struct Ready<'a>(&'a SlotState);

impl Drop for Ready<'_> {
    fn drop(&mut self) {
        self.0.function.ready.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn next(State(slot): State<Arc<SlotState>>) -> Response {
    let generation = slot.generation();
    slot.function.ready.fetch_add(1, Ordering::AcqRel);
    let ready = Ready(&slot);
    let _ = slot.events.send(SlotEvent::Ready);
    let invocation = loop {
        let received = tokio::select! {
            // The process this request came from has exited; nothing may be handed to it.
            _ = generation.cancelled() => return StatusCode::GONE.into_response(),
            received = slot.function.pending.recv() => received,
        };
        let Ok(invocation) = received else {
            return StatusCode::GONE.into_response();
        };
        // A caller that gave up (its route timed out) no longer wants the invocation run.
        if !invocation.reply.is_closed() {
            break invocation;
        }
    };
    drop(ready);
    let Invocation {
        request_id,
        trace_id,
        payload,
        reply,
    } = invocation;
    let deadline = std::time::SystemTime::now() + slot.function.config.timeout;
    {
        let mut current = slot.current.lock().expect("slot lock poisoned");
        if generation.is_cancelled() {
            // The process died between the queue and here: give the invocation to another one.
            drop(current);
            let requeued = Invocation {
                request_id,
                trace_id,
                payload,
                reply,
            };
            if let Err(e) = slot.function.queue.try_send(requeued) {
                let _ = e.into_inner().reply.send(Err(IntegrationError::Unavailable(
                    "the function's process exited and its queue is full".into(),
                )));
            }
            return StatusCode::GONE.into_response();
        }
        *current = Some(InFlight {
            request_id: request_id.clone(),
            reply,
        });
    }
    let _ = slot.events.send(SlotEvent::Started);
    let deadline_ms = deadline
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    (
        [
            ("Lambda-Runtime-Aws-Request-Id", request_id),
            ("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string()),
            (
                "Lambda-Runtime-Invoked-Function-Arn",
                slot.function.arn.clone(),
            ),
            ("Lambda-Runtime-Trace-Id", trace_id),
            ("Content-Type", "application/json".into()),
        ],
        payload,
    )
        .into_response()
}

/// Completes the process's current invocation if `id` names it.
fn complete(slot: &SlotState, id: &str, result: Result<Bytes, IntegrationError>) -> Response {
    let in_flight = {
        let mut current = slot.current.lock().expect("slot lock poisoned");
        match current.as_ref() {
            Some(c) if c.request_id == id => current.take(),
            _ => None,
        }
    };
    let Some(in_flight) = in_flight else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({
                "errorMessage": format!("Invalid request ID: {id}"),
                "errorType": "InvalidRequestID",
            })),
        )
            .into_response();
    };
    let _ = slot.events.send(SlotEvent::Finished { ok: result.is_ok() });
    let _ = in_flight.reply.send(result);
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"status": "OK"})),
    )
        .into_response()
}

async fn response(
    State(slot): State<Arc<SlotState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_RESPONSE {
        let message = format!(
            "{{\"errorType\":\"Function.ResponseSizeTooLarge\",\"errorMessage\":\"Response payload size ({} bytes) exceeded maximum allowed payload size ({MAX_RESPONSE} bytes).\"}}",
            body.len()
        );
        complete(&slot, &id, Err(IntegrationError::Function(message)));
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    complete(&slot, &id, Ok(body))
}

async fn error(
    State(slot): State<Arc<SlotState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    tracing::info!(
        function = %slot.function.name,
        request_id = %id,
        error_type = headers
            .get("lambda-runtime-function-error-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        error = %text,
        "function returned an error"
    );
    complete(&slot, &id, Err(IntegrationError::Function(text)))
}

async fn init_error(State(slot): State<Arc<SlotState>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    tracing::warn!(function = %slot.function.name, error = %text, "function failed to initialize");
    let _ = slot.events.send(SlotEvent::InitError(text));
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"status": "OK"})),
    )
        .into_response()
}
