//! The one error type of the crate.

/// What went wrong, either as the result of a call ([`Sender::send`](crate::Sender::send),
/// [`Sender::request`](crate::Sender::request)) or reported as an [`Event::Error`](crate::Event::Error).
///
/// The type is `Clone` because one failure can end several waiting calls at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The handshake was refused with 401 or 403 (the authorizer said no). Terminal: the client
    /// does not reconnect, because retrying the same credentials would be refused again.
    #[error("the handshake was refused with HTTP {status}")]
    Unauthorized {
        /// The HTTP status of the refusal (401 or 403).
        status: u16,
    },
    /// Reliable delivery was asked for, but the host's 101 did not select `ch-reliable.v1` (the
    /// host does not have `[extensions.sessions]` enabled). Terminal.
    #[error("the host did not accept the ch-reliable.v1 subprotocol")]
    ReliableNotSupported,
    /// The client was closed (by [`Sender::close`](crate::Sender::close), by dropping every
    /// handle, or after a terminal error) before the call completed.
    #[error("the client is closed")]
    Closed,
    /// The offline queue is at its bound ([`Options::max_queued_messages`](crate::Options::max_queued_messages)
    /// or [`Options::max_queued_bytes`](crate::Options::max_queued_bytes)); the message was not
    /// accepted and nothing already queued was dropped.
    #[error("the outgoing queue is full")]
    QueueFull,
    /// No reply arrived within the request timeout.
    #[error("no reply within the request timeout")]
    Timeout,
    /// [`Sender::request`](crate::Sender::request) needs reliable mode: plain WebSocket messages
    /// carry nothing to match a reply to its request.
    #[error("requests need reliable mode")]
    NotReliable,
    /// The host answered the message with an error `reply` (PROTOCOL.md section 6): the message
    /// API Gateway's error frame would carry, such as `Forbidden` (no route matched),
    /// `Internal server error`, `Endpoint request timed out`, `Too Many Requests` (not invoked:
    /// sending it again later invokes it) or `Outcome unknown`. `Service Unavailable` (not
    /// invoked, the host's store failed) never comes out: the client sends the message again.
    #[error("the host answered message {id} with an error: {message}")]
    Reply {
        /// The message's idempotency key.
        id: String,
        /// The error message.
        message: String,
        /// The host's request ID for the failed invocation, when it gave one.
        request_id: Option<String>,
    },
    /// The host reported that a frame broke the protocol (an `error` frame, PROTOCOL.md section 8).
    #[error("the host refused a frame: {code}: {message}")]
    Protocol {
        /// The error code (`BadFrame`, `BadKey`, `BadPayload`, …).
        code: String,
        /// The host's explanation.
        message: String,
    },
    /// A connection attempt failed or an open connection broke; the client retries.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The token provider failed; the client retries with backoff.
    #[error("the token provider failed: {0}")]
    Token(String),
    /// The options cannot make a connection request (a malformed URL, header or token). Terminal.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
}

impl Error {
    /// Whether the client gives up after this error instead of reconnecting.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Error::Unauthorized { .. }
                | Error::ReliableNotSupported
                | Error::InvalidOptions(_)
                | Error::Closed
        )
    }
}
