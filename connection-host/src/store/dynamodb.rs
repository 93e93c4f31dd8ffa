//! The DynamoDB store: records and memberships in two tables, shared by every host that uses them.
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
//! `connectionId` (S), attribute `ttl` (N, the write time + the same lifetime), and a global secondary
//! index `byConnection` (partition `connectionId`, sort `group`, keys only) that `delete_connection`
//! queries to find a connection's memberships.
//!
//! Both tables use DynamoDB TTL on `ttl`, so records and memberships left behind by a host that died
//! disappear by themselves. TTL deletion is late (days on DynamoDB, never on moto), so every read
//! ignores items whose `ttl` has passed.

use super::{ConnectionRecord, ConnectionStore, HostRecord, MembersPage, RecordsPage, StoreError};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, GlobalSecondaryIndex,
    IndexStatus, KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus, WriteRequest,
};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Name of the groups table's index by connection.
pub const BY_CONNECTION_INDEX: &str = "byConnection";
/// Name of the connections table's index by owning host.
pub const BY_OWNER_INDEX: &str = "byOwner";
/// `ownerHost` of the host liveness records: one index partition lists every host.
const HOSTS_PARTITION: &str = "@hosts";
/// Key prefix of host liveness records in the connections table.
const HOST_KEY_PREFIX: &str = "@host#";
/// Most keys in one `BatchGetItem` call (a DynamoDB limit).
const BATCH_GET_SIZE: usize = 100;

/// Most write requests in one `BatchWriteItem` call (a DynamoDB limit).
const BATCH_SIZE: usize = 25;
/// `BatchWriteItem` rounds before unprocessed deletes count as a failure.
const BATCH_ATTEMPTS: u32 = 8;
/// How long `create_tables` waits for new tables to become ACTIVE.
const ACTIVE_WAIT: Duration = Duration::from_secs(120);

/// The two table names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbTables {
    /// Connection records, keyed by `connectionId`.
    pub connections: String,
    /// Group memberships, keyed by `group` and `connectionId`.
    pub groups: String,
}

impl Default for DynamoDbTables {
    fn default() -> Self {
        Self {
            connections: "connection-host-connections".into(),
            groups: "connection-host-groups".into(),
        }
    }
}

/// [`ConnectionStore`] on DynamoDB (or anything that speaks its API: moto, LocalStack).
#[derive(Debug, Clone)]
pub struct DynamoDbStore {
    client: Client,
    tables: DynamoDbTables,
    lifetime: Duration,
}

