//! `[extensions.sessions]`: reliable delivery (PROTOCOL.md).

use super::*;

/// Reliable-delivery sessions for clients that offer the `ch-reliable.v1` subprotocol: resume
/// after a drop, sequence numbers and acknowledgements, exactly-once invocation (PROTOCOL.md).
/// Off by default; clients that do not offer the subprotocol are plain connections either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Accept the subprotocol.
    pub enabled: bool,
    /// How long a session outlives a lost connection, waiting for the client to resume.
    #[serde(with = "humantime_serde")]
    pub resume_window: Duration,
    /// Bytes of unacknowledged frames kept per session; a post past it answers 429.
    pub session_buffer_bytes: usize,
    /// How long an idempotency key and its answer are remembered, and how long a session that
    /// ended can pass its keys on to its client's next session (PROTOCOL.md section 6.7).
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Where a session's unacknowledged frames are kept: in the owning host's memory (lost only
    /// if that host dies), or also in the store before PostToConnection answers (survives it).
    pub durability: Durability,
    /// Invoke every session's messages one at a time, in the client's order (a route can also ask
    /// for it with `ordered = true`).
    pub ordered: bool,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            resume_window: Duration::from_secs(120),
            session_buffer_bytes: 1024 * 1024,
            dedup_window: Duration::from_secs(600),
            durability: Durability::Memory,
            ordered: false,
        }
    }
}

/// Where a reliable session's unacknowledged frames survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The owning host's memory: one store write per session event, none per message.
    #[default]
    Memory,
    /// The store too, before PostToConnection answers: one conditional write per message.
    Store,
}
