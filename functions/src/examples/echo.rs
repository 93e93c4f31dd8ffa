//! The `echo` function: sends every message back to its sender through the management API, and
//! also returns it as the route response, so it works on one-way and two-way routes alike (on a
//! two-way route the client gets it twice). `$connect` and `$disconnect` are accepted.

use crate::context::{EventType, WebSocketEvent};
use crate::management::{Management, ManagementError, PostToConnection};
use crate::response::{self, Response};
use tracing::Instrument;

/// Handles one event, posting through `poster`. A sender that is already gone is not an error.
pub async fn handle(
    event: &WebSocketEvent<'_>,
    poster: &dyn PostToConnection,
) -> Result<Response, ManagementError> {
    if event.event_type() != EventType::Message {
        return Ok(response::ok());
    }
    let body = event.body_bytes();
    match poster.post_to_connection(event.connection_id(), body).await {
        Ok(()) | Err(ManagementError::Gone) => {}
        Err(error) => return Err(error),
    }
    Ok(match event.body_text() {
        Ok(text) if !event.is_binary() => response::ok_text(text),
        _ => response::ok_binary(body),
    })
}

/// The deployed function's entry: reads the event, opens the management client for its
/// endpoint, and runs [`handle`].
pub async fn handle_request(request: lambda_http::Request) -> Result<Response, lambda_http::Error> {
    let event = WebSocketEvent::from_request(&request)?;
    let span = tracing::info_span!(
        "event",
        connection_id = event.connection_id(),
        route_key = event.route_key()
    );
    async {
        let management = Management::for_event(&event).await;
        Ok(handle(&event, &management).await?)
    }
    .instrument(span)
    .await
}