impl DynamoDbStore {
    /// A store on `tables` through `client`; items expire 3 h after they are written (the default
    /// `max_connection_duration` of 2 h plus 1 h), see [`with_lifetime`](Self::with_lifetime).
    pub fn new(client: Client, tables: DynamoDbTables) -> Self {
        Self {
            client,
            tables,
            lifetime: Duration::from_secs(3 * 3600),
        }
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
            },
        )
        .with_lifetime(config.limits.max_connection_duration + Duration::from_secs(3600))
    }

    /// The SDK client (for operations the trait does not cover, e.g. inspecting the tables).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The table names.
    pub fn tables(&self) -> &DynamoDbTables {
        &self.tables
    }

    /// Creates both tables (on-demand capacity), waits until they are ACTIVE and enables TTL on
    /// `ttl`. Tables that already exist are left as they are. Returns one line per action taken.
    pub async fn create_tables(&self) -> Result<Vec<String>, StoreError> {
        let mut report = Vec::new();
        let key = |name: &str, key_type| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .expect("static key schema")
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("static attribute definition")
        };
        let by_owner = GlobalSecondaryIndex::builder()
            .index_name(BY_OWNER_INDEX)
            .key_schema(key("ownerHost", KeyType::Hash))
            .key_schema(key("connectionId", KeyType::Range))
            // All attributes: the reaper needs each record's incarnation, and listing hosts needs
            // their heartbeats, without a read per item.
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .expect("static index definition");
        let connections = self
            .client
            .create_table()
            .table_name(&self.tables.connections)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("connectionId"))
            .attribute_definitions(attr("ownerHost"))
            .key_schema(key("connectionId", KeyType::Hash))
            .global_secondary_indexes(by_owner);
        let index = GlobalSecondaryIndex::builder()
            .index_name(BY_CONNECTION_INDEX)
            .key_schema(key("connectionId", KeyType::Hash))
            .key_schema(key("group", KeyType::Range))
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::KeysOnly)
                    .build(),
            )
            .build()
            .expect("static index definition");
        let groups = self
            .client
            .create_table()
            .table_name(&self.tables.groups)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("group"))
            .attribute_definitions(attr("connectionId"))
            .key_schema(key("group", KeyType::Hash))
            .key_schema(key("connectionId", KeyType::Range))
            .global_secondary_indexes(index);
        for (table, request) in [
            (&self.tables.connections, connections),
            (&self.tables.groups, groups),
        ] {
            match request.send().await {
                Ok(_) => report.push(format!("created table {table}")),
                Err(e) if e.code() == Some("ResourceInUseException") => {
                    report.push(format!("table {table} already exists"))
                }
                Err(e) => return Err(unavailable(&format!("CreateTable {table}"), e)),
            }
        }
        for table in [&self.tables.connections, &self.tables.groups] {
            self.wait_active(table).await?;
            report.push(self.enable_ttl(table).await?);
        }
        Ok(report)
    }

    async fn wait_active(&self, table: &str) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + ACTIVE_WAIT;
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| unavailable(&format!("DescribeTable {table}"), e))?;
            let description = out.table();
            let table_active =
                description.and_then(|t| t.table_status()) == Some(&TableStatus::Active);
            let indexes_active = description
                .map(|t| t.global_secondary_indexes())
                .unwrap_or_default()
                .iter()
                .all(|i| i.index_status().is_none_or(|s| *s == IndexStatus::Active));
            if table_active && indexes_active {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "table {table} did not become ACTIVE within {ACTIVE_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn enable_ttl(&self, table: &str) -> Result<String, StoreError> {
        let current = self
            .client
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .map_err(|e| unavailable(&format!("DescribeTimeToLive {table}"), e))?;
        let current = current.time_to_live_description();
        let status = current.and_then(|d| d.time_to_live_status());
        let attribute = current.and_then(|d| d.attribute_name());
        if matches!(
            status,
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        ) {
            // DynamoDB allows one TTL attribute per table and rejects enabling it twice.
            return match attribute {
                Some("ttl") => Ok(format!("TTL on {table}.ttl already enabled")),
                other => Err(StoreError::Unavailable(format!(
                    "table {table} has TTL on attribute {other:?}, not \"ttl\"; records would never expire"
                ))),
            };
        }
        self.client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name("ttl")
                    .build()
                    .expect("static TTL specification"),
            )
            .send()
            .await
            .map_err(|e| unavailable(&format!("UpdateTimeToLive {table}"), e))?;
        Ok(format!("enabled TTL on {table}.ttl"))
    }

    /// Checks that both tables exist, the connections table has its `byOwner` index and the
    /// groups table its `byConnection` index; the error names every missing piece and how to
    /// create it.
    pub async fn check_tables(&self) -> Result<(), StoreError> {
        let mut problems = Vec::new();
        for (table, index) in [
            (&self.tables.connections, BY_OWNER_INDEX),
            (&self.tables.groups, BY_CONNECTION_INDEX),
        ] {
            match self.client.describe_table().table_name(table).send().await {
                Ok(out) => {
                    let has_index = out
                        .table()
                        .map(|t| t.global_secondary_indexes())
                        .unwrap_or_default()
                        .iter()
                        .any(|i| i.index_name() == Some(index));
                    if !has_index {
                        problems.push(format!(
                            "table {table} has no global secondary index {index}"
                        ));
                    }
                }
                Err(e) if e.code() == Some("ResourceNotFoundException") => {
                    problems.push(format!("table {table} does not exist"));
                }
                Err(e) => return Err(unavailable(&format!("DescribeTable {table}"), e)),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "{}; run `connection-host store init` (with the same configuration) or deploy the IaC that creates the tables",
                problems.join(", ")
            )))
        }
    }

    fn expiry(&self, from_epoch_secs: i64) -> i64 {
        from_epoch_secs + self.lifetime.as_secs() as i64
    }

    /// Deletes memberships `(group, connection_id)` in batches, resubmitting unprocessed items.
    async fn delete_memberships(
        &self,
        connection_id: &str,
        groups: Vec<String>,
    ) -> Result<(), StoreError> {
        for chunk in groups.chunks(BATCH_SIZE) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|group| {
                    WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .key("group", s(group))
                                .key("connectionId", s(connection_id))
                                .build()
                                .expect("the key is set"),
                        )
                        .build()
                })
                .collect();
            let mut attempt = 0;
            while !pending.is_empty() {
                before_batch_attempt(attempt, pending.len(), "BatchWriteItem").await?;
                attempt += 1;
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.tables.groups, pending)
                    .send()
                    .await
                    .map_err(|e| unavailable("BatchWriteItem", e))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.tables.groups))
                    .unwrap_or_default();
            }
        }
        Ok(())
    }
}

