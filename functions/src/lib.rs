//! Writing API Gateway WebSocket handlers in Rust, on top of `lambda_http`.
//!
//! A handler is an ordinary `lambda_http` function. It deploys unchanged to AWS Lambda behind API
//! Gateway, and runs against the connection host locally or self-hosted. This crate adds:
//! - [`context`]: the WebSocket event behind a `lambda_http::Request` (connection ID, route key,
//!   event type, body, authorizer context, query string, close code), see [`WebSocketEvent`];
//! - [`response`]: the responses API Gateway understands (accept, reply, reject);
//! - [`management`]: pushing messages to connections through the `@connections` API;
//! - `rooms` (feature `rooms`, on by default): join, leave, list and broadcast, on the connection
//!   host's groups extension or on a DynamoDB table;
//! - `static_key` (feature `static-key`, on by default): sign management calls with a static
//!   access key read from AWS Secrets Manager, as a self-hosted connection host requires;
//! - `testing` (feature `testing`): test doubles to unit-test handler logic with captured events;
//! - `examples` (feature `examples`, on by default): the logic of the example functions in
//!   `src/bin/` (`chat`, `echo`, `authorizer`).
//!
//! With `default-features = false`, a handler that only reads events and posts to connections
//! compiles neither the DynamoDB SDK nor an HTTP client of its own.
//!
//! ```no_run
//! use lambda_http::{Error, Request, service_fn};
//! use ws_handler::{EventType, Management, WebSocketEvent, response};
//!
//! async fn handler(request: Request) -> Result<response::Response, Error> {
//!     let event = WebSocketEvent::from_request(&request)?;
//!     if event.event_type() == EventType::Message {
//!         let management = Management::for_event(&event).await;
//!         management.post_text(event.connection_id(), "got it").await?;
//!     }
//!     Ok(response::ok())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Error> {
//!     lambda_http::run(service_fn(handler)).await
//! }
//! ```

// No unsafe code in the library, and no way to allow it below (the workspace only denies it).
#![forbid(unsafe_code)]

pub mod context;
#[cfg(feature = "examples")]
pub mod examples;
pub mod management;
pub mod response;
#[cfg(feature = "rooms")]
pub mod rooms;
#[cfg(any(feature = "rooms", feature = "static-key"))]
mod sigv4;
#[cfg(feature = "static-key")]
pub mod static_key;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use context::{Authorizer, EventType, WebSocketEvent};
pub use management::{Management, ManagementError, PostToConnection};
#[cfg(feature = "rooms")]
pub use rooms::{BroadcastReport, Rooms, RoomsConfig, RoomsError};

/// Sends `tracing` output to stderr, which Lambda forwards to CloudWatch Logs: no colours and no
/// timestamps (CloudWatch adds its own). The level comes from `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (e.g. from tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stderr)
        .try_init();
}
