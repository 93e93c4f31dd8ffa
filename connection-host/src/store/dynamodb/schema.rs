//! The tables: their names, key and attribute names, indexes, and creating and checking them (the
//! layout is described in the parent module and in `connection-host/STORE.md`).

use super::{DynamoDbStore, unavailable};
use crate::store::StoreError;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, IndexStatus, KeySchemaElement, KeyType,
    Projection, ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use std::time::Duration;

/// Name of the groups table's index by connection.
pub const BY_CONNECTION_INDEX: &str = "byConnection";
/// Name of the connections table's index by owning host.
pub const BY_OWNER_INDEX: &str = "byOwner";
/// `ownerHost` of the host liveness records: one index partition lists every host.
pub(super) const HOSTS_PARTITION: &str = "@hosts";
/// Key prefix of host liveness records in the connections table.
pub(super) const HOST_KEY_PREFIX: &str = "@host#";
/// How long `create_tables` waits for new tables to become ACTIVE.
const ACTIVE_WAIT: Duration = Duration::from_secs(120);

/// The table names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbTables {
    /// Connection records, keyed by `connectionId`.
    pub connections: String,
    /// Group memberships, keyed by `group` and `connectionId`.
    pub groups: String,
    /// Reliable-session data (idempotency keys, kept frames), keyed by `connectionId` and `item`.
    pub sessions: String,
}

impl Default for DynamoDbTables {
    fn default() -> Self {
        Self {
            connections: "connection-host-connections".into(),
            groups: "connection-host-groups".into(),
            sessions: "connection-host-sessions".into(),
        }
    }
}

impl DynamoDbStore {
    /// Creates the three tables (on-demand capacity), waits until they are ACTIVE and enables TTL
    /// on `ttl`. Tables that already exist are left as they are. Returns one line per action taken.
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
        // No index: every read is by connection, and frames are read in key order.
        let sessions = self
            .client
            .create_table()
            .table_name(&self.tables.sessions)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("connectionId"))
            .attribute_definitions(attr("item"))
            .key_schema(key("connectionId", KeyType::Hash))
            .key_schema(key("item", KeyType::Range));
        for (table, request) in [
            (&self.tables.connections, connections),
            (&self.tables.groups, groups),
            (&self.tables.sessions, sessions),
        ] {
            match request.send().await {
                Ok(_) => report.push(format!("created table {table}")),
                Err(e) if e.code() == Some("ResourceInUseException") => {
                    report.push(format!("table {table} already exists"))
                }
                Err(e) => return Err(unavailable(&format!("CreateTable {table}"), e)),
            }
        }
        for table in [
            &self.tables.connections,
            &self.tables.groups,
            &self.tables.sessions,
        ] {
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

    /// Enables TTL on `table`'s `ttl`, or says why it did not: a server without the TTL
    /// operations (dynalite, some local emulators) gets a line saying so, not an error, because
    /// every read ignores expired items anyway.
    async fn enable_ttl(&self, table: &str) -> Result<String, StoreError> {
        let current = match self
            .client
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
        {
            Ok(current) => current,
            Err(e) if is_unknown_operation(&e) => {
                return Ok(self.ttl_unsupported(table, "DescribeTimeToLive"));
            }
            Err(e) => return Err(unavailable(&format!("DescribeTimeToLive {table}"), e)),
        };
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
        let result = self
            .client
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
            .await;
        match result {
            Ok(_) => Ok(format!("enabled TTL on {table}.ttl")),
            Err(e) if is_unknown_operation(&e) => {
                Ok(self.ttl_unsupported(table, "UpdateTimeToLive"))
            }
            Err(e) => Err(unavailable(&format!("UpdateTimeToLive {table}"), e)),
        }
    }

    /// The `store init` line for a table whose server lacks `operation`: what then becomes of
    /// the items that only TTL would delete.
    fn ttl_unsupported(&self, table: &str, operation: &str) -> String {
        let fate = if table == self.tables.sessions {
            "the idempotency keys and kept frames of reliable sessions are deleted by nothing else, \
             so they accumulate"
        } else if table == self.tables.groups {
            "memberships are still deleted on leave, on disconnect and by the reaper; only \
             orphans (a delete that failed or raced a write) stay"
        } else {
            "records are still deleted on disconnect and by the reaper of dead hosts; only \
             orphans (a delete that failed or raced a write, a drain that timed out) stay"
        };
        format!(
            "TTL not supported by this endpoint ({operation} is unknown to it): {table}.ttl is not \
             enabled, so no item of {table} expires by itself. Reads ignore expired items, so the \
             hosts behave the same; {fate}. Use DynamoDB (or a server with TTL) in production"
        )
    }

    /// Checks that the connections and groups tables exist, the connections table has its
    /// `byOwner` index and the groups table its `byConnection` index; the error names every
    /// missing piece and how to create it. The sessions table is left to
    /// [`check_sessions_table`](Self::check_sessions_table): a host without reliable sessions
    /// never touches it, so its absence must not stop one.
    pub async fn check_tables(&self) -> Result<(), StoreError> {
        self.check(&[
            (&self.tables.connections, Some(BY_OWNER_INDEX)),
            (&self.tables.groups, Some(BY_CONNECTION_INDEX)),
        ])
        .await
    }

    /// Checks that the sessions table exists (for a host that serves reliable sessions), with the
    /// same kind of error as [`check_tables`](Self::check_tables).
    pub async fn check_sessions_table(&self) -> Result<(), StoreError> {
        self.check(&[(&self.tables.sessions, None)]).await
    }

    async fn check(&self, tables: &[(&String, Option<&str>)]) -> Result<(), StoreError> {
        let mut problems = Vec::new();
        for &(table, index) in tables {
            match self.client.describe_table().table_name(table).send().await {
                Ok(out) => {
                    let Some(index) = index else { continue };
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
}

/// Whether the server does not know the operation at all (dynalite answers
/// `UnknownOperationException` to the TTL operations), as opposed to refusing this call.
fn is_unknown_operation<E: ProvideErrorMetadata, R>(
    e: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> bool {
    e.code() == Some("UnknownOperationException")
}
