//! What a [`Client`](crate::Client) connects to and how it behaves.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::backoff::Backoff;

/// The error type a token provider may fail with.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;
pub(crate) type TokenFn = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Where the token from the token provider goes in the upgrade request, matching the host's JWT
/// authorizer `token_source` (CONFIGURATION.md, "JWT authorizer").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPlacement {
    /// A header, the token after a prefix: `Authorization: Bearer <token>` for
    /// `token_source = "header"`.
    Header {
        /// The header's name.
        name: HeaderName,
        /// Text put before the token, such as `"Bearer "`.
        prefix: String,
    },
    /// A query parameter of the URL, for `token_source = "query"`.
    Query {
        /// The parameter's name (the host's default is `token`).
        parameter: String,
    },
    /// Two subprotocol entries, `<marker>, <token>`, for `token_source = "subprotocol"`.
    Subprotocol {
        /// The marker offered right before the token (the host's default is `bearer`).
        marker: String,
    },
}

impl TokenPlacement {
    /// `Authorization: Bearer <token>`.
    pub fn bearer() -> Self {
        TokenPlacement::Header {
            name: http::header::AUTHORIZATION,
            prefix: "Bearer ".to_owned(),
        }
    }

    /// The query parameter `parameter=<token>`.
    pub fn query(parameter: impl Into<String>) -> Self {
        TokenPlacement::Query {
            parameter: parameter.into(),
        }
    }

    /// The subprotocol entries `<marker>, <token>`.
    pub fn subprotocol(marker: impl Into<String>) -> Self {
        TokenPlacement::Subprotocol {
            marker: marker.into(),
        }
    }
}

/// Options of a [`Client`](crate::Client), built with chained setters:
///
/// ```
/// use std::time::Duration;
/// use connection_host_client::{Options, TokenPlacement};
///
/// let options = Options::new("ws://127.0.0.1:8080/dev")
///     .reliable(true)
///     .header("x-tenant", "acme")
///     .token_provider(TokenPlacement::bearer(), || Ok("a-jwt".to_owned()))
///     .backoff(Duration::from_millis(500), Duration::from_secs(10))
///     .max_queued_messages(500);
/// ```
#[derive(Clone)]
pub struct Options {
    pub(crate) url: String,
    pub(crate) headers: HeaderMap,
    pub(crate) header_error: Option<String>,
    pub(crate) token: Option<(TokenFn, TokenPlacement)>,
    pub(crate) reliable: bool,
    pub(crate) backoff: Backoff,
    pub(crate) stable_after: Duration,
    pub(crate) max_queued_messages: usize,
    pub(crate) max_queued_bytes: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) ack_delay: Duration,
    pub(crate) event_capacity: usize,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may hold credentials; the names and the settings are enough to debug with.
        f.debug_struct("Options")
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("token", &self.token.as_ref().map(|(_, p)| p))
            .field("reliable", &self.reliable)
            .field("backoff", &self.backoff)
            .field("max_queued_messages", &self.max_queued_messages)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Options for the WebSocket URL `url` (`ws://`; `wss://` with the `tls` feature), with the
    /// defaults of each setter below.
    pub fn new(url: impl Into<String>) -> Self {
        Options {
            url: url.into(),
            headers: HeaderMap::new(),
            header_error: None,
            token: None,
            reliable: false,
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(30),
                jitter_max: Duration::from_secs(1),
            },
            stable_after: Duration::from_secs(10),
            max_queued_messages: 1000,
            max_queued_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(20),
            heartbeat_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ack_delay: Duration::from_millis(200),
            event_capacity: 1024,
        }
    }

    /// Adds a header to every upgrade request. An invalid name or value makes the client fail
    /// with [`Error::InvalidOptions`](crate::Error::InvalidOptions).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            _ => self.header_error = Some(format!("invalid header {name:?}")),
        }
        self
    }

    /// Calls `provider` before every connection attempt (the first and each reconnect, so a
    /// token can be refreshed) and places its token as `placement` says. A failure is reported
    /// as [`Error::Token`](crate::Error::Token) and retried with backoff.
    pub fn token_provider<F>(self, placement: TokenPlacement, provider: F) -> Self
    where
        F: Fn() -> Result<String, TokenError> + Send + Sync + 'static,
    {
        let provider = Arc::new(provider);
        self.token_provider_async(placement, move || {
            let provider = provider.clone();
            async move { provider() }
        })
    }

    /// As [`token_provider`](Self::token_provider), with an async provider (one that fetches
    /// the token from an identity service, say).
    pub fn token_provider_async<F, Fut>(mut self, placement: TokenPlacement, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        let f: TokenFn = Arc::new(move || Box::pin(provider()) as TokenFuture);
        self.token = Some((f, placement));
        self
    }

    /// Reliable delivery with the `ch-reliable.v1` subprotocol (PROTOCOL.md). Default `false`:
    /// plain WebSocket messages, as API Gateway has them.
    pub fn reliable(mut self, reliable: bool) -> Self {
        self.reliable = reliable;
        self
    }

    /// Reconnect delays: attempt `n` (0 for the first retry) waits
    /// `min(max, base · 2^n + random(0..jitter))`. Defaults: base 1 s, max 30 s.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff.base = base;
        self.backoff.max = max;
        self
    }

    /// The upper bound (exclusive) of the random jitter added to each reconnect delay.
    /// Default 1 s; zero turns jitter off.
    pub fn backoff_jitter(mut self, jitter: Duration) -> Self {
        self.backoff.jitter_max = jitter;
        self
    }

    /// How long a connection must stay up for the next reconnect to start again from attempt 0.
    /// Default 10 s: a host that accepts and then drops at once still meets a growing delay.
    pub fn stable_after(mut self, duration: Duration) -> Self {
        self.stable_after = duration;
        self
    }

    /// The bound, in messages, of what the client keeps: in plain mode the messages not yet
    /// written to a connection, in reliable mode every message not yet answered by a `reply`.
    /// Past it, [`send`](crate::Sender::send) and [`request`](crate::Sender::request) fail with
    /// [`Error::QueueFull`](crate::Error::QueueFull). Default 1000.
    pub fn max_queued_messages(mut self, messages: usize) -> Self {
        self.max_queued_messages = messages;
        self
    }

    /// The same bound in payload bytes. Default 1 MiB. A single message larger than the bound
    /// is accepted when nothing else is queued, so that no message is refused forever.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// How long [`request`](crate::Sender::request) waits for the reply. Default 30 s (API
    /// Gateway's integration timeout is 29 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Heartbeats: after `interval` without any frame from the host the client sends a ping
    /// (a `ping` frame in reliable mode, a WebSocket ping in plain mode), and when nothing at all
    /// arrives within `timeout` after it, the connection counts as dead and the client reconnects.
    /// Defaults: 20 s and 10 s.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }

    /// How long a connection attempt (TCP, handshake and, in reliable mode, the `welcome`) may
    /// take before it counts as failed. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// In reliable mode, how long after a frame arrives the client acknowledges it at the latest
    /// (it also acknowledges at once every 64 frames). Default 200 ms; PROTOCOL.md asks for
    /// less than 1 s.
    pub fn ack_delay(mut self, delay: Duration) -> Self {
        self.ack_delay = delay;
        self
    }

    /// How many events wait for [`Client::recv`](crate::Client::recv) before the client stops
    /// reading from the connection (backpressure). Default 1024.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }
}
