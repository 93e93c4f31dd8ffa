//! The DynamoDB store: records, memberships and reliable-session data in three tables, shared by
//! every host that uses them.
//!
//! # Schema (also in `connection-host/STORE.md`)
//!
//! **Connections table** (default `connection-host-connections`), partition key `connectionId` (S):
//!
//! | Attribute | Type | Meaning |
//! |---|---|---|
//! | `connectionId` | S | the connection ID |
//! | `connectedAt` | N | epoch milliseconds of the connect |
//! | `sourceIp` | S | `identity.sourceIp` |
//! | `userAgent` | S | `identity.userAgent`, absent when the client sent none |
//! | `ownerHost` | S | ID of the host holding the connection |
//! | `ownerIncarnation` | S | that host's incarnation (one per start) |
//! | `ownerEndpoint` | S | that host's `cluster.advertise_url`; absent when not clustered |
//! | `authorizer` | S | `requestContext.authorizer` as JSON text; absent without an authorizer |
//! | `sessionTokenHash` | S | SHA-256 (hex) of the reliable session's resume token; absent for a plain connection |
//! | `sessionPrincipal` | S | the session's `principalId`; absent when empty |
//! | `sessionDetachedAt` | N | epoch ms since when the session has had no connection (0 while attached) |
//! | `ttl` | N | epoch seconds: `connectedAt` + `limits.max_connection_duration` + 1 h |
//!
//! Its global secondary index `byOwner` (partition `ownerHost`, sort `connectionId`, all
//! attributes) lists a host's connections for the reaper. Host liveness records live in the same
//! table under the reserved key `@host#{hostId}` (connection IDs never contain `@`), with
//! `ownerHost = "@hosts"` so that the same index lists every host in one partition: `hostId`,
//! `incarnation`, `endpoint`, `heartbeatAt` (N, epoch ms), `reapingSince` (N, set by a reaper) and
//! `ttl`.
//!
//! **Groups table** (default `connection-host-groups`), partition key `group` (S), sort key
//! `connectionId` (S). A group is spread over `store.group_shards` partitions so that no single
//! partition carries a large group: a membership's `group` is `{name}#{k}`, with `k` the FNV-1a
//! hash of the connection ID modulo the shard count (`codec::group_shard`). Attributes `principal`
//! (S, absent when empty), `joinedAt` (N, epoch ms) and `ttl` (N, the write time + the same
//! lifetime), and a global secondary index `byConnection` (partition `connectionId`, sort `group`,
//! keys only) that `delete_connection` queries to find a connection's memberships. Listing walks
//! the shards in order; counting queries them all at once.
//!
//! **Sessions table** (default `connection-host-sessions`), partition key `connectionId` (S), sort
//! key `item` (S): a reliable session's idempotency keys, `item = "k#{key}"` with `state`
//! (`pending` or `done`), `claimedAt` (N, epoch ms), `answer` (S, once done) and `ttl`; and its
//! frames kept for replay, `item = "m#{seq}"` with the sequence number zero-padded to 20 digits (so
//! the keys sort as the numbers), `frame` (S) and `ttl`. Its `ttl` is the expiry the caller gives.
//!
//! Every table uses DynamoDB TTL on `ttl`, so records and memberships left behind by a host that died
//! disappear by themselves. TTL deletion is late (days on DynamoDB, never on moto), so every read
//! ignores items whose `ttl` has passed.
//!
//! The tables' layout and their creation are in `schema`, the translation between records and
//! items in `codec`, and the [`ConnectionStore`](super::ConnectionStore) operations in
//! `operations`.

mod codec;
mod operations;
mod schema;

pub use schema::{BY_CONNECTION_INDEX, BY_OWNER_INDEX, DynamoDbTables};

use super::StoreError;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use std::time::Duration;

/// [`ConnectionStore`](super::ConnectionStore) on DynamoDB (or anything that speaks its API: moto,
/// LocalStack).
#[derive(Debug, Clone)]
pub struct DynamoDbStore {
    client: Client,
    tables: DynamoDbTables,
    lifetime: Duration,
    group_shards: u32,
}

impl DynamoDbStore {
    /// A store on `tables` through `client`; items expire 3 h after they are written (the default
    /// `max_connection_duration` of 2 h plus 1 h), see [`with_lifetime`](Self::with_lifetime);
    /// groups have [`DEFAULT_GROUP_SHARDS`](crate::config::DEFAULT_GROUP_SHARDS) shards, see
    /// [`with_group_shards`](Self::with_group_shards).
    pub fn new(client: Client, tables: DynamoDbTables) -> Self {
        Self {
            client,
            tables,
            lifetime: Duration::from_secs(3 * 3600),
            group_shards: crate::config::DEFAULT_GROUP_SHARDS,
        }
    }

    /// Sets how many partitions each group is spread over (at least 1). Every host using the
    /// groups table must use the same number: a membership is found only in the shard its
    /// connection ID hashes to.
    pub fn with_group_shards(mut self, shards: u32) -> Self {
        self.group_shards = shards.max(1);
        self
    }

    /// Sets how long after its write an item's `ttl` lies; must exceed the longest connection.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// A store configured by `config.store` (tables, endpoint, region), with the client built from
    /// the standard AWS configuration (`AWS_ENDPOINT_URL[_DYNAMODB]`, credentials) and a lifetime
    /// of `limits.max_connection_duration` + 1 h.
    pub async fn from_env(config: &crate::Config) -> Self {
        let store = &config.store;
        let region = if store.region.is_empty() {
            &config.api.region
        } else {
            &store.region
        };
        let client = client(&store.endpoint_url, region).await;
        Self::new(
            client,
            DynamoDbTables {
                connections: store.connections_table.clone(),
                groups: store.groups_table.clone(),
                sessions: store.sessions_table.clone(),
            },
        )
        .with_lifetime(config.limits.max_connection_duration + Duration::from_secs(3600))
        .with_group_shards(store.group_shards)
    }

    /// The SDK client (for operations the trait does not cover, e.g. inspecting the tables).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The table names.
    pub fn tables(&self) -> &DynamoDbTables {
        &self.tables
    }
}

/// A DynamoDB client from the standard AWS configuration, with `endpoint_url` (when not empty) and
/// `region` on top, and bounded timeouts and retries so an unreachable endpoint fails in seconds
/// instead of stalling handshakes.
pub async fn client(endpoint_url: &str, region: &str) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                // A DynamoDB call takes milliseconds; an endpoint that does not answer should refuse
                // a new connection (503) in seconds, not keep its client waiting.
                .operation_attempt_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(6))
                .build(),
        );
    if !endpoint_url.is_empty() {
        loader = loader.endpoint_url(endpoint_url);
    }
    Client::new(&loader.load().await)
}

fn is_conditional_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

/// `Unavailable` with the operation and the whole cause chain (the top-level SDK message alone is
/// often just "service error" or "dispatch failure").
fn unavailable<E, R>(operation: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable(format!("DynamoDB {operation}: {}", DisplayErrorContext(&e)))
}
