//! Rooms: named sets of connections that a handler can broadcast to.
//!
//! One trait, [`Rooms`], and three implementations:
//! - [`groups::GroupsRooms`] (`ROOMS_BACKEND=groups`, the default): the connection host's groups
//!   extension. A broadcast is one HTTP call and the host fans out; membership ends with the
//!   connection by itself, and the host announces joins and leaves to the room (presence). Works
//!   only against the connection host (with `[extensions.groups] enabled = true` and
//!   `presence = "frames"`).
//! - [`dynamodb::DynamoDbRooms`] (`ROOMS_BACKEND=dynamodb`, `ROOMS_TABLE=<name>`): a membership
//!   table in DynamoDB and one `PostToConnection` per member. Works on real API Gateway too.
//! - [`memory::MemoryRooms`]: in one process's memory, for unit tests of handlers. Not selectable
//!   by configuration: Lambda runs many processes, which would each see different rooms.
//!
//! [`RoomsConfig::from_env`] reads the configuration once; [`RoomsConfig::open`] gives the backend
//! for one event's management endpoint.

pub mod dynamodb;
pub mod groups;
pub mod memory;
pub mod presence;

use crate::management::{Management, ManagementError, PostToConnection};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Environment variable choosing the backend: `groups` (default) or `dynamodb`.
pub const BACKEND_ENV: &str = "ROOMS_BACKEND";
/// Environment variable naming the DynamoDB membership table (required with `dynamodb`).
pub const TABLE_ENV: &str = "ROOMS_TABLE";
/// Environment variable setting how long a DynamoDB membership lives without a `leave`, in
/// seconds (default 7200, API Gateway's maximum connection duration; `0` disables expiry).
pub const TTL_ENV: &str = "ROOMS_TTL_SECONDS";

/// Default membership lifetime: no API Gateway connection lives longer than two hours, so a
/// membership written after the connection opened can never need to outlive this.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2 * 60 * 60);

/// Members a backend sends to at once when it posts to each member itself.
pub const FAN_OUT_CONCURRENCY: usize = 16;

/// What a broadcast did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastReport {
    /// Members the message was handed to.
    pub delivered: usize,
    /// Members it could not be delivered to (gone members included when the backend does not
    /// tell them apart).
    pub failed: usize,
    /// Members that turned out to be gone and were removed from the room.
    pub gone_removed: usize,
}

/// Why a rooms operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RoomsError {
    /// `ROOMS_BACKEND` names no backend.
    #[error("{BACKEND_ENV} must be `groups` or `dynamodb`, not {0:?}")]
    UnknownBackend(String),
    /// `ROOMS_BACKEND=dynamodb` without `ROOMS_TABLE`.
    #[error("{TABLE_ENV} must name the DynamoDB table when {BACKEND_ENV}=dynamodb")]
    MissingTable,
    /// `ROOMS_TTL_SECONDS` is not a whole number.
    #[error("{TTL_ENV} must be a whole number of seconds, not {0:?}")]
    InvalidTtl(String),
    /// The room name cannot be used by this backend (see the backend's documentation).
    #[error("room name {0:?} is not supported by this rooms backend")]
    UnsupportedRoomName(String),
    /// The connection is gone, so it cannot join.
    #[error("the connection no longer exists")]
    Gone,
    /// The connection host answered a groups call with an unexpected status.
    #[error(
        "the connection host answered {status} to {operation} (is extensions.groups enabled?): {body}"
    )]
    Host {
        /// The groups operation, e.g. `PUT group membership`.
        operation: &'static str,
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The connection host could not be called, or its answer could not be read.
    #[error("calling the connection host's groups API failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The call could not be signed (no usable credentials).
    #[error("signing the call to the connection host's groups API failed: {0}")]
    Signing(String),
    /// A room has more members than the caller's bound on listing them all.
    #[error("room {room:?} has more than {bound} members")]
    TooManyMembers {
        /// The room.
        room: String,
        /// The bound the caller gave.
        bound: usize,
    },
    /// The connection host's answer was not the JSON the groups API documents.
    #[error("unexpected answer from the connection host's groups API: {0}")]
    Unexpected(String),
    /// A DynamoDB call failed.
    #[error("DynamoDB {operation} failed: {message}")]
    DynamoDb {
        /// The DynamoDB operation, e.g. `Query`.
        operation: &'static str,
        /// The SDK's description of the failure.
        message: String,
    },
}

