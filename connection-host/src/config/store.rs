//! `[store]`, `[cluster]` and `[extensions]`: where records live, and the hosts sharing them.

use super::*;

/// Behaviour beyond API Gateway's, each opt-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExtensionsConfig {
    /// The groups API and presence (`groups = true`, or `[extensions.groups]`).
    #[serde(deserialize_with = "groups::bool_or_table")]
    pub groups: GroupsConfig,
    /// Accept binary frames from clients as a base64 `body` with `isBase64Encoded: true` instead of
    /// closing with 1003.
    pub binary_messages: bool,
    /// Reliable delivery for clients that ask for it (PROTOCOL.md).
    pub sessions: SessionsConfig,
}

/// Partitions a group is spread over in the groups table unless configured otherwise
/// (`store.group_shards`).
pub const DEFAULT_GROUP_SHARDS: u32 = 8;

/// Where connection records and group memberships live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (in-process, lost on exit) or `dynamodb` (shared tables, see `STORE.md`).
    pub kind: StoreKind,
    /// DynamoDB table of connection records (partition key `connectionId`).
    pub connections_table: String,
    /// DynamoDB table of group memberships (keys `group`, `connectionId`; index `byConnection`).
    pub groups_table: String,
    /// DynamoDB table of reliable-session data: idempotency keys and frames kept for replay (keys
    /// `connectionId`, `item`; see STORE.md). Only hosts serving reliable sessions use it.
    pub sessions_table: String,
    /// DynamoDB endpoint; empty uses the standard AWS configuration (`AWS_ENDPOINT_URL_DYNAMODB`,
    /// `AWS_ENDPOINT_URL`, else AWS itself).
    pub endpoint_url: String,
    /// DynamoDB region; empty uses `api.region`.
    pub region: String,
    /// Partitions each group is spread over in the groups table (1 to 256; STORE.md, "Large
    /// groups"). Every host sharing the table must use the same number, and changing it strands
    /// the memberships written before.
    pub group_shards: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            connections_table: "connection-host-connections".into(),
            groups_table: "connection-host-groups".into(),
            sessions_table: "connection-host-sessions".into(),
            endpoint_url: String::new(),
            region: String::new(),
            group_shards: DEFAULT_GROUP_SHARDS,
        }
    }
}

/// Which connection store the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process maps: one host only, nothing survives a restart.
    #[default]
    Memory,
    /// DynamoDB tables shared by every host configured with them.
    Dynamodb,
}

/// This host's identity in a cluster: several hosts sharing one DynamoDB store, where a management
/// call made to any host reaches the connection wherever it lives (see CONFIGURATION.md, "Running
/// a cluster").
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This host's ID in the store (letters, digits, `-`, `_`, `.`; at most 64); empty means a
    /// random ID generated at each start. A fixed ID lets a restarted host remove the records its
    /// previous run left behind at once instead of waiting for the reaper. Must be unique in the
    /// cluster.
    pub host_id: String,
    /// The base URL other hosts use to reach this host's management API, e.g.
    /// `http://10.0.0.5:9080`; empty means not clustered (management calls reach only this host's
    /// connections, and nothing runs in the background).
    pub advertise_url: String,
    /// Shared key of the HMAC that signs host-to-host calls (it never travels itself); required
    /// when `advertise_url` is set. Prefer the environment (`CONNECTION_HOST_CLUSTER__SECRET`) to
    /// the file.
    pub secret: String,
    /// How often this host writes its heartbeat and looks for dead hosts to reap.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A host whose last heartbeat is older than this is dead: calls for its connections answer
    /// 410 and its records are reaped. Must exceed twice `heartbeat_interval` (plus clock skew).
    #[serde(with = "humantime_serde")]
    pub host_timeout: Duration,
    /// Connection owners remembered per host, so repeated calls for a remote connection skip the
    /// store read.
    pub owner_cache_size: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            host_id: String::new(),
            advertise_url: String::new(),
            secret: String::new(),
            heartbeat_interval: Duration::from_secs(5),
            host_timeout: Duration::from_secs(20),
            owner_cache_size: 100_000,
        }
    }
}

// The secret must not end up in logs through `{:?}` of the configuration.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("host_id", &self.host_id)
            .field("advertise_url", &self.advertise_url)
            .field("secret", &redacted(&self.secret))
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("host_timeout", &self.host_timeout)
            .field("owner_cache_size", &self.owner_cache_size)
            .finish()
    }
}

impl ClusterConfig {
    /// Whether this host takes part in a cluster (`advertise_url` is set).
    pub fn enabled(&self) -> bool {
        !self.advertise_url.is_empty()
    }
}
