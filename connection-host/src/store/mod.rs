//! The connection store: connection records and group memberships, shared by every host that uses it.
//!
//! The in-memory implementation is the embedded default; the DynamoDB implementation sits behind the
//! same trait for hosts that share connections (`[store] kind = "dynamodb"`).

pub mod dynamodb;
mod memory;

pub use dynamodb::{DynamoDbStore, DynamoDbTables};
pub use memory::MemoryStore;

/// A connection's durable record, written before the 101 and deleted when it closes.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRecord {
    /// `connectionId`.
    pub connection_id: String,
    /// Epoch milliseconds of the connect.
    pub connected_at: i64,
    /// `identity.sourceIp`.
    pub source_ip: String,
    /// `identity.userAgent`.
    pub user_agent: Option<String>,
}

/// A store operation that failed; the caller decides whether to refuse (503) or retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record with that connection ID already exists.
    #[error("connection {0} already exists")]
    AlreadyExists(String),
    /// The backend could not be reached or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// One page of a group's members.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MembersPage {
    /// Connection IDs, in a stable order.
    pub connection_ids: Vec<String>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// Connection records and group memberships.
#[async_trait::async_trait]
pub trait ConnectionStore: Send + Sync + std::fmt::Debug {
    /// Writes a new record; fails with `AlreadyExists` rather than overwrite one.
    async fn put_connection(&self, record: ConnectionRecord) -> Result<(), StoreError>;
    /// Reads a record.
    async fn get_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<ConnectionRecord>, StoreError>;
    /// Deletes a record and every group membership of the connection.
    async fn delete_connection(&self, connection_id: &str) -> Result<(), StoreError>;
    /// Adds a connection to a group (idempotent).
    async fn add_to_group(&self, group: &str, connection_id: &str) -> Result<(), StoreError>;
    /// Removes a connection from a group (idempotent).
    async fn remove_from_group(&self, group: &str, connection_id: &str) -> Result<(), StoreError>;
    /// Lists a group's members, `limit` at a time, starting after `next_token`.
    async fn group_members(
        &self,
        group: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, StoreError>;
}
