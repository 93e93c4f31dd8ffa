//! Rooms in a DynamoDB membership table: the portable backend, for real API Gateway as well as
//! the connection host.
//!
//! # Table schema
//!
//! One item per membership:
//!
//! | Attribute | Type | Role |
//! |---|---|---|
//! | `room` | S | partition key |
//! | `connectionId` | S | sort key |
//! | `joinedAt` | N | epoch milliseconds of the join |
//! | `expiresAt` | N | epoch seconds; the table's TTL attribute (absent when `ROOMS_TTL_SECONDS=0`) |
//!
//! and a global secondary index [`BY_CONNECTION_INDEX`] (`byConnection`: partition key
//! `connectionId`, sort key `room`, projection `ALL`) so `$disconnect` can find the rooms of a
//! connection.
//!
//! `$disconnect` is best-effort on API Gateway, so a membership may outlive its connection. Two
//! things clean up after that: a broadcast removes every member that answers 410 Gone, and
//! `expiresAt` lets DynamoDB's TTL delete memberships older than the longest possible connection
//! (reads skip expired items, since TTL deletion can lag by days).
//!
//! Create it with the AWS CLI (or [`create_table`]):
//!
//! ```sh
//! aws dynamodb create-table --table-name chat-rooms \
//!     --attribute-definitions AttributeName=room,AttributeType=S AttributeName=connectionId,AttributeType=S \
//!     --key-schema AttributeName=room,KeyType=HASH AttributeName=connectionId,KeyType=RANGE \
//!     --global-secondary-indexes 'IndexName=byConnection,KeySchema=[{AttributeName=connectionId,KeyType=HASH},{AttributeName=room,KeyType=RANGE}],Projection={ProjectionType=ALL}' \
//!     --billing-mode PAY_PER_REQUEST
//! aws dynamodb wait table-exists --table-name chat-rooms
//! aws dynamodb update-time-to-live --table-name chat-rooms \
//!     --time-to-live-specification Enabled=true,AttributeName=expiresAt
//! ```

use super::{BroadcastReport, Rooms, RoomsError, broadcast_each};
use crate::management::PostToConnection;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

/// Partition key: the room name.
pub const ROOM: &str = "room";
/// Sort key: the member's connection ID.
pub const CONNECTION_ID: &str = "connectionId";
/// When the membership was written, in epoch milliseconds.
pub const JOINED_AT: &str = "joinedAt";
/// TTL attribute: when the membership expires, in epoch seconds.
pub const EXPIRES_AT: &str = "expiresAt";
/// The global secondary index from connection ID to rooms.
pub const BY_CONNECTION_INDEX: &str = "byConnection";

/// A DynamoDB client from the standard AWS configuration (`AWS_REGION`, credentials,
/// `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL`), built once per process.
pub async fn shared_client() -> Client {
    static CLIENT: OnceCell<Client> = OnceCell::const_new();
    CLIENT
        .get_or_init(|| async {
            Client::new(&aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await)
        })
        .await
        .clone()
}

fn dynamodb_error(operation: &'static str, error: impl std::error::Error + 'static) -> RoomsError {
    RoomsError::DynamoDb {
        operation,
        message: DisplayErrorContext(&error).to_string(),
    }
}

fn sdk_error<E: std::error::Error + 'static>(
    operation: &'static str,
) -> impl FnOnce(SdkError<E>) -> RoomsError {
    move |error| dynamodb_error(operation, error)
}

/// Creates the membership table `table` with the schema above, waits until it is active, and
/// turns on TTL for `expiresAt`. For development and tests; production tables belong in IaC.
pub async fn create_table(client: &Client, table: &str) -> Result<(), RoomsError> {
    let build = |e| dynamodb_error("CreateTable", e);
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(build)
    };
    let string_attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build)
    };
    let index = GlobalSecondaryIndex::builder()
        .index_name(BY_CONNECTION_INDEX)
        .key_schema(key(CONNECTION_ID, KeyType::Hash)?)
        .key_schema(key(ROOM, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(build)?;
    client
        .create_table()
        .table_name(table)
        .attribute_definitions(string_attribute(ROOM)?)
        .attribute_definitions(string_attribute(CONNECTION_ID)?)
        .key_schema(key(ROOM, KeyType::Hash)?)
        .key_schema(key(CONNECTION_ID, KeyType::Range)?)
        .global_secondary_indexes(index)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(sdk_error("CreateTable"))?;
    // TTL cannot be changed while the table is being created.
    for _ in 0..120 {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(sdk_error("DescribeTable"))?;
        if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(EXPIRES_AT)
                .build()
                .map_err(|e| dynamodb_error("UpdateTimeToLive", e))?,
        )
        .send()
        .await
        .map_err(sdk_error("UpdateTimeToLive"))?;
    Ok(())
}

/// Rooms in a DynamoDB membership table; broadcasts post to each member through `poster`.
#[derive(Clone)]
pub struct DynamoDbRooms {
    client: Client,
    table: String,
    ttl: Option<Duration>,
    poster: Arc<dyn PostToConnection>,
}

impl std::fmt::Debug for DynamoDbRooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbRooms")
            .field("table", &self.table)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn string(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name)?.as_s().ok().cloned()
}

