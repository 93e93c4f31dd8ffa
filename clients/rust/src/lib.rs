//! A WebSocket client for connection-host and API Gateway WebSocket APIs, for Rust services.
//!
//! The client keeps a connection up by itself: it reconnects with exponential backoff, holds
//! messages in a bounded queue while offline, refreshes its token before every connection, and
//! detects dead connections with heartbeats. With [`Options::reliable`] it speaks the
//! `ch-reliable.v1` subprotocol (connection-host's `PROTOCOL.md`): a session survives drops and
//! host failures, every message from the host arrives exactly once and in order, and every
//! message to the host is invoked once per session and answered with a reply.
//!
//! ```no_run
//! use connection_host_client::{Client, Event, Options};
//!
//! # async fn run() -> Result<(), connection_host_client::Error> {
//! let mut client = Client::connect(Options::new("ws://127.0.0.1:8080/dev").reliable(true));
//! let sender = client.sender();
//! tokio::spawn(async move {
//!     while let Some(event) = client.recv().await {
//!         match event {
//!             Event::Message(message) => println!("got {message:?}"),
//!             Event::Connected { first: false, recovered: false, .. } => {
//!                 // A new session: messages sent to the old one are gone; resync.
//!             }
//!             other => println!("{other:?}"),
//!         }
//!     }
//! });
//! let reply = sender.request(r#"{"action":"join","room":"a"}"#).await?;
//! println!("joined: {reply:?}");
//! sender.send(r#"{"action":"say","text":"hi"}"#).await?;
//! sender.close().await;
//! # Ok(()) }
//! ```
//!
//! # States
//!
//! [`State::Connecting`] until the first connection is ready, [`State::Connected`] while one is
//! (in reliable mode: from its `welcome` frame), [`State::Reconnecting`] after it was lost and
//! until the next one is ready, [`State::Disconnected`] at the end. Watch them with
//! [`Sender::watch_state`] or as [`Event::StateChanged`].
//!
//! # Reconnecting
//!
//! Attempt `n` (counting from 0) waits `min(max, base · 2^n + random(0..jitter))`, by default
//! base 1 s, max 30 s, jitter 1 s ([`Options::backoff`]). The count starts again from 0 after a
//! connection stayed up for [`Options::stable_after`] (10 s). The client does **not** reconnect
//! after [`Sender::close`], after a 401 or 403 at the handshake ([`Error::Unauthorized`]), or
//! when reliable mode was asked for and the host does not offer it ([`Error::ReliableNotSupported`]); each is reported as the last [`Event::Error`].
//!
//! # Reliable mode
//!
//! - Every connection offers `ch-reliable.v1`; a reconnect also offers
//!   `ch-resume.<lastSeq>.<token>` with the last in-order sequence number and the latest resume
//!   token. A host close code 4000 or a lost connection resumes; any other close code from the
//!   host means the session ended, and the next connection starts a new one.
//! - Incoming `msg` frames are delivered once each, in order. A replay (a sequence number already
//!   delivered) is acknowledged and dropped; a gap (one skipped) is not delivered: the client
//!   closes with 4000 and resumes. Acknowledgements are cumulative, at the latest
//!   [`Options::ack_delay`] (200 ms) after a frame and at once every 64 frames.
//! - Outgoing messages get an idempotency key `<random per-client prefix>-<counter>`. The client
//!   keeps each one until its `reply` and sends every unanswered one again, in order, after every
//!   reconnect; the host invokes a key once per session (again, with the same key, only if the
//!   host invoking it died), and a `Service Unavailable` reply (not invoked) makes it send the
//!   message again after a delay.
//! - **After a new session** (`recovered: false` following a drop), the client also sends the
//!   unanswered messages again, with their original keys. The host's deduplication is per
//!   session, so one that reached the old session may be invoked a second time: delivery is
//!   *at least once* across sessions and *exactly once* within one. The keys are unique across
//!   sessions and processes, so a handler that records `requestContext.idempotencyKey` durably
//!   gets exactly once everywhere. Withdrawing them instead would lose messages that never
//!   arrived, which no handler could repair.
//!
//! # Plain mode
//!
//! Without [`Options::reliable`], messages are ordinary WebSocket text and binary messages, as
//! API Gateway has them. The queue holds what was sent while offline and is written on the next
//! connection; a message written to a connection that then breaks may be lost, and
//! [`Sender::request`] is not available (nothing would match a reply to its request).
//!
//! # Features
//!
//! `ws://` works out of the box; `tls` adds `wss://` (rustls with the platform's root
//! certificates).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backoff;
mod client;
mod driver;
mod error;
mod frame;
mod options;

use bytes::Bytes;

pub use client::{Client, Sender};
pub use error::Error;
pub use options::{Options, TokenError, TokenPlacement};

/// A message payload: text or binary, as a WebSocket message (or a `d`/`b` field of a
/// `ch-reliable.v1` frame) carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(String),
    /// A binary message. API Gateway and connection-host route binary messages only with
    /// binary support switched on (`extensions.binary_messages`).
    Binary(Bytes),
}

impl Message {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text, for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t),
            Message::Binary(_) => None,
        }
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Text(text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::Text(text.to_owned())
    }
}

impl From<Bytes> for Message {
    fn from(data: Bytes) -> Self {
        Message::Binary(data)
    }
}

impl From<Vec<u8>> for Message {
    fn from(data: Vec<u8>) -> Self {
        Message::Binary(Bytes::from(data))
    }
}

/// The connection state of a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The first connection is being made.
    Connecting,
    /// A connection is ready for messages.
    Connected,
    /// The connection was lost; the client is waiting out its backoff or reconnecting.
    Reconnecting,
    /// The client has ended and will not connect again.
    Disconnected,
}

/// Something that happened, read with [`Client::recv`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message from the host (PostToConnection, a broadcast); in reliable mode delivered
    /// exactly once and in order.
    Message(Message),
    /// A connection is ready (after [`Event::StateChanged`] to [`State::Connected`]).
    Connected {
        /// The client's first connection.
        first: bool,
        /// Reliable mode: the previous session was resumed, and nothing was lost. `false` after
        /// a reconnect (with `first == false`) means a new session: everything the host sent to
        /// the old one and not yet delivered is gone, so resync the application's state.
        recovered: bool,
        /// Reliable mode: the session's connection ID (what handlers see).
        connection_id: Option<String>,
        /// Reliable mode: why a resume failed (`expired`, `unknown`, `principal`, `overflow`,
        /// `lost`, `sequence`).
        reason: Option<String>,
        /// Reliable mode: the subprotocol the API itself selected, if any.
        protocol: Option<String>,
    },
    /// The state changed.
    StateChanged(State),
    /// A failure: a connection attempt that failed (the client retries), an error `reply` to a
    /// message sent with [`Sender::send`], a frame the host refused, or the terminal error the
    /// client stops with.
    Error(Error),
}