/// Room membership and broadcast. Connection IDs are API Gateway connection IDs.
#[async_trait]
pub trait Rooms: Send + Sync {
    /// Adds `connection_id` to `room` (creating the room). Joining twice is the same as once.
    async fn join(&self, room: &str, connection_id: &str) -> Result<(), RoomsError>;

    /// Removes `connection_id` from `room`. Leaving a room one is not in does nothing.
    async fn leave(&self, room: &str, connection_id: &str) -> Result<(), RoomsError>;

    /// Every member of `room` (empty for a room nobody joined), read page by page.
    async fn members(&self, room: &str) -> Result<Vec<String>, RoomsError>;

    /// Whether `connection_id` is in `room`. The default reads [`Rooms::members`].
    async fn is_member(&self, room: &str, connection_id: &str) -> Result<bool, RoomsError> {
        Ok(self
            .members(room)
            .await?
            .iter()
            .any(|id| id == connection_id))
    }

    /// Sends `data` as one message to every member of `room` but `exclude`.
    async fn broadcast(
        &self,
        room: &str,
        data: &[u8],
        exclude: Option<&str>,
    ) -> Result<BroadcastReport, RoomsError>;

    /// The rooms `connection_id` is in, or `None` when the backend cannot list them (then it
    /// removes a closed connection from its rooms by itself).
    async fn rooms_of(&self, connection_id: &str) -> Result<Option<Vec<String>>, RoomsError>;

    /// Whether the backend itself tells a room's other members when someone joins or leaves it
    /// (a leave also when the connection ends), so a handler sends no notices of its own.
    fn announces_presence(&self) -> bool {
        false
    }
}

/// Which backend to use, read from the environment once per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomsConfig {
    /// The connection host's groups extension at the management endpoint.
    Groups,
    /// A DynamoDB membership table (see [`dynamodb`] for its schema).
    DynamoDb {
        /// The table name.
        table: String,
        /// How long a membership lives without a `leave`; `None` never expires.
        ttl: Option<Duration>,
    },
}

impl RoomsConfig {
    /// Reads `ROOMS_BACKEND`, `ROOMS_TABLE` and `ROOMS_TTL_SECONDS`.
    pub fn from_env() -> Result<Self, RoomsError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, RoomsError> {
        let var = |name| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        match var(BACKEND_ENV).as_deref() {
            None | Some("groups") => Ok(RoomsConfig::Groups),
            Some("dynamodb") => {
                let table = var(TABLE_ENV).ok_or(RoomsError::MissingTable)?;
                let ttl = match var(TTL_ENV) {
                    None => Some(DEFAULT_TTL),
                    Some(raw) => match raw.parse::<u64>() {
                        Ok(0) => None,
                        Ok(secs) => Some(Duration::from_secs(secs)),
                        Err(_) => return Err(RoomsError::InvalidTtl(raw)),
                    },
                };
                Ok(RoomsConfig::DynamoDb { table, ttl })
            }
            Some(other) => Err(RoomsError::UnknownBackend(other.to_string())),
        }
    }

    /// The backend for events whose management endpoint is `management`'s. Clients (HTTP,
    /// DynamoDB) are built once per process and shared.
    pub async fn open(&self, management: &Management) -> Arc<dyn Rooms> {
        match self {
            RoomsConfig::Groups => Arc::new(groups::GroupsRooms::for_management(
                groups::shared_http_client(),
                management,
            )),
            RoomsConfig::DynamoDb { table, ttl } => Arc::new(dynamodb::DynamoDbRooms::new(
                dynamodb::shared_client().await,
                table,
                *ttl,
                Arc::new(management.clone()),
            )),
        }
    }
}