/// Whether an item is past its `expiresAt` (TTL deletion runs late, so reads check themselves).
fn expired(item: &HashMap<String, AttributeValue>, now_secs: u64) -> bool {
    item.get(EXPIRES_AT)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|expires| expires <= now_secs)
}

impl DynamoDbRooms {
    /// Rooms in `table`; memberships expire after `ttl` (`None`: never); broadcasts go through
    /// `poster` (a [`crate::management::Management`] in a handler).
    pub fn new(
        client: Client,
        table: &str,
        ttl: Option<Duration>,
        poster: Arc<dyn PostToConnection>,
    ) -> Self {
        Self {
            client,
            table: table.to_string(),
            ttl,
            poster,
        }
    }

    /// Every unexpired item of a query on `key_name = key_value`, page by page, on the table or
    /// on `index`.
    async fn query_all(
        &self,
        index: Option<&str>,
        key_name: &str,
        key_value: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, RoomsError> {
        let now_secs = now().as_secs();
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .set_index_name(index.map(str::to_string))
                .key_condition_expression("#k = :k")
                .expression_attribute_names("#k", key_name)
                .expression_attribute_values(":k", AttributeValue::S(key_value.to_string()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(sdk_error("Query"))?;
            items.extend(
                page.items()
                    .iter()
                    .filter(|item| !expired(item, now_secs))
                    .cloned(),
            );
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(items),
            }
        }
    }
}

#[async_trait]
impl Rooms for DynamoDbRooms {
    async fn join(&self, room: &str, connection_id: &str) -> Result<(), RoomsError> {
        let now = now();
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(ROOM, AttributeValue::S(room.to_string()))
            .item(CONNECTION_ID, AttributeValue::S(connection_id.to_string()))
            .item(JOINED_AT, AttributeValue::N(now.as_millis().to_string()));
        if let Some(ttl) = self.ttl {
            put = put.item(
                EXPIRES_AT,
                AttributeValue::N((now + ttl).as_secs().to_string()),
            );
        }
        put.send().await.map_err(sdk_error("PutItem"))?;
        Ok(())
    }

    async fn leave(&self, room: &str, connection_id: &str) -> Result<(), RoomsError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(ROOM, AttributeValue::S(room.to_string()))
            .key(CONNECTION_ID, AttributeValue::S(connection_id.to_string()))
            .send()
            .await
            .map_err(sdk_error("DeleteItem"))?;
        Ok(())
    }

    async fn members(&self, room: &str) -> Result<Vec<String>, RoomsError> {
        let items = self.query_all(None, ROOM, room).await?;
        Ok(items
            .iter()
            .filter_map(|item| string(item, CONNECTION_ID))
            .collect())
    }

    async fn is_member(&self, room: &str, connection_id: &str) -> Result<bool, RoomsError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(ROOM, AttributeValue::S(room.to_string()))
            .key(CONNECTION_ID, AttributeValue::S(connection_id.to_string()))
            // A member that just joined must be able to send at once.
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error("GetItem"))?;
        Ok(output
            .item()
            .is_some_and(|item| !expired(item, now().as_secs())))
    }

    async fn broadcast(
        &self,
        room: &str,
        data: &[u8],
        exclude: Option<&str>,
    ) -> Result<BroadcastReport, RoomsError> {
        broadcast_each(self, self.poster.as_ref(), room, data, exclude).await
    }

    /// Reads the `byConnection` index, which is eventually consistent: a room joined a moment
    /// before may be missing; its membership is then removed by a later broadcast or by TTL.
    async fn rooms_of(&self, connection_id: &str) -> Result<Option<Vec<String>>, RoomsError> {
        let items = self
            .query_all(Some(BY_CONNECTION_INDEX), CONNECTION_ID, connection_id)
            .await?;
        Ok(Some(
            items.iter().filter_map(|item| string(item, ROOM)).collect(),
        ))
    }
}
