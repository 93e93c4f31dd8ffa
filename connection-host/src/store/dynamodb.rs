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
//! | `ttl` | N | epoch seconds: `connectedAt` + `limits.max_connection_duration` + 1 h |
//!
//! **Groups table** (default `connection-host-groups`), partition key `group` (S), sort key
//! `connectionId` (S), attribute `ttl` (N, the write time + the same lifetime), and a global secondary
//! index `byConnection` (partition `connectionId`, sort `group`, keys only) that `delete_connection`
//! queries to find a connection's memberships.
//!
//! Both tables use DynamoDB TTL on `ttl`, so records and memberships left behind by a host that died
//! disappear by themselves. TTL deletion is late (days on DynamoDB, never on moto), so every read
//! ignores items whose `ttl` has passed.

use super::{ConnectionRecord, ConnectionStore, MembersPage, StoreError};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, GlobalSecondaryIndex,
    IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType,
    TableStatus, TimeToLiveSpecification, TimeToLiveStatus, WriteRequest,
};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Name of the groups table's index by connection.
pub const BY_CONNECTION_INDEX: &str = "byConnection";

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
        let connections = self
            .client
            .create_table()
            .table_name(&self.tables.connections)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("connectionId"))
            .key_schema(key("connectionId", KeyType::Hash));
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

    /// Checks that both tables exist and the groups table has its `byConnection` index; the error
    /// names every missing piece and how to create it.
    pub async fn check_tables(&self) -> Result<(), StoreError> {
        let mut problems = Vec::new();
        for table in [&self.tables.connections, &self.tables.groups] {
            match self.client.describe_table().table_name(table).send().await {
                Ok(out) => {
                    let has_index = out
                        .table()
                        .map(|t| t.global_secondary_indexes())
                        .unwrap_or_default()
                        .iter()
                        .any(|i| i.index_name() == Some(BY_CONNECTION_INDEX));
                    if *table == self.tables.groups && !has_index {
                        problems.push(format!(
                            "table {table} has no global secondary index {BY_CONNECTION_INDEX}"
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
                if attempt == BATCH_ATTEMPTS {
                    return Err(StoreError::Unavailable(format!(
                        "{} memberships of {connection_id} still unprocessed after {BATCH_ATTEMPTS} BatchWriteItem calls",
                        pending.len()
                    )));
                }
                if attempt > 0 {
                    // Unprocessed items mean throttling: back off before resubmitting them.
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
                }
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
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(15))
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
            // An expired leftover with the same ID is not a live connection: overwrite it.
            .condition_expression("attribute_not_exists(connectionId) OR #ttl < :now")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":now", n(now_secs()));
        if let Some(ua) = &record.user_agent {
            put = put.item("userAgent", s(ua));
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
        Ok(Some(ConnectionRecord {
            connection_id: connection_id.to_string(),
            connected_at: get_n(&item, "connectedAt").unwrap_or_default(),
            source_ip: get_s(&item, "sourceIp").unwrap_or_default(),
            user_agent: get_s(&item, "userAgent"),
        }))
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
}