/// Runs before batch call number `attempt` (from 0) while `left` items remain: unprocessed items
/// mean throttling, so later calls back off, and after `BATCH_ATTEMPTS` calls the operation fails.
async fn before_batch_attempt(
    attempt: u32,
    left: usize,
    operation: &str,
) -> Result<(), StoreError> {
    if attempt == BATCH_ATTEMPTS {
        return Err(StoreError::Unavailable(format!(
            "{left} items still unprocessed after {BATCH_ATTEMPTS} {operation} calls"
        )));
    }
    if attempt > 0 {
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
    }
    Ok(())
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

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name)?.as_s().ok().cloned()
}

fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn host_key(host_id: &str) -> AttributeValue {
    s(&format!("{HOST_KEY_PREFIX}{host_id}"))
}

fn record_from_item(item: &HashMap<String, AttributeValue>) -> Option<ConnectionRecord> {
    Some(ConnectionRecord {
        connection_id: get_s(item, "connectionId")?,
        connected_at: get_n(item, "connectedAt").unwrap_or_default(),
        source_ip: get_s(item, "sourceIp").unwrap_or_default(),
        user_agent: get_s(item, "userAgent"),
        owner_host: get_s(item, "ownerHost").unwrap_or_default(),
        owner_incarnation: get_s(item, "ownerIncarnation").unwrap_or_default(),
        owner_endpoint: get_s(item, "ownerEndpoint").unwrap_or_default(),
        // Written by `put_connection` from a JSON object, so text that is not one was not ours.
        authorizer: get_s(item, "authorizer").and_then(|text| serde_json::from_str(&text).ok()),
    })
}

fn host_from_item(item: &HashMap<String, AttributeValue>) -> Option<HostRecord> {
    Some(HostRecord {
        host_id: get_s(item, "hostId")?,
        incarnation: get_s(item, "incarnation").unwrap_or_default(),
        endpoint: get_s(item, "endpoint").unwrap_or_default(),
        heartbeat_at: get_n(item, "heartbeatAt").unwrap_or_default(),
        reaping: item.contains_key("reapingSince"),
    })
}

fn is_conditional_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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

