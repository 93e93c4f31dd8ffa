//! `[limits]`: quotas and timers, API Gateway's by default.

use super::*;

/// Quotas and timers; the defaults are API Gateway's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest inbound WebSocket frame in bytes (API Gateway: 32 KB); larger closes with 1009.
    /// Also the largest outbound frame: longer messages are sent fragmented.
    pub frame_size: usize,
    /// Largest inbound message (after reassembly) in bytes (API Gateway: 128 KB); larger closes with 1009.
    pub message_size: usize,
    /// Largest PostToConnection payload in bytes (API Gateway: 131072); larger answers 413.
    pub post_size: usize,
    /// A connection with no data message in either direction for this long is closed with 1001.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections are closed with 1001 after this long, whatever their activity.
    #[serde(with = "humantime_serde")]
    pub max_connection_duration: Duration,
    /// How often the host pings a peer it has heard nothing from (dead-peer detection); 0 disables.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Pings in a row left unanswered before the connection is closed as dead.
    pub missed_pongs: u32,
    /// Bytes of outbound messages queued per connection before PostToConnection answers 429.
    pub outbound_queue_bytes: usize,
    /// A connection whose outbound queue stays full this long is closed (1008).
    #[serde(with = "humantime_serde")]
    pub outbound_full_grace: Duration,
    /// Integration invocations in flight per connection; further messages wait (TCP backpressure).
    pub max_inflight_messages: usize,
    /// Read buffer per connection in bytes; small buffers keep idle connections cheap.
    pub read_buffer_size: usize,
    /// Origins whose pages may connect (`Origin` header), e.g. `https://app.example.com` or
    /// `https://*.example.com` (any subdomain); others get 403. Empty allows every origin. A
    /// request without `Origin` (a client that is not a browser) is always allowed.
    pub allowed_origins: Vec<String>,
    /// New connections per second over the whole host, in bursts of up to as many (API Gateway:
    /// 500 per account and Region); beyond it the upgrade answers 429. 0 means unlimited.
    pub connections_per_second: u32,
    /// Concurrent connections (open or in their handshake) per source IP; beyond it the upgrade
    /// answers 429. 0 means unlimited; behind a load balancer every client has its address.
    pub connections_per_ip: u32,
    /// Concurrent connections per authorizer `principalId`; beyond it the upgrade answers 429.
    /// Connections without an authorizer are not counted. 0 means unlimited.
    pub connections_per_principal: u32,
    /// Inbound messages per second per connection; a message over the rate is not routed and the
    /// client gets a `Too Many Requests` frame. 0 means unlimited.
    pub messages_per_second: u32,
    /// Messages a connection may send at once above `messages_per_second` after a quiet spell.
    pub message_burst: u32,
    /// Throttled messages a connection may accumulate within 10 s; one more closes it with 1008.
    /// 0 never closes.
    pub max_throttled_messages: u32,
    /// `@connections` and `@groups` calls per second over the whole host (API Gateway: 10,000
    /// requests per second per account and Region); beyond it they answer 429
    /// `LimitExceededException`. 0 means unlimited.
    pub management_requests_per_second: u32,
    /// Management calls allowed at once above the rate (API Gateway: 5,000).
    pub management_burst: u32,
    /// TCP connections the public listener holds at once (WebSockets, their handshakes, and plain
    /// HTTP); counted from the accept, before the request head is read. Beyond it a connection
    /// gets a fixed 503 and is closed (on a TLS listener, closed without an answer), so a load
    /// balancer tries another host. Default 100,000, above what one host is sized for; 0 means
    /// unlimited. The separate `server.management_listen` is not counted.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            frame_size: 32 * 1024,
            message_size: 128 * 1024,
            post_size: 131_072,
            idle_timeout: Duration::from_secs(600),
            max_connection_duration: Duration::from_secs(7200),
            ping_interval: Duration::from_secs(25),
            missed_pongs: 2,
            outbound_queue_bytes: 1024 * 1024,
            outbound_full_grace: Duration::from_secs(10),
            max_inflight_messages: 16,
            read_buffer_size: 4096,
            allowed_origins: Vec::new(),
            connections_per_second: 500,
            connections_per_ip: 0,
            connections_per_principal: 5,
            messages_per_second: 100,
            message_burst: 200,
            max_throttled_messages: 100,
            management_requests_per_second: 10_000,
            management_burst: 5_000,
            max_connections: 100_000,
        }
    }
}