/// The result of posting to many connections one by one.
struct FanOut {
    delivered: usize,
    failed: usize,
    gone: Vec<String>,
}

/// Posts `data` to each of `ids`, [`FAN_OUT_CONCURRENCY`] at a time, sorting the outcomes.
async fn fan_out(poster: &dyn PostToConnection, ids: Vec<String>, data: &[u8]) -> FanOut {
    let mut outcomes = futures_util::stream::iter(ids)
        .map(|id| async move {
            let result = poster.post_to_connection(&id, data).await;
            (id, result)
        })
        .buffer_unordered(FAN_OUT_CONCURRENCY);
    let mut out = FanOut {
        delivered: 0,
        failed: 0,
        gone: Vec::new(),
    };
    while let Some((id, result)) = outcomes.next().await {
        match result {
            Ok(()) => out.delivered += 1,
            Err(ManagementError::Gone) => out.gone.push(id),
            Err(error) => {
                tracing::warn!(connection_id = %id, %error, "broadcast to a member failed");
                out.failed += 1;
            }
        }
    }
    out
}

/// A broadcast for backends that post to each member: fans out, then removes gone members.
async fn broadcast_each(
    rooms: &dyn Rooms,
    poster: &dyn PostToConnection,
    room: &str,
    data: &[u8],
    exclude: Option<&str>,
) -> Result<BroadcastReport, RoomsError> {
    let mut members = rooms.members(room).await?;
    members.retain(|id| Some(id.as_str()) != exclude);
    let out = fan_out(poster, members, data).await;
    let mut report = BroadcastReport {
        delivered: out.delivered,
        failed: out.failed,
        gone_removed: 0,
    };
    // The message is out already: a membership that cannot be removed now is reported, not
    // turned into a failed broadcast; the next broadcast (or the TTL) removes it.
    for id in &out.gone {
        match rooms.leave(room, id).await {
            Ok(()) => report.gone_removed += 1,
            Err(error) => {
                tracing::warn!(connection_id = %id, %error, "removing a gone member failed");
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<RoomsConfig, RoomsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RoomsConfig::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn groups_is_the_default() {
        assert_eq!(config(&[]).unwrap(), RoomsConfig::Groups);
        assert_eq!(config(&[(BACKEND_ENV, " ")]).unwrap(), RoomsConfig::Groups);
        assert_eq!(
            config(&[(BACKEND_ENV, "groups")]).unwrap(),
            RoomsConfig::Groups
        );
    }

    #[test]
    fn dynamodb_needs_a_table_and_defaults_the_ttl() {
        assert!(matches!(
            config(&[(BACKEND_ENV, "dynamodb")]),
            Err(RoomsError::MissingTable)
        ));
        assert_eq!(
            config(&[(BACKEND_ENV, "dynamodb"), (TABLE_ENV, "rooms")]).unwrap(),
            RoomsConfig::DynamoDb {
                table: "rooms".into(),
                ttl: Some(DEFAULT_TTL)
            }
        );
        assert_eq!(
            config(&[
                (BACKEND_ENV, "dynamodb"),
                (TABLE_ENV, "rooms"),
                (TTL_ENV, "0")
            ])
            .unwrap(),
            RoomsConfig::DynamoDb {
                table: "rooms".into(),
                ttl: None
            }
        );
        assert!(matches!(
            config(&[
                (BACKEND_ENV, "dynamodb"),
                (TABLE_ENV, "rooms"),
                (TTL_ENV, "1h")
            ]),
            Err(RoomsError::InvalidTtl(v)) if v == "1h"
        ));
    }

    #[test]
    fn an_unknown_backend_is_refused() {
        assert!(matches!(
            config(&[(BACKEND_ENV, "redis")]),
            Err(RoomsError::UnknownBackend(b)) if b == "redis"
        ));
    }
}