#[async_trait::async_trait]
impl ConnectionStore for DynamoDbStore {
    async fn put_connection(&self, record: ConnectionRecord) -> Result<(), StoreError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.tables.connections)
            .item("connectionId", s(&record.connection_id))
            .item("connectedAt", n(record.connected_at))
            .item("sourceIp", s(&record.source_ip))
            .item("ttl", n(self.expiry(record.connected_at / 1000)))
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":now", n(now_secs()));
        // An expired leftover with the same ID is not a live connection: overwrite it. Nor is a
        // record this incarnation of this host wrote: the write is idempotent, so the SDK's retry
        // of an attempt that timed out but landed succeeds instead of failing its own condition
        // (and a host that was reaped while alive can write its records again).
        let fresh = "attribute_not_exists(connectionId) OR #ttl < :now";
        put = if record.owner_host.is_empty() || record.owner_incarnation.is_empty() {
            put.condition_expression(fresh)
        } else {
            put.condition_expression(format!(
                "{fresh} OR (ownerHost = :owner AND ownerIncarnation = :incarnation)"
            ))
            .expression_attribute_values(":owner", s(&record.owner_host))
            .expression_attribute_values(":incarnation", s(&record.owner_incarnation))
        };
        if let Some(ua) = &record.user_agent {
            put = put.item("userAgent", s(ua));
        }
        // JSON text rather than a DynamoDB map: claims round-trip exactly (numbers, nulls, nested
        // arrays), and no operation filters on them.
        if let Some(authorizer) = &record.authorizer {
            put = put.item(
                "authorizer",
                s(&serde_json::Value::Object(authorizer.clone()).to_string()),
            );
        }
        // Empty strings are left out: DynamoDB refuses an empty index key.
        for (name, value) in [
            ("ownerHost", &record.owner_host),
            ("ownerIncarnation", &record.owner_incarnation),
            ("ownerEndpoint", &record.owner_endpoint),
        ] {
            if !value.is_empty() {
                put = put.item(name, s(value));
            }
        }
        match put.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::AlreadyExists(record.connection_id))
            }
            Err(e) => Err(unavailable("PutItem", e)),
        }
    }

    async fn get_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.connections)
            .key("connectionId", s(connection_id))
            // The record is read right after the handshake wrote it.
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        if get_n(&item, "ttl").is_some_and(|ttl| ttl < now_secs()) {
            return Ok(None);
        }
        Ok(record_from_item(&item))
    }

    async fn delete_connection(&self, connection_id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.tables.connections)
            .key("connectionId", s(connection_id))
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem", e))?;
        // The index is eventually consistent: a membership written a moment ago may not be listed
        // yet. Its ttl removes it eventually, and broadcasts skip connections that are gone.
        let mut groups = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.tables.groups)
                .index_name(BY_CONNECTION_INDEX)
                .key_condition_expression("connectionId = :c")
                .expression_attribute_values(":c", s(connection_id))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query byConnection", e))?;
            groups.extend(out.items().iter().filter_map(|i| get_s(i, "group")));
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        self.delete_memberships(connection_id, groups).await
    }

    async fn add_to_group(&self, group: &str, connection_id: &str) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.tables.groups)
            .item("group", s(group))
            .item("connectionId", s(connection_id))
            // A membership cannot outlive its connection, which started before now.
            .item("ttl", n(self.expiry(now_secs())))
            .send()
            .await
            .map_err(|e| unavailable("PutItem", e))?;
        Ok(())
    }

    async fn remove_from_group(&self, group: &str, connection_id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.tables.groups)
            .key("group", s(group))
            .key("connectionId", s(connection_id))
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem", e))?;
        Ok(())
    }

    async fn group_members(
        &self,
        group: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, StoreError> {
        // Read one member past the page to know whether another page exists: DynamoDB returns a
        // LastEvaluatedKey whenever Limit is reached, even when nothing follows.
        let want = limit.saturating_add(1);
        let mut start = next_token.map(|t| {
            HashMap::from([
                ("group".to_string(), s(group)),
                ("connectionId".to_string(), s(t)),
            ])
        });
        let mut ids = Vec::new();
        let now = now_secs();
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.tables.groups)
                .key_condition_expression("#g = :g")
                // Limit counts items before the filter, so an expired item makes a page short;
                // the loop reads on until the page is full or the group ends.
                .filter_expression("#ttl > :now")
                .expression_attribute_names("#g", "group")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":g", s(group))
                .expression_attribute_values(":now", n(now))
                .limit(i32::try_from(want - ids.len()).unwrap_or(i32::MAX))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query", e))?;
            ids.extend(out.items().iter().filter_map(|i| get_s(i, "connectionId")));
            start = out.last_evaluated_key;
            if ids.len() >= want || start.is_none() {
                break;
            }
        }
        let next_token = if ids.len() > limit {
            ids.truncate(limit);
            ids.last().cloned()
        } else {
            None
        };
        Ok(MembersPage {
            connection_ids: ids,
            next_token,
        })
    }

    async fn get_connections(&self, ids: &[String]) -> Result<Vec<ConnectionRecord>, StoreError> {
        let now = now_secs();
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_GET_SIZE) {
            let mut keys: Vec<HashMap<String, AttributeValue>> = chunk
                .iter()
                .map(|id| HashMap::from([("connectionId".to_string(), s(id))]))
                .collect();
            // BatchGetItem refuses duplicate keys.
            keys.sort_by(|a, b| {
                a["connectionId"]
                    .as_s()
                    .ok()
                    .cmp(&b["connectionId"].as_s().ok())
            });
            keys.dedup();
            let mut attempt = 0;
            while !keys.is_empty() {
                before_batch_attempt(attempt, keys.len(), "BatchGetItem").await?;
                attempt += 1;
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::Unavailable(format!("BatchGetItem request: {e}")))?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.tables.connections, request)
                    .send()
                    .await
                    .map_err(|e| unavailable("BatchGetItem", e))?;
                if let Some(items) = out
                    .responses
                    .as_ref()
                    .and_then(|r| r.get(&self.tables.connections))
                {
                    records.extend(
                        items
                            .iter()
                            .filter(|i| get_n(i, "ttl").is_none_or(|ttl| ttl >= now))
                            .filter_map(record_from_item),
                    );
                }
                keys = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.tables.connections))
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
        }
        Ok(records)
    }

    async fn connections_of_host(
        &self,
        host_id: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError> {
        // As in group_members: one record past the page tells whether another page exists.
        let want = limit.saturating_add(1);
        let mut start = next_token.map(|t| {
            HashMap::from([
                ("ownerHost".to_string(), s(host_id)),
                ("connectionId".to_string(), s(t)),
            ])
        });
        let mut records = Vec::new();
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.tables.connections)
                .index_name(BY_OWNER_INDEX)
                .key_condition_expression("ownerHost = :h")
                .expression_attribute_values(":h", s(host_id))
                .limit(i32::try_from(want - records.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query byOwner", e))?;
            records.extend(out.items().iter().filter_map(record_from_item));
            start = out.last_evaluated_key;
            if records.len() >= want || start.is_none() {
                break;
            }
        }
        let next_token = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| r.connection_id.clone())
        } else {
            None
        };
        Ok(RecordsPage {
            records,
            next_token,
        })
    }

    async fn register_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.tables.connections)
            .item("connectionId", host_key(&host.host_id))
            .item("ownerHost", s(HOSTS_PARTITION))
            .item("hostId", s(&host.host_id))
            .item("incarnation", s(&host.incarnation))
            .item("endpoint", s(&host.endpoint))
            .item("heartbeatAt", n(host.heartbeat_at))
            // A liveness record nobody reaps (the whole cluster stopped) goes away by itself.
            .item("ttl", n(self.expiry(host.heartbeat_at / 1000)))
            .send()
            .await
            .map_err(|e| unavailable("PutItem host", e))?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        host_id: &str,
        incarnation: &str,
        heartbeat_at: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.tables.connections)
            .key("connectionId", host_key(host_id))
            .update_expression("SET heartbeatAt = :hb, #ttl = :ttl")
            .condition_expression("incarnation = :inc AND attribute_not_exists(reapingSince)")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":hb", n(heartbeat_at))
            .expression_attribute_values(":ttl", n(self.expiry(heartbeat_at / 1000)))
            .expression_attribute_values(":inc", s(incarnation))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("UpdateItem heartbeat", e)),
        }
    }

    async fn get_host(&self, host_id: &str) -> Result<Option<HostRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.connections)
            .key("connectionId", host_key(host_id))
            // Deciding that a host is dead must not rest on a stale read.
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem host", e))?;
        Ok(out.item.as_ref().and_then(host_from_item))
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let mut hosts = Vec::new();
        let mut start = None;
        loop {
            // The index is eventually consistent: a host that registered a moment ago may be
            // missing, which only delays reaping it.
            let out = self
                .client
                .query()
                .table_name(&self.tables.connections)
                .index_name(BY_OWNER_INDEX)
                .key_condition_expression("ownerHost = :h")
                .expression_attribute_values(":h", s(HOSTS_PARTITION))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query byOwner hosts", e))?;
            hosts.extend(out.items().iter().filter_map(host_from_item));
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(hosts);
            }
        }
    }

    async fn begin_reap(&self, host: &HostRecord) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.tables.connections)
            .key("connectionId", host_key(&host.host_id))
            .update_expression("SET reapingSince = :now")
            .condition_expression("incarnation = :inc AND heartbeatAt = :hb")
            .expression_attribute_values(":now", n(crate::ids::now_ms()))
            .expression_attribute_values(":inc", s(&host.incarnation))
            .expression_attribute_values(":hb", n(host.heartbeat_at))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("UpdateItem reap", e)),
        }
    }

    async fn remove_host(&self, host_id: &str, incarnation: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.tables.connections)
            .key("connectionId", host_key(host_id))
            .condition_expression("incarnation = :inc")
            .expression_attribute_values(":inc", s(incarnation))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(unavailable("DeleteItem host", e)),
        }
    }
}
